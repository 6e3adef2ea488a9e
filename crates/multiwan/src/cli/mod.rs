//! The `multiwan` command line (SPEC §4).
//!
//! Exit codes: 0 success; 1 runtime failure; 2 bad config or usage; 3 daemon not
//! reachable. Errors are one or two lines on stderr, never a backtrace.

mod apply;
mod check;
mod client;
mod common;
mod demo;
mod explain;
mod plan;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::ConfigErrors;

/// Where the config lives unless `-c` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/multiwan/multiwan.toml";

#[derive(Debug, Parser)]
#[command(
    name = "multiwan",
    version,
    about = "Use several internet uplinks at once: policy routing, connection pinning, weighted sharing and fast failover",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log verbosity: error, warn, info (default), debug (adds probe detail) or trace;
    /// or tracing filter directives. Default: $MULTIWAN_LOG, else info.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// Configuration file.
    #[arg(short = 'c', long = "config", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

/// Where a client command finds the daemon.
#[derive(Debug, clap::Args)]
struct SocketArgs {
    /// Configuration file; only tells where the daemon's control socket is
    /// (settings.socket) [default: /etc/multiwan/multiwan.toml]
    #[arg(
        short = 'c',
        long = "config",
        value_name = "FILE",
        conflicts_with = "socket"
    )]
    config: Option<PathBuf>,
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

impl SocketArgs {
    fn path(&self) -> PathBuf {
        client::socket(self.config.as_deref(), self.socket.as_deref())
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration; exit 0, or 2 with the errors.
    Check(ConfigArg),
    /// Print the rules, routes and nft ruleset that would be installed; changes nothing.
    Plan {
        #[command(flatten)]
        config: ConfigArg,
        /// Plan as if this link were down (repeatable).
        #[arg(long = "down", value_name = "LINK")]
        down: Vec<String>,
    },
    /// Install once, every enabled link in service, and exit.
    Apply(ConfigArg),
    /// Remove every kernel object multiwan owns.
    Flush(ConfigArg),
    /// The daemon, in the foreground (systemd Type=notify).
    Run(ConfigArg),
    /// The running daemon's view of every link: a table, or one JSON object.
    Status {
        #[command(flatten)]
        at: SocketArgs,
        /// One JSON object (SPEC §4) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// A line per link state change, until interrupted.
    Events {
        #[command(flatten)]
        at: SocketArgs,
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make the daemon re-read the config file it was started with.
    Reload(SocketArgs),
    /// Operator override of a link: up (force in service), down (take out), auto.
    Link {
        /// The link's name in the config.
        link: String,
        /// up | down | auto
        #[arg(value_enum)]
        action: client::LinkActionArg,
        #[command(flatten)]
        at: SocketArgs,
    },
    /// Where a new connection would go, and why: rule, policy, link, table, route.
    Explain {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        args: explain::ExplainArgs,
    },
    /// A sandbox of network namespaces with three uplinks, narrated.
    Demo,
}

/// How a command failed, which decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Exit 2: the config file is wrong.
    #[error("{0}")]
    Config(ConfigErrors),
    /// Exit 2: the command line is wrong.
    #[error("{0}")]
    Usage(String),
    /// Exit 1: something failed at run time.
    #[error("{0:#}")]
    Runtime(#[from] anyhow::Error),
    /// Exit 3: no daemon answers on the control socket.
    #[error("{0}")]
    Unreachable(String),
    /// The daemon refused a request; `code` is the exit code it asks for.
    #[error("{message}")]
    Refused { code: i32, message: String },
}

impl Failure {
    fn exit_code(&self) -> i32 {
        match self {
            Failure::Config(_) | Failure::Usage(_) => 2,
            Failure::Runtime(_) => 1,
            Failure::Unreachable(_) => 3,
            Failure::Refused { code, .. } => *code,
        }
    }
}

impl From<ConfigErrors> for Failure {
    fn from(e: ConfigErrors) -> Self {
        Failure::Config(e)
    }
}

pub type CliResult = Result<i32, Failure>;

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    if let Err(e) = crate::logging::init(cli.log_level.as_deref()) {
        eprintln!("multiwan: {e}");
        return 2;
    }
    let name = command_name(&cli.command);
    let result = match cli.command {
        Command::Check(c) => check::run(&c.config),
        Command::Plan { config, down } => plan::run(&config.config, &down),
        Command::Apply(c) => apply::apply(&c.config),
        Command::Flush(c) => apply::flush(&c.config),
        Command::Run(c) => run(&c.config),
        Command::Status { at, json } => client::status(&at.path(), json),
        Command::Events { at, json } => client::events(&at.path(), json),
        Command::Reload(at) => client::reload(&at.path()),
        Command::Link { link, action, at } => client::link(&at.path(), &link, action.into()),
        Command::Explain { config, args } => explain::run(&config.config, &args),
        Command::Demo => demo::run(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            match &e {
                Failure::Config(errors) => eprintln!("{errors}"),
                other => eprintln!("multiwan {name}: {other}"),
            }
            e.exit_code()
        }
    }
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Check(_) => "check",
        Command::Plan { .. } => "plan",
        Command::Apply(_) => "apply",
        Command::Flush(_) => "flush",
        Command::Run(_) => "run",
        Command::Status { .. } => "status",
        Command::Events { .. } => "events",
        Command::Reload(_) => "reload",
        Command::Link { .. } => "link",
        Command::Explain { .. } => "explain",
        Command::Demo => "demo",
    }
}

fn run(config: &Path) -> CliResult {
    // Config errors exit 2 before anything starts.
    crate::config::load(config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)?;
    rt.block_on(crate::daemon::run(config))?;
    Ok(0)
}

/// The machine's facts, or none when netlink cannot be read (e.g. `plan` run as a
/// user on a workstation): the plan then shows every link as waiting.
pub(crate) fn read_facts_or_empty() -> crate::plan::Facts {
    let Ok(rt) = runtime() else {
        return Default::default();
    };
    rt.block_on(async {
        match crate::kernel::Kernel::new() {
            Ok(k) => k.read_facts().await.unwrap_or_default(),
            Err(_) => Default::default(),
        }
    })
}

/// A current-thread tokio runtime for the one-shot commands.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
