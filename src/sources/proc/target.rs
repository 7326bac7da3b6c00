//! Finding the watched process, and telling one incarnation of it from the next.
//!
//! An incarnation is (pid, start time in clock ticks since boot). The found process is held
//! as a `procfs::process::Process`, which keeps an open descriptor on its `/proc/PID`
//! directory: every later read goes through that descriptor and fails once that very process
//! is gone, even if the kernel has handed its pid to another one. So a reused pid can never be
//! sampled as if it were the old target; it is found again as a new incarnation.
//!
//! Signals need more than that: with each incarnation found comes a [`ProcessHandle`] (a
//! pidfd, checked against the start time found), which a recycle signal goes through.
//!
//! Finding by name is a full /proc scan, done only while the target is lost. It goes through
//! procfs, like every other read here: one crate for /proc, with pids as the kernel's i32.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use procfs::process::Process;

use super::handle::ProcessHandle;

/// Which process to watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSpec {
    Pid(i32),
    Pidfile(PathBuf),
    Name(String),
}

impl std::fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetSpec::Pid(pid) => write!(f, "--pid {pid}"),
            TargetSpec::Pidfile(path) => write!(f, "--pidfile {}", path.display()),
            TargetSpec::Name(name) => write!(f, "--name {name}"),
        }
    }
}

/// The kernel cuts a process's comm to 15 bytes: KMS shows as `kurento-media-s`.
const COMM_LEN: usize = 15;

/// What the name rule looks at for one process.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Candidate {
    pub pid: i32,
    pub ppid: Option<i32>,
    pub comm: String,
    pub exe: Option<String>,
    pub argv0: Option<String>,
    pub start_ticks: u64,
}

/// Does this process go by `name`? Its executable's or argv[0]'s basename equals it, or its
/// comm equals it cut to 15 bytes.
pub fn name_matches(c: &Candidate, name: &str) -> bool {
    let basename = |p: &str| {
        Path::new(p)
            .file_name()
            .and_then(OsStr::to_str)
            .map(str::to_owned)
    };
    let cut = &name.as_bytes()[..name.len().min(COMM_LEN)];
    c.exe.as_deref().and_then(basename).as_deref() == Some(name)
        || c.argv0.as_deref().and_then(basename).as_deref() == Some(name)
        || c.comm.as_bytes() == cut
}

/// Of the processes going by `name`, the oldest whose parent does not go by it too (monit's
/// rule: a server that forks workers of its own name is watched as the parent).
pub fn pick(candidates: &[Candidate], name: &str) -> Option<i32> {
    let matching: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| name_matches(c, name))
        .collect();
    let is_match = |pid: i32| matching.iter().any(|c| c.pid == pid);
    matching
        .iter()
        .filter(|c| !c.ppid.is_some_and(is_match))
        .min_by_key(|c| (c.start_ticks, c.pid))
        .map(|c| c.pid)
}

/// One incarnation of the target, found.
#[derive(Debug)]
pub struct Found {
    pub process: Process,
    /// What a recycle signal goes through.
    pub handle: ProcessHandle,
    pub pid: i32,
    pub start_ticks: u64,
    pub start_time: SystemTime,
    pub name: String,
}

/// Why no target was found this time; shown as the reason of state `lost`.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NotFound {
    #[error("no process named {0}")]
    NoName(String),
    #[error("no process named {0} of user {1}")]
    NoNameOfUser(String, u32),
    #[error("process {0} does not exist")]
    NoPid(i32),
    #[error(
        "permission denied reading /proc/{0}/stat (is /proc mounted with hidepid, or is the \
         process another user's in a namespace memprobe cannot see?)"
    )]
    Denied(i32),
    #[error("process {0} is a kernel thread, which has no memory of its own to watch")]
    KernelThread(i32),
    #[error("pidfile {path}: {problem}")]
    Pidfile { path: PathBuf, problem: String },
}

/// The kernel's flag for its own threads (`PF_KTHREAD` in include/linux/sched.h).
const PF_KTHREAD: u32 = 0x0020_0000;
/// A pid is at most 7 digits (pid_max is at most 2^22); a pidfile has a few bytes more.
const MAX_PIDFILE_BYTES: u64 = 32;
/// Names from /proc are shown cut to this.
const MAX_NAME_BYTES: usize = 64;

/// Is `pid` a kernel thread (kthreadd and its children)? False when it cannot be told.
/// Whether the running process `pid` goes by `name` (its executable, argv[0] or comm), as
/// far as /proc shows it; false for a process that is not there.
pub fn goes_by(pid: i32, name: &str) -> bool {
    let Ok(process) = Process::new(pid) else {
        return false;
    };
    let Ok(stat) = process.stat() else {
        return false;
    };
    let text = |p: PathBuf| p.to_str().map(str::to_owned);
    let candidate = Candidate {
        pid,
        ppid: Some(stat.ppid),
        comm: stat.comm,
        exe: process.exe().ok().and_then(text),
        argv0: process
            .cmdline()
            .ok()
            .and_then(|argv| argv.into_iter().next()),
        start_ticks: stat.starttime,
    };
    name_matches(&candidate, name)
}

