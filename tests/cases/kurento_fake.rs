//! The fake KMS's own conformance: it answers as `shared/reference/kurento-jsonrpc.md` records a
//! real KMS 7.3 answering, over a real WebSocket. The recorded literal frames are replayed byte
//! for byte (UUIDs and timestamps aside); each other recorded fact is a test of its own. Every
//! Kurento test of memprobe stands on these.

#![allow(clippy::disallowed_types)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::fake_kms::{
    Client, EventOrder, FakeKms, FakeKmsConfig, ListChange, ListRace, ListTaken, Received, compact,
};

const WAIT: Duration = Duration::from_secs(10);

/// UUIDs become `<uuid>` and event timestamps `<ms>`, so that recorded and fresh frames
/// compare byte for byte.
fn normalise(frame: &str) -> String {
    let frame = frame
        .replace("<sid>", "<uuid>")
        .replace("<subscription-id>", "<uuid>");
    let is_uuid = |s: &[u8]| {
        s.len() >= 36
            && s[..36].iter().enumerate().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => *c == b'-',
                _ => c.is_ascii_hexdigit(),
            })
    };
    let bytes = frame.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        if is_uuid(&bytes[i..]) {
            out.push_str("<uuid>");
            i += 36;
            continue;
        }
        const STAMP: &str = "\"timestampMillis\":\"";
        if frame[i..].starts_with(STAMP) {
            out.push_str(STAMP);
            out.push_str("<ms>");
            i += STAMP.len();
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            continue;
        }
        let c = frame[i..].chars().next().unwrap();
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// The reference shortens getInfo's factory list and generation time (marked "...").
fn shorten_info(frame: &str) -> String {
    let mut v: Value = serde_json::from_str(frame).unwrap();
    for module in v["result"]["value"]["modules"].as_array_mut().unwrap() {
        module["factories"] = json!(["..."]);
        module["generationTime"] = json!("...");
    }
    compact(&v)
}

fn assert_replayed(recorded: &str, got: &str) {
    assert_eq!(
        normalise(got),
        normalise(recorded),
        "the fake answers as KMS 7.3 was recorded answering"
    );
}

/// A client that did `connect` and subscribed to both object events.
pub(crate) fn subscriber(kms: &FakeKms) -> (Client, String) {
    let mut client = Client::connect(kms);
    let sid = client.handshake(1);
    for (id, kind) in [(2, "ObjectCreated"), (3, "ObjectDestroyed")] {
        let reply = client.call_json(&format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"subscribe","params":{{"object":"manager_ServerManager","type":"{kind}"}}}}"#
        ));
        assert!(reply["result"]["value"].is_string(), "{reply}");
    }
    (client, sid)
}

/// Frames until the reply with this id, that one included.
fn until_reply(client: &mut Client, id: u64) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame: Value = serde_json::from_str(&client.text()).unwrap();
        let done = frame["id"] == id;
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

/// (type, object) of an event frame.
pub(crate) fn event(frame: &Value) -> (String, String) {
    let value = &frame["params"]["value"];
    let data = &value["data"];
    let object = data["object"].as_str().or(data["objectId"].as_str());
    (
        value["type"].as_str().unwrap_or_default().to_string(),
        object.unwrap_or_default().to_string(),
    )
}

fn ping(id: u64) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#)
}

fn invoke(id: u64, operation: &str, sid: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"invoke","params":{{"object":"manager_ServerManager","operation":"{operation}","sessionId":"{sid}"}}}}"#
    )
}

