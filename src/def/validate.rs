//! Validation: raw DTOs → a compiled [`ProcessDef`], or every problem found.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;

use indexmap::IndexMap;
use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed};

use super::raw::{At, Entries, Names, RawDef, RawKind, RawNode, RawRaci};
use super::timers::{Limits, RawLimits, TimeCx, TimerWait};
use super::{Behaviour, Location, Node, ProblemKind, ProcessDef, Role, Route};
use crate::cond::Condition;
use crate::def::Problem;
use crate::ids::{DefKey, NodeId, RoleId};
use crate::raci::Raci;
use crate::vars::{VarProblem, VarSpec, VarType};
pub(super) use crate::yaml::{Report, valid_id};

/// The most nodes of a definition. Validation's join check keeps, per flow, the stack of
/// gateways around it, so its memory grows with nodes times nesting.
pub(super) const MAX_NODES: usize = 1_000;

/// The most roles of a catalogue. The executor keeps a role's index in a `u16`, so this must stay
/// at most 65,535; a process with more than a few dozen roles is already unusual.
pub(super) const MAX_ROLES: usize = 10_000;

const _: () = assert!(MAX_ROLES <= u16::MAX as usize);

/// The most declared variables. Each may hold up to `VarSpec::MAX_VALUE_BYTES`.
pub(super) const MAX_VARIABLES: usize = 1_000;

/// The most outgoing flows of a node, and routes of an exclusive gateway.
pub(super) const MAX_FLOWS: usize = 100;

/// The entries of a mapping with unique, valid ids (see [`crate::yaml::unique`]).
pub(super) fn unique<'a, T>(
    entries: &'a Entries<T>,
    what: &'static str,
    section: &str,
    report: &mut Report,
) -> Vec<(&'a At<String>, &'a At<T>)> {
    crate::yaml::unique(entries, what, section, valid_id, report)
}

/// A process id may also use `-`, as file names do.
fn valid_process_id(id: &str) -> bool {
    id.len() <= crate::yaml::MAX_ID_BYTES && id.split('-').all(valid_id)
}

/// Refuses a definition with more nodes, roles or variables than allowed before anything else is
/// checked: the problem names the first entry past the limit.
fn check_counts(raw: &RawDef) -> Result<(), Vec<Problem>> {
    let mut report = Report(Vec::new());
    let mut count = |keys: Vec<&At<String>>, what: &'static str, section: &str, limit: usize| {
        if let Some(key) = keys.get(limit) {
            report.add(
                key.loc,
                format!("{section}.{}", key.value),
                ProblemKind::TooMany {
                    what,
                    found: keys.len() as u64,
                    limit: limit as u64,
                },
            );
        }
    };
    count(
        raw.nodes.0.iter().map(|(k, _)| k).collect(),
        "nodes",
        "nodes",
        MAX_NODES,
    );
    count(
        raw.roles.0.iter().map(|(k, _)| k).collect(),
        "roles",
        "roles",
        MAX_ROLES,
    );
    count(
        raw.variables.0.iter().map(|(k, _)| k).collect(),
        "variables",
        "variables",
        MAX_VARIABLES,
    );
    if report.0.is_empty() {
        Ok(())
    } else {
        Err(report.0)
    }
}

/// Refuses a declared default or enum value beyond the bounds of every variable value.
fn check_value(
    value: &serde_json::Value,
    loc: Location,
    path: String,
    report: &mut Report,
) -> bool {
    match crate::vars::check_bounds(value) {
        None => true,
        Some(problem) => {
            let kind = match problem {
                VarProblem::TooDeep { limit } => ProblemKind::ValueTooDeep { limit },
                _ => ProblemKind::ValueTooLarge {
                    limit: VarSpec::MAX_VALUE_BYTES,
                },
            };
            report.add(loc, path, kind);
            false
        }
    }
}

