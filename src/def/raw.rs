//! The raw definition: YAML text → plain DTOs with source locations.
//!
//! **Invariant:** this is the only module that knows the YAML backend (serde-saphyr) and the only
//! place where a definition is `Deserialize`.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};

use crate::vars::VarType;
pub(crate) use crate::yaml::{At, Entries};
use crate::yaml::{Location, Problem, parse_yaml};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDef {
    pub(crate) id: At<String>,
    pub(crate) version: At<u32>,
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) name_zh: Option<String>,
    #[serde(default)]
    pub(crate) source: Option<String>,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) roles: Entries<RawRole>,
    #[serde(default)]
    pub(crate) variables: Entries<RawVar>,
    /// Business keys: declared variables (string or integer) that identify the customer, order
    /// or ticket an instance is about, indexed across processes.
    #[serde(default)]
    pub(crate) keys: Option<At<Names>>,
    #[serde(default)]
    pub(crate) calendar: Option<At<String>>,
    #[serde(default)]
    pub(crate) sla: Option<At<RawSla>>,
    /// The role that may cancel an instance ([`Engine::cancel`](crate::Engine::cancel)).
    #[serde(default)]
    pub(crate) accountable: Option<At<String>>,
    /// The messages an instance receives ([`super::events`]).
    #[serde(default)]
    pub(crate) messages: Entries<super::events::RawMessage>,
    /// Signals declared persistent (`keep: true`, [`super::events`]).
    #[serde(default)]
    pub(crate) signals: Entries<super::events::RawSignal>,
    pub(crate) nodes: Entries<RawNode>,
    /// The messages instances send to other processes ([`super::messages`]).
    #[serde(default)]
    pub(crate) sends: Entries<super::messages::RawSend>,
    /// The case owner rule (`owner: { from: TASK }`, see `def/assign.rs`).
    #[serde(default)]
    pub(crate) owner: Option<At<super::assign::RawOwner>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRole {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) name_zh: Option<String>,
    #[serde(default)]
    pub(crate) description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVar {
    #[serde(rename = "type")]
    pub(crate) ty: VarType,
    #[serde(default)]
    pub(crate) required: bool,
    #[serde(default)]
    pub(crate) default: Option<At<serde_json::Value>>,
    #[serde(default, rename = "enum")]
    pub(crate) allowed: Option<At<Vec<serde_json::Value>>>,
    #[serde(default)]
    pub(crate) description: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawKind {
    Start,
    End,
    UserTask,
    ServiceTask,
    Exclusive,
    Parallel,
    Timer,
    Inclusive,
    Catch,
    Race,
    Subprocess,
    Send,
    Call,
}

impl RawKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RawKind::Start => "start",
            RawKind::End => "end",
            RawKind::UserTask => "user_task",
            RawKind::ServiceTask => "service_task",
            RawKind::Exclusive => "exclusive",
            RawKind::Parallel => "parallel",
            RawKind::Timer => "timer",
            RawKind::Inclusive => "inclusive",
            RawKind::Catch => "catch",
            RawKind::Race => "race",
            RawKind::Subprocess => "subprocess",
            RawKind::Send => "send",
            RawKind::Call => "call",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    pub(crate) kind: At<RawKind>,
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) name_zh: Option<String>,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) next: Option<At<Names>>,
    #[serde(default)]
    pub(crate) routes: Option<At<Vec<At<RawRoute>>>>,
    #[serde(default)]
    pub(crate) raci: Option<At<RawRaci>>,
    #[serde(default)]
    pub(crate) handler: Option<At<String>>,
    #[serde(default)]
    pub(crate) due: Option<At<RawDuration>>,
    #[serde(default)]
    pub(crate) claim_due: Option<At<RawDuration>>,
    #[serde(default)]
    pub(crate) remind: Option<At<Vec<At<RawRemind>>>>,
    #[serde(default)]
    pub(crate) escalate: Option<At<Vec<At<RawEscalate>>>>,
    #[serde(default)]
    pub(crate) timeout: Option<At<RawTimeout>>,
    #[serde(default)]
    pub(crate) wait: Option<At<RawDuration>>,
    #[serde(default)]
    pub(crate) until: Option<At<String>>,
    /// A user task's send-back targets (see `def/rules.rs`).
    #[serde(default)]
    pub(crate) send_back: Option<At<Names>>,
    /// A user task's milestones (see `def/rules.rs`).
    #[serde(default)]
    pub(crate) while_at: Option<At<Names>>,
    /// A user task's interleaving group (see `def/rules.rs`).
    #[serde(default)]
    pub(crate) mutex: Option<At<String>>,
    /// The variables a user task's completion may set: its form (see `def/rules.rs`).
    #[serde(default)]
    pub(crate) sets: Option<At<Names>>,
    /// A partial join: continue after this many branches arrived.
    #[serde(default)]
    pub(crate) wait_for: Option<At<u32>>,
    /// With `wait_for`: withdraw the branches that did not arrive.
    #[serde(default)]
    pub(crate) cancel_rest: Option<At<bool>>,
    /// On an end node: reaching it ends the whole instance.
    #[serde(default)]
    pub(crate) terminate: Option<At<bool>>,
    /// A cancel region: entering the node withdraws every live token at these nodes.
    #[serde(default)]
    pub(crate) cancels: Option<At<Names>>,
    /// A catch's message ([`super::events`]).
    #[serde(default)]
    pub(crate) message: Option<At<String>>,
    /// A catch's signal.
    #[serde(default)]
    pub(crate) signal: Option<At<String>>,
    /// A user task's boundary events.
    #[serde(default)]
    pub(crate) boundary: Option<At<Vec<At<super::events::RawBoundary>>>>,
    /// Multi-instance: one run of the task per item of a list (see `def/multi.rs`).
    #[serde(default)]
    pub(crate) for_each: Option<At<RawForEach>>,
    /// Structured loop: the task runs again until a condition holds (see `def/multi.rs`).
    #[serde(default)]
    pub(crate) repeat: Option<At<RawRepeat>>,
    /// An embedded sub-process's own nodes (see `def/scope.rs`).
    #[serde(default)]
    pub(crate) nodes: Option<At<Entries<RawNode>>>,
    /// An embedded sub-process's local variables.
    #[serde(default)]
    pub(crate) variables: Option<At<Entries<RawVar>>>,
    /// A user task's required skills (see `org`).
    #[serde(default)]
    pub(crate) skills: Option<At<Names>>,
    /// A user task's automatic allocation: `round_robin` or `shortest_queue` (see `org`).
    #[serde(default)]
    pub(crate) allocate: Option<At<String>>,
    /// A call activity's called definition id (see `def/call.rs`).
    #[serde(default)]
    pub(crate) process: Option<At<String>>,
    /// A call activity's called definition version (default: the newest deployed).
    #[serde(default)]
    pub(crate) version: Option<At<u32>>,
    /// A call activity's information-flow number (processes.md §3).
    #[serde(default)]
    pub(crate) flow: Option<At<u32>>,
    /// A call activity's inputs: child variable: parent variable.
    #[serde(default, rename = "in")]
    pub(crate) inputs: Option<At<Entries<String>>>,
    /// A call activity's outputs: parent variable: child variable.
    #[serde(default, rename = "out")]
    pub(crate) outputs: Option<At<Entries<String>>>,
    /// A call activity's depth limit.
    #[serde(default)]
    pub(crate) max_depth: Option<At<u32>>,
    /// A user task's allocation rule (see `def/assign.rs`).
    #[serde(default)]
    pub(crate) assign: Option<At<super::assign::RawAssign>>,
    /// Separation of duties: never the performer of these earlier tasks (see `def/assign.rs`).
    #[serde(default)]
    pub(crate) four_eyes: Option<At<Names>>,
    /// A user task's priority: a CEL expression giving an integer (see `def/assign.rs`).
    #[serde(default)]
    pub(crate) priority: Option<At<String>>,
    /// Shorter deadlines by priority (see `def/assign.rs`).
    #[serde(default)]
    pub(crate) priority_due: Option<At<Vec<At<super::assign::RawPriorityDue>>>>,
    /// A process start node's further start messages: several message start events (see
    /// `def/messages.rs`).
    #[serde(default)]
    pub(crate) messages: Option<At<Names>>,
}

