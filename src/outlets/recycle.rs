//! Recycle actions (`--on-recycle`): what restarts the server once it must be restarted,
//! where no kubelet does it (VMs under systemd, Docker hosts with `restart: always`).
//!
//! - `none` (the default): in Kubernetes the liveness probe on `/healthz` restarts the server.
//! - `signal:TERM` (any signal name): sent once to the incarnation judged, through the
//!   pidfd taken when it was found ([`ProcessHandle`]), never to a pid number: a retry after
//!   it exited signals nothing, whoever holds its pid now. Its supervisor starts a fresh one.
//! - `exec:COMMAND ARGS…`: run once, without a shell (`exec:sh -c '…'` asks for one), with a
//!   60 s timeout; its exit status and first lines of output are logged and in `/status`.
//!   The result is the command's exit, not the end of its output: a restart script that
//!   starts a daemon (`service x restart`) hands it the output pipe, which memprobe then reads
//!   to its end and drops, keeping the first 4 KiB. Closing it would kill the new server with
//!   SIGPIPE at its next write; not reading it would block it once the pipe is full.
//!
//! Once per incarnation: if the target is still the same incarnation `--recycle-retry` after
//! the action, it runs again, and the attempt is counted. The action reads the published
//! snapshot like any outlet; its outcome goes back to the monitor through the operator's
//! channel, so `/status` and `/metrics` show it.

use std::fmt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::unix::pipe;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::policy::State;
use crate::sources::operator::{ActionRecord, Requests};
use crate::sources::proc::handle::ProcessHandle;
use crate::status::Snapshot;

/// The longest an `exec:` action may run.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of an `exec:` action's output shown.
const OUTPUT_LINES: usize = 5;
/// Bytes of an `exec:` action's output kept, whatever it prints: the rest is read and dropped.
const KEPT_BYTES: usize = 4096;
/// One read of the output.
const READ_BYTES: usize = 64 * 1024;

/// `--on-recycle`, checked to be possible at start, and `--recycle-retry`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecycleSettings {
    pub action: RecycleAction,
    pub retry: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecycleAction {
    None,
    Signal(nix::sys::signal::Signal),
    Exec(Vec<String>),
}

impl fmt::Display for RecycleAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecycleAction::None => write!(f, "none"),
            RecycleAction::Signal(sig) => {
                write!(f, "signal:{}", sig.as_str().trim_start_matches("SIG"))
            }
            RecycleAction::Exec(argv) => write!(
                f,
                "exec:{}",
                shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_default()
            ),
        }
    }
}

impl RecycleAction {
    /// Parses `none`, `signal:TERM` (or `SIGTERM`) or `exec:COMMAND ARGS…`; the error is a
    /// problem to show after the value. A command must exist now (a path, or a name on PATH).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "none" {
            return Ok(RecycleAction::None);
        }
        if let Some(name) = text.strip_prefix("signal:") {
            let name = name.trim().to_ascii_uppercase();
            let full = if name.starts_with("SIG") {
                name
            } else {
                format!("SIG{name}")
            };
            return full
                .parse()
                .ok()
                .filter(|sig| sendable(*sig).is_some())
                .map(RecycleAction::Signal)
                .ok_or_else(|| {
                    "names no signal (try signal:TERM, signal:INT or signal:KILL)".to_string()
                });
        }
        if let Some(line) = text.strip_prefix("exec:") {
            let argv = shlex::split(line)
                .filter(|a| !a.is_empty())
                .ok_or_else(|| {
                    "is not a command line (try exec:systemctl restart kurento-media-server)"
                        .to_string()
                })?;
            if !command_exists(&argv[0]) {
                return Err(format!(
                    "runs '{}', which is not an executable file here (give its full path)",
                    argv[0]
                ));
            }
            return Ok(RecycleAction::Exec(argv));
        }
        Err("is not none, signal:SIG or exec:COMMAND (try signal:TERM)".to_string())
    }
}

/// The signal as the pidfd call takes it.
fn sendable(sig: nix::sys::signal::Signal) -> Option<rustix::process::Signal> {
    rustix::process::Signal::from_raw(sig as i32)
}

fn command_exists(command: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if command.contains('/') {
        return executable(std::path::Path::new(command));
    }
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| executable(&dir.join(command)))
    })
}

/// Watches the snapshots and runs the action at recycle: once per incarnation, again every
/// `retry` while the same incarnation is still there.
pub async fn run(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    action: RecycleAction,
    retry: Duration,
    report: Requests,
) {
    if action == RecycleAction::None {
        return std::future::pending().await;
    }
    // (incarnation, when the action last ran, attempts)
    let mut done: Option<(u64, Instant, u32)> = None;
    loop {
        let (state, incarnation, handle) = {
            let snap = snapshots.borrow_and_update();
            let status = &snap.status;
            (
                status.state,
                status.incarnation,
                status.target.as_ref().and_then(|t| t.handle.clone()),
            )
        };
        let mut wait = None;
        if state == State::Recycle {
            let attempt = match done {
                Some((inc, at, n)) if inc == incarnation => {
                    let since = at.elapsed();
                    if since >= retry {
                        Some(n + 1)
                    } else {
                        wait = Some(retry - since);
                        None
                    }
                }
                _ => Some(1),
            };
            if let Some(attempt) = attempt {
                let record = act(&action, handle, attempt).await;
                log(&record);
                report.report(record);
                done = Some((incarnation, Instant::now(), attempt));
                wait = Some(retry);
            }
        }
        let timer = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            () = timer => {}
        }
    }
}

