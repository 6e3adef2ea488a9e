//! How long nftables itself takes here, so the daemon's apply time can be read against
//! it: the `nft` process alone, a trivial transaction (check only, and committed), and
//! multiwan's own rulesets (from `multiwan plan` in a lab router, renamed to a scratch
//! table) checked, written and rewritten in place, and listed as JSON: the operations
//! one apply performs (`list` to diff, `-c` to validate, the batch itself).
//!
//! Each operation runs 15 times; medians are reported. Text input (`nft -f`), where
//! multiwan sends the same content as JSON (`nft -j -f -`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use netns_lab::{Lab, Netns};

use crate::mwan::{self, Instance};
use crate::report::Report;
use crate::util::{self, fmt_list, fmt_num, median, ms};

const SCENARIO: &str = "nft";
const RUNS: usize = 15;
const SCRATCH: &str = "mwbench_nft";

struct Files {
    dir: PathBuf,
}

impl Files {
    fn new() -> Result<Files> {
        let dir = std::env::temp_dir().join(format!("mwbench-{}-nft", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Files { dir })
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let p = self.dir.join(name);
        std::fs::write(&p, text)?;
        Ok(p)
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nft_runs(ns: &Netns, args: &[&str], runs: usize) -> Result<Vec<f64>> {
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        util::check_interrupted()?;
        let (took, _) = util::timed(ns.command("nft").args(args))?;
        v.push(ms(took));
    }
    Ok(v)
}

/// The nft script `multiwan plan` prints (its here-document), for table `to`.
pub fn plan_ruleset(mw: &Instance, ns: &Netns, to: &str) -> Result<String> {
    let (_, out) = mw.cli(ns, &["plan"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text
        .find("<<'NFT'\n")
        .context("no nft here-document in `multiwan plan`")?
        + "<<'NFT'\n".len();
    let end = text[start..]
        .find("\nNFT")
        .context("unterminated nft here-document")?
        + start;
    let script = text[start..end].to_string();
    let from = format!("table inet {} {{", mw.nft_table);
    if !script.contains(&from) {
        bail!("the plan's nft script does not define {from}");
    }
    Ok(script.replace(&from, &format!("table inet {to} {{")))
}

// long-fn: one measurement after another on the same lab, each a row
pub fn run(report: &mut Report, bin: &Path) -> Result<()> {
    eprintln!("multiwan-bench: nft: building the lab (3 ISPs)");
    let lab = Lab::builder("nft")
        .prefix("mwb")
        .isps(3)
        .servers(3)
        .build()?;
    let ns = lab.router();
    let files = Files::new()?;
    let mw = Instance::new(bin, "nft");

    // The floor: the process, one netlink dump, nothing to commit.
    let floor = nft_runs(ns, &["list", "tables"], RUNS)?;
    let trivial = files.write(
        "trivial.nft",
        &format!("add table inet {SCRATCH}\ndelete table inet {SCRATCH}\n"),
    )?;
    let trivial_s = trivial.to_string_lossy().into_owned();
    let check = nft_runs(ns, &["-c", "-f", &trivial_s], RUNS)?;
    let commit = nft_runs(ns, &["-f", &trivial_s], RUNS)?;
    report.info(
        SCENARIO,
        "`nft list tables` (process + one dump: the floor), median",
        format!("{} ms", fmt_num(median(&floor))),
    );
    report.info(
        SCENARIO,
        "trivial transaction (add + delete a table): `nft -c` (aborted) / committed, medians",
        format!(
            "{} / {} ms",
            fmt_num(median(&check)),
            fmt_num(median(&commit))
        ),
    );
    // One map element added, then deleted (what an incremental update would send).
    let map = files.write(
        "map.nft",
        &format!("table inet {SCRATCH} {{\n\tmap m {{\n\t\ttype ipv4_addr : verdict\n\t}}\n}}\n"),
    )?;
    nft_runs(ns, &["-f", &map.to_string_lossy()], 1)?;
    let mut add_el = Vec::new();
    let mut del_el = Vec::new();
    for i in 1..=RUNS {
        let el = format!("{{ 198.18.255.{i} : accept }}");
        add_el.extend(nft_runs(
            ns,
            &["add", "element", "inet", SCRATCH, "m", &el],
            1,
        )?);
    }
    for i in 1..=RUNS {
        let el = format!("{{ 198.18.255.{i} }}");
        del_el.extend(nft_runs(
            ns,
            &["delete", "element", "inet", SCRATCH, "m", &el],
            1,
        )?);
    }
    nft_runs(ns, &["delete", "table", "inet", SCRATCH], 1)?;
    report.info(
        SCENARIO,
        "one map element: added / deleted (anything deleted waits for an RCU grace period), medians",
        format!("{} / {} ms", fmt_num(median(&add_el)), fmt_num(median(&del_el))),
    );
    report.detail(
        SCENARIO,
        format!("`nft list tables` (ms): {}", fmt_list(&floor)),
    );
    report.detail(
        SCENARIO,
        format!(
            "map element add (ms): {} | delete (ms): {}",
            fmt_list(&add_el),
            fmt_list(&del_el)
        ),
    );
    report.detail(SCENARIO, format!("trivial, -c (ms): {}", fmt_list(&check)));
    report.detail(
        SCENARIO,
        format!("trivial, committed (ms): {}", fmt_list(&commit)),
    );

    let targets = lab.servers();
    let outage_links = mwan::link_toml("isp1", 1, "wan1", "priority = 1", &targets[..2], 200)
        + &mwan::link_toml("isp2", 2, "wan2", "priority = 2", &targets[..2], 200);
    let names: Vec<String> = (1..=3).map(|k| format!("isp{k}")).collect();
    let policy_links: String = (1..=3)
        .map(|k| mwan::link_toml(&names[k - 1], k, &format!("wan{k}"), "", &[], 0))
        .collect();
    let configs = [
        ("outage config (2 links, 0 rules)", outage_links),
        (
            "policies config (3 links, 1000 rules)",
            policy_links + &mwan::rules_toml(1000, &names),
        ),
    ];
    for (label, links) in configs {
        mw.write_config("lan = [\"lan0\"]", &links)?;
        let script = plan_ruleset(&mw, ns, SCRATCH)?;
        let lines = script.lines().count();
        let fresh = files.write("fresh.nft", &script)?;
        let rewrite = files.write(
            "rewrite.nft",
            &format!("table inet {SCRATCH} {{\n}}\nflush table inet {SCRATCH}\n{script}"),
        )?;
        let delete = files.write(
            "delete.nft",
            &format!("table inet {SCRATCH} {{\n}}\ndelete table inet {SCRATCH}\n"),
        )?;
        let (fresh_s, rewrite_s, delete_s) = (
            fresh.to_string_lossy().into_owned(),
            rewrite.to_string_lossy().into_owned(),
            delete.to_string_lossy().into_owned(),
        );
        let checked = nft_runs(ns, &["-c", "-f", &fresh_s], RUNS)?;
        let mut loads = Vec::new();
        for _ in 0..RUNS {
            util::check_interrupted()?;
            nft_runs(ns, &["-f", &delete_s], 1)?;
            loads.extend(nft_runs(ns, &["-f", &fresh_s], 1)?);
        }
        let rewrites = nft_runs(ns, &["-f", &rewrite_s], RUNS)?;
        let lists = nft_runs(ns, &["-j", "list", "table", "inet", SCRATCH], RUNS)?;
        nft_runs(ns, &["-f", &delete_s], 1)?;
        report.info(
            SCENARIO,
            format!("{label}, {lines}-line nft script: `nft -c` / load / rewrite in place / `nft -j list`, medians"),
            format!(
                "{} / {} / {} / {} ms",
                fmt_num(median(&checked)),
                fmt_num(median(&loads)),
                fmt_num(median(&rewrites)),
                fmt_num(median(&lists))
            ),
        );
        report.detail(
            SCENARIO,
            format!(
                "{label}: check {} | load {} | rewrite {} | list {} (ms)",
                fmt_list(&checked),
                fmt_list(&loads),
                fmt_list(&rewrites),
                fmt_list(&lists)
            ),
        );
    }
    Ok(())
}

/// `nft -f` of multiwan's own ruleset for `mw`'s config, rewritten in place as its
/// batches do (flush the table, add everything), `runs` times, on a scratch table in
/// `ns`: the nft share of one daemon apply.
pub fn rewrite_times(mw: &Instance, ns: &Netns, runs: usize) -> Result<Vec<f64>> {
    let files = Files::new()?;
    let script = plan_ruleset(mw, ns, SCRATCH)?;
    let rewrite = files.write(
        "rewrite.nft",
        &format!("table inet {SCRATCH} {{\n}}\nflush table inet {SCRATCH}\n{script}"),
    )?;
    let times = nft_runs(ns, &["-f", &rewrite.to_string_lossy()], runs)?;
    nft_runs(ns, &["delete", "table", "inet", SCRATCH], 1)?;
    Ok(times)
}
