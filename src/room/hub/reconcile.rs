//! Reconciliation rounds after `welcome`: sketches and their extension, bucket summaries,
//! and settling what the client says it lacks.

use super::*;

impl Hub {
    /// Queues the room's sketch (or its extension) for a session. A sketch the room cannot
    /// make (a size beyond the largest) sends the session to refinement instead.
    pub(super) fn send_sketch(&mut self, id: SessionId, sketch: SketchRound, out: &mut Outbox) {
        let max_frame = self.config.session.limits.max_frame as usize;
        let class = self.class_of(id);
        let Some(scope) = scope(&self.room, &mut self.subscriptions, class) else {
            return self.lost_class(id, out);
        };
        let SketchRound {
            log2,
            at_seq,
            extended,
        } = sketch;
        match self
            .room
            .sketch_frames(scope, log2, extended, at_seq, max_frame)
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
        let round = RefineRound {
            depth: crate::recon::refine_depth(sets.len()),
            at_seq: self.room.seq(),
            expected,
        };
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        member.session.refine(round, None);
        self.send_buckets(id, round, out);
    }

    pub(super) fn send_buckets(&mut self, id: SessionId, round: RefineRound, out: &mut Outbox) {
        let max_frame = self.config.session.limits.max_frame as usize;
        let class = self.class_of(id);
        let Some(sets) = sets_mut(&mut self.room, &mut self.subscriptions, class) else {
            return self.lost_class(id, out);
        };
        let summaries = bucket_summaries(sets, round.depth);
        let key = self.room.sketch_key_wire();
        let messages =
            protocol::buckets_messages(round.depth, round.expected, key, &summaries, max_frame);
        for message in messages {
            self.send(Audience::One(id), message, out);
        }
    }

    /// The client decoded `sketch`: verify its shared root, then stream what it lacks.
    pub(super) fn settle_want(
        &mut self,
        id: SessionId,
        shorts: &[u64],
        shared: SetDigest,
        sketch: SketchRound,
        out: &mut Outbox,
    ) {
        let class = self.class_of(id);
        let Some(scope) = scope(&self.room, &mut self.subscriptions, class) else {
            return self.lost_class(id, out);
        };
        match self.room.settle_want(scope, shorts, shared, sketch.at_seq) {
            Some(cursor) => self.start_stream(id, cursor, Ending::AtLatestWithRoot, out),
            None => {
                tracing::debug!("shared root mismatch after a sketch decode; refining");
                self.start_refine(id, sketch_capacity(sketch.log2), out);
            }
        }
    }

    /// The client could not decode `sketch`: extend it once, then refine.
    pub(super) fn retry(&mut self, id: SessionId, sketch: SketchRound, out: &mut Outbox) {
        if sketch.extended || sketch.log2 >= MAX_LOG2_CELLS {
            // The difference did not fit this sketch: at least its cell count is a fair guess.
            return self.start_refine(id, sketch_capacity(sketch.log2), out);
        }
        let extension = SketchRound {
            log2: sketch.log2 + 1,
            at_seq: sketch.at_seq,
            extended: true,
        };
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        member.session.sketch_sent(extension);
        self.send_sketch(id, extension, out);
    }

    /// A round of `bucket_ids` answering `round` is in: answer `missing`, then stream, or
    /// (first round, some bucket sketch did not settle) ask for those buckets' lists.
    pub(super) fn settle_bucket_ids(
        &mut self,
        id: SessionId,
        round: RefineRound,
        relisting: Option<Box<Relisting>>,
        (differing, shorts, sketches): (Bytes, &[u64], &[BucketSketch]),
        out: &mut Outbox,
    ) {
        let class = self.class_of(id);
        let Some(scope) = scope(&self.room, &mut self.subscriptions, class) else {
            return self.lost_class(id, out);
        };
        let bucket_round = BucketRound {
            depth: round.depth,
            at_seq: round.at_seq,
            differing: &differing,
            shorts,
            sketches,
        };
        let settled = match relisting.map(|relisting| *relisting) {
            Some(Relisting { buckets, .. }) if buckets != differing => Err(BucketIdsError::Relist),
            Some(Relisting { cursor, .. }) => {
                self.room
                    .settle_bucket_ids(scope, bucket_round, Some(cursor))
            }
            None => self.room.settle_bucket_ids(scope, bucket_round, None),
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
                    self.start_stream(id, cursor, Ending::AtLatestWithRoot, out);
                } else if let Some(member) = self.members.get_mut(&id) {
                    let relisting = Relisting {
                        buckets: Bytes::from(relist),
                        cursor,
                    };
                    member.session.refine(round, Some(Box::new(relisting)));
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
