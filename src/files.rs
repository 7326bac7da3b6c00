//! Small files memprobe is pointed at — a secret, a pidfile — opened without ever blocking on
//! what the path turns out to be, and read up to a bound.
//!
//! A path an operator gives may name a FIFO, a device or a socket, by mistake or not: a plain
//! `open` of a FIFO waits for a writer forever, and `/dev/zero` never ends. So the path is
//! looked up first (`stat`, which follows the symlinks a mounted Secret is made of) and only a
//! regular file is opened, with `O_NONBLOCK` so that one swapped for a FIFO in between cannot
//! block the open either; the opened descriptor is checked again (`fstat`) before a byte is
//! read. A file system that hangs (a network mount) can still hold a `stat` or a `read`, so
//! code on the async runtime, where probes are answered, reads through [`off_thread`] and
//! never waits longer than it chooses to.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

/// The most a file holding one value (a URL, a token, a secret) is read of.
pub const MAX_VALUE_BYTES: u64 = 4096;

/// Why a file was not read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("cannot be read: {0} (try the path of the file that holds the value)")]
    Unreadable(String),
    #[error("is {0}, not a regular file (try the path of the file that holds the value)")]
    NotRegular(&'static str),
    #[error("is over 4 KiB: a file for one value is a few lines at most")]
    TooLarge,
    #[error("cannot be read as text: {0}")]
    NotText(String),
    #[error("is empty (write the value on its first line)")]
    Empty,
    /// The read did not end in time: the file system may hang.
    #[error("gave no answer within {}: its file system may hang", crate::units::Human(*.0))]
    Slow(Duration),
}

/// What a file is, when it is not a regular file.
fn not_regular(meta: &Metadata) -> Option<&'static str> {
    let kind = meta.file_type();
    if kind.is_file() {
        None
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_dir() {
        Some("a directory")
    } else {
        Some("not a plain file")
    }
}

/// What `path` names when that is not a regular file; `None` for a regular file, and for a
/// path that names nothing (yet).
pub fn not_a_regular_file(path: &Path) -> Option<&'static str> {
    std::fs::metadata(path).ok().as_ref().and_then(not_regular)
}

/// Opens `path` for reading if it is a regular file; never blocks on a FIFO or a device, and
/// never opens one (opening a device can act on it).
pub fn open_regular(path: &Path) -> Result<File, FileError> {
    let unreadable = |e: std::io::Error| FileError::Unreadable(e.to_string());
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if let Some(kind) = not_regular(&meta) {
        return Err(FileError::NotRegular(kind));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOCTTY).bits())
        .open(path)
        .map_err(unreadable)?;
    // The path may have been swapped between the stat and the open: judge what was opened.
    let meta = file.metadata().map_err(unreadable)?;
    if let Some(kind) = not_regular(&meta) {
        return Err(FileError::NotRegular(kind));
    }
    Ok(file)
}

/// The value a small file holds: text, trimmed, not empty, at most [`MAX_VALUE_BYTES`].
pub fn read_value(path: &Path) -> Result<String, FileError> {
    let file = open_regular(path)?;
    let mut text = String::new();
    file.take(MAX_VALUE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| FileError::NotText(e.to_string()))?;
    if text.len() as u64 > MAX_VALUE_BYTES {
        return Err(FileError::TooLarge);
    }
    let text = text.trim();
    if text.is_empty() {
        return Err(FileError::Empty);
    }
    Ok(text.to_string())
}

/// Runs `work` (a read) on a thread of its own and hands back its outcome: a read held by a
/// hung file system then holds that thread, never the caller's. A plain thread rather than
/// tokio's blocking pool, so that a read that never ends cannot hold the runtime's shutdown.
pub fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<tokio::sync::oneshot::Receiver<T>, FileError> {
    let (outcome, reading) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("memprobe-file".into())
        .spawn(move || {
            let _ = outcome.send(work());
        })
        .map_err(|e| FileError::Unreadable(format!("no thread to read it on: {e}")))?;
    Ok(reading)
}

/// [`read_value`], given up after `patience`: for reads at start, before any runtime.
pub fn read_value_within(path: &Path, patience: Duration) -> Result<String, FileError> {
    let path = path.to_owned();
    within(patience, move || read_value(&path))?
}

/// Runs `work` on a thread of its own and waits for it at most `patience`, with no runtime.
fn within<T: Send + 'static>(
    patience: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, FileError> {
    let (done, outcome) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("memprobe-file".into())
        .spawn(move || {
            let _ = done.send(work());
        })
        .map_err(|e| FileError::Unreadable(format!("no thread to read it on: {e}")))?;
    outcome.recv_timeout(patience).map_err(|e| match e {
        std::sync::mpsc::RecvTimeoutError::Timeout => FileError::Slow(patience),
        std::sync::mpsc::RecvTimeoutError::Disconnected => {
            FileError::Unreadable("the thread reading it ended without an answer".into())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("token");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // No writer ever comes: a blocking open would never return.
        assert_eq!(read_value(&fifo), Err(FileError::NotRegular("a FIFO")));
        assert!(
            read_value(&fifo)
                .unwrap_err()
                .to_string()
                .starts_with("is a FIFO, not a regular file (try "),
            "the message names what the path is and what would do"
        );
    }

    #[test]
    fn devices_directories_and_sockets_are_refused() {
        assert_eq!(
            read_value(Path::new("/dev/zero")),
            Err(FileError::NotRegular("a character device"))
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            read_value(dir.path()),
            Err(FileError::NotRegular("a directory"))
        );
        let socket = dir.path().join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        assert_eq!(read_value(&socket), Err(FileError::NotRegular("a socket")));
    }

    #[test]
    fn a_symlink_to_a_regular_file_is_read_as_a_mounted_secret_is() {
        // A Kubernetes Secret volume: token -> ..data/token -> ..2024_01_01/token.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("..2024")).unwrap();
        std::fs::write(dir.path().join("..2024/token"), "value\n").unwrap();
        std::os::unix::fs::symlink("..2024", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/token", dir.path().join("token")).unwrap();
        assert_eq!(read_value(&dir.path().join("token")), Ok("value".into()));
    }

    #[test]
    fn a_value_is_trimmed_bounded_and_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        std::fs::write(&path, "  s3cret \n").unwrap();
        assert_eq!(read_value(&path), Ok("s3cret".into()));
        std::fs::write(&path, "\n").unwrap();
        assert_eq!(read_value(&path), Err(FileError::Empty));
        std::fs::write(&path, "x".repeat(5000)).unwrap();
        assert_eq!(read_value(&path), Err(FileError::TooLarge));
        assert!(matches!(
            read_value(&dir.path().join("none")),
            Err(FileError::Unreadable(_))
        ));
    }

    #[test]
    fn a_read_that_does_not_end_is_given_up_after_its_patience() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("hung");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // std's own blocking open of a FIFO stands for a hung mount's read.
        let path = fifo.clone();
        let patience = Duration::from_millis(100);
        assert_eq!(
            within(patience, move || std::fs::read_to_string(&path).is_ok()),
            Err(FileError::Slow(patience))
        );
        // The way memprobe reads never gets that far with a FIFO.
        assert_eq!(
            read_value_within(&fifo, Duration::from_secs(10)),
            Err(FileError::NotRegular("a FIFO"))
        );
        // Release the held read: a writer opens the FIFO.
        std::fs::write(&fifo, "late").unwrap();
    }
}
