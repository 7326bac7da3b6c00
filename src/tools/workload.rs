//! `memprobe workload`: a real process whose memory behaves like a media server's.
//!
//! By default it runs waves of simulated sessions: wave *n* starts *n* threads at once, each
//! allocating `--session-size` in buffers of 0.5–60 KiB, holding them a moment, then freeing
//! all but about 1%. Those few survivors sit scattered across the allocator's heaps, so under
//! glibc malloc the freed memory between them cannot go back to the kernel: resident memory
//! ratchets up wave after wave while live memory stays tiny. Under jemalloc it comes back.
//! `--sessions-per-wave N` makes every wave the same size instead; `--keep-per-wave SIZE`
//! makes each wave also keep that much for good, as a leak would, so that resident memory
//! rises wave after wave on any malloc (musl's gives most of a fragmented heap back).
//!
//! It also takes commands on stdin, one per line, each answered with one line on stdout:
//!
//! | command        | effect                                                            |
//! |----------------|-------------------------------------------------------------------|
//! | `alloc 200MiB` | allocate and touch that much more (large blocks: `free` returns it) |
//! | `free`         | release everything `alloc` took                                   |
//! | `sessions N`   | run one wave of N sessions now                                    |
//! | `call`         | start one session that lasts until `hangup`, and answer at once    |
//! | `hangup`       | end the longest-running call                                      |
//! | `drain`        | start no more waves (out of rotation); running sessions go on      |
//! | `spawn 100MiB` | start a child workload holding that much                          |
//! | `exit`         | exit (so does the end of stdin)                                   |
//!
//! With `--report 250ms` it also says, on stdout and that often, what it holds live and how
//! many sessions run and have ended, as `report live=BYTES sessions=N ended=N waves=DONE/ALL`:
//! what no outside reader of the process can tell, and what the demo shows beside resident
//! memory.
//!
//! With `--serve-sessions 127.0.0.1:0` it also says its session count as a server would for
//! memprobe's `--sessions-url`: `GET /stats` on that address is answered with
//! `{"sessions":N,"ended":N,"live_bytes":BYTES}`, and its ready line names the URL
//! (`workload ready pid=PID sessions=http://127.0.0.1:PORT/stats`). The demo's drain ends on
//! that count.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use clap::Args;

use crate::units;

#[derive(Debug, Args)]
pub struct WorkloadFlags {
    /// Waves of sessions to run on its own, wave n with n sessions (0: only stdin commands)
    #[arg(long, default_value_t = 10)]
    pub waves: u32,
    /// Sessions in every wave (0: wave n has n)
    #[arg(long, default_value_t = 0)]
    pub sessions_per_wave: u32,
    /// Memory each wave keeps until the workload exits, as a leak would (counted as live)
    #[arg(long, value_parser = size)]
    pub keep_per_wave: Option<u64>,
    /// Memory each session allocates
    #[arg(long, default_value = "24MiB", value_parser = size)]
    pub session_size: u64,
    /// How long a session holds its buffers
    #[arg(long, default_value = "500ms", value_parser = duration)]
    pub hold: Duration,
    /// Pause between waves
    #[arg(long, default_value = "1500ms", value_parser = duration)]
    pub pause: Duration,
    /// Print a report line this often: live bytes, sessions, waves done (0s: never)
    #[arg(long, default_value = "0s", value_parser = duration)]
    pub report: Duration,
    /// Answer GET on this address with the session count as JSON, for memprobe --sessions-url
    #[arg(long, value_name = "ADDR")]
    pub serve_sessions: Option<std::net::SocketAddr>,
}

fn size(text: &str) -> Result<u64, units::UnitError> {
    units::parse_size(text)
}

fn duration(text: &str) -> Result<Duration, units::UnitError> {
    units::parse_duration(text)
}

/// The smallest and largest session buffer: the range media servers allocate in.
const BUFFER_BYTES: std::ops::RangeInclusive<usize> = 512..=60 * 1024;
/// One buffer in this many outlives its session.
const SURVIVOR_ONE_IN: u32 = 100;

/// What the workload holds: bytes its sessions and `alloc` hold, and sessions running.
/// Counted by the workload itself, so they are its live memory whatever the allocator keeps.
static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);
static SESSIONS: AtomicU32 = AtomicU32::new(0);
static SESSIONS_ENDED: AtomicU32 = AtomicU32::new(0);
static WAVES_DONE: AtomicU32 = AtomicU32::new(0);
/// Set by `drain`: no more waves start.
static DRAINED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// One report line: what the workload says of itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub live_bytes: u64,
    pub sessions: u32,
    /// Sessions that have run and ended so far.
    pub ended: u32,
    pub waves_done: u32,
    pub waves: u32,
}

