//! The decision's settings as given: sizes not yet resolved against a memory limit, the
//! windows, and the server's stall rules. `config` builds them from flags; each incarnation
//! is then judged by the [`Policy`] they resolve to under its own limit.

use std::time::Duration;

use super::{Policy, ServerPolicy};
use crate::limit::MemoryLimit;
use crate::units::SizeOrPercent;

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `--threshold` and `--critical`, as given (a size or a share of the limit).
    pub threshold: SizeOrPercent,
    pub critical: Option<SizeOrPercent>,
    pub sustain: Duration,
    pub idle_sustain: Duration,
    /// `--recycle-when-idle-within`: the quiet-moment rule ([`super::quiet`]), off as `None`.
    pub quiet_within: Option<Duration>,
    pub drain_timeout: Duration,
    pub min_drain: Duration,
    /// How the server that memprobe talks to is judged when it stops answering.
    pub server: ServerPolicy,
    /// See [`Policy::reconnect_grace`].
    pub reconnect_grace: Duration,
    /// See [`Policy::max_gap`].
    pub max_gap: Duration,
}

impl Settings {
    /// The gap between two steps that is memprobe's own pause at this interval: more than a
    /// few intervals, with a 5 s floor so that a busy machine's late steps at short intervals
    /// do not count as one.
    pub fn max_gap_at(interval: Duration) -> Duration {
        (interval * 3).max(interval + Duration::from_secs(5))
    }

    /// The policy one incarnation is judged by, under its memory limit. Sizes that cannot
    /// work under that limit (checked at start against the flag or the host, and again here
    /// against the target's own cgroup) are made safe and the problem returned, to be said: a
    /// critical level at or below the threshold is dropped rather than recycle at once.
    pub fn resolve(
        &self,
        memory: &'static str,
        limit: MemoryLimit,
    ) -> (Policy, Option<SizeProblem>) {
        let threshold_bytes = self.threshold.resolve(limit.bytes).max(1);
        let mut critical_bytes = self.critical.map(|c| c.resolve(limit.bytes));
        let problem = check_sizes(self.threshold, self.critical, limit).err();
        if problem.is_some() {
            critical_bytes = critical_bytes.filter(|c| *c > threshold_bytes);
        }
        let policy = Policy {
            memory,
            threshold_bytes,
            critical_bytes,
            sustain: self.sustain,
            idle_sustain: self.idle_sustain,
            drain_timeout: self.drain_timeout,
            min_drain: self.min_drain,
            server: self.server.clone(),
            reconnect_grace: self.reconnect_grace,
            max_gap: self.max_gap,
        };
        (policy, problem)
    }
}

/// Why a threshold and a critical level cannot work under a memory limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeProblem {
    ThresholdZero,
    ThresholdOverLimit {
        threshold_bytes: u64,
    },
    CriticalNotAboveThreshold {
        threshold_bytes: u64,
        critical_bytes: u64,
    },
}

/// Checks a threshold and a critical level once resolved against `limit`.
pub fn check_sizes(
    threshold: SizeOrPercent,
    critical: Option<SizeOrPercent>,
    limit: MemoryLimit,
) -> Result<(), SizeProblem> {
    let threshold_bytes = threshold.resolve(limit.bytes);
    if threshold_bytes == 0 {
        return Err(SizeProblem::ThresholdZero);
    }
    if threshold_bytes > limit.bytes {
        return Err(SizeProblem::ThresholdOverLimit { threshold_bytes });
    }
    if let Some(critical) = critical {
        let critical_bytes = critical.resolve(limit.bytes);
        if critical_bytes <= threshold_bytes {
            return Err(SizeProblem::CriticalNotAboveThreshold {
                threshold_bytes,
                critical_bytes,
            });
        }
    }
    Ok(())
}
