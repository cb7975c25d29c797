//! Planning over a store: discovery, tier order, input filtering, recovery
//! manifests, and failure isolation.

use std::sync::Arc;

use compactor_engine::{self as planner, PlanOptions};
use compactor_job::{ManifestStore, RecoveryManifest};
use compactor_runtime::PluginLimits;
use compactor_storage::Storage;

use crate::util::{at, plan, plan_options, raw_files, store_with, tier};

fn hour(db_meas: &str, hour: &str, n: usize) -> Vec<String> {
    raw_files(db_meas.rsplit('/').next().unwrap(), "20260411_100500", n)
        .iter()
        .map(|f| format!("{db_meas}/2026/04/11/{hour}/{f}"))
        .collect()
}

fn arc_tiers() -> Vec<planner::PlannedTier> {
    vec![tier("hourly", "builtin:hourly", "{}", PluginLimits::default()), tier("daily", "builtin:daily", "{}", PluginLimits::default())]
}

#[tokio::test]
async fn batches_come_in_tier_database_measurement_partition_order() {
    let mut keys = hour("db2/mem", "10", 10);
    keys.extend(hour("db1/cpu", "11", 10));
    keys.extend(hour("db1/cpu", "10", 10));
    keys.extend(hour("db1/aaa", "10", 2));
    let storage = store_with(&keys).await;
    let plan = plan(&storage, &arc_tiers(), "2026-04-13T00:00:00Z").await;
    let order: Vec<(String, String)> =
        plan.batches.iter().map(|b| (b.candidate.tier.clone(), b.candidate.partition_path.clone())).collect();
    // Daily plans over hourly's predicted outputs, as a cycle runs them: two
    // outputs for db1/cpu's day are fewer than its min_files (12), so no
    // daily batch yet.
    let expected = [("hourly", "db1/cpu/2026/04/11/10"), ("hourly", "db1/cpu/2026/04/11/11"), ("hourly", "db2/mem/2026/04/11/10")];
    assert_eq!(order, expected.map(|(t, p)| (t.to_owned(), p.to_owned())));
    assert!(plan.problems.is_empty());
    assert_eq!(plan.tiers[1].partitions_seen, 3, "daily saw every day, hourly's outputs included");
    // Daily alone plans over the raw files: 20 in db1/cpu's day, sorted by key.
    let daily_tier: Vec<_> = arc_tiers().into_iter().filter(|t| t.name == "daily").collect();
    let daily_only = planner::plan(&storage, &daily_tier, &plan_options("2026-04-13T00:00:00Z")).await.unwrap();
    let daily = &daily_only.batches.iter().find(|b| b.candidate.partition_path == "db1/cpu/2026/04/11").unwrap().candidate;
    assert_eq!((daily.file_count, daily.batch_number, daily.total_batches), (20, 1, 1));
    assert!(daily.files.windows(2).all(|w| w[0] < w[1]), "files sorted by key");
    assert_eq!(plan.tiers[0].partitions_seen, 4);
    assert_eq!(plan.tiers[0].bytes, 3000);
}

#[tokio::test]
async fn large_partitions_are_split_into_numbered_batches() {
    let storage = store_with(&hour("db/cpu", "10", 63)).await;
    let plan = plan(&storage, &arc_tiers()[..1], "2026-04-13T00:00:00Z").await;
    let batches: Vec<(usize, usize, usize)> =
        plan.batches.iter().map(|b| (b.candidate.files.len(), b.candidate.batch_number, b.candidate.total_batches)).collect();
    assert_eq!(batches, [(30, 1, 3), (30, 2, 3), (3, 3, 3)]);
}

