//! Prometheus metrics, named for dashboards and alert rules to depend on.
//!
//! The families are brought up to a [`Status`] and rendered when a scrape first asks for that
//! status (see `status::Snapshot`); memprobe's own `process_*` figures are read then. Every
//! count lives in the status alone; the Prometheus counters follow it up ([`catch_up`]).

use bytes::Bytes;
use prometheus::core::Collector;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use prometheus::{Gauge, TextEncoder};

use crate::policy::State;
use crate::sources::ServerReport;
use crate::sources::kms::ErrorKind;
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
    drain_requests: IntCounter,
    recycle_actions: IntCounterVec,
    allocator: IntGaugeVec,
    forecast: prometheus::GaugeVec,
    kms: Option<KmsMetrics>,
    servers: Option<ServerMetrics>,
}

/// Families for any media server's own API, labelled by server (`kms`, `janus`, `custom`); registered
/// only when one is watched. KMS keeps its `memprobe_kms_*` names beside them.
struct ServerMetrics {
    sessions: IntGaugeVec,
    up: IntGaugeVec,
}

impl ServerMetrics {
    fn new(r: &Registry) -> Self {
        ServerMetrics {
            sessions: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "memprobe_sessions",
                        "Live sessions, as the server reports them.",
                    ),
                    &["server"],
                ),
            ),
            up: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "memprobe_session_source_up",
                        "1 while the server's API answers and its session count can be read.",
                    ),
                    &["server"],
                ),
            ),
        }
    }

    fn render(&self, status: &Status) {
        self.sessions.reset();
        let Some(report) = &status.server else {
            return;
        };
        let server = report.server();
        if let Some(n) = status.sessions {
            self.sessions.with_label_values(&[server]).set(i64::from(n));
        }
        self.up
            .with_label_values(&[server])
            .set(i64::from(status.sessions.is_some()));
    }
}

/// The Kurento families, registered only when the integration is on (an alert on
/// `memprobe_kms_up == 0` must not fire for a generic target).
struct KmsMetrics {
    up: IntGauge,
    sessions: IntGaugeVec,
    ping: prometheus::GaugeVec,
    rpc_errors: IntCounterVec,
    reconnects: IntCounter,
    undestroyed: IntCounter,
    idle_memory: IntGaugeVec,
}

/// Registers a family. Names and labels are literals, so a failure is a bug that every test
/// run would show, not something input can cause.
fn register<C: Collector + Clone + 'static>(r: &Registry, made: prometheus::Result<C>) -> C {
    let c = made.expect("a valid metric family");
    r.register(Box::new(c.clone()))
        .expect("each family registered once");
    c
}

fn optional_gauge(r: &Registry, name: &str, help: &str) -> IntGaugeVec {
    // A label-less vector, so the series can be absent while the value is unknown.
    register(r, IntGaugeVec::new(Opts::new(name, help), &[]))
}

impl KmsMetrics {
    fn new(r: &Registry) -> Self {
        let rpc_errors = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "memprobe_kms_rpc_errors_total",
                    "Failed exchanges with KMS, by kind.",
                ),
                &["kind"],
            ),
        );
        for kind in ErrorKind::ALL {
            rpc_errors.with_label_values(&[kind.as_str()]);
        }
        let ping = register(
            r,
            prometheus::GaugeVec::new(
                Opts::new(
                    "memprobe_kms_ping_seconds",
                    "Latency of the last answered ping to KMS; absent before the first.",
                ),
                &[],
            ),
        );
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
            undestroyed: counter(
                r,
                "memprobe_kms_undestroyed_pipelines_total",
                "Pipelines KMS stopped listing without an ObjectDestroyed event.",
            ),
            idle_memory: optional_gauge(
                r,
                "memprobe_idle_memory_bytes",
                "Memory at the last sample taken with zero sessions.",
            ),
        }
    }

    fn render(&self, status: &Status) {
        let Some(ServerReport::Kms(view)) = &status.server else {
            return;
        };
        self.up
            .set(i64::from(view.connected && view.failed_pings == 0));
        set_optional(&self.sessions, view.sessions.map(i64::from));
        match view.last_ping_seconds {
            Some(seconds) => self.ping.with_label_values::<&str>(&[]).set(seconds),
            None => self.ping.reset(),
        }
        for (kind, total) in &view.rpc_errors_total {
            catch_up(&self.rpc_errors.with_label_values(&[kind.as_str()]), *total);
        }
        catch_up(&self.reconnects, view.reconnects_total);
        catch_up(&self.undestroyed, view.undestroyed_pipelines_total);
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

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help))
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help))
}

