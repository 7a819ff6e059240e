//! Time limits, compiled: deadlines, reminders, escalation ladders, timeouts and timer waits.
//!
//! Durations are checked at load time; a duration computed from variables is a CEL expression
//! compiled at load time and evaluated when its timer is armed.

use std::fmt;

use indexmap::IndexMap;

use super::raw::{At, Names, RawAction, RawDuration, RawEscalate, RawHow, RawRemind};
use super::{Location, Problem, ProblemKind};
use crate::cond::Condition;
use crate::ids::RoleId;
use crate::time::duration::DurationSpec;
use crate::vars::VarSpec;
use crate::yaml::DurationError;

/// The most reminders of one task or SLA: the executor keeps a reminder's index in a `u8`.
pub(crate) const MAX_REMINDERS: usize = 64;

/// The most escalation levels of one task or SLA: the executor keeps a level in a `u8`.
pub(crate) const MAX_ESCALATIONS: usize = 64;

/// The largest `max` of an `urge` level. With [`MIN_URGE_EVERY`], a task urges at most 100 times
/// per level, one tick at most 100 minutes' worth of urges late.
pub(crate) const MAX_URGES: u32 = 100;

/// The shortest `every` of an `urge` level: one minute.
pub(crate) const MIN_URGE_EVERY: chrono::Duration = chrono::Duration::minutes(1);

/// [`MIN_URGE_EVERY`] as the YAML writes it, for messages.
const MIN_URGE_EVERY_TEXT: &str = "1m";

// The executor narrows reminder indexes and escalation levels to `u8`.
const _: () = assert!(MAX_REMINDERS <= u8::MAX as usize + 1);
const _: () = assert!(MAX_ESCALATIONS <= u8::MAX as usize + 1);

/// A duration: fixed in the YAML or computed from the instance's variables, counted on the
/// process calendar unless it names its own.
#[derive(Debug)]
pub(crate) struct Span {
    how: How,
    calendar: Option<String>,
    /// The shortest the duration may be, with its text for messages (an `urge` level's `every`).
    min: Option<(chrono::Duration, &'static str)>,
}

/// Why a duration could not be computed for an instance: [`Span::evaluate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SpanError {
    /// The expression failed, or gave something other than text.
    Eval(String),
    /// The expression gave text that is not a duration.
    NotDuration {
        /// The expression, cut short.
        expr: String,
        /// What is wrong with the text.
        error: DurationError,
    },
    /// The expression gave a negative duration, such as `-5h`.
    Negative {
        /// The expression, cut short.
        expr: String,
        /// The text it gave, cut short.
        text: String,
    },
    /// The duration is shorter than allowed here (an `urge` level's `every`).
    TooShort {
        /// The expression, cut short.
        expr: String,
        /// The duration it gave.
        got: DurationSpec,
        /// The shortest allowed, as the YAML writes it.
        min: &'static str,
    },
}

impl fmt::Display for SpanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpanError::Eval(message) => f.write_str(message),
            SpanError::NotDuration { expr, error } => {
                write!(f, "expression '{expr}' gave an ")?;
                // The text inside the duration error may be long: cut it too.
                write!(
                    f,
                    "invalid duration '{}': {}",
                    crate::cond::excerpt(error.text()),
                    error.kind()
                )
            }
            SpanError::Negative { expr, text } => write!(
                f,
                "expression '{expr}' gave a negative duration '{text}'; a duration counts forward"
            ),
            SpanError::TooShort { expr, got, min } => write!(
                f,
                "expression '{expr}' gave '{got}', shorter than the {min} allowed here"
            ),
        }
    }
}

impl std::error::Error for SpanError {}

impl From<SpanError> for String {
    fn from(e: SpanError) -> String {
        e.to_string()
    }
}

#[derive(Debug)]
enum How {
    Fixed(DurationSpec),
    /// An expression, with the durations its literal texts parse to (parsed once, at load).
    Computed(Box<Condition>, Box<[(Box<str>, DurationSpec)]>),
}

