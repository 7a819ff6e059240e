//! The covered years precomputed: every working interval of each run of consecutive covered years
//! as UTC seconds, with the cumulative working time, so that arithmetic inside them is a binary
//! search with no time-zone conversion.
//!
//! The table holds the union of the intervals [`BusinessCalendar::intervals`] gives for the days
//! of the run, sorted and merged; resolving each local interval to UTC once at load time is what
//! keeps daylight saving right.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, Offset, TimeZone, Utc};

use super::{BusinessCalendar, Warnings};

const NANOS: i64 = 1_000_000_000;

/// The precomputed runs of covered years, shared between clones of the calendar.
#[derive(Clone, Default)]
pub(super) struct Table {
    runs: Arc<[Run]>,
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.runs.iter().map(|r| (r.first, r.after, r.starts.len())))
            .finish()
    }
}

/// Consecutive covered years: the instants `lo..hi` and their working intervals.
pub(super) struct Run {
    /// The first local day of the run.
    first: NaiveDate,
    /// The first local day after the run.
    after: NaiveDate,
    /// The instant the first day begins, in seconds since the epoch.
    lo: i64,
    /// The instant the day after the run begins, in seconds since the epoch.
    hi: i64,
    /// Interval starts, ascending; intervals are disjoint and not adjacent.
    starts: Vec<i64>,
    /// Interval ends, ascending.
    ends: Vec<i64>,
    /// Working seconds from `lo` to the end of each interval.
    cum_end: Vec<i64>,
}

/// An instant as whole seconds and nanoseconds, `0 <= nanos < 1e9`.
#[derive(Clone, Copy)]
struct Exact {
    secs: i64,
    nanos: i64,
}

impl Exact {
    fn of(t: DateTime<Utc>) -> Exact {
        Exact {
            secs: t.timestamp(),
            nanos: i64::from(t.timestamp_subsec_nanos()),
        }
    }

    fn add(self, d: Duration) -> Option<Exact> {
        let nanos = self.nanos + i64::from(d.subsec_nanos());
        let secs = self
            .secs
            .checked_add(d.num_seconds())?
            .checked_add(nanos.div_euclid(NANOS))?;
        Some(Exact {
            secs,
            nanos: nanos.rem_euclid(NANOS),
        })
    }
}

impl Table {
    /// Builds the runs of `cal`'s covered years. A run whose ends the zone's rules make unclear
    /// (an offset change within two days of them) is left to the day-by-day computation.
    pub(super) fn build(cal: &BusinessCalendar) -> Table {
        let years: Vec<i32> = cal.years().collect();
        let mut runs = Vec::new();
        let mut i = 0;
        while i < years.len() {
            let mut j = i;
            while j + 1 < years.len() && years[j + 1] == years[j] + 1 {
                j += 1;
            }
            if let Some(run) = Run::build(cal, years[i], years[j]) {
                runs.push(run);
            }
            i = j + 1;
        }
        Table { runs: runs.into() }
    }

    /// The run whose instants contain `t`.
    fn run(&self, t: Exact) -> Option<&Run> {
        self.runs.iter().find(|r| r.lo <= t.secs && t.secs < r.hi)
    }

    /// `from + d` as [`BusinessCalendar::add`] computes it, when `from` lies in a run: `Ok` with
    /// the result, or `Err` with the end of the run, the working time left at it, and the run
    /// (the computation goes on day by day from there). `None` when `from` is outside every run
    /// or the result would be too far for the fast path to check the day limit.
    pub(super) fn add(
        &self,
        from: DateTime<Utc>,
        d: Duration,
    ) -> Option<Result<DateTime<Utc>, Rest<'_>>> {
        let at = Exact::of(from);
        let run = self.run(at)?;
        let target = run.work(at).add(d)?;
        let total = run.cum_end.last().copied().unwrap_or(0);
        // The first interval whose cumulative end reaches the target: the last unit ends there.
        let j = run
            .cum_end
            .partition_point(|&c| c < target.secs || (c == target.secs && target.nanos > 0));
        let (Some(&end), Some(&cum)) = (run.ends.get(j), run.cum_end.get(j)) else {
            let left = Duration::try_seconds(target.secs.checked_sub(total)?)?
                .checked_add(&Duration::nanoseconds(target.nanos))?;
            return Some(Err(Rest { run, left }));
        };
        let secs = end - (cum - target.secs);
        // Far results go day by day, which enforces the limit on the days counted.
        if secs - at.secs > i64::from(super::MAX_DAYS - 2) * 86_400 {
            return None;
        }
        let nanos = u32::try_from(target.nanos).ok()?;
        DateTime::from_timestamp(secs, nanos).map(Ok)
    }

    /// The working time between `from <= to`, when both lie in one run and are close enough for
    /// the day limit not to matter.
    pub(super) fn between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Option<Duration> {
        let (a, b) = (Exact::of(from), Exact::of(to));
        let run = self.run(a)?;
        if b.secs > run.hi || (b.secs == run.hi && b.nanos > 0) {
            return None;
        }
        if b.secs - a.secs > i64::from(super::MAX_DAYS - 2) * 86_400 {
            return None;
        }
        let (wa, wb) = (run.work(a), run.work(b));
        Duration::try_seconds(wb.secs - wa.secs)?
            .checked_add(&Duration::nanoseconds(wb.nanos - wa.nanos))
    }

    /// Whether `t` is working time, when it lies in a run.
    pub(super) fn is_working(&self, t: DateTime<Utc>) -> Option<bool> {
        let at = Exact::of(t);
        let run = self.run(at)?;
        let i = run.starts.partition_point(|&s| s <= at.secs);
        Some(i > 0 && run.ends.get(i - 1).is_some_and(|&e| at.secs < e))
    }
}

