//! Object names Arc never writes (issue 21 §2): names `object_store`
//! percent-encodes, databases with `*`, `[` or non-ASCII letters, keys the
//! store cannot name, keys Arc sets aside, and objects that are not
//! Parquet inputs. Each object is compacted or left in place and reported
//! by name; the lake reaches a fixed point; every row is there once. On
//! local disk and on S3 (moto).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use compactor_job::verify;
use compactor_storage::Storage;

use crate::compaction::NOW;
use crate::kit::TestConfig;
use crate::util::{compactor, text};

/// Names compaction must take, in the two hours of each measurement.
const ODD_NAMES: &[&str] = &[
    "über.parquet",
    "hash#1.parquet",
    "x%20y.parquet",
    "a b.parquet",
    "plus+sign.parquet",
    "eq=1.parquet",
    "q?.parquet",
    "star*.parquet",
    "quote'\".parquet",
];

/// Databases whose names `object_store` would percent-encode.
const ODD_DATABASES: &[&str] = &["café", "st*r[1]"];

/// One Parquet file of 10 rows whose `value`s start at `first` (unique
/// across the lake), as bytes.
fn parquet_bytes(scratch: &Path, first: u64, hour: u32) -> Vec<u8> {
    let path = scratch.join(format!("rows-{first}.parquet"));
    let micros = 1_775_865_600_000_000u64 + u64::from(hour) * 3_600_000_000 + first;
    verify::connection()
        .unwrap()
        .execute_batch(&format!(
            "COPY (SELECT make_timestamp(({micros} + r)::BIGINT)::TIMESTAMPTZ AS time, 'h' || (r % 3) AS host, ({first} + r)::BIGINT AS value FROM range(10) t(r)) TO '{}' (FORMAT PARQUET)",
            path.display()
        ))
        .unwrap();
    std::fs::read(&path).unwrap()
}

/// The lake's objects: key → bytes, and the rows' `value`s that compaction
/// must keep (exactly once), and the keys it must leave in place.
struct OddLake {
    objects: BTreeMap<String, Vec<u8>>,
    values: u64,
    left_in_place: Vec<String>,
}

/// Every database × measurement `cpu` × hours 10 and 11 of 2026-04-11 holds
/// [`ODD_NAMES`]; `db/cpu/2026/04/11/10` also holds what must be set aside.
fn odd_lake(scratch: &Path, set_aside: &[(&str, Vec<u8>)]) -> OddLake {
    let mut objects = BTreeMap::new();
    let mut first = 0;
    for database in ["db"].iter().chain(ODD_DATABASES) {
        for hour in [10, 11] {
            for name in ODD_NAMES {
                objects.insert(format!("{database}/cpu/2026/04/11/{hour}/{name}"), parquet_bytes(scratch, first, hour));
                first += 10;
            }
        }
    }
    let mut left_in_place = Vec::new();
    for (name, bytes) in set_aside {
        let key = format!("db/cpu/2026/04/11/10/{name}");
        objects.insert(key.clone(), bytes.clone());
        left_in_place.push(key);
    }
    OddLake { objects, values: first, left_in_place }
}

/// What local disk can hold but compaction must leave alone (the key Arc
/// sets aside, a name too long, files that are not Parquet inputs).
fn local_set_aside(scratch: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let long: &'static str = Box::leak(format!("{}.parquet", "l".repeat(245)).into_boxed_str());
    vec![
        ("back\\slash.parquet", parquet_bytes(scratch, 1_000_000, 10)),
        (long, parquet_bytes(scratch, 1_000_100, 10)),
        ("bell\u{7}.parquet", parquet_bytes(scratch, 1_000_200, 10)),
        ("_SUCCESS", Vec::new()),
        ("empty.parquet", Vec::new()),
    ]
}

