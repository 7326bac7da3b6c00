//! Kurento-aware behaviour, end to end: the real memprobe binary and a real workload, with a
//! fake KMS (KMS cannot be installed here) that answers as a real KMS 7.3 was recorded
//! answering (its conformance tests are in `kurento_fake.rs`).

#![allow(clippy::disallowed_types)]

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::fake_kms::{Client, FakeKms, FakeKmsConfig};
use crate::harness::{DEADLINE, Memprobe, Workload};
use crate::{MI, states_entered};

/// Fast settings against a fake KMS: samples every 100 ms, pings every 200 ms, and a timeout
/// generous enough that a loaded machine is not taken for a hung KMS.
fn with_kms<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--interval",
        "100ms",
        "--threshold",
        "100MiB",
        "--kms-url",
        url,
        "--kms-ping-interval",
        "200ms",
        "--kms-timeout",
        "1s",
    ];
    args.extend_from_slice(extra);
    args
}

/// memprobe watching `target` by pid, with `kms` as its KMS.
pub(crate) fn watch(kms: &FakeKms, target: &Workload, extra: &[&str]) -> Memprobe {
    let (url, pid) = (kms.url(), target.pid.to_string());
    let mut args = vec!["--pid", pid.as_str()];
    args.extend_from_slice(extra);
    Memprobe::start(&with_kms(&url, &args))
}

/// Waits until memprobe is connected to KMS and has its (empty) pipeline list.
fn connected_with_no_session(probe: &Memprobe) -> Value {
    probe.wait_for("connected", |s| {
        s["kms"]["connected"] == true && s["sessions"] == 0
    })
}

