//! End to end: the real `memprobe` binary against real `memprobe workload` processes.

#[path = "cases/arm64.rs"]
mod arm64;
#[path = "cases/container.rs"]
mod container;
#[path = "cases/custom.rs"]
mod custom;
#[path = "cases/demo.rs"]
mod demo;
#[path = "cases/deploy.rs"]
mod deploy;
#[path = "cases/docs.rs"]
mod docs;
#[path = "cases/drain.rs"]
mod drain;
#[path = "cases/first_contact.rs"]
mod first_contact;
#[path = "cases/fleet.rs"]
mod fleet;
#[path = "cases/fleet_client.rs"]
mod fleet_client;
#[path = "cases/footprint.rs"]
mod footprint;
#[path = "cases/haproxy.rs"]
mod haproxy;
#[path = "cases/hardening.rs"]
mod hardening;
mod harness;
#[path = "cases/house.rs"]
mod house;
#[path = "cases/janus.rs"]
mod janus;
#[path = "cases/kms_gate.rs"]
mod kms_gate;
#[path = "cases/kms_teardown.rs"]
mod kms_teardown;
#[path = "cases/kube.rs"]
mod kube;
#[path = "cases/kurento.rs"]
mod kurento;
#[path = "cases/kurento_client.rs"]
mod kurento_client;
#[path = "cases/kurento_fake.rs"]
mod kurento_fake;
#[path = "cases/page.rs"]
mod page;
#[path = "cases/pause.rs"]
mod pause;
#[path = "cases/recycle.rs"]
mod recycle;

use std::collections::HashSet;
use std::process::Command;

use harness::{Memprobe, Workload, run_to_end, strict, tool, unique_name};
use serde_json::Value;

pub const MI: u64 = 1 << 20;

/// Fast settings: a sample every 100 ms, a 100 MiB threshold, no Kurento.
pub fn fast<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--interval",
        "100ms",
        "--threshold",
        "100MiB",
        "--kms-url",
        "none",
    ];
    args.extend_from_slice(extra);
    args
}

pub fn states_entered(status: &Value) -> Vec<String> {
    status["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| t["to"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_spike_shorter_than_sustain_stays_ready_and_a_sustained_one_drains_then_recycles() {
    let mut target = Workload::start(None);
    let pid = target.pid.to_string();
    let probe = Memprobe::start(&fast(&[
        "--pid",
        &pid,
        "--sustain",
        "5s",
        "--drain-timeout",
        "2s",
    ]));

    probe.wait_state("healthy");
    assert_eq!(probe.get("/ready").code, 200, "healthy takes sessions");

    target.send("alloc 150MiB");
    probe.wait_state("elevated");
    assert_eq!(
        probe.get("/ready").code,
        200,
        "elevated still takes sessions"
    );
    target.send("free");
    let status = probe.wait_state("healthy");
    assert_eq!(probe.get("/ready").code, 200);
    assert!(
        !states_entered(&status).contains(&"draining".to_string()),
        "a spike shorter than --sustain never drains: {status:#}"
    );

    target.send("alloc 150MiB");
    let status = probe.wait_state("draining");
    let ready = probe.get("/ready");
    assert_eq!(ready.code, 503, "draining takes no new sessions");
    assert_eq!(ready.content_type, "application/json");
    let body = ready.json();
    assert_eq!(body["ready"], false);
    assert_eq!(body["state"], "draining");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("over threshold 100.00 MiB for 5s"),
        "the reason gives the numbers: {body}"
    );
    assert_eq!(
        probe.get("/healthz").code,
        200,
        "draining keeps the server alive"
    );
    assert!(status["memory"]["rss_bytes"].as_u64().unwrap() >= 150 * MI);

    target.send("free");
    let status = probe.wait_state("recycle");
    assert_eq!(
        probe.get("/healthz").code,
        503,
        "recycle fails liveness: restart the server"
    );
    assert_eq!(probe.get("/ready").code, 503);
    assert_eq!(
        states_entered(&status),
        [
            "starting", "healthy", "elevated", "healthy", "elevated", "draining", "recycle"
        ],
        "draining was latched although memory fell: {status:#}"
    );
    assert!(
        status["reason"]
            .as_str()
            .unwrap()
            .contains("--drain-timeout")
    );
    let logs = probe.logs().join("\n");
    assert!(
        logs.contains("draining: rss"),
        "each transition is logged with its numbers: {logs}"
    );
}

