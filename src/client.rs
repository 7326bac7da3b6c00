//! One HTTP/1.1 request over a fresh connection: the little client memprobe needs to ask
//! another memprobe to drain (`memprobe drain`), to poll Janus's admin API, and to read a
//! server's session count (`--sessions-url`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens there: the server is not running (yet).
    #[error("connection refused")]
    Refused,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// An answer came, longer than the caller reads.
    #[error("the answer is over {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Failed(String),
}

/// The most an answer is read of, unless the caller says less: answers here are small, and a
/// larger one is cut off rather than read whole.
const MAX_BODY_BYTES: usize = 1 << 20;

/// What a lookup sends back: the host's addresses, or why there are none.
type Looked = Result<Vec<SocketAddr>, String>;
/// One lookup asked of the lookup thread: the host, the port, and where the answer goes.
type Lookup = (String, u16, oneshot::Sender<Looked>);
/// How a lookup is done: the system's resolver, or a test's stand-in.
type Look = Arc<dyn Fn(&str, u16) -> Looked + Send + Sync>;

/// Host name lookups for one caller (a session source, `memprobe drain`): one at a time, on
/// a thread of its own. The system's resolver cannot be cancelled, so a lookup that outlives
/// its deadline (a DNS server that never answers) goes on holding its thread; the next
/// request waits for that same lookup rather than start a second one. However short the
/// poll, a silent DNS holds one thread per caller, never a growing pile (tokio's own lookups
/// would each hold a thread of its blocking pool). An address literal needs no lookup.
pub struct Resolver {
    /// The lookup thread's inbox, once started; `None` before the first lookup.
    requests: Mutex<Option<mpsc::Sender<Lookup>>>,
    /// A lookup that missed its deadline and has not returned yet.
    pending: Mutex<Option<oneshot::Receiver<Looked>>>,
    /// One lookup, blocking: the system's resolver (a test's stand-in).
    look: Look,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::with(|host, port| {
            use std::net::ToSocketAddrs;
            (host, port)
                .to_socket_addrs()
                .map(Iterator::collect)
                .map_err(|e| format!("cannot look the host up: {e}"))
        })
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl Resolver {
    fn with(look: impl Fn(&str, u16) -> Looked + Send + Sync + 'static) -> Self {
        Resolver {
            requests: Mutex::new(None),
            pending: Mutex::new(None),
            look: Arc::new(look),
        }
    }

    /// The addresses of `host`, within `deadline`.
    async fn lookup(
        &self,
        host: &str,
        port: u16,
        deadline: Duration,
    ) -> Result<Vec<SocketAddr>, ClientError> {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let pending = self.pending.lock().ok().and_then(|mut p| p.take());
        let mut reply = match pending {
            Some(reply) => reply,
            None => {
                let (tx, rx) = oneshot::channel();
                self.send((host.to_string(), port, tx))?;
                rx
            }
        };
        match tokio::time::timeout(deadline, &mut reply).await {
            Ok(Ok(Ok(addresses))) => Ok(addresses),
            Ok(Ok(Err(e))) => Err(ClientError::Failed(e)),
            Ok(Err(_)) => Err(ClientError::Failed("the lookup thread ended".into())),
            Err(_) => {
                if let Ok(mut p) = self.pending.lock() {
                    *p = Some(reply);
                }
                Err(ClientError::Timeout(deadline))
            }
        }
    }

    fn send(&self, request: Lookup) -> Result<(), ClientError> {
        let failed = || ClientError::Failed("no thread to look the host up on".into());
        let mut requests = self.requests.lock().map_err(|_| failed())?;
        if requests.is_none() {
            let (tx, inbox) = mpsc::channel::<Lookup>();
            let look = Arc::clone(&self.look);
            std::thread::Builder::new()
                .name("memprobe-lookup".into())
                .spawn(move || {
                    for (host, port, reply) in inbox {
                        let _ = reply.send(look(&host, port));
                    }
                })
                .map_err(|_| failed())?;
            *requests = Some(tx);
        }
        requests
            .as_ref()
            .ok_or_else(failed)?
            .send(request)
            .map_err(|_| failed())
    }
}

/// `POST` `body` to `url` with `headers`; the status and the body. `patience` bounds the
/// whole exchange; the connection alone gets at most 5 s.
pub async fn post(
    resolver: &Resolver,
    url: &url::Url,
    headers: &[(&str, String)],
    body: String,
    patience: Duration,
) -> Result<(u16, Bytes), ClientError> {
    let request = hyper::Request::post(path_of(url));
    let body = (body, MAX_BODY_BYTES);
    exchange(resolver, url, request, headers, body, patience).await
}

/// `GET` `url`; the status and at most `max_body_bytes` of the body (more is an error).
pub async fn get(
    resolver: &Resolver,
    url: &url::Url,
    patience: Duration,
    max_body_bytes: usize,
) -> Result<(u16, Bytes), ClientError> {
    let request = hyper::Request::get(path_of(url));
    let body = (String::new(), max_body_bytes);
    exchange(resolver, url, request, &[], body, patience).await
}

/// The path and query a request line carries; the fragment stays here.
fn path_of(url: &url::Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    }
}

