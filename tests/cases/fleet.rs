//! The fleet against a real API server (tests/kube's): memprobe processes on this host, where
//! the test can play the kubelet and cut the API server away, each with the identity of a
//! real pod of its own — pods of a real Deployment, left Pending on purpose, since nothing
//! needs to run in them — each watching a workload of its own over the threshold, and all
//! sharing one drain budget on real Leases. The test plays the kubelet: a server memprobe asks
//! to recycle is killed and started again, small. (The fleet overlay's own pods, memprobe in
//! each calling the API server from inside its pod, run under the real kubelet in
//! tests/cases/kube.rs.)
//!
//! Each test has a namespace of its own. The cluster comes from MEMPROBE_KUBECONFIG; without it
//! these tests skip (strict mode: fail). Timings go to the log, not into assertions.

// A real cluster runs on the real clock.
#![allow(clippy::disallowed_types)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::kube::{Cluster, Namespace, cluster, said, wait};
use crate::harness::{Memprobe, Workload, shipped_or_dev};

/// A fleet's whole story (five drains in turn, each a few ticks of 10 s) takes minutes.
const STORY: Duration = Duration::from_secs(600);

/// `count` pods of a Deployment named `fleet`, Pending for good (no node matches them): real
/// names, uids and owners for memprobe to read. Their names, sorted.
fn pending_pods(ns: &Namespace, fleet: &str, count: usize) -> Vec<String> {
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": fleet, "namespace": ns.name},
        "spec": {
            "replicas": count,
            "selector": {"matchLabels": {"app": fleet}},
            "template": {
                "metadata": {"labels": {"app": fleet}},
                "spec": {
                    "nodeSelector": {"memprobe.io/no-such-node": "true"},
                    "containers": [{"name": "kms", "image": "localhost/none:0"}]
                }
            }
        }
    });
    let file = ns.file("deployment.json", &deployment.to_string());
    ns.cluster.run(&["apply", "-f", file.to_str().unwrap()]);
    wait("the fleet's pods", STORY, || {
        let pods =
            ns.cluster
                .json(&["get", "pods", "-n", &ns.name, "-l", &format!("app={fleet}")])?;
        let mut names: Vec<String> = pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        if names.len() == count {
            Ok(names)
        } else {
            Err(format!("{} of {count} pods", names.len()))
        }
    })
}

/// The fleet component's ServiceAccount and Role in this namespace, and a kubeconfig that is
/// that account: every memprobe here runs with exactly the rights the shipped Role gives.
fn fleet_account(ns: &Namespace) -> PathBuf {
    let applied = ns.apply_kustomization(&format!(
        "resources: []\ncomponents:\n  - {}/kubernetes/components/fleet\n",
        ns.deploy()
    ));
    assert!(applied.status.success(), "{}", said(&applied));
    ns.cluster.service_account_kubeconfig(&ns.name, "memprobe")
}

/// One instance: a workload, the files memprobe reads its pid and sessions from, and memprobe.
struct Instance {
    pod: String,
    workload: Workload,
    pidfile: PathBuf,
    sessions: PathBuf,
    memprobe: Memprobe,
    restarted: bool,
    /// When this test first saw it draining.
    draining_since: Option<Instant>,
}

impl Instance {
    /// An instance of pod `pod`, its server holding `mib` MiB (the threshold is 40 MiB of a
    /// 1 GiB limit), with no session, talking to the API server through `kubeconfig`.
    fn start(ns: &Namespace, pod: &str, mib: u64, kubeconfig: &Path, extra: &[&str]) -> Self {
        let pidfile = ns.file(&format!("{pod}.pid"), "");
        let sessions = ns.file(&format!("{pod}.sessions"), "0\n");
        let workload = big_workload(mib);
        std::fs::write(&pidfile, workload.pid.to_string()).unwrap();
        let mut args = vec![
            "--pidfile",
            pidfile.to_str().unwrap(),
            "--sessions-file",
            sessions.to_str().unwrap(),
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
            "--fleet-lease-duration",
            "6s",
            "--pod-name",
            pod,
            "--pod-namespace",
            &ns.name,
        ];
        args.extend_from_slice(extra);
        let memprobe = Memprobe::start_binary(
            &shipped_or_dev(),
            &args,
            &[
                ("KUBECONFIG", kubeconfig.to_str().unwrap()),
                ("RUST_LOG", "info"),
            ],
        );
        Instance {
            pod: pod.to_string(),
            workload,
            pidfile,
            sessions,
            memprobe,
            restarted: false,
            draining_since: None,
        }
    }

