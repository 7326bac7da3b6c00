//! The sidecar's text layout (issue 33). The kernel maps a binary's code in 64 KiB windows
//! around each page it faults in, so code the sidecar never runs, interleaved with code it
//! does, is resident all the same. `link/hot-text.ld` (applied by `build.rs` to the static
//! `memprobe`) puts the functions the sidecar runs in `.text.hot`, ahead of the rest.
//!
//! Which functions those are is measured, not guessed: [`scenarios`] runs the shipped binary
//! through what a sidecar does (probes, scrapes, the page, the status, a drain; KMS through
//! the gate with a client's pipeline). The writer (ignored, run by `bash benches/run
//! hot-text`) runs them under gdb, with a one-time breakpoint at each function the linker's
//! map names; the check runs them natively and reads which code pages are resident.

#![allow(clippy::disallowed_types)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::fake_api::{FakeApi, Hostile};
use crate::harness::fake_kms::{Client, FakeKms};
use crate::harness::{Memprobe, Workload, agent, free_port, request, shipped, tool};

/// The kernel's fault-around: a fault maps the pages of the aligned 64 KiB window around it.
const WINDOW: u64 = 64 * 1024;
const SLOW: Duration = Duration::from_secs(120);
/// Every scenario's pace: a sample every 200 ms, a drain 1 s over 100 MiB.
const PACE: [&str; 6] = [
    "--interval",
    "200ms",
    "--threshold",
    "100MiB",
    "--sustain",
    "1s",
];

/// How the scenarios run memprobe: natively, or under gdb with a one-time breakpoint at the
/// start of every function the linker placed (`functions`, one file offset a line), each hit
/// written to `<dir>/<run>.hits`. Natively, not under an emulator: the code run has to be the
/// code the CPU and kernel choose (valgrind 3.19 knows no `pidfd_open`, so memprobe took
/// other paths under it).
#[derive(Clone, Copy)]
enum Under<'a> {
    Native,
    Gdb {
        gdb: &'a Path,
        dir: &'a Path,
        functions: &'a Path,
    },
    /// Natively under `perf record`, every page fault noted with its address into
    /// `<dir>/<run>.perf`: the code a fault brought in first, where gdb's breakpoints changed
    /// the timing of what ran (a child's exit, a signal).
    Perf {
        perf: &'a Path,
        dir: &'a Path,
    },
}

/// gdb's part: start the program stopped, find where it is mapped, break once at each
/// function, and note every hit until the program ends.
const BREAK_ONCE: &str = r#"
import gdb, os, re
functions, hits = os.environ["HOT_FUNCTIONS"], os.environ["HOT_HITS"]
gdb.execute("set pagination off")
gdb.execute("set confirm off")
gdb.execute("set breakpoint pending off")
gdb.execute("set breakpoint always-inserted on")
gdb.execute("starti", to_string=True)
gdb.execute("handle all nostop noprint pass", to_string=True)
exe = os.path.realpath(gdb.current_progspace().filename)
base = None
for line in gdb.execute("info proc mappings", to_string=True).splitlines():
    fields = line.split()
    if len(fields) >= 5 and fields[-1] == exe and re.fullmatch(r"0x0+", fields[3]):
        base = int(fields[0], 16)
        break
if base is None:
    raise gdb.GdbError("no mapping of " + exe)
for offset in open(functions).read().split():
    gdb.Breakpoint("*%#x" % (base + int(offset, 16)), internal=True, temporary=True)
out = open(hits, "a")
while gdb.selected_inferior().pid:
    try:
        gdb.execute("continue", to_string=True)
    except gdb.error:
        break
    if not gdb.selected_inferior().pid:
        break
    out.write("%#x\n" % (int(gdb.parse_and_eval("$pc")) - base))
    out.flush()
"#;

