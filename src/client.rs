//! One HTTP/1.1 request over a fresh connection: the little client memprobe needs to ask
//! another memprobe to drain (`memprobe drain`) and to poll Janus's admin API.

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
    #[error("{0}")]
    Failed(String),
}

/// `POST` `body` to `url` with `headers`; the status and the body. `patience` bounds the
/// whole exchange; the connection alone gets at most 5 s.
pub async fn post(
    url: &url::Url,
    headers: &[(&str, String)],
    body: String,
    patience: Duration,
) -> Result<(u16, Bytes), ClientError> {
    let failed = |e: &dyn std::fmt::Display| ClientError::Failed(e.to_string());
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(80);
    let connect = TcpStream::connect((host, port));
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
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let mut request = hyper::Request::post(path).header(hyper::header::HOST, host);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(Body::from(body)).map_err(|e| failed(&e))?;
        let response = sender.send_request(request).await.map_err(|e| failed(&e))?;
        let code = response.status().as_u16();
        // Answers here are small; a larger one is cut off rather than read whole.
        let limited = http_body_util::Limited::new(response.into_body(), 1 << 20);
        let body = limited
            .collect()
            .await
            .map_err(|e| ClientError::Failed(e.to_string()))?
            .to_bytes();
        Ok((code, body))
    };
    tokio::time::timeout(patience, exchange)
        .await
        .map_err(|_| ClientError::Timeout(patience))?
}
