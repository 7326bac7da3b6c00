//! The session count: KMS's pipeline list merged with the events around it, and when to ask
//! for the list again.
//!
//! Two things make a naive count wrong on a real KMS. First, events and replies race: an
//! `ObjectCreated` or `ObjectDestroyed` can arrive before or after the reply to the request that
//! caused it, so events seen while `getPipelines` is in flight may describe changes the list
//! already holds, or changes made after the list was taken. Replacing the count by the list
//! would drop a pipeline created meanwhile — one short, and a drain recycling with that call
//! on. So the events seen between the request and its reply are replayed, in order, on top of
//! the list: created meanwhile, counted; destroyed meanwhile, not counted (ids are UUIDs,
//! never reused, so replaying a change the list already holds changes nothing).
//!
//! Second, a KMS that has run media for a while may stop sending `ObjectDestroyed` at all (see
//! the reference's "Pipelines that are never destroyed"): the count then only rises. So while
//! the count is above zero and no event has come for a garbage-collector period, the list is
//! fetched again — never more than once a period, since each `getPipelines` keeps abandoned
//! pipelines alive for up to one more period; and each fetch that changes nothing doubles the
//! wait before the next quiet one (up to [`super::RESYNC_EVERY`]), so a server that holds
//! long calls and says nothing is not asked every period for ever. Pipelines a fetch finds
//! gone without their event are counted as undestroyed once their event has had
//! [`EVENT_GRACE`] to arrive late.
//!
//! Third, a KMS whose worker pool has deadlocked (the reference's "A worker pool that
//! deadlocks") can no longer tear anything down: `release` is answered, `ObjectDestroyed`
//! never comes, `getPipelines` stops listing what was released, yet the media goes on running.
//! That is not fragmentation, and [`Pipelines::stuck`] says so when a teardown does not
//! finish within the timeout (`--kms-teardown-timeout`):
//!
//! - **memprobe's own check**: while KMS has pipelines (or had some since the last check),
//!   memprobe creates one empty `MediaPipeline` of its own every timeout and releases it at
//!   once; its `ObjectDestroyed` must come within the timeout. One at a time: a sick KMS gets
//!   at most one object from memprobe. It is never counted as a session, and it references
//!   no other pipeline, so it keeps none alive (no `getPipelines` is called for it);
//! - **a release seen at the gate**: a pipeline the gate saw released, still counted, with no
//!   `ObjectDestroyed` within the timeout;
//! - **a list that left a pipeline out**: gone from `getPipelines` without its event for the
//!   timeout.
//!
//! Once stuck (latched for the connection, and carried over a reconnect to the same server),
//! the list is what counts: it is fetched every [`LISTED_EVERY`] so that the drain ends
//! within seconds of the last *listed* pipeline's release — on a KMS that will be restarted,
//! the garbage-collection period no longer matters.
//!
//! Pure: time is passed in, nothing is read or sent here.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

/// The most pipelines followed: far more than one KMS runs, and a bound on what a broken or
/// hostile server can make memprobe keep (with ids of at most 256 bytes, a few MiB).
pub const MAX_PIPELINES: usize = 10_000;

/// How long after a list a missing pipeline's `ObjectDestroyed` may still arrive (KMS sends
/// it about half a second after the release, before or after other replies).
pub const EVENT_GRACE: Duration = Duration::from_secs(10);

/// How often the list is fetched once the teardown is stuck.
pub const LISTED_EVERY: Duration = Duration::from_secs(3);

/// How a teardown that does not finish shows itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// memprobe's own empty pipeline, released, not destroyed.
    Check,
    /// Pipelines released through the gate, not destroyed.
    Released,
    /// Pipelines `getPipelines` stopped listing, not destroyed.
    Unlisted,
}

impl Evidence {
    pub fn as_str(&self) -> &'static str {
        match self {
            Evidence::Check => "check",
            Evidence::Released => "released",
            Evidence::Unlisted => "unlisted",
        }
    }
}

/// A teardown that does not finish: when it was found, and what showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stuck {
    pub since: Instant,
    pub evidence: Evidence,
}

