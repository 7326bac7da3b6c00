//! A real HAProxy (Debian's) in front of two backends, each watched by its own memprobe over
//! its own workload, with memprobe's agent and `/healthz` as HAProxy's checks — the setup of
//! deploy/haproxy/haproxy.cfg, on loopback ports.

// HAProxy runs on the real clock.
#![allow(clippy::disallowed_types)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{DEADLINE, Memprobe, Workload, free_port, tool};

/// A tiny HTTP/1.1 server that answers every request with its own name, keep-alive included.
fn backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut line = String::new();
                    // Read one request head.
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{name}",
                        name.len()
                    );
                    if writer.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

struct Haproxy {
    child: Child,
    socket: PathBuf,
    pub frontend: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One backend server as HAProxy sees it: its traffic port, memprobe's HTTP and agent ports.
struct Server {
    name: &'static str,
    traffic: SocketAddr,
    memprobe: SocketAddr,
    agent: SocketAddr,
}

impl Haproxy {
    fn start(bin: &Path, servers: &[Server]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let frontend: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut config = format!(
            "global\n  stats socket {} level admin\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
             frontend fe\n  bind {frontend}\n  default_backend media\n\
             backend media\n  balance roundrobin\n  cookie SRV insert indirect nocache\n\
             \x20 option httpchk GET /healthz\n",
            socket.display()
        );
        for s in servers {
            config.push_str(&format!(
                "  server {name} {traffic} weight 100 cookie {name} check port {http} inter 500ms \
                 agent-check agent-addr 127.0.0.1 agent-port {agent} agent-inter 300ms\n",
                name = s.name,
                traffic = s.traffic,
                http = s.memprobe.port(),
                agent = s.agent.port(),
            ));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, &config).unwrap();
        let check = Command::new(bin)
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .unwrap();
        assert!(check.status.success(), "haproxy -c: {check:?}\n{config}");
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        Haproxy {
            child,
            socket,
            frontend,
            _dir: dir,
        }
    }

    /// `show stat` for the backend's servers: name → (status, weight). A status may carry
    /// what set it: `DRAIN (agent)`.
    fn servers(&self) -> HashMap<String, (String, u32)> {
        let Ok(mut socket) = UnixStream::connect(&self.socket) else {
            return HashMap::new();
        };
        socket.write_all(b"show stat\n").unwrap();
        let mut text = String::new();
        socket.read_to_string(&mut text).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let (px, sv, status, weight) = (col("pxname"), col("svname"), col("status"), col("weight"));
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > weight && f[px] == "media" && f[sv] != "BACKEND")
            .map(|f| {
                (
                    f[sv].to_string(),
                    (f[status].to_string(), f[weight].parse().unwrap_or(0)),
                )
            })
            .collect()
    }

    fn wait_for(&self, what: &str, cond: impl Fn(&HashMap<String, (String, u32)>) -> bool) {
        let start = Instant::now();
        loop {
            let servers = self.servers();
            if cond(&servers) {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "waited for {what}; show stat: {servers:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One request through HAProxy on a fresh connection; which backend answered.
    fn fresh_request(&self) -> String {
        let mut stream = TcpStream::connect(self.frontend).unwrap();
        request(&mut stream, None)
    }
}

/// One request on `stream`, with a persistence cookie if given; the body (a backend's name).
fn request(stream: &mut TcpStream, cookie: Option<&str>) -> String {
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: SRV={c}\r\n"));
    write!(stream, "GET / HTTP/1.1\r\nHost: media\r\n{cookie}\r\n").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    String::from_utf8(body).unwrap()
}

/// Backend `name`: a tiny HTTP server, checked through `probe`'s HTTP port and agent.
fn server(name: &'static str, probe: &Memprobe) -> Server {
    Server {
        name,
        traffic: backend(name),
        memprobe: probe.addr,
        agent: probe.agent_addr(),
    }
}

/// A workload and the memprobe watching it, with the agent on.
fn watched(extra: &[&str]) -> (Workload, Memprobe) {
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let mut args = vec![
        "--pid",
        &pid,
        "--interval",
        "100ms",
        "--agent-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let probe = Memprobe::start(&args);
    probe.wait_state("healthy");
    (target, probe)
}

#[test]
fn a_draining_server_is_drain_in_haproxy_keeping_its_sticky_calls_then_down_at_recycle() {
    let Some(bin) = tool("haproxy") else { return };
    let settings = [
        "--threshold",
        "100MiB",
        "--sustain",
        "1s",
        "--drain-timeout",
        "8s",
    ];
    let (mut target_a, probe_a) = watched(&settings);
    let (_target_b, probe_b) = watched(&settings);
    let servers = [server("a", &probe_a), server("b", &probe_b)];
    let haproxy = Haproxy::start(&bin, &servers);
    haproxy.wait_for("both servers UP", |s| {
        s.get("a").is_some_and(|a| a.0.starts_with("UP"))
            && s.get("b").is_some_and(|b| b.0.starts_with("UP"))
    });

    // A caller pinned to a, on a connection opened before the drain.
    let mut sticky = TcpStream::connect(haproxy.frontend).unwrap();
    assert_eq!(request(&mut sticky, Some("a")), "a");

    target_a.send("alloc 150MiB");
    probe_a.wait_state("draining");
    haproxy.wait_for("a in DRAIN", |s| {
        s.get("a").is_some_and(|a| a.0.starts_with("DRAIN"))
    });
    for _ in 0..20 {
        assert_eq!(
            haproxy.fresh_request(),
            "b",
            "a draining server gets no new session"
        );
    }
    assert_eq!(
        request(&mut sticky, Some("a")),
        "a",
        "the call in progress on a keeps working while a drains"
    );

    probe_a.wait_state("recycle");
    haproxy.wait_for("a DOWN", |s| {
        s.get("a").is_some_and(|a| a.0.starts_with("DOWN"))
    });
    assert_eq!(haproxy.fresh_request(), "b");
}

#[test]
fn with_headroom_weights_the_fuller_server_gets_fewer_new_sessions() {
    let Some(bin) = tool("haproxy") else { return };
    let settings = ["--threshold", "400MiB", "--agent-weight", "headroom"];
    let (mut target_a, probe_a) = watched(&settings);
    let (_target_b, probe_b) = watched(&settings);
    // About 75% of the threshold: half the weight.
    target_a.send("alloc 300MiB");
    probe_a.wait_for("a's sample of 300 MiB", |s| {
        s["memory"]["rss_bytes"].as_u64() > Some(290 << 20)
    });
    let servers = [server("a", &probe_a), server("b", &probe_b)];
    let haproxy = Haproxy::start(&bin, &servers);
    haproxy.wait_for("a weighted below b", |s| {
        matches!((s.get("a"), s.get("b")), (Some(a), Some(b))
            if a.0.starts_with("UP") && b.0.starts_with("UP") && a.1 < b.1 && a.1 > 0)
    });
    let mut served: HashMap<String, u32> = HashMap::new();
    for _ in 0..90 {
        *served.entry(haproxy.fresh_request()).or_default() += 1;
    }
    let (a, b) = (
        served.get("a").copied().unwrap_or(0),
        served.get("b").copied().unwrap_or(0),
    );
    assert!(
        a < b && a > 0,
        "new sessions follow the weights: a {a}, b {b} ({:?})",
        haproxy.servers()
    );
}