pub(super) fn compile(raw: RawDef, file: Option<PathBuf>) -> Result<ProcessDef, Vec<Problem>> {
    check_counts(&raw)?;
    let mut report = Report(Vec::new());
    if !valid_process_id(&raw.id.value) {
        report.add(
            raw.id.loc,
            "id",
            ProblemKind::InvalidId(raw.id.value.clone()),
        );
    }
    if raw.version.value == 0 {
        report.add(
            raw.version.loc,
            "version",
            ProblemKind::Syntax("version must be 1 or more".into()),
        );
    }

    let roles: IndexMap<RoleId, Role> = unique(&raw.roles, "role", "roles", &mut report)
        .into_iter()
        .map(|(k, v)| {
            let r = &v.value;
            (
                RoleId(k.value.clone()),
                Role {
                    name: r.name.clone(),
                    name_zh: r.name_zh.clone(),
                    description: r.description.clone(),
                },
            )
        })
        .collect();

    let mut vars: IndexMap<String, VarSpec> = IndexMap::new();
    for (k, v) in unique(&raw.variables, "variable", "variables", &mut report) {
        let spec = VarSpec {
            name: k.value.clone(),
            ty: v.value.ty,
            required: v.value.required,
            default: v.value.default.as_ref().map(|d| d.value.clone()),
            allowed: v.value.allowed.as_ref().map(|a| a.value.clone()),
            description: v.value.description.clone(),
            key: false,
        };
        let check = |value: &serde_json::Value, loc: Location, key: &str, report: &mut Report| {
            if !spec.ty.fits(value) {
                report.add(
                    loc,
                    format!("variables.{}.{key}", k.value),
                    ProblemKind::BadValue {
                        value: value.to_string(),
                        ty: spec.ty.as_str().to_owned(),
                    },
                );
            }
        };
        if let Some(d) = &v.value.default
            && check_value(
                &d.value,
                d.loc,
                format!("variables.{}.default", k.value),
                &mut report,
            )
        {
            check(&d.value, d.loc, "default", &mut report);
            if let Some(allowed) = &spec.allowed
                && !allowed.contains(&d.value)
            {
                report.add(
                    d.loc,
                    format!("variables.{}.default", k.value),
                    ProblemKind::BadValue {
                        value: d.value.to_string(),
                        ty: "the enum".to_owned(),
                    },
                );
            }
        }
        if let Some(a) = &v.value.allowed {
            for value in &a.value {
                if check_value(
                    value,
                    a.loc,
                    format!("variables.{}.enum", k.value),
                    &mut report,
                ) {
                    check(value, a.loc, "enum", &mut report);
                }
            }
        }
        vars.insert(k.value.clone(), spec);
    }

    let sla = raw.sla.as_ref().map(|sla| {
        let mut time = TimeCx {
            vars: &vars,
            roles: &roles,
            has_calendar: raw.calendar.is_some(),
            problems: &mut report.0,
        };
        let informed = sla
            .value
            .informed
            .as_ref()
            .map(|i| time.roles_of(i, "sla.informed"))
            .unwrap_or_default();
        let accountable = match &sla.value.accountable {
            Some(a) => time
                .roles_of(
                    &At {
                        value: super::raw::Names(vec![(a.value.clone(), Some(a.loc))]),
                        loc: a.loc,
                    },
                    "sla.accountable",
                )
                .pop(),
            None => None,
        };
        if accountable.is_none()
            && sla.value.accountable.is_none()
            && sla
                .value
                .escalate
                .as_ref()
                .is_some_and(|e| e.value.iter().any(|l| l.value.to.is_none()))
        {
            time.problems.push(Problem {
                location: Some(sla.loc),
                path: "sla.accountable".into(),
                kind: ProblemKind::EscalationShape(
                    "an escalation without 'to' goes to the SLA's 'accountable', which is missing",
                ),
            });
        }
        let accountable = accountable.unwrap_or_else(|| RoleId(String::new()));
        let limits = time.limits(
            RawLimits {
                due: Some(&sla.value.due),
                claim_due: None,
                remind: sla.value.remind.as_ref(),
                escalate: sla.value.escalate.as_ref(),
                timeout: None,
            },
            "sla",
            accountable.clone(),
            informed,
            std::slice::from_ref(&accountable),
        );
        Box::new(limits)
    });

    let accountable = super::control::accountable(
        raw.accountable.as_ref(),
        sla.as_ref().map(|s| &s.accountable),
        &roles,
        &mut report.0,
    );
    let keys = business_keys(raw.keys.as_ref(), &vars, &mut report);
    for key in &keys {
        let Some(spec) = vars.get_mut(key) else {
            continue;
        };
        spec.key = true;
        // The default's place (a key's default passed every other check already).
        let loc = raw
            .variables
            .0
            .iter()
            .find(|(k, _)| k.value == *key)
            .and_then(|(_, v)| v.value.default.as_ref())
            .map(|d| d.loc);
        if let (Some(Some(problem)), Some(loc)) =
            (spec.default.as_ref().map(|d| spec.reject(d)), loc)
        {
            report.add(
                loc,
                format!("variables.{key}.default"),
                ProblemKind::BadDefault {
                    name: key.clone(),
                    problem: problem.to_string(),
                },
            );
        }
    }
    let messages = super::events::messages(&raw.messages, &vars, &keys, &mut report);
    let sends = super::messages::sends(&raw.sends, &vars, &mut report);
    let signals = super::events::signals(&raw.signals, &mut report);

    let flat = super::scope::flatten(&raw.nodes, &mut report);
    let scoped_vars = super::scope::locals(&flat, &raw.variables, &mut vars, &mut report);
    let scope_index = super::scope::indices(&flat);
    let outer = super::scope::outer_names(&flat);
    // Send-back targets and milestones name nodes by qualified id.
    let index: HashMap<&str, NodeId> = flat
        .iter()
        .enumerate()
        .map(|(i, f)| (f.id.as_str(), NodeId(i as u32)))
        .collect();
    let empty = HashMap::new();

    let mut compiled = Vec::with_capacity(flat.len());
    for f in &flat {
        let cx = NodeCx {
            id: &f.id,
            loc: f.loc,
            index: scope_index.get(&f.parent).unwrap_or(&empty),
            roles: &roles,
            vars: &vars,
            has_calendar: raw.calendar.is_some(),
            messages: &messages,
            outer: f
                .parent
                .and_then(|p| outer.get(&p).map(|o| (flat[p].id.as_str(), o))),
            sends: &sends,
        };
        compiled.push(cx.compile(f.node, &mut report));
    }
    let (scopes, scope_edges) =
        super::scope::finish(&flat, &mut compiled, scoped_vars, &mut report);

    let starts: Vec<NodeId> = compiled
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.behaviour, Behaviour::Start) && n.parent.is_none())
        .map(|(i, _)| NodeId(i as u32))
        .collect();
    if starts.len() != 1 {
        let loc = starts
            .get(1)
            .map(|s| compiled[s.index()].location)
            .unwrap_or(Location { line: 1, column: 1 });
        report.add(loc, "nodes", ProblemKind::StartCount(starts.len()));
    }

    let mut graph: DiGraph<NodeId, ()> = DiGraph::with_capacity(compiled.len(), compiled.len() + 8);
    for i in 0..compiled.len() {
        graph.add_node(NodeId(i as u32));
    }
    for (i, n) in compiled.iter().enumerate() {
        for to in &n.next {
            graph.add_edge(NodeIndex::new(i), NodeIndex::new(to.index()), ());
        }
    }
    // A sub-process leads to its scope's start (for the graph checks; see `scope.rs`).
    for &(from, to) in &scope_edges {
        graph.add_edge(NodeIndex::new(from), NodeIndex::new(to), ());
    }
    for (i, n) in compiled.iter_mut().enumerate() {
        n.incoming = graph
            .neighbors_directed(NodeIndex::new(i), Direction::Incoming)
            .count() as u32;
    }

    super::events::check(&graph, &mut compiled, &mut report);
    let acyclic = check_cycles(&graph, &compiled, &mut report);
    let raw_nodes: Vec<&RawNode> = flat.iter().map(|f| f.node).collect();
    super::rules::compile(
        &raw_nodes,
        &vars,
        &index,
        &graph,
        acyclic,
        &mut compiled,
        &mut report.0,
    );
    let owner = super::assign::compile(
        &raw,
        &raw_nodes,
        &index,
        &graph,
        acyclic,
        &vars,
        &roles,
        &mut compiled,
        &mut report.0,
    );
    let allocating = owner.is_some() || compiled.iter().any(|n| n.alloc.is_some());
    let mut splits = HashMap::new();
    if let [start] = starts[..] {
        // In a graph with a cycle, "no end is reachable" mostly repeats the cycle: report it alone.
        check_reachability(&graph, &compiled, start, acyclic, &mut report);
        if acyclic {
            splits = check_joins(&graph, &compiled, &mut report);
        }
    }
    let or_joins = super::control::finish(&graph, &mut compiled, &splits, &mut report.0);
    super::scope::widen_regions(&mut compiled, &scopes);
    let controlled = compiled.iter().any(|n| n.control.is_some());
    let milestones = compiled.iter().any(|n| !n.while_at().is_empty());
    let start_messages = starts
        .first()
        .map(|s| super::messages::start_messages(flat[s.index()].node))
        .unwrap_or_default();
    let start_message = start_messages.first().cloned();
    let correlated = super::messages::correlated(&compiled, &messages);
    let auto_allocating = compiled.iter().any(|n| n.allocation().is_some());

    if !report.0.is_empty() {
        return Err(report.0);
    }
    Ok(ProcessDef {
        key: DefKey {
            id: raw.id.value,
            version: raw.version.value,
        },
        name: raw.name,
        name_zh: raw.name_zh,
        source: raw.source,
        description: raw.description,
        file,
        text: String::new(),
        roles,
        vars,
        keys,
        nodes: compiled,
        messages,
        signals,
        graph,
        start: starts[0],
        calendar: raw.calendar.map(|c| c.value),
        sla,
        accountable,
        or_joins,
        controlled,
        milestones,
        multi_scopes: scopes.iter().any(|s| s.multi),
        scopes,
        auto_allocating,
        cel: cel::Context::default(),
        sends,
        start_message,
        correlated,
        owner,
        allocating,
        start_messages,
    })
}