/// What the teardown looks like now, for the view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unfinished {
    /// Pipelines released (or no longer listed) whose `ObjectDestroyed` has not come.
    pub pipelines: usize,
    /// How long the oldest of them has waited.
    pub oldest: Duration,
}

/// memprobe's own check pipeline, at most one at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Check {
    /// None out: the last one ended at this time (or the list arrived).
    Idle { since: Instant },
    /// `create` sent, its reply not yet in.
    Creating,
    /// Created; `release` sent at `at` (None until it is).
    Out {
        id: String,
        released: Option<Instant>,
    },
    /// Its release failed: no verdict on it, and no other check on this connection.
    Abandoned,
}

/// A pipeline whose teardown memprobe is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Waiting {
    since: Instant,
    released: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Change {
    Created(String),
    Destroyed(String),
}

/// What a list changed in the count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// Pipelines live after the merge.
    pub count: usize,
    /// Counted before, absent from the list, with no `ObjectDestroyed` (yet).
    pub missing: usize,
    /// In the list, but never announced by `ObjectCreated`.
    pub unannounced: usize,
}

/// What a change did to the count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Changed,
    Unchanged,
    /// Over [`MAX_PIPELINES`]: not counted.
    Full,
}

/// The live pipelines of one connection, and the resync schedule.
#[derive(Debug)]
pub struct Pipelines {
    gc_period: Duration,
    live: HashSet<String>,
    /// Whether a list has arrived on this connection: before that the count is unknown.
    synced: bool,
    /// Changes seen since the list request in flight was sent, in order.
    in_flight: Option<Vec<Change>>,
    /// Pipelines a list left out without their event, and when: undestroyed unless the event
    /// comes within [`EVENT_GRACE`].
    missing: HashMap<String, Instant>,
    last_event: Option<Instant>,
    last_list: Option<Instant>,
    /// The wait before the next quiet resync: a period, doubled by each one that changed
    /// nothing.
    quiet_wait: Duration,
    /// `--kms-teardown-timeout`, or None (off): no check, no verdict.
    teardown_timeout: Option<Duration>,
    /// memprobe's own check pipelines: never counted, never listed as sessions.
    own: HashSet<String>,
    check: Check,
    /// An event (or a live pipeline) since the last check: a KMS with nothing going on is
    /// not asked.
    active: bool,
    /// Pipelines released or unlisted, not yet destroyed.
    waiting: HashMap<String, Waiting>,
    stuck: Option<Stuck>,
    /// The first `ObjectCreated` seen while the check's `create` was in flight: the check's
    /// own, or another's.
    early: Option<String>,
    /// Checks destroyed in time, not yet taken.
    passed: u64,
}

impl Pipelines {
    pub fn new(gc_period: Duration) -> Self {
        Pipelines {
            gc_period,
            live: HashSet::new(),
            synced: false,
            in_flight: None,
            missing: HashMap::new(),
            last_event: None,
            last_list: None,
            quiet_wait: gc_period,
            teardown_timeout: None,
            own: HashSet::new(),
            check: Check::Abandoned,
            active: false,
            waiting: HashMap::new(),
            stuck: None,
            early: None,
            passed: 0,
        }
    }

