//! Wall-clock helpers: Unix milliseconds, Discord snowflakes and ISO 8601 timestamps.
//!
//! Snowflakes carry their creation time (`(id >> 22) + DISCORD_EPOCH_MS`); clients rely on
//! that to split history by time, so ids are generated from the clock, strictly increasing.

use std::time::{SystemTime, UNIX_EPOCH};

/// The first millisecond of 2015, Discord's epoch.
pub const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, with decimals.
pub fn now_secs_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The Unix millisecond a snowflake was made at.
pub fn snowflake_ms(id: u64) -> u64 {
    (id >> 22) + DISCORD_EPOCH_MS
}

/// Hands out snowflakes: the time in the high bits, strictly increasing.
#[derive(Debug, Default)]
pub struct SnowflakeGenerator {
    last: u64,
    /// Milliseconds subtracted from the clock (the `backdate` knob).
    backdate_ms: u64,
}

impl SnowflakeGenerator {
    /// A fresh id for something made now (less the backdating).
    pub fn next(&mut self) -> u64 {
        let from_clock = now_ms()
            .saturating_sub(self.backdate_ms)
            .saturating_sub(DISCORD_EPOCH_MS)
            << 22;
        self.last = from_clock.max(self.last + 1);
        self.last
    }

    /// Dates the ids handed out from now on `ms` milliseconds in the past (still
    /// increasing: ids never go back).
    pub fn set_backdate_ms(&mut self, ms: u64) {
        self.backdate_ms = ms;
    }
}

/// `2024-05-01T12:34:56.789000+00:00`, the form Discord uses.
pub fn iso8601(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        unix_ms % 1000 * 1000
    )
}

/// Parses the timestamps [`iso8601`] writes (and `Z` or whole seconds), to Unix milliseconds.
pub fn parse_iso8601(text: &str) -> Option<u64> {
    let date = text.get(0..10)?;
    let time = text.get(11..19)?;
    let mut date_parts = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (
        date_parts.next()??,
        date_parts.next()??,
        date_parts.next()??,
    );
    let mut time_parts = time.split(':').map(|p| p.parse::<u64>().ok());
    let (hour, minute, second) = (
        time_parts.next()??,
        time_parts.next()??,
        time_parts.next()??,
    );
    let millis = text
        .get(19..)
        .and_then(|rest| rest.strip_prefix('.'))
        .map(|frac| {
            let digits: String = frac.chars().take_while(char::is_ascii_digit).collect();
            format!("{digits:0<3}")[..3].parse::<u64>().unwrap_or(0)
        })
        .unwrap_or(0);
    let days = days_from_civil(year, month, day);
    let secs = u64::try_from(days).ok()? * 86_400 + hour * 3600 + minute * 60 + second;
    Some(secs * 1000 + millis)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's method).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) to days since 1970-01-01; the inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_round_trips() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(
            iso8601(1_709_251_199_123),
            "2024-02-29T23:59:59.123000+00:00"
        );
        for ms in [0, 1_709_251_199_123, 1_420_070_400_000, 4_102_444_800_999] {
            assert_eq!(parse_iso8601(&iso8601(ms)), Some(ms));
        }
        assert_eq!(
            parse_iso8601("2024-02-29T23:59:59Z"),
            Some(1_709_251_199_000)
        );
    }

    #[test]
    fn snowflakes_increase_and_hold_their_time() {
        let mut ids = SnowflakeGenerator::default();
        let (a, b) = (ids.next(), ids.next());
        assert!(b > a);
        assert!(now_ms() - snowflake_ms(b) < 1000);
        let day = 24 * 3600 * 1000;
        ids.set_backdate_ms(2 * day);
        let old = ids.next();
        assert!(old > b, "ids never go back");
        ids.set_backdate_ms(0);
        let mut fresh = SnowflakeGenerator::default();
        fresh.set_backdate_ms(2 * day);
        let dated = snowflake_ms(fresh.next());
        assert!((2 * day - 1000..2 * day + 1000).contains(&(now_ms() - dated)));
        fresh.set_backdate_ms(0);
        assert!(now_ms() - snowflake_ms(fresh.next()) < 1000);
    }
}
