//! The batch that turns the installed table into the desired one, as JSON (the normal
//! case) or as `nft -f` text; and the check of what the IR allows but nft does not.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use nftables::batch::Batch;
use nftables::schema::{self, FlushObject, NfCmd, NfListObject, Nftables};

use super::existing::*;
use super::lower::*;
use crate::kernel::error::{KernelError, Result};
use crate::plan::nft::{Action, Match, NftChain, NftRule, NftTable, SetElements, Verdict};

/// Checks what the IR allows but nft does not; [`to_batch`] is total and relies on it.
pub fn validate(table: &NftTable) -> Result<()> {
    let invalid = |why: String| KernelError::Invalid {
        what: format!("nft table {}", table.name),
        why,
    };
    let mut names = HashSet::new();
    for c in &table.chains {
        if c.name == PLAN_CHAIN {
            return Err(invalid(format!(
                "chain name `{PLAN_CHAIN}` is reserved for the digest"
            )));
        }
        if !names.insert(c.name.as_str()) {
            return Err(invalid(format!("chain `{}` listed twice", c.name)));
        }
        for r in &c.rules {
            for a in &r.actions {
                let in_map = match a {
                    Action::CtMarkVmap { entries, .. } => {
                        entries.iter().map(|(_, v)| v).collect::<Vec<_>>()
                    }
                    Action::IifnameVmap(e)
                    | Action::OifnameVmap(e)
                    | Action::DaddrVmap { entries: e, .. } => e.iter().map(|(_, v)| v).collect(),
                    Action::NumgenVmap { entries, .. } | Action::JhashVmap { entries, .. } => {
                        entries.iter().map(|(_, v)| v).collect()
                    }
                    _ => vec![],
                };
                if in_map.iter().any(|v| {
                    matches!(
                        v,
                        Verdict::RejectHostUnreachable
                            | Verdict::RejectIpv6AdminProhibited
                            | Verdict::RejectTcpReset
                    )
                }) {
                    return Err(invalid(format!(
                        "chain `{}`: reject inside a verdict map",
                        c.name
                    )));
                }
                // The nftables crate writes these as bare strings, which nft 1.0.6's
                // JSON parser refuses inside a map ("symbolic verdict expressions").
                if in_map
                    .iter()
                    .any(|v| matches!(v, Verdict::Accept | Verdict::Drop | Verdict::Return))
                {
                    return Err(invalid(format!(
                        "chain `{}`: accept, drop or return inside a verdict map",
                        c.name
                    )));
                }
            }
        }
    }
    Ok(())
}

/// One kernel transaction, as JSON (the normal case) or as `nft -f` text: nft 1.0.6's
/// JSON parser knows neither `socket cgroupv2` nor its `level`, so a table that
/// matches cgroups is sent as text, made by the same renderer as `multiwan plan`.
#[derive(Debug, Clone)]
pub enum NftBatch {
    Json(Nftables<'static>),
    Text(String),
}

impl NftBatch {
    /// The JSON form, if this batch is JSON.
    pub fn json(&self) -> Option<&Nftables<'static>> {
        match self {
            NftBatch::Json(j) => Some(j),
            NftBatch::Text(_) => None,
        }
    }
}

/// Set elements above which a table goes as text: JSON costs the daemon ~150 bytes of
/// schema objects per element (tens of MB for a main table of 100,000 routes), text ~20.
pub const TEXT_ABOVE_ELEMENTS: usize = 2000;

/// Whether `table` goes as a text batch: it uses an expression the JSON path cannot
/// carry (see [`NftBatch`]) — cgroup matches, and NPTv6 (`snat ip6 prefix to`, whose
/// `type_flags` the `nftables` crate cannot express) — or has so many set elements that
/// JSON would cost too much memory.
pub fn needs_text(table: &NftTable) -> bool {
    let elements: usize = table
        .sets
        .iter()
        .map(|x| match &x.elements {
            SetElements::Ipv4(v) => v.len(),
            SetElements::Ipv6(v) => v.len(),
        })
        .sum();
    elements > TEXT_ABOVE_ELEMENTS || matches_cgroups(table) || snats_prefix(table)
}

