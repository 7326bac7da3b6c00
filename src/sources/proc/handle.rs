//! The one way memprobe signals the target: through a handle on the incarnation it judged,
//! never through a pid number that the kernel may have handed to another process since.
//!
//! The handle is a pidfd, taken when the incarnation is found and checked against it right
//! after: the process behind the kept `/proc/PID` descriptor must still be alive, with the
//! start time it was found with, once the pidfd is open. A process cannot come back to life,
//! so the pid was still its own when the pidfd was taken, and `pidfd_send_signal` then reaches
//! that process or, once it has exited, nobody. Where no pidfd can be had (a kernel before
//! 5.3, a seccomp filter that refuses the call), the handle is a `/proc/PID` descriptor of its
//! own and identity is proved again just before each `kill(2)`; see [`ProcessHandle::signal`].

use procfs::process::Process;
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal};

/// A handle on one incarnation of the target, for signals.
#[derive(Debug)]
pub struct ProcessHandle {
    pid: i32,
    how: How,
}

#[derive(Debug)]
enum How {
    Pidfd(OwnedFd),
    /// No pidfd here: why not, and a `/proc/PID` descriptor on the same incarnation.
    Checked {
        start_ticks: u64,
        dir: Process,
        why: Errno,
    },
}

/// The process was gone before a handle on it could be proved.
#[derive(Debug, PartialEq, Eq)]
pub struct Gone;

/// Why a signal was not sent.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignalError {
    #[error("pid {pid} (the incarnation judged) has exited: nothing signalled")]
    Exited { pid: i32 },
    #[error("{signal} to pid {pid}: {problem}")]
    Refused {
        signal: String,
        pid: i32,
        problem: String,
    },
}

impl ProcessHandle {
    /// Takes a handle on `process`, found as `pid` with `start_ticks`.
    pub fn take(pid: i32, start_ticks: u64, process: &Process) -> Result<Self, Gone> {
        let raw = Pid::from_raw(pid).ok_or(Gone)?;
        let how = match rustix::process::pidfd_open(raw, PidfdFlags::empty()) {
            Ok(fd) => How::Pidfd(fd),
            Err(Errno::SRCH) => return Err(Gone),
            // ENOSYS (before Linux 5.3), EPERM (a seccomp filter), EINVAL (a thread's id).
            Err(why) => How::Checked {
                start_ticks,
                dir: Process::new(pid).map_err(|_| Gone)?,
                why,
            },
        };
        // Opened after `process`: if that one is still alive as found, the pid was still its
        // own when `how` was opened, so `how` is the judged process too.
        match process.stat() {
            Ok(stat) if stat.starttime == start_ticks => Ok(ProcessHandle { pid, how }),
            _ => Err(Gone),
        }
    }

