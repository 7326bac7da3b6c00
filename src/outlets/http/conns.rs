//! The probe port's connections: what each one is doing, which one the cap closes, how long a
//! write may go nowhere, and what large answers may hold at once.
//!
//! The cap is decided by activity, not age. A connection with a request in a handler (a
//! drain waiter above all) is never closed to make room; one waiting for a request (idle
//! keep-alive, a half-sent head) or stuck writing an answer its client does not read is,
//! the one idle longest first. The probe port is unauthenticated, so an attacker can always
//! open connections: what it opens is what gets closed. When every connection is answering
//! (only token holders can keep one answering), the newcomer is closed instead.
//!
//! A client that does not read cannot grow memprobe: a write that makes no progress for
//! [`SEND_TIMEOUT`] closes its connection; hyper queues at most one answer per connection
//! (a pipelined request waits, unanswered, until the answer before it is written), and the
//! answer to a pipelined request closes its connection, so no more are read; and an
//! answer larger than [`SMALL_ANSWER_BYTES`] takes its size from one shared
//! [`LARGE_ANSWERS_BYTES`] budget for as long as its bytes wait to be written — when the
//! budget is spent, the request gets a short 503 instead.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// A write that makes no progress this long closes its connection: its client reads nothing.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Answers up to this size are always sent: one per connection is bounded by the cap.
pub const SMALL_ANSWER_BYTES: usize = 8192;
/// What larger answers (the page, `/history.json`, `/status`, `/metrics`) may hold at once,
/// over every connection, until their bytes are written.
pub const LARGE_ANSWERS_BYTES: usize = 4 << 20;
/// Descriptors kept for everything but the probe port: /proc files, KMS, Janus, actions.
const RESERVED_FDS: u64 = 32;
/// Fewest connections kept open, however low the descriptor limit.
const MIN_CONNECTIONS: usize = 8;
/// The kernel's buffers per connection (it doubles what is asked): a stalled reader holds
/// at most this much of memprobe's memory in the kernel, where cgroup v2 charges it.
pub const SOCKET_BUFFER_BYTES: usize = 32 << 10;

