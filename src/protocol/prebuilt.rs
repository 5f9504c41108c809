//! Frames assembled from nodes encoded once.
//!
//! The relay encodes each node when it is admitted and keeps the bytes. `batch` and `broadcast`
//! frames are then the envelope and a few headers followed by those bytes, exactly what
//! [`Message::encode`](super::Message::encode) would produce, without re-encoding anything.

use std::convert::Infallible;

use bytes::{BufMut, Bytes, BytesMut};
use rmp::encode::{ByteBuf, ValueWriteError};

use super::MessageType;
use super::canonical::Canonical;
use crate::node::Node;

/// Writing MessagePack into a `ByteBuf` cannot fail; the error type is uninhabited.
fn infallible<T>(result: Result<T, ValueWriteError<Infallible>>) -> T {
    match result {
        Ok(value) => value,
        Err(
            ValueWriteError::InvalidMarkerWrite(never) | ValueWriteError::InvalidDataWrite(never),
        ) => match never {},
    }
}

/// A node's wire encoding (protocol/README.md §10.4), byte-identical to the serde encoding.
pub fn encode_node(node: &Node) -> Bytes {
    let mut out = ByteBuf::with_capacity(node.wire_size_bound());
    let buf = &mut out;
    infallible(rmp::encode::write_array_len(buf, 7));
    infallible(rmp::encode::write_bin(buf, node.id.as_bytes()));
    infallible(rmp::encode::write_array_len(buf, len32(node.parents.len())));
    for parent in &node.parents {
        infallible(rmp::encode::write_bin(buf, parent.as_bytes()));
    }
    infallible(rmp::encode::write_uint(buf, node.depth));
    match &node.author {
        None => {
            infallible(rmp::encode::write_nil(buf).map_err(ValueWriteError::InvalidMarkerWrite))
        }
        Some(key) => infallible(rmp::encode::write_bin(buf, key.as_bytes())),
    }
    infallible(rmp::encode::write_str(buf, &node.path));
    infallible(rmp::encode::write_array_len(buf, len32(node.blobs.len())));
    for blob in &node.blobs {
        infallible(rmp::encode::write_array_len(buf, 2));
        infallible(rmp::encode::write_bin(buf, blob.hash.as_bytes()));
        infallible(rmp::encode::write_uint(buf, blob.size));
    }
    infallible(rmp::encode::write_bin(buf, &node.payload));
    Bytes::from(out.into_vec())
}

/// The node whose canonical wire encoding (§10.8: what [`encode_node`] writes) is exactly
/// `record`, its payload a slice of `record` (no copy); `None` for any other bytes, including
/// another encoding of a valid node that the lenient serde decoder would accept (§10.9: a
/// non-shortest integer or header, `bin` for `str`, …). A stored record that passes can be
/// served as it is, without encoding the node again.
pub fn decode_canonical_node(record: &Bytes) -> Option<Node> {
    let mut input = Canonical::new(record);
    let (mut node, payload) = input.node()?;
    if input.left() != 0 {
        return None;
    }
    node.payload = record.slice(payload);
    Some(node)
}

/// Lengths of validated nodes are far below `u32::MAX`; saturate rather than wrap if not.
fn len32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// `[type, [head, [nodes…]]]` from pre-encoded nodes.
fn frame_of(ty: MessageType, head: u64, nodes: &[&Bytes]) -> Bytes {
    let body: usize = nodes.iter().map(|n| n.len()).sum();
    let mut header = ByteBuf::with_capacity(20);
    infallible(rmp::encode::write_array_len(&mut header, 2));
    infallible(rmp::encode::write_uint(&mut header, u64::from(ty.code())));
    infallible(rmp::encode::write_array_len(&mut header, 2));
    infallible(rmp::encode::write_uint(&mut header, head));
    infallible(rmp::encode::write_array_len(
        &mut header,
        len32(nodes.len()),
    ));
    let header = header.into_vec();
    let mut out = BytesMut::with_capacity(header.len().saturating_add(body));
    out.put_slice(&header);
    for node in nodes {
        out.put_slice(node);
    }
    out.freeze()
}

