//! memprobe as a hostile client and a careless operator would try it: floods of connections,
//! files that never end, secrets in flags, values that overflow, signals.

// Floods and shutdowns run on the real clock.
#![allow(clippy::disallowed_types)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::fast;
use crate::harness::cgroup::Cgroup;
use crate::harness::{self, Memprobe, Workload, flood, run_to_end, shipped};

const MIB: u64 = 1 << 20;

/// One GET on a fresh connection, with its own deadline; the status code and how long it took.
fn probe(addr: SocketAddr, path: &str) -> (u16, Duration) {
    let started = Instant::now();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let code =
        harness::request(&agent, "GET", &format!("http://{addr}{path}")).map_or(0, |r| r.code);
    (code, started.elapsed())
}

#[test]
fn a_flood_of_idle_and_half_sent_connections_takes_no_probe_away_and_little_memory() {
    harness::many_files();
    let binary = shipped();
    let binary = binary
        .as_deref()
        .unwrap_or(std::path::Path::new(harness::MEMPROBE));
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let probe_port = Memprobe::start_binary(binary, &fast(&["--pid", &pid]), &[]);
    probe_port.wait_state("healthy");
    for _ in 0..50 {
        probe(probe_port.addr, "/status");
    }
    let idle = probe_port.rss_bytes();

    let connections = flood(probe_port.addr, 10_000);
    assert!(
        connections.len() >= 9_000,
        "the flood could open only {} connections",
        connections.len()
    );
    let mut peak = probe_port.rss_bytes();
    for path in ["/ready", "/healthz"].repeat(10) {
        let (code, took) = probe(probe_port.addr, path);
        assert_eq!(code, 200, "{path} answers under a flood");
        assert!(
            took < Duration::from_secs(1),
            "{path} took {took:?} with 10,000 connections open"
        );
        peak = peak.max(probe_port.rss_bytes());
    }
    drop(connections);
    eprintln!(
        "flood figures ({}): idle {:.1} MiB, peak {:.1} MiB",
        binary.display(),
        idle as f64 / MIB as f64,
        peak as f64 / MIB as f64
    );
    if binary == std::path::Path::new(harness::MEMPROBE) {
        // The dev build's figures are not the ones users run.
        return harness::skip("the memory bounds: only the shipped binary's figures count");
    }
    assert!(
        peak < 16 * MIB,
        "memprobe grew to {peak} bytes under the flood"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = probe_port.rss_bytes();
        if now <= idle + 2 * MIB {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "30 s after the flood memprobe holds {now} bytes against {idle} idle"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_kept_alive_connection_idle_past_the_header_timeout_is_closed() {
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let memprobe = Memprobe::start(&fast(&["--pid", &pid]));
    let mut stream = TcpStream::connect(memprobe.addr).unwrap();
    stream
        .write_all(b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buffer = [0u8; 4096];
    let n = stream.read(&mut buffer).unwrap();
    assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    assert!(
        stream.read(&mut buffer).is_err(),
        "the connection is kept alive for a while: this checks the idle timeout, not a close"
    );
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let closed = stream.read(&mut buffer).map_or(true, |n| n == 0);
    assert!(
        closed,
        "an idle kept-alive connection is closed by memprobe"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "closed after the 5 s header timeout, not never"
    );
}

#[test]
fn a_large_request_body_is_refused() {
    let memprobe = Memprobe::start(&fast(&["--pid", "4194303"]));
    let mut stream = TcpStream::connect(memprobe.addr).unwrap();
    stream
        .write_all(b"POST /ready HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buffer = [0u8; 1024];
    let n = stream.read(&mut buffer).unwrap();
    let head = String::from_utf8_lossy(&buffer[..n]);
    assert!(
        head.starts_with("HTTP/1.1 413") || head.starts_with("HTTP/1.1 405"),
        "{head}"
    );
}

#[test]
fn a_pidfile_that_never_ends_costs_nothing_and_says_so_briefly() {
    let memprobe = Memprobe::start(&fast(&["--pidfile", "/dev/zero"]));
    let status = memprobe.wait_for("the pidfile read", |s| {
        s["reason"].as_str().is_some_and(|r| r.contains("pidfile"))
    });
    let reason = status["reason"].as_str().unwrap();
    assert!(reason.contains("not a regular file"), "{reason}");
    assert!(memprobe.get("/ready").body.len() < 300);
    assert!(memprobe.rss_bytes() < 64 * MIB);

    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.pid");
    std::fs::write(&big, "7".repeat(50 << 20)).unwrap();
    let memprobe = Memprobe::start(&fast(&["--pidfile", big.to_str().unwrap()]));
    let status = memprobe.wait_for("the pidfile read", |s| {
        s["reason"].as_str().is_some_and(|r| r.contains("pidfile"))
    });
    assert!(
        status["reason"].as_str().unwrap().len() < 300,
        "a 50 MB pidfile makes a short reason: {status:#}"
    );
    assert!(memprobe.get("/status").body.len() < 64 * 1024);
}

#[test]
fn a_secret_in_the_kms_url_is_never_shown() {
    let memprobe = Memprobe::start(&[
        "--interval",
        "100ms",
        "--pid",
        "4194303",
        "--kms-url",
        "ws://admin:S3cr3t@127.0.0.1:9/kurento?token=X",
        "--kms-timeout",
        "200ms",
    ]);
    let status = memprobe.wait_for("a connection attempt", |s| {
        !s["kms"]["last_error"].is_null()
    });
    memprobe.never_shown(&["S3cr3t", "token=X"]);
    assert_eq!(
        status["settings"]["kms_url"],
        "ws://admin:***@127.0.0.1:9/kurento?token=***"
    );
    assert_eq!(status["kms"]["url"], status["settings"]["kms_url"]);
}

#[test]
fn values_that_would_overflow_or_spin_exit_2_naming_the_flag() {
    for (args, names) in [
        (&["--interval", "200000000000y"][..], "--interval"),
        (&["--kms-timeout", "300000000000y"], "--kms-timeout"),
        (
            &["--kms-ping-interval", "300000000000y"],
            "--kms-ping-interval",
        ),
        (&["--interval", "1ns"], "--interval"),
        (&["--threshold", "-5MiB"], "--threshold"),
        (
            &[
                "--memory-limit",
                "4Gi",
                "--threshold",
                "80%",
                "--critical",
                "1Mi",
            ],
            "--critical",
        ),
        (
            &["--memory-limit", "4Gi", "--threshold", "5Gi"],
            "--threshold",
        ),
        (&["--memory-limit", "1"], "--memory-limit"),
        (&["--kms-url", "ws://kms:70000/kurento"], "--kms-url"),
        (&["--pid", "2"], "--pid"),
    ] {
        let output = run_to_end(args, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if args == ["--pid", "2"] && !stderr.contains("kernel thread") {
            // pid 2 is kthreadd only where the host's pid namespace is seen.
            continue;
        }
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(names), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn booleans_from_the_environment_read_as_people_write_them() {
    for value in ["1", "true", "yes", "on", "0", "false", "no", "off"] {
        let output = run_to_end(
            &["--memory-source", "kms"],
            &[("MEMPROBE_INCLUDE_CHILDREN", value)],
        );
        // Any boolean is read; the refusal is then about --memory-source kms, never the value.
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("is not a boolean"),
            "{value} is a boolean: {stderr}"
        );
    }
    let output = run_to_end(&[], &[("MEMPROBE_INCLUDE_CHILDREN", "")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("memprobe: MEMPROBE_INCLUDE_CHILDREN: '' is not a boolean"),
        "an empty variable is named, not the flag: {stderr}"
    );
}

/// One request on an open keep-alive connection; the status line.
fn on_connection(stream: &mut TcpStream, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut buffer = [0u8; 4096];
    let n = stream.read(&mut buffer).unwrap_or(0);
    let text = String::from_utf8_lossy(&buffer[..n]);
    text.lines().next().unwrap_or_default().to_string()
}

#[test]
fn on_sigterm_ready_fails_at_once_the_port_answers_through_the_delay_then_exits_0() {
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let mut memprobe = Memprobe::start(&fast(&["--pid", &pid, "--shutdown-delay", "2s"]));
    memprobe.wait_state("healthy");
    let mut kept = TcpStream::connect(memprobe.addr).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(on_connection(&mut kept, "/ready"), "HTTP/1.1 200 OK");

    memprobe.signal("TERM");
    let signalled = Instant::now();
    let deadline = signalled + Duration::from_secs(10);
    while on_connection(&mut kept, "/ready") != "HTTP/1.1 503 Service Unavailable" {
        assert!(Instant::now() < deadline, "/ready never turned 503");
    }
    assert_eq!(
        probe(memprobe.addr, "/ready").0,
        503,
        "a new connection during the delay is answered 503, not refused"
    );
    assert_eq!(probe(memprobe.addr, "/healthz").0, 200);
    let status = memprobe.wait_exit();
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "a clean stop exits 0");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "exits after the 2 s delay and within 2 s of it (took {took:?})"
    );
}

#[test]
fn a_second_sigterm_stops_at_once_and_other_signals_are_ignored() {
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let mut memprobe = Memprobe::start(&fast(&["--pid", &pid, "--shutdown-delay", "5m"]));
    memprobe.wait_state("healthy");
    for signal in ["HUP", "USR1", "USR2"] {
        memprobe.signal(signal);
    }
    memprobe.wait_for("the ignored signals logged", |_| {
        memprobe
            .logs()
            .iter()
            .filter(|l| l.contains("ignored"))
            .count()
            == 3
    });
    assert!(
        memprobe.running(),
        "SIGHUP, SIGUSR1 and SIGUSR2 are not fatal"
    );
    assert_eq!(memprobe.get("/livez").code, 200);

    memprobe.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while memprobe.get("/ready").code != 503 {
        assert!(Instant::now() < deadline, "/ready never turned 503");
    }
    memprobe.signal("TERM");
    let signalled = Instant::now();
    let status = memprobe.wait_exit();
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "the second SIGTERM does not wait for the 5 m delay"
    );
}

/// One raw HTTP/1.1 exchange on a fresh connection: the answer's status line, its headers
/// but `date` (sorted), and its body.
fn exchange(addr: SocketAddr, request: &str) -> (String, Vec<String>, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_string();
    let mut headers: Vec<String> = lines
        .map(str::to_ascii_lowercase)
        .filter(|h| !h.starts_with("date:"))
        .collect();
    headers.sort();
    (status, headers, body.to_string())
}

/// `/ready` and `/healthz` take a short path beside the router; it must answer exactly as
/// the router does (which still takes probes that come with a body), on the shipped binary.
#[test]
fn the_probes_short_path_answers_exactly_as_the_router() {
    let Some(binary) = shipped() else {
        return;
    };
    let mut target = Workload::start(None);
    let pid = target.pid.to_string();
    let memprobe = Memprobe::start_binary(&binary, &fast(&["--pid", &pid, "--sustain", "1s"]), &[]);
    let compare = |path: &str| {
        let short = exchange(
            memprobe.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        );
        let routed = exchange(
            memprobe.addr,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{{}}"
            ),
        );
        assert_eq!(short, routed, "{path}: the short path and the router agree");
        let head = exchange(
            memprobe.addr,
            &format!("HEAD {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!((&head.0, &head.1), (&short.0, &short.1), "HEAD: same head");
        assert_eq!(head.2, "", "HEAD: no body");
        short
    };
    memprobe.wait_state("healthy");
    let (status, headers, body) = compare("/ready");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains(&"cache-control: no-store".to_string()),
        "{headers:?}"
    );
    assert!(headers.contains(&"content-type: application/json".to_string()));
    assert!(body.contains(r#""ready":true"#), "{body}");
    compare("/healthz");
    target.send("alloc 150MiB");
    memprobe.wait_state("draining");
    let (status, _, body) = compare("/ready");
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert!(body.contains(r#""state":"draining""#), "{body}");
    let (status, _, _) = compare("/healthz");
    assert_eq!(status, "HTTP/1.1 200 OK");
}

/// Under a low descriptor limit the cap shrinks to fit (and at EMFILE the connection idle
/// longest is closed): a flood still takes no probe away.
#[test]
fn under_a_low_open_files_limit_a_flood_takes_no_probe_away() {
    let Some(prlimit) = harness::tool("prlimit") else {
        return;
    };
    harness::many_files();
    let binary = shipped().unwrap_or_else(|| harness::MEMPROBE.into());
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    for limit in ["64", "16"] {
        let mut command = std::process::Command::new(&prlimit);
        command
            .arg(format!("--nofile={limit}:{limit}"))
            .arg(&binary);
        let mut memprobe = Memprobe::start_command(command, &fast(&["--pid", &pid]), &[]);
        memprobe.wait_state("healthy");
        memprobe.said_once(&format!("open-files limit ({limit})"));
        let connections = flood(memprobe.addr, 2_000);
        for path in ["/ready", "/healthz"].repeat(5) {
            let (code, took) = probe(memprobe.addr, path);
            assert_eq!(code, 200, "{path} answers with {limit} descriptors");
            assert!(
                took < Duration::from_secs(1),
                "{path} took {took:?} with {limit} descriptors"
            );
        }
        assert!(memprobe.running());
        drop(connections);
    }
}

/// Clients that pipeline requests for the largest answer and never read.
struct Stalled {
    addr: SocketAddr,
    open: Vec<Option<TcpStream>>,
}

impl Stalled {
    const BATCH: &str = "GET /history.json HTTP/1.1\r\nHost: stalled\r\n\r\n";

    fn open(addr: SocketAddr, count: usize) -> Self {
        let mut stalled = Stalled {
            addr,
            open: (0..count).map(|_| None).collect(),
        };
        stalled.top_up();
        stalled
    }

    /// Pipelines more requests on every connection, as much as the socket takes without
    /// waiting; opens again any that memprobe closed.
    fn top_up(&mut self) {
        let batch = Self::BATCH.repeat(100);
        for slot in &mut self.open {
            let alive = slot
                .as_mut()
                .is_some_and(|s| match s.write(batch.as_bytes()) {
                    Ok(_) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                });
            if !alive {
                *slot = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
                    .ok()
                    .filter(|s| s.set_nonblocking(true).is_ok());
                if let Some(s) = slot {
                    let _ = s.write(batch.as_bytes());
                }
            }
        }
    }
}

/// 400 connections that pipeline `GET /history.json` with a full history and never read, then
/// the 10,000-connection flood, all against the shipped binary in a 32 MiB memory cgroup:
/// memprobe is never killed and `/ready` keeps answering within a second.
#[test]
fn clients_that_never_read_cannot_grow_memprobe_past_a_32_mib_cgroup() {
    let Some(binary) = shipped() else {
        return;
    };
    let Some(cgroup) = Cgroup::limited(&harness::unique_name("memprobe-stalled"), 32 * MIB) else {
        return;
    };
    harness::many_files();
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    // Every 10 ms a new snapshot: each answer is a history rendered anew, none shared.
    let args = ["--pid", &pid, "--interval", "10ms", "--history", "20s"];
    let mut memprobe = Memprobe::start_command(cgroup.command(&binary), &args, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while memprobe
        .get("/history.json")
        .json()
        .as_array()
        .map(Vec::len)
        != Some(2000)
    {
        assert!(Instant::now() < deadline, "the history never filled");
        std::thread::sleep(Duration::from_millis(200));
    }
    let idle = memprobe.rss_bytes();

    // One reader that stops: two full histories fill every buffer between us, and the write
    // that then goes nowhere closes the connection after the send timeout. Bytes sent to a
    // connection memprobe closed come back as a reset.
    let mut one = TcpStream::connect(memprobe.addr).unwrap();
    one.write_all(Stalled::BATCH.repeat(2).as_bytes()).unwrap();
    let stopped_reading = Instant::now();
    while one.write_all(b"\r\n").is_ok() {
        assert!(
            stopped_reading.elapsed() < Duration::from_secs(30),
            "a connection whose client reads nothing is never closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        stopped_reading.elapsed() >= Duration::from_secs(4),
        "closed by the 5 s send timeout, not before ({:?})",
        stopped_reading.elapsed()
    );

    let mut stalled = Stalled::open(memprobe.addr, 400);
    let (mut peak, mut worst, mut probes) = (idle, Duration::ZERO, 0);
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        stalled.top_up();
        let (code, took) = probe(memprobe.addr, "/ready");
        assert!(
            memprobe.running(),
            "memprobe was killed under 400 stalled readers (OOM kills: {})",
            cgroup.oom_kills()
        );
        assert_eq!(code, 200, "/ready answers under 400 stalled readers");
        assert!(
            took < Duration::from_secs(1),
            "/ready took {took:?} under 400 stalled readers"
        );
        (peak, worst, probes) = (peak.max(memprobe.rss_bytes()), worst.max(took), probes + 1);
    }
    drop(stalled);
    let flood = flood(memprobe.addr, 10_000);
    for path in ["/ready", "/healthz"].repeat(5) {
        let (code, took) = probe(memprobe.addr, path);
        assert_eq!(code, 200, "{path} answers under the flood, in the cgroup");
        assert!(took < Duration::from_secs(1), "{path} took {took:?}");
    }
    drop(flood);
    assert!(memprobe.running(), "memprobe survived both attacks");
    assert_eq!(cgroup.oom_kills(), 0, "no OOM kill in memprobe's cgroup");
    eprintln!(
        "stalled readers: {probes} probes, worst {worst:?}; rss idle {:.1} MiB, peak {:.1} MiB; cgroup peak {:?} bytes",
        idle as f64 / MIB as f64,
        peak as f64 / MIB as f64,
        cgroup.peak_bytes()
    );
}