/// The definition's `keys:`: each a declared string or integer variable, named once.
fn business_keys(
    raw: Option<&At<Names>>,
    vars: &IndexMap<String, VarSpec>,
    report: &mut Report,
) -> Vec<String> {
    let Some(raw) = raw else {
        return Vec::new();
    };
    let mut keys: Vec<(String, Location)> = Vec::new();
    for (name, loc) in raw.value.located(raw.loc) {
        match vars.get(name) {
            None => report.add(
                loc,
                "keys",
                ProblemKind::UnknownVariable {
                    key: "keys",
                    name: name.to_owned(),
                },
            ),
            Some(spec) if !matches!(spec.ty, VarType::String | VarType::Integer) => report.add(
                loc,
                "keys",
                ProblemKind::BadKeyType {
                    name: name.to_owned(),
                    ty: spec.ty.as_str().to_owned(),
                },
            ),
            Some(_) => match keys.iter().find(|(k, _)| k == name) {
                Some((_, first)) => report.add(
                    loc,
                    "keys",
                    ProblemKind::Duplicate {
                        what: "key",
                        id: name.to_owned(),
                        first: *first,
                    },
                ),
                None => keys.push((name.to_owned(), loc)),
            },
        }
    }
    keys.into_iter().map(|(k, _)| k).collect()
}

/// What compiling one node needs to know about the rest of the definition.
pub(super) struct NodeCx<'a> {
    pub(super) id: &'a str,
    pub(super) loc: Location,
    index: &'a HashMap<&'a str, NodeId>,
    roles: &'a IndexMap<RoleId, Role>,
    vars: &'a IndexMap<String, VarSpec>,
    has_calendar: bool,
    /// The declared messages.
    pub(super) messages: &'a IndexMap<String, super::events::Message>,
    /// For a node inside a sub-process: the sub-process's id and the names outside its scope.
    outer: Option<(&'a str, &'a HashSet<&'a str>)>,
    /// The messages instances send (`sends:`).
    pub(super) sends: &'a IndexMap<String, super::messages::SentMessage>,
}

