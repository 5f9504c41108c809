//! History nodes: the immutable, content-addressed unit every room stores and relays.
//!
//! A node's id is `blake3` over a domain-separated canonical encoding of the room id, its
//! header and its payload (protocol/README.md §3). Because the room id is hashed in, a node
//! cannot be replayed into another room: the receiving side recomputes the id with its own room
//! and the claimed id no longer matches.
//!
//! Validation is split in two. [`Node::check`] covers everything a node says about itself (id,
//! limits, path syntax, parent order); the depth rule and parent presence need the room's
//! state and live in [`crate::room`].

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Domain separator hashed in front of every node's canonical encoding.
const NODE_DOMAIN: &[u8] = b"weft/node/v1\0";

/// Declares a 32-byte newtype that travels as a MessagePack `bin 8` of exactly 32 bytes and
/// prints as 64 lowercase hex characters.
macro_rules! bytes32 {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Lowercase hex, 64 characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Eight hex digits are enough to tell ids apart in logs and test failures.
                let [a, b, c, d, ..] = self.0;
                write!(f, "{}({a:02x}{b:02x}{c:02x}{d:02x})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = ParseHexError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|_| ParseHexError { what: $what })?;
                Ok(Self(out))
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_bytes(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_bytes(Bytes32Visitor($what)).map(Self)
            }
        }
    };
}

/// Accepts a byte string of exactly 32 bytes and nothing else (no arrays of integers).
struct Bytes32Visitor(&'static str);

impl serde::de::Visitor<'_> for Bytes32Visitor {
    type Value = [u8; 32];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} as 32 bytes", self.0)
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        <[u8; 32]>::try_from(v).map_err(|_| E::invalid_length(v.len(), &self))
    }
}

/// A string that should have been 64 hex characters was not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be 64 hex characters")]
pub struct ParseHexError {
    what: &'static str,
}

bytes32!(
    /// The id of a history node: `blake3` of its canonical encoding.
    NodeId,
    "node id"
);

impl NodeId {
    /// Bytes 0..8 and 8..16 as little-endian words: the uniform bits that short ids, sketch
    /// cells and the difference estimator are mixed from.
    pub fn leading_words(&self) -> (u64, u64) {
        let [
            a0,
            a1,
            a2,
            a3,
            a4,
            a5,
            a6,
            a7,
            b0,
            b1,
            b2,
            b3,
            b4,
            b5,
            b6,
            b7,
            ..,
        ] = self.0;
        (
            u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7]),
        )
    }
}
bytes32!(
    /// The `blake3` hash of a blob's bytes.
    BlobHash,
    "blob hash"
);
bytes32!(
    /// The sum of a set's ids modulo 2^256, as kept by [`crate::recon::SetDigest`].
    DigestSum,
    "digest sum"
);
bytes32!(
    /// The root hash of a set's prefix tree (protocol/README.md §5.8): a collision-resistant
    /// digest of the set, used to verify sketch reconciliation.
    TreeHash,
    "tree hash"
);
bytes32!(
    /// An author's public key. The relay carries it; checking signatures is a later capability.
    AuthorKey,
    "author key"
);

/// A reference from a node to a blob that travels on the blob channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// Content hash of the blob.
    pub hash: BlobHash,
    /// Size of the blob in bytes.
    pub size: u64,
}

/// A room's name, as it appears in `/v1/rooms/{room}`.
///
/// Invariant: 1 to [`RoomId::MAX_LEN`] bytes of `A-Z a-z 0-9 . _ ~ -`, so it is safe in URLs,
/// object-store keys and file names without escaping.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoomId(String);

