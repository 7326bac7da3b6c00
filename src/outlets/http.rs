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
//! `/ready` and `/healthz` take a short path beside the router ([`Probes`]): a GET or HEAD
//! without a body is answered straight from the snapshot's pre-rendered bytes, with static
//! headers, no routing and no boxing, so the probe a kubelet or balancer sends every second
//! costs next to nothing. Everything else goes through the router, which answers the same
//! probes the same way when they come with a body or another method.
//!
//! Handlers never read the target's /proc: the kubelet gives a probe one second, and a probe
//! that waits on a loaded server's /proc fails exactly when it matters. (A scrape does read
//! memprobe's own /proc/self for its `process_*` figures, as every exporter does.)
//!
//! The server is hyper's HTTP/1 connection under memprobe's own accept loop, because a guard
//! must not be pushed over its memory limit by the clients it answers: each connection has
//! [`HEADER_TIMEOUT`] to send its request head, and the same again once idle between
//! requests; reads are buffered in at most 8 KiB; request bodies over [`MAX_BODY_BYTES`] get
//! 413; and at most [`MAX_CONNECTIONS`] are open at once (fewer under a low descriptor
//! limit). What the cap closes, how long a write may stall and what large answers may hold
//! is [`conns`]'s: a flood of connections never takes the probes' answers, nor a drain
//! waiter, away.
//!
//! Shutdown ([`Shutdown`]): on SIGTERM `/ready` answers 503 at once and the port keeps
//! answering for `--shutdown-delay`, so balancers and kubelets see the 503 rather than a
//! refused connection; then drain waiters are answered 503 `stopping`, and requests in
//! flight get [`SHUTDOWN_GRACE`] to finish. A second SIGTERM stops at once, after giving
//! waiters their answer (at most [`LAST_WORDS`]). SIGHUP, SIGUSR1 and SIGUSR2 are logged and
//! ignored.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State as Extract;
use axum::http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::future::{Either, Ready};
use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioTimer;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;

use super::Readout;
use crate::secret::AdminToken;
use crate::sources::operator::Requests;
use crate::status::Snapshot;

mod conns;
mod drain;

use conns::{Activity, Budget, Chunk, Connections, Watched};

/// The exposition format's Content-Type, exactly: Prometheus 3 fails a scrape without it.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// How long requests in flight may take to finish once the port closes.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);
/// Time to send a request head, and the longest a kept-alive connection may sit idle.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this long for drain waiters' answers after a second SIGTERM.
pub const LAST_WORDS: Duration = Duration::from_millis(200);
/// Connections open at once; one more closes the one idle longest (see [`conns`]).
pub const MAX_CONNECTIONS: usize = 256;
/// Requests are GET and HEAD: a body is refused past this.
pub const MAX_BODY_BYTES: usize = 4096;
/// hyper's smallest read buffer, which also bounds a request head.
const MAX_BUFFER_BYTES: usize = 8192;
const JSON: &str = "application/json";
/// Every answer is for now only: no cache between memprobe and its reader may keep one.
const NO_STORE: &str = "no-store";
const STOPPING_BODY: &str =
    r#"{"ready":false,"state":"stopping","reason":"memprobe is shutting down"}"#;
const BUSY_BODY: &str =
    r#"{"error":"busy: too many large answers are being sent, try again in a second"}"#;

/// How far a stop has gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stop {
    Running,
    /// Asked once: fail `/ready`, keep answering for the shutdown delay, then close.
    Requested,
    /// Asked twice: close now.
    Now,
}

/// When to stop serving: on signals, or when a future resolves (the demo, tests).
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<Stop>);

