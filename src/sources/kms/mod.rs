//! Kurento awareness: KMS's own view of its sessions, its health, and its memory.
//!
//! memprobe keeps one WebSocket and one JSON-RPC session to KMS. It learns the pipeline list
//! once per connection with `getPipelines`, then follows `ObjectCreated`/`ObjectDestroyed`
//! events. It does not poll `getPipelines`: KMS implements that call by referencing every
//! pipeline into a hidden session, and a checker calling it more often than KMS's 240 s
//! garbage-collection period keeps abandoned pipelines alive forever — a leak caused by the
//! health checker. So the list is fetched again only after a reconnect, every 10 minutes, and
//! when a count above zero has heard no event for a period ([`pipelines`] says why and how).
//!
//! The connection task publishes a [`KmsView`] through a `watch` channel; [`KmsSessions`]
//! (sessions and pings) and [`KmsMemory`] (`--memory-source kms`) read the latest one at each
//! step of the monitor. The session itself ([`session`]) is written over any
//! `Sink`/`Stream` of WebSocket messages so tests can drive it through channels.

mod memory;
mod pipelines;
pub mod protocol;
pub mod session;
pub mod wire;

pub use memory::KmsMemory;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{info, warn};

/// Text from KMS (errors, ids, versions) is cut to this before it is kept or shown.
pub const MAX_TEXT_BYTES: usize = 256;
/// Frames over this are refused: KMS's answers to memprobe are a few hundred bytes.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// How often the pipeline list is fetched again on a healthy connection: well over KMS's
/// 240 s garbage-collection period.
pub const RESYNC_EVERY: Duration = Duration::from_secs(600);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The Kurento integration's settings, as `config` validated them (`--kms-*`).
#[derive(Clone, Debug, PartialEq)]
pub struct KmsSettings {
    pub url: crate::secret::SecretUrl,
    /// Where the URL came from (`--kms-url-file`), read again when KMS cannot be reached: a
    /// rotated Secret is picked up without a restart.
    pub url_file: Option<std::path::PathBuf>,
    pub ping_interval: Duration,
    pub timeout: Duration,
    /// Failed pings in a row that stall KMS, and how long a stall may last.
    pub failures: u32,
    pub hang_timeout: Duration,
    /// KMS's `garbageCollectorPeriod` (`--kms-gc-period`).
    pub gc_period: Duration,
    /// How long a teardown may take before KMS's is stuck (`--kms-teardown-timeout`), or
    /// None: no check, no verdict.
    pub teardown_timeout: Option<Duration>,
}

/// What the connection task runs by: the settings, with the URL's file to read again.
#[derive(Debug)]
pub struct Link {
    pub url: crate::secret::SecretUrl,
    /// The file the URL was read from (`--kms-url-file`): read again after each connection
    /// that failed or ended, so that a rotated URL is taken up without restarting memprobe.
    pub url_file: Option<crate::secret::SecretFile>,
    pub ping_interval: Duration,
    pub timeout: Duration,
    /// KMS's `garbageCollectorPeriod`: the least time between two `getPipelines`.
    pub gc_period: Duration,
    /// Poll `getUsedMemory` this often (`--memory-source kms`), or never.
    pub memory_interval: Option<Duration>,
    pub teardown_timeout: Option<Duration>,
    /// What the gate saw released, when it runs: each release must end in its destruction.
    pub gate: Option<std::sync::Arc<wire::Wire>>,
}

/// What memprobe knows of KMS, as of the last frame.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KmsView {
    pub url: String,
    pub connected: bool,
    /// Generated once per KMS process start: a new one means KMS restarted.
    pub server_id: Option<String>,
    pub version: Option<String>,
    /// Live media pipelines, once the list has been fetched on this connection.
    pub sessions: Option<u32>,
    pub last_ping_seconds: Option<f64>,
    pub last_ping_at: Option<String>,
    pub last_error: Option<String>,
    /// Whether this serverId has answered at least once.
    pub answered: bool,
    /// Consecutive failed pings since this serverId last answered.
    pub failed_pings: u32,
    /// Resident memory as KMS reports it (`getUsedMemory`, KMS 6.13+).
    pub used_memory_bytes: Option<u64>,
    /// Bumped at every `getUsedMemory` answer, so a reading is used once.
    #[serde(skip)]
    pub memory_readings: u64,
    pub reconnects_total: u64,
    pub rpc_errors_total: BTreeMap<ErrorKind, u64>,
    pub get_pipelines_calls_total: u64,
    /// Pipelines `getPipelines` stopped listing without an `ObjectDestroyed`.
    pub undestroyed_pipelines_total: u64,
    /// Boxed: most views never need it, and the view is copied at every step.
    pub teardown: Box<Teardown>,
}

