//! Outlets: what memprobe tells, each reading the published [`Snapshot`] through a
//! [`Readout`] and never reaching back into the monitor, nor into another outlet.
//!
//! - [`http`] — the probe port: `/ready`, `/healthz`, `/livez`, `/status`, `/metrics`, and
//!   the admin API (`/drain`).
//! - [`agent`] — HAProxy's agent-check: one line per connection, with a memory-aware weight.
//! - [`recycle`] — the recycle action: a signal or a command, once per incarnation.
//! - [`janus_switch`] — Janus's own accept_new_sessions, following memprobe's drains.
//! - [`kms_gate`] — the switch KMS lacks: its WebSocket relayed, a new pipeline refused
//!   while the instance takes no new sessions.
//! - [`metrics`] — the Prometheus families, rendered from a snapshot's status.
//! - [`page`] — the status page (`GET /`): memory against the threshold over time, in SVG.
//!
//! [`Snapshot`]: crate::status::Snapshot

pub mod agent;
pub mod http;
pub mod janus_switch;
pub mod kms_gate;
pub mod metrics;
pub mod page;
pub mod recycle;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use crate::status::Snapshot;

/// What the outlets are asked to do, as `config` validated it.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub http: http::HttpSettings,
    /// HAProxy's agent-check; `None` without `--agent-listen`.
    pub agent: Option<agent::AgentSettings>,
    pub recycle: recycle::RecycleSettings,
    /// The KMS gate; `None` without `--kms-gate`.
    pub kms_gate: Option<kms_gate::GateSettings>,
}

/// What every outlet reads: the latest snapshot, and whether memprobe is shutting down (from
/// then on no outlet sends new sessions this way).
#[derive(Clone)]
pub struct Readout {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    stopping: Arc<AtomicBool>,
}

impl Readout {
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>) -> Self {
        Readout {
            snapshots,
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The snapshot published last.
    pub fn latest(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshots.borrow())
    }

    /// The snapshots as they come.
    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }

    /// memprobe is shutting down: every outlet says "not ready" from now on.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}
