//! Flags and environment, parsed raw by clap and then validated into a [`Config`].
//!
//! Every sidecar flag is read as text first (clap with its `env` feature), so that a refused
//! value can be reported against where it came from — `--interval` or `MEMPROBE_INTERVAL` —
//! with the value and an example that works, on one line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Parser, Subcommand};

use crate::sample::MemoryKind;
use crate::target::TargetSpec;
use crate::units::{self, SizeOrPercent, UnitError};

pub const DEFAULT_NAME: &str = "kurento-media-server";

#[derive(Debug, Parser)]
#[command(
    name = "memprobe",
    version,
    about = "Drain, then restart, a server whose memory stays high: probes for Kubernetes, \
             Prometheus and load balancers",
    args_conflicts_with_subcommands = true,
    max_term_width = 120
)]
pub struct Cli {
    #[command(flatten)]
    pub watch: WatchFlags,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch a built-in fragmenting workload and show healthy → draining → recycle in a minute
    Demo(DemoFlags),
    /// The workload the demo and the tests watch: simulated media sessions, driven on stdin
    Workload(crate::workload::WorkloadFlags),
}

#[derive(Debug, Args)]
pub struct DemoFlags {
    /// Allocator for the workload: glibc (fragments) or jemalloc (Debian's libjemalloc2)
    #[arg(long, default_value = "glibc", value_parser = ["glibc", "jemalloc"])]
    pub allocator: String,
    /// Address for the demo's endpoints
    #[arg(long, default_value = "127.0.0.1:8899")]
    pub listen: SocketAddr,
}

