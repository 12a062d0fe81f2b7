//! Timestamps as logs write them: RFC 3339 / ISO 8601 with or without zone, epoch seconds, ms,
//! µs and ns, syslog (RFC 3164), Common Log Format, and the forms of the LogHub systems
//! (`081109 203615`, `2015-10-18 18:01:47,978`, `Jun 14 15:16:01`, `17/06/09 20:10:40`,
//! `03-17 16:13:38.811`, `[Sun Dec 04 04:47:44 2005]`, `20171223-22:15:29:606`,
//! `[10.30 16:49:06]`). A timestamp without a zone is UTC; one without a year takes the year of
//! the receive time, or the year before when that would put it more than a day in the future.

use std::sync::OnceLock;

use regex::Regex;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// A timestamp found at the start of a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Microseconds since the Unix epoch, UTC.
    pub us: i64,
    /// Bytes of the text it took.
    pub len: usize,
    /// Which recogniser matched (Android's `MM-dd` form makes single-letter levels likely).
    pub shape: Shape,
}

/// The recogniser that matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// ISO 8601 / RFC 3339 and close relatives.
    Iso,
    /// Digits since the epoch.
    Epoch,
    /// A form with no year (syslog, Android, Proxifier).
    NoYear,
    /// Another fixed form with a year.
    Other,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

fn month_of(name: &str) -> Option<u8> {
    let lower = name.to_ascii_lowercase();
    MONTHS
        .iter()
        .position(|m| lower.starts_with(m))
        .map(|i| i as u8 + 1)
}

struct Recognisers {
    iso: Regex,
    bgl: Regex,
    hdfs: Regex,
    slashed: Regex,
    android: Regex,
    apache: Regex,
    syslog: Regex,
    health: Regex,
    proxifier: Regex,
    clf: Regex,
    epoch: Regex,
}

fn recognisers() -> &'static Recognisers {
    static R: OnceLock<Recognisers> = OnceLock::new();
    R.get_or_init(|| {
        let re = |p: &str| Regex::new(p).expect("built-in timestamp pattern");
        Recognisers {
            iso: re(r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?(?: ?(Z|z|[+-]\d{2}(?::?\d{2})?))?"),
            bgl: re(r"^(\d{4})-(\d{2})-(\d{2})-(\d{2})\.(\d{2})\.(\d{2})(?:\.(\d{1,9}))?"),
            hdfs: re(r"^(\d{2})(\d{2})(\d{2}) (\d{2})(\d{2})(\d{2})\b"),
            slashed: re(r"^(\d{2}|\d{4})/(\d{2})/(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?"),
            android: re(r"^(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?"),
            apache: re(r"^\[?(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ([A-Z][a-z]{2}) +(\d{1,2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))? (\d{4})\]?"),
            syslog: re(r"^([A-Z][a-z]{2}) +(\d{1,2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?"),
            health: re(r"^(\d{4})(\d{2})(\d{2})-(\d{1,2}):(\d{1,2}):(\d{1,2})(?::(\d{1,3}))?"),
            proxifier: re(r"^\[(\d{2})\.(\d{2}) (\d{2}):(\d{2}):(\d{2})\]"),
            clf: re(r"^\[?(\d{2})/([A-Z][a-z]{2})/(\d{4}):(\d{2}):(\d{2}):(\d{2})(?: ([+-]\d{4}))?\]?"),
            epoch: re(r"^(\d{10}|\d{13}|\d{16}|\d{19})(?:\.(\d{1,9}))?\b"),
        }
    })
}

fn num(c: &regex::Captures<'_>, i: usize) -> Option<i64> {
    c.get(i).and_then(|m| m.as_str().parse().ok())
}

fn fraction_us(c: &regex::Captures<'_>, i: usize) -> i64 {
    match c.get(i) {
        Some(m) => {
            let s = m.as_str();
            let mut digits: String = s.chars().take(6).collect();
            while digits.len() < 6 {
                digits.push('0');
            }
            digits.parse().unwrap_or(0)
        }
        None => 0,
    }
}

/// `[year, month, day]`, `[hour, minute, second, µs]` at a UTC offset, as µs since the epoch.
fn civil(ymd: [i64; 3], hmsu: [i64; 4], offset_s: i64) -> Option<i64> {
    let [y, mo, d] = ymd;
    let [h, mi, s, us] = hmsu;
    let month = Month::try_from(u8::try_from(mo).ok()?).ok()?;
    let date =
        Date::from_calendar_date(i32::try_from(y).ok()?, month, u8::try_from(d).ok()?).ok()?;
    let time = Time::from_hms_micro(
        u8::try_from(h).ok()?,
        u8::try_from(mi).ok()?,
        u8::try_from(s.min(59)).ok()?,
        u32::try_from(us).ok()?,
    )
    .ok()?;
    let offset = UtcOffset::from_whole_seconds(i32::try_from(offset_s).ok()?).ok()?;
    let t = PrimitiveDateTime::new(date, time).assume_offset(offset);
    i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}

