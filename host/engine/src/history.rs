//! Job history that survives restarts: one small object per finished job
//! under `_compaction_state/history/`, named so that listing order is time
//! order, and pruned to `[history] max_records` after each cycle.
//!
//! The objects end in `.jsonl`, not `.json`: Arc lists `.json` keys under
//! `_compaction_state/` as recovery manifests, and so does our manifest
//! store; a history entry must never be mistaken for one. The store is the
//! lake's own, so every engine sharing it sees one history, and a machine
//! replaced keeps it.

use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;

use crate::report::JobRecord;
use compactor_storage::{COMPACTION_STATE_ROOT, Storage, StorageError};

/// Where history entries live.
pub(crate) fn history_prefix() -> String {
    format!("{COMPACTION_STATE_ROOT}/history/")
}

/// Reads in flight at once when loading entries.
const CONCURRENT_READS: usize = 16;
/// An entry is a few hundred bytes; anything much larger is not one of ours
/// and is not read.
const MAX_ENTRY_BYTES: u64 = 64 * 1024;

/// The lake's job history.
#[derive(Clone)]
pub struct History {
    storage: Storage,
    engine: String,
    max_records: usize,
    written: std::sync::Arc<AtomicU64>,
    /// Whether each entry seen parses as a record (entries never change:
    /// each is read once to be counted).
    parses: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, bool>>>,
}

/// What [`History::recent`] found.
#[derive(Debug, Clone)]
pub struct Recent {
    /// The records, oldest first.
    pub records: Vec<JobRecord>,
    /// Entries met on the way that could not be read (they do not count
    /// towards the limit).
    pub unreadable: Vec<UnreadableEntry>,
    /// Entries the history holds in all that are job records (an object
    /// merely named like one does not count).
    pub kept: usize,
}

/// An entry that could not be read (its key and why): reported, never fatal.
#[derive(Debug, Clone)]
pub struct UnreadableEntry {
    /// The object's key.
    pub key: String,
    /// What went wrong.
    pub error: String,
}

impl History {
    /// The history in `storage`, written by engine `engine`, kept to
    /// `max_records` entries (0: nothing is recorded).
    pub fn new(storage: Storage, engine: &str, max_records: usize) -> Self {
        Self { storage, engine: engine.to_owned(), max_records, written: Default::default(), parses: Default::default() }
    }

    /// Records one finished job. The key starts with the finish time in
    /// milliseconds (13 digits until the year 2286), then the engine and a
    /// sequence number, so that two engines never collide.
    pub async fn append(&self, record: &JobRecord) -> Result<(), StorageError> {
        if self.max_records == 0 {
            return Ok(());
        }
        let sequence = self.written.fetch_add(1, Ordering::Relaxed);
        let key = format!("{}{:013}-{}-{sequence:06}.jsonl", history_prefix(), record.finished_at.timestamp_millis().max(0), self.engine);
        // A record is strings and numbers: encoding cannot fail, but a bug
        // here must not stop the cycle.
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(%key, error = %e, "cannot encode a history entry; it is not recorded");
                return Ok(());
            }
        };
        line.push(b'\n');
        self.storage.write(&key, line).await
    }

    /// Every entry, oldest first: objects directly under the prefix named
    /// as [`History::append`] names them (anything else there is ignored).
    async fn entries(&self) -> Result<Vec<compactor_model::FileMeta>, StorageError> {
        let prefix = history_prefix();
        let mut entries: Vec<compactor_model::FileMeta> =
            self.storage.list(&prefix).await?.into_iter().filter(|f| f.key.strip_prefix(&prefix).is_some_and(is_entry_name)).collect();
        entries.sort_by(|a, b| entry_name(&a.key).cmp(entry_name(&b.key)));
        Ok(entries)
    }

    /// The `limit` most recent readable entries, from one listing.
    pub async fn recent(&self, limit: usize) -> Result<Recent, StorageError> {
        let entries = self.entries().await?;
        let kept = self.count_records(&entries).await;
        let mut records = Vec::new();
        let mut unreadable = Vec::new();
        let mut newest_first = entries.into_iter().rev();
        while records.len() < limit {
            let chunk: Vec<compactor_model::FileMeta> = newest_first.by_ref().take(limit - records.len()).collect();
            if chunk.is_empty() {
                break;
            }
            // Owned keys and store: a future borrowing them is not `Send` for
            // every lifetime, which an axum handler needs.
            let reads = futures::stream::iter(chunk.into_iter().map(|entry| {
                let storage = self.storage.clone();
                async move {
                    let outcome = if entry.size > MAX_ENTRY_BYTES {
                        Err(format!("{} bytes: too large for a history entry", entry.size))
                    } else {
                        match storage.read(&entry.key).await {
                            Ok(bytes) => parse_entry(&bytes),
                            Err(e) => Err(e.to_string()),
                        }
                    };
                    outcome.map_err(|error| UnreadableEntry { key: entry.key, error })
                }
            }))
            .buffered(CONCURRENT_READS)
            .collect::<Vec<_>>()
            .await;
            for read in reads {
                match read {
                    Ok(record) => records.push(record),
                    Err(entry) => unreadable.push(entry),
                }
            }
        }
        records.reverse();
        Ok(Recent { records, unreadable, kept })
    }

    /// How many of `entries` parse as job records; each entry is read the
    /// first time it is met only.
    async fn count_records(&self, entries: &[compactor_model::FileMeta]) -> usize {
        let unseen: Vec<compactor_model::FileMeta> = {
            let parses = self.parses.lock().unwrap_or_else(|e| e.into_inner());
            entries.iter().filter(|e| !parses.contains_key(&e.key)).cloned().collect()
        };
        let verdicts = futures::stream::iter(unseen.into_iter().map(|entry| {
            let storage = self.storage.clone();
            async move {
                // A read that fails now is not remembered: it is tried again.
                let verdict = if entry.size > MAX_ENTRY_BYTES {
                    Some(false)
                } else {
                    storage.read(&entry.key).await.ok().map(|bytes| parse_entry(&bytes).is_ok())
                };
                (entry.key, verdict)
            }
        }))
        .buffered(CONCURRENT_READS)
        .collect::<Vec<_>>()
        .await;
        let mut parses = self.parses.lock().unwrap_or_else(|e| e.into_inner());
        for (key, verdict) in verdicts {
            if let Some(verdict) = verdict {
                parses.insert(key, verdict);
            }
        }
        let listed: std::collections::HashSet<&str> = entries.iter().map(|e| e.key.as_str()).collect();
        parses.retain(|key, _| listed.contains(key.as_str()));
        entries.iter().filter(|e| parses.get(&e.key).copied().unwrap_or(false)).count()
    }

    /// Deletes the oldest entries beyond `max_records`; returns how many.
    /// Engines sharing the store may prune at once: an entry already gone is
    /// not an error.
    pub(crate) async fn prune(&self) -> Result<usize, StorageError> {
        if self.max_records == 0 {
            return Ok(0);
        }
        let entries = self.entries().await?;
        let excess = entries.len().saturating_sub(self.max_records);
        for entry in &entries[..excess] {
            self.storage.delete(&entry.key).await?;
        }
        Ok(excess)
    }
}

