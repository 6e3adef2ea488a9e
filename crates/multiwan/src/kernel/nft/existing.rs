//! Reading the installed table: one `nft -j list table`, parsed as plain JSON.

use std::collections::{BTreeMap, BTreeSet};

use nftables::helper::{self, NftablesError, DEFAULT_NFT};
use serde_json::Value;

use super::lower::*;
use crate::kernel::error::{KernelError, Result};
use crate::plan::nft::{BaseChain, ChainKind, Hook, NftTable, SetElements};

/// The regular chain whose only rule carries the digest as its comment.
pub const PLAN_CHAIN: &str = "plan";

/// What is installed now under the table's name, from one `nft -j list table`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Existing {
    /// The table exists at all.
    pub table: bool,
    /// The digest stored in chain `plan`, if any.
    pub digest: Option<String>,
    /// Chains by name; `None` for a regular chain.
    pub chains: BTreeMap<String, Option<BaseChain>>,
    /// Named sets by name, with their type as nft lists it (`ipv4_addr`) and whether
    /// they have the `interval` flag.
    pub sets: BTreeMap<String, (String, bool)>,
    /// Named maps (multiwan makes none now; ones found are removed).
    pub maps: BTreeSet<String>,
    /// Named counters with their packet count.
    pub counters: BTreeMap<String, u64>,
    /// Elements of the sets, canonical ([`super::elements::canonical`]); `None` when not
    /// known (a JSON listing is terse: elements are read apart, as text).
    pub set_elements: Option<BTreeMap<String, SetElements>>,
}

/// The whole ruleset of this network namespace as nft's JSON (for `check`, which looks
/// for other tables using multiwan's mark bits). Blocking: for the CLI only, never the
/// daemon's event loop.
pub fn list_ruleset_json() -> Result<String> {
    helper::get_current_ruleset_raw(DEFAULT_NFT, ["list", "ruleset"])
        .map_err(|e| KernelError::nft("listing the ruleset".to_string(), e))
}

/// Packets per named counter of `table inet <name>`, blocking while `nft` runs (see
/// `Kernel::read_counters_blocking`; the async one is `run::read_counters`).
pub fn read_counters_blocking(name: &str) -> Result<BTreeMap<String, u64>> {
    match helper::get_current_ruleset_raw(DEFAULT_NFT, ["-t", "list", "table", "inet", name]) {
        Ok(json) => Ok(Existing::parse(name, &json)?.counters),
        Err(NftablesError::NftFailed { stderr, .. })
            if stderr.contains("No such file or directory") =>
        {
            Ok(BTreeMap::new())
        }
        Err(e) => Err(KernelError::nft(format!("listing table inet {name}"), e)),
    }
}

impl Existing {
    /// What installing `table` left in the kernel, as [`Existing::read`] would find it
    /// (counter values unknown: 0).
    pub fn from_table(table: &NftTable) -> Existing {
        let mut chains: BTreeMap<String, Option<BaseChain>> = table
            .chains
            .iter()
            .map(|c| (c.name.clone(), c.hook))
            .collect();
        chains.insert(PLAN_CHAIN.to_string(), None);
        Existing {
            table: true,
            digest: Some(table.digest.clone()),
            chains,
            sets: table
                .sets
                .iter()
                .map(|x| (x.name.clone(), set_shape(&x.elements)))
                .collect(),
            maps: BTreeSet::new(),
            counters: table.counters.iter().map(|c| (c.clone(), 0)).collect(),
            set_elements: Some(
                table
                    .sets
                    .iter()
                    .map(|x| (x.name.clone(), super::elements::canonical(&x.elements)))
                    .collect(),
            ),
        }
    }

