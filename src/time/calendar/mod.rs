//! Business calendars: working hours per weekday, holidays and make-up working days per year, in
//! one time zone; and business-time arithmetic on them.
//!
//! A calendar is data (the format is on [`BusinessCalendar::from_yaml`]; the shipped one is
//! `process-defs/calendars/china.yaml`, built in as [`BusinessCalendar::china`]): adding a year
//! is adding a `years` entry. The arithmetic converts each local working interval to UTC
//! instants, so inputs may carry any offset and daylight-saving transitions are handled by the
//! IANA rules of the zone (from `chrono-tz`).
//!
//! **Invariant:** a computation never silently uses guessed data. A day in a year the calendar
//! does not list is an error ([`Beyond::Error`]), or counted with the weekly hours alone
//! ([`Beyond::WeekendsOnly`]) or with the statutory holidays of mainland China
//! ([`Beyond::Statutory`]), and then reported as a [`CalendarWarning`]: the result is
//! provisional ([`Computed::is_provisional`]).

mod fast;
mod load;
mod statutory;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    SecondsFormat, TimeZone, Utc,
};
use chrono_tz::Tz;
use smallvec::SmallVec;

use crate::time::duration::BusinessDuration;
use crate::yaml::LoadError;

/// How far a computation may run before it gives up, in days (about 200 years).
const MAX_DAYS: u32 = 200 * 366;

/// A business calendar: when work happens, in one time zone.
///
/// Working hours are half-open intervals of local time (`09:00-12:00` contains 09:00 and not
/// 12:00). A day is, in this order: a holiday (no hours), a make-up working day (its own hours),
/// or an ordinary day with its weekday's hours. The holidays and make-up days are known for the
/// covered (listed) years only; see [`Beyond`] for days outside them.
///
/// Two calendars are equal when they hold the same data (names, zone, hours, years, holidays,
/// make-up days and [`Beyond`] policy), wherever they were loaded from.
///
/// # Examples
/// ```
/// use procflow::{BusinessCalendar, BusinessDuration};
/// let china = BusinessCalendar::from_file("process-defs/calendars/china.yaml")?;
/// let from = "2026-09-30T16:00:00+08:00".parse()?;
/// let due = china.add(from, BusinessDuration::hours(4))?;
/// assert_eq!(china.rfc3339(due.value), "2026-10-08T11:00:00+08:00");
/// assert!(due.warnings.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct BusinessCalendar {
    name: Option<String>,
    name_zh: Option<String>,
    file: Option<PathBuf>,
    zone: Tz,
    /// Monday first.
    week: [Vec<Span>; 7],
    years: BTreeSet<i32>,
    holidays: BTreeMap<NaiveDate, usize>,
    names: Vec<Holiday>,
    makeup: BTreeMap<NaiveDate, Vec<Span>>,
    beyond: Beyond,
    /// The working intervals precomputed in UTC: the covered years' at load time, the statutory
    /// years' on first use.
    fast: fast::Table,
}

impl PartialEq for BusinessCalendar {
    /// The same data; the file a calendar was loaded from and its precomputed tables do not
    /// count.
    fn eq(&self, other: &BusinessCalendar) -> bool {
        self.name == other.name
            && self.name_zh == other.name_zh
            && self.zone == other.zone
            && self.week == other.week
            && self.years == other.years
            && self.holidays.len() == other.holidays.len()
            && self
                .holidays
                .iter()
                .zip(&other.holidays)
                .all(|((da, &a), (db, &b))| da == db && self.names.get(a) == other.names.get(b))
            && self.makeup == other.makeup
            && self.beyond == other.beyond
    }
}

impl Eq for BusinessCalendar {}

