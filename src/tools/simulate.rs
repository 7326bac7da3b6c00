//! The fleet simulation: the calls each policy loses, on a simulated week of one fleet and on a
//! sweep of fleets of every shape.
//!
//!     cargo bench --bench fleet      # the tables BENCHMARKS.md quotes (bash benches/run fleet)
//!
//! It runs the real decision code — [`Decider`], [`QuietMoment`], [`forecast`] and, with a
//! drain budget, each instance's fleet [`Member`] — on simulated time for a fleet of media
//! servers behind a balancer that sends each new call to the ready instance with the fewest
//! calls. Nothing else is real: no process, no socket, no clock. The members' requests are
//! answered by [`Leases`], an in-memory store that answers as the API server does (one
//! `resourceVersion` counter, 409 to a create of a name that exists or a write at a stale
//! version, a listing by the fleet's label), and every request is counted.
//!
//! Each call that ends leaves memory behind, as glibc's heap does: [`CLEAN_WAVE_MIB`] for
//! every [`Fleet::calls_per_wave`] calls, the growth per wave measured on KMS with a correct
//! teardown, times a [`Shape`]'s factor — or levelling off at [`JEMALLOC_PLATEAU_BYTES`].
//! (That measurement's wave was four 8-second pipelines; how many real calls make one is
//! this model's assumption, stated in its table.) A live call holds [`Fleet::session_bytes`]
//! more, given back when it ends. Resident memory over the limit is an OOM kill: every call
//! on the instance is lost. A recycle loses the calls still on the instance (a drain that
//! reached `--drain-timeout`, or memory over `--critical`).
//!
//! The calls (arrival, length, memory left behind) are drawn once from the seed, so every
//! policy faces the same week, and a run is the same run every time. [`sweep`] runs every
//! policy on every fleet of a [`grid`], one run per thread.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use tokio::time::Instant;

use crate::forecast::{self, Forecast, History, Settings};
pub use crate::policy::fleet::Budget;
use crate::policy::fleet::{Action, Answer, Member, Names, Need, Seen};
use crate::policy::quiet::QuietMoment;
use crate::policy::{Decider, Gate, Observation, Policy, ServerPolicy, State, Transition};

const MI: u64 = 1024 * 1024;

/// The fleet and the traffic it takes.
#[derive(Clone, Debug)]
pub struct Fleet {
    pub instances: usize,
    pub days: u32,
    pub seed: u64,
    /// Time between two samples (and two steps of the simulation).
    pub step: Duration,
    pub limit_bytes: u64,
    /// A fresh server's resident memory (KMS 7.3.1: 27 MiB).
    pub fresh_bytes: u64,
    /// Memory left behind per wave, drawn uniformly from this range (MiB).
    pub wave_mib: (f64, f64),
    /// Memory that levels off (jemalloc's): the floor never rises over this.
    pub plateau_bytes: Option<u64>,
    pub calls_per_wave: u32,
    /// What a live call holds on top of the floor.
    pub session_bytes: u64,
    /// Calls an instance takes at most.
    pub capacity: usize,
    /// New calls a minute, fleet-wide, at the day's peak (15:00).
    pub peak_calls_per_minute: f64,
    /// The night's traffic as a share of the peak's.
    pub night_share: f64,
    pub traffic: Traffic,
    pub start: Start,
    /// Calls last a log-normal time with this median (σ = 0.8), from 30 s to 3 h.
    pub median_call: Duration,
    /// From a restart to the first sample of the new incarnation.
    pub boot: Duration,
    /// `--fleet-lease-duration` in the drain-budget runs.
    pub lease: Duration,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            instances: 20,
            days: 7,
            seed: 25,
            step: Duration::from_secs(10),
            limit_bytes: 2048 * MI,
            fresh_bytes: 27 * MI,
            wave_mib: CLEAN_WAVE_MIB,
            plateau_bytes: None,
            calls_per_wave: 32,
            session_bytes: 20 * MI,
            capacity: 40,
            peak_calls_per_minute: 30.0,
            night_share: 0.03,
            traffic: Traffic::Daily,
            start: Start::Rollout,
            median_call: Duration::from_secs(8 * 60),
            boot: Duration::from_secs(30),
            lease: crate::fleet::DEFAULT_LEASE,
        }
    }
}

/// glibc's growth per wave on KMS with correct teardown: 235–267 MiB kept after ten waves from
/// 26 MiB (../shared/reference/kurento-jsonrpc.md).
pub const CLEAN_WAVE_MIB: (f64, f64) = (21.0, 24.0);

/// jemalloc with `background_thread:true` on the same waves: resident memory levels off at
/// 64–65 MiB.
pub const JEMALLOC_PLATEAU_BYTES: u64 = 65 * MI;

/// How the calls come over the week.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// The same all day and all week, at the daily hill's mean (a fleet serving every time
    /// zone): no quiet hour.
    Flat,
    /// A hill every day, highest at 15:00, [`Fleet::night_share`] of it at night.
    Daily,
    /// The daily hill on five weekdays, and a weekend at a third of it.
    Weekly,
}

/// How old the instances are when the week begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// All fresh at once, as after a rollout: they fragment in step.
    Rollout,
    /// Of every age: instance *i* of *n* starts with its floor *i/n* of the way from fresh to
    /// the threshold, as a fleet that has run for a while.
    Staggered,
}

/// Who decides when an instance restarts: memprobe's flags, or no memprobe at all.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Strategy {
    /// memprobe runs beside each instance; without it, the OOM killer decides.
    pub memprobe: bool,
    /// `--recycle-when-idle-within`.
    pub quiet: Option<Duration>,
    /// `--fleet kubernetes --fleet-drain-budget N` (and so `--critical` at 95% of the
    /// limit): each instance's [`Member`] takes a slot from [`Leases`] before its decider may
    /// drain, and waits in rotation while none is free. A quiet drain takes a slot like any
    /// other.
    pub budget: Option<Budget>,
}

impl Strategy {
    pub const OOM_KILLER: Strategy = Strategy {
        memprobe: false,
        quiet: None,
        budget: None,
    };
    /// memprobe on each instance, the quiet moment off.
    pub const PER_INSTANCE: Strategy = Strategy {
        memprobe: true,
        quiet: None,
        budget: None,
    };

    pub const fn quiet(self, within: Duration) -> Strategy {
        Strategy {
            quiet: Some(within),
            ..self
        }
    }

    pub const fn budget(self, budget: Budget) -> Strategy {
        Strategy {
            budget: Some(budget),
            ..self
        }
    }

    /// The policies the sweep compares: the OOM killer, memprobe's old defaults (no quiet
    /// moment), the 12 hours the docs advised, the defaults the sweep chose (48 hours), and
    /// the fleet at budgets of 1 and 25%.
    pub const ALL: [Strategy; 7] = [
        Strategy::OOM_KILLER,
        Strategy::PER_INSTANCE,
        Strategy::PER_INSTANCE.quiet(Duration::from_secs(12 * 3600)),
        Strategy::DEFAULTS,
        Strategy::PER_INSTANCE.budget(Budget::Instances(1)),
        Strategy::DEFAULTS.budget(Budget::Instances(1)),
        Strategy::DEFAULTS.budget(Budget::Percent(25.0)),
    ];

