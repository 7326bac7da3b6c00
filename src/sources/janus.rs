//! Janus awareness (`--janus-url`): its live sessions, whether it answers, and its own
//! drain switch — over the admin API, `POST http://HOST:7088/admin`.
//!
//! Every `--janus-poll` a task sends `ping` (a `pong` says the admin loop is alive) and
//! `list_sessions` (the session count: unlike KMS's getPipelines it has no side effect, so
//! polling it is fine), and reads `info` (version, `accepting-new-sessions`) once per contact.
//! Errors come as HTTP 200 with `"janus":"error"`: the body decides, not the status; a 403 is a
//! wrong secret, said once and never taken for zero sessions.
//!
//! A poll that times out after Janus has answered counts as a failed ping, like KMS's; a
//! refused connection does not (Janus is not there: that is `lost`, not hung).
//!
//! The drain switch (`accept_new_sessions`) is set through [`DrainSwitch`], by the outlet that
//! follows memprobe's decision.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::client::ClientError;

/// Text from Janus is cut to this before it is kept or shown.
const MAX_TEXT_BYTES: usize = 256;

/// The Janus integration's settings, as `config` validated them (`--janus-*`).
#[derive(Clone, Debug, PartialEq)]
pub struct JanusSettings {
    pub url: url::Url,
    pub secret: Option<crate::secret::Secret>,
    /// Where the secret came from, read again when Janus refuses it: a rotated Secret is
    /// picked up without a restart.
    pub secret_file: Option<std::path::PathBuf>,
    pub poll: Duration,
    /// Each admin call's deadline: the poll interval, at most 3 s.
    pub timeout: Duration,
    /// Set Janus's accept_new_sessions to follow memprobe's drains.
    pub drain_switch: bool,
    /// Failed pings in a row that stall it, and how long a stall may last (the
    /// `--kms-failures` and `--kms-hang-timeout` rules, for Janus).
    pub failures: u32,
    pub hang_timeout: Duration,
}

/// What the polling task runs by: the settings, with the secret's file to read again.
#[derive(Debug)]
pub struct Link {
    pub url: url::Url,
    /// The admin secret, if Janus has one; never shown.
    pub secret: Option<String>,
    /// The file it was read from (`--janus-secret-file`): read again each time Janus refuses
    /// the secret, so that a rotated Secret is taken up without restarting memprobe.
    pub secret_file: Option<crate::secret::SecretFile>,
    pub poll: Duration,
    pub timeout: Duration,
    /// Its host's lookups, one at a time.
    pub resolver: crate::client::Resolver,
}

/// What memprobe knows of Janus, as of the last poll.
#[derive(Clone, Debug, Default, Serialize)]
pub struct JanusView {
    pub url: String,
    /// The last poll was answered.
    pub connected: bool,
    pub version: Option<String>,
    /// Live sessions (`list_sessions`), when the last poll could read them.
    pub sessions: Option<u32>,
    /// Janus's own drain switch (`accepting-new-sessions`).
    pub accepting_new_sessions: Option<bool>,
    pub last_ping_seconds: Option<f64>,
    pub last_error: Option<String>,
    /// Whether Janus has answered since it was last not there.
    pub answered: bool,
    /// Polls in a row that timed out since Janus last answered.
    pub failed_pings: u32,
    pub errors_total: BTreeMap<&'static str, u64>,
}

/// Sets Janus's `accept_new_sessions`.
#[derive(Clone)]
pub struct DrainSwitch(mpsc::UnboundedSender<bool>);

impl DrainSwitch {
    pub fn set_accepting(&self, accept: bool) {
        let _ = self.0.send(accept);
    }
}

/// Janus as a session source.
pub struct JanusSessions {
    view: watch::Receiver<JanusView>,
    fresh: crate::sources::FreshReads,
}

impl crate::sources::SessionSource for JanusSessions {
    fn read(&mut self) -> crate::sources::ServerView {
        let view = self.view.borrow().clone();
        crate::sources::ServerView {
            stuck: None,
            sessions: view.sessions.filter(|_| view.connected),
            failed_pings: if view.answered { view.failed_pings } else { 0 },
            report: crate::sources::ServerReport::Janus(view),
        }
    }

    fn fresh_count(&mut self) -> Option<Option<u32>> {
        Some(self.fresh.count())
    }
}

