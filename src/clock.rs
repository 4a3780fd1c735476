//! Time for the whole crate: the Unix clock, and the text forms mail headers
//! and queue listings write it in. Calendar and zone rules are jiff's; the
//! zone is the machine's (`TZ`, else /etc/localtime), as Postfix takes it
//! from localtime(3).

use jiff::Timestamp;
use jiff::tz::TimeZone;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `secs` as a jiff timestamp; a time past jiff's range (the end of year
/// 9999, only from a damaged envelope) becomes its last instant rather
/// than an error.
pub(crate) fn timestamp(secs: u64) -> Timestamp {
    i64::try_from(secs).ok().and_then(|s| Timestamp::from_second(s).ok()).unwrap_or(Timestamp::MAX)
}

/// `secs` in the machine's zone, for the text forms below and the
/// commands' own (`postcat`, Exim's log lines).
pub(crate) fn local(secs: u64) -> jiff::ZonedDateTime {
    timestamp(secs).to_zoned_datetime(TimeZone::system())
}

/// `Fri,  4 Dec 2026 15:32:50 +0100 (CET)` in local time: the RFC 5322
/// date-time of `Date:`, `Received:` and DSN fields, as Postfix writes it.
pub(crate) fn rfc5322(secs: u64) -> String {
    rfc5322_in(secs, TimeZone::system())
}

/// `Fri Dec  4 15:32:50` in local time, the arrival column of `mailq`
/// (asctime(3) cut to 19 characters, as Postfix's showq prints it).
pub(crate) fn mailq(secs: u64) -> String {
    mailq_in(secs, TimeZone::system())
}

/// `rfc5322` in zone `tz`. Postfix's mail_date: the day padded with a
/// space (FWS allows it), the numeric offset, then the zone's abbreviation
/// as a comment. An abbreviation that could not sit in a comment (it is
/// whatever the zone file says) is left out; the offset alone is the date.
fn rfc5322_in(secs: u64, tz: TimeZone) -> String {
    let local = timestamp(secs).to_zoned_datetime(tz);
    let mut text = local.strftime("%a, %e %b %Y %H:%M:%S %z").to_string();
    let name = local.strftime("%Z").to_string();
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-') {
        text.push_str(&format!(" ({name})"));
    }
    text
}

fn mailq_in(secs: u64, tz: TimeZone) -> String {
    timestamp(secs).to_zoned_datetime(tz).strftime("%a %b %e %H:%M:%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_dates_in_a_given_zone() {
        let berlin = || TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        let new_york = || TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").unwrap();
        let cases = [
            (0, TimeZone::UTC, "Thu,  1 Jan 1970 00:00:00 +0000 (UTC)"),
            (951_782_400, TimeZone::UTC, "Tue, 29 Feb 2000 00:00:00 +0000 (UTC)"),
            (1_795_613_746, TimeZone::UTC, "Wed, 25 Nov 2026 13:35:46 +0000 (UTC)"),
            (1_796_394_770, berlin(), "Fri,  4 Dec 2026 15:32:50 +0100 (CET)"),
            (1_783_170_307, new_york(), "Sat,  4 Jul 2026 09:05:07 -0400 (EDT)"),
            // Past midnight locally, still the day before in UTC.
            (1_796_425_200, berlin(), "Sat,  5 Dec 2026 00:00:00 +0100 (CET)"),
            (1_796_394_770, TimeZone::fixed(jiff::tz::offset(5)), "Fri,  4 Dec 2026 19:32:50 +0500 (+05)"),
            (u64::MAX, berlin(), "Thu, 30 Dec 9999 23:00:00 +0100 (CET)"),
        ];
        for (secs, tz, expected) in cases {
            assert_eq!(rfc5322_in(secs, tz), expected, "{secs}");
        }
    }

    #[test]
    fn mailq_dates_in_a_given_zone() {
        let berlin = TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        assert_eq!(mailq_in(1_796_394_770, berlin), "Fri Dec  4 15:32:50");
        assert_eq!(mailq_in(1_795_613_746, TimeZone::UTC), "Wed Nov 25 13:35:46");
    }

    #[test]
    fn timestamps_clamp() {
        assert_eq!(timestamp(1_795_613_746).as_second(), 1_795_613_746);
        assert_eq!(timestamp(u64::MAX), Timestamp::MAX);
    }
}
