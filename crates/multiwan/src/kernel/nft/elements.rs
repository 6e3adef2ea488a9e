//! Set elements changed one by one: the bypass sets follow the main table (SPEC §2.5),
//! which a VPN or a bypass list may change by thousands of routes at a time. The table's
//! digest leaves set elements out, so such a change is a small `add element` / `delete
//! element` transaction, never a rewrite of the table (chains, maps, counters stay).
//!
//! Both sides are canonical lists (`ipnet`'s `aggregate`: sorted, merged, minimal CIDR
//! blocks), so the kernel holds exactly the elements of the last list sent: deleting
//! what the old list has and the new one lacks, then adding the reverse, names only
//! elements that exist. A listing read back from the kernel is made canonical the same
//! way; should the kernel still refuse a delta, the set is refilled (flush and add, one
//! transaction).

use std::collections::BTreeMap;
use std::fmt::Write;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nftables::helper::NftablesError;

use crate::kernel::error::{KernelError, Result};
use crate::plan::nft::{NftSet, NftTable, SetElements};

/// Elements per `add element` / `delete element` command (one transaction still).
const CHUNK: usize = 1000;

/// What changes in the sets of one table, as one `nft -f` transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementDelta {
    /// The transaction (`nft -f` text).
    pub text: String,
    /// Per set: (name, added, deleted).
    pub counts: Vec<(String, usize, usize)>,
    table: String,
    /// The wanted sets, for [`ElementDelta::refill`].
    sets: Vec<NftSet>,
}

impl ElementDelta {
    /// The same sets flushed and filled whole: what runs if the kernel refuses `text`.
    pub fn refill(&self) -> String {
        let mut out = String::new();
        for set in &self.sets {
            let _ = writeln!(out, "flush set inet {} {}", self.table, set.name);
            let all: Vec<String> = strings(&canonical(&set.elements));
            commands(&mut out, "add", &self.table, &set.name, &all);
        }
        out
    }
}

/// Canonical form (sorted, merged, minimal CIDR blocks) of a set's elements.
pub fn canonical(e: &SetElements) -> SetElements {
    match e {
        SetElements::Ipv4(v) => SetElements::Ipv4(Ipv4Net::aggregate(v)),
        SetElements::Ipv6(v) => SetElements::Ipv6(Ipv6Net::aggregate(v)),
    }
}

fn strings(e: &SetElements) -> Vec<String> {
    match e {
        SetElements::Ipv4(v) => v.iter().map(ToString::to_string).collect(),
        SetElements::Ipv6(v) => v.iter().map(ToString::to_string).collect(),
    }
}

fn commands(out: &mut String, verb: &str, table: &str, set: &str, elems: &[String]) {
    for chunk in elems.chunks(CHUNK) {
        let _ = writeln!(
            out,
            "{verb} element inet {table} {set} {{ {} }}",
            chunk.join(", ")
        );
    }
}

/// (added, deleted) between two sorted lists: a merge walk, so only the differences
/// are ever turned into text (100,000 strings per side would cost megabytes).
fn sorted_diff<T: Ord + ToString>(have: &[T], want: &[T]) -> (Vec<String>, Vec<String>) {
    let (mut added, mut deleted) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < have.len() || j < want.len() {
        match (have.get(i), want.get(j)) {
            (Some(h), Some(w)) if h == w => {
                i += 1;
                j += 1;
            }
            (Some(h), Some(w)) if h < w => {
                deleted.push(h.to_string());
                i += 1;
            }
            (Some(h), None) => {
                deleted.push(h.to_string());
                i += 1;
            }
            (_, Some(w)) => {
                added.push(w.to_string());
                j += 1;
            }
            (None, None) => break,
        }
    }
    (added, deleted)
}

/// The delta from `installed` (canonical elements per set name) to `table`'s sets;
/// `None` when nothing changes. Sets `installed` does not know are refilled whole.
pub fn delta(table: &NftTable, installed: &BTreeMap<String, SetElements>) -> Option<ElementDelta> {
    let mut text = String::new();
    let mut counts = Vec::new();
    for set in &table.sets {
        let want = canonical(&set.elements);
        let (added, deleted) = match (installed.get(&set.name), &want) {
            (Some(SetElements::Ipv4(h)), SetElements::Ipv4(w)) => sorted_diff(h, w),
            (Some(SetElements::Ipv6(h)), SetElements::Ipv6(w)) => sorted_diff(h, w),
            // Unknown, or of another family: filled whole.
            _ => {
                let _ = writeln!(text, "flush set inet {} {}", table.name, set.name);
                (strings(&want), Vec::new())
            }
        };
        if added.is_empty() && deleted.is_empty() {
            continue;
        }
        commands(&mut text, "delete", &table.name, &set.name, &deleted);
        commands(&mut text, "add", &table.name, &set.name, &added);
        counts.push((set.name.clone(), added.len(), deleted.len()));
    }
    (!counts.is_empty()).then(|| ElementDelta {
        text,
        counts,
        table: table.name.clone(),
        sets: table.sets.clone(),
    })
}

