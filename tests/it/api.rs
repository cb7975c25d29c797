//! The HTTP API of `compactor run` over real HTTP on 127.0.0.1: every
//! endpoint, auth failures, 400/404/405/409, a trigger whose cycle then shows
//! in `jobs`, `history` and `/metrics` (checked by `promtool`), history that
//! survives SIGKILL, the README's curl examples, and JSON logs.

use std::collections::BTreeMap;
use std::process::Child;
use std::time::Duration;

use serde_json::Value;

use crate::compaction::{Lake, NOW, assert_intact, lake_configured};
use crate::kit::{signal_group, spawn_compactor, wait_until};
use crate::util::{compactor, text};

pub(crate) const TOKEN: &str = "test-token-5f1c";

/// A port nobody listens on now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A client of one engine's API.
pub(crate) struct Client {
    base: String,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    pub(crate) fn new(port: u16) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        Self { base: format!("http://127.0.0.1:{port}"), http, runtime }
    }

    fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, String), reqwest::Error> {
        self.runtime.block_on(async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            Ok((status, response.text().await?))
        })
    }

    pub(crate) fn text(&self, path: &str) -> (u16, String) {
        self.send(self.http.get(format!("{}{path}", self.base))).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub(crate) fn get(&self, path: &str) -> (u16, Value) {
        let (status, body) = self.text(path);
        (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {status} {body:?} is not JSON: {e}")))
    }

    pub(crate) fn post(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let (status, body) = self.send(request).unwrap_or_else(|e| panic!("POST {path}: {e}"));
        (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("POST {path}: {status} {body:?} is not JSON: {e}")))
    }

    pub(crate) fn wait_ready(&self, engine: &mut Child) {
        wait_until("the API to be ready", Duration::from_secs(60), || {
            if let Ok(Some(status)) = engine.try_wait() {
                panic!("compactor run exited early: {status}");
            }
            matches!(self.send(self.http.get(format!("{}/readyz", self.base))), Ok((200, _)))
        });
    }

    pub(crate) fn wait_cycle_done(&self, cycle_id: u64) {
        wait_until("the triggered cycle to finish", Duration::from_secs(120), || {
            let (_, status) = self.get("/api/v1/compaction/status");
            status["manager"]["current_cycle_id"] == cycle_id && status["manager"]["cycle_running"] == false
        });
    }
}

/// A lake whose config serves the API on a free port, plus `configure`.
pub(crate) fn api_lake(configure: impl FnOnce(crate::kit::TestConfig) -> crate::kit::TestConfig) -> (Lake, u16) {
    let port = free_port();
    // Schedules that never fire during a test: the test triggers every cycle.
    let lake = lake_configured(50, |config| configure(config.schedules("0 0 1 1 *").section("api", "listen", format!("127.0.0.1:{port}"))));
    (lake, port)
}

fn stop(mut engine: Child) {
    signal_group(&engine, libc::SIGTERM);
    let status = engine.wait().unwrap();
    assert!(status.success(), "compactor run exited with {status}");
}

/// `name{labels} value` lines of `metric`, summed over its label sets whose
/// text contains every one of `labels`.
fn metric_sum(metrics: &str, metric: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| series.split('{').next() == Some(metric) && labels.iter().all(|label| series.contains(label)))
        .map(|(_, value)| value.parse::<f64>().unwrap())
        .sum()
}

