//! What the KMS gate (`--kms-gate`) sees on the wire: its connections and the pipelines it
//! refused. The gate writes these counts as it relays; the monitor reads them into each
//! snapshot, so `/status` and `/metrics` show them like every other count.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// The gate's counts, shared between the gate and the monitor.
#[derive(Debug, Default)]
pub struct Wire {
    listen: String,
    open: AtomicU64,
    connections_total: AtomicU64,
    rejected_total: AtomicU64,
    refused_total: AtomicU64,
    kms_unreachable_total: AtomicU64,
    /// Pipelines clients released through the gate, for the KMS session to follow (each
    /// must end in an `ObjectDestroyed`); at most [`MAX_RELEASES`] wait to be taken.
    releases: std::sync::Mutex<Vec<String>>,
}

/// Releases waiting for the KMS session to take them (it does every second).
pub const MAX_RELEASES: usize = 1024;

/// The gate as `/status` shows it (`kms_gate`).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct GateStatus {
    /// Where clients connect (`--kms-gate`).
    pub listen: String,
    /// Client WebSockets relayed to KMS now.
    pub open_connections: u64,
    pub connections_total: u64,
    /// Connections answered 503: the gate's cap was reached.
    pub connections_rejected_total: u64,
    /// `create`s of a `MediaPipeline` the gate answered itself, the instance taking no new
    /// sessions.
    pub pipelines_refused_total: u64,
    /// Clients answered 502 or 504: KMS could not be reached.
    pub kms_unreachable_total: u64,
}

impl Wire {
    pub fn new(listen: String) -> Self {
        Wire {
            listen,
            ..Wire::default()
        }
    }

    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn rejected(&self) {
        self.rejected_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self) {
        self.refused_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn kms_unreachable(&self) {
        self.kms_unreachable_total.fetch_add(1, Ordering::Relaxed);
    }

    /// A client released this pipeline.
    pub fn released(&self, pipeline: &str) {
        let mut releases = self.releases.lock().unwrap_or_else(|e| e.into_inner());
        if releases.len() < MAX_RELEASES {
            releases.push(pipeline.to_owned());
        }
    }

    /// The releases seen since the last call.
    pub fn take_releases(&self) -> Vec<String> {
        std::mem::take(&mut *self.releases.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn status(&self) -> GateStatus {
        GateStatus {
            listen: self.listen.clone(),
            open_connections: self.open.load(Ordering::Relaxed),
            connections_total: self.connections_total.load(Ordering::Relaxed),
            connections_rejected_total: self.rejected_total.load(Ordering::Relaxed),
            pipelines_refused_total: self.refused_total.load(Ordering::Relaxed),
            kms_unreachable_total: self.kms_unreachable_total.load(Ordering::Relaxed),
        }
    }
}
