//! Reconciliation rounds after `welcome`: sketches and their extension, bucket summaries,
//! and settling what the client says it lacks.

use super::*;

impl Hub {
    /// Queues the room's sketch (or its extension) for a session. A sketch the room cannot
    /// make (a size beyond the largest) sends the session to refinement instead.
    pub(super) fn send_sketch(
        &mut self,
        id: SessionId,
        log2: u8,
        extension: bool,
        at_seq: u64,
        out: &mut Outbox,
    ) {
        let max_frame = self.config.session.limits.max_frame as usize;
        let class = self.class_of(id);
        let Some(scope) = scope(&self.room, &mut self.subscriptions, class) else {
            return self.lost_class(id, out);
        };
        match self
            .room
            .sketch_frames(scope, log2, extension, at_seq, max_frame)
        {
            Ok(frames) => {
                // A sketch reveals short ids, never a node: the nodes it leads to come in
                // batches, held as any other until stored.
                let through = self.ledger.durable();
                for frame in frames {
                    out.frames.push(Outgoing {
                        to: Audience::One(id),
                        frame,
                        paced: false,
                        through,
                    });
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "no sketch at that size; refining");
                self.start_refine(id, sketch_capacity(log2), out);
            }
        }
    }

    /// Abandons the sketch path for a session and sends bucket summaries, announcing an
    /// `expected` difference: what the abandoned sketch could not hold.
    pub(super) fn start_refine(&mut self, id: SessionId, expected: u64, out: &mut Outbox) {
        let class = self.class_of(id);
        let Some(sets) = sets_mut(&mut self.room, &mut self.subscriptions, class) else {
            return self.lost_class(id, out);
        };
        let depth = crate::recon::refine_depth(sets.len());
        let at_seq = self.room.seq();
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        member.session.refine();
        member.recon = Recon::Refine {
            depth,
            at_seq,
            expected,
        };
        self.send_buckets(id, depth, expected, out);
    }

    pub(super) fn send_buckets(
        &mut self,
        id: SessionId,
        depth: u8,
        expected: u64,
        out: &mut Outbox,
    ) {
        let max_frame = self.config.session.limits.max_frame as usize;
        let class = self.class_of(id);
        let Some(sets) = sets_mut(&mut self.room, &mut self.subscriptions, class) else {
            return self.lost_class(id, out);
        };
        let summaries = bucket_summaries(sets, depth);
        let key = self.room.sketch_key_wire();
        for message in protocol::buckets_messages(depth, expected, key, &summaries, max_frame) {
            self.send(Audience::One(id), message, out);
        }
    }

    /// The client decoded the sketch: verify its shared root, then stream what it lacks.
    pub(super) fn settle_want(
        &mut self,
        id: SessionId,
        shorts: &[u64],
        shared: SetDigest,
        out: &mut Outbox,
    ) {
        let Some(Recon::Sketch { log2, at_seq, .. }) = self.members.get(&id).map(|m| m.recon)
        else {
            return;
        };
        let class = self.class_of(id);
        let Some(scope) = scope(&self.room, &mut self.subscriptions, class) else {
            return self.lost_class(id, out);
        };
        match self.room.settle_want(scope, shorts, shared, at_seq) {
            Some(cursor) => self.start_stream(id, cursor, out),
            None => {
                tracing::debug!("shared root mismatch after a sketch decode; refining");
                self.start_refine(id, sketch_capacity(log2), out);
            }
        }
    }

    /// The client could not decode: extend the sketch once, then refine.
    pub(super) fn retry(&mut self, id: SessionId, out: &mut Outbox) {
        let Some(Recon::Sketch {
            log2,
            at_seq,
            extended,
        }) = self.members.get(&id).map(|m| m.recon)
        else {
            return;
        };
        if extended || log2 >= MAX_LOG2_CELLS {
            // The difference did not fit this sketch: at least its cell count is a fair guess.
            self.start_refine(id, sketch_capacity(log2), out);
            return;
        }
        let log2 = log2 + 1;
        if let Some(member) = self.members.get_mut(&id) {
            member.recon = Recon::Sketch {
                log2,
                at_seq,
                extended: true,
            };
        }
        self.send_sketch(id, log2, true, at_seq, out);
    }

    /// A round of `bucket_ids` is in: answer `missing`, then stream, or (first round, some
    /// bucket sketch did not settle) ask for those buckets' lists.
    pub(super) fn settle_bucket_ids(
        &mut self,
        id: SessionId,
        differing: Bytes,
        shorts: &[u64],
        sketches: &[BucketSketch],
        out: &mut Outbox,
    ) {
        let class = self.class_of(id);
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        let Recon::Refine { depth, at_seq, .. } = member.recon else {
            return;
        };
        let relisting = member.relisting.take().map(|relisting| *relisting);
        let Some(scope) = scope(&self.room, &mut self.subscriptions, class) else {
            return self.lost_class(id, out);
        };
        let round = BucketRound {
            depth,
            at_seq,
            differing: &differing,
            shorts,
            sketches,
        };
        let settled = match relisting {
            Some(Relisting { buckets, .. }) if buckets != differing => Err(BucketIdsError::Relist),
            Some(Relisting { cursor, .. }) => {
                self.room.settle_bucket_ids(scope, round, Some(cursor))
            }
            None => self.room.settle_bucket_ids(scope, round, None),
        };
        match settled {
            Ok(Settled {
                missing,
                cursor,
                relist,
            }) => {
                let max_frame = self.config.session.limits.max_frame as usize;
                for message in protocol::missing_messages(&missing, &relist, max_frame) {
                    self.send(Audience::One(id), message, out);
                }
                if relist.is_empty() {
                    self.start_stream(id, cursor, out);
                } else if let Some(member) = self.members.get_mut(&id) {
                    member.relisting = Some(Box::new(Relisting {
                        buckets: Bytes::from(relist),
                        cursor,
                    }));
                    member.session.refine();
                }
            }
            Err(e) => {
                let error = SessionError::new(
                    Fault::Malformed,
                    Some(MessageType::BucketIds),
                    e.to_string(),
                );
                self.reject(id, error.ending(), out);
            }
        }
    }

    pub(super) fn send_need(&mut self, id: SessionId, need: Vec<NodeId>, out: &mut Outbox) {
        let chunk = (self.config.session.limits.max_ids as usize).max(1);
        let mut chunks = need.chunks(chunk).peekable();
        if chunks.peek().is_none() {
            self.send(
                Audience::One(id),
                Message::Need(Need {
                    ids: Vec::new(),
                    last: true,
                }),
                out,
            );
        }
        while let Some(ids) = chunks.next() {
            let last = chunks.peek().is_none();
            self.send(
                Audience::One(id),
                Message::Need(Need {
                    ids: ids.to_vec(),
                    last,
                }),
                out,
            );
        }
    }
}

/// Differences a sketch at `2^log2` cells per sub-table was sized for (§5.7.4): what a
/// refinement after it announces as `expected`.
fn sketch_capacity(log2: u8) -> u64 {
    let cells = (crate::recon::ibf::K as u64) << log2.min(MAX_LOG2_CELLS);
    (cells as f64 / crate::recon::index::CELLS_PER_DIFFERENCE) as u64
}
