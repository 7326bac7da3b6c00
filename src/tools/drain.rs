//! `memprobe drain`: asks a running memprobe to drain (`POST /drain`), and with `--wait`
//! waits for its last session — for systemd's `ExecStop=`, deploy scripts and preStop hooks.
//!
//! Only an answer ends it. A connection that drops before memprobe answers (memprobe
//! restarted, a connection closed under it) means "not drained yet": it asks again, after a
//! short backoff, until its own deadline. Only a memprobe that refuses the very first
//! connection is taken as not there at all.
//!
//! A memprobe that answers "stopping" cannot tell when the last session ends: a waiter asks
//! again, as for a dropped connection.
//!
//! With no token at all (no `--token-file`, `MEMPROBE_ADMIN_TOKEN` unset or empty, as a
//! pod whose optional Secret is missing has it), the call goes without one: a memprobe with
//! no admin API (404) has nothing to drain through and nothing to wait for, so that is a
//! success — a preStop hook must not fail every pod deletion for it — while one that has an
//! admin API (401) is told the token is missing.
//!
//! Exit status: 0 once drained (or, without `--wait`, once the drain has started), or when
//! neither side has a token; 1 at the deadline with sessions still live, when memprobe
//! refuses, or cannot be reached at all; 2 for bad input (a flag, the token or its absence,
//! a URL that is not memprobe's admin API: a 200 or 404 whose body is not memprobe's).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio::time::Instant;

use crate::client::ClientError;
use crate::secret::{Token, read_secret_file};
use crate::units::DurationRange;

#[derive(Debug, Args)]
pub struct DrainFlags {
    /// Wait up to this long for the last session to end [default: do not wait]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub wait: Option<String>,
    /// memprobe's probe port
    #[arg(
        long,
        env = "MEMPROBE_DRAIN_URL",
        default_value = "http://127.0.0.1:8899",
        value_name = "URL"
    )]
    pub url: String,
    /// The file holding memprobe's --admin-token [default: MEMPROBE_ADMIN_TOKEN's value]
    #[arg(long, env = "MEMPROBE_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

const BAD_INPUT: u8 = 2;
const NOT_DRAINED: u8 = 1;
/// Without `--wait`, how long to keep asking for the drain to start.
const NO_WAIT_PATIENCE: Duration = Duration::from_secs(10);
/// memprobe answers a wait at its deadline; a little more covers the round trip.
const ROUND_TRIP: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// memprobe's shortest `?wait=`.
const SHORTEST_WAIT: Duration = Duration::from_millis(10);
/// How often a waiter says how many sessions are left: every tenth of `--wait`, between 1 s
/// and 30 s. Each is one answer of memprobe's, asked for the next slice of the wait.
const SAY_AT_MOST_EVERY: Duration = Duration::from_secs(30);
const SAY_AT_LEAST_EVERY: Duration = Duration::from_secs(1);

/// How long one call waits: a slice of `wait`, so that the waiter can say what is left.
fn slice_of(wait: Duration) -> Duration {
    (wait / 10).clamp(SAY_AT_LEAST_EVERY, SAY_AT_MOST_EVERY)
}

/// What one attempt means.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Answered: the line to print, exit 0.
    Done(String),
    /// Answered, or unreachable from the start: exit with this code and line.
    Fail(u8, String),
    /// memprobe refused the token (bad input: exit 2).
    TokenRefused,
    /// No answer on a connection made, or memprobe gone since: ask again.
    Retry(String),
    /// A slice of the wait ended with sessions left, and the deadline is later: say this
    /// line, and ask again at once.
    Waiting(String),
}

/// How a call goes: whether memprobe was reached before, whether it waits, and whether it
/// carries a token.
#[derive(Debug, Clone, Copy)]
struct Call {
    reached_before: bool,
    waiting: bool,
    with_token: bool,
    /// This call waits for a slice only: the deadline is later.
    slice: bool,
}

