//! Sources: what memprobe learns about the server it guards.
//!
//! Two small families, each behind one narrow seam:
//!
//! - a **memory source** ([`MemorySource`]) finds the target and samples its memory, once per
//!   step: [`proc`] reads `/proc` of a shared PID namespace; [`kms::KmsMemory`] asks KMS
//!   itself (`getUsedMemory`), where an incarnation is a KMS `serverId`;
//! - a **session source** ([`SessionSource`]) tells how many sessions are live and whether
//!   the server still answers its own API: [`kms`] follows KMS's pipelines over JSON-RPC,
//!   [`janus`] polls Janus's admin API, [`custom`] reads the count any other server gives
//!   at a URL or in a file;
//! - the **operator** ([`operator`]) asks for drains, through the probe port;
//! - the target itself may **report** its live bytes ([`reported`]): only the demo's
//!   workload does, for the page.
//!
//! The monitor reads one of each per step and never looks inside them; a new media server
//! is one new module here and one line where sources are built ([`build`]).

pub mod custom;
pub mod janus;
pub mod kms;
pub mod operator;
pub mod proc;
pub mod reported;

use serde::Serialize;
use tokio::time::Instant;

use crate::limit::MemoryLimit;

pub use proc::sample::{MemoryKind, MemorySample, SampleError};

/// Whether a request sent at `sent` that timed out after `deadline` did so because memprobe
/// itself was not running (stopped, frozen, suspended): its timer then fires long after the
/// deadline. Such a timeout is no evidence that the server failed to answer.
pub fn paused_meanwhile(sent: Instant, deadline: std::time::Duration) -> bool {
    sent.elapsed() > deadline * 2 + std::time::Duration::from_secs(1)
}

/// Where the memory figures come from (`--memory-source`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MemoryFrom {
    /// /proc/PID of the target, found in a shared PID namespace.
    #[default]
    Proc,
    /// KMS's own `getUsedMemory`, over its JSON-RPC API.
    Kms,
}

/// What one step of a memory source saw.
#[derive(Debug)]
pub enum Outcome {
    /// A new sample of the incarnation already tracked.
    Sampled(MemorySample),
    /// A new incarnation of the target, with its limit and, when it could be taken, a first
    /// sample.
    Found {
        target: TargetStatus,
        limit: MemoryLimit,
        first: Option<Result<MemorySample, SampleError>>,
    },
    /// The tracked target is gone for sure (its process exited).
    Gone(String),
    /// The tracked target is out of reach, perhaps briefly (its API connection dropped).
    Unreachable(String),
    /// No target to track, and why.
    NotFound(String),
    /// A sample failed while the target still exists.
    Failed(SampleError),
    /// Nothing new since the last step.
    Unchanged,
}

/// The incarnation a memory source found: what `/status` shows of it, and the handle a
/// recycle signal goes through.
#[derive(Clone, Debug, Serialize)]
pub struct TargetStatus {
    /// None when memory comes from KMS itself.
    pub pid: Option<i32>,
    pub name: String,
    pub start_time: Option<String>,
    /// The flag it was found by, e.g. `--name kurento-media-server`.
    pub found_by: String,
    /// The malloc it runs on, from /proc/PID/maps (`unknown` without ptrace access).
    pub allocator: proc::allocator::Allocator,
    /// What a recycle signal goes through: this incarnation and no other (None without a pid).
    #[serde(skip)]
    pub handle: Option<std::sync::Arc<proc::handle::ProcessHandle>>,
}

/// Finds the target and samples its memory. Runs on the sampling thread; may block.
pub trait MemorySource: Send {
    fn step(&mut self, now: Instant) -> Outcome;
    /// The monitor has given the tracked target up: the next find is a new incarnation.
    fn forget(&mut self);
    /// The tracked incarnation's allocator, once it became known after it was found (it
    /// may not have mapped its C library yet then); `None` when there is no news.
    fn allocator_learnt(&mut self) -> Option<proc::allocator::Allocator> {
        None
    }
}

/// A session source's word at one step.
#[derive(Clone, Debug, Default)]
pub struct ServerView {
    /// Live sessions, when known.
    pub sessions: Option<u32>,
    /// Pings in a row without an answer since the server last answered; 0 while it answers
    /// or before it ever has (a server that is starting is not hung).
    pub failed_pings: u32,
    /// The server can no longer tear sessions down, in words (`kms teardown stuck: …`).
    pub stuck: Option<String>,
    /// What `/status` and `/metrics` show of it.
    pub report: ServerReport,
}

/// The server's own view, for the outlets.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerReport {
    Kms(kms::KmsView),
    Janus(janus::JanusView),
    /// Any other server (`--sessions-url`, `--sessions-file`).
    Custom(custom::CustomView),
}

impl ServerReport {
    /// The server's name, for labels: `kms`, `janus`, `custom`.
    pub fn server(&self) -> &'static str {
        match self {
            ServerReport::Kms(_) => "kms",
            ServerReport::Janus(_) => "janus",
            ServerReport::Custom(_) => "custom",
        }
    }
}

