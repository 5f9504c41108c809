//! A fast path for the bodies that carry nodes to clients: `batch` and `broadcast`
//! (protocol/README.md §6, §7.3).
//!
//! A catch-up is almost all `batch` frames, and decoding them through serde costs an
//! allocation and a copy per payload plus the generic visitor machinery for every field. This
//! reader walks the common encoding directly (the one [`super::encode_node`] writes: minimal
//! markers, `bin` ids and payloads, `str` paths) and copies every payload of the frame into
//! one shared buffer, so a node's payload, and every clone of it, is a slice of that buffer.
//!
//! It never decides what is invalid. Anything it does not recognise — another marker width for
//! a field serde would also accept, a malformed value, trailing bytes — makes it return `None`,
//! and the frame goes through the strict serde decoder, which accepts or rejects it and names
//! the field. So whatever this path accepts, the serde path accepts too, with an equal value;
//! the property test below checks that on valid and on corrupted frames.

use bytes::{Bytes, BytesMut};

use super::{Batch, Broadcast, Message, MessageType};
use crate::node::{AuthorKey, BlobHash, BlobRef, Node, NodeId};

/// Smallest possible node encoding: array header, id, empty parents, depth, nil author, empty
/// path, empty blobs, empty payload. Bounds what an untrusted element count may reserve.
const MIN_NODE_LEN: usize = 1 + 34 + 1 + 1 + 1 + 1 + 1 + 2;

/// The body of a `batch` or `broadcast` frame, if it is in the common encoding; `None` for
/// every other type and for anything this reader does not recognise.
pub(super) fn decode_body(ty: MessageType, body: &[u8]) -> Option<Message> {
    if !matches!(ty, MessageType::Batch | MessageType::Broadcast) {
        return None;
    }
    let mut reader = Reader { rest: body };
    if reader.array_len()? != 2 {
        return None;
    }
    let head = reader.uint()?;
    let count = reader.array_len()?;
    let mut nodes = Vec::with_capacity(count.min(reader.rest.len() / MIN_NODE_LEN));
    let mut payloads = Vec::with_capacity(nodes.capacity());
    for _ in 0..count {
        let (node, payload) = reader.node()?;
        nodes.push(node);
        payloads.push(payload);
    }
    if !reader.rest.is_empty() {
        return None;
    }
    share_payloads(&mut nodes, &payloads);
    Some(match ty {
        MessageType::Broadcast => Message::Broadcast(Broadcast {
            first_seq: head,
            nodes,
        }),
        _ => Message::Batch(Batch {
            through: head,
            nodes,
        }),
    })
}

/// Copies the payloads into one buffer and gives each node its slice of it: one allocation
/// per frame instead of one per node, and clones that only count references.
fn share_payloads(nodes: &mut [Node], payloads: &[&[u8]]) {
    let total = payloads
        .iter()
        .map(|p| p.len())
        .fold(0, usize::saturating_add);
    let mut buffer = BytesMut::with_capacity(total);
    for payload in payloads {
        buffer.extend_from_slice(payload);
    }
    let shared: Bytes = buffer.freeze();
    let mut start = 0usize;
    for (node, payload) in nodes.iter_mut().zip(payloads) {
        let end = start.saturating_add(payload.len());
        node.payload = shared.slice(start..end);
        start = end;
    }
}