/// The outcome of one `POST /drain` (the status and body, or why none came).
fn judge(outcome: Result<(u16, &[u8]), &ClientError>, call: Call) -> Next {
    let Call {
        reached_before,
        waiting,
        with_token,
        slice,
    } = call;
    let (code, body) = match outcome {
        Ok(answer) => answer,
        Err(ClientError::Refused) if !reached_before => {
            return Next::Fail(NOT_DRAINED, "connection refused".to_string());
        }
        Err(e) => return Next::Retry(e.to_string()),
    };
    let said: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let detail = |key: &str| said[key].as_str().unwrap_or("").to_string();
    // An answer that means success must be memprobe's own: any web server answers 200 (or
    // 404) to a POST, and a drain taken as done that never began loses every call.
    let memprobes = match code {
        200 if waiting => said["drained"] == true && said["sessions"] == 0,
        200 => said["draining"].is_boolean() && said["state"].is_string(),
        404 => said["error"] == "not found",
        _ => true,
    };
    if !memprobes {
        return Next::Fail(
            BAD_INPUT,
            format!(
                "the answer (HTTP {code}, {} bytes) is not memprobe's: give --url memprobe's \
                 probe port (try http://127.0.0.1:8899)",
                body.len()
            ),
        );
    }
    match code {
        // The time is the whole wait's, across slices: the caller says it.
        200 if waiting => Next::Done("drained: no session left".to_string()),
        200 => Next::Done(format!("draining: {}", detail("reason"))),
        // A memprobe that stops (restarted, upgraded) knows nothing of the sessions: while
        // waiting, that is "not drained yet", and the memprobe that comes next is asked.
        503 if said["state"] == "stopping" && waiting => Next::Retry(
            "memprobe is stopping: asking again until the deadline (a new memprobe may answer)"
                .to_string(),
        ),
        503 if said["state"] == "stopping" => Next::Fail(
            NOT_DRAINED,
            "memprobe is stopping: it can take no drain now".to_string(),
        ),
        503 if waiting && slice && said["drained"] == false => {
            Next::Waiting(match said["sessions"].as_u64() {
                Some(1) => "waiting: 1 session left".to_string(),
                Some(n) => format!("waiting: {n} sessions left"),
                None => format!("waiting: {}", detail("reason")),
            })
        }
        503 => Next::Fail(
            NOT_DRAINED,
            format!("not drained by the deadline: {}", detail("reason")),
        ),
        401 if !with_token => Next::Fail(
            BAD_INPUT,
            "memprobe's admin API wants a token: give --token-file, or set MEMPROBE_ADMIN_TOKEN"
                .to_string(),
        ),
        401 => Next::TokenRefused,
        // Neither side has a token: there is no admin API to drain through or wait on.
        404 if !with_token => Next::Done(
            "no admin API (memprobe runs without --admin-token): nothing to drain or wait for"
                .to_string(),
        ),
        404 => Next::Fail(
            BAD_INPUT,
            "no admin API there: start memprobe with --admin-token-file".to_string(),
        ),
        409 => Next::Fail(NOT_DRAINED, format!("refused: {}", detail("error"))),
        other => Next::Fail(
            NOT_DRAINED,
            format!("memprobe answered {other}: {}", detail("error")),
        ),
    }
}

pub async fn run(flags: DrainFlags) -> ExitCode {
    match drain(&flags).await {
        Ok(line) => {
            println!("memprobe drain: {line}");
            ExitCode::SUCCESS
        }
        Err((code, line)) => {
            eprintln!("memprobe drain: {line}");
            ExitCode::from(code)
        }
    }
}

