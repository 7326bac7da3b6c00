//! The sampling loop: find the target → sample it → decide → publish.
//!
//! One thread of its own owns every piece of mutable state (the decider, the counters, the
//! transition history, the metrics) and publishes an immutable [`Snapshot`] through a `watch`
//! channel after each step; HTTP handlers only read the latest one. The /proc reads happen on
//! that thread, never on the async runtime: a slow read (a huge target's smaps_rollup, a
//! stuck mmap lock) stalls no probe, and `/livez` reports it instead. A thread rather than a
//! task on the blocking pool: a step then wakes one thread once, and an idle sidecar costs
//! less CPU.
//!
//! The target's memory comes from /proc (`--memory-source proc`), or from KMS's own
//! `getUsedMemory` (`--memory-source kms`), where an incarnation is a KMS `serverId`. With
//! the Kurento integration on, each step also reads the latest [`KmsView`]: its session count
//! feeds the decision, and a KMS that answered once and then stopped answering is recycled.
//!
//! While the target is tracked, a step comes every `--interval`. While it is lost, the loop
//! looks for it again with a backoff from 100 ms up to the interval: a restarted server is
//! found quickly, and a server that is not there costs at most one scan per interval.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::{Config, MemorySource};
use crate::kms::KmsView;
use crate::limit::{self, MemoryLimit};
use crate::metrics::Metrics;
use crate::policy::{Decider, Observation, Policy, Transition};
use crate::sample::{MemoryKind, MemorySample, SampleError, Sampler};
use crate::status::{self, Counters, MemoryStatus, RenderMetrics, Settings, Snapshot, Status};
use crate::status::{TargetStatus, ThresholdStatus, TransitionRecord};
use crate::target::Finder;

/// How many transitions `/status` keeps.
pub const HISTORY: usize = 32;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The /proc side of the loop: the finder and the incarnation it found.
struct Probe {
    finder: Finder,
    target: Option<Sampler>,
    memory: MemoryKind,
    include_children: bool,
    memory_limit: Option<u64>,
}

/// What one blocking step saw.
enum Outcome {
    Sampled(MemorySample),
    Found {
        target: TargetStatus,
        limit: MemoryLimit,
        first: Option<Result<MemorySample, SampleError>>,
    },
    Gone(String),
    NotFound(String),
    Failed(SampleError),
    /// Nothing new since the last step (KMS has not answered `getUsedMemory` again yet).
    Unchanged,
}

impl Probe {
    fn step(&mut self) -> Outcome {
        if let Some(sampler) = &mut self.target {
            return match sampler.sample(self.memory, self.include_children) {
                Ok(s) => Outcome::Sampled(s),
                Err(SampleError::Gone(pid)) => {
                    self.target = None;
                    Outcome::Gone(format!("process {pid} exited"))
                }
                Err(e) => Outcome::Failed(e),
            };
        }
        match self.finder.find() {
            Err(not_found) => Outcome::NotFound(not_found.to_string()),
            Ok(found) => {
                let target = TargetStatus {
                    pid: Some(found.pid),
                    name: found.name.clone(),
                    start_time: Some(status::timestamp(found.start_time)),
                    found_by: self.finder.spec().to_string(),
                    allocator: crate::allocator::of(&found.process),
                };
                let limit = limit::resolve(self.memory_limit, Some(found.pid));
                let first = match Sampler::new(found.process) {
                    Ok(mut sampler) => {
                        let first = sampler.sample(self.memory, self.include_children);
                        self.target = Some(sampler);
                        first
                    }
                    Err(e) => Err(e),
                };
                Outcome::Found {
                    target,
                    limit,
                    first: Some(first),
                }
            }
        }
    }
}

/// A failure that stops memprobe: it cannot do its job as configured.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Fatal(#[from] SampleError);

pub struct Monitor {
    config: Arc<Config>,
    probe: Probe,
    kms: Option<watch::Receiver<KmsView>>,
    /// Under `--memory-source kms`: the serverId tracked, and the last reading used.
    kms_server: Option<String>,
    kms_readings: u64,
    kms_down_since: Option<Instant>,
    idle_memory: Option<u64>,
    glibc_warned: bool,
    decider: Decider,
    target: Option<TargetStatus>,
    limit: MemoryLimit,
    last_sample: Option<(MemorySample, SystemTime)>,
    /// Set by the session source (Kurento) when one is configured.
    sessions: Option<u32>,
    incarnations: u64,
    counters: Counters,
    history: VecDeque<TransitionRecord>,
    since: SystemTime,
    not_found: Option<String>,
    last_error: Option<String>,
    backoff: Duration,
    metrics: Arc<Metrics>,
    render: RenderMetrics,
    publish: watch::Sender<Arc<Snapshot>>,
}

