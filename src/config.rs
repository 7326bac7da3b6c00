//! Flags and environment, parsed raw by clap and then validated into a [`Config`].
//!
//! Every sidecar flag is read as text first (clap with its `env` feature), so that a refused
//! value can be reported against where it came from — `--interval` or `MEMPROBE_INTERVAL` —
//! with the value and an example that works, on one line. Values may start with `-`, so
//! `--threshold -5MiB` reaches this validation instead of clap's "unexpected argument".
//! Enumerations are `clap::ValueEnum`s, looked up here for the same reason; every duration
//! has a range; and sizes are compared once percentages are resolved against the memory
//! limit, so no combination that passes here recycles a server by mistake.
//!
//! Validation has two steps. Every flag's text is first parsed into its typed value on its
//! own (`Values`), whether or not anything will use it: `--kms-timeout 300000000000y` is
//! refused with `--pid` as it is with KMS on. Only then are the values combined — which
//! media server and integrations run, one target, one source of each secret.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Parser, Subcommand, ValueEnum};

use crate::limit::MemoryLimit;
use crate::outlets::agent::AgentWeight;
use crate::outlets::recycle::RecycleAction;
use crate::secret::{Secret, SecretUrl, Token, read_secret_file};
use crate::sources::custom::{CustomSettings, Endpoint};
use crate::sources::proc::target::TargetSpec;
use crate::sources::{MemoryFrom, MemoryKind};
use crate::units::{self, Bytes, DurationRange, SizeOrPercent, UnitError};

pub const DEFAULT_NAME: &str = "kurento-media-server";
/// The process name watched by default with `--janus-url`.
pub const JANUS_NAME: &str = "janus";
/// The longest `--shutdown-delay`: a kubelet gives a pod 30 s by default to stop.
const MAX_SHUTDOWN_DELAY: Duration = Duration::from_secs(300);
/// How long a file named by a flag may take to read at start.

#[derive(Debug, Parser)]
#[command(
    name = "memprobe",
    version,
    about = "Drain, then restart, a server whose memory stays high: probes for Kubernetes, \
             Prometheus and load balancers",
    after_help = "Durations accept 10ms to 7days (--min-drain also 0; --shutdown-delay 0 to 5m). \
                  Every flag can be set as MEMPROBE_<FLAG>; booleans from the environment \
                  read 1/0, true/false, yes/no, on/off.",
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
    Workload(crate::tools::workload::WorkloadFlags),
    /// Ask a running memprobe to drain, and wait for its last session (systemd ExecStop=, scripts)
    Drain(crate::tools::drain::DrainFlags),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DemoAllocator {
    /// glibc's malloc, which fragments
    Glibc,
    /// jemalloc from Debian's libjemalloc2
    Jemalloc,
}

#[derive(Debug, Args)]
pub struct DemoFlags {
    /// Allocator for the workload
    #[arg(long, value_enum, default_value_t = DemoAllocator::Glibc)]
    pub allocator: DemoAllocator,
    /// Address for the demo's endpoints
    #[arg(long, default_value = "127.0.0.1:8899")]
    pub listen: SocketAddr,
}

