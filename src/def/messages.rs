//! Messages between processes, as a definition declares them: the correlation rule of a
//! received message (`correlate: { RECEIVER_KEY: PAYLOAD_FIELD }`, with `flow`, `keep_for` and
//! `many`), the messages it sends (`sends:`), `send` nodes, and a start node that listens for a
//! message (a message start event).

use indexmap::IndexMap;
use serde::Deserialize;

use super::events::RawMessage;
use super::raw::{At, Entries, Names, RawNode};
use super::validate::{NodeCx, Report};
use super::{Behaviour, ProblemKind};
use crate::time::duration::DurationSpec;
use crate::vars::VarSpec;

/// The highest information-flow number of shared/domain/processes.md §3.
const MAX_FLOW: u32 = 57;

/// A sent message: `sends: { NAME: { flow, payload: [VAR, ...], name_zh, description } }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSend {
    #[serde(default)]
    pub(crate) name_zh: Option<String>,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) payload: Option<At<Names>>,
    #[serde(default)]
    pub(crate) flow: Option<At<u32>>,
}

/// What a received message says about other processes: its flow number and correlation.
#[derive(Debug, Default)]
pub(crate) struct Between {
    pub(crate) flow: Option<u8>,
    /// (receiver key, payload field) pairs, in YAML order. Empty: not correlated.
    pub(crate) correlate: Vec<(String, String)>,
    /// How long a message that matches nobody is kept engine-wide.
    pub(crate) keep_for: Option<chrono::Duration>,
    /// Whether one message may match several waiting instances.
    pub(crate) many: bool,
}

/// A message a definition declares under `sends:`: what its `send` nodes send to other
/// processes.
#[derive(Debug)]
pub struct SentMessage {
    pub(crate) name_zh: Option<String>,
    pub(crate) description: Option<String>,
    /// The sender's variables the message carries, in YAML order.
    pub(crate) payload: Vec<String>,
    pub(crate) flow: Option<u8>,
}

impl SentMessage {
    /// The Chinese name, if given.
    pub fn name_zh(&self) -> Option<&str> {
        self.name_zh.as_deref()
    }

    /// The description, if given.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The sender's variables the message carries.
    pub fn payload(&self) -> &[String] {
        &self.payload
    }

    /// The information flow's number (1–57), if given.
    pub fn flow(&self) -> Option<u8> {
        self.flow
    }
}

impl super::Node {
    /// The message a send node sends (`kind: send, message: NAME`).
    pub fn sends(&self) -> Option<&str> {
        match &self.behaviour {
            Behaviour::Send(m) => Some(m),
            _ => None,
        }
    }

    /// The messages this node waits for: a catch node's message, then its message boundary
    /// events' (of a task or a sub-process), in YAML order.
    pub fn caught_messages(&self) -> Vec<&str> {
        let mut out = Vec::new();
        if let Behaviour::Catch(super::events::Trigger::Message(m)) = &self.behaviour {
            out.push(m.as_str());
        }
        for b in &self.boundary {
            if let super::events::BoundaryOn::Event(super::events::Trigger::Message(m)) = &b.on {
                out.push(m.as_str());
            }
        }
        out
    }
}

impl super::ProcessDef {
    /// The messages its instances send to other processes (`sends:`), by name.
    pub fn sends(&self) -> impl Iterator<Item = (&str, &SentMessage)> {
        self.sends.iter().map(|(k, s)| (k.as_str(), s))
    }

    /// The message its start node listens for (`kind: start, message: NAME`): a correlated
    /// message that matches no waiting instance starts an instance of it.
    pub fn start_message(&self) -> Option<&str> {
        self.start_message.as_deref()
    }

    /// Every message its start node listens for (`message: NAME` and `messages: [NAME, ...]`),
    /// in YAML order: each starts an instance when it matches no waiting one.
    pub fn start_messages(&self) -> impl Iterator<Item = &str> {
        self.start_messages.iter().map(String::as_str)
    }

    /// Whether a message named `message` starts an instance of it.
    pub(crate) fn starts_on(&self, message: &str) -> bool {
        self.start_messages.iter().any(|m| m == message)
    }
}

/// A declared flow number: 1–57.
fn flow(raw: Option<&At<u32>>, path: &str, report: &mut Report) -> Option<u8> {
    let f = raw?;
    if (1..=MAX_FLOW).contains(&f.value) {
        Some(f.value as u8)
    } else {
        report.add(
            f.loc,
            format!("{path}.flow"),
            ProblemKind::FlowNumber(f.value),
        );
        None
    }
}

/// A payload list: declared variables, each once.
fn payload(
    raw: Option<&At<Names>>,
    vars: &IndexMap<String, VarSpec>,
    path: &str,
    report: &mut Report,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(names) = raw {
        for (name, loc) in names.value.located(names.loc) {
            if !vars.contains_key(name) {
                report.add(
                    loc,
                    format!("{path}.payload"),
                    ProblemKind::UndeclaredVariable(name.to_owned()),
                );
            } else if !out.iter().any(|p| p == name) {
                out.push(name.to_owned());
            }
        }
    }
    out
}

