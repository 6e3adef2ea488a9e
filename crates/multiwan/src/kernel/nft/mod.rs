//! multiwan's nftables table: rendered from the closed IR in `plan::nft` into one JSON
//! batch (one kernel transaction) and applied through the `nft` binary.
//!
//! The installed table carries the digest of the IR it was made from (a rule comment in
//! the regular chain `plan`), so an apply whose IR did not change reads one listing and
//! touches nothing. The digest leaves set elements out: when only they changed,
//! [`elements`] sends the added and deleted ones. When the rest changed, the batch
//! flushes the table and rewrites it:
//! named counters are never deleted unless their link left the config, so they keep
//! counting across applies (`flush table` leaves counters alone; checked on the kernel).
//!
//! One file per job: [`existing`] reads the installed table, [`lower`] turns the IR into
//! the JSON schema, [`batch`] builds the one transaction (JSON or text), [`run`] runs the
//! `nft` binary (asynchronously: the event loop never waits on it), [`cgroups`] decides
//! which cgroup matches can be loaded now.

mod batch;
mod cgroups;
pub mod elements;
mod existing;
mod lower;
mod run;
#[cfg(test)]
mod tests;

pub use batch::{
    matches_cgroups, needs_text, to_batch, to_json_batch, to_text_batch, validate, NftBatch,
};
pub use cgroups::with_live_cgroups;
pub use existing::{list_ruleset_json, read_counters_blocking, Existing, PLAN_CHAIN};
pub use run::{check, delete_table, read_counters, send};
