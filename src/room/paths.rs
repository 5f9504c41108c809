//! The room's distinct paths as a tree of segments: a subscription is matched against each
//! shared prefix once, and subtrees that cannot match are never entered.

use std::collections::HashMap;
use std::sync::Arc;

use crate::pattern::Pattern;

/// Distinct paths, by segment.
#[derive(Default)]
pub struct PathTree {
    root: TreeNode,
}

#[derive(Default)]
struct TreeNode {
    children: HashMap<Box<str>, TreeNode>,
    /// The path that ends here, if any.
    path: Option<Arc<str>>,
}

impl PathTree {
    /// Adds a path the room had not seen.
    pub fn insert(&mut self, path: &Arc<str>) {
        let mut node = &mut self.root;
        for segment in path.split('/') {
            node = node.children.entry(segment.into()).or_default();
        }
        node.path = Some(path.clone());
    }

    /// Every path some of `patterns` matches, each once. Costs the tree nodes the patterns
    /// can reach: a literal leading segment enters one subtree, `**` enters all.
    pub fn matching(&self, patterns: &[Pattern]) -> Vec<Arc<str>> {
        let mut found: Vec<Arc<str>> = Vec::new();
        for pattern in patterns {
            walk(&self.root, pattern, pattern.start(), &mut found);
        }
        found.sort_unstable_by(|a, b| a.as_ref().cmp(b.as_ref()));
        found.dedup_by(|a, b| Arc::ptr_eq(a, b));
        found
    }
}

fn walk(node: &TreeNode, pattern: &Pattern, states: u64, found: &mut Vec<Arc<str>>) {
    for (segment, child) in &node.children {
        let next = pattern.step(states, segment);
        if next == 0 {
            continue;
        }
        if let Some(path) = &child.path
            && pattern.accepts(next)
        {
            found.push(path.clone());
        }
        walk(child, pattern, next, found);
    }
}
