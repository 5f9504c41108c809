//! Subscriptions on a live connection (protocol/README.md §7.5): changing them, their
//! `subscribed` answer, and how a subscribed replica's watermark follows broadcasts.

use bytes::Bytes;

use super::{Link, LinkError, LinkOutput, SyncEvent};
use crate::protocol::Subscribed;
use crate::replica::{Replica, read_subscription};

impl Link {
    /// A `subscribe` (`add`) or `unsubscribe` of `patterns`, if the session is steady and
    /// negotiated subscriptions and no other change is in flight; the relay answers with a
    /// backfill and [`SyncEvent::Subscribed`].
    pub fn change_subscription(
        &mut self,
        patterns: Vec<String>,
        add: bool,
    ) -> Result<Option<Bytes>, LinkError> {
        let frame = self
            .session
            .change_subscription(self.next_pack, patterns, add)?;
        if frame.is_some() {
            // Changes and packs share the numbering.
            self.next_pack = self.next_pack.saturating_add(1);
        }
        Ok(frame)
    }

    /// The change is complete: the replica copies the relay's patterns and holds every
    /// matching node up to `done.seq`.
    pub(super) fn subscribed(
        &mut self,
        replica: &mut Replica,
        done: Subscribed,
        out: &mut LinkOutput,
    ) -> Result<(), LinkError> {
        let patterns = read_subscription(&done.patterns).map_err(LinkError::SubscribedPattern)?;
        replica.subscription_changed(patterns, self.session.epoch(), done.seq);
        out.events.push(SyncEvent::Subscribed {
            patterns: done.patterns,
            seq: done.seq,
        });
        Ok(())
    }

    /// Node `seq` arrived live. A subscribed replica never sees the numbers of nodes outside
    /// its subscription, but in steady state the relay broadcasts every matching node in
    /// order, so the watermark moves straight to `seq`; during a backfill older matching
    /// nodes are still on their way, and `subscribed` sets it.
    pub(super) fn received(&mut self, replica: &mut Replica, seq: u64) {
        let epoch = self.session.epoch();
        if replica.subscription().is_none() {
            replica.received_seq(epoch, seq);
        } else if !self.session.is_backfilling() {
            replica.complete_through(epoch, seq);
        }
    }
}
