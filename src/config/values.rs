//! Every flag's text parsed into its typed value on its own (`Values::parse`), then the
//! values combined into each family's settings (`Values::decide`). The highest of `config`'s
//! files: it reads `flags` and `check`, and neither names it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{Config, DEFAULT_NAME, FlagError, JANUS_NAME, LogFormat};
use crate::limit::MemoryLimit;
use crate::outlets::agent::{AgentSettings, AgentWeight};
use crate::outlets::http::HttpSettings;
use crate::outlets::recycle::{RecycleAction, RecycleSettings};
use crate::policy::ServerPolicy;
use crate::policy::fleet::Budget;
use crate::policy::{SizeProblem, check_sizes};
use crate::secret::{Secret, SecretUrl, Token};
use crate::sources::custom::{CustomSettings, Endpoint};
use crate::sources::janus::JanusSettings;
use crate::sources::kms::KmsSettings;
use crate::sources::proc::ProcSettings;
use crate::sources::proc::target::TargetSpec;
use crate::sources::{MemoryFrom, MemoryKind};
use crate::units::{Bytes, SizeOrPercent};
use crate::{fleet, outlets, policy, sources};

use super::check::Checker;
use super::flags::WatchFlags;

/// Every flag's value, parsed into its type on its own. Nothing here depends on another flag,
/// so a bad value is refused whether or not the integration that would use it is on; which
/// integration uses which value is decided afterwards, from these (`Values::decide`).
pub(super) struct Values {
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
    /// `None` for `off`.
    recycle_when_idle_within: Option<Duration>,
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
    /// `None` for `off`: a stall of such a server never recycles it.
    sessions_hang_timeout: Option<Duration>,
    /// The file, and the URL it holds (`None` for `none`).
    kms_url_file: Option<(PathBuf, Option<SecretUrl>)>,
    kms_ping_interval: Duration,
    kms_timeout: Duration,
    kms_failures: u32,
    kms_hang_timeout: Duration,
    kms_gc_period: Duration,
    /// `None` for `off`.
    kms_teardown_timeout: Option<Duration>,
    kms_gate: Option<SocketAddr>,
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
    fleet: fleet::Mode,
    fleet_name: Option<String>,
    fleet_drain_budget: Budget,
    fleet_lease_duration: Duration,
    events: Option<bool>,
    pod_name: Option<String>,
    pod_namespace: Option<String>,
    log_format: LogFormat,
}

