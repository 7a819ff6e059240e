//! Durations as written in definitions: `4h`, `30m`, `1h30m`, `2d`, ISO 8601 `PT4H`, and business
//! time (`48h business`) counted on a [`BusinessCalendar`].
//!
//! **Decision: business durations count hours, minutes and seconds, never days.** Working days
//! differ in length (a make-up Saturday may be short, a calendar may close early on Fridays), so
//! "2 business days" has no single length, and reading it as "the same time of day two working
//! days later" would break additivity (`add(add(t, a), b) == add(t, a + b)`) once hours and days
//! mix. `2d business` (and ISO `P2D` with `business`) is therefore rejected with a hint to write
//! hours (`16h business` for two 8-hour days). Wall-time days are exactly 24 hours.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};

use super::calendar::{BusinessCalendar, CalendarError, Computed, Warnings};
pub use crate::yaml::{DurationError, DurationErrorKind};

/// An amount of working time on a business calendar: never negative.
///
/// # Examples
/// ```
/// use procflow::BusinessDuration;
/// let d = BusinessDuration::hours(1).checked_add(BusinessDuration::minutes(30));
/// assert_eq!(d, Some(BusinessDuration::minutes(90)));
/// assert!(BusinessDuration::new(chrono::Duration::hours(-1)).is_none());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BusinessDuration(Duration);

impl BusinessDuration {
    /// No time at all.
    pub const ZERO: BusinessDuration = BusinessDuration(Duration::zero());

    /// Wraps a duration; `None` when it is negative.
    pub fn new(d: Duration) -> Option<BusinessDuration> {
        (d >= Duration::zero()).then_some(BusinessDuration(d))
    }

    /// `h` working hours.
    pub fn hours(h: u32) -> BusinessDuration {
        BusinessDuration(Duration::seconds(i64::from(h) * 3600))
    }

    /// `m` working minutes.
    pub fn minutes(m: u32) -> BusinessDuration {
        BusinessDuration(Duration::seconds(i64::from(m) * 60))
    }

    /// `s` working seconds.
    pub fn seconds(s: u32) -> BusinessDuration {
        BusinessDuration(Duration::seconds(i64::from(s)))
    }

    /// The amount as a plain duration.
    pub fn as_duration(self) -> Duration {
        self.0
    }

    /// The sum, or `None` on overflow.
    pub fn checked_add(self, other: BusinessDuration) -> Option<BusinessDuration> {
        self.0.checked_add(&other.0).map(BusinessDuration)
    }

    /// The difference, or `None` when `other` is larger.
    pub fn checked_sub(self, other: BusinessDuration) -> Option<BusinessDuration> {
        self.0.checked_sub(&other.0).and_then(BusinessDuration::new)
    }
}

impl fmt::Display for BusinessDuration {
    /// Hours, minutes and seconds, e.g. `1h30m` (`0s` for zero).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hms(f, self.0)
    }
}

/// A parsed duration: wall time, or business time on a calendar.
///
/// Accepted text, with an optional trailing word `business` for business time:
/// - compact: numbers with units `d` (24 hours, wall time only), `h`, `m`, `s`, each at most once
///   and largest first, optionally separated by spaces: `4h`, `30m`, `2d`, `1h30m`, `1h 30m`;
/// - ISO 8601: `PnW`, `PnD`, `PTnHnMnS` and combinations such as `P1DT2H`, `PT1H30M` (whole
///   numbers; years and months are rejected because their length varies).
///
/// # Errors
/// [`DurationError`] names the text and what is wrong with it.
///
/// # Examples
/// ```
/// use procflow::{BusinessDuration, DurationSpec};
/// let wall: DurationSpec = "PT1H30M".parse()?;
/// assert_eq!(wall, DurationSpec::Wall(chrono::Duration::minutes(90)));
/// let sla: DurationSpec = "48h business".parse()?;
/// assert_eq!(sla, DurationSpec::Business(BusinessDuration::hours(48)));
/// let err = "2d business".parse::<DurationSpec>().unwrap_err();
/// assert!(err.to_string().contains("write hours"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DurationSpec {
    /// Elapsed wall-clock time.
    Wall(Duration),
    /// Working time on the process's business calendar.
    Business(BusinessDuration),
}

impl DurationSpec {
    /// Parses the text; the same as [`str::parse`].
    ///
    /// # Errors
    /// See [`DurationSpec`].
    pub fn parse(text: &str) -> Result<DurationSpec, DurationError> {
        text.parse()
    }

