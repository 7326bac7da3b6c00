//! Checks of one flag's text, each error naming where the value came from (`--flag` or
//! `MEMPROBE_FLAG`), the value, and an example that works. Given text, not `WatchFlags`: this
//! file names no other of `config`'s files, and `values` reads it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, ValueEnum};

use super::{DEFAULT_NAME, FlagError};
use crate::outlets::recycle::RecycleAction;
use crate::policy::fleet::Budget;
use crate::secret::{Secret, SecretUrl, Token, read_secret_file};
use crate::sources::proc::target::TargetSpec;
use crate::sources::{MemoryFrom, MemoryKind};
use crate::units::{self, DurationRange, SizeOrPercent, UnitError};

/// The longest `--shutdown-delay`: a kubelet gives a pod 30 s by default to stop.
const MAX_SHUTDOWN_DELAY: Duration = Duration::from_secs(300);
/// The smallest size `--threshold`, `--critical` or `--memory-limit` takes. A size under it
/// is below what any server's process keeps resident (its C library and binary alone), so a
/// threshold there is crossed by the first sample and every instance drains: it is a
/// percentage or a unit forgotten (`MEMPROBE_THRESHOLD: "80"`), never a setting.
pub(super) const MIN_SIZE_BYTES: u64 = 1 << 20;
/// How much of a refused value an error shows (and `…` after it): enough for any value
/// meant, never a page of one that was not.
const MAX_SHOWN_BYTES: usize = 100;
const MIN_LEASE: Duration = Duration::from_secs(6);
const MAX_LEASE: Duration = Duration::from_secs(3600);

pub(super) struct Checker<'a> {
    pub(super) matches: &'a ArgMatches,
    pub(super) command: &'a clap::Command,
}

