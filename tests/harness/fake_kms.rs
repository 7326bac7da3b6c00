//! A fake Kurento Media Server, faithful to `shared/reference/kurento-jsonrpc.md`: JSON-RPC 2.0
//! over a WebSocket, compact replies with sorted keys, `connect`/`ping`/`invoke`/`subscribe`,
//! the ServerManager's getters, `onEvent` notifications for every media object (pipelines and
//! their elements), Kurento's error codes, and its reply cache per request id.
//!
//! Tests drive it: create and destroy pipelines, hang, drop connections, send raw frames,
//! restart with a new serverId; and ask it what memprobe did (getPipelines calls, reused ids).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

static NEXT: AtomicU64 = AtomicU64::new(1);

fn uuid() -> String {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        std::process::id(),
        n,
        n % 4096,
        n % 4096,
        n
    )
}

struct Shared {
    server_id: String,
    pipelines: BTreeSet<String>,
    elements: HashMap<String, Vec<String>>,
    hang: bool,
    /// Requests of this method close the connection instead of being answered.
    close_on: Option<String>,
    used_memory_kib: u64,
    get_pipelines_calls: u64,
    reused_ids: u64,
    connections: u64,
}

enum Push {
    /// An event, sent to connections subscribed to its type.
    Event { kind: &'static str, frame: String },
    /// A raw frame, sent to every connection.
    Raw(Message),
    /// Every connection is dropped.
    Drop,
}

pub struct FakeKms {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    push: broadcast::Sender<Arc<Push>>,
    _runtime: tokio::runtime::Runtime,
}

impl FakeKms {
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("fake kms runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("fake kms bind");
        let addr = listener.local_addr().expect("fake kms addr");
        let shared = Arc::new(Mutex::new(Shared {
            server_id: uuid(),
            pipelines: BTreeSet::new(),
            elements: HashMap::new(),
            hang: false,
            close_on: None,
            used_memory_kib: 0,
            get_pipelines_calls: 0,
            reused_ids: 0,
            connections: 0,
        }));
        let (push, _) = broadcast::channel(1024);
        let (s, p) = (Arc::clone(&shared), push.clone());
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (s, rx) = (Arc::clone(&s), p.subscribe());
                tokio::spawn(async move {
                    if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                        serve(ws, s, rx).await;
                    }
                });
            }
        });
        FakeKms {
            addr,
            shared,
            push,
            _runtime: runtime,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/kurento", self.addr)
    }

    pub fn server_id(&self) -> String {
        self.shared.lock().unwrap().server_id.clone()
    }

    /// A new pipeline with `elements` elements inside it; events for each.
    pub fn create_pipeline(&self, elements: usize) -> String {
        let pipeline = format!("{}_kurento.MediaPipeline", uuid());
        let children: Vec<String> = (0..elements)
            .map(|_| format!("{pipeline}/{}_kurento.WebRtcEndpoint", uuid()))
            .collect();
        {
            let mut s = self.shared.lock().unwrap();
            s.pipelines.insert(pipeline.clone());
            s.elements.insert(pipeline.clone(), children.clone());
        }
        self.event("ObjectCreated", &pipeline);
        for child in &children {
            self.event("ObjectCreated", child);
        }
        pipeline
    }

    /// Releases a pipeline: its elements go first, as in KMS.
    pub fn destroy_pipeline(&self, pipeline: &str) {
        let children = {
            let mut s = self.shared.lock().unwrap();
            s.pipelines.remove(pipeline);
            s.elements.remove(pipeline).unwrap_or_default()
        };
        for child in &children {
            self.event("ObjectDestroyed", child);
        }
        self.event("ObjectDestroyed", pipeline);
    }

    fn event(&self, kind: &'static str, object: &str) {
        let data = if kind == "ObjectCreated" {
            json!({"object": object, "source": "manager_ServerManager", "tags": [], "timestamp": "1764150000", "timestampMillis": "1764150000000", "type": kind})
        } else {
            json!({"objectId": object, "source": "manager_ServerManager", "tags": [], "timestamp": "1764150000", "timestampMillis": "1764150000000", "type": kind})
        };
        let frame = json!({
            "jsonrpc": "2.0",
            "method": "onEvent",
            "params": {"value": {"data": data, "object": "manager_ServerManager", "type": kind}},
        });
        let _ = self.push.send(Arc::new(Push::Event {
            kind,
            frame: frame.to_string(),
        }));
    }

    /// Stops answering anything (connections stay open).
    pub fn hang(&self, hang: bool) {
        self.shared.lock().unwrap().hang = hang;
    }

    /// Closes the connection on every request of `method`, mid-request.
    pub fn close_on(&self, method: Option<&str>) {
        self.shared.lock().unwrap().close_on = method.map(str::to_owned);
    }

    pub fn send_raw(&self, frame: Message) {
        let _ = self.push.send(Arc::new(Push::Raw(frame)));
    }

    pub fn drop_connections(&self) {
        let _ = self.push.send(Arc::new(Push::Drop));
    }

    /// A new KMS process: new serverId, no pipelines, every connection dropped.
    pub fn restart(&self) {
        {
            let mut s = self.shared.lock().unwrap();
            s.server_id = uuid();
            s.pipelines.clear();
            s.elements.clear();
        }
        self.drop_connections();
    }

    pub fn set_used_memory_kib(&self, kib: u64) {
        self.shared.lock().unwrap().used_memory_kib = kib;
    }

    pub fn get_pipelines_calls(&self) -> u64 {
        self.shared.lock().unwrap().get_pipelines_calls
    }

    pub fn reused_ids(&self) -> u64 {
        self.shared.lock().unwrap().reused_ids
    }

    pub fn connections(&self) -> u64 {
        self.shared.lock().unwrap().connections
    }
}

