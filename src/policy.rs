//! The decision: a pure state machine from memory samples to a verdict.
//!
//! [`Decider`] is fed `(now, observation)` and answers with the state it is in; it reads no
//! files, opens no sockets and never asks the clock, so every rule below is a unit test with
//! paused, injected time.
//!
//! | state    | meaning                                           | ready | healthy |
//! |----------|---------------------------------------------------|-------|---------|
//! | starting | no sample yet for this incarnation                | no    | yes     |
//! | healthy  | last sample at or below the threshold             | yes   | yes     |
//! | elevated | over the threshold, not yet for `sustain`         | yes   | yes     |
//! | draining | over the threshold on every sample for `sustain`  | no    | yes     |
//! | recycle  | draining is over: restart the server              | no    | no      |
//! | lost     | the target process is not there                   | no    | yes     |
//!
//! Draining and recycle are latched for the incarnation: fragmentation rarely heals, so memory
//! falling again does not undo them. Only a new incarnation starts over.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::units::{Bytes, Human};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Starting,
    Healthy,
    Elevated,
    Draining,
    Recycle,
    #[default]
    Lost,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Starting,
        State::Healthy,
        State::Elevated,
        State::Draining,
        State::Recycle,
        State::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Healthy => "healthy",
            State::Elevated => "elevated",
            State::Draining => "draining",
            State::Recycle => "recycle",
            State::Lost => "lost",
        }
    }

    /// May new sessions be sent to the server? (`/ready`)
    pub fn ready(self) -> bool {
        matches!(self, State::Healthy | State::Elevated)
    }

    /// Should the server keep running? (`/healthz`). A lost target never fails it: the
    /// orchestrator handles a process that exited, and a server that is merely starting must
    /// never be put into a restart loop.
    pub fn healthy(self) -> bool {
        !matches!(self, State::Recycle)
    }
}

/// The limits one incarnation is judged by.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Name of the figure that decides (`rss`, `anon`, `pss`), for the reasons given.
    pub memory: &'static str,
    pub threshold_bytes: u64,
    pub critical_bytes: Option<u64>,
    pub sustain: Duration,
    /// With no sessions at all, memory over the threshold for this long drains at once:
    /// memory that does not come back when sessions finish is fragmentation.
    pub idle_sustain: Duration,
    pub drain_timeout: Duration,
    pub min_drain: Duration,
}

/// One sample as the decision sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    pub memory_bytes: u64,
    /// Live sessions, when something (Kurento) tells us; `None` when unknown.
    pub sessions: Option<u32>,
}

/// A change of state, with the numbers behind it.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: String,
}

#[derive(Debug)]
pub struct Decider {
    policy: Policy,
    state: State,
    since: Instant,
    /// First sample of the current unbroken run over the threshold.
    over_since: Option<Instant>,
    /// First sample of the current unbroken run over the threshold with zero sessions.
    idle_over_since: Option<Instant>,
    reason: String,
}

