//! Declared instance variables: their types and the checks on values given at start and on
//! completion.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Instance variables: a JSON object.
pub type Vars = serde_json::Map<String, Value>;

/// The type of a declared variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarType {
    /// A JSON string.
    String,
    /// A JSON number without a fraction.
    Integer,
    /// Any JSON number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
    /// Any JSON value.
    Any,
}

impl VarType {
    /// Whether `value` has this type. `null` fits no type but `any`.
    pub fn fits(self, value: &Value) -> bool {
        match self {
            VarType::String => value.is_string(),
            VarType::Integer => value.is_i64() || value.is_u64(),
            VarType::Number => value.is_number(),
            VarType::Boolean => value.is_boolean(),
            VarType::Object => value.is_object(),
            VarType::Array => value.is_array(),
            VarType::Any => true,
        }
    }

    /// The name used in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            VarType::String => "string",
            VarType::Integer => "integer",
            VarType::Number => "number",
            VarType::Boolean => "boolean",
            VarType::Object => "object",
            VarType::Array => "array",
            VarType::Any => "any",
        }
    }
}

/// A declared variable.
#[derive(Clone, Debug)]
pub struct VarSpec {
    pub(crate) name: String,
    pub(crate) ty: VarType,
    pub(crate) required: bool,
    pub(crate) default: Option<Value>,
    pub(crate) allowed: Option<Vec<Value>>,
    pub(crate) description: Option<String>,
    /// Whether it is one of the definition's business keys (`keys:`).
    pub(crate) key: bool,
}

impl VarSpec {
    /// The variable's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its declared type.
    pub fn ty(&self) -> VarType {
        self.ty
    }

    /// Whether a start must give it.
    pub fn required(&self) -> bool {
        self.required
    }

    /// The value used when a start does not give it.
    pub fn default(&self) -> Option<&Value> {
        self.default.as_ref()
    }

    /// The allowed values, when the definition lists them.
    pub fn allowed(&self) -> Option<&[Value]> {
        self.allowed.as_deref()
    }

    /// The description from the definition.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// How deeply a value may nest arrays and objects: `[[1]]` and `[[]]` nest 2 levels, a scalar
    /// none.
    ///
    /// Every value a variable takes (at start, on completion, from a handler, a declared
    /// default) is checked. The store's JSON decoder stops at 128 levels (an instance's state adds
    /// a few levels around its variables), and CEL conditions read values recursively, so this
    /// bound keeps both far from their limits; see `src/cond.rs` for the stack measurement.
    pub const MAX_VALUE_DEPTH: usize = 32;

    /// How large a value may be, in bytes of its compact JSON text (`serde_json::to_string`).
    ///
    /// This bounds the memory one value takes and the work a CEL condition does on it: a list
    /// holds at most 32,767 items, a string at most 65,534 bytes. The cost bound of conditions
    /// (`src/cond.rs`) is computed from it.
    pub const MAX_VALUE_BYTES: usize = 64 * 1024;

    /// How long a business key's string value may be, in bytes of UTF-8: stores index every
    /// key's value (PostgreSQL at most 2,704 bytes per index entry), and a key names a
    /// customer, an order or a ticket.
    pub const MAX_KEY_BYTES: usize = 1024;

    /// Why `value` is not acceptable for this variable, if it is not.
    ///
    /// Every type is checked against [`VarSpec::MAX_VALUE_DEPTH`] and
    /// [`VarSpec::MAX_VALUE_BYTES`] first, `any` included.
    pub(crate) fn reject(&self, value: &Value) -> Option<VarProblem> {
        if let Some(problem) = check_bounds(value) {
            return Some(problem);
        }
        if !self.ty.fits(value) {
            return Some(VarProblem::WrongType { expected: self.ty });
        }
        if self.key
            && let Value::String(s) = value
            && s.len() > VarSpec::MAX_KEY_BYTES
        {
            return Some(VarProblem::KeyTooLong {
                limit: VarSpec::MAX_KEY_BYTES,
            });
        }
        match &self.allowed {
            Some(allowed) if !allowed.contains(value) => Some(VarProblem::NotAllowed),
            _ => None,
        }
    }
}

