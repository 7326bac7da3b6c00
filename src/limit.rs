//! The memory limit a percentage threshold is taken of, and where it came from.
//!
//! In order: `--memory-limit` (in Kubernetes, the KMS container's `limits.memory` handed over
//! by the Downward API); the target's own cgroup limit (v2 `memory.max`, v1
//! `memory.limit_in_bytes`) when it is readable from here and below the host's memory; the
//! host's MemTotal. The cgroup lookup is a pure function of the text of `/proc/PID/cgroup`
//! and a cgroup root directory, so both cgroup versions are tested on fixture trees.

use std::io::Cursor;
use std::path::Path;

use procfs::ProcessCGroups;
use procfs::{Current, FromBufRead};
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum LimitSource {
    #[serde(rename = "--memory-limit")]
    Flag,
    #[serde(rename = "cgroup v2 memory.max")]
    CgroupV2,
    #[serde(rename = "cgroup v1 memory.limit_in_bytes")]
    CgroupV1,
    #[default]
    #[serde(rename = "host MemTotal")]
    HostMemTotal,
}

impl LimitSource {
    /// Where a limit came from, as a flag or a file name.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitSource::Flag => "--memory-limit",
            LimitSource::CgroupV2 => "cgroup v2 memory.max",
            LimitSource::CgroupV1 => "cgroup v1 memory.limit_in_bytes",
            LimitSource::HostMemTotal => "host MemTotal",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemoryLimit {
    pub bytes: u64,
    pub source: LimitSource,
}

/// cgroup v1 writes "no limit" as a value near 2^63 (rounded down to a page).
const V1_UNLIMITED: u64 = 1 << 62;

/// The memory limit of the cgroup described by `cgroup_file` (the text of /proc/PID/cgroup),
/// looked up under `root` (normally /sys/fs/cgroup). `None` when there is no limit or it
/// cannot be read from here.
pub fn cgroup_limit(cgroup_file: &str, root: &Path) -> Option<MemoryLimit> {
    let groups = ProcessCGroups::from_buf_read(Cursor::new(cgroup_file))
        .ok()?
        .0;
    let read = |path: &Path| std::fs::read_to_string(path).ok();
    let rel = |p: &str| p.trim_start_matches('/').to_owned();

    // A v1 memory controller takes precedence: on hybrid hosts v2 is mounted without it.
    if let Some(v1) = groups
        .iter()
        .find(|g| g.controllers.iter().any(|c| c == "memory"))
    {
        let path = root
            .join("memory")
            .join(rel(&v1.pathname))
            .join("memory.limit_in_bytes");
        let bytes: u64 = read(&path)?.trim().parse().ok()?;
        return (bytes < V1_UNLIMITED).then_some(MemoryLimit {
            bytes,
            source: LimitSource::CgroupV1,
        });
    }
    let v2 = groups.iter().find(|g| g.hierarchy == 0)?;
    let text = read(&root.join(rel(&v2.pathname)).join("memory.max"))?;
    let bytes: u64 = text.trim().parse().ok()?; // "max" means no limit
    Some(MemoryLimit {
        bytes,
        source: LimitSource::CgroupV2,
    })
}

/// Chooses among the three sources.
pub fn choose(flag: Option<u64>, cgroup: Option<MemoryLimit>, mem_total: u64) -> MemoryLimit {
    if let Some(bytes) = flag {
        return MemoryLimit {
            bytes,
            source: LimitSource::Flag,
        };
    }
    match cgroup {
        Some(limit) if limit.bytes < mem_total => limit,
        _ => MemoryLimit {
            bytes: mem_total,
            source: LimitSource::HostMemTotal,
        },
    }
}

/// Resolves the limit for process `pid` (or for no process yet). Blocking: reads /proc and
/// /sys.
pub fn resolve(flag: Option<u64>, pid: Option<i32>) -> MemoryLimit {
    let cgroup = pid.filter(|_| flag.is_none()).and_then(|pid| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        cgroup_limit(&text, Path::new("/sys/fs/cgroup"))
    });
    choose(flag, cgroup, host_total())
}

/// The host's MemTotal in bytes (`u64::MAX` if /proc/meminfo cannot be read).
pub fn host_total() -> u64 {
    procfs::Meminfo::current().map_or(u64::MAX, |m| m.mem_total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const GI: u64 = 1 << 30;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        dir
    }

    #[test]
    fn cgroup_v2_memory_max() {
        let root = tree(&[("kubepods/pod1/kms/memory.max", "2147483648\n")]);
        let limit = cgroup_limit("0::/kubepods/pod1/kms\n", root.path());
        assert_eq!(
            limit,
            Some(MemoryLimit {
                bytes: 2 * GI,
                source: LimitSource::CgroupV2
            })
        );
    }

    #[test]
    fn cgroup_v2_max_means_no_limit() {
        let root = tree(&[("kms/memory.max", "max\n")]);
        assert_eq!(cgroup_limit("0::/kms\n", root.path()), None);
    }

    #[test]
    fn cgroup_v1_memory_limit_in_bytes() {
        let root = tree(&[("memory/docker/abc/memory.limit_in_bytes", "1073741824\n")]);
        let text = "12:pids:/docker/abc\n4:memory:/docker/abc\n0::/\n";
        assert_eq!(
            cgroup_limit(text, root.path()),
            Some(MemoryLimit {
                bytes: GI,
                source: LimitSource::CgroupV1
            }),
            "on a hybrid host the v1 memory controller decides"
        );
    }

    #[test]
    fn cgroup_v1_near_2_to_the_63_means_no_limit() {
        let root = tree(&[("memory/x/memory.limit_in_bytes", "9223372036854771712\n")]);
        assert_eq!(cgroup_limit("4:memory:/x\n", root.path()), None);
    }

    #[test]
    fn an_unreadable_cgroup_is_no_limit() {
        let root = tree(&[]);
        assert_eq!(cgroup_limit("0::/elsewhere\n", root.path()), None);
        assert_eq!(cgroup_limit("garbage", root.path()), None);
    }

    #[test]
    fn the_flag_beats_the_cgroup_which_beats_the_host() {
        let cg = MemoryLimit {
            bytes: 2 * GI,
            source: LimitSource::CgroupV2,
        };
        assert_eq!(
            choose(Some(GI), Some(cg), 24 * GI).source,
            LimitSource::Flag
        );
        assert_eq!(choose(None, Some(cg), 24 * GI), cg);
        assert_eq!(
            choose(None, None, 24 * GI).source,
            LimitSource::HostMemTotal
        );
        let huge = Some(MemoryLimit {
            bytes: 64 * GI,
            source: LimitSource::CgroupV2,
        });
        assert_eq!(
            choose(None, huge, 24 * GI),
            MemoryLimit {
                bytes: 24 * GI,
                source: LimitSource::HostMemTotal
            },
            "a cgroup limit above the host's memory is no limit"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn no_cgroup_file_makes_the_lookup_panic(text in "\\PC*|([0-9]{1,2}:[a-z,=]{0,20}:/[a-z/]{0,20}\\n){0,4}") {
                let root = tempfile::tempdir().unwrap();
                let _ = cgroup_limit(&text, root.path());
            }
        }
    }
}
