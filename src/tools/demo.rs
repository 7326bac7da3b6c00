//! `memprobe demo`: the whole story on a machine with no media server, in about a minute.
//!
//! It starts `memprobe workload` as a child — waves of simulated sessions that fragment
//! glibc's heap — and watches it with the real sidecar and demo settings: one sample a
//! second, draining after 10 s over the threshold, recycle once the last session has ended
//! (at least 5 s later, at most 20 s). The threshold sits
//! between the memory the workload has in use (a few MiB) and the resident memory glibc keeps
//! after a few waves (over 200 MiB here), so a newcomer sees healthy → elevated → draining →
//! recycle. With `--allocator jemalloc` the same workload gives its memory back after each
//! wave, and the spikes never last long enough to drain; a twin on glibc's malloc runs beside
//! it, and the demo ends with both runs' idle figures side by side.
//!
//! The workload reports what it has in use (`--report`), and every line shows it beside
//! resident memory, as the page's chart does: fragmentation is resident memory high above
//! the memory in use, with no session left. It also says its session count as any server can
//! (`--serve-sessions`), and the sidecar reads it as `--sessions-url` would: the drain ends
//! when the last session has, as it would on a real server, not at `--drain-timeout`. A call
//! shows it: it comes in once memory is over the threshold, is still on when the drain begins
//! (the workload then starts no more waves, as a server out of rotation gets no new session),
//! and ends on screen, 7 s into the drain; the recycle follows at once.
//!
//! The recycle is carried out as `--on-recycle signal:TERM` would: memprobe ends the workload,
//! and the demo starts it again as a supervisor would, writing its pidfile, which is how the
//! sidecar finds it (the kubelet does this on Kubernetes, once `/healthz` fails). The lines
//! follow the fresh incarnation until it is healthy, and the story ends on its fresh heap.
//!
//! `--story quiet` tells another: the quiet-moment recycle (`--recycle-when-idle-within`).
//! Waves of the same size fragment the workload's memory, and each also keeps a few MiB on
//! purpose, so that its floor rises on any malloc (musl's gives most of a fragmented heap
//! back) while its peaks stay under the threshold; then the waves stop, as traffic does at
//! night. The forecast, scaled down from hours to seconds, says the floor will cross the
//! threshold soon, so once the workload has had no session for `--min-drain` it is drained
//! with the reason "quiet moment: …" and recycled — in the pause, before the threshold was
//! ever crossed. The page's transitions say so.
//!
//! Once the story is told, the page stays served (and the workload watched) until the user
//! stops the demo with Ctrl-C or SIGTERM, so it can be read at leisure; the exit status is
//! then the story's (0), or 130 when it was stopped before the end. The lines and the page
//! name the malloc the workload really runs: glibc's for a dynamically linked build, musl's
//! for the static musl binary. jemalloc is preloaded by its soname, found as the dynamic
//! loader finds any library on this architecture; a static binary cannot have its malloc
//! replaced so, and `--allocator jemalloc` is refused there (exit 2) before anything starts.

use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{Config, LogFormat};
use crate::outlets::http::HttpSettings;
use crate::outlets::recycle::{RecycleAction, RecycleSettings};
use crate::policy::ServerPolicy;
use crate::policy::State;
use crate::sidecar::Sidecar;
use crate::sources::MemoryKind;
use crate::sources::custom::{CustomSettings, Endpoint};
use crate::sources::proc::ProcSettings;
use crate::sources::proc::allocator::{self, Allocator};
use crate::sources::proc::target::TargetSpec;
use crate::sources::reported::Reported;
use crate::status::Status;
use crate::tools::workload::Report;
use crate::units::{Bytes, SizeOrPercent};
use crate::{forecast, outlets, policy, sources};