/// A time without a year: the receive time's year, or the one before when that is more than a
/// day ahead of the receive time (a December line read in January).
fn without_year(mo: i64, d: i64, h: i64, mi: i64, s: i64, us: i64, receive_us: i64) -> Option<i64> {
    let year = OffsetDateTime::from_unix_timestamp_nanos(i128::from(receive_us) * 1000)
        .ok()?
        .year();
    let t = civil([i64::from(year), mo, d], [h, mi, s, us], 0)?;
    if t > receive_us + 86_400_000_000 {
        civil([i64::from(year) - 1, mo, d], [h, mi, s, us], 0)
    } else {
        Some(t)
    }
}

fn offset_seconds(z: Option<regex::Match<'_>>) -> i64 {
    let Some(z) = z else { return 0 };
    let z = z.as_str();
    if z.eq_ignore_ascii_case("z") {
        return 0;
    }
    let sign = if z.starts_with('-') { -1 } else { 1 };
    let digits: String = z.chars().filter(char::is_ascii_digit).collect();
    let h: i64 = digits.get(0..2).and_then(|x| x.parse().ok()).unwrap_or(0);
    let m: i64 = digits.get(2..4).and_then(|x| x.parse().ok()).unwrap_or(0);
    sign * (h * 3600 + m * 60)
}

/// Finds a timestamp at the very start of `text`.
pub fn at_start(text: &str, receive_us: i64) -> Option<Found> {
    let r = recognisers();
    let b = text.as_bytes();
    let first = *b.first()?;
    let found = |us: Option<i64>, len: usize, shape| us.map(|us| Found { us, len, shape });
    if first.is_ascii_digit() {
        if let Some(c) = r.iso.captures(text) {
            let us = civil(
                [num(&c, 1)?, num(&c, 2)?, num(&c, 3)?],
                [
                    num(&c, 4)?,
                    num(&c, 5)?,
                    num(&c, 6).unwrap_or(0),
                    fraction_us(&c, 7),
                ],
                offset_seconds(c.get(8)),
            );
            return found(us, c.get(0)?.end(), Shape::Iso);
        }
        if let Some(c) = r.bgl.captures(text) {
            let us = civil(
                [num(&c, 1)?, num(&c, 2)?, num(&c, 3)?],
                [num(&c, 4)?, num(&c, 5)?, num(&c, 6)?, fraction_us(&c, 7)],
                0,
            );
            return found(us, c.get(0)?.end(), Shape::Iso);
        }
        if let Some(c) = r.health.captures(text) {
            let ms = num(&c, 7).unwrap_or(0);
            let us = civil(
                [num(&c, 1)?, num(&c, 2)?, num(&c, 3)?],
                [num(&c, 4)?, num(&c, 5)?, num(&c, 6)?, ms * 1000],
                0,
            );
            return found(us, c.get(0)?.end(), Shape::Other);
        }
        if let Some(c) = r.epoch.captures(text) {
            let m = c.get(1)?;
            let whole: i64 = m.as_str().parse().ok()?;
            let us = match m.as_str().len() {
                10 => whole
                    .checked_mul(1_000_000)?
                    .checked_add(fraction_us(&c, 2))?,
                13 => whole.checked_mul(1_000)?,
                16 => whole,
                _ => whole / 1_000,
            };
            // Plausible epochs only (2001 to 2100): a 10-digit counter is not a time.
            if (978_307_200_000_000..4_102_444_800_000_000).contains(&us) {
                return found(Some(us), c.get(0)?.end(), Shape::Epoch);
            }
            return None;
        }
        if let Some(c) = r.hdfs.captures(text) {
            let us = civil(
                [2000 + num(&c, 1)?, num(&c, 2)?, num(&c, 3)?],
                [num(&c, 4)?, num(&c, 5)?, num(&c, 6)?, 0],
                0,
            );
            return found(us, c.get(0)?.end(), Shape::Other);
        }
        if let Some(c) = r.slashed.captures(text) {
            let y = num(&c, 1)?;
            let y = if y < 100 { 2000 + y } else { y };
            let us = civil(
                [y, num(&c, 2)?, num(&c, 3)?],
                [num(&c, 4)?, num(&c, 5)?, num(&c, 6)?, fraction_us(&c, 7)],
                0,
            );
            return found(us, c.get(0)?.end(), Shape::Other);
        }
        if let Some(c) = r.android.captures(text) {
            let us = without_year(
                num(&c, 1)?,
                num(&c, 2)?,
                num(&c, 3)?,
                num(&c, 4)?,
                num(&c, 5)?,
                fraction_us(&c, 6),
                receive_us,
            );
            return found(us, c.get(0)?.end(), Shape::NoYear);
        }
        if let Some(c) = r.clf.captures(text) {
            return clf(&c, text);
        }
        return None;
    }
    if first == b'[' {
        if let Some(c) = r.proxifier.captures(text) {
            let us = without_year(
                num(&c, 1)?,
                num(&c, 2)?,
                num(&c, 3)?,
                num(&c, 4)?,
                num(&c, 5)?,
                0,
                receive_us,
            );
            return found(us, c.get(0)?.end(), Shape::NoYear);
        }
        if let Some(c) = r.clf.captures(text) {
            return clf(&c, text);
        }
    }
    if let Some(c) = r.apache.captures(text) {
        let us = civil(
            [
                num(&c, 7)?,
                i64::from(month_of(c.get(1)?.as_str())?),
                num(&c, 2)?,
            ],
            [num(&c, 3)?, num(&c, 4)?, num(&c, 5)?, fraction_us(&c, 6)],
            0,
        );
        return found(us, c.get(0)?.end(), Shape::Other);
    }
    if let Some(c) = r.syslog.captures(text) {
        let us = without_year(
            i64::from(month_of(c.get(1)?.as_str())?),
            num(&c, 2)?,
            num(&c, 3)?,
            num(&c, 4)?,
            num(&c, 5)?,
            fraction_us(&c, 6),
            receive_us,
        );
        return found(us, c.get(0)?.end(), Shape::NoYear);
    }
    None
}