/// The elements of `set inet <table> <set>` as `nft list set` prints them (text: JSON of
/// 100,000 elements would cost tens of MB to parse), canonical.
pub async fn read_set(table: &str, set: &str, ipv6: bool) -> Result<SetElements> {
    let listing = super::run::nft(&["list", "set", "inet", table, set], None)
        .await
        .map_err(|e: NftablesError| KernelError::nft(format!("listing set {set}"), e))?;
    let nets = parse_listing(&listing);
    Ok(canonical(&if ipv6 {
        SetElements::Ipv6(
            nets.into_iter()
                .filter_map(|n| match n {
                    IpNet::V6(n) => Some(n),
                    IpNet::V4(_) => None,
                })
                .collect(),
        )
    } else {
        SetElements::Ipv4(
            nets.into_iter()
                .filter_map(|n| match n {
                    IpNet::V4(n) => Some(n),
                    IpNet::V6(_) => None,
                })
                .collect(),
        )
    }))
}

/// The prefixes in the `elements = { … }` of an `nft list set` listing: prefixes,
/// single addresses and ranges (`a-b`, turned into the CIDR blocks that cover them).
pub fn parse_listing(listing: &str) -> Vec<IpNet> {
    let Some(start) = listing.find("elements = {") else {
        return Vec::new();
    };
    let body = &listing[start + "elements = {".len()..];
    let body = &body[..body.find('}').unwrap_or(body.len())];
    let mut out = Vec::new();
    for item in body.split(|c: char| c == ',' || c.is_whitespace()) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        if let Ok(net) = item.parse::<IpNet>() {
            out.push(net);
        } else if let Ok(addr) = item.parse::<std::net::IpAddr>() {
            out.push(IpNet::from(addr));
        } else if let Some((a, b)) = item.split_once('-') {
            match (a.parse(), b.parse()) {
                (Ok(std::net::IpAddr::V4(a)), Ok(std::net::IpAddr::V4(b))) => {
                    out.extend(ipnet::Ipv4Subnets::new(a, b, 0).map(IpNet::V4));
                }
                (Ok(std::net::IpAddr::V6(a)), Ok(std::net::IpAddr::V6(b))) => {
                    out.extend(ipnet::Ipv6Subnets::new(a, b, 0).map(IpNet::V6));
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(v4: &[&str]) -> NftTable {
        NftTable {
            name: "mw".into(),
            counters: vec![],
            sets: vec![NftSet {
                name: "bypass4".into(),
                elements: SetElements::Ipv4(v4.iter().map(|s| s.parse().unwrap()).collect()),
            }],
            chains: vec![],
            digest: "d".into(),
        }
    }

    #[test]
    fn delta_names_only_what_changed() {
        let old = table(&["198.18.0.1/32", "198.18.1.0/24"]);
        let new = table(&["198.18.1.0/24", "198.18.2.0/24"]);
        let installed: BTreeMap<String, SetElements> = old
            .sets
            .iter()
            .map(|s| (s.name.clone(), s.elements.clone()))
            .collect();
        let d = delta(&new, &installed).expect("a change");
        assert_eq!(
            d.text,
            "delete element inet mw bypass4 { 198.18.0.1/32 }\nadd element inet mw bypass4 { 198.18.2.0/24 }\n"
        );
        assert_eq!(d.counts, vec![("bypass4".to_string(), 1, 1)]);
        assert!(delta(&old, &installed).is_none());
        // Unknown: filled whole.
        let d = delta(&new, &BTreeMap::new()).expect("a fill");
        assert!(d.text.starts_with("flush set inet mw bypass4\n"));
    }

    #[test]
    fn listing_is_parsed_canonically() {
        let listing = "table inet mw {\n\tset bypass4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 198.18.0.1, 198.18.0.2-198.18.0.3,\n\t\t\t     198.18.1.0/24 }\n\t}\n}\n";
        let nets = parse_listing(listing);
        let e = canonical(&SetElements::Ipv4(
            nets.into_iter()
                .filter_map(|n| match n {
                    IpNet::V4(n) => Some(n),
                    _ => None,
                })
                .collect(),
        ));
        assert_eq!(
            strings(&e),
            vec!["198.18.0.1/32", "198.18.0.2/31", "198.18.1.0/24"]
        );
        assert!(parse_listing("table inet mw { set x { type ipv4_addr } }").is_empty());
    }
}
