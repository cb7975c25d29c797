//! The engine and its jobs on Azure Blob Storage (Azurite, on 127.0.0.1):
//! a cycle over names `object_store` would re-encode, a crash at each step
//! boundary followed by recovery, and two engines racing on one container.
//! Rows are compared with the original, row by row, after downloading the
//! container.
//!
//! The server is `$COMPACTOR_TEST_AZURE_ENDPOINT` (`.ci/run` starts one), or
//! an `azurite-blob` this test binary starts itself.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use base64::Engine;

use crate::s3::{Bucket, NOW, assert_intact, assert_intact_and_compacted, logs, recover_then_compact, remote_lake, two_engines_at_once};
use crate::util::{compactor, text};

/// Azurite's one account and its well-known key.
const ACCOUNT: &str = "devstoreaccount1";
const ACCOUNT_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn endpoint() -> &'static str {
    crate::kit::shared_azure_endpoint()
}

fn options() -> BTreeMap<String, String> {
    [
        ("azure_storage_account_name", ACCOUNT),
        ("azure_storage_account_key", ACCOUNT_KEY),
        ("azure_storage_endpoint", endpoint()),
        // A short request timeout, so that a dead job's partition is judged
        // soon after its lease (the late-write window).
        ("timeout", "2s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Creates container `name` (object_store has no call for it): a `PUT`
/// signed with the account's shared key.
fn create_container(name: &str) {
    // `http://HOST:PORT/ACCOUNT`
    let (address, account_path) = endpoint().trim_start_matches("http://").split_once('/').unwrap();
    let path = format!("/{account_path}/{name}");
    let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let version = "2021-08-06";
    // Shared Key: the verb, eleven empty standard headers, the x-ms- headers,
    // and the resource with its query parameters.
    let to_sign = format!("PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}{path}\nrestype:container");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &base64::engine::general_purpose::STANDARD.decode(ACCOUNT_KEY).unwrap());
    let signature = base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "PUT {path}?restype=container HTTP/1.1\r\nHost: {address}\r\nx-ms-date: {date}\r\nx-ms-version: {version}\r\n\
         Authorization: SharedKey {ACCOUNT}:{signature}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 201"), "cannot create container {name}: {response}");
}

/// A small lake in a new container; the first files of each hour named as
/// other tools name them (`object_store` would percent-encode these).
fn container(name: &str) -> Bucket {
    create_container(name);
    let odd = ["über", "hash#1", "x%20y"];
    remote_lake(&format!("az://{name}/lake"), &options(), |key| {
        let (dir, file) = key.rsplit_once('/').unwrap_or(("", key));
        // The sample writes a file every five minutes, from minute 4.
        let minute = file.split('_').nth(2).and_then(|hhmmss| hhmmss.get(2..4)).and_then(|m| m.parse::<usize>().ok());
        match minute.map(|m| m / 5) {
            Some(n) if n < odd.len() => format!("{dir}/{}-{file}", odd[n]),
            _ => key.to_owned(),
        }
    })
}

#[test]
fn a_cycle_on_azure_compacts_every_row_once() {
    let bucket = container("azure-cycle");
    let plan = compactor(&["plan", "--config", &bucket.config, "--now", NOW, "--format", "json"], &[]);
    assert!(plan.status.success(), "{}", text(&plan));
    let batches: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(batches.as_array().unwrap().len(), 3, "2 hourly + 1 daily (before hourly ran): {batches}");
    let hourly = compactor(&["once", "--config", &bucket.config, "--now", NOW, "--tier", "hourly", "--format", "json"], &[]);
    assert!(hourly.status.success(), "{}", text(&hourly));
    let report: serde_json::Value = serde_json::from_slice(&hourly.stdout).unwrap();
    let merged: Vec<u64> = report["jobs"].as_array().unwrap().iter().map(|j| j["files_compacted"].as_u64().unwrap()).collect();
    assert_eq!(merged, [12, 12], "every input of each hour, the odd names included: {report}");
    assert_eq!(assert_intact(&bucket).len(), 2, "one output per hour");
    let daily = compactor(&["-v", "once", "--config", &bucket.config, "--now", NOW], &[]);
    assert!(daily.status.success(), "{}", text(&daily));
    let all_output = format!("{}{}{}", text(&plan), text(&hourly), text(&daily));
    assert!(!all_output.contains(ACCOUNT_KEY), "the account key is in no log");
    assert_intact_and_compacted(&bucket);
}

#[test]
fn a_job_killed_on_azure_loses_and_duplicates_nothing() {
    for (i, step) in ["after-download", "after-manifest", "after-upload", "mid-delete", "after-delete"].iter().enumerate() {
        let bucket = container(&format!("azure-crash-{i}"));
        let _crashed = compactor(&["once", "--config", &bucket.config, "--now", NOW], &[("COMPACTOR_FAULT", step)]);
        recover_then_compact(&bucket, step);
    }
}

#[test]
fn two_engines_racing_on_one_container_compact_every_row_once() {
    let bucket = container("azure-race");
    let _ = two_engines_at_once(&bucket);
    let keys = assert_intact(&bucket);
    assert_eq!(keys.len(), 2, "one output per hour, whoever made it: {keys:#?}\n{}", logs(&bucket));
}
