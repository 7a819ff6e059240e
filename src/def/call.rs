//! Call activities (`kind: call`, WCP 22): a node that starts an instance of another deployed
//! definition (the child) with mapped input variables, waits for it, and maps its outputs back.
//!
//! ```yaml
//! reconfigure:
//!   kind: call
//!   process: order-provisioning   # the called definition's id
//!   version: 1                    # optional: default the newest deployed when the child starts
//!   flow: 48                      # optional: the information-flow number (processes.md §3)
//!   in: { order_lines: reconfiguration_lines }   # child variable: parent variable
//!   out: { reconfiguration: order_status }       # parent variable: child variable
//!   max_depth: 3                  # optional: the deepest call chain this call may start
//!   next: resolve_fault
//! ```
//!
//! **Invariant:** a compiled [`Call`] names its process, maps `in` values and `out` keys to
//! declared variables of its own definition (or, for `in` with `for_each`, to the item), and has
//! a `max_depth` between 1 and [`MAX_DEPTH`]. What the child declares is checked at deploy
//! (`exec/deploy.rs`), since the child is not known at load.

use indexmap::IndexMap;

use super::raw::{RawKind, RawNode};
use super::{Location, Problem, ProblemKind};
use crate::vars::VarSpec;

/// The largest `max_depth` a call may give.
pub(crate) const MAX_DEPTH: u32 = 64;

/// A compiled call activity.
#[derive(Debug)]
pub(crate) struct Call {
    /// The called definition's id.
    pub(crate) process: String,
    /// The called version; `None`: the newest deployed when the child starts.
    pub(crate) version: Option<u32>,
    /// Where `process` is in the file.
    pub(crate) location: Location,
    /// The information-flow number this call carries.
    pub(crate) flow: Option<u32>,
    /// `in`: each child variable with the parent variable (or item) it is set from.
    pub(crate) inputs: Vec<Mapping>,
    /// `out`: each parent variable with the child variable it is set from.
    pub(crate) outputs: Vec<Mapping>,
    /// The deepest call chain this call may start (`None`: the engine's default).
    pub(crate) max_depth: Option<u32>,
}

/// One variable mapping: `to` is set from `from`.
#[derive(Debug)]
pub(crate) struct Mapping {
    pub(crate) to: String,
    pub(crate) from: String,
    /// Where the entry is in the file.
    pub(crate) location: Location,
}

impl Call {
    /// The child variables a finished child hands back (the `out` values), in order.
    pub(crate) fn returned(&self) -> Vec<String> {
        self.outputs.iter().map(|m| m.from.clone()).collect()
    }
}

/// Compiles a node's call keys, adding every problem to `problems`: the call of a `kind: call`
/// node, or `None` (with a problem for each call key given to another kind).
pub(super) fn compile(
    id: &str,
    raw: &RawNode,
    vars: &IndexMap<String, VarSpec>,
    node_loc: Location,
    problems: &mut Vec<Problem>,
) -> Option<Box<Call>> {
    let kind = raw.kind.value;
    let mut add = |loc: Location, key: &str, kind: ProblemKind| {
        problems.push(Problem {
            location: Some(loc),
            path: format!("nodes.{id}.{key}"),
            kind,
        });
    };
    if kind != RawKind::Call {
        for (key, loc) in [
            ("process", raw.process.as_ref().map(|a| a.loc)),
            ("version", raw.version.as_ref().map(|a| a.loc)),
            ("flow", raw.flow.as_ref().map(|a| a.loc)),
            ("in", raw.inputs.as_ref().map(|a| a.loc)),
            ("out", raw.outputs.as_ref().map(|a| a.loc)),
            ("max_depth", raw.max_depth.as_ref().map(|a| a.loc)),
        ] {
            if let Some(loc) = loc {
                add(
                    loc,
                    key,
                    ProblemKind::KeyNotAllowed {
                        key,
                        kind: kind.as_str(),
                    },
                );
            }
        }
        return None;
    }
    if let Some(r) = &raw.repeat {
        add(
            r.loc,
            "repeat",
            ProblemKind::KeyNotAllowed {
                key: "repeat",
                kind: "call",
            },
        );
    }
    let (process, location) = match &raw.process {
        Some(p) if !p.value.is_empty() => (p.value.clone(), p.loc),
        Some(p) => {
            add(
                p.loc,
                "process",
                ProblemKind::CallShape("'process' must name a definition id"),
            );
            (String::new(), p.loc)
        }
        None => {
            add(
                node_loc,
                "process",
                ProblemKind::KeyMissing {
                    key: "process",
                    kind: "call",
                },
            );
            (String::new(), node_loc)
        }
    };
    if let Some(v) = &raw.version
        && v.value == 0
    {
        add(
            v.loc,
            "version",
            ProblemKind::CallShape("'version' must be at least 1"),
        );
    }
    let max_depth = raw.max_depth.as_ref().map(|m| {
        if m.value == 0 || m.value > MAX_DEPTH {
            add(
                m.loc,
                "max_depth",
                ProblemKind::CallShape("'max_depth' must be between 1 and 64"),
            );
        }
        m.value.clamp(1, MAX_DEPTH)
    });
    let for_each = raw.for_each.as_ref().map(|f| &f.value);
    let item = for_each.map(|f| f.item.value.as_str());
    let mut inputs = Vec::new();
    if let Some(list) = &raw.inputs {
        for (child, parent) in &list.value.0 {
            if !vars.contains_key(&parent.value) && item != Some(parent.value.as_str()) {
                add(
                    parent.loc,
                    "in",
                    ProblemKind::UnknownVariable {
                        key: "in",
                        name: parent.value.clone(),
                    },
                );
            }
            if inputs.iter().any(|m: &Mapping| m.to == child.value) {
                add(
                    child.loc,
                    "in",
                    ProblemKind::CallShape("a child variable is mapped twice in 'in'"),
                );
            }
            inputs.push(Mapping {
                to: child.value.clone(),
                from: parent.value.clone(),
                location: child.loc,
            });
        }
    }
    let mut outputs = Vec::new();
    if let Some(list) = &raw.outputs {
        for (parent, child) in &list.value.0 {
            if !vars.contains_key(&parent.value) {
                add(
                    parent.loc,
                    "out",
                    ProblemKind::UnknownVariable {
                        key: "out",
                        name: parent.value.clone(),
                    },
                );
            } else if let Some(f) = for_each
                && f.output.as_ref().map(|o| o.value.as_str()) != Some(parent.value.as_str())
            {
                add(
                    parent.loc,
                    "out",
                    ProblemKind::CallShape(
                        "a multi-instance call's outputs are local to each child: 'out' may set only the 'for_each.output' variable, collected in item order into 'for_each.collect'",
                    ),
                );
            }
            if outputs.iter().any(|m: &Mapping| m.to == parent.value) {
                add(
                    parent.loc,
                    "out",
                    ProblemKind::CallShape("a parent variable is mapped twice in 'out'"),
                );
            }
            outputs.push(Mapping {
                to: parent.value.clone(),
                from: child.value.clone(),
                location: child.loc,
            });
        }
    }
    Some(Box::new(Call {
        process,
        version: raw.version.as_ref().map(|v| v.value),
        location,
        flow: raw.flow.as_ref().map(|f| f.value),
        inputs,
        outputs,
        max_depth,
    }))
}
