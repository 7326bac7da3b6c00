//! The sampling loop: read the sources → decide → publish.
//!
//! One thread of its own owns every piece of mutable state (the decider, and the [`Record`]
//! of counters, transitions and samples) and publishes an immutable [`Snapshot`] through a
//! `watch` channel after each step; the outlets only read the latest one. The sources'
//! blocking reads (/proc) happen on that thread, never on the async runtime: a slow read (a
//! huge target's smaps_rollup, a stuck mmap lock) stalls no probe, and `/livez` reports it
//! instead. A thread rather than a task on the blocking pool: a step then wakes one thread
//! once, and an idle sidecar costs less CPU.
//!
//! Every decision is the [`Decider`]'s; the loop only carries what the sources say to it and
//! keeps the record. It takes its clock and its sleep from outside ([`Monitor::run`]), so a
//! unit test drives it step by step with fake sources.
//!
//! While the target is tracked, a step comes every `--interval`. While it is lost, the loop
//! looks for it again with a backoff from 100 ms up to the interval: a restarted server is
//! found quickly, and a server that is not there costs at most one scan per interval.

mod flaps;
mod record;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::fleet::{Ask, Coordinator};
use crate::forecast;
use crate::limit::{self, LimitSource, MemoryLimit};
use crate::policy::quiet::QuietMoment;
use crate::policy::{self, Decider, Observation, Policy, State, Transition};
use crate::sources::operator::{Asked, Message, Request};
use crate::sources::reported::{self, Reported};
use crate::sources::{
    MemoryFrom, MemoryKind, MemorySample, MemorySource, Outcome, SampleError, ServerReport,
    SessionSource, TargetStatus,
};
use crate::status::{
    ForecastStatus, MemoryStatus, Point, Renderers, Snapshot, Status, ThresholdStatus,
};
use crate::units::{Bytes, Human, SizeOrPercent};
use record::Record;

/// What the loop runs by, composed by the wiring from the families' settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub interval: Duration,
    /// How far back the page's history reaches.
    pub history: Duration,
    /// The figure that decides, and the limit given (`--memory-limit`), if any.
    pub memory: MemoryKind,
    pub memory_limit: Option<u64>,
    pub memory_from: MemoryFrom,
    pub policy: policy::Settings,
    /// How the forecast cuts the history: [`forecast::Settings::DEFAULT`] for a server, a
    /// scaled-down one for the demo, whose whole story lasts a minute.
    pub forecast: forecast::Settings,
    /// What `/status` shows of the settings in force.
    pub shown: Arc<crate::status::Settings>,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// A failure that stops memprobe: it cannot do its job as configured.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Fatal(#[from] SampleError);

pub struct Monitor {
    settings: Settings,
    memory: Box<dyn MemorySource>,
    sessions: Option<Box<dyn SessionSource>>,
    /// What the target says of itself, when it reports (the demo's workload).
    reported: Option<reported::Feed>,
    /// What the KMS gate sees, when it is on.
    gate: Option<Arc<crate::sources::kms::wire::Wire>>,
    decider: Decider,
    target: Option<TargetStatus>,
    limit: MemoryLimit,
    last_sample: Option<(MemorySample, SystemTime)>,
    session_count: Option<u32>,
    backoff: Duration,
    /// The session source's last report, published again after an operator's request.
    server: Option<ServerReport>,
    /// What happened, for `/status`, `/metrics` and the page.
    record: Record,
    /// The quiet-moment rule: drain an idle instance whose memory is forecast over the
    /// threshold soon (`--recycle-when-idle-within`).
    quiet: QuietMoment,
    /// When the monitor started: the forecast's clock counts from here.
    started: Instant,
    /// The fleet this instance belongs to, told of every transition.
    fleet: Box<dyn Coordinator>,
    /// Flips between healthy and elevated, counted rather than logged one by one.
    flaps: flaps::Flaps,
    /// The time of the step or request being handled, for the log's count of flips.
    now: Instant,
    render: Renderers,
    publish: watch::Sender<Arc<Snapshot>>,
}

impl Monitor {
    /// A monitor over these sources and the channel it publishes on. Publishes a first
    /// snapshot (state `lost`, "looking for the target") before any read of the target.
    pub fn new(
        settings: Settings,
        memory: Box<dyn MemorySource>,
        sessions: Option<Box<dyn SessionSource>>,
        fleet: Box<dyn Coordinator>,
        render: Renderers,
        now: Instant,
    ) -> (Self, watch::Receiver<Arc<Snapshot>>) {
        let limit = limit::resolve(settings.memory_limit, None);
        let mut decider = Decider::new(judged_by(&settings, limit), now);
        let mut fleet = fleet;
        decider.set_gate(fleet.step(Ask::default()));
        // Replaced by the first real publish below, before anyone can read it.
        let placeholder = Snapshot::new(Status::default(), now, render.clone());
        let (publish, snapshots) = watch::channel(Arc::new(placeholder));
        let record = Record::new(
            settings.history,
            settings.interval,
            settings.forecast,
            SystemTime::now(),
        );
        let mut monitor = Monitor {
            memory,
            sessions,
            reported: None,
            gate: None,
            decider,
            target: None,
            limit,
            last_sample: None,
            session_count: None,
            backoff: FIRST_BACKOFF,
            server: None,
            record,
            quiet: QuietMoment::new(
                settings.policy.quiet_within,
                settings.policy.min_drain,
                settings.policy.max_gap,
            ),
            started: now,
            fleet,
            flaps: flaps::Flaps::default(),
            now,
            render,
            publish,
            settings,
        };
        monitor.publish(now, None);
        (monitor, snapshots)
    }