impl Metrics {
    /// Registers every family. The names are literals; a failure here is a bug, not input.
    pub fn new(with_critical: bool, with_kms: bool, with_other_server: bool) -> Self {
        let r = Registry::new();
        let servers = (with_kms || with_other_server).then(|| ServerMetrics::new(&r));
        let memory = register(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "memprobe_target_memory_bytes",
                    "Memory of the watched process, by kind.",
                ),
                &["kind"],
            ),
        );
        let state = register(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "memprobe_state",
                    "1 for the current decision state, 0 for the others.",
                ),
                &["state"],
            ),
        );
        let transitions = register(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "memprobe_transitions_total",
                    "State transitions, by state entered.",
                ),
                &["to"],
            ),
        );
        for s in State::ALL {
            state.with_label_values(&[s.as_str()]).set(0);
            transitions.with_label_values(&[s.as_str()]);
        }
        let over_threshold = register(
            &r,
            Gauge::new(
                "memprobe_over_threshold_seconds",
                "How long memory has been over the threshold without a break.",
            ),
        );
        let build = register(
            &r,
            IntGaugeVec::new(
                Opts::new("memprobe_build_info", "memprobe's version; always 1."),
                &["version"],
            ),
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let process = prometheus::process_collector::ProcessCollector::for_self();
        r.register(Box::new(process))
            .expect("each family registered once");

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
            recycle_actions: {
                let v = register(
                    &r,
                    IntCounterVec::new(
                        Opts::new(
                            "memprobe_recycle_actions_total",
                            "Runs of the recycle action (--on-recycle), by result.",
                        ),
                        &["result"],
                    ),
                );
                for result in ["ok", "failed", "timeout"] {
                    v.with_label_values(&[result]);
                }
                v
            },
            drain_requests: counter(
                &r,
                "memprobe_drain_requests_total",
                "Drains asked for by an operator (POST /drain) that started one.",
            ),
            allocator: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "memprobe_target_allocator_info",
                        "The malloc the target runs on; always 1.",
                    ),
                    &["allocator"],
                ),
            ),
            forecast: register(
                &r,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "memprobe_forecast_threshold_seconds",
                        "Seconds until the memory the server keeps crosses the threshold at the \
                         rate it rises: the trend, and the earliest and latest its bounds allow. \
                         Absent without a forecast.",
                    ),
                    &["bound"],
                ),
            ),
            kms: with_kms.then(|| KmsMetrics::new(&r)),
            servers,
            rendering: std::sync::Mutex::new(()),
            registry: r,
            memory,
            over_threshold,
            state,
            transitions,
        }
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
        self.forecast.reset();
        let forecast = &status.forecast;
        for (bound, seconds) in [
            ("trend", forecast.threshold_in_seconds),
            ("earliest", forecast.earliest_seconds),
            ("latest", forecast.latest_seconds),
        ] {
            if let Some(seconds) = seconds {
                self.forecast.with_label_values(&[bound]).set(seconds);
            }
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
        catch_up(&self.drain_requests, status.counters.drain_requests_total);
        for (result, total) in &status.counters.recycle_actions_total {
            catch_up(&self.recycle_actions.with_label_values(&[*result]), *total);
        }
        for (to, total) in &status.counters.transitions_total {
            catch_up(&self.transitions.with_label_values(&[to.as_str()]), *total);
        }
        if let Some(kms) = &self.kms {
            kms.render(status);
        }
        if let Some(servers) = &self.servers {
            servers.render(status);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ForecastStatus;

    fn rendered(status: &Status) -> String {
        String::from_utf8(Metrics::new(false, false, false).render(status).to_vec()).unwrap()
    }

    #[test]
    fn the_forecast_is_exported_with_its_bounds_and_absent_without_one() {
        let none = Status {
            forecast: ForecastStatus {
                said: "no forecast yet".into(),
                ..ForecastStatus::default()
            },
            ..Status::default()
        };
        assert!(!rendered(&none).contains("memprobe_forecast_threshold_seconds{"));
        let some = Status {
            forecast: ForecastStatus {
                threshold_in_seconds: Some(10_800.0),
                earliest_seconds: Some(7_200.0),
                latest_seconds: Some(18_000.0),
                ..ForecastStatus::default()
            },
            ..Status::default()
        };
        let text = rendered(&some);
        for line in [
            "memprobe_forecast_threshold_seconds{bound=\"trend\"} 10800",
            "memprobe_forecast_threshold_seconds{bound=\"earliest\"} 7200",
            "memprobe_forecast_threshold_seconds{bound=\"latest\"} 18000",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }
}
