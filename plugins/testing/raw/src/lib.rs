//! A tier policy written the way a plugin author who skips the SDK would:
//! plain `wit-bindgen`, plain `println!`, the default panic hook,
//! `std::thread::sleep`, stdin. The config names a behaviour (see
//! `behave.rs`); the host's sandbox must survive every one of them, in every
//! export.

mod behave;

wit_bindgen::generate!({ path: "../../../wit", world: "tier-policy" });

use compactor::policy::types::PartitionLevel;
use exports::compactor::policy::tier::{Candidate, Guest, Partition, TierInfo};

struct Raw;

impl Guest for Raw {
    fn configure(config: String) -> Result<(), String> {
        behave::set_mode(config)
    }

    fn info() -> TierInfo {
        let mode = behave::mode();
        behave::behave(&mode, "info");
        let (name, description, output_suffix) = match mode.as_str() {
            "forge" => ("raw\n2026-01-01T00:00:00Z ERROR forged".to_owned(), "\u{1b}[2J\u{1b}[31mred\u{7}".to_owned(), "raw".to_owned()),
            "huge-info" => ("raw".to_owned(), "d".repeat(10 << 20), "raw".to_owned()),
            "long-suffix" => ("raw".to_owned(), "a 10 KB suffix".to_owned(), "s".repeat(10 * 1024)),
            _ => ("raw".to_owned(), "written without the SDK".to_owned(), "raw".to_owned()),
        };
        let effective_config = if mode == "forge" { "{\"k\u{202e}y\": \"v\u{200b}\\u001b[31m\"}".into() } else { "{}".into() };
        TierInfo { name, description, partition_level: PartitionLevel::Hour, output_suffix, min_files: 2, effective_config }
    }

    fn is_compacted_file(name: String) -> bool {
        behave::behave(&behave::mode(), "is-compacted-file");
        name.ends_with("_raw.parquet")
    }

    fn should_compact(files: Vec<String>, _partition_time_ms: i64, _now_ms: i64) -> bool {
        behave::behave(&behave::mode(), "should-compact");
        files.len() >= 2
    }

    fn select_candidates(partition: Partition, _now_ms: i64) -> Vec<Candidate> {
        let mode = behave::mode();
        behave::behave(&mode, "select-candidates");
        let files: Vec<String> = partition.files.into_iter().map(|f| f.path).collect();
        match mode.as_str() {
            "huge-key" => vec![Candidate { files: vec![format!("{}/{}", partition.path, "k".repeat(50 << 20))] }],
            "forge" => {
                vec![Candidate { files: vec![format!("{}/x.parquet\n2026-01-01T00:00:00Z ERROR forged \u{1b}[31m", partition.path)] }]
            }
            "one-file" => files.into_iter().map(|f| Candidate { files: vec![f] }).collect(),
            _ if files.len() >= 2 => vec![Candidate { files }],
            _ => Vec::new(),
        }
    }
}

export!(Raw);