#[tokio::test]
async fn only_visible_parquet_files_are_ever_inputs() {
    let mut keys = hour("db/cpu", "10", 10);
    keys.push("db/cpu/2026/04/11/10/notes.txt".into());
    keys.push("db/cpu/2026/04/11/10/.hidden.parquet".into());
    keys.push("db/cpu/2026/04/11/10/.staging/x.parquet".into());
    let storage = store_with(&keys).await;
    let plan = plan(&storage, &arc_tiers()[..1], "2026-04-13T00:00:00Z").await;
    assert_eq!(plan.batches.len(), 1);
    assert_eq!(plan.batches[0].candidate.files, hour("db/cpu", "10", 10));

    // Nine Parquet files and a text file are not ten inputs.
    let mut keys = hour("db/cpu", "10", 9);
    keys.push("db/cpu/2026/04/11/10/notes.txt".into());
    let storage = store_with(&keys).await;
    assert!(plan_of(&storage).await.batches.is_empty());
}

async fn plan_of(storage: &Storage) -> compactor_engine::Plan {
    plan(storage, &arc_tiers(), "2026-04-13T00:00:00Z").await
}

/// A pending hourly manifest whose job merged `inputs`.
fn manifest_holding(inputs: &[String]) -> RecoveryManifest {
    RecoveryManifest {
        output_path: "db/cpu/2026/04/11/10/cpu_20260411_110000_1_b1_compacted.parquet".into(),
        output_size: 10,
        input_files: inputs.to_vec(),
        database: "db".into(),
        measurement: "cpu".into(),
        partition_path: "db/cpu/2026/04/11/10".into(),
        tier: "hourly".into(),
        status: "pending".into(),
        created_at: at("2026-04-11T11:00:00Z"),
        job_id: "db_db_cpu_2026_04_11_10_1_b1".into(),
        owner: None,
        policy: None,
    }
}

#[tokio::test]
async fn files_held_by_recovery_manifests_are_dropped_from_candidates() {
    let keys = hour("db/cpu", "10", 12);
    let storage = store_with(&keys).await;
    let manifest = manifest_holding(&keys[..11]);
    ManifestStore::new(storage.clone()).write(&manifest).await.unwrap();
    let plan = plan(&storage, &arc_tiers()[..1], "2026-04-13T00:00:00Z").await;
    // As in Arc, the tier's min_files is not re-applied after the exclusion,
    // but a lone file is not a batch: Arc would plan it and fail it as
    // "batch size 1 below minimum 2" in every cycle (issue 8). The held files
    // come back once recovery has resolved them, so this is no problem.
    assert!(plan.batches.is_empty(), "{:?}", plan.batches);
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    assert_eq!(plan.tiers[0].held_files_dropped, 11);
}

/// Found by the suite under load: a manifest read that timed out released a
/// live job's files (its uploaded output among them) to the daily tier, and
/// recovery then rolled the job back, so its rows were merged twice. Now the
/// partitions the manifest names wait — its hour, and the day around it —
/// and the others are planned.
#[tokio::test]
async fn a_manifest_that_cannot_be_read_now_blocks_its_partitions() {
    let mut keys = hour("db/cpu", "10", 12);
    let inner = store_with(&keys).await;
    let manifest = manifest_holding(&keys[..11]);
    ManifestStore::new(inner.clone()).write(&manifest).await.unwrap();
    keys = hour("db/cpu", "11", 12);
    for key in &keys {
        inner.write(key, vec![0u8; 100]).await.unwrap();
    }
    let storage = Storage::from_store(Arc::new(failing::FailsUnder::reads(inner.object_store().clone(), "_compaction_state")), "flaky://");
    let plan = plan(&storage, &arc_tiers(), "2026-04-13T00:00:00Z").await;
    let planned: Vec<&str> = plan.batches.iter().map(|b| b.candidate.partition_path.as_str()).collect();
    assert_eq!(planned, ["db/cpu/2026/04/11/11"], "hour 10 and its day wait; hour 11 does not");
    let problems: Vec<String> = plan.problems.iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems.iter().all(|p| p.contains("cannot be read now")), "{problems:#?}");
}

