//! Partition locks, so that no two compactions of one partition overlap:
//! an in-process set (Arc's lock manager) and, across processes sharing a
//! store, a lock object created only if absent.
//!
//! A lock object is `_compaction_state/locks/{partition key, "/"→"_"}.lock`
//! holding its owner and expiry. A process that dies holding one blocks that
//! partition until the lock expires (default one hour), except that a lock
//! whose owner ran on this host under a process id that no longer exists is
//! taken over at once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{PutMode, PutOptions};
use serde::{Deserialize, Serialize};

use crate::{COMPACTION_STATE_ROOT, Storage};

/// How long a lock object holds without being released.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(3600);

/// The in-process lock set: `acquire` inserts if absent.
#[derive(Debug, Default)]
pub struct LockSet {
    held: Mutex<HashSet<String>>,
}

impl LockSet {
    /// True and held when `key` was free.
    pub fn acquire(&self, key: &str) -> bool {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_owned())
    }

    /// Releases `key`; releasing a free key is a no-op.
    pub fn release(&self, key: &str) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    /// Whether `key` is held.
    pub fn is_locked(&self, key: &str) -> bool {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).contains(key)
    }
}

/// What a lock object records.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockRecord {
    owner: String,
    host: String,
    pid: u32,
    acquired_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

/// Partition locks visible to every process sharing the store.
#[derive(Debug, Clone)]
pub struct PartitionLocks {
    local: Arc<LockSet>,
    storage: Storage,
    owner: String,
    host: String,
    ttl: Duration,
}

/// A held partition lock; release it with [`PartitionLocks::release`].
#[derive(Debug)]
pub struct PartitionLock {
    key: String,
}

impl PartitionLocks {
    /// Locks on `storage`, held for at most `ttl` when not released.
    pub fn new(storage: Storage, ttl: Duration) -> Self {
        let host = hostname();
        let owner = format!("{host}:{}:{}", std::process::id(), Utc::now().timestamp_nanos_opt().unwrap_or(0));
        Self { local: Arc::default(), storage, owner, host, ttl }
    }

    fn object_key(key: &str) -> String {
        format!("{COMPACTION_STATE_ROOT}/locks/{}.lock", key.replace('/', "_"))
    }

    /// Takes the lock of `key` (a partition path), or `None` when another
    /// compaction holds it. Errors reaching the store are returned.
    pub async fn try_acquire(&self, key: &str) -> Result<Option<PartitionLock>, object_store::Error> {
        if !self.local.acquire(key) {
            return Ok(None);
        }
        match self.create(key).await {
            Ok(true) => Ok(Some(PartitionLock { key: key.to_owned() })),
            Ok(false) => {
                self.local.release(key);
                Ok(None)
            }
            Err(e) => {
                self.local.release(key);
                Err(e)
            }
        }
    }

