//! Business calendars through the public API: the shipped China calendar's edge cases as tables,
//! its statutory (provisional) years, load errors with their locations, and proptest properties
//! of business-time arithmetic.

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use procflow::{
    Beyond, BusinessCalendar, BusinessDuration, CalendarError, CalendarWarning, DurationSpec,
    ProblemKind,
};
use proptest::prelude::*;

const CHINA: &str = "process-defs/calendars/china.yaml";

fn china() -> BusinessCalendar {
    BusinessCalendar::from_file(CHINA).expect("the shipped calendar loads")
}

/// The China calendar with another `beyond:` than the shipped `statutory`.
fn china_beyond(beyond: &str) -> BusinessCalendar {
    let text = std::fs::read_to_string(CHINA).unwrap();
    assert!(text.contains("\nbeyond: statutory\n"));
    BusinessCalendar::from_yaml(
        &text.replace("\nbeyond: statutory\n", &format!("\nbeyond: {beyond}\n")),
    )
    .unwrap()
}

/// The China calendar with `beyond: weekends_only`.
fn china_weekends_only() -> BusinessCalendar {
    china_beyond("weekends_only")
}

/// A calendar with the China calendar's hours and no listed year: every day is statutory.
fn statutory_only() -> BusinessCalendar {
    let text = std::fs::read_to_string(CHINA).unwrap();
    let text = &text[..text.find("\nyears:\n").unwrap()];
    BusinessCalendar::from_yaml(text).unwrap()
}

fn day(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .to_utc()
}

fn business(s: &str) -> BusinessDuration {
    match DurationSpec::parse(s).unwrap() {
        DurationSpec::Business(b) => b,
        DurationSpec::Wall(_) => panic!("{s} is not business time"),
    }
}

#[test]
fn add_on_the_china_calendar() {
    let cal = china();
    #[rustfmt::skip]
    let table = [
        // (from, business duration, expected in +08:00, why)
        ("2026-11-20T17:00:00+08:00", "4h business", "2026-11-23T12:00:00+08:00", "friday 17:00: 1h on friday, 3h on monday morning"),
        ("2026-11-20T17:00:00+08:00", "5h business", "2026-11-23T14:00:00+08:00", "friday 17:00, ending after monday's lunch"),
        ("2026-11-20T17:00:00+08:00", "1h business", "2026-11-20T18:00:00+08:00", "ends exactly at closing"),
        ("2026-11-23T07:30:00+08:00", "1h business", "2026-11-23T10:00:00+08:00", "before opening: counts from 09:00"),
        ("2026-11-23T00:00:00+08:00", "30m business", "2026-11-23T09:30:00+08:00", "midnight: counts from 09:00"),
        ("2026-11-23T19:00:00+08:00", "1h business", "2026-11-24T10:00:00+08:00", "after closing: counts from the next opening"),
        ("2026-11-23T18:00:00+08:00", "3h business", "2026-11-24T12:00:00+08:00", "at closing: the next morning"),
        ("2026-11-23T18:00:00+08:00", "4h business", "2026-11-24T14:00:00+08:00", "at closing: 3h next morning, 1h after lunch"),
        ("2026-11-23T11:30:00+08:00", "1h business", "2026-11-23T13:30:00+08:00", "across the lunch break"),
        ("2026-11-23T12:15:00+08:00", "30m business", "2026-11-23T13:30:00+08:00", "starting in the lunch break"),
        ("2026-11-23T11:00:00+08:00", "1h business", "2026-11-23T12:00:00+08:00", "ends exactly at lunch"),
        ("2026-11-23T10:00:00+08:00", "8h business", "2026-11-24T10:00:00+08:00", "one full working day later"),
        ("2026-11-23T10:00:00+08:00", "40h business", "2026-11-30T10:00:00+08:00", "one working week later"),
        ("2026-11-21T10:00:00+08:00", "1h business", "2026-11-23T10:00:00+08:00", "an ordinary saturday is off"),
        ("2026-09-30T16:00:00+08:00", "4h business", "2026-10-08T11:00:00+08:00", "national day: 2h on 30 sep, 1-7 oct off, 2h on 8 oct"),
        ("2026-10-09T17:00:00+08:00", "2h business", "2026-10-10T10:00:00+08:00", "make-up saturday 10 oct works"),
        ("2026-10-10T17:00:00+08:00", "2h business", "2026-10-12T10:00:00+08:00", "sunday 11 oct stays off"),
        ("2026-09-19T10:00:00+08:00", "1h business", "2026-09-20T10:00:00+08:00", "make-up sunday 20 sep works"),
        ("2026-09-24T17:00:00+08:00", "2h business", "2026-09-28T10:00:00+08:00", "mid-autumn 25-27 sep off"),
        ("2026-02-13T17:00:00+08:00", "2h business", "2026-02-14T10:00:00+08:00", "spring festival make-up saturday"),
        ("2026-02-14T17:00:00+08:00", "2h business", "2026-02-24T10:00:00+08:00", "spring festival 15-23 feb off"),
        ("2026-01-01T10:00:00+08:00", "1h business", "2026-01-04T10:00:00+08:00", "new year off, make-up sunday 4 jan"),
        ("2026-09-30T08:00:00Z", "4h business", "2026-10-08T11:00:00+08:00", "input in utc"),
        ("2026-09-30T03:00:00-05:00", "4h business", "2026-10-08T11:00:00+08:00", "input in -05:00"),
        ("2026-09-30T21:45:00+13:45", "4h business", "2026-10-08T11:00:00+08:00", "input in +13:45"),
        ("2026-11-23T10:00:00.5+08:00", "30m business", "2026-11-23T10:30:00.500+08:00", "fractions of a second are kept"),
        ("2026-11-21T10:00:00+08:00", "0s business", "2026-11-21T10:00:00+08:00", "zero returns the start, even off hours"),
        ("2026-11-23T10:00:00+08:00", "PT1H30M business", "2026-11-23T11:30:00+08:00", "iso 8601"),
    ];
    for (from, d, want, why) in table {
        let got = cal
            .add(t(from), business(d))
            .unwrap_or_else(|e| panic!("{why}: {e}"));
        assert_eq!(cal.rfc3339(got.value), want, "{why}: {from} + {d}");
        assert!(got.warnings.is_empty(), "{why}: {:?}", got.warnings);
    }
}

