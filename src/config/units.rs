//! Human-friendly units in `proxy.toml`: durations (`"50ms"`, `"15s"`, `"5m"`) and sizes (`"8KiB"`).

use serde::de::{self, Deserializer, Visitor};
use std::fmt;
use std::time::Duration;

/// A duration written as a number and a unit: `ms`, `s`, `m` or `h` (e.g. `"250ms"`, `"15s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

/// A size in bytes written as a number and an optional unit: `B`, `KiB`, `MiB`, `GiB` (e.g. `"8KiB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

/// Longest duration accepted; far larger values would overflow deadline arithmetic.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

const DURATION_HELP: &str = "a duration such as \"250ms\", \"15s\", \"5m\" or \"1h\"";
const SIZE_HELP: &str =
    "a size such as \"512B\", \"8KiB\", \"1MiB\" or \"1GiB\" (or a plain number of bytes)";

/// Splits `"15s"` into `(15, "s")`.
fn split_number(s: &str) -> Option<(u64, &str)> {
    let s = s.trim();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    let n = s[..end].parse().ok()?;
    Some((n, s[end..].trim()))
}

/// Parses a duration string; `None` when it is not one.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (n, unit) = split_number(s)?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    Some(d)
}

/// Parses a size string; `None` when it is not one.
pub fn parse_size(s: &str) -> Option<u64> {
    let (n, unit) = split_number(s)?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl<'de> serde::Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DURATION_HELP)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                match parse_duration(s) {
                    Some(d) if d <= MAX_DURATION => Ok(Dur(d)),
                    Some(_) => Err(E::custom(format!("duration {s:?} is too long: at most 365 days"))),
                    None => Err(E::custom(format!(
                        "invalid duration {s:?}: expected {DURATION_HELP}"
                    ))),
                }
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> serde::Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SIZE_HELP)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n)
                    .map(Size)
                    .map_err(|_| E::custom(format!("invalid size {n}: expected {SIZE_HELP}")))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Size, E> {
                parse_size(s)
                    .map(Size)
                    .ok_or_else(|| E::custom(format!("invalid size {s:?}: expected {SIZE_HELP}")))
            }
        }
        d.deserialize_any(V)
    }
}

impl Size {
    /// The size as a `usize` (saturating on 32-bit targets).
    pub fn bytes(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50ms"), Some(Duration::from_millis(50)));
        assert_eq!(parse_duration("15s"), Some(Duration::from_secs(15)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        for bad in ["", "s", "15", "1.5s", "-1s", "15 sec", "99999999999999999999s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8KiB"), Some(8192));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("100B"), Some(100));
        for bad in ["", "KiB", "8KB", "8kib", "1.5MiB", "-1"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}
