//! The shipped image, run for real with podman: memprobe in a pod that shares its PID
//! namespace with a target container, watching it by name, seen from outside the pod.

// Real containers run on the real clock.
#![allow(clippy::disallowed_types)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::harness::podman::{build_memprobe_image, podman, run};
use crate::harness::{DEADLINE, agent, request, shipped, strict, tool};

/// The README says the image is under 9 MB: memprobe (3.1 MB with the KMS gate) and
/// memprobe-fleet, the fleet's Kubernetes client and TLS (5.0 MB); issue 23 allows 10.
const MAX_IMAGE_BYTES: u64 = 9_000_000;

#[test]
fn podman_settings_come_from_memprobe_containers_conf_before_the_shared_file() {
    let conf = |p: &str| Some(std::path::PathBuf::from(p));
    assert_eq!(
        crate::harness::podman::containers_conf(
            false,
            conf("/etc/ci.conf"),
            conf("../shared/c.conf")
        ),
        conf("/etc/ci.conf"),
        "MEMPROBE_CONTAINERS_CONF wins over ../shared"
    );
    assert_eq!(
        crate::harness::podman::containers_conf(false, None, conf("../shared/c.conf")),
        conf("../shared/c.conf")
    );
    assert_eq!(
        crate::harness::podman::containers_conf(false, None, None),
        None,
        "podman's defaults"
    );
    assert_eq!(
        crate::harness::podman::containers_conf(true, conf("/etc/ci.conf"), None),
        None,
        "CONTAINERS_CONF, already set, is podman's own"
    );
}

/// Removes the pod and the images, whatever happens.
struct Cleanup {
    podman: PathBuf,
    pod: String,
    images: Vec<String>,
    target: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut child) = self.target.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = podman(&self.podman)
            .args(["pod", "rm", "-f", &self.pod])
            .output();
        for image in &self.images {
            let _ = podman(&self.podman).args(["rmi", "-f", image]).output();
        }
    }
}

