//! Plan `sketch` on the client's side (protocol/README.md §5.7.5): the relay's sketch, and
//! perhaps its extension, arrives cell by cell; the client decodes it and answers `want` or
//! `retry`; the relay streams, extends or gives up and refines.

use bytes::Bytes;

use super::refine::Fallback;
use super::{
    ClientError, ClientEvent, ClientPhase, ClientSession, Misbehaved, State, encode_all, misuse,
};
use crate::protocol::{self, Message, MessageType, Retry, Sketch};
use crate::recon::SetDigest;
use crate::recon::ibf::{self, Cell, Ibf, K, MAX_LOG2_CELLS, SketchKey};

/// Where plan `sketch` is. The key is known from the first frame on.
#[derive(Debug)]
pub(super) enum SketchPlan {
    /// No sketch frame yet.
    AwaitSketch,
    /// Cells of a sketch, or of its extension, are arriving.
    Receiving(Incoming),
    /// The complete sketch is with the client, which owes `want` or `retry`.
    Decoding {
        key: SketchKey,
        /// It is the extension: a `retry` now gets `buckets`, not another extension.
        extended: bool,
    },
    /// Our `want` is out, and the replica's sync marks say what the decode implied: the
    /// stream confirms them, `buckets` refute them (§5.7.5 step 5).
    Wanted { key: SketchKey },
    /// Our `retry` is out; `sketch` is what the extension builds on.
    Retried { key: SketchKey, sketch: Ibf },
    /// Our `retry` of the extension is out: only `buckets` may follow.
    RetriedExtension { key: SketchKey },
}

/// A sketch being received.
#[derive(Debug)]
pub(super) struct Incoming {
    key: SketchKey,
    /// Its size: `log2` of the cells per sub-table, as the frames say.
    log2: u8,
    /// The sketch an extension builds on; `None` for a whole sketch.
    base: Option<Ibf>,
    /// Cells so far; complete at [`expected`](Self::expected).
    cells: Vec<Cell>,
}

impl Incoming {
    /// A whole sketch of `2^log2` cells per sub-table.
    fn whole(key: SketchKey, log2: u8) -> Result<Self, Misbehaved> {
        if log2 > MAX_LOG2_CELLS {
            return Err(Misbehaved::SketchSize(log2));
        }
        Ok(Self {
            key,
            log2,
            base: None,
            cells: Vec::new(),
        })
    }

    /// The extension of `base` to `2^log2` cells per sub-table.
    fn extension(key: SketchKey, log2: u8, base: Ibf) -> Result<Self, Misbehaved> {
        if log2 > MAX_LOG2_CELLS {
            return Err(Misbehaved::SketchSize(log2));
        }
        if base.log2().checked_add(1) != Some(log2) {
            return Err(Misbehaved::ExtensionSize {
                base: base.log2(),
                got: log2,
            });
        }
        Ok(Self {
            key,
            log2,
            base: Some(base),
            cells: Vec::new(),
        })
    }

    /// Cells that complete it: a whole sketch has `K · 2^log2`, an extension the lower half of
    /// that, as many as the sketch it extends.
    fn expected(&self) -> usize {
        match &self.base {
            Some(base) => base.cells().len(),
            None => K << self.log2,
        }
    }
}

impl SketchPlan {
    pub(super) fn phase(&self) -> ClientPhase {
        match self {
            Self::AwaitSketch => ClientPhase::AwaitSketch,
            Self::Receiving(_) => ClientPhase::Sketching,
            Self::Decoding { .. } => ClientPhase::Decoding,
            Self::Wanted { .. } => ClientPhase::Wanted,
            Self::Retried { .. } => ClientPhase::Retried,
            Self::RetriedExtension { .. } => ClientPhase::RetriedExtension,
        }
    }

