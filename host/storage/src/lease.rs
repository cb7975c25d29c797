//! Partition leases: who may act on a partition, at every moment, across
//! every engine sharing the store (the ownership model in
//! `docs/architecture.md`).
//!
//! All claims on one day of a measurement live in one object,
//! `_compaction_state/leases/{day path}.lease`: either one claim on the
//! whole day or claims on distinct hours. The object changes only by
//! compare-and-swap ([`Storage::swap`]), so a day claim and an hour claim of
//! that day can never both be granted. A claim expires `ttl` after it was
//! last written, judged by other engines on their wall clock with
//! `max_clock_skew` of slack; its holder judges it on `CLOCK_BOOTTIME` and
//! gives up `safety_margin` earlier, so the holder always stops believing
//! before anyone else starts.
//!
//! One shortcut, exact rather than timed: an engine holds an exclusive
//! `flock` on `{tmp}/compactor-engines/{engine}.alive` for its whole life,
//! and its job processes inherit it. Another engine that can open that file
//! shares the host's kernel; if it can take the lock, the engine and all its
//! processes are gone. Their claims are then void at once — unless a claim
//! is marked as having writes in flight on a store where a write can land
//! after its process died (S3: a request whose body arrived is completed).
//! Such a claim is honoured until its expiry plus the store's late-write
//! window, whoever sees the death: the process is gone, its requests are
//! not. Where the file is not visible (another host or container), the TTL
//! decides, with the same window.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{COMPACTION_STATE_ROOT, Storage, StorageError};
use compactor_model::PartitionPath;

/// Timing of leases; see the ownership model for what each bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSettings {
    /// How long a claim lasts without renewal.
    pub ttl: Duration,
    /// The largest difference between two engines' wall clocks.
    pub max_clock_skew: Duration,
    /// How long before its deadline a holder stops trusting its claim.
    pub safety_margin: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self { ttl: Duration::from_secs(60), max_clock_skew: Duration::from_secs(5), safety_margin: Duration::from_secs(15) }
    }
}

/// One claim, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    /// Unique per claim.
    id: String,
    /// The engine holding it.
    engine: String,
    /// `day`, or the two-digit hour.
    part: String,
    /// The partition path it was taken for.
    partition: String,
    /// The holder's wall clock when it last sent this claim, plus the TTL.
    expires_at: DateTime<Utc>,
    /// The claim's job may have a write in flight (it is about to write its
    /// recovery manifest, or its upload's outcome is unknown): on a store
    /// where writes land late, the claim holds its partition until it
    /// expires, plus the late-write window, even if its engine is seen dead.
    /// Stored as `settling`, the name engines before this flag used for a
    /// late release, which they honour the same way.
    #[serde(default, rename = "settling", skip_serializing_if = "std::ops::Not::not")]
    writes_in_flight: bool,
    /// How long the holder's writes may land after they were sent (its
    /// store's request timeout), in milliseconds; 0 where a write cannot
    /// outlive its process. Recorded by the holder, because engines sharing
    /// a lake may be configured with different timeouts.
    #[serde(default, skip_serializing_if = "is_zero")]
    late_write_window_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Claim {
    /// Marks the claim as having writes in flight that may land up to
    /// `window` after they were sent.
    fn mark_writes_in_flight(&mut self, window: Option<Duration>) {
        self.writes_in_flight = true;
        let window_ms = window.map_or(0, |w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX));
        self.late_write_window_ms = self.late_write_window_ms.max(window_ms);
    }

    /// Whether `observer` (at its wall clock `now`) must still honour this
    /// claim. A claim with writes in flight is honoured until `expires_at +
    /// max_clock_skew + window`, whoever sees its engine dead: its holder
    /// sends nothing after its own deadline (before `expires_at` on its
    /// clock; [`before_deadline`] cuts a write there, retries included), and
    /// what it sent lands within the window — the larger of the holder's
    /// recorded one and the observer's own, capped at
    /// [`MAX_LATE_WRITE_WINDOW`]. A time past the calendar's end holds the
    /// claim (fail safe).
    fn honoured_by(&self, observer: &ClaimObserver, now: DateTime<Utc>) -> bool {
        let skew = to_chrono(observer.settings.max_clock_skew);
        let until = |extra: chrono::Duration| self.expires_at.checked_add_signed(skew).and_then(|t| t.checked_add_signed(extra));
        if self.engine == observer.engine {
            return until(chrono::Duration::zero()).is_none_or(|t| t > now);
        }
        let window =
            Duration::from_millis(self.late_write_window_ms).max(observer.late_write_window.unwrap_or_default()).min(MAX_LATE_WRITE_WINDOW);
        let may_land_late = self.writes_in_flight && !window.is_zero();
        let grace = if may_land_late { to_chrono(window) } else { chrono::Duration::zero() };
        until(grace).is_none_or(|t| t > now) && (may_land_late || !known_dead(&self.engine))
    }
}

