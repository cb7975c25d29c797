//! The compaction job on a real S3-compatible server (moto, on 127.0.0.1):
//! a cycle, a crash at every step boundary followed by recovery, the server
//! stopped mid-upload and mid-delete, and two engines racing on one bucket. Rows are compared with the original, row by
//! row, after downloading the bucket.
//!
//! The server is `$COMPACTOR_TEST_S3_ENDPOINT` (`.ci/run` starts one), or a
//! `moto_server` this test binary starts itself.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use compactor_job::sample::{self, SampleSpec};
use compactor_job::verify;
use compactor_storage::Storage;

use crate::kit::{MotoServer, TestConfig, signal_group};
use crate::util::{compactor, files_under, is_coordination_state, text};

pub(crate) const NOW: &str = "2026-04-13T12:00:00Z";

fn endpoint() -> &'static str {
    crate::kit::shared_s3_endpoint()
}

pub(crate) fn create_bucket_at(endpoint: &str, name: &str) {
    let address = endpoint.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "PUT /{name} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 200"), "cannot create bucket {name}: {response}");
}

/// Multipart uploads of `bucket` that were neither completed nor aborted
/// (S3's ListMultipartUploads).
fn multipart_uploads_in_progress(bucket: &str) -> usize {
    let address = endpoint().trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "GET /{bucket}?uploads HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.matches("<UploadId>").count()
}

/// A lake in a remote store, its pristine copy on disk, and a config
/// pointing at it (S3 here; Azure in `azure.rs`).
pub(crate) struct Bucket {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) root: std::path::PathBuf,
    pub(crate) storage: Storage,
    pub(crate) config: String,
}

