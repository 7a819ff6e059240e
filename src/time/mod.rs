//! Time: durations (`4h`, `PT4H`, `8h business`) and business calendars (working hours,
//! holidays, make-up days), and the arithmetic between them.
//!
//! **Invariant:** this layer knows nothing of definitions or instances; it reads YAML only
//! through [`crate::yaml`].

pub(crate) mod calendar;
pub(crate) mod duration;