/// What a calendar does for a day in a year it does not cover (written `beyond:` in the YAML).
///
/// The default, when the YAML has no `beyond:`, is [`Beyond::Error`] and not
/// [`Beyond::Statutory`]: the other policies guess, and the statutory one guesses with the law
/// of one country, which would be wrong for a calendar of any other; so a calendar asks for a
/// policy by name. The shipped China calendar asks for [`Beyond::Statutory`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Beyond {
    /// Fail with [`CalendarError::Beyond`]. This is the default (`beyond: error`).
    #[default]
    Error,
    /// Count the weekly working hours alone (no holidays, no make-up days) and add a
    /// [`CalendarWarning::Beyond`] to the result (`beyond: weekends_only`).
    WeekendsOnly,
    /// Count the weekly working hours less the statutory public holidays of mainland China, and
    /// add a [`CalendarWarning::Provisional`] to the result (`beyond: statutory`): the result
    /// stands until the State Council's notice for that year is added to the calendar.
    ///
    /// The holidays are those of the national law (全国年节及纪念日放假办法, as amended in 2024,
    /// in force from 2025), article 2: New Year's Day (1 January); the Spring Festival (Chinese
    /// New Year's Eve 除夕 and the first three days of the lunar year, 4 days); Qingming (the day
    /// of the Qingming solar term); Labour Day (1 and 2 May); the Dragon Boat Festival (lunar
    /// 5/5); the Mid-Autumn Festival (lunar 8/15); National Day (1 to 3 October). And article 6:
    /// a holiday on a Saturday or Sunday is made up with a day off on a working day, here the
    /// first weekday after the festival that is not already off (as the State Council's notices
    /// do). The yearly make-up swaps (调休), which only the notice decides, are not guessed: no
    /// weekend day becomes a working day.
    ///
    /// The rule computes the years [`Beyond::STATUTORY_YEARS`]; a day of another year not listed
    /// is an error, [`CalendarError::BeyondStatutory`]. The lunar dates and the Qingming solar
    /// term come from the `tyme4rs` crate; for 2025 to 2100 they agree with the table of the
    /// `chinese-lunisolar-calendar` crate and with PyEphem's solar longitude, except the
    /// Mid-Autumn Festival of 2089 (18 September here, 19 there: the new moon falls within
    /// minutes of midnight).
    Statutory,
}

impl Beyond {
    /// The years [`Beyond::Statutory`] computes: from 2025, when the amended law took effect, to
    /// 2100, as far as its lunar dates were checked.
    pub const STATUTORY_YEARS: RangeInclusive<i32> = statutory::FIRST..=statutory::LAST;
}

/// A named holiday.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holiday {
    /// The English name, e.g. `National Day`.
    pub name: String,
    /// The Chinese name, e.g. `国庆节`.
    pub name_zh: Option<String>,
}

/// A computed value and what the caller should know about how it was computed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Computed<T> {
    /// The value: an instant, a duration or a flag.
    pub value: T,
    /// Warnings, e.g. that the computation ran past the covered years; empty when the calendar's
    /// data covered everything it used (and then nothing was allocated).
    pub warnings: Vec<CalendarWarning>,
}

impl<T> Computed<T> {
    /// Whether the value depends on days whose holidays the calendar computed from the statutory
    /// rule ([`Beyond::Statutory`]) rather than read from a listed year: it may change when the
    /// State Council's notice for those years is added to the calendar.
    ///
    /// # Examples
    /// ```
    /// use procflow::{BusinessCalendar, BusinessDuration};
    /// let china = BusinessCalendar::china();
    /// let from = "2026-12-31T16:00:00+08:00".parse()?;
    /// let due = china.add(from, BusinessDuration::hours(8))?;
    /// // 2h on 31 December; 1 January 2027 is a holiday, then the weekend.
    /// assert_eq!(china.rfc3339(due.value), "2027-01-04T16:00:00+08:00");
    /// assert!(due.is_provisional());
    /// assert_eq!(due.provisional_years().collect::<Vec<_>>(), [2027]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_provisional(&self) -> bool {
        self.provisional_years().next().is_some()
    }

    /// The years of [`Computed::is_provisional`], ascending.
    pub fn provisional_years(&self) -> impl Iterator<Item = i32> + '_ {
        self.warnings.iter().filter_map(|w| match w {
            CalendarWarning::Provisional { year } => Some(*year),
            _ => None,
        })
    }
}

/// Something a computation did that its caller should know about.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CalendarWarning {
    /// A day in `year` is outside the covered years, and [`Beyond::WeekendsOnly`] counted it with
    /// the weekly hours alone.
    #[error("ran past {}, used weekday hours only for {year}", years_text(.covered))]
    Beyond {
        /// The uncovered year.
        year: i32,
        /// The years the calendar covers.
        covered: Vec<i32>,
    },
    /// A day in `year`, which the calendar does not list, was counted with the statutory
    /// holidays ([`Beyond::Statutory`]): the result is provisional.
    #[error(
        "provisional: {year} computed from the statutory holidays, no State Council notice yet"
    )]
    Provisional {
        /// The year not listed.
        year: i32,
    },
}