    /// The amount, business or wall.
    pub fn amount(&self) -> Duration {
        match self {
            DurationSpec::Wall(d) => *d,
            DurationSpec::Business(b) => b.as_duration(),
        }
    }

    /// Whether the amount is business time.
    pub fn is_business(&self) -> bool {
        matches!(self, DurationSpec::Business(_))
    }

    /// The instant this duration after `from`: wall time is added as is, business time is counted
    /// on `calendar`.
    ///
    /// # Errors
    /// [`CalendarError::NoCalendar`] for a business duration without a calendar, any error of
    /// [`BusinessCalendar::add`], and [`CalendarError::TooFar`] when wall time overflows.
    pub fn after(
        &self,
        from: DateTime<Utc>,
        calendar: Option<&BusinessCalendar>,
    ) -> Result<Computed<DateTime<Utc>>, CalendarError> {
        match self {
            DurationSpec::Wall(d) => from
                .checked_add_signed(*d)
                .map(|value| Computed {
                    value,
                    warnings: Vec::new(),
                })
                .ok_or(CalendarError::TooFar { from }),
            DurationSpec::Business(b) => calendar.ok_or(CalendarError::NoCalendar)?.add(from, *b),
        }
    }

    /// [`DurationSpec::after`] with the calendar's uncovered years noted in `warn` instead of
    /// turned into warnings: the engine's path, which allocates nothing.
    pub(crate) fn after_noting(
        &self,
        from: DateTime<Utc>,
        calendar: Option<&BusinessCalendar>,
        warn: &mut Warnings,
    ) -> Result<DateTime<Utc>, CalendarError> {
        match self {
            DurationSpec::Wall(d) => from
                .checked_add_signed(*d)
                .ok_or(CalendarError::TooFar { from }),
            DurationSpec::Business(b) => calendar
                .ok_or(CalendarError::NoCalendar)?
                .add_noting(from, *b, warn),
        }
    }
}

impl fmt::Display for DurationSpec {
    /// The canonical compact form, which parses back to the same value: `1h30m`, `2d`,
    /// `4h business`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationSpec::Wall(d) => {
                let days = d.num_days();
                if days != 0 {
                    write!(f, "{days}d")?;
                }
                let rest = *d - Duration::days(days);
                if days == 0 || !rest.is_zero() {
                    write_hms(f, rest)?;
                }
                Ok(())
            }
            DurationSpec::Business(b) => write!(f, "{b} business"),
        }
    }
}

impl FromStr for DurationSpec {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<DurationSpec, DurationError> {
        let fail = |kind| DurationError {
            text: text.to_owned(),
            kind,
        };
        let trimmed = text.trim();
        let (body, business) = match trimmed.rsplit_once(char::is_whitespace) {
            Some((body, "business")) => (body.trim_end(), true),
            None if trimmed == "business" => ("", true),
            _ => (trimmed, false),
        };
        if body.is_empty() {
            return Err(fail(DurationErrorKind::Empty));
        }
        let parts = if body.starts_with('P') {
            parse_iso(body)
        } else {
            parse_compact(body)
        }
        .map_err(fail)?;
        if business && parts.days != 0 {
            return Err(fail(DurationErrorKind::BusinessDays));
        }
        let seconds = parts
            .days
            .checked_mul(86_400)
            .and_then(|s| s.checked_add(parts.hours.checked_mul(3600)?))
            .and_then(|s| s.checked_add(parts.minutes.checked_mul(60)?))
            .and_then(|s| s.checked_add(parts.seconds))
            .and_then(|s| i64::try_from(s).ok())
            .and_then(Duration::try_seconds)
            .ok_or_else(|| fail(DurationErrorKind::TooLarge))?;
        Ok(if business {
            DurationSpec::Business(BusinessDuration(seconds))
        } else {
            DurationSpec::Wall(seconds)
        })
    }
}

#[derive(Default)]
struct Parts {
    days: u64,
    hours: u64,
    minutes: u64,
    seconds: u64,
}

impl Parts {
    /// Sets the slot of `rank` (0 = weeks/days ... 3 = seconds), checking the order.
    fn set(&mut self, rank: u8, last: &mut Option<u8>, n: u64) -> Result<(), DurationErrorKind> {
        if last.is_some_and(|l| l >= rank) {
            return Err(DurationErrorKind::UnitOrder);
        }
        *last = Some(rank);
        let slot = match rank {
            0 => &mut self.days,
            1 => &mut self.hours,
            2 => &mut self.minutes,
            _ => &mut self.seconds,
        };
        *slot = slot.checked_add(n).ok_or(DurationErrorKind::TooLarge)?;
        Ok(())
    }
}