    /// memprobe's defaults: the quiet moment within 48 hours.
    pub const DEFAULTS: Strategy = Strategy::PER_INSTANCE.quiet(Duration::from_secs(48 * 3600));

    pub fn name(self) -> String {
        if !self.memprobe {
            return "no memprobe (the OOM killer decides)".into();
        }
        let quiet = match self.quiet {
            Some(within) => format!("quiet moment {}h", within.as_secs() / 3600),
            None => "no quiet moment".into(),
        };
        match self.budget {
            Some(budget) => format!("fleet, budget {budget}, {quiet}"),
            None => format!("per instance, {quiet}"),
        }
    }

    /// The same flags without the fleet: what the fleet must never do worse than.
    pub fn alone(self) -> Strategy {
        Strategy {
            budget: None,
            ..self
        }
    }

    /// Whether the sweep leaves this fleet out for this policy: a budget of 1 on more than
    /// [`MOST_WAITERS_SWEPT`] instances keeps that many waiting, each listing every lease every
    /// tick, and one week of it takes the simulation minutes.
    pub fn skipped_on(self, fleet: &Fleet) -> bool {
        self.budget == Some(Budget::Instances(1)) && fleet.instances > MOST_WAITERS_SWEPT
    }
}

/// What one policy did to the week's calls.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub calls: u64,
    /// Ended by an OOM kill or a restart while still on.
    pub lost: u64,
    /// Of those, ended by `--critical`.
    pub lost_at_critical: u64,
    /// No instance was ready with room when they came.
    pub refused: u64,
    pub restarts: u64,
    pub oom_kills: u64,
    pub quiet_recycles: u64,
    /// The most instances draining at the same moment.
    pub most_draining: usize,
    /// Instance-hours out of rotation (draining, restarting, starting).
    pub capacity_hours_lost: f64,
    /// What the fleet's members asked of the API server (with a drain budget).
    pub api: Requests,
}

/// What an instance was doing when its member made a request, and so how it is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Doing {
    /// Healthy, neither waiting nor holding: the promise is no request at all.
    Healthy,
    /// Its memory asks for a drain and it holds no slot, until its wait lease is gone (the
    /// deletion that ends a wait is the wait's).
    Waiting,
    /// From taking a slot to giving it back (the release is the hold's).
    Holding,
    /// Anything else: over the threshold not yet for `--sustain`, starting, restarting
    /// without a slot.
    Other,
}

/// The API requests of a run's members, by what their instance was doing, and the
/// instance-hours spent doing it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Requests {
    /// Requests while healthy, waiting, holding, and otherwise.
    pub healthy: u64,
    pub waiting: u64,
    pub holding: u64,
    pub other: u64,
    pub healthy_hours: f64,
    pub waiting_hours: f64,
    pub holding_hours: f64,
    pub other_hours: f64,
    pub renewals: u64,
    /// How many times an instance began to wait, and to hold a slot.
    pub waits: u64,
    pub holds: u64,
    /// The least time between two requests of one member while it waited, and between two
    /// renewals of one member.
    pub closest_waiting: Option<Duration>,
    pub closest_renewals: Option<Duration>,
}

impl Requests {
    pub fn total(&self) -> u64 {
        self.healthy + self.waiting + self.holding + self.other
    }

    pub fn hours(&self) -> f64 {
        self.healthy_hours + self.waiting_hours + self.holding_hours + self.other_hours
    }

    /// Requests per instance-hour; 0 for no time at all.
    pub fn per_hour(requests: u64, hours: f64) -> f64 {
        if hours > 0.0 {
            requests as f64 / hours
        } else {
            0.0
        }
    }

    fn count(&mut self, doing: Doing, requests: u64) {
        match doing {
            Doing::Healthy => self.healthy += requests,
            Doing::Waiting => self.waiting += requests,
            Doing::Holding => self.holding += requests,
            Doing::Other => self.other += requests,
        }
    }

    fn began(&mut self, doing: Doing) {
        match doing {
            Doing::Waiting => self.waits += 1,
            Doing::Holding => self.holds += 1,
            Doing::Healthy | Doing::Other => {}
        }
    }

    fn spend(&mut self, doing: Doing, hours: f64) {
        match doing {
            Doing::Healthy => self.healthy_hours += hours,
            Doing::Waiting => self.waiting_hours += hours,
            Doing::Holding => self.holding_hours += hours,
            Doing::Other => self.other_hours += hours,
        }
    }
}

/// One lease as the store keeps it; `fleet` is its `memprobe.io/fleet` label.
#[derive(Clone, Debug)]
struct Stored {
    fleet: String,
    holder: Option<String>,
    renewed: Option<String>,
    duration: Duration,
    version: u64,
    fullness: Option<f64>,
}

/// The fleet's Leases, kept and written as the API server does: every write gets the next
/// `resourceVersion` of one counter, a create of a name that exists and a replace at another
/// version than the stored one lose (409), a replace of a name that is absent loses (404).
/// A renew time is opaque (the writer's clock, to the member): here it is the write's
/// number, so it changes on each write.
#[derive(Debug, Default)]
pub struct Leases {
    leases: BTreeMap<String, Stored>,
    version: u64,
}

/// A lease as a member writes it (src/fleet/kubernetes.rs).
struct Write<'a> {
    name: &'a str,
    holder: Option<&'a str>,
    duration: Duration,
    fullness: Option<f64>,
}

impl Leases {
    fn stored(&mut self, fleet: &str, lease: &Write<'_>) -> String {
        self.version += 1;
        let released = lease.holder.is_none();
        self.leases.insert(
            lease.name.to_string(),
            Stored {
                fleet: fleet.to_string(),
                holder: lease.holder.map(str::to_owned),
                renewed: (!released).then(|| format!("renewed-{}", self.version)),
                duration: lease.duration,
                version: self.version,
                // Written as an annotation with four decimals, read back so.
                fullness: lease
                    .fullness
                    .and_then(|f| format!("{f:.4}").parse::<f64>().ok()),
            },
        );
        self.version.to_string()
    }

    fn create(&mut self, fleet: &str, lease: &Write<'_>) -> Answer {
        if self.leases.contains_key(lease.name) {
            return Answer::Lost;
        }
        Answer::Written(self.stored(fleet, lease))
    }

    fn replace(&mut self, fleet: &str, version: &str, lease: &Write<'_>) -> Answer {
        match self.leases.get(lease.name) {
            Some(old) if old.version.to_string() == version => {
                Answer::Written(self.stored(fleet, lease))
            }
            _ => Answer::Lost,
        }
    }

    fn listed(&self, fleet: &str) -> Vec<Seen> {
        self.leases
            .iter()
            .filter(|(_, l)| l.fleet == fleet)
            .map(|(name, l)| Seen {
                name: name.clone(),
                holder: l.holder.clone(),
                renewed: l.renewed.clone(),
                duration: l.duration,
                version: l.version.to_string(),
                fullness: l.fullness,
            })
            .collect()
    }

    fn holds(&self, name: &str) -> bool {
        self.leases.contains_key(name)
    }

