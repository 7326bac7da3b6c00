//! Drains on demand: the admin API with the fake KMS's sessions, the `memprobe drain` client,
//! and the pod-deletion sequence the kubelet plays, read from the rendered manifest.

// Waiters block on the real clock.
#![allow(clippy::disallowed_types)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::fake_kms::FakeKms;
use crate::harness::{
    DEADLINE, MEMPROBE, Memprobe, Reaped, Workload, flood, free_port, shipped, strict, tool,
};

const TOKEN: &str = "test-token-0123456789abcdef";

/// memprobe watching `target` with `kms` and the admin API on, its token in a file.
fn with_admin(kms: &FakeKms, target: &Workload) -> (Memprobe, tempfile::NamedTempFile) {
    let mut token = tempfile::NamedTempFile::new().unwrap();
    writeln!(token, "{TOKEN}").unwrap();
    let probe = admin_on(Command::new(MEMPROBE), "127.0.0.1:0", kms, target, &token);
    (probe, token)
}

/// memprobe as `command` runs it, on `listen`, watching `target` with `kms`, the admin API's
/// token in `token`.
fn admin_on(
    command: Command,
    listen: &str,
    kms: &FakeKms,
    target: &Workload,
    token: &tempfile::NamedTempFile,
) -> Memprobe {
    let (url, pid) = (kms.url(), target.pid.to_string());
    Memprobe::start_command_on(
        command,
        listen,
        &[
            "--interval",
            "100ms",
            "--threshold",
            "1Gi",
            "--kms-url",
            &url,
            "--kms-ping-interval",
            "200ms",
            "--kms-timeout",
            "1s",
            "--pid",
            &pid,
            "--admin-token-file",
            token.path().to_str().unwrap(),
        ],
        &[],
    )
}

/// One admin call; the status code and the JSON body.
fn admin(probe: &Memprobe, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let url = format!("http://{}{path}", probe.addr);
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut response = match (method, &auth) {
        ("POST", Some(a)) => agent.post(&url).header("Authorization", a).send_empty(),
        ("POST", None) => agent.post(&url).send_empty(),
        ("DELETE", Some(a)) => agent.delete(&url).header("Authorization", a).call(),
        ("DELETE", None) => agent.delete(&url).call(),
        ("GET", Some(a)) => agent.get(&url).header("Authorization", a).call(),
        ("GET", None) => agent.get(&url).call(),
        other => panic!("no {other:?} here"),
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let code = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[test]
fn a_requested_drain_stops_new_sessions_at_once_and_its_waiter_returns_with_the_last() {
    let kms = FakeKms::start();
    let sessions: Vec<String> = (0..3).map(|_| kms.create_pipeline(1)).collect();
    let target = Workload::start(None);
    let (probe, _token) = with_admin(&kms, &target);
    probe.wait_for("3 sessions, healthy", |s| {
        s["state"] == "healthy" && s["sessions"] == 3
    });

    assert_eq!(admin(&probe, "POST", "/drain", None).0, 401, "no token");
    assert_eq!(
        admin(&probe, "POST", "/drain", Some("wrong-token-0123456789")).0,
        401,
        "a wrong token"
    );
    assert_eq!(
        probe.get("/ready").code,
        200,
        "refused calls change nothing"
    );

    let (code, body) = admin(&probe, "POST", "/drain", Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["draining"], true);
    assert_eq!(
        probe.get("/ready").code,
        503,
        "no new sessions from the moment the drain is answered"
    );
    assert_eq!(probe.get("/healthz").code, 200, "the live calls go on");
    let status = probe.status();
    assert_eq!(status["drain_requested_by"], "admin");
    assert_eq!(status["reason"], "drain requested by admin");
    assert!(
        !status.to_string().contains(TOKEN),
        "the token is never shown"
    );

    // A waiter, and another one that gives up at once.
    let addr = probe.addr;
    let waiter = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut r = agent
            .get(format!("http://{addr}/drain?wait=30s"))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .call()
            .unwrap();
        let code = r.status().as_u16();
        let body: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        (code, body, Instant::now())
    });
    let (code, body) = admin(&probe, "GET", "/drain?wait=200ms", Some(TOKEN));
    assert_eq!(code, 503, "sessions still live at the deadline: {body}");
    assert_eq!(body["sessions"], 3);

    for pipeline in &sessions {
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !waiter.is_finished(),
            "the waiter waits while sessions live"
        );
        kms.destroy_pipeline(pipeline);
    }
    let last_ended = Instant::now();
    let (code, body, answered) = waiter.join().unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["drained"], true);
    assert!(
        answered.duration_since(last_ended) < Duration::from_secs(20),
        "the waiter answers once the last session has ended, not at its own 30 s deadline"
    );
    let status = probe.wait_for("zero sessions", |s| s["sessions"] == 0);
    assert_eq!(
        status["state"], "draining",
        "a requested drain is not recycled for: it holds until cancelled or stopped"
    );

    let (code, body) = admin(&probe, "DELETE", "/drain", Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    probe.wait_state("healthy");
    assert_eq!(probe.get("/ready").code, 200, "cancelled: ready again");
    let metrics = probe.get("/metrics").body;
    assert!(
        metrics.contains("memprobe_drain_requests_total 1"),
        "{metrics}"
    );
}

