//! `multiwan demo` runs from start to end with exit 0 and leaves nothing behind.

mod common;

#[test]
fn serial_demo_runs_to_the_end_and_cleans_up() {
    common::require_root();
    let out = std::process::Command::new(common::multiwan_bin())
        .arg("demo")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "1. ",
        "2. ",
        "3. ",
        "4. ",
        "5. ",
        "6. ",
        "7. ",
        "sandbox removed",
    ] {
        assert!(text.contains(step), "the demo skipped {step:?}:\n{text}");
    }
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.lines().any(|l| l.starts_with("mwdemo")),
        "the demo left namespaces behind:\n{left}"
    );
}