impl RoomId {
    /// Longest accepted room id, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Validates and wraps a room id.
    pub fn new(id: &str) -> Result<Self, BadRoomId> {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-');
        if id.is_empty() || id.len() > Self::MAX_LEN || !id.chars().all(valid_char) {
            return Err(BadRoomId);
        }
        Ok(Self(id.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RoomId {
    type Err = BadRoomId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoomId({})", self.0)
    }
}

/// A room id was empty, too long, or used a character outside `A-Z a-z 0-9 . _ ~ -`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("room id must be 1-128 characters of A-Z a-z 0-9 . _ ~ -")]
pub struct BadRoomId;

/// Size limits a node must respect. The relay announces its values in `welcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLimits {
    /// Largest payload, in bytes.
    pub max_payload: u32,
    /// Most parents one node may name.
    pub max_parents: u16,
    /// Longest path, in bytes.
    pub max_path_len: u16,
    /// Most `/`-separated segments in a path.
    pub max_path_segments: u16,
    /// Most blob references one node may carry.
    pub max_blobs: u16,
}

impl Default for NodeLimits {
    fn default() -> Self {
        Self {
            max_payload: 256 * 1024,
            max_parents: 64,
            max_path_len: 512,
            max_path_segments: 32,
            max_blobs: 32,
        }
    }
}

/// Why a node was refused. Each reason has a stable wire code (protocol/README.md §7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[repr(u16)]
pub enum Rejection {
    /// The claimed id is not the hash of the node's content in this room.
    #[error("id does not match the node's content in this room")]
    HashMismatch = 1,
    /// The payload is larger than `max_payload`.
    #[error("payload is larger than the relay's max_payload limit (announced in welcome)")]
    PayloadTooLarge = 2,
    /// More parents than `max_parents`.
    #[error("too many parents")]
    TooManyParents = 3,
    /// Parents are not strictly ascending (unsorted or repeated).
    #[error("parents must be sorted ascending without repeats")]
    ParentsNotSorted = 4,
    /// The path is empty, too long, has empty, `.` or `..` segments, or control characters.
    #[error("path is not a valid `/`-separated path")]
    BadPath = 5,
    /// More blob references than `max_blobs`.
    #[error("too many blob references")]
    TooManyBlobs = 6,
    /// `depth` is not 0 for a root, or 1 + the largest parent depth otherwise.
    #[error("depth must be 0 for a root and 1 + the largest parent depth otherwise")]
    DepthMismatch = 7,
    /// The node waited in the orphan buffer for its parents longer than allowed.
    #[error("parents did not arrive before the orphan buffer expired the node")]
    OrphanExpired = 8,
    /// The orphan buffer is full; the node was not kept.
    #[error("orphan buffer is full")]
    OrphanBufferFull = 9,
}

impl Rejection {
    /// Every reason, in code order.
    pub const ALL: [Rejection; 9] = [
        Self::HashMismatch,
        Self::PayloadTooLarge,
        Self::TooManyParents,
        Self::ParentsNotSorted,
        Self::BadPath,
        Self::TooManyBlobs,
        Self::DepthMismatch,
        Self::OrphanExpired,
        Self::OrphanBufferFull,
    ];

    /// The wire code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Whether the refusal is about the relay's orphan buffer, not the node: the node may be
    /// admitted when pushed again once its parents are in the room.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::OrphanExpired | Self::OrphanBufferFull)
    }

    /// The reason for a wire code, if it is one this version knows.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

/// An immutable history node as it travels on the wire and sits in a room.
///
/// Encoded as a MessagePack array `[id, parents, depth, author, path, blobs, payload]`; the room
/// is implied by the session, yet covered by `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Claimed id; [`Node::check`] verifies it against the content.
    pub id: NodeId,
    /// Parent ids, strictly ascending.
    pub parents: Vec<NodeId>,
    /// 0 for a root, else 1 + the largest parent depth.
    pub depth: u64,
    /// Optional author key.
    pub author: Option<AuthorKey>,
    /// One `/`-separated path, used by subscriptions and write scopes.
    pub path: String,
    /// Blobs this node refers to.
    pub blobs: Vec<BlobRef>,
    /// Opaque application bytes; the relay never interprets them.
    pub payload: Bytes,
}

impl Node {
    /// Builds a node in `room` and computes its id. Parents are sorted and deduplicated here so
    /// callers cannot produce a non-canonical node by accident.
    pub fn new(
        room: &RoomId,
        mut parents: Vec<NodeId>,
        depth: u64,
        author: Option<AuthorKey>,
        path: impl Into<String>,
        blobs: Vec<BlobRef>,
        payload: impl Into<Bytes>,
    ) -> Self {
        parents.sort_unstable();
        parents.dedup();
        let mut node = Self {
            id: NodeId::default(),
            parents,
            depth,
            author,
            path: path.into(),
            blobs,
            payload: payload.into(),
        };
        node.id = node.content_id(room);
        node
    }