/// Where a fast `add` ran out of its run.
pub(super) struct Rest<'a> {
    /// The run.
    pub(super) run: &'a Run,
    /// The working time still to count from the run's end.
    pub(super) left: Duration,
}

impl Run {
    fn build(cal: &BusinessCalendar, first_year: i32, last_year: i32) -> Option<Run> {
        let first = NaiveDate::from_ymd_opt(first_year, 1, 1)?;
        let after = NaiveDate::from_ymd_opt(last_year.checked_add(1)?, 1, 1)?;
        let lo = cal.resolve(first.and_time(NaiveTime::MIN))?;
        let hi = cal.resolve(after.and_time(NaiveTime::MIN))?;
        let stable = |t: DateTime<Utc>| {
            let offset = |t: DateTime<Utc>| cal.zone.offset_from_utc_datetime(&t.naive_utc()).fix();
            match (
                t.checked_sub_signed(Duration::days(2)),
                t.checked_add_signed(Duration::days(2)),
            ) {
                (Some(a), Some(b)) => offset(a) == offset(b),
                _ => false,
            }
        };
        if !stable(lo) || !stable(hi) {
            return None;
        }
        let mut intervals: Vec<(i64, i64)> = Vec::new();
        let mut warn = Warnings::default();
        for date in first.iter_days().take_while(|d| *d < after) {
            debug_assert!(cal.years.contains(&date.year()));
            for (s, e) in cal.intervals(date, &mut warn).ok()? {
                if s.timestamp_subsec_nanos() != 0 || e.timestamp_subsec_nanos() != 0 {
                    return None;
                }
                intervals.push((s.timestamp(), e.timestamp()));
            }
        }
        intervals.sort_unstable();
        let (mut starts, mut ends, mut cum_end) = (Vec::new(), Vec::new(), Vec::new());
        let mut total = 0i64;
        for (s, e) in intervals {
            // Only the part inside the run: outside it the day-by-day rules apply.
            let (s, e) = (s.max(lo.timestamp()), e.min(hi.timestamp()));
            if s >= e {
                continue;
            }
            match ends.last_mut() {
                Some(last) if s <= *last => {
                    if e > *last {
                        total += e - *last;
                        *last = e;
                    }
                }
                _ => {
                    starts.push(s);
                    ends.push(e);
                    total += e - s;
                }
            }
            if let Some(c) = cum_end.get_mut(starts.len() - 1) {
                *c = total;
            } else {
                cum_end.push(total);
            }
        }
        Some(Run {
            first,
            after,
            lo: lo.timestamp(),
            hi: hi.timestamp(),
            starts,
            ends,
            cum_end,
        })
    }

    /// The working time from the start of the run to `t`, which lies in the run.
    fn work(&self, t: Exact) -> Exact {
        // The first interval ending after t.
        let i = self.ends.partition_point(|&e| e <= t.secs);
        let (Some(&start), Some(&end), Some(&cum)) =
            (self.starts.get(i), self.ends.get(i), self.cum_end.get(i))
        else {
            return Exact {
                secs: self.cum_end.last().copied().unwrap_or(0),
                nanos: 0,
            };
        };
        let before = cum - (end - start);
        if start <= t.secs {
            Exact {
                secs: before + (t.secs - start),
                nanos: t.nanos,
            }
        } else {
            Exact {
                secs: before,
                nanos: 0,
            }
        }
    }

