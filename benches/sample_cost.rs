//! What one sample costs, and how long memprobe takes to answer its first probe.
//!
//!     cargo bench --bench sample_cost
//!
//! A timing loop over the library's own sampling code against real `memprobe workload`
//! targets of several sizes, with and without descendants; then the release binary started
//! again and again until `/livez` answers. Prints markdown tables (medians, in µs or ms).

// A benchmark measures wall time on the real clock.
#![allow(clippy::disallowed_types)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use memprobe::sources::proc::sample::{self, MemoryKind, Sampler};
use procfs::process::Process;

const EXE: &str = env!("CARGO_BIN_EXE_memprobe");

struct Target {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<std::process::ChildStdout>,
}

impl Target {
    fn start() -> Self {
        let mut child = Command::new(EXE)
            .args(["workload", "--waves", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start workload");
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        Target { child, stdin, out }
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert!(line.starts_with("ok"), "{line}");
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Median time of one call, over `runs` calls.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn main() {
    println!("### Cost of one sample (median µs per sample, this machine)\n");
    println!(
        "| target | statm, opened each time | status, opened each time | rss / anon: status kept open (memprobe) | pss: + smaps_rollup |"
    );
    println!("|---|---|---|---|---|");
    for size in ["0", "200MiB", "1GiB"] {
        let mut target = Target::start();
        if size != "0" {
            target.send(&format!("alloc {size}"));
        }
        let process = Process::new(target.child.id() as i32).unwrap();
        let statm = median(2000, || {
            let _ = process.statm().unwrap();
        });
        let reopened = median(2000, || {
            sample::sample_process(&process, MemoryKind::Rss).unwrap();
        });
        let mut sampler = Sampler::new(Process::new(target.child.id() as i32).unwrap()).unwrap();
        let rss = median(2000, || {
            sampler.sample(MemoryKind::Rss, false).unwrap();
        });
        let pss = median(300, || {
            sampler.sample(MemoryKind::Pss, false).unwrap();
        });
        let label = if size == "0" {
            "idle workload (~2 MiB)".to_string()
        } else {
            format!("+{size} touched")
        };
        println!(
            "| {label} | {} | {} | {} | {} |",
            us(statm),
            us(reopened),
            us(rss),
            us(pss)
        );
    }

    println!("\n### With --include-children (median µs per sample, rss)\n");
    println!("| descendants | without --include-children | with --include-children |");
    println!("|---|---|---|");
    for children in [0, 4, 16] {
        let mut target = Target::start();
        for _ in 0..children {
            target.send("spawn 1MiB");
        }
        let mut sampler = Sampler::new(Process::new(target.child.id() as i32).unwrap()).unwrap();
        let alone = median(500, || {
            sampler.sample(MemoryKind::Rss, false).unwrap();
        });
        let with = median(200, || {
            let s = sampler.sample(MemoryKind::Rss, true).unwrap();
            assert_eq!(s.processes, children + 1);
        });
        println!("| {children} | {} | {} |", us(alone), us(with));
    }

    println!("\n### Start to first answer on /livez (median of 20 starts)\n");
    let startup = median(20, || {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(EXE)
            .args([
                "--pid",
                &std::process::id().to_string(),
                "--kms-url",
                "none",
            ])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut reply = String::new();
                let _ = s.read_to_string(&mut reply);
                if reply.starts_with("HTTP/1.1 200") {
                    break;
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let _ = child.kill();
        let _ = child.wait();
    });
    println!("{:.1} ms", startup.as_secs_f64() * 1e3);
}
