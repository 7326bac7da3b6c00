//! Recycle actions against real processes: a signal ends the target exactly once; a command
//! runs once per incarnation, and again after --recycle-retry while the same one lives.

// Real processes run on the real clock.
#![allow(clippy::disallowed_types)]

use std::time::{Duration, Instant};

use crate::harness::{DEADLINE, Memprobe, Workload, unique_name};

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
