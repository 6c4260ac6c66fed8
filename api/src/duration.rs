//! Durations on Hawser's command lines and in their environment variables
//! (`--drain-grace 5s`, `HAWSER_CERT_LIFETIME=24h`): one syntax for every
//! binary.

use std::time::Duration;

/// Parses durations such as `500ms`, `90s`, `5m`, `24h`, `1h30m`; the
/// message of an error names the input.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    let too_large = || format!("{s:?}: too large");
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{s:?}: expected a number before the unit"));
        }
        let n: u64 = rest[..digits].parse().map_err(|e| format!("{s:?}: {e}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = |per: u64| {
            n.checked_mul(per)
                .map(Duration::from_secs)
                .ok_or_else(too_large)
        };
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => seconds(60)?,
            "h" => seconds(3600)?,
            "" => return Err(format!("{s:?}: missing unit (ms, s, m or h)")),
            other => return Err(format!("{s:?}: unknown unit {other:?} (use ms, s, m or h)")),
        };
        total = total.checked_add(part).ok_or_else(too_large)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(parse_duration("3d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("").is_err());
        assert!(
            parse_duration("99999999999999999h")
                .unwrap_err()
                .contains("too large")
        );
    }
}