    /// Carries out one member's request, as src/fleet/kubernetes.rs does on the API server:
    /// the answer, and how many API requests it took.
    pub fn answer(
        &mut self,
        member: &Member,
        action: &Action,
        lease: Duration,
        pods: u32,
    ) -> (Answer, u64) {
        let Names { fleet, me } = member.names();
        match action {
            Action::Idle => (Answer::Pod, 0),
            Action::ReadPod => (Answer::Pod, 1),
            Action::CountPods => (Answer::Counted(pods), 1),
            Action::List => (Answer::Listed(self.listed(fleet)), 1),
            Action::Take { slot, version } => {
                let write = Write {
                    name: slot,
                    holder: Some(me),
                    duration: lease,
                    fullness: None,
                };
                let answer = match version {
                    None => self.create(fleet, &write),
                    Some(version) => self.replace(fleet, version, &write),
                };
                (answer, 1)
            }
            Action::Renew { slot, version } => {
                let write = Write {
                    name: slot,
                    holder: Some(me),
                    duration: lease,
                    fullness: None,
                };
                (self.replace(fleet, version, &write), 1)
            }
            Action::Release { slot, version } => {
                let write = Write {
                    name: slot,
                    holder: None,
                    duration: lease,
                    fullness: None,
                };
                (self.replace(fleet, version, &write), 1)
            }
            Action::WriteWait { version, fullness } => {
                let name = member.names().wait();
                let write = Write {
                    name: &name,
                    holder: Some(me),
                    duration: member.wait_duration(),
                    fullness: Some(*fullness),
                };
                match version {
                    Some(version) => (self.replace(fleet, version, &write), 1),
                    None => match self.create(fleet, &write) {
                        // Left by this pod's previous memprobe: read, then replaced at its
                        // version, as the client does.
                        Answer::Lost => {
                            let old = self.leases.get(&name).map(|l| l.version.to_string());
                            let answer = match old {
                                Some(old) => self.replace(fleet, &old, &write),
                                None => Answer::Lost,
                            };
                            (answer, 3)
                        }
                        written => (written, 1),
                    },
                }
            }
            Action::DeleteWait => {
                self.leases.remove(&member.names().wait());
                (Answer::Deleted, 1)
            }
        }
    }
}

/// One call of the week, drawn from the seed.
#[derive(Clone, Copy, Debug)]
struct Call {
    start_step: u64,
    steps: u64,
    leaves_bytes: u64,
}

fn calls(fleet: &Fleet) -> Vec<Call> {
    let mut rng = fastrand::Rng::with_seed(fleet.seed);
    let dt = fleet.step.as_secs_f64();
    let steps = u64::from(fleet.days) * 86_400 / fleet.step.as_secs().max(1);
    let mut out = Vec::new();
    for step in 0..steps {
        let mean = fleet.peak_calls_per_minute * fleet.share_at(step as f64 * dt) * dt / 60.0;
        for _ in 0..poisson(&mut rng, mean) {
            // Box–Muller: a log-normal length around the median.
            let z = (-2.0 * (1.0 - rng.f64()).ln()).sqrt()
                * (2.0 * std::f64::consts::PI * rng.f64()).cos();
            let seconds = (fleet.median_call.as_secs_f64() * (0.8 * z).exp()).clamp(30.0, 10_800.0);
            let (lo, hi) = fleet.wave_mib;
            // Drawn for every fleet, so that the draws after it stay the same.
            let wave = lo + (hi - lo) * rng.f64();
            out.push(Call {
                start_step: step,
                steps: ((seconds / dt).ceil() as u64).max(1),
                leaves_bytes: (wave * MI as f64 / f64::from(fleet.calls_per_wave.max(1))) as u64,
            });
        }
    }
    out
}

/// The day's traffic as a share of its peak: the night's share from 23:00 to 7:00, a smooth
/// hill between, highest at 15:00.
fn daily(hour: f64, night: f64) -> f64 {
    if (7.0..23.0).contains(&hour) {
        let s = (std::f64::consts::PI * (hour - 7.0) / 16.0).sin();
        night + (1.0 - night) * s * s
    } else {
        night
    }
}

impl Fleet {
    /// The traffic `seconds` into the week, as a share of the peak's.
    fn share_at(&self, seconds: f64) -> f64 {
        let hour = (seconds / 3600.0) % 24.0;
        match self.traffic {
            // The daily hill's mean: 16 hours of a sine squared over the night's share.
            Traffic::Flat => {
                (8.0 * self.night_share + 16.0 * (1.0 + self.night_share) / 2.0) / 24.0
            }
            Traffic::Daily => daily(hour, self.night_share),
            Traffic::Weekly => {
                let weekend = (seconds / 86_400.0) as u64 % 7 >= 5;
                daily(hour, self.night_share) * if weekend { 1.0 / 3.0 } else { 1.0 }
            }
        }
    }

    /// The floor instance `n` starts the week with.
    fn first_floor_bytes(&self, n: usize) -> u64 {
        let floor = match self.start {
            Start::Rollout => self.fresh_bytes,
            Start::Staggered => {
                let room = (self.limit_bytes / 5 * 4).saturating_sub(self.fresh_bytes);
                self.fresh_bytes + room * n as u64 / self.instances.max(1) as u64
            }
        };
        self.plateau_bytes
            .map_or(floor, |p| floor.min(p.max(self.fresh_bytes)))
    }

    /// The floor after a call left `leaves` behind.
    fn floor_after(&self, floor: u64, leaves: u64) -> u64 {
        let floor = floor + leaves;
        self.plateau_bytes
            .map_or(floor, |p| floor.min(p.max(self.fresh_bytes)))
    }
}

/// Knuth's: fine for the few calls a step brings.
fn poisson(rng: &mut fastrand::Rng, mean: f64) -> u32 {
    let limit = (-mean).exp();
    let (mut k, mut p) = (0, rng.f64());
    while p > limit {
        k += 1;
        p *= rng.f64();
    }
    k
}

/// memprobe's defaults for a 2 GiB limit: threshold 80%, sustain 5m, idle-sustain 60s,
/// drain-timeout 1h, min-drain 30s.
fn policy(fleet: &Fleet, critical: bool) -> Policy {
    Policy {
        memory: "rss",
        threshold_bytes: fleet.limit_bytes / 5 * 4,
        critical_bytes: critical.then_some(fleet.limit_bytes / 20 * 19),
        sustain: Duration::from_secs(300),
        idle_sustain: Duration::from_secs(60),
        drain_timeout: Duration::from_secs(3600),
        min_drain: Duration::from_secs(30),
        server: ServerPolicy::default(),
        reconnect_grace: Duration::from_secs(10),
        max_gap: Duration::from_secs(600),
    }
}

struct Instance {
    /// When a restarting instance boots; `None` while it runs.
    booting_until: Option<u64>,
    floor_bytes: u64,
    /// The calls on it: the step each ends, and what it leaves behind.
    calls: Vec<(u64, u64)>,
    decider: Decider,
    quiet: QuietMoment,
    history: History,
    /// The last forecast, for the bucket it was drawn in: it changes once a bucket.
    forecast: Option<(u64, Option<Forecast>)>,
    incarnation: u64,
    /// Its part in the fleet, with a drain budget; what it asks for this step; when it last
    /// made a request while waiting, and last renewed.
    member: Option<Member>,
    need: Need,
    last_waiting: Option<Instant>,
    last_renewal: Option<Instant>,
    /// What it was doing at the last beat.
    doing: Doing,
    /// The memory last sampled; none while the server restarts.
    last_memory_bytes: Option<u64>,
}

