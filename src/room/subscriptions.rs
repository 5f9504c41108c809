//! Who subscribes to what in one room (protocol/README.md §7.5), indexed so that routing a
//! node costs what its path can match, not O(sessions × patterns).
//!
//! Patterns are kept once each, by canonical form, with the sessions that hold them. A trie
//! over their literal leading segments finds the patterns a path can match: walking the
//! path's segments down the trie collects every pattern whose literal prefix the path starts
//! with, and only those are tested. Sessions with the same subscription share a **class**:
//! the room's distinct paths that match it. The room lists each path's nodes, so a subscribed
//! session's catch-up and its `catch_up_done` digest cost what matches, not the room, and a
//! class costs memory per matching path, not per matching node — until a session reconciles
//! it by sketch: then the class also keeps the sketch structures of its matching nodes
//! ([`ClassRecon`], protocol/README.md §5.11), built once from the class's own nodes.
//!
//! A class outlives its last session for a while ([`MAX_IDLE_CLASSES`]), so a client that
//! reconnects with the same subscription finds its class, and its sketch structures, ready.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use crate::pattern::{Pattern, PatternSet};
use crate::recon::estimator::Estimator;
use crate::recon::index::SetIndex;
use crate::recon::{FastMap, SetDigest};

use super::recon::Scope;
use super::{Room, SessionId};

/// Classes kept after their last session left, most recently used last.
pub const MAX_IDLE_CLASSES: usize = 32;

/// The classes' sketch structures together hold at most this many times the room's nodes
/// (each costs about what the room's own index costs per node, ~150 B). A session whose class
/// would need more reconciles by id list instead.
pub const CLASS_RECON_FACTOR: u64 = 2;

/// Below this many nodes in all, class sketch structures are always allowed (small rooms).
const CLASS_RECON_FLOOR: u64 = 1 << 16;

/// The canonical forms of a subscription's patterns, in order: names a class.
type ClassKey = Arc<[String]>;

/// A class's number: cheap to hash, compare and copy where a class is looked up per node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassId(u64);

/// The room's paths that match one subscription.
#[derive(Debug)]
pub struct Class {
    key: ClassKey,
    set: Arc<PatternSet>,
    /// Distinct matching paths.
    paths: Vec<Arc<str>>,
    /// Sessions with this subscription.
    sessions: usize,
}

/// The sketch structures of one class's matching nodes (protocol/README.md §5.11): the same
/// sketch levels, short ids, prefix tree and estimator the room keeps for all its nodes, under
/// the room's sketch key. Topped up lazily, when a session needs them, from the nodes admitted
/// since (`through`), so admissions cost nothing extra.
pub struct ClassRecon {
    sets: SetIndex,
    estimator: Estimator,
    digest: SetDigest,
    /// Every matching node numbered up to this is in.
    through: u64,
}

impl ClassRecon {
    fn new(room: &Room) -> Self {
        Self {
            sets: SetIndex::new(room.sketch_key()),
            estimator: Estimator::new(),
            digest: SetDigest::default(),
            through: 0,
        }
    }

    /// Adds the class's nodes admitted since the last call, up to the room's latest.
    fn top_up(&mut self, class: &Class, room: &Room) {
        let seq = room.seq();
        if seq <= self.through {
            return;
        }
        // Whichever is cheaper: test the nodes admitted since, or merge the matching paths'
        // lists.
        let new_nodes: Vec<u64> = if seq - self.through <= class.paths.len() as u64 {
            (self.through + 1..=seq)
                .filter(|s| {
                    room.node_at(*s)
                        .is_some_and(|n| class.set.matches(n.path()))
                })
                .collect()
        } else {
            class.seqs_after(room, self.through, |_| true)
        };
        // Many nodes at once (the first build): make the sketch levels once at the end.
        let bulk = new_nodes.len() as u64 > self.sets.len();
        if bulk {
            self.sets.defer_levels();
        }
        for id in new_nodes
            .iter()
            .filter_map(|s| room.node_at(*s))
            .map(|n| n.id)
        {
            self.sets.insert(id);
            self.estimator.insert(&id);
            self.digest.insert(&id);
        }
        if bulk {
            self.sets.build_levels();
            // Hash the prefix tree now, as part of the build, so sessions pay only for the
            // paths that change.
            self.sets.root();
        }
        self.through = seq;
    }