/// The sidecar's flags as given, not yet validated.
#[derive(Debug, Args)]
pub struct WatchFlags {
    /// Watch this process id
    #[arg(long, env = "MEMPROBE_PID", value_name = "PID")]
    pid: Option<String>,
    /// Watch the process whose id is in this file (re-read whenever the process is gone)
    #[arg(long, env = "MEMPROBE_PIDFILE", value_name = "PATH")]
    pidfile: Option<PathBuf>,
    /// Watch the process with this executable, argv[0] or comm name [default: kurento-media-server]
    #[arg(long, env = "MEMPROBE_NAME", value_name = "NAME")]
    name: Option<String>,
    /// Add up the memory of the target's descendants
    #[arg(long, env = "MEMPROBE_INCLUDE_CHILDREN")]
    include_children: bool,
    /// Time between samples
    #[arg(
        long,
        env = "MEMPROBE_INTERVAL",
        default_value = "5s",
        value_name = "DURATION"
    )]
    interval: String,
    /// Figure that decides: rss (resident), anon (what fragmentation inflates), pss (needs ptrace access)
    #[arg(
        long,
        env = "MEMPROBE_MEMORY",
        default_value = "rss",
        value_name = "rss|anon|pss"
    )]
    memory: String,
    /// Drain when memory stays over this: a size (1536Mi, 1.5GiB) or a percentage of the limit
    #[arg(
        long,
        env = "MEMPROBE_THRESHOLD",
        default_value = "80%",
        value_name = "SIZE|PERCENT"
    )]
    threshold: String,
    /// Recycle at once on any sample over this [default: off]
    #[arg(long, env = "MEMPROBE_CRITICAL", value_name = "SIZE|PERCENT")]
    critical: Option<String>,
    /// Memory limit percentages are of [default: target's cgroup limit, else host MemTotal]
    #[arg(long, env = "MEMPROBE_MEMORY_LIMIT", value_name = "SIZE")]
    memory_limit: Option<String>,
    /// How long memory must stay over the threshold, on every sample, before draining
    #[arg(
        long,
        env = "MEMPROBE_SUSTAIN",
        default_value = "5m",
        value_name = "DURATION"
    )]
    sustain: String,
    /// Longest drain before a restart is asked for, sessions or not
    #[arg(
        long,
        env = "MEMPROBE_DRAIN_TIMEOUT",
        default_value = "1h",
        value_name = "DURATION"
    )]
    drain_timeout: String,
    /// Shortest drain before a restart, even with no sessions left (balancers must stop routing)
    #[arg(
        long,
        env = "MEMPROBE_MIN_DRAIN",
        default_value = "30s",
        value_name = "DURATION"
    )]
    min_drain: String,
    /// With no sessions, drain once memory stays over the threshold this long
    #[arg(
        long,
        env = "MEMPROBE_IDLE_SUSTAIN",
        default_value = "60s",
        value_name = "DURATION"
    )]
    idle_sustain: String,
    /// Kurento's JSON-RPC WebSocket, for sessions and health ('none' turns it off)
    #[arg(
        long,
        env = "MEMPROBE_KMS_URL",
        default_value = "ws://127.0.0.1:8888/kurento",
        value_name = "URL"
    )]
    kms_url: String,
    /// Time between pings to KMS
    #[arg(
        long,
        env = "MEMPROBE_KMS_PING_INTERVAL",
        default_value = "10s",
        value_name = "DURATION"
    )]
    kms_ping_interval: String,
    /// Deadline of every request to KMS
    #[arg(
        long,
        env = "MEMPROBE_KMS_TIMEOUT",
        default_value = "3s",
        value_name = "DURATION"
    )]
    kms_timeout: String,
    /// Failed pings in a row after which an answering KMS counts as hung (restart it)
    #[arg(
        long,
        env = "MEMPROBE_KMS_FAILURES",
        default_value = "3",
        value_name = "N"
    )]
    kms_failures: String,
    /// Where memory figures come from: proc (/proc of a shared PID namespace) or kms (getUsedMemory)
    #[arg(
        long,
        env = "MEMPROBE_MEMORY_SOURCE",
        default_value = "proc",
        value_name = "proc|kms"
    )]
    memory_source: String,
    /// Address for /ready, /healthz, /livez, /status and /metrics
    #[arg(
        long,
        env = "MEMPROBE_LISTEN",
        default_value = "0.0.0.0:8899",
        value_name = "ADDR"
    )]
    listen: String,
    /// Log format: text or json (level from RUST_LOG, default info)
    #[arg(
        long,
        env = "MEMPROBE_LOG_FORMAT",
        default_value = "text",
        value_name = "text|json"
    )]
    log_format: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemorySource {
    /// /proc/PID of the target, found in a shared PID namespace.
    #[default]
    Proc,
    /// KMS's own `getUsedMemory`, over its JSON-RPC API.
    Kms,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The sidecar's settings, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub target: TargetSpec,
    pub include_children: bool,
    pub interval: Duration,
    pub memory: MemoryKind,
    pub threshold: SizeOrPercent,
    pub critical: Option<SizeOrPercent>,
    pub memory_limit: Option<u64>,
    pub sustain: Duration,
    pub idle_sustain: Duration,
    pub drain_timeout: Duration,
    pub min_drain: Duration,
    /// The Kurento integration; `None` with `--kms-url none`.
    pub kms: Option<KmsConfig>,
    pub memory_source: MemorySource,
    pub listen: SocketAddr,
    pub log_format: LogFormat,
}

#[derive(Clone, Debug, PartialEq)]
pub struct KmsConfig {
    pub url: String,
    pub ping_interval: Duration,
    pub timeout: Duration,
    pub failures: u32,
}

/// A refused setting: where it came from, the value, and what would work.
#[derive(Debug, thiserror::Error, PartialEq)]
pub struct FlagError {
    pub origin: String,
    pub value: Option<String>,
    pub problem: String,
}

impl std::fmt::Display for FlagError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}: '{value}' {}", self.origin, self.problem),
            None => write!(f, "{}: {}", self.origin, self.problem),
        }
    }
}

/// What to run, once the command line has been read.
#[derive(Debug)]
pub enum Invocation {
    Sidecar(Box<Config>),
    Demo(DemoFlags),
    Workload(crate::workload::WorkloadFlags),
}