#[test]
fn the_recorded_exchanges_are_replayed_byte_for_byte() {
    let kms = FakeKms::start();
    let pipeline = kms.create_pipeline(0);
    kms.set_used_memory_kib(312456);
    let mut client = Client::connect(&kms);

    let reply = client.call(r#"{"jsonrpc":"2.0","id":1,"method":"connect"}"#);
    assert_replayed(
        r#"{"id":1,"jsonrpc":"2.0","result":{"serverId":"<uuid>","sessionId":"<sid>"}}"#,
        &reply,
    );
    let sid: Value = serde_json::from_str(&reply).unwrap();
    let sid = sid["result"]["sessionId"].as_str().unwrap().to_string();
    let with_sid = |frame: &str| frame.replace("<sid>", &sid);

    let exchanges = [
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"ping","params":{"interval":240000}}"#,
            r#"{"id":2,"jsonrpc":"2.0","result":{"sessionId":"<sid>","value":"pong"}}"#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"invoke","params":{"object":"manager_ServerManager","operation":"getPipelines","sessionId":"<sid>"}}"#,
            r#"{"id":3,"jsonrpc":"2.0","result":{"sessionId":"<sid>","value":["<uuid>_kurento.MediaPipeline"]}}"#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":4,"method":"invoke","params":{"object":"manager_ServerManager","operation":"getUsedMemory","sessionId":"<sid>"}}"#,
            r#"{"id":4,"jsonrpc":"2.0","result":{"sessionId":"<sid>","value":312456}}"#,
        ),
        (
            r#"{"jsonrpc":"2.0","id":6,"method":"subscribe","params":{"object":"manager_ServerManager","type":"ObjectCreated","sessionId":"<sid>"}}"#,
            r#"{"id":6,"jsonrpc":"2.0","result":{"sessionId":"<sid>","value":"<subscription-id>"}}"#,
        ),
        // The reference records one subscribe; the other event's is the same frame.
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"subscribe","params":{"object":"manager_ServerManager","type":"ObjectDestroyed","sessionId":"<sid>"}}"#,
            r#"{"id":7,"jsonrpc":"2.0","result":{"sessionId":"<sid>","value":"<subscription-id>"}}"#,
        ),
    ];
    for (request, recorded) in exchanges {
        assert_replayed(recorded, &client.call(&with_sid(request)));
    }
    let info = client.call(&with_sid(
        r#"{"jsonrpc":"2.0","id":5,"method":"invoke","params":{"object":"manager_ServerManager","operation":"getInfo","sessionId":"<sid>"}}"#,
    ));
    assert_replayed(
        r#"{"id":5,"jsonrpc":"2.0","result":{"sessionId":"<sid>","value":{"__module__":"kurento","__type__":"ServerInfo","capabilities":["transactions"],"modules":[{"__module__":"kurento","__type__":"ModuleInfo","factories":["..."],"generationTime":"...","name":"core","version":"7.3.0"}],"type":"KMS","version":"7.3.0"}}}"#,
        &shorten_info(&info),
    );

    let second = kms.create_pipeline(0);
    assert_replayed(
        r#"{"jsonrpc":"2.0","method":"onEvent","params":{"value":{"data":{"object":"<uuid>_kurento.MediaPipeline","source":"manager_ServerManager","tags":[],"timestampMillis":"1796152024638"},"object":"manager_ServerManager","type":"ObjectCreated"}}}"#,
        &client.text(),
    );
    kms.destroy_pipeline(&second);
    let destroyed = client.text();
    assert_replayed(
        r#"{"jsonrpc":"2.0","method":"onEvent","params":{"value":{"data":{"objectId":"<uuid>_kurento.MediaPipeline","source":"manager_ServerManager","tags":[],"timestampMillis":"1796152025772"},"object":"manager_ServerManager","type":"ObjectDestroyed"}}}"#,
        &destroyed,
    );
    assert!(destroyed.contains(&second), "{destroyed}");
    let stamp: Value = serde_json::from_str(&destroyed).unwrap();
    assert!(
        stamp["params"]["value"]["data"]["timestampMillis"]
            .as_str()
            .is_some_and(|t| t.len() == 13 && t.bytes().all(|b| b.is_ascii_digit())),
        "timestampMillis is milliseconds, as a string: {destroyed}"
    );

    // The error shape, on a session of its own (id 5 is in the first one's reply cache).
    let mut other = Client::connect(&kms);
    other.handshake(1);
    assert_replayed(
        r#"{"error":{"code":40101,"data":{"type":"MEDIA_OBJECT_NOT_FOUND"},"message":"Object '...' not found"},"id":5,"jsonrpc":"2.0"}"#,
        &other.call(
            r#"{"jsonrpc":"2.0","id":5,"method":"invoke","params":{"object":"...","operation":"getUsedMemory"}}"#,
        ),
    );
    kms.destroy_pipeline(&pipeline);
}

#[test]
fn releasing_a_pipeline_destroys_its_elements_first_after_the_release_delay() {
    let delay = Duration::from_millis(400);
    let kms = FakeKms::start_with(FakeKmsConfig {
        release_delay: delay,
        ..FakeKmsConfig::default()
    });
    let (mut client, _) = subscriber(&kms);
    let created = client.call_json(
        r#"{"jsonrpc":"2.0","id":10,"method":"create","params":{"type":"MediaPipeline"}}"#,
    );
    let pipeline = created["result"]["value"].as_str().unwrap().to_string();
    assert_eq!(
        event(&serde_json::from_str(&client.text()).unwrap()).1,
        pipeline
    );
    let mut elements = Vec::new();
    for (id, kind) in [(11, "WebRtcEndpoint"), (12, "RecorderEndpoint")] {
        let request = json!({"jsonrpc": "2.0", "id": id, "method": "create",
            "params": {"type": kind, "constructorParams": {"mediaPipeline": pipeline}}});
        let reply: Value = serde_json::from_str(&client.call(&request.to_string())).unwrap();
        let element = reply["result"]["value"].as_str().unwrap().to_string();
        assert!(
            element.starts_with(&format!("{pipeline}/")) && element.ends_with(kind),
            "an element's id is <pipeline>/<uuid>_kurento.<Type>: {element}"
        );
        client.text();
        elements.push(element);
    }

    let request =
        json!({"jsonrpc": "2.0", "id": 13, "method": "release", "params": {"object": pipeline}});
    let reply = client.call_json(&request.to_string());
    let replied = Instant::now();
    assert_eq!(reply["id"], 13, "the reply comes first: {reply}");
    assert!(
        kms.pipelines().is_empty(),
        "gone from the list at the release"
    );
    let events: Vec<(String, String)> = (0..3)
        .map(|_| event(&serde_json::from_str(&client.text()).unwrap()))
        .collect();
    assert!(
        replied.elapsed() >= delay - Duration::from_millis(50),
        "the events come the release delay after the reply"
    );
    let destroyed: Vec<&str> = events.iter().map(|(_, o)| o.as_str()).collect();
    assert!(events.iter().all(|(k, _)| k == "ObjectDestroyed"));
    assert_eq!(
        destroyed,
        [
            elements[0].as_str(),
            elements[1].as_str(),
            pipeline.as_str()
        ],
        "one ObjectDestroyed per element, then the pipeline's"
    );
}

