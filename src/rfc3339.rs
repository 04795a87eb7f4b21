//! RFC 3339 times: strict parsing for command-line and file inputs, and UTC
//! formatting for answers, listings and logs. Proleptic Gregorian calendar
//! arithmetic after H. Hinnant, so no table and no time-zone database.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const RFC3339_EXAMPLE: &str = "expected an RFC 3339 time such as 2025-01-01T00:00:00Z";

/// Parses an RFC 3339 `date-time` strictly: every field present with its
/// exact digit count, each in range for its month and year, and an explicit
/// offset. A leap second cannot be represented in `SystemTime`, so `:60` is
/// refused rather than silently moved.
pub fn parse(s: &str) -> Result<SystemTime, String> {
    let b = s.as_bytes();
    let bad = |what: &str| format!("{RFC3339_EXAMPLE}: {what}");
    let num = |range: std::ops::Range<usize>, what: &str| -> Result<i64, String> {
        match b.get(range) {
            Some(d) if d.iter().all(u8::is_ascii_digit) => {
                Ok(d.iter().fold(0, |n, c| n * 10 + i64::from(c - b'0')))
            }
            _ => Err(bad(what)),
        }
    };
    let sep = |at: usize, allowed: &[u8], what: &str| -> Result<(), String> {
        match b.get(at) {
            Some(c) if allowed.contains(c) => Ok(()),
            _ => Err(bad(what)),
        }
    };
    let year = num(0..4, "year must be 4 digits")?;
    sep(4, b"-", "'-' after the year")?;
    let month = num(5..7, "month must be 2 digits")?;
    sep(7, b"-", "'-' after the month")?;
    let day = num(8..10, "day must be 2 digits")?;
    // RFC 3339 §5.6: "T" and "Z" may be lowercase.
    sep(10, b"Tt", "'T' between date and time")?;
    let hour = num(11..13, "hour must be 2 digits")?;
    sep(13, b":", "':' after the hour")?;
    let minute = num(14..16, "minute must be 2 digits")?;
    sep(16, b":", "':' after the minute")?;
    let second = num(17..19, "second must be 2 digits")?;
    if !(1..=12).contains(&month) {
        return Err(bad("month out of range"));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(bad("day out of range for the month"));
    }
    if hour > 23 || minute > 59 {
        return Err(bad("hour or minute out of range"));
    }
    if second == 60 {
        return Err(bad("leap seconds are not supported"));
    }
    if second > 59 {
        return Err(bad("second out of range"));
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad("digits after '.'"));
        }
        // Beyond nanoseconds the digits cannot be represented; they are dropped.
        for (k, c) in b[i..i + digits].iter().enumerate().take(9) {
            nanos += u32::from(c - b'0') * 10u32.pow(8 - k as u32);
        }
        i += digits;
    }
    let offset_minutes = match b.get(i) {
        Some(b'Z' | b'z') if b.len() == i + 1 => 0,
        Some(sign @ (b'+' | b'-')) if b.len() == i + 6 => {
            let oh = num(i + 1..i + 3, "offset hour must be 2 digits")?;
            sep(i + 3, b":", "':' in the offset")?;
            let om = num(i + 4..i + 6, "offset minute must be 2 digits")?;
            if oh > 23 || om > 59 {
                return Err(bad("offset out of range"));
            }
            if *sign == b'-' {
                -(oh * 60 + om)
            } else {
                oh * 60 + om
            }
        }
        _ => return Err(bad("an offset (Z or +hh:mm) at the end")),
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_minutes * 60;
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs.unsigned_abs(), nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))
            .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
    };
    t.ok_or_else(|| bad("out of range for this system"))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm: eras of 400 years make it exact without tables).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// RFC 3339 in UTC, with as many fraction digits as the time needs.
pub fn format(t: SystemTime) -> String {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            let s = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (s, 0),
                n => (s - 1, 1_000_000_000 - n),
            }
        }
    };
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let mut out = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if nanos != 0 {
        out += format!(".{nanos:09}").trim_end_matches('0');
    }
    out.push('Z');
    out
}

/// [`format()`] of a unix-milliseconds instant.
pub fn format_ms(ms: u64) -> String {
    format(UNIX_EPOCH + Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(format_ms(1_795_305_600_000), "2026-11-22T00:00:00Z");
    }

    #[test]
    fn parse_and_format_round_trip() {
        for text in [
            "2000-02-29T00:00:00.123Z",
            "1969-12-31T23:59:59.5Z",
            "2026-11-22T08:45:49Z",
        ] {
            let t = parse(text).expect("parses");
            assert_eq!(format(t), text);
        }
        assert_eq!(
            parse("2026-11-22T09:45:49+01:00").ok(),
            parse("2026-11-22T08:45:49Z").ok()
        );
        for bad in [
            "2026-02-29T00:00:00Z",
            "2026-11-22 08:45:49Z",
            "2026-11-22T08:45:60Z",
            "2026-11-22T08:45:49",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
