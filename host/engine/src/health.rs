//! How each tier's policy has been doing, cycle over cycle, and when a tier
//! that keeps failing is suspended.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Consecutive cycles whose policy calls failed after which a tier is
/// suspended.
pub(crate) const SUSPEND_AFTER_FAILING_CYCLES: u32 = 3;
/// The first suspension; each further one in a row doubles, up to a day.
const FIRST_SUSPENSION_MINUTES: i64 = 10;
const LONGEST_SUSPENSION_MINUTES: i64 = 24 * 60;

/// How a tier's policy has been doing, cycle over cycle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TierHealth {
    /// Cycles in a row in which a call of its policy failed (trap, fuel,
    /// deadline, memory, refused configuration).
    pub consecutive_failures: u32,
    /// Suspended until then: its cycles are skipped and reported.
    pub suspended_until: Option<DateTime<Utc>>,
    /// Suspensions in a row (the backoff doubles with each).
    pub suspensions: u32,
    /// The last failure.
    pub last_error: Option<String>,
}

impl TierHealth {
    /// Records one cycle of the tier at `now`: `failure` is the first
    /// policy failure of the cycle, if any. Returns whether the tier has
    /// just been suspended.
    pub fn record(&mut self, failure: Option<String>, now: DateTime<Utc>) -> bool {
        let Some(failure) = failure else {
            *self = Self::default();
            return false;
        };
        self.consecutive_failures += 1;
        self.last_error = Some(failure);
        if self.consecutive_failures < SUSPEND_AFTER_FAILING_CYCLES {
            return false;
        }
        let minutes = FIRST_SUSPENSION_MINUTES.saturating_mul(1 << self.suspensions.min(16)).min(LONGEST_SUSPENSION_MINUTES);
        self.suspensions += 1;
        self.suspended_until = Some(now + chrono::Duration::minutes(minutes));
        true
    }

    /// Why a suspended tier is not asked, as plans and cycles report it.
    pub fn suspension_note(&self) -> String {
        format!(
            "suspended until {} after {} cycles in a row whose policy calls failed (last: {}); not asked; a new build of its component (then a reload) lifts it sooner",
            self.suspended_until.map(|t| t.to_rfc3339()).unwrap_or_default(),
            self.consecutive_failures,
            self.last_error.as_deref().unwrap_or_default()
        )
    }

    /// Whether the tier is suspended at `now`.
    pub fn is_suspended(&self, now: DateTime<Utc>) -> bool {
        self.suspended_until.is_some_and(|until| now < until)
    }
}
