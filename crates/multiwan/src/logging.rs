//! Logging: one line per decision, through `tracing`.
//!
//! Lines look as they always did (`multiwan: link isp1: up -> down (…)`), so scripts and
//! tests that read them keep working. Under systemd, when `JOURNAL_STREAM` names the
//! very file stderr is (systemd sets it for a service whose output goes to the journal),
//! each line starts with its syslog priority (`<4>multiwan: …`), which journald turns
//! into the entry's priority: `journalctl -p warning -u multiwan` then shows link
//! failures and refused applies only. This is the stream protocol of sd-daemon(3); it
//! needs no socket of its own and works wherever the journal reads stderr. Elsewhere the
//! lines are plain.
//!
//! Verbosity: `--log-level LEVEL` or `MULTIWAN_LOG=LEVEL` (`error`, `warn`, `info`, the
//! default, `debug`, `trace`, or any `tracing` filter directive such as
//! `multiwan::probe=debug`). `debug` adds probe detail (every round's outcome per target).

use std::fmt;
use std::os::unix::fs::MetadataExt;

use tracing::{Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The environment variable that sets the verbosity when `--log-level` is not given.
pub const ENV: &str = "MULTIWAN_LOG";

/// A log level or filter that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("bad log level {given:?}: use error, warn, info, debug or trace, or tracing filter directives such as multiwan::probe=debug")]
pub struct BadLevel {
    given: String,
    #[source]
    source: Option<tracing_subscriber::filter::ParseError>,
}

/// Installs the global subscriber: `level` (from `--log-level`), else `MULTIWAN_LOG`,
/// else `info`. A second call does nothing (tests run several commands in one process).
pub fn init(level: Option<&str>) -> Result<(), BadLevel> {
    let given = level
        .map(str::to_string)
        .or_else(|| std::env::var(ENV).ok().filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| "info".to_string());
    let filter = filter(&given)?;
    let format = LineFormat {
        journal: stderr_is_journal(),
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .event_format(format)
        .try_init();
    Ok(())
}

/// A level name, or `tracing` filter directives (which contain `=` or `,`). A bare word
/// that is no level is refused: `EnvFilter` would take it as a target name and log
/// nothing at all.
fn filter(given: &str) -> Result<EnvFilter, BadLevel> {
    let bad = |source: Option<tracing_subscriber::filter::ParseError>| BadLevel {
        given: given.to_string(),
        source,
    };
    let word = given.trim();
    if !word.contains(['=', ',']) {
        return word
            .parse::<tracing_subscriber::filter::LevelFilter>()
            .map(|l| EnvFilter::new(l.to_string()))
            .map_err(|_| BadLevel {
                given: given.to_string(),
                source: None,
            });
    }
    EnvFilter::try_new(word).map_err(|e| bad(Some(e)))
}

/// Whether `JOURNAL_STREAM` (`<device>:<inode>`) names what file descriptor 2 is.
fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = parse_journal_stream(&value) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// The syslog priority journald gives a line that starts with `<N>`.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// `[<N>]multiwan: <message> [key=value …]`, one line per event.
struct LineFormat {
    journal: bool,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        if self.journal {
            write!(writer, "<{}>", priority(*event.metadata().level()))?;
        }
        writer.write_str("multiwan: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_parses() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream(" 8:1\n"), Some((8, 1)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("x:1"), None);
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::INFO), 6);
        assert_eq!(priority(Level::DEBUG), 7);
    }

    #[test]
    fn levels_and_directives() {
        for ok in [
            "info",
            "DEBUG",
            " warn ",
            "multiwan::probe=debug",
            "info,multiwan=trace",
        ] {
            assert!(filter(ok).is_ok(), "{ok}");
        }
        for bad in ["verbose", "loud", "multiwan=loud"] {
            assert!(filter(bad).is_err(), "{bad}");
        }
    }
}
