//! The covered years precomputed: every working interval of each run of consecutive covered years
//! as UTC seconds, with the cumulative working time, so that arithmetic inside them is a binary
//! search with no time-zone conversion. Under [`Beyond::Statutory`] each year the statutory rule
//! computes gets a run of its own, built on its first use and shared by the calendar's clones;
//! a computation that runs out of one run goes on in the next when it starts where the first
//! ends.
//!
//! The table holds the union of the intervals [`BusinessCalendar::intervals`] gives for the days
//! of the run, sorted and merged; resolving each local interval to UTC once is what keeps
//! daylight saving right.

use std::fmt;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Offset, TimeZone, Utc};

use super::{Beyond, BusinessCalendar, Warnings, statutory};

const NANOS: i64 = 1_000_000_000;

/// The step of [`Run::by_work`], in seconds of working time.
const WORK_STEP: i64 = 4 * 3600;

/// The precomputed runs of covered years, shared between clones of the calendar.
#[derive(Clone, Default)]
pub(super) struct Table {
    runs: Arc<[Run]>,
    /// The statutory years' runs, under [`Beyond::Statutory`].
    statutory: Option<Arc<Lazy>>,
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let built = self.statutory.iter().flat_map(|lazy| {
            lazy.slots
                .iter()
                .filter_map(|s| s.get().and_then(Option::as_ref))
        });
        f.debug_list()
            .entries(
                self.runs
                    .iter()
                    .chain(built)
                    .map(|r| (r.first, r.after, r.starts.len())),
            )
            .finish()
    }
}