impl Checker<'_> {
    /// `--min-drain` or `MEMPROBE_MIN_DRAIN`, whichever the value came from; the variable's
    /// name is clap's own.
    pub(super) fn origin(&self, id: &str) -> String {
        let arg = self.command.get_arguments().find(|a| a.get_id() == id);
        let env = arg.and_then(|a| a.get_env()).map(|e| e.to_string_lossy());
        match (self.matches.value_source(id), env) {
            (Some(ValueSource::EnvVariable), Some(env)) => env.into_owned(),
            _ => format!("--{}", id.replace('_', "-")),
        }
    }

    /// A refusal of `value`, shown clipped: a 130 KB value is named by its start, on one line.
    pub(super) fn error(&self, id: &str, value: &str, problem: &str) -> FlagError {
        FlagError {
            origin: self.origin(id),
            value: Some(units::clip(value, MAX_SHOWN_BYTES)),
            problem: problem.to_string(),
        }
    }

    pub(super) fn unit<T>(
        &self,
        id: &str,
        text: &str,
        parse: impl Fn(&str) -> Result<T, UnitError>,
    ) -> Result<T, FlagError> {
        parse(text).map_err(|e| self.error(id, text, &e.to_string()))
    }

    /// A size or a percentage (`--threshold`, `--critical`); a size of at least 1 MiB.
    pub(super) fn size_or_percent(&self, id: &str, text: &str) -> Result<SizeOrPercent, FlagError> {
        let value = self.unit(id, text, units::parse_size_or_percent)?;
        if let SizeOrPercent::Bytes(bytes) = value {
            self.not_tiny(id, text, bytes, true)?;
        }
        Ok(value)
    }

    /// A size (`--memory-limit`) of at least 1 MiB.
    pub(super) fn size(&self, id: &str, text: &str) -> Result<u64, FlagError> {
        let bytes = self.unit(id, text, units::parse_size)?;
        self.not_tiny(id, text, bytes, false)?;
        Ok(bytes)
    }

    /// Refuses a size under [`MIN_SIZE_BYTES`]: `80` is 80 bytes, and meant `80%` or `80Mi`.
    fn not_tiny(&self, id: &str, text: &str, bytes: u64, percent: bool) -> Result<(), FlagError> {
        if bytes >= MIN_SIZE_BYTES {
            return Ok(());
        }
        let number = text.trim();
        let bare = number.bytes().all(|b| b.is_ascii_digit());
        let example = match number.parse::<u64>() {
            Ok(n @ 1..=100) if bare && percent => format!("{n}%"),
            Ok(n) if bare => format!("{n}Mi"),
            _ if percent => "80%".to_string(),
            _ => "2Gi".to_string(),
        };
        let problem = format!(
            "is {}, too small to be a server's memory{} (try {example})",
            units::Bytes(bytes),
            if bare {
                ": a number without a unit is bytes"
            } else {
                ""
            },
        );
        Err(self.error(id, text, &problem))
    }

    pub(super) fn duration(&self, id: &str, text: &str) -> Result<Duration, FlagError> {
        let range = match id {
            "min_drain" | "shutdown_delay" => DurationRange::OR_ZERO,
            _ => DurationRange::STANDARD,
        };
        self.unit(id, text, |t| range.parse(t))
    }

    /// `--user`: a uid, or a user name as this system resolves it.
    pub(super) fn user(&self, text: &str) -> Result<u32, FlagError> {
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
    pub(super) fn given(&self, id: &str) -> bool {
        matches!(
            self.matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    }

    /// Two flags that exclude each other, both given.
    pub(super) fn both(&self, one: &str, other: &str, problem: &str) -> FlagError {
        FlagError {
            origin: format!("{} and {}", self.origin(one), self.origin(other)),
            value: None,
            problem: problem.into(),
        }
    }

    /// A value given directly or through a file, never both; with the file it came from.
    pub(super) fn one_of<T>(
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
    pub(super) fn secret_file(&self, id: &str, path: &Path) -> Result<String, FlagError> {
        read_secret_file(path)
            .map_err(|problem| self.error(id, &path.display().to_string(), &problem))
    }

    /// A bearer token; never echoed in an error.
    pub(super) fn token(&self, id: &str, text: &str) -> Result<Token, FlagError> {
        Token::new(text).map_err(|problem| FlagError {
            origin: self.origin(id),
            value: None,
            problem,
        })
    }

    /// Janus's admin secret; never echoed in an error.
    pub(super) fn janus_secret(&self, id: &str, text: &str) -> Result<Secret, FlagError> {
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
    pub(super) fn kms_url(
        &self,
        id: &str,
        text: &str,
        shown: &str,
    ) -> Result<Option<SecretUrl>, FlagError> {
        let text = text.trim();
        if text == "none" {
            return Ok(None);
        }
        SecretUrl::parse_ws(text)
            .map(Some)
            .map_err(|problem| self.error(id, shown, &problem))
    }

    /// `--janus-url`: Janus's admin API, over http://.
    pub(super) fn janus_url(&self, text: &str) -> Result<url::Url, FlagError> {
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
    pub(super) fn address(
        &self,
        id: &str,
        text: &str,
        example: &str,
    ) -> Result<SocketAddr, FlagError> {
        text.trim()
            .parse()
            .map_err(|_| self.error(id, text, &format!("is not an address:port (try {example})")))
    }

    /// `--shutdown-delay`: within what a kubelet waits after SIGTERM.
    pub(super) fn shutdown_delay(&self, text: &str) -> Result<Duration, FlagError> {
        let delay = self.duration("shutdown_delay", text)?;
        if delay > MAX_SHUTDOWN_DELAY {
            let problem = "is over 5m: a kubelet kills a pod 30s after SIGTERM by default (try 1s)";
            return Err(self.error("shutdown_delay", text, problem));
        }
        Ok(delay)
    }

    /// The variable a flag is read from (`MEMPROBE_POD_NAME`).
    pub(super) fn env_of(&self, id: &str) -> String {
        self.command
            .get_arguments()
            .find(|a| a.get_id() == id)
            .and_then(|a| a.get_env())
            .map_or_else(String::new, |e| e.to_string_lossy().into_owned())
    }

    /// A Kubernetes name (a DNS label: lowercase letters, digits and '-', at most `max`).
    pub(super) fn kubernetes_name(
        &self,
        id: &str,
        text: &str,
        max: usize,
        example: &str,
    ) -> Result<String, FlagError> {
        let t = text.trim();
        let label = !t.is_empty()
            && t.len() <= max
            && t.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !t.starts_with('-')
            && !t.ends_with('-');
        if !label {
            let problem = format!(
                "is not a Kubernetes name: at most {max} lowercase letters, digits and '-', \
                 starting and ending with a letter or digit (try {example})"
            );
            return Err(self.error(id, &units::clip(text, 80), &problem));
        }
        Ok(t.to_string())
    }

    /// `--fleet-drain-budget`: a number of instances (1 or more) or a share of the pods.
    pub(super) fn budget(&self, text: &str) -> Result<Budget, FlagError> {
        let t = text.trim();
        let problem = "is not a number of instances or a share of the pods (try 1, 2 or 25%)";
        if let Some(pct) = t.strip_suffix('%') {
            return match pct.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => Ok(Budget::Percent(p)),
                Ok(_) => Err(self.error(
                    "fleet_drain_budget",
                    text,
                    "is not a share of the pods above 0% and up to 100% (try 25%)",
                )),
                Err(_) => Err(self.error("fleet_drain_budget", text, problem)),
            };
        }
        match t.parse::<u32>() {
            Ok(0) => Err(self.error(
                "fleet_drain_budget",
                text,
                "would let no instance ever drain: the budget is at least 1 (try 1)",
            )),
            Ok(n) => Ok(Budget::Instances(n)),
            Err(_) => Err(self.error("fleet_drain_budget", text, problem)),
        }
    }

    /// `--fleet-lease-duration`: long enough to renew at a third of it, short enough that a
    /// dead holder's slot comes back.
    pub(super) fn lease_duration(&self, text: &str) -> Result<Duration, FlagError> {
        // Its own range, so that every refusal names it and a value inside it.
        let d = self.unit("fleet_lease_duration", text, units::parse_duration)?;
        if !(MIN_LEASE..=MAX_LEASE).contains(&d) {
            let problem = "is outside 6s to 1h: a holder renews its Lease every third of it, \
                           and a dead holder's slot comes back only once it has passed (try 30s)";
            return Err(self.error("fleet_lease_duration", text, problem));
        }
        Ok(d)
    }

    /// `--pid`: a process id, not a kernel thread's.
    pub(super) fn pid(&self, text: &str) -> Result<i32, FlagError> {
        let pid = match text.trim().parse::<i32>() {
            Ok(pid) if pid > 0 => pid,
            _ => return Err(self.error("pid", text, "is not a process id (try --pid 1234)")),
        };
        if crate::sources::proc::target::is_kernel_thread(pid) {
            let problem = "is a kernel thread, which has no memory of its own to watch \
                           (try the pid of a server process)";
            return Err(self.error("pid", text, problem));
        }
        // A pid is one process: one that is not there at start never will be (a pid used
        // again later is another process). Signal 0 tells, even without the right to signal.
        let exists = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None);
        if let Err(nix::errno::Errno::ESRCH) = exists {
            let problem = "is not a running process (try the pid of a running server, or \
                           --pidfile or --name for one that is not started yet)";
            return Err(self.error("pid", text, problem));
        }
        Ok(pid)
    }

    /// `--pidfile`: any path, since the file may not be written yet, but not one that names a
    /// FIFO, a device or a directory.
    pub(super) fn pidfile(&self, path: &Path) -> Result<PathBuf, FlagError> {
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
    pub(super) fn name(&self, text: &str) -> Result<String, FlagError> {
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
    pub(super) fn signal_possible(
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
    pub(super) fn boolean(&self, id: &str, text: &str) -> Result<bool, FlagError> {
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
    pub(super) fn choice<T: ValueEnum>(&self, id: &str, text: &str) -> Result<T, FlagError> {
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
            // The value meant, when one is near what was typed ("kubernetes" for "kubernets",
            // "off" for "of"); otherwise the first value, as an example.
            let typed = text.trim().to_ascii_lowercase();
            let closest = names
                .iter()
                .map(|n| (strsim::levenshtein(&typed, n), n))
                .filter(|(d, n)| *d <= (n.len() / 3).max(1))
                .min_by_key(|(d, _)| *d);
            let problem = match closest {
                Some((_, meant)) => format!("is not {listed} (did you mean {meant}?)"),
                None => format!("is not {listed} (try {})", names.first().map_or("", |n| n)),
            };
            self.error(id, text, &problem)
        })
    }

    /// `--kms-failures`: failed pings in a row that stall the server.
    pub(super) fn failures(&self, text: &str) -> Result<u32, FlagError> {
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
    /// A target picked by `--pid` or `--pidfile` whose process is KMS at start keeps it on.
    pub(super) fn kms_not_asked(&self, target: &TargetSpec) -> Option<String> {
        if self.given("kms_url") || self.given("kms_url_file") {
            return None;
        }
        match target {
            TargetSpec::Name(name) if name == DEFAULT_NAME => None,
            other if kms_by_pid(other).is_some() => None,
            other => Some(format!(
                "kms: off, since the target ({other}) is not KMS; --kms-url turns it on"
            )),
        }
    }

    /// Why KMS is on for a target picked by pid, to be said once at start.
    pub(super) fn kms_on_by_pid(&self, target: &TargetSpec) -> Option<String> {
        if self.given("kms_url") || self.given("kms_url_file") {
            return None;
        }
        kms_by_pid(target).map(|pid| {
            format!(
                "kms: on, since the target ({target}) is {DEFAULT_NAME} (pid {pid}); \
                 --kms-url none turns it off"
            )
        })
    }

    /// `--kms-gate`: relays to the KMS memprobe talks to, which must not be the gate itself.
    pub(super) fn kms_gate(
        &self,
        listen: SocketAddr,
        kms: Option<&crate::sources::kms::KmsSettings>,
        kms_off: Option<&str>,
    ) -> Result<crate::outlets::kms_gate::GateSettings, FlagError> {
        let shown = listen.to_string();
        let Some(kms) = kms else {
            let why = kms_off.unwrap_or("kms: off, since --kms-url is none");
            let problem = format!(
                "relays to KMS, but memprobe does not talk to KMS here ({why}): give KMS's own \
                 port, e.g. --kms-url ws://127.0.0.1:8889/kurento"
            );
            return Err(self.error("kms_gate", &shown, &problem));
        };
        if crate::outlets::kms_gate::points_at(listen, kms.url.expose()) {
            let problem = format!(
                "is where --kms-url {} points: the gate would relay to itself (move KMS to \
                 another port, e.g. 8889 in kurento.conf.json, and give --kms-url \
                 ws://127.0.0.1:8889/kurento)",
                kms.url
            );
            return Err(self.error("kms_gate", &shown, &problem));
        }
        Ok(crate::outlets::kms_gate::GateSettings {
            listen,
            kms: kms.url.clone(),
            timeout: kms.timeout,
        })
    }

    /// `--memory-source kms` reads memory from KMS itself: there is no process to pick.
    pub(super) fn kms_source(
        &self,
        include_children_given: bool,
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
        if include_children_given {
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
    pub(super) fn target(
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

/// The pid of a target picked by `--pid`, or by a `--pidfile` that names one now, when that
/// process is KMS.
fn kms_by_pid(target: &TargetSpec) -> Option<i32> {
    let pid = match target {
        TargetSpec::Pid(pid) => *pid,
        TargetSpec::Pidfile(path) => read_secret_file(path).ok()?.trim().parse().ok()?,
        TargetSpec::Name(_) => return None,
    };
    crate::sources::proc::target::goes_by(pid, DEFAULT_NAME).then_some(pid)
}
