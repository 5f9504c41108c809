//! Joining: answering `hello` with the plan for the session, the subscription class it
//! reconciles, and the presence it should hear.

use super::*;

impl Hub {
    pub(super) fn join(
        &mut self,
        id: SessionId,
        hints: &SyncHints,
        capabilities: Capabilities,
        out: &mut Outbox,
    ) {
        self.unsubscribed.insert(id);
        if let Some(at) = self.in_sync_as_stored(&hints.digest, None) {
            return self.welcome(id, capabilities, Start::InSync { at }, None, out);
        }
        let (path, estimator_error) = self.room.plan(hints, capabilities);
        if let Some(e) = estimator_error {
            self.estimator_error(id, &e, out);
        }
        let start = Start::from_path(path, self.room.seq(), |after| {
            let cursor = self.room.catch_up_cursor(after, &hints.heads);
            (cursor, self.holds_stored_only(after, &hints.heads))
        });
        self.welcome(id, capabilities, start, None, out);
    }

    pub(super) fn estimator_error(
        &mut self,
        id: SessionId,
        error: &EstimatorError,
        out: &mut Outbox,
    ) {
        let error = SessionError::new(
            Fault::BadEstimator,
            Some(MessageType::Hello),
            error.to_string(),
        );
        self.reject(id, error, out);
    }

    /// Answers `hello` with `welcome` and starts the planned reconciliation.
    pub(super) fn welcome(
        &mut self,
        id: SessionId,
        capabilities: Capabilities,
        start: Start,
        subscription: Option<(Arc<PatternSet>, ClassId)>,
        out: &mut Outbox,
    ) {
        let plan = start.plan();
        let seq = match start {
            Start::InSync { at } => at,
            _ => self.room.seq(),
        };
        // The round that goes out right after `welcome` (the session owns it from here on).
        let (sketch, refine) = match &start {
            Start::Sketch(sketch) => (Some(*sketch), None),
            Start::Refine(round) => (None, Some(*round)),
            _ => (None, None),
        };
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        let welcome = Welcome {
            version: PROTOCOL_VERSION,
            capabilities,
            peer: member.peer,
            epoch: self.room.epoch(),
            seq,
            plan,
            limits: (self.config.session.limits != RelayLimits::default())
                .then_some(self.config.session.limits),
        };
        let deadline = member.session.handshake_deadline();
        member.session.welcome(start);
        member.subscription = subscription;
        if let Some(deadline) = deadline {
            self.handshake_done(deadline, id);
        }
        // Only `in_sync` lets the client take `welcome.seq` as its watermark; the other plans
        // reveal no node by it, so they need not wait for a commit.
        let through = if plan == Plan::InSync {
            seq
        } else {
            self.ledger.durable()
        };
        self.send_through(Audience::One(id), Message::Welcome(welcome), through, out);
        if let Some(sketch) = sketch {
            self.send_sketch(id, sketch, out);
        }
        if let Some(round) = refine {
            self.send_buckets(id, round, out);
        }
        self.send_present_peers(id, capabilities, out);
        if plan == Plan::InSync {
            self.send_unstored_after(id, seq, out);
        }
        self.pump(id, out);
    }

    /// In sync with the stored nodes while later ones are being committed: the arrival
    /// number to welcome the client at, if its digest (of the nodes `class` matches, or all)
    /// is exactly that of the stored nodes.
    fn in_sync_as_stored(&self, digest: &SetDigest, class: Option<ClassId>) -> Option<u64> {
        if self.ledger.unstored().is_empty() {
            return None;
        }
        let durable = self.ledger.durable();
        (self.stored_digest(class, durable) == *digest).then_some(durable)
    }

    /// The subscription class session `id` reconciles, if it has a subscription.
    pub(super) fn class_of(&self, id: SessionId) -> Option<ClassId> {
        let member = self.members.get(&id)?;
        member.subscription.as_ref().map(|(_, class)| *class)
    }

    /// A subscribed session's class is gone: a relay bug, not the client's fault.
    pub(super) fn lost_class(&mut self, id: SessionId, out: &mut Outbox) {
        tracing::error!(session = id, "subscribed session without its class");
        let error = SessionError::new(Fault::Internal, None, "subscription state lost");
        self.reject(id, error, out);
    }

