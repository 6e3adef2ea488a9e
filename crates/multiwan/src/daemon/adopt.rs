//! At start: which saved link states to adopt. Only those the kernel confirms (this
//! boot, and this instance's nft table and ip rules still installed), else a fresh
//! start with every enabled link `up`, said in one log line.

use crate::config::Config;
use crate::kernel::nft::Existing;
use crate::kernel::{rules, Kernel};
use crate::plan::marks::MarkLayout;
use crate::plan::{priority, Family, IpRule, LinkStates, RuleSelector, MAIN_TABLE};
use crate::state::{self, Adoption, KernelHolds, StateDir};

/// The link states the daemon starts from: the saved ones if the kernel confirms them,
/// else none (every enabled link starts `up`).
pub(super) async fn link_states(kernel: &Kernel, config: &Config, dir: &StateDir) -> LinkStates {
    let saved = dir.saved_links();
    let boot = state::boot_id();
    // Another boot needs no look at the kernel: nothing of that boot is in it.
    let holds = if state::same_boot(saved.as_ref(), boot.as_deref()) {
        kernel_holds(kernel, config).await
    } else {
        KernelHolds::default()
    };
    match state::adoption(saved, boot.as_deref(), holds) {
        Adoption::Adopt(states) => states,
        Adoption::Fresh(why) => {
            tracing::info!("fresh start, every enabled link starts up: {why}");
            LinkStates::new()
        }
    }
}

/// Two cheap reads that together say the kernel still holds what this instance
/// installed: its nft table with the digest only multiwan writes, and the two tagged
/// IPv4 rules that depend on the config alone (not on addresses, which may have
/// changed while the daemon was stopped). A failed read counts as "not there": a
/// fresh start is the safe side.
async fn kernel_holds(kernel: &Kernel, config: &Config) -> KernelHolds {
    let s = &config.settings;
    let nft_table = Existing::read(&s.nft_table)
        .await
        .is_ok_and(|e| e.table && e.digest.is_some());
    let p0 = s.rule_priority;
    let marks = MarkLayout::new(s.mark_mask);
    let wanted = [
        (
            priority::SUPPRESS_MAIN,
            RuleSelector {
                suppress_prefixlength: Some(0),
                ..Default::default()
            },
        ),
        (
            priority::MAIN_MARK,
            RuleSelector {
                fwmark: Some((marks.main(), marks.mask())),
                ..Default::default()
            },
        ),
    ]
    .map(|(p, selector)| IpRule {
        family: Family::V4,
        priority: p0 + p,
        selector,
        table: MAIN_TABLE,
    });
    let range = (p0, p0 + priority::MAIN_MARK);
    let rules = match rules::read_families(kernel.handle(), range, &[Family::V4]).await {
        // Ours: tagged with multiwan's protocol number, as apply installs them.
        Ok(found) => wanted.iter().all(|w| {
            found
                .iter()
                .any(|f| f.tagged() && f.rule.as_ref() == Some(w))
        }),
        Err(_) => false,
    };
    KernelHolds { nft_table, rules }
}
