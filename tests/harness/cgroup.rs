//! A memory cgroup of its own for a test: cgroup v2 (`memory.max` under a unified
//! hierarchy) or v1 (`/sys/fs/cgroup/memory`), whichever this machine has; removed on drop.
//! Needs root; without it (or without a memory controller) tests skip, and fail in strict mode.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{skip, strict};

pub struct Cgroup {
    pub dir: PathBuf,
    v2: bool,
}

impl Cgroup {
    /// A new cgroup limited to `bytes` of memory (and no swap), or `None` with a printed reason.
    pub fn limited(name: &str, bytes: u64) -> Option<Cgroup> {
        match Self::create(name, bytes) {
            Ok(cgroup) => Some(cgroup),
            Err(why) => {
                assert!(
                    !strict(),
                    "a memory cgroup is required in strict mode: {why}"
                );
                skip(&format!(
                    "no memory cgroup ({why}; as root on cgroup v1 or v2 it runs)"
                ));
                None
            }
        }
    }

    fn create(name: &str, bytes: u64) -> Result<Cgroup, String> {
        let unified = Path::new("/sys/fs/cgroup");
        let controllers = std::fs::read_to_string(unified.join("cgroup.controllers"));
        let v2 = controllers.is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let root = if v2 {
            // Children of the root get the memory controller only once it is delegated.
            let _ = std::fs::write(unified.join("cgroup.subtree_control"), "+memory");
            unified.to_path_buf()
        } else {
            unified.join("memory")
        };
        let dir = root.join(name);
        std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let cgroup = Cgroup { dir, v2 };
        let (limit, swap) = if v2 {
            ("memory.max", "memory.swap.max")
        } else {
            ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
        };
        let bytes = bytes.to_string();
        cgroup.write(limit, &bytes)?;
        // Without swap, going over is an OOM kill, not a slow swap-out.
        if cgroup.dir.join(swap).exists() {
            cgroup.write(swap, if v2 { "0" } else { &bytes })?;
        }
        Ok(cgroup)
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        let path = self.dir.join(file);
        std::fs::write(&path, value)
            .map_err(|e| format!("writing {value} to {}: {e}", path.display()))
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// A command that runs `program` inside this cgroup from its first instruction on.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#"echo $$ > "$0" && exec "$@""#)
            .arg(self.dir.join("cgroup.procs"))
            .arg(program);
        command
    }

    /// OOM kills in this cgroup so far.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        self.read(file)
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The most memory the cgroup has used, in bytes (v2 kernels before 5.19 do not say).
    pub fn peak_bytes(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        self.read(file).trim().parse().ok()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Its processes are gone by now (the harness kills them first); an empty cgroup goes.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}
