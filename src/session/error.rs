//! Why the relay answers a session with an `error` frame, and whether it closes it.
//!
//! Every reason is a [`Fault`], and each fault maps here, once, to its error code
//! (protocol/README.md §9.1) and to the close code used when the session ends over it (§9.2).
//! Call sites say what went wrong; they never pick codes.

use crate::protocol::{CloseCode, DecodeError, ErrorCode, ErrorMessage, MessageType};

/// What went wrong with a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The frame is not a valid envelope, or its body does not decode as its type (or breaks
    /// a rule of it that the codec cannot see).
    Malformed,
    /// The envelope names a message type this version does not know.
    UnknownType,
    /// The message is not allowed in this phase.
    Unexpected,
    /// The message exceeds a negotiated limit.
    LimitExceeded,
    /// An id, want or bucket-id list grew past its total bound: the session cannot go on.
    ListTooLong,
    /// No protocol version in common.
    UnsupportedVersion,
    /// A subscription pattern is invalid or over a limit: the application's input, not a
    /// broken client.
    BadPattern,
    /// `hello.hints.estimator` does not decode: reported, and planned without it (§5.7.2).
    BadEstimator,
    /// The relay failed internally.
    Internal,
    /// The relay could not store accepted nodes, or read stored ones back.
    StoreUnavailable,
}

/// What a session does after an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Disposition {
    /// It stays open; the error counts toward [`super::relay::MAX_ERRORS`].
    Counts,
    /// It stays open and the error does not count.
    Tolerated,
    /// It closes.
    Closes,
}

impl Fault {
    /// The code of the `error` frame that reports it.
    pub fn error_code(self) -> ErrorCode {
        match self {
            Self::Malformed | Self::BadEstimator => ErrorCode::Malformed,
            Self::UnknownType => ErrorCode::UnknownType,
            Self::Unexpected => ErrorCode::Unexpected,
            Self::LimitExceeded | Self::ListTooLong => ErrorCode::LimitExceeded,
            Self::UnsupportedVersion => ErrorCode::UnsupportedVersion,
            Self::BadPattern => ErrorCode::BadPattern,
            Self::Internal => ErrorCode::Internal,
            Self::StoreUnavailable => ErrorCode::StoreUnavailable,
        }
    }

    /// The close code when the session ends over it.
    pub fn close_code(self) -> CloseCode {
        match self {
            Self::UnsupportedVersion => CloseCode::UnsupportedVersion,
            Self::Internal => CloseCode::Internal,
            Self::StoreUnavailable => CloseCode::StoreUnavailable,
            Self::Malformed
            | Self::UnknownType
            | Self::Unexpected
            | Self::LimitExceeded
            | Self::ListTooLong
            | Self::BadPattern
            | Self::BadEstimator => CloseCode::ProtocolViolation,
        }
    }

    fn disposition(self) -> Disposition {
        match self {
            Self::Malformed | Self::UnknownType | Self::Unexpected | Self::LimitExceeded => {
                Disposition::Counts
            }
            Self::BadPattern | Self::BadEstimator => Disposition::Tolerated,
            Self::ListTooLong
            | Self::UnsupportedVersion
            | Self::Internal
            | Self::StoreUnavailable => Disposition::Closes,
        }
    }
}

/// One error of a session: what went wrong, about which frame, in words, and whether the
/// session ends over it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{fault:?}: {detail}")]
pub struct SessionError {
    /// What went wrong.
    pub fault: Fault,
    /// The offending frame's type, if it could be read.
    pub ty: Option<MessageType>,
    /// Human-readable detail for the `error` frame.
    pub detail: String,
    ends: bool,
}

impl SessionError {
    /// An error about a frame of type `ty`.
    pub fn new(fault: Fault, ty: Option<MessageType>, detail: impl Into<String>) -> Self {
        Self {
            fault,
            ty,
            detail: detail.into(),
            ends: fault.disposition() == Disposition::Closes,
        }
    }

    /// The answer to a frame that does not decode.
    pub fn decode(error: &DecodeError) -> Self {
        let (fault, ty) = match error {
            DecodeError::BadEnvelope => (Fault::Malformed, None),
            DecodeError::UnknownType(_) => (Fault::UnknownType, None),
            DecodeError::BadBody { ty, .. }
            | DecodeError::MapOrExt { ty }
            | DecodeError::TrailingBytes { ty, .. } => (Fault::Malformed, Some(*ty)),
        };
        Self::new(fault, ty, error.to_string())
    }

    /// The same error, ending the session: it came where the session cannot go on (in
    /// `hello`, or one error too many). It closes with the fault's close code.
    pub fn ending(mut self) -> Self {
        self.ends = true;
        self
    }

    /// The close code, if the session ends over this error.
    pub fn close_code(&self) -> Option<CloseCode> {
        self.ends.then(|| self.fault.close_code())
    }

    /// Whether it counts toward the session's error limit.
    pub fn counts(&self) -> bool {
        self.fault.disposition() == Disposition::Counts
    }

    /// The `error` frame that reports it.
    pub fn to_message(&self) -> ErrorMessage {
        ErrorMessage::new(self.fault.error_code(), self.ty, self.detail.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY_FAULT: [Fault; 10] = [
        Fault::Malformed,
        Fault::UnknownType,
        Fault::Unexpected,
        Fault::LimitExceeded,
        Fault::ListTooLong,
        Fault::UnsupportedVersion,
        Fault::BadPattern,
        Fault::BadEstimator,
        Fault::Internal,
        Fault::StoreUnavailable,
    ];

    /// The table of protocol/README.md §9.1, column by column.
    #[test]
    fn every_fault_maps_to_the_codes_the_spec_gives_it() {
        let expected = [
            (Fault::Malformed, 1, None, true),
            (Fault::UnknownType, 2, None, true),
            (Fault::Unexpected, 3, None, true),
            (Fault::LimitExceeded, 4, None, true),
            (Fault::ListTooLong, 4, Some(4002), false),
            (Fault::UnsupportedVersion, 5, Some(4003), false),
            (Fault::BadPattern, 8, None, false),
            (Fault::BadEstimator, 1, None, false),
            (Fault::Internal, 6, Some(4005), false),
            (Fault::StoreUnavailable, 7, Some(4006), false),
        ];
        assert_eq!(expected.len(), EVERY_FAULT.len());
        for (fault, code, close, counts) in expected {
            let error = SessionError::new(fault, None, "x");
            assert_eq!(error.to_message().code, code, "{fault:?}");
            assert_eq!(error.close_code().map(CloseCode::code), close, "{fault:?}");
            assert_eq!(error.counts(), counts, "{fault:?}");
        }
    }

    #[test]
    fn an_error_that_ends_the_session_closes_with_its_faults_code() {
        for fault in EVERY_FAULT {
            let ended = SessionError::new(fault, Some(MessageType::Hello), "x").ending();
            assert_eq!(ended.close_code(), Some(fault.close_code()), "{fault:?}");
            assert_eq!(ended.to_message().message_type, MessageType::Hello.code());
        }
        assert_eq!(
            SessionError::new(Fault::BadPattern, None, "x")
                .ending()
                .close_code(),
            Some(CloseCode::ProtocolViolation),
            "a bad pattern in hello closes 4002 (§9.1)"
        );
    }
}
