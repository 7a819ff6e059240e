//! Business calendars through the public API: the shipped China calendar's edge cases as tables,
//! load errors with their locations, and proptest properties of business-time arithmetic.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use procflow::{
    Beyond, BusinessCalendar, BusinessDuration, CalendarError, CalendarWarning, DurationSpec,
    ProblemKind,
};
use proptest::prelude::*;

const CHINA: &str = "process-defs/calendars/china.yaml";

fn china() -> BusinessCalendar {
    BusinessCalendar::from_file(CHINA).expect("the shipped calendar loads")
}

/// The China calendar with `beyond: weekends_only`.
fn china_weekends_only() -> BusinessCalendar {
    let text = std::fs::read_to_string(CHINA).unwrap();
    assert!(text.contains("\nbeyond: error\n"));
    BusinessCalendar::from_yaml(&text.replace("\nbeyond: error\n", "\nbeyond: weekends_only\n"))
        .unwrap()
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
    let day = |s: &str| s.parse::<NaiveDate>().unwrap();
    let national = cal.holiday(day("2026-10-03")).unwrap();
    assert_eq!(
        (national.name.as_str(), national.name_zh.as_deref()),
        ("National Day", Some("国庆节"))
    );
    assert_eq!(cal.holiday(day("2026-10-10")), None);
    assert_eq!(cal.years().collect::<Vec<_>>(), [2026]);
    assert_eq!(cal.beyond(), Beyond::Error);
}

#[test]
fn a_year_boundary_with_beyond_error_fails() {
    let cal = china();
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
/// 2026, in a zone with or without daylight saving, counting weekends only beyond 2026.
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
    (zone, week, dates, makeup).prop_map(|(zone, week, holidays, makeup)| {
        let hhmm = |half_hours: u16| format!("{:02}:{:02}", half_hours / 2, half_hours % 2 * 30);
        let spans = |points: &std::collections::BTreeSet<u16>| {
            let points: Vec<u16> = points.iter().copied().collect();
            points
                .chunks_exact(2)
                .map(|p| format!("\"{}-{}\"", hhmm(p[0]), hhmm(p[1])))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut yaml = format!("zone: {zone}\nbeyond: weekends_only\nhours:\n");
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
