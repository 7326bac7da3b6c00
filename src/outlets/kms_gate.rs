//! The KMS gate (`--kms-gate ADDR`): memprobe as the switch KMS lacks.
//!
//! An application server holds one long-lived JSON-RPC WebSocket per KMS (kurento-client)
//! and creates every media pipeline over it. `/ready` and HAProxy steer only new
//! connections, so a drain alone never stops pipelines from landing on a draining KMS. With
//! the gate on, clients connect to memprobe instead, and each of their WebSockets is relayed
//! to KMS (`--kms-url`, moved to a loopback port) frame for frame ([`relay`]). While the
//! instance takes no new sessions — draining (memory, an operator's drain, a quiet moment),
//! stalled, recycle, or memprobe stopping — a `create` of a `MediaPipeline` is answered by
//! the gate itself with a JSON-RPC error ([`rpc`]): the client's exception says this KMS is
//! draining and to use another. Everything on the pipelines that exist passes, so the calls
//! in progress go on to their end.
//!
//! Each client's WebSocket is shaken hands with by the gate, which then opens its own to KMS
//! before answering 101: a KMS that cannot be reached is a 502 the client sees at once, not
//! an open socket that never answers. What a plain request gets is what KMS answers it (426
//! without an upgrade, 500 for an upgrade with no version: Kurento's image health check
//! expects that 500). At most [`MAX_CONNECTIONS`] are relayed at once; each holds at most a
//! chunk of a frame per direction and one inspected request, so the gate's memory is
//! bounded whatever its clients do, and a client or a KMS that stalls holds up only its
//! own connection: the probes are served by tasks of their own.

pub mod relay;
pub mod rpc;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::Readout;
use crate::policy::State;
use crate::secret::SecretUrl;
use crate::sources::kms::wire::Wire;

/// Connections relayed at once; one more is answered 503.
pub const MAX_CONNECTIONS: usize = 128;
/// A client's handshake must arrive within this, and fit in [`MAX_HEAD_BYTES`].
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The gate's settings, as `config` validated them.
#[derive(Clone, Debug, PartialEq)]
pub struct GateSettings {
    pub listen: SocketAddr,
    /// KMS itself (`--kms-url`): where each client's WebSocket is relayed.
    pub kms: SecretUrl,
    /// How long opening KMS's side may take (`--kms-timeout`).
    pub timeout: Duration,
}

/// Whether a WebSocket URL reaches the gate listening on `listen` itself: the same port on
/// this host (a loopback or unspecified address, `localhost`, or the gate's own address).
pub fn points_at(listen: SocketAddr, url: &str) -> bool {
    let Ok(url) = url::Url::parse(url) else {
        return false;
    };
    if url.port_or_known_default() != Some(listen.port()) {
        return false;
    }
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => {
            let ip = std::net::IpAddr::V4(ip);
            ip.is_loopback() || ip.is_unspecified() || ip == listen.ip()
        }
        Some(url::Host::Ipv6(ip)) => {
            let ip = std::net::IpAddr::V6(ip);
            ip.is_loopback() || ip.is_unspecified() || ip == listen.ip()
        }
        None => false,
    }
}

/// Why the instance takes no new pipelines now, or `None` while it takes them.
pub fn closed_because(readout: &Readout) -> Option<String> {
    if readout.stopping() {
        return Some("memprobe is stopping".to_string());
    }
    let snapshot = readout.latest();
    let status = &snapshot.status;
    match status.state {
        State::Draining | State::Stalled | State::Recycle => {
            Some(format!("{}: {}", status.state.as_str(), status.reason))
        }
        // A KMS that is starting, or found again, takes pipelines: memprobe restarting must
        // never refuse a call.
        State::Starting | State::Healthy | State::Elevated | State::Lost => None,
    }
}