/// `for_each: { in, as, parallel, output, collect, complete_when }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawForEach {
    #[serde(rename = "in")]
    pub(crate) list: At<String>,
    #[serde(rename = "as")]
    pub(crate) item: At<String>,
    #[serde(default)]
    pub(crate) parallel: Option<bool>,
    #[serde(default)]
    pub(crate) output: Option<At<String>>,
    #[serde(default)]
    pub(crate) collect: Option<At<String>>,
    #[serde(default)]
    pub(crate) complete_when: Option<At<String>>,
    /// `false`: the activity starts its items and its token goes on at once (WCP 12).
    #[serde(default)]
    pub(crate) wait: Option<At<bool>>,
}

/// `repeat: { until, max }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRepeat {
    pub(crate) until: At<String>,
    #[serde(default)]
    pub(crate) max: Option<At<u32>>,
}

/// The process-wide deadline.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSla {
    pub(crate) due: At<RawDuration>,
    #[serde(default)]
    pub(crate) accountable: Option<At<String>>,
    #[serde(default)]
    pub(crate) informed: Option<At<Names>>,
    #[serde(default)]
    pub(crate) remind: Option<At<Vec<At<RawRemind>>>>,
    #[serde(default)]
    pub(crate) escalate: Option<At<Vec<At<RawEscalate>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRemind {
    #[serde(default)]
    pub(crate) before: Option<At<RawDuration>>,
    #[serde(default)]
    pub(crate) after: Option<At<RawDuration>>,
    #[serde(default)]
    pub(crate) to: Option<At<Names>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawAction {
    Notify,
    Reassign,
    Urge,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEscalate {
    pub(crate) after: At<RawDuration>,
    pub(crate) action: At<RawAction>,
    #[serde(default)]
    pub(crate) to: Option<At<String>>,
    #[serde(default)]
    pub(crate) every: Option<At<RawDuration>>,
    #[serde(default)]
    pub(crate) max: Option<At<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeout {
    pub(crate) after: At<RawDuration>,
    pub(crate) to: At<String>,
}

/// A duration: text such as `4h business`, or a map `{ in: TEXT | expr: CEL, calendar: NAME }`
/// where `expr` yields such text and `calendar` names the calendar for this one duration.
pub(crate) struct RawDuration {
    pub(crate) how: RawHow,
    pub(crate) calendar: Option<String>,
}

pub(crate) enum RawHow {
    Text(String),
    Expr(String),
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as '4h business', or { in: DURATION | expr: CEL, calendar: NAME }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawDuration, E> {
                Ok(RawDuration {
                    how: RawHow::Text(s.to_owned()),
                    calendar: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawDuration, A::Error> {
                const KEYS: &[&str] = &["in", "expr", "calendar"];
                let (mut how, mut calendar) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "in" | "expr" if how.is_some() => {
                            return Err(de::Error::custom("give one of 'in' and 'expr'"));
                        }
                        "in" => how = Some(RawHow::Text(map.next_value()?)),
                        "expr" => how = Some(RawHow::Expr(map.next_value()?)),
                        "calendar" if calendar.is_none() => calendar = Some(map.next_value()?),
                        "calendar" => return Err(de::Error::duplicate_field("calendar")),
                        other => return Err(de::Error::unknown_field(other, KEYS)),
                    }
                }
                let how =
                    how.ok_or_else(|| de::Error::custom("a duration needs 'in' or 'expr'"))?;
                Ok(RawDuration { how, calendar })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    #[serde(default)]
    pub(crate) when: Option<At<String>>,
    #[serde(default)]
    pub(crate) default: Option<bool>,
    pub(crate) to: At<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRaci {
    #[serde(default)]
    pub(crate) responsible: Option<At<Names>>,
    #[serde(default)]
    pub(crate) accountable: Option<At<Names>>,
    #[serde(default)]
    pub(crate) consulted: Option<At<Names>>,
    #[serde(default)]
    pub(crate) informed: Option<At<Names>>,
}

/// One name or a list of names, each with its own location where the YAML gives one.
#[derive(Clone, Debug, Default)]
pub(crate) struct Names(pub(crate) Vec<(String, Option<Location>)>);

impl Names {
    /// Each name with its location, falling back to the location of the whole value.
    pub(crate) fn located(&self, whole: Location) -> impl Iterator<Item = (&str, Location)> {
        self.0
            .iter()
            .map(move |(n, l)| (n.as_str(), l.unwrap_or(whole)))
    }
}

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Names;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a name or a list of names")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Names, E> {
                Ok(Names(vec![(s.to_owned(), None)]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Names, A::Error> {
                let mut out = Vec::new();
                while let Some(at) = seq.next_element::<At<String>>()? {
                    out.push((at.value, Some(at.loc)));
                }
                Ok(Names(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses YAML text into a raw definition.
///
/// # Errors
/// One [`Problem`] of kind [`ProblemKind::Syntax`]: the parser stops at the first syntax or shape
/// error.
pub(crate) fn parse(text: &str) -> Result<RawDef, Problem> {
    parse_yaml(text)
}