/// Compiles what a received message says about other processes: its flow number, correlation
/// rule (each key one of `keys`, each field in `payload`), `keep_for` and `many`.
pub(super) fn between(
    name: &str,
    raw: &RawMessage,
    payload: &[String],
    keys: &[String],
    report: &mut Report,
) -> Between {
    let path = format!("messages.{name}");
    let mut out = Between {
        flow: flow(raw.flow.as_ref(), &path, report),
        many: raw.many.unwrap_or(false),
        ..Between::default()
    };
    if let Some(rule) = &raw.correlate {
        if rule.value.0.is_empty() {
            report.add(
                rule.loc,
                format!("{path}.correlate"),
                ProblemKind::MessageShape("'correlate' maps at least one key to a payload field"),
            );
        }
        for (key, field) in &rule.value.0 {
            let at = format!("{path}.correlate.{}", key.value);
            let mut ok = true;
            if !keys.contains(&key.value) {
                report.add(key.loc, &at, ProblemKind::CorrelationKey(key.value.clone()));
                ok = false;
            }
            if !payload.contains(&field.value) {
                report.add(
                    field.loc,
                    &at,
                    ProblemKind::CorrelationField(field.value.clone()),
                );
                ok = false;
            }
            if ok {
                out.correlate.push((key.value.clone(), field.value.clone()));
            }
        }
    }
    if let Some(k) = &raw.keep_for {
        match DurationSpec::parse(&k.value) {
            Ok(DurationSpec::Wall(d)) if d > chrono::Duration::zero() => out.keep_for = Some(d),
            _ => report.add(
                k.loc,
                format!("{path}.keep_for"),
                ProblemKind::KeepFor(k.value.clone()),
            ),
        }
    }
    if raw.correlate.is_none() && (raw.keep_for.is_some() || raw.many.is_some()) {
        report.add(
            raw.keep_for
                .as_ref()
                .map(|k| k.loc)
                .or(raw.correlate.as_ref().map(|c| c.loc))
                .unwrap_or(super::Location { line: 1, column: 1 }),
            &path,
            ProblemKind::MessageShape("'keep_for' and 'many' need a 'correlate' rule"),
        );
    }
    out
}

/// Compiles the `sends:` section: each payload name a declared variable.
pub(super) fn sends(
    raw: &Entries<RawSend>,
    vars: &IndexMap<String, VarSpec>,
    report: &mut Report,
) -> IndexMap<String, SentMessage> {
    let mut out = IndexMap::new();
    for (key, value) in super::validate::unique(raw, "sent message", "sends", report) {
        let s = &value.value;
        let path = format!("sends.{}", key.value);
        out.insert(
            key.value.clone(),
            SentMessage {
                name_zh: s.name_zh.clone(),
                description: s.description.clone(),
                payload: payload(s.payload.as_ref(), vars, &path, report),
                flow: flow(s.flow.as_ref(), &path, report),
            },
        );
    }
    out
}

impl NodeCx<'_> {
    /// A send node's behaviour: the message must be declared under `sends:`.
    pub(super) fn send(&self, raw: &RawNode, report: &mut Report) -> Behaviour {
        let path = format!("nodes.{}.message", self.id);
        match &raw.message {
            Some(m) => {
                if !self.sends.contains_key(&m.value) {
                    report.add(m.loc, path, ProblemKind::UnknownSend(m.value.clone()));
                }
                Behaviour::Send(m.value.clone())
            }
            None => {
                report.add(
                    self.loc,
                    path,
                    ProblemKind::KeyMissing {
                        key: "message",
                        kind: "send",
                    },
                );
                Behaviour::Send(String::new())
            }
        }
    }

    /// A start node's message (a message start event): a message declared under `messages:`.
    pub(super) fn start_message(&self, raw: &RawNode, report: &mut Report) {
        if let Some(m) = &raw.message
            && !self.messages.contains_key(&m.value)
        {
            report.add(
                m.loc,
                format!("nodes.{}.message", self.id),
                ProblemKind::UnknownMessage(m.value.clone()),
            );
        }
        // `messages: [NAME, ...]`: further message start events of the same start node.
        if let Some(names) = &raw.messages {
            for (name, loc) in names.value.located(names.loc) {
                if !self.messages.contains_key(name) {
                    report.add(
                        loc,
                        format!("nodes.{}.messages", self.id),
                        ProblemKind::UnknownMessage(name.to_owned()),
                    );
                }
            }
        }
    }
}

/// The messages the top-level start node listens for: `message: NAME`, then each of
/// `messages: [NAME, ...]`, each once.
pub(super) fn start_messages(raw: &RawNode) -> Vec<String> {
    let mut out: Vec<String> = raw.message.iter().map(|m| m.value.clone()).collect();
    if let Some(names) = &raw.messages {
        for (name, _) in names.value.located(names.loc) {
            if !out.iter().any(|o| o == name) {
                out.push(name.to_owned());
            }
        }
    }
    out
}

/// The correlated messages that some catch node or boundary event of the definition waits for:
/// the engine indexes instances waiting for these by correlation value.
pub(super) fn correlated(
    nodes: &[super::Node],
    messages: &IndexMap<String, super::events::Message>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |name: &str| {
        if messages
            .get(name)
            .is_some_and(|m| !m.between.correlate.is_empty())
            && !out.iter().any(|o| o == name)
        {
            out.push(name.to_owned());
        }
    };
    for node in nodes {
        if let Behaviour::Catch(super::events::Trigger::Message(m)) = &node.behaviour {
            add(m);
        }
        for b in &node.boundary {
            if let super::events::BoundaryOn::Event(super::events::Trigger::Message(m)) = &b.on {
                add(m);
            }
        }
    }
    out
}
