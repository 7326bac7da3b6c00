//! Recycle actions against real processes: a signal ends the target exactly once, and never
//! reaches the process that took its pid; a command runs once per incarnation, and again
//! after --recycle-retry while the same one lives; a command is done at its exit, whatever
//! it leaves running on its output, and however much it prints. The tests about memprobe's
//! own process run on the shipped static binary where it is built.

// Real processes run on the real clock.
#![allow(clippy::disallowed_types)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{self, DEADLINE, MEMPROBE, Memprobe, Reaped, Workload, shipped, unique_name};

/// Recycle at once on 150 MiB, samples every 100 ms.
fn recycling(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--interval",
        "100ms",
        "--threshold",
        "100MiB",
        "--critical",
        "150MiB",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn start(args: &[String]) -> Memprobe {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Memprobe::start(&args)
}

fn lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

#[test]
fn signal_term_ends_the_target_exactly_once() {
    let mut target = Workload::start(None);
    let pid = target.pid.to_string();
    let probe = start(&recycling(&[
        "--pid",
        &pid,
        "--on-recycle",
        "signal:TERM",
        "--recycle-retry",
        "1s",
    ]));
    probe.wait_state("healthy");
    // The signal may end it before it answers.
    target.tell("alloc 200MiB");
    let status = probe.wait_for("the action's record", |s| !s["recycle_action"].is_null());
    assert_eq!(status["recycle_action"]["result"], "ok", "{status:#}");
    assert_eq!(status["recycle_action"]["attempt"], 1);
    assert_eq!(
        status["recycle_action"]["detail"],
        format!("sent SIGTERM to pid {pid}")
    );
    probe.wait_state("lost");
    let start = Instant::now();
    while target.running() {
        assert!(start.elapsed() < DEADLINE, "the target did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = probe.get("/metrics").body;
    assert!(
        metrics.contains("memprobe_recycle_actions_total{result=\"ok\"} 1"),
        "once, and no retry for a target that is gone: {metrics}"
    );
}

#[test]
fn a_command_runs_once_per_incarnation_and_again_after_the_retry_while_it_lives() {
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let action = format!("exec:sh -c 'echo ran >> {}'", ran.display());
    let name = unique_name("wl-recycle");
    let mut first = Workload::start(Some(&name));
    let probe = start(&recycling(&[
        "--name",
        &name,
        "--on-recycle",
        &action,
        "--recycle-retry",
        "2s",
    ]));
    probe.wait_state("healthy");
    first.send("alloc 200MiB");
    probe.wait_for("the first run", |s| s["recycle_action"]["attempt"] == 1);
    assert_eq!(lines(&ran), 1, "once");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(lines(&ran), 1, "not again before --recycle-retry");
    let status = probe.wait_for("the retry", |s| s["recycle_action"]["attempt"] == 2);
    assert_eq!(
        lines(&ran),
        2,
        "the same incarnation after 2 s: run again, counted"
    );
    assert_eq!(status["counters"]["recycle_actions_total"]["ok"], 2);

    first.kill();
    probe.wait_state("lost");
    let mut second = Workload::start(Some(&name));
    probe.wait_for("the next incarnation", |s| {
        s["state"] == "healthy" && s["target"]["pid"] == second.pid
    });
    second.send("alloc 200MiB");
    probe.wait_for("the next incarnation's run", |s| {
        s["recycle_action"]["attempt"] == 1 && s["target"]["pid"] == second.pid
    });
    assert_eq!(lines(&ran), 3, "a new incarnation gets its own run");
}

#[test]
fn an_action_that_cannot_work_is_refused_at_start() {
    let output =
        crate::harness::run_to_end(&["--on-recycle", "exec:no-such-restart-tool now"], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--on-recycle"), "{stderr}");
    let output = crate::harness::run_to_end(
        &["--on-recycle", "signal:TERM", "--memory-source", "kms"],
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
}

/// The shipped static binary where it is built, else this build.
fn binary() -> PathBuf {
    shipped().unwrap_or_else(|| PathBuf::from(MEMPROBE))
}

/// A field of /proc/PID/status, as its text.
fn proc_status(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

fn kib_field(pid: u32, field: &str) -> u64 {
    proc_status(pid, field)
        .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{field} of {pid}"))
        * 1024
}

/// Whether `pid` is running (not gone, not a zombie left unreaped).
fn alive(pid: u32) -> bool {
    proc_status(pid, "State").is_some_and(|s| !s.starts_with('Z') && !s.starts_with('X'))
}

/// Kills the process whose pid a file holds, once the test ends.
struct KillOnDrop(PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = read_pid(&self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "waited {DEADLINE:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_restart_script_that_leaves_a_daemon_on_its_output_is_done_at_its_exit_and_the_daemon_lives() {
    let dir = tempfile::tempdir().unwrap();
    let (pidfile, progress) = (dir.path().join("daemon.pid"), dir.path().join("progress"));
    // The new server, as `service x restart` leaves it: on the script's stdout and stderr,
    // writing 8 KB a round to them, so it fills a pipe nobody reads within 9 rounds and dies
    // of SIGPIPE at its next write to one that is closed.
    let daemon = dir.path().join("daemon.sh");
    std::fs::write(
        &daemon,
        format!(
            "echo $$ > {pidfile}\n\
             line=$(head -c 4000 /dev/zero | tr '\\0' d)\n\
             i=0\n\
             while :; do echo \"$line\"; echo \"$line\" >&2; i=$((i+1)); echo $i > {progress}.new; mv {progress}.new {progress}; sleep 0.02; done\n",
            pidfile = pidfile.display(),
            progress = progress.display()
        ),
    )
    .unwrap();
    let restart = dir.path().join("restart.sh");
    std::fs::write(
        &restart,
        format!("sh {} &\necho restarted\n", daemon.display()),
    )
    .unwrap();
    let action = format!("exec:sh {}", restart.display());
    let mut target = Workload::start(None);
    let pid = target.pid.to_string();
    let args = recycling(&[
        "--pid",
        &pid,
        "--on-recycle",
        &action,
        "--recycle-retry",
        "10m",
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let probe = Memprobe::start_binary(&binary(), &args, &[]);
    // Dropped before memprobe, while the daemon still lives: its pid is still its own.
    let _daemon = KillOnDrop(pidfile.clone());
    probe.wait_state("healthy");
    let asked = Instant::now();
    target.send("alloc 200MiB");
    let status = probe.wait_for("the action's record", |s| !s["recycle_action"].is_null());
    let took = asked.elapsed();
    let record = &status["recycle_action"];
    assert_eq!(record["result"], "ok", "{record:#}");
    assert!(
        record["detail"]
            .as_str()
            .is_some_and(|d| d.contains("exit status: 0") && d.contains("output: restarted")),
        "{record:#}"
    );
    assert!(
        took < Duration::from_secs(40),
        "reported {took:?} after the recycle: its exit decides, not its output (which would \
         hold it to the 60 s timeout)"
    );

    // The script has exited; the daemon it left in the background may not have started yet.
    wait_until("the daemon to write its pid", || {
        read_pid(&pidfile).is_some()
    });
    let daemon_pid = read_pid(&pidfile).expect("the daemon wrote its pid");
    let round = || read_pid(&progress).unwrap_or(0);
    // Past what a pipe holds: a daemon whose output nobody reads would be blocked by now, and
    // one whose pipe was closed would be killed by SIGPIPE. However slowly a busy machine lets
    // it write, it must get there alive.
    let started = Instant::now();
    wait_until("the daemon to write more than a pipe holds", || {
        assert!(
            alive(daemon_pid),
            "the daemon died {:?} after the restart, at round {} (SIGPIPE?)",
            started.elapsed(),
            round()
        );
        round() * 8000 > 1 << 20
    });
    let past = round();
    wait_until("the daemon to write on", || round() > past);
    assert!(alive(daemon_pid), "the daemon is alive 10 s later");
    assert_eq!(
        probe.status()["counters"]["recycle_actions_total"]["ok"],
        1,
        "one run"
    );
}

#[test]
fn a_command_that_prints_a_gigabyte_costs_memprobe_a_few_kib() {
    const GIB: u64 = 1 << 30;
    let mut target = Workload::start(None);
    let pid = target.pid.to_string();
    let action = format!("exec:sh -c 'yes first lines | head -c {GIB}'");
    let args = recycling(&[
        "--pid",
        &pid,
        "--on-recycle",
        &action,
        "--recycle-retry",
        "10m",
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let probe = Memprobe::start_binary(&binary(), &args, &[]);
    probe.wait_state("healthy");
    for _ in 0..20 {
        probe.status();
    }
    let before = probe.rss_bytes();
    // The peak from here on, where the kernel lets it be reset; else the samples taken.
    let peak_reset = std::fs::write(format!("/proc/{}/clear_refs", probe.pid()), "5").is_ok();
    target.send("alloc 200MiB");
    let mut sampled_peak = before;
    let start = Instant::now();
    let status = loop {
        sampled_peak = sampled_peak.max(probe.rss_bytes());
        let status = probe.status();
        if !status["recycle_action"].is_null() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the command did not end: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let record = &status["recycle_action"];
    assert_eq!(record["result"], "ok", "{record:#}");
    let detail = record["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("output: first lines | first lines"),
        "{detail}"
    );
    assert!(detail.contains("more bytes not kept"), "{detail}");
    let peak = if peak_reset {
        kib_field(probe.pid(), "VmHWM").max(sampled_peak)
    } else {
        sampled_peak
    };
    eprintln!(
        "1 GiB of output ({}): {:.1} MiB resident before, peak {:.1} MiB{}",
        binary().display(),
        before as f64 / (1 << 20) as f64,
        peak as f64 / (1 << 20) as f64,
        if peak_reset { "" } else { " (sampled)" }
    );
    assert!(
        peak < before + 8 * (1 << 20),
        "memprobe grew from {before} to {peak} bytes reading 1 GiB of output"
    );
}

/// Makes the next process this machine starts get `pid` (root only); false when it cannot.
fn next_pid_is(pid: u32) -> bool {
    std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).is_ok()
}

#[test]
fn a_retry_after_the_target_died_never_signals_the_process_that_took_its_pid() {
    let mut target = Workload::start(None);
    let pid = target.pid;
    if !next_pid_is(pid + 1) {
        assert!(
            !harness::strict(),
            "/proc/sys/kernel/ns_last_pid must be writable in strict mode (run as root)"
        );
        return harness::skip("forcing a pid's reuse needs root (/proc/sys/kernel/ns_last_pid)");
    }
    target.send("alloc 200MiB");
    // Over critical at the first sample, so recycled at once; the next sample, which would
    // see the target gone, is a minute away, and the retry comes before it.
    let probe = Memprobe::start_binary(
        &binary(),
        &[
            "--pid",
            &pid.to_string(),
            "--interval",
            "1m",
            "--threshold",
            "100MiB",
            "--critical",
            "150MiB",
            "--on-recycle",
            "signal:TERM",
            "--recycle-retry",
            "5s",
        ],
        &[],
    );
    let first = probe.wait_for("the first signal", |s| s["recycle_action"]["attempt"] == 1);
    assert_eq!(first["recycle_action"]["result"], "ok", "{first:#}");
    wait_until("the target to end", || !target.running());

    // Its pid goes to an unrelated process. Other processes start meanwhile: try again until
    // it lands.
    let mut victim = None;
    for _ in 0..200 {
        assert!(next_pid_is(pid), "ns_last_pid was writable a moment ago");
        let child = Command::new("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .spawn()
            .expect("start sleep");
        if child.id() == pid {
            victim = Some(Reaped(child));
            break;
        }
        drop(Reaped(child));
    }
    let mut victim = victim.unwrap_or_else(|| panic!("pid {pid} could not be taken again"));
    let status = probe.status();
    assert_eq!(
        status["recycle_action"]["attempt"], 1,
        "the pid was taken before the retry: this checks the retry, not a lucky order"
    );
    assert_eq!(
        status["state"], "recycle",
        "memprobe has not seen the target go"
    );
    assert_eq!(
        status["target"]["pid"], pid,
        "the snapshot still names pid {pid}"
    );

    let retry = probe.wait_for("the retry", |s| s["recycle_action"]["attempt"] == 2);
    assert_eq!(retry["recycle_action"]["result"], "failed", "{retry:#}");
    assert_eq!(
        retry["recycle_action"]["detail"],
        format!("pid {pid} (the incarnation judged) has exited: nothing signalled")
    );
    probe.said_once("nothing signalled");
    // kill(2) has done its work by the time the record exists: a signal sent would show as
    // pending, or the process ending.
    assert!(
        victim.0.try_wait().expect("wait sleep").is_none(),
        "the process that took pid {pid} was killed"
    );
    for pending in ["SigPnd", "ShdPnd"] {
        assert_eq!(
            proc_status(pid, pending).as_deref(),
            Some("0000000000000000"),
            "no signal pending for the process that took pid {pid} ({pending})"
        );
    }
    assert!(alive(pid), "the process that took pid {pid} runs on");
}
