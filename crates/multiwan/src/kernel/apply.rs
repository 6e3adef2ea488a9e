//! The executor: reads what is installed, asks [`KernelDiff`] what to change, runs each
//! step and records its undo; a failed step puts back what the earlier ones did (newest
//! first). Flush runs its steps past failures and reports every error at the end.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::diff::{KernelDiff, Step, Undo, UndoLog};
use super::sysctl::Ipv6;
use super::{
    blocking, facts, nft, routes, rt_protos, rt_tables, rules, step, sysctl, ApplyReport, Existing,
    Installed, InstalledRoute, InstalledRule, Kernel, KernelError, Ownership, Result, Rollback,
};
use crate::plan::{Desired, Family};

impl Kernel {
    /// Makes the kernel hold `desired` in multiwan's range, changing only what differs.
    ///
    /// Order, so the router is never without a way out: sysctls; routes added or
    /// replaced; rules added; the nft batch; stale rules deleted; stale routes deleted;
    /// table names. If a step up to and including the nft batch fails (nft refuses a
    /// batch as a whole, so a failed batch changed nothing), what the earlier steps changed
    /// is put back; the later steps only remove what is no longer wanted, so a failure
    /// there leaves the new state in place with some leftovers for the next apply.
    pub async fn apply(&self, desired: &Desired) -> Result<ApplyReport> {
        let start = Instant::now();
        nft::validate(&desired.nft)?;
        let desired = self.for_this_host(desired);
        let own = Ownership::from(desired.as_ref());
        // Only the tables the plan writes are read whole (a foreign route there must not
        // be replaced); tagged routes elsewhere in the range come from the tagged dump.
        let tables: Vec<u32> = desired
            .routes
            .iter()
            .map(|r| r.table)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let installed = self.read(&own, &tables, &self.families()).await?;
        let foreign = installed
            .routes
            .iter()
            .filter(|r| !own.owns_route(r))
            .cloned()
            .collect();
        *self
            .foreign_routes
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = foreign;
        self.apply_against(start, installed, &desired).await
    }

    /// Like [`Kernel::apply`], but trusts that `previous` (which this process applied
    /// successfully) is what is installed, instead of reading everything back: the
    /// daemon's fast path for a link state change, where reading everything back
    /// would cost more than the change itself. The daemon still does a full
    /// [`Kernel::apply`] at start, on reload and periodically, which repairs any drift.
    pub async fn apply_after(&self, previous: &Desired, desired: &Desired) -> Result<ApplyReport> {
        let start = Instant::now();
        nft::validate(&desired.nft)?;
        let previous = self.for_this_host(previous);
        let desired = self.for_this_host(desired);
        let mut rules = Vec::with_capacity(previous.rules.len());
        for r in &previous.rules {
            rules.push(InstalledRule {
                rule: Some(r.clone()),
                msg: rules::to_message(r)?,
            });
        }
        // What the last full read found that is not multiwan's, so it is never replaced.
        let mut routes = self
            .foreign_routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for r in &previous.routes {
            routes.push(InstalledRoute {
                route: Some(r.clone()),
                msg: routes::to_message(r)?,
            });
        }
        let installed = Installed {
            rules,
            routes,
            nft: Existing::from_table(&previous.nft),
        };
        self.apply_against(start, installed, &desired).await
    }