impl Shutdown {
    /// Stops on SIGTERM or SIGINT; a second one stops at once. SIGHUP, SIGUSR1 and SIGUSR2
    /// are logged and ignored: a stray `kill -HUP` must not take the guard down.
    pub fn on_signals() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let (tx, rx) = watch::channel(Stop::Running);
        let listen = |kind| signal(kind).ok();
        let mut term = listen(SignalKind::terminate());
        let mut int = listen(SignalKind::interrupt());
        let mut hup = listen(SignalKind::hangup());
        let mut usr1 = listen(SignalKind::user_defined1());
        let mut usr2 = listen(SignalKind::user_defined2());
        tokio::spawn(async move {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            loop {
                let ignored = tokio::select! {
                    _ = next(&mut term) => None,
                    _ = next(&mut int) => None,
                    _ = next(&mut hup) => Some("SIGHUP"),
                    _ = next(&mut usr1) => Some("SIGUSR1"),
                    _ = next(&mut usr2) => Some("SIGUSR2"),
                };
                if let Some(name) = ignored {
                    tracing::info!("{name} received and ignored: memprobe stops on SIGTERM");
                    continue;
                }
                let stop = match *tx.borrow() {
                    Stop::Running => Stop::Requested,
                    _ => Stop::Now,
                };
                match stop {
                    Stop::Requested => tracing::info!(
                        "shutting down: /ready answers 503 from now on (a second SIGTERM stops at once)"
                    ),
                    _ => tracing::info!("second stop signal: stopping now"),
                }
                if tx.send(stop).is_err() {
                    return;
                }
            }
        });
        Shutdown(rx)
    }

    /// Stops (as a first SIGTERM would) when `done` resolves.
    pub fn on(done: impl Future<Output = ()> + Send + 'static) -> Self {
        let (tx, rx) = watch::channel(Stop::Running);
        tokio::spawn(async move {
            done.await;
            let _ = tx.send(Stop::Requested);
            // Keep the sender: a dropped one would read as "stop now".
            std::future::pending::<()>().await;
        });
        Shutdown(rx)
    }

    async fn reached(&mut self, stop: Stop) {
        // A sender gone means nobody can ask any more: treat it as asked.
        let _ = self.0.wait_for(|s| *s >= stop).await;
    }
}

/// The probe port's settings (`--listen`, `--shutdown-delay`, `--admin-token[-file]`).
#[derive(Clone, Debug, PartialEq)]
pub struct HttpSettings {
    pub listen: std::net::SocketAddr,
    pub shutdown_delay: Duration,
    /// The admin API's token; without one, `/drain` answers 404.
    pub admin_token: Option<crate::secret::Token>,
    /// The file the token was read from, read again as calls come (at most once a second).
    pub admin_token_file: Option<std::path::PathBuf>,
}

#[derive(Clone)]
pub struct AppState {
    readout: Readout,
    /// `/livez` fails after three intervals without a completed step.
    stale_after: Duration,
    /// The admin API: its token, and where drain requests go. `None`: `/drain` is 404.
    admin: Option<(Arc<AdminToken>, Requests)>,
    /// Turns true as the port closes: drain waiters then answer 503 `stopping`.
    closing: Arc<watch::Sender<bool>>,
}

impl AppState {
    pub fn new(readout: Readout, interval: Duration) -> Self {
        AppState {
            readout,
            stale_after: interval * 3,
            admin: None,
            closing: Arc::new(watch::channel(false).0),
        }
    }

    /// Turns the admin API on when there is a token.
    pub fn with_admin(mut self, token: Option<AdminToken>, requests: Requests) -> Self {
        self.admin = token.map(|t| (Arc::new(t), requests));
        self
    }

    /// From now on `/ready` answers 503.
    pub fn stop(&self) {
        self.readout.stop();
    }

    /// The port is about to close: waiters answer now, while their connections still stand.
    fn close_waiters(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once the port is closing.
    pub(super) async fn closed(&self) {
        let mut closing = self.closing.subscribe();
        // The sender lives in this state: it cannot be gone while we hold `self`.
        let _ = closing.wait_for(|c| *c).await;
    }

    pub(super) fn latest(&self) -> Arc<Snapshot> {
        self.readout.latest()
    }
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/ready", get(probe))
        .route("/healthz", get(probe))
        .route("/livez", get(livez))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/", get(page))
        .route("/history.json", get(history))
        .route(
            "/drain",
            get(drain::wait).post(drain::start).delete(drain::cancel),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static(NO_STORE),
        ))
}

/// An answer's body: bytes memprobe holds whole (a probe's, or a large answer carrying its
/// share of the budget), or whatever the router made.
pub enum AnswerBody {
    Whole(Option<Chunk>),
    Routed(axum::body::Body),
}

