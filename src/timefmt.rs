//! Dates as mail wants them (RFC 5322 `Wed, 25 Nov 2026 13:35:46 +0000`) and
//! as queue listings show them, computed from Unix time. UTC only: a daemon's
//! headers need no time-zone database.

use std::time::{SystemTime, UNIX_EPOCH};

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Broken-down UTC time: (year, month 1-12, day, hour, minute, second, weekday index).
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32, usize) {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = (days.rem_euclid(7)) as usize;
    (year, month, day, (rem / 3600) as u32, (rem / 60 % 60) as u32, (rem % 60) as u32, weekday)
}

/// `Wed, 25 Nov 2026 13:35:46 +0000`
pub fn rfc5322(secs: u64) -> String {
    let (y, mo, d, h, mi, s, wd) = civil(secs);
    format!("{}, {} {} {} {:02}:{:02}:{:02} +0000", DAYS[wd], d, MONTHS[mo as usize - 1], y, h, mi, s)
}

/// `Wed Nov 25 13:35:46`, the arrival-time column of Postfix's `mailq`.
pub fn mailq(secs: u64) -> String {
    let (_, mo, d, h, mi, s, wd) = civil(secs);
    format!("{} {} {:2} {:02}:{:02}:{:02}", DAYS[wd], MONTHS[mo as usize - 1], d, h, mi, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        let cases = [
            (0, "Thu, 1 Jan 1970 00:00:00 +0000"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 +0000"),
            (1_795_613_746, "Wed, 25 Nov 2026 13:35:46 +0000"),
        ];
        for (secs, expected) in cases {
            assert_eq!(rfc5322(secs), expected);
        }
        assert_eq!(mailq(1_795_613_746), "Wed Nov 25 13:35:46");
    }
}
