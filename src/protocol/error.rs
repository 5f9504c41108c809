//! Error codes, close codes and the `error` frame (protocol/README.md §9).

use serde::{Deserialize, Serialize};

use super::{BodyProblem, MessageType};

macro_rules! code_table {
    ($(#[$meta:meta])* $name:ident : $repr:ty { $($(#[$vmeta:meta])* $variant:ident = $code:literal, $text:literal;)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr($repr)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $code,)*
        }

        impl $name {
            /// Every code, in table order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The numeric code on the wire.
            pub const fn code(self) -> $repr {
                self as $repr
            }

            /// The entry for a numeric code, if this version knows it.
            pub fn from_code(code: $repr) -> Option<Self> {
                Self::ALL.iter().copied().find(|c| c.code() == code)
            }

            /// One-line meaning, as in the spec table.
            pub fn meaning(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{} ({})", self.meaning(), self.code())
            }
        }
    };
}

code_table! {
    /// Codes carried by the `error` frame. The session stays open after one.
    ErrorCode: u16 {
        /// The frame is not a valid envelope or its body does not decode.
        Malformed = 1, "malformed frame";
        /// The envelope names a message type this version does not know.
        UnknownType = 2, "unknown message type";
        /// The message is valid but not allowed in this phase or direction.
        Unexpected = 3, "unexpected message for this phase";
        /// The message exceeds a negotiated limit (nodes per pack, ids per frame, presence size).
        LimitExceeded = 4, "limit exceeded";
        /// No protocol version in common.
        UnsupportedVersion = 5, "unsupported protocol version";
        /// The relay failed internally; the session is closed after it.
        Internal = 6, "internal relay error";
        /// The relay could not make accepted nodes durable: nothing after the last ack is
        /// stored. The session is closed after it (4006); reconnect with backoff and push
        /// again.
        StoreUnavailable = 7, "store unavailable";
        /// A subscription pattern is invalid or over a limit; the detail names the pattern
        /// and the reason (§3.5).
        BadPattern = 8, "bad subscription pattern";
    }
}

code_table! {
    /// WebSocket close codes the relay uses besides the standard 1000, 1001 and 1009.
    CloseCode: u16 {
        /// Normal closure.
        Normal = 1000, "normal closure";
        /// The relay is shutting down; reconnect later.
        GoingAway = 1001, "going away";
        /// A frame exceeded `max_frame`.
        TooBig = 1009, "message too big";
        /// The receiver fell behind (queue full or live frames too old); reconnect and reconcile.
        ResyncRequired = 4000, "resync required";
        /// No `hello` arrived within the handshake timeout.
        HandshakeTimeout = 4001, "handshake timeout";
        /// Too many errors, or an invalid `hello`.
        ProtocolViolation = 4002, "protocol violation";
        /// No protocol version in common.
        UnsupportedVersion = 4003, "unsupported protocol version";
        /// No traffic or pong within the keepalive window.
        IdleTimeout = 4004, "idle timeout";
        /// The relay failed internally.
        Internal = 4005, "internal relay error";
        /// The relay's store is failing: nothing unacked was kept. Reconnect with backoff and
        /// push again.
        StoreUnavailable = 4006, "store unavailable";
    }
}

/// The `error` frame: a typed complaint about one received frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// [`ErrorCode`] as a number (unknown codes are kept, not rejected).
    pub code: u16,
    /// Type number of the offending frame, 0 when it could not be read.
    pub message_type: u8,
    /// Human-readable detail; not for matching.
    pub detail: String,
}

impl ErrorMessage {
    /// Builds an error frame.
    pub fn new(
        code: ErrorCode,
        message_type: Option<MessageType>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            code: code.code(),
            message_type: message_type.map_or(0, MessageType::code),
            detail: detail.into(),
        }
    }
}

/// Why a received frame could not be decoded. Whole frames arrive from the WebSocket layer, so
/// there is no "incomplete" case: a short frame is malformed.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a two-element MessagePack array starting with a type number.
    #[error("frame is not a [type, body] envelope")]
    BadEnvelope,
    /// The type number is not one this version knows.
    #[error("unknown message type {0}")]
    UnknownType(u64),
    /// The body does not decode as the named message.
    #[error("invalid {ty:?} body: {problem} at {field}: {source}")]
    BadBody {
        /// The frame's type.
        ty: MessageType,
        /// Where decoding stopped: the path from the message to the field, e.g.
        /// `hello.hints.digest` or `pack.nodes[0].parents[1]` (protocol/README.md §11). The
        /// message name alone when the body itself is at fault.
        field: String,
        /// What was wrong there.
        problem: BodyProblem,
        /// What the MessagePack decoder found.
        #[source]
        source: rmp_serde::decode::Error,
    },
    /// The body contains a MessagePack map or extension value; v1 bodies use arrays only.
    #[error("{ty:?} body contains a map or extension value; v1 bodies are arrays only")]
    MapOrExt {
        /// The frame's type.
        ty: MessageType,
    },
    /// Bytes follow the body.
    #[error("{count} trailing bytes after a {ty:?} body")]
    TrailingBytes {
        /// The frame's type.
        ty: MessageType,
        /// How many bytes were left over.
        count: usize,
    },
}

impl DecodeError {
    /// The `error` frame that answers this decode failure.
    pub fn to_message(&self) -> ErrorMessage {
        let (code, ty) = match self {
            Self::BadEnvelope => (ErrorCode::Malformed, None),
            Self::UnknownType(_) => (ErrorCode::UnknownType, None),
            Self::BadBody { ty, .. } | Self::MapOrExt { ty } | Self::TrailingBytes { ty, .. } => {
                (ErrorCode::Malformed, Some(*ty))
            }
        };
        ErrorMessage::new(code, ty, self.to_string())
    }
}

/// A message could not be encoded. Not expected for well-formed values; surfaced rather than
/// unwrapped so a bug closes one session instead of the process.
#[derive(Debug, thiserror::Error)]
#[error("encoding failed: {0}")]
pub struct EncodeError(#[from] rmp_serde::encode::Error);
