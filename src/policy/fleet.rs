//! The fleet's rules: a drain budget shared by the instances of one server, on leases that the
//! API server keeps (Kubernetes `coordination.k8s.io/v1` Leases). Pure: [`Member`] is told
//! what the leases looked like and what its instance needs, and answers with the one request
//! to make next; it reads no clock and opens no socket, so every rule here is a unit test.
//!
//! - **Slots.** The budget is `slots` leases, `memprobe-<fleet>-slot-<i>`. An instance whose
//!   memory asks for a drain may drain only while it holds one. It takes a free one (absent,
//!   released, or expired) by creating it, or by replacing it at the `resourceVersion` it saw:
//!   the API server accepts one writer per version and answers 409 to the others, so two
//!   instances never hold one slot, whatever each believes.
//! - **Expiry by observation.** A lease is expired when its holder and renew time have not
//!   changed for its `leaseDurationSeconds`, as this instance saw them on its own clock (as
//!   client-go's leader election does): clocks of different nodes are never compared.
//! - **Holding.** A holder renews at a third of the duration, and keeps its slot until the
//!   recycled server's new incarnation is healthy again, not when the drain starts: a restart
//!   loop never frees the budget for the next instance.
//! - **Who goes first.** A waiter that cannot take a slot writes a lease of its own,
//!   `memprobe-<fleet>-wait-<pod>`, with how full it is (memory over its limit). A free slot is
//!   taken only by the fullest live waiter (ties: the pod name) among those the taker sees.
//!   There is no central queue: each waiter reads the same leases and comes to the same
//!   answer, and where two views differ for a moment the API server still lets one take it.
//! - **Cost.** While it waits, an instance makes at most one request per tick
//!   (`max(--interval, 10 s)`); while healthy, none.
//! - **The API server away.** No new drain starts through the fleet; a drain already holding a
//!   slot goes on (the decider latched it); `--critical` still recycles. A lease unchanged
//!   while this instance could not see it is not expired: after a failure, every lease is
//!   watched afresh for its whole duration, and a holder retries at a third of it, so its
//!   renewal comes first once the server is back.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::State;

/// The least time between two requests of a waiting instance.
pub const MIN_TICK: Duration = Duration::from_secs(10);

/// How often a percentage budget counts the fleet's pods again, while it waits.
pub const RECOUNT: Duration = Duration::from_secs(300);

/// A holder whose server has not come back healthy this long after its recycle gives its
/// slot up: a restart takes seconds, a crash-looping container is started again within five
/// minutes, and a server that never comes back must not hold the fleet's drains for ever.
pub const GIVE_UP_AFTER_RECYCLE: Duration = Duration::from_secs(600);

/// `--fleet-drain-budget`: how many instances may drain at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    Instances(u32),
    /// A share of the fleet's pods, rounded down, never less than one.
    Percent(f64),
}

impl Budget {
    /// The number of slots, given the fleet's pods when counted.
    pub fn slots(self, pods: Option<u32>) -> u32 {
        match self {
            Budget::Instances(n) => n.max(1),
            Budget::Percent(p) => {
                let pods = f64::from(pods.unwrap_or(1));
                ((pods * p / 100.0).floor() as u32).max(1)
            }
        }
    }

    pub fn needs_count(self) -> bool {
        matches!(self, Budget::Percent(_))
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Instances(n) => write!(f, "{n}"),
            Budget::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// One lease as the API server listed it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    pub name: String,
    pub holder: Option<String>,
    /// `renewTime` as written, compared only for change.
    pub renewed: Option<String>,
    pub duration: Duration,
    pub version: String,
    /// A waiter's fullness (its memory over its limit, 0 to 1), on wait leases.
    pub fullness: Option<f64>,
}

/// What the instance needs of the fleet at this step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Need {
    /// Memory (or the quiet-moment rule) asks for a drain that waits for a slot.
    pub wants: bool,
    /// Memory over the limit, 0 to 1: who goes first.
    pub fullness: f64,
}

/// The one request to make now.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Action {
    /// Nothing is due.
    Idle,
    /// Read this instance's own pod (its uid, owner and labels), once.
    ReadPod,
    /// Count the fleet's pods (a percentage budget).
    CountPods,
    /// List the fleet's leases.
    List,
    /// Take a slot: create it (`version` none) or replace it at `version`.
    Take {
        slot: String,
        version: Option<String>,
    },
    Renew {
        slot: String,
        version: String,
    },
    Release {
        slot: String,
        version: String,
    },
    /// Write this instance's wait lease, with its fullness.
    WriteWait {
        version: Option<String>,
        fullness: f64,
    },
    DeleteWait,
}

/// What became of a request.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Answer {
    /// The pod was read.
    Pod,
    Counted(u32),
    Listed(Vec<Seen>),
    /// A lease was written; its new `resourceVersion`.
    Written(String),
    Deleted,
    /// 409 or 404: somebody else's write won, or the object is gone.
    Lost,
    /// Anything else: the API server could not be asked or refused.
    Failed(String),
}

