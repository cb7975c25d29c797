//! Planning over a store: discovery, tier order, input filtering, recovery
//! manifests, and failure isolation.

use std::sync::Arc;

use compactor_engine::planner::{self, PlanOptions};
use compactor_job::manifest::{ManifestStore, RecoveryManifest};
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
    let options = PlanOptions { tiers: vec!["daily".into()], ..plan_options("2026-04-13T00:00:00Z") };
    let daily_only = planner::plan(&storage, &arc_tiers(), &options).await.unwrap();
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

async fn plan_of(storage: &Storage) -> compactor_engine::planner::Plan {
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
        inner.write(key, "x").await.unwrap();
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
        tiers: vec![],
        max_files_per_batch: 30,
        multipart_threshold: 64 << 20,
        explain: false,
        stop: Default::default(),
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
    let options = |tiers: &[&str], database: Option<&str>| PlanOptions {
        now: at("2026-04-13T00:00:00Z"),
        database: database.map(str::to_owned),
        tiers: tiers.iter().map(|t| (*t).to_owned()).collect(),
        max_files_per_batch: 30,
        multipart_threshold: 64 << 20,
        explain: false,
        stop: Default::default(),
    };
    let only_daily = planner::plan(&storage, &tiers, &options(&["daily"], None)).await.unwrap();
    assert!(only_daily.batches.iter().all(|b| b.candidate.tier == "daily") && only_daily.batches.len() == 2);
    let only_db2 = planner::plan(&storage, &tiers, &options(&[], Some("db2"))).await.unwrap();
    // Hourly's one output is all daily would see in db2's day: one batch.
    assert!(only_db2.batches.iter().all(|b| b.candidate.database == "db2") && only_db2.batches.len() == 1);
    tiers[0].enabled = false;
    let without_hourly = planner::plan(&storage, &tiers, &options(&[], None)).await.unwrap();
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
