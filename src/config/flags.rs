//! The sidecar's flags as clap reads them: text, not yet validated, each with its variable
//! (`MEMPROBE_<FLAG>`), in the order `--help` lists them. The lowest of `config`'s files: it
//! names neither `check` nor `values`, which read it.

use std::path::PathBuf;

use clap::Args;

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
    pub(super) pid: Option<String>,
    /// Watch the process whose id is in this file (re-read whenever the process is gone)
    #[arg(long, env = "MEMPROBE_PIDFILE", value_name = "PATH")]
    pub(super) pidfile: Option<PathBuf>,
    /// Watch the process with this executable, argv[0] or comm name [default: kurento-media-server]
    #[arg(
        long,
        env = "MEMPROBE_NAME",
        value_name = "NAME",
        allow_hyphen_values = true
    )]
    pub(super) name: Option<String>,
    /// With --name: match only processes of this user (a name or a uid), on a shared host
    #[arg(
        long,
        env = "MEMPROBE_USER",
        value_name = "USER",
        allow_hyphen_values = true
    )]
    pub(super) user: Option<String>,
    /// Add up the memory of the target's descendants
    #[arg(
        long,
        env = "MEMPROBE_INCLUDE_CHILDREN",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL",
        hide_possible_values = true
    )]
    pub(super) include_children: Option<String>,
    /// Time between samples
    #[arg(
        long,
        env = "MEMPROBE_INTERVAL",
        default_value = "5s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub(super) interval: String,
    /// Figure that decides: rss (resident), anon (what fragmentation inflates), pss (needs ptrace access)
    #[arg(
        long,
        env = "MEMPROBE_MEMORY",
        default_value = "rss",
        value_name = "rss|anon|pss",
        allow_hyphen_values = true
    )]
    pub(super) memory: String,
    /// Drain when memory stays over this: a size (1536Mi, 1.5GiB) or a percentage of the limit
    #[arg(
        long,
        env = "MEMPROBE_THRESHOLD",
        default_value = "80%",
        value_name = "SIZE|PERCENT",
        allow_hyphen_values = true
    )]
    pub(super) threshold: String,
    /// Recycle at once on any sample over this [default: off; 95% with --fleet kubernetes]
    #[arg(
        long,
        env = "MEMPROBE_CRITICAL",
        value_name = "SIZE|PERCENT",
        allow_hyphen_values = true
    )]
    pub(super) critical: Option<String>,
    /// Memory limit percentages are of [default: target's cgroup limit, else host MemTotal]
    #[arg(
        long,
        env = "MEMPROBE_MEMORY_LIMIT",
        value_name = "SIZE",
        allow_hyphen_values = true
    )]
    pub(super) memory_limit: Option<String>,
    /// How long memory must stay over the threshold, on every sample, before draining
    #[arg(
        long,
        env = "MEMPROBE_SUSTAIN",
        default_value = "5m",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub(super) sustain: String,
    /// Longest drain before a restart is asked for, sessions or not
    #[arg(
        long,
        env = "MEMPROBE_DRAIN_TIMEOUT",
        default_value = "1h",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub(super) drain_timeout: String,
    /// Shortest drain before a restart, even with no sessions left (balancers must stop routing)
    #[arg(
        long,
        env = "MEMPROBE_MIN_DRAIN",
        default_value = "30s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub(super) min_drain: String,
    /// With no sessions, drain once memory stays over the threshold this long
    #[arg(
        long,
        env = "MEMPROBE_IDLE_SUSTAIN",
        default_value = "60s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub(super) idle_sustain: String,
    /// Drain an instance idle for --min-drain whose memory is forecast over the threshold within this long, so it restarts in a quiet moment ('off' turns it off)
    #[arg(
        long,
        env = "MEMPROBE_RECYCLE_WHEN_IDLE_WITHIN",
        default_value = "48h",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub(super) recycle_when_idle_within: String,
    /// Kurento's JSON-RPC WebSocket, for sessions and health ('none' turns it off)
    #[arg(
        long,
        env = "MEMPROBE_KMS_URL",
        default_value = "ws://127.0.0.1:8888/kurento",
        value_name = "URL",
        allow_hyphen_values = true
    )]
    pub(super) kms_url: String,
    /// Janus's admin API, for sessions, health and its drain switch (e.g. http://127.0.0.1:7088/admin) [default: off]
    #[arg(
        long,
        env = "MEMPROBE_JANUS_URL",
        value_name = "URL",
        allow_hyphen_values = true
    )]
    pub(super) janus_url: Option<String>,
    /// Janus's admin_secret
    #[arg(
        long,
        env = "MEMPROBE_JANUS_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub(super) janus_secret: Option<String>,
    /// Read --janus-secret from this file
    #[arg(long, env = "MEMPROBE_JANUS_SECRET_FILE", value_name = "PATH")]
    pub(super) janus_secret_file: Option<PathBuf>,
    /// Time between polls of Janus's admin API
    #[arg(
        long,
        env = "MEMPROBE_JANUS_POLL",
        default_value = "5s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub(super) janus_poll: String,
    /// Turn Janus's own accept_new_sessions off when draining (a client reaching it anyway gets 472)
    #[arg(
        long,
        env = "MEMPROBE_JANUS_DRAIN_SWITCH",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub(super) janus_drain_switch: Option<String>,
    /// Any other server's session count: an http:// URL answering a number, or JSON with it at the URL's #/json/pointer [default: off]
    #[arg(
        long,
        env = "MEMPROBE_SESSIONS_URL",
        value_name = "URL",
        allow_hyphen_values = true
    )]
    pub(super) sessions_url: Option<String>,
    /// Any other server's session count, from a file that holds the number [default: off]
    #[arg(long, env = "MEMPROBE_SESSIONS_FILE", value_name = "PATH")]
    pub(super) sessions_file: Option<PathBuf>,
    /// Time between reads of --sessions-url or --sessions-file
    #[arg(
        long,
        env = "MEMPROBE_SESSIONS_POLL",
        default_value = "5s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub(super) sessions_poll: String,
    /// Opt-in: a --sessions-url or --sessions-file server stalled this long is restarted (otherwise a count that cannot be read is unknown, never a restart) [default: off]
    #[arg(
        long,
        env = "MEMPROBE_SESSIONS_HANG_TIMEOUT",
        default_value = "off",
        hide_default_value = true,
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub(super) sessions_hang_timeout: String,
    /// Read --kms-url from this file (for a URL that carries a secret)
    #[arg(long, env = "MEMPROBE_KMS_URL_FILE", value_name = "PATH")]
    pub(super) kms_url_file: Option<PathBuf>,
    /// Time between pings to KMS
    #[arg(
        long,
        env = "MEMPROBE_KMS_PING_INTERVAL",
        default_value = "10s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub(super) kms_ping_interval: String,
    /// Deadline of every request to KMS
    #[arg(
        long,
        env = "MEMPROBE_KMS_TIMEOUT",
        default_value = "3s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub(super) kms_timeout: String,
    /// Failed pings in a row after which an answering KMS is stalled (no new sessions)
    #[arg(
        long,
        env = "MEMPROBE_KMS_FAILURES",
        default_value = "3",
        value_name = "N",
        allow_hyphen_values = true
    )]
    pub(super) kms_failures: String,
    /// How long KMS may stay stalled before it is restarted
    #[arg(
        long,
        env = "MEMPROBE_KMS_HANG_TIMEOUT",
        default_value = "60s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub(super) kms_hang_timeout: String,
    /// KMS's garbageCollectorPeriod: getPipelines is never called more often than this
    #[arg(
        long,
        env = "MEMPROBE_KMS_GC_PERIOD",
        default_value = "240s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub(super) kms_gc_period: String,
    /// A KMS whose teardown does not finish this long (memprobe's own empty pipeline, or a
    /// release seen at the gate, never destroyed) is stuck: no new sessions, restart at its
    /// last listed session; off: no check
    #[arg(
        long,
        env = "MEMPROBE_KMS_TEARDOWN_TIMEOUT",
        default_value = "20s",
        value_name = "DURATION|off",
        allow_hyphen_values = true
    )]
    pub(super) kms_teardown_timeout: String,
    /// Serve KMS's WebSocket here and relay it to --kms-url: while draining, a new
    /// MediaPipeline is refused with error -32099 [default: off]
    #[arg(
        long,
        env = "MEMPROBE_KMS_GATE",
        value_name = "ADDR",
        allow_hyphen_values = true
    )]
    pub(super) kms_gate: Option<String>,
    /// Where memory figures come from: proc (/proc of a shared PID namespace) or kms (getUsedMemory)
    #[arg(
        long,
        env = "MEMPROBE_MEMORY_SOURCE",
        default_value = "proc",
        value_name = "proc|kms",
        allow_hyphen_values = true
    )]
    pub(super) memory_source: String,
    /// Address for /ready, /healthz, /livez, /status and /metrics
    #[arg(
        long,
        env = "MEMPROBE_LISTEN",
        default_value = "0.0.0.0:8899",
        value_name = "ADDR",
        allow_hyphen_values = true
    )]
    pub(super) listen: String,
    /// Address for HAProxy's agent-check (one line per connection: up, drain or down) [default: off]
    #[arg(
        long,
        env = "MEMPROBE_AGENT_LISTEN",
        value_name = "ADDR",
        allow_hyphen_values = true
    )]
    pub(super) agent_listen: Option<String>,
    /// The agent's weight for a ready instance: fixed (100%) or headroom (falls as memory
    /// fills); 1% while its drain waits for a fleet's slot
    #[arg(
        long,
        env = "MEMPROBE_AGENT_WEIGHT",
        default_value = "fixed",
        value_name = "fixed|headroom",
        allow_hyphen_values = true
    )]
    pub(super) agent_weight: String,
    /// What restarts the server at recycle: none (Kubernetes' liveness probe does), signal:TERM, or exec:COMMAND
    #[arg(
        long,
        env = "MEMPROBE_ON_RECYCLE",
        default_value = "none",
        value_name = "ACTION",
        allow_hyphen_values = true
    )]
    pub(super) on_recycle: String,
    /// Run the recycle action again if the same server is still there this long after
    #[arg(
        long,
        env = "MEMPROBE_RECYCLE_RETRY",
        default_value = "5m",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub(super) recycle_retry: String,
    /// How far back the status page (GET /) and /history.json reach (at most 2000 samples)
    #[arg(
        long,
        env = "MEMPROBE_HISTORY",
        default_value = "1h",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub(super) history: String,
    /// After SIGTERM, keep answering (/ready 503) this long before closing the port
    #[arg(
        long,
        env = "MEMPROBE_SHUTDOWN_DELAY",
        default_value = "1s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub(super) shutdown_delay: String,
    /// Bearer token that allows POST/DELETE /drain and GET /drain?wait [default: no admin API]
    #[arg(
        long,
        env = "MEMPROBE_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub(super) admin_token: Option<String>,
    /// Read --admin-token from this file (a mounted Secret)
    #[arg(long, env = "MEMPROBE_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub(super) admin_token_file: Option<PathBuf>,
    /// Drain in turn with the other instances of this server: kubernetes, on Leases
    #[arg(
        long,
        env = "MEMPROBE_FLEET",
        default_value = "off",
        value_name = "off|kubernetes",
        allow_hyphen_values = true
    )]
    pub(super) fleet: String,
    /// The fleet's name in its Leases [default: the pod's Deployment]
    #[arg(
        long,
        env = "MEMPROBE_FLEET_NAME",
        value_name = "NAME",
        allow_hyphen_values = true
    )]
    pub(super) fleet_name: Option<String>,
    /// With --fleet: how many instances may drain at once, a number or a share of the pods
    #[arg(
        long,
        env = "MEMPROBE_FLEET_DRAIN_BUDGET",
        default_value = "1",
        value_name = "N|PERCENT",
        allow_hyphen_values = true
    )]
    pub(super) fleet_drain_budget: String,
    /// With --fleet: a drain slot's Lease; a holder that dies frees its slot this long after
    #[arg(
        long,
        env = "MEMPROBE_FLEET_LEASE_DURATION",
        default_value = "30s",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub(super) fleet_lease_duration: String,
    /// Send the decisions as Kubernetes Events on the pod [default: on with --fleet]
    #[arg(
        long,
        env = "MEMPROBE_EVENTS",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL",
        hide_possible_values = true
    )]
    pub(super) events: Option<String>,
    /// This pod's name, for --fleet and --events (Downward API: metadata.name)
    #[arg(
        long,
        env = "MEMPROBE_POD_NAME",
        value_name = "NAME",
        allow_hyphen_values = true
    )]
    pub(super) pod_name: Option<String>,
    /// This pod's namespace, for --fleet and --events (Downward API: metadata.namespace)
    #[arg(
        long,
        env = "MEMPROBE_POD_NAMESPACE",
        value_name = "NAMESPACE",
        allow_hyphen_values = true
    )]
    pub(super) pod_namespace: Option<String>,
    /// Log format: text or json (level from RUST_LOG, default info)
    #[arg(
        long,
        env = "MEMPROBE_LOG_FORMAT",
        default_value = "text",
        value_name = "text|json",
        allow_hyphen_values = true
    )]
    pub(super) log_format: String,
}
