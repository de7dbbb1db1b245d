//! Calendar arithmetic for INTERNALDATE and SEARCH dates (proleptic Gregorian, no
//! leap seconds). The store keeps Unix seconds plus the zone the client gave.

use imap_proto::{Date, DateTime};
use store::InternalDate;

/// Days since 1970-01-01 → (year, month, day). Howard Hinnant's `civil_from_days`.
pub(crate) fn civil_from_days(z: i64) -> (i64, u8, u8) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01.
pub(crate) fn days_from_civil(y: i64, m: u8, d: u8) -> i64 {
    let (m, d) = (i64::from(m), i64::from(d));
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The wall-clock date and time of an internal date in its own zone.
pub(crate) fn to_datetime(d: InternalDate) -> DateTime {
    let local = d.unix_secs.saturating_add(i64::from(d.zone_minutes) * 60);
    let days = local.div_euclid(86_400);
    let secs = local.rem_euclid(86_400);
    let (y, m, day) = civil_from_days(days);
    DateTime {
        // INTERNALDATE has a 4-digit year: clamp absurd stored values instead of
        // writing an unparsable response.
        date: Date {
            year: y.clamp(0, 9999) as u16,
            month: m,
            day,
        },
        hour: (secs / 3600) as u8,
        minute: (secs % 3600 / 60) as u8,
        second: (secs % 60) as u8,
        zone_minutes: d.zone_minutes,
    }
}

/// The calendar date of an internal date in its own zone (SEARCH BEFORE/ON/SINCE
/// disregard time and zone, RFC 3501 6.4.4).
pub(crate) fn date_of(d: InternalDate) -> Date {
    to_datetime(d).date
}

/// A client-given date-time (APPEND) as an internal date.
pub(crate) fn from_datetime(dt: DateTime) -> InternalDate {
    let days = days_from_civil(i64::from(dt.date.year), dt.date.month, dt.date.day);
    let local = days * 86_400
        + i64::from(dt.hour) * 3600
        + i64::from(dt.minute) * 60
        + i64::from(dt.second);
    InternalDate {
        unix_secs: local - i64::from(dt.zone_minutes) * 60,
        zone_minutes: dt.zone_minutes,
    }
}

/// `"17-Jul-1996 02:44:25 -0700"` with the quotes.
pub(crate) fn internaldate_str(d: InternalDate) -> String {
    format!("\"{}\"", imap_proto::write::format_datetime(to_datetime(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        for days in [-800_000i64, -1, 0, 1, 10_957, 19_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        let d = InternalDate {
            unix_secs: 837_596_665,
            zone_minutes: -420,
        };
        assert_eq!(internaldate_str(d), "\"17-Jul-1996 02:44:25 -0700\"");
        assert_eq!(from_datetime(to_datetime(d)), d);
    }
}
