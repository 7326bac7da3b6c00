//! memprobe: a memory-aware health sidecar for long-lived media servers.
//!
//! A server like Kurento Media Server grows its resident memory through heap fragmentation
//! until the OOM killer ends it, with every live call. memprobe watches the server's memory
//! and, once it stays over a threshold, takes the server out of rotation (`/ready` → 503),
//! lets its sessions finish, then asks for a restart (`/healthz` → 503).
//!
//! # Layout
//!
//! Data flows one way: sources → decide → publish → outlets. Imports run one way too, from
//! the top of this list down, never up and never across outlets (`tests/cases/house.rs`
//! reads every `crate::` path to keep it so):
//!
//! - `cli` — the command line: the sidecar's flags, or one of the tools.
//! - [`tools`] — `memprobe demo`, `memprobe workload` and `memprobe drain`, beside the
//!   sidecar, not in it; each owns its flags.
//! - `sidecar` — the wiring: each family started from its settings, and joined.
//! - [`config`] — the sidecar's flags and environment, parsed raw, then validated into each
//!   family's settings, which `Config` only composes. Nothing below it reads a flag.
//! - `monitor` — the loop: read the sources, ask the policy, keep the record, publish.
//! - `outlets` — what memprobe tells or does, each reading the published snapshot: HTTP
//!   probes, `/status`, Prometheus `/metrics`, the admin API, HAProxy's agent-check, recycle
//!   actions, Janus's drain switch, and the KMS gate (KMS's WebSocket relayed, a new
//!   pipeline refused while the instance takes no new sessions).
//! - `fleet` — the instances that must not all drain at once: told of every transition, and
//!   (with the drain budget) asked between the policy's wish to drain and the drain; the
//!   decisions as Kubernetes Events. Its Kubernetes client (`fleet::api`) is the second
//!   executable, `memprobe-fleet` (`src/bin`), which memprobe starts beside itself and talks
//!   to over a pipe (`fleet::wire`): the sidecar's own process carries no client.
//! - `status` — the published snapshot: `/status` data and answers rendered at most once.
//! - [`sources`] — what memprobe learns: memory (`/proc`, or KMS's `getUsedMemory`),
//!   sessions and liveness (KMS's JSON-RPC, Janus's admin API, any other server's count at a
//!   URL or in a file), and the operator's drains; one module per member, one trait per
//!   family, each member's settings beside its code.
//! - `policy` — the pure state machine: healthy → elevated → draining → recycle, stalls,
//!   reconnects; every rule a unit test. Its settings resolve per incarnation.
//! - [`forecast`] — when the memory a server keeps will cross the threshold: a robust trend
//!   through its idle floors, with bounds, or none from too little history.
//! - `secret` — URLs, tokens and secrets that are never shown, and the files they are read
//!   again from.
//! - `files` — small files given by path (secrets, pidfiles): regular files only, opened
//!   without blocking, bounded, and read off the runtime's thread.
//! - `units`, `limit`, `client` — sizes, percentages and durations; the memory limit a
//!   percentage is of (flag, cgroup v1/v2, or host); one HTTP request over a fresh
//!   connection.

#![forbid(unsafe_code)]

pub mod cli;
mod client;
pub mod config;
mod files;
mod fleet;
pub mod forecast;
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
pub use crate::sidecar::{Listeners, RunError, Sidecar};

/// `memprobe-fleet`'s `main`: the Kubernetes client, in a process of its own.
pub use crate::fleet::api::main as fleet_client;
