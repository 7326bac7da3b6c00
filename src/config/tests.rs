//! Flags and variables in, settings or one exact error line out.

use std::time::Duration;

use super::*;
use crate::policy::fleet::Budget;
use crate::sources::proc::target::TargetSpec;
use crate::sources::{MemoryFrom, MemoryKind};
use crate::units::SizeOrPercent;

const GI: u64 = 1 << 30;

/// The sidecar's flags alone, as the command line reads them.
#[derive(clap::Parser)]
struct Sidecar {
    #[command(flatten)]
    watch: WatchFlags,
}

fn sidecar(args: &[&str]) -> Result<Config, String> {
    use clap::{CommandFactory, FromArgMatches};
    let argv = std::iter::once("memprobe").chain(args.iter().copied());
    let command = Sidecar::command();
    let matches = command
        .clone()
        .try_get_matches_from(argv)
        .map_err(|e| format!("clap: {}", e.kind()))?;
    let flags = Sidecar::from_arg_matches(&matches).map_err(|e| format!("clap: {}", e.kind()))?;
    validate(flags.watch, &matches, &command, 16 * GI).map_err(|e| e.to_string())
}

/// A pid that exists: this test's own.
fn own_pid() -> String {
    std::process::id().to_string()
}

#[test]
fn defaults_are_right_for_kms_on_kubernetes() {
    let c = sidecar(&[]).expect("no flags at all is valid");
    assert_eq!(
        c.sources.proc.target,
        TargetSpec::Name("kurento-media-server".into())
    );
    assert_eq!(c.interval, Duration::from_secs(5));
    assert_eq!(c.sources.memory, MemoryKind::Rss);
    assert_eq!(c.policy.threshold, SizeOrPercent::Percent(80.0));
    assert_eq!(c.policy.critical, None);
    assert_eq!(c.policy.sustain, Duration::from_secs(300));
    assert_eq!(c.policy.drain_timeout, Duration::from_secs(3600));
    assert_eq!(c.policy.min_drain, Duration::from_secs(30));
    assert_eq!(c.outlets.http.listen, "0.0.0.0:8899".parse().unwrap());
    assert_eq!(c.outlets.http.shutdown_delay, Duration::from_secs(1));
}

#[test]
fn a_bad_value_names_the_flag_the_value_and_an_example() {
    assert_eq!(
        sidecar(&["--threshold", "80 percent"]).unwrap_err(),
        "--threshold: '80 percent' is not a size or a percentage (try 1536Mi, 1.5GiB or 80%)"
    );
    assert_eq!(
        sidecar(&["--min-drain", "soon"]).unwrap_err(),
        "--min-drain: 'soon' is not a duration (try 250ms, 5s, 5m or 1h30m)"
    );
    assert_eq!(
        sidecar(&["--memory", "vsz"]).unwrap_err(),
        "--memory: 'vsz' is not rss, anon or pss (try rss)"
    );
    assert_eq!(
        sidecar(&["--fleet", "kubernets"]).unwrap_err(),
        "--fleet: 'kubernets' is not off or kubernetes (did you mean kubernetes?)"
    );
    assert_eq!(
        sidecar(&["--fleet", "Kubernetes-Leases"]).unwrap_err(),
        "--fleet: 'Kubernetes-Leases' is not off or kubernetes (try off)"
    );
    assert_eq!(
        sidecar(&["--memory", "ps"]).unwrap_err(),
        "--memory: 'ps' is not rss, anon or pss (did you mean pss?)"
    );
    assert_eq!(
        sidecar(&["--pid", "12ab"]).unwrap_err(),
        "--pid: '12ab' is not a process id (try --pid 1234)"
    );
    assert_eq!(
        sidecar(&["--interval", "0s"]).unwrap_err(),
        "--interval: '0s' is outside 10ms to 7days (try 5s)"
    );
}

#[test]
fn a_value_starting_with_a_dash_reaches_validation() {
    assert_eq!(
        sidecar(&["--threshold", "-5MiB"]).unwrap_err(),
        "--threshold: '-5MiB' is not a size or a percentage (try 1536Mi, 1.5GiB or 80%)"
    );
    assert!(
        sidecar(&["--interval", "-1s"])
            .unwrap_err()
            .starts_with("--interval: '-1s'")
    );
}

