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
    threads: IntGaugeVec,
    memory_problem: IntGaugeVec,
    kms: Option<KmsMetrics>,
    servers: Option<ServerMetrics>,
    kubernetes: Option<KubernetesMetrics>,
    kms_gate: Option<GateMetrics>,
}

/// Which optional families to register: each is there from the first scrape when what it
/// measures is on, and absent when it is off.
#[derive(Clone, Copy, Debug, Default)]
pub struct Families {
    /// `--critical`, given or defaulted.
    pub critical: bool,
    pub kms: bool,
    /// Janus's API or a custom session source.
    pub other_server: bool,
    /// `--fleet kubernetes`.
    pub fleet: bool,
    /// `--events`.
    pub events: bool,
    /// `--kms-gate`.
    pub kms_gate: bool,
}

/// The KMS gate's families, registered only with `--kms-gate`.
struct GateMetrics {
    connections: IntGauge,
    connections_total: IntCounter,
    rejected: IntCounter,
    refused: IntCounter,
    unreachable: IntCounter,
}

impl GateMetrics {
    fn new(r: &Registry) -> Self {
        GateMetrics {
            connections: gauge(
                r,
                "memprobe_kms_gate_connections",
                "Client WebSockets the KMS gate relays to KMS now.",
            ),
            connections_total: counter(
                r,
                "memprobe_kms_gate_connections_total",
                "Client WebSockets the KMS gate has relayed to KMS.",
            ),
            rejected: counter(
                r,
                "memprobe_kms_gate_connections_rejected_total",
                "Connections the KMS gate answered 503: its cap of open connections was reached.",
            ),
            refused: counter(
                r,
                "memprobe_kms_gate_pipelines_refused_total",
                "Creates of a MediaPipeline the KMS gate answered itself (error -32099) while the \
                 instance took no new sessions.",
            ),
            unreachable: counter(
                r,
                "memprobe_kms_gate_kms_unreachable_total",
                "Client handshakes the KMS gate answered 502 or 504: KMS could not be reached.",
            ),
        }
    }

    fn render(&self, status: &Status) {
        let Some(gate) = &status.kms_gate else {
            return;
        };
        self.connections.set(gate.open_connections as i64);
        catch_up(&self.connections_total, gate.connections_total);
        catch_up(&self.rejected, gate.connections_rejected_total);
        catch_up(&self.refused, gate.pipelines_refused_total);
        catch_up(&self.unreachable, gate.kms_unreachable_total);
    }
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
    teardown_stuck: IntGauge,
    released_not_destroyed: IntGauge,
    teardown_checks: IntCounterVec,
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
            teardown_stuck: gauge(
                r,
                "memprobe_kms_teardown_stuck",
                "1 once a KMS teardown did not finish within --kms-teardown-timeout: KMS can no \
                 longer end sessions.",
            ),
            released_not_destroyed: gauge(
                r,
                "memprobe_kms_released_not_destroyed",
                "Pipelines released (or no longer listed) whose ObjectDestroyed has not come.",
            ),
            teardown_checks: {
                let v = register(
                    r,
                    IntCounterVec::new(
                        Opts::new(
                            "memprobe_kms_teardown_checks_total",
                            "memprobe's own empty pipelines created to check KMS's teardown, \
                             by result (passed: destroyed in time).",
                        ),
                        &["result"],
                    ),
                );
                for result in ["created", "passed"] {
                    v.with_label_values(&[result]);
                }
                v
            },
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
        let teardown = &view.teardown;
        self.teardown_stuck.set(i64::from(teardown.stuck));
        self.released_not_destroyed
            .set(i64::from(teardown.released_not_destroyed));
        for (result, total) in [
            ("created", teardown.checks_total),
            ("passed", teardown.checks_passed_total),
        ] {
            catch_up(&self.teardown_checks.with_label_values(&[result]), total);
        }
        set_optional(
            &self.idle_memory,
            status.idle_memory_bytes.map(|b| b as i64),
        );
    }
}

