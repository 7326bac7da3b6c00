//! Which malloc the target runs on, from the libraries mapped into it.
//!
//! Read from /proc/PID/maps when an incarnation is found, and again while the answer is
//! `unknown` ([`Rereads`]): a process found right after its exec has not mapped its C library
//! yet. That file needs ptrace-read access (the target's user or CAP_SYS_PTRACE); without it
//! the answer is `unknown`, not an error. A
//! preloaded jemalloc, tcmalloc or mimalloc shows as its shared library; a process with only
//! libc mapped runs glibc's malloc, the one heap fragmentation ratchets up, and one on musl's
//! dynamic loader (which is also its C library) runs musl's. A process with files mapped but
//! no dynamic loader among them is statically linked: its malloc is built into the binary,
//! and no outside reader can tell which — unless it is this very binary (the demo's workload
//! is), whose malloc is the one memprobe was built with. The kernel maps the loader at exec,
//! so a dynamically linked process is never taken for a static one, however early it is read.

use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Allocator {
    Jemalloc,
    Tcmalloc,
    Mimalloc,
    Glibc,
    Musl,
    /// Statically linked: a malloc built into the binary, which cannot be told from outside.
    Static,
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
            Allocator::Musl => "musl",
            Allocator::Static => "static",
            Allocator::Unknown => "unknown",
        }
    }

    /// As a sentence names it: "glibc's malloc", "jemalloc".
    pub fn malloc(self) -> &'static str {
        match self {
            Allocator::Glibc => "glibc's malloc",
            Allocator::Musl => "musl's malloc",
            Allocator::Static => "a malloc built into the binary",
            Allocator::Unknown => "an unknown malloc",
            other => other.as_str(),
        }
    }

    /// The malloc this build of memprobe runs on.
    pub fn built_in() -> Self {
        if cfg!(target_env = "musl") {
            Allocator::Musl
        } else if cfg!(target_env = "gnu") {
            Allocator::Glibc
        } else {
            Allocator::Unknown
        }
    }
}

/// Tells the allocator from the paths of the files mapped into a process.
pub fn detect<'a>(mapped: impl IntoIterator<Item = &'a str>) -> Allocator {
    let (mut libc, mut loader, mut files) = (false, false, false);
    for path in mapped {
        files = true;
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
        if name.starts_with("ld-musl-") || name.starts_with("libc.musl-") {
            return Allocator::Musl;
        }
        libc |= name.starts_with("libc.so") || name.starts_with("libc-2.");
        // ld-linux-x86-64.so.2, ld-linux-aarch64.so.1, ld64.so.2, ld.so.1: the loader the
        // kernel mapped at exec, whatever the architecture.
        loader |=
            name.starts_with("ld-") || name.starts_with("ld64.so") || name.starts_with("ld.so");
    }
    match (libc, loader, files) {
        (true, _, _) => Allocator::Glibc,
        // Loaded dynamically, but the C library not mapped yet: read again.
        (false, true, _) => Allocator::Unknown,
        (false, false, true) => Allocator::Static,
        (false, false, false) => Allocator::Unknown,
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
    match detect(paths.iter().map(String::as_str)) {
        Allocator::Static if is_this_binary(process.pid) => Allocator::built_in(),
        found => found,
    }
}

/// Whether `pid` runs the same executable file as this process.
fn is_this_binary(pid: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let file = |path: String| std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
    let theirs = file(format!("/proc/{pid}/exe"));
    theirs.is_some() && theirs == file("/proc/self/exe".to_string())
}

/// The most samples between two reads of an allocator still unknown: a static binary stays
/// unknown for good, and its maps are then read about every 5 minutes at the default interval.
const MAX_SAMPLES_BETWEEN_READS: u32 = 64;

/// When to read the maps again while the allocator is unknown: at the next sample, then after
/// twice as many samples each time, up to [`MAX_SAMPLES_BETWEEN_READS`]. Once known, never.
#[derive(Debug)]
pub struct Rereads {
    known: bool,
    samples_left: u32,
    every: u32,
}

impl Rereads {
    /// For an incarnation whose first read gave `first`.
    pub fn after(first: Allocator) -> Self {
        Rereads {
            known: first != Allocator::Unknown,
            samples_left: 1,
            every: 1,
        }
    }

    /// One sample taken: reads again (with `read`) when it is time, and returns the allocator
    /// the first time it is known.
    pub fn sampled(&mut self, read: impl FnOnce() -> Allocator) -> Option<Allocator> {
        if self.known {
            return None;
        }
        self.samples_left = self.samples_left.saturating_sub(1);
        if self.samples_left > 0 {
            return None;
        }
        self.every = (self.every * 2).min(MAX_SAMPLES_BETWEEN_READS);
        self.samples_left = self.every;
        let found = read();
        self.known = found != Allocator::Unknown;
        self.known.then_some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GLIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    const LOADER: &str = "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2";

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
        assert_eq!(detect([]), Allocator::Unknown);
    }

    #[test]
    fn musls_loader_is_musl_malloc_and_no_loader_at_all_is_a_static_binary() {
        assert_eq!(
            detect(["/usr/bin/janus", "/lib/ld-musl-x86_64.so.1"]),
            Allocator::Musl
        );
        assert_eq!(
            detect(["/lib/libc.musl-aarch64.so.1"]),
            Allocator::Musl,
            "Alpine's name for it"
        );
        assert_eq!(detect(["/memprobe"]), Allocator::Static, "a static binary");
        assert_eq!(
            detect(["/usr/bin/kurento-media-server", LOADER]),
            Allocator::Unknown,
            "found before the loader mapped libc: not static, read again"
        );
        for loader in [
            "/lib/ld-linux-aarch64.so.1",
            "/lib64/ld64.so.2",
            "/lib/ld.so.1",
        ] {
            assert_eq!(
                detect(["/bin/server", loader]),
                Allocator::Unknown,
                "{loader}"
            );
        }
    }

    #[test]
    fn an_unknown_allocator_is_read_again_until_known_and_then_never() {
        let mut rereads = Rereads::after(Allocator::Unknown);
        let mut read_at = Vec::new();
        for sample in 1..=40 {
            let found = rereads.sampled(|| {
                read_at.push(sample);
                if sample >= 30 {
                    Allocator::Glibc
                } else {
                    Allocator::Unknown
                }
            });
            if sample == 31 {
                assert_eq!(found, Some(Allocator::Glibc), "said once it is known");
            } else {
                assert_eq!(found, None, "sample {sample}");
            }
        }
        assert_eq!(
            read_at,
            [1, 3, 7, 15, 31],
            "at the next sample, then ever further apart, and never once known"
        );
    }

    #[test]
    fn a_known_allocator_is_never_read_again_and_an_unknown_one_at_most_every_64_samples() {
        let mut rereads = Rereads::after(Allocator::Jemalloc);
        for _ in 0..100 {
            assert_eq!(rereads.sampled(|| panic!("read again")), None);
        }
        let mut rereads = Rereads::after(Allocator::Unknown);
        let mut reads = Vec::new();
        for sample in 1..=400u32 {
            rereads.sampled(|| {
                reads.push(sample);
                Allocator::Unknown
            });
        }
        let gaps: Vec<u32> = reads.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| *g <= 64), "{gaps:?}");
        assert_eq!(
            gaps.last(),
            Some(&64),
            "a static binary is still looked at: {gaps:?}"
        );
    }

    #[test]
    fn this_test_process_runs_on_the_c_library_it_was_built_for() {
        let me = procfs::process::Process::myself().unwrap();
        // Statically linked, it is still known: it is this very binary.
        assert_eq!(of(&me), Allocator::built_in());
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