impl NodeCx<'_> {
    pub(super) fn time<'c>(&'c self, report: &'c mut Report) -> TimeCx<'c> {
        TimeCx {
            vars: self.vars,
            roles: self.roles,
            has_calendar: self.has_calendar,
            problems: &mut report.0,
        }
    }

    /// A user task's time limits; a timeout route becomes its second flow.
    fn limits(
        &self,
        raw: &RawNode,
        raci: &Raci,
        next: &mut Vec<NodeId>,
        report: &mut Report,
    ) -> Option<Box<Limits>> {
        if let Some(timeout) = &raw.timeout {
            let path = self.path("timeout.to");
            next.extend(self.target(&timeout.value.to.value, timeout.value.to.loc, path, report));
        }
        // A multi-instance task's durations may read its item variable.
        let with_item;
        let mut time = self.time(report);
        if let Some(f) = &raw.for_each
            && !self.vars.contains_key(&f.value.item.value)
        {
            let mut vars = self.vars.clone();
            vars.insert(
                f.value.item.value.clone(),
                VarSpec {
                    name: f.value.item.value.clone(),
                    ty: VarType::Any,
                    required: false,
                    default: None,
                    allowed: None,
                    description: None,
                    key: false,
                },
            );
            with_item = vars;
            time.vars = &with_item;
        }
        let limits = time.limits(
            RawLimits {
                due: raw.due.as_ref(),
                claim_due: raw.claim_due.as_ref(),
                remind: raw.remind.as_ref(),
                escalate: raw.escalate.as_ref(),
                timeout: raw.timeout.as_ref().map(|t| &t.value.after),
            },
            &format!("nodes.{}", self.id),
            raci.accountable.clone(),
            raci.informed.clone(),
            &raci.responsible,
        );
        (!limits.is_empty()).then(|| Box::new(limits))
    }

    fn timer(&self, raw: &RawNode, report: &mut Report) -> Behaviour {
        let wait = match (&raw.wait, &raw.until) {
            (Some(wait), None) => self
                .time(report)
                .span(wait, &self.path("wait"))
                .map(TimerWait::For),
            (None, Some(until)) => {
                match self.vars.get(&until.value) {
                    None => report.add(
                        until.loc,
                        self.path("until"),
                        ProblemKind::UndeclaredVariable(until.value.clone()),
                    ),
                    Some(spec) if !matches!(spec.ty, VarType::String | VarType::Any) => report.add(
                        until.loc,
                        self.path("until"),
                        ProblemKind::BadValue {
                            value: until.value.clone(),
                            ty: "string (an RFC 3339 instant)".into(),
                        },
                    ),
                    Some(_) => {}
                }
                Some(TimerWait::Until(until.value.clone()))
            }
            _ => {
                report.add(self.loc, self.path("kind"), ProblemKind::TimerShape);
                None
            }
        };
        Behaviour::Timer(wait.unwrap_or(TimerWait::Until(String::new())))
    }

    fn path(&self, key: &str) -> String {
        format!("nodes.{}.{key}", self.id)
    }

    fn compile(&self, raw: &RawNode, report: &mut Report) -> Node {
        let kind = raw.kind.value;
        let kind_name = kind.as_str();
        let mut node = Node {
            id: self.id.to_owned(),
            name: raw.name.clone(),
            name_zh: raw.name_zh.clone(),
            description: raw.description.clone(),
            location: self.loc,
            behaviour: Behaviour::End,
            next: Vec::new(),
            incoming: 0,
            limits: None,
            rules: None,
            control: None,
            boundary: Vec::new(),
            race: None,
            looping: super::multi::compile(self.id, raw, self.vars, &mut report.0),
            parent: None,
            org: None,
            alloc: None,
        };

        let not_allowed = |key: &'static str, loc: Option<Location>, report: &mut Report| {
            if let Some(loc) = loc {
                report.add(
                    loc,
                    self.path(key),
                    ProblemKind::KeyNotAllowed {
                        key,
                        kind: kind_name,
                    },
                );
            }
        };
        if kind != RawKind::UserTask {
            not_allowed("raci", raw.raci.as_ref().map(|a| a.loc), report);
            not_allowed("skills", raw.skills.as_ref().map(|a| a.loc), report);
            not_allowed("allocate", raw.allocate.as_ref().map(|a| a.loc), report);
        }
        // Call activities' keys (see `call.rs`), refused on other kinds there.
        let mut call = super::call::compile(self.id, raw, self.vars, self.loc, &mut report.0);
        if kind != RawKind::ServiceTask {
            not_allowed("handler", raw.handler.as_ref().map(|a| a.loc), report);
        }
        if kind != RawKind::Exclusive && kind != RawKind::Inclusive {
            not_allowed("routes", raw.routes.as_ref().map(|a| a.loc), report);
        }
        if kind != RawKind::UserTask {
            not_allowed("due", raw.due.as_ref().map(|a| a.loc), report);
            not_allowed("claim_due", raw.claim_due.as_ref().map(|a| a.loc), report);
            not_allowed("remind", raw.remind.as_ref().map(|a| a.loc), report);
            not_allowed("escalate", raw.escalate.as_ref().map(|a| a.loc), report);
        }
        if kind != RawKind::UserTask && kind != RawKind::Subprocess {
            not_allowed("timeout", raw.timeout.as_ref().map(|a| a.loc), report);
        }
        if kind != RawKind::Subprocess {
            not_allowed("nodes", raw.nodes.as_ref().map(|a| a.loc), report);
            not_allowed("variables", raw.variables.as_ref().map(|a| a.loc), report);
        } else if raw.nodes.is_none() {
            report.add(
                self.loc,
                self.path("nodes"),
                ProblemKind::KeyMissing {
                    key: "nodes",
                    kind: kind_name,
                },
            );
        }
        if kind != RawKind::Catch {
            // A send node sends a message; the process's start node may listen for one
            // (`messages.rs`), a sub-process's start may not.
            let start = kind == RawKind::Start && self.outer.is_none();
            if kind != RawKind::Send && !start {
                not_allowed("message", raw.message.as_ref().map(|a| a.loc), report);
            }
            if !start {
                not_allowed("messages", raw.messages.as_ref().map(|a| a.loc), report);
            }
            not_allowed("signal", raw.signal.as_ref().map(|a| a.loc), report);
        }
        if kind != RawKind::UserTask && kind != RawKind::Subprocess {
            not_allowed("boundary", raw.boundary.as_ref().map(|a| a.loc), report);
        }
        if kind != RawKind::Timer {
            not_allowed("wait", raw.wait.as_ref().map(|a| a.loc), report);
            not_allowed("until", raw.until.as_ref().map(|a| a.loc), report);
        }
        if matches!(kind, RawKind::UserTask | RawKind::ServiceTask) && raw.name.is_none() {
            report.add(
                self.loc,
                self.path("name"),
                ProblemKind::KeyMissing {
                    key: "name",
                    kind: kind_name,
                },
            );
        }

        match kind {
            RawKind::Exclusive => {
                not_allowed("next", raw.next.as_ref().map(|a| a.loc), report);
                node.behaviour = self.exclusive(raw, &mut node.next, report);
            }
            RawKind::Inclusive if raw.routes.is_some() || raw.next.is_none() => {
                // A split (or a join that splits again) takes routes; a join alone takes `next`.
                not_allowed("next", raw.next.as_ref().map(|a| a.loc), report);
                node.behaviour = match self.exclusive(raw, &mut node.next, report) {
                    Behaviour::Exclusive { routes, default } => {
                        Behaviour::Inclusive { routes, default }
                    }
                    other => other,
                };
            }
            RawKind::End => not_allowed("next", raw.next.as_ref().map(|a| a.loc), report),
            RawKind::Start
            | RawKind::UserTask
            | RawKind::ServiceTask
            | RawKind::Parallel
            | RawKind::Timer
            | RawKind::Catch
            | RawKind::Race
            | RawKind::Subprocess
            | RawKind::Send
            | RawKind::Call
            // An inclusive join alone: one `next`.
            | RawKind::Inclusive => {
                node.next = self.targets(raw.next.as_ref(), report);
                let found = raw.next.as_ref().map_or(0, |n| n.value.0.len());
                if matches!(kind, RawKind::Parallel | RawKind::Race) {
                    if found == 0 {
                        report.add(
                            self.loc,
                            self.path("next"),
                            ProblemKind::KeyMissing {
                                key: "next",
                                kind: kind_name,
                            },
                        );
                    }
                } else if found != 1 {
                    let loc = raw.next.as_ref().map_or(self.loc, |n| n.loc);
                    report.add(
                        loc,
                        self.path("next"),
                        ProblemKind::NextCount {
                            kind: kind_name,
                            found,
                        },
                    );
                }
                node.behaviour = match kind {
                    RawKind::Start => {
                        self.start_message(raw, report);
                        Behaviour::Start
                    }
                    RawKind::Send => self.send(raw, report),
                    RawKind::Parallel => Behaviour::Parallel,
                    RawKind::UserTask => {
                        let raci = self.raci(raw.raci.as_ref(), report);
                        node.limits = self.limits(raw, &raci, &mut node.next, report);
                        node.org = self.task_org(raw, &raci, node.limits.as_deref(), report);
                        node.boundary = self.boundaries(raw, &mut node.next, report);
                        Behaviour::UserTask(raci)
                    }
                    RawKind::Timer => self.timer(raw, report),
                    RawKind::Catch => self.catch(raw, report),
                    RawKind::Race => Behaviour::Race,
                    RawKind::Subprocess => {
                        let timeout = raw.timeout.as_ref().and_then(|t| {
                            let path = self.path("timeout.to");
                            node.next.extend(self.target(
                                &t.value.to.value,
                                t.value.to.loc,
                                path,
                                report,
                            ));
                            self.time(report)
                                .span(&t.value.after, &self.path("timeout.after"))
                                .map(TimerWait::For)
                        });
                        node.boundary = self.boundaries(raw, &mut node.next, report);
                        if let Some(list) = &raw.boundary
                            && list.value.iter().any(|b| {
                                b.value.timer.is_some() && b.value.interrupting != Some(false)
                            })
                        {
                            report.add(
                                list.loc,
                                self.path("boundary"),
                                ProblemKind::EventShape(
                                    "a sub-process's interrupting timer boundary is 'timeout: { after, to }'; a 'timer' boundary event on it must be 'interrupting: false'",
                                ),
                            );
                        }
                        Behaviour::Subprocess {
                            start: NodeId(0),
                            scope: 0,
                            timeout,
                        }
                    }
                    RawKind::Inclusive => Behaviour::Inclusive {
                        routes: Vec::new(),
                        default: None,
                    },
                    RawKind::Call => match call.take() {
                        Some(c) => Behaviour::Call(c),
                        None => Behaviour::End,
                    },
                    _ => match &raw.handler {
                        Some(h) => Behaviour::ServiceTask {
                            handler: h.value.clone(),
                            location: h.loc,
                        },
                        None => {
                            report.add(
                                self.loc,
                                self.path("handler"),
                                ProblemKind::KeyMissing {
                                    key: "handler",
                                    kind: kind_name,
                                },
                            );
                            Behaviour::ServiceTask {
                                handler: String::new(),
                                location: self.loc,
                            }
                        }
                    },
                };
            }
        }
        node.control = super::control::compile_node(self.id, raw, self.index, &mut report.0);
        node
    }

    pub(super) fn target(
        &self,
        name: &str,
        loc: Location,
        path: String,
        report: &mut Report,
    ) -> Option<NodeId> {
        let found = self.index.get(name).copied();
        if found.is_none() {
            let kind = match self.outer {
                Some((scope, names)) if names.contains(name) => ProblemKind::LeavesScope {
                    scope: scope.to_owned(),
                    node: name.to_owned(),
                },
                _ => ProblemKind::UnknownNode(name.to_owned()),
            };
            report.add(loc, path, kind);
        }
        found
    }

    fn targets(&self, next: Option<&At<Names>>, report: &mut Report) -> Vec<NodeId> {
        let Some(next) = next else { return Vec::new() };
        if next.value.0.len() > MAX_FLOWS {
            report.add(
                next.loc,
                self.path("next"),
                ProblemKind::TooMany {
                    what: "flows",
                    found: next.value.0.len() as u64,
                    limit: MAX_FLOWS as u64,
                },
            );
            return Vec::new();
        }
        next.value
            .located(next.loc)
            .filter_map(|(name, loc)| self.target(name, loc, self.path("next"), report))
            .collect()
    }

    fn exclusive(&self, raw: &RawNode, next: &mut Vec<NodeId>, report: &mut Report) -> Behaviour {
        let mut routes = Vec::new();
        let mut default = None;
        let Some(raw_routes) = &raw.routes else {
            report.add(self.loc, self.path("routes"), ProblemKind::NoRoutes);
            return Behaviour::Exclusive { routes, default };
        };
        if raw_routes.value.is_empty() {
            report.add(raw_routes.loc, self.path("routes"), ProblemKind::NoRoutes);
        }
        if raw_routes.value.len() > MAX_FLOWS {
            report.add(
                raw_routes.loc,
                self.path("routes"),
                ProblemKind::TooMany {
                    what: "routes",
                    found: raw_routes.value.len() as u64,
                    limit: MAX_FLOWS as u64,
                },
            );
            return Behaviour::Exclusive { routes, default };
        }
        let mut defaults = 0;
        for (i, route) in raw_routes.value.iter().enumerate() {
            let path = format!("nodes.{}.routes[{i}]", self.id);
            let r = &route.value;
            let to = self.target(&r.to.value, r.to.loc, format!("{path}.to"), report);
            let is_default = r.default == Some(true);
            match (&r.when, is_default) {
                (Some(_), true) | (None, false) => {
                    report.add(route.loc, &path, ProblemKind::RouteShape)
                }
                (None, true) => {
                    defaults += 1;
                    if defaults > 1 {
                        report.add(route.loc, &path, ProblemKind::TwoDefaults);
                    }
                    if let Some(to) = to {
                        default.get_or_insert(to);
                    }
                }
                (Some(when), false) => match Condition::compile(&when.value) {
                    Err(kind) => report.add(when.loc, format!("{path}.when"), kind),
                    Ok(cond) => {
                        for var in cond.reads() {
                            if !self.vars.contains_key(var) {
                                report.add(
                                    when.loc,
                                    format!("{path}.when"),
                                    ProblemKind::UndeclaredVariable(var.clone()),
                                );
                            }
                        }
                        if let Some(to) = to {
                            routes.push(Route { cond, to });
                        }
                    }
                },
            }
        }
        next.extend(routes.iter().map(|r| r.to));
        next.extend(default);
        Behaviour::Exclusive { routes, default }
    }

    fn raci(&self, raci: Option<&At<RawRaci>>, report: &mut Report) -> Raci {
        let mut out = Raci {
            responsible: Vec::new(),
            accountable: RoleId(String::new()),
            consulted: Vec::new(),
            informed: Vec::new(),
            scopes: Vec::new(),
        };
        let Some(raci) = raci else {
            report.add(self.loc, self.path("raci"), ProblemKind::MissingRaci);
            return out;
        };
        let r = &raci.value;
        let scopes = std::cell::RefCell::new(Vec::<(RoleId, String)>::new());
        let roles = |names: &Option<At<Names>>, key: &str, report: &mut Report| -> Vec<RoleId> {
            let Some(names) = names else {
                return Vec::new();
            };
            names
                .value
                .located(names.loc)
                .filter_map(|(name, loc)| {
                    // A scoped reference: `role@variable`, the unit the variable names.
                    let (name, scope) = match name.split_once('@') {
                        Some((role, var)) => (role, Some(var)),
                        None => (name, None),
                    };
                    if let Some(var) = scope {
                        let path = self.path(&format!("raci.{key}"));
                        let role = RoleId(name.to_owned());
                        if !self.vars.contains_key(var) {
                            report.add(
                                loc,
                                path,
                                ProblemKind::UnknownVariable {
                                    key: "a scoped role reference",
                                    name: var.to_owned(),
                                },
                            );
                        } else if self.vars[var].ty != VarType::String {
                            report.add(
                                loc,
                                path,
                                ProblemKind::BadScope(format!(
                                    "scope variable '{var}' must be of type string (a unit id)"
                                )),
                            );
                        } else {
                            let mut scopes = scopes.borrow_mut();
                            match scopes.iter().find(|(r, _)| *r == role) {
                                Some((_, v)) if v != var => report.add(
                                    loc,
                                    path,
                                    ProblemKind::BadScope(format!(
                                        "role '{name}' is scoped to '{v}' elsewhere in this task; a role has one scope per task"
                                    )),
                                ),
                                Some(_) => {}
                                None => scopes.push((role, var.to_owned())),
                            }
                        }
                    }
                    let role = RoleId(name.to_owned());
                    if self.roles.contains_key(&role) {
                        Some(role)
                    } else {
                        report.add(
                            loc,
                            self.path(&format!("raci.{key}")),
                            ProblemKind::UnknownRole(name.to_owned()),
                        );
                        None
                    }
                })
                .collect()
        };
        out.responsible = roles(&r.responsible, "responsible", report);
        let accountable = roles(&r.accountable, "accountable", report);
        out.consulted = roles(&r.consulted, "consulted", report);
        out.informed = roles(&r.informed, "informed", report);
        if r.responsible.as_ref().is_none_or(|n| n.value.0.is_empty()) {
            let loc = r.responsible.as_ref().map_or(raci.loc, |n| n.loc);
            report.add(
                loc,
                self.path("raci.responsible"),
                ProblemKind::NoResponsible,
            );
        }
        let count = r.accountable.as_ref().map_or(0, |n| n.value.0.len());
        if count != 1 {
            let loc = r.accountable.as_ref().map_or(raci.loc, |n| n.loc);
            report.add(
                loc,
                self.path("raci.accountable"),
                ProblemKind::AccountableCount(count),
            );
        }
        if let Some(a) = accountable.into_iter().next() {
            out.accountable = a;
        }
        out.scopes = scopes.into_inner();
        out
    }

    /// A user task's `skills` and `allocate`; an escalation to `role@up` needs a scoped task.
    fn task_org(
        &self,
        raw: &RawNode,
        raci: &Raci,
        limits: Option<&super::timers::Limits>,
        report: &mut Report,
    ) -> Option<Box<crate::org::TaskOrg>> {
        if limits.is_some_and(|l| l.escalate.iter().any(|e| e.up)) && raci.scopes.is_empty() {
            let loc = raw.escalate.as_ref().map_or(self.loc, |e| e.loc);
            report.add(
                loc,
                self.path("escalate"),
                ProblemKind::BadScope(
                    "'role@up' reassigns to the unit above the task's scope, but no role of this task is scoped (write e.g. 'network_ops@local_network')".to_owned(),
                ),
            );
        }
        let mut org = crate::org::TaskOrg::default();
        if let Some(skills) = &raw.skills {
            for (name, loc) in skills.value.located(skills.loc) {
                if !valid_id(name) {
                    report.add(
                        loc,
                        self.path("skills"),
                        ProblemKind::InvalidId(name.to_owned()),
                    );
                } else if !org.skills.iter().any(|s| s == name) {
                    org.skills.push(name.to_owned());
                }
            }
        }
        if let Some(a) = &raw.allocate {
            match crate::org::Allocation::parse(&a.value) {
                Some(rule) => org.allocate = Some(rule),
                None => report.add(
                    a.loc,
                    self.path("allocate"),
                    ProblemKind::BadScope(format!(
                        "unknown allocation '{}': use round_robin or shortest_queue",
                        a.value
                    )),
                ),
            }
        }
        (raw.skills.is_some() || raw.allocate.is_some()).then(|| Box::new(org))
    }
}