#[test]
fn the_image_watches_a_target_in_its_pod_and_runs_as_non_root() {
    let Some(bin) = tool("podman") else { return };
    if let Err(why) = podman(&bin)
        .arg("info")
        .output()
        .map_err(|e| e.to_string())
        .and_then(|o| {
            if o.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&o.stderr).into_owned())
            }
        })
    {
        assert!(!strict(), "podman cannot run here: {why}");
        return crate::harness::skip(&format!("podman cannot run here: {why}"));
    }

    // The binary the image ships, built once before the tests by .ci/run.
    let Some(binary) = shipped() else { return };
    let context = tempfile::tempdir().unwrap();
    std::fs::copy(&binary, context.path().join("memprobe")).unwrap();
    std::fs::write(
        context.path().join("Containerfile.target"),
        "FROM scratch\nCOPY memprobe /workload\nENTRYPOINT [\"/workload\", \"workload\", \"--waves\", \"0\"]\n",
    )
    .unwrap();

    let tag = format!("{}", std::process::id());
    let image = format!("localhost/memprobe:test-{tag}");
    let target_image = format!("localhost/memprobe-target:test-{tag}");
    let mut cleanup = Cleanup {
        podman: bin.clone(),
        pod: format!("memprobe-test-{tag}"),
        images: vec![image.clone(), target_image.clone()],
        target: None,
    };
    let context_dir = context.path().to_str().unwrap();
    build_memprobe_image(&bin, &binary, &image);
    run(podman(&bin)
        .args(["build", "-q", "-t", &target_image, "-f"])
        .arg(context.path().join("Containerfile.target"))
        .arg(context_dir));

    let size: u64 = run(podman(&bin).args(["image", "inspect", "--format", "{{.Size}}", &image]))
        .parse()
        .unwrap();
    assert!(
        size <= MAX_IMAGE_BYTES,
        "the image is {size} bytes, over the 9 MB the README promises"
    );
    let user = run(podman(&bin).args(["image", "inspect", "--format", "{{.Config.User}}", &image]));
    assert_eq!(user, "65532:65532");

    // Like shareProcessNamespace; the host network makes the pod reachable from here.
    run(podman(&bin).args([
        "pod",
        "create",
        "--name",
        &cleanup.pod,
        "--share",
        "pid,net,ipc,uts",
        "--network",
        "host",
    ]));
    let mut target = podman(&bin)
        .args(["run", "-i", "--rm", "--pod", &cleanup.pod, &target_image])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the target container");
    let mut target_in = target.stdin.take().unwrap();
    let mut target_out = BufReader::new(target.stdout.take().unwrap());
    cleanup.target = Some(target);
    let mut hello = String::new();
    target_out.read_line(&mut hello).unwrap();
    assert!(hello.starts_with("workload ready"), "target said {hello:?}");

    let port = crate::harness::free_port();
    let listen = format!("127.0.0.1:{port}");
    let memprobe = run(podman(&bin)
        .args(["run", "-d", "--pod", &cleanup.pod, &image])
        .args([
            "--name",
            "workload",
            "--interval",
            "200ms",
            "--threshold",
            "100MiB",
            "--sustain",
            "1s",
            "--kms-url",
            "none",
            "--listen",
            &listen,
        ]));

    let http = agent();
    let url = format!("http://{listen}/ready");
    let wait_ready = |code: u16| {
        wait_showing_logs(&bin, &memprobe, &format!("/ready {code}"), || {
            request(&http, "GET", &url)
                .ok()
                .filter(|reply| reply.code == code)
        })
    };
    wait_ready(200);

    writeln!(target_in, "alloc 150MiB").unwrap();
    let reply = wait_ready(503);
    assert!(reply.body.contains("draining"), "{}", reply.body);

    let pid = run(podman(&bin).args(["inspect", "--format", "{{.State.Pid}}", &memprobe]));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid.split_whitespace().skip(1).all(|id| id == "65532"),
        "memprobe runs as 65532: {uid}"
    );

    // A second memprobe with the Janus Compose file's user and capabilities, which recycles
    // with signal:TERM: as UID 65532 with only CAP_KILL it ends the root target beside it.
    let compose: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(format!(
            "{}/deploy/compose/docker-compose.janus.yml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    let service = &compose["services"]["memprobe"];
    let list = |key: &str| -> Vec<String> {
        service[key]
            .as_sequence()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (cap_drop, cap_add) = (list("cap_drop"), list("cap_add"));
    assert_eq!(cap_add, ["KILL"], "the Janus file adds CAP_KILL alone");
    let mut security = vec![
        "--user".to_string(),
        service["user"].as_str().expect("a user").to_string(),
    ];
    security.extend(cap_drop.iter().map(|c| format!("--cap-drop={c}")));
    security.extend(cap_add.iter().map(|c| format!("--cap-add={c}")));
    security.extend(
        list("security_opt")
            .iter()
            .map(|o| format!("--security-opt={o}")),
    );
    if service["read_only"].as_bool() == Some(true) {
        security.push("--read-only".into());
    }
    let listen = format!("127.0.0.1:{}", crate::harness::free_port());
    let killer = run(podman(&bin)
        .args(["run", "-d", "--pod", &cleanup.pod])
        .args(&security)
        .arg(&image)
        .args([
            "--name",
            "workload",
            "--interval",
            "200ms",
            "--threshold",
            "100MiB",
        ])
        .args([
            "--critical",
            "120MiB",
            "--kms-url",
            "none",
            "--on-recycle",
            "signal:TERM",
        ])
        .args(["--listen", &listen]));
    let status = std::fs::read_to_string(format!(
        "/proc/{}/status",
        run(podman(&bin).args(["inspect", "--format", "{{.State.Pid}}", &killer]))
    ))
    .unwrap();
    let effective = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    assert!(
        effective.ends_with("0000000000000020"),
        "only CAP_KILL: {effective}"
    );
    let target = cleanup.target.as_mut().expect("the target runs");
    wait_showing_logs(&bin, &killer, "the target ended by signal:TERM", || {
        target.try_wait().unwrap().map(|_| ())
    });
}

/// Polls `done` every 100 ms until it gives a value; past twice the deadline, fails saying
/// what it waited for, with the container's logs (read only then).
fn wait_showing_logs<T>(
    bin: &Path,
    container: &str,
    what: &str,
    mut done: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = done() {
            return value;
        }
        if start.elapsed() > DEADLINE * 2 {
            let logs = podman(bin)
                .args(["logs", container])
                .output()
                .map(|o| o.stderr)
                .unwrap_or_default();
            panic!(
                "waited {:?} for {what}; memprobe logs: {}",
                DEADLINE * 2,
                String::from_utf8_lossy(&logs)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
