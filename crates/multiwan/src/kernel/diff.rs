//! One pure diff from what is installed to what is desired: which objects multiwan owns,
//! what to add, replace and delete, in the order an apply makes the changes.
//!
//! Nothing here touches the kernel. [`KernelDiff::new`] yields typed [`Step`]s (each with
//! its log line as `Display`); the executor in `apply.rs` runs them and records an
//! [`Undo`] for each, so a failed step puts back what the earlier ones did, newest first.
//!
//! Ownership (SPEC §3) is decided here and only here: multiwan owns a route or rule when
//! it carries multiwan's protocol number ([`super::RTPROT_MULTIWAN`]) **and** lies in this
//! instance's tables or priority range. Anything else (strongSwan's table 220, a rule an
//! operator put inside the range, a route by hand in a link table, another instance's
//! tagged objects) is foreign: never deleted, never replaced.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::rule::RuleMessage;

use super::nft::{self, NftBatch};
use super::routes::{self, InstalledRoute};
use super::rules::{self, InstalledRule};
use super::sysctl::SysctlChange;
use super::{Installed, Ownership};
use crate::plan::nft::NftTable;
use crate::plan::{Desired, IpRule, Route, Sysctl};

#[cfg(test)]
mod tests;

/// What to change to go from one set of objects to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes<T> {
    pub add: Vec<T>,
    /// (installed, desired): same key, different content.
    pub replace: Vec<(T, T)>,
    pub delete: Vec<T>,
}

impl<T> Default for Changes<T> {
    fn default() -> Self {
        Changes {
            add: Vec::new(),
            replace: Vec::new(),
            delete: Vec::new(),
        }
    }
}

impl<T> Changes<T> {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.replace.is_empty() && self.delete.is_empty()
    }
}

impl Ownership {
    /// Whether this instance owns `r`: tagged, and inside its priority range.
    pub fn owns_rule(&self, r: &InstalledRule) -> bool {
        let (lo, hi) = self.priorities;
        r.tagged() && (lo..=hi).contains(&r.priority())
    }

    /// Whether this instance owns `r`: tagged, and in one of its tables (never the
    /// kernel's own tables).
    pub fn owns_route(&self, r: &InstalledRoute) -> bool {
        let t = r.table();
        r.tagged() && !routes::is_kernel_table(t) && self.tables.contains(&t)
    }
}

/// One change, in apply order.
#[derive(Debug, Clone)]
pub enum Step {
    /// Write the sysctls that differ (the executor reads the current values).
    Sysctls(Vec<Sysctl>),
    RouteAdd(Route),
    /// Same key, new content: sent with `NLM_F_REPLACE`, never delete-then-add.
    RouteReplace {
        old: Route,
        new: Route,
    },
    RuleAdd(IpRule),
    /// Rewrite `table inet <name>` in one nft transaction.
    NftWrite {
        name: String,
        from: Option<String>,
        to: String,
        batch: NftBatch,
        /// Lines logged after the write (cgroup rules left out, see `nft::with_live_cgroups`).
        notes: Vec<String>,
    },
    /// Change only set elements of `table inet <name>` (the rest is as wanted).
    NftElements {
        name: String,
        delta: nft::elements::ElementDelta,
    },
    /// Delete an owned rule by the message the kernel dumped.
    RuleDelete {
        msg: RuleMessage,
        what: String,
    },
    /// Delete an owned route by the message the kernel dumped.
    RouteDelete {
        msg: RouteMessage,
        what: String,
    },
    /// Delete `table inet <name>` (flush only).
    NftDelete(String),
    /// Write (or, with no names, remove) the rt_tables.d file named after the nft table.
    TableNames {
        nft_table: String,
        names: Vec<(u32, String)>,
    },
}

