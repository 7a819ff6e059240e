//! Process definitions: YAML text → raw DTOs → validation → an immutable compiled graph.
//!
//! **Invariant:** a [`ProcessDef`] is valid by construction and never changes; the executor shares
//! it by `Arc` and never re-checks what validation proved (a DAG, one start, resolved targets,
//! matched joins, compiled conditions).

pub(crate) mod assign;
pub(crate) mod call;
pub(crate) mod control;
pub(crate) mod events;
pub(crate) mod flows;
pub(crate) mod messages;
pub(crate) mod multi;
mod raw;
mod render;
pub(crate) mod rules;
pub(crate) mod scope;
pub(crate) mod timers;
mod validate;

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use petgraph::graph::DiGraph;

pub use crate::yaml::{LoadError, Location, Problem, ProblemKind};
pub use events::{Message, Signal};
pub use messages::SentMessage;

use crate::cond::Condition;
use crate::ids::{DefKey, NodeId, RoleId};
use crate::raci::Raci;
use crate::vars::VarSpec;

/// A validated, compiled process definition. Immutable, `Send + Sync`, shared by `Arc`.
pub struct ProcessDef {
    pub(crate) key: DefKey,
    pub(crate) name: String,
    pub(crate) name_zh: Option<String>,
    pub(crate) source: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) file: Option<PathBuf>,
    /// The YAML text it was compiled from: stores keep it, so an instance can always be explained.
    pub(crate) text: String,
    pub(crate) roles: IndexMap<RoleId, Role>,
    pub(crate) vars: IndexMap<String, VarSpec>,
    /// The business keys (`keys:`): declared string or integer variables, in YAML order.
    pub(crate) keys: Vec<String>,
    pub(crate) nodes: Vec<Node>,
    /// The messages an instance receives.
    pub(crate) messages: IndexMap<String, events::Message>,
    /// The signals the definition declares (`signals:`), by name.
    pub(crate) signals: IndexMap<String, events::Signal>,
    pub(crate) graph: DiGraph<NodeId, ()>,
    pub(crate) start: NodeId,
    /// The business calendar's name, when the process uses business time.
    pub(crate) calendar: Option<String>,
    /// The instance-wide deadline.
    pub(crate) sla: Option<Box<timers::Limits>>,
    /// The role that may cancel an instance: the definition's `accountable`, else the SLA's.
    pub(crate) accountable: Option<RoleId>,
    /// The inclusive joins (OR-joins), checked at the end of each run-to-completion pass.
    pub(crate) or_joins: Vec<NodeId>,
    /// Whether any node has a [`control::NodeControl`]: when none has, the run loop never looks.
    pub(crate) controlled: bool,
    /// Whether any user task has milestones (`while_at`): when none has, the end of each run
    /// pass does not look for one that passed.
    pub(crate) milestones: bool,
    /// The embedded sub-processes (see `scope.rs`): empty for most definitions, and then the run
    /// loop never looks.
    pub(crate) scopes: Vec<scope::Scope>,
    /// Whether any user task has `allocate:`: when none has, opening a task never looks.
    pub(crate) auto_allocating: bool,
    /// The root CEL scope; building one costs tens of microseconds, so it is built once here.
    pub(crate) cel: cel::Context<'static, 'static>,
    /// Whether any sub-process has `for_each` (see `exec/runs.rs`): when none has, the run loop
    /// never looks at a token's run.
    pub(crate) multi_scopes: bool,
    /// The messages instances send to other processes (`sends:`), by name.
    pub(crate) sends: IndexMap<String, messages::SentMessage>,
    /// The message the start node listens for (a message start event).
    pub(crate) start_message: Option<String>,
    /// The correlated messages a catch or boundary event waits for: empty for most
    /// definitions, and then the engine's correlation index never looks at an instance.
    pub(crate) correlated: Vec<String>,
    /// The case owner rule: whoever completes this user task owns the case (`owner:`).
    pub(crate) owner: Option<NodeId>,
    /// Whether the definition has a case owner or any user task an allocation rule
    /// (`assign`, `four_eyes`, `priority`): when not, claims and completions never look.
    pub(crate) allocating: bool,
    /// Every message the start node listens for (`message:` then `messages:`): each starts an
    /// instance when it matches no waiting one. Empty for most definitions.
    pub(crate) start_messages: Vec<String>,
}

