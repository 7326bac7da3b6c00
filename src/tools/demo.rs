//! `memprobe demo`: the whole story on a machine with no media server, in about a minute.
//!
//! It starts `memprobe workload` as a child — waves of simulated sessions that fragment
//! glibc's heap — and watches it with the real sidecar and demo settings: one sample a
//! second, draining after 10 s over the threshold, recycle 20 s later. The threshold sits
//! between the workload's live memory (a few MiB) and the resident memory glibc keeps after
//! a few waves (over 200 MiB here), so a newcomer sees healthy → elevated → draining →
//! recycle. With `--allocator jemalloc` the same workload gives its memory back after each
//! wave, and the spikes never last long enough to drain.

use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::time::Instant;

use crate::Sidecar;
use crate::config::{Config, DemoFlags, LogFormat};
use crate::policy::State;
use crate::sources::MemoryKind;
use crate::sources::proc::target::TargetSpec;
use crate::status::Status;
use crate::units::{Bytes, SizeOrPercent};

pub const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
const THRESHOLD_BYTES: u64 = 128 << 20;
/// Long enough for every wave of the workload to have run and been judged.
const JEMALLOC_WATCH: Duration = Duration::from_secs(45);
/// The glibc story takes about 45 s here; past this something is wrong.
const GIVE_UP: Duration = Duration::from_secs(150);

fn config(pid: i32, listen: std::net::SocketAddr) -> Config {
    Config {
        target: TargetSpec::Pid(pid),
        user: None,
        include_children: false,
        interval: Duration::from_secs(1),
        memory: MemoryKind::Rss,
        threshold: SizeOrPercent::Bytes(THRESHOLD_BYTES),
        critical: None,
        memory_limit: None,
        sustain: Duration::from_secs(10),
        idle_sustain: Duration::from_secs(10),
        kms: None,
        kms_off: None,
        janus: None,
        memory_source: crate::config::MemorySource::Proc,
        drain_timeout: Duration::from_secs(20),
        min_drain: Duration::from_secs(5),
        listen,
        agent_listen: None,
        agent_weight: Default::default(),
        on_recycle: crate::outlets::recycle::RecycleAction::None,
        recycle_retry: Duration::from_secs(300),
        shutdown_delay: Duration::ZERO,
        history: Duration::from_secs(300),
        admin_token: None,
        log_format: LogFormat::Text,
    }
}

pub async fn run(flags: DemoFlags) -> ExitCode {
    let jemalloc = flags.allocator == crate::config::DemoAllocator::Jemalloc;
    if jemalloc && !Path::new(JEMALLOC).exists() {
        eprintln!(
            "memprobe: --allocator: 'jemalloc' needs {JEMALLOC} (apt-get install libjemalloc2)"
        );
        return ExitCode::from(2);
    }
    let listener = match TcpListener::bind(flags.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "memprobe: --listen {}: cannot listen there: {e} (try --listen 127.0.0.1:8900)",
                flags.listen
            );
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(flags.listen);

    let mut workload = Command::new(match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("memprobe: cannot find my own executable to start the workload: {e}");
            return ExitCode::FAILURE;
        }
    });
    // Named for what it is, so the lines say "demo-workload", not "memprobe".
    workload
        .arg0("demo-workload")
        .arg("workload")
        .stdin(Stdio::piped()) // held open: the workload exits when the demo does
        .stdout(Stdio::null())
        .kill_on_drop(true);
    if jemalloc {
        workload.env("LD_PRELOAD", JEMALLOC);
    }
    let mut child = match workload.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("memprobe: cannot start the workload: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(pid) = child.id() else {
        eprintln!("memprobe: the workload exited at once");
        return ExitCode::FAILURE;
    };

    println!("memprobe demo: open http://{addr}/ to watch it as a chart");
    println!(
        "  watching demo-workload, media-like sessions (pid {pid}, {} malloc)",
        if jemalloc { "jemalloc" } else { "glibc" }
    );
    println!(
        "  threshold {}, one sample a second, drain after 10s over it, recycle 20s later",
        Bytes(THRESHOLD_BYTES)
    );
    println!("  try: curl -i http://{addr}/ready   (503 once draining: no new sessions)");
    println!("       curl -i http://{addr}/healthz (503 at recycle: restart the server)");
    println!("       curl http://{addr}/status  |  curl http://{addr}/metrics");
    println!();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = crate::Shutdown::on(async move {
        tokio::select! {
            _ = stopped => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    });
    let sidecar = Sidecar::start(config(pid as i32, addr), listener, None, shutdown);
    let outcome = follow(sidecar.snapshots.clone(), jemalloc).await;
    let _ = stop.send(());
    if let Err(e) = sidecar.wait().await {
        eprintln!("memprobe: {e}");
    }
    let _ = child.kill().await;
    outcome
}

/// Prints one line per sample until the story has been told.
async fn follow(
    mut snapshots: tokio::sync::watch::Receiver<std::sync::Arc<crate::status::Snapshot>>,
    jemalloc: bool,
) -> ExitCode {
    let start = Instant::now();
    let mut printed = 0;
    let mut worst = State::Healthy;
    loop {
        let deadline = start + if jemalloc { JEMALLOC_WATCH } else { GIVE_UP };
        let changed = tokio::time::timeout_at(deadline, snapshots.changed()).await;
        let status = snapshots.borrow_and_update().status.clone();
        if status.counters.samples_total > printed {
            printed = status.counters.samples_total;
            println!("{}", line(start.elapsed(), &status));
        }
        if matches!(status.state, State::Draining | State::Recycle) {
            worst = status.state;
        }
        match (changed, status.state) {
            (_, State::Recycle) => {
                println!();
                println!(
                    "recycle: /healthz answers 503, so the kubelet restarts the server now that it \
                     has drained. With jemalloc it stays healthy: memprobe demo --allocator jemalloc"
                );
                return ExitCode::SUCCESS;
            }
            (_, State::Lost) if printed > 0 => {
                eprintln!("memprobe: the workload exited unexpectedly");
                return ExitCode::FAILURE;
            }
            (Err(_), _) if jemalloc && worst == State::Healthy => {
                println!();
                println!(
                    "stayed ready for {}s: jemalloc gave each wave's memory back, so the spikes \
                     never lasted the 10s it takes to drain",
                    JEMALLOC_WATCH.as_secs()
                );
                return ExitCode::SUCCESS;
            }
            (Err(_), _) => {
                eprintln!(
                    "memprobe: the demo did not reach recycle in time (state {:?})",
                    status.state
                );
                return ExitCode::FAILURE;
            }
            (Ok(Err(_)), _) => return ExitCode::FAILURE,
            (Ok(Ok(())), _) => {}
        }
    }
}

fn line(elapsed: Duration, status: &Status) -> String {
    let rss = status.memory.as_ref().map_or(0, |m| m.sample.rss_bytes);
    let code = |ok: bool| if ok { 200 } else { 503 };
    format!(
        "[{:>3}s] rss {:>10}  threshold {}  {:<8}  /ready {}  /healthz {}",
        elapsed.as_secs(),
        Bytes(rss).to_string(),
        Bytes(status.threshold.bytes),
        status.state.as_str(),
        code(status.ready),
        code(status.live),
    )
}