/// `{13 digits}-{engine}-{sequence}.jsonl`, with no `/`.
fn is_entry_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    name.len() > 19 && !name.contains('/') && name.ends_with(".jsonl") && bytes[..13].iter().all(u8::is_ascii_digit) && bytes[13] == b'-'
}

/// A record, if the bytes are one: JSON with a tier, a partition and a
/// finish time (a bare `{}` would otherwise read as an empty job).
fn parse_entry(bytes: &[u8]) -> Result<JobRecord, String> {
    let record: JobRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if record.batch.tier.is_empty() || record.batch.partition_path.is_empty() || record.finished_at.timestamp() <= 0 {
        return Err("not a job record (no tier, partition or finish time)".into());
    }
    Ok(record)
}

/// The part of a key that orders entries: its name after the prefix.
fn entry_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn record(minute: u32, partition: &str) -> JobRecord {
        JobRecord {
            batch: compactor_planning::BatchRef { tier: "hourly".into(), partition_path: partition.into(), ..Default::default() },
            finished_at: Utc.with_ymd_and_hms(2026, 4, 11, 10, minute, 0).unwrap(),
            success: true,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn keeps_the_newest_entries_in_time_order_across_engines() {
        let storage = Storage::in_memory();
        let a = History::new(storage.clone(), "engine-a", 3);
        let b = History::new(storage.clone(), "engine-b", 3);
        a.append(&record(5, "p5")).await.unwrap();
        b.append(&record(1, "p1")).await.unwrap();
        a.append(&record(3, "p3")).await.unwrap();
        b.append(&record(9, "p9")).await.unwrap();
        let Recent { records: all, unreadable, .. } = a.recent(10).await.unwrap();
        assert!(unreadable.is_empty());
        let order: Vec<&str> = all.iter().map(|r| r.batch.partition_path.as_str()).collect();
        assert_eq!(order, ["p1", "p3", "p5", "p9"]);
        assert_eq!(a.prune().await.unwrap(), 1);
        let kept = b.recent(2).await.unwrap().records;
        let order: Vec<&str> = kept.iter().map(|r| r.batch.partition_path.as_str()).collect();
        assert_eq!(order, ["p5", "p9"]);
    }

    #[tokio::test]
    async fn entries_are_not_recovery_manifests() {
        let storage = Storage::in_memory();
        History::new(storage.clone(), "e", 10).append(&record(1, "p")).await.unwrap();
        let listed = storage.list(COMPACTION_STATE_ROOT).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(!listed[0].key.ends_with(".json"), "{}", listed[0].key);
        let manifests = compactor_job::ManifestStore::new(storage).list().await.unwrap();
        assert!(manifests.is_empty(), "{manifests:?}");
    }

    #[tokio::test]
    async fn damaged_or_foreign_entries_are_reported_or_ignored_never_counted() {
        let storage = Storage::in_memory();
        let history = History::new(storage.clone(), "e", 10);
        history.append(&record(1, "p1")).await.unwrap();
        history.append(&record(2, "p2")).await.unwrap();
        let prefix = history_prefix();
        storage.write(&format!("{prefix}9999999999998-x-000000.jsonl"), "{cut").await.unwrap();
        storage.write(&format!("{prefix}9999999999999-x-000000.jsonl"), "{}").await.unwrap();
        storage.write(&format!("{prefix}sub.jsonl/inner.jsonl"), "{}").await.unwrap();
        storage.write(&format!("{prefix}notes.jsonl"), "{}").await.unwrap();
        // The two junk entries sort newest, yet two records are still found.
        let Recent { records, unreadable, kept } = history.recent(2).await.unwrap();
        let order: Vec<&str> = records.iter().map(|r| r.batch.partition_path.as_str()).collect();
        assert_eq!(order, ["p1", "p2"]);
        assert_eq!(unreadable.len(), 2, "{unreadable:?}");
        // Issue 21 §4l: the two entry-shaped objects that are no records
        // counted too.
        assert_eq!(kept, 2, "only records count");
        history.append(&record(3, "p3")).await.unwrap();
        assert_eq!(history.recent(1).await.unwrap().kept, 3, "a new entry counts once read");
    }
}
