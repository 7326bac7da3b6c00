//! The fleet simulation: the calls each policy loses, on a simulated week.
//!
//!     cargo bench --bench fleet      # the table BENCHMARKS.md quotes (bash benches/run fleet)
//!
//! It runs the real decision code — [`Decider`], [`QuietMoment`] and [`forecast`] — on
//! simulated time for a fleet of media servers behind a balancer that sends each new call to
//! the ready instance with the fewest calls. Nothing else is real: no process, no socket, no
//! clock. Every instance starts at once (as after a rollout), and each call that ends leaves
//! memory behind, as glibc's heap does: 45–50 MiB for every [`Fleet::calls_per_wave`] calls,
//! the growth per wave measured on KMS 7.3.1. (That measurement's wave was four 8-second
//! pipelines; how many real calls make one is this model's assumption, stated in its table.)
//! A live call holds [`Fleet::session_bytes`] more, given back when it ends. Resident memory
//! over the limit is an OOM kill: every call on the instance is lost. A recycle loses the
//! calls still on the instance (a drain that reached `--drain-timeout`).
//!
//! The calls (arrival, length, memory left behind) are drawn once from the seed, so every
//! policy faces the same week, and a run is the same run every time.

use std::fmt::Write as _;
use std::time::Duration;

use tokio::time::Instant;

use crate::forecast::{self, Forecast, History, Settings};
use crate::policy::quiet::QuietMoment;
use crate::policy::{Decider, Observation, Policy, ServerPolicy, State};

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
    pub calls_per_wave: u32,
    /// What a live call holds on top of the floor.
    pub session_bytes: u64,
    /// Calls an instance takes at most.
    pub capacity: usize,
    /// New calls a minute, fleet-wide, at the day's peak (15:00).
    pub peak_calls_per_minute: f64,
    /// The night's traffic as a share of the peak's.
    pub night_share: f64,
    /// Calls last a log-normal time with this median (σ = 0.8), from 30 s to 3 h.
    pub median_call: Duration,
    /// From a restart to the first sample of the new incarnation.
    pub boot: Duration,
    /// `--recycle-when-idle-within` in the quiet-moment runs.
    pub within: Duration,
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
            wave_mib: (45.0, 50.0),
            calls_per_wave: 32,
            session_bytes: 20 * MI,
            capacity: 40,
            peak_calls_per_minute: 30.0,
            night_share: 0.03,
            median_call: Duration::from_secs(8 * 60),
            boot: Duration::from_secs(30),
            within: Duration::from_secs(12 * 3600),
        }
    }
}

/// Who decides when an instance restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// No memprobe: the OOM killer.
    OomKiller,
    /// memprobe on each instance, as today (default flags).
    PerInstance,
    /// With `--recycle-when-idle-within`.
    QuietMoment,
    /// As today, with at most `budget` instances draining fleet-wide (and `--critical` at 95%
    /// of the limit, as the fleet issue has it). Simulated: an instance whose memory asks for
    /// a drain without a free slot stays in rotation until one frees, the fullest first; a
    /// slot frees when the recycled instance is healthy again.
    DrainBudget(usize),
    /// The quiet moment with the drain budget: a quiet drain takes a slot like any other.
    QuietMomentAndBudget(usize),
}

impl Strategy {
    pub const ALL: [Strategy; 5] = [
        Strategy::OomKiller,
        Strategy::PerInstance,
        Strategy::QuietMoment,
        Strategy::DrainBudget(1),
        Strategy::QuietMomentAndBudget(1),
    ];

    pub fn name(self) -> String {
        match self {
            Strategy::OomKiller => "no memprobe (the OOM killer decides)".into(),
            Strategy::PerInstance => "memprobe per instance, as today".into(),
            Strategy::QuietMoment => "with the quiet-moment recycle".into(),
            Strategy::DrainBudget(n) => format!("with a fleet drain budget of {n}"),
            Strategy::QuietMomentAndBudget(n) => {
                format!("quiet-moment recycle and a drain budget of {n}")
            }
        }
    }

    fn memprobe(self) -> bool {
        self != Strategy::OomKiller
    }