impl std::fmt::Debug for ProcessDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessDef")
            .field("key", &self.key)
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

/// A role of the catalogue.
#[derive(Clone, Debug)]
pub struct Role {
    /// The English name.
    pub name: String,
    /// The Chinese name.
    pub name_zh: Option<String>,
    /// A description.
    pub description: Option<String>,
}

/// A node of a compiled definition.
#[derive(Debug)]
pub struct Node {
    pub(crate) id: String,
    pub(crate) name: Option<String>,
    pub(crate) name_zh: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) location: Location,
    pub(crate) behaviour: Behaviour,
    /// Outgoing flows, in YAML order (for an exclusive gateway: the route targets).
    pub(crate) next: Vec<NodeId>,
    /// The number of incoming flows.
    pub(crate) incoming: u32,
    /// A user task's time limits.
    pub(crate) limits: Option<Box<timers::Limits>>,
    /// A user task's send-back targets, milestones and interleaving group.
    pub(crate) rules: Option<Box<rules::TaskRules>>,
    /// Cancellation, termination and partial or inclusive joining, for the few nodes that have
    /// them (see `control.rs`).
    pub(crate) control: Option<Box<control::NodeControl>>,
    /// A user task's boundary events.
    pub(crate) boundary: Vec<events::Boundary>,
    /// The race gateway whose target this node is.
    pub(crate) race: Option<NodeId>,
    /// A task's `for_each` and `repeat`, when it has either.
    pub(crate) looping: Option<Box<multi::Looping>>,
    /// The embedded sub-process whose scope this node is in (`None` at the top level).
    pub(crate) parent: Option<NodeId>,
    /// A user task's required skills and allocation rule (`skills:`, `allocate:`), when it has
    /// either.
    pub(crate) org: Option<Box<crate::org::TaskOrg>>,
    /// A user task's allocation rules (see `assign.rs`).
    pub(crate) alloc: Option<Box<assign::Allocation>>,
}

/// What a node does when a token reaches it.
#[derive(Debug)]
pub(crate) enum Behaviour {
    Start,
    End,
    UserTask(Raci),
    ServiceTask {
        handler: String,
        location: Location,
    },
    Exclusive {
        routes: Vec<Route>,
        default: Option<NodeId>,
    },
    Parallel,
    Timer(timers::TimerWait),
    /// Takes every route whose condition holds (the default when none does); as a join, waits
    /// for the branches that were started.
    Inclusive {
        routes: Vec<Route>,
        default: Option<NodeId>,
    },
    /// Waits for a message delivered to the instance or a signal.
    Catch(events::Trigger),
    /// An event-based gateway: the first target to leave its node wins.
    Race,
    /// An embedded sub-process: its token waits here while a token runs its scope from the
    /// scope's start; `scope` indexes [`ProcessDef::scopes`].
    Subprocess {
        start: NodeId,
        scope: u32,
        /// An interrupting timer boundary: the scope is withdrawn and the token leaves by the
        /// second flow.
        timeout: Option<timers::TimerWait>,
    },
    /// Sends the message declared under `sends:` to other processes (through the outbox).
    Send(String),
    /// A call activity: starts a child instance of another definition and waits for it (see
    /// `call.rs`).
    Call(Box<call::Call>),
}

#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) cond: Condition,
    pub(crate) to: NodeId,
}

/// The kind of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeKind {
    /// Where an instance begins.
    Start,
    /// Where a token ends.
    End,
    /// Waits for a person.
    UserTask,
    /// Calls a host handler synchronously.
    ServiceTask,
    /// Takes the first route whose condition holds.
    Exclusive,
    /// Forks into all outgoing flows; joins by waiting for every incoming flow.
    Parallel,
    /// Waits for a duration or until an instant.
    Timer,
    /// Takes every route whose condition holds; joins by waiting for the branches that were
    /// started.
    Inclusive,
    /// Waits for a message delivered to the instance, or a signal.
    Catch,
    /// An event-based gateway (deferred choice): its targets wait together and the first to
    /// leave its node withdraws the others.
    Race,
    /// An embedded sub-process: a scope with its own start, nodes and ends.
    Subprocess,
    /// Sends a message to other processes (correlated like [`Engine::correlate`](crate::Engine::correlate)).
    Send,
    /// A call activity: starts an instance of another definition and waits for it (WCP 22).
    Call,
}

