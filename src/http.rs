//! The HTTP face: probes, status and metrics, all answered from the latest [`Snapshot`].
//!
//! - `/ready` — 200 exactly when new sessions may be sent to the server, else 503. Exactly
//!   200, not 204: AWS ALB and Envoy accept only 200. From SIGTERM on it answers 503.
//! - `/healthz` — 200 unless the watched server must be restarted (state `recycle`), then 503.
//!   The server's own livenessProbe points here, so the kubelet restarts it once drained.
//! - `/livez` — memprobe's own liveness: 200 while the sampling loop has completed a step
//!   within 3 intervals; a stuck /proc read shows up here, not in the server's probes.
//! - `/status` — the whole decision, as JSON.
//! - `/metrics` — Prometheus text format.
//!
//! Handlers never read the target's /proc: the kubelet gives a probe one second, and a probe
//! that waits on a loaded server's /proc fails exactly when it matters. (A scrape does read
//! memprobe's own /proc/self for its `process_*` figures, as every exporter does.)

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State as Extract;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::status::Snapshot;

/// The exposition format's Content-Type, exactly: Prometheus 3 fails a scrape without it.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// How long in-flight requests may take to finish after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);
const STOPPING_BODY: &str =
    r#"{"ready":false,"state":"stopping","reason":"memprobe is shutting down"}"#;

#[derive(Clone)]
pub struct AppState {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    stopping: Arc<AtomicBool>,
    /// `/livez` fails after three intervals without a completed step.
    stale_after: Duration,
}

impl AppState {
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, interval: Duration) -> Self {
        AppState {
            snapshots,
            stopping: Arc::new(AtomicBool::new(false)),
            stale_after: interval * 3,
        }
    }

    /// From now on `/ready` answers 503.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    fn latest(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshots.borrow())
    }
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
}

/// Serves until `shutdown` resolves, then answers `/ready` with 503, stops accepting, and
/// gives in-flight requests [`SHUTDOWN_GRACE`] to finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stopped_tx, mut stopped) = watch::channel(false);
    let stopper = state.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.stop();
        let _ = stopped_tx.send(true);
    });
    let mut graceful = stopped.clone();
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(async move {
        let _ = graceful.wait_for(|s| *s).await;
    });
    tokio::select! {
        result = server => result,
        _ = async {
            let _ = stopped.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    }
}

fn json(code: StatusCode, body: Bytes) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn verdict(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn ready(Extract(state): Extract<AppState>) -> Response {
    if state.stopping.load(Ordering::SeqCst) {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from_static(STOPPING_BODY.as_bytes()),
        );
    }
    let snap = state.latest();
    json(verdict(snap.status.ready), snap.ready_body.clone())
}

async fn healthz(Extract(state): Extract<AppState>) -> Response {
    let snap = state.latest();
    json(verdict(snap.status.live), snap.healthz_body.clone())
}

async fn livez(Extract(state): Extract<AppState>) -> Response {
    let ticked_at = state.latest().ticked_at;
    let ago = Instant::now().saturating_duration_since(ticked_at);
    let live = ago <= state.stale_after;
    let body = format!(
        r#"{{"live":{live},"last_step_seconds_ago":{:.3}}}"#,
        ago.as_secs_f64()
    );
    json(verdict(live), Bytes::from(body))
}

async fn status(Extract(state): Extract<AppState>) -> Response {
    json(StatusCode::OK, state.latest().status_body())
}

async fn metrics(Extract(state): Extract<AppState>) -> Response {
    let body = state.latest().metrics_body();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        body,
    )
        .into_response()
}

async fn not_found(uri: Uri) -> Response {
    let body = serde_json::json!({
        "error": "not found",
        "path": uri.path(),
        "endpoints": ["/ready", "/healthz", "/livez", "/status", "/metrics"],
    });
    json(StatusCode::NOT_FOUND, Bytes::from(body.to_string()))
}

