//! `memprobe demo`: the whole story on a machine with no media server, in about a minute.
//!
//! It starts `memprobe workload` as a child — waves of simulated sessions that fragment
//! glibc's heap — and watches it with the real sidecar and demo settings: one sample a
//! second, draining after 10 s over the threshold, recycle once the last session has ended
//! (at least 5 s later, at most 20 s). The threshold sits
//! between the workload's live memory (a few MiB) and the resident memory glibc keeps after
//! a few waves (over 200 MiB here), so a newcomer sees healthy → elevated → draining →
//! recycle. With `--allocator jemalloc` the same workload gives its memory back after each
//! wave, and the spikes never last long enough to drain; a twin on glibc's malloc runs beside
//! it, and the demo ends with both runs' idle figures side by side.
//!
//! The workload reports what it holds live (`--report`), and every line shows it beside
//! resident memory, as the page's chart does: fragmentation is resident memory high above
//! live memory, with no session left. It also says its session count as any server can
//! (`--serve-sessions`), and the sidecar reads it as `--sessions-url` would: the drain ends
//! when the last session has, as it would on a real server, not at `--drain-timeout`.
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
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
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
    pid: i32,
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
                target: TargetSpec::Pid(pid),
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
            recycle: RecycleSettings {
                action: RecycleAction::None,
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
        config(pid as i32, addr, sessions, story),
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
        outcome = follow(sidecar.snapshots.clone(), &watched, twin.as_ref(), story) => Some(outcome),
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
    /// Its whole latest report.
    reports: watch::Receiver<Option<Report>>,
    /// What the sidecar shows of it.
    shown: watch::Receiver<Option<Reported>>,
    /// Where it says its session count (`--serve-sessions`), when asked to: the URL, and the
    /// field of its answer the sidecar reads.
    sessions_url: Option<(String, Endpoint)>,
}

impl Workload {
    /// Starts it with `waves` (its flags for them: none for its own default waves), and
    /// waits for its ready line; `serve` asks it to say its session count.
    async fn start(jemalloc: bool, serve: bool, waves: &[String]) -> std::io::Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        // Named for what it is, so the lines say "demo-workload", not "memprobe".
        command
            .arg0("demo-workload")
            .args(["workload", "--report", REPORT_EVERY])
            .args(waves)
            .stdin(Stdio::piped()) // held open: the workload exits when the demo does
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if serve {
            command.args(["--serve-sessions", "127.0.0.1:0"]);
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
        let said = ready
            .split(' ')
            .find_map(|word| word.strip_prefix("sessions="));
        let sessions_url = match said {
            _ if !serve => None,
            Some(url) => {
                let from = Endpoint::url(&format!("{url}#/sessions")).map_err(|problem| {
                    std::io::Error::other(format!("its session count URL {url} {problem}"))
                })?;
                Some((url.to_string(), from))
            }
            None => {
                return Err(std::io::Error::other(format!(
                    "it did not say where it serves its session count: {ready:?}"
                )));
            }
        };
        // Its ready line comes from its main, long after the loader mapped every library.
        let allocator = procfs::process::Process::new(pid as i32)
            .map_or(Allocator::Unknown, |process| allocator::of(&process));
        let (full, reports) = watch::channel(None);
        let (show, shown) = watch::channel(None);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(report) = Report::parse(&line) {
                    full.send_replace(Some(report));
                    show.send_replace(Some(Reported {
                        live_bytes: report.live_bytes,
                        sessions: report.sessions,
                    }));
                }
            }
        });
        Ok(Workload {
            child,
            pid,
            allocator,
            reports,
            shown,
            sessions_url,
        })
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

