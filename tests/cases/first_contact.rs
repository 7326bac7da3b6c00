//! A first contact with something that is not KMS: no KMS is looked for, gauges without a
//! measurement are absent, and `--user` narrows a name on a shared host.

use crate::harness::{Memprobe, Workload, free_port, unique_name};

#[test]
fn a_target_that_is_not_kms_gets_no_kms_connection_and_one_line_saying_so() {
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let probe = Memprobe::start(&["--interval", "100ms", "--pid", &pid]);
    let status = probe.wait_state("healthy");
    assert!(status["kms"].is_null(), "no KMS view: {status:#}");
    assert!(status["settings"]["kms_url"].is_null());
    let said = probe.said_once("kms");
    assert!(said.contains("kms: off"), "one line about KMS: {said}");
    let metrics = probe.get("/metrics").body;
    assert!(!metrics.contains("memprobe_kms_"), "{metrics}");
}

#[test]
fn a_kms_gauge_without_a_measurement_is_absent_not_zero() {
    let url = format!("ws://127.0.0.1:{}/kurento", free_port());
    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let probe = Memprobe::start(&[
        "--interval",
        "100ms",
        "--pid",
        &pid,
        "--kms-url",
        &url,
        "--kms-timeout",
        "200ms",
    ]);
    probe.wait_for("a failed connect", |s| !s["kms"]["last_error"].is_null());
    let metrics = probe.get("/metrics").body;
    assert!(metrics.contains("memprobe_kms_up 0"), "{metrics}");
    assert!(
        !metrics.contains("memprobe_kms_ping_seconds "),
        "no ping answered yet, so no latency: {metrics}"
    );
}

#[test]
fn user_narrows_a_name_to_one_users_processes() {
    let name = unique_name("wl-user");
    let target = Workload::start(Some(&name));
    let own = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    let own = own.unwrap().to_string();
    let other = if own == "0" { "65534" } else { "0" };
    let probe = Memprobe::start(&["--interval", "100ms", "--name", &name, "--user", other]);
    let status = probe.wait_for("a look for the target", |s| {
        s["reason"].as_str().is_some_and(|r| r.contains("of user"))
    });
    assert_eq!(
        status["state"], "lost",
        "another user's process is not the target"
    );
    let probe = Memprobe::start(&["--interval", "100ms", "--name", &name, "--user", &own]);
    let status = probe.wait_state("healthy");
    assert_eq!(status["target"]["pid"], target.pid);
    assert!(
        status["target"]["found_by"]
            .as_str()
            .unwrap()
            .ends_with(&format!("--user {own}")),
        "{status:#}"
    );
}
