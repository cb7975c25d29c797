//! Cluster mode on a real etcd (`$COMPACTOR_TEST_ETCD_ENDPOINT`, which
//! `.ci/run` starts, or an `etcd` this test binary starts): one compactor
//! lease and failover, and the misconfigurations Arc shipped.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::api::{Client, TOKEN, free_port};
use crate::compaction::{Lake, assert_intact, lake_configured};
use crate::kit::{CutProxy, TestConfig, kill_engine_and_wait_for_jobs, signal_group, spawn_compactor, wait_until};
use crate::s3::{Bucket, remote_config};
use crate::util::{compactor, text};

const NOW: &str = "2026-04-13T12:00:00Z";

/// The lake's config for node `node_id` of `role`, written beside the
/// lake's own as `{node_id}.toml`.
fn node_config(lake: &Lake, node_id: &str, role: &str, configure: impl FnOnce(TestConfig) -> TestConfig) -> String {
    let config = TestConfig::new("lake")
        .hourly_and_daily()
        .compaction("temp_directory", format!("tmp-{node_id}"))
        .compaction("threads", 1)
        .cluster_on_etcd(role)
        .cluster("node_id", node_id);
    let written = configure(config).write(&lake.root);
    let path = lake.root.join(format!("{node_id}.toml"));
    std::fs::rename(written, &path).unwrap();
    path.display().to_string()
}

/// `once --format json` on every node's config at the same moment.
fn once_on_every_node(configs: &[String]) -> Vec<std::process::Output> {
    std::thread::scope(|s| {
        let runs: Vec<_> = configs
            .iter()
            .map(|config| s.spawn(move || compactor(&["once", "--config", config, "--now", NOW, "--format", "json"], &[])))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    })
}

