//! Arc's compactor lease manager (spec §13.4) as a plain state machine: the
//! elected leader feeds it what etcd holds at each check and writes what it
//! decides. No etcd here, so every rule is tested alone.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::member::Member;

/// Arc's timings (defaults: 10 s, 30 s, 60 s, 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimings {
    /// How often the leader checks.
    pub check_interval: Duration,
    /// How long a holder may be unhealthy or gone before it is replaced.
    pub failover_timeout: Duration,
    /// No automatic failover within this long of the last one.
    pub cooldown: Duration,
    /// Consecutive failed checks before a failover.
    pub unhealthy_threshold: u32,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        Self {
            check_interval: Duration::from_secs(10),
            failover_timeout: Duration::from_secs(30),
            cooldown: Duration::from_secs(60),
            unhealthy_threshold: 3,
        }
    }
}

/// The compactor lease as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactorLease {
    /// The node that holds it.
    pub holder: String,
    /// When it was assigned.
    pub assigned_at: DateTime<Utc>,
    /// Counts assignments: each new holder gets the next number.
    pub epoch: u64,
    /// Why it was assigned (`no holder`, `failover: …`, `manual failover`).
    pub reason: String,
}

/// Arc's lease-manager stats, field for field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseManagerStats {
    /// Whether a leader runs the manager.
    pub running: bool,
    /// The holder, or empty.
    pub active_compactor_id: String,
    /// Consecutive checks that found the holder unhealthy or gone.
    pub consecutive_fails: u32,
    /// A failover is being written.
    pub failover_in_progress: bool,
    /// The cooldown, as a duration string.
    pub cooldown_period: String,
    /// The last successful failover (RFC 3339), only after one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover_at: Option<DateTime<Utc>>,
    /// Beyond Arc: since when the holder has been unhealthy or gone, so that
    /// a new leader (one-shot nodes lead in turn) goes on counting the
    /// failover timeout instead of starting again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_missing_since: Option<DateTime<Utc>>,
}

/// What a check decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to write.
    Keep,
    /// Write this lease.
    Assign(CompactorLease),
}

/// Why a manual failover was refused (Arc's errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailoverError {
    /// Another failover is being written.
    #[error("a failover is already in progress")]
    InProgress,
    /// Nobody holds the lease.
    #[error("no node holds the compactor lease")]
    NoHolder,
    /// Nobody could take it.
    #[error("no other healthy node can take the compactor lease")]
    NoCandidate,
}

/// The manager's memory between checks (the leader's only; a new leader
/// starts afresh, as in Arc).
#[derive(Debug, Clone)]
pub struct LeaseManager {
    timings: LeaseTimings,
    consecutive_fails: u32,
    first_fail_at: Option<DateTime<Utc>>,
    failover_in_progress: bool,
    last_failover_at: Option<DateTime<Utc>>,
    holder: Option<String>,
}

impl LeaseManager {
    /// A manager with `timings`.
    pub fn new(timings: LeaseTimings) -> Self {
        Self { timings, consecutive_fails: 0, first_fail_at: None, failover_in_progress: false, last_failover_at: None, holder: None }
    }

    /// A new leader's manager, going on from the stats the last leader
    /// wrote (the holder's missing time and the last failover), so that a
    /// cluster of one-shot nodes, each leading for a moment, still fails
    /// over a dead holder.
    pub fn resume(timings: LeaseTimings, stats: Option<&LeaseManagerStats>, lease: Option<&CompactorLease>) -> Self {
        let mut manager = Self::new(timings);
        if let Some(stats) = stats {
            manager.last_failover_at = stats.last_failover_at;
            if lease.is_some_and(|l| l.holder == stats.active_compactor_id) {
                manager.first_fail_at = stats.holder_missing_since;
                manager.consecutive_fails = stats.consecutive_fails;
            }
        }
        manager
    }

    /// One periodic check (every `check_interval`: each counts towards the
    /// threshold): `lease` is the current lease, `members` the live members.
    pub fn check(&mut self, lease: Option<&CompactorLease>, members: &[Member], now: DateTime<Utc>) -> Decision {
        self.holder = lease.map(|l| l.holder.clone());
        let Some(lease) = lease else {
            self.reset_fails();
            return match candidate(members, None) {
                Some(node) => Decision::Assign(self.next(None, node, now, "no holder".to_owned())),
                None => Decision::Keep,
            };
        };
        if members.iter().any(|m| m.node_id == lease.holder && m.healthy) {
            self.reset_fails();
            return Decision::Keep;
        }
        self.consecutive_fails += 1;
        let first_fail = *self.first_fail_at.get_or_insert(now);
        // Arc's threshold of consecutive checks, or its failover timeout
        // when checks came slower than the interval (a slow etcd).
        let timed_out = now - first_fail >= chrono::Duration::from_std(self.timings.failover_timeout).unwrap_or_default();
        if self.consecutive_fails < self.timings.unhealthy_threshold && !timed_out {
            return Decision::Keep;
        }
        if let Some(last) = self.last_failover_at
            && now - last < chrono::Duration::from_std(self.timings.cooldown).unwrap_or_default()
        {
            return Decision::Keep;
        }
        match candidate(members, Some(&lease.holder)) {
            Some(node) => {
                let why = format!("failover: {} unhealthy or gone for {} checks", lease.holder, self.consecutive_fails);
                self.last_failover_at = Some(now);
                self.reset_fails();
                Decision::Assign(self.next(Some(lease), node, now, why))
            }
            None => Decision::Keep,
        }
    }