/// Why a drain cannot start through the fleet now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The leases have not been read yet.
    Asking,
    /// Every slot is held.
    HeldBy(Vec<String>),
    /// A slot is free, but a fuller instance goes first.
    Behind { pod: String, percent: u32 },
    /// The API server cannot be reached (or refuses).
    Unreachable(String),
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wait::Asking => write!(f, "waiting for a drain slot: asking the fleet"),
            Wait::HeldBy(holders) => {
                write!(
                    f,
                    "waiting for a drain slot: held by {}",
                    holders.join(", ")
                )
            }
            Wait::Behind { pod, percent } => write!(
                f,
                "waiting for a drain slot: {pod} goes first ({percent}% of its memory limit)"
            ),
            Wait::Unreachable(why) => write!(
                f,
                "waiting for a drain slot: the API server cannot be reached ({why}); \
                 no drain starts through the fleet until it can"
            ),
        }
    }
}

/// The names of a fleet's leases.
#[derive(Clone, Debug, PartialEq)]
pub struct Names {
    pub fleet: String,
    pub me: String,
}

impl Names {
    pub fn slot(&self, i: u32) -> String {
        format!("memprobe-{}-slot-{i}", self.fleet)
    }

    pub fn wait(&self) -> String {
        format!("memprobe-{}-wait-{}", self.fleet, self.me)
    }

    // Read without building the prefix: a waiter reads every lease of the fleet every tick.
    fn is_slot(&self, name: &str) -> Option<u32> {
        name.strip_prefix("memprobe-")?
            .strip_prefix(self.fleet.as_str())?
            .strip_prefix("-slot-")?
            .parse()
            .ok()
    }

    fn waiter<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix("memprobe-")?
            .strip_prefix(self.fleet.as_str())?
            .strip_prefix("-wait-")
    }
}

/// A lease's holder and renew time, and since when this instance has seen them unchanged.
#[derive(Clone, Debug)]
struct Observed {
    holder: Option<String>,
    renewed: Option<String>,
    since: Instant,
}

/// The slot this instance holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    pub slot: String,
    pub version: String,
    pub renewed_at: Instant,
}

/// One instance's part in the fleet.
#[derive(Debug)]
pub struct Member {
    names: Names,
    budget: Budget,
    lease: Duration,
    tick: Duration,
    held: Option<Held>,
    /// A drain, its recycle and the next incarnation's start are under way: a slot held is
    /// kept until the instance is healthy again.
    keep: bool,
    /// Told of a recycle and not healthy since: when that was first seen by [`Member::next`].
    recycled: Option<Option<Instant>>,
    /// The slot was given up because the server did not come back within
    /// [`GIVE_UP_AFTER_RECYCLE`].
    gave_up: bool,
    /// This instance's wait lease, as last written: its version and when.
    wait: Option<(String, Instant)>,
    /// The last listing, and whether it is fresh: a listing allows one action, then the
    /// next action is a new listing.
    listed: Option<Vec<Seen>>,
    fresh: bool,
    /// When that listing was answered: leases are judged as they were then, never as if
    /// nothing had changed since (a lease shorter than a tick would always look expired).
    listed_at: Option<Instant>,
    observed: HashMap<String, Observed>,
    pod_read: bool,
    pods: Option<(u32, Instant)>,
    last_request: Option<Instant>,
    /// The API server's last failure, while it lasts.
    failing: Option<String>,
    /// What the last [`Member::next`] answered: the request under way.
    pending: Option<Action>,
}

impl Member {
    /// `lease`: the slots' `leaseDurationSeconds`; `interval`: memprobe's `--interval`.
    pub fn new(names: Names, budget: Budget, lease: Duration, interval: Duration) -> Self {
        Member {
            names,
            budget,
            lease,
            tick: interval.max(MIN_TICK),
            held: None,
            keep: false,
            recycled: None,
            gave_up: false,
            wait: None,
            listed: None,
            fresh: false,
            listed_at: None,
            observed: HashMap::new(),
            pod_read: false,
            pods: None,
            last_request: None,
            failing: None,
            pending: None,
        }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The fleet's name, once known (read from the pod's owner when not given).
    pub fn set_fleet(&mut self, fleet: String) {
        self.names.fleet = fleet;
    }

    /// The API server's last failure, while it lasts.
    pub fn failing(&self) -> Option<&str> {
        self.failing.as_deref()
    }

    /// A wait lease outlives a slot's: renewed at a third of its duration, it costs a request
    /// every two ticks at most, and leaves the listings between them, which are what find a
    /// free slot, most of the waiter's requests.
    pub fn wait_duration(&self) -> Duration {
        (self.lease * 2).max(self.tick * 6)
    }

    /// The instance changed state. A drain of memory's (not an operator's, which needs no
    /// slot) or a recycle keeps the slot held; being healthy again gives it back.
    pub fn told(&mut self, to: State, requested: bool) {
        match to {
            State::Draining if !requested => self.keep = true,
            State::Recycle => {
                self.keep = true;
                self.recycled.get_or_insert(None);
            }
            State::Healthy => {
                self.keep = false;
                self.recycled = None;
                self.gave_up = false;
            }
            _ => {}
        }
    }