    /// Follows teardowns: each must finish within `timeout` (`--kms-teardown-timeout`).
    pub fn with_teardown_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.teardown_timeout = timeout;
        self
    }

    /// This server's teardown was found stuck before, on an earlier connection.
    pub fn stuck_before(&mut self, since: Instant, evidence: Evidence) {
        self.stuck.get_or_insert(Stuck { since, evidence });
    }

    /// Live pipelines, once a list has arrived on this connection.
    pub fn count(&self) -> Option<usize> {
        self.synced.then_some(self.live.len())
    }

    pub fn created(&mut self, now: Instant, id: &str) -> Applied {
        if self.own.contains(id) {
            return Applied::Unchanged;
        }
        if self.check == Check::Creating && self.early.is_none() {
            // Perhaps the check's own, ahead of the create's reply: activity only if not.
            self.early = Some(id.to_owned());
            self.last_event = Some(now);
        } else {
            self.event(now);
        }
        self.missing.remove(id);
        if let Some(changes) = &mut self.in_flight {
            changes.push(Change::Created(id.to_owned()));
        }
        if self.live.contains(id) {
            Applied::Unchanged
        } else if self.live.len() >= MAX_PIPELINES {
            Applied::Full
        } else {
            self.live.insert(id.to_owned());
            Applied::Changed
        }
    }

    pub fn destroyed(&mut self, now: Instant, id: &str) -> Applied {
        if self.own.remove(id) {
            if matches!(&self.check, Check::Out { id: out, .. } if out == id) {
                self.check = Check::Idle { since: now };
                if self.stuck.is_none() {
                    self.passed += 1;
                }
            }
            return Applied::Unchanged;
        }
        self.event(now);
        self.missing.remove(id);
        self.waiting.remove(id);
        if let Some(changes) = &mut self.in_flight {
            changes.push(Change::Destroyed(id.to_owned()));
        }
        if self.live.remove(id) {
            Applied::Changed
        } else {
            Applied::Unchanged
        }
    }

    fn event(&mut self, now: Instant) {
        self.last_event = Some(now);
        self.quiet_wait = self.gc_period;
        self.active = true;
    }

    /// `getPipelines` was sent: the events from now on are kept until its reply.
    pub fn list_requested(&mut self, now: Instant) {
        self.in_flight = Some(Vec::new());
        self.last_list = Some(now);
    }

    /// The list request got no answer: the count stays as the events made it.
    pub fn list_failed(&mut self) {
        self.in_flight = None;
    }

    /// The list arrived: it becomes the count, with the changes seen meanwhile on top.
    pub fn list_arrived<'a>(
        &mut self,
        now: Instant,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Merged {
        let changes = self.in_flight.take().unwrap_or_default();
        let mut merged: HashSet<String> = ids
            .into_iter()
            .filter(|id| !self.own.contains(*id))
            .take(MAX_PIPELINES)
            .map(str::to_owned)
            .collect();
        let unannounced = merged.difference(&self.live).count();
        for change in &changes {
            match change {
                Change::Created(id) if merged.len() < MAX_PIPELINES => {
                    merged.insert(id.clone());
                }
                Change::Created(_) => {}
                Change::Destroyed(id) => {
                    merged.remove(id);
                }
            }
        }
        let gone: Vec<String> = self.live.difference(&merged).cloned().collect();
        let missing = gone.len();
        let first = !self.synced;
        for id in gone {
            if self.waiting.len() < MAX_PIPELINES {
                self.waiting.entry(id.clone()).or_insert(Waiting {
                    since: now,
                    released: false,
                });
            }
            self.missing.entry(id).or_insert(now);
        }
        if first {
            self.check = Check::Idle { since: now };
        }
        let changed = first || merged != self.live;
        self.live = merged;
        self.synced = true;
        if changed {
            self.quiet_wait = self.gc_period;
        } else {
            self.quiet_wait = (self.quiet_wait * 2).min(super::RESYNC_EVERY.max(self.gc_period));
        }
        Merged {
            count: self.live.len(),
            missing: if first { 0 } else { missing },
            unannounced: if first { 0 } else { unannounced },
        }
    }

    /// Pipelines a list left out whose `ObjectDestroyed` has not come within [`EVENT_GRACE`]:
    /// returned once each, then forgotten.
    pub fn take_undestroyed(&mut self, now: Instant) -> usize {
        let before = self.missing.len();
        self.missing
            .retain(|_, since| now.saturating_duration_since(*since) < EVENT_GRACE);
        before - self.missing.len()
    }

    /// Whether to fetch the list now: the periodic resync, or a quiet count above zero.
    pub fn resync_due(&self, now: Instant) -> bool {
        if self.in_flight.is_some() {
            return false;
        }
        let Some(last_list) = self.last_list else {
            return true;
        };
        let since_list = now.saturating_duration_since(last_list);
        if self.stuck.is_some() {
            return !self.live.is_empty() && since_list >= LISTED_EVERY;
        }
        if since_list >= super::RESYNC_EVERY.max(self.gc_period) {
            return true;
        }
        let quiet_for = self
            .last_event
            .map_or(since_list, |at| now.saturating_duration_since(at));
        !self.live.is_empty() && since_list >= self.quiet_wait && quiet_for >= self.gc_period
    }
}