    /// The instant the day after the run begins.
    pub(super) fn end(&self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(self.hi, 0)
    }

    /// The first local day after the run.
    pub(super) fn after(&self) -> NaiveDate {
        self.after
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::duration::BusinessDuration;

    /// The same calendar computing day by day only.
    fn slow(cal: &BusinessCalendar) -> BusinessCalendar {
        let mut slow = cal.clone();
        slow.fast = Table::default();
        slow
    }

    #[test]
    fn the_table_agrees_with_the_day_by_day_computation() {
        let zones = [
            "Asia/Shanghai",
            "Europe/Berlin",
            "America/New_York",
            "Australia/Lord_Howe",
            "America/Santiago",
            "UTC",
        ];
        let weeks = [
            "{ mon: [\"09:00-12:00\", \"13:00-18:00\"], fri: [\"09:00-17:00\"], \
             sun: [\"01:00-02:30\", \"03:00-04:00\", \"23:00-24:00\"] }",
            "{ sat: [\"00:00-24:00\"], sun: [\"00:00-24:00\"], wed: [\"02:00-02:30\"] }",
        ];
        let years = [
            "{ 2026: { holidays: [{ from: 2026-10-01, to: 2026-10-07, name: X }], \
             makeup_days: [{ date: 2026-10-10, hours: [\"00:00-24:00\"] }] } }",
            "{ 2026: {}, 2027: { holidays: [{ date: 2027-03-28, name: Y }] } }",
            "{ 2026: {}, 2028: {} }",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let lo = DateTime::parse_from_rfc3339("2025-12-20T00:00:00Z")
            .unwrap()
            .timestamp();
        for zone in zones {
            for week in weeks {
                for years in years {
                    for beyond in ["error", "weekends_only"] {
                        let yaml = format!(
                            "zone: {zone}\nbeyond: {beyond}\nhours: {week}\nyears: {years}\n"
                        );
                        let fast = BusinessCalendar::from_yaml(&yaml).unwrap();
                        assert!(!fast.fast.runs.is_empty(), "{yaml}");
                        let slow = slow(&fast);
                        for _ in 0..150 {
                            let secs = lo + next(3 * 366 * 86_400) as i64;
                            let nanos = if next(2) == 0 {
                                0
                            } else {
                                next(1_000_000_000) as u32
                            };
                            let t = DateTime::from_timestamp(secs, nanos).unwrap();
                            let d = BusinessDuration::new(
                                Duration::seconds(next(300 * 3600) as i64)
                                    + Duration::nanoseconds(next(3) as i64 * 250_000_000),
                            )
                            .unwrap();
                            let u = DateTime::from_timestamp(
                                secs + next(60 * 86_400) as i64,
                                next(1_000_000_000) as u32,
                            )
                            .unwrap();
                            let why = format!("{yaml}{t} + {d} / {u}");
                            assert_eq!(fast.add(t, d), slow.add(t, d), "{why}");
                            assert_eq!(
                                fast.business_time_between(t, u),
                                slow.business_time_between(t, u),
                                "{why}"
                            );
                            assert_eq!(fast.is_working(t), slow.is_working(t), "{why}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn extreme_durations_do_not_panic() {
        for beyond in ["error", "weekends_only"] {
            let cal = BusinessCalendar::from_yaml(&format!(
                "zone: Europe/Berlin\nbeyond: {beyond}\nhours: {{ mon: [\"09:00-17:00\"] }}\n\
                 years: {{ 2026: {{}} }}\n"
            ))
            .unwrap();
            let t = DateTime::parse_from_rfc3339("2026-06-01T10:00:00.5Z")
                .unwrap()
                .to_utc();
            let huge = BusinessDuration::new(Duration::MAX).unwrap();
            assert!(cal.add(t, huge).is_err());
            assert_eq!(cal.add(t, huge), slow(&cal).add(t, huge));
        }
    }

    #[test]
    fn clones_share_the_table() {
        let cal = BusinessCalendar::from_yaml(
            "zone: UTC\nhours: { mon: [\"09:00-17:00\"] }\nyears: { 2026: {} }\n",
        )
        .unwrap();
        let copy = cal.clone();
        assert!(Arc::ptr_eq(&cal.fast.runs, &copy.fast.runs));
        assert_eq!(format!("{:?}", cal.fast), "[(2026-01-01, 2027-01-01, 52)]");
    }
}