#[test]
fn local_time_is_in_the_zone() {
    let cal = china();
    assert_eq!(cal.zone(), chrono_tz::Asia::Shanghai);
    let local = cal.local(t("2026-10-08T03:00:00Z"));
    assert_eq!(local.to_rfc3339(), "2026-10-08T11:00:00+08:00");
}

#[test]
fn business_time_between_on_the_china_calendar() {
    let cal = china();
    #[rustfmt::skip]
    let table = [
        ("2026-11-20T17:00:00+08:00", "2026-11-23T12:00:00+08:00", "4h business"),
        ("2026-11-23T12:00:00+08:00", "2026-11-20T17:00:00+08:00", "4h business"),
        ("2026-09-30T16:00:00+08:00", "2026-10-08T11:00:00+08:00", "4h business"),
        ("2026-11-23T12:00:00+08:00", "2026-11-23T13:00:00+08:00", "0s business"),
        ("2026-11-23T11:00:00+08:00", "2026-11-23T14:00:00+08:00", "2h business"),
        ("2026-11-21T00:00:00+08:00", "2026-11-23T00:00:00+08:00", "0s business"),
        ("2026-11-23T00:00:00+08:00", "2026-11-30T00:00:00+08:00", "40h business"),
        ("2026-10-01T00:00:00+08:00", "2026-10-11T00:00:00+08:00", "24h business"),
        ("2026-12-31T00:00:00+08:00", "2027-01-01T00:00:00+08:00", "8h business"),
        ("2026-11-23T10:00:00+08:00", "2026-11-23T10:00:00+08:00", "0s business"),
    ];
    for (a, b, want) in table {
        let got = cal.business_time_between(t(a), t(b)).unwrap();
        assert_eq!(got.value, business(want), "{a} .. {b}");
        assert!(got.warnings.is_empty());
    }
}