/// Checks the rows of every `.parquet` object in `objects` except
/// `left_in_place`: the values 0..`values`, each exactly once.
fn assert_every_row_once(scratch: &Path, objects: &BTreeMap<String, Vec<u8>>, lake: &OddLake, context: &str) {
    // Under safe names: DuckDB reads `*`, `?` and `[` in a path as a glob.
    let flat = scratch.join(format!("flat-{}", objects.len()));
    let _ = std::fs::remove_dir_all(&flat);
    std::fs::create_dir_all(&flat).unwrap();
    let mut n = 0;
    for (key, bytes) in objects {
        // (A name that is not UTF-8 is in the snapshot lossily: it is set aside.)
        if key.ends_with(".parquet") && !lake.left_in_place.contains(key) && !key.contains('\u{FFFD}') {
            std::fs::write(flat.join(format!("{n:05}.parquet")), bytes).unwrap();
            n += 1;
        }
    }
    let (rows, distinct, low, high): (i64, i64, i64, i64) = verify::connection()
        .unwrap()
        .query_row(
            &format!("SELECT count(*), count(DISTINCT value), min(value), max(value) FROM read_parquet('{}/*.parquet')", flat.display()),
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .unwrap();
    let values = lake.values as i64;
    assert_eq!((rows, distinct, low, high), (values, values, 0, values - 1), "every row exactly once: {context}");
}

/// Runs `once` until a cycle changes nothing (at most `limit` cycles);
/// returns every cycle's output.
fn converge(config: &str, snapshot: impl Fn() -> BTreeMap<String, Vec<u8>>, limit: usize) -> Vec<String> {
    let mut outputs = Vec::new();
    let mut before = snapshot();
    for _ in 0..limit {
        let once = compactor(&["once", "--config", config, "--now", NOW], &[]);
        outputs.push(text(&once));
        assert!(once.status.success(), "{}", outputs.join("\n---\n"));
        let after = snapshot();
        if after == before {
            return outputs;
        }
        before = after;
    }
    panic!("no fixed point after {limit} cycles:\n{}", outputs.join("\n---\n"));
}

/// The cycle's report names each object left in place exactly once.
fn assert_reported_once(output: &str, keys: &[String]) {
    for key in keys {
        let shown = format!("left in place: {key:?}");
        assert_eq!(output.matches(&shown).count(), 1, "{shown} once in:\n{output}");
    }
}

fn local_snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut objects = BTreeMap::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let relative = path.strip_prefix(root).unwrap();
            if relative.components().next().is_some_and(|c| c.as_os_str() == "_compaction_state") {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                dirs.push(path);
            } else if !entry.file_name().to_string_lossy().starts_with('.') {
                let key = relative.to_str().map(str::to_owned).unwrap_or_else(|| relative.to_string_lossy().into_owned());
                objects.insert(key, std::fs::read(&path).unwrap());
            }
        }
    }
    objects
}

#[test]
fn odd_object_names_on_local_disk_are_compacted_or_left_in_place_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (scratch, lake_dir) = (dir.path().join("scratch"), dir.path().join("lake"));
    std::fs::create_dir_all(&scratch).unwrap();
    let lake = odd_lake(&scratch, &local_set_aside(&scratch));
    for (key, bytes) in &lake.objects {
        let path = lake_dir.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    // A name that is not UTF-8: object_store cannot name it at all.
    use std::os::unix::ffi::OsStrExt;
    let latin1 = lake_dir.join("db/cpu/2026/04/11/10").join(std::ffi::OsStr::from_bytes(b"caf\xe9.parquet"));
    std::fs::write(&latin1, parquet_bytes(&scratch, 2_000_000, 10)).unwrap();
    let config = TestConfig::new("lake").hourly_and_daily().compaction("temp_directory", "tmp").write(dir.path());

    let plan = compactor(&["plan", "--config", &config, "--now", NOW], &[]);
    assert!(plan.status.success(), "{}", text(&plan));
    let expected = lake.left_in_place.clone();
    assert_reported_once(&text(&plan), &expected);
    assert!(text(&plan).contains("caf%E9.parquet"), "the non-UTF-8 name is shown encoded: {}", text(&plan));
    assert!(text(&plan).contains("bell\\u{7}.parquet"), "{}", text(&plan));

    let cycles = converge(&config, || local_snapshot(&lake_dir), 4);
    assert!(cycles.len() <= 3, "hourly and daily converge in one cycle, then one that changes nothing: {}", cycles.len());
    for cycle in &cycles {
        assert_reported_once(cycle, &expected);
    }
    let last = cycles.last().unwrap();
    assert!(last.contains(": 0 jobs,"), "the cycle after convergence runs nothing:\n{last}");
    let snapshot = local_snapshot(&lake_dir);
    for key in &lake.left_in_place {
        assert_eq!(snapshot.get(key), lake.objects.get(key), "{key} is left as it was");
    }
    assert!(latin1.exists(), "the non-UTF-8 file is left in place");
    let daily: Vec<&String> = snapshot.keys().filter(|k| k.ends_with("_daily.parquet")).collect();
    assert_eq!(daily.len(), 3, "one daily output per database, odd names included: {daily:#?}");
    assert_every_row_once(&scratch, &snapshot, &lake, &last.to_string());
}

/// `key` as a URL path, every byte but `/`, `.`, `_`, `-` and alphanumerics
/// percent-encoded.
fn url_path(key: &str) -> String {
    key.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"/._-".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// PUTs `bytes` at `key` of `bucket` with a raw request: keys with `//` or a
/// `.` segment cannot be written through `object_store`.
fn raw_put(endpoint: &str, bucket: &str, key: &str, bytes: &[u8]) {
    let address = endpoint.trim_start_matches("http://");
    let path = url_path(key);
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "PUT /{bucket}/{path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", bytes.len())
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 200"), "cannot put {key}: {response}");
}