pub fn is_kernel_thread(pid: i32) -> bool {
    Process::new(pid)
        .and_then(|p| p.stat())
        .is_ok_and(|stat| stat.flags & PF_KTHREAD != 0)
}

pub struct Finder {
    spec: TargetSpec,
    /// `--user`: only processes of this uid go by the name.
    user: Option<u32>,
    own_pid: i32,
}

impl Finder {
    pub fn new(spec: TargetSpec, user: Option<u32>) -> Self {
        Finder {
            spec,
            user,
            own_pid: std::process::id() as i32,
        }
    }

    /// How the target is chosen, as flags: `--name kms --user 1000`.
    pub fn describe(&self) -> String {
        match self.user {
            Some(uid) => format!("{} --user {uid}", self.spec),
            None => self.spec.to_string(),
        }
    }

    /// Looks for the target once. Blocking: reads /proc.
    pub fn find(&mut self) -> Result<Found, NotFound> {
        let pid = match &self.spec {
            TargetSpec::Pid(pid) => *pid,
            TargetSpec::Pidfile(path) => read_pidfile(path)?,
            TargetSpec::Name(name) => {
                let name = name.clone();
                let candidates = self.scan(&name);
                match pick(&candidates, &name) {
                    Some(pid) => pid,
                    None => match self.user {
                        Some(uid) => return Err(NotFound::NoNameOfUser(name, uid)),
                        None => return Err(NotFound::NoName(name)),
                    },
                }
            }
        };
        open(pid)
    }

    /// The processes going by `name`, with their start times. The comm in `stat` is read
    /// first; the executable's link and argv[0] only when it does not already match.
    fn scan(&self, name: &str) -> Vec<Candidate> {
        let Ok(all) = procfs::process::all_processes() else {
            return Vec::new();
        };
        all.filter_map(Result::ok)
            .filter(|p| p.pid != self.own_pid)
            .filter(|p| self.user.is_none() || p.uid().ok() == self.user)
            .filter_map(|p| {
                let stat = p.stat().ok()?;
                if stat.flags & PF_KTHREAD != 0 {
                    return None;
                }
                let mut c = Candidate {
                    pid: stat.pid,
                    ppid: Some(stat.ppid),
                    comm: stat.comm,
                    exe: None,
                    argv0: None,
                    start_ticks: stat.starttime,
                };
                if !name_matches(&c, name) {
                    c.exe = p.exe().ok().map(|e| e.to_string_lossy().into_owned());
                    c.argv0 = p.cmdline().ok().and_then(|argv| argv.into_iter().next());
                }
                name_matches(&c, name).then_some(c)
            })
            .collect()
    }
}

/// Reads a pid from a file, reading at most a few dozen bytes of it: a pidfile that points
/// at /dev/zero or a log file must not fill memprobe's memory, nor its reasons.
fn read_pidfile(path: &Path) -> Result<i32, NotFound> {
    use std::io::Read;
    let problem = |problem: String| NotFound::Pidfile {
        path: path.to_owned(),
        problem,
    };
    // A FIFO or a device would block or never end: a pidfile is a regular file.
    let file = crate::files::open_regular(path).map_err(|e| match e {
        crate::files::FileError::NotRegular(kind) => {
            problem(format!("is {kind}, not a regular file, so not a pidfile"))
        }
        crate::files::FileError::Unreadable(why) => problem(why),
        other => problem(other.to_string()),
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_PIDFILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| problem(e.to_string()))?;
    let text = String::from_utf8_lossy(&bytes);
    let pid = (bytes.len() as u64 <= MAX_PIDFILE_BYTES)
        .then(|| text.trim().parse::<i32>().ok())
        .flatten();
    match pid {
        Some(pid) if pid > 0 => Ok(pid),
        // Its length, never its content: whoever writes the pidfile (the server) could have
        // made it a link to a secret of memprobe's.
        _ => Err(problem(format!(
            "holds {} bytes that are not a process id",
            bytes.len()
        ))),
    }
}

/// Opens one process by pid: not there, only a zombie, a kernel thread, or unreadable are
/// each told apart.
pub fn open(pid: i32) -> Result<Found, NotFound> {
    let not_found = |e: procfs::ProcError| match e {
        procfs::ProcError::PermissionDenied(_) => NotFound::Denied(pid),
        _ => NotFound::NoPid(pid),
    };
    let process = Process::new(pid).map_err(not_found)?;
    let stat = process.stat().map_err(not_found)?;
    if stat.state == 'Z' || stat.state == 'X' {
        return Err(NotFound::NoPid(pid));
    }
    if stat.flags & PF_KTHREAD != 0 {
        return Err(NotFound::KernelThread(pid));
    }
    let argv0 = process
        .cmdline()
        .ok()
        .and_then(|argv| argv.into_iter().next());
    let name = argv0
        .as_deref()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| stat.comm.clone());
    let handle =
        ProcessHandle::take(pid, stat.starttime, &process).map_err(|_| NotFound::NoPid(pid))?;
    Ok(Found {
        handle,
        pid,
        start_ticks: stat.starttime,
        start_time: start_time(stat.starttime),
        name: crate::units::clip(&name, MAX_NAME_BYTES),
        process,
    })
}