/// The sidecar's flags as given, not yet validated.
#[derive(Debug, Args)]
pub struct WatchFlags {
    /// Watch this process id
    #[arg(
        long,
        env = "MEMPROBE_PID",
        value_name = "PID",
        allow_hyphen_values = true
    )]
    pid: Option<String>,
    /// Watch the process whose id is in this file (re-read whenever the process is gone)
    #[arg(long, env = "MEMPROBE_PIDFILE", value_name = "PATH")]
    pidfile: Option<PathBuf>,
    /// Watch the process with this executable, argv[0] or comm name [default: kurento-media-server]
    #[arg(
        long,
        env = "MEMPROBE_NAME",
        value_name = "NAME",
        allow_hyphen_values = true
    )]
    name: Option<String>,
    /// With --name: match only processes of this user (a name or a uid), on a shared host
    #[arg(
        long,
        env = "MEMPROBE_USER",
        value_name = "USER",
        allow_hyphen_values = true
    )]
    user: Option<String>,
    /// Add up the memory of the target's descendants
    #[arg(
        long,
        env = "MEMPROBE_INCLUDE_CHILDREN",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL",
        hide_possible_values = true
    )]
    include_children: Option<String>,
    /// Time between samples
    #[arg(
        long,
        env = "MEMPROBE_INTERVAL",
        default_value = "5s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    interval: String,
    /// Figure that decides: rss (resident), anon (what fragmentation inflates), pss (needs ptrace access)
    #[arg(
        long,
        env = "MEMPROBE_MEMORY",
        default_value = "rss",
        value_name = "rss|anon|pss",
        allow_hyphen_values = true
    )]
    memory: String,
    /// Drain when memory stays over this: a size (1536Mi, 1.5GiB) or a percentage of the limit
    #[arg(
        long,
        env = "MEMPROBE_THRESHOLD",
        default_value = "80%",
        value_name = "SIZE|PERCENT",
        allow_hyphen_values = true
    )]
    threshold: String,
    /// Recycle at once on any sample over this [default: off]
    #[arg(
        long,
        env = "MEMPROBE_CRITICAL",
        value_name = "SIZE|PERCENT",
        allow_hyphen_values = true
    )]
    critical: Option<String>,
    /// Memory limit percentages are of [default: target's cgroup limit, else host MemTotal]
    #[arg(
        long,
        env = "MEMPROBE_MEMORY_LIMIT",
        value_name = "SIZE",
        allow_hyphen_values = true
    )]
    memory_limit: Option<String>,
    /// How long memory must stay over the threshold, on every sample, before draining
    #[arg(
        long,
        env = "MEMPROBE_SUSTAIN",
        default_value = "5m",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    sustain: String,
    /// Longest drain before a restart is asked for, sessions or not
    #[arg(
        long,
        env = "MEMPROBE_DRAIN_TIMEOUT",
        default_value = "1h",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    drain_timeout: String,
    /// Shortest drain before a restart, even with no sessions left (balancers must stop routing)
    #[arg(
        long,
        env = "MEMPROBE_MIN_DRAIN",
        default_value = "30s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    min_drain: String,
    /// With no sessions, drain once memory stays over the threshold this long
    #[arg(
        long,
        env = "MEMPROBE_IDLE_SUSTAIN",
        default_value = "60s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    idle_sustain: String,
    /// Kurento's JSON-RPC WebSocket, for sessions and health ('none' turns it off)
    #[arg(
        long,
        env = "MEMPROBE_KMS_URL",
        default_value = "ws://127.0.0.1:8888/kurento",
        value_name = "URL",
        allow_hyphen_values = true
    )]
    kms_url: String,
    /// Janus's admin API, for sessions, health and its drain switch (e.g. http://127.0.0.1:7088/admin) [default: off]
    #[arg(
        long,
        env = "MEMPROBE_JANUS_URL",
        value_name = "URL",
        allow_hyphen_values = true
    )]
    janus_url: Option<String>,
    /// Janus's admin_secret
    #[arg(
        long,
        env = "MEMPROBE_JANUS_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    janus_secret: Option<String>,
    /// Read --janus-secret from this file
    #[arg(long, env = "MEMPROBE_JANUS_SECRET_FILE", value_name = "PATH")]
    janus_secret_file: Option<PathBuf>,
    /// Time between polls of Janus's admin API
    #[arg(
        long,
        env = "MEMPROBE_JANUS_POLL",
        default_value = "5s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    janus_poll: String,
    /// Turn Janus's own accept_new_sessions off when draining (a client reaching it anyway gets 472)
    #[arg(
        long,
        env = "MEMPROBE_JANUS_DRAIN_SWITCH",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    janus_drain_switch: Option<String>,
    /// Any other server's session count: an http:// URL answering a number, or JSON with it at the URL's #/json/pointer [default: off]
    #[arg(
        long,
        env = "MEMPROBE_SESSIONS_URL",
        value_name = "URL",
        allow_hyphen_values = true
    )]
    sessions_url: Option<String>,
    /// Any other server's session count, from a file that holds the number [default: off]
    #[arg(long, env = "MEMPROBE_SESSIONS_FILE", value_name = "PATH")]
    sessions_file: Option<PathBuf>,
    /// Time between reads of --sessions-url or --sessions-file
    #[arg(
        long,
        env = "MEMPROBE_SESSIONS_POLL",
        default_value = "5s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    sessions_poll: String,
    /// Read --kms-url from this file (for a URL that carries a secret)
    #[arg(long, env = "MEMPROBE_KMS_URL_FILE", value_name = "PATH")]
    kms_url_file: Option<PathBuf>,
    /// Time between pings to KMS
    #[arg(
        long,
        env = "MEMPROBE_KMS_PING_INTERVAL",
        default_value = "10s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    kms_ping_interval: String,
    /// Deadline of every request to KMS
    #[arg(
        long,
        env = "MEMPROBE_KMS_TIMEOUT",
        default_value = "3s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    kms_timeout: String,
    /// Failed pings in a row after which an answering KMS is stalled (no new sessions)
    #[arg(
        long,
        env = "MEMPROBE_KMS_FAILURES",
        default_value = "3",
        value_name = "N",
        allow_hyphen_values = true
    )]
    kms_failures: String,
    /// How long KMS may stay stalled before it is restarted
    #[arg(
        long,
        env = "MEMPROBE_KMS_HANG_TIMEOUT",
        default_value = "60s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    kms_hang_timeout: String,
    /// KMS's garbageCollectorPeriod: getPipelines is never called more often than this
    #[arg(
        long,
        env = "MEMPROBE_KMS_GC_PERIOD",
        default_value = "240s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    kms_gc_period: String,
    /// Where memory figures come from: proc (/proc of a shared PID namespace) or kms (getUsedMemory)
    #[arg(
        long,
        env = "MEMPROBE_MEMORY_SOURCE",
        default_value = "proc",
        value_name = "proc|kms",
        allow_hyphen_values = true
    )]
    memory_source: String,
    /// Address for /ready, /healthz, /livez, /status and /metrics
    #[arg(
        long,
        env = "MEMPROBE_LISTEN",
        default_value = "0.0.0.0:8899",
        value_name = "ADDR",
        allow_hyphen_values = true
    )]
    listen: String,
    /// Address for HAProxy's agent-check (one line per connection: up, drain or down) [default: off]
    #[arg(
        long,
        env = "MEMPROBE_AGENT_LISTEN",
        value_name = "ADDR",
        allow_hyphen_values = true
    )]
    agent_listen: Option<String>,
    /// The agent's weight for a ready instance: fixed (100%) or headroom (falls as memory fills)
    #[arg(
        long,
        env = "MEMPROBE_AGENT_WEIGHT",
        default_value = "fixed",
        value_name = "fixed|headroom",
        allow_hyphen_values = true
    )]
    agent_weight: String,
    /// What restarts the server at recycle: none (Kubernetes' liveness probe does), signal:TERM, or exec:COMMAND
    #[arg(
        long,
        env = "MEMPROBE_ON_RECYCLE",
        default_value = "none",
        value_name = "ACTION",
        allow_hyphen_values = true
    )]
    on_recycle: String,
    /// Run the recycle action again if the same server is still there this long after
    #[arg(
        long,
        env = "MEMPROBE_RECYCLE_RETRY",
        default_value = "5m",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    recycle_retry: String,
    /// How far back the status page (GET /) and /history.json reach (at most 2000 samples)
    #[arg(
        long,
        env = "MEMPROBE_HISTORY",
        default_value = "1h",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    history: String,
    /// After SIGTERM, keep answering (/ready 503) this long before closing the port
    #[arg(
        long,
        env = "MEMPROBE_SHUTDOWN_DELAY",
        default_value = "1s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    shutdown_delay: String,
    /// Bearer token that allows POST/DELETE /drain and GET /drain?wait [default: no admin API]
    #[arg(
        long,
        env = "MEMPROBE_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// Read --admin-token from this file (a mounted Secret)
    #[arg(long, env = "MEMPROBE_ADMIN_TOKEN_FILE", value_name = "PATH")]
    admin_token_file: Option<PathBuf>,
    /// Log format: text or json (level from RUST_LOG, default info)
    #[arg(
        long,
        env = "MEMPROBE_LOG_FORMAT",
        default_value = "text",
        value_name = "text|json",
        allow_hyphen_values = true
    )]
    log_format: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The sidecar's settings, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub target: TargetSpec,
    /// `--user`: with `--name`, only processes of this uid.
    pub user: Option<u32>,
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
    /// The Kurento integration; `None` with `--kms-url none`, or when the target is plainly
    /// not KMS and no `--kms-url` was given.
    pub kms: Option<KmsConfig>,
    /// Why the Kurento integration is off though nobody said `--kms-url none`, to be said
    /// once at start.
    pub kms_off: Option<String>,
    /// The Janus integration; `None` without `--janus-url`.
    pub janus: Option<JanusConfig>,
    /// Any other server's session count; `None` without `--sessions-url` or `--sessions-file`.
    pub custom: Option<CustomSettings>,
    pub memory_source: MemoryFrom,
    pub listen: SocketAddr,
    /// HAProxy's agent-check, when on.
    pub agent_listen: Option<SocketAddr>,
    pub agent_weight: AgentWeight,
    /// `--on-recycle`, checked to be possible at start.
    pub on_recycle: RecycleAction,
    pub recycle_retry: Duration,
    pub shutdown_delay: Duration,
    /// How far back the page's history reaches.
    pub history: Duration,
    /// The admin API's token; without one, `/drain` answers 404.
    pub admin_token: Option<Token>,
    /// The file the token was read from, read again as calls come (at most once a second).
    pub admin_token_file: Option<PathBuf>,
    pub log_format: LogFormat,
}

