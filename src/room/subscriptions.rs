//! Who subscribes to what in one room (protocol/README.md §7.5), indexed so that routing a
//! node costs what its path can match, not O(sessions × patterns).
//!
//! Patterns are kept once each, by canonical form, with the sessions that hold them. A trie
//! over their literal leading segments finds the patterns a path can match: walking the
//! path's segments down the trie collects every pattern whose literal prefix the path starts
//! with, and only those are tested. Sessions with the same subscription share a **class**,
//! which knows the room's matching nodes (their arrival numbers and digest), so a subscribed
//! session's catch-up and its `catch_up_done` digest cost what matches, not the room.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::pattern::{Pattern, PatternSet};
use crate::recon::SetDigest;

use super::{Room, SessionId};

/// The canonical forms of a subscription's patterns, in order: names a class.
pub type ClassKey = Arc<[String]>;

/// The room's nodes that match one subscription.
#[derive(Debug)]
pub struct Class {
    set: Arc<PatternSet>,
    /// Arrival numbers of the matching nodes, ascending.
    seqs: Vec<u64>,
    /// Digest of the matching nodes.
    digest: SetDigest,
    /// Sessions with this subscription.
    sessions: usize,
}

impl Class {
    /// The subscription.
    pub fn set(&self) -> &Arc<PatternSet> {
        &self.set
    }

    /// Arrival numbers of the matching nodes, ascending.
    pub fn seqs(&self) -> &[u64] {
        &self.seqs
    }

    /// Digest of the matching nodes.
    pub fn digest(&self) -> SetDigest {
        self.digest
    }

    /// Matching arrival numbers above `after`.
    pub fn after(&self, after: u64) -> &[u64] {
        let start = self.seqs.partition_point(|s| *s <= after);
        self.seqs.get(start..).unwrap_or_default()
    }
}

struct PatternEntry {
    pattern: Pattern,
    sessions: BTreeSet<SessionId>,
    /// Classes whose subscription holds this pattern.
    classes: BTreeSet<ClassKey>,
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
        let class = self
            .classes
            .entry(key.clone())
            .or_insert_with(|| build_class(set.clone(), room));
        class.sessions += 1;
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
                    }
                });
            entry.sessions.insert(session);
            entry.classes.insert(key.clone());
        }
        key
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

    /// Files a newly admitted node under the classes it matches.
    pub fn admitted(&mut self, seq: u64, path: &str, id: &crate::node::NodeId) {
        let mut classes: BTreeSet<ClassKey> = BTreeSet::new();
        self.for_each_match(path, |entry| classes.extend(entry.classes.iter().cloned()));
        for key in classes {
            if let Some(class) = self.classes.get_mut(&key) {
                class.seqs.push(seq);
                class.digest.insert(id);
            }
        }
    }

    /// Sessions whose subscription matches `path`.
    pub fn sessions_matching(&self, path: &str) -> BTreeSet<SessionId> {
        let mut sessions = BTreeSet::new();
        self.for_each_match(path, |entry| {
            sessions.extend(entry.sessions.iter().copied())
        });
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

/// The class of `set`: one pass over the room, matching each distinct path once (nodes of
/// one document share their path).
fn build_class(set: Arc<PatternSet>, room: &Room) -> Class {
    let mut seen: HashMap<usize, bool> = HashMap::new();
    let mut seqs = Vec::new();
    let mut digest = SetDigest::default();
    for (seq, node) in (1u64..).zip(room.nodes()) {
        let path = node.path();
        let matches = *seen
            .entry(path.as_ptr() as usize)
            .or_insert_with(|| set.matches(path));
        if matches {
            seqs.push(seq);
            digest.insert(node.id());
        }
    }
    Class {
        set,
        seqs,
        digest,
        sessions: 0,
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