    /// A manual failover (`POST /api/v1/cluster/failover`): the lease moves
    /// to another node chosen the same way, whatever the holder's health.
    pub fn manual_failover(
        &mut self,
        lease: Option<&CompactorLease>,
        members: &[Member],
        now: DateTime<Utc>,
    ) -> Result<CompactorLease, FailoverError> {
        if self.failover_in_progress {
            return Err(FailoverError::InProgress);
        }
        let lease = lease.ok_or(FailoverError::NoHolder)?;
        let node = candidate(members, Some(&lease.holder)).ok_or(FailoverError::NoCandidate)?;
        self.last_failover_at = Some(now);
        self.reset_fails();
        Ok(self.next(Some(lease), node, now, format!("manual failover from {}", lease.holder)))
    }

    /// Marks a failover as being written (between the decision and etcd's
    /// answer).
    pub fn set_in_progress(&mut self, in_progress: bool) {
        self.failover_in_progress = in_progress;
    }

    /// Arc's stats.
    pub fn stats(&self) -> LeaseManagerStats {
        LeaseManagerStats {
            running: true,
            active_compactor_id: self.holder.clone().unwrap_or_default(),
            consecutive_fails: self.consecutive_fails,
            failover_in_progress: self.failover_in_progress,
            cooldown_period: format!("{}s", self.timings.cooldown.as_secs()),
            last_failover_at: self.last_failover_at,
            holder_missing_since: self.first_fail_at,
        }
    }

    fn reset_fails(&mut self) {
        self.consecutive_fails = 0;
        self.first_fail_at = None;
    }

    fn next(&mut self, old: Option<&CompactorLease>, node: &Member, now: DateTime<Utc>, reason: String) -> CompactorLease {
        self.holder = Some(node.node_id.clone());
        CompactorLease { holder: node.node_id.clone(), assigned_at: now, epoch: old.map_or(0, |l| l.epoch) + 1, reason }
    }
}

