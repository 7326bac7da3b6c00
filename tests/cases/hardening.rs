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
/// How long a probe may take here before a test calls it unanswered. The kubelet's 1 s is a
/// benchmark's figure (BENCHMARKS.md, measured by `benches/run`): on a test machine busy with
/// other tests a probe answered late is still answered, while one that waits on a blocked read
/// or a full queue is not answered at all, and that is what these tests tell apart.
const ANSWERED: Duration = Duration::from_secs(4);

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
    let binary = harness::shipped_or_dev();
    let binary = binary.as_path();
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
            took < ANSWERED,
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
    let own = std::process::id().to_string();
    let memprobe = Memprobe::start(&fast(&["--pid", &own]));
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
    // /dev/zero is refused at start; one that turns into it later is found while running.
    let dir = tempfile::tempdir().unwrap();
    let zero = dir.path().join("zero.pid");
    let memprobe = Memprobe::start(&fast(&["--pidfile", zero.to_str().unwrap()]));
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    // Until the link is there, the reason is a pidfile that does not exist yet.
    let status = memprobe.wait_for("the device refused", |s| {
        s["reason"]
            .as_str()
            .is_some_and(|r| r.contains("pidfile") && r.contains("not a regular file"))
    });
    let reason = status["reason"].as_str().unwrap();
    assert!(reason.contains("is a character device"), "{reason}");
    assert!(memprobe.get("/ready").body.len() < 300);
    assert!(memprobe.rss_bytes() < 64 * MIB);

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
    let own = std::process::id().to_string();
    let memprobe = Memprobe::start(&[
        "--interval",
        "100ms",
        "--pid",
        &own,
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

    // Taken before the signal is sent: memprobe's delay starts when it receives it.
    let signalled = Instant::now();
    memprobe.signal("TERM");
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
        took >= Duration::from_secs(2) && took < Duration::from_secs(20),
        "exits after the 2 s delay, not before, and does not hang on (took {took:?})"
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
    memprobe.wait_live();

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
        signalled.elapsed() < Duration::from_secs(25),
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

/// One `/drain` call on a fresh connection, with a deadline far past any honest answer; the
/// status code (0 for no answer at all) and how long it took.
fn drain_call(addr: SocketAddr, method: &str, token: Option<&str>) -> (u16, Duration) {
    let started = Instant::now();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!("http://{addr}/drain");
    let auth = token.map(|t| format!("Bearer {t}"));
    let answer = match (method, &auth) {
        ("GET", Some(a)) => agent.get(&url).header("Authorization", a).call(),
        ("GET", None) => agent.get(&url).call(),
        ("POST", None) => agent.post(&url).send_empty(),
        other => panic!("no {other:?} here"),
    };
    (answer.map_or(0, |r| r.status().as_u16()), started.elapsed())
}

/// A FIFO at `--admin-token-file`'s path (a hung network mount acts alike) is never opened
/// the blocking way, and the file is never read on the threads that answer: however many
/// `/drain` calls come, the probes answer, every call gets its answer, and the token in force
/// goes on working.
#[test]
fn a_fifo_at_the_token_path_under_a_flood_of_drain_calls_takes_no_probe_away() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let binary = harness::shipped_or_dev();
    let binary = binary.as_path();
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    let token = "fifo-test-token-0123456789";
    std::fs::write(&token_path, format!("{token}\n")).unwrap();
    let memprobe = Memprobe::start_binary(
        binary,
        &fast(&[
            "--pid",
            &pid,
            "--admin-token-file",
            token_path.to_str().unwrap(),
        ]),
        &[],
    );
    memprobe.wait_state("healthy");
    // The Secret's file turns into a FIFO that no one ever writes to.
    std::fs::remove_file(&token_path).unwrap();
    nix::unistd::mkfifo(&token_path, nix::sys::stat::Mode::S_IRWXU).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let callers: Vec<_> = [("GET", None), ("POST", None), ("GET", Some(token))]
        .into_iter()
        .cycle()
        .take(12)
        .map(|(method, auth)| {
            let (stop, answers, addr) = (Arc::clone(&stop), Arc::clone(&answers), memprobe.addr);
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let (code, took) = drain_call(addr, method, auth);
                    answers
                        .lock()
                        .unwrap()
                        .push((method, auth.is_some(), code, took));
                }
            })
        })
        .collect();
    // Long enough for the file to be due for a read again several times (once a second).
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < 20 || started.elapsed() < Duration::from_secs(4) {
        for path in ["/ready", "/healthz", "/livez"] {
            let (code, took) = probe(memprobe.addr, path);
            assert_eq!(code, 200, "{path} answers while /drain calls come");
            assert!(
                took < ANSWERED,
                "{path} took {took:?} with a FIFO at the token path"
            );
        }
        rounds += 1;
    }
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.join().unwrap();
    }
    let answers = answers.lock().unwrap();
    assert!(
        answers.len() >= 12,
        "the callers made {} calls",
        answers.len()
    );
    for &(method, authorized, code, took) in answers.iter() {
        let expected = if authorized { 200 } else { 401 };
        assert_eq!(
            code, expected,
            "{method} /drain (token: {authorized}) got an answer in {took:?}, and the right one"
        );
    }
    memprobe.said_once("is a FIFO, not a regular file");
    memprobe.never_shown(&[token]);
}

