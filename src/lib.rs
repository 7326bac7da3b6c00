//! memprobe: a memory-aware health sidecar for long-lived media servers.
//!
//! A server like Kurento Media Server grows its resident memory through heap fragmentation
//! until the OOM killer ends it, with every live call. memprobe watches the server's memory
//! and, once it stays over a threshold, takes the server out of rotation (`/ready` → 503),
//! lets its sessions finish, then asks for a restart (`/healthz` → 503).
//!
//! # Layout
//!
//! Data flows one way: find the target → sample it → decide → publish → serve.
//!
//! - [`config`] — flags and environment, parsed raw, then validated into a `Config`.
//! - [`units`] — sizes, percentages and durations, parsed and shown.
//! - [`target`] — finding the watched process and telling its incarnations apart.
//! - [`sample`] — reading one memory sample from /proc.
//! - [`allocator`] — which malloc the target runs on, from its mapped libraries.
//! - [`limit`] — the memory limit a percentage is of: flag, cgroup v1/v2, or host.
//! - [`kms`] — Kurento's JSON-RPC API: live sessions, a hung server, its own memory figure.
//! - [`policy`] — the pure state machine: healthy → elevated → draining → recycle.
//! - [`monitor`] — the loop that runs the above and publishes snapshots.
//! - [`status`] — the published snapshot: `/status` data and pre-rendered answers.
//! - [`metrics`] — Prometheus families, updated from each snapshot.
//! - [`http`] — the router and server: probes, status, metrics.
//! - [`workload`] — `memprobe workload`: a fragmenting target for the demo and the tests.
//! - [`demo`] — `memprobe demo`: the whole story in a minute.

#![forbid(unsafe_code)]

pub mod allocator;
pub mod config;
pub mod demo;
pub mod http;
pub mod kms;
pub mod limit;
pub mod metrics;
pub mod monitor;
pub mod policy;
pub mod sample;
pub mod status;
pub mod target;
pub mod units;
pub mod workload;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::monitor::{Fatal, Monitor};
use crate::status::Snapshot;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Fatal(#[from] Fatal),
    #[error("serving HTTP: {0}")]
    Serve(#[from] std::io::Error),
    #[error("cannot start the sampling thread: {0}")]
    Sampler(std::io::Error),
    #[error("the sidecar task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running sidecar: its snapshots, and the task that ends when it stops.
pub struct Sidecar {
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    task: JoinHandle<Result<(), RunError>>,
}

impl Sidecar {
    /// Starts the sampling loop and serves on `listener` until `shutdown` resolves.
    pub fn start(
        config: Config,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        let config = Arc::new(config);
        let kms = config.kms.as_ref().map(|k| {
            kms::spawn(kms::KmsSettings {
                url: k.url.clone(),
                ping_interval: k.ping_interval,
                timeout: k.timeout,
                memory_interval: (config.memory_source == config::MemorySource::Kms)
                    .then_some(config.interval),
            })
        });
        let now = tokio::time::Instant::now();
        let (monitor, snapshots) = Monitor::new(Arc::clone(&config), kms, now);
        let state = http::AppState::new(snapshots.clone(), config.interval);
        let (stopped_tx, stopped) = tokio::sync::oneshot::channel();
        let sampler = std::thread::Builder::new()
            .name("memprobe-sampler".into())
            .spawn(move || {
                let _ = stopped_tx.send(monitor.run());
            });
        let task = tokio::spawn(async move {
            if let Err(e) = sampler {
                return Err(RunError::Sampler(e));
            }
            tokio::select! {
                served = http::serve(listener, state, shutdown) => served.map_err(RunError::from),
                stopped = stopped => match stopped {
                    Ok(Err(fatal)) => Err(fatal.into()),
                    // The loop ends only once nobody reads its snapshots.
                    Ok(Ok(())) | Err(_) => Ok(()),
                },
            }
        });
        Sidecar { snapshots, task }
    }

    /// Waits until the sidecar has stopped.
    pub async fn wait(self) -> Result<(), RunError> {
        self.task.await?
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down: /ready answers 503 from now on");
}