fn errors_of(status: &Value, kind: &str) -> u64 {
    status["kms"]["rpc_errors_total"][kind]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_drain_waits_for_the_last_session_then_recycles_after_min_drain() {
    let kms = FakeKms::start();
    let first = kms.create_pipeline(2);
    let second = kms.create_pipeline(3);
    let mut target = Workload::start(None);
    let probe = watch(
        &kms,
        &target,
        &[
            "--sustain",
            "1s",
            "--min-drain",
            "1s",
            "--drain-timeout",
            "1h",
        ],
    );

    let status = probe.wait_for("2 sessions", |s| {
        s["state"] == "healthy" && s["sessions"] == 2
    });
    assert_eq!(
        status["kms"]["version"], "7.3.0",
        "getInfo gives the version"
    );
    assert_eq!(status["kms"]["server_id"], kms.server_id());
    assert_eq!(status["kms"]["connected"], true);

    target.send("alloc 150MiB");
    probe.wait_state("draining");
    assert_eq!(probe.get("/ready").code, 503);
    probe.wait_for("the reason to count sessions", |s| {
        s["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("2 sessions left")
    });

    kms.destroy_pipeline(&first);
    probe.wait_for("1 session", |s| s["sessions"] == 1);
    let status = probe.status();
    assert_eq!(status["state"], "draining", "a session is still live");
    assert!(status["transitions"].as_array().unwrap().len() >= 3);

    kms.destroy_pipeline(&second);
    let status = probe.wait_state("recycle");
    assert_eq!(probe.get("/healthz").code, 503, "drained: restart KMS now");
    assert!(
        status["reason"]
            .as_str()
            .unwrap()
            .starts_with("last session ended after draining"),
        "{status:#}"
    );
    assert_eq!(
        kms.get_pipelines_calls(),
        1,
        "the pipeline list is fetched once per connection, then followed through events"
    );
    assert_eq!(kms.reused_ids(), 0, "request ids only increase");
    let logs = probe.logs().join("\n");
    assert!(
        logs.contains("session(s) left"),
        "the logs say what a drain waits for: {logs}"
    );
}

#[test]
fn memory_that_stays_high_with_no_sessions_drains_after_idle_sustain() {
    let kms = FakeKms::start();
    let mut target = Workload::start(None);
    let probe = watch(&kms, &target, &["--sustain", "1h", "--idle-sustain", "1s"]);
    probe.wait_for("0 sessions known", |s| {
        s["state"] == "healthy" && s["sessions"] == 0
    });

    target.send("alloc 150MiB");
    let status = probe.wait_state("draining");
    assert!(
        status["reason"]
            .as_str()
            .unwrap()
            .contains("with no sessions"),
        "drained by the idle check, not the 1h sustain: {status:#}"
    );
    assert!(status["idle_memory_bytes"].as_u64().unwrap() >= 100 * MI);
    let metrics = probe.get("/metrics").body;
    assert!(metrics.contains("memprobe_idle_memory_bytes "), "{metrics}");
    assert!(metrics.contains("memprobe_kms_sessions 0"), "{metrics}");
}

/// A fake KMS that has answered a ping, watched with 2 failed pings to a stall and this
/// hang timeout.
fn answering_kms(hang_timeout: &str) -> (FakeKms, Workload, Memprobe) {
    let kms = FakeKms::start();
    let target = Workload::start(None);
    let extra = ["--kms-failures", "2", "--kms-hang-timeout", hang_timeout];
    let probe = watch(&kms, &target, &extra);
    probe.wait_for("a ping answered", |s| {
        s["state"] == "healthy" && !s["kms"]["last_ping_seconds"].is_null()
    });
    (kms, target, probe)
}

#[test]
fn a_stalled_kms_takes_no_new_sessions_and_is_ready_again_when_it_answers() {
    let (kms, _target, probe) = answering_kms("1h");
    assert!(probe.get("/metrics").body.contains("memprobe_kms_up 1"));

    kms.hang(true);
    let status = probe.wait_state("stalled");
    assert!(
        status["reason"]
            .as_str()
            .unwrap()
            .starts_with("kms not answering"),
        "{status:#}"
    );
    assert_eq!(
        probe.get("/ready").code,
        503,
        "a stalled KMS takes no new sessions"
    );
    assert_eq!(
        probe.get("/healthz").code,
        200,
        "a stall shorter than --kms-hang-timeout never restarts KMS"
    );
    assert!(probe.get("/metrics").body.contains("memprobe_kms_up 0"));

    kms.hang(false);
    let status = probe.wait_state("healthy");
    assert_eq!(
        probe.get("/ready").code,
        200,
        "answering again: ready again"
    );
    assert!(
        !states_entered(&status).contains(&"recycle".to_string()),
        "a KMS that recovered is not restarted: {status:#}"
    );
}

#[test]
fn a_kms_stalled_past_the_hang_timeout_is_restarted() {
    let (kms, _target, probe) = answering_kms("1s");
    kms.hang(true);
    let status = probe.wait_state("recycle");
    let entered = states_entered(&status);
    assert!(
        entered.ends_with(&["stalled".to_string(), "recycle".to_string()]),
        "stalled first, then recycled: {status:#}"
    );
    assert!(
        status["reason"].as_str().unwrap().contains("hung"),
        "{status:#}"
    );
    assert_eq!(probe.get("/ready").code, 503);
    assert_eq!(probe.get("/healthz").code, 503, "a hung KMS is restarted");
    probe.wait_live(); // memprobe itself is fine
}

#[test]
fn a_kms_that_never_answered_is_not_hung() {
    let kms = FakeKms::start();
    kms.hang(true);
    let target = Workload::start(None);
    let probe = watch(&kms, &target, &["--kms-failures", "1"]);
    probe.wait_for("several unanswered connects", |s| {
        errors_of(s, "timeout") >= 3
    });
    let status = probe.status();
    assert_eq!(
        status["state"], "healthy",
        "KMS may still be starting: {status:#}"
    );
    assert_eq!(probe.get("/healthz").code, 200);
    assert!(
        status["sessions"].is_null(),
        "no session count without an answer"
    );
}

#[test]
fn an_absent_kms_costs_one_log_line_and_never_liveness() {
    // A port that was just free: nothing listens there.
    let port = crate::harness::free_port();
    let url = format!("ws://127.0.0.1:{port}/kurento");
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let probe = Memprobe::start(&with_kms(&url, &["--pid", &pid]));
    let status = probe.wait_for("three failed connects", |s| errors_of(s, "connect") >= 3);
    assert_eq!(status["state"], "healthy");
    assert_eq!(status["kms"]["connected"], false);
    assert_eq!(probe.get("/ready").code, 200);
    assert_eq!(probe.get("/healthz").code, 200);
    // One line, not one per retry: a warning that points at the URL, since nothing has
    // ever answered there.
    let line = probe.said_once("cannot reach");
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("it has never answered since memprobe started (check --kms-url"),
        "{line}"
    );
}

/// A KMS that answered, then stopped, is said apart from one that never answered: the URL is
/// right, the server is not.
#[test]
fn a_kms_that_stopped_answering_is_said_apart_from_one_that_never_did() {
    let kms = FakeKms::start();
    let target = Workload::start(None);
    let probe = watch(&kms, &target, &[]);
    connected_with_no_session(&probe);
    kms.sigterm();
    probe.wait_said("cannot reach");
    let line = probe.said_once("cannot reach");
    assert!(line.contains("it stopped answering"), "{line}");
    assert!(!line.contains("never answered"), "{line}");
}

#[test]
fn garbage_unknown_ids_and_oversized_frames_are_counted_not_fatal() {
    let kms = FakeKms::start();
    let target = Workload::start(None);
    let probe = watch(&kms, &target, &[]);
    connected_with_no_session(&probe);

    kms.send_raw(Message::text("this is not JSON"));
    kms.send_raw(Message::text(
        r#"{"id":"x","jsonrpc":"2.0","result":{"value":1}}"#,
    ));
    kms.send_raw(Message::text(
        r#"{"id":999999999,"jsonrpc":"2.0","result":{"value":1}}"#,
    ));
    kms.send_raw(Message::text(r#"{"jsonrpc":"2.0","method":"onEvent","params":{"value":{"type":"ObjectCreated","data":{"object":7}}}}"#));
    kms.send_raw(Message::binary(vec![0xff, 0xfe]));
    let status = probe.wait_for("garbage counted", |s| {
        errors_of(s, "malformed") >= 3 && errors_of(s, "unknown_id") >= 2
    });
    assert_eq!(
        status["kms"]["connected"], true,
        "garbage does not end the connection"
    );

    kms.send_raw(Message::text("x".repeat(2 << 20)));
    let status = probe.wait_for(
        "the oversized frame refused and the connection made again",
        |s| {
            errors_of(s, "oversized") >= 1
                && s["kms"]["reconnects_total"].as_u64() >= Some(1)
                && s["kms"]["connected"] == true
        },
    );
    assert_eq!(status["state"], "healthy");

    kms.drop_connections();
    probe.wait_for("another reconnect", |s| {
        s["kms"]["reconnects_total"].as_u64() >= Some(2) && s["kms"]["connected"] == true
    });
    // The sampling loop goes on: /livez answers 200 again within a few steps (a machine busy
    // enough may leave one step late, which /livez is there to show).
    probe.wait_live();
    assert_eq!(probe.get("/healthz").code, 200);
    let logs = probe.logs().join("\n");
    assert!(!logs.contains("panicked"), "{logs}");
    assert_eq!(
        logs.matches("kind\":\"malformed").count(),
        1,
        "each kind of error is logged once: {logs}"
    );
    assert_eq!(kms.reused_ids(), 0);
}

#[test]
fn a_kms_restart_is_seen_by_its_server_id_and_resynchronised() {
    let kms = FakeKms::start();
    kms.create_pipeline(1);
    let target = Workload::start(None);
    let probe = watch(&kms, &target, &[]);
    probe.wait_for("1 session", |s| s["sessions"] == 1);
    let before = kms.server_id();

    kms.restart();
    let after = kms.server_id();
    assert_ne!(before, after);
    kms.create_pipeline(0);
    kms.create_pipeline(0);
    kms.create_pipeline(0);
    let status = probe.wait_for("the new serverId and its sessions", |s| {
        s["kms"]["server_id"] == after.as_str() && s["sessions"] == 3
    });
    assert!(status["kms"]["reconnects_total"].as_u64() >= Some(1));
    assert_eq!(
        kms.get_pipelines_calls(),
        2,
        "one getPipelines per connection"
    );
    let logs = probe.logs().join("\n");
    assert!(logs.contains("KMS restarted"), "{logs}");
}

#[test]
fn memory_from_kms_itself_needs_no_process() {
    let kms = FakeKms::start();
    kms.set_used_memory_kib(50 * 1024);
    let url = kms.url();
    let probe = Memprobe::start(&with_kms(
        &url,
        &["--memory-source", "kms", "--sustain", "1h"],
    ));
    let status = probe.wait_state("healthy");
    assert_eq!(status["memory_source"], "kms");
    assert!(status["target"]["pid"].is_null());
    assert_eq!(status["memory"]["rss_bytes"], 50 * MI);
    assert!(
        status["memory"]["anon_bytes"].is_null(),
        "KMS reports resident memory only"
    );

    kms.set_used_memory_kib(150 * 1024);
    probe.wait_state("elevated");

    kms.restart();
    let status = probe.wait_for("the new serverId as a new incarnation", |s| {
        s["counters"]["target_restarts_total"] == 1 && s["state"] == "elevated"
    });
    let entered = states_entered(&status);
    let starts = entered.iter().filter(|s| *s == "starting").count();
    assert_eq!(
        starts, 2,
        "a new serverId starts a new incarnation: {entered:?}"
    );
    let metrics = probe.get("/metrics").body;
    assert!(
        !metrics.contains("memprobe_target_memory_bytes{kind=\"anon\"}"),
        "{metrics}"
    );
}

#[test]
fn a_kms_that_closes_mid_request_is_reconnected_not_called_hung() {
    let kms = FakeKms::start();
    let target = Workload::start(None);
    let probe = watch(&kms, &target, &[]);
    connected_with_no_session(&probe);

    kms.close_on(Some("ping"));
    let status = probe.wait_for("two connections closed mid-ping", |s| {
        s["kms"]["reconnects_total"].as_u64() >= Some(2)
    });
    assert_eq!(
        status["state"], "healthy",
        "a closed connection is not a hung server: {status:#}"
    );
    assert_eq!(probe.get("/healthz").code, 200);

    kms.close_on(None);
    probe.wait_for("pings answered again", |s| {
        s["kms"]["connected"] == true
            && s["kms"]["failed_pings"] == 0
            && !s["kms"]["last_ping_seconds"].is_null()
    });
}

#[test]
fn with_memory_from_kms_a_brief_disconnection_keeps_the_drain() {
    let kms = FakeKms::start();
    kms.set_used_memory_kib(150 * 1024);
    let url = kms.url();
    let probe = Memprobe::start(&with_kms(
        &url,
        &[
            "--memory-source",
            "kms",
            "--sustain",
            "300ms",
            "--drain-timeout",
            "1h",
        ],
    ));
    probe.wait_state("draining");

    kms.drop_connections();
    let status = probe.wait_for("a reconnection", |s| {
        s["kms"]["reconnects_total"].as_u64() >= Some(1) && s["kms"]["connected"] == true
    });
    assert_eq!(
        status["state"], "draining",
        "same serverId, same KMS: the latch holds: {:#}",
        status["transitions"]
    );
    assert_eq!(status["counters"]["target_restarts_total"], 0);
    assert!(!states_entered(&status).contains(&"lost".to_string()));
}

/// A rotated URL: the file `--kms-url-file` names is read again after each connection that
/// failed or ended, so writing the new URL there is enough, with no restart of memprobe; a
/// FIFO found there in between is refused without blocking the probes.
#[test]
fn a_url_file_is_read_again_when_kms_cannot_be_reached() {
    let kms = FakeKms::start();
    let session = kms.create_pipeline(1);
    let target = Workload::start(None);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kms-url");
    // Nothing listens there; the password must never be shown.
    let nowhere = format!(
        "ws://user:old-password@127.0.0.1:{}/kurento",
        crate::harness::free_port()
    );
    std::fs::write(&file, format!("{nowhere}\n")).unwrap();
    let pid = target.pid.to_string();
    let probe = Memprobe::start(&[
        "--pid",
        &pid,
        "--interval",
        "100ms",
        "--threshold",
        "100MiB",
        "--kms-url-file",
        file.to_str().unwrap(),
        "--kms-ping-interval",
        "200ms",
        "--kms-timeout",
        "1s",
    ]);
    probe.wait_for("KMS out of reach", |s| errors_of(s, "connect") >= 2);
    assert!(probe.status()["sessions"].is_null());
    // A FIFO there meanwhile (the file mid-rotation, or a mistake) is said, never waited on.
    probe.answers_with_a_fifo_at(&file);
    let url = kms.url().replace("ws://", "ws://user:new-password@");
    std::fs::write(&file, format!("{url}\n")).unwrap();
    probe.wait_for("the new URL taken, and the session seen", |s| {
        s["sessions"] == 1
    });
    probe.said_once("holds a new URL");
    probe.never_shown(&["old-password", "new-password"]);
    kms.destroy_pipeline(&session);
}

/// Waits for a condition on the fake's side, with the harness's deadline.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "waited {DEADLINE:?} for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// memprobe has read every frame the fake sent before now: a ping it sends after this one's
/// reply comes after them on the socket.
fn frames_read_by(kms: &FakeKms) {
    let pings = kms.requests_of("ping");
    wait_until("two more pings", || kms.requests_of("ping") >= pings + 2);
}

/// KMS destroys a pipeline's elements first, each with its own ObjectDestroyed: the elements
/// are no sessions, and the count drops once, at the pipeline's own event.
#[test]
fn a_pipeline_with_elements_is_one_session_that_ends_at_its_own_event() {
    let kms = FakeKms::start();
    let pipeline = kms.create_pipeline(3);
    let target = Workload::start(None);
    let probe = watch(&kms, &target, &[]);
    probe.wait_for("one session for a pipeline and its 3 elements", |s| {
        s["sessions"] == 1
    });

    kms.hold_events(true);
    kms.destroy_pipeline(&pipeline);
    wait_until("the release's events", || kms.held_events().len() == 4);
    let held = kms.held_events();
    assert!(
        held[..3]
            .iter()
            .all(|(_, o)| o.starts_with(&format!("{pipeline}/")))
            && held[3].1 == pipeline,
        "the elements' events first: {held:?}"
    );
    kms.send_held_events(3);
    frames_read_by(&kms);
    assert_eq!(
        probe.status()["sessions"],
        1,
        "the elements' ObjectDestroyed end no session"
    );
    kms.send_held_events(1);
    probe.wait_for("the pipeline's own event", |s| s["sessions"] == 0);
    kms.hold_events(false);
    assert_eq!(
        kms.get_pipelines_calls(),
        1,
        "followed through events alone"
    );
}

/// SIGTERM makes KMS exit at once with no ObjectDestroyed: the socket just drops. A dropped
/// socket is no "0 sessions": the drain never ends on it, the target is lost, and the KMS that
/// comes back (a new serverId) is a new incarnation.
#[test]
fn kms_stopped_with_sigterm_mid_drain_is_lost_not_drained() {
    let kms = FakeKms::start();
    kms.set_used_memory_kib(150 * 1024);
    kms.create_pipeline(1);
    kms.create_pipeline(2);
    let url = kms.url();
    let probe = Memprobe::start(&with_kms(
        &url,
        &[
            "--memory-source",
            "kms",
            "--sustain",
            "300ms",
            "--min-drain",
            "100ms",
            "--drain-timeout",
            "1h",
        ],
    ));
    probe.wait_for("draining on 2 sessions", |s| {
        s["state"] == "draining" && s["sessions"] == 2
    });
    let before = kms.server_id();

    kms.sigterm();
    let status = probe.wait_state("lost");
    assert!(
        !states_entered(&status).contains(&"recycle".to_string()),
        "a lost connection is not a drained server: {:#}",
        status["transitions"]
    );
    assert!(status["sessions"].is_null(), "no count without KMS");
    assert_eq!(probe.get("/healthz").code, 200, "lost never fails liveness");

    kms.start_again();
    let after = kms.server_id();
    assert_ne!(before, after);
    let status = probe.wait_for("the new serverId as a new incarnation", |s| {
        s["kms"]["server_id"] == after.as_str() && s["counters"]["target_restarts_total"] == 1
    });
    let entered = states_entered(&status);
    let lost = entered.iter().position(|s| s == "lost").unwrap();
    assert!(
        !entered[..lost].contains(&"recycle".to_string()),
        "no recycle before the loss: {entered:?}"
    );
    assert!(
        entered[lost..].contains(&"starting".to_string()),
        "the new serverId starts a new incarnation: {entered:?}"
    );
}

/// KMS caches replies per (sessionId, id) for 20 s, across sockets. A reconnect inside that
/// window cannot get another request's reply: memprobe's ids only increase across
/// connections, and the new connection's `connect` names no session, so it gets a new one.
#[test]
fn a_reconnect_inside_the_cache_window_never_gets_another_requests_reply() {
    let kms = FakeKms::start();
    let target = Workload::start(None);
    let probe = watch(&kms, &target, &[]);
    connected_with_no_session(&probe);
    kms.drop_connections();
    probe.wait_for("reconnected and resynchronised", |s| {
        s["kms"]["reconnects_total"].as_u64() >= Some(1)
            && s["kms"]["connected"] == true
            && s["sessions"] == 0
    });
    frames_read_by(&kms);

    let seen = kms.requests();
    let ids: Vec<u64> = seen.iter().map(|r| r.id.as_u64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids only increase, across connections too: {ids:?}"
    );
    let connects: Vec<_> = seen.iter().filter(|r| r.method == "connect").collect();
    assert_eq!(connects.len(), 2);
    assert!(
        connects
            .iter()
            .all(|c| c.session_id.is_none() && c.bound_to.is_none()),
        "each connection's connect names no session: KMS makes a new one"
    );
    let session_of = |conn: u64| -> std::collections::BTreeSet<Option<String>> {
        let others = seen
            .iter()
            .filter(|r| r.connection == conn && r.method != "connect");
        others.map(|r| r.session_id.clone()).collect()
    };
    let (first, second) = (
        session_of(connects[0].connection),
        session_of(connects[1].connection),
    );
    assert_eq!(
        (first.len(), second.len()),
        (1, 1),
        "one session per connection"
    );
    assert_ne!(first, second, "a new session after the reconnect");
    assert_eq!(kms.reused_ids(), 0, "no reply came from the cache");

    // The cache is live: the old session's getInfo id, asked again, gets that reply back.
    let info = seen
        .iter()
        .find(|r| r.connection == connects[0].connection && r.method == "invoke")
        .unwrap();
    let old = first.into_iter().next().flatten().unwrap();
    let mut client = Client::connect(&kms);
    let stale = client.call(&format!(
        r#"{{"jsonrpc":"2.0","id":{},"method":"ping","params":{{"sessionId":"{old}"}}}}"#,
        info.id
    ));
    assert!(stale.contains("ServerInfo"), "a reused id: {stale}");
}

/// `getPipelines` refers every pipeline into KMS's hidden session, which delays the freeing
/// of an abandoned one by a garbage-collector sweep. memprobe calls it once per connection:
/// its pings keep nothing alive, and its call after a reconnect costs at most one sweep.
/// Counted in the fake collector's sweeps, not in time, so a loaded machine changes nothing.
#[test]
fn memprobe_never_keeps_an_abandoned_pipeline_alive_past_one_extra_sweep() {
    let kms = FakeKms::start_with(FakeKmsConfig {
        gc_period: Duration::from_millis(1500),
        ..FakeKmsConfig::default()
    });
    let target = Workload::start(None);
    let probe = watch(&kms, &target, &[]);
    connected_with_no_session(&probe);

    let alone = kms.create_abandoned_pipeline(1);
    let abandoned = kms.sweeps();
    probe.wait_for("the abandoned pipeline counted", |s| s["sessions"] == 1);
    probe.wait_for("the collector's ObjectDestroyed", |s| s["sessions"] == 0);
    let freed = kms.freed_at_sweep(&alone).unwrap();
    assert!(
        freed <= abandoned + 2,
        "with memprobe pinging, freed at the first or second sweep after it was abandoned \
         ({abandoned}), not at sweep {freed}"
    );

    let calls = kms.get_pipelines_calls();
    let pipeline = kms.create_abandoned_pipeline(1);
    let abandoned = kms.sweeps();
    probe.wait_for("the abandoned pipeline counted", |s| s["sessions"] == 1);
    kms.drop_connections();
    wait_until("memprobe's getPipelines after the reconnect", || {
        kms.get_pipelines_calls() > calls
    });
    let listed = *kms.get_pipelines_sweeps().last().unwrap();
    probe.wait_for("the collector's ObjectDestroyed", |s| s["sessions"] == 0);
    let freed = kms.freed_at_sweep(&pipeline).unwrap();
    assert!(
        freed <= listed.max(abandoned) + 2,
        "freed within two sweeps of memprobe's own call (sweep {listed}; abandoned at \
         {abandoned}), not at sweep {freed}: one extra sweep at most"
    );
    assert_eq!(
        kms.get_pipelines_calls(),
        calls + 1,
        "one call per connection"
    );
}

/// A pipeline created while memprobe's getPipelines is in flight (the list taken before it,
/// its ObjectCreated sent before the reply) is counted; one released meanwhile (the list
/// taken before, its events before the reply) is not. Either way a drain ends on the truth.
#[test]
fn changes_racing_the_pipeline_list_are_counted_on_top_of_it() {
    let kms = FakeKms::start();
    let kept = kms.create_pipeline(1);
    let raced = kms.create_during_next_list(2);
    let mut target = Workload::start(None);
    let probe = watch(&kms, &target, &["--sustain", "1s", "--min-drain", "200ms"]);
    probe.wait_for("the list of the first connection", |s| {
        s["sessions"].is_u64() && kms.get_pipelines_calls() == 1
    });
    frames_read_by(&kms);
    let status = probe.wait_for("2 sessions", |s| s["sessions"] == 2 || s["sessions"] == 1);
    assert_eq!(
        status["sessions"], 2,
        "an older list never wipes out the pipeline created while it was in flight: {status:#}"
    );

    // The next list (after a reconnect) races the release of `kept`.
    kms.destroy_during_next_list(&kept);
    kms.drop_connections();
    wait_until("the list of the second connection", || {
        kms.get_pipelines_calls() == 2
    });
    frames_read_by(&kms);
    let status = probe.wait_for("1 session", |s| s["sessions"].is_u64());
    assert_eq!(
        status["sessions"], 1,
        "a pipeline released while the list was in flight is not counted: {status:#}"
    );

    target.send("alloc 150MiB");
    probe.wait_state("draining");
    frames_read_by(&kms);
    assert_eq!(
        probe.status()["state"],
        "draining",
        "the raced pipeline's call is still on"
    );
    kms.destroy_pipeline(&raced);
    let status = probe.wait_state("recycle");
    assert!(
        status["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("last session ended"),
        "{status:#}"
    );
}

/// A KMS that stops sending ObjectDestroyed (a glibc KMS that ran media for a while does):
/// the count is brought back to what getPipelines lists once a quiet period has passed, so a
/// drain ends within about one --kms-gc-period of its last session ending — and never while
/// the list still has a pipeline.
#[test]
fn a_drain_ends_within_a_gc_period_when_kms_stops_announcing_destroys() {
    let kms = FakeKms::start();
    let first = kms.create_pipeline(1);
    let second = kms.create_pipeline(1);
    let mut target = Workload::start(None);
    let probe = watch(
        &kms,
        &target,
        &[
            "--sustain",
            "500ms",
            "--min-drain",
            "200ms",
            "--kms-gc-period",
            "3s",
        ],
    );
    probe.wait_for("2 sessions", |s| s["sessions"] == 2);
    kms.stop_destroyed_events_after(0);
    target.send("alloc 150MiB");
    probe.wait_state("draining");

    kms.destroy_pipeline(&first);
    let released = Instant::now();
    let lists = kms.get_pipelines_calls();
    wait_until("a resync after a quiet period", || {
        kms.get_pipelines_calls() > lists
    });
    let status = probe.wait_for("1 session", |s| s["sessions"] == 1);
    assert_eq!(
        status["state"], "draining",
        "the list still has a pipeline: the drain goes on"
    );

    kms.destroy_pipeline(&second);
    let status = probe.wait_state("recycle");
    let took = released.elapsed();
    assert!(
        status["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("last session ended"),
        "the drain ends on its sessions, not on --drain-timeout: {status:#}"
    );
    assert!(
        took < Duration::from_secs(30),
        "two quiet periods of 3 s, not the 10-minute resync: {took:?}"
    );
    assert_eq!(kms.destroyed_events_sent(), 0);
    probe.wait_for("both counted as undestroyed", |s| {
        s["kms"]["undestroyed_pipelines_total"] == 2
    });
    let metrics = probe.get("/metrics").body;
    assert!(
        metrics.contains("memprobe_kms_undestroyed_pipelines_total 2"),
        "{metrics}"
    );
    let logs = probe.logs().join("\n");
    assert_eq!(
        logs.matches("without an ObjectDestroyed event").count(),
        1,
        "said once: {logs}"
    );
}
