//! What the HTTP API and its metrics cost, in one run on one machine.
//!
//! 1. The same cycle (a fresh copy of one sample lake each time) with the API
//!    off and on, alternated; "on" means the server runs, the metrics follow
//!    every event, debt is recomputed after the cycle, and a scraper reads
//!    `/metrics` and `/status` every second, as Prometheus and a dashboard
//!    would.
//! 2. Request latency of `/api/v1/compaction/status` and `/metrics` under an
//!    open-loop load of 200 requests/s (alternating) for 30 s on 127.0.0.1,
//!    while a long cycle runs.
//!
//! Run: `cargo bench -p compactor --bench api` (prints Markdown tables).

mod common;

use common::copy_tree;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use compactor_api::Api;
use compactor_engine::config::Config;
use compactor_engine::{CycleOptions, GateDecision, Manager};
use compactor_job::ChildCommand;
use compactor_job::sample::{self, SampleSpec};

const NOW: &str = "2026-04-13T12:00:00Z";
const ROUNDS: usize = 4;
const LOAD_RATE: u64 = 200;
const LOAD_SECONDS: u64 = 30;

fn spec(measurements: usize, rows_per_file: u32) -> SampleSpec {
    SampleSpec {
        database: "bench".into(),
        measurements: (0..measurements).map(|i| (format!("m{i}"), vec!["host".to_owned()])).collect(),
        hours: 24,
        files_per_hour: 12,
        rows_per_file,
    }
}

fn open_manager(work: &Path, lake: &Path, max_concurrent: u32) -> anyhow::Result<Arc<Manager>> {
    let text = format!(
        "[storage]\nurl = \"{}\"\n[compaction]\nthreads = 1\nmax_concurrent = {max_concurrent}\ntemp_directory = \"{}\"\n\
         [plugins]\ncache_dir = \"{}\"\n",
        lake.display(),
        work.join("tmp").display(),
        std::env::temp_dir().join("compactor-bench-artifacts").display()
    );
    let mut config = Config::parse(&text)?;
    config.base_dir = work.to_owned();
    let child = ChildCommand { program: env!("CARGO_BIN_EXE_compactor").into(), env: Vec::new(), timeout: None };
    Ok(Arc::new(Manager::open(config, child)?))
}

/// Serves `manager`'s API on a free port of 127.0.0.1; returns its base URL.
async fn serve(manager: &Arc<Manager>) -> anyhow::Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let api = Api::new(manager.clone(), Some("bench".into()))?;
    api.set_ready(false, GateDecision::Standalone);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(api.serve(listener, async move {
        let _ = stopped.await;
    }));
    Ok((base, stop))
}

