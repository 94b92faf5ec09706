//! Time helpers: everything is microseconds since the Unix epoch.

use crate::types::PluginError;

/// The host's wall clock, in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    crate::host::now_us()
}

/// Milliseconds to microseconds.
pub fn ms_to_us(ms: i64) -> i64 {
    ms.saturating_mul(1000)
}

/// Parse an RFC 3339 / ISO 8601 UTC timestamp (`2023-09-25T09:04:31.742648Z`, an offset such
/// as `+02:00` is honoured) into microseconds since the Unix epoch.
pub fn parse_rfc3339_us(s: &str) -> Result<i64, PluginError> {
    let bad = || PluginError::bad_input(format!("`{s}` is not an RFC 3339 timestamp"));
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64, PluginError> {
        s.get(range).and_then(|d| d.parse().ok()).ok_or_else(bad)
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let mut rest = &s[19..];
    let mut micros = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let kept = &frac[..digits.min(6)];
        micros = kept.parse::<i64>().map_err(|_| bad())? * 10i64.pow(6 - kept.len() as u32);
        rest = &frac[digits..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let h: i64 = rest[1..3].parse().map_err(|_| bad())?;
            let m: i64 = rest[4..6].parse().map_err(|_| bad())?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Ok(seconds * 1_000_000 + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_venue_timestamps() {
        assert_eq!(parse_rfc3339_us("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_rfc3339_us("2023-09-25T09:04:31.742648Z").unwrap(),
            1_695_632_671_742_648
        );
        assert_eq!(
            parse_rfc3339_us("2022-12-31T19:43:02.136Z").unwrap(),
            1_672_515_782_136_000
        );
        assert_eq!(
            parse_rfc3339_us("2022-12-31T21:43:02.136+02:00").unwrap(),
            1_672_515_782_136_000
        );
        assert!(parse_rfc3339_us("yesterday").is_err());
        assert!(parse_rfc3339_us("2023-13-01T00:00:00Z").is_err());
    }
}
