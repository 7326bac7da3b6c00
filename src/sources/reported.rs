//! What the target says of itself: the bytes it holds live and its sessions.
//!
//! No outside reader of a process can tell its live memory from what its allocator keeps
//! resident, and no media server reports it; memprobe's own workload does, and
//! `memprobe demo` passes its reports on so that fragmentation shows: resident high, live low,
//! sessions 0. The figures are shown on the page, in `/history.json` and in `/status`; they
//! never take part in a decision.

use serde::Serialize;
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Reported {
    pub live_bytes: u64,
    pub sessions: u32,
}

/// The latest report; None until the first one.
pub type Feed = watch::Receiver<Option<Reported>>;