impl Decider {
    /// A decider waiting for its target: state `lost` until an incarnation is found.
    pub fn new(policy: Policy, now: Instant) -> Self {
        Decider {
            policy,
            state: State::Lost,
            since: now,
            over_since: None,
            idle_over_since: None,
            reason: "looking for the target process".to_string(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// When the current state began.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Why the server is in the current state, in words with numbers.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// How long memory has been over the threshold without a break, as of `now`.
    pub fn over_for(&self, now: Instant) -> Duration {
        self.over_since.map_or(Duration::ZERO, |t| now - t)
    }

    /// A new incarnation of the target (a new pid or start time): everything starts over,
    /// under a policy that may differ (its cgroup limit may have changed).
    pub fn new_incarnation(&mut self, now: Instant, policy: Policy, who: &str) -> Transition {
        self.policy = policy;
        self.over_since = None;
        self.idle_over_since = None;
        self.enter(
            now,
            State::Starting,
            format!("found {who}, waiting for its first sample"),
        )
        .unwrap_or_else(|| Transition {
            from: State::Starting,
            to: State::Starting,
            reason: self.reason.clone(),
        })
    }

    /// The target process is not there any more.
    pub fn lost(&mut self, now: Instant, why: String) -> Option<Transition> {
        self.over_since = None;
        self.idle_over_since = None;
        self.enter(now, State::Lost, why)
    }

    /// The server exists but has stopped answering its own protocol (`failed_pings` in a
    /// row): it cannot serve its sessions either, so it is to be restarted now.
    pub fn unresponsive(&mut self, now: Instant, failed_pings: u32) -> Option<Transition> {
        if matches!(self.state, State::Lost | State::Recycle) {
            return None;
        }
        let why = format!("kms not answering: {failed_pings} pings in a row failed");
        self.enter(now, State::Recycle, why)
    }

    /// Judges one sample. Returns the transition it caused, if any.
    pub fn observe(&mut self, now: Instant, obs: Observation) -> Option<Transition> {
        let p = &self.policy;
        let mem = obs.memory_bytes;
        let kind = p.memory;
        let over = mem > p.threshold_bytes;

        if over {
            self.over_since.get_or_insert(now);
        } else {
            self.over_since = None;
        }
        if over && obs.sessions == Some(0) {
            self.idle_over_since.get_or_insert(now);
        } else {
            self.idle_over_since = None;
        }

        if let Some(critical) = p.critical_bytes
            && mem > critical
            && self.state != State::Recycle
        {
            let why = format!("{kind} {} over critical {}", Bytes(mem), Bytes(critical));
            return self.enter(now, State::Recycle, why);
        }

        match self.state {
            State::Lost => None,
            State::Recycle => None,
            State::Draining => {
                let drained_for = now - self.since;
                if drained_for >= p.drain_timeout {
                    let why = format!(
                        "drained for {} (--drain-timeout), {}",
                        Human(drained_for),
                        sessions_left(obs.sessions)
                    );
                    self.enter(now, State::Recycle, why)
                } else if obs.sessions == Some(0) && drained_for >= p.min_drain {
                    let why = format!("last session ended after draining {}", Human(drained_for));
                    self.enter(now, State::Recycle, why)
                } else {
                    self.reason = format!(
                        "draining for {}, {}",
                        Human(drained_for),
                        sessions_left(obs.sessions)
                    );
                    None
                }
            }
            State::Starting | State::Healthy | State::Elevated => {
                let threshold = Bytes(p.threshold_bytes);
                if !over {
                    let why = format!("{kind} {} at or below threshold {threshold}", Bytes(mem));
                    return self.stay_or_enter(now, State::Healthy, why);
                }
                let idle_for = self.idle_over_since.map_or(Duration::ZERO, |t| now - t);
                if self.idle_over_since.is_some() && idle_for >= p.idle_sustain {
                    let why = format!(
                        "{kind} {} over threshold {threshold} for {} with no sessions: \
                         memory that does not come back when sessions end",
                        Bytes(mem),
                        Human(idle_for)
                    );
                    return self.enter(now, State::Draining, why);
                }
                let over_for = self.over_for(now);
                let why = format!(
                    "{kind} {} over threshold {threshold} for {}",
                    Bytes(mem),
                    Human(over_for)
                );
                if over_for >= p.sustain {
                    self.enter(now, State::Draining, why)
                } else {
                    self.stay_or_enter(now, State::Elevated, why)
                }
            }
        }
    }

    fn stay_or_enter(&mut self, now: Instant, to: State, reason: String) -> Option<Transition> {
        if self.state == to {
            self.reason = reason;
            None
        } else {
            self.enter(now, to, reason)
        }
    }

    fn enter(&mut self, now: Instant, to: State, reason: String) -> Option<Transition> {
        let from = self.state;
        self.reason = reason.clone();
        if from == to {
            return None;
        }
        self.state = to;
        self.since = now;
        Some(Transition { from, to, reason })
    }
}

fn sessions_left(sessions: Option<u32>) -> String {
    match sessions {
        None => "session count unknown".to_string(),
        Some(1) => "1 session left".to_string(),
        Some(n) => format!("{n} sessions left"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1024 * 1024;
    const SECOND: Duration = Duration::from_secs(1);

    fn policy() -> Policy {
        Policy {
            memory: "rss",
            threshold_bytes: 1000 * MI,
            critical_bytes: None,
            sustain: Duration::from_secs(300),
            idle_sustain: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(3600),
            min_drain: Duration::from_secs(30),
        }
    }

    fn mem(mib: u64) -> Observation {
        Observation {
            memory_bytes: mib * MI,
            sessions: None,
        }
    }

    fn with_sessions(mib: u64, sessions: u32) -> Observation {
        Observation {
            memory_bytes: mib * MI,
            sessions: Some(sessions),
        }
    }

    /// A decider on a fresh incarnation, and a clock that starts at its birth.
    fn started(policy: Policy) -> (Decider, Instant) {
        let t0 = Instant::now();
        let mut d = Decider::new(policy.clone(), t0);
        d.new_incarnation(t0, policy, "pid 42");
        (d, t0)
    }

    /// Feeds one sample every `every` from `from` for `span`, returning the last time fed.
    fn feed(
        d: &mut Decider,
        from: Instant,
        every: Duration,
        span: Duration,
        obs: Observation,
    ) -> Instant {
        let mut t = from;
        while t <= from + span {
            d.observe(t, obs);
            t += every;
        }
        t - every
    }

    #[test]
    fn a_new_incarnation_starts_not_ready_but_healthy() {
        let (d, _) = started(policy());
        assert_eq!(d.state(), State::Starting, "no sample yet means starting");
        assert!(!d.state().ready(), "starting takes no sessions");
        assert!(d.state().healthy(), "starting never fails liveness");
    }

    #[test]
    fn the_first_sample_under_the_threshold_is_healthy() {
        let (mut d, t0) = started(policy());
        let tr = d.observe(t0 + SECOND, mem(500)).expect("a transition");
        assert_eq!((tr.from, tr.to), (State::Starting, State::Healthy));
        assert_eq!(
            tr.reason,
            "rss 500.00 MiB at or below threshold 1000.00 MiB"
        );
        assert!(
            d.state().ready() && d.state().healthy(),
            "healthy is ready and healthy"
        );
    }

    #[test]
    fn a_sample_equal_to_the_threshold_is_not_over_it() {
        let (mut d, t0) = started(policy());
        d.observe(t0, mem(1000));
        assert_eq!(
            d.state(),
            State::Healthy,
            "at the threshold is healthy, over it is not"
        );
    }

    #[test]
    fn over_the_threshold_is_elevated_and_still_ready() {
        let (mut d, t0) = started(policy());
        d.observe(t0, mem(500));
        d.observe(t0 + SECOND, mem(1200));
        assert_eq!(
            d.state(),
            State::Elevated,
            "one sample over the threshold is elevated"
        );
        assert!(d.state().ready(), "elevated still takes sessions");
    }

    #[test]
    fn a_spike_shorter_than_sustain_never_drains() {
        let (mut d, t0) = started(policy());
        let t = feed(&mut d, t0, 5 * SECOND, Duration::from_secs(295), mem(1200));
        assert_eq!(
            d.state(),
            State::Elevated,
            "295 s over a 300 s sustain is still elevated"
        );
        d.observe(t + 5 * SECOND, mem(900));
        assert_eq!(
            d.state(),
            State::Healthy,
            "the spike ended before --sustain: healthy again"
        );
    }

    #[test]
    fn a_dip_resets_the_sustain_clock() {
        let (mut d, t0) = started(policy());
        let t = feed(&mut d, t0, 5 * SECOND, Duration::from_secs(200), mem(1200));
        d.observe(t + 5 * SECOND, mem(999));
        let t = feed(
            &mut d,
            t + 10 * SECOND,
            5 * SECOND,
            Duration::from_secs(200),
            mem(1200),
        );
        assert_eq!(
            d.state(),
            State::Elevated,
            "200 s over, one sample under, 200 s over: the dip restarted the clock"
        );
        assert_eq!(d.over_for(t), Duration::from_secs(200));
    }

    #[test]
    fn over_the_threshold_on_every_sample_for_sustain_drains() {
        let (mut d, t0) = started(policy());
        d.observe(t0, mem(1200));
        let tr = d
            .observe(t0 + Duration::from_secs(300), mem(1300))
            .expect("a transition");
        assert_eq!((tr.from, tr.to), (State::Elevated, State::Draining));
        assert_eq!(tr.reason, "rss 1.27 GiB over threshold 1000.00 MiB for 5m");
        assert!(!d.state().ready(), "draining takes no new sessions");
        assert!(
            d.state().healthy(),
            "draining keeps the server running for its live sessions"
        );
    }

    #[test]
    fn draining_is_latched_for_the_incarnation() {
        let (mut d, t0) = started(policy());
        feed(&mut d, t0, 5 * SECOND, Duration::from_secs(300), mem(1200));
        assert_eq!(d.state(), State::Draining);
        d.observe(t0 + Duration::from_secs(400), mem(100));
        assert_eq!(
            d.state(),
            State::Draining,
            "memory falling again does not undo draining"
        );
    }

    #[test]
    fn draining_ends_in_recycle_at_the_drain_timeout() {
        let (mut d, t0) = started(policy());
        let t = feed(&mut d, t0, 5 * SECOND, Duration::from_secs(300), mem(1200));
        let drained = t;
        d.observe(drained + Duration::from_secs(3599), with_sessions(1200, 3));
        assert_eq!(
            d.state(),
            State::Draining,
            "sessions left and drain timeout not reached"
        );
        assert!(
            d.reason().contains("3 sessions left"),
            "reason: {}",
            d.reason()
        );
        let tr = d
            .observe(drained + Duration::from_secs(3600), mem(1200))
            .expect("a transition");
        assert_eq!((tr.from, tr.to), (State::Draining, State::Recycle));
        assert!(
            !d.state().healthy(),
            "recycle fails liveness so the server is restarted"
        );
        assert!(!d.state().ready(), "recycle takes no sessions");
    }

    #[test]
    fn zero_sessions_recycle_only_after_min_drain() {
        let (mut d, t0) = started(policy());
        let drained = feed(&mut d, t0, 5 * SECOND, Duration::from_secs(300), mem(1200));
        d.observe(drained + Duration::from_secs(29), with_sessions(1200, 0));
        assert_eq!(
            d.state(),
            State::Draining,
            "zero sessions before --min-drain: balancers may still be routing"
        );
        let tr = d
            .observe(drained + Duration::from_secs(30), with_sessions(1200, 0))
            .unwrap();
        assert_eq!(
            tr.to,
            State::Recycle,
            "zero sessions after --min-drain recycles at once"
        );
        assert_eq!(tr.reason, "last session ended after draining 30s");
    }

    #[test]
    fn unknown_sessions_wait_for_the_drain_timeout() {
        let (mut d, t0) = started(policy());
        let drained = feed(&mut d, t0, 5 * SECOND, Duration::from_secs(300), mem(1200));
        d.observe(drained + Duration::from_secs(600), mem(1200));
        assert_eq!(
            d.state(),
            State::Draining,
            "an unknown session count is not zero"
        );
    }

    #[test]
    fn one_sample_over_critical_recycles_at_once() {
        let (mut d, t0) = started(Policy {
            critical_bytes: Some(2000 * MI),
            ..policy()
        });
        d.observe(t0, mem(500));
        let tr = d.observe(t0 + SECOND, mem(2001)).expect("a transition");
        assert_eq!(
            (tr.from, tr.to),
            (State::Healthy, State::Recycle),
            "critical skips the drain"
        );
        assert_eq!(tr.reason, "rss 1.95 GiB over critical 1.95 GiB");
        d.observe(t0 + 2 * SECOND, mem(100));
        assert_eq!(d.state(), State::Recycle, "recycle is latched too");
    }

    #[test]
    fn a_new_incarnation_starts_over() {
        let (mut d, t0) = started(policy());
        feed(&mut d, t0, 5 * SECOND, Duration::from_secs(300), mem(1200));
        let t = t0 + Duration::from_secs(4000);
        d.observe(t, mem(1200));
        assert_eq!(d.state(), State::Recycle);
        d.lost(t + SECOND, "gone".into());
        let tr = d.new_incarnation(t + 2 * SECOND, policy(), "pid 43");
        assert_eq!((tr.from, tr.to), (State::Lost, State::Starting));
        d.observe(t + 3 * SECOND, mem(1200));
        assert_eq!(
            d.state(),
            State::Elevated,
            "a new incarnation forgets the latch and the over-threshold clock"
        );
        assert_eq!(d.over_for(t + 3 * SECOND), Duration::ZERO);
    }

    #[test]
    fn a_lost_target_is_not_ready_but_never_fails_liveness() {
        let (mut d, t0) = started(policy());
        d.observe(t0, mem(500));
        let tr = d
            .lost(t0 + SECOND, "process 42 exited".into())
            .expect("a transition");
        assert_eq!((tr.from, tr.to), (State::Healthy, State::Lost));
        assert!(!d.state().ready(), "lost takes no sessions");
        assert!(d.state().healthy(), "lost never fails liveness");
        assert_eq!(
            d.lost(t0 + 2 * SECOND, "still gone".into()),
            None,
            "logged once"
        );
    }

    #[test]
    fn memory_that_stays_high_with_no_sessions_drains_after_idle_sustain() {
        let (mut d, t0) = started(policy());
        d.observe(t0, with_sessions(1200, 2));
        d.observe(t0 + Duration::from_secs(10), with_sessions(1200, 0));
        d.observe(t0 + Duration::from_secs(69), with_sessions(1200, 0));
        assert_eq!(
            d.state(),
            State::Elevated,
            "59 s idle over a 60 s --idle-sustain"
        );
        let tr = d
            .observe(t0 + Duration::from_secs(70), with_sessions(1200, 0))
            .unwrap();
        assert_eq!(
            tr.to,
            State::Draining,
            "idle and over the threshold for --idle-sustain drains without the full --sustain"
        );
        assert!(tr.reason.contains("with no sessions"), "{}", tr.reason);
    }

    #[test]
    fn a_session_starting_resets_the_idle_clock() {
        let (mut d, t0) = started(policy());
        d.observe(t0, with_sessions(1200, 0));
        d.observe(t0 + Duration::from_secs(50), with_sessions(1200, 1));
        d.observe(t0 + Duration::from_secs(60), with_sessions(1200, 0));
        d.observe(t0 + Duration::from_secs(100), with_sessions(1200, 0));
        assert_eq!(d.state(), State::Elevated, "the idle run restarted at 60 s");
    }

    #[test]
    fn an_unresponsive_server_is_recycled_but_a_lost_one_is_not() {
        let (mut d, t0) = started(policy());
        d.observe(t0, mem(500));
        let tr = d.unresponsive(t0 + SECOND, 3).expect("a transition");
        assert_eq!((tr.from, tr.to), (State::Healthy, State::Recycle));
        assert_eq!(tr.reason, "kms not answering: 3 pings in a row failed");
        assert!(
            !d.state().ready() && !d.state().healthy(),
            "a hung server is restarted"
        );

        let (mut d, t0) = started(policy());
        d.lost(t0, "gone".into());
        assert_eq!(
            d.unresponsive(t0 + SECOND, 3),
            None,
            "a server that is gone is lost, not hung"
        );
    }

    #[test]
    fn each_transition_is_reported_once() {
        let (mut d, t0) = started(policy());
        assert!(d.observe(t0, mem(1200)).is_some(), "starting → elevated");
        assert!(
            d.observe(t0 + SECOND, mem(1200)).is_none(),
            "still elevated: no transition"
        );
        assert!(
            d.reason().ends_with("for 1s"),
            "the reason keeps counting: {}",
            d.reason()
        );
    }
}
