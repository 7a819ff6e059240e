//! Events inside an instance, as a definition declares them: the `messages:` an instance
//! receives, `catch` nodes waiting for a message or a signal, `race` (event-based) gateways whose
//! first target to leave its node wins, and `boundary:` events of user tasks.

use indexmap::IndexMap;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::Dfs;
use serde::Deserialize;

use super::raw::{At, Entries, Names, RawDuration, RawNode};
use super::timers::Span;
use super::validate::{NodeCx, Report};
use super::{Behaviour, Location, Node, ProblemKind};
use crate::ids::NodeId;
use crate::vars::VarSpec;

/// A declared message: `messages: { NAME: { name_zh, description, payload: [VAR, ...] } }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMessage {
    #[serde(default)]
    pub(crate) name_zh: Option<String>,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) payload: Option<At<Names>>,
    /// Persistent (WCP 24): kept by an instance that does not wait for it yet.
    #[serde(default)]
    pub(crate) keep: Option<bool>,
    /// The information flow's number (shared/domain/processes.md §3), 1–57.
    #[serde(default)]
    pub(crate) flow: Option<At<u32>>,
    /// Correlation: receiver key → payload field (see `messages.rs`).
    #[serde(default)]
    pub(crate) correlate: Option<At<Entries<String>>>,
    /// How long a correlated message that matches nobody is kept engine-wide.
    #[serde(default)]
    pub(crate) keep_for: Option<At<String>>,
    /// Whether one message may match several waiting instances.
    #[serde(default)]
    pub(crate) many: Option<bool>,
}

/// A declared signal: `signals: { NAME: { name_zh, description, keep } }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSignal {
    #[serde(default)]
    pub(crate) name_zh: Option<String>,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) keep: Option<bool>,
}

/// One entry of a user task's `boundary:` list.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBoundary {
    #[serde(default)]
    pub(crate) timer: Option<At<RawDuration>>,
    #[serde(default)]
    pub(crate) message: Option<At<String>>,
    #[serde(default)]
    pub(crate) signal: Option<At<String>>,
    #[serde(default)]
    pub(crate) interrupting: Option<bool>,
    pub(crate) to: At<String>,
}

/// A message a definition declares under `messages:`: what
/// [`Engine::deliver`](crate::Engine::deliver) may deliver to its instances.
#[derive(Debug)]
pub struct Message {
    pub(crate) name_zh: Option<String>,
    pub(crate) description: Option<String>,
    /// The variables a delivery may set, in YAML order.
    pub(crate) payload: Vec<String>,
    /// Persistent (`keep: true`): an instance that does not wait for it yet keeps it.
    pub(crate) keep: bool,
    /// Correlation between processes (see `messages.rs`).
    pub(crate) between: super::messages::Between,
}

/// A signal a definition declares under `signals:`. Undeclared signals may be caught too; a
/// declaration says whether the definition's instances keep it (`keep: true`, WCP 24).
#[derive(Debug)]
pub struct Signal {
    pub(crate) name_zh: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) keep: bool,
}

impl Signal {
    /// The Chinese name, if given.
    pub fn name_zh(&self) -> Option<&str> {
        self.name_zh.as_deref()
    }

    /// The description, if given.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// Whether an instance that does not wait for it keeps it for the first catch or boundary
    /// event of its name it reaches.
    pub fn keep(&self) -> bool {
        self.keep
    }
}

impl Message {
    /// The Chinese name, if given.
    pub fn name_zh(&self) -> Option<&str> {
        self.name_zh.as_deref()
    }

    /// The description, if given.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The variables a delivery may set.
    pub fn payload(&self) -> &[String] {
        &self.payload
    }

    /// Whether an instance that does not wait for it keeps it for the first catch or boundary
    /// event of its name it reaches.
    pub fn keep(&self) -> bool {
        self.keep
    }

    /// The information flow's number (1–57, shared/domain/processes.md §3), if given.
    pub fn flow(&self) -> Option<u8> {
        self.between.flow
    }

    /// The correlation rule (`correlate:`): (receiver key, payload field) pairs; empty when the
    /// message is not correlated ([`Engine::correlate`](crate::Engine::correlate) then only
    /// starts instances whose start listens for it).
    pub fn correlate(&self) -> impl Iterator<Item = (&str, &str)> {
        self.between
            .correlate
            .iter()
            .map(|(k, f)| (k.as_str(), f.as_str()))
    }

    /// How long a message that matches nobody is kept engine-wide (`keep_for`).
    pub fn keep_for(&self) -> Option<chrono::Duration> {
        self.between.keep_for
    }

    /// Whether one message may match several waiting instances (`many: true`).
    pub fn many(&self) -> bool {
        self.between.many
    }
}