impl Step {
    /// The step name an error reports (`apply failed at step …`).
    pub fn name(&self) -> &'static str {
        match self {
            Step::Sysctls(_) => "sysctls",
            Step::RouteAdd(_) | Step::RouteReplace { .. } => "routes",
            Step::RuleAdd(_) => "rules add",
            Step::NftWrite { .. } | Step::NftElements { .. } | Step::NftDelete(_) => "nft",
            Step::RuleDelete { .. } => "rules delete",
            Step::RouteDelete { .. } => "routes delete",
            Step::TableNames { .. } => "table names",
        }
    }

    /// Whether a failure of this step puts back what the earlier steps did. The steps
    /// after the nft batch only remove what is no longer wanted: when one fails the new
    /// state is in place, with leftovers for the next apply.
    pub fn rolls_back(&self) -> bool {
        matches!(
            self,
            Step::Sysctls(_)
                | Step::RouteAdd(_)
                | Step::RouteReplace { .. }
                | Step::RuleAdd(_)
                | Step::NftWrite { .. }
                | Step::NftElements { .. }
        )
    }

    /// What undoes this step once it succeeded (`None`: nothing to put back).
    pub fn undo(&self, sysctls: Vec<SysctlChange>) -> Option<Undo> {
        match self {
            Step::Sysctls(_) => Some(Undo::Sysctls(sysctls)),
            Step::RouteAdd(r) => Some(Undo::RouteAdded(r.clone())),
            Step::RouteReplace { old, .. } => Some(Undo::RouteReplaced(old.clone())),
            Step::RuleAdd(r) => Some(Undo::RuleAdded(r.clone())),
            _ => None,
        }
    }
}

/// The log line of a step (the lines `ApplyReport::changes` has always had).
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Sysctls(s) => write!(f, "sysctls: {} to check", s.len()),
            Step::RouteAdd(r) => write!(f, "route add {}", routes::describe(r)),
            Step::RouteReplace { old, new } => write!(
                f,
                "route replace {} (was {})",
                routes::describe(new),
                routes::describe(old)
            ),
            Step::RuleAdd(r) => write!(f, "rule add {}", rules::describe(r)),
            Step::NftWrite { name, from, to, .. } => write!(
                f,
                "nft table inet {name} written (digest {} -> {to})",
                from.as_deref().unwrap_or("none")
            ),
            Step::NftElements { name, delta } => {
                let parts: Vec<String> = delta
                    .counts
                    .iter()
                    .map(|(set, added, deleted)| format!("{set} +{added} -{deleted}"))
                    .collect();
                write!(
                    f,
                    "nft table inet {name}: set elements {}",
                    parts.join(", ")
                )
            }
            Step::RuleDelete { what, .. } => write!(f, "rule delete {what}"),
            Step::RouteDelete { what, .. } => write!(f, "route delete {what}"),
            Step::NftDelete(name) => write!(f, "nft table inet {name} deleted"),
            Step::TableNames { nft_table, names } if names.is_empty() => {
                write!(f, "rt_tables.d/{nft_table}.conf removed")
            }
            Step::TableNames { nft_table, names } => {
                write!(f, "rt_tables.d/{nft_table}.conf: {} names", names.len())
            }
        }
    }
}

/// Something done during an apply that can be undone if a later step fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    Sysctls(Vec<SysctlChange>),
    RouteAdded(Route),
    RouteReplaced(Route),
    RuleAdded(IpRule),
}

/// The undo records of one apply; [`UndoLog::newest_first`] is the order to run them.
#[derive(Debug, Default)]
pub struct UndoLog(Vec<Undo>);

impl UndoLog {
    pub fn record(&mut self, u: Undo) {
        self.0.push(u);
    }

    pub fn newest_first(self) -> impl Iterator<Item = Undo> {
        self.0.into_iter().rev()
    }
}

/// Everything an apply (or a flush) changes, in order, plus what it will not do and why.
#[derive(Debug, Clone, Default)]
pub struct KernelDiff {
    pub steps: Vec<Step>,
    /// Desired objects left out because a foreign object holds their place (logged).
    pub conflicts: Vec<String>,
}

impl KernelDiff {
    /// The changes that turn `installed` into `desired` (for the nft table as planned;
    /// the executor passes the table as it can be loaded now, see [`KernelDiff::with_nft`]).
    pub fn new(installed: &Installed, desired: &Desired) -> KernelDiff {
        KernelDiff::with_nft(installed, desired, &desired.nft, Vec::new())
    }