pub(crate) fn options_for(endpoint: &str) -> BTreeMap<String, String> {
    [
        ("aws_endpoint", endpoint),
        ("aws_allow_http", "true"),
        ("aws_region", "us-east-1"),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
        // A write may land up to the request timeout after it was sent, so
        // a dead job's partition waits that long (past its lease) before
        // recovery judges it: short here, as the leases are.
        ("timeout", "2s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A bucket holding a small lake under `lake/`, its pristine copy on disk,
/// and a config pointing at it.
fn bucket(name: &str) -> Bucket {
    bucket_at(endpoint(), name, &[])
}

fn bucket_at(endpoint: &str, name: &str, extra: &[(&str, &str)]) -> Bucket {
    let mut options = options_for(endpoint);
    options.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    create_bucket_at(endpoint, name);
    remote_lake(&format!("s3://{name}/lake"), &options, |key| key.to_owned())
}

/// Creates bucket `name` and uploads every file under `local` to its `lake/`
/// prefix; returns the URL and the store.
fn upload_s3_lake(name: &str, options: &BTreeMap<String, String>, local: &Path) -> (String, Storage) {
    create_bucket_at(&options["aws_endpoint"], name);
    let url = format!("s3://{name}/lake");
    let storage = upload_lake(&url, options, local, |key| key.to_owned());
    (url, storage)
}

/// A small lake (two hours of 12 files) uploaded to `url`, each file under
/// the key `rename` gives it, with its pristine copy and a config.
pub(crate) fn remote_lake(url: &str, options: &BTreeMap<String, String>, rename: impl Fn(&str) -> String) -> Bucket {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let spec = SampleSpec {
        database: "db".into(),
        measurements: vec![("cpu".into(), vec!["host".into()])],
        hours: 2,
        files_per_hour: 12,
        rows_per_file: 50,
    };
    sample::generate(&root.join("pristine"), crate::util::at(NOW), &spec).unwrap();
    let storage = upload_lake(url, options, &root.join("pristine"), rename);
    let config = remote_config(url, options).hourly_and_daily().write(&root);
    Bucket { _dir: dir, root, storage, config }
}

/// Uploads every file under `local` to `url`, under the key `rename` gives
/// it; returns the store.
pub(crate) fn upload_lake(url: &str, options: &BTreeMap<String, String>, local: &Path, rename: impl Fn(&str) -> String) -> Storage {
    let storage = Storage::open(url, options, local).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for file in files_under(local) {
        runtime.block_on(storage.write(&rename(&file), std::fs::read(local.join(&file)).unwrap())).unwrap();
    }
    storage
}

/// Lease TTL of these tests: short, so that a test can outwait it.
const LEASE_TTL_MS: u64 = 1500;

/// A config for `url` with `options`, jobs in `tmp` with one thread, short
/// leases.
pub(crate) fn remote_config(url: &str, options: &BTreeMap<String, String>) -> TestConfig {
    TestConfig::new(url).storage_options(options).compaction("temp_directory", "tmp").compaction("threads", 1).lease_ttl_ms(LEASE_TTL_MS)
}

/// Downloads the bucket and checks: exactly the original rows, two daily
/// outputs, and nothing else (no manifest, no claim).
pub(crate) fn assert_intact_and_compacted(bucket: &Bucket) {
    let keys = assert_intact(bucket);
    assert_eq!(keys.len(), 1, "one daily output and nothing else: {keys:#?}\n{}", logs(bucket));
    assert!(keys[0].ends_with("_b1_daily.parquet"), "{keys:?}");
}

/// Downloads the bucket and checks: exactly the original rows, and nothing
/// but Parquet outputs (no manifest, no claim). Returns the keys.
pub(crate) fn assert_intact(bucket: &Bucket) -> Vec<String> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let objects = listed(&runtime, &bucket.storage);
    let keys: Vec<String> = objects.iter().map(|o| o.key.clone()).collect();
    assert!(keys.iter().all(|k| k.ends_with(".parquet")), "only outputs are left: {keys:#?}\n{}", logs(bucket));
    let downloaded = bucket.root.join("downloaded");
    let _ = std::fs::remove_dir_all(&downloaded);
    for object in &objects {
        let path = downloaded.join(&object.key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, runtime.block_on(bucket.storage.read(&object.key)).unwrap()).unwrap();
    }
    let connection = verify::connection().unwrap();
    let before = format!("{}/**/*.parquet", bucket.root.join("pristine").display());
    let after = format!("{}/**/*.parquet", downloaded.display());
    assert_eq!(verify::row_differences(&connection, &before, &after).unwrap(), (0, 0), "{}", logs(bucket));
    keys
}

/// Every object of the bucket, except what coordination keeps on purpose.
fn listed(runtime: &tokio::runtime::Runtime, storage: &Storage) -> Vec<compactor_storage::FileMeta> {
    let mut objects = runtime.block_on(storage.list("")).unwrap();
    objects.retain(|o| {
        !is_coordination_state(&o.key, || String::from_utf8_lossy(&runtime.block_on(storage.read(&o.key)).unwrap()).into_owned())
    });
    objects
}

/// After a fault at `step`: recovery, a clean cycle, and every row once.
pub(crate) fn recover_then_compact(bucket: &Bucket, step: &str) {
    recover_then_run_once(bucket, step);
    assert_intact_and_compacted(bucket);
}

/// `recover`, then `once`, each succeeding (logs kept for failure messages).
fn recover_then_run_once(bucket: &Bucket, step: &str) {
    let recovered = compactor(&["-v", "recover", "--config", &bucket.config], &[]);
    std::fs::write(bucket.root.join("recover.log"), text(&recovered)).unwrap();
    assert!(recovered.status.success(), "{step}: {}", text(&recovered));
    let clean = compactor(&["-v", "once", "--config", &bucket.config, "--now", NOW], &[]);
    std::fs::write(bucket.root.join("once.log"), text(&clean)).unwrap();
    assert!(clean.status.success(), "{step}: {}", text(&clean));
}

/// The logs a test left in the bucket's directory, for failure messages.
pub(crate) fn logs(bucket: &Bucket) -> String {
    ["engine.log", "recover.log", "once.log"]
        .iter()
        .filter_map(|name| std::fs::read_to_string(bucket.root.join(name)).ok().map(|log| format!("--- {name}\n{log}")))
        .collect()
}

#[test]
fn a_cycle_on_s3_compacts_every_row_once() {
    let bucket = bucket("s3-cycle");
    let plan = compactor(&["plan", "--config", &bucket.config, "--now", NOW, "--format", "json"], &[]);
    assert!(plan.status.success(), "{}", text(&plan));
    let batches: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(batches.as_array().unwrap().len(), 3, "2 hourly + 1 daily (before hourly ran): {batches}");
    let once = compactor(&["once", "--config", &bucket.config, "--now", NOW], &[]);
    assert!(once.status.success(), "{}", text(&once));
    assert!(!String::from_utf8_lossy(&once.stderr).contains("secret"), "no secret in the logs");
    assert_intact_and_compacted(&bucket);
}

#[test]
fn a_job_killed_on_s3_loses_and_duplicates_nothing() {
    // `mid-upload` needs a multipart upload, which S3 allows only for parts
    // of 5 MiB; the server-stop test below cuts an upload instead.
    for (i, step) in ["after-download", "after-merge", "after-manifest", "after-upload", "mid-delete", "after-delete"].iter().enumerate() {
        let bucket = bucket(&format!("s3-crash-{i}"));
        let _crashed = compactor(&["once", "--config", &bucket.config, "--now", NOW], &[("COMPACTOR_FAULT", step)]);
        recover_then_compact(&bucket, step);
    }
}

/// Two `once --tier hourly` on `bucket` at the same moment, both
/// succeeding; their outputs.
pub(crate) fn two_engines_at_once(bucket: &Bucket) -> (std::process::Output, std::process::Output) {
    let run = || compactor(&["once", "--config", &bucket.config, "--now", NOW, "--tier", "hourly", "--format", "json"], &[]);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(run);
        let b = s.spawn(run);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(a.status.success() && b.status.success(), "{}\n{}", text(&a), text(&b));
    (a, b)
}

#[test]
fn two_engines_racing_on_one_bucket_compact_every_row_once() {
    let bucket = bucket("s3-race");
    let (a, b) = two_engines_at_once(&bucket);
    // Each of the two hour partitions was compacted by exactly one engine.
    let mut compacted: Vec<String> = [&a, &b]
        .iter()
        .flat_map(|o| {
            let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            report["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|j| j["files_compacted"].as_u64() > Some(0))
                .map(|j| j["partition_path"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    compacted.sort();
    assert_eq!(compacted, ["db/cpu/2026/04/11/00", "db/cpu/2026/04/11/01"], "{}\n{}", text(&a), text(&b));
    let clean = compactor(&["once", "--config", &bucket.config, "--now", NOW], &[]);
    assert!(clean.status.success(), "{}", text(&clean));
    assert_intact_and_compacted(&bucket);
}

#[test]
fn the_server_stopped_mid_upload_or_mid_delete_loses_nothing() {
    let server = MotoServer::start();
    // Requests to a stopped server fail after a second, without retries.
    let fast_failure = [("timeout", "1s"), ("connect_timeout", "1s"), ("max_retries", "0"), ("retry_timeout", "2s")];
    for (i, step) in ["after-manifest", "mid-delete"].iter().enumerate() {
        let bucket = bucket_at(&server.endpoint, &format!("s3-paused-{i}"), &fast_failure);
        let stalled = bucket.root.join("stalled");
        let log = std::fs::File::create(bucket.root.join("engine.log")).unwrap();
        let mut engine = Command::new(env!("CARGO_BIN_EXE_compactor"))
            .args(["-v", "once", "--config", &bucket.config, "--now", NOW])
            .env("COMPACTOR_STALL", format!("{step}:1500:{}", stalled.display()))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        for _ in 0..300 {
            if stalled.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(stalled.exists(), "{step}: the job never reached the step");
        // The job is about to upload (or to delete its second input): cut
        // the store off until its requests have failed.
        server.signal(libc::SIGSTOP);
        std::thread::sleep(std::time::Duration::from_millis(4000));
        server.signal(libc::SIGCONT);
        let _ = engine.wait();
        // An upload whose outcome is unknown keeps its partition for one more
        // lease TTL before anyone recovers it.
        std::thread::sleep(std::time::Duration::from_millis(2 * LEASE_TTL_MS));
        recover_then_run_once(&bucket, step);
        // Whether the stalled engine's daily job ran over the other hours
        // (its stalled hour held by the manifest) depends on when the store
        // came back; either way every row is there exactly once, in outputs
        // only.
        assert_intact(&bucket);
    }
}

#[test]
fn bad_inputs_on_s3_get_the_spec_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("lake");
    let (corrupt, truncated) = crate::compaction::write_bad_inputs(&local);
    let options = options_for(endpoint());
    let (url, storage) = upload_s3_lake("s3-bad-inputs", &options, &local);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = remote_config(&url, &options).tier("hourly", "builtin:hourly", &[]).write(dir.path());
    let output = compactor(&["once", "--config", &config, "--now", NOW, "--format", "json"], &[]);
    assert!(output.status.success(), "{}", text(&output));
    crate::compaction::assert_bad_input_report(&serde_json::from_slice(&output.stdout).unwrap());
    let left: Vec<String> = listed(&runtime, &storage).into_iter().map(|o| o.key).collect();
    for kept in [corrupt.as_str(), truncated.as_str(), "notes.txt"] {
        assert!(left.iter().any(|k| k.ends_with(kept)), "{kept} stays: {left:#?}");
    }
    assert_eq!(left.iter().filter(|k| k.starts_with("db/trades/")).count(), 10, "inputs without time stay");
    assert_eq!(left.iter().filter(|k| k.ends_with("_compacted.parquet")).count(), 1);
    assert_eq!(left.len(), 15, "{left:#?}");
}

/// A bucket `name` holding one hour of 12 files whose hourly output (~10
/// MB: random doubles barely compress) goes up in two 5 MiB parts.
fn multipart_bucket(name: &str) -> Bucket {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    for i in 0..12 {
        crate::compaction::write_parquet(
            &root.join(format!("pristine/db/cpu/2026/04/11/00/cpu_20260411_00{:02}00_000000001.parquet", i * 4)),
            &format!(
                "SELECT make_timestamp((1775865600000000 + {i} * 100000 + r)::BIGINT)::TIMESTAMPTZ AS time, random() AS value FROM range(100000) t(r)"
            ),
        );
    }
    let options = options_for(endpoint());
    let (url, storage) = upload_s3_lake(name, &options, &root.join("pristine"));
    let config = remote_config(&url, &options).compaction("multipart_threshold", "5MiB").tier("hourly", "builtin:hourly", &[]).write(&root);
    Bucket { _dir: dir, root, storage, config }
}

#[test]
fn a_job_killed_mid_multipart_upload_on_s3_loses_nothing() {
    let bucket = multipart_bucket("s3-multipart");
    let config = &bucket.config;
    // The first job dies after its first part; the halves that the retry
    // compacts are small enough for single uploads and succeed.
    let crashed = compactor(&["once", "--config", config, "--now", NOW], &[("COMPACTOR_FAULT", "mid-upload")]);
    assert!(String::from_utf8_lossy(&crashed.stderr).contains("step=mid-upload"), "the job was killed mid-upload: {}", text(&crashed));
    let recovered = compactor(&["recover", "--config", config], &[]);
    assert!(recovered.status.success(), "{}", text(&recovered));
    assert_eq!(multipart_uploads_in_progress("s3-multipart"), 0, "the dead job's upload is aborted, its parts freed");
    let clean = compactor(&["once", "--config", config, "--now", NOW], &[]);
    assert!(clean.status.success(), "{}", text(&clean));
    let keys = assert_intact(&bucket);
    assert!(keys.iter().all(|k| k.ends_with("_compacted.parquet")), "only outputs are left: {keys:#?}");
}

/// Recovery and cycles until a cycle has nothing to do, once every lease of
/// the engines before has expired.
fn converge(bucket: &Bucket) {
    crate::kit::run_until_idle(&bucket.config, NOW, LEASE_TTL_MS, |command, output| {
        std::fs::write(bucket.root.join(format!("{command}.log")), text(output)).unwrap();
    });
}

#[test]
fn engines_on_different_tiers_and_a_recovery_loop_on_one_bucket() {
    let bucket = bucket("s3-tiers-race");
    let engine = |args: &'static [&'static str]| {
        let config = bucket.config.clone();
        move || compactor(&[&["once", "--config", &config, "--now", NOW][..], args].concat(), &[])
    };
    let (engines, recoveries) = std::thread::scope(|s| {
        let engines: Vec<_> =
            [engine(&["--tier", "hourly"]), engine(&["--tier", "daily"]), engine(&[])].into_iter().map(|e| s.spawn(e)).collect();
        let recoveries: Vec<_> = (0..4).map(|_| compactor(&["recover", "--config", &bucket.config], &[])).collect();
        (engines.into_iter().map(|e| e.join().unwrap()).collect::<Vec<_>>(), recoveries)
    });
    for output in engines.iter().chain(&recoveries) {
        assert!(output.status.success(), "{}", text(output));
    }
    converge(&bucket);
    assert_intact(&bucket);
}

/// An output PUT whose answer never comes: the proxy takes it, the client
/// times out, and the PUT reaches the server later — before recovery looks
/// (recovery finds the output complete and commits it), or after recovery
/// aborted the job (the fence deletes it). Either way no row twice.
#[test]
fn an_upload_that_lands_after_the_client_timed_out_duplicates_nothing() {
    for (i, delay_ms) in [2_000u64, 6_000].into_iter().enumerate() {
        let proxy = crate::kit::LateProxy::start(endpoint(), "_compacted.parquet", std::time::Duration::from_millis(delay_ms));
        let mut bucket = bucket(&format!("s3-late-{i}"));
        let mut options = options_for(&proxy.endpoint);
        options.extend([("timeout", "1s"), ("max_retries", "0")].map(|(k, v)| (k.to_owned(), v.to_owned())));
        bucket.config = remote_config(&format!("s3://s3-late-{i}/lake"), &options).hourly_and_daily().write(&bucket.root);
        let first = compactor(&["-v", "once", "--config", &bucket.config, "--now", NOW, "--tier", "hourly"], &[]);
        std::fs::write(bucket.root.join("engine.log"), text(&first)).unwrap();
        assert!(text(&first).contains("outcome of the upload is unknown"), "{}", text(&first));
        if delay_ms > 3 * LEASE_TTL_MS {
            // Recovery runs before the PUT lands: it aborts the job.
            std::thread::sleep(std::time::Duration::from_millis(2 * LEASE_TTL_MS));
            let recovered = compactor(&["-v", "recover", "--config", &bucket.config], &[]);
            assert!(String::from_utf8_lossy(&recovered.stderr).contains("did not commit"), "{}", text(&recovered));
        }
        crate::kit::wait_until("the held PUT to land", std::time::Duration::from_secs(30), || {
            proxy.landed.load(std::sync::atomic::Ordering::SeqCst)
        });
        converge(&bucket);
        assert_intact_and_compacted(&bucket);
    }
}

/// `compactor -v ARGS` on `bucket`, in its own process group, not waited for.
fn spawn_engine(bucket: &Bucket, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    crate::kit::spawn_compactor(&bucket.config, args, env)
}

/// Three engines on one bucket, one of them SIGKILLed (with its jobs) 300
/// and 700 ms in; then an engine paused past its lease right after its
/// upload while another one works, and woken.
#[test]
fn engines_killed_or_paused_on_one_bucket_lose_and_duplicate_nothing() {
    for (round, delay_ms) in [(0, 300), (1, 700)] {
        let bucket = bucket(&format!("s3-kill-{round}"));
        let engines: Vec<std::process::Child> = (0..3).map(|_| spawn_engine(&bucket, &["once", "--now", NOW], &[])).collect();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        signal_group(&engines[round], libc::SIGKILL);
        for engine in engines {
            let _ = engine.wait_with_output();
        }
        converge(&bucket);
        assert_intact(&bucket);
    }
    let bucket = bucket("s3-paused-engine");
    let reached = bucket.root.join("reached");
    let stall = format!("after-upload:2000:{}", reached.display());
    let paused = spawn_engine(&bucket, &["once", "--now", NOW, "--tier", "hourly"], &[("COMPACTOR_STALL", &stall)]);
    crate::kit::wait_until("the job to finish its upload", std::time::Duration::from_secs(60), || reached.exists());
    signal_group(&paused, libc::SIGSTOP);
    std::thread::sleep(std::time::Duration::from_millis(2 * LEASE_TTL_MS));
    let other = compactor(&["once", "--config", &bucket.config, "--now", NOW], &[]);
    assert!(other.status.success(), "{}", text(&other));
    signal_group(&paused, libc::SIGCONT);
    let _ = paused.wait_with_output();
    converge(&bucket);
    assert_intact(&bucket);
}

/// Found by the adversarial run on S3: a job paused between starting its
/// multipart upload and recording the upload's id, past its lease, while
/// recovery rolled it back, left the upload (and its parts, billed) in
/// progress for good. Woken, it now aborts its own upload.
#[test]
fn a_multipart_upload_started_by_a_job_that_lost_its_lease_is_aborted() {
    let bucket = multipart_bucket("s3-orphan-upload");
    let reached = bucket.root.join("reached");
    let stall = format!("upload-started:3000:{}", reached.display());
    let paused = spawn_engine(&bucket, &["once", "--now", NOW], &[("COMPACTOR_STALL", &stall)]);
    crate::kit::wait_until("the job to start its upload", std::time::Duration::from_secs(60), || reached.exists());
    signal_group(&paused, libc::SIGSTOP);
    std::thread::sleep(std::time::Duration::from_millis(2 * LEASE_TTL_MS));
    let recovered = compactor(&["-v", "recover", "--config", &bucket.config], &[]);
    assert!(recovered.status.success(), "{}", text(&recovered));
    signal_group(&paused, libc::SIGCONT);
    let woken = paused.wait_with_output().unwrap();
    assert!(text(&woken).contains("lease was lost"), "{}", text(&woken));
    assert_eq!(multipart_uploads_in_progress("s3-orphan-upload"), 0, "the job aborted its own upload");
    converge(&bucket);
    assert_intact(&bucket);
}

/// Whether an S3 request line writes or deletes lake data or a commit: the
/// requests a far-away bucket makes an engine wait for (lease and manifest
/// requests are not delayed, so that the engine reaches them quickly).
fn delayed_request(line: &str) -> bool {
    let data = |l: &str| l.contains(".parquet") && !l.contains("_compaction_state");
    (line.starts_with("PUT ") && (data(line) || line.contains(".outcome")))
        || (line.starts_with("DELETE ") && data(line))
        || (line.starts_with("POST ") && line.contains("?delete"))
}

/// Where in its job issue 19's scenario kills the engine: while a request
/// of this step is on its way.
#[derive(Debug, Clone, Copy)]
enum KillDuring {
    Upload,
    Commit,
    Deletes,
}

impl KillDuring {
    fn matches(self, line: &str) -> bool {
        match self {
            Self::Upload => line.starts_with("PUT ") && line.contains(".parquet"),
            Self::Commit => line.starts_with("PUT ") && line.contains(".outcome"),
            Self::Deletes => line.starts_with("DELETE ") || line.starts_with("POST "),
        }
    }
}

/// A lake of two days of three hours of 12 files each, in bucket `name`;
/// `[coordination]` leases of [`LEASE_TTL_MS`], requests timing out after 2 s
/// ([`options_for`]).
/// Returns the bucket (its config reaching moto directly, jobs in `tmp-b`)
/// and a second config reaching it through `proxy` (jobs in `tmp-a`).
fn two_day_bucket(name: &str, proxy: &str) -> (Bucket, String) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let spec = SampleSpec {
        database: "db".into(),
        measurements: vec![("cpu".into(), vec!["host".into()])],
        hours: 3,
        files_per_hour: 12,
        rows_per_file: 50,
    };
    for days_back in 0..2 {
        sample::generate(&root.join("pristine"), crate::util::at(NOW) - chrono::Duration::days(days_back), &spec).unwrap();
    }
    let options = options_for(endpoint());
    let (url, storage) = upload_s3_lake(name, &options, &root.join("pristine"));
    let with_temp = |options: &BTreeMap<String, String>, temp: &str| {
        remote_config(&url, options).compaction("temp_directory", temp).compaction("max_concurrent", 2).hourly_and_daily()
    };
    let config = with_temp(&options, "tmp-b").write(&root);
    std::fs::rename(&config, root.join("engine-b.toml")).unwrap();
    let config_a = with_temp(&options_for(proxy), "tmp-a").write(&root);
    let config_a_path = root.join("engine-a.toml");
    std::fs::rename(&config_a, &config_a_path).unwrap();
    let config = root.join("engine-b.toml").display().to_string();
    (Bucket { _dir: dir, root, storage, config }, config_a_path.display().to_string())
}

/// Pending recovery manifests in the bucket.
fn pending_manifests(storage: &Storage) -> usize {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let objects = runtime.block_on(storage.list("_compaction_state/")).unwrap();
    objects.iter().filter(|o| o.key.ends_with(".json") && !o.key.contains("/history/") && !o.key.contains("/leases/")).count()
}

/// Issue 19: engine A reaches the bucket through a proxy that delays its
/// uploads, commits and deletes by 300 ms (and completes them after A is
/// gone, as S3 does); engine B, on the same host with its own temp
/// directory, runs `recover` in a loop. A is SIGKILLed with its jobs at a
/// seeded moment while a request of the step under test is on its way. B
/// sees A dead at once (its liveness lock is free), but must not judge A's
/// job before A's requests can no longer land: no recovery may abort a job
/// whose output then lands beside its inputs, and after `recover` and
/// `once` every row is in the lake exactly once.
#[test]
fn a_dead_engines_late_requests_never_land_beside_their_inputs() {
    let runs: Vec<(KillDuring, u64)> = [(KillDuring::Upload, 6), (KillDuring::Commit, 3), (KillDuring::Deletes, 3)]
        .into_iter()
        .flat_map(|(step, runs)| (0..runs).map(move |run| (step, run)))
        .collect();
    let (mut takeovers, mut landed_after_abort) = (Vec::new(), Vec::new());
    for (index, &(step, run)) in runs.iter().enumerate() {
        let proxy = crate::kit::DelayProxy::start(endpoint(), delayed_request, std::time::Duration::from_millis(300));
        let (bucket, config_a) = two_day_bucket(&format!("s3-late-kill-{index}"), &proxy.endpoint);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let killed_at: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let (recoveries, resolved_after) = std::thread::scope(|s| {
            let recover_loop = s.spawn(|| {
                let mut logs = Vec::new();
                let mut resolved_after = None;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let recovered = compactor(&["-v", "recover", "--config", &bucket.config], &[]);
                    logs.push(text(&recovered));
                    if let Some(killed) = killed_at.get()
                        && resolved_after.is_none()
                        && pending_manifests(&bucket.storage) == 0
                    {
                        resolved_after = Some(killed.elapsed());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                (logs, resolved_after)
            });
            let engine_a = crate::kit::spawn_compactor(&config_a, &["once", "--now", NOW], &[]);
            let arrived = proxy.wait_for(|line| step.matches(line), std::time::Duration::from_secs(90));
            // Seeded moments across the 300 ms the request is on its way.
            std::thread::sleep(std::time::Duration::from_millis((run * 97 + index as u64 * 31) % 280));
            signal_group(&engine_a, libc::SIGKILL);
            let _ = killed_at.set(std::time::Instant::now());
            let _ = engine_a.wait_with_output();
            assert!(arrived.is_some(), "{step:?}: engine A never reached the step");
            crate::kit::wait_until("A's requests to land", std::time::Duration::from_secs(10), || {
                proxy.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0
            });
            // B resolves what A left once A's claims have expired.
            crate::kit::wait_until("B to resolve A's manifests", std::time::Duration::from_secs(30), || {
                pending_manifests(&bucket.storage) == 0
            });
            std::thread::sleep(std::time::Duration::from_millis(300));
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            recover_loop.join().unwrap()
        });
        if let Some(log) = recoveries.iter().find(|log| log.contains("deleting the output of a job that did not commit")) {
            eprintln!("{step:?} run {run}: an aborted job's output landed after the abort:\n{log}");
            landed_after_abort.push((step, run));
        }
        takeovers.extend(resolved_after.map(|d| d.as_millis()));
        // One engine then converges: every row exactly once.
        converge(&bucket);
        assert_intact(&bucket);
    }
    takeovers.sort();
    eprintln!("a dead engine's manifests were resolved {takeovers:?} ms after its death (sorted, {} runs)", runs.len());
    assert!(landed_after_abort.is_empty(), "late outputs beside their inputs in runs {landed_after_abort:?} of {}", runs.len());
}
