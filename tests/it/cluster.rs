//! Cluster mode on a real etcd (`$COMPACTOR_TEST_ETCD_ENDPOINT`, which
//! `.ci/run` starts, or an `etcd` this test binary starts): one compactor
//! lease and failover, and the misconfigurations Arc shipped.

use std::time::Duration;

use crate::compaction::{Lake, assert_intact, lake_configured};
use crate::kit::{TestConfig, kill_engine_and_wait_for_jobs, wait_until};
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
