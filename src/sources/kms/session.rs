//! One connection's JSON-RPC session with KMS: handshake, subscriptions, then pings, events
//! and the occasional resync until the connection ends.
//!
//! Requests go one at a time, each with a deadline; events that arrive while a reply is
//! awaited are applied on the way. Request ids only ever increase, across reconnects too:
//! KMS caches replies per id for 20 s, and a reused id would get a stale answer.
//!
//! Written over any `Sink` + `Stream` of WebSocket messages, so channels can stand in for the
//! socket.

use std::fmt;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde_json::Value;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::pipelines::{Applied, MAX_PIPELINES, Pipelines};
use super::protocol::{self, FrameError, Incoming};
use super::{ErrorKind, Link, RESYNC_EVERY, Reporter};

/// How often the session looks whether the list is due or a missing pipeline's grace is over.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Why a request got no useful answer.
#[derive(Debug)]
enum CallError {
    Timeout,
    /// The deadline passed while memprobe itself was not running: no evidence either way.
    Paused,
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
            CallError::Paused => write!(f, "memprobe was paused while waiting"),
            CallError::Reply { code, message } => {
                write!(f, "error {code} ({} bytes of message)", message.len())
            }
            CallError::Ended(why) => write!(f, "{why}"),
        }
    }
}

/// Ids are process-wide so they keep increasing across connections.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub struct Session<'a, S> {
    ws: S,
    settings: &'a Link,
    reporter: &'a mut Reporter,
    session_id: Option<String>,
    /// The id of the request in flight; replies below it are late answers, above it unknown.
    current_id: u64,
    pipelines: Pipelines,
}

