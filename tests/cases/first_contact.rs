//! A first contact with something that is not KMS: no KMS is looked for, gauges without a
//! measurement are absent, and `--user` narrows a name on a shared host. And a first run on
//! a terminal says nothing about memprobe's own build.

use crate::harness::{self, Memprobe, Workload, free_port, shipped, tool, unique_name};

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

/// `command` run on a terminal (a pty that `script` makes): what the
/// terminal showed, and how it exited.
fn on_a_terminal(script: &std::path::Path, command: &str, env: &[(&str, &str)]) -> (String, i32) {
    let output = std::process::Command::new(script)
        .args(["-qec", command, "/dev/null"])
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run script");
    let shown = String::from_utf8_lossy(&output.stdout).into_owned();
    (shown, output.status.code().unwrap_or(-1))
}

#[test]
fn a_run_on_a_terminal_never_speaks_of_tracing_features_and_colours_unless_no_color() {
    let Some(script) = tool("script") else {
        return;
    };
    let shipped = shipped();
    let target = Workload::start(None);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap();
    for binary in [
        Some(std::path::Path::new(harness::MEMPROBE)),
        shipped.as_deref(),
    ]
    .into_iter()
    .flatten()
    {
        let binary = binary.display();
        // Runs that end at once: the demo and the sidecar on a port already taken.
        for command in [
            format!("{binary} demo --listen {taken}"),
            format!(
                "{binary} --pid {} --kms-url none --listen {taken}",
                target.pid
            ),
        ] {
            let (shown, code) = on_a_terminal(&script, &command, &[]);
            assert_eq!(code, 1, "{command}: the port is taken: {shown}");
            assert!(shown.contains("cannot listen there"), "{command}: {shown}");
            assert!(
                !shown.contains("tracing-subscriber") && !shown.contains("internal error"),
                "nothing a user did should print that: {shown}"
            );
        }
        // A run that logs, stopped by SIGINT a few seconds in.
        let command = format!(
            "timeout --preserve-status -s INT 4 {binary} --pid {} --kms-url none --interval 100ms \
             --shutdown-delay 0s --listen 127.0.0.1:0",
            target.pid
        );
        let (shown, code) = on_a_terminal(&script, &command, &[]);
        assert_eq!(code, 0, "a clean stop: {shown}");
        assert!(shown.contains("listening on 127.0.0.1:"), "{shown}");
        assert!(shown.contains("\x1b["), "colours on a terminal: {shown}");
        assert!(!shown.contains("tracing-subscriber"), "{shown}");
        let (shown, _) = on_a_terminal(&script, &command, &[("NO_COLOR", "1")]);
        assert!(shown.contains("listening on 127.0.0.1:"), "{shown}");
        assert!(!shown.contains('\x1b'), "none with NO_COLOR: {shown:?}");
    }
}