/// The longest late-write window a claim is honoured for, whatever its
/// holder recorded (a hand-edited lease object, an absurd `timeout`).
pub const MAX_LATE_WRITE_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// How one engine judges the claims in a lease object.
struct ClaimObserver {
    engine: String,
    settings: LeaseSettings,
    /// Its own store's late-write window ([`Storage::late_write_window`]).
    late_write_window: Option<Duration>,
}

fn to_chrono(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration.min(MAX_LATE_WRITE_WINDOW)).unwrap_or(chrono::Duration::zero())
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LeaseObject {
    claims: Vec<Claim>,
    /// Counts the object's writes, so that its content never repeats: a
    /// reader comparing it before and after a listing sees every claim
    /// taken or released in between ([`claims_generation`]).
    #[serde(default)]
    generation: u64,
}

/// How many times the claims covering `partition_path` (its day's lease
/// object) have been written: a job that started or ended between two
/// reads changed it. 0 when nothing was ever claimed there.
pub async fn claims_generation(storage: &Storage, partition_path: &str) -> Result<u64, StorageError> {
    let key = scope_of(partition_path).key;
    match storage.read_versioned(&key).await? {
        Some((bytes, _)) => Ok(serde_json::from_slice::<LeaseObject>(&bytes).map(|o| o.generation).unwrap_or(u64::MAX)),
        None => Ok(0),
    }
}

/// Which lease object covers a partition, and which part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Scope {
    key: String,
    part: String,
}

/// The day's lease object, and the claim's part of it: the hour, or `day`
/// ([`PartitionPath`]).
fn scope_of(partition_path: &str) -> Scope {
    let path = PartitionPath::parse(partition_path);
    Scope { key: format!("{COMPACTION_STATE_ROOT}/leases/{}.lease", path.day()), part: path.hour().unwrap_or("day").to_owned() }
}

/// A held claim. Its validity is judged on this host's `CLOCK_BOOTTIME`,
/// which the renewal task extends.
#[derive(Debug, Clone)]
pub struct Lease {
    scope: Scope,
    id: String,
    partition: String,
    /// `CLOCK_BOOTTIME` nanoseconds until which this holder may act; 0 once lost.
    deadline: Arc<AtomicU64>,
}

impl Lease {
    /// The claim's unique id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The partition it was taken for.
    pub fn partition(&self) -> &str {
        &self.partition
    }

    /// Whether this holder may still act: before its deadline and not lost.
    pub fn is_valid(&self) -> bool {
        boottime_nanos() < self.deadline.load(Ordering::SeqCst)
    }

    /// The deadline, in `CLOCK_BOOTTIME` nanoseconds (0 once lost).
    pub fn deadline(&self) -> u64 {
        self.deadline.load(Ordering::SeqCst)
    }
}

/// The leases of one engine on one store.
#[derive(Debug, Clone)]
pub struct Leases {
    storage: Storage,
    engine: String,
    settings: LeaseSettings,
    sequence: Arc<AtomicU64>,
    /// This engine's liveness lock, held while it lives.
    _alive: Option<Arc<Liveness>>,
    /// The wall clock and `CLOCK_BOOTTIME` when the clock was last found
    /// within the bound of the store's ([`Leases::check_store`]): a step of
    /// the wall clock since shows as a difference between the two.
    clock_anchor: Arc<std::sync::Mutex<Option<ClockAnchor>>>,
}

/// The wall clock and `CLOCK_BOOTTIME` (nanoseconds) read together.
type ClockAnchor = (DateTime<Utc>, u64);

/// An engine's liveness lock file; removed when the engine ends normally.
#[derive(Debug)]
struct Liveness {
    path: PathBuf,
    _file: std::fs::File,
}

impl Drop for Liveness {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where engines on this host keep their liveness locks.
fn liveness_dir() -> PathBuf {
    std::env::temp_dir().join("compactor-engines")
}

/// Takes this engine's liveness lock, inheritable by its job processes so
/// that it is released only when the engine and every job are gone.
fn hold_liveness(engine: &str) -> Option<Liveness> {
    use std::os::fd::AsRawFd;
    let dir = liveness_dir();
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("{engine}.alive"));
    let file = std::fs::File::create(&path).ok()?;
    file.try_lock().ok()?;
    // SAFETY: clears FD_CLOEXEC on a descriptor this process owns.
    unsafe {
        libc::fcntl(file.as_raw_fd(), libc::F_SETFD, 0);
    }
    Some(Liveness { path, _file: file })
}

/// Whether `engine` is known to be gone: its liveness file is visible here
/// and nobody holds its lock. The file stays: the dead engine may have
/// claims in other lease objects, judged later.
fn known_dead(engine: &str) -> bool {
    let path = liveness_dir().join(format!("{engine}.alive"));
    std::fs::File::open(path).is_ok_and(|file| file.try_lock().is_ok())
}

