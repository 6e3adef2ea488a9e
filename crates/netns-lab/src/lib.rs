//! Network-namespace test topologies for multiwan: the integration tests and
//! `multiwan demo` build their routers, ISPs and hosts with this crate.
//!
//! * [`netns`]: one namespace ([`Netns`]), torn down on drop, and ways to run commands,
//!   processes and threads inside it.
//! * [`lab`]: the multi-uplink [`Lab`] (router, ISPs with BCP 38, "the internet", a LAN
//!   client) with failure injection: blackholes, exact packet loss, carrier loss,
//!   interface re-creation, gateway moves.
//! * [`slow_echo`]: an ICMP echo responder that answers late ([`SlowEcho`]), for
//!   latency without netem.
//! * [`whoami`]: servers that tell a client the address they saw it come from, and
//!   the clients that ask, including a long-lived echo connection for survival tests.
//! * [`traffic`]: a client opening a connection at a fixed pace, to measure outages.
//!
//! Setup shells out to `ip`, `nft` and `sysctl` on purpose: this is lab plumbing,
//! not the product (which talks netlink). Everything needs root (CAP_NET_ADMIN and
//! CAP_SYS_ADMIN).

pub mod lab;
pub mod netns;
pub mod slow_echo;
pub mod traffic;
pub mod whoami;

pub use lab::{addr, Lab, LabBuilder};
pub use netns::{run, unique_name, ChildGuard, Netns};
pub use slow_echo::SlowEcho;
pub use traffic::{outage_after, Attempt, Traffic};
pub use whoami::{
    tcp_whoami, tcp_whoami_with, udp_whoami, udp_whoami_with, ClientOptions, LongLivedConnection,
    Proto, WhoAmIServer,
};