/// Why a calendar computation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CalendarError {
    /// The computation reached a day outside the covered years under [`Beyond::Error`].
    #[error(
        "{date} is outside the years the calendar covers ({}); add that year's holidays and \
         make-up days, or set 'beyond: weekends_only'",
        years_text(.covered)
    )]
    Beyond {
        /// The first uncovered day the computation needed.
        date: NaiveDate,
        /// The years the calendar covers.
        covered: Vec<i32>,
    },
    /// The computation reached a day of a year that the calendar does not list and the statutory
    /// rule does not compute ([`Beyond::STATUTORY_YEARS`]), under [`Beyond::Statutory`].
    #[error(
        "{date} is outside the years the calendar covers ({}) and the years its statutory rule \
         computes ({} to {}); add that year's holidays and make-up days",
        years_text(.covered),
        statutory::FIRST,
        statutory::LAST
    )]
    BeyondStatutory {
        /// The first such day the computation needed.
        date: NaiveDate,
        /// The years the calendar covers.
        covered: Vec<i32>,
    },
    /// The result would be more than about 200 years away, or past the last representable date.
    #[error("the computation runs more than 200 years from {from}")]
    TooFar {
        /// Where it started.
        from: DateTime<Utc>,
    },
    /// An instant so close to the ends of the representable time that its local date does not
    /// exist.
    #[error("{0} is outside the range of dates a calendar can compute with")]
    OutOfRange(DateTime<Utc>),
    /// A business duration was given without a calendar to count it on.
    #[error("a business duration needs a business calendar")]
    NoCalendar,
}

