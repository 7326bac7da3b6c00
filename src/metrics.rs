//! Prometheus metrics, named for dashboards and alert rules to depend on.
//!
//! The monitor updates them from each [`Status`] and renders the text once per step; the
//! `/metrics` handler only serves the last rendering. memprobe's own `process_*` figures are
//! gathered at that same moment, so a scrape never reads /proc either.

use bytes::Bytes;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use prometheus::{Gauge, TextEncoder};

use crate::policy::State;
use crate::status::Status;

pub struct Metrics {
    registry: Registry,
    target_up: IntGauge,
    memory: IntGaugeVec,
    threshold: IntGauge,
    critical: Option<IntGauge>,
    limit: IntGauge,
    over_threshold: Gauge,
    state: IntGaugeVec,
    ready: IntGauge,
    live: IntGauge,
    transitions: IntCounterVec,
    restarts: IntCounter,
    samples: IntCounter,
    sample_errors: IntCounter,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric name");
    registry
        .register(Box::new(g.clone()))
        .expect("registered once");
    g
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric name");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

impl Metrics {
    /// Registers every family. The names are literals; a failure here is a bug, not input.
    pub fn new(with_critical: bool) -> Self {
        let r = Registry::new();
        let memory = IntGaugeVec::new(
            Opts::new(
                "memprobe_target_memory_bytes",
                "Memory of the watched process, by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        r.register(Box::new(memory.clone()))
            .expect("registered once");
        let state = IntGaugeVec::new(
            Opts::new(
                "memprobe_state",
                "1 for the current decision state, 0 for the others.",
            ),
            &["state"],
        )
        .expect("valid metric");
        r.register(Box::new(state.clone()))
            .expect("registered once");
        let transitions = IntCounterVec::new(
            Opts::new(
                "memprobe_transitions_total",
                "State transitions, by state entered.",
            ),
            &["to"],
        )
        .expect("valid metric");
        r.register(Box::new(transitions.clone()))
            .expect("registered once");
        for s in State::ALL {
            state.with_label_values(&[s.as_str()]).set(0);
            transitions.with_label_values(&[s.as_str()]);
        }
        let over_threshold = Gauge::new(
            "memprobe_over_threshold_seconds",
            "How long memory has been over the threshold without a break.",
        )
        .expect("valid metric");
        r.register(Box::new(over_threshold.clone()))
            .expect("registered once");
        let build = IntGaugeVec::new(
            Opts::new("memprobe_build_info", "memprobe's version; always 1."),
            &["version"],
        )
        .expect("valid metric");
        r.register(Box::new(build.clone()))
            .expect("registered once");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let process = prometheus::process_collector::ProcessCollector::for_self();
        r.register(Box::new(process)).expect("registered once");

        Metrics {
            target_up: gauge(
                &r,
                "memprobe_target_up",
                "1 while the watched process is found.",
            ),
            threshold: gauge(
                &r,
                "memprobe_threshold_bytes",
                "Memory over which the server drains.",
            ),
            critical: with_critical.then(|| {
                gauge(
                    &r,
                    "memprobe_critical_bytes",
                    "Memory over which the server is recycled at once.",
                )
            }),
            limit: gauge(
                &r,
                "memprobe_memory_limit_bytes",
                "Memory limit percentages are of.",
            ),
            ready: gauge(&r, "memprobe_ready", "1 when /ready answers 200."),
            live: gauge(&r, "memprobe_live", "1 when /healthz answers 200."),
            restarts: counter(
                &r,
                "memprobe_target_restarts_total",
                "New incarnations of the target after the first.",
            ),
            samples: counter(&r, "memprobe_samples_total", "Memory samples taken."),
            sample_errors: counter(
                &r,
                "memprobe_sample_errors_total",
                "Samples that failed while the target existed.",
            ),
            registry: r,
            memory,
            over_threshold,
            state,
            transitions,
        }
    }

    /// Counts a transition into `to`.
    pub fn transition(&self, to: State) {
        self.transitions.with_label_values(&[to.as_str()]).inc();
    }

    /// Brings every gauge and counter up to `status`, then renders the exposition text.
    pub fn render(&self, status: &Status) -> Bytes {
        self.target_up.set(i64::from(status.target.is_some()));
        self.memory.reset();
        if let (Some(_), Some(memory)) = (&status.target, &status.memory) {
            for (kind, bytes) in memory.sample.figures() {
                self.memory.with_label_values(&[kind]).set(bytes as i64);
            }
        }
        self.threshold.set(status.threshold.bytes as i64);
        if let (Some(g), Some(bytes)) = (&self.critical, status.threshold.critical_bytes) {
            g.set(bytes as i64);
        }
        self.limit.set(status.threshold.limit.bytes as i64);
        self.over_threshold.set(status.over_threshold_seconds);
        for s in State::ALL {
            self.state
                .with_label_values(&[s.as_str()])
                .set(i64::from(s == status.state));
        }
        self.ready.set(i64::from(status.ready));
        self.live.set(i64::from(status.live));
        catch_up(&self.restarts, status.counters.target_restarts_total);
        catch_up(&self.samples, status.counters.samples_total);
        catch_up(&self.sample_errors, status.counters.sample_errors_total);

        let mut text = Vec::with_capacity(4096);
        // Encoding into a Vec only fails on a malformed family, which the names above rule out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut text);
        Bytes::from(text)
    }
}

/// The status keeps the counts; the counter follows them up.
fn catch_up(counter: &IntCounter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}