    /// The sketch levels, short ids and prefix tree.
    pub fn sets_mut(&mut self) -> &mut SetIndex {
        &mut self.sets
    }

    /// Digest of the matching nodes held.
    pub fn digest(&self) -> SetDigest {
        self.digest
    }

    /// The difference estimator.
    pub fn estimator(&self) -> &Estimator {
        &self.estimator
    }

    /// Number of matching nodes held.
    pub fn len(&self) -> u64 {
        self.sets.len()
    }
}

impl std::fmt::Debug for ClassRecon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassRecon")
            .field("len", &self.len())
            .field("through", &self.through)
            .finish_non_exhaustive()
    }
}

impl Class {
    /// The subscription.
    pub fn set(&self) -> &Arc<PatternSet> {
        &self.set
    }

    /// Number of matching nodes. O(matching paths).
    pub fn node_count(&self, room: &Room) -> u64 {
        self.paths
            .iter()
            .filter_map(|path| room.path_nodes(path))
            .map(|nodes| nodes.seqs().len() as u64)
            .sum()
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
}

struct PatternEntry {
    pattern: Pattern,
    sessions: BTreeSet<SessionId>,
    /// Classes whose subscription holds this pattern.
    classes: BTreeSet<ClassId>,
    /// The room's paths this pattern matches: a class is the union of its patterns' paths,
    /// so a pattern shared by many subscriptions (`**/README`) is matched against the room
    /// once.
    paths: Vec<Arc<str>>,
}

#[derive(Default)]
struct TrieNode {
    children: FastMap<Box<str>, TrieNode>,
    /// Canonical forms of the patterns whose literal prefix ends here.
    patterns: Vec<Box<str>>,
}

/// Every subscription of a room's sessions. Empty until the first subscription: most rooms
/// never see one, and the index costs ~300 bytes inline.
#[derive(Default)]
pub struct Subscriptions {
    index: Option<Box<Index>>,
}

/// The patterns, their trie and the classes of a room that has seen a subscription.
struct Index {
    patterns: FastMap<Box<str>, PatternEntry>,
    trie: TrieNode,
    classes: FastMap<ClassId, Class>,
    /// Each class's number by its subscription.
    ids: HashMap<ClassKey, ClassId>,
    next_class: u64,
    /// Classes without sessions, least recently used first; at most [`MAX_IDLE_CLASSES`].
    idle: VecDeque<ClassId>,
    /// Sketch structures of the classes that sessions reconciled by sketch.
    recons: FastMap<ClassId, ClassRecon>,
    /// Nodes the class structures may hold in all, whatever the room's size.
    recon_floor: u64,
}

impl Default for Index {
    fn default() -> Self {
        Self {
            patterns: FastMap::default(),
            trie: TrieNode::default(),
            classes: FastMap::default(),
            ids: HashMap::new(),
            next_class: 0,
            idle: VecDeque::new(),
            recons: FastMap::default(),
            recon_floor: CLASS_RECON_FLOOR,
        }
    }
}

impl Subscriptions {
    /// Subscriptions whose class structures may hold `floor` nodes in all even in a small
    /// room (the bound is otherwise [`CLASS_RECON_FACTOR`] times the room's nodes).
    #[cfg(test)]
    pub fn with_recon_floor(floor: u64) -> Self {
        Self {
            index: Some(Box::new(Index {
                recon_floor: floor,
                ..Index::default()
            })),
        }
    }

    /// Whether no session subscribes to anything (every session receives everything).
    pub fn is_empty(&self) -> bool {
        self.index.as_ref().is_none_or(|index| index.is_empty())
    }

    /// Whether any class is kept (with sessions or idle): new paths must be filed.
    pub fn has_classes(&self) -> bool {
        self.index.as_ref().is_some_and(|index| index.has_classes())
    }