impl Pipelines {
    /// The gate saw `id` released: its `ObjectDestroyed` is due within the timeout.
    pub fn released(&mut self, now: Instant, id: &str) {
        if self.live.contains(id) && self.waiting.len() < MAX_PIPELINES {
            self.waiting.entry(id.to_owned()).or_insert(Waiting {
                since: now,
                released: true,
            });
        }
    }

    /// Whether to create a check pipeline now: none is out, the teardown is not already
    /// stuck, a list has arrived, KMS had pipelines since the last check, and a timeout has
    /// passed since it.
    pub fn check_due(&self, now: Instant) -> bool {
        let (Some(timeout), Check::Idle { since }) = (self.teardown_timeout, &self.check) else {
            return false;
        };
        self.stuck.is_none()
            && self.synced
            && (self.active || !self.live.is_empty())
            && now.saturating_duration_since(*since) >= timeout
    }

    /// The check's `create` is sent.
    pub fn check_creating(&mut self) {
        self.check = Check::Creating;
        self.active = false;
    }

    /// The check's `create` failed: try again a timeout from now.
    pub fn check_not_created(&mut self, now: Instant) {
        if self.early.take().is_some() {
            self.active = true;
        }
        self.check = Check::Idle { since: now };
    }

    /// The check pipeline is `id`: never counted (its `ObjectCreated` may have come first).
    /// Returns whether that changed the count.
    pub fn check_created(&mut self, id: &str) -> bool {
        if self.early.take().is_some_and(|early| early != id) {
            self.active = true;
        }
        self.own.insert(id.to_owned());
        self.check = Check::Out {
            id: id.to_owned(),
            released: None,
        };
        self.live.remove(id)
    }

    /// The check's `release` was answered: its `ObjectDestroyed` is due within the timeout
    /// (it may have come already).
    pub fn check_released(&mut self, now: Instant) {
        if let Check::Out { released, .. } = &mut self.check {
            released.get_or_insert(now);
        }
    }

    /// The check's `release` failed: no verdict on it, and no other check on this
    /// connection (a sick KMS gets at most one object from memprobe).
    pub fn check_abandoned(&mut self) {
        if matches!(self.check, Check::Out { .. } | Check::Creating) {
            self.check = Check::Abandoned;
        }
    }

    /// Checks destroyed in time since the last call.
    pub fn take_checks_passed(&mut self) -> u64 {
        std::mem::take(&mut self.passed)
    }

    /// Pipelines released or unlisted whose `ObjectDestroyed` has not come, the check's
    /// included once released.
    pub fn unfinished(&self, now: Instant) -> Unfinished {
        let mut oldest = Duration::ZERO;
        let mut pipelines = 0;
        let mut count = |since: Instant| {
            pipelines += 1;
            oldest = oldest.max(now.saturating_duration_since(since));
        };
        for w in self.waiting.values() {
            count(w.since);
        }
        if let Check::Out {
            released: Some(at), ..
        } = &self.check
        {
            count(*at);
        }
        Unfinished { pipelines, oldest }
    }

