//! What the gate reads of a client's request, and the answer it gives in KMS's place: pure,
//! on text, with no socket in sight.
//!
//! Only one request is ever answered by the gate: a `create` of a `MediaPipeline` (alone, or
//! among a `transaction`'s operations) while the instance takes no new sessions. Everything
//! else — endpoints created on an existing pipeline, `invoke`, `subscribe`, `release`,
//! `ping`, `connect`, `describe`, text that is not JSON at all — is KMS's to answer, so it
//! passes as it came.
//!
//! The gate also notes each `release` of a pipeline that passes (alone or in a
//! transaction): the KMS session then expects its `ObjectDestroyed` within
//! `--kms-teardown-timeout`, the surest sign that KMS can still tear sessions down.

use serde_json::Value;

/// The JSON-RPC error code of the gate's refusal: in JSON-RPC's range for implementation
/// errors (-32000 to -32099), at its far end from KMS's own -32000, and documented in
/// docs/kurento.md as stable.
pub const REFUSED_CODE: i64 = -32099;
/// The refusal's `error.data.type`, as KMS names its own error types.
pub const REFUSED_TYPE: &str = "KMS_DRAINING";

/// Whether `request`, or any operation of its transaction, creates a pipeline. Read as a
/// plain JSON value, field by field, so that no extra or odd field elsewhere can hide a
/// create that KMS itself would carry out.
fn creates_pipeline(request: &Value) -> bool {
    let params = request.get("params");
    match request.get("method").and_then(Value::as_str) {
        Some("create") => params
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str)
            .is_some_and(is_pipeline_type),
        Some("transaction") => params
            .and_then(|p| p.get("operations"))
            .and_then(Value::as_array)
            .is_some_and(|ops| ops.iter().any(creates_pipeline)),
        _ => false,
    }
}

/// `MediaPipeline`, as kurento-client names it, or with its module (`kurento.MediaPipeline`).
fn is_pipeline_type(kind: &str) -> bool {
    kind == "MediaPipeline" || kind == "kurento.MediaPipeline"
}

/// The pipelines `text` releases (a `release`, or a transaction's), at most [`MAX_NOTED`].
/// Text without the word `"release"` is not parsed at all.
pub fn released_pipelines(text: &[u8]) -> Vec<String> {
    const WORD: &[u8] = b"\"release\"";
    if !text.windows(WORD.len()).any(|w| w == WORD) {
        return Vec::new();
    }
    let Ok(request) = serde_json::from_slice::<Value>(text) else {
        return Vec::new();
    };
    let object = |op: &Value| -> Option<String> {
        if op.get("method").and_then(Value::as_str) != Some("release") {
            return None;
        }
        let object = op.get("params")?.get("object")?.as_str()?;
        crate::sources::kms::protocol::is_pipeline(object).then(|| object.to_owned())
    };
    let operations = request
        .get("params")
        .and_then(|p| p.get("operations"))
        .and_then(Value::as_array);
    match request.get("method").and_then(Value::as_str) {
        Some("transaction") => operations
            .into_iter()
            .flatten()
            .filter_map(object)
            .take(MAX_NOTED)
            .collect(),
        _ => object(&request).into_iter().collect(),
    }
}

/// Releases noted from one message, at most.
pub const MAX_NOTED: usize = 64;

/// What the gate does with one text message from a client.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// KMS answers it: the message goes on unchanged.
    Forward,
    /// The gate answers it with this text, and KMS never sees it.
    Refuse(String),
}

/// The verdict on `text` from a client, while the instance takes new sessions (`closed` is
/// `None`) or not, and why not (said in the refusal).
pub fn verdict(text: &[u8], closed: Option<&str>) -> Verdict {
    let Some(reason) = closed else {
        return Verdict::Forward;
    };
    // Text that is not JSON is KMS's to refuse (it drops such a client).
    let Ok(request) = serde_json::from_slice::<Value>(text) else {
        return Verdict::Forward;
    };
    if !creates_pipeline(&request) {
        return Verdict::Forward;
    }
    Verdict::Refuse(refusal(request.get("id").cloned(), reason))
}