    /// Sends `signal` to the judged incarnation; what was done, for people. A process that has
    /// exited (a zombie included) gets nothing, and neither does whoever holds its pid now.
    pub fn signal(&self, signal: Signal, name: &str) -> Result<String, SignalError> {
        let pid = self.pid;
        let exited = SignalError::Exited { pid };
        let refused = |e: Errno| SignalError::Refused {
            signal: name.to_string(),
            pid,
            problem: e.to_string(),
        };
        match &self.how {
            How::Pidfd(fd) => {
                // A pidfd turns readable once its process has exited.
                let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
                if rustix::event::poll(&mut fds, 0).is_ok_and(|n| n > 0) {
                    return Err(exited);
                }
                match rustix::process::pidfd_send_signal(fd, signal) {
                    Ok(()) => Ok(format!("sent {name} to pid {pid}")),
                    Err(Errno::SRCH) => Err(exited),
                    Err(e) => Err(refused(e)),
                }
            }
            How::Checked {
                start_ticks,
                dir,
                why,
            } => {
                // Without a pidfd nothing makes the check and the kill one step. The check
                // reads through a descriptor that fails once this very process is reaped, so
                // the pid can only have been reused in the microseconds between that read and
                // kill(2), and only after a full wrap of the pid space: as tight as it gets.
                match dir.stat() {
                    Ok(stat)
                        if stat.starttime == *start_ticks
                            && stat.state != 'Z'
                            && stat.state != 'X' => {}
                    _ => return Err(exited),
                }
                let raw = Pid::from_raw(pid).ok_or(exited.clone())?;
                match rustix::process::kill_process(raw, signal) {
                    Ok(()) => Ok(format!(
                        "sent {name} to pid {pid} (no pidfd here: {why}; its start time was \
                         checked just before)"
                    )),
                    Err(Errno::SRCH) => Err(exited),
                    Err(e) => Err(refused(e)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    /// A `sleep` child and a handle on it, taken the way the finder takes one.
    fn sleeper() -> (Child, Process, u64) {
        let child = Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep");
        let process = Process::new(child.id() as i32).expect("its /proc entry");
        let start_ticks = process.stat().expect("its stat").starttime;
        (child, process, start_ticks)
    }

    fn checked(pid: i32, start_ticks: u64) -> ProcessHandle {
        ProcessHandle {
            pid,
            how: How::Checked {
                start_ticks,
                dir: Process::new(pid).expect("its /proc entry"),
                why: Errno::NOSYS,
            },
        }
    }

    fn both(child: &Child, process: &Process, start_ticks: u64) -> [ProcessHandle; 2] {
        let pid = child.id() as i32;
        let pidfd = ProcessHandle::take(pid, start_ticks, process).expect("a handle");
        assert!(
            matches!(pidfd.how, How::Pidfd(_)),
            "this kernel has pidfds: {pidfd:?}"
        );
        [pidfd, checked(pid, start_ticks)]
    }

    #[test]
    fn a_live_process_is_signalled_through_its_handle() {
        let (mut child, process, start_ticks) = sleeper();
        let pid = child.id() as i32;
        for handle in both(&child, &process, start_ticks) {
            let sent = handle.signal(Signal::Cont, "SIGCONT").expect("sent");
            assert!(
                sent.starts_with(&format!("sent SIGCONT to pid {pid}")),
                "{sent}"
            );
        }
        let handle = ProcessHandle::take(pid, start_ticks, &process).unwrap();
        handle.signal(Signal::Term, "SIGTERM").expect("sent");
        assert!(!child.wait().unwrap().success(), "the signal reached it");
    }

    #[test]
    fn a_process_that_exited_is_never_signalled_zombie_or_reaped() {
        let (mut child, process, start_ticks) = sleeper();
        let pid = child.id() as i32;
        let handles = both(&child, &process, start_ticks);
        child.kill().unwrap();
        // Not reaped yet: a zombie, whose pid is still its own, but which is not there to end.
        while process.stat().is_ok_and(|s| s.state != 'Z') {
            std::thread::yield_now();
        }
        for handle in &handles {
            assert_eq!(
                handle.signal(Signal::Term, "SIGTERM"),
                Err(SignalError::Exited { pid }),
                "a zombie: {handle:?}"
            );
        }
        child.wait().unwrap();
        for handle in &handles {
            assert_eq!(
                handle.signal(Signal::Term, "SIGTERM"),
                Err(SignalError::Exited { pid }),
                "reaped, its pid free for anyone: {handle:?}"
            );
        }
        assert_eq!(
            ProcessHandle::take(pid, start_ticks, &process).unwrap_err(),
            Gone,
            "no handle is taken on a process gone since it was found"
        );
    }

    #[test]
    fn a_handle_is_refused_when_the_start_time_is_not_the_one_found() {
        let (mut child, process, start_ticks) = sleeper();
        let pid = child.id() as i32;
        assert_eq!(
            ProcessHandle::take(pid, start_ticks + 1, &process).unwrap_err(),
            Gone
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
