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
//!
//! - `flags` — the clap definitions of every sidecar flag (`WatchFlags`), text only.
//! - `check` — one flag's text into its value, with the error line that names it.
//! - `values` — every value parsed on its own, then combined into each family's settings.
//!
//! Imports among them run one way, down that list read from the bottom: `values` reads
//! `check` and `flags`, `check` reads neither, `flags` reads nothing of `config`
//! (`tests/cases/house.rs` keeps it so). All three may name this module's own items.
//!
//! The settings types themselves live beside the code that uses them
//! (`sources::kms::KmsSettings`, `policy::Settings`, `outlets::http::HttpSettings`, …); this
//! module only builds them, and [`Config`] only composes them.

mod check;
mod flags;
#[cfg(test)]
mod tests;
mod values;

use std::time::Duration;

use clap::{ArgMatches, ValueEnum};

use crate::outlets::agent::AgentWeight;
use crate::units::{Bytes, SizeOrPercent};
use crate::{fleet, outlets, policy, sources};
use check::Checker;
use values::Values;

pub use flags::WatchFlags;

/// The process name watched by default.
pub const DEFAULT_NAME: &str = "kurento-media-server";
/// The process name watched by default with `--janus-url`.
pub const JANUS_NAME: &str = "janus";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The sidecar's settings, validated: each family's own, composed. Nothing below reads
/// flags; each family receives its part.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub sources: sources::Settings,
    pub policy: policy::Settings,
    pub outlets: outlets::Settings,
    pub fleet: fleet::Settings,
    /// The time between two steps (`--interval`).
    pub interval: Duration,
    /// How far back the page's history reaches (`--history`).
    pub history: Duration,
    pub log_format: LogFormat,
}

impl Config {
    /// The settings in force, as `/status` shows them (no secret among them).
    pub fn shown(&self) -> crate::status::Settings {
        let duration = |d| humantime::format_duration(d).to_string();
        let (sources, policy, outlets) = (&self.sources, &self.policy, &self.outlets);
        let kms = sources.kms.as_ref();
        let janus = sources.janus.as_ref();
        let custom = sources.custom.as_ref();
        let agent = outlets.agent.as_ref();
        crate::status::Settings {
            target: sources.proc.target.to_string(),
            include_children: sources.proc.include_children,
            interval: duration(self.interval),
            memory: sources.memory,
            critical: policy.critical.map(|c| c.to_string()),
            memory_limit: sources.memory_limit,
            sustain: duration(policy.sustain),
            idle_sustain: duration(policy.idle_sustain),
            recycle_when_idle_within: policy.quiet_within.map(duration),
            drain_timeout: duration(policy.drain_timeout),
            min_drain: duration(policy.min_drain),
            kms_url: kms.map(|k| k.url.to_string()),
            kms_ping_interval: kms.map(|k| duration(k.ping_interval)),
            kms_timeout: kms.map(|k| duration(k.timeout)),
            kms_failures: kms.map(|k| k.failures),
            kms_hang_timeout: kms.map(|k| duration(k.hang_timeout)),
            kms_teardown_timeout: kms.map(|k| k.teardown_timeout.map_or("off".into(), duration)),
            memory_source: sources.memory_from,
            janus_url: janus.map(|j| j.url.to_string()),
            janus_poll: janus.map(|j| duration(j.poll)),
            janus_drain_switch: janus.map(|j| j.drain_switch),
            sessions_from: custom.map(|c| c.from.shown()),
            sessions_poll: custom.map(|c| duration(c.poll)),
            sessions_hang_timeout: custom.and_then(|c| c.hang_timeout).map(duration),
            listen: outlets.http.listen.to_string(),
            history: duration(self.history),
            agent_listen: agent.map(|a| a.listen.to_string()),
            agent_weight: format!(
                "{:?}",
                agent.map_or_else(AgentWeight::default, |a| a.weight)
            )
            .to_lowercase(),
            kms_gate: outlets.kms_gate.as_ref().map(|g| g.listen.to_string()),
            on_recycle: outlets.recycle.action.to_string(),
            recycle_retry: duration(outlets.recycle.retry),
            shutdown_delay: duration(outlets.http.shutdown_delay),
            admin_api: outlets.http.admin_token.is_some(),
            fleet: match self.fleet.mode {
                fleet::Mode::Off => "off",
                fleet::Mode::Kubernetes => "kubernetes",
            },
            fleet_drain_budget: (self.fleet.mode == fleet::Mode::Kubernetes)
                .then(|| self.fleet.budget.to_string()),
            fleet_lease_duration: (self.fleet.mode == fleet::Mode::Kubernetes)
                .then(|| duration(self.fleet.lease)),
            events: self.fleet.events,
        }
    }