#[test]
fn a_lost_target_is_not_ready_but_alive_and_its_next_incarnation_is_tracked() {
    let name = unique_name("wl");
    let mut first = Workload::start(Some(&name));
    let probe = Memprobe::start(&fast(&["--name", &name]));
    let status = probe.wait_state("healthy");
    assert_eq!(status["target"]["pid"], first.pid, "found by argv[0]");
    assert_eq!(status["target"]["found_by"], format!("--name {name}"));

    first.kill();
    let status = probe.wait_state("lost");
    assert!(status["target"].is_null());
    assert_eq!(probe.get("/ready").code, 503, "lost takes no sessions");
    assert_eq!(probe.get("/healthz").code, 200, "lost never fails liveness");

    let second = Workload::start(Some(&name));
    let status = probe.wait_for("the new incarnation", |s| {
        s["state"] == "healthy" && s["target"]["pid"] == second.pid
    });
    assert_eq!(status["counters"]["target_restarts_total"], 1);
    assert!(
        probe
            .get("/metrics")
            .body
            .contains("memprobe_target_restarts_total 1"),
        "the restart is counted in /metrics"
    );
}

#[test]
fn a_pidfile_is_read_again_when_the_process_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("target.pid");
    let mut first = Workload::start(None);
    std::fs::write(&pidfile, format!("{}\n", first.pid)).unwrap();
    let probe = Memprobe::start(&fast(&["--pidfile", pidfile.to_str().unwrap()]));
    probe.wait_for("the first pid", |s| s["target"]["pid"] == first.pid);

    first.kill();
    probe.wait_state("lost");
    let second = Workload::start(None);
    std::fs::write(&pidfile, format!("{}\n", second.pid)).unwrap();
    let status = probe.wait_for("the pid from the rewritten pidfile", |s| {
        s["state"] == "healthy" && s["target"]["pid"] == second.pid
    });
    assert_eq!(status["counters"]["target_restarts_total"], 1);
}

const METRIC_NAMES: [&str; 15] = [
    "memprobe_target_up",
    "memprobe_target_memory_bytes",
    "memprobe_threshold_bytes",
    "memprobe_critical_bytes",
    "memprobe_memory_limit_bytes",
    "memprobe_over_threshold_seconds",
    "memprobe_state",
    "memprobe_ready",
    "memprobe_live",
    "memprobe_transitions_total",
    "memprobe_target_restarts_total",
    "memprobe_samples_total",
    "memprobe_sample_errors_total",
    "memprobe_drain_requests_total",
    "memprobe_build_info",
];

#[test]
fn metrics_parse_as_prometheus_text_with_every_name() {
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let probe = Memprobe::start(&fast(&["--pid", &pid, "--critical", "1Gi"]));
    probe.wait_for("a few samples", |s| {
        s["counters"]["samples_total"].as_u64() >= Some(3)
    });

    let reply = probe.get("/metrics");
    assert_eq!(reply.code, 200);
    assert_eq!(
        reply.content_type,
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let lines = reply.body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition format");
    let names: HashSet<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for name in METRIC_NAMES {
        assert!(names.contains(name), "{name} is exported; got {names:?}");
    }
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(names.contains(name), "memprobe's own {name} is exported");
    }
    let value = |metric: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{metric} {label:?} missing"))
    };
    assert_eq!(value("memprobe_state", Some(("state", "healthy"))), 1.0);
    assert_eq!(value("memprobe_state", Some(("state", "draining"))), 0.0);
    assert_eq!(value("memprobe_threshold_bytes", None), (100 * MI) as f64);
    assert_eq!(value("memprobe_critical_bytes", None), (1024 * MI) as f64);
    assert_eq!(value("memprobe_target_up", None), 1.0);
    assert_eq!(value("memprobe_ready", None), 1.0);
    assert!(value("memprobe_target_memory_bytes", Some(("kind", "rss"))) > 0.0);
    assert_eq!(
        value("memprobe_transitions_total", Some(("to", "healthy"))),
        1.0
    );
    // A few seconds of history are no trend: no forecast, and /status says why.
    assert!(!names.contains("memprobe_forecast_threshold_seconds"));
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("memprobe_fleet_") || n.starts_with("memprobe_events_")),
        "no fleet or Event series with the fleet off: {names:?}"
    );
    let status = probe.status();
    let said = status["forecast"]["said"].as_str().unwrap_or_default();
    assert!(said.starts_with("no forecast yet: "), "{said}");
    assert!(status["forecast"]["threshold_in_seconds"].is_null());

    if let Some(promtool) = tool("promtool") {
        let mut check = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .output_with_input(reply.body.as_bytes());
        assert!(
            check.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&std::mem::take(&mut check.stderr))
        );
    }
}