/// Whether `value` is within [`VarSpec::MAX_VALUE_DEPTH`] and [`VarSpec::MAX_VALUE_BYTES`]; the
/// walk stops as soon as either is passed, so a hostile value costs little to refuse.
pub(crate) fn check_bounds(value: &Value) -> Option<VarProblem> {
    // A scalar is within both bounds without writing it out: a number takes at most 24 bytes
    // as JSON, and a string at most 6 per byte (`\u001f`) and its quotes.
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => return None,
        Value::String(s) if s.len() <= (VarSpec::MAX_VALUE_BYTES - 2) / 6 => return None,
        _ => {}
    }
    if depth_over(value, VarSpec::MAX_VALUE_DEPTH) {
        return Some(VarProblem::TooDeep {
            limit: VarSpec::MAX_VALUE_DEPTH,
        });
    }
    // Within the depth bound, serializing recurses at most 32 levels; the writer stops it at the
    // size bound.
    let mut counter = Counter {
        left: VarSpec::MAX_VALUE_BYTES,
    };
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => None,
        Err(_) => Some(VarProblem::TooLarge {
            limit: VarSpec::MAX_VALUE_BYTES,
        }),
    }
}

/// The bytes `items` takes as a JSON list, or why that list would be out of the bounds of a
/// variable's value (a multi-instance task's items and collected outputs are lists that become,
/// or came from, variables). Stops at the size bound.
pub(crate) fn list_bounds<T>(items: &[T]) -> Result<usize, VarProblem>
where
    T: std::borrow::Borrow<Value> + Serialize,
{
    if items
        .iter()
        .any(|v| depth_over(v.borrow(), VarSpec::MAX_VALUE_DEPTH - 1))
    {
        return Err(VarProblem::TooDeep {
            limit: VarSpec::MAX_VALUE_DEPTH,
        });
    }
    let mut counter = Counter {
        left: VarSpec::MAX_VALUE_BYTES,
    };
    match serde_json::to_writer(&mut counter, items) {
        Ok(()) => Ok(VarSpec::MAX_VALUE_BYTES - counter.left),
        Err(_) => Err(VarProblem::TooLarge {
            limit: VarSpec::MAX_VALUE_BYTES,
        }),
    }
}

/// The bytes of a JSON list of `n` nulls.
pub(crate) fn null_list_bytes(n: usize) -> usize {
    if n == 0 { 2 } else { 2 + 5 * n - 1 }
}

/// The bytes a JSON list that takes `bytes` takes once one of its nulls is replaced by `item`,
/// or why the list would then be out of bounds.
pub(crate) fn replace_null(bytes: usize, item: &Value) -> Result<usize, VarProblem> {
    if item.is_null() {
        return Ok(bytes);
    }
    if depth_over(item, VarSpec::MAX_VALUE_DEPTH - 1) {
        return Err(VarProblem::TooDeep {
            limit: VarSpec::MAX_VALUE_DEPTH,
        });
    }
    let base = bytes.saturating_sub(4);
    let mut counter = Counter {
        left: VarSpec::MAX_VALUE_BYTES.saturating_sub(base),
    };
    let start = counter.left;
    match serde_json::to_writer(&mut counter, item) {
        Ok(()) => Ok(base + (start - counter.left)),
        Err(_) => Err(VarProblem::TooLarge {
            limit: VarSpec::MAX_VALUE_BYTES,
        }),
    }
}

/// Whether `value` nests more than `levels` arrays and objects. Recurses at most `levels + 1`
/// deep, whatever the value.
fn depth_over(value: &Value, levels: usize) -> bool {
    let mut children: Box<dyn Iterator<Item = &Value>> = match value {
        Value::Array(items) => Box::new(items.iter()),
        Value::Object(map) => Box::new(map.values()),
        _ => return false,
    };
    match levels.checked_sub(1) {
        None => true,
        Some(rest) => children.any(|v| depth_over(v, rest)),
    }
}