/// Who gets the lease: the first healthy compactor-role node, else the
/// first healthy node whose role may compact (`standalone` or one Arc does
/// not know), else the first healthy writer; never a reader, never
/// `excluded`. "First" is the earliest to join (then the smallest id), so
/// every leader picks the same node.
pub fn candidate<'a>(members: &'a [Member], excluded: Option<&str>) -> Option<&'a Member> {
    let eligible = |m: &&Member| m.healthy && Some(m.node_id.as_str()) != excluded;
    let mut ordered: Vec<&Member> = members.iter().filter(eligible).collect();
    ordered.sort_by(|a, b| (a.joined_at, &a.node_id).cmp(&(b.joined_at, &b.node_id)));
    let rank = |m: &Member| match m.role.as_str() {
        "compactor" => Some(0),
        "writer" => Some(2),
        "reader" => None,
        _ => Some(1),
    };
    ordered.into_iter().filter_map(|m| rank(m).map(|r| (r, m))).min_by_key(|(r, _)| *r).map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, role: &str, joined: i64, healthy: bool) -> Member {
        Member {
            node_id: id.to_owned(),
            role: role.to_owned(),
            healthy,
            joined_at: DateTime::from_timestamp(joined, 0).unwrap(),
            ..Member::default()
        }
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn assigned(decision: Decision) -> CompactorLease {
        match decision {
            Decision::Assign(lease) => lease,
            Decision::Keep => panic!("expected an assignment"),
        }
    }

    #[test]
    fn the_first_healthy_compactor_gets_the_lease_else_a_node_that_may_compact_else_a_writer_never_a_reader() {
        let mut manager = LeaseManager::new(LeaseTimings::default());
        let members = [member("w", "writer", 1, true), member("c2", "compactor", 3, true), member("c1", "compactor", 2, true)];
        assert_eq!(assigned(manager.check(None, &members, at(0))).holder, "c1", "the earliest compactor");
        let members = [member("w", "writer", 1, true), member("s", "standalone", 5, true), member("c", "compactor", 2, false)];
        assert_eq!(assigned(manager.check(None, &members, at(0))).holder, "s", "Arc #892: default-role nodes get one lease");
        let members = [member("r", "reader", 1, true), member("w", "writer", 2, true)];
        assert_eq!(assigned(manager.check(None, &members, at(0))).holder, "w", "Arc #894: writers compact when nothing else can");
        assert_eq!(manager.check(None, &[member("r", "reader", 1, true)], at(0)), Decision::Keep, "never a reader");
    }

    #[test]
    fn a_holder_gone_for_the_threshold_and_the_timeout_is_replaced_once_per_cooldown_without_preemption() {
        let mut manager = LeaseManager::new(LeaseTimings::default());
        let c1 = member("c1", "compactor", 1, true);
        let c2 = member("c2", "compactor", 2, true);
        let lease = assigned(manager.check(None, &[c1.clone(), c2.clone()], at(0)));
        assert_eq!((lease.holder.as_str(), lease.epoch), ("c1", 1));
        assert_eq!(manager.check(Some(&lease), &[c1.clone(), c2.clone()], at(10)), Decision::Keep, "healthy holder");
        // c1 is gone: two failed checks are not enough.
        assert_eq!(manager.check(Some(&lease), std::slice::from_ref(&c2), at(20)), Decision::Keep);
        assert_eq!(manager.check(Some(&lease), std::slice::from_ref(&c2), at(30)), Decision::Keep);
        assert_eq!(manager.stats().consecutive_fails, 2);
        // The third, 30 s after the first failure.
        let moved = assigned(manager.check(Some(&lease), std::slice::from_ref(&c2), at(50)));
        assert_eq!((moved.holder.as_str(), moved.epoch), ("c2", 2));
        assert!(manager.stats().last_failover_at.is_some());
        // c1 returns: no preemption.
        assert_eq!(manager.check(Some(&moved), &[c1.clone(), c2.clone()], at(60)), Decision::Keep);
        // c2 fails within the cooldown: kept until the cooldown ends.
        for t in [70, 80, 90, 100] {
            assert_eq!(manager.check(Some(&moved), std::slice::from_ref(&c1), at(t)), Decision::Keep, "cooldown at {t}");
        }
        assert_eq!(assigned(manager.check(Some(&moved), std::slice::from_ref(&c1), at(111))).holder, "c1");
    }

    #[test]
    fn a_new_leader_goes_on_counting_a_dead_holders_missing_time() {
        let c1 = member("c1", "compactor", 1, true);
        let c2 = member("c2", "compactor", 2, true);
        let mut first = LeaseManager::new(LeaseTimings::default());
        let lease = assigned(first.check(None, std::slice::from_ref(&c1), at(0)));
        // c1 dies; a one-shot c2 leads for one check, then leaves.
        assert_eq!(first.check(Some(&lease), std::slice::from_ref(&c2), at(10)), Decision::Keep);
        let stats = first.stats();
        assert_eq!(stats.holder_missing_since, Some(at(10)));
        // The next one-shot node leads 40 s later: past the failover timeout.
        let mut next = LeaseManager::resume(LeaseTimings::default(), Some(&stats), Some(&lease));
        assert_eq!(assigned(next.check(Some(&lease), std::slice::from_ref(&c2), at(50))).holder, "c2");
        // Without the stats it would start counting again.
        let mut fresh = LeaseManager::new(LeaseTimings::default());
        assert_eq!(fresh.check(Some(&lease), std::slice::from_ref(&c2), at(50)), Decision::Keep);
    }

    #[test]
    fn a_flapping_holder_resets_the_count() {
        let mut manager = LeaseManager::new(LeaseTimings::default());
        let c1 = member("c1", "compactor", 1, true);
        let c2 = member("c2", "compactor", 2, true);
        let lease = assigned(manager.check(None, &[c1.clone(), c2.clone()], at(0)));
        for t in (10..200).step_by(20) {
            assert_eq!(manager.check(Some(&lease), std::slice::from_ref(&c2), at(t)), Decision::Keep);
            assert_eq!(manager.check(Some(&lease), &[c1.clone(), c2.clone()], at(t + 10)), Decision::Keep);
        }
    }

    #[test]
    fn manual_failover_follows_arcs_errors() {
        let mut manager = LeaseManager::new(LeaseTimings::default());
        let members = [member("c1", "compactor", 1, true), member("c2", "compactor", 2, true)];
        assert_eq!(manager.manual_failover(None, &members, at(0)), Err(FailoverError::NoHolder));
        let lease = assigned(manager.check(None, &members, at(0)));
        manager.set_in_progress(true);
        assert_eq!(manager.manual_failover(Some(&lease), &members, at(1)), Err(FailoverError::InProgress));
        manager.set_in_progress(false);
        let moved = manager.manual_failover(Some(&lease), &members, at(1)).unwrap();
        assert_eq!(moved.holder, "c2");
        assert_eq!(manager.manual_failover(Some(&moved), &members[1..], at(2)), Err(FailoverError::NoCandidate));
        let stats = serde_json::to_value(manager.stats()).unwrap();
        for field in ["running", "active_compactor_id", "consecutive_fails", "failover_in_progress", "cooldown_period", "last_failover_at"]
        {
            assert!(stats.get(field).is_some(), "Arc's stats field {field}: {stats}");
        }
        assert_eq!(stats["cooldown_period"], "60s");
    }
}