fn promtool_check(metrics: &str) {
    use std::io::Write;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`; .ci/run installs it) must be on PATH");
    promtool.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(output.status.success(), "promtool check metrics: {}\n{metrics}", text(&output));
}

/// Every `compactor_*` series the shipped Grafana dashboard queries exists.
fn assert_dashboard_queries_exported_metrics(metrics: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/grafana/compactor-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (start, _) in expr.match_indices("compactor_") {
                let name: String = expr[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                queried.push(name);
            }
        }
    }
    assert!(queried.len() > 10, "{queried:?}");
    for name in queried {
        assert!(
            metrics.lines().any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "the dashboard queries {name}, which /metrics does not export"
        );
    }
}

#[test]
fn every_endpoint_answers_and_a_triggered_cycle_shows_in_jobs_history_and_metrics() {
    let (lake, port) = api_lake(|config| config.section("api", "token", TOKEN));
    // Each job stalls a second after its merge, so the cycle is still
    // running when the test looks at it.
    let mut engine = spawn_compactor(&lake.config, &["run"], &[("COMPACTOR_STALL", "after-merge:1000")]);
    let api = Client::new(port);
    api.wait_ready(&mut engine);

    assert_eq!(api.get("/healthz"), (200, serde_json::json!({ "status": "ok" })));
    let (status, body) = api.get("/api/v1/compaction/status");
    assert_eq!(status, 200);
    assert_eq!(body["manager"]["total_completed"], 0);
    assert_eq!(body["schedulers"]["hourly"]["schedule"], "0 0 1 1 *", "{body}");
    assert_eq!(body["schedulers"]["daily"]["running"], true, "{body}");
    assert!(body["schedulers"]["hourly"]["next_run"].is_string(), "{body}");
    let (status, stats) = api.get("/api/v1/compaction/stats");
    assert_eq!(status, 200);
    for key in ["total_jobs_completed", "total_jobs_failed", "total_files_compacted", "total_bytes_saved", "total_bytes_saved_mb"] {
        assert_eq!(stats[key].as_f64(), Some(0.0), "{key}: {stats}");
    }
    assert_eq!(stats["total_manifests_recover"], 0);
    assert_eq!(stats["cycle_running"], false);
    assert_eq!(stats["current_cycle_id"], 0);
    assert_eq!(stats["recent_jobs"], serde_json::json!([]), "an empty list, never null");
    assert_eq!(stats["tiers"].as_array().map(Vec::len), Some(2));
    let (status, candidates) = api.get("/api/v1/compaction/candidates");
    assert_eq!(status, 200);
    // The raw preview: 2 measurements × 2 hours for hourly, 2 days' worth for daily.
    assert!(candidates["count"].as_u64().unwrap() >= 4, "{candidates}");
    let first = &candidates["candidates"][0];
    for key in ["database", "measurement", "partition_path", "file_count", "tier"] {
        assert!(!first[key].is_null(), "{key}: {first}");
    }
    assert_eq!(api.get("/api/v1/compaction/jobs"), (200, serde_json::json!({ "active_jobs": 0, "jobs": [] })));

    // Mutations: no token, a wrong token, bad input.
    let trigger = "/api/v1/compaction/trigger";
    let (status, body) = api.post(trigger, None);
    assert_eq!((status, body["success"].clone()), (401, Value::Bool(false)), "{body}");
    let (status, body) = api.post(trigger, Some("wrong"));
    assert_eq!(status, 401, "{body}");
    for bad_database in ["1db", "a%20b", &"a".repeat(65)] {
        let (status, body) = api.post(&format!("{trigger}?database={bad_database}"), Some(TOKEN));
        assert_eq!(status, 400, "{bad_database}: {body}");
        assert!(body["error"].as_str().unwrap().starts_with("Invalid database name"), "{body}");
    }
    let (status, body) = api.post(&format!("{trigger}?tier=hourlyy"), Some(TOKEN));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("tier"), "{body}");
    let (status, body) = api.post(&format!("{trigger}?force=maybe"), Some(TOKEN));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("force"), "{body}");
    let (status, body) = api.post(&format!("{trigger}?databse=db"), Some(TOKEN));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("databse"), "{body}");
    assert_eq!(api.get("/api/v1/compaction/status").1["manager"]["current_cycle_id"], 0, "refused triggers start nothing");

    // A trigger, and a second one while it runs.
    let (status, started) = api.post(&format!("{trigger}?database=db"), Some(TOKEN));
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["status"], "running");
    assert_eq!(started["message"], "Compaction triggered");
    assert_eq!(started["cycle_id"], 1);
    assert_eq!(started["database"], "db");
    assert_eq!(started["tiers"], serde_json::json!(["hourly", "daily"]));
    let (status, conflict) = api.post(trigger, Some(TOKEN));
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["is_running"], true);
    assert_eq!(conflict["cycle_id"], 1);
    assert_eq!(conflict["error"], "Compaction cycle already running");
    wait_until("a job in /jobs", Duration::from_secs(60), || api.get("/api/v1/compaction/jobs").1["active_jobs"].as_u64() > Some(0));
    let (_, running) = api.get("/api/v1/compaction/jobs");
    assert_eq!(running["jobs"][0]["database"], "db", "{running}");
    assert!(running["jobs"][0]["partition_path"].as_str().unwrap().starts_with("db/"), "{running}");
    api.wait_cycle_done(1);

    // The cycle's records: history, jobs, stats and metrics agree.
    let (status, history) = api.get("/api/v1/compaction/history");
    assert_eq!(status, 200);
    let records = history["recent_jobs"].as_array().unwrap().clone();
    assert_eq!(records.len(), 6, "4 hourly and 2 daily jobs: {history}");
    assert!(records.iter().all(|r| r["cycle_id"] == 1 && r["success"] == true), "{history}");
    assert!(records.iter().all(|r| r["policy_hash"].as_str().is_some_and(|h| h.len() == 64)), "{history}");
    assert_eq!(history["total_jobs"], 6);
    for limit in ["0", "x", "-3"] {
        assert_eq!(api.get(&format!("/api/v1/compaction/history?limit={limit}")).1["recent_jobs"].as_array().unwrap().len(), 6, "{limit}");
    }
    assert_eq!(api.get("/api/v1/compaction/history?limit=2").1["recent_jobs"].as_array().unwrap().len(), 2);
    let (_, stats) = api.get("/api/v1/compaction/stats");
    let sum = |key: &str| records.iter().map(|r| r[key].as_u64().unwrap()).sum::<u64>();
    assert_eq!(stats["total_jobs_completed"], 6);
    assert_eq!(stats["total_files_compacted"].as_u64(), Some(sum("files_compacted")));
    let (status, metrics) = api.text("/metrics");
    assert_eq!(status, 200);
    promtool_check(&metrics);
    for (tier, jobs) in [("hourly", 4.0), ("daily", 2.0)] {
        let tier_label = format!("tier=\"{tier}\"");
        assert_eq!(metric_sum(&metrics, "compactor_jobs_total", &[&tier_label, "outcome=\"success\""]), jobs, "{metrics}");
    }
    let counters = [
        ("compactor_job_files_read_total", "files_compacted"),
        ("compactor_job_files_written_total", "files_out"),
        ("compactor_job_bytes_read_total", "bytes_before"),
        ("compactor_job_bytes_written_total", "bytes_after"),
        ("compactor_job_rows_read_total", "rows_before"),
        ("compactor_job_rows_written_total", "rows_after"),
    ];
    for (metric, field) in counters {
        assert_eq!(metric_sum(&metrics, metric, &[]), sum(field) as f64, "{metric} vs {field}");
    }
    let job_puts: u64 = records.iter().map(|r| r["requests"]["put"].as_u64().unwrap()).sum();
    assert_eq!(metric_sum(&metrics, "compactor_store_requests_total", &["kind=\"put\"", "source=\"job\""]), job_puts as f64);
    assert_eq!(metric_sum(&metrics, "compactor_cycles_total", &[]), 1.0);
    assert!(metric_sum(&metrics, "compactor_plugin_calls_total", &["tier=\"hourly\""]) > 0.0, "{metrics}");
    assert_dashboard_queries_exported_metrics(&metrics);

    // The partition outlook.
    let (status, outlook) = api.get("/api/v1/compaction/partitions/db/cpu");
    assert_eq!(status, 200, "{outlook}");
    let partitions = outlook["partitions"].as_array().unwrap();
    assert!(!partitions.is_empty());
    for partition in partitions {
        assert!(partition["reason"].as_str().is_some_and(|r| !r.is_empty()), "{partition}");
        assert!(partition["files"].as_u64().unwrap() >= 1, "{partition}");
        assert_eq!(partition["tiers"].as_array().map(Vec::len), Some(2), "{partition}");
    }
    let (status, body) = api.get("/api/v1/compaction/partitions/db/nosuch");
    assert_eq!(status, 404, "{body}");
    let (status, body) = api.get("/api/v1/compaction/partitions/db/cpu?from=yesterday");
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("from"), "{body}");
    let (status, body) = api.get("/api/v1/compaction/partitions/db/cpu?from=2026-04-13&to=2026-04-12");
    assert_eq!(status, 400, "{body}");
    let (status, body) = api.get("/api/v1/compaction/partitions/db/cpu?form=2026-04-13");
    assert_eq!(status, 400, "{body}");

    // Plugins and their reload.
    let (status, plugins) = api.get("/api/v1/plugins");
    assert_eq!(status, 200);
    let list = plugins["plugins"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{plugins}");
    for plugin in list {
        assert_eq!(plugin["wit_version"], "1.1.0", "{plugin}");
        assert_eq!(plugin["content_hash"].as_str().map(str::len), Some(64), "{plugin}");
        assert!(plugin["load_error"].is_null());
        assert!(plugin["calls"].as_u64().unwrap() > 0, "{plugin}");
        assert!(plugin["fuel_used"].as_u64().unwrap() > 0, "{plugin}");
        assert!(plugin["tier_info"]["partition_level"].is_string(), "{plugin}");
        assert!(plugin["tier_info"]["output_suffix"].is_string(), "{plugin}");
    }
    assert_eq!(api.post("/api/v1/plugins/reload", None).0, 401);
    let (status, reloaded) = api.post("/api/v1/plugins/reload", Some(TOKEN));
    assert_eq!((status, reloaded["reloaded"].clone()), (200, Value::Bool(true)), "{reloaded}");

    // Unknown paths and methods.
    let (status, body) = api.get("/api/v1/compaction/nope");
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
    let (status, body) = api.post("/healthz", Some(TOKEN));
    assert_eq!(status, 405);
    assert!(body["error"].is_string());
    stop(engine);
    assert_intact(&lake);
}

#[test]
fn history_survives_sigkill_and_stays_bounded_and_an_api_without_token_is_read_only() {
    let (lake, port) = api_lake(|config| config.section("history", "max_records", 5));
    let mut engine = spawn_compactor(&lake.config, &["run"], &[("COMPACTOR_API_TOKEN", TOKEN)]);
    let api = Client::new(port);
    api.wait_ready(&mut engine);
    // Two cycles: hourly (4 jobs), then daily (2 jobs); 6 records, 5 kept.
    for (cycle, tier) in [(1, "hourly"), (2, "daily")] {
        let (status, body) = api.post(&format!("/api/v1/compaction/trigger?tier={tier}"), Some(TOKEN));
        assert_eq!(status, 200, "{body}");
        api.wait_cycle_done(cycle);
    }
    let before = api.get("/api/v1/compaction/history").1["recent_jobs"].clone();
    assert_eq!(before.as_array().map(Vec::len), Some(5), "{before}");
    signal_group(&engine, libc::SIGKILL);
    let _ = engine.wait();

    // Restarted without a token: history is there, mutations are refused.
    let mut engine = spawn_compactor(&lake.config, &["run"], &[]);
    api.wait_ready(&mut engine);
    let after = api.get("/api/v1/compaction/history").1["recent_jobs"].clone();
    assert_eq!(before, after, "the history survives the kill");
    let tiers: Vec<&str> = after.as_array().unwrap().iter().map(|r| r["tier"].as_str().unwrap()).collect();
    assert_eq!(tiers, ["hourly", "hourly", "hourly", "daily", "daily"], "the oldest entry was pruned");
    let (status, body) = api.post("/api/v1/compaction/trigger", Some(TOKEN));
    assert_eq!(status, 403, "no token configured: read-only ({body})");
    stop(engine);
    let stored = crate::util::files_under_all(&lake.lake.join("_compaction_state/history"));
    assert_eq!(stored.len(), 5, "{stored:?}");
    assert!(stored.iter().all(|f| f.ends_with(".jsonl")), "never a .json a manifest listing would take: {stored:?}");

    let listed = compactor(&["history", "--config", &lake.config, "--format", "json", "--limit", "100"], &[]);
    assert!(listed.status.success(), "{}", text(&listed));
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed, after);
    let table = compactor(&["history", "--config", &lake.config], &[]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("5 jobs shown (0 failed)"), "{}", text(&table));
}

/// The README's API examples, run with curl against a live engine.
#[test]
fn the_readme_curl_examples_work() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let block = readme
        .split("<!-- api-examples -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- /api-examples -->").next())
        .expect("README.md has an api-examples block");
    let commands: Vec<&str> = block.lines().map(str::trim).filter(|l| l.starts_with("curl ")).collect();
    assert!(commands.len() >= 6, "{commands:?}");
    let (lake, port) = api_lake(|config| config);
    let mut engine = spawn_compactor(&lake.config, &["run"], &[("COMPACTOR_API_TOKEN", TOKEN)]);
    Client::new(port).wait_ready(&mut engine);
    let mut outputs = BTreeMap::new();
    for command in commands {
        let command_here = command.replace("127.0.0.1:8081", &format!("127.0.0.1:{port}")).replace("mydb", "db");
        let output = std::process::Command::new("sh")
            .args(["-c", &command_here])
            .env("COMPACTOR_API_TOKEN", TOKEN)
            .output()
            .expect("curl must be on PATH");
        assert!(output.status.success(), "{command}: {}", text(&output));
        outputs.insert(command, String::from_utf8_lossy(&output.stdout).into_owned());
    }
    stop(engine);
    for (command, output) in &outputs {
        if !command.contains("/metrics") {
            assert!(serde_json::from_str::<Value>(output).is_ok(), "{command} printed {output:?}");
        }
    }
}

#[test]
fn json_logs_carry_the_job_id_tier_and_partition_on_every_job_line() {
    let lake = lake_configured(50, |config| config.section("log", "format", "json"));
    let output = compactor(&["-v", "once", "--config", &lake.config, "--now", NOW], &[]);
    assert!(output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<Value> =
        stderr.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{stderr}"))).collect();
    let job_lines: Vec<&Value> = lines.iter().filter(|l| l["fields"]["subprocess"] == "compaction").collect();
    assert!(!job_lines.is_empty(), "{stderr}");
    for line in job_lines {
        for key in ["job_id", "tier", "partition"] {
            assert!(line["fields"][key].as_str().is_some_and(|v| !v.is_empty()), "{key} missing: {line}");
        }
    }
    // The engine's own lines of a batch carry it too, in their span.
    assert!(lines.iter().any(|l| l["span"]["name"] == "batch" && l["span"]["partition"].is_string()), "{stderr}");
    // --log-format overrides the config.
    let text_logs = compactor(&["-v", "once", "--config", &lake.config, "--now", NOW, "--log-format", "text"], &[]);
    assert!(String::from_utf8_lossy(&text_logs.stderr).lines().any(|l| serde_json::from_str::<Value>(l).is_err()), "{}", text(&text_logs));
}

/// `bytes` with a custom section appended: the same component, another
/// content hash.
fn rebuilt(bytes: &[u8]) -> Vec<u8> {
    rebuilt_as(bytes, "2")
}

/// [`rebuilt`] with `tag` in the section: a build no cache has seen, for a
/// unique `tag`.
fn rebuilt_as(bytes: &[u8], tag: &str) -> Vec<u8> {
    let name = b"compactor-test-build";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    out.push(payload.len() as u8);
    out.extend_from_slice(&payload);
    out
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Replaces `path` at once (write aside, then rename), as a deploy would.
fn replace(path: &std::path::Path, bytes: &[u8]) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, bytes).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

#[test]
fn a_changed_component_is_reloaded_between_cycles_and_a_broken_one_leaves_the_old_in_place() {
    let original = std::fs::read(compactor_test_components::EXAMPLE_POLICY).unwrap();
    let replacement = rebuilt(&original);
    let (old_hash, new_hash) = (sha256(&original), sha256(&replacement));
    assert_ne!(old_hash, new_hash);
    let port = free_port();
    let lake = lake_configured(50, |_| {
        crate::kit::TestConfig::new("lake")
            .compaction("temp_directory", "tmp")
            .compaction("threads", 1)
            .tier("hourly", "policy.wasm", &[])
            .schedules("0 0 1 1 *")
            .section("api", "listen", format!("127.0.0.1:{port}"))
            .section("api", "token", TOKEN)
    });
    let component = lake.root.join("policy.wasm");
    std::fs::write(&component, &original).unwrap();
    // Jobs stall three seconds each, so the reload lands while a cycle runs.
    let mut engine = spawn_compactor(&lake.config, &["run"], &[("COMPACTOR_STALL", "after-merge:3000")]);
    let api = Client::new(port);
    api.wait_ready(&mut engine);
    let hash_now = |api: &Client| api.get("/api/v1/plugins").1["plugins"][0]["content_hash"].as_str().unwrap().to_owned();
    assert_eq!(hash_now(&api), old_hash);

    let (status, started) = api.post("/api/v1/compaction/trigger", Some(TOKEN));
    assert_eq!(status, 200, "{started}");
    wait_until("a job in flight", Duration::from_secs(60), || api.get("/api/v1/compaction/jobs").1["active_jobs"].as_u64() > Some(0));
    replace(&component, &replacement);
    wait_until("the reload", Duration::from_secs(30), || hash_now(&api) == new_hash);
    assert_eq!(api.get("/api/v1/compaction/status").1["manager"]["cycle_running"], true, "the reload came while the cycle ran");
    api.wait_cycle_done(1);
    let (_, history) = api.get("/api/v1/compaction/history");
    let first: Vec<&Value> = history["recent_jobs"].as_array().unwrap().iter().filter(|r| r["cycle_id"] == 1).collect();
    assert_eq!(first.len(), 4, "{history}");
    assert!(first.iter().all(|r| r["policy_hash"] == old_hash.as_str()), "the cycle in flight finished on the old build: {history}");

    // A broken replacement: reported, and the running build stays.
    replace(&component, b"not a component");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(hash_now(&api), new_hash, "the broken file did not replace the running build");
    assert!(api.get("/api/v1/plugins").1["reload_error"].is_string(), "the failed reload is shown");
    let (status, body) = api.post("/api/v1/plugins/reload", Some(TOKEN));
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["reloaded"], false);
    assert_eq!(hash_now(&api), new_hash);

    // New files arrive; the next cycle runs on the new build.
    for hour in crate::util::files_under(&lake.lake).iter().filter(|f| f.starts_with("db/cpu/")).take(1) {
        let pristine = lake.root.join("pristine");
        let dir = lake.lake.join(hour).parent().unwrap().to_owned();
        for (i, raw) in crate::util::files_under(&pristine.join("db/cpu")).iter().take(4).enumerate() {
            std::fs::copy(pristine.join("db/cpu").join(raw), dir.join(format!("cpu_20260413_00000{i}_late{i}.parquet"))).unwrap();
        }
    }
    let (status, body) = api.post("/api/v1/compaction/trigger", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    api.wait_cycle_done(2);
    let (_, history) = api.get("/api/v1/compaction/history");
    let second: Vec<&Value> = history["recent_jobs"].as_array().unwrap().iter().filter(|r| r["cycle_id"] == 2).collect();
    assert!(!second.is_empty(), "{history}");
    assert!(second.iter().all(|r| r["policy_hash"] == new_hash.as_str()), "{history}");
    stop(engine);
}

#[test]
fn a_job_killed_for_memory_is_counted_as_out_of_memory_in_metrics_and_history() {
    let port = free_port();
    let lake = lake_configured(20_000, |config| {
        config
            .schedules("0 0 1 1 *")
            .section("api", "listen", format!("127.0.0.1:{port}"))
            .section("api", "token", TOKEN)
            .compaction("memory_limit", "1MB")
            .compaction("max_files_per_batch", 12)
    });
    let mut engine = spawn_compactor(&lake.config, &["run"], &[]);
    let api = Client::new(port);
    api.wait_ready(&mut engine);
    let (status, body) = api.post("/api/v1/compaction/trigger?tier=hourly", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    api.wait_cycle_done(1);
    let (_, metrics) = api.text("/metrics");
    let (_, history) = api.get("/api/v1/compaction/history");
    stop(engine);
    let failed = metric_sum(&metrics, "compactor_jobs_total", &["tenant=\"\"", "tier=\"hourly\"", "outcome=\"out_of_memory\""]);
    assert!(failed > 0.0, "{metrics}");
    assert_eq!(metric_sum(&metrics, "compactor_jobs_total", &["outcome=\"success\""]), 0.0, "{metrics}");
    let records = history["recent_jobs"].as_array().unwrap();
    assert_eq!(records.len() as f64, failed, "one record per counted job: {history}");
    assert!(records.iter().all(|r| r["failure_kind"] == "out_of_memory"), "{history}");
    assert_intact(&lake);
}

#[test]
fn sigterm_during_a_triggered_cycle_lets_its_jobs_finish() {
    let (lake, port) = api_lake(|config| config.section("api", "token", TOKEN));
    let mut engine = spawn_compactor(&lake.config, &["run"], &[("COMPACTOR_STALL", "after-merge:1500")]);
    let api = Client::new(port);
    api.wait_ready(&mut engine);
    let (status, body) = api.post("/api/v1/compaction/trigger?tier=hourly", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    wait_until("a job in flight", Duration::from_secs(60), || api.get("/api/v1/compaction/jobs").1["active_jobs"].as_u64() > Some(0));
    signal_group(&engine, libc::SIGTERM);
    wait_until("readyz to say stopping", Duration::from_secs(10), || api.get("/readyz").0 == 503);
    // While the jobs drain, the API still answers, and refuses new work.
    let (status, body) = api.post("/api/v1/compaction/trigger", Some(TOKEN));
    assert_eq!(status, 503, "a trigger after SIGTERM: {body}");
    let (status, body) = api.post("/api/v1/plugins/reload", Some(TOKEN));
    assert_eq!(status, 503, "a reload after SIGTERM: {body}");
    assert_eq!(api.get("/healthz").0, 200);
    let status = engine.wait().unwrap();
    assert!(status.success(), "{status}");
    // The jobs in flight finished: nothing for recovery, every row once.
    let manifests: Vec<String> =
        crate::util::files_under(&lake.lake.join("_compaction_state")).into_iter().filter(|f| f.ends_with(".json")).collect();
    assert!(manifests.is_empty(), "{manifests:?}");
    assert_intact(&lake);
    let history = compactor(&["history", "--config", &lake.config, "--format", "json"], &[]);
    let records: Vec<Value> = serde_json::from_slice(&history.stdout).unwrap();
    assert!(!records.is_empty() && records.iter().all(|r| r["success"] == true), "{records:?}");
}

#[test]
fn loose_parameters_hostile_clients_and_odd_tokens_are_handled() {
    let (lake, port) = api_lake(|config| config.section("api", "token", TOKEN));
    // An empty environment token does not override the config's.
    let mut engine = spawn_compactor(&lake.config, &["run"], &[("COMPACTOR_API_TOKEN", "")]);
    let api = Client::new(port);
    api.wait_ready(&mut engine);
    let trigger = "/api/v1/compaction/trigger";
    for (query, field) in [("?database=", "database"), ("?force=", "force"), ("?tier=", "tier"), ("?tier=hourly&tier=daily", "tier")] {
        let (status, body) = api.post(&format!("{trigger}{query}"), Some(TOKEN));
        assert_eq!(status, 400, "{query}: {body}");
        let error = body["error"].as_str().unwrap().to_lowercase();
        assert!(error.contains(field), "{query}: {body}");
    }
    let post_json = |query: &str, json: &str| {
        let request = api.http.post(format!("{}{trigger}{query}", api.base)).bearer_auth(TOKEN).body(json.to_owned());
        let (status, body) = api.send(request).unwrap();
        (status, serde_json::from_str::<Value>(&body).unwrap_or_else(|_| panic!("not JSON: {body}")))
    };
    for json in [
        r#"{"database": null}"#,
        r#"{"database": true}"#,
        r#"{"tier": []}"#,
        r#"{"tier": [5, 6]}"#,
        r#"{"force": "maybe"}"#,
        r#"{"force": 1}"#,
    ] {
        let (status, body) = post_json("", json);
        assert_eq!(status, 400, "{json}: {body}");
    }
    let (status, body) = post_json("?database=nodb", r#"{"database": "db"}"#);
    assert_eq!(status, 400, "query and body together: {body}");
    let (status, body) = post_json("", &format!(r#"{{"database": "{}"}}"#, "x".repeat(100 * 1024)));
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].is_string());
    assert_eq!(api.get("/api/v1/compaction/status").1["manager"]["current_cycle_id"], 0, "nothing started");
    // The scheme is case-insensitive.
    let request = api.http.post(format!("{}{trigger}?tier=hourly", api.base)).header("Authorization", format!("bearer {TOKEN}"));
    assert_eq!(api.send(request).unwrap().0, 200);
    api.wait_cycle_done(1);

    // A mutation whose body never arrives is refused before its body is read.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut slow, b"POST /api/v1/compaction/trigger HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = [0u8; 64];
    let read = std::io::Read::read(&mut slow, &mut answer).expect("an answer, not a wait for the body");
    assert!(String::from_utf8_lossy(&answer[..read]).starts_with("HTTP/1.1 401"), "{}", String::from_utf8_lossy(&answer[..read]));
    drop(slow);

    // Connections that never finish their headers do not take the engine's
    // descriptors, and are dropped after the header timeout.
    let held: Vec<std::net::TcpStream> = (0..400)
        .filter_map(|_| {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            std::io::Write::write_all(&mut stream, b"GET /healthz HTTP/1.1\r\nHost: x\r\n").ok()?;
            Some(stream)
        })
        .collect();
    assert!(!held.is_empty());
    let descriptors = std::fs::read_dir(format!("/proc/{}/fd", engine.id())).unwrap().count();
    assert!(descriptors < 400, "{descriptors} descriptors open in the engine");
    wait_until("the API to answer again", Duration::from_secs(30), || {
        matches!(api.send(api.http.get(format!("{}/healthz", api.base))), Ok((200, _)))
    });
    drop(held);
    stop(engine);
    assert_intact(&lake);
}

#[test]
fn a_tier_whose_policy_keeps_failing_is_suspended_and_the_other_tier_goes_on() {
    let port = free_port();
    let lake = lake_configured(50, |_| {
        crate::kit::TestConfig::new("lake")
            .compaction("temp_directory", "tmp")
            .compaction("threads", 1)
            .tier("hostile", compactor_test_components::HOSTILE, &[("mode", crate::kit::value("panic"))])
            .tier("hourly", "builtin:hourly", &[])
            .schedules("0 0 1 1 *")
            .section("api", "listen", format!("127.0.0.1:{port}"))
            .section("api", "token", TOKEN)
    });
    let mut engine = spawn_compactor(&lake.config, &["run"], &[]);
    let api = Client::new(port);
    api.wait_ready(&mut engine);
    for cycle in 1..=3 {
        let (status, body) = api.post("/api/v1/compaction/trigger", Some(TOKEN));
        assert_eq!(status, 200, "{body}");
        api.wait_cycle_done(cycle);
    }
    let (_, plugins) = api.get("/api/v1/plugins");
    let hostile = &plugins["plugins"][0];
    assert_eq!(hostile["suspended"], true, "{plugins}");
    assert_eq!(hostile["consecutive_failing_cycles"], 3, "{plugins}");
    assert!(hostile["suspended_until"].is_string() && hostile["last_error"].is_string(), "{plugins}");
    let (_, metrics) = api.text("/metrics");
    assert_eq!(metric_sum(&metrics, "compactor_plugin_suspended", &["tier=\"hostile\""]), 1.0);
    // The healthy tier compacted both measurements' hours in the first cycle.
    let (_, history) = api.get("/api/v1/compaction/history");
    let hourly = history["recent_jobs"].as_array().unwrap().iter().filter(|r| r["tier"] == "hourly" && r["success"] == true).count();
    assert_eq!(hourly, 4, "{history}");
    // A suspended tier is not called, by cycles or by the API's plans.
    let calls = || api.get("/api/v1/plugins").1["plugins"][0]["calls"].as_u64().unwrap();
    let before = calls();
    assert_eq!(api.get("/api/v1/compaction/candidates").0, 200);
    assert_eq!(api.post("/api/v1/compaction/trigger", Some(TOKEN)).0, 200);
    api.wait_cycle_done(4);
    assert_eq!(calls(), before, "no call while suspended");
    // A reload of the same build does not lift the suspension (issue 24: only a
    // new build of the tier's own component does, see the tenants' test).
    assert_eq!(api.post("/api/v1/plugins/reload", Some(TOKEN)).0, 200);
    assert_eq!(api.get("/api/v1/plugins").1["plugins"][0]["suspended"], true);
    stop(engine);
}

/// A lake with the top-level `hourly` tier and `tenants` (TOML tables),
/// whose API listens on the port returned.
fn tenants_lake(tenants: &[&str]) -> (Lake, u16) {
    let port = free_port();
    let lake = lake_configured(50, |_| {
        let config = crate::kit::TestConfig::new("lake")
            .compaction("temp_directory", "tmp")
            .compaction("threads", 1)
            .tier("hourly", "builtin:hourly", &[])
            .schedules("0 0 1 1 *");
        tenants
            .iter()
            .fold(config, |config, tenant| config.tenant(tenant))
            .section("api", "listen", format!("127.0.0.1:{port}"))
            .section("api", "token", TOKEN)
    });
    (lake, port)
}

/// A lake whose database `db` belongs to tenant `acme`, whose own tier
/// `own` runs `policy.wasm` (written with `bytes`, its path returned).
fn acme_lake(bytes: &[u8]) -> (Lake, u16, std::path::PathBuf) {
    let (lake, port) = tenants_lake(&[r#"name = "acme"
           databases = ["db"]
           [[tiers]]
           name = "own"
           plugin = "policy.wasm"
           schedule = "0 0 1 1 *""#]);
    let component = lake.root.join("policy.wasm");
    std::fs::write(&component, bytes).unwrap();
    (lake, port, component)
}

/// Issue 20: consumers that read only the top-level tiers missed a tenant's
/// own. Its tier is in `/status` and `/stats`, the trigger's reply names it,
/// candidates carry its tenant, and editing its component file hot-reloads
/// it.
#[test]
fn a_tenants_own_tier_shows_everywhere_and_its_component_is_watched() {
    let original = std::fs::read(compactor_test_components::EXAMPLE_POLICY).unwrap();
    let replacement = rebuilt(&original);
    let (lake, port, component) = acme_lake(&original);
    let mut engine = spawn_compactor(&lake.config, &["run"], &[("COMPACTOR_STALL", "after-merge:1000")]);
    let api = Client::new(port);
    api.wait_ready(&mut engine);

    // A trigger whose tiers never compact the database it names does nothing: 422, saying why.
    let (status, body) = api.post("/api/v1/compaction/trigger?tier=hourly&database=db", Some(TOKEN));
    assert_eq!(status, 422, "db belongs to acme, whose tiers are not hourly: {body}");
    assert!(body["error"].as_str().unwrap().contains("acme"), "{body}");
    let (status, body) = api.post("/api/v1/compaction/trigger?tier=acme/own&database=other", Some(TOKEN));
    assert_eq!(status, 422, "other belongs to no tenant: {body}");
    assert_eq!(api.get("/api/v1/compaction/status").1["manager"]["current_cycle_id"], 0, "nothing began");

    let (_, status) = api.get("/api/v1/compaction/status");
    assert_eq!(status["schedulers"]["acme/own"]["tenant"], "acme", "{status}");
    assert!(status["schedulers"]["hourly"].is_object(), "{status}");
    let (_, stats) = api.get("/api/v1/compaction/stats");
    let tiers = stats["tiers"].as_array().unwrap();
    assert!(tiers.iter().any(|t| t["name"] == "own" && t["tenant"] == "acme"), "{stats}");
    let (_, candidates) = api.get("/api/v1/compaction/candidates");
    let candidates = candidates["candidates"].as_array().unwrap();
    assert!(!candidates.is_empty() && candidates.iter().all(|c| c["tenant"] == "acme" && c["tier"] == "own"), "{candidates:?}");

    let own_hash = |api: &Client| {
        let (_, plugins) = api.get("/api/v1/plugins");
        plugins["plugins"].as_array().unwrap().iter().find(|p| p["tier"] == "acme/own").unwrap()["content_hash"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(own_hash(&api), sha256(&original));
    replace(&component, &replacement);
    wait_until("the tenant's component to be reloaded", Duration::from_secs(30), || own_hash(&api) == sha256(&replacement));

    let (status, reply) = api.post("/api/v1/compaction/trigger", Some(TOKEN));
    assert_eq!(status, 200, "{reply}");
    assert!(reply["tiers"].as_array().unwrap().iter().any(|t| t == "acme/own"), "{reply}");
    wait_until("a job in flight", Duration::from_secs(60), || api.get("/api/v1/compaction/jobs").1["active_jobs"].as_u64() > Some(0));
    let (_, jobs) = api.get("/api/v1/compaction/jobs");
    assert!(jobs["jobs"].as_array().unwrap().iter().all(|j| j["tenant"] == "acme"), "every job in flight names its tenant: {jobs}");
    api.wait_cycle_done(1);
    signal_group(&engine, libc::SIGTERM);
    let _ = engine.wait();
}

/// Issue 24: a reload that compiles a new build and a later one that finds
/// a cached build on disk no longer finish in the wrong order: reloads run
/// one at a time and read the file when they run, so what is installed at
/// the end is what is on disk, and each answer says which hash it installed.
#[test]
fn reloads_run_in_order_and_install_what_is_on_disk() {
    let original = std::fs::read(compactor_test_components::EXAMPLE_POLICY).unwrap();
    let (lake, port, component) = acme_lake(&original);
    let mut engine = spawn_compactor(&lake.config, &["run"], &[]);
    let api = Client::new(port);
    api.wait_ready(&mut engine);
    let own_hash = || {
        let (_, plugins) = api.get("/api/v1/plugins");
        plugins["plugins"].as_array().unwrap().iter().find(|p| p["tier"] == "acme/own").unwrap()["content_hash"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let unique = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    for round in 0..3 {
        // A build no cache has seen: its reload compiles it, which takes a while.
        replace(&component, &rebuilt_as(&original, &format!("{unique}-{round}")));
        let slow = std::thread::spawn(move || Client::new(port).post("/api/v1/plugins/reload?tenant=acme", Some(TOKEN)));
        std::thread::sleep(Duration::from_millis(40));
        // The deploy is rolled back to the cached build, and reloaded again.
        replace(&component, &original);
        let (status, fast) = api.post("/api/v1/plugins/reload?tenant=acme", Some(TOKEN));
        assert_eq!(status, 200, "{fast}");
        let (status, slow) = slow.join().unwrap();
        assert_eq!(status, 200, "{slow}");
        assert_eq!(own_hash(), sha256(&original), "round {round}: what is installed is what is on disk");
        let installed = |answer: &Value| {
            answer["installed"].as_array().unwrap().iter().map(|b| b["tier"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
        };
        assert_eq!(installed(&fast), ["acme/own"], "a tenant's reload touches only its tiers: {fast}");
        let last = [&fast, &slow].into_iter().find(|a| a["installed"][0]["content_hash"] == sha256(&original).as_str());
        assert!(last.is_some(), "one answer says it installed the build on disk: {fast} {slow}");
    }
    stop(engine);
}

/// Issue 24: one tenant's broken component fails only its own tiers'
/// reload (they keep their last good build); a tenant's reload never lifts
/// another tenant's suspension, nor does a reload of an unchanged build;
/// a new build of the suspended tier's own component does.
#[test]
fn a_broken_neighbour_and_a_reload_elsewhere_leave_a_tenant_alone() {
    let original = std::fs::read(compactor_test_components::EXAMPLE_POLICY).unwrap();
    let hostile = std::fs::read(compactor_test_components::HOSTILE).unwrap();
    let (lake, port) = tenants_lake(&[
        r#"name = "bad"
           databases = ["db"]
           [[tiers]]
           name = "hostile"
           plugin = "bad.wasm"
           schedule = "0 0 1 1 *"
           [tiers.config]
           mode = "panic""#,
        r#"name = "good"
           databases = ["good_*"]
           [[tiers]]
           name = "own"
           plugin = "good.wasm"
           schedule = "0 0 1 1 *""#,
    ]);
    let (bad, good) = (lake.root.join("bad.wasm"), lake.root.join("good.wasm"));
    std::fs::write(&bad, &hostile).unwrap();
    std::fs::write(&good, &original).unwrap();
    let mut engine = spawn_compactor(&lake.config, &["run"], &[]);
    let api = Client::new(port);
    api.wait_ready(&mut engine);
    let plugin = |tier: &str| {
        let (_, plugins) = api.get("/api/v1/plugins");
        plugins["plugins"].as_array().unwrap().iter().find(|p| p["tier"] == tier).unwrap().clone()
    };
    for cycle in 1..=3 {
        assert_eq!(api.post("/api/v1/compaction/trigger", Some(TOKEN)).0, 200);
        api.wait_cycle_done(cycle);
    }
    assert_eq!(plugin("bad/hostile")["suspended"], true, "{}", plugin("bad/hostile"));
    let (status, body) = api.post("/api/v1/compaction/trigger?tier=bad/hostile", Some(TOKEN));
    assert_eq!(status, 422, "a trigger of suspended tiers only would do nothing: {body}");
    assert!(body["error"].as_str().unwrap().contains("suspended"), "{body}");

    let (status, body) = api.post("/api/v1/plugins/reload?tenant=good", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(plugin("bad/hostile")["suspended"], true, "another tenant's reload keeps the suspension");
    let (status, body) = api.post("/api/v1/plugins/reload", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(plugin("bad/hostile")["suspended"], true, "a reload of the same build keeps it");
    assert_eq!(api.post("/api/v1/plugins/reload?tenant=nobody", Some(TOKEN)).0, 404);

    // Good's file breaks: only its own tier fails, and keeps its build.
    replace(&good, b"not a component");
    let (status, body) = api.post("/api/v1/plugins/reload", Some(TOKEN));
    assert_eq!(status, 422, "{body}");
    let failed: Vec<&str> = body["failed"].as_array().unwrap().iter().map(|f| f["tier"].as_str().unwrap()).collect();
    assert_eq!(failed, ["good/own"], "{body}");
    assert!(body["installed"].as_array().unwrap().iter().any(|b| b["tier"] == "bad/hostile"), "the others are installed: {body}");
    assert_eq!(plugin("good/own")["content_hash"], sha256(&original).as_str(), "the last good build stays");
    let (status, body) = api.post("/api/v1/plugins/reload?tenant=bad", Some(TOKEN));
    assert_eq!(status, 200, "a neighbour's broken file never fails another tenant's reload: {body}");

    // A new build of bad's own component lifts its suspension.
    replace(&bad, &rebuilt_as(&hostile, "fixed"));
    let (status, body) = api.post("/api/v1/plugins/reload?tenant=bad", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(plugin("bad/hostile")["suspended"], false, "{}", plugin("bad/hostile"));
    stop(engine);
}

/// An engine serving the API over a lake of `databases` (two hours of
/// `cpu` each), configured by `configure` (its tiers and tenants) with
/// schedules that never fire; the lake is under the returned directory.
fn engine_on_databases(
    databases: &[&str],
    configure: impl FnOnce(crate::kit::TestConfig) -> crate::kit::TestConfig,
) -> (tempfile::TempDir, Child, Client) {
    let dir = tempfile::tempdir().unwrap();
    crate::tenants::lake(dir.path(), databases);
    let port = free_port();
    let config = configure(crate::kit::TestConfig::new("lake").compaction("temp_directory", "tmp").compaction("threads", 1))
        .schedules("0 0 1 1 *")
        .section("api", "listen", format!("127.0.0.1:{port}"))
        .section("api", "token", TOKEN)
        .write(dir.path());
    let mut engine = spawn_compactor(&config, &["run"], &[]);
    let api = Client::new(port);
    api.wait_ready(&mut engine);
    (dir, engine, api)
}

/// Issue 24: four tenants whose policy takes two seconds a call beside a
/// benign one. Each tenant's tiers run in a cycle of their own, with no
/// planning slot to wait for: the benign tenant's outputs appear while the
/// slow tenants still plan, and its next trigger starts at once (it was a
/// 409 while any tenant's part of the cycle ran).
#[test]
fn slow_tenants_hold_back_neither_a_benign_tenants_cycle_nor_its_trigger() {
    let slow = ["slow_1", "slow_2", "slow_3", "slow_4"];
    let (dir, engine, api) = engine_on_databases(&[&["acme"][..], &slow[..]].concat(), |config| {
        let config = config.hourly_and_daily().tenant(
            r#"name = "acme"
               databases = ["acme"]"#,
        );
        slow.iter().fold(config, |config, database| {
            config.tenant(&format!(
                r#"name = "{database}"
                   databases = ["{database}"]
                   [limits]
                   fuel_per_call = 1000000000000
                   fuel_per_cycle = 0
                   call_timeout_ms = 2000
                   [[tiers]]
                   name = "hourly"
                   plugin = "{}"
                   schedule = "0 0 1 1 *"
                   config = {{ mode = "loop" }}"#,
                compactor_test_components::HOSTILE
            ))
        })
    });
    let root = dir.path();
    let (status, body) = api.post("/api/v1/compaction/trigger", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    wait_until("acme's first output", Duration::from_secs(60), || {
        crate::tenants::files_of(root, "acme").iter().any(|f| f.ends_with("_hourly.parquet") || f.ends_with("_daily.parquet"))
    });
    let running =
        |api: &Client| -> Vec<Value> { api.get("/api/v1/compaction/status").1["manager"]["running_tenants"].as_array().unwrap().clone() };
    let now_running = running(&api);
    assert!(now_running.iter().any(|t| t.as_str().is_some_and(|t| t.starts_with("slow_"))), "the slow tenants still plan: {now_running:?}");
    wait_until("acme's part of the cycle to end", Duration::from_secs(60), || !running(&api).contains(&Value::from("acme")));
    let still = running(&api);
    assert!(!still.is_empty(), "the slow tenants' parts outlast acme's: {still:?}");
    let (status, body) = api.post("/api/v1/compaction/trigger?database=acme", Some(TOKEN));
    assert_eq!(status, 200, "acme's trigger is not refused while other tenants' cycles run: {body}");
    assert_eq!(body["cycle_id"], 2, "{body}");
    wait_until("every cycle to end", Duration::from_secs(120), || {
        !api.get("/api/v1/compaction/status").1["manager"]["cycle_running"].as_bool().unwrap()
    });
    stop(engine);
    let acme = crate::tenants::files_of(root, "acme");
    assert_eq!(acme.len(), 1, "acme compacted to one day: {acme:?}");
    for database in slow {
        assert_eq!(crate::tenants::files_of(root, database).len(), 24, "{database} untouched");
    }
}

/// Issue 24: `/api/v1/compaction/candidates` beside a tenant whose policy
/// answers validly but takes 0.9 s a call, over 32 partitions (~29 s of
/// planning): each tenant plans within its own deadline, so the answer comes
/// with the benign tenant's candidates and names the tenant cut short (it
/// was a 500 for everyone after 30 s, and the planning went on after it).
#[test]
fn candidates_answer_beside_a_slow_tenant_and_name_it() {
    let slow: Vec<String> = (1..=16).map(|n| format!("slow_{n:02}")).collect();
    let databases: Vec<&str> = std::iter::once("acme").chain(slow.iter().map(String::as_str)).collect();
    let (_dir, engine, api) = engine_on_databases(&databases, |config| {
        config
            .hourly_and_daily()
            .tenant(
                r#"name = "acme"
                   databases = ["acme"]"#,
            )
            .tenant(&format!(
                r#"name = "slow"
                   databases = ["slow_*"]
                   [limits]
                   call_timeout_ms = 2000
                   [[tiers]]
                   name = "hourly"
                   plugin = "{}"
                   schedule = "0 0 1 1 *"
                   config = {{ mode = "nap" }}"#,
                compactor_test_components::RAW
            ))
    });
    let (status, body) = api.get("/api/v1/compaction/candidates");
    assert_eq!(status, 200, "{body}");
    let candidates = body["candidates"].as_array().unwrap();
    assert!(candidates.iter().any(|c| c["tenant"] == "acme"), "the benign tenant's candidates are there: {body}");
    assert!(candidates.iter().any(|c| c["tenant"] == "slow"), "and what the slow one planned in time: {body}");
    assert_eq!(body["timed_out_tenants"], serde_json::json!(["slow"]), "{body}");
    assert_eq!(body["partial"], true);
    stop(engine);
}

/// Issue 24, from the adversarial pass: a tenant whose planning time runs
/// out every cycle still gets round its partitions. Each cycle goes on
/// where the last one stopped, and plans at least one partition, so even a
/// budget of a millisecond compacts everything in time (it compacted
/// nothing, and a longer budget only the first partitions, cycle after
/// cycle).
#[test]
fn a_tenant_out_of_planning_time_every_cycle_still_gets_round_its_partitions() {
    let databases = ["a_1", "a_2", "a_3", "a_4"];
    let (dir, engine, api) = engine_on_databases(&databases, |config| {
        config.tier("hourly", "builtin:hourly", &[]).tenant(
            r#"name = "hurried"
               databases = ["a_*"]
               max_planning_time = "1ms""#,
        )
    });
    let root = dir.path();
    let compacted = || databases.iter().all(|db| crate::tenants::files_of(root, db).len() == 2);
    let mut cycles = 0;
    while !compacted() && cycles < 12 {
        cycles += 1;
        let (status, body) = api.post("/api/v1/compaction/trigger", Some(TOKEN));
        assert_eq!(status, 200, "{body}");
        api.wait_cycle_done(cycles);
    }
    stop(engine);
    assert!(compacted(), "every hour compacted after {cycles} cycles: {:?}", databases.map(|db| crate::tenants::files_of(root, db).len()));
    assert!(cycles >= 2, "one partition a cycle at least, not all at once in the first");
    for database in databases {
        crate::tenants::assert_rows_kept(root, database);
    }
}

/// Issue 21 §4g: a cycle the API started had no deadline (Arc's is 30
/// minutes). With `trigger_timeout` past, the job running finishes and no
/// further batch starts.
#[test]
fn a_triggered_cycle_starts_no_batch_after_its_trigger_timeout() {
    let (lake, port) =
        api_lake(|config| config.section("api", "token", TOKEN).section("api", "trigger_timeout", "2s").compaction("max_concurrent", 1));
    let mut engine = spawn_compactor(&lake.config, &["run"], &[("COMPACTOR_STALL", "after-merge:3000")]);
    let api = Client::new(port);
    api.wait_ready(&mut engine);
    let (status, body) = api.post("/api/v1/compaction/trigger?tier=hourly", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    api.wait_cycle_done(body["cycle_id"].as_u64().unwrap());
    signal_group(&engine, libc::SIGTERM);
    let output = engine.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let history = compactor(&["history", "--config", &lake.config, "--format", "json"], &[]);
    let records: Vec<Value> = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(records.len(), 1, "one job ran (4 hourly batches were planned): {records:#?}");
    assert!(text(&output).contains("held_back=3"), "the three batches not started are counted: {}", text(&output));
    assert_eq!(records[0]["success"], true, "the job running at the deadline finished: {records:#?}");
    assert_intact(&lake);
}

/// Issue 21 §4n: every read endpoint answered whoever reached the port.
#[test]
fn with_auth_all_only_the_probes_and_open_metrics_answer_without_the_token() {
    let (_lake, port) =
        api_lake(|config| config.section("api", "token", TOKEN).section("api", "auth", "all").section("api", "open_metrics", true));
    let mut engine = spawn_compactor(&_lake.config, &["run"], &[]);
    let api = Client::new(port);
    api.wait_ready(&mut engine);
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(api.text(open).0, 200, "{open}");
    }
    for path in [
        "/api/v1/compaction/status",
        "/api/v1/compaction/stats",
        "/api/v1/compaction/jobs",
        "/api/v1/compaction/history",
        "/api/v1/compaction/candidates",
        "/api/v1/compaction/partitions/db/cpu",
        "/api/v1/plugins",
    ] {
        assert_eq!(api.text(path).0, 401, "{path} without the token");
        let (status, body) = api.send(api.http.get(format!("{}{path}", api.base)).bearer_auth(TOKEN)).unwrap();
        assert_eq!(status, 200, "{path} with the token: {body}");
        let (status, _) = api.send(api.http.get(format!("{}{path}", api.base)).bearer_auth("wrong")).unwrap();
        assert_eq!(status, 401, "{path} with a wrong token");
    }
    stop(engine);
}

/// Issue 21 §4e: a reload reloaded the components only. Now it reads the
/// whole file again: an invalid one changes nothing (422), a valid one
/// applies from the next cycle, and a section only a restart can change
/// keeps its running value and is named.
#[test]
fn a_reload_reads_the_whole_config_file_and_keeps_the_old_one_if_invalid() {
    let (lake, port) = api_lake(|config| config.section("api", "token", TOKEN));
    let mut engine = spawn_compactor(&lake.config, &["run"], &[]);
    let api = Client::new(port);
    api.wait_ready(&mut engine);
    let original = std::fs::read_to_string(&lake.config).unwrap();
    let tiers = |api: &Client| -> Vec<String> {
        let (_, body) = api.get("/api/v1/plugins");
        let mut keys: Vec<String> = body["plugins"].as_array().unwrap().iter().map(|p| p["tier"].as_str().unwrap().to_owned()).collect();
        keys.sort();
        keys
    };
    assert_eq!(tiers(&api), ["daily", "hourly"]);

    std::fs::write(&lake.config, format!("{original}\n[[tenants]]\nname = \"acme\"\n")).unwrap();
    let (status, body) = api.post("/api/v1/plugins/reload", Some(TOKEN));
    assert_eq!(status, 422, "a tenant without databases is invalid: {body}");
    assert!(body["error"].as_str().unwrap().contains("the running config is kept"), "{body}");
    assert_eq!(tiers(&api), ["daily", "hourly"], "nothing changed");

    let moved = original.replacen("url = \"lake\"", "url = \"./lake\"", 1);
    assert_ne!(moved, original, "the test changes the storage section");
    std::fs::write(&lake.config, format!("{moved}\n[[tenants]]\nname = \"acme\"\ndatabases = [\"acme_*\"]\n")).unwrap();
    let (status, body) = api.post("/api/v1/plugins/reload", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["config"]["restart_needed"], serde_json::json!(["storage"]), "{body}");
    assert_eq!(tiers(&api), ["acme/daily", "acme/hourly", "daily", "hourly"], "the new tenant's tiers are in effect");
    let (status, body) = api.post("/api/v1/compaction/trigger?tier=acme/hourly", Some(TOKEN));
    assert_eq!(status, 200, "a trigger sees the new config: {body}");
    api.wait_cycle_done(body["cycle_id"].as_u64().unwrap());
    stop(engine);
    assert_intact(&lake);
}

/// Issue 22: etcd paused past `session_ttl`: the node counts itself out
/// (`compactor_cluster_up 0`), a triggered cycle starts no job and loses
/// nothing; once etcd is back the node rejoins and compacts.
#[test]
fn a_node_cut_off_from_etcd_starts_no_job_and_compacts_again_when_healed() {
    let etcd = crate::kit::EtcdServer::start();
    let (lake, port) = api_lake(|config| {
        config
            .section("api", "token", TOKEN)
            .cluster_on_etcd("compactor")
            .cluster("etcd_endpoints", vec![etcd.endpoint.clone()])
            .cluster("node_id", "paused")
    });
    let mut engine = spawn_compactor(&lake.config, &["run"], &[]);
    let api = Client::new(port);
    api.wait_ready(&mut engine);
    let cluster_up = |api: &Client| metric_sum(&api.text("/metrics").1, "compactor_cluster_up", &[]);
    wait_until("the node to hold the lease", Duration::from_secs(20), || {
        api.get("/api/v1/cluster").1["compactor_lease"]["holder"] == "paused"
    });
    assert_eq!(cluster_up(&api), 1.0);
    let before = crate::util::files_under(&lake.lake);
    etcd.signal(libc::SIGSTOP);
    wait_until("the node to count itself out", Duration::from_secs(20), || cluster_up(&api) == 0.0);
    let (status, body) = api.post("/api/v1/compaction/trigger", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    api.wait_cycle_done(body["cycle_id"].as_u64().unwrap());
    assert_eq!(crate::util::files_under(&lake.lake), before, "no job started while cut off");
    let (_, cluster) = api.get("/api/v1/cluster");
    assert_eq!(cluster["up"], false, "{cluster}");
    etcd.signal(libc::SIGCONT);
    wait_until("the node to rejoin", Duration::from_secs(30), || cluster_up(&api) == 1.0);
    wait_until("the node to hold the lease again", Duration::from_secs(30), || {
        api.get("/api/v1/cluster").1["compactor_lease"]["holder"] == "paused"
    });
    let (status, body) = api.post("/api/v1/compaction/trigger", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    api.wait_cycle_done(body["cycle_id"].as_u64().unwrap());
    stop(engine);
    assert!(crate::util::files_under(&lake.lake).len() < before.len(), "compacted once healed");
    assert_intact(&lake);
}
