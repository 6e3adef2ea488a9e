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

mod apply;
pub mod conntrack;
pub mod diff;
mod error;
pub mod events;
pub mod facts;
pub mod main_table;
pub mod nft;
pub mod routes;
pub mod rt_protos;
pub mod rt_tables;
pub mod rules;
pub mod sysctl;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rtnetlink::Handle;

pub use diff::{Changes, KernelDiff, Step};
pub use error::{KernelError, Result};
pub use nft::Existing;
pub use routes::InstalledRoute;
pub use rules::InstalledRule;
pub use sysctl::SysctlChange;

use crate::plan::{Desired, Facts, Family};

/// The routing protocol number on every route and ip rule multiwan installs (`proto
/// multiwan` in `ip route` / `ip rule` once `rt_protos.d/multiwan.conf` names it). It
/// collides with nothing iproute2 names (0–4, 8–18, 42, 99, 186–192). Ownership is by
/// this tag (SPEC §3): untagged objects are never multiwan's, wherever they are.
pub const RTPROT_MULTIWAN: u8 = 77;

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
    /// Only elements of its sets were added or deleted (the table was not rewritten).
    pub nft_elements: bool,
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

    pub(crate) fn push(&mut self, change: String) {
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

/// What an apply or a flush found: the rules in multiwan's priority range and the routes
/// in the tables it uses (tagged or not), every tagged route of its families, and its
/// nft table. Which of them multiwan owns is decided by [`diff`].
#[derive(Debug, Clone)]
pub struct Installed {
    pub rules: Vec<InstalledRule>,
    pub routes: Vec<InstalledRoute>,
    pub nft: Existing,
}

/// The kernel as multiwan sees it: one rtnetlink connection, plus the paths of the
/// files it writes (configurable for tests).
#[derive(Debug)]
pub struct Kernel {
    handle: Handle,
    connection: tokio::task::JoinHandle<()>,
    rt_tables_dir: PathBuf,
    rt_protos_dir: PathBuf,
    sysctl_root: PathBuf,
    /// The "IPv6 is off" line is logged once per process, not on every apply.
    ipv6_off_logged: std::sync::atomic::AtomicBool,
    /// Untagged routes found by the last full read in the tables the plan writes:
    /// [`Kernel::apply_after`] does not read them back, but must not replace them.
    foreign_routes: std::sync::Mutex<Vec<InstalledRoute>>,
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Kernel {
    /// Opens the rtnetlink connection (in the calling thread's network namespace) and
    /// spawns its driver on the current tokio runtime.
    ///
    /// Strict checking is on (as iproute2 does), so route dumps filtered by table or
    /// protocol are filtered by the kernel: a main table of 100k routes never crosses
    /// the socket to find multiwan's few.
    pub fn new() -> Result<Kernel> {
        let (conn, handle, _) =
            rtnetlink::new_connection_with_strict_check().map_err(KernelError::Socket)?;
        Ok(Kernel {
            handle,
            connection: tokio::spawn(conn),
            rt_tables_dir: PathBuf::from(rt_tables::RT_TABLES_DIR),
            rt_protos_dir: PathBuf::from(rt_protos::RT_PROTOS_DIR),
            sysctl_root: PathBuf::from(sysctl::PROC_SYS),
            ipv6_off_logged: std::sync::atomic::AtomicBool::new(false),
            foreign_routes: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Where the protocol name is written (default `/etc/iproute2/rt_protos.d`).
    pub fn with_rt_protos_dir(mut self, dir: impl Into<PathBuf>) -> Kernel {
        self.rt_protos_dir = dir.into();
        self
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
        facts::read_facts(&self.handle, &self.present_families()).await
    }

    /// The families whose tables exist here (without IPv6 in the kernel there is no
    /// IPv6 table to dump).
    pub fn present_families(&self) -> Vec<Family> {
        sysctl::Ipv6::of(&self.sysctl_root).present()
    }

    /// What multiwan may own now: every rule in its priority range and every tagged
    /// route (both families), and its nft table. What a flush and an adoption read.
    pub async fn read_installed(&self, own: &Ownership) -> Result<Installed> {
        let families = sysctl::Ipv6::of(&self.sysctl_root).present();
        self.read(own, &[], &families).await
    }

    /// The rules in `own`'s priority range, the tagged routes, and every route in
    /// `tables` (the tables the plan writes, so a foreign route there is seen and never
    /// replaced), for `families`.
    async fn read(
        &self,
        own: &Ownership,
        tables: &[u32],
        families: &[Family],
    ) -> Result<Installed> {
        let names = facts::link_names(&self.handle).await?;
        let mut routes = routes::read_tagged(&self.handle, families, &names).await?;
        let untagged = routes::read_tables(&self.handle, tables, families, &names).await?;
        routes.extend(untagged.into_iter().filter(|r| !r.tagged()));
        Ok(Installed {
            rules: rules::read_families(&self.handle, own.priorities, families).await?,
            routes,
            nft: Existing::read(&own.nft_table).await?,
        })
    }

    /// Packets per named counter of the nft table (runs `nft` asynchronously).
    pub async fn read_counters(&self, nft_table: &str) -> Result<BTreeMap<String, u64>> {
        nft::read_counters(nft_table).await
    }

    /// [`Kernel::read_counters`] for a synchronous caller: blocks while `nft` runs. Only
    /// for code that cannot await yet (the daemon's status should read a cache instead).
    pub fn read_counters_blocking(&self, nft_table: &str) -> Result<BTreeMap<String, u64>> {
        nft::read_counters_blocking(nft_table)
    }

    /// Deletes the conntrack entries carrying `mark` under `mask`; returns how many.
    /// The ctnetlink dump and deletes run on tokio's blocking pool (its threads are
    /// started from this runtime, so they share the caller's network namespace).
    pub async fn delete_conntrack_by_mark(&self, mark: u32, mask: u32) -> Result<usize> {
        blocking(move || conntrack::delete_by_mark(mark, mask)).await
    }
}

/// Gives freed heap back to the system. glibc keeps freed memory for reuse, so after an
/// apply with 100,000 set elements (megabytes of batch text and listings, freed) the
/// daemon's RSS would stay that much above what it uses.
pub(crate) fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator; no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs blocking kernel I/O (ctnetlink, files under /etc) off the event loop.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
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
