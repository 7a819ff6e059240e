//! Time, injected: the engine reads the time only from a [`Clock`], so tests and simulations
//! control it.

use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock. This is the engine's default.
///
/// On Linux and FreeBSD it reads the coarse real-time clock (`CLOCK_REALTIME_COARSE`): the time
/// of the last scheduler tick, 1 to 4 ms behind, read in a few nanoseconds where the precise
/// clock takes tens (a fifth of an engine call's cost was reading it). Audit records, deadlines
/// and SLAs count minutes and hours; records of one instance keep their order whatever their
/// timestamps. Elsewhere it reads the precise clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    fn now(&self) -> DateTime<Utc> {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
        // The kernel keeps `tv_nsec` below 1e9, so `from_timestamp` fails only past chrono's
        // range (year 262,143), where the precise clock is as good an answer as any.
        u32::try_from(t.tv_nsec)
            .ok()
            .and_then(|nanos| DateTime::from_timestamp(t.tv_sec, nanos))
            .unwrap_or_else(Utc::now)
    }

    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to: for tests and simulations.
///
/// # Examples
/// ```
/// use procflow::{Clock, ManualClock};
/// let clock = ManualClock::new("2026-11-23T09:00:00Z".parse()?);
/// clock.advance(chrono::Duration::hours(4));
/// assert_eq!(clock.now().to_rfc3339(), "2026-11-23T13:00:00+00:00");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> ManualClock {
        ManualClock {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock forward (or back, for a negative duration). Never panics: a move past the
    /// last (or before the first) instant `chrono` can hold stops there; see
    /// [`ManualClock::checked_advance`] to refuse such a move instead.
    ///
    /// # Examples
    /// ```
    /// use procflow::{Clock, ManualClock};
    /// let clock = ManualClock::new("2026-11-23T09:00:00Z".parse()?);
    /// clock.advance(chrono::Duration::days(99_999_999));
    /// assert_eq!(clock.now(), chrono::DateTime::<chrono::Utc>::MAX_UTC);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now = now
            .checked_add_signed(by)
            .unwrap_or(if by < Duration::zero() {
                DateTime::<Utc>::MIN_UTC
            } else {
                DateTime::<Utc>::MAX_UTC
            });
    }

    /// Moves the clock by `by` and gives the new time, or leaves it and gives `None` when the
    /// result would be out of the range `chrono` can hold (about 262,000 years either side of
    /// year 0).
    ///
    /// # Examples
    /// ```
    /// use procflow::{Clock, ManualClock};
    /// let clock = ManualClock::new("2026-11-23T09:00:00Z".parse()?);
    /// assert_eq!(clock.checked_advance(chrono::Duration::days(99_999_999)), None);
    /// assert_eq!(clock.now().to_rfc3339(), "2026-11-23T09:00:00+00:00");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn checked_advance(&self, by: Duration) -> Option<DateTime<Utc>> {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        let to = now.checked_add_signed(by)?;
        *now = to;
        Some(to)
    }

    /// Sets the clock.
    pub fn set(&self, to: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now(&self) -> DateTime<Utc> {
        (**self).now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_the_wall_clock_within_its_resolution() {
        let (before, now, after) = (Utc::now(), SystemClock.now(), Utc::now());
        // The coarse clock lags the precise one by at most a scheduler tick (a few ms).
        assert!(now <= after, "{now} after {after}");
        assert!(
            before - now < Duration::milliseconds(100),
            "{now} far before {before}"
        );
    }
}
