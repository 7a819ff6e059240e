//! Time limits, compiled: deadlines, reminders, escalation ladders, timeouts and timer waits.
//!
//! Durations are checked at load time; a duration computed from variables is a CEL expression
//! compiled at load time and evaluated when its timer is armed.

use indexmap::IndexMap;

use super::raw::{At, Names, RawAction, RawDuration, RawEscalate, RawHow, RawRemind};
use super::{Location, Problem, ProblemKind};
use crate::cond::Condition;
use crate::ids::RoleId;
use crate::time::duration::DurationSpec;
use crate::vars::{VarSpec, Vars};

/// A duration: fixed in the YAML or computed from the instance's variables, counted on the
/// process calendar unless it names its own.
#[derive(Debug)]
pub(crate) struct Span {
    how: How,
    calendar: Option<String>,
}

#[derive(Debug)]
enum How {
    Fixed(DurationSpec),
    Computed(Box<Condition>),
}

impl Span {
    /// The duration for an instance with `vars`.
    ///
    /// # Errors
    /// The expression fails or gives text that is not a duration.
    pub(crate) fn resolve(
        &self,
        cel: &cel::Context<'_, '_>,
        vars: &Vars,
    ) -> Result<DurationSpec, String> {
        match &self.how {
            How::Fixed(d) => Ok(*d),
            How::Computed(expr) => {
                let text = expr.eval_text(cel, vars)?;
                DurationSpec::parse(&text)
                    .map_err(|e| format!("expression '{}': {e}", expr.source()))
            }
        }
    }

    /// The duration, when the YAML fixes it.
    pub(crate) fn fixed(&self) -> Option<DurationSpec> {
        match &self.how {
            How::Fixed(d) => Some(*d),
            How::Computed(_) => None,
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
                Err(message) => {
                    self.add(raw.loc, path, ProblemKind::BadCondition(message));
                    return None;
                }
                Ok(expr) => {
                    for var in expr.reads() {
                        if !self.vars.contains_key(var) {
                            self.add(raw.loc, path, ProblemKind::UndeclaredVariable(var.clone()));
                        }
                    }
                    How::Computed(Box::new(expr))
                }
            },
        };
        Some(Span { how, calendar })
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
            let to = match &e.to {
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
                        self.span(every, &format!("{path}.every"))
                            .map(|every| Ladder::Urge {
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
                escalate.push(Escalate { after, action, to });
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
