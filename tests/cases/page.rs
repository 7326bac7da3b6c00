//! The status page, loaded by a real headless Chromium: the DOM the browser built has the
//! memory series, the threshold line, a draining band, their legend and the state; under the
//! demo, once its story is told, the live area, the sessions lane, the legend and the time
//! axis's ticks. Screenshots are kept under target/test-artifacts/.

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
    for key in ["memory", "threshold", "elevated", "draining"] {
        assert!(
            dom.contains(&format!("id=\"key-{key}\"")),
            "a legend entry for {key}: {dom}"
        );
    }
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

/// The demo's page once its story is told, and still served: what the workload holds live as
/// an area under resident memory, the sessions in a lane of their own below the memory lines,
/// a legend for every line and band drawn, and a time axis with round ticks; a screenshot is
/// kept as target/test-artifacts/demo-page.png.
#[test]
fn the_demos_page_reads_at_a_glance_after_its_story() {
    let Some(chromium) = tool("chromium") else {
        return;
    };
    let mut demo = crate::demo::Demo::start(&crate::harness::shipped_or_dev(), &[]);
    demo.story();
    let history = demo.get("/history.json").json();
    let last = history.as_array().and_then(|p| p.last()).cloned().unwrap();
    assert!(
        last["live_bytes"].as_u64().is_some(),
        "live bytes in /history.json: {last}"
    );
    assert!(
        demo.get("/status").json()["reported"]["live_bytes"]
            .as_u64()
            .is_some()
    );

    let dom = browse(&chromium, &demo.url, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    for series in ["memory", "in-use", "sessions"] {
        assert!(
            dom.contains(&format!("<polyline id=\"{series}\"")),
            "the {series} series: {dom}"
        );
    }
    assert!(
        dom.contains("<polygon id=\"in-use-area\""),
        "the memory in use as an area"
    );
    for key in [
        "memory",
        "in-use",
        "threshold",
        "sessions",
        "elevated",
        "draining",
        "recycle",
    ] {
        assert!(
            dom.contains(&format!("id=\"key-{key}\"")),
            "a legend entry for {key}: {dom}"
        );
    }
    assert!(
        dom.contains("in use: what the workload's sessions hold"),
        "the legend says what the memory in use is"
    );
    assert!(
        dom.contains("class=\"lane\">sessions</text>"),
        "the sessions lane is labelled"
    );
    assert!(
        dom.contains("text-anchor=\"end\">UTC</text>"),
        "the time axis says UTC"
    );
    let ticks: Vec<&str> = dom
        .split("class=\"tick-label\"")
        .skip(1)
        .filter_map(|t| t.split_once('>').and_then(|(_, rest)| rest.split_once('<')))
        .map(|(label, _)| label)
        .collect();
    assert!(
        ticks.len() >= 3
            && ticks
                .iter()
                .all(|t| t.len() == 8 && t.chars().filter(|c| *c == ':').count() == 2),
        "round ticks labelled HH:MM:SS: {ticks:?}"
    );
    // Below the memory lane: every sessions point lower on the page than every memory point.
    let ys = |id: &str| -> Vec<f64> {
        let from = dom
            .split(&format!("<polyline id=\"{id}\""))
            .nth(1)
            .and_then(|rest| rest.split("points=\"").nth(1))
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default();
        from.split_whitespace()
            .filter_map(|xy| xy.split_once(',')?.1.parse().ok())
            .collect()
    };
    let (memory, sessions) = (ys("memory"), ys("sessions"));
    let lowest_memory = memory.iter().copied().fold(f64::MIN, f64::max);
    let highest_session = sessions.iter().copied().fold(f64::MAX, f64::min);
    assert!(
        !memory.is_empty() && highest_session > lowest_memory,
        "the sessions lane lies below the memory lines: sessions from y={highest_session}, memory down to y={lowest_memory}"
    );

    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("demo-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = browse(
        &chromium,
        &demo.url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,800",
            "--hide-scrollbars",
        ],
    );
    assert!(shot.is_file(), "a screenshot: {out:?}");
    assert_eq!(demo.stop("TERM").code(), Some(0));
}
