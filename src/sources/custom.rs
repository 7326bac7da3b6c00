//! Sessions from any other server (`--sessions-url`, `--sessions-file`): a mediasoup or
//! LiveKit application, Asterisk, a home-grown SFU — any server that can say how many
//! sessions it has.
//!
//! The contract is the smallest that works. An HTTP `GET` answering `200` with a whole number
//! (`3`), or with JSON that holds it where the URL's fragment points: the fragment is a JSON
//! pointer in RFC 6901's own URI form (`http://127.0.0.1:3000/stats#/rooms/active`), it is
//! never sent, and an array there counts its elements. Or a file holding the number. Either is
//! read every `--sessions-poll`, each read with a deadline; answers over 64 KiB (files over
//! 4 KiB) are cut off, not read.
//!
//! Liveness follows KMS's and Janus's rules, which the policy applies: once the server has
//! answered, a read that gets no answer in time is a failed ping; a refused connection or a
//! missing file is a server that is not there, never a hung one; an answer that cannot be read
//! leaves the count unknown, never taken for zero. Each kind of error is said once, then
//! counted.
//!
//! A file is read on a thread of its own, never on the runtime's: a path that is not a
//! regular file is refused before it is opened, and it is opened non-blocking, so a FIFO or a
//! device put there cannot hold memprobe; a read stuck in the kernel (a hung network
//! filesystem) holds only that thread, counts as failed pings, and no second read starts
//! until it returns.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::client::ClientError;

/// The most of an HTTP answer read: a count, or a small stats document.
const MAX_ANSWER_BYTES: usize = 64 << 10;
/// The most of a file read: it holds one number.
const MAX_FILE_BYTES: u64 = 4 << 10;
/// A fragment given in the flag is cut to this before it is shown.
const MAX_TEXT_BYTES: usize = 120;
const URL_EXAMPLE: &str = "try http://127.0.0.1:3000/sessions, or \
                           http://127.0.0.1:3000/stats#/rooms/active for a JSON field";

/// Where the count is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// An HTTP URL (without its fragment), and the JSON pointer the fragment gave, if any.
    Url {
        url: url::Url,
        pointer: Option<String>,
    },
    File(PathBuf),
}

impl Endpoint {
    /// `--sessions-url`: an `http://` URL whose fragment, if any, is a JSON pointer. The
    /// error is a problem to show after the (redacted) value.
    pub fn url(text: &str) -> Result<Self, String> {
        let mut url = url::Url::parse(text.trim())
            .ok()
            .filter(|u| u.scheme() == "http" && u.host_str().is_some_and(|h| !h.is_empty()))
            .ok_or_else(|| format!("is not an http:// URL ({URL_EXAMPLE})"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "carries credentials, which memprobe does not send ({URL_EXAMPLE})"
            ));
        }
        let pointer = match url.fragment() {
            None | Some("") => None,
            Some(fragment) => Some(pointer(fragment)?),
        };
        url.set_fragment(None);
        Ok(Endpoint::Url { url, pointer })
    }

    /// `--sessions-file`: a regular file, or one that may appear in a directory that exists
    /// (the server may start after memprobe). The error is a problem to show after the path.
    pub fn file(path: &Path) -> Result<Self, String> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => Err(
                "is a symbolic link, which memprobe does not follow (give the file the server \
                 writes its session count to, e.g. /run/sfu/sessions)"
                    .into(),
            ),
            Ok(meta) if meta.is_file() => Ok(Endpoint::File(path.to_path_buf())),
            Ok(_) => Err(
                "is not a regular file (try a file the server writes its session \
                          count to, e.g. /run/sfu/sessions)"
                    .into(),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
                if parent.is_none_or(Path::is_dir) {
                    Ok(Endpoint::File(path.to_path_buf()))
                } else {
                    Err(
                        "is in a directory that does not exist (try a file the server writes \
                         its session count to, e.g. /run/sfu/sessions)"
                            .into(),
                    )
                }
            }
            Err(e) => Err(format!("cannot be read: {e}")),
        }
    }

    /// How `/status` and logs show it: a URL's query values hidden, its pointer shown.
    pub fn shown(&self) -> String {
        match self {
            Endpoint::Url { url, pointer } => {
                let shown = crate::secret::SecretUrl::redact(url.as_str());
                match pointer {
                    Some(p) => format!("{shown}#{p}"),
                    None => shown,
                }
            }
            Endpoint::File(path) => path.display().to_string(),
        }
    }
}

