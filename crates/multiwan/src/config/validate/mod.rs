//! TOML text → validated [`Config`], with every error positioned.
//!
//! The file is parsed once into toml's spanned document tree. Each section (the
//! settings, one link, one policy, one rule) is then deserialized into its `raw.rs`
//! struct on its own, so a type error or unknown key in one section does not hide the
//! errors of the others; within a section the offending key is removed and the section
//! retried, so every unknown key and wrong type is reported, not just the first.
//!
//! What remains of a section with shape errors is still checked, value by value (ranges,
//! enum strings, addresses), but errors that depend on other keys of the section (a
//! missing key, a key that does not fit the method, combinations) are dropped there:
//! the removed keys stand at their defaults and would make such errors misleading. Its
//! name counts as defined either way, so references to it raise no "no such link"
//! noise. Checks across sections (ids, interfaces, tables, references) run on whatever
//! could be read.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

mod checks;
mod links;
mod policies;
mod rules;
mod settings;
mod spans;
mod unsupported;
mod users;
mod values;

use super::error::{ConfigError, ConfigErrors};
use super::model::*;
use super::raw::*;
use spans::{key_segment, path_at, remove_at, render_path, serde_message, syntax_key};
pub(crate) use users::{SystemUsers, Users};

/// Parses and validates `text`; `file` only names it in errors and `Config::path`.
pub(crate) fn parse_with(
    text: &str,
    file: &Path,
    users: &dyn Users,
) -> Result<Config, ConfigErrors> {
    let line_starts = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();

    let (doc, syntax_errors) = DeTable::parse_recoverable(text);
    let root = Spanned::new(doc.span(), DeValue::Table(doc.into_inner()));
    let mut cx = Ctx {
        text,
        file,
        line_starts,
        root: &root,
        users,
        errors: Vec::new(),
        lenient: false,
        lan_entries: Vec::new(),
    };

    if !syntax_errors.is_empty() {
        // The recovered tree of a broken file is a guess; checking it would add
        // errors about keys the parser dropped. Report the syntax alone, and only the
        // first error of each line: the parser's recovery tends to cascade.
        let mut lines_seen = HashSet::new();
        let mut syntax_errors: Vec<_> = syntax_errors
            .into_iter()
            .map(|e| (e.span().unwrap_or(0..0), e.message().to_string()))
            .collect();
        syntax_errors.sort_by_key(|(span, _)| span.start);
        for (span, message) in syntax_errors {
            if lines_seen.insert(cx.position(span.start).0) {
                let key = render_path(&syntax_key(&root, &path_at(&root, span.start)));
                cx.error(span, &key, message);
            }
        }
        return Err(ConfigErrors::sorted(cx.errors));
    }

    let config = cx.document();
    match config {
        Some(config) if cx.errors.is_empty() => Ok(config),
        _ => {
            // Every path that drops a piece of the config records why.
            debug_assert!(!cx.errors.is_empty(), "config rejected without an error");
            Err(ConfigErrors::sorted(cx.errors))
        }
    }
}

struct Ctx<'a, 't> {
    text: &'t str,
    file: &'t Path,
    /// Byte offset of the start of each line, for offset → line/column.
    line_starts: Vec<usize>,
    /// The whole document, to name the key at a serde error's position.
    root: &'a Spanned<DeValue<'t>>,
    users: &'a dyn Users,
    errors: Vec<ConfigError>,
    /// Set while checking a section that had shape errors: the keys removed from it
    /// stand at their defaults, so errors that depend on other keys being present
    /// ([`Ctx::dep_error`]) would be noise and are dropped.
    lenient: bool,
    /// Valid `settings.lan` entries with their positions, for the check against link
    /// interfaces.
    lan_entries: Vec<(String, Range<usize>)>,
}