#[test]
fn is_working_on_the_china_calendar() {
    let cal = china();
    #[rustfmt::skip]
    let table = [
        ("2026-11-23T09:00:00+08:00", true),
        ("2026-11-23T08:59:59+08:00", false),
        ("2026-11-23T11:59:59+08:00", true),
        ("2026-11-23T12:00:00+08:00", false),
        ("2026-11-23T13:00:00+08:00", true),
        ("2026-11-23T18:00:00+08:00", false),
        ("2026-11-21T10:00:00+08:00", false),
        ("2026-10-01T10:00:00+08:00", false),
        ("2026-10-10T10:00:00+08:00", true),
        ("2026-09-20T10:00:00+08:00", true),
        ("2026-11-23T02:00:00Z", true),
    ];
    for (at, want) in table {
        assert_eq!(cal.is_working(t(at)).unwrap().value, want, "{at}");
    }
    let national = cal.holiday(day("2026-10-03")).unwrap();
    assert_eq!(
        (national.name.as_str(), national.name_zh.as_deref()),
        ("National Day", Some("国庆节"))
    );
    assert_eq!(cal.holiday(day("2026-10-10")), None);
    assert_eq!(cal.years().collect::<Vec<_>>(), [2026]);
    assert_eq!(cal.beyond(), Beyond::Statutory);
}

#[test]
fn a_year_boundary_with_beyond_error_fails() {
    let cal = china_beyond("error");
    assert_eq!(cal.beyond(), Beyond::Error);
    let from = t("2026-12-31T17:00:00+08:00");
    let err = cal.add(from, BusinessDuration::hours(8)).unwrap_err();
    assert_eq!(
        err,
        CalendarError::Beyond {
            date: "2027-01-01".parse().unwrap(),
            covered: vec![2026],
        }
    );
    assert_eq!(
        err.to_string(),
        "2027-01-01 is outside the years the calendar covers (2026); add that year's holidays \
         and make-up days, or set 'beyond: weekends_only'"
    );
    // What fits before the boundary still computes.
    let got = cal.add(from, BusinessDuration::hours(1)).unwrap();
    assert_eq!(cal.rfc3339(got.value), "2026-12-31T18:00:00+08:00");
    assert!(cal.is_working(t("2025-12-31T10:00:00+08:00")).is_err());
    assert!(
        cal.business_time_between(from, t("2027-01-02T00:00:00+08:00"))
            .is_err()
    );
}

#[test]
fn a_year_boundary_with_weekends_only_warns() {
    let cal = china_weekends_only();
    assert_eq!(cal.beyond(), Beyond::WeekendsOnly);
    let from = t("2026-12-31T17:00:00+08:00");
    // 1h on 31 Dec, then 1 Jan 2027 (a Friday) counts as an ordinary weekday.
    let got = cal.add(from, BusinessDuration::hours(8)).unwrap();
    assert_eq!(cal.rfc3339(got.value), "2027-01-01T17:00:00+08:00");
    assert_eq!(
        got.warnings,
        [CalendarWarning::Beyond {
            year: 2027,
            covered: vec![2026],
        }]
    );
    assert_eq!(
        got.warnings[0].to_string(),
        "ran past 2026, used weekday hours only for 2027"
    );
    // Inside the covered year there is no warning.
    let got = cal.add(from, BusinessDuration::hours(1)).unwrap();
    assert!(got.warnings.is_empty());
    let between = cal
        .business_time_between(from, t("2027-01-04T10:00:00+08:00"))
        .unwrap();
    assert_eq!(between.value, BusinessDuration::hours(10));
    assert_eq!(between.warnings.len(), 1);
}