    /// Whether the teardown is stuck: found so now if a teardown has waited the timeout.
    /// Latched for the connection.
    pub fn stuck(&mut self, now: Instant) -> Option<&Stuck> {
        if self.stuck.is_none()
            && let Some(timeout) = self.teardown_timeout
        {
            let late = |since: &Instant| now.saturating_duration_since(*since) >= timeout;
            let evidence = if let Check::Out {
                released: Some(at), ..
            } = &self.check
                && late(at)
            {
                Some(Evidence::Check)
            } else if self.waiting.values().any(|w| w.released && late(&w.since)) {
                Some(Evidence::Released)
            } else if self.waiting.values().any(|w| late(&w.since)) {
                Some(Evidence::Unlisted)
            } else {
                None
            };
            self.stuck = evidence.map(|evidence| Stuck {
                since: now,
                evidence,
            });
        }
        self.stuck.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GC: Duration = Duration::from_secs(240);

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    /// A connection whose first list (of `ids`) has arrived at t0.
    fn synced(t0: Instant, ids: &[&str]) -> Pipelines {
        let mut p = Pipelines::new(GC);
        p.list_requested(t0);
        p.list_arrived(t0, ids.iter().copied());
        p
    }

    #[test]
    fn the_count_is_unknown_until_a_list_arrives() {
        let t0 = Instant::now();
        let mut p = Pipelines::new(GC);
        p.created(t0, "a");
        assert_eq!(p.count(), None, "events alone do not give a count");
        p.list_requested(t0);
        assert_eq!(p.count(), None);
        let merged = p.list_arrived(t0, ["a"]);
        assert_eq!(merged.count, 1);
        assert_eq!(p.count(), Some(1));
    }

    #[test]
    fn a_pipeline_created_while_the_list_is_in_flight_is_counted() {
        // Frames: -> invoke getPipelines; <- ObjectCreated p2; <- reply ["p1"] (taken before p2).
        let t0 = Instant::now();
        let mut p = synced(t0, &["p1"]);
        p.list_requested(at(t0, 600));
        p.created(at(t0, 600), "p2");
        let merged = p.list_arrived(at(t0, 600), ["p1"]);
        assert_eq!(
            merged.count, 2,
            "an older list never wipes out a pipeline created meanwhile"
        );
        assert_eq!(merged.missing, 0);
    }

    #[test]
    fn a_pipeline_created_meanwhile_and_already_listed_counts_once() {
        // The list was taken after the creation; the event came first anyway.
        let t0 = Instant::now();
        let mut p = synced(t0, &["p1"]);
        p.list_requested(at(t0, 600));
        p.created(at(t0, 600), "p2");
        assert_eq!(p.list_arrived(at(t0, 600), ["p1", "p2"]).count, 2);
    }

    #[test]
    fn a_pipeline_destroyed_while_the_list_is_in_flight_is_not_counted() {
        // -> getPipelines; <- ObjectDestroyed p1; <- reply ["p1","p2"] (taken before the destroy).
        let t0 = Instant::now();
        let mut p = synced(t0, &["p1", "p2"]);
        p.list_requested(at(t0, 600));
        p.destroyed(at(t0, 600), "p1");
        let merged = p.list_arrived(at(t0, 600), ["p1", "p2"]);
        assert_eq!(
            merged.count, 1,
            "a pipeline destroyed meanwhile is not revived"
        );
        assert_eq!(merged.missing, 0, "its event came: it is not undestroyed");
    }

    #[test]
    fn created_and_destroyed_meanwhile_is_not_counted() {
        let t0 = Instant::now();
        let mut p = synced(t0, &[]);
        p.list_requested(at(t0, 600));
        p.created(at(t0, 600), "p1");
        p.destroyed(at(t0, 600), "p1");
        assert_eq!(p.list_arrived(at(t0, 600), ["p1"]).count, 0);
        let mut p = synced(t0, &[]);
        p.list_requested(at(t0, 600));
        p.created(at(t0, 600), "p1");
        p.destroyed(at(t0, 600), "p1");
        assert_eq!(p.list_arrived(at(t0, 600), []).count, 0);
    }

    #[test]
    fn events_after_the_reply_apply_to_the_merged_count() {
        // An event that follows the reply of the list it is already in changes nothing; one
        // for a pipeline the list no longer has removes nothing.
        let t0 = Instant::now();
        let mut p = synced(t0, &["p1"]);
        p.list_requested(at(t0, 600));
        p.list_arrived(at(t0, 600), ["p1", "p2"]);
        assert_eq!(p.created(at(t0, 600), "p2"), Applied::Unchanged);
        assert_eq!(p.count(), Some(2));
        assert_eq!(p.destroyed(at(t0, 601), "p3"), Applied::Unchanged);
        assert_eq!(p.destroyed(at(t0, 601), "p1"), Applied::Changed);
        assert_eq!(p.count(), Some(1));
    }

    #[test]
    fn a_failed_list_leaves_the_event_count() {
        let t0 = Instant::now();
        let mut p = synced(t0, &["p1"]);
        p.list_requested(at(t0, 600));
        p.created(at(t0, 600), "p2");
        p.list_failed();
        assert_eq!(p.count(), Some(2));
        p.list_requested(at(t0, 1200));
        assert_eq!(
            p.list_arrived(at(t0, 1200), ["p1", "p2"]).count,
            2,
            "the journal of a failed list is not replayed on the next"
        );
    }

    #[test]
    fn pipelines_gone_without_their_event_are_undestroyed_after_the_grace() {
        let t0 = Instant::now();
        let mut p = synced(t0, &["p1", "p2", "p3"]);
        p.list_requested(at(t0, 600));
        let merged = p.list_arrived(at(t0, 600), []);
        assert_eq!(merged.count, 0, "the list is what KMS still holds");
        assert_eq!(merged.missing, 3);
        // p1's event was only late: it is not undestroyed.
        p.destroyed(at(t0, 601), "p1");
        assert_eq!(
            p.take_undestroyed(at(t0, 605)),
            0,
            "within the grace, not yet"
        );
        assert_eq!(p.take_undestroyed(at(t0, 611)), 2);
        assert_eq!(p.take_undestroyed(at(t0, 700)), 0, "each counted once");
    }

    #[test]
    fn the_first_list_of_a_connection_reports_no_drift() {
        let t0 = Instant::now();
        let mut p = Pipelines::new(GC);
        p.list_requested(t0);
        assert_eq!(
            p.list_arrived(t0, ["a", "b"]),
            Merged {
                count: 2,
                missing: 0,
                unannounced: 0
            }
        );
    }

    #[test]
    fn a_quiet_count_above_zero_is_checked_once_a_period() {
        let t0 = Instant::now();
        let mut p = synced(t0, &[]);
        p.created(at(t0, 10), "p1");
        assert!(
            !p.resync_due(at(t0, 200)),
            "not before a period since the list"
        );
        assert!(
            !p.resync_due(at(t0, 245)),
            "not before a period without events"
        );
        assert!(
            p.resync_due(at(t0, 250)),
            "quiet for a period with a count above zero"
        );
        p.list_requested(at(t0, 250));
        assert!(
            !p.resync_due(at(t0, 260)),
            "never while a list is in flight"
        );
        p.list_arrived(at(t0, 250), []);
        assert!(
            !p.resync_due(at(t0, 599)),
            "a count of zero waits for the periodic resync"
        );
        assert!(
            p.resync_due(at(t0, 850)),
            "the periodic resync comes anyway"
        );
    }

    #[test]
    fn a_count_of_zero_is_never_checked_early() {
        let t0 = Instant::now();
        let p = synced(t0, &[]);
        assert!(!p.resync_due(at(t0, 599)));
        assert!(p.resync_due(at(t0, 600)));
    }

    #[test]
    fn lists_are_never_fetched_faster_than_the_gc_period() {
        // Whatever the events do, two lists are at least a period apart.
        let t0 = Instant::now();
        let mut p = synced(t0, &["p1"]);
        let mut last = t0;
        for s in 1..5_000u64 {
            let now = at(t0, s);
            if s % 97 == 0 {
                p.created(now, &format!("x{s}"));
            }
            if p.resync_due(now) {
                assert!(
                    now - last >= GC,
                    "a list {:?} after the previous",
                    now - last
                );
                last = now;
                p.list_requested(now);
                p.list_arrived(now, ["p1"]);
            }
        }
    }

    #[test]
    fn quiet_lists_that_change_nothing_back_off() {
        // A server holding one long call and saying nothing is not asked every period.
        let t0 = Instant::now();
        let mut p = synced(t0, &["p1"]);
        let mut lists = Vec::new();
        for s in 1..3_600u64 {
            let now = at(t0, s);
            if p.resync_due(now) {
                lists.push(s);
                p.list_requested(now);
                p.list_arrived(now, ["p1"]);
            }
        }
        assert_eq!(lists, vec![240, 720, 1320, 1920, 2520, 3120]);
    }

    #[test]
    fn a_drift_is_corrected_within_a_period_of_the_last_event() {
        // KMS stopped sending ObjectDestroyed: the count is stuck at 2 though KMS holds none.
        let t0 = Instant::now();
        let mut p = synced(t0, &[]);
        p.created(at(t0, 100), "p1");
        p.created(at(t0, 130), "p2");
        let due = (131..1000).find(|s| p.resync_due(at(t0, *s)));
        assert_eq!(due, Some(370), "one period after the last event");
    }

    #[test]
    fn no_more_than_max_pipelines_are_counted() {
        let t0 = Instant::now();
        let mut p = synced(t0, &[]);
        for n in 0..MAX_PIPELINES {
            assert_eq!(p.created(t0, &format!("p{n}")), Applied::Changed);
        }
        assert_eq!(p.created(t0, "one-more"), Applied::Full);
        assert_eq!(p.count(), Some(MAX_PIPELINES));
    }

    const TIMEOUT: Duration = Duration::from_secs(20);

    fn followed(t0: Instant, ids: &[&str]) -> Pipelines {
        let mut p = Pipelines::new(GC).with_teardown_timeout(Some(TIMEOUT));
        p.list_requested(t0);
        p.list_arrived(t0, ids.iter().copied());
        p
    }

    /// Runs one check from creation to release at `at` seconds; returns its id.
    fn check_released(p: &mut Pipelines, t0: Instant, at: u64, id: &str) {
        assert!(p.check_due(self::at(t0, at)), "a check is due at {at}s");
        p.check_creating();
        p.check_created(id);
        p.check_released(self::at(t0, at));
    }

    #[test]
    fn a_check_that_is_destroyed_in_time_finds_nothing_and_is_never_a_session() {
        let t0 = Instant::now();
        let mut p = followed(t0, &["p1"]);
        assert!(!p.check_due(at(t0, 19)), "not before a timeout has passed");
        // Its ObjectCreated comes before the create's reply: counted for a moment, then not.
        p.check_creating();
        p.created(at(t0, 20), "check");
        assert_eq!(p.count(), Some(2));
        assert!(p.check_created("check"), "the count changes back");
        assert_eq!(p.count(), Some(1));
        p.check_released(at(t0, 20));
        assert_eq!(p.unfinished(at(t0, 21)).pipelines, 1);
        p.destroyed(at(t0, 21), "check");
        assert_eq!(p.count(), Some(1), "its destruction is no session's end");
        assert_eq!(p.unfinished(at(t0, 21)), Unfinished::default());
        assert_eq!(p.stuck(at(t0, 100)), None);
        assert!(
            !p.check_due(at(t0, 40)),
            "a timeout after the last one ended"
        );
        assert!(p.check_due(at(t0, 41)));
        // A list taken while a check is out never counts it.
        check_released(&mut p, t0, 41, "check2");
        p.list_requested(at(t0, 41));
        assert_eq!(p.list_arrived(at(t0, 41), ["p1", "check2"]).count, 1);
    }

    #[test]
    fn a_check_not_destroyed_within_the_timeout_is_a_stuck_teardown() {
        let t0 = Instant::now();
        let mut p = followed(t0, &["p1"]);
        check_released(&mut p, t0, 20, "check");
        assert_eq!(p.stuck(at(t0, 39)), None, "within the timeout");
        let stuck = p.stuck(at(t0, 40)).cloned().expect("stuck at the timeout");
        assert_eq!(stuck.evidence, Evidence::Check);
        assert_eq!(stuck.since, at(t0, 40));
        assert_eq!(
            p.unfinished(at(t0, 50)),
            Unfinished {
                pipelines: 1,
                oldest: Duration::from_secs(30)
            }
        );
        assert!(
            !p.check_due(at(t0, 100)),
            "a sick KMS gets one object, no more"
        );
        assert_eq!(p.count(), Some(1), "the check is never a session");
    }

    #[test]
    fn an_idle_kms_is_not_checked() {
        let t0 = Instant::now();
        let mut p = followed(t0, &[]);
        assert!(
            !p.check_due(at(t0, 3600)),
            "no pipeline, no event: nothing to check"
        );
        p.created(at(t0, 3600), "p1");
        p.destroyed(at(t0, 3601), "p1");
        assert!(p.check_due(at(t0, 3601)), "a session came and went since");
        p.check_creating();
        p.created(at(t0, 3601), "check");
        p.check_created("check");
        p.check_released(at(t0, 3601));
        p.destroyed(at(t0, 3602), "check");
        assert!(
            !p.check_due(at(t0, 7200)),
            "its own check's events are no activity"
        );
        // Another pipeline's event while the check's create is in flight is activity.
        let mut p = followed(t0, &[]);
        p.created(at(t0, 1), "p1");
        p.destroyed(at(t0, 2), "p1");
        p.check_creating();
        p.created(at(t0, 20), "p2");
        p.check_created("check");
        p.check_released(at(t0, 20));
        p.destroyed(at(t0, 21), "check");
        p.destroyed(at(t0, 22), "p2");
        assert!(
            p.check_due(at(t0, 41)),
            "p2 was another's: the next check is due"
        );
    }

    #[test]
    fn checks_are_off_without_a_timeout() {
        let t0 = Instant::now();
        let mut p = synced(t0, &["p1"]);
        assert!(!p.check_due(at(t0, 3600)));
        p.released(at(t0, 0), "p1");
        assert_eq!(p.stuck(at(t0, 3600)), None);
    }

    #[test]
    fn a_check_whose_release_failed_is_never_judged_and_never_repeated() {
        let t0 = Instant::now();
        let mut p = followed(t0, &["p1"]);
        assert!(p.check_due(at(t0, 20)));
        p.check_creating();
        p.check_created("check");
        p.check_abandoned();
        assert_eq!(p.stuck(at(t0, 3600)), None);
        assert!(!p.check_due(at(t0, 3600)));
        let mut p = followed(t0, &["p1"]);
        p.check_creating();
        p.check_not_created(at(t0, 20));
        assert!(
            !p.check_due(at(t0, 39)),
            "a failed create is retried a timeout later"
        );
        assert!(p.check_due(at(t0, 40)));
    }

    #[test]
    fn a_release_seen_at_the_gate_must_end_in_its_destruction() {
        let t0 = Instant::now();
        let mut p = followed(t0, &["p1", "p2"]);
        p.released(at(t0, 10), "p1");
        p.released(at(t0, 10), "unknown");
        assert_eq!(
            p.unfinished(at(t0, 11)).pipelines,
            1,
            "only a counted pipeline"
        );
        p.destroyed(at(t0, 11), "p1");
        assert_eq!(p.stuck(at(t0, 100)), None, "destroyed in time");
        p.released(at(t0, 100), "p2");
        assert_eq!(p.stuck(at(t0, 119)), None);
        let stuck = p.stuck(at(t0, 120)).cloned().expect("stuck");
        assert_eq!(stuck.evidence, Evidence::Released);
    }

    #[test]
    fn a_pipeline_unlisted_without_its_event_for_the_timeout_is_a_stuck_teardown() {
        let t0 = Instant::now();
        let mut p = followed(t0, &["p1", "p2"]);
        p.list_requested(at(t0, 300));
        p.list_arrived(at(t0, 300), ["p2"]);
        assert_eq!(p.stuck(at(t0, 319)), None);
        let stuck = p.stuck(at(t0, 320)).cloned().expect("stuck");
        assert_eq!(stuck.evidence, Evidence::Unlisted);
        // A late event clears the pipeline, not the verdict.
        p.destroyed(at(t0, 321), "p1");
        assert_eq!(p.unfinished(at(t0, 321)).pipelines, 0);
        assert!(p.stuck(at(t0, 321)).is_some(), "latched");
    }

    #[test]
    fn once_stuck_the_list_counts_and_is_fetched_every_few_seconds() {
        let t0 = Instant::now();
        let mut p = followed(t0, &["p1", "p2"]);
        p.stuck_before(t0, Evidence::Check);
        assert!(!p.resync_due(at(t0, 2)));
        assert!(
            p.resync_due(at(t0, 3)),
            "not a gc period: every {LISTED_EVERY:?}"
        );
        p.list_requested(at(t0, 3));
        // p1 released: no event ever, but no longer listed: no longer a session.
        assert_eq!(p.list_arrived(at(t0, 3), ["p2"]).count, 1);
        assert!(p.resync_due(at(t0, 6)));
        p.list_requested(at(t0, 6));
        assert_eq!(p.list_arrived(at(t0, 6), []).count, 0);
        assert!(!p.resync_due(at(t0, 60)), "nothing left to wait for");
        assert_eq!(p.unfinished(at(t0, 6)).pipelines, 2);
    }
}
