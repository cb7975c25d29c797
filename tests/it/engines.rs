//! Several engines on one lake (issue 9): tiers racing in separate engines,
//! recovery looping beside live jobs, engines killed or paused for longer
//! than their lease, an upload that lands after the client gave up, object
//! store faults by seed, and temp directories that would hurt the lake.
//! After each, once converged: every row exactly once, nothing pending.

use std::process::{Child, Output};
use std::time::Duration;

use crate::compaction::{Lake, NOW, assert_intact, lake_configured, once};
use crate::kit::{run_until_idle, signal_group, spawn_compactor, wait_until};
use crate::util::{compactor, files_under, text};

/// Lease TTL of these tests: short, so that a test can outwait it.
const TTL_MS: u64 = 1500;

fn short_leases(rows_per_file: u32) -> Lake {
    lake_configured(rows_per_file, |config| config.lease_ttl_ms(TTL_MS))
}

/// `compactor -v ARGS` on `lake`, in its own process group, not waited for.
fn spawn(lake: &Lake, args: &[&str], env: &[(&str, &str)]) -> Child {
    spawn_compactor(&lake.config, args, env)
}

/// Recovery and cycles until a cycle has nothing to do, after every lease
/// of the racing engines has expired; then every row must be there once.
/// (`assert_compacted` would be wrong here: see below.)
fn converge(lake: &Lake) {
    run_until_idle(&lake.config, NOW, TTL_MS, |_, _| {});
    // Engines racing at different moments may leave more than one daily
    // output per day (daily never merges daily outputs, as in Arc): the fixed
    // point is "a cycle has nothing to do", not one file per day.
    assert_intact(lake);
    assert_nothing_pending(lake);
}

/// No recovery manifest, quarantined manifest or live claim is left (an
/// expired claim whose release failed stays until the next write of its
/// lease object prunes it; it holds nothing).
fn assert_nothing_pending(lake: &Lake) {
    let state = lake.lake.join("_compaction_state");
    let manifests: Vec<String> = files_under(&state).into_iter().filter(|f| f.ends_with(".json") || f.contains(".quarantined")).collect();
    assert!(manifests.is_empty(), "pending: {manifests:?}");
    let now = chrono::Utc::now();
    for lease in crate::util::files_under_all(&state.join("leases")).into_iter().filter(|l| l.ends_with(".lease")) {
        let object: serde_json::Value = serde_json::from_slice(&std::fs::read(state.join("leases").join(&lease)).unwrap()).unwrap();
        for claim in object["claims"].as_array().unwrap() {
            let expires: chrono::DateTime<chrono::Utc> = claim["expires_at"].as_str().unwrap().parse().unwrap();
            assert!(expires < now, "a live claim is left in {lease}: {claim}");
        }
    }
}

fn finish(child: Child) -> Output {
    child.wait_with_output().unwrap()
}

#[test]
fn engines_on_different_tiers_and_a_recovery_loop_compact_every_row_once() {
    let lake = short_leases(500);
    let engines = [
        spawn(&lake, &["once", "--now", NOW, "--tier", "hourly"], &[]),
        spawn(&lake, &["once", "--now", NOW, "--tier", "daily"], &[]),
        spawn(&lake, &["once", "--now", NOW], &[]),
    ];
    let recoveries: Vec<Output> = (0..6).map(|_| finish(spawn(&lake, &["recover"], &[]))).collect();
    for (i, engine) in engines.into_iter().enumerate() {
        let output = finish(engine);
        // A partition another engine holds is skipped, not failed.
        assert!(output.status.success(), "engine {i}: {}", text(&output));
    }
    for recovery in &recoveries {
        assert!(recovery.status.success(), "{}", text(recovery));
    }
    converge(&lake);
}

#[test]
fn engines_killed_at_random_moments_lose_and_duplicate_nothing() {
    // A fixed sequence of kill delays; the seed is printed on failure.
    let seed = 0x5eed_u64;
    let mut state = seed;
    let mut next = move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    for round in 0..3 {
        let lake = short_leases(2_000);
        let engines: Vec<Child> = (0..3).map(|_| spawn(&lake, &["once", "--now", NOW], &[])).collect();
        let victim = next(3) as usize;
        std::thread::sleep(Duration::from_millis(100 + next(900)));
        signal_group(&engines[victim], libc::SIGKILL);
        for (i, engine) in engines.into_iter().enumerate() {
            let output = finish(engine);
            assert!(i == victim || output.status.success(), "seed {seed:#x} round {round} engine {i}: {}", text(&output));
        }
        converge(&lake);
    }
}

