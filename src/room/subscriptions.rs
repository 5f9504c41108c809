//! Who subscribes to what in one room (protocol/README.md §7.5), indexed so that routing a
//! node costs what its path can match, not O(sessions × patterns).
//!
//! Patterns are kept once each, by canonical form, with the sessions that hold them. A trie
//! over their literal leading segments finds the patterns a path can match: walking the
//! path's segments down the trie collects every pattern whose literal prefix the path starts
//! with, and only those are tested. Sessions with the same subscription share a **class**:
//! the room's distinct paths that match it. The room lists each path's nodes, so a subscribed
//! session's catch-up and its `catch_up_done` digest cost what matches, not the room, and a
//! class costs memory per matching path, not per matching node.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;

use crate::pattern::{Pattern, PatternSet};
use crate::recon::SetDigest;

use super::{Room, SessionId};

/// The canonical forms of a subscription's patterns, in order: names a class.
pub type ClassKey = Arc<[String]>;

/// The room's paths that match one subscription.
#[derive(Debug)]
pub struct Class {
    set: Arc<PatternSet>,
    /// Distinct matching paths.
    paths: Vec<Arc<str>>,
    /// Sessions with this subscription.
    sessions: usize,
}

impl Class {
    /// The subscription.
    pub fn set(&self) -> &Arc<PatternSet> {
        &self.set
    }

    /// Digest of the room's matching nodes. Costs O(matching paths).
    pub fn digest(&self, room: &Room) -> SetDigest {
        let mut digest = SetDigest::default();
        for path in &self.paths {
            if let Some(nodes) = room.path_nodes(path) {
                digest.merge(&nodes.digest());
            }
        }
        digest
    }

    /// Arrival numbers of the matching nodes above `after`, ascending, of paths `keep`
    /// accepts: a merge of the paths' lists, O((p + k) log p) for p paths and k numbers.
    pub fn seqs_after(&self, room: &Room, after: u64, keep: impl Fn(&str) -> bool) -> Vec<u64> {
        let lists: Vec<&[u64]> = self
            .paths
            .iter()
            .filter(|path| keep(path))
            .filter_map(|path| room.path_nodes(path))
            .map(|nodes| {
                let seqs = nodes.seqs();
                let start = seqs.partition_point(|s| *s <= after);
                seqs.get(start..).unwrap_or_default()
            })
            .filter(|list| !list.is_empty())
            .collect();
        let mut heap: BinaryHeap<Reverse<(u64, usize, usize)>> = lists
            .iter()
            .enumerate()
            .filter_map(|(i, list)| list.first().map(|s| Reverse((*s, i, 0))))
            .collect();
        let mut out = Vec::new();
        while let Some(Reverse((seq, list, pos))) = heap.pop() {
            out.push(seq);
            if let Some(next) = lists.get(list).and_then(|l| l.get(pos + 1)) {
                heap.push(Reverse((*next, list, pos + 1)));
            }
        }
        out
    }

    /// Whether any matching node is numbered above `after`. O(matching paths).
    pub fn has_after(&self, room: &Room, after: u64) -> bool {
        self.paths.iter().any(|path| {
            room.path_nodes(path)
                .and_then(|nodes| nodes.seqs().last())
                .is_some_and(|last| *last > after)
        })
    }
}

struct PatternEntry {
    pattern: Pattern,
    sessions: BTreeSet<SessionId>,
    /// Classes whose subscription holds this pattern.
    classes: BTreeSet<ClassKey>,
    /// The room's paths this pattern matches: a class is the union of its patterns' paths,
    /// so a pattern shared by many subscriptions (`**/README`) is matched against the room
    /// once.
    paths: Vec<Arc<str>>,
}

#[derive(Default)]
struct TrieNode {
    children: HashMap<Box<str>, TrieNode>,
    /// Canonical forms of the patterns whose literal prefix ends here.
    patterns: Vec<Box<str>>,
}

/// Every subscription of a room's sessions.
#[derive(Default)]
pub struct Subscriptions {
    patterns: HashMap<Box<str>, PatternEntry>,
    trie: TrieNode,
    classes: HashMap<ClassKey, Class>,
}

impl Subscriptions {
    /// Whether no session subscribes to anything (every session receives everything).
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// Registers `session` with subscription `set`; returns its class, made with one pass
    /// over the room if no session had this subscription.
    pub fn join(&mut self, session: SessionId, set: Arc<PatternSet>, room: &Room) -> ClassKey {
        let key: ClassKey = set.canonical().into();
        for pattern in set.patterns() {
            let entry = self
                .patterns
                .entry(pattern.as_str().into())
                .or_insert_with(|| {
                    insert_trie(&mut self.trie, pattern);
                    PatternEntry {
                        pattern: pattern.clone(),
                        sessions: BTreeSet::new(),
                        classes: BTreeSet::new(),
                        paths: room.paths_matching(std::slice::from_ref(pattern)),
                    }
                });
            entry.sessions.insert(session);
            entry.classes.insert(key.clone());
        }
        if !self.classes.contains_key(&key) {
            let class = self.build_class(set);
            self.classes.insert(key.clone(), class);
        }
        if let Some(class) = self.classes.get_mut(&key) {
            class.sessions += 1;
        }
        key
    }

