//! Timestamps as text: RFC 3339 in UTC, for lock files, reports and the `keel` tool. (The
//! civil-from-days algorithm of H. Hinnant, so no calendar crate is needed.)

use std::time::{SystemTime, UNIX_EPOCH};

/// `time` as `YYYY-MM-DDThh:mm:ssZ`, in UTC, to the second.
pub fn rfc3339(time: SystemTime) -> String {
    let seconds = time.duration_since(UNIX_EPOCH).map(|since| since.as_secs()).unwrap_or(0);
    format!("{}Z", civil(seconds))
}

/// A journal timestamp (nanoseconds since the Unix epoch) as
/// `YYYY-MM-DDThh:mm:ss.nnnnnnnnnZ`, in UTC, to the nanosecond.
pub fn rfc3339_nanos(timestamp_ns: u64) -> String {
    let (seconds, nanos) = (timestamp_ns / 1_000_000_000, timestamp_ns % 1_000_000_000);
    format!("{}.{nanos:09}Z", civil(seconds))
}

/// Parses an RFC 3339 time (`2026-11-23T15:00:00Z`, with an optional fraction of a second
/// down to nanoseconds and a `Z` or `±hh:mm` offset) into nanoseconds since the Unix epoch.
/// Times before the epoch, or past what a `u64` of nanoseconds holds (the year 2554), are
/// refused.
pub fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let refuse = |why: &str| format!("{text:?} is not an RFC 3339 time ({why})");
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let digits = text.get(range).ok_or_else(|| refuse("too short"))?;
        if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(refuse("a field is not a number"));
        }
        digits.parse::<i64>().map_err(|_| refuse("a field is out of range"))
    };
    if bytes.len() < 20
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b't' | b' ')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return Err(refuse("expected YYYY-MM-DDThh:mm:ss"));
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(refuse("no such month")),
    };
    if !(1..=days_in_month).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return Err(refuse("no such day or time"));
    }
    let mut rest = &text[19..];
    let mut nanos = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return Err(refuse("a fraction of a second has 1 to 9 digits"));
        }
        nanos = fraction[..digits].parse::<i64>().map_err(|_| refuse("bad fraction"))?
            * 10i64.pow(9 - digits as u32);
        rest = &fraction[digits..];
    }
    let offset_seconds = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let hours = rest[1..3].parse::<i64>().map_err(|_| refuse("bad offset"))?;
            let minutes = rest[4..6].parse::<i64>().map_err(|_| refuse("bad offset"))?;
            sign * (hours * 3600 + minutes * 60)
        }
        _ => return Err(refuse("expected Z or an offset such as +01:00")),
    };
    // Days from the civil date (H. Hinnant's days-from-civil).
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let era = shifted_year.div_euclid(400);
    let year_of_era = shifted_year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    let total = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
    u64::try_from(total).map_err(|_| refuse("before 1970 or after 2554"))
}

/// `seconds` since the Unix epoch as `YYYY-MM-DDThh:mm:ss`.
fn civil(seconds: u64) -> String {
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let shifted = days as i64 + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_shifted = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_shifted + 2) / 5 + 1;
    let month = if month_shifted < 10 { month_shifted + 3 } else { month_shifted - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_format_as_rfc3339_utc() {
        let at = |seconds: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(seconds));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z", "a leap day in a century leap year");
        assert_eq!(at(1_795_435_199), "2026-11-23T11:59:59Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z", "2100 is not a leap year");
        assert_eq!(rfc3339_nanos(1_795_435_199_000_000_042), "2026-11-23T11:59:59.000000042Z");
        assert_eq!(rfc3339_nanos(u64::MAX), "2554-07-21T23:34:33.709551615Z");
    }

    #[test]
    fn rfc3339_parses_back_what_it_prints_and_refuses_the_rest() {
        for nanos in [0, 951_782_400_000_000_000, 1_795_435_199_000_000_042, u64::MAX] {
            assert_eq!(parse_rfc3339(&rfc3339_nanos(nanos)), Ok(nanos));
        }
        assert_eq!(parse_rfc3339("2026-11-23T15:00:00Z"), Ok(1_795_446_000_000_000_000));
        assert_eq!(parse_rfc3339("2026-11-23T16:00:00+01:00"), Ok(1_795_446_000_000_000_000));
        assert_eq!(parse_rfc3339("2026-11-23T15:00:00.5Z"), Ok(1_795_446_000_500_000_000));
        for bad in [
            "2026-11-23",
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "2026-11-23T15:00:00",
            "2026-11-23T15:00:00.Z",
            "1969-12-31T23:59:59Z",
            "2600-01-01T00:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }
}
