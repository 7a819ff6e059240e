//! Route conditions: CEL expressions over instance variables, compiled once at load time.
//!
//! # Bounds
//!
//! An embedded engine must not take its host down, and the `cel` crate recurses once per level of
//! an expression's syntax tree, both to parse and to evaluate, on whatever stack it is given. So
//! every expression is checked before and after parsing:
//!
//! - Before the text reaches the CEL parser, a pre-scan refuses more than [`MAX_BYTES`] bytes and
//!   brackets nested more than [`MAX_DEPTH`] levels ([`ProblemKind::ExpressionTooLong`],
//!   [`ProblemKind::ExpressionTooDeep`]).
//! - The parser runs on a loader thread with a stack of [`LOADER_STACK`] bytes
//!   ([`on_loader_stack`]): its recursion depends on the text, not on the host's stack. The whole
//!   definition loads on that thread.
//! - The parsed tree (macros expanded) may be at most [`MAX_DEPTH`] levels deep, which bounds
//!   evaluation's recursion on the host's thread.
//! - Its worst-case cost on the largest values variables may hold ([`VarSpec::MAX_VALUE_BYTES`]
//!   as JSON) may be at most [`MAX_COST`] units ([`ProblemKind::ExpressionTooCostly`]); see
//!   [`cost`] for the model. Nested macros multiply: two nested `all` over one variable's list cost
//!   32,767² iterations and are refused, unless the inner one walks a part of the outer one's
//!   item (`orders.all(o, o.items.all(i, i.qty > 0))`), whose items all together are at most
//!   those of the variable.
//! - Values are at most [`VarSpec::MAX_VALUE_DEPTH`] levels deep, so reading them recurses little.
//!
//! ## The measurement
//!
//! `tests/hardening.rs` (`maximal_expression_on_maximal_value_fits_a_small_stack`) loads the
//! deepest accepted expression of each shape (binary operators, calls, indexes, field paths,
//! list literals, nested macros, conditionals) and runs an instance through it, values nested
//! [`VarSpec::MAX_VALUE_DEPTH`] levels deep, on a thread spawned with [`EVAL_STACK`] bytes
//! (`ProcessDef::EVAL_STACK`). Measured (set `PF_STACK` to try another size):
//!
//! - optimised (`cargo test --release`): passes on 64 KiB, overflows on 48 KiB; [`EVAL_STACK`]
//!   is 256 KiB there, four times that;
//! - unoptimised (`cargo test`): the `cel` crate's frames are some 25 times larger (about 40 KiB
//!   per tree level); passes on 1 MiB, overflows on 768 KiB; [`EVAL_STACK`] is 2 MiB there, the
//!   stack of a `std::thread` or a tokio worker.
//!
//! The parser runs on the loader thread only. The deepest text it can be handed is one that
//! fools the pre-scan, up to `cel`'s own limit of 96 nested brackets: the unit test
//! `the_parser_at_its_own_depth_limit_fits_the_loader_stack` runs it on [`LOADER_STACK`]
//! (32 MiB; about 16 MiB measured unoptimised).
//!
//! Worst-case time: the costliest accepted macro body over a 32,000-item list
//! (`the_costliest_accepted_macro_body_runs_in_bounded_time`) took 0.5 s unoptimised and 50 ms
//! optimised, so one cost unit is about 6 ns and 0.6 ns respectively, and [`MAX_COST`] bounds an
//! evaluation to about half a second unoptimised.

use std::fmt;

use std::collections::HashMap;

use cel::common::ast::{Expr, IdedExpr, LiteralValue};
use serde_json::Value;

use crate::vars::{VarSpec, Vars};
use crate::yaml::ProblemKind;

/// The longest expression accepted, in bytes.
pub(crate) const MAX_BYTES: usize = 4096;

/// The deepest bracket nesting (pre-scan) and syntax tree (after parsing) accepted.
pub(crate) const MAX_DEPTH: usize = 24;

/// The most work an expression may do on the largest values, in the units of [`cost`].
pub(crate) const MAX_COST: u64 = 100_000_000;

/// The stack of the loader thread, which parses definitions and compiles their expressions.
pub(crate) const LOADER_STACK: usize = 32 << 20;

/// The stack the evaluation bounds were measured for: see the module documentation.
pub(crate) const EVAL_STACK: usize = if cfg!(debug_assertions) {
    2 << 20
} else {
    256 << 10
};