/// An engine paused (SIGSTOP of its process group: a frozen VM, a long GC)
/// for longer than its lease, at the two points that matter: before its
/// upload (another engine must roll it back, and it must not upload when it
/// wakes) and after (another engine must commit it on its behalf, and it
/// must not delete its own output when it wakes).
#[test]
fn an_engine_paused_longer_than_its_lease_does_not_act_when_it_wakes() {
    for point in ["after-manifest", "after-upload"] {
        let lake = short_leases(500);
        let reached = lake.root.join("reached");
        let stall = format!("{point}:2000:{}", reached.display());
        let paused = spawn(&lake, &["once", "--now", NOW, "--tier", "hourly", "--database", "db"], &[("COMPACTOR_STALL", &stall)]);
        wait_until(&format!("the job to reach {point}"), Duration::from_secs(60), || reached.exists());
        signal_group(&paused, libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(TTL_MS * 2));
        let other = once(&lake, &[]);
        assert!(other.status.success(), "{point}: the other engine: {}", text(&other));
        signal_group(&paused, libc::SIGCONT);
        let woken = finish(paused);
        let log = text(&woken);
        if point == "after-manifest" {
            assert!(log.contains("lease was lost") || log.contains("aborted this job"), "{point}: it says why it stopped: {log}");
        }
        converge(&lake);
    }
}

#[test]
fn a_temp_directory_that_would_hurt_the_lake_is_refused() {
    for (temp, relation) in
        [("lake", "is the storage root"), (".", "contains the storage root"), ("lake/db/tmp", "lies inside the storage root")]
    {
        let lake = lake_configured(50, |config| config.compaction("temp_directory", temp));
        let before = files_under(&lake.lake);
        for command in [&["once", "--now", NOW][..], &["recover"], &["run"], &["plan", "--now", NOW]] {
            let output = compactor(&[&[command[0], "--config", &lake.config][..], &command[1..]].concat(), &[]);
            let log = text(&output);
            assert_eq!(output.status.code(), Some(2), "{temp} {command:?}: {log}");
            assert!(log.contains("temp_directory") && log.contains(relation), "{temp} {command:?}: names the key: {log}");
        }
        assert_eq!(files_under(&lake.lake), before, "{temp}: the lake is intact");
    }
}

/// Object-store faults by seed — requests that fail, and requests that land
/// and then report an error — in three engines over several cycles each;
/// then, without faults, convergence.
#[test]
fn object_store_faults_by_seed_never_lose_or_duplicate_a_row() {
    for seed in [1, 2, 3] {
        let lake = short_leases(200);
        let faults = format!("seed={seed},rate=0.04");
        let engines: Vec<Child> = (0..3)
            .map(|i| {
                let lake = &lake;
                let faults = format!("{faults},engine={i}");
                spawn(lake, &["once", "--now", NOW], &[("COMPACTOR_STORE_FAULTS", &faults)])
            })
            .collect();
        for engine in engines {
            let _ = finish(engine);
        }
        for _ in 0..2 {
            let _ = finish(spawn(&lake, &["once", "--now", NOW], &[("COMPACTOR_STORE_FAULTS", &faults)]));
        }
        let result = std::panic::catch_unwind(|| converge(&lake));
        if let Err(panic) = result {
            eprintln!("object-store faults: seed {seed} failed");
            std::panic::resume_unwind(panic);
        }
    }
}

/// Found by the adversarial run: a link inside the lake made one hour's
/// files appear in another hour too (two partitions, two leases), and a
/// link to the temp directory exposed a live job's working copies.
#[test]
fn links_inside_the_lake_are_not_followed() {
    let lake = short_leases(50);
    let hours = lake.lake.join("db/cpu/2026/04/11");
    std::os::unix::fs::symlink("../00", hours.join("01/alias")).unwrap();
    std::fs::create_dir_all(lake.root.join("tmp")).unwrap();
    std::os::unix::fs::symlink(lake.root.join("tmp"), hours.join("00/scratch")).unwrap();
    let output = once(&lake, &[]);
    assert!(output.status.success(), "{}", text(&output));
    std::fs::remove_file(hours.join("01/alias")).unwrap();
    std::fs::remove_file(hours.join("00/scratch")).unwrap();
    converge(&lake);
}

