//! The KMS gate's cost (`--kms-gate`): a request's round trip through memprobe's relay against
//! the same request straight to the server, and the memory each open connection holds.
//!
//! The server is a stand-in that answers every JSON-RPC request at once (`pong`, with its id),
//! so what is measured is the relay and nothing of KMS. One client at a time, each request
//! sent when the last was answered, in interleaved rounds (straight, then through the gate),
//! on loopback. memprobe is the binary `MEMPROBE_BIN` names (`benches/run` gives the static
//! one the image ships), watching this process.
//!
//!     MEMPROBE_BIN=target/x86_64-unknown-linux-musl/release/memprobe cargo bench --bench kms_gate

#![allow(clippy::disallowed_types)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const ROUNDS: usize = 5;
const REQUESTS_PER_ROUND: usize = 2000;
const CONNECTIONS: usize = 100;
/// The goal: what the gate may add to a request's round trip at p99 on loopback.
const GOAL_ADDED_P99_US: f64 = 100.0;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn serve_pongs(listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            while let Some(Ok(message)) = ws.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let id = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("id").cloned())
                    .unwrap_or(serde_json::Value::Null);
                let reply =
                    serde_json::json!({"id": id, "jsonrpc": "2.0", "result": {"value": "pong"}});
                if ws.send(Message::text(reply.to_string())).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn connect(url: &str) -> Socket {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("a WebSocket");
    if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_ref() {
        let _ = tcp.set_nodelay(true);
    }
    ws
}

/// One request and its answer, timed.
async fn round_trip(ws: &mut Socket, id: u64) -> Duration {
    let request = format!(
        r#"{{"id":{id},"method":"invoke","params":{{"object":"p_kurento.MediaPipeline","operation":"getName","sessionId":"s"}},"jsonrpc":"2.0"}}"#
    );
    let sent = Instant::now();
    ws.send(Message::text(request)).await.expect("sent");
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(_))) => return sent.elapsed(),
            Some(Ok(_)) => continue,
            other => panic!("no answer: {other:?}"),
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at].as_secs_f64() * 1e6
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let bin = std::env::var("MEMPROBE_BIN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/memprobe").to_string()
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let server_addr = server.local_addr().expect("an address");
        tokio::spawn(serve_pongs(server));
        let gate = format!("127.0.0.1:{}", free_port());
        let listen = format!("127.0.0.1:{}", free_port());
        let direct_url = format!("ws://{server_addr}/kurento");
        let gate_url = format!("ws://{gate}/kurento");
        let memprobe = Killed(
            Command::new(&bin)
                .args([
                    "--pid",
                    &std::process::id().to_string(),
                    "--kms-url",
                    &direct_url,
                    "--kms-gate",
                    &gate,
                    "--listen",
                    &listen,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("start {bin}: {e}")),
        );
        let pid = memprobe.0.id();
        let up = Instant::now();
        while TcpStream::connect(&gate).await.is_err() {
            assert!(up.elapsed() < Duration::from_secs(30), "the gate never listened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let mut direct = connect(&direct_url).await;
        let mut gated = connect(&gate_url).await;
        // Warm both paths up.
        for id in 0..200 {
            round_trip(&mut direct, id).await;
            round_trip(&mut gated, id).await;
        }
        let (mut all_direct, mut all_gated) = (Vec::new(), Vec::new());
        let mut added_p99_per_round = Vec::new();
        let mut id = 1000;
        for _ in 0..ROUNDS {
            let (mut d, mut g) = (Vec::new(), Vec::new());
            for _ in 0..REQUESTS_PER_ROUND {
                id += 1;
                d.push(round_trip(&mut direct, id).await);
                g.push(round_trip(&mut gated, id).await);
            }
            d.sort();
            g.sort();
            added_p99_per_round.push(percentile(&g, 0.99) - percentile(&d, 0.99));
            all_direct.extend(d);
            all_gated.extend(g);
        }
        all_direct.sort();
        all_gated.sort();
        added_p99_per_round.sort_by(f64::total_cmp);

        let before = rss_kib(pid);
        let mut open = Vec::new();
        for n in 0..CONNECTIONS {
            let mut ws = connect(&gate_url).await;
            round_trip(&mut ws, n as u64).await;
            open.push(ws);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib(pid);
        drop(open);
        let per_connection = after.saturating_sub(before) as f64 / CONNECTIONS as f64;

        let (d50, d99) = (percentile(&all_direct, 0.5), percentile(&all_direct, 0.99));
        let (g50, g99) = (percentile(&all_gated, 0.5), percentile(&all_gated, 0.99));
        let spread = |v: &[f64]| format!("{:.0}–{:.0}", v[0], v[v.len() - 1]);
        println!("### The KMS gate: a request's round trip, and memory per connection");
        println!();
        println!(
            "One client, {ROUNDS} interleaved rounds of {REQUESTS_PER_ROUND} requests each way \
             on loopback, to a server that answers at once (`cargo bench --bench kms_gate`)."
        );
        println!();
        println!("| path | p50 | p99 |");
        println!("|---|---|---|");
        println!("| straight to the server | {d50:.0} µs | {d99:.0} µs |");
        println!("| through memprobe's gate | {g50:.0} µs | {g99:.0} µs |");
        println!(
            "| added by the gate | {:.0} µs | {:.0} µs (per round: {} µs; goal ≤ {GOAL_ADDED_P99_US:.0} µs) |",
            g50 - d50,
            g99 - d99,
            spread(&added_p99_per_round)
        );
        println!();
        println!(
            "memprobe's resident memory with {CONNECTIONS} connections open through the gate: \
             {before} KiB before, {after} KiB with them, **{per_connection:.1} KiB per connection**."
        );
    });
}
