//! The KMS gate (`--kms-gate`), end to end: the real memprobe binary relays a client's
//! WebSocket to the fake KMS, and answers a new pipeline's `create` itself once the instance
//! takes no new sessions. Requests are shaped as the official Java kurento-client sends them
//! (no `connect`; the session comes back in the first `create`), per
//! `shared/reference/kurento-jsonrpc.md`.

#![allow(clippy::disallowed_types)]

use std::time::Duration;

use serde_json::Value;

use crate::harness::fake_kms::{Client, FakeKms, Received};
use crate::harness::kurento_client::KurentoClient;
use crate::harness::{Memprobe, Workload, free_port, run_to_end};

/// memprobe watching `target` with `kms` behind a gate at `gate`.
fn start_gated(kms: &FakeKms, target: &Workload, gate: &str, extra: &[&str]) -> Memprobe {
    let (url, pid) = (kms.url(), target.pid.to_string());
    let mut args = vec![
        "--interval",
        "100ms",
        "--threshold",
        "100MiB",
        "--kms-url",
        &url,
        "--kms-ping-interval",
        "200ms",
        "--kms-timeout",
        "2s",
        "--pid",
        &pid,
        "--kms-gate",
        gate,
    ];
    args.extend_from_slice(extra);
    let probe = Memprobe::start(&args);
    probe.wait_for("connected to KMS, the gate on", |s| {
        s["kms"]["connected"] == true && s["kms_gate"]["listen"] == gate
    });
    probe
}

/// memprobe watching `target` with `kms` behind a gate on a free port; the gate's URL.
fn gated(kms: &FakeKms, target: &Workload, extra: &[&str]) -> (Memprobe, String, String) {
    let gate = format!("127.0.0.1:{}", free_port());
    let probe = start_gated(kms, target, &gate, extra);
    (probe, format!("ws://{gate}/kurento"), gate)
}

fn create_pipeline(id: u64) -> String {
    format!(
        r#"{{"id":{id},"method":"create","params":{{"type":"MediaPipeline","constructorParams":{{}},"properties":{{}}}},"jsonrpc":"2.0"}}"#
    )
}

fn create_endpoint(id: u64, pipeline: &str, session: &str) -> String {
    format!(
        r#"{{"id":{id},"method":"create","params":{{"type":"WebRtcEndpoint","constructorParams":{{"mediaPipeline":"{pipeline}"}},"properties":{{}},"sessionId":"{session}"}},"jsonrpc":"2.0"}}"#
    )
}

/// The reply to request `id`, skipping the events that may come before it.
fn reply(client: &mut Client, id: u64) -> Value {
    for _ in 0..50 {
        let frame: Value = serde_json::from_str(&client.text()).expect("JSON from the gate");
        if frame["id"] == id {
            return frame;
        }
    }
    panic!("no reply to request {id}");
}