/// What memprobe does with the Kubernetes API server (`--fleet kubernetes`, `--events`),
/// registered only when something of it is on: with the fleet and the events off there is no
/// `memprobe_fleet_*` or `memprobe_events_*` series at all, and with one on, each of its
/// series is there from the start at 0, so a rule never meets a series that comes and goes.
struct KubernetesMetrics {
    /// With `--fleet kubernetes`.
    fleet: Option<FleetGauges>,
    api_up: IntGauge,
    api_requests: IntCounter,
    api_failures: IntCounter,
    /// With `--events`.
    events: Option<EventCounters>,
}

struct FleetGauges {
    waiting: IntGauge,
    holding: IntGauge,
}

struct EventCounters {
    sent: IntCounter,
    dropped: IntCounter,
}

impl KubernetesMetrics {
    fn new(r: &Registry, fleet: bool, events: bool) -> Self {
        KubernetesMetrics {
            fleet: fleet.then(|| FleetGauges {
                waiting: gauge(
                    r,
                    "memprobe_fleet_waiting",
                    "1 while memory asks for a drain that waits for a drain slot (ready still, \
                     weighted least).",
                ),
                holding: gauge(
                    r,
                    "memprobe_fleet_holding",
                    "1 while this instance holds one of the fleet's drain slots.",
                ),
            }),
            api_up: gauge(
                r,
                "memprobe_fleet_api_up",
                "1 once memprobe's start check passed (it can read its pod and, with the \
                 fleet, its Leases) while the API server answers; 0 before, while refused \
                 (the pod is then not ready) or while it cannot be reached.",
            ),
            api_requests: counter(
                r,
                "memprobe_fleet_api_requests_total",
                "Requests to the Kubernetes API server (leases, the pod, Events).",
            ),
            api_failures: counter(
                r,
                "memprobe_fleet_api_failures_total",
                "Requests to the Kubernetes API server that failed: it could not be reached, or \
                 refused (a lease lost to another instance's write is no failure).",
            ),
            events: events.then(|| EventCounters {
                sent: counter(
                    r,
                    "memprobe_events_sent_total",
                    "Kubernetes Events created on the pod (--events).",
                ),
                dropped: counter(
                    r,
                    "memprobe_events_dropped_total",
                    "Kubernetes Events lost: the queue was full or the API server failed (those held \
                     back by the rate limit are not counted).",
                ),
            }),
        }
    }

