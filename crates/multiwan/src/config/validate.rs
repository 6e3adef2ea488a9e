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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::{IpNet, Ipv6Net};
use serde::de::DeserializeOwned;
use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::duration::parse_duration;
use super::error::{ConfigError, ConfigErrors};
use super::model::*;
use super::raw::*;

/// Names that `ip rule` / `ip route` or the rule syntax already give a meaning.
const RESERVED_NAMES: &[&str] = &[
    "main",
    "local",
    "default",
    "unspec",
    "all",
    "unreachable",
    "blackhole",
];

/// Longest link or policy name: an interface-name-sized field (IFNAMSIZ - 1), which
/// keeps `ip route show table <name>` and nft counter names short.
const MAX_NAME_LEN: usize = 15;

/// The kernel's reserved routing tables (`default`, `main`, `local`).
const RESERVED_TABLES: &[(u32, &str)] = &[(253, "default"), (254, "main"), (255, "local")];

/// multiwan uses tables `table_base ..= table_base + TABLE_SPAN`.
const TABLE_SPAN: u32 = 511;

/// multiwan uses ip rule priorities `rule_priority ..= rule_priority + RULE_SPAN`.
const RULE_SPAN: u32 = 999;

/// The last priority below the kernel's own `lookup main` rule (32766).
const LAST_FREE_RULE_PRIORITY: u32 = 32765;

/// Resolves a user name to a uid for rules with `user = "<name>"`.
pub(crate) trait Users {
    /// `Ok(None)`: no such user. `Err`: the user database could not be read.
    fn uid(&self, name: &str) -> Result<Option<u32>, String>;
}

/// The system's `/etc/passwd` (or another file in its format). Read only when a rule
/// names a user: most configs name none.
pub(crate) struct PasswdFile(pub PathBuf);

impl Users for PasswdFile {
    fn uid(&self, name: &str) -> Result<Option<u32>, String> {
        let text = std::fs::read_to_string(&self.0)
            .map_err(|e| format!("cannot read {}: {e}", self.0.display()))?;
        Ok(passwd_uid(&text, name))
    }
}

/// Looks `name` up in passwd(5) text: `name:password:uid:gid:gecos:home:shell`.
pub(crate) fn passwd_uid(text: &str, name: &str) -> Option<u32> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let mut fields = line.split(':');
            if fields.next()? != name {
                return None;
            }
            fields.nth(1)?.trim().parse().ok()
        })
}

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

/// What cross-section checks need to know about one link, as far as it could be read.
struct LinkFacts {
    name: String,
    id: Option<(u8, Range<usize>)>,
    interface: Option<(String, Range<usize>)>,
    /// The gateway, and the key and span to point at for a clash: the gateway value,
    /// or the interface when the gateway is left at its default.
    gateway: Option<(Gateway<Ipv4Addr>, &'static str, Range<usize>)>,
    link: Option<Link>,
    /// Read without shape errors: its defaults are what the file means.
    clean: bool,
}

/// Possible address families of a rule's matches.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Families {
    v4: bool,
    v6: bool,
}

impl Families {
    const BOTH: Families = Families { v4: true, v6: true };

    fn of_prefixes(nets: &[IpNet]) -> Families {
        if nets.is_empty() {
            return Families::BOTH;
        }
        Families {
            v4: nets.iter().any(|n| matches!(n, IpNet::V4(_))),
            v6: nets.iter().any(|n| matches!(n, IpNet::V6(_))),
        }
    }

    fn and(self, other: Families) -> Families {
        Families {
            v4: self.v4 && other.v4,
            v6: self.v6 && other.v6,
        }
    }

