//! One HTTP/1.1 request over a fresh connection: the little client memprobe needs to ask
//! another memprobe to drain (`memprobe drain`), to poll Janus's admin API, and to read a
//! server's session count (`--sessions-url`).

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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

/// `POST` `body` to `url` with `headers`; the status and the body. `patience` bounds the
/// whole exchange; the connection alone gets at most 5 s.
pub async fn post(
    url: &url::Url,
    headers: &[(&str, String)],
    body: String,
    patience: Duration,
) -> Result<(u16, Bytes), ClientError> {
    let request = hyper::Request::post(path_of(url));
    exchange(url, request, headers, body, patience, MAX_BODY_BYTES).await
}

/// `GET` `url`; the status and at most `max_body_bytes` of the body (more is an error).
pub async fn get(
    url: &url::Url,
    patience: Duration,
    max_body_bytes: usize,
) -> Result<(u16, Bytes), ClientError> {
    let request = hyper::Request::get(path_of(url));
    exchange(url, request, &[], String::new(), patience, max_body_bytes).await
}

/// The path and query a request line carries; the fragment stays here.
fn path_of(url: &url::Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    }
}

async fn exchange(
    url: &url::Url,
    request: hyper::http::request::Builder,
    headers: &[(&str, String)],
    body: String,
    patience: Duration,
    max_body_bytes: usize,
) -> Result<(u16, Bytes), ClientError> {
    let failed = |e: &dyn std::fmt::Display| ClientError::Failed(e.to_string());
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(80);
    // "[::1]" is how a URL writes an IPv6 host; a socket wants the address alone.
    let address = host.trim_start_matches('[').trim_end_matches(']');
    let connect = TcpStream::connect((address, port));
    let stream = match tokio::time::timeout(patience.min(Duration::from_secs(5)), connect).await {
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
        let mut request = request.header(hyper::header::HOST, host);
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