#[test]
fn the_quiet_moment_is_on_within_48h_unless_turned_off() {
    // The fleet sweep's choice (cargo bench --bench fleet): 12 hours misses the night before
    // a peak that crosses the threshold when the floor grows at the clean rate.
    assert_eq!(
        sidecar(&[]).unwrap().policy.quiet_within,
        Some(Duration::from_secs(48 * 3600))
    );
    let off = sidecar(&["--recycle-when-idle-within", "off"]).unwrap();
    assert_eq!(off.policy.quiet_within, None);
    assert_eq!(off.shown().recycle_when_idle_within, None);
    let on = sidecar(&["--recycle-when-idle-within", "12h"]).unwrap();
    assert_eq!(on.policy.quiet_within, Some(Duration::from_secs(12 * 3600)));
    assert_eq!(on.shown().recycle_when_idle_within.as_deref(), Some("12h"));
    let e = sidecar(&["--recycle-when-idle-within", "tonight"]).unwrap_err();
    assert!(
        e.starts_with("--recycle-when-idle-within: 'tonight' ") && e.contains("(try "),
        "{e}"
    );
}

#[test]
fn every_duration_is_bounded() {
    for flag in [
        "--interval",
        "--sustain",
        "--idle-sustain",
        "--recycle-when-idle-within",
        "--drain-timeout",
        "--kms-ping-interval",
        "--kms-timeout",
        "--kms-hang-timeout",
        "--kms-gc-period",
    ] {
        for value in ["1ns", "200000000000y", "8days"] {
            let e = sidecar(&[flag, value]).unwrap_err();
            assert!(
                e.starts_with(&format!("{flag}: '{value}' is outside 10ms to 7days")),
                "{e}"
            );
        }
    }
    assert_eq!(
        sidecar(&["--min-drain", "0s"]).unwrap().policy.min_drain,
        Duration::ZERO
    );
    assert_eq!(
        sidecar(&["--shutdown-delay", "0s"])
            .unwrap()
            .outlets
            .http
            .shutdown_delay,
        Duration::ZERO
    );
    assert!(sidecar(&["--shutdown-delay", "1h"]).is_err());
}

