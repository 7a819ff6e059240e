//! Typed ids. Nodes are numbered by their position in a definition; instances and tasks by the
//! engine.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A node of one definition: its position in the definition's `nodes` map.
///
/// Resolve it to the YAML id with [`ProcessDef::node`](crate::ProcessDef::node).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub(crate) u32);

impl NodeId {
    /// The position in the definition's node list.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A node as errors name it: its position in the definition and its YAML id. Displays as the
/// YAML id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeRef {
    /// The node's position.
    pub id: NodeId,
    /// The node's YAML id.
    pub name: Arc<str>,
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A process instance, unique within one engine.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceId(pub(crate) u64);

impl InstanceId {
    /// The id with this number, as [`InstanceId::get`] gave it: a host that keeps instance
    /// numbers in its own records makes ids again with this.
    pub fn new(n: u64) -> InstanceId {
        InstanceId(n)
    }

    /// The number behind the id.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "i{}", self.0)
    }
}

/// Text that is not an id as [`InstanceId`] or [`TaskId`] display it (`i42`, `i42.t0`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{text}' is not {what} id (expected e.g. '{example}')")]
pub struct ParseIdError {
    text: String,
    what: &'static str,
    example: &'static str,
}

fn number(text: &str, prefix: char) -> Option<u64> {
    let digits = text.strip_prefix(prefix)?;
    // Only plain decimal digits: no sign, no spaces.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl std::str::FromStr for InstanceId {
    type Err = ParseIdError;

    /// Parses what `Display` prints: `i42`.
    fn from_str(text: &str) -> Result<InstanceId, ParseIdError> {
        number(text, 'i')
            .map(InstanceId)
            .ok_or_else(|| ParseIdError {
                text: text.to_owned(),
                what: "an instance",
                example: "i42",
            })
    }
}

impl std::str::FromStr for TaskId {
    type Err = ParseIdError;

    /// Parses what `Display` prints: `i42.t0`.
    fn from_str(text: &str) -> Result<TaskId, ParseIdError> {
        let parsed = text.split_once('.').and_then(|(i, t)| {
            let instance = number(i, 'i')?;
            let seq = u32::try_from(number(t, 't')?).ok()?;
            Some(TaskId::new(InstanceId(instance), seq))
        });
        parsed.ok_or_else(|| ParseIdError {
            text: text.to_owned(),
            what: "a task",
            example: "i42.t0",
        })
    }
}

/// A user task: the instance it belongs to and its number within that instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId {
    pub(crate) instance: InstanceId,
    pub(crate) seq: u32,
}

impl TaskId {
    /// The task numbered `seq` (from 0, in the order the instance opened its tasks) of
    /// `instance`.
    pub fn new(instance: InstanceId, seq: u32) -> TaskId {
        TaskId { instance, seq }
    }

    /// The instance the task belongs to.
    pub fn instance(self) -> InstanceId {
        self.instance
    }

    /// The task's number within its instance (as audit entries name it).
    pub fn seq(self) -> u32 {
        self.seq
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.t{}", self.instance, self.seq)
    }
}

/// A role of the RACI catalogue, e.g. `customer_service`.
#[repr(transparent)]
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RoleId(pub(crate) String);

impl RoleId {
    /// Makes a role id.
    pub fn new(id: impl Into<String>) -> RoleId {
        RoleId(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of a process definition: the YAML `id` and `version`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DefKey {
    /// The YAML `id`.
    pub id: String,
    /// The YAML `version`.
    pub version: u32,
}

impl fmt::Display for DefKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.version)
    }
}

/// An actor's id as the audit trail and tasks keep it: shared, one pointer wide, cheap to clone.
/// It reads as a `str`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ActorId(Arc<String>);

impl ActorId {
    /// Makes an actor id.
    pub fn new(id: impl Into<String>) -> ActorId {
        ActorId(Arc::new(id.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for ActorId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ActorId {
    fn from(id: &str) -> ActorId {
        ActorId::new(id)
    }
}

impl From<String> for ActorId {
    fn from(id: String) -> ActorId {
        ActorId::new(id)
    }
}

impl PartialEq<str> for ActorId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ActorId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}
