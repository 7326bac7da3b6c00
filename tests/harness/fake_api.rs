//! A Kubernetes API server that misbehaves on purpose, for what a real one cannot be made to
//! do here: answer a list with 200 MiB, or take seconds over each Event (as a slow admission
//! webhook does). Plain HTTP/1.1 on 127.0.0.1, one thread per connection; it keeps the Leases
//! memprobe writes (one resourceVersion counter, 409 on a stale version or an existing name)
//! and logs every request it gets.

// Requests are logged with the real clock: the test reads the gaps between them.
#![allow(clippy::disallowed_types)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How the fake misbehaves.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hostile {
    /// Answer every list of Leases with this many bytes (never ending in practice).
    pub list_bytes: Option<u64>,
    /// Take this long over every Event created.
    pub event_delay: Option<Duration>,
    /// Start with this many Leases of fleet `kms` that memprobe did not write.
    pub strangers: usize,
}

#[derive(Default)]
struct Store {
    leases: HashMap<String, Value>,
    version: u64,
}

pub struct FakeApi {
    pub port: u16,
    log: Arc<Mutex<Vec<(Instant, String, String)>>>,
    /// Requests whose path contains this are refused 403 Forbidden, as RBAC refuses them.
    forbidden: Arc<Mutex<Option<String>>>,
    /// The Events created, as sent.
    events: Arc<Mutex<Vec<Value>>>,
}

impl FakeApi {
    pub fn start(hostile: Hostile) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut kept = Store::default();
        for i in 0..hostile.strangers {
            let name = format!("stranger-{i:05}");
            let lease = json!({"metadata": {"name": name, "resourceVersion": "1",
                                            "labels": {"memprobe.io/fleet": "kms"}},
                               "spec": {"holderIdentity": "stranger"}});
            kept.leases.insert(name, lease);
        }
        let store = Arc::new(Mutex::new(kept));
        let seen = Arc::clone(&log);
        let forbidden = Arc::new(Mutex::new(None));
        let refusing = Arc::clone(&forbidden);
        let events = Arc::new(Mutex::new(Vec::new()));
        let created = Arc::clone(&events);
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let (log, store) = (Arc::clone(&seen), Arc::clone(&store));
                let (refusing, created) = (Arc::clone(&refusing), Arc::clone(&created));
                std::thread::spawn(move || {
                    serve(conn, hostile, &log, &store, &refusing, &created);
                });
            }
        });
        FakeApi {
            port,
            log,
            forbidden,
            events,
        }
    }

    /// The Events created so far, as memprobe sent them.
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// From now on, requests whose path contains `part` are refused 403 (none with `None`).
    pub fn forbid(&self, part: Option<&str>) {
        *self.forbidden.lock().unwrap() = part.map(str::to_owned);
    }

    /// A kubeconfig for it, in `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: \
             http://127.0.0.1:{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    \
             user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: \
             fake-token\n",
            self.port
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Every request so far: when it came, its method and path (query included).
    pub fn requests(&self) -> Vec<(Instant, String, String)> {
        self.log.lock().unwrap().clone()
    }
}