    /// A node on top of `parents` with the depth the rule demands, no author and no blobs: what
    /// an application usually writes. `None` if a parent sits at the largest possible depth.
    pub fn child_of(
        room: &RoomId,
        parents: &[&Node],
        path: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> Option<Self> {
        let depth = Self::expected_depth(parents.iter().map(|p| p.depth))?;
        let ids = parents.iter().map(|p| p.id).collect();
        Some(Self::new(room, ids, depth, None, path, Vec::new(), payload))
    }

    /// Decodes a node's wire encoding read back on its own (a stored record), if it decodes
    /// and its id matches its content in `room`.
    pub fn decode_checked(encoding: &[u8], room: &RoomId) -> Option<Self> {
        let node: Node = rmp_serde::from_slice(encoding).ok()?;
        (node.content_id(room) == node.id).then_some(node)
    }

    /// The id this node's content hashes to in `room` (ignores the claimed `id`).
    pub fn content_id(&self, room: &RoomId) -> NodeId {
        let mut h = Canonical::new();
        h.put(NODE_DOMAIN);
        h.put_len_prefixed(room.as_str().as_bytes());
        h.put(&(self.parents.len() as u64).to_le_bytes());
        for parent in &self.parents {
            h.put(&parent.0);
        }
        h.put(&self.depth.to_le_bytes());
        match &self.author {
            None => h.put(&[0]),
            Some(key) => {
                h.put(&[1]);
                h.put(&key.0);
            }
        }
        h.put_len_prefixed(self.path.as_bytes());
        h.put(&(self.blobs.len() as u64).to_le_bytes());
        for blob in &self.blobs {
            h.put(&blob.hash.0);
            h.put(&blob.size.to_le_bytes());
        }
        h.put_len_prefixed(&self.payload);
        h.finish()
    }

    /// Checks everything the node says about itself: limits, path, parent order and id.
    /// The id is checked last because hashing is the most expensive step.
    pub fn check(&self, room: &RoomId, limits: &NodeLimits) -> Result<(), Rejection> {
        if self.payload.len() > limits.max_payload as usize {
            return Err(Rejection::PayloadTooLarge);
        }
        if self.parents.len() > usize::from(limits.max_parents) {
            return Err(Rejection::TooManyParents);
        }
        if !self
            .parents
            .iter()
            .zip(self.parents.iter().skip(1))
            .all(|(a, b)| a < b)
        {
            return Err(Rejection::ParentsNotSorted);
        }
        if self.blobs.len() > usize::from(limits.max_blobs) {
            return Err(Rejection::TooManyBlobs);
        }
        check_path(&self.path, limits)?;
        if self.content_id(room) != self.id {
            return Err(Rejection::HashMismatch);
        }
        Ok(())
    }

    /// The depth this node must have given its parents' depths (0 for a root).
    /// `None` if a parent depth is `u64::MAX`, which no valid node can follow.
    pub fn expected_depth(parent_depths: impl IntoIterator<Item = u64>) -> Option<u64> {
        match parent_depths.into_iter().max() {
            None => Some(0),
            Some(max) => max.checked_add(1),
        }
    }

    /// An upper bound on this node's MessagePack size, used to keep frames under the limit.
    pub fn wire_size_bound(&self) -> usize {
        // array header, id, parents header, depth, author, path header, blobs header,
        // payload header; then the variable parts.
        let fixed = 1 + 34 + 5 + 9 + 34 + 5 + 5 + 5;
        fixed
            + self.parents.len() * 34
            + self.path.len()
            + self.blobs.len() * 45
            + self.payload.len()
    }

    /// Bytes this node occupies in memory beyond its struct, for budgets.
    pub fn heap_size(&self) -> usize {
        self.parents.len() * 32 + self.path.len() + self.blobs.len() * 40 + self.payload.len()
    }
}

/// The canonical encoding (protocol/README.md §3.1) on its way into blake3, gathered into a
/// stack buffer first: every `Hasher::update` has a fixed cost, which the dozen small fields
/// of a node would otherwise each pay (a quarter of the hashing time for a 100-byte payload).
struct Canonical {
    hasher: blake3::Hasher,
    buf: [u8; 512],
    len: usize,
}

impl Canonical {
    fn new() -> Self {
        Self {
            hasher: blake3::Hasher::new(),
            buf: [0; 512],
            len: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        let end = self.len.saturating_add(bytes.len());
        if let Some(free) = self.buf.get_mut(self.len..end) {
            free.copy_from_slice(bytes);
            self.len = end;
            return;
        }
        self.flush();
        match self.buf.get_mut(..bytes.len()) {
            Some(free) => {
                free.copy_from_slice(bytes);
                self.len = bytes.len();
            }
            None => {
                self.hasher.update(bytes);
            }
        }
    }

    fn put_len_prefixed(&mut self, bytes: &[u8]) {
        self.put(&(bytes.len() as u64).to_le_bytes());
        self.put(bytes);
    }

    fn flush(&mut self) {
        self.hasher
            .update(self.buf.get(..self.len).unwrap_or_default());
        self.len = 0;
    }

    fn finish(mut self) -> NodeId {
        self.flush();
        NodeId(*self.hasher.finalize().as_bytes())
    }
}

/// Checks path syntax (protocol/README.md §3.2): 1..=`max_path_len` bytes, 1..=`max_path_segments`
/// non-empty segments separated by `/`, no `.` or `..` segments, no control characters.
pub fn check_path(path: &str, limits: &NodeLimits) -> Result<(), Rejection> {
    path_problem(path, limits).map_err(|_| Rejection::BadPath)
}

/// Which rule of §3.2 a path breaks, for messages; [`check_path`] is the same check as a
/// wire [`Rejection`].
pub fn path_problem(path: &str, limits: &NodeLimits) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > usize::from(limits.max_path_len) {
        return Err(PathError::TooLong {
            len: path.len(),
            max: limits.max_path_len,
        });
    }
    if path.starts_with('/') {
        return Err(PathError::LeadingSlash);
    }
    if path.ends_with('/') {
        return Err(PathError::TrailingSlash);
    }
    let mut segments = 0usize;
    for segment in path.split('/') {
        segments += 1;
        if segments > usize::from(limits.max_path_segments) {
            return Err(PathError::TooManySegments {
                max: limits.max_path_segments,
            });
        }
        if segment.is_empty() {
            return Err(PathError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(PathError::DotSegment);
        }
        if segment.chars().any(char::is_control) {
            return Err(PathError::ControlCharacter);
        }
    }
    Ok(())
}

/// The rule of §3.2 a path breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is the empty string.
    #[error("the path is empty")]
    Empty,
    /// The path is longer than `max_path_len`.
    #[error("the path is {len} bytes; at most {max} are allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: u16,
    },
    /// The path starts with `/`; paths are relative (`a/b`).
    #[error("it starts with `/`; paths are written without one, like `a/b`")]
    LeadingSlash,
    /// The path ends with `/`.
    #[error("it ends with `/`")]
    TrailingSlash,
    /// Two `/` in a row make an empty segment.
    #[error("it has an empty segment (`//`)")]
    EmptySegment,
    /// A segment is `.` or `..`.
    #[error("it has a `.` or `..` segment")]
    DotSegment,
    /// A segment holds a control character.
    #[error("it contains a control character")]
    ControlCharacter,
    /// More segments than `max_path_segments`.
    #[error("it has more than {max} segments")]
    TooManySegments {
        /// The limit.
        max: u16,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> RoomId {
        RoomId::new("demo").unwrap()
    }

    fn root(path: &str, payload: &[u8]) -> Node {
        Node::new(&room(), vec![], 0, None, path, vec![], payload.to_vec())
    }

    /// The canonical encoding of §3.1 written out in one buffer, hashed in one call.
    fn reference_id(node: &Node, room: &RoomId) -> NodeId {
        let mut enc = NODE_DOMAIN.to_vec();
        let len = |n: usize| (n as u64).to_le_bytes();
        enc.extend(len(room.as_str().len()));
        enc.extend(room.as_str().as_bytes());
        enc.extend(len(node.parents.len()));
        node.parents.iter().for_each(|p| enc.extend(p.0));
        enc.extend(node.depth.to_le_bytes());
        match node.author {
            None => enc.push(0),
            Some(key) => {
                enc.push(1);
                enc.extend(key.0);
            }
        }
        enc.extend(len(node.path.len()));
        enc.extend(node.path.as_bytes());
        enc.extend(len(node.blobs.len()));
        for blob in &node.blobs {
            enc.extend(blob.hash.0);
            enc.extend(blob.size.to_le_bytes());
        }
        enc.extend(len(node.payload.len()));
        enc.extend_from_slice(&node.payload);
        NodeId(*blake3::hash(&enc).as_bytes())
    }

    #[test]
    fn the_id_is_the_same_wherever_the_buffer_fills() {
        // Payloads and parent lists around the size of the hashing buffer, so that fields
        // straddle, fill and overflow it.
        let parents: Vec<NodeId> = (0..64u8).map(|i| NodeId([i; 32])).collect();
        let blobs = vec![BlobRef {
            hash: BlobHash([9; 32]),
            size: 7,
        }];
        for payload in [0, 1, 100, 300, 420, 440, 450, 511, 512, 513, 1024, 5000] {
            for (parents, blobs, author) in [
                (vec![], vec![], None),
                (parents[..1].to_vec(), vec![], Some(AuthorKey([3; 32]))),
                (parents.clone(), blobs.clone(), None),
            ] {
                let node = Node::new(
                    &room(),
                    parents,
                    1,
                    author,
                    "a/b",
                    blobs,
                    vec![b'x'; payload],
                );
                assert_eq!(node.id, reference_id(&node, &room()), "payload {payload}");
            }
        }
    }

    #[test]
    fn id_covers_the_room() {
        let node = root("a/b", b"x");
        assert_eq!(node.check(&room(), &NodeLimits::default()), Ok(()));
        let other = RoomId::new("other").unwrap();
        assert_eq!(
            node.check(&other, &NodeLimits::default()),
            Err(Rejection::HashMismatch)
        );
    }

    #[test]
    fn every_field_changes_the_id() {
        let base = root("a", b"x");
        let variants = [
            Node::new(&room(), vec![base.id], 1, None, "a", vec![], b"x".to_vec()),
            Node::new(&room(), vec![], 1, None, "a", vec![], b"x".to_vec()),
            Node::new(
                &room(),
                vec![],
                0,
                Some(AuthorKey([7; 32])),
                "a",
                vec![],
                b"x".to_vec(),
            ),
            root("b", b"x"),
            Node::new(
                &room(),
                vec![],
                0,
                None,
                "a",
                vec![BlobRef {
                    hash: BlobHash([1; 32]),
                    size: 3,
                }],
                b"x".to_vec(),
            ),
            root("a", b"y"),
        ];
        for v in variants {
            assert_ne!(v.id, base.id);
        }
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        // Moving bytes between path and payload must change the id (length prefixes).
        assert_ne!(root("ab", b"c").id, root("a", b"bc").id);
    }

    #[test]
    fn tampered_payload_is_a_hash_mismatch() {
        let mut node = root("a", b"x");
        node.payload = Bytes::from_static(b"y");
        assert_eq!(
            node.check(&room(), &NodeLimits::default()),
            Err(Rejection::HashMismatch)
        );
    }

    #[test]
    fn limits_and_syntax_are_enforced() {
        let limits = NodeLimits {
            max_payload: 4,
            max_parents: 1,
            max_path_len: 16,
            max_path_segments: 3,
            max_blobs: 0,
        };
        assert_eq!(
            root("a", b"12345").check(&room(), &limits),
            Err(Rejection::PayloadTooLarge)
        );
        // The message names the limit the relay announced.
        assert!(
            Rejection::PayloadTooLarge
                .to_string()
                .contains("max_payload")
        );
        let mut two_parents = root("a", b"");
        two_parents.parents = vec![NodeId([1; 32]), NodeId([2; 32])];
        assert_eq!(
            two_parents.check(&room(), &limits),
            Err(Rejection::TooManyParents)
        );
        let mut unsorted = root("a", b"");
        unsorted.parents = vec![NodeId([2; 32]), NodeId([1; 32])];
        assert_eq!(
            unsorted.check(&room(), &NodeLimits::default()),
            Err(Rejection::ParentsNotSorted)
        );
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/./b",
            "..",
            "a\u{7}",
            "a/b/c/d",
            "aaaaaaaaaaaaaaaaa",
        ] {
            assert_eq!(check_path(bad, &limits), Err(Rejection::BadPath), "{bad:?}");
        }
        for (bad, problem) in [
            ("", PathError::Empty),
            ("/a", PathError::LeadingSlash),
            ("a/", PathError::TrailingSlash),
            ("a//b", PathError::EmptySegment),
            ("a/./b", PathError::DotSegment),
            ("..", PathError::DotSegment),
            ("a\u{7}", PathError::ControlCharacter),
            ("a/b/c/d", PathError::TooManySegments { max: 3 }),
            ("aaaaaaaaaaaaaaaaa", PathError::TooLong { len: 17, max: 16 }),
        ] {
            assert_eq!(path_problem(bad, &limits), Err(problem), "{bad:?}");
        }
        for good in ["a", "a/b/c", "x.y/z-1", "ü/ß"] {
            assert_eq!(check_path(good, &limits), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn depth_rule() {
        assert_eq!(Node::expected_depth([]), Some(0));
        assert_eq!(Node::expected_depth([3, 7, 1]), Some(8));
        assert_eq!(Node::expected_depth([u64::MAX]), None);
    }

    #[test]
    fn room_ids() {
        assert!(RoomId::new("team-42_notes.v2~x").is_ok());
        for bad in ["", "a/b", "a b", "é", &"x".repeat(129)] {
            assert_eq!(RoomId::new(bad), Err(BadRoomId), "{bad:?}");
        }
    }

    #[test]
    fn hex_round_trip() {
        let id = root("a", b"x").id;
        assert_eq!(id.to_hex().parse::<NodeId>(), Ok(id));
        assert!("zz".parse::<NodeId>().is_err());
    }

    #[test]
    fn rejection_codes_round_trip() {
        for r in Rejection::ALL {
            assert_eq!(Rejection::from_code(r.code()), Some(r));
        }
        assert_eq!(Rejection::from_code(0), None);
    }
}
