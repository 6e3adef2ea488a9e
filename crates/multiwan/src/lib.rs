//! multiwan: several internet uplinks on one Linux router.
//!
//! The crate is laid out the way the data flows:
//! - [`api`]: what can be asked of a running daemon (requests, replies, events) and the
//!   handle that asks it; used by both [`control`] and [`daemon`];
//! - [`config`]: the TOML file, parsed and validated into [`config::Config`];
//! - [`plan`]: the pure planner, (config, link states, interface facts) → [`plan::Desired`];
//! - [`render`]: the desired state as `ip` / `nft` text (`multiwan plan`);
//! - [`kernel`]: reads what is installed and applies a desired state over netlink and
//!   one nft JSON batch;
//! - [`probe`], [`health`]: health checks and the per-link state machine;
//! - [`daemon`]: the event loop of `multiwan run`;
//! - [`control`]: operating it: the control socket, metrics and hooks;
//! - [`cli`]: the `multiwan` command.

pub mod api;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod explain;
pub mod health;
pub mod kernel;
pub mod logging;
pub mod plan;
pub mod preflight;
pub mod probe;
pub mod render;
pub mod state;
pub mod status;