/// Reports every cycle (one per strongly connected component). Returns whether the graph is a DAG.
fn check_cycles(graph: &DiGraph<NodeId, ()>, nodes: &[Node], report: &mut Report) -> bool {
    let mut acyclic = true;
    for scc in petgraph::algo::tarjan_scc(graph) {
        let first = *scc.iter().min().expect("components are never empty");
        let self_loop = graph.contains_edge(first, first);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        acyclic = false;
        let members: HashSet<NodeIndex> = scc.iter().copied().collect();
        let path = cycle_from(graph, first, &members);
        let names: Vec<String> = path.iter().map(|i| nodes[i.index()].id.clone()).collect();
        report.add(
            nodes[first.index()].location,
            format!("nodes.{}", nodes[first.index()].id),
            ProblemKind::Cycle(names),
        );
    }
    acyclic
}

/// A shortest cycle through `start` inside one strongly connected component, closed by `start`.
fn cycle_from(
    graph: &DiGraph<NodeId, ()>,
    start: NodeIndex,
    members: &HashSet<NodeIndex>,
) -> Vec<NodeIndex> {
    let mut parent: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(u) = queue.pop_front() {
        for v in graph.neighbors(u) {
            if v == start {
                let mut path = vec![start];
                let mut at = u;
                while at != start {
                    path.push(at);
                    at = parent[&at];
                }
                path.push(start);
                let last = path.len() - 1;
                path[1..last].reverse();
                return path;
            }
            if members.contains(&v) && !parent.contains_key(&v) {
                parent.insert(v, u);
                queue.push_back(v);
            }
        }
    }
    vec![start, start]
}