/// memprobe's exit code and stderr with these arguments and environment; `None` for the code
/// if it was still running after a few seconds (it took the input) and had to be killed.
fn exit_of(binary: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let child = std::process::Command::new(binary)
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start memprobe");
    let mut child = harness::Reaped(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = child.0.try_wait().expect("wait memprobe") {
            break status.code();
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = child.0.kill();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.0.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (code, stderr)
}

/// Every flag of every integration, given a bad value while that integration is off (the
/// target is a plain `--pid`, so KMS, Janus, the agent, the admin API and any recycle action
/// are off), is refused at start: exit 2, one line naming the flag (or its variable), the
/// value unless it is a secret, and a value that works. The table must hold every flag
/// `--help` lists.
#[test]
fn every_flag_with_a_bad_value_exits_2_naming_it_whether_or_not_its_integration_runs() {
    let binary = harness::shipped_or_dev();
    let binary = binary.as_path();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let fifo = fifo.to_str().unwrap();
    // (flag, a bad value, whether the value may be shown: a secret's never is)
    let table: &[(&str, &str, bool)] = &[
        ("--pid", "12ab", true),
        ("--pidfile", "/dev/zero", true),
        ("--name", "a/b", true),
        ("--user", "no-such-user-here", true),
        ("--include-children", "maybe", true),
        ("--interval", "soon", true),
        ("--memory", "vsz", true),
        ("--threshold", "lots", true),
        ("--critical", "lots", true),
        ("--memory-limit", "lots", true),
        ("--sustain", "9days", true),
        ("--drain-timeout", "9days", true),
        ("--min-drain", "9days", true),
        ("--idle-sustain", "9days", true),
        ("--recycle-when-idle-within", "tonight", true),
        ("--kms-url", "http://kms:8888/kurento", true),
        ("--janus-url", "ws://janus:7088/admin", true),
        ("--janus-secret", " ", false),
        ("--janus-secret-file", fifo, true),
        ("--janus-poll", "9days", true),
        ("--janus-drain-switch", "maybe", true),
        ("--sessions-url", "https://sfu/stats", true),
        ("--sessions-file", fifo, true),
        ("--sessions-poll", "9days", true),
        ("--sessions-hang-timeout", "soon", true),
        ("--kms-url-file", fifo, true),
        ("--kms-ping-interval", "9days", true),
        ("--kms-timeout", "300000000000y", true),
        ("--kms-failures", "0", true),
        ("--kms-hang-timeout", "9days", true),
        ("--kms-gc-period", "-1s", true),
        ("--kms-teardown-timeout", "soon", true),
        ("--kms-gate", "nowhere", true),
        ("--memory-source", "disk", true),
        ("--listen", "nowhere", true),
        ("--agent-listen", "nowhere", true),
        ("--agent-weight", "heavy", true),
        ("--on-recycle", "reboot", true),
        ("--recycle-retry", "9days", true),
        ("--history", "9days", true),
        ("--shutdown-delay", "1h", true),
        ("--admin-token", "hunter2", false),
        ("--admin-token-file", fifo, true),
        ("--fleet", "swarm", true),
        ("--fleet-name", "Media_KMS", true),
        ("--fleet-drain-budget", "0", true),
        ("--fleet-lease-duration", "1s", true),
        ("--events", "maybe", true),
        ("--pod-name", "KMS_0", true),
        ("--pod-namespace", "Media", true),
        ("--log-format", "xml", true),
    ];
    let help = run_to_end(&["--help"], &[]);
    let listed: Vec<String> = String::from_utf8_lossy(&help.stdout)
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("--"))
        .filter_map(|rest| rest.split([' ', '=', '[']).next())
        .map(|flag| format!("--{flag}"))
        .collect();
    let rows: Vec<&str> = table.iter().map(|(flag, _, _)| *flag).collect();
    assert_eq!(rows, listed, "one row per flag, in --help's order");

    let own = std::process::id().to_string();
    for &(flag, value, shown) in table {
        let variable = format!("MEMPROBE_{}", flag[2..].replace('-', "_").to_uppercase());
        // --pid is the other rows' target; its own row leaves the default target.
        let base: &[&str] = if flag == "--pid" {
            &[]
        } else {
            &["--pid", &own]
        };
        let by_flag = [base, &[flag, value]].concat();
        for (args, env, origin) in [
            (by_flag, vec![], flag.to_string()),
            (
                base.to_vec(),
                vec![(variable.as_str(), value)],
                variable.clone(),
            ),
        ] {
            let (code, stderr) = exit_of(binary, &args, &env);
            let line = stderr.trim_end();
            assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
            assert_eq!(line.lines().count(), 1, "one line: {stderr}");
            assert!(
                line.starts_with(&format!("memprobe: {origin}: ")),
                "{args:?} {env:?}: names {origin}: {line}"
            );
            if shown {
                assert!(
                    line.contains(&format!("'{value}'")),
                    "shows the value: {line}"
                );
            } else {
                assert!(
                    !line.contains(value.trim()) || value.trim().is_empty(),
                    "{line}"
                );
            }
            assert!(line.contains("(try"), "gives a value that works: {line}");
            assert!(!line.contains("panicked"), "{line}");
        }
    }
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
                took < ANSWERED,
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
/// memprobe is never killed and `/ready` keeps answering.
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
            took < ANSWERED,
            "/ready took {took:?} under 400 stalled readers"
        );
        (peak, worst, probes) = (peak.max(memprobe.rss_bytes()), worst.max(took), probes + 1);
    }
    drop(stalled);
    let flood = flood(memprobe.addr, 10_000);
    for path in ["/ready", "/healthz"].repeat(5) {
        let (code, took) = probe(memprobe.addr, path);
        assert_eq!(code, 200, "{path} answers under the flood, in the cgroup");
        assert!(took < ANSWERED, "{path} took {took:?}");
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

/// The operator's first mistakes are caught at start: the `%` forgotten in a Deployment's
/// variable exits 2; a misspelt flag or a size split from its unit keeps clap's whole message,
/// tip included; a 130 KB value is named by its start.
#[test]
fn the_operators_first_mistakes_exit_2_saying_what_was_meant() {
    // Each of these was taken, and memprobe ran: `exit_of` gives up after a few seconds.
    let binary = std::path::Path::new(harness::MEMPROBE);
    let (code, stderr) = exit_of(binary, &["--pid", "4194303"], &[]);
    assert_eq!(
        code,
        Some(2),
        "a pid not running at start is refused: {stderr}"
    );
    assert!(
        stderr.starts_with("memprobe: --pid: '4194303' is not a running process"),
        "{stderr}"
    );
    let own = std::process::id().to_string();
    let (code, stderr) = exit_of(binary, &["--pid", &own], &[("MEMPROBE_THRESHOLD", "80")]);
    assert_eq!(code, Some(2), "the % forgotten: {stderr}");
    assert!(
        stderr.starts_with(
            "memprobe: MEMPROBE_THRESHOLD: '80' is 80 B, too small to be a server's memory"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("(try 80%)"), "{stderr}");

    let output = run_to_end(&["--treshold", "80%"], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("memprobe: unexpected argument '--treshold'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("a similar argument exists: '--threshold'"),
        "clap's tip is kept: {stderr}"
    );

    let output = run_to_end(&["--threshold", "1.5", "GiB"], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("1.5GiB, not 1.5 GiB"), "{stderr}");

    let huge = "9".repeat(130_000) + "x";
    let output = run_to_end(&["--interval", &huge], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{}", stderr.len());
    assert_eq!(stderr.trim_end().lines().count(), 1);
    assert!(stderr.len() < 400, "{} bytes: {stderr}", stderr.len());
    assert!(stderr.contains("…' is not a duration"), "{stderr}");
}

/// On Kubernetes the environment is the configuration: a misspelt variable is warned of at
/// start, and the first lines say what the instance is judged by, with a warning when a
/// percentage is of the host's whole memory.
#[test]
fn the_start_warns_of_unknown_variables_and_says_what_the_instance_is_judged_by() {
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let memprobe = Memprobe::start_with(
        &[
            "--pid",
            &pid,
            "--interval",
            "100ms",
            "--kms-url",
            "none",
            "--threshold",
            "80%",
        ],
        &[("MEMPROBE_TRESHOLD", "60%")],
    );
    let status = memprobe.wait_state("healthy");
    let unknown = memprobe.said_once("MEMPROBE_TRESHOLD is not a variable memprobe reads");
    assert!(unknown.contains("WARN"), "{unknown}");
    assert!(
        unknown.contains("did you mean MEMPROBE_THRESHOLD?"),
        "{unknown}"
    );
    assert!(
        !unknown.contains("60%"),
        "the name alone, never the value: {unknown}"
    );
    let start = memprobe.said_once("judging rss: threshold 80%, critical off; percentages of");
    assert!(start.contains("INFO"), "{start}");
    let source = status["threshold"]["limit"]["source"]
        .as_str()
        .unwrap()
        .to_string();
    let judged = memprobe.said_once("judged by: threshold");
    assert!(judged.contains("(80% of "), "{judged}");
    assert!(judged.contains(&format!("from {source})")), "{judged}");
    let host = memprobe
        .logs()
        .iter()
        .filter(|l| l.contains("the memory limit is the host's MemTotal"))
        .count();
    assert_eq!(
        host,
        usize::from(source == "host MemTotal"),
        "a percentage of the host's memory is warned of, once; a cgroup's limit is not: {source}"
    );
}
