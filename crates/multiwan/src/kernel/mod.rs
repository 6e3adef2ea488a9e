//! The only code that touches the kernel: reads interface facts and installed state,
//! applies a desired state.
//!
//! Everything goes over netlink (rtnetlink for rules and routes, ctnetlink for
//! conntrack) except nftables, which is sent as one JSON batch through the `nft` binary
//! (the `nftables` crate); nothing here runs `ip` or `conntrack`.
//!
//! Network namespaces: the rtnetlink socket belongs to the namespace of the thread that
//! called [`Kernel::new`], and `nft`, sysctl files and ctnetlink sockets to the
//! namespace of the thread that runs the call. Use one thread (a current-thread tokio
//! runtime) inside one namespace; the tests do.

pub mod conntrack;
mod error;
pub mod events;
pub mod facts;
pub mod nft;
pub mod routes;
pub mod rt_tables;
pub mod rules;
pub mod sysctl;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rtnetlink::Handle;

pub use error::{KernelError, Result};
pub use nft::Existing;
pub use routes::InstalledRoute;
pub use rules::InstalledRule;
pub use sysctl::SysctlChange;

use crate::plan::{Desired, Facts, IpRule, Route};

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

/// What multiwan owns, whatever it holds now: enough to read it back or flush it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    /// Inclusive rule priority range.
    pub priorities: (u32, u32),
    pub tables: Vec<u32>,
    /// Name of the `inet` nft table (also names the rt_tables.d file).
    pub nft_table: String,
}

impl From<&Desired> for Ownership {
    fn from(d: &Desired) -> Self {
        Ownership {
            priorities: d.owned_priorities,
            tables: d.owned_tables.clone(),
            nft_table: d.nft.name.clone(),
        }
    }
}

/// What an apply or a flush changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Anything at all.
    pub changed: bool,
    pub sysctls: usize,
    pub routes_added: usize,
    pub routes_replaced: usize,
    pub routes_deleted: usize,
    pub rules_added: usize,
    pub rules_deleted: usize,
    /// The nft table was (re)written or, for a flush, deleted.
    pub nft: bool,
    /// The rt_tables.d file was written or removed.
    pub table_names: bool,
    /// One line per change, in the order made (`route replace …`, `sysctl …: 0 -> 1`).
    pub changes: Vec<String>,
    pub elapsed: Duration,
}

impl ApplyReport {
    /// Number of changes made.
    pub fn count(&self) -> usize {
        self.changes.len()
    }

    fn push(&mut self, change: String) {
        self.changed = true;
        self.changes.push(change);
    }
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} changes in {} ms",
            self.count(),
            self.elapsed.as_millis()
        )
    }
}

/// Everything installed in multiwan's range now.
#[derive(Debug, Clone)]
pub struct Installed {
    pub rules: Vec<InstalledRule>,
    pub routes: Vec<InstalledRoute>,
    pub nft: Existing,
}

/// Something done during an apply that can be undone if a later step fails.
enum Undo {
    Sysctls(Vec<SysctlChange>),
    RouteAdded(Route),
    RouteReplaced(Route),
    RuleAdded(IpRule),
}

/// The kernel as multiwan sees it: one rtnetlink connection, plus the paths of the
/// files it writes (configurable for tests).
#[derive(Debug)]
pub struct Kernel {
    handle: Handle,
    connection: tokio::task::JoinHandle<()>,
    rt_tables_dir: PathBuf,
    sysctl_root: PathBuf,
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Kernel {
    /// Opens the rtnetlink connection (in the calling thread's network namespace) and
    /// spawns its driver on the current tokio runtime.
    pub fn new() -> Result<Kernel> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(KernelError::Socket)?;
        Ok(Kernel {
            handle,
            connection: tokio::spawn(conn),
            rt_tables_dir: PathBuf::from(rt_tables::RT_TABLES_DIR),
            sysctl_root: PathBuf::from(sysctl::PROC_SYS),
        })
    }

    /// Where table names are written (default `/etc/iproute2/rt_tables.d`).
    pub fn with_rt_tables_dir(mut self, dir: impl Into<PathBuf>) -> Kernel {
        self.rt_tables_dir = dir.into();
        self
    }

    /// Where sysctls are read and written (default `/proc/sys`).
    pub fn with_sysctl_root(mut self, root: impl Into<PathBuf>) -> Kernel {
        self.sysctl_root = root.into();
        self
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub fn rt_tables_dir(&self) -> &Path {
        &self.rt_tables_dir
    }

    /// Interfaces, addresses, default gateways and main-table prefixes.
    pub async fn read_facts(&self) -> Result<Facts> {
        facts::read_facts(&self.handle).await
    }

    /// What is installed in multiwan's range now.
    pub async fn read_installed(&self, own: &Ownership) -> Result<Installed> {
        let names = facts::link_names(&self.handle).await?;
        Ok(Installed {
            rules: rules::read(&self.handle, own.priorities).await?,
            routes: routes::read(&self.handle, &own.tables, &names).await?,
            nft: Existing::read(&own.nft_table)?,
        })
    }

    /// Packets per named counter of the nft table.
    pub fn read_counters(&self, nft_table: &str) -> Result<BTreeMap<String, u64>> {
        nft::read_counters(nft_table)
    }

    /// Deletes the conntrack entries carrying `mark` under `mask`; returns how many.
    pub fn delete_conntrack_by_mark(&self, mark: u32, mask: u32) -> Result<usize> {
        conntrack::delete_by_mark(mark, mask)
    }

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
        let own = Ownership::from(desired);
        let installed = self.read_installed(&own).await?;
        self.apply_against(start, installed, desired).await
    }