fn check_reachability(
    graph: &DiGraph<NodeId, ()>,
    nodes: &[Node],
    start: NodeId,
    acyclic: bool,
    report: &mut Report,
) {
    let mut seen = vec![false; nodes.len()];
    let mut dfs = Dfs::new(graph, NodeIndex::new(start.index()));
    while let Some(n) = dfs.next(graph) {
        seen[n.index()] = true;
    }
    for (i, node) in nodes.iter().enumerate() {
        if !seen[i] {
            report.add(
                node.location,
                format!("nodes.{}", node.id),
                ProblemKind::Unreachable(node.id.clone()),
            );
        }
    }
    let reversed = Reversed(graph);
    let mut ends = vec![false; nodes.len()];
    for (i, node) in nodes.iter().enumerate() {
        if matches!(node.behaviour, Behaviour::End) && !ends[i] {
            let mut dfs = Dfs::new(reversed, NodeIndex::new(i));
            while let Some(n) = dfs.next(reversed) {
                ends[n.index()] = true;
            }
        }
    }
    for (i, node) in nodes.iter().enumerate() {
        // Only reachable nodes: an unreachable one is reported as that already.
        if acyclic && !ends[i] && seen[i] {
            report.add(
                node.location,
                format!("nodes.{}", node.id),
                ProblemKind::NoEnd(node.id.clone()),
            );
        }
    }
}

