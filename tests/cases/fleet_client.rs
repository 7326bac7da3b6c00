//! The fleet's Kubernetes client, `memprobe-fleet`: a process of memprobe's own beside it,
//! bounded whatever the API server answers, never holding a renewal behind an Event, and
//! never outliving memprobe. Against `harness::fake_api` where an API server must misbehave
//! (a real one cannot be made to answer 200 MiB); the real API server's story is fleet.rs's.

// Gaps between requests are read on the real clock.
#![allow(clippy::disallowed_types)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::fake_api::{FakeApi, Hostile};
use crate::harness::{DEADLINE, MEMPROBE, MEMPROBE_FLEET, Memprobe, Workload, shipped_or_dev};

/// The memory limit the shipped manifests give memprobe's container.
const SHIPPED_LIMIT: u64 = 32 << 20;

/// memprobe with the fleet on, watching a server over its threshold (a drain is wanted at
/// once), as pod `kms-0` of fleet `kms`; `sessions` calls go on.
fn start(dir: &Path, kubeconfig: &str, sessions: u32, extra: &[&str]) -> (Memprobe, Workload) {
    start_from(&shipped_or_dev(), dir, kubeconfig, sessions, extra)
}

fn start_from(
    binary: &Path,
    dir: &Path,
    kubeconfig: &str,
    sessions: u32,
    extra: &[&str],
) -> (Memprobe, Workload) {
    let mut workload = Workload::start(None);
    workload.send("alloc 60MiB");
    let pidfile = dir.join("kms.pid");
    std::fs::write(&pidfile, workload.pid.to_string()).unwrap();
    let count = dir.join("sessions");
    std::fs::write(&count, format!("{sessions}\n")).unwrap();
    let mut args = vec![
        "--pidfile",
        pidfile.to_str().unwrap(),
        "--sessions-file",
        count.to_str().unwrap(),
        "--sessions-poll",
        "1s",
        "--threshold",
        "40MiB",
        "--memory-limit",
        "1GiB",
        "--interval",
        "1s",
        "--sustain",
        "1s",
        "--idle-sustain",
        "1s",
        "--min-drain",
        "1s",
        "--fleet",
        "kubernetes",
        "--fleet-name",
        "kms",
        "--fleet-lease-duration",
        "6s",
        "--pod-name",
        "kms-0",
        "--pod-namespace",
        "media",
    ];
    // A flag of `extra` given above takes the value `extra` gives it.
    for pair in extra.chunks(2) {
        match (pair, args.iter().position(|a| *a == pair[0])) {
            ([_, value], Some(at)) if pair[0].starts_with("--") => args[at + 1] = value,
            _ => args.extend_from_slice(pair),
        }
    }
    let memprobe = Memprobe::start_binary(
        binary,
        &args,
        &[("KUBECONFIG", kubeconfig), ("RUST_LOG", "info")],
    );
    (memprobe, workload)
}

