//! The static arm64 binary (Graviton and Ampere nodes), cross-built by `.ci/run` and run here
//! under qemu's user-mode emulator: it answers `--version`, then watches a real process end
//! to end and stops cleanly on SIGTERM.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::{Memprobe, SHIPPED_ARM64, Workload, skip, strict, tool};

#[test]
fn the_arm64_binary_runs_and_watches_a_process() {
    let Some(qemu) = tool("qemu-aarch64-static") else {
        return;
    };
    let binary = PathBuf::from(SHIPPED_ARM64);
    if !binary.is_file() {
        assert!(
            !strict(),
            "{SHIPPED_ARM64} is required in strict mode: .ci/run cross-builds it"
        );
        return skip(&format!("{SHIPPED_ARM64} is not built (see .ci/run)"));
    }
    let version = Command::new(&qemu)
        .arg(&binary)
        .arg("--version")
        .output()
        .expect("run the arm64 binary under qemu");
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("memprobe {}", env!("CARGO_PKG_VERSION"))
    );

    let target = Workload::start(None);
    let pid = target.pid.to_string();
    let mut emulated = Command::new(&qemu);
    emulated.arg(&binary);
    let mut probe = Memprobe::start_command(
        emulated,
        &["--pid", &pid, "--interval", "100ms", "--kms-url", "none"],
        &[],
    );
    let status = probe.wait_state("healthy");
    assert_eq!(status["target"]["pid"], target.pid);
    assert_eq!(probe.get("/ready").code, 200);
    assert!(probe.get("/metrics").body.contains("memprobe_target_up 1"));
    assert_eq!(probe.terminate().code(), Some(0));
}