    /// The slot was given up because the server did not come back healthy within
    /// [`GIVE_UP_AFTER_RECYCLE`] of its recycle (until it is healthy again).
    pub fn gave_up(&self) -> bool {
        self.gave_up
    }

    pub fn held(&self) -> Option<&Held> {
        self.held.as_ref()
    }

    /// The slots of the budget, as counted now.
    pub fn slots(&self) -> u32 {
        self.budget.slots(self.pods.map(|(n, _)| n))
    }

    #[cfg(test)]
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// The request to make now, if any; at most one is under way at a time.
    pub fn next(&mut self, now: Instant, need: Need) -> Action {
        if self.pending.is_some() {
            return Action::Idle;
        }
        let action = self.plan(now, need);
        if action != Action::Idle {
            self.last_request = Some(now);
            self.pending = Some(action.clone());
        }
        action
    }

    fn plan(&mut self, now: Instant, need: Need) -> Action {
        // A holder's and a leaver's requests are not paced by the tick. While the API server
        // fails, a holder tries again at a third of its lease, so that its renewal comes
        // before anyone can count the slot expired once the server is back; others at a tick.
        let pace = match (self.failing.is_some(), self.held.is_some()) {
            (false, _) => Duration::from_secs(1),
            (true, true) => (self.lease / 3).max(Duration::from_secs(1)),
            (true, false) => self.tick,
        };
        if self.since_last(now) < pace {
            return Action::Idle;
        }
        if let Some(since) = &mut self.recycled {
            let since = *since.get_or_insert(now);
            if self.keep && now.saturating_duration_since(since) >= GIVE_UP_AFTER_RECYCLE {
                self.keep = false;
                self.gave_up = self.held.is_some();
                self.recycled = None;
            }
        }
        if let Some(held) = &self.held {
            if !self.keep && !need.wants {
                return Action::Release {
                    slot: held.slot.clone(),
                    version: held.version.clone(),
                };
            }
            if now >= held.renewed_at + self.lease / 3 {
                return Action::Renew {
                    slot: held.slot.clone(),
                    version: held.version.clone(),
                };
            }
            // A wait lease left behind would hold the others back.
            if self.wait.is_some() {
                return Action::DeleteWait;
            }
            return Action::Idle;
        }
        if !need.wants {
            if self.wait.is_some() {
                return Action::DeleteWait;
            }
            return Action::Idle;
        }
        if self.since_last(now) < self.tick {
            return Action::Idle;
        }
        if !self.pod_read {
            return Action::ReadPod;
        }
        if self.budget.needs_count() && self.pods.is_none_or(|(_, at)| now - at >= RECOUNT) {
            return Action::CountPods;
        }
        let (true, Some(seen)) = (self.fresh, self.listed.as_deref()) else {
            return Action::List;
        };
        self.fresh = false;
        let at = self.listed_at.unwrap_or(now);
        if let Some((slot, version)) = self.free_slot(seen, at)
            && self.first_in_line(seen, at, need.fullness).is_none()
        {
            return Action::Take { slot, version };
        }
        let wait_due = self
            .wait
            .as_ref()
            .is_none_or(|(_, at)| now - *at >= self.wait_duration() / 3);
        if wait_due {
            return Action::WriteWait {
                version: self.wait.as_ref().map(|(v, _)| v.clone()),
                fullness: need.fullness,
            };
        }
        Action::List
    }

    fn since_last(&self, now: Instant) -> Duration {
        self.last_request
            .map_or(Duration::MAX, |at| now.saturating_duration_since(at))
    }

    /// Tells what became of the request [`Member::next`] gave.
    pub fn answered(&mut self, now: Instant, answer: Answer) {
        let Some(action) = self.pending.take() else {
            return;
        };
        if let Answer::Failed(why) = &answer {
            self.failing = Some(why.clone());
            self.fresh = false;
            // What was not seen is no evidence: a holder cut off with this instance could not
            // renew either. Leases are watched afresh from the next listing.
            self.observed.clear();
            return;
        }
        self.failing = None;
        match (action, answer) {
            (Action::ReadPod, _) => self.pod_read = true,
            (Action::CountPods, Answer::Counted(n)) => self.pods = Some((n, now)),
            (Action::List, Answer::Listed(seen)) => {
                self.observe(&seen, now);
                self.listed = Some(seen);
                self.fresh = true;
                self.listed_at = Some(now);
            }
            (Action::Take { slot, .. }, Answer::Written(version)) => {
                self.held = Some(Held {
                    slot,
                    version,
                    renewed_at: now,
                });
            }
            (Action::Renew { slot, .. }, Answer::Written(version)) => {
                self.held = Some(Held {
                    slot,
                    version,
                    renewed_at: now,
                });
            }
            // 409 or 404 on a renewal: the slot expired in another's view and was taken;
            // the drain it allowed goes on (the decider latched it).
            (Action::Renew { .. } | Action::Release { .. }, _) => self.held = None,
            (Action::WriteWait { .. }, Answer::Written(version)) => {
                self.wait = Some((version, now));
            }
            (Action::WriteWait { .. }, Answer::Lost) => self.wait = None,
            (Action::DeleteWait, _) => self.wait = None,
            _ => {}
        }
    }

