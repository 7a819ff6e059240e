//! Route conditions: CEL expressions over instance variables, compiled once at load time.

use std::fmt;

use std::collections::HashMap;

use serde_json::Value;

use crate::vars::Vars;

/// A compiled CEL condition.
pub(crate) struct Condition {
    source: String,
    program: cel::Program,
    /// The variables the expression reads, in a fixed order.
    reads: Vec<String>,
    /// A shortcut for the most common shape, `variable == literal` (or `!=`, or a lone boolean
    /// variable), used when the variable's value has the literal's JSON kind; anything else is
    /// evaluated by CEL. For same-kind scalars CEL's equality is plain equality, so the shortcut
    /// has CEL's semantics.
    fast: Option<Fast>,
}

#[derive(Debug)]
struct Fast {
    var: String,
    literal: Value,
    equal: bool,
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
            _ => None,
        };
        match expr {
            Expr::Ident(var) => Some(Fast {
                var: var.clone(),
                literal: Value::Bool(true),
                equal: true,
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
                        })
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The answer, when the variable's value has the literal's kind.
    fn eval(&self, vars: &Vars) -> Option<bool> {
        let value = vars.get(&self.var)?;
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
    /// Compiles `source`.
    ///
    /// # Errors
    /// The CEL parser's message, first line only.
    pub(crate) fn compile(source: &str) -> Result<Condition, String> {
        let program = cel::Program::compile(source).map_err(|e| {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("").trim();
            first.strip_prefix("ERROR: ").unwrap_or(first).to_owned()
        })?;
        let mut reads: Vec<String> = program
            .references()
            .variables()
            .into_iter()
            .map(str::to_owned)
            .collect();
        reads.sort();
        let fast = Fast::of(&program.expression().expr);
        Ok(Condition {
            source: source.to_owned(),
            fast,
            program,
            reads,
        })
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
    pub(crate) fn eval(&self, root: &cel::Context<'_, '_>, vars: &Vars) -> Result<bool, String> {
        if let Some(answer) = self.fast.as_ref().and_then(|f| f.eval(vars)) {
            return Ok(answer);
        }
        match self.run(root, vars)? {
            cel::Value::Bool(b) => Ok(b),
            other => Err(format!(
                "condition '{}' gave {other:?}, not a boolean",
                self.source
            )),
        }
    }

    /// Evaluates an expression that must give text (a duration, for example).
    ///
    /// # Errors
    /// A message when evaluation fails or the result is not a string.
    pub(crate) fn eval_text(
        &self,
        root: &cel::Context<'_, '_>,
        vars: &Vars,
    ) -> Result<String, String> {
        match self.run(root, vars)? {
            cel::Value::String(s) => Ok(s.to_string()),
            other => Err(format!(
                "expression '{}' gave {other:?}, not text",
                self.source
            )),
        }
    }

    fn run(&self, root: &cel::Context<'_, '_>, vars: &Vars) -> Result<cel::Value, String> {
        let mut scope = root.new_inner_scope();
        for name in &self.reads {
            let value = vars.get(name).map_or(cel::Value::Null, to_cel);
            scope.add_variable_from_value(name.as_str(), value);
        }
        self.program
            .execute(&scope)
            .map_err(|e| format!("condition '{}' failed: {e}", self.source))
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
    fn a_non_boolean_result_is_an_error() {
        assert!(eval("v + 1", serde_json::json!({ "v": 1 })).is_err());
    }
}