    /// Like [`Kernel::apply`], but trusts that `previous` (which this process applied
    /// successfully) is what is installed, instead of reading everything back: the
    /// daemon's fast path for a link state change, where reading everything back
    /// would cost more than the change itself. The daemon still does a full
    /// [`Kernel::apply`] at start, on reload and periodically, which repairs any drift.
    pub async fn apply_after(&self, previous: &Desired, desired: &Desired) -> Result<ApplyReport> {
        let start = Instant::now();
        nft::validate(&desired.nft)?;
        let mut rules = Vec::with_capacity(previous.rules.len());
        for r in &previous.rules {
            rules.push(InstalledRule {
                rule: Some(r.clone()),
                msg: rules::to_message(r)?,
            });
        }
        let mut routes = Vec::with_capacity(previous.routes.len());
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
        self.apply_against(start, installed, desired).await
    }

    async fn apply_against(
        &self,
        start: Instant,
        installed: Installed,
        desired: &Desired,
    ) -> Result<ApplyReport> {
        let mut report = ApplyReport::default();

        let current_routes: Vec<Route> = installed
            .routes
            .iter()
            .filter_map(|r| r.route.clone())
            .collect();
        let route_changes = routes::diff(&current_routes, &desired.routes);
        let current_rules: Vec<IpRule> = installed
            .rules
            .iter()
            .filter_map(|r| r.rule.clone())
            .collect();
        let rule_changes = rules::diff(&current_rules, &desired.rules);

        // Rules matching cgroups that do not exist now cannot be loaded (nft::with_live_cgroups).
        let (nft_table, nft_notes) = nft::with_live_cgroups(&desired.nft);
        let batch = (installed.nft.digest.as_deref() != Some(nft_table.digest.as_str()))
            .then(|| nft::to_batch(&nft_table, &installed.nft));

        let mut undo: Vec<Undo> = Vec::new();

        // 1. sysctls (the function puts back its own partial work if it fails).
        let changed = sysctl::apply(&self.sysctl_root, &desired.sysctls)
            .map_err(|e| step("sysctls", e, None))?;
        for c in &changed {
            report.push(c.describe());
        }
        report.sysctls = changed.len();
        undo.push(Undo::Sysctls(changed));

        // 2. routes: new ones and changed ones (NLM_F_REPLACE, never delete-then-add).
        for r in &route_changes.add {
            if let Err(e) = routes::replace(&self.handle, r).await {
                return Err(self.fail("routes", e, undo).await);
            }
            undo.push(Undo::RouteAdded(r.clone()));
            report.routes_added += 1;
            report.push(format!("route add {}", routes::describe(r)));
        }
        for (old, new) in &route_changes.replace {
            if let Err(e) = routes::replace(&self.handle, new).await {
                return Err(self.fail("routes", e, undo).await);
            }
            undo.push(Undo::RouteReplaced(old.clone()));
            report.routes_replaced += 1;
            report.push(format!(
                "route replace {} (was {})",
                routes::describe(new),
                routes::describe(old)
            ));
        }

        // 3. rules: the missing ones, before anything that points traffic at them.
        for r in &rule_changes.add {
            if let Err(e) = rules::add(&self.handle, r).await {
                return Err(self.fail("rules add", e, undo).await);
            }
            undo.push(Undo::RuleAdded(r.clone()));
            report.rules_added += 1;
            report.push(format!("rule add {}", rules::describe(r)));
        }

        // 4. nft: one transaction, so it is all or nothing by itself.
        if let Some(batch) = &batch {
            if let Err(e) = nft::send(batch, &desired.nft.name) {
                return Err(self.fail("nft", e, undo).await);
            }
            report.nft = true;
            report.push(format!(
                "nft table inet {} written (digest {} -> {})",
                desired.nft.name,
                installed.nft.digest.as_deref().unwrap_or("none"),
                nft_table.digest
            ));
            for note in nft_notes {
                report.push(note);
            }
        }

        // 5. stale rules, then 6. stale routes: by the messages the kernel dumped.
        let mut rule_msgs: Vec<&InstalledRule> = installed.rules.iter().collect();
        let mut stale_rules: Vec<(&InstalledRule, String)> = Vec::new();
        for r in &rule_changes.delete {
            if let Some(i) = rule_msgs.iter().position(|ir| ir.rule.as_ref() == Some(r)) {
                stale_rules.push((rule_msgs.remove(i), rules::describe(r)));
            }
        }
        for ir in rule_msgs.iter().filter(|ir| ir.rule.is_none()) {
            stale_rules.push((ir, format!("{:?} (not one multiwan makes)", ir.msg)));
        }
        for (ir, what) in stale_rules {
            rules::delete(&self.handle, &ir.msg, &what)
                .await
                .map_err(|e| step("rules delete", e, Some(Rollback::NotNeeded)))?;
            report.rules_deleted += 1;
            report.push(format!("rule delete {what}"));
        }

        let mut route_msgs: Vec<&InstalledRoute> = installed.routes.iter().collect();
        let mut stale_routes: Vec<(&InstalledRoute, String)> = Vec::new();
        for r in &route_changes.delete {
            if let Some(i) = route_msgs
                .iter()
                .position(|ir| ir.route.as_ref() == Some(r))
            {
                stale_routes.push((route_msgs.remove(i), routes::describe(r)));
            }
        }
        for ir in route_msgs.iter().filter(|ir| ir.route.is_none()) {
            stale_routes.push((
                ir,
                format!(
                    "in table {} (not one multiwan makes: {:?})",
                    routes::table_of(&ir.msg),
                    ir.msg.header.kind
                ),
            ));
        }
        for (ir, what) in stale_routes {
            routes::delete(&self.handle, &ir.msg, &what)
                .await
                .map_err(|e| step("routes delete", e, Some(Rollback::NotNeeded)))?;
            report.routes_deleted += 1;
            report.push(format!("route delete {what}"));
        }

        // 7. table names.
        let written =
            rt_tables::write(&self.rt_tables_dir, &desired.nft.name, &desired.table_names)
                .map_err(|e| step("table names", e, Some(Rollback::NotNeeded)))?;
        if written {
            report.table_names = true;
            report.push(format!(
                "{} {}",
                if desired.table_names.is_empty() {
                    "removed"
                } else {
                    "wrote"
                },
                rt_tables::path(&self.rt_tables_dir, &desired.nft.name).display()
            ));
        }

        report.elapsed = start.elapsed();
        Ok(report)
    }

