//! The `memprobe` binary: parse, set up logging, bind, run, and map errors to an exit code.
//!
//! Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 1 when memprobe cannot do its job here
//! (the port is taken, a privilege is missing), 2 for invalid flags or environment, 101 for
//! a bug: a panic on any thread or task ends the whole process, never leaving it half-alive
//! (answering `/ready` from a view that no longer moves).

use std::process::ExitCode;

use clap::CommandFactory;
use clap::error::ErrorKind;
use memprobe::cli::{self, Invocation};
use memprobe::config::{Config, LogFormat, ParseError};
use memprobe::{Listeners, Shutdown, Sidecar};
use tokio::net::TcpListener;

/// The exit status after a panic anywhere (Rust's own for a panicking main).
const PANICKED: i32 = 101;

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("memprobe: internal error, stopping: {info}");
        std::process::exit(PANICKED);
    }));
    let invocation = match cli::parse(std::env::args_os()) {
        Ok(invocation) => invocation,
        Err(ParseError::Clap(e)) => return clap_outcome(e),
        Err(ParseError::Flag(e)) => {
            eprintln!("memprobe: {e}");
            return ExitCode::from(2);
        }
    };
    match invocation {
        Invocation::Workload(flags) => match memprobe::tools::workload::run(flags) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("memprobe workload: {e}");
                ExitCode::FAILURE
            }
        },
        Invocation::Drain(flags) => runtime(memprobe::tools::drain::run(flags)),
        Invocation::Demo(flags) => {
            if let Err(e) = init_logging(LogFormat::Text) {
                eprintln!("memprobe: {e}");
                return ExitCode::from(2);
            }
            runtime(memprobe::tools::demo::run(flags))
        }
        Invocation::Sidecar(config) => {
            if let Err(e) = init_logging(config.log_format) {
                eprintln!("memprobe: {e}");
                return ExitCode::from(2);
            }
            runtime(sidecar(*config))
        }
    }
}

/// Help and version go to stdout with status 0; usage errors, clap's whole message (its tips
/// included), go to stderr with status 2.
fn clap_outcome(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{}", cli::usage_error(&e));
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr at the level RUST_LOG gives (`info` by default; `debug`,
/// `memprobe=debug,warn`, ...). An unreadable RUST_LOG is invalid input like a bad flag.
fn init_logging(format: LogFormat) -> Result<(), String> {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter: Targets = match std::env::var("RUST_LOG") {
        Ok(text) if !text.trim().is_empty() => text.trim().parse().map_err(|_| {
            let shown: String = text.chars().take(100).collect();
            let more = if shown.len() < text.len() { "…" } else { "" };
            format!(
                "RUST_LOG: '{shown}{more}' is not a log filter (try info, debug or \
                 memprobe=debug,warn)"
            )
        })?,
        _ => Targets::new().with_default(tracing::Level::INFO),
    };
    // Colours on a terminal only, and none when NO_COLOR asks for none (no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry.with(layer).init(),
        LogFormat::Json => registry.with(layer.json().flatten_event(true)).init(),
    }
    Ok(())
}

/// One small current-thread runtime: the HTTP side only clones bytes, and /proc reads run on
/// the sampling thread.
fn runtime(work: impl Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(work),
        Err(e) => {
            eprintln!("memprobe: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn sidecar(config: Config) -> ExitCode {
    let listener = match TcpListener::bind(config.outlets.http.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "memprobe: --listen {}: cannot listen there: {e} (try another port, e.g. --listen 0.0.0.0:8900)",
                config.outlets.http.listen
            );
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .map_or(config.outlets.http.listen, |a| a);
    let target = &config.sources.proc.target;
    tracing::info!(%addr, watching = %target, "listening on {addr}, watching {target}");
    tracing::info!("{}", config.judging());
    let variables = std::env::vars_os().map(|(name, _)| name);
    for unknown in memprobe::config::unknown_variables(&cli::Cli::command(), variables) {
        tracing::warn!("{unknown}");
    }
    let agent = match bind_optional(
        config.outlets.agent.map(|a| a.listen),
        "--agent-listen",
        "try another port, e.g. --agent-listen 0.0.0.0:8897",
    )
    .await
    {
        Ok(Some((agent, bound))) => {
            tracing::info!(agent = %bound, "HAProxy agent on {bound}");
            Some(agent)
        }
        Ok(None) => None,
        Err(code) => return code,
    };
    let kms_gate = match bind_optional(
        config.outlets.kms_gate.as_ref().map(|g| g.listen),
        "--kms-gate",
        "is KMS itself still on that port? move it to another, e.g. 8889",
    )
    .await
    {
        Ok(Some((gate, bound))) => {
            tracing::info!(kms_gate = %bound, "KMS gate on {bound}");
            Some(gate)
        }
        Ok(None) => None,
        Err(code) => return code,
    };
    let listeners = Listeners {
        probes: listener,
        agent,
        kms_gate,
    };
    match Sidecar::start(config, listeners, Shutdown::on_signals())
        .wait()
        .await
    {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("memprobe: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Binds an optional listener (`flag` given as `at`): it and where it listens, or what to do
/// when it cannot.
async fn bind_optional(
    at: Option<std::net::SocketAddr>,
    flag: &str,
    hint: &str,
) -> Result<Option<(TcpListener, std::net::SocketAddr)>, ExitCode> {
    let Some(at) = at else {
        return Ok(None);
    };
    match TcpListener::bind(at).await {
        Ok(listener) => {
            let bound = listener.local_addr().map_or(at, |a| a);
            Ok(Some((listener, bound)))
        }
        Err(e) => {
            eprintln!("memprobe: {flag} {at}: cannot listen there: {e} ({hint})");
            Err(ExitCode::FAILURE)
        }
    }
}