impl BusinessCalendar {
    /// Parses and checks a calendar from YAML text.
    ///
    /// The format (only `zone` and `hours` are required):
    /// ```yaml
    /// name: China (mainland)            # optional, with name_zh and description
    /// zone: Asia/Shanghai               # an IANA time zone name
    /// beyond: error                     # or weekends_only, or statutory; see `Beyond`
    /// hours:                            # mon..sun; a missing day is closed
    ///   mon: ["09:00-12:00", "13:00-18:00"]   # HH:MM-HH:MM, in order, 24:00 as an end
    /// years:                            # the covered years; each date lies in its year
    ///   2026:
    ///     source: the notice the dates come from   # optional
    ///     holidays:                     # a date, or an inclusive range from/to, with names
    ///       - { date: 2026-01-01, name: New Year, name_zh: 元旦 }
    ///       - { from: 2026-10-01, to: 2026-10-07, name: National Day, name_zh: 国庆节 }
    ///     makeup_days:                  # working days on what would be days off
    ///       - { date: 2026-10-10, name: National Day make-up working day }
    ///       - { date: 2026-09-20, hours: ["09:00-12:00"] }  # hours default to Mon-Fri's
    /// ```
    /// A make-up day without `hours` works the Monday-to-Friday hours, which must then be the same
    /// on those five days.
    ///
    /// # Errors
    /// Every problem found, with line and column: a YAML syntax or shape error alone, otherwise
    /// each unknown zone, bad date, bad or overlapping hours, date listed twice, and so on.
    ///
    /// # Examples
    /// ```
    /// let cal = procflow::BusinessCalendar::from_yaml(r#"
    /// zone: Europe/Berlin
    /// hours: { mon: ["09:00-17:00"], tue: ["09:00-17:00"] }
    /// years:
    ///   2026:
    ///     holidays: [{ date: 2026-12-25, name: Christmas Day }]
    /// "#)?;
    /// assert_eq!(cal.zone(), chrono_tz::Europe::Berlin);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_yaml(text: &str) -> Result<BusinessCalendar, LoadError> {
        load::load(text).map_err(|problems| LoadError::new(None, problems))
    }

    /// Reads and checks a calendar file. Problems name the file.
    ///
    /// # Errors
    /// The file cannot be read, or every problem found in it (see [`BusinessCalendar::from_yaml`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<BusinessCalendar, LoadError> {
        let path = path.as_ref();
        let text = LoadError::read(path)?;
        let mut cal = load::load(&text).map_err(|p| LoadError::new(Some(path.to_owned()), p))?;
        cal.file = Some(path.to_owned());
        Ok(cal)
    }

    /// The shipped calendar of mainland China, `process-defs/calendars/china.yaml`, built into
    /// the crate: the 2026 State Council notice, and the statutory holidays
    /// ([`Beyond::Statutory`]) for the years after it. It equals the file loaded with
    /// [`BusinessCalendar::from_file`], except that [`BusinessCalendar::file`] is `None`.
    ///
    /// The file is parsed once per process; each call returns a clone, which shares the
    /// precomputed tables.
    ///
    /// # Examples
    /// ```
    /// use procflow::{Beyond, BusinessCalendar, BusinessDuration};
    /// let china = BusinessCalendar::china();
    /// assert_eq!(china.zone(), chrono_tz::Asia::Shanghai);
    /// assert_eq!(china.beyond(), Beyond::Statutory);
    /// // National Day week 2026, from the State Council's notice: not provisional.
    /// let due = china.add("2026-09-30T16:00:00+08:00".parse()?, BusinessDuration::hours(4))?;
    /// assert_eq!(china.rfc3339(due.value), "2026-10-08T11:00:00+08:00");
    /// assert!(!due.is_provisional());
    /// // 2027 is computed from the statutory holidays until its notice is added.
    /// assert!(china.is_provisional(2027));
    /// let eve = "2027-02-05".parse()?;
    /// assert_eq!(china.holiday(eve).map(|h| h.name.as_str()), Some("Spring Festival"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Panics
    /// Never: the crate's tests load the embedded file.
    pub fn china() -> BusinessCalendar {
        static CHINA: LazyLock<BusinessCalendar> = LazyLock::new(|| {
            load::load(CHINA_YAML).unwrap_or_else(|problems| {
                panic!("the shipped China calendar does not load: {problems:?}")
            })
        });
        CHINA.clone()
    }

    /// The English name, if given.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The Chinese name, if given.
    pub fn name_zh(&self) -> Option<&str> {
        self.name_zh.as_deref()
    }

    /// The file it was loaded from.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The time zone.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The years whose holidays and make-up days the calendar knows, ascending: the covered
    /// (listed) years. Results that use only days of these years are not provisional.
    pub fn years(&self) -> impl Iterator<Item = i32> + '_ {
        self.years.iter().copied()
    }

    /// Whether the calendar computes the days of `year` from the statutory rule
    /// ([`Beyond::Statutory`]) because it does not list that year: results that use them are
    /// provisional. When a new calendar no longer finds a year provisional (its notice was
    /// added), results that were provisional for that year may be recomputed.
    pub fn is_provisional(&self, year: i32) -> bool {
        self.beyond == Beyond::Statutory && !self.years.contains(&year) && statutory::computes(year)
    }

    /// What happens outside the covered years.
    pub fn beyond(&self) -> Beyond {
        self.beyond
    }

    /// The holiday on a local date, if it is one: a listed holiday, or in a provisional year
    /// (see [`BusinessCalendar::is_provisional`]) a statutory one, named after its festival
    /// (`Spring Festival`) or, for a working day off that makes up for a festival day on a
    /// weekend, `Spring Festival substitute day off` (`春节补假`).
    pub fn holiday(&self, date: NaiveDate) -> Option<&Holiday> {
        if self.is_provisional(date.year()) {
            return statutory::day_off(date).flatten().map(|d| d.holiday());
        }
        self.holidays.get(&date).and_then(|&i| self.names.get(i))
    }

    /// The instant in the calendar's zone.
    ///
    /// Within a day of chrono's limits the local time is not representable and chrono's
    /// accessors of the result panic; [`BusinessCalendar::rfc3339`] does not.
    pub fn local(&self, instant: DateTime<Utc>) -> DateTime<Tz> {
        instant.with_timezone(&self.zone)
    }

    /// The instant as RFC 3339 text with the zone's offset, e.g. `2026-10-08T11:00:00+08:00`
    /// (fractional seconds only when there are any). An instant whose local time is not
    /// representable (within a day of chrono's limits) is written in UTC instead.
    pub fn rfc3339(&self, instant: DateTime<Utc>) -> String {
        match self.local_date(instant) {
            Ok(_) => self
                .local(instant)
                .to_rfc3339_opts(SecondsFormat::AutoSi, false),
            Err(_) => instant.to_rfc3339_opts(SecondsFormat::AutoSi, false),
        }
    }

    /// The local date of an instant.
    fn local_date(&self, instant: DateTime<Utc>) -> Result<NaiveDate, CalendarError> {
        let offset = self
            .zone
            .offset_from_utc_datetime(&instant.naive_utc())
            .fix();
        instant
            .naive_utc()
            .checked_add_offset(offset)
            .map(|local| local.date())
            .ok_or(CalendarError::OutOfRange(instant))
    }

    /// The instant after `d` of working time counted from `from`.
    ///
    /// Counting starts at `from` if it is inside working hours, else at the next opening (before
    /// opening: that day's opening; at or after closing: the next working day's). The result is
    /// the instant the last unit of working time ends, so it may be a closing time: Friday 17:00
    /// plus 4 hours on 09:00–12:00, 13:00–18:00 hours is Monday 12:00, not 13:00. A zero
    /// duration returns `from` unchanged. `add` is monotonic in `d` and additive:
    /// `add(add(t, a), b) == add(t, a + b)`.
    ///
    /// # Errors
    /// [`CalendarError::Beyond`] when the count reaches an uncovered year under [`Beyond::Error`],
    /// [`CalendarError::BeyondStatutory`] one outside [`Beyond::STATUTORY_YEARS`] under
    /// [`Beyond::Statutory`]; [`CalendarError::TooFar`] past about 200 years.
    ///
    /// Complexity: logarithmic inside the covered years and the statutory years (their intervals
    /// are precomputed: the covered years' at load time, each statutory year's on its first use
    /// by any clone of the calendar), linear in the number of days counted outside them.
    pub fn add(
        &self,
        from: DateTime<Utc>,
        d: BusinessDuration,
    ) -> Result<Computed<DateTime<Utc>>, CalendarError> {
        let mut warn = Warnings::default();
        let value = self.add_noting(from, d, &mut warn)?;
        Ok(Computed {
            value,
            warnings: warn.finish(self),
        })
    }

    /// [`BusinessCalendar::add`] with the years beyond the covered ones noted in `warn`: the
    /// engine's path, which allocates nothing (a provisional result included).
    pub(crate) fn add_noting(
        &self,
        from: DateTime<Utc>,
        d: BusinessDuration,
        warn: &mut Warnings,
    ) -> Result<DateTime<Utc>, CalendarError> {
        let left = d.as_duration();
        if left.is_zero() {
            return Ok(from);
        }
        let value = match self.fast.add(self, from, left, warn) {
            Some(Ok(value)) => value,
            Some(Err(rest)) => {
                // The covered years ran out: go on day by day from their end, with the days
                // already counted taken off the limit.
                let used = rest
                    .run
                    .after()
                    .signed_duration_since(self.local_date(from)?)
                    .num_days();
                let limit = u32::try_from(used)
                    .ok()
                    .and_then(|used| MAX_DAYS.checked_sub(used))
                    .unwrap_or(0);
                let cursor = rest.run.end().ok_or(CalendarError::TooFar { from })?;
                let date = rest.run.after();
                self.walk(from, cursor, rest.left, date, limit, warn)?
            }
            None => {
                let date = self.local_date(from)?;
                self.walk(from, from, left, date, MAX_DAYS, warn)?
            }
        };
        Ok(value)
    }

    /// Counts `left` of working time day by day from `cursor`, starting with the local `date`
    /// and looking at `limit` days at most. `from` is where the whole computation started.
    fn walk(
        &self,
        from: DateTime<Utc>,
        mut cursor: DateTime<Utc>,
        mut left: Duration,
        mut date: NaiveDate,
        limit: u32,
        warn: &mut Warnings,
    ) -> Result<DateTime<Utc>, CalendarError> {
        for _ in 0..limit {
            for (start, end) in self.intervals(date, warn)? {
                if end <= cursor {
                    continue;
                }
                let start = start.max(cursor);
                let available = end - start;
                if left <= available {
                    return start
                        .checked_add_signed(left)
                        .ok_or(CalendarError::TooFar { from });
                }
                left -= available;
                cursor = end;
            }
            date = date.succ_opt().ok_or(CalendarError::TooFar { from })?;
        }
        Err(CalendarError::TooFar { from })
    }

    /// The working time between two instants, in either order.
    ///
    /// # Errors
    /// As for [`BusinessCalendar::add`], for the days between the two.
    ///
    /// Complexity: logarithmic when the covered and statutory years hold the days between them,
    /// else linear in the number of days between them.
    pub fn business_time_between(
        &self,
        a: DateTime<Utc>,
        b: DateTime<Utc>,
    ) -> Result<Computed<BusinessDuration>, CalendarError> {
        let (from, to) = if a <= b { (a, b) } else { (b, a) };
        let mut warn = Warnings::default();
        let mut total = Duration::zero();
        if to.signed_duration_since(from) > Duration::days(i64::from(MAX_DAYS)) {
            return Err(CalendarError::TooFar { from });
        }
        if from < to
            && let Some(total) = self.fast.between(self, from, to, &mut warn)
        {
            return Ok(Computed {
                value: BusinessDuration::new(total).unwrap_or_default(),
                warnings: warn.finish(self),
            });
        }
        if from < to {
            let last_instant = to - Duration::nanoseconds(1);
            let last = self.local_date(last_instant)?;
            let mut date = self.local_date(from)?;
            let mut days = 0;
            // Where the time counted so far ends, so that no instant is counted twice.
            let mut cursor = from;
            loop {
                for (start, end) in self.intervals(date, &mut warn)? {
                    let (start, end) = (start.max(cursor), end.min(to));
                    if start < end {
                        total += end - start;
                        cursor = end;
                    }
                }
                if date >= last {
                    break;
                }
                days += 1;
                if days > MAX_DAYS {
                    return Err(CalendarError::TooFar { from });
                }
                date = date.succ_opt().ok_or(CalendarError::TooFar { from })?;
            }
        }
        Ok(Computed {
            value: BusinessDuration::new(total).unwrap_or_default(),
            warnings: warn.finish(self),
        })
    }

    /// Whether `instant` is inside working hours.
    ///
    /// # Errors
    /// [`CalendarError::Beyond`] for a day of an uncovered year under [`Beyond::Error`],
    /// [`CalendarError::BeyondStatutory`] for one outside [`Beyond::STATUTORY_YEARS`] under
    /// [`Beyond::Statutory`].
    pub fn is_working(&self, instant: DateTime<Utc>) -> Result<Computed<bool>, CalendarError> {
        let mut warn = Warnings::default();
        if let Some(value) = self.fast.is_working(self, instant, &mut warn) {
            return Ok(Computed {
                value,
                warnings: warn.finish(self),
            });
        }
        let date = self.local_date(instant)?;
        let value = self
            .intervals(date, &mut warn)?
            .iter()
            .any(|&(s, e)| s <= instant && instant < e);
        Ok(Computed {
            value,
            warnings: warn.finish(self),
        })
    }

    /// The working hours of a local date as UTC intervals, in order.
    fn intervals(
        &self,
        date: NaiveDate,
        warn: &mut Warnings,
    ) -> Result<Vec<Interval>, CalendarError> {
        let spans: &[Span] = if self.years.contains(&date.year()) {
            if self.holidays.contains_key(&date) {
                &[]
            } else if let Some(spans) = self.makeup.get(&date) {
                spans
            } else {
                &self.week[date.weekday().num_days_from_monday() as usize]
            }
        } else {
            match self.beyond {
                Beyond::Error => {
                    return Err(CalendarError::Beyond {
                        date,
                        covered: self.years().collect(),
                    });
                }
                Beyond::WeekendsOnly => {
                    warn.insert(date.year());
                    &self.week[date.weekday().num_days_from_monday() as usize]
                }
                Beyond::Statutory => match statutory::day_off(date) {
                    None => {
                        return Err(CalendarError::BeyondStatutory {
                            date,
                            covered: self.years().collect(),
                        });
                    }
                    Some(off) => {
                        warn.insert(date.year());
                        if off.is_some() {
                            &[]
                        } else {
                            &self.week[date.weekday().num_days_from_monday() as usize]
                        }
                    }
                },
            }
        };
        let midnight = date.and_time(NaiveTime::MIN);
        let mut out = Vec::with_capacity(spans.len());
        for span in spans {
            let at = |minutes: u16| {
                midnight
                    .checked_add_signed(Duration::minutes(i64::from(minutes)))
                    .and_then(|local| self.resolve(local))
            };
            if let (Some(s), Some(e)) = (at(span.start), at(span.end))
                && s < e
            {
                out.push((s, e));
            }
        }
        Ok(out)
    }

    /// A local time as an instant. An ambiguous time (clocks set back) is the earlier instant; a
    /// skipped time (clocks set forward) keeps the offset from before the gap, so it lands as far
    /// after the gap as it was into it.
    fn resolve(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.zone.from_local_datetime(&local) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
            LocalResult::None => {
                let before = local.checked_sub_signed(Duration::days(1))?;
                let offset = self.zone.offset_from_local_datetime(&before).earliest()?;
                let seconds = i64::from(offset.fix().local_minus_utc());
                let utc = local.checked_sub_signed(Duration::seconds(seconds))?;
                Some(Utc.from_utc_datetime(&utc))
            }
        }
    }
}

