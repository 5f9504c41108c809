//! Fan-out: admitting a `pack`, acknowledging it, and broadcasting what it admitted.

use super::*;

impl Hub {
    pub(super) fn submit(&mut self, id: SessionId, pack: Pack, now: Instant, out: &mut Outbox) {
        let Submission {
            outcomes,
            admitted,
            resolved,
        } = self.room.submit(id, pack.nodes, now);
        self.ledger.admitted(&admitted);
        if self.subscriptions.has_classes() {
            for a in &admitted {
                let Some(node) = self.room.node_at(a.seq) else {
                    continue;
                };
                let first = self
                    .room
                    .path_nodes(node.path())
                    .is_some_and(|nodes| nodes.seqs().first() == Some(&a.seq));
                if first {
                    self.subscriptions.new_path(&node.path);
                }
            }
        }
        self.send(
            Audience::One(id),
            Message::Ack(Ack {
                number: pack.number,
                outcomes,
            }),
            out,
        );
        if !admitted.is_empty() {
            self.broadcast(&admitted, Audience::Live { except: Some(id) }, out);
            // Released orphans of other peers still reach the sender, which never gets its own
            // nodes echoed back.
            if self.members.get(&id).is_some_and(|m| m.session.is_steady()) {
                self.broadcast_others(id, &admitted, out);
            }
        }
        self.send_resolved(resolved, out);
    }

    /// Broadcasts to session `id` the nodes of `admitted` that others sent (its own are never
    /// echoed back, §7.3), one frame per run of consecutive numbers.
    pub(super) fn broadcast_others(
        &mut self,
        id: SessionId,
        admitted: &[Admitted],
        out: &mut Outbox,
    ) {
        let others: Vec<Admitted> = admitted
            .iter()
            .filter(|a| a.origin != id)
            .copied()
            .collect();
        for run in others.chunk_by(|a, b| a.seq.checked_add(1) == Some(b.seq)) {
            self.broadcast(run, Audience::One(id), out);
        }
    }

    /// Broadcasts consecutive admitted nodes, from their stored encodings, to the sessions of
    /// `to` whose subscription they match: sessions that get the same nodes share frames,
    /// one per run of consecutive numbers (§7.3, §7.5).
    pub(super) fn broadcast(&mut self, admitted: &[Admitted], to: Audience, out: &mut Outbox) {
        if self.subscriptions.is_empty() {
            return self.broadcast_run(admitted, to, out);
        }
        // Sessions without a subscription get everything, in one frame resolved when it is
        // queued; subscribed ones are found through the pattern index, so the cost is what
        // matches, never one test per session.
        let (except, only) = match to {
            Audience::Live { except } => (except, None),
            Audience::One(id) => (None, Some(id)),
            _ => return self.broadcast_run(admitted, to, out),
        };
        match only {
            Some(id) => {
                if self
                    .members
                    .get(&id)
                    .is_some_and(|m| m.subscription.is_none())
                {
                    self.broadcast_run(admitted, Audience::One(id), out);
                }
            }
            None => self.broadcast_run(admitted, Audience::Unsubscribed { except }, out),
        }
        let wanted = |hub: &Self, session: SessionId| {
            let listed = match only {
                Some(id) => session == id,
                None => Some(session) != except,
            };
            listed
                && hub
                    .members
                    .get(&session)
                    .is_some_and(|m| m.session.is_steady())
        };
        // Most packs admit one node: its matching sessions are the audience.
        if let [single] = admitted {
            let Some(node) = self.room.node_at(single.seq) else {
                return;
            };
            let mut sessions = self.subscriptions.sessions_matching(node.path());
            sessions.retain(|s| wanted(self, *s));
            if !sessions.is_empty() {
                self.broadcast_run(admitted, Audience::Many(sessions.into()), out);
            }
            return;
        }
        let mut picked: BTreeMap<SessionId, Vec<usize>> = BTreeMap::new();
        for (index, a) in admitted.iter().enumerate() {
            let Some(node) = self.room.node_at(a.seq) else {
                continue;
            };
            for session in self.subscriptions.sessions_matching(node.path()) {
                if wanted(self, session) {
                    picked.entry(session).or_default().push(index);
                }
            }
        }
        let mut groups: BTreeMap<Vec<usize>, Vec<SessionId>> = BTreeMap::new();
        for (session, indexes) in picked {
            groups.entry(indexes).or_default().push(session);
        }
        for (indexes, sessions) in groups {
            let nodes: Vec<Admitted> = indexes
                .iter()
                .filter_map(|i| admitted.get(*i))
                .copied()
                .collect();
            let audience = Audience::Many(sessions.into());
            for run in nodes.chunk_by(|a, b| a.seq.checked_add(1) == Some(b.seq)) {
                self.broadcast_run(run, audience.clone(), out);
            }
        }
    }

    /// One `broadcast` frame of consecutive admitted nodes.
    pub(super) fn broadcast_run(&mut self, admitted: &[Admitted], to: Audience, out: &mut Outbox) {
        let Some(first) = admitted.first() else {
            return;
        };
        let wires: Vec<&Bytes> = admitted
            .iter()
            .filter_map(|a| self.room.wire_at(a.seq))
            .collect();
        let frame = protocol::broadcast_frame(first.seq, &wires);
        let through = admitted.last().map_or(first.seq, |a| a.seq);
        out.frames.push(Outgoing {
            to,
            frame,
            paced: false,
            through,
        });
    }

    pub(super) fn send_resolved(
        &mut self,
        resolved: impl IntoIterator<Item = (SessionId, NodeId, Outcome)>,
        out: &mut Outbox,
    ) {
        let mut by_origin: BTreeMap<SessionId, Vec<(NodeId, Outcome)>> = BTreeMap::new();
        for (origin, id, outcome) in resolved {
            by_origin.entry(origin).or_default().push((id, outcome));
        }
        for (origin, outcomes) in by_origin {
            if self
                .members
                .get(&origin)
                .is_some_and(|m| m.session.is_steady())
            {
                self.send(
                    Audience::One(origin),
                    Message::Resolved(Resolved { outcomes }),
                    out,
                );
            }
        }
    }
}
