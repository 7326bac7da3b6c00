//! Reading one memory sample of the target (and, if asked, its descendants).
//!
//! The cheap figures — rss, anon, file, shmem, swap — come from one read of
//! `/proc/PID/status`: its `VmRSS` is the same kernel counter as statm's resident field, and
//! the same read also splits it into `RssAnon`/`RssFile`/`RssShmem` and gives `VmSwap`, so one
//! file serves all five. PSS needs `/proc/PID/smaps_rollup`, which makes the kernel walk the
//! target's page tables (slow for a big server, and it needs ptrace access), so it is read
//! only under `--memory pss`.
//!
//! Everything here blocks on /proc; the monitor calls it from its own sampling thread.

use std::fs::File;
use std::os::unix::fs::FileExt;

use procfs::process::{Process, Status};
use procfs::{FromBufRead, ProcError};
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MemoryKind {
    #[default]
    Rss,
    Anon,
    Pss,
}

impl MemoryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryKind::Rss => "rss",
            MemoryKind::Anon => "anon",
            MemoryKind::Pss => "pss",
        }
    }
}

/// Memory of the target (summed over its descendants with `--include-children`), in bytes.
/// Only rss is known when KMS reports its own memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct MemorySample {
    pub rss_bytes: u64,
    pub anon_bytes: Option<u64>,
    pub file_bytes: Option<u64>,
    pub shmem_bytes: Option<u64>,
    pub swap_bytes: Option<u64>,
    pub pss_bytes: Option<u64>,
    /// How many processes were added up.
    pub processes: u32,
    /// Their threads (`Threads:` in /proc/PID/status): a KMS whose teardown is stuck keeps
    /// the threads of media it was told to release. None when memory comes from KMS itself.
    pub threads: Option<u64>,
}

impl MemorySample {
    /// The figure that decides.
    pub fn deciding(&self, kind: MemoryKind) -> u64 {
        match kind {
            MemoryKind::Rss => Some(self.rss_bytes),
            MemoryKind::Anon => self.anon_bytes,
            MemoryKind::Pss => self.pss_bytes,
        }
        .unwrap_or(self.rss_bytes)
    }

    /// A sample of resident memory alone.
    pub fn rss_only(rss_bytes: u64) -> Self {
        MemorySample {
            rss_bytes,
            processes: 1,
            ..Default::default()
        }
    }

    /// `(kind label, bytes)` for every figure this sample has.
    pub fn figures(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("rss", Some(self.rss_bytes)),
            ("anon", self.anon_bytes),
            ("file", self.file_bytes),
            ("shmem", self.shmem_bytes),
            ("swap", self.swap_bytes),
            ("pss", self.pss_bytes),
        ]
        .into_iter()
        .filter_map(|(kind, bytes)| bytes.map(|b| (kind, b)))
    }

    fn add(&mut self, other: &MemorySample) {
        let sum = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.rss_bytes += other.rss_bytes;
        self.anon_bytes = sum(self.anon_bytes, other.anon_bytes);
        self.file_bytes = sum(self.file_bytes, other.file_bytes);
        self.shmem_bytes = sum(self.shmem_bytes, other.shmem_bytes);
        self.swap_bytes = sum(self.swap_bytes, other.swap_bytes);
        self.pss_bytes = sum(self.pss_bytes, other.pss_bytes);
        self.processes += other.processes;
        self.threads = sum(self.threads, other.threads);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// The process exited (or is a zombie): the target is lost.
    #[error("process {0} exited")]
    Gone(i32),
    #[error(
        "cannot read /proc/{pid}/smaps_rollup for --memory pss: run memprobe as the target's \
         user or grant it CAP_SYS_PTRACE (or use --memory rss)"
    )]
    PssDenied { pid: i32 },
    #[error("reading /proc/{pid}: {message}")]
    Read { pid: i32, message: String },
}

/// Samples one process, opening its files for this one read.
pub fn sample_process(process: &Process, kind: MemoryKind) -> Result<MemorySample, SampleError> {
    let status = process.status().map_err(|e| classify(process, e))?;
    figures(process, status, kind)
}

fn figures(
    process: &Process,
    status: Status,
    kind: MemoryKind,
) -> Result<MemorySample, SampleError> {
    let pid = process.pid;
    // A zombie has no memory lines left: it is gone, not empty.
    let Some(rss_kib) = status.vmrss else {
        return Err(SampleError::Gone(pid));
    };
    let kib = |v: Option<u64>| Some(v.unwrap_or(0) * 1024);
    let pss_bytes = match kind {
        MemoryKind::Pss => Some(read_pss(process)?),
        _ => None,
    };
    Ok(MemorySample {
        rss_bytes: rss_kib * 1024,
        anon_bytes: kib(status.rssanon),
        file_bytes: kib(status.rssfile),
        shmem_bytes: kib(status.rssshmem),
        swap_bytes: kib(status.vmswap),
        pss_bytes,
        processes: 1,
        threads: Some(status.threads),
    })
}

