//! The frames between one client and KMS, passed through as bytes.
//!
//! The gate does not re-encode WebSocket: each frame's header is read (tungstenite's own
//! parser) to know where the frame ends, and its bytes go on exactly as they came, the
//! client's masks included, in order, streamed in chunks of [`CHUNK_BYTES`]. So a frame of
//! any size KMS accepts (32 MB) passes while the gate holds at most a chunk of it, and a
//! client's ping, a close handshake or a binary frame is KMS's business as it always was.
//!
//! One kind of frame is read whole before it goes on: a client's text frame of up to
//! [`INSPECT_BYTES`] that is a whole message — every request kurento-client sends. Its text
//! is judged ([`super::rpc::verdict`]); a refused one is answered to the client, as one text
//! frame written between KMS's frames, and never reaches KMS. Larger or fragmented text
//! passes unread: no client sends a pipeline's create that way.
//!
//! A side that does not read holds up only its own connection: a write that makes no
//! progress for [`WRITE_STALL`] ends it.

use std::io::{self, Cursor};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use super::rpc::Verdict;

/// What is read from a socket at a time, and all a connection holds of a frame it streams.
pub const CHUNK_BYTES: usize = 8 * 1024;
/// A client's text frame up to this size is read whole and judged before it goes on.
pub const INSPECT_BYTES: usize = 64 * 1024;
/// A write to one side that makes no progress this long ends the connection.
pub const WRITE_STALL: Duration = Duration::from_secs(60);

/// Why a relayed connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The client closed its connection (after a close handshake or not).
    Client,
    /// KMS closed its connection.
    Kms,
    /// A side sent bytes that are not WebSocket frames, or failed.
    Broken(String),
    /// A side read nothing of what was written to it for [`WRITE_STALL`].
    Stalled(&'static str),
}

/// One side's bytes, read frame by frame.
struct Frames<R> {
    read: R,
    buf: BytesMut,
}

/// A frame's header, with the sizes the relay needs.
struct Head {
    header: FrameHeader,
    header_len: usize,
    payload_len: u64,
}

impl<R: AsyncRead + Unpin> Frames<R> {
    fn new(read: R) -> Self {
        Frames {
            read,
            buf: BytesMut::with_capacity(CHUNK_BYTES),
        }
    }

    /// Reads more bytes; false at the end of the stream.
    async fn fill(&mut self, at_most: usize) -> io::Result<bool> {
        self.buf.reserve(at_most.clamp(1, CHUNK_BYTES));
        Ok(self.read.read_buf(&mut self.buf).await? > 0)
    }

