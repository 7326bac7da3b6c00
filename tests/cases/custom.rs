//! Any other server's session count (`--sessions-url`, `--sessions-file`), end to end: the
//! real memprobe watching a real workload, with the count said by a real HTTP server on
//! loopback or written to a real file.

use crate::harness::count_server::CountServer;
use crate::harness::{self, Memprobe, Workload, free_port, shipped};
use crate::{MI, fast};

#[test]
fn a_server_that_says_its_sessions_at_a_url_ends_a_drain_when_its_last_session_ends() {
    let mut target = Workload::start(None);
    let pid = target.pid.to_string();
    let server = CountServer::start(r#"{"rooms": {"active": 2}, "version": "1.0"}"#);
    let url = server.url("/stats#/rooms/active");
    let probe = Memprobe::start(&fast(&[
        "--pid",
        &pid,
        "--sessions-url",
        &url,
        "--sessions-poll",
        "100ms",
        "--sustain",
        "1s",
        "--min-drain",
        "1s",
    ]));
    let status = probe.wait_for("2 sessions", |s| {
        s["sessions"] == 2 && s["state"] == "healthy"
    });
    assert_eq!(status["custom"]["from"], url, "/status says where it reads");
    assert_eq!(
        server.host(),
        Some(server.addr.to_string()),
        "the Host header keeps the port"
    );
    assert_eq!(status["custom"]["connected"], true);
    let metrics = probe.get("/metrics").body;
    assert!(
        metrics.contains("memprobe_sessions{server=\"custom\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("memprobe_session_source_up{server=\"custom\"} 1"));

    target.send("alloc 150MiB");
    probe.wait_state("draining");
    let status = probe.wait_for("the drain waiting for its sessions", |s| {
        s["reason"]
            .as_str()
            .is_some_and(|r| r.ends_with("2 sessions left"))
    });
    assert!(status["memory"]["rss_bytes"].as_u64() >= Some(150 * MI));
    server.say(r#"{"rooms": {"active": 1}}"#);
    probe.wait_for("1 session left", |s| s["sessions"] == 1);
    assert_eq!(
        probe.status()["state"],
        "draining",
        "one call still goes on"
    );
    server.say(r#"{"rooms": {"active": 0}}"#);
    let status = probe.wait_state("recycle");
    let reason = status["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("last session ended after draining"),
        "the drain ends on its sessions, not on --drain-timeout: {reason}"
    );
    assert_eq!(probe.get("/healthz").code, 503);
}

#[test]
fn a_server_that_stops_answering_stalls_and_a_long_stall_recycles_when_opted_in_but_an_absent_one_never_does()
 {
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/sessions");
    let probe = Memprobe::start(&fast(&[
        "--pid",
        &pid,
        "--sessions-url",
        &url,
        "--sessions-poll",
        "200ms",
        "--kms-failures",
        "2",
        "--sessions-hang-timeout",
        "3s",
    ]));
    // Nothing listens yet: a server that is not there is unknown, never hung.
    probe.wait_for("a few refused reads", |s| {
        s["custom"]["errors_total"]["absent"].as_u64() >= Some(5)
    });
    let status = probe.status();
    assert_eq!(status["state"], "healthy", "{status:#}");
    assert_eq!(status["sessions"], serde_json::Value::Null);
    assert!(
        probe
            .get("/metrics")
            .body
            .contains("memprobe_session_source_up{server=\"custom\"} 0")
    );
    probe.said_once("connection refused");

    let server = CountServer::start_on(port, "1\n");
    probe.wait_for("1 session", |s| s["sessions"] == 1);
    server.hang();
    let status = probe.wait_state("stalled");
    let reason = status["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("server not answering: 2 pings in a row failed"),
        "{reason}"
    );
    assert_eq!(
        probe.get("/ready").code,
        503,
        "no new sessions while stalled"
    );
    assert_eq!(
        probe.get("/healthz").code,
        200,
        "a stall alone restarts nothing"
    );
    assert_eq!(
        status["sessions"],
        serde_json::Value::Null,
        "unknown, not 0"
    );

    server.answer();
    let status = probe.wait_state("healthy");
    assert!(
        entered_because(&status, "healthy", "server answers again after a stall of"),
        "an answer ends the stall: {status:#}"
    );
    assert_eq!(status["sessions"], 1);

    server.hang();
    let status = probe.wait_state("recycle");
    let reason = status["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("server not answering for") && reason.ends_with("hung"),
        "a stall that lasts --sessions-hang-timeout recycles: {reason}"
    );
    probe.said_once("no answer within");
}

/// A count endpoint that stops answering (a stuck stats handler, a DNS lookup that never
/// answers, an answer trickling at a byte a second: each a read with no answer in time) is
/// no evidence that the server is hung: the instance stops taking sessions, and is never
/// restarted for it, even long past --kms-hang-timeout, unless --sessions-hang-timeout asks.
#[test]
fn a_count_that_cannot_be_read_never_restarts_the_server_unless_the_operator_opts_in() {
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let server = CountServer::start("5");
    let probe = Memprobe::start(&fast(&[
        "--pid",
        &pid,
        "--sessions-url",
        &server.url("/sessions"),
        "--sessions-poll",
        "200ms",
        "--kms-failures",
        "2",
        "--kms-hang-timeout",
        "1s",
    ]));
    probe.wait_for("5 sessions", |s| s["sessions"] == 5);
    server.hang();
    probe.wait_state("stalled");
    assert_eq!(probe.get("/ready").code, 503, "no new sessions meanwhile");
    // Fifteen reads without an answer: three seconds of stall, thrice --kms-hang-timeout.
    let status = probe.wait_for("a long stall", |s| {
        s["custom"]["failed_pings"].as_u64() >= Some(15)
    });
    assert_eq!(status["state"], "stalled", "never recycled: {status:#}");
    assert!(
        !entered_because(&status, "recycle", ""),
        "no restart on a count that cannot be read: {status:#}"
    );
    assert_eq!(probe.get("/healthz").code, 200);
    server.answer();
    let status = probe.wait_state("healthy");
    assert_eq!(status["sessions"], 5, "its calls went on");

    // An answer at a byte a second never comes in time either.
    server.trickle();
    let before = status["custom"]["errors_total"]["timeout"]
        .as_u64()
        .unwrap_or(0);
    let status = probe.wait_for("a long trickle", |s| {
        s["custom"]["errors_total"]["timeout"].as_u64() >= Some(before + 15)
    });
    assert_eq!(status["state"], "stalled", "never recycled: {status:#}");
    assert_eq!(probe.get("/healthz").code, 200);
    server.answer();
}

/// Whether a transition into `state` gave a reason that starts so.
fn entered_because(status: &serde_json::Value, state: &str, reason: &str) -> bool {
    status["transitions"].as_array().is_some_and(|all| {
        all.iter().any(|t| {
            t["to"] == state && t["reason"].as_str().is_some_and(|r| r.starts_with(reason))
        })
    })
}

/// The file is read off the runtime: a count written to it shows, a bad one is unknown and
/// said once, and a FIFO put in its place is refused while every probe goes on answering.
#[test]
fn a_server_that_writes_its_sessions_to_a_file_is_read_without_ever_blocking_memprobe() {
    let binary = shipped();
    let binary = binary
        .as_deref()
        .unwrap_or(std::path::Path::new(harness::MEMPROBE));
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions");
    let write = |text: &str| {
        // Written aside, then renamed over it, as a server should.
        let aside = dir.path().join("sessions.new");
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(&aside, &path).unwrap();
    };
    let probe = Memprobe::start_binary(
        binary,
        &fast(&[
            "--pid",
            &pid,
            "--sessions-file",
            path.to_str().unwrap(),
            "--sessions-poll",
            "100ms",
        ]),
        &[],
    );
    probe.wait_for("a missing file read", |s| {
        s["custom"]["errors_total"]["absent"].as_u64() >= Some(1)
    });
    write("3\n");
    probe.wait_for("3 sessions", |s| s["sessions"] == 3);
    write("many");
    probe.wait_for("an unknown count", |s| s["sessions"].is_null());
    write("0");
    probe.wait_for("0 sessions", |s| s["sessions"] == 0);
    write("many");
    probe.wait_for("an unknown count again", |s| {
        s["custom"]["errors_total"]["malformed"].as_u64() >= Some(2)
    });
    probe.said_once("holds 4 bytes that are not a session count");

    std::fs::remove_file(&path).unwrap();
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let before = probe.status()["counters"]["samples_total"]
        .as_u64()
        .unwrap();
    let status = probe.wait_for("the FIFO refused", |s| {
        s["custom"]["errors_total"]["not_a_file"].as_u64() >= Some(3)
    });
    assert_eq!(status["sessions"], serde_json::Value::Null);
    assert_eq!(
        status["custom"]["failed_pings"], 0,
        "refused, not waited on"
    );
    assert_eq!(probe.get("/ready").code, 200, "the probes go on answering");
    probe.wait_for("samples going on", |s| {
        s["counters"]["samples_total"].as_u64() > Some(before + 5)
    });
    probe.said_once("is not a regular file");
}

/// A polled count may be a poll old: a drain that would end on a zero, and a drained answer
/// to `GET /drain?wait`, rest on a read that began after the decision. With a poll of ten
/// minutes, every read after the first is such a fresh one; each memprobe below reads 0 at
/// start, then a session arrives.
#[test]
fn a_drain_never_ends_on_a_zero_older_than_the_decision() {
    use std::io::Write;
    let token = "test-token-0123456789abcdef";
    let mut token_file = tempfile::NamedTempFile::new().unwrap();
    writeln!(token_file, "{token}").unwrap();
    let mut target = Workload::start(None);
    let pid = target.pid.to_string();
    let watching = |server: &CountServer| {
        Memprobe::start(&fast(&[
            "--pid",
            &pid,
            "--sessions-url",
            &server.url("/sessions"),
            "--sessions-poll",
            "10m",
            "--sustain",
            "1s",
            "--min-drain",
            "1s",
            "--admin-token-file",
            token_file.path().to_str().unwrap(),
        ]))
    };

    let server = CountServer::start("0");
    let probe = watching(&server);
    probe.wait_for("0 sessions", |s| s["sessions"] == 0);
    server.say("1");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut answer = agent
        .get(format!("http://{}/drain?wait=1s", probe.addr))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .unwrap();
    let body = answer.body_mut().read_to_string().unwrap();
    assert_eq!(
        answer.status().as_u16(),
        503,
        "a zero a poll old is not drained: {body}"
    );
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["sessions"], 1, "the read after the question: {body}");
    drop(probe);

    let server = CountServer::start("0");
    let probe = watching(&server);
    probe.wait_for("0 sessions", |s| s["sessions"] == 0);
    server.say("1");
    target.send("alloc 150MiB");
    probe.wait_state("draining");
    let status = probe.wait_for("the drain's end checked with a fresh read", |s| {
        s["sessions"] == 1
    });
    assert_eq!(
        status["state"], "draining",
        "a session that arrived after the last poll keeps the drain going: {status:#}"
    );
    assert!(!entered_because(&status, "recycle", ""), "{status:#}");
}

/// Whoever writes the session file (the media server, the part exposed to the network) may
/// put anything there, or a symbolic link to a secret of memprobe's: the link is not
/// followed, and what a file or an answer holds never reaches `/status`, the page or the
/// log, only its length and kind.
#[test]
fn a_session_file_or_answer_never_shows_what_it_holds() {
    use std::io::Write;
    let secret = "S3cr3t-admin-token-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    writeln!(std::fs::File::create(&token_file).unwrap(), "{secret}").unwrap();
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let path = dir.path().join("sessions");
    std::fs::write(&path, "2").unwrap();
    let probe = Memprobe::start(&fast(&[
        "--pid",
        &pid,
        "--sessions-file",
        path.to_str().unwrap(),
        "--sessions-poll",
        "100ms",
        "--admin-token-file",
        token_file.to_str().unwrap(),
    ]));
    probe.wait_for("2 sessions", |s| s["sessions"] == 2);
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&token_file, &path).unwrap();
    let status = probe.wait_for("the link refused", |s| {
        s["custom"]["errors_total"]["not_a_file"].as_u64() >= Some(2)
    });
    assert!(
        status["custom"]["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("is a symbolic link")),
        "{status:#}"
    );
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    let status = probe.wait_for("the content refused", |s| {
        s["custom"]["errors_total"]["malformed"].as_u64() >= Some(2)
    });
    assert_eq!(
        status["custom"]["last_error"],
        "holds 30 bytes that are not a session count (write a whole number such as 3)"
    );
    probe.never_shown(&[secret, "S3cr3t"]);

    let server = CountServer::start(&format!(r#"{{"sessions": "{secret}"}}"#));
    let by_url = Memprobe::start(&fast(&[
        "--pid",
        &pid,
        "--sessions-url",
        &server.url("/stats#/sessions"),
        "--sessions-poll",
        "100ms",
    ]));
    let status = by_url.wait_for("the answer refused", |s| {
        s["custom"]["errors_total"]["malformed"].as_u64() >= Some(2)
    });
    assert!(
        status["custom"]["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("the JSON answer has a string at #/sessions")),
        "{status:#}"
    );
    server.say(secret);
    by_url.wait_for("a plain answer refused", |s| {
        s["custom"]["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("the answer (29 bytes) is not JSON"))
    });
    by_url.never_shown(&[secret, "S3cr3t"]);
}