fn serve(
    conn: TcpStream,
    hostile: Hostile,
    log: &Mutex<Vec<(Instant, String, String)>>,
    store: &Mutex<Store>,
    forbidden: &Mutex<Option<String>>,
    events: &Mutex<Vec<Value>>,
) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        log.lock()
            .unwrap()
            .push((Instant::now(), method.clone(), target.clone()));
        let path = target.split('?').next().unwrap_or("").to_string();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let refused = forbidden
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|part| path.contains(part.as_str()));
        let (code, answer) = match (method.as_str(), path.as_str()) {
            _ if refused => (403, status(403, "Forbidden")),
            ("GET", p) if p.contains("/pods/") => (200, pod(p)),
            ("GET", p) if p.ends_with("/leases") => {
                if let Some(bytes) = hostile.list_bytes {
                    huge_list(&mut writer, bytes);
                    return;
                }
                // In pages, as the API server answers `limit` and `continue`.
                let query = |key: &str| {
                    target.split_once('?').and_then(|(_, q)| {
                        q.split('&')
                            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                    })
                };
                let limit = query("limit")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(usize::MAX);
                let after = query("continue").unwrap_or("").to_string();
                let store = store.lock().unwrap();
                let mut names: Vec<&String> = store.leases.keys().collect();
                names.sort();
                let rest: Vec<&String> = names
                    .into_iter()
                    .filter(|n| n.as_str() > after.as_str())
                    .collect();
                let page: Vec<Value> = rest
                    .iter()
                    .take(limit)
                    .map(|n| store.leases[*n].clone())
                    .collect();
                let next = if rest.len() > limit {
                    rest[limit - 1].to_string()
                } else {
                    String::new()
                };
                (
                    200,
                    json!({"kind": "LeaseList", "apiVersion": "coordination.k8s.io/v1",
                              "metadata": {"resourceVersion": store.version.to_string(),
                                           "continue": next},
                              "items": page}),
                )
            }
            ("GET", p) if p.contains("/leases/") => {
                let name = p.rsplit('/').next().unwrap_or("");
                match store.lock().unwrap().leases.get(name) {
                    Some(lease) => (200, lease.clone()),
                    None => (404, status(404, "NotFound")),
                }
            }
            ("POST", p) if p.ends_with("/leases") => write(store, body, None),
            ("PUT", p) if p.contains("/leases/") => {
                write(store, body, Some(p.rsplit('/').next().unwrap_or("")))
            }
            ("DELETE", p) if p.contains("/leases/") => {
                let name = p.rsplit('/').next().unwrap_or("");
                match store.lock().unwrap().leases.remove(name) {
                    Some(_) => (200, status(200, "Success")),
                    None => (404, status(404, "NotFound")),
                }
            }
            ("POST", p) if p.ends_with("/events") => {
                if let Some(delay) = hostile.event_delay {
                    std::thread::sleep(delay);
                }
                events.lock().unwrap().push(body.clone());
                (201, body)
            }
            _ => (404, status(404, "NotFound")),
        };
        let text = answer.to_string();
        let reply = format!(
            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
           "reason": reason, "message": reason})
}

/// A pod of a StatefulSet `kms`.
fn pod(path: &str) -> Value {
    let name = path.rsplit('/').next().unwrap_or("");
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
           "metadata": {"name": name, "namespace": "media", "uid": format!("uid-{name}"),
                        "labels": {"app": "kms"},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                                             "name": "kms", "uid": "uid-kms", "controller": true}]}})
}

fn write(store: &Mutex<Store>, mut lease: Value, replacing: Option<&str>) -> (u16, Value) {
    let mut store = store.lock().unwrap();
    let name = lease["metadata"]["name"].as_str().unwrap_or("").to_string();
    let current = store
        .leases
        .get(&name)
        .map(|l| l["metadata"]["resourceVersion"].clone());
    match (replacing, current) {
        (None, Some(_)) => return (409, status(409, "AlreadyExists")),
        (Some(_), None) => return (404, status(404, "NotFound")),
        (Some(_), Some(version)) if lease["metadata"]["resourceVersion"] != version => {
            return (409, status(409, "Conflict"));
        }
        _ => {}
    }
    store.version += 1;
    lease["metadata"]["resourceVersion"] = json!(store.version.to_string());
    store.leases.insert(name, lease.clone());
    (if replacing.is_some() { 200 } else { 201 }, lease)
}

/// A list of Leases `bytes` long, written as it goes (the fake keeps none of it).
fn huge_list(writer: &mut TcpStream, bytes: u64) {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {bytes}\r\n\r\n\
         {{\"kind\":\"LeaseList\",\"apiVersion\":\"coordination.k8s.io/v1\",\"metadata\":{{}},\"items\":["
    );
    if writer.write_all(head.as_bytes()).is_err() {
        return;
    }
    let item = "{\"metadata\":{\"name\":\"memprobe-kms-wait-x\",\"labels\":{\"memprobe.io/fleet\":\"kms\"}},\"spec\":{\"holderIdentity\":\"x\"}},".repeat(200);
    let mut sent = head.len() as u64;
    while sent < bytes {
        if writer.write_all(item.as_bytes()).is_err() {
            return;
        }
        sent += item.len() as u64;
    }
}
