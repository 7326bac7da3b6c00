//! Prometheus metrics, named for dashboards and alert rules to depend on.
//!
//! The families are brought up to a [`Status`] and rendered when a scrape first asks for that
//! status (see `status::Snapshot`); memprobe's own `process_*` figures are read then.

use bytes::Bytes;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use prometheus::{Gauge, TextEncoder};

use crate::policy::State;
use crate::status::Status;

pub struct Metrics {
    /// One rendering at a time, so gauges set for one status are encoded with it.
    rendering: std::sync::Mutex<()>,
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
    allocator: IntGaugeVec,
    kms: Option<KmsMetrics>,
}

/// The Kurento families, registered only when the integration is on (an alert on
/// `memprobe_kms_up == 0` must not fire for a generic target).
struct KmsMetrics {
    up: IntGauge,
    sessions: IntGaugeVec,
    ping: Gauge,
    rpc_errors: IntCounterVec,
    reconnects: IntCounter,
    idle_memory: IntGaugeVec,
}

/// Every kind of KMS error, so each series exists from the start.
pub const KMS_ERROR_KINDS: [&str; 7] = [
    "connect",
    "timeout",
    "closed",
    "malformed",
    "unknown_id",
    "error_reply",
    "oversized",
];

fn optional_gauge(registry: &Registry, name: &str, help: &str) -> IntGaugeVec {
    // A label-less vector, so the series can be absent while the value is unknown.
    let g = IntGaugeVec::new(Opts::new(name, help), &[]).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("registered once");
    g
}

impl KmsMetrics {
    fn new(r: &Registry) -> Self {
        let rpc_errors = IntCounterVec::new(
            Opts::new(
                "memprobe_kms_rpc_errors_total",
                "Failed exchanges with KMS, by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        r.register(Box::new(rpc_errors.clone()))
            .expect("registered once");
        for kind in KMS_ERROR_KINDS {
            rpc_errors.with_label_values(&[kind]);
        }
        let ping = Gauge::new(
            "memprobe_kms_ping_seconds",
            "Latency of the last answered ping to KMS.",
        )
        .expect("valid metric");
        r.register(Box::new(ping.clone())).expect("registered once");
        KmsMetrics {
            up: gauge(
                r,
                "memprobe_kms_up",
                "1 while KMS is connected and answering pings.",
            ),
            sessions: optional_gauge(r, "memprobe_kms_sessions", "Live media pipelines in KMS."),
            ping,
            rpc_errors,
            reconnects: counter(
                r,
                "memprobe_kms_reconnects_total",
                "Connections to KMS made again after one ended.",
            ),
            idle_memory: optional_gauge(
                r,
                "memprobe_idle_memory_bytes",
                "Memory at the last sample taken with zero sessions.",
            ),
        }
    }

    fn render(&self, status: &Status) {
        let Some(view) = &status.kms else { return };
        self.up
            .set(i64::from(view.connected && view.failed_pings == 0));
        set_optional(&self.sessions, view.sessions.map(i64::from));
        self.ping.set(view.last_ping_seconds.unwrap_or(0.0));
        for (kind, total) in &view.rpc_errors_total {
            catch_up(&self.rpc_errors.with_label_values(&[*kind]), *total);
        }
        catch_up(&self.reconnects, view.reconnects_total);
        set_optional(
            &self.idle_memory,
            status.idle_memory_bytes.map(|b| b as i64),
        );
    }
}

fn set_optional(gauge: &IntGaugeVec, value: Option<i64>) {
    match value {
        Some(v) => gauge.with_label_values::<&str>(&[]).set(v),
        None => gauge.reset(),
    }
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
    pub fn new(with_critical: bool, with_kms: bool) -> Self {
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
            allocator: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "memprobe_target_allocator_info",
                        "The malloc the target runs on; always 1.",
                    ),
                    &["allocator"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            kms: with_kms.then(|| KmsMetrics::new(&r)),
            rendering: std::sync::Mutex::new(()),
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
        let _one_at_a_time = self.rendering.lock().unwrap_or_else(|p| p.into_inner());
        self.target_up.set(i64::from(status.target.is_some()));
        self.allocator.reset();
        if let Some(target) = &status.target {
            self.allocator
                .with_label_values(&[target.allocator.as_str()])
                .set(1);
        }
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
        if let Some(kms) = &self.kms {
            kms.render(status);
        }

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