fn read_pss(process: &Process) -> Result<u64, SampleError> {
    let rollup = process.smaps_rollup().map_err(|e| match e {
        ProcError::PermissionDenied(_) => SampleError::PssDenied { pid: process.pid },
        e => classify(process, e),
    })?;
    Ok(rollup
        .memory_map_rollup
        .iter()
        .filter_map(|map| map.extension.map.get("Pss"))
        .sum())
}

fn classify(process: &Process, e: ProcError) -> SampleError {
    if !process.is_alive() {
        return SampleError::Gone(process.pid);
    }
    SampleError::Read {
        pid: process.pid,
        message: e.to_string(),
    }
}

/// One incarnation's sampler. It keeps the target's /proc/PID/status open and reads it again
/// with `pread` at offset 0, which makes the kernel format a fresh copy: one syscall per
/// sample instead of open, read and close. The descriptor belongs to that very process, so a
/// read after it exits fails instead of reading whoever got its pid.
pub struct Sampler {
    process: Process,
    status: File,
    buffer: Vec<u8>,
}

impl Sampler {
    pub fn new(process: Process) -> Result<Self, SampleError> {
        let status = process
            .open_relative("status")
            .map_err(|e| classify(&process, e))?;
        Ok(Sampler {
            process,
            status,
            buffer: Vec::with_capacity(4096),
        })
    }

    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Samples the target, plus its descendants when `include_children`. A descendant that
    /// exits mid-sample is skipped; only the target's own disappearance is an error.
    pub fn sample(
        &mut self,
        kind: MemoryKind,
        include_children: bool,
    ) -> Result<MemorySample, SampleError> {
        let status = self.read_status()?;
        let mut total = figures(&self.process, status, kind)?;
        if include_children {
            for pid in descendants(self.process.pid) {
                if let Ok(child) = Process::new(pid)
                    && let Ok(s) = sample_process(&child, kind)
                {
                    total.add(&s);
                }
            }
        }
        Ok(total)
    }

    fn read_status(&mut self) -> Result<Status, SampleError> {
        self.buffer.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let offset = self.buffer.len() as u64;
            match self.status.read_at(&mut chunk, offset) {
                Ok(0) => break,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(classify(&self.process, ProcError::from(e))),
            }
        }
        Status::from_buf_read(self.buffer.as_slice()).map_err(|e| classify(&self.process, e))
    }
}

/// Every descendant of `root`, from one pass over /proc.
fn descendants(root: i32) -> Vec<i32> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let links: Vec<(i32, i32)> = all
        .filter_map(Result::ok)
        .filter_map(|p| p.stat().ok().map(|s| (s.pid, s.ppid)))
        .collect();
    descendants_of(root, &links)
}

/// The pids below `root` in a `(pid, ppid)` table.
pub fn descendants_of(root: i32, links: &[(i32, i32)]) -> Vec<i32> {
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in links {
            if ppid == parent && pid != root && !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_are_found_at_every_depth() {
        let links = [(1, 0), (10, 1), (11, 10), (12, 11), (20, 1), (13, 10)];
        let mut below = descendants_of(10, &links);
        below.sort();
        assert_eq!(
            below,
            vec![11, 12, 13],
            "children and grandchildren, not siblings"
        );
        assert!(descendants_of(12, &links).is_empty());
    }

    #[test]
    fn samples_this_very_process() {
        let me = Process::myself().unwrap();
        let s = Sampler::new(me)
            .unwrap()
            .sample(MemoryKind::Pss, false)
            .expect("own memory is readable");
        let anon = s.anon_bytes.expect("anon from status");
        assert!(s.rss_bytes > 0 && anon > 0);
        assert!(s.rss_bytes >= anon);
        assert!(
            s.pss_bytes.is_some_and(|p| p > 0),
            "own smaps_rollup is readable"
        );
        assert_eq!(s.deciding(MemoryKind::Anon), anon);
        assert!(s.threads.is_some_and(|n| n >= 1), "its threads are counted");
        assert_eq!(s.figures().count(), 6);
    }

    #[test]
    fn a_process_that_exited_is_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut sampler = Sampler::new(Process::new(child.id() as i32).unwrap()).unwrap();
        assert!(sampler.sample(MemoryKind::Rss, false).is_ok());
        assert!(
            sampler.sample(MemoryKind::Rss, false).is_ok(),
            "the kept file reads again"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            matches!(
                sampler.sample(MemoryKind::Rss, false),
                Err(SampleError::Gone(_))
            ),
            "a reaped process reads as gone through its kept /proc descriptor"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn no_status_file_makes_its_parser_panic(
                text in "\\PC*|(Name:\\t[a-z]{0,9}\\n|VmRSS:\\t[0-9]{0,25} kB\\n|RssAnon:\\t[0-9 a-z]{0,25}\\n){0,6}"
            ) {
                let _ = Status::from_buf_read(text.as_bytes());
            }
        }
    }
}
