//! memprobe: a memory-aware health sidecar for long-lived media servers.
//!
//! A server like Kurento Media Server grows its resident memory through heap fragmentation
//! until the OOM killer ends it, with every live call. memprobe watches the server's memory
//! and, once it stays over a threshold, takes the server out of rotation (`/ready` → 503),
//! lets its sessions finish, then asks for a restart (`/healthz` → 503).
//!
//! # Layout
//!
//! Data flows one way: sources → decide → publish → outlets.
//!
//! - [`config`] — flags and environment, parsed raw, then validated into a `Config`.
//! - `client` — one HTTP request over a fresh connection (`memprobe drain`, Janus's admin API,
//!   `--sessions-url`).
//! - `units` — sizes, percentages and durations, parsed, bounded and shown.
//! - `secret` — URLs, tokens and secrets that are never shown, and the files they are read
//!   again from.
//! - `files` — small files given by path (secrets, pidfiles): regular files only, opened
//!   without blocking, bounded, and read off the runtime's thread.
//! - `limit` — the memory limit a percentage is of: flag, cgroup v1/v2, or host.
//! - [`sources`] — what memprobe learns: memory (`/proc`, or KMS's `getUsedMemory`),
//!   sessions and liveness (KMS's JSON-RPC, Janus's admin API, any other server's count at a
//!   URL or in a file), and the operator's drains;
//!   one module per member, one trait per family.
//! - `policy` — the pure state machine: healthy → elevated → draining → recycle, stalls,
//!   reconnects; every rule a unit test.
//! - `monitor` — the loop that reads the sources, asks the policy, and publishes snapshots.
//! - `status` — the published snapshot: `/status` data and pre-rendered answers.
//! - `outlets` — what memprobe tells or does, each reading the published snapshot: HTTP probes,
//!   `/status`, Prometheus `/metrics`, the admin API, HAProxy's agent-check, recycle actions
//!   and Janus's drain switch.
//! - [`tools`] — `memprobe demo`, `memprobe workload` and `memprobe drain`, beside the
//!   sidecar, not in it.

#![forbid(unsafe_code)]

pub mod cli;
mod client;
pub mod config;
mod files;
mod fleet;
mod limit;
mod monitor;
mod outlets;
mod policy;
mod secret;
mod sidecar;
pub mod sources;
mod status;
pub mod tools;
mod units;

pub use crate::outlets::http::Shutdown;
pub use crate::sidecar::{RunError, Sidecar};