#[test]
fn odd_object_names_on_s3_are_compacted_or_left_in_place_and_reported() {
    let endpoint = crate::kit::shared_s3_endpoint();
    let bucket = "odd-names";
    crate::s3::create_bucket_at(endpoint, bucket);
    odd_object_names_on_a_remote_store(&format!("s3://{bucket}/lake"), &crate::s3::options_for(endpoint), &[], |key, bytes| {
        raw_put(endpoint, bucket, &format!("lake/{key}"), bytes)
    });
}

#[test]
fn odd_object_names_on_azure_are_compacted_or_left_in_place_and_reported() {
    let container = "odd-names";
    crate::azure::create_container(container);
    // Azurite answers every listing of a blob named with a control character
    // with 500 (Azure itself sends it percent-encoded under
    // `Encoded="true"`, which the raw lister decodes: a unit test), and
    // stores `\` as `/`, an ordinary key.
    let azurite_cannot_hold = ["ctrl\u{1}.parquet", "back\\slash.parquet"];
    odd_object_names_on_a_remote_store(&format!("az://{container}/lake"), &crate::azure::options(), &azurite_cannot_hold, |key, bytes| {
        let status =
            crate::azure::azure_request("PUT", &format!("{container}/lake/{}", url_path(key)), &[("x-ms-blob-type", "BlockBlob")], bytes);
        assert!(status.starts_with("HTTP/1.1 201"), "cannot put {key}: {status}");
    });
}

/// The odd lake written with `put` (which can write keys object_store
/// cannot) at `url`, but for the names in `unsupported`, compacted until
/// nothing changes.
fn odd_object_names_on_a_remote_store(url: &str, options: &BTreeMap<String, String>, unsupported: &[&str], put: impl Fn(&str, &[u8])) {
    let dir = tempfile::tempdir().unwrap();
    let scratch: PathBuf = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let unnamable: Vec<(&str, Vec<u8>)> = vec![
        ("empty//segment.parquet", parquet_bytes(&scratch, 1_000_000, 10)),
        ("dot/./segment.parquet", parquet_bytes(&scratch, 1_000_100, 10)),
        ("trailing.parquet/", parquet_bytes(&scratch, 1_000_200, 10)),
        ("ctrl\u{1}.parquet", parquet_bytes(&scratch, 1_000_300, 10)),
        ("back\\slash.parquet", parquet_bytes(&scratch, 1_000_400, 10)),
        ("_SUCCESS", Vec::new()),
    ];
    let unnamable: Vec<(&str, Vec<u8>)> = unnamable.into_iter().filter(|(name, _)| !unsupported.contains(name)).collect();
    let lake = odd_lake(&scratch, &unnamable);
    for (key, bytes) in &lake.objects {
        put(key, bytes);
    }
    let config =
        TestConfig::new(url.to_owned()).storage_options(options).hourly_and_daily().compaction("temp_directory", "tmp").write(dir.path());
    let storage = Storage::open(url, options, dir.path()).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let snapshot = || {
        let listed = runtime.block_on(storage.list_objects("")).unwrap();
        let mut objects: BTreeMap<String, Vec<u8>> = listed
            .files
            .into_iter()
            .filter(|f| !f.key.starts_with("_compaction_state/"))
            .map(|f| {
                let bytes = runtime.block_on(storage.read(&f.key)).unwrap().to_vec();
                (f.key, bytes)
            })
            .collect();
        // What cannot be read through object_store is there by name.
        objects.extend(listed.set_aside.into_iter().map(|s| (s.key, Vec::new())));
        objects
    };

    let plan = compactor(&["plan", "--config", &config, "--now", NOW], &[]);
    assert!(plan.status.success(), "{}", text(&plan));
    let expected = lake.left_in_place.clone();
    assert_reported_once(&text(&plan), &expected);

    let cycles = converge(&config, snapshot, 4);
    for cycle in &cycles {
        assert_reported_once(cycle, &expected);
    }
    let last = cycles.last().unwrap();
    assert!(last.contains(": 0 jobs,"), "the cycle after convergence runs nothing:\n{last}");
    let after = snapshot();
    for key in &lake.left_in_place {
        assert!(after.contains_key(key), "{key:?} is left in place: {:#?}", after.keys());
    }
    let daily: Vec<&String> = after.keys().filter(|k| k.ends_with("_daily.parquet")).collect();
    assert_eq!(daily.len(), 3, "one daily output per database, odd names included: {daily:#?}");
    assert_every_row_once(&scratch, &after, &lake, last);
}