/// Removes the liveness files of engines gone for an hour or more (their
/// claims have long expired; without the file a claim falls back to its
/// TTL, so removing one is never unsafe, only slower).
fn sweep_liveness_files() {
    let Ok(entries) = std::fs::read_dir(liveness_dir()) else { return };
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    for entry in entries.flatten() {
        let stale = entry.metadata().and_then(|m| m.modified()).is_ok_and(|modified| modified < hour_ago);
        if stale && std::fs::File::open(entry.path()).is_ok_and(|file| file.try_lock().is_ok()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Swaps tried before a busy lease object is reported as an error.
const MAX_SWAP_ATTEMPTS: usize = 50;

/// Reads the lease object at `key`, lets `change` edit its claims (`None`:
/// nothing to write) and swaps the result in; retries when another writer
/// came first. Returns `change`'s answer and the `CLOCK_BOOTTIME` instant
/// just before the successful write was sent.
async fn swap_claims<T>(
    storage: &Storage,
    key: &str,
    mut change: impl FnMut(&mut Vec<Claim>, DateTime<Utc>) -> Option<T>,
) -> Result<Option<(T, u64)>, StorageError> {
    for attempt in 0..MAX_SWAP_ATTEMPTS {
        let current = storage.read_versioned(key).await?;
        let (mut object, version) = match current {
            Some((bytes, version)) => {
                // Fail safe: an object nobody can read may hold live
                // claims, so nobody may claim through it.
                let object = serde_json::from_slice::<LeaseObject>(&bytes).map_err(|e| {
                    let source = format!("unreadable lease object ({e}); its day is not compacted until it is fixed or removed");
                    storage.object_error("parse", key, object_store::Error::Generic { store: "lease", source: source.into() })
                })?;
                (object, Some(version))
            }
            None => (LeaseObject::default(), None),
        };
        let sent = boottime_nanos();
        let Some(answer) = change(&mut object.claims, Utc::now()) else { return Ok(None) };
        object.generation += 1;
        let body = serde_json::to_vec(&object).unwrap_or_default();
        if storage.swap(key, version, body).await? {
            return Ok(Some((answer, sent)));
        }
        // Another writer came first: back off a little, by attempt.
        tokio::time::sleep(Duration::from_millis(2 + (attempt as u64 % 8) * 3)).await;
    }
    let busy = object_store::Error::Precondition { path: key.to_owned(), source: "too many concurrent writers".into() };
    Err(storage.object_error("swap", key, busy))
}

/// Marks the claim `claim_id` on `partition_path` as having writes in
/// flight, before the job sends its first write that others must see (its
/// recovery manifest): from then on the claim is honoured until it expires
/// even if its engine is seen dead, because a request the job sent may
/// land after the job is gone. `Ok(false)` when the claim is gone (the
/// lease was lost). Nothing to do, and no request, on stores where a write
/// cannot outlive its process.
pub async fn mark_writes_in_flight(storage: &Storage, partition_path: &str, claim_id: &str) -> Result<bool, StorageError> {
    if storage.late_write_window().is_none() {
        return Ok(true);
    }
    let scope = scope_of(partition_path);
    let marked = swap_claims(storage, &scope.key, |claims, _| {
        claims.iter_mut().find(|c| c.id == claim_id)?.mark_writes_in_flight(storage.late_write_window());
        Some(())
    })
    .await?;
    Ok(marked.is_some())
}

impl Leases {
    /// Leases of `engine` (an id unique to this process, see
    /// [`new_engine_id`]) on `storage`.
    pub fn new(storage: Storage, engine: String, settings: LeaseSettings) -> Self {
        sweep_liveness_files();
        let alive = hold_liveness(&engine).map(Arc::new);
        Self { storage, engine, settings, sequence: Arc::default(), _alive: alive, clock_anchor: Arc::default() }
    }

    /// This engine's id.
    pub fn engine(&self) -> &str {
        &self.engine
    }

    /// The timing in force.
    pub fn settings(&self) -> LeaseSettings {
        self.settings
    }

    /// Claims `partition_path`, or `None` when a live claim overlaps it (the
    /// same hour, its day, or an hour of it when it is a day). Expired claims
    /// are dropped on the way.
    pub async fn try_acquire(&self, partition_path: &str) -> Result<Option<Lease>, StorageError> {
        let scope = scope_of(partition_path);
        let id = format!("{}-{}", self.engine, self.sequence.fetch_add(1, Ordering::SeqCst));
        let ttl = self.settings.ttl;
        let written = self
            .modify(&scope.key, |claims, now| {
                if claims.iter().any(|c| c.part == "day" || scope.part == "day" || c.part == scope.part) {
                    return None;
                }
                claims.push(Claim {
                    id: id.clone(),
                    engine: self.engine.clone(),
                    part: scope.part.clone(),
                    partition: partition_path.to_owned(),
                    expires_at: now + ttl,
                    writes_in_flight: false,
                    late_write_window_ms: 0,
                });
                Some(())
            })
            .await?;
        Ok(written.map(|((), sent)| Lease {
            scope,
            id,
            partition: partition_path.to_owned(),
            deadline: Arc::new(AtomicU64::new(self.deadline_after(sent))),
        }))
    }

    /// Extends `lease` by the TTL from now. `Ok(false)` when the claim is
    /// gone (it expired and another engine took its place): the lease is
    /// then marked lost.
    pub(crate) async fn renew(&self, lease: &Lease) -> Result<bool, StorageError> {
        self.extend(lease, false).await
    }

    async fn extend(&self, lease: &Lease, writes_in_flight: bool) -> Result<bool, StorageError> {
        let ttl = self.settings.ttl;
        let written = self
            .modify(&lease.scope.key, |claims, now| {
                let claim = claims.iter_mut().find(|c| c.id == lease.id)?;
                claim.expires_at = now + ttl;
                // Once marked (by the job, before its first shared write), a
                // renewal never unmarks it.
                if writes_in_flight {
                    claim.mark_writes_in_flight(self.storage.late_write_window());
                }
                Some(())
            })
            .await?;
        match written {
            Some(((), sent)) => {
                let deadline = self.deadline_after(sent);
                // Never extend a lease already marked lost.
                let _ = lease.deadline.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| (d != 0).then_some(deadline));
                Ok(lease.deadline() != 0)
            }
            None => {
                lease.deadline.store(0, Ordering::SeqCst);
                Ok(false)
            }
        }
    }

    /// Gives `lease` up: removes its claim (only its own).
    pub async fn release(&self, lease: Lease) {
        lease.deadline.store(0, Ordering::SeqCst);
        let removed = self
            .modify(&lease.scope.key, |claims, _| {
                let before = claims.len();
                claims.retain(|c| c.id != lease.id);
                (claims.len() != before).then_some(())
            })
            .await;
        if let Err(e) = removed {
            tracing::warn!(partition = %lease.partition, error = %e, "cannot release the partition's lease; it will expire");
        }
    }

    /// Gives `lease` up without removing its claim: renewed one last time, it
    /// keeps the partition for one more TTL, so that a request of the job
    /// whose outcome is unknown has landed or failed before anyone else
    /// looks at the partition.
    pub async fn release_late(&self, lease: Lease) {
        if let Err(e) = self.extend(&lease, true).await {
            tracing::warn!(partition = %lease.partition, error = %e, "cannot extend the partition's lease; it expires as it is");
        }
        lease.deadline.store(0, Ordering::SeqCst);
    }

    /// Keeps `lease` renewed every third of the TTL until the returned guard
    /// is dropped, writing each new deadline to `deadline_file` (for the
    /// job process) when given.
    pub fn keep_renewed(&self, lease: &Lease, deadline_file: Option<PathBuf>) -> Renewal {
        if let Some(file) = &deadline_file {
            write_deadline(file, lease.deadline());
        }
        let (leases, lease, file) = (self.clone(), lease.clone(), deadline_file.clone());
        let period = self.settings.ttl / 3;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                match leases.renew(&lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!(partition = %lease.partition, "lost the partition's lease; the job stops before its next step")
                    }
                    Err(e) => tracing::warn!(partition = %lease.partition, error = %e, "cannot renew the partition's lease; retrying"),
                }
                if let Some(file) = &file {
                    write_deadline(file, lease.deadline());
                }
                if lease.deadline() == 0 {
                    break;
                }
            }
        });
        Renewal { task, deadline_file }
    }

    fn deadline_after(&self, sent_boottime: u64) -> u64 {
        let valid = self.settings.ttl.saturating_sub(self.settings.safety_margin);
        sent_boottime.saturating_add(valid.as_nanos() as u64)
    }

    /// Reads the lease object at `key`, drops the claims this engine need
    /// not honour any more ([`Claim::honoured_by`]), lets `change` edit the
    /// rest (`None`: nothing to write) and swaps the result in; retries when
    /// another writer came first. Returns `change`'s answer and the
    /// `CLOCK_BOOTTIME` instant just before the successful write was sent.
    async fn modify<T>(
        &self,
        key: &str,
        mut change: impl FnMut(&mut Vec<Claim>, DateTime<Utc>) -> Option<T>,
    ) -> Result<Option<(T, u64)>, StorageError> {
        let observer =
            ClaimObserver { engine: self.engine.clone(), settings: self.settings, late_write_window: self.storage.late_write_window() };
        swap_claims(&self.storage, key, |claims, now| {
            claims.retain(|c| c.honoured_by(&observer, now));
            change(claims, now)
        })
        .await
    }

    /// How far this host's wall clock has stepped since [`Leases::anchor_clock`]
    /// (against `CLOCK_BOOTTIME`, which never steps), when that is more than
    /// half `max_clock_skew`; `None` within it or before any anchor. NTP's
    /// slewing moves both alike; a step — an operator's `date -s`, a VM
    /// resumed with a corrected clock — does not, and leases judged on the
    /// stepped clock would not be safe.
    pub fn clock_stepped(&self) -> Option<chrono::Duration> {
        let anchor = *self.clock_anchor.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (wall, boot) = anchor?;
        let elapsed = chrono::Duration::nanoseconds(boottime_nanos().saturating_sub(boot).min(i64::MAX as u64) as i64);
        let step = (Utc::now() - wall - elapsed).abs();
        (step.to_std().unwrap_or_default() > self.settings.max_clock_skew / 2).then_some(step)
    }

    /// Records the wall clock as checked against the store's now.
    pub fn anchor_clock(&self) {
        *self.clock_anchor.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Utc::now(), boottime_nanos()));
    }

    /// Checks what the lease protocol relies on: create-only writes, and this
    /// host's clock within half `max_clock_skew` of the store's (from the
    /// `Last-Modified` of a probe it writes and removes).
    pub async fn check_store(&self) -> Result<StoreCheck, StorageError> {
        let probe = format!("{COMPACTION_STATE_ROOT}/leases/.probe-{}", self.engine);
        let before = Utc::now();
        self.storage.swap(&probe, None, "probe").await?;
        let after = Utc::now();
        let conditional_writes = !self.storage.swap(&probe, None, "probe").await.unwrap_or(true);
        let stored = self.storage.object_store().head(&crate::object_path(&probe)).await.ok();
        let _ = self.storage.delete(&probe).await;
        // The store stamps within [before, after] on a shared clock;
        // `Last-Modified` has one-second resolution on S3.
        let clock_offset = stored.map(|meta| {
            let stamp = meta.last_modified;
            if stamp < before - chrono::Duration::seconds(1) {
                stamp - before + chrono::Duration::seconds(1)
            } else if stamp > after {
                stamp - after
            } else {
                chrono::Duration::zero()
            }
        });
        Ok(StoreCheck { conditional_writes, clock_offset })
    }
}