    fn describe(self) -> &'static str {
        match (self.v4, self.v6) {
            (true, true) => "IPv4 and IPv6",
            (true, false) => "IPv4 only",
            (false, true) => "IPv6 only",
            (false, false) => "no family",
        }
    }
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

        let rules = self.rules(rules_v, &link_names, &policy_names);

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

    fn settings(&mut self, raw: RawSettings) -> Option<Settings> {
        let mark_mask = match &raw.mark_mask {
            None => Some(0xff00),
            Some(v) => self.mark_mask(v),
        };
        let table_base = match &raw.table_base {
            None => Some(100),
            Some(v) => self.table_base(v),
        };
        let rule_priority = match &raw.rule_priority {
            None => Some(1000),
            Some(v) => self.int(
                v,
                "settings.rule_priority",
                1,
                i64::from(LAST_FREE_RULE_PRIORITY - RULE_SPAN),
                "multiwan owns ip rule priorities rule_priority..=rule_priority+999; they \
                 must stay above 0 and below the kernel's main rule (32766)",
            ),
        };
        let nft_table = match &raw.nft_table {
            None => Some("multiwan".to_string()),
            Some(v) => self.nft_table(v),
        };
        let lan = raw.lan.as_ref().map(|entries| {
            let mut seen = HashSet::new();
            let mut ok = Vec::new();
            for e in entries {
                let key = self.key_at(&e.span());
                if let Some(name) = self.ifname(e, &key) {
                    if !seen.insert(name.clone()) {
                        self.error(
                            e.span(),
                            &key,
                            format!("{name} is listed twice; list it once"),
                        );
                    } else {
                        self.lan_entries.push((name.clone(), e.span()));
                        ok.push(name);
                    }
                }
            }
            (ok.len() == entries.len()).then_some(ok)
        });
        let fallback = match &raw.fallback {
            None => Some(Fallback::All),
            Some(v) => self.fallback(v, "settings.fallback"),
        };
        let on_exit = match &raw.on_exit {
            None => Some(OnExit::Keep),
            Some(v) => self.choice(
                v,
                "settings.on_exit",
                &[("keep", OnExit::Keep), ("flush", OnExit::Flush)],
            ),
        };
        let socket = raw
            .socket
            .as_ref()
            .map(|v| self.absolute_path(v, "settings.socket"));
        let metrics = match &raw.metrics {
            None => Some(Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 9581)))),
            Some(v) => self.metrics(v),
        };
        let hooks_dir = match &raw.hooks_dir {
            None => Some(PathBuf::from("/etc/multiwan/hooks.d")),
            Some(v) => self.absolute_path(v, "settings.hooks_dir"),
        };
        let hook_timeout = match &raw.hook_timeout {
            None => Some(Duration::from_secs(10)),
            Some(v) => self.nonzero_duration(v, "settings.hook_timeout"),
        };
        let log_group = match &raw.log_group {
            None => Some(0),
            Some(v) => self.int(
                v,
                "settings.log_group",
                0,
                i64::from(u16::MAX),
                "NFLOG groups are 0..=65535 (0: kernel log)",
            ),
        };

        let nft_table = nft_table?;
        let socket = match socket {
            Some(s) => s?,
            // Derived from nft_table so two instances never share a socket.
            None => PathBuf::from(format!("/run/multiwan/{nft_table}.sock")),
        };
        Some(Settings {
            mark_mask: mark_mask?,
            table_base: table_base?,
            rule_priority: rule_priority? as u32,
            state_dir: PathBuf::from(format!("/var/lib/multiwan/{nft_table}")),
            nft_table,
            table_names: raw.table_names.unwrap_or(true),
            lan: match lan {
                None => None,
                Some(list) => Some(list?),
            },
            local_traffic: raw.local_traffic.unwrap_or(true),
            fallback: fallback?,
            on_exit: on_exit?,
            socket,
            metrics: metrics?,
            hooks_dir: hooks_dir?,
            hook_timeout: hook_timeout?,
            log_group: log_group? as u16,
        })
    }

    fn mark_mask(&mut self, v: &Spanned<Int>) -> Option<u32> {
        let key = "settings.mark_mask";
        let mask = self.int(
            v,
            key,
            0,
            i64::from(u32::MAX),
            "marks are 32 bits wide; give a mask such as 0xff00",
        )? as u32;
        // The planner puts ids 1..=254 and the reserved main mark 255 into the lowest
        // run of 8 contiguous mask bits (plan::marks), so such a run must exist.
        if !(0..=24).any(|shift| (mask >> shift) & 0xff == 0xff) {
            self.error(
                v.span(),
                key,
                format!(
                    "mark_mask {mask:#x} has no 8 contiguous bits; multiwan needs 8 for link ids \
                     1..=254 and the main mark, e.g. 0xff00 or 0xff0000"
                ),
            );
            return None;
        }
        Some(mask)
    }

    fn table_base(&mut self, v: &Spanned<Int>) -> Option<u32> {
        let key = "settings.table_base";
        let base = self.int(
            v,
            key,
            1,
            i64::from(u32::MAX - TABLE_SPAN),
            "multiwan uses tables table_base..=table_base+511, which must be above 0 \
             (unspec) and fit in 32 bits",
        )? as u32;
        // The default policy's table is table_base itself. Link tables are checked
        // against the links' ids in cross_link_checks; named-policy tables start at
        // table_base + 256 > 255 and can never hit a reserved table.
        if let Some((_, name)) = RESERVED_TABLES.iter().find(|(t, _)| *t == base) {
            self.error(
                v.span(),
                key,
                format!(
                    "table {base} is the kernel's {name} table, which multiwan must not own; \
                     use e.g. table_base = 100 or 1000"
                ),
            );
            return None;
        }
        Some(base)
    }

    fn nft_table(&mut self, v: &Spanned<String>) -> Option<String> {
        let name = v.get_ref();
        let mut chars = name.chars();
        let valid = name.len() <= 32
            && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            self.error(
                v.span(),
                "settings.nft_table",
                format!(
                    "{name:?} is not an nftables table name; use 1 to 32 characters of \
                     A-Z, a-z, 0-9, _ and -, starting with a letter"
                ),
            );
            return None;
        }
        Some(name.clone())
    }

    fn metrics(&mut self, v: &Spanned<String>) -> Option<Option<SocketAddr>> {
        let text = v.get_ref();
        if text.is_empty() {
            return Some(None);
        }
        match text.parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => {
                self.error(
                    v.span(),
                    "settings.metrics",
                    format!(
                        "{text:?} has port 0, which would listen on a random port; give a \
                         fixed port, e.g. \"127.0.0.1:9581\", or \"\" to disable metrics"
                    ),
                );
                None
            }
            Ok(addr) => Some(Some(addr)),
            Err(_) => {
                self.error(
                    v.span(),
                    "settings.metrics",
                    format!(
                        "{text:?} is not an address and port; write e.g. \"127.0.0.1:9581\" or \
                         \"[::1]:9581\", or \"\" to disable metrics"
                    ),
                );
                None
            }
        }
    }

    fn absolute_path(&mut self, v: &Spanned<String>, key: &str) -> Option<PathBuf> {
        let text = v.get_ref();
        if !text.starts_with('/') {
            // The daemon and the clients run from different directories; a relative
            // path would point them at different places.
            self.error(
                v.span(),
                key,
                format!("{text:?} is not an absolute path; write it starting with /"),
            );
            return None;
        }
        Some(PathBuf::from(text))
    }

    // ----- [links.*] -------------------------------------------------------------------

    fn link(&mut self, name: &str, table_span: Range<usize>, raw: Option<RawLink>) -> LinkFacts {
        let mut facts = LinkFacts {
            name: name.to_string(),
            id: None,
            interface: None,
            gateway: None,
            link: None,
            clean: !self.lenient,
        };
        let Some(raw) = raw else {
            return facts;
        };
        let base_key = format!("links.{}", key_segment(name));
        let key = |k: &str| format!("{base_key}.{k}");
        let errors_before = self.errors.len();

        let id = match &raw.id {
            None => {
                self.dep_error(
                    table_span.clone(),
                    &key("id"),
                    "missing id; give each link its own id in 1..=254, e.g. id = 1 (it fixes \
                     the link's mark and routing table)",
                );
                None
            }
            Some(v) => self
                .int(
                    v,
                    &key("id"),
                    1,
                    254,
                    "give each link its own id in 1..=254 (it fixes the link's mark and \
                     routing table)",
                )
                .map(|id| (id as u8, v.span())),
        };
        let interface = match &raw.interface {
            None => {
                self.dep_error(
                    table_span.clone(),
                    &key("interface"),
                    "missing interface; name the network device of this uplink, e.g. \
                     interface = \"eth1\"",
                );
                None
            }
            Some(v) => self.ifname(v, &key("interface")).map(|i| (i, v.span())),
        };
        let gateway = match &raw.gateway {
            None => Some(Gateway::Auto),
            Some(v) => self.gateway4(v, &key("gateway")),
        };
        let gateway6 = match &raw.gateway6 {
            None => Some(Gateway::Auto),
            Some(v) => self.gateway6(v, &key("gateway6")),
        };
        let priority = match &raw.priority {
            None => Some(1),
            Some(v) => self.priority(v, &key("priority")),
        };
        let weight = match &raw.weight {
            None => Some(1),
            Some(v) => self.weight(v, &key("weight")),
        };
        let npt6 = raw.npt6.as_ref().map(|v| self.npt6(v, &key("npt6")));
        if let (Some(m6), Some(_)) = (&raw.masquerade6, &raw.npt6) {
            if *m6.get_ref() {
                self.error(
                    m6.span(),
                    &key("masquerade6"),
                    "npt6 and masquerade6 both translate IPv6 leaving this link; keep one \
                     (npt6 keeps addresses stable, masquerade6 hides the LAN behind one)",
                );
            }
        }
        let check = raw
            .check
            .as_ref()
            .map(|c| self.check(c, &key("check"), gateway));

        facts.id = id.clone();
        facts.gateway = match (gateway, &raw.gateway, &interface) {
            (Some(g), Some(v), _) => Some((g, "gateway", v.span())),
            (Some(g), None, Some((_, span))) => Some((g, "interface", span.clone())),
            _ => None,
        };
        facts.interface = interface.clone();
        if self.errors.len() > errors_before {
            return facts;
        }
        // Every piece is known to be present here; the closure only unwraps them.
        facts.link = (move || {
            Some(Link {
                name: name.to_string(),
                id: id?.0,
                interface: interface?.0,
                gateway: gateway?,
                gateway6: gateway6?,
                priority: priority?,
                weight: weight?,
                masquerade: raw.masquerade.unwrap_or(true),
                masquerade6: raw.masquerade6.is_some_and(|v| *v.get_ref()),
                npt6: npt6.flatten(),
                mss_clamp: raw.mss_clamp.unwrap_or(false),
                flush_on_down: raw.flush_on_down.unwrap_or(true),
                flush_on_recover: raw.flush_on_recover.unwrap_or(false),
                enabled: raw.enabled.unwrap_or(true),
                check: check.flatten(),
            })
        })();
        facts
    }

    fn gateway4(&mut self, v: &Spanned<String>, key: &str) -> Option<Gateway<Ipv4Addr>> {
        let text = v.get_ref().as_str();
        let problem = match text {
            "auto" => return Some(Gateway::Auto),
            "none" => return Some(Gateway::None),
            _ => match text.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) if a.is_unspecified() || a.is_broadcast() || a.is_multicast() => {
                    format!("{a} cannot be a next hop; give the router's unicast address")
                }
                Ok(IpAddr::V4(a)) => return Some(Gateway::Static(a)),
                Ok(IpAddr::V6(_)) => format!("{text} is an IPv6 address; put it in gateway6"),
                Err(_) => format!(
                    "{text:?} is not an IPv4 address, \"auto\" (follow the interface's default \
                     route) or \"none\" (point-to-point device)"
                ),
            },
        };
        self.error(v.span(), key, problem);
        None
    }

    fn gateway6(&mut self, v: &Spanned<String>, key: &str) -> Option<Gateway<Ipv6Addr>> {
        let text = v.get_ref().as_str();
        let problem = match text {
            "auto" => return Some(Gateway::Auto),
            "none" => return Some(Gateway::None),
            _ => match text.parse::<IpAddr>() {
                Ok(IpAddr::V6(a)) if a.is_unspecified() || a.is_multicast() => {
                    format!("{a} cannot be a next hop; give the router's unicast address")
                }
                Ok(IpAddr::V6(a)) => return Some(Gateway::Static(a)),
                Ok(IpAddr::V4(_)) => format!("{text} is an IPv4 address; put it in gateway"),
                Err(_) => format!(
                    "{text:?} is not an IPv6 address, \"auto\" (from router advertisements) \
                     or \"none\" (no IPv6 on this link)"
                ),
            },
        };
        self.error(v.span(), key, problem);
        None
    }

    fn priority(&mut self, v: &Spanned<Int>, key: &str) -> Option<u32> {
        self.int(
            v,
            key,
            0,
            i64::from(u32::MAX),
            "priorities are 0..=4294967295, lower is preferred",
        )
        .map(|p| p as u32)
    }

    fn weight(&mut self, v: &Spanned<Int>, key: &str) -> Option<u32> {
        self.int(
            v,
            key,
            1,
            256,
            "weights are 1..=256 (a multipath route's weight range)",
        )
        .map(|w| w as u32)
    }

    fn npt6(&mut self, v: &Spanned<RawNpt6>, key: &str) -> Option<Npt6> {
        let raw = v.get_ref();
        let inside = match &raw.inside {
            None => {
                self.dep_error(
                    v.span(),
                    &format!("{key}.inside"),
                    "missing inside; give the LAN prefix to translate, e.g. \
                     npt6 = { inside = \"fd00:1::/48\", outside = \"auto\" }",
                );
                None
            }
            Some(s) => self.prefix6(s, &format!("{key}.inside")),
        };
        let outside = match &raw.outside {
            None => Some(None),
            Some(s) if s.get_ref() == "auto" => Some(None),
            Some(s) => self.prefix6(s, &format!("{key}.outside")).map(Some),
        };
        let (inside, outside) = (inside?, outside?);
        if let (Some(out), Some(s)) = (outside, &raw.outside) {
            // NPTv6 maps prefix onto prefix; different lengths cannot map one to one.
            if out.prefix_len() != inside.prefix_len() {
                self.error(
                    s.span(),
                    &format!("{key}.outside"),
                    format!(
                        "{out} is a /{} but inside {inside} is a /{}; the two prefixes must \
                         have the same length",
                        out.prefix_len(),
                        inside.prefix_len()
                    ),
                );
                return None;
            }
        }
        Some(Npt6 { inside, outside })
    }

    fn prefix6(&mut self, v: &Spanned<String>, key: &str) -> Option<Ipv6Net> {
        match self.prefix(v, key)? {
            IpNet::V6(net) => Some(net),
            IpNet::V4(_) => {
                self.error(
                    v.span(),
                    key,
                    format!("{} is IPv4; NPTv6 needs an IPv6 prefix", v.get_ref()),
                );
                None
            }
        }
    }

    // ----- [links.*.check] -------------------------------------------------------------

    fn check(
        &mut self,
        v: &Spanned<RawCheck>,
        key: &str,
        gateway: Option<Gateway<Ipv4Addr>>,
    ) -> Option<Check> {
        #[derive(Clone, Copy, PartialEq)]
        enum Method {
            Icmp,
            Tcp,
            Http,
            Https,
            Dns,
            Arp,
            None,
        }
        let raw = v.get_ref();
        let k = |s: &str| format!("{key}.{s}");
        let method = match &raw.method {
            None => Some(Method::Icmp),
            Some(m) => self.choice(
                m,
                &k("method"),
                &[
                    ("icmp", Method::Icmp),
                    ("tcp", Method::Tcp),
                    ("http", Method::Http),
                    ("https", Method::Https),
                    ("dns", Method::Dns),
                    ("arp", Method::Arp),
                    ("none", Method::None),
                ],
            ),
        };
        let method_name = raw.method.as_ref().map_or("icmp", |m| m.get_ref().as_str());

        // Keys a method needs, and keys it would silently ignore (a likely mistake).
        let probe = method.and_then(|method| {
            let needs_targets = matches!(
                method,
                Method::Icmp | Method::Tcp | Method::Http | Method::Https | Method::Dns
            );
            let targets = match (&raw.targets, needs_targets) {
                (None, true) => {
                    let example = match method {
                        Method::Http => "targets = [\"http://example.com/\"]",
                        Method::Https => "targets = [\"https://example.com/\"]",
                        _ => "targets = [\"198.18.0.1\", \"198.18.0.2\"]",
                    };
                    self.dep_error(
                        v.span(),
                        &k("targets"),
                        format!("method {method_name} needs targets to probe, e.g. {example}"),
                    );
                    None
                }
                (Some(t), true) if t.get_ref().is_empty() => {
                    self.dep_error(
                        t.span(),
                        &k("targets"),
                        format!("method {method_name} needs at least one target"),
                    );
                    None
                }
                (Some(t), false) => {
                    let why = if method == Method::Arp {
                        "method arp probes the link's gateway; remove targets"
                    } else {
                        "method none sends no probes; remove targets"
                    };
                    self.error(t.span(), &k("targets"), why);
                    None
                }
                (t, _) => t.as_ref().map(|t| t.get_ref().as_slice()),
            };
            let port = match (&raw.port, method) {
                (None, Method::Tcp) => {
                    self.dep_error(
                        v.span(),
                        &k("port"),
                        "method tcp needs the port to connect to, e.g. port = 443",
                    );
                    None
                }
                (Some(p), Method::Tcp) => self
                    .int(p, &k("port"), 1, 65535, "TCP ports are 1..=65535")
                    .map(|p| p as u16),
                (Some(p), _) => {
                    self.dep_error(
                        p.span(),
                        &k("port"),
                        format!("port is only used by method tcp, not {method_name}; remove it"),
                    );
                    None
                }
                (None, _) => None,
            };
            let query = match (&raw.query, method) {
                (None, Method::Dns) => {
                    self.dep_error(
                        v.span(),
                        &k("query"),
                        "method dns needs a name to resolve, e.g. query = \"example.com\"",
                    );
                    None
                }
                (Some(q), Method::Dns) => self.dns_name(q, &k("query")),
                (Some(q), _) => {
                    self.dep_error(
                        q.span(),
                        &k("query"),
                        format!("query is only used by method dns, not {method_name}; remove it"),
                    );
                    None
                }
                (None, _) => None,
            };
            let ca_file = match (&raw.ca_file, method) {
                (Some(f), Method::Https) => self.absolute_path(f, &k("ca_file")).map(Some),
                (Some(f), _) => {
                    self.dep_error(
                        f.span(),
                        &k("ca_file"),
                        format!(
                            "ca_file is only used by method https, not {method_name}; remove it"
                        ),
                    );
                    None
                }
                (None, _) => Some(None),
            };
            if method == Method::Arp && gateway == Some(Gateway::None) {
                self.dep_error(
                    raw.method.as_ref().map_or(v.span(), |m| m.span()),
                    &k("method"),
                    "method arp probes the IPv4 gateway, but this link has gateway = \"none\"; \
                     use icmp with targets instead",
                );
                return None;
            }
            if self.lenient {
                // The method may be a default standing in for a removed key; the
                // targets cannot be judged against it.
                return None;
            }
            Some(match method {
                Method::Icmp => Probe::Icmp {
                    targets: self.addresses(targets?)?,
                },
                Method::Tcp => {
                    let targets = self.addresses(targets?);
                    Probe::Tcp {
                        targets: targets?,
                        port: port?,
                    }
                }
                Method::Dns => {
                    let resolvers = self.addresses(targets?);
                    Probe::Dns {
                        resolvers: resolvers?,
                        query: query?,
                    }
                }
                Method::Http => Probe::Http {
                    urls: self.urls(targets?, false)?,
                },
                Method::Https => Probe::Https {
                    urls: self.urls(targets?, true)?,
                    ca_file: ca_file?,
                },
                Method::Arp => Probe::Arp,
                Method::None => Probe::None,
            })
        });

        let interval = match &raw.interval {
            None => Some(Duration::from_secs(1)),
            Some(d) => self.nonzero_duration(d, &k("interval")),
        };
        let timeout = match &raw.timeout {
            None => Some(Duration::from_secs(1)),
            Some(d) => self.nonzero_duration(d, &k("timeout")),
        };
        let count_hint = "a round is good when at least min_targets targets answered";
        let min_targets = match &raw.min_targets {
            None => Some(1),
            Some(n) => self.int(n, &k("min_targets"), 1, i64::from(u32::MAX), count_hint),
        };
        // min_targets above the number of targets: no round could ever be good.
        // Counted from the list as written, so a bad entry does not also trip this.
        let target_count = match method {
            Some(Method::Arp) => Some(1),
            Some(Method::None) | None => None,
            Some(_) => raw.targets.as_ref().map(|t| t.get_ref().len()),
        };
        if let (Some(min), Some(count), Some(n)) = (min_targets, target_count, &raw.min_targets) {
            if count > 0 && min > count as i64 {
                let what = if method == Some(Method::Arp) {
                    "arp probes one target, the gateway".to_string()
                } else {
                    format!("there are only {count} targets")
                };
                self.dep_error(
                    n.span(),
                    &k("min_targets"),
                    format!(
                        "min_targets {min} can never be met: {what}; use 1..={count} or add \
                         targets"
                    ),
                );
            }
        }
        let rounds = |cx: &mut Self, v: &Option<Spanned<Int>>, name: &str, default: u32| match v {
            None => Some(default),
            Some(n) => cx
                .int(
                    n,
                    &k(name),
                    1,
                    i64::from(u32::MAX),
                    "a count of rounds, at least 1",
                )
                .map(|n| n as u32),
        };
        let down_after = rounds(self, &raw.down_after, "down_after", 3);
        let up_after = rounds(self, &raw.up_after, "up_after", 5);
        let window = rounds(self, &raw.window, "window", 20);
        let max_loss = match &raw.max_loss {
            None => Some(0),
            Some(n) => self
                .int(
                    n,
                    &k("max_loss"),
                    0,
                    100,
                    "a percentage, 0..=100 (0 disables)",
                )
                .map(|n| n as u8),
        };
        let max_rtt = match &raw.max_rtt {
            None => Some(Duration::ZERO),
            Some(d) => self.duration(d, &k("max_rtt")),
        };

        Some(Check {
            probe: probe?,
            interval: interval?,
            timeout: timeout?,
            min_targets: min_targets? as u32,
            down_after: down_after?,
            up_after: up_after?,
            max_loss: max_loss?,
            max_rtt: max_rtt?,
            window: window?,
        })
    }

    /// Probe targets that are addresses (icmp, tcp, dns resolvers).
    fn addresses(&mut self, targets: &[Spanned<String>]) -> Option<Vec<IpAddr>> {
        let mut ok = Vec::new();
        let mut failed = false;
        for t in targets {
            let key = self.key_at(&t.span());
            match t.get_ref().parse::<IpAddr>() {
                Ok(a) if a.is_unspecified() || a.is_multicast() => {
                    self.error(
                        t.span(),
                        &key,
                        format!("{a} cannot be probed; give a unicast address"),
                    );
                    failed = true;
                }
                Ok(a) if ok.contains(&a) => {
                    // A duplicate would count twice towards min_targets.
                    self.error(
                        t.span(),
                        &key,
                        format!("{a} is listed twice; list each target once"),
                    );
                    failed = true;
                }
                Ok(a) => ok.push(a),
                Err(_) => {
                    self.error(
                        t.span(),
                        &key,
                        format!(
                            "{:?} is not an IP address (v4 or v6); give addresses, not names",
                            t.get_ref()
                        ),
                    );
                    failed = true;
                }
            }
        }
        (!failed).then_some(ok)
    }

    /// `http://` or `https://` URLs; `https_only` (method https): `https://` ones.
    fn urls(&mut self, targets: &[Spanned<String>], https_only: bool) -> Option<Vec<String>> {
        let mut ok: Vec<String> = Vec::new();
        let mut failed = false;
        for t in targets {
            let key = self.key_at(&t.span());
            let url = t.get_ref();
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
            if host.is_none_or(str::is_empty) || url.chars().any(char::is_whitespace) {
                self.error(
                    t.span(),
                    &key,
                    format!("{url:?} is not an http:// or https:// URL; write e.g. \"http://example.com/\""),
                );
                failed = true;
            } else if https_only && !url.starts_with("https://") {
                self.error(
                    t.span(),
                    &key,
                    format!("method https probes https:// URLs, not {url}; use method http for it"),
                );
                failed = true;
            } else if ok.contains(url) {
                self.error(
                    t.span(),
                    &key,
                    format!("{url} is listed twice; list each target once"),
                );
                failed = true;
            } else {
                ok.push(url.clone());
            }
        }
        (!failed).then_some(ok)
    }

    fn dns_name(&mut self, v: &Spanned<String>, key: &str) -> Option<String> {
        let name = v.get_ref();
        let trimmed = name.strip_suffix('.').unwrap_or(name);
        let valid = !trimmed.is_empty()
            && trimmed.len() <= 253
            && trimmed.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if !valid {
            self.error(
                v.span(),
                key,
                format!("{name:?} is not a DNS name; write e.g. \"example.com\""),
            );
            return None;
        }
        Some(name.clone())
    }

    // ----- checks across links -----------------------------------------------------

    fn cross_link_checks(&mut self, facts: &[LinkFacts], settings: Option<&Settings>) {
        // Duplicate ids: point at the later link, the one to change.
        let mut ids: HashMap<u8, &str> = HashMap::new();
        for f in facts {
            if let Some((id, span)) = &f.id {
                if let Some(first) = ids.get(id) {
                    let key = format!("links.{}.id", key_segment(&f.name));
                    self.error(
                        span.clone(),
                        &key,
                        format!(
                            "id {id} is already used by link {first}; give each link its own \
                             id in 1..=254"
                        ),
                    );
                } else {
                    ids.insert(*id, &f.name);
                }
            }
        }

        // Same interface and same gateway: the two links would be one route twice.
        let mut hops: HashMap<(&str, Gateway<Ipv4Addr>), &str> = HashMap::new();
        // Only clean links: a removed gateway key would compare as "auto".
        for f in facts.iter().filter(|f| f.clean) {
            let (Some((iface, _)), Some((gw, which, span))) = (&f.interface, &f.gateway) else {
                continue;
            };
            if let Some(first) = hops.get(&(iface.as_str(), *gw)) {
                let gw_text = match gw {
                    Gateway::Auto => "auto".to_string(),
                    Gateway::None => "none".to_string(),
                    Gateway::Static(a) => a.to_string(),
                };
                let key = format!("links.{}.{which}", key_segment(&f.name));
                self.error(
                    span.clone(),
                    &key,
                    format!(
                        "link {first} already uses interface {iface} with gateway {gw_text}; two \
                         links on one interface need different gateways"
                    ),
                );
            } else {
                hops.insert((iface.as_str(), *gw), &f.name);
            }
        }

        let Some(settings) = settings else {
            return;
        };

        // Link tables are table_base + id; none may be a kernel-reserved table.
        let base = settings.table_base;
        for f in facts {
            let Some((id, span)) = &f.id else { continue };
            let table = base + u32::from(*id);
            if let Some((_, name)) = RESERVED_TABLES.iter().find(|(t, _)| *t == table) {
                let key = format!("links.{}.id", key_segment(&f.name));
                let bad: Vec<String> = RESERVED_TABLES
                    .iter()
                    .filter_map(|(t, _)| t.checked_sub(base))
                    .filter(|i| (1..=254).contains(i))
                    .map(|i| i.to_string())
                    .collect();
                self.error(
                    span.clone(),
                    &key,
                    format!(
                        "with table_base {base} this link's table would be {table}, the kernel's \
                         {name} table; avoid ids {} or change table_base",
                        bad.join(", ")
                    ),
                );
            }
        }

        // An interface is a link or a LAN interface, never both.
        if settings.lan.is_some() {
            let by_iface: HashMap<&str, &str> = facts
                .iter()
                .filter_map(|f| {
                    f.interface
                        .as_ref()
                        .map(|(i, _)| (i.as_str(), f.name.as_str()))
                })
                .collect();
            for (name, span) in std::mem::take(&mut self.lan_entries) {
                if let Some(link) = by_iface.get(name.as_str()) {
                    let key = self.key_at(&span);
                    self.error(
                        span,
                        &key,
                        format!(
                            "{name} is the interface of link {link}; an interface is either a \
                             link or a LAN interface, remove it from lan"
                        ),
                    );
                }
            }
        }
    }

    // ----- [policies.*] --------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn policy(
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
                let mut seen: HashSet<String> = HashSet::new();
                for entry in list.get_ref() {
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
                    let priority =
                        priority.map(|p| self.priority(p, &format!("{entry_key}.priority")));
                    let weight = weight.map(|w| self.weight(w, &format!("{entry_key}.weight")));
                    // Overrides that are absent inherit the link's own values; a link
                    // that failed validation leaves the policy incomplete (and the
                    // config rejected), without a second error here.
                    match links.get(link.as_str()) {
                        Some(l) => members.push((link, priority, weight, l.priority, l.weight)),
                        None => complete = false,
                    }
                }
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
            .map(|(link, p, w, lp, lw)| {
                Some(PolicyMember {
                    link,
                    priority: p.unwrap_or(Some(lp))?,
                    weight: w.unwrap_or(Some(lw))?,
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

    // ----- [[rules]] -----------------------------------------------------------------

    fn rules(
        &mut self,
        value: Option<&Spanned<DeValue<'t>>>,
        link_names: &HashSet<&str>,
        policy_names: &HashSet<&str>,
    ) -> Option<Vec<Rule>> {
        let Some(value) = value else {
            return Some(Vec::new());
        };
        let DeValue::Array(items) = value.get_ref() else {
            self.error(
                value.span(),
                "rules",
                format!(
                    "rules is an array of tables, written [[rules]] (double brackets), not {}",
                    value.get_ref().type_str()
                ),
            );
            return None;
        };
        let mut rules = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut complete = true;
        for (i, item) in items.iter().enumerate() {
            let n = i + 1;
            let key = format!("rules[{n}]");
            let Some(raw) = self.section::<RawRule>(item) else {
                complete = false;
                continue;
            };
            // Duplicate names would make status, explain and counters ambiguous.
            let name = match &raw.name {
                None => Some(format!("rule{n}")),
                Some(v) => self.rule_name(v, &format!("{key}.name")),
            };
            if let Some(name) = &name {
                if let Some(first) = names.get(name) {
                    let span = raw.name.as_ref().map_or(item.span(), |v| v.span());
                    self.dep_error(
                        span,
                        &format!("{key}.name"),
                        format!(
                            "rule {n} is named {name:?} like rule {first}; give each rule its own name"
                        ),
                    );
                } else {
                    names.insert(name.clone(), n);
                }
            }
            match self.rule(&key, item.span(), raw, name, link_names, policy_names) {
                Some(rule) if !self.lenient => rules.push(rule),
                _ => complete = false,
            }
            self.lenient = false;
        }
        if complete {
            // Router-local rules share ip rule priorities where their order cannot
            // matter; a chain of overlapping rules with different targets needs one
            // priority per link of the chain, and there are only so many.
            let levels = crate::plan::rules::local_priorities(&rules);
            let max = crate::plan::rules::LOCAL_PRIORITIES;
            if let Some(i) = levels.iter().position(|l| l.is_some_and(|l| l >= max)) {
                self.error(
                    items[i].span(),
                    &format!("rules[{}]", i + 1),
                    format!(
                        "too many rules before this one could match the same router-local \
                         connection and send it elsewhere: it would need ip rule priority \
                         level {} of the {max} there are; merge rules that go to the same \
                         policy",
                        levels[i].unwrap_or(0) + 1
                    ),
                );
                return None;
            }
        }
        complete.then_some(rules)
    }

    fn rule_name(&mut self, v: &Spanned<String>, key: &str) -> Option<String> {
        let name = v.get_ref();
        // Names end up in nft comments and log lines; keep them printable and short.
        if name.is_empty()
            || name.chars().count() > 64
            || name
                .chars()
                .any(|c| c.is_control() || c == '"' || c == '\\')
        {
            self.error(
                v.span(),
                key,
                "a rule name is 1 to 64 printable characters without quotes or backslashes",
            );
            return None;
        }
        Some(name.clone())
    }

    fn rule(
        &mut self,
        key: &str,
        table_span: Range<usize>,
        raw: RawRule,
        name: Option<String>,
        link_names: &HashSet<&str>,
        policy_names: &HashSet<&str>,
    ) -> Option<Rule> {
        let errors_before = self.errors.len();
        let k = |s: &str| format!("{key}.{s}");
        let source = self.prefixes(raw.source.as_deref());
        let destination = self.prefixes(raw.destination.as_deref());
        let protocol = match &raw.protocol {
            None => Some(Protocol::Any),
            Some(p) => self.choice(
                p,
                &k("protocol"),
                &[
                    ("any", Protocol::Any),
                    ("tcp", Protocol::Tcp),
                    ("udp", Protocol::Udp),
                    ("icmp", Protocol::Icmp),
                    ("icmpv6", Protocol::Icmpv6),
                ],
            ),
        };
        let ports = raw.destination_port.as_ref().map(|list| {
            let mut ok = Vec::new();
            for p in list {
                let entry_key = self.key_at(&p.span());
                if let Some(range) = self.port_range(p, &entry_key) {
                    ok.push(range);
                }
            }
            (ok.len() == list.len()).then_some(ok)
        });
        if let (Some(protocol), Some(list)) = (protocol, &raw.destination_port) {
            if !list.is_empty() && !matches!(protocol, Protocol::Tcp | Protocol::Udp) {
                let span = raw.protocol.as_ref().map_or(list[0].span(), |p| p.span());
                let shown = raw
                    .protocol
                    .as_ref()
                    .map_or("any", |p| p.get_ref().as_str());
                self.dep_error(
                    span,
                    &k("protocol"),
                    format!(
                        "destination_port needs protocol = \"tcp\" or \"udp\", not {shown:?}; \
                         ports exist only for those"
                    ),
                );
            }
        }
        let input_interface = raw
            .input_interface
            .as_ref()
            .map(|v| self.ifname(v, &k("input_interface")));
        let user = raw.user.as_ref().map(|v| self.user(v, &k("user")));
        let cgroup = raw.cgroup.as_ref().map(|v| self.cgroup(v, &k("cgroup")));
        if let Some(iif) = &raw.input_interface {
            for (field, span) in [
                ("user", raw.user.as_ref().map(|u| u.span())),
                ("cgroup", raw.cgroup.as_ref().map(|c| c.span())),
            ] {
                if let Some(span) = span {
                    self.error(
                        span,
                        &k(field),
                        format!(
                            "{field} matches only traffic the router itself sends, input_interface \
                             = {:?} only traffic it receives, so this rule could never match; \
                             split it into two rules",
                            iif.get_ref()
                        ),
                    );
                }
            }
        }

        let target = match &raw.policy {
            None => {
                self.dep_error(
                    table_span.clone(),
                    &k("policy"),
                    "missing policy; say where matching connections go: a policy, a link, \
                     \"default\", \"main\", \"unreachable\" or \"blackhole\"",
                );
                None
            }
            Some(p) => self.rule_target(p, &k("policy"), link_names, policy_names),
        };
        let fallback = match &raw.fallback {
            None => Some(None),
            Some(f) => {
                let parsed = self.fallback(f, &k("fallback"));
                if let Some(t) = &target {
                    if !matches!(t, RuleTarget::Link(_)) {
                        self.dep_error(
                            f.span(),
                            &k("fallback"),
                            "a rule's fallback applies only when its policy is a single link; \
                             set fallback in the policy's [policies.<name>] table instead, or \
                             remove it",
                        );
                    }
                }
                parsed.map(Some)
            }
        };

        // A rule whose selectors share no address family can never match; that is
        // always a mistake (e.g. an IPv4 source with protocol icmpv6).
        if let (Some(src), Some(dst), Some(proto)) = (&source, &destination, protocol) {
            let by_proto = match proto {
                Protocol::Icmp => Families {
                    v4: true,
                    v6: false,
                },
                Protocol::Icmpv6 => Families {
                    v4: false,
                    v6: true,
                },
                _ => Families::BOTH,
            };
            let s = Families::of_prefixes(src);
            let d = Families::of_prefixes(dst);
            if s.and(d).and(by_proto)
                == (Families {
                    v4: false,
                    v6: false,
                })
            {
                self.dep_error(
                    table_span,
                    key,
                    format!(
                        "this rule can never match: source is {}, destination {}, protocol {}; \
                         split it by address family",
                        s.describe(),
                        d.describe(),
                        by_proto.describe()
                    ),
                );
            }
        }

        if self.errors.len() > errors_before {
            return None;
        }
        Some(Rule {
            name: name?,
            source: source?,
            destination: destination?,
            protocol: protocol?,
            destination_port: match ports {
                None => Vec::new(),
                Some(p) => p?,
            },
            input_interface: input_interface.flatten(),
            user: user.flatten(),
            cgroup: cgroup.flatten(),
            target: target?,
            fallback: fallback?,
            log: raw.log.unwrap_or(false),
        })
    }

    /// A rule's prefix list; absent means no selector (matches all). `None`: an entry
    /// was wrong.
    fn prefixes(&mut self, list: Option<&[Spanned<String>]>) -> Option<Vec<IpNet>> {
        let list = list.unwrap_or(&[]);
        let mut ok = Vec::new();
        for v in list {
            // The key (a walk of the whole document) is only worked out for an error:
            // a thousand rules would otherwise make reading the file quadratic.
            if let Some(net) = parse_prefix(v.get_ref()).filter(|n| n.trunc() == *n) {
                ok.push(net);
                continue;
            }
            let key = self.key_at(&v.span());
            if let Some(net) = self.prefix(v, &key) {
                ok.push(net);
            }
        }
        (ok.len() == list.len()).then_some(ok)
    }

    /// A prefix, or a bare address meaning just that host.
    fn prefix(&mut self, v: &Spanned<String>, key: &str) -> Option<IpNet> {
        let text = v.get_ref();
        match parse_prefix(text).ok_or(()) {
            Ok(net) if net.trunc() != net => {
                // nft and ip rule would silently match the whole network (or refuse);
                // make the intent explicit.
                self.error(
                    v.span(),
                    key,
                    format!(
                        "{text} has host bits set; write the network, {}",
                        net.trunc()
                    ),
                );
                None
            }
            Ok(net) => Some(net),
            Err(_) => {
                self.error(
                    v.span(),
                    key,
                    format!("{text:?} is not an IP prefix; write e.g. \"192.0.2.0/24\" or \"2001:db8::/32\""),
                );
                None
            }
        }
    }

    fn port_range(&mut self, v: &Spanned<IntOrString>, key: &str) -> Option<PortRange> {
        let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p > 0);
        let range = match v.get_ref() {
            IntOrString::Int(n) => u16::try_from(*n)
                .ok()
                .filter(|p| *p > 0)
                .map(|p| PortRange { first: p, last: p }),
            IntOrString::String(s) => match s.split_once('-') {
                None => port(s).map(|p| PortRange { first: p, last: p }),
                Some((a, b)) => match (port(a), port(b)) {
                    (Some(first), Some(last)) if first <= last => Some(PortRange { first, last }),
                    _ => None,
                },
            },
        };
        if range.is_none() {
            let shown = match v.get_ref() {
                IntOrString::Int(n) => n.to_string(),
                IntOrString::String(s) => format!("{s:?}"),
            };
            self.error(
                v.span(),
                key,
                format!(
                    "{shown} is not a port or port range; give a port 1..=65535 or a string \
                     \"first-last\" with first <= last, e.g. 5060 or \"10000-20000\""
                ),
            );
        }
        range
    }

    fn user(&mut self, v: &Spanned<IntOrString>, key: &str) -> Option<u32> {
        let name = match v.get_ref() {
            IntOrString::Int(n) => {
                // u32::MAX is (uid_t)-1, "no user"; the kernel never gives it to a socket.
                return match u32::try_from(*n).ok().filter(|u| *u != u32::MAX) {
                    Some(uid) => Some(uid),
                    None => {
                        self.error(
                            v.span(),
                            key,
                            format!("uid {n} is out of range 0..=4294967294"),
                        );
                        None
                    }
                };
            }
            IntOrString::String(s) => s,
        };
        if let Ok(uid) = name.parse::<u32>() {
            if uid != u32::MAX {
                return Some(uid);
            }
        }
        match self.users.uid(name) {
            Ok(Some(uid)) => Some(uid),
            Ok(None) => {
                self.error(
                    v.span(),
                    key,
                    format!(
                        "there is no user {name:?} in /etc/passwd; create it first or give a \
                         numeric uid"
                    ),
                );
                None
            }
            Err(e) => {
                self.error(
                    v.span(),
                    key,
                    format!("cannot resolve user {name:?}: {e}; give a numeric uid instead"),
                );
                None
            }
        }
    }

    fn cgroup(&mut self, v: &Spanned<String>, key: &str) -> Option<String> {
        // Stored relative to the cgroup v2 root, the way nft's `socket cgroupv2` wants
        // it; a leading slash is accepted because that is how /proc shows cgroups.
        let path = v.get_ref().trim_start_matches('/');
        let valid = !path.is_empty()
            && !path.ends_with('/')
            && path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
            && !path.chars().any(|c| c.is_control() || c == '"');
        if !valid {
            self.error(
                v.span(),
                key,
                format!(
                    "{:?} is not a cgroup v2 path; write it relative to /sys/fs/cgroup, e.g. \
                     \"system.slice/openvpn.service\"",
                    v.get_ref()
                ),
            );
            return None;
        }
        Some(path.to_string())
    }

    fn rule_target(
        &mut self,
        v: &Spanned<String>,
        key: &str,
        link_names: &HashSet<&str>,
        policy_names: &HashSet<&str>,
    ) -> Option<RuleTarget> {
        let name = v.get_ref().as_str();
        Some(match name {
            // The built-in policy; the planner derives it with Config::default_policy.
            DEFAULT_POLICY => RuleTarget::Policy(DEFAULT_POLICY.to_string()),
            "main" => RuleTarget::Main,
            "unreachable" => RuleTarget::Unreachable,
            "blackhole" => RuleTarget::Blackhole,
            _ if policy_names.contains(name) => RuleTarget::Policy(name.to_string()),
            _ if link_names.contains(name) => RuleTarget::Link(name.to_string()),
            _ => {
                self.error(
                    v.span(),
                    key,
                    format!(
                        "there is no policy or link named {name:?}; define [policies.{name}] or \
                         [links.{name}], or use \"default\", \"main\", \"unreachable\" or \
                         \"blackhole\""
                    ),
                );
                return None;
            }
        })
    }

    // ----- small value checks --------------------------------------------------------

    fn int(&mut self, v: &Spanned<Int>, key: &str, min: i64, max: i64, why: &str) -> Option<i64> {
        let n = v.get_ref().0;
        if n < min || n > max {
            self.error(
                v.span(),
                key,
                format!("{n} is out of range {min}..={max}: {why}"),
            );
            return None;
        }
        Some(n)
    }

    fn choice<T: Copy>(
        &mut self,
        v: &Spanned<String>,
        key: &str,
        choices: &[(&str, T)],
    ) -> Option<T> {
        if let Some((_, value)) = choices.iter().find(|(name, _)| name == v.get_ref()) {
            return Some(*value);
        }
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
        let (last, rest) = names.split_last().expect("choices are never empty");
        self.error(
            v.span(),
            key,
            format!(
                "{:?} is not one of {} or {last}",
                v.get_ref(),
                rest.join(", ")
            ),
        );
        None
    }

    fn fallback(&mut self, v: &Spanned<String>, key: &str) -> Option<Fallback> {
        self.choice(
            v,
            key,
            &[
                ("all", Fallback::All),
                ("unreachable", Fallback::Unreachable),
                ("blackhole", Fallback::Blackhole),
                ("main", Fallback::Main),
            ],
        )
    }

    fn duration(&mut self, v: &Spanned<DurationStr>, key: &str) -> Option<Duration> {
        match parse_duration(&v.get_ref().0) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(v.span(), key, e.to_string());
                None
            }
        }
    }

    fn nonzero_duration(&mut self, v: &Spanned<DurationStr>, key: &str) -> Option<Duration> {
        let d = self.duration(v, key)?;
        if d.is_zero() {
            self.error(v.span(), key, "must be more than zero, e.g. \"1s\"");
            return None;
        }
        Some(d)
    }

    /// A Linux interface name, as `dev_valid_name()` accepts it.
    fn ifname(&mut self, v: &Spanned<String>, key: &str) -> Option<String> {
        let name = v.get_ref();
        let valid = !name.is_empty()
            && name.len() <= 15
            && name != "."
            && name != ".."
            && !name
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
        if !valid {
            self.error(
                v.span(),
                key,
                format!(
                    "{name:?} is not a network interface name: 1 to 15 bytes without '/', ':' or \
                     spaces, e.g. \"eth1\""
                ),
            );
            return None;
        }
        Some(name.clone())
    }

    /// Link and policy names: they become routing-table names, nft counter names and
    /// rule targets, so they must not be mistaken for a number or a keyword.
    fn check_name(&mut self, kind: &str, name: &str, span: Range<usize>, key: &str) {
        let problem = if name.is_empty() || name.len() > MAX_NAME_LEN {
            format!(
                "a {kind} name is 1 to {MAX_NAME_LEN} characters; {name:?} has {}",
                name.chars().count()
            )
        } else if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        {
            format!("{name:?} may use only a-z, 0-9, _ and -; rename the {kind}")
        } else if name.chars().all(|c| c.is_ascii_digit()) {
            format!("{name:?} is all digits and would read as a table number; add a letter")
        } else if RESERVED_NAMES.contains(&name) {
            format!(
                "{name:?} is reserved ({}); choose another {kind} name",
                RESERVED_NAMES.join(", ")
            )
        } else {
            return;
        };
        self.error(span, key, problem);
    }
}