/// A working interval as instants, half-open.
type Interval = (DateTime<Utc>, DateTime<Utc>);

/// A working interval of local time, in minutes since midnight; `end` may be 1440 (24:00).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u16,
    end: u16,
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

/// The uncovered years a computation used, ascending. A few are kept without allocating.
#[derive(Default)]
pub(crate) struct Warnings {
    years: SmallVec<[i32; 4]>,
}

impl Warnings {
    /// Notes that a day of `year` was used.
    fn insert(&mut self, year: i32) {
        if let Err(i) = self.years.binary_search(&year) {
            self.years.insert(i, year);
        }
    }

    /// Whether nothing was noted.
    pub(crate) fn is_empty(&self) -> bool {
        self.years.is_empty()
    }

    /// Whether `cal` counted a noted year by the statutory rule: the result is provisional, as
    /// [`Computed::is_provisional`] says of it.
    pub(crate) fn is_provisional(&self, cal: &BusinessCalendar) -> bool {
        cal.beyond == Beyond::Statutory && !self.years.is_empty()
    }

    /// The warnings for the years used, as the calendar's [`Beyond`] policy counted them.
    pub(crate) fn finish(self, cal: &BusinessCalendar) -> Vec<CalendarWarning> {
        if self.years.is_empty() {
            return Vec::new();
        }
        self.years
            .into_iter()
            .map(|year| match cal.beyond {
                Beyond::Statutory => CalendarWarning::Provisional { year },
                Beyond::Error | Beyond::WeekendsOnly => CalendarWarning::Beyond {
                    year,
                    covered: cal.years().collect(),
                },
            })
            .collect()
    }
}

