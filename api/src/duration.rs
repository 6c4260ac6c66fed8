//! Durations, one syntax for every Hawser binary's flags and environment
//! variables (`--drain-grace 5s`, `HAWSER_CERT_LIFETIME=24h`) and for the
//! echo backend's `?delay=`: Go's `time.ParseDuration` syntax (as upstream
//! echo and Gateway API write durations), a sequence of decimal numbers each
//! with a unit, `1s`, `500ms`, `1m30s`, `1h30m`, `1.5s`, `250us`; a bare `0`
//! is zero. Negative durations are refused.

use std::time::Duration;

/// Why a duration did not parse. The message names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The input is empty.
    #[error("empty duration (expected e.g. 500ms, 1s, 1m30s)")]
    Empty,
    /// A number is missing or malformed.
    #[error("invalid duration {0:?}: expected a number before each unit (e.g. 500ms, 1s, 1m30s)")]
    Number(String),
    /// A unit is missing or unknown.
    #[error("invalid duration {0:?}: unknown or missing unit (use ns, us, ms, s, m or h)")]
    Unit(String),
    /// The total does not fit a `Duration`.
    #[error("invalid duration {0:?}: too large")]
    Overflow(String),
}

/// Parses a Go-style duration (`1s`, `500ms`, `1m30s`, `1.5s`, `0`).
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let mut rest = s;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(num_len);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(DurationError::Number(input.to_owned()));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(DurationError::Unit(input.to_owned())),
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole
                .parse()
                .map_err(|_| DurationError::Overflow(input.to_owned()))?
        };
        let mut nanos = whole
            .checked_mul(unit_nanos)
            .ok_or_else(|| DurationError::Overflow(input.to_owned()))?;
        // Fractional digits beyond nanosecond precision are dropped, as Go does.
        let mut scale = unit_nanos;
        for digit in frac.bytes().take(30) {
            scale /= 10;
            if scale == 0 {
                break;
            }
            nanos += u128::from(digit - b'0') * scale;
        }
        total_nanos = total_nanos
            .checked_add(nanos)
            .ok_or_else(|| DurationError::Overflow(input.to_owned()))?;
        rest = next;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000)
        .map_err(|_| DurationError::Overflow(input.to_owned()))?;
    // The remainder is below 10^9, so it fits a u32.
    let sub = (total_nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, sub))
}

/// Formats a duration the short way (`1.5s`, `250ms`, `0s`), for messages.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        "0s".to_owned()
    } else if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) && d.as_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_bad_input_naming_it() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("5"), Err(DurationError::Unit("5".into())));
        assert_eq!(
            parse_duration("fast"),
            Err(DurationError::Number("fast".into()))
        );
        assert_eq!(
            parse_duration("-1s"),
            Err(DurationError::Number("-1s".into()))
        );
        assert_eq!(
            parse_duration("1.2.3s"),
            Err(DurationError::Number("1.2.3s".into()))
        );
        assert_eq!(
            parse_duration("3days"),
            Err(DurationError::Unit("3days".into()))
        );
        assert!(matches!(
            parse_duration("99999999999999999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
        let msg = parse_duration("5").expect_err("no unit").to_string();
        assert!(msg.contains("\"5\""), "{msg}");
    }

    #[test]
    fn formats_short() {
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn flag_durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(
            parse_duration("87600h"),
            Ok(Duration::from_secs(87600 * 3600))
        );
        assert_eq!(parse_duration("10"), Err(DurationError::Unit("10".into())));
        assert_eq!(parse_duration("3d"), Err(DurationError::Unit("3d".into())));
        assert_eq!(parse_duration("h"), Err(DurationError::Number("h".into())));
    }
}