#[test]
fn without_a_token_there_is_no_admin_api() {
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let probe = Memprobe::start(&["--interval", "100ms", "--pid", &pid]);
    probe.wait_state("healthy");
    assert_eq!(admin(&probe, "POST", "/drain", Some(TOKEN)).0, 404);
    assert_eq!(probe.get("/ready").code, 200);
}

#[test]
fn memprobe_drain_exits_0_when_drained_1_at_the_deadline_2_on_bad_input() {
    let kms = FakeKms::start();
    let session = kms.create_pipeline(1);
    let target = Workload::start(None);
    let (probe, token) = with_admin(&kms, &target);
    probe.wait_for("1 session", |s| s["sessions"] == 1);
    let url = format!("http://{}", probe.addr);
    let drain = |args: &[&str], token_file: &str| {
        Command::new(MEMPROBE)
            .arg("drain")
            .args(["--url", &url, "--token-file", token_file])
            .args(args)
            .output()
            .expect("run memprobe drain")
    };
    let token_path = token.path().to_str().unwrap();

    let out = drain(&["--wait", "300ms"], token_path);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not drained by the deadline"));
    assert_eq!(
        probe.get("/ready").code,
        503,
        "the drain started all the same"
    );

    // A long wait says every so often (a tenth of --wait, 1 s here) how many are left.
    let out = drain(&["--wait", "3s"], token_path);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = stderr
        .lines()
        .filter(|l| l.starts_with("memprobe drain: waiting: 1 session left after"))
        .count();
    assert!(said >= 1, "the wait says what is left: {stderr}");
    assert!(stderr.contains("not drained by the deadline"), "{stderr}");

    kms.destroy_pipeline(&session);
    let out = drain(&["--wait", "20s"], token_path);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("drained"));

    let wrong = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(wrong.path(), "another-token-0123456789").unwrap();
    let out = drain(&[], wrong.path().to_str().unwrap());
    assert_eq!(
        out.status.code(),
        Some(2),
        "a refused token is bad input: {out:?}"
    );
    let out = drain(&["--wait", "soon"], token_path);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1);
    assert!(stderr.contains("--wait: 'soon'"), "{stderr}");
    // A FIFO for a token file is refused, never waited on for a writer.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("token");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let out = drain(&[], fifo.to_str().unwrap());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is a FIFO, not a regular file"), "{stderr}");
}

