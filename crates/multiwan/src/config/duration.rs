//! Durations as the config file writes them: `"200ms"`, `"2s"`, `"5m"`, `"1h"`.
//!
//! A unit is always required (SPEC §1): a bare `"5"` is rejected rather than guessed,
//! because seconds and milliseconds are both plausible for probe timers. Components may
//! be chained (`"1m30s"`) and may carry a decimal fraction (`"1.5s"`), which is what
//! operators coming from Go or systemd tools tend to write.

use std::time::Duration;

/// Why a duration string was refused. The messages say how to write it instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("the duration is empty; write a number with a unit, e.g. \"1s\" (units: ms, s, m, h)")]
    Empty,
    #[error("\"{0}\" has no unit; write e.g. \"{0}s\" or \"{0}ms\" (units: ms, s, m, h)")]
    MissingUnit(String),
    #[error("unknown unit \"{unit}\" in \"{text}\"; use ms, s, m or h")]
    UnknownUnit { unit: String, text: String },
    #[error("\"{0}\" is not a duration; write a number with a unit, e.g. \"200ms\", \"2s\", \"5m\", \"1h\"")]
    Malformed(String),
    #[error("\"{0}\" is too long a duration")]
    Overflow(String),
}

/// Nanoseconds per unit, longest unit names first so "ms" is not read as "m" + "s".
const UNITS: &[(&str, u128)] = &[
    ("ms", 1_000_000),
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
];

/// Parses a duration with a unit. Leading and trailing blanks are not accepted: the
/// value comes from a TOML string, where they can only be a typo.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let malformed = || DurationError::Malformed(text.to_string());
    let overflow = || DurationError::Overflow(text.to_string());

    let mut rest = text;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        // The number: digits, optionally a '.' and more digits.
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(num_len);
        if number.is_empty() {
            return Err(malformed());
        }
        let (int_part, frac_part) = match number.split_once('.') {
            Some((i, f)) => (i, f),
            None => (number, ""),
        };
        if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
            return Err(malformed());
        }

        // The unit: letters up to the next digit.
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        if unit.is_empty() {
            // Only the whole string being a bare number gets the friendlier hint.
            return Err(if next.is_empty() && rest.len() == text.len() {
                DurationError::MissingUnit(text.to_string())
            } else {
                malformed()
            });
        }
        let Some(&(_, per_unit)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(DurationError::UnknownUnit {
                unit: unit.to_string(),
                text: text.to_string(),
            });
        };

        let int_value: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| overflow())?
        };
        let mut nanos = int_value.checked_mul(per_unit).ok_or_else(overflow)?;
        // The fraction, digit by digit: exact for every unit, and digits beyond
        // nanosecond precision simply stop contributing.
        let mut scale = per_unit;
        for digit in frac_part.bytes() {
            scale /= 10;
            nanos += u128::from(digit - b'0') * scale;
        }
        total = total.checked_add(nanos).ok_or_else(overflow)?;
        rest = next;
    }

    let nanos = u64::try_from(total).map_err(|_| overflow())?;
    Ok(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn fractions_and_chains() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0.25ms"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("1h2m3s4ms"),
            Ok(Duration::from_millis(3_723_004))
        );
    }

    #[test]
    fn missing_unit() {
        assert_eq!(
            parse_duration("5"),
            Err(DurationError::MissingUnit("5".into()))
        );
        assert!(parse_duration("0").is_err());
        assert!(matches!(
            parse_duration("1m30"),
            Err(DurationError::Malformed(_))
        ));
    }

    #[test]
    fn garbage() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration("5sec"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("1d"),
            Err(DurationError::UnknownUnit { .. })
        ));
        for bad in [
            "s", "ms5", "1..5s", ".s", " 1s", "1s ", "-1s", "1 s", "1e3s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn overflow() {
        assert!(matches!(
            parse_duration("99999999999999999999999999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse_duration("10000000h"),
            Err(DurationError::Overflow(_))
        ));
    }
}
