//! `memprobe drain`: asks a running memprobe to drain (`POST /drain`), and with `--wait`
//! waits for its last session — for systemd's `ExecStop=`, deploy scripts and preStop hooks.
//!
//! Exit status: 0 once drained (or, without `--wait`, once the drain has started); 1 at the
//! deadline with sessions still live, or when memprobe cannot be reached or refuses; 2 for bad
//! input (a flag, the token, a URL that is not memprobe's admin API).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::config::read_secret_file;
use crate::secret::Token;
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
    let (token, token_origin) = match &flags.token_file {
        Some(path) => {
            let token = read_secret_file(path)
                .and_then(|text| Token::new(&text))
                .map_err(|problem| bad(format!("--token-file: '{}' {problem}", path.display())))?;
            (token, path.display().to_string())
        }
        None => match std::env::var("MEMPROBE_ADMIN_TOKEN") {
            Ok(text) => {
                let token = Token::new(&text)
                    .map_err(|problem| bad(format!("MEMPROBE_ADMIN_TOKEN: {problem}")))?;
                (token, "MEMPROBE_ADMIN_TOKEN".to_string())
            }
            Err(_) => {
                return Err(bad(
                    "no token: give --token-file, or set MEMPROBE_ADMIN_TOKEN".to_string(),
                ));
            }
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
    let mut target = url.clone();
    target.set_path("/drain");
    target.set_query(wait.map(|d| format!("wait={}ms", d.as_millis())).as_deref());
    let auth = vec![("authorization", format!("Bearer {}", token.expose()))];
    // memprobe answers a wait at its deadline; a little more covers the round trip.
    let patience = wait.unwrap_or_default() + Duration::from_secs(10);
    let (code, body) = crate::client::post(&target, &auth, String::new(), patience)
        .await
        .map_err(|e| (NOT_DRAINED, format!("cannot reach memprobe at {url}: {e}")))?;
    let said: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let detail = |key: &str| said[key].as_str().unwrap_or("").to_string();
    match code {
        200 if wait.is_some() => Ok(format!(
            "drained: no session left after {:.1}s",
            said["waited_seconds"].as_f64().unwrap_or(0.0)
        )),
        200 => Ok(format!("draining: {}", detail("reason"))),
        503 => Err((
            NOT_DRAINED,
            format!("not drained by the deadline: {}", detail("reason")),
        )),
        401 => Err(bad(format!("memprobe refused the token in {token_origin}"))),
        404 => Err(bad(format!(
            "{url} has no admin API: start memprobe with --admin-token-file"
        ))),
        409 => Err((NOT_DRAINED, format!("refused: {}", detail("error")))),
        other => Err((
            NOT_DRAINED,
            format!("memprobe answered {other}: {}", detail("error")),
        )),
    }
}
