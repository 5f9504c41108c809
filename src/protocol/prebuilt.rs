//! Frames assembled from nodes encoded once.
//!
//! The relay encodes each node when it is admitted and keeps the bytes. `batch` and `broadcast`
//! frames are then the envelope and a few headers followed by those bytes, exactly what
//! [`Message::encode`](super::Message::encode) would produce, without re-encoding anything.

use std::convert::Infallible;

use bytes::{BufMut, Bytes, BytesMut};
use rmp::encode::{ByteBuf, ValueWriteError};

use super::MessageType;
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
    }
}