#[test]
fn a_deadline_into_2027_skips_new_year_and_is_provisional() {
    let cal = china();
    assert!(cal.is_provisional(2027));
    assert!(!cal.is_provisional(2026));
    let from = t("2026-12-31T16:00:00+08:00");
    // Thursday 31 Dec: 16:00-18:00 is 2h. Friday 1 Jan 2027 is New Year's Day, 2-3 Jan the
    // weekend; Monday 4 Jan: 09:00-12:00 and 13:00-16:00 are the other 6h.
    let due = cal.add(from, BusinessDuration::hours(8)).unwrap();
    assert_eq!(cal.rfc3339(due.value), "2027-01-04T16:00:00+08:00");
    assert!(due.is_provisional());
    assert_eq!(due.provisional_years().collect::<Vec<_>>(), [2027]);
    assert_eq!(due.warnings, [CalendarWarning::Provisional { year: 2027 }]);
    assert_eq!(
        due.warnings[0].to_string(),
        "provisional: 2027 computed from the statutory holidays, no State Council notice yet"
    );
    // What fits in 2026 is not provisional, up to the last working instant of the year.
    let in_2026 = cal.add(from, BusinessDuration::hours(2)).unwrap();
    assert_eq!(cal.rfc3339(in_2026.value), "2026-12-31T18:00:00+08:00");
    assert!(!in_2026.is_provisional());
    assert!(in_2026.warnings.is_empty());
    // The other computations say so too.
    let between = cal.business_time_between(from, due.value).unwrap();
    assert_eq!(between.value, BusinessDuration::hours(8));
    assert!(between.is_provisional());
    let new_year = cal.is_working(t("2027-01-01T10:00:00+08:00")).unwrap();
    assert!(!new_year.value);
    assert!(new_year.is_provisional());
    assert!(
        cal.is_working(t("2027-01-04T10:00:00+08:00"))
            .unwrap()
            .value
    );
    assert!(
        !cal.is_working(t("2026-12-31T10:00:00+08:00"))
            .unwrap()
            .is_provisional()
    );
    // The same through a duration spec, as the engine computes deadlines.
    let spec = DurationSpec::parse("8h business").unwrap();
    assert_eq!(spec.after(from, Some(&cal)), Ok(due));
}

#[test]
fn statutory_holidays_of_several_years() {
    let cal = china();
    #[rustfmt::skip]
    let table = [
        // (date, holiday): lunar dates and Qingming as Chinese calendars (农历) print them;
        // substitute days by the law's article 6.
        ("2027-01-01", Some("New Year")),
        ("2027-02-04", None),
        ("2027-02-05", Some("Spring Festival")), // 除夕, Friday
        ("2027-02-06", Some("Spring Festival")), // lunar 1/1, Saturday
        ("2027-02-08", Some("Spring Festival")), // lunar 1/3, Monday
        ("2027-02-09", Some("Spring Festival substitute day off")), // for Saturday
        ("2027-02-10", Some("Spring Festival substitute day off")), // for Sunday
        ("2027-02-11", None),
        ("2027-04-05", Some("Qingming Festival")),
        ("2027-05-01", Some("Labour Day")),
        ("2027-05-03", Some("Labour Day substitute day off")),
        ("2027-05-04", Some("Labour Day substitute day off")),
        ("2027-05-05", None),
        ("2027-06-09", Some("Dragon Boat Festival")),
        ("2027-09-15", Some("Mid-Autumn Festival")),
        ("2027-10-01", Some("National Day")),
        ("2027-10-05", Some("National Day substitute day off")),
        ("2027-10-06", None),
        ("2028-01-25", Some("Spring Festival")), // 除夕
        ("2028-01-26", Some("Spring Festival")),
        ("2028-04-04", Some("Qingming Festival")),
        ("2028-05-28", Some("Dragon Boat Festival")),
        ("2028-10-03", Some("National Day")), // also Mid-Autumn: one day off
        ("2028-10-04", Some("National Day substitute day off")), // for Sunday 1 October
        ("2028-10-05", None),
        ("2029-02-12", Some("Spring Festival")), // 除夕
        ("2029-02-13", Some("Spring Festival")),
        ("2029-04-04", Some("Qingming Festival")),
        ("2029-06-16", Some("Dragon Boat Festival")),
        ("2029-09-22", Some("Mid-Autumn Festival")),
        ("2030-02-02", Some("Spring Festival")), // 除夕
        ("2030-02-03", Some("Spring Festival")),
        ("2030-04-05", Some("Qingming Festival")),
        ("2030-06-05", Some("Dragon Boat Festival")),
        ("2030-09-12", Some("Mid-Autumn Festival")),
    ];
    for (date, want) in table {
        let got = cal.holiday(day(date)).map(|h| h.name.as_str());
        assert_eq!(got, want, "{date}");
    }
    let eve = cal.holiday(day("2027-02-05")).unwrap();
    assert_eq!(eve.name_zh.as_deref(), Some("春节"));
    let sub = cal.holiday(day("2027-02-09")).unwrap();
    assert_eq!(sub.name_zh.as_deref(), Some("春节补假"));
    // No weekend day becomes a working day: the make-up swaps are the notice's to decide.
    assert!(
        !cal.is_working(t("2027-02-20T10:00:00+08:00"))
            .unwrap()
            .value
    );
}