#[test]
fn a_draining_kms_takes_no_new_pipeline_through_the_gate_while_its_calls_go_on() {
    let kms = FakeKms::start();
    let mut target = Workload::start(None);
    let (probe, gate_url, _) = gated(
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
    let mut client = Client::connect_to(&gate_url);

    client.send(&create_pipeline(2));
    let created = reply(&mut client, 2);
    let pipeline = created["result"]["value"]
        .as_str()
        .expect("a pipeline id")
        .to_string();
    let session = created["result"]["sessionId"]
        .as_str()
        .expect("a session")
        .to_string();
    client.send(&create_endpoint(3, &pipeline, &session));
    assert!(
        reply(&mut client, 3)["result"]["value"].is_string(),
        "an endpoint, while healthy"
    );
    probe.wait_for("the client's pipeline counted", |s| s["sessions"] == 1);

    target.send("alloc 150MiB");
    probe.wait_state("draining");
    let creates_seen = kms.requests_of("create");
    client.send(&create_pipeline(4));
    let refused = reply(&mut client, 4);
    assert_eq!(
        refused["error"]["code"], -32099,
        "the gate's stable code: {refused}"
    );
    assert_eq!(refused["error"]["data"]["type"], "KMS_DRAINING");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("this KMS takes no new media pipelines (draining:")
            && message.contains("create the pipeline on another KMS"),
        "the message says what happened and what to do: {message}"
    );
    assert_eq!(
        kms.requests_of("create"),
        creates_seen,
        "the refused create never reached KMS"
    );
    assert_eq!(
        kms.pipelines().len(),
        1,
        "no pipeline landed on the draining KMS"
    );

    client.send(&create_endpoint(5, &pipeline, &session));
    assert!(
        reply(&mut client, 5)["result"]["value"].is_string(),
        "an endpoint on the existing pipeline is created while draining"
    );
    client.send(&format!(
        r#"{{"id":6,"method":"invoke","params":{{"object":"{pipeline}","operation":"getChildren","sessionId":"{session}"}},"jsonrpc":"2.0"}}"#
    ));
    assert_eq!(
        reply(&mut client, 6)["result"]["value"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "an invoke on the existing pipeline is answered by KMS while draining"
    );
    let status = probe.wait_for("the refusal counted", |s| {
        s["kms_gate"]["pipelines_refused_total"] == 1
    });
    assert_eq!(status["state"], "draining", "the call is still live");
    assert_eq!(status["kms_gate"]["open_connections"], 1, "{status:#}");

    client.send(&format!(
        r#"{{"id":7,"method":"release","params":{{"object":"{pipeline}","sessionId":"{session}"}},"jsonrpc":"2.0"}}"#
    ));
    assert!(
        reply(&mut client, 7).get("error").is_none(),
        "the release passes"
    );
    let status = probe.wait_state("recycle");
    assert!(
        status["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("last session ended after draining"),
        "recycled right after the last release: {status:#}"
    );
    let metrics = probe.get("/metrics").body;
    assert!(
        metrics.contains("memprobe_kms_gate_pipelines_refused_total 1")
            && metrics.contains("memprobe_kms_gate_connections 1"),
        "the gate's figures are exported: {metrics}"
    );
}

#[test]
fn memprobe_restarted_mid_call_leaves_the_clients_pipeline_usable() {
    let kms = FakeKms::start();
    let target = Workload::start(None);
    let (probe, gate_url, gate) = gated(&kms, &target, &[]);
    let mut client = Client::connect_to(&gate_url);
    client.send(&create_pipeline(1));
    let created = reply(&mut client, 1);
    let pipeline = created["result"]["value"]
        .as_str()
        .expect("a pipeline")
        .to_string();
    let session = created["result"]["sessionId"]
        .as_str()
        .expect("a session")
        .to_string();

    drop(probe);
    assert!(
        matches!(
            client.recv(Duration::from_secs(10)),
            Received::Closed(_) | Received::Dropped
        ),
        "the client's WebSocket closes with memprobe, as it would with KMS"
    );
    assert_eq!(
        kms.pipelines(),
        vec![pipeline.clone()],
        "KMS keeps the pipeline"
    );

    let _again = start_gated(&kms, &target, &gate, &[]);
    // What kurento-client does on reconnecting: `connect` with its session, then carries on.
    let mut client = Client::connect_to(&gate_url);
    client.send(&format!(
        r#"{{"id":2,"method":"connect","params":{{"sessionId":"{session}"}},"jsonrpc":"2.0"}}"#
    ));
    assert_eq!(
        reply(&mut client, 2)["result"]["sessionId"],
        session.as_str()
    );
    client.send(&format!(
        r#"{{"id":3,"method":"create","params":{{"type":"WebRtcEndpoint","constructorParams":{{"mediaPipeline":"{pipeline}"}},"sessionId":"{session}"}},"jsonrpc":"2.0"}}"#
    ));
    assert!(
        reply(&mut client, 3)["result"]["value"].is_string(),
        "the pipeline made before memprobe's restart takes a new endpoint after it"
    );
}

/// The status code of the answer to a raw request.
fn status_line(addr: &str, request: &str) -> u16 {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).expect("connect to the gate");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(request.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).expect("a status line");
    String::from_utf8_lossy(&head[9..12])
        .parse()
        .expect("a status code")
}

#[test]
fn the_gate_answers_what_is_not_a_websocket_as_kms_does() {
    let kms = FakeKms::start();
    let target = Workload::start(None);
    let (_probe, _, gate) = gated(&kms, &target, &[]);
    assert_eq!(
        status_line(&gate, "GET /kurento HTTP/1.1\r\nHost: kms\r\n\r\n"),
        426,
        "a plain GET: upgrade required, as KMS answers"
    );
    let mut kept = std::net::TcpStream::connect(&gate).expect("connect to the gate");
    {
        use std::io::{Read, Write};
        kept.write_all(b"GET /kurento HTTP/1.1\r\nHost: kms\r\n\r\n")
            .unwrap();
        kept.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut answer = Vec::new();
        let _ = kept.read_to_end(&mut answer);
        assert!(
            String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 426"),
            "the connection is closed after an answer that opens no WebSocket, not kept alive"
        );
    }
    assert_eq!(
        status_line(
            &gate,
            "GET /kurento HTTP/1.1\r\nHost: kms\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        ),
        500,
        "an upgrade without a version gets KMS's 500, which Kurento's image health check expects"
    );

    kms.sigterm();
    let refused = std::net::TcpStream::connect(&gate).and_then(|tcp| {
        tokio_tungstenite::tungstenite::client(format!("ws://{gate}/kurento"), tcp)
            .map_err(std::io::Error::other)
    });
    let said = format!("{:?}", refused.err());
    assert!(
        said.contains("502"),
        "with KMS gone the handshake fails at once with 502, not a socket that never answers: {said}"
    );
}

#[test]
fn a_gate_that_would_relay_to_itself_or_to_no_kms_is_refused_at_start() {
    let out = run_to_end(
        &[
            "--kms-url",
            "ws://127.0.0.1:8888/kurento",
            "--kms-gate",
            "0.0.0.0:8888",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "--kms-gate: '0.0.0.0:8888' is where --kms-url ws://127.0.0.1:8888/kurento points"
        ) && err.contains("ws://127.0.0.1:8889/kurento"),
        "{err}"
    );
    let out = run_to_end(
        &[
            "--janus-url",
            "http://127.0.0.1:7088/admin",
            "--kms-gate",
            "0.0.0.0:8888",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "--kms-gate: '0.0.0.0:8888' relays to KMS, but memprobe does not talk to KMS here"
        ),
        "{err}"
    );
}

/// The official Java kurento-client through the gate: pipelines while healthy; the gate's
/// exception for a new one while draining, with its code and message; an existing pipeline
/// that keeps working (an endpoint, an invoke, its release); and the recycle right after.
#[test]
fn the_official_client_through_the_gate_is_refused_a_new_pipeline_only_while_draining() {
    let Some(mut client) = KurentoClient::start() else {
        return;
    };
    let kms = FakeKms::start();
    let mut target = Workload::start(None);
    let (probe, gate_url, _) = gated(
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
    client
        .connect(&gate_url)
        .expect("the client connects through the gate");
    let pipeline = client.pipeline().expect("a pipeline while healthy");
    let spare = client.pipeline().expect("a second one while healthy");
    client.release(&spare).expect("released while healthy");
    probe.wait_for("the client's pipeline counted", |s| s["sessions"] == 1);

    target.send("alloc 150MiB");
    probe.wait_state("draining");
    let refused = client
        .pipeline()
        .expect_err("no new pipeline while draining");
    assert_eq!(refused.code, Some(-32099), "{refused}");
    assert!(
        refused.class.ends_with("KurentoServerException")
            && refused
                .message
                .starts_with("this KMS takes no new media pipelines (draining:")
            && refused
                .message
                .contains("create the pipeline on another KMS"),
        "the exception the application sees says what happened and what to do: {refused}"
    );
    let in_transaction = client.transaction().expect_err("nor inside a transaction");
    assert_eq!(in_transaction.code, Some(-32099), "{in_transaction}");
    assert_eq!(
        kms.pipelines(),
        vec![pipeline.clone()],
        "nothing landed on the draining KMS"
    );

    let endpoint = client
        .endpoint(&pipeline)
        .expect("an endpoint on the existing pipeline, while draining");
    client
        .set_name(&endpoint, "caller")
        .expect("an invoke on it, while draining");
    assert_eq!(client.name(&endpoint).expect("its name"), "caller");
    assert_eq!(
        probe.status()["state"],
        "draining",
        "the call is still live"
    );

    client.release(&pipeline).expect("its release passes");
    let status = probe.wait_state("recycle");
    assert!(
        status["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("last session ended after draining"),
        "recycled right after the client's last release: {status:#}"
    );
    assert_eq!(
        status["kms_gate"]["pipelines_refused_total"], 2,
        "{status:#}"
    );
}

/// memprobe restarted in the middle of a call: the client's WebSocket drops with memprobe,
/// kurento-client reconnects through the gate once it is back, with its session, and its
/// pipeline, which KMS kept, is still usable.
#[test]
fn the_official_clients_pipeline_outlives_a_memprobe_restart_mid_call() {
    let Some(mut client) = KurentoClient::start() else {
        return;
    };
    let kms = FakeKms::start();
    let target = Workload::start(None);
    let (probe, gate_url, gate) = gated(&kms, &target, &[]);
    client
        .connect(&gate_url)
        .expect("connects through the gate");
    let pipeline = client.pipeline().expect("a pipeline");
    let endpoint = client.endpoint(&pipeline).expect("an endpoint");

    drop(probe);
    let _again = start_gated(&kms, &target, &gate, &[]);
    client.wait_event("reconnected", 1);
    client
        .set_name(&endpoint, "after-restart")
        .expect("the endpoint made before the restart answers after it");
    assert!(
        client.endpoint(&pipeline).is_ok(),
        "the pipeline takes a new endpoint after memprobe's restart"
    );
    assert_eq!(kms.pipelines(), vec![pipeline], "KMS kept the one pipeline");
}

/// The application-server example of docs/kurento.md is the code the tests run, word for
/// word.
#[test]
fn the_docs_application_server_example_is_the_one_the_tests_run() {
    let page = include_str!("../../docs/kurento.md");
    let example = include_str!("../kurento-client/src/main/java/example/PlacePipeline.java");
    let quoted = page
        .split_once("\n## For application-server authors\n")
        .and_then(|(_, rest)| rest.split_once("```java\n"))
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(code, _)| code)
        .expect("docs/kurento.md quotes the example");
    assert!(
        example.contains(quoted.trim_end()),
        "the example of docs/kurento.md is in PlacePipeline.java as written"
    );
}

/// A KMS picked by `--pid` (a VM's pidfile is the natural setup) keeps the KMS integration
/// on, and memprobe says so, where another process picked by pid turns it off.
#[test]
fn a_kms_picked_by_pid_keeps_the_kms_integration_on_and_says_so() {
    let kms_process = Workload::start(Some("kurento-media-server"));
    let pid = kms_process.pid.to_string();
    let probe = Memprobe::start(&["--interval", "100ms", "--pid", &pid]);
    let status = probe.wait_for("the target found", |s| s["state"] != "lost");
    assert!(
        status["kms"].is_object(),
        "the KMS integration is on for a kurento-media-server picked by pid: {status:#}"
    );
    probe.wait_said(&format!(
        "kms: on, since the target (--pid {pid}) is kurento-media-server"
    ));

    let other = Workload::start(None);
    let pid = other.pid.to_string();
    let probe = Memprobe::start(&["--interval", "100ms", "--pid", &pid]);
    let status = probe.wait_for("the target found", |s| s["state"] != "lost");
    assert!(status["kms"].is_null(), "another process: no KMS to reach");
    probe.wait_said("kms: off, since the target");
}

/// A flood of gate connections: the cap holds (the connection over it is answered 503), and
/// the probes answer throughout.
#[test]
fn a_flood_of_gate_connections_is_capped_and_takes_no_probe_away() {
    let kms = FakeKms::start();
    let target = Workload::start(None);
    let (probe, gate_url, gate) = gated(&kms, &target, &[]);
    let mut open = Vec::new();
    for _ in 0..128 {
        open.push(Client::connect_to(&gate_url));
        assert_eq!(
            probe.get("/ready").code,
            200,
            "the probes answer during the flood"
        );
    }
    assert_eq!(
        status_line(
            &gate,
            "GET /kurento HTTP/1.1\r\nHost: kms\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ),
        503,
        "one connection over the cap of 128 is answered 503"
    );
    probe.wait_for("the rejection counted", |s| {
        s["kms_gate"]["connections_rejected_total"] == 1 && s["kms_gate"]["open_connections"] == 128
    });
    drop(open);
    probe.wait_for("the relays closed with their clients", |s| {
        s["kms_gate"]["open_connections"] == 0
    });
    let mut client = Client::connect_to(&gate_url);
    client.send(&create_pipeline(1));
    assert!(
        reply(&mut client, 1)["result"]["value"].is_string(),
        "the gate takes clients again"
    );
}

/// A handshake must come whole within 10 s and 16 KiB: a half-sent head is closed, and one
/// too large is refused, so no client holds a gate connection without opening a WebSocket.
#[test]
fn a_half_sent_or_oversized_handshake_is_closed() {
    use std::io::{Read, Write};
    let kms = FakeKms::start();
    let target = Workload::start(None);
    let (_probe, _, gate) = gated(&kms, &target, &[]);

    let mut half = std::net::TcpStream::connect(&gate).expect("connect to the gate");
    half.write_all(b"GET /kurento HTTP/1.1\r\nHost: kms\r\n")
        .unwrap();
    half.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = half.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(55),
        "a head not sent whole is closed after the gate's 10 s, not held"
    );

    let mut large = std::net::TcpStream::connect(&gate).expect("connect to the gate");
    let filler = format!("X-Filler: {}\r\n", "a".repeat(20 * 1024));
    let _ =
        large.write_all(format!("GET /kurento HTTP/1.1\r\nHost: kms\r\n{filler}\r\n").as_bytes());
    large
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = Vec::new();
    let ended = large.read_to_end(&mut answer);
    let timed_out = ended.as_ref().is_err_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    });
    assert!(
        !timed_out,
        "a head over 16 KiB closes its connection, not held open"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "a head over 16 KiB is refused: {answer}"
    );
}
