//! One connection's JSON-RPC session with KMS: handshake, subscriptions, then pings, events
//! and the occasional resync until the connection ends.
//!
//! Requests go one at a time, each with a deadline; events that arrive while a reply is
//! awaited are applied on the way. Request ids only ever increase, across reconnects too:
//! KMS caches replies per id for 20 s, and a reused id would get a stale answer.
//!
//! Written over any `Sink` + `Stream` of WebSocket messages, so channels can stand in for the
//! socket.

use std::collections::HashSet;
use std::fmt;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde_json::Value;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::protocol::{self, FrameError, Incoming};
use super::{ErrorKind, KmsSettings, RESYNC_EVERY, Reporter};

/// Why a request got no useful answer.
#[derive(Debug)]
enum CallError {
    Timeout,
    Reply {
        code: i64,
        message: String,
    },
    /// The connection is over.
    Ended(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Timeout => write!(f, "no answer in time"),
            CallError::Reply { code, message } => write!(f, "error {code}: {message}"),
            CallError::Ended(why) => write!(f, "{why}"),
        }
    }
}

/// The most pipelines followed: far more than one KMS runs, and a bound on what a broken or
/// hostile server can make memprobe keep (with ids of at most 256 bytes, a few MiB).
const MAX_PIPELINES: usize = 10_000;

/// Ids are process-wide so they keep increasing across connections.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub struct Session<'a, S> {
    ws: S,
    settings: &'a KmsSettings,
    reporter: &'a mut Reporter,
    session_id: Option<String>,
    /// The id of the request in flight; replies below it are late answers, above it unknown.
    current_id: u64,
    pipelines: HashSet<String>,
    synced: bool,
}