#[tokio::test]
async fn an_unreadable_manifest_listing_skips_every_candidate() {
    let inner = store_with(&hour("db/cpu", "10", 12)).await;
    let storage = Storage::from_store(Arc::new(failing::FailsUnder::new(inner.object_store().clone(), "_compaction_state")), "flaky://");
    let plan = plan(&storage, &arc_tiers()[..1], "2026-04-13T00:00:00Z").await;
    assert!(plan.batches.is_empty());
    assert!(plan.problems[0].to_string().contains("failed to list manifests"), "{}", plan.problems[0]);
}

#[tokio::test]
async fn pseudo_databases_plan_like_plain_ones() {
    let keys: Vec<String> = ["fa", "fb", "fc"].iter().map(|f| format!("rocket-01/factory/temps/2026/08/19/10/{f}.parquet")).collect();
    let storage = store_with(&keys).await;
    let tiers = [tier("hourly", "builtin:hourly", r#"{"min_files": 3}"#, PluginLimits::default())];
    let options = PlanOptions {
        now: at("2026-08-20T00:00:00Z"),
        database: Some("rocket-01/factory".into()),
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
    let plan = planner::plan(&storage, &tiers, &options).await.unwrap();
    assert_eq!(plan.batches.len(), 1);
    let c = &plan.batches[0].candidate;
    assert_eq!(
        (c.database.as_str(), c.measurement.as_str(), c.partition_path.as_str()),
        ("rocket-01/factory", "temps", "rocket-01/factory/temps/2026/08/19/10")
    );
    assert_eq!(c.partition_time, at("2026-08-19T10:00:00Z"));
}

#[tokio::test]
async fn tier_and_database_filters_and_disabled_tiers() {
    let mut keys = hour("db1/cpu", "10", 12);
    keys.extend(hour("db2/cpu", "10", 12));
    let storage = store_with(&keys).await;
    let mut tiers = arc_tiers();
    let options = |database: Option<&str>| PlanOptions {
        now: at("2026-04-13T00:00:00Z"),
        database: database.map(str::to_owned),
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
    let daily_tier: Vec<_> = tiers.iter().filter(|t| t.name == "daily").cloned().collect();
    let only_daily = planner::plan(&storage, &daily_tier, &options(None)).await.unwrap();
    assert!(only_daily.batches.iter().all(|b| b.candidate.tier == "daily") && only_daily.batches.len() == 2);
    let only_db2 = planner::plan(&storage, &tiers, &options(Some("db2"))).await.unwrap();
    // Hourly's one output is all daily would see in db2's day: one batch.
    assert!(only_db2.batches.iter().all(|b| b.candidate.database == "db2") && only_db2.batches.len() == 1);
    tiers[0].enabled = false;
    let without_hourly = planner::plan(&storage, &tiers, &options(None)).await.unwrap();
    assert!(without_hourly.batches.iter().all(|b| b.candidate.tier == "daily"));
    assert_eq!(without_hourly.tiers.len(), 1);
}

#[tokio::test]
async fn a_tier_whose_plugin_failed_to_load_does_not_stop_the_others() {
    let storage = store_with(&hour("db/cpu", "10", 12)).await;
    let mut tiers = arc_tiers();
    tiers[0].policy = Err("cannot read plugin /nope.wasm: No such file or directory".into());
    let plan = plan(&storage, &tiers, "2026-04-13T00:00:00Z").await;
    assert_eq!(plan.problems.len(), 1);
    assert!(plan.problems[0].to_string().starts_with("tier hourly: cannot read plugin"));
    assert_eq!(plan.batches.len(), 1);
    assert_eq!(plan.batches[0].candidate.tier, "daily");
}

/// A store double that fails every listing (or every read) under one prefix.
mod failing {
    use std::sync::Arc;

    use futures::stream::BoxStream;
    use object_store::path::Path;
    use object_store::{
        GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
        PutResult, Result,
    };

    #[derive(Debug)]
    pub(super) struct FailsUnder {
        inner: Arc<dyn ObjectStore>,
        prefix: &'static str,
        reads: bool,
    }

    impl FailsUnder {
        /// Listings under `prefix` fail.
        pub(super) fn new(inner: Arc<dyn ObjectStore>, prefix: &'static str) -> Self {
            Self { inner, prefix, reads: false }
        }

        /// Listings work; reads of objects under `prefix` fail.
        pub(super) fn reads(inner: Arc<dyn ObjectStore>, prefix: &'static str) -> Self {
            Self { inner, prefix, reads: true }
        }

        fn refuses(&self, prefix: Option<&Path>) -> bool {
            !self.reads && prefix.is_some_and(|p| p.as_ref().starts_with(self.prefix))
        }
    }

    impl std::fmt::Display for FailsUnder {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "FailsUnder({})", self.prefix)
        }
    }

    fn slow_down() -> object_store::Error {
        object_store::Error::Generic { store: "flaky", source: "SlowDown: please reduce your request rate".into() }
    }

    #[async_trait::async_trait]
    impl ObjectStore for FailsUnder {
        async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
            if self.reads && location.as_ref().starts_with(self.prefix) {
                return Err(slow_down());
            }
            self.inner.get_opts(location, options).await
        }
        async fn delete(&self, location: &Path) -> Result<()> {
            self.inner.delete(location).await
        }
        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            if self.refuses(prefix) {
                return Box::pin(futures::stream::once(async { Err(slow_down()) }));
            }
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
            if self.refuses(prefix) {
                return Err(slow_down());
            }
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
            self.inner.copy(from, to).await
        }
        async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
            self.inner.copy_if_not_exists(from, to).await
        }
    }
}

