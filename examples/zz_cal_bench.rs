//! Temporary calendar timing loop; deleted after measuring.
use std::time::Instant;

use chrono::DateTime;
use procflow::{BusinessCalendar, BusinessDuration};

fn main() {
    let cal = BusinessCalendar::from_file("process-defs/calendars/china.yaml").unwrap();
    let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00+08:00").unwrap().timestamp();
    let end = DateTime::parse_from_rfc3339("2026-12-01T00:00:00+08:00").unwrap().timestamp();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let instants: Vec<_> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            DateTime::from_timestamp(start + (x % (end - start) as u64) as i64, 0).unwrap()
        })
        .collect();
    let d = BusinessDuration::hours(4);
    for round in 0..3 {
        let t0 = Instant::now();
        let mut acc = 0i64;
        for &t in &instants {
            acc ^= cal.add(t, d).unwrap().value.timestamp();
        }
        let add = t0.elapsed().as_nanos() as f64 / instants.len() as f64;
        let t0 = Instant::now();
        for w in instants.windows(2) {
            acc ^= cal.business_time_between(w[0], w[1]).unwrap().value.as_duration().num_seconds();
        }
        let between = t0.elapsed().as_nanos() as f64 / instants.len() as f64;
        let t0 = Instant::now();
        for &t in &instants {
            acc ^= i64::from(cal.is_working(t).unwrap().value);
        }
        let working = t0.elapsed().as_nanos() as f64 / instants.len() as f64;
        println!("round {round}: add {add:.0} ns, between {between:.0} ns, is_working {working:.0} ns ({acc})");
    }
}