/// What [`Leases::check_store`] found.
#[derive(Debug, Clone, Copy)]
pub struct StoreCheck {
    /// The store refuses a second create-only write of one key.
    pub conditional_writes: bool,
    /// How far the store's clock is from this host's (0 when within the
    /// probe's round trip), if the store reports modification times.
    pub clock_offset: Option<chrono::Duration>,
}

/// Renews a lease in the background; dropping it stops the renewals.
#[derive(Debug)]
pub struct Renewal {
    task: tokio::task::JoinHandle<()>,
    deadline_file: Option<PathBuf>,
}

impl Drop for Renewal {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(file) = &self.deadline_file {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// `CLOCK_BOOTTIME` in nanoseconds: monotonic, shared by every process of
/// the host, and counting while the machine is suspended.
pub(crate) fn boottime_nanos() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable timespec.
    unsafe {
        libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now);
    }
    (now.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}

/// Writes a lease deadline for a job process (atomically: write, rename).
fn write_deadline(file: &Path, deadline: u64) {
    let staging = file.with_extension("tmp");
    let written = std::fs::write(&staging, deadline.to_string()).and_then(|()| std::fs::rename(&staging, file));
    if let Err(e) = written {
        tracing::warn!(file = %file.display(), error = %e, "cannot write the lease deadline for the job");
    }
}

/// Whether the lease whose deadline `file` holds is still valid; a missing
/// or unreadable file is a lost lease.
pub fn deadline_file_is_valid(file: &Path) -> bool {
    read_deadline(file).is_some_and(|deadline| boottime_nanos() < deadline)
}

fn read_deadline(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse::<u64>().ok())
}

