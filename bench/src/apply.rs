//! Issue 4: plan + apply time for 64 links and 1000 rules.
//!
//! The lab has at most 8 ISPs, so this builds its own two namespaces: a router with 64
//! veth pairs `wan1..wan64` (100.65.k.2/24; the peers, 100.65.k.1, the gateways, sit
//! in one extra namespace) and `lan0`. Nothing is routed through them: apply only needs
//! the interfaces, addresses and carrier. Config: links isp1..isp64 (equal priority:
//! the `default` policy is a 64-way split and a 64-next-hop multipath route), 1000
//! rules as in the policies scenario, rule i sending to link i % 64.
//!
//! Measured two ways:
//! - `multiwan apply`, the whole process as an operator runs it (parse, read the
//!   interfaces, plan, dump and diff, nft check and batch): on an empty kernel (after
//!   `multiwan flush`), and again with nothing to change;
//! - through the library, in a thread inside the namespace, the daemon's path when a
//!   link changes state: `plan()` with isp1 down, then `Kernel::apply_after(previous,
//!   desired)` (no read-back, no `nft -c`), and back up; for comparison the same change
//!   through the full `Kernel::apply` (dump, diff, `nft -c`, batch), and the pieces:
//!   `config::load`, `plan()`, `read_installed`.

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use multiwan::kernel::{Kernel, Ownership};
use multiwan::plan::{self, LinkState, LinkStates, PlanInput};
use netns_lab::{unique_name, Netns};

use crate::mwan::{self, Instance};
use crate::report::Report;
use crate::util::{self, fmt_list, fmt_num, median, ms};

const SCENARIO: &str = "apply";
const LINKS: usize = 64;
const RULES: usize = 1000;
const CLI_RUNS: usize = 5;
const LIB_RUNS: usize = 5;

fn build_namespaces() -> Result<(Netns, Netns)> {
    let router = Netns::new(unique_name("mwb", "apply64-r"))?;
    let peer = Netns::new(unique_name("mwb", "apply64-p"))?;
    router.sysctls(&[("net.ipv4.ip_forward", "1")])?;
    let mut r = Vec::new();
    let mut p = Vec::new();
    for k in 1..=LINKS {
        r.push(format!(
            "link add name wan{k} type veth peer name c{k} netns {}",
            peer.name()
        ));
        p.push(format!("link set c{k} up"));
        p.push(format!("addr add 100.65.{k}.1/24 dev c{k}"));
    }
    r.push(format!(
        "link add name lan0 type veth peer name lanc netns {}",
        peer.name()
    ));
    p.push("link set lanc up".into());
    router.ip_batch(&r)?;
    peer.ip_batch(&p)?;
    let mut r = Vec::new();
    for k in 1..=LINKS {
        r.push(format!("link set wan{k} up"));
        r.push(format!("addr add 100.65.{k}.2/24 dev wan{k}"));
    }
    r.push("link set lan0 up".into());
    r.push("addr add 192.0.2.1/24 dev lan0".into());
    router.ip_batch(&r)?;
    Ok((router, peer))
}

// long-fn: one measurement after another on the same router, each a row
pub fn run(report: &mut Report, bin: &Path) -> Result<()> {
    eprintln!("multiwan-bench: apply: building a router with {LINKS} uplinks");
    let (router, _peer) = build_namespaces()?;
    let mw = Instance::new(bin, "a64");
    let names: Vec<String> = (1..=LINKS).map(|k| format!("isp{k}")).collect();
    let links: String = (1..=LINKS)
        .map(|k| {
            mwan::link_toml(
                &names[k - 1],
                k,
                &format!("wan{k}"),
                &format!("gateway = \"100.65.{k}.1\""),
                &[],
                0,
            )
        })
        .collect();
    mw.write_config(
        "lan = [\"lan0\"]",
        &(links + &mwan::rules_toml(RULES, &names)),
    )?;

    // The CLI, end to end.
    let mut fresh = Vec::new();
    let mut noop = Vec::new();
    for _ in 0..CLI_RUNS {
        util::check_interrupted()?;
        mw.flush(&router)?;
        fresh.push(ms(mw.cli(&router, &["apply"])?.0));
        noop.push(ms(mw.cli(&router, &["apply"])?.0));
    }
    let (_, out) = util::timed(router.command("ip").args(["-4", "rule", "show"]))?;
    let ip_rules = String::from_utf8_lossy(&out.stdout).lines().count();
    let (_, out) =
        util::timed(
            router
                .command("nft")
                .args(["list", "table", "inet", &mw.nft_table]),
        )?;
    let nft_lines = String::from_utf8_lossy(&out.stdout).lines().count();
    let (flush_took, _) = mw.cli(&router, &["flush"])?;

    report.at_most(
        SCENARIO,
        format!("`multiwan apply` end to end, {LINKS} links + {RULES} rules, empty kernel → installed, median / worst (n={CLI_RUNS})"),
        format!("{} / {} ms", fmt_num(median(&fresh)), fmt_num(util::max(&fresh))),
        median(&fresh),
        200.0,
        "ms",
        "≤ 200 ms",
    );
    report.info(
        SCENARIO,
        "`multiwan apply` again, nothing to change (dump + diff + digest), median",
        format!("{} ms", fmt_num(median(&noop))),
    );
    report.detail(
        SCENARIO,
        format!(
            "CLI fresh apply (ms): {} | no-op apply (ms): {} | flush {:.0} ms; installed: {ip_rules} IPv4 ip rules (all tables), {nft_lines} lines of nft table",
            fmt_list(&fresh),
            fmt_list(&noop),
            ms(flush_took)
        ),
    );

    // The library: the daemon's path.
    let config_path = mw.config.clone();
    let rt_dir = std::env::temp_dir().join(format!("mwbench-{}-rt", std::process::id()));
    std::fs::create_dir_all(&rt_dir)?;
    let rt_dir2 = rt_dir.clone();
    let lib = router.run(move || library_times(&config_path, &rt_dir2));
    let _ = std::fs::remove_dir_all(&rt_dir);
    let lib = lib??;

    let fast: Vec<f64> = lib
        .down_plan
        .iter()
        .zip(&lib.down_fast)
        .map(|(p, a)| p + a)
        .collect();
    let full: Vec<f64> = lib
        .down_plan
        .iter()
        .zip(&lib.down_full)
        .map(|(p, a)| p + a)
        .collect();
    report.at_most(
        SCENARIO,
        format!("daemon path (library): plan() + Kernel::apply_after when 1 of {LINKS} links goes down, median / worst (n={LIB_RUNS})"),
        format!("{} / {} ms", fmt_num(median(&fast)), fmt_num(util::max(&fast))),
        median(&fast),
        200.0,
        "ms",
        "≤ 200 ms",
    );
    report.info(
        SCENARIO,
        "same change with the full Kernel::apply (read back), median",
        format!("{} ms", fmt_num(median(&full))),
    );
    report.info(
        SCENARIO,
        "library: config::load / plan() / read_installed / fresh apply / no-op apply, medians",
        format!(
            "{} / {} / {} / {} / {} ms",
            fmt_num(lib.parse),
            fmt_num(median(&lib.plan)),
            fmt_num(median(&lib.read_installed)),
            fmt_num(lib.apply_fresh),
            fmt_num(median(&lib.apply_noop))
        ),
    );
    report.detail(
        SCENARIO,
        format!(
            "library: config::load {:.1} ms, read_facts {:.1} ms, plan() (ms): {}; read_installed (ms): {}; no-op apply (ms): {}",
            lib.parse,
            lib.facts,
            fmt_list(&lib.plan),
            fmt_list(&lib.read_installed),
            fmt_list(&lib.apply_noop),
        ),
    );
    report.detail(
        SCENARIO,
        format!(
            "library, isp1 down: plan (ms) {} | apply_after (ms) {} (changes {:?}) | full apply (ms) {}; isp1 back up, plan + apply_after (ms): {}",
            fmt_list(&lib.down_plan),
            fmt_list(&lib.down_fast),
            lib.down_changes,
            fmt_list(&lib.down_full),
            fmt_list(&lib.up_fast)
        ),
    );
    Ok(())
}

