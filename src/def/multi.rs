//! Multi-instance (`for_each`) and structured loops (`repeat`) on user and service tasks and on
//! embedded sub-processes: compiling and checking the two keys (what may stand inside a
//! multi-instance sub-process's scope is checked in `scope.rs`).
//!
//! **Invariant:** a compiled [`ForEach`] names a declared list variable, an item name that is no
//! declared variable, and (when it collects) a declared `array` variable; a compiled [`Repeat`]
//! has a `max` of at least 1. The executor relies on these and checks only run-time data (that
//! the list variable holds a list).

use indexmap::IndexMap;

use super::raw::{RawKind, RawNode};
use super::{Location, Problem, ProblemKind};
use crate::cond::Condition;
use crate::vars::{VarSpec, VarType};

/// The most iterations a `repeat` may allow.
pub(crate) const MAX_ITERATIONS: u32 = 10_000;

/// The names `complete_when` reads besides declared variables.
pub(crate) const COMPLETED: &str = "completed";
/// See [`COMPLETED`].
pub(crate) const TOTAL: &str = "total";

/// What a task does besides its one run: run per item, run again, or both.
#[derive(Debug)]
pub(crate) struct Looping {
    pub(crate) for_each: Option<ForEach>,
    pub(crate) repeat: Option<Repeat>,
}

/// `for_each`: one run of the task per item of a list.
#[derive(Debug)]
pub(crate) struct ForEach {
    /// The declared variable holding the list.
    pub(crate) list: String,
    /// The item's local name.
    pub(crate) item: String,
    /// All items at once, or one after another.
    pub(crate) parallel: bool,
    /// The declared variable each item's output is read from (local to the item).
    pub(crate) output: Option<String>,
    /// The declared `array` variable the outputs are collected into, in item order.
    pub(crate) collect: Option<String>,
    /// When it holds after an item completes, the rest are withdrawn.
    pub(crate) complete_when: Option<Condition>,
    /// Whether the token waits for the items (`wait: false`: it goes on at once, WCP 12).
    pub(crate) wait: bool,
}

/// `repeat`: the task runs again until `until` holds, at most `max` times in all.
#[derive(Debug)]
pub(crate) struct Repeat {
    pub(crate) until: Condition,
    pub(crate) max: u32,
}

