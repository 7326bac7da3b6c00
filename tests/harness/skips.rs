//! What was skipped, told once at the end of `cargo test`. libtest shows a skipped test as
//! `ok` and has no hook after its last test, so each skip appends a line to a file under
//! `target/` named for the cargo process that runs the test binaries, and the `skipped` test
//! target (`harness = false`, the last one cargo runs) prints a count and the reasons, then
//! removes the file. A run of one test binary by hand leaves a file no summary reads; the next
//! summary removes it once its process is gone.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Where this run's skips go: `target/<profile>/skipped/<pid of the cargo running us>`.
pub fn record_file() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // The test binaries live in target/<profile>/deps/.
    let profile_dir = exe.parent()?.parent()?;
    Some(
        profile_dir
            .join("skipped")
            .join(std::os::unix::process::parent_id().to_string()),
    )
}

/// Appends one skip, on one line, to `file`.
pub fn record(file: &Path, test: &str, why: &str) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let line = format!("{test}: {}\n", why.replace('\n', " "));
    // One write of one short line with O_APPEND: tests that skip at once do not interleave.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?
        .write_all(line.as_bytes())
}

/// The summary a person reads at the end of `cargo test`, from the recorded lines: how many
/// tests skipped something, then each reason once, with the tests it held back.
pub fn summary(recorded: &str) -> String {
    let mut by_reason: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> =
        Default::default();
    for line in recorded.lines().filter(|l| !l.trim().is_empty()) {
        let (test, why) = line.split_once(": ").unwrap_or(("a test", line));
        by_reason.entry(why).or_default().insert(test);
    }
    if by_reason.is_empty() {
        return "SKIPPED: nothing, every test ran in full\n".into();
    }
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let count = by_reason
        .values()
        .flatten()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let mut text = format!(
        "SKIPPED {count} test{} in whole or in part, shown as ok above \
         (`bash .ci/run` installs what they need; MEMPROBE_STRICT=1 makes them fail):\n",
        plural(count)
    );
    let mut reasons: Vec<_> = by_reason.into_iter().collect();
    reasons.sort_by_key(|(why, tests)| (std::cmp::Reverse(tests.len()), *why));
    for (why, tests) in reasons {
        text.push_str(&format!(
            "  {} test{}: {why}\n",
            tests.len(),
            plural(tests.len())
        ));
        for test in tests {
            text.push_str(&format!("      {test}\n"));
        }
    }
    text
}

/// Removes the files of runs whose cargo has gone (a test binary run by hand, a run that
/// failed before the summary), so they never show in a later summary.
pub fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let gone = name
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_none_or(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        if gone {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
