//! What every input must pass: no panic, errors with positions, a plan rendered.

use std::net::Ipv4Addr;
use std::path::Path;

use multiwan::config::{self, ConfigErrors};
use multiwan::plan::nft::NftTable;
use multiwan::plan::{self, Facts, InterfaceFacts, LinkState, LinkStates, PlanInput};
use multiwan::render;
use proptest::prop_assert;
use proptest::test_runner::TestCaseError;

use super::Tape;
use crate::common;

const FILE: &str = "fuzz.toml";

/// Every error names the file and a position inside the text.
fn check_errors(text: &str, errors: &ConfigErrors) -> Result<(), TestCaseError> {
    prop_assert!(!errors.is_empty(), "a rejection without errors");
    let lines = text.lines().count().max(1) + 1;
    for e in &errors.0 {
        let shown = e.to_string();
        prop_assert!(
            e.file == Path::new(FILE) && e.line >= 1 && e.line <= lines && e.column >= 1,
            "error without a position in the text ({lines} lines): {shown}"
        );
        // The column lies on the line (or just past its end: a value missing at the end).
        if let Some(line) = text.lines().nth(e.line - 1) {
            let width = line.chars().count() + 1;
            prop_assert!(
                e.column <= width,
                "column past the end of line {line:?}: {shown}"
            );
        }
        prop_assert!(
            shown.starts_with(&format!("{FILE}:{}:{}: ", e.line, e.column)),
            "{shown}"
        );
        prop_assert!(!e.message.trim().is_empty(), "empty message: {shown}");
    }
    Ok(())
}

/// Interfaces the links name, as the tape decides they look now.
fn facts_for(config: &config::Config, t: &mut Tape) -> Facts {
    let mut facts = common::lab_facts();
    for (k, link) in config.links.iter().enumerate() {
        let k = (k % 200) as u8 + 10;
        let iface = facts
            .interfaces
            .entry(link.interface.clone())
            .or_insert_with(|| InterfaceFacts {
                ifindex: 100 + u32::from(k),
                admin_up: true,
                carrier: true,
                addresses: vec![format!("100.64.{k}.2/24").parse().unwrap()],
                default_gateway4: Some(Ipv4Addr::new(100, 64, k, 1)),
                default_gateway6: None,
            });
        if t.chance(25) {
            iface
                .addresses
                .push(format!("2001:db8:{k}::2/64").parse().unwrap());
            iface.default_gateway6 = Some("fe80::1".parse().unwrap());
        }
        if t.chance(10) {
            iface.carrier = false;
        }
        if t.chance(10) {
            iface.addresses.clear();
        }
    }
    facts
}

fn states_for(config: &config::Config, t: &mut Tape) -> LinkStates {
    let all = [
        LinkState::Up,
        LinkState::Down,
        LinkState::Degraded,
        LinkState::Waiting,
        LinkState::Disabled,
    ];
    config
        .links
        .iter()
        .filter_map(|l| {
            let pick = t.chance(40).then(|| all[t.below(all.len())]);
            pick.map(|s| (l.name.clone(), s))
        })
        .collect()
}

/// Parses `text`; a rejection must carry positions; an accepted config is planned
/// (link states and facts from `t`) and rendered. Returns the nft table to check.
pub fn check_text(text: &str, t: &mut Tape) -> Result<Option<NftTable>, TestCaseError> {
    let config = match config::parse(text, Path::new(FILE)) {
        Ok(c) => c,
        Err(errors) => {
            if std::env::var_os("MULTIWAN_FUZZ_VERBOSE").is_some() {
                eprintln!("rejected: {}", errors.0[0]);
            }
            return check_errors(text, &errors).map(|()| None);
        }
    };
    let facts = facts_for(&config, t);
    let states = states_for(&config, t);
    let input = PlanInput {
        config: &config,
        states: &states,
        facts: &facts,
        seed: t.next(),
    };
    let desired = plan::plan(&input);
    // Deterministic: a restart or a periodic check that plans again from the same
    // input must find nothing to change.
    prop_assert!(
        plan::plan(&input) == desired,
        "two plans of one input differ"
    );
    let script = render::plan_script(&config, &desired);
    prop_assert!(script.contains("table inet"), "{script}");
    // As apply loads it: rules naming a cgroup that does not exist are left out.
    let (table, _notes) = multiwan::kernel::nft::with_live_cgroups(&desired.nft);
    Ok(Some(table.into_owned()))
}
