//! What the monitor publishes after every step, and every HTTP answer is made from.
//!
//! [`Status`] is the whole story in data (it is `/status`); [`Snapshot`] adds the probe
//! bodies, rendered when it is published, so a probe only clones bytes: no /proc read of the
//! target, no allocation worth the name. The larger `/status` and `/metrics` texts are
//! rendered on the first request for a snapshot and kept for the next ones: a step that
//! nobody scrapes costs nothing to render.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;

use crate::forecast::{Forecast, NoForecast};
use crate::limit::MemoryLimit;
use crate::policy::State;
use crate::sources::{MemoryFrom, MemoryKind, MemorySample, ServerReport, TargetStatus};

#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub state: State,
    /// When the current state began (RFC 3339).
    pub since: String,
    pub reason: String,
    /// May new sessions be sent? (`/ready`)
    pub ready: bool,
    /// May the server keep running? (`/healthz`; false means restart it)
    pub live: bool,
    pub over_threshold_seconds: f64,
    /// Live sessions as reported by the server, when known.
    pub sessions: Option<u32>,
    pub target: Option<TargetStatus>,
    pub memory: Option<MemoryStatus>,
    pub threshold: ThresholdStatus,
    /// Room left under the threshold, for a placer choosing a KMS (0 at or over it), in bytes
    /// and as a share of the threshold; absent while memory is unknown.
    pub headroom_bytes: Option<u64>,
    pub headroom_percent: Option<f64>,
    /// What the target says of itself, when it reports (only the demo's workload does):
    /// shown beside resident memory, never decided on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported: Option<crate::sources::reported::Reported>,
    /// The last sample taken with zero sessions: under glibc it ratchets up session after
    /// session, the clearest fragmentation signal there is.
    pub idle_memory_bytes: Option<u64>,
    /// Which memory problem it is, when memory does not come back or the server can no
    /// longer tear sessions down.
    pub memory_problem: Option<crate::policy::diagnosis::Diagnosis>,
    /// When the memory the server keeps will cross the threshold, at the rate it has been
    /// rising (`crate::forecast`), or why there is no forecast.
    pub forecast: ForecastStatus,
    /// Where the memory figures come from.
    pub memory_source: MemoryFrom,
    /// The server's own view (`kms`, `janus`, `custom`), when memprobe talks to its API.
    #[serde(flatten)]
    pub server: Option<ServerReport>,
    pub counters: Counters,
    /// The last transitions, oldest first.
    pub transitions: Vec<TransitionRecord>,
    /// Who asked for the drain in force, while it is a requested one (`admin`).
    pub drain_requested_by: Option<String>,
    /// Incarnations of the target found so far: the one tracked is the last.
    pub incarnation: u64,
    /// The last run of the recycle action (`--on-recycle`).
    pub recycle_action: Option<crate::sources::operator::ActionRecord>,
    /// The fleet this instance drains with (`--fleet`, `--events`), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
    /// The KMS gate (`--kms-gate`), when on: its connections and the pipelines it refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_gate: Option<crate::sources::kms::wire::GateStatus>,
    pub settings: Arc<Settings>,
    /// Recent samples, oldest first, for the page and `/history.json` (not in `/status`).
    #[serde(skip)]
    pub history: Arc<[Point]>,
}

/// The fleet, as `/status` shows it.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct FleetStatus {
    /// `kubernetes`.
    pub kind: &'static str,
    /// The fleet's name, once known (`--fleet-name`, else the Deployment's); none with
    /// `--events` alone.
    pub fleet: Option<String>,
    pub pod: String,
    pub namespace: String,
    /// `--fleet-drain-budget` as given, and the slots it makes now.
    pub budget: Option<String>,
    pub slots: Option<u32>,
    /// The drain slot this instance holds.
    pub holding: Option<String>,
    /// Memory asks for a drain that waits for a slot: ready still, weighted least.
    pub waiting: bool,
    /// Why a drain cannot start through the fleet now (none while a slot is held).
    pub gate: Option<String>,
    /// `reachable`, `not asked yet`, `refused: …` or `unreachable: …`.
    pub api: String,
    /// The start check passed and the last request was answered.
    pub api_up: bool,
    /// The start check: `not yet`, `passed`, `refused: …` (the pod is not ready until it
    /// passes) or `failed: …` (an outage), made again every 30 s until it passes.
    pub check: String,
    pub api_requests: u64,
    pub api_failures: u64,
    /// `--events` (on with the fleet), and what became of them.
    pub events: bool,
    pub events_sent: u64,
    pub events_dropped: u64,
    /// What memprobe does while the API server cannot be reached.
    pub when_unreachable: &'static str,
}