/// The 2025 State Council notice's holidays (国务院办公厅关于2025年部分节假日安排的通知,
/// 2024-11-12), inclusive ranges.
const NOTICE_2025: [(&str, &str); 6] = [
    ("2025-01-01", "2025-01-01"),
    ("2025-01-28", "2025-02-04"),
    ("2025-04-04", "2025-04-06"),
    ("2025-05-01", "2025-05-05"),
    ("2025-05-31", "2025-06-02"),
    ("2025-10-01", "2025-10-08"),
];

#[test]
fn statutory_days_lie_within_the_published_notices() {
    // Each notice gives at least the law's days off, substitute days included; the statutory
    // rule must not invent one the notice does not have.
    let statutory = statutory_only();
    let china = china();
    let in_2025 = |date: NaiveDate| {
        NOTICE_2025
            .iter()
            .any(|&(from, to)| day(from) <= date && date <= day(to))
    };
    for (year, count) in [(2025, 14), (2026, 16)] {
        let days: Vec<NaiveDate> = day(&format!("{year}-01-01"))
            .iter_days()
            .take_while(|d| d.year() == year)
            .filter(|&d| statutory.holiday(d).is_some())
            .collect();
        assert_eq!(days.len(), count, "{year}: {days:?}");
        for date in days {
            let published = if year == 2025 {
                in_2025(date)
            } else {
                china.holiday(date).is_some()
            };
            assert!(published, "{date} is not a holiday in the {year} notice");
        }
    }
    // 2026: Qingming on Sunday 5 April; the notice's 6 April is the law's substitute day.
    assert_eq!(
        statutory
            .holiday(day("2026-04-06"))
            .map(|h| h.name.as_str()),
        Some("Qingming Festival substitute day off")
    );
    // The 除夕 of 2025 and 2026 were the 29th of the 12th lunar month.
    assert!(statutory.holiday(day("2025-01-28")).is_some());
    assert!(statutory.holiday(day("2026-02-16")).is_some());
    assert!(statutory.holiday(day("2026-02-15")).is_none());
}

#[test]
fn adding_the_notice_makes_a_year_not_provisional() {
    let text = std::fs::read_to_string(CHINA).unwrap();
    let with_2027 = format!(
        "{text}  2027:\n    holidays:\n      - {{ from: 2027-01-01, to: 2027-01-03, name: New Year }}\n    makeup_days:\n      - {{ date: 2027-01-09 }}\n"
    );
    let updated = BusinessCalendar::from_yaml(&with_2027).unwrap();
    assert_eq!(updated.years().collect::<Vec<_>>(), [2026, 2027]);
    assert!(!updated.is_provisional(2027));
    assert!(updated.is_provisional(2028));
    assert_ne!(updated, china());
    let from = t("2026-12-31T16:00:00+08:00");
    let due = updated.add(from, BusinessDuration::hours(8)).unwrap();
    assert_eq!(updated.rfc3339(due.value), "2027-01-04T16:00:00+08:00");
    assert!(!due.is_provisional());
    // The listed year's make-up Saturday works; the statutory rule has none.
    let saturday = t("2027-01-09T10:00:00+08:00");
    assert!(updated.is_working(saturday).unwrap().value);
    assert!(!china().is_working(saturday).unwrap().value);
}

