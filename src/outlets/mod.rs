//! Outlets: what memprobe tells, each reading the published [`Snapshot`] and never reaching
//! back into the monitor.
//!
//! - [`http`] — the probe port: `/ready`, `/healthz`, `/livez`, `/status`, `/metrics`.
//! - [`metrics`] — the Prometheus families, rendered from a snapshot's status.
//!
//! [`Snapshot`]: crate::status::Snapshot

pub mod http;
pub mod metrics;
