//! The last test target cargo runs: one summary of the checks that were skipped in this
//! `cargo test`, and why (see harness/skips.rs). Not a test of its own: it always passes.

// record() is the harness's half: the tests call it.
#[allow(dead_code)]
#[path = "harness/skips.rs"]
mod skips;

fn main() {
    // `cargo test -- --list` asks every target for its tests: this one has none.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Some(file) = skips::record_file() else {
        return;
    };
    let recorded = std::fs::read_to_string(&file).unwrap_or_default();
    let _ = std::fs::remove_file(&file);
    if let Some(dir) = file.parent() {
        skips::remove_stale(dir);
    }
    print!("\n{}", skips::summary(&recorded));
}