/// A URL fragment as a JSON pointer (RFC 6901, section 6: percent-decoded, then `/a/b`).
fn pointer(fragment: &str) -> Result<String, String> {
    let decoded = percent_encoding::percent_decode_str(fragment)
        .decode_utf8()
        .map_err(|_| format!("has a fragment '#{fragment}' that is not UTF-8 text"))?;
    let bad_escape = decoded
        .split('~')
        .skip(1)
        .any(|after| !after.starts_with(['0', '1']));
    if !decoded.starts_with('/') || bad_escape {
        let shown = crate::units::clip(fragment, MAX_TEXT_BYTES);
        return Err(format!(
            "has a fragment '#{shown}' that is not a JSON pointer (try #/sessions or \
             #/rooms/active; ~1 stands for / and ~0 for ~ in a name)"
        ));
    }
    Ok(decoded.into_owned())
}

#[derive(Clone, Debug, PartialEq)]
pub struct CustomSettings {
    pub from: Endpoint,
    pub poll: Duration,
    /// Each read's deadline: the poll interval, at most 3 s.
    pub timeout: Duration,
    /// Failed pings in a row that stall it (`--kms-failures`), and how long a stall may last
    /// before it recycles (`--sessions-hang-timeout`): `None`, the default, never. A count
    /// endpoint that cannot be read (a DNS lookup that never answers, a stats handler that
    /// is stuck) is no evidence that the server itself is hung.
    pub failures: u32,
    pub hang_timeout: Option<Duration>,
}

/// Why an answer is not a session count. It says the answer's length and the kind of what
/// was there, never the content: whoever writes the file or the answer (the media server,
/// the part exposed to the network) could have put a secret of memprobe's there, a token
/// file or `/proc/self/environ` behind a symlink, and `/status` is open to anyone.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("the answer is empty (answer a whole number such as 3)")]
    Empty,
    #[error("the answer ({0} bytes) is not a session count (answer a whole number such as 3)")]
    NotANumber(usize),
    #[error(
        "the answer ({length} bytes) is not JSON, which #{pointer} asks for (answer e.g. {{\"sessions\": 3}} for #/sessions)"
    )]
    NotJson { pointer: String, length: usize },
    #[error("the JSON answer has nothing at #{0}")]
    Missing(String),
    #[error(
        "the JSON answer has {kind} at #{pointer}, not a session count (a whole number, or an array of sessions)"
    )]
    NotACount { pointer: String, kind: &'static str },
}

/// What a JSON value is, in words, without its content.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a fraction",
        Value::Number(n) if n.is_i64() => "a negative number",
        Value::Number(_) => "a number too large",
        Value::String(_) => "a string",
        Value::Array(_) => "an array too long",
        Value::Object(_) => "an object",
    }
}

/// Reads a session count: the whole answer as a number, or, with a pointer, the number (or
/// the length of the array) it points to in the JSON answer.
pub fn parse_answer(body: &[u8], pointer: Option<&str>) -> Result<u32, AnswerError> {
    let Some(pointer) = pointer else {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() {
            return Err(AnswerError::Empty);
        }
        return text
            .parse::<u32>()
            .ok()
            .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(AnswerError::NotANumber(body.len()));
    };
    let json: Value = serde_json::from_slice(body).map_err(|_| AnswerError::NotJson {
        pointer: pointer.to_string(),
        length: body.len(),
    })?;
    let value = json
        .pointer(pointer)
        .ok_or_else(|| AnswerError::Missing(pointer.to_string()))?;
    let count = match value {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::Array(items) => u32::try_from(items.len()).ok(),
        _ => None,
    };
    count.ok_or_else(|| AnswerError::NotACount {
        pointer: pointer.to_string(),
        kind: kind_of(value),
    })
}

