//! Recycle actions (`--on-recycle`): what restarts the server once it must be restarted,
//! where no kubelet does it (VMs under systemd, Docker hosts with `restart: always`).
//!
//! - `none` (the default): in Kubernetes the liveness probe on `/healthz` restarts the server.
//! - `signal:TERM` (any signal name): sent once to the incarnation judged, through the
//!   pidfd taken when it was found ([`ProcessHandle`]), never to a pid number: a retry after
//!   it exited signals nothing, whoever holds its pid now. Its supervisor starts a fresh one.
//! - `exec:COMMAND ARGS…`: run once, without a shell (`exec:sh -c '…'` asks for one), with a
//!   60 s timeout; its exit status and first lines of output are logged and in `/status`.
//!
//! Once per incarnation: if the target is still the same incarnation `--recycle-retry` after
//! the action, it runs again, and the attempt is counted. The action reads the published
//! snapshot like any outlet; its outcome goes back to the monitor through the operator's
//! channel, so `/status` and `/metrics` show it.

use std::fmt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::policy::State;
use crate::sources::operator::Requests;
use crate::sources::proc::handle::ProcessHandle;
use crate::status::Snapshot;

/// The longest an `exec:` action may run.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of an `exec:` action's output kept.
const OUTPUT_LINES: usize = 5;

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

/// How one run of the action went.
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
                // threads that answer probes.
                let sent = tokio::task::spawn_blocking(move || handle.signal(signal, name)).await;
                match sent {
                    Ok(Ok(done)) => ("ok", done),
                    Ok(Err(e)) => ("failed", e.to_string()),
                    Err(e) => ("failed", format!("{name}: {e}")),
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

async fn exec(argv: &[String]) -> (&'static str, String) {
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = match command.spawn() {
        Ok(child) => tokio::time::timeout(EXEC_TIMEOUT, child.wait_with_output()).await,
        Err(e) => return ("failed", format!("cannot start {}: {e}", argv[0])),
    };
    match output {
        Err(_) => (
            "timeout",
            format!("killed after {}s", EXEC_TIMEOUT.as_secs()),
        ),
        Ok(Err(e)) => ("failed", e.to_string()),
        Ok(Ok(out)) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let lines: Vec<&str> = text.lines().take(OUTPUT_LINES).collect();
            let result = if out.status.success() { "ok" } else { "failed" };
            (
                result,
                format!("{}; output: {}", out.status, lines.join(" | ")),
            )
        }
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

    #[tokio::test]
    async fn an_exec_action_reports_its_status_and_first_lines() {
        let argv: Vec<String> = ["sh", "-c", "echo one; echo two >&2; exit 3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (result, detail) = exec(&argv).await;
        assert_eq!(result, "failed");
        assert!(detail.contains("exit status: 3"), "{detail}");
        assert!(detail.contains("one | two"), "{detail}");
    }
}