#[derive(Clone, Debug, PartialEq)]
pub struct JanusConfig {
    pub url: url::Url,
    pub secret: Option<crate::secret::Secret>,
    /// Where the secret came from, read again when Janus refuses it: a rotated Secret is
    /// picked up without a restart.
    pub secret_file: Option<PathBuf>,
    pub poll: Duration,
    /// Each admin call's deadline: the poll interval, at most 3 s.
    pub timeout: Duration,
    /// Set Janus's accept_new_sessions to follow memprobe's drains.
    pub drain_switch: bool,
    /// Failed pings in a row that stall it, and how long a stall may last (the
    /// `--kms-failures` and `--kms-hang-timeout` rules, for Janus).
    pub failures: u32,
    pub hang_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct KmsConfig {
    pub url: SecretUrl,
    /// Where the URL came from (`--kms-url-file`), read again when KMS cannot be reached: a
    /// rotated Secret is picked up without a restart.
    pub url_file: Option<PathBuf>,
    pub ping_interval: Duration,
    pub timeout: Duration,
    pub failures: u32,
    pub hang_timeout: Duration,
    pub gc_period: Duration,
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
    Workload(crate::tools::workload::WorkloadFlags),
    Drain(crate::tools::drain::DrainFlags),
}

/// Reads the command line and the environment. `Err` carries clap's own outcome (help,
/// version, or a usage error) or a [`FlagError`]. Percentages are checked against the
/// `--memory-limit` or, without it, this host's memory.
pub fn parse<I, T>(args: I) -> Result<Invocation, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    parse_with(args, crate::limit::host_total())
}