/// A hung job must not hold its partition's lease forever: it is killed at
/// `compaction.job_timeout`, like any killed job, and the partition is free
/// for the next cycle.
#[test]
fn a_hung_job_is_killed_at_the_job_timeout() {
    let lake = lake_configured(50, |config| config.lease_ttl_ms(TTL_MS).compaction("job_timeout", "1s"));
    let started = std::time::Instant::now();
    let hung = compactor(
        &["once", "--config", &lake.config, "--now", NOW, "--tier", "hourly"],
        &[("COMPACTOR_STALL", "after-merge:600000:/dev/null/never")],
    );
    assert_eq!(hung.status.code(), Some(1), "{}", text(&hung));
    assert!(String::from_utf8_lossy(&hung.stdout).contains("job_timeout"), "the failure names the timeout: {}", text(&hung));
    assert!(String::from_utf8_lossy(&hung.stdout).contains("[timeout]"), "and its kind: {}", text(&hung));
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    converge(&lake);
}

/// libfaketime, which `.ci/run` installs; `None` (saying so) without it.
fn faketime(test: &str) -> Option<&'static str> {
    let library = ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1"]
        .into_iter()
        .find(|l| std::path::Path::new(l).exists());
    if library.is_none() {
        eprintln!("faketime is not installed (apt-get install faketime); skipping {test}");
    }
    library
}

/// An engine whose clock is off by more than half of `max_clock_skew` would
/// judge a live claim expired (the adversarial run duplicated two hours'
/// rows with +3 s): it refuses to run. Needs `faketime`.
#[test]
fn an_engine_whose_clock_is_off_refuses_to_run() {
    let Some(library) = faketime("the clock-skew test") else { return };
    let lake = short_leases(50);
    let before = files_under(&lake.lake);
    for command in [&["once", "--now", NOW][..], &["recover"]] {
        let output = compactor(
            &[&[command[0], "--config", &lake.config][..], &command[1..]].concat(),
            &[("LD_PRELOAD", library), ("FAKETIME", "+10s"), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")],
        );
        assert_eq!(output.status.code(), Some(2), "{command:?}: {}", text(&output));
        assert!(text(&output).contains("max_clock_skew"), "{command:?}: {}", text(&output));
    }
    assert_eq!(files_under(&lake.lake), before, "nothing was touched");
}

/// The adversarial run's defect C: the start-up check of the clock passed,
/// then the wall clock stepped forward (an operator's `date -s`, a VM
/// resumed), and leases judged on it would take live jobs' partitions. A
/// step against `CLOCK_BOOTTIME` is seen before the next cycle, which
/// checks the clock against the store's again and, off now, does nothing.
/// Needs `faketime`.
#[test]
fn a_wall_clock_stepped_after_start_up_stops_the_next_cycle() {
    let Some(library) = faketime("the clock-step test") else { return };
    use crate::api::{Client, TOKEN, api_lake};
    let (lake, port) = api_lake(|config| config.section("api", "token", TOKEN));
    let offset = lake.root.join("faketime");
    std::fs::write(&offset, "+0s\n").unwrap();
    let offset_path = offset.display().to_string();
    let env = [
        ("LD_PRELOAD", library),
        ("FAKETIME_TIMESTAMP_FILE", offset_path.as_str()),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let mut engine = spawn_compactor(&lake.config, &["run"], &env);
    let api = Client::new(port);
    api.wait_ready(&mut engine);
    let before = files_under(&lake.lake);
    std::fs::write(&offset, "+30s\n").unwrap();
    let (status, body) = api.post("/api/v1/compaction/trigger", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    api.wait_cycle_done(body["cycle_id"].as_u64().unwrap());
    assert_eq!(files_under(&lake.lake), before, "no job ran on a stepped clock");
    // Stepped back: the next cycle checks again, and runs.
    std::fs::write(&offset, "+0s\n").unwrap();
    let (_, body) = api.post("/api/v1/compaction/trigger", Some(TOKEN));
    api.wait_cycle_done(body["cycle_id"].as_u64().unwrap());
    signal_group(&engine, libc::SIGTERM);
    let output = engine.wait_with_output().unwrap();
    let log = text(&output);
    assert!(log.contains("wall clock stepped") && log.contains("max_clock_skew"), "the step and the refusal are logged: {log}");
    assert!(files_under(&lake.lake).len() < before.len(), "compacted once the clock agreed again");
    assert_intact(&lake);
}