/// Whether KMS still tears sessions down (`/status` `kms.teardown`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Teardown {
    /// `--kms-teardown-timeout` in seconds; None when off.
    pub timeout_seconds: Option<f64>,
    /// A teardown did not finish within the timeout: KMS can no longer end sessions.
    pub stuck: bool,
    /// What showed it: `check` (memprobe's own pipeline), `released` (seen at the gate) or
    /// `unlisted` (gone from `getPipelines`).
    pub evidence: Option<&'static str>,
    /// When it was found.
    pub stuck_since: Option<String>,
    /// Pipelines released (or no longer listed) whose `ObjectDestroyed` has not come.
    pub released_not_destroyed: u32,
    /// How long the oldest of them has waited.
    pub oldest_seconds: f64,
    /// memprobe's own check pipelines created, and those destroyed in time.
    pub checks_total: u64,
    pub checks_passed_total: u64,
    /// The serverId the verdict is about: it holds across reconnects to the same KMS.
    #[serde(skip)]
    pub server_id: Option<String>,
    #[serde(skip)]
    pub found: Option<(tokio::time::Instant, pipelines::Evidence)>,
}

impl Teardown {
    /// The verdict in words, while stuck: `kms teardown stuck: 16 pipelines released but not
    /// destroyed for 1m (memprobe's check among them)`.
    pub fn says(&self) -> Option<String> {
        if !self.stuck {
            return None;
        }
        let n = self.released_not_destroyed;
        let how = match self.evidence {
            Some("check") => " (memprobe's check pipeline among them)",
            Some("released") => " (released through the gate)",
            Some("unlisted") => " (no longer listed by getPipelines)",
            _ => "",
        };
        Some(format!(
            "kms teardown stuck: {n} pipeline{} released but not destroyed for {}{how}",
            if n == 1 { "" } else { "s" },
            crate::units::Human(Duration::from_secs(self.oldest_seconds as u64))
        ))
    }
}

/// What went wrong in an exchange with KMS: the label of `memprobe_kms_rpc_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No connection could be made.
    Connect,
    /// A request got no answer within `--kms-timeout`.
    Timeout,
    /// The connection failed or was closed.
    Closed,
    /// A frame that is not the JSON-RPC KMS speaks.
    Malformed,
    /// A reply to a request never sent.
    UnknownId,
    /// KMS answered with an error.
    ErrorReply,
    /// A frame over 1 MiB, or more pipelines than are followed.
    Oversized,
}

impl ErrorKind {
    /// Every kind, so each series exists from the start.
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Closed,
        ErrorKind::Malformed,
        ErrorKind::UnknownId,
        ErrorKind::ErrorReply,
        ErrorKind::Oversized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Closed => "closed",
            ErrorKind::Malformed => "malformed",
            ErrorKind::UnknownId => "unknown_id",
            ErrorKind::ErrorReply => "error_reply",
            ErrorKind::Oversized => "oversized",
        }
    }
}

/// Publishes the view and logs each kind of trouble once.
pub struct Reporter {
    view: watch::Sender<KmsView>,
    logged: std::collections::HashSet<ErrorKind>,
}

impl Reporter {
    fn new(url: &crate::secret::SecretUrl) -> (Self, watch::Receiver<KmsView>) {
        let view = KmsView {
            url: url.to_string(),
            ..KmsView::default()
        };
        let (tx, rx) = watch::channel(view);
        (
            Reporter {
                view: tx,
                logged: Default::default(),
            },
            rx,
        )
    }

    pub fn update(&self, change: impl FnOnce(&mut KmsView)) {
        self.view.send_modify(change);
    }

    pub fn view(&self) -> KmsView {
        self.view.borrow().clone()
    }

    /// Counts an error of `kind`; logs the first of each kind.
    pub fn error(&mut self, kind: ErrorKind, message: String) {
        let message = crate::units::clip(&message, MAX_TEXT_BYTES);
        if self.logged.insert(kind) {
            let kind = kind.as_str();
            warn!(
                kind,
                "kms: {message} (further '{kind}' errors are counted, not logged)"
            );
        }
        self.update(|v| {
            *v.rpc_errors_total.entry(kind).or_default() += 1;
            v.last_error = Some(message);
        });
    }
}

/// KMS as a session source: its pipelines, and its pings.
pub struct KmsSessions {
    view: watch::Receiver<KmsView>,
}

impl KmsSessions {
    pub fn new(view: watch::Receiver<KmsView>) -> Self {
        KmsSessions { view }
    }
}

impl crate::sources::SessionSource for KmsSessions {
    fn read(&mut self) -> crate::sources::ServerView {
        let view = self.view.borrow().clone();
        crate::sources::ServerView {
            sessions: view.sessions.filter(|_| view.connected),
            // Of the KMS connected now: a restarted KMS is judged anew once it answers.
            stuck: view.teardown.says().filter(|_| view.connected),
            // Never before this serverId's first answer: KMS may be starting.
            failed_pings: if view.answered { view.failed_pings } else { 0 },
            report: crate::sources::ServerReport::Kms(view),
        }
    }
}

