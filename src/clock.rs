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
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
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
