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
//! | stalled  | the server stopped answering its own API          | no    | yes     |
//! | recycle  | draining is over: restart the server              | no    | no      |
//! | lost     | the target process is not there                   | no    | yes     |
//!
//! Draining and recycle are latched for the incarnation: fragmentation rarely heals, so memory
//! falling again does not undo them. Only a new incarnation starts over.
//!
//! A stall is not latched: a server that stops answering pings takes no new sessions, and is
//! recycled only if the stall outlasts `hang_timeout`. One that answers again returns to the
//! state its memory gives — a server that hiccuped for 30 s keeps its live calls.
//!
//! A server that can no longer tear sessions down ([`Decider::teardown_stuck`]: KMS's worker
//! pool deadlocked) drains at once, whatever its memory and without waiting for a fleet's
//! slot — every session it took would leak the same way — and is recycled as soon as its
//! last session ends. Latched like a memory drain.

pub mod diagnosis;
pub mod fleet;
pub mod quiet;

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::units::{Bytes, Human};

mod settings;

pub use settings::{Settings, SizeProblem, check_sizes};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Starting,
    Healthy,
    Elevated,
    Draining,
    Stalled,
    Recycle,
    #[default]
    Lost,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Starting,
        State::Healthy,
        State::Elevated,
        State::Draining,
        State::Stalled,
        State::Recycle,
        State::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Healthy => "healthy",
            State::Elevated => "elevated",
            State::Draining => "draining",
            State::Stalled => "stalled",
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
    /// The server's API, when memprobe talks to it: when it counts as stalled or hung.
    pub server: ServerPolicy,
    /// A target out of reach for less than this keeps its state: a KMS connection that drops
    /// and comes back with the same serverId is the same server, and its drain goes on.
    pub reconnect_grace: Duration,
    /// Two samples (or two looks at the server's API) further apart than this mean memprobe
    /// itself was not running in between (SIGSTOP, a frozen cgroup, a suspended VM): what it
    /// did not see is no evidence, so the windows of `sustain`, `idle_sustain` and
    /// `hang_timeout` start again from the step after the gap.
    pub max_gap: Duration,
}

/// How a server that stops answering its API is judged.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerPolicy {
    /// Its name in reasons: `kms`.
    pub name: &'static str,
    /// Failed pings in a row (after it answered once) that make it stalled.
    pub failures: u32,
    /// A stall this long recycles.
    pub hang_timeout: Duration,
}

impl Default for ServerPolicy {
    fn default() -> Self {
        ServerPolicy {
            name: "server",
            failures: u32::MAX,
            hang_timeout: Duration::MAX,
        }
    }
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

/// Whether a drain that memory (or the quiet-moment rule) asks for may start now: always for
/// an instance on its own; in a fleet, only while it holds a drain slot ([`fleet`]). An
/// operator's drain and `critical` never wait for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Gate {
    #[default]
    Open,
    /// Why not, in words (`waiting for a drain slot: held by kms-2`).
    Closed(String),
}

/// A drain the gate held back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deferred;

#[derive(Debug)]
pub struct Decider {
    policy: Policy,
    gate: Gate,
    /// Whether the last step held back a drain at the gate: the fleet is asked for a slot.
    deferred: bool,
    state: State,
    since: Instant,
    /// First sample of the current unbroken run over the threshold.
    over_since: Option<Instant>,
    /// First sample of the current unbroken run over the threshold with zero sessions.
    idle_over_since: Option<Instant>,
    /// Whether this incarnation has had a sample yet.
    sampled: bool,
    /// When the last sample was judged, and when the server's API was last looked at.
    last_sample: Option<Instant>,
    last_server_look: Option<Instant>,
    /// When the server stopped answering its API (enough failed pings), while it does not.
    stalled_since: Option<Instant>,
    /// When the target went out of reach, while it is.
    unreachable_since: Option<Instant>,
    /// Who asked for the drain in force, while memory has not latched it too.
    requested_by: Option<String>,
    incarnations: u64,
    reason: String,
    /// The server can no longer tear sessions down, in words, once it has said so.
    stuck: Option<String>,
}

/// Caps every reason: it is one line in /ready, a log and /status.
const MAX_REASON_BYTES: usize = 512;