    fn status(&self) -> Value {
        self.memprobe.status()
    }

    /// What the kubelet would do at a failed liveness probe: the server is restarted, and
    /// the new one holds little.
    fn restart_server(&mut self) {
        self.workload.kill();
        self.workload = Workload::start(None);
        std::fs::write(&self.pidfile, self.workload.pid.to_string()).unwrap();
        self.restarted = true;
    }

    /// Restarts the server once memprobe asks; whether it did now.
    fn play_kubelet(&mut self) -> bool {
        if !self.restarted && self.status()["state"] == "recycle" {
            self.restart_server();
            return true;
        }
        false
    }

    /// Its one call ends once it has drained for `after`: a drain long enough for the others
    /// to see the slot held and queue up, as real drains (minutes of calls) are.
    fn end_the_call_after(&mut self, after: Duration) {
        if self.status()["state"] == "draining" {
            let since = *self.draining_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= after {
                self.sessions(0);
            }
        }
    }

    fn sessions(&self, n: u32) {
        std::fs::write(&self.sessions, format!("{n}\n")).unwrap();
    }
}

fn big_workload(mib: u64) -> Workload {
    let mut w = Workload::start(None);
    w.send(&format!("alloc {mib}MiB"));
    w
}

/// When an instance began to drain, and when it was healthy again after that (if it was).
pub(crate) fn drain_span(status: &Value) -> Option<(String, Option<String>)> {
    let transitions = status["transitions"].as_array()?;
    let start = transitions.iter().position(|t| t["to"] == "draining")?;
    let end = transitions[start..]
        .iter()
        .find(|t| t["to"] == "healthy")
        .and_then(|t| t["at"].as_str().map(str::to_owned));
    Some((transitions[start]["at"].as_str()?.to_string(), end))
}

/// The Events on a pod: (reason, note).
fn events_of(cluster: &Cluster, ns: &str, pod: &str) -> Vec<(String, String)> {
    let events = cluster
        .json(&[
            "get",
            "events.events.k8s.io",
            "-n",
            ns,
            "--field-selector",
            &format!("regarding.name={pod}"),
        ])
        .unwrap_or_else(|e| panic!("events of {pod}: {e}"));
    events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A namespace's leases in one line each: name, holder, fullness.
fn leases_said(cluster: &Cluster, ns: &str) -> Vec<String> {
    let leases = cluster
        .json(&["get", "leases", "-n", ns])
        .unwrap_or_default();
    leases["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            format!(
                "{} {} {}",
                l["metadata"]["name"].as_str().unwrap_or_default(),
                l["spec"]["holderIdentity"].as_str().unwrap_or("-"),
                l["metadata"]["annotations"]["memprobe.io/fullness"]
                    .as_str()
                    .unwrap_or("")
            )
        })
        .collect()
}