impl hyper::body::Body for AnswerBody {
    type Data = Chunk;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Chunk>, axum::Error>>> {
        match self.get_mut() {
            AnswerBody::Whole(chunk) => {
                std::task::Poll::Ready(chunk.take().map(|c| Ok(Frame::data(c))))
            }
            AnswerBody::Routed(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map(|f| f.map_data(Chunk::plain)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AnswerBody::Whole(chunk) => {
                chunk.as_ref().is_none_or(|c| bytes::Buf::remaining(c) == 0)
            }
            AnswerBody::Routed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            AnswerBody::Whole(chunk) => SizeHint::with_exact(
                chunk
                    .as_ref()
                    .map_or(0, |c| bytes::Buf::remaining(c) as u64),
            ),
            AnswerBody::Routed(body) => body.size_hint(),
        }
    }
}

type Answered = Result<Response<AnswerBody>, std::convert::Infallible>;

/// The probe port's service: `/ready` and `/healthz` straight from the snapshot, the rest
/// through the router; one clone per connection tells that connection's [`Activity`] when a
/// request starts and while its handler runs.
#[derive(Clone)]
pub struct Probes {
    state: AppState,
    router: TowerToHyperService<Router>,
    budget: Arc<Budget>,
    activity: Option<Arc<Activity>>,
}

impl Probes {
    pub fn new(state: AppState) -> Self {
        Probes {
            router: TowerToHyperService::new(app(state.clone())),
            state,
            budget: Budget::new(conns::LARGE_ANSWERS_BYTES),
            activity: None,
        }
    }

    /// This service for one connection.
    fn on(&self, activity: Arc<Activity>) -> Self {
        Probes {
            activity: Some(activity),
            ..self.clone()
        }
    }

    /// The short path's answer, for a bodiless GET or HEAD of a probe.
    fn probe(&self, request: &Request<Incoming>) -> Option<Response<AnswerBody>> {
        let method = request.method();
        if !(method == Method::GET || method == Method::HEAD) || !request.body().is_end_stream() {
            return None;
        }
        let (code, body) = probe_answer(&self.state, request.uri().path())?;
        let mut response = Response::new(AnswerBody::Whole(Some(Chunk::plain(body))));
        *response.status_mut() = code;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_STORE));
        Some(response)
    }
}

impl hyper::service::Service<Request<Incoming>> for Probes {
    type Response = Response<AnswerBody>;
    type Error = std::convert::Infallible;
    type Future = Either<Ready<Answered>, Pin<Box<dyn Future<Output = Answered> + Send>>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let pipelined = self.activity.as_ref().is_some_and(|a| a.request_started());
        if let Some(answer) = self.probe(&request) {
            let answer = closing_if(pipelined, answer);
            return Either::Left(futures_util::future::ready(Ok(answer)));
        }
        let routed = self.router.call(request);
        let (activity, budget) = (self.activity.clone(), Arc::clone(&self.budget));
        Either::Right(Box::pin(async move {
            let _answering = activity.as_ref().map(Activity::answering);
            let response = match routed.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(closing_if(pipelined, held(response, &budget).await))
        }))
    }
}

/// A pipelined request is answered, and its connection closed after the answer: no client
/// memprobe serves pipelines, and one that does must not queue requests behind answers it
/// does not read.
fn closing_if(pipelined: bool, mut answer: Response<AnswerBody>) -> Response<AnswerBody> {
    if pipelined {
        answer
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    answer
}

/// A routed answer as it is sent: a large one takes its size from the budget until written
/// (or becomes a short 503 when the budget is spent).
async fn held(response: Response, budget: &Arc<Budget>) -> Response<AnswerBody> {
    let size = response.body().size_hint().exact();
    let Some(size) = size
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n > conns::SMALL_ANSWER_BYTES)
    else {
        return response.map(AnswerBody::Routed);
    };
    let Some(reservation) = budget.reserve(size) else {
        return busy();
    };
    let (parts, body) = response.into_parts();
    // The router's bodies are bytes in memory, in one frame: collecting them copies nothing.
    let whole = body
        .collect()
        .await
        .ok()
        .map(|c| Chunk::held(c.to_bytes(), reservation));
    Response::from_parts(parts, AnswerBody::Whole(whole))
}

