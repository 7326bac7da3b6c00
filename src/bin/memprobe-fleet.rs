//! `memprobe-fleet`: the Kubernetes client of memprobe's fleet and Events, in a process of its
//! own so that the sidecar's carries none. memprobe starts it (next to its own executable)
//! and talks to it over its stdin and stdout; it is not run by hand.

fn main() -> std::process::ExitCode {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("memprobe-fleet: internal error, stopping: {info}");
        std::process::exit(101);
    }));
    memprobe::fleet_client()
}