/// A `run` daemon, killed when the test ends, a failing one included (its
/// jobs die with it).
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status(config: &str) -> serde_json::Value {
    let output = compactor(&["cluster", "status", "--config", config, "--format", "json"], &[]);
    assert!(output.status.success(), "{}", text(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn three_nodes_running_once_at_the_same_moment_compact_every_row_once_through_one_lease_holder() {
    let lake = lake_configured(20, |c| c);
    let configs: Vec<String> = ["n1", "n2", "n3"].iter().map(|id| node_config(&lake, id, "compactor", |c| c)).collect();
    let outputs = once_on_every_node(&configs);
    let mut compacting = 0;
    for output in &outputs {
        assert!(output.status.success(), "{}", text(output));
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        if !report["jobs"].as_array().unwrap().is_empty() {
            compacting += 1;
        }
    }
    assert_eq!(compacting, 1, "only the lease holder compacts: {:#?}", outputs.iter().map(text).collect::<Vec<_>>());
    // Each left.
    let after = status(&configs[0]);
    assert_eq!(after["members"].as_array().map(Vec::len), Some(0), "{after}");
    assert_intact(&lake);
}

#[test]
fn a_killed_lease_holder_is_replaced_within_the_failover_timeout_and_no_row_is_lost() {
    let lake = lake_configured(20, |c| c);
    let a = node_config(&lake, "a", "compactor", |c| c);
    let b = node_config(&lake, "b", "compactor", |c| c);
    let spawn = |config: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_compactor"))
            .args(["run", "--config", config])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = Daemon(spawn(&a));
    wait_until("a to hold the compactor lease", Duration::from_secs(20), || status(&a)["compactor_lease"]["holder"] == "a");
    let mut second = Daemon(spawn(&b));
    wait_until("b to join", Duration::from_secs(20), || status(&b)["members"].as_array().unwrap().iter().any(|m| m["node_id"] == "b"));
    assert_eq!(status(&b)["compactor_lease"]["holder"], "a", "no preemption");
    kill_engine_and_wait_for_jobs(&mut first.0);
    let killed = std::time::Instant::now();
    // Session TTL 4 s, then 3 checks of 200 ms or the 1 s failover timeout.
    wait_until("b to take over", Duration::from_secs(20), || status(&b)["compactor_lease"]["holder"] == "b");
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(8), "failover took {took:?}");
    eprintln!("failover after SIGKILL of the holder: {took:?}");
    let stats = status(&b)["lease_manager"].clone();
    assert!(stats["last_failover_at"].is_string(), "Arc's stats record the failover: {stats}");
    // b stops (handing the lease back); a one-shot b recovers and
    // compacts what is left, every row once.
    let _ = std::process::Command::new("kill").args(["-TERM", &second.0.id().to_string()]).status();
    let _ = second.0.wait();
    let recovered = compactor(&["recover", "--config", &b], &[]);
    assert!(recovered.status.success(), "{}", text(&recovered));
    let once = compactor(&["once", "--config", &b, "--now", NOW], &[]);
    assert!(once.status.success(), "{}", text(&once));
    assert_intact(&lake);
    // The cluster file manifest (read from etcd) equals the store's live
    // files exactly.
    for measurement in ["cpu", "mem_total"] {
        let partition = format!("db/{measurement}/2026/04/11");
        let listed = compactor(&["files", "--config", &b, "--partition", &partition, "--format", "json"], &[]);
        assert!(listed.status.success(), "{}", text(&listed));
        let registered: Vec<String> = serde_json::from_slice(&listed.stdout).unwrap();
        let stored: Vec<String> =
            crate::util::files_under(&lake.lake).into_iter().filter(|k| k.starts_with(&partition) && k.ends_with(".parquet")).collect();
        assert_eq!(registered, stored, "{measurement}: the registry is the store's live set");
    }
}

#[test]
fn etcd_unreachable_at_start_up_means_no_compaction_and_a_clear_error_never_standalone() {
    let lake = lake_configured(20, |c| c);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = node_config(&lake, "cut", "compactor", |c| c.cluster("etcd_endpoints", vec![format!("http://127.0.0.1:{closed}")]));
    let before = crate::util::files_under(&lake.lake);
    let once = compactor(&["once", "--config", &config, "--now", NOW], &[]);
    assert!(!once.status.success(), "{}", text(&once));
    assert!(String::from_utf8_lossy(&once.stderr).contains("cannot reach etcd"), "{}", text(&once));
    assert_eq!(crate::util::files_under(&lake.lake), before, "nothing compacted");
}

/// Arc #870, #892, #894, #895.
#[test]
fn arcs_cluster_misconfigurations_are_refused_or_safe() {
    let lake = lake_configured(20, |c| c);
    // #870: a compactor-role node without cluster mode would compact beside
    // the lease holder.
    let standalone_compactor = TestConfig::new("lake").hourly_and_daily().cluster("role", "compactor").write(&lake.root);
    let once = compactor(&["once", "--config", &standalone_compactor, "--now", NOW], &[]);
    assert_eq!(once.status.code(), Some(2), "{}", text(&once));
    assert!(String::from_utf8_lossy(&once.stderr).contains("cluster.role"), "{}", text(&once));
    let no_etcd = TestConfig::new("lake").hourly_and_daily().cluster("enabled", true).write(&lake.root);
    let once = compactor(&["once", "--config", &no_etcd, "--now", NOW], &[]);
    assert!(String::from_utf8_lossy(&once.stderr).contains("cluster.etcd_endpoints"), "{}", text(&once));
    // #895: a cluster of readers compacts nothing, ever: refused, saying why.
    let reader = node_config(&lake, "r1", "reader", |c| c);
    let once = compactor(&["once", "--config", &reader, "--now", NOW], &[]);
    assert!(!once.status.success(), "{}", text(&once));
    assert!(String::from_utf8_lossy(&once.stderr).contains("no node of this cluster may compact"), "{}", text(&once));
    // #892: nodes left at the default role get one lease between them, and
    // #894: a cluster of writers still compacts.
    for role in ["standalone", "writer"] {
        let lake = lake_configured(20, |c| c);
        let configs: Vec<String> = ["x", "y"].iter().map(|id| node_config(&lake, id, role, |c| c)).collect();
        let outputs = once_on_every_node(&configs);
        let compacting = outputs
            .iter()
            .filter(|o| {
                let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
                report["jobs"].as_array().is_some_and(|jobs| !jobs.is_empty())
            })
            .count();
        assert_eq!(compacting, 1, "{role}: one node compacts: {:#?}", outputs.iter().map(text).collect::<Vec<_>>());
        assert_intact(&lake);
    }
}

#[test]
fn in_spread_mode_three_nodes_split_the_measurements_and_compact_every_row_once() {
    let lake = lake_configured(20, |c| c);
    // Eight measurements more, so that the split shows.
    let spec = compactor_job::sample::SampleSpec {
        database: "db".into(),
        measurements: (0..8).map(|i| (format!("m{i}"), vec!["host".to_owned()])).collect(),
        hours: 2,
        files_per_hour: 12,
        rows_per_file: 5,
    };
    let extra = lake.root.join("extra");
    compactor_job::sample::generate(&extra, crate::util::at(NOW), &spec).unwrap();
    crate::compaction::copy_dir(&extra.join("db"), &lake.lake.join("db"));
    crate::compaction::copy_dir(&extra.join("db"), &lake.root.join("pristine/db"));
    let configs: Vec<String> = ["s1", "s2", "s3"]
        .iter()
        .map(|id| {
            node_config(&lake, id, "compactor", |c| {
                c.cluster("mode", "spread").cluster("check_interval", "1s").cluster("session_ttl", "5s")
            })
        })
        .collect();
    let outputs = once_on_every_node(&configs);
    let mut measurements_by_node = Vec::new();
    for output in &outputs {
        assert!(output.status.success(), "{}", text(output));
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let mut measurements: Vec<String> = report["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|j| j["partition_path"].as_str()?.split('/').nth(1).map(str::to_owned))
            .collect();
        measurements.sort();
        measurements.dedup();
        let elsewhere = report["measurements_elsewhere"].as_u64().unwrap() as usize;
        assert_eq!(measurements.len() + elsewhere, 10, "each node compacts its share and counts the rest as elsewhere: {report}");
        measurements_by_node.push(measurements);
    }
    eprintln!("measurements compacted per node: {measurements_by_node:?}");
    let all: Vec<&String> = measurements_by_node.iter().flatten().collect();
    let unique: std::collections::BTreeSet<&String> = all.iter().copied().collect();
    assert_eq!(all.len(), unique.len(), "no measurement was compacted by two nodes: {measurements_by_node:?}");
    assert_eq!(unique.len(), 10, "every measurement was compacted: {measurements_by_node:?}");
    let working = measurements_by_node.iter().filter(|m| !m.is_empty()).count();
    assert!(working >= 2, "the work was split: {measurements_by_node:?}");
    assert_intact(&lake);
}

/// The adversarial run's defect B: the lease holder died and only one-shot
/// nodes are left, each leading for a moment. The missing time of the
/// holder is kept in etcd, so one of them takes the lease once the failover
/// timeout has passed.
#[test]
fn one_shot_nodes_take_a_dead_holders_lease_once_the_failover_timeout_has_passed() {
    let lake = lake_configured(20, |c| c);
    let a = node_config(&lake, "a", "compactor", |c| c.schedules("0 0 1 1 *"));
    let b = node_config(&lake, "b", "compactor", |c| c);
    let mut holder = Daemon(
        std::process::Command::new(env!("CARGO_BIN_EXE_compactor"))
            .args(["run", "--config", &a])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("a to hold the compactor lease", Duration::from_secs(20), || status(&a)["compactor_lease"]["holder"] == "a");
    kill_engine_and_wait_for_jobs(&mut holder.0);
    let killed = std::time::Instant::now();
    let mut denied = 0;
    loop {
        let once = compactor(&["once", "--config", &b, "--now", NOW, "--format", "json"], &[]);
        assert!(once.status.success(), "{}", text(&once));
        let report: serde_json::Value = serde_json::from_slice(&once.stdout).unwrap();
        if !report["jobs"].as_array().unwrap().is_empty() {
            break;
        }
        denied += 1;
        assert!(killed.elapsed() < Duration::from_secs(30), "b never took the lease ({denied} one-shot runs denied)");
    }
    eprintln!("one-shot node took the dead holder's lease after {:?} ({denied} runs denied)", killed.elapsed());
    assert_intact(&lake);
}

/// Six measurements of two hours, six files each, uploaded to `url`, with
/// their pristine copy on disk.
fn six_measurement_lake(url: &str, options: &BTreeMap<String, String>) -> Bucket {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let spec = compactor_job::sample::SampleSpec {
        database: "db".into(),
        measurements: (0..6).map(|i| (format!("m{i}"), vec!["host".to_owned()])).collect(),
        hours: 2,
        files_per_hour: 6,
        rows_per_file: 20,
    };
    compactor_job::sample::generate(&root.join("pristine"), crate::util::at(NOW), &spec).unwrap();
    let storage = crate::s3::upload_lake(url, options, &root.join("pristine"), |key| key.to_owned());
    // Each node writes its own config; this one is for the checks' logs.
    let config = remote_config(url, options).write(&root);
    Bucket { _dir: dir, root, storage, config }
}

/// What the lake's job history (written by every node) says: per node,
/// the partitions it compacted, by tier.
fn jobs_by_node(bucket: &Bucket, engines: &BTreeMap<String, String>) -> BTreeMap<String, Vec<String>> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut by_node: BTreeMap<String, Vec<String>> = engines.values().map(|node| (node.clone(), Vec::new())).collect();
    for entry in runtime.block_on(bucket.storage.list("_compaction_state/history/")).unwrap() {
        let record: serde_json::Value = serde_json::from_slice(&runtime.block_on(bucket.storage.read(&entry.key)).unwrap()).unwrap();
        let engine = record["engine"].as_str().unwrap_or_default();
        let node = engines.get(engine).cloned().unwrap_or_else(|| format!("unknown engine {engine}"));
        let job = format!("{} {}", record["tier"].as_str().unwrap_or_default(), record["partition_path"].as_str().unwrap_or_default());
        by_node.entry(node).or_default().push(job);
    }
    by_node
}

/// Three `run` daemons on one lake at `url`, in `mode`: each cycle is
/// triggered on all three at the same moment, until nothing changes.
/// Returns the jobs each node ran.
fn three_run_daemons(bucket: &Bucket, url: &str, options: &BTreeMap<String, String>, mode: &str) -> BTreeMap<String, Vec<String>> {
    let nodes: Vec<(String, u16, String)> = ["d1", "d2", "d3"]
        .iter()
        .map(|id| {
            let port = free_port();
            let config = remote_config(url, options)
                .hourly_and_daily()
                .compaction("temp_directory", format!("tmp-{id}"))
                .schedules("0 0 1 1 *")
                .section("api", "listen", format!("127.0.0.1:{port}"))
                .section("api", "token", TOKEN)
                .cluster_on_etcd("compactor")
                .cluster("node_id", *id)
                .cluster("mode", mode)
                .write(&bucket.root);
            let path = bucket.root.join(format!("{id}.toml"));
            std::fs::rename(config, &path).unwrap();
            ((*id).to_owned(), port, path.display().to_string())
        })
        .collect();
    let mut daemons: Vec<Daemon> = nodes.iter().map(|(_, _, config)| Daemon(spawn_compactor(config, &["run"], &[]))).collect();
    let clients: Vec<Client> = nodes.iter().map(|(_, port, _)| Client::new(*port)).collect();
    for (client, daemon) in clients.iter().zip(&mut daemons) {
        client.wait_ready(&mut daemon.0);
    }
    for client in &clients {
        wait_until("every node to see the three members", Duration::from_secs(30), || {
            let cluster = client.get("/api/v1/cluster").1;
            let settled = if mode == "single" {
                cluster["compactor_lease"]["holder"].is_string()
            } else {
                cluster["compacting_nodes"].as_array().map(Vec::len) == Some(3)
            };
            cluster["members"].as_array().map(Vec::len) == Some(3) && settled
        });
    }
    let engines: BTreeMap<String, String> = clients[0].get("/api/v1/cluster").1["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["engine_id"].as_str().unwrap().to_owned(), m["node_id"].as_str().unwrap().to_owned()))
        .collect();
    let snapshot = || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut keys: Vec<String> = runtime.block_on(bucket.storage.list("db/")).unwrap().into_iter().map(|f| f.key).collect();
        keys.sort();
        keys
    };
    let mut rounds = 0;
    loop {
        let before = snapshot();
        let cycles: Vec<u64> = std::thread::scope(|s| {
            let triggers: Vec<_> = clients.iter().map(|c| s.spawn(move || c.post("/api/v1/compaction/trigger", Some(TOKEN)))).collect();
            triggers.into_iter().map(|t| t.join().unwrap().1["cycle_id"].as_u64().unwrap()).collect()
        });
        for (client, cycle) in clients.iter().zip(cycles) {
            client.wait_cycle_done(cycle);
        }
        rounds += 1;
        if snapshot() == before {
            break;
        }
        assert!(rounds < 6, "the lake never settled: {:#?}", snapshot());
    }
    for daemon in &daemons {
        signal_group(&daemon.0, libc::SIGTERM);
    }
    for daemon in &mut daemons {
        let status = daemon.0.wait().unwrap();
        assert!(status.success(), "a daemon exited with {status}");
    }
    jobs_by_node(bucket, &engines)
}

/// The jobs of each node, checked against `mode`, and every row once.
fn assert_split(bucket: &Bucket, mode: &str, jobs: &BTreeMap<String, Vec<String>>) {
    let split: Vec<(String, usize)> = jobs.iter().map(|(node, jobs)| (node.clone(), jobs.len())).collect();
    eprintln!("{mode}: jobs per node {split:?}");
    let working = jobs.values().filter(|j| !j.is_empty()).count();
    if mode == "single" {
        assert_eq!(working, 1, "one lease holder compacts: {jobs:#?}");
    } else {
        assert!(working >= 2, "the work was split: {jobs:#?}");
        // A measurement's partitions stay with one node while the members do
        // not change.
        let mut owners: BTreeMap<String, std::collections::BTreeSet<&String>> = BTreeMap::new();
        for (node, jobs) in jobs {
            for job in jobs {
                let measurement = job.split(' ').nth(1).and_then(|p| p.split('/').nth(1)).unwrap_or_default().to_owned();
                owners.entry(measurement).or_default().insert(node);
            }
        }
        assert!(owners.values().all(|nodes| nodes.len() == 1), "each measurement on one node: {owners:#?}");
    }
    let keys = crate::s3::assert_intact(bucket);
    assert_eq!(keys.len(), 6, "one daily output per measurement: {keys:#?}");
    assert!(keys.iter().all(|k| k.ends_with("_daily.parquet")), "{keys:#?}");
}

#[test]
fn three_run_daemons_on_local_disk_compact_every_row_once_in_both_modes() {
    for mode in ["single", "spread"] {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("lake").display().to_string();
        std::fs::create_dir_all(&url).unwrap();
        let bucket = six_measurement_lake(&url, &BTreeMap::new());
        let jobs = three_run_daemons(&bucket, &url, &BTreeMap::new(), mode);
        assert_split(&bucket, mode, &jobs);
    }
}

#[test]
fn three_run_daemons_on_s3_compact_every_row_once_in_both_modes() {
    let endpoint = crate::kit::shared_s3_endpoint();
    let options = crate::s3::options_for(endpoint);
    for mode in ["single", "spread"] {
        let name = format!("cluster-{mode}");
        crate::s3::create_bucket_at(endpoint, &name);
        let url = format!("s3://{name}/lake");
        let bucket = six_measurement_lake(&url, &options);
        let jobs = three_run_daemons(&bucket, &url, &options, mode);
        assert_split(&bucket, mode, &jobs);
    }
}

/// A node whose link to etcd is cut while the others still see etcd: its
/// session expires, another node takes the compactor lease, the cut node
/// starts no job, and once healed it rejoins without taking the lease back.
#[test]
fn a_node_cut_off_from_etcd_while_the_others_see_it_starts_no_job_and_rejoins() {
    let lake = lake_configured(20, |c| c);
    let proxy = CutProxy::start(crate::kit::shared_etcd_endpoint());
    let api_node = |id: &str, port: u16, endpoint: &str| {
        let endpoint = endpoint.to_owned();
        node_config(&lake, id, "compactor", move |c| {
            c.schedules("0 0 1 1 *")
                .section("api", "listen", format!("127.0.0.1:{port}"))
                .section("api", "token", TOKEN)
                .cluster("etcd_endpoints", vec![endpoint])
        })
    };
    let (cut_port, seen_port) = (free_port(), free_port());
    let cut_config = api_node("cut", cut_port, &proxy.endpoint);
    let seen_config = api_node("seen", seen_port, crate::kit::shared_etcd_endpoint());
    let mut cut = Daemon(spawn_compactor(&cut_config, &["run"], &[]));
    let cut_api = Client::new(cut_port);
    cut_api.wait_ready(&mut cut.0);
    wait_until("cut to hold the lease", Duration::from_secs(20), || cut_api.get("/api/v1/cluster").1["compactor_lease"]["holder"] == "cut");
    let mut seen = Daemon(spawn_compactor(&seen_config, &["run"], &[]));
    let seen_api = Client::new(seen_port);
    seen_api.wait_ready(&mut seen.0);
    wait_until("seen to join", Duration::from_secs(20), || {
        seen_api.get("/api/v1/cluster").1["members"].as_array().map(Vec::len) == Some(2)
    });
    let before = crate::util::files_under(&lake.lake);

    proxy.cut(true);
    let cut_at = std::time::Instant::now();
    wait_until("cut to count itself out", Duration::from_secs(20), || cut_api.get("/api/v1/cluster").1["up"] == false);
    wait_until("seen to take the lease", Duration::from_secs(30), || {
        seen_api.get("/api/v1/cluster").1["compactor_lease"]["holder"] == "seen"
    });
    eprintln!("lease moved {:?} after the cut", cut_at.elapsed());
    let (status, body) = cut_api.post("/api/v1/compaction/trigger", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    cut_api.wait_cycle_done(body["cycle_id"].as_u64().unwrap());
    assert_eq!(cut_api.get("/api/v1/compaction/stats").1["total_jobs_completed"], 0, "the cut node started no job");
    assert_eq!(crate::util::files_under(&lake.lake), before, "nothing compacted by the cut node");
    let (_, body) = seen_api.post("/api/v1/compaction/trigger", Some(TOKEN));
    seen_api.wait_cycle_done(body["cycle_id"].as_u64().unwrap());
    assert!(seen_api.get("/api/v1/compaction/stats").1["total_jobs_completed"].as_u64().unwrap() > 0, "the holder compacts");

    proxy.cut(false);
    wait_until("cut to rejoin", Duration::from_secs(30), || {
        let cluster = cut_api.get("/api/v1/cluster").1;
        cluster["up"] == true && cluster["members"].as_array().is_some_and(|m| m.iter().any(|m| m["node_id"] == "cut"))
    });
    assert_eq!(seen_api.get("/api/v1/cluster").1["compactor_lease"]["holder"], "seen", "no preemption after the heal");
    let (_, body) = cut_api.post("/api/v1/compaction/trigger", Some(TOKEN));
    cut_api.wait_cycle_done(body["cycle_id"].as_u64().unwrap());
    assert_eq!(cut_api.get("/api/v1/compaction/stats").1["total_jobs_completed"], 0, "the healed node is not the holder");
    for daemon in [&mut seen, &mut cut] {
        signal_group(&daemon.0, libc::SIGTERM);
        let status = daemon.0.wait().unwrap();
        assert!(status.success(), "a daemon exited with {status}");
    }
    assert_intact(&lake);
}

/// The store's `.parquet` keys under `partition` and what `compactor files`
/// answers for it (from the cluster file manifest).
fn registry_and_store(lake: &Lake, config: &str, partition: &str) -> (Vec<String>, Vec<String>) {
    let listed = compactor(&["files", "--config", config, "--partition", partition, "--format", "json"], &[]);
    assert!(listed.status.success(), "{}", text(&listed));
    let registered: Vec<String> = serde_json::from_slice(&listed.stdout).unwrap();
    let stored = crate::util::files_under(&lake.lake).into_iter().filter(|k| k.starts_with(partition) && k.ends_with(".parquet")).collect();
    (registered, stored)
}

/// The adversarial run's defect 1: a job killed after deleting its inputs
/// left its completion manifest at `output_written`, and every later
/// process registered that output again — after the daily tier had merged
/// it away, `files` listed files that were gone, for good.
#[test]
fn a_job_killed_after_its_commit_leaves_no_ghost_in_the_cluster_file_manifest() {
    let lake = lake_configured(20, |c| c);
    let config = node_config(&lake, "g", "compactor", |c| c);
    let killed = compactor(&["once", "--config", &config, "--now", NOW, "--tier", "hourly"], &[("COMPACTOR_FAULT", "after-delete")]);
    assert!(String::from_utf8_lossy(&killed.stderr).contains("after-delete"), "the job was killed: {}", text(&killed));
    let recovered = compactor(&["recover", "--config", &config], &[]);
    assert!(recovered.status.success(), "{}", text(&recovered));
    for _ in 0..3 {
        let once = compactor(&["once", "--config", &config, "--now", NOW], &[]);
        assert!(once.status.success(), "{}", text(&once));
    }
    assert_intact(&lake);
    for measurement in ["cpu", "mem_total"] {
        let (registered, stored) = registry_and_store(&lake, &config, &format!("db/{measurement}/2026/04/11"));
        assert_eq!(registered, stored, "{measurement}: the registry lists what the store holds, and no file that is gone");
    }
}

/// The adversarial run's defect 2: between a job's commit and the moment
/// the watcher registers its output, the answer hid the inputs (committed)
/// and did not have the output yet: a reader counted no rows at all. A
/// committed output counts at once.
#[test]
fn a_committed_output_counts_before_the_watcher_registers_it() {
    let lake = lake_configured(20, |c| c);
    // Standalone, the engine and its job killed after the job's commit
    // (mid-delete): nothing of it is in the cluster file manifest, its
    // manifest and outcome are in the store.
    let marker = lake.root.join("committed");
    let stall = format!("mid-delete:30000:{}", marker.display());
    let mut engine = spawn_compactor(&lake.config, &["once", "--now", NOW, "--tier", "hourly"], &[("COMPACTOR_STALL", &stall)]);
    wait_until("a job to commit", Duration::from_secs(30), || marker.exists());
    signal_group(&engine, libc::SIGKILL);
    let _ = engine.wait();
    let reader = node_config(&lake, "reader", "reader", |c| c);
    let connection = compactor_job::verify::connection().unwrap();
    let mut counted = 0;
    // The outputs of the jobs committed when the engine died (another job
    // may have been between its upload and its commit: its output is
    // rightly hidden, and other partitions' jobs finished whole and were
    // never registered, standalone).
    let state = lake.lake.join("_compaction_state");
    let outputs: Vec<String> = crate::util::files_under_all(&state)
        .into_iter()
        .filter(|key| key.ends_with(".outcome"))
        .filter_map(|key| serde_json::from_slice::<serde_json::Value>(&std::fs::read(state.join(key)).unwrap()).ok())
        .filter(|record| record["outcome"] == "committed")
        .filter_map(|record| record["output_path"].as_str().map(str::to_owned))
        .collect();
    for output in &outputs {
        let partition = output.rsplit_once('/').map(|(dir, _)| dir.to_owned()).unwrap_or_default();
        let (registered, _) = registry_and_store(&lake, &reader, &partition);
        assert_eq!(registered, std::slice::from_ref(output), "{partition}: the committed output, and none of its inputs");
        let rows: i64 = connection
            .query_row(&format!("SELECT count(*) FROM read_parquet('{}')", lake.lake.join(output).display()), [], |row| row.get(0))
            .unwrap();
        assert!(rows > 0, "{partition}");
        counted += 1;
    }
    assert!(counted >= 1, "a job was committed before it was killed");
}

/// The adversarial run's defect 3: a node reconciling its new share (the
/// membership changed) met an output the watcher had registered before its
/// job committed; hidden from readers, it was taken for gone and removed,
/// and once the job committed the registry held neither the inputs nor the
/// output. An entry goes only with its object.
#[test]
fn reconciling_a_share_keeps_an_output_registered_before_its_commit() {
    let lake = lake_configured(20, |c| c);
    let spread = |c: TestConfig| c.cluster("mode", "spread").cluster("check_interval", "1s").cluster("session_ttl", "5s");
    // The second node owns `cpu` once both are members.
    let second = ["r1", "r2", "r3", "r4", "r5", "r6"]
        .into_iter()
        .find(|id| compactor_cluster::owner(&["w1".to_owned(), (*id).to_owned()], "db", "cpu") == Some(*id))
        .unwrap();
    let writer = node_config(&lake, "w1", "compactor", spread);
    let port = free_port();
    let other = node_config(&lake, second, "compactor", move |c| {
        spread(c).schedules("0 0 1 1 *").section("api", "listen", format!("127.0.0.1:{port}")).section("api", "token", TOKEN)
    });
    // Alone, the writer owns both measurements; its jobs wait between their
    // completion manifest (the watcher registers the output) and the commit.
    let marker = lake.root.join("uploaded");
    let stall = format!("before-commit:8000:{}", marker.display());
    let mut writing = spawn_compactor(&writer, &["once", "--now", NOW, "--tier", "hourly"], &[("COMPACTOR_STALL", &stall)]);
    wait_until("a job to upload its output", Duration::from_secs(30), || {
        if let Ok(Some(_)) = writing.try_wait() {
            let mut log = String::new();
            let _ = std::io::Read::read_to_string(writing.stderr.as_mut().unwrap(), &mut log);
            panic!("the writer ended before any job uploaded: {log}");
        }
        marker.exists()
    });
    std::thread::sleep(Duration::from_millis(1500));
    // The second node joins: `cpu` is its share, and its cycle reconciles it
    // while the writer's jobs have not committed.
    let mut daemon = Daemon(spawn_compactor(&other, &["run"], &[]));
    let api = Client::new(port);
    api.wait_ready(&mut daemon.0);
    let (status, body) = api.post("/api/v1/compaction/trigger?database=none", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    api.wait_cycle_done(body["cycle_id"].as_u64().unwrap());
    let written = writing.wait_with_output().unwrap();
    assert!(written.status.success(), "{}", text(&written));
    assert_intact(&lake);
    // A day's answer includes its hours.
    let (registered, stored) = registry_and_store(&lake, &other, "db/cpu/2026/04/11");
    assert!(stored.iter().any(|k| k.ends_with("_compacted.parquet")), "the writer's outputs are there: {stored:?}");
    assert_eq!(registered, stored, "the registry is the store's live set");
}