impl Instance {
    fn running(&self) -> bool {
        self.booting_until.is_none()
    }

    fn memory_bytes(&self, fleet: &Fleet) -> u64 {
        self.floor_bytes + self.calls.len() as u64 * fleet.session_bytes
    }

    /// A transition, told to the member as the monitor tells it (no operator's drains here).
    fn told(&mut self, transition: Option<Transition>) {
        if let (Some(tr), Some(member)) = (transition, &mut self.member) {
            member.told(tr.to, false);
        }
    }

    /// The monitor's `ask_the_fleet`: what the decider held back goes to the member, and the
    /// member's view of the leases becomes the gate of the next steps.
    fn ask(&mut self, now: Instant, fleet: &Fleet) {
        let Some(member) = &self.member else {
            return;
        };
        let fullness = self
            .last_memory_bytes
            .map_or(0.0, |m| m as f64 / fleet.limit_bytes as f64)
            .clamp(0.0, 1.0);
        self.need = Need {
            wants: self.decider.deferred(),
            fullness,
        };
        self.decider.set_gate(match member.wait(now, fullness) {
            None => Gate::Open,
            Some(wait) => Gate::Closed(wait.to_string()),
        });
    }

    fn doing_now(&self, leases: &Leases) -> Doing {
        let Some(member) = &self.member else {
            return Doing::Other;
        };
        if member.held().is_some() {
            Doing::Holding
        } else if self.need.wants || leases.holds(&member.names().wait()) {
            Doing::Waiting
        } else if self.running() && self.decider.state() == State::Healthy {
            Doing::Healthy
        } else {
            Doing::Other
        }
    }

    /// One beat of the fleet's thread: the member's next request, answered by the leases.
    fn beat(&mut self, at: Instant, fleet: &Fleet, leases: &mut Leases, api: &mut Requests) {
        let doing = self.doing_now(leases);
        if doing != self.doing {
            api.began(doing);
            self.doing = doing;
        }
        api.spend(doing, BEAT.as_secs_f64() / 3600.0);
        let Some(member) = &mut self.member else {
            return;
        };
        let action = member.next(at, self.need);
        if action == Action::Idle {
            return;
        }
        let (answer, requests) =
            leases.answer(member, &action, fleet.lease, fleet.instances as u32);
        member.answered(at, answer);
        api.count(doing, requests);
        let closest = |last: &mut Option<Instant>, closest: &mut Option<Duration>| {
            if let Some(before) = last.replace(at) {
                let gap = at - before;
                *closest = Some(closest.map_or(gap, |c| c.min(gap)));
            }
        };
        if doing == Doing::Waiting {
            closest(&mut self.last_waiting, &mut api.closest_waiting);
        }
        if let Action::Renew { .. } = action {
            api.renewals += 1;
            closest(&mut self.last_renewal, &mut api.closest_renewals);
        }
    }
}

/// How often the fleet's thread asks its member for the next request, between the monitor's
/// steps and with the need of the last one. The real thread beats every 250 ms; a member's
/// paces are whole seconds (1 s, the tick, a third of the lease) from a request made at a
/// step, so beats of a second find the same requests due at the same moments, in a quarter
/// of the time (only the time spent, counted per beat, is coarser).
const BEAT: Duration = Duration::from_secs(1);

/// Runs one week under `strategy`.
pub fn run(fleet: &Fleet, strategy: Strategy) -> Outcome {
    let week = calls(fleet);
    let base = Instant::now();
    let steps = u64::from(fleet.days) * 86_400 / fleet.step.as_secs().max(1);
    let boot_steps = fleet.boot.as_secs().div_ceil(fleet.step.as_secs().max(1));
    let policy = policy(fleet, strategy.budget.is_some());
    let within = strategy.quiet;
    let settings = Settings::DEFAULT;
    let bucket_steps = settings.bucket.as_secs() / fleet.step.as_secs().max(1);
    let beats = (fleet.step.as_millis() / BEAT.as_millis()).max(1) as u32;
    let mut noise = fastrand::Rng::with_seed(fleet.seed ^ 0x9e37_79b9);
    let mut leases = Leases::default();
    let mut fleet_state: Vec<Instance> = (0..fleet.instances)
        .map(|n| {
            let mut decider = Decider::new(policy.clone(), base);
            decider.new_incarnation(base, policy.clone(), "instance");
            let member = strategy.budget.map(|slots| {
                let names = Names {
                    fleet: "kms".into(),
                    me: format!("kms-{n}"),
                };
                Member::new(names, slots, fleet.lease, fleet.step)
            });
            let mut instance = Instance {
                booting_until: None,
                floor_bytes: fleet.first_floor_bytes(n),
                calls: Vec::new(),
                decider,
                quiet: QuietMoment::new(within, policy.min_drain, policy.max_gap),
                history: History::new(settings),
                forecast: None,
                incarnation: 1,
                member,
                need: Need::default(),
                last_waiting: None,
                last_renewal: None,
                doing: Doing::Other,
                last_memory_bytes: None,
            };
            // memprobe samples a server before the balancer sends it a call.
            if strategy.memprobe {
                let tr = instance.decider.observe(
                    base,
                    Observation {
                        memory_bytes: instance.memory_bytes(fleet),
                        sessions: Some(0),
                    },
                );
                instance.told(tr);
            }
            instance.ask(base, fleet);
            instance
        })
        .collect();
    let mut out = Outcome {
        calls: week.len() as u64,
        ..Outcome::default()
    };
    let mut next_call = 0;
    let hours_per_step = fleet.step.as_secs_f64() / 3600.0;

    for step in 0..steps {
        let now = base + fleet.step * step as u32;
        // Boots, and the calls that end.
        for i in fleet_state.iter_mut() {
            if i.booting_until.is_some_and(|at| step >= at) {
                i.booting_until = None;
                i.floor_bytes = fleet.fresh_bytes;
                i.incarnation += 1;
                let tr = i.decider.new_incarnation(now, policy.clone(), "instance");
                i.told(Some(tr));
                i.quiet.new_incarnation();
                i.forecast = None;
            }
            i.calls.retain(|&(end, leaves)| {
                if end <= step {
                    i.floor_bytes = fleet.floor_after(i.floor_bytes, leaves);
                }
                end > step
            });
        }
        // New calls, to the ready instance with the fewest.
        while next_call < week.len() && week[next_call].start_step == step {
            let call = week[next_call];
            next_call += 1;
            let pick = fleet_state
                .iter_mut()
                .filter(|i| {
                    i.running()
                        && i.calls.len() < fleet.capacity
                        && (!strategy.memprobe || i.decider.state().ready())
                })
                .min_by_key(|i| i.calls.len());
            match pick {
                Some(i) => i.calls.push((step + call.steps, call.leaves_bytes)),
                None => out.refused += 1,
            }
        }
        // Samples: the OOM killer, then memprobe.
        for i in fleet_state.iter_mut() {
            if !i.running() {
                i.ask(now, fleet);
                continue;
            }
            let jitter = noise.u64(0..=4 * MI);
            let memory = i.memory_bytes(fleet) + jitter;
            if memory > fleet.limit_bytes {
                out.lost += i.calls.len() as u64;
                out.oom_kills += 1;
                restart(i, step + boot_steps);
                i.ask(now, fleet);
                continue;
            }
            if !strategy.memprobe {
                continue;
            }
            let sessions = Some(i.calls.len() as u32);
            let obs = Observation {
                memory_bytes: memory,
                sessions,
            };
            i.last_memory_bytes = Some(memory);
            let tr = i.decider.observe(now, obs);
            i.told(tr);
            i.history.push(forecast::Sample {
                at: now - base,
                memory_bytes: memory,
                sessions,
                incarnation: i.incarnation,
            });
            if i.quiet.idle(now, sessions) && i.decider.state().ready() {
                let bucket = step / bucket_steps.max(1);
                if i.forecast.is_none_or(|(b, _)| b != bucket) {
                    let f = i.history.forecast(policy.threshold_bytes).ok();
                    i.forecast = Some((bucket, f));
                }
                let f = i.forecast.and_then(|(_, f)| f);
                if let Some(why) = i.quiet.decide(now, i.decider.state(), f.as_ref()) {
                    match i.decider.drain_at_quiet_moment(now, why) {
                        Ok(Some(tr)) => {
                            out.quiet_recycles += 1;
                            i.told(Some(tr));
                        }
                        Ok(None) => {}
                        Err(crate::policy::Deferred) => i.quiet.deferred(),
                    }
                }
            }
            if i.decider.state() == State::Recycle {
                out.lost += i.calls.len() as u64;
                if i.decider.reason().contains("over critical") {
                    out.lost_at_critical += i.calls.len() as u64;
                }
                restart(i, step + boot_steps);
                out.restarts += 1;
            }
            i.ask(now, fleet);
        }
        // Until the next step, the fleet's threads: every member's next request, answered.
        if strategy.budget.is_some() {
            for beat in 0..beats {
                let at = now + BEAT * beat;
                for i in fleet_state.iter_mut() {
                    i.beat(at, fleet, &mut leases, &mut out.api);
                }
            }
        }
        let draining = fleet_state
            .iter()
            .filter(|i| i.running() && i.decider.state() == State::Draining)
            .count();
        out.most_draining = out.most_draining.max(draining);
        let out_of_rotation = fleet_state
            .iter()
            .filter(|i| !i.running() || (strategy.memprobe && !i.decider.state().ready()))
            .count();
        out.capacity_hours_lost += out_of_rotation as f64 * hours_per_step;
    }
    out.restarts += out.oom_kills;
    out
}