    /// Shows what the target reports of itself beside what memprobe measures.
    pub fn show_reports(&mut self, feed: reported::Feed) {
        self.reported = Some(feed);
    }

    /// Shows what the KMS gate sees on the wire in every snapshot.
    pub fn show_gate(&mut self, wire: Arc<crate::sources::kms::wire::Wire>) {
        self.gate = Some(wire);
    }

    /// The target's latest report, if it reports.
    fn reported(&self) -> Option<Reported> {
        self.reported.as_ref().and_then(|feed| *feed.borrow())
    }

    /// Runs on the calling thread until nobody reads the snapshots any more, or until a
    /// fatal error; `clock` tells the time and `wait` waits up to a duration for an operator's
    /// request, which is answered at once, between steps.
    pub fn run(
        mut self,
        clock: impl Fn() -> Instant,
        wait: impl Fn(Duration) -> Option<Message>,
    ) -> Result<(), Fatal> {
        while !self.publish.is_closed() {
            let started = clock();
            let next = self.step(&clock)?;
            let due = started + next;
            loop {
                let left = due.saturating_duration_since(clock());
                if left.is_zero() {
                    break;
                }
                match wait(left) {
                    Some(Message::Ask(asked)) => self.answer(clock(), asked),
                    Some(Message::FreshCount(reply)) => {
                        let count = self.fresh_count();
                        self.publish(clock(), self.server.clone());
                        let _ = reply.send(count);
                    }
                    Some(Message::RecycleActionRan(ran)) => {
                        self.record.recycle_action_ran(ran);
                        self.publish(clock(), self.server.clone());
                    }
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Hands an operator's request to the policy, publishes the outcome and replies with it.
    pub fn answer(&mut self, now: Instant, asked: Asked) {
        self.now = now;
        let outcome = match asked.request {
            Request::Drain => self.decider.request_drain(now, &asked.who),
            Request::CancelDrain => self.decider.cancel_drain(now, &asked.who),
        };
        match &outcome {
            Ok(Some(tr)) => {
                if let Request::Drain = asked.request {
                    self.record.drain_requested();
                }
                self.transition(tr.clone());
            }
            Ok(None) => {}
            Err(refused) => info!("{:?} from {} refused: {refused}", asked.request, asked.who),
        }
        self.publish(now, self.server.clone());
        let _ = asked.reply.send(outcome.map(|_| self.decider.state()));
    }

    /// One step: read the sources, decide, publish. Returns the time to the next step.
    pub fn step(&mut self, clock: &impl Fn() -> Instant) -> Result<Duration, Fatal> {
        let started = clock();
        let server = self.sessions.as_mut().map(|s| s.read());
        self.follow_sessions(server.as_ref().and_then(|s| s.sessions));
        let outcome = self.memory.step(started);
        // The clock is read after the blocking reads, so time spent there is not lost.
        let now = clock().max(started);
        self.now = now;
        self.apply(now, outcome)?;
        if let Some(server) = &server
            && let Some(tr) = self.decider.server_answers(now, server.failed_pings)
        {
            self.transition(tr);
        }
        if let Some(why) = server.as_ref().and_then(|s| s.stuck.as_deref()) {
            self.teardown_stuck(now, why);
        }
        self.server = server.map(|s| s.report);
        self.ask_the_fleet();
        if let Some(flips) = self.flaps.tick(now) {
            info!("{flips}");
        }
        self.publish(now, self.server.clone());
        Ok(if self.target.is_some() {
            self.backoff = FIRST_BACKOFF;
            self.settings.interval
        } else {
            let wait = self.backoff.min(self.settings.interval);
            self.backoff = (self.backoff * 2).min(self.settings.interval);
            wait
        })
    }

    fn apply(&mut self, now: Instant, outcome: Outcome) -> Result<(), Fatal> {
        match outcome {
            Outcome::Sampled(s) => {
                self.learn_allocator();
                self.observe(now, s);
            }
            Outcome::Found {
                target,
                limit,
                first,
            } => {
                self.warn_of_glibc(&target);
                let who = match target.pid {
                    Some(pid) => format!("{} (pid {pid})", target.name),
                    None => target.found_by.clone(),
                };
                self.limit = limit;
                self.target = Some(target);
                self.last_sample = None;
                let policy = judged_by(&self.settings, limit);
                let (line, host_warning) = judging(&self.settings.policy, &policy, limit);
                info!("{line}");
                if let Some(warning) = host_warning {
                    warn!("{warning}");
                }
                let tr = self.decider.new_incarnation(now, policy, &who);
                self.record.found(self.decider.incarnations() > 1);
                self.quiet.new_incarnation();
                self.transition(tr);
                match first {
                    None => {}
                    Some(Ok(s)) => self.observe(now, s),
                    Some(Err(SampleError::Gone(pid))) => {
                        self.gone(now, format!("process {pid} exited"));
                    }
                    Some(Err(e @ SampleError::PssDenied { .. }))
                        if self.decider.missing_privilege_is_fatal() =>
                    {
                        return Err(Fatal(e));
                    }
                    Some(Err(e)) => self.failed(e.to_string()),
                }
            }
            Outcome::Gone(why) => self.gone(now, why),
            Outcome::Unreachable(why) => {
                let (lost, tr) = self.decider.unreachable(now, why);
                if lost {
                    self.memory.forget();
                    self.target = None;
                    self.last_sample = None;
                }
                if let Some(tr) = tr {
                    self.transition(tr);
                }
            }
            Outcome::NotFound(why) => {
                if self.record.not_found(&why) {
                    info!(
                        "waiting for the target: {why} (looking again every {} at most)",
                        Human(self.settings.interval)
                    );
                }
                if let Some(tr) = self.decider.lost(now, why) {
                    self.transition(tr);
                }
            }
            Outcome::Failed(e) => self.failed(e.to_string()),
            Outcome::Unchanged => self.decider.reachable(),
        }
        Ok(())
    }

    /// An allocator that became known only after the target was found (found right after
    /// its exec, before its C library was mapped): shown from now on, and warned of.
    fn learn_allocator(&mut self) {
        let Some(found) = self.memory.allocator_learnt() else {
            return;
        };
        if let Some(target) = &mut self.target {
            target.allocator = found;
            let target = target.clone();
            self.warn_of_glibc(&target);
        }
    }

    /// One warning per run when a KMS runs on the malloc that fragments.
    fn warn_of_glibc(&mut self, target: &TargetStatus) {
        if self.record.warn_of_glibc(target) {
            warn!(
                "{} (pid {}) runs on glibc's malloc, whose heap fragmentation this probe exists \
                 to catch; preload jemalloc: see deploy/kurento-jemalloc",
                target.name,
                target.pid.unwrap_or_default()
            );
        }
    }

    /// The session count from a read that begins now, when the source is polled (kept
    /// and published as the count from then on); the count in hand when it is live already.
    fn fresh_count(&mut self) -> Option<u32> {
        if let Some(fresh) = self.sessions.as_mut().and_then(|s| s.fresh_count()) {
            self.follow_sessions(fresh);
        }
        self.session_count
    }

    /// Keeps the session count, and says how many sessions a drain is waiting for.
    fn follow_sessions(&mut self, sessions: Option<u32>) {
        if sessions != self.session_count
            && self.decider.state() == State::Draining
            && let Some(n) = sessions
        {
            info!(sessions = n, "draining: {n} session(s) left");
        }
        self.session_count = sessions;
    }

    fn observe(&mut self, now: Instant, s: MemorySample) {
        self.last_sample = Some((s, SystemTime::now()));
        let mut obs = Observation {
            memory_bytes: s.deciding(self.settings.memory),
            sessions: self.session_count,
        };
        if self.decider.ends_on_zero(now, obs) {
            // The policy would end the drain on this zero: it must be a count read now.
            obs.sessions = self.fresh_count();
        }
        if let Some(tr) = self.decider.observe(now, obs) {
            self.transition(tr);
        }
        let at_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let reported = self.reported();
        let point = Point {
            at_ms,
            memory_bytes: obs.memory_bytes,
            rss_bytes: s.rss_bytes,
            anon_bytes: s.anon_bytes,
            sessions: self.session_count.or(reported.map(|r| r.sessions)),
            live_bytes: reported.map(|r| r.live_bytes),
            threads: s.threads.map(|n| n.min(u64::from(u32::MAX)) as u32),
            state: self.decider.state(),
            incarnation: self.decider.incarnations().min(u64::from(u32::MAX)) as u32,
        };
        let at = now.saturating_duration_since(self.started);
        self.record.sampled(point, self.session_count, at);
        self.quiet_moment(now, at);
    }

    /// The quiet-moment rule, asked only once the instance has been idle long enough: the
    /// forecast is drawn at most once per bucket.
    fn quiet_moment(&mut self, now: Instant, at: Duration) {
        if !self.quiet.idle(now, self.session_count) {
            return;
        }
        let threshold_bytes = self.decider.policy().threshold_bytes;
        let forecast = match self.record.forecast(threshold_bytes, at) {
            Some(Ok(forecast)) => Some(*forecast),
            _ => None,
        };
        let state = self.decider.state();
        if let Some(why) = self.quiet.decide(now, state, forecast.as_ref()) {
            match self.decider.drain_at_quiet_moment(now, why) {
                Ok(Some(tr)) => self.transition(tr),
                Ok(None) => {}
                Err(policy::Deferred) => self.quiet.deferred(),
            }
        }
    }

    fn gone(&mut self, now: Instant, why: String) {
        self.memory.forget();
        self.target = None;
        self.last_sample = None;
        if let Some(tr) = self.decider.lost(now, why) {
            self.transition(tr);
        }
    }

    /// A sample failed while the target still exists: counted, logged once per kind of error.
    fn failed(&mut self, message: String) {
        let said = format!("sample failed: {message}");
        if self.record.sample_failed(message) {
            warn!("{said}");
        }
    }

    /// Tells the fleet what the decider held back, and takes the gate for the next steps.
    fn ask_the_fleet(&mut self) {
        let fullness = match self.last_sample {
            Some((s, _)) if self.limit.bytes > 0 => {
                s.deciding(self.settings.memory) as f64 / self.limit.bytes as f64
            }
            _ => 0.0,
        };
        let gate = self.fleet.step(Ask {
            state: self.decider.state(),
            wants: self.decider.deferred(),
            fullness: fullness.clamp(0.0, 1.0),
            reason: self.decider.reason(),
        });
        self.decider.set_gate(gate);
    }

    /// The server can no longer tear sessions down: it drains at once (the decider says why,
    /// with the target's threads), said once in the log and as an Event.
    fn teardown_stuck(&mut self, now: Instant, why: &str) {
        let threads = self.last_sample.and_then(|(s, _)| s.threads);
        let why = match threads {
            Some(n) => format!("{why}; threads {n}"),
            None => why.to_owned(),
        };
        if self.decider.state() != State::Lost && self.decider.stuck().is_none() {
            warn!("{why}: no new session from now on; restart once the last listed one ends");
            self.fleet.stuck(&why);
        }
        if let Some(tr) = self.decider.teardown_stuck(now, &why) {
            self.transition(tr);
        }
    }

    fn transition(&mut self, tr: Transition) {
        let said = self.flaps.transition(self.now, &tr);
        if let Some(flips) = said.summary {
            info!("{flips}");
        }
        if said.logged {
            info!(
                from = tr.from.as_str(),
                to = tr.to.as_str(),
                "{}: {}",
                tr.to.as_str(),
                tr.reason
            );
        }
        self.record.transition(&tr, SystemTime::now());
        self.fleet.told(&tr, self.decider.requested_by().is_some());
    }

    fn status(&mut self, now: Instant, server: Option<ServerReport>) -> Status {
        let at = now.saturating_duration_since(self.started);
        let threshold_bytes = self.decider.policy().threshold_bytes;
        let forecast = self
            .record
            .forecast(threshold_bytes, at)
            .map(ForecastStatus::of)
            .unwrap_or_default();
        let state = self.decider.state();
        let policy = self.decider.policy();
        let deciding = self
            .last_sample
            .filter(|_| self.target.is_some())
            .map(|(sample, _)| sample.deciding(self.settings.memory));
        let headroom_bytes = deciding.map(|bytes| policy.threshold_bytes.saturating_sub(bytes));
        let headroom_percent = headroom_bytes.map(|left| {
            let share = left as f64 / policy.threshold_bytes.max(1) as f64;
            (share * 1000.0).round() / 10.0
        });
        Status {
            state,
            since: crate::units::timestamp(self.record.since()),
            reason: self.decider.reason().to_string(),
            ready: state.ready() && self.fleet.unready().is_none(),
            live: state.healthy(),
            over_threshold_seconds: self.decider.over_for(now).as_secs_f64(),
            sessions: self.session_count,
            target: self.target.clone(),
            memory: self.last_sample.map(|(sample, at)| MemoryStatus {
                deciding: self.settings.memory,
                deciding_bytes: sample.deciding(self.settings.memory),
                sample,
                sampled_at: crate::units::timestamp(at),
            }),
            headroom_bytes,
            headroom_percent,
            threshold: ThresholdStatus {
                bytes: policy.threshold_bytes,
                given: self.settings.policy.threshold.to_string(),
                critical_bytes: policy.critical_bytes,
                limit: self.limit,
            },
            reported: self.reported(),
            idle_memory_bytes: self.record.idle_memory(),
            memory_problem: crate::policy::diagnosis::diagnose(
                deciding.is_some_and(|bytes| bytes > policy.threshold_bytes),
                self.session_count,
                self.decider.stuck(),
            ),
            forecast,
            memory_source: self.settings.memory_from,
            server,
            counters: self.record.counters().clone(),
            transitions: self.record.transitions(),
            drain_requested_by: self.decider.requested_by().map(str::to_owned),
            incarnation: self.decider.incarnations(),
            recycle_action: self.record.recycle_action().cloned(),
            fleet: self.fleet.status(),
            kms_gate: self.gate.as_ref().map(|wire| wire.status()),
            history: self.record.points(),
            settings: Arc::clone(&self.settings.shown),
        }
    }

    fn publish(&mut self, now: Instant, server: Option<ServerReport>) {
        let status = self.status(now, server);
        self.publish
            .send_replace(Arc::new(Snapshot::new(status, now, self.render.clone())));
    }
}

/// The policy one incarnation is judged by, under its memory limit: sizes that cannot work
/// under it are made safe by the policy, and said here once per incarnation.
fn judged_by(settings: &Settings, limit: MemoryLimit) -> Policy {
    let (policy, problem) = settings.policy.resolve(settings.memory.as_str(), limit);
    if let Some(problem) = problem {
        let critical = settings.policy.critical.map(|c| c.resolve(limit.bytes));
        warn!(
            ?problem,
            "under the memory limit {} ({}) the threshold {} {}: check --threshold and --critical",
            Bytes(limit.bytes),
            limit.source.as_str(),
            Bytes(policy.threshold_bytes),
            critical.map_or(String::new(), |c| format!(
                "and critical {} cannot both hold; critical is off for this incarnation",
                Bytes(c)
            ))
        );
    }
    policy
}

/// What one incarnation is judged by, said when it is found: the threshold and critical level
/// resolved, and the limit they were taken of. A percentage of the host's MemTotal (no cgroup
/// limit found, no `--memory-limit`) is warned of: on a shared node the kernel's OOM killer
/// may act long before 80% of the whole machine is reached.
fn judging(
    given: &policy::Settings,
    policy: &Policy,
    limit: MemoryLimit,
) -> (String, Option<String>) {
    let of = |s: SizeOrPercent| match s {
        SizeOrPercent::Percent(_) => format!(
            " ({s} of {} from {})",
            Bytes(limit.bytes),
            limit.source.as_str()
        ),
        SizeOrPercent::Bytes(_) => String::new(),
    };
    let critical = match (policy.critical_bytes, given.critical) {
        (Some(bytes), Some(c)) => format!("{}{}", Bytes(bytes), of(c)),
        _ => "off".to_string(),
    };
    let line = format!(
        "judged by: threshold {}{}, critical {critical}",
        Bytes(policy.threshold_bytes),
        of(given.threshold)
    );
    let percent = matches!(given.threshold, SizeOrPercent::Percent(_))
        || matches!(given.critical, Some(SizeOrPercent::Percent(_)));
    let warning = (percent && limit.source == LimitSource::HostMemTotal).then(|| {
        format!(
            "the memory limit is the host's MemTotal ({}): no cgroup limit was found for the \
             target and no --memory-limit given, so a percentage is of the whole machine and \
             memprobe may never act before the kernel does (give --memory-limit, e.g. the \
             container's limits.memory, or a size: --threshold 1536Mi)",
            Bytes(limit.bytes)
        )
    });
    (line, warning)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::ServerView;
    use crate::sources::proc::allocator::Allocator;
    use std::cell::Cell;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    const MI: u64 = 1 << 20;

    /// A memory source that says what the test scripted, one outcome per step.
    struct Scripted(
        Arc<Mutex<VecDeque<Outcome>>>,
        Arc<Mutex<u32>>,
        Arc<Mutex<Option<Allocator>>>,
    );

    impl MemorySource for Scripted {
        fn step(&mut self, _now: Instant) -> Outcome {
            self.0
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Outcome::Unchanged)
        }
        fn forget(&mut self) {
            *self.1.lock().unwrap() += 1;
        }
        fn allocator_learnt(&mut self) -> Option<Allocator> {
            self.2.lock().unwrap().take()
        }
    }

    struct Sessions(Arc<Mutex<ServerView>>);

    impl SessionSource for Sessions {
        fn read(&mut self) -> ServerView {
            self.0.lock().unwrap().clone()
        }
    }

    /// What `--name kms-under-test --threshold 100Mi --interval 1s --sustain 5s
    /// --kms-hang-timeout 10s` gives, with KMS on and every other flag at its default.
    fn settings() -> Settings {
        Settings {
            interval: SECOND,
            history: 300 * SECOND,
            memory: MemoryKind::Rss,
            memory_limit: None,
            memory_from: MemoryFrom::Proc,
            policy: policy::Settings {
                threshold: crate::units::SizeOrPercent::Bytes(100 * MI),
                critical: None,
                sustain: 5 * SECOND,
                idle_sustain: 300 * SECOND,
                quiet_within: None,
                drain_timeout: 3600 * SECOND,
                min_drain: 30 * SECOND,
                server: policy::ServerPolicy {
                    name: "kms",
                    failures: 3,
                    hang_timeout: 10 * SECOND,
                },
                // The 10 s ping interval, over two 3 s request deadlines.
                reconnect_grace: 10 * SECOND,
                max_gap: policy::Settings::max_gap_at(SECOND),
            },
            forecast: forecast::Settings::DEFAULT,
            shown: Arc::default(),
        }
    }

    fn found(pid: i32, first_mib: u64) -> Outcome {
        Outcome::Found {
            target: TargetStatus {
                pid: Some(pid),
                name: "kms".into(),
                start_time: None,
                found_by: "--pid".into(),
                allocator: Allocator::Unknown,
                handle: None,
            },
            limit: MemoryLimit::default(),
            first: Some(Ok(MemorySample::rss_only(first_mib * MI))),
        }
    }

    struct Rig {
        monitor: Monitor,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        script: Arc<Mutex<VecDeque<Outcome>>>,
        forgotten: Arc<Mutex<u32>>,
        server: Arc<Mutex<ServerView>>,
        /// What the memory source says it learnt of the allocator at the next sample.
        learnt: Arc<Mutex<Option<Allocator>>>,
        now: Cell<Instant>,
    }

    impl Rig {
        fn new() -> Self {
            Rig::with(settings())
        }

        fn with(settings: Settings) -> Self {
            let script = Arc::new(Mutex::new(VecDeque::new()));
            let forgotten = Arc::new(Mutex::new(0));
            let server = Arc::new(Mutex::new(ServerView::default()));
            let learnt = Arc::new(Mutex::new(None));
            let nothing: crate::status::Render = Arc::new(|_: &Status| bytes::Bytes::new());
            let render = Renderers {
                metrics: nothing.clone(),
                page: nothing,
            };
            let t0 = Instant::now();
            let (monitor, snapshots) = Monitor::new(
                settings,
                Box::new(Scripted(
                    Arc::clone(&script),
                    Arc::clone(&forgotten),
                    Arc::clone(&learnt),
                )),
                Some(Box::new(Sessions(Arc::clone(&server)))),
                Box::new(crate::fleet::Alone),
                render,
                t0,
            );
            Rig {
                monitor,
                snapshots,
                script,
                forgotten,
                server,
                learnt,
                now: Cell::new(t0),
            }
        }

        /// Advances the clock by `after`, then runs one step that sees `outcome`.
        fn step(&mut self, after: Duration, outcome: Outcome) -> Arc<Snapshot> {
            self.now.set(self.now.get() + after);
            self.script.lock().unwrap().push_back(outcome);
            let now = self.now.get();
            self.monitor.step(&|| now).expect("no fatal error");
            Arc::clone(&self.snapshots.borrow())
        }

        fn sample(&mut self, after: Duration, mib: u64) -> Arc<Snapshot> {
            self.step(after, Outcome::Sampled(MemorySample::rss_only(mib * MI)))
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_snapshot_is_lost_and_looking_before_any_read() {
        let rig = Rig::new();
        let snap = rig.snapshots.borrow();
        assert_eq!(snap.status.state, State::Lost);
        assert_eq!(snap.status.reason, "looking for the target process");
    }

    #[test]
    fn an_allocator_learnt_after_the_target_was_found_is_shown_from_then_on() {
        let mut rig = Rig::new();
        let snap = rig.step(SECOND, found(42, 50));
        let allocator = |snap: &Snapshot| snap.status.target.as_ref().map(|t| t.allocator);
        assert_eq!(
            allocator(&snap),
            Some(Allocator::Unknown),
            "found before libc was mapped"
        );
        *rig.learnt.lock().unwrap() = Some(Allocator::Glibc);
        let snap = rig.sample(SECOND, 50);
        assert_eq!(
            allocator(&snap),
            Some(Allocator::Glibc),
            "read again, and known"
        );
        let snap = rig.sample(SECOND, 50);
        assert_eq!(allocator(&snap), Some(Allocator::Glibc), "and kept");
    }

    #[test]
    fn a_found_target_is_sampled_judged_and_published() {
        let mut rig = Rig::new();
        let snap = rig.step(SECOND, found(42, 50));
        assert_eq!(snap.status.state, State::Healthy, "{}", snap.status.reason);
        assert_eq!(snap.status.counters.samples_total, 1);
        assert_eq!(snap.status.target.as_ref().unwrap().pid, Some(42));
        for _ in 0..5 {
            rig.sample(SECOND, 150);
        }
        let snap = rig.sample(SECOND, 150);
        assert_eq!(snap.status.state, State::Draining, "{}", snap.status.reason);
        assert!(!snap.status.ready);
        let entered: Vec<State> = snap.status.transitions.iter().map(|t| t.to).collect();
        assert_eq!(
            entered,
            [
                State::Starting,
                State::Healthy,
                State::Elevated,
                State::Draining
            ]
        );
        assert_eq!(snap.status.counters.transitions_total[&State::Draining], 1);
    }

    #[test]
    fn what_the_target_reports_is_shown_beside_its_samples_and_never_decides() {
        let mut rig = Rig::new();
        let (tell, feed) = watch::channel(None);
        rig.monitor.show_reports(feed);
        rig.step(SECOND, found(42, 50));
        let snap = rig.sample(SECOND, 150);
        assert_eq!(snap.status.reported, None, "nothing reported yet");
        assert_eq!(snap.status.history.last().unwrap().live_bytes, None);
        tell.send_replace(Some(Reported {
            live_bytes: 3 * MI,
            sessions: 0,
        }));
        for _ in 0..5 {
            rig.sample(SECOND, 150);
        }
        let snap = rig.sample(SECOND, 150);
        let last = snap.status.history.last().unwrap();
        assert_eq!(last.live_bytes, Some(3 * MI));
        assert_eq!(
            last.sessions,
            Some(0),
            "the reported sessions, for the chart"
        );
        assert_eq!(snap.status.reported.unwrap().live_bytes, 3 * MI);
        assert_eq!(snap.status.sessions, None, "no session source said so");
        assert_eq!(
            snap.status.state,
            State::Draining,
            "0 reported sessions do not recycle: {}",
            snap.status.reason
        );
    }

    #[test]
    fn a_target_that_exits_is_forgotten_and_its_successor_counts_a_restart() {
        let mut rig = Rig::new();
        rig.step(SECOND, found(42, 50));
        let snap = rig.step(SECOND, Outcome::Gone("process 42 exited".into()));
        assert_eq!(snap.status.state, State::Lost);
        assert!(snap.status.target.is_none());
        assert_eq!(*rig.forgotten.lock().unwrap(), 1);
        let snap = rig.step(SECOND, found(43, 50));
        assert_eq!(snap.status.counters.target_restarts_total, 1);
        assert_eq!(snap.status.state, State::Healthy);
    }

    #[test]
    fn a_server_that_stops_answering_is_stalled_then_recycled_at_the_hang_timeout() {
        let mut rig = Rig::new();
        rig.step(SECOND, found(42, 50));
        rig.server.lock().unwrap().failed_pings = 3;
        let snap = rig.sample(SECOND, 50);
        assert_eq!(snap.status.state, State::Stalled);
        assert!(!snap.status.ready && snap.status.live);
        let mut snap = rig.sample(SECOND, 50);
        for _ in 1..9 {
            snap = rig.sample(SECOND, 50);
        }
        assert_eq!(
            snap.status.state,
            State::Stalled,
            "9 s of a 10 s hang timeout"
        );
        let snap = rig.sample(SECOND, 50);
        assert_eq!(snap.status.state, State::Recycle);
        assert!(!snap.status.live, "a hung server is restarted");
    }

    #[test]
    fn a_server_that_answers_again_is_ready_again() {
        let mut rig = Rig::new();
        rig.step(SECOND, found(42, 50));
        rig.server.lock().unwrap().failed_pings = 3;
        rig.sample(SECOND, 50);
        rig.server.lock().unwrap().failed_pings = 0;
        let snap = rig.sample(5 * SECOND, 50);
        assert_eq!(snap.status.state, State::Healthy);
        assert!(snap.status.ready);
    }

    #[test]
    fn a_brief_disconnection_keeps_the_drain() {
        let mut rig = Rig::new();
        // 2 × the 3 s default --kms-timeout: 10 s of the default ping interval.
        rig.step(SECOND, found(42, 150));
        for _ in 0..6 {
            rig.sample(SECOND, 150);
        }
        assert_eq!(rig.snapshots.borrow().status.state, State::Draining);
        let snap = rig.step(SECOND, Outcome::Unreachable("kms down".into()));
        assert_eq!(snap.status.state, State::Draining, "within the grace");
        assert!(snap.status.target.is_some());
        let snap = rig.step(10 * SECOND, Outcome::Unreachable("kms down".into()));
        assert_eq!(snap.status.state, State::Lost, "past the grace");
        assert_eq!(*rig.forgotten.lock().unwrap(), 1);
    }

    #[test]
    fn the_next_step_comes_after_an_interval_or_a_backoff_while_lost() {
        let mut rig = Rig::new();
        let now = rig.now.get();
        rig.script
            .lock()
            .unwrap()
            .push_back(Outcome::NotFound("no process".into()));
        assert_eq!(rig.monitor.step(&|| now).unwrap(), FIRST_BACKOFF);
        rig.script
            .lock()
            .unwrap()
            .push_back(Outcome::NotFound("no process".into()));
        assert_eq!(rig.monitor.step(&|| now).unwrap(), FIRST_BACKOFF * 2);
        rig.script.lock().unwrap().push_back(found(42, 50));
        assert_eq!(rig.monitor.step(&|| now).unwrap(), SECOND, "--interval 1s");
    }

    #[test]
    fn a_rising_idle_floor_is_forecast_in_the_status() {
        let mut rig = Rig::new();
        rig.server.lock().unwrap().sessions = Some(0);
        let snap = rig.step(SECOND, found(42, 20));
        assert!(
            snap.status.forecast.said.starts_with("no forecast yet"),
            "{}",
            snap.status.forecast.said
        );
        assert_eq!(snap.status.forecast.threshold_in_seconds, None);
        // 20 MiB rising 5 MiB an hour under the 100 MiB threshold, for 7 hours.
        let mut snap = snap;
        for step in 1..=7 * 360u64 {
            snap = rig.sample(10 * SECOND, 20 + step * 5 / 360);
        }
        let forecast = &snap.status.forecast;
        let hours = forecast.threshold_in_seconds.expect("a forecast") / 3600.0;
        assert!(
            (8.0..10.5).contains(&hours),
            "55 MiB, 45 to go at 5 MiB/h: {hours} h"
        );
        assert!(forecast.earliest_seconds <= forecast.threshold_in_seconds);
        assert!(forecast.latest_seconds >= forecast.threshold_in_seconds);
        assert!(
            forecast
                .said
                .starts_with("at this rate, over the threshold in about")
        );
        assert_eq!(
            snap.status.state,
            State::Healthy,
            "a forecast decides nothing"
        );
    }

    /// 20 MiB rising 5 MiB an hour under the 100 MiB threshold with no session at all: after
    /// 7 hours, about 9 hours from the threshold.
    fn seven_idle_hours(rig: &mut Rig) -> Arc<Snapshot> {
        rig.server.lock().unwrap().sessions = Some(0);
        let mut snap = rig.step(SECOND, found(42, 20));
        for step in 1..=7 * 360u64 {
            snap = rig.sample(10 * SECOND, 20 + step * 5 / 360);
        }
        snap
    }

    #[test]
    fn the_quiet_moment_drains_an_idle_instance_forecast_over_soon_and_recycles_it() {
        let mut on = settings();
        on.policy.quiet_within = Some(12 * 3600 * SECOND);
        // Samples 10 s apart are no pause of memprobe's.
        on.policy.max_gap = policy::Settings::max_gap_at(10 * SECOND);
        let mut rig = Rig::with(on);
        let snap = seven_idle_hours(&mut rig);
        let drain = snap
            .status
            .transitions
            .iter()
            .find(|t| t.to == State::Draining)
            .expect("drained in the quiet");
        assert!(
            drain.reason.starts_with("quiet moment: no session for ")
                && drain.reason.contains("over the threshold in about"),
            "{}",
            drain.reason
        );
        assert_eq!(
            snap.status.state,
            State::Recycle,
            "no session for --min-drain: {}",
            snap.status.reason
        );
        let drains = snap.status.counters.transitions_total[&State::Draining];
        let snap = rig.step(SECOND, found(43, 20));
        assert_eq!(snap.status.state, State::Healthy, "a new incarnation");
        let snap = rig.sample(10 * SECOND, 20);
        assert_eq!(
            snap.status.counters.transitions_total[&State::Draining],
            drains
        );
    }

    #[test]
    fn the_quiet_moment_waits_while_the_forecast_is_further_than_asked_or_off() {
        let mut near = settings();
        near.policy.quiet_within = Some(3600 * SECOND);
        near.policy.max_gap = policy::Settings::max_gap_at(10 * SECOND);
        let mut rig = Rig::with(near);
        let snap = seven_idle_hours(&mut rig);
        assert_eq!(
            snap.status.state,
            State::Healthy,
            "9 h away, not within 1 h"
        );
        let mut rig = Rig::new();
        let snap = seven_idle_hours(&mut rig);
        assert_eq!(
            snap.status.state,
            State::Healthy,
            "off (the test rig's settings turn it off)"
        );
    }

    #[test]
    fn the_forecast_is_cut_by_the_settings_given_not_always_a_servers_default() {
        // 30 s of an idle floor rising 1 MiB a second: far too little for a server's
        // default (6 h), enough for floors of 2 s over at least 20 s.
        let rise = |rig: &mut Rig| {
            rig.server.lock().unwrap().sessions = Some(0);
            let mut snap = rig.step(SECOND, found(42, 20));
            for step in 1..=30 {
                snap = rig.sample(SECOND, 20 + step);
            }
            snap
        };
        let snap = rise(&mut Rig::new());
        assert!(
            snap.status.forecast.said.starts_with("no forecast yet"),
            "the default needs 6 h: {}",
            snap.status.forecast.said
        );
        let mut scaled = settings();
        scaled.forecast = forecast::Settings {
            bucket: 2 * SECOND,
            min_span: 20 * SECOND,
            min_floors: 8,
            window: 300 * SECOND,
        };
        let snap = rise(&mut Rig::with(scaled));
        let seconds = snap
            .status
            .forecast
            .threshold_in_seconds
            .unwrap_or_else(|| panic!("a forecast: {}", snap.status.forecast.said));
        assert!(
            (30.0..70.0).contains(&seconds),
            "50 MiB, 50 to go at 1 MiB/s: {seconds} s"
        );
    }

    #[test]
    fn a_missing_privilege_at_start_is_fatal() {
        let mut rig = Rig::new();
        let outcome = Outcome::Found {
            target: TargetStatus {
                pid: Some(42),
                name: "kms".into(),
                start_time: None,
                found_by: "--pid".into(),
                allocator: Allocator::Unknown,
                handle: None,
            },
            limit: MemoryLimit::default(),
            first: Some(Err(SampleError::PssDenied { pid: 42 })),
        };
        rig.script.lock().unwrap().push_back(outcome);
        let now = rig.now.get();
        assert!(rig.monitor.step(&|| now).is_err());
    }

    /// The first lines say what an incarnation is judged by, resolved, and where the limit
    /// came from; a percentage of the host's MemTotal is a warning, a size or a cgroup's
    /// limit is not.
    #[test]
    fn an_incarnation_says_what_it_is_judged_by_and_warns_of_the_hosts_memory() {
        let mut given = settings().policy;
        given.threshold = SizeOrPercent::Percent(80.0);
        given.critical = Some(SizeOrPercent::Percent(95.0));
        let host = MemoryLimit {
            bytes: 16 * 1024 * MI,
            source: LimitSource::HostMemTotal,
        };
        let (policy, _) = given.resolve("rss", host);
        let (line, warning) = judging(&given, &policy, host);
        assert_eq!(
            line,
            "judged by: threshold 12.80 GiB (80% of 16.00 GiB from host MemTotal), \
             critical 15.20 GiB (95% of 16.00 GiB from host MemTotal)"
        );
        let warning = warning.expect("a percentage of the host's memory is warned of");
        assert!(
            warning.starts_with("the memory limit is the host's MemTotal (16.00 GiB)"),
            "{warning}"
        );
        let cgroup = MemoryLimit {
            bytes: 2048 * MI,
            source: LimitSource::CgroupV2,
        };
        let (policy, _) = given.resolve("rss", cgroup);
        let (line, warning) = judging(&given, &policy, cgroup);
        assert!(
            line.contains("(80% of 2.00 GiB from cgroup v2 memory.max)"),
            "{line}"
        );
        assert_eq!(
            warning, None,
            "a cgroup's limit is what a percentage is for"
        );
        let (policy, _) = settings().policy.resolve("rss", host);
        let (line, warning) = judging(&settings().policy, &policy, host);
        assert_eq!(line, "judged by: threshold 100.00 MiB, critical off");
        assert_eq!(warning, None, "a size does not depend on the limit");
    }

    /// Memory hovering at the threshold flips the state at every sample: `/status` keeps each
    /// flip, and the monitor hands every one to the count that the log says once.
    #[test]
    fn flips_at_the_threshold_are_all_kept_and_counted_for_the_log() {
        let mut rig = Rig::new();
        rig.step(SECOND, found(42, 50));
        for i in 0..12 {
            rig.sample(SECOND, if i % 2 == 0 { 101 } else { 99 });
        }
        let snap = rig.sample(SECOND / 10, 99);
        let flips = snap
            .status
            .transitions
            .iter()
            .filter(|t| {
                matches!(
                    (t.from, t.to),
                    (State::Healthy, State::Elevated) | (State::Elevated, State::Healthy)
                )
            })
            .count();
        assert_eq!(flips, 12, "every flip is in /status");
        assert_eq!(
            rig.monitor.flaps.counted(),
            11,
            "the first flip is logged, the other eleven counted"
        );
    }
}