    /// `desired` without its IPv6 parts when this host has IPv6 off or absent (logged
    /// once per process): the IPv4 part still applies and works.
    fn for_this_host<'a>(&self, desired: &'a Desired) -> Cow<'a, Desired> {
        let ipv6 = Ipv6::of(&self.sysctl_root);
        let Some(line) = ipv6.skipped_line() else {
            return Cow::Borrowed(desired);
        };
        if !self.ipv6_off_logged.swap(true, Ordering::Relaxed) {
            tracing::info!("{line}");
        }
        let mut d = desired.clone();
        d.rules.retain(|r| r.family == Family::V4);
        d.routes.retain(|r| r.family == Family::V4);
        d.sysctls.retain(|s| !s.key.starts_with("net/ipv6/"));
        Cow::Owned(d)
    }

    /// The address families this host runs (IPv6 off or absent: IPv4 only, and IPv6
    /// objects multiwan installed before are left as they are).
    fn families(&self) -> Vec<Family> {
        match Ipv6::of(&self.sysctl_root) {
            Ipv6::On => vec![Family::V4, Family::V6],
            Ipv6::Disabled | Ipv6::Absent => vec![Family::V4],
        }
    }

    async fn apply_against(
        &self,
        start: Instant,
        installed: Installed,
        desired: &Desired,
    ) -> Result<ApplyReport> {
        // Rules matching cgroups that do not exist now cannot be loaded (nft::with_live_cgroups).
        let (nft_table, nft_notes) = nft::with_live_cgroups(&desired.nft);
        // A table with big sets leaves megabytes of freed batch text behind.
        let big = nft::needs_text(&nft_table);
        let diff = KernelDiff::with_nft(&installed, desired, &nft_table, nft_notes);
        drop(installed);
        for c in &diff.conflicts {
            tracing::warn!("{c}");
        }
        let mut report = ApplyReport::default();
        let mut undo = UndoLog::default();
        for s in &diff.steps {
            match self.run_step(s, &mut report).await {
                Ok(Some(u)) => undo.record(u),
                Ok(None) => {}
                Err(e) if s.rolls_back() => return Err(self.fail(s.name(), e, undo).await),
                Err(e) => return Err(step(s.name(), e, Some(Rollback::NotNeeded))),
            }
        }
        // Host-global and cosmetic (names for `ip route`): a failure is logged, not fatal.
        let dir = self.rt_protos_dir.clone();
        match blocking(move || rt_protos::write(&dir)).await {
            Ok(true) => report.push(format!(
                "wrote {}",
                rt_protos::path(&self.rt_protos_dir).display()
            )),
            Ok(false) => {}
            Err(e) => tracing::warn!("{e}"),
        }
        drop(diff);
        if big {
            super::trim_heap();
        }
        report.elapsed = start.elapsed();
        Ok(report)
    }

    /// Runs one step, counts it in `report`, and returns what undoes it.
    async fn run_step(&self, s: &Step, report: &mut ApplyReport) -> Result<Option<Undo>> {
        match s {
            Step::Sysctls(wanted) => {
                // The function puts back its own partial work if it fails.
                let changed = sysctl::apply(&self.sysctl_root, wanted)?;
                for c in &changed {
                    report.push(c.describe());
                }
                report.sysctls += changed.len();
                return Ok(s.undo(changed));
            }
            Step::RouteAdd(r) => {
                routes::replace(&self.handle, r).await?;
                report.routes_added += 1;
            }
            Step::RouteReplace { new, .. } => {
                routes::replace(&self.handle, new).await?;
                report.routes_replaced += 1;
            }
            Step::RuleAdd(r) => {
                rules::add(&self.handle, r).await?;
                report.rules_added += 1;
            }
            Step::NftWrite {
                name, batch, notes, ..
            } => {
                nft::send(batch, name).await?;
                report.nft = true;
                report.push(s.to_string());
                for note in notes {
                    report.push(note.clone());
                }
                return Ok(None);
            }
            Step::NftElements { name, delta } => {
                let sent = nft::send(&nft::NftBatch::Text(delta.text.clone()), name).await;
                if let Err(e) = sent {
                    // The kernel's elements were not what this process believed: put
                    // the sets right whole (still one transaction, the table stays).
                    tracing::warn!("{e}; filling the sets whole instead");
                    nft::send(&nft::NftBatch::Text(delta.refill()), name).await?;
                }
                report.nft_elements = true;
                report.push(s.to_string());
                return Ok(None);
            }
            Step::RuleDelete { msg, what } => {
                rules::delete(&self.handle, msg, what).await?;
                report.rules_deleted += 1;
            }
            Step::RouteDelete { msg, what } => {
                routes::delete(&self.handle, msg, what).await?;
                report.routes_deleted += 1;
            }
            Step::NftDelete(name) => {
                if nft::delete_table(name).await? {
                    report.nft = true;
                    report.push(s.to_string());
                }
                return Ok(None);
            }
            Step::TableNames { nft_table, names } => {
                let (dir, table, list) =
                    (self.rt_tables_dir.clone(), nft_table.clone(), names.clone());
                if blocking(move || rt_tables::write(&dir, &table, &list)).await? {
                    report.table_names = true;
                    report.push(format!(
                        "{} {}",
                        if names.is_empty() { "removed" } else { "wrote" },
                        rt_tables::path(&self.rt_tables_dir, nft_table).display()
                    ));
                }
                return Ok(None);
            }
        }
        report.push(s.to_string());
        Ok(s.undo(Vec::new()))
    }

    /// Puts back what `undo` records (newest first) and builds the error for `name`.
    async fn fail(&self, name: &'static str, err: KernelError, undo: UndoLog) -> KernelError {
        let mut first_err: Option<KernelError> = None;
        for u in undo.newest_first() {
            let r = match u {
                Undo::Sysctls(changes) => sysctl::restore(&self.sysctl_root, &changes),
                Undo::RouteAdded(r) => match routes::to_message(&r) {
                    Ok(msg) => routes::delete(&self.handle, &msg, &routes::describe(&r)).await,
                    Err(e) => Err(e),
                },
                Undo::RouteReplaced(old) => routes::replace(&self.handle, &old).await,
                Undo::RuleAdded(r) => match rules::to_message(&r) {
                    Ok(msg) => rules::delete(&self.handle, &msg, &rules::describe(&r)).await,
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        let rollback = match first_err {
            None => Rollback::Restored,
            Some(e) => Rollback::Failed(Box::new(e)),
        };
        step(name, err, Some(rollback))
    }

    /// Removes everything multiwan owns: its tagged rules in its priority range (both
    /// families), the nft table, its tagged routes in its tables, the rt_tables.d file.
    /// Nothing else: foreign rules, routes, nft tables and files stay, and so does the
    /// host-global rt_protos.d name. Goes on past a failure, removes all it can, and
    /// reports every error at the end.
    pub async fn flush(&self, own: &Ownership) -> Result<ApplyReport> {
        let start = Instant::now();
        let mut report = ApplyReport::default();
        let mut errors = Vec::new();
        let families = Ipv6::of(&self.sysctl_root).present();
        let names: BTreeMap<u32, String> = ok(facts::link_names(&self.handle).await, &mut errors);
        let installed = Installed {
            rules: ok(
                rules::read_families(&self.handle, own.priorities, &families).await,
                &mut errors,
            ),
            routes: ok(
                routes::read_tagged(&self.handle, &families, &names).await,
                &mut errors,
            ),
            nft: ok(Existing::read_terse(&own.nft_table).await, &mut errors),
        };
        for s in KernelDiff::flush(&installed, own).steps {
            if let Err(e) = self.run_step(&s, &mut report).await {
                errors.push(e);
            }
        }
        report.elapsed = start.elapsed();
        if errors.is_empty() {
            Ok(report)
        } else {
            Err(KernelError::Flush {
                removed: report.count(),
                errors,
            })
        }
    }
}

/// The value, or (after noting the error) an empty one: a flush goes on with what it
/// could read.
fn ok<T: Default>(r: Result<T>, errors: &mut Vec<KernelError>) -> T {
    r.unwrap_or_else(|e| {
        errors.push(e);
        T::default()
    })
}
