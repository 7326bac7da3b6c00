//! A fake Kurento Media Server, the twin of the real KMS 7.3 that
//! `shared/reference/kurento-jsonrpc.md` records in "What a real KMS 7.3 answered": JSON-RPC 2.0
//! over a WebSocket, answered in compact JSON with sorted keys, and modelled the way KMS itself
//! keeps its state, so that its quirks come out of the model rather than out of special cases:
//!
//! - *objects* (pipelines and their elements) owned by *sessions*; an object lives while a
//!   session refers to it, and every `invoke`, `subscribe`, `create` or `describe` refers the
//!   object into the calling session (KMS's `MediaSet`);
//! - `getPipelines` refers every object into the hidden session `""`; a garbage collector,
//!   counted from start, marks idle sessions every `gc_period` and frees the objects of those
//!   still idle at the next sweep, while the sessions of open WebSockets are kept alive
//!   (every quarter period), so an abandoned pipeline lives one to two sweeps, longer if
//!   `getPipelines` came in between; the sweeps are counted, and the sweep count kept for
//!   each freed object and each `getPipelines`, so tests judge in sweeps, not in time;
//! - each WebSocket is bound to a session: `connect` binds a new one, and any reply that carries
//!   a `sessionId` binds (or moves) that session to the socket the request came on; events go
//!   to the socket a subscribing session is bound to now;
//! - a reply cache keyed by (sessionId, id as text) for 20 s, across methods and sockets;
//! - releasing a pipeline removes it from the list at once and sends one `ObjectDestroyed` per
//!   element, then the pipeline's, `release_delay` later; a frame that is not JSON (or, on a
//!   socket with a session, is not an object or has `params` that is not one) drops the TCP
//!   connection without a close frame; a message over 32 MB closes with 1009; SIGTERM drops
//!   every connection with no event at all;
//! - what the official Java kurento-client sends besides (captured from it, answered as KMS's
//!   `ServerMethods` does): `transaction` (operations in order, `newref:N`, each answer whole,
//!   the first error ends the list), `getName`/`setName`, and its reconnect's `connect` with
//!   its session.
//!
//! Tests drive it (pipelines made and released as another client would, hangs, raw frames,
//! a `create` refused with a given error as a gate would refuse it, SIGTERM and restarts, races
//! with an in-flight `getPipelines`, `ObjectDestroyed` that stops coming) and ask it what
//! memprobe or a client did (the requests seen, every frame both ways, getPipelines calls,
//! cache hits).
//! [`Client`] is a plain WebSocket client for the fake's own conformance tests.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

/// The ServerManager's fixed object id.
pub const SERVER_MANAGER: &str = "manager_ServerManager";
/// The largest message KMS reads (websocketpp's default, 32 MB); a larger one closes with 1009.
pub const MAX_MESSAGE_BYTES: usize = 32_000_000;
/// How long KMS keeps a reply in its cache.
pub const REPLY_CACHE_TTL: Duration = Duration::from_secs(20);
/// KMS's default `garbageCollectorPeriod`.
pub const DEFAULT_GC_PERIOD: Duration = Duration::from_secs(240);

/// The types `create` knows; anything else is 40108.
const FACTORIES: [&str; 10] = [
    "MediaPipeline",
    "WebRtcEndpoint",
    "RecorderEndpoint",
    "PlayerEndpoint",
    "RtpEndpoint",
    "PassThrough",
    "Composite",
    "HubPort",
    "Dispatcher",
    "GStreamerFilter",
];
const METHODS: [&str; 13] = [
    "connect",
    "ping",
    "create",
    "invoke",
    "subscribe",
    "unsubscribe",
    "release",
    "ref",
    "unref",
    "keepAlive",
    "describe",
    "closeSession",
    "transaction",
];

static NEXT: AtomicU64 = AtomicU64::new(1);

fn uuid() -> String {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        std::process::id(),
        n & 0xffff,
        n % 4096,
        n % 4096,
        n
    )
}

/// Where the events a request causes go, relative to its reply (a real KMS does either).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOrder {
    BeforeReply,
    AfterReply,
}

/// How a fake KMS is started; `Default` is KMS's own configuration with a short release.
#[derive(Clone, Debug)]
pub struct FakeKmsConfig {
    /// `mediaServer.resources.garbageCollectorPeriod`.
    pub gc_period: Duration,
    /// Time from a release to its `ObjectDestroyed` events (about 0.5 s on a real KMS).
    pub release_delay: Duration,
    pub event_order: EventOrder,
}

impl Default for FakeKmsConfig {
    fn default() -> Self {
        FakeKmsConfig {
            gc_period: DEFAULT_GC_PERIOD,
            release_delay: Duration::from_millis(50),
            event_order: EventOrder::AfterReply,
        }
    }
}

/// What changes while a `getPipelines` is in flight.
#[derive(Clone, Debug)]
pub enum ListChange {
    /// A new pipeline with this many elements.
    Create { elements: usize },
    /// This pipeline is released (its events come at once, not after the release delay).
    Destroy(String),
}

/// Whether the list was taken before or after the change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListTaken {
    BeforeChange,
    AfterChange,
}

/// A change racing the next `getPipelines`: the list taken before or after it, its events
/// sent before or after the reply.
#[derive(Clone, Debug)]
pub struct ListRace {
    pub change: ListChange,
    pub list_taken: ListTaken,
    pub events: EventOrder,
}

/// One request as it arrived, before KMS put the socket's session into it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub connection: u64,
    pub method: String,
    pub id: Value,
    /// The `params.sessionId` the request itself carried.
    pub session_id: Option<String>,
    /// The session the socket was bound to when the request came.
    pub bound_to: Option<String>,
}

/// One frame on the wire, as sent, for tests that check what a client really sends.
#[derive(Clone, Debug)]
pub struct Wire {
    pub connection: u64,
    /// True for a frame from the client, false for one the fake sent.
    pub inbound: bool,
    pub text: String,
}

struct Object {
    kind: String,
    parent: Option<String>,
    children: BTreeSet<String>,
    owners: BTreeSet<String>,
    /// The `name` property: the id until `setName`.
    name: Option<String>,
}

struct Subscription {
    id: String,
    object: String,
    kind: String,
}

struct Conn {
    tx: mpsc::UnboundedSender<Out>,
    session: Option<String>,
}

enum Out {
    Frame(String),
    Raw(Message),
    Drop,
}

/// When an event a request caused is sent.
enum When {
    Before,
    After,
    Later(Duration),
}

struct Caused {
    kind: &'static str,
    object: String,
    when: When,
}

#[derive(Clone)]
struct RpcError {
    code: i64,
    message: String,
    data: Option<Value>,
}