impl Values {
    /// Parses every flag, in the order `--help` lists them.
    pub(super) fn parse(flags: &WatchFlags, check: &Checker) -> Result<Values, FlagError> {
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
            recycle_when_idle_within,
            kms_url,
            janus_url,
            janus_secret,
            janus_secret_file,
            janus_poll,
            janus_drain_switch,
            sessions_url,
            sessions_file,
            sessions_poll,
            sessions_hang_timeout,
            kms_url_file,
            kms_ping_interval,
            kms_timeout,
            kms_failures,
            kms_hang_timeout,
            kms_gc_period,
            kms_teardown_timeout,
            kms_gate,
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
            fleet,
            fleet_name,
            fleet_drain_budget,
            fleet_lease_duration,
            events,
            pod_name,
            pod_namespace,
            log_format,
        } = flags;
        let size_or_percent = |id, text: &str| check.size_or_percent(id, text);
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
                .map(|t| check.size("memory_limit", t))
                .transpose()?,
            sustain: check.duration("sustain", sustain)?,
            drain_timeout: check.duration("drain_timeout", drain_timeout)?,
            min_drain: check.duration("min_drain", min_drain)?,
            idle_sustain: check.duration("idle_sustain", idle_sustain)?,
            recycle_when_idle_within: match recycle_when_idle_within.trim() {
                "off" => None,
                text => Some(check.duration("recycle_when_idle_within", text)?),
            },
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
            sessions_hang_timeout: match sessions_hang_timeout.trim() {
                "off" => None,
                text => Some(check.duration("sessions_hang_timeout", text)?),
            },
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
            kms_teardown_timeout: match kms_teardown_timeout.trim() {
                "off" => None,
                text => Some(check.duration("kms_teardown_timeout", text)?),
            },
            kms_gate: kms_gate
                .as_deref()
                .map(|t| check.address("kms_gate", t, "0.0.0.0:8888"))
                .transpose()?,
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
            fleet: check.choice("fleet", fleet)?,
            fleet_name: fleet_name
                .as_deref()
                .map(|t| check.kubernetes_name("fleet_name", t, 40, "kms"))
                .transpose()?,
            fleet_drain_budget: check.budget(fleet_drain_budget)?,
            fleet_lease_duration: check.lease_duration(fleet_lease_duration)?,
            events: events
                .as_deref()
                .map(|t| check.boolean("events", t))
                .transpose()?,
            pod_name: pod_name
                .as_deref()
                .map(|t| check.kubernetes_name("pod_name", t, 63, "kms-7d9f8c6b5-x2x7z"))
                .transpose()?,
            pod_namespace: pod_namespace
                .as_deref()
                .map(|t| check.kubernetes_name("pod_namespace", t, 63, "media"))
                .transpose()?,
            log_format: check.choice("log_format", log_format)?,
        })
    }

    /// Which integrations run, and whether the values given fit together: one media server,
    /// one target, one source of each secret, a threshold the limit allows.
    pub(super) fn decide(
        self,
        flags: &WatchFlags,
        check: &Checker,
        host_total_bytes: u64,
    ) -> Result<Config, FlagError> {
        let custom = self.custom(flags, check)?;
        let fleet = self.fleet_settings(check)?;
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
                Some(JanusSettings {
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
        // A fleet instance waiting for a slot must still not be OOM-killed: --critical is on
        // by default there, when it can be above the threshold.
        let critical = match (self.critical, fleet.mode) {
            (None, fleet::Mode::Kubernetes) => {
                let critical = SizeOrPercent::Percent(fleet::CRITICAL_WITH_FLEET);
                (critical.resolve(limit.bytes) > self.threshold.resolve(limit.bytes))
                    .then_some(critical)
            }
            (given, _) => given,
        };
        check_sizes_against(flags, check, self.threshold, critical, limit)?;
        let kms_off = match (&janus, &custom) {
            (Some(_), _) => Some("kms: off, since --janus-url watches Janus".to_string()),
            (None, Some(_)) => Some(
                "kms: off, since --sessions-url or --sessions-file counts the sessions".to_string(),
            ),
            (None, None) => check.kms_not_asked(&target),
        };
        let kms_said = match (&janus, &custom) {
            (None, None) => check.kms_on_by_pid(&target),
            _ => None,
        };
        let (kms_url, kms_url_file) = match self.kms_url_file {
            Some((path, url)) => (url, Some(path)),
            None => (self.kms_url, None),
        };
        let kms = match (&kms_off, kms_url) {
            (None, Some(url)) => Some(KmsSettings {
                url,
                url_file: kms_url_file,
                ping_interval: self.kms_ping_interval,
                timeout: self.kms_timeout,
                failures: self.kms_failures,
                hang_timeout: self.kms_hang_timeout,
                gc_period: self.kms_gc_period,
                teardown_timeout: self.kms_teardown_timeout,
            }),
            _ => None,
        };
        if self.memory_source == MemoryFrom::Kms {
            check.kms_source(flags.include_children.is_some(), kms.is_some(), self.memory)?;
        }
        let kms_gate = match self.kms_gate {
            None => None,
            Some(listen) => Some(check.kms_gate(listen, kms.as_ref(), kms_off.as_deref())?),
        };
        check.signal_possible(&self.on_recycle, &target, self.memory_source)?;
        let (admin_token, admin_token_file) = match admin_token {
            Some((token, file)) => (Some(token), file),
            None => (None, None),
        };
        let server = match (&kms, &janus, &custom) {
            (Some(k), _, _) => ServerPolicy {
                name: "kms",
                failures: k.failures,
                hang_timeout: k.hang_timeout,
            },
            (None, Some(j), _) => ServerPolicy {
                name: "janus",
                failures: j.failures,
                hang_timeout: j.hang_timeout,
            },
            (None, None, Some(c)) => ServerPolicy {
                name: "server",
                failures: c.failures,
                hang_timeout: c.hang_timeout.unwrap_or(Duration::MAX),
            },
            (None, None, None) => ServerPolicy::default(),
        };
        let policy = policy::Settings {
            threshold: self.threshold,
            critical,
            sustain: self.sustain,
            idle_sustain: self.idle_sustain,
            quiet_within: self.recycle_when_idle_within,
            drain_timeout: self.drain_timeout,
            min_drain: self.min_drain,
            server,
            // A dropped connection that comes back within a ping interval (or two request
            // deadlines) is the same KMS.
            reconnect_grace: kms
                .as_ref()
                .map_or(Duration::ZERO, |k| k.ping_interval.max(k.timeout * 2)),
            max_gap: policy::Settings::max_gap_at(self.interval),
        };
        Ok(Config {
            sources: sources::Settings {
                proc: ProcSettings {
                    target,
                    user: self.user,
                    include_children: self.include_children,
                },
                memory: self.memory,
                memory_limit: self.memory_limit,
                memory_from: self.memory_source,
                kms,
                kms_off,
                kms_said,
                janus,
                custom,
            },
            policy,
            outlets: outlets::Settings {
                http: HttpSettings {
                    listen: self.listen,
                    shutdown_delay: self.shutdown_delay,
                    admin_token,
                    admin_token_file,
                },
                agent: self.agent_listen.map(|listen| AgentSettings {
                    listen,
                    weight: self.agent_weight,
                }),
                recycle: RecycleSettings {
                    action: self.on_recycle,
                    retry: self.recycle_retry,
                },
                kms_gate,
            },
            fleet,
            interval: self.interval,
            history: self.history,
            log_format: self.log_format,
        })
    }

    /// `--fleet` and `--events`, which need the pod's name and namespace.
    fn fleet_settings(&self, check: &Checker) -> Result<fleet::Settings, FlagError> {
        let events = self.events.unwrap_or(self.fleet == fleet::Mode::Kubernetes);
        let on = self.fleet == fleet::Mode::Kubernetes || events;
        let pod = match (on, &self.pod_name, &self.pod_namespace) {
            (false, _, _) => None,
            (true, Some(name), Some(namespace)) => Some(fleet::Pod {
                name: name.clone(),
                namespace: namespace.clone(),
            }),
            (true, name, _) => {
                let (id, field) = match name {
                    None => ("pod_name", "metadata.name"),
                    Some(_) => ("pod_namespace", "metadata.namespace"),
                };
                let why = if self.fleet == fleet::Mode::Kubernetes {
                    "--fleet kubernetes"
                } else {
                    "--events"
                };
                return Err(FlagError {
                    origin: check.origin(id),
                    value: None,
                    problem: format!(
                        "is needed with {why}, from the Downward API (try env {} with \
                         valueFrom.fieldRef.fieldPath: {field})",
                        check.env_of(id)
                    ),
                });
            }
        };
        Ok(fleet::Settings {
            mode: self.fleet,
            name: self.fleet_name.clone(),
            budget: self.fleet_drain_budget,
            lease: self.fleet_lease_duration,
            events,
            pod,
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
            hang_timeout: self.sessions_hang_timeout,
        }))
    }
}