fn restart(i: &mut Instance, boots_at: u64) {
    i.calls.clear();
    i.booting_until = Some(boots_at);
    i.last_memory_bytes = None;
}

/// The whole comparison as a markdown table, with the model it ran.
pub fn table(fleet: &Fleet, strategies: &[Strategy]) -> String {
    let mut text = String::new();
    let week = calls(fleet);
    let _ = writeln!(
        text,
        "{} instances, {} days, seed {}: {} calls (median {}, σ 0.8, 30 s to 3 h), up to {} \
         new calls a minute at 15:00 and {:.0}% of that at night; each call holds {} MiB while \
         live and leaves {:.0}–{:.0} MiB behind per {} calls; memory limit {} MiB (OOM kill \
         over it), threshold 80%, a restart takes {} s. Quiet moment N h: \
         --recycle-when-idle-within Nh. Sampled every {} s.",
        fleet.instances,
        fleet.days,
        fleet.seed,
        week.len(),
        crate::units::Human(fleet.median_call),
        fleet.peak_calls_per_minute,
        fleet.night_share * 100.0,
        fleet.session_bytes / MI,
        fleet.wave_mib.0,
        fleet.wave_mib.1,
        fleet.calls_per_wave,
        fleet.limit_bytes / MI,
        fleet.boot.as_secs(),
        fleet.step.as_secs(),
    );
    text.push('\n');
    text.push_str(
        "| policy | calls lost | calls refused (no instance ready) | restarts (OOM kills) | \
         most draining at once | capacity lost (instance-hours) |\n",
    );
    text.push_str("|---|---|---|---|---|---|\n");
    let mut budgets = Vec::new();
    // Each policy on a core of its own (a budget of 1 is run here whatever the size).
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let runs: Vec<_> = strategies
            .iter()
            .map(|&s| scope.spawn(move || run(fleet, s)))
            .collect();
        runs.into_iter()
            .map(|r| r.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    for (&strategy, o) in strategies.iter().zip(outcomes) {
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} ({}) | {} | {:.1} |",
            strategy.name(),
            o.lost,
            o.refused,
            o.restarts,
            o.oom_kills,
            o.most_draining,
            o.capacity_hours_lost
        );
        if strategy.budget.is_some() {
            budgets.push((strategy, o.api));
        }
    }
    let _ = writeln!(
        text,
        "\nThe drain budgets' API requests (each instance's fleet member, answered by an \
         in-memory Lease store; lease {} s, interval {} s), per instance-hour, with the \
         instance-hours spent so: waiting runs from the first step memory asks for a drain \
         without a slot to the deletion of its wait lease, holding from taking a slot to its \
         release.\n",
        fleet.lease.as_secs(),
        fleet.step.as_secs(),
    );
    text.push_str(
        "| policy | API requests per instance-hour | while healthy | while waiting for a slot \
         (waits) | closest two while waiting | while holding one (holds) | renewals | closest \
         two renewals |\n",
    );
    text.push_str("|---|---|---|---|---|---|---|---|\n");
    let seconds =
        |d: Option<Duration>| d.map_or("none".to_string(), |d| format!("{} s", d.as_secs()));
    for (strategy, api) in budgets {
        let rate = Requests::per_hour;
        let _ = writeln!(
            text,
            "| {} | {:.1} | {:.1} ({:.0} h) | {:.1} ({:.1} h, {}) | {} | {:.1} ({:.1} h, {}) | \
             {:.1} | {} |",
            strategy.name(),
            rate(api.total(), api.hours()),
            rate(api.healthy, api.healthy_hours),
            api.healthy_hours,
            rate(api.waiting, api.waiting_hours),
            api.waiting_hours,
            api.waits,
            seconds(api.closest_waiting),
            rate(api.holding, api.holding_hours),
            api.holding_hours,
            api.holds,
            rate(api.renewals, api.holding_hours),
            seconds(api.closest_renewals),
        );
    }
    text
}

/// One fleet of the sweep: what it varies from the base, and the fleet.
#[derive(Clone, Debug)]
pub struct Swept {
    pub name: String,
    pub fleet: Fleet,
}

/// How a swept fleet differs from the base one: each axis of the grid.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub instances: usize,
    /// Growth per wave as a multiple of the measured clean rate; `None` levels off as
    /// jemalloc does.
    pub growth: Option<f64>,
    pub traffic: Traffic,
    pub median_call: Duration,
    pub start: Start,
}