impl RpcError {
    fn kurento(code: i64, kind: &str, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: Some(json!({"type": kind})),
        }
    }

    fn missing(field: &str) -> Self {
        RpcError {
            code: -32000,
            message: format!("'{field}' parameter is required"),
            data: None,
        }
    }

    fn not_found(object: &str) -> Self {
        Self::kurento(
            40101,
            "MEDIA_OBJECT_NOT_FOUND",
            format!("Object '{object}' not found"),
        )
    }
}

struct State {
    config: FakeKmsConfig,
    server_id: String,
    /// Bumped at every SIGTERM: what was scheduled before is never sent.
    epoch: u64,
    running: bool,
    objects: BTreeMap<String, Object>,
    /// Each session's objects (KMS's sessionMap), the ServerManager included.
    session_objects: BTreeMap<String, BTreeSet<String>>,
    /// Sessions KMS knows, and whether they were used since the last sweep.
    in_use: HashMap<String, bool>,
    subscriptions: HashMap<String, Vec<Subscription>>,
    conns: HashMap<u64, Conn>,
    bound: HashMap<String, u64>,
    cache: HashMap<(String, String), (Instant, Value)>,
    cache_ttl: Duration,
    /// The session of the application that makes pipelines for the tests: its socket never
    /// closes.
    app_session: String,
    /// Objects freed by the operation under way, in event order.
    freed: Vec<String>,
    held: Option<VecDeque<(&'static str, String)>>,
    destroyed_budget: Option<u64>,
    destroyed_events: u64,
    /// The worker pool is deadlocked: what is released is answered, unreferenced (no longer
    /// listed) and never destroyed: it keeps running, with no `ObjectDestroyed`.
    pool_stuck: bool,
    /// Objects released into the stuck pool, still running.
    running_unreferenced: BTreeSet<String>,
    races: VecDeque<(ListRace, String)>,
    /// Sweeps of the garbage collector so far: tests count sweeps, not time, so that a loaded
    /// machine that runs the collector late changes no verdict.
    sweeps: u64,
    /// The sweep count when each object was freed (released, or collected at that sweep).
    freed_at_sweep: HashMap<String, u64>,
    /// The sweep count when each `getPipelines` came, in order.
    list_sweeps: Vec<u64>,
    hang: bool,
    close_on: Option<String>,
    used_memory_kib: u64,
    get_pipelines_calls: u64,
    reused_ids: u64,
    connections: u64,
    next_conn: u64,
    seen: Vec<Seen>,
    wire: Vec<Wire>,
    /// `create` of these types is answered with this error instead (the gate's, say).
    refused: HashMap<String, RpcError>,
}

struct Inner {
    addr: SocketAddr,
    state: Mutex<State>,
    handle: tokio::runtime::Handle,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

pub struct FakeKms {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    _runtime: tokio::runtime::Runtime,
}

impl FakeKms {
    pub fn start() -> Self {
        Self::start_with(FakeKmsConfig::default())
    }