/// Threshold and critical, resolved against the limit: the threshold is more than 0 and
/// within the limit, and critical is above the threshold. Checked again for every
/// incarnation's own cgroup limit by [`check_sizes`].
fn check_sizes_against(
    flags: &WatchFlags,
    check: &Checker,
    threshold: SizeOrPercent,
    critical: Option<SizeOrPercent>,
    limit: MemoryLimit,
) -> Result<(), FlagError> {
    match check_sizes(threshold, critical, limit) {
        Ok(()) => Ok(()),
        Err(SizeProblem::ThresholdZero) => {
            let (id, value) = match &flags.memory_limit {
                Some(text) => ("memory_limit", text.as_str()),
                None => ("threshold", flags.threshold.as_str()),
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
            Err(check.error("threshold", &flags.threshold, &problem.replace(" ,", ",")))
        }
        Err(SizeProblem::CriticalNotAboveThreshold {
            threshold_bytes,
            critical_bytes,
        }) => {
            let value = flags.critical.as_deref().unwrap_or_default();
            let problem = format!(
                "is {}, not above the threshold {} ({}): every sample over it would \
                 recycle at once (try 95%)",
                Bytes(critical_bytes),
                Bytes(threshold_bytes),
                flags.threshold.trim()
            );
            Err(check.error("critical", value, &problem))
        }
    }
}