/// One sample as the history keeps it.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Point {
    /// Wall-clock time, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The figure that decides.
    pub memory_bytes: u64,
    pub rss_bytes: u64,
    pub anon_bytes: Option<u64>,
    pub sessions: Option<u32>,
    /// Live bytes as the target reports them (only the demo's workload does).
    pub live_bytes: Option<u64>,
    /// The target's threads, when read from /proc.
    pub threads: Option<u32>,
    pub state: State,
    /// Which incarnation of the target it was taken of (u32: a point stays within 80 bytes).
    pub incarnation: u32,
}

/// The forecast as `/status`, `/metrics` and the page show it.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ForecastStatus {
    /// Seconds until the trend of the memory kept crosses the threshold (0: already over),
    /// and the soonest and latest its bounds allow; all absent without a forecast.
    pub threshold_in_seconds: Option<f64>,
    pub earliest_seconds: Option<f64>,
    pub latest_seconds: Option<f64>,
    /// The trend's floor now, and how fast it rises.
    pub floor_bytes: Option<u64>,
    pub rising_bytes_per_hour: Option<f64>,
    /// The forecast in words, or why there is none.
    pub said: String,
}

impl ForecastStatus {
    pub fn of(drawn: &Result<Forecast, NoForecast>) -> Self {
        match drawn {
            Ok(f) => ForecastStatus {
                threshold_in_seconds: Some(f.eta.as_secs_f64().round()),
                earliest_seconds: Some(f.earliest.as_secs_f64().round()),
                latest_seconds: Some(f.latest.as_secs_f64().round()),
                floor_bytes: Some(f.floor_bytes),
                rising_bytes_per_hour: Some(f.bytes_per_hour.round()),
                said: format!("at this rate, {f}"),
            },
            Err(none) => ForecastStatus {
                said: none.to_string(),
                ..ForecastStatus::default()
            },
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct MemoryStatus {
    /// The figure that decides.
    pub deciding: MemoryKind,
    pub deciding_bytes: u64,
    #[serde(flatten)]
    pub sample: MemorySample,
    pub sampled_at: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ThresholdStatus {
    pub bytes: u64,
    /// As given: `80%` or `1.50 GiB`.
    pub given: String,
    pub critical_bytes: Option<u64>,
    pub limit: MemoryLimit,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    pub samples_total: u64,
    pub sample_errors_total: u64,
    pub target_restarts_total: u64,
    /// By the state entered.
    pub transitions_total: BTreeMap<State, u64>,
    /// Drains asked for by an operator (`POST /drain`).
    pub drain_requests_total: u64,
    /// Runs of the recycle action, by result (`ok`, `failed`, `timeout`).
    pub recycle_actions_total: BTreeMap<&'static str, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TransitionRecord {
    pub at: String,
    pub from: State,
    pub to: State,
    pub reason: String,
}

/// The settings in force, as `/status` shows them: rendered once, at start, by `config`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Settings {
    pub target: String,
    pub include_children: bool,
    pub interval: String,
    pub memory: MemoryKind,
    /// The threshold is under `threshold.given`; critical as given.
    pub critical: Option<String>,
    pub memory_limit: Option<u64>,
    pub sustain: String,
    pub idle_sustain: String,
    /// `--recycle-when-idle-within`, when on.
    pub recycle_when_idle_within: Option<String>,
    pub drain_timeout: String,
    pub min_drain: String,
    /// Shown without its password or query values.
    pub kms_url: Option<String>,
    pub kms_ping_interval: Option<String>,
    pub kms_timeout: Option<String>,
    pub kms_failures: Option<u32>,
    pub kms_hang_timeout: Option<String>,
    pub kms_teardown_timeout: Option<String>,
    pub memory_source: MemoryFrom,
    /// Janus's admin API; its secret is never shown.
    pub janus_url: Option<String>,
    pub janus_poll: Option<String>,
    pub janus_drain_switch: Option<bool>,
    /// `--sessions-url` (query values hidden) or `--sessions-file`.
    pub sessions_from: Option<String>,
    pub sessions_poll: Option<String>,
    /// `--sessions-hang-timeout`, when on.
    pub sessions_hang_timeout: Option<String>,
    pub listen: String,
    pub history: String,
    pub agent_listen: Option<String>,
    pub agent_weight: String,
    /// Where the KMS gate serves (`--kms-gate`), when on.
    pub kms_gate: Option<String>,
    pub on_recycle: String,
    pub recycle_retry: String,
    pub shutdown_delay: String,
    /// Whether `/drain` is on (an admin token is set); the token is never shown.
    pub admin_api: bool,
    /// `--fleet` (`off`, `kubernetes`), and with it the budget and a slot's lease.
    pub fleet: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_drain_budget: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_lease_duration: Option<String>,
    /// `--events`.
    pub events: bool,
}

/// Renders one answer for a status.
pub type Render = Arc<dyn Fn(&Status) -> Bytes + Send + Sync>;

/// The answers an outlet renders itself (`/metrics`, the page), handed to the monitor by the
/// wiring: a snapshot renders each at most once, without knowing the outlets.
#[derive(Clone)]
pub struct Renderers {
    pub metrics: Render,
    pub page: Render,
}

/// The most samples the history keeps, whatever `--history` and `--interval` say: the page
/// stays small and a step's copy cheap.
pub const MAX_POINTS: usize = 2000;

/// One published state: the data and its answers, each rendered at most once.
pub struct Snapshot {
    pub status: Status,
    /// When the monitor last completed a step (for `/livez`).
    pub ticked_at: Instant,
    pub ready_body: Bytes,
    pub healthz_body: Bytes,
    status_body: OnceLock<Bytes>,
    metrics_body: OnceLock<Bytes>,
    page_body: OnceLock<Bytes>,
    history_body: OnceLock<Bytes>,
    render: Renderers,
}

impl Snapshot {
    pub fn new(status: Status, ticked_at: Instant, render: Renderers) -> Self {
        let probe = |key: &str, value: bool| {
            let body = serde_json::json!({
                key: value,
                "state": status.state,
                "reason": status.reason,
            });
            Bytes::from(body.to_string())
        };
        Snapshot {
            ready_body: probe("ready", status.ready),
            healthz_body: probe("live", status.live),
            status_body: OnceLock::new(),
            metrics_body: OnceLock::new(),
            page_body: OnceLock::new(),
            history_body: OnceLock::new(),
            render,
            ticked_at,
            status,
        }
    }

    /// `/`: the status page.
    pub fn page_body(&self) -> Bytes {
        let render = || (self.render.page)(&self.status);
        self.page_body.get_or_init(render).clone()
    }

    /// `/history.json`: the samples the page draws.
    pub fn history_body(&self) -> Bytes {
        let render = || Bytes::from(serde_json::to_vec(&*self.status.history).unwrap_or_default());
        self.history_body.get_or_init(render).clone()
    }

    /// `/status`: the status as pretty JSON.
    pub fn status_body(&self) -> Bytes {
        let render = || Bytes::from(serde_json::to_vec_pretty(&self.status).unwrap_or_default());
        self.status_body.get_or_init(render).clone()
    }

    /// `/metrics`: the exposition text.
    pub fn metrics_body(&self) -> Bytes {
        let render = || (self.render.metrics)(&self.status);
        self.metrics_body.get_or_init(render).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_history_stays_small() {
        // The ring and the copy each publish shares: 2,000 points of at most 80 bytes, so
        // at most 160 KB each (BENCHMARKS.md, "Status page with a full history").
        assert!(std::mem::size_of::<Point>() <= 80);
        assert!(MAX_POINTS * std::mem::size_of::<Point>() <= 160_000);
    }
}