    /// Registers `session` with subscription `set`; returns its class, made with one pass
    /// over the room if no session had this subscription lately.
    pub fn join(&mut self, session: SessionId, set: Arc<PatternSet>, room: &Room) -> ClassId {
        self.index
            .get_or_insert_with(Box::default)
            .join(session, set, room)
    }

    /// Unregisters `session` from class `id`.
    pub fn leave(&mut self, session: SessionId, id: ClassId) {
        if let Some(index) = &mut self.index {
            index.leave(session, id);
        }
    }

    /// A class by number.
    pub fn class(&self, id: ClassId) -> Option<&Class> {
        self.index.as_deref()?.class(id)
    }

    /// What a session of class `id` reconciles.
    pub fn scope(&mut self, id: ClassId, room: &Room) -> Option<Scope<'_>> {
        self.index.as_deref_mut()?.scope(id, room)
    }

    /// The sketch structures of class `id`.
    pub fn recon_mut(&mut self, id: ClassId, room: &Room) -> Option<&mut ClassRecon> {
        self.index.as_deref_mut()?.recon_mut(id, room)
    }

    /// Whether class `id` may reconcile by sketch.
    pub fn allow_recon(&mut self, id: ClassId, room: &Room) -> bool {
        self.index
            .as_deref_mut()
            .is_some_and(|index| index.allow_recon(id, room))
    }

    /// Files a path the room had not seen.
    pub fn new_path(&mut self, path: &Arc<str>) {
        if let Some(index) = &mut self.index {
            index.new_path(path);
        }
    }

    /// Sessions whose subscription matches `path`.
    pub fn sessions_matching(&self, path: &str) -> Vec<SessionId> {
        self.index
            .as_ref()
            .map_or_else(Vec::new, |index| index.sessions_matching(path))
    }
}

impl Index {
    /// Whether no session subscribes to anything (every session receives everything).
    pub fn is_empty(&self) -> bool {
        self.classes.len() == self.idle.len()
    }

    /// Whether any class is kept (with sessions or idle): new paths must be filed.
    pub fn has_classes(&self) -> bool {
        !self.classes.is_empty()
    }