/// The shipped China calendar's file.
const CHINA_YAML: &str = include_str!("../../../process-defs/calendars/china.yaml");

/// `2026`, `2026, 2027` or `no year`.
fn years_text(years: &[i32]) -> String {
    if years.is_empty() {
        return "no year".to_owned();
    }
    years
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send_sync<T: Send + Sync>() {}

    #[test]
    fn calendar_is_send_sync() {
        is_send_sync::<BusinessCalendar>();
    }

    #[test]
    fn daylight_saving_days_are_shorter_and_longer() {
        // Berlin sets clocks forward at 02:00 on 2026-03-29 and back at 03:00 on 2026-10-25.
        let cal = BusinessCalendar::from_yaml(
            r#"
zone: Europe/Berlin
hours: { sun: ["00:00-24:00"] }
years: { 2026: {} }
"#,
        )
        .unwrap();
        let day = |d: &str| {
            let date: NaiveDate = d.parse().unwrap();
            let start = cal.resolve(date.and_time(NaiveTime::MIN)).unwrap();
            let end = cal
                .resolve(date.succ_opt().unwrap().and_time(NaiveTime::MIN))
                .unwrap();
            cal.business_time_between(start, end)
                .unwrap()
                .value
                .as_duration()
        };
        assert_eq!(day("2026-03-29"), Duration::hours(23));
        assert_eq!(day("2026-10-25"), Duration::hours(25));
        assert_eq!(day("2026-10-18"), Duration::hours(24));
    }

    #[test]
    fn a_skipped_local_time_lands_after_the_gap() {
        let cal = BusinessCalendar::from_yaml(
            "zone: Europe/Berlin\nhours: { sun: [\"02:30-04:00\"] }\nyears: { 2026: {} }\n",
        )
        .unwrap();
        let local: NaiveDate = "2026-03-29".parse().unwrap();
        let start = cal.resolve(local.and_hms_opt(2, 30, 0).unwrap()).unwrap();
        // 02:30 does not exist; it is 03:30 CEST = 01:30 UTC.
        assert_eq!(start.to_rfc3339(), "2026-03-29T01:30:00+00:00");
    }
}