impl Link {
    /// The task's settings; `memory_interval` polls `getUsedMemory` (`--memory-source kms`).
    pub fn new(settings: &KmsSettings, memory_interval: Option<Duration>) -> Self {
        Link {
            url: settings.url.clone(),
            url_file: settings
                .url_file
                .clone()
                .map(|path| crate::secret::SecretFile::new("--kms-url-file", path)),
            ping_interval: settings.ping_interval,
            timeout: settings.timeout,
            gc_period: settings.gc_period,
            memory_interval,
            teardown_timeout: settings.teardown_timeout,
            gate: None,
        }
    }
}

/// Starts the connection task; the view starts disconnected.
pub fn spawn(settings: Link) -> watch::Receiver<KmsView> {
    let (reporter, view) = Reporter::new(&settings.url);
    reporter.update(|v| {
        v.teardown.timeout_seconds = settings.teardown_timeout.map(|t| t.as_secs_f64());
    });
    tokio::spawn(run(settings, reporter));
    view
}

/// Connects, runs a session, reconnects with capped exponential backoff; forever.
async fn run(mut settings: Link, mut reporter: Reporter) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    let mut backoff = FIRST_BACKOFF;
    let mut ever_connected = false;
    let mut absent_logged = false;
    loop {
        let started = tokio::time::Instant::now();
        let attempt = tokio::time::timeout(
            settings.timeout,
            tokio_tungstenite::connect_async_with_config(settings.url.expose(), Some(config), true),
        )
        .await;
        match attempt {
            Ok(Ok((ws, _response))) => {
                if ever_connected {
                    reporter.update(|v| v.reconnects_total += 1);
                }
                ever_connected = true;
                let ended = session::Session::new(ws, &settings, &mut reporter)
                    .run()
                    .await;
                let was_up = reporter.view().connected;
                let ended = crate::units::clip(&ended, MAX_TEXT_BYTES);
                reporter.update(|v| {
                    v.connected = false;
                    v.sessions = None;
                    v.last_error = Some(ended.clone());
                });
                if was_up {
                    info!(
                        "kms: connection to {} ended: {ended}; reconnecting",
                        settings.url
                    );
                    absent_logged = false;
                    backoff = FIRST_BACKOFF;
                } else if !absent_logged {
                    let never = if reporter.view().server_id.is_none() {
                        ": it has never answered since memprobe started (check --kms-url)"
                    } else {
                        ""
                    };
                    warn!(
                        "kms: {} accepts connections but {ended}{never}; retrying quietly",
                        settings.url
                    );
                    absent_logged = true;
                }
            }
            failed => {
                let timed_out =
                    failed.is_err() && !crate::sources::paused_meanwhile(started, settings.timeout);
                let why = match failed {
                    Ok(Err(e)) => crate::units::clip(&e.to_string(), MAX_TEXT_BYTES),
                    _ => format!("no answer within {}", crate::units::Human(settings.timeout)),
                };
                // A KMS that is not there yet (or at all) costs one line, not one per retry.
                // One that never answered since start is most often a wrong --kms-url: said
                // apart from one that stopped answering, and as a warning.
                if !absent_logged {
                    if reporter.view().server_id.is_none() {
                        warn!(
                            "kms: cannot reach {}: {why}; it has never answered since memprobe \
                             started (check --kms-url and that KMS listens there; retrying quietly)",
                            settings.url
                        );
                    } else {
                        info!(
                            "kms: cannot reach {}: {why}; it stopped answering (retrying quietly)",
                            settings.url
                        );
                    }
                    absent_logged = true;
                }
                reporter.update(|v| {
                    *v.rpc_errors_total.entry(ErrorKind::Connect).or_default() += 1;
                    v.last_error = Some(why);
                    // A KMS that accepts no more connections after answering is not answering.
                    if timed_out && v.answered {
                        v.failed_pings += 1;
                    }
                });
            }
        }
        if reread_url(&mut settings, &reporter).await {
            absent_logged = false;
            backoff = FIRST_BACKOFF;
            continue;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Reads `--kms-url-file` again; true when it holds a new URL, now in `settings`.
async fn reread_url(settings: &mut Link, reporter: &Reporter) -> bool {
    let Link {
        url,
        url_file: Some(file),
        ..
    } = settings
    else {
        return false;
    };
    let Some(new) = file
        .changed(Some(&*url), |text| {
            crate::secret::SecretUrl::parse_ws(&text)
        })
        .await
    else {
        return false;
    };
    info!(
        "kms: {} holds a new URL, {new}; connecting to it",
        file.path().display()
    );
    reporter.update(|v| v.url = new.to_string());
    *url = new;
    true
}