/// What the rendered manifest says happens when a KMS pod is deleted.
struct PreStop {
    /// The KMS container's preStop exec command.
    command: Vec<String>,
    /// The KMS container's plain environment.
    env: Vec<(String, String)>,
    /// The pod's terminationGracePeriodSeconds.
    grace: u64,
}

/// The Deployment that `kubectl kustomize deploy/kubernetes/DIR` renders.
fn rendered_deployment(dir: &str) -> Option<Value> {
    let kubectl = tool("kubectl")?;
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(format!("{root}/deploy/kubernetes/{dir}"))
        .output()
        .expect("kubectl kustomize");
    assert!(out.status.success(), "{out:?}");
    let yaml = String::from_utf8_lossy(&out.stdout).into_owned();
    serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .find(|d: &Value| d["kind"] == "Deployment")
}

/// The KMS container's preStop hook and environment in the rendered base manifest.
fn pre_stop() -> Option<PreStop> {
    let deployment = rendered_deployment("base")?;
    let spec = &deployment["spec"]["template"]["spec"];
    let kms = spec["containers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == "kms")?;
    let command = kms["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()?
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let env = crate::harness::plain_env(kms);
    let grace = spec["terminationGracePeriodSeconds"].as_u64()?;
    Some(PreStop {
        command,
        env,
        grace,
    })
}

#[test]
fn deleting_a_pod_sends_kms_its_sigterm_only_once_its_last_session_has_ended() {
    let Some(PreStop {
        command,
        env,
        grace,
    }) = pre_stop()
    else {
        assert!(!strict(), "the rendered base has no preStop hook for KMS");
        return;
    };
    let kms = FakeKms::start();
    let session = kms.create_pipeline(1);
    let mut target = Workload::start(None);
    let (probe, _token) = with_admin(&kms, &target);
    probe.wait_for("1 session", |s| s["sessions"] == 1);

    // The kubelet runs the hook in the KMS container, which shares the pod's network: the
    // probe port is on 127.0.0.1 there. Here only the port and the token's path differ.
    let port = probe.addr.port().to_string();
    let mut hook = Command::new(&command[0]);
    hook.args(&command[1..]);
    for (name, value) in &env {
        hook.env(name, value);
    }
    // The Secret's part: the token in the environment, as secretKeyRef puts it.
    hook.env("MEMPROBE_PORT", &port)
        .env("MEMPROBE_ADMIN_TOKEN", TOKEN);
    let started = Instant::now();
    let mut running = hook.spawn().expect("run the preStop hook");
    probe.wait_for("the drain the hook asked for", |s| s["state"] == "draining");
    assert_eq!(
        probe.get("/ready").code,
        503,
        "the Service stops routing at once"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        running.try_wait().unwrap().is_none(),
        "the hook waits while a session is live"
    );
    kms.destroy_pipeline(&session);
    let status = running.wait().unwrap();
    assert!(status.success(), "the hook ends once drained");
    // The kubelet's next step: SIGTERM to KMS.
    let live = probe.status()["sessions"].as_u64();
    assert_eq!(live, Some(0), "zero sessions are live when SIGTERM is sent");
    target.kill();
    assert!(
        started.elapsed() < Duration::from_secs(grace),
        "within the grace period"
    );
}

/// A rotated token: `--admin-token-file` is read again as calls come (at most once a
/// second), so the new token works and the old one stops working, with no restart.
#[test]
fn a_rotated_admin_token_takes_over_and_the_old_one_stops_working() {
    let kms = FakeKms::start();
    let target = Workload::start(None);
    let (probe, token) = with_admin(&kms, &target);
    probe.wait_state("healthy");
    assert_eq!(admin(&probe, "GET", "/drain", Some(TOKEN)).0, 200);
    let rotated = "rotated-token-fedcba9876543210";
    std::fs::write(token.path(), format!("{rotated}\n")).unwrap();
    // Within a second or so of the change the file is read again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin(&probe, "GET", "/drain", Some(rotated)).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the rotated token never took over"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        admin(&probe, "GET", "/drain", Some(TOKEN)).0,
        401,
        "the old token no longer works"
    );
    probe.said_once("holds a new admin token");
    probe.never_shown(&[rotated, TOKEN]);
}

fn token_file() -> tempfile::NamedTempFile {
    let mut token = tempfile::NamedTempFile::new().unwrap();
    writeln!(token, "{TOKEN}").unwrap();
    token
}

/// A drain waiter on a raw connection of its own, started once its request is sent: the
/// whole answer (empty if the connection was dropped without one) and when it ended.
fn raw_waiter(addr: SocketAddr, request: &str) -> JoinHandle<(String, Instant)> {
    let (sent_tx, sent) = std::sync::mpsc::channel();
    let request = format!(
        "{request} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let waiter = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        sent_tx.send(()).unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        (answer, Instant::now())
    });
    sent.recv().unwrap();
    waiter
}