async fn method_not_allowed() -> Response {
    let body = r#"{"error":"method not allowed","allowed":["GET","HEAD"]}"#;
    let mut response = json(
        StatusCode::METHOD_NOT_ALLOWED,
        Bytes::from_static(body.as_bytes()),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::State;
    use crate::status::Status;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn state_in(state: State) -> (AppState, watch::Sender<Arc<Snapshot>>) {
        let status = Status {
            state,
            ready: state.ready(),
            live: state.healthy(),
            reason: "rss 1.62 GiB over threshold 1.50 GiB for 5m".into(),
            ..Status::default()
        };
        let metrics = Arc::new(|_: &Status| Bytes::from_static(b"# metrics\n"));
        let snap = Snapshot::new(status, Instant::now(), metrics);
        let (tx, rx) = watch::channel(Arc::new(snap));
        (AppState::new(rx, Duration::from_secs(5)), tx)
    }

    async fn call(state: &AppState, method: &str, path: &str) -> (StatusCode, String, Response) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let response = app(state.clone()).oneshot(request).await.unwrap();
        let code = response.status();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        (code, text, Response::from_parts(parts, Body::empty()))
    }

    #[tokio::test]
    async fn probes_follow_the_state_table() {
        let table = [
            (State::Starting, 503, 200),
            (State::Healthy, 200, 200),
            (State::Elevated, 200, 200),
            (State::Draining, 503, 200),
            (State::Recycle, 503, 503),
            (State::Lost, 503, 200),
        ];
        for (s, ready, healthz) in table {
            let (state, _tx) = state_in(s);
            assert_eq!(
                call(&state, "GET", "/ready").await.0,
                ready,
                "/ready in {s:?}"
            );
            assert_eq!(
                call(&state, "GET", "/healthz").await.0,
                healthz,
                "/healthz in {s:?}"
            );
        }
    }

    #[tokio::test]
    async fn probe_bodies_are_short_json_with_the_reason() {
        let (state, _tx) = state_in(State::Draining);
        let (_, body, response) = call(&state, "GET", "/ready").await;
        assert_eq!(
            body,
            r#"{"ready":false,"reason":"rss 1.62 GiB over threshold 1.50 GiB for 5m","state":"draining"}"#
        );
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    }

    #[tokio::test]
    async fn head_is_answered_like_get_without_a_body() {
        let (state, _tx) = state_in(State::Healthy);
        let (code, body, _) = call(&state, "HEAD", "/ready").await;
        assert_eq!((code, body.as_str()), (StatusCode::OK, ""));
    }

    #[tokio::test]
    async fn other_methods_and_paths_are_refused_in_json() {
        let (state, _tx) = state_in(State::Healthy);
        let (code, _, response) = call(&state, "POST", "/ready").await;
        assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
        let (code, body, _) = call(&state, "GET", "/nope").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert!(body.contains(r#""path":"/nope""#), "{body}");
    }

    #[tokio::test]
    async fn metrics_carry_the_exact_content_type() {
        let (state, _tx) = state_in(State::Healthy);
        let (_, body, response) = call(&state, "GET", "/metrics").await;
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            METRICS_CONTENT_TYPE
        );
        assert_eq!(body, "# metrics\n");
    }

    #[tokio::test]
    async fn ready_answers_503_once_stopping() {
        let (state, _tx) = state_in(State::Healthy);
        state.stop();
        let (code, body, _) = call(&state, "GET", "/ready").await;
        assert_eq!(
            code,
            StatusCode::SERVICE_UNAVAILABLE,
            "from SIGTERM on, no new sessions"
        );
        assert!(body.contains("shutting down"));
        assert_eq!(call(&state, "GET", "/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn livez_fails_after_three_intervals_without_a_step() {
        let (state, _tx) = state_in(State::Healthy);
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(
            call(&state, "GET", "/livez").await.0,
            StatusCode::OK,
            "3 intervals is live"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            call(&state, "GET", "/livez").await.0,
            StatusCode::SERVICE_UNAVAILABLE,
            "a sampling loop silent for more than 3 intervals is not live"
        );
    }
}