    /// Reads what is installed as `table inet <name>` (an empty `Existing` if absent),
    /// set elements included.
    pub async fn read(name: &str) -> Result<Existing> {
        let mut ex = Existing::read_terse(name).await?;
        let mut elements = BTreeMap::new();
        for (set, (ty, _)) in &ex.sets {
            let e = super::elements::read_set(name, set, ty == "ipv6_addr").await?;
            elements.insert(set.clone(), e);
        }
        ex.set_elements = Some(elements);
        Ok(ex)
    }

    /// [`Existing::read`] without set elements (`set_elements` is `None`): what counters
    /// and adoption need.
    pub async fn read_terse(name: &str) -> Result<Existing> {
        // -t: no set elements in the JSON (100,000 of them would cost tens of MB).
        match super::run::nft(&["-j", "-t", "list", "table", "inet", name], None).await {
            Ok(json) => Existing::parse(name, &json),
            Err(NftablesError::NftFailed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(Existing::default())
            }
            Err(e) => Err(KernelError::nft(format!("listing table inet {name}"), e)),
        }
    }

    /// Reads the JSON that `nft -j list table inet <name>` printed. Parsed as plain
    /// JSON, not through the crate's schema: counters exceed its u32 fields, and rules
    /// someone else added may hold expressions the schema lacks.
    pub fn parse(name: &str, json: &str) -> Result<Existing> {
        let bad = |detail: String| KernelError::NftListing {
            table: name.to_string(),
            detail,
        };
        let v: Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        let objects = v
            .get("nftables")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no `nftables` array".into()))?;
        let mut ex = Existing::default();
        let s = |o: &Value, k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
        for obj in objects {
            let Some((kind, o)) = obj.as_object().and_then(|m| m.iter().next()) else {
                continue;
            };
            // Only this table's objects (the listing holds only them, but be sure).
            if kind != "metainfo" && (s(o, "family").as_deref() != Some("inet")) {
                continue;
            }
            let in_table = s(o, "table").as_deref() == Some(name);
            match kind.as_str() {
                "table" if s(o, "name").as_deref() == Some(name) => ex.table = true,
                "chain" if in_table => {
                    let Some(cname) = s(o, "name") else { continue };
                    ex.chains.insert(cname, base_chain_of(o));
                }
                "set" if in_table => {
                    let Some(sname) = s(o, "name") else { continue };
                    let ty = match o.get("type") {
                        Some(Value::String(t)) => t.clone(),
                        Some(other) => other.to_string(),
                        None => String::new(),
                    };
                    let interval = o
                        .get("flags")
                        .map(|f| match f {
                            Value::Array(a) => a.iter().any(|x| x == "interval"),
                            Value::String(x) => x == "interval",
                            _ => false,
                        })
                        .unwrap_or(false);
                    ex.sets.insert(sname, (ty, interval));
                }
                "map" if in_table => {
                    if let Some(m) = s(o, "name") {
                        ex.maps.insert(m);
                    }
                }
                "counter" if in_table => {
                    let Some(c) = s(o, "name") else { continue };
                    let packets = o.get("packets").and_then(Value::as_u64).unwrap_or(0);
                    ex.counters.insert(c, packets);
                }
                "rule" if in_table && s(o, "chain").as_deref() == Some(PLAN_CHAIN) => {
                    if let Some(c) = s(o, "comment") {
                        ex.digest = Some(c);
                    }
                }
                _ => {}
            }
        }
        Ok(ex)
    }
}

fn base_chain_of(o: &Value) -> Option<BaseChain> {
    let kind = match o.get("type")?.as_str()? {
        "filter" => ChainKind::Filter,
        "nat" => ChainKind::Nat,
        "route" => ChainKind::Route,
        _ => return None,
    };
    let hook = match o.get("hook")?.as_str()? {
        "prerouting" => Hook::Prerouting,
        "input" => Hook::Input,
        "forward" => Hook::Forward,
        "output" => Hook::Output,
        "postrouting" => Hook::Postrouting,
        _ => return None,
    };
    let priority = o.get("prio")?.as_i64()? as i32;
    Some(BaseChain {
        kind,
        hook,
        priority,
    })
}