/// One run per year of [`Beyond::STATUTORY_YEARS`](super::Beyond::STATUTORY_YEARS), each built
/// on its first use. A covered year's slot stays empty: its run, if any, is in [`Table::runs`].
struct Lazy {
    /// The instant each year begins, in seconds since the epoch, ascending, and last the instant
    /// the year after the last begins: slot `i` holds the instants `starts[i]..starts[i + 1]`.
    starts: Box<[i64]>,
    /// The runs, or `None` for a covered year or one whose ends the zone's rules make unclear.
    slots: Box<[OnceLock<Option<Run>>]>,
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
    /// `by_day[k]`: the number of intervals ending at or before `lo + k` days, so that a search
    /// for an instant looks at its day's few intervals only.
    by_day: Box<[u32]>,
    /// `by_work[k]`: the number of intervals whose cumulative end is below `k` times
    /// [`WORK_STEP`], so that a search for an amount of working time looks at a few only.
    by_work: Box<[u32]>,
    /// The UTC day (days since the epoch) of `lo`.
    day0: i64,
    /// The UTC date of each day from `day0` to that of `hi`: results become instants without a
    /// calendar conversion (`DateTime::from_timestamp` was a tenth of an `add`).
    dates: Box<[NaiveDate]>,
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
    /// Builds the runs of `cal`'s covered years, and the slots of its statutory years. A run
    /// whose ends the zone's rules make unclear (an offset change within two days of them) is
    /// left to the day-by-day computation.
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
        let statutory = (cal.beyond == Beyond::Statutory)
            .then(|| {
                let starts = (statutory::FIRST..=statutory::LAST.checked_add(1)?)
                    .map(|year| {
                        let first = NaiveDate::from_ymd_opt(year, 1, 1)?;
                        cal.resolve(first.and_time(NaiveTime::MIN))
                            .map(|t| t.timestamp())
                    })
                    .collect::<Option<Box<[i64]>>>()?;
                let slots = starts.iter().skip(1).map(|_| OnceLock::new()).collect();
                Some(Arc::new(Lazy { starts, slots }))
            })
            .flatten();
        Table {
            runs: runs.into(),
            statutory,
        }
    }

    /// The run whose instants contain `t`, and for a statutory year's run, its year.
    fn run(&self, cal: &BusinessCalendar, t: Exact) -> Option<(&Run, Option<i32>)> {
        if let Some(run) = self.runs.iter().find(|r| r.lo <= t.secs && t.secs < r.hi) {
            return Some((run, None));
        }
        let lazy = self.statutory.as_deref()?;
        let i = lazy
            .starts
            .partition_point(|&s| s <= t.secs)
            .checked_sub(1)?;
        let slot = lazy.slots.get(i)?;
        let year = statutory::FIRST.checked_add(i32::try_from(i).ok()?)?;
        let run = slot.get_or_init(|| {
            if cal.years.contains(&year) {
                None
            } else {
                Run::build(cal, year, year)
            }
        });
        run.as_ref().map(|run| (run, Some(year)))
    }

    /// The run that begins where `run` ends, if there is one.
    fn next(&self, cal: &BusinessCalendar, run: &Run) -> Option<(&Run, Option<i32>)> {
        self.run(
            cal,
            Exact {
                secs: run.hi,
                nanos: 0,
            },
        )
        .filter(|(next, _)| next.lo == run.hi)
    }

    /// `from + d` as [`BusinessCalendar::add`] computes it, when `from` lies in a run: `Ok` with
    /// the result, or `Err` with the end of the last run, the working time left at it, and that
    /// run (the computation goes on day by day from there). `None` when `from` is outside every
    /// run or the result would be too far for the fast path to check the day limit. The
    /// statutory years of the runs it uses go into `warn`.
    pub(super) fn add(
        &self,
        cal: &BusinessCalendar,
        from: DateTime<Utc>,
        d: Duration,
        warn: &mut Warnings,
    ) -> Option<Result<DateTime<Utc>, Rest<'_>>> {
        // Far results go day by day, which enforces the limit on the days counted.
        let far = i64::from(super::MAX_DAYS - 2) * 86_400;
        let at = Exact::of(from);
        let (mut run, mut year) = self.run(cal, at)?;
        // The working time to count from the start of `run`.
        let mut target = run.work(at).add(d)?;
        loop {
            if let Some(year) = year {
                warn.insert(year);
            }
            // The first interval whose cumulative end reaches the target: the last unit ends
            // there.
            let j = run.reaching(target);
            if let (Some(&end), Some(&cum)) = (run.ends.get(j), run.cum_end.get(j)) {
                let secs = end - (cum - target.secs);
                if secs - at.secs > far {
                    return None;
                }
                let nanos = u32::try_from(target.nanos).ok()?;
                return run.instant(secs, nanos).map(Ok);
            }
            target.secs = target.secs.checked_sub(run.total())?;
            if run.hi - at.secs > far {
                return None;
            }
            match self.next(cal, run) {
                Some((next, next_year)) => (run, year) = (next, next_year),
                None => {
                    let left = Duration::try_seconds(target.secs)?
                        .checked_add(&Duration::nanoseconds(target.nanos))?;
                    return Some(Err(Rest { run, left }));
                }
            }
        }
    }

    /// The working time between `from <= to`, when the runs from `from`'s on hold `to` and the
    /// two are close enough for the day limit not to matter. The statutory years of the runs it
    /// uses go into `warn`.
    pub(super) fn between(
        &self,
        cal: &BusinessCalendar,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        warn: &mut Warnings,
    ) -> Option<Duration> {
        let (a, b) = (Exact::of(from), Exact::of(to));
        if b.secs - a.secs > i64::from(super::MAX_DAYS - 2) * 86_400 {
            return None;
        }
        let (mut run, mut year) = self.run(cal, a)?;
        // The working time from `a` to the start of `run` (negative for the first run).
        let wa = run.work(a);
        let (mut secs, nanos) = (-wa.secs, -wa.nanos);
        loop {
            if let Some(year) = year {
                warn.insert(year);
            }
            if b.secs < run.hi || (b.secs == run.hi && b.nanos == 0) {
                let wb = run.work(b);
                return Duration::try_seconds(secs.checked_add(wb.secs)?)?
                    .checked_add(&Duration::nanoseconds(nanos + wb.nanos));
            }
            secs = secs.checked_add(run.total())?;
            (run, year) = self.next(cal, run)?;
        }
    }

    /// Whether `t` is working time, when it lies in a run. A statutory year's run puts its year
    /// into `warn`.
    pub(super) fn is_working(
        &self,
        cal: &BusinessCalendar,
        t: DateTime<Utc>,
        warn: &mut Warnings,
    ) -> Option<bool> {
        let at = Exact::of(t);
        let (run, year) = self.run(cal, at)?;
        if let Some(year) = year {
            warn.insert(year);
        }
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
        // The days are of covered years, or of statutory ones (whose warnings the table's users
        // give).
        let mut warn = Warnings::default();
        for date in first.iter_days().take_while(|d| *d < after) {
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
        let (lo_secs, hi_secs) = (lo.timestamp(), hi.timestamp());
        let count = |n: usize| u32::try_from(n).ok();
        let by_day = (0..=(hi_secs - lo_secs).div_euclid(86_400) + 2)
            .map(|k| count(ends.partition_point(|&e| e <= lo_secs + k * 86_400)))
            .collect::<Option<Box<[u32]>>>()?;
        let total = cum_end.last().copied().unwrap_or(0);
        let by_work = (0..=total.div_euclid(WORK_STEP) + 2)
            .map(|k| count(cum_end.partition_point(|&c| c < k * WORK_STEP)))
            .collect::<Option<Box<[u32]>>>()?;
        let day0 = lo.timestamp().div_euclid(86_400);
        let dates = (day0..=hi.timestamp().div_euclid(86_400))
            .map(|day| {
                DateTime::from_timestamp(day.checked_mul(86_400)?, 0).map(|t| t.date_naive())
            })
            .collect::<Option<Box<[NaiveDate]>>>()?;
        Some(Run {
            first,
            after,
            lo: lo.timestamp(),
            hi: hi.timestamp(),
            starts,
            ends,
            cum_end,
            by_day,
            by_work,
            day0,
            dates,
        })
    }

    /// The number of intervals ending at or before `t` (which lies in the run, or at its end).
    fn ended_by(&self, t: i64) -> usize {
        let k = usize::try_from((t - self.lo).div_euclid(86_400))
            .unwrap_or(0)
            .min(self.by_day.len().saturating_sub(2));
        let day = self.lo + k as i64 * 86_400;
        match (self.by_day.get(k), self.by_day.get(k + 1)) {
            (Some(&a), Some(&b)) if day <= t && t < day + 86_400 => {
                let (a, b) = (a as usize, b as usize);
                a + self.ends[a..b].partition_point(|&e| e <= t)
            }
            _ => self.ends.partition_point(|&e| e <= t),
        }
    }

    /// The first interval whose cumulative end reaches `target` working time from `lo` (the
    /// number of intervals when none does).
    fn reaching(&self, target: Exact) -> usize {
        // `c < secs || (c == secs && nanos > 0)`, on whole seconds.
        let x = target.secs.saturating_add(i64::from(target.nanos > 0));
        let k = usize::try_from(x.div_euclid(WORK_STEP))
            .unwrap_or(0)
            .min(self.by_work.len().saturating_sub(2));
        match (self.by_work.get(k), self.by_work.get(k + 1)) {
            (Some(&a), Some(&b)) if x >= 0 && x < (k as i64 + 1) * WORK_STEP => {
                let (a, b) = (a as usize, b as usize);
                a + self.cum_end[a..b].partition_point(|&c| c < x)
            }
            _ => self.cum_end.partition_point(|&c| c < x),
        }
    }

    /// The instant `secs` seconds and `nanos` nanoseconds after the epoch, for one in the run
    /// (its UTC date from the table); as `DateTime::from_timestamp` gives it.
    fn instant(&self, secs: i64, nanos: u32) -> Option<DateTime<Utc>> {
        let day = secs.div_euclid(86_400);
        let date = usize::try_from(day - self.day0)
            .ok()
            .and_then(|i| self.dates.get(i));
        match date {
            Some(date) => {
                let of_day = u32::try_from(secs.rem_euclid(86_400)).ok()?;
                let time = NaiveTime::from_num_seconds_from_midnight_opt(of_day, nanos)?;
                Some(date.and_time(time).and_utc())
            }
            None => DateTime::from_timestamp(secs, nanos),
        }
    }

    /// The working time of the whole run, in seconds.
    fn total(&self) -> i64 {
        self.cum_end.last().copied().unwrap_or(0)
    }

    /// The working time from the start of the run to `t`, which lies in the run.
    fn work(&self, t: Exact) -> Exact {
        // The first interval ending after t.
        let i = self.ended_by(t.secs);
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
            "{}",
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
                    for beyond in ["error", "weekends_only", "statutory"] {
                        if years == "{}" && beyond == "error" {
                            continue;
                        }
                        let yaml = format!(
                            "zone: {zone}\nbeyond: {beyond}\nhours: {week}\nyears: {years}\n"
                        );
                        let fast = BusinessCalendar::from_yaml(&yaml).unwrap();
                        assert!(!fast.fast.runs.is_empty() || years == "{}", "{yaml}");
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
    fn statutory_years_chain_into_one_another() {
        let cal = BusinessCalendar::from_yaml(
            "zone: Asia/Shanghai\nbeyond: statutory\nhours: { mon: [\"09:00-17:00\"], \
             tue: [\"09:00-17:00\"], wed: [\"09:00-17:00\"], thu: [\"09:00-17:00\"], \
             fri: [\"09:00-17:00\"] }\nyears: { 2026: {} }\n",
        )
        .unwrap();
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let mut warn = Warnings::default();
        // From 2026 (listed) through 2027 into 2028 (statutory) without the day-by-day walk.
        let from = t("2026-12-31T16:00:00+08:00");
        let Some(Ok(due)) = cal
            .fast
            .add(&cal, from, Duration::hours(8 * 260), &mut warn)
        else {
            panic!("not computed on the fast path");
        };
        assert_eq!(warn.years[..], [2027, 2028]);
        let slow = slow(&cal)
            .add(from, BusinessDuration::hours(8 * 260))
            .unwrap();
        assert_eq!(slow.value, due);
        assert_eq!(slow.provisional_years().collect::<Vec<_>>(), [2027, 2028]);
        let mut warn = Warnings::default();
        let between = cal
            .fast
            .between(&cal, t("2026-12-30T00:00:00+08:00"), due, &mut warn)
            .unwrap();
        // 8h on 30 December and 7h on 31 December before 16:00.
        assert_eq!(between, Duration::hours(8 * 260 + 15));
        assert_eq!(warn.years.len(), 2);
        // The statutory years' runs were built on use: 261 weekdays less 13 days off in 2027; 260
        // less 12 in 2028 (Mid-Autumn is National Day's 3 October).
        assert_eq!(
            format!("{:?}", cal.fast),
            "[(2026-01-01, 2027-01-01, 261), (2027-01-01, 2028-01-01, 248), \
             (2028-01-01, 2029-01-01, 248)]"
        );
    }

    #[test]
    fn extreme_durations_do_not_panic() {
        for beyond in ["error", "weekends_only", "statutory"] {
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