impl Under<'_> {
    /// The command that starts `binary` so.
    fn command(self, binary: &Path, name: &str) -> Command {
        match self {
            Under::Native => Command::new(binary),
            Under::Gdb {
                gdb,
                dir,
                functions,
            } => {
                let script = dir.join("break_once.py");
                std::fs::write(&script, BREAK_ONCE).expect("write gdb's script");
                let mut command = Command::new(gdb);
                command
                    .args(["--batch", "-nx", "-q", "-x"])
                    .arg(&script)
                    .arg("--args")
                    .arg(binary)
                    .env("HOT_FUNCTIONS", functions)
                    .env("HOT_HITS", dir.join(format!("{name}.hits")));
                command
            }
            Under::Perf { perf, dir } => {
                let mut command = Command::new(perf);
                command
                    .args(["record", "-q", "-e", "page-faults", "-c", "1", "-d", "-o"])
                    .arg(dir.join(format!("{name}.perf")))
                    .arg("--")
                    .arg(binary);
                command
            }
        }
    }

    /// What the run left, read before it ends; under gdb, the program is ended here (gdb
    /// then ends too, its hits written).
    fn left(self, pid: u32, binary: &Path) -> Ran {
        match self {
            Under::Native => left_by(pid, binary),
            Under::Gdb { .. } | Under::Perf { .. } => {
                let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                    .unwrap_or_default();
                let signal = if matches!(self, Under::Perf { .. }) {
                    "-TERM"
                } else {
                    "-KILL"
                };
                for child in children.split_whitespace() {
                    let _ = Command::new("kill").args([signal, child]).status();
                }
                // gdb sees its program killed, and ends.
                let start = Instant::now();
                while start.elapsed() < SLOW
                    && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .is_ok_and(|stat| !stat.contains(") Z "))
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ran {
                    resident: Vec::new(),
                }
            }
        }
    }
}

/// What a run leaves, read just before memprobe ends.
struct Ran {
    /// The file addresses of its code pages that were resident at the end.
    resident: Vec<u64>,
}

/// The binary's code mapping in `pid`: its start, end and file offset.
fn code_mapping(pid: u32, binary: &Path) -> (u64, u64, u64) {
    let binary = binary.canonicalize().expect("the binary's path");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("its maps");
    maps.lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (range, perms, offset, path) = (
                fields.first()?,
                fields.get(1)?,
                fields.get(2)?,
                fields.get(5)?,
            );
            if Path::new(path) != binary || !perms.contains('x') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some((
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
                u64::from_str_radix(offset, 16).ok()?,
            ))
        })
        .unwrap_or_else(|| panic!("{} has no code mapped in {pid}:\n{maps}", binary.display()))
}

/// The run's base and resident code pages (`/proc/PID/pagemap`, bit 63: present).
fn left_by(pid: u32, binary: &Path) -> Ran {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let (start, end, offset) = code_mapping(pid, binary);
    // The code segment's address in the file equals its offset (as the linker lays it out).
    let base = start - offset;
    let mut pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap")).expect("its pagemap");
    pagemap
        .seek(SeekFrom::Start(start / 4096 * 8))
        .expect("seek the pagemap");
    let mut entries = vec![0u8; ((end - start) / 4096 * 8) as usize];
    pagemap.read_exact(&mut entries).expect("read the pagemap");
    let resident = entries
        .chunks_exact(8)
        .enumerate()
        .filter(|(_, entry)| entry[7] & 0x80 != 0)
        .map(|(page, _)| start - base + page as u64 * 4096)
        .collect();
    Ran { resident }
}

/// memprobe with its default text logs on a port of its own, answering `/livez`.
struct Plain {
    child: Child,
    url: String,
    agent: ureq::Agent,
}

impl Plain {
    fn start(mut command: Command, args: &[&str]) -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        let child = command
            .args(args)
            .args(["--listen", &listen])
            .env_remove("MEMPROBE_STRICT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start memprobe");
        let plain = Plain {
            child,
            url: format!("http://{listen}"),
            agent: agent(),
        };
        plain.wait("live", |_| true);
        plain
    }

    fn get(&self, path: &str) -> Option<String> {
        request(&self.agent, "GET", &format!("{}{path}", self.url))
            .ok()
            .map(|reply| reply.body)
    }

    /// Waits for `/status` to satisfy `cond`.
    fn wait(&self, what: &str, cond: impl Fn(&Value) -> bool) {
        let start = Instant::now();
        while start.elapsed() < SLOW {
            let status = self
                .get("/status")
                .and_then(|body| serde_json::from_str::<Value>(&body).ok());
            if status.is_some_and(|s| cond(&s)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("memprobe at {} never {what}", self.url);
    }

    fn end(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Every process under `pid` (its children's children too), by `/proc/PID/task/*/children`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut next = vec![pid];
    while let Some(parent) = next.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
            {
                found.push(child);
                next.push(child);
            }
        }
    }
    found
}

/// A process's name (`/proc/PID/comm`).
fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_string())
}