impl Link {
    pub fn new(settings: &JanusSettings) -> Self {
        Link {
            url: settings.url.clone(),
            secret: settings.secret.as_ref().map(|s| s.expose().to_string()),
            secret_file: settings
                .secret_file
                .clone()
                .map(|path| crate::secret::SecretFile::new("--janus-secret-file", path)),
            poll: settings.poll,
            timeout: settings.timeout,
            resolver: crate::client::Resolver::default(),
        }
    }
}

/// Starts the polling task.
pub fn spawn(settings: Link) -> (JanusSessions, watch::Receiver<JanusView>, DrainSwitch) {
    let view = JanusView {
        url: settings.url.to_string(),
        ..JanusView::default()
    };
    let (tx, rx) = watch::channel(view);
    let (switch_tx, switch_rx) = mpsc::unbounded_channel();
    // A fresh poll may wait for the one in flight, then takes its own ping and
    // list_sessions; the monitor waits no longer than that for it (its thread must step
    // again well within /livez's three intervals), and a count it did not get is unknown.
    let (fresh, asks) =
        crate::sources::FreshReads::new(settings.timeout * 2 + Duration::from_secs(1));
    tokio::spawn(run(settings, tx, switch_rx, asks));
    (
        JanusSessions {
            view: rx.clone(),
            fresh,
        },
        rx,
        DrainSwitch(switch_tx),
    )
}

/// Why an admin call gave nothing usable.
#[derive(Debug)]
enum CallError {
    /// Janus is not there.
    Absent,
    Timeout,
    /// 403: the secret is wrong or missing.
    Unauthorized(String),
    Other(&'static str, String),
}

impl CallError {
    fn kind(&self) -> &'static str {
        match self {
            CallError::Absent => "connect",
            CallError::Timeout => "timeout",
            CallError::Unauthorized(_) => "unauthorized",
            CallError::Other(kind, _) => kind,
        }
    }

    fn message(&self) -> String {
        match self {
            CallError::Absent => "connection refused".into(),
            CallError::Timeout => "no answer in time".into(),
            CallError::Unauthorized(request) => format!(
                "Janus refused the admin secret ({request}: error 403): check --janus-secret or \
                 the file --janus-secret-file names"
            ),
            CallError::Other(_, message) => message.clone(),
        }
    }
}

async fn call(settings: &Link, request: &str, extra: Value) -> Result<Value, CallError> {
    let mut body = json!({"janus": request, "transaction": format!("memprobe-{request}")});
    if let (Some(map), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        map.extend(extra.clone());
    }
    if let (Some(secret), Some(map)) = (&settings.secret, body.as_object_mut())
        && request != "info"
    {
        map.insert("admin_secret".into(), Value::from(secret.clone()));
    }
    let answer = crate::client::post(
        &settings.resolver,
        &settings.url,
        &[],
        body.to_string(),
        settings.timeout,
    )
    .await;
    let (_, bytes) = match answer {
        Ok(answer) => answer,
        Err(ClientError::Refused) => return Err(CallError::Absent),
        Err(ClientError::Timeout(_)) => return Err(CallError::Timeout),
        Err(ClientError::Failed(e)) => return Err(CallError::Other("closed", e)),
        Err(e @ ClientError::TooLarge(_)) => {
            return Err(CallError::Other("oversized", format!("{request}: {e}")));
        }
    };
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|_| CallError::Other("malformed", format!("{request}: the answer is not JSON")))?;
    if value["janus"] == "error" {
        // The code, never Janus's own text: what an answer says is not shown on the open
        // port (SECURITY.md).
        let code = value["error"]["code"].as_i64().unwrap_or(0);
        return Err(if code == 403 {
            CallError::Unauthorized(request.to_string())
        } else {
            CallError::Other("error_reply", format!("{request}: error {code}"))
        });
    }
    Ok(value)
}

