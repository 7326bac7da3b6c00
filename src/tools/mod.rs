//! The sidecar's companions in the same binary: they use it, it never uses them.
//!
//! - [`demo`] — `memprobe demo`: the whole story in a minute, on a built-in workload.
//! - [`drain`] — `memprobe drain`: the admin API's client, for systemd and scripts.
//! - [`workload`] — `memprobe workload`: a target that fragments glibc's heap like a media
//!   server, for the demo and the tests.

pub mod demo;
pub mod drain;
pub mod workload;
