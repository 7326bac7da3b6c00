//! The command line: the sidecar's flags, or one of the tools beside it. The sidecar's flags
//! are `config`'s; each tool's are its own.

use clap::{Parser, Subcommand};

use crate::config::{self, Config, ParseError, WatchFlags};

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
    /// Watch a built-in fragmenting workload: healthy → draining → recycle in a minute (--story quiet: a quiet-moment recycle)
    Demo(crate::tools::demo::DemoFlags),
    /// The workload the demo and the tests watch: simulated media sessions, driven on stdin
    Workload(crate::tools::workload::WorkloadFlags),
    /// Ask a running memprobe to drain, and wait for its last session (systemd ExecStop=, scripts)
    Drain(crate::tools::drain::DrainFlags),
}

/// What to run, once the command line has been read.
#[derive(Debug)]
pub enum Invocation {
    Sidecar(Box<Config>),
    Demo(crate::tools::demo::DemoFlags),
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
            let config = config::validate(cli.watch, &matches, &command, host_total_bytes)?;
            Invocation::Sidecar(Box::new(config))
        }
    })
}

/// A usage error as clap renders it, whole (its tips and lists included), on memprobe's
/// terms: `memprobe: ` for clap's `error: `, and a tip of ours where a size was split from its
/// unit (`--threshold 1.5 GiB` reads to clap as a subcommand `GiB`).
pub fn usage_error(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let rendered = rendered.trim_end();
    let (first, rest) = rendered.split_once('\n').unwrap_or((rendered, ""));
    let first = first.trim_start_matches("error: ");
    let mut out = format!("memprobe: {first}");
    if let Some(unit) = unit_apart(e) {
        out.push_str(&format!(
            "\n\n  tip: a size and its unit are one word: 1.5{unit}, not 1.5 {unit}"
        ));
    }
    if !rest.is_empty() {
        out.push('\n');
        out.push_str(rest);
    }
    out
}

/// The unit clap took for a subcommand or an argument of its own, if it is one.
fn unit_apart(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    const UNITS: [&str; 20] = [
        "b", "k", "kb", "ki", "kib", "m", "mb", "mi", "mib", "g", "gb", "gi", "gib", "t", "tb",
        "ti", "tib", "%", "kB", "byte",
    ];
    let word = [ContextKind::InvalidSubcommand, ContextKind::InvalidArg]
        .into_iter()
        .find_map(|kind| match e.get(kind) {
            Some(ContextValue::String(word)) => Some(word.clone()),
            _ => None,
        })?;
    let unit = word.trim();
    UNITS
        .iter()
        .any(|u| u.eq_ignore_ascii_case(unit))
        .then(|| unit.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(args: &[&str]) -> String {
        match parse_with(
            std::iter::once("memprobe").chain(args.iter().copied()),
            1 << 34,
        ) {
            Err(ParseError::Clap(e)) => usage_error(&e),
            other => panic!("{args:?} is a usage error, not {other:?}"),
        }
    }

    /// clap's whole message is kept: its tip for a misspelt flag was cut before.
    #[test]
    fn a_usage_error_keeps_clap_s_tip() {
        let said = usage(&["--treshold", "80%"]);
        assert!(
            said.starts_with("memprobe: unexpected argument '--treshold' found"),
            "{said}"
        );
        assert!(
            said.contains("tip: a similar argument exists: '--threshold'"),
            "{said}"
        );
        assert!(said.contains("Usage: memprobe"), "{said}");
    }

    #[test]
    fn a_size_split_from_its_unit_is_told_so() {
        let said = usage(&["--threshold", "1.5", "GiB"]);
        assert!(
            said.contains("tip: a size and its unit are one word: 1.5GiB, not 1.5 GiB"),
            "{said}"
        );
        let said = usage(&["--treshold", "80%"]);
        assert!(!said.contains("one word"), "{said}");
    }
}