impl<'a, S> Session<'a, S>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    pub fn new(ws: S, settings: &'a Link, reporter: &'a mut Reporter) -> Self {
        Session {
            ws,
            settings,
            reporter,
            session_id: None,
            current_id: 0,
            pipelines: Pipelines::new(settings.gc_period)
                .with_teardown_timeout(settings.teardown_timeout),
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
        let mut housekeeping =
            tokio::time::interval_at(Instant::now() + HOUSEKEEPING, HOUSEKEEPING);
        let memory_period = self.settings.memory_interval.unwrap_or(RESYNC_EVERY);
        let mut memory = tokio::time::interval(memory_period);
        for timer in [&mut ping, &mut housekeeping, &mut memory] {
            timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                frame = self.ws.next() => self.frame(frame)?,
                _ = ping.tick() => self.ping().await?,
                _ = housekeeping.tick() => self.housekeeping().await?,
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
        if let Some((since, evidence)) = self.reporter.view().teardown.found.clone()
            && self.reporter.view().teardown.server_id == server_id
        {
            // The same server, found stuck on an earlier connection: it still is.
            self.pipelines.stuck_before(since, evidence);
        }
        self.reporter.update(|v| {
            if v.server_id != server_id {
                v.version = None;
                // A new KMS process tears down anew; the counters go on.
                let t = &v.teardown;
                *v.teardown = super::Teardown {
                    timeout_seconds: t.timeout_seconds,
                    checks_total: t.checks_total,
                    checks_passed_total: t.checks_passed_total,
                    ..Default::default()
                };
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
        let sent = Instant::now();
        let deadline = sent + self.settings.timeout;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(frame) => frame,
                Err(_) if crate::sources::paused_meanwhile(sent, self.settings.timeout) => {
                    return Err(CallError::Paused);
                }
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
                    let reply = CallError::Reply { code, message };
                    self.reporter
                        .error(ErrorKind::ErrorReply, format!("{method}: {reply}"));
                    return Err(reply);
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
                    match self.pipelines.created(Instant::now(), &id) {
                        Applied::Changed => self.publish_sessions(),
                        Applied::Unchanged => {}
                        Applied::Full => {
                            let message =
                                format!("more than {MAX_PIPELINES} pipelines: not counted");
                            self.reporter.error(ErrorKind::Oversized, message);
                        }
                    }
                }
                Ok(None)
            }
            Ok(Incoming::Destroyed(id)) => {
                if protocol::is_pipeline(&id)
                    && self.pipelines.destroyed(Instant::now(), &id) == Applied::Changed
                {
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
                            let said = format!("error {code} ({} bytes of message)", message.len());
                            self.reporter.error(ErrorKind::ErrorReply, said);
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
            Err(CallError::Paused) => Ok(()),
            Err(CallError::Ended(why)) => Err(why),
        }
    }

    /// Fetches the list when it is due, and reports pipelines KMS forgot to announce destroyed.
    async fn housekeeping(&mut self) -> Result<(), String> {
        let undestroyed = self.pipelines.take_undestroyed(Instant::now());
        if undestroyed > 0 {
            self.undestroyed(undestroyed);
        }
        if let Some(gate) = &self.settings.gate {
            for pipeline in gate.take_releases() {
                self.pipelines.released(Instant::now(), &pipeline);
            }
        }
        if self.pipelines.check_due(Instant::now()) {
            self.check().await?;
        }
        if self.pipelines.resync_due(Instant::now()) {
            self.resync().await?;
        }
        self.judge_teardown();
        Ok(())
    }

    /// memprobe's own check: one empty pipeline, created and released at once; its
    /// `ObjectDestroyed` must come within the timeout ([`Pipelines::stuck`]).
    async fn check(&mut self) -> Result<(), String> {
        self.pipelines.check_creating();
        let created = self.call("create", Some(protocol::create_pipeline())).await;
        let id = match created {
            Ok(result) => protocol::value(&result)
                .as_str()
                .filter(|id| protocol::is_pipeline(id))
                .map(str::to_owned),
            Err(CallError::Ended(why)) => return Err(why),
            Err(_) => None,
        };
        let Some(id) = id else {
            self.pipelines.check_not_created(Instant::now());
            return Ok(());
        };
        self.reporter.update(|v| v.teardown.checks_total += 1);
        if self.pipelines.check_created(&id) {
            self.publish_sessions();
        }
        let params = serde_json::json!({ "object": id });
        match self.call("release", Some(params)).await {
            Ok(_) => self.pipelines.check_released(Instant::now()),
            Err(CallError::Ended(why)) => {
                self.pipelines.check_abandoned();
                return Err(why);
            }
            Err(_) => self.pipelines.check_abandoned(),
        }
        Ok(())
    }

    /// Publishes how the teardown stands, and says once when it is stuck.
    fn judge_teardown(&mut self) {
        let now = Instant::now();
        let unfinished = self.pipelines.unfinished(now);
        let stuck = self.pipelines.stuck(now).cloned();
        let passed = self.pipelines.take_checks_passed();
        let newly = stuck.is_some() && !self.reporter.view().teardown.stuck;
        let server_id = self.reporter.view().server_id;
        self.reporter.update(|v| {
            let t = &mut v.teardown;
            t.released_not_destroyed = unfinished.pipelines.min(u32::MAX as usize) as u32;
            t.oldest_seconds = unfinished.oldest.as_secs_f64();
            t.checks_passed_total += passed;
            if let Some(stuck) = &stuck {
                t.stuck = true;
                t.evidence = Some(stuck.evidence.as_str());
                if t.found.is_none() {
                    t.found = Some((stuck.since, stuck.evidence.clone()));
                    t.server_id = server_id;
                    t.stuck_since = Some(crate::units::timestamp(std::time::SystemTime::now()));
                }
            }
        });
        if newly && let Some(says) = self.reporter.view().teardown.says() {
            tracing::warn!(
                "{says}: KMS can no longer end sessions (its worker pool may be deadlocked); \
                 it takes no new session and restarts once its last listed session ends"
            );
            self.publish_sessions();
        }
    }

    /// Fetches the pipeline list: once per connection, then when [`Pipelines::resync_due`].
    async fn resync(&mut self) -> Result<(), String> {
        self.reporter.update(|v| v.get_pipelines_calls_total += 1);
        self.pipelines.list_requested(Instant::now());
        let result = self
            .call("invoke", Some(protocol::invoke("getPipelines")))
            .await;
        match result {
            Ok(result) => {
                let Some(ids) = protocol::value(&result).as_array() else {
                    self.pipelines.list_failed();
                    self.reporter.error(
                        ErrorKind::Malformed,
                        "getPipelines did not return a list".into(),
                    );
                    return Ok(());
                };
                let ids = ids
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|id| protocol::is_pipeline(id));
                let merged = self.pipelines.list_arrived(Instant::now(), ids);
                if merged.unannounced > 0 {
                    tracing::debug!(
                        "kms: getPipelines listed {} pipelines never announced created",
                        merged.unannounced
                    );
                }
                self.publish_sessions();
                Ok(())
            }
            Err(CallError::Ended(why)) => {
                self.pipelines.list_failed();
                Err(why)
            }
            Err(_) => {
                self.pipelines.list_failed();
                Ok(())
            }
        }
    }

    /// KMS no longer lists pipelines whose `ObjectDestroyed` never came: count them, and say so
    /// once, with the numbers.
    fn undestroyed(&mut self, count: usize) {
        let count = count as u64;
        if self.reporter.view().undestroyed_pipelines_total == 0 {
            tracing::warn!(
                "kms: {count} pipeline(s) released without an ObjectDestroyed event \
                 (getPipelines no longer lists them; {} now counted); KMS may be failing to \
                 tear media down: see memprobe_kms_undestroyed_pipelines_total",
                self.pipelines.count().unwrap_or(0)
            );
        }
        self.reporter
            .update(|v| v.undestroyed_pipelines_total += count);
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
        if let Some(count) = self.pipelines.count() {
            let count = count as u32;
            self.reporter.update(|v| v.sessions = Some(count));
        }
    }
}

#[cfg(test)]
mod tests {
    //! The session driven through channels with the literal frames a real KMS 7.3 sends
    //! (`shared/reference/kurento-jsonrpc.md`), events placed around the `getPipelines` reply.

    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use futures_util::{Sink, Stream};
    use serde_json::Value;
    use tokio::sync::mpsc;
    use tokio_tungstenite::tungstenite::{Error as WsError, Message};

    use super::super::{KmsView, Link, Reporter};
    use super::Session;

    /// memprobe's end of a WebSocket whose other end is the test.
    struct Pipe {
        from_kms: mpsc::UnboundedReceiver<Result<Message, WsError>>,
        to_kms: mpsc::UnboundedSender<Message>,
    }

    impl Stream for Pipe {
        type Item = Result<Message, WsError>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.from_kms.poll_recv(cx)
        }
    }

    impl Sink<Message> for Pipe {
        type Error = WsError;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
            self.to_kms
                .send(item)
                .map_err(|_| WsError::ConnectionClosed)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The test's end: reads memprobe's requests and sends KMS's frames.
    struct Kms {
        requests: mpsc::UnboundedReceiver<Message>,
        frames: mpsc::UnboundedSender<Result<Message, WsError>>,
    }

    const P1: &str = "6ba9067f-2d55-4a19-9f3c-6b6ec1f0a4b1_kurento.MediaPipeline";
    const P2: &str = "0d3c5c4e-76f1-4f5e-9a0b-9c1d2e3f4a5b_kurento.MediaPipeline";

    impl Kms {
        /// The next request: its id and operation (or method).
        async fn request(&mut self) -> (u64, String) {
            let Some(Message::Text(text)) = self.requests.recv().await else {
                panic!("memprobe sent no request");
            };
            let v: Value = serde_json::from_str(&text).expect("memprobe sends JSON");
            let op = v["params"]["operation"]
                .as_str()
                .or(v["method"].as_str())
                .unwrap_or_default()
                .to_string();
            (v["id"].as_u64().expect("an id"), op)
        }

        fn send(&self, frame: String) {
            self.frames
                .send(Ok(Message::text(frame)))
                .expect("session alive");
        }

        fn reply(&self, id: u64, value: &str) {
            self.send(format!(
                r#"{{"id":{id},"jsonrpc":"2.0","result":{{"sessionId":"sid","value":{value}}}}}"#
            ));
        }

        fn created(&self, object: &str) {
            self.send(format!(
                r#"{{"jsonrpc":"2.0","method":"onEvent","params":{{"value":{{"data":{{"object":"{object}","source":"manager_ServerManager","tags":[],"timestampMillis":"1796152024638"}},"object":"manager_ServerManager","type":"ObjectCreated"}}}}}}"#
            ));
        }

        fn destroyed(&self, object: &str) {
            self.send(format!(
                r#"{{"jsonrpc":"2.0","method":"onEvent","params":{{"value":{{"data":{{"objectId":"{object}","source":"manager_ServerManager","tags":[],"timestampMillis":"1796152025772"}},"object":"manager_ServerManager","type":"ObjectDestroyed"}}}}}}"#
            ));
        }

        /// Answers the handshake up to (not including) the getPipelines reply; returns its id.
        async fn handshake(&mut self) -> u64 {
            let (id, op) = self.request().await;
            assert_eq!(op, "connect");
            self.send(format!(
                r#"{{"id":{id},"jsonrpc":"2.0","result":{{"serverId":"s1","sessionId":"sid"}}}}"#
            ));
            loop {
                let (id, op) = self.request().await;
                match op.as_str() {
                    "getInfo" => self.reply(id, r#"{"version":"7.3.0"}"#),
                    "subscribe" => self.reply(id, r#""sub""#),
                    "getPipelines" => return id,
                    other => panic!("unexpected request {other}"),
                }
            }
        }
    }

    #[test]
    fn an_error_reply_is_said_by_its_code_and_length_never_its_text() {
        let message = "Object 'S3cr3t' not found".to_string();
        let length = message.len();
        let said = super::CallError::Reply {
            code: 40101,
            message,
        }
        .to_string();
        assert_eq!(said, format!("error 40101 ({length} bytes of message)"));
    }

    fn settings() -> Link {
        Link {
            url: crate::secret::SecretUrl::parse_ws("ws://127.0.0.1:8888/kurento").expect("url"),
            url_file: None,
            ping_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(3),
            gc_period: Duration::from_secs(240),
            memory_interval: None,
            teardown_timeout: None,
            gate: None,
        }
    }

    /// Starts a session; returns the test's end and the published view.
    fn start() -> (Kms, tokio::sync::watch::Receiver<KmsView>) {
        let (frames, from_kms) = mpsc::unbounded_channel();
        let (to_kms, requests) = mpsc::unbounded_channel();
        let settings = Box::leak(Box::new(settings()));
        let (reporter, view) = Reporter::new(&settings.url);
        let reporter = Box::leak(Box::new(reporter));
        tokio::spawn(Session::new(Pipe { from_kms, to_kms }, settings, reporter).run());
        (Kms { requests, frames }, view)
    }

    async fn sessions_become(view: &mut tokio::sync::watch::Receiver<KmsView>, n: u32) {
        let waited = tokio::time::timeout(
            Duration::from_secs(1),
            view.wait_for(|v| v.sessions == Some(n)),
        )
        .await
        .is_ok();
        assert!(
            waited,
            "sessions should become {n}, are {:?}",
            view.borrow().sessions
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pipeline_created_before_the_list_reply_is_not_wiped_out_by_it() {
        let (mut kms, mut view) = start();
        let list = kms.handshake().await;
        // Another client created P2 after KMS took the list; its event comes first.
        kms.created(P2);
        kms.reply(list, &format!(r#"["{P1}"]"#));
        sessions_become(&mut view, 2).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_pipeline_destroyed_before_the_list_reply_is_not_revived_by_it() {
        let (mut kms, mut view) = start();
        let list = kms.handshake().await;
        kms.reply(list, &format!(r#"["{P1}","{P2}"]"#));
        sessions_become(&mut view, 2).await;
        // The periodic resync: P1 is released after KMS took the list; its children's
        // events and its own come before the reply.
        tokio::time::sleep(Duration::from_secs(601)).await;
        let list = loop {
            match kms.request().await {
                (id, op) if op == "getPipelines" => break id,
                (id, _) => kms.reply(id, r#""pong""#),
            }
        };
        kms.destroyed(&format!("{P1}/e1_kurento.WebRtcEndpoint"));
        kms.destroyed(P1);
        kms.reply(list, &format!(r#"["{P1}","{P2}"]"#));
        sessions_become(&mut view, 1).await;
    }

    #[tokio::test(start_paused = true)]
    async fn events_after_the_list_reply_count_once() {
        let (mut kms, mut view) = start();
        let list = kms.handshake().await;
        kms.reply(list, &format!(r#"["{P1}"]"#));
        // P1's creation event follows the reply that already listed it.
        kms.created(P1);
        kms.created(P2);
        sessions_become(&mut view, 2).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_count_kms_stopped_announcing_converges_within_a_gc_period() {
        let (mut kms, mut view) = start();
        let list = kms.handshake().await;
        kms.reply(list, "[]");
        kms.created(P1);
        sessions_become(&mut view, 1).await;
        // P1 is released, and KMS sends no ObjectDestroyed: only a list can tell.
        let started = tokio::time::Instant::now();
        let list = loop {
            match kms.request().await {
                (id, op) if op == "getPipelines" => break id,
                (id, _) => kms.reply(id, r#""pong""#),
            }
        };
        let after = started.elapsed();
        assert!(
            after >= Duration::from_secs(240) && after <= Duration::from_secs(242),
            "a quiet count above zero is checked one gc period after its last event, not {after:?}"
        );
        kms.reply(list, "[]");
        sessions_become(&mut view, 0).await;
        // Its event does not come within the grace: counted as undestroyed.
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let (id, _) = kms.request().await;
                kms.reply(id, r#""pong""#);
            }
        });
        let _ = waited.await;
        assert_eq!(view.borrow().undestroyed_pipelines_total, 1);
    }
}
