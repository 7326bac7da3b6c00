//! Outlets: what memprobe tells, each reading the published [`Snapshot`] and never reaching
//! back into the monitor.
//!
//! - [`http`] — the probe port: `/ready`, `/healthz`, `/livez`, `/status`, `/metrics`, and
//!   the admin API (`/drain`).
//! - [`agent`] — HAProxy's agent-check: one line per connection, with a memory-aware weight.
//! - [`recycle`] — the recycle action: a signal or a command, once per incarnation.
//! - [`janus_switch`] — Janus's own accept_new_sessions, following memprobe's drains.
//! - [`metrics`] — the Prometheus families, rendered from a snapshot's status.
//! - [`page`] — the status page (`GET /`): memory against the threshold over time, in SVG.
//!
//! [`Snapshot`]: crate::status::Snapshot

pub mod agent;
pub mod http;
pub mod janus_switch;
pub mod metrics;
pub mod page;
pub mod recycle;
