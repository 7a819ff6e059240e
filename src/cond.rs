//! Route conditions: CEL expressions over instance variables, compiled once at load time.

use std::fmt;

use serde_json::Value;

use crate::vars::Vars;

/// A compiled CEL condition.
pub(crate) struct Condition {
    source: String,
    program: cel::Program,
    /// The variables the expression reads, in a fixed order.
    reads: Vec<String>,
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
        Ok(Condition {
            source: source.to_owned(),
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
        let mut scope = root.new_inner_scope();
        for name in &self.reads {
            let value = vars.get(name).unwrap_or(&Value::Null);
            scope
                .add_variable(name.as_str(), value)
                .map_err(|e| format!("variable '{name}' cannot be read by CEL: {e}"))?;
        }
        match self.program.execute(&scope) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!(
                "condition '{}' gave {other:?}, not a boolean",
                self.source
            )),
            Err(e) => Err(format!("condition '{}' failed: {e}", self.source)),
        }
    }
}