trait OutputWithInput {
    fn output_with_input(&mut self, input: &[u8]) -> std::process::Output;
}

impl OutputWithInput for Command {
    fn output_with_input(&mut self, input: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
        child.wait_with_output().expect("wait")
    }
}

#[test]
fn memory_anon_decides_on_anonymous_memory() {
    let mut target = Workload::start(None);
    let pid = target.pid.to_string();
    let probe = Memprobe::start(&fast(&["--pid", &pid, "--memory", "anon"]));
    probe.wait_state("healthy");
    target.send("alloc 150MiB");
    // The first sample over 100 MiB may come while the 150 MiB are still being touched.
    let status = probe.wait_for("elevated on all 150 MiB", |s| {
        s["state"] == "elevated" && s["memory"]["anon_bytes"].as_u64() >= Some(150 * MI)
    });
    assert_eq!(status["memory"]["deciding"], "anon");
    let anon = status["memory"]["anon_bytes"].as_u64().unwrap();
    assert_eq!(status["memory"]["deciding_bytes"].as_u64(), Some(anon));
    assert!(
        status["reason"].as_str().unwrap().starts_with("anon "),
        "{status:#}"
    );
}

#[test]
fn include_children_adds_up_the_descendants() {
    let mut target = Workload::start(None);
    target.send("spawn 150MiB");
    let pid = target.pid.to_string();

    let alone = Memprobe::start(&fast(&["--pid", &pid]));
    let with_children = Memprobe::start(&fast(&["--pid", &pid, "--include-children"]));

    let status = with_children.wait_state("elevated");
    assert_eq!(status["memory"]["processes"], 2, "the parent and its child");
    assert!(status["memory"]["rss_bytes"].as_u64().unwrap() >= 150 * MI);

    let status = alone.wait_state("healthy");
    assert_eq!(status["memory"]["processes"], 1);
    assert!(
        status["memory"]["rss_bytes"].as_u64().unwrap() < 100 * MI,
        "the parent alone is small"
    );
}

#[test]
fn memory_pss_reads_smaps_rollup() {
    let mut target = Workload::start(None);
    target.send("alloc 120MiB");
    let pid = target.pid.to_string();
    let probe = Memprobe::start(&fast(&["--pid", &pid, "--memory", "pss"]));
    let status = probe.wait_state("elevated");
    assert_eq!(status["memory"]["deciding"], "pss");
    assert!(status["memory"]["pss_bytes"].as_u64().unwrap() >= 120 * MI);
}

#[test]
fn memory_pss_without_ptrace_access_exits_saying_which_privilege_is_missing() {
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let output = if root {
        // Run memprobe as nobody against a root-owned target.
        let Some(setpriv) = tool("setpriv") else {
            return;
        };
        Command::new(setpriv)
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                harness::MEMPROBE,
            ])
            .args(["--pid", &pid, "--memory", "pss", "--listen", "127.0.0.1:0"])
            .output()
            .expect("run memprobe as nobody")
    } else {
        // Not root: a process of another user is needed, and PID 1 is one only where this
        // user is not the one who started the machine or container.
        let owner_of_1 =
            std::fs::metadata("/proc/1").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        let me = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        if owner_of_1.ok() == me.ok() {
            harness::skip("PID 1 is this user's own, and only root can run as another");
            return;
        }
        run_to_end(
            &["--pid", "1", "--memory", "pss", "--listen", "127.0.0.1:0"],
            &[],
        )
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("CAP_SYS_PTRACE"),
        "names the missing privilege: {stderr}"
    );
    assert!(!stderr.contains("panicked"));
}

