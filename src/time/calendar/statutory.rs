//! The statutory public holidays of mainland China, computed for a year no State Council notice
//! has been listed for ([`Beyond::Statutory`](super::Beyond::Statutory)).
//!
//! The rule is the national law on public holidays (全国年节及纪念日放假办法) as amended on
//! 2024-11-10, in force from 2025-01-01. Its article 2 gives the days off of all citizens:
//!
//! | festival | days off |
//! |---|---|
//! | New Year 元旦 | 1 January |
//! | Spring Festival 春节 | Chinese New Year's Eve 除夕 (the last day of the 12th lunar month, the 29th or 30th) and lunar 1/1, 1/2, 1/3 |
//! | Qingming 清明节 | the day of the Qingming solar term (4 or 5 April) |
//! | Labour Day 劳动节 | 1 and 2 May |
//! | Dragon Boat 端午节 | lunar 5/5 |
//! | Mid-Autumn 中秋节 | lunar 8/15 |
//! | National Day 国庆节 | 1, 2 and 3 October |
//!
//! Its article 6 adds: a day off of all citizens that falls on a Saturday or a Sunday is made up
//! with a day off on a working day (补假). The law does not say which working day; this module
//! takes the first Monday-to-Friday day after the festival that is not already a day off, as the
//! State Council's notices do when they give a bare substitute day (2026: Qingming on Sunday 5
//! April, 6 April off; 2025: Dragon Boat on Saturday 31 May, 2 June off; 2023: New Year's Day on
//! a Sunday, 2 January off). A day that is a holiday of two festivals (Mid-Autumn on 1 to 3
//! October) counts once: the law has no rule for it.
//!
//! Not computed: the make-up swaps (调休, weekend days worked to bridge a holiday with a weekend)
//! that only the yearly State Council notice decides, under article 7.
//!
//! The lunar dates and the Qingming solar term come from the `tyme4rs` crate (the ShouXing
//! astronomical algorithms, 寿星天文历), checked against published dates for several years by
//! the tests here and in `tests/calendar.rs`. Once, for every year of the range: the Spring
//! Festival, Dragon Boat and Mid-Autumn dates agree with the table of the
//! `chinese-lunisolar-calendar` crate (an independent implementation) except the Mid-Autumn Festival of 2089 (18
//! September here, 19 there: the new moon falls within minutes of midnight, closer than the
//! uncertainty of the Earth's rotation that far ahead), and the Qingming dates agree with
//! PyEphem's solar longitude. Each year is computed once per process, on first use.

use std::sync::OnceLock;

use chrono::{Datelike, Days, NaiveDate, Weekday};
use tyme4rs::tyme::lunar::LunarDay;
use tyme4rs::tyme::solar::{SolarDay, SolarTerm};

use super::Holiday;

/// The first year the rule computes: the 2024 amendment is in force from 2025.
pub(super) const FIRST: i32 = 2025;
/// The last year the rule computes: the lunar dates are checked up to 2100.
pub(super) const LAST: i32 = 2100;

/// A festival of the law's article 2, in the order of its list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Festival {
    NewYear,
    Spring,
    Qingming,
    Labour,
    DragonBoat,
    MidAutumn,
    National,
}

impl Festival {
    const ALL: [Festival; 7] = [
        Festival::NewYear,
        Festival::Spring,
        Festival::Qingming,
        Festival::Labour,
        Festival::DragonBoat,
        Festival::MidAutumn,
        Festival::National,
    ];

    /// The English and Chinese names, as the shipped China calendar spells them.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Festival::NewYear => ("New Year", "元旦"),
            Festival::Spring => ("Spring Festival", "春节"),
            Festival::Qingming => ("Qingming Festival", "清明节"),
            Festival::Labour => ("Labour Day", "劳动节"),
            Festival::DragonBoat => ("Dragon Boat Festival", "端午节"),
            Festival::MidAutumn => ("Mid-Autumn Festival", "中秋节"),
            Festival::National => ("National Day", "国庆节"),
        }
    }
}

/// A statutory day off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DayOff {
    pub(super) date: NaiveDate,
    pub(super) festival: Festival,
    /// A working day off that makes up for a festival day on a weekend (article 6).
    pub(super) substitute: bool,
}