impl Decider {
    /// A decider waiting for its target: state `lost` until an incarnation is found.
    pub fn new(policy: Policy, now: Instant) -> Self {
        Decider {
            policy,
            gate: Gate::Open,
            deferred: false,
            state: State::Lost,
            since: now,
            over_since: None,
            idle_over_since: None,
            sampled: false,
            last_sample: None,
            last_server_look: None,
            stalled_since: None,
            unreachable_since: None,
            requested_by: None,
            incarnations: 0,
            reason: "looking for the target process".to_string(),
            stuck: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Why the server is in the current state, in words with numbers.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The gate the next steps' drains pass through.
    pub fn set_gate(&mut self, gate: Gate) {
        self.gate = gate;
    }

    /// Whether the last step held a drain back at the gate: memory (or the quiet moment)
    /// asks for one, and the instance stays ready until it may.
    pub fn deferred(&self) -> bool {
        self.deferred
    }

    /// How long memory has been over the threshold without a break, as of `now`.
    pub fn over_for(&self, now: Instant) -> Duration {
        self.over_since.map_or(Duration::ZERO, |t| now - t)
    }

    /// A new incarnation of the target (a new pid or start time): everything starts over,
    /// under a policy that may differ (its cgroup limit may have changed).
    pub fn new_incarnation(&mut self, now: Instant, policy: Policy, who: &str) -> Transition {
        self.policy = policy;
        self.incarnations += 1;
        self.over_since = None;
        self.idle_over_since = None;
        self.sampled = false;
        self.stalled_since = None;
        self.unreachable_since = None;
        self.requested_by = None;
        self.stuck = None;
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

    /// How many incarnations of the target have been found.
    pub fn incarnations(&self) -> u64 {
        self.incarnations
    }

    /// The target process is not there any more.
    pub fn lost(&mut self, now: Instant, why: String) -> Option<Transition> {
        self.requested_by = None;
        self.stuck = None;
        self.over_since = None;
        self.idle_over_since = None;
        self.stalled_since = None;
        self.unreachable_since = None;
        self.enter(now, State::Lost, why)
    }

    /// The target is out of reach (its API connection dropped) without being known gone.
    /// Within `reconnect_grace` of the first such step the state holds; after it, the target
    /// is lost. Returns whether it is lost now.
    pub fn unreachable(&mut self, now: Instant, why: String) -> (bool, Option<Transition>) {
        let since = *self.unreachable_since.get_or_insert(now);
        if self.state != State::Lost && now - since < self.policy.reconnect_grace {
            return (false, None);
        }
        (true, self.lost(now, why))
    }

    /// The target is in reach again (or never left).
    pub fn reachable(&mut self) {
        self.unreachable_since = None;
    }

    /// A missing privilege (PSS without ptrace access) stops memprobe when it shows on the
    /// first incarnation: that is a setup error, and the operator must hear of it at once.
    /// On a later incarnation the sidecar has been doing its job; it keeps going.
    pub fn missing_privilege_is_fatal(&self) -> bool {
        self.incarnations <= 1
    }

    /// What the server's own API says: `failed_pings` in a row have gone unanswered since it
    /// last answered (0 while it answers, or while it never has). Enough of them stall the
    /// instance (no new sessions); a stall that lasts `hang_timeout` recycles it; an answer
    /// before that returns it to the state its memory gives.
    pub fn server_answers(&mut self, now: Instant, failed_pings: u32) -> Option<Transition> {
        let server = self.policy.server.clone();
        if gap(&mut self.last_server_look, now, self.policy.max_gap) {
            // memprobe was not running: the pings it could not send are not KMS's silence.
            if let Some(since) = &mut self.stalled_since {
                *since = now;
            }
        }
        if matches!(self.state, State::Lost | State::Recycle) {
            self.stalled_since = None;
            return None;
        }
        if failed_pings < server.failures {
            let stalled_for = now - self.stalled_since.take()?;
            if self.state != State::Stalled {
                return None;
            }
            let why = format!(
                "{} answers again after a stall of {}",
                server.name,
                Human(stalled_for)
            );
            return self.enter(now, self.memory_state(), why);
        }
        let stalled_for = now - *self.stalled_since.get_or_insert(now);
        if stalled_for >= server.hang_timeout {
            let why = format!(
                "{} not answering for {} after {failed_pings} failed pings \
                 (--kms-hang-timeout {}): hung",
                server.name,
                Human(stalled_for),
                Human(server.hang_timeout)
            );
            return self.enter(now, State::Recycle, why);
        }
        let why = format!(
            "{} not answering: {failed_pings} pings in a row failed; restart if it lasts {}",
            server.name,
            Human(server.hang_timeout)
        );
        match self.state {
            State::Draining => None,
            _ => self.stay_or_enter(now, State::Stalled, why),
        }
    }

    /// The server can no longer tear sessions down (`why` says how it shows): it takes no new
    /// session from now on, whatever its memory and whatever the fleet's gate says (each one
    /// would leak the same way), and the drain ends in recycle at its last session, after
    /// `min_drain`. Latched for the incarnation; a requested drain becomes this one.
    pub fn teardown_stuck(&mut self, now: Instant, why: &str) -> Option<Transition> {
        self.stuck = Some(crate::units::clip(why, MAX_REASON_BYTES / 2));
        match self.state {
            State::Lost | State::Recycle => None,
            State::Draining => {
                self.requested_by = None;
                None
            }
            State::Starting | State::Healthy | State::Elevated | State::Stalled => {
                self.requested_by = None;
                self.enter(now, State::Draining, why.to_owned())
            }
        }
    }

    /// Why the server can no longer tear sessions down, once it has said so.
    pub fn stuck(&self) -> Option<&str> {
        self.stuck.as_deref()
    }

    /// Who asked for the drain in force, while it is a requested one.
    pub fn requested_by(&self) -> Option<&str> {
        self.requested_by.as_deref()
    }

    /// Someone (`who`) asks for a drain now: the instance takes no new sessions, exactly as in
    /// a memory drain, but is never recycled for it — a requested drain holds the instance out
    /// of rotation until it is cancelled or the process ends (a pod deleted, an upgrade).
    /// Refused while there is no target, or one already to be restarted.
    pub fn request_drain(
        &mut self,
        now: Instant,
        who: &str,
    ) -> Result<Option<Transition>, DrainRefused> {
        match self.state {
            State::Lost => Err(DrainRefused::NoTarget),
            State::Recycle => Err(DrainRefused::Recycling),
            State::Draining => Ok(None),
            State::Starting | State::Healthy | State::Elevated | State::Stalled => {
                self.requested_by = Some(crate::units::clip(who, 64));
                Ok(self.enter(now, State::Draining, format!("drain requested by {who}")))
            }
        }
    }

    /// The quiet-moment rule ([`quiet::QuietMoment`]) found an idle instance whose memory
    /// is forecast over the threshold soon: it drains now, latched like a memory drain, and
    /// the drain's own rules restart it (no session for `--min-drain`, or `--drain-timeout`).
    /// Only a ready instance (healthy or elevated) is drained so.
    /// Held back, like a memory drain, while the gate is closed.
    pub fn drain_at_quiet_moment(
        &mut self,
        now: Instant,
        why: String,
    ) -> Result<Option<Transition>, Deferred> {
        if !self.state.ready() {
            return Ok(None);
        }
        if let Gate::Closed(_) = self.gate {
            self.deferred = true;
            return Err(Deferred);
        }
        self.requested_by = None;
        Ok(self.enter(now, State::Draining, why))
    }

    /// Cancels a requested drain: the instance returns to the state its memory gives. A
    /// memory drain is never cancelled (fragmentation does not heal).
    pub fn cancel_drain(
        &mut self,
        now: Instant,
        who: &str,
    ) -> Result<Option<Transition>, DrainRefused> {
        match (self.state, self.requested_by.take()) {
            (State::Draining, Some(_)) => {
                let to = self.memory_state();
                Ok(self.enter(now, to, format!("requested drain cancelled by {who}")))
            }
            (State::Draining, None) => Err(DrainRefused::MemoryDrain),
            _ => Ok(None),
        }
    }

    /// The state the memory alone gives, outside a latch.
    fn memory_state(&self) -> State {
        match (self.sampled, self.over_since) {
            (false, _) => State::Starting,
            (true, None) => State::Healthy,
            (true, Some(_)) => State::Elevated,
        }
    }

    /// Whether `obs` would end the drain on its zero count (`last session ended`). A count
    /// that is polled may be a poll old, and a session may have arrived since: before such
    /// an end, the monitor takes a read that begins after this question and observes with
    /// its count instead. The end on `--drain-timeout` rests on no count, so it asks none.
    pub fn ends_on_zero(&self, now: Instant, obs: Observation) -> bool {
        let p = &self.policy;
        let drained_for = now.saturating_duration_since(self.since);
        self.state == State::Draining
            && self.requested_by.is_none()
            && obs.sessions == Some(0)
            && drained_for >= p.min_drain
            && drained_for < p.drain_timeout
            && p.critical_bytes.is_none_or(|c| obs.memory_bytes <= c)
    }

    /// Judges one sample. Returns the transition it caused, if any.
    pub fn observe(&mut self, now: Instant, obs: Observation) -> Option<Transition> {
        self.sampled = true;
        self.deferred = false;
        self.unreachable_since = None;
        if gap(&mut self.last_sample, now, self.policy.max_gap) {
            // memprobe was not running: memory may have been anywhere in between.
            self.over_since = None;
            self.idle_over_since = None;
        }
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
            State::Draining if self.requested_by.is_some() => {
                let (to, why) = self.judge(now, mem);
                let drained_for = now - self.since;
                if to == State::Draining {
                    // Memory now asks for the drain too: it latches, and may end in recycle.
                    self.requested_by = None;
                    self.reason = crate::units::clip(
                        &format!("{why} (a requested drain, now latched by memory)"),
                        MAX_REASON_BYTES,
                    );
                } else {
                    let who = self.requested_by.as_deref().unwrap_or("?");
                    self.reason = format!(
                        "drain requested by {who} {} ago, {}",
                        Human(drained_for),
                        sessions_left(obs.sessions)
                    );
                }
                None
            }
            State::Draining => {
                let drained_for = now - self.since;
                let stuck = self
                    .stuck
                    .as_deref()
                    .map_or(String::new(), |why| format!(" ({why})"));
                if drained_for >= p.drain_timeout {
                    let why = format!(
                        "drained for {} (--drain-timeout), {}{stuck}",
                        Human(drained_for),
                        sessions_left(obs.sessions)
                    );
                    self.enter(now, State::Recycle, why)
                } else if obs.sessions == Some(0) && drained_for >= p.min_drain {
                    let why = format!(
                        "last session ended after draining {}{stuck}",
                        Human(drained_for)
                    );
                    self.enter(now, State::Recycle, why)
                } else {
                    self.reason = crate::units::clip(
                        &format!(
                            "draining for {}, {}{stuck}",
                            Human(drained_for),
                            sessions_left(obs.sessions)
                        ),
                        MAX_REASON_BYTES,
                    );
                    None
                }
            }
            State::Stalled => {
                // Memory still decides whether to drain; short of that, the stall holds.
                let (to, why) = self.judge(now, mem);
                if to != State::Draining {
                    return None;
                }
                if let Gate::Closed(wait) = &self.gate {
                    if let Some(why) = self.cannot_wait(mem, &why, wait) {
                        return self.enter(now, State::Draining, why);
                    }
                    self.deferred = true;
                    return None;
                }
                self.enter(now, to, why)
            }
            State::Starting | State::Healthy | State::Elevated => {
                let (to, why) = self.judge(now, mem);
                if to == State::Draining
                    && let Gate::Closed(wait) = &self.gate
                {
                    if let Some(why) = self.cannot_wait(mem, &why, wait) {
                        return self.enter(now, State::Draining, why);
                    }
                    // Ready still, and saying why it does not drain.
                    self.deferred = true;
                    let why = format!("{why}; {wait}");
                    return self.stay_or_enter(now, State::Elevated, why);
                }
                self.stay_or_enter(now, to, why)
            }
        }
    }

    /// A drain held back at the gate that starts anyway, and why: memory past halfway from
    /// the threshold to `critical`. A waiter keeps taking calls, and each holds memory; one
    /// that waits on until `critical` restarts with its calls on, where a drain begun now
    /// loses none (it takes no new call, and memory only falls as calls end). The budget
    /// spreads the drains of a fleet that fragments in step; it must not turn them into
    /// restarts with the calls on.
    fn cannot_wait(&self, mem: u64, why: &str, wait: &str) -> Option<String> {
        self.near_critical(mem)
            .then(|| format!("{why}: drains without a slot ({wait})"))
    }

    /// Whether memory is past halfway from the threshold to `critical`.
    fn near_critical(&self, mem: u64) -> bool {
        let p = &self.policy;
        p.critical_bytes.is_some_and(|critical| {
            mem > p.threshold_bytes + critical.saturating_sub(p.threshold_bytes) / 2
        })
    }

    /// Healthy, elevated or draining, by memory alone, with the reason.
    fn judge(&self, now: Instant, mem: u64) -> (State, String) {
        let p = &self.policy;
        let kind = p.memory;
        let threshold = Bytes(p.threshold_bytes);
        if mem <= p.threshold_bytes {
            let why = format!("{kind} {} at or below threshold {threshold}", Bytes(mem));
            return (State::Healthy, why);
        }
        let idle_for = self.idle_over_since.map_or(Duration::ZERO, |t| now - t);
        if self.idle_over_since.is_some() && idle_for >= p.idle_sustain {
            let why = format!(
                "{kind} {} over threshold {threshold} for {} with no sessions: \
                 memory that does not come back when sessions end",
                Bytes(mem),
                Human(idle_for)
            );
            return (State::Draining, why);
        }
        let over_for = self.over_for(now);
        if self.near_critical(mem) {
            // Calls that keep coming would take it over critical, which restarts it with
            // them on: better to stop taking them now than to wait out --sustain.
            let why = format!(
                "{kind} {} past halfway from threshold {threshold} to critical {}",
                Bytes(mem),
                Bytes(p.critical_bytes.unwrap_or_default())
            );
            return (State::Draining, why);
        }
        let why = format!(
            "{kind} {} over threshold {threshold} for {}",
            Bytes(mem),
            Human(over_for)
        );
        if over_for >= p.sustain {
            (State::Draining, why)
        } else {
            (State::Elevated, why)
        }
    }

    fn stay_or_enter(&mut self, now: Instant, to: State, reason: String) -> Option<Transition> {
        if self.state == to {
            self.reason = crate::units::clip(&reason, MAX_REASON_BYTES);
            None
        } else {
            self.enter(now, to, reason)
        }
    }

    fn enter(&mut self, now: Instant, to: State, reason: String) -> Option<Transition> {
        let from = self.state;
        let reason = crate::units::clip(&reason, MAX_REASON_BYTES);
        self.reason = reason.clone();
        if from == to {
            return None;
        }
        self.state = to;
        self.since = now;
        Some(Transition { from, to, reason })
    }
}

/// Why a drain request or cancellation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DrainRefused {
    #[error("no target to drain: the server is not running")]
    NoTarget,
    #[error("the server is already to be restarted")]
    Recycling,
    #[error("this is a memory drain, which is never cancelled: fragmentation does not heal")]
    MemoryDrain,
}

/// Records a step at `now`; true when the previous one was more than `max_gap` before.
fn gap(last: &mut Option<Instant>, now: Instant, max_gap: Duration) -> bool {
    let previous = last.replace(now);
    previous.is_some_and(|at| now.saturating_duration_since(at) > max_gap)
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
            server: ServerPolicy {
                name: "kms",
                failures: 3,
                hang_timeout: Duration::from_secs(60),
            },
            reconnect_grace: Duration::from_secs(10),
            max_gap: Duration::from_secs(600),
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

    const STUCK: &str = "kms teardown stuck: 3 pipelines released but not destroyed for 20s";

    #[test]
    fn a_stuck_teardown_drains_at_once_whatever_the_memory_and_the_fleets_gate() {
        let (mut d, t0) = started(policy());
        d.observe(t0 + SECOND, with_sessions(100, 4));
        d.set_gate(Gate::Closed(
            "waiting for a drain slot: held by kms-2".into(),
        ));
        let tr = d
            .teardown_stuck(t0 + 2 * SECOND, STUCK)
            .expect("a transition");
        assert_eq!((tr.from, tr.to), (State::Healthy, State::Draining));
        assert_eq!(tr.reason, STUCK, "the reason names it");
        assert!(!d.state().ready(), "no new session, at once");
        assert_eq!(d.teardown_stuck(t0 + 3 * SECOND, STUCK), None, "said once");
        // Memory under the threshold does not undo it.
        d.observe(t0 + 4 * SECOND, with_sessions(100, 2));
        assert_eq!(d.state(), State::Draining, "latched");
        assert!(d.reason().contains(STUCK), "{}", d.reason());
        assert!(d.reason().contains("2 sessions left"), "{}", d.reason());
    }

    #[test]
    fn a_stuck_teardown_recycles_at_its_last_session_after_min_drain() {
        let (mut d, t0) = started(policy());
        d.observe(t0 + SECOND, with_sessions(100, 1));
        d.teardown_stuck(t0 + SECOND, STUCK);
        d.observe(t0 + 10 * SECOND, with_sessions(100, 0));
        assert_eq!(d.state(), State::Draining, "--min-drain (30s) first");
        let tr = d
            .observe(t0 + 31 * SECOND, with_sessions(100, 0))
            .expect("a transition");
        assert_eq!(tr.to, State::Recycle);
        assert!(
            tr.reason
                .starts_with("last session ended after draining 30s")
                && tr.reason.contains(STUCK),
            "{}",
            tr.reason
        );
    }

    #[test]
    fn a_requested_drain_becomes_a_stuck_teardowns_and_a_stall_gives_way_to_it() {
        let (mut d, t0) = started(policy());
        d.observe(t0 + SECOND, with_sessions(100, 1));
        d.request_drain(t0 + SECOND, "operator").unwrap();
        d.teardown_stuck(t0 + 2 * SECOND, STUCK);
        assert_eq!(d.requested_by(), None, "no longer cancellable");
        assert_eq!(
            d.cancel_drain(t0 + 3 * SECOND, "operator"),
            Err(DrainRefused::MemoryDrain)
        );
        let tr = d.observe(t0 + 40 * SECOND, with_sessions(100, 0));
        assert_eq!(tr.map(|t| t.to), Some(State::Recycle), "it recycles");

        let (mut d, t0) = started(policy());
        d.observe(t0 + SECOND, with_sessions(100, 1));
        for _ in 0..3 {
            d.server_answers(t0 + SECOND, 3);
        }
        assert_eq!(d.state(), State::Stalled);
        let tr = d.teardown_stuck(t0 + 2 * SECOND, STUCK);
        assert_eq!(tr.map(|t| t.to), Some(State::Draining));
        // A new incarnation (KMS restarted) starts clean.
        d.new_incarnation(t0 + 60 * SECOND, policy(), "pid 43");
        assert_eq!(d.stuck(), None);
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
    fn a_drain_ends_on_a_zero_only_once_a_read_after_the_decision_confirms_it() {
        let (mut d, t0) = started(policy());
        let drained = feed(&mut d, t0, 5 * SECOND, Duration::from_secs(300), mem(1200));
        let early = drained + Duration::from_secs(29);
        assert!(
            !d.ends_on_zero(early, with_sessions(1200, 0)),
            "before --min-drain a zero ends nothing, so it needs no fresh read"
        );
        let after = drained + Duration::from_secs(30);
        assert!(
            !d.ends_on_zero(after, with_sessions(1200, 1)),
            "a live session ends nothing"
        );
        assert!(
            !d.ends_on_zero(after, mem(1200)),
            "nor does an unknown count"
        );
        assert!(
            d.ends_on_zero(after, with_sessions(1200, 0)),
            "a zero that would end the drain asks for a read begun after the decision"
        );
        assert!(
            !d.ends_on_zero(drained + Duration::from_secs(3600), with_sessions(1200, 0)),
            "--drain-timeout ends it whatever the count: no read needed"
        );
        assert_eq!(
            d.observe(after, with_sessions(1200, 1)),
            None,
            "the fresh read found a session that arrived since the poll: the drain goes on"
        );
        assert_eq!(d.state(), State::Draining);
        let (mut requested, t0) = started(policy());
        requested.observe(t0, mem(500));
        requested.request_drain(t0, "admin").unwrap();
        assert!(
            !requested.ends_on_zero(t0 + Duration::from_secs(60), with_sessions(500, 0)),
            "a requested drain never recycles"
        );
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
    fn a_server_that_stops_answering_takes_no_new_sessions_but_is_not_restarted_yet() {
        let (mut d, t0) = started(policy());
        d.observe(t0, mem(500));
        assert_eq!(
            d.server_answers(t0, 2),
            None,
            "2 failed pings of 3 change nothing"
        );
        let tr = d.server_answers(t0 + SECOND, 3).expect("a transition");
        assert_eq!((tr.from, tr.to), (State::Healthy, State::Stalled));
        assert_eq!(
            tr.reason,
            "kms not answering: 3 pings in a row failed; restart if it lasts 1m"
        );
        assert!(!d.state().ready(), "a stalled server takes no new sessions");
        assert!(
            d.state().healthy(),
            "a stall is not yet a reason to restart"
        );
    }

    #[test]
    fn a_stall_shorter_than_the_hang_timeout_never_recycles() {
        let (mut d, t0) = started(policy());
        d.observe(t0, mem(500));
        d.server_answers(t0, 3);
        d.server_answers(t0 + Duration::from_secs(59), 8);
        assert_eq!(d.state(), State::Stalled, "59 s of a 60 s hang timeout");
        let tr = d
            .server_answers(t0 + Duration::from_secs(60), 0)
            .expect("a transition");
        assert_eq!(
            (tr.from, tr.to),
            (State::Stalled, State::Healthy),
            "a server that answers again returns to the state its memory gives"
        );
        assert_eq!(tr.reason, "kms answers again after a stall of 1m");
    }

    #[test]
    fn a_pause_of_memprobe_restarts_the_sustain_window() {
        // Over at t0, then memprobe is stopped for longer than max_gap: memory may have been
        // below the threshold all that time, so the window starts again after the gap.
        let mut p = policy();
        p.max_gap = Duration::from_secs(15);
        let (mut d, t0) = started(p);
        let t = feed(&mut d, t0, 5 * SECOND, Duration::from_secs(100), mem(1200));
        let after_pause = t + Duration::from_secs(250);
        d.observe(after_pause, mem(1200));
        assert_eq!(
            d.state(),
            State::Elevated,
            "a gap in the samples is no evidence: 100 s seen + 250 s unseen never drains"
        );
        assert_eq!(d.over_for(after_pause), Duration::ZERO);
        let t = feed(
            &mut d,
            after_pause + 5 * SECOND,
            5 * SECOND,
            Duration::from_secs(290),
            mem(1200),
        );
        assert_eq!(d.state(), State::Elevated, "295 s seen after the gap");
        d.observe(t + 5 * SECOND, mem(1200));
        assert_eq!(
            d.state(),
            State::Draining,
            "a full --sustain of samples after the gap drains"
        );
    }

    #[test]
    fn a_gap_no_longer_than_max_gap_is_not_a_pause() {
        let mut p = policy();
        p.max_gap = Duration::from_secs(15);
        let (mut d, t0) = started(p);
        let mut t = t0;
        while t <= t0 + Duration::from_secs(300) {
            d.observe(t, mem(1200));
            t += Duration::from_secs(15);
        }
        assert_eq!(
            d.state(),
            State::Draining,
            "late samples within max_gap still cover the window"
        );
    }

    #[test]
    fn a_pause_of_memprobe_restarts_the_idle_window() {
        let mut p = policy();
        p.max_gap = Duration::from_secs(15);
        let (mut d, t0) = started(p);
        d.observe(t0, with_sessions(1200, 0));
        d.observe(t0 + Duration::from_secs(70), with_sessions(1200, 0));
        assert_eq!(
            d.state(),
            State::Elevated,
            "idle memory unseen for 70 s is no evidence for --idle-sustain"
        );
    }

    #[test]
    fn a_pause_of_memprobe_is_not_a_hang() {
        let mut p = policy();
        p.max_gap = Duration::from_secs(15);
        let (mut d, t0) = started(p);
        d.observe(t0, mem(500));
        d.server_answers(t0, 3);
        assert_eq!(d.state(), State::Stalled);
        // memprobe stopped for 100 s; at SIGCONT the ping in flight has timed out too.
        let resumed = t0 + Duration::from_secs(100);
        d.observe(resumed, mem(500));
        d.server_answers(resumed, 4);
        assert_eq!(
            d.state(),
            State::Stalled,
            "time memprobe did not run is not time the server failed to answer"
        );
        d.server_answers(resumed + Duration::from_secs(10), 5);
        d.server_answers(resumed + Duration::from_secs(20), 6);
        let mut t = resumed + Duration::from_secs(20);
        while t < resumed + Duration::from_secs(60) {
            t += Duration::from_secs(10);
            d.server_answers(t, 7);
        }
        assert_eq!(
            d.state(),
            State::Recycle,
            "a stall seen for --kms-hang-timeout after the pause is a hang"
        );
    }

    #[test]
    fn a_stall_that_lasts_the_hang_timeout_recycles() {
        let (mut d, t0) = started(policy());
        d.observe(t0, mem(500));
        d.server_answers(t0, 3);
        let tr = d
            .server_answers(t0 + Duration::from_secs(60), 9)
            .expect("a transition");
        assert_eq!((tr.from, tr.to), (State::Stalled, State::Recycle));
        assert!(tr.reason.contains("hung"), "{}", tr.reason);
        assert!(!d.state().ready() && !d.state().healthy());
    }

    #[test]
    fn a_stall_during_a_drain_keeps_the_drain_latched() {
        let (mut d, t0) = started(policy());
        let t = feed(&mut d, t0, 5 * SECOND, Duration::from_secs(300), mem(1200));
        assert_eq!(d.state(), State::Draining);
        assert_eq!(
            d.server_answers(t, 3),
            None,
            "draining already takes no sessions"
        );
        assert_eq!(d.server_answers(t + SECOND, 0), None);
        assert_eq!(
            d.state(),
            State::Draining,
            "an answer after a stall does not undo a memory drain"
        );
        d.server_answers(t + 2 * SECOND, 3);
        d.server_answers(t + 62 * SECOND, 3);
        assert_eq!(
            d.state(),
            State::Recycle,
            "a draining server that hangs past the timeout is recycled"
        );
    }

    #[test]
    fn memory_still_drains_a_stalled_server() {
        let (mut d, t0) = started(policy());
        d.observe(t0, mem(1200));
        d.server_answers(t0, 3);
        assert_eq!(d.state(), State::Stalled);
        d.observe(t0 + Duration::from_secs(30), mem(1200));
        assert_eq!(d.state(), State::Stalled, "elevated memory under a stall");
        d.observe(t0 + Duration::from_secs(300), mem(1200));
        assert_eq!(
            d.state(),
            State::Draining,
            "memory over the threshold for --sustain drains, stall or not"
        );
        let (mut d, t0) = started(policy());
        d.observe(t0, mem(1200));
        d.server_answers(t0, 3);
        let tr = d.server_answers(t0 + SECOND, 0).unwrap();
        assert_eq!(tr.to, State::Elevated, "back to what memory says: elevated");
    }

    #[test]
    fn a_lost_server_is_not_a_stalled_one() {
        let (mut d, t0) = started(policy());
        d.lost(t0, "gone".into());
        assert_eq!(
            d.server_answers(t0 + SECOND, 3),
            None,
            "a server that is gone is lost, not hung"
        );
    }

    #[test]
    fn a_target_out_of_reach_for_less_than_the_grace_keeps_its_state() {
        let (mut d, t0) = started(policy());
        let t = feed(&mut d, t0, 5 * SECOND, Duration::from_secs(300), mem(1200));
        assert_eq!(d.state(), State::Draining);
        assert_eq!(d.unreachable(t + SECOND, "down".into()), (false, None));
        assert_eq!(d.unreachable(t + 10 * SECOND, "down".into()), (false, None));
        d.observe(t + 11 * SECOND, mem(1200));
        assert_eq!(
            d.state(),
            State::Draining,
            "back within 10 s: the drain goes on"
        );
        d.unreachable(t + 20 * SECOND, "down".into());
        let (lost, tr) = d.unreachable(t + 31 * SECOND, "down".into());
        assert!(lost, "out of reach past the grace is lost");
        assert_eq!(tr.unwrap().to, State::Lost);
    }

    #[test]
    fn a_missing_privilege_is_fatal_only_at_the_first_incarnation() {
        let (mut d, t0) = started(policy());
        assert!(
            d.missing_privilege_is_fatal(),
            "at start: a setup error to report at once"
        );
        d.lost(t0, "gone".into());
        d.new_incarnation(t0 + SECOND, policy(), "pid 43");
        assert!(
            !d.missing_privilege_is_fatal(),
            "after a restart of the target, the sidecar keeps guarding"
        );
    }

    #[test]
    fn a_requested_drain_takes_no_new_sessions_and_is_never_recycled_for() {
        let (mut d, t0) = started(policy());
        d.observe(t0, with_sessions(500, 2));
        let tr = d.request_drain(t0, "admin").unwrap().expect("a transition");
        assert_eq!((tr.from, tr.to), (State::Healthy, State::Draining));
        assert_eq!(tr.reason, "drain requested by admin");
        assert!(!d.state().ready() && d.state().healthy());
        d.observe(t0 + Duration::from_secs(7200), with_sessions(500, 0));
        assert_eq!(
            d.state(),
            State::Draining,
            "neither zero sessions nor --drain-timeout recycles a requested drain"
        );
        assert!(
            d.reason()
                .starts_with("drain requested by admin 2h ago, 0 sessions left")
        );
    }

    #[test]
    fn a_requested_drain_can_be_cancelled_and_a_memory_drain_cannot() {
        let (mut d, t0) = started(policy());
        d.observe(t0, mem(1200));
        d.request_drain(t0, "admin").unwrap();
        let tr = d.cancel_drain(t0 + SECOND, "admin").unwrap().unwrap();
        assert_eq!(
            tr.to,
            State::Elevated,
            "cancelled: back to what memory says"
        );
        let t = feed(&mut d, t0, 5 * SECOND, Duration::from_secs(300), mem(1200));
        assert_eq!(d.state(), State::Draining);
        assert_eq!(
            d.cancel_drain(t, "admin"),
            Err(DrainRefused::MemoryDrain),
            "a memory drain is never cancelled"
        );
        assert_eq!(d.cancel_drain(t, "admin"), Err(DrainRefused::MemoryDrain));
    }

    #[test]
    fn memory_latches_a_requested_drain() {
        let (mut d, t0) = started(policy());
        d.observe(t0, mem(1200));
        d.request_drain(t0, "admin").unwrap();
        d.observe(t0 + Duration::from_secs(300), mem(1200));
        assert_eq!(d.requested_by(), None, "memory has latched the drain");
        assert_eq!(
            d.cancel_drain(t0 + Duration::from_secs(301), "admin"),
            Err(DrainRefused::MemoryDrain)
        );
    }

    #[test]
    fn a_drain_needs_a_server_to_drain() {
        let (mut d, t0) = started(policy());
        d.lost(t0, "gone".into());
        assert_eq!(d.request_drain(t0, "admin"), Err(DrainRefused::NoTarget));
    }

    #[test]
    fn a_quiet_moment_drain_recycles_once_idle_for_min_drain() {
        let (mut d, t0) = started(policy());
        d.observe(t0, with_sessions(800, 0));
        let tr = d
            .drain_at_quiet_moment(t0, "quiet moment".into())
            .expect("an open gate")
            .expect("a transition");
        assert_eq!((tr.from, tr.to), (State::Healthy, State::Draining));
        d.observe(t0 + 10 * SECOND, with_sessions(800, 1));
        d.observe(t0 + 40 * SECOND, with_sessions(800, 1));
        assert_eq!(
            d.state(),
            State::Draining,
            "a session that slipped in before the drain is waited for"
        );
        d.observe(t0 + 50 * SECOND, with_sessions(800, 0));
        assert_eq!(
            d.state(),
            State::Recycle,
            "then the drain's own rule restarts it"
        );
        let (mut d, t0) = started(policy());
        d.observe(t0, mem(1200));
        let t = feed(&mut d, t0, 5 * SECOND, Duration::from_secs(300), mem(1200));
        assert_eq!(d.state(), State::Draining);
        assert_eq!(
            d.drain_at_quiet_moment(t, "quiet".into()),
            Ok(None),
            "only a ready instance is drained at a quiet moment"
        );
    }

    fn closed() -> Gate {
        Gate::Closed("waiting for a drain slot: held by kms-1".into())
    }

    #[test]
    fn a_closed_gate_keeps_ready_an_instance_memory_would_drain_and_says_why() {
        let (mut d, t0) = started(policy());
        d.set_gate(closed());
        let t = feed(&mut d, t0, 5 * SECOND, Duration::from_secs(600), mem(1200));
        assert_eq!(d.state(), State::Elevated, "still taking calls");
        assert!(d.state().ready());
        assert!(d.deferred(), "and asking the fleet for a slot");
        assert!(
            d.reason()
                .ends_with("for 10m; waiting for a drain slot: held by kms-1"),
            "{}",
            d.reason()
        );
        d.set_gate(Gate::Open);
        let tr = d
            .observe(t + 5 * SECOND, mem(1200))
            .expect("drains at once");
        assert_eq!((tr.from, tr.to), (State::Elevated, State::Draining));
        assert!(!d.deferred());
    }

    #[test]
    fn a_closed_gate_holds_back_an_idle_drain_and_one_from_a_stall() {
        let (mut d, t0) = started(policy());
        d.set_gate(closed());
        feed(
            &mut d,
            t0,
            5 * SECOND,
            Duration::from_secs(120),
            with_sessions(1200, 0),
        );
        assert_eq!(d.state(), State::Elevated);
        assert!(d.deferred());
        d.server_answers(t0 + 125 * SECOND, 3);
        assert_eq!(d.state(), State::Stalled);
        d.observe(t0 + 130 * SECOND, with_sessions(1200, 0));
        assert_eq!(d.state(), State::Stalled, "the stall holds, no drain");
        assert!(d.deferred());
    }

    #[test]
    fn critical_recycles_and_an_operator_drains_whatever_the_gate() {
        let (mut d, t0) = started(Policy {
            critical_bytes: Some(1500 * MI),
            ..policy()
        });
        d.set_gate(closed());
        let tr = d.request_drain(t0, "admin").unwrap().expect("drains");
        assert_eq!(tr.to, State::Draining, "an operator never waits for a slot");
        let tr = d.observe(t0 + SECOND, mem(1600)).expect("recycles");
        assert_eq!(tr.to, State::Recycle, "critical never waits for a slot");
    }

    #[test]
    fn a_waiter_past_halfway_to_critical_drains_without_a_slot() {
        let (mut d, t0) = started(Policy {
            critical_bytes: Some(2000 * MI),
            ..policy()
        });
        d.set_gate(closed());
        let t = feed(&mut d, t0, 5 * SECOND, Duration::from_secs(600), mem(1500));
        assert_eq!(
            d.state(),
            State::Elevated,
            "at halfway from the threshold to critical, it still waits for a slot"
        );
        assert!(d.deferred());
        let tr = d
            .observe(t + 5 * SECOND, mem(1501))
            .expect("past halfway, it drains");
        assert_eq!((tr.from, tr.to), (State::Elevated, State::Draining));
        assert!(
            tr.reason.contains("past halfway from threshold")
                && tr
                    .reason
                    .ends_with("(waiting for a drain slot: held by kms-1)"),
            "{}",
            tr.reason
        );
        assert!(!d.deferred(), "and asks the fleet for nothing");
        let (mut d, t0) = started(policy());
        d.set_gate(closed());
        feed(&mut d, t0, 5 * SECOND, Duration::from_secs(600), mem(1900));
        assert_eq!(
            d.state(),
            State::Elevated,
            "without critical, a waiter waits for its slot"
        );
    }

    #[test]
    fn memory_past_halfway_to_critical_drains_without_waiting_for_sustain() {
        let (mut d, t0) = started(Policy {
            critical_bytes: Some(2000 * MI),
            ..policy()
        });
        d.observe(t0, mem(1500));
        assert_eq!(
            d.state(),
            State::Elevated,
            "at halfway, --sustain still holds"
        );
        let tr = d
            .observe(t0 + 5 * SECOND, mem(1600))
            .expect("past halfway, at once");
        assert_eq!((tr.from, tr.to), (State::Elevated, State::Draining));
        assert_eq!(
            tr.reason,
            "rss 1.56 GiB past halfway from threshold 1000.00 MiB to critical 1.95 GiB"
        );
    }

    #[test]
    fn a_quiet_moment_drain_is_deferred_at_a_closed_gate() {
        let (mut d, t0) = started(policy());
        d.observe(t0, with_sessions(800, 0));
        d.set_gate(closed());
        assert_eq!(d.drain_at_quiet_moment(t0, "quiet".into()), Err(Deferred));
        assert_eq!(d.state(), State::Healthy);
        assert!(d.deferred());
    }

    #[test]
    fn reasons_stay_one_short_line() {
        let (mut d, t0) = started(policy());
        d.lost(t0, "x".repeat(100_000));
        assert!(d.reason().len() < 600, "a reason is capped");
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

    mod properties {
        //! What must hold for every sequence of inputs, not only the ones written above.

        use super::*;
        use proptest::prelude::*;

        /// One thing that can happen to a decider, a `gap_ms` after the previous one.
        #[derive(Clone, Debug)]
        enum Event {
            Sample {
                gap_ms: u64,
                mib: u64,
                sessions: Option<u32>,
            },
            Pings {
                gap_ms: u64,
                failed: u32,
            },
            Lost {
                gap_ms: u64,
            },
            Unreachable {
                gap_ms: u64,
            },
            Reborn {
                gap_ms: u64,
            },
        }

        fn event() -> impl Strategy<Value = Event> {
            let gap = 0u64..120_000;
            prop_oneof![
                6 => (gap.clone(), 0u64..3000, proptest::option::of(0u32..4))
                    .prop_map(|(gap_ms, mib, sessions)| Event::Sample { gap_ms, mib, sessions }),
                2 => (gap.clone(), 0u32..6).prop_map(|(gap_ms, failed)| Event::Pings { gap_ms, failed }),
                1 => gap.clone().prop_map(|gap_ms| Event::Lost { gap_ms }),
                1 => gap.clone().prop_map(|gap_ms| Event::Unreachable { gap_ms }),
                1 => gap.prop_map(|gap_ms| Event::Reborn { gap_ms }),
            ]
        }

        /// Plays `events`, calling `check` with the decider and the transition after each.
        fn play(events: &[Event], mut check: impl FnMut(&Decider, Option<&Transition>, &Event)) {
            let (mut d, mut t) = started(policy());
            for e in events {
                let (gap_ms, tr) = match e {
                    Event::Sample {
                        gap_ms,
                        mib,
                        sessions,
                    } => {
                        t += Duration::from_millis(*gap_ms);
                        let obs = Observation {
                            memory_bytes: mib * MI,
                            sessions: *sessions,
                        };
                        (gap_ms, d.observe(t, obs))
                    }
                    Event::Pings { gap_ms, failed } => {
                        t += Duration::from_millis(*gap_ms);
                        (gap_ms, d.server_answers(t, *failed))
                    }
                    Event::Lost { gap_ms } => {
                        t += Duration::from_millis(*gap_ms);
                        (gap_ms, d.lost(t, "gone".into()))
                    }
                    Event::Unreachable { gap_ms } => {
                        t += Duration::from_millis(*gap_ms);
                        (gap_ms, d.unreachable(t, "down".into()).1)
                    }
                    Event::Reborn { gap_ms } => {
                        t += Duration::from_millis(*gap_ms);
                        (gap_ms, Some(d.new_incarnation(t, policy(), "pid 7")))
                    }
                };
                let _ = gap_ms;
                check(&d, tr.as_ref(), e);
            }
        }

        proptest! {
            #[test]
            fn ready_only_when_healthy_or_elevated(events in prop::collection::vec(event(), 1..80)) {
                play(&events, |d, _, _| {
                    let s = d.state();
                    assert_eq!(
                        s.ready(),
                        matches!(s, State::Healthy | State::Elevated),
                        "ready is never true in draining, stalled, recycle, lost or starting"
                    );
                    assert_eq!(s.healthy(), s != State::Recycle, "only recycle fails liveness");
                });
            }

            #[test]
            fn recycle_happens_at_most_once_per_incarnation(events in prop::collection::vec(event(), 1..80)) {
                let mut recycles = 0;
                play(&events, |_, tr, e| {
                    if matches!(e, Event::Reborn { .. }) {
                        recycles = 0;
                    }
                    if tr.is_some_and(|tr| tr.to == State::Recycle) {
                        recycles += 1;
                    }
                    assert!(recycles <= 1, "recycled twice in one incarnation");
                });
            }

            #[test]
            fn over_the_threshold_for_less_than_sustain_never_drains(
                samples in prop::collection::vec((0u64..20_000, any::<bool>()), 1..120)
            ) {
                // No sessions known and no critical level: only --sustain can drain.
                let (mut d, mut t) = started(policy());
                let mut run_since: Option<Instant> = None;
                let mut longest = Duration::ZERO;
                for (gap_ms, over) in samples {
                    t += Duration::from_millis(gap_ms);
                    if over {
                        let since = *run_since.get_or_insert(t);
                        longest = longest.max(t - since);
                    } else {
                        run_since = None;
                    }
                    d.observe(t, mem(if over { 1200 } else { 900 }));
                    if d.state() == State::Draining {
                        prop_assert!(
                            longest >= policy().sustain,
                            "drained after an unbroken run over the threshold of only {longest:?}"
                        );
                    }
                }
            }

            #[test]
            fn a_stall_shorter_than_the_hang_timeout_never_recycles(
                pings in prop::collection::vec((0u64..20_000, 0u32..6), 1..120)
            ) {
                // Memory stays under the threshold: only a hang can recycle.
                let (mut d, mut t) = started(policy());
                d.observe(t, mem(500));
                let mut stall_since: Option<Instant> = None;
                let mut longest = Duration::ZERO;
                for (gap_ms, failed) in pings {
                    t += Duration::from_millis(gap_ms);
                    if failed >= 3 {
                        let since = *stall_since.get_or_insert(t);
                        longest = longest.max(t - since);
                    } else {
                        stall_since = None;
                    }
                    d.server_answers(t, failed);
                    if d.state() == State::Recycle {
                        prop_assert!(
                            longest >= policy().server.hang_timeout,
                            "recycled after a stall of only {longest:?}"
                        );
                    }
                }
            }
        }
    }
}
