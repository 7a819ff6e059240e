//! The load boundary's error type: every problem found in one definition, calendar or scenario
//! file, with its location.

use std::fmt;
use std::path::PathBuf;

/// An error as a JSON body (or any serde format): the error's own fields (for the error enums,
/// `kind`, its variant in snake case, and `fields`, the variant's typed fields) and `message`,
/// its `Display` text. What an HTTP API answers with.
///
/// # Examples
/// ```
/// let error = procflow::ExecError::UnknownCalendar("china".into());
/// let json = serde_json::to_value(procflow::ErrorBody::new(&error))?;
/// assert_eq!(json["kind"], "unknown_calendar");
/// assert_eq!(json["fields"], "china");
/// assert_eq!(json["message"], error.to_string());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, serde::Serialize)]
pub struct ErrorBody<'a, E: serde::Serialize> {
    #[serde(flatten)]
    error: &'a E,
    message: String,
}

impl<'a, E: serde::Serialize + fmt::Display> ErrorBody<'a, E> {
    /// The body of `error`.
    pub fn new(error: &'a E) -> ErrorBody<'a, E> {
        ErrorBody {
            message: error.to_string(),
            error,
        }
    }
}

/// A line and column (both 1-based) in a definition file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Location {
    /// The 1-based line.
    pub line: u32,
    /// The 1-based column, in characters.
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Everything wrong with one definition: the loader reports every problem it finds at once.
///
/// A YAML syntax or shape error (bad indentation, an unknown key, a value of the wrong type) stops
/// the parser, so such a file reports that one problem; once a file parses, every semantic problem
/// (unknown roles, targets, cycles, joins, conditions, ...) is reported together.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LoadError {
    /// The file the definition came from, when it came from a file.
    pub file: Option<PathBuf>,
    /// The problems, in the order of the file.
    pub problems: Vec<Problem>,
}

impl LoadError {
    pub(crate) fn new(file: Option<PathBuf>, mut problems: Vec<Problem>) -> LoadError {
        problems.sort_by_key(|p| p.location.map(|l| (l.line, l.column)));
        LoadError { file, problems }
    }

    /// Reads a definition, calendar or scenario file; a failure is an [`ProblemKind::Io`] problem
    /// naming the file.
    pub(crate) fn read(path: &std::path::Path) -> Result<String, LoadError> {
        std::fs::read_to_string(path).map_err(|e| {
            LoadError::new(
                Some(path.to_owned()),
                vec![Problem {
                    location: None,
                    path: String::new(),
                    kind: ProblemKind::Io(e.to_string()),
                }],
            )
        })
    }