/// One step of the gateway context a flow is in: which split, which branch, and whether the
/// split was parallel.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Branch {
    split: NodeIndex,
    arm: usize,
    parallel: bool,
    /// The split is an inclusive gateway: its arms run concurrently, as a fork's do, and meet at
    /// an inclusive join.
    inclusive: bool,
}

/// Checks that parallel joins match forks. Each flow is labelled with the stack of splits it is
/// inside; a join must receive exactly all arms of one fork with the same context around it, and a
/// non-join merge may only drop exclusive arms (dropping a parallel arm would run the merge node
/// once per arm).
///
/// Inclusive gateways follow the same rule: an inclusive join receives exactly all routes of one
/// inclusive split, and inclusive arms never merge at a non-join. Returns each join's split.
fn check_joins(
    graph: &DiGraph<NodeId, ()>,
    nodes: &[Node],
    report: &mut Report,
) -> HashMap<NodeIndex, NodeIndex> {
    let mut splits = HashMap::new();
    let order = match petgraph::algo::toposort(graph, None) {
        Ok(order) => order,
        Err(_) => return splits,
    };
    // The labels of the flows arriving at each node.
    let mut arriving: Vec<Vec<Vec<Branch>>> = vec![Vec::new(); nodes.len()];
    for u in order {
        let node = &nodes[u.index()];
        let labels = std::mem::take(&mut arriving[u.index()]);
        let here: Vec<Branch> = if labels.len() <= 1 {
            labels.into_iter().next().unwrap_or_default()
        } else if matches!(
            node.behaviour,
            Behaviour::Parallel | Behaviour::Inclusive { .. }
        ) {
            let inclusive = matches!(node.behaviour, Behaviour::Inclusive { .. });
            let (label, split) = join_label(inclusive, node, nodes, graph, &labels, report);
            if let Some(split) = split {
                splits.insert(u, split);
            }
            label
        } else {
            let prefix = common_prefix(&labels);
            let unsynced = !matches!(node.behaviour, Behaviour::End)
                && labels
                    .iter()
                    .any(|l| l[prefix.len()..].iter().any(|b| b.parallel || b.inclusive));
            if unsynced {
                report.add(
                    node.location,
                    format!("nodes.{}", node.id),
                    ProblemKind::UnsyncedMerge(node.id.clone()),
                );
            }
            prefix
        };
        let split = match node.behaviour {
            Behaviour::Parallel => node.next.len() > 1,
            // A user task with a timeout route leaves by one of two flows, as an exclusive
            // gateway does; so does a race, whose first target to leave withdraws the others.
            Behaviour::Exclusive { .. } | Behaviour::UserTask(_) | Behaviour::Race => {
                node.next.len() > 1
            }
            // A sub-process with a timeout leaves by one of two flows.
            Behaviour::Subprocess { .. } => node.next.len() > 1,
            Behaviour::Inclusive { .. } => node.next.len() > 1,
            _ => false,
        };
        for (arm, to) in node.next.iter().enumerate() {
            let mut label = here.clone();
            if split {
                label.push(Branch {
                    split: u,
                    arm,
                    // A non-interrupting boundary's token runs beside the task's: a branch that
                    // must not merge with the task's own path, as a fork's branch.
                    parallel: matches!(node.behaviour, Behaviour::Parallel)
                        || node
                            .boundary
                            .iter()
                            .any(|b| !b.interrupting && b.flow as usize == arm),
                    inclusive: matches!(node.behaviour, Behaviour::Inclusive { .. }),
                });
            }
            arriving[to.index()].push(label);
        }
    }
    splits
}

