//! The operator: drains asked for by a person or by Kubernetes (`POST /drain` on the probe
//! port, `memprobe drain`, a pod's preStop), as a source like any other.
//!
//! The HTTP outlet holds the [`Requests`] side and sends each request with a reply channel;
//! the monitor's thread receives them between steps — a request wakes it at once, so `/ready`
//! turns 503 within the request, not an interval later — hands them to the policy, publishes,
//! and replies with the outcome.

use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use serde::Serialize;

use crate::policy::{DrainRefused, State};

/// What an operator asks.
#[derive(Debug)]
pub enum Request {
    Drain,
    CancelDrain,
}

/// What reaches the monitor through this channel.
#[derive(Debug)]
pub enum Message {
    Ask(Asked),
    /// A recycle action ran (`--on-recycle`): recorded for `/status` and `/metrics`.
    RecycleActionRan(ActionRecord),
    /// A drained answer is about to rest on a zero count: the count from a read that begins
    /// now, published, and sent back.
    FreshCount(oneshot::Sender<Option<u32>>),
}

/// How one run of the recycle action (`--on-recycle`) went, as the outlet that ran it reports.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ActionRecord {
    pub at: String,
    pub action: String,
    /// `ok`, `failed` or `timeout`.
    pub result: &'static str,
    /// What happened: the signal sent, or the command's exit status and first lines.
    pub detail: String,
    /// 1 for the first run in this incarnation, 2 for the first retry, …
    pub attempt: u32,
}

/// One request, who made it, and where the outcome goes (the state after it).
#[derive(Debug)]
pub struct Asked {
    pub request: Request,
    pub who: String,
    pub reply: oneshot::Sender<Result<State, DrainRefused>>,
}

/// The sending side, for the outlet that takes requests.
#[derive(Clone)]
pub struct Requests(mpsc::Sender<Message>);

impl Requests {
    /// Sends a request and waits for its outcome; `None` when the monitor has stopped.
    pub async fn ask(&self, request: Request, who: &str) -> Option<Result<State, DrainRefused>> {
        let (reply, outcome) = oneshot::channel();
        let asked = Asked {
            request,
            who: who.to_string(),
            reply,
        };
        self.0.send(Message::Ask(asked)).ok()?;
        outcome.await.ok()
    }

    /// The session count from a read that begins now (see [`Message::FreshCount`]); `None`
    /// when it is unknown or the monitor has stopped.
    pub async fn fresh_count(&self) -> Option<u32> {
        let (reply, count) = oneshot::channel();
        self.0.send(Message::FreshCount(reply)).ok()?;
        count.await.ok().flatten()
    }

    /// Reports a recycle action's run.
    pub fn report(&self, record: ActionRecord) {
        let _ = self.0.send(Message::RecycleActionRan(record));
    }
}

/// The receiving side, for the monitor's thread.
pub struct Inbox(mpsc::Receiver<Message>);

impl Inbox {
    /// Waits up to `timeout` for a request. Once every sender is gone it only sleeps.
    pub fn wait(&self, timeout: Duration) -> Option<Message> {
        match self.0.recv_timeout(timeout) {
            Ok(asked) => Some(asked),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(timeout);
                None
            }
        }
    }
}

/// A new pair of ends.
pub fn channel() -> (Requests, Inbox) {
    let (tx, rx) = mpsc::channel();
    (Requests(tx), Inbox(rx))
}