/// The `Host` header a request to `url` carries: the host, and the port when the URL gives
/// one other than 80 (RFC 9110, section 7.2).
fn host_header(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// The request, its body and the most of the answer's body read.
async fn exchange(
    resolver: &Resolver,
    url: &url::Url,
    request: hyper::http::request::Builder,
    headers: &[(&str, String)],
    (body, max_body_bytes): (String, usize),
    patience: Duration,
) -> Result<(u16, Bytes), ClientError> {
    let failed = |e: &dyn std::fmt::Display| ClientError::Failed(e.to_string());
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(80);
    // "[::1]" is how a URL writes an IPv6 host; a socket wants the address alone.
    let address = host.trim_start_matches('[').trim_end_matches(']');
    let connecting = patience.min(Duration::from_secs(5));
    let started = tokio::time::Instant::now();
    let addresses = resolver
        .lookup(address, port, connecting)
        .await
        .map_err(|e| match e {
            ClientError::Timeout(_) => ClientError::Timeout(patience),
            e => e,
        })?;
    let left = connecting.saturating_sub(started.elapsed());
    let connect = TcpStream::connect(&addresses[..]);
    let stream = match tokio::time::timeout(left, connect).await {
        Err(_) => return Err(ClientError::Timeout(patience)),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(ClientError::Refused);
        }
        Ok(Err(e)) => return Err(failed(&e)),
        Ok(Ok(stream)) => stream,
    };
    let exchange = async {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(&e))?;
        tokio::spawn(connection);
        let mut request = request.header(hyper::header::HOST, host_header(url));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(Body::from(body)).map_err(|e| failed(&e))?;
        let response = sender.send_request(request).await.map_err(|e| failed(&e))?;
        let code = response.status().as_u16();
        let limited = http_body_util::Limited::new(response.into_body(), max_body_bytes);
        let body = limited
            .collect()
            .await
            .map_err(
                |e| match e.downcast_ref::<http_body_util::LengthLimitError>() {
                    Some(_) => ClientError::TooLarge(max_body_bytes),
                    None => ClientError::Failed(e.to_string()),
                },
            )?
            .to_bytes();
        Ok((code, body))
    };
    tokio::time::timeout(patience, exchange)
        .await
        .map_err(|_| ClientError::Timeout(patience))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_lookup_that_never_answers_holds_one_thread_however_often_it_is_asked() {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Mutex::new(held);
        let calls = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&calls);
        let resolver = Resolver::with(move |_, port| {
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                // A DNS server that never answers, until the test lets it go.
                let _ = held.lock().map(|h| h.recv());
            }
            Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
        });
        for _ in 0..200 {
            let looked = resolver.lookup("sfu.cluster.local", 80, Duration::from_millis(10));
            assert!(matches!(looked.await, Err(ClientError::Timeout(_))));
        }
        assert!(
            calls.load(Ordering::SeqCst) <= 1,
            "200 polls 10 ms apart wait on the one lookup in flight, never start another"
        );
        drop(release);
        tokio::time::resume();
        let found = resolver.lookup("sfu.cluster.local", 80, Duration::from_secs(10));
        assert_eq!(
            found.await.unwrap(),
            vec![SocketAddr::from(([127, 0, 0, 1], 80))],
            "the lookup in flight is waited on again, and its answer taken"
        );
        let literal = resolver.lookup("10.0.0.7", 3000, Duration::ZERO).await;
        assert_eq!(
            literal.unwrap(),
            vec![SocketAddr::from(([10, 0, 0, 7], 3000))]
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "an address needs no lookup"
        );
    }

    #[test]
    fn the_host_header_keeps_the_port() {
        let header = |u: &str| host_header(&url::Url::parse(u).unwrap());
        assert_eq!(header("http://sfu:3000/stats"), "sfu:3000");
        assert_eq!(header("http://[::1]:7088/admin"), "[::1]:7088");
        assert_eq!(header("http://sfu/stats"), "sfu", "80 goes without saying");
        assert_eq!(header("http://sfu:80/stats"), "sfu");
    }
}