/// jemalloc's soname: an `LD_PRELOAD` entry with no slash is searched for as the dynamic
/// loader searches for any library (its cache, then this architecture's directories).
pub const JEMALLOC: &str = "libjemalloc.so.2";
/// jemalloc's settings: a background thread hands freed pages back even while idle, as the
/// deploy/ setups have it for KMS; and since the demo's sessions last a second where a call
/// lasts minutes, the decay is scaled down with them (jemalloc's default is 10 s).
const JEMALLOC_CONF: &str = "background_thread:true,dirty_decay_ms:1000";
const THRESHOLD_BYTES: u64 = 128 << 20;
/// The quiet story's threshold: above its peaks (its floor, about 100 MiB of kept memory and
/// what glibc fragments, plus a wave's 32 MiB live), so only the forecast can act.
const QUIET_THRESHOLD_BYTES: u64 = 320 << 20;
/// The quiet story's waves: that many, of that many sessions, each wave keeping that much.
const QUIET_WAVES: u32 = 12;
const QUIET_SESSIONS: u32 = 2;
const QUIET_SESSION_SIZE: &str = "16MiB";
const QUIET_KEEP: u64 = 8 << 20;
/// How long each of its sessions lasts: past two polls of the session count (500ms), so
/// that the sidecar sees every wave, and "no session for 5s" is said only in the pause.
const QUIET_HOLD: &str = "1200ms";
/// A server's forecast (floors of 5 min over at least 6 h) scaled down to the story's minute.
const QUIET_FORECAST: forecast::Settings = forecast::Settings {
    bucket: Duration::from_secs(2),
    min_span: Duration::from_secs(20),
    min_floors: 8,
    window: Duration::from_secs(300),
};
/// `--recycle-when-idle-within` for the quiet story: generous, as the forecast is seconds.
const QUIET_WITHIN: Duration = Duration::from_secs(300);
/// How long after its last wave a workload's resident memory is read as its idle figure:
/// jemalloc hands freed pages back over about 10 s (its default `dirty_decay_ms`).
const SETTLE: Duration = Duration::from_secs(12);
/// The glibc story takes about 30 s here; past this something is wrong.
const GIVE_UP: Duration = Duration::from_secs(150);
/// What the page keeps once the story is told and the demo goes on serving it.
const HISTORY: Duration = Duration::from_secs(30 * 60);
/// The exit status of a demo stopped before its story ended (as a shell shows SIGINT).
const INTERRUPTED: u8 = 130;
/// How often the workload reports its live bytes.
const REPORT_EVERY: &str = "250ms";

