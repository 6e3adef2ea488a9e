//! Where a thing is in the TOML file: dotted key paths from byte offsets, serde's
//! messages in TOML words, and removing a bad key so a section can be read again.

use std::ops::Range;

use serde_spanned::Spanned;
use toml::de::DeValue;

/// Serde's wording, in TOML terms.
pub(super) fn serde_message(message: &str) -> String {
    let message = message
        .replace("unknown field", "unknown key")
        .replace("a sequence", "an array")
        .replace("a map", "a table");
    if message.starts_with("unknown key") {
        // "unknown key `foo`, expected one of ..." → say what to do as well.
        format!("{message}; remove it or fix its spelling")
    } else {
        message
    }
}

// ----- key paths -----------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// A key as written in a dotted path: bare when TOML allows it, quoted otherwise.
pub(super) fn key_segment(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

pub(super) fn render_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&key_segment(k));
            }
            // 1-based, like line numbers and the default rule names (`rule2`).
            Seg::Index(i) => out.push_str(&format!("[{}]", i + 1)),
        }
    }
    out
}

pub(super) fn span_contains(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset)
}

/// The path of the most deeply nested key or value at `offset` (table header spans do
/// not contain their children, so every branch is searched).
pub(super) fn path_at(root: &Spanned<DeValue<'_>>, offset: usize) -> Vec<Seg> {
    fn walk(v: &Spanned<DeValue<'_>>, offset: usize, cur: &mut Vec<Seg>, best: &mut Vec<Seg>) {
        let visit = |seg: Seg,
                     key_span: Option<Range<usize>>,
                     child: &Spanned<DeValue<'_>>,
                     cur: &mut Vec<Seg>,
                     best: &mut Vec<Seg>| {
            cur.push(seg);
            let hit = key_span.is_some_and(|s| span_contains(&s, offset))
                || span_contains(&child.span(), offset);
            if hit && cur.len() > best.len() {
                *best = cur.clone();
            }
            walk(child, offset, cur, best);
            cur.pop();
        };
        match v.get_ref() {
            DeValue::Table(t) => {
                for (k, child) in t.iter() {
                    visit(
                        Seg::Key(k.get_ref().to_string()),
                        Some(k.span()),
                        child,
                        cur,
                        best,
                    );
                }
            }
            DeValue::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    visit(Seg::Index(i), None, child, cur, best);
                }
            }
            _ => {}
        }
    }
    let mut best = Vec::new();
    walk(root, offset, &mut Vec::new(), &mut best);
    best
}

/// The part of `path` that is trustworthy in a tree recovered from a syntax error:
/// tables and arrays of tables, but not the inside of a value array, which recovery
/// fills with fragments.
pub(super) fn syntax_key(root: &Spanned<DeValue<'_>>, path: &[Seg]) -> Vec<Seg> {
    let mut node = root;
    let mut kept = Vec::new();
    for seg in path {
        let next = match (seg, node.get_ref()) {
            (Seg::Key(k), DeValue::Table(t)) => t.get(k.as_str()),
            (Seg::Index(i), DeValue::Array(a)) => a.get(*i).filter(|e| e.get_ref().is_table()),
            _ => None,
        };
        match next {
            Some(n) => {
                kept.push(seg.clone());
                node = n;
            }
            None => break,
        }
    }
    kept
}

/// Removes the node at `path` (relative to `v`); false if there is none.
pub(super) fn remove_at(v: &mut DeValue<'_>, path: &[Seg]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = v;
    for seg in parents {
        let next = match (seg, node) {
            (Seg::Key(k), DeValue::Table(t)) => t.get_mut(k.as_str()).map(|c| c.get_mut()),
            (Seg::Index(i), DeValue::Array(a)) => a.get_mut(*i).map(|c| c.get_mut()),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => return false,
        }
    }
    match (last, node) {
        (Seg::Key(k), DeValue::Table(t)) => t.remove(k.as_str()).is_some(),
        (Seg::Index(i), DeValue::Array(a)) if *i < a.len() => {
            *a = a
                .iter()
                .enumerate()
                .filter(|(j, _)| j != i)
                .map(|(_, e)| e.clone())
                .collect();
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use toml::de::DeTable;

    use super::*;

    #[test]
    fn key_paths_quote_odd_keys() {
        let path = vec![
            Seg::Key("links".into()),
            Seg::Key("isp 1".into()),
            Seg::Key("targets".into()),
            Seg::Index(0),
        ];
        assert_eq!(render_path(&path), "links.\"isp 1\".targets[1]");
    }

    #[test]
    fn path_at_finds_the_deepest_key() {
        let text = "[links.isp1]\nid = 1\n[links.isp1.check]\ntargets = [\"a\", 2]\n";
        let doc = DeTable::parse(text).unwrap();
        let root = Spanned::new(doc.span(), DeValue::Table(doc.into_inner()));
        let at = |needle: &str| render_path(&path_at(&root, text.find(needle).unwrap()));
        assert_eq!(at("id"), "links.isp1.id");
        assert_eq!(at("1\n["), "links.isp1.id");
        assert_eq!(at("2]"), "links.isp1.check.targets[2]");
        assert_eq!(at("[links.isp1.check]"), "links.isp1.check");
    }
}