    /// The kinds of the problems, in order. Handy for tests.
    pub fn kinds(&self) -> Vec<&ProblemKind> {
        self.problems.iter().map(|p| &p.kind).collect()
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if let Some(file) = &self.file {
                let gap = if p.location.is_some() { "" } else { " " };
                write!(f, "{}:{gap}", file.display())?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

/// One problem in a definition: where it is and what it is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// Where the YAML has a location for it.
    pub location: Option<Location>,
    /// The key path, e.g. `nodes.record.raci.accountable`.
    pub path: String,
    /// What is wrong (serialized flat: `kind` and `fields` beside `location` and `path`).
    #[serde(flatten)]
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = self.location {
            write!(f, "{loc}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.kind)
    }
}

/// What is wrong with a definition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", content = "fields", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProblemKind {
    /// The file could not be read.
    #[error("cannot read file: {0}")]
    Io(String),
    /// The YAML does not parse, or does not have the shape of a definition (this includes unknown
    /// keys and values of the wrong type).
    #[error("{0}")]
    Syntax(String),
    /// A node, role or variable id appears twice.
    #[error("duplicate {what} id '{id}' (first defined at {first})")]
    Duplicate {
        /// `node`, `role` or `variable`.
        what: &'static str,
        /// The repeated id.
        id: String,
        /// Where it was first defined.
        first: Location,
    },
    /// An id has other characters than `a-z`, `0-9` and `_` (a process id may also use `-`), or
    /// more than 128.
    #[error(
        "invalid id '{0}': use at most 128 lowercase letters, digits and '_' ('-' only in a process id)"
    )]
    InvalidId(String),
    /// A `next` or `to` names a node that does not exist.
    #[error("unknown node '{0}'")]
    UnknownNode(String),
    /// A RACI entry names a role that is not in the catalogue.
    #[error("unknown role '{0}'")]
    UnknownRole(String),
    /// A user task has no responsible role.
    #[error("task has no responsible role")]
    NoResponsible,
    /// A user task does not have exactly one accountable role.
    #[error("task must have exactly one accountable role, found {0}")]
    AccountableCount(usize),
    /// A user task has no `raci` block.
    #[error("user task has no 'raci'")]
    MissingRaci,
    /// A key is present that the node's kind does not take.
    #[error("'{key}' is not allowed on {} {kind} node", if kind.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" })]
    KeyNotAllowed {
        /// The key.
        key: &'static str,
        /// The node kind.
        kind: &'static str,
    },
    /// A key the node's kind needs is missing.
    #[error("a {kind} node needs '{key}'")]
    KeyMissing {
        /// The key.
        key: &'static str,
        /// The node kind.
        kind: &'static str,
    },
    /// A node has the wrong number of outgoing flows.
    #[error("a {kind} node must have exactly one 'next', found {found}")]
    NextCount {
        /// The node kind.
        kind: &'static str,
        /// How many there are.
        found: usize,
    },
    /// No start node, or more than one.
    #[error("a process needs exactly one start node, found {0}")]
    StartCount(usize),
    /// An embedded sub-process has no start node, or more than one.
    #[error("sub-process '{scope}' needs exactly one start node, found {found}")]
    ScopeStartCount {
        /// The sub-process node.
        scope: String,
        /// How many starts it has.
        found: usize,
    },
    /// A flow inside a sub-process names a node outside it: a token leaves a scope only by the
    /// scope's completion (its ends) or its boundary events.
    #[error(
        "flow leaves sub-process '{scope}' for outer node '{node}': an inner flow stays inside its scope (end the scope instead)"
    )]
    LeavesScope {
        /// The sub-process node.
        scope: String,
        /// The outer node named.
        node: String,
    },
    /// Sub-processes nest deeper than allowed.
    #[error("sub-processes nest deeper than {0} levels")]
    ScopeTooDeep(usize),
    /// A node cannot be reached from the start.
    #[error("node '{0}' is unreachable from start")]
    Unreachable(String),
    /// No end can be reached from a node.
    #[error("no end is reachable from node '{0}'")]
    NoEnd(String),
    /// The flows form a cycle; definitions are DAGs.
    #[error("cycle through nodes {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// A parallel join's incoming flows do not come from exactly the branches of one fork, so it can
    /// wait forever (deadlock) or fire twice.
    #[error("join '{node}' can deadlock: {reason}")]
    BadJoin {
        /// The join node.
        node: String,
        /// Why.
        reason: String,
    },
    /// Branches of a parallel fork meet at a node that is not a parallel join, so it would run once
    /// per branch.
    #[error("parallel branches merge at '{0}' without a join; use a parallel gateway to join them")]
    UnsyncedMerge(String),
    /// An exclusive gateway has more than one default route.
    #[error("more than one default route")]
    TwoDefaults,
    /// An exclusive gateway has no routes.
    #[error("exclusive gateway has no routes")]
    NoRoutes,
    /// A route is neither conditional nor the default, or both.
    #[error("a route needs either 'when' or 'default: true'")]
    RouteShape,
    /// A condition does not compile as CEL.
    #[error("condition does not compile: {0}")]
    BadCondition(String),
    /// A condition names a variable that is not declared.
    #[error("condition uses undeclared variable '{0}'")]
    UndeclaredVariable(String),
    /// A declared default or enum value does not fit the variable's type.
    #[error("value {value} does not fit type {ty}")]
    BadValue {
        /// The value, as JSON.
        value: String,
        /// The declared type.
        ty: String,
    },
    /// A duration's text does not parse.
    #[error("{0}")]
    BadDuration(DurationError),
    /// A business calendar names a time zone that is not in the IANA database.
    #[error("unknown time zone '{0}': use an IANA name such as 'Asia/Shanghai'")]
    UnknownZone(String),
    /// A business calendar's date is not a valid `YYYY-MM-DD` date.
    #[error("invalid date '{0}': use YYYY-MM-DD")]
    BadDate(String),
    /// Working hours are not an `HH:MM-HH:MM` interval with the end after the start.
    #[error(
        "invalid working hours '{0}': use HH:MM-HH:MM with the end after the start, e.g. '09:00-12:00'"
    )]
    BadHours(String),
    /// A business calendar is inconsistent: overlapping hours, a date listed twice, a range that
    /// ends before it starts, a date under the wrong year, a week without working hours.
    #[error("{0}")]
    BadCalendar(String),
    /// A business duration is used but the process names no `calendar`.
    #[error("business time needs a process 'calendar'")]
    NeedsCalendar,
    /// A time limit counts from `due`, which the task or SLA does not have.
    #[error("'{0}' counts from 'due', which is missing here")]
    NeedsDue(&'static str),
    /// A reminder needs exactly one of `before` and `after`.
    #[error("a reminder needs exactly one of 'before' and 'after'")]
    RemindShape,
    /// An escalation level lacks something its action needs.
    #[error("{0}")]
    EscalationShape(&'static str),
    /// `before` and `due` mix business and wall time.
    #[error("'before' and 'due' must both be business time or both wall time")]
    MixedTime,
    /// A variable's declared default is not a value it may take (a business key's default
    /// longer than `VarSpec::MAX_KEY_BYTES`).
    #[error("the default of '{name}' is {problem}")]
    BadDefault {
        /// The variable.
        name: String,
        /// Why the default may not be its value.
        problem: String,
    },
    /// A business key (`keys:`) names a variable that is not a string or an integer.
    #[error("key '{name}' is of type {ty}: a business key is a string or an integer")]
    BadKeyType {
        /// The variable.
        name: String,
        /// Its declared type.
        ty: String,
    },
    /// A multi-instance or loop key names a variable the process does not declare.
    #[error("'{key}' names undeclared variable '{name}'")]
    UnknownVariable {
        /// The key, e.g. `for_each.in`.
        key: &'static str,
        /// The variable.
        name: String,
    },
    /// A multi-instance key names a variable whose declared type is not a list.
    #[error("'{key}' names variable '{name}' of type {ty}, which is not a list (type {expected})")]
    NotAList {
        /// The key, e.g. `for_each.collect`.
        key: &'static str,
        /// The variable.
        name: String,
        /// Its declared type.
        ty: String,
        /// The types allowed here.
        expected: &'static str,
    },
    /// A `for_each` item variable has the name of a declared variable (or of `completed` or
    /// `total`).
    #[error(
        "item variable '{0}' clashes with a declared variable; the item is local to each run, give it another name"
    )]
    ItemClash(String),
    /// A `complete_when` condition reads none of `completed`, `total` or the collect variable.
    #[error(
        "the completion condition reads none of 'completed', 'total' or the collect variable, so nothing the items produce can make it hold"
    )]
    CompletionReadsNothing,
    /// A `repeat` has no `max`.
    #[error("'repeat' needs 'max', the most iterations (a loop without a bound may never end)")]
    LoopWithoutMax,
    /// A `for_each` or `repeat` is malformed in another way.
    #[error("{0}")]
    LoopShape(&'static str),
    /// A timer node needs exactly one of `wait` and `until`.
    #[error("a timer node needs exactly one of 'wait' and 'until'")]
    TimerShape,
    /// A declared default or enum value nests arrays and objects more deeply than a variable may
    /// (`VarSpec::MAX_VALUE_DEPTH`).
    #[error("value nests more than {limit} levels deep")]
    ValueTooDeep {
        /// The most levels a value may nest.
        limit: usize,
    },
    /// A declared default or enum value is larger than a variable may be
    /// (`VarSpec::MAX_VALUE_BYTES`, as JSON).
    #[error("value is larger than {limit} bytes as JSON")]
    ValueTooLarge {
        /// The most bytes a value may take.
        limit: usize,
    },
    /// A CEL expression (a route's `when`, a duration's `expr`) is longer than the loader
    /// accepts (`ProcessDef::MAX_EXPRESSION_BYTES`).
    #[error("expression is {bytes} bytes long, more than the {limit} allowed")]
    ExpressionTooLong {
        /// Its length in bytes.
        bytes: usize,
        /// The most bytes allowed.
        limit: usize,
    },
    /// A CEL expression nests brackets, or its syntax tree, more deeply than the loader accepts
    /// (`ProcessDef::MAX_EXPRESSION_DEPTH`): evaluation recurses once per level.
    #[error("expression nests {depth} levels deep, more than the {limit} allowed")]
    ExpressionTooDeep {
        /// How deep it nests (at least; the loader stops counting past the limit).
        depth: usize,
        /// The most levels allowed.
        limit: usize,
    },
    /// A CEL expression could do more work on the largest values variables may hold than the
    /// loader accepts (`ProcessDef::MAX_EXPRESSION_COST`); nested macros (`all`, `exists`,
    /// `map`, ...) multiply the cost.
    #[error(
        "expression may cost {cost} units on the largest variable values, more than the {limit} allowed; nest fewer macros such as 'all' and 'exists'"
    )]
    ExpressionTooCostly {
        /// The estimated worst-case cost.
        cost: u64,
        /// The most allowed.
        limit: u64,
    },
    /// An interval is shorter than allowed, e.g. an `urge` level's `every`.
    #[error("'{key}' must be at least {min}")]
    IntervalTooShort {
        /// The key, e.g. `every`.
        key: &'static str,
        /// The shortest allowed interval, e.g. `1m`.
        min: &'static str,
    },
    /// A list or count is larger than the loader accepts: nodes, roles, variables, routes, flows,
    /// reminders, escalation levels, an `urge` level's `max`.
    #[error("too many {what}: {found}, at most {limit}")]
    TooMany {
        /// What is counted, e.g. `reminders`.
        what: &'static str,
        /// How many there are.
        found: u64,
        /// The most allowed.
        limit: u64,
    },
    /// A catch or boundary event names a message the definition does not declare under
    /// `messages:`.
    #[error("unknown message '{0}': declare it under 'messages'")]
    UnknownMessage(String),
    /// A send node names a message the definition does not declare under `sends:`.
    #[error("unknown sent message '{0}': declare it under 'sends'")]
    UnknownSend(String),
    /// A correlation rule names a key the definition does not declare under `keys:`.
    #[error("correlation key '{0}' is not one of the definition's 'keys'")]
    CorrelationKey(String),
    /// A correlation rule names a field the message's `payload` does not list.
    #[error("correlation field '{0}' is not in the message's 'payload'")]
    CorrelationField(String),
    /// An information-flow number outside 1–57.
    #[error("information flow {0} does not exist; flows are numbered 1 to 57")]
    FlowNumber(u32),
    /// A `keep_for` that is not a positive wall-clock duration.
    #[error("'keep_for' takes a positive wall-clock duration such as '24h', found '{0}'")]
    KeepFor(String),
    /// A message declaration that does not fit together.
    #[error("{0}")]
    MessageShape(&'static str),
    /// A catch or boundary event does not say what it waits for, or says it twice.
    #[error("{0}")]
    EventShape(&'static str),
    /// A race gateway has fewer than two targets.
    #[error("a race needs at least two targets in 'next', found {0}")]
    RaceTargets(usize),
    /// A race's target is not a catch, a timer or a user task.
    #[error(
        "race target '{target}' is a {kind} node; a race's targets are catch, timer and user_task nodes"
    )]
    RaceTarget {
        /// The target.
        target: String,
        /// Its kind.
        kind: &'static str,
    },
    /// A race's target has other incoming flows than the race's.
    #[error("race target '{target}' has {found} incoming flows; it must have only the race's")]
    RaceTargetIncoming {
        /// The target.
        target: String,
        /// How many flows arrive.
        found: u32,
    },
    /// A non-interrupting message or signal boundary (which starts a token each time its event
    /// comes) leads to a parallel join, which could count two runs' tokens as one run's branches.
    #[error(
        "the non-interrupting boundary path of task '{task}' reaches parallel join '{join}'; end it without joins, or make it a timer"
    )]
    RepeatedBoundaryJoin {
        /// The task.
        task: String,
        /// The join.
        join: String,
    },
    /// A scenario step cannot run: its duration or instant is malformed or out of range.
    #[error("{0}")]
    BadStep(String),
    /// A user task's `send_back` names a node that is not an earlier user task it can return the
    /// case to.
    #[error("cannot send back to '{target}': {reason}")]
    BadSendBack {
        /// The named target.
        target: String,
        /// Why not.
        reason: String,
    },
    /// An allocation rule (`owner.from`, `assign`, `four_eyes`, `priority_due`) names a task or
    /// rule that cannot serve.
    #[error("allocation rule '{target}' cannot be used: {reason}")]
    BadAllocation {
        /// The named task or rule.
        target: String,
        /// Why not.
        reason: String,
    },
    /// A user task's `while_at` names a node that cannot be a milestone.
    #[error("'{target}' cannot be a milestone: {reason}")]
    BadMilestone {
        /// The named node.
        target: String,
        /// Why not.
        reason: String,
    },
    /// An inclusive join (an inclusive gateway with more than one incoming flow) whose flows do
    /// not come from the routes of one inclusive split, so it cannot tell which branches were
    /// started.
    #[error(
        "inclusive join '{0}' has no matching inclusive split: its flows must be the routes of one inclusive gateway"
    )]
    OrJoinWithoutSplit(String),
    /// A partial join's `wait_for` is not between 1 and one less than its incoming flows.
    #[error(
        "'wait_for' must be at least 1 and less than the {incoming} incoming flows, found {found}"
    )]
    WaitFor {
        /// The value given.
        found: u32,
        /// The join's incoming flows.
        incoming: u32,
    },
    /// A node's `cancels` names the node itself.
    #[error("node '{0}' cannot cancel itself")]
    CancelsItself(String),
    /// A control-flow key used where it means nothing, e.g. `cancel_rest` without `wait_for`.
    #[error("{0}")]
    ControlShape(&'static str),
    /// A node or key inside a multi-instance sub-process's scope that its runs do not support
    /// (yet).
    #[error(
        "{what} is not supported inside multi-instance sub-process '{scope}' (yet): its runs take start, end, user and service tasks and exclusive and parallel gateways"
    )]
    NotInRuns {
        /// What is refused (a kind or a key).
        what: String,
        /// The multi-instance sub-process.
        scope: String,
    },
    /// A multi-instance sub-process's `for_each.output` is not one of its local variables.
    #[error(
        "the output of multi-instance sub-process '{scope}' must be one of its local variables ('variables:'), so that each run has its own; '{name}' is not"
    )]
    OutputNotLocal {
        /// The multi-instance sub-process.
        scope: String,
        /// The variable named.
        name: String,
    },
    /// Organisation units whose parents form a cycle (the units, the first repeated last).
    #[error("unit cycle: {}", .0.join(" -> "))]
    UnitCycle(Vec<String>),
    /// An organisation post or parent names a unit the organisation does not declare.
    #[error("unknown unit '{0}'")]
    UnknownUnit(String),
    /// A person or task names a skill the organisation does not declare.
    #[error("unknown skill '{0}'")]
    UnknownSkill(String),
    /// An organisation file is malformed in another way (a level, a position, a post).
    #[error("{0}")]
    OrgShape(String),
    /// A scoped role reference, `role@up` or `allocate` is malformed.
    #[error("{0}")]
    BadScope(String),
    /// A definition's role is not one the organisation declares.
    #[error("role '{0}' is not in the organisation")]
    RoleNotInOrganisation(String),
    /// A call activity (`kind: call`) is malformed, e.g. a `max_depth` out of range.
    #[error("{0}")]
    CallShape(&'static str),
    /// A what-if simulation model (`procflow whatif`) is malformed: an unknown process, task or
    /// role, probabilities that do not sum to one, a negative rate, a distribution without its
    /// parameters, a horizon shorter than the warm-up, a task no staffed person can do.
    #[error("{0}")]
    WhatIf(String),
}