fn log(record: &ActionRecord) {
    match record.result {
        "ok" => tracing::info!(
            action = record.action,
            attempt = record.attempt,
            "recycle action: {}",
            record.detail
        ),
        _ => tracing::warn!(
            action = record.action,
            attempt = record.attempt,
            "recycle action {}: {}",
            record.result,
            record.detail
        ),
    }
}

async fn act(
    action: &RecycleAction,
    handle: Option<Arc<ProcessHandle>>,
    attempt: u32,
) -> ActionRecord {
    let (result, detail) = match action {
        RecycleAction::None => ("ok", "nothing to do".to_string()),
        RecycleAction::Signal(sig) => match (handle, sendable(*sig)) {
            (None, _) => (
                "failed",
                "no pid to signal (--memory-source kms)".to_string(),
            ),
            (Some(_), None) => ("failed", format!("{} cannot be sent", sig.as_str())),
            (Some(handle), Some(signal)) => {
                let name = sig.as_str();
                // A pidfd's poll and send never wait, but the fallback reads /proc: off the
                // threads that answer probes, on a thread of its own rather than tokio's
                // blocking pool, whose queue a source's stuck lookups or reads could fill.
                let (tx, sent) = tokio::sync::oneshot::channel();
                let started = std::thread::Builder::new()
                    .name("memprobe-signal".into())
                    .spawn(move || {
                        let _ = tx.send(handle.signal(signal, name));
                    });
                match started {
                    Err(e) => ("failed", format!("{name}: no thread to send it on: {e}")),
                    Ok(_) => match sent.await {
                        Ok(Ok(done)) => ("ok", done),
                        Ok(Err(e)) => ("failed", e.to_string()),
                        Err(_) => ("failed", format!("{name}: the sending thread ended")),
                    },
                }
            }
        },
        RecycleAction::Exec(argv) => exec(argv).await,
    };
    ActionRecord {
        at: crate::units::timestamp(std::time::SystemTime::now()),
        action: action.to_string(),
        result,
        detail: crate::units::clip(&detail, 1024),
        attempt,
    }
}

/// Runs the command to its exit (or the timeout), its stdout and stderr on one pipe that
/// [`drain`] reads to the end, however long after the exit that comes.
async fn exec(argv: &[String]) -> (&'static str, String) {
    let cannot = |e: std::io::Error| ("failed", format!("cannot start {}: {e}", argv[0]));
    let (writer, reader) = match pipe::pipe() {
        Ok(ends) => ends,
        Err(e) => return cannot(e),
    };
    // The command writes as to any pipe: blocking.
    let (stdout, stderr) = match writer
        .into_blocking_fd()
        .and_then(|fd| Ok((fd.try_clone()?, fd)))
    {
        Ok(fds) => fds,
        Err(e) => return cannot(e),
    };
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true);
    let spawned = command.spawn();
    // memprobe keeps no write end: the output ends when the command and what it started
    // have all closed theirs.
    drop(command);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return cannot(e),
    };
    let (exited, kept) = drain(reader);
    let (result, status) = match tokio::time::timeout(EXEC_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => ("ok", status.to_string()),
        Ok(Ok(status)) => ("failed", status.to_string()),
        Ok(Err(e)) => ("failed", e.to_string()),
        Err(_) => {
            // Only the command: what it started keeps running, and its output is still read.
            let _ = child.kill().await;
            (
                "timeout",
                format!("killed after {}s", EXEC_TIMEOUT.as_secs()),
            )
        }
    };
    let _ = exited.send(());
    let kept = kept.await.unwrap_or_default();
    (result, format!("{status}; output: {}", kept.summary()))
}