/// Prints one line per sample until the story has been told.
async fn follow(
    mut snapshots: tokio::sync::watch::Receiver<std::sync::Arc<crate::status::Snapshot>>,
    watched: &Workload,
    twin: Option<&Workload>,
    story: Story,
) -> ExitCode {
    let start = Instant::now();
    let mut printed = 0;
    // The most memory any sample saw: the quiet story ends before it crossed the threshold.
    let mut peak = 0;
    let mut worst = State::Healthy;
    let mut idle_since: Option<Instant> = None;
    loop {
        let changed = tokio::time::timeout_at(start + GIVE_UP, snapshots.changed()).await;
        let status = snapshots.borrow_and_update().status.clone();
        if status.counters.samples_total > printed {
            printed = status.counters.samples_total;
            let beside = twin.and_then(Workload::rss).map_or(String::new(), |rss| {
                format!("  (glibc beside it: rss {})", Bytes(rss))
            });
            let ended = watched.report().map(|r| r.ended);
            let said = match (story, status.forecast.threshold_in_seconds) {
                (Story::Drain, _) => String::new(),
                (Story::Quiet, Some(s)) => format!("  forecast: over it in {s}s"),
                (Story::Quiet, None) => "  forecast: none yet".to_string(),
            };
            println!("{}{beside}{said}", line(start.elapsed(), &status, ended));
            peak = peak.max(status.memory.as_ref().map_or(0, |m| m.deciding_bytes));
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
        match (changed, status.state) {
            (_, State::Recycle) if twin.is_some() => {
                eprintln!(
                    "memprobe: even on jemalloc the workload stayed over the threshold: {}",
                    status.reason
                );
                return ExitCode::FAILURE;
            }
            (_, State::Recycle) if story == Story::Quiet => {
                return quiet_ending(&status, peak);
            }
            (_, State::Recycle) => {
                println!();
                if let (Some(m), Some(r)) = (&status.memory, status.reported) {
                    println!(
                        "resident {} for {} live: the rest is heap {} cannot give back",
                        Bytes(m.sample.rss_bytes),
                        Bytes(r.live_bytes),
                        watched.allocator.malloc()
                    );
                }
                println!("recycle: {}", status.reason);
                println!(
                    "/healthz answers 503, so the kubelet restarts the server now that it has \
                     drained. With jemalloc it stays healthy: {}",
                    if cfg!(target_feature = "crt-static") {
                        "cargo run --release -- demo --allocator jemalloc (a dynamically linked \
                         build: this static one cannot preload it)"
                    } else {
                        "memprobe demo --allocator jemalloc"
                    }
                );
                return ExitCode::SUCCESS;
            }
            (_, State::Lost) if printed > 0 => {
                eprintln!("memprobe: the workload exited unexpectedly");
                return ExitCode::FAILURE;
            }
            (Err(_), _) => {
                eprintln!(
                    "memprobe: the demo did not reach {} in time (state {:?})",
                    if twin.is_some() { "idle" } else { "recycle" },
                    status.state
                );
                return ExitCode::FAILURE;
            }
            (Ok(Err(_)), _) => return ExitCode::FAILURE,
            (Ok(Ok(())), _) => {}
        }
    }
}

/// The quiet story's ending: why it drained, why it recycled, and that it did so before the
/// threshold was crossed; a failure if it was not so.
fn quiet_ending(status: &Status, peak: u64) -> ExitCode {
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
        return ExitCode::FAILURE;
    }
    println!();
    println!("drained: {drained}");
    println!("recycle: {}", status.reason);
    println!(
        "recycled at a quiet moment, before the threshold was crossed: memory peaked at {} \
         under the threshold {}, nobody was on it, so no session was lost, and it comes back \
         with a fresh heap before the next wave",
        Bytes(peak),
        Bytes(threshold)
    );
    ExitCode::SUCCESS
}

/// Both runs' idle figures, side by side.
fn compare(glibc: &Workload, jemalloc: &Workload) {
    let waves = jemalloc.report().map_or(0, |r| r.waves);
    println!(
        "idle, {}s after the last of {waves} waves:  resident     live",
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

/// One sample: resident memory, what the workload holds live and its sessions (now, and
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
        "[{:>3}s] rss {:>10}  live {:>10}  sessions {:<12}  threshold {}  {:<8}  /ready {}  /healthz {}",
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
