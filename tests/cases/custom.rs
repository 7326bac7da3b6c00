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
fn a_server_that_stops_answering_stalls_and_a_long_stall_recycles_but_an_absent_one_never_does() {
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
        "--kms-hang-timeout",
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
        "a stall that lasts --kms-hang-timeout recycles: {reason}"
    );
    probe.said_once("no answer within");
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
    probe.said_once("holds 'many', not a session count");

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