    /// Puts back what `undo` records (newest first) and builds the error for `step`.
    async fn fail(&self, name: &'static str, err: KernelError, undo: Vec<Undo>) -> KernelError {
        let mut first_err: Option<KernelError> = None;
        for u in undo.into_iter().rev() {
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

    /// Removes everything multiwan owns: every rule in its priority range (both
    /// families), the nft table, every route in its tables, the rt_tables.d file.
    /// Nothing else: foreign rules, routes, nft tables and files stay.
    pub async fn flush(&self, own: &Ownership) -> Result<ApplyReport> {
        let start = Instant::now();
        let mut report = ApplyReport::default();
        let names = facts::link_names(&self.handle).await?;
        // Rules first: traffic falls back to the main table before its routes go.
        for ir in rules::read(&self.handle, own.priorities).await? {
            let what = ir
                .rule
                .as_ref()
                .map_or_else(|| format!("{:?}", ir.msg), rules::describe);
            rules::delete(&self.handle, &ir.msg, &what).await?;
            report.rules_deleted += 1;
            report.push(format!("rule delete {what}"));
        }
        if nft::delete_table(&own.nft_table)? {
            report.nft = true;
            report.push(format!("nft table inet {} deleted", own.nft_table));
        }
        for ir in routes::read(&self.handle, &own.tables, &names).await? {
            let what = ir.route.as_ref().map_or_else(
                || {
                    format!(
                        "in table {} ({:?})",
                        routes::table_of(&ir.msg),
                        ir.msg.header.kind
                    )
                },
                routes::describe,
            );
            routes::delete(&self.handle, &ir.msg, &what).await?;
            report.routes_deleted += 1;
            report.push(format!("route delete {what}"));
        }
        if rt_tables::remove(&self.rt_tables_dir, &own.nft_table)? {
            report.table_names = true;
            report.push(format!(
                "removed {}",
                rt_tables::path(&self.rt_tables_dir, &own.nft_table).display()
            ));
        }
        report.elapsed = start.elapsed();
        Ok(report)
    }
}

/// What happened to the earlier steps of a failed apply.
#[derive(Debug)]
pub enum Rollback {
    /// What the earlier steps changed was put back.
    Restored,
    /// The new state is fully in place; only removing leftovers failed.
    NotNeeded,
    /// Putting back failed too.
    Failed(Box<KernelError>),
}

impl fmt::Display for Rollback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rollback::Restored => f.write_str("; what this apply had changed was put back"),
            Rollback::NotNeeded => f.write_str(
                "; the new state is in place, only stale entries remain: the next apply retries removing them",
            ),
            Rollback::Failed(e) => write!(
                f,
                "; putting back what this apply had changed failed as well ({e}): run `multiwan flush`, then `multiwan apply`"
            ),
        }
    }
}

fn step(name: &'static str, source: KernelError, rollback: Option<Rollback>) -> KernelError {
    KernelError::Step {
        step: name,
        source: Box::new(source),
        rollback: rollback.unwrap_or(Rollback::Restored),
    }
}