impl Monitor {
    /// A monitor and the channel it publishes on. Publishes a first snapshot (state `lost`,
    /// "looking for the target") before any /proc read of the target.
    pub fn new(
        config: Arc<Config>,
        kms: Option<watch::Receiver<KmsView>>,
        now: Instant,
    ) -> (Self, watch::Receiver<Arc<Snapshot>>) {
        let limit = limit::resolve(config.memory_limit, None);
        let decider = Decider::new(policy(&config, limit), now);
        let probe = Probe {
            finder: Finder::new(config.target.clone()),
            target: None,
            memory: config.memory,
            include_children: config.include_children,
            memory_limit: config.memory_limit,
        };
        let metrics = Arc::new(Metrics::new(
            config.critical.is_some(),
            config.kms.is_some(),
        ));
        let render: RenderMetrics = {
            let metrics = Arc::clone(&metrics);
            Arc::new(move |status: &Status| metrics.render(status))
        };
        // Replaced by the first real publish below, before anyone can read it.
        let placeholder = Snapshot::new(Status::default(), now, Arc::clone(&render));
        let (publish, snapshots) = watch::channel(Arc::new(placeholder));
        let mut monitor = Monitor {
            probe,
            kms,
            kms_server: None,
            kms_readings: 0,
            kms_down_since: None,
            idle_memory: None,
            glibc_warned: false,
            decider,
            target: None,
            limit,
            last_sample: None,
            sessions: None,
            incarnations: 0,
            counters: Counters::default(),
            history: VecDeque::with_capacity(HISTORY),
            since: SystemTime::now(),
            not_found: None,
            last_error: None,
            backoff: FIRST_BACKOFF,
            metrics,
            render,
            publish,
            config,
        };
        monitor.publish(now, None);
        (monitor, snapshots)
    }

    /// Runs on the calling thread (blocking) until nobody reads the snapshots any more, or
    /// until a fatal error.
    pub fn run(mut self) -> Result<(), Fatal> {
        while !self.publish.is_closed() {
            let started = Instant::now();
            let next = self.step(started)?;
            std::thread::sleep((started + next).saturating_duration_since(Instant::now()));
        }
        Ok(())
    }

    /// One step: find or sample, decide, publish. Returns the time to the next step.
    pub fn step(&mut self, started: Instant) -> Result<Duration, Fatal> {
        let kms = self.kms.as_ref().map(|view| view.borrow().clone());
        let sessions = kms
            .as_ref()
            .and_then(|v| v.connected.then_some(v.sessions).flatten());
        self.follow_sessions(sessions);
        let outcome = match (self.config.memory_source, &kms) {
            (MemorySource::Kms, Some(view)) => self.kms_outcome(started, view),
            _ => self.probe.step(),
        };
        // The clock is read after the /proc reads, so time spent there is not lost.
        let now = Instant::now().max(started);
        self.apply(now, outcome)?;
        if let (Some(view), Some(kms)) = (&kms, &self.config.kms) {
            // Hung: it answered for this serverId, then stopped, while it still exists.
            if view.answered && view.failed_pings >= kms.failures && self.target.is_some() {
                let tr = self.decider.unresponsive(now, view.failed_pings);
                if let Some(tr) = tr {
                    self.record(tr);
                }
            }
        }
        self.publish(now, kms);
        Ok(if self.target.is_some() {
            self.backoff = FIRST_BACKOFF;
            self.config.interval
        } else {
            let wait = self.backoff.min(self.config.interval);
            self.backoff = (self.backoff * 2).min(self.config.interval);
            wait
        })
    }

