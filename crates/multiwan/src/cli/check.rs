//! `multiwan check`: config errors (exit 2) and warnings about the machine (exit 0).

use std::path::Path;

use super::CliResult;
use crate::config::{self, Config};
use crate::kernel::rules;
use crate::plan::{LinkStates, PlanInput};

pub fn run(config_path: &Path) -> CliResult {
    let config = config::load(config_path)?;
    let text = std::fs::read_to_string(config_path).unwrap_or_default();
    let mut warnings = Vec::new();
    let own = crate::plan::plan(&PlanInput {
        config: &config,
        states: &LinkStates::new(),
        facts: &Default::default(),
        seed: 0,
    })
    .owned_priorities;
    let mask = config.settings.mark_mask;
    let (line, col) = key_position(&text, "mark_mask");
    let at = format!("{}:{line}:{col}: settings.mark_mask", config_path.display());

    // Foreign ip rules whose fwmark touches our bits.
    if let Ok(rt) = super::runtime() {
        let found = rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().ok()?;
            let task = tokio::spawn(conn);
            let all = rules::read(&handle, (0, u32::MAX)).await.ok();
            task.abort();
            all
        });
        for ir in found.unwrap_or_default() {
            let Some(rule) = ir.rule else { continue };
            if (own.0..=own.1).contains(&rule.priority) {
                continue;
            }
            if let Some((mark, m)) = rule.selector.fwmark {
                if (m & mask) != 0 || (mark & mask) != 0 {
                    warnings.push(format!(
                        "{at}: warning: ip rule at priority {} matches fwmark {mark:#x}/{m:#x}, which uses bits of mark_mask {mask:#x}; give multiwan bits nothing else uses",
                        rule.priority
                    ));
                }
            }
        }
    }
    // Foreign nft rules that set or match mark bits.
    for table in foreign_nft_mark_users(&config) {
        warnings.push(format!(
            "{at}: warning: nft table {table} sets or matches packet/connection marks in bits of mark_mask {mask:#x}; give multiwan bits nothing else uses"
        ));
    }
    for w in sysctl_warnings(&config) {
        warnings.push(format!("{}: warning: {w}", config_path.display()));
    }
    for w in &warnings {
        eprintln!("{w}");
    }
    println!(
        "{}: ok ({} links, {} policies, {} rules{})",
        config_path.display(),
        config.links.len(),
        config.policies.len(),
        config.rules.len(),
        if warnings.is_empty() {
            String::new()
        } else {
            format!(", {} warnings", warnings.len())
        }
    );
    Ok(0)
}

/// 1-based line and column of `key = …` in the file, or 1:1 when it is not written.
fn key_position(text: &str, key: &str) -> (usize, usize) {
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(key) {
            if rest.trim_start().starts_with('=') {
                return (i + 1, line.len() - trimmed.len() + 1);
            }
        }
    }
    (1, 1)
}

/// Tables other than ours whose rules set or compare `meta mark` / `ct mark` with values
/// or masks inside `mark_mask`.
fn foreign_nft_mark_users(config: &Config) -> Vec<String> {
    let Ok(text) = crate::kernel::nft::list_ruleset_json() else {
        return Vec::new();
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    let mask = u64::from(config.settings.mark_mask);
    let mut tables = Vec::new();
    for item in json["nftables"].as_array().into_iter().flatten() {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let name = format!(
            "{} {}",
            rule["family"].as_str().unwrap_or("?"),
            rule["table"].as_str().unwrap_or("?")
        );
        if rule["family"] == "inet" && rule["table"] == config.settings.nft_table.as_str() {
            continue;
        }
        if uses_mark_bits(&rule["expr"], mask) && !tables.contains(&name) {
            tables.push(name);
        }
    }
    tables
}

/// Whether an expression tree mentions a mark together with a number touching `mask`.
fn uses_mark_bits(v: &serde_json::Value, mask: u64) -> bool {
    fn mentions_mark(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => {
                m.get("key").and_then(|k| k.as_str()) == Some("mark")
                    || m.values().any(mentions_mark)
            }
            serde_json::Value::Array(a) => a.iter().any(mentions_mark),
            _ => false,
        }
    }
    fn numbers(v: &serde_json::Value, out: &mut Vec<u64>) {
        match v {
            serde_json::Value::Number(n) => out.extend(n.as_u64()),
            serde_json::Value::Object(m) => m.values().for_each(|x| numbers(x, out)),
            serde_json::Value::Array(a) => a.iter().for_each(|x| numbers(x, out)),
            _ => {}
        }
    }
    let serde_json::Value::Array(stmts) = v else {
        return false;
    };
    stmts.iter().any(|s| {
        if !mentions_mark(s) {
            return false;
        }
        let mut ns = Vec::new();
        numbers(s, &mut ns);
        ns.iter().any(|n| n & mask != 0)
    })
}

/// Sysctls multiwan needs that are off now (it sets them on apply).
fn sysctl_warnings(config: &Config) -> Vec<String> {
    let read = |key: &str| {
        std::fs::read_to_string(format!("/proc/sys/{key}"))
            .ok()
            .map(|s| s.trim().to_string())
    };
    // Every interface: the sysctl of one that does not exist cannot be read, and is
    // skipped below.
    let wanted = crate::plan::sysctls::required(config, |_| true);
    let mut out = Vec::new();
    for sc in wanted {
        if let Some(have) = read(&sc.key) {
            if have != sc.value {
                out.push(format!(
                    "{} is {have}, multiwan needs {} (it sets it on apply)",
                    sc.dotted(),
                    sc.value
                ));
            }
        }
    }
    if read("net/ipv4/ip_forward").as_deref() == Some("0")
        && !config.settings.lan.as_ref().is_some_and(|l| l.is_empty())
    {
        out.push(
            "net.ipv4.ip_forward is 0: apply and run refuse to start until it is 1 (or lan = [])"
                .into(),
        );
    }
    out
}
