//! Facts kept from netlink events, for the daemon.
//!
//! Interfaces and addresses are few: any link or address event re-reads them. The main
//! table may hold 100,000 routes: route events are applied to [`MainTable`] one by one,
//! and it is read whole only when the events cannot be trusted to tell everything:
//! - the event socket overflowed (ENOBUFS: events were lost);
//! - an interface went away, was set down or lost an address: the kernel then drops
//!   IPv4 routes through it without sending `RTM_DELROUTE` for each;
//! - the last whole read is older than [`FULL_READ_EVERY`] (the daemon's periodic
//!   check of everything it relies on).
//!
//! A default route event re-reads the default routes (the gateway is the lowest metric
//! of all of them, which one event does not tell); the dump streams by, keeping none of
//! the specific routes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use netlink_packet_route::route::RouteMessage;

use super::super::main_table::{MainTable, RouteEvent};
use super::super::{Kernel, Result};
use super::{assemble, read_interfaces};
use crate::plan::{Facts, InterfaceFacts};

/// Longest time between two whole reads of the main table.
pub const FULL_READ_EVERY: Duration = Duration::from_secs(300);

/// The daemon's view of the facts, updated from netlink events.
#[derive(Debug)]
pub struct FactsWatch {
    interfaces: BTreeMap<String, InterfaceFacts>,
    main: MainTable,
    /// A link or address event came: re-read interfaces and addresses.
    interfaces_dirty: bool,
    /// A default route changed: re-read the gateways.
    defaults_dirty: bool,
    /// Events were lost or cannot be trusted: read the main table whole.
    reread: bool,
    last_full: Instant,
    /// Whole reads of the main table since start (for logs and the bench).
    pub full_reads: u64,
}

impl FactsWatch {
    /// Reads everything once.
    pub async fn new(kernel: &Kernel) -> Result<FactsWatch> {
        let interfaces = read_interfaces(kernel.handle()).await?;
        let main = MainTable::read(&kernel.present_families()).await?;
        Ok(FactsWatch {
            interfaces,
            main,
            interfaces_dirty: false,
            defaults_dirty: false,
            reread: false,
            last_full: Instant::now(),
            full_reads: 1,
        })
    }

    /// The facts as last known (no kernel access).
    pub fn facts(&self) -> Facts {
        assemble(self.interfaces.clone(), &self.main)
    }

    /// Takes a route event into account (`RTM_NEWROUTE` when `added`, else
    /// `RTM_DELROUTE`): applied at once, no message is kept however long the burst.
    pub fn note_route(&mut self, msg: &RouteMessage, added: bool) {
        if self.main.apply(msg, added) == RouteEvent::Defaults {
            self.defaults_dirty = true;
        }
    }

    /// A link or address event came: interfaces and addresses are re-read at the next
    /// [`FactsWatch::refresh`].
    pub fn note_interfaces(&mut self) {
        self.interfaces_dirty = true;
    }

    /// Asks for a whole read of the main table at the next [`FactsWatch::refresh`]
    /// (events were lost: a socket overflowed).
    pub fn reread(&mut self) {
        tracing::info!("route events were lost: reading the main table again");
        self.interfaces_dirty = true;
        self.reread = true;
    }

    /// Re-reads what the events since the last call asked for; returns the facts.
    pub async fn refresh(&mut self, kernel: &Kernel) -> Result<Facts> {
        if self.interfaces_dirty {
            let fresh = read_interfaces(kernel.handle()).await?;
            if routes_dropped_silently(&self.interfaces, &fresh) {
                self.reread = true;
            }
            self.interfaces = fresh;
            self.interfaces_dirty = false;
        }
        if self.last_full.elapsed() >= FULL_READ_EVERY {
            self.reread = true;
        }
        let families = kernel.present_families();
        if self.reread {
            self.main = MainTable::read(&families).await?;
            // The old view (100,000 routes: megabytes) was just freed.
            super::super::trim_heap();
            self.last_full = Instant::now();
            self.full_reads += 1;
        } else if self.defaults_dirty {
            let fresh = MainTable::read_defaults(&families).await?;
            self.main.set_defaults(fresh);
        }
        self.reread = false;
        self.defaults_dirty = false;
        Ok(self.facts())
    }
}

/// Whether the kernel may have deleted IPv4 routes without an event for each: an
/// interface gone or set down, or an address removed.
fn routes_dropped_silently(
    old: &BTreeMap<String, InterfaceFacts>,
    new: &BTreeMap<String, InterfaceFacts>,
) -> bool {
    old.iter().any(|(name, o)| match new.get(name) {
        None => true,
        Some(n) => {
            n.ifindex != o.ifindex
                || (o.admin_up && !n.admin_up)
                || o.addresses.iter().any(|a| !n.addresses.contains(a))
        }
    })
}