impl Default for ServerReport {
    fn default() -> Self {
        ServerReport::Kms(kms::KmsView::default())
    }
}

/// Sessions and liveness from the server's own API.
pub trait SessionSource: Send {
    fn read(&mut self) -> ServerView;

    /// The count from a read that begins after this call, for a decision that rests on a
    /// zero (a drain's end, a drained answer): a polled count may be a poll old, and a
    /// session may have arrived since. `None` when the source's count is live already (KMS
    /// follows events); `Some(None)` when the fresh read gave no count. Blocks the calling
    /// thread (the monitor's) for at most the source's own deadlines.
    fn fresh_count(&mut self) -> Option<Option<u32>> {
        None
    }
}

/// Where a polled source is asked for a read that begins now, and answers with its count.
pub type FreshReply = std::sync::mpsc::SyncSender<Option<u32>>;

/// The monitor's side of a polled source's fresh reads.
pub struct FreshReads {
    asks: tokio::sync::mpsc::Sender<FreshReply>,
    /// How long a fresh read may take: the read in flight, then one of its own.
    patience: std::time::Duration,
}

impl FreshReads {
    /// The pair: this side, and the receiver the polling task selects on beside its ticker.
    pub fn new(patience: std::time::Duration) -> (Self, tokio::sync::mpsc::Receiver<FreshReply>) {
        let (asks, inbox) = tokio::sync::mpsc::channel(4);
        (FreshReads { asks, patience }, inbox)
    }

    /// Asks for a read that begins now and waits for its count; unknown when the task is
    /// busy with earlier asks, has ended, or takes longer than its deadlines allow.
    pub fn count(&self) -> Option<u32> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        if self.asks.try_send(reply).is_err() {
            return None;
        }
        answer.recv_timeout(self.patience).ok().flatten()
    }
}

/// The sources a configuration asks for, started.
pub struct Sources {
    pub memory: Box<dyn MemorySource>,
    pub sessions: Option<Box<dyn SessionSource>>,
    /// Janus's own drain switch, when Janus is watched and memprobe may set it.
    pub janus_switch: Option<janus::DrainSwitch>,
}

/// What the sources are asked to watch, as `config` validated it: the process, which figure
/// decides, and at most one media server's API.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub proc: proc::ProcSettings,
    /// The figure that decides (`--memory`).
    pub memory: MemoryKind,
    /// `--memory-limit`, when given; otherwise each incarnation's cgroup, or the host.
    pub memory_limit: Option<u64>,
    pub memory_from: MemoryFrom,
    /// The Kurento integration; `None` with `--kms-url none`, or when the target is plainly
    /// not KMS and no `--kms-url` was given.
    pub kms: Option<kms::KmsSettings>,
    /// Why the Kurento integration is off though nobody said `--kms-url none`, to be said
    /// once at start.
    pub kms_off: Option<String>,
    /// Why the Kurento integration is on where that needs saying (a target picked by pid that
    /// is KMS), to be said once at start.
    pub kms_said: Option<String>,
    /// The Janus integration; `None` without `--janus-url`.
    pub janus: Option<janus::JanusSettings>,
    /// Any other server's session count; `None` without `--sessions-url` or `--sessions-file`.
    pub custom: Option<custom::CustomSettings>,
}

/// The sources the settings ask for, with memory from KMS asked for every `interval`.
/// Starts the API connections on the current runtime.
pub fn build(
    settings: &Settings,
    interval: std::time::Duration,
    gate: Option<std::sync::Arc<kms::wire::Wire>>,
) -> Sources {
    let from_proc = || -> Box<dyn MemorySource> {
        Box::new(proc::ProcMemory::new(
            &settings.proc,
            settings.memory,
            settings.memory_limit,
        ))
    };
    if let Some(custom) = &settings.custom {
        return Sources {
            memory: from_proc(),
            sessions: Some(Box::new(custom::spawn(custom.clone()))),
            janus_switch: None,
        };
    }
    if let Some(j) = &settings.janus {
        let (sessions, _view, switch) = janus::spawn(janus::Link::new(j));
        return Sources {
            memory: from_proc(),
            sessions: Some(Box::new(sessions)),
            janus_switch: j.drain_switch.then_some(switch),
        };
    }
    let kms_memory = settings.memory_from == MemoryFrom::Kms;
    let kms = settings.kms.as_ref().map(|k| {
        let mut link = kms::Link::new(k, kms_memory.then_some(interval));
        link.gate = gate;
        kms::spawn(link)
    });
    let memory: Box<dyn MemorySource> = match (settings.memory_from, &kms) {
        (MemoryFrom::Kms, Some(view)) => {
            Box::new(kms::KmsMemory::new(view.clone(), settings.memory_limit))
        }
        _ => from_proc(),
    };
    let sessions = kms.map(|view| Box::new(kms::KmsSessions::new(view)) as Box<dyn SessionSource>);
    Sources {
        memory,
        sessions,
        janus_switch: None,
    }
}