    /// Registers `session` with subscription `set`; returns its class, made with one pass
    /// over the room if no session had this subscription lately.
    pub fn join(&mut self, session: SessionId, set: Arc<PatternSet>, room: &Room) -> ClassId {
        let key: ClassKey = set.canonical().into();
        let id = match self.ids.get(&key) {
            Some(id) => *id,
            None => {
                let id = ClassId(self.next_class);
                self.next_class += 1;
                self.ids.insert(key.clone(), id);
                id
            }
        };
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
            entry.classes.insert(id);
        }
        if !self.classes.contains_key(&id) {
            let class = self.build_class(key, set);
            self.classes.insert(id, class);
        }
        if let Some(class) = self.classes.get_mut(&id) {
            if class.sessions == 0 {
                self.idle.retain(|idle| *idle != id);
            }
            class.sessions += 1;
        }
        id
    }

    /// The class of `set`: the union of its patterns' paths.
    fn build_class(&self, key: ClassKey, set: Arc<PatternSet>) -> Class {
        let mut paths: Vec<Arc<str>> = set
            .patterns()
            .iter()
            .filter_map(|p| self.patterns.get(p.as_str()))
            .flat_map(|entry| entry.paths.iter().cloned())
            .collect();
        paths.sort_unstable_by(|a, b| a.as_ref().cmp(b.as_ref()));
        paths.dedup_by(|a, b| Arc::ptr_eq(a, b));
        Class {
            key,
            set,
            paths,
            sessions: 0,
        }
    }

    /// Unregisters `session` from class `id`. A class without sessions stays, idle, until
    /// [`MAX_IDLE_CLASSES`] newer ones push it out.
    pub fn leave(&mut self, session: SessionId, id: ClassId) {
        let Some(class) = self.classes.get_mut(&id) else {
            return;
        };
        class.sessions = class.sessions.saturating_sub(1);
        let idle = class.sessions == 0;
        let set = class.set.clone();
        for pattern in set.patterns() {
            if let Some(entry) = self.patterns.get_mut(pattern.as_str()) {
                entry.sessions.remove(&session);
            }
        }
        if idle {
            self.idle.push_back(id);
            while self.idle.len() > MAX_IDLE_CLASSES {
                self.evict_oldest_idle();
            }
        }
    }

    /// Forgets the least recently used idle class, and the patterns only it used.
    fn evict_oldest_idle(&mut self) {
        let Some(id) = self.idle.pop_front() else {
            return;
        };
        self.recons.remove(&id);
        let Some(class) = self.classes.remove(&id) else {
            return;
        };
        self.ids.remove(&class.key);
        for pattern in class.set.patterns() {
            let canonical = pattern.as_str();
            let Some(entry) = self.patterns.get_mut(canonical) else {
                continue;
            };
            entry.classes.remove(&id);
            if entry.sessions.is_empty() && entry.classes.is_empty() {
                self.patterns.remove(canonical);
                remove_trie(&mut self.trie, pattern);
            }
        }
    }

    /// A class by number.
    pub fn class(&self, id: ClassId) -> Option<&Class> {
        self.classes.get(&id)
    }

    /// What sessions of class `id` reconcile against: its sketch structures, built (one pass
    /// over the matching nodes) or topped up to the room's latest node. `None` for an unknown
    /// class.
    pub fn scope(&mut self, id: ClassId, room: &Room) -> Option<Scope<'_>> {
        let (class, recon) = self.current(id, room)?;
        Some(Scope::class(
            &recon.sets,
            recon.digest,
            recon.through,
            class,
        ))
    }

    /// The sketch structures of class `id`, topped up: for roots and bucket summaries.
    pub fn recon_mut(&mut self, id: ClassId, room: &Room) -> Option<&mut ClassRecon> {
        self.current(id, room).map(|(_, recon)| recon)
    }

    fn current(&mut self, id: ClassId, room: &Room) -> Option<(&Class, &mut ClassRecon)> {
        let class = self.classes.get(&id)?;
        let recon = self
            .recons
            .entry(id)
            .or_insert_with(|| ClassRecon::new(room));
        recon.top_up(class, room);
        Some((class, recon))
    }

    /// Whether class `id` may have sketch structures: they exist already, or building them
    /// keeps all classes' structures within [`CLASS_RECON_FACTOR`] times the room's nodes
    /// (idle classes' structures are dropped, oldest first, to make room). O(classes +
    /// matching paths).
    pub fn allow_recon(&mut self, id: ClassId, room: &Room) -> bool {
        if self.recons.contains_key(&id) {
            return true;
        }
        let Some(needed) = self.classes.get(&id).map(|c| c.node_count(room)) else {
            return false;
        };
        let budget = room
            .seq()
            .saturating_mul(CLASS_RECON_FACTOR)
            .max(self.recon_floor);
        loop {
            let held: u64 = self.recons.values().map(ClassRecon::len).sum();
            if held.saturating_add(needed) <= budget {
                return true;
            }
            // Never the class asked about: it has a session, so it is not idle.
            let oldest_with_recon = self
                .idle
                .iter()
                .find(|idle| self.recons.contains_key(*idle));
            match oldest_with_recon.copied() {
                Some(idle) => self.recons.remove(&idle),
                None => return false,
            };
        }
    }

    /// A node brought a path the room had not seen: files it under the classes it matches.
    /// Costs the matching patterns plus the classes that hold them (a pattern every
    /// subscription shares, like `**/README`, files a new README under every class).
    pub fn new_path(&mut self, path: &Arc<str>) {
        let mut classes: Vec<ClassId> = Vec::new();
        let mut patterns: Vec<Box<str>> = Vec::new();
        self.for_each_match(path, |entry| {
            classes.extend(entry.classes.iter().copied());
            patterns.push(entry.pattern.as_str().into());
        });
        for canonical in patterns {
            if let Some(entry) = self.patterns.get_mut(&canonical) {
                entry.paths.push(path.clone());
            }
        }
        classes.sort_unstable();
        classes.dedup();
        for id in classes {
            if let Some(class) = self.classes.get_mut(&id) {
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
