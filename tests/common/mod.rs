//! Helpers shared by the integration tests that drive instances through their tasks.

use procflow::{Engine, InstanceId};

/// The node ids of the open tasks of an instance, sorted.
pub(crate) fn open(engine: &Engine, id: InstanceId) -> Vec<String> {
    let mut nodes: Vec<String> = engine
        .tasks(id)
        .unwrap()
        .into_iter()
        .map(|t| t.node_id.to_string())
        .collect();
    nodes.sort();
    nodes
}
