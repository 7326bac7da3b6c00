//! The official Java kurento-client (`org.kurento:kurento-client` 7.3.0, driven through
//! `harness::kurento_client`) against the fake KMS, as an application server uses it: what it
//! sends, what it sees of a JSON-RPC error, how it lives through a dropped connection, and what
//! memprobe makes of its pipelines.

#![allow(clippy::disallowed_types)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::fake_kms::{FakeKms, Received};
use crate::harness::kurento_client::KurentoClient;
use crate::harness::{DEADLINE, Workload};
use crate::kurento::watch;
use crate::kurento_fake::{event, subscriber};

/// The gate's error, as issue 29 specifies it; here the fake answers it, for the client's view.
const DRAINING_CODE: i64 = -32099;
const DRAINING_MESSAGE: &str =
    "this KMS takes no new media pipelines: draining; create it on another KMS";

/// Every frame the fake read or answered, for a failure's message.
fn wire(kms: &FakeKms) -> String {
    kms.wire()
        .iter()
        .map(|w| {
            let arrow = if w.inbound { "->" } else { "<-" };
            format!("  #{} {arrow} {}", w.connection, w.text)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The client's connection and the session the answer to its first `create` gave it (other
/// connections, memprobe's or a watcher's, have sessions of their own).
fn client_session(kms: &FakeKms) -> (u64, String) {
    let wire = kms.wire();
    let create = wire
        .iter()
        .find(|w| w.inbound && w.text.contains(r#""method":"create""#))
        .unwrap_or_else(|| panic!("no create from the client:\n{}", self::wire(kms)));
    let session = wire
        .iter()
        .filter(|w| !w.inbound && w.connection == create.connection)
        .filter_map(|w| serde_json::from_str::<Value>(&w.text).ok())
        .find_map(|answer| answer["result"]["sessionId"].as_str().map(str::to_owned))
        .expect("the create's answer names the session");
    (create.connection, session)
}

/// The events a subscriber reads, as (type, object), until `done` says so.
fn events_until(
    client: &mut crate::harness::fake_kms::Client,
    done: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let end = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    while !done(&seen) {
        assert!(Instant::now() < end, "events so far: {seen:?}");
        if let Received::Text(text) = client.recv(Duration::from_millis(200)) {
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["method"] == "onEvent" {
                seen.push(event(&frame));
            }
        }
    }
    seen
}

#[test]
fn the_client_creates_a_pipeline_and_an_endpoint_invokes_and_releases_them() {
    let Some(mut client) = KurentoClient::start() else {
        return;
    };
    let kms = FakeKms::start();
    let (mut watcher, _) = subscriber(&kms);
    client.connect(&kms.url()).unwrap();

    let pipeline = client.pipeline().unwrap();
    assert!(pipeline.ends_with("_kurento.MediaPipeline"), "{pipeline}");
    let endpoint = client.endpoint(&pipeline).unwrap();
    assert!(
        endpoint.starts_with(&format!("{pipeline}/"))
            && endpoint.ends_with("_kurento.WebRtcEndpoint"),
        "{endpoint}"
    );
    assert_eq!(kms.pipelines(), std::slice::from_ref(&pipeline));
    assert_eq!(
        client.name(&pipeline).unwrap(),
        pipeline,
        "a name is the id until set"
    );
    client.set_name(&pipeline, "call-42").unwrap();
    assert_eq!(client.name(&pipeline).unwrap(), "call-42");
    assert_eq!(
        client.children(&pipeline).unwrap(),
        std::slice::from_ref(&endpoint)
    );
    assert!(!client.subscribe(&pipeline).unwrap().is_empty());

    client.release(&pipeline).unwrap();
    assert!(
        kms.pipelines().is_empty(),
        "gone from the list at the release"
    );
    let seen = events_until(&mut watcher, |seen| {
        seen.iter()
            .any(|(kind, object)| kind == "ObjectDestroyed" && *object == pipeline)
    });
    let destroyed: Vec<&str> = seen
        .iter()
        .filter(|(kind, _)| kind == "ObjectDestroyed")
        .map(|(_, object)| object.as_str())
        .collect();
    assert_eq!(
        destroyed,
        [endpoint.as_str(), pipeline.as_str()],
        "the endpoint's ObjectDestroyed, then the pipeline's; events {seen:?}"
    );
    client.destroy().unwrap();

    // What the client sent, as the reference records it from a real KMS: no connect, the
    // session from the first create's answer in every later request, closeSession last.
    let (connection, session) = client_session(&kms);
    let sent: Vec<Value> = kms
        .wire()
        .iter()
        .filter(|w| w.inbound && w.connection == connection)
        .map(|w| serde_json::from_str(&w.text).unwrap())
        .collect();
    let methods: Vec<&str> = sent.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert!(!methods.contains(&"connect"), "{}", wire(&kms));
    assert_eq!(methods.last(), Some(&"closeSession"), "{}", wire(&kms));
    let first_create = sent.iter().position(|r| r["method"] == "create").unwrap();
    assert!(sent[first_create]["params"].get("sessionId").is_none());
    assert_eq!(
        sent[first_create]["params"],
        json!({"type": "MediaPipeline", "constructorParams": {}, "properties": {}})
    );
    for request in &sent[first_create + 1..] {
        if request["method"] != "ping" {
            assert_eq!(request["params"]["sessionId"], session, "{request}");
        }
    }
}

#[test]
fn a_json_rpc_error_reaches_the_application_as_a_kurento_server_exception_with_its_code() {
    let Some(mut client) = KurentoClient::start() else {
        return;
    };
    let kms = FakeKms::start();
    client.connect(&kms.url()).unwrap();
    let kept = client.pipeline().unwrap();
    kms.refuse_create(
        "MediaPipeline",
        DRAINING_CODE,
        DRAINING_MESSAGE,
        Some(json!({"type": "KMS_DRAINING"})),
    );

    let error = client.pipeline().unwrap_err();
    assert_eq!(
        error.class,
        "org.kurento.client.internal.server.KurentoServerException"
    );
    assert_eq!(
        error.message,
        format!("{DRAINING_MESSAGE} (Code:-32099, Type:null, Data: {{\"type\":\"KMS_DRAINING\"}})"),
        "getMessage() is the error's message, then its code and data as the client prints them"
    );
    assert_eq!(
        error.code,
        Some(DRAINING_CODE),
        "getCode() is the error's code"
    );
    assert_eq!(
        error.error_type, None,
        "getErrorType() is null: kurento-client 7.3.0 keeps data as text and never reads its type"
    );
    assert_eq!(error.raw["serverMessage"], DRAINING_MESSAGE);
    assert_eq!(error.raw["data"], r#"{"type":"KMS_DRAINING"}"#);

    // A create inside a transaction fails the transaction, with the same error inside.
    let error = client.transaction().unwrap_err();
    assert_eq!(
        error.class, "org.kurento.client.TransactionExecutionException",
        "{error:?}"
    );
    assert!(error.message.contains(DRAINING_MESSAGE), "{error:?}");
    assert_eq!(
        error.code,
        Some(DRAINING_CODE),
        "a KurentoServerException too, with the same code"
    );

    // The refusal is the create's alone: the existing pipeline keeps working.
    let endpoint = client.endpoint(&kept).unwrap();
    assert_eq!(client.children(&kept).unwrap(), [endpoint]);
    client.release(&kept).unwrap();
    kms.accept_creates();
    assert!(client.pipeline().is_ok());
}

#[test]
fn a_transaction_creates_a_pipeline_and_its_endpoint_in_one_request() {
    let Some(mut client) = KurentoClient::start() else {
        return;
    };
    let kms = FakeKms::start();
    client.connect(&kms.url()).unwrap();
    let (pipeline, endpoint) = client.transaction().unwrap();
    assert!(endpoint.starts_with(&format!("{pipeline}/")), "{endpoint}");
    assert_eq!(kms.pipelines(), std::slice::from_ref(&pipeline));
    assert_eq!(client.children(&pipeline).unwrap(), [endpoint]);
    let transaction = kms
        .wire()
        .into_iter()
        .find(|w| w.inbound && w.text.contains(r#""method":"transaction""#))
        .expect("one transaction request");
    let request: Value = serde_json::from_str(&transaction.text).unwrap();
    let operations = request["params"]["operations"].as_array().unwrap();
    assert_eq!(operations[0]["params"]["type"], "MediaPipeline");
    assert_eq!(
        operations[1]["params"]["constructorParams"]["mediaPipeline"], "newref:0",
        "the endpoint names the pipeline the transaction makes: {request}"
    );
}

#[test]
fn another_client_finds_a_pipeline_by_its_id_and_creates_an_endpoint_on_it() {
    let Some(mut maker) = KurentoClient::start() else {
        return;
    };
    let Some(mut finder) = KurentoClient::start() else {
        return;
    };
    let kms = FakeKms::start();
    maker.connect(&kms.url()).unwrap();
    let pipeline = maker.pipeline().unwrap();
    finder.connect(&kms.url()).unwrap();
    assert_eq!(finder.by_id(&pipeline).unwrap(), pipeline);
    let endpoint = finder.endpoint(&pipeline).unwrap();
    assert_eq!(
        maker.children(&pipeline).unwrap(),
        std::slice::from_ref(&endpoint)
    );
    // getById with the class given asks KMS nothing (no describe), and the finder's first
    // request is the endpoint's create, with no session yet: the first create on a WebSocket
    // is not always a MediaPipeline's.
    let requests = kms.requests();
    assert!(
        requests.iter().all(|r| r.method != "describe"),
        "{}",
        wire(&kms)
    );
    let (maker_connection, _) = client_session(&kms);
    let first_of_finder = requests
        .iter()
        .find(|r| r.connection != maker_connection && r.method != "ping")
        .unwrap();
    assert_eq!(first_of_finder.method, "create");
    assert_eq!(first_of_finder.session_id, None, "{}", wire(&kms));
}

#[test]
fn a_dropped_connection_reconnects_to_its_session_and_the_pipeline_stays_usable() {
    let Some(mut client) = KurentoClient::start() else {
        return;
    };
    let kms = FakeKms::start();
    let target = Workload::start(None);
    let probe = watch(&kms, &target, &[]);
    client.connect(&kms.url()).unwrap();
    let pipeline = client.pipeline().unwrap();
    let endpoint = client.endpoint(&pipeline).unwrap();
    client.set_name(&pipeline, "before-the-drop").unwrap();
    probe.wait_for("the client's pipeline", |s| {
        s["kms"]["connected"] == true && s["sessions"] == 1
    });
    let (connection, session) = client_session(&kms);

    kms.drop_connections();
    let reconnected = client.wait_event("reconnected", 1);
    assert_eq!(reconnected["detail"], "same server", "{reconnected}");
    let reconnect = kms
        .requests()
        .into_iter()
        .find(|r| r.method == "connect" && r.session_id.as_deref() == Some(session.as_str()))
        .unwrap_or_else(|| {
            panic!(
                "the client reconnects with connect and its own session:\n{}",
                wire(&kms)
            )
        });
    assert_ne!(reconnect.connection, connection, "on a new WebSocket");

    assert_eq!(client.name(&pipeline).unwrap(), "before-the-drop");
    let second = client.endpoint(&pipeline).unwrap();
    assert_eq!(client.children(&pipeline).unwrap().len(), 2);
    assert!(client.children(&pipeline).unwrap().contains(&endpoint));
    assert!(second.starts_with(&pipeline));
    probe.wait_for("memprobe back, the pipeline still counted", |s| {
        s["kms"]["connected"] == true && s["sessions"] == 1
    });
    client.release(&pipeline).unwrap();
    probe.wait_for("the release counted", |s| s["sessions"] == 0);
}

#[test]
fn memprobe_counts_the_clients_pipeline_and_recycles_a_draining_instance_after_its_release() {
    let Some(mut client) = KurentoClient::start() else {
        return;
    };
    let kms = FakeKms::start();
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
    probe.wait_for("connected with no session", |s| {
        s["kms"]["connected"] == true && s["sessions"] == 0
    });
    client.connect(&kms.url()).unwrap();
    let first = client.pipeline().unwrap();
    let second = client.pipeline().unwrap();
    client.endpoint(&first).unwrap();
    probe.wait_for("the client's two pipelines as sessions", |s| {
        s["sessions"] == 2
    });

    target.send("alloc 150MiB");
    probe.wait_for("draining with 2 sessions left", |s| {
        s["state"] == "draining"
            && s["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("2 sessions left")
    });
    client.release(&first).unwrap();
    probe.wait_for("1 session", |s| s["sessions"] == 1);
    assert_eq!(
        probe.status()["state"],
        "draining",
        "a pipeline is still live"
    );

    client.release(&second).unwrap();
    let status = probe.wait_state("recycle");
    assert!(
        status["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("last session ended after draining"),
        "{status:#}"
    );
    assert_eq!(probe.get("/healthz").code, 503, "drained: restart KMS now");
}

#[test]
fn the_application_server_example_skips_a_draining_kms_and_moves_on_when_a_gate_refuses() {
    // Three KMSes, each with its memprobe: `roomy` has the most headroom but refuses creates
    // (as its gate would once it drains), `fuller` takes sessions with less headroom, and
    // `draining` answers /ready 503.
    let [roomy, fuller, draining] = [FakeKms::start(), FakeKms::start(), FakeKms::start()];
    let targets = [
        Workload::start(None),
        Workload::start(None),
        Workload::start(None),
    ];
    let [roomy_target, mut fuller_target, mut draining_target] = targets;
    let roomy_probe = watch(&roomy, &roomy_target, &[]);
    let fuller_probe = watch(&fuller, &fuller_target, &[]);
    let draining_probe = watch(&draining, &draining_target, &["--sustain", "1s"]);
    fuller_target.send("alloc 40MiB");
    draining_target.send("alloc 150MiB");
    roomy.refuse_create(
        "MediaPipeline",
        DRAINING_CODE,
        DRAINING_MESSAGE,
        Some(json!({"type": "KMS_DRAINING"})),
    );
    roomy_probe.wait_state("healthy");
    fuller_probe.wait_for("40 MiB in use", |s| {
        s["memory"]["deciding_bytes"].as_u64() >= Some(40 * crate::MI) && s["ready"] == true
    });
    draining_probe.wait_state("draining");

    let arg = |probe: &crate::harness::Memprobe, kms: &FakeKms| {
        format!("http://{}={}", probe.addr, kms.url())
    };
    let args = [
        arg(&draining_probe, &draining),
        arg(&fuller_probe, &fuller),
        arg(&roomy_probe, &roomy),
    ];
    let Some(output) = crate::harness::kurento_client::run_example(&args) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("{} refused: {DRAINING_MESSAGE}", roomy.url())),
        "the roomiest first, and its refusal said: {stdout}"
    );
    let created = stdout
        .lines()
        .find_map(|l| l.strip_prefix("created "))
        .unwrap_or_else(|| panic!("a pipeline: {stdout}"));
    let (pipeline, on) = created.split_once(" on ").unwrap();
    assert_eq!(on, fuller.url(), "{stdout}");
    assert!(
        fuller
            .wire()
            .iter()
            .any(|w| !w.inbound && w.text.contains(pipeline)),
        "made on the fuller KMS"
    );
    assert_eq!(roomy.requests_of("create"), 1, "asked once, refused");
    assert_eq!(
        draining.requests_of("create"),
        0,
        "a KMS whose /ready is 503 is never asked"
    );
    // closeSession's effect may land just after the JVM's exit on a loaded machine.
    let freed_by = Instant::now() + DEADLINE;
    while !fuller.pipelines().is_empty() && Instant::now() < freed_by {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        fuller.pipelines().is_empty(),
        "the example's destroy() ends its session, and KMS frees the session's pipeline"
    );

    let only_draining = [arg(&draining_probe, &draining)];
    let output = crate::harness::kurento_client::run_example(&only_draining).unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no KMS takes new sessions now"));
    let output = crate::harness::kurento_client::run_example(&["nonsense".into()]).unwrap();
    assert_eq!(output.status.code(), Some(2), "a bad argument exits 2");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("'nonsense' is not MEMPROBE-URL=GATE-URL")
    );
}