/// Serde's wording, in TOML terms.
fn serde_message(message: &str) -> String {
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
enum Seg {
    Key(String),
    Index(usize),
}

/// A key as written in a dotted path: bare when TOML allows it, quoted otherwise.
fn key_segment(key: &str) -> String {
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

fn render_path(path: &[Seg]) -> String {
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

fn span_contains(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset)
}

/// The path of the most deeply nested key or value at `offset` (table header spans do
/// not contain their children, so every branch is searched).
/// A prefix, or a bare address meaning just that host.
fn parse_prefix(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .ok()
}

fn path_at(root: &Spanned<DeValue<'_>>, offset: usize) -> Vec<Seg> {
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
fn syntax_key(root: &Spanned<DeValue<'_>>, path: &[Seg]) -> Vec<Seg> {
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
fn remove_at(v: &mut DeValue<'_>, path: &[Seg]) -> bool {
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
    use super::*;

    #[test]
    fn passwd_lookup() {
        let text =
            "# comment\nroot:x:0:0:root:/root:/bin/bash\nopenvpn:x:998:998::/:/usr/sbin/nologin\n";
        assert_eq!(passwd_uid(text, "root"), Some(0));
        assert_eq!(passwd_uid(text, "openvpn"), Some(998));
        assert_eq!(passwd_uid(text, "nobody"), None);
        assert_eq!(passwd_uid(text, "open"), None);
    }

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

    struct NoUsers;
    impl Users for NoUsers {
        fn uid(&self, name: &str) -> Result<Option<u32>, String> {
            Ok((name == "openvpn").then_some(998))
        }
    }

    #[test]
    fn user_names_resolve_through_the_database() {
        let text = "[links.a]\nid = 1\ninterface = \"wan1\"\n\
                    [[rules]]\nuser = \"openvpn\"\npolicy = \"a\"\n\
                    [[rules]]\nuser = \"ghost\"\npolicy = \"a\"\n";
        let errs = parse_with(text, Path::new("t.toml"), &NoUsers).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs}");
        assert_eq!(errs.0[0].key, "rules[2].user");
        assert_eq!(errs.0[0].line, 8);
    }
}