impl Span {
    /// The duration for an instance with `vars`.
    ///
    /// # Errors
    /// [`SpanError`]: the expression fails or gives something other than text, text that is not
    /// a duration (`''`, `'tomorrow'`), a negative duration (`'-5h'`), or a duration shorter than
    /// this span allows (an `urge` level's `every`: [`MIN_URGE_EVERY`]).
    pub(crate) fn evaluate<L: crate::cond::Lookup + ?Sized>(
        &self,
        cel: &cel::Context<'_, '_>,
        vars: &L,
    ) -> Result<DurationSpec, SpanError> {
        let (expr, known) = match &self.how {
            How::Fixed(d) => return Ok(*d),
            How::Computed(expr, known) => (expr, known),
        };
        // The common case: the shortcut picks a literal parsed at load.
        if let Some(text) = expr.picked_text(vars)
            && let Some((_, spec)) = known.iter().find(|(k, _)| **k == *text)
        {
            return match self.min {
                Some((min, min_text)) if spec.amount() < min => Err(SpanError::TooShort {
                    expr: crate::cond::excerpt(expr.source()),
                    got: *spec,
                    min: min_text,
                }),
                _ => Ok(*spec),
            };
        }
        let text = expr.eval_text(cel, vars).map_err(SpanError::Eval)?;
        let source = || crate::cond::excerpt(expr.source());
        if text.trim_start().starts_with('-') {
            return Err(SpanError::Negative {
                expr: source(),
                text: crate::cond::excerpt(&text),
            });
        }
        let spec = DurationSpec::parse(&text).map_err(|error| SpanError::NotDuration {
            expr: source(),
            error,
        })?;
        match self.min {
            Some((min, min_text)) if spec.amount() < min => Err(SpanError::TooShort {
                expr: source(),
                got: spec,
                min: min_text,
            }),
            _ => Ok(spec),
        }
    }

    /// The duration, when the YAML fixes it.
    pub(crate) fn fixed(&self) -> Option<DurationSpec> {
        match &self.how {
            How::Fixed(d) => Some(*d),
            How::Computed(..) => None,
        }
    }

    /// The calendar this duration names for itself.
    pub(crate) fn calendar(&self) -> Option<&str> {
        self.calendar.as_deref()
    }
}

/// What a timer node waits for.
#[derive(Debug)]
pub(crate) enum TimerWait {
    /// A duration from arrival.
    For(Span),
    /// The instant in a string variable (RFC 3339).
    Until(String),
}

/// When a reminder fires.
#[derive(Debug)]
pub(crate) enum RemindAt {
    /// This long before the deadline.
    BeforeDue(Span),
    /// This long after the task opened (the instance started, for an SLA).
    AfterStart(Span),
}

#[derive(Debug)]
pub(crate) struct Remind {
    pub(crate) at: RemindAt,
    pub(crate) to: Vec<RoleId>,
}

/// What an escalation level does.
#[derive(Debug)]
pub(crate) enum Ladder {
    Notify,
    Reassign,
    Urge { every: Span, max: u32 },
}

#[derive(Debug)]
pub(crate) struct Escalate {
    /// Counted from the deadline.
    pub(crate) after: Span,
    pub(crate) action: Ladder,
    pub(crate) to: RoleId,
    /// `reassign` to `role@up`: the role held in the unit above the task's scope.
    pub(crate) up: bool,
}

/// The time limits of one user task, or of the whole process (the SLA).
#[derive(Debug)]
pub(crate) struct Limits {
    pub(crate) due: Option<Span>,
    pub(crate) claim_due: Option<Span>,
    pub(crate) remind: Vec<Remind>,
    pub(crate) escalate: Vec<Escalate>,
    /// An interrupting timeout; its target is the task node's second flow.
    pub(crate) timeout: Option<Span>,
    /// Who is told when the task is not claimed in time, and escalations' default target.
    pub(crate) accountable: RoleId,
    /// Who gets the breach notice.
    pub(crate) informed: Vec<RoleId>,
}

impl Limits {
    /// Every duration in these limits.
    pub(crate) fn spans(&self) -> impl Iterator<Item = &Span> {
        let remind = self.remind.iter().map(|r| match &r.at {
            RemindAt::BeforeDue(s) | RemindAt::AfterStart(s) => s,
        });
        let escalate = self.escalate.iter().flat_map(|e| {
            let every = match &e.action {
                Ladder::Urge { every, .. } => Some(every),
                _ => None,
            };
            std::iter::once(&e.after).chain(every)
        });
        self.due
            .iter()
            .chain(&self.claim_due)
            .chain(&self.timeout)
            .chain(remind)
            .chain(escalate)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.due.is_none()
            && self.claim_due.is_none()
            && self.remind.is_empty()
            && self.escalate.is_empty()
            && self.timeout.is_none()
    }
}

/// What compiling time limits needs to know about the definition.
pub(super) struct TimeCx<'a> {
    pub(super) vars: &'a IndexMap<String, VarSpec>,
    pub(super) roles: &'a IndexMap<RoleId, super::Role>,
    pub(super) has_calendar: bool,
    pub(super) problems: &'a mut Vec<Problem>,
}

