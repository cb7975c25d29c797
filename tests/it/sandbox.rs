//! The sandbox against deliberately hostile components: each misbehaviour
//! becomes a clear error naming the plugin and the partition, the host keeps
//! running, and a well-behaved tier in the same plan still gets its batches.

use std::time::Duration;

use compactor_engine::Plan;
use compactor_runtime::PluginLimits;
use compactor_runtime::PluginSource;

use crate::util::{plan, raw_files, runtime, store_with, tier};

const PARTITION: &str = "db/cpu/2026/04/11/10";

fn lake_keys() -> Vec<String> {
    let mut keys: Vec<String> = raw_files("cpu", "20260411_100500", 12).iter().map(|n| format!("{PARTITION}/{n}")).collect();
    keys.extend(raw_files("cpu", "20260411_110500", 12).iter().map(|n| format!("db/cpu/2026/04/11/11/{n}")));
    keys
}

fn tight_limits() -> PluginLimits {
    PluginLimits { fuel_per_call: 200_000_000, memory_bytes: 32 << 20, call_timeout: Duration::from_secs(5) }
}

/// Plans the hostile tier (in `mode`) before a well-behaved hourly tier and
/// returns the plan after checking the hourly tier was unaffected.
async fn plan_with_hostile(mode: &str, limits: PluginLimits) -> Plan {
    let storage = store_with(&lake_keys()).await;
    let tiers = [
        tier("hostile", "hostile", &format!(r#"{{"mode": "{mode}"}}"#), limits),
        tier("hourly", "builtin:hourly", "{}", PluginLimits::default()),
    ];
    let plan = plan(&storage, &tiers, "2026-04-12T00:00:00Z").await;
    let hourly: Vec<_> = plan.batches.iter().filter(|b| b.candidate.tier == "hourly").collect();
    assert_eq!(hourly.len(), 2, "the well-behaved tier still plans: {:?}", plan.problems);
    assert!(plan.batches.iter().all(|b| b.candidate.tier == "hourly"), "nothing from the hostile tier");
    plan
}

fn only_problem(plan: &Plan) -> String {
    assert_eq!(plan.problems.len(), 1, "{:?}", plan.problems);
    let problem = &plan.problems[0];
    assert_eq!(problem.tier, "hostile");
    let text = problem.to_string();
    assert!(text.contains("hostile.wasm"), "names the plugin: {text}");
    assert!(text.contains(PARTITION), "names the partition: {text}");
    text
}

#[tokio::test]
async fn an_infinite_loop_exhausts_its_fuel() {
    let text = only_problem(&plan_with_hostile("loop", tight_limits()).await);
    assert!(text.contains("exhausted its fuel budget of 200000000 units in select-candidates"), "{text}");
}

#[tokio::test]
async fn an_infinite_loop_without_fuel_limit_hits_the_deadline() {
    let limits = PluginLimits { fuel_per_call: u64::MAX, memory_bytes: 32 << 20, call_timeout: Duration::from_millis(50) };
    let text = only_problem(&plan_with_hostile("loop", limits).await);
    assert!(text.contains("ran past its 50ms deadline in select-candidates"), "{text}");
}

#[tokio::test]
async fn a_memory_bomb_hits_the_memory_limit() {
    let text = only_problem(&plan_with_hostile("memory-bomb", tight_limits()).await);
    assert!(text.contains("exceeded its memory limit of 32.0 MiB in select-candidates"), "{text}");
}

#[tokio::test]
async fn a_panic_is_reported_with_its_message() {
    let text = only_problem(&plan_with_hostile("panic", tight_limits()).await);
    assert!(text.contains("trapped in select-candidates"), "{text}");
    assert!(text.contains("hostile policy gave up on db/cpu/2026/04/11/10"), "carries the panic message: {text}");
    assert!(text.contains("skipped for the rest of this cycle"), "{text}");
}

#[tokio::test]
async fn files_not_given_are_rejected() {
    let plan = plan_with_hostile("foreign-file", tight_limits()).await;
    assert_eq!(plan.problems.len(), 2, "one per partition; the instance stays usable");
    assert!(plan.problems[0].to_string().contains("which is not in the partition's listing"), "{}", plan.problems[0]);
}

#[tokio::test]
async fn duplicates_are_rejected() {
    let plan = plan_with_hostile("duplicate", tight_limits()).await;
    assert!(plan.problems[0].to_string().contains("more than once"), "{}", plan.problems[0]);
}

#[tokio::test]
async fn path_traversal_keys_are_rejected() {
    let plan = plan_with_hostile("traversal", tight_limits()).await;
    assert!(plan.problems[0].to_string().contains("path-traversal key"), "{}", plan.problems[0]);
}

#[tokio::test]
async fn a_refused_configuration_disables_only_that_tier() {
    let plan = plan_with_hostile("configure-error", tight_limits()).await;
    assert_eq!(plan.problems.len(), 1);
    assert!(plan.problems[0].to_string().contains("refused its configuration: mode: configure-error"), "{}", plan.problems[0]);
}

#[tokio::test]
async fn a_well_behaved_hostile_build_plans_normally() {
    let storage = store_with(&lake_keys()).await;
    let tiers = [tier("hostile", "hostile", r#"{"mode": "well-behaved"}"#, tight_limits())];
    let plan = plan(&storage, &tiers, "2026-04-12T00:00:00Z").await;
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    assert_eq!(plan.batches.len(), 2);
}

fn load_wat(name: &str, wat: &str) -> String {
    let path = std::env::temp_dir().join(format!("compactor-test-{}-{name}.wat", std::process::id()));
    std::fs::write(&path, wat).unwrap();
    let error = runtime().load_tier(&PluginSource::Path(path.clone())).err().expect("must be refused").to_string();
    std::fs::remove_file(path).ok();
    error
}

#[test]
fn an_incompatible_wit_major_version_is_refused_with_both_versions() {
    let error = load_wat(
        "v2",
        r#"(component
             (core module $m (func (export "f") (result i32) i32.const 0))
             (core instance $i (instantiate $m))
             (func $f (result bool) (canon lift (core func $i "f")))
             (instance $tier (export "is-compacted-file" (func $f)))
             (export "compactor:policy/tier@2.0.0" (instance $tier)))"#,
    );
    assert!(error.contains("was built for WIT compactor:policy@2.0.0"), "{error}");
    assert!(error.contains("this host speaks compactor:policy@1.x (1.1.0)"), "{error}");
}

#[test]
fn imports_outside_the_contract_are_refused_by_name() {
    let error = load_wat(
        "socket",
        r#"(component
             (import "wasi:sockets/tcp@0.2.0" (instance))
             (core module $m (func (export "f") (result i32) i32.const 0))
             (core instance $i (instantiate $m))
             (func $f (result bool) (canon lift (core func $i "f")))
             (instance $tier (export "is-compacted-file" (func $f)))
             (export "compactor:policy/tier@1.0.0" (instance $tier)))"#,
    );
    assert!(error.contains("imports wasi:sockets/tcp@0.2.0, which is outside the compactor:policy contract"), "{error}");
}

#[test]
fn a_component_that_does_not_match_the_world_is_refused() {
    let error = load_wat(
        "shape",
        r#"(component
             (core module $m (func (export "f") (result i32) i32.const 0))
             (core instance $i (instantiate $m))
             (func $f (result bool) (canon lift (core func $i "f")))
             (instance $tier (export "is-compacted-file" (func $f)))
             (export "compactor:policy/tier@1.0.0" (instance $tier)))"#,
    );
    assert!(error.contains("does not match the tier-policy world"), "{error}");
}

#[test]
fn bytes_that_are_not_a_component_are_refused() {
    let path = std::env::temp_dir().join(format!("compactor-test-{}-junk.wasm", std::process::id()));
    std::fs::write(&path, b"\0asm junk").unwrap();
    let error = runtime().load_tier(&PluginSource::Path(path.clone())).err().unwrap().to_string();
    std::fs::remove_file(path).ok();
    assert!(error.contains("is not a valid WebAssembly component"), "{error}");
    let error = runtime().load_tier(&PluginSource::Builtin("nope".into())).err().unwrap().to_string();
    assert!(error.contains("unknown built-in plugin \"nope\" (available: hourly, daily, binpack, role)"), "{error}");
}

/// Found by an adversarial run: a policy that takes just under its deadline
/// on every partition made `run` wait minutes after SIGTERM. A stop request
/// now ends planning before the next partition.
#[test]
fn a_stop_request_ends_planning_before_the_next_partition() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let keys: Vec<String> = (0..20)
        .flat_map(|h| {
            raw_files("cpu", &format!("20260411_{h:02}0500"), 2).into_iter().map(move |n| format!("db/cpu/2026/04/11/{h:02}/{n}"))
        })
        .collect();
    let storage = runtime.block_on(store_with(&keys));
    let limits = PluginLimits { call_timeout: Duration::from_secs(2), ..PluginLimits::default() };
    let tiers = [tier("raw", "raw", r#"{"mode": "nap"}"#, limits)];
    let options = compactor_engine::PlanOptions {
        now: crate::util::at("2026-04-13T00:00:00Z"),
        database: None,
        databases: None,
        max_files_per_batch: 30,
        multipart_threshold: 64 << 20,
        explain: false,
        stop: Default::default(),
        deadline: None,
        cancel: None,
        resume_after: None,
        fuel_left: None,
        share: None,
    };
    let stop = options.stop.clone();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let started = std::time::Instant::now();
    let plan = runtime.block_on(compactor_engine::plan(&storage, &tiers, &options)).unwrap();
    stopper.join().unwrap();
    // 20 partitions at 0.9 s each would take 18 s.
    assert!(started.elapsed() < Duration::from_secs(4), "planning took {:?} after the stop", started.elapsed());
    assert!(plan.tiers[0].partitions_seen < 5, "{:?}", plan.tiers[0]);
}