/// Reads the output to its end in a task of its own, keeping its first bytes; once told the
/// command has exited, hands them over, having read what the pipe already held.
fn drain(reader: pipe::Receiver) -> (oneshot::Sender<()>, oneshot::Receiver<Kept>) {
    let (exited_tx, mut exited) = oneshot::channel::<()>();
    let (kept_tx, kept_rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut kept = Kept::default();
        let mut report = Some(kept_tx);
        let mut buffer = vec![0u8; READ_BYTES];
        loop {
            tokio::select! {
                ready = reader.readable() => {
                    if ready.is_err() {
                        break;
                    }
                    match reader.try_read(&mut buffer) {
                        Ok(0) => break,
                        Ok(n) => kept.push(&buffer[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => break,
                    }
                }
                _ = &mut exited, if report.is_some() => {
                    // All the command wrote is in the pipe: read it, but wait for nothing
                    // more, since a daemon may hold the pipe open for good.
                    let mut ended = false;
                    while !kept.full() {
                        match reader.try_read(&mut buffer) {
                            Ok(0) => {
                                ended = true;
                                break;
                            }
                            Ok(n) => kept.push(&buffer[..n]),
                            Err(_) => break,
                        }
                    }
                    if let Some(report) = report.take() {
                        let _ = report.send(kept.clone());
                    }
                    if ended {
                        break;
                    }
                }
            }
        }
        if let Some(report) = report {
            let _ = report.send(kept);
        }
    });
    (exited_tx, kept_rx)
}

/// The first [`KEPT_BYTES`] of an output, and how many bytes came after them.
#[derive(Clone, Debug, Default, PartialEq)]
struct Kept {
    bytes: Vec<u8>,
    dropped: u64,
}

impl Kept {
    fn push(&mut self, chunk: &[u8]) {
        let room = KEPT_BYTES.saturating_sub(self.bytes.len()).min(chunk.len());
        self.bytes.extend_from_slice(&chunk[..room]);
        self.dropped += (chunk.len() - room) as u64;
    }

    fn full(&self) -> bool {
        self.bytes.len() >= KEPT_BYTES
    }

    /// The first lines, for one line of log.
    fn summary(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        let lines: Vec<&str> = text.lines().take(OUTPUT_LINES).collect();
        let mut summary = lines.join(" | ");
        if self.dropped > 0 {
            summary.push_str(&format!(" ({} more bytes not kept)", self.dropped));
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_as_people_write_them() {
        assert_eq!(RecycleAction::parse("none"), Ok(RecycleAction::None));
        let term = RecycleAction::Signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(RecycleAction::parse("signal:TERM"), Ok(term.clone()));
        assert_eq!(RecycleAction::parse("signal:sigterm"), Ok(term.clone()));
        assert_eq!(term.to_string(), "signal:TERM");
        assert!(
            RecycleAction::parse("signal:BOGUS")
                .unwrap_err()
                .contains("names no signal")
        );
        let exec = RecycleAction::parse("exec:sh -c 'echo recycled'").unwrap();
        assert_eq!(
            exec,
            RecycleAction::Exec(vec!["sh".into(), "-c".into(), "echo recycled".into()])
        );
        assert_eq!(exec.to_string(), "exec:sh -c 'echo recycled'");
        assert!(
            RecycleAction::parse("exec:no-such-command-here --now")
                .unwrap_err()
                .contains("not an executable file")
        );
        assert!(RecycleAction::parse("reboot").is_err());
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn an_exec_action_reports_its_status_and_first_lines() {
        let (result, detail) = exec(&sh("echo one; echo two >&2; exit 3")).await;
        assert_eq!(result, "failed");
        assert!(detail.contains("exit status: 3"), "{detail}");
        assert!(detail.contains("one | two"), "{detail}");
    }

    #[test]
    fn only_the_first_bytes_of_an_output_are_kept_and_the_rest_is_counted() {
        let mut kept = Kept::default();
        kept.push(b"one\ntwo\n");
        assert_eq!(kept.summary(), "one | two");
        let mut kept = Kept::default();
        for _ in 0..1000 {
            kept.push(&[b'x'; 1000]);
        }
        assert_eq!(
            kept.bytes.len(),
            KEPT_BYTES,
            "never more than {KEPT_BYTES} bytes"
        );
        assert!(kept.full());
        assert_eq!(kept.dropped, 1_000_000 - KEPT_BYTES as u64);
        assert!(kept.summary().ends_with(" (995904 more bytes not kept)"));
        let mut kept = Kept::default();
        kept.push(b"1\n2\n3\n4\n5\n6\n7\n");
        assert_eq!(kept.summary(), "1 | 2 | 3 | 4 | 5", "the first five lines");
    }

    #[tokio::test]
    async fn an_exec_action_ends_with_its_command_not_with_its_output() {
        // A daemon left behind holds the output pipe open for 30 s.
        let (result, detail) = tokio::time::timeout(
            Duration::from_secs(20),
            exec(&sh("sleep 30 & echo restarted $!")),
        )
        .await
        .expect("the result comes from the command's exit");
        let daemon = detail
            .rsplit(' ')
            .next()
            .and_then(|pid| pid.parse::<i32>().ok());
        if let Some(pid) = daemon {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert_eq!(result, "ok", "{detail}");
        assert!(detail.contains("output: restarted"), "{detail}");
        assert!(daemon.is_some(), "{detail}");
    }

    #[tokio::test]
    async fn a_large_output_is_read_to_its_end_and_only_its_start_kept() {
        let (result, detail) = exec(&sh("echo first; head -c 10000000 /dev/zero")).await;
        assert_eq!(result, "ok", "{detail}");
        assert!(detail.contains("output: first"), "{detail}");
        assert!(detail.contains("more bytes not kept"), "{detail}");
        assert!(detail.len() <= KEPT_BYTES + 200, "{}", detail.len());
    }
}
