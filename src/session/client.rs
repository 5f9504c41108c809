//! The client's side of one session.

use crate::protocol::{
    self, Ack, Batch, Broadcast, Buckets, Capabilities, CatchUpDone, Credit, DecodeError,
    EncodeError, ErrorMessage, Hello, Message, MessageType, Missing, Need, PROTOCOL_VERSION, Plan,
    PresenceUpdate, Resolved, Sketch, Subscribe, Subscribed, SyncHints, Unsubscribe, Welcome,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitWelcome,
    /// Plan `SendIds`: sending our ids, then waiting for the last `need`.
    AwaitNeed,
    /// Plan `Sketch`: receiving the sketch (and extensions); after our `want`, the stream
    /// starts, or `buckets` arrive if the relay refines instead.
    Sketching,
    /// Plan `Refine` (or a sketch that failed): receiving `buckets` until the last.
    Refining,
    /// Our `bucket_ids` are out; waiting for the last `missing`.
    AwaitMissing,
    CatchingUp,
    Steady,
    /// A `subscribe` or `unsubscribe` is out: backfill batches, then `subscribed`.
    Backfilling,
}

/// A frame from the relay, checked against the phase.
#[derive(Debug)]
pub enum ClientEvent {
    /// The relay accepted `hello` and chose a plan.
    Welcome(Welcome),
    /// Ids the relay lacks (plan `SendIds`).
    Need(Need),
    /// The relay's sketch, or part of it (plan `Sketch`).
    Sketch(Sketch),
    /// Prefix-tree bucket summaries (plan `Refine`, or the sketch path gave up).
    Buckets(Buckets),
    /// Short ids the relay lacks (after `bucket_ids`).
    Missing(Missing),
    /// Catch-up nodes.
    Batch(Batch),
    /// Catch-up finished; the session is live.
    CaughtUp(CatchUpDone),
    /// Outcomes of one of our packs.
    Ack(Ack),
    /// Final outcomes of nodes that were pending.
    Resolved(Resolved),
    /// Live nodes from other peers.
    Broadcast(Broadcast),
    /// A peer's presence changed.
    Presence(PresenceUpdate),
    /// The relay complained about one of our frames.
    RelayError(ErrorMessage),
    /// A subscription change is complete.
    Subscribed(Subscribed),
}

/// The relay sent something this client cannot accept; the connection should be dropped and
/// re-established.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The frame did not decode.
    #[error("relay sent an undecodable frame: {0}")]
    Decode(#[from] DecodeError),
    /// A valid message arrived in a phase where it makes no sense.
    #[error("relay sent {0:?} out of order")]
    Unexpected(MessageType),
    /// The relay chose a protocol version we did not offer.
    #[error("relay chose protocol version {0}, which this client does not speak")]
    Version(u16),
}

/// Sans-IO client session: builds `hello`, checks the relay's frames against the phase and keeps
/// catch-up credit topped up. The replica layer acts on the [`ClientEvent`]s.
#[derive(Debug)]
pub struct ClientSession {
    phase: Phase,
    capabilities: Capabilities,
    /// Catch-up bytes received since the last `credit` frame.
    consumed: u64,
}

impl ClientSession {
    /// Starts a session; returns it with the encoded `hello` to send first.
    pub fn start(
        hints: SyncHints,
        capabilities: Capabilities,
        window: u64,
        subscribe: Option<Vec<String>>,
    ) -> Result<(Self, bytes::Bytes), EncodeError> {
        let hello = Message::Hello(Hello {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            capabilities,
            hints,
            // With zero credit the relay would never send the batch that triggers a grant.
            credit: window.max(1),
            subscribe,
        })
        .encode()?;
        let session = Self {
            phase: Phase::AwaitWelcome,
            capabilities,
            consumed: 0,
        };
        Ok((session, hello))
    }

    /// Capabilities in effect (what we offered until `welcome`, then the intersection).
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// Whether catch-up is over and packs may be sent (also while a backfill streams).
    pub fn is_steady(&self) -> bool {
        matches!(self.phase, Phase::Steady | Phase::Backfilling)
    }

    /// Whether a subscription change is waiting for its `subscribed`.
    pub fn is_backfilling(&self) -> bool {
        self.phase == Phase::Backfilling
    }

