//! The config file as written: serde structs that mirror the TOML one to one.
//!
//! Only the *shape* is checked here (known keys, TOML types); every value stays as
//! written, with its position, so `validate.rs` can check meaning and point at the
//! offending value. Nearly everything is optional at this level, even keys the file
//! must have (`id`, `interface`, `policy`): a missing key is reported by `validate.rs`
//! with a message that says what to write, rather than serde's bare "missing field".
//!
//! Integers are read as `i64` (TOML's own integer type) through [`Int`], so an id of
//! 300 or a weight of -1 reaches validation intact and gets a range message, not a
//! serde overflow message.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_spanned::Spanned;

/// `[settings]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [settings] table")]
pub struct RawSettings {
    pub mark_mask: Option<Spanned<Int>>,
    pub table_base: Option<Spanned<Int>>,
    pub rule_priority: Option<Spanned<Int>>,
    pub nft_table: Option<Spanned<String>>,
    pub table_names: Option<bool>,
    pub lan: Option<Vec<Spanned<String>>>,
    pub local_traffic: Option<bool>,
    pub fallback: Option<Spanned<String>>,
    pub on_exit: Option<Spanned<String>>,
    pub socket: Option<Spanned<String>>,
    pub metrics: Option<Spanned<String>>,
    pub hooks_dir: Option<Spanned<String>>,
    pub hook_timeout: Option<Spanned<DurationStr>>,
    pub log_group: Option<Spanned<Int>>,
}

/// `[links.<name>]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [links.<name>] table")]
pub struct RawLink {
    pub id: Option<Spanned<Int>>,
    pub interface: Option<Spanned<String>>,
    pub gateway: Option<Spanned<String>>,
    pub gateway6: Option<Spanned<String>>,
    pub priority: Option<Spanned<Int>>,
    pub weight: Option<Spanned<Int>>,
    pub masquerade: Option<bool>,
    pub snat_to: Option<Spanned<String>>,
    pub masquerade6: Option<Spanned<bool>>,
    pub npt6: Option<Spanned<RawNpt6>>,
    pub mss_clamp: Option<bool>,
    pub flush_on_down: Option<bool>,
    pub flush_on_recover: Option<bool>,
    pub enabled: Option<bool>,
    pub check: Option<Spanned<RawCheck>>,
}

/// `npt6 = { inside = "...", outside = "..." }`
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table such as { inside = \"fd00:1::/48\", outside = \"auto\" }"
)]
pub struct RawNpt6 {
    pub inside: Option<Spanned<String>>,
    pub outside: Option<Spanned<String>>,
}

/// `[links.<name>.check]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [links.<name>.check] table")]
pub struct RawCheck {
    pub method: Option<Spanned<String>>,
    pub targets: Option<Spanned<Vec<Spanned<String>>>>,
    pub port: Option<Spanned<Int>>,
    pub query: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub interval: Option<Spanned<DurationStr>>,
    pub timeout: Option<Spanned<DurationStr>>,
    pub min_targets: Option<Spanned<Int>>,
    pub down_after: Option<Spanned<Int>>,
    pub up_after: Option<Spanned<Int>>,
    pub max_loss: Option<Spanned<Int>>,
    pub max_rtt: Option<Spanned<DurationStr>>,
    pub window: Option<Spanned<Int>>,
}

/// `[policies.<name>]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [policies.<name>] table")]
pub struct RawPolicy {
    pub links: Option<Spanned<Vec<Spanned<RawMember>>>>,
    pub sticky: Option<Spanned<String>>,
    pub fallback: Option<Spanned<String>>,
}

/// One entry of a policy's `links`: a link name, or a table that overrides the
/// link's priority and weight.
#[derive(Debug)]
pub enum RawMember {
    Name(String),
    Table(RawMemberTable),
}

/// `{ link = "isp1", priority = 2, weight = 1 }`
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table such as { link = \"isp1\", priority = 2, weight = 1 }"
)]
pub struct RawMemberTable {
    pub link: Option<Spanned<String>>,
    pub priority: Option<Spanned<Int>>,
    pub weight: Option<Spanned<Int>>,
}

/// `[[rules]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[rules]] table")]
pub struct RawRule {
    pub name: Option<Spanned<String>>,
    pub source: Option<Vec<Spanned<String>>>,
    pub destination: Option<Vec<Spanned<String>>>,
    pub protocol: Option<Spanned<String>>,
    pub destination_port: Option<Vec<Spanned<IntOrString>>>,
    pub input_interface: Option<Spanned<String>>,
    pub user: Option<Spanned<IntOrString>>,
    pub cgroup: Option<Spanned<String>>,
    pub policy: Option<Spanned<String>>,
    pub fallback: Option<Spanned<String>>,
    pub log: Option<Spanned<bool>>,
}

/// A TOML integer, kept as written (range checks happen in validation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int(pub i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Int, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                i64::try_from(v)
                    .map(Int)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration string such as `"2s"`; parsed in validation so the error can say which
/// key it was. Its own type only so that `interval = 1` is told what to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationStr(pub String);

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<DurationStr, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationStr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string with a unit, such as \"1s\" or \"200ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationStr, E> {
                Ok(DurationStr(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A value that may be an integer or a string: a port (`5060` or `"10000-20000"`), a
/// user (`0` or `"openvpn"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IntOrString, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
                i64::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::String(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawMember {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawMember, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawMember;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a link name or a table such as { link = \"isp1\", weight = 2 }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawMember, E> {
                Ok(RawMember::Name(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawMember, A::Error> {
                // Hand the table to the derived struct, so unknown keys and key types
                // are checked (and positioned) the same way as everywhere else.
                RawMemberTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawMember::Table)
            }
        }
        d.deserialize_any(V)
    }
}