/// [`parse`], with the host's memory given.
pub fn parse_with<I, T>(args: I, host_total_bytes: u64) -> Result<Invocation, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let command = Cli::command();
    let matches = command.clone().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    Ok(match cli.command {
        Some(Command::Demo(flags)) => Invocation::Demo(flags),
        Some(Command::Workload(flags)) => Invocation::Workload(flags),
        Some(Command::Drain(flags)) => Invocation::Drain(flags),
        None => {
            let check = Checker {
                matches: &matches,
                command: &command,
            };
            Invocation::Sidecar(Box::new(cli.watch.validate(&check, host_total_bytes)?))
        }
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error(transparent)]
    Flag(#[from] FlagError),
}

/// Every flag's value, parsed into its type on its own. Nothing here depends on another flag,
/// so a bad value is refused whether or not the integration that would use it is on; which
/// integration uses which value is decided afterwards, from these (`Values::decide`).
struct Values {
    pid: Option<i32>,
    pidfile: Option<PathBuf>,
    name: Option<String>,
    user: Option<u32>,
    include_children: bool,
    interval: Duration,
    memory: MemoryKind,
    threshold: SizeOrPercent,
    critical: Option<SizeOrPercent>,
    memory_limit: Option<u64>,
    sustain: Duration,
    drain_timeout: Duration,
    min_drain: Duration,
    idle_sustain: Duration,
    /// `None` for `none`.
    kms_url: Option<SecretUrl>,
    janus_url: Option<url::Url>,
    janus_secret: Option<Secret>,
    janus_secret_file: Option<(PathBuf, Secret)>,
    janus_poll: Duration,
    janus_drain_switch: bool,
    sessions_url: Option<Endpoint>,
    sessions_file: Option<Endpoint>,
    sessions_poll: Duration,
    /// The file, and the URL it holds (`None` for `none`).
    kms_url_file: Option<(PathBuf, Option<SecretUrl>)>,
    kms_ping_interval: Duration,
    kms_timeout: Duration,
    kms_failures: u32,
    kms_hang_timeout: Duration,
    kms_gc_period: Duration,
    memory_source: MemoryFrom,
    listen: SocketAddr,
    agent_listen: Option<SocketAddr>,
    agent_weight: AgentWeight,
    on_recycle: RecycleAction,
    recycle_retry: Duration,
    history: Duration,
    shutdown_delay: Duration,
    admin_token: Option<Token>,
    admin_token_file: Option<(PathBuf, Token)>,
    log_format: LogFormat,
}

impl Values {
    /// Parses every flag, in the order `--help` lists them.
    fn parse(flags: &WatchFlags, check: &Checker) -> Result<Values, FlagError> {
        // Every field by name, no `..`: a flag added to WatchFlags but not parsed here is an
        // unused binding, which the build refuses (clippy -D warnings).
        let WatchFlags {
            pid,
            pidfile,
            name,
            user,
            include_children,
            interval,
            memory,
            threshold,
            critical,
            memory_limit,
            sustain,
            drain_timeout,
            min_drain,
            idle_sustain,
            kms_url,
            janus_url,
            janus_secret,
            janus_secret_file,
            janus_poll,
            janus_drain_switch,
            sessions_url,
            sessions_file,
            sessions_poll,
            kms_url_file,
            kms_ping_interval,
            kms_timeout,
            kms_failures,
            kms_hang_timeout,
            kms_gc_period,
            memory_source,
            listen,
            agent_listen,
            agent_weight,
            on_recycle,
            recycle_retry,
            history,
            shutdown_delay,
            admin_token,
            admin_token_file,
            log_format,
        } = flags;
        let size_or_percent = |id, text: &str| check.unit(id, text, units::parse_size_or_percent);
        Ok(Values {
            pid: pid.as_deref().map(|t| check.pid(t)).transpose()?,
            pidfile: pidfile.as_deref().map(|p| check.pidfile(p)).transpose()?,
            name: name.as_deref().map(|t| check.name(t)).transpose()?,
            user: user.as_deref().map(|t| check.user(t)).transpose()?,
            include_children: include_children
                .as_deref()
                .map(|t| check.boolean("include_children", t))
                .transpose()?
                .unwrap_or(false),
            interval: check.duration("interval", interval)?,
            memory: check.choice("memory", memory)?,
            threshold: size_or_percent("threshold", threshold)?,
            critical: critical
                .as_deref()
                .map(|t| size_or_percent("critical", t))
                .transpose()?,
            memory_limit: memory_limit
                .as_deref()
                .map(|t| check.unit("memory_limit", t, units::parse_size))
                .transpose()?,
            sustain: check.duration("sustain", sustain)?,
            drain_timeout: check.duration("drain_timeout", drain_timeout)?,
            min_drain: check.duration("min_drain", min_drain)?,
            idle_sustain: check.duration("idle_sustain", idle_sustain)?,
            kms_url: check.kms_url("kms_url", kms_url, &SecretUrl::redact(kms_url))?,
            janus_url: janus_url
                .as_deref()
                .map(|t| check.janus_url(t))
                .transpose()?,
            janus_secret: janus_secret
                .as_deref()
                .map(|t| check.janus_secret("janus_secret", t))
                .transpose()?,
            janus_secret_file: janus_secret_file
                .as_ref()
                .map(|path| {
                    let text = check.secret_file("janus_secret_file", path)?;
                    Ok((
                        path.clone(),
                        check.janus_secret("janus_secret_file", &text)?,
                    ))
                })
                .transpose()?,
            janus_poll: check.duration("janus_poll", janus_poll)?,
            janus_drain_switch: janus_drain_switch
                .as_deref()
                .map(|t| check.boolean("janus_drain_switch", t))
                .transpose()?
                .unwrap_or(true),
            sessions_url: sessions_url
                .as_deref()
                .map(|text| {
                    Endpoint::url(text).map_err(|problem| {
                        check.error("sessions_url", &SecretUrl::redact(text), &problem)
                    })
                })
                .transpose()?,
            sessions_file: sessions_file
                .as_ref()
                .map(|path| {
                    Endpoint::file(path).map_err(|problem| {
                        check.error("sessions_file", &path.display().to_string(), &problem)
                    })
                })
                .transpose()?,
            sessions_poll: check.duration("sessions_poll", sessions_poll)?,
            kms_url_file: kms_url_file
                .as_ref()
                .map(|path| {
                    let text = check.secret_file("kms_url_file", path)?;
                    // A URL read from a file is never echoed: it may hold a password.
                    let url = check.kms_url("kms_url_file", &text, &path.display().to_string())?;
                    Ok((path.clone(), url))
                })
                .transpose()?,
            kms_ping_interval: check.duration("kms_ping_interval", kms_ping_interval)?,
            kms_timeout: check.duration("kms_timeout", kms_timeout)?,
            kms_failures: check.failures(kms_failures)?,
            kms_hang_timeout: check.duration("kms_hang_timeout", kms_hang_timeout)?,
            kms_gc_period: check.duration("kms_gc_period", kms_gc_period)?,
            memory_source: check.choice("memory_source", memory_source)?,
            listen: check.address("listen", listen, "0.0.0.0:8899")?,
            agent_listen: agent_listen
                .as_deref()
                .map(|t| check.address("agent_listen", t, "0.0.0.0:8898"))
                .transpose()?,
            agent_weight: check.choice("agent_weight", agent_weight)?,
            on_recycle: RecycleAction::parse(on_recycle)
                .map_err(|problem| check.error("on_recycle", on_recycle, &problem))?,
            recycle_retry: check.duration("recycle_retry", recycle_retry)?,
            history: check.duration("history", history)?,
            shutdown_delay: check.shutdown_delay(shutdown_delay)?,
            admin_token: admin_token
                .as_deref()
                .map(|t| check.token("admin_token", t))
                .transpose()?,
            admin_token_file: admin_token_file
                .as_ref()
                .map(|path| {
                    let text = check.secret_file("admin_token_file", path)?;
                    Ok((path.clone(), check.token("admin_token_file", &text)?))
                })
                .transpose()?,
            log_format: check.choice("log_format", log_format)?,
        })
    }

    /// Which integrations run, and whether the values given fit together: one media server,
    /// one target, one source of each secret, a threshold the limit allows.
    fn decide(
        self,
        flags: &WatchFlags,
        check: &Checker,
        host_total_bytes: u64,
    ) -> Result<Config, FlagError> {
        let custom = self.custom(flags, check)?;
        let admin_token = check.one_of(
            ("admin_token", self.admin_token),
            ("admin_token_file", self.admin_token_file),
        )?;
        let janus_secret = check.one_of(
            ("janus_secret", self.janus_secret),
            ("janus_secret_file", self.janus_secret_file),
        )?;
        if let Some((path, _)) = &self.kms_url_file
            && check.given("kms_url")
        {
            return Err(check.both(
                "kms_url",
                "kms_url_file",
                &format!(
                    "only one may be given (keep --kms-url-file {} for a URL with a secret)",
                    path.display()
                ),
            ));
        }
        let janus = match self.janus_url {
            None => None,
            Some(url) => {
                if (check.given("kms_url") && self.kms_url.is_some()) || self.kms_url_file.is_some()
                {
                    return Err(check.both(
                        "janus_url",
                        "kms_url",
                        "memprobe watches one media server: give one of them",
                    ));
                }
                if self.memory_source == MemoryFrom::Kms {
                    return Err(check.error(
                        "memory_source",
                        "kms",
                        "reads KMS, but --janus-url watches Janus (try --memory-source proc)",
                    ));
                }
                let (secret, secret_file) = match janus_secret {
                    Some((secret, file)) => (Some(secret), file),
                    None => (None, None),
                };
                Some(JanusConfig {
                    url,
                    secret,
                    secret_file,
                    poll: self.janus_poll,
                    timeout: self.janus_poll.min(Duration::from_secs(3)),
                    drain_switch: self.janus_drain_switch,
                    failures: self.kms_failures,
                    hang_timeout: self.kms_hang_timeout,
                })
            }
        };
        let default_name = if janus.is_some() {
            JANUS_NAME
        } else {
            DEFAULT_NAME
        };
        let target = check.target(self.pid, self.pidfile, self.name, default_name)?;
        if let (Some(text), false) = (&flags.user, matches!(target, TargetSpec::Name(_))) {
            let problem = "narrows --name only: a pid is already one process (drop --user)";
            return Err(check.error("user", text.trim(), problem));
        }
        let limit = crate::limit::choose(self.memory_limit, None, host_total_bytes);
        flags.check_sizes(check, self.threshold, self.critical, limit)?;
        let kms_off = match (&janus, &custom) {
            (Some(_), _) => Some("kms: off, since --janus-url watches Janus".to_string()),
            (None, Some(_)) => Some(
                "kms: off, since --sessions-url or --sessions-file counts the sessions".to_string(),
            ),
            (None, None) => check.kms_not_asked(&target),
        };
        let (kms_url, kms_url_file) = match self.kms_url_file {
            Some((path, url)) => (url, Some(path)),
            None => (self.kms_url, None),
        };
        let kms = match (&kms_off, kms_url) {
            (None, Some(url)) => Some(KmsConfig {
                url,
                url_file: kms_url_file,
                ping_interval: self.kms_ping_interval,
                timeout: self.kms_timeout,
                failures: self.kms_failures,
                hang_timeout: self.kms_hang_timeout,
                gc_period: self.kms_gc_period,
            }),
            _ => None,
        };
        if self.memory_source == MemoryFrom::Kms {
            check.kms_source(flags, kms.is_some(), self.memory)?;
        }
        check.signal_possible(&self.on_recycle, &target, self.memory_source)?;
        let (admin_token, admin_token_file) = match admin_token {
            Some((token, file)) => (Some(token), file),
            None => (None, None),
        };
        Ok(Config {
            target,
            user: self.user,
            include_children: self.include_children,
            interval: self.interval,
            memory: self.memory,
            threshold: self.threshold,
            critical: self.critical,
            memory_limit: self.memory_limit,
            sustain: self.sustain,
            idle_sustain: self.idle_sustain,
            kms,
            kms_off,
            janus,
            custom,
            memory_source: self.memory_source,
            drain_timeout: self.drain_timeout,
            min_drain: self.min_drain,
            listen: self.listen,
            agent_listen: self.agent_listen,
            agent_weight: self.agent_weight,
            on_recycle: self.on_recycle,
            recycle_retry: self.recycle_retry,
            shutdown_delay: self.shutdown_delay,
            history: self.history,
            admin_token,
            admin_token_file,
            log_format: self.log_format,
        })
    }
}

impl Values {
    /// `--sessions-url` or `--sessions-file`, for any other server: it needs its process
    /// named, and is refused beside Kurento's or Janus's settings.
    fn custom(
        &self,
        flags: &WatchFlags,
        check: &Checker,
    ) -> Result<Option<CustomSettings>, FlagError> {
        let (id, from) = match (&self.sessions_url, &self.sessions_file) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                let problem = "only one may be given (try just --sessions-url http://127.0.0.1:3000/sessions)";
                return Err(check.both("sessions_url", "sessions_file", problem));
            }
            (Some(url), None) => ("sessions_url", url.clone()),
            (None, Some(file)) => ("sessions_file", file.clone()),
        };
        let kms_asked = check.given("kms_url") && flags.kms_url.trim() != "none";
        for (other, set) in [
            ("kms_url", kms_asked),
            ("kms_url_file", check.given("kms_url_file")),
            ("janus_url", check.given("janus_url")),
        ] {
            if set {
                return Err(check.both(
                    id,
                    other,
                    "memprobe watches one media server: give one of them",
                ));
            }
        }
        if self.memory_source == MemoryFrom::Kms {
            let problem = "reads KMS, but --sessions-url or --sessions-file counts another server's sessions (try --memory-source proc)";
            return Err(check.error("memory_source", "kms", problem));
        }
        if !["pid", "pidfile", "name"]
            .into_iter()
            .any(|f| check.given(f))
        {
            return Err(FlagError {
                origin: check.origin(id),
                value: None,
                problem: "needs the server's process too (try --name my-sfu, --pid or --pidfile)"
                    .into(),
            });
        }
        Ok(Some(CustomSettings {
            from,
            poll: self.sessions_poll,
            timeout: self.sessions_poll.min(Duration::from_secs(3)),
            failures: self.kms_failures,
            hang_timeout: self.kms_hang_timeout,
        }))
    }
}

