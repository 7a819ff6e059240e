//! The calendar file: YAML DTOs (through [`crate::yaml::parse_yaml`], the one YAML reader) and
//! their checks, collecting every problem with its location.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Datelike, NaiveDate};
use chrono_tz::Tz;
use serde::Deserialize;

use super::{Beyond, BusinessCalendar, Holiday, Span};
use crate::yaml::{At, Entries, Location, Problem, ProblemKind, parse_yaml};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalendar {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    name_zh: Option<String>,
    #[serde(default)]
    #[allow(dead_code)] // Documentation for readers of the file.
    description: Option<String>,
    zone: At<String>,
    #[serde(default)]
    beyond: Option<At<RawBeyond>>,
    hours: At<RawWeek>,
    #[serde(default)]
    years: Entries<RawYear>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawBeyond {
    Error,
    WeekendsOnly,
    Statutory,
}

type RawHours = At<Vec<At<String>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeek {
    #[serde(default)]
    mon: Option<RawHours>,
    #[serde(default)]
    tue: Option<RawHours>,
    #[serde(default)]
    wed: Option<RawHours>,
    #[serde(default)]
    thu: Option<RawHours>,
    #[serde(default)]
    fri: Option<RawHours>,
    #[serde(default)]
    sat: Option<RawHours>,
    #[serde(default)]
    sun: Option<RawHours>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawYear {
    #[serde(default)]
    #[allow(dead_code)] // Documentation for readers of the file.
    source: Option<String>,
    #[serde(default)]
    holidays: Vec<At<RawHoliday>>,
    #[serde(default)]
    makeup_days: Vec<At<RawMakeup>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHoliday {
    #[serde(default)]
    date: Option<At<String>>,
    #[serde(default)]
    from: Option<At<String>>,
    #[serde(default)]
    to: Option<At<String>>,
    name: String,
    #[serde(default)]
    name_zh: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMakeup {
    date: At<String>,
    #[serde(default)]
    #[allow(dead_code)] // Documentation for readers of the file.
    name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)] // Documentation for readers of the file.
    name_zh: Option<String>,
    #[serde(default)]
    hours: Option<RawHours>,
}

/// Collects problems while the calendar is built.
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn report(&mut self, loc: Location, path: impl Into<String>, kind: ProblemKind) {
        self.problems.push(Problem {
            location: Some(loc),
            path: path.into(),
            kind,
        });
    }

    fn date(&mut self, at: &At<String>, path: &str, year: i32) -> Option<NaiveDate> {
        let Some(date) = parse_date(&at.value) else {
            self.report(at.loc, path, ProblemKind::BadDate(at.value.clone()));
            return None;
        };
        if date.year() != year {
            self.report(
                at.loc,
                path,
                ProblemKind::BadCalendar(format!(
                    "{date} is not in {year}; list it under its own year"
                )),
            );
            return None;
        }
        Some(date)
    }

    fn hours(&mut self, hours: &RawHours, path: &str) -> Vec<Span> {
        let mut out: Vec<Span> = Vec::new();
        for (i, text) in hours.value.iter().enumerate() {
            let path = format!("{path}[{i}]");
            let Some(span) = parse_span(&text.value) else {
                self.report(text.loc, path, ProblemKind::BadHours(text.value.clone()));
                continue;
            };
            if let Some(prev) = out.last()
                && span.start < prev.end
            {
                self.report(
                    text.loc,
                    path,
                    ProblemKind::BadCalendar(format!(
                        "working hours '{}' overlap or come before '{prev}'; list them in order \
                         without overlap",
                        text.value
                    )),
                );
                continue;
            }
            out.push(span);
        }
        out
    }
}

pub(super) fn load(text: &str) -> Result<BusinessCalendar, Vec<Problem>> {
    let raw = parse_yaml::<RawCalendar>(text).map_err(|p| vec![p])?;
    let mut c = Checker {
        problems: Vec::new(),
    };

    let zone = match raw.zone.value.parse::<Tz>() {
        Ok(zone) => zone,
        Err(_) => {
            c.report(
                raw.zone.loc,
                "zone",
                ProblemKind::UnknownZone(raw.zone.value.clone()),
            );
            Tz::UTC
        }
    };

    let w = &raw.hours.value;
    let days = [
        ("mon", &w.mon),
        ("tue", &w.tue),
        ("wed", &w.wed),
        ("thu", &w.thu),
        ("fri", &w.fri),
        ("sat", &w.sat),
        ("sun", &w.sun),
    ];
    let mut week: [Vec<Span>; 7] = Default::default();
    for (slot, (key, hours)) in week.iter_mut().zip(days) {
        if let Some(hours) = hours {
            *slot = c.hours(hours, &format!("hours.{key}"));
        }
    }
    let week_is_valid = c.problems.is_empty();
    if week_is_valid && week.iter().all(Vec::is_empty) {
        c.report(
            raw.hours.loc,
            "hours",
            ProblemKind::BadCalendar("the week has no working hours".to_owned()),
        );
    }
    // A make-up day works the Monday-to-Friday hours when those are all the same.
    let makeup_default = week[..5]
        .iter()
        .all(|d| *d == week[0])
        .then(|| week[0].clone())
        .filter(|d| !d.is_empty());

    let beyond = match raw.beyond.as_ref().map(|b| b.value) {
        None | Some(RawBeyond::Error) => Beyond::Error,
        Some(RawBeyond::WeekendsOnly) => Beyond::WeekendsOnly,
        Some(RawBeyond::Statutory) => Beyond::Statutory,
    };

    let mut years = BTreeSet::new();
    let mut year_at = BTreeMap::new();
    let mut seen: BTreeMap<NaiveDate, Location> = BTreeMap::new();
    let mut holidays = BTreeMap::new();
    let mut names = Vec::new();
    let mut makeup = BTreeMap::new();
    for (key, entry) in &raw.years.0 {
        let Some(year) = key
            .value
            .parse::<i32>()
            .ok()
            .filter(|y| (1..=9999).contains(y))
        else {
            c.report(
                key.loc,
                format!("years.{}", key.value),
                ProblemKind::BadCalendar(format!(
                    "invalid year '{}': use a four-digit year such as 2026",
                    key.value
                )),
            );
            continue;
        };
        if let Some(first) = year_at.insert(year, key.loc) {
            c.report(
                key.loc,
                format!("years.{year}"),
                ProblemKind::BadCalendar(format!("year {year} is listed twice (first at {first})")),
            );
            continue;
        }
        years.insert(year);
        let mut once = |c: &mut Checker, date: NaiveDate, loc: Location, path: &str| {
            if let Some(first) = seen.get(&date) {
                c.report(
                    loc,
                    path,
                    ProblemKind::BadCalendar(format!("{date} is listed twice (first at {first})")),
                );
                false
            } else {
                seen.insert(date, loc);
                true
            }
        };

        for (i, h) in entry.value.holidays.iter().enumerate() {
            let path = format!("years.{year}.holidays[{i}]");
            let h_loc = h.loc;
            let h = &h.value;
            let (first, last) = match (&h.date, &h.from, &h.to) {
                (Some(date), None, None) => {
                    let d = c.date(date, &format!("{path}.date"), year);
                    (d.map(|d| (d, date.loc)), d)
                }
                (None, Some(from), Some(to)) => {
                    let f = c.date(from, &format!("{path}.from"), year);
                    let t = c.date(to, &format!("{path}.to"), year);
                    if let (Some(f), Some(t)) = (f, t)
                        && t < f
                    {
                        c.report(
                            to.loc,
                            format!("{path}.to"),
                            ProblemKind::BadCalendar(format!(
                                "the range ends ({t}) before it starts ({f})"
                            )),
                        );
                        continue;
                    }
                    (f.map(|f| (f, from.loc)), t)
                }
                _ => {
                    c.report(
                        h_loc,
                        path,
                        ProblemKind::BadCalendar(
                            "a holiday needs either 'date' or both 'from' and 'to'".to_owned(),
                        ),
                    );
                    continue;
                }
            };
            let (Some((first, loc)), Some(last)) = (first, last) else {
                continue;
            };
            let index = names.len();
            names.push(Holiday {
                name: h.name.clone(),
                name_zh: h.name_zh.clone(),
            });
            for date in first.iter_days().take_while(|d| *d <= last) {
                if once(&mut c, date, loc, &path) {
                    holidays.insert(date, index);
                }
            }
        }

        for (i, m) in entry.value.makeup_days.iter().enumerate() {
            let path = format!("years.{year}.makeup_days[{i}]");
            let date = c.date(&m.value.date, &format!("{path}.date"), year);
            let hours = match &m.value.hours {
                Some(hours) => {
                    let spans = c.hours(hours, &format!("{path}.hours"));
                    if spans.is_empty() && !hours.value.is_empty() {
                        continue; // Already reported.
                    }
                    if spans.is_empty() {
                        c.report(
                            hours.loc,
                            format!("{path}.hours"),
                            ProblemKind::BadCalendar(
                                "a make-up working day needs working hours".to_owned(),
                            ),
                        );
                        continue;
                    }
                    spans
                }
                None => match &makeup_default {
                    Some(spans) => spans.clone(),
                    None => {
                        if week_is_valid {
                            c.report(
                                m.loc,
                                path,
                                ProblemKind::BadCalendar(
                                    "monday to friday do not all have the same hours, so a \
                                     make-up day needs its own 'hours'"
                                        .to_owned(),
                                ),
                            );
                        }
                        continue;
                    }
                },
            };
            if let Some(date) = date
                && once(&mut c, date, m.value.date.loc, &format!("{path}.date"))
            {
                makeup.insert(date, hours);
            }
        }
    }

    if years.is_empty() && beyond == Beyond::Error {
        c.problems.push(Problem {
            location: raw.beyond.as_ref().map(|b| b.loc),
            path: "years".to_owned(),
            kind: ProblemKind::BadCalendar(
                "no year is covered, so 'beyond: error' fails every computation; add a year or \
                 set 'beyond: weekends_only' or 'beyond: statutory'"
                    .to_owned(),
            ),
        });
    }

    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    let mut cal = BusinessCalendar {
        name: raw.name,
        name_zh: raw.name_zh,
        file: None,
        zone,
        week,
        years,
        holidays,
        names,
        makeup,
        beyond,
        fast: Default::default(),
    };
    cal.fast = super::fast::Table::build(&cal);
    Ok(cal)
}

/// `YYYY-MM-DD`, exactly.
fn parse_date(text: &str) -> Option<NaiveDate> {
    let b = text.as_bytes();
    let shape = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape {
        return None;
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

/// `HH:MM-HH:MM`, with the end after the start; `24:00` only as an end.
fn parse_span(text: &str) -> Option<Span> {
    let (start, end) = text.split_once('-')?;
    let start = parse_time(start.trim())?;
    let end = parse_time(end.trim())?;
    (start < end && start < 1440).then_some(Span { start, end })
}

/// `HH:MM` as minutes since midnight, up to `24:00`.
fn parse_time(text: &str) -> Option<u16> {
    let (h, m) = text.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    if !h.bytes().chain(m.bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (h, m) = (h.parse::<u16>().ok()?, m.parse::<u16>().ok()?);
    let minutes = h * 60 + m;
    (m < 60 && minutes <= 1440).then_some(minutes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(Option<String>, String, ProblemKind)> {
        match load(text) {
            Ok(_) => Vec::new(),
            Err(problems) => problems
                .into_iter()
                .map(|p| (p.location.map(|l| l.to_string()), p.path, p.kind))
                .collect(),
        }
    }

    macro_rules! bad {
        ($text:expr, $( ($loc:expr, $path:expr, $kind:expr) ),* $(,)?) => {
            assert_eq!(
                kinds($text),
                vec![$( ($loc.map(str::to_owned), $path.to_owned(), $kind) ),*]
            );
        };
    }

    const WEEK: &str = "hours: { mon: [\"09:00-12:00\", \"13:00-18:00\"] }\n";

    #[test]
    fn spans() {
        assert_eq!(
            parse_span("09:00-12:00"),
            Some(Span {
                start: 540,
                end: 720
            })
        );
        assert_eq!(
            parse_span("9:00 - 12:30"),
            Some(Span {
                start: 540,
                end: 750
            })
        );
        assert_eq!(
            parse_span("00:00-24:00"),
            Some(Span {
                start: 0,
                end: 1440
            })
        );
        for bad in [
            "12:00-09:00",
            "09:00-09:00",
            "24:00-24:00",
            "9-12",
            "09:60-10:00",
            "x",
        ] {
            assert_eq!(parse_span(bad), None, "{bad}");
        }
    }

    #[test]
    fn dates() {
        assert_eq!(
            parse_date("2026-10-01"),
            NaiveDate::from_ymd_opt(2026, 10, 1)
        );
        for bad in ["2026-02-30", "2026-1-1", "26-01-01", "2026/01/01", ""] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn problems_have_locations() {
        use ProblemKind::*;
        bad!(
            &format!("zone: Asia/Shangai\n{WEEK}years: {{ 2026: {{}} }}\n"),
            (Some("1:7"), "zone", UnknownZone("Asia/Shangai".into())),
        );
        bad!(
            "zone: UTC\nhours:\n  mon: [\"09:00-12:00\", \"11:00-13:00\", \"9-5\"]\nyears: { 2026: {} }\n",
            (
                Some("3:24"),
                "hours.mon[1]",
                BadCalendar(
                    "working hours '11:00-13:00' overlap or come before '09:00-12:00'; list them \
                     in order without overlap"
                        .into()
                )
            ),
            (Some("3:39"), "hours.mon[2]", BadHours("9-5".into())),
        );
        bad!(
            &format!(
                "zone: UTC\n{WEEK}years:\n  2026:\n    holidays:\n      - {{ from: 2026-10-07, to: 2026-10-01, name: X }}\n      - {{ date: 2025-12-31, name: Y }}\n      - {{ date: 2026-13-01, name: Z }}\n      - {{ name: W }}\n"
            ),
            (
                Some("6:33"),
                "years.2026.holidays[0].to",
                BadCalendar("the range ends (2026-10-01) before it starts (2026-10-07)".into())
            ),
            (
                Some("7:17"),
                "years.2026.holidays[1].date",
                BadCalendar("2025-12-31 is not in 2026; list it under its own year".into())
            ),
            (
                Some("8:17"),
                "years.2026.holidays[2].date",
                BadDate("2026-13-01".into())
            ),
            (
                Some("9:9"),
                "years.2026.holidays[3]",
                BadCalendar("a holiday needs either 'date' or both 'from' and 'to'".into())
            ),
        );
        bad!(
            &format!(
                "zone: UTC\n{WEEK}years:\n  2026:\n    holidays: [{{ from: 2026-10-01, to: 2026-10-03, name: X }}]\n    makeup_days: [{{ date: 2026-10-02, hours: [\"09:00-10:00\"] }}]\n  2026: {{}}\n  twenty: {{}}\n"
            ),
            (
                Some("6:27"),
                "years.2026.makeup_days[0].date",
                BadCalendar("2026-10-02 is listed twice (first at 5:24)".into())
            ),
            (
                Some("7:3"),
                "years.2026",
                BadCalendar("year 2026 is listed twice (first at 4:3)".into())
            ),
            (
                Some("8:3"),
                "years.twenty",
                BadCalendar("invalid year 'twenty': use a four-digit year such as 2026".into())
            ),
        );
    }

    #[test]
    fn whole_calendar_problems() {
        use ProblemKind::*;
        bad!(
            "zone: UTC\nhours: { sat: [] }\nyears: { 2026: {} }\n",
            (
                Some("2:8"),
                "hours",
                BadCalendar("the week has no working hours".into())
            ),
        );
        bad!(
            &format!("zone: UTC\n{WEEK}"),
            (
                None,
                "years",
                BadCalendar(
                    "no year is covered, so 'beyond: error' fails every computation; add a year \
                     or set 'beyond: weekends_only' or 'beyond: statutory'"
                        .into()
                )
            ),
        );
        assert!(kinds(&format!("zone: UTC\nbeyond: weekends_only\n{WEEK}")).is_empty());
        assert!(kinds(&format!("zone: UTC\nbeyond: statutory\n{WEEK}")).is_empty());
        bad!(
            "zone: UTC\nhours: { mon: [\"09:00-17:00\"], fri: [\"09:00-15:00\"] }\nyears:\n  2026:\n    makeup_days: [{ date: 2026-10-10 }]\n",
            (
                Some("5:19"),
                "years.2026.makeup_days[0]",
                BadCalendar(
                    "monday to friday do not all have the same hours, so a make-up day needs its \
                     own 'hours'"
                        .into()
                )
            ),
        );
        assert!(
            kinds("zone: UTC\nhours: { mon: [\"09:00-17:00\"], fri: [\"09:00-15:00\"] }\nyears:\n  2026:\n    makeup_days: [{ date: 2026-10-10, hours: [\"10:00-12:00\"] }]\n")
                .is_empty()
        );
    }

    #[test]
    fn shape_errors_are_syntax_problems() {
        let problems = kinds("zone: UTC\nhours: { mon: [] }\nbeyond: sometimes\n");
        assert_eq!(problems.len(), 1);
        assert!(
            matches!(problems[0].2, ProblemKind::Syntax(_)),
            "{problems:?}"
        );
        assert_eq!(problems[0].0.as_deref(), Some("3:9"));
    }
}