/// Arc's hourly tier as built for WIT 1.0.0, before 1.1.0 added `explain`:
/// kept prebuilt, so that the host's compatibility with it is tested for as
/// long as the host speaks major version 1.
const HOURLY_WIT_1_0_0: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/components/hourly-wit-1.0.0.wasm");

#[tokio::test]
async fn a_component_built_for_wit_1_0_0_loads_plans_alike_and_the_host_explains_it() {
    let source = compactor_runtime::PluginSource::Path(HOURLY_WIT_1_0_0.into());
    let old = crate::util::runtime().load_tier(&source).unwrap();
    assert_eq!(old.contract().wit_version.to_string(), "1.0.0");
    assert!(!old.explains());
    let current = crate::util::plugin("builtin:hourly");
    assert_eq!(current.contract().wit_version.to_string(), compactor_runtime::host_wit_version().to_string());
    assert!(current.explains());

    let mut keys = hour("db/cpu", "10", 10);
    keys.extend(hour("db/cpu", "11", 3));
    let storage = store_with(&keys).await;
    let options = PlanOptions { explain: true, ..plan_options("2026-04-13T00:00:00Z") };
    let tier = |plugin: compactor_runtime::TierPlugin| planner::PlannedTier {
        name: "hourly".into(),
        tenant: None,
        enabled: true,
        policy: Ok(Arc::new(plugin)),
        config_json: "{}".into(),
        limits: PluginLimits::default(),
    };
    let old_plan = planner::plan(&storage, &[tier(old)], &options).await.unwrap();
    let new_plan = planner::plan(&storage, &[tier(current)], &options).await.unwrap();
    assert_eq!(old_plan.batches, new_plan.batches, "the same decisions");
    assert_eq!(old_plan.batches.len(), 1);
    assert!(old_plan.problems.is_empty() && new_plan.problems.is_empty());

    let reasons =
        |plan: &planner::Plan| -> Vec<(bool, String)> { plan.partitions.iter().map(|v| (v.selected, v.reason.clone())).collect() };
    // 1.1.0: the policy's own words.
    assert_eq!(
        reasons(&new_plan),
        [
            (true, "selects 10 of 10 files: 10 of 10 needed uncompacted files (10 files)".to_owned()),
            (false, "3 of 10 needed uncompacted files (3 files)".to_owned()),
        ]
    );
    // 1.0.0: the host's, from what it can see.
    assert_eq!(reasons(&old_plan), [(true, "selects 10 of 10 files".to_owned()), (false, "3 of its min_files 10 files".to_owned())]);
}