    fn apply(&mut self, now: Instant, outcome: Outcome) -> Result<(), Fatal> {
        match outcome {
            Outcome::Sampled(s) => self.observe(now, s),
            Outcome::Found {
                target,
                limit,
                first,
            } => {
                self.incarnations += 1;
                if self.incarnations > 1 {
                    self.counters.target_restarts_total += 1;
                }
                self.not_found = None;
                self.warn_of_glibc(&target);
                let who = match target.pid {
                    Some(pid) => format!("{} (pid {pid})", target.name),
                    None => target.found_by.clone(),
                };
                self.limit = limit;
                self.target = Some(target);
                self.last_sample = None;
                let tr = self
                    .decider
                    .new_incarnation(now, policy(&self.config, limit), &who);
                self.record(tr);
                match first {
                    None => {}
                    Some(Ok(s)) => self.observe(now, s),
                    Some(Err(SampleError::Gone(pid))) => {
                        self.gone(now, format!("process {pid} exited"));
                    }
                    // The privilege is missing for good: say so and stop, once, at start.
                    Some(Err(e @ SampleError::PssDenied { .. })) if self.incarnations == 1 => {
                        return Err(Fatal(e));
                    }
                    Some(Err(e)) => self.failed(e.to_string()),
                }
            }
            Outcome::Gone(why) => self.gone(now, why),
            Outcome::NotFound(why) => {
                if self.not_found.as_deref() != Some(why.as_str()) {
                    info!(
                        "waiting for the target: {why} (looking again every {} at most)",
                        status::duration(self.config.interval)
                    );
                    self.not_found = Some(why.clone());
                }
                if let Some(tr) = self.decider.lost(now, why) {
                    self.record(tr);
                }
            }
            Outcome::Failed(e) => self.failed(e.to_string()),
            Outcome::Unchanged => {}
        }
        Ok(())
    }

    /// Under `--memory-source kms` the target is KMS's serverId and its memory is
    /// `getUsedMemory`; a dropped connection is a lost target.
    fn kms_outcome(&mut self, now: Instant, view: &KmsView) -> Outcome {
        let server_id = view.server_id.as_ref().filter(|_| view.connected);
        let Some(server_id) = server_id else {
            // A connection that drops and comes back with the same serverId within a ping
            // interval (or two request deadlines) is the same KMS: hold the state rather than
            // lose a drain's latch.
            let down_since = *self.kms_down_since.get_or_insert(now);
            let grace = self
                .config
                .kms
                .as_ref()
                .map_or(Duration::ZERO, |k| k.ping_interval.max(k.timeout * 2));
            if self.target.is_some() && now - down_since < grace {
                return Outcome::Unchanged;
            }
            let why = match &view.last_error {
                Some(e) => format!("kms at {} not connected: {e}", view.url),
                None => format!("connecting to kms at {}", view.url),
            };
            return if self.target.is_some() {
                Outcome::Gone(why)
            } else {
                Outcome::NotFound(why)
            };
        };
        self.kms_down_since = None;
        let fresh = view.memory_readings > self.kms_readings;
        self.kms_readings = view.memory_readings;
        let reading = view
            .used_memory_bytes
            .filter(|_| fresh)
            .map(|b| Ok(MemorySample::rss_only(b)));
        if self.target.is_none() || self.kms_server.as_ref() != Some(server_id) {
            self.kms_server = Some(server_id.clone());
            let target = TargetStatus {
                pid: None,
                name: format!(
                    "kms {}",
                    view.version.as_deref().unwrap_or("(version unknown)")
                ),
                start_time: None,
                found_by: format!("--memory-source kms, serverId {server_id}"),
                allocator: crate::allocator::Allocator::Unknown,
            };
            let limit = limit::resolve(self.config.memory_limit, None);
            return Outcome::Found {
                target,
                limit,
                first: reading,
            };
        }
        match reading {
            Some(Ok(sample)) => Outcome::Sampled(sample),
            _ => Outcome::Unchanged,
        }
    }

    /// One warning per run when a KMS runs on the malloc that fragments.
    fn warn_of_glibc(&mut self, target: &TargetStatus) {
        let kms = target.name.starts_with("kurento-media-s");
        if kms && target.allocator == crate::allocator::Allocator::Glibc && !self.glibc_warned {
            warn!(
                "{} (pid {}) runs on glibc's malloc, whose heap fragmentation this probe exists \
                 to catch; preload jemalloc: see deploy/kurento-jemalloc",
                target.name,
                target.pid.unwrap_or_default()
            );
            self.glibc_warned = true;
        }
    }

    /// Keeps the session count, and says how many sessions a drain is waiting for.
    fn follow_sessions(&mut self, sessions: Option<u32>) {
        if sessions != self.sessions && self.decider.state() == crate::policy::State::Draining {
            if let Some(n) = sessions {
                info!(sessions = n, "draining: {n} session(s) left");
            }
        }
        self.sessions = sessions;
    }

