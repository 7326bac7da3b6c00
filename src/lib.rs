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
//! - [`forecast`] — when the memory a server keeps will cross the threshold: a robust trend
//!   through its idle floors, with bounds, or none from too little history.
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

mod client;
pub mod config;
mod files;
pub mod forecast;
mod limit;
mod monitor;
mod outlets;
mod policy;
mod secret;
pub mod sources;
mod status;
pub mod tools;
mod units;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::monitor::{Fatal, Monitor};
use crate::status::{RenderMetrics, Snapshot, Status};

pub use crate::outlets::http::Shutdown;

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
    pub(crate) snapshots: watch::Receiver<Arc<Snapshot>>,
    task: JoinHandle<Result<(), RunError>>,
}

impl Sidecar {
    /// Starts the sources and the sampling loop, and serves on `listener` (and HAProxy's
    /// agent on `agent`) until `shutdown` says to stop.
    pub fn start(
        config: Config,
        listener: TcpListener,
        agent: Option<TcpListener>,
        shutdown: Shutdown,
    ) -> Self {
        Self::start_with_reports(config, listener, agent, shutdown, None)
    }

    /// [`Sidecar::start`], also showing what the target reports of itself (the demo's
    /// workload does).
    pub(crate) fn start_with_reports(
        config: Config,
        listener: TcpListener,
        agent: Option<TcpListener>,
        shutdown: Shutdown,
        reports: Option<sources::reported::Feed>,
    ) -> Self {
        let config = Arc::new(config);
        if let Some(why) = &config.kms_off {
            tracing::info!("{why}");
        }
        let sources::Sources {
            memory,
            sessions,
            janus_switch,
        } = sources::build(&config);
        let metrics = Arc::new(outlets::metrics::Metrics::new(
            config.critical.is_some(),
            config.kms.is_some(),
            config.janus.is_some() || config.custom.is_some(),
        ));
        let render: RenderMetrics = Arc::new(move |status: &Status| metrics.render(status));
        let now = tokio::time::Instant::now();
        let (mut monitor, snapshots) =
            Monitor::new(Arc::clone(&config), memory, sessions, render, now);
        if let Some(feed) = reports {
            monitor.show_reports(feed);
        }
        let (requests, inbox) = sources::operator::channel();
        let state = outlets::http::AppState::new(snapshots.clone(), config.interval).with_admin(
            config
                .admin_token
                .clone()
                .map(|token| secret::AdminToken::new(token, config.admin_token_file.clone())),
            requests.clone(),
        );
        let (stopped_tx, stopped) = tokio::sync::oneshot::channel();
        let sampler = std::thread::Builder::new()
            .name("memprobe-sampler".into())
            .spawn(move || {
                let clock = tokio::time::Instant::now;
                let _ = stopped_tx.send(monitor.run(clock, |d| inbox.wait(d)));
            });
        let delay = config.shutdown_delay;
        let weight = config.agent_weight;
        let agent_state = state.clone();
        let recycle = outlets::recycle::run(
            snapshots.clone(),
            config.on_recycle.clone(),
            config.recycle_retry,
            requests.clone(),
        );
        let janus_switch = {
            let (snapshots, requests) = (snapshots.clone(), requests.clone());
            async move {
                match janus_switch {
                    Some(switch) => outlets::janus_switch::run(snapshots, switch, requests).await,
                    None => std::future::pending().await,
                }
            }
        };
        let agent = async move {
            match agent {
                Some(listener) => outlets::agent::serve(listener, agent_state, weight).await,
                None => std::future::pending().await,
            }
        };
        let task = tokio::spawn(async move {
            if let Err(e) = sampler {
                return Err(RunError::Sampler(e));
            }
            tokio::select! {
                served = outlets::http::serve(listener, state, shutdown, delay) => {
                    served.map_err(RunError::from)
                }
                () = agent => Ok(()),
                () = recycle => Ok(()),
                () = janus_switch => Ok(()),
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