/// A duration's text that does not parse: the text and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DurationError {
    pub(crate) text: String,
    pub(crate) kind: DurationErrorKind,
}

impl DurationError {
    /// The text that was given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// What is wrong with it.
    pub fn kind(&self) -> &DurationErrorKind {
        &self.kind
    }
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid duration '{}': {}", self.text, self.kind)
    }
}

impl std::error::Error for DurationError {}

/// What is wrong with a duration's text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", content = "fields", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DurationErrorKind {
    /// Nothing but, perhaps, the word `business`.
    #[error("it is empty; write e.g. '4h', '1h30m', 'PT4H' or '48h business'")]
    Empty,
    /// A unit without a number before it.
    #[error("expected a number before '{0}'")]
    MissingNumber(char),
    /// Text that is neither a number nor a unit, e.g. a word glued to the duration.
    #[error("unexpected '{0}'; write e.g. '4h', '1h30m' or '48h business'")]
    Unexpected(String),
    /// A number without a unit after it.
    #[error("'{0}' needs a unit: d, h, m or s")]
    MissingUnit(String),
    /// A unit that is not `d`, `h`, `m` or `s` (or, in ISO 8601, `W`, `D`, `H`, `M`, `S`).
    #[error("unknown unit '{0}'; use d, h, m or s (or ISO 8601 such as 'PT4H')")]
    UnknownUnit(char),
    /// A unit repeated, or a smaller one before a larger one.
    #[error("each unit may appear once, largest first (d, h, m, s)")]
    UnitOrder,
    /// A decimal fraction.
    #[error("fractions are not supported; write '1h30m' instead of '1.5h'")]
    Fraction,
    /// ISO 8601 years or months, whose length varies.
    #[error("years and months have no fixed length; use days, e.g. 'P30D'")]
    YearsOrMonths,
    /// An ISO 8601 duration that does not have the shape `P[nW][nD][T[nH][nM][nS]]`.
    #[error("malformed ISO 8601 duration; expected e.g. 'PT4H', 'P2D' or 'PT1H30M'")]
    BadIso,
    /// Days in a business duration: working days differ in length.
    #[error(
        "a business duration cannot count days, since working days differ in length; \
         write hours, e.g. '16h business'"
    )]
    BusinessDays,
    /// More than the about 292 million years a duration can hold.
    #[error("it is too large")]
    TooLarge,
}