async fn drain(flags: &DrainFlags) -> Result<String, (u8, String)> {
    let bad = |line: String| (BAD_INPUT, line);
    let wait = flags
        .wait
        .as_deref()
        .map(|text| {
            DurationRange::STANDARD
                .parse(text)
                .map_err(|e| bad(format!("--wait: '{text}' {e}")))
        })
        .transpose()?;
    let token: Option<(Token, String)> = match &flags.token_file {
        Some(path) => {
            let token = read_secret_file(path)
                .and_then(|text| Token::new(&text))
                .map_err(|problem| bad(format!("--token-file: '{}' {problem}", path.display())))?;
            Some((token, path.display().to_string()))
        }
        None => match std::env::var("MEMPROBE_ADMIN_TOKEN") {
            Ok(text) if !text.is_empty() => {
                let token = Token::new(&text)
                    .map_err(|problem| bad(format!("MEMPROBE_ADMIN_TOKEN: {problem}")))?;
                Some((token, "MEMPROBE_ADMIN_TOKEN".to_string()))
            }
            _ => None,
        },
    };
    let url = url::Url::parse(&flags.url)
        .ok()
        .filter(|u| u.scheme() == "http" && u.host_str().is_some())
        .ok_or_else(|| {
            bad(format!(
                "--url: '{}' is not an http:// URL (try http://127.0.0.1:8899)",
                crate::secret::SecretUrl::redact(&flags.url)
            ))
        })?;
    let auth: Vec<(&str, String)> = token
        .iter()
        .map(|(token, _)| ("authorization", format!("Bearer {}", token.expose())))
        .collect();
    let started = Instant::now();
    let deadline = started + wait.unwrap_or(NO_WAIT_PATIENCE);
    let mut backoff = FIRST_BACKOFF;
    let mut reached = false;
    let resolver = crate::client::Resolver::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut target = url.clone();
        target.set_path("/drain");
        let mut slice = false;
        let mut asked = left;
        if let Some(wait) = wait {
            // Asked again, the wait is what is left of ours, a slice at a time.
            asked = left.min(slice_of(wait)).max(SHORTEST_WAIT);
            slice = asked < left;
            target.set_query(Some(&format!("wait={}ms", asked.as_millis())));
        }
        let outcome =
            crate::client::post(&resolver, &target, &auth, String::new(), asked + ROUND_TRIP).await;
        let next = judge(
            outcome.as_ref().map(|(code, body)| (*code, body.as_ref())),
            Call {
                reached_before: reached,
                waiting: wait.is_some(),
                with_token: token.is_some(),
                slice,
            },
        );
        reached |= !matches!(outcome, Err(ClientError::Refused));
        match next {
            Next::Done(line) if wait.is_some() => {
                return Ok(format!(
                    "{line} after {:.1}s",
                    started.elapsed().as_secs_f64()
                ));
            }
            Next::Done(line) => return Ok(line),
            Next::TokenRefused => {
                let origin = token.as_ref().map_or("", |(_, origin)| origin.as_str());
                return Err((BAD_INPUT, format!("memprobe refused the token in {origin}")));
            }
            Next::Fail(BAD_INPUT, line) => return Err((BAD_INPUT, format!("{url}: {line}"))),
            Next::Fail(code, line) if !reached => {
                return Err((code, format!("cannot reach memprobe at {url}: {line}")));
            }
            Next::Fail(code, line) => return Err((code, line)),
            Next::Waiting(line) => {
                let waited = crate::units::Human(started.elapsed());
                let left = crate::units::Human(deadline.saturating_duration_since(Instant::now()));
                eprintln!("memprobe drain: {line} after {waited} (waiting up to {left} more)");
            }
            Next::Retry(why) => {
                if Instant::now() + backoff >= deadline {
                    return Err((
                        NOT_DRAINED,
                        format!("not drained by the deadline: no answer from memprobe ({why})"),
                    ));
                }
                eprintln!("memprobe drain: no answer yet ({why}): asking again in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAITER: Call = Call {
        reached_before: true,
        waiting: true,
        with_token: true,
        slice: false,
    };
    const FIRST: Call = Call {
        reached_before: false,
        ..WAITER
    };
    const NO_WAIT: Call = Call {
        waiting: false,
        ..WAITER
    };
    const NO_TOKEN: Call = Call {
        with_token: false,
        ..FIRST
    };

    #[test]
    fn only_an_answer_ends_a_wait() {
        let dropped = ClientError::Failed("connection closed before message completed".into());
        assert!(
            matches!(judge(Err(&dropped), WAITER), Next::Retry(_)),
            "a dropped connection is not drained yet"
        );
        assert!(
            matches!(judge(Err(&dropped), FIRST), Next::Retry(_)),
            "even on the first connection"
        );
        assert!(
            matches!(judge(Err(&ClientError::Refused), WAITER), Next::Retry(_)),
            "memprobe gone after it was reached: restarting, ask again"
        );
        assert_eq!(
            judge(Err(&ClientError::Refused), FIRST),
            Next::Fail(NOT_DRAINED, "connection refused".into()),
            "nothing listening from the start: memprobe is not there"
        );
        let drained = br#"{"drained":true,"sessions":0,"waited_seconds":12.5}"#;
        assert_eq!(
            judge(Ok((200, drained)), WAITER),
            Next::Done("drained: no session left".into())
        );
        let stopping = br#"{"error":"memprobe is stopping","state":"stopping","drained":false}"#;
        assert!(
            matches!(judge(Ok((503, stopping)), WAITER), Next::Retry(l) if l.contains("stopping")),
            "a waiter told memprobe is stopping asks again: the sessions are still unknown"
        );
        assert!(
            matches!(judge(Ok((503, stopping)), NO_WAIT), Next::Fail(NOT_DRAINED, l) if l.contains("stopping")),
            "without --wait, a stopping memprobe is an answer"
        );
        let late = br#"{"drained":false,"sessions":2,"reason":"2 sessions still live"}"#;
        assert_eq!(
            judge(Ok((503, late)), WAITER),
            Next::Fail(
                NOT_DRAINED,
                "not drained by the deadline: 2 sessions still live".into()
            )
        );
        let slice = Call {
            slice: true,
            ..WAITER
        };
        assert_eq!(
            judge(Ok((503, late)), slice),
            Next::Waiting("waiting: 2 sessions left".into()),
            "a slice of the wait that ends with sessions left is said, and the wait goes on"
        );
        assert!(
            matches!(judge(Ok((503, stopping)), slice), Next::Retry(_)),
            "a stopping memprobe is asked again, as ever"
        );
        assert_eq!(slice_of(Duration::from_secs(59 * 60)), SAY_AT_MOST_EVERY);
        assert_eq!(slice_of(Duration::from_secs(5)), SAY_AT_LEAST_EVERY);
        assert_eq!(judge(Ok((401, b"{}")), WAITER), Next::TokenRefused);
    }

    #[test]
    fn a_success_must_be_memprobes_own_answer() {
        let not_memprobe = |code, body: &[u8], call| {
            matches!(
                judge(Ok((code, body)), call),
                Next::Fail(BAD_INPUT, l) if l.contains("is not memprobe's")
            )
        };
        assert!(
            not_memprobe(200, b"<html>Welcome to nginx!</html>", WAITER),
            "any web server's 200 is no drain"
        );
        assert!(
            not_memprobe(200, br#"{"ok":true}"#, NO_WAIT),
            "nor JSON that is not memprobe's"
        );
        assert!(
            not_memprobe(200, br#"{"drained":true,"sessions":2}"#, WAITER),
            "drained means no session left"
        );
        assert!(
            not_memprobe(404, b"Not Found", NO_TOKEN),
            "another server's 404 is not a memprobe without an admin API"
        );
        let draining = br#"{"draining":true,"requested_by":"admin","state":"draining","sessions":3,"reason":"drain requested by admin"}"#;
        assert_eq!(
            judge(Ok((200, draining)), NO_WAIT),
            Next::Done("draining: drain requested by admin".into())
        );
        let off = br#"{"error":"not found","hint":"the admin API is off: start memprobe with --admin-token-file"}"#;
        assert!(matches!(judge(Ok((404, off)), NO_TOKEN), Next::Done(_)));
    }

    #[test]
    fn with_no_token_on_either_side_there_is_nothing_to_drain_and_that_is_no_failure() {
        let off = br#"{"error":"not found","path":"/drain"}"#;
        assert!(
            matches!(judge(Ok((404, off)), NO_TOKEN), Next::Done(l) if l.contains("no admin API")),
            "no token here and no admin API there: a preStop hook succeeds"
        );
        assert!(
            matches!(judge(Ok((404, off)), FIRST), Next::Fail(BAD_INPUT, l) if l.contains("--admin-token-file")),
            "a token given to a memprobe without an admin API is a mistake to say"
        );
        assert!(
            matches!(judge(Ok((401, b"{}")), NO_TOKEN), Next::Fail(BAD_INPUT, l) if l.contains("MEMPROBE_ADMIN_TOKEN")),
            "an admin API there and no token here: say which token is missing"
        );
        assert_eq!(
            judge(Err(&ClientError::Refused), NO_TOKEN),
            Next::Fail(NOT_DRAINED, "connection refused".into()),
            "no token is no excuse for a memprobe that is not there"
        );
    }
}
