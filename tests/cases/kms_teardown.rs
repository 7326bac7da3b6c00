//! A KMS that can no longer tear sessions down (its worker pool deadlocked, as the reference
//! records it), end to end: the real memprobe binary against the fake KMS's stuck pool, with
//! the harness's workload as the target whose threads climb. And the same waves on a healthy
//! KMS, which must never trip it.

#![allow(clippy::disallowed_types)]

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::fake_api::{FakeApi, Hostile};
use crate::harness::fake_kms::{Client, FakeKms};
use crate::harness::{Memprobe, Workload, free_port};

/// memprobe on `target` and `kms`, judging teardowns within `timeout`, with memory far under
/// the threshold: whatever happens is not memory's doing.
fn watch(kms: &FakeKms, target: &Workload, timeout: &str, extra: &[&str]) -> Memprobe {
    watch_with(kms, target, timeout, extra, &[])
}

/// [`watch`], with these environment variables.
fn watch_with(
    kms: &FakeKms,
    target: &Workload,
    timeout: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Memprobe {
    let (url, pid) = (kms.url(), target.pid.to_string());
    let mut args = vec![
        "--interval",
        "200ms",
        "--threshold",
        "1GiB",
        "--kms-url",
        &url,
        "--kms-ping-interval",
        "500ms",
        "--kms-timeout",
        "2s",
        "--kms-teardown-timeout",
        timeout,
        "--min-drain",
        "1s",
        "--pid",
        &pid,
    ];
    args.extend_from_slice(extra);
    Memprobe::start_with(&args, env)
}

fn teardown(status: &Value) -> &Value {
    &status["kms"]["teardown"]
}

#[test]
fn a_kms_whose_pool_deadlocks_takes_no_new_session_and_restarts_at_its_last_listed_one() {
    let kms = FakeKms::start();
    let first = kms.create_pipeline(2);
    let second = kms.create_pipeline(2);
    let mut target = Workload::start(None);
    let probe = watch(&kms, &target, "2s", &["--drain-timeout", "1h"]);
    probe.wait_for("healthy with 2 sessions, a check passed", |s| {
        s["state"] == "healthy" && s["sessions"] == 2 && teardown(s)["checks_passed_total"] != 0
    });

    kms.deadlock_pool();
    kms.destroy_pipeline(&first); // answered, never destroyed, still running
    target.send("threads 40");
    let status = probe.wait_for("draining: the teardown is stuck", |s| {
        s["state"] == "draining"
    });
    let reason = status["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("kms teardown stuck: ")
            && reason.contains("released but not destroyed for")
            && reason.contains("; threads "),
        "the reason names it, with the threads: {reason}"
    );
    assert_eq!(probe.get("/ready").code, 503, "no new session, at once");
    let checks = kms.requests_of("create");
    assert_eq!(probe.get("/healthz").code, 200, "its calls go on");
    let t = teardown(&status);
    assert_eq!(t["stuck"], true, "{status:#}");
    assert!(
        t["evidence"] == "check" || t["evidence"] == "unlisted",
        "{t}"
    );
    assert_eq!(status["memory_problem"]["kind"], "stuck_teardown");
    assert!(
        status["memory"]["threads"].as_u64().unwrap_or(0) > 40, // its main thread and 40
        "the target's threads: {status:#}"
    );

    // The list counts now: the released pipeline leaves it, the other is still a session.
    let status = probe.wait_for("1 listed session", |s| s["sessions"] == 1);
    assert_eq!(status["state"], "draining");
    assert!(teardown(&status)["released_not_destroyed"].as_u64() >= Some(2));
    let metrics = probe.get("/metrics").body;
    for line in [
        "memprobe_kms_teardown_stuck 1",
        "memprobe_memory_problem{kind=\"stuck_teardown\"} 1",
        "memprobe_memory_problem{kind=\"fragmentation\"} 0",
        "memprobe_target_threads ",
        "memprobe_kms_released_not_destroyed ",
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
    let page = probe.get("/").body;
    assert!(
        page.contains("memory problem: <b>stuck teardown</b>") && page.contains("id=\"threads\""),
        "the page says which problem, with the threads: {page}"
    );

    kms.destroy_pipeline(&second);
    let ended = Instant::now();
    let status = probe.wait_state("recycle");
    let reason = status["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("last session ended after draining")
            && reason.contains("kms teardown stuck"),
        "recycled at its last listed session, saying why: {reason}"
    );
    // Within seconds (a list every 3 s), not a garbage-collector period (240 s).
    assert!(
        ended.elapsed() < Duration::from_secs(30),
        "{:?}",
        ended.elapsed()
    );
    let logs = probe.logs().join("\n");
    assert_eq!(
        logs.matches("KMS can no longer end sessions").count(),
        1,
        "said once: {logs}"
    );
    assert!(
        kms.running_unreferenced() >= 3,
        "the fake's media still runs"
    );
    assert_eq!(
        kms.requests_of("create"),
        checks,
        "a stuck KMS gets no more check pipelines from memprobe"
    );

    // KMS restarted (a new serverId): its teardown is judged anew, its counters go on.
    let before = kms.server_id();
    kms.restart();
    let status = probe.wait_for("the new KMS connected", |s| {
        s["kms"]["connected"] == true && s["kms"]["server_id"] != before.as_str()
    });
    let t = teardown(&status);
    assert_eq!(t["stuck"], false, "{t}");
    assert_eq!(t["released_not_destroyed"], 0, "{t}");
    assert!(t["checks_passed_total"].as_u64() >= Some(1), "{t}");
}

#[test]
fn a_healthy_kms_under_the_same_waves_never_trips_it() {
    let kms = FakeKms::start();
    let mut target = Workload::start(None);
    let probe = watch(&kms, &target, "2s", &[]);
    probe.wait_for("connected", |s| s["kms"]["connected"] == true);
    let lists = kms.get_pipelines_calls();
    let start = Instant::now();
    let mut kept = Vec::new();
    // Waves of four, one kept each time, the others torn down correctly; threads rise and
    // fall with them.
    while start.elapsed() < Duration::from_secs(10) {
        let wave: Vec<String> = (0..4).map(|_| kms.create_pipeline(2)).collect();
        std::thread::sleep(Duration::from_millis(500));
        for pipeline in &wave[1..] {
            kms.destroy_pipeline(pipeline);
        }
        kept.push(wave[0].clone());
    }
    for pipeline in &kept {
        kms.destroy_pipeline(pipeline);
    }
    let status = probe.wait_for("no session left, checks passed", |s| {
        s["sessions"] == 0 && teardown(s)["checks_passed_total"].as_u64() >= Some(2)
    });
    let t = teardown(&status);
    assert_eq!(t["stuck"], false, "{status:#}");
    assert_eq!(status["state"], "healthy", "{status:#}");
    assert_eq!(probe.get("/ready").code, 200);
    assert_eq!(
        status["memory_problem"],
        Value::Null,
        "no problem: {status:#}"
    );
    assert_eq!(
        t["checks_total"], t["checks_passed_total"],
        "every check destroyed in time: {t}"
    );
    assert_eq!(
        kms.get_pipelines_calls(),
        lists,
        "checks call no getPipelines: they keep no abandoned pipeline alive"
    );
    let _ = &mut target;
}

#[test]
fn a_release_through_the_gate_is_followed_to_its_destruction() {
    let kms = FakeKms::start();
    let target = Workload::start(None);
    let gate = format!("127.0.0.1:{}", free_port());
    // A long timeout: no verdict and no check during the test, only what the gate saw.
    let probe = watch(&kms, &target, "1h", &["--kms-gate", &gate]);
    probe.wait_for("connected", |s| s["kms"]["connected"] == true);
    let mut client = Client::connect_to(&format!("ws://{gate}/kurento"));
    let created = client.call_json(
        r#"{"id":1,"method":"create","params":{"type":"MediaPipeline","constructorParams":{},"properties":{}},"jsonrpc":"2.0"}"#,
    );
    let pipeline = created["result"]["value"]
        .as_str()
        .expect("a pipeline")
        .to_string();
    let session = created["result"]["sessionId"]
        .as_str()
        .expect("a session")
        .to_string();
    probe.wait_for("1 session", |s| s["sessions"] == 1);
    kms.deadlock_pool();
    let release = format!(
        r#"{{"id":2,"method":"release","params":{{"object":"{pipeline}","sessionId":"{session}"}},"jsonrpc":"2.0"}}"#
    );
    client.call_json(&release);
    let status = probe.wait_for("the release followed", |s| {
        teardown(s)["released_not_destroyed"] == 1
    });
    assert_eq!(teardown(&status)["stuck"], false, "not before the timeout");
    assert_eq!(
        status["sessions"], 1,
        "counted until a list or its event says otherwise"
    );
}

/// The official kurento-client through the gate, on a KMS whose pool deadlocks: the client's
/// release is answered as usual, memprobe follows it and finds it never destroyed, and the
/// application's next pipeline is refused with the gate's error — the KMS restarts once the
/// client's other pipeline is released.
#[test]
fn the_official_client_is_refused_a_new_pipeline_once_its_release_is_not_destroyed() {
    let Some(mut client) = crate::harness::kurento_client::KurentoClient::start() else {
        return;
    };
    let kms = FakeKms::start();
    let target = Workload::start(None);
    let gate = format!("127.0.0.1:{}", free_port());
    let probe = watch(
        &kms,
        &target,
        "2s",
        &["--kms-gate", &gate, "--drain-timeout", "1h"],
    );
    probe.wait_for("connected", |s| s["kms"]["connected"] == true);
    client
        .connect(&format!("ws://{gate}/kurento"))
        .expect("the client connects through the gate");
    let call = client.pipeline().expect("a pipeline while healthy");
    let ended = client.pipeline().expect("another");
    probe.wait_for("2 sessions", |s| s["sessions"] == 2);

    kms.deadlock_pool();
    client.release(&ended).expect("KMS answers the release");
    let status = probe.wait_for("draining: stuck", |s| s["state"] == "draining");
    assert!(
        status["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("kms teardown stuck"),
        "{status:#}"
    );
    let refused = client
        .pipeline()
        .expect_err("no new pipeline on a stuck KMS");
    assert_eq!(refused.code, Some(-32099), "{refused}");
    client
        .endpoint(&call)
        .expect("the live call goes on: an endpoint on its pipeline");

    client.release(&call).expect("its release is answered");
    let status = probe.wait_state("recycle");
    assert!(
        status["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("kms teardown stuck"),
        "{status:#}"
    );
}

#[test]
fn with_events_on_a_stuck_teardown_is_a_warning_event_on_the_pod() {
    let api = FakeApi::start(Hostile::default());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    let kms = FakeKms::start();
    let first = kms.create_pipeline(2);
    let _second = kms.create_pipeline(2);
    let target = Workload::start(None);
    let events = [
        "--events",
        "--pod-name",
        "kms-0",
        "--pod-namespace",
        "media",
    ];
    let kubeconfig = kubeconfig.to_str().unwrap();
    let probe = watch_with(&kms, &target, "2s", &events, &[("KUBECONFIG", kubeconfig)]);
    probe.wait_for("the start check passed, 2 sessions", |s| {
        s["fleet"]["check"] == "passed" && s["sessions"] == 2
    });
    kms.deadlock_pool();
    kms.destroy_pipeline(&first);
    probe.wait_for("draining: the teardown is stuck", |s| {
        s["state"] == "draining"
    });
    let event = harness_wait(|| {
        api.events()
            .into_iter()
            .find(|e| e["reason"] == "TeardownStuck")
    });
    assert_eq!(event["type"], "Warning", "{event}");
    let note = event["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("kms teardown stuck: ") && note.contains("released but not destroyed"),
        "the Event says what memprobe saw: {note}"
    );
    assert_eq!(event["regarding"]["name"], "kms-0", "{event}");
    let drain = harness_wait(|| {
        api.events()
            .into_iter()
            .find(|e| e["reason"] == "DrainStarted")
    });
    assert!(
        drain["note"]
            .as_str()
            .is_some_and(|n| n.contains("kms teardown stuck")),
        "the drain's own Event names it too: {drain}"
    );
}

/// Waits up to the harness's deadline for `found` to find something.
fn harness_wait<T>(found: impl Fn() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(t) = found() {
            return t;
        }
        assert!(
            start.elapsed() < crate::harness::DEADLINE,
            "not found within the deadline"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