/// The gate's error, shaped as KMS shapes its own (keys sorted, `error` first), with the
/// request's id as it came (number or string; `null` for a request without one).
pub fn refusal(id: Option<Value>, reason: &str) -> String {
    let message = format!(
        "this KMS takes no new media pipelines ({reason}); create the pipeline on another KMS"
    );
    serde_json::json!({
        "error": {
            "code": REFUSED_CODE,
            "data": { "type": REFUSED_TYPE },
            "message": message,
        },
        "id": id.unwrap_or(Value::Null),
        "jsonrpc": "2.0",
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipelines_release_is_noted_alone_or_in_a_transaction_and_nothing_else_is() {
        let p = "6ba9067f-b7ff-4b2f-a4e8-1a1b2c3d4e5f_kurento.MediaPipeline";
        let release = format!(
            r#"{{"id":5,"method":"release","params":{{"object":"{p}","sessionId":"s"}},"jsonrpc":"2.0"}}"#
        );
        assert_eq!(released_pipelines(release.as_bytes()), vec![p.to_string()]);
        let transaction = format!(
            r#"{{"id":6,"method":"transaction","params":{{"operations":[{{"id":0,"method":"release","params":{{"object":"{p}/x_kurento.WebRtcEndpoint"}}}},{{"id":1,"method":"release","params":{{"object":"{p}"}}}}]}},"jsonrpc":"2.0"}}"#
        );
        assert_eq!(
            released_pipelines(transaction.as_bytes()),
            vec![p.to_string()],
            "an endpoint's release is not a pipeline's"
        );
        for other in [
            r#"{"id":1,"method":"ping","params":{"interval":240000},"jsonrpc":"2.0"}"#.to_string(),
            format!(
                r#"{{"id":1,"method":"invoke","params":{{"object":"{p}","operation":"release"}}}}"#
            ),
            format!(
                r#"{{"method":"release","params":{{"object":"{p}/e_kurento.WebRtcEndpoint"}}}}"#
            ),
            r#"{"method":"release" not json"#.to_string(),
        ] {
            assert!(released_pipelines(other.as_bytes()).is_empty(), "{other}");
        }
    }

    const REASON: &str = "draining: rss 1.62 GiB over threshold 1.50 GiB for 5m";

    fn refused(text: &str) -> Value {
        match verdict(text.as_bytes(), Some(REASON)) {
            Verdict::Refuse(answer) => serde_json::from_str(&answer).expect("the refusal is JSON"),
            Verdict::Forward => panic!("a pipeline's create must be refused while closed: {text}"),
        }
    }

    fn forwarded(text: &str) -> bool {
        verdict(text.as_bytes(), Some(REASON)) == Verdict::Forward
    }

    #[test]
    fn the_java_clients_create_of_a_pipeline_is_refused_with_its_id() {
        let answer = refused(
            r#"{"id":2,"method":"create","params":{"type":"MediaPipeline","constructorParams":{},"properties":{}},"jsonrpc":"2.0"}"#,
        );
        assert_eq!(answer["id"], 2, "the answer carries the request's id");
        assert_eq!(answer["jsonrpc"], "2.0");
        assert_eq!(answer["error"]["code"], REFUSED_CODE);
        assert_eq!(answer["error"]["data"]["type"], REFUSED_TYPE);
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(REASON) && message.contains("another KMS"),
            "the message says why and what to do: {message}"
        );
    }

    #[test]
    fn key_order_and_a_string_id_do_not_matter() {
        let answer = refused(
            r#"{"jsonrpc":"2.0","params":{"properties":{},"type":"MediaPipeline"},"method":"create","id":"a-7"}"#,
        );
        assert_eq!(answer["id"], "a-7", "a string id comes back as it was");
    }

    #[test]
    fn a_transaction_that_creates_a_pipeline_is_refused_whole() {
        let answer = refused(
            r#"{"id":9,"method":"transaction","params":{"operations":[{"id":0,"method":"create","params":{"type":"MediaPipeline"},"jsonrpc":"2.0"},{"id":1,"method":"create","params":{"type":"WebRtcEndpoint","constructorParams":{"mediaPipeline":"newref:0"}},"jsonrpc":"2.0"}],"sessionId":"s"},"jsonrpc":"2.0"}"#,
        );
        assert_eq!(answer["id"], 9);
    }

    #[test]
    fn everything_on_an_existing_pipeline_passes_while_closed() {
        for text in [
            r#"{"id":3,"method":"create","params":{"type":"WebRtcEndpoint","constructorParams":{"mediaPipeline":"p_kurento.MediaPipeline"},"sessionId":"s"},"jsonrpc":"2.0"}"#,
            r#"{"id":4,"method":"invoke","params":{"object":"p/e_kurento.WebRtcEndpoint","operation":"processOffer","operationParams":{"offer":"v=0"},"sessionId":"s"},"jsonrpc":"2.0"}"#,
            r#"{"id":5,"method":"release","params":{"object":"p_kurento.MediaPipeline","sessionId":"s"},"jsonrpc":"2.0"}"#,
            r#"{"id":6,"method":"subscribe","params":{"object":"p_kurento.MediaPipeline","type":"Error","sessionId":"s"},"jsonrpc":"2.0"}"#,
            r#"{"id":1,"method":"ping","params":{"interval":240000},"jsonrpc":"2.0"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"connect","params":{"sessionId":"s"}}"#,
            r#"{"id":7,"method":"describe","params":{"object":"p_kurento.MediaPipeline"},"jsonrpc":"2.0"}"#,
            r#"{"id":8,"method":"transaction","params":{"operations":[{"id":0,"method":"release","params":{"object":"p"}}]},"jsonrpc":"2.0"}"#,
            r#"{"id":10,"method":"closeSession","jsonrpc":"2.0","params":{"sessionId":"s"}}"#,
        ] {
            assert!(
                forwarded(text),
                "only a pipeline's create is answered by the gate: {text}"
            );
        }
    }

    #[test]
    fn what_is_not_a_request_is_kms_s_to_answer() {
        for text in [
            "",
            "not json",
            "[1,2]",
            r#"{"method":"create","params":"MediaPipeline"}"#,
            r#"{"method":7}"#,
            r#"{"method":"create","params":{"type":7}}"#,
            r#"{"method":"create","params":{"type":"WebRtcEndpoint","operations":[{"method":"create","params":{"type":"MediaPipeline"}}]}}"#,
        ] {
            assert!(
                forwarded(text),
                "the gate answers nothing but a pipeline's create: {text:?}"
            );
        }
    }

    #[test]
    fn an_open_gate_forwards_even_a_pipelines_create() {
        let text =
            r#"{"id":2,"method":"create","params":{"type":"MediaPipeline"},"jsonrpc":"2.0"}"#;
        assert_eq!(verdict(text.as_bytes(), None), Verdict::Forward);
    }

    #[test]
    fn odd_fields_beside_a_pipelines_create_do_not_hide_it() {
        refused(
            r#"{"id":1,"method":"create","params":{"type":"MediaPipeline","operations":5,"constructorParams":"x"},"extra":[1]}"#,
        );
    }

    #[test]
    fn a_create_without_an_id_is_refused_with_a_null_id() {
        let answer =
            refused(r#"{"method":"create","params":{"type":"MediaPipeline"},"jsonrpc":"2.0"}"#);
        assert!(answer["id"].is_null());
    }
}