impl Shape {
    /// 20 instances fragmenting at the measured clean rate, daily traffic, calls of a median
    /// 8 minutes, all started together.
    pub const BASE: Shape = Shape {
        instances: 20,
        growth: Some(1.0),
        traffic: Traffic::Daily,
        median_call: Duration::from_secs(8 * 60),
        start: Start::Rollout,
    };

    /// The fleet of this shape. Each instance takes the same load whatever the fleet's size
    /// and the calls' length: 1.5 new calls a minute at the peak for calls of a median
    /// 8 minutes, fewer for longer ones (about 16 calls on at the peak, of 40 it can take).
    pub fn fleet(self, days: u32) -> Fleet {
        let base = Fleet::default();
        let eight_minutes = 8.0 * 60.0;
        let (lo, hi) = CLEAN_WAVE_MIB;
        let growth = self.growth.unwrap_or(1.0);
        Fleet {
            instances: self.instances,
            days,
            wave_mib: (lo * growth, hi * growth),
            plateau_bytes: self.growth.is_none().then_some(JEMALLOC_PLATEAU_BYTES),
            peak_calls_per_minute: 1.5 * self.instances as f64 * eight_minutes
                / self.median_call.as_secs_f64(),
            traffic: self.traffic,
            start: self.start,
            median_call: self.median_call,
            ..base
        }
    }

    pub fn name(self) -> String {
        let growth = match self.growth {
            Some(g) => format!("{g}× the clean rate"),
            None => "levels off (jemalloc)".into(),
        };
        let traffic = match self.traffic {
            Traffic::Flat => "flat",
            Traffic::Daily => "daily",
            Traffic::Weekly => "weekday/weekend",
        };
        let start = match self.start {
            Start::Rollout => "rollout",
            Start::Staggered => "staggered",
        };
        format!(
            "{} instances, {growth}, {traffic}, calls of {}, {start}",
            self.instances,
            crate::units::Human(self.median_call)
        )
    }
}

/// The sweep's grid: the base fleet, each axis varied on its own around it, and the corners
/// where the axes pull hardest together (a full product of the axes would take hours).
pub fn grid() -> Vec<Shape> {
    let base = Shape::BASE;
    let minutes = |m: u64| Duration::from_secs(m * 60);
    let mut shapes = vec![base];
    for instances in [3, 6, 50, 200] {
        shapes.push(Shape { instances, ..base });
    }
    for growth in [Some(0.5), Some(2.0), Some(4.0), None] {
        shapes.push(Shape { growth, ..base });
    }
    for traffic in [Traffic::Flat, Traffic::Weekly] {
        shapes.push(Shape { traffic, ..base });
    }
    for median_call in [minutes(2), minutes(60)] {
        shapes.push(Shape {
            median_call,
            ..base
        });
    }
    shapes.push(Shape {
        start: Start::Staggered,
        ..base
    });
    let corners = [
        (200, Some(4.0), Traffic::Flat, minutes(2), Start::Rollout),
        (3, Some(4.0), Traffic::Weekly, minutes(60), Start::Staggered),
        (6, Some(4.0), Traffic::Daily, minutes(60), Start::Rollout),
        (50, Some(2.0), Traffic::Flat, minutes(8), Start::Staggered),
        (
            50,
            Some(0.5),
            Traffic::Weekly,
            minutes(60),
            Start::Staggered,
        ),
        (50, None, Traffic::Flat, minutes(2), Start::Rollout),
    ];
    for (instances, growth, traffic, median_call, start) in corners {
        shapes.push(Shape {
            instances,
            growth,
            traffic,
            median_call,
            start,
        });
    }
    shapes
}

/// The most instances a budget of 1 is swept on ([`Strategy::skipped_on`]).
pub const MOST_WAITERS_SWEPT: usize = 50;

/// Runs every strategy on every fleet, on every core: `outcomes[fleet][strategy]`, `None`
/// where [`Strategy::skipped_on`] leaves it out.
pub fn sweep(fleets: &[Fleet], strategies: &[Strategy]) -> Vec<Vec<Option<Outcome>>> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut jobs: Vec<(usize, usize)> = (0..fleets.len())
        .flat_map(|f| (0..strategies.len()).map(move |s| (f, s)))
        .filter(|&(f, s)| !strategies[s].skipped_on(&fleets[f]))
        .collect();
    // The biggest first, so that no thread is left with one at the end.
    jobs.sort_by_key(|&(f, _)| std::cmp::Reverse(fleets[f].instances));
    let results = Mutex::new(vec![vec![None; strategies.len()]; fleets.len()]);
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads.min(jobs.len()) {
            scope.spawn(|| {
                while let Some(&(f, s)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let outcome = run(&fleets[f], strategies[s]);
                    if let Ok(mut results) = results.lock() {
                        results[f][s] = Some(outcome);
                    }
                }
            });
        }
    });
    results.into_inner().unwrap_or_default()
}

/// The middle value (the lower of the two middle ones), and the largest.
fn median_and_worst(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let median = values.get(values.len().saturating_sub(1) / 2).copied();
    (median.unwrap_or(0.0), values.last().copied().unwrap_or(0.0))
}

/// Instance-hours out of rotation, as a share of the fleet's instance-hours.
fn capacity_share(fleet: &Fleet, o: &Outcome) -> f64 {
    o.capacity_hours_lost / (fleet.instances as f64 * f64::from(fleet.days) * 24.0)
}

/// Restarts per instance and week.
fn restarts_per_instance_week(fleet: &Fleet, o: &Outcome) -> f64 {
    o.restarts as f64 / fleet.instances as f64 / (f64::from(fleet.days) / 7.0)
}

/// What the sweep says of one policy, over the fleets it ran on.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub fleets: usize,
    /// Fleets where it lost no call and refused none.
    pub clean: usize,
    /// Median and worst over the fleets.
    pub lost: (f64, f64),
    pub refused: (f64, f64),
    /// Percent of the fleet's instance-hours.
    pub capacity: (f64, f64),
    /// Per instance and week.
    pub restarts: (f64, f64),
    /// Per instance-hour.
    pub api: (f64, f64),
    /// Restarts on fleets whose memory levels off.
    pub levelled_restarts: u64,
    /// Fleets where it lost more calls than the same flags without the fleet; `None` for a
    /// policy without one.
    pub worse_than_alone: Option<usize>,
}

