//! What cluster mode costs and what spreading buys, in one run, against a
//! real etcd (the `etcd` binary, started here on loopback, its data on
//! tmpfs where there is one).
//!
//! 1. **Spread over 1, 2 and 3 nodes**: a lake of many measurements, one
//!    `once` per node started together (`mode = "spread"`): the cycle's wall
//!    time, each node's jobs and LIST requests (listing divides too).
//! 2. **Coordination cost**: the same lake compacted by one node in cluster
//!    mode and by a standalone engine, alternated: the difference per job in
//!    ms, and etcd's requests per job (etcd's own gRPC counters).
//!
//! This machine has 2 cores: three nodes share them, so the wall time shows
//! what the listing and the coordination cost, not a speed-up a real
//! cluster of machines would see.
//!
//! Run: `cargo bench -p compactor --bench cluster` (prints Markdown tables).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use compactor_job::sample::{self, SampleSpec};

const NOW: &str = "2026-04-13T12:00:00Z";
const MEASUREMENTS: usize = 24;
const ROUNDS: usize = 3;

fn main() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let etcd = Etcd::start(work.path())?;
    let pristine = work.path().join("pristine");
    let spec = SampleSpec {
        database: "db".into(),
        measurements: (0..MEASUREMENTS).map(|i| (format!("m{i:02}"), vec!["host".to_owned()])).collect(),
        hours: 2,
        files_per_hour: 12,
        rows_per_file: 50,
    };
    let lake = sample::generate(&pristine, chrono::DateTime::parse_from_rfc3339(NOW)?.to_utc(), &spec)?;
    println!(
        "lake: {MEASUREMENTS} measurements × 2 hours × 12 files ({} files, {} rows); medians of {ROUNDS} rounds\n",
        lake.files, lake.rows
    );

    println!("| nodes (spread) | cycle wall time | jobs per node | LIST requests per node |");
    println!("|---|---|---|---|");
    for nodes in 1..=3 {
        let mut walls = Vec::new();
        let mut last = Vec::new();
        for round in 0..ROUNDS {
            let dir = work.path().join(format!("spread-{nodes}-{round}"));
            common::copy_tree(&pristine, &dir.join("lake"))?;
            let configs: Vec<PathBuf> =
                (0..nodes).map(|n| write_config(&dir, &format!("node{n}"), Some((&etcd.endpoint, "spread")))).collect::<Result<_, _>>()?;
            let started = Instant::now();
            let outputs = once_together(&configs)?;
            walls.push(started.elapsed());
            last = outputs.iter().map(report_of).collect::<anyhow::Result<Vec<_>>>()?;
        }
        let jobs: Vec<String> = last.iter().map(|r| r.0.to_string()).collect();
        let lists: Vec<String> = last.iter().map(|r| r.1.to_string()).collect();
        println!("| {nodes} | {:.2} s | {} | {} |", median(&mut walls).as_secs_f64(), jobs.join(" / "), lists.join(" / "));
    }

    println!("\n| engine | cycle wall time | jobs | per job | etcd requests | etcd requests per job |");
    println!("|---|---|---|---|---|---|");
    let (mut standalone, mut clustered, mut requests, mut jobs) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for round in 0..ROUNDS {
        for cluster in [false, true] {
            let dir = work.path().join(format!("cost-{cluster}-{round}"));
            common::copy_tree(&pristine, &dir.join("lake"))?;
            let config = write_config(&dir, "solo", cluster.then_some((&etcd.endpoint, "single")))?;
            let before = etcd.requests()?;
            let started = Instant::now();
            let output = once_together(&[config])?;
            let wall = started.elapsed();
            let (job_count, _) = report_of(&output[0])?;
            if cluster {
                clustered.push(wall);
                requests.push(etcd.requests()? - before);
                jobs = job_count;
            } else {
                standalone.push(wall);
            }
        }
    }
    let (standalone, clustered) = (median(&mut standalone), median(&mut clustered));
    requests.sort_unstable();
    let etcd_requests = requests[requests.len() / 2];
    let per_job = |d: Duration| d.as_secs_f64() * 1000.0 / jobs.max(1) as f64;
    println!("| standalone | {:.2} s | {jobs} | {:.1} ms | — | — |", standalone.as_secs_f64(), per_job(standalone));
    println!(
        "| cluster, 1 node | {:.2} s | {jobs} | {:.1} ms | {etcd_requests} | {:.1} |",
        clustered.as_secs_f64(),
        per_job(clustered),
        etcd_requests as f64 / jobs.max(1) as f64
    );
    println!(
        "\ncoordination cost per job: {:.1} ms (cluster − standalone, medians), {:.1} etcd requests",
        per_job(clustered) - per_job(standalone),
        etcd_requests as f64 / jobs.max(1) as f64
    );
    Ok(())
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// A node's config in `dir` (the lake at `dir/lake`); cluster mode when
/// `cluster` gives the etcd endpoint and the mode.
fn write_config(dir: &Path, node: &str, cluster: Option<(&String, &str)>) -> anyhow::Result<PathBuf> {
    let mut text = format!(
        "[storage]\nurl = \"lake\"\n[compaction]\ntemp_directory = \"tmp-{node}\"\nthreads = 1\n\
         [[tiers]]\nname = \"hourly\"\nplugin = \"builtin:hourly\"\n"
    );
    if let Some((endpoint, mode)) = cluster {
        text.push_str(&format!(
            "[cluster]\nenabled = true\netcd_endpoints = [\"{endpoint}\"]\nnode_id = \"{node}\"\nrole = \"compactor\"\nmode = \"{mode}\"\n\
             session_ttl = \"5s\"\ncheck_interval = \"1s\"\n"
        ));
    }
    let path = dir.join(format!("{node}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// `once --format json` on every config at the same moment.
fn once_together(configs: &[PathBuf]) -> anyhow::Result<Vec<Output>> {
    let children: Vec<_> = configs
        .iter()
        .map(|config| {
            Command::new(env!("CARGO_BIN_EXE_compactor"))
                .args(["once", "--config"])
                .arg(config)
                .args(["--now", NOW, "--format", "json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let outputs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output()).collect::<Result<_, _>>()?;
    for output in &outputs {
        anyhow::ensure!(output.status.success(), "once failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(outputs)
}

/// (jobs, LIST requests) of a `once` JSON report.
fn report_of(output: &Output) -> anyhow::Result<(usize, u64)> {
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let jobs = report["jobs"].as_array().map_or(0, Vec::len);
    Ok((jobs, report["requests"]["list"].as_u64().unwrap_or(0)))
}

/// etcd on loopback, stopped on drop.
struct Etcd {
    child: std::process::Child,
    endpoint: String,
    _data: tempfile::TempDir,
}

impl Etcd {
    fn start(work: &Path) -> anyhow::Result<Self> {
        let port = || std::net::TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr().map(|a| a.port()));
        let (client, peer) = (port()??, port()??);
        let shm = Path::new("/dev/shm");
        let data = if shm.is_dir() { tempfile::tempdir_in(shm)? } else { tempfile::tempdir_in(work)? };
        let (client_url, peer_url) = (format!("http://127.0.0.1:{client}"), format!("http://127.0.0.1:{peer}"));
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(data.path())
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start etcd (Debian: apt-get install etcd-server): {e}"))?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { child, endpoint: client_url, _data: data })
    }

    /// gRPC messages etcd has received so far (its own counter; a keep-alive
    /// on a stream counts as one).
    fn requests(&self) -> anyhow::Result<u64> {
        let address = self.endpoint.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address)?;
        use std::io::{Read, Write};
        write!(stream, "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("grpc_server_msg_received_total{"))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum::<f64>() as u64)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