/// Wall-clock start of a process, for people: boot time + start ticks.
fn start_time(start_ticks: u64) -> SystemTime {
    let boot = procfs::boot_time_secs().unwrap_or(0);
    let ticks_per_second = procfs::ticks_per_second().max(1);
    SystemTime::UNIX_EPOCH
        + Duration::from_secs(boot)
        + Duration::from_millis(start_ticks * 1000 / ticks_per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: i32, ppid: i32, comm: &str, argv0: &str, start_ticks: u64) -> Candidate {
        Candidate {
            pid,
            ppid: Some(ppid),
            comm: comm.into(),
            exe: None,
            argv0: Some(argv0.into()),
            start_ticks,
        }
    }

    #[test]
    fn names_match_on_exe_argv0_or_comm_cut_to_15_bytes() {
        let kms = Candidate {
            comm: "kurento-media-s".into(),
            ..Default::default()
        };
        assert!(
            name_matches(&kms, "kurento-media-server"),
            "comm is the name cut to 15 bytes"
        );
        let by_exe = Candidate {
            comm: "other".into(),
            exe: Some("/usr/bin/kurento-media-server".into()),
            ..Default::default()
        };
        assert!(
            name_matches(&by_exe, "kurento-media-server"),
            "exe basename matches"
        );
        let by_argv0 = Candidate {
            comm: "memprobe".into(),
            argv0: Some("./bin/wl-7".into()),
            ..Default::default()
        };
        assert!(name_matches(&by_argv0, "wl-7"), "argv[0] basename matches");
        assert!(!name_matches(&by_argv0, "wl"), "a prefix is not a match");
        let short = Candidate {
            comm: "kurento".into(),
            ..Default::default()
        };
        assert!(!name_matches(&short, "kurento-media-server"));
    }

    #[test]
    fn the_oldest_match_whose_parent_does_not_match_wins() {
        let table = [
            proc(10, 1, "bash", "bash", 5),
            proc(
                20,
                10,
                "kurento-media-s",
                "/usr/bin/kurento-media-server",
                100,
            ),
            proc(
                21,
                20,
                "kurento-media-s",
                "/usr/bin/kurento-media-server",
                50,
            ),
            proc(
                30,
                1,
                "kurento-media-s",
                "/usr/bin/kurento-media-server",
                200,
            ),
        ];
        assert_eq!(
            pick(&table, "kurento-media-server"),
            Some(20),
            "21 is older but its parent matches; 20 is older than 30"
        );
        assert_eq!(pick(&table, "nginx"), None);
    }

    #[test]
    fn a_pidfile_must_hold_a_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kms.pid");
        std::fs::write(&path, "4242\n").unwrap();
        assert_eq!(read_pidfile(&path), Ok(4242));
        std::fs::write(&path, "kms").unwrap();
        assert!(matches!(read_pidfile(&path), Err(NotFound::Pidfile { .. })));
        assert!(matches!(
            read_pidfile(&dir.path().join("none")),
            Err(NotFound::Pidfile { .. })
        ));
    }

    #[test]
    fn a_pidfile_is_read_only_a_few_bytes_deep() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.pid");
        std::fs::write(&path, "1".repeat(1_000_000)).unwrap();
        let e = read_pidfile(&path).unwrap_err().to_string();
        assert!(e.len() < 200, "the reason stays one short line: {e}");
        assert!(
            e.ends_with("holds 33 bytes that are not a process id"),
            "its length, never its content: {e}"
        );
        let e = read_pidfile(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        // A FIFO is refused without waiting for a writer that never comes.
        let fifo = dir.path().join("fifo.pid");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = read_pidfile(&fifo).unwrap_err().to_string();
        assert!(e.contains("is a FIFO, not a regular file"), "{e}");
    }

    #[test]
    fn a_kernel_thread_is_not_a_target() {
        // kthreadd is pid 2 wherever the host's pid namespace is seen.
        if is_kernel_thread(2) {
            assert_eq!(open(2).unwrap_err(), NotFound::KernelThread(2));
        }
        assert!(!is_kernel_thread(std::process::id() as i32));
    }

    #[test]
    fn finds_itself_by_pid() {
        let found = open(std::process::id() as i32).expect("this test process exists");
        assert!(found.start_ticks > 0);
        assert_eq!(open(i32::MAX).unwrap_err(), NotFound::NoPid(i32::MAX));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn no_pidfile_content_panics_and_every_refusal_is_short(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("x.pid");
                std::fs::write(&path, &bytes).unwrap();
                match read_pidfile(&path) {
                    Ok(pid) => prop_assert!(pid > 0),
                    Err(e) => prop_assert!(e.to_string().len() < 200 + path.as_os_str().len()),
                }
            }
        }
    }
}
