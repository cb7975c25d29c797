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

pub(crate) fn options() -> BTreeMap<String, String> {
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

/// Sends `method` to `path` (already percent-encoded, after the account)
/// of the Azurite account, signed with its shared key, over a plain socket
/// so that the path reaches the server as written (`//`, `/./`: an HTTP
/// client would normalise it, and the signature with it); the status line
/// of the answer.
pub(crate) fn azure_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> String {
    // `http://HOST:PORT/ACCOUNT`
    let (address, account_path) = endpoint().trim_start_matches("http://").split_once('/').unwrap();
    let target = format!("/{account_path}/{path}");
    let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let mut ms_headers: Vec<(String, String)> = headers.iter().map(|(n, v)| (n.to_lowercase(), (*v).to_owned())).collect();
    ms_headers.extend([("x-ms-date".to_owned(), date), ("x-ms-version".to_owned(), "2021-08-06".to_owned())]);
    ms_headers.sort();
    // Shared Key: the verb, the standard headers (only Content-Length is
    // set), the x-ms- headers, and the resource with its query parameters.
    let (resource, query) = target.split_once('?').unwrap_or((&target, ""));
    let length = if body.is_empty() { String::new() } else { body.len().to_string() };
    let mut to_sign = format!("{method}\n\n\n{length}\n\n\n\n\n\n\n\n\n");
    for (name, value) in &ms_headers {
        to_sign.push_str(&format!("{name}:{value}\n"));
    }
    to_sign.push_str(&format!("/{ACCOUNT}{resource}"));
    let mut parameters: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    parameters.sort();
    for parameter in parameters {
        to_sign.push_str(&format!("\n{}", parameter.replacen('=', ":", 1)));
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &base64::engine::general_purpose::STANDARD.decode(ACCOUNT_KEY).unwrap());
    let signature = base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "{method} {target} HTTP/1.1\r\nHost: {address}\r\nAuthorization: SharedKey {ACCOUNT}:{signature}\r\n").unwrap();
    for (name, value) in &ms_headers {
        write!(stream, "{name}: {value}\r\n").unwrap();
    }
    write!(stream, "Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.lines().next().unwrap_or_default().to_owned()
}

/// Creates container `name` (object_store has no call for it).
pub(crate) fn create_container(name: &str) {
    let status = azure_request("PUT", &format!("{name}?restype=container"), &[], &[]);
    assert!(status.starts_with("HTTP/1.1 201"), "cannot create container {name}: {status}");
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
