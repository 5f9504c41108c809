//! A fast path for the bodies that carry nodes to clients: `batch` and `broadcast`
//! (protocol/README.md §6, §7.3).
//!
//! A catch-up is almost all `batch` frames, and decoding them through serde costs an
//! allocation and a copy per payload plus the generic visitor machinery for every field. This
//! reader walks the common encoding directly (the canonical one [`super::encode_node`] writes,
//! read with the same cursor as stored records) and copies every payload of the frame into
//! one shared buffer, so a node's payload, and every clone of it, is a slice of that buffer.
//!
//! It never decides what is invalid. Anything it does not recognise — another marker width for
//! a field serde would also accept, a malformed value, trailing bytes — makes it return `None`,
//! and the frame goes through the strict serde decoder, which accepts or rejects it and names
//! the field. So whatever this path accepts, the serde path accepts too, with an equal value;
//! the property test below checks that on valid and on corrupted frames.

use bytes::{Bytes, BytesMut};

use super::canonical::Canonical;
use super::{Batch, Broadcast, Message, MessageType};
use crate::node::Node;

/// Smallest possible node encoding: array header, id, empty parents, depth, nil author, empty
/// path, empty blobs, empty payload. Bounds what an untrusted element count may reserve.
const MIN_NODE_LEN: usize = 1 + 34 + 1 + 1 + 1 + 1 + 1 + 2;

/// The body of a `batch` or `broadcast` frame, if it is in the common encoding; `None` for
/// every other type and for anything this reader does not recognise.
pub(super) fn decode_body(ty: MessageType, body: &[u8]) -> Option<Message> {
    if !matches!(ty, MessageType::Batch | MessageType::Broadcast) {
        return None;
    }
    let mut reader = Canonical::new(body);
    if reader.array_len()? != 2 {
        return None;
    }
    let head = reader.uint()?;
    let count = reader.array_len()?;
    let mut nodes = Vec::with_capacity(count.min(reader.left() / MIN_NODE_LEN));
    let mut payloads = Vec::with_capacity(nodes.capacity());
    for _ in 0..count {
        let (node, payload) = reader.node()?;
        nodes.push(node);
        payloads.push(body.get(payload)?);
    }
    if reader.left() != 0 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{AuthorKey, BlobHash, BlobRef, NodeId, RoomId};
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
