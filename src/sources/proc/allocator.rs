//! Which malloc the target runs on, from the libraries mapped into it.
//!
//! Read once per incarnation from /proc/PID/maps. That file needs ptrace-read access (the
//! target's user or CAP_SYS_PTRACE); without it the answer is `unknown`, not an error. A
//! preloaded jemalloc, tcmalloc or mimalloc shows as its shared library; a process with only
//! libc mapped runs glibc's malloc, the one heap fragmentation ratchets up.

use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Allocator {
    Jemalloc,
    Tcmalloc,
    Mimalloc,
    Glibc,
    #[default]
    Unknown,
}

impl Allocator {
    pub fn as_str(self) -> &'static str {
        match self {
            Allocator::Jemalloc => "jemalloc",
            Allocator::Tcmalloc => "tcmalloc",
            Allocator::Mimalloc => "mimalloc",
            Allocator::Glibc => "glibc",
            Allocator::Unknown => "unknown",
        }
    }
}

/// Tells the allocator from the paths of the files mapped into a process.
pub fn detect<'a>(mapped: impl IntoIterator<Item = &'a str>) -> Allocator {
    let mut libc = false;
    for path in mapped {
        let name = path.rsplit('/').next().unwrap_or(path);
        for (prefix, allocator) in [
            ("libjemalloc", Allocator::Jemalloc),
            ("libtcmalloc", Allocator::Tcmalloc),
            ("libmimalloc", Allocator::Mimalloc),
        ] {
            if name.starts_with(prefix) {
                return allocator;
            }
        }
        libc |= name.starts_with("libc.so") || name.starts_with("libc-2.");
    }
    if libc {
        Allocator::Glibc
    } else {
        Allocator::Unknown
    }
}

/// Reads the target's maps; `Unknown` when they cannot be read.
pub fn of(process: &procfs::process::Process) -> Allocator {
    let Ok(maps) = process.maps() else {
        return Allocator::Unknown;
    };
    let paths: Vec<String> = maps
        .iter()
        .filter_map(|m| match &m.pathname {
            procfs::process::MMapPath::Path(p) => Some(p.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    detect(paths.iter().map(String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GLIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";

    #[test]
    fn a_preloaded_allocator_wins_over_libc() {
        let jemalloc = [GLIBC, "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"];
        assert_eq!(detect(jemalloc), Allocator::Jemalloc);
        assert_eq!(
            detect([GLIBC, "/usr/lib/libtcmalloc_minimal.so.4"]),
            Allocator::Tcmalloc
        );
        assert_eq!(
            detect(["/opt/lib/libmimalloc.so.2", GLIBC]),
            Allocator::Mimalloc
        );
    }

    #[test]
    fn libc_alone_is_glibc_malloc_and_nothing_is_unknown() {
        assert_eq!(
            detect([GLIBC, "/usr/bin/kurento-media-server"]),
            Allocator::Glibc
        );
        assert_eq!(detect(["/lib/libc-2.31.so"]), Allocator::Glibc);
        assert_eq!(detect(["/memprobe"]), Allocator::Unknown, "a static binary");
        assert_eq!(detect([]), Allocator::Unknown);
    }

    #[test]
    fn this_test_process_runs_on_glibc() {
        let me = procfs::process::Process::myself().unwrap();
        assert_eq!(of(&me), Allocator::Glibc);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn no_maps_line_makes_detection_panic(lines in prop::collection::vec("\\PC*", 0..20)) {
                let _ = detect(lines.iter().map(String::as_str));
            }
        }
    }
}
