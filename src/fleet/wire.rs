//! What memprobe and `memprobe-fleet` (the process that holds the Kubernetes client, see
//! [`super::api`]) say to each other over the child's stdin and stdout: one JSON object a
//! line, every line bounded on the side that reads it.
//!
//! memprobe writes a [`Hello`], then [`Request`]s; the child answers each with a [`Reply`]
//! carrying the same id. Lease requests and Events are two lanes in the child: an Event the
//! API server is slow to take never holds up a lease request behind it.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::policy::fleet::{Action, Answer};

/// The longest line memprobe writes (a request: names, a note of at most 512 bytes).
pub const MAX_REQUEST_LINE: usize = 16 * 1024;
/// The longest line the child writes: a list of at most
/// [`super::api::MAX_LEASES`] leases, each clipped.
pub const MAX_REPLY_LINE: usize = 512 * 1024;

/// The first line: who the child works for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub namespace: String,
    pub pod: String,
    /// `--fleet-name`; else the pod's controller names the fleet.
    pub fleet_name: Option<String>,
    /// memprobe's pid: the child stops if its parent is already another process.
    pub parent: u32,
}

/// A request for the child.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "message", rename_all = "snake_case")]
pub enum Request {
    /// One of the fleet's rules' requests, with what the lease written needs.
    Lease {
        id: u64,
        action: Action,
        fleet: String,
        me: String,
        /// The lease's `leaseDurationSeconds`.
        duration_secs: u64,
    },
    /// The start check: the pod's own object read, and with the fleet on its Leases listed,
    /// as the fleet's requests will need them.
    Check { id: u64, leases: bool },
    /// One Event to create.
    Event {
        id: u64,
        reason: String,
        kind: String,
        action: String,
        note: String,
    },
}

/// The child's answer to one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "message", rename_all = "snake_case")]
pub enum Reply {
    Lease {
        id: u64,
        /// HTTP requests made for it.
        requests: u32,
        answer: Answer,
        /// After reading the pod: the fleet it names, or why it names none.
        fleet: Option<Result<String, String>>,
    },
    Check {
        id: u64,
        requests: u32,
        checked: Checked,
    },
    Event {
        id: u64,
        requests: u32,
        /// Why the Event was not sent; `dropped` when the child's queue was full.
        failed: Option<String>,
        dropped: bool,
    },
}

/// What the start check found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checked {
    /// The pod read, and its Leases listed when the fleet is on.
    Passed,
    /// The API server answered, and refused (401, 403) or did not know the pod (404): a
    /// configuration to fix, said with what to fix.
    Refused(String),
    /// No answer, or one that says nothing of the configuration: an outage, tried again.
    Failed(String),
}

/// Why a line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("a line over {0} bytes")]
    TooLong(usize),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads one line of at most `max` bytes and parses it; `None` at the end of the stream.
/// A longer line is an error after at most `max` bytes were kept.
pub async fn read<T: for<'de> Deserialize<'de>>(
    reader: &mut (impl AsyncBufRead + Unpin),
    max: usize,
) -> Result<Option<T>, LineError> {
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            if line.is_empty() {
                return Ok(None);
            }
            break;
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (available.len(), false),
        };
        if line.len() + take > max + 1 {
            return Err(LineError::TooLong(max));
        }
        line.extend_from_slice(&available[..take]);
        reader.consume(take);
        if done {
            break;
        }
    }
    Ok(Some(serde_json::from_slice(&line)?))
}

/// One message as a line.
pub fn line(message: &impl Serialize) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).unwrap_or_default();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::fleet::Seen;
    use std::time::Duration;

    #[tokio::test]
    async fn requests_and_replies_go_over_a_line_each_and_come_back_the_same() {
        let request = Request::Lease {
            id: 7,
            action: Action::Take {
                slot: "memprobe-kms-slot-0".into(),
                version: Some("42".into()),
            },
            fleet: "kms".into(),
            me: "kms-0".into(),
            duration_secs: 30,
        };
        let reply = Reply::Lease {
            id: 7,
            requests: 1,
            answer: Answer::Listed(vec![Seen {
                name: "memprobe-kms-slot-0".into(),
                holder: Some("kms-1".into()),
                renewed: None,
                duration: Duration::from_secs(30),
                version: "43".into(),
                fullness: Some(0.5),
            }]),
            fleet: Some(Ok("kms".into())),
        };
        let mut bytes = line(&request);
        bytes.extend(line(&reply));
        let mut reader = &bytes[..];
        let got: Request = read(&mut reader, 1024).await.unwrap().unwrap();
        assert_eq!(got, request);
        let got: Reply = read(&mut reader, 1024).await.unwrap().unwrap();
        assert_eq!(got, reply);
        assert!(read::<Reply>(&mut reader, 1024).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_line_over_its_bound_is_refused_without_being_kept_whole() {
        let long = vec![b'x'; 1 << 20];
        let mut reader = tokio::io::BufReader::new(&long[..]);
        let e = read::<Reply>(&mut reader, 4096).await.unwrap_err();
        assert!(matches!(e, LineError::TooLong(4096)), "{e}");
    }
}