#[test]
fn the_built_in_china_calendar_is_the_file() {
    let built_in = BusinessCalendar::china();
    let file = china();
    assert_eq!(built_in, file);
    assert_eq!(built_in.file(), None);
    assert_eq!(file.file(), Some(std::path::Path::new(CHINA)));
    assert_eq!(built_in.name(), Some("China (mainland)"));
    assert_ne!(built_in, china_beyond("error"));
    let from = t("2026-09-30T16:00:00+08:00");
    let d = BusinessDuration::hours(4);
    assert_eq!(built_in.add(from, d), file.add(from, d));
}

#[test]
fn statutory_years_end_in_an_error() {
    let cal = china();
    assert_eq!(Beyond::STATUTORY_YEARS, 2025..=2100);
    assert!(!cal.is_provisional(2024));
    assert!(!cal.is_provisional(2101));
    assert_eq!(
        cal.is_working(t("2024-06-03T10:00:00+08:00")),
        Err(CalendarError::BeyondStatutory {
            date: day("2024-06-03"),
            covered: vec![2026],
        })
    );
    let err = cal
        .add(t("2100-12-31T20:00:00+08:00"), BusinessDuration::hours(1))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "2101-01-01 is outside the years the calendar covers (2026) and the years its statutory \
         rule computes (2025 to 2100); add that year's holidays and make-up days"
    );
    assert!(
        cal.business_time_between(
            t("2024-12-31T00:00:00+08:00"),
            t("2025-01-02T00:00:00+08:00")
        )
        .is_err()
    );
    // Within the rule's years, long computations chain through them.
    let far = cal
        .add(
            t("2026-06-01T09:00:00+08:00"),
            BusinessDuration::hours(8 * 248 * 70),
        )
        .unwrap();
    assert!(far.is_provisional());
    assert_eq!(far.provisional_years().next(), Some(2027));
    // About 70 working years of 248 days later.
    let year = cal.local(far.value).year();
    assert!((2094..=2098).contains(&year), "{year}");
}

#[test]
fn duration_specs_count_on_the_calendar() {
    let cal = china();
    let from = t("2026-09-30T16:00:00+08:00");
    let due = |s: &str| {
        let got = DurationSpec::parse(s)
            .unwrap()
            .after(from, Some(&cal))
            .unwrap();
        cal.rfc3339(got.value)
    };
    assert_eq!(due("4h business"), "2026-10-08T11:00:00+08:00");
    assert_eq!(due("4h"), "2026-09-30T20:00:00+08:00");
    assert_eq!(due("P2D"), "2026-10-02T16:00:00+08:00");
    assert_eq!(
        DurationSpec::parse("4h business")
            .unwrap()
            .after(from, None),
        Err(CalendarError::NoCalendar)
    );
}