/// Whether some rule of `table` matches a cgroup (`socket cgroupv2`).
pub fn matches_cgroups(table: &NftTable) -> bool {
    table.chains.iter().any(|c| {
        c.rules.iter().any(|r| {
            r.matches
                .iter()
                .any(|m| matches!(m, Match::SocketCgroupv2 { .. }))
        })
    })
}

/// Whether some rule of `table` rewrites an IPv6 prefix (NPTv6, `snat ip6 prefix to`).
fn snats_prefix(table: &NftTable) -> bool {
    table.chains.iter().any(|c| {
        c.rules.iter().any(|r| {
            r.actions
                .iter()
                .any(|a| matches!(a, Action::SnatPrefix { .. }))
        })
    })
}

/// The batch that turns what `existing` says is installed into `table`. Pure: the
/// caller decides whether to send it (not at all when the digests match).
///
/// Order inside the one transaction: create the table if missing; flush it (all rules
/// go, which frees every chain, set and counter from references; counters keep their
/// values, sets keep their elements); delete what is not desired any more or changed
/// shape (a base chain with another hook, a set of another type); empty the sets that
/// stay; create what is missing; fill sets; add every rule; store the digest.
pub fn to_batch(table: &NftTable, existing: &Existing) -> NftBatch {
    if needs_text(table) {
        NftBatch::Text(to_text_batch(table, existing))
    } else {
        NftBatch::Json(to_json_batch(table, existing))
    }
}

/// What `existing` holds that `table` does not want as it is.
struct Stale<'a> {
    delete_chains: Vec<&'a str>,
    /// Same name and shape: emptied, then refilled.
    flush_sets: Vec<&'a str>,
    delete_sets: Vec<&'a str>,
    delete_maps: Vec<&'a str>,
    delete_counters: Vec<&'a str>,
    /// Counters `table` wants that are missing (present ones are never re-added, so
    /// they keep their counts).
    add_counters: Vec<&'a str>,
}

fn stale<'a>(table: &'a NftTable, existing: &'a Existing) -> Stale<'a> {
    let desired_chains: BTreeMap<&str, &NftChain> =
        table.chains.iter().map(|c| (c.name.as_str(), c)).collect();
    let delete_chains = existing
        .chains
        .iter()
        .filter(|(name, hook)| {
            *name != PLAN_CHAIN
                && !desired_chains
                    .get(name.as_str())
                    .is_some_and(|c| c.hook == **hook)
        })
        .map(|(name, _)| name.as_str())
        .collect();
    let desired_sets: BTreeMap<&str, &SetElements> = table
        .sets
        .iter()
        .map(|x| (x.name.as_str(), &x.elements))
        .collect();
    let (mut flush_sets, mut delete_sets) = (Vec::new(), Vec::new());
    for (name, shape) in &existing.sets {
        let same = desired_sets
            .get(name.as_str())
            .is_some_and(|e| set_shape(e) == *shape);
        if same {
            flush_sets.push(name.as_str());
        } else {
            delete_sets.push(name.as_str());
        }
    }
    let desired_counters: BTreeSet<&str> = table.counters.iter().map(String::as_str).collect();
    Stale {
        delete_chains,
        flush_sets,
        delete_sets,
        delete_maps: existing.maps.iter().map(String::as_str).collect(),
        delete_counters: existing
            .counters
            .keys()
            .filter(|n| !desired_counters.contains(n.as_str()))
            .map(String::as_str)
            .collect(),
        add_counters: table
            .counters
            .iter()
            .filter(|n| !existing.counters.contains_key(*n))
            .map(String::as_str)
            .collect(),
    }
}

