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

    /// Why `value` is not acceptable for this variable, if it is not.
    pub(crate) fn reject(&self, value: &Value) -> Option<VarProblem> {
        if !self.ty.fits(value) {
            return Some(VarProblem::WrongType { expected: self.ty });
        }
        match &self.allowed {
            Some(allowed) if !allowed.contains(value) => Some(VarProblem::NotAllowed),
            _ => None,
        }
    }
}

/// Why a variable's value was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
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
        }
    }
}