fn common_prefix(labels: &[Vec<Branch>]) -> Vec<Branch> {
    let first = &labels[0];
    let mut len = first.len();
    for l in &labels[1..] {
        len = len.min(first.iter().zip(l).take_while(|(a, b)| a == b).count());
    }
    first[..len].to_vec()
}

/// The label after a join (parallel, or `inclusive`), and the split whose branches it joins.
fn join_label(
    inclusive: bool,
    node: &Node,
    nodes: &[Node],
    graph: &DiGraph<NodeId, ()>,
    labels: &[Vec<Branch>],
    report: &mut Report,
) -> (Vec<Branch>, Option<NodeIndex>) {
    let mut bad = |reason: String| {
        report.add(
            node.location,
            format!("nodes.{}", node.id),
            ProblemKind::BadJoin {
                node: node.id.clone(),
                reason,
            },
        );
    };
    let lasts: Vec<Option<&Branch>> = labels.iter().map(|l| l.last()).collect();
    if inclusive && !lasts.iter().any(|b| b.is_some_and(|b| b.inclusive)) {
        report.add(
            node.location,
            format!("nodes.{}", node.id),
            ProblemKind::OrJoinWithoutSplit(node.id.clone()),
        );
        return (common_prefix(labels), None);
    }
    let matches = |b: &Branch| if inclusive { b.inclusive } else { b.parallel };
    if let Some(Some(b)) = lasts.iter().find(|b| b.is_some_and(|b| !matches(b))) {
        let split = &nodes[b.split.index()];
        let through = match split.behaviour {
            Behaviour::UserTask(_) => {
                format!("a timeout or boundary route of task '{}'", split.id)
            }
            Behaviour::Race => format!("race '{}'", split.id),
            Behaviour::Inclusive { .. } => format!("inclusive gateway '{}'", split.id),
            Behaviour::Parallel => format!("parallel fork '{}'", split.id),
            _ => format!("exclusive gateway '{}'", split.id),
        };
        if inclusive {
            bad(format!(
                "a flow arrives through {through}, not as a route of the inclusive split"
            ));
        } else {
            bad(format!(
                "a flow arrives through {through}, so the join may wait for a branch that never comes"
            ));
        }
        return (common_prefix(labels), None);
    }
    let what = if inclusive {
        "inclusive split"
    } else {
        "parallel fork"
    };
    if lasts.iter().any(Option::is_none) {
        bad(format!("a flow arrives that is not a branch of any {what}"));
        return (common_prefix(labels), None);
    }
    let forks: Vec<NodeIndex> = lasts.iter().flatten().map(|b| b.split).collect();
    let fork = forks[0];
    if let Some(other) = forks.iter().find(|f| **f != fork) {
        bad(format!(
            "its branches come from different {} '{}' and '{}'",
            if inclusive { "splits" } else { "forks" },
            nodes[fork.index()].id,
            nodes[other.index()].id
        ));
        return (common_prefix(labels), None);
    }
    let arms = graph.neighbors(fork).count();
    let mut seen: Vec<usize> = lasts.iter().flatten().map(|b| b.arm).collect();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != labels.len() || labels.len() != arms {
        bad(format!(
            "{} '{}' has {arms} branches but {} flows arrive here",
            if inclusive { "inclusive split" } else { "fork" },
            nodes[fork.index()].id,
            labels.len()
        ));
    } else if labels
        .iter()
        .any(|l| l[..l.len() - 1] != labels[0][..labels[0].len() - 1])
    {
        bad("its branches are inside different gateways".to_owned());
    }
    (labels[0][..labels[0].len() - 1].to_vec(), Some(fork))
}