/// Serves the gate on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    readout: Readout,
    settings: GateSettings,
    wire: Arc<Wire>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let settings = Arc::new(settings);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors or a connection reset before it was taken: try again soon.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            wire.rejected();
            // One non-blocking write: a client over the cap is never waited on.
            let _ = stream.try_write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            continue;
        };
        // Held by the connection and, once upgraded, by its relay: the cap counts both.
        let permit = Arc::new(permit);
        let (readout, settings, wire) = (readout.clone(), Arc::clone(&settings), Arc::clone(&wire));
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (readout, settings, wire, permit) = (
                    readout.clone(),
                    Arc::clone(&settings),
                    Arc::clone(&wire),
                    Arc::clone(&permit),
                );
                async move {
                    Ok::<_, Infallible>(handshake(request, readout, settings, wire, permit).await)
                }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES);
            let _ = http
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

/// An answer that is not a WebSocket, after which the connection closes: a client that
/// opens no WebSocket holds none of the gate's connections.
fn plain(status: StatusCode, text: &str) -> Response<http_body_util::Full<Bytes>> {
    let mut response = Response::new(http_body_util::Full::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// A client's request: a WebSocket opened on both sides, or the answer KMS would give.
async fn handshake(
    mut request: Request<Incoming>,
    readout: Readout,
    settings: Arc<GateSettings>,
    wire: Arc<Wire>,
    permit: Arc<tokio::sync::OwnedSemaphorePermit>,
) -> Response<http_body_util::Full<Bytes>> {
    let headers = request.headers();
    if !has_token(headers, header::UPGRADE, "websocket") {
        return plain(
            StatusCode::UPGRADE_REQUIRED,
            "a WebSocket to KMS is served here",
        );
    }
    let Some(version) = headers.get(header::SEC_WEBSOCKET_VERSION) else {
        // What KMS answers, and what Kurento's image health check expects of it.
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no Sec-WebSocket-Version",
        );
    };
    if version.as_bytes() != b"13" {
        let mut response = plain(StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only");
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return response;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return plain(StatusCode::BAD_REQUEST, "no Sec-WebSocket-Key");
    };
    let accept = derive_accept_key(key.as_bytes());
    let kms = match tokio::time::timeout(settings.timeout, open_kms(&settings.kms)).await {
        Ok(Ok(kms)) => kms,
        Ok(Err(e)) => {
            wire.kms_unreachable();
            tracing::warn!("kms gate: cannot reach KMS at {}: {e}", settings.kms);
            return plain(
                StatusCode::BAD_GATEWAY,
                &format!("KMS cannot be reached: {e}"),
            );
        }
        Err(_) => {
            wire.kms_unreachable();
            tracing::warn!(
                "kms gate: KMS at {} did not open a WebSocket within {}",
                settings.kms,
                humantime::format_duration(settings.timeout)
            );
            return plain(StatusCode::GATEWAY_TIMEOUT, "KMS did not answer in time");
        }
    };
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(client) = upgrade.await else {
            return;
        };
        wire.opened();
        let (cr, cw) = tokio::io::split(TokioIo::new(client));
        let (kr, kw) = tokio::io::split(TokioIo::new(kms));
        let end = relay::relay(
            cr,
            cw,
            kr,
            kw,
            |text| {
                for pipeline in rpc::released_pipelines(text) {
                    wire.released(&pipeline);
                }
                rpc::verdict(text, closed_because(&readout).as_deref())
            },
            || wire.refused(),
        )
        .await;
        wire.closed();
        drop(permit);
        tracing::debug!("kms gate: a connection ended ({end:?})");
    });
    let mut response = Response::new(http_body_util::Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// Opens a WebSocket to KMS, as a client of its own: the bytes after KMS's 101 are frames.
async fn open_kms(url: &SecretUrl) -> Result<hyper::upgrade::Upgraded, String> {
    let parsed = url::Url::parse(url.expose()).map_err(|e| e.to_string())?;
    let host = parsed.host_str().unwrap_or_default().to_string();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn.with_upgrades());
    let path = match parsed.query() {
        Some(query) => format!("{}?{query}", parsed.path()),
        None => parsed.path().to_string(),
    };
    let authority = match parsed.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    };
    let request = Request::get(path)
        .header(header::HOST, authority)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_KEY, generate_key())
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(format!(
            "KMS answered {} instead of a WebSocket",
            response.status()
        ));
    }
    hyper::upgrade::on(response)
        .await
        .map_err(|e| e.to_string())
}
