//! The sidecar's companions in the same binary: they use it, it never uses them.
//!
//! - [`demo`] — `memprobe demo`: the whole story in a minute, on a built-in workload.
//! - [`drain`] — `memprobe drain`: the admin API's client, for systemd and scripts.
//! - [`simulate`] — the fleet simulation behind `cargo bench --bench fleet`: the calls each
//!   policy loses on a simulated week and on a sweep of fleets, through the real decision
//!   code.
//! - [`workload`] — `memprobe workload`: a target that fragments glibc's heap like a media
//!   server, for the demo and the tests.

pub mod demo;
pub mod drain;
pub mod simulate;
pub mod workload;