#[test]
fn invalid_input_exits_2_with_one_line_naming_the_flag_and_value() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case; 8] = [
        (
            &["--threshold", "80 percent"],
            &[],
            &["--threshold", "'80 percent'", "try"],
        ),
        (
            &["--interval", "soon"],
            &[],
            &["--interval", "'soon'", "5s"],
        ),
        (
            &[],
            &[("MEMPROBE_INTERVAL", "soon")],
            &["MEMPROBE_INTERVAL", "'soon'"],
        ),
        (
            &[],
            &[("MEMPROBE_THRESHOLD", "lots")],
            &["MEMPROBE_THRESHOLD", "'lots'"],
        ),
        (
            &["--pid", "1", "--name", "kms"],
            &[],
            &["--pid and --name", "one target"],
        ),
        (&["--memory", "vsz"], &[], &["--memory", "'vsz'", "rss"]),
        (&["--frobnicate"], &[], &["--frobnicate"]),
        (
            &[],
            &[("RUST_LOG", "=x=")],
            &["RUST_LOG", "'=x='", "try info"],
        ),
    ];
    for (args, env, expected) in cases {
        let output = run_to_end(args, env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        if args == ["--frobnicate"] {
            // A flag clap does not know: its whole message, the first line naming the flag.
            let first = stderr.lines().next().unwrap_or_default();
            assert!(first.starts_with("memprobe: "), "{stderr}");
            assert!(first.contains("--frobnicate"), "{stderr}");
        } else {
            assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        }
        for word in expected {
            assert!(
                stderr.contains(word),
                "{args:?} {env:?}: {stderr:?} should name {word}"
            );
        }
        assert!(!stderr.contains("panicked"));
    }
}

#[test]
fn help_shows_every_flag_with_its_default_and_version_answers() {
    let output = run_to_end(&["--help"], &[]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for (flag, default) in [
        ("--interval", "5s"),
        ("--threshold", "80%"),
        ("--sustain", "5m"),
        ("--drain-timeout", "1h"),
        ("--min-drain", "30s"),
        ("--memory ", "rss"),
        ("--listen", "0.0.0.0:8899"),
        ("--name", "kurento-media-server"),
    ] {
        // A flag's entry: its line, and the help under it when clap puts it on the next one.
        let lines: Vec<&str> = help.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} in {help}"));
        let entry = lines[at..lines.len().min(at + 2)].join("\n");
        assert!(
            entry.contains(&format!("[default: {default}]")),
            "{flag} shows its default {default}: {entry}"
        );
    }
    let version = run_to_end(&["--version"], &[]);
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("memprobe "));
}

#[test]
fn sigterm_makes_ready_fail_and_exits_0() {
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let mut probe = Memprobe::start(&fast(&["--pid", &pid]));
    probe.wait_state("healthy");
    let status = probe.terminate();
    assert_eq!(status.code(), Some(0), "a clean stop exits 0");
    let logs = probe.logs().join("\n");
    assert!(logs.contains("/ready answers 503"), "{logs}");
}

#[test]
fn every_endpoint_answers_and_strangers_get_json() {
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let probe = Memprobe::start(&fast(&["--pid", &pid]));
    probe.wait_state("healthy");
    probe.wait_live();
    let head = probe.request("HEAD", "/ready");
    assert_eq!((head.code, head.body.as_str()), (200, ""));
    let post = probe.request("POST", "/ready");
    assert_eq!(post.code, 405);
    let missing = probe.get("/nope");
    assert_eq!(missing.code, 404);
    assert_eq!(missing.json()["path"], "/nope");

    let status = probe.status();
    assert_eq!(status["ready"], true);
    assert_eq!(status["live"], true);
    assert_eq!(status["threshold"]["bytes"], 100 * MI);
    assert_eq!(status["threshold"]["given"], "100.00 MiB");
    assert_eq!(status["settings"]["interval"], "100ms");
    assert!(
        status["target"]["start_time"]
            .as_str()
            .unwrap()
            .starts_with("20")
    );
}

#[test]
fn a_percentage_threshold_uses_the_memory_limit_flag() {
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let probe = Memprobe::start_with(
        &["--pid", &pid, "--interval", "100ms", "--threshold", "50%"],
        &[("MEMPROBE_MEMORY_LIMIT", "400Mi")],
    );
    let status = probe.wait_state("healthy");
    assert_eq!(status["threshold"]["bytes"], 200 * MI, "50% of 400Mi");
    assert_eq!(status["threshold"]["limit"]["source"], "--memory-limit");
}