/// What one read gave.
#[derive(Debug, PartialEq)]
pub enum Reading {
    /// The server answered with its count.
    Count(u32),
    /// The server answered, but not with a count it could be read from.
    Unreadable(&'static str, String),
    /// Nothing is there: the connection was refused, the file is missing.
    Absent(String),
    /// No answer within the deadline.
    Timeout,
    /// The read failed another way (a connection reset): no evidence either way.
    Failed(String),
}

impl Reading {
    fn kind(&self) -> &'static str {
        match self {
            Reading::Count(_) => "none",
            Reading::Unreadable(kind, _) => kind,
            Reading::Absent(_) => "absent",
            Reading::Timeout => "timeout",
            Reading::Failed(_) => "failed",
        }
    }
}

/// What memprobe knows of the server, as of the last read.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CustomView {
    /// Where the count is read: the URL (query values hidden) or the file.
    pub from: String,
    /// The last read was answered.
    pub connected: bool,
    /// Live sessions, when the last read gave a count.
    pub sessions: Option<u32>,
    /// How long the last answered read took.
    pub last_read_seconds: Option<f64>,
    pub last_error: Option<String>,
    /// Whether the server has answered since it was last not there.
    pub answered: bool,
    /// Reads in a row that got no answer in time since the server last answered.
    pub failed_pings: u32,
    pub errors_total: BTreeMap<&'static str, u64>,
}

impl CustomView {
    /// Takes one read in; `latency` is how long an answered one took. Pure: what to log is
    /// decided by the caller.
    pub fn apply(&mut self, read: &Reading, latency: Duration) {
        match read {
            Reading::Count(n) => {
                self.sessions = Some(*n);
                self.last_error = None;
            }
            Reading::Unreadable(_, message) => {
                self.sessions = None;
                self.last_error = Some(message.clone());
            }
            Reading::Absent(message) => {
                self.connected = false;
                self.answered = false;
                self.failed_pings = 0;
                self.sessions = None;
                self.last_error = Some(message.clone());
            }
            Reading::Timeout => {
                self.connected = false;
                self.sessions = None;
                if self.answered {
                    self.failed_pings += 1;
                }
                self.last_error = Some("no answer in time".into());
            }
            Reading::Failed(message) => {
                self.connected = false;
                self.sessions = None;
                self.last_error = Some(message.clone());
            }
        }
        if matches!(read, Reading::Count(_) | Reading::Unreadable(..)) {
            self.connected = true;
            self.answered = true;
            self.failed_pings = 0;
            self.last_read_seconds = Some(latency.as_secs_f64());
        }
        if !matches!(read, Reading::Count(_)) {
            *self.errors_total.entry(read.kind()).or_default() += 1;
        }
    }
}

/// The server as a session source.
pub struct CustomSessions {
    view: watch::Receiver<CustomView>,
    fresh: crate::sources::FreshReads,
}

impl crate::sources::SessionSource for CustomSessions {
    fn read(&mut self) -> crate::sources::ServerView {
        let view = self.view.borrow().clone();
        crate::sources::ServerView {
            stuck: None,
            sessions: view.sessions.filter(|_| view.connected),
            failed_pings: if view.answered { view.failed_pings } else { 0 },
            report: crate::sources::ServerReport::Custom(view),
        }
    }

    fn fresh_count(&mut self) -> Option<Option<u32>> {
        Some(self.fresh.count())
    }
}

/// Starts the polling task (and, for a file, its reading thread).
pub fn spawn(settings: CustomSettings) -> CustomSessions {
    let view = CustomView {
        from: settings.from.shown(),
        ..CustomView::default()
    };
    let (tx, rx) = watch::channel(view);
    // A fresh read may wait for the one in flight, then takes its own.
    let (fresh, asks) =
        crate::sources::FreshReads::new(settings.timeout * 2 + Duration::from_secs(1));
    tokio::spawn(run(settings, tx, asks));
    CustomSessions { view: rx, fresh }
}

