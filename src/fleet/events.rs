//! The decisions an operator looks for in `kubectl describe pod`, as Kubernetes Events: which
//! ones, their words, and how often. Pure; [`super::kubernetes`] sends them.
//!
//! | reason                 | type    | when                                                   |
//! |------------------------|---------|--------------------------------------------------------|
//! | `MemorySustainedHigh`  | Warning | memory asks for a drain (sustained, or idle)           |
//! | `TeardownStuck`        | Warning | the server can no longer tear sessions down            |
//! | `DrainStarted`         | Normal  | the instance takes no new sessions                     |
//! | `DrainDeferred`        | Normal  | the drain waits for a slot, with who holds them        |
//! | `RecycleRequested`     | Warning | the server is to be restarted                          |
//! | `Recovered`            | Normal  | healthy again after a recycle or a stall               |
//!
//! The note is the reason memprobe logs, with its numbers; reasons never carry a secret.
//! Each reason is sent at most once a minute (`DrainDeferred` once every ten), and no more
//! than [`PER_HOUR`] Events an hour in all: a flapping instance cannot flood the API server.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::units::clip;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    MemorySustainedHigh,
    TeardownStuck,
    DrainStarted,
    DrainDeferred,
    RecycleRequested,
    Recovered,
}

impl Reason {
    #[cfg(test)]
    pub const ALL: [Reason; 6] = [
        Reason::MemorySustainedHigh,
        Reason::TeardownStuck,
        Reason::DrainStarted,
        Reason::DrainDeferred,
        Reason::RecycleRequested,
        Reason::Recovered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MemorySustainedHigh => "MemorySustainedHigh",
            Reason::TeardownStuck => "TeardownStuck",
            Reason::DrainStarted => "DrainStarted",
            Reason::DrainDeferred => "DrainDeferred",
            Reason::RecycleRequested => "RecycleRequested",
            Reason::Recovered => "Recovered",
        }
    }

    /// `Normal` or `Warning`.
    pub fn kind(self) -> &'static str {
        match self {
            Reason::MemorySustainedHigh | Reason::TeardownStuck | Reason::RecycleRequested => {
                "Warning"
            }
            _ => "Normal",
        }
    }

    /// The event's `action`: what memprobe did.
    pub fn action(self) -> &'static str {
        match self {
            Reason::MemorySustainedHigh => "Observe",
            Reason::TeardownStuck => "Drain",
            Reason::DrainStarted => "Drain",
            Reason::DrainDeferred => "Wait",
            Reason::RecycleRequested => "Recycle",
            Reason::Recovered => "Observe",
        }
    }

    fn min_gap(self) -> Duration {
        match self {
            Reason::DrainDeferred => Duration::from_secs(600),
            _ => Duration::from_secs(60),
        }
    }
}

/// One Event to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub reason: Reason,
    /// One line, at most [`MAX_NOTE`] bytes (the API server's limit is 1 KiB).
    pub text: String,
}

pub const MAX_NOTE: usize = 512;

/// Events sent in an hour, at most.
pub const PER_HOUR: usize = 30;

impl Note {
    pub fn new(reason: Reason, text: &str) -> Self {
        Note {
            reason,
            text: clip(text, MAX_NOTE),
        }
    }
}

/// Says which Events may be sent now.
#[derive(Debug, Default)]
pub struct Limiter {
    last: Vec<(Reason, Instant)>,
    sent: VecDeque<Instant>,
}

impl Limiter {
    /// Whether `reason` may be sent at `now`; if so, counts it sent.
    pub fn allow(&mut self, reason: Reason, now: Instant) -> bool {
        while self
            .sent
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= Duration::from_secs(3600))
        {
            self.sent.pop_front();
        }
        if self.sent.len() >= PER_HOUR {
            return false;
        }
        let last = self.last.iter_mut().find(|(r, _)| *r == reason);
        if let Some((_, at)) = &last
            && now.saturating_duration_since(*at) < reason.min_gap()
        {
            return false;
        }
        match last {
            Some((_, at)) => *at = now,
            None => self.last.push((reason, now)),
        }
        self.sent.push_back(now);
        true
    }
}

/// Turns what the monitor says into Events, by the table above.
#[derive(Debug, Default)]
pub struct Teller {
    /// Memory's ask for a drain has been told (`MemorySustainedHigh`) for this run over the
    /// threshold.
    told_high: bool,
    /// A recycle or a stall is under way: the next healthy state is a recovery.
    recovering: bool,
}

impl Teller {
    /// The Event of a server that can no longer tear sessions down; the drain it causes is
    /// not memory's.
    pub fn stuck(&mut self, why: &str) -> Vec<Note> {
        self.told_high = true;
        vec![Note::new(Reason::TeardownStuck, why)]
    }