/// A `batch` frame: `through` and the nodes, already encoded.
pub fn batch_frame(through: u64, nodes: &[&Bytes]) -> Bytes {
    frame_of(MessageType::Batch, through, nodes)
}

/// A `broadcast` frame: `first_seq` and the nodes, already encoded.
pub fn broadcast_frame(first_seq: u64, nodes: &[&Bytes]) -> Bytes {
    frame_of(MessageType::Broadcast, first_seq, nodes)
}

/// Bytes a `batch` frame adds around its nodes, at most.
pub const BATCH_OVERHEAD: usize = 3 + 9 + 5;

/// A `broadcast` frame in the form [`broadcast_frame`] builds, split into its run of arrival
/// numbers and its nodes' bytes, so that runs which follow one another can be joined into one
/// frame without decoding a node ([`join_broadcasts`]).
#[derive(Clone, Debug)]
pub struct BroadcastRun {
    frame: Bytes,
    first_seq: u64,
    count: u64,
    /// Where the first node's encoding starts in `frame`.
    nodes_at: usize,
}

impl BroadcastRun {
    /// The run `frame` carries, if it is a `broadcast` with its headers in the shortest form;
    /// `None` for any other frame. The nodes are not looked at: this is for frames the relay
    /// built itself.
    pub fn parse(frame: &Bytes) -> Option<Self> {
        // Every v1 frame starts `0x92 type`: other types are told apart without a cursor.
        if *frame.get(..2)? != [0x92, MessageType::Broadcast.code()] {
            return None;
        }
        let mut reader = Canonical::new(frame.get(2..)?);
        if reader.array_len()? != 2 {
            return None;
        }
        let first_seq = reader.uint()?;
        let count = u64::try_from(reader.array_len()?).ok()?;
        let nodes_at = frame.len().checked_sub(reader.left())?;
        Some(Self {
            frame: frame.clone(),
            first_seq,
            count,
            nodes_at,
        })
    }

    /// The arrival number of the first node.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The arrival number a run that follows this one starts at.
    pub fn next_seq(&self) -> Option<u64> {
        self.first_seq.checked_add(self.count)
    }

    /// Whether `next` starts where this run ends, so the two can travel as one frame.
    pub fn is_followed_by(&self, next: &Self) -> bool {
        self.next_seq() == Some(next.first_seq)
    }

    /// Bytes of the nodes' encodings.
    pub fn nodes_len(&self) -> usize {
        self.frame.len().saturating_sub(self.nodes_at)
    }

    /// The frame, as it was parsed.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    fn nodes(&self) -> &[u8] {
        self.frame.get(self.nodes_at..).unwrap_or_default()
    }
}