/// What a catch node waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Trigger {
    Message(String),
    Signal(String),
}

impl Trigger {
    /// Whether this is the signal (`signal: true`) or message named `name`.
    pub(crate) fn is(&self, signal: bool, name: &str) -> bool {
        match self {
            Trigger::Message(m) => !signal && m == name,
            Trigger::Signal(s) => signal && s == name,
        }
    }

    /// `message NAME` or `signal NAME`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Trigger::Message(m) => format!("message {m}"),
            Trigger::Signal(s) => format!("signal {s}"),
        }
    }
}

/// What a boundary event of a user task waits for.
#[derive(Debug)]
pub(crate) enum BoundaryOn {
    Timer(Span),
    Event(Trigger),
}

/// A boundary event of a user task.
#[derive(Debug)]
pub(crate) struct Boundary {
    pub(crate) on: BoundaryOn,
    /// Whether it withdraws the task (the default) or starts a token beside it.
    pub(crate) interrupting: bool,
    /// Where the token goes.
    pub(crate) to: NodeId,
    /// The position of its flow in the task's `next`.
    pub(crate) flow: u32,
}

impl Boundary {
    /// The boundary's label in pictures: `message X`, `signal X`, `timer`.
    pub(crate) fn label(&self) -> String {
        let what = match &self.on {
            BoundaryOn::Timer(_) => "timer".to_owned(),
            BoundaryOn::Event(t) => t.describe(),
        };
        if self.interrupting {
            what
        } else {
            format!("{what} (non-interrupting)")
        }
    }

    /// Whether the signal (`signal: true`) or message named `name` triggers it.
    pub(crate) fn on(&self, signal: bool, name: &str) -> bool {
        matches!(&self.on, BoundaryOn::Event(t) if t.is(signal, name))
    }
}

/// Compiles the `messages:` section: each payload name must be a declared variable; a
/// correlation rule maps keys of the definition to payload fields.
pub(super) fn messages(
    raw: &Entries<RawMessage>,
    vars: &IndexMap<String, VarSpec>,
    keys: &[String],
    report: &mut Report,
) -> IndexMap<String, Message> {
    let mut out = IndexMap::new();
    for (key, value) in super::validate::unique(raw, "message", "messages", report) {
        let m = &value.value;
        let mut payload = Vec::new();
        if let Some(names) = &m.payload {
            for (name, loc) in names.value.located(names.loc) {
                if vars.contains_key(name) {
                    payload.push(name.to_owned());
                } else {
                    report.add(
                        loc,
                        format!("messages.{}.payload", key.value),
                        ProblemKind::UndeclaredVariable(name.to_owned()),
                    );
                }
            }
        }
        let between = super::messages::between(&key.value, m, &payload, keys, report);
        out.insert(
            key.value.clone(),
            Message {
                name_zh: m.name_zh.clone(),
                description: m.description.clone(),
                payload,
                keep: m.keep.unwrap_or(false),
                between,
            },
        );
    }
    out
}

/// Compiles the `signals:` section (each name a valid id, once).
pub(super) fn signals(raw: &Entries<RawSignal>, report: &mut Report) -> IndexMap<String, Signal> {
    super::validate::unique(raw, "signal", "signals", report)
        .into_iter()
        .map(|(key, value)| {
            let s = &value.value;
            (
                key.value.clone(),
                Signal {
                    name_zh: s.name_zh.clone(),
                    description: s.description.clone(),
                    keep: s.keep.unwrap_or(false),
                },
            )
        })
        .collect()
}