/// Kinds of error already logged: each is said once, then counted.
#[derive(Default)]
struct Said(std::collections::HashSet<&'static str>);

impl Said {
    fn fail(&mut self, view: &watch::Sender<JanusView>, e: &CallError) {
        let kind = e.kind();
        let message = crate::units::clip(&e.message(), MAX_TEXT_BYTES);
        if self.0.insert(kind) {
            warn!(
                kind,
                "janus: {message} (further '{kind}' errors are counted, not logged)"
            );
        }
        view.send_modify(|v| {
            *v.errors_total.entry(kind).or_default() += 1;
            v.last_error = Some(message);
        });
    }
}

/// Reads `--janus-secret-file` again after a refusal; true when it holds a new secret.
async fn reread_secret(settings: &mut Link, said: &mut Said) -> bool {
    let Link {
        secret,
        secret_file: Some(file),
        ..
    } = settings
    else {
        return false;
    };
    let Some(new) = file.changed(secret.as_ref(), Ok).await else {
        return false;
    };
    info!(
        "janus: {} holds a new admin secret; using it",
        file.path().display()
    );
    *secret = Some(new);
    // A refusal of the new secret is news: say it again.
    said.0.remove("unauthorized");
    true
}

async fn run(
    mut settings: Link,
    view: watch::Sender<JanusView>,
    mut switch: mpsc::UnboundedReceiver<bool>,
    mut asks: mpsc::Receiver<crate::sources::FreshReply>,
) {
    let mut said = Said::default();
    let mut ticker = tokio::time::interval(settings.poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut informed = false;
    loop {
        // A poll asked for fresh is answered with its count at its end; one that ends
        // early (no answer, an error) drops the ask, and the count is unknown.
        let asked = tokio::select! {
            _ = ticker.tick() => None,
            Some(reply) = asks.recv() => Some(reply),
            Some(accept) = switch.recv() => {
                match call(&settings, "accept_new_sessions", json!({"accept": accept})).await {
                    Ok(_) => {
                        info!("janus: accept_new_sessions {accept}");
                        view.send_modify(|v| v.accepting_new_sessions = Some(accept));
                    }
                    Err(e) => {
                        said.fail(&view, &e);
                        if matches!(e, CallError::Unauthorized(_)) {
                            reread_secret(&mut settings, &mut said).await;
                        }
                    }
                }
                continue;
            }
        };
        let sent = tokio::time::Instant::now();
        match call(&settings, "ping", json!({})).await {
            Ok(_) => {
                let latency = sent.elapsed().as_secs_f64();
                view.send_modify(|v| {
                    v.connected = true;
                    v.answered = true;
                    v.failed_pings = 0;
                    v.last_ping_seconds = Some(latency);
                });
            }
            Err(CallError::Absent) => {
                informed = false;
                said.fail(&view, &CallError::Absent);
                view.send_modify(|v| {
                    v.connected = false;
                    v.answered = false;
                    v.failed_pings = 0;
                    v.sessions = None;
                });
                continue;
            }
            Err(CallError::Timeout) if super::paused_meanwhile(sent, settings.timeout) => {
                continue;
            }
            Err(CallError::Timeout) => {
                said.fail(&view, &CallError::Timeout);
                view.send_modify(|v| {
                    v.connected = false;
                    v.failed_pings += 1;
                });
                continue;
            }
            Err(e @ CallError::Unauthorized(_)) => {
                said.fail(&view, &e);
                view.send_modify(|v| {
                    v.connected = false;
                    v.sessions = None;
                });
                if reread_secret(&mut settings, &mut said).await {
                    ticker.reset_immediately();
                }
                continue;
            }
            Err(e) => {
                said.fail(&view, &e);
                continue;
            }
        }
        if !informed && let Ok(answer) = call(&settings, "info", json!({})).await {
            informed = true;
            let version = answer["version_string"]
                .as_str()
                .map(|v| crate::units::clip(v, 64));
            let accepting = answer["accepting-new-sessions"].as_bool();
            info!(
                "janus: {} answers, version {}",
                settings.url,
                version.as_deref().unwrap_or("?")
            );
            view.send_modify(|v| {
                v.version = version;
                v.accepting_new_sessions = accepting;
            });
        }
        match call(&settings, "list_sessions", json!({})).await {
            Ok(answer) => {
                let count = answer["sessions"].as_array().map(|s| s.len() as u32);
                if count.is_none() {
                    said.fail(
                        &view,
                        &CallError::Other("malformed", "list_sessions gave no list".into()),
                    );
                }
                view.send_modify(|v| v.sessions = count);
                if let Some(reply) = asked {
                    let _ = reply.try_send(count);
                }
            }
            Err(e) => {
                said.fail(&view, &e);
                view.send_modify(|v| v.sessions = None);
                if matches!(e, CallError::Unauthorized(_))
                    && reread_secret(&mut settings, &mut said).await
                {
                    ticker.reset_immediately();
                }
            }
        }
    }
}