/// One `broadcast` frame of every node of `runs`, in order, numbered from the first run's
/// `first_seq`: what [`broadcast_frame`] makes of all their nodes. Each run must start where
/// the previous ends ([`BroadcastRun::is_followed_by`]): a `broadcast` carries consecutive
/// arrival numbers only (protocol/README.md §7.3). A single run comes back as the very frame it
/// was parsed from (no copy), so a frame shared by many receivers stays shared. `None` if
/// `runs` is empty.
pub fn join_broadcasts(runs: &[BroadcastRun]) -> Option<Bytes> {
    let (first, rest) = runs.split_first()?;
    if rest.is_empty() {
        return Some(first.frame.clone());
    }
    let count = runs.iter().map(|r| r.count).fold(0u64, u64::saturating_add);
    let body = runs
        .iter()
        .map(BroadcastRun::nodes_len)
        .fold(0usize, usize::saturating_add);
    let mut out = BytesMut::with_capacity(BATCH_OVERHEAD.saturating_add(body));
    let mut header = ByteBuf::with_capacity(BATCH_OVERHEAD);
    infallible(rmp::encode::write_array_len(&mut header, 2));
    infallible(rmp::encode::write_uint(
        &mut header,
        u64::from(MessageType::Broadcast.code()),
    ));
    infallible(rmp::encode::write_array_len(&mut header, 2));
    infallible(rmp::encode::write_uint(&mut header, first.first_seq));
    infallible(rmp::encode::write_array_len(
        &mut header,
        u32::try_from(count).unwrap_or(u32::MAX),
    ));
    out.put_slice(&header.into_vec());
    for run in runs {
        out.put_slice(run.nodes());
    }
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{AuthorKey, BlobHash, BlobRef, NodeId, RoomId};
    use crate::protocol::{Batch, Broadcast, Message};
    use proptest::prelude::*;

    fn arb_node() -> impl Strategy<Value = Node> {
        (
            proptest::collection::vec(any::<[u8; 32]>(), 0..20),
            any::<u64>(),
            proptest::option::of(any::<[u8; 32]>()),
            "[a-z/]{0,300}",
            proptest::collection::vec((any::<[u8; 32]>(), any::<u64>()), 0..3),
            proptest::collection::vec(any::<u8>(), 0..70_000),
        )
            .prop_map(|(parents, depth, author, path, blobs, payload)| {
                let blobs = blobs
                    .into_iter()
                    .map(|(h, size)| BlobRef {
                        hash: BlobHash(h),
                        size,
                    })
                    .collect();
                let parents = parents.into_iter().map(NodeId).collect();
                let room = RoomId::new("p").unwrap_or_else(|_| unreachable!());
                Node::new(
                    &room,
                    parents,
                    depth,
                    author.map(AuthorKey),
                    path,
                    blobs,
                    payload,
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn prebuilt_frames_equal_the_serde_encoding(
            nodes in proptest::collection::vec(arb_node(), 0..6),
            head in any::<u64>(),
        ) {
            for node in &nodes {
                prop_assert_eq!(encode_node(node).to_vec(), rmp_serde::to_vec(node).unwrap());
            }
            let wires: Vec<Bytes> = nodes.iter().map(encode_node).collect();
            let refs: Vec<&Bytes> = wires.iter().collect();
            let batch = Message::Batch(Batch { through: head, nodes: nodes.clone() }).encode().unwrap();
            prop_assert_eq!(batch_frame(head, &refs), batch);
            let broadcast = Message::Broadcast(Broadcast { first_seq: head, nodes }).encode().unwrap();
            prop_assert_eq!(broadcast_frame(head, &refs), broadcast);
        }

        #[test]
        fn joined_runs_equal_one_broadcast_of_all_their_nodes(
            nodes in proptest::collection::vec(arb_node(), 1..8),
            cuts in proptest::collection::vec(any::<bool>(), 8),
            head in 0u64..(1 << 40),
        ) {
            let wires: Vec<Bytes> = nodes.iter().map(encode_node).collect();
            let refs: Vec<&Bytes> = wires.iter().collect();
            // Split the nodes into runs wherever `cuts` says, each its own frame.
            let mut runs = Vec::new();
            let mut start = 0;
            for end in 1..=refs.len() {
                if end == refs.len() || cuts[end] {
                    let frame = broadcast_frame(head + start as u64, &refs[start..end]);
                    runs.push(BroadcastRun::parse(&frame).unwrap());
                    start = end;
                }
            }
            for pair in runs.windows(2) {
                prop_assert!(pair[0].is_followed_by(&pair[1]));
            }
            prop_assert_eq!(join_broadcasts(&runs).unwrap(), broadcast_frame(head, &refs));
        }

        #[test]
        fn the_canonical_decoder_reads_back_every_encoding(
            node in arb_node(),
            depth in prop_oneof![0u64..300, 60_000u64..70_000, any::<u64>()],
        ) {
            let node = Node { depth, ..node };
            let wire = encode_node(&node);
            prop_assert_eq!(decode_canonical_node(&wire), Some(node));
        }
    }

    fn sample(parents: usize, depth: u64, path: &str, payload: usize) -> Node {
        let room = RoomId::new("p").unwrap();
        let parents = (0..parents).map(|i| NodeId([i as u8; 32])).collect();
        Node::new(
            &room,
            parents,
            depth,
            None,
            path,
            Vec::new(),
            vec![7u8; payload],
        )
    }

    /// Each size class boundary of §10.2, in both directions, reads back.
    #[test]
    fn shortest_forms_at_their_boundaries_read_back() {
        for depth in [
            0,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as u64,
            1 << 32,
            u64::MAX,
        ] {
            let node = sample(1, depth, "a", 1);
            assert_eq!(
                decode_canonical_node(&encode_node(&node)),
                Some(node),
                "{depth}"
            );
        }
        for parents in [0, 15, 16] {
            let node = sample(parents, 1, "a", 1);
            assert_eq!(
                decode_canonical_node(&encode_node(&node)),
                Some(node),
                "{parents}"
            );
        }
        for len in [31, 32, 255, 256] {
            let node = sample(0, 0, &"p".repeat(len), 1);
            assert_eq!(
                decode_canonical_node(&encode_node(&node)),
                Some(node),
                "{len}"
            );
        }
        for len in [0, 255, 256, 65_535, 65_536] {
            let node = sample(0, 0, "a", len);
            assert_eq!(
                decode_canonical_node(&encode_node(&node)),
                Some(node),
                "{len}"
            );
        }
    }

    #[test]
    fn only_broadcast_frames_parse_as_runs_and_one_run_is_not_copied() {
        let node = encode_node(&sample(1, 1, "a", 3));
        let broadcast = broadcast_frame(300, &[&node, &node]);
        let run = BroadcastRun::parse(&broadcast).unwrap();
        assert_eq!((run.first_seq(), run.next_seq()), (300, Some(302)));
        assert_eq!(run.nodes_len(), 2 * node.len());
        let joined = join_broadcasts(std::slice::from_ref(&run)).unwrap();
        assert_eq!(joined.as_ptr(), broadcast.as_ptr(), "shared, not copied");
        assert!(BroadcastRun::parse(&batch_frame(300, &[&node])).is_none());
        let ack = Message::Ack(crate::protocol::Ack {
            number: 1,
            outcomes: Vec::new(),
        });
        assert!(BroadcastRun::parse(&ack.encode().unwrap()).is_none());
        assert!(BroadcastRun::parse(&Bytes::from_static(&[0x92])).is_none());
        assert!(join_broadcasts(&[]).is_none());
        let later = BroadcastRun::parse(&broadcast_frame(303, &[&node])).unwrap();
        assert!(!run.is_followed_by(&later), "a gap is not a run");
    }

    /// Other encodings of the same node that the serde decoder reads (§10.9) are refused.
    #[test]
    fn other_encodings_of_a_node_are_refused() {
        let node = sample(2, 1, "a", 3);
        let wire = encode_node(&node).to_vec();
        // [0x97] id(34) [0x92] parent(34) parent(34) depth(1) nil(1) [0xa1 'a'] [0x90] [0xc4 3 …]
        let at_parents = 1 + 34;
        let at_depth = at_parents + 1 + 68;
        let at_path = at_depth + 2;
        let at_payload = at_path + 2 + 1;
        let splice = |at: usize, len: usize, with: &[u8]| {
            let mut altered = wire[..at].to_vec();
            altered.extend_from_slice(with);
            altered.extend_from_slice(&wire[at + len..]);
            altered
        };
        let variants = [
            ("depth as uint 8", splice(at_depth, 1, &[0xcc, 1])),
            (
                "depth as uint 64",
                splice(at_depth, 1, &[0xcf, 0, 0, 0, 0, 0, 0, 0, 1]),
            ),
            ("parents as array 16", splice(at_parents, 1, &[0xdc, 0, 2])),
            ("path as str 8", splice(at_path, 1, &[0xd9, 1])),
            ("path as bin", splice(at_path, 1, &[0xc4, 1])),
            ("payload as bin 16", splice(at_payload, 2, &[0xc5, 0, 3])),
            ("payload as str", splice(at_payload, 2, &[0xa3])),
            ("a trailing byte", [wire.as_slice(), &[0]].concat()),
        ];
        for (what, altered) in variants {
            let lenient: Node = rmp_serde::from_slice(&altered).unwrap();
            assert_eq!(lenient, node, "{what}: serde reads the same node");
            assert_eq!(decode_canonical_node(&Bytes::from(altered)), None, "{what}");
        }
        // Cut anywhere: refused, never a panic.
        for cut in 0..wire.len() {
            assert_eq!(
                decode_canonical_node(&Bytes::copy_from_slice(&wire[..cut])),
                None
            );
        }
    }
}