    /// A `sketch` frame: its cells join the sketch being received; the last one completes it,
    /// and the caller gets it to decode.
    pub(super) fn sketch(self, frame: Sketch) -> Result<(Self, ClientEvent), ClientError> {
        let key =
            SketchKey::from_wire(&frame.key).ok_or(Misbehaved::BadKey(MessageType::Sketch))?;
        let mut incoming = match self {
            Self::AwaitSketch if frame.extension => {
                return Err(Misbehaved::ExtensionWithoutSketch.into());
            }
            Self::AwaitSketch => Incoming::whole(key, frame.log2)?,
            Self::Retried { key: known, .. } | Self::Receiving(Incoming { key: known, .. })
                if known != key =>
            {
                return Err(Misbehaved::KeyChanged(MessageType::Sketch).into());
            }
            Self::Retried { .. } if !frame.extension => {
                return Err(Misbehaved::NotAnExtension.into());
            }
            Self::Retried { sketch, .. } => Incoming::extension(key, frame.log2, sketch)?,
            Self::Receiving(incoming) => {
                if (frame.log2, frame.extension) != (incoming.log2, incoming.base.is_some()) {
                    return Err(Misbehaved::SketchShapeChanged.into());
                }
                incoming
            }
            // After our `want` the relay streams or refines, and after a second `retry` it
            // refines.
            other => {
                let phase = other.phase();
                let ty = MessageType::Sketch;
                return Err(Misbehaved::Unexpected { ty, phase }.into());
            }
        };
        let cells = ibf::decode_cells(&frame.cells).map_err(Misbehaved::SketchCells)?;
        let expected = incoming.expected();
        if incoming.cells.len().saturating_add(cells.len()) > expected {
            return Err(Misbehaved::SketchOverfull.into());
        }
        incoming.cells.extend(cells);
        if incoming.cells.len() < expected {
            return Ok((Self::Receiving(incoming), ClientEvent::Partial));
        }
        let Incoming {
            key,
            log2,
            base,
            cells,
        } = incoming;
        let extended = base.is_some();
        let sketch = match base {
            Some(base) => base.extend(cells),
            None => Ibf::from_cells(log2, cells),
        }
        .map_err(Misbehaved::SketchCells)?;
        Ok((
            Self::Decoding { key, extended },
            ClientEvent::Sketch { key, sketch },
        ))
    }

    /// `buckets` arrived: why the sketch path gave up, and the key it used, if a sketch came.
    pub(super) fn fallback(self) -> Result<(Fallback, Option<SketchKey>), ClientError> {
        match self {
            // The relay could not make a sketch of the size the difference needs.
            Self::AwaitSketch => Ok((Fallback::Undecoded, None)),
            Self::Retried { key, .. } | Self::RetriedExtension { key } => {
                Ok((Fallback::Undecoded, Some(key)))
            }
            Self::Wanted { key } => Ok((Fallback::Unverified, Some(key))),
            other => {
                let phase = other.phase();
                let ty = MessageType::Buckets;
                Err(Misbehaved::Unexpected { ty, phase }.into())
            }
        }
    }
}

impl ClientSession {
    /// Answers a sketch that decoded (§5.7.5 step 3): `shorts` are the short ids the relay
    /// alone holds, `shared` the digest of our set minus what we alone hold. Returns the `want`
    /// frames. The caller has marked its nodes synced as the decode implies; the relay's next
    /// frames confirm that (the stream) or refute it (`buckets`, with
    /// [`Fallback::Unverified`]).
    pub fn want(&mut self, shorts: &[u64], shared: SetDigest) -> Result<Vec<Bytes>, ClientError> {
        let max_frame = self.max_frame();
        self.advance(|_, state| {
            let State::Sketch(SketchPlan::Decoding { key, .. }) = state else {
                return Err(misuse("want", &state));
            };
            let frames = encode_all(protocol::want_messages(shorts, shared, max_frame))?;
            Ok((State::Sketch(SketchPlan::Wanted { key }), frames))
        })
    }

    /// Answers a sketch that did not decode (§5.7.5 step 4) with the `retry` frame; `sketch`
    /// is the one the event carried, which the extension builds on.
    pub fn retry(&mut self, sketch: Ibf, cells_left: u64) -> Result<Bytes, ClientError> {
        self.advance(|_, state| {
            let State::Sketch(SketchPlan::Decoding { key, extended }) = state else {
                return Err(misuse("retry", &state));
            };
            let frame = Message::Retry(Retry { cells_left }).encode()?;
            let next = if extended {
                SketchPlan::RetriedExtension { key }
            } else {
                SketchPlan::Retried { key, sketch }
            };
            Ok((State::Sketch(next), frame))
        })
    }
}
