//! Memory from `/proc`: the target found by pid, pidfile or name in a shared PID namespace,
//! and sampled through its kept `/proc/PID` descriptor.
//!
//! - [`target`] — finding the process and telling its incarnations apart.
//! - [`sample`] — one memory sample from `/proc/PID/status` (and `smaps_rollup` for PSS).
//! - [`allocator`] — which malloc the target runs on, from its mapped libraries, read again
//!   while unknown.
//! - [`handle`] — the pidfd a recycle signal goes through, so it reaches that incarnation only.

pub mod allocator;
pub mod handle;
pub mod sample;
pub mod target;

use tokio::time::Instant;

use super::TargetStatus;
use super::{MemorySource, Outcome};
use crate::limit;
use sample::{MemoryKind, SampleError, Sampler};
use target::Finder;

/// Which process to watch, and how (`--pid`, `--pidfile`, `--name`, `--user`,
/// `--include-children`).
#[derive(Clone, Debug, PartialEq)]
pub struct ProcSettings {
    pub target: target::TargetSpec,
    /// With `--name`, only processes of this uid.
    pub user: Option<u32>,
    pub include_children: bool,
}

/// The finder and the incarnation it found.
pub struct ProcMemory {
    finder: Finder,
    target: Option<Sampler>,
    /// When to read the incarnation's allocator again, and what was learnt since the last
    /// step that was asked.
    allocator: Option<allocator::Rereads>,
    learnt: Option<allocator::Allocator>,
    memory: MemoryKind,
    include_children: bool,
    memory_limit: Option<u64>,
}

impl ProcMemory {
    pub fn new(settings: &ProcSettings, memory: MemoryKind, memory_limit: Option<u64>) -> Self {
        ProcMemory {
            finder: Finder::new(settings.target.clone(), settings.user),
            target: None,
            allocator: None,
            learnt: None,
            memory,
            include_children: settings.include_children,
            memory_limit,
        }
    }
}

impl MemorySource for ProcMemory {
    fn step(&mut self, _now: Instant) -> Outcome {
        if let Some(sampler) = &mut self.target {
            return match sampler.sample(self.memory, self.include_children) {
                Ok(s) => {
                    if let Some(rereads) = &mut self.allocator
                        && let Some(found) = rereads.sampled(|| allocator::of(sampler.process()))
                    {
                        self.learnt = Some(found);
                    }
                    Outcome::Sampled(s)
                }
                Err(SampleError::Gone(pid)) => {
                    self.target = None;
                    Outcome::Gone(format!("process {pid} exited"))
                }
                Err(e) => Outcome::Failed(e),
            };
        }
        match self.finder.find() {
            Err(not_found) => Outcome::NotFound(not_found.to_string()),
            Ok(found) => {
                let target = TargetStatus {
                    pid: Some(found.pid),
                    name: found.name.clone(),
                    start_time: Some(crate::units::timestamp(found.start_time)),
                    found_by: self.finder.describe(),
                    allocator: allocator::of(&found.process),
                    handle: Some(std::sync::Arc::new(found.handle)),
                };
                self.allocator = Some(allocator::Rereads::after(target.allocator));
                self.learnt = None;
                let limit = limit::resolve(self.memory_limit, Some(found.pid));
                let first = match Sampler::new(found.process) {
                    Ok(mut sampler) => {
                        let first = sampler.sample(self.memory, self.include_children);
                        self.target = Some(sampler);
                        first
                    }
                    Err(e) => Err(e),
                };
                Outcome::Found {
                    target,
                    limit,
                    first: Some(first),
                }
            }
        }
    }

    fn forget(&mut self) {
        self.target = None;
        self.allocator = None;
        self.learnt = None;
    }

    fn allocator_learnt(&mut self) -> Option<allocator::Allocator> {
        self.learnt.take()
    }
}