/// A cursor over MessagePack bytes that reads only the encodings the fast path takes.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.rest.split_at_checked(len)?;
        self.rest = tail;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        let (first, tail) = self.rest.split_first()?;
        self.rest = tail;
        Some(*first)
    }

    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// A big-endian length of `width` bytes.
    fn be(&mut self, width: usize) -> Option<u64> {
        let bytes = self.take(width)?;
        Some(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn len(&mut self, width: usize) -> Option<usize> {
        usize::try_from(self.be(width)?).ok()
    }

    fn array_len(&mut self) -> Option<usize> {
        match self.byte()? {
            m @ 0x90..=0x9f => Some(usize::from(m & 0x0f)),
            0xdc => self.len(2),
            0xdd => self.len(4),
            _ => None,
        }
    }

    /// Unsigned integers only; serde also takes non-negative signed ones, which fall back.
    fn uint(&mut self) -> Option<u64> {
        match self.byte()? {
            m @ 0x00..=0x7f => Some(u64::from(m)),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            _ => None,
        }
    }

    /// `bin`; serde also takes a payload as `str` or as an array of integers, which fall back.
    fn bin(&mut self) -> Option<&'a [u8]> {
        let len = match self.byte()? {
            0xc4 => self.len(1)?,
            0xc5 => self.len(2)?,
            0xc6 => self.len(4)?,
            _ => return None,
        };
        self.take(len)
    }

    fn bytes32(&mut self) -> Option<[u8; 32]> {
        self.bin()?.try_into().ok()
    }

    /// `str` holding UTF-8; serde also takes a path as UTF-8 `bin`, which falls back.
    fn str(&mut self) -> Option<&'a str> {
        let len = match self.byte()? {
            m @ 0xa0..=0xbf => usize::from(m & 0x1f),
            0xd9 => self.len(1)?,
            0xda => self.len(2)?,
            0xdb => self.len(4)?,
            _ => return None,
        };
        std::str::from_utf8(self.take(len)?).ok()
    }

    /// `[id, parents, depth, author, path, blobs, payload]` (§10.4), with the payload's bytes
    /// apart: the node's own payload is left empty until the frame's buffer is built.
    fn node(&mut self) -> Option<(Node, &'a [u8])> {
        if self.array_len()? != 7 {
            return None;
        }
        let id = NodeId(self.bytes32()?);
        let count = self.array_len()?;
        let mut parents = Vec::with_capacity(count.min(self.rest.len() / 34));
        for _ in 0..count {
            parents.push(NodeId(self.bytes32()?));
        }
        let depth = self.uint()?;
        let author = if self.peek()? == 0xc0 {
            self.byte()?;
            None
        } else {
            Some(AuthorKey(self.bytes32()?))
        };
        let path = self.str()?.to_owned();
        let count = self.array_len()?;
        let mut blobs = Vec::with_capacity(count.min(self.rest.len() / 36));
        for _ in 0..count {
            if self.array_len()? != 2 {
                return None;
            }
            let hash = BlobHash(self.bytes32()?);
            let size = self.uint()?;
            blobs.push(BlobRef { hash, size });
        }
        let payload = self.bin()?;
        let node = Node {
            id,
            parents,
            depth,
            author,
            path,
            blobs,
            payload: Bytes::new(),
        };
        Some((node, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::RoomId;
    use crate::protocol::{decode, encode_node};
    use proptest::prelude::*;

    fn arb_node() -> impl Strategy<Value = Node> {
        (
            proptest::collection::vec(any::<[u8; 32]>(), 0..4),
            any::<u64>(),
            proptest::option::of(any::<[u8; 32]>()),
            "[a-zü/]{0,40}",
            proptest::collection::vec((any::<[u8; 32]>(), any::<u64>()), 0..3),
            proptest::collection::vec(any::<u8>(), 0..300),
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
                let room = RoomId::new("p").unwrap();
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

    /// The body after the two-byte envelope of a frame with a fixint type.
    fn body(frame: &[u8]) -> &[u8] {
        &frame[2..]
    }

    /// The serde decoder alone, for comparison.
    fn serde_decode(frame: &[u8]) -> Option<Message> {
        let ty = crate::protocol::peek_type(frame)?;
        let mut rest = body(frame);
        let message = Message::decode_body_plain(ty, &mut rest).ok()?;
        (rest.is_empty() && super::super::only_arrays_and_scalars(body(frame))).then_some(message)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn the_fast_path_accepts_only_what_serde_accepts_with_the_same_value(
            nodes in proptest::collection::vec(arb_node(), 0..5),
            head in any::<u64>(),
            broadcast in any::<bool>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let message = if broadcast {
                Message::Broadcast(Broadcast { first_seq: head, nodes })
            } else {
                Message::Batch(Batch { through: head, nodes })
            };
            let frame = message.encode().unwrap();
            let ty = message.message_type();
            // The valid frame takes the fast path and decodes to the message.
            prop_assert_eq!(decode_body(ty, body(&frame)), Some(message.clone()));
            prop_assert_eq!(decode(&frame).unwrap(), message);
            // A corrupted one: whatever the fast path still accepts, serde accepts as well,
            // with the same value.
            let mut bad = frame.to_vec();
            for (at, value) in flips {
                let at = at.index(bad.len());
                if at >= 2 {
                    bad[at] = value;
                }
            }
            if let Some(cut) = cut {
                bad.truncate(cut.index(bad.len()).max(2));
            }
            if let Some(fast) = decode_body(ty, body(&bad)) {
                prop_assert_eq!(Some(fast), serde_decode(&bad));
            }
        }
    }

    #[test]
    fn payloads_share_one_buffer_per_frame() {
        let room = RoomId::new("p").unwrap();
        let a = Node::new(&room, vec![], 0, None, "a", vec![], b"first".to_vec());
        let b = Node::new(&room, vec![a.id], 1, None, "b", vec![], b"second".to_vec());
        let frame = crate::protocol::batch_frame(2, &[&encode_node(&a), &encode_node(&b)]);
        let Some(Message::Batch(batch)) = decode_body(MessageType::Batch, body(&frame)) else {
            panic!("the fast path takes a prebuilt batch");
        };
        assert_eq!(batch.nodes, vec![a, b]);
        let (first, second) = (&batch.nodes[0].payload, &batch.nodes[1].payload);
        // Adjacent slices of one buffer.
        assert_eq!(first.as_ptr().wrapping_add(first.len()), second.as_ptr());
    }

    #[test]
    fn other_encodings_fall_back_to_serde() {
        let room = RoomId::new("p").unwrap();
        let node = Node::new(&room, vec![], 0, None, "a", vec![], b"x".to_vec());
        let frame = Message::Batch(Batch {
            through: 1,
            nodes: vec![node.clone()],
        })
        .encode()
        .unwrap();
        // The payload `bin8 1 'x'` written as `str 'x'`: serde takes it, the fast path
        // leaves it to serde.
        let mut as_str = frame.to_vec();
        let at = as_str.len() - 3;
        as_str.splice(at.., [0xa1, b'x']);
        assert_eq!(decode_body(MessageType::Batch, body(&as_str)), None);
        assert_eq!(
            decode(&as_str).unwrap(),
            Message::Batch(Batch {
                through: 1,
                nodes: vec![node],
            })
        );
        // Other message types never take it.
        assert_eq!(decode_body(MessageType::Pack, body(&frame)), None);
    }
}