impl WatchFlags {
    /// Every value parsed first, then combined: see `Values`.
    fn validate(self, check: &Checker, host_total_bytes: u64) -> Result<Config, FlagError> {
        Values::parse(&self, check)?.decide(&self, check, host_total_bytes)
    }

    /// Threshold and critical, resolved against the limit: the threshold is more than 0 and
    /// within the limit, and critical is above the threshold. Checked again for every
    /// incarnation's own cgroup limit by [`check_sizes`].
    fn check_sizes(
        &self,
        check: &Checker,
        threshold: SizeOrPercent,
        critical: Option<SizeOrPercent>,
        limit: MemoryLimit,
    ) -> Result<(), FlagError> {
        match check_sizes(threshold, critical, limit) {
            Ok(()) => Ok(()),
            Err(SizeProblem::ThresholdZero) => {
                let (id, value) = match &self.memory_limit {
                    Some(text) => ("memory_limit", text.as_str()),
                    None => ("threshold", self.threshold.as_str()),
                };
                let problem = format!(
                    "leaves a threshold of 0 B ({threshold} of {}) (try --memory-limit 2Gi)",
                    Bytes(limit.bytes)
                );
                Err(check.error(id, value, &problem))
            }
            Err(SizeProblem::ThresholdOverLimit { threshold_bytes }) => {
                let problem = format!(
                    "is {} , over the memory limit {} ({}): it could never be reached (try 80%)",
                    Bytes(threshold_bytes),
                    Bytes(limit.bytes),
                    limit.source.as_str()
                );
                Err(check.error("threshold", &self.threshold, &problem.replace(" ,", ",")))
            }
            Err(SizeProblem::CriticalNotAboveThreshold {
                threshold_bytes,
                critical_bytes,
            }) => {
                let value = self.critical.as_deref().unwrap_or_default();
                let problem = format!(
                    "is {}, not above the threshold {} ({}): every sample over it would \
                     recycle at once (try 95%)",
                    Bytes(critical_bytes),
                    Bytes(threshold_bytes),
                    self.threshold.trim()
                );
                Err(check.error("critical", value, &problem))
            }
        }
    }
}

/// Why a threshold and a critical level cannot work under a memory limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeProblem {
    ThresholdZero,
    ThresholdOverLimit {
        threshold_bytes: u64,
    },
    CriticalNotAboveThreshold {
        threshold_bytes: u64,
        critical_bytes: u64,
    },
}

/// Checks a threshold and a critical level once resolved against `limit`.
pub fn check_sizes(
    threshold: SizeOrPercent,
    critical: Option<SizeOrPercent>,
    limit: MemoryLimit,
) -> Result<(), SizeProblem> {
    let threshold_bytes = threshold.resolve(limit.bytes);
    if threshold_bytes == 0 {
        return Err(SizeProblem::ThresholdZero);
    }
    if threshold_bytes > limit.bytes {
        return Err(SizeProblem::ThresholdOverLimit { threshold_bytes });
    }
    if let Some(critical) = critical {
        let critical_bytes = critical.resolve(limit.bytes);
        if critical_bytes <= threshold_bytes {
            return Err(SizeProblem::CriticalNotAboveThreshold {
                threshold_bytes,
                critical_bytes,
            });
        }
    }
    Ok(())
}

struct Checker<'a> {
    matches: &'a ArgMatches,
    command: &'a clap::Command,
}