/// How often the sidecar reads the workload's session count, and how long it waits for it:
/// the waves keep both cores busy, and a late answer must not look like a hung server.
const SESSIONS_POLL: Duration = Duration::from_millis(500);
const SESSIONS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoAllocator {
    /// glibc's malloc, which fragments
    Glibc,
    /// jemalloc from Debian's libjemalloc2
    Jemalloc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Story {
    /// memory over the threshold: drained, recycled once its last session ended
    Drain,
    /// memory forecast over the threshold: recycled at a quiet moment, before it crosses
    Quiet,
}

#[derive(Debug, clap::Args)]
pub struct DemoFlags {
    /// Which story to tell
    #[arg(long, value_enum, default_value_t = Story::Drain)]
    pub story: Story,
    /// Allocator for the workload
    #[arg(long, value_enum, default_value_t = DemoAllocator::Glibc)]
    pub allocator: DemoAllocator,
    /// Address for the demo's endpoints
    #[arg(long, default_value = "127.0.0.1:8899")]
    pub listen: std::net::SocketAddr,
}

fn config(
    pidfile: std::path::PathBuf,
    listen: std::net::SocketAddr,
    sessions: Option<Endpoint>,
    story: Story,
) -> Config {
    let interval = Duration::from_secs(1);
    let custom = sessions.map(|from| CustomSettings {
        from,
        poll: SESSIONS_POLL,
        timeout: SESSIONS_TIMEOUT,
        failures: 3,
        hang_timeout: None,
    });
    let server = custom
        .as_ref()
        .map_or_else(ServerPolicy::default, |c| ServerPolicy {
            name: "server",
            failures: c.failures,
            hang_timeout: c.hang_timeout.unwrap_or(Duration::MAX),
        });
    Config {
        sources: sources::Settings {
            proc: ProcSettings {
                // A pidfile, as a supervisor keeps one: the restarted workload is found in it.
                target: TargetSpec::Pidfile(pidfile),
                user: None,
                include_children: false,
            },
            memory: MemoryKind::Rss,
            memory_limit: None,
            memory_from: sources::MemoryFrom::Proc,
            kms: None,
            kms_off: None,
            kms_said: None,
            janus: None,
            custom,
        },
        policy: policy::Settings {
            threshold: SizeOrPercent::Bytes(threshold_bytes(story)),
            critical: None,
            sustain: Duration::from_secs(10),
            // The demo's sessions last half a second and its samples come once a second, so
            // a sample can fall between two waves for a while: the idle rule would read that
            // as no sessions at all. Over the threshold for 10s (--sustain) is the rule shown.
            idle_sustain: Duration::from_secs(60),
            quiet_within: (story == Story::Quiet).then_some(QUIET_WITHIN),
            drain_timeout: Duration::from_secs(20),
            min_drain: Duration::from_secs(5),
            server,
            reconnect_grace: Duration::ZERO,
            max_gap: policy::Settings::max_gap_at(interval),
        },
        outlets: outlets::Settings {
            http: HttpSettings {
                listen,
                shutdown_delay: Duration::ZERO,
                admin_token: None,
                admin_token_file: None,
            },
            agent: None,
            // As --on-recycle signal:TERM: the demo restarts the workload once it has exited,
            // as a supervisor would (the kubelet, on Kubernetes, once /healthz fails).
            recycle: RecycleSettings {
                action: RecycleAction::Signal(nix::sys::signal::Signal::SIGTERM),
                retry: Duration::from_secs(300),
            },
            kms_gate: None,
        },
        fleet: crate::fleet::Settings::default(),
        interval,
        history: HISTORY,
        log_format: LogFormat::Text,
    }
}

fn threshold_bytes(story: Story) -> u64 {
    match story {
        Story::Drain => THRESHOLD_BYTES,
        Story::Quiet => QUIET_THRESHOLD_BYTES,
    }
}

pub async fn run(flags: DemoFlags) -> ExitCode {
    let jemalloc = flags.allocator == DemoAllocator::Jemalloc;
    let story = flags.story;
    if jemalloc && story == Story::Quiet {
        eprintln!(
            "memprobe: --allocator jemalloc tells the drain story beside glibc, not --story \
             quiet (try memprobe demo --story quiet, on the workload's own malloc)"
        );
        return ExitCode::from(2);
    }
    // The workload is this binary: statically linked, it has no loader to preload into.
    if jemalloc && cfg!(target_feature = "crt-static") {
        eprintln!(
            "memprobe: --allocator jemalloc: this memprobe is a static binary, whose malloc \
             cannot be replaced by preloading jemalloc (run the demo from a dynamically linked \
             build: cargo run --release -- demo --allocator jemalloc)"
        );
        return ExitCode::from(2);
    }
    // In place before anything starts, so that a Ctrl-C during the story is ours to handle.
    let mut stop_asked = Box::pin(stop_asked());
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

    let waves: Vec<String> = match story {
        Story::Drain => Vec::new(),
        Story::Quiet => [
            "--waves",
            &QUIET_WAVES.to_string(),
            "--sessions-per-wave",
            &QUIET_SESSIONS.to_string(),
            "--session-size",
            QUIET_SESSION_SIZE,
            "--keep-per-wave",
            &QUIET_KEEP.to_string(),
            "--hold",
            QUIET_HOLD,
        ]
        .map(String::from)
        .to_vec(),
    };
    let mut watched = match Workload::start(jemalloc, true, &waves).await {
        Ok(w) => w,
        Err(e) => {
            eprintln!("memprobe: cannot start the workload: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The loader says so on stderr and goes on without a library it cannot find.
    if jemalloc && watched.allocator != Allocator::Jemalloc {
        eprintln!(
            "memprobe: --allocator jemalloc: the dynamic loader did not preload {JEMALLOC} into \
             the workload (is jemalloc installed? apt-get install libjemalloc2)"
        );
        return ExitCode::from(2);
    }
    // The jemalloc run is told beside the same workload on glibc's malloc.
    let twin = if jemalloc {
        match Workload::start(false, false, &[]).await {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!("memprobe: cannot start the glibc workload beside it: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let pid = watched.pid;
    let pidfile = match Pidfile::new() {
        Ok(pidfile) => pidfile,
        Err(e) => {
            eprintln!(
                "memprobe: cannot make a directory for the workload's pidfile in {}: {e}",
                std::env::temp_dir().display()
            );
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = pidfile.write(pid) {
        eprintln!(
            "memprobe: cannot write the workload's pidfile {}: {e}",
            pidfile.0.display()
        );
        return ExitCode::FAILURE;
    }

    println!("memprobe demo: open http://{addr}/ to watch it as a chart");
    println!(
        "  watching demo-workload, media-like sessions (pid {pid}, {}{})",
        watched.allocator.malloc(),
        if jemalloc {
            ", MALLOC_CONF=background_thread:true,dirty_decay_ms:1000"
        } else {
            ""
        }
    );
    if let Some(twin) = &twin {
        println!(
            "  beside it, the same workload on {} (pid {}), not watched",
            twin.allocator.malloc(),
            twin.pid
        );
    }
    match story {
        Story::Drain => println!(
            "  threshold {}, one sample a second, drain after 10s over it, recycle once its last \
             session has ended (5s to 20s later)",
            Bytes(THRESHOLD_BYTES)
        ),
        Story::Quiet => {
            println!(
                "  {QUIET_WAVES} waves of {QUIET_SESSIONS} sessions, then the waves stop, as \
                 traffic does at night; each wave also keeps {} on purpose, as a leak would, so \
                 the floor rises on any malloc, whatever {} fragments besides",
                Bytes(QUIET_KEEP),
                watched.allocator.malloc()
            );
            println!(
                "  threshold {}, one sample a second; the forecast scaled down from hours to \
                 seconds: floors of {}s over at least {}s",
                Bytes(QUIET_THRESHOLD_BYTES),
                QUIET_FORECAST.bucket.as_secs(),
                QUIET_FORECAST.min_span.as_secs()
            );
            println!(
                "  --recycle-when-idle-within {}: with no session for 5s and the threshold \
                 forecast within that, drain, and recycle once no session for 5s more",
                crate::units::Human(QUIET_WITHIN)
            );
        }
    }
    if let Some((url, _)) = &watched.sessions_url {
        println!("  its session count, as a server says it: curl {url}");
    }
    println!("  try: curl -i http://{addr}/ready   (503 once draining: no new sessions)");
    println!("       curl -i http://{addr}/healthz (503 at recycle: restart the server)");
    println!("       curl http://{addr}/status  |  curl http://{addr}/metrics");
    println!();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = crate::outlets::http::Shutdown::on(async move {
        let _ = stopped.await;
    });
    let sessions = watched.sessions_url.clone().map(|(_, from)| from);
    let sidecar = Sidecar::start_with_reports(
        config(pidfile.0.clone(), addr, sessions, story),
        match story {
            Story::Drain => forecast::Settings::DEFAULT,
            Story::Quiet => QUIET_FORECAST,
        },
        crate::sidecar::Listeners {
            probes: listener,
            agent: None,
            kms_gate: None,
        },
        shutdown,
        Some(watched.shown.clone()),
    );
    let told = tokio::select! {
        outcome = follow(sidecar.snapshots.clone(), &mut watched, twin.as_ref(), story, &pidfile) => Some(outcome),
        () = &mut stop_asked => None,
    };
    let outcome = match told {
        // The story told: the page goes on being served until the user stops the demo.
        Some(outcome) if outcome == ExitCode::SUCCESS => {
            println!();
            println!(
                "the page stays at http://{addr}/, still watching and keeping the last {} \
                 minutes, until you stop the demo: Ctrl-C",
                HISTORY.as_secs() / 60
            );
            stop_asked.await;
            outcome
        }
        Some(failed) => failed,
        None => {
            eprintln!("memprobe: demo stopped before the story ended");
            ExitCode::from(INTERRUPTED)
        }
    };
    let _ = stop.send(());
    if let Err(e) = sidecar.wait().await {
        eprintln!("memprobe: {e}");
    }
    let _ = watched.child.kill().await;
    if let Some(mut twin) = twin {
        let _ = twin.child.kill().await;
    }
    outcome
}

/// Resolves at the first SIGINT (Ctrl-C) or SIGTERM; the handlers are in place from the call
/// on, not from the first poll.
fn stop_asked() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(mut int), Ok(mut term)) = handlers else {
            // Without handlers the signals keep their default action: they still stop the demo.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
    }
}

/// A running `memprobe workload` and what it reports.
struct Workload {
    child: Child,
    pid: u32,
    /// The malloc it runs on, read from its mapped libraries once it was ready.
    allocator: Allocator,
    jemalloc: bool,
    /// Its whole latest report.
    reports: watch::Receiver<Option<Report>>,
    /// What the sidecar shows of it.
    shown: watch::Receiver<Option<Reported>>,
    /// Where its reports go: a restarted workload's go on the same channels.
    feed: Arc<Feed>,
    /// Its stdin, for orders (`call`, `hangup`, `drain`); closing it ends the workload.
    orders: Option<ChildStdin>,
    /// Where it says its session count (`--serve-sessions`), when asked to: the URL, and the
    /// field of its answer the sidecar reads.
    sessions_url: Option<(String, Endpoint)>,
    /// The address it serves it on, which a restarted workload serves it on again.
    sessions_addr: Option<std::net::SocketAddr>,
}

struct Feed {
    full: watch::Sender<Option<Report>>,
    show: watch::Sender<Option<Reported>>,
}

/// A workload started: the child, its pid, its stdout past the ready line, and the URL of
/// its session count when it serves one.
struct Started {
    child: Child,
    pid: u32,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    sessions: Option<String>,
}

impl Workload {
    /// Starts it with `waves` (its flags for them: none for its own default waves), and
    /// waits for its ready line; `serve` asks it to say its session count.
    async fn start(jemalloc: bool, serve: bool, waves: &[String]) -> std::io::Result<Self> {
        let serve_at = serve.then(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        let started = spawn(jemalloc, serve_at, waves).await?;
        let sessions_url = match &started.sessions {
            None => None,
            Some(url) => {
                let from = Endpoint::url(&format!("{url}#/sessions")).map_err(|problem| {
                    std::io::Error::other(format!("its session count URL {url} {problem}"))
                })?;
                Some((url.clone(), from))
            }
        };
        let sessions_addr = started
            .sessions
            .as_deref()
            .and_then(|url| url.strip_prefix("http://")?.split('/').next()?.parse().ok());
        let (full, reports) = watch::channel(None);
        let (show, shown) = watch::channel(None);
        let mut workload = Workload {
            child: started.child,
            pid: started.pid,
            allocator: Allocator::Unknown,
            jemalloc,
            reports,
            shown,
            feed: Arc::new(Feed { full, show }),
            orders: None,
            sessions_url,
            sessions_addr,
        };
        workload.follow(started.lines);
        Ok(workload)
    }

    /// Starts it again, as a supervisor restarts a server once the old one has exited: a
    /// fresh process (so a fresh heap) that runs no waves, says its session count where the
    /// old one did, and reports on the same channels.
    async fn restart(&mut self) -> std::io::Result<()> {
        let started = spawn(
            self.jemalloc,
            self.sessions_addr,
            &["--waves".into(), "0".into()],
        )
        .await?;
        self.child = started.child;
        self.pid = started.pid;
        self.follow(started.lines);
        Ok(())
    }

    /// Reads its allocator and takes its stdin, then sends each report line on.
    fn follow(&mut self, mut lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) {
        // Its ready line comes from its main, long after the loader mapped every library.
        self.allocator = procfs::process::Process::new(self.pid as i32)
            .map_or(Allocator::Unknown, |process| allocator::of(&process));
        self.orders = self.child.stdin.take();
        let feed = Arc::clone(&self.feed);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(report) = Report::parse(&line) {
                    feed.full.send_replace(Some(report));
                    feed.show.send_replace(Some(Reported {
                        live_bytes: report.live_bytes,
                        sessions: report.sessions,
                    }));
                }
            }
        });
    }

    /// Sends it one order; one it cannot take (it has exited) changes nothing in the story.
    async fn order(&mut self, order: &str) {
        if let Some(stdin) = &mut self.orders {
            let _ = stdin.write_all(format!("{order}\n").as_bytes()).await;
        }
    }

    /// Its resident memory now, when it can be read.
    fn rss(&self) -> Option<u64> {
        let process = procfs::process::Process::new(self.pid as i32).ok()?;
        crate::sources::proc::sample::sample_process(&process, MemoryKind::Rss)
            .ok()
            .map(|s| s.rss_bytes)
    }

    fn report(&self) -> Option<Report> {
        *self.reports.borrow()
    }

    fn idle(&self) -> bool {
        self.report().is_some_and(|r| r.idle())
    }
}

/// Starts `memprobe workload` with `waves`, saying its session count on `serve_at` when
/// given, and waits for its ready line.
async fn spawn(
    jemalloc: bool,
    serve_at: Option<std::net::SocketAddr>,
    waves: &[String],
) -> std::io::Result<Started> {
    let mut command = Command::new(std::env::current_exe()?);
    // Named for what it is, so the lines say "demo-workload", not "memprobe".
    command
        .arg0("demo-workload")
        .args(["workload", "--report", REPORT_EVERY])
        .args(waves)
        .stdin(Stdio::piped()) // held open: the workload exits when the demo does
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if let Some(addr) = serve_at {
        command.args(["--serve-sessions", &addr.to_string()]);
    }
    if jemalloc {
        command
            .env("LD_PRELOAD", JEMALLOC)
            .env("MALLOC_CONF", JEMALLOC_CONF);
    }
    let mut child = command.spawn()?;
    let (Some(pid), Some(stdout)) = (child.id(), child.stdout.take()) else {
        return Err(std::io::Error::other("it exited at once"));
    };
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
    let ready = match ready {
        Ok(Ok(Some(line))) if line.starts_with("workload ready") => line,
        Ok(Ok(Some(line))) => return Err(std::io::Error::other(format!("it said {line:?}"))),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(None)) => return Err(std::io::Error::other("it exited at once")),
        Err(_) => return Err(std::io::Error::other("it was not ready within 10s")),
    };
    let sessions = ready
        .split(' ')
        .find_map(|word| word.strip_prefix("sessions="))
        .map(String::from);
    if serve_at.is_some() && sessions.is_none() {
        return Err(std::io::Error::other(format!(
            "it did not say where it serves its session count: {ready:?}"
        )));
    }
    Ok(Started {
        child,
        pid,
        lines,
        sessions,
    })
}

/// The workload's pidfile, as a supervisor keeps one, in a directory of the demo's own (made
/// afresh, readable by the user alone, so nothing another user placed in /tmp is written
/// through); both removed when the demo ends.
struct Pidfile(std::path::PathBuf);

impl Pidfile {
    fn new() -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!(
            "memprobe-demo-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(Pidfile(dir.join("workload.pid")))
    }

    /// Writes `pid` whole: to a file beside it first, then renamed over it.
    fn write(&self, pid: u32) -> std::io::Result<()> {
        let next = self.0.with_extension("pid.next");
        std::fs::write(&next, format!("{pid}\n"))?;
        std::fs::rename(&next, &self.0)
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// How long into the drain the drain story's call goes on: past --min-drain (5s), so that
/// the recycle follows its end at once.
const CALL_INTO_DRAIN: Duration = Duration::from_secs(7);

/// The drain story's call: it comes in once memory is over the threshold, before the drain,
/// and ends during it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    NotYet,
    On,
    Ended,
}

/// What the lines are printed from.
struct Lines {
    start: Instant,
    printed: u64,
    story: Story,
}

impl Lines {
    /// Prints the status's sample, once; whether it was new.
    fn sample(&mut self, status: &Status, watched: &Workload, twin: Option<&Workload>) -> bool {
        if status.counters.samples_total <= self.printed {
            return false;
        }
        self.printed = status.counters.samples_total;
        let beside = twin.and_then(Workload::rss).map_or(String::new(), |rss| {
            format!("  (glibc beside it: rss {})", Bytes(rss))
        });
        let ended = watched.report().map(|r| r.ended);
        let said = match (self.story, status.forecast.threshold_in_seconds) {
            (Story::Drain, _) => String::new(),
            (Story::Quiet, Some(s)) => format!("  forecast: over it in {s}s"),
            (Story::Quiet, None) => "  forecast: none yet".to_string(),
        };
        println!(
            "{}{beside}{said}",
            line(self.start.elapsed(), status, ended)
        );
        true
    }
}

/// Prints one line per sample until the story has been told.
async fn follow(
    mut snapshots: tokio::sync::watch::Receiver<std::sync::Arc<crate::status::Snapshot>>,
    watched: &mut Workload,
    twin: Option<&Workload>,
    story: Story,
    pidfile: &Pidfile,
) -> ExitCode {
    let start = Instant::now();
    let mut lines = Lines {
        start,
        printed: 0,
        story,
    };
    // The most memory any sample saw: the quiet story ends before it crossed the threshold.
    let mut peak = 0;
    let mut worst = State::Healthy;
    let mut idle_since: Option<Instant> = None;
    let mut call = Call::NotYet;
    let mut draining_since: Option<Instant> = None;
    // Resident and live memory at the last sample, for the ending.
    let mut last: Option<(u64, Option<u64>)> = None;
    loop {
        let changed = tokio::time::timeout_at(start + GIVE_UP, snapshots.changed()).await;
        let status = snapshots.borrow_and_update().status.clone();
        if lines.sample(&status, watched, twin) {
            peak = peak.max(status.memory.as_ref().map_or(0, |m| m.deciding_bytes));
        }
        if let Some(m) = &status.memory {
            last = Some((m.sample.rss_bytes, status.reported.map(|r| r.live_bytes)));
        }
        if matches!(status.state, State::Draining | State::Recycle) {
            worst = status.state;
        }
        if let Some(twin) = twin
            && watched.idle()
            && twin.idle()
        {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= SETTLE && worst == State::Healthy {
                println!();
                compare(twin, watched);
                println!();
                println!(
                    "stayed ready for {}s: jemalloc gave each wave's memory back, so the spikes \
                     never lasted the 10s it takes to drain",
                    start.elapsed().as_secs()
                );
                return ExitCode::SUCCESS;
            }
        }
        if twin.is_none() {
            if story == Story::Drain && status.state == State::Elevated && call == Call::NotYet {
                watched.order("call").await;
                call = Call::On;
                println!(
                    "  a call comes in while memory is over the threshold: it is still on when \
                     the drain begins"
                );
            }
            if status.state == State::Draining && draining_since.is_none() {
                draining_since = Some(Instant::now());
                // Out of rotation: the load balancer sends it no new session.
                watched.order("drain").await;
                if call == Call::On {
                    println!(
                        "  draining: /ready answers 503, so no new session comes; the call in \
                         progress goes on, and the restart waits for it"
                    );
                }
            }
            if call == Call::On && draining_since.is_some_and(|t| t.elapsed() >= CALL_INTO_DRAIN) {
                watched.order("hangup").await;
                call = Call::Ended;
                println!(
                    "  the call ends, {}s into the drain",
                    CALL_INTO_DRAIN.as_secs()
                );
            }
        }
        // The recycle, seen as the state or, when the workload was already signalled and gone
        // before this snapshot was read, as the last transition.
        let recycled = status
            .transitions
            .iter()
            .rev()
            .find(|t| t.to == State::Recycle)
            .map(|t| t.reason.clone())
            .filter(|_| matches!(status.state, State::Recycle | State::Lost));
        match (changed, status.state, recycled) {
            (_, _, Some(_)) if twin.is_some() => {
                eprintln!(
                    "memprobe: even on jemalloc the workload stayed over the threshold: {}",
                    status.reason
                );
                return ExitCode::FAILURE;
            }
            (_, _, Some(reason)) if story == Story::Quiet => {
                if !quiet_ending(&status, &reason, peak) {
                    return ExitCode::FAILURE;
                }
                return restart(snapshots, watched, &mut lines, pidfile, last).await;
            }
            (_, _, Some(reason)) => {
                println!();
                if let Some((rss, Some(live))) = last {
                    println!(
                        "resident {} for {} in use: the rest is heap {} cannot give back",
                        Bytes(rss),
                        Bytes(live),
                        watched.allocator.malloc()
                    );
                }
                println!("recycle: {reason}");
                println!(
                    "/healthz answers 503: the kubelet would restart the server now that it has \
                     drained. With jemalloc it stays healthy: {}",
                    if cfg!(target_feature = "crt-static") {
                        "cargo run --release -- demo --allocator jemalloc (a dynamically linked \
                         build: this static one cannot preload it)"
                    } else {
                        "memprobe demo --allocator jemalloc"
                    }
                );
                return restart(snapshots, watched, &mut lines, pidfile, last).await;
            }
            (_, State::Lost, None) if lines.printed > 0 => {
                eprintln!("memprobe: the workload exited unexpectedly");
                return ExitCode::FAILURE;
            }
            (Err(_), _, _) => {
                eprintln!(
                    "memprobe: the demo did not reach {} in time (state {:?})",
                    if twin.is_some() { "idle" } else { "recycle" },
                    status.state
                );
                return ExitCode::FAILURE;
            }
            (Ok(Err(_)), _, _) => return ExitCode::FAILURE,
            (Ok(Ok(())), _, _) => {}
        }
    }
}

/// After the recycle: the workload, signalled by memprobe's recycle action, has exited; the
/// demo starts it again as a supervisor would, and follows the fresh incarnation until it is
/// healthy, its heap fresh.
async fn restart(
    mut snapshots: tokio::sync::watch::Receiver<std::sync::Arc<crate::status::Snapshot>>,
    watched: &mut Workload,
    lines: &mut Lines,
    pidfile: &Pidfile,
    before: Option<(u64, Option<u64>)>,
) -> ExitCode {
    if tokio::time::timeout(Duration::from_secs(10), watched.child.wait())
        .await
        .is_err()
    {
        eprintln!("memprobe: the workload did not exit on the recycle's SIGTERM");
        return ExitCode::FAILURE;
    }
    let old = watched.pid;
    if let Err(e) = watched.restart().await {
        eprintln!("memprobe: cannot start the workload again: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = pidfile.write(watched.pid) {
        eprintln!(
            "memprobe: cannot write the workload's pidfile {}: {e}",
            pidfile.0.display()
        );
        return ExitCode::FAILURE;
    }
    println!();
    println!(
        "restart: memprobe's recycle action (signal:TERM here) ended pid {old}; the demo started \
         the workload again, as a supervisor does: pid {}",
        watched.pid
    );
    let deadline = lines.start + GIVE_UP;
    loop {
        let changed = tokio::time::timeout_at(deadline, snapshots.changed()).await;
        let status = snapshots.borrow_and_update().status.clone();
        lines.sample(&status, watched, None);
        let fresh = status
            .target
            .as_ref()
            .is_some_and(|t| t.pid == Some(watched.pid as i32));
        if let (true, State::Healthy, Some(m)) = (fresh, status.state, &status.memory) {
            let was = before.map_or(String::new(), |(rss, _)| {
                format!(", where the old one ended at {}", Bytes(rss))
            });
            println!();
            println!(
                "fresh heap: resident {}{was}; {} again, /ready 200: it takes sessions again",
                Bytes(m.sample.rss_bytes),
                status.state.as_str()
            );
            return ExitCode::SUCCESS;
        }
        match changed {
            Err(_) => {
                eprintln!(
                    "memprobe: the restarted workload was not found healthy in time (state {:?})",
                    status.state
                );
                return ExitCode::FAILURE;
            }
            Ok(Err(_)) => return ExitCode::FAILURE,
            Ok(Ok(())) => {}
        }
    }
}

/// The quiet story's ending: why it drained, why it recycled, and that it did so before the
/// threshold was crossed; false, said, if it was not so.
fn quiet_ending(status: &Status, recycled: &str, peak: u64) -> bool {
    let threshold = status.threshold.bytes;
    let drained = status
        .transitions
        .iter()
        .rev()
        .find(|t| t.to == State::Draining)
        .map_or("", |t| t.reason.as_str());
    if !drained.starts_with("quiet moment:") || peak >= threshold {
        eprintln!(
            "memprobe: the quiet story recycled for another reason (memory peaked at {} of {}): \
             drained: {drained}",
            Bytes(peak),
            Bytes(threshold)
        );
        return false;
    }
    println!();
    println!("drained: {drained}");
    println!("recycle: {recycled}");
    println!(
        "recycled at a quiet moment, before the threshold was crossed: memory peaked at {} \
         under the threshold {}, nobody was on it, so no session was lost, and it comes back \
         with a fresh heap before the next wave",
        Bytes(peak),
        Bytes(threshold)
    );
    true
}

/// Both runs' idle figures, side by side.
fn compare(glibc: &Workload, jemalloc: &Workload) {
    let waves = jemalloc.report().map_or(0, |r| r.waves);
    println!(
        "idle, {}s after the last of {waves} waves:  resident   in use",
        SETTLE.as_secs()
    );
    for run in [glibc, jemalloc] {
        let name = run.allocator.malloc();
        let rss = run.rss().map_or("?".to_string(), |b| Bytes(b).to_string());
        let live = run
            .report()
            .map_or("?".to_string(), |r| Bytes(r.live_bytes).to_string());
        println!("  {name:<31} {rss:>10}  {live:>10}");
    }
}

/// One sample: resident memory, what the workload holds in use and its sessions (now, and
/// ended so far), the state and the probes' answers.
fn line(elapsed: Duration, status: &Status, ended: Option<u32>) -> String {
    let rss = status.memory.as_ref().map_or(0, |m| m.sample.rss_bytes);
    let code = |ok: bool| if ok { 200 } else { 503 };
    let (live, sessions) = status
        .reported
        .map_or(("?".to_string(), "?".to_string()), |r| {
            let ended = ended.map_or(String::new(), |n| format!(" ({n} ended)"));
            (
                Bytes(r.live_bytes).to_string(),
                format!("{}{ended}", r.sessions),
            )
        });
    format!(
        "[{:>3}s] rss {:>10}  in use {:>10}  sessions {:<12}  threshold {}  {:<8}  /ready {}  /healthz {}",
        elapsed.as_secs(),
        Bytes(rss).to_string(),
        live,
        sessions,
        Bytes(status.threshold.bytes),
        status.state.as_str(),
        code(status.ready),
        code(status.live),
    )
}