/// Probes as a balancer's health checks come under load: 50 keep-alive connections at once,
/// each asking 20 times, then 50 that ask and hang up before the answer, half of them with a
/// reset.
fn load(addr: &str) {
    use std::io::{Read as _, Write as _};
    let ask = b"GET /ready HTTP/1.1\r\nHost: memprobe\r\n\r\n";
    std::thread::scope(|threads| {
        for _ in 0..50 {
            threads.spawn(|| {
                let Ok(mut tcp) = std::net::TcpStream::connect(addr) else {
                    return;
                };
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
                let mut answer = [0u8; 4096];
                for _ in 0..20 {
                    if tcp.write_all(ask).is_err() || tcp.read(&mut answer).unwrap_or(0) == 0 {
                        return;
                    }
                }
            });
        }
    });
    for n in 0..50 {
        if let Ok(mut tcp) = std::net::TcpStream::connect(addr) {
            let _ = tcp.write_all(ask);
            if n % 2 == 0 {
                let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
            }
        }
    }
}

/// What a sidecar does, the same natively or under gdb: one watching a process by pid, with
/// its default text logs, probed under load, scraped, drained; one watching KMS (JSON logs),
/// with a client's pipeline through the gate, drained too; one with the fleet on, holding the
/// slot. What each run leaves is read at its end.
fn scenarios(under: Under<'_>, binary: &Path) -> Vec<Ran> {
    let mut ran = Vec::new();

    // A static target, as in benches/run; the KMS run's is dynamic, as KMS is.
    let mut target = Workload::start_binary(binary, None, &[]);
    let pid = target.pid.to_string();
    let probe = Plain::start(
        under.command(binary, "probes"),
        &[&["--pid", &pid, "--kms-url", "none"][..], &PACE].concat(),
    );
    for _ in 0..20 {
        for path in ["/ready", "/healthz", "/livez", "/metrics", "/status", "/"] {
            probe.get(path);
        }
    }
    load(probe.url.trim_start_matches("http://"));
    target.send("alloc 150MiB");
    probe.wait("draining", |s| s["state"] == "draining");
    for path in ["/ready", "/metrics", "/status", "/"] {
        probe.get(path);
    }
    ran.push(under.left(probe.child.id(), binary));
    probe.end();
    target.kill();

    let kms = FakeKms::start();
    let mut target = Workload::start(None);
    let (url, pid) = (kms.url(), target.pid.to_string());
    let gate = format!("127.0.0.1:{}", free_port());
    let mut probe = Memprobe::start_command(
        under.command(binary, "kms"),
        &[
            &["--pid", &pid, "--kms-url", &url, "--kms-gate", &gate][..],
            &PACE,
        ]
        .concat(),
        &[],
    );
    probe.wait_for_long("connected to KMS", SLOW, |s| s["kms"]["connected"] == true);
    let mut client = Client::connect_to(&format!("ws://{gate}/kurento"));
    let create = r#"{"id":1,"method":"create","params":{"type":"MediaPipeline","constructorParams":{},"properties":{}},"jsonrpc":"2.0"}"#;
    let created = client.call_json(create);
    let pipeline = created["result"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    probe.wait_for_long("the pipeline counted", SLOW, |s| s["sessions"] == 1);
    for path in ["/ready", "/metrics", "/status", "/"] {
        probe.get(path);
    }
    target.send("alloc 150MiB");
    probe.wait_for_long("draining", SLOW, |s| s["state"] == "draining");
    // Refused by the gate now: the KMS is draining.
    client.send(&create.replace(r#""id":1"#, r#""id":2"#));
    let _ = client.text();
    client.send(&format!(
        r#"{{"id":3,"method":"release","params":{{"object":"{pipeline}"}},"jsonrpc":"2.0"}}"#
    ));
    for path in ["/ready", "/metrics", "/status", "/"] {
        probe.get(path);
    }
    ran.push(under.left(probe.pid(), binary));
    probe.terminate();
    target.kill();

    // The fleet on, against the fake API server: the start check (memprobe-fleet stopped once
    // it passed, nothing being wanted), then a drain that holds the slot (a call goes on) and
    // tells its Events, memprobe-fleet started again beside it.
    let api = FakeApi::start(Hostile::default());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let kubeconfig = api.kubeconfig(dir.path());
    let mut target = Workload::start(None);
    let pid = target.pid.to_string();
    let sessions = dir.path().join("sessions");
    std::fs::write(&sessions, "1\n").expect("write the sessions file");
    let args = [
        &[
            "--pid",
            &pid,
            "--kms-url",
            "none",
            "--sessions-file",
            sessions.to_str().expect("a UTF-8 path"),
            "--memory-limit",
            "1GiB",
            "--fleet",
            "kubernetes",
            "--fleet-name",
            "kms",
            "--pod-name",
            "kms-0",
            "--pod-namespace",
            "media",
        ][..],
        &PACE,
    ]
    .concat();
    let mut probe = Memprobe::start_command(
        under.command(binary, "fleet"),
        &args,
        &[("KUBECONFIG", kubeconfig.to_str().expect("a UTF-8 path"))],
    );
    probe.wait_for_long("the start check passed", SLOW, |s| {
        s["fleet"]["check"] == "passed"
    });
    // memprobe-fleet is stopped once the check passed (nothing is wanted yet); its exit, the
    // signal and the reaping are code memprobe runs too, whenever it happens.
    let start = Instant::now();
    while descendants(probe.pid())
        .iter()
        .any(|pid| comm(*pid).is_some_and(|c| c == "memprobe-fleet"))
    {
        assert!(
            start.elapsed() < SLOW,
            "memprobe-fleet never stopped after the check"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    target.send("alloc 150MiB");
    probe.wait_for_long("draining with the slot", SLOW, |s| {
        s["state"] == "draining" && !s["fleet"]["holding"].is_null()
    });
    probe.wait_for_long("its Events sent", SLOW, |s| {
        s["fleet"]["events_sent"].as_u64() >= Some(2)
    });
    for path in ["/ready", "/metrics", "/status", "/"] {
        probe.get(path);
    }
    ran.push(under.left(probe.pid(), binary));
    probe.terminate();
    target.kill();
    ran
}

/// A section's address range, from `readelf`'s section headers (kept by `strip`).
fn section(readelf: &Path, binary: &Path, name: &str) -> Option<(u64, u64)> {
    let out = Command::new(readelf)
        .args(["-SW"])
        .arg(binary)
        .output()
        .expect("run readelf");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().find_map(|line| {
        let after = line.split_once(']')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        (fields.first()? == &name).then_some(())?;
        let address = u64::from_str_radix(fields.get(2)?, 16).ok()?;
        let size = u64::from_str_radix(fields.get(4)?, 16).ok()?;
        Some((address, address + size))
    })
}

#[test]
fn the_shipped_sidecar_keeps_only_its_hot_text_resident() {
    let Some(binary) = shipped() else { return };
    let Some(readelf) = tool("readelf") else {
        return;
    };
    let (hot_start, hot_end) = section(&readelf, &binary, ".text.hot").unwrap_or_else(|| {
        panic!(
            "{} has no .text.hot: build.rs did not link it with link/hot-text.ld",
            binary.display()
        )
    });
    let runs = scenarios(Under::Native, &binary);
    // The windows the hot text spans, and those resident beyond them.
    let hot_windows = hot_start / WINDOW..=(hot_end - 1) / WINDOW;
    let mut beyond = BTreeMap::<u64, usize>::new();
    let mut resident = 0;
    for ran in &runs {
        resident = resident.max(ran.resident.len() * 4);
        for page in &ran.resident {
            if !hot_windows.contains(&(page / WINDOW)) && *page >= hot_start {
                *beyond.entry(page / WINDOW).or_default() += 1;
            }
        }
    }
    eprintln!(
        "hot text {} KiB in {} windows; code resident at most {resident} KiB; windows \
         resident beyond the hot text (window: pages): {beyond:?}",
        (hot_end - hot_start) / 1024,
        hot_windows.clone().count(),
    );
    // A few windows for what the layout missed (a function added since it was written, a
    // path only a loaded machine takes); an unordered layout has 15 or more beyond it.
    assert!(
        beyond.len() <= 4,
        "the sidecar's code is resident in {} windows of 64 KiB beyond .text.hot ({beyond:?}): \
         link/hot-text.ld is out of date; regenerate it with `bash benches/run hot-text`",
        beyond.len()
    );
}

/// Writes `link/hot-text.ld` from the shipped binary and the linker's map beside it (build.rs
/// asks the linker for one): `bash benches/run hot-text` builds both and runs this.
#[test]
#[ignore = "writes link/hot-text.ld: run by bash benches/run hot-text"]
fn write_the_hot_text_layout() {
    let binary = PathBuf::from(crate::harness::SHIPPED);
    let map = binary.with_file_name("memprobe.map");
    let map = std::fs::read_to_string(&map).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: build the static binary first (cargo build --release --target \
             x86_64-unknown-linux-musl), whose build.rs asks the linker for its map",
            map.display()
        )
    });
    let functions = input_sections(&map);
    assert!(
        functions.len() > 1000,
        "the linker's map lists {} functions' sections",
        functions.len()
    );
    let gdb = tool("gdb").expect("gdb");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let starts = dir.path().join("functions");
    let listed: String = functions.keys().map(|at| format!("{at:#x}\n")).collect();
    std::fs::write(&starts, listed).expect("write the functions' starts");
    let under = Under::Gdb {
        gdb: &gdb,
        dir: dir.path(),
        functions: &starts,
    };
    scenarios(under, &binary);
    let mut hot = BTreeSet::new();
    for run in ["probes", "kms", "fleet"] {
        let hits = std::fs::read_to_string(dir.path().join(format!("{run}.hits")))
            .unwrap_or_else(|e| panic!("gdb's hits of the {run} run: {e}"));
        for at in hits
            .lines()
            .filter_map(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).ok())
        {
            if let Some((_, name)) = functions.get(&at) {
                hot.insert(name.clone());
            }
        }
        eprintln!("{run}: {} functions run so far", hot.len());
    }
    // Natively, the first code each fault brought in: what ran only at native speed.
    if let Some(perf) = tool("perf") {
        let under = Under::Perf {
            perf: &perf,
            dir: dir.path(),
        };
        scenarios(under, &binary);
        for run in ["probes", "kms", "fleet"] {
            let data = dir.path().join(format!("{run}.perf"));
            for at in faulted_code(&perf, &data, &binary) {
                if let Some((address, (size, name))) = functions.range(..=at).next_back()
                    && at < address + size
                {
                    hot.insert(name.clone());
                }
            }
            eprintln!("{run}, natively: {} functions run so far", hot.len());
        }
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/hot-text.ld");
    std::fs::write(&path, hot_text_script(&hot)).expect("write link/hot-text.ld");
    eprintln!("{}: {} functions", path.display(), hot.len());
}

/// The file addresses of the instructions whose fetch faulted, in `binary`'s processes of a
/// `perf record -e page-faults -d` run (a fetch: the fault's address is the instruction's).
fn faulted_code(perf: &Path, data: &Path, binary: &Path) -> BTreeSet<u64> {
    let binary = binary.canonicalize().expect("the binary's path");
    let out = Command::new(perf)
        .args(["script", "--show-mmap-events", "-F", "pid,ip,addr", "-i"])
        .arg(data)
        .output()
        .expect("run perf script");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut bases = BTreeMap::new();
    let mut faulted = BTreeSet::new();
    for line in text.lines() {
        if line.contains("PERF_RECORD_MMAP2") {
            // `PID/TID: [0xSTART(0xLEN) @ 0xOFFSET ...]: r--p PATH`, the mapping at offset 0.
            let pid = line
                .split_whitespace()
                .find_map(|w| w.split_once('/').and_then(|(p, _)| p.parse::<u32>().ok()));
            let start = line
                .split_once('[')
                .and_then(|(_, rest)| rest.split_once('('))
                .and_then(|(start, _)| {
                    u64::from_str_radix(start.trim_start_matches("0x"), 16).ok()
                });
            let at_zero = line.contains(" @ 0 ") || line.contains(" @ 0x0 ");
            if let (Some(pid), Some(start), true) = (pid, start, at_zero)
                && line.ends_with(binary.to_str().unwrap_or_default())
            {
                bases.insert(pid, start);
            }
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let hex = |i: usize| fields.get(i).and_then(|f| u64::from_str_radix(f, 16).ok());
        let (Some(pid), Some(address), Some(ip)) = (
            fields.first().and_then(|p| p.parse::<u32>().ok()),
            hex(1),
            hex(2),
        ) else {
            continue;
        };
        if let Some(base) = bases.get(&pid)
            && address == ip
            && let Some(at) = ip.checked_sub(*base)
        {
            faulted.insert(at);
        }
    }
    faulted
}

/// The code sections a GNU ld map places, by address: `.text.NAME`, its address and size,
/// on one line or, for a long name, on the next.
fn input_sections(map: &str) -> BTreeMap<u64, (u64, String)> {
    let mut out = BTreeMap::new();
    let mut lines = map.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .strip_prefix(" .text.")
            .and_then(|rest| rest.split_whitespace().next())
        else {
            continue;
        };
        let mut fields: Vec<&str> = line.split_whitespace().skip(1).collect();
        if fields.is_empty() {
            fields = lines
                .peek()
                .map(|next| next.split_whitespace().collect())
                .unwrap_or_default();
        }
        let hex = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.strip_prefix("0x"))
                .and_then(|f| u64::from_str_radix(f, 16).ok())
        };
        if let (Some(address), Some(size)) = (hex(0), hex(1))
            && address > 0
            && size > 0
        {
            out.insert(address, (size, name.to_string()));
        }
    }
    out
}