impl Report {
    fn now(waves: u32) -> Self {
        Report {
            live_bytes: LIVE_BYTES.load(Ordering::Relaxed),
            sessions: SESSIONS.load(Ordering::Relaxed),
            ended: SESSIONS_ENDED.load(Ordering::Relaxed),
            waves_done: WAVES_DONE.load(Ordering::Relaxed),
            waves,
        }
    }

    /// Every wave has run and no session is left: what remains resident is what the
    /// allocator keeps.
    pub fn idle(&self) -> bool {
        self.waves_done == self.waves && self.sessions == 0
    }

    /// Reads a `report live=… sessions=… ended=… waves=…/…` line; None for any other line.
    pub fn parse(line: &str) -> Option<Self> {
        let mut words = line.trim().split(' ');
        if words.next()? != "report" {
            return None;
        }
        let mut field = |name: &str| words.next()?.strip_prefix(name)?.strip_prefix('=');
        let live_bytes = field("live")?.parse().ok()?;
        let sessions = field("sessions")?.parse().ok()?;
        let ended = field("ended")?.parse().ok()?;
        let (done, all) = field("waves")?.split_once('/')?;
        Some(Report {
            live_bytes,
            sessions,
            ended,
            waves_done: done.parse().ok()?,
            waves: all.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "report live={} sessions={} ended={} waves={}/{}",
            self.live_bytes, self.sessions, self.ended, self.waves_done, self.waves
        )
    }
}

/// A command read from stdin.
#[derive(Debug, PartialEq)]
pub enum Order {
    Alloc(u64),
    Free,
    Sessions(u32),
    Call,
    Hangup,
    Drain,
    Spawn(u64),
    /// Start this many threads that park for ever: a server whose released media keeps
    /// running (KMS with a deadlocked worker pool) holds its threads so.
    Threads(u32),
    Exit,
}

/// Parses one stdin line.
pub fn parse_order(line: &str) -> Result<Order, String> {
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or_default();
    let arg = words.next();
    let size_arg = || {
        arg.ok_or_else(|| format!("{verb} needs a size (try {verb} 200MiB)"))
            .and_then(|a| units::parse_size(a).map_err(|e| format!("{verb}: '{a}' {e}")))
    };
    match verb {
        "alloc" => size_arg().map(Order::Alloc),
        "spawn" => size_arg().map(Order::Spawn),
        "free" => Ok(Order::Free),
        "call" => Ok(Order::Call),
        "hangup" => Ok(Order::Hangup),
        "drain" => Ok(Order::Drain),
        "exit" => Ok(Order::Exit),
        "sessions" => arg
            .and_then(|n| n.parse().ok())
            .map(Order::Sessions)
            .ok_or_else(|| "sessions needs a count (try sessions 4)".to_string()),
        "threads" => arg
            .and_then(|n| n.parse().ok())
            .filter(|n| *n <= 1000)
            .map(Order::Threads)
            .ok_or_else(|| "threads needs a count up to 1000 (try threads 40)".to_string()),
        other => Err(format!(
            "unknown command '{other}' (try alloc 200MiB, free, sessions 4, call, hangup, \
             drain, spawn 100MiB, threads 40, exit)"
        )),
    }
}

/// Runs one session on this thread; returns the buffers that outlive it.
fn session(size: u64, hold: Duration) -> Vec<Box<[u8]>> {
    session_until(size, || thread::sleep(hold))
}

/// Runs one session on this thread that holds its buffers until `ended` returns.
fn session_until(size: u64, ended: impl FnOnce()) -> Vec<Box<[u8]>> {
    SESSIONS.fetch_add(1, Ordering::Relaxed);
    let mut rng = fastrand::Rng::new();
    let mut buffers = Vec::new();
    let mut total = 0u64;
    while total < size {
        let len = rng.usize(BUFFER_BYTES);
        // Filled, not zeroed, so every page is really touched.
        buffers.push(vec![0x5a_u8; len].into_boxed_slice());
        total += len as u64;
        LIVE_BYTES.fetch_add(len as u64, Ordering::Relaxed);
    }
    ended();
    let kept: Vec<_> = buffers
        .into_iter()
        .filter(|_| rng.u32(0..SURVIVOR_ONE_IN) == 0)
        .collect();
    let kept_bytes: u64 = kept.iter().map(|b| b.len() as u64).sum();
    LIVE_BYTES.fetch_sub(total - kept_bytes, Ordering::Relaxed);
    SESSIONS.fetch_sub(1, Ordering::Relaxed);
    SESSIONS_ENDED.fetch_add(1, Ordering::Relaxed);
    kept
}

/// Runs `count` sessions at once, each on its own thread (so on its own malloc arena).
fn wave(count: u32, size: u64, hold: Duration, survivors: &Mutex<Vec<Box<[u8]>>>) {
    let threads: Vec<_> = (0..count)
        .map(|_| thread::spawn(move || session(size, hold)))
        .collect();
    for t in threads {
        if let Ok(kept) = t.join()
            && let Ok(mut all) = survivors.lock()
        {
            all.extend(kept);
        }
    }
}

/// Runs the workload until `exit` or the end of stdin.
pub fn run(flags: WorkloadFlags) -> std::io::Result<()> {
    let survivors = Arc::new(Mutex::new(Vec::new()));
    if flags.waves > 0 {
        let survivors = Arc::clone(&survivors);
        let (size, hold, pause) = (flags.session_size, flags.hold, flags.pause);
        let (per_wave, keep) = (flags.sessions_per_wave, flags.keep_per_wave);
        thread::spawn(move || {
            for n in 1..=flags.waves {
                if DRAINED.load(Ordering::Relaxed) {
                    break;
                }
                wave(
                    if per_wave > 0 { per_wave } else { n },
                    size,
                    hold,
                    &survivors,
                );
                if let Some(keep) = keep
                    && let Ok(mut all) = survivors.lock()
                {
                    // Filled, so every page is resident; one block, kept with the survivors.
                    all.push(vec![0x5a_u8; keep as usize].into_boxed_slice());
                    LIVE_BYTES.fetch_add(keep, Ordering::Relaxed);
                }
                WAVES_DONE.store(n, Ordering::Relaxed);
                thread::sleep(pause);
            }
        });
    }
    // One writer at a time: report lines and answers never interleave.
    let stdout = Arc::new(Mutex::new(std::io::stdout()));
    // The ready line comes first, before any report.
    let mut ready = format!("workload ready pid={}", std::process::id());
    if let Some(addr) = flags.serve_sessions {
        let bound = serve_sessions(addr)?;
        ready.push_str(&format!(" sessions=http://{bound}/stats"));
    }
    say(&stdout, &ready)?;
    if !flags.report.is_zero() {
        let (stdout, every, waves) = (Arc::clone(&stdout), flags.report, flags.waves);
        thread::spawn(move || {
            loop {
                let line = Report::now(waves).to_string();
                if say(&stdout, &line).is_err() {
                    return;
                }
                thread::sleep(every);
            }
        });
    }

    let mut ballast: Vec<Vec<u8>> = Vec::new();
    // Each call's hangup: dropping it ends the call.
    let mut calls: std::collections::VecDeque<std::sync::mpsc::Sender<()>> = Default::default();
    let mut children: Vec<(Child, ChildStdin)> = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = match parse_order(&line) {
            Ok(Order::Alloc(bytes)) => {
                ballast.push(vec![0x5a_u8; bytes as usize]);
                LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed);
                format!("ok alloc {bytes}")
            }
            Ok(Order::Free) => {
                let freed: u64 = ballast.iter().map(|b| b.len() as u64).sum();
                ballast = Vec::new();
                LIVE_BYTES.fetch_sub(freed, Ordering::Relaxed);
                "ok free".to_string()
            }
            Ok(Order::Sessions(n)) => {
                wave(n, flags.session_size, flags.hold, &survivors);
                format!("ok sessions {n}")
            }
            Ok(Order::Call) => {
                let (hangup, heard) = std::sync::mpsc::channel::<()>();
                let (size, survivors) = (flags.session_size, Arc::clone(&survivors));
                thread::spawn(move || {
                    let kept = session_until(size, move || {
                        let _ = heard.recv();
                    });
                    if let Ok(mut all) = survivors.lock() {
                        all.extend(kept);
                    }
                });
                calls.push_back(hangup);
                "ok call".to_string()
            }
            Ok(Order::Hangup) => match calls.pop_front() {
                Some(hangup) => {
                    drop(hangup);
                    "ok hangup".to_string()
                }
                None => "error hangup: no call is on".to_string(),
            },
            Ok(Order::Drain) => {
                DRAINED.store(true, Ordering::Relaxed);
                "ok drain".to_string()
            }
            Ok(Order::Spawn(bytes)) => match spawn_child(bytes) {
                Ok((child, stdin)) => {
                    let answer = format!("ok spawn pid={}", child.id());
                    children.push((child, stdin));
                    answer
                }
                Err(e) => format!("error spawn: {e}"),
            },
            Ok(Order::Threads(n)) => {
                let started = (0..n)
                    .filter(|_| {
                        std::thread::Builder::new()
                            .stack_size(64 * 1024)
                            .spawn(|| {
                                loop {
                                    std::thread::park();
                                }
                            })
                            .is_ok()
                    })
                    .count();
                format!("ok threads {started}")
            }
            Ok(Order::Exit) => break,
            Err(e) => format!("error {e}"),
        };
        say(&stdout, &answer)?;
    }
    for (mut child, stdin) in children {
        drop(stdin);
        let _ = child.wait();
    }
    Ok(())
}

