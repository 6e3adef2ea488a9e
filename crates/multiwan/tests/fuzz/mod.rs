//! The fuzzing machinery shared by `fuzz_config.rs` and `fuzz_regressions.rs`: a
//! choice tape (proptest shrinks it towards zeros, i.e. the first, plainest choices),
//! a config generator, TOML mutations of the corpus, the checks every input must pass,
//! and `nft -c` over many rulesets at once.
// Each test crate uses only part of it.
#![allow(dead_code, unused_imports)]

mod checks;
mod generate;
mod mutate;
mod nft_check;

pub use checks::check_text;
pub use generate::generate;
pub use mutate::{corpus, mutate};
pub use nft_check::nft_check_all;

/// Numbers that decide every choice; 0 once used up.
pub struct Tape<'a> {
    choices: &'a [u32],
    at: usize,
    /// Values come only from the first two of each pool (the valid ones), so that
    /// many generated configs are accepted and reach the planner and nft.
    pub sane: bool,
}

impl<'a> Tape<'a> {
    pub fn new(choices: &'a [u32]) -> Tape<'a> {
        Tape {
            choices,
            at: 0,
            sane: false,
        }
    }

    pub fn next(&mut self) -> u32 {
        let v = self.choices.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        v
    }

    /// `0..n`
    pub fn below(&mut self, n: usize) -> usize {
        self.next() as usize % n.max(1)
    }

    pub fn pick<'p, T: ?Sized>(&mut self, pool: &'p [&'p T]) -> &'p T {
        pool[self.below(pool.len())]
    }

    /// A value from `pool`: from its first two only when [`Tape::sane`].
    pub fn value<'p>(&mut self, pool: &'p [&'p str]) -> &'p str {
        let n = if self.sane {
            pool.len().min(2)
        } else {
            pool.len()
        };
        pool[self.below(n)]
    }

    /// True `percent` of the time (false for a zero, so shrinking drops options).
    pub fn chance(&mut self, percent: u32) -> bool {
        let v = self.next();
        v != 0 && v % 100 < percent
    }
}
