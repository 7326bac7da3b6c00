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
        }
    }

    /// Live pipelines, once a list has arrived on this connection.
    pub fn count(&self) -> Option<usize> {
        self.synced.then_some(self.live.len())
    }

    pub fn created(&mut self, now: Instant, id: &str) -> Applied {
        self.event(now);
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
        self.event(now);
        self.missing.remove(id);
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
        for id in gone {
            self.missing.entry(id).or_insert(now);
        }
        let first = !self.synced;
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
        if since_list >= super::RESYNC_EVERY.max(self.gc_period) {
            return true;
        }
        let quiet_for = self
            .last_event
            .map_or(since_list, |at| now.saturating_duration_since(at));
        !self.live.is_empty() && since_list >= self.quiet_wait && quiet_for >= self.gc_period
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
}