    /// Notes, for each lease listed, since when its holder and renew time are as they are.
    fn observe(&mut self, seen: &[Seen], now: Instant) {
        let mut kept = HashMap::new();
        for lease in seen {
            let observed = match self.observed.remove(&lease.name) {
                Some(o) if o.holder == lease.holder && o.renewed == lease.renewed => o,
                _ => Observed {
                    holder: lease.holder.clone(),
                    renewed: lease.renewed.clone(),
                    since: now,
                },
            };
            kept.insert(lease.name.clone(), observed);
        }
        self.observed = kept;
    }

    /// Whether a listed lease is held and alive, as this instance has watched it.
    fn live(&self, lease: &Seen, now: Instant) -> bool {
        if lease.holder.as_deref().is_none_or(str::is_empty) {
            return false;
        }
        self.observed
            .get(&lease.name)
            .is_none_or(|o| now.saturating_duration_since(o.since) < lease.duration)
    }

    /// A slot of the budget that nobody holds: absent (create), or released or expired
    /// (replace at its version).
    fn free_slot(&self, seen: &[Seen], now: Instant) -> Option<(String, Option<String>)> {
        let slots = self.slots();
        let mut listed: Vec<Option<&Seen>> = vec![None; slots as usize];
        for lease in seen {
            if let Some(i) = self.names.is_slot(&lease.name).filter(|&i| i < slots)
                && lease.name == self.names.slot(i)
            {
                listed[i as usize].get_or_insert(lease);
            }
        }
        listed
            .iter()
            .enumerate()
            .find_map(|(i, lease)| match lease {
                None => Some((self.names.slot(i as u32), None)),
                Some(lease) if !self.live(lease, now) => {
                    Some((lease.name.clone(), Some(lease.version.clone())))
                }
                Some(_) => None,
            })
    }

    /// The holders of the slots, as listed.
    fn holders(&self, seen: &[Seen], now: Instant) -> Vec<String> {
        let mut holders: Vec<String> = seen
            .iter()
            .filter(|l| self.names.is_slot(&l.name).is_some() && self.live(l, now))
            .filter_map(|l| l.holder.clone())
            .collect();
        holders.sort();
        holders.dedup();
        holders
    }

    /// The live waiter that goes before this instance, if any: fuller, or as full with a
    /// smaller pod name. Waiters that hold a slot already are not waiting.
    fn first_in_line(&self, seen: &[Seen], now: Instant, fullness: f64) -> Option<(String, f64)> {
        let holders = self.holders(seen, now);
        let mine = (fullness, self.names.me.as_str());
        seen.iter()
            .filter(|l| self.live(l, now))
            .filter_map(|l| Some((self.names.waiter(&l.name)?, l.fullness.unwrap_or(0.0))))
            .filter(|(pod, _)| *pod != self.names.me && !holders.iter().any(|h| h == pod))
            .filter(|(pod, full)| goes_before((*full, pod), mine))
            .max_by(|a, b| {
                if goes_before((a.1, a.0), (b.1, b.0)) {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Less
                }
            })
            .map(|(pod, full)| (pod.to_string(), full))
    }

    /// Why a drain cannot start now, or `None` while a slot is held.
    pub fn wait(&self, now: Instant, fullness: f64) -> Option<Wait> {
        if self.held.is_some() {
            return None;
        }
        if let Some(why) = &self.failing {
            return Some(Wait::Unreachable(why.clone()));
        }
        let Some(seen) = self.listed.as_deref() else {
            return Some(Wait::Asking);
        };
        let at = self.listed_at.unwrap_or(now);
        if self.free_slot(seen, at).is_none() {
            return Some(Wait::HeldBy(self.holders(seen, at)));
        }
        match self.first_in_line(seen, at, fullness) {
            Some((pod, full)) => Some(Wait::Behind {
                pod,
                percent: (full * 100.0).round() as u32,
            }),
            None => Some(Wait::Asking),
        }
    }
}

/// Who goes first of two waiters: the fuller, then the smaller pod name.
pub fn goes_before(a: (f64, &str), b: (f64, &str)) -> bool {
    let (fa, fb) = (round(a.0), round(b.0));
    fa > fb || (fa == fb && a.1 < b.1)
}