#[test]
fn a_kms_on_glibc_malloc_gets_one_warning_and_jemalloc_is_recognised() {
    // The workload is this test build of memprobe: it runs on glibc's malloc only where the
    // build is for glibc.
    if !cfg!(target_env = "gnu") {
        harness::skip("this build's workload does not run on glibc's malloc");
        return;
    }
    // A KMS by its argv[0], named uniquely: the machine may run a real one.
    let name = unique_name("kurento-media-server");
    let kms = Workload::start(Some(&name));
    let probe = Memprobe::start(&["--interval", "100ms", "--kms-url", "none", "--name", &name]);
    let status = probe.wait_for("the fake KMS", |s| s["target"]["pid"] == kms.pid);
    assert_eq!(status["target"]["allocator"], "glibc");
    probe.wait_for("a few samples", |s| {
        s["counters"]["samples_total"].as_u64() >= Some(3)
    });
    let warning = probe.said_once("glibc's malloc");
    assert!(
        warning.contains("kurento-jemalloc"),
        "one warning naming the jemalloc image: {warning}"
    );

    if !demo::jemalloc_preloads() {
        assert!(!strict(), "libjemalloc2 is required in strict mode");
        return harness::skip("the jemalloc half: the dynamic loader finds no libjemalloc.so.2");
    }
    let preloaded = Workload::start_with(None, &[("LD_PRELOAD", memprobe::tools::demo::JEMALLOC)]);
    let pid = preloaded.pid.to_string();
    let probe = Memprobe::start(&fast(&["--pid", &pid]));
    let status = probe.wait_state("healthy");
    assert_eq!(status["target"]["allocator"], "jemalloc");
    assert!(
        probe
            .get("/metrics")
            .body
            .contains(r#"memprobe_target_allocator_info{allocator="jemalloc"} 1"#)
    );
}

#[test]
fn skips_are_recorded_and_summed_up_by_reason_with_a_count_of_tests() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("skipped").join("1");
    harness::skips::record(&file, "janus::a", "janus is not installed").unwrap();
    harness::skips::record(&file, "janus::a", "the second half:\nno libjemalloc2").unwrap();
    harness::skips::record(&file, "deploy::b", "kubectl is not installed").unwrap();
    harness::skips::record(&file, "deploy::b", "kubectl is not installed").unwrap();
    harness::skips::record(&file, "deploy::c", "kubectl is not installed").unwrap();
    let summary = harness::skips::summary(&std::fs::read_to_string(&file).unwrap());
    assert!(
        summary.starts_with("SKIPPED 3 tests in whole or in part"),
        "a count a person sees, of tests and not of lines: {summary}"
    );
    assert!(
        summary
            .contains("\n  2 tests: kubectl is not installed\n      deploy::b\n      deploy::c\n"),
        "each reason once, the commonest first, with its tests: {summary}"
    );
    for line in [
        "  1 test: janus is not installed\n      janus::a\n",
        "  1 test: the second half: no libjemalloc2\n      janus::a\n",
    ] {
        assert!(summary.contains(line), "every reason: {summary}");
    }
    assert_eq!(
        harness::skips::summary(""),
        "SKIPPED: nothing, every test ran in full\n"
    );
}

#[test]
fn the_harness_refuses_a_target_that_another_process_could_be() {
    use harness::assert_unique_target;
    let refused = |args: &'static [&'static str], env: &'static [(&'static str, &'static str)]| {
        std::panic::catch_unwind(|| assert_unique_target(args, env)).is_err()
    };
    assert!(refused(&["--interval", "100ms"], &[]), "the default name");
    assert!(refused(&["--name", "kurento-media-server"], &[]));
    assert!(refused(&[], &[("MEMPROBE_NAME", "janus")]));
    let name = unique_name("kurento-media-server");
    assert_unique_target(&["--name", &name], &[]);
    assert_unique_target(&["--pid", "1"], &[]);
    assert_unique_target(&[], &[("MEMPROBE_PIDFILE", "/run/kms.pid")]);
    assert_unique_target(&["--memory-source", "kms"], &[]);
}