async fn run(
    settings: CustomSettings,
    view: watch::Sender<CustomView>,
    mut asks: tokio::sync::mpsc::Receiver<crate::sources::FreshReply>,
) {
    let mut reader = Reader::new(&settings.from);
    let shown = settings.from.shown();
    let mut said = HashSet::new();
    let mut ticker = tokio::time::interval(settings.poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A fresh read is one that begins after it was asked for: the loop reads one at a
        // time, so it begins once the read in flight, if any, is over.
        let asked = tokio::select! {
            _ = ticker.tick() => None,
            Some(reply) = asks.recv() => Some(reply),
        };
        let sent = tokio::time::Instant::now();
        let read = reader.read(settings.timeout, asked.is_some()).await;
        if read == Reading::Timeout && super::paused_meanwhile(sent, settings.timeout) {
            // memprobe itself was stopped: the deadline passed while nobody waited.
            continue;
        }
        let was_answered = view.borrow().answered;
        if let Reading::Count(n) = read
            && !was_answered
        {
            info!("sessions: {shown} answers: {n} session(s)");
        }
        let kind = read.kind();
        if !matches!(read, Reading::Count(_)) && said.insert(kind) {
            let message = match &read {
                Reading::Timeout => format!("no answer within {:?}", settings.timeout),
                Reading::Unreadable(_, m) | Reading::Absent(m) | Reading::Failed(m) => m.clone(),
                Reading::Count(_) => String::new(),
            };
            warn!(
                kind,
                "sessions: {shown}: {message} (further '{kind}' errors are counted, not logged)"
            );
        }
        let latency = sent.elapsed();
        view.send_modify(|v| v.apply(&read, latency));
        if let Some(reply) = asked {
            let count = match read {
                Reading::Count(n) => Some(n),
                _ => None,
            };
            let _ = reply.try_send(count);
        }
    }
}

/// Reads the count from where the settings say.
enum Reader {
    Url {
        url: url::Url,
        pointer: Option<String>,
        resolver: crate::client::Resolver,
    },
    File {
        requests: Option<std::sync::mpsc::Sender<oneshot::Sender<Reading>>>,
        /// A read that missed its deadline and has not returned yet.
        pending: Option<oneshot::Receiver<Reading>>,
    },
}

impl Reader {
    fn new(from: &Endpoint) -> Self {
        match from {
            Endpoint::Url { url, pointer } => Reader::Url {
                url: url.clone(),
                pointer: pointer.clone(),
                resolver: crate::client::Resolver::default(),
            },
            Endpoint::File(path) => {
                let path = path.clone();
                Reader::file(move || read_file(&path))
            }
        }
    }

    /// A reader whose every read is `read`, on a thread of its own.
    fn file(read: impl Fn() -> Reading + Send + 'static) -> Self {
        let (requests, inbox) = std::sync::mpsc::channel::<oneshot::Sender<Reading>>();
        let started = std::thread::Builder::new()
            .name("memprobe-sessions-file".into())
            .spawn(move || {
                for reply in inbox {
                    let _ = reply.send(read());
                }
            });
        Reader::File {
            requests: started.ok().map(|_| requests),
            pending: None,
        }
    }

    /// One read within `deadline`; a `fresh` one never takes the answer of a read that
    /// began before it (a file read still in flight).
    async fn read(&mut self, deadline: Duration, fresh: bool) -> Reading {
        match self {
            Reader::Url {
                url,
                pointer,
                resolver,
            } => match crate::client::get(resolver, url, deadline, MAX_ANSWER_BYTES).await {
                Ok((200, body)) => match parse_answer(&body, pointer.as_deref()) {
                    Ok(n) => Reading::Count(n),
                    Err(e) => Reading::Unreadable("malformed", e.to_string()),
                },
                Ok((code, _)) => Reading::Unreadable(
                    "status",
                    format!("answered HTTP {code}, not 200 with a session count"),
                ),
                Err(ClientError::Refused) => Reading::Absent("connection refused".into()),
                Err(ClientError::Timeout(_)) => Reading::Timeout,
                Err(e @ ClientError::TooLarge(_)) => {
                    Reading::Unreadable("too_large", format!("{e}: it should hold a count"))
                }
                Err(ClientError::Failed(e)) => Reading::Failed(e),
            },
            Reader::File { requests, pending } => {
                let Some(requests) = requests else {
                    return Reading::Failed("cannot start the thread that reads the file".into());
                };
                let mut reply = match pending.take().filter(|_| !fresh) {
                    Some(reply) => reply,
                    None => {
                        let (tx, rx) = oneshot::channel();
                        if requests.send(tx).is_err() {
                            return Reading::Failed("the thread that reads the file ended".into());
                        }
                        rx
                    }
                };
                match tokio::time::timeout(deadline, &mut reply).await {
                    Ok(Ok(read)) => read,
                    Ok(Err(_)) => Reading::Failed("the thread that reads the file ended".into()),
                    Err(_) => {
                        *pending = Some(reply);
                        Reading::Timeout
                    }
                }
            }
        }
    }
}

