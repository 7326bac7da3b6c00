//! A small harness: the real `memprobe` binary on a free port, watching a real
//! `memprobe workload` child; everything is killed on drop.
//!
//! The machines these tests run on are small and noisy, so nothing here sleeps and then
//! asserts: every wait is for a condition, with a generous deadline.

#![allow(dead_code)]
// Real processes run on the real clock: these waits are deadlines, not test logic.
#![allow(clippy::disallowed_types)]

pub mod cgroup;
pub mod count_server;
pub mod fake_api;
pub mod fake_kms;
pub mod janus;
pub mod kube;
pub mod kurento_client;
pub mod podman;
pub mod skips;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const MEMPROBE: &str = env!("CARGO_BIN_EXE_memprobe");
/// The fleet's Kubernetes client, which memprobe finds next to its own executable.
pub const MEMPROBE_FLEET: &str = env!("CARGO_BIN_EXE_memprobe-fleet");
/// The static binary the image ships, as `.ci/run` builds it before the tests.
pub const SHIPPED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/x86_64-unknown-linux-musl/release/memprobe"
);

/// The static arm64 binary, as `.ci/run` cross-builds it before the tests.
pub const SHIPPED_ARM64: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/aarch64-unknown-linux-musl/release/memprobe"
);

/// The shipped static binary, or `None` (with a printed reason) when it has not been built
/// and strict mode is off.
pub fn shipped() -> Option<PathBuf> {
    let path = PathBuf::from(SHIPPED);
    // Both executables, built together: memprobe starts memprobe-fleet from beside itself.
    if path.is_file() && path.with_file_name("memprobe-fleet").is_file() {
        return Some(path);
    }
    assert!(
        !strict(),
        "{SHIPPED} and memprobe-fleet beside it are required in strict mode: .ci/run builds \
         them before the tests"
    );
    skip(&format!(
        "{SHIPPED} is not built (.ci/run builds it; MEMPROBE_STRICT=1 makes this fail)"
    ));
    None
}
/// The shipped static binary where it is built (required in strict mode), else the dev build:
/// for tests about the running process, which hold on either.
pub fn shipped_or_dev() -> PathBuf {
    shipped().unwrap_or_else(|| PathBuf::from(MEMPROBE))
}

pub const DEADLINE: Duration = Duration::from_secs(30);

/// Says that a check did not run, and why, on the terminal itself (the test harness captures
/// what tests print the usual way, and shows the test as a plain `ok`), and records it for the
/// summary at the end of `cargo test` (see [`skips`]).
pub fn skip(why: &str) {
    use std::io::Write as _;
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    if let Some(file) = skips::record_file() {
        let _ = skips::record(&file, &test, why);
    }
}

/// `.ci/run` sets this: a test that needs an outside tool fails instead of skipping.
pub fn strict() -> bool {
    std::env::var_os("MEMPROBE_STRICT").is_some_and(|v| v == "1")
}

/// The path of an outside tool, or `None` (with a printed reason) when it is missing and
/// strict mode is off.
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            !strict(),
            "{name} is required in strict mode (MEMPROBE_STRICT=1) but is not installed"
        );
        skip(&format!(
            "{name} is not installed (.ci/run installs it; MEMPROBE_STRICT=1 makes this fail)"
        ));
    }
    found
}

/// A loopback port that was free a moment ago: nothing listens there now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A process name unique to this test run, for `--name`.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// Fails unless memprobe is to watch a process no other on the machine can be: one given by
/// `--pid` or `--pidfile`, one named by [`unique_name`], or none (`--memory-source kms`). A
/// common name — memprobe's default `kurento-media-server`, or `janus` — would pick a server
/// someone else runs on the same machine, and the test would judge that one.
pub fn assert_unique_target(args: &[&str], env: &[(&str, &str)]) {
    let flag = |name: &str, var: &str| {
        args.iter()
            .position(|a| *a == name)
            .and_then(|i| args.get(i + 1).copied())
            .or_else(|| env.iter().find(|(k, _)| *k == var).map(|(_, v)| *v))
    };
    if flag("--pid", "MEMPROBE_PID").is_some()
        || flag("--pidfile", "MEMPROBE_PIDFILE").is_some()
        || flag("--memory-source", "MEMPROBE_MEMORY_SOURCE") == Some("kms")
    {
        return;
    }
    let unique = format!("-{}-", std::process::id());
    match flag("--name", "MEMPROBE_NAME") {
        Some(name) if name.contains(&unique) => {}
        Some(name) => panic!(
            "--name {name} may be another process on this machine: use unique_name({name:?}) \
             or --pid"
        ),
        None => panic!(
            "no target given, so memprobe would watch any kurento-media-server (or janus) on \
             this machine: give --pid, --pidfile or --name unique_name(..); args {args:?}"
        ),
    }
}