/// A writer that only counts, and fails once more than its allowance is written.
struct Counter {
    left: usize,
}

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.left.checked_sub(buf.len()) {
            Some(left) => {
                self.left = left;
                Ok(buf.len())
            }
            None => Err(std::io::Error::other("value too large")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Why a variable's value was refused.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "fields", rename_all = "snake_case")]
#[non_exhaustive]
pub enum VarProblem {
    /// The process declares no such variable.
    Undeclared,
    /// A required variable is missing at start.
    Missing,
    /// The value has another type than declared.
    WrongType {
        /// The declared type.
        expected: VarType,
    },
    /// The value is not one of the declared `enum` values.
    NotAllowed,
    /// The value nests arrays and objects more deeply than [`VarSpec::MAX_VALUE_DEPTH`].
    TooDeep {
        /// The most levels a value may nest.
        limit: usize,
    },
    /// The value's JSON text is longer than [`VarSpec::MAX_VALUE_BYTES`].
    TooLarge {
        /// The most bytes a value may take.
        limit: usize,
    },
    /// A business key's string value is longer than [`VarSpec::MAX_KEY_BYTES`].
    KeyTooLong {
        /// The most bytes a key's value may take.
        limit: usize,
    },
    /// A delivered message's variable that its declared `payload` does not list.
    NotInPayload,
    /// A multi-instance item sets a variable other than its `output`: what an item sets is
    /// local to it, and only its output is collected.
    NotItemOutput,
    /// A completion sets a variable its task's `sets:` (its form) does not list.
    NotSetByTask,
}

impl std::fmt::Display for VarProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VarProblem::Undeclared => f.write_str("not declared by the process"),
            VarProblem::Missing => f.write_str("required but missing"),
            VarProblem::WrongType { expected } => {
                write!(f, "expected a value of type {}", expected.as_str())
            }
            VarProblem::NotAllowed => f.write_str("not one of the allowed values"),
            VarProblem::TooDeep { limit } => {
                write!(f, "nested more than {limit} levels deep")
            }
            VarProblem::TooLarge { limit } => {
                write!(f, "larger than {limit} bytes as JSON")
            }
            VarProblem::KeyTooLong { limit } => {
                write!(f, "a business key longer than {limit} bytes")
            }
            VarProblem::NotInPayload => f.write_str("not in the message's payload"),
            VarProblem::NotItemOutput => f.write_str(
                "not the item's output: a multi-instance item sets only its 'output' variable",
            ),
            VarProblem::NotSetByTask => {
                f.write_str("not one the task sets: its 'sets' (its form) does not list it")
            }
        }
    }
}

/// Values a caller handed to the engine (variables, or a list of items): dropped without
/// recursion ([`drop_flat`]) when the call ends without keeping them, whichever way it fails.
pub(crate) struct Handed<T: Flat = Vars>(T);

/// What [`Handed`] holds: values it can take apart without recursion.
pub(crate) trait Flat: Default {
    fn is_empty(&self) -> bool;
    fn into_values(self) -> Vec<Value>;
}

impl Flat for Vars {
    fn is_empty(&self) -> bool {
        Vars::is_empty(self)
    }

    fn into_values(self) -> Vec<Value> {
        self.into_iter().map(|(_, v)| v).collect()
    }
}

impl Flat for Vec<Value> {
    fn is_empty(&self) -> bool {
        <[Value]>::is_empty(self)
    }

    fn into_values(self) -> Vec<Value> {
        self
    }
}

impl<T: Flat> Handed<T> {
    pub(crate) fn new(values: T) -> Handed<T> {
        Handed(values)
    }

    /// The values, kept by the engine.
    pub(crate) fn take(mut self) -> T {
        std::mem::take(&mut self.0)
    }
}

impl<T: Flat> std::ops::Deref for Handed<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Flat> std::ops::DerefMut for Handed<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: Flat> Drop for Handed<T> {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            drop_flat(std::mem::take(&mut self.0).into_values());
        }
    }
}

/// Drops values without recursion. A host may hand the engine a value nested far deeper than
/// [`VarSpec::MAX_VALUE_DEPTH`]; it is refused, and dropping it the usual way would recurse once
/// per level on the host's stack.
fn drop_flat(mut stack: Vec<Value>) {
    while let Some(value) = stack.pop() {
        match value {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_sizes_match_their_json() {
        for n in 0..5 {
            let nulls = vec![Value::Null; n];
            let json = serde_json::to_string(&nulls).unwrap().len();
            assert_eq!(null_list_bytes(n), json);
            assert_eq!(list_bounds(&nulls), Ok(json));
            if n > 0 {
                let item = serde_json::json!({ "a": [1, "two"] });
                let mut replaced = nulls.clone();
                replaced[0] = item.clone();
                let want = serde_json::to_string(&replaced).unwrap().len();
                assert_eq!(replace_null(json, &item), Ok(want));
            }
        }
    }
}