/// The linker script: `.text.hot` before `.text`, holding first each function by its exact
/// name, then musl's own code, then, by a pattern without the hashes that change with a
/// dependency, the compiler or the target, any function of the same path (the arm64 build's,
/// or one whose hash moved): those come last, so that where the exact names match, the code
/// run is dense at the start.
fn hot_text_script(hot: &BTreeSet<String>) -> String {
    let mut exact = Vec::new();
    let mut patterns = BTreeSet::new();
    for name in hot {
        exact.push(format!("    *(.text.{name})"));
        if let Some(pattern) = without_hashes(name) {
            patterns.insert(format!("    *(.text.{pattern})"));
        }
    }
    let mut script = String::from(
        "/* Generated by `bash benches/run hot-text` (tests/cases/footprint.rs): the functions\n   \
         the sidecar runs, ahead of the rest of its text. Applied by build.rs to the static\n   \
         memprobe; checked by the footprint test. */\nSECTIONS\n{\n  .text.hot :\n  {\n",
    );
    for line in exact {
        script.push_str(&line);
        script.push('\n');
    }
    // musl's code (some of it assembly, in plain `.text`), and the start-up files'.
    script.push_str("    *libc.a:*(.text .text.*)\n");
    script.push_str("    *crt1.o(.text .text.*)\n    *crti.o(.text .text.*)\n");
    for line in patterns {
        script.push_str(&line);
        script.push('\n');
    }
    script.push_str("  }\n}\nINSERT BEFORE .text;\n");
    script
}