/// Reads the command line and the environment. `Err` carries clap's own outcome (help,
/// version, or a usage error) or a [`FlagError`].
pub fn parse<I, T>(args: I) -> Result<Invocation, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    Ok(match cli.command {
        Some(Command::Demo(flags)) => Invocation::Demo(flags),
        Some(Command::Workload(flags)) => Invocation::Workload(flags),
        None => Invocation::Sidecar(Box::new(cli.watch.validate(&matches)?)),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error(transparent)]
    Flag(#[from] FlagError),
}

impl WatchFlags {
    fn validate(self, matches: &ArgMatches) -> Result<Config, FlagError> {
        let check = Checker { matches };
        let target = check.target(self.pid.clone(), self.pidfile.clone(), self.name.clone())?;
        let interval = check.duration("interval", &self.interval)?;
        if interval.is_zero() {
            return Err(check.error("interval", &self.interval, "must be more than 0 (try 5s)"));
        }
        let memory = match self.memory.as_str() {
            "rss" => MemoryKind::Rss,
            "anon" => MemoryKind::Anon,
            "pss" => MemoryKind::Pss,
            other => return Err(check.error("memory", other, "is not rss, anon or pss (try rss)")),
        };
        let threshold = check.unit("threshold", &self.threshold, units::parse_size_or_percent)?;
        let critical = self
            .critical
            .as_deref()
            .map(|text| check.unit("critical", text, units::parse_size_or_percent))
            .transpose()?;
        if let Some(critical) = critical {
            let comparable = match (threshold, critical) {
                (SizeOrPercent::Bytes(t), SizeOrPercent::Bytes(c)) => Some(c <= t),
                (SizeOrPercent::Percent(t), SizeOrPercent::Percent(c)) => Some(c <= t),
                _ => None,
            };
            if comparable == Some(true) {
                let value = self.critical.as_deref().unwrap_or_default();
                let problem = format!("must be above the threshold {threshold} (try 95%)");
                return Err(check.error("critical", value, &problem));
            }
        }
        let memory_limit = self
            .memory_limit
            .as_deref()
            .map(|text| check.unit("memory_limit", text, units::parse_size))
            .transpose()?;
        let kms = check.kms(&self)?;
        let memory_source = match self.memory_source.as_str() {
            "proc" => MemorySource::Proc,
            "kms" => MemorySource::Kms,
            other => {
                return Err(check.error("memory_source", other, "is not proc or kms (try proc)"));
            }
        };
        if memory_source == MemorySource::Kms {
            check.kms_source(&self, kms.is_some(), memory)?;
        }
        let listen = self.listen.parse().map_err(|_| {
            check.error(
                "listen",
                &self.listen,
                "is not an address:port (try 0.0.0.0:8899)",
            )
        })?;
        let log_format = match self.log_format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(check.error("log_format", other, "is not text or json (try json)"));
            }
        };
        Ok(Config {
            target,
            include_children: self.include_children,
            interval,
            memory,
            threshold,
            critical,
            memory_limit,
            sustain: check.duration("sustain", &self.sustain)?,
            idle_sustain: check.duration("idle_sustain", &self.idle_sustain)?,
            kms,
            memory_source,
            drain_timeout: check.duration("drain_timeout", &self.drain_timeout)?,
            min_drain: check.duration("min_drain", &self.min_drain)?,
            listen,
            log_format,
        })
    }
}

struct Checker<'a> {
    matches: &'a ArgMatches,
}