    /// The next frame's header, or `None` where the stream ends between frames.
    async fn head(&mut self) -> io::Result<Option<Head>> {
        loop {
            let mut cursor = Cursor::new(&self.buf[..]);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, payload_len))) => {
                    return Ok(Some(Head {
                        header,
                        header_len: cursor.position() as usize,
                        payload_len,
                    }));
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            if !self.fill(CHUNK_BYTES).await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// Streams the frame whose head was read to `to`, a chunk at a time.
    async fn pass<W: AsyncWrite + Unpin>(&mut self, head: &Head, to: &mut W) -> io::Result<()> {
        let mut left = head.header_len as u64 + head.payload_len;
        loop {
            let n = left.min(self.buf.len() as u64) as usize;
            if n > 0 {
                write(to, &self.buf[..n]).await?;
                self.buf.advance(n);
                left -= n as u64;
            }
            if left == 0 {
                return Ok(());
            }
            if !self.fill(left.min(CHUNK_BYTES as u64) as usize).await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads the whole frame whose head was read; its bytes stay at the front of the buffer.
    async fn whole(&mut self, head: &Head) -> io::Result<usize> {
        let total = head.header_len + head.payload_len as usize;
        while self.buf.len() < total {
            let missing = total - self.buf.len();
            self.buf.reserve(missing);
            if self.read.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(total)
    }

    /// Drops `n` bytes, and gives back what a large frame made the buffer grow to.
    fn consume(&mut self, n: usize) {
        self.buf.advance(n);
        if self.buf.capacity() > 2 * CHUNK_BYTES && self.buf.len() <= CHUNK_BYTES {
            let mut smaller = BytesMut::with_capacity(CHUNK_BYTES);
            smaller.extend_from_slice(&self.buf);
            self.buf = smaller;
        }
    }
}

async fn write<W: AsyncWrite + Unpin>(to: &mut W, bytes: &[u8]) -> io::Result<()> {
    match tokio::time::timeout(WRITE_STALL, to.write_all(bytes)).await {
        Ok(written) => written,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// A text frame from the gate to the client (a server's frames are not masked).
pub fn text_frame(text: &str) -> Vec<u8> {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    let mut frame = Vec::with_capacity(header.len(text.len() as u64) + text.len());
    // Writing into a Vec cannot fail.
    let _ = header.format(text.len() as u64, &mut frame);
    frame.extend_from_slice(text.as_bytes());
    frame
}

fn ended(e: io::Error, side: &'static str) -> Ended {
    match e.kind() {
        io::ErrorKind::TimedOut => Ended::Stalled(side),
        _ => Ended::Broken(format!("{side}: {e}")),
    }
}

/// Relays frames between a client and KMS until either side ends, judging each whole text
/// message of the client by `judge`. `refused` is told of every request the gate answered.
pub async fn relay<CR, CW, KR, KW>(
    client_read: CR,
    client_write: CW,
    kms_read: KR,
    mut kms_write: KW,
    judge: impl Fn(&[u8]) -> Verdict,
    refused: impl Fn(),
) -> Ended
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    KR: AsyncRead + Unpin,
    KW: AsyncWrite + Unpin,
{
    let client_write = Mutex::new(client_write);
    let up = async {
        let mut from = Frames::new(client_read);
        // Inside a fragmented message, whose continuations pass unread.
        let mut fragmented = false;
        loop {
            let head = match from.head().await {
                Ok(Some(head)) => head,
                Ok(None) => return Ended::Client,
                Err(e) => return ended(e, "client"),
            };
            let opcode = head.header.opcode;
            let judged = opcode == OpCode::Data(Data::Text)
                && head.header.is_final
                && !fragmented
                && head.payload_len <= INSPECT_BYTES as u64;
            if let OpCode::Data(_) = opcode {
                fragmented = !head.header.is_final;
            }
            if !judged {
                if let Err(e) = from.pass(&head, &mut kms_write).await {
                    return ended(e, "kms");
                }
                continue;
            }
            let total = match from.whole(&head).await {
                Ok(total) => total,
                Err(e) => return ended(e, "client"),
            };
            let mut text = from.buf[head.header_len..total].to_vec();
            if let Some(mask) = head.header.mask {
                for (i, byte) in text.iter_mut().enumerate() {
                    *byte ^= mask[i % 4];
                }
            }
            let sent = match judge(&text) {
                Verdict::Forward => write(&mut kms_write, &from.buf[..total])
                    .await
                    .map_err(|e| ended(e, "kms")),
                Verdict::Refuse(answer) => {
                    refused();
                    let mut to_client = client_write.lock().await;
                    write(&mut *to_client, &text_frame(&answer))
                        .await
                        .map_err(|e| ended(e, "client"))
                }
            };
            from.consume(total);
            if let Err(end) = sent {
                return end;
            }
        }
    };
    let down = async {
        let mut from = Frames::new(kms_read);
        loop {
            let head = match from.head().await {
                Ok(Some(head)) => head,
                Ok(None) => return Ended::Kms,
                Err(e) => return ended(e, "kms"),
            };
            let mut to_client = client_write.lock().await;
            if let Err(e) = from.pass(&head, &mut *to_client).await {
                return ended(e, "client");
            }
        }
    };
    let end = tokio::select! {
        end = up => end,
        end = down => end,
    };
    // A close on one side closes the other: both are shut down, briefly, then dropped.
    let grace = Duration::from_secs(1);
    let _ = tokio::time::timeout(grace, kms_write.shutdown()).await;
    let _ = tokio::time::timeout(grace, client_write.lock().await.shutdown()).await;
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    /// A client's masked text frame.
    fn masked(text: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let header = FrameHeader {
            opcode: OpCode::Data(Data::Text),
            mask: Some(mask),
            ..FrameHeader::default()
        };
        let mut frame = Vec::new();
        header.format(text.len() as u64, &mut frame).unwrap();
        frame.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    struct Ends {
        client: DuplexStream,
        kms: DuplexStream,
        relay: tokio::task::JoinHandle<Ended>,
    }

    fn start(refuse: bool) -> Ends {
        let (client, gate_client) = duplex(1 << 20);
        let (kms, gate_kms) = duplex(1 << 20);
        let (cr, cw) = tokio::io::split(gate_client);
        let (kr, kw) = tokio::io::split(gate_kms);
        let relay = tokio::spawn(relay(
            cr,
            cw,
            kr,
            kw,
            move |text: &[u8]| {
                if refuse && text.starts_with(b"create") {
                    Verdict::Refuse("no".into())
                } else {
                    Verdict::Forward
                }
            },
            || {},
        ));
        Ends { client, kms, relay }
    }

    async fn read_exactly(from: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        from.read_exact(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn every_frame_passes_byte_for_byte_both_ways() {
        let mut ends = start(true);
        let mut sent = masked(b"hello", [1, 2, 3, 4]);
        sent.extend(masked(&vec![b'x'; 200_000], [9, 8, 7, 6]));
        ends.client.write_all(&sent).await.unwrap();
        assert_eq!(
            read_exactly(&mut ends.kms, sent.len()).await,
            sent,
            "the client's frames reach KMS as they were sent, masks and all, even one over the inspected size"
        );
        let answer = text_frame(&"y".repeat(100_000));
        ends.kms.write_all(&answer).await.unwrap();
        assert_eq!(read_exactly(&mut ends.client, answer.len()).await, answer);
    }

    #[tokio::test]
    async fn a_refused_request_is_answered_to_the_client_and_never_reaches_kms() {
        let mut ends = start(true);
        ends.client
            .write_all(&masked(b"create pipeline", [5, 5, 5, 5]))
            .await
            .unwrap();
        let expected = text_frame("no");
        assert_eq!(
            read_exactly(&mut ends.client, expected.len()).await,
            expected
        );
        let after = masked(b"invoke", [1, 1, 1, 1]);
        ends.client.write_all(&after).await.unwrap();
        assert_eq!(
            read_exactly(&mut ends.kms, after.len()).await,
            after,
            "the first bytes KMS sees are those of the request after the refused one"
        );
    }

    #[tokio::test]
    async fn a_fragmented_message_passes_unread() {
        let mut ends = start(true);
        let first = FrameHeader {
            is_final: false,
            opcode: OpCode::Data(Data::Text),
            mask: Some([0; 4]),
            ..FrameHeader::default()
        };
        let last = FrameHeader {
            is_final: true,
            opcode: OpCode::Data(Data::Continue),
            mask: Some([0; 4]),
            ..FrameHeader::default()
        };
        let mut sent = Vec::new();
        first.format(3, &mut sent).unwrap();
        sent.extend_from_slice(b"cre");
        last.format(3, &mut sent).unwrap();
        sent.extend_from_slice(b"ate");
        ends.client.write_all(&sent).await.unwrap();
        assert_eq!(read_exactly(&mut ends.kms, sent.len()).await, sent);
    }

    #[tokio::test]
    async fn a_close_on_either_side_ends_the_relay() {
        let ends = start(false);
        drop(ends.kms);
        assert_eq!(ends.relay.await.unwrap(), Ended::Kms);
        let mut ends = start(false);
        drop(ends.client);
        assert_eq!(ends.relay.await.unwrap(), Ended::Client);
        let mut rest = Vec::new();
        ends.kms.read_to_end(&mut rest).await.unwrap();
        assert!(
            rest.is_empty(),
            "KMS's side is closed too, with nothing more sent"
        );
    }

    #[tokio::test]
    async fn bytes_that_are_not_frames_end_the_connection() {
        let mut ends = start(false);
        // Opcode 3 is reserved.
        ends.client
            .write_all(&[0x83, 0x80, 0, 0, 0, 0])
            .await
            .unwrap();
        assert!(matches!(ends.relay.await.unwrap(), Ended::Broken(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_does_not_read_ends_only_its_own_connection() {
        let (client, gate_client) = duplex(64);
        let (mut kms, gate_kms) = duplex(1 << 20);
        let (cr, cw) = tokio::io::split(gate_client);
        let (kr, kw) = tokio::io::split(gate_kms);
        let relay = tokio::spawn(relay(cr, cw, kr, kw, |_: &[u8]| Verdict::Forward, || {}));
        kms.write_all(&text_frame(&"z".repeat(10_000)))
            .await
            .unwrap();
        assert_eq!(relay.await.unwrap(), Ended::Stalled("client"));
        drop(client);
    }
}