/// A Rust symbol with its hashes as wildcards: legacy `…17h<16 hex>E` ends in `17h*`, and a
/// v0 name's crate roots `Cs<hash>_` become `Cs*_`. `None` for a name with no hash (C).
fn without_hashes(name: &str) -> Option<String> {
    if let Some(stem) = name.strip_suffix('E')
        && let Some((stem, hash)) = stem.rsplit_once("17h")
        && hash.len() == 16
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Some(format!("{stem}17h*"));
    }
    if name.starts_with("_R") && name.contains("Cs") {
        let mut out = String::new();
        let mut rest = name;
        while let Some(at) = rest.find("Cs") {
            out.push_str(&rest[..at + 2]);
            let after = &rest[at + 2..];
            match after.find('_') {
                Some(end) if after[..end].bytes().all(|b| b.is_ascii_alphanumeric()) => {
                    out.push_str("*_");
                    rest = &after[end + 1..];
                }
                _ => rest = after,
            }
        }
        out.push_str(rest);
        return Some(out);
    }
    None
}

#[test]
fn a_symbol_without_its_hashes() {
    assert_eq!(
        without_hashes("_ZN8memprobe4main17h0123456789abcdefE").as_deref(),
        Some("_ZN8memprobe4main17h*")
    );
    assert_eq!(
        without_hashes("_RNvCsaz6eC2DG7lh_3std4exit").as_deref(),
        Some("_RNvCs*_3std4exit")
    );
    assert_eq!(without_hashes("memcpy"), None);
}