/// The answer when large answers already hold the whole budget. It closes the connection:
/// a client that pipelines behind it would otherwise get busy answers as fast as it asks.
fn busy() -> Response<AnswerBody> {
    let mut response = json(
        StatusCode::SERVICE_UNAVAILABLE,
        Bytes::from_static(BUSY_BODY.as_bytes()),
    )
    .map(AnswerBody::Routed);
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_STORE));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// `/ready` and `/healthz`: the code and the pre-rendered body, from the latest snapshot.
fn probe_answer(state: &AppState, path: &str) -> Option<(StatusCode, Bytes)> {
    let snap = state.readout.latest();
    match path {
        "/ready" if state.readout.stopping() => Some((
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from_static(STOPPING_BODY.as_bytes()),
        )),
        "/ready" => Some((verdict(snap.status.ready), snap.ready_body.clone())),
        "/healthz" => Some((verdict(snap.status.live), snap.healthz_body.clone())),
        _ => None,
    }
}

/// Serves until `shutdown`: then `/ready` answers 503, the port keeps answering for `delay`,
/// drain waiters are answered, the port stops accepting, and requests in flight get
/// [`SHUTDOWN_GRACE`] (none after a second stop).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: Shutdown,
    delay: Duration,
) -> std::io::Result<()> {
    let (mut requested, mut now) = (shutdown.clone(), shutdown);
    let service = Probes::new(state.clone());
    let graceful = GracefulShutdown::new();
    let limit = conns::open_files_limit();
    let cap = limit.map_or(MAX_CONNECTIONS, conns::cap_for);
    if let Some(limit) = limit.filter(|_| cap < MAX_CONNECTIONS) {
        tracing::warn!(
            "the open-files limit ({limit}) leaves room for {cap} connections at once, not \
             {MAX_CONNECTIONS} (raise it, e.g. ulimit -n 1024)"
        );
    }
    // Accepted sockets inherit the listener's buffer sizes.
    let socket = socket2::SockRef::from(&listener);
    let _ = socket.set_send_buffer_size(conns::SOCKET_BUFFER_BYTES);
    let _ = socket.set_recv_buffer_size(conns::SOCKET_BUFFER_BYTES);
    let mut connections = Connections::new(cap);
    let mut http = hyper::server::conn::http1::Builder::new();
    // Queued writes (not one flattened buffer) keep a large answer's bytes, and the budget
    // share they carry, until they are written.
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_BUFFER_BYTES)
        .writev(true);
    let mut accept_error_logged = false;
    let mut all_busy_logged = false;
    let mut closing_at: Option<Instant> = None;
    loop {
        let close = async {
            match closing_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if connections.make_room() => {
                    let _ = stream.set_nodelay(true);
                    let activity = Activity::new();
                    let io = Watched::new(stream, Arc::clone(&activity));
                    let conn = http.serve_connection(io, service.on(Arc::clone(&activity)));
                    let conn = graceful.watch(conn);
                    let task = tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    connections.push(task, activity);
                }
                Ok(_) => {
                    if !all_busy_logged {
                        tracing::warn!(
                            "all {cap} connections are answering requests: closing a new one"
                        );
                        all_busy_logged = true;
                    }
                }
                Err(e) => {
                    // Out of descriptors: what the cap would close goes now, so the probes
                    // waiting in the backlog get one. Otherwise wait a little rather than spin.
                    let out_of_files = matches!(
                        e.raw_os_error(),
                        Some(nix::libc::EMFILE | nix::libc::ENFILE)
                    );
                    if !accept_error_logged {
                        tracing::warn!("accepting a connection failed: {e} (retrying)");
                        accept_error_logged = true;
                    }
                    if out_of_files && connections.close_idlest() {
                        // The closed connection's descriptor is freed once its task is
                        // dropped, which the runtime does before it polls this loop again.
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            },
            _ = requested.reached(Stop::Requested), if closing_at.is_none() => {
                state.stop();
                closing_at = Some(Instant::now() + delay);
            }
            _ = close => break,
            _ = now.reached(Stop::Now) => {
                state.close_waiters();
                drop(listener);
                let _ = tokio::time::timeout(LAST_WORDS, graceful.shutdown()).await;
                connections.close_all();
                return Ok(());
            }
        }
    }
    state.close_waiters();
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {}
        _ = now.reached(Stop::Now) => {}
    }
    connections.close_all();
    Ok(())
}