    /// The class of `set`: the union of its patterns' paths.
    fn build_class(&self, set: Arc<PatternSet>) -> Class {
        let mut paths: Vec<Arc<str>> = set
            .patterns()
            .iter()
            .filter_map(|p| self.patterns.get(p.as_str()))
            .flat_map(|entry| entry.paths.iter().cloned())
            .collect();
        paths.sort_unstable_by(|a, b| a.as_ref().cmp(b.as_ref()));
        paths.dedup_by(|a, b| Arc::ptr_eq(a, b));
        Class {
            set,
            paths,
            sessions: 0,
        }
    }

    /// Unregisters `session` from the class `key`; forgets what no session uses any more.
    pub fn leave(&mut self, session: SessionId, key: &ClassKey) {
        let Some(class) = self.classes.get_mut(key) else {
            return;
        };
        class.sessions = class.sessions.saturating_sub(1);
        let unused = class.sessions == 0;
        let set = class.set.clone();
        if unused {
            self.classes.remove(key);
        }
        for pattern in set.patterns() {
            let canonical = pattern.as_str();
            let Some(entry) = self.patterns.get_mut(canonical) else {
                continue;
            };
            entry.sessions.remove(&session);
            if unused {
                entry.classes.remove(key);
            }
            if entry.sessions.is_empty() && entry.classes.is_empty() {
                self.patterns.remove(canonical);
                remove_trie(&mut self.trie, pattern);
            }
        }
    }

    /// A class by key.
    pub fn class(&self, key: &ClassKey) -> Option<&Class> {
        self.classes.get(key)
    }

    /// A node brought a path the room had not seen: files it under the classes it matches.
    pub fn new_path(&mut self, path: &Arc<str>) {
        let mut classes: BTreeSet<ClassKey> = BTreeSet::new();
        let mut patterns: Vec<Box<str>> = Vec::new();
        self.for_each_match(path, |entry| {
            classes.extend(entry.classes.iter().cloned());
            patterns.push(entry.pattern.as_str().into());
        });
        for canonical in patterns {
            if let Some(entry) = self.patterns.get_mut(&canonical) {
                entry.paths.push(path.clone());
            }
        }
        for key in classes {
            if let Some(class) = self.classes.get_mut(&key) {
                class.paths.push(path.clone());
            }
        }
    }

    /// Sessions whose subscription matches `path`, ascending, each once.
    pub fn sessions_matching(&self, path: &str) -> Vec<SessionId> {
        let mut sessions = Vec::new();
        let mut sources = 0;
        self.for_each_match(path, |entry| {
            sessions.extend(entry.sessions.iter().copied());
            sources += 1;
        });
        // One matching pattern gives its sessions sorted and distinct already.
        if sources > 1 {
            sessions.sort_unstable();
            sessions.dedup();
        }
        sessions
    }

    /// Calls `f` for every pattern `path` matches, testing only those whose literal prefix
    /// the path starts with.
    fn for_each_match(&self, path: &str, mut f: impl FnMut(&PatternEntry)) {
        let mut test = |node: &TrieNode| {
            for canonical in &node.patterns {
                if let Some(entry) = self.patterns.get(canonical)
                    && entry.pattern.matches(path)
                {
                    f(entry);
                }
            }
        };
        let mut node = &self.trie;
        test(node);
        for segment in path.split('/') {
            let Some(child) = node.children.get(segment) else {
                return;
            };
            node = child;
            test(node);
        }
    }
}

fn insert_trie(trie: &mut TrieNode, pattern: &Pattern) {
    let mut node = trie;
    for segment in pattern.literal_prefix() {
        node = node.children.entry(segment.into()).or_default();
    }
    node.patterns.push(pattern.as_str().into());
}

fn remove_trie(trie: &mut TrieNode, pattern: &Pattern) {
    fn remove(node: &mut TrieNode, prefix: &[&str], canonical: &str) {
        match prefix.split_first() {
            None => node.patterns.retain(|p| &**p != canonical),
            Some((first, rest)) => {
                if let Some(child) = node.children.get_mut(*first) {
                    remove(child, rest, canonical);
                    if child.patterns.is_empty() && child.children.is_empty() {
                        node.children.remove(*first);
                    }
                }
            }
        }
    }
    let prefix: Vec<&str> = pattern.literal_prefix().collect();
    remove(trie, &prefix, pattern.as_str());
}