#[test]
fn every_value_is_checked_whether_or_not_anything_uses_it() {
    // A target that is not KMS: KMS, Janus, the agent and the admin API are all off.
    let own = std::process::id().to_string();
    let off = sidecar(&["--pid", &own]).unwrap();
    assert!(
        off.sources.kms.is_none() && off.sources.janus.is_none() && off.outlets.agent.is_none()
    );
    for (flag, value) in [
        ("--kms-timeout", "300000000000y"),
        ("--kms-ping-interval", "9days"),
        ("--kms-failures", "0"),
        ("--kms-hang-timeout", "1ns"),
        ("--kms-gc-period", "9days"),
        ("--janus-poll", "9days"),
        ("--janus-drain-switch", "maybe"),
        ("--sessions-url", "https://sfu/stats"),
        ("--sessions-poll", "9days"),
        ("--sessions-hang-timeout", "soon"),
        ("--janus-secret", " "),
        ("--janus-secret-file", "/dev/zero"),
        ("--agent-weight", "heavy"),
        ("--recycle-retry", "0s"),
    ] {
        let e = sidecar(&["--pid", &own, flag, value]).unwrap_err();
        assert!(
            e.starts_with(&format!("{flag}: ")) && e.contains("(try "),
            "{flag} {value:?} is refused with its integration off, naming it: {e}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "janusoverlord").unwrap();
    let secret = secret.to_str().unwrap();
    assert!(
        sidecar(&["--pid", &own, "--janus-secret-file", secret]).is_ok(),
        "a good value of an integration that is off is accepted"
    );
    assert_eq!(
        sidecar(&[
            "--pid",
            &own,
            "--janus-secret",
            "x",
            "--janus-secret-file",
            secret
        ])
        .unwrap_err(),
        "--janus-secret and --janus-secret-file: only one may be given (keep the file)",
        "two sources of one secret are refused with Janus off too"
    );
}

#[test]
fn include_children_is_a_flag_or_a_boolean() {
    assert!(!sidecar(&[]).unwrap().sources.proc.include_children);
    assert!(
        sidecar(&["--include-children"])
            .unwrap()
            .sources
            .proc
            .include_children
    );
    assert!(
        sidecar(&["--include-children", "--pid", &own_pid()])
            .unwrap()
            .sources
            .proc
            .include_children
    );
    assert!(
        !sidecar(&["--include-children=off"])
            .unwrap()
            .sources
            .proc
            .include_children
    );
    assert!(
        sidecar(&["--include-children=maybe"])
            .unwrap_err()
            .starts_with("--include-children: 'maybe' is not a boolean")
    );
}

#[test]
fn a_target_that_is_not_kms_needs_no_kms() {
    let own = own_pid();
    for args in [
        &["--pid", own.as_str()][..],
        &["--pidfile", "/run/x.pid"],
        &["--name", "python3"],
    ] {
        let c = sidecar(args).unwrap();
        assert_eq!(c.sources.kms, None, "{args:?}: no KMS to reach");
        assert!(c.sources.kms_off.unwrap().starts_with("kms: off"));
    }
    let c = sidecar(&["--pid", &own, "--kms-url", "ws://kms:8888/kurento"]).unwrap();
    assert!(c.sources.kms.is_some(), "a --kms-url given turns it on");
    let c = sidecar(&[]).unwrap();
    assert!(
        c.sources.kms.is_some() && c.sources.kms_off.is_none(),
        "KMS by default"
    );
}

#[test]
fn an_admin_token_is_checked_and_never_echoed() {
    assert_eq!(sidecar(&[]).unwrap().outlets.http.admin_token, None);
    let c = sidecar(&["--admin-token", "0123456789abcdef0123"]).unwrap();
    assert!(c.outlets.http.admin_token.is_some());
    let e = sidecar(&["--admin-token", "hunter2"]).unwrap_err();
    assert_eq!(
        e,
        "--admin-token: is shorter than 16 characters (try: openssl rand -hex 32)"
    );
    assert!(!e.contains("hunter2"));
}

#[test]
fn janus_watches_janus_and_only_janus() {
    let c = sidecar(&["--janus-url", "http://127.0.0.1:7088/admin"]).unwrap();
    assert_eq!(
        c.sources.proc.target,
        TargetSpec::Name("janus".into()),
        "the default name"
    );
    assert_eq!(c.sources.kms, None, "no KMS beside Janus");
    let janus = c.sources.janus.unwrap();
    assert_eq!(janus.poll, Duration::from_secs(5));
    assert!(janus.drain_switch);
    assert!(
        sidecar(&[
            "--janus-url",
            "http://127.0.0.1:7088/admin",
            "--kms-url",
            "ws://kms:8888/kurento"
        ])
        .unwrap_err()
        .contains("one media server")
    );
    let c = sidecar(&[
        "--janus-url",
        "http://127.0.0.1:7088/admin",
        "--janus-secret",
        "janusoverlord",
    ])
    .unwrap();
    assert!(!format!("{c:?}").contains("janusoverlord"), "never shown");
    assert!(sidecar(&["--janus-url", "ws://x/admin"]).is_err());
}

#[test]
fn any_other_server_counts_its_sessions_at_a_url_or_in_a_file() {
    let url = "http://127.0.0.1:3000/stats#/rooms/active";
    let c = sidecar(&["--name", "my-sfu", "--sessions-url", url]).unwrap();
    let custom = c.sources.custom.expect("on");
    assert_eq!(custom.from.shown(), url);
    assert_eq!(custom.poll, Duration::from_secs(5));
    assert_eq!(
        (custom.failures, custom.timeout),
        (3, Duration::from_secs(3))
    );
    assert_eq!(c.sources.kms, None, "no KMS beside it");
    assert_eq!(
        (custom.hang_timeout, c.policy.server.hang_timeout),
        (None, Duration::MAX),
        "a count that cannot be read never restarts the server unless the operator opts in"
    );
    let opted = ["--name", "my-sfu", "--sessions-url", url];
    let opted = sidecar(&[&opted[..], &["--sessions-hang-timeout", "90s"]].concat()).unwrap();
    assert_eq!(
        opted.policy.server.hang_timeout,
        Duration::from_secs(90),
        "--sessions-hang-timeout: a stall this long recycles"
    );
    assert_eq!(
        opted.shown().sessions_hang_timeout.as_deref(),
        Some("1m 30s")
    );
    let file = ["--name", "my-sfu", "--sessions-file", "/dev/zero"];
    assert!(
        sidecar(&file)
            .unwrap_err()
            .starts_with("--sessions-file: '/dev/zero' is not a regular file")
    );
    for (args, error) in [
        (
            &["--sessions-url", url][..],
            "--sessions-url: needs the server's process too (try --name my-sfu, --pid or --pidfile)",
        ),
        (
            &["--name", "x", "--sessions-url", "https://h/s"],
            "--sessions-url: 'https://h/s' is not an http:// URL (try http://127.0.0.1:3000/sessions, or http://127.0.0.1:3000/stats#/rooms/active for a JSON field)",
        ),
        (
            &[
                "--name",
                "x",
                "--sessions-url",
                url,
                "--kms-url",
                "ws://kms:8888/kurento",
            ],
            "--sessions-url and --kms-url: memprobe watches one media server: give one of them",
        ),
        (
            &[
                "--name",
                "x",
                "--sessions-url",
                url,
                "--janus-url",
                "http://127.0.0.1:7088/admin",
            ],
            "--sessions-url and --janus-url: memprobe watches one media server: give one of them",
        ),
        (
            &[
                "--name",
                "x",
                "--sessions-url",
                url,
                "--sessions-file",
                "/tmp/n",
            ],
            "--sessions-url and --sessions-file: only one may be given (try just --sessions-url http://127.0.0.1:3000/sessions)",
        ),
        (
            &[
                "--name",
                "x",
                "--sessions-url",
                url,
                "--sessions-poll",
                "soon",
            ],
            "--sessions-poll: 'soon' is not a duration (try 250ms, 5s, 5m or 1h30m)",
        ),
    ] {
        assert_eq!(sidecar(args).unwrap_err(), error, "{args:?}");
    }
    assert!(sidecar(&["--name", "x", "--sessions-url", url, "--kms-url", "none"]).is_ok());
}

#[test]
fn a_user_narrows_a_name() {
    assert_eq!(
        sidecar(&["--user", "1000"]).unwrap().sources.proc.user,
        Some(1000)
    );
    assert_eq!(
        sidecar(&["--user", "root"]).unwrap().sources.proc.user,
        Some(0)
    );
    assert_eq!(
        sidecar(&["--user", "no-such-user-here"]).unwrap_err(),
        "--user: 'no-such-user-here' is not a user on this system (try a numeric uid, e.g. --user 1000)"
    );
    assert!(
        sidecar(&["--user", "0", "--pid", &own_pid()])
            .unwrap_err()
            .starts_with("--user: '0' narrows --name only")
    );
}

#[test]
fn target_flags_exclude_each_other() {
    assert_eq!(
        sidecar(&["--pid", "1", "--name", "kms"]).unwrap_err(),
        "--pid and --name: only one target may be given (try just --name kurento-media-server)"
    );
}

#[test]
fn kurento_settings() {
    let c = sidecar(&[]).unwrap();
    let kms = c.sources.kms.expect("on by default");
    assert_eq!(kms.url.expose(), "ws://127.0.0.1:8888/kurento");
    assert_eq!(kms.ping_interval, Duration::from_secs(10));
    assert_eq!(kms.timeout, Duration::from_secs(3));
    assert_eq!(kms.failures, 3);
    assert_eq!(kms.hang_timeout, Duration::from_secs(60));
    assert_eq!(c.policy.idle_sustain, Duration::from_secs(60));
    assert_eq!(sidecar(&["--kms-url", "none"]).unwrap().sources.kms, None);
    assert_eq!(
        sidecar(&["--kms-url", "http://kms:8888/kurento"]).unwrap_err(),
        "--kms-url: 'http://kms:8888/kurento' is not a ws:// URL (try ws://127.0.0.1:8888/kurento, or none)"
    );
    assert_eq!(
        sidecar(&["--kms-url", "ws://kms:70000/kurento"]).unwrap_err(),
        "--kms-url: 'ws://kms:70000/kurento' has a port over 65535 (try ws://127.0.0.1:8888/kurento, or none)"
    );
    assert!(
        sidecar(&["--kms-failures", "0"])
            .unwrap_err()
            .starts_with("--kms-failures: '0'")
    );
}

#[test]
fn a_kms_url_with_a_secret_is_never_echoed() {
    let e = sidecar(&["--kms-url", "http://admin:S3cr3t@kms/kurento?token=X"]).unwrap_err();
    assert!(!e.contains("S3cr3t") && !e.contains("token=X"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms-url");
    std::fs::write(&path, "ws://admin:S3cr3t@kms:8888/kurento?token=X\n").unwrap();
    let c = sidecar(&["--kms-url-file", path.to_str().unwrap()]).unwrap();
    let url = c.sources.kms.unwrap().url;
    assert_eq!(url.expose(), "ws://admin:S3cr3t@kms:8888/kurento?token=X");
    assert_eq!(url.to_string(), "ws://admin:***@kms:8888/kurento?token=***");
    assert!(
        sidecar(&[
            "--kms-url-file",
            path.to_str().unwrap(),
            "--kms-url",
            "none"
        ])
        .unwrap_err()
        .starts_with("--kms-url and --kms-url-file: only one")
    );
    let e = sidecar(&["--kms-url-file", "/dev/zero"]).unwrap_err();
    assert!(e.starts_with("--kms-url-file: '/dev/zero'"), "{e}");
}

#[test]
fn memory_from_kms_needs_no_process_flags() {
    let c = sidecar(&["--memory-source", "kms"]).unwrap();
    assert_eq!(c.sources.memory_from, MemoryFrom::Kms);
    assert!(
        sidecar(&["--memory-source", "kms", "--pid", &own_pid()])
            .unwrap_err()
            .starts_with("--pid: picks a process")
    );
    assert!(
        sidecar(&["--memory-source", "kms", "--memory", "pss"])
            .unwrap_err()
            .starts_with("--memory: 'pss'")
    );
    assert!(sidecar(&["--memory-source", "kms", "--kms-url", "none"]).is_err());
}

#[test]
fn critical_must_be_above_the_threshold_once_resolved() {
    assert!(sidecar(&["--threshold", "2Gi", "--critical", "1Gi"]).is_err());
    assert!(sidecar(&["--threshold", "80%", "--critical", "95%"]).is_ok());
    let e = sidecar(&[
        "--memory-limit",
        "4Gi",
        "--threshold",
        "80%",
        "--critical",
        "1Mi",
    ])
    .unwrap_err();
    assert!(
        e.starts_with("--critical: '1Mi' is 1.00 MiB, not above the threshold 3.20 GiB (80%)"),
        "a size against a percentage is compared once resolved: {e}"
    );
    assert!(
        sidecar(&[
            "--memory-limit",
            "4Gi",
            "--threshold",
            "3Gi",
            "--critical",
            "90%"
        ])
        .is_ok()
    );
}

#[test]
fn a_threshold_must_be_reachable_and_more_than_zero() {
    let e = sidecar(&["--memory-limit", "4Gi", "--threshold", "5Gi"]).unwrap_err();
    assert!(
        e.starts_with(
            "--threshold: '5Gi' is 5.00 GiB, over the memory limit 4.00 GiB (--memory-limit)"
        ),
        "{e}"
    );
    let e = sidecar(&["--threshold", "32Gi"]).unwrap_err();
    assert!(e.contains("host MemTotal"), "{e}");
    let e = sidecar(&["--memory-limit", "1Mi", "--threshold", "0.00001%"]).unwrap_err();
    assert!(
        e.starts_with("--memory-limit: '1Mi' leaves a threshold of 0 B"),
        "{e}"
    );
}

/// `MEMPROBE_THRESHOLD: "80"` in a Deployment is 80 bytes: every pod would drain at its first
/// sample. No server keeps less than 1 MiB resident, so a size under it is refused, and a
/// bare number that reads as a percentage is offered as one.
#[test]
fn a_size_too_small_to_be_a_servers_memory_is_refused_with_what_was_meant() {
    assert_eq!(
        sidecar(&["--threshold", "80"]).unwrap_err(),
        "--threshold: '80' is 80 B, too small to be a server's memory: a number without a unit \
         is bytes (try 80%)"
    );
    assert_eq!(
        sidecar(&["--critical", "95"]).unwrap_err(),
        "--critical: '95' is 95 B, too small to be a server's memory: a number without a unit \
         is bytes (try 95%)"
    );
    assert_eq!(
        sidecar(&["--threshold", "1536"]).unwrap_err(),
        "--threshold: '1536' is 1.50 KiB, too small to be a server's memory: a number without a \
         unit is bytes (try 1536Mi)"
    );
    assert_eq!(
        sidecar(&["--memory-limit", "512"]).unwrap_err(),
        "--memory-limit: '512' is 512 B, too small to be a server's memory: a number without a \
         unit is bytes (try 512Mi)"
    );
    assert_eq!(
        sidecar(&["--threshold", "500KiB"]).unwrap_err(),
        "--threshold: '500KiB' is 500.00 KiB, too small to be a server's memory (try 80%)"
    );
    // 1 MiB and more are sizes, with or without a unit.
    for size in ["1048576", "1Mi", "1536Mi", "2000000000"] {
        assert!(sidecar(&["--threshold", size]).is_ok(), "{size}");
    }
}

/// The pod's name and namespace, as the Downward API gives them.
const POD: [&str; 4] = ["--pod-name", "kms-0", "--pod-namespace", "media"];

/// `--fleet kubernetes` in a pod, and `args`.
fn in_a_fleet(args: &[&str]) -> Result<Config, String> {
    sidecar(&[&["--fleet", "kubernetes"][..], &POD, args].concat())
}

#[test]
fn the_fleet_and_the_events_are_off_unless_asked_for_and_need_no_pod_then() {
    let c = sidecar(&[]).unwrap();
    assert_eq!(c.fleet, fleet::Settings::default());
    assert!(!c.fleet.on(), "off: nothing talks to the API server");
    let shown = c.shown();
    assert_eq!((shown.fleet, shown.events), ("off", false));
    assert_eq!(shown.fleet_drain_budget, None);
    let c = in_a_fleet(&[]).unwrap();
    assert_eq!(c.fleet.mode, fleet::Mode::Kubernetes);
    assert!(c.fleet.events, "the Events are on with the fleet");
    assert_eq!(
        c.fleet.pod,
        Some(fleet::Pod {
            name: "kms-0".into(),
            namespace: "media".into()
        })
    );
    assert_eq!(c.fleet.budget, Budget::Instances(1));
    assert_eq!(c.fleet.lease, Duration::from_secs(30));
    assert_eq!(c.shown().fleet_lease_duration.as_deref(), Some("30s"));
    assert!(!in_a_fleet(&["--events", "false"]).unwrap().fleet.events);
}

#[test]
fn a_drain_budget_is_a_number_of_instances_or_a_share_of_the_pods() {
    for (given, budget) in [
        ("1", Budget::Instances(1)),
        ("3", Budget::Instances(3)),
        ("25%", Budget::Percent(25.0)),
        ("100%", Budget::Percent(100.0)),
    ] {
        let c = in_a_fleet(&["--fleet-drain-budget", given]).unwrap();
        assert_eq!(c.fleet.budget, budget, "{given}");
        assert_eq!(c.shown().fleet_drain_budget.as_deref(), Some(given));
    }
    for (given, problem) in [
        (
            "0",
            "would let no instance ever drain: the budget is at least 1 (try 1)",
        ),
        (
            "0%",
            "is not a share of the pods above 0% and up to 100% (try 25%)",
        ),
        (
            "150%",
            "is not a share of the pods above 0% and up to 100% (try 25%)",
        ),
        (
            "x",
            "is not a number of instances or a share of the pods (try 1, 2 or 25%)",
        ),
        (
            "-1",
            "is not a number of instances or a share of the pods (try 1, 2 or 25%)",
        ),
    ] {
        let line = format!("--fleet-drain-budget: '{given}' {problem}");
        assert_eq!(
            in_a_fleet(&["--fleet-drain-budget", given]).unwrap_err(),
            line
        );
        assert_eq!(
            sidecar(&["--fleet-drain-budget", given]).unwrap_err(),
            line,
            "refused with the fleet off too"
        );
    }
}

#[test]
fn a_slots_lease_lasts_from_6s_to_an_hour() {
    for (given, secs) in [("6s", 6), ("30s", 30), ("1h", 3600)] {
        let c = in_a_fleet(&["--fleet-lease-duration", given]).unwrap();
        assert_eq!(c.fleet.lease, Duration::from_secs(secs), "{given}");
    }
    for given in ["5s", "5999ms", "61m", "8days"] {
        assert_eq!(
            in_a_fleet(&["--fleet-lease-duration", given]).unwrap_err(),
            format!(
                "--fleet-lease-duration: '{given}' is outside 6s to 1h: a holder renews its \
                 Lease every third of it, and a dead holder's slot comes back only once it has \
                 passed (try 30s)"
            ),
            "a refusal names the lease's own range, whatever the value"
        );
    }
    assert_eq!(
        sidecar(&["--fleet-lease-duration", "soon"]).unwrap_err(),
        "--fleet-lease-duration: 'soon' is not a duration (try 250ms, 5s, 5m or 1h30m)"
    );
}

#[test]
fn a_fleet_name_a_pod_name_and_a_namespace_are_kubernetes_names() {
    let c = in_a_fleet(&["--fleet-name", "kms-eu-1"]).unwrap();
    assert_eq!(c.fleet.name.as_deref(), Some("kms-eu-1"));
    assert_eq!(
        in_a_fleet(&[]).unwrap().fleet.name,
        None,
        "the Deployment's"
    );
    let refused = |flag: &str, given: &str, max: u32, example: &str| {
        format!(
            "{flag}: '{given}' is not a Kubernetes name: at most {max} lowercase letters, \
             digits and '-', starting and ending with a letter or digit (try {example})"
        )
    };
    let long = "k".repeat(41);
    for given in ["Media_KMS", "kms.eu", "-kms", "kms-", "", long.as_str()] {
        assert_eq!(
            in_a_fleet(&["--fleet-name", given]).unwrap_err(),
            refused("--fleet-name", given, 40, "kms"),
            "{given:?}"
        );
    }
    assert_eq!(
        sidecar(&["--pod-name", "KMS-0"]).unwrap_err(),
        refused("--pod-name", "KMS-0", 63, "kms-7d9f8c6b5-x2x7z"),
        "checked with the fleet off too"
    );
    assert_eq!(
        sidecar(&["--pod-namespace", "Media"]).unwrap_err(),
        refused("--pod-namespace", "Media", 63, "media")
    );
}

#[test]
fn the_fleet_and_the_events_need_the_pods_name_and_namespace_from_the_downward_api() {
    assert_eq!(
        sidecar(&["--fleet", "kubernetes"]).unwrap_err(),
        "--pod-name: is needed with --fleet kubernetes, from the Downward API (try env \
         MEMPROBE_POD_NAME with valueFrom.fieldRef.fieldPath: metadata.name)"
    );
    assert_eq!(
        sidecar(&["--fleet", "kubernetes", "--pod-name", "kms-0"]).unwrap_err(),
        "--pod-namespace: is needed with --fleet kubernetes, from the Downward API (try env \
         MEMPROBE_POD_NAMESPACE with valueFrom.fieldRef.fieldPath: metadata.namespace)"
    );
    assert_eq!(
        sidecar(&["--events"]).unwrap_err(),
        "--pod-name: is needed with --events, from the Downward API (try env \
         MEMPROBE_POD_NAME with valueFrom.fieldRef.fieldPath: metadata.name)"
    );
    let alone = sidecar(&[&["--events"][..], &POD].concat()).unwrap();
    assert_eq!(alone.fleet.mode, fleet::Mode::Off, "the Events alone");
    assert!(alone.fleet.events && alone.fleet.on());
    assert!(
        sidecar(&["--events", "false"]).is_ok(),
        "no pod needed with nothing on"
    );
    assert!(
        sidecar(&POD).is_ok(),
        "a pod given with the fleet off is fine"
    );
}

#[test]
fn with_the_fleet_critical_defaults_to_95_percent_when_above_the_threshold() {
    let c = in_a_fleet(&[]).unwrap();
    assert_eq!(
        c.policy.critical,
        Some(SizeOrPercent::Percent(95.0)),
        "an instance waiting for a slot must not be OOM-killed"
    );
    assert_eq!(c.shown().critical.as_deref(), Some("95%"));
    for threshold in [&["--threshold", "95%"][..], &["--threshold", "97%"]] {
        assert_eq!(
            in_a_fleet(threshold).unwrap().policy.critical,
            None,
            "{threshold:?}: no default critical at or under the threshold"
        );
    }
    assert_eq!(
        in_a_fleet(&["--memory-limit", "4Gi", "--threshold", "3900Mi"])
            .unwrap()
            .policy
            .critical,
        None,
        "95% of 4 GiB is under a 3900 MiB threshold once resolved"
    );
    assert_eq!(
        in_a_fleet(&["--critical", "90%"]).unwrap().policy.critical,
        Some(SizeOrPercent::Percent(90.0)),
        "a --critical given wins"
    );
    assert_eq!(sidecar(&[]).unwrap().policy.critical, None, "fleet off");
    assert_eq!(
        sidecar(&[&["--events"][..], &POD].concat())
            .unwrap()
            .policy
            .critical,
        None,
        "the Events alone change no decision"
    );
}

/// A pid names one process: one that does not exist at start never will (a pid used again is
/// another process), so it is refused rather than waited for.
#[test]
fn a_pid_that_is_not_running_at_start_is_refused() {
    // The largest pid Linux hands out; nothing runs there on a test machine.
    assert_eq!(
        sidecar(&["--pid", "4194303"]).unwrap_err(),
        "--pid: '4194303' is not a running process (try the pid of a running server, or \
         --pidfile or --name for one that is not started yet)"
    );
    assert!(sidecar(&["--pid", &own_pid()]).is_ok());
}

/// On Kubernetes the environment is the configuration: a misspelt `MEMPROBE_*` name is said,
/// with the known name closest to it; other variables and known names are not.
#[test]
fn an_unknown_memprobe_variable_is_said_with_the_closest_known_name() {
    use clap::CommandFactory;
    let names = [
        "MEMPROBE_TRESHOLD",
        "MEMPROBE_THRESHOLD",
        "PATH",
        "MEMPROBE_NOTHING_LIKE_ANY_FLAG_AT_ALL",
        "MEMPROBE_KMSURL",
    ]
    .map(std::ffi::OsString::from);
    let said = unknown_variables(&Sidecar::command(), names);
    assert_eq!(
        said,
        [
            "MEMPROBE_KMSURL is not a variable memprobe reads, so it changes nothing (did you \
             mean MEMPROBE_KMS_URL?)",
            "MEMPROBE_NOTHING_LIKE_ANY_FLAG_AT_ALL is not a variable memprobe reads, so it \
             changes nothing (memprobe --help lists each flag's MEMPROBE_<FLAG>)",
            "MEMPROBE_TRESHOLD is not a variable memprobe reads, so it changes nothing (did you \
             mean MEMPROBE_THRESHOLD?)",
        ]
    );
}

/// A value of 130 KB is refused by its start, on one short line, as `--name` was already.
#[test]
fn a_huge_bad_value_is_shown_clipped() {
    let huge = "x".repeat(130_000);
    for flag in [
        "--threshold",
        "--interval",
        "--listen",
        "--fleet-drain-budget",
    ] {
        let e = sidecar(&[flag, &huge]).unwrap_err();
        assert!(e.len() < 400, "{flag}: {} bytes", e.len());
        assert!(e.contains(&format!("'{}…'", "x".repeat(100))), "{e}");
        assert!(e.contains("(try"), "{e}");
    }
}

/// The first lines say what the instance is judged by, before a target is found.
#[test]
fn the_start_says_the_threshold_the_critical_level_and_what_a_percentage_is_of() {
    assert_eq!(
        sidecar(&[]).unwrap().judging(),
        "judging rss: threshold 80%, critical off; percentages of the target's memory limit \
         (its cgroup's, read once it is found; else the host's MemTotal)"
    );
    assert_eq!(
        sidecar(&["--memory-limit", "2Gi", "--critical", "95%"])
            .unwrap()
            .judging(),
        "judging rss: threshold 80%, critical 95%; percentages of --memory-limit 2.00 GiB"
    );
    assert_eq!(
        sidecar(&["--threshold", "1536Mi"]).unwrap().judging(),
        "judging rss: threshold 1.50 GiB, critical off"
    );
}