/// The children of process `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
    {
        let Ok(task) = task else { continue };
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

/// memprobe's `memprobe-fleet`, once it runs.
fn fleet_child(memprobe: &Memprobe) -> u32 {
    let start = Instant::now();
    loop {
        let found = children(memprobe.pid()).into_iter().find(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm"))
                .is_ok_and(|comm| comm.trim() == "memprobe-fleet")
        });
        if let Some(child) = found {
            return child;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "memprobe never started memprobe-fleet"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The peak resident memory of process `pid` (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

fn gone(pid: u32) -> bool {
    // A zombie has been killed too; only its parent's wait is left.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn wait_gone(pid: u32, what: &str) {
    let start = Instant::now();
    while !gone(pid) {
        assert!(
            start.elapsed() < DEADLINE,
            "{what} (pid {pid}) outlived memprobe"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn api_says(memprobe: &Memprobe, what: &str) -> Value {
    memprobe.wait_for(&format!("fleet.api saying {what}"), |s| {
        s["fleet"]["api"].as_str().is_some_and(|a| a.contains(what))
    })
}

#[test]
fn the_client_runs_beside_memprobe_and_a_huge_answer_is_refused_within_the_shipped_limit() {
    assert_eq!(
        Path::new(MEMPROBE).with_file_name("memprobe-fleet"),
        Path::new(MEMPROBE_FLEET),
        "cargo builds memprobe-fleet next to memprobe, where memprobe looks for it"
    );
    let api = FakeApi::start(Hostile {
        list_bytes: Some(200 << 20),
        ..Hostile::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    let (mut memprobe, _workload) = start(dir.path(), kubeconfig.to_str().unwrap(), 0, &[]);
    let status = api_says(&memprobe, "an answer over 2.00 MiB");
    assert_eq!(
        status["state"], "elevated",
        "no drain through a fleet that cannot be read"
    );
    let child = fleet_child(&memprobe);
    let peaks = [peak_rss(memprobe.pid()), peak_rss(child)];
    eprintln!(
        "peak resident memory: memprobe {}, memprobe-fleet {} bytes",
        peaks[0], peaks[1]
    );
    // The shipped binaries stay within the container's limit together; the dev build's text
    // alone is larger, so there each stays within it.
    let shipped = shipped_or_dev() != Path::new(MEMPROBE);
    let worst = if shipped {
        peaks[0] + peaks[1]
    } else {
        peaks[0].max(peaks[1])
    };
    assert!(
        worst < SHIPPED_LIMIT,
        "memprobe and memprobe-fleet peaked at {peaks:?} bytes reading a 200 MiB answer"
    );
    let lists = api
        .requests()
        .iter()
        .filter(|(_, m, p)| m == "GET" && p.contains("/leases?"))
        .map(|(_, _, p)| p.clone())
        .collect::<Vec<_>>();
    // In pages of 50; the start check asks for one item.
    assert!(
        lists
            .iter()
            .all(|p| p.contains("limit=50") || p.contains("limit=1&") || p.ends_with("limit=1")),
        "leases are listed in pages: {lists:?}"
    );
    assert!(
        lists.iter().any(|p| p.contains("limit=50")),
        "the fleet's own listings came after the check: {lists:?}"
    );

    // A client that dies is an API failure, and is started again.
    nix_kill(child, "KILL");
    let status = memprobe.wait_for_long("a new memprobe-fleet", Duration::from_secs(60), |_| {
        fleet_child_now(memprobe.pid()).is_some_and(|c| c != child)
    });
    assert!(status["fleet"]["api_failures"].as_u64() >= Some(1));

    // None outlives memprobe, even killed.
    let child = fleet_child(&memprobe);
    memprobe.signal("KILL");
    memprobe.wait_exit();
    wait_gone(child, "memprobe-fleet");
}

fn fleet_child_now(memprobe: u32) -> Option<u32> {
    children(memprobe).into_iter().find(|c| {
        std::fs::read_to_string(format!("/proc/{c}/comm"))
            .is_ok_and(|comm| comm.trim() == "memprobe-fleet")
    })
}

fn nix_kill(pid: u32, signal: &str) {
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[test]
fn a_renewal_that_is_due_never_waits_behind_an_event_the_api_server_is_slow_to_take() {
    let api = FakeApi::start(Hostile {
        event_delay: Some(Duration::from_secs(8)),
        ..Hostile::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    // A call goes on: the drain holds its slot and renews it every 2 s (6 s lease).
    let (memprobe, _workload) = start(dir.path(), kubeconfig.to_str().unwrap(), 1, &[]);
    memprobe.wait_state("draining");
    // Two Events (MemorySustainedHigh, DrainStarted) take 16 s between them, each longer than
    // the lease (and under the 10 s deadline, so they are sent).
    memprobe.wait_for_long("both Events sent", Duration::from_secs(90), |s| {
        s["fleet"]["events_sent"].as_u64() >= Some(2)
    });
    let renewals: Vec<Instant> = api
        .requests()
        .iter()
        .filter(|(_, m, p)| m == "PUT" && p.contains("memprobe-kms-slot-"))
        .map(|(at, _, _)| *at)
        .collect();
    assert!(
        renewals.len() >= 5,
        "renewals every 2 s while Events took 16 s: {}",
        renewals.len()
    );
    let worst = renewals
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        worst < Duration::from_secs(6),
        "a renewal came {worst:?} after the last one, past the 6 s lease, while Events were slow"
    );
}

#[test]
fn a_kubeconfig_that_is_a_device_or_a_fifo_is_refused_and_said_in_fleet_api() {
    let dir = tempfile::tempdir().unwrap();
    let (memprobe, _workload) = start(dir.path(), "/dev/zero", 0, &[]);
    api_says(&memprobe, "KUBECONFIG /dev/zero is a character device");
    let fifo: PathBuf = dir.path().join("kubeconfig.fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let (memprobe, _workload) = start(dir.path(), fifo.to_str().unwrap(), 0, &[]);
    api_says(&memprobe, "is a FIFO");
    assert!(memprobe.get("/livez").code == 200, "the probes go on");
}

#[test]
fn an_exec_credential_plugin_that_hangs_goes_with_memprobe() {
    let dir = tempfile::tempdir().unwrap();
    // A plugin that never answers: a sleep this test can find by its argument.
    let marker = format!("{}", 100_000 + std::process::id() % 50_000);
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: \
             http://127.0.0.1:9\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: \
             u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    exec:\n      apiVersion: \
             client.authentication.k8s.io/v1\n      command: sleep\n      args: [\"{marker}\"]\n      \
             interactiveMode: Never\n"
        ),
    )
    .unwrap();
    let (mut memprobe, _workload) = start(dir.path(), kubeconfig.to_str().unwrap(), 0, &[]);
    let child = fleet_child(&memprobe);
    let start = Instant::now();
    let plugin = loop {
        if let Some(p) = children(child).into_iter().find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.contains(&marker))
        }) {
            break p;
        }
        assert!(start.elapsed() < DEADLINE, "the plugin never ran");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(memprobe.get("/livez").code, 200, "the probes go on");
    // A client that gives no answer is killed with its group, the plugin too, and started
    // again: the next plugin is the one left to go with memprobe.
    let status = memprobe.wait_for_long(
        "the hung memprobe-fleet given up",
        Duration::from_secs(120),
        |s| {
            s["fleet"]["api"]
                .as_str()
                .is_some_and(|a| a.contains("memprobe-fleet gave no answer within 1m"))
        },
    );
    assert_eq!(status["state"], "elevated");
    wait_gone(child, "the hung memprobe-fleet");
    wait_gone(plugin, "the hung memprobe-fleet's plugin");
    let child = fleet_child(&memprobe);
    let start = Instant::now();
    let plugin = loop {
        if let Some(p) = children(child).into_iter().find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.contains(&marker))
        }) {
            break p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the plugin never ran again"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    memprobe.signal("KILL");
    memprobe.wait_exit();
    wait_gone(child, "memprobe-fleet");
    wait_gone(plugin, "the exec credential plugin");
}

#[test]
fn more_leases_than_a_fleet_has_are_a_failure_read_page_by_page_never_a_partial_view() {
    let api = FakeApi::start(Hostile {
        strangers: 300,
        ..Hostile::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    let (memprobe, _workload) = start(dir.path(), kubeconfig.to_str().unwrap(), 0, &[]);
    let status = api_says(
        &memprobe,
        "over 256 leases carry the label memprobe.io/fleet=kms",
    );
    assert_eq!(status["state"], "elevated", "no drain on a partial view");
    let pages = api
        .requests()
        .iter()
        .filter(|(_, m, p)| m == "GET" && p.contains("/leases?"))
        .count();
    assert!(pages >= 6, "300 leases in pages of 50: {pages} requests");
}

/// The sidecar's own executable, the one the image ships, holds no Kubernetes client: kube,
/// k8s-openapi and rustls are all in memprobe-fleet.
#[test]
fn the_shipped_memprobe_carries_no_kubernetes_client_and_memprobe_fleet_does() {
    let Some(shipped) = crate::harness::shipped() else {
        return;
    };
    let holds = |path: &Path, what: &str| {
        let bytes = std::fs::read(path).unwrap();
        bytes.windows(what.len()).any(|w| w == what.as_bytes())
    };
    let fleet = shipped.with_file_name("memprobe-fleet");
    for crate_name in ["kube-client", "rustls"] {
        assert!(
            !holds(&shipped, crate_name),
            "{} holds {crate_name}",
            shipped.display()
        );
        assert!(
            holds(&fleet, crate_name),
            "{} holds no {crate_name}",
            fleet.display()
        );
    }
}

#[test]
fn without_memprobe_fleet_beside_it_memprobe_says_where_it_looked_and_the_probes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("memprobe");
    std::fs::copy(MEMPROBE, &alone).unwrap();
    let (memprobe, _workload) = start_from(&alone, dir.path(), "/nonexistent", 0, &[]);
    let expected = format!("{} not found", dir.path().join("memprobe-fleet").display());
    let status = api_says(&memprobe, &expected);
    assert_eq!(
        status["state"], "elevated",
        "no drain through a fleet that cannot be asked"
    );
    assert_eq!(memprobe.get("/livez").code, 200);
}

/// memprobe's `memprobe_fleet_api_up` as `/metrics` says it.
fn api_up(memprobe: &Memprobe) -> String {
    let metrics = memprobe.get("/metrics").body;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("memprobe_fleet_api_up "))
        .unwrap_or("absent")
        .to_string()
}

#[test]
fn a_start_check_the_api_server_refuses_is_said_at_once_and_keeps_the_pod_not_ready_until_it_passes()
 {
    let api = FakeApi::start(Hostile::default());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    // The Role grants the pod but not the Leases.
    api.forbid(Some("/leases"));
    // Healthy: only the check stands between the pod and ready.
    let healthy = ["--threshold", "1GiB"];
    let (memprobe, _workload) = start(dir.path(), kubeconfig.to_str().unwrap(), 0, &healthy);
    let status = memprobe.wait_for("the start check refused", |s| {
        s["fleet"]["check"]
            .as_str()
            .is_some_and(|c| c.starts_with("refused"))
    });
    let check = status["fleet"]["check"].as_str().unwrap();
    assert!(
        check.contains("listing Leases in media: 403 Forbidden")
            && check.contains("Role granting leases list in media"),
        "the check says what was refused and what grants it: {check}"
    );
    assert!(
        status["fleet"]["api"]
            .as_str()
            .is_some_and(|a| a.starts_with("refused")),
        "{status}"
    );
    assert_eq!(status["ready"], false, "not ready while refused: {status}");
    assert_eq!(memprobe.get("/ready").code, 503);
    assert_eq!(memprobe.get("/livez").code, 200, "alive all along");
    assert_eq!(api_up(&memprobe), "0");
    memprobe.wait_said("refused memprobe's start check");
    let refusals = memprobe
        .logs()
        .iter()
        .filter(|l| l.contains("refused memprobe's start check"))
        .count();
    assert_eq!(refusals, 1, "said once, not at every check");
    let leases_listed = |api: &FakeApi| {
        api.requests()
            .iter()
            .filter(|(_, method, path)| method == "GET" && path.contains("/leases"))
            .count()
    };
    let asked = leases_listed(&api);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        leases_listed(&api),
        asked,
        "nothing more is asked of an API server that refused the check until it is made again"
    );

    // The RoleBinding fixed: the next check (within 30 s) passes, and the pod is ready.
    api.forbid(None);
    let status = memprobe.wait_for_long("the start check passed", Duration::from_secs(60), |s| {
        s["fleet"]["check"] == "passed"
    });
    assert_eq!(status["ready"], true, "ready once it passes: {status}");
    assert_eq!(memprobe.get("/ready").code, 200);
    memprobe.wait_for("the API server up in /metrics", |_| {
        api_up(&memprobe) == "1"
    });
    memprobe.wait_said("start check passed");
    memprobe.wait_for(
        "memprobe-fleet stopped once the check passed, nothing else being wanted",
        |_| fleet_child_now(memprobe.pid()).is_none(),
    );
}

#[test]
fn an_api_server_that_cannot_be_reached_at_start_is_an_outage_the_pod_stays_ready() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1 of loopback.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: x\n  cluster:\n    server: \
         http://127.0.0.1:1\ncontexts:\n- name: x\n  context:\n    cluster: x\n    user: x\n\
         current-context: x\nusers:\n- name: x\n  user:\n    token: x\n",
    )
    .unwrap();
    let healthy = ["--threshold", "1GiB"];
    let (memprobe, _workload) = start(dir.path(), kubeconfig.to_str().unwrap(), 0, &healthy);
    let status = memprobe.wait_for("the start check failed", |s| {
        s["fleet"]["check"]
            .as_str()
            .is_some_and(|c| c.starts_with("failed: reading pod media/kms-0"))
    });
    assert_eq!(
        status["ready"], true,
        "an outage is no reason to refuse calls: {status}"
    );
    assert_eq!(api_up(&memprobe), "0");
}