/// One read of the file; blocking, so on the reading thread only. A symbolic link put in
/// the file's place is not followed (whoever writes the file could point it at a secret of
/// memprobe's), and what the file holds is never shown: only its length.
fn read_file(path: &Path) -> Reading {
    use std::os::unix::fs::OpenOptionsExt;
    let not_regular = || {
        Reading::Unreadable(
            "not_a_file",
            "is not a regular file (write the count to a plain file)".into(),
        )
    };
    let symlink = || {
        Reading::Unreadable(
            "not_a_file",
            "is a symbolic link, which is not followed (write the count to a plain file)".into(),
        )
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Reading::Absent("no such file (yet)".into());
        }
        Err(e) => return Reading::Failed(format!("cannot be read: {e}")),
        Ok(meta) if meta.file_type().is_symlink() => return symlink(),
        Ok(meta) if !meta.is_file() => return not_regular(),
        Ok(_) => {}
    }
    // Non-blocking, in case it was swapped for a FIFO since: opening one would wait for a
    // writer; and not through a symbolic link swapped in since.
    let flags = nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOFOLLOW;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path);
    let file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Reading::Absent("no such file (yet)".into());
        }
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) => return symlink(),
        Err(e) => return Reading::Failed(format!("cannot be opened: {e}")),
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return not_regular();
    }
    let mut bytes = Vec::new();
    if let Err(e) = file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes) {
        return Reading::Failed(format!("cannot be read: {e}"));
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Reading::Unreadable(
            "too_large",
            "is over 4 KiB: it should hold one number".into(),
        );
    }
    match parse_answer(&bytes, None) {
        Ok(n) => Reading::Count(n),
        Err(AnswerError::NotANumber(length)) => Reading::Unreadable(
            "malformed",
            format!(
                "holds {length} bytes that are not a session count (write a whole number \
                 such as 3)"
            ),
        ),
        Err(_) => Reading::Unreadable(
            "malformed",
            "is empty (write a whole number such as 3: to a new file, renamed over this one)"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_answer_is_a_whole_number() {
        assert_eq!(parse_answer(b"3", None), Ok(3));
        assert_eq!(parse_answer(b" 12\n", None), Ok(12), "spaces and a newline");
        assert_eq!(parse_answer(b"0", None), Ok(0));
        assert_eq!(parse_answer(b"", None), Err(AnswerError::Empty));
        assert_eq!(
            parse_answer(b" \n", None),
            Err(AnswerError::Empty),
            "a file caught mid-write is unknown, never 0"
        );
        for bad in ["-1", "+3", "3.0", "three", "3 sessions", "4294967296"] {
            assert_eq!(
                parse_answer(bad.as_bytes(), None),
                Err(AnswerError::NotANumber(bad.len())),
                "{bad}"
            );
        }
        assert_eq!(
            AnswerError::NotANumber(5).to_string(),
            "the answer (5 bytes) is not a session count (answer a whole number such as 3)",
            "its length, never its content"
        );
    }

    #[test]
    fn a_pointer_picks_a_number_or_counts_an_array() {
        let stats = br#"{"rooms": {"active": 4, "list": [{"id": 1}, {"id": 2}]}, "a/b": 7}"#;
        assert_eq!(parse_answer(stats, Some("/rooms/active")), Ok(4));
        assert_eq!(parse_answer(stats, Some("/rooms/list")), Ok(2));
        assert_eq!(
            parse_answer(stats, Some("/a~1b")),
            Ok(7),
            "RFC 6901 escapes"
        );
        assert_eq!(parse_answer(b"5", Some("")), Ok(5), "the whole document");
    }

    #[test]
    fn a_json_answer_without_a_count_there_is_refused_naming_the_pointer() {
        let stats = br#"{"rooms": {"active": "4", "ratio": 0.5, "minus": -1, "none": null}}"#;
        assert_eq!(
            parse_answer(stats, Some("/rooms/idle")),
            Err(AnswerError::Missing("/rooms/idle".into()))
        );
        for (pointer, kind) in [
            ("/rooms/active", "a string"),
            ("/rooms/ratio", "a fraction"),
            ("/rooms/minus", "a negative number"),
            ("/rooms/none", "null"),
            ("/rooms", "an object"),
        ] {
            assert_eq!(
                parse_answer(stats, Some(pointer)),
                Err(AnswerError::NotACount {
                    pointer: pointer.into(),
                    kind
                }),
                "{pointer}"
            );
        }
        assert_eq!(
            parse_answer(br#"{"token": "S3cr3t"}"#, Some("/token"))
                .unwrap_err()
                .to_string(),
            "the JSON answer has a string at #/token, not a session count (a whole number, or \
             an array of sessions)",
            "what was there, never what it said"
        );
        assert_eq!(
            parse_answer(b"<html>busy</html>", Some("/sessions"))
                .unwrap_err()
                .to_string(),
            "the answer (17 bytes) is not JSON, which #/sessions asks for (answer e.g. \
             {\"sessions\": 3} for #/sessions)"
        );
    }

    #[test]
    fn a_url_fragment_is_a_json_pointer_and_never_sent() {
        let Endpoint::Url { url, pointer } =
            Endpoint::url("http://127.0.0.1:3000/stats?x=1#/rooms/active").unwrap()
        else {
            panic!("a URL");
        };
        assert_eq!(url.as_str(), "http://127.0.0.1:3000/stats?x=1");
        assert_eq!(pointer.as_deref(), Some("/rooms/active"));
        let Endpoint::Url { pointer, .. } = Endpoint::url("http://h/s#/my%20rooms/a~1b").unwrap()
        else {
            panic!("a URL");
        };
        assert_eq!(
            pointer.as_deref(),
            Some("/my rooms/a~1b"),
            "percent-decoded"
        );
        let Endpoint::Url { pointer, .. } = Endpoint::url("http://h/sessions").unwrap() else {
            panic!("a URL");
        };
        assert_eq!(pointer, None, "a plain number");
    }

    #[test]
    fn a_bad_url_says_what_would_work() {
        assert_eq!(
            Endpoint::url("https://h/s").unwrap_err(),
            format!("is not an http:// URL ({URL_EXAMPLE})")
        );
        assert!(Endpoint::url("127.0.0.1:3000").is_err());
        assert!(
            Endpoint::url("http://u:pw@h/s")
                .unwrap_err()
                .starts_with("carries credentials")
        );
        for fragment in ["rooms", "/a~2b", "/a~"] {
            let e = Endpoint::url(&format!("http://h/s#{fragment}")).unwrap_err();
            assert!(
                e.starts_with(&format!(
                    "has a fragment '#{fragment}' that is not a JSON pointer"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn a_url_is_shown_without_query_values() {
        let from = Endpoint::url("http://h:3000/stats?token=S3cr3t#/rooms/active").unwrap();
        assert_eq!(from.shown(), "http://h:3000/stats?token=***#/rooms/active");
    }

    #[test]
    fn a_file_must_be_regular_or_appear_in_a_directory_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        let later = dir.path().join("sessions");
        assert!(
            Endpoint::file(&later).is_ok(),
            "the server may write it later"
        );
        std::fs::write(&later, "2\n").unwrap();
        assert_eq!(read_file(&later), Reading::Count(2));
        assert!(
            Endpoint::file(Path::new("/dev/zero"))
                .unwrap_err()
                .starts_with("is not a regular file")
        );
        assert!(
            Endpoint::file(dir.path())
                .unwrap_err()
                .starts_with("is not a regular file")
        );
        assert!(
            Endpoint::file(&dir.path().join("no/such/dir/sessions"))
                .unwrap_err()
                .starts_with("is in a directory that does not exist")
        );
    }

    #[test]
    fn a_file_read_refuses_what_is_not_a_small_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions");
        assert!(matches!(read_file(&path), Reading::Absent(_)));
        std::fs::write(&path, "many").unwrap();
        assert_eq!(
            read_file(&path),
            Reading::Unreadable(
                "malformed",
                "holds 4 bytes that are not a session count (write a whole number such as 3)"
                    .into()
            )
        );
        std::fs::write(&path, "1".repeat(5000)).unwrap();
        assert!(matches!(
            read_file(&path),
            Reading::Unreadable("too_large", _)
        ));
        std::fs::remove_file(&path).unwrap();
        let secret = dir.path().join("token");
        std::fs::write(&secret, "S3cr3t-admin-token").unwrap();
        std::os::unix::fs::symlink(&secret, &path).unwrap();
        let Reading::Unreadable("not_a_file", said) = read_file(&path) else {
            panic!("a symbolic link put in the file's place is refused, not followed");
        };
        assert!(said.starts_with("is a symbolic link"), "{said}");
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(
            matches!(read_file(&path), Reading::Unreadable("not_a_file", _)),
            "a FIFO is refused, not opened (opening it would wait for a writer)"
        );
    }

    /// One answer over a real loopback connection: the status line and body given.
    async fn answered(status: &'static str, body: String) -> Reading {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 1024];
            let _ = stream.read(&mut head).await;
            let answer = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        });
        let from = Endpoint::url(&format!("http://{addr}/stats#/sessions")).unwrap();
        Reader::new(&from)
            .read(Duration::from_secs(10), false)
            .await
    }

    #[tokio::test]
    async fn an_http_answer_is_a_count_only_when_it_is_200_and_small() {
        assert_eq!(
            answered("200 OK", r#"{"sessions": 7}"#.into()).await,
            Reading::Count(7)
        );
        assert_eq!(
            answered("503 Service Unavailable", r#"{"sessions": 0}"#.into()).await,
            Reading::Unreadable(
                "status",
                "answered HTTP 503, not 200 with a session count".into()
            ),
            "a count in an error answer is not trusted"
        );
        let large = format!(r#"{{"sessions": 1, "pad": "{}"}}"#, "x".repeat(70 << 10));
        assert_eq!(
            answered("200 OK", large).await,
            Reading::Unreadable(
                "too_large",
                "the answer is over 65536 bytes: it should hold a count".into()
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_read_that_hangs_is_a_timeout_and_no_second_read_starts_meanwhile() {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let mut reader = Reader::file(move || {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if n == 1 {
                // A read stuck in the kernel, until the test lets it go.
                let _ = held.recv();
            }
            Reading::Count(n)
        });
        let deadline = Duration::from_secs(3);
        assert_eq!(reader.read(deadline, false).await, Reading::Timeout);
        assert_eq!(reader.read(deadline, false).await, Reading::Timeout);
        drop(release);
        tokio::time::resume();
        assert_eq!(
            reader.read(deadline, false).await,
            Reading::Count(1),
            "the read in flight is waited on again, not joined by a second one"
        );
        assert_eq!(reader.read(deadline, false).await, Reading::Count(2));
    }

    #[test]
    fn a_server_that_answered_and_then_times_out_fails_pings_and_recovers() {
        let mut view = CustomView::default();
        let ms = Duration::from_millis(3);
        view.apply(&Reading::Timeout, ms);
        assert_eq!(
            view.failed_pings, 0,
            "a server that never answered is starting, not hung"
        );
        view.apply(&Reading::Count(2), ms);
        assert!(view.connected && view.answered);
        assert_eq!(view.sessions, Some(2));
        view.apply(&Reading::Timeout, ms);
        view.apply(&Reading::Timeout, ms);
        assert_eq!(view.failed_pings, 2, "each read without an answer in time");
        assert_eq!(view.sessions, None, "unknown while it does not answer");
        view.apply(&Reading::Count(1), ms);
        assert_eq!(view.failed_pings, 0, "an answer ends the stall");
        assert_eq!(view.errors_total.get("timeout"), Some(&3));
    }

    #[test]
    fn an_unreadable_answer_is_alive_but_unknown_and_an_absent_server_is_not_hung() {
        let mut view = CustomView::default();
        let ms = Duration::from_millis(3);
        view.apply(&Reading::Count(4), ms);
        view.apply(
            &Reading::Unreadable("status", "answered HTTP 500".into()),
            ms,
        );
        assert!(view.connected, "it answered");
        assert_eq!(view.sessions, None, "never taken for 0");
        assert_eq!(view.failed_pings, 0);
        view.apply(&Reading::Timeout, ms);
        view.apply(&Reading::Absent("connection refused".into()), ms);
        assert_eq!(view.failed_pings, 0, "a refused connection is not a hang");
        assert!(!view.answered);
        view.apply(&Reading::Failed("connection reset".into()), ms);
        assert_eq!(view.failed_pings, 0, "a reset is no evidence of a hang");
        assert_eq!(view.errors_total.len(), 4, "{:?}", view.errors_total);
    }
}
