//! Network-namespace test topologies for multiwan: the integration tests and
//! `multiwan demo` build their routers, ISPs and hosts with this crate.
//!
//! Setup shells out to `ip`, `nft` and `sysctl` on purpose: this is lab plumbing,
//! not the product (which talks netlink).

pub mod netns;

pub use netns::{run, unique_name, ChildGuard, Netns};
