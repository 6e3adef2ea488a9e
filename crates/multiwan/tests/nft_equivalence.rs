//! One model, two renderers: the nft text `plan` prints and the JSON batch `apply`
//! sends must install the same thing. Each golden config's table is loaded as text in
//! one namespace and as the JSON batch in another; the kernel's listings must match.

use std::path::Path;

use multiwan::kernel::nft::{self as knft, Existing};
use multiwan::plan::{self, LinkState, LinkStates, PlanInput};
use multiwan::{config, render};
use netns_lab::{unique_name, Netns};

mod common;

/// `nft list table` without handles and counter values, which differ by nature.
fn listing(ns: &Netns, table: &str) -> String {
    let out = ns.exec("nft", &["list", "table", "inet", table]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim_start().starts_with("packets"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn text_and_json_renderings_install_the_same_table() {
    common::require_root();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut compared = 0;
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("toml"))
        .collect();
    names.sort();
    for path in names {
        let text = std::fs::read_to_string(&path).unwrap();
        let cfg = config::parse(&text, &path).unwrap();
        // In service, and with the first link down: two different tables per config.
        let first = cfg.links[0].name.clone();
        for states in [
            LinkStates::new(),
            [(first.clone(), LinkState::Down)].into_iter().collect(),
        ] {
            let desired = plan::plan(&PlanInput {
                config: &cfg,
                states: &states,
                facts: &common::lab_facts(),
                seed: 0x1234_5678,
            });
            let name = desired.nft.name.clone();
            let tag = path
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .replace('_', "-");
            let as_text =
                Netns::new(unique_name("mweq", &format!("{tag}-t{}", states.len()))).unwrap();
            let as_json =
                Netns::new(unique_name("mweq", &format!("{tag}-j{}", states.len()))).unwrap();

            let script = render::plan_script(&cfg, &desired);
            let table = desired.nft.clone();
            if knft::needs_text(&table) {
                // Cgroup matches or NPTv6: JSON cannot carry them, so apply sends the
                // text batch; it must install what `plan` prints. nft resolves the
                // cgroups when loading, so they are made real (same depth, a test's own
                // names).
                let cgroups = common::TestCgroup::new(&format!("eq-{tag}-{}", states.len()));
                let knft::NftBatch::Text(batch) = knft::to_batch(&table, &Existing::default())
                else {
                    panic!(
                        "{}: a table with cgroup matches or NPTv6 needs the text batch",
                        path.display()
                    )
                };
                for (ns, text, what) in [
                    (&as_text, render::nft_section(&script).unwrap(), "plan text"),
                    (&as_json, batch.as_str(), "text batch"),
                ] {
                    let text = cgroups.localize(text);
                    let out = common::with_cgroup2(ns, "nft")
                        .args(["-f", "-"])
                        .stdin(std::process::Stdio::piped())
                        .stdout(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::piped())
                        .spawn()
                        .and_then(|mut child| {
                            use std::io::Write;
                            child.stdin.take().unwrap().write_all(text.as_bytes())?;
                            child.wait_with_output()
                        })
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "{}: {what} rejected: {}\n{text}",
                        path.display(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            } else {
                as_text
                    .nft(render::nft_section(&script).unwrap())
                    .unwrap_or_else(|e| panic!("{}: text rejected: {e:#}", path.display()));
                as_json
                    .run(move || {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .expect("tokio runtime")
                            .block_on(async {
                                let existing =
                                    Existing::read(&table.name).await.unwrap_or_default();
                                let batch = knft::to_batch(&table, &existing);
                                knft::send(&batch, &table.name).await
                            })
                    })
                    .unwrap()
                    .unwrap_or_else(|e| panic!("{}: JSON batch rejected: {e:#}", path.display()));
            }

            let (t, j) = (listing(&as_text, &name), listing(&as_json, &name));
            assert_eq!(
                t,
                j,
                "{} ({states:?}): text and JSON differ",
                path.display()
            );
            compared += 1;
        }
    }
    assert!(compared >= 10, "compared only {compared} tables");
}
