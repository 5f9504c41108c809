//! Deterministic replay: the worked example of how clients converge.
//!
//! Every replica that holds the same set of nodes computes the same state, whatever order the
//! nodes arrived in, because replay never looks at arrival order:
//!
//! 1. Order the DAG topologically by `(depth, id)`. Depth is 1 + the largest parent depth, so
//!    every parent sorts before its children; ids break ties between concurrent nodes.
//! 2. Materialize a last-writer-wins map keyed by path. A write *supersedes* the earlier writes
//!    to its path that are its ancestors (it saw them). Writes to one path that do not see each
//!    other are concurrent: the one that sorts last wins, the others are reported as conflicts
//!    so an application can show or merge them.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use crate::node::{Node, NodeId};

/// The materialized value of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The winning write.
    pub winner: NodeId,
    /// Its payload.
    pub value: Bytes,
    /// Concurrent writes that lost, in replay order: `(node, payload)`.
    pub conflicts: Vec<(NodeId, Bytes)>,
}

/// Path → value, in path order.
pub type Materialized = BTreeMap<String, Entry>;

/// Nodes in replay order: `(depth, id)` ascending.
pub fn topological_order<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Vec<&'a Node> {
    let mut ordered: Vec<&Node> = nodes.into_iter().collect();
    ordered.sort_unstable_by_key(|n| (n.depth, n.id));
    ordered
}

/// Materializes a last-writer-wins map by path, keeping concurrent writes as conflicts.
///
/// Cost: each write checks the path's current concurrent writes for ancestry with a search
/// pruned below their depth; a path with one current writer costs one bounded walk.
pub fn materialize<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Materialized {
    let ordered = topological_order(nodes);
    let by_id: HashMap<NodeId, &Node> = ordered.iter().map(|n| (n.id, *n)).collect();
    // Path -> writes no later write has seen, in replay order.
    let mut frontier: BTreeMap<&str, Vec<&Node>> = BTreeMap::new();
    for node in &ordered {
        let writes = frontier.entry(node.path.as_str()).or_default();
        writes.retain(|earlier| !is_ancestor(earlier, node, &by_id));
        writes.push(node);
    }
    frontier
        .into_iter()
        .filter_map(|(path, writes)| {
            let (winner, losers) = writes.split_last()?;
            Some((
                path.to_owned(),
                Entry {
                    winner: winner.id,
                    value: winner.payload.clone(),
                    conflicts: losers.iter().map(|n| (n.id, n.payload.clone())).collect(),
                },
            ))
        })
        .collect()
}

/// Whether `ancestor` is reachable from `node` through parent links. Nodes at or below the
/// ancestor's depth cannot lead to it, so the search stops there.
fn is_ancestor(ancestor: &Node, node: &Node, by_id: &HashMap<NodeId, &Node>) -> bool {
    let mut stack: Vec<&NodeId> = node.parents.iter().collect();
    let mut seen = std::collections::HashSet::new();
    while let Some(id) = stack.pop() {
        if *id == ancestor.id {
            return true;
        }
        if !seen.insert(*id) {
            continue;
        }
        if let Some(parent) = by_id.get(id) {
            if parent.depth > ancestor.depth {
                stack.extend(parent.parents.iter());
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::RoomId;

    fn room() -> RoomId {
        RoomId::new("r").unwrap()
    }

    fn write(parents: &[&Node], path: &str, value: &str) -> Node {
        Node::child_of(&room(), parents, path, value.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn later_write_supersedes_what_it_saw() {
        let a = write(&[], "title", "one");
        let b = write(&[&a], "title", "two");
        let map = materialize([&b, &a]);
        let entry = &map["title"];
        assert_eq!(entry.value, Bytes::from_static(b"two"));
        assert!(entry.conflicts.is_empty());
    }

    #[test]
    fn concurrent_writes_are_conflicts_and_order_independent() {
        let root = write(&[], "x", "root");
        let left = write(&[&root], "title", "left");
        let right = write(&[&root], "title", "right");
        let one = materialize([&root, &left, &right]);
        let two = materialize([&right, &root, &left]);
        assert_eq!(one, two);
        let entry = &one["title"];
        assert_eq!(entry.conflicts.len(), 1);
        let expected_winner = if left.id > right.id {
            left.id
        } else {
            right.id
        };
        assert_eq!(entry.winner, expected_winner);
        // A merge that saw both resolves the conflict.
        let merge = write(&[&left, &right], "title", "merged");
        let three = materialize([&root, &left, &right, &merge]);
        assert_eq!(three["title"].value, Bytes::from_static(b"merged"));
        assert!(three["title"].conflicts.is_empty());
    }

    #[test]
    fn writes_to_other_paths_do_not_interact() {
        let a = write(&[], "a", "1");
        let b = write(&[&a], "b", "2");
        let map = materialize([&a, &b]);
        assert_eq!(map.len(), 2);
        assert_eq!(map["a"].value, Bytes::from_static(b"1"));
    }
}