/// What `GET /stats` answers: the counts a media server would give of itself.
fn stats() -> String {
    format!(
        r#"{{"sessions":{},"ended":{},"live_bytes":{}}}"#,
        SESSIONS.load(Ordering::Relaxed),
        SESSIONS_ENDED.load(Ordering::Relaxed),
        LIVE_BYTES.load(Ordering::Relaxed)
    )
}

/// Binds `addr` now (so a taken port is an error at start) and answers `GET /stats` with
/// [`stats`] from a thread of its own; returns the address bound.
fn serve_sessions(addr: std::net::SocketAddr) -> std::io::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    thread::Builder::new()
        .name("workload-stats".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let app = axum::Router::new().route(
                    "/stats",
                    axum::routing::get(|| async {
                        (
                            [(axum::http::header::CONTENT_TYPE, "application/json")],
                            stats(),
                        )
                    }),
                );
                let _ = axum::serve(listener, app).await;
            });
        })?;
    Ok(bound)
}

/// Writes one whole line to stdout.
fn say(stdout: &Mutex<std::io::Stdout>, line: &str) -> std::io::Result<()> {
    let mut out = stdout
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    writeln!(out, "{line}")?;
    out.flush()
}

/// Starts a child workload that allocates `bytes`, and waits until it has. The child exits
/// when our end of its stdin closes, that is, when this process exits.
fn spawn_child(bytes: u64) -> std::io::Result<(Child, ChildStdin)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["workload", "--waves", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(std::io::Error::other("child has no pipes"));
    };
    writeln!(stdin, "alloc {bytes}")?;
    let mut lines = BufReader::new(stdout).lines();
    // "workload ready", then the answer to alloc.
    for _ in 0..2 {
        lines.next().transpose()?;
    }
    Ok((child, stdin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_parsed() {
        assert_eq!(parse_order("alloc 200MiB"), Ok(Order::Alloc(200 << 20)));
        assert_eq!(parse_order("free"), Ok(Order::Free));
        assert_eq!(parse_order("sessions 4"), Ok(Order::Sessions(4)));
        assert_eq!(parse_order("spawn 1Gi"), Ok(Order::Spawn(1 << 30)));
        assert_eq!(parse_order("exit"), Ok(Order::Exit));
        assert_eq!(parse_order("threads 40"), Ok(Order::Threads(40)));
        assert!(
            parse_order("threads 5000")
                .unwrap_err()
                .contains("up to 1000")
        );
        assert_eq!(parse_order("call"), Ok(Order::Call));
        assert_eq!(parse_order("hangup"), Ok(Order::Hangup));
        assert_eq!(parse_order("drain"), Ok(Order::Drain));
        assert!(
            parse_order("alloc")
                .unwrap_err()
                .contains("try alloc 200MiB")
        );
        assert!(
            parse_order("alloc lots")
                .unwrap_err()
                .contains("'lots' is not a size")
        );
        assert!(
            parse_order("dance")
                .unwrap_err()
                .starts_with("unknown command 'dance'")
        );
    }

    #[test]
    fn reports_read_back_and_other_lines_are_not_reports() {
        let report = Report {
            live_bytes: 3 << 20,
            sessions: 2,
            ended: 8,
            waves_done: 4,
            waves: 10,
        };
        assert_eq!(
            report.to_string(),
            "report live=3145728 sessions=2 ended=8 waves=4/10"
        );
        assert_eq!(Report::parse(&report.to_string()), Some(report));
        assert!(!report.idle());
        for other in [
            "ok alloc 5",
            "workload ready pid=3",
            "report live=x sessions=2 ended=0 waves=4/10",
            "report live=1 sessions=2 ended=0",
            "report sessions=2 live=1 ended=0 waves=1/1",
        ] {
            assert_eq!(Report::parse(other), None, "{other}");
        }
        let idle = Report::parse("report live=1 sessions=0 ended=6 waves=3/3").unwrap();
        assert!(idle.idle());
    }

    #[test]
    fn its_stats_give_the_session_count_at_the_pointer_the_demo_reads() {
        let stats = stats();
        let sessions = crate::sources::custom::parse_answer(stats.as_bytes(), Some("/sessions"));
        // Other tests run sessions meanwhile: the count itself may move.
        assert!(sessions.is_ok(), "{stats}");
        let json: serde_json::Value = serde_json::from_str(&stats).unwrap();
        assert!(
            json["ended"].is_u64() && json["live_bytes"].is_u64(),
            "{stats}"
        );
    }

    #[test]
    fn a_session_keeps_about_one_percent() {
        let kept: usize = session(8 << 20, Duration::ZERO)
            .iter()
            .map(|b| b.len())
            .sum();
        assert!(
            kept < (8 << 20) / 20,
            "far less than the session survives: {kept} bytes"
        );
    }
}
