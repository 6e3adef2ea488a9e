//! The pure planner: (config, link states, observed interface facts) → desired state.

pub mod model;
pub mod nft;

pub use model::*;