    fn render(&self, status: &Status) {
        let fleet = status.fleet.as_ref();
        if let Some(gauges) = &self.fleet {
            gauges
                .waiting
                .set(i64::from(fleet.is_some_and(|f| f.waiting)));
            gauges
                .holding
                .set(i64::from(fleet.is_some_and(|f| f.holding.is_some())));
        }
        self.api_up.set(i64::from(fleet.is_some_and(|f| f.api_up)));
        let Some(fleet) = fleet else {
            return;
        };
        catch_up(&self.api_requests, fleet.api_requests);
        catch_up(&self.api_failures, fleet.api_failures);
        if let Some(events) = &self.events {
            catch_up(&events.sent, fleet.events_sent);
            catch_up(&events.dropped, fleet.events_dropped);
        }
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
    pub fn new(families: Families) -> Self {
        let r = Registry::new();
        let servers = (families.kms || families.other_server).then(|| ServerMetrics::new(&r));
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
            critical: families.critical.then(|| {
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
            threads: optional_gauge(
                &r,
                "memprobe_target_threads",
                "Threads of the watched process (from /proc); absent when unknown.",
            ),
            memory_problem: {
                let v = register(
                    &r,
                    IntGaugeVec::new(
                        Opts::new(
                            "memprobe_memory_problem",
                            "1 for the memory problem memprobe sees now (fragmentation, \
                             stuck_teardown, growth_with_sessions, unknown), 0 for the others; \
                             all 0 while there is none.",
                        ),
                        &["kind"],
                    ),
                );
                for kind in crate::policy::diagnosis::Problem::ALL {
                    v.with_label_values(&[kind.as_str()]).set(0);
                }
                v
            },
            kms: families.kms.then(|| KmsMetrics::new(&r)),
            servers,
            kubernetes: (families.fleet || families.events)
                .then(|| KubernetesMetrics::new(&r, families.fleet, families.events)),
            kms_gate: families.kms_gate.then(|| GateMetrics::new(&r)),
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
        let threads = status.memory.as_ref().and_then(|m| m.sample.threads);
        set_optional(
            &self.threads,
            threads
                .filter(|_| status.target.is_some())
                .map(|n| n as i64),
        );
        let problem = status.memory_problem.as_ref().map(|d| d.kind);
        for kind in crate::policy::diagnosis::Problem::ALL {
            self.memory_problem
                .with_label_values(&[kind.as_str()])
                .set(i64::from(problem == Some(kind)));
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
        if let Some(kubernetes) = &self.kubernetes {
            kubernetes.render(status);
        }
        if let Some(gate) = &self.kms_gate {
            gate.render(status);
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
    use crate::status::{FleetStatus, ForecastStatus};

    fn rendered(status: &Status) -> String {
        String::from_utf8(Metrics::new(Families::default()).render(status).to_vec()).unwrap()
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

    fn fleet_status(waiting: bool, holding: Option<&str>) -> Status {
        Status {
            fleet: Some(FleetStatus {
                kind: "kubernetes",
                waiting,
                holding: holding.map(str::to_owned),
                api_requests: 7,
                api_failures: 2,
                events_sent: 3,
                events_dropped: 1,
                ..FleetStatus::default()
            }),
            ..Status::default()
        }
    }

    fn rendered_with(families: Families, status: &Status) -> String {
        String::from_utf8(Metrics::new(families).render(status).to_vec()).unwrap()
    }

    #[test]
    fn with_the_fleet_and_the_events_off_no_fleet_or_event_series_is_exported() {
        for status in [Status::default(), fleet_status(true, Some("slot-0"))] {
            let text = rendered(&status);
            assert!(
                !text.contains("memprobe_fleet_") && !text.contains("memprobe_events_"),
                "no noise with the fleet off:\n{text}"
            );
        }
    }

    #[test]
    fn with_the_fleet_on_every_fleet_series_is_there_from_the_first_scrape() {
        let on = Families {
            fleet: true,
            events: true,
            ..Families::default()
        };
        let text = rendered_with(on, &Status::default());
        for line in [
            "memprobe_fleet_waiting 0",
            "memprobe_fleet_holding 0",
            "memprobe_fleet_api_requests_total 0",
            "memprobe_fleet_api_failures_total 0",
            "memprobe_events_sent_total 0",
            "memprobe_events_dropped_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line}, before the fleet says anything:\n{text}"
            );
        }
    }

    #[test]
    fn the_fleet_series_follow_the_status() {
        let metrics = Metrics::new(Families {
            fleet: true,
            events: true,
            ..Families::default()
        });
        let render = |status: &Status| String::from_utf8(metrics.render(status).to_vec()).unwrap();
        let text = render(&fleet_status(true, None));
        for line in [
            "memprobe_fleet_waiting 1",
            "memprobe_fleet_holding 0",
            "memprobe_fleet_api_requests_total 7",
            "memprobe_fleet_api_failures_total 2",
            "memprobe_events_sent_total 3",
            "memprobe_events_dropped_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        let text = render(&fleet_status(false, Some("memprobe-kms-slot-0")));
        for line in ["memprobe_fleet_waiting 0", "memprobe_fleet_holding 1"] {
            assert!(
                text.lines().any(|l| l == line),
                "a slot taken ends the wait: {line} in:\n{text}"
            );
        }
        let text = render(&Status::default());
        assert!(
            text.lines()
                .any(|l| l == "memprobe_fleet_api_requests_total 7"),
            "a counter never goes back: {text}"
        );
    }

    #[test]
    fn events_alone_export_the_requests_and_the_events_but_no_fleet_gauges() {
        let events = Families {
            events: true,
            ..Families::default()
        };
        let text = rendered_with(events, &fleet_status(false, None));
        assert!(text.lines().any(|l| l == "memprobe_events_sent_total 3"));
        assert!(
            text.lines()
                .any(|l| l == "memprobe_fleet_api_requests_total 7")
        );
        assert!(
            !text.contains("memprobe_fleet_waiting") && !text.contains("memprobe_fleet_holding"),
            "no drain slots without --fleet: {text}"
        );
        let fleet = Families {
            fleet: true,
            ..Families::default()
        };
        let text = rendered_with(fleet, &fleet_status(false, None));
        assert!(
            !text.contains("memprobe_events_"),
            "--fleet kubernetes --events false: no Event series: {text}"
        );
    }
}
