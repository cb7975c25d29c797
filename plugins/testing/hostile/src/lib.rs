//! A deliberately hostile tier policy for the host's sandbox tests. Its
//! `mode` config picks the misbehaviour; `well-behaved` acts like a tiny
//! policy that compacts every partition with two or more files; `self-select`
//! never converges (it selects its own output alone); `explain-panic`,
//! `explain-loop` and `explain-flood` select like `well-behaved` but
//! misbehave when asked why.

use compactor_plugin_sdk::{Candidate, Partition, TierInfo, TierPolicy, Timestamp, export_tier_policy};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    mode: String,
}

pub struct Hostile {
    mode: String,
}

impl TierPolicy for Hostile {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.mode == "configure-error" {
            return Err("mode: configure-error refuses every config".into());
        }
        Ok(Self { mode: config.mode })
    }

    fn info(&self) -> TierInfo {
        TierInfo::hourly("hostile", "misbehaves on purpose")
    }

    fn is_compacted_file(&self, name: &str) -> bool {
        if self.mode == "loop" {
            spin();
        }
        name.ends_with("_hostile.parquet")
    }

    fn should_compact(&self, files: &[&str], _: Timestamp, _: Timestamp) -> bool {
        files.len() >= 2
    }

    fn select_candidates(&self, partition: &Partition, _now: Timestamp) -> Vec<Candidate> {
        let whole = Candidate::whole(partition);
        match self.mode.as_str() {
            "loop" => spin(),
            "memory-bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("hostile policy gave up on {}", partition.path),
            "foreign-file" => vec![Candidate { files: vec![format!("{}/not-listed.parquet", partition.path)] }],
            "duplicate" => vec![whole.clone(), whole],
            "traversal" => vec![Candidate { files: vec![format!("{}/../../../etc/passwd", partition.path)] }],
            // Never converges: selects whatever is there, its own output alone included.
            "self-select" if !partition.files.is_empty() => vec![whole],
            _ if partition.files.len() >= 2 => vec![whole],
            _ => Vec::new(),
        }
    }

    fn explain(&self, partition: &Partition, _now: Timestamp) -> String {
        match self.mode.as_str() {
            // Selects like `well-behaved`, but cannot say why.
            "explain-panic" => panic!("hostile policy will not explain {}", partition.path),
            "explain-loop" => spin(),
            "explain-flood" => "\u{1b}[31mwhy\n".repeat(100_000),
            _ => String::new(),
        }
    }
}

fn spin() -> ! {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

export_tier_policy!(Hostile);