/// The raw time keys of a task or an SLA.
pub(super) struct RawLimits<'r> {
    pub(super) due: Option<&'r At<RawDuration>>,
    pub(super) claim_due: Option<&'r At<RawDuration>>,
    pub(super) remind: Option<&'r At<Vec<At<RawRemind>>>>,
    pub(super) escalate: Option<&'r At<Vec<At<RawEscalate>>>>,
    pub(super) timeout: Option<&'r At<RawDuration>>,
}

impl TimeCx<'_> {
    fn add(&mut self, location: Location, path: impl Into<String>, kind: ProblemKind) {
        self.problems.push(Problem {
            location: Some(location),
            path: path.into(),
            kind,
        });
    }

    /// Compiles one duration.
    pub(super) fn span(&mut self, raw: &At<RawDuration>, path: &str) -> Option<Span> {
        let calendar = raw.value.calendar.clone();
        let how = match &raw.value.how {
            RawHow::Text(text) => match DurationSpec::parse(text) {
                Ok(d) => {
                    if d.is_business() && !self.has_calendar && calendar.is_none() {
                        self.add(raw.loc, path, ProblemKind::NeedsCalendar);
                    }
                    How::Fixed(d)
                }
                Err(e) => {
                    self.add(raw.loc, path, ProblemKind::BadDuration(e));
                    return None;
                }
            },
            RawHow::Expr(source) => match Condition::compile(source) {
                Err(kind) => {
                    self.add(raw.loc, path, kind);
                    return None;
                }
                Ok(expr) => {
                    for var in expr.reads() {
                        if !self.vars.contains_key(var) {
                            self.add(raw.loc, path, ProblemKind::UndeclaredVariable(var.clone()));
                        }
                    }
                    // Texts that are not durations stay out: evaluating one reports it.
                    let known = expr
                        .text_literals()
                        .into_iter()
                        .filter(|t| !t.trim_start().starts_with('-'))
                        .filter_map(|t| Some((Box::from(t), DurationSpec::parse(t).ok()?)))
                        .collect();
                    How::Computed(Box::new(expr), known)
                }
            },
        };
        Some(Span {
            how,
            calendar,
            min: None,
        })
    }

    fn role(&mut self, name: &str, loc: Location, path: &str) -> Option<RoleId> {
        let role = RoleId(name.to_owned());
        if self.roles.contains_key(&role) {
            Some(role)
        } else {
            self.add(loc, path, ProblemKind::UnknownRole(name.to_owned()));
            None
        }
    }

    pub(super) fn roles_of(&mut self, names: &At<Names>, path: &str) -> Vec<RoleId> {
        names
            .value
            .located(names.loc)
            .filter_map(|(n, loc)| self.role(n, loc, path))
            .collect()
    }

    /// Compiles the time limits of a task (`default_to`: its responsible roles) or an SLA.
    pub(super) fn limits(
        &mut self,
        raw: RawLimits<'_>,
        base: &str,
        accountable: RoleId,
        informed: Vec<RoleId>,
        default_to: &[RoleId],
    ) -> Limits {
        let due = raw.due.and_then(|d| self.span(d, &format!("{base}.due")));
        let claim_due = raw
            .claim_due
            .and_then(|d| self.span(d, &format!("{base}.claim_due")));
        let timeout = raw
            .timeout
            .and_then(|d| self.span(d, &format!("{base}.timeout.after")));
        for (list, what, limit) in [
            (
                raw.remind.map(|r| (r.loc, r.value.len())),
                "reminders",
                MAX_REMINDERS,
            ),
            (
                raw.escalate.map(|e| (e.loc, e.value.len())),
                "escalation levels",
                MAX_ESCALATIONS,
            ),
        ] {
            if let Some((loc, found)) = list
                && found > limit
            {
                let key = if what == "reminders" {
                    "remind"
                } else {
                    "escalate"
                };
                self.add(
                    loc,
                    format!("{base}.{key}"),
                    ProblemKind::TooMany {
                        what,
                        found: found as u64,
                        limit: limit as u64,
                    },
                );
            }
        }
        let mut remind = Vec::new();
        for (i, r) in raw
            .remind
            .map_or(&[][..], |r| &r.value[..])
            .iter()
            .enumerate()
        {
            let path = format!("{base}.remind[{i}]");
            let to = r.value.to.as_ref().map_or_else(
                || default_to.to_vec(),
                |t| self.roles_of(t, &format!("{path}.to")),
            );
            let at = match (&r.value.before, &r.value.after) {
                (Some(before), None) => {
                    if raw.due.is_none() {
                        self.add(before.loc, &path, ProblemKind::NeedsDue("before"));
                    }
                    let span = self.span(before, &format!("{path}.before"));
                    if let (Some(b), Some(d)) = (
                        span.as_ref().and_then(Span::fixed),
                        due.as_ref().and_then(Span::fixed),
                    ) && b.is_business() != d.is_business()
                    {
                        self.add(before.loc, format!("{path}.before"), ProblemKind::MixedTime);
                    }
                    span.map(RemindAt::BeforeDue)
                }
                (None, Some(after)) => self
                    .span(after, &format!("{path}.after"))
                    .map(RemindAt::AfterStart),
                _ => {
                    self.add(r.loc, &path, ProblemKind::RemindShape);
                    None
                }
            };
            remind.extend(at.map(|at| Remind { at, to }));
        }
        let mut escalate = Vec::new();
        for (i, e) in raw
            .escalate
            .map_or(&[][..], |e| &e.value[..])
            .iter()
            .enumerate()
        {
            let path = format!("{base}.escalate[{i}]");
            let e = &e.value;
            if raw.due.is_none() {
                self.add(e.after.loc, &path, ProblemKind::NeedsDue("escalate"));
            }
            let after = self.span(&e.after, &format!("{path}.after"));
            // `role@up` (reassign only): the same scope one level up.
            let up_name = e.to.as_ref().and_then(|t| t.value.strip_suffix("@up"));
            let up = up_name.is_some();
            if up && e.action.value != RawAction::Reassign {
                self.add(
                    e.action.loc,
                    &path,
                    ProblemKind::EscalationShape("'role@up' is for 'reassign' levels"),
                );
            }
            let to = match &e.to {
                Some(to) if up => {
                    self.role(up_name.unwrap_or_default(), to.loc, &format!("{path}.to"))
                }
                Some(to) => self.role(&to.value, to.loc, &format!("{path}.to")),
                None if e.action.value == RawAction::Reassign => {
                    self.add(
                        e.action.loc,
                        &path,
                        ProblemKind::EscalationShape(
                            "'reassign' needs 'to', the role to give the task to",
                        ),
                    );
                    None
                }
                None => Some(accountable.clone()),
            };
            let action = match e.action.value {
                RawAction::Notify => Some(Ladder::Notify),
                RawAction::Reassign if base == "sla" => {
                    self.add(
                        e.action.loc,
                        &path,
                        ProblemKind::EscalationShape(
                            "'reassign' gives a task to a role; the SLA has no task",
                        ),
                    );
                    None
                }
                RawAction::Reassign => Some(Ladder::Reassign),
                RawAction::Urge => match (&e.every, &e.max) {
                    (Some(every), Some(max)) => {
                        if max.value > MAX_URGES {
                            self.add(
                                max.loc,
                                format!("{path}.max"),
                                ProblemKind::TooMany {
                                    what: "urges",
                                    found: u64::from(max.value),
                                    limit: u64::from(MAX_URGES),
                                },
                            );
                        }
                        let every = self
                            .span(every, &format!("{path}.every"))
                            .and_then(|mut s| {
                                if s.fixed().is_some_and(|d| d.amount() < MIN_URGE_EVERY) {
                                    self.add(
                                        every.loc,
                                        format!("{path}.every"),
                                        ProblemKind::IntervalTooShort {
                                            key: "every",
                                            min: MIN_URGE_EVERY_TEXT,
                                        },
                                    );
                                    return None;
                                }
                                s.min = Some((MIN_URGE_EVERY, MIN_URGE_EVERY_TEXT));
                                Some(s)
                            });
                        every.map(|every| Ladder::Urge {
                            every,
                            max: max.value,
                        })
                    }
                    _ => {
                        self.add(
                            e.action.loc,
                            &path,
                            ProblemKind::EscalationShape("'urge' needs 'every' and 'max'"),
                        );
                        None
                    }
                },
            };
            if e.action.value != RawAction::Urge {
                for (key, loc) in [
                    ("every", e.every.as_ref().map(|a| a.loc)),
                    ("max", e.max.as_ref().map(|a| a.loc)),
                ] {
                    if let Some(loc) = loc {
                        self.add(
                            loc,
                            format!("{path}.{key}"),
                            ProblemKind::EscalationShape("'every' and 'max' belong to 'urge'"),
                        );
                    }
                }
            }
            if let (Some(after), Some(action), Some(to)) = (after, action, to) {
                escalate.push(Escalate {
                    after,
                    action,
                    to,
                    up,
                });
            }
        }
        Limits {
            due,
            claim_due,
            remind,
            escalate,
            timeout,
            accountable,
            informed,
        }
    }
}