/// Fullness compared to a tenth of a percent, as written on the wait leases.
fn round(f: f64) -> i64 {
    (f * 1000.0).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const LEASE: Duration = Duration::from_secs(30);

    fn member(me: &str, budget: Budget) -> Member {
        let names = Names {
            fleet: "kms".into(),
            me: me.into(),
        };
        Member::new(names, budget, LEASE, S)
    }

    fn wants(fullness: f64) -> Need {
        Need {
            wants: true,
            fullness,
        }
    }

    fn slot(i: u32, holder: Option<&str>, renewed: &str) -> Seen {
        Seen {
            name: format!("memprobe-kms-slot-{i}"),
            holder: holder.map(str::to_owned),
            renewed: Some(renewed.into()),
            duration: LEASE,
            version: format!("v{i}-{renewed}"),
            fullness: None,
        }
    }

    fn waiter(pod: &str, fullness: f64) -> Seen {
        Seen {
            name: format!("memprobe-kms-wait-{pod}"),
            holder: Some(pod.into()),
            renewed: Some("r".into()),
            duration: LEASE * 2,
            version: format!("w-{pod}"),
            fullness: Some(fullness),
        }
    }

    /// Runs the member's next request with `answer`, returning the request.
    fn ask(m: &mut Member, now: Instant, need: Need, answer: Answer) -> Action {
        let action = m.next(now, need);
        if action != Action::Idle {
            m.answered(now, answer);
        }
        action
    }

    /// A member that has read its pod, at `t0 + 10 s`.
    fn joined(me: &str) -> (Member, Instant) {
        let mut m = member(me, Budget::Instances(1));
        let t0 = Instant::now();
        assert_eq!(ask(&mut m, t0, wants(0.9), Answer::Pod), Action::ReadPod);
        (m, t0 + MIN_TICK)
    }

    #[test]
    fn a_budget_is_a_count_or_a_share_of_the_pods_rounded_down_and_never_zero() {
        assert_eq!(Budget::Instances(2).slots(Some(10)), 2);
        assert_eq!(Budget::Instances(0).slots(None), 1);
        assert_eq!(Budget::Percent(25.0).slots(Some(10)), 2);
        assert_eq!(Budget::Percent(25.0).slots(Some(3)), 1);
        assert_eq!(Budget::Percent(50.0).slots(None), 1, "uncounted: one");
        assert_eq!(Budget::Percent(100.0).slots(Some(7)), 7);
    }

    #[test]
    fn nothing_is_asked_of_the_api_server_while_no_drain_is_wanted() {
        let mut m = member("kms-0", Budget::Instances(1));
        let t0 = Instant::now();
        for i in 0..1000 {
            assert_eq!(m.next(t0 + i * S, Need::default()), Action::Idle);
        }
    }

    #[test]
    fn a_lone_waiter_reads_its_pod_lists_then_takes_the_absent_slot_by_creating_it() {
        let (mut m, t) = joined("kms-0");
        assert_eq!(
            ask(&mut m, t, wants(0.9), Answer::Listed(vec![])),
            Action::List
        );
        let take = ask(
            &mut m,
            t + MIN_TICK,
            wants(0.9),
            Answer::Written("1".into()),
        );
        assert_eq!(
            take,
            Action::Take {
                slot: "memprobe-kms-slot-0".into(),
                version: None
            }
        );
        assert_eq!(
            m.held().map(|h| h.slot.as_str()),
            Some("memprobe-kms-slot-0")
        );
        assert_eq!(m.wait(t + MIN_TICK, 0.9), None, "holding: the gate is open");
    }

    #[test]
    fn a_waiter_makes_at_most_one_request_per_tick() {
        let (mut m, t) = joined("kms-0");
        let held = vec![slot(0, Some("kms-1"), "a")];
        let mut requests = Vec::new();
        for i in 0..600 {
            let now = t + i * S / 2;
            if ask(&mut m, now, wants(0.9), Answer::Listed(held.clone())) != Action::Idle {
                requests.push(now);
            }
        }
        assert!(requests.len() >= 25, "{} requests", requests.len());
        for pair in requests.windows(2) {
            assert!(pair[1] - pair[0] >= MIN_TICK);
        }
        let interval = Duration::from_secs(15);
        let slow = Member::new(m.names().clone(), Budget::Instances(1), LEASE, interval);
        assert_eq!(slow.tick(), interval, "or one per interval, when longer");
    }

    #[test]
    fn a_slot_held_by_another_is_waited_for_and_says_by_whom() {
        let (mut m, t) = joined("kms-0");
        let held = vec![slot(0, Some("kms-1"), "a")];
        ask(&mut m, t, wants(0.9), Answer::Listed(held.clone()));
        assert_eq!(
            m.wait(t, 0.9),
            Some(Wait::HeldBy(vec!["kms-1".into()])),
            "{}",
            m.wait(t, 0.9).unwrap()
        );
        assert_eq!(
            m.wait(t, 0.9).unwrap().to_string(),
            "waiting for a drain slot: held by kms-1"
        );
        let next = ask(
            &mut m,
            t + MIN_TICK,
            wants(0.9),
            Answer::Written("w1".into()),
        );
        assert_eq!(
            next,
            Action::WriteWait {
                version: None,
                fullness: 0.9
            },
            "a waiter that cannot take writes its wait lease"
        );
    }

    #[test]
    fn a_slot_expires_when_unchanged_for_its_duration_on_the_waiters_own_clock() {
        let (mut m, t) = joined("kms-0");
        let stale = vec![slot(0, Some("kms-1"), "a")];
        ask(&mut m, t, wants(0.9), Answer::Listed(stale.clone()));
        let mut now = t;
        let mut took = None;
        for _ in 0..20 {
            now += MIN_TICK;
            match ask(&mut m, now, wants(0.9), Answer::Listed(stale.clone())) {
                Action::Take { slot, version } => {
                    took = Some((now, slot, version));
                    break;
                }
                Action::WriteWait { .. } => m.answered(now, Answer::Written("w".into())),
                _ => {}
            }
        }
        let (at, slot_name, version) = took.expect("the expired slot is taken");
        assert_eq!(slot_name, "memprobe-kms-slot-0");
        assert_eq!(
            version.as_deref(),
            Some("v0-a"),
            "replaced at the version seen"
        );
        assert!(at - t >= LEASE, "not before the lease's duration");
        assert!(
            at - t <= LEASE + 3 * MIN_TICK,
            "and within a few ticks of it"
        );
    }

    #[test]
    fn a_slot_renewed_meanwhile_is_never_taken() {
        let (mut m, t) = joined("kms-0");
        for i in 0..40u32 {
            let now = t + i * MIN_TICK;
            let listing = vec![slot(0, Some("kms-1"), &format!("r{}", i / 2))];
            let action = m.next(now, wants(0.9));
            assert!(
                !matches!(action, Action::Take { .. }),
                "step {i}: {action:?}"
            );
            let answer = match action {
                Action::List => Answer::Listed(listing),
                _ => Answer::Written("w".into()),
            };
            if action != Action::Idle {
                m.answered(now, answer);
            }
        }
    }

    #[test]
    fn a_lease_shorter_than_a_tick_is_judged_as_it_was_listed_not_a_tick_later() {
        let names = Names {
            fleet: "kms".into(),
            me: "kms-0".into(),
        };
        let short = Duration::from_secs(6);
        let mut m = Member::new(names, Budget::Instances(1), short, S);
        let t = Instant::now();
        ask(&mut m, t, wants(0.9), Answer::Pod);
        for i in 1..30u32 {
            let now = t + i * MIN_TICK;
            // Renewed every 2 s by a live holder: each listing sees a new renew time.
            let mut lease = slot(0, Some("kms-1"), &format!("r{i}"));
            lease.duration = short;
            let action = m.next(now, wants(0.9));
            assert!(
                !matches!(action, Action::Take { .. }),
                "tick {i}: {action:?}"
            );
            let answer = match action {
                Action::List => Answer::Listed(vec![lease]),
                _ => Answer::Written("w".into()),
            };
            if action != Action::Idle {
                m.answered(now, answer);
            }
        }
    }

    #[test]
    fn a_released_slot_is_free_at_once() {
        let (mut m, t) = joined("kms-0");
        ask(
            &mut m,
            t,
            wants(0.9),
            Answer::Listed(vec![slot(0, None, "a")]),
        );
        assert_eq!(
            m.next(t + MIN_TICK, wants(0.9)),
            Action::Take {
                slot: "memprobe-kms-slot-0".into(),
                version: Some("v0-a".into())
            }
        );
    }

    #[test]
    fn the_fullest_waiter_goes_first_and_ties_go_by_pod_name() {
        assert!(goes_before((0.95, "kms-9"), (0.90, "kms-0")));
        assert!(goes_before((0.90, "kms-0"), (0.90, "kms-1")));
        assert!(
            goes_before((0.9001, "kms-0"), (0.9002, "kms-1")),
            "a tenth of a percent"
        );
        let (mut m, t) = joined("kms-0");
        let seen = vec![
            slot(0, None, "a"),
            waiter("kms-3", 0.97),
            waiter("kms-2", 0.95),
        ];
        ask(&mut m, t, wants(0.9), Answer::Listed(seen));
        assert_eq!(
            m.wait(t, 0.9),
            Some(Wait::Behind {
                pod: "kms-3".into(),
                percent: 97
            })
        );
        assert!(matches!(
            m.next(t + MIN_TICK, wants(0.9)),
            Action::WriteWait { .. }
        ));
    }

    #[test]
    fn the_first_in_line_takes_the_free_slot() {
        let (mut m, t) = joined("kms-3");
        let seen = vec![
            slot(0, None, "a"),
            waiter("kms-3", 0.97),
            waiter("kms-2", 0.95),
        ];
        ask(&mut m, t, wants(0.97), Answer::Listed(seen));
        assert!(matches!(
            m.next(t + MIN_TICK, wants(0.97)),
            Action::Take { .. }
        ));
    }

    #[test]
    fn a_waiter_that_holds_a_slot_or_has_expired_is_not_in_line() {
        let (mut m, t) = joined("kms-0");
        let seen = vec![
            slot(0, Some("kms-5"), "a"),
            slot(1, None, "b"),
            waiter("kms-5", 0.99),
        ];
        let mut m2 = member("kms-0", Budget::Instances(2));
        m2.pod_read = true;
        ask(&mut m2, t, wants(0.5), Answer::Listed(seen));
        assert!(
            matches!(m2.next(t + MIN_TICK, wants(0.5)), Action::Take { .. }),
            "kms-5 holds slot 0: its wait lease is not a waiter"
        );
        // A waiter whose lease has not changed for its duration is gone: the slot is taken
        // then, and not before.
        let stale = vec![slot(0, None, "a"), waiter("kms-7", 0.99)];
        let mut now = t;
        let took = loop {
            let answer = match m.next(now, wants(0.5)) {
                Action::Take { .. } => break now,
                Action::List => Answer::Listed(stale.clone()),
                Action::Idle => {
                    now += S;
                    continue;
                }
                _ => Answer::Written("w".into()),
            };
            m.answered(now, answer);
            assert!(now - t < 10 * LEASE, "never taken");
        };
        assert!(
            took - t >= LEASE * 2,
            "not before the waiter's lease expired"
        );
    }

    #[test]
    fn a_lost_race_lists_again_and_never_holds() {
        let (mut m, t) = joined("kms-0");
        ask(&mut m, t, wants(0.9), Answer::Listed(vec![]));
        assert!(matches!(
            ask(&mut m, t + MIN_TICK, wants(0.9), Answer::Lost),
            Action::Take { .. }
        ));
        assert_eq!(m.held(), None, "409: another instance created it first");
        assert_eq!(m.next(t + 2 * MIN_TICK, wants(0.9)), Action::List);
    }

    #[test]
    fn a_holder_renews_at_a_third_of_the_lease_and_keeps_the_slot_until_healthy() {
        let (mut m, t) = joined("kms-0");
        ask(&mut m, t, wants(0.9), Answer::Listed(vec![]));
        ask(
            &mut m,
            t + MIN_TICK,
            wants(0.9),
            Answer::Written("1".into()),
        );
        let t = t + MIN_TICK;
        m.told(State::Draining, false);
        assert_eq!(m.next(t + LEASE / 3 - S, Need::default()), Action::Idle);
        assert!(matches!(
            ask(
                &mut m,
                t + LEASE / 3,
                Need::default(),
                Answer::Written("2".into())
            ),
            Action::Renew { .. }
        ));
        m.told(State::Recycle, false);
        m.told(State::Lost, false);
        m.told(State::Starting, false);
        let renew = ask(
            &mut m,
            t + LEASE,
            Need::default(),
            Answer::Written("3".into()),
        );
        assert_eq!(
            renew,
            Action::Renew {
                slot: "memprobe-kms-slot-0".into(),
                version: "2".into()
            },
            "a restarting server keeps the slot"
        );
        m.told(State::Healthy, false);
        assert_eq!(
            ask(
                &mut m,
                t + LEASE + 2 * S,
                Need::default(),
                Answer::Written("4".into())
            ),
            Action::Release {
                slot: "memprobe-kms-slot-0".into(),
                version: "3".into()
            },
            "healthy again: given back"
        );
        assert_eq!(m.held(), None);
    }

    #[test]
    fn a_holder_whose_server_never_comes_back_gives_its_slot_up() {
        let (mut m, t) = joined("kms-0");
        ask(&mut m, t, wants(0.9), Answer::Listed(vec![]));
        ask(
            &mut m,
            t + MIN_TICK,
            wants(0.9),
            Answer::Written("1".into()),
        );
        m.told(State::Draining, false);
        m.told(State::Recycle, false);
        m.told(State::Lost, false);
        let t = t + 2 * MIN_TICK;
        // Renewed at each third of its lease, up to the bound after the recycle.
        let mut at = t;
        let mut version = 1;
        while at < t + GIVE_UP_AFTER_RECYCLE {
            let action = ask(
                &mut m,
                at,
                Need::default(),
                Answer::Written((version + 1).to_string()),
            );
            if matches!(action, Action::Renew { .. }) {
                version += 1;
            } else {
                assert_eq!(action, Action::Idle, "{:?} after the recycle", at - t);
            }
            assert!(!m.gave_up());
            at += S;
        }
        assert_eq!(
            ask(
                &mut m,
                t + GIVE_UP_AFTER_RECYCLE + S,
                Need::default(),
                Answer::Written("x".into())
            ),
            Action::Release {
                slot: "memprobe-kms-slot-0".into(),
                version: version.to_string()
            },
            "a server not back within the bound: its slot is given up"
        );
        assert_eq!(m.held(), None);
        assert!(m.gave_up(), "and said so");
        m.told(State::Healthy, false);
        assert!(!m.gave_up(), "until the server is healthy again");
    }

    #[test]
    fn an_operators_drain_keeps_no_slot() {
        let (mut m, t) = joined("kms-0");
        ask(&mut m, t, wants(0.9), Answer::Listed(vec![]));
        ask(
            &mut m,
            t + MIN_TICK,
            wants(0.9),
            Answer::Written("1".into()),
        );
        m.told(State::Draining, true);
        assert!(matches!(
            m.next(t + 2 * MIN_TICK, Need::default()),
            Action::Release { .. }
        ));
    }

    #[test]
    fn a_renewal_that_loses_gives_the_slot_up_and_the_drain_goes_on() {
        let (mut m, t) = joined("kms-0");
        ask(&mut m, t, wants(0.9), Answer::Listed(vec![]));
        ask(
            &mut m,
            t + MIN_TICK,
            wants(0.9),
            Answer::Written("1".into()),
        );
        m.told(State::Draining, false);
        ask(
            &mut m,
            t + MIN_TICK + LEASE / 3,
            Need::default(),
            Answer::Lost,
        );
        assert_eq!(m.held(), None);
    }

    #[test]
    fn the_api_server_away_closes_the_gate_and_a_holder_retries_at_a_third_of_its_lease() {
        let (mut m, t) = joined("kms-0");
        let down = Answer::Failed("connection refused".into());
        assert_eq!(ask(&mut m, t, wants(0.9), down.clone()), Action::List);
        let wait = m.wait(t, 0.9).expect("closed");
        assert!(matches!(wait, Wait::Unreachable(_)));
        assert!(
            wait.to_string()
                .contains("no drain starts through the fleet until it can"),
            "{wait}"
        );
        // A holder whose renewals fail keeps its slot (its drain goes on) and retries per tick.
        let (mut h, t) = joined("kms-1");
        ask(&mut h, t, wants(0.9), Answer::Listed(vec![]));
        ask(
            &mut h,
            t + MIN_TICK,
            wants(0.9),
            Answer::Written("1".into()),
        );
        h.told(State::Draining, false);
        let t = t + MIN_TICK + LEASE / 3;
        assert!(matches!(
            ask(&mut h, t, Need::default(), down.clone()),
            Action::Renew { .. }
        ));
        assert!(h.held().is_some());
        assert_eq!(h.wait(t, 0.9), None, "a holder's gate stays open");
        assert_eq!(h.next(t + LEASE / 3 - S, Need::default()), Action::Idle);
        assert!(matches!(
            h.next(t + LEASE / 3, Need::default()),
            Action::Renew { .. }
        ));
    }

    #[test]
    fn a_lease_unchanged_while_the_api_server_was_away_is_watched_afresh() {
        let (mut m, t) = joined("kms-0");
        let held = vec![slot(0, Some("kms-1"), "a")];
        ask(&mut m, t, wants(0.9), Answer::Listed(held.clone()));
        // Away for a minute: kms-1 could not renew either.
        let mut now = t;
        for _ in 0..6 {
            now += MIN_TICK;
            let _ = ask(&mut m, now, wants(0.9), Answer::Failed("refused".into()));
        }
        now += MIN_TICK;
        assert_eq!(
            ask(&mut m, now, wants(0.9), Answer::Listed(held.clone())),
            Action::List
        );
        assert!(
            !matches!(m.next(now + MIN_TICK, wants(0.9)), Action::Take { .. }),
            "not expired: seen unchanged only since the server came back"
        );
    }

    #[test]
    fn a_wait_lease_is_deleted_once_not_needed() {
        let (mut m, t) = joined("kms-0");
        ask(
            &mut m,
            t,
            wants(0.9),
            Answer::Listed(vec![slot(0, Some("kms-1"), "a")]),
        );
        ask(
            &mut m,
            t + MIN_TICK,
            wants(0.9),
            Answer::Written("w".into()),
        );
        assert_eq!(
            ask(&mut m, t + MIN_TICK + S, Need::default(), Answer::Deleted),
            Action::DeleteWait,
            "memory came back down: no longer in line"
        );
        assert_eq!(m.next(t + 3 * MIN_TICK, Need::default()), Action::Idle);
    }

    #[test]
    fn a_percentage_budget_counts_the_pods_before_listing_and_again_every_few_minutes() {
        let mut m = member("kms-0", Budget::Percent(50.0));
        let t0 = Instant::now();
        ask(&mut m, t0, wants(0.9), Answer::Pod);
        assert_eq!(
            ask(&mut m, t0 + MIN_TICK, wants(0.9), Answer::Counted(4)),
            Action::CountPods
        );
        assert_eq!(m.slots(), 2);
        let seen = vec![slot(0, Some("kms-1"), "a"), slot(1, Some("kms-2"), "b")];
        ask(&mut m, t0 + 2 * MIN_TICK, wants(0.9), Answer::Listed(seen));
        assert_eq!(
            m.wait(t0 + 2 * MIN_TICK, 0.9),
            Some(Wait::HeldBy(vec!["kms-1".into(), "kms-2".into()]))
        );
        assert_eq!(
            m.next(t0 + RECOUNT + MIN_TICK, wants(0.9)),
            Action::CountPods
        );
    }
}
