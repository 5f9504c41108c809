//! Wire protocol v1: message types and the frame codec (normative text: protocol/README.md).
//!
//! Every WebSocket binary message carries one frame: a MessagePack array `[type, body]` where
//! `type` is a positive integer from [`MessageType`] and `body` is the message's fields as a
//! MessagePack array in declaration order. Bodies are strict: missing or extra fields, wrong
//! types and trailing bytes are errors. New fields arrive only with a new version or a new
//! capability, never silently. Pure: no I/O.

mod canonical;
mod error;
mod fast;
mod handshake;
mod pack;
mod prebuilt;
mod presence;
mod recon;
mod subscribe;
mod sync;
mod trace;

use bytes::Bytes;
use serde::Serialize;

pub use error::{CloseCode, DecodeError, EncodeError, ErrorCode, ErrorMessage};
pub use handshake::{
    Capabilities, Hello, PROTOCOL_VERSION, Plan, RelayLimits, SyncHints, Watermark, Welcome,
};
pub use pack::{Ack, Broadcast, Outcome, Pack, Resolved};
pub use prebuilt::{
    BATCH_OVERHEAD, BroadcastRun, batch_frame, broadcast_frame, decode_canonical_node, encode_node,
    join_broadcasts,
};
pub use presence::{Presence, PresenceUpdate};
pub use recon::{
    BUCKET_HASH_BYTES, BucketIds, BucketSketch, BucketSketchError, BucketSummary, Buckets,
    FRAME_SLACK, KEY_BYTES, MAX_BUCKET_SKETCH_LOG2, Missing, Retry, SHORT_BYTES, ShortsLengthError,
    Sketch, TreeRoot, Want, bucket_bitmap_len, bucket_ids_messages, bucket_marked,
    buckets_messages, mark_bucket, missing_messages, pack_bucket_sketches, pack_buckets,
    pack_shorts, unpack_bucket_sketches, unpack_buckets, unpack_shorts, want_messages,
};
pub use subscribe::{Subscribe, Subscribed, Unsubscribe};
pub use sync::{Batch, CatchUpDone, Credit, Ids, Need};
pub use trace::BodyProblem;

macro_rules! messages {
    ($($variant:ident = $code:literal, $dir:ident, $name:literal;)*) => {
        /// The type number in a frame's envelope.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum MessageType {
            $(
                #[doc = concat!("`", stringify!($variant), "` (", stringify!($dir), ").")]
                $variant = $code,
            )*
        }

        /// One decoded frame.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Message {
            $(
                #[doc = concat!("See [`", stringify!($variant), "`].")]
                $variant($variant),
            )*
        }

        impl MessageType {
            /// Every type, in code order.
            pub const ALL: &'static [MessageType] = &[$(MessageType::$variant),*];

            /// Who may send this message.
            pub fn direction(self) -> Direction {
                match self {
                    $(MessageType::$variant => Direction::$dir,)*
                }
            }

            /// The message's name in the spec (protocol/README.md §10.3), e.g. `catch_up_done`.
            pub fn name(self) -> &'static str {
                match self {
                    $(MessageType::$variant => $name,)*
                }
            }
        }

        impl Message {
            /// This message's type.
            pub fn message_type(&self) -> MessageType {
                match self {
                    $(Message::$variant(_) => MessageType::$variant,)*
                }
            }

            /// Encodes the frame: `[type, body]`.
            pub fn encode(&self) -> Result<Bytes, EncodeError> {
                match self {
                    $(Message::$variant(body) => encode_frame(MessageType::$variant, body),)*
                }
            }

            fn decode_body(ty: MessageType, body: &mut &[u8]) -> Result<Self, DecodeError> {
                use serde::Deserialize;
                let failed = |(source, field, problem)| DecodeError::BadBody { ty, field, problem, source };
                let start = *body;
                match ty {
                    $(MessageType::$variant => {
                        let mut de = rmp_serde::Deserializer::new(&mut *body);
                        if let Ok(value) = $variant::deserialize(&mut de) {
                            return Ok(Message::$variant(value));
                        }
                        // Only a body that failed is decoded again with the tracing layer
                        // (which accepts and rejects exactly the same bytes), to name the
                        // field and the problem; valid frames never pay for it.
                        let mut again = start;
                        let traced = trace::decode_traced(ty.name(), &mut again);
                        *body = again;
                        traced.map(Message::$variant).map_err(failed)
                    })*
                }
            }

            /// The body decoded by rmp-serde alone, without the tracing layer: what
            /// [`trace`]'s tests compare it with.
            #[cfg(test)]
            fn decode_body_plain(ty: MessageType, body: &mut &[u8]) -> Result<Self, rmp_serde::decode::Error> {
                use serde::Deserialize;
                let mut de = rmp_serde::Deserializer::new(body);
                match ty {
                    $(MessageType::$variant => $variant::deserialize(&mut de).map(Message::$variant),)*
                }
            }
        }
    };
}