    /// The threshold and critical level as given, and the limit a percentage is of: said at
    /// start, before a target is found (then `monitor` says them resolved, and warns when the
    /// limit is the host's).
    pub fn judging(&self) -> String {
        let policy = &self.policy;
        let percent = matches!(policy.threshold, SizeOrPercent::Percent(_))
            || matches!(policy.critical, Some(SizeOrPercent::Percent(_)));
        let of = match (self.sources.memory_limit, percent) {
            (_, false) => String::new(),
            (Some(bytes), true) => format!("; percentages of --memory-limit {}", Bytes(bytes)),
            (None, true) => "; percentages of the target's memory limit (its cgroup's, read \
                             once it is found; else the host's MemTotal)"
                .to_string(),
        };
        let critical = policy
            .critical
            .map_or_else(|| "off".to_string(), |c| c.to_string());
        format!(
            "judging {}: threshold {}, critical {critical}{of}",
            self.sources.memory.as_str(),
            policy.threshold
        )
    }
}

/// The variables named `MEMPROBE_*` in `names` that no flag of `command` (or of its tools)
/// reads, each said with the known name closest to it: on Kubernetes the environment is where
/// memprobe is configured, and a misspelt name would otherwise change nothing silently.
pub fn unknown_variables<I>(command: &clap::Command, names: I) -> Vec<String>
where
    I: IntoIterator<Item = std::ffi::OsString>,
{
    fn known(command: &clap::Command, out: &mut Vec<String>) {
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env() {
                out.push(env.to_string_lossy().into_owned());
            }
        }
        for sub in command.get_subcommands() {
            known(sub, out);
        }
    }
    let mut names_known = Vec::new();
    known(command, &mut names_known);
    let mut unknown: Vec<String> = names
        .into_iter()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.starts_with("MEMPROBE_") && !names_known.contains(n))
        .collect();
    unknown.sort();
    unknown.dedup();
    unknown
        .into_iter()
        .map(|name| {
            let shown = crate::units::clip(&name, 64);
            let closest = names_known
                .iter()
                .map(|k| (strsim::levenshtein(&name, k), k))
                .min()
                .filter(|(distance, _)| *distance <= 4);
            match closest {
                Some((_, known)) => format!(
                    "{shown} is not a variable memprobe reads, so it changes nothing (did you \
                     mean {known}?)"
                ),
                None => format!(
                    "{shown} is not a variable memprobe reads, so it changes nothing (memprobe \
                     --help lists each flag's MEMPROBE_<FLAG>)"
                ),
            }
        })
        .collect()
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

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error(transparent)]
    Flag(#[from] FlagError),
}

/// The sidecar's settings from its flags as clap matched them (`matches` of `command`, for
/// where each value came from). Percentages are checked against the `--memory-limit` or,
/// without it, `host_total_bytes`.
pub fn validate(
    flags: WatchFlags,
    matches: &ArgMatches,
    command: &clap::Command,
    host_total_bytes: u64,
) -> Result<Config, FlagError> {
    let check = Checker { matches, command };
    Values::parse(&flags, &check)?.decide(&flags, &check, host_total_bytes)
}
