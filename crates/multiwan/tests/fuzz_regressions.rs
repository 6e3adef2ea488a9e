//! Inputs the fuzzers (`fuzz_config.rs`) once failed on, kept as tests: each must pass
//! the same checks (no panic, errors with positions, a plan nft -c accepts).

mod common;
mod fuzz;

use fuzz::{check_text, nft_check_all, Tape};

fn accepted_and_nft_accepts(text: &str) {
    common::require_root();
    let table = check_text(text, &mut Tape::new(&[]))
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("the config is accepted");
    nft_check_all(&[(text.to_string(), table)]);
}

/// Two links on one interface (different gateways: allowed) gave the interface
/// vmaps of prerouting and postrouting one key twice, which nft refuses.
#[test]
fn two_links_on_one_interface_plan_a_ruleset_nft_accepts() {
    accepted_and_nft_accepts(
        r#"
[links.isp1]
id = 1
interface = "wan2"
mss_clamp = true

[links.isp2]
id = 2
interface = "wan2"
gateway = "100.64.1.1"

[links.isp3]
id = 3
interface = "wan3"
"#,
    );
}
