//! podman as the tests use it: with this sandbox's settings, and memprobe's image built from
//! the shipped static binary through the Dockerfile's `runtime` stage, so nothing is pulled.
//! The container test runs that image with podman; the kube tests import it into the
//! cluster's containerd.

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// podman with the settings docs/development.md names: podman's own `CONTAINERS_CONF` when
/// set, else `MEMPROBE_CONTAINERS_CONF`, else `../shared/containers/containers.conf` where it
/// exists.
pub fn podman(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    let shared = Path::new(ROOT).join("../shared/containers/containers.conf");
    let shared = shared.is_file().then_some(shared);
    if let Some(conf) = containers_conf(
        std::env::var_os("CONTAINERS_CONF").is_some(),
        std::env::var_os("MEMPROBE_CONTAINERS_CONF").map(Into::into),
        shared,
    ) {
        cmd.env("CONTAINERS_CONF", conf);
    }
    cmd
}

/// The `CONTAINERS_CONF` to give podman, if any: an override wins over the file beside the
/// clone, and podman's own variable, already set, over both.
pub fn containers_conf(
    already_set: bool,
    override_path: Option<std::path::PathBuf>,
    shared: Option<std::path::PathBuf>,
) -> Option<std::path::PathBuf> {
    if already_set {
        return None;
    }
    override_path.or(shared)
}

/// Runs a command that must succeed; its trimmed stdout.
pub fn run(cmd: &mut Command) -> String {
    let output = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Builds memprobe's image as `image` from `binary` (the shipped static one) and the
/// `memprobe-fleet` beside it: the Dockerfile's `runtime` stage, given both as its `build`
/// context.
pub fn build_memprobe_image(bin: &Path, binary: &Path, image: &str) {
    let context = tempfile::tempdir().expect("a build context");
    std::fs::copy(binary, context.path().join("memprobe")).expect("copy the binary");
    std::fs::copy(
        binary.with_file_name("memprobe-fleet"),
        context.path().join("memprobe-fleet"),
    )
    .expect("copy memprobe-fleet, built beside memprobe");
    let context_dir = context.path().to_str().expect("a UTF-8 temp path");
    run(podman(bin)
        .args(["build", "-q", "--target", "runtime", "-t", image])
        .arg(format!("--build-context=build={context_dir}"))
        .args(["-f", &format!("{ROOT}/Dockerfile"), context_dir]));
}