/// A `memprobe workload` child, driven on stdin.
pub struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
}

impl Workload {
    /// A quiet workload (no waves of its own), optionally under another argv[0].
    pub fn start(argv0: Option<&str>) -> Self {
        Self::start_with(argv0, &[])
    }

    pub fn start_with(argv0: Option<&str>, env: &[(&str, &str)]) -> Self {
        Self::start_binary(std::path::Path::new(MEMPROBE), argv0, env)
    }

    /// The workload of this very binary (the shipped static one, say).
    pub fn start_binary(
        binary: &std::path::Path,
        argv0: Option<&str>,
        env: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new(binary);
        cmd.envs(env.iter().copied());
        if let Some(name) = argv0 {
            cmd.arg0(name);
        }
        let mut child = cmd
            .args(["workload", "--waves", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start memprobe workload");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let pid = child.id();
        let mut w = Workload {
            child,
            stdin,
            stdout,
            pid,
        };
        let hello = w.read_line();
        assert!(
            hello.starts_with("workload ready"),
            "workload said {hello:?}"
        );
        w
    }

    fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read workload stdout");
        line.trim().to_string()
    }

    /// Sends one command without waiting for its answer (the target may not live to give it).
    pub fn tell(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("workload stdin open");
        writeln!(stdin, "{command}").expect("write to workload");
        stdin.flush().expect("flush workload stdin");
    }

    /// Sends one command and returns its answer (after the work is done).
    pub fn send(&mut self, command: &str) -> String {
        let stdin = self.stdin.as_mut().expect("workload stdin open");
        writeln!(stdin, "{command}").expect("write to workload");
        stdin.flush().expect("flush workload stdin");
        let answer = self.read_line();
        assert!(
            answer.starts_with("ok"),
            "workload answered {answer:?} to {command:?}"
        );
        answer
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running (reaped once it is not).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The real `memprobe` binary, listening on a free loopback port.
pub struct Memprobe {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    agent: ureq::Agent,
}

pub struct Reply {
    pub code: u16,
    pub content_type: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Memprobe {
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(args, &[])
    }

    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_binary(std::path::Path::new(MEMPROBE), args, env)
    }

    /// Starts this very binary (the shipped static one, say) with these arguments.
    pub fn start_binary(binary: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_command(Command::new(binary), args, env)
    }

    /// Starts memprobe as `command` runs it (under an emulator, say), with these arguments.
    pub fn start_command(command: Command, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_command_on(command, "127.0.0.1:0", args, env)
    }

    /// [`Memprobe::start_command`] listening on `listen` (a fixed port, for a restart).
    pub fn start_command_on(
        mut command: Command,
        listen: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        assert_unique_target(args, env);
        // The test run's own settings are no memprobe flags: memprobe would warn of each.
        for own in [
            "MEMPROBE_STRICT",
            "MEMPROBE_KUBECONFIG",
            "MEMPROBE_CONTAINERS_CONF",
        ] {
            command.env_remove(own);
        }
        let mut child = command
            .args(args)
            .args(["--listen", listen, "--log-format", "json"])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start memprobe");
        let stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && let Some(addr) = v["addr"].as_str()
                {
                    let _ = addr_tx.send(addr.parse::<SocketAddr>().ok());
                }
                sink.lock().unwrap().push(line);
            }
            let _ = addr_tx.send(None);
        });
        let addr = addr_rx
            .recv_timeout(DEADLINE)
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "memprobe never said where it listens; logs: {:?}",
                    logs.lock().unwrap()
                )
            });
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Memprobe {
            child,
            addr,
            logs,
            agent,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the HAProxy agent listens (`--agent-listen`), as memprobe logged it.
    pub fn agent_addr(&self) -> SocketAddr {
        let start = Instant::now();
        loop {
            let found = self.logs().iter().find_map(|line| {
                let v: Value = serde_json::from_str(line).ok()?;
                v["agent"].as_str()?.parse().ok()
            });
            if let Some(addr) = found {
                return addr;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "memprobe never said where its agent listens"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// The one log line that says `news`; fails unless exactly one does.
    pub fn said_once(&self, news: &str) -> String {
        let logs = self.logs();
        let saying: Vec<&String> = logs.iter().filter(|l| l.contains(news)).collect();
        assert_eq!(saying.len(), 1, "'{news}' said once: {logs:#?}");
        saying[0].clone()
    }

    /// Waits until a log line says `news`; panics with the logs after [`DEADLINE`].
    pub fn wait_said(&self, news: &str) {
        let start = Instant::now();
        while !self.logs().iter().any(|l| l.contains(news)) {
            assert!(
                start.elapsed() < DEADLINE,
                "waited {DEADLINE:?} for '{news}'; logs: {:#?}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Swaps the file at `path` for a FIFO no one writes to, and checks that the probes
    /// still answer once memprobe has said it cannot use it: within 5 s, where a read blocked
    /// on the FIFO would never answer (the client gives up at 10 s).
    pub fn answers_with_a_fifo_at(&self, path: &std::path::Path) {
        std::fs::remove_file(path).expect("remove the file");
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        self.wait_said("is a FIFO, not a regular file");
        for probe in ["/ready", "/healthz", "/livez"] {
            let started = Instant::now();
            self.get(probe);
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{probe} took {:?} with a FIFO at {}",
                started.elapsed(),
                path.display()
            );
        }
        std::fs::remove_file(path).expect("remove the FIFO");
    }

    /// Fails if any of `secrets` shows in the logs, in `/status` or on the page.
    pub fn never_shown(&self, secrets: &[&str]) {
        let page = self.get("/").body;
        let shown = format!("{}{}{page}", self.logs().join("\n"), self.status());
        for secret in secrets {
            assert!(!shown.contains(secret), "{secret} is shown: {shown}");
        }
    }

    pub fn request(&self, method: &str, path: &str) -> Reply {
        request(&self.agent, method, &format!("http://{}{path}", self.addr))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path)
    }

    pub fn status(&self) -> Value {
        self.get("/status").json()
    }

    /// Polls /status until `cond` holds; panics with the last status after [`DEADLINE`].
    pub fn wait_for(&self, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        self.poll_status(what, DEADLINE, Duration::from_millis(50), cond)
    }

    /// [`Memprobe::wait_for`] with a deadline of its own (a fleet's story takes minutes), polling
    /// every 250 ms.
    pub fn wait_for_long(
        &self,
        what: &str,
        deadline: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        self.poll_status(what, deadline, Duration::from_millis(250), cond)
    }

    fn poll_status(
        &self,
        what: &str,
        deadline: Duration,
        every: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let status = self.status();
            if cond(&status) {
                return status;
            }
            if start.elapsed() > deadline {
                panic!("waited {deadline:?} for {what}; last status: {status:#}");
            }
            std::thread::sleep(every);
        }
    }

    /// Polls /livez until it answers 200: the sampling loop is running. One step late on a
    /// busy machine fails /livez for a moment (that is what it shows); a stuck loop never
    /// answers 200 again, and panics after [`DEADLINE`].
    pub fn wait_live(&self) {
        let start = Instant::now();
        while self.get("/livez").code != 200 {
            assert!(
                start.elapsed() < DEADLINE,
                "/livez never answered 200 in {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_state(&self, state: &str) -> Value {
        self.wait_for(&format!("state {state}"), |s| s["state"] == state)
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit()
    }

    /// Sends a signal by name (`TERM`, `HUP`).
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("wait memprobe").is_none()
    }

    /// Resident memory of the memprobe process, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("memprobe's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait memprobe") {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "memprobe did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Memprobe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client that returns 4xx and 5xx as answers, not errors.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// One request; `Err` when there is no HTTP answer at all.
pub fn request(agent: &ureq::Agent, method: &str, url: &str) -> Result<Reply, ureq::Error> {
    let mut response = match method {
        "GET" => agent.get(url).call(),
        "HEAD" => agent.head(url).call(),
        "POST" => agent.post(url).send_empty(),
        other => panic!("no {other} here"),
    }?;
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    Ok(Reply {
        code: response.status().as_u16(),
        content_type,
        body,
    })
}

/// Runs memprobe to completion with these arguments and environment.
pub fn run_to_end(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(MEMPROBE)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run memprobe")
}

/// Raises this test process's descriptor limit for floods of connections: as root beyond the
/// hard limit, else up to it.
pub fn many_files() {
    if let Ok((_, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        let wanted = hard.max(65_536);
        let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, wanted, wanted);
    }
    let _ = rlimit::increase_nofile_limit(65_536);
}

/// Opens `count` connections to `addr`; every other one sends half a request head.
pub fn flood(addr: SocketAddr, count: usize) -> Vec<std::net::TcpStream> {
    let mut open = Vec::with_capacity(count);
    for i in 0..count {
        let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        else {
            continue;
        };
        if i % 2 == 0 {
            let _ = stream.write_all(b"GET /ready HTTP/1.1\r\nHost: flood\r\n");
        }
        open.push(stream);
    }
    open
}

/// A child process killed and reaped when the test ends, pass or fail.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Kubernetes container's environment variables that have a plain value (not `valueFrom`).
pub fn plain_env(container: &serde_json::Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .map(|vars| {
            vars.iter()
                .filter_map(|e| Some((e["name"].as_str()?.into(), e["value"].as_str()?.into())))
                .collect()
        })
        .unwrap_or_default()
}
