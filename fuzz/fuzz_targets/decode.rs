//! Any bytes into the frame decoder (protocol/README.md §10).
//!
//! Invariants: decoding never panics; `peek_type` names the type exactly when the envelope is
//! readable; whatever decodes re-encodes to a frame that decodes to the same value and is
//! canonical (encoding it again gives the same bytes); every error maps to an `error` frame that
//! itself round-trips.

#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::protocol::{self, DecodeError, Message};

fuzz_target!(|data: &[u8]| {
    let peeked = protocol::peek_type(data);
    match protocol::decode(data) {
        Ok(message) => {
            assert_eq!(peeked, Some(message.message_type()));
            let encoded = message.encode().expect("a decoded message encodes");
            let again = protocol::decode(&encoded).expect("an encoded message decodes");
            assert_eq!(again, message);
            let twice = again.encode().expect("encodes again");
            assert_eq!(twice, encoded, "encoding is deterministic");
            // Frames the relay assembles from stored node encodings are the same bytes.
            let prebuilt = match &message {
                Message::Batch(b) => Some((
                    protocol::batch_frame as fn(u64, &[&bytes::Bytes]) -> bytes::Bytes,
                    b.through,
                    &b.nodes,
                )),
                Message::Broadcast(b) => Some((
                    protocol::broadcast_frame as fn(u64, &[&bytes::Bytes]) -> bytes::Bytes,
                    b.first_seq,
                    &b.nodes,
                )),
                _ => None,
            };
            if let Some((build, head, nodes)) = prebuilt {
                let wires: Vec<bytes::Bytes> = nodes.iter().map(protocol::encode_node).collect();
                let refs: Vec<&bytes::Bytes> = wires.iter().collect();
                assert_eq!(
                    build(head, &refs),
                    encoded,
                    "prebuilt frame equals the serde encoding"
                );
            }
        }
        Err(error) => {
            let expected = match &error {
                DecodeError::BadBody { ty, .. }
                | DecodeError::MapOrExt { ty }
                | DecodeError::TrailingBytes { ty, .. } => Some(*ty),
                DecodeError::BadEnvelope | DecodeError::UnknownType(_) => None,
            };
            assert_eq!(peeked, expected, "{error:?}");
            let reply = Message::ErrorMessage(error.to_message());
            let frame = reply.encode().expect("error frames encode");
            assert_eq!(
                protocol::decode(&frame).expect("error frames decode"),
                reply
            );
        }
    }
});