/// Sums up `outcomes` (from [`sweep`]) for the policy at `s`.
pub fn summary(
    shapes: &[Shape],
    fleets: &[Fleet],
    outcomes: &[Vec<Option<Outcome>>],
    strategies: &[Strategy],
    s: usize,
) -> Summary {
    let ran: Vec<(&Shape, &Fleet, &Outcome)> = shapes
        .iter()
        .zip(fleets)
        .zip(outcomes)
        .filter_map(|((shape, fleet), o)| Some((shape, fleet, o[s].as_ref()?)))
        .collect();
    let column = |f: &dyn Fn(&Fleet, &Outcome) -> f64| {
        median_and_worst(ran.iter().map(|(_, fleet, o)| f(fleet, o)).collect())
    };
    let alone = strategies.iter().position(|a| *a == strategies[s].alone());
    Summary {
        fleets: ran.len(),
        clean: ran
            .iter()
            .filter(|(_, _, o)| o.lost == 0 && o.refused == 0)
            .count(),
        lost: column(&|_, o| o.lost as f64),
        refused: column(&|_, o| o.refused as f64),
        capacity: column(&|f, o| 100.0 * capacity_share(f, o)),
        restarts: column(&|f, o| restarts_per_instance_week(f, o)),
        api: column(&|_, o| Requests::per_hour(o.api.total(), o.api.hours())),
        levelled_restarts: ran
            .iter()
            .filter(|(shape, _, _)| shape.growth.is_none())
            .map(|(_, _, o)| o.restarts)
            .sum(),
        worse_than_alone: alone.filter(|&a| a != s).map(|a| {
            outcomes
                .iter()
                .filter(|o| match (&o[s], &o[a]) {
                    (Some(fleet), Some(alone)) => fleet.lost > alone.lost,
                    _ => false,
                })
                .count()
        }),
    }
}