#[test]
fn load_errors_name_the_file_line_and_column() {
    let dir = std::env::temp_dir().join(format!("procflow-calendar-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "zone: Mars/Olympus\nhours:\n  mon: [\"09:00-12:00\", \"9-17\"]\nyears:\n  2026:\n    holidays:\n      - { date: 2026-02-30, name: Nope }\n",
    )
    .unwrap();
    let err = BusinessCalendar::from_file(&file).unwrap_err();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        err.kinds(),
        [
            &ProblemKind::UnknownZone("Mars/Olympus".into()),
            &ProblemKind::BadHours("9-17".into()),
            &ProblemKind::BadDate("2026-02-30".into()),
        ]
    );
    let shown = err.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    let f = file.display();
    assert_eq!(
        lines,
        [
            format!(
                "{f}:1:7: zone: unknown time zone 'Mars/Olympus': use an IANA name such as 'Asia/Shanghai'"
            ),
            format!(
                "{f}:3:24: hours.mon[1]: invalid working hours '9-17': use HH:MM-HH:MM with the end after the start, e.g. '09:00-12:00'"
            ),
            format!(
                "{f}:7:17: years.2026.holidays[0].date: invalid date '2026-02-30': use YYYY-MM-DD"
            ),
        ]
    );
}

#[test]
fn shape_errors_have_a_location() {
    let err =
        BusinessCalendar::from_yaml("zone: UTC\nhours: { mon: [] }\nholidays: []\n").unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert!(matches!(err.problems[0].kind, ProblemKind::Syntax(_)));
    assert_eq!(err.problems[0].location.map(|l| l.line), Some(3));
    let missing = BusinessCalendar::from_file("process-defs/calendars/missing.yaml").unwrap_err();
    assert!(matches!(missing.problems[0].kind, ProblemKind::Io(_)));
}

#[test]
fn nothing_panics_at_the_ends_of_time() {
    let statutory = china();
    let end = DateTime::<Utc>::MAX_UTC;
    let huge = BusinessDuration::new(Duration::days(365 * 1000)).unwrap();
    for from in [end - Duration::days(2), DateTime::<Utc>::MIN_UTC] {
        assert!(statutory.add(from, huge).is_err());
        assert!(statutory.add(from, BusinessDuration::hours(100)).is_err());
    }
    assert!(statutory.add(t("2026-01-05T09:00:00+08:00"), huge).is_err());
    assert!(
        statutory
            .business_time_between(DateTime::<Utc>::MIN_UTC, end)
            .is_err()
    );
    assert_eq!(
        statutory.is_working(end),
        Err(CalendarError::OutOfRange(end))
    );
    let cal = china_weekends_only();
    let end = DateTime::<Utc>::MAX_UTC;
    assert!(matches!(
        cal.add(end - Duration::days(2), BusinessDuration::hours(100)),
        Err(CalendarError::TooFar { .. })
    ));
    assert!(matches!(
        cal.add(
            t("2026-01-05T09:00:00+08:00"),
            BusinessDuration::new(Duration::days(365 * 1000)).unwrap()
        ),
        Err(CalendarError::TooFar { .. })
    ));
    assert!(matches!(
        cal.business_time_between(DateTime::<Utc>::MIN_UTC, end),
        Err(CalendarError::TooFar { .. })
    ));
    assert_eq!(cal.is_working(end), Err(CalendarError::OutOfRange(end)));
    assert!(cal.is_working(DateTime::<Utc>::MIN_UTC).is_ok());
    assert!(cal.rfc3339(end).ends_with("+00:00"));
}

/// An instant in 2026 (Asia/Shanghai) up to 1 December, so that 150 business hours stay in 2026.
fn instant_2026() -> impl Strategy<Value = DateTime<Utc>> {
    let start = t("2026-01-01T00:00:00+08:00").timestamp();
    let end = t("2026-12-01T00:00:00+08:00").timestamp();
    (start..end, prop_oneof![Just(0u32), 0u32..1_000_000_000])
        .prop_map(|(s, ns)| DateTime::from_timestamp(s, ns).unwrap())
}

/// An instant from 2026 (Asia/Shanghai) up to 1 December 2028.
fn instant_2026_to_2028() -> impl Strategy<Value = DateTime<Utc>> {
    let start = t("2026-01-01T00:00:00+08:00").timestamp();
    let end = t("2028-12-01T00:00:00+08:00").timestamp();
    (start..end, prop_oneof![Just(0u32), 0u32..1_000_000_000])
        .prop_map(|(s, ns)| DateTime::from_timestamp(s, ns).unwrap())
}

/// Up to 75 business hours, often whole quarter hours so that results land on boundaries.
fn duration() -> impl Strategy<Value = BusinessDuration> {
    prop_oneof![
        (0u32..=300).prop_map(|q| BusinessDuration::minutes(q * 15)),
        (0u32..=75 * 3600).prop_map(BusinessDuration::seconds),
    ]
}

fn sum(a: BusinessDuration, b: BusinessDuration) -> BusinessDuration {
    a.checked_add(b).unwrap()
}

/// Checks the laws of business-time addition on one calendar.
fn laws(
    cal: &BusinessCalendar,
    t: DateTime<Utc>,
    a: BusinessDuration,
    b: BusinessDuration,
) -> Result<(), TestCaseError> {
    let ta = cal.add(t, a).unwrap().value;
    let tab = cal.add(t, sum(a, b)).unwrap().value;
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    prop_assert!(cal.add(t, lo).unwrap().value <= cal.add(t, hi).unwrap().value);
    prop_assert!(ta >= t);
    prop_assert_eq!(cal.add(ta, b).unwrap().value, tab);
    prop_assert_eq!(cal.business_time_between(t, ta).unwrap().value, a);
    prop_assert_eq!(cal.business_time_between(ta, t).unwrap().value, a);
    prop_assert_eq!(cal.business_time_between(ta, tab).unwrap().value, b);
    if a > BusinessDuration::ZERO {
        // The last unit of time counted was working time.
        prop_assert!(cal.is_working(ta - Duration::nanoseconds(1)).unwrap().value);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn china_add_is_monotonic_and_additive(t in instant_2026(), a in duration(), b in duration()) {
        let cal = china();
        laws(&cal, t, a, b)?;
        prop_assert!(cal.add(t, sum(a, b)).unwrap().warnings.is_empty());
    }

    #[test]
    fn china_add_is_monotonic_and_additive_in_statutory_years(
        t in instant_2026_to_2028(),
        a in duration(),
        b in duration(),
    ) {
        let cal = china();
        laws(&cal, t, a, b)?;
        let got = cal.add(t, a).unwrap();
        if a > BusinessDuration::ZERO {
            // Provisional exactly when a day after 2026 was used: the days from t to the result.
            let year = cal.rfc3339(got.value)[..4].parse::<i32>().unwrap();
            prop_assert_eq!(got.is_provisional(), year > 2026);
        }
    }

    #[test]
    fn random_calendars_add_is_monotonic_and_additive(
        yaml in random_calendar(),
        t in instant_2026(),
        a in duration(),
        b in duration(),
    ) {
        let cal = BusinessCalendar::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        laws(&cal, t, a, b)?;
    }
}

/// A calendar with random weekly hours (at least one interval), holidays and make-up days in
/// 2026, in a zone with or without daylight saving, counting weekends only or the statutory
/// holidays beyond 2026.
fn random_calendar() -> impl Strategy<Value = String> {
    let zone = prop::sample::select(vec![
        "Asia/Shanghai",
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",
        "America/Santiago",
        "UTC",
    ]);
    let day = prop::collection::btree_set(0u16..=48, 0..=6);
    let week = prop::collection::vec(day, 7);
    let dates = prop::collection::btree_set(0u32..365, 0..=40);
    let makeup = prop::collection::btree_set(0u32..365, 0..=10);
    let beyond = prop::sample::select(vec!["weekends_only", "statutory"]);
    (zone, week, dates, makeup, beyond).prop_map(|(zone, week, holidays, makeup, beyond)| {
        let hhmm = |half_hours: u16| format!("{:02}:{:02}", half_hours / 2, half_hours % 2 * 30);
        let spans = |points: &std::collections::BTreeSet<u16>| {
            let points: Vec<u16> = points.iter().copied().collect();
            points
                .chunks_exact(2)
                .map(|p| format!("\"{}-{}\"", hhmm(p[0]), hhmm(p[1])))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut yaml = format!("zone: {zone}\nbeyond: {beyond}\nhours:\n");
        let mut any = false;
        for (name, points) in ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
            .iter()
            .zip(&week)
        {
            let s = spans(points);
            any |= !s.is_empty();
            yaml += &format!("  {name}: [{s}]\n");
        }
        if !any {
            yaml += "  # no hours drawn; one interval added\n";
            yaml = yaml.replace("  mon: []", "  mon: [\"09:00-17:00\"]");
        }
        let date = |n: u32| NaiveDate::from_yo_opt(2026, n + 1).unwrap();
        yaml += "years:\n  2026:\n    holidays:\n";
        for n in &holidays {
            yaml += &format!("      - {{ date: {}, name: h{n} }}\n", date(*n));
        }
        yaml += "    makeup_days:\n";
        for n in makeup.difference(&holidays) {
            yaml += &format!(
                "      - {{ date: {}, hours: [\"10:00-15:30\"] }}\n",
                date(*n)
            );
        }
        yaml.replace("holidays:\n    makeup", "holidays: []\n    makeup")
            .trim_end_matches("    makeup_days:\n")
            .to_owned()
    })
}
