//! Streaming: catch-up and backfill batches paced by credit, and subscription changes.

use super::*;

impl Hub {
    /// Reconciliation is settled: stream the cursor as catch-up, ending as `ending` says.
    pub(super) fn start_stream(
        &mut self,
        id: SessionId,
        cursor: Cursor,
        ending: Ending,
        out: &mut Outbox,
    ) {
        if let Some(member) = self.members.get_mut(&id) {
            let cursor = match &member.subscription {
                Some((set, _)) => cursor.filtered(set.clone()),
                None => cursor,
            };
            member.session.stream(Stream::new(cursor, ending));
        }
        self.pump(id, out);
    }

    /// `subscribe` / `unsubscribe`: changes the session's subscription, streams what newly
    /// matches (a backfill, paced like catch-up), then answers `subscribed`.
    pub(super) fn change_subscription(
        &mut self,
        id: SessionId,
        number: u64,
        patterns: &[Pattern],
        add: bool,
        out: &mut Outbox,
    ) {
        let Some(member) = self.members.get(&id) else {
            return;
        };
        let old = member.subscription.as_ref().map_or_else(
            || Arc::new(PatternSet::new([Pattern::everything()])),
            |(set, _)| set.clone(),
        );
        let new = if add {
            old.with(patterns)
        } else {
            old.without(patterns)
        };
        let max = self.config.session.limits.patterns.max_patterns;
        if new.len() > usize::from(max) {
            let error = SessionError::new(
                Fault::BadPattern,
                Some(MessageType::Subscribe),
                format!("the subscription would hold more than {max} patterns"),
            );
            return self.reject(id, error, out);
        }
        let seq = self.room.seq();
        if new == *old {
            let done = Subscribed {
                number,
                patterns: new.canonical(),
                seq,
            };
            return self.send(Audience::One(id), Message::Subscribed(done), out);
        }
        if let Some((_, class)) = member.subscription.clone() {
            self.subscriptions.leave(id, class);
        }
        let new = Arc::new(new);
        let class = self.subscriptions.join(id, new.clone(), &self.room);
        // Newly matching history: the nodes of the paths the new subscription matches and the
        // old did not.
        let explicit: Vec<u64> = self
            .subscriptions
            .class(class)
            .map(|class| class.seqs_after(&self.room, 0, |path| !old.matches(path)))
            .unwrap_or_default();
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        member.subscription = Some((new.clone(), class));
        self.unsubscribed.remove(&id);
        if explicit.is_empty() {
            let done = Subscribed {
                number,
                patterns: new.canonical(),
                seq,
            };
            return self.send(Audience::One(id), Message::Subscribed(done), out);
        }
        let cursor = Cursor::new(explicit, seq.saturating_add(1)).filtered(new);
        member
            .session
            .stream(Stream::new(cursor, Ending::Subscribed(number)));
        self.pump(id, out);
    }

    /// Streams catch-up while the session has credit; finishes it when the log is exhausted.
    pub(super) fn pump(&mut self, id: SessionId, out: &mut Outbox) {
        let max_frame = self.config.session.limits.max_frame as usize;
        loop {
            let Some(member) = self.members.get_mut(&id) else {
                return;
            };
            if !member.session.has_credit() {
                return;
            }
            let Some(stream) = member.session.stream_mut() else {
                return;
            };
            if stream.waiting_on().is_some() {
                return;
            }
            let end = match stream.ending() {
                Ending::AtStored => self.ledger.durable(),
                _ => self.room.seq(),
            };
            match self.room.next_batch(stream.cursor_mut(), max_frame, end) {
                BatchStep::Batch { frame, through, .. } => {
                    member.session.spend_credit(frame.len() as u64);
                    out.frames.push(Outgoing {
                        to: Audience::One(id),
                        frame,
                        paced: true,
                        through,
                    });
                }
                BatchStep::Fetch(seqs) => {
                    if let Some(first) = seqs.first() {
                        stream.wait_for(*first);
                    }
                    let new: Vec<u64> = seqs
                        .into_iter()
                        .filter(|seq| self.fetching.insert(*seq))
                        .collect();
                    if !new.is_empty() {
                        out.fetches.push(new);
                    }
                    return;
                }
                BatchStep::Done => return self.finish_stream(id, end, out),
            }
        }
    }

    /// The stream of session `id` reached arrival number `end`: answer `subscribed` after a
    /// backfill, `catch_up_done` otherwise, and turn the session steady.
    fn finish_stream(&mut self, id: SessionId, end: u64, out: &mut Outbox) {
        let Some(member) = self.members.get_mut(&id) else {
            return;
        };
        let Some(ending) = member.session.caught_up() else {
            return;
        };
        let class_id = member.subscription.as_ref().map(|(_, class)| *class);
        let class = class_id.and_then(|class| self.subscriptions.class(class));
        if let Ending::Subscribed(number) = ending {
            let patterns = class.map(|c| c.set().canonical()).unwrap_or_default();
            let done = Subscribed {
                number,
                patterns,
                seq: end,
            };
            return self.send(Audience::One(id), Message::Subscribed(done), out);
        }
        let digest = self.stored_digest(class_id, end);
        // Sketch and refine sessions decided what to send from short ids and digests; the
        // root (of the class's nodes for a subscribed session) makes the result
        // collision-resistant (§5.10). Their stream ends at the room's latest number.
        let root = if ending == Ending::AtLatestWithRoot {
            sets_mut(&mut self.room, &mut self.subscriptions, class_id).map(tree_root)
        } else {
            None
        };
        let done = CatchUpDone {
            seq: end,
            digest,
            root,
        };
        self.send_through(Audience::One(id), Message::CatchUpDone(done), end, out);
        self.send_unstored_after(id, end, out);
    }

    /// The digest of the nodes numbered up to `end` (those `class` matches, for a subscribed
    /// session); `end` is at most a commit behind the room, so this costs the unstored nodes.
    pub(super) fn stored_digest(&self, class: Option<ClassId>, end: u64) -> SetDigest {
        let class = class.and_then(|class| self.subscriptions.class(class));
        let mut digest = class.map_or(self.room.digest(), |c| c.digest(&self.room));
        for a in self.ledger.unstored().iter().filter(|a| a.seq > end) {
            let Some(node) = self.room.node_at(a.seq) else {
                continue;
            };
            if class.is_none_or(|c| c.set().matches(node.path())) {
                digest.remove(node.id());
            }
        }
        digest
    }

    /// Session `id` turned steady at arrival number `end` while later nodes were not stored:
    /// it hears them as broadcasts, held until they are (§6.1). Its own are not echoed back
    /// (§7.3).
    pub(super) fn send_unstored_after(&mut self, id: SessionId, end: u64, out: &mut Outbox) {
        let after: Vec<Admitted> = self
            .ledger
            .unstored()
            .iter()
            .filter(|a| a.seq > end)
            .copied()
            .collect();
        self.broadcast_others(id, &after, out);
    }
}