impl NodeKind {
    /// The name used in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Start => "start",
            NodeKind::End => "end",
            NodeKind::UserTask => "user_task",
            NodeKind::ServiceTask => "service_task",
            NodeKind::Exclusive => "exclusive",
            NodeKind::Parallel => "parallel",
            NodeKind::Timer => "timer",
            NodeKind::Inclusive => "inclusive",
            NodeKind::Catch => "catch",
            NodeKind::Race => "race",
            NodeKind::Send => "send",
            NodeKind::Subprocess => "subprocess",
            NodeKind::Call => "call",
        }
    }
}

impl Node {
    /// The YAML id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The English name, if given.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The Chinese name, if given.
    pub fn name_zh(&self) -> Option<&str> {
        self.name_zh.as_deref()
    }

    /// The description, if given.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// Where the node's key is in the file.
    pub fn location(&self) -> Location {
        self.location
    }

    /// The kind.
    pub fn kind(&self) -> NodeKind {
        match self.behaviour {
            Behaviour::Start => NodeKind::Start,
            Behaviour::End => NodeKind::End,
            Behaviour::UserTask(_) => NodeKind::UserTask,
            Behaviour::ServiceTask { .. } => NodeKind::ServiceTask,
            Behaviour::Exclusive { .. } => NodeKind::Exclusive,
            Behaviour::Parallel => NodeKind::Parallel,
            Behaviour::Timer(_) => NodeKind::Timer,
            Behaviour::Inclusive { .. } => NodeKind::Inclusive,
            Behaviour::Catch(_) => NodeKind::Catch,
            Behaviour::Race => NodeKind::Race,
            Behaviour::Subprocess { .. } => NodeKind::Subprocess,
            Behaviour::Send(_) => NodeKind::Send,
            Behaviour::Call(_) => NodeKind::Call,
        }
    }

    /// The RACI of a user task.
    pub fn raci(&self) -> Option<&Raci> {
        match &self.behaviour {
            Behaviour::UserTask(raci) => Some(raci),
            _ => None,
        }
    }

    /// The handler name of a service task.
    pub fn handler(&self) -> Option<&str> {
        match &self.behaviour {
            Behaviour::ServiceTask { handler, .. } => Some(handler),
            _ => None,
        }
    }

    /// What a catch node waits for: `message NAME` or `signal NAME`.
    pub fn trigger(&self) -> Option<String> {
        match &self.behaviour {
            Behaviour::Catch(t) => Some(t.describe()),
            _ => None,
        }
    }

    /// Whether the task runs once per item of a list (`for_each`).
    pub fn is_multi_instance(&self) -> bool {
        self.for_each().is_some()
    }

    /// The most runs of a task with `repeat`.
    pub fn max_iterations(&self) -> Option<u32> {
        self.looping
            .as_ref()
            .and_then(|l| l.repeat.as_ref())
            .map(|r| r.max)
    }

    pub(crate) fn for_each(&self) -> Option<&multi::ForEach> {
        self.looping.as_ref().and_then(|l| l.for_each.as_ref())
    }

    pub(crate) fn repeat(&self) -> Option<&multi::Repeat> {
        self.looping.as_ref().and_then(|l| l.repeat.as_ref())
    }

    /// The embedded sub-process whose scope this node is in, if any.
    pub fn parent(&self) -> Option<NodeId> {
        self.parent
    }

    /// The skills a user task's performer needs (`skills:`), in YAML order.
    pub fn skills(&self) -> &[String] {
        self.org.as_deref().map_or(&[], |o| &o.skills[..])
    }

    /// How a user task is allocated when it opens (`allocate:`), if it is.
    pub fn allocation(&self) -> Option<crate::org::Allocation> {
        self.org.as_deref().and_then(|o| o.allocate)
    }

    /// The outgoing flows, in YAML order.
    pub fn next(&self) -> &[NodeId] {
        &self.next
    }

    /// The earlier user tasks this user task may send the case back to (`send_back`), in YAML
    /// order.
    pub fn send_back(&self) -> &[NodeId] {
        self.rules.as_deref().map_or(&[], |r| &r.send_back[..])
    }