/// The sweep as markdown: the summary per policy, then every fleet swept.
pub fn sweep_table(shapes: &[Shape], days: u32, strategies: &[Strategy]) -> String {
    let fleets: Vec<Fleet> = shapes.iter().map(|s| s.fleet(days)).collect();
    let outcomes = sweep(&fleets, strategies);
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{} fleets of {} days each (listed below), every policy on each (a budget of 1 on at \
         most {} instances: more waiters take the simulation too long). Growth per wave of {} \
         calls: the clean rate measured on KMS with glibc, {:.0}–{:.0} MiB, times the factor, \
         or levelling off at {} MiB as on jemalloc. Each instance takes the same load whatever \
         the fleet's size and the calls' length (about 16 calls on at the peak, of 40). \
         Capacity lost is the share of instance-hours out of rotation; restarts are per \
         instance and week; API requests are per instance-hour. \"Clean\" counts the fleets \
         where the policy lost no call and refused none; \"worse than alone\" those where the \
         fleet lost more calls than the same flags without it.\n",
        shapes.len(),
        days,
        MOST_WAITERS_SWEPT,
        Fleet::default().calls_per_wave,
        CLEAN_WAVE_MIB.0,
        CLEAN_WAVE_MIB.1,
        JEMALLOC_PLATEAU_BYTES / MI,
    );
    text.push_str(
        "| # | policy | clean | calls lost, median / worst | refused, median / worst | \
         capacity lost, median / worst | restarts, median / worst | restarts where memory \
         levels off | API requests, median / worst | worse than alone |\n",
    );
    text.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for (s, strategy) in strategies.iter().enumerate() {
        let m = summary(shapes, &fleets, &outcomes, strategies, s);
        let _ = writeln!(
            text,
            "| {} | {} | {} of {} | {:.0} / {:.0} | {:.0} / {:.0} | {:.1}% / {:.1}% | {:.1} / \
             {:.1} | {} | {:.1} / {:.1} | {} |",
            s + 1,
            strategy.name(),
            m.clean,
            m.fleets,
            m.lost.0,
            m.lost.1,
            m.refused.0,
            m.refused.1,
            m.capacity.0,
            m.capacity.1,
            m.restarts.0,
            m.restarts.1,
            m.levelled_restarts,
            m.api.0,
            m.api.1,
            m.worse_than_alone.map_or("—".into(), |n| n.to_string()),
        );
    }
    let _ = writeln!(
        text,
        "\nEvery fleet swept: its calls, then the calls lost / refused under each policy (by \
         its number above; \"none clean\" where no policy lost and refused none):\n"
    );
    text.push_str("| fleet | calls |");
    for n in 1..=strategies.len() {
        let _ = write!(text, " {n} |");
    }
    text.push_str("\n|---|---|");
    text.push_str(&"---|".repeat(strategies.len()));
    text.push('\n');
    for (shape, o) in shapes.iter().zip(&outcomes) {
        let none = o.iter().flatten().all(|o| o.lost > 0 || o.refused > 0);
        let calls = o.iter().flatten().next().map_or(0, |o| o.calls);
        let _ = write!(
            text,
            "| {}{} | {calls} |",
            shape.name(),
            if none { " (none clean)" } else { "" },
        );
        for o in o {
            match o {
                Some(o) => {
                    let _ = write!(text, " {} / {} |", o.lost, o.refused);
                }
                None => text.push_str(" not run |"),
            }
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small fleet for a few days: enough to cross the threshold once at the clean rate.
    fn small() -> Fleet {
        Shape {
            instances: 6,
            ..Shape::BASE
        }
        .fleet(4)
    }

    #[test]
    fn the_same_seed_is_the_same_week() {
        let fleet = small();
        assert_eq!(
            run(&fleet, Strategy::DEFAULTS),
            run(&fleet, Strategy::DEFAULTS),
            "a run is deterministic"
        );
    }

    #[test]
    fn the_orderings_the_readme_claims_hold() {
        let fleet = small();
        let [oom, old, twelve, defaults, budget, fleet_defaults, share] =
            Strategy::ALL.map(|s| run(&fleet, s));
        assert!(
            oom.oom_kills > 0 && oom.lost > 0,
            "the model fragments to the limit: {oom:?}"
        );
        assert!(
            old.lost < oom.lost,
            "memprobe loses fewer calls than the OOM killer: {old:?} against {oom:?}"
        );
        assert!(
            old.refused > oom.refused && old.most_draining > fleet.instances / 2,
            "instances fragmenting at one rate drain together and refuse calls: {old:?}"
        );
        assert!(
            twelve.refused > 0 && twelve.quiet_recycles == 0,
            "at the clean rate, a 12-hour quiet moment misses the night before the peak: {twelve:?}"
        );
        assert!(
            defaults.lost == 0 && defaults.refused == 0 && defaults.quiet_recycles > 0,
            "the defaults (the quiet moment within 48 hours) restart at night and keep every call: {defaults:?}"
        );
        assert!(
            budget.most_draining <= 1 && budget.refused <= old.refused,
            "a budget of 1 drains one at a time, and keeps the fleet in rotation: {budget:?}"
        );
        for (fleet_on, alone) in [(&fleet_defaults, &defaults), (&share, &defaults)] {
            assert!(
                fleet_on.lost <= alone.lost && fleet_on.refused <= alone.refused,
                "the fleet at the defaults never does worse than the instances alone: \
                 {fleet_on:?} against {alone:?}"
            );
        }
    }

    #[test]
    fn memory_that_levels_off_is_never_restarted() {
        let fleet = Shape {
            instances: 3,
            growth: None,
            ..Shape::BASE
        }
        .fleet(3);
        for strategy in Strategy::ALL {
            let o = run(&fleet, strategy);
            assert_eq!(
                (o.restarts, o.lost, o.refused),
                (0, 0, 0),
                "{}: {o:?}",
                strategy.name()
            );
        }
    }

    #[test]
    fn a_waiter_near_critical_drains_rather_than_restart_with_its_calls_on() {
        // Four times the clean rate: a fleet drained one at a time cannot keep up, and its
        // waiters would run into --critical.
        let fleet = Shape {
            instances: 6,
            growth: Some(4.0),
            ..Shape::BASE
        }
        .fleet(3);
        let alone = run(&fleet, Strategy::DEFAULTS);
        for budget in [Budget::Instances(1), Budget::Percent(25.0)] {
            let o = run(&fleet, Strategy::DEFAULTS.budget(budget));
            assert!(
                o.lost_at_critical == 0 && o.lost <= alone.lost,
                "budget {budget}: {o:?} against {alone:?}"
            );
        }
    }

    #[test]
    fn the_sweep_runs_each_policy_on_each_fleet_but_a_budget_of_1_on_a_big_one() {
        let shapes = [
            Shape {
                instances: 3,
                ..Shape::BASE
            },
            Shape {
                instances: MOST_WAITERS_SWEPT + 1,
                growth: None,
                ..Shape::BASE
            },
        ];
        // The big one for no day at all: only whether it runs counts here.
        let fleets = [shapes[0].fleet(1), shapes[1].fleet(0)];
        let strategies = [
            Strategy::DEFAULTS,
            Strategy::DEFAULTS.budget(Budget::Instances(1)),
        ];
        let outcomes = sweep(&fleets, &strategies);
        assert!(outcomes[0].iter().all(Option::is_some));
        assert!(outcomes[1][0].is_some() && outcomes[1][1].is_none());
        let m = summary(&shapes, &fleets, &outcomes, &strategies, 1);
        assert_eq!(m.fleets, 1, "a fleet left out is not counted");
        assert_eq!(m.worse_than_alone, Some(0));
    }

    #[test]
    fn a_healthy_member_asks_nothing_a_waiter_once_a_tick_and_a_holder_renews_at_a_third_of_its_lease()
     {
        let fleet = small();
        let tick = fleet.step.max(crate::policy::fleet::MIN_TICK);
        let per_tick = 3600.0 / tick.as_secs_f64();
        let per_renewal = 3600.0 / (fleet.lease / 3).as_secs_f64();
        for strategy in [
            Strategy::PER_INSTANCE.budget(Budget::Instances(1)),
            Strategy::DEFAULTS.budget(Budget::Instances(1)),
        ] {
            let api = run(&fleet, strategy).api;
            assert!(
                api.healthy_hours > 0.0 && api.healthy == 0,
                "no request while healthy: {strategy:?} {api:?}"
            );
            assert!(
                api.waits > 0 && api.closest_waiting >= Some(tick),
                "while waiting, at most one request per max(--interval, 10 s): {strategy:?} {api:?}"
            );
            // One a tick, and the first at once: 360 an hour, plus one a wait.
            assert!(
                api.waiting as f64 <= api.waiting_hours * per_tick + api.waits as f64,
                "{strategy:?} {api:?}"
            );
            assert!(
                api.holds > 0
                    && api.closest_renewals >= Some(fleet.lease / 3)
                    && Requests::per_hour(api.renewals, api.holding_hours) <= per_renewal,
                "a holder renews at a third of its lease, no more often: {strategy:?} {api:?}"
            );
        }
        for strategy in [Strategy::PER_INSTANCE, Strategy::DEFAULTS] {
            assert_eq!(
                run(&fleet, strategy).api.total(),
                0,
                "without the fleet, no member and no request"
            );
        }
    }

    #[test]
    fn the_lease_store_answers_as_the_api_server_does() {
        let names = |me: &str| Names {
            fleet: "kms".into(),
            me: me.into(),
        };
        let a = Member::new(names("kms-0"), Budget::Instances(1), LEASE, STEP);
        let b = Member::new(names("kms-1"), Budget::Instances(1), LEASE, STEP);
        let mut leases = Leases::default();
        let take = Action::Take {
            slot: "memprobe-kms-slot-0".into(),
            version: None,
        };
        let (first, requests) = leases.answer(&a, &take, LEASE, 2);
        assert_eq!((first.clone(), requests), (Answer::Written("1".into()), 1));
        assert_eq!(
            leases.answer(&b, &take, LEASE, 2).0,
            Answer::Lost,
            "a create of a name that exists is a 409"
        );
        let stale = Action::Take {
            slot: "memprobe-kms-slot-0".into(),
            version: Some("0".into()),
        };
        assert_eq!(
            leases.answer(&b, &stale, LEASE, 2).0,
            Answer::Lost,
            "a stale version too"
        );
        let Answer::Listed(before) = leases.answer(&b, &Action::List, LEASE, 2).0 else {
            panic!("a listing");
        };
        let renew = Action::Renew {
            slot: "memprobe-kms-slot-0".into(),
            version: "1".into(),
        };
        assert_eq!(
            leases.answer(&a, &renew, LEASE, 2).0,
            Answer::Written("2".into())
        );
        let wait = Action::WriteWait {
            version: None,
            fullness: 0.912_345,
        };
        assert_eq!(
            leases.answer(&b, &wait, LEASE, 2).0,
            Answer::Written("3".into())
        );
        leases.leases.insert(
            "someone-elses".into(),
            Stored {
                fleet: "janus".into(),
                holder: Some("janus-0".into()),
                renewed: None,
                duration: LEASE,
                version: 9,
                fullness: None,
            },
        );
        let Answer::Listed(after) = leases.answer(&b, &Action::List, LEASE, 2).0 else {
            panic!("a listing");
        };
        let names: Vec<&str> = after.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            ["memprobe-kms-slot-0", "memprobe-kms-wait-kms-1"],
            "listed by the fleet's label"
        );
        assert_eq!(after[0].holder.as_deref(), Some("kms-0"));
        assert_ne!(
            after[0].renewed, before[0].renewed,
            "a renewal changes the renew time"
        );
        assert_eq!(
            after[1].fullness,
            Some(0.9123),
            "the annotation's four decimals"
        );
        assert_eq!(after[1].duration, b.wait_duration());
        assert_eq!(
            leases.answer(&b, &wait, LEASE, 2),
            (Answer::Written("4".into()), 3),
            "a wait lease left behind: create, read, replace"
        );
        let release = Action::Release {
            slot: "memprobe-kms-slot-0".into(),
            version: "2".into(),
        };
        assert_eq!(
            leases.answer(&a, &release, LEASE, 2).0,
            Answer::Written("5".into())
        );
        let Answer::Listed(released) = leases.answer(&b, &Action::List, LEASE, 2).0 else {
            panic!("a listing");
        };
        assert_eq!(
            (released[0].holder.clone(), released[0].renewed.clone()),
            (None, None)
        );
        assert_eq!(
            leases.answer(&b, &Action::DeleteWait, LEASE, 2),
            (Answer::Deleted, 1)
        );
        assert_eq!(
            leases.answer(&b, &Action::DeleteWait, LEASE, 2).0,
            Answer::Deleted,
            "a 404 on deletion is deleted"
        );
        assert_eq!(
            leases.answer(&b, &Action::CountPods, LEASE, 2).0,
            Answer::Counted(2)
        );
    }

    const LEASE: Duration = Duration::from_secs(30);
    const STEP: Duration = Duration::from_secs(10);
}
