//! `multiwan-bench`: builds labs in network namespaces, runs multiwan's benchmark
//! scenarios (issues 3 and 4) and prints one markdown table with every number next to
//! its target. It reports; it never fails because a target was missed (the tests never
//! assert on time). Needs root. See bench/README.md for what each number means.

mod apply;
mod bigtables;
mod mwan;
mod nfttime;
mod outage;
mod outage6;
mod policies;
mod repair;
mod report;
mod rss;
mod soak;
mod traffic;
mod util;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::{Parser, ValueEnum};

use report::Report;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Scenario {
    /// Client-visible failover outage (blackhole, carrier loss), multiwan vs the classic
    /// ping loop, and detection → applied from the daemon's log.
    Outage,
    /// The IPv6 blackhole outage beside the IPv4 one, dual-stack lab (issue 10).
    Outage6,
    /// nft's own transaction times, for reading the apply times against.
    Nft,
    /// Daemon RSS and CPU with 8 links × 3 targets at 5 probes/s.
    Rss,
    /// iperf3 through the router: multiwan with 1000 rules vs plain masquerade.
    Throughput,
    /// New TCP connections per second through the router, same comparison.
    Connrate,
    /// Plan + apply time for 64 links and 1000 rules.
    Apply,
    /// LAN outage of a firewall reload (`flush ruleset` + the firewall) under the daemon.
    Reload,
    /// Probe round lateness and false loss while status and metrics are asked 20/s each.
    Lateness,
    /// reload, lateness (issue 9).
    Repair,
    /// 100k main-table routes changing 20k at a time (issue 14; not in `all`).
    Bigtables,
    /// `--soak-minutes` of flaps, reloads, overrides, firewall reloads and route churn
    /// under LAN traffic (issue 14; not in `all`).
    Soak,
    /// outage, nft, rss.
    Daemon,
    /// throughput, connrate, apply.
    Policies,
    /// Everything (the default).
    All,
}

impl Scenario {
    fn expand(self) -> Vec<Scenario> {
        use Scenario::*;
        match self {
            Daemon => vec![Outage, Nft, Rss],
            Policies => vec![Throughput, Connrate, Apply],
            Repair => vec![Reload, Lateness],
            All => vec![
                Outage, Outage6, Nft, Rss, Throughput, Connrate, Apply, Reload, Lateness,
            ],
            s => vec![s],
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "multiwan-bench",
    about = "Benchmarks multiwan in network-namespace labs and prints a markdown table (needs root)"
)]
struct Args {
    /// Scenarios to run, in this order: outage nft rss throughput connrate apply reload
    /// lateness (groups: daemon, policies, repair, all). Default: all.
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,
    /// Trials per kind of failure and method in `outage` (at least 10 for the report).
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// Measuring window of `rss`, seconds.
    #[arg(long, default_value_t = 30)]
    rss_seconds: u64,
    /// Rounds of `throughput` (each: baseline and multiwan, order alternating).
    #[arg(long, default_value_t = 4)]
    repeats: usize,
    /// Rounds of `connrate` (each: baseline, multiwan, multiwan without rules).
    #[arg(long, default_value_t = 4)]
    connrate_repeats: usize,
    /// Seconds of each iperf3 run (plus one omitted second).
    #[arg(long, default_value_t = 3)]
    iperf_seconds: u64,
    /// Seconds of each connection-rate run.
    #[arg(long, default_value_t = 5)]
    connrate_seconds: u64,
    /// Firewall reloads in `reload`.
    #[arg(long, default_value_t = 10)]
    reload_trials: usize,
    /// Seconds of each of the two windows (quiet, loaded) of `lateness`.
    #[arg(long, default_value_t = 20)]
    lateness_seconds: u64,
    /// The multiwan binary to measure (default: build target/release/multiwan first).
    #[arg(long)]
    multiwan: Option<PathBuf>,
    /// Bursts of 20,000 route changes in `bigtables`.
    #[arg(long, default_value_t = 10)]
    bursts: usize,
    /// Length of `soak`, minutes.
    #[arg(long, default_value_t = 30)]
    soak_minutes: u64,
    /// Also write the markdown report to this file.
    #[arg(long)]
    output: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    std::process::exit(match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("multiwan-bench: {e:#}");
            1
        }
    });
}

fn run(args: Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("the bench builds network namespaces: run it as root");
    }
    util::install_signal_handlers();
    let mut selected: Vec<Scenario> = if args.scenarios.is_empty() {
        Scenario::All.expand()
    } else {
        args.scenarios.iter().flat_map(|s| s.expand()).collect()
    };
    selected.sort();
    selected.dedup();

    let bin = mwan::locate_binary(args.multiwan.as_deref())?;
    let start = Instant::now();
    let load_before = util::loadavg();
    let mut report = Report::default();
    let mut policy_lab: Option<policies::PolicyLab> = None;

    for s in &selected {
        if util::check_interrupted().is_err() {
            break;
        }
        let name = format!("{s:?}").to_lowercase();
        let t = Instant::now();
        let result = match s {
            Scenario::Outage => outage::run(&mut report, &bin, args.trials),
            Scenario::Outage6 => outage6::run(&mut report, &bin, args.trials),
            Scenario::Nft => nfttime::run(&mut report, &bin),
            Scenario::Rss => rss::run(&mut report, &bin, args.rss_seconds),
            Scenario::Throughput | Scenario::Connrate => (|| {
                if policy_lab.is_none() {
                    policy_lab = Some(policies::PolicyLab::build(&bin)?);
                }
                let pl = policy_lab.as_mut().expect("built above");
                if *s == Scenario::Throughput {
                    policies::throughput(&mut report, pl, args.repeats, args.iperf_seconds)
                } else {
                    policies::connrate(
                        &mut report,
                        pl,
                        args.connrate_repeats,
                        args.connrate_seconds,
                    )
                }
            })(),
            Scenario::Apply => {
                policy_lab = None; // its namespaces are not needed any more
                apply::run(&mut report, &bin)
            }
            Scenario::Bigtables => bigtables::run(&mut report, &bin, args.bursts),
            Scenario::Soak => soak::run(&mut report, &bin, args.soak_minutes),
            Scenario::Reload => repair::reload(&mut report, &bin, args.reload_trials),
            Scenario::Lateness => repair::lateness(&mut report, &bin, args.lateness_seconds),
            Scenario::Daemon | Scenario::Policies | Scenario::Repair | Scenario::All => {
                unreachable!("expanded")
            }
        };
        if let Err(e) = result {
            eprintln!("multiwan-bench: {name} failed: {e:#}");
            report.failed(&name, &e);
        }
        report.detail(
            &name,
            format!("scenario wall time {:.1} s", t.elapsed().as_secs_f64()),
        );
    }
    drop(policy_lab);

    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let header = vec![
        "## multiwan-bench results".to_string(),
        String::new(),
        format!("- command: `{command}` (multiwan: `{}`)", bin.display()),
        format!("- machine: {}", util::machine()),
        format!(
            "- load average before / after: {load_before} / {}; total {:.0} s",
            util::loadavg(),
            start.elapsed().as_secs_f64()
        ),
        format!(
            "- tools: {}; {}",
            util::version_of("nft", "--version"),
            util::version_of("iperf3", "--version")
        ),
    ];
    let text = report.markdown(&header);
    println!("{text}");
    if let Some(path) = &args.output {
        std::fs::write(path, &text)?;
    }
    if util::check_interrupted().is_err() {
        anyhow::bail!("interrupted; the report above is partial");
    }
    Ok(())
}