impl DayOff {
    /// The holiday's names: the festival's, or `... substitute day off` (`...补假`).
    pub(super) fn holiday(self) -> &'static Holiday {
        static NAMES: OnceLock<Vec<Holiday>> = OnceLock::new();
        let names = NAMES.get_or_init(|| {
            let mut names = Vec::with_capacity(2 * Festival::ALL.len());
            for substitute in [false, true] {
                for festival in Festival::ALL {
                    let (name, name_zh) = festival.names();
                    names.push(if substitute {
                        Holiday {
                            name: format!("{name} substitute day off"),
                            name_zh: Some(format!("{name_zh}补假")),
                        }
                    } else {
                        Holiday {
                            name: name.to_owned(),
                            name_zh: Some(name_zh.to_owned()),
                        }
                    });
                }
            }
            names
        });
        &names[usize::from(self.substitute) * Festival::ALL.len() + self.festival as usize]
    }
}

/// The days off of a year, ascending by date; `None` when the lunar calendar library could not
/// compute it (the tests check that it computes every year of the range).
type Year = Option<Box<[DayOff]>>;

/// The computed years, `FIRST..=LAST`, each filled on first use.
static YEARS: [OnceLock<Year>; (LAST - FIRST + 1) as usize] =
    [const { OnceLock::new() }; (LAST - FIRST + 1) as usize];

/// The statutory days off of `year`, ascending by date; `None` outside `FIRST..=LAST`.
pub(super) fn year(year: i32) -> Option<&'static [DayOff]> {
    let slot = YEARS.get(usize::try_from(year.checked_sub(FIRST)?).ok()?)?;
    slot.get_or_init(|| compute(year).map(Vec::into_boxed_slice))
        .as_deref()
}

/// Whether the statutory rule computes `year`.
pub(super) fn computes(year: i32) -> bool {
    (FIRST..=LAST).contains(&year)
}

/// The statutory day off on `date`: `None` when the rule does not compute its year, `Some(None)`
/// when it is not a day off.
pub(super) fn day_off(date: NaiveDate) -> Option<Option<DayOff>> {
    let days = year(date.year())?;
    Some(
        days.binary_search_by_key(&date, |d| d.date)
            .ok()
            .and_then(|i| days.get(i).copied()),
    )
}

/// A Gregorian date from the lunar calendar library's.
fn gregorian(day: SolarDay) -> Option<NaiveDate> {
    let year = i32::try_from(day.get_year()).ok()?;
    let month = u32::try_from(day.get_month()).ok()?;
    let day = u32::try_from(day.get_day()).ok()?;
    NaiveDate::from_ymd_opt(year, month, day)
}

/// The Gregorian date of a day of the lunar year `year` (a month that is not a leap month).
fn lunar(year: i32, month: isize, day: usize) -> Option<NaiveDate> {
    let day = LunarDay::new(isize::try_from(year).ok()?, month, day).ok()?;
    gregorian(day.get_solar_day())
}

/// The festivals' days of `year`, each festival's in order.
fn festivals(year: i32) -> Option<[(Festival, Vec<NaiveDate>); 7]> {
    if !computes(year) {
        return None;
    }
    let ymd = |m, d| NaiveDate::from_ymd_opt(year, m, d);
    let new_year = lunar(year, 1, 1)?;
    let eve = new_year.pred_opt()?;
    let spring = vec![
        eve,
        new_year,
        new_year.succ_opt()?,
        new_year.checked_add_days(Days::new(2))?,
    ];
    // Index 7 of the year's 24 terms, counted from the winter solstice before it.
    let qingming =
        gregorian(SolarTerm::from_index(isize::try_from(year).ok()?, 7).get_solar_day())?;
    Some([
        (Festival::NewYear, vec![ymd(1, 1)?]),
        (Festival::Spring, spring),
        (Festival::Qingming, vec![qingming]),
        (Festival::Labour, vec![ymd(5, 1)?, ymd(5, 2)?]),
        (Festival::DragonBoat, vec![lunar(year, 5, 5)?]),
        (Festival::MidAutumn, vec![lunar(year, 8, 15)?]),
        (
            Festival::National,
            vec![ymd(10, 1)?, ymd(10, 2)?, ymd(10, 3)?],
        ),
    ])
}