    /// The milestones of a user task (`while_at`): it may be claimed and completed only while a
    /// token of its instance is at one of them. Empty when the task has none.
    pub fn while_at(&self) -> &[NodeId] {
        self.rules.as_deref().map_or(&[], |r| &r.while_at[..])
    }

    /// The interleaving group of a user task (`mutex`): at most one task of a group is claimed
    /// at a time within an instance.
    pub fn mutex(&self) -> Option<&str> {
        self.rules.as_deref().and_then(|r| r.mutex.as_deref())
    }

    /// The variables a user task's completion may set (`sets:`, its form), in YAML order;
    /// `None` when it does not say (any declared variable).
    pub fn sets(&self) -> Option<impl Iterator<Item = &str>> {
        let sets = self.rules.as_deref()?.sets.as_deref()?;
        Some(sets.iter().map(|s| &**s))
    }

    /// The definition id a call activity calls.
    pub fn called_process(&self) -> Option<&str> {
        self.call().map(|c| c.process.as_str())
    }

    /// The definition version a call activity calls; `None` for the newest deployed when the
    /// child starts (or when the node is no call activity).
    pub fn called_version(&self) -> Option<u32> {
        self.call().and_then(|c| c.version)
    }

    /// A call activity's information-flow number (`flow:`, processes.md §3), for the flow map.
    pub fn flow(&self) -> Option<u32> {
        self.call().and_then(|c| c.flow)
    }

    /// A call activity's depth limit (`max_depth:`); `None` when it uses the engine's default
    /// ([`Config::max_call_depth`](crate::Config::max_call_depth)).
    pub fn max_depth(&self) -> Option<u32> {
        self.call().and_then(|c| c.max_depth)
    }

    pub(crate) fn call(&self) -> Option<&call::Call> {
        match &self.behaviour {
            Behaviour::Call(c) => Some(c),
            _ => None,
        }
    }

    /// The conditions of an exclusive or inclusive gateway's routes, with their targets, in
    /// order; the default route has no condition.
    pub fn routes(&self) -> Vec<(Option<&str>, NodeId)> {
        match &self.behaviour {
            Behaviour::Exclusive { routes, default } | Behaviour::Inclusive { routes, default } => {
                routes
                    .iter()
                    .map(|r| (Some(r.cond.source()), r.to))
                    .chain(default.map(|d| (None, d)))
                    .collect()
            }
            _ => Vec::new(),
        }
    }
}

impl ProcessDef {
    /// The longest CEL expression (a route's `when`, a duration's `expr`) accepted, in bytes;
    /// longer ones are [`ProblemKind::ExpressionTooLong`].
    pub const MAX_EXPRESSION_BYTES: usize = crate::cond::MAX_BYTES;

    /// How deeply a CEL expression may nest, both its brackets and its syntax tree (macros
    /// expanded); deeper ones are [`ProblemKind::ExpressionTooDeep`]. Evaluation recurses once per
    /// level.
    pub const MAX_EXPRESSION_DEPTH: usize = crate::cond::MAX_DEPTH;

    /// The most work a CEL expression may do when variables hold the largest values allowed, in
    /// units of about one byte touched; costlier ones are [`ProblemKind::ExpressionTooCostly`].
    pub const MAX_EXPRESSION_COST: u64 = crate::cond::MAX_COST;

    /// The stack a thread evaluating conditions was measured to need at most, with room to spare,
    /// for the deepest expressions on the deepest values accepted: 256 KiB in an optimised build,
    /// 2 MiB in an unoptimised one (the `cel` crate's frames are far larger there). Definitions
    /// are parsed and their expressions compiled on a thread of procflow's own, whatever the
    /// caller's stack.
    pub const EVAL_STACK: usize = crate::cond::EVAL_STACK;

    /// The most nodes a definition may have.
    pub const MAX_NODES: usize = validate::MAX_NODES;

    /// The most roles a catalogue may have (the executor keeps a role's index in 16 bits, so this
    /// stays at most 65,535).
    pub const MAX_ROLES: usize = validate::MAX_ROLES;

    /// The most variables a definition may declare.
    pub const MAX_VARIABLES: usize = validate::MAX_VARIABLES;