/// [`to_batch`] as `nft -f` text: the same commands in the same order, rules written
/// by `plan::nft::text` (also the renderer of `multiwan plan`).
pub fn to_text_batch(table: &NftTable, existing: &Existing) -> String {
    use crate::plan::nft::text as nft_text;
    use std::fmt::Write;
    let t = format!("inet {}", table.name);
    let st = stale(table, existing);
    let mut out = String::new();
    let _ = writeln!(out, "add table {t}");
    let _ = writeln!(out, "flush table {t}");
    for c in &st.delete_chains {
        let _ = writeln!(out, "delete chain {t} {c}");
    }
    for x in &st.flush_sets {
        let _ = writeln!(out, "flush set {t} {x}");
    }
    for x in &st.delete_sets {
        let _ = writeln!(out, "delete set {t} {x}");
    }
    for m in &st.delete_maps {
        let _ = writeln!(out, "delete map {t} {m}");
    }
    for c in &st.delete_counters {
        let _ = writeln!(out, "delete counter {t} {c}");
    }
    for c in &st.add_counters {
        let _ = writeln!(out, "add counter {t} {c}");
    }
    for x in &table.sets {
        let ty = match &x.elements {
            SetElements::Ipv4(_) => "ipv4_addr",
            SetElements::Ipv6(_) => "ipv6_addr",
        };
        let _ = writeln!(
            out,
            "add set {t} {} {{ type {ty}; flags interval; }}",
            x.name
        );
        // Written straight into the batch: no string per element (a set may hold
        // 100,000 of them).
        let mut first = true;
        let mut element = |out: &mut String, e: &dyn std::fmt::Display| {
            let _ = if first {
                write!(out, "add element {t} {} {{ {e}", x.name)
            } else {
                write!(out, ", {e}")
            };
            first = false;
        };
        match &x.elements {
            SetElements::Ipv4(v) => v.iter().for_each(|e| element(&mut out, e)),
            SetElements::Ipv6(v) => v.iter().for_each(|e| element(&mut out, e)),
        }
        if !first {
            out.push_str(" }\n");
        }
    }
    for c in &table.chains {
        match &c.hook {
            Some(b) => {
                let _ = writeln!(
                    out,
                    "add chain {t} {} {{ {} }}",
                    c.name,
                    nft_text::base_chain_spec(b)
                );
            }
            None => {
                let _ = writeln!(out, "add chain {t} {}", c.name);
            }
        }
    }
    let _ = writeln!(out, "add chain {t} {PLAN_CHAIN}");
    for c in &table.chains {
        for r in &c.rules {
            let _ = writeln!(out, "add rule {t} {} {}", c.name, nft_text::rule(r));
        }
    }
    let _ = writeln!(
        out,
        "add rule {t} {PLAN_CHAIN} return comment \"{}\"",
        table.digest
    );
    out
}

/// [`to_batch`] as JSON.
pub fn to_json_batch(table: &NftTable, existing: &Existing) -> Nftables<'static> {
    let t = table.name.as_str();
    let st = stale(table, existing);
    let mut b = Batch::new();
    b.add(NfListObject::Table(table_obj(t)));
    b.add_cmd(NfCmd::Flush(FlushObject::Table(table_obj(t))));
    for name in &st.delete_chains {
        b.delete(NfListObject::Chain(chain_obj(t, name, None)));
    }
    for name in &st.flush_sets {
        b.add_cmd(NfCmd::Flush(FlushObject::Set(Box::new(set_obj(
            t, name, None,
        )))));
    }
    for name in &st.delete_sets {
        b.delete(NfListObject::Set(Box::new(set_obj(t, name, None))));
    }
    for name in &st.delete_maps {
        b.delete(NfListObject::Map(Box::new(schema::Map {
            family: family(),
            table: s(t),
            name: s(name),
            ..Default::default()
        })));
    }
    for name in &st.delete_counters {
        b.delete(NfListObject::Counter(counter_obj(t, name)));
    }
    for name in &st.add_counters {
        b.add(NfListObject::Counter(counter_obj(t, name)));
    }
    for x in &table.sets {
        b.add(NfListObject::Set(Box::new(set_obj(
            t,
            &x.name,
            Some(&x.elements),
        ))));
    }
    for c in &table.chains {
        b.add(NfListObject::Chain(chain_obj(t, &c.name, c.hook)));
    }
    b.add(NfListObject::Chain(chain_obj(t, PLAN_CHAIN, None)));
    for c in &table.chains {
        for r in &c.rules {
            b.add(NfListObject::Rule(rule_obj(t, &c.name, r)));
        }
    }
    let digest_rule = NftRule::new(vec![], vec![Action::Verdict(Verdict::Return)])
        .with_comment(table.digest.clone());
    b.add(NfListObject::Rule(rule_obj(t, PLAN_CHAIN, &digest_rule)));
    b.to_nftables()
}