    pub fn start_with(config: FakeKmsConfig) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("fake kms runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("fake kms bind");
        let addr = listener.local_addr().expect("fake kms addr");
        let state = State {
            config,
            server_id: uuid(),
            epoch: 0,
            running: true,
            objects: BTreeMap::new(),
            session_objects: BTreeMap::new(),
            in_use: HashMap::new(),
            subscriptions: HashMap::new(),
            conns: HashMap::new(),
            bound: HashMap::new(),
            cache: HashMap::new(),
            cache_ttl: REPLY_CACHE_TTL,
            app_session: uuid(),
            freed: Vec::new(),
            held: None,
            destroyed_budget: None,
            pool_stuck: false,
            running_unreferenced: BTreeSet::new(),
            destroyed_events: 0,
            races: VecDeque::new(),
            sweeps: 0,
            freed_at_sweep: HashMap::new(),
            list_sweeps: Vec::new(),
            hang: false,
            close_on: None,
            used_memory_kib: 0,
            get_pipelines_calls: 0,
            reused_ids: 0,
            connections: 0,
            next_conn: 0,
            seen: Vec::new(),
            wire: Vec::new(),
            refused: HashMap::new(),
        };
        let inner = Arc::new(Inner {
            addr,
            state: Mutex::new(state),
            handle: runtime.handle().clone(),
            tasks: Mutex::new(Vec::new()),
        });
        inner.run(listener, 0);
        FakeKms {
            addr,
            inner,
            _runtime: runtime,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap()
    }

    pub fn url(&self) -> String {
        format!("ws://{}/kurento", self.addr)
    }

    pub fn server_id(&self) -> String {
        self.state().server_id.clone()
    }

    /// A new pipeline with `elements` elements inside it, made by an application whose
    /// socket stays open; an `ObjectCreated` for each, pipeline first.
    pub fn create_pipeline(&self, elements: usize) -> String {
        let mut s = self.state();
        let session = s.app_session.clone();
        let (pipeline, created) = s.make_pipeline(&session, elements);
        for object in created {
            s.emit("ObjectCreated", &object);
        }
        pipeline
    }

    /// A pipeline whose application's socket closed just now: the garbage collector frees it
    /// after one to two periods, unless a `getPipelines` keeps it.
    pub fn create_abandoned_pipeline(&self, elements: usize) -> String {
        let mut s = self.state();
        let (pipeline, created) = s.make_pipeline(&uuid(), elements);
        for object in created {
            s.emit("ObjectCreated", &object);
        }
        pipeline
    }

    /// Releases a pipeline as its application would: gone from the list at once, its
    /// elements' `ObjectDestroyed` then its own after the release delay.
    pub fn destroy_pipeline(&self, pipeline: &str) {
        let mut s = self.state();
        s.release(pipeline);
        let delay = s.config.release_delay;
        let freed = std::mem::take(&mut s.freed);
        drop(s);
        self.inner.send_later("ObjectDestroyed", freed, delay);
    }

    /// The pipelines `getPipelines` would list now (asking changes nothing).
    pub fn pipelines(&self) -> Vec<String> {
        self.state().pipelines()
    }

    /// The garbage collector's sweeps so far.
    pub fn sweeps(&self) -> u64 {
        self.state().sweeps
    }

    /// The sweep count when an object was freed: the sweep that collected it, or the count
    /// when it was released.
    pub fn freed_at_sweep(&self, object: &str) -> Option<u64> {
        self.state().freed_at_sweep.get(object).copied()
    }

    /// The sweep count when each `getPipelines` came, in order.
    pub fn get_pipelines_sweeps(&self) -> Vec<u64> {
        self.state().list_sweeps.clone()
    }

    /// Whether a WebSocket is open for this session (the fake has not yet seen it close).
    pub fn socket_open(&self, session: &str) -> bool {
        self.state().bound.contains_key(session)
    }

    /// Stops answering anything (connections stay open, events still flow).
    pub fn hang(&self, hang: bool) {
        self.state().hang = hang;
    }

    /// Closes the connection on every request of `method`, mid-request.
    pub fn close_on(&self, method: Option<&str>) {
        self.state().close_on = method.map(str::to_owned);
    }

    /// A frame sent as is to every connection.
    pub fn send_raw(&self, frame: Message) {
        for conn in self.state().conns.values() {
            let _ = conn.tx.send(Out::Raw(frame.clone()));
        }
    }

    /// Drops every connection's TCP (no close frame); sessions and pipelines stay.
    pub fn drop_connections(&self) {
        for conn in self.state().conns.values() {
            let _ = conn.tx.send(Out::Drop);
        }
    }

    /// KMS's SIGTERM: every connection dropped with no `ObjectDestroyed`, nothing listening
    /// until [`FakeKms::start_again`].
    pub fn sigterm(&self) {
        let tasks: Vec<JoinHandle<()>> = self.inner.tasks.lock().unwrap().drain(..).collect();
        for task in &tasks {
            task.abort();
        }
        // Once the accept task is gone, so is the listener: connections are refused.
        self._runtime.block_on(async {
            for task in tasks {
                let _ = task.await;
            }
        });
        let mut s = self.state();
        s.epoch += 1;
        s.running = false;
        for conn in s.conns.values() {
            let _ = conn.tx.send(Out::Drop);
        }
        s.conns.clear();
        s.bound.clear();
    }

    /// A new KMS process on the same port: new serverId, no pipelines, no sessions.
    pub fn start_again(&self) {
        {
            let mut s = self.state();
            s.server_id = uuid();
            s.running = true;
            s.objects.clear();
            s.session_objects.clear();
            s.in_use.clear();
            s.subscriptions.clear();
            s.cache.clear();
            s.races.clear();
            s.app_session = uuid();
            s.pool_stuck = false;
            s.running_unreferenced.clear();
        }
        let addr = self.addr;
        let listener = self._runtime.block_on(async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match TcpListener::bind(addr).await {
                    Ok(l) => return l,
                    Err(e) if Instant::now() > deadline => panic!("fake kms rebind {addr}: {e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let epoch = self.state().epoch;
        self.inner.run(listener, epoch);
    }

    /// A new KMS process: SIGTERM, then started again.
    pub fn restart(&self) {
        self.sigterm();
        self.start_again();
    }

    pub fn set_used_memory_kib(&self, kib: u64) {
        self.state().used_memory_kib = kib;
    }

    pub fn set_event_order(&self, order: EventOrder) {
        self.state().config.event_order = order;
    }

    pub fn set_release_delay(&self, delay: Duration) {
        self.state().config.release_delay = delay;
    }

    pub fn set_reply_cache_ttl(&self, ttl: Duration) {
        self.state().cache_ttl = ttl;
    }

    /// After `objects` more objects' `ObjectDestroyed`, none at all (a glibc KMS that ran
    /// media drifts so); `getPipelines` still tells the truth.
    pub fn stop_destroyed_events_after(&self, objects: u64) {
        self.state().destroyed_budget = Some(objects);
    }

    /// KMS's worker pool deadlocks (the reference's "A worker pool that deadlocks"): from
    /// now on every `release` is answered, the object leaves `getPipelines`, and no
    /// `ObjectDestroyed` ever comes; creates, invokes and pings still work.
    pub fn deadlock_pool(&self) {
        self.state().pool_stuck = true;
    }

    /// Objects released since the pool deadlocked, still running.
    pub fn running_unreferenced(&self) -> usize {
        self.state().running_unreferenced.len()
    }

    pub fn resume_destroyed_events(&self) {
        self.state().destroyed_budget = None;
    }

    /// `ObjectDestroyed` events sent so far (one per object, whatever the subscribers).
    pub fn destroyed_events_sent(&self) -> u64 {
        self.state().destroyed_events
    }

    /// Holds every event back from now on (or sends the held ones and stops holding).
    pub fn hold_events(&self, hold: bool) {
        let mut s = self.state();
        if hold {
            s.held.get_or_insert_with(VecDeque::new);
        } else if let Some(held) = s.held.take() {
            for (kind, object) in held {
                s.deliver(kind, &object);
            }
        }
    }

    /// The events held back so far: (type, object).
    pub fn held_events(&self) -> Vec<(String, String)> {
        let s = self.state();
        let held = s.held.iter().flatten();
        held.map(|(k, o)| (k.to_string(), o.clone())).collect()
    }

    /// Sends the first `n` held events, and keeps holding the rest.
    pub fn send_held_events(&self, n: usize) {
        let mut s = self.state();
        for _ in 0..n {
            let Some((kind, object)) = s.held.as_mut().and_then(VecDeque::pop_front) else {
                break;
            };
            s.deliver(kind, &object);
        }
    }

    /// A pipeline created while the next `getPipelines` is in flight: the list is taken
    /// before it, its `ObjectCreated` sent before the reply.
    pub fn create_during_next_list(&self, elements: usize) -> String {
        self.race_next_list(ListRace {
            change: ListChange::Create { elements },
            list_taken: ListTaken::BeforeChange,
            events: EventOrder::BeforeReply,
        })
    }

    /// A pipeline released while the next `getPipelines` is in flight: the list, taken
    /// before, still has it; its `ObjectDestroyed` comes before the reply.
    pub fn destroy_during_next_list(&self, pipeline: &str) {
        self.race_next_list(ListRace {
            change: ListChange::Destroy(pipeline.to_string()),
            list_taken: ListTaken::BeforeChange,
            events: EventOrder::BeforeReply,
        });
    }

    /// Any change racing the next `getPipelines`; returns the pipeline it concerns.
    pub fn race_next_list(&self, race: ListRace) -> String {
        let pipeline = match &race.change {
            ListChange::Create { .. } => format!("{}_kurento.MediaPipeline", uuid()),
            ListChange::Destroy(id) => id.clone(),
        };
        self.state().races.push_back((race, pipeline.clone()));
        pipeline
    }

    pub fn get_pipelines_calls(&self) -> u64 {
        self.state().get_pipelines_calls
    }

    /// Requests answered from the reply cache.
    pub fn reused_ids(&self) -> u64 {
        self.state().reused_ids
    }

    pub fn connections(&self) -> u64 {
        self.state().connections
    }

    /// Every request so far, in order of arrival.
    pub fn requests(&self) -> Vec<Seen> {
        self.state().seen.clone()
    }

    /// Every frame so far, both ways, in the order the fake read or queued them.
    pub fn wire(&self) -> Vec<Wire> {
        self.state().wire.clone()
    }

    /// From now on a `create` of `kind` is answered with this JSON-RPC error (the shape of
    /// KMS's own: `code`, `message`, `data`), as a gate in front of KMS would answer it.
    pub fn refuse_create(&self, kind: &str, code: i64, message: &str, data: Option<Value>) {
        let error = RpcError {
            code,
            message: message.to_string(),
            data,
        };
        self.state().refused.insert(kind.to_string(), error);
    }

    /// `create` of every type works again.
    pub fn accept_creates(&self) {
        self.state().refused.clear();
    }

    pub fn requests_of(&self, method: &str) -> usize {
        self.state()
            .seen
            .iter()
            .filter(|r| r.method == method)
            .count()
    }
}

impl Inner {
    /// Listens, and runs the garbage collector counted from now.
    fn run(self: &Arc<Self>, listener: TcpListener, epoch: u64) {
        let inner = Arc::clone(self);
        let accept = self.handle.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let inner = Arc::clone(&inner);
                tokio::spawn(async move { inner.serve(tcp, epoch).await });
            }
        });
        let inner = Arc::clone(self);
        let period = self.state.lock().unwrap().config.gc_period;
        let gc = self.handle.spawn(async move {
            let mut ticks = tokio::time::interval(period / 4);
            for n in 0u64.. {
                ticks.tick().await;
                inner.collect(n > 0 && n % 4 == 0);
            }
        });
        self.tasks.lock().unwrap().extend([accept, gc]);
    }

    /// The keep-alive of open sockets' sessions every quarter period; every fourth, a sweep.
    fn collect(self: &Arc<Self>, sweep: bool) {
        let mut s = self.state.lock().unwrap();
        let mut alive: Vec<String> = s.bound.keys().cloned().collect();
        alive.push(s.app_session.clone());
        for session in alive {
            if let Some(used) = s.in_use.get_mut(&session) {
                *used = true;
            }
        }
        if !sweep {
            return;
        }
        s.sweeps += 1;
        let sessions: Vec<(String, bool)> = s.in_use.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for (session, used) in sessions {
            if used {
                s.in_use.insert(session, false);
            } else {
                s.unref_session(&session);
            }
        }
        let delay = s.config.release_delay;
        let freed = std::mem::take(&mut s.freed);
        drop(s);
        self.send_later("ObjectDestroyed", freed, delay);
    }

    /// Events sent after `delay`, unless KMS was stopped meanwhile.
    fn send_later(self: &Arc<Self>, kind: &'static str, objects: Vec<String>, delay: Duration) {
        if objects.is_empty() {
            return;
        }
        let epoch = self.state.lock().unwrap().epoch;
        let inner = Arc::downgrade(self);
        self.handle.spawn(async move {
            tokio::time::sleep(delay).await;
            let Some(inner) = inner.upgrade() else { return };
            let mut s = inner.state.lock().unwrap();
            if s.epoch == epoch {
                for object in objects {
                    s.emit(kind, &object);
                }
            }
        });
    }

    async fn serve(self: Arc<Self>, tcp: TcpStream, epoch: u64) {
        let config = WebSocketConfig::default()
            .max_message_size(Some(2 * MAX_MESSAGE_BYTES))
            .max_frame_size(Some(2 * MAX_MESSAGE_BYTES));
        let mut path = None;
        // The error type is tungstenite's, not ours to shrink.
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, response: Response| {
            path = Some(request.uri().path().to_string());
            Ok(response)
        };
        let Ok(mut ws) =
            tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config)).await
        else {
            return;
        };
        if path.as_deref() != Some("/kurento") {
            let close = CloseFrame {
                code: CloseCode::Protocol,
                reason: "Invalid path".into(),
            };
            let _ = ws.send(Message::Close(Some(close))).await;
            return;
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let conn = {
            let mut s = self.state.lock().unwrap();
            if s.epoch != epoch || !s.running {
                return;
            }
            s.next_conn += 1;
            s.connections += 1;
            let conn = s.next_conn;
            s.conns.insert(conn, Conn { tx, session: None });
            conn
        };
        loop {
            tokio::select! {
                msg = ws.next() => {
                    let text = match msg {
                        Some(Ok(Message::Text(t))) => t.to_string(),
                        // websocketpp hands KMS the payload whatever the opcode.
                        Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => continue,
                    };
                    if text.len() > MAX_MESSAGE_BYTES {
                        let close = CloseFrame { code: CloseCode::Size, reason: "".into() };
                        let _ = ws.send(Message::Close(Some(close))).await;
                        let wait = Duration::from_secs(2);
                        while let Ok(Some(Ok(_))) = tokio::time::timeout(wait, ws.next()).await {}
                        break;
                    }
                    if !self.request(conn, &text) {
                        break;
                    }
                }
                out = rx.recv() => {
                    let message = match out {
                        Some(Out::Frame(text)) => Message::text(text),
                        Some(Out::Raw(message)) => message,
                        Some(Out::Drop) | None => break,
                    };
                    if ws.send(message).await.is_err() {
                        break;
                    }
                }
            }
        }
        let mut s = self.state.lock().unwrap();
        if let Some(Conn {
            session: Some(session),
            ..
        }) = s.conns.remove(&conn)
        {
            s.bound.remove(&session);
        }
    }