impl Checker<'_> {
    /// `--min-drain` or `MEMPROBE_MIN_DRAIN`, whichever the value came from; the variable's
    /// name is clap's own.
    fn origin(&self, id: &str) -> String {
        let arg = self.command.get_arguments().find(|a| a.get_id() == id);
        let env = arg.and_then(|a| a.get_env()).map(|e| e.to_string_lossy());
        match (self.matches.value_source(id), env) {
            (Some(ValueSource::EnvVariable), Some(env)) => env.into_owned(),
            _ => format!("--{}", id.replace('_', "-")),
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
        parse: impl Fn(&str) -> Result<T, UnitError>,
    ) -> Result<T, FlagError> {
        parse(text).map_err(|e| self.error(id, text, &e.to_string()))
    }

    fn duration(&self, id: &str, text: &str) -> Result<Duration, FlagError> {
        let range = match id {
            "min_drain" | "shutdown_delay" => DurationRange::OR_ZERO,
            _ => DurationRange::STANDARD,
        };
        self.unit(id, text, |t| range.parse(t))
    }

    /// `--user`: a uid, or a user name as this system resolves it.
    fn user(&self, text: &str) -> Result<u32, FlagError> {
        let text = text.trim();
        if let Ok(uid) = text.parse::<u32>() {
            return Ok(uid);
        }
        uzers::get_user_by_name(text)
            .map(|u| u.uid())
            .ok_or_else(|| {
                self.error(
                    "user",
                    text,
                    "is not a user on this system (try a numeric uid, e.g. --user 1000)",
                )
            })
    }

    /// Whether a flag was set (on the command line or in the environment), not defaulted.
    fn given(&self, id: &str) -> bool {
        matches!(
            self.matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    }

    /// Two flags that exclude each other, both given.
    fn both(&self, one: &str, other: &str, problem: &str) -> FlagError {
        FlagError {
            origin: format!("{} and {}", self.origin(one), self.origin(other)),
            value: None,
            problem: problem.into(),
        }
    }

    /// A value given directly or through a file, never both; with the file it came from.
    fn one_of<T>(
        &self,
        (flag_id, flag): (&str, Option<T>),
        (file_id, file): (&str, Option<(PathBuf, T)>),
    ) -> Result<Option<(T, Option<PathBuf>)>, FlagError> {
        match (flag, file) {
            (Some(_), Some(_)) => {
                Err(self.both(flag_id, file_id, "only one may be given (keep the file)"))
            }
            (Some(value), None) => Ok(Some((value, None))),
            (None, Some((path, value))) => Ok(Some((value, Some(path)))),
            (None, None) => Ok(None),
        }
    }

    /// The value a file named by a flag holds; the error names the path, never the content.
    fn secret_file(&self, id: &str, path: &Path) -> Result<String, FlagError> {
        read_secret_file(path)
            .map_err(|problem| self.error(id, &path.display().to_string(), &problem))
    }

    /// A bearer token; never echoed in an error.
    fn token(&self, id: &str, text: &str) -> Result<Token, FlagError> {
        Token::new(text).map_err(|problem| FlagError {
            origin: self.origin(id),
            value: None,
            problem,
        })
    }

    /// Janus's admin secret; never echoed in an error.
    fn janus_secret(&self, id: &str, text: &str) -> Result<Secret, FlagError> {
        let text = text.trim();
        let problem = if text.is_empty() {
            "is empty (try the admin_secret of janus.jcfg)"
        } else if text.chars().any(char::is_control) {
            "holds control characters (try the admin_secret of janus.jcfg)"
        } else {
            return Ok(Secret::new(text));
        };
        Err(FlagError {
            origin: self.origin(id),
            value: None,
            problem: problem.into(),
        })
    }

    /// A `ws://` URL for KMS, or `none`; `shown` is what an error may show of it.
    fn kms_url(&self, id: &str, text: &str, shown: &str) -> Result<Option<SecretUrl>, FlagError> {
        let text = text.trim();
        if text == "none" {
            return Ok(None);
        }
        SecretUrl::parse_ws(text)
            .map(Some)
            .map_err(|problem| self.error(id, shown, &problem))
    }

    /// `--janus-url`: Janus's admin API, over http://.
    fn janus_url(&self, text: &str) -> Result<url::Url, FlagError> {
        url::Url::parse(text.trim())
            .ok()
            .filter(|u| u.scheme() == "http" && u.host_str().is_some_and(|h| !h.is_empty()))
            .ok_or_else(|| {
                self.error(
                    "janus_url",
                    &SecretUrl::redact(text),
                    "is not an http:// URL (try http://127.0.0.1:7088/admin)",
                )
            })
    }

    /// An address to listen on.
    fn address(&self, id: &str, text: &str, example: &str) -> Result<SocketAddr, FlagError> {
        text.trim()
            .parse()
            .map_err(|_| self.error(id, text, &format!("is not an address:port (try {example})")))
    }

    /// `--shutdown-delay`: within what a kubelet waits after SIGTERM.
    fn shutdown_delay(&self, text: &str) -> Result<Duration, FlagError> {
        let delay = self.duration("shutdown_delay", text)?;
        if delay > MAX_SHUTDOWN_DELAY {
            let problem = "is over 5m: a kubelet kills a pod 30s after SIGTERM by default (try 1s)";
            return Err(self.error("shutdown_delay", text, problem));
        }
        Ok(delay)
    }

    /// `--pid`: a process id, not a kernel thread's.
    fn pid(&self, text: &str) -> Result<i32, FlagError> {
        let pid = match text.trim().parse::<i32>() {
            Ok(pid) if pid > 0 => pid,
            _ => return Err(self.error("pid", text, "is not a process id (try --pid 1234)")),
        };
        if crate::sources::proc::target::is_kernel_thread(pid) {
            let problem = "is a kernel thread, which has no memory of its own to watch \
                           (try the pid of a server process)";
            return Err(self.error("pid", text, problem));
        }
        Ok(pid)
    }

    /// `--pidfile`: any path, since the file may not be written yet, but not one that names a
    /// FIFO, a device or a directory.
    fn pidfile(&self, path: &Path) -> Result<PathBuf, FlagError> {
        match crate::files::not_a_regular_file(path) {
            None => Ok(path.to_owned()),
            Some(kind) => Err(self.error(
                "pidfile",
                &path.display().to_string(),
                &format!(
                    "is {kind}, not a regular file (try the file the server writes its pid to)"
                ),
            )),
        }
    }

    /// `--name`: a process name, as comm or a basename can be.
    fn name(&self, text: &str) -> Result<String, FlagError> {
        if text.is_empty() || text.contains('/') || text.len() > 255 {
            let shown = units::clip(text, 64);
            return Err(self.error(
                "name",
                &shown,
                "is not a process name (try kurento-media-server)",
            ));
        }
        Ok(text.to_string())
    }

    /// A signal needs a pid, and with `--pid` the permission to signal it (signal 0 tells).
    fn signal_possible(
        &self,
        action: &RecycleAction,
        target: &TargetSpec,
        memory_source: MemoryFrom,
    ) -> Result<(), FlagError> {
        let RecycleAction::Signal(_) = action else {
            return Ok(());
        };
        let value = action.to_string();
        if memory_source == MemoryFrom::Kms {
            let problem = "needs a process, but --memory-source kms has no pid (use exec:, or --memory-source proc)";
            return Err(self.error("on_recycle", &value, problem));
        }
        if let TargetSpec::Pid(pid) = target {
            let pid = nix::unistd::Pid::from_raw(*pid);
            if let Err(nix::errno::Errno::EPERM) = nix::sys::signal::kill(pid, None) {
                let problem = format!(
                    "may not signal process {pid}: run memprobe as its user, or grant CAP_KILL"
                );
                return Err(self.error("on_recycle", &value, &problem));
            }
        }
        Ok(())
    }

    /// A boolean as people write it, in a flag or a variable.
    fn boolean(&self, id: &str, text: &str) -> Result<bool, FlagError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" | "y" | "t" => Ok(true),
            "0" | "false" | "no" | "off" | "n" | "f" => Ok(false),
            _ => Err(self.error(
                id,
                text,
                "is not a boolean (try true or false; 1/0, yes/no and on/off work too)",
            )),
        }
    }

    /// One of a `ValueEnum`'s names: `is not rss, anon or pss (try rss)`.
    fn choice<T: ValueEnum>(&self, id: &str, text: &str) -> Result<T, FlagError> {
        T::from_str(text.trim(), true).map_err(|_| {
            let names: Vec<String> = T::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value())
                .map(|p| p.get_name().to_string())
                .collect();
            let listed = match names.split_last() {
                Some((last, [])) => last.clone(),
                Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                None => String::new(),
            };
            let example = names.first().cloned().unwrap_or_default();
            self.error(id, text, &format!("is not {listed} (try {example})"))
        })
    }

    /// `--kms-failures`: failed pings in a row that stall the server.
    fn failures(&self, text: &str) -> Result<u32, FlagError> {
        match text.trim().parse::<u32>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(n),
            _ => {
                let problem = "is not a count from 1 to 1000 (try 3)";
                Err(self.error("kms_failures", text, problem))
            }
        }
    }

    /// A target picked by `--pid`, `--pidfile` or a `--name` other than KMS's is not KMS:
    /// without a `--kms-url` (or its file), memprobe does not try to reach one.
    fn kms_not_asked(&self, target: &TargetSpec) -> Option<String> {
        if self.given("kms_url") || self.given("kms_url_file") {
            return None;
        }
        match target {
            TargetSpec::Name(name) if name == DEFAULT_NAME => None,
            other => Some(format!(
                "kms: off, since the target ({other}) is not KMS; --kms-url turns it on"
            )),
        }
    }

    /// `--memory-source kms` reads memory from KMS itself: there is no process to pick.
    fn kms_source(
        &self,
        flags: &WatchFlags,
        kms_on: bool,
        memory: MemoryKind,
    ) -> Result<(), FlagError> {
        for id in ["pid", "pidfile", "name", "user"] {
            if self.given(id) {
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
        if flags.include_children.is_some() {
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
        if !kms_on {
            let problem = "needs the Kurento integration: --kms-url is none (try --kms-url ws://127.0.0.1:8888/kurento)";
            return Err(self.error("memory_source", "kms", problem));
        }
        Ok(())
    }

    /// The one target given, or a process of the default name.
    fn target(
        &self,
        pid: Option<i32>,
        pidfile: Option<PathBuf>,
        name: Option<String>,
        default_name: &str,
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
        Ok(match (pid, pidfile, name) {
            (Some(pid), _, _) => TargetSpec::Pid(pid),
            (_, Some(path), _) => TargetSpec::Pidfile(path),
            (_, _, name) => TargetSpec::Name(name.unwrap_or_else(|| default_name.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GI: u64 = 1 << 30;

    fn sidecar(args: &[&str]) -> Result<Config, String> {
        let argv = std::iter::once("memprobe").chain(args.iter().copied());
        match parse_with(argv, 16 * GI) {
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
        assert_eq!(c.shutdown_delay, Duration::from_secs(1));
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
            "--interval: '0s' is outside 10ms to 7days (try 5s)"
        );
    }

    #[test]
    fn a_value_starting_with_a_dash_reaches_validation() {
        assert_eq!(
            sidecar(&["--threshold", "-5MiB"]).unwrap_err(),
            "--threshold: '-5MiB' is not a size or a percentage (try 1536Mi, 1.5GiB or 80%)"
        );
        assert!(
            sidecar(&["--interval", "-1s"])
                .unwrap_err()
                .starts_with("--interval: '-1s'")
        );
    }

    #[test]
    fn every_duration_is_bounded() {
        for flag in [
            "--interval",
            "--sustain",
            "--idle-sustain",
            "--drain-timeout",
            "--kms-ping-interval",
            "--kms-timeout",
            "--kms-hang-timeout",
            "--kms-gc-period",
        ] {
            for value in ["1ns", "200000000000y", "8days"] {
                let e = sidecar(&[flag, value]).unwrap_err();
                assert!(
                    e.starts_with(&format!("{flag}: '{value}' is outside 10ms to 7days")),
                    "{e}"
                );
            }
        }
        assert_eq!(
            sidecar(&["--min-drain", "0s"]).unwrap().min_drain,
            Duration::ZERO
        );
        assert_eq!(
            sidecar(&["--shutdown-delay", "0s"]).unwrap().shutdown_delay,
            Duration::ZERO
        );
        assert!(sidecar(&["--shutdown-delay", "1h"]).is_err());
    }

    #[test]
    fn every_value_is_checked_whether_or_not_anything_uses_it() {
        // A target that is not KMS: KMS, Janus, the agent and the admin API are all off.
        let own = std::process::id().to_string();
        let off = sidecar(&["--pid", &own]).unwrap();
        assert!(off.kms.is_none() && off.janus.is_none() && off.agent_listen.is_none());
        for (flag, value) in [
            ("--kms-timeout", "300000000000y"),
            ("--kms-ping-interval", "9days"),
            ("--kms-failures", "0"),
            ("--kms-hang-timeout", "1ns"),
            ("--kms-gc-period", "9days"),
            ("--janus-poll", "9days"),
            ("--janus-drain-switch", "maybe"),
            ("--sessions-url", "https://sfu/stats"),
            ("--sessions-poll", "9days"),
            ("--janus-secret", " "),
            ("--janus-secret-file", "/dev/zero"),
            ("--agent-weight", "heavy"),
            ("--recycle-retry", "0s"),
        ] {
            let e = sidecar(&["--pid", &own, flag, value]).unwrap_err();
            assert!(
                e.starts_with(&format!("{flag}: ")) && e.contains("(try "),
                "{flag} {value:?} is refused with its integration off, naming it: {e}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "janusoverlord").unwrap();
        let secret = secret.to_str().unwrap();
        assert!(
            sidecar(&["--pid", &own, "--janus-secret-file", secret]).is_ok(),
            "a good value of an integration that is off is accepted"
        );
        assert_eq!(
            sidecar(&[
                "--pid",
                &own,
                "--janus-secret",
                "x",
                "--janus-secret-file",
                secret
            ])
            .unwrap_err(),
            "--janus-secret and --janus-secret-file: only one may be given (keep the file)",
            "two sources of one secret are refused with Janus off too"
        );
    }

    #[test]
    fn include_children_is_a_flag_or_a_boolean() {
        assert!(!sidecar(&[]).unwrap().include_children);
        assert!(sidecar(&["--include-children"]).unwrap().include_children);
        assert!(
            sidecar(&["--include-children", "--pid", "4194303"])
                .unwrap()
                .include_children
        );
        assert!(
            !sidecar(&["--include-children=off"])
                .unwrap()
                .include_children
        );
        assert!(
            sidecar(&["--include-children=maybe"])
                .unwrap_err()
                .starts_with("--include-children: 'maybe' is not a boolean")
        );
    }

    #[test]
    fn a_target_that_is_not_kms_needs_no_kms() {
        for args in [
            &["--pid", "4194303"][..],
            &["--pidfile", "/run/x.pid"],
            &["--name", "python3"],
        ] {
            let c = sidecar(args).unwrap();
            assert_eq!(c.kms, None, "{args:?}: no KMS to reach");
            assert!(c.kms_off.unwrap().starts_with("kms: off"));
        }
        let c = sidecar(&["--pid", "4194303", "--kms-url", "ws://kms:8888/kurento"]).unwrap();
        assert!(c.kms.is_some(), "a --kms-url given turns it on");
        let c = sidecar(&[]).unwrap();
        assert!(c.kms.is_some() && c.kms_off.is_none(), "KMS by default");
    }

    #[test]
    fn an_admin_token_is_checked_and_never_echoed() {
        assert_eq!(sidecar(&[]).unwrap().admin_token, None);
        let c = sidecar(&["--admin-token", "0123456789abcdef0123"]).unwrap();
        assert!(c.admin_token.is_some());
        let e = sidecar(&["--admin-token", "hunter2"]).unwrap_err();
        assert_eq!(
            e,
            "--admin-token: is shorter than 16 characters (try: openssl rand -hex 32)"
        );
        assert!(!e.contains("hunter2"));
    }

    #[test]
    fn janus_watches_janus_and_only_janus() {
        let c = sidecar(&["--janus-url", "http://127.0.0.1:7088/admin"]).unwrap();
        assert_eq!(
            c.target,
            TargetSpec::Name("janus".into()),
            "the default name"
        );
        assert_eq!(c.kms, None, "no KMS beside Janus");
        let janus = c.janus.unwrap();
        assert_eq!(janus.poll, Duration::from_secs(5));
        assert!(janus.drain_switch);
        assert!(
            sidecar(&[
                "--janus-url",
                "http://127.0.0.1:7088/admin",
                "--kms-url",
                "ws://kms:8888/kurento"
            ])
            .unwrap_err()
            .contains("one media server")
        );
        let c = sidecar(&[
            "--janus-url",
            "http://127.0.0.1:7088/admin",
            "--janus-secret",
            "janusoverlord",
        ])
        .unwrap();
        assert!(!format!("{c:?}").contains("janusoverlord"), "never shown");
        assert!(sidecar(&["--janus-url", "ws://x/admin"]).is_err());
    }

    #[test]
    fn any_other_server_counts_its_sessions_at_a_url_or_in_a_file() {
        let url = "http://127.0.0.1:3000/stats#/rooms/active";
        let c = sidecar(&["--name", "my-sfu", "--sessions-url", url]).unwrap();
        let custom = c.custom.expect("on");
        assert_eq!(custom.from.shown(), url);
        assert_eq!(custom.poll, Duration::from_secs(5));
        assert_eq!(
            (custom.failures, custom.timeout),
            (3, Duration::from_secs(3))
        );
        assert_eq!(c.kms, None, "no KMS beside it");
        let file = ["--name", "my-sfu", "--sessions-file", "/dev/zero"];
        assert!(
            sidecar(&file)
                .unwrap_err()
                .starts_with("--sessions-file: '/dev/zero' is not a regular file")
        );
        for (args, error) in [
            (
                &["--sessions-url", url][..],
                "--sessions-url: needs the server's process too (try --name my-sfu, --pid or --pidfile)",
            ),
            (
                &["--name", "x", "--sessions-url", "https://h/s"],
                "--sessions-url: 'https://h/s' is not an http:// URL (try http://127.0.0.1:3000/sessions, or http://127.0.0.1:3000/stats#/rooms/active for a JSON field)",
            ),
            (
                &[
                    "--name",
                    "x",
                    "--sessions-url",
                    url,
                    "--kms-url",
                    "ws://kms:8888/kurento",
                ],
                "--sessions-url and --kms-url: memprobe watches one media server: give one of them",
            ),
            (
                &[
                    "--name",
                    "x",
                    "--sessions-url",
                    url,
                    "--janus-url",
                    "http://127.0.0.1:7088/admin",
                ],
                "--sessions-url and --janus-url: memprobe watches one media server: give one of them",
            ),
            (
                &[
                    "--name",
                    "x",
                    "--sessions-url",
                    url,
                    "--sessions-file",
                    "/tmp/n",
                ],
                "--sessions-url and --sessions-file: only one may be given (try just --sessions-url http://127.0.0.1:3000/sessions)",
            ),
            (
                &[
                    "--name",
                    "x",
                    "--sessions-url",
                    url,
                    "--sessions-poll",
                    "soon",
                ],
                "--sessions-poll: 'soon' is not a duration (try 250ms, 5s, 5m or 1h30m)",
            ),
        ] {
            assert_eq!(sidecar(args).unwrap_err(), error, "{args:?}");
        }
        assert!(sidecar(&["--name", "x", "--sessions-url", url, "--kms-url", "none"]).is_ok());
    }

    #[test]
    fn a_user_narrows_a_name() {
        assert_eq!(sidecar(&["--user", "1000"]).unwrap().user, Some(1000));
        assert_eq!(sidecar(&["--user", "root"]).unwrap().user, Some(0));
        assert_eq!(
            sidecar(&["--user", "no-such-user-here"]).unwrap_err(),
            "--user: 'no-such-user-here' is not a user on this system (try a numeric uid, e.g. --user 1000)"
        );
        assert!(
            sidecar(&["--user", "0", "--pid", "4194303"])
                .unwrap_err()
                .starts_with("--user: '0' narrows --name only")
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
        assert_eq!(kms.url.expose(), "ws://127.0.0.1:8888/kurento");
        assert_eq!(kms.ping_interval, Duration::from_secs(10));
        assert_eq!(kms.timeout, Duration::from_secs(3));
        assert_eq!(kms.failures, 3);
        assert_eq!(kms.hang_timeout, Duration::from_secs(60));
        assert_eq!(c.idle_sustain, Duration::from_secs(60));
        assert_eq!(sidecar(&["--kms-url", "none"]).unwrap().kms, None);
        assert_eq!(
            sidecar(&["--kms-url", "http://kms:8888/kurento"]).unwrap_err(),
            "--kms-url: 'http://kms:8888/kurento' is not a ws:// URL (try ws://127.0.0.1:8888/kurento, or none)"
        );
        assert_eq!(
            sidecar(&["--kms-url", "ws://kms:70000/kurento"]).unwrap_err(),
            "--kms-url: 'ws://kms:70000/kurento' has a port over 65535 (try ws://127.0.0.1:8888/kurento, or none)"
        );
        assert!(
            sidecar(&["--kms-failures", "0"])
                .unwrap_err()
                .starts_with("--kms-failures: '0'")
        );
    }

    #[test]
    fn a_kms_url_with_a_secret_is_never_echoed() {
        let e = sidecar(&["--kms-url", "http://admin:S3cr3t@kms/kurento?token=X"]).unwrap_err();
        assert!(!e.contains("S3cr3t") && !e.contains("token=X"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kms-url");
        std::fs::write(&path, "ws://admin:S3cr3t@kms:8888/kurento?token=X\n").unwrap();
        let c = sidecar(&["--kms-url-file", path.to_str().unwrap()]).unwrap();
        let url = c.kms.unwrap().url;
        assert_eq!(url.expose(), "ws://admin:S3cr3t@kms:8888/kurento?token=X");
        assert_eq!(url.to_string(), "ws://admin:***@kms:8888/kurento?token=***");
        assert!(
            sidecar(&[
                "--kms-url-file",
                path.to_str().unwrap(),
                "--kms-url",
                "none"
            ])
            .unwrap_err()
            .starts_with("--kms-url and --kms-url-file: only one")
        );
        let e = sidecar(&["--kms-url-file", "/dev/zero"]).unwrap_err();
        assert!(e.starts_with("--kms-url-file: '/dev/zero'"), "{e}");
    }

    #[test]
    fn memory_from_kms_needs_no_process_flags() {
        let c = sidecar(&["--memory-source", "kms"]).unwrap();
        assert_eq!(c.memory_source, MemoryFrom::Kms);
        assert!(
            sidecar(&["--memory-source", "kms", "--pid", "4194303"])
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
    fn critical_must_be_above_the_threshold_once_resolved() {
        assert!(sidecar(&["--threshold", "2Gi", "--critical", "1Gi"]).is_err());
        assert!(sidecar(&["--threshold", "80%", "--critical", "95%"]).is_ok());
        let e = sidecar(&[
            "--memory-limit",
            "4Gi",
            "--threshold",
            "80%",
            "--critical",
            "1Mi",
        ])
        .unwrap_err();
        assert!(
            e.starts_with("--critical: '1Mi' is 1.00 MiB, not above the threshold 3.20 GiB (80%)"),
            "a size against a percentage is compared once resolved: {e}"
        );
        assert!(
            sidecar(&[
                "--memory-limit",
                "4Gi",
                "--threshold",
                "3Gi",
                "--critical",
                "90%"
            ])
            .is_ok()
        );
    }

    #[test]
    fn a_threshold_must_be_reachable_and_more_than_zero() {
        let e = sidecar(&["--memory-limit", "4Gi", "--threshold", "5Gi"]).unwrap_err();
        assert!(
            e.starts_with(
                "--threshold: '5Gi' is 5.00 GiB, over the memory limit 4.00 GiB (--memory-limit)"
            ),
            "{e}"
        );
        let e = sidecar(&["--threshold", "32Gi"]).unwrap_err();
        assert!(e.contains("host MemTotal"), "{e}");
        let e = sidecar(&["--memory-limit", "1"]).unwrap_err();
        assert!(
            e.starts_with("--memory-limit: '1' leaves a threshold of 0 B"),
            "{e}"
        );
    }
}
