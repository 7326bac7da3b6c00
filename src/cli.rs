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
