//! Kurento's JSON-RPC 2.0 frames: the few requests memprobe sends and what can come back.
//!
//! Pure: text in, values out, so every shape — including the broken ones a hostile or buggy
//! server may send — is a unit test on literal frames.

use serde::Deserialize;
use serde_json::{Value, json};

/// The ServerManager's fixed object id; `invoke` works on it without a `describe`.
pub const SERVER_MANAGER: &str = "manager_ServerManager";
const PIPELINE_SUFFIX: &str = "_kurento.MediaPipeline";

/// One request, as text. `session_id` goes into `params` when the connection has one.
pub fn request(id: u64, method: &str, params: Option<Value>, session_id: Option<&str>) -> String {
    let mut params = params.unwrap_or_else(|| json!({}));
    if let (Some(sid), Some(map)) = (session_id, params.as_object_mut()) {
        map.insert("sessionId".into(), Value::from(sid));
    }
    let mut frame = json!({"jsonrpc": "2.0", "id": id, "method": method});
    if params.as_object().is_some_and(|m| !m.is_empty()) {
        frame["params"] = params;
    }
    frame.to_string()
}

pub fn invoke(operation: &str) -> Value {
    json!({"object": SERVER_MANAGER, "operation": operation})
}

/// `create` of an empty `MediaPipeline`, as kurento-client sends it.
pub fn create_pipeline() -> Value {
    json!({"type": "MediaPipeline", "constructorParams": {}, "properties": {}})
}

pub fn subscribe(event: &str) -> Value {
    json!({"object": SERVER_MANAGER, "type": event})
}

/// A frame from the server, understood.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Reply {
        id: u64,
        result: Value,
    },
    Error {
        id: Option<u64>,
        code: i64,
        message: String,
    },
    Created(String),
    Destroyed(String),
    /// A well-formed frame memprobe has no use for (another event type, a request).
    Ignored,
}

/// Why a frame could not be understood; the label is the `kind` of the error metric.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum FrameError {
    #[error("malformed JSON-RPC frame: {0}")]
    Malformed(String),
    #[error("reply with an id memprobe never sent: {0}")]
    UnknownId(String),
}

impl FrameError {
    pub fn kind(&self) -> super::ErrorKind {
        match self {
            FrameError::Malformed(_) => super::ErrorKind::Malformed,
            FrameError::UnknownId(_) => super::ErrorKind::UnknownId,
        }
    }
}

#[derive(Deserialize)]
struct Frame {
    id: Option<Value>,
    method: Option<String>,
    result: Option<Value>,
    error: Option<ErrorBody>,
    params: Option<Value>,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: i64,
    #[serde(default)]
    message: String,
}

/// Understands one text frame.
pub fn decode(text: &str) -> Result<Incoming, FrameError> {
    // Where it broke and how, never what it held: serde's own message can quote the frame,
    // and what KMS sends is not shown on the open port (SECURITY.md).
    let frame: Frame = serde_json::from_str(text).map_err(|e| {
        FrameError::Malformed(format!(
            "{:?} error at line {} column {} of {} bytes",
            e.classify(),
            e.line(),
            e.column(),
            text.len()
        ))
    })?;
    let id = match &frame.id {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(id) => Some(id),
            None => return Err(FrameError::UnknownId("a number out of range".into())),
        },
        Some(_) => return Err(FrameError::UnknownId("not a number".into())),
    };
    if let Some(error) = frame.error {
        return Ok(Incoming::Error {
            id,
            code: error.code,
            message: error.message,
        });
    }
    if frame.method.as_deref() == Some("onEvent") {
        return event(frame.params.unwrap_or_default());
    }
    if frame.method.is_some() {
        return Ok(Incoming::Ignored);
    }
    match (id, frame.result) {
        (Some(id), Some(result)) => Ok(Incoming::Reply { id, result }),
        _ => Err(FrameError::Malformed(
            "neither a reply, an error nor an event".into(),
        )),
    }
}

fn event(params: Value) -> Result<Incoming, FrameError> {
    let value = &params["value"];
    let data = &value["data"];
    let text = |v: &Value, what: &str| {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| FrameError::Malformed(format!("event without {what}")))
    };
    match value["type"].as_str() {
        Some("ObjectCreated") => Ok(Incoming::Created(text(&data["object"], "data.object")?)),
        Some("ObjectDestroyed") => Ok(Incoming::Destroyed(text(
            &data["objectId"],
            "data.objectId",
        )?)),
        Some(_) => Ok(Incoming::Ignored),
        None => Err(FrameError::Malformed("event without a type".into())),
    }
}

/// A media pipeline's id, as opposed to an element inside one (`<pipeline>/<element>`).
pub fn is_pipeline(object_id: &str) -> bool {
    object_id.len() <= MAX_ID_BYTES
        && !object_id.contains('/')
        && object_id.ends_with(PIPELINE_SUFFIX)
}

/// KMS's object ids are a UUID and a type name, under 100 bytes: a longer "id" is not one,
/// and is not kept.
pub const MAX_ID_BYTES: usize = 256;

