//! The sketch path on the client's side (protocol/README.md §5.7).

use std::collections::HashSet;

use super::{Link, LinkError, LinkOutput, bad_frame};
use crate::node::NodeId;
use crate::protocol::{self, Message, MessageType, Retry, Sketch};
use crate::recon::ibf::{self, Cell, Ibf, K, SketchError, SketchKey};
use crate::replica::Replica;

/// The relay's sketch as it arrives, and the last complete one (kept for an extension).
#[derive(Default)]
pub(super) struct SketchState {
    pub(super) key: Option<SketchKey>,
    /// Cells of the sketch (or extension) being received, with its size and kind.
    receiving: Option<(u8, bool)>,
    cells: Vec<Cell>,
    /// The last complete sketch, which an extension builds on.
    complete: Option<Ibf>,
    /// The replica's sync marks were set from a decode the relay has not verified yet.
    pub(super) tentative: bool,
}

impl Link {
    /// A `sketch` frame: collect its cells; once the sketch is complete, decode it against
    /// the replica's own and answer `want` or `retry` (protocol/README.md §5.7).
    pub(super) fn on_sketch(
        &mut self,
        replica: &mut Replica,
        frame: Sketch,
        out: &mut LinkOutput,
    ) -> Result<(), LinkError> {
        let bad = bad_frame(MessageType::Sketch);
        let key = SketchKey::from_wire(&frame.key).ok_or_else(|| bad("bad key".into()))?;
        if self.sketch.key.is_some_and(|k| k != key) {
            return Err(bad("the key changed within the session".into()));
        }
        self.sketch.key = Some(key);
        let shape = (frame.log2, frame.extension);
        match self.sketch.receiving {
            None => self.sketch.receiving = Some(shape),
            Some(current) if current == shape => {}
            Some(_) => return Err(bad("a frame of another sketch arrived mid-sketch".into())),
        }
        let cells = ibf::decode_cells(&frame.cells).map_err(|e| bad(e.to_string()))?;
        // A whole sketch at log2 has K·2^log2 cells; an extension half of that.
        let expected_log2 = if frame.extension {
            frame
                .log2
                .checked_sub(1)
                .ok_or_else(|| bad("extension to size 2^0".into()))?
        } else {
            frame.log2
        };
        if expected_log2 > ibf::MAX_LOG2_CELLS {
            return Err(bad(SketchError::BadSize.to_string()));
        }
        let expected = K << expected_log2;
        if self.sketch.cells.len().saturating_add(cells.len()) > expected {
            return Err(bad("more cells than the sketch holds".into()));
        }
        self.sketch.cells.extend(cells);
        if self.sketch.cells.len() < expected {
            return Ok(());
        }
        self.sketch.receiving = None;
        let cells = std::mem::take(&mut self.sketch.cells);
        let relay = if frame.extension {
            let previous = self
                .sketch
                .complete
                .take()
                .filter(|p| p.log2() == expected_log2)
                .ok_or_else(|| bad("an extension without the sketch it extends".into()))?;
            previous.extend(cells)
        } else {
            Ibf::from_cells(frame.log2, cells)
        }
        .map_err(|e| bad(e.to_string()))?;
        self.decode_sketch(replica, key, relay, out)
    }

    fn decode_sketch(
        &mut self,
        replica: &mut Replica,
        key: SketchKey,
        relay: Ibf,
        out: &mut LinkOutput,
    ) -> Result<(), LinkError> {
        let sets = replica.sets(key);
        let ours = sets
            .sketch_at(relay.log2())
            .map_err(|e| bad_frame(MessageType::Sketch)(e.to_string()))?;
        let decoded = relay.subtract(&ours).and_then(Ibf::decode);
        // Short ids we alone hold must name our nodes; otherwise the decode is garbage.
        let outcome = decoded.map(|diff| {
            let only_ours: Option<Vec<NodeId>> = diff
                .theirs
                .iter()
                .map(|short| sets.resolve(*short))
                .collect();
            (diff.ours, only_ours)
        });
        let (want, only_ours) = match outcome {
            Ok((want, Some(only_ours))) => (want, only_ours),
            failed => {
                let cells_left = match failed {
                    Err(SketchError::Undecodable { remaining }) => remaining as u64,
                    _ => 0,
                };
                self.sketch.complete = Some(relay);
                out.send
                    .push(Message::Retry(Retry { cells_left }).encode()?);
                return Ok(());
            }
        };
        let mut shared = replica.digest();
        for id in &only_ours {
            shared.remove(id);
        }
        // Everything but what we alone hold is the relay's, as far as the decode says; the
        // relay checks the shared root before streaming, and says `buckets` if it disagrees.
        let only_ours: HashSet<NodeId> = only_ours.into_iter().collect();
        let mut unsynced = replica.unsynced_before(replica.len());
        unsynced.retain(|id| replica.in_scope(id));
        // Marking node by node costs a tree update each: fine for a few unsynced nodes, while a
        // replica that trusted nothing is re-derived in one pass.
        let many = unsynced.len() as u64 > replica.scope_len() / 8;
        if many || only_ours.iter().any(|id| replica.is_synced(id)) {
            replica.reset_scope_sync(|id| !only_ours.contains(id));
        } else {
            for id in unsynced.iter().filter(|id| !only_ours.contains(*id)) {
                replica.mark_synced(id);
            }
        }
        self.sketch.tentative = true;
        let max_frame = self.limits.max_frame as usize;
        for message in protocol::want_messages(&want, shared, max_frame) {
            out.send.push(message.encode()?);
        }
        Ok(())
    }
}