/// Reads the digits at the start of `s`: the number and the rest.
fn number(s: &str) -> Result<Option<(u64, &str)>, DurationErrorKind> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 {
        return Ok(None);
    }
    let n = s[..end]
        .parse::<u64>()
        .map_err(|_| DurationErrorKind::TooLarge)?;
    let rest = &s[end..];
    if rest.starts_with(['.', ',']) {
        return Err(DurationErrorKind::Fraction);
    }
    Ok(Some((n, rest)))
}

fn parse_compact(body: &str) -> Result<Parts, DurationErrorKind> {
    let mut parts = Parts::default();
    let mut last = None;
    let mut rest = body;
    while !rest.is_empty() {
        let Some((n, after)) = number(rest)? else {
            let mut chars = rest.chars();
            let c = chars.next().unwrap_or(' ');
            let unit_alone = matches!(c, 'd' | 'h' | 'm' | 's')
                && !chars.next().is_some_and(char::is_alphabetic);
            return Err(if unit_alone {
                DurationErrorKind::MissingNumber(c)
            } else {
                let word = rest.split_whitespace().next().unwrap_or(rest);
                DurationErrorKind::Unexpected(word.to_owned())
            });
        };
        let mut chars = after.chars();
        let rank = match chars.next() {
            Some('d') => 0,
            Some('h') => 1,
            Some('m') => 2,
            Some('s') => 3,
            None => return Err(DurationErrorKind::MissingUnit(n.to_string())),
            Some(c) if c.is_whitespace() => {
                return Err(DurationErrorKind::MissingUnit(n.to_string()));
            }
            Some(c) => return Err(DurationErrorKind::UnknownUnit(c)),
        };
        parts.set(rank, &mut last, n)?;
        rest = chars.as_str().trim_start();
    }
    Ok(parts)
}

fn parse_iso(body: &str) -> Result<Parts, DurationErrorKind> {
    let rest = body.strip_prefix('P').ok_or(DurationErrorKind::BadIso)?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    if date.is_empty() && time.is_none_or(str::is_empty) {
        return Err(DurationErrorKind::BadIso);
    }
    let mut parts = Parts::default();
    let mut seen_any = false;
    // The date part: weeks and days (years and months are refused).
    let mut s = date;
    let mut last_date: Option<u8> = None;
    while !s.is_empty() {
        let (n, after) = number(s)?.ok_or(DurationErrorKind::BadIso)?;
        let mut chars = after.chars();
        let (rank, days) = match chars.next() {
            Some('W') => (0, n.checked_mul(7).ok_or(DurationErrorKind::TooLarge)?),
            Some('D') => (1, n),
            Some('Y' | 'M') => return Err(DurationErrorKind::YearsOrMonths),
            Some(c) => return Err(DurationErrorKind::UnknownUnit(c)),
            None => return Err(DurationErrorKind::BadIso),
        };
        if last_date.is_some_and(|l| l >= rank) {
            return Err(DurationErrorKind::UnitOrder);
        }
        last_date = Some(rank);
        parts.days = parts
            .days
            .checked_add(days)
            .ok_or(DurationErrorKind::TooLarge)?;
        seen_any = true;
        s = chars.as_str();
    }
    if let Some(time) = time {
        if time.is_empty() {
            return Err(DurationErrorKind::BadIso);
        }
        let mut last = Some(0);
        let mut s = time;
        while !s.is_empty() {
            let (n, after) = number(s)?.ok_or(DurationErrorKind::BadIso)?;
            let mut chars = after.chars();
            let rank = match chars.next() {
                Some('H') => 1,
                Some('M') => 2,
                Some('S') => 3,
                Some('D' | 'W' | 'Y') => return Err(DurationErrorKind::BadIso),
                Some(c) => return Err(DurationErrorKind::UnknownUnit(c)),
                None => return Err(DurationErrorKind::BadIso),
            };
            parts.set(rank, &mut last, n)?;
            seen_any = true;
            s = chars.as_str();
        }
    }
    if seen_any {
        Ok(parts)
    } else {
        Err(DurationErrorKind::BadIso)
    }
}