/// One cycle over `lake`: its wall time; with the API on, scraped every
/// second meanwhile.
fn cycle(work: &Path, lake: &Path, api_on: bool) -> anyhow::Result<Duration> {
    let manager = open_manager(work, lake, 2)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let now = chrono::DateTime::parse_from_rfc3339(NOW)?.to_utc();
    runtime.block_on(async {
        let server = if api_on { Some(serve(&manager).await?) } else { None };
        let scraper = server.as_ref().map(|(base, _)| {
            let base = base.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                loop {
                    for path in ["/metrics", "/api/v1/compaction/status"] {
                        let _ = http.get(format!("{base}{path}")).send().await.map(|r| r.text());
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        });
        let started = Instant::now();
        let report = manager.run_cycle(CycleOptions { now: Some(now), ..Default::default() }).await?;
        let elapsed = started.elapsed();
        anyhow::ensure!(report.all_succeeded() && !report.jobs.is_empty(), "the cycle failed: {:?}", report.failed().next());
        if let Some(scraper) = scraper {
            scraper.abort();
        }
        if let Some((_, stop)) = server {
            let _ = stop.send(());
        }
        Ok(elapsed)
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// One request of the load test.
struct Sample {
    endpoint: &'static str,
    latency: Duration,
    ok: bool,
    during_cycle: bool,
}

fn main() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let now = chrono::DateTime::parse_from_rfc3339(NOW)?.to_utc();

    // 1. The same cycle with the API off and on, alternated.
    let small = work.path().join("small");
    sample::generate(&small, now, &spec(3, 2_000))?;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        for api_on in [false, true] {
            let lake = work.path().join(format!("lake-{round}-{api_on}"));
            copy_tree(&small, &lake)?;
            let elapsed = cycle(work.path(), &lake, api_on)?;
            if api_on {
                on.push(elapsed)
            } else {
                off.push(elapsed)
            }
            std::fs::remove_dir_all(&lake)?;
        }
    }
    let spread = |values: &[Duration]| {
        let (min, max) = (values.iter().min().copied().unwrap_or_default(), values.iter().max().copied().unwrap_or_default());
        format!("{}–{}", ms(min), ms(max))
    };
    println!("## The API's added cost: one cycle (3 measurements × 24 hours × 12 files × 2,000 rows; 72 hourly + 3 daily jobs)\n");
    println!("| API | median of {ROUNDS} (ms) | range (ms) |");
    println!("|---|---|---|");
    println!("| off | {} | {} |", ms(median(off.clone())), spread(&off));
    println!("| on, scraped every second | {} | {} |", ms(median(on.clone())), spread(&on));
    println!("\nratio on/off (medians): {:.3}\n", median(on).as_secs_f64() / median(off).as_secs_f64());

    // 2. Latency under load while a long cycle runs.
    let big = work.path().join("big");
    sample::generate(&big, now, &spec(24, 6_000))?;
    let manager = open_manager(work.path(), &big, 1)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (samples, cycle_time, sent) = runtime.block_on(async {
        let (base, stop) = serve(&manager).await?;
        let running = manager.clone();
        let cycle = tokio::spawn(async move {
            let started = Instant::now();
            let report = running.run_cycle(CycleOptions { now: Some(now), ..Default::default() }).await;
            (started.elapsed(), report.map(|r| r.jobs.len()))
        });
        // Let the cycle start before the load does.
        while !manager.is_cycle_running() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / LOAD_RATE));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let total = LOAD_RATE * LOAD_SECONDS;
        let mut requests = Vec::new();
        for n in 0..total {
            ticks.tick().await;
            let endpoint = if n % 2 == 0 { "/api/v1/compaction/status" } else { "/metrics" };
            let (http, base, samples, manager) = (http.clone(), base.clone(), samples.clone(), manager.clone());
            requests.push(tokio::spawn(async move {
                let during_cycle = manager.is_cycle_running();
                let started = Instant::now();
                let ok = match http.get(format!("{base}{endpoint}")).send().await {
                    Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
                    Err(_) => false,
                };
                let latency = started.elapsed();
                samples.lock().unwrap_or_else(|e| e.into_inner()).push(Sample { endpoint, latency, ok, during_cycle });
            }));
        }
        for request in requests {
            let _ = request.await;
        }
        let (cycle_time, jobs) = cycle.await?;
        anyhow::ensure!(jobs.is_ok(), "the cycle failed");
        let _ = stop.send(());
        let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
        anyhow::Ok((samples, cycle_time, total))
    })?;
    println!(
        "## Latency under {LOAD_RATE} requests/s for {LOAD_SECONDS} s while a cycle runs (24 measurements × 24 hours × 12 files × 6,000 rows; 576 + 24 jobs, one at a time)\n"
    );
    println!(
        "cycle: {:.1} s; requests sent: {sent}; answered during the cycle: {}\n",
        cycle_time.as_secs_f64(),
        samples.iter().filter(|s| s.during_cycle).count()
    );
    println!("| endpoint | requests | failed | p50 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---|---|---|---|---|");
    for endpoint in ["/api/v1/compaction/status", "/metrics"] {
        let mut latencies: Vec<Duration> = samples.iter().filter(|s| s.endpoint == endpoint && s.during_cycle).map(|s| s.latency).collect();
        latencies.sort();
        let failed = samples.iter().filter(|s| s.endpoint == endpoint && !s.ok).count();
        println!(
            "| `{endpoint}` | {} | {failed} | {} | {} | {} |",
            latencies.len(),
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.99)),
            ms(latencies.last().copied().unwrap_or_default())
        );
    }
    Ok(())
}
