//! Janus, for real: Debian's `janus` started by the test, watched through its pidfile, with
//! memprobe polling its admin API.

// A real server runs on the real clock.
#![allow(clippy::disallowed_types)]

use std::time::Duration;

use crate::harness::janus::{Janus, SECRET};
use crate::harness::{Memprobe, tool};

/// memprobe watching `janus` through a pidfile it keeps current, with fast settings.
fn watch(janus: &Janus, pidfile: &std::path::Path, extra: &[&str]) -> Memprobe {
    std::fs::write(pidfile, janus.pid().to_string()).unwrap();
    let url = janus.admin_url();
    let mut args = vec![
        "--pidfile",
        pidfile.to_str().unwrap(),
        "--interval",
        "100ms",
        "--janus-url",
        &url,
        "--janus-poll",
        "200ms",
    ];
    args.extend_from_slice(extra);
    Memprobe::start(&args)
}

#[test]
fn janus_sessions_show_within_a_poll_and_go_when_destroyed() {
    let Some(bin) = tool("janus") else { return };
    let janus = Janus::start(&bin);
    let dir = tempfile::tempdir().unwrap();
    let probe = watch(
        &janus,
        &dir.path().join("janus.pid"),
        &["--janus-secret", SECRET, "--threshold", "1Gi"],
    );
    probe.wait_for("0 sessions", |s| {
        s["sessions"] == 0 && s["state"] == "healthy"
    });
    let first = janus.create().unwrap();
    let second = janus.create().unwrap();
    let status = probe.wait_for("2 sessions", |s| s["sessions"] == 2);
    assert_eq!(status["janus"]["version"], "1.1.2");
    assert_eq!(status["janus"]["accepting_new_sessions"], true);
    let metrics = probe.get("/metrics").body;
    assert!(
        metrics.contains("memprobe_sessions{server=\"janus\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("memprobe_session_source_up{server=\"janus\"} 1"));
    janus.destroy(first);
    probe.wait_for("1 session", |s| s["sessions"] == 1);
    janus.destroy(second);
    probe.wait_for("0 sessions", |s| s["sessions"] == 0);
    assert!(
        !probe.status().to_string().contains(SECRET),
        "the secret is never shown"
    );
}

#[test]
fn a_draining_janus_refuses_new_sessions_itself_keeps_its_calls_and_recycles_after_the_last() {
    let Some(bin) = tool("janus") else { return };
    let janus = Janus::start(&bin);
    let call = janus.create().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Janus idles at about 27 MB: over a 10 MiB threshold at once.
    let probe = watch(
        &janus,
        &dir.path().join("janus.pid"),
        &[
            "--janus-secret",
            SECRET,
            "--threshold",
            "10MiB",
            "--sustain",
            "1s",
            "--min-drain",
            "1s",
            "--drain-timeout",
            "1h",
        ],
    );
    probe.wait_state("draining");
    assert_eq!(probe.get("/ready").code, 503);
    probe.wait_for("Janus switched off", |s| {
        s["janus"]["accepting_new_sessions"] == false
    });
    assert_eq!(
        janus.create(),
        Err(472),
        "a client reaching a draining Janus anyway gets 472"
    );
    assert!(janus.keepalive(call), "the call in progress goes on");
    assert_eq!(
        probe.get("/healthz").code,
        200,
        "not restarted while a call lives"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(probe.get("/healthz").code, 200);
    janus.destroy(call);
    probe.wait_state("recycle");
    assert_eq!(
        probe.get("/healthz").code,
        503,
        "drained: restart Janus now"
    );
}

#[test]
fn a_restarted_janus_is_a_new_incarnation_accepting_again() {
    let Some(bin) = tool("janus") else { return };
    let mut janus = Janus::start(&bin);
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("janus.pid");
    let probe = watch(
        &janus,
        &pidfile,
        &["--janus-secret", SECRET, "--threshold", "1Gi"],
    );
    probe.wait_for("healthy with 0 sessions", |s| {
        s["state"] == "healthy" && s["sessions"] == 0
    });
    let old = janus.pid();
    janus.restart();
    std::fs::write(&pidfile, janus.pid().to_string()).unwrap();
    let status = probe.wait_for("the new Janus, healthy", |s| {
        s["target"]["pid"] == janus.pid() && s["state"] == "healthy" && s["sessions"] == 0
    });
    assert_ne!(old, janus.pid());
    assert_eq!(status["counters"]["target_restarts_total"], 1);
    assert_eq!(status["janus"]["accepting_new_sessions"], true);
    assert!(janus.create().is_ok(), "a new Janus takes sessions");
}

#[test]
fn a_wrong_secret_is_said_once_and_never_taken_for_zero_sessions() {
    let Some(bin) = tool("janus") else { return };
    let janus = Janus::start(&bin);
    let dir = tempfile::tempdir().unwrap();
    let probe = watch(
        &janus,
        &dir.path().join("janus.pid"),
        &[
            "--janus-secret",
            "not-the-secret",
            "--threshold",
            "10MiB",
            "--sustain",
            "1h",
            "--idle-sustain",
            "1s",
        ],
    );
    probe.wait_for("the refusal", |s| {
        s["janus"]["errors_total"]["unauthorized"].as_u64() >= Some(3)
    });
    // One clear line.
    probe.said_once("refused the admin secret");
    let status = probe.status();
    assert!(status["sessions"].is_null(), "{status:#}");
    assert_eq!(
        status["state"], "elevated",
        "over the threshold with no session count: never an idle drain"
    );
    let metrics = probe.get("/metrics").body;
    assert!(
        metrics.contains("memprobe_session_source_up{server=\"janus\"} 0"),
        "{metrics}"
    );
}

#[test]
fn a_janus_that_is_not_accepting_when_memprobe_starts_stays_drained() {
    let Some(bin) = tool("janus") else { return };
    let janus = Janus::start(&bin);
    let switched = janus
        .admin(serde_json::json!({"janus": "accept_new_sessions", "accept": false, "transaction": "a"}))
        .unwrap();
    assert_eq!(switched["janus"], "success");
    let dir = tempfile::tempdir().unwrap();
    let probe = watch(
        &janus,
        &dir.path().join("janus.pid"),
        &["--janus-secret", SECRET, "--threshold", "1Gi"],
    );
    let status = probe.wait_state("draining");
    assert_eq!(status["drain_requested_by"], "janus", "{status:#}");
    assert_eq!(
        probe.get("/ready").code,
        503,
        "memprobe and Janus agree: no new sessions"
    );
}

#[test]
fn a_janus_that_stops_answering_is_stalled_and_ready_again_once_it_answers() {
    let Some(bin) = tool("janus") else { return };
    let janus = Janus::start(&bin);
    let dir = tempfile::tempdir().unwrap();
    let probe = watch(
        &janus,
        &dir.path().join("janus.pid"),
        &[
            "--janus-secret",
            SECRET,
            "--threshold",
            "1Gi",
            "--kms-failures",
            "2",
            "--kms-hang-timeout",
            "1h",
        ],
    );
    probe.wait_state("healthy");
    // A frozen process: its admin API accepts connections but answers nothing.
    let pid = janus.pid().to_string();
    let signal = |name: &str| {
        let sent = std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    signal("-STOP");
    let status = probe.wait_state("stalled");
    assert!(
        status["reason"]
            .as_str()
            .unwrap()
            .starts_with("janus not answering"),
        "{status:#}"
    );
    assert_eq!(probe.get("/ready").code, 503);
    assert_eq!(
        probe.get("/healthz").code,
        200,
        "a stall is not yet a restart"
    );
    signal("-CONT");
    probe.wait_state("healthy");
    assert_eq!(probe.get("/ready").code, 200);
}

/// A rotated secret: the file `--janus-secret-file` names is read again when Janus refuses
/// the secret, so writing the right one there is enough, with no restart of memprobe; a
/// FIFO found there in between is refused without blocking the probes.
#[test]
fn a_secret_file_is_read_again_when_janus_refuses_its_secret() {
    let Some(bin) = tool("janus") else { return };
    let janus = Janus::start(&bin);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-secret");
    std::fs::write(&file, "the-old-secret\n").unwrap();
    let probe = watch(
        &janus,
        &dir.path().join("janus.pid"),
        &[
            "--janus-secret-file",
            file.to_str().unwrap(),
            "--threshold",
            "1Gi",
        ],
    );
    probe.wait_for("the refusal", |s| {
        s["janus"]["errors_total"]["unauthorized"].as_u64() >= Some(2)
    });
    assert!(probe.status()["sessions"].is_null());
    // A FIFO there meanwhile (the file mid-rotation, or a mistake) is said, never waited on.
    probe.answers_with_a_fifo_at(&file);
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let session = janus.create().unwrap();
    probe.wait_for("the new secret taken, and the session seen", |s| {
        s["sessions"] == 1
    });
    probe.said_once("holds a new admin secret");
    probe.never_shown(&[SECRET, "the-old-secret"]);
    janus.destroy(session);
}