fn write_hms(f: &mut fmt::Formatter<'_>, d: Duration) -> fmt::Result {
    let total = d.num_seconds();
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    let nanos = d.subsec_nanos();
    if h != 0 {
        write!(f, "{h}h")?;
    }
    if m != 0 {
        write!(f, "{m}m")?;
    }
    if s != 0 || nanos != 0 || total == 0 {
        write!(f, "{s}s")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wall(s: i64) -> DurationSpec {
        DurationSpec::Wall(Duration::seconds(s))
    }

    fn business(s: u32) -> DurationSpec {
        DurationSpec::Business(BusinessDuration::seconds(s))
    }

    macro_rules! ok {
        ($($text:expr => $want:expr),* $(,)?) => {$(
            assert_eq!(DurationSpec::parse($text), Ok($want), "{:?}", $text);
        )*};
    }

    macro_rules! err {
        ($($text:expr => $kind:expr),* $(,)?) => {$(
            assert_eq!(
                DurationSpec::parse($text).map_err(|e| e.kind().clone()),
                Err($kind),
                "{:?}", $text
            );
        )*};
    }

    #[test]
    fn parses() {
        ok! {
            "4h" => wall(4 * 3600),
            "30m" => wall(1800),
            "2d" => wall(2 * 86_400),
            "1h30m" => wall(5400),
            "1h 30m" => wall(5400),
            "  45s " => wall(45),
            "1d2h3m4s" => wall(86_400 + 7200 + 180 + 4),
            "0h" => wall(0),
            "PT4H" => wall(4 * 3600),
            "P2D" => wall(2 * 86_400),
            "PT1H30M" => wall(5400),
            "P1DT2H" => wall(86_400 + 7200),
            "P1W" => wall(7 * 86_400),
            "PT90S" => wall(90),
            "48h business" => business(48 * 3600),
            "4h business" => business(4 * 3600),
            "1h30m   business" => business(5400),
            "PT4H business" => business(4 * 3600),
        }
    }

    #[test]
    fn rejects() {
        use DurationErrorKind::*;
        err! {
            "" => Empty,
            "business" => Empty,
            " business" => Empty,
            "4" => MissingUnit("4".into()),
            "4 h" => MissingUnit("4".into()),
            "h" => MissingNumber('h'),
            "4x" => UnknownUnit('x'),
            "4H" => UnknownUnit('H'),
            "-4h" => Unexpected("-4h".into()),
            "30m1h" => UnitOrder,
            "1h1h" => UnitOrder,
            "1.5h" => Fraction,
            "P" => BadIso,
            "PT" => BadIso,
            "P1DT" => BadIso,
            "PT4" => BadIso,
            "P1M" => YearsOrMonths,
            "P1Y" => YearsOrMonths,
            "PT1.5H" => Fraction,
            "PT1M1H" => UnitOrder,
            "PT4X" => UnknownUnit('X'),
            "2d business" => BusinessDays,
            "1d4h business" => BusinessDays,
            "P2D business" => BusinessDays,
            "P1W business" => BusinessDays,
            "99999999999999999999h" => TooLarge,
            "9999999999999999h" => TooLarge,
            "4hbusiness" => Unexpected("business".into()),
            "4h wall" => Unexpected("wall".into()),
            "four hours" => Unexpected("four".into()),
        }
    }

    #[test]
    fn messages_name_the_text() {
        let e = DurationSpec::parse("2d business").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid duration '2d business': a business duration cannot count days, since \
             working days differ in length; write hours, e.g. '16h business'"
        );
        let e = DurationSpec::parse("4x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid duration '4x': unknown unit 'x'; use d, h, m or s (or ISO 8601 such as 'PT4H')"
        );
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "4h",
            "30m",
            "2d",
            "1h30m",
            "1d2h3m4s",
            "0s",
            "48h business",
            "0s business",
        ] {
            let spec = DurationSpec::parse(text).unwrap();
            assert_eq!(spec.to_string(), text);
            assert_eq!(DurationSpec::parse(&spec.to_string()), Ok(spec));
        }
        assert_eq!(DurationSpec::parse("PT90M").unwrap().to_string(), "1h30m");
    }

    #[test]
    fn wall_after_ignores_the_calendar() {
        let t: DateTime<Utc> = "2026-10-01T00:00:00Z".parse().unwrap();
        let got = DurationSpec::parse("2d").unwrap().after(t, None).unwrap();
        assert_eq!(got.value.to_rfc3339(), "2026-10-03T00:00:00+00:00");
        assert!(got.warnings.is_empty());
        assert_eq!(
            DurationSpec::parse("4h business").unwrap().after(t, None),
            Err(CalendarError::NoCalendar)
        );
    }
}