    fn observe(&mut self, now: Instant, s: MemorySample) {
        self.counters.samples_total += 1;
        self.last_error = None;
        self.last_sample = Some((s, SystemTime::now()));
        if self.sessions == Some(0) {
            self.idle_memory = Some(s.deciding(self.config.memory));
        }
        let obs = Observation {
            memory_bytes: s.deciding(self.config.memory),
            sessions: self.sessions,
        };
        if let Some(tr) = self.decider.observe(now, obs) {
            self.record(tr);
        }
    }

    fn gone(&mut self, now: Instant, why: String) {
        self.target = None;
        self.last_sample = None;
        if let Some(tr) = self.decider.lost(now, why) {
            self.record(tr);
        }
    }

    /// A sample failed while the target still exists: counted, logged once per kind of error.
    fn failed(&mut self, message: String) {
        self.counters.sample_errors_total += 1;
        if self.last_error.as_deref() != Some(message.as_str()) {
            warn!("sample failed: {message}");
            self.last_error = Some(message);
        }
    }

    fn record(&mut self, tr: Transition) {
        info!(
            from = tr.from.as_str(),
            to = tr.to.as_str(),
            "{}: {}",
            tr.to.as_str(),
            tr.reason
        );
        self.metrics.transition(tr.to);
        self.since = SystemTime::now();
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(TransitionRecord {
            at: status::timestamp(self.since),
            from: tr.from,
            to: tr.to,
            reason: tr.reason,
        });
    }

    fn status(&self, now: Instant, kms: Option<KmsView>) -> Status {
        let state = self.decider.state();
        let policy = self.decider.policy();
        Status {
            state,
            since: status::timestamp(self.since),
            reason: self.decider.reason().to_string(),
            ready: state.ready(),
            live: state.healthy(),
            over_threshold_seconds: self.decider.over_for(now).as_secs_f64(),
            sessions: self.sessions,
            target: self.target.clone(),
            memory: self.last_sample.map(|(sample, at)| MemoryStatus {
                deciding: self.config.memory,
                deciding_bytes: sample.deciding(self.config.memory),
                sample,
                sampled_at: status::timestamp(at),
            }),
            threshold: ThresholdStatus {
                bytes: policy.threshold_bytes,
                given: self.config.threshold.to_string(),
                critical_bytes: policy.critical_bytes,
                limit: self.limit,
            },
            idle_memory_bytes: self.idle_memory,
            memory_source: self.config.memory_source,
            kms,
            counters: self.counters.clone(),
            transitions: self.history.iter().cloned().collect(),
            settings: settings(&self.config),
        }
    }

    fn publish(&mut self, now: Instant, kms: Option<KmsView>) {
        let status = self.status(now, kms);

        self.publish.send_replace(Arc::new(Snapshot::new(
            status,
            now,
            Arc::clone(&self.render),
        )));
    }
}

fn policy(config: &Config, limit: MemoryLimit) -> Policy {
    Policy {
        memory: config.memory.as_str(),
        threshold_bytes: config.threshold.resolve(limit.bytes),
        critical_bytes: config.critical.map(|c| c.resolve(limit.bytes)),
        sustain: config.sustain,
        idle_sustain: config.idle_sustain,
        drain_timeout: config.drain_timeout,
        min_drain: config.min_drain,
    }
}

fn settings(config: &Config) -> Settings {
    Settings {
        target: config.target.to_string(),
        include_children: config.include_children,
        interval: status::duration(config.interval),
        memory: config.memory,
        threshold: config.threshold.to_string(),
        critical: config.critical.map(|c| c.to_string()),
        memory_limit: config.memory_limit,
        sustain: status::duration(config.sustain),
        idle_sustain: status::duration(config.idle_sustain),
        drain_timeout: status::duration(config.drain_timeout),
        min_drain: status::duration(config.min_drain),
        kms_url: config.kms.as_ref().map(|k| k.url.clone()),
        kms_ping_interval: config
            .kms
            .as_ref()
            .map(|k| status::duration(k.ping_interval)),
        kms_timeout: config.kms.as_ref().map(|k| status::duration(k.timeout)),
        kms_failures: config.kms.as_ref().map(|k| k.failures),
        memory_source: config.memory_source,
        listen: config.listen.to_string(),
    }
}