/// `memprobe drain` (as `binary`) against memprobe at `addr`, waiting up to `wait`.
fn drain_client(binary: &Path, addr: SocketAddr, token: &Path, wait: &str) -> Reaped {
    let child = Command::new(binary)
        .arg("drain")
        .args(["--url", &format!("http://{addr}"), "--wait", wait])
        .arg("--token-file")
        .arg(token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run memprobe drain");
    Reaped(child)
}

/// Waits for `child` to exit; its status, what it printed (stdout then stderr) and when.
fn finish(child: &mut Reaped) -> (ExitStatus, String, Instant) {
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "{:?} did not exit", child.0);
        std::thread::sleep(Duration::from_millis(20));
    };
    let ended = Instant::now();
    let mut said = String::new();
    for pipe in [
        child.0.stdout.take().map(|p| Box::new(p) as Box<dyn Read>),
        child.0.stderr.take().map(|p| Box::new(p) as Box<dyn Read>),
    ]
    .into_iter()
    .flatten()
    {
        let mut pipe = pipe;
        let _ = pipe.read_to_string(&mut said);
    }
    (status, said, ended)
}

/// The flood that once cut a waiter after two seconds: 10,000 idle or half-sent connections,
/// half before the wait and half during it. The cap closes those, never the waiters.
#[test]
fn a_drain_waiter_outlives_a_flood_and_memprobe_drain_exits_0_only_once_drained() {
    let Some(binary) = shipped() else {
        return;
    };
    crate::harness::many_files();
    let kms = FakeKms::start();
    let session = kms.create_pipeline(1);
    let target = Workload::start(None);
    let token = token_file();
    let probe = admin_on(Command::new(&binary), "127.0.0.1:0", &kms, &target, &token);
    probe.wait_for("1 session", |s| s["sessions"] == 1);

    let before = flood(probe.addr, 5_000);
    let mut client = drain_client(&binary, probe.addr, token.path(), "120s");
    probe.wait_for("the drain memprobe drain asked for", |s| {
        s["state"] == "draining"
    });
    let waiter = raw_waiter(probe.addr, "GET /drain?wait=120s");
    // A later connection answered: the waiter's request, sent before, is in its handler.
    assert_eq!(probe.get("/ready").code, 503);
    let during = flood(probe.addr, 5_000);
    assert!(
        before.len() + during.len() >= 9_000,
        "the flood could open only {} connections",
        before.len() + during.len()
    );
    assert!(
        !waiter.is_finished(),
        "the waiter still waits through 10,000 connections: it was not closed"
    );
    assert!(
        client.0.try_wait().unwrap().is_none(),
        "memprobe drain still waits"
    );

    kms.destroy_pipeline(&session);
    let last_ended = Instant::now();
    let (answer, answered) = waiter.join().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the waiter is answered 200 once drained: {answer:?}"
    );
    assert!(answer.contains(r#""drained":true"#), "{answer}");
    assert!(answered >= last_ended);
    let (status, said, exited) = finish(&mut client);
    assert_eq!(status.code(), Some(0), "{said}");
    assert!(said.contains("drained"), "{said}");
    assert!(
        exited >= last_ended,
        "exits 0 only once the last session ended"
    );
    assert!(
        !said.contains("asking again"),
        "its connection was never closed under it: {said}"
    );
    drop((before, during));
}

/// memprobe's own SIGTERM: a waiter is answered, 503 `stopping`, before the port closes; and
/// `memprobe drain --wait`, told so, asks again until its own deadline (a memprobe that
/// restarts would answer it), never ending its wait early.
#[test]
fn a_waiter_is_answered_503_stopping_when_memprobe_stops() {
    let binary = crate::harness::shipped_or_dev();
    let kms = FakeKms::start();
    let _session = kms.create_pipeline(1);
    let target = Workload::start(None);
    let token = token_file();
    let mut probe = admin_on(Command::new(&binary), "127.0.0.1:0", &kms, &target, &token);
    probe.wait_for("1 session", |s| s["sessions"] == 1);
    let mut client = drain_client(&binary, probe.addr, token.path(), "20s");
    let asked = Instant::now();
    probe.wait_for("the drain", |s| s["state"] == "draining");
    let waiter = raw_waiter(probe.addr, "GET /drain?wait=60s");
    assert_eq!(probe.get("/ready").code, 503);

    probe.signal("TERM");
    let (answer, _) = waiter.join().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "a waiter is answered, not dropped: {answer:?}"
    );
    assert!(answer.contains(r#""state":"stopping""#), "{answer}");
    assert_eq!(probe.wait_exit().code(), Some(0));
    let (status, said, _) = finish(&mut client);
    assert_eq!(status.code(), Some(1), "not drained: {said}");
    assert!(said.contains("memprobe is stopping"), "{said}");
    assert!(
        said.contains("not drained by the deadline"),
        "a stopping memprobe does not end the wait: {said}"
    );
    assert!(
        asked.elapsed() >= Duration::from_secs(16),
        "the client waited (nearly) out its own 20 s deadline"
    );
}

/// memprobe killed and started again while `memprobe drain --wait` and the manifest's preStop
/// hook wait: both ask again (the new memprobe drains at their request) and end only once the
/// last session has.
#[test]
fn memprobe_drain_and_the_pre_stop_hook_ask_again_when_memprobe_restarts_mid_wait() {
    let Some(PreStop { command, env, .. }) = pre_stop() else {
        assert!(!strict(), "the rendered base has no preStop hook for KMS");
        return;
    };
    let kms = FakeKms::start();
    let session = kms.create_pipeline(1);
    let target = Workload::start(None);
    let token = token_file();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let first = admin_on(Command::new(MEMPROBE), &listen, &kms, &target, &token);
    first.wait_for("1 session", |s| s["sessions"] == 1);

    let mut client = drain_client(Path::new(MEMPROBE), first.addr, token.path(), "60s");
    let mut hook = Command::new(&command[0]);
    hook.args(&command[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("MEMPROBE_PORT", port.to_string())
        .env("MEMPROBE_ADMIN_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut hook = Reaped(hook.spawn().expect("run the preStop hook"));
    first.wait_for("the drain", |s| s["state"] == "draining");
    drop(first);

    let second = admin_on(Command::new(MEMPROBE), &listen, &kms, &target, &token);
    second.wait_for("the drain asked again of the new memprobe", |s| {
        s["state"] == "draining" && s["drain_requested_by"] == "admin"
    });
    assert!(
        client.0.try_wait().unwrap().is_none(),
        "memprobe drain waits on"
    );
    assert!(hook.0.try_wait().unwrap().is_none(), "the hook waits on");

    kms.destroy_pipeline(&session);
    let last_ended = Instant::now();
    for (what, child) in [("memprobe drain", &mut client), ("the hook", &mut hook)] {
        let (status, said, exited) = finish(child);
        assert_eq!(status.code(), Some(0), "{what}: {said}");
        assert!(said.contains("asking again"), "{what} asked again: {said}");
        assert!(exited >= last_ended, "{what} ends only once drained");
    }
}

/// Before Kubernetes 1.29 memprobe is a plain container with a preStop hook of its own
/// (`memprobe drain --wait`). Without the optional Secret `memprobe-admin` there is no token
/// on either side: the hook must exit 0 at once, or every pod deletion records a
/// FailedPreStopHook event. Run as the rendered overlay says, on the shipped binary.
#[test]
fn the_pre_1_29_sidecars_own_pre_stop_succeeds_at_once_without_the_admin_secret() {
    let Some(deployment) = rendered_deployment("overlays/pre-1.29") else {
        assert!(!strict(), "the pre-1.29 overlay renders no Deployment");
        return;
    };
    let spec = &deployment["spec"]["template"]["spec"];
    let memprobe = spec["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "memprobe"))
        .expect("memprobe among the plain containers");
    let hook: Vec<String> = memprobe["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .expect("memprobe's own preStop hook")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(hook[..2], ["/memprobe", "drain"], "{hook:?}");
    let token_from_secret = memprobe["env"].as_array().unwrap().iter().any(|e| {
        e["name"] == "MEMPROBE_ADMIN_TOKEN" && e["valueFrom"]["secretKeyRef"]["optional"] == true
    });
    assert!(
        token_from_secret,
        "the token is the optional Secret's: {memprobe:#}"
    );

    // memprobe as the overlay runs it, watching a workload (not any kurento-media-server here).
    let binary = crate::harness::shipped_or_dev();
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let mut args: Vec<String> = memprobe["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .filter(|a| !a.starts_with("--name"))
        .collect();
    args.extend(["--pid".into(), pid, "--kms-url".into(), "none".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = crate::harness::plain_env(memprobe);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let probe = Memprobe::start_binary(&binary, &args, &env);
    probe.wait_state("healthy");

    // The hook, in memprobe's container: its environment, with the Secret missing.
    let started = Instant::now();
    let out = Command::new(&binary)
        .args(&hook[1..])
        .env_clear()
        .envs(env.iter().copied())
        .env("MEMPROBE_DRAIN_URL", format!("http://{}", probe.addr))
        .output()
        .expect("run the preStop hook");
    assert_eq!(
        out.status.code(),
        Some(0),
        "no token on either side: the hook succeeds: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no admin API"),
        "{out:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "at once, not after its --wait: {:?}",
        started.elapsed()
    );
    assert_eq!(probe.get("/ready").code, 200, "and nothing was drained");

    // A memprobe that has an admin API, asked with no token: the missing token is said.
    let kms = FakeKms::start();
    let (with_api, _token) = with_admin(&kms, &target);
    let out = Command::new(&binary)
        .args(&hook[1..])
        .env_clear()
        .env("MEMPROBE_DRAIN_URL", format!("http://{}", with_api.addr))
        .output()
        .expect("run the preStop hook");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("MEMPROBE_ADMIN_TOKEN"),
        "{out:?}"
    );
}

/// `memprobe drain` at a URL where another web server answers: its 200 is no drain, and
/// the mistake is said, exit 2.
#[test]
fn memprobe_drain_takes_only_memprobes_answer_as_drained() {
    let other = crate::harness::count_server::CountServer::start("<html>it works</html>");
    let mut token = tempfile::NamedTempFile::new().unwrap();
    writeln!(token, "{TOKEN}").unwrap();
    let mut child = drain_client(Path::new(MEMPROBE), other.addr, token.path(), "5s");
    let (status, said, _) = finish(&mut child);
    assert_eq!(status.code(), Some(2), "{said}");
    assert!(said.contains("is not memprobe's"), "{said}");
}
