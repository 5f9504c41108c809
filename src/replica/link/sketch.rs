//! The sketch path on the replica's side (protocol/README.md §5.7.5): decoding the relay's
//! sketch against the replica's own and answering the session with `want` or `retry`.

use std::collections::HashSet;

use super::{Link, LinkError, LinkOutput};
use crate::node::NodeId;
use crate::recon::ibf::{Ibf, SketchError, SketchKey};
use crate::replica::Replica;

impl Link {
    /// A complete sketch from the relay: subtract ours at its size and peel (§5.7.5 step 2).
    /// On success mark what the decode implies and answer `want` (step 3); otherwise `retry`
    /// (step 4).
    pub(super) fn answer_sketch(
        &mut self,
        replica: &mut Replica,
        key: SketchKey,
        relay: Ibf,
        out: &mut LinkOutput,
    ) -> Result<(), LinkError> {
        let sets = replica.sets(key);
        // The session checked the relay's size, at which the replica always has a sketch.
        let decoded = sets
            .sketch_at(relay.log2())
            .and_then(|ours| relay.subtract(&ours))
            .and_then(Ibf::decode);
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
                out.send.push(self.session.retry(relay, cells_left)?);
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
        out.send.extend(self.session.want(&want, shared)?);
        Ok(())
    }
}