impl Checker<'_> {
    /// `--min-drain` or `MEMPROBE_MIN_DRAIN`, whichever the value came from.
    fn origin(&self, id: &str) -> String {
        let flag = id.replace('_', "-");
        match self.matches.value_source(id) {
            Some(ValueSource::EnvVariable) => format!("MEMPROBE_{}", id.to_uppercase()),
            _ => format!("--{flag}"),
        }
    }

    fn error(&self, id: &str, value: &str, problem: &str) -> FlagError {
        FlagError {
            origin: self.origin(id),
            value: Some(value.to_string()),
            problem: problem.to_string(),
        }
    }

    fn unit<T>(
        &self,
        id: &str,
        text: &str,
        parse: fn(&str) -> Result<T, UnitError>,
    ) -> Result<T, FlagError> {
        parse(text).map_err(|e| self.error(id, text, &e.to_string()))
    }

    fn duration(&self, id: &str, text: &str) -> Result<Duration, FlagError> {
        self.unit(id, text, units::parse_duration)
    }

    fn kms(&self, flags: &WatchFlags) -> Result<Option<KmsConfig>, FlagError> {
        let url = flags.kms_url.trim();
        if url == "none" {
            return Ok(None);
        }
        let example = "(try ws://127.0.0.1:8888/kurento, or none)";
        if url.starts_with("wss://") {
            let problem = format!("uses TLS, which memprobe does not speak yet {example}");
            return Err(self.error("kms_url", url, &problem));
        }
        let valid = url
            .parse::<axum::http::Uri>()
            .is_ok_and(|uri| uri.scheme_str() == Some("ws") && uri.host().is_some());
        if !valid {
            let problem = format!("is not a ws:// URL {example}");
            return Err(self.error("kms_url", url, &problem));
        }
        let ping_interval = self.duration("kms_ping_interval", &flags.kms_ping_interval)?;
        let timeout = self.duration("kms_timeout", &flags.kms_timeout)?;
        for (id, value, d) in [
            ("kms_ping_interval", &flags.kms_ping_interval, ping_interval),
            ("kms_timeout", &flags.kms_timeout, timeout),
        ] {
            if d.is_zero() {
                return Err(self.error(id, value, "must be more than 0 (try 3s)"));
            }
        }
        let failures = match flags.kms_failures.trim().parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => {
                let problem = "is not a count of 1 or more (try 3)";
                return Err(self.error("kms_failures", &flags.kms_failures, problem));
            }
        };
        Ok(Some(KmsConfig {
            url: url.to_string(),
            ping_interval,
            timeout,
            failures,
        }))
    }

    /// `--memory-source kms` reads memory from KMS itself: there is no process to pick.
    fn kms_source(
        &self,
        flags: &WatchFlags,
        kms_on: bool,
        memory: MemoryKind,
    ) -> Result<(), FlagError> {
        if !kms_on {
            let problem = "needs the Kurento integration: --kms-url is none (try --kms-url ws://127.0.0.1:8888/kurento)";
            return Err(self.error("memory_source", "kms", problem));
        }
        let set = |id: &str| {
            matches!(
                self.matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        for id in ["pid", "pidfile", "name"] {
            if set(id) {
                return Err(FlagError {
                    origin: self.origin(id),
                    value: None,
                    problem:
                        "picks a process, but --memory-source kms reads memory from KMS itself \
                              (drop it, or use --memory-source proc)"
                            .into(),
                });
            }
        }
        if flags.include_children {
            return Err(FlagError {
                origin: self.origin("include_children"),
                value: None,
                problem: "needs --memory-source proc (KMS reports only its own memory)".into(),
            });
        }
        if memory != MemoryKind::Rss {
            let problem =
                "is not available from KMS, which reports resident memory (try --memory rss)";
            return Err(self.error("memory", memory.as_str(), problem));
        }
        Ok(())
    }

    fn target(
        &self,
        pid: Option<String>,
        pidfile: Option<PathBuf>,
        name: Option<String>,
    ) -> Result<TargetSpec, FlagError> {
        let given: Vec<&str> = [
            ("pid", pid.is_some()),
            ("pidfile", pidfile.is_some()),
            ("name", name.is_some()),
        ]
        .into_iter()
        .filter_map(|(id, set)| set.then_some(id))
        .collect();
        if given.len() > 1 {
            let origins: Vec<String> = given.iter().map(|id| self.origin(id)).collect();
            return Err(FlagError {
                origin: origins.join(" and "),
                value: None,
                problem: "only one target may be given (try just --name kurento-media-server)"
                    .to_string(),
            });
        }
        if let Some(text) = pid {
            return match text.trim().parse::<i32>() {
                Ok(pid) if pid > 0 => Ok(TargetSpec::Pid(pid)),
                _ => Err(self.error("pid", &text, "is not a process id (try --pid 1234)")),
            };
        }
        if let Some(path) = pidfile {
            return Ok(TargetSpec::Pidfile(path));
        }
        let name = name.unwrap_or_else(|| DEFAULT_NAME.to_string());
        if name.is_empty() || name.contains('/') {
            return Err(self.error(
                "name",
                &name,
                "is not a process name (try kurento-media-server)",
            ));
        }
        Ok(TargetSpec::Name(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(args: &[&str]) -> Result<Config, String> {
        let argv = std::iter::once("memprobe").chain(args.iter().copied());
        match parse(argv) {
            Ok(Invocation::Sidecar(config)) => Ok(*config),
            Ok(other) => panic!("not the sidecar: {other:?}"),
            Err(ParseError::Flag(e)) => Err(e.to_string()),
            Err(ParseError::Clap(e)) => Err(format!("clap: {}", e.kind())),
        }
    }

    #[test]
    fn defaults_are_right_for_kms_on_kubernetes() {
        let c = sidecar(&[]).expect("no flags at all is valid");
        assert_eq!(c.target, TargetSpec::Name("kurento-media-server".into()));
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.memory, MemoryKind::Rss);
        assert_eq!(c.threshold, SizeOrPercent::Percent(80.0));
        assert_eq!(c.critical, None);
        assert_eq!(c.sustain, Duration::from_secs(300));
        assert_eq!(c.drain_timeout, Duration::from_secs(3600));
        assert_eq!(c.min_drain, Duration::from_secs(30));
        assert_eq!(c.listen, "0.0.0.0:8899".parse().unwrap());
    }

    #[test]
    fn a_bad_value_names_the_flag_the_value_and_an_example() {
        assert_eq!(
            sidecar(&["--threshold", "80 percent"]).unwrap_err(),
            "--threshold: '80 percent' is not a size or a percentage (try 1536Mi, 1.5GiB or 80%)"
        );
        assert_eq!(
            sidecar(&["--min-drain", "soon"]).unwrap_err(),
            "--min-drain: 'soon' is not a duration (try 250ms, 5s, 5m or 1h30m)"
        );
        assert_eq!(
            sidecar(&["--memory", "vsz"]).unwrap_err(),
            "--memory: 'vsz' is not rss, anon or pss (try rss)"
        );
        assert_eq!(
            sidecar(&["--pid", "12ab"]).unwrap_err(),
            "--pid: '12ab' is not a process id (try --pid 1234)"
        );
        assert_eq!(
            sidecar(&["--interval", "0s"]).unwrap_err(),
            "--interval: '0s' must be more than 0 (try 5s)"
        );
    }

    #[test]
    fn target_flags_exclude_each_other() {
        assert_eq!(
            sidecar(&["--pid", "1", "--name", "kms"]).unwrap_err(),
            "--pid and --name: only one target may be given (try just --name kurento-media-server)"
        );
    }

    #[test]
    fn kurento_settings() {
        let c = sidecar(&[]).unwrap();
        let kms = c.kms.expect("on by default");
        assert_eq!(kms.url, "ws://127.0.0.1:8888/kurento");
        assert_eq!(kms.ping_interval, Duration::from_secs(10));
        assert_eq!(kms.timeout, Duration::from_secs(3));
        assert_eq!(kms.failures, 3);
        assert_eq!(c.idle_sustain, Duration::from_secs(60));
        assert_eq!(sidecar(&["--kms-url", "none"]).unwrap().kms, None);
        assert_eq!(
            sidecar(&["--kms-url", "http://kms:8888/kurento"]).unwrap_err(),
            "--kms-url: 'http://kms:8888/kurento' is not a ws:// URL (try ws://127.0.0.1:8888/kurento, or none)"
        );
        assert!(
            sidecar(&["--kms-failures", "0"])
                .unwrap_err()
                .starts_with("--kms-failures: '0'")
        );
    }

    #[test]
    fn memory_from_kms_needs_no_process_flags() {
        let c = sidecar(&["--memory-source", "kms"]).unwrap();
        assert_eq!(c.memory_source, MemorySource::Kms);
        assert!(
            sidecar(&["--memory-source", "kms", "--pid", "4"])
                .unwrap_err()
                .starts_with("--pid: picks a process")
        );
        assert!(
            sidecar(&["--memory-source", "kms", "--memory", "pss"])
                .unwrap_err()
                .starts_with("--memory: 'pss'")
        );
        assert!(sidecar(&["--memory-source", "kms", "--kms-url", "none"]).is_err());
    }

    #[test]
    fn critical_must_be_above_the_threshold() {
        assert!(sidecar(&["--threshold", "2Gi", "--critical", "1Gi"]).is_err());
        assert!(sidecar(&["--threshold", "80%", "--critical", "95%"]).is_ok());
    }
}
