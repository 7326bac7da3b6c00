//! The admin API: drains on demand, for people and for Kubernetes.
//!
//! - `POST /drain` — start a drain now (latched like a memory drain, reason `drain requested
//!   by admin`); with `?wait=DURATION`, also wait as below.
//! - `DELETE /drain` — cancel a requested drain (never a memory drain: 409).
//! - `GET /drain?wait=DURATION` — answer once no session is left (200, with how long it took)
//!   or at the deadline (503, with the sessions still live). Any number of waiters; each only
//!   watches the published snapshots. The connection cap never closes a waiter, and when
//!   memprobe stops, every waiter is answered 503 with `"state":"stopping"` before the port
//!   closes: a waiter always gets an answer.
//!
//! Every call needs `Authorization: Bearer TOKEN` with memprobe's `--admin-token`, compared in
//! constant time (401 otherwise); without a token configured the API does not exist (404).
//! The token is never logged nor shown.

use std::time::Duration;

use axum::extract::{Query, State as Extract};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::{AppState, json};
use crate::sources::operator::{Request, Requests};
use crate::units::DurationRange;

/// Who a request through this API is recorded as.
const WHO: &str = "admin";

#[derive(Deserialize)]
pub struct Params {
    wait: Option<String>,
}

fn answer(code: StatusCode, body: serde_json::Value) -> Response {
    json(code, Bytes::from(body.to_string()))
}

/// Why a call is not served.
enum Refusal {
    /// No token configured: there is no admin API.
    Off,
    Unauthorized,
    BadWait(String),
}

impl Refusal {
    fn response(self) -> Response {
        match self {
            Refusal::Off => answer(
                StatusCode::NOT_FOUND,
                json!({"error": "not found", "hint": "the admin API is off: start memprobe with --admin-token-file"}),
            ),
            Refusal::Unauthorized => {
                let mut refused = answer(
                    StatusCode::UNAUTHORIZED,
                    json!({"error": "unauthorized: send Authorization: Bearer <the --admin-token>"}),
                );
                refused
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                refused
            }
            Refusal::BadWait(problem) => answer(StatusCode::BAD_REQUEST, json!({"error": problem})),
        }
    }
}

/// The requests channel, when the caller may use it.
async fn authorize(state: &AppState, headers: &HeaderMap) -> Result<Requests, Refusal> {
    let Some((token, requests)) = &state.admin else {
        return Err(Refusal::Off);
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if !token.admits(given).await {
        return Err(Refusal::Unauthorized);
    }
    Ok(requests.clone())
}

/// `?wait=DURATION`, bounded like every duration.
fn wait_of(params: &Params) -> Result<Option<Duration>, Refusal> {
    let Some(text) = &params.wait else {
        return Ok(None);
    };
    DurationRange::STANDARD.parse(text).map(Some).map_err(|e| {
        let shown = crate::units::clip(text, 32);
        Refusal::BadWait(format!("wait: '{shown}' {e}"))
    })
}

fn now_draining(state: &AppState) -> Response {
    let snap = state.latest();
    let status = &snap.status;
    answer(
        StatusCode::OK,
        json!({
            "draining": status.state == crate::policy::State::Draining,
            "requested_by": status.drain_requested_by,
            "state": status.state,
            "sessions": status.sessions,
            "reason": status.reason,
        }),
    )
}

pub async fn start(
    Extract(state): Extract<AppState>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    let requests = match authorize(&state, &headers).await {
        Ok(requests) => requests,
        Err(refused) => return refused.response(),
    };
    let wait = match wait_of(&params) {
        Ok(wait) => wait,
        Err(refused) => return refused.response(),
    };
    match requests.ask(Request::Drain, WHO).await {
        None => stopping(),
        Some(Err(refused)) => answer(StatusCode::CONFLICT, json!({"error": refused.to_string()})),
        Some(Ok(_)) => match wait {
            Some(limit) => drained_within(&state, &requests, limit).await,
            None => now_draining(&state),
        },
    }
}

pub async fn cancel(Extract(state): Extract<AppState>, headers: HeaderMap) -> Response {
    let requests = match authorize(&state, &headers).await {
        Ok(requests) => requests,
        Err(refused) => return refused.response(),
    };
    match requests.ask(Request::CancelDrain, WHO).await {
        None => stopping(),
        Some(Err(refused)) => answer(StatusCode::CONFLICT, json!({"error": refused.to_string()})),
        Some(Ok(_)) => now_draining(&state),
    }
}

pub async fn wait(
    Extract(state): Extract<AppState>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    let requests = match authorize(&state, &headers).await {
        Ok(requests) => requests,
        Err(refused) => return refused.response(),
    };
    match wait_of(&params) {
        Err(refused) => refused.response(),
        Ok(Some(limit)) => drained_within(&state, &requests, limit).await,
        Ok(None) => now_draining(&state),
    }
}

fn stopping() -> Response {
    answer(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": "memprobe is stopping", "state": "stopping", "drained": false}),
    )
}

/// Answers once the session count is zero (200), or at `limit` (503). A published zero
/// may be a poll old: it is answered only when a read that began after it says 0 too.
async fn drained_within(state: &AppState, requests: &Requests, limit: Duration) -> Response {
    let started = Instant::now();
    let deadline = started + limit;
    let mut snapshots = state.readout.snapshots();
    loop {
        let mut sessions = snapshots.borrow_and_update().status.sessions;
        if sessions == Some(0) {
            sessions = tokio::select! {
                count = requests.fresh_count() => count,
                () = state.closed() => return stopping(),
                _ = tokio::time::sleep_until(deadline) => None,
            };
        }
        let waited = started.elapsed().as_secs_f64();
        if sessions == Some(0) {
            return answer(
                StatusCode::OK,
                json!({"drained": true, "sessions": 0, "waited_seconds": waited}),
            );
        }
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return stopping();
                }
            }
            () = state.closed() => return stopping(),
            _ = tokio::time::sleep_until(deadline) => {
                let why = match sessions {
                    Some(n) => format!("{n} sessions still live"),
                    None => "the session count is unknown (no KMS connection)".to_string(),
                };
                return answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"drained": false, "sessions": sessions, "waited_seconds": limit.as_secs_f64(), "reason": why}),
                );
            }
        }
    }
}