/// Times measured through the library (ms).
#[derive(Debug, Default)]
struct LibTimes {
    parse: f64,
    facts: f64,
    plan: Vec<f64>,
    read_installed: Vec<f64>,
    apply_fresh: f64,
    apply_noop: Vec<f64>,
    down_plan: Vec<f64>,
    /// `apply_after(previous, desired)`: the daemon's path for a state change.
    down_fast: Vec<f64>,
    down_changes: Vec<usize>,
    /// `apply(desired)`: reads everything back and checks with `nft -c` first.
    down_full: Vec<f64>,
    up_fast: Vec<f64>,
}

/// Runs on a thread inside the router namespace.
fn library_times(config_path: &Path, rt_dir: &Path) -> Result<LibTimes> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut t = LibTimes::default();
        let s = Instant::now();
        let config = multiwan::config::load(config_path).map_err(|e| anyhow!("{e}"))?;
        t.parse = ms(s.elapsed());
        let kernel = Kernel::new()
            .context("opening netlink")?
            .with_rt_tables_dir(rt_dir);
        let s = Instant::now();
        let facts = kernel.read_facts().await?;
        t.facts = ms(s.elapsed());
        let seed = 0x5eed;
        let all_up = LinkStates::new();
        let mut one_down = LinkStates::new();
        one_down.insert("isp1".to_string(), LinkState::Down);
        let plan_for = |states: &LinkStates| {
            plan::plan(&PlanInput {
                config: &config,
                states,
                facts: &facts,
                seed,
            })
        };

        for _ in 0..20 {
            let s = Instant::now();
            let d = plan_for(&all_up);
            t.plan.push(ms(s.elapsed()));
            drop(d);
        }
        let up = plan_for(&all_up);
        let own = Ownership::from(&up);
        kernel.flush(&own).await?;
        let s = Instant::now();
        kernel.apply(&up).await?;
        t.apply_fresh = ms(s.elapsed());
        for _ in 0..LIB_RUNS {
            let s = Instant::now();
            kernel.read_installed(&own).await?;
            t.read_installed.push(ms(s.elapsed()));
            let s = Instant::now();
            kernel.apply(&up).await?;
            t.apply_noop.push(ms(s.elapsed()));
        }
        for _ in 0..LIB_RUNS {
            util::check_interrupted()?;
            // The daemon's path: plan, then apply against what it installed last.
            let s = Instant::now();
            let down = plan_for(&one_down);
            t.down_plan.push(ms(s.elapsed()));
            let s = Instant::now();
            let r = kernel.apply_after(&up, &down).await?;
            t.down_fast.push(ms(s.elapsed()));
            t.down_changes.push(r.count());
            let s = Instant::now();
            let back = plan_for(&all_up);
            kernel.apply_after(&down, &back).await?;
            t.up_fast.push(ms(s.elapsed()));
            // The same change through the full apply.
            let s = Instant::now();
            kernel.apply(&down).await?;
            t.down_full.push(ms(s.elapsed()));
            kernel.apply(&up).await?;
        }
        kernel.flush(&own).await?;
        Ok(t)
    })
}