/// The holders of a fleet's slot leases, as the API server has them.
fn slot_holders(cluster: &Cluster, ns: &str, fleet: &str) -> Vec<String> {
    let leases = cluster
        .json(&[
            "get",
            "leases",
            "-n",
            ns,
            "-l",
            &format!("memprobe.io/fleet={fleet}"),
        ])
        .unwrap_or_else(|e| panic!("leases: {e}"));
    leases["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| {
            l["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .contains("-slot-")
        })
        .filter_map(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
        .filter(|h| !h.is_empty())
        .collect()
}

#[test]
fn five_instances_over_the_threshold_drain_one_at_a_time_fullest_first_and_say_so_in_events() {
    let Some(cluster) = cluster() else { return };
    let ns = cluster.namespace("fleet", &[]);
    let pods = pending_pods(&ns, "kms", 5);
    let kubeconfig = fleet_account(&ns);
    // Each server a little fuller than the one before: 60, 70, … 100 MiB.
    let mut fleet: Vec<Instance> = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            let instance = Instance::start(&ns, pod, 60 + 10 * i as u64, &kubeconfig, &[]);
            instance.sessions(1);
            instance
        })
        .collect();
    let started = Instant::now();
    let mut seen_waiting = vec![false; fleet.len()];
    let mut most_holders = 0;
    let (mut last_holders, mut takes) = (Vec::new(), Vec::new());
    while fleet.iter().any(|i| !i.restarted) || !all_healthy(&fleet) {
        assert!(
            started.elapsed() < STORY,
            "the fleet did not drain in turn within {STORY:?}: {:#?}",
            fleet.iter().map(Instance::status).collect::<Vec<_>>()
        );
        for (i, instance) in fleet.iter_mut().enumerate() {
            instance.end_the_call_after(Duration::from_secs(25));
            instance.play_kubelet();
            let status = instance.status();
            if status["fleet"]["waiting"] == true {
                assert_eq!(status["ready"], true, "a waiting instance keeps its calls");
                assert_eq!(status["state"], "elevated");
                let reason = status["reason"].as_str().unwrap();
                assert!(reason.contains("waiting for a drain slot"), "{reason}");
                seen_waiting[i] = true;
            }
        }
        let holders = slot_holders(cluster, &ns.name, "kms");
        most_holders = most_holders.max(holders.len());
        if holders != last_holders {
            // Who held, and what the waiters had written, at each change: the order's record.
            takes.push(leases_said(cluster, &ns.name));
            last_holders = holders;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("five drains in turn in {:?}", started.elapsed());
    assert_eq!(most_holders, 1, "one slot, one holder");

    // The drains, from each instance's own record: one at a time, each from its start until
    // its new server was healthy.
    let mut spans: Vec<(String, String, usize)> = fleet
        .iter()
        .enumerate()
        .map(|(i, instance)| {
            let status = instance.status();
            let (start, end) = drain_span(&status).expect("each instance drained");
            (start, end.expect("and was healthy again"), i)
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "{} was still draining (until {}) when {} began ({}): {spans:?}",
            fleet[pair[0].2].pod,
            pair[0].1,
            fleet[pair[1].2].pod,
            pair[1].0
        );
    }
    // The first drain went to whoever asked first; every later one to the fullest waiting.
    let order: Vec<usize> = spans.iter().map(|(_, _, i)| *i).collect();
    let rest = order[1..].to_vec();
    let mut fullest_first = rest.clone();
    fullest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(
        rest, fullest_first,
        "after the first, fullest first: {order:?}; pods {pods:?}; the leases at each change: \
         {takes:#?}"
    );
    assert!(
        seen_waiting.iter().filter(|w| **w).count() >= 3,
        "{seen_waiting:?}"
    );

    // The holder gave its slot back once healthy: nobody holds it now.
    wait("the slot given back", STORY, || {
        let holders = slot_holders(cluster, &ns.name, "kms");
        holders
            .is_empty()
            .then_some(())
            .ok_or(format!("{holders:?}"))
    });

    // What an operator reads in `kubectl describe pod`.
    for instance in &fleet {
        let events = wait("the pod's Events", STORY, || {
            let events = events_of(cluster, &ns.name, &instance.pod);
            let reasons: Vec<&str> = events.iter().map(|(r, _)| r.as_str()).collect();
            let all = [
                "MemorySustainedHigh",
                "DrainStarted",
                "RecycleRequested",
                "Recovered",
            ];
            if all.iter().all(|r| reasons.contains(r)) {
                Ok(events)
            } else {
                Err(format!("{reasons:?}"))
            }
        });
        let high = &events
            .iter()
            .find(|(r, _)| r == "MemorySustainedHigh")
            .unwrap()
            .1;
        assert!(high.contains("over threshold 40.00 MiB"), "{high}");
    }
    let deferred: Vec<(String, String)> = fleet
        .iter()
        .flat_map(|i| events_of(cluster, &ns.name, &i.pod))
        .filter(|(r, _)| r == "DrainDeferred")
        .collect();
    assert!(deferred.len() >= 3, "{deferred:?}");
    assert!(
        deferred
            .iter()
            .all(|(_, note)| note.starts_with("waiting for a drain slot: ")),
        "{deferred:?}"
    );
    assert!(
        deferred
            .iter()
            .any(|(_, note)| pods.iter().any(|p| note.contains(&format!("held by {p}")))),
        "a deferral names the holder: {deferred:?}"
    );
    for instance in &fleet {
        let requests = instance.status()["fleet"]["api_requests"].as_u64().unwrap();
        eprintln!("{}: {requests} API requests", instance.pod);
    }
}

fn all_healthy(fleet: &[Instance]) -> bool {
    fleet.iter().all(|i| i.status()["state"] == "healthy")
}

#[test]
fn a_holder_that_dies_frees_its_slot_when_the_lease_expires_and_the_next_takes_it() {
    let Some(cluster) = cluster() else { return };
    let ns = cluster.namespace("fleet-dies", &[]);
    let pods = pending_pods(&ns, "kms", 2);
    let kubeconfig = fleet_account(&ns);
    let first = Instance::start(&ns, &pods[0], 80, &kubeconfig, &[]);
    // A call that never ends: the drain holds the slot as long as memprobe lives.
    first.sessions(1);
    let holding = first
        .memprobe
        .wait_for_long("a drain holding the slot", STORY, |s| {
            s["state"] == "draining" && s["fleet"]["holding"].is_string()
        });
    let slot = holding["fleet"]["holding"].as_str().unwrap().to_string();
    let second = Instance::start(&ns, &pods[1], 60, &kubeconfig, &[]);
    let held_by = format!("held by {}", pods[0]);
    second
        .memprobe
        .wait_for_long("the second waiting", STORY, |s| {
            s["fleet"]["waiting"] == true
                && s["reason"].as_str().is_some_and(|r| r.contains(&held_by))
        });
    first.memprobe.signal("KILL");
    let killed = Instant::now();
    let took = second
        .memprobe
        .wait_for_long("the second draining", STORY, |s| s["state"] == "draining");
    let after = killed.elapsed();
    eprintln!("the slot came back {after:?} after its holder died (lease 6s)");
    assert_eq!(took["fleet"]["holding"], slot.as_str(), "the same slot");
    assert!(
        after >= Duration::from_secs(6),
        "not before the lease expired: {after:?}"
    );
    assert_eq!(slot_holders(cluster, &ns.name, "kms"), [pods[1].clone()]);
}

/// A TCP relay to the API server that can stop relaying: every connection it carries is cut,
/// and new ones are accepted and never answered, as from an API server that hangs (the worst
/// case: a refused connection fails at once, a silent one only at memprobe's deadline).
struct Relay {
    port: u16,
    relaying: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn to(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = Relay {
            port: listener.local_addr().unwrap().port(),
            relaying: Arc::new(AtomicBool::new(true)),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        let (relaying, conns) = (Arc::clone(&relay.relaying), Arc::clone(&relay.conns));
        let target = target.to_string();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let mut kept = conns.lock().unwrap();
                kept.push(client.try_clone().unwrap());
                if !relaying.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                kept.push(server.try_clone().unwrap());
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        relay
    }

    fn hang(&self) {
        self.relaying.store(false, Ordering::SeqCst);
        for conn in self.conns.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    fn resume(&self) {
        self.relaying.store(true, Ordering::SeqCst);
        for conn in self.conns.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// The API server's address (`127.0.0.1:16443`), from the admin's kubeconfig.
fn api_server(cluster: &Cluster) -> String {
    let text = std::fs::read_to_string(cluster.kubeconfig()).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .expect("a server in the kubeconfig")
        .trim()
        .to_string()
}

/// `kubeconfig` with its server replaced by the relay's port.
fn relayed(ns: &Namespace, kubeconfig: &Path, address: &str, port: u16) -> PathBuf {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    assert!(
        text.contains(address),
        "{address} in {}",
        kubeconfig.display()
    );
    let relayed = text.replace(address, &format!("127.0.0.1:{port}"));
    ns.file("relayed.kubeconfig", &relayed)
}

#[test]
fn with_the_api_server_away_no_drain_starts_critical_still_recycles_and_the_queue_moves_on_after() {
    let Some(cluster) = cluster() else { return };
    let ns = cluster.namespace("fleet-away", &[]);
    let pods = pending_pods(&ns, "kms", 3);
    let address = api_server(cluster);
    let relay = Relay::to(&address);
    let kubeconfig = relayed(&ns, &fleet_account(&ns), &address, relay.port);

    // The holder: a call that goes on, so its drain holds the slot through the outage.
    let mut holder = Instance::start(&ns, &pods[0], 60, &kubeconfig, &[]);
    holder.sessions(1);
    holder
        .memprobe
        .wait_for_long("the holder draining", STORY, |s| {
            s["state"] == "draining" && s["fleet"]["holding"].is_string()
        });
    // Two waiting: one with a --critical it will cross during the outage.
    let mut critical = Instance::start(&ns, &pods[1], 60, &kubeconfig, &["--critical", "150MiB"]);
    let waiting = Instance::start(&ns, &pods[2], 60, &kubeconfig, &[]);
    for instance in [&critical, &waiting] {
        instance
            .memprobe
            .wait_for_long("waiting for the slot", STORY, |s| {
                s["fleet"]["waiting"] == true
                    && s["reason"].as_str().is_some_and(|r| r.contains("held by"))
            });
    }

    relay.hang();
    for instance in [&critical, &waiting, &holder] {
        instance
            .memprobe
            .wait_for_long("the API server seen away", STORY, |s| {
                s["fleet"]["api"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("unreachable"))
            });
    }
    // Its own next request (within a tick and a deadline) tells the waiter too.
    let away = waiting
        .memprobe
        .wait_for_long("the waiter saying why", STORY, |s| {
            s["reason"]
                .as_str()
                .is_some_and(|r| r.contains("the API server cannot be reached"))
        });
    assert_eq!(away["ready"], true, "still taking calls");
    assert_eq!(
        away["fleet"]["when_unreachable"],
        "no new drain starts through the fleet; a drain holding a slot goes on; --critical still recycles"
    );
    // Memory past --critical recycles with no slot.
    critical.workload.send("alloc 100MiB");
    critical
        .memprobe
        .wait_for_long("a critical recycle", STORY, |s| s["state"] == "recycle");
    critical.restart_server();
    // No other drain starts through the outage, and the holder's goes on; the probes answer
    // as ever, whatever the fleet's thread is waiting for.
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(30) {
        let asked = Instant::now();
        assert_eq!(waiting.memprobe.get("/ready").code, 200);
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "{:?}",
            asked.elapsed()
        );
        let status = waiting.status();
        assert_eq!(
            status["state"], "elevated",
            "no drain while away: {status:#}"
        );
        assert_eq!(holder.status()["state"], "draining");
        std::thread::sleep(Duration::from_millis(500));
    }

    relay.resume();
    // The holder renews before anyone can count its slot expired, then its call ends.
    holder
        .memprobe
        .wait_for_long("the API server back", STORY, |s| {
            s["fleet"]["api"] == "reachable"
        });
    holder.sessions(0);
    holder
        .memprobe
        .wait_for_long("the holder's recycle", STORY, |s| s["state"] == "recycle");
    holder.restart_server();
    let moved = waiting
        .memprobe
        .wait_for_long("the queue moving on", STORY, |s| s["state"] == "draining");
    assert!(moved["fleet"]["holding"].is_string(), "{moved:#}");
    assert_eq!(
        holder.status()["state"],
        "healthy",
        "the holder gave the slot back only once healthy again"
    );
    let spans: Vec<_> = [&holder, &waiting]
        .iter()
        .map(|i| drain_span(&i.status()).expect("drained"))
        .collect();
    assert!(
        spans[0]
            .1
            .as_deref()
            .is_some_and(|end| end <= spans[1].0.as_str()),
        "one drain at a time, through the outage too: {spans:?}"
    );
}

#[test]
fn a_service_account_without_the_role_is_refused_at_start_and_ready_once_the_role_is_bound() {
    let Some(cluster) = cluster() else { return };
    let ns = cluster.namespace("fleet-rbac", &[]);
    let pods = pending_pods(&ns, "kms", 1);
    // The ServiceAccount alone: the fleet component's Role and RoleBinding not applied.
    cluster.run(&["create", "serviceaccount", "memprobe", "-n", &ns.name]);
    let kubeconfig = cluster.service_account_kubeconfig(&ns.name, "memprobe");
    // 10 MiB, under the 40 MiB threshold: healthy, so only the check keeps it from ready.
    let instance = Instance::start(&ns, &pods[0], 10, &kubeconfig, &[]);
    let status = instance.memprobe.wait_for("the start check refused", |s| {
        s["fleet"]["check"]
            .as_str()
            .is_some_and(|c| c.starts_with("refused"))
    });
    let check = status["fleet"]["check"].as_str().unwrap();
    assert!(
        check.contains(&format!(
            "reading pod {}/{}: 403 Forbidden",
            ns.name, pods[0]
        )) && check.contains("needs a Role granting pods get"),
        "the real API server's refusal, said with what grants the call: {check}"
    );
    assert_eq!(status["ready"], false, "{status}");
    assert_eq!(instance.memprobe.get("/ready").code, 503);

    // The shipped Role bound: the next check passes, and the pod is ready.
    fleet_account(&ns);
    let status = instance.memprobe.wait_for_long(
        "the start check passed once the Role is bound",
        Duration::from_secs(90),
        |s| s["fleet"]["check"] == "passed",
    );
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(instance.memprobe.get("/ready").code, 200);
}