    /// [`KernelDiff::new`] with the nft table to load instead of `desired.nft`.
    ///
    /// Order, so the router is never without a way out: sysctls; routes added or
    /// replaced; rules added; the nft batch; stale rules deleted; stale routes deleted;
    /// table names.
    pub fn with_nft(
        installed: &Installed,
        desired: &Desired,
        nft_table: &NftTable,
        nft_notes: Vec<String>,
    ) -> KernelDiff {
        let own = Ownership::from(desired);
        let mut diff = KernelDiff::default();
        diff.steps.push(Step::Sysctls(desired.sysctls.clone()));

        let owned_routes: Vec<&InstalledRoute> = installed
            .routes
            .iter()
            .filter(|r| own.owns_route(r))
            .collect();
        let current: Vec<Route> = owned_routes
            .iter()
            .filter_map(|r| r.route.clone())
            .collect();
        let route_changes = route_changes(&current, &desired.routes);
        let foreign: BTreeMap<routes::Key, &Route> = installed
            .routes
            .iter()
            .filter(|r| !own.owns_route(r))
            .filter_map(|r| r.route.as_ref())
            .map(|r| (routes::key(r), r))
            .collect();
        for r in route_changes.add.iter().cloned() {
            match foreign.get(&routes::key(&r)) {
                // Replacing it would delete someone else's route (NLM_F_REPLACE acts on
                // the key): leave the desired one out and say so.
                Some(f) => diff.conflicts.push(conflict(&r, f)),
                None => diff.steps.push(Step::RouteAdd(r)),
            }
        }
        for (old, new) in route_changes.replace.iter().cloned() {
            match foreign.get(&routes::key(&new)) {
                // Only when the installed state is assumed (apply_after): what multiwan
                // believes is its route under that key is in fact someone else's.
                Some(f) => diff.conflicts.push(conflict(&new, f)),
                None => diff.steps.push(Step::RouteReplace { old, new }),
            }
        }

        let owned_rules: Vec<&InstalledRule> = installed
            .rules
            .iter()
            .filter(|r| own.owns_rule(r))
            .collect();
        let current: Vec<IpRule> = owned_rules.iter().filter_map(|r| r.rule.clone()).collect();
        let rule_changes = rule_changes(&current, &desired.rules);
        diff.steps
            .extend(rule_changes.add.iter().cloned().map(Step::RuleAdd));

        if installed.nft.digest.as_deref() != Some(nft_table.digest.as_str()) {
            diff.steps.push(Step::NftWrite {
                name: desired.nft.name.clone(),
                from: installed.nft.digest.clone(),
                to: nft_table.digest.clone(),
                batch: nft::to_batch(nft_table, &installed.nft),
                notes: nft_notes,
            });
        } else if let Some(delta) = installed
            .nft
            .set_elements
            .as_ref()
            .and_then(|have| nft::elements::delta(nft_table, have))
        {
            // Only set elements differ (the digest leaves them out): change those.
            diff.steps.push(Step::NftElements {
                name: desired.nft.name.clone(),
                delta,
            });
        }

        diff.steps
            .extend(stale_rules(owned_rules, &rule_changes.delete));
        diff.steps
            .extend(stale_routes(owned_routes, &route_changes.delete));
        diff.steps.push(Step::TableNames {
            nft_table: desired.nft.name.clone(),
            names: desired.table_names.clone(),
        });
        diff
    }

    /// Everything `own` owns, to remove: rules first (traffic falls back to the main
    /// table before its routes go), the nft table, routes, the table names file.
    pub fn flush(installed: &Installed, own: &Ownership) -> KernelDiff {
        let mut steps = Vec::new();
        for ir in installed.rules.iter().filter(|r| own.owns_rule(r)) {
            let what = ir
                .rule
                .as_ref()
                .map_or_else(|| format!("{:?}", ir.msg), rules::describe);
            steps.push(Step::RuleDelete {
                msg: ir.msg.clone(),
                what,
            });
        }
        if installed.nft.table {
            steps.push(Step::NftDelete(own.nft_table.clone()));
        }
        for ir in installed.routes.iter().filter(|r| own.owns_route(r)) {
            let what = ir.route.as_ref().map_or_else(
                || format!("in table {} ({:?})", ir.table(), ir.msg.header.kind),
                routes::describe,
            );
            steps.push(Step::RouteDelete {
                msg: ir.msg.clone(),
                what,
            });
        }
        steps.push(Step::TableNames {
            nft_table: own.nft_table.clone(),
            names: Vec::new(),
        });
        KernelDiff {
            steps,
            conflicts: Vec::new(),
        }
    }
}

