//! Golden tests of the planner: each `tests/golden/<name>.toml` is planned against the
//! same observed facts (the lab's router: wan1..wan3 with addresses and DHCP-style
//! gateways, lan0), and the rendered plan must equal `tests/golden/<name>.plan`.
//!
//! After an intended change of output: `UPDATE_GOLDEN=1 cargo test --test plan_golden`,
//! then read the diff of the .plan files before committing it.

use std::path::{Path, PathBuf};

mod common;

use multiwan::config;
use multiwan::plan::{self, Facts, LinkState, LinkStates, PlanInput};
use multiwan::render;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn plan_file(toml: &Path, states: &LinkStates) -> String {
    plan_file_with(toml, states, &common::lab_facts())
}

fn plan_file_with(toml: &Path, states: &LinkStates, facts: &Facts) -> String {
    let text = std::fs::read_to_string(toml).unwrap();
    // A fixed path keeps the golden output independent of where the checkout is.
    let name = Path::new(toml.file_name().unwrap());
    let config = config::parse(&text, name).unwrap_or_else(|e| panic!("{}:\n{e}", toml.display()));
    let desired = plan::plan(&PlanInput {
        config: &config,
        states,
        facts,
        seed: 0x5eed,
    });
    render::plan_script(&config, &desired)
}

fn check_golden(name: &str, states: &LinkStates) {
    check_golden_with(name, states, &common::lab_facts());
}

fn check_golden_with(name: &str, states: &LinkStates, facts: &Facts) {
    let toml = golden_dir().join(format!("{name}.toml"));
    let suffix = if states.is_empty() {
        String::new()
    } else {
        let down: Vec<&str> = states.keys().map(String::as_str).collect();
        format!(".down-{}", down.join("-"))
    };
    let golden = golden_dir().join(format!("{name}{suffix}.plan"));
    let got = plan_file_with(&toml, states, facts);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&golden).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run with UPDATE_GOLDEN=1 and review it",
            golden.display()
        )
    });
    if got != want {
        panic!(
            "plan of {name} differs from {}:\n--- want\n{want}\n--- got\n{got}",
            golden.display()
        );
    }
}

#[test]
fn golden_one_link() {
    check_golden("one_link", &LinkStates::new());
}

#[test]
fn golden_three_links_in_tiers() {
    check_golden("tiers", &LinkStates::new());
}

#[test]
fn golden_tiers_with_the_first_tier_down() {
    let states: LinkStates = [
        ("fiber".to_string(), LinkState::Down),
        ("cable".to_string(), LinkState::Degraded),
    ]
    .into_iter()
    .collect();
    check_golden("tiers", &states);
}

#[test]
fn golden_point_to_point() {
    check_golden("point_to_point", &LinkStates::new());
}

#[test]
fn golden_ids_out_of_order() {
    check_golden("ids_out_of_order", &LinkStates::new());
}

#[test]
fn golden_rules() {
    check_golden("rules", &LinkStates::new());
}

#[test]
fn golden_cgroup_rules() {
    check_golden("cgroup", &LinkStates::new());
}

#[test]
fn golden_cgroup_rules_log_in_route_output() {
    check_golden("cgroup_log", &LinkStates::new());
}

#[test]
fn golden_destination_rules_share_a_verdict_map() {
    check_golden("destinations", &LinkStates::new());
}

#[test]
fn golden_nat_and_clamping_per_link() {
    check_golden_with("nat", &LinkStates::new(), &facts_v6_on_wan2());
}

#[test]
fn golden_snat_to_a_fixed_address() {
    check_golden("snat_to", &LinkStates::new());
}

#[test]
fn golden_npt6_and_nat66() {
    check_golden_with("npt6", &LinkStates::new(), &facts_v6_on_wan1_wan2());
}

/// The lab's facts with IPv6 (SLAAC address, RA default route) on wan1 and wan2.
fn facts_v6_on_wan1_wan2() -> Facts {
    let mut facts = facts_v6_on_wan2();
    let wan1 = facts.interfaces.get_mut("wan1").unwrap();
    wan1.addresses.push("2001:db8:1::2/64".parse().unwrap());
    wan1.default_gateway6 = Some("fe80::1".parse().unwrap());
    facts.main_prefixes.push("2001:db8:1::/64".parse().unwrap());
    facts
}

/// The lab's facts with an IPv6 address and default route on wan2 only.
fn facts_v6_on_wan2() -> Facts {
    let mut facts = common::lab_facts();
    let wan2 = facts.interfaces.get_mut("wan2").unwrap();
    wan2.addresses.push("2001:db8:2::2/64".parse().unwrap());
    wan2.default_gateway6 = Some("fe80::1".parse().unwrap());
    facts.main_prefixes.push("2001:db8:2::/64".parse().unwrap());
    facts
}

#[test]
fn golden_ipv6_selection_per_family() {
    check_golden_with("ipv6", &LinkStates::new(), &facts_v6_on_wan2());
}

/// With isp2 down, IPv6 has no link in service: each policy's fallback, for IPv6 only.
#[test]
fn golden_ipv6_selection_with_the_only_v6_link_down() {
    let states: LinkStates = [("isp2".to_string(), LinkState::Down)]
        .into_iter()
        .collect();
    check_golden_with("ipv6", &states, &facts_v6_on_wan2());
}

/// Every golden config's nft ruleset is accepted by the kernel's nftables (`nft -c`
/// checks it without installing anything; it runs in a namespace of its own anyway).
/// Cgroups that golden configs name are created for the check (nft resolves them).
#[test]
fn golden_nft_text_loads() {
    let ns = netns_lab::Netns::new(netns_lab::unique_name("mwg", "nft-loads")).unwrap();
    let cgroups = common::TestCgroup::new("golden-loads");
    let mut checked = 0;
    let mut plans: Vec<(PathBuf, String)> = Vec::new();
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let script = plan_file(&path, &LinkStates::new());
        plans.push((path.clone(), script));
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if stem == "npt6" {
            plans.push((
                path.clone(),
                plan_file_with(&path, &LinkStates::new(), &facts_v6_on_wan1_wan2()),
            ));
        }
        if stem == "ipv6" || stem == "nat" {
            plans.push((
                path.clone(),
                plan_file_with(&path, &LinkStates::new(), &facts_v6_on_wan2()),
            ));
        }
    }
    for (path, script) in plans {
        let nft = cgroups.localize(render::nft_section(&script).expect("plan has an nft section"));
        let file = std::env::temp_dir().join(format!(
            "mw-golden-{}-{}.nft",
            std::process::id(),
            path.file_stem().unwrap().to_string_lossy()
        ));
        std::fs::write(&file, &nft).unwrap();
        let out = common::with_cgroup2(&ns, "nft")
            .args(["-c", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&file);
        assert!(
            out.status.success(),
            "nft -c rejects the plan of {}:\n{}\n{nft}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} golden configs found");
}
