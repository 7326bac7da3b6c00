//! `memprobe demo` as a newcomer runs it: the story to its ending, then the page served until
//! the demo is stopped (SIGTERM, or Ctrl-C's SIGINT); the jemalloc comparison where jemalloc
//! can be preloaded, and its refusal by the static binary, which cannot preload anything, and
//! where the dynamic loader finds no jemalloc to preload.

#![allow(clippy::disallowed_types)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{self, Reaped, shipped, shipped_or_dev, strict};

/// The demo's story takes about 30 s on an idle machine; a loaded one is far slower.
const STORY: Duration = Duration::from_secs(240);
/// The line the demo prints once its story is told.
pub const STAYS: &str = "the page stays at http://";

/// A running demo, its stdout and stderr collected line by line.
pub struct Demo {
    child: Reaped,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// The page's URL, as its first line gives it (ending in `/`).
    pub url: String,
}

impl Demo {
    pub fn start(binary: &Path, extra: &[&str]) -> Demo {
        let mut child = Reaped(
            Command::new(binary)
                .args(["demo", "--listen", "127.0.0.1:0"])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start the demo"),
        );
        let collect = |from: Box<dyn std::io::Read + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let into = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(from).lines().map_while(Result::ok) {
                    into.lock().unwrap().push(line);
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.0.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.0.stderr.take().unwrap()));
        let mut demo = Demo {
            child,
            stdout,
            stderr,
            url: String::new(),
        };
        let first = demo.wait_line("the page's URL", Duration::from_secs(60), |l| {
            l.contains("http://")
        });
        demo.url = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("the page's URL first: {first}"))
            .to_string();
        demo
    }

    /// Waits for a stdout line that `matches`, and returns it.
    pub fn wait_line(
        &mut self,
        what: &str,
        within: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self.stdout.lock().unwrap().iter().find(|l| matches(l)) {
                return line.clone();
            }
            if let Ok(Some(status)) = self.child.0.try_wait() {
                panic!(
                    "the demo exited ({status}) before {what}:\n{}",
                    self.output()
                );
            }
            assert!(
                start.elapsed() < within,
                "no {what} within {within:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the story's closing line, and returns all of stdout.
    pub fn story(&mut self) -> String {
        self.wait_line("end of the story", STORY, |l| l.starts_with(STAYS));
        self.stdout()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    fn output(&self) -> String {
        format!(
            "{}\n--- stderr:\n{}",
            self.stdout(),
            self.stderr.lock().unwrap().join("\n")
        )
    }

    pub fn get(&self, path: &str) -> harness::Reply {
        let url = format!("{}{}", self.url, path.trim_start_matches('/'));
        harness::request(&harness::agent(), "GET", &url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    /// Sends a signal by name (`TERM`, `INT`) and waits for the exit.
    pub fn stop(&mut self, signal: &str) -> ExitStatus {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.0.try_wait().expect("wait for the demo") {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the demo did not stop on SIG{signal}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether anything still answers at the page's address.
    pub fn listening(&self) -> bool {
        let addr = self
            .url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        std::net::TcpStream::connect(addr).is_ok()
    }
}

/// Whether the dynamic loader preloads jemalloc by its soname here, as the demo asks it to:
/// a real workload started so, and its mapped libraries read.
pub fn jemalloc_preloads() -> bool {
    let workload =
        harness::Workload::start_with(None, &[("LD_PRELOAD", memprobe::tools::demo::JEMALLOC)]);
    std::fs::read_to_string(format!("/proc/{}/maps", workload.pid))
        .is_ok_and(|maps| maps.contains("libjemalloc"))
}

/// Reads "resident 245.12 MiB for 12.08 MiB in use" at the end of the story.
fn resident_for_live(stdout: &str) -> (f64, f64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("resident "))
        .unwrap_or_else(|| panic!("the resident-for-live line: {stdout}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    (mib(words[1], words[2]), mib(words[4], words[5]))
}

/// "12.08" "MiB" in MiB.
fn mib(figure: &str, unit: &str) -> f64 {
    let figure: f64 = figure.parse().expect("a figure");
    match unit {
        "KiB" => figure / 1024.0,
        "MiB" => figure,
        "GiB" => figure * 1024.0,
        other => panic!("unit {other}"),
    }
}

/// The malloc a demo's workload runs on: the binary's own, as the static musl build or a
/// glibc one has it.
fn native_malloc(binary: &Path) -> (&'static str, &'static str) {
    if binary == Path::new(harness::SHIPPED) {
        ("musl's malloc", "musl")
    } else {
        ("glibc's malloc", "glibc")
    }
}

#[test]
fn the_demo_tells_the_whole_story_then_serves_its_page_until_sigterm() {
    let binary: PathBuf = shipped_or_dev();
    let mut demo = Demo::start(&binary, &[]);
    let stdout = demo.story();
    let states: Vec<&str> = ["healthy", "elevated", "draining", "recycle"]
        .into_iter()
        .filter(|s| stdout.contains(&format!("  {s} ")))
        .collect();
    assert_eq!(
        states,
        ["healthy", "elevated", "draining", "recycle"],
        "{stdout}"
    );
    assert!(
        stdout.contains("curl -i http://127.0.0.1:"),
        "the URLs to try are printed"
    );
    // A call outlives the start of the drain and ends on screen; the recycle follows it.
    let lines: Vec<&str> = stdout.lines().collect();
    let state_of = |l: &str| {
        let states = [
            "starting", "healthy", "elevated", "draining", "recycle", "lost",
        ];
        states
            .into_iter()
            .find(|s| l.starts_with('[') && l.contains(&format!("  {s} ")))
    };
    let sessions_of = |l: &str| -> Option<u32> {
        l.split_once("sessions ")?
            .1
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let draining: Vec<usize> = (0..lines.len())
        .filter(|&i| state_of(lines[i]) == Some("draining"))
        .collect();
    assert!(
        draining.len() >= 5
            && draining
                .iter()
                .take(5)
                .all(|&i| sessions_of(lines[i]).is_some_and(|n| n > 0)),
        "a call is on for the drain's first seconds: sessions over 0 while draining: {stdout}"
    );
    let ends = lines
        .iter()
        .position(|l| l.starts_with("  the call ends, "))
        .unwrap_or_else(|| panic!("the call's end, on screen: {stdout}"));
    let recycle = lines
        .iter()
        .position(|l| state_of(l) == Some("recycle"))
        .unwrap_or_else(|| panic!("a recycle line: {stdout}"));
    assert!(
        draining[0] < ends && ends < recycle && recycle <= ends + 3,
        "draining, then the call's end, then the recycle right after it: {stdout}"
    );
    let drained_for = stdout
        .split("\nrecycle: last session ended after draining ")
        .nth(1)
        .and_then(|rest| rest.split('s').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| {
            panic!("the drain ends on the workload's own session count, not on --drain-timeout: {stdout}")
        });
    assert!(
        (7..=12).contains(&drained_for),
        "the recycle follows the call's end, 7s into the drain, within a sample or so: {stdout}"
    );
    // Then the restart, and the fresh heap.
    let restart = lines
        .iter()
        .position(|l| {
            l.starts_with("restart: memprobe's recycle action (signal:TERM here) ended pid ")
        })
        .unwrap_or_else(|| panic!("the restart: {stdout}"));
    assert!(restart > recycle, "{stdout}");
    let fresh_line = lines[restart..]
        .iter()
        .find(|l| state_of(l) == Some("healthy"))
        .unwrap_or_else(|| panic!("a healthy sample after the restart: {stdout}"));
    let fresh = lines
        .iter()
        .find_map(|l| l.strip_prefix("fresh heap: resident "))
        .unwrap_or_else(|| panic!("the fresh heap: {stdout}"));
    let words: Vec<&str> = fresh.split_whitespace().collect();
    let (resident_after, resident_before) = (mib(words[0], words[1].trim_end_matches(',')), {
        let at = words.iter().position(|w| *w == "at").unwrap();
        mib(words[at + 1], words[at + 2].trim_end_matches(';'))
    });
    assert!(
        resident_after * 4.0 < resident_before,
        "the fresh heap is a fraction of the old one: {fresh_line} / {fresh}"
    );
    assert!(
        !stdout.contains("--drain-timeout") && !stdout.contains("session count unknown"),
        "{stdout}"
    );
    let (resident, live) = resident_for_live(&stdout);
    assert!(
        resident > 4.0 * live,
        "resident memory far above live memory at recycle: {stdout}"
    );
    let (malloc, allocator) = native_malloc(&binary);
    assert!(
        stdout.contains(&format!("{malloc})")),
        "the workload's malloc is named as it really is, {malloc}: {stdout}"
    );
    assert!(
        stdout.contains(&format!("the rest is heap {malloc} cannot give back")),
        "{stdout}"
    );
    assert!(
        stdout.contains("until you stop the demo: Ctrl-C"),
        "the closing line says the page stays: {stdout}"
    );

    // The story told, the page is still served, and the restarted workload still watched.
    let status = demo.get("/status").json();
    assert_eq!(status["state"], "healthy", "{status}");
    assert_eq!(status["counters"]["target_restarts_total"], 1, "{status}");
    assert_eq!(
        status["target"]["allocator"], allocator,
        "the page names the malloc the workload runs"
    );
    let told = status["counters"]["samples_total"].as_u64().unwrap();
    let start = Instant::now();
    while demo.get("/status").json()["counters"]["samples_total"].as_u64() <= Some(told + 2) {
        assert!(start.elapsed() < Duration::from_secs(60), "still sampling");
        std::thread::sleep(Duration::from_millis(100));
    }
    let page = demo.get("/");
    assert_eq!(page.code, 200);
    assert!(page.body.contains("id=\"state\">healthy</span>"));
    assert!(
        page.body.contains("class=\"restart\""),
        "the chart marks the restart"
    );
    assert!(
        !demo
            .stdout()
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with('['),
        "no more sample lines once the story is told"
    );

    // The workload's pidfile, in a directory of the demo's own, goes with it.
    let pidfiles = format!("memprobe-demo-{}-", demo.child.0.id());
    let ours = || {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(&pidfiles))
            .count()
    };
    assert_eq!(ours(), 1, "the pidfile's directory while the demo runs");
    let status = demo.stop("TERM");
    assert_eq!(status.code(), Some(0), "SIGTERM ends a told story with 0");
    assert!(!demo.listening(), "and the page is gone");
    assert_eq!(ours(), 0, "and the pidfile's directory");
}

#[test]
fn the_quiet_story_recycles_in_the_pause_before_the_threshold_and_the_page_says_why() {
    let binary: PathBuf = shipped_or_dev();
    let mut demo = Demo::start(&binary, &["--story", "quiet"]);
    // While it drains, the chart draws the forecast the drain's reason gives.
    demo.wait_line("a draining sample", STORY, |l| {
        l.starts_with('[') && l.contains("  draining ")
    });
    let page = demo.get("/").body;
    assert!(
        page.contains("<line id=\"forecast-trend\"") && page.contains("id=\"key-forecast\""),
        "the forecast's line is drawn while it drains: {page}"
    );
    let stdout = demo.story();
    // In the pause: every session of its 12 waves of 2 has ended before the drain.
    let first_drain = stdout
        .lines()
        .find(|l| l.starts_with('[') && l.contains("  draining "))
        .unwrap_or_else(|| panic!("a draining line: {stdout}"));
    assert!(
        first_drain.contains("sessions 0 (24 ended)"),
        "drained in the pause, once the waves have stopped: {first_drain}\n{stdout}"
    );
    let drained = stdout
        .lines()
        .find_map(|l| l.strip_prefix("drained: "))
        .unwrap_or_else(|| panic!("the drain's reason: {stdout}"));
    assert!(
        drained.starts_with("quiet moment: no session for ")
            && drained.contains("over the threshold in about"),
        "drained at a quiet moment, on the forecast: {stdout}"
    );
    assert!(
        stdout.contains("\nrecycled at a quiet moment, before the threshold was crossed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("keeps 8.00 MiB on purpose, as a leak would"),
        "the line says the floor's rise is partly on purpose: {stdout}"
    );
    assert!(
        !stdout.contains("  elevated "),
        "never over the threshold, not even for a sample: {stdout}"
    );

    let status = demo.get("/status").json();
    assert_eq!(
        status["state"], "healthy",
        "restarted after the recycle: {status}"
    );
    assert!(
        stdout.contains("\nfresh heap: resident "),
        "and the story says so: {stdout}"
    );
    let threshold = status["threshold"]["bytes"].as_u64().unwrap();
    let history = demo.get("/history.json").json();
    let history = history.as_array().expect("the samples kept");
    assert!(
        history.len() > 20,
        "the whole story's samples: {}",
        history.len()
    );
    let peak = history
        .iter()
        .filter_map(|p| p["memory_bytes"].as_u64())
        .max()
        .unwrap();
    assert!(
        peak < threshold,
        "memory never crossed the threshold: {peak} of {threshold}"
    );
    let transitions = status["transitions"].as_array().unwrap();
    let drain = transitions
        .iter()
        .find(|t| t["to"] == "draining")
        .expect("a drain");
    assert_eq!(drain["reason"], drained, "/status gives the same reason");
    assert!(
        transitions.iter().any(|t| t["to"] == "recycle")
            && !transitions.iter().any(|t| t["to"] == "elevated"),
        "recycled, never elevated: {status}"
    );

    let page = demo.get("/");
    assert_eq!(page.code, 200);
    assert!(
        page.body.contains("quiet moment: no session for "),
        "the page says why it drained"
    );
    assert!(page.body.contains("id=\"state\">healthy</span>"));
    assert!(
        page.body.contains("<rect class=\"band draining\"")
            && !page.body.contains("<rect class=\"band elevated\""),
        "the chart shades the drain, and no time over the threshold"
    );

    let status = demo.stop("TERM");
    assert_eq!(status.code(), Some(0), "SIGTERM ends a told story with 0");
    assert!(!demo.listening());
}

#[test]
fn the_quiet_story_is_not_told_with_jemalloc() {
    let output = Command::new(harness::MEMPROBE)
        .args([
            "demo",
            "--story",
            "quiet",
            "--allocator",
            "jemalloc",
            "--listen",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run the demo");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("try memprobe demo --story quiet"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn ctrl_c_during_the_story_stops_the_demo_with_130() {
    let mut demo = Demo::start(&shipped_or_dev(), &[]);
    demo.wait_line("a sample line", STORY, |l| l.starts_with('['));
    let status = demo.stop("INT");
    assert_eq!(status.code(), Some(130), "{}", demo.stdout());
    assert!(!demo.listening());
}

#[test]
fn the_static_binary_refuses_the_jemalloc_demo_in_one_line() {
    let Some(binary) = shipped() else {
        return;
    };
    let output = Command::new(&binary)
        .args(["demo", "--allocator", "jemalloc", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .expect("run the demo");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("static binary")
            && stderr.contains("cargo run --release -- demo --allocator jemalloc"),
        "why, and what to do: {stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "nothing started: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn the_jemalloc_demo_stays_ready_beside_glibc_then_stops_on_ctrl_c() {
    if cfg!(target_feature = "crt-static") || !cfg!(target_env = "gnu") {
        return harness::skip("this build's workload cannot preload jemalloc");
    }
    if !jemalloc_preloads() {
        assert!(!strict(), "libjemalloc2 is required in strict mode");
        return harness::skip("the dynamic loader finds no libjemalloc.so.2 here");
    }
    let mut demo = Demo::start(Path::new(harness::MEMPROBE), &["--allocator", "jemalloc"]);
    let stdout = demo.story();
    assert!(
        !stdout.contains("  draining "),
        "jemalloc never drains: {stdout}"
    );
    assert!(stdout.contains("(pid ") && stdout.contains(", jemalloc, MALLOC_CONF="));
    // Both runs' idle figures, side by side.
    let idle = |name: &str| {
        let row = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("the {name} row: {stdout}"));
        let words: Vec<&str> = row.split_whitespace().collect();
        let n = words.len();
        (
            mib(words[n - 4], words[n - 3]),
            mib(words[n - 2], words[n - 1]),
        )
    };
    let (glibc_resident, glibc_live) = idle("glibc's malloc");
    let (jemalloc_resident, jemalloc_live) = idle("jemalloc");
    assert!(
        glibc_resident > 3.0 * jemalloc_resident,
        "glibc keeps far more resident than jemalloc once idle: {stdout}"
    );
    assert!(
        glibc_live < 2.0 * jemalloc_live && jemalloc_live < 2.0 * glibc_live,
        "for about the same live memory: {stdout}"
    );
    let status = demo.get("/status").json();
    assert_eq!(status["state"], "healthy", "still served after the story");
    assert_eq!(status["target"]["allocator"], "jemalloc");
    let status = demo.stop("INT");
    assert_eq!(status.code(), Some(0), "Ctrl-C ends a told story with 0");
    assert!(!demo.listening());
}

/// Where the dynamic loader finds `libjemalloc.so.2`, for every architecture its cache has.
fn jemalloc_paths(ldconfig: &Path) -> Vec<String> {
    let out = Command::new(ldconfig)
        .arg("-p")
        .output()
        .expect("run ldconfig -p");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with("libjemalloc.so.2 "))
        .filter_map(|l| Some(l.split_once("=> ")?.1.trim().to_string()))
        .collect()
}

#[test]
fn a_jemalloc_demo_the_loader_cannot_preload_is_refused_with_exit_2() {
    if cfg!(target_feature = "crt-static") || !cfg!(target_env = "gnu") {
        return harness::skip("this build's workload cannot preload jemalloc");
    }
    let (Some(unshare), Some(ldconfig)) = (harness::tool("unshare"), harness::tool("ldconfig"))
    else {
        return;
    };
    // A private mount namespace where every libjemalloc.so.2 the loader knows is /dev/null.
    let can_mount = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    });
    if !can_mount {
        assert!(
            !strict(),
            "hiding jemalloc from the loader needs root in strict mode"
        );
        return harness::skip("hiding jemalloc from the loader needs root (a mount namespace)");
    }
    let hide: String = jemalloc_paths(&ldconfig)
        .iter()
        .map(|path| format!("mount --bind /dev/null '{path}' && "))
        .collect();
    let output = Command::new(unshare)
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "{hide}exec '{}' demo --allocator jemalloc --listen 127.0.0.1:0",
            harness::MEMPROBE
        ))
        .stdin(Stdio::null())
        .output()
        .expect("run the demo in a mount namespace");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("the dynamic loader did not preload libjemalloc.so.2")
            && last.contains("apt-get install libjemalloc2"),
        "why, and what to do, rather than a glibc story told as jemalloc's: {stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "nothing told: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}