/// The statutory days off of `year`: the festivals' days and their substitute days.
fn compute(year: i32) -> Option<Vec<DayOff>> {
    let mut festivals = festivals(year)?;
    // A day of two festivals is the fixed-date festival's (National Day's before Mid-Autumn's),
    // and substitutes are given festival by festival in the order of their first days.
    festivals.sort_by_key(|(f, days)| (days.first().copied(), *f == Festival::MidAutumn));
    let mut off: Vec<DayOff> = Vec::with_capacity(24);
    let taken = |off: &[DayOff], date: NaiveDate| off.iter().any(|d| d.date == date);
    for (festival, days) in &festivals {
        for &date in days {
            if !taken(&off, date) {
                off.push(DayOff {
                    date,
                    festival: *festival,
                    substitute: false,
                });
            }
        }
    }
    let weekend = |date: NaiveDate| matches!(date.weekday(), Weekday::Sat | Weekday::Sun);
    for (festival, days) in &festivals {
        let owed = off
            .iter()
            .filter(|d| d.festival == *festival && !d.substitute && weekend(d.date))
            .count();
        let mut date = *days.iter().max()?;
        for _ in 0..owed {
            loop {
                date = date.succ_opt()?;
                if !weekend(date) && !taken(&off, date) {
                    break;
                }
            }
            off.push(DayOff {
                date,
                festival: *festival,
                substitute: true,
            });
        }
    }
    off.sort_by_key(|d| d.date);
    Some(off)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn of(year: i32, festival: Festival, substitute: bool) -> Vec<NaiveDate> {
        super::year(year)
            .unwrap()
            .iter()
            .filter(|o| o.festival == festival && o.substitute == substitute)
            .map(|o| o.date)
            .collect()
    }

    #[test]
    fn lunar_dates_and_qingming_match_the_published_ones() {
        // (year, 除夕, 春节, 清明, 端午, 中秋): the dates printed in Chinese calendars (农历), and
        // for 2025 and 2026 the State Council's notices; the independent table of the
        // chinese-lunisolar-calendar crate and PyEphem give the same.
        #[rustfmt::skip]
        let table = [
            (2025, "2025-01-28", "2025-01-29", "2025-04-04", "2025-05-31", "2025-10-06"),
            (2026, "2026-02-16", "2026-02-17", "2026-04-05", "2026-06-19", "2026-09-25"),
            (2027, "2027-02-05", "2027-02-06", "2027-04-05", "2027-06-09", "2027-09-15"),
            (2028, "2028-01-25", "2028-01-26", "2028-04-04", "2028-05-28", "2028-10-03"),
            (2029, "2029-02-12", "2029-02-13", "2029-04-04", "2029-06-16", "2029-09-22"),
            (2030, "2030-02-02", "2030-02-03", "2030-04-05", "2030-06-05", "2030-09-12"),
        ];
        for (year, eve, spring, qingming, dragon, autumn) in table {
            let spring_days = of(year, Festival::Spring, false);
            assert_eq!(spring_days[..2], [d(eve), d(spring)], "{year}");
            assert_eq!(spring_days.len(), 4, "{year}");
            assert_eq!(of(year, Festival::Qingming, false), [d(qingming)], "{year}");
            assert_eq!(of(year, Festival::DragonBoat, false), [d(dragon)], "{year}");
            // 2028's Mid-Autumn is National Day's 3 October (see below).
            assert!(day_off(d(autumn)).unwrap().is_some(), "{year}");
            if year != 2028 {
                assert_eq!(of(year, Festival::MidAutumn, false), [d(autumn)], "{year}");
            }
        }
    }

    #[test]
    fn weekend_days_are_made_up_on_the_next_working_days() {
        // 2027: the Spring Festival runs Friday 5 to Monday 8 February, two days on the weekend.
        assert_eq!(
            of(2027, Festival::Spring, true),
            [d("2027-02-09"), d("2027-02-10")]
        );
        assert_eq!(
            of(2027, Festival::Labour, true),
            [d("2027-05-03"), d("2027-05-04")]
        );
        assert_eq!(
            of(2027, Festival::National, true),
            [d("2027-10-04"), d("2027-10-05")]
        );
        assert!(of(2027, Festival::NewYear, true).is_empty());
        // 2026: Qingming on Sunday 5 April.
        assert_eq!(of(2026, Festival::Qingming, true), [d("2026-04-06")]);
        // 2028: Mid-Autumn on Tuesday 3 October is a National Day day; it counts once.
        assert!(of(2028, Festival::MidAutumn, false).is_empty());
        let national = day_off(d("2028-10-03")).unwrap().unwrap();
        assert_eq!(national.festival, Festival::National);
        assert_eq!(national.holiday().name, "National Day");
        let sub = day_off(d("2027-02-09")).unwrap().unwrap();
        assert_eq!(sub.holiday().name_zh.as_deref(), Some("春节补假"));
    }

    #[test]
    fn every_year_in_range_computes_and_nothing_outside() {
        for y in FIRST..=LAST {
            let days = year(y).unwrap();
            assert!((13..=20).contains(&days.len()), "{y}: {days:?}");
            assert!(days.windows(2).all(|w| w[0].date < w[1].date), "{y}");
            assert!(days.iter().all(|o| o.date.year() == y), "{y}");
        }
        assert_eq!(year(FIRST - 1), None);
        assert_eq!(year(LAST + 1), None);
        assert_eq!(year(i32::MIN), None);
        assert_eq!(day_off(d("2024-10-01")), None);
    }
}