    async fn create(&self, key: &str) -> Result<bool, object_store::Error> {
        let location = Path::from(Self::object_key(key));
        for _ in 0..2 {
            let now = Utc::now();
            let record = LockRecord {
                owner: self.owner.clone(),
                host: self.host.clone(),
                pid: std::process::id(),
                acquired_at: now,
                expires_at: now + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::hours(1)),
            };
            let body = serde_json::to_vec(&record).unwrap_or_default();
            match self.storage.object_store().put_opts(&location, body.into(), PutOptions::from(PutMode::Create)).await {
                Ok(_) => return Ok(true),
                Err(object_store::Error::AlreadyExists { .. }) => {
                    if !self.is_abandoned(&location).await? {
                        return Ok(false);
                    }
                    tracing::warn!(partition = key, "taking over an abandoned partition lock");
                    match self.storage.object_store().delete(&location).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Expired, unreadable, or owned by a dead process on this host.
    async fn is_abandoned(&self, location: &Path) -> Result<bool, object_store::Error> {
        let bytes = match self.storage.object_store().get(location).await {
            Ok(result) => result.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(true),
            Err(e) => return Err(e),
        };
        let Ok(record) = serde_json::from_slice::<LockRecord>(&bytes) else { return Ok(true) };
        let dead_here = record.host == self.host && !process_alive(record.pid);
        Ok(record.expires_at <= Utc::now() || dead_here)
    }

    /// Deletes every abandoned lock object (expired, unreadable, or left by a
    /// dead process on this host); returns how many.
    pub async fn remove_abandoned(&self) -> Result<usize, object_store::Error> {
        let prefix = Path::from(format!("{COMPACTION_STATE_ROOT}/locks"));
        let objects: Vec<_> = futures::TryStreamExt::try_collect(self.storage.object_store().list(Some(&prefix))).await?;
        let mut removed = 0;
        for object in objects {
            if self.is_abandoned(&object.location).await? {
                match self.storage.object_store().delete(&object.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => removed += 1,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    }

    /// Checks that the store refuses to overwrite on a create-only write,
    /// which partition locks (and create-only uploads) rely on. Writes and
    /// removes a probe object under `_compaction_state/`.
    pub async fn check_conditional_writes(&self) -> Result<bool, object_store::Error> {
        let probe = Path::from(format!("{COMPACTION_STATE_ROOT}/locks/.probe-{}", self.owner.replace(':', "-")));
        let store = self.storage.object_store();
        store.put_opts(&probe, "probe".into(), PutOptions::from(PutMode::Create)).await?;
        let second = store.put_opts(&probe, "probe".into(), PutOptions::from(PutMode::Create)).await;
        let _ = store.delete(&probe).await;
        match second {
            Err(object_store::Error::AlreadyExists { .. }) => Ok(true),
            Ok(_) | Err(object_store::Error::NotImplemented) | Err(object_store::Error::NotSupported { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Releases a lock taken by this process.
    pub async fn release(&self, lock: PartitionLock) {
        let location = Path::from(Self::object_key(&lock.key));
        if let Err(e) = self.storage.object_store().delete(&location).await {
            tracing::warn!(partition = %lock.key, error = %e, "cannot delete partition lock; it will expire");
        }
        self.local.release(&lock.key);
    }

    /// Whether this process holds `key`.
    pub fn is_locked_here(&self, key: &str) -> bool {
        self.local.is_locked(key)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_set_acquire_and_release() {
        let locks = LockSet::default();
        assert!(locks.acquire("test/partition"));
        assert!(locks.is_locked("test/partition"));
        assert!(!locks.acquire("test/partition"));
        assert!(locks.acquire("db1/partition2"));
        locks.release("test/partition");
        assert!(!locks.is_locked("test/partition"));
        assert!(locks.acquire("test/partition"));
        locks.release("never-held");
    }

    #[test]
    fn concurrent_acquirers_never_share_a_key() {
        let locks = Arc::new(LockSet::default());
        let winners: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..10)
                .map(|_| {
                    let locks = locks.clone();
                    scope.spawn(move || {
                        let won = locks.acquire("concurrent/test");
                        if won {
                            std::thread::sleep(Duration::from_millis(10));
                            locks.release("concurrent/test");
                        }
                        usize::from(won)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert!(winners >= 1);
    }

    #[tokio::test]
    async fn two_processes_sharing_a_store_exclude_each_other() {
        let storage = Storage::in_memory();
        let a = PartitionLocks::new(storage.clone(), DEFAULT_LOCK_TTL);
        let b = PartitionLocks { local: Arc::default(), owner: "other".into(), ..a.clone() };
        let held = a.try_acquire("db/cpu/2026/04/11/10").await.unwrap().expect("free");
        assert!(b.try_acquire("db/cpu/2026/04/11/10").await.unwrap().is_none());
        assert!(a.try_acquire("db/cpu/2026/04/11/10").await.unwrap().is_none(), "not re-entrant");
        assert!(b.try_acquire("db/cpu/2026/04/11/11").await.unwrap().is_some(), "other partitions are independent");
        a.release(held).await;
        assert!(b.try_acquire("db/cpu/2026/04/11/10").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn stores_with_create_only_writes_pass_the_check() {
        let locks = PartitionLocks::new(Storage::in_memory(), DEFAULT_LOCK_TTL);
        assert!(locks.check_conditional_writes().await.unwrap());
        let dir = tempfile::tempdir().unwrap();
        let local = PartitionLocks::new(Storage::local(dir.path()).unwrap(), DEFAULT_LOCK_TTL);
        assert!(local.check_conditional_writes().await.unwrap());
        assert!(
            std::fs::read_dir(dir.path().join("_compaction_state/locks")).map_or(true, |mut d| d.next().is_none()),
            "the probe is removed"
        );
    }

    #[tokio::test]
    async fn expired_locks_are_taken_over() {
        let storage = Storage::in_memory();
        let dead = PartitionLocks::new(storage.clone(), Duration::ZERO);
        let _abandoned = dead.try_acquire("p").await.unwrap().unwrap();
        let live = PartitionLocks { local: Arc::default(), host: "elsewhere".into(), ..PartitionLocks::new(storage, DEFAULT_LOCK_TTL) };
        assert!(live.try_acquire("p").await.unwrap().is_some());
    }
}
