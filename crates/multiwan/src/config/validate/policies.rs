//! `[policies.<name>]`: which links, with what overrides, how sticky.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use serde_spanned::Spanned;

use super::Ctx;
use crate::config::model::{Fallback, Link, Policy, PolicyMember, Sticky};
use crate::config::raw::{RawMember, RawPolicy};

impl<'t> Ctx<'_, 't> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn policy(
        &mut self,
        name: &str,
        key: &str,
        table_span: Range<usize>,
        raw: RawPolicy,
        link_names: &HashSet<&str>,
        links: &HashMap<&str, &Link>,
        default_fallback: Fallback,
    ) -> Option<Policy> {
        let errors_before = self.errors.len();
        let links_key = format!("{key}.links");
        let mut members = Vec::new();
        let mut complete = true;
        match &raw.links {
            None => {
                self.dep_error(
                    table_span,
                    &links_key,
                    "a policy needs links to share traffic over, e.g. links = [\"isp1\", \"isp2\"]",
                );
            }
            Some(list) if list.get_ref().is_empty() => {
                self.error(
                    list.span(),
                    &links_key,
                    "a policy needs at least one link, e.g. links = [\"isp1\", \"isp2\"]",
                );
            }
            Some(list) => {
                members = self.members(name, list.get_ref(), link_names, links, &mut complete);
            }
        }
        let sticky = match &raw.sticky {
            None => Some(Sticky::Connection),
            Some(s) => self.choice(
                s,
                &format!("{key}.sticky"),
                &[
                    ("connection", Sticky::Connection),
                    ("source", Sticky::Source),
                    ("source-destination", Sticky::SourceDestination),
                ],
            ),
        };
        let fallback = match &raw.fallback {
            None => Some(default_fallback),
            Some(f) => self.fallback(f, &format!("{key}.fallback")),
        };
        if self.errors.len() > errors_before || !complete {
            return None;
        }
        let members = members
            .into_iter()
            .map(|(link, priority, weight)| {
                Some(PolicyMember {
                    link,
                    priority: priority?,
                    weight: weight?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Policy {
            name: name.to_string(),
            members,
            sticky: sticky?,
            fallback: fallback?,
        })
    }

    /// The entries of a policy's `links`: link, priority and weight (the link's own
    /// where the entry does not override them; `None`: the override is wrong). A link that failed
    /// validation leaves the policy incomplete (and the config rejected), without a
    /// second error here.
    fn members(
        &mut self,
        name: &str,
        list: &[Spanned<RawMember>],
        link_names: &HashSet<&str>,
        links: &HashMap<&str, &Link>,
        complete: &mut bool,
    ) -> Vec<(String, Option<u32>, Option<u32>)> {
        let mut members = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for entry in list {
            let entry_key = self.key_at(&entry.span());
            let (link, link_span, priority, weight) = match entry.get_ref() {
                RawMember::Name(n) => (n.clone(), entry.span(), None, None),
                RawMember::Table(t) => {
                    let Some(l) = &t.link else {
                        self.dep_error(
                            entry.span(),
                            &format!("{entry_key}.link"),
                            "missing link; write e.g. { link = \"isp1\", weight = 2 }",
                        );
                        continue;
                    };
                    (
                        l.get_ref().clone(),
                        l.span(),
                        t.priority.as_ref(),
                        t.weight.as_ref(),
                    )
                }
            };
            if !link_names.contains(link.as_str()) {
                let mut known: Vec<&str> = link_names.iter().copied().collect();
                known.sort_unstable();
                self.error(
                    link_span,
                    &entry_key,
                    format!(
                        "there is no link named {link:?}; the links are: {}",
                        if known.is_empty() {
                            "(none)".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
                continue;
            }
            if !seen.insert(link.clone()) {
                self.error(
                    link_span,
                    &entry_key,
                    format!("link {link} is listed twice in policy {name}; list it once"),
                );
                continue;
            }
            let priority = priority.map(|p| self.priority(p, &format!("{entry_key}.priority")));
            let weight = weight.map(|w| self.weight(w, &format!("{entry_key}.weight")));
            // Overrides that are absent inherit the link's own values; a link
            // that failed validation leaves the policy incomplete (and the
            // config rejected), without a second error here.
            match links.get(link.as_str()) {
                Some(l) => members.push((
                    link,
                    priority.unwrap_or(Some(l.priority)),
                    weight.unwrap_or(Some(l.weight)),
                )),
                None => *complete = false,
            }
        }
        members
    }
}