#[test]
fn events_a_request_causes_come_before_or_after_its_reply_as_set() {
    let kms = FakeKms::start_with(FakeKmsConfig {
        release_delay: Duration::ZERO,
        ..FakeKmsConfig::default()
    });
    let (mut client, _) = subscriber(&kms);
    let mut id = 10;
    for order in [EventOrder::BeforeReply, EventOrder::AfterReply] {
        kms.set_event_order(order);
        id += 1;
        client.send(&format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"create","params":{{"type":"MediaPipeline"}}}}"#
        ));
        let mut all = until_reply(&mut client, id);
        let pipeline = all.last().unwrap()["result"]["value"]
            .as_str()
            .unwrap()
            .to_string();
        if order == EventOrder::AfterReply {
            all.push(serde_json::from_str(&client.text()).unwrap());
        }
        id += 1;
        let release = json!({"jsonrpc": "2.0", "id": id, "method": "release", "params": {"object": pipeline}});
        client.send(&release.to_string());
        all.extend(until_reply(&mut client, id));
        if order == EventOrder::AfterReply {
            all.push(serde_json::from_str(&client.text()).unwrap());
        }
        let shapes: Vec<&str> = all
            .iter()
            .map(|f| {
                if f["method"] == "onEvent" {
                    "event"
                } else {
                    "reply"
                }
            })
            .collect();
        let expected = match order {
            EventOrder::BeforeReply => ["event", "reply", "event", "reply"],
            EventOrder::AfterReply => ["reply", "event", "reply", "event"],
        };
        assert_eq!(shapes, expected, "{order:?}: {all:?}");
    }
}