fn conflict(r: &Route, foreign: &Route) -> String {
    format!(
        "route {} not installed: table {} holds a route under the same destination and metric that multiwan did not install ({}); remove it or move multiwan's tables (`table_base`)",
        routes::describe(r),
        r.table,
        routes::describe(foreign)
    )
}

/// Deletes of owned rules: those the rule diff dropped, then those the model cannot
/// express (stale messages multiwan would not make now).
fn stale_rules(mut owned: Vec<&InstalledRule>, delete: &[IpRule]) -> Vec<Step> {
    let mut out = Vec::new();
    for r in delete {
        if let Some(i) = owned.iter().position(|ir| ir.rule.as_ref() == Some(r)) {
            out.push(Step::RuleDelete {
                msg: owned.remove(i).msg.clone(),
                what: rules::describe(r),
            });
        }
    }
    for ir in owned.iter().filter(|ir| ir.rule.is_none()) {
        out.push(Step::RuleDelete {
            msg: ir.msg.clone(),
            what: format!("{:?} (not one multiwan makes)", ir.msg),
        });
    }
    out
}

/// Deletes of owned routes, as [`stale_rules`].
fn stale_routes(mut owned: Vec<&InstalledRoute>, delete: &[Route]) -> Vec<Step> {
    let mut out = Vec::new();
    for r in delete {
        if let Some(i) = owned.iter().position(|ir| ir.route.as_ref() == Some(r)) {
            out.push(Step::RouteDelete {
                msg: owned.remove(i).msg.clone(),
                what: routes::describe(r),
            });
        }
    }
    for ir in owned.iter().filter(|ir| ir.route.is_none()) {
        out.push(Step::RouteDelete {
            msg: ir.msg.clone(),
            what: format!(
                "in table {} (not one multiwan makes: {:?})",
                ir.table(),
                ir.msg.header.kind
            ),
        });
    }
    out
}

/// What to change so that the routes `current` become `desired`: a route whose key is
/// in both but differs is a replace; duplicates of a key in `current` are deleted.
pub fn route_changes(current: &[Route], desired: &[Route]) -> Changes<Route> {
    let mut cur: BTreeMap<routes::Key, &Route> = BTreeMap::new();
    let mut changes = Changes::default();
    for r in current {
        if cur.insert(routes::key(r), r).is_some() {
            // A second route under one key (`ip route append`): keep one, drop the rest.
            changes.delete.push(r.clone());
        }
    }
    let mut seen = BTreeSet::new();
    for d in desired {
        let k = routes::key(d);
        if !seen.insert(k) {
            continue;
        }
        match cur.get(&k) {
            None => changes.add.push(d.clone()),
            Some(c) if routes::normalized(c) != routes::normalized(d) => {
                changes.replace.push(((*c).clone(), d.clone()))
            }
            Some(_) => {}
        }
    }
    for (k, c) in &cur {
        if !seen.contains(k) {
            changes.delete.push((*c).clone());
        }
    }
    changes
}

/// What to change so that the rules `current` become `desired` (multiset semantics: a
/// rule installed twice loses its copy).
pub fn rule_changes(current: &[IpRule], desired: &[IpRule]) -> Changes<IpRule> {
    let mut have: BTreeMap<IpRule, usize> = BTreeMap::new();
    for r in current {
        *have.entry(rules::normalized(r)).or_default() += 1;
    }
    let mut changes = Changes::default();
    let mut want: BTreeMap<IpRule, &IpRule> = BTreeMap::new();
    for d in desired {
        want.entry(rules::normalized(d)).or_insert(d);
    }
    for (n, d) in &want {
        match have.get_mut(n) {
            Some(count) => *count -= 1,
            None => changes.add.push((*d).clone()),
        }
    }
    for r in current {
        let n = rules::normalized(r);
        if let Some(count) = have.get_mut(&n) {
            if *count > 0 {
                *count -= 1;
                changes.delete.push(r.clone());
            }
        }
    }
    changes
}