    fn quiet(self) -> bool {
        matches!(
            self,
            Strategy::QuietMoment | Strategy::QuietMomentAndBudget(_)
        )
    }

    fn budget(self) -> Option<usize> {
        match self {
            Strategy::DrainBudget(n) | Strategy::QuietMomentAndBudget(n) => Some(n),
            _ => None,
        }
    }
}

/// What one policy did to the week's calls.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub calls: u64,
    /// Ended by an OOM kill or a restart while still on.
    pub lost: u64,
    /// No instance was ready with room when they came.
    pub refused: u64,
    pub restarts: u64,
    pub oom_kills: u64,
    pub quiet_recycles: u64,
    /// The most instances draining at the same moment.
    pub most_draining: usize,
    /// Instance-hours out of rotation (draining, restarting, starting).
    pub capacity_hours_lost: f64,
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
        let hour = (step as f64 * dt / 3600.0) % 24.0;
        let mean = fleet.peak_calls_per_minute * traffic(hour, fleet.night_share) * dt / 60.0;
        for _ in 0..poisson(&mut rng, mean) {
            // Box–Muller: a log-normal length around the median.
            let z = (-2.0 * (1.0 - rng.f64()).ln()).sqrt()
                * (2.0 * std::f64::consts::PI * rng.f64()).cos();
            let seconds = (fleet.median_call.as_secs_f64() * (0.8 * z).exp()).clamp(30.0, 10_800.0);
            let (lo, hi) = fleet.wave_mib;
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
fn traffic(hour: f64, night: f64) -> f64 {
    if (7.0..23.0).contains(&hour) {
        let s = (std::f64::consts::PI * (hour - 7.0) / 16.0).sin();
        night + (1.0 - night) * s * s
    } else {
        night
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
    /// Holds a drain slot; frees it once healthy after its restart.
    slot: bool,
    restarted_with_slot: bool,
    /// Its memory asked for a drain and no slot was free: still in rotation.
    waiting: bool,
}

impl Instance {
    fn running(&self) -> bool {
        self.booting_until.is_none()
    }

    fn memory_bytes(&self, fleet: &Fleet) -> u64 {
        self.floor_bytes + self.calls.len() as u64 * fleet.session_bytes
    }
}

/// Runs one week under `strategy`.
pub fn run(fleet: &Fleet, strategy: Strategy) -> Outcome {
    let week = calls(fleet);
    let base = Instant::now();
    let steps = u64::from(fleet.days) * 86_400 / fleet.step.as_secs().max(1);
    let boot_steps = fleet.boot.as_secs().div_ceil(fleet.step.as_secs().max(1));
    let policy = policy(fleet, strategy.budget().is_some());
    let within = strategy.quiet().then_some(fleet.within);
    let settings = Settings::DEFAULT;
    let bucket_steps = settings.bucket.as_secs() / fleet.step.as_secs().max(1);
    let mut noise = fastrand::Rng::with_seed(fleet.seed ^ 0x9e37_79b9);
    let mut fleet_state: Vec<Instance> = (0..fleet.instances)
        .map(|_| {
            let mut decider = Decider::new(policy.clone(), base);
            decider.new_incarnation(base, policy.clone(), "instance");
            Instance {
                booting_until: None,
                floor_bytes: fleet.fresh_bytes,
                calls: Vec::new(),
                decider,
                quiet: QuietMoment::new(within, policy.min_drain),
                history: History::new(settings),
                forecast: None,
                incarnation: 1,
                slot: false,
                restarted_with_slot: false,
                waiting: false,
            }
        })
        .collect();
    let mut out = Outcome {
        calls: week.len() as u64,
        ..Outcome::default()
    };
    let mut next_call = 0;
    let mut slots_held = 0;
    let hours_per_step = fleet.step.as_secs_f64() / 3600.0;

    for step in 0..steps {
        let now = base + fleet.step * step as u32;
        // Boots, and the calls that end.
        for i in fleet_state.iter_mut() {
            if i.booting_until.is_some_and(|at| step >= at) {
                i.booting_until = None;
                i.floor_bytes = fleet.fresh_bytes;
                i.incarnation += 1;
                i.decider.new_incarnation(now, policy.clone(), "instance");
                i.quiet.new_incarnation();
                i.forecast = None;
            }
            i.calls.retain(|&(end, leaves)| {
                if end <= step {
                    i.floor_bytes += leaves;
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
                        && (!strategy.memprobe() || i.waiting || i.decider.state().ready())
                })
                .min_by_key(|i| i.calls.len());
            match pick {
                Some(i) => i.calls.push((step + call.steps, call.leaves_bytes)),
                None => out.refused += 1,
            }
        }
        // Samples: the OOM killer, then memprobe.
        for i in fleet_state.iter_mut().filter(|i| i.running()) {
            let jitter = noise.u64(0..=4 * MI);
            let memory = i.memory_bytes(fleet) + jitter;
            if memory > fleet.limit_bytes {
                out.lost += i.calls.len() as u64;
                out.oom_kills += 1;
                restart(i, step + boot_steps);
                continue;
            }
            if !strategy.memprobe() {
                continue;
            }
            let sessions = Some(i.calls.len() as u32);
            let obs = Observation {
                memory_bytes: memory,
                sessions,
            };
            // Waiting for a slot, only --critical still acts.
            if !i.waiting || policy.critical_bytes.is_some_and(|c| memory > c) {
                i.decider.observe(now, obs);
            }
            i.history.push(forecast::Sample {
                at: now - base,
                memory_bytes: memory,
                sessions,
                incarnation: i.incarnation,
            });
            let slot_free = strategy.budget().is_none_or(|n| slots_held < n);
            if i.quiet.idle(now, sessions) && i.decider.state().ready() && slot_free {
                let bucket = step / bucket_steps.max(1);
                if i.forecast.is_none_or(|(b, _)| b != bucket) {
                    let f = i.history.forecast(policy.threshold_bytes).ok();
                    i.forecast = Some((bucket, f));
                }
                let f = i.forecast.and_then(|(_, f)| f);
                if let Some(why) = i.quiet.decide(now, i.decider.state(), f.as_ref())
                    && matches!(i.decider.drain_at_quiet_moment(now, why), Ok(Some(_)))
                {
                    out.quiet_recycles += 1;
                }
            }
            if let Some(budget) = strategy.budget() {
                if i.decider.state() == State::Draining && !i.slot && !i.waiting {
                    if slots_held < budget {
                        i.slot = true;
                        slots_held += 1;
                    } else {
                        i.waiting = true;
                    }
                }
                if i.restarted_with_slot && i.decider.state() == State::Healthy {
                    i.restarted_with_slot = false;
                    slots_held -= 1;
                }
            }
            if i.decider.state() == State::Recycle {
                out.lost += i.calls.len() as u64;
                restart(i, step + boot_steps);
                out.restarts += 1;
            }
        }
        // Free slots go to the waiting instances, the fullest first.
        if let Some(budget) = strategy.budget() {
            while slots_held < budget {
                let Some(i) = fleet_state
                    .iter_mut()
                    .filter(|i| i.waiting && i.running())
                    .max_by_key(|i| i.memory_bytes(fleet))
                else {
                    break;
                };
                grant(i, now, &policy, fleet);
                if i.slot {
                    slots_held += 1;
                }
            }
        }
        let draining = fleet_state
            .iter()
            .filter(|i| i.running() && !i.waiting && i.decider.state() == State::Draining)
            .count();
        out.most_draining = out.most_draining.max(draining);
        let out_of_rotation = fleet_state
            .iter()
            .filter(|i| {
                !i.running() || (strategy.memprobe() && !i.waiting && !i.decider.state().ready())
            })
            .count();
        out.capacity_hours_lost += out_of_rotation as f64 * hours_per_step;
    }
    out.restarts += out.oom_kills;
    out
}

fn restart(i: &mut Instance, boots_at: u64) {
    i.calls.clear();
    i.booting_until = Some(boots_at);
    i.waiting = false;
    if i.slot {
        i.slot = false;
        i.restarted_with_slot = true;
    }
}

/// A slot for a waiting instance: its drain starts now, under the real rules, if its memory
/// still asks for one; otherwise it is healthy again and needs none.
fn grant(i: &mut Instance, now: Instant, policy: &Policy, fleet: &Fleet) {
    i.waiting = false;
    let obs = Observation {
        memory_bytes: i.memory_bytes(fleet),
        sessions: Some(i.calls.len() as u32),
    };
    let mut decider = Decider::new(policy.clone(), now);
    if obs.memory_bytes > policy.threshold_bytes {
        // Its memory has been over the threshold for --sustain already: judged on a policy
        // without the wait, it drains on this sample; the drain's own rules then apply.
        let primed = Policy {
            sustain: Duration::ZERO,
            idle_sustain: Duration::ZERO,
            ..policy.clone()
        };
        decider.new_incarnation(now, primed, "instance");
        decider.observe(now, obs);
        i.slot = decider.state() == State::Draining;
    } else {
        decider.new_incarnation(now, policy.clone(), "instance");
        decider.observe(now, obs);
    }
    i.decider = decider;
}

/// The whole comparison as a markdown table, with the model it ran.
pub fn table(fleet: &Fleet) -> String {
    let mut text = String::new();
    let week = calls(fleet);
    let _ = writeln!(
        text,
        "{} instances, {} days, seed {}: {} calls (median {}, σ 0.8, 30 s to 3 h), up to {} \
         new calls a minute at 15:00 and {:.0}% of that at night; each call holds {} MiB while \
         live and leaves {:.0}–{:.0} MiB behind per {} calls; memory limit {} MiB (OOM kill \
         over it), threshold 80%, a restart takes {} s. Quiet moment: \
         --recycle-when-idle-within {}h. Sampled every {} s.",
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
        fleet.within.as_secs() / 3600,
        fleet.step.as_secs(),
    );
    text.push('\n');
    text.push_str(
        "| policy | calls lost | calls refused (no instance ready) | restarts (OOM kills) | \
         most draining at once | capacity lost (instance-hours) |\n",
    );
    text.push_str("|---|---|---|---|---|---|\n");
    for strategy in Strategy::ALL {
        let o = run(fleet, strategy);
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
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small fleet for a few days: enough to fragment to the limit twice.
    fn small() -> Fleet {
        Fleet {
            instances: 6,
            days: 4,
            peak_calls_per_minute: 9.0,
            ..Fleet::default()
        }
    }

    #[test]
    fn the_same_seed_is_the_same_week() {
        let fleet = small();
        assert_eq!(
            run(&fleet, Strategy::QuietMoment),
            run(&fleet, Strategy::QuietMoment),
            "a run is deterministic"
        );
    }

    #[test]
    fn the_orderings_the_readme_claims_hold() {
        let fleet = small();
        let [oom, today, quiet, budget, both] = Strategy::ALL.map(|s| run(&fleet, s));
        assert!(
            oom.oom_kills > 0 && oom.lost > 0,
            "the model fragments to the limit: {oom:?}"
        );
        assert!(
            today.lost < oom.lost,
            "memprobe loses fewer calls than the OOM killer: {today:?} against {oom:?}"
        );
        assert!(
            today.refused > oom.refused && today.most_draining > fleet.instances / 2,
            "instances fragmenting at one rate drain together and refuse calls: {today:?}"
        );
        assert!(
            quiet.lost <= today.lost && quiet.refused < today.refused,
            "the quiet moment loses and refuses fewer than draining at peak: {quiet:?} against {today:?}"
        );
        assert!(
            quiet.quiet_recycles > 0 && quiet.oom_kills == 0,
            "{quiet:?}"
        );
        assert!(
            budget.most_draining <= 1 && both.most_draining <= 1,
            "a budget of 1 drains one at a time: {budget:?}, {both:?}"
        );
        assert!(
            budget.refused <= today.refused && budget.lost > today.lost,
            "a budget alone keeps the fleet in rotation, and the waiting lose calls: {budget:?}"
        );
        assert!(
            both.lost < budget.lost,
            "with the quiet moment, the budget loses fewer: {both:?} against {budget:?}"
        );
    }
}