thread_local! {
    /// Whether this thread is a loader thread, with [`LOADER_STACK`] bytes of stack.
    static ON_LOADER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` on a stack of [`LOADER_STACK`] bytes: on this thread when it is a loader thread
/// already, else on a new one, joined before returning.
///
/// # Errors
/// The thread cannot be started.
pub(crate) fn on_loader_stack<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, String> {
    if ON_LOADER.with(std::cell::Cell::get) {
        return Ok(f());
    }
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("procflow-loader".into())
            .stack_size(LOADER_STACK)
            .spawn_scoped(scope, || {
                ON_LOADER.with(|l| l.set(true));
                f()
            })
            .map_err(|e| format!("cannot start the loader thread: {e}"))?;
        match handle.join() {
            Ok(value) => Ok(value),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Where a condition reads its variables: an instance's variables, or names local to a
/// multi-instance item or a completion condition layered over them ([`Layered`]). Generic, so
/// the plain `&Vars` case compiles to the direct map lookup it always was.
pub(crate) trait Lookup {
    /// The value of `name`, if set.
    fn lookup(&self, name: &str) -> Option<&Value>;
}

impl Lookup for Vars {
    #[inline(always)]
    fn lookup(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
}

/// Local names over an instance's variables: a local shadows a variable of the same name.
pub(crate) struct Layered<'a> {
    pub(crate) locals: &'a [(&'a str, &'a Value)],
    pub(crate) vars: &'a Vars,
}

impl Lookup for Layered<'_> {
    fn lookup(&self, name: &str) -> Option<&Value> {
        match self.locals.iter().find(|(n, _)| *n == name) {
            Some((_, v)) => Some(v),
            None => self.vars.get(name),
        }
    }
}

/// A compiled CEL condition.
pub(crate) struct Condition {
    source: String,
    program: cel::Program,
    /// The variables the expression reads, in a fixed order: its free identifiers (a macro's
    /// iteration variable is not one).
    reads: Vec<String>,
    /// A shortcut for the most common shape, `variable == literal` (or `!=`, or a lone boolean
    /// variable), used when the variable's value has the literal's JSON kind; anything else is
    /// evaluated by CEL. For same-kind scalars CEL's equality is plain equality, so the shortcut
    /// has CEL's semantics.
    fast: Option<Fast>,
    /// A shortcut for text picked by such conditions, `tier == 'key' ? '1h' : '4h'` (nested, or
    /// a lone string literal), used when every condition on the way has its shortcut; else CEL
    /// evaluates.
    fast_text: Option<FastText>,
    /// A shortcut for a disjunction of such comparisons, `a == true || b == true` (an inclusive
    /// gateway's "any fix needed?"), used when every term has its shortcut or a term holds.
    fast_any: Vec<Fast>,
}

/// Text picked by conditions with a [`Fast`] shortcut.
#[derive(Debug)]
enum FastText {
    Literal(String),
    /// Text only CEL computes (`string(h) + 'h business'`): a path that reaches it gives up.
    Slow,
    Pick {
        cond: Pick,
        then: Box<FastText>,
        otherwise: Box<FastText>,
    },
}

impl FastText {
    /// Recognizes a string literal, or `condition ? text : text` with a shortcut for the
    /// condition; other text is [`FastText::Slow`].
    fn of(expr: &cel::common::ast::Expr) -> FastText {
        use cel::common::ast::{Expr, LiteralValue};
        match expr {
            Expr::Literal(LiteralValue::String(s)) => FastText::Literal(s.inner().to_owned()),
            Expr::Call(call)
                if call.target.is_none()
                    && call.args.len() == 3
                    && call.func_name == cel::common::ast::operators::CONDITIONAL =>
            {
                match Pick::of(&call.args[0].expr) {
                    Some(cond) => FastText::Pick {
                        cond,
                        then: Box::new(FastText::of(&call.args[1].expr)),
                        otherwise: Box::new(FastText::of(&call.args[2].expr)),
                    },
                    None => FastText::Slow,
                }
            }
            _ => FastText::Slow,
        }
    }

    /// The text, when every condition on the way has its answer and the text it reaches is a
    /// literal.
    fn eval<L: Lookup + ?Sized>(&self, vars: &L) -> Option<&str> {
        let mut at = self;
        loop {
            match at {
                FastText::Literal(s) => return Some(s),
                FastText::Slow => return None,
                FastText::Pick {
                    cond,
                    then,
                    otherwise,
                } => at = if cond.eval(vars)? { then } else { otherwise },
            }
        }
    }
}

/// The condition of a [`FastText`] pick: one comparison with a shortcut, a disjunction of them,
/// or a conjunction in which some terms have one.
#[derive(Debug)]
enum Pick {
    One(Fast),
    Any(Vec<Fast>),
    /// `t1 && t2 && ...`, each term with its shortcut or `None`.
    All(Vec<Option<Fast>>),
}

impl Pick {
    fn of(expr: &cel::common::ast::Expr) -> Option<Pick> {
        if let Some(f) = Fast::of(expr) {
            return Some(Pick::One(f));
        }
        let any = Fast::any_of(expr);
        if !any.is_empty() {
            return Some(Pick::Any(any));
        }
        let all = Fast::all_of(expr);
        all.iter().any(Option::is_some).then_some(Pick::All(all))
    }

    /// The answer, when the shortcuts decide it: a conjunction is false as soon as a term with a
    /// shortcut is false (CEL's `&&` is false when either side is, whatever the other gives),
    /// true only when every term has its shortcut and holds.
    fn eval<L: Lookup + ?Sized>(&self, vars: &L) -> Option<bool> {
        match self {
            Pick::One(f) => f.eval(vars),
            Pick::Any(terms) => Fast::any(terms, vars),
            Pick::All(terms) => {
                let mut decided = true;
                for t in terms {
                    match t.as_ref().and_then(|f| f.eval(vars)) {
                        Some(false) => return Some(false),
                        Some(true) => {}
                        None => decided = false,
                    }
                }
                decided.then_some(true)
            }
        }
    }
}

#[derive(Debug)]
struct Fast {
    var: String,
    literal: Value,
    equal: bool,
    /// A comparison (`==`, `!=`), not a lone identifier: an unset variable is `null`, which
    /// equals no literal.
    compared: bool,
}

impl Fast {
    /// Recognizes `ident == literal`, `literal == ident`, `!=` and a lone identifier.
    fn of(expr: &cel::common::ast::Expr) -> Option<Fast> {
        use cel::common::ast::{Expr, LiteralValue};
        let literal = |l: &LiteralValue| match l {
            LiteralValue::Boolean(b) => Some(Value::Bool(*b.inner())),
            LiteralValue::Int(i) => Some(Value::from(*i.inner())),
            LiteralValue::UInt(u) => Some(Value::from(*u.inner())),
            LiteralValue::String(s) => Some(Value::String(s.inner().to_owned())),
            LiteralValue::Null => Some(Value::Null),
            _ => None,
        };
        match expr {
            Expr::Ident(var) => Some(Fast {
                var: var.clone(),
                literal: Value::Bool(true),
                equal: true,
                compared: false,
            }),
            Expr::Call(call) if call.target.is_none() && call.args.len() == 2 => {
                let equal = match call.func_name.as_str() {
                    "_==_" => true,
                    "_!=_" => false,
                    _ => return None,
                };
                match (&call.args[0].expr, &call.args[1].expr) {
                    (Expr::Ident(var), Expr::Literal(l)) | (Expr::Literal(l), Expr::Ident(var)) => {
                        Some(Fast {
                            var: var.clone(),
                            literal: literal(l)?,
                            equal,
                            compared: true,
                        })
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The terms of `t1 || t2 || ...` when each is a comparison with a shortcut.
    fn any_of(expr: &cel::common::ast::Expr) -> Vec<Fast> {
        use cel::common::ast::Expr;
        let mut terms = Vec::new();
        let mut stack = vec![expr];
        while let Some(e) = stack.pop() {
            match e {
                Expr::Call(call)
                    if call.target.is_none()
                        && call.args.len() == 2
                        && call.func_name == "_||_" =>
                {
                    stack.push(&call.args[1].expr);
                    stack.push(&call.args[0].expr);
                }
                other => match Fast::of(other) {
                    Some(f) if f.compared => terms.push(f),
                    _ => return Vec::new(),
                },
            }
        }
        if terms.len() < 2 { Vec::new() } else { terms }
    }

    /// The terms of `t1 && t2 && ...` (at least two), each a comparison with its shortcut or
    /// `None`.
    fn all_of(expr: &cel::common::ast::Expr) -> Vec<Option<Fast>> {
        use cel::common::ast::Expr;
        let mut terms = Vec::new();
        let mut stack = vec![expr];
        while let Some(e) = stack.pop() {
            match e {
                Expr::Call(call)
                    if call.target.is_none()
                        && call.args.len() == 2
                        && call.func_name == "_&&_" =>
                {
                    stack.push(&call.args[1].expr);
                    stack.push(&call.args[0].expr);
                }
                other => terms.push(Fast::of(other).filter(|f| f.compared)),
            }
        }
        if terms.len() < 2 { Vec::new() } else { terms }
    }

    /// The answer of a disjunction of shortcuts: true as soon as a term holds (CEL's `||` is
    /// true when either side is, whatever the other gives), false when every term has its
    /// answer and none holds.
    fn any<L: Lookup + ?Sized>(terms: &[Fast], vars: &L) -> Option<bool> {
        let mut decided = true;
        for t in terms {
            match t.eval(vars) {
                Some(true) => return Some(true),
                Some(false) => {}
                None => decided = false,
            }
        }
        decided.then_some(false)
    }

    /// The answer, when the variable's value has the literal's kind (or, for a comparison, the
    /// variable is unset: `null` equals no literal).
    fn eval<L: Lookup + ?Sized>(&self, vars: &L) -> Option<bool> {
        if self.literal.is_null() {
            // `x == null`: an unset variable reads as null; a set one equals null only if null.
            let null = vars.lookup(&self.var).is_none_or(Value::is_null);
            return Some(null == self.equal);
        }
        let Some(value) = vars.lookup(&self.var) else {
            return self.compared.then_some(!self.equal);
        };
        let same_kind = match (value, &self.literal) {
            (Value::String(_), Value::String(_)) | (Value::Bool(_), Value::Bool(_)) => true,
            (Value::Number(a), Value::Number(b)) => a.as_i64().is_some() && b.as_i64().is_some(),
            _ => false,
        };
        same_kind.then(|| (value == &self.literal) == self.equal)
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

impl Condition {
    /// Compiles `source`, within the bounds of the module documentation.
    ///
    /// # Errors
    /// [`ProblemKind::ExpressionTooLong`], [`ProblemKind::ExpressionTooDeep`],
    /// [`ProblemKind::ExpressionTooCostly`], or [`ProblemKind::BadCondition`] with the first
    /// syntax error's position and message, truncated.
    pub(crate) fn compile(source: &str) -> Result<Condition, ProblemKind> {
        prescan(source)?;
        on_loader_stack(|| Condition::compile_here(source))
            .map_err(ProblemKind::BadCondition)
            .and_then(|r| r)
    }

    /// Compiles `source`, which passed the pre-scan, on a loader stack.
    fn compile_here(source: &str) -> Result<Condition, ProblemKind> {
        let program = cel::Program::compile(source).map_err(|e| syntax_error(&e))?;
        let depth = tree_depth(&program.expression().expr, MAX_DEPTH);
        if depth > MAX_DEPTH {
            return Err(ProblemKind::ExpressionTooDeep {
                depth,
                limit: MAX_DEPTH,
            });
        }
        let reads = free_variables(&program.expression().expr);
        let cost = cost(&program.expression().expr, reads.len());
        if cost > MAX_COST {
            return Err(ProblemKind::ExpressionTooCostly {
                cost,
                limit: MAX_COST,
            });
        }
        let fast = Fast::of(&program.expression().expr);
        let fast_text =
            Some(FastText::of(&program.expression().expr)).filter(|f| !matches!(f, FastText::Slow));
        let fast_any = Fast::any_of(&program.expression().expr);
        Ok(Condition {
            source: source.to_owned(),
            fast,
            fast_text,
            fast_any,
            program,
            reads,
        })
    }

    /// The text the shortcut picks for `vars`, when it decides (see [`FastText`]): no CEL, no
    /// allocation.
    pub(crate) fn picked_text<L: Lookup + ?Sized>(&self, vars: &L) -> Option<&str> {
        self.fast_text.as_ref().and_then(|f| f.eval(vars))
    }

    /// The string literals the shortcut can pick, so that a caller can prepare what it makes of
    /// each (a duration parsed once).
    pub(crate) fn text_literals(&self) -> Vec<&str> {
        let mut out = Vec::new();
        let mut stack: Vec<&FastText> = self.fast_text.iter().collect();
        while let Some(t) = stack.pop() {
            match t {
                FastText::Literal(s) => out.push(s.as_str()),
                FastText::Slow => {}
                FastText::Pick {
                    then, otherwise, ..
                } => {
                    stack.push(then);
                    stack.push(otherwise);
                }
            }
        }
        out
    }

    /// The CEL text.
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    /// The variable names the expression reads.
    pub(crate) fn reads(&self) -> &[String] {
        &self.reads
    }

    /// Evaluates the condition against `vars`, inside a scope of `root`. A declared variable that
    /// is not set reads as `null`.
    ///
    /// # Errors
    /// A message when evaluation fails or the result is not a boolean.
    pub(crate) fn eval<L: Lookup + ?Sized>(
        &self,
        root: &cel::Context<'_, '_>,
        vars: &L,
    ) -> Result<bool, String> {
        if let Some(answer) = self.fast.as_ref().and_then(|f| f.eval(vars)) {
            return Ok(answer);
        }
        if !self.fast_any.is_empty()
            && let Some(answer) = Fast::any(&self.fast_any, vars)
        {
            return Ok(answer);
        }
        match self.run(root, vars)? {
            cel::Value::Bool(b) => Ok(b),
            other => Err(format!(
                "condition '{}' gave {}, not a boolean",
                excerpt(&self.source),
                excerpt(&format!("{other:?}"))
            )),
        }
    }

    /// Evaluates an expression that must give text (a duration, for example).
    ///
    /// # Errors
    /// A message when evaluation fails or the result is not a string.
    pub(crate) fn eval_text<L: Lookup + ?Sized>(
        &self,
        root: &cel::Context<'_, '_>,
        vars: &L,
    ) -> Result<String, String> {
        if let Some(text) = self.fast_text.as_ref().and_then(|f| f.eval(vars)) {
            return Ok(text.to_owned());
        }
        match self.run(root, vars)? {
            cel::Value::String(s) => Ok(s.to_string()),
            other => Err(format!(
                "expression '{}' gave {}, not text",
                excerpt(&self.source),
                excerpt(&format!("{other:?}"))
            )),
        }
    }

    /// Evaluates an expression that must give an integer (`Ok(Ok(n))`) or text (`Ok(Err(text))`),
    /// such as a task's priority.
    ///
    /// # Errors
    /// A message when evaluation fails or the result is neither.
    pub(crate) fn eval_rank<L: Lookup + ?Sized>(
        &self,
        root: &cel::Context<'_, '_>,
        vars: &L,
    ) -> Result<Result<i64, String>, String> {
        match self.run(root, vars)? {
            cel::Value::Int(i) => Ok(Ok(i)),
            cel::Value::UInt(u) => Ok(Ok(i64::try_from(u).unwrap_or(i64::MAX))),
            cel::Value::String(s) => Ok(Err(s.to_string())),
            other => Err(format!(
                "expression '{}' gave {}, not an integer or text",
                excerpt(&self.source),
                excerpt(&format!("{other:?}"))
            )),
        }
    }

    fn run<L: Lookup + ?Sized>(
        &self,
        root: &cel::Context<'_, '_>,
        vars: &L,
    ) -> Result<cel::Value, String> {
        let mut scope = root.new_inner_scope();
        for name in &self.reads {
            let value = vars.lookup(name).map_or(cel::Value::Null, to_cel);
            scope.add_variable_from_value(name.as_str(), value);
        }
        self.program.execute(&scope).map_err(|e| {
            format!(
                "condition '{}' failed: {}",
                excerpt(&self.source),
                excerpt(&e.to_string())
            )
        })
    }
}

/// A JSON value as CEL sees it. JSON does not tell signed from unsigned integers; CEL does, and
/// refuses arithmetic that mixes them (`v % 2` with `v` unsigned). Integer literals in CEL are
/// signed, so every integer that fits is passed as a signed one.
fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => cel::Value::Int(i),
            (None, Some(u), _) => cel::Value::UInt(u),
            (_, _, f) => cel::Value::Float(f.unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(s.clone().into()),
        Value::Array(items) => items.iter().map(to_cel).collect::<Vec<_>>().into(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), to_cel(v)))
            .collect::<HashMap<_, _>>()
            .into(),
    }
}

/// At most this many characters of a text go into a message.
const EXCERPT: usize = 120;

/// `text`, cut to [`EXCERPT`] characters.
pub(crate) fn excerpt(text: &str) -> String {
    match text.char_indices().nth(EXCERPT) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// The checks made before the text reaches the CEL parser: its length, and how deeply it nests
/// brackets outside string literals. Cheap, and never recursive.
fn prescan(source: &str) -> Result<(), ProblemKind> {
    if source.len() > MAX_BYTES {
        return Err(ProblemKind::ExpressionTooLong {
            bytes: source.len(),
            limit: MAX_BYTES,
        });
    }
    let bytes = source.as_bytes();
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'(' | b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            quote @ (b'\'' | b'"') => {
                // An unterminated string is one bad character to the lexer, which goes on
                // right after it: so does the scan.
                i = skip_string(bytes, i, quote).unwrap_or(i + 1);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    if deepest > MAX_DEPTH {
        return Err(ProblemKind::ExpressionTooDeep {
            depth: deepest,
            limit: MAX_DEPTH,
        });
    }
    Ok(())
}

/// The index after the string literal opening at `start` (a quote): single or triple quoted, raw
/// when an `r` or `R` prefix (perhaps with `b`) stands right before it, as CEL's lexer reads it;
/// `None` when it is not terminated (a single-quoted one at the end of its line).
fn skip_string(bytes: &[u8], start: usize, quote: u8) -> Option<usize> {
    let word = bytes[..start]
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
        .count();
    let prefix = &bytes[start - word..start];
    let raw = matches!(prefix.len(), 1 | 2)
        && prefix.iter().any(|b| b.eq_ignore_ascii_case(&b'r'))
        && prefix
            .iter()
            .all(|b| b.eq_ignore_ascii_case(&b'r') || b.eq_ignore_ascii_case(&b'b'));
    let triple = bytes.get(start..start + 3) == Some(&[quote; 3][..]);
    let mut i = start + if triple { 3 } else { 1 };
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' && !raw {
            i += 2;
        } else if triple {
            if bytes.get(i..i + 3) == Some(&[quote; 3][..]) {
                return Some(i + 3);
            }
            i += 1;
        } else if b == quote {
            return Some(i + 1);
        } else if b == b'\n' || b == b'\r' {
            return None;
        } else {
            i += 1;
        }
    }
    None
}

/// Our message for a syntax error: the first error's position and message, cut short. The `cel`
/// crate's own rendering copies the source line once per error (gigabytes for a long line of
/// errors) and panics past column 65,535; it is never called.
fn syntax_error(errors: &cel::ParseErrors) -> ProblemKind {
    let Some(first) = errors.errors.first() else {
        return ProblemKind::BadCondition("does not parse".to_owned());
    };
    let msg = first.msg.trim();
    let message = excerpt(msg.strip_prefix("Syntax error: ").unwrap_or(msg));
    let more = match errors.errors.len() {
        0 | 1 => String::new(),
        n => format!(" (and {} more errors)", n - 1),
    };
    // 1-based, lines and columns.
    let (line, column) = first.pos;
    ProblemKind::BadCondition(if line > 1 && column >= 1 {
        format!("{message} at line {line}, column {column} of the expression{more}")
    } else if line == 1 && column >= 1 {
        format!("{message} at column {column} of the expression{more}")
    } else {
        format!("{message}{more}")
    })
}

/// The depth of the syntax tree under `expr` (a lone literal is 1), counted without recursion;
/// counting stops a level past `limit`.
fn tree_depth(expr: &Expr, limit: usize) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(expr, 1usize)];
    while let Some((expr, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        if depth > limit {
            break;
        }
        stack.extend(children(expr).into_iter().map(|c| (&c.expr, depth + 1)));
    }
    deepest
}

/// The direct children of a node.
fn children(expr: &Expr) -> Vec<&IdedExpr> {
    match expr {
        Expr::Call(call) => call
            .target
            .as_deref()
            .into_iter()
            .chain(&call.args)
            .collect(),
        Expr::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Map(map) => entry_exprs(&map.entries),
        Expr::Struct(st) => entry_exprs(&st.entries),
        Expr::Select(select) => vec![&select.operand],
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

/// The identifiers `expr` reads that no macro around them binds, sorted, without repeats. The
/// `cel` crate's own list counts a macro's iteration variables too. Recurses as deep as the tree,
/// which is checked first.
fn free_variables(expr: &Expr) -> Vec<String> {
    fn walk<'e>(expr: &'e Expr, bound: &mut Vec<&'e str>, out: &mut Vec<String>) {
        match expr {
            Expr::Ident(name) => {
                if !name.starts_with('@') && !bound.contains(&name.as_str()) {
                    out.push(name.clone());
                }
            }
            Expr::Comprehension(c) => {
                walk(&c.iter_range.expr, bound, out);
                walk(&c.accu_init.expr, bound, out);
                let len = bound.len();
                bound.push(&c.accu_var);
                walk(&c.result.expr, bound, out);
                bound.push(&c.iter_var);
                bound.extend(c.iter_var2.as_deref());
                walk(&c.loop_cond.expr, bound, out);
                walk(&c.loop_step.expr, bound, out);
                bound.truncate(len);
            }
            other => {
                for child in children(other) {
                    walk(&child.expr, bound, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(expr, &mut Vec::new(), &mut out);
    out.sort();
    out.dedup();
    out
}

/// The cost of evaluating one node of the tree, in the units of [`cost`]: about the time of
/// touching 64 bytes of a value.
const NODE: u64 = 64;

/// The cost of an operation that may walk a whole value ([`VarSpec::MAX_VALUE_BYTES`]).
const WHOLE: u64 = VarSpec::MAX_VALUE_BYTES as u64;

/// The most items a list or map of a variable value holds: `[0,0,...]` in
/// [`VarSpec::MAX_VALUE_BYTES`] bytes of JSON.
const ITEMS: u64 = (VarSpec::MAX_VALUE_BYTES as u64 - 1) / 2;

/// An upper bound of the work evaluating `expr` does, in units of about one byte of a value
/// touched, when every variable holds the largest value allowed.
///
/// The model: every node costs [`NODE`]; an operation that may walk a whole value (comparing two
/// values that both come from variables, `in` on a list from a variable, concatenating, any
/// function not known to be constant-time) costs [`WHOLE`] more (ordering two strings, a
/// `memcmp`, `WHOLE / 64`); a macro (a comprehension) costs
/// its body once per item of its range, that is the literal's length for a list literal and
/// [`ITEMS`] otherwise, except a macro over a part of the item of the macro around it
/// (`o.items.all(...)` inside `orders.all(o, ...)`), whose items over all the outer items
/// together are at most [`ITEMS`]: it costs its body once per outer item. Each variable read
/// also costs [`WHOLE`], for its conversion to a CEL value.
pub(crate) fn cost(expr: &Expr, reads: usize) -> u64 {
    let mut scope = Vec::new();
    let estimate = estimate(expr, &mut scope);
    estimate
        .cost
        .saturating_add((reads as u64).saturating_mul(WHOLE))
}

/// What the cost model knows of a subexpression.
#[derive(Clone, Copy)]
struct Estimate {
    cost: u64,
    /// It may be as large as a variable's value (else it is bounded by the expression's text).
    large: bool,
}

/// A name a macro binds while its body is estimated.
struct Bound<'e> {
    name: &'e str,
    /// The name holds something small: an item of a literal, or the accumulator.
    small: bool,
    /// The name holds a part of a variable's value, each item a different part: an item of a
    /// range that is itself a part.
    part: bool,
    /// How many macros enclose the one that binds it.
    level: usize,
}

/// Whether `expr` is a path into a variable's value or into a part: an identifier, fields and
/// indexes of one. Returns its root name.
fn path_root(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Ident(name) => Some(name),
        Expr::Select(select) if !select.test => path_root(&select.operand.expr),
        Expr::Call(call) if call.func_name == "_[_]" && call.args.len() == 2 => {
            path_root(&call.args[0].expr)
        }
        _ => None,
    }
}

fn estimate<'e>(expr: &'e Expr, scope: &mut Vec<Bound<'e>>) -> Estimate {
    let small = |cost| Estimate { cost, large: false };
    match expr {
        Expr::Unspecified | Expr::Literal(_) => small(NODE),
        Expr::Ident(name) => Estimate {
            cost: NODE,
            large: !scope
                .iter()
                .rev()
                .find(|b| b.name == name)
                .is_some_and(|b| b.small),
        },
        Expr::Select(select) => {
            let operand = estimate(&select.operand.expr, scope);
            Estimate {
                cost: operand.cost.saturating_add(NODE),
                large: operand.large && !select.test,
            }
        }
        Expr::List(_) | Expr::Map(_) | Expr::Struct(_) => {
            let mut out = small(NODE);
            for child in children(expr) {
                let e = estimate(&child.expr, scope);
                out.cost = out.cost.saturating_add(e.cost);
                out.large |= e.large;
            }
            out
        }
        Expr::Call(call) => {
            let operands: Vec<Estimate> = call
                .target
                .as_deref()
                .into_iter()
                .chain(&call.args)
                .map(|a| estimate(&a.expr, scope))
                .collect();
            let inner = operands
                .iter()
                .fold(NODE, |sum, e| sum.saturating_add(e.cost));
            let any = operands.iter().any(|e| e.large);
            let all = !operands.is_empty() && operands.iter().all(|e| e.large);
            let accumulates = matches!(
                call.args.first().map(|a| &a.expr),
                Some(Expr::Ident(name)) if name == "@result"
            );
            // `x + 1`: CEL adds no number to a string or list, so this is arithmetic.
            let numeric = call.args.iter().any(|a| {
                matches!(
                    &a.expr,
                    Expr::Literal(
                        LiteralValue::Int(_) | LiteralValue::UInt(_) | LiteralValue::Double(_)
                    )
                )
            });
            // (walks a whole value, gives something large)
            let (walks, large) = match call.func_name.as_str() {
                "_&&_"
                | "_||_"
                | "!_"
                | "@not_strictly_false"
                | "size"
                | "_-_"
                | "_*_"
                | "_/_"
                | "_%_"
                | "-_"
                | "int"
                | "uint"
                | "double"
                | "bool"
                | "type" => (false, false),
                "_==_" | "_!=_" => (all, false),
                // Only scalars are ordered: two strings at worst, one `memcmp`.
                "_<_" | "_<=_" | "_>_" | "_>=_" => (false, false),
                "@in" => (operands.get(1).is_some_and(|e| e.large), false),
                "_[_]" => (false, operands.first().is_some_and(|e| e.large)),
                "_?_:_" => (false, operands.iter().skip(1).any(|e| e.large)),
                // The accumulator of `map`, `filter` and `exists_one` grows in place.
                "_+_" if accumulates => (false, any),
                "_+_" if numeric => (false, false),
                _ => (any, any),
            };
            let ordered = matches!(call.func_name.as_str(), "_<_" | "_<=_" | "_>_" | "_>=_");
            let extra = if walks {
                WHOLE
            } else if ordered && all {
                WHOLE / 64
            } else {
                0
            };
            Estimate {
                cost: inner.saturating_add(extra),
                large,
            }
        }
        Expr::Comprehension(c) => {
            let range = estimate(&c.iter_range.expr, scope);
            let init = estimate(&c.accu_init.expr, scope);
            let (items, small_items) = match &c.iter_range.expr {
                Expr::List(list) => (list.elements.len() as u64, !range.large),
                Expr::Map(map) => (map.entries.len() as u64, !range.large),
                _ => (ITEMS, false),
            };
            // A range that is a part of the innermost macro's item: all its items together, over
            // that macro's items, are at most those of that macro's range.
            let root = path_root(&c.iter_range.expr);
            let level = scope.iter().map(|b| b.level + 1).max().unwrap_or(0);
            let nested_part = !small_items
                && scope
                    .iter()
                    .any(|b| b.level + 1 == level && b.part && !b.small && Some(b.name) == root);
            let root_is_variable = root.is_some_and(|r| !scope.iter().any(|b| b.name == r));
            let part = nested_part || root_is_variable;
            let times = if nested_part { 1 } else { items };
            let bound = scope.len();
            scope.push(Bound {
                name: &c.accu_var,
                small: true,
                part: false,
                level,
            });
            let result = estimate(&c.result.expr, scope);
            for name in std::iter::once(&c.iter_var).chain(&c.iter_var2) {
                scope.push(Bound {
                    name,
                    small: small_items,
                    part,
                    level,
                });
            }
            let cond = estimate(&c.loop_cond.expr, scope);
            let step = estimate(&c.loop_step.expr, scope);
            scope.truncate(bound);
            let body = cond.cost.saturating_add(step.cost);
            Estimate {
                cost: NODE
                    .saturating_add(range.cost)
                    .saturating_add(init.cost)
                    .saturating_add(result.cost)
                    .saturating_add(times.saturating_mul(body)),
                large: range.large,
            }
        }
    }
}

/// The expressions of a map's or struct's entries.
fn entry_exprs(entries: &[cel::common::ast::IdedEntryExpr]) -> Vec<&cel::common::ast::IdedExpr> {
    use cel::common::ast::EntryExpr;
    entries
        .iter()
        .flat_map(|e| match &e.expr {
            EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
            EntryExpr::StructField(f) => vec![&f.value],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(source: &str, vars: serde_json::Value) -> Result<bool, String> {
        let cond = Condition::compile(source).expect("compiles");
        let root = cel::Context::default();
        cond.eval(&root, vars.as_object().expect("an object"))
    }

    #[test]
    fn unsigned_json_integers_mix_with_cel_literals() {
        // Regression: serde_json keeps 0 and positive integers unsigned.
        assert_eq!(eval("v % 2 == 0", serde_json::json!({ "v": 0 })), Ok(true));
        assert_eq!(eval("v + 1 > 2", serde_json::json!({ "v": 5 })), Ok(true));
        assert_eq!(eval("v - 10 < 0", serde_json::json!({ "v": 3 })), Ok(true));
    }

    #[test]
    fn objects_lists_and_null() {
        let vars = serde_json::json!({ "o": { "tier": "gold", "n": [1, 2] }, "x": null });
        assert_eq!(
            eval("o.tier == 'gold' && size(o.n) == 2 && x == null", vars),
            Ok(true)
        );
    }

    #[test]
    fn the_shortcut_agrees_with_cel() {
        // Each case with the shortcut and through CEL (a `|| false` defeats the shortcut).
        for (source, vars) in [
            ("tier == 'key'", serde_json::json!({ "tier": "key" })),
            ("tier == 'key'", serde_json::json!({ "tier": "normal" })),
            ("'key' != tier", serde_json::json!({ "tier": "key" })),
            ("n == 3", serde_json::json!({ "n": 3 })),
            ("n == 3", serde_json::json!({ "n": 4 })),
            ("n == -3", serde_json::json!({ "n": -3 })),
            ("ok == true", serde_json::json!({ "ok": false })),
            ("ok", serde_json::json!({ "ok": true })),
            ("n == 3", serde_json::json!({ "n": 3.0 })),
            // Unset variables read as null, which equals no literal.
            ("ok == true", serde_json::json!({})),
            ("ok != true", serde_json::json!({})),
            ("tier == 'key'", serde_json::json!({})),
            ("'key' != tier", serde_json::json!({})),
            ("n == 3", serde_json::json!({})),
        ] {
            let slow = format!("({source}) || false");
            assert!(
                Condition::compile(source).unwrap().fast.is_some(),
                "{source}"
            );
            assert_eq!(eval(source, vars.clone()), eval(&slow, vars), "{source}");
        }
    }

    #[test]
    fn the_disjunction_shortcut_agrees_with_cel() {
        let root = cel::Context::default();
        let any = "a == true || b == true || tier == 'key'";
        for (source, vars) in [
            (any, serde_json::json!({ "a": false })),
            (any, serde_json::json!({ "a": false, "b": true })),
            (any, serde_json::json!({ "tier": "key" })),
            (any, serde_json::json!({})),
            // Undecided terms (a kind that differs) leave it to CEL, unless a term holds.
            (any, serde_json::json!({ "a": 1, "b": true })),
            (any, serde_json::json!({ "a": 1, "tier": "x" })),
            (
                "a != true || b == 2",
                serde_json::json!({ "a": true, "b": 2 }),
            ),
        ] {
            let fast = Condition::compile(source).unwrap();
            assert_eq!(fast.fast_any.len(), if source == any { 3 } else { 2 });
            let mut slow = Condition::compile(source).unwrap();
            slow.fast_any = Vec::new();
            let vars = vars.as_object().unwrap();
            assert_eq!(
                fast.eval(&root, vars),
                slow.eval(&root, vars),
                "{source} {vars:?}"
            );
        }
        // Not a disjunction of comparisons: no shortcut.
        for source in ["a || b == true", "a == true && b == true", "a == true"] {
            assert!(
                Condition::compile(source).unwrap().fast_any.is_empty(),
                "{source}"
            );
        }
    }

    #[test]
    fn the_text_shortcut_agrees_with_cel() {
        let root = cel::Context::default();
        for (source, vars) in [
            (
                "tier == 'key' ? '1h' : '4h'",
                serde_json::json!({ "tier": "key" }),
            ),
            (
                "tier == 'key' ? '1h' : '4h'",
                serde_json::json!({ "tier": "public" }),
            ),
            (
                "tier == 'key' ? '1h' : n != 2 ? '2h' : '3h'",
                serde_json::json!({ "tier": "x", "n": 2 }),
            ),
            ("ok ? 'a' : 'b'", serde_json::json!({ "ok": false })),
            ("'8h business'", serde_json::json!({})),
            // No shortcut answer (the kinds differ, the variable is unset): CEL decides.
            ("n == 3 ? 'a' : 'b'", serde_json::json!({ "n": 3.0 })),
            ("tier == 'key' ? 'a' : 'b'", serde_json::json!({})),
            ("n == 3 ? 'a' : 'b'", serde_json::json!({ "n": "3" })),
            // A disjunction, a conjunction some of whose terms have a shortcut, a null test, and
            // a branch only CEL computes (taken or not).
            (
                "tier == 'key' || p == 'high' ? '2h' : (p == 'low' ? '16h' : '8h')",
                serde_json::json!({ "tier": "public", "p": "high" }),
            ),
            (
                "tier == 'key' || p == 'high' ? '2h' : (p == 'low' ? '16h' : '8h')",
                serde_json::json!({ "p": "low" }),
            ),
            (
                "t != null && has(t.h) ? string(int(t.h)) + 'h' : (p == 'high' ? '4h' : '16h')",
                serde_json::json!({ "p": "high" }),
            ),
            (
                "t != null && has(t.h) ? string(int(t.h)) + 'h' : (p == 'high' ? '4h' : '16h')",
                serde_json::json!({ "t": null, "p": "x" }),
            ),
            (
                "t != null && has(t.h) ? string(int(t.h)) + 'h' : (p == 'high' ? '4h' : '16h')",
                serde_json::json!({ "t": { "h": 6 }, "p": "x" }),
            ),
            (
                "t != null && has(t.h) ? string(int(t.h)) + 'h' : (p == 'high' ? '4h' : '16h')",
                serde_json::json!({ "t": { "level": "gold" }, "p": "high" }),
            ),
            (
                "t == null ? 'none' : 'some'",
                serde_json::json!({ "t": "x" }),
            ),
        ] {
            let fast = Condition::compile(source).unwrap();
            assert!(fast.fast_text.is_some(), "{source}");
            // Through CEL: the shortcut taken away.
            let mut slow = Condition::compile(source).unwrap();
            slow.fast_text = None;
            let vars = vars.as_object().unwrap();
            assert_eq!(
                fast.eval_text(&root, vars),
                slow.eval_text(&root, vars),
                "{source}"
            );
        }
    }

    #[test]
    fn the_parser_at_its_own_depth_limit_fits_the_loader_stack() {
        // Deeper than the pre-scan allows, as deep as `cel`'s parser itself goes (96): what a
        // text that fooled the pre-scan could reach. Measured at about 16 MiB unoptimised.
        for text in [
            format!("{}1{} == 1", "(".repeat(96), ")".repeat(96)),
            format!("size({}1{}) == 1", "[".repeat(96), "]".repeat(96)),
            format!("{}1 == 1", "1 + ".repeat(1_000)),
        ] {
            on_loader_stack(|| drop(cel::Program::compile(&text))).unwrap();
        }
    }

    #[test]
    fn the_prescan_reads_strings_as_the_lexer_does() {
        let deep = "(".repeat(30);
        for (text, hidden) in [
            (format!("v == '{deep}'"), true),
            (format!(r"v == r'\' || v == '{deep}'"), true),
            (format!("v == '''{deep}\n{deep}'''"), true),
            (format!("v == b\"{deep}\""), true),
            // Unterminated: the lexer reads the brackets as code.
            (format!("v == '{deep}\n"), false),
            (format!("v == \"{deep}"), false),
            // `bar` is an identifier, not a raw prefix: `\'` escapes the quote.
            (format!(r"bar'\'{deep}'"), true),
        ] {
            let found = prescan(&text);
            assert_eq!(found.is_ok(), hidden, "{text:?}: {found:?}");
        }
    }

    #[test]
    fn free_variables_leave_out_macro_variables() {
        let c =
            Condition::compile("items.exists(i, i.qty > limit) && [1].all(x, x > other)").unwrap();
        assert_eq!(c.reads(), ["items", "limit", "other"]);
    }

    #[test]
    fn a_non_boolean_result_is_an_error() {
        assert!(eval("v + 1", serde_json::json!({ "v": 1 })).is_err());
    }
}
