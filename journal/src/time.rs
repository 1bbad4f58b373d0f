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
}