    /// A session that negotiated presence hears every peer's current state after `welcome`.
    pub(super) fn send_present_peers(
        &mut self,
        id: SessionId,
        capabilities: Capabilities,
        out: &mut Outbox,
    ) {
        if !capabilities.contains(Capabilities::PRESENCE) {
            return;
        }
        let mut present: Vec<(u64, Bytes)> = self
            .members
            .iter()
            .filter(|(other, m)| **other != id && !m.presence.is_empty())
            .map(|(_, m)| (m.peer, m.presence.clone()))
            .collect();
        present.sort_unstable_by_key(|(peer, _)| *peer);
        let through = self.ledger.durable();
        for (peer, state) in present {
            self.send_through(
                Audience::One(id),
                Message::PresenceUpdate(PresenceUpdate { peer, state }),
                through,
                out,
            );
        }
    }

    /// `hello` with a subscription (§7.5, §5.11): the session reconciles the matching subset
    /// only. Its class (shared by every session with the same subscription) lists the matching
    /// nodes, so planning and the catch-up cost what matches, not the room; a client that
    /// lost its watermark reconciles by sketch against the class's own sketch structures.
    pub(super) fn join_subscribed(
        &mut self,
        id: SessionId,
        hints: &SyncHints,
        capabilities: Capabilities,
        patterns: Vec<Pattern>,
        out: &mut Outbox,
    ) {
        let set = Arc::new(PatternSet::new(patterns));
        let class_id = self.subscriptions.join(id, set.clone(), &self.room);
        if let Some(at) = self.in_sync_as_stored(&hints.digest, Some(class_id)) {
            let start = Start::InSync { at };
            return self.welcome(id, capabilities, start, Some((set, class_id)), out);
        }
        let Some(class) = self.subscriptions.class(class_id) else {
            return self.lost_class(id, out);
        };
        let epoch = self.room.epoch();
        let seq = self.room.seq();
        let watermark = hints
            .watermark
            .filter(|w| w.epoch == epoch && w.seq <= seq)
            .map(|w| w.seq);
        let sketches = capabilities.contains(Capabilities::IBF.union(Capabilities::MST));
        // `hints.digest` covers the client's matching nodes only.
        let path = if hints.digest == class.digest(&self.room) {
            ReconPath::InSync
        } else if let Some(after) = watermark {
            ReconPath::CatchUp { after }
        } else if hints.digest.count == 0 {
            ReconPath::CatchUp { after: 0 }
        } else if sketches && self.subscriptions.allow_recon(class_id, &self.room) {
            self.plan_class(id, hints, capabilities, class_id, out)
        } else {
            // No sketches, or the classes' sketch structures are at their bound.
            ReconPath::IdList
        };
        let Some(class) = self.subscriptions.class(class_id) else {
            return self.lost_class(id, out);
        };
        let start = Start::from_path(path, seq, |after| {
            let explicit = class.seqs_after(&self.room, after, |_| true);
            let cursor = Cursor::new(explicit, seq.saturating_add(1)).filtered(set.clone());
            (cursor, self.holds_stored_only(after, &hints.heads))
        });
        self.welcome(id, capabilities, start, Some((set, class_id)), out);
    }

    /// The sketch or refinement plan of a subscribed client that holds matching nodes but no
    /// watermark: sized from its estimator against the class's.
    pub(super) fn plan_class(
        &mut self,
        id: SessionId,
        hints: &SyncHints,
        capabilities: Capabilities,
        class: ClassId,
        out: &mut Outbox,
    ) -> ReconPath {
        let Some(recon) = self.subscriptions.recon_mut(class, &self.room) else {
            return ReconPath::IdList;
        };
        let side = RelaySide {
            digest: recon.digest(),
            epoch: self.room.epoch(),
            seq: self.room.seq(),
        };
        let (path, error) = plan_against(hints, capabilities, side, recon.estimator(), |_| false);
        if let Some(e) = error {
            self.estimator_error(id, &e, out);
        }
        path
    }
}