impl NodeCx<'_> {
    /// A message or signal name: a declared message, or any valid id for a signal.
    fn trigger(
        &self,
        message: Option<&At<String>>,
        signal: Option<&At<String>>,
        at: Location,
        path: &str,
        report: &mut Report,
    ) -> Option<Trigger> {
        match (message, signal) {
            (Some(m), None) => {
                if !self.messages.contains_key(&m.value) {
                    report.add(
                        m.loc,
                        format!("{path}.message"),
                        ProblemKind::UnknownMessage(m.value.clone()),
                    );
                }
                Some(Trigger::Message(m.value.clone()))
            }
            (None, Some(s)) => {
                if !super::validate::valid_id(&s.value) {
                    report.add(
                        s.loc,
                        format!("{path}.signal"),
                        ProblemKind::InvalidId(s.value.clone()),
                    );
                }
                Some(Trigger::Signal(s.value.clone()))
            }
            _ => {
                report.add(
                    at,
                    path.to_owned(),
                    ProblemKind::EventShape("a catch needs exactly one of 'message' and 'signal'"),
                );
                None
            }
        }
    }

    /// A catch node's behaviour.
    pub(super) fn catch(&self, raw: &RawNode, report: &mut Report) -> Behaviour {
        let path = format!("nodes.{}", self.id);
        let trigger = self.trigger(
            raw.message.as_ref(),
            raw.signal.as_ref(),
            self.loc,
            &path,
            report,
        );
        Behaviour::Catch(trigger.unwrap_or(Trigger::Signal(String::new())))
    }

    /// A user task's boundary events; their targets are appended to `next`.
    pub(super) fn boundaries(
        &self,
        raw: &RawNode,
        next: &mut Vec<NodeId>,
        report: &mut Report,
    ) -> Vec<Boundary> {
        let Some(list) = &raw.boundary else {
            return Vec::new();
        };
        if list.value.len() > super::validate::MAX_FLOWS {
            report.add(
                list.loc,
                format!("nodes.{}.boundary", self.id),
                ProblemKind::TooMany {
                    what: "boundary events",
                    found: list.value.len() as u64,
                    limit: super::validate::MAX_FLOWS as u64,
                },
            );
            return Vec::new();
        }
        let mut out = Vec::new();
        for (i, b) in list.value.iter().enumerate() {
            let path = format!("nodes.{}.boundary[{i}]", self.id);
            let r = &b.value;
            let on = match (&r.timer, &r.message, &r.signal) {
                (Some(t), None, None) => self
                    .time(report)
                    .span(t, &format!("{path}.timer"))
                    .map(BoundaryOn::Timer),
                (None, m, s) if m.is_some() != s.is_some() => self
                    .trigger(m.as_ref(), s.as_ref(), b.loc, &path, report)
                    .map(BoundaryOn::Event),
                _ => {
                    report.add(
                        b.loc,
                        &path,
                        ProblemKind::EventShape(
                            "a boundary event needs exactly one of 'timer', 'message' and 'signal'",
                        ),
                    );
                    None
                }
            };
            let to = self.target(&r.to.value, r.to.loc, format!("{path}.to"), report);
            if let (Some(on), Some(to)) = (on, to) {
                out.push(Boundary {
                    on,
                    interrupting: r.interrupting.unwrap_or(true),
                    to,
                    flow: next.len() as u32,
                });
                next.push(to);
            }
        }
        out
    }
}

/// Marks each race target with its gateway and checks races and boundaries against the graph:
/// a race's targets are catches, timer nodes or user tasks whose only incoming flow is the
/// race's; the path of a non-interrupting message or signal boundary (which may start a token
/// each time the event comes) holds no parallel join, which could count tokens of two runs as
/// one run's branches.
pub(super) fn check(graph: &DiGraph<NodeId, ()>, nodes: &mut [Node], report: &mut Report) {
    let mut marks = Vec::new();
    for (g, node) in nodes.iter().enumerate() {
        if matches!(node.behaviour, Behaviour::Race) {
            if node.next.len() < 2 {
                report.add(
                    node.location,
                    format!("nodes.{}.next", node.id),
                    ProblemKind::RaceTargets(node.next.len()),
                );
            }
            for to in &node.next {
                let target = &nodes[to.index()];
                // A task that runs more than once (`for_each`, `repeat`) has no single moment
                // at which it leaves, so it cannot decide a race.
                let kind = if target.looping.is_some() {
                    "multi-instance or repeated user_task"
                } else {
                    target.kind().as_str()
                };
                if target.looping.is_some()
                    || !matches!(
                        target.behaviour,
                        Behaviour::Catch(_) | Behaviour::Timer(_) | Behaviour::UserTask(_)
                    )
                {
                    report.add(
                        node.location,
                        format!("nodes.{}.next", node.id),
                        ProblemKind::RaceTarget {
                            target: target.id.clone(),
                            kind,
                        },
                    );
                } else if target.incoming != 1 {
                    report.add(
                        target.location,
                        format!("nodes.{}", target.id),
                        ProblemKind::RaceTargetIncoming {
                            target: target.id.clone(),
                            found: target.incoming,
                        },
                    );
                }
                marks.push((*to, NodeId(g as u32)));
            }
        }
        for b in &node.boundary {
            if b.interrupting || matches!(b.on, BoundaryOn::Timer(_)) {
                continue;
            }
            let mut dfs = Dfs::new(graph, NodeIndex::new(b.to.index()));
            while let Some(n) = dfs.next(graph) {
                let m = &nodes[n.index()];
                if matches!(m.behaviour, Behaviour::Parallel) && m.incoming > 1 {
                    report.add(
                        node.location,
                        format!("nodes.{}.boundary", node.id),
                        ProblemKind::RepeatedBoundaryJoin {
                            task: node.id.clone(),
                            join: m.id.clone(),
                        },
                    );
                    break;
                }
            }
        }
    }
    for (to, gateway) in marks {
        nodes[to.index()].race = Some(gateway);
    }
}
