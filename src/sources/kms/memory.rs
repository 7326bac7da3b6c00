//! `--memory-source kms`: the target's memory from KMS's own `getUsedMemory` (resident KiB,
//! KMS 6.13+), for pods without a shared PID namespace. An incarnation is a KMS `serverId`.

use tokio::sync::watch;
use tokio::time::Instant;

use super::KmsView;
use crate::limit;
use crate::sources::TargetStatus;
use crate::sources::proc::allocator::Allocator;
use crate::sources::{MemorySample, MemorySource, Outcome};

pub struct KmsMemory {
    view: watch::Receiver<KmsView>,
    memory_limit: Option<u64>,
    /// The serverId tracked.
    server: Option<String>,
    /// The readings already used: each `getUsedMemory` answer is one sample.
    readings: u64,
}

impl KmsMemory {
    pub fn new(view: watch::Receiver<KmsView>, memory_limit: Option<u64>) -> Self {
        KmsMemory {
            view,
            memory_limit,
            server: None,
            readings: 0,
        }
    }
}

impl MemorySource for KmsMemory {
    fn step(&mut self, _now: Instant) -> Outcome {
        let view = self.view.borrow().clone();
        let Some(server_id) = view.server_id.as_ref().filter(|_| view.connected) else {
            let why = match &view.last_error {
                Some(e) => format!("kms at {} not connected: {e}", view.url),
                None => format!("connecting to kms at {}", view.url),
            };
            // Whether a dropped connection loses the target is the policy's call.
            return match self.server {
                Some(_) => Outcome::Unreachable(why),
                None => Outcome::NotFound(why),
            };
        };
        let fresh = view.memory_readings > self.readings;
        self.readings = view.memory_readings;
        let reading = view
            .used_memory_bytes
            .filter(|_| fresh)
            .map(MemorySample::rss_only);
        if self.server.as_ref() != Some(server_id) {
            self.server = Some(server_id.clone());
            let target = TargetStatus {
                pid: None,
                name: format!(
                    "kms {}",
                    view.version.as_deref().unwrap_or("(version unknown)")
                ),
                start_time: None,
                found_by: format!("--memory-source kms, serverId {server_id}"),
                allocator: Allocator::Unknown,
                handle: None,
            };
            return Outcome::Found {
                target,
                limit: limit::resolve(self.memory_limit, None),
                first: reading.map(Ok),
            };
        }
        match reading {
            Some(sample) => Outcome::Sampled(sample),
            None => Outcome::Unchanged,
        }
    }

    fn forget(&mut self) {
        self.server = None;
    }
}