/// Orders "since when" across connections: a smaller ticket is longer ago. A counter, not a
/// clock, so nothing here reads the time.
fn ticket() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What one connection is doing, as its service and its socket see it.
#[derive(Debug)]
pub struct Activity {
    /// Requests in a handler, not yet answered: a drain waiter sits here.
    answering: AtomicU32,
    /// Since when it has waited for a request (from accept, or once its last answer was
    /// written); 0 while a request is on.
    idle_since: AtomicU64,
    /// Since when a write has gone nowhere; 0 while writes progress.
    stuck_since: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            answering: AtomicU32::new(0),
            idle_since: AtomicU64::new(ticket()),
            stuck_since: AtomicU64::new(0),
        })
    }

    /// A request head arrived and was handed to the service: `true` when it came before the
    /// answer ahead of it was written (pipelined).
    pub fn request_started(&self) -> bool {
        self.idle_since.swap(0, Ordering::Relaxed) == 0
    }

    /// A handler runs until the guard drops. Taken when the handler is first polled, not
    /// when hyper reads the request: hyper reads one pipelined request ahead and leaves it
    /// unpolled while the answer before it is stuck, and that one must not make its
    /// connection look busy.
    pub fn answering(self: &Arc<Self>) -> Answering {
        self.answering.fetch_add(1, Ordering::Relaxed);
        Answering(Arc::clone(self))
    }

    fn wrote(&self) {
        self.stuck_since.store(0, Ordering::Relaxed);
    }

    fn write_blocked(&self) {
        let _ =
            self.stuck_since
                .compare_exchange(0, ticket(), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Everything queued was written: unless a handler runs, it now waits for a request.
    fn flushed(&self) {
        if self.answering.load(Ordering::Relaxed) == 0 {
            let _ =
                self.idle_since
                    .compare_exchange(0, ticket(), Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Since when the cap may close it (idle, half-sent or stuck), or `None` while it is
    /// answering a request.
    pub fn closable_since(&self) -> Option<u64> {
        if self.answering.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let idle = self.idle_since.load(Ordering::Relaxed);
        let stuck = self.stuck_since.load(Ordering::Relaxed);
        [idle, stuck].into_iter().filter(|t| *t != 0).min()
    }
}

/// A handler running on a connection; see [`Activity::answering`].
pub struct Answering(Arc<Activity>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.answering.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Which connection the cap closes: the one closable longest (the smallest ticket), never one
/// that is answering (`None`).
pub fn to_close(closable_since: impl Iterator<Item = Option<u64>>) -> Option<usize> {
    closable_since
        .enumerate()
        .filter_map(|(i, since)| since.map(|s| (s, i)))
        .min()
        .map(|(_, i)| i)
}

/// The connection cap under a descriptor limit: [`super::MAX_CONNECTIONS`], or fewer when the
/// limit would not leave memprobe the descriptors it needs besides.
pub fn cap_for(open_files_limit: u64) -> usize {
    let spare =
        usize::try_from(open_files_limit.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    spare.clamp(MIN_CONNECTIONS, super::MAX_CONNECTIONS)
}

/// The soft RLIMIT_NOFILE, if it can be read.
pub fn open_files_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

struct Open {
    task: JoinHandle<()>,
    activity: Arc<Activity>,
}

/// The connections open, with what each is doing.
pub struct Connections {
    open: Vec<Open>,
    cap: usize,
}

impl Connections {
    pub fn new(cap: usize) -> Self {
        Connections {
            open: Vec::with_capacity(cap),
            cap,
        }
    }

    /// Makes room for one more: forgets the finished, and at the cap closes the connection
    /// idle longest. `false` when every one is answering: the newcomer must go.
    pub fn make_room(&mut self) -> bool {
        self.open.retain(|c| !c.task.is_finished());
        while self.open.len() >= self.cap {
            if !self.close_idlest() {
                return false;
            }
        }
        true
    }

    /// Closes the connection idle longest; `false` when none may be closed.
    pub fn close_idlest(&mut self) -> bool {
        let ranks = self.open.iter().map(|c| c.activity.closable_since());
        match to_close(ranks) {
            Some(i) => {
                self.open.swap_remove(i).task.abort();
                true
            }
            None => false,
        }
    }

    pub fn push(&mut self, task: JoinHandle<()>, activity: Arc<Activity>) {
        self.open.push(Open { task, activity });
    }

    pub fn close_all(&mut self) {
        for c in self.open.drain(..) {
            c.task.abort();
        }
    }
}

/// A connection's socket, watched: each write's progress tells [`Activity`], and a write that
/// goes nowhere for [`SEND_TIMEOUT`] fails, which ends the connection.
pub struct Watched {
    io: TokioIo<TcpStream>,
    activity: Arc<Activity>,
    stuck: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Watched {
    pub fn new(stream: TcpStream, activity: Arc<Activity>) -> Self {
        Watched {
            io: TokioIo::new(stream),
            activity,
            stuck: None,
        }
    }

    fn progress(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Pending => {
                self.activity.write_blocked();
                let stuck = self
                    .stuck
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(SEND_TIMEOUT)));
                match stuck.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client read nothing for the send timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                self.stuck = None;
                self.activity.wrote();
                ready
            }
        }
    }
}

impl hyper::rt::Read for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.progress(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.progress(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    /// hyper flushes the socket once its buffer is written out: the answer is gone.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            self.activity.flushed();
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The bytes large answers may hold at once, over every connection.
#[derive(Debug)]
pub struct Budget {
    left: AtomicUsize,
}

impl Budget {
    pub fn new(bytes: usize) -> Arc<Self> {
        Arc::new(Budget {
            left: AtomicUsize::new(bytes),
        })
    }

    /// `bytes` taken from the budget until the reservation drops, or `None` when it is spent.
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(bytes)
            })
            .ok()
            .map(|_| Reservation {
                budget: Arc::clone(self),
                bytes,
            })
    }

    #[cfg(test)]
    pub fn left(&self) -> usize {
        self.left.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.left.fetch_add(self.bytes, Ordering::AcqRel);
    }
}

/// An answer's bytes as hyper queues them. A large answer carries its reservation inside, so
/// it is given back exactly when hyper has written the bytes and lets them go (or when the
/// connection ends with them unwritten), not when the handler returns.
#[derive(Debug)]
pub struct Chunk {
    bytes: Bytes,
    _held: Option<Reservation>,
}

impl Chunk {
    pub fn plain(bytes: Bytes) -> Self {
        Chunk { bytes, _held: None }
    }

    pub fn held(bytes: Bytes, reservation: Reservation) -> Self {
        Chunk {
            bytes,
            _held: Some(reservation),
        }
    }
}

impl Buf for Chunk {
    fn remaining(&self) -> usize {
        self.bytes.remaining()
    }

    fn chunk(&self) -> &[u8] {
        self.bytes.chunk()
    }

    fn advance(&mut self, cnt: usize) {
        self.bytes.advance(cnt);
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [io::IoSlice<'a>]) -> usize {
        self.bytes.chunks_vectored(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_closes_the_connection_idle_longest_and_never_one_answering() {
        assert_eq!(
            to_close([Some(7), None, Some(3), Some(9)].into_iter()),
            Some(2),
            "the one idle since the smallest ticket goes first"
        );
        assert_eq!(
            to_close([None, None].into_iter()),
            None,
            "connections answering requests (drain waiters) are never closed"
        );
        assert_eq!(to_close(std::iter::empty()), None);
    }

    #[test]
    fn a_connection_is_closable_while_idle_or_stuck_and_never_while_answering() {
        let conn = Activity::new();
        let opened = conn
            .closable_since()
            .expect("a fresh connection waits for a request");
        assert!(
            !conn.request_started(),
            "the first request is not pipelined"
        );
        let handler = conn.answering();
        conn.write_blocked();
        conn.flushed();
        assert_eq!(conn.closable_since(), None, "a waiter is never closable");
        drop(handler);
        let stuck = conn
            .closable_since()
            .expect("an answer its client does not read");
        assert!(stuck > opened, "stuck since after it opened");
        conn.wrote();
        assert_eq!(conn.closable_since(), None, "writing an answer that moves");
        conn.flushed();
        assert!(conn.closable_since().is_some(), "written: idle again");
        assert!(
            !conn.request_started(),
            "a request after the answer was written is not pipelined"
        );
    }

    #[test]
    fn a_pipelined_request_left_unpolled_does_not_make_a_stuck_connection_busy() {
        let conn = Activity::new();
        conn.request_started();
        conn.write_blocked();
        // hyper read the next request but never polls its handler.
        assert!(
            conn.request_started(),
            "sent before the answer ahead of it was written"
        );
        assert!(conn.closable_since().is_some());
    }

    #[test]
    fn the_cap_leaves_room_for_memprobes_own_descriptors() {
        assert_eq!(cap_for(1024), 256);
        assert_eq!(cap_for(100), 68);
        assert_eq!(cap_for(20), 8, "never fewer than a handful");
        assert_eq!(cap_for(u64::MAX), 256);
    }

    #[test]
    fn the_budget_is_given_back_when_the_reservation_drops() {
        let budget = Budget::new(100);
        let first = budget.reserve(60).expect("within the budget");
        assert!(budget.reserve(60).is_none(), "spent: no more");
        let chunk = Chunk::held(Bytes::from_static(b"answer"), first);
        assert_eq!(budget.left(), 40);
        drop(chunk);
        assert_eq!(budget.left(), 100, "the written chunk gives its share back");
    }
}