    /// The Events a transition makes.
    pub fn transition(
        &mut self,
        to: crate::policy::State,
        reason: &str,
        requested: bool,
    ) -> Vec<Note> {
        use crate::policy::State;
        let mut notes = Vec::new();
        match to {
            State::Draining => {
                if !requested && !self.told_high {
                    notes.push(Note::new(Reason::MemorySustainedHigh, reason));
                }
                self.told_high = true;
                notes.push(Note::new(Reason::DrainStarted, reason));
            }
            State::Recycle => {
                self.recovering = true;
                notes.push(Note::new(Reason::RecycleRequested, reason));
            }
            State::Stalled => self.recovering = true,
            State::Healthy => {
                self.told_high = false;
                if std::mem::take(&mut self.recovering) {
                    notes.push(Note::new(Reason::Recovered, reason));
                }
            }
            State::Starting => self.told_high = false,
            _ => {}
        }
        notes
    }

    /// The Events of a drain held back at the gate: memory's ask, once, then the wait.
    pub fn deferred(&mut self, memory_high: bool, reason: &str, wait: &str) -> Vec<Note> {
        let mut notes = Vec::new();
        if memory_high && !self.told_high {
            self.told_high = true;
            let memory = reason
                .split("; waiting for a drain slot")
                .next()
                .unwrap_or(reason);
            notes.push(Note::new(Reason::MemorySustainedHigh, memory));
        }
        notes.push(Note::new(Reason::DrainDeferred, wait));
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::State;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_memory_drain_tells_the_high_memory_then_the_drain_and_an_operators_only_the_drain() {
        let mut t = Teller::default();
        let notes = t.transition(
            State::Draining,
            "rss 1.2 GiB over threshold 1 GiB for 5m",
            false,
        );
        let reasons: Vec<_> = notes.iter().map(|n| n.reason).collect();
        assert_eq!(reasons, [Reason::MemorySustainedHigh, Reason::DrainStarted]);
        assert_eq!(notes[0].text, "rss 1.2 GiB over threshold 1 GiB for 5m");
        let mut t = Teller::default();
        let notes = t.transition(State::Draining, "drain requested by admin", true);
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].reason, Reason::DrainStarted);
    }

    #[test]
    fn a_deferred_drain_tells_the_memory_once_and_the_wait_each_time() {
        let mut t = Teller::default();
        let why =
            "rss 1.2 GiB over threshold 1 GiB for 5m; waiting for a drain slot: held by kms-1";
        let wait = "waiting for a drain slot: held by kms-1";
        let first = t.deferred(true, why, wait);
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].text, "rss 1.2 GiB over threshold 1 GiB for 5m");
        assert_eq!(first[1].reason, Reason::DrainDeferred);
        assert_eq!(first[1].text, wait);
        assert_eq!(t.deferred(true, why, wait).len(), 1);
        let notes = t.transition(State::Draining, "rss …", false);
        assert_eq!(notes.len(), 1, "the slot came: the drain alone");
    }

    #[test]
    fn a_stuck_teardown_is_a_warning_of_its_own_and_its_drain_is_not_memorys() {
        let mut t = Teller::default();
        let why = "kms teardown stuck: 16 pipelines released but not destroyed for 1m; threads 298";
        let notes = t.stuck(why);
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].reason, Reason::TeardownStuck);
        assert_eq!(notes[0].reason.kind(), "Warning");
        assert_eq!(notes[0].text, why);
        let notes = t.transition(State::Draining, why, false);
        assert_eq!(notes.len(), 1, "no MemorySustainedHigh: {notes:?}");
        assert_eq!(notes[0].reason, Reason::DrainStarted);
    }

    #[test]
    fn recovered_is_told_only_after_a_recycle_or_a_stall() {
        let mut t = Teller::default();
        assert!(
            t.transition(State::Healthy, "rss 1 GiB at or below", false)
                .is_empty()
        );
        t.transition(State::Recycle, "last session ended", false);
        t.transition(State::Starting, "found kms", false);
        let notes = t.transition(State::Healthy, "rss 100 MiB at or below", false);
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].reason, Reason::Recovered);
        assert_eq!(notes[0].reason.kind(), "Normal");
        assert_eq!(Reason::RecycleRequested.kind(), "Warning");
    }

    #[test]
    fn notes_are_one_short_line() {
        let n = Note::new(Reason::Recovered, &"x".repeat(5000));
        assert!(n.text.len() <= MAX_NOTE + 4);
    }

    #[test]
    fn each_reason_is_sent_at_most_once_a_minute_deferrals_every_ten_and_thirty_an_hour() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        assert!(l.allow(Reason::DrainStarted, t0));
        assert!(!l.allow(Reason::DrainStarted, t0 + 59 * S));
        assert!(l.allow(Reason::DrainStarted, t0 + 60 * S));
        assert!(l.allow(Reason::DrainDeferred, t0));
        assert!(!l.allow(Reason::DrainDeferred, t0 + 599 * S));
        assert!(l.allow(Reason::DrainDeferred, t0 + 600 * S));
        let mut l = Limiter::default();
        let mut sent = 0;
        for i in 0..3600u32 {
            for r in Reason::ALL {
                sent += usize::from(l.allow(r, t0 + i * S));
            }
        }
        assert_eq!(sent, PER_HOUR, "capped per hour");
    }
}