fn json(code: StatusCode, body: Bytes) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, HeaderValue::from_static(JSON))],
        body,
    )
        .into_response()
}

fn verdict(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// `/ready` and `/healthz` when they come with a body (the short path takes the others).
async fn probe(Extract(state): Extract<AppState>, uri: Uri) -> Response {
    match probe_answer(&state, uri.path()) {
        Some((code, body)) => json(code, body),
        None => not_found(uri).await,
    }
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

async fn page(Extract(state): Extract<AppState>) -> Response {
    let body = state.latest().page_body();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn history(Extract(state): Extract<AppState>) -> Response {
    json(StatusCode::OK, state.latest().history_body())
}

async fn not_found(uri: Uri) -> Response {
    let body = serde_json::json!({
        "error": "not found",
        "path": uri.path(),
        "endpoints": ["/", "/ready", "/healthz", "/livez", "/status", "/metrics", "/history.json"],
    });
    json(StatusCode::NOT_FOUND, Bytes::from(body.to_string()))
}

async fn method_not_allowed(uri: Uri) -> Response {
    // `/drain` (the admin API) also takes POST and DELETE; every other path is read-only.
    let (allow, body) = if uri.path() == "/drain" {
        (
            "GET, HEAD, POST, DELETE",
            r#"{"error":"method not allowed","allowed":["GET","HEAD","POST","DELETE"]}"#,
        )
    } else {
        (
            "GET, HEAD",
            r#"{"error":"method not allowed","allowed":["GET","HEAD"]}"#,
        )
    };
    let mut response = json(
        StatusCode::METHOD_NOT_ALLOWED,
        Bytes::from_static(body.as_bytes()),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
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
        let render = crate::status::Renderers {
            metrics: Arc::new(|_: &Status| Bytes::from_static(b"# metrics\n")),
            page: Arc::new(|_: &Status| Bytes::from_static(b"<!doctype html>\n")),
        };
        let snap = Snapshot::new(status, Instant::now(), render);
        let (tx, rx) = watch::channel(Arc::new(snap));
        (AppState::new(Readout::new(rx), Duration::from_secs(5)), tx)
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
        let (code, _, response) = call(&state, "PUT", "/drain").await;
        assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET, HEAD, POST, DELETE");
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

    #[tokio::test]
    async fn a_large_answer_takes_its_size_from_the_budget_and_a_spent_budget_gets_a_short_503() {
        let large = || json(StatusCode::OK, Bytes::from(vec![b'x'; 10_000]));
        let budget = Budget::new(15_000);
        let first = held(large(), &budget).await;
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(first.body().size_hint().exact(), Some(10_000));
        let second = held(large(), &budget).await;
        assert_eq!(
            second.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "10,000 more bytes do not fit in what is left"
        );
        assert_eq!(second.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            second.headers()[header::CONNECTION],
            "close",
            "a busy answer closes its connection"
        );
        let small = held(json(StatusCode::OK, Bytes::from_static(b"{}")), &budget).await;
        assert_eq!(small.status(), StatusCode::OK, "small answers always go");
        drop(first);
        assert_eq!(
            held(large(), &budget).await.status(),
            StatusCode::OK,
            "the first answer's bytes gone, its share is back"
        );
    }

    #[test]
    fn the_answer_to_a_pipelined_request_closes_its_connection() {
        let answer = || Response::new(AnswerBody::Whole(None));
        assert_eq!(
            closing_if(true, answer()).headers()[header::CONNECTION],
            "close"
        );
        assert!(
            !closing_if(false, answer())
                .headers()
                .contains_key(header::CONNECTION)
        );
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