/// Compiles a node's `for_each` and `repeat`, adding every problem to `problems`.
pub(super) fn compile(
    id: &str,
    raw: &RawNode,
    vars: &IndexMap<String, VarSpec>,
    problems: &mut Vec<Problem>,
) -> Option<Box<Looping>> {
    let kind = raw.kind.value;
    let mut add = |loc: Location, key: &str, kind: ProblemKind| {
        problems.push(Problem {
            location: Some(loc),
            path: format!("nodes.{id}.{key}"),
            kind,
        });
    };
    // A sub-process may run its scope per item (`for_each`, see `scope.rs`) or repeat it; a
    // call activity takes `for_each` (one child per item), its `repeat` is refused in `call.rs`.
    let supported = matches!(
        kind,
        RawKind::UserTask | RawKind::ServiceTask | RawKind::Subprocess | RawKind::Call
    );
    let raw_for_each = if supported {
        raw.for_each.as_ref()
    } else {
        None
    };
    if !supported {
        for (key, loc) in [
            ("for_each", raw.for_each.as_ref().map(|f| f.loc)),
            ("repeat", raw.repeat.as_ref().map(|r| r.loc)),
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
    if let (Some(f), Some(_)) = (raw_for_each, &raw.repeat) {
        add(
            f.loc,
            "repeat",
            ProblemKind::LoopShape(
                "'for_each' and 'repeat' cannot be combined on one task (yet): repeat the items' work in a task before or after",
            ),
        );
    }
    if let (Some(_), Some(t), false) = (raw_for_each, &raw.timeout, kind == RawKind::Subprocess) {
        add(
            t.loc,
            "timeout",
            ProblemKind::LoopShape(
                "a multi-instance task cannot have a 'timeout' route: give each item a 'due' instead",
            ),
        );
    }

    let for_each = raw_for_each.map(|at| {
        let f = &at.value;
        let list_ty = vars.get(&f.list.value).map(|s| s.ty);
        match list_ty {
            None => add(
                f.list.loc,
                "for_each.in",
                ProblemKind::UnknownVariable {
                    key: "for_each.in",
                    name: f.list.value.clone(),
                },
            ),
            Some(VarType::Array | VarType::Any) => {}
            Some(ty) => add(
                f.list.loc,
                "for_each.in",
                ProblemKind::NotAList {
                    key: "for_each.in",
                    name: f.list.value.clone(),
                    ty: ty.as_str().to_owned(),
                    expected: "array or any",
                },
            ),
        }
        let item = &f.item.value;
        let valid = !item.is_empty()
            && item
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            add(
                f.item.loc,
                "for_each.as",
                ProblemKind::InvalidId(item.clone()),
            );
        } else if (kind != RawKind::Subprocess
            && vars.get(item).is_some_and(|s| !super::scope::is_item_var(s)))
            || item == COMPLETED
            || item == TOTAL
        {
            // A sub-process's item is declared for its scope (`scope::locals`), which refuses a
            // clash with a declared variable there.
            add(
                f.item.loc,
                "for_each.as",
                ProblemKind::ItemClash(item.clone()),
            );
        }
        if let Some(output) = &f.output
            && !vars.contains_key(&output.value)
        {
            add(
                output.loc,
                "for_each.output",
                ProblemKind::UnknownVariable {
                    key: "for_each.output",
                    name: output.value.clone(),
                },
            );
        }
        if let Some(collect) = &f.collect {
            match vars.get(&collect.value).map(|s| s.ty) {
                None => add(
                    collect.loc,
                    "for_each.collect",
                    ProblemKind::UnknownVariable {
                        key: "for_each.collect",
                        name: collect.value.clone(),
                    },
                ),
                Some(VarType::Array) => {}
                Some(ty) => add(
                    collect.loc,
                    "for_each.collect",
                    ProblemKind::NotAList {
                        key: "for_each.collect",
                        name: collect.value.clone(),
                        ty: ty.as_str().to_owned(),
                        expected: "array",
                    },
                ),
            }
        }
        match (&f.output, &f.collect) {
            (Some(o), None) => add(
                o.loc,
                "for_each.collect",
                ProblemKind::LoopShape(
                    "'output' needs 'collect', the list variable the outputs are collected into",
                ),
            ),
            (None, Some(c)) => add(
                c.loc,
                "for_each.output",
                ProblemKind::LoopShape(
                    "'collect' needs 'output', the variable each item's output is read from",
                ),
            ),
            (Some(o), Some(c)) if o.value == c.value => add(
                c.loc,
                "for_each.collect",
                ProblemKind::LoopShape("'collect' and 'output' must be different variables"),
            ),
            _ => {}
        }
        let complete_when =
            f.complete_when
                .as_ref()
                .and_then(|when| match Condition::compile(&when.value) {
                    Err(kind) => {
                        add(when.loc, "for_each.complete_when", kind);
                        None
                    }
                    Ok(cond) => {
                        let mut produced = false;
                        for var in cond.reads() {
                            if var == COMPLETED
                                || var == TOTAL
                                || f.collect.as_ref().is_some_and(|c| c.value == *var)
                            {
                                produced = true;
                            } else if !vars.contains_key(var) {
                                add(
                                    when.loc,
                                    "for_each.complete_when",
                                    ProblemKind::UndeclaredVariable(var.clone()),
                                );
                            }
                        }
                        if !produced {
                            add(
                                when.loc,
                                "for_each.complete_when",
                                ProblemKind::CompletionReadsNothing,
                            );
                        }
                        Some(cond)
                    }
                });
        if let Some(wait) = f.wait.as_ref().filter(|w| !w.value) {
            let waited = [
                f.output.as_ref().map(|o| o.loc),
                f.collect.as_ref().map(|c| c.loc),
                f.complete_when.as_ref().map(|c| c.loc),
            ];
            if waited.iter().any(Option::is_some) {
                add(
                    wait.loc,
                    "for_each.wait",
                    ProblemKind::LoopShape(
                        "'wait: false' takes no 'output', 'collect' or 'complete_when': nothing waits for the items to collect or complete them",
                    ),
                );
            }
            if kind == RawKind::Subprocess && (raw.timeout.is_some() || raw.boundary.is_some()) {
                add(
                    wait.loc,
                    "for_each.wait",
                    ProblemKind::LoopShape(
                        "a sub-process with 'wait: false' has no 'timeout' or 'boundary': its token does not wait for its runs",
                    ),
                );
            }
        }
        ForEach {
            wait: f.wait.as_ref().is_none_or(|w| w.value),
            list: f.list.value.clone(),
            item: item.clone(),
            parallel: f.parallel.unwrap_or(true),
            output: f.output.as_ref().map(|o| o.value.clone()),
            collect: f.collect.as_ref().map(|c| c.value.clone()),
            complete_when,
        }
    });

    let raw_repeat = raw.repeat.as_ref().filter(|_| kind != RawKind::Call);
    let repeat = raw_repeat.and_then(|at| {
        let r = &at.value;
        let max = match &r.max {
            None => {
                add(at.loc, "repeat.max", ProblemKind::LoopWithoutMax);
                None
            }
            Some(m) if m.value == 0 || m.value > MAX_ITERATIONS => {
                add(
                    m.loc,
                    "repeat.max",
                    ProblemKind::LoopShape("'max' must be between 1 and 10000"),
                );
                None
            }
            Some(m) => Some(m.value),
        };
        let until = match Condition::compile(&r.until.value) {
            Err(kind) => {
                add(r.until.loc, "repeat.until", kind);
                None
            }
            Ok(cond) => {
                for var in cond.reads() {
                    if !vars.contains_key(var) {
                        add(
                            r.until.loc,
                            "repeat.until",
                            ProblemKind::UndeclaredVariable(var.clone()),
                        );
                    }
                }
                Some(cond)
            }
        };
        Some(Repeat {
            until: until?,
            max: max?,
        })
    });

    (for_each.is_some() || repeat.is_some()).then(|| Box::new(Looping { for_each, repeat }))
}