    /// A `subscribe` (`add`) or `unsubscribe` frame; the relay answers with a backfill and
    /// `subscribed`. Only in steady state, one change at a time.
    pub fn change_subscription(
        &mut self,
        number: u64,
        patterns: Vec<String>,
        add: bool,
    ) -> Result<Option<bytes::Bytes>, EncodeError> {
        if self.phase != Phase::Steady {
            return Ok(None);
        }
        let message = if add {
            Message::Subscribe(Subscribe { number, patterns })
        } else {
            Message::Unsubscribe(Unsubscribe { number, patterns })
        };
        let frame = message.encode()?;
        self.phase = Phase::Backfilling;
        Ok(Some(frame))
    }

    /// Handles one received frame.
    pub fn handle_frame(&mut self, frame: &[u8]) -> Result<ClientEvent, ClientError> {
        let message = protocol::decode(frame)?;
        let ty = message.message_type();
        let event = match (self.phase, message) {
            (Phase::AwaitWelcome, Message::Welcome(welcome)) => {
                if welcome.version != PROTOCOL_VERSION {
                    return Err(ClientError::Version(welcome.version));
                }
                self.capabilities = self.capabilities.intersect(welcome.capabilities);
                self.phase = match welcome.plan {
                    Plan::InSync => Phase::Steady,
                    Plan::CatchUp => Phase::CatchingUp,
                    // The caller answers with its `ids` frames; `need` follows them.
                    Plan::SendIds => Phase::AwaitNeed,
                    Plan::Sketch => Phase::Sketching,
                    Plan::Refine => Phase::Refining,
                };
                ClientEvent::Welcome(welcome)
            }
            (Phase::AwaitNeed, Message::Need(need)) => {
                if need.last {
                    self.phase = Phase::CatchingUp;
                }
                ClientEvent::Need(need)
            }
            (Phase::Sketching, Message::Sketch(sketch)) => ClientEvent::Sketch(sketch),
            (Phase::Sketching | Phase::Refining, Message::Buckets(buckets)) => {
                self.phase = if buckets.last {
                    Phase::AwaitMissing
                } else {
                    Phase::Refining
                };
                ClientEvent::Buckets(buckets)
            }
            (Phase::AwaitMissing, Message::Missing(missing)) => {
                // A relist asks for a second `bucket_ids` round; its `missing` follows.
                if missing.last && missing.relist.is_empty() {
                    self.phase = Phase::CatchingUp;
                }
                ClientEvent::Missing(missing)
            }
            (Phase::Backfilling, Message::Batch(batch)) => {
                self.consumed = self.consumed.saturating_add(frame.len() as u64);
                ClientEvent::Batch(batch)
            }
            (Phase::Backfilling, Message::Subscribed(done)) => {
                self.phase = Phase::Steady;
                ClientEvent::Subscribed(done)
            }
            (Phase::CatchingUp | Phase::Sketching, Message::Batch(batch)) => {
                self.phase = Phase::CatchingUp;
                // usize -> u64 cannot truncate on supported targets.
                self.consumed = self.consumed.saturating_add(frame.len() as u64);
                ClientEvent::Batch(batch)
            }
            (Phase::CatchingUp | Phase::Sketching, Message::CatchUpDone(done)) => {
                self.phase = Phase::Steady;
                ClientEvent::CaughtUp(done)
            }
            (Phase::Steady | Phase::Backfilling, Message::Ack(ack)) => ClientEvent::Ack(ack),
            (Phase::Steady | Phase::Backfilling, Message::Resolved(resolved)) => {
                ClientEvent::Resolved(resolved)
            }
            // Broadcasts queued before the relay read our `subscribe` still arrive.
            (Phase::Steady | Phase::Backfilling, Message::Broadcast(broadcast)) => {
                ClientEvent::Broadcast(broadcast)
            }
            (phase, Message::PresenceUpdate(update)) if phase != Phase::AwaitWelcome => {
                ClientEvent::Presence(update)
            }
            (_, Message::ErrorMessage(error)) => ClientEvent::RelayError(error),
            _ => return Err(ClientError::Unexpected(ty)),
        };
        Ok(event)
    }

    /// A `credit` frame returning what the batches received so far consumed, so the relay's
    /// allowance stays at the window. Granted after every batch rather than after half the
    /// window: the relay may cap credit below the window (protocol/README.md §6.2), and a
    /// few bytes per batch of up to a frame are negligible.
    pub fn poll_credit(&mut self) -> Result<Option<bytes::Bytes>, EncodeError> {
        if !matches!(self.phase, Phase::CatchingUp | Phase::Backfilling) || self.consumed == 0 {
            return Ok(None);
        }
        let bytes = std::mem::take(&mut self.consumed);
        Message::Credit(Credit { bytes }).encode().map(Some)
    }
}