#[test]
fn a_malformed_frame_gets_no_answer_and_drops_only_its_connection() {
    let kms = FakeKms::start();
    let (mut bystander, _) = subscriber(&kms);
    for frame in [
        "not json",
        "",
        r#"[{"jsonrpc":"2.0","id":5,"method":"ping"}]"#,
        r#"{"jsonrpc":"2.0","id":5,"method":"ping","params":[1]}"#,
        r#"{"jsonrpc":"2.0","id":5,"method":"ping","params":"x"}"#,
    ] {
        let mut client = Client::connect(&kms);
        client.handshake(1);
        client.send(frame);
        match client.recv(WAIT) {
            Received::Dropped => {}
            other => panic!(
                "{frame:?}: no reply and no close frame, the TCP connection just drops; got {other:?}"
            ),
        }
    }
    let reply = bystander.call_json(&ping(9));
    assert_eq!(
        reply["result"]["value"], "pong",
        "other clients are not affected"
    );
    // A socket without a session takes a batch as one invalid request.
    let mut fresh = Client::connect(&kms);
    let reply = fresh.call(r#"[{"jsonrpc":"2.0","id":5,"method":"ping"}]"#);
    assert_eq!(
        reply,
        r#"{"error":{"code":-32600,"message":"Invalid JSON-RPC request."},"id":null,"jsonrpc":"2.0"}"#
    );
}

#[test]
fn errors_and_notifications_are_answered_as_kms_does() {
    let kms = FakeKms::start();
    let mut unconnected = Client::connect(&kms);
    assert_eq!(
        unconnected.call(r#"{"jsonrpc":"2.0","id":1,"method":"invoke"}"#),
        r#"{"error":{"code":-32602,"data":{"type":"INVALID_PARAMS"},"message":"'params' is requiered"},"id":1,"jsonrpc":"2.0"}"#,
        "-32602 only on a socket that never did connect"
    );

    let mut client = Client::connect(&kms);
    let sid = client.handshake(1);
    let cases = [
        (
            r#"{"id":2,"method":"ping"}"#,
            r#"{"error":{"code":-32600,"message":"Invalid JSON-RPC request."},"id":null,"jsonrpc":"2.0"}"#
                .to_string(),
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"invoke"}"#,
            r#"{"error":{"code":-32000,"message":"'operation' parameter is required"},"id":3,"jsonrpc":"2.0"}"#
                .to_string(),
        ),
        (
            r#"{"jsonrpc":"2.0","id":4,"method":"invoke","params":{"operation":"getUsedMemory"}}"#,
            r#"{"error":{"code":-32000,"message":"'object' parameter is required"},"id":4,"jsonrpc":"2.0"}"#
                .to_string(),
        ),
        (
            r#"{"jsonrpc":"2.0","method":"ping"}"#,
            format!(
                r#"{{"error":{{"code":-32000,"data":{{"sessionId":"{sid}","value":"pong"}},"message":"Ignoring response because of a notification request"}},"id":null,"jsonrpc":"2.0"}}"#
            ),
        ),
        (
            r#"{"jsonrpc":"2.0","id":5,"method":"create","params":{"type":"NoSuchThing"}}"#,
            r#"{"error":{"code":40108,"data":{"type":"MEDIA_OBJECT_NOT_AVAILABLE"},"message":"Factory 'NoSuchThing' not found"},"id":5,"jsonrpc":"2.0"}"#
                .to_string(),
        ),
        (
            r#"{"jsonrpc":"2.0","id":6,"method":"release","params":{"object":"nothing_kurento.MediaPipeline"}}"#,
            format!(r#"{{"id":6,"jsonrpc":"2.0","result":{{"sessionId":"{sid}"}}}}"#),
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"unsubscribe","params":{"object":"manager_ServerManager","subscription":"none"}}"#,
            format!(r#"{{"id":7,"jsonrpc":"2.0","result":{{"sessionId":"{sid}"}}}}"#),
        ),
        (
            r#"{"jsonrpc":"2.0","id":8,"method":"subscribe","params":{"object":"manager_ServerManager","type":"NoSuchEvent"}}"#,
            r#"{"error":{"code":40106,"data":{"type":"MEDIA_OBJECT_EVENT_NOT_SUPPORTED"},"message":"Event not found"},"id":8,"jsonrpc":"2.0"}"#
                .to_string(),
        ),
        (
            r#"{"jsonrpc":"2.0","id":9,"method":"frobnicate"}"#,
            r#"{"error":{"code":-32601,"message":"Method not found."},"id":9,"jsonrpc":"2.0"}"#
                .to_string(),
        ),
    ];
    for (request, expected) in cases {
        assert_eq!(client.call(request), expected, "{request}");
    }
}

#[test]
fn frames_up_to_32_mb_are_read_and_a_40_mib_frame_closes_with_1009() {
    let kms = FakeKms::start();
    let mut client = Client::connect(&kms);
    client.handshake(1);
    let padding = "x".repeat(31_000_000);
    let big =
        format!(r#"{{"jsonrpc":"2.0","id":2,"method":"ping","params":{{"pad":"{padding}"}}}}"#);
    let reply = client.call_json(&big);
    assert_eq!(reply["result"]["value"], "pong", "a 31 MB frame is read");

    client.send(&"x".repeat(40 << 20));
    match client.recv(WAIT) {
        Received::Closed(Some(1009)) => {}
        other => panic!("a 40 MiB frame closes with 1009, got {other:?}"),
    }
}

#[test]
fn connect_binds_sessions_and_any_session_id_rebinds_the_socket() {
    let kms = FakeKms::start();
    let mut first = Client::connect(&kms);
    let sid = first.handshake(1);
    let invalid = r#"{"error":{"code":40007,"data":{"type":"INVALID_SESSION"},"message":"Invalid session"},"id":2,"jsonrpc":"2.0"}"#;
    assert_eq!(
        first.call(r#"{"jsonrpc":"2.0","id":2,"method":"connect"}"#),
        invalid,
        "a second connect on a socket whose session never touched an object"
    );
    let mut stranger = Client::connect(&kms);
    assert_eq!(
        stranger.call(
            r#"{"jsonrpc":"2.0","id":2,"method":"connect","params":{"sessionId":"00000000-0000-4000-8000-000000000000"}}"#
        ),
        invalid,
        "connect with the id of a session KMS does not know"
    );

    // Subscribing touches the ServerManager: the session is live now.
    let reply = first.call_json(
        r#"{"jsonrpc":"2.0","id":3,"method":"subscribe","params":{"object":"manager_ServerManager","type":"ObjectCreated"}}"#,
    );
    assert!(reply["result"]["value"].is_string());
    let mut second = Client::connect(&kms);
    let moved = second.call_json(&format!(
        r#"{{"jsonrpc":"2.0","id":100,"method":"connect","params":{{"sessionId":"{sid}"}}}}"#
    ));
    assert_eq!(moved["result"]["sessionId"], sid.as_str(), "{moved}");
    let pipeline = kms.create_pipeline(0);
    let (kind, object) = event(&serde_json::from_str(&second.text()).unwrap());
    assert_eq!(
        (kind.as_str(), object.as_str()),
        ("ObjectCreated", pipeline.as_str()),
        "the session's events follow it to the new socket"
    );
    assert_eq!(
        first.call(&ping(101)),
        r#"{"id":101,"jsonrpc":"2.0","result":{"value":"pong"}}"#,
        "the old socket has no session any more, and got no event"
    );

    let mut pinger = Client::connect(&kms);
    pinger.handshake(1);
    let made_up = "made-up-session";
    assert_eq!(
        pinger.call(&format!(
            r#"{{"jsonrpc":"2.0","id":5,"method":"ping","params":{{"interval":"abc","sessionId":"{made_up}"}}}}"#
        )),
        format!(r#"{{"id":5,"jsonrpc":"2.0","result":{{"sessionId":"{made_up}","value":"pong"}}}}"#),
        "ping ignores interval and echoes any sessionId"
    );
    assert_eq!(
        pinger.call(&ping(6)),
        format!(
            r#"{{"id":6,"jsonrpc":"2.0","result":{{"sessionId":"{made_up}","value":"pong"}}}}"#
        ),
        "the socket is bound to the session its last request named"
    );
}

#[test]
fn a_reused_id_gets_the_cached_reply_whatever_the_method_for_the_cache_window() {
    let kms = FakeKms::start();
    let mut client = Client::connect(&kms);
    let sid = client.handshake(1);
    kms.set_used_memory_kib(111);
    let memory = client.call(&invoke(10, "getUsedMemory", &sid));
    assert!(memory.contains("\"value\":111"), "{memory}");
    kms.set_used_memory_kib(222);
    assert_eq!(
        client.call(&ping(10)),
        memory,
        "a ping with a reused id gets the earlier getUsedMemory reply"
    );
    assert_eq!(
        client.call(r#"{"jsonrpc":"2.0","id":"10","method":"ping"}"#),
        memory,
        "the id as text: \"10\" is 10"
    );
    let mut other = Client::connect(&kms);
    assert_eq!(
        other.call(&format!(
            r#"{{"jsonrpc":"2.0","id":10,"method":"ping","params":{{"sessionId":"{sid}"}}}}"#
        )),
        memory,
        "across sockets: the key is the session and the id"
    );
    assert_eq!(kms.reused_ids(), 3);
    let fresh = other.call(&invoke(11, "getUsedMemory", &sid));
    assert!(
        fresh.contains("\"value\":222"),
        "a new id, a fresh answer: {fresh}"
    );

    kms.set_reply_cache_ttl(Duration::from_millis(300));
    let start = Instant::now();
    loop {
        let reply = other.call(&format!(
            r#"{{"jsonrpc":"2.0","id":11,"method":"ping","params":{{"sessionId":"{sid}"}}}}"#
        ));
        if reply.contains("pong") {
            break;
        }
        assert_eq!(reply, fresh, "inside the window, the cached reply");
        assert!(start.elapsed() < WAIT, "the cached reply never expired");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn get_sessions_lists_the_hidden_session_among_the_ids() {
    let kms = FakeKms::start();
    let mut client = Client::connect(&kms);
    let sid = client.handshake(1);
    client.call(&invoke(2, "getPipelines", &sid));
    let reply = client.call_json(&invoke(3, "getSessions", &sid));
    let sessions: Vec<&str> = reply["result"]["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(
        sessions,
        ["", "", "", sid.as_str()],
        "N empty strings, then the N sessions: the hidden \"\" and this one"
    );
}

/// The recorded table, counted in the collector's sweeps (a 600 ms period, but a machine
/// that runs the collector late changes no verdict): an abandoned pipeline goes at the first
/// or second sweep after its socket closed; after a getPipelines, at the second sweep after
/// it and never the first; never while getPipelines keeps coming; getUsedMemory changes
/// nothing.
#[test]
fn abandoned_pipelines_are_collected_as_the_recorded_table_says() {
    let period = Duration::from_millis(600);
    let kms = FakeKms::start_with(FakeKmsConfig {
        gc_period: period,
        ..FakeKmsConfig::default()
    });
    let mut watcher = Client::connect(&kms);
    let sid = watcher.handshake(1);
    let mut next_id = 10;
    let mut call = |client: &mut Client, operation: &str| {
        next_id += 1;
        client.call(&invoke(next_id, operation, &sid))
    };
    // A pipeline whose owner's socket is closed, and the sweep count once the fake saw it close.
    let abandon = || {
        let mut owner = Client::connect(&kms);
        let owner_sid = owner.handshake(1);
        let reply = owner.call_json(
            r#"{"jsonrpc":"2.0","id":2,"method":"create","params":{"type":"MediaPipeline"}}"#,
        );
        let pipeline = reply["result"]["value"].as_str().unwrap().to_string();
        drop(owner);
        let start = Instant::now();
        while kms.socket_open(&owner_sid) {
            assert!(
                start.elapsed() < WAIT,
                "the fake never saw the owner's socket close"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        (pipeline, kms.sweeps())
    };
    let wait_freed = |pipeline: &str, busy: &mut dyn FnMut()| {
        let start = Instant::now();
        loop {
            if let Some(sweep) = kms.freed_at_sweep(pipeline) {
                return sweep;
            }
            assert!(start.elapsed() < 30 * period, "{pipeline} never collected");
            busy();
            std::thread::sleep(period / 5);
        }
    };

    let (pipeline, closed) = abandon();
    let freed = wait_freed(&pipeline, &mut || {});
    assert!(
        (closed + 1..=closed + 2).contains(&freed),
        "nothing meanwhile: freed at the first or second sweep after the close ({closed}), \
         not at sweep {freed}"
    );

    let (pipeline, closed) = abandon();
    call(&mut watcher, "getPipelines");
    let listed = *kms.get_pipelines_sweeps().last().unwrap();
    let freed = wait_freed(&pipeline, &mut || {});
    assert_eq!(
        freed,
        listed + 2,
        "one getPipelines after the close (sweep {closed}): freed at the second sweep after it \
         ({listed}), never the first"
    );

    let (pipeline, closed) = abandon();
    let freed = wait_freed(&pipeline, &mut || {
        call(&mut watcher, "getUsedMemory");
    });
    assert!(
        (closed + 1..=closed + 2).contains(&freed),
        "getUsedMemory keeps nothing alive: closed at sweep {closed}, freed at {freed}"
    );

    // getPipelines about three times a sweep, for six sweeps or until the pipeline goes (on a
    // machine too loaded to call within a sweep, it may).
    let (pipeline, closed) = abandon();
    let calls_from = kms.get_pipelines_sweeps().len();
    while kms.sweeps() < closed + 6 && kms.freed_at_sweep(&pipeline).is_none() {
        call(&mut watcher, "getPipelines");
        std::thread::sleep(period / 3);
    }
    let freed = wait_freed(&pipeline, &mut || {});
    let lists = kms.get_pipelines_sweeps().split_off(calls_from);
    match lists.iter().copied().filter(|&l| l < freed).max() {
        Some(last_before) => assert_eq!(
            freed,
            last_before + 2,
            "never while getPipelines keeps coming: freed at sweep {freed}, the second after \
             the last getPipelines before it; getPipelines came at sweeps {lists:?}"
        ),
        None => assert!(
            freed <= closed + 2,
            "no getPipelines in time: as after a close"
        ),
    }
    let every_sweep = (closed..closed + 6).all(|sweep| lists.contains(&sweep));
    assert!(
        !every_sweep || freed > closed + 6,
        "a getPipelines within every sweep kept it alive for all six: freed at {freed}, \
         getPipelines at {lists:?}"
    );
}

#[test]
fn sigterm_drops_every_connection_with_no_object_destroyed() {
    let kms = FakeKms::start();
    kms.create_pipeline(2);
    let (mut client, _) = subscriber(&kms);
    let before = kms.server_id();
    kms.sigterm();
    match client.recv(WAIT) {
        Received::Dropped => {}
        other => panic!("no ObjectDestroyed, no close frame: got {other:?}"),
    }
    assert!(
        std::net::TcpStream::connect(kms.addr).is_err(),
        "nothing listens once KMS has exited"
    );
    kms.start_again();
    let mut client = Client::connect(&kms);
    let reply = client.call_json(r#"{"jsonrpc":"2.0","id":1,"method":"connect"}"#);
    assert_ne!(
        reply["result"]["serverId"],
        before.as_str(),
        "a new process"
    );
    assert!(kms.pipelines().is_empty());
}

#[test]
fn object_destroyed_stops_after_n_objects_while_the_list_tells_the_truth() {
    let kms = FakeKms::start();
    let (mut client, sid) = subscriber(&kms);
    let pipelines: Vec<String> = (0..3).map(|_| kms.create_pipeline(0)).collect();
    for _ in &pipelines {
        client.text();
    }
    kms.stop_destroyed_events_after(2);
    kms.hold_events(true);
    for pipeline in &pipelines {
        kms.destroy_pipeline(pipeline);
    }
    let start = Instant::now();
    while kms.held_events().len() < 3 {
        assert!(start.elapsed() < WAIT, "the releases' events never came");
        std::thread::sleep(Duration::from_millis(20));
    }
    kms.hold_events(false);
    client.send(&ping(50));
    let frames = until_reply(&mut client, 50);
    let destroyed = frames.iter().filter(|f| f["method"] == "onEvent").count();
    assert_eq!(
        destroyed, 2,
        "two objects' ObjectDestroyed, then none: {frames:?}"
    );
    assert_eq!(kms.destroyed_events_sent(), 2);
    let list = client.call_json(&invoke(51, "getPipelines", &sid));
    assert_eq!(
        list["result"]["value"],
        json!([]),
        "getPipelines tells the truth"
    );
}

#[test]
fn changes_race_an_in_flight_get_pipelines_as_asked() {
    let kms = FakeKms::start();
    let (mut client, sid) = subscriber(&kms);
    let list_and_events = |client: &mut Client, id: u64| {
        client.send(&invoke(id, "getPipelines", &sid));
        let mut frames = until_reply(client, id);
        let reply = frames.pop().unwrap();
        let events: Vec<(String, String)> = frames.iter().map(event).collect();
        (reply["result"]["value"].clone(), events)
    };

    let pipeline = kms.create_during_next_list(1);
    let (list, events) = list_and_events(&mut client, 10);
    assert_eq!(list, json!([]), "the list was taken before the creation");
    assert_eq!(
        events.len(),
        2,
        "the pipeline's and its element's ObjectCreated, before the reply"
    );
    assert_eq!(events[0], ("ObjectCreated".to_string(), pipeline.clone()));

    kms.destroy_during_next_list(&pipeline);
    let (list, events) = list_and_events(&mut client, 11);
    assert_eq!(
        list,
        json!([pipeline]),
        "the list was taken before the release"
    );
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["ObjectDestroyed", "ObjectDestroyed"]);
    assert_eq!(
        events[1].1, pipeline,
        "the element first, then the pipeline"
    );

    let late = kms.race_next_list(ListRace {
        change: ListChange::Create { elements: 0 },
        list_taken: ListTaken::AfterChange,
        events: EventOrder::AfterReply,
    });
    let (list, events) = list_and_events(&mut client, 12);
    assert_eq!(list, json!([late]));
    assert!(events.is_empty(), "the event comes after the reply");
    let (kind, object) = event(&serde_json::from_str(&client.text()).unwrap());
    assert_eq!(
        (kind.as_str(), object.as_str()),
        ("ObjectCreated", late.as_str())
    );
}

/// The reference's "What the official Java kurento-client 7.3.0 sends", replayed as the client
/// sends it (no `connect`; `ping` and the first `create` pipelined on a socket with no
/// session; `jsonrpc` last, `params` after it in `closeSession`): KMS's recorded answers, byte
/// for byte.
#[test]
fn the_official_clients_requests_get_the_answers_recorded_from_kms() {
    let kms = FakeKms::start();
    let mut client = Client::connect(&kms);
    client.send(r#"{"id":1,"method":"ping","params":{"interval":240000},"jsonrpc":"2.0"}"#);
    client.send(r#"{"id":2,"method":"create","params":{"type":"MediaPipeline","constructorParams":{},"properties":{}},"jsonrpc":"2.0"}"#);
    assert_replayed(
        r#"{"id":1,"jsonrpc":"2.0","result":{"value":"pong"}}"#,
        &client.text(),
    );
    let created = client.text();
    assert_replayed(
        r#"{"id":2,"jsonrpc":"2.0","result":{"sessionId":"<uuid>","value":"<uuid>_kurento.MediaPipeline"}}"#,
        &created,
    );
    let created: Value = serde_json::from_str(&created).unwrap();
    let (sid, pipeline) = (
        created["result"]["sessionId"].as_str().unwrap(),
        created["result"]["value"].as_str().unwrap(),
    );
    // The client's ObjectCreated events go nowhere: it subscribes to none.
    let endpoint = client.call(&format!(
        r#"{{"id":3,"method":"create","params":{{"type":"WebRtcEndpoint","constructorParams":{{"mediaPipeline":"{pipeline}"}},"properties":{{}},"sessionId":"{sid}"}},"jsonrpc":"2.0"}}"#
    ));
    assert_replayed(
        &format!(
            r#"{{"id":3,"jsonrpc":"2.0","result":{{"sessionId":"<uuid>","value":"{pipeline}/<uuid>_kurento.WebRtcEndpoint"}}}}"#
        ),
        &endpoint,
    );
    let released = client.call(&format!(
        r#"{{"id":5,"method":"release","params":{{"object":"{pipeline}","sessionId":"{sid}"}},"jsonrpc":"2.0"}}"#
    ));
    assert_replayed(
        r#"{"id":5,"jsonrpc":"2.0","result":{"sessionId":"<uuid>"}}"#,
        &released,
    );
    let closed = client.call(&format!(
        r#"{{"id":7,"method":"closeSession","jsonrpc":"2.0","params":{{"sessionId":"{sid}"}}}}"#
    ));
    assert_replayed(r#"{"id":7,"jsonrpc":"2.0","result":null}"#, &closed);
    assert!(kms.pipelines().is_empty());
}

/// The client's `getName`/`setName` (captured from it): a name is the object's id until set
/// (KMS's `MediaObjectImpl::getName`), and a setter's answer has no `value`.
#[test]
fn get_name_is_the_id_until_set_name_and_a_setter_answers_with_no_value() {
    let kms = FakeKms::start();
    let mut client = Client::connect(&kms);
    let sid = client.handshake(1);
    let created = client.call_json(
        r#"{"id":2,"method":"create","params":{"type":"MediaPipeline","constructorParams":{},"properties":{}},"jsonrpc":"2.0"}"#,
    );
    let pipeline = created["result"]["value"].as_str().unwrap().to_string();
    let get_name = |id: u64| {
        format!(
            r#"{{"id":{id},"method":"invoke","params":{{"object":"{pipeline}","operation":"getName","sessionId":"{sid}"}},"jsonrpc":"2.0"}}"#
        )
    };
    let named = client.call_json(&get_name(3));
    assert_eq!(
        named["result"],
        json!({"sessionId": sid, "value": pipeline})
    );
    let set = client.call(&format!(
        r#"{{"id":4,"method":"invoke","params":{{"object":"{pipeline}","operation":"setName","operationParams":{{"name":"call-42"}},"sessionId":"{sid}"}},"jsonrpc":"2.0"}}"#
    ));
    assert_eq!(
        set,
        format!(r#"{{"id":4,"jsonrpc":"2.0","result":{{"sessionId":"{sid}"}}}}"#)
    );
    let named = client.call_json(&get_name(5));
    assert_eq!(named["result"]["value"], "call-42");
}

/// The client's `Transaction.commit()` (captured from it), answered as KMS's
/// `ServerMethods::transaction` runs one: the operations in order in the transaction's session,
/// `"newref:N"` replaced by operation N's value, each answer whole under the request's `value`,
/// the first error ending the list; an operation whose id is not its index fails the whole
/// request (40008, MALFORMED_TRANSACTION).
#[test]
fn a_transaction_runs_its_operations_in_order_and_stops_at_the_first_error() {
    let kms = FakeKms::start();
    let (mut watcher, _) = subscriber(&kms);
    let mut client = Client::connect(&kms);
    let sid = client.handshake(1);
    let operations = |first_type: &str| {
        format!(
            r#"[{{"id":0,"method":"create","params":{{"type":"{first_type}","constructorParams":{{}},"properties":{{}}}},"jsonrpc":"2.0"}},{{"id":1,"method":"create","params":{{"type":"WebRtcEndpoint","constructorParams":{{"mediaPipeline":"newref:0"}},"properties":{{}}}},"jsonrpc":"2.0"}}]"#
        )
    };
    let reply = client.call_json(&format!(
        r#"{{"id":8,"method":"transaction","params":{{"operations":{},"sessionId":"{sid}"}},"jsonrpc":"2.0"}}"#,
        operations("MediaPipeline")
    ));
    assert_eq!(reply["id"], 8);
    assert_eq!(reply["result"]["sessionId"], sid);
    let answers = reply["result"]["value"].as_array().unwrap();
    assert_eq!(answers.len(), 2, "{reply}");
    let pipeline = answers[0]["result"]["value"].as_str().unwrap();
    let endpoint = answers[1]["result"]["value"].as_str().unwrap();
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer["id"], i, "{answer}");
        assert_eq!(answer["jsonrpc"], "2.0");
        assert_eq!(answer["result"]["sessionId"], sid);
    }
    assert!(
        endpoint.starts_with(&format!("{pipeline}/")),
        "newref:0 is the pipeline: {reply}"
    );
    assert_eq!(kms.pipelines(), [pipeline]);
    let created: Vec<String> = (0..2)
        .map(|_| event(&serde_json::from_str(&watcher.text()).unwrap()).1)
        .collect();
    assert_eq!(created, [pipeline, endpoint], "an ObjectCreated for each");

    let reply = client.call_json(&format!(
        r#"{{"id":9,"method":"transaction","params":{{"operations":{},"sessionId":"{sid}"}},"jsonrpc":"2.0"}}"#,
        operations("Nope")
    ));
    assert_eq!(
        compact(&reply["result"]["value"]),
        r#"[{"error":{"code":40108,"data":{"type":"MEDIA_OBJECT_NOT_AVAILABLE"},"message":"Factory 'Nope' not found"},"id":0,"jsonrpc":"2.0"}]"#,
        "the first error ends the list, inside a successful reply"
    );

    let reply = client.call(&format!(
        r#"{{"id":10,"method":"transaction","params":{{"operations":[{{"id":1,"method":"ping","jsonrpc":"2.0"}}],"sessionId":"{sid}"}},"jsonrpc":"2.0"}}"#
    ));
    assert_eq!(
        reply,
        r#"{"error":{"code":40008,"data":{"type":"MALFORMED_TRANSACTION"},"message":"Id of request '0' should be '0'"},"id":10,"jsonrpc":"2.0"}"#
    );
}

/// The client's reconnect (captured from it): on a new WebSocket it sends `connect` with its
/// session and gets the same session back while KMS lives; after KMS restarted that is 40007,
/// and it connects again without params to a new session, with the new serverId.
#[test]
fn the_clients_reconnect_gets_its_session_back_and_a_restarted_kms_a_new_one() {
    let kms = FakeKms::start();
    let mut first = Client::connect(&kms);
    let created = first.call_json(
        r#"{"id":2,"method":"create","params":{"type":"MediaPipeline","constructorParams":{},"properties":{}},"jsonrpc":"2.0"}"#,
    );
    let sid = created["result"]["sessionId"].as_str().unwrap().to_string();
    let pipeline = created["result"]["value"].as_str().unwrap().to_string();
    drop(first);

    let reconnect = |id: u64| {
        format!(
            r#"{{"id":{id},"method":"connect","jsonrpc":"2.0","params":{{"sessionId":"{sid}"}}}}"#
        )
    };
    let mut second = Client::connect(&kms);
    let again = second.call(&reconnect(11));
    assert_eq!(
        again,
        format!(
            r#"{{"id":11,"jsonrpc":"2.0","result":{{"serverId":"{}","sessionId":"{sid}"}}}}"#,
            kms.server_id()
        )
    );
    let children = second.call_json(&format!(
        r#"{{"id":12,"method":"invoke","params":{{"object":"{pipeline}","operation":"getChildren","sessionId":"{sid}"}},"jsonrpc":"2.0"}}"#
    ));
    assert_eq!(
        children["result"]["value"],
        json!([]),
        "the pipeline lives on"
    );

    let old_server = kms.server_id();
    kms.sigterm();
    kms.start_again();
    let mut third = Client::connect(&kms);
    assert_eq!(
        third.call(&reconnect(13)),
        r#"{"error":{"code":40007,"data":{"type":"INVALID_SESSION"},"message":"Invalid session"},"id":13,"jsonrpc":"2.0"}"#
    );
    let fresh = third.call_json(r#"{"id":14,"method":"connect","jsonrpc":"2.0"}"#);
    assert_ne!(fresh["result"]["sessionId"], sid.as_str());
    assert_ne!(fresh["result"]["serverId"], old_server.as_str());
    assert_eq!(fresh["result"]["serverId"], kms.server_id());
}

/// The reference's "A worker pool that deadlocks", as a client sees it: every `release` is
/// answered, no `ObjectDestroyed` ever comes, `getPipelines` answers `[]`, yet the released
/// pipelines still run; `ping` and `create` still work.
#[test]
fn a_deadlocked_pool_answers_releases_and_destroys_nothing() {
    let kms = FakeKms::start();
    let (mut client, sid) = subscriber(&kms);
    let pipeline = kms.create_pipeline(2);
    for _ in 0..3 {
        client.text(); // ObjectCreated: the pipeline and its two elements
    }
    kms.deadlock_pool();
    let release = format!(
        r#"{{"jsonrpc":"2.0","id":40,"method":"release","params":{{"object":"{pipeline}","sessionId":"{sid}"}}}}"#
    );
    client.send(&release);
    let frames = until_reply(&mut client, 40);
    assert_eq!(
        frames.len(),
        1,
        "the release is answered, nothing else: {frames:?}"
    );
    assert!(frames[0]["result"].is_object(), "{frames:?}");
    let created = client.call_json(&format!(
        r#"{{"jsonrpc":"2.0","id":41,"method":"create","params":{{"type":"MediaPipeline","constructorParams":{{}},"properties":{{}},"sessionId":"{sid}"}}}}"#
    ));
    let second = created["result"]["value"]
        .as_str()
        .expect("created")
        .to_string();
    let release = format!(
        r#"{{"jsonrpc":"2.0","id":42,"method":"release","params":{{"object":"{second}","sessionId":"{sid}"}}}}"#
    );
    client.send(&release);
    std::thread::sleep(Duration::from_millis(300));
    client.send(&ping(43));
    let frames = until_reply(&mut client, 43);
    let events: Vec<&Value> = frames.iter().filter(|f| f["method"] == "onEvent").collect();
    assert!(
        events
            .iter()
            .all(|e| e["params"]["value"]["type"] == "ObjectCreated"),
        "no ObjectDestroyed ever: {frames:?}"
    );
    assert_eq!(kms.destroyed_events_sent(), 0);
    let list = client.call_json(&invoke(44, "getPipelines", &sid));
    assert_eq!(
        list["result"]["value"],
        json!([]),
        "released: no longer listed"
    );
    assert_eq!(
        kms.running_unreferenced(),
        4,
        "but still running, elements included"
    );
}
