//! The status page, loaded by a real headless Chromium: the DOM the browser built has the
//! memory series, the threshold line, a draining band and the state; a screenshot is kept
//! under target/test-artifacts/.

use std::path::Path;
use std::process::Command;

use crate::harness::{Memprobe, Workload, tool};

/// Headless Chromium, on a fresh profile, loading `url` with `extra` flags.
fn browse(chromium: &Path, url: &str, extra: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium")
}

#[test]
fn chromium_shows_memory_the_threshold_and_the_draining_band() {
    let Some(chromium) = tool("chromium") else {
        return;
    };
    let mut target = Workload::start(None);
    let pid = target.pid.to_string();
    let probe = Memprobe::start(&crate::fast(&["--pid", &pid, "--sustain", "1s"]));
    probe.wait_state("healthy");
    target.send("alloc 150MiB");
    probe.wait_state("draining");
    // A few samples while draining, so the band has a width.
    probe.wait_for("samples while draining", |s| {
        s["counters"]["samples_total"].as_u64() >= Some(30)
    });
    let url = format!("http://{}/", probe.addr);
    let dom = browse(&chromium, &url, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("<polyline id=\"memory\""),
        "the memory series: {dom}"
    );
    assert!(dom.contains("<line id=\"threshold\""), "the threshold line");
    assert!(dom.contains("class=\"band draining\""), "a draining band");
    assert!(
        dom.contains("id=\"state\">draining</span>"),
        "the state says draining"
    );
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = browse(
        &chromium,
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=900,900",
            "--hide-scrollbars",
        ],
    );
    assert!(shot.is_file(), "a screenshot: {out:?}");

    let history = probe.get("/history.json");
    assert_eq!(history.content_type, "application/json");
    let points = history.json();
    assert!(points.as_array().is_some_and(|p| p.len() >= 30));
    assert!(
        probe.get("/").body.len() < 64 * 1024,
        "the page's size budget"
    );
}

/// The demo's page shows what the workload holds live as a second series, beside resident
/// memory, so fragmentation is visible: resident high, live low.
#[test]
fn the_demos_page_shows_live_memory_beside_resident_memory() {
    use std::io::{BufRead, BufReader};
    let Some(chromium) = tool("chromium") else {
        return;
    };
    let mut demo = crate::harness::Reaped(
        Command::new(crate::harness::MEMPROBE)
            .args(["demo", "--listen", "127.0.0.1:0"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the demo"),
    );
    let mut lines = BufReader::new(demo.0.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("the page's URL first: {first}"))
        .to_string();
    // Until a sample line shows the workload's report: "live 1.2 MiB", not "live ?".
    let reported = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with('[') && l.contains(" live ") && !l.contains("live          ?"));
    assert!(reported.is_some(), "a sample line with live bytes");
    let agent = crate::harness::agent();
    let history = crate::harness::request(&agent, "GET", &format!("{url}history.json")).unwrap();
    let points = history.json();
    let last = points.as_array().and_then(|p| p.last()).cloned().unwrap();
    assert!(
        last["live_bytes"].as_u64().is_some(),
        "live bytes in /history.json: {last}"
    );
    let status = crate::harness::request(&agent, "GET", &format!("{url}status")).unwrap();
    assert!(status.json()["reported"]["live_bytes"].as_u64().is_some());

    let dom = browse(&chromium, &url, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains("<polyline id=\"live-bytes\""),
        "the live series: {dom}"
    );
    assert!(
        dom.contains("<polyline id=\"memory\""),
        "beside resident memory"
    );
    assert!(
        dom.contains("live, as the workload reports it"),
        "in the legend"
    );
}
