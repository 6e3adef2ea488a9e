//! Fuzzing on stable Rust (issue 14, acceptance 3): property tests over generated
//! configs and over TOML mutations of `examples/*.toml` and the golden configs.
//!
//! For every input: `config::parse` and the planner never panic; every rejection is a
//! list of errors, each naming the file, a line and a column inside the text; every
//! accepted config plans (for random link states and interface facts) to a ruleset that
//! `nft -c` accepts, checked in a network namespace made for it, many rulesets per nft
//! call.
//!
//! Bounded for CI: `MULTIWAN_FUZZ_CASES` cases per property (default 1000; the README's
//! "Testing" notes give the longer run). A failure prints the config text; keep it as a
//! regression in `tests/fuzz_regressions.rs`.

mod common;
mod fuzz;

use std::sync::Mutex;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

use fuzz::{check_text, corpus, generate, mutate, nft_check_all, Tape};

/// Cases per property (each runs parse, plan and render; nft runs batched afterwards).
fn cases() -> u32 {
    std::env::var("MULTIWAN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn runner() -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases: cases(),
        // Failures are kept as explicit regression tests, not in a persistence file.
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

fn tape() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(any::<u32>(), 32..400)
}

/// Runs the checks over the texts `make_text` builds from `strategy` (with a second
/// tape choosing link states and facts), then checks every accepted ruleset with nft.
fn fuzz<S: Strategy>(strategy: S, make_text: impl Fn(&S::Value) -> String) {
    common::require_root();
    let accepted = Mutex::new(Vec::new());
    let result = runner().run(&(strategy, tape()), |(value, plan_tape)| {
        let text = make_text(&value);
        if let Some(ruleset) = check_text(&text, &mut Tape::new(&plan_tape))? {
            accepted.lock().unwrap().push((text, ruleset));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let accepted = accepted.into_inner().unwrap();
    eprintln!("{} accepted configs to check with nft -c", accepted.len());
    nft_check_all(&accepted);
}

#[test]
fn generated_configs_never_panic_and_plan_to_rulesets_nft_accepts() {
    fuzz(tape(), |t| generate(&mut Tape::new(t)));
}

#[test]
fn mutated_examples_and_golden_configs_never_panic() {
    let strategy = (0..corpus().len(), tape());
    fuzz(strategy, |(i, t)| mutate(i.to_owned(), &mut Tape::new(t)));
}

/// The unmutated corpus itself: every file is accepted and its plan passes nft -c.
#[test]
fn the_corpus_is_accepted_and_nft_accepts_its_rulesets() {
    common::require_root();
    let mut accepted = Vec::new();
    for (name, text) in corpus() {
        let ruleset = check_text(text, &mut Tape::new(&[]))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name} is rejected"));
        accepted.push((text.clone(), ruleset));
    }
    nft_check_all(&accepted);
}