    /// Handles one frame; false when KMS drops the connection over it.
    fn request(self: &Arc<Self>, conn: u64, text: &str) -> bool {
        let mut s = self.state.lock().unwrap();
        if s.hang {
            return true;
        }
        if let Some(method) = &s.close_on
            && text.contains(&format!("\"method\":\"{method}\""))
        {
            return false;
        }
        s.wire.push(Wire {
            connection: conn,
            inbound: true,
            text: text.to_string(),
        });
        let Ok(mut request) = serde_json::from_str::<Value>(text) else {
            return false;
        };
        let bound = s.conns.get(&conn).and_then(|c| c.session.clone());
        s.seen.push(Seen {
            connection: conn,
            method: request["method"].as_str().unwrap_or_default().to_string(),
            id: request.get("id").cloned().unwrap_or(Value::Null),
            session_id: request
                .get("params")
                .and_then(|p| p.get("sessionId"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            bound_to: bound.clone(),
        });
        // KMS puts the socket's session into every request, and fails on a frame that
        // cannot take one: the connection drops.
        if let Some(session) = &bound {
            let Some(map) = request.as_object_mut() else {
                return false;
            };
            match map.get_mut("params") {
                None | Some(Value::Null) => {
                    map.insert("params".into(), json!({"sessionId": session}));
                }
                Some(Value::Object(params)) => {
                    if !params.get("sessionId").is_some_and(Value::is_string) {
                        params.insert("sessionId".into(), json!(session));
                    }
                }
                Some(_) => return false,
            }
        }
        let (response, caused) = s.process(&request);
        for event in caused.iter().filter(|c| matches!(c.when, When::Before)) {
            s.emit(event.kind, &event.object);
        }
        if let Some(response) = &response {
            let text = compact(response);
            s.wire.push(Wire {
                connection: conn,
                inbound: false,
                text: text.clone(),
            });
            if let Some(conn) = s.conns.get(&conn) {
                let _ = conn.tx.send(Out::Frame(text));
            }
            let rebind = response
                .get("result")
                .and_then(|r| r.get("sessionId"))
                .and_then(Value::as_str)
                .filter(|sid| !sid.is_empty());
            if response.get("error").is_none()
                && let Some(session) = rebind
            {
                s.bind(conn, session);
            }
        }
        for event in caused.iter().filter(|c| matches!(c.when, When::After)) {
            s.emit(event.kind, &event.object);
        }
        drop(s);
        // One task per kind and delay, so that the events keep their order.
        let mut later: Vec<(&'static str, Duration, Vec<String>)> = Vec::new();
        for event in caused {
            if let When::Later(delay) = event.when {
                match later
                    .iter_mut()
                    .find(|(k, d, _)| *k == event.kind && *d == delay)
                {
                    Some((_, _, objects)) => objects.push(event.object),
                    None => later.push((event.kind, delay, vec![event.object])),
                }
            }
        }
        for (kind, delay, objects) in later {
            self.send_later(kind, objects, delay);
        }
        true
    }
}

impl State {
    /// One request, as KMS's handler runs it: protocol check, cache, method, cache again.
    fn process(&mut self, request: &Value) -> (Option<Value>, Vec<Caused>) {
        let invalid = !request.is_object()
            || request["jsonrpc"] != "2.0"
            || request
                .get("id")
                .is_some_and(|id| id.is_array() || id.is_object())
            || !request["method"].is_string();
        if invalid {
            let response = error_response(
                Value::Null,
                RpcError {
                    code: -32600,
                    message: "Invalid JSON-RPC request.".into(),
                    data: None,
                },
            );
            return (Some(response), Vec::new());
        }
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let method = request["method"].as_str().unwrap_or_default();
        let params = request.get("params").cloned().unwrap_or(Value::Null);
        let key = id_key(&id);
        let sent_session = params
            .get("sessionId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if !METHODS.contains(&method) {
            let response = error_response(
                id,
                RpcError {
                    code: -32601,
                    message: "Method not found.".into(),
                    data: None,
                },
            );
            self.cache_reply(key, sent_session, &response);
            return (Some(response), Vec::new());
        }
        if let (Some(key), Some(session)) = (&key, &sent_session) {
            let now = Instant::now();
            let ttl = self.cache_ttl;
            let cache_key = (session.clone(), key.clone());
            match self.cache.get(&cache_key) {
                Some((at, reply)) if now - *at <= ttl => {
                    let reply = reply.clone();
                    self.reused_ids += 1;
                    return (Some(reply), Vec::new());
                }
                Some(_) => {
                    self.cache.remove(&cache_key);
                }
                None => {}
            }
        }
        let mut caused = Vec::new();
        let outcome = self.call(method, &params, &mut caused);
        for object in std::mem::take(&mut self.freed) {
            let when = self.request_caused();
            caused.push(Caused {
                kind: "ObjectDestroyed",
                object,
                when,
            });
        }
        let response = if id.is_null() {
            match outcome {
                Ok(Value::Null) => None,
                Ok(result) => Some(error_response(
                    Value::Null,
                    RpcError {
                        code: -32000,
                        message: "Ignoring response because of a notification request".into(),
                        data: Some(result),
                    },
                )),
                Err(e) => Some(error_response(Value::Null, e)),
            }
        } else {
            Some(match outcome {
                Ok(result) => json!({"id": id, "jsonrpc": "2.0", "result": result}),
                Err(e) => error_response(id, e),
            })
        };
        if let Some(response) = &response {
            self.cache_reply(key, sent_session, response);
        }
        (response, caused)
    }

    /// Where a release's events go: after the release delay, or by the order knob at once.
    fn request_caused(&self) -> When {
        match (self.config.release_delay, self.config.event_order) {
            (d, _) if !d.is_zero() => When::Later(d),
            (_, EventOrder::BeforeReply) => When::Before,
            (_, EventOrder::AfterReply) => When::After,
        }
    }

    fn order(&self) -> When {
        match self.config.event_order {
            EventOrder::BeforeReply => When::Before,
            EventOrder::AfterReply => When::After,
        }
    }

    /// KMS caches a reply under the session it names (or the request's) and the id.
    fn cache_reply(&mut self, key: Option<String>, sent: Option<String>, response: &Value) {
        let named = response
            .get("result")
            .and_then(|r| r.get("sessionId"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let (Some(key), Some(session)) = (key, named.or(sent)) else {
            return;
        };
        let now = Instant::now();
        let ttl = self.cache_ttl;
        let fresh = self
            .cache
            .get(&(session.clone(), key.clone()))
            .is_some_and(|(at, _)| now - *at <= ttl);
        if !fresh {
            self.cache.insert((session, key), (now, response.clone()));
        }
    }

    fn call(
        &mut self,
        method: &str,
        params: &Value,
        caused: &mut Vec<Caused>,
    ) -> Result<Value, RpcError> {
        let sent = params.get("sessionId").and_then(Value::as_str);
        match method {
            "connect" => {
                let session = match (params.is_null(), sent) {
                    (false, Some(session)) => {
                        self.keep_alive(session)?;
                        session.to_string()
                    }
                    _ => uuid(),
                };
                return Ok(json!({"serverId": self.server_id, "sessionId": session}));
            }
            "ping" => {
                let mut result = json!({"value": "pong"});
                if let Some(session) = sent {
                    result["sessionId"] = json!(session);
                }
                return Ok(result);
            }
            _ => {}
        }
        if params.is_null() {
            return Err(RpcError::kurento(
                -32602,
                "INVALID_PARAMS",
                "'params' is requiered",
            ));
        }
        let session = sent.map_or_else(uuid, str::to_owned);
        let text = |field: &str| {
            params
                .get(field)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| RpcError::missing(field))
        };
        let with_session = |value: Option<Value>| {
            let mut result = json!({"sessionId": session});
            if let Some(value) = value {
                result["value"] = value;
            }
            result
        };
        match method {
            "create" => {
                let kind = text("type")?;
                if let Some(error) = self.refused.get(&kind) {
                    return Err(error.clone());
                }
                if !FACTORIES.contains(&kind.as_str()) {
                    return Err(RpcError::kurento(
                        40108,
                        "MEDIA_OBJECT_NOT_AVAILABLE",
                        format!("Factory '{kind}' not found"),
                    ));
                }
                let id = if kind == "MediaPipeline" {
                    format!("{}_kurento.MediaPipeline", uuid())
                } else {
                    let Some(pipeline) = params["constructorParams"]["mediaPipeline"].as_str()
                    else {
                        return Err(RpcError::missing("mediaPipeline"));
                    };
                    self.get_media_object(&session, pipeline)?;
                    format!("{pipeline}/{}_kurento.{kind}", uuid())
                };
                self.add_object(&session, &id, &kind);
                caused.push(Caused {
                    kind: "ObjectCreated",
                    object: id.clone(),
                    when: self.order(),
                });
                Ok(with_session(Some(json!(id))))
            }
            "invoke" => {
                let operation = text("operation")?;
                let object = text("object")?;
                self.get_media_object(&session, &object)?;
                let value = if object == SERVER_MANAGER {
                    self.server_manager(&operation, params, caused)?
                } else {
                    self.object_operation(&object, &operation, params)?
                };
                // A void operation (a setter) answers without a value.
                Ok(with_session(Some(value).filter(|v| !v.is_null())))
            }
            "subscribe" => {
                let kind = text("type")?;
                let object = text("object")?;
                self.get_media_object(&session, &object)?;
                let known: &[&str] = if object == SERVER_MANAGER {
                    &["ObjectCreated", "ObjectDestroyed", "Error"]
                } else {
                    &["Error"]
                };
                if !known.contains(&kind.as_str()) {
                    return Err(RpcError::kurento(
                        40106,
                        "MEDIA_OBJECT_EVENT_NOT_SUPPORTED",
                        "Event not found",
                    ));
                }
                let id = uuid();
                self.subscriptions
                    .entry(session.clone())
                    .or_default()
                    .push(Subscription {
                        id: id.clone(),
                        object,
                        kind,
                    });
                Ok(with_session(Some(json!(id))))
            }
            "unsubscribe" => {
                let object = text("object")?;
                let subscription = text("subscription")?;
                let session = text("sessionId")?;
                if let Some(subs) = self.subscriptions.get_mut(&session) {
                    subs.retain(|s| !(s.object == object && s.id == subscription));
                }
                Ok(json!({"sessionId": session}))
            }
            "release" => {
                let object = text("object")?;
                self.release(&object);
                Ok(with_session(None))
            }
            "ref" => {
                let object = text("object")?;
                let session = text("sessionId")?;
                self.get_media_object(&session, &object)?;
                Ok(json!({"sessionId": session}))
            }
            "unref" => {
                let object = text("object")?;
                let session = text("sessionId")?;
                self.unref(&session, &object);
                Ok(json!({"sessionId": session}))
            }
            "keepAlive" => {
                let session = text("sessionId")?;
                self.keep_alive(&session)?;
                Ok(json!({"sessionId": session}))
            }
            "describe" => {
                let object = text("object")?;
                let kind = self.get_media_object(&session, &object)?;
                let mut result = with_session(None);
                result["type"] = json!(kind);
                result["qualifiedType"] = json!(format!("kurento.{kind}"));
                result["hierarchy"] = json!(["kurento.MediaObject"]);
                Ok(result)
            }
            "closeSession" => {
                let session = text("sessionId")?;
                if params["release"] == true {
                    let objects: Vec<String> = self
                        .session_objects
                        .get(&session)
                        .map(|o| o.iter().cloned().collect())
                        .unwrap_or_default();
                    for object in objects {
                        self.release(&object);
                    }
                }
                self.unref_session(&session);
                Ok(Value::Null)
            }
            "transaction" => self.transaction(&session, params, caused),
            _ => unreachable!("every method in METHODS has an arm"),
        }
    }

    /// KMS's `transaction`: each operation run in order in the transaction's session, a
    /// `"newref:N"` anywhere in its params replaced by operation N's result value, and each
    /// answer kept whole (`{"id":N,"jsonrpc":"2.0","result":..}` or its error); the first error
    /// ends the list. The kurento-client sends one for `Transaction.commit()`.
    fn transaction(
        &mut self,
        session: &str,
        params: &Value,
        caused: &mut Vec<Caused>,
    ) -> Result<Value, RpcError> {
        let Some(operations) = params.get("operations").and_then(Value::as_array) else {
            return Err(RpcError::missing("operations"));
        };
        let mut responses: Vec<Value> = Vec::new();
        for (i, operation) in operations.iter().enumerate() {
            if operation["id"].as_u64() != Some(i as u64) {
                return Err(RpcError::kurento(
                    40008,
                    "MALFORMED_TRANSACTION",
                    format!("Id of request '{i}' should be '{i}'"),
                ));
            }
            let mut op_params = match operation.get("params") {
                Some(Value::Object(p)) => Value::Object(p.clone()),
                _ => json!({}),
            };
            op_params["sessionId"] = json!(session);
            inject_refs(&mut op_params, &responses)?;
            let method = operation["method"].as_str().unwrap_or_default();
            let outcome = if METHODS.contains(&method) {
                self.call(method, &op_params, caused)
            } else {
                Err(RpcError {
                    code: -32601,
                    message: "Method not found.".into(),
                    data: None,
                })
            };
            let failed = outcome.is_err();
            responses.push(match outcome {
                Ok(result) => json!({"id": i, "jsonrpc": "2.0", "result": result}),
                Err(e) => error_response(json!(i), e),
            });
            if failed {
                break;
            }
        }
        Ok(json!({"sessionId": session, "value": responses}))
    }

    fn server_manager(
        &mut self,
        operation: &str,
        params: &Value,
        caused: &mut Vec<Caused>,
    ) -> Result<Value, RpcError> {
        match operation {
            "getPipelines" => {
                self.get_pipelines_calls += 1;
                self.list_sweeps.push(self.sweeps);
                let race = self.races.pop_front();
                let mut change = |s: &mut State| {
                    if let Some((race, pipeline)) = &race {
                        s.apply_race(race, pipeline, caused);
                    }
                };
                let after = race
                    .as_ref()
                    .is_some_and(|(r, _)| r.list_taken == ListTaken::AfterChange);
                if after {
                    change(self);
                }
                let list = self.pipelines();
                // KMS lists through the hidden session "", which then holds every object.
                let mut objects: Vec<String> = self.objects.keys().cloned().collect();
                objects.push(SERVER_MANAGER.to_string());
                for object in objects {
                    self.ref_object("", &object);
                }
                if !after {
                    change(self);
                }
                Ok(json!(list))
            }
            "getSessions" => {
                let mut sessions = vec![String::new(); self.session_objects.len()];
                sessions.extend(self.session_objects.keys().cloned());
                Ok(json!(sessions))
            }
            "getUsedMemory" => Ok(json!(self.used_memory_kib)),
            "getCpuCount" => Ok(json!(2)),
            "getInfo" => Ok(json!({
                "__module__": "kurento", "__type__": "ServerInfo",
                "capabilities": ["transactions"],
                "modules": [{"__module__": "kurento", "__type__": "ModuleInfo", "factories": FACTORIES, "generationTime": "Nov 26 2026 00:00:00", "name": "core", "version": "7.3.0"}],
                "type": "KMS", "version": "7.3.0"
            })),
            other => Err(unknown_operation(other, params)),
        }
    }

    fn object_operation(
        &mut self,
        object: &str,
        operation: &str,
        params: &Value,
    ) -> Result<Value, RpcError> {
        match (operation, self.objects.get_mut(object)) {
            ("getChildren", Some(o)) => Ok(json!(o.children)),
            ("getName", Some(o)) => Ok(json!(o.name.as_deref().unwrap_or(object))),
            ("setName", Some(o)) => match params["operationParams"]["name"].as_str() {
                Some(name) => {
                    o.name = Some(name.to_string());
                    Ok(Value::Null)
                }
                None => Err(unknown_operation(operation, params)),
            },
            _ => Err(unknown_operation(operation, params)),
        }
    }

    /// A change racing a `getPipelines`: its events are sent as the race says, at once.
    fn apply_race(&mut self, race: &ListRace, pipeline: &str, caused: &mut Vec<Caused>) {
        let when = || match race.events {
            EventOrder::BeforeReply => When::Before,
            EventOrder::AfterReply => When::After,
        };
        match &race.change {
            ListChange::Create { elements } => {
                let session = self.app_session.clone();
                self.add_object(&session, pipeline, "MediaPipeline");
                caused.push(Caused {
                    kind: "ObjectCreated",
                    object: pipeline.to_string(),
                    when: when(),
                });
                for _ in 0..*elements {
                    let child = format!("{pipeline}/{}_kurento.WebRtcEndpoint", uuid());
                    self.add_object(&session, &child, "WebRtcEndpoint");
                    caused.push(Caused {
                        kind: "ObjectCreated",
                        object: child,
                        when: when(),
                    });
                }
            }
            ListChange::Destroy(id) => {
                self.release(id);
                for object in std::mem::take(&mut self.freed) {
                    caused.push(Caused {
                        kind: "ObjectDestroyed",
                        object,
                        when: when(),
                    });
                }
            }
        }
    }

    fn make_pipeline(&mut self, session: &str, elements: usize) -> (String, Vec<String>) {
        let pipeline = format!("{}_kurento.MediaPipeline", uuid());
        self.add_object(session, &pipeline, "MediaPipeline");
        let mut created = vec![pipeline.clone()];
        for _ in 0..elements {
            let child = format!("{pipeline}/{}_kurento.WebRtcEndpoint", uuid());
            self.add_object(session, &child, "WebRtcEndpoint");
            created.push(child);
        }
        (pipeline, created)
    }

    /// A new object, held by its creator and by every session holding its parent.
    fn add_object(&mut self, session: &str, id: &str, kind: &str) {
        let parent = id.split_once('/').map(|(p, _)| p.to_string());
        let mut owners = BTreeSet::new();
        if let Some(parent) = parent.as_ref().and_then(|p| self.objects.get_mut(p)) {
            parent.children.insert(id.to_string());
            owners = parent.owners.clone();
        }
        self.objects.insert(
            id.to_string(),
            Object {
                kind: kind.to_string(),
                parent,
                children: BTreeSet::new(),
                owners: owners.clone(),
                name: None,
            },
        );
        for owner in owners {
            self.session_objects
                .entry(owner)
                .or_default()
                .insert(id.to_string());
        }
        self.ref_object(session, id);
    }

    fn pipelines(&self) -> Vec<String> {
        let pipelines = self.objects.iter().filter(|(_, o)| o.parent.is_none());
        pipelines.map(|(id, _)| id.clone()).collect()
    }

    /// An object a request names: referred into the session, or 40101.
    fn get_media_object(&mut self, session: &str, id: &str) -> Result<String, RpcError> {
        let kind = if id == SERVER_MANAGER {
            "ServerManager".to_string()
        } else {
            let object = self
                .objects
                .get(id)
                .ok_or_else(|| RpcError::not_found(id))?;
            object.kind.clone()
        };
        self.ref_object(session, id);
        Ok(kind)
    }

    fn ref_object(&mut self, session: &str, id: &str) {
        self.in_use.insert(session.to_string(), true);
        let parent = self.objects.get(id).and_then(|o| o.parent.clone());
        if let Some(parent) = parent {
            self.ref_object(session, &parent);
        }
        if let Some(object) = self.objects.get_mut(id) {
            object.owners.insert(session.to_string());
        }
        self.session_objects
            .entry(session.to_string())
            .or_default()
            .insert(id.to_string());
    }

    /// The session lets go of the object (and its elements); freed once no session holds it.
    fn unref(&mut self, session: &str, id: &str) {
        if let Some(objects) = self.session_objects.get_mut(session) {
            objects.remove(id);
        }
        let Some(children) = self.objects.get(id).map(|o| o.children.clone()) else {
            return;
        };
        for child in children {
            self.unref(session, &child);
        }
        let Some(object) = self.objects.get_mut(id) else {
            return;
        };
        object.owners.remove(session);
        if object.owners.is_empty() {
            self.free(id);
        }
    }

    /// Every session lets go: `release`. An unknown object is no error.
    fn release(&mut self, id: &str) {
        let owners = self.objects.get(id).map(|o| o.owners.clone());
        for owner in owners.into_iter().flatten() {
            self.unref(&owner, id);
        }
    }

    fn free(&mut self, id: &str) {
        let Some(object) = self.objects.remove(id) else {
            return;
        };
        if self.pool_stuck {
            // Unreferenced, so no longer found or listed; never destroyed, so no event.
            for child in &object.children {
                self.free(child);
            }
            for objects in self.session_objects.values_mut() {
                objects.remove(id);
            }
            self.running_unreferenced.insert(id.to_string());
            return;
        }
        for child in &object.children {
            self.free(child);
        }
        if let Some(parent) = object.parent.as_ref().and_then(|p| self.objects.get_mut(p)) {
            parent.children.remove(id);
        }
        for objects in self.session_objects.values_mut() {
            objects.remove(id);
        }
        for subs in self.subscriptions.values_mut() {
            subs.retain(|s| s.object != id);
        }
        self.freed_at_sweep.insert(id.to_string(), self.sweeps);
        self.freed.push(id.to_string());
    }

    fn unref_session(&mut self, session: &str) {
        let objects: Vec<String> = self
            .session_objects
            .get(session)
            .map(|o| o.iter().cloned().collect())
            .unwrap_or_default();
        for object in objects {
            self.unref(session, &object);
        }
        self.session_objects.remove(session);
        self.in_use.remove(session);
        self.subscriptions.remove(session);
    }

    fn keep_alive(&mut self, session: &str) -> Result<(), RpcError> {
        match self.in_use.get_mut(session) {
            Some(used) => {
                *used = true;
                Ok(())
            }
            None => Err(RpcError::kurento(
                40007,
                "INVALID_SESSION",
                "Invalid session",
            )),
        }
    }

    /// The socket now belongs to `session`, which leaves any other socket.
    fn bind(&mut self, conn: u64, session: &str) {
        if self.bound.get(session) == Some(&conn) {
            return;
        }
        if let Some(old) = self.bound.remove(session)
            && let Some(c) = self.conns.get_mut(&old)
        {
            c.session = None;
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let Some(previous) = c.session.replace(session.to_string()) {
            self.bound.remove(&previous);
        }
        self.bound.insert(session.to_string(), conn);
        if let Some(used) = self.in_use.get_mut(session) {
            *used = true;
        }
    }

    /// An event, held back if the test asked so.
    fn emit(&mut self, kind: &'static str, object: &str) {
        if let Some(held) = &mut self.held {
            held.push_back((kind, object.to_string()));
            return;
        }
        self.deliver(kind, object);
    }

    /// An event to every session subscribed to its type, on the socket it is bound to now.
    fn deliver(&mut self, kind: &'static str, object: &str) {
        if kind == "ObjectDestroyed" {
            match &mut self.destroyed_budget {
                Some(0) => return,
                Some(n) => *n -= 1,
                None => {}
            }
            self.destroyed_events += 1;
        }
        let frame = compact(&event_frame(kind, object));
        for (session, subs) in &self.subscriptions {
            let conn = self.bound.get(session).and_then(|c| self.conns.get(c));
            let Some(conn) = conn else { continue };
            let wanted = subs
                .iter()
                .filter(|s| s.object == SERVER_MANAGER && s.kind == kind);
            for _ in wanted {
                let _ = conn.tx.send(Out::Frame(frame.clone()));
            }
        }
    }
}

/// A transaction's `"newref:N"`, anywhere in an operation's params, becomes the value of
/// operation N's result.
fn inject_refs(params: &mut Value, responses: &[Value]) -> Result<(), RpcError> {
    match params {
        Value::Object(map) => map.values_mut().try_for_each(|v| inject_refs(v, responses)),
        Value::Array(items) => items.iter_mut().try_for_each(|v| inject_refs(v, responses)),
        Value::String(text) => {
            let Some(index) = text.strip_prefix("newref:") else {
                return Ok(());
            };
            let malformed =
                |message: String| RpcError::kurento(40008, "MALFORMED_TRANSACTION", message);
            let index: usize = index
                .parse()
                .map_err(|_| malformed(format!("Invalid index of newref '{index}'")))?;
            let value = responses
                .get(index)
                .and_then(|r| r["result"].get("value"))
                .cloned()
                .ok_or_else(|| malformed(format!("Result not found on request {index}")))?;
            *params = value;
            Ok(())
        }
        _ => Ok(()),
    }
}

fn unknown_operation(operation: &str, params: &Value) -> RpcError {
    let count = params["operationParams"].as_object().map_or(0, Map::len);
    RpcError::kurento(
        40008,
        "UNKNOWN_OPERATION",
        format!("Method '{operation}' with {count} parameters not found"),
    )
}

/// The id as KMS's cache keys it: as text, so `1` and `"1"` are one.
fn id_key(id: &Value) -> Option<String> {
    match id {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn error_response(id: Value, e: RpcError) -> Value {
    let mut error = json!({"code": e.code, "message": e.message});
    if let Some(data) = e.data {
        error["data"] = data;
    }
    json!({"error": error, "id": id, "jsonrpc": "2.0"})
}

fn event_frame(kind: &str, object: &str) -> Value {
    let key = if kind == "ObjectCreated" {
        "object"
    } else {
        "objectId"
    };
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut data =
        json!({"source": SERVER_MANAGER, "tags": [], "timestampMillis": millis.to_string()});
    data[key] = json!(object);
    json!({
        "jsonrpc": "2.0",
        "method": "onEvent",
        "params": {"value": {"data": data, "object": SERVER_MANAGER, "type": kind}},
    })
}

/// Compact JSON with every object's keys sorted, as KMS writes it, whatever serde_json's
/// map keeps.
pub fn compact(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for key in keys {
                    out.insert(key.clone(), sorted(&map[key]));
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

/// What a [`Client`] read.
#[derive(Debug)]
pub enum Received {
    Text(String),
    /// A close frame, with its code.
    Closed(Option<u16>),
    /// The TCP connection ended without a close frame.
    Dropped,
    /// Nothing within the wait.
    Nothing,
}

/// A plain blocking WebSocket client, for the fake's conformance tests.
pub struct Client {
    ws: tokio_tungstenite::tungstenite::WebSocket<std::net::TcpStream>,
}

impl Client {
    pub fn connect(kms: &FakeKms) -> Self {
        Self::connect_to(&kms.url())
    }

    pub fn connect_to(url: &str) -> Self {
        let addr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .expect("host:port");
        let tcp = std::net::TcpStream::connect(addr).expect("connect to the fake kms");
        let (ws, _) = tokio_tungstenite::tungstenite::client(url, tcp).expect("handshake");
        Client { ws }
    }

    pub fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send a frame");
    }

    /// The next frame within `wait`.
    pub fn recv(&mut self, wait: Duration) -> Received {
        use tokio_tungstenite::tungstenite::Error;
        let _ = self.ws.get_ref().set_read_timeout(Some(wait));
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return Received::Text(t.to_string()),
                Ok(Message::Close(frame)) => {
                    return Received::Closed(frame.map(|f| u16::from(f.code)));
                }
                Ok(_) => continue,
                Err(Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Received::Nothing;
                }
                Err(Error::ConnectionClosed | Error::AlreadyClosed) => {
                    return Received::Closed(None);
                }
                Err(_) => return Received::Dropped,
            }
        }
    }

    /// The next text frame, failing the test otherwise.
    pub fn text(&mut self) -> String {
        match self.recv(Duration::from_secs(10)) {
            Received::Text(t) => t,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Sends a request and returns the next frame (the reply, where no event comes first).
    pub fn call(&mut self, text: &str) -> String {
        self.send(text);
        self.text()
    }

    /// Sends a request and returns the next frame as JSON.
    pub fn call_json(&mut self, text: &str) -> Value {
        serde_json::from_str(&self.call(text)).expect("a JSON reply")
    }

    /// `connect`; returns the sessionId.
    pub fn handshake(&mut self, id: u64) -> String {
        let reply = self.call_json(&format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"connect"}}"#
        ));
        reply["result"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("connect answered {reply}"))
            .to_string()
    }
}