async fn serve(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    shared: Arc<Mutex<Shared>>,
    mut push: broadcast::Receiver<Arc<Push>>,
) {
    shared.lock().unwrap().connections += 1;
    let session_id = uuid();
    let mut connected = false;
    let mut subscribed: BTreeSet<String> = BTreeSet::new();
    // KMS caches each reply per (session, id) for 20 s; the connections here are shorter.
    let mut cache: HashMap<String, String> = HashMap::new();
    loop {
        tokio::select! {
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                };
                {
                    let s = shared.lock().unwrap();
                    if s.hang {
                        continue;
                    }
                    if let Some(method) = &s.close_on
                        && text.contains(&format!("\"method\":\"{method}\""))
                    {
                        return;
                    }
                }
                let request: Value = match serde_json::from_str(&text) {
                    Ok(v) => v,
                    Err(_) => {
                        let reply = error_frame(Value::Null, -32700, "Parse error", None);
                        if ws.send(Message::text(reply)).await.is_err() { return; }
                        continue;
                    }
                };
                let id_key = request["id"].to_string();
                if let Some(cached) = cache.get(&id_key) {
                    shared.lock().unwrap().reused_ids += 1;
                    let cached = cached.clone();
                    if ws.send(Message::text(cached)).await.is_err() { return; }
                    continue;
                }
                let reply = answer(&request, &session_id, &mut connected, &mut subscribed, &shared);
                if !request["id"].is_null() {
                    cache.insert(id_key, reply.clone());
                }
                if ws.send(Message::text(reply)).await.is_err() { return; }
            }
            pushed = push.recv() => {
                let Ok(pushed) = pushed else { continue };
                match &*pushed {
                    Push::Event { kind, frame } => {
                        if subscribed.contains(*kind) && ws.send(Message::text(frame.clone())).await.is_err() {
                            return;
                        }
                    }
                    Push::Raw(frame) => {
                        if ws.send(frame.clone()).await.is_err() { return; }
                    }
                    Push::Drop => return,
                }
            }
        }
    }
}

fn reply_frame(id: &Value, result: Value) -> String {
    json!({"id": id, "jsonrpc": "2.0", "result": result}).to_string()
}

fn error_frame(id: Value, code: i64, message: &str, kind: Option<&str>) -> String {
    let mut error = json!({"code": code, "message": message});
    if let Some(kind) = kind {
        error["data"] = json!({"type": kind});
    }
    json!({"error": error, "id": id, "jsonrpc": "2.0"}).to_string()
}

/// Kurento's answer for an object id it does not know.
fn not_found(id: &Value, object: &str) -> String {
    let message = format!("Object '{object}' not found");
    error_frame(id.clone(), 40101, &message, Some("MEDIA_OBJECT_NOT_FOUND"))
}

fn answer(
    request: &Value,
    session_id: &str,
    connected: &mut bool,
    subscribed: &mut BTreeSet<String>,
    shared: &Mutex<Shared>,
) -> String {
    let id = &request["id"];
    if request["jsonrpc"] != "2.0" || !request["method"].is_string() {
        return error_frame(id.clone(), -32600, "Invalid request", None);
    }
    if id.is_null() {
        return error_frame(Value::Null, -32000, "Invalid request: no id", None);
    }
    let params = &request["params"];
    let with_session = |mut value: Value| {
        if *connected {
            value["sessionId"] = json!(session_id);
        }
        value
    };
    match request["method"].as_str().unwrap_or_default() {
        "connect" => {
            *connected = true;
            let server_id = shared.lock().unwrap().server_id.clone();
            reply_frame(id, json!({"serverId": server_id, "sessionId": session_id}))
        }
        "ping" => reply_frame(id, with_session(json!({"value": "pong"}))),
        "subscribe" => {
            let (Some(object), Some(kind)) = (params["object"].as_str(), params["type"].as_str())
            else {
                return error_frame(id.clone(), -32000, "'object' parameter is required", None);
            };
            if object != "manager_ServerManager" {
                return not_found(id, object);
            }
            subscribed.insert(kind.to_string());
            reply_frame(id, with_session(json!({"value": uuid()})))
        }
        "invoke" => {
            let Some(object) = params["object"].as_str() else {
                return error_frame(id.clone(), -32000, "'object' parameter is required", None);
            };
            if object != "manager_ServerManager" {
                return not_found(id, object);
            }
            let operation = params["operation"].as_str().unwrap_or_default();
            let mut s = shared.lock().unwrap();
            let value = match operation {
                "getPipelines" => {
                    s.get_pipelines_calls += 1;
                    json!(s.pipelines.iter().collect::<Vec<_>>())
                }
                "getUsedMemory" => json!(s.used_memory_kib),
                "getInfo" => json!({
                    "__module__": "kurento", "__type__": "ServerInfo",
                    "capabilities": ["transactions"],
                    "modules": [{"__module__": "kurento", "__type__": "ModuleInfo", "factories": ["MediaPipeline"], "generationTime": "Nov 26 2026", "name": "core", "version": "7.3.0"}],
                    "type": "KMS", "version": "7.3.0"
                }),
                other => {
                    let message = format!("Method '{other}' with 0 parameters not found");
                    return error_frame(id.clone(), 40008, &message, Some("UNKNOWN_OPERATION"));
                }
            };
            reply_frame(id, with_session(json!({"value": value})))
        }
        _ => error_frame(id.clone(), -32601, "Method not found", None),
    }
}
