//! The instance model: an instance's state (tokens, tasks, incidents, timers, the audit trail),
//! as plain serde data shared by the executor that changes it, the stores that keep it, the hooks
//! that hear about it and the reports that read it.
//!
//! **Invariant:** this layer uses only the definition layer and below (ids, variables, RACI
//! actions, `ProcessDef` to name nodes); nothing here knows the executor, a store or a hook.

mod alloc;
mod call;
mod control;
mod event;
mod instance;
mod timer;

pub(crate) use alloc::{Assigned, Delegation, Suspension};
pub use alloc::{Call, Refusal};
pub use event::{Event, FollowUp, ParkedMessage, Pending};

pub(crate) use instance::{CallParent, Called, Rare};
pub use instance::{
    Comment, Entry, Incident, Instance, Record, SentBack, Status, Task, TaskState, Token,
    TokenState,
};
pub(crate) use instance::{ItemState, Kept, Multi, RunVars};
pub use timer::{Fired, Timer, TimerKind};

pub(crate) use instance::Absorbing;
pub(crate) use instance::Receipt;
pub use instance::{Delivered, Received};