impl<'a, S> Session<'a, S>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    pub fn new(ws: S, settings: &'a KmsSettings, reporter: &'a mut Reporter) -> Self {
        Session {
            ws,
            settings,
            reporter,
            session_id: None,
            current_id: 0,
            pipelines: HashSet::new(),
            synced: false,
        }
    }

    /// Runs until the connection ends; returns why it ended.
    pub async fn run(mut self) -> String {
        match self.serve().await {
            Ok(never) => match never {},
            Err(why) => why,
        }
    }

    async fn serve(&mut self) -> Result<std::convert::Infallible, String> {
        self.handshake().await?;
        let period = self.settings.ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + period, period);
        let mut resync = tokio::time::interval_at(Instant::now() + RESYNC_EVERY, RESYNC_EVERY);
        let memory_period = self.settings.memory_interval.unwrap_or(RESYNC_EVERY);
        let mut memory = tokio::time::interval(memory_period);
        for timer in [&mut ping, &mut resync, &mut memory] {
            timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                frame = self.ws.next() => self.frame(frame)?,
                _ = ping.tick() => self.ping().await?,
                _ = resync.tick() => self.resync().await?,
                _ = memory.tick(), if self.settings.memory_interval.is_some() => {
                    self.used_memory().await?
                }
            }
        }
    }

    async fn handshake(&mut self) -> Result<(), String> {
        let result = self
            .call("connect", None)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let server_id = result["serverId"]
            .as_str()
            .map(|id| crate::units::clip(id, super::MAX_TEXT_BYTES));
        self.session_id = result["sessionId"].as_str().map(str::to_owned);
        let previous = self.reporter.view().server_id;
        if server_id != previous {
            let restarted = previous.is_some();
            tracing::info!(
                server_id = server_id.as_deref().unwrap_or("?"),
                "kms: connected to {}{}",
                self.settings.url,
                if restarted {
                    ", a new serverId: KMS restarted"
                } else {
                    ""
                }
            );
        }
        self.reporter.update(|v| {
            if v.server_id != server_id {
                v.version = None;
            }
            v.server_id = server_id;
            v.connected = true;
            v.answered = true;
            v.failed_pings = 0;
        });
        if let Ok(info) = self.call("invoke", Some(protocol::invoke("getInfo"))).await {
            let version = protocol::value(&info)["version"]
                .as_str()
                .map(|v| crate::units::clip(v, 64));
            self.reporter.update(|v| v.version = version);
        }
        for event in ["ObjectCreated", "ObjectDestroyed"] {
            self.call("subscribe", Some(protocol::subscribe(event)))
                .await
                .map_err(|e| format!("subscribe {event}: {e}"))?;
        }
        self.resync().await
    }

    /// Sends one request and waits for its reply, applying events on the way.
    async fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, CallError> {
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.current_id = id;
        let text = protocol::request(id, method, params, self.session_id.as_deref());
        if let Err(e) = self.ws.send(Message::text(text)).await {
            return Err(self.ended(e));
        }
        let deadline = Instant::now() + self.settings.timeout;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(frame) => frame,
                Err(_) => {
                    let message = format!(
                        "{method} got no answer within {}",
                        crate::units::Human(self.settings.timeout)
                    );
                    self.reporter.error(ErrorKind::Timeout, message);
                    return Err(CallError::Timeout);
                }
            };
            match self.receive(frame) {
                Err(why) => return Err(CallError::Ended(why)),
                Ok(Some(Incoming::Reply { id: got, result })) if got == id => return Ok(result),
                Ok(Some(Incoming::Error {
                    id: Some(got),
                    code,
                    message,
                })) if got == id => {
                    self.reporter.error(
                        ErrorKind::ErrorReply,
                        format!("{method}: error {code}: {message}"),
                    );
                    return Err(CallError::Reply { code, message });
                }
                Ok(_) => {}
            }
        }
    }

    /// Handles a frame that arrived outside any request.
    fn frame(&mut self, frame: Option<Result<Message, WsError>>) -> Result<(), String> {
        self.receive(frame).map(|_| ())
    }

    /// Applies one frame. Returns the reply or error it carried, if any, for the caller to
    /// match; `Err` when the connection is over.
    fn receive(
        &mut self,
        frame: Option<Result<Message, WsError>>,
    ) -> Result<Option<Incoming>, String> {
        let text = match frame {
            None => return Err("closed by KMS".to_string()),
            Some(Err(e)) => return Err(self.ended(e).to_string()),
            Some(Ok(Message::Text(text))) => text.to_string(),
            Some(Ok(Message::Binary(bytes))) => match String::from_utf8(bytes.to_vec()) {
                Ok(text) => text,
                Err(_) => {
                    self.reporter.error(
                        ErrorKind::Malformed,
                        "a binary frame that is not UTF-8".into(),
                    );
                    return Ok(None);
                }
            },
            Some(Ok(Message::Close(_))) => return Err("closed by KMS".to_string()),
            Some(Ok(_)) => return Ok(None), // WebSocket ping/pong: answered by tungstenite
        };
        match protocol::decode(&text) {
            Ok(Incoming::Created(id)) => {
                if protocol::is_pipeline(&id) {
                    if self.pipelines.len() < MAX_PIPELINES {
                        self.pipelines.insert(id);
                    } else {
                        let message = format!("more than {MAX_PIPELINES} pipelines: not counted");
                        self.reporter.error(ErrorKind::Oversized, message);
                    }
                    self.publish_sessions();
                }
                Ok(None)
            }
            Ok(Incoming::Destroyed(id)) => {
                if self.pipelines.remove(&id) {
                    self.publish_sessions();
                }
                Ok(None)
            }
            Ok(Incoming::Ignored) => Ok(None),
            Ok(reply @ (Incoming::Reply { .. } | Incoming::Error { .. })) => {
                let id = match &reply {
                    Incoming::Reply { id, .. } => Some(*id),
                    Incoming::Error { id, .. } => *id,
                    _ => None,
                };
                match id {
                    // A late answer to a request that timed out.
                    Some(id) if id < self.current_id => Ok(None),
                    Some(id) if id > self.current_id => {
                        self.reporter.error(
                            ErrorKind::UnknownId,
                            FrameError::UnknownId(id.to_string()).to_string(),
                        );
                        Ok(None)
                    }
                    None => {
                        if let Incoming::Error { code, message, .. } = &reply {
                            self.reporter
                                .error(ErrorKind::ErrorReply, format!("error {code}: {message}"));
                        }
                        Ok(None)
                    }
                    Some(_) => Ok(Some(reply)),
                }
            }
            Err(e) => {
                let kind = e.kind();
                self.reporter.error(kind, e.to_string());
                Ok(None)
            }
        }
    }

    /// The transport failed: count it and say why the connection is over.
    fn ended(&mut self, e: WsError) -> CallError {
        let kind = match e {
            WsError::Capacity(_) => ErrorKind::Oversized,
            _ => ErrorKind::Closed,
        };
        let message = format!("connection failed: {e}");
        self.reporter.error(kind, message.clone());
        CallError::Ended(message)
    }

    async fn ping(&mut self) -> Result<(), String> {
        let sent = Instant::now();
        let params =
            serde_json::json!({"interval": self.settings.ping_interval.as_millis() as u64 * 3});
        match self.call("ping", Some(params)).await {
            Ok(_) | Err(CallError::Reply { .. }) => {
                let latency = sent.elapsed().as_secs_f64();
                self.reporter.update(|v| {
                    v.last_ping_seconds = Some(latency);
                    v.last_ping_at = Some(crate::units::timestamp(std::time::SystemTime::now()));
                    v.answered = true;
                    v.failed_pings = 0;
                });
                Ok(())
            }
            Err(CallError::Timeout) => {
                self.reporter.update(|v| v.failed_pings += 1);
                Ok(())
            }
            Err(CallError::Ended(why)) => Err(why),
        }
    }

    /// Fetches the pipeline list: once per connection, then every [`RESYNC_EVERY`].
    async fn resync(&mut self) -> Result<(), String> {
        self.reporter.update(|v| v.get_pipelines_calls_total += 1);
        match self
            .call("invoke", Some(protocol::invoke("getPipelines")))
            .await
        {
            Ok(result) => {
                let Some(ids) = protocol::value(&result).as_array() else {
                    self.reporter.error(
                        ErrorKind::Malformed,
                        "getPipelines did not return a list".into(),
                    );
                    return Ok(());
                };
                self.pipelines = ids
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|id| protocol::is_pipeline(id))
                    .take(MAX_PIPELINES)
                    .map(str::to_owned)
                    .collect();
                self.synced = true;
                self.publish_sessions();
                Ok(())
            }
            Err(CallError::Ended(why)) => Err(why),
            Err(_) => Ok(()),
        }
    }

    async fn used_memory(&mut self) -> Result<(), String> {
        match self
            .call("invoke", Some(protocol::invoke("getUsedMemory")))
            .await
        {
            Ok(result) => {
                match protocol::value(&result).as_u64() {
                    Some(kib) => self.reporter.update(|v| {
                        v.used_memory_bytes = Some(kib.saturating_mul(1024));
                        v.memory_readings += 1;
                    }),
                    None => self.reporter.error(
                        ErrorKind::Malformed,
                        "getUsedMemory did not return a number".into(),
                    ),
                }
                Ok(())
            }
            Err(CallError::Ended(why)) => Err(why),
            Err(_) => Ok(()),
        }
    }

    fn publish_sessions(&mut self) {
        if self.synced {
            let count = self.pipelines.len() as u32;
            self.reporter.update(|v| v.sessions = Some(count));
        }
    }
}