messages! {
    Hello = 1, ClientToRelay, "hello";
    Welcome = 2, RelayToClient, "welcome";
    Ids = 3, ClientToRelay, "ids";
    Need = 4, RelayToClient, "need";
    Batch = 5, RelayToClient, "batch";
    CatchUpDone = 6, RelayToClient, "catch_up_done";
    Credit = 7, ClientToRelay, "credit";
    Pack = 8, ClientToRelay, "pack";
    Ack = 9, RelayToClient, "ack";
    Resolved = 10, RelayToClient, "resolved";
    Broadcast = 11, RelayToClient, "broadcast";
    Presence = 12, ClientToRelay, "presence";
    PresenceUpdate = 13, RelayToClient, "presence_update";
    ErrorMessage = 14, Both, "error";
    Sketch = 15, RelayToClient, "sketch";
    Want = 16, ClientToRelay, "want";
    Retry = 17, ClientToRelay, "retry";
    Buckets = 18, RelayToClient, "buckets";
    BucketIds = 19, ClientToRelay, "bucket_ids";
    Missing = 20, RelayToClient, "missing";
    Subscribe = 21, ClientToRelay, "subscribe";
    Unsubscribe = 22, ClientToRelay, "unsubscribe";
    Subscribed = 23, RelayToClient, "subscribed";
}

/// Which side may send a message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Only clients send it.
    ClientToRelay,
    /// Only the relay sends it.
    RelayToClient,
    /// Either side.
    Both,
}

impl MessageType {
    /// The type number.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The type for a number, if this version knows it.
    pub fn from_code(code: u64) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| u64::from(t.code()) == code)
    }
}

fn encode_frame<T: Serialize>(ty: MessageType, body: &T) -> Result<Bytes, EncodeError> {
    let mut buf = Vec::with_capacity(64);
    // Writing into a Vec cannot fail; the envelope header is two bytes.
    buf.extend_from_slice(&[0x92, ty.code()]);
    rmp_serde::encode::write(&mut buf, body)?;
    Ok(Bytes::from(buf))
}

/// Decodes one frame, rejecting unknown types, bad bodies and trailing bytes. The payloads of
/// a `batch` or `broadcast` share one buffer per frame.
pub fn decode(frame: &[u8]) -> Result<Message, DecodeError> {
    let mut rest = frame;
    let len = rmp::decode::read_array_len(&mut rest).map_err(|_| DecodeError::BadEnvelope)?;
    if len != 2 {
        return Err(DecodeError::BadEnvelope);
    }
    let code: u64 = rmp::decode::read_int(&mut rest).map_err(|_| DecodeError::BadEnvelope)?;
    let ty = MessageType::from_code(code).ok_or(DecodeError::UnknownType(code))?;
    // Catch-up and live nodes in their usual encoding; anything else, valid or not, is
    // decided below.
    if let Some(message) = fast::decode_body(ty, rest) {
        return Ok(message);
    }
    if !only_arrays_and_scalars(rest) {
        return Err(DecodeError::MapOrExt { ty });
    }
    let message = Message::decode_body(ty, &mut rest)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            ty,
            count: rest.len(),
        });
    }
    Ok(message)
}

/// Whether `body` holds no MessagePack map or extension value. The serde decoder would read a
/// struct from a map and ignore unknown keys; v1 bodies are arrays only (protocol/README.md
/// §10), so maps are refused before decoding. Truncated input passes here and fails in the
/// decoder. Cost: one pass over the markers, skipping string and binary contents.
fn only_arrays_and_scalars(body: &[u8]) -> bool {
    use rmp::Marker;
    let mut rest = body;
    while let Ok(marker) = rmp::decode::read_marker(&mut rest) {
        let skip: usize = match marker {
            Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => return false,
            Marker::FixExt1 | Marker::FixExt2 | Marker::FixExt4 | Marker::FixExt8 => return false,
            Marker::FixExt16 | Marker::Ext8 | Marker::Ext16 | Marker::Ext32 => return false,
            Marker::U8 | Marker::I8 => 1,
            Marker::U16 | Marker::I16 => 2,
            Marker::U32 | Marker::I32 | Marker::F32 => 4,
            Marker::U64 | Marker::I64 | Marker::F64 => 8,
            Marker::FixStr(len) => usize::from(len),
            Marker::Str8 | Marker::Bin8 => read_len(&mut rest, 1),
            Marker::Str16 | Marker::Bin16 => read_len(&mut rest, 2),
            Marker::Str32 | Marker::Bin32 => read_len(&mut rest, 4),
            // Array headers carry their length, but elements are simply the markers that
            // follow, so the walk needs no stack.
            Marker::Array16 => 2,
            Marker::Array32 => 4,
            _ => 0,
        };
        rest = rest.get(skip..).unwrap_or_default();
    }
    true
}

/// Reads a big-endian length of `width` bytes; a truncated length reads as "skip the rest".
fn read_len(rest: &mut &[u8], width: usize) -> usize {
    let Some((len, tail)) = rest.split_at_checked(width) else {
        return usize::MAX;
    };
    *rest = tail;
    len.iter().fold(0usize, |acc, b| {
        acc.saturating_mul(256).saturating_add(usize::from(*b))
    })
}

/// The type number of a frame that failed to decode, when the envelope itself was readable.
/// Used to name the offending message in an `error` frame.
pub fn peek_type(frame: &[u8]) -> Option<MessageType> {
    let mut rest = frame;
    let len = rmp::decode::read_array_len(&mut rest).ok()?;
    if len != 2 {
        return None;
    }
    let code: u64 = rmp::decode::read_int(&mut rest).ok()?;
    MessageType::from_code(code)
}