/// Runs `write` — a write of the job that others must see — until it ends
/// or the lease whose deadline `file` holds ends (renewals extend it). Cut
/// at the deadline, it sends nothing more: object_store retries a failed
/// request for minutes, and a retry sent after the deadline could land
/// after another engine had judged the job. `None` when cut (what it sent
/// before may still land, within the store's request timeout).
pub async fn before_deadline<T>(file: &Path, write: impl Future<Output = T>) -> Option<T> {
    let mut write = std::pin::pin!(write);
    loop {
        let remaining = read_deadline(file)?.checked_sub(boottime_nanos()).filter(|n| *n > 0)?;
        tokio::select! {
            done = &mut write => return Some(done),
            // Then read the deadline again: a renewal may have moved it.
            () = tokio::time::sleep(Duration::from_nanos(remaining)) => {}
        }
    }
}

/// A new engine id: host, process id and start time, so that two engines
/// never share one even in containers with one hostname and one PID.
pub fn new_engine_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let host: String = host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).take(40).collect();
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let sequence = SEQUENCE.fetch_add(1, Ordering::SeqCst);
    format!("{host}-{}-{:x}-{sequence}", std::process::id(), Utc::now().timestamp_nanos_opt().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leases(storage: &Storage, engine: &str, ttl_ms: u64) -> Leases {
        let settings = LeaseSettings {
            ttl: Duration::from_millis(ttl_ms),
            max_clock_skew: Duration::from_millis(ttl_ms / 10),
            safety_margin: Duration::from_millis(ttl_ms / 4),
        };
        Leases::new(storage.clone(), format!("{engine}-{}", new_engine_id()), settings)
    }

    #[test]
    fn scopes_group_a_day_and_its_hours() {
        let hour = scope_of("db/cpu/2026/04/11/10");
        let day = scope_of("db/cpu/2026/04/11");
        assert_eq!(hour.key, day.key);
        assert_eq!((hour.part.as_str(), day.part.as_str()), ("10", "day"));
        assert_eq!(hour.key, "_compaction_state/leases/db/cpu/2026/04/11.lease");
        assert_eq!(scope_of("spoke/db/cpu/2026/04/11/10").key, "_compaction_state/leases/spoke/db/cpu/2026/04/11.lease");
        assert_eq!(scope_of("db/2026/2026/04/11").part, "day", "a four-digit measurement is not an hour");
    }

    #[tokio::test]
    async fn a_day_excludes_its_hours_and_hours_exclude_their_day() {
        let storage = Storage::in_memory();
        let (a, b) = (leases(&storage, "a", 60_000), leases(&storage, "b", 60_000));
        let hour = a.try_acquire("db/cpu/2026/04/11/10").await.unwrap().expect("free");
        assert!(b.try_acquire("db/cpu/2026/04/11").await.unwrap().is_none(), "the day is busy while an hour is");
        assert!(a.try_acquire("db/cpu/2026/04/11/10").await.unwrap().is_none(), "not re-entrant, even for its engine");
        let other_hour = b.try_acquire("db/cpu/2026/04/11/11").await.unwrap().expect("hours are independent");
        assert!(b.try_acquire("db/cpu/2026/04/12").await.unwrap().is_some(), "other days are independent");
        a.release(hour).await;
        assert!(a.try_acquire("db/cpu/2026/04/11").await.unwrap().is_none(), "hour 11 still holds the day");
        b.release(other_hour).await;
        let day = a.try_acquire("db/cpu/2026/04/11").await.unwrap().expect("free again");
        assert!(b.try_acquire("db/cpu/2026/04/11/03").await.unwrap().is_none(), "a day claim excludes every hour");
        assert!(day.is_valid());
    }

    #[tokio::test]
    async fn expired_claims_are_taken_over_and_their_holder_learns_it() {
        let storage = Storage::in_memory();
        let (a, b) = (leases(&storage, "a", 200), leases(&storage, "b", 200));
        let held = a.try_acquire("db/cpu/2026/04/11/10").await.unwrap().unwrap();
        assert!(b.try_acquire("db/cpu/2026/04/11/10").await.unwrap().is_none());
        tokio::time::sleep(Duration::from_millis(160)).await;
        assert!(!held.is_valid(), "the holder gives up at ttl - margin");
        assert!(b.try_acquire("db/cpu/2026/04/11/10").await.unwrap().is_none(), "others wait for ttl + skew");
        tokio::time::sleep(Duration::from_millis(80)).await;
        let taken = b.try_acquire("db/cpu/2026/04/11/10").await.unwrap().expect("expired");
        assert!(!a.renew(&held).await.unwrap(), "the old holder cannot renew");
        assert_eq!(held.deadline(), 0);
        a.release(held).await;
        assert!(a.try_acquire("db/cpu/2026/04/11/10").await.unwrap().is_none(), "releasing a lost lease leaves the new one");
        assert!(taken.is_valid());
    }

    #[tokio::test]
    async fn a_dead_engine_on_this_host_loses_its_claims_at_once() {
        let storage = Storage::in_memory();
        let engine = new_engine_id();
        let dead = Leases::new(storage.clone(), engine.clone(), Default::default());
        let held = dead.try_acquire("db/cpu/2026/04/11/10").await.unwrap().unwrap();
        let other = leases(&storage, "b", 60_000);
        assert!(other.try_acquire("db/cpu/2026/04/11/10").await.unwrap().is_none(), "alive: its lock is held");
        // Killed: the kernel drops its lock, its file stays.
        drop(held);
        drop(dead);
        std::fs::write(liveness_dir().join(format!("{engine}.alive")), "").unwrap();
        assert!(other.try_acquire("db/cpu/2026/04/11/10").await.unwrap().is_some(), "gone: its lock is free");
        assert!(known_dead(&engine), "and stays known dead, for its claims in other lease objects");
        assert!(!known_dead("an-engine-on-another-host"), "an engine this host cannot see is judged by the TTL");
    }

    /// Claims of an engine that then dies on this host, as the kernel leaves
    /// them: its lock released, its liveness file in place.
    async fn claims_of_a_dead_engine(storage: &Storage, settings: LeaseSettings, mark: impl AsyncFnOnce(&Leases, Lease)) {
        let engine = new_engine_id();
        let dying = Leases::new(storage.clone(), engine.clone(), settings);
        let held = dying.try_acquire("db/cpu/2026/04/11/10").await.unwrap().unwrap();
        mark(&dying, held).await;
        drop(dying);
        std::fs::write(liveness_dir().join(format!("{engine}.alive")), "").unwrap();
    }

    const SHORT: LeaseSettings = LeaseSettings {
        ttl: Duration::from_millis(300),
        max_clock_skew: Duration::from_millis(30),
        safety_margin: Duration::from_millis(75),
    };

    #[tokio::test]
    async fn a_late_release_holds_even_after_its_engine_dies() {
        // A store whose writes land up to 150 ms late: the claim holds for
        // ttl + skew + 150 ms = 480 ms.
        let storage = Storage::in_memory().with_late_writes(Duration::from_millis(150));
        claims_of_a_dead_engine(&storage, SHORT, async |leases, held| leases.release_late(held).await).await;
        let other = Leases::new(storage.clone(), new_engine_id(), SHORT);
        assert!(other.try_acquire("db/cpu/2026/04/11/10").await.unwrap().is_none(), "the job's request may still land");
        tokio::time::sleep(Duration::from_millis(380)).await;
        assert!(other.try_acquire("db/cpu/2026/04/11/10").await.unwrap().is_none(), "past ttl + skew, within the late-write window");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(other.try_acquire("db/cpu/2026/04/11/10").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_claim_with_writes_in_flight_outlives_its_dead_engine_only_where_writes_land_late() {
        let mark = async |leases: &Leases, held: Lease| {
            assert!(mark_writes_in_flight(&leases.storage, held.partition(), held.id()).await.unwrap());
            // A renewal afterwards keeps the mark.
            assert!(leases.renew(&held).await.unwrap());
        };
        let remote = Storage::in_memory().with_late_writes(Duration::from_millis(100));
        claims_of_a_dead_engine(&remote, SHORT, mark).await;
        let other = Leases::new(remote.clone(), new_engine_id(), SHORT);
        assert!(other.try_acquire("db/cpu/2026/04/11/10").await.unwrap().is_none(), "its upload may still land");
        tokio::time::sleep(Duration::from_millis(480)).await;
        assert!(other.try_acquire("db/cpu/2026/04/11/10").await.unwrap().is_some(), "expired: ttl + skew + 100 ms");

        let unmarked = Storage::in_memory().with_late_writes(Duration::from_millis(100));
        claims_of_a_dead_engine(&unmarked, SHORT, async |_, _| {}).await;
        let other = Leases::new(unmarked.clone(), new_engine_id(), SHORT);
        assert!(other.try_acquire("db/cpu/2026/04/11/10").await.unwrap().is_some(), "nothing in flight: void at once");

        // On local disk a write ends with its process: the shortcut holds.
        let dir = tempfile::tempdir().unwrap();
        let local = Storage::local(dir.path()).unwrap();
        claims_of_a_dead_engine(&local, SHORT, mark).await;
        let other = Leases::new(local.clone(), new_engine_id(), SHORT);
        assert!(other.try_acquire("db/cpu/2026/04/11/10").await.unwrap().is_some(), "local: void at once");
    }

    #[tokio::test]
    async fn a_write_is_cut_at_the_deadline_unless_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deadline");
        write_deadline(&file, boottime_nanos() + 50_000_000);
        let slow = tokio::time::sleep(Duration::from_millis(300));
        assert!(before_deadline(&file, slow).await.is_none(), "cut at the deadline: no retry goes out after it");
        write_deadline(&file, boottime_nanos() + 50_000_000);
        let renewer = {
            let file = file.clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    write_deadline(&file, boottime_nanos() + 50_000_000);
                }
            })
        };
        assert_eq!(
            before_deadline(&file, async {
                tokio::time::sleep(Duration::from_millis(150)).await;
                7
            })
            .await,
            Some(7)
        );
        renewer.await.unwrap();
        assert!(before_deadline(&dir.path().join("missing"), async {}).await.is_none(), "no deadline: a lost lease");
    }

    #[tokio::test]
    async fn an_absurd_late_write_window_blocks_only_its_claim() {
        let storage = Storage::in_memory().with_late_writes(Duration::from_millis(100));
        let key = "_compaction_state/leases/db/cpu/2026/04/11.lease";
        let claim = |expires_at: &str| {
            format!(
                r#"{{"claims":[{{"id":"x","engine":"gone","part":"10","partition":"db/cpu/2026/04/11/10","expires_at":"{expires_at}","settling":true,"late_write_window_ms":18446744073709551615}}]}}"#
            )
        };
        storage.write(key, claim("2020-01-01T00:00:00Z")).await.unwrap();
        let other = Leases::new(storage.clone(), new_engine_id(), SHORT);
        assert!(other.try_acquire("db/cpu/2026/04/11/10").await.unwrap().is_some(), "capped at a day: long expired");
        storage.write(key, claim("9999-12-31T23:59:59Z")).await.unwrap();
        assert!(other.try_acquire("db/cpu/2026/04/11/10").await.unwrap().is_none(), "held");
        assert!(other.try_acquire("db/cpu/2026/04/11/11").await.unwrap().is_some(), "the other hours are free");
        // At the calendar's end, the sum overflows: held, no panic.
        let mut last: LeaseObject = serde_json::from_str(&claim("2020-01-01T00:00:00Z")).unwrap();
        last.claims[0].expires_at = DateTime::<Utc>::MAX_UTC;
        let observer = ClaimObserver { engine: "me".into(), settings: SHORT, late_write_window: None };
        assert!(last.claims[0].honoured_by(&observer, Utc::now()));
    }

    #[tokio::test]
    async fn engines_with_other_settings_honour_the_holders_window() {
        // Found by the adversarial pass: an observer whose own safety margin
        // exceeded the holder's window computed no grace at all.
        let remote = Storage::in_memory().with_late_writes(Duration::from_millis(200));
        claims_of_a_dead_engine(&remote, SHORT, async |leases: &Leases, held: Lease| {
            assert!(mark_writes_in_flight(&leases.storage, held.partition(), held.id()).await.unwrap());
        })
        .await;
        let patient = LeaseSettings { safety_margin: Duration::from_secs(15), ..SHORT };
        let shared = Storage::from_store(remote.object_store().clone(), "shared").with_late_writes(Duration::from_millis(10));
        let observer = Leases::new(shared, new_engine_id(), patient);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(observer.try_acquire("db/cpu/2026/04/11/10").await.unwrap().is_none(), "ttl + skew passed, the holder's 200 ms not");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(observer.try_acquire("db/cpu/2026/04/11/10").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn marking_a_lost_claim_says_so() {
        let storage = Storage::in_memory().with_late_writes(Duration::from_millis(100));
        assert!(!mark_writes_in_flight(&storage, "db/cpu/2026/04/11/10", "no-such-claim").await.unwrap());
    }

    #[tokio::test]
    async fn an_unreadable_lease_object_blocks_its_day() {
        let storage = Storage::in_memory();
        storage.write("_compaction_state/leases/db/cpu/2026/04/11.lease", "{garbage").await.unwrap();
        let error = leases(&storage, "a", 60_000).try_acquire("db/cpu/2026/04/11/10").await.unwrap_err();
        assert!(error.to_string().contains("unreadable lease object"), "{error}");
    }

    #[tokio::test]
    async fn renewal_keeps_a_claim_past_its_ttl() {
        let storage = Storage::in_memory();
        let (a, b) = (leases(&storage, "a", 300), leases(&storage, "b", 300));
        let held = a.try_acquire("db/cpu/2026/04/11").await.unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deadline");
        let renewal = a.keep_renewed(&held, Some(file.clone()));
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(held.is_valid() && deadline_file_is_valid(&file));
        assert!(b.try_acquire("db/cpu/2026/04/11/01").await.unwrap().is_none());
        drop(renewal);
        assert!(!deadline_file_is_valid(&file), "the job's file goes with the renewal");
        a.release_late(held).await;
        assert!(b.try_acquire("db/cpu/2026/04/11/01").await.unwrap().is_none(), "a late release keeps the claim for a TTL");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(b.try_acquire("db/cpu/2026/04/11/01").await.unwrap().is_some());
    }

    #[test]
    fn racing_engines_never_share_a_day() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let storage = Storage::local(dir.path()).unwrap();
        for round in 0..5 {
            let day = format!("db/cpu/2026/04/1{round}");
            let granted: Vec<Lease> = runtime.block_on(async {
                let attempts = (0..6).map(|i| {
                    let leases = leases(&storage, &format!("e{i}"), 60_000);
                    let path = if i % 2 == 0 { day.clone() } else { format!("{day}/0{i}") };
                    async move { leases.try_acquire(&path).await.unwrap() }
                });
                futures::future::join_all(attempts).await.into_iter().flatten().collect()
            });
            let days = granted.iter().filter(|l| l.partition() == day).count();
            assert!(!granted.is_empty());
            assert!(days == 0 || granted.len() == 1, "a day claim stands alone: {granted:?}");
        }
    }

    #[tokio::test]
    async fn the_store_check_finds_create_only_writes_and_a_sane_clock() {
        let dir = tempfile::tempdir().unwrap();
        let local = Storage::local(dir.path()).unwrap();
        let check = leases(&local, "a", 60_000).check_store().await.unwrap();
        assert!(check.conditional_writes);
        assert!(check.clock_offset.unwrap().num_seconds().abs() <= 1);
        let left = std::fs::read_dir(dir.path().join("_compaction_state/leases")).map_or(0, |d| d.count());
        assert_eq!(left, 0, "the probe is removed");
    }
}