/// The `value` of a reply's result.
pub fn value(result: &Value) -> &Value {
    &result["value"]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_json_rpc_2_with_the_session_in_params() {
        assert_eq!(
            request(1, "connect", None, None),
            r#"{"id":1,"jsonrpc":"2.0","method":"connect"}"#
        );
        let frame = request(3, "invoke", Some(invoke("getPipelines")), Some("sid"));
        assert_eq!(
            frame,
            r#"{"id":3,"jsonrpc":"2.0","method":"invoke","params":{"object":"manager_ServerManager","operation":"getPipelines","sessionId":"sid"}}"#
        );
    }

    #[test]
    fn replies_errors_and_events_are_told_apart() {
        let reply = r#"{"id":1,"jsonrpc":"2.0","result":{"serverId":"s1","sessionId":"x"}}"#;
        assert_eq!(
            decode(reply),
            Ok(Incoming::Reply {
                id: 1,
                result: json!({"serverId": "s1", "sessionId": "x"})
            })
        );
        let error = r#"{"id":5,"jsonrpc":"2.0","error":{"code":40101,"data":{"type":"MEDIA_OBJECT_NOT_FOUND"},"message":"Object 'x' not found"}}"#;
        assert_eq!(
            decode(error),
            Ok(Incoming::Error {
                id: Some(5),
                code: 40101,
                message: "Object 'x' not found".into()
            })
        );
        let created = r#"{"jsonrpc":"2.0","method":"onEvent","params":{"value":{"data":{"object":"p1_kurento.MediaPipeline","source":"manager_ServerManager","tags":[],"timestamp":"1","timestampMillis":"1000","type":"ObjectCreated"},"object":"manager_ServerManager","type":"ObjectCreated"}}}"#;
        assert_eq!(
            decode(created),
            Ok(Incoming::Created("p1_kurento.MediaPipeline".into()))
        );
        let destroyed = r#"{"jsonrpc":"2.0","method":"onEvent","params":{"value":{"data":{"objectId":"p1_kurento.MediaPipeline","type":"ObjectDestroyed"},"object":"manager_ServerManager","type":"ObjectDestroyed"}}}"#;
        assert_eq!(
            decode(destroyed),
            Ok(Incoming::Destroyed("p1_kurento.MediaPipeline".into()))
        );
        let parse_error =
            r#"{"error":{"code":-32700,"message":"Parse error"},"id":null,"jsonrpc":"2.0"}"#;
        assert!(matches!(
            decode(parse_error),
            Ok(Incoming::Error {
                id: None,
                code: -32700,
                ..
            })
        ));
    }

    #[test]
    fn a_broken_frame_is_said_by_where_it_broke_never_by_what_it_held() {
        for text in [
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":"S3cr3t-token"}}"#,
            r#"{"id":"S3cr3t-token","result":{}}"#,
            "S3cr3t-token",
        ] {
            let said = decode(text).unwrap_err().to_string();
            assert!(!said.contains("S3cr3t"), "{said}");
        }
        assert_eq!(
            decode("S3cr3t").unwrap_err().to_string(),
            "malformed JSON-RPC frame: Syntax error at line 1 column 1 of 6 bytes"
        );
    }

    #[test]
    fn broken_frames_are_errors_not_panics() {
        for text in [
            "",
            "{",
            "[]",
            "null",
            "42",
            r#"{"id":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":"x"}}"#,
        ] {
            assert!(
                matches!(decode(text), Err(FrameError::Malformed(_))),
                "{text:?}"
            );
        }
        assert!(matches!(
            decode(r#"{"id":"abc","result":{}}"#),
            Err(FrameError::UnknownId(_))
        ));
        assert!(matches!(
            decode(r#"{"id":-1,"result":{}}"#),
            Err(FrameError::UnknownId(_))
        ));
        let no_object =
            r#"{"method":"onEvent","params":{"value":{"type":"ObjectCreated","data":{}}}}"#;
        assert!(matches!(decode(no_object), Err(FrameError::Malformed(_))));
        assert_eq!(
            decode(r#"{"method":"onEvent","params":{"value":{"type":"Other"}}}"#),
            Ok(Incoming::Ignored)
        );
    }

    #[test]
    fn pipelines_are_told_from_their_elements() {
        assert!(is_pipeline("6ba9067f-a9d0-4a1c_kurento.MediaPipeline"));
        assert!(!is_pipeline(
            "6ba9067f_kurento.MediaPipeline/1f3e_kurento.WebRtcEndpoint"
        ));
        assert!(!is_pipeline("manager_ServerManager"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn no_frame_makes_the_decoder_panic(text in "\\PC*") {
                let _ = decode(&text);
            }

            #[test]
            fn json_frames_of_any_shape_decode_or_are_refused(
                id in prop_oneof![Just("1".to_string()), Just("\"x\"".to_string()), Just("null".to_string()), Just("-5".to_string()), Just("1e999".to_string())],
                body in prop_oneof![
                    Just(r#""result":{"value":"a"}"#.to_string()),
                    Just(r#""error":{"code":"x"}"#.to_string()),
                    Just(r#""method":"onEvent","params":{"value":{"type":"ObjectCreated","data":{"object":7}}}"#.to_string()),
                    Just(r#""method":"onEvent","params":null"#.to_string()),
                ],
            ) {
                let _ = decode(&format!(r#"{{"jsonrpc":"2.0","id":{id},{body}}}"#));
            }
        }
    }
}
