//! memprobe's own pause (SIGSTOP, a frozen cgroup, a suspended VM) is no evidence: what it did
//! not see cannot fill a --sustain window, and pings it could not send are not a hung server.

use std::time::Duration;

use crate::fast;
use crate::harness::{self, Memprobe, Workload};

#[test]
fn a_pause_of_memprobe_does_not_count_toward_sustain() {
    let binary = harness::shipped_or_dev();
    let binary = binary.as_path();
    let mut target = Workload::start(None);
    let pid = target.pid.to_string();
    // 100 ms samples: a gap over 5.1 s is a pause. --sustain 8s.
    let probe = Memprobe::start_binary(binary, &fast(&["--pid", &pid, "--sustain", "8s"]), &[]);
    probe.wait_state("healthy");
    target.send("alloc 150MiB");
    probe.wait_state("elevated");

    let before = probe.status()["counters"]["samples_total"]
        .as_u64()
        .expect("samples_total");
    probe.signal("STOP");
    std::thread::sleep(Duration::from_secs(10));
    probe.signal("CONT");
    // A few samples after the pause: still elevated, the window started again.
    let status = probe.wait_for("samples after the pause", |s| {
        s["counters"]["samples_total"]
            .as_u64()
            .is_some_and(|n| n >= before + 3)
    });
    assert_eq!(
        status["state"], "elevated",
        "10 s unseen do not complete an 8 s --sustain: {status:#}"
    );
    assert!(
        !crate::states_entered(&status).contains(&"draining".to_string()),
        "{status:#}"
    );
    // Watched for a whole --sustain after it, memory does drain.
    let status = probe.wait_state("draining");
    assert!(
        status["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("over threshold"),
        "{status:#}"
    );
}