#[tokio::test]
async fn explaining_a_plan_does_not_change_it() {
    // A policy built with the SDK but without its own `explain`: the
    // default answers "", and the host explains.
    let keys = hour("db/cpu", "10", 4);
    let storage = store_with(&keys).await;
    let tiers = [tier("hostile", "hostile", r#"{"mode": "well-behaved"}"#, PluginLimits::default())];
    let plain = planner::plan(&storage, &tiers, &plan_options("2026-04-13T00:00:00Z")).await.unwrap();
    let explained = planner::plan(&storage, &tiers, &PlanOptions { explain: true, ..plan_options("2026-04-13T00:00:00Z") }).await.unwrap();
    assert_eq!(plain.batches, explained.batches);
    assert_eq!(explained.partitions.len(), 1);
    assert_eq!(explained.partitions[0].reason, "selects 4 of 4 files", "the SDK's default explain is empty: the host explains");
}

#[tokio::test]
async fn a_policy_that_misbehaves_when_asked_why_plans_as_if_not_asked() {
    let keys = hour("db/cpu", "10", 4);
    let storage = store_with(&keys).await;
    let limits = PluginLimits { fuel_per_call: 50_000_000, ..PluginLimits::default() };
    for mode in ["explain-panic", "explain-loop", "explain-flood"] {
        let tiers = [tier("hostile", "hostile", &format!(r#"{{"mode": "{mode}"}}"#), limits)];
        let plain = planner::plan(&storage, &tiers, &plan_options("2026-04-13T00:00:00Z")).await.unwrap();
        let explained =
            planner::plan(&storage, &tiers, &PlanOptions { explain: true, ..plan_options("2026-04-13T00:00:00Z") }).await.unwrap();
        assert_eq!(plain.batches.len(), 1, "{mode}");
        assert_eq!(plain.batches, explained.batches, "{mode}");
        assert!(explained.problems.is_empty(), "{mode}: {:?}", explained.problems);
        let reason = &explained.partitions[0].reason;
        assert!(reason.starts_with("selects 4 of 4 files"), "{mode}: {reason}");
        assert!(reason.len() < 700 && !reason.contains('\u{1b}') && !reason.contains('\n'), "{mode}: cut and sanitised: {reason:?}");
    }
}

/// One rule, one place: for partitions of 2 to 130 files (31 and 61
/// included, where the simulator once cut differently), the simulator runs
/// exactly the batches `plan` shows for the same lake and clock.
#[tokio::test]
async fn the_simulator_runs_the_batches_the_engine_plans() {
    let runtime = compactor_policy_testkit::runtime().unwrap();
    let now = "2026-04-13T00:00:00Z";
    let config = r#"{"min_files": 2}"#;
    let sim_tier = compactor_policy_testkit::simulate::SimTier {
        name: "hourly".into(),
        plugin: "builtin:hourly".into(),
        config_json: config.into(),
        schedule: "0 5 * * * *".parse().unwrap(),
    };
    for files in 2..=130 {
        let keys = hour("db/cpu", "10", files);
        let storage = store_with(&keys).await;
        let engine: Vec<_> = plan(&storage, &[tier("hourly", "builtin:hourly", config, PluginLimits::default())], now)
            .await
            .batches
            .into_iter()
            .map(|b| b.candidate)
            .collect();
        let listed = storage.list("").await.unwrap();
        let simulated = compactor_policy_testkit::simulate::plan_batches(&runtime, &sim_tier, &listed, at(now), 30).unwrap();
        assert_eq!(engine, simulated, "{files} files");
        assert!(!engine.is_empty(), "{files} files are planned");
    }
}