impl<'t> Ctx<'_, 't> {
    // ----- positions and errors -------------------------------------------------------

    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let start = self.line_starts[line];
        // Spans fall on character boundaries; `get` keeps a stray one from panicking.
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line + 1, column + 1)
    }

    /// The dotted key at a position of the file, from the document itself: right even
    /// where shape errors removed entries and shifted array indexes.
    fn key_at(&self, span: &Range<usize>) -> String {
        render_path(&path_at(self.root, span.start))
    }

    fn error(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let (line, column) = self.position(span.start);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        });
    }

    /// An error that only holds if the other keys of the section are as written: a
    /// missing key, a key that does not fit the method, a combination of keys.
    fn dep_error(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        if !self.lenient {
            self.error(span, key, message);
        }
    }

    /// Deserializes one section, reporting every shape error in it (unknown keys,
    /// wrong types). What remains after removing the offending keys is returned with
    /// `lenient` set accordingly, for the caller to check and then reset.
    fn section<T: DeserializeOwned>(&mut self, value: &Spanned<DeValue<'t>>) -> Option<T> {
        let mut work = value.clone();
        self.lenient = false;
        // Each round removes one offending key, so this ends; the bound is a backstop.
        for _ in 0..1000 {
            match T::deserialize(ValueDeserializer::from(work.clone())) {
                Ok(t) => return Some(t),
                Err(e) => {
                    self.lenient = true;
                    let span = e.span().unwrap_or_else(|| value.span());
                    let key = render_path(&path_at(self.root, span.start));
                    self.error(span.clone(), &key, serde_message(e.message()));
                    let inner = path_at(&work, span.start);
                    if inner.is_empty() || !remove_at(work.get_mut(), &inner) {
                        return None;
                    }
                }
            }
        }
        None
    }

    // ----- the document ------------------------------------------------------------

    fn document(&mut self) -> Option<Config> {
        let DeValue::Table(top) = self.root.get_ref() else {
            unreachable!("a TOML document is a table");
        };
        let mut settings_v = None;
        let mut links_v = None;
        let mut policies_v = None;
        let mut rules_v = None;
        for (k, v) in top.iter() {
            match k.get_ref().as_ref() {
                "settings" => settings_v = Some(v),
                "links" => links_v = Some(v),
                "policies" => policies_v = Some(v),
                "rules" => rules_v = Some(v),
                other => self.error(
                    k.span(),
                    &key_segment(other),
                    format!(
                        "unknown key `{other}`; the file holds [settings], [links.<name>], \
                         [policies.<name>] and [[rules]]"
                    ),
                ),
            }
        }

        let settings = match settings_v {
            None => self.settings(RawSettings::default()),
            Some(v) => {
                let settings = self
                    .section::<RawSettings>(v)
                    .and_then(|raw| self.settings(raw));
                self.lenient = false;
                settings
            }
        };

        let link_entries = self.named_entries(links_v, "links", "[links.isp1]");
        let mut facts = Vec::new();
        for (name, key_span, value) in &link_entries {
            let key = format!("links.{}", key_segment(name));
            self.check_name("link", name, key_span.clone(), &key);
            let raw = self.section::<RawLink>(value);
            facts.push(self.link(name, value.span(), raw));
            self.lenient = false;
        }
        let link_names: HashSet<&str> = link_entries.iter().map(|(n, _, _)| n.as_str()).collect();
        self.cross_link_checks(&facts, settings.as_ref());

        let links_by_name: HashMap<&str, &Link> = facts
            .iter()
            .filter_map(|f| f.link.as_ref().map(|l| (f.name.as_str(), l)))
            .collect();
        let default_fallback = settings.as_ref().map_or(Fallback::All, |s| s.fallback);

        let policy_entries = self.named_entries(policies_v, "policies", "[policies.voip]");
        let mut policies = Vec::new();
        for (name, key_span, value) in &policy_entries {
            let key = format!("policies.{}", key_segment(name));
            self.check_name("policy", name, key_span.clone(), &key);
            if link_names.contains(name.as_str()) {
                self.error(
                    key_span.clone(),
                    &key,
                    format!(
                        "there is also a link named {name}; rules name policies and links \
                         alike, so give the policy another name"
                    ),
                );
            }
            if let Some(raw) = self.section::<RawPolicy>(value) {
                policies.push(self.policy(
                    name,
                    &key,
                    value.span(),
                    raw,
                    &link_names,
                    &links_by_name,
                    default_fallback,
                ));
            } else {
                policies.push(None);
            }
            self.lenient = false;
        }
        let policy_names: HashSet<&str> =
            policy_entries.iter().map(|(n, _, _)| n.as_str()).collect();

        let local_traffic = settings.as_ref().map(|s| s.local_traffic);
        let rules = self.rules(rules_v, &link_names, &policy_names, local_traffic);

        let settings = settings?;
        let mut links = facts
            .into_iter()
            .map(|f| f.link)
            .collect::<Option<Vec<_>>>()?;
        links.sort_by_key(|l| l.id);
        let policies = policies.into_iter().collect::<Option<Vec<_>>>()?;
        Some(Config {
            path: self.file.to_path_buf(),
            settings,
            links,
            policies,
            rules: rules?,
        })
    }

    /// The entries of `[links.*]` or `[policies.*]`, in file order (toml's map is sorted
    /// by key; the key spans give the order back).
    fn named_entries(
        &mut self,
        value: Option<&'_ Spanned<DeValue<'t>>>,
        section: &str,
        example: &str,
    ) -> Vec<(String, Range<usize>, Spanned<DeValue<'t>>)> {
        let Some(value) = value else {
            return Vec::new();
        };
        let DeValue::Table(table) = value.get_ref() else {
            self.error(
                value.span(),
                section,
                format!(
                    "{section} must be a table of named tables, e.g. {example}, not {}",
                    value.get_ref().type_str()
                ),
            );
            return Vec::new();
        };
        let mut entries: Vec<_> = table
            .iter()
            .map(|(k, v)| (k.get_ref().to_string(), k.span(), v.clone()))
            .collect();
        entries.sort_by_key(|(_, span, _)| span.start);
        entries
    }

    // ----- [settings] --------------------------------------------------------------
}
