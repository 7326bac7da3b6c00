//! The wiring: each family started from its settings, and joined. Sources feed the monitor's
//! loop, which asks the policy (and, with a fleet, the fleet) and publishes snapshots; the
//! outlets read them. Nothing here decides anything.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::monitor::{Fatal, Monitor};
use crate::outlets::http::Shutdown;
use crate::status::{Renderers, Snapshot, Status};
use crate::{fleet, forecast, monitor, outlets, secret, sources};

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

/// The sockets the sidecar serves on, bound by its caller: the probe port, and HAProxy's
/// agent and the KMS gate when they are on.
pub struct Listeners {
    pub probes: TcpListener,
    pub agent: Option<TcpListener>,
    pub kms_gate: Option<TcpListener>,
}

/// A running sidecar: its snapshots, and the task that ends when it stops.
pub struct Sidecar {
    pub(crate) snapshots: watch::Receiver<Arc<Snapshot>>,
    task: JoinHandle<Result<(), RunError>>,
}

impl Sidecar {
    /// Starts the sources and the sampling loop, and serves on `listeners` until `shutdown`
    /// says to stop.
    pub fn start(config: Config, listeners: Listeners, shutdown: Shutdown) -> Self {
        Self::start_with_reports(
            config,
            forecast::Settings::DEFAULT,
            listeners,
            shutdown,
            None,
        )
    }

    /// [`Sidecar::start`] with the forecast cut by `forecast` rather than a server's
    /// [`forecast::Settings::DEFAULT`] (no flag sets it: only the demo, whose story lasts a
    /// minute, scales it down), also showing what the target reports of itself (the demo's
    /// workload does).
    pub(crate) fn start_with_reports(
        config: Config,
        forecast: forecast::Settings,
        listeners: Listeners,
        shutdown: Shutdown,
        reports: Option<sources::reported::Feed>,
    ) -> Self {
        let Listeners {
            probes: listener,
            agent,
            kms_gate,
        } = listeners;
        let sources_settings = &config.sources;
        if let Some(why) = sources_settings
            .kms_off
            .as_ref()
            .or(sources_settings.kms_said.as_ref())
        {
            tracing::info!("{why}");
        }
        let gate_wire = match (&kms_gate, &config.outlets.kms_gate) {
            (Some(_), Some(settings)) => Some(Arc::new(sources::kms::wire::Wire::new(
                settings.listen.to_string(),
            ))),
            _ => None,
        };
        let sources::Sources {
            memory,
            sessions,
            janus_switch,
        } = sources::build(sources_settings, config.interval, gate_wire.clone());
        let metrics = Arc::new(outlets::metrics::Metrics::new(outlets::metrics::Families {
            critical: config.policy.critical.is_some(),
            kms: sources_settings.kms.is_some(),
            other_server: sources_settings.janus.is_some() || sources_settings.custom.is_some(),
            fleet: config.fleet.mode == fleet::Mode::Kubernetes,
            events: config.fleet.events,
            kms_gate: config.outlets.kms_gate.is_some(),
        }));
        let render = Renderers {
            metrics: Arc::new(move |status: &Status| metrics.render(status)),
            page: Arc::new(|status: &Status| bytes::Bytes::from(outlets::page::render(status))),
        };
        let settings = monitor::Settings {
            interval: config.interval,
            history: config.history,
            memory: sources_settings.memory,
            memory_limit: sources_settings.memory_limit,
            memory_from: sources_settings.memory_from,
            policy: config.policy.clone(),
            forecast,
            shown: Arc::new(config.shown()),
        };
        let now = tokio::time::Instant::now();
        let (mut monitor, snapshots) = Monitor::new(
            settings,
            memory,
            sessions,
            fleet::start(&config.fleet, config.interval),
            render,
            now,
        );
        if let Some(feed) = reports {
            monitor.show_reports(feed);
        }
        let outlets::Settings {
            http,
            agent: agent_settings,
            recycle,
            kms_gate: gate_settings,
        } = config.outlets;
        let gate = match (kms_gate, gate_settings, gate_wire) {
            (Some(listener), Some(settings), Some(wire)) => {
                monitor.show_gate(Arc::clone(&wire));
                Some((listener, settings, wire))
            }
            _ => None,
        };
        let (requests, inbox) = sources::operator::channel();
        let readout = outlets::Readout::new(snapshots.clone());
        let state = outlets::http::AppState::new(readout.clone(), config.interval).with_admin(
            http.admin_token
                .map(|token| secret::AdminToken::new(token, http.admin_token_file.clone())),
            requests.clone(),
        );
        let (stopped_tx, stopped) = tokio::sync::oneshot::channel();
        let sampler = std::thread::Builder::new()
            .name("memprobe-sampler".into())
            .spawn(move || {
                let clock = tokio::time::Instant::now;
                let _ = stopped_tx.send(monitor.run(clock, |d| inbox.wait(d)));
            });
        let delay = http.shutdown_delay;
        let recycle = outlets::recycle::run(
            snapshots.clone(),
            recycle.action,
            recycle.retry,
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
        let gate = {
            let readout = readout.clone();
            async move {
                match gate {
                    Some((listener, settings, wire)) => {
                        outlets::kms_gate::serve(listener, readout, settings, wire).await
                    }
                    None => std::future::pending().await,
                }
            }
        };
        let agent = async move {
            match (agent, agent_settings) {
                (Some(listener), Some(settings)) => {
                    outlets::agent::serve(listener, readout, settings.weight).await
                }
                _ => std::future::pending().await,
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
                () = gate => Ok(()),
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