    /// The most outgoing flows of one node, and routes of one exclusive gateway.
    pub const MAX_FLOWS: usize = validate::MAX_FLOWS;

    /// The most reminders of one task or SLA (the executor keeps a reminder's index in 8 bits).
    pub const MAX_REMINDERS: usize = timers::MAX_REMINDERS;

    /// The most escalation levels of one task or SLA (the executor keeps a level in 8 bits).
    pub const MAX_ESCALATIONS: usize = timers::MAX_ESCALATIONS;

    /// The largest `max` of an `urge` escalation level: how many times it may urge.
    pub const MAX_URGES: u32 = timers::MAX_URGES;

    /// The shortest `every` of an `urge` escalation level, also when computed by an expression.
    pub const MIN_URGE_EVERY: chrono::Duration = timers::MIN_URGE_EVERY;

    /// Parses, validates and compiles a definition from YAML text.
    ///
    /// # Errors
    /// Every problem found, with line and column.
    ///
    /// # Examples
    /// ```
    /// let def = procflow::ProcessDef::from_yaml(r#"
    /// id: hello
    /// version: 1
    /// name: Hello
    /// roles: { clerk: { name: Clerk } }
    /// nodes:
    ///   start: { kind: start, next: greet }
    ///   greet:
    ///     kind: user_task
    ///     name: Greet the customer
    ///     raci: { responsible: [clerk], accountable: clerk }
    ///     next: end
    ///   end: { kind: end }
    /// "#)?;
    /// assert_eq!(def.key().to_string(), "hello@1");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_yaml(text: &str) -> Result<ProcessDef, LoadError> {
        load(text, None)
    }

    /// Reads and compiles a definition file. Problems name the file.
    ///
    /// # Errors
    /// The file cannot be read, or every problem found in it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<ProcessDef, LoadError> {
        let path = path.as_ref();
        let text = LoadError::read(path)?;
        load(&text, Some(path.to_owned()))
    }

    /// The YAML text it was compiled from.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The id and version.
    pub fn key(&self) -> &DefKey {
        &self.key
    }

    /// The English name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Chinese name.
    pub fn name_zh(&self) -> Option<&str> {
        self.name_zh.as_deref()
    }

    /// The process id in the seed model, e.g. `3.8`.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// The description.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The name of the business calendar the process counts business time on.
    pub fn calendar(&self) -> Option<&str> {
        self.calendar.as_deref()
    }

    /// The file it was loaded from.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The role catalogue.
    pub fn roles(&self) -> impl Iterator<Item = (&RoleId, &Role)> {
        self.roles.iter()
    }

    /// The declared variables.
    pub fn variables(&self) -> impl Iterator<Item = &VarSpec> {
        self.vars.values()
    }

    /// The business keys (`keys:`): variables that identify the customer, order or ticket an
    /// instance is about, in YAML order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(String::as_str)
    }

    /// All nodes, in YAML order.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (NodeId(i as u32), n))
    }

    /// One node.
    ///
    /// # Panics
    /// When `id` belongs to another definition and is out of range; see [`ProcessDef::try_node`].
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }

    /// One node, or `None` when `id` is out of range.
    pub fn try_node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id.index())
    }

    /// The node with the YAML id `id`.
    pub fn node_id(&self, id: &str) -> Option<NodeId> {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .map(|i| NodeId(i as u32))
    }

    /// The messages an instance receives ([`Engine::deliver`](crate::Engine::deliver)), by name.
    pub fn messages(&self) -> impl Iterator<Item = (&str, &events::Message)> {
        self.messages.iter().map(|(k, m)| (k.as_str(), m))
    }

    /// The signals it declares under `signals:` (persistent ones: [`events::Signal::keep`]), by
    /// name.
    pub fn signals(&self) -> impl Iterator<Item = (&str, &events::Signal)> {
        self.signals.iter().map(|(k, m)| (k.as_str(), m))
    }

    /// Whether the signal (`signal: true`) or message named `name` is declared persistent
    /// (`keep: true`, WCP 24).
    pub(crate) fn keeps(&self, signal: bool, name: &str) -> bool {
        if signal {
            self.signals.get(name).is_some_and(|s| s.keep)
        } else {
            self.messages.get(name).is_some_and(|m| m.keep)
        }
    }

    /// The start node.
    pub fn start(&self) -> NodeId {
        self.start
    }

    /// The flow graph: one graph node per definition node (graph index = [`NodeId::index`]), one
    /// edge per flow.
    pub fn graph(&self) -> &DiGraph<NodeId, ()> {
        &self.graph
    }

    /// Every duration of the definition's time limits and timer nodes, with its node (`None` for
    /// the SLA).
    pub(crate) fn spans(&self) -> Vec<(Option<&Node>, &timers::Span)> {
        let mut out: Vec<(Option<&Node>, &timers::Span)> = Vec::new();
        if let Some(sla) = &self.sla {
            out.extend(sla.spans().map(|s| (None, s)));
        }
        for node in &self.nodes {
            if let Some(limits) = &node.limits {
                out.extend(limits.spans().map(|s| (Some(node), s)));
            }
            if let Behaviour::Timer(timers::TimerWait::For(s)) = &node.behaviour {
                out.push((Some(node), s));
            }
            for b in &node.boundary {
                if let events::BoundaryOn::Timer(s) = &b.on {
                    out.push((Some(node), s));
                }
            }
        }
        out
    }

    /// Checks the definition against an organisation: every role of its catalogue and every
    /// skill its tasks require must be the organisation's.
    ///
    /// # Errors
    /// Every role and skill the organisation does not declare, located in the definition's
    /// text.
    pub fn check_organisation(&self, org: &crate::org::Organisation) -> Result<(), LoadError> {
        let mut problems = Vec::new();
        // The compiled definition keeps no locations for roles and skills: read them again
        // from its text (which compiled, so it parses).
        let raw = crate::cond::on_loader_stack(|| raw::parse(&self.text).ok());
        let Ok(Some(raw)) = raw else {
            return Ok(());
        };
        for (role, _) in &raw.roles.0 {
            if !org.has_role(&role.value) {
                problems.push(Problem {
                    location: Some(role.loc),
                    path: format!("roles.{}", role.value),
                    kind: ProblemKind::RoleNotInOrganisation(role.value.clone()),
                });
            }
        }
        fn skills(
            nodes: &raw::Entries<raw::RawNode>,
            prefix: &str,
            org: &crate::org::Organisation,
            problems: &mut Vec<Problem>,
        ) {
            for (id, node) in &nodes.0 {
                let path = format!("{prefix}{}", id.value);
                if let Some(s) = &node.value.skills {
                    for (name, loc) in s.value.located(s.loc) {
                        if !org.has_skill(name) {
                            problems.push(Problem {
                                location: Some(loc),
                                path: format!("nodes.{path}.skills"),
                                kind: ProblemKind::UnknownSkill(name.to_owned()),
                            });
                        }
                    }
                }
                if let Some(inner) = &node.value.nodes {
                    skills(&inner.value, &format!("{path}."), org, problems);
                }
            }
        }
        skills(&raw.nodes, "", org, &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(LoadError::new(self.file.clone(), problems))
        }
    }

    /// The graph as a Mermaid flowchart.
    pub fn to_mermaid(&self) -> String {
        render::mermaid(self)
    }

    /// The graph in Graphviz DOT.
    pub fn to_dot(&self) -> String {
        render::dot(self)
    }
}

/// Parses and compiles on a loader thread: the YAML and CEL parsers recurse as deeply as the text
/// nests, so they run on a stack of known size (see `src/cond.rs`), not the caller's.
fn load(text: &str, file: Option<PathBuf>) -> Result<ProcessDef, LoadError> {
    let compiled = crate::cond::on_loader_stack(|| {
        let raw = raw::parse(text).map_err(|p| vec![p])?;
        validate::compile(raw, file.clone())
    });
    let mut def = match compiled {
        Ok(Ok(def)) => def,
        Ok(Err(problems)) => return Err(LoadError::new(file, problems)),
        Err(message) => {
            return Err(LoadError::new(
                file,
                vec![Problem {
                    location: None,
                    path: String::new(),
                    kind: ProblemKind::Io(message),
                }],
            ));
        }
    };
    def.text = text.to_owned();
    Ok(def)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send_sync<T: Send + Sync>() {}

    #[test]
    fn def_is_send_sync() {
        is_send_sync::<ProcessDef>();
    }
}
