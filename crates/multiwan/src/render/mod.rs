//! Text renderings of a desired state (`multiwan plan`).
//!
//! The output is a shell script an operator can read (and run on a test box): sysctls,
//! `ip rule` and `ip route` commands, and the nft table as a here-document.

pub mod ip_text;

use std::fmt::Write;

use crate::config::Config;
pub use crate::plan::nft::text as nft_text;
use crate::plan::Desired;

/// The line that opens the nft here-document, and the one that closes it.
pub const NFT_BEGIN: &str = "nft -f - <<'NFT'";
pub const NFT_END: &str = "NFT";

/// The whole plan as a commented shell script.
pub fn plan_script(config: &Config, desired: &Desired) -> String {
    let s = &config.settings;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# multiwan plan: nft table inet {}, routing tables {}-{}, rule priorities {}-{}",
        s.nft_table,
        desired
            .owned_tables
            .first()
            .copied()
            .unwrap_or(s.table_base),
        desired.owned_tables.last().copied().unwrap_or(s.table_base),
        desired.owned_priorities.0,
        desired.owned_priorities.1
    );
    for l in &desired.links {
        let _ = write!(
            out,
            "# link {} (id {}, mark {:#x}, table {}): {}",
            l.name, l.id, l.mark, l.table, l.state
        );
        if let Some(why) = &l.waiting {
            let _ = write!(out, " ({why})");
        }
        if l.in_service {
            let _ = write!(out, ", {:.1} % of new connections", l.share_pct);
        }
        out.push('\n');
    }
    for l in config.links.iter().filter(|l| !l.enabled) {
        let _ = writeln!(
            out,
            "# link {} (id {}): disabled in the config",
            l.name, l.id
        );
    }

    out.push_str("\n# sysctls\n");
    for sc in &desired.sysctls {
        let _ = writeln!(out, "{}", ip_text::sysctl(sc));
    }
    out.push_str("\n# policy routing rules\n");
    for r in &desired.rules {
        let _ = writeln!(out, "{}", ip_text::rule(r));
    }
    out.push_str("\n# routes in multiwan's tables\n");
    for r in &desired.routes {
        let _ = writeln!(out, "{}", ip_text::route(r));
    }
    if !desired.table_names.is_empty() {
        let _ = writeln!(
            out,
            "\n# /etc/iproute2/rt_tables.d/{}.conf",
            config.settings.nft_table
        );
        for (id, name) in &desired.table_names {
            let _ = writeln!(out, "#   {id} {name}");
        }
    }
    out.push_str("\n# nftables\n");
    let _ = writeln!(out, "{NFT_BEGIN}");
    out.push_str(&nft_text::table(&desired.nft));
    let _ = writeln!(out, "{NFT_END}");
    out
}

/// The nft here-document of a plan script (for tests and tooling).
pub fn nft_section(script: &str) -> Option<&str> {
    let start = script.find(NFT_BEGIN)? + NFT_BEGIN.len() + 1;
    let end = script[start..].find(&format!("\n{NFT_END}\n"))? + start + 1;
    Some(&script[start..end])
}
