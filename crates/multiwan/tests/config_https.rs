//! `method = "https"` and `ca_file` in `[links.X.check]`: what `check` accepts and what it
//! rejects, with the key and line.

use std::path::{Path, PathBuf};

use multiwan::config::{self, ConfigErrors, Probe};

const FILE: &str = "/etc/multiwan/test.toml";

/// One link (lines 1-4) with a check table (line 5) holding `body` from line 6 on.
fn with_check(body: &str) -> String {
    format!("[links.isp1]\nid = 1\ninterface = \"wan1\"\n\n[links.isp1.check]\n{body}")
}

fn errors(text: &str) -> ConfigErrors {
    match config::parse(text, Path::new(FILE)) {
        Ok(c) => panic!("expected errors, the config was accepted: {c:#?}"),
        Err(e) => e,
    }
}

#[track_caller]
fn one_error(text: &str, key: &str, line: usize, fragment: &str) {
    let errs = errors(text);
    assert_eq!(errs.0.len(), 1, "expected one error, got:\n{errs}");
    let e = &errs.0[0];
    assert_eq!((e.key.as_str(), e.line), (key, line), "{e}");
    assert!(e.message.contains(fragment), "{e} lacks {fragment:?}");
}

#[test]
fn https_with_and_without_ca_file() {
    let text = with_check(
        "method = \"https\"\ntargets = [\"https://example.com/health\"]\n\
         ca_file = \"/etc/multiwan/ca.pem\"\n",
    );
    let c = config::parse(&text, Path::new(FILE)).unwrap();
    assert_eq!(
        c.links[0].check.as_ref().unwrap().probe,
        Probe::Https {
            urls: vec!["https://example.com/health".into()],
            ca_file: Some(PathBuf::from("/etc/multiwan/ca.pem")),
        }
    );

    let text = with_check("method = \"https\"\ntargets = [\"https://192.0.2.80:8443/\"]\n");
    let c = config::parse(&text, Path::new(FILE)).unwrap();
    assert_eq!(
        c.links[0].check.as_ref().unwrap().probe,
        Probe::Https {
            urls: vec!["https://192.0.2.80:8443/".into()],
            ca_file: None,
        }
    );
}

#[test]
fn https_rejections() {
    one_error(
        &with_check("method = \"https\"\ntargets = [\"http://example.com/\"]\n"),
        "links.isp1.check.targets[1]",
        7,
        "method https probes https:// URLs",
    );
    one_error(
        &with_check("method = \"https\"\n"),
        "links.isp1.check.targets",
        5,
        "targets = [\"https://example.com/\"]",
    );
    one_error(
        &with_check(
            "method = \"https\"\ntargets = [\"https://example.com/\"]\nca_file = \"ca.pem\"\n",
        ),
        "links.isp1.check.ca_file",
        8,
        "not an absolute path",
    );
    one_error(
        &with_check(
            "method = \"icmp\"\ntargets = [\"198.18.0.1\"]\nca_file = \"/etc/multiwan/ca.pem\"\n",
        ),
        "links.isp1.check.ca_file",
        8,
        "only used by method https",
    );
}