fn clf(c: &regex::Captures<'_>, _text: &str) -> Option<Found> {
    let us = civil(
        [
            num(c, 3)?,
            i64::from(month_of(c.get(2)?.as_str())?),
            num(c, 1)?,
        ],
        [num(c, 4)?, num(c, 5)?, num(c, 6)?, 0],
        offset_seconds(c.get(7)),
    )?;
    Some(Found {
        us,
        len: c.get(0)?.end(),
        shape: Shape::Other,
    })
}

/// Parses a whole string as a timestamp (any form above, or RFC 3339), for JSON `timestamp`
/// values.
pub fn parse_str(s: &str, receive_us: i64) -> Option<i64> {
    let s = s.trim();
    let f = at_start(s, receive_us)?;
    (f.len == s.len()).then_some(f.us)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECEIVE: i64 = 1_764_000_000_000_000; // 2025-11-24T16:00:00Z

    fn t(s: &str) -> String {
        let f = at_start(s, RECEIVE).unwrap_or_else(|| panic!("no timestamp in {s:?}"));
        let dt = OffsetDateTime::from_unix_timestamp_nanos(i128::from(f.us) * 1000).unwrap();
        format!(
            "{}|{}",
            dt.format(&time::format_description::well_known::Rfc3339)
                .unwrap(),
            &s[..f.len]
        )
    }

    #[test]
    fn every_form_is_read() {
        for (input, want) in [
            (
                "2015-10-18 18:01:47,978 INFO",
                "2015-10-18T18:01:47.978Z|2015-10-18 18:01:47,978",
            ),
            (
                "2017-05-16T00:00:01.551+02:00 x",
                "2017-05-15T22:00:01.551Z|2017-05-16T00:00:01.551+02:00",
            ),
            (
                "2016-09-28 04:30:31, Info",
                "2016-09-28T04:30:31Z|2016-09-28 04:30:31",
            ),
            (
                "081109 203615 148 INFO",
                "2008-11-09T20:36:15Z|081109 203615",
            ),
            (
                "17/06/09 20:10:40 INFO",
                "2017-06-09T20:10:40Z|17/06/09 20:10:40",
            ),
            (
                "03-17 16:13:38.811  1702",
                "2025-03-17T16:13:38.811Z|03-17 16:13:38.811",
            ),
            (
                "[Sun Dec 04 04:47:44 2005] [notice]",
                "2005-12-04T04:47:44Z|[Sun Dec 04 04:47:44 2005]",
            ),
            (
                "Jun 14 15:16:01 combo sshd",
                "2025-06-14T15:16:01Z|Jun 14 15:16:01",
            ),
            (
                "Dec 10 06:55:46 LabSZ",
                "2024-12-10T06:55:46Z|Dec 10 06:55:46",
            ),
            (
                "20171223-22:15:29:606|Step",
                "2017-12-23T22:15:29.606Z|20171223-22:15:29:606",
            ),
            (
                "20171223-23:7:6:145|Step",
                "2017-12-23T23:07:06.145Z|20171223-23:7:6:145",
            ),
            (
                "[10.30 16:49:06] chrome.exe",
                "2025-10-30T16:49:06Z|[10.30 16:49:06]",
            ),
            ("1117838570 2005.06.03", "2005-06-03T22:42:50Z|1117838570"),
            ("1700000000123 x", "2023-11-14T22:13:20.123Z|1700000000123"),
            (
                "[10/Oct/2000:13:55:36 -0700] \"GET",
                "2000-10-10T20:55:36Z|[10/Oct/2000:13:55:36 -0700]",
            ),
            (
                "2005-06-03-15.42.50.675872 R02",
                "2005-06-03T15:42:50.675872Z|2005-06-03-15.42.50.675872",
            ),
        ] {
            assert_eq!(t(input), want, "{input}");
        }
    }

    #[test]
    fn numbers_that_are_not_times_are_not_taken() {
        for s in [
            "134681 node-246",
            "4294967296 bytes",
            "12:30 lunch",
            "0000000001 x",
        ] {
            assert_eq!(at_start(s, RECEIVE), None, "{s}");
        }
    }
}
