//! The client session machine on its own: every phase's accepted and refused frames, each
//! refusal by the reason it names, the turns it hands the caller, credit, and subscription
//! changes (protocol/README.md §2.2, §5, §6.2, §7.5). Here: the phase table, `welcome` and
//! misuse, with the helpers that lead a session into each phase; reconciliation in
//! [`reconcile`], catch-up streams and steady state in [`stream`].

mod reconcile;
mod stream;

use bytes::Bytes;

use super::*;
use crate::node::{Node, RoomId};
use crate::protocol::{
    BucketIds, BucketSummary, Buckets, Direction, ErrorCode, Hello, MessageType, Missing, Outcome,
    Presence, Retry, Sketch, Want,
};
use crate::recon::SetDigest;
use crate::recon::ibf::{self, Cell, Ibf};

const SKETCHES: Capabilities = Capabilities::IBF.union(Capabilities::MST);
const AT_HELLO: HelloSnapshot = HelloSnapshot {
    len: 3,
    generation: 7,
};

fn key() -> SketchKey {
    SketchKey([7; 16])
}

fn other_key() -> SketchKey {
    SketchKey([8; 16])
}

fn room() -> RoomId {
    RoomId::new("demo").unwrap()
}

fn node(payload: &str) -> Node {
    Node::child_of(&room(), &[], "doc", payload.to_owned()).unwrap()
}

fn id(n: u8) -> NodeId {
    NodeId([n; 32])
}

fn encode(message: Message) -> Bytes {
    message.encode().unwrap()
}

fn decode(frame: &Bytes) -> Message {
    protocol::decode(frame).unwrap()
}

/// Hands a frame the session must take; returns its event.
fn take(session: &mut ClientSession, message: Message) -> ClientEvent {
    let ty = message.message_type();
    session
        .handle_frame(&encode(message))
        .unwrap_or_else(|e| panic!("{ty:?} refused: {e}"))
}

/// Hands a frame the session must refuse; returns the reason, after checking the refusal is
/// final.
fn refuse(session: &mut ClientSession, message: Message) -> Misbehaved {
    let result = session.handle_frame(&encode(message));
    assert_eq!(session.phase(), ClientPhase::Failed, "{result:?}");
    match result {
        Err(ClientError::Misbehaved(reason)) => reason,
        other => panic!("not refused as misbehaviour: {other:?}"),
    }
}

fn started(capabilities: Capabilities) -> ClientSession {
    let (session, hello) =
        ClientSession::start(SyncHints::default(), capabilities, 0, None, AT_HELLO).unwrap();
    let Message::Hello(hello) = decode(&hello) else {
        panic!("the first frame is hello");
    };
    assert_eq!(hello.credit, 1, "a zero window still grants one byte");
    assert_eq!(hello.capabilities, capabilities);
    session
}

fn welcome(plan: Plan, capabilities: Capabilities, limits: Option<RelayLimits>) -> Message {
    Message::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        capabilities,
        peer: 4,
        epoch: 11,
        seq: 30,
        plan,
        limits,
    })
}

fn welcomed(plan: Plan) -> ClientSession {
    let mut session = started(Capabilities::SUPPORTED);
    let _ = take(&mut session, welcome(plan, Capabilities::SUPPORTED, None));
    session
}

fn sketch_frame(key: SketchKey, log2: u8, extension: bool, cells: &[Cell]) -> Message {
    Message::Sketch(Sketch {
        log2,
        extension,
        key: Bytes::copy_from_slice(key.wire()),
        cells: Bytes::from(ibf::encode_cells(cells)),
    })
}

fn empty_cells(n: usize) -> Vec<Cell> {
    vec![Cell::default(); n]
}

fn buckets_frame(key: SketchKey, depth: u8, summaries: &[BucketSummary], last: bool) -> Message {
    Message::Buckets(Buckets {
        depth,
        expected: 12,
        key: Bytes::copy_from_slice(key.wire()),
        summaries: protocol::pack_buckets(summaries),
        last,
    })
}

/// Summaries of `n` buckets.
fn summaries(n: usize) -> Vec<BucketSummary> {
    (0..n).map(|i| (i as u64, [i as u8; 16])).collect()
}

fn missing_frame(shorts: &[u64], last: bool, relist: &[u8]) -> Message {
    Message::Missing(Missing {
        shorts: protocol::pack_shorts(shorts.iter().copied()),
        last,
        relist: Bytes::copy_from_slice(relist),
    })
}

fn batch(through: u64, payload: &str) -> Message {
    Message::Batch(Batch {
        through,
        nodes: vec![node(payload)],
    })
}

fn done(seq: u64) -> Message {
    Message::CatchUpDone(CatchUpDone {
        seq,
        digest: SetDigest::default(),
        root: None,
    })
}

// Sessions in every phase, reached the way a relay would lead them there.

fn await_welcome() -> ClientSession {
    started(Capabilities::SUPPORTED)
}

fn listing_ids() -> ClientSession {
    welcomed(Plan::SendIds)
}

fn await_need() -> ClientSession {
    let mut session = listing_ids();
    let _ = session.send_ids(vec![id(1), id(2), id(3)]).unwrap();
    session
}

fn await_sketch() -> ClientSession {
    welcomed(Plan::Sketch)
}

fn sketching() -> ClientSession {
    let mut session = await_sketch();
    let event = take(&mut session, sketch_frame(key(), 4, false, &empty_cells(3)));
    assert!(matches!(event, ClientEvent::Partial));
    session
}

/// A session holding a complete sketch at `2^4`; returns the sketch too.
fn decoding() -> (ClientSession, Ibf) {
    let mut session = await_sketch();
    match take(
        &mut session,
        sketch_frame(key(), 4, false, &empty_cells(48)),
    ) {
        ClientEvent::Sketch { key: k, sketch } => {
            assert_eq!(k, key());
            (session, sketch)
        }
        other => panic!("{other:?}"),
    }
}

fn wanted() -> ClientSession {
    let (mut session, _) = decoding();
    let _ = session.want(&[], SetDigest::default()).unwrap();
    session
}

fn retried() -> ClientSession {
    let (mut session, sketch) = decoding();
    let _ = session.retry(sketch, 2).unwrap();
    session
}

fn retried_extension() -> ClientSession {
    let mut session = retried();
    let ClientEvent::Sketch { sketch, .. } =
        take(&mut session, sketch_frame(key(), 5, true, &empty_cells(48)))
    else {
        panic!("the extension completes the sketch");
    };
    let _ = session.retry(sketch, 1).unwrap();
    session
}

fn refining() -> ClientSession {
    welcomed(Plan::Refine)
}

fn refining_midway() -> ClientSession {
    let mut session = refining();
    let _ = take(&mut session, buckets_frame(key(), 1, &summaries(5), false));
    session
}

fn listing_buckets() -> ClientSession {
    let mut session = refining();
    let _ = take(&mut session, buckets_frame(key(), 1, &summaries(16), true));
    session
}

fn await_missing() -> ClientSession {
    let mut session = listing_buckets();
    let covered = [id(1), id(2)].into_iter().collect();
    let _ = session.bucket_ids(&[0b1, 0], &[5], &[], covered).unwrap();
    session
}

fn relisting() -> ClientSession {
    let mut session = await_missing();
    let _ = take(&mut session, missing_frame(&[], true, &[0b10, 0]));
    session
}

fn catching_up() -> ClientSession {
    welcomed(Plan::CatchUp)
}

fn steady() -> ClientSession {
    welcomed(Plan::InSync)
}

fn backfilling() -> ClientSession {
    let mut session = steady();
    let frame = session
        .change_subscription(9, vec!["a/**".into()], true)
        .unwrap();
    assert!(frame.is_some());
    session
}

fn failed() -> ClientSession {
    let mut session = steady();
    let _ = refuse(&mut session, done(1));
    session
}

/// A frame a session must refuse: what it is, the phase to hand it in, the reason.
type Refusal = (&'static str, fn() -> ClientSession, Message, Misbehaved);

/// Hands each frame to a fresh session in its phase; each must be refused for its reason.
fn refuse_all(cases: Vec<Refusal>) {
    for (what, make, frame, reason) in cases {
        let mut session = make();
        assert_eq!(refuse(&mut session, frame), reason, "{what}");
    }
}

/// One frame of every message type, either direction; refused wherever its type is.
fn samples() -> Vec<Message> {
    vec![
        Message::Hello(Hello {
            min_version: 1,
            max_version: 1,
            capabilities: Capabilities::NONE,
            hints: SyncHints::default(),
            credit: 1,
            subscribe: None,
        }),
        welcome(Plan::CatchUp, Capabilities::SUPPORTED, None),
        Message::Ids(Ids {
            ids: Vec::new(),
            last: true,
        }),
        Message::Need(Need {
            ids: Vec::new(),
            last: false,
        }),
        batch(1, "sample"),
        done(1),
        Message::Credit(Credit { bytes: 1 }),
        Message::Pack(protocol::Pack {
            number: 1,
            nodes: Vec::new(),
        }),
        Message::Ack(Ack {
            number: 1,
            outcomes: vec![Outcome::Pending],
        }),
        Message::Resolved(Resolved {
            outcomes: Vec::new(),
        }),
        Message::Broadcast(Broadcast {
            first_seq: 1,
            nodes: Vec::new(),
        }),
        Message::Presence(Presence {
            state: Bytes::new(),
        }),
        Message::PresenceUpdate(PresenceUpdate {
            peer: 2,
            state: Bytes::new(),
        }),
        Message::ErrorMessage(ErrorMessage::new(ErrorCode::Unexpected, None, "sample")),
        sketch_frame(key(), 4, false, &empty_cells(3)),
        Message::Want(Want {
            shorts: Bytes::new(),
            last: true,
            shared: Some(SetDigest::default()),
        }),
        Message::Retry(Retry { cells_left: 0 }),
        buckets_frame(key(), 1, &summaries(2), false),
        Message::BucketIds(BucketIds {
            differing: Bytes::new(),
            shorts: Bytes::new(),
            sketches: Bytes::new(),
            last: true,
        }),
        missing_frame(&[], false, &[]),
        Message::Subscribe(Subscribe {
            number: 1,
            patterns: Vec::new(),
        }),
        Message::Unsubscribe(Unsubscribe {
            number: 1,
            patterns: Vec::new(),
        }),
        Message::Subscribed(Subscribed {
            number: 9,
            patterns: vec!["a/**".into()],
            seq: 3,
        }),
    ]
}

/// protocol/README.md §2.2, refined by the steps of §5.7.5 and §5.9: in each phase the frames
/// listed are taken, and every other type is refused as unexpected there, naming the type and
/// the phase. The four phases where the client owes an answer, and a failed session, take no
/// frame at all: that is the caller's mistake, not the relay's.
#[test]
fn every_phase_takes_exactly_its_frames() {
    let sample_types: Vec<MessageType> = samples().iter().map(Message::message_type).collect();
    assert_eq!(
        sample_types,
        MessageType::ALL,
        "a sample of every type, in order"
    );
    let presence = || {
        Message::PresenceUpdate(PresenceUpdate {
            peer: 2,
            state: Bytes::from_static(b"here"),
        })
    };
    let error = || Message::ErrorMessage(ErrorMessage::new(ErrorCode::Malformed, None, "x"));
    let subscribed = |number| {
        Message::Subscribed(Subscribed {
            number,
            patterns: vec!["a/**".into()],
            seq: 3,
        })
    };
    type Row = (fn() -> ClientSession, ClientPhase, Vec<Message>);
    let rows: Vec<Row> = vec![
        (
            await_welcome,
            ClientPhase::AwaitWelcome,
            vec![welcome(Plan::CatchUp, SKETCHES, None), error()],
        ),
        (
            await_need,
            ClientPhase::AwaitNeed,
            vec![
                Message::Need(Need {
                    ids: vec![id(2)],
                    last: false,
                }),
                presence(),
                error(),
            ],
        ),
        (
            await_sketch,
            ClientPhase::AwaitSketch,
            vec![
                sketch_frame(key(), 4, false, &empty_cells(3)),
                buckets_frame(key(), 1, &summaries(3), false),
                presence(),
                error(),
            ],
        ),
        (
            sketching,
            ClientPhase::Sketching,
            vec![
                sketch_frame(key(), 4, false, &empty_cells(3)),
                presence(),
                error(),
            ],
        ),
        (
            wanted,
            ClientPhase::Wanted,
            vec![
                batch(2, "wanted"),
                done(2),
                buckets_frame(key(), 1, &summaries(3), false),
                presence(),
                error(),
            ],
        ),
        (
            retried,
            ClientPhase::Retried,
            vec![
                sketch_frame(key(), 5, true, &empty_cells(3)),
                buckets_frame(key(), 1, &summaries(3), false),
                presence(),
                error(),
            ],
        ),
        (
            retried_extension,
            ClientPhase::RetriedExtension,
            vec![
                buckets_frame(key(), 1, &summaries(3), false),
                presence(),
                error(),
            ],
        ),
        (
            refining,
            ClientPhase::Refining,
            vec![
                buckets_frame(key(), 1, &summaries(3), false),
                presence(),
                error(),
            ],
        ),
        (
            refining_midway,
            ClientPhase::Refining,
            vec![
                buckets_frame(key(), 1, &summaries(3), false),
                presence(),
                error(),
            ],
        ),
        (
            await_missing,
            ClientPhase::AwaitMissing,
            vec![missing_frame(&[1], false, &[]), presence(), error()],
        ),
        (
            catching_up,
            ClientPhase::CatchingUp,
            vec![batch(2, "caught"), done(2), presence(), error()],
        ),
        (
            steady,
            ClientPhase::Steady,
            vec![
                Message::Ack(Ack {
                    number: 1,
                    outcomes: Vec::new(),
                }),
                Message::Resolved(Resolved {
                    outcomes: Vec::new(),
                }),
                Message::Broadcast(Broadcast {
                    first_seq: 31,
                    nodes: vec![node("live")],
                }),
                presence(),
                error(),
            ],
        ),
        (
            backfilling,
            ClientPhase::Backfilling,
            vec![
                batch(2, "backfill"),
                subscribed(9),
                Message::Ack(Ack {
                    number: 1,
                    outcomes: Vec::new(),
                }),
                Message::Resolved(Resolved {
                    outcomes: Vec::new(),
                }),
                Message::Broadcast(Broadcast {
                    first_seq: 31,
                    nodes: vec![node("live")],
                }),
                presence(),
                error(),
            ],
        ),
    ];
    for (make, phase, accepted) in rows {
        assert_eq!(make().phase(), phase);
        let accepted_types: Vec<MessageType> = accepted.iter().map(Message::message_type).collect();
        // A client takes no client frame, whatever its contents.
        assert!(
            accepted_types
                .iter()
                .all(|ty| ty.direction() != Direction::ClientToRelay)
        );
        for message in accepted {
            let ty = message.message_type();
            let mut session = make();
            let result = session.handle_frame(&encode(message));
            assert!(result.is_ok(), "{phase:?} refused {ty:?}: {result:?}");
        }
        for message in samples() {
            let ty = message.message_type();
            if accepted_types.contains(&ty) {
                continue;
            }
            let mut session = make();
            assert_eq!(
                refuse(&mut session, message),
                Misbehaved::Unexpected { ty, phase },
                "{phase:?} took {ty:?}"
            );
        }
    }
    let owing: Vec<(fn() -> ClientSession, ClientPhase)> = vec![
        (listing_ids, ClientPhase::ListingIds),
        (|| decoding().0, ClientPhase::Decoding),
        (listing_buckets, ClientPhase::ListingBuckets),
        (relisting, ClientPhase::Relisting),
        (failed, ClientPhase::Failed),
    ];
    for (make, phase) in owing {
        assert_eq!(make().phase(), phase);
        assert_eq!(phase.owes_answer(), phase != ClientPhase::Failed);
        for message in samples() {
            let mut session = make();
            let result = session.handle_frame(&encode(message));
            assert!(
                matches!(
                    result,
                    Err(ClientError::Misuse {
                        call: "handle_frame",
                        phase: p
                    }) if p == phase
                ),
                "{phase:?}: {result:?}"
            );
            assert_eq!(session.phase(), ClientPhase::Failed);
        }
    }
}

#[test]
fn welcome_fixes_version_capabilities_epoch_limits_and_plan() {
    let limits = RelayLimits {
        max_ids: 2,
        max_frame: 4096,
        ..RelayLimits::default()
    };
    for (plan, phase) in [
        (Plan::InSync, ClientPhase::Steady),
        (Plan::CatchUp, ClientPhase::CatchingUp),
        (Plan::SendIds, ClientPhase::ListingIds),
        (Plan::Sketch, ClientPhase::AwaitSketch),
        (Plan::Refine, ClientPhase::Refining),
    ] {
        let mut session = started(SKETCHES.union(Capabilities::PRESENCE));
        assert_eq!(session.epoch(), 0);
        assert_eq!(*session.limits(), RelayLimits::default());
        // The relay claims more than we offered: only what both sides support counts.
        let relay = Capabilities::SUPPORTED;
        match take(&mut session, welcome(plan, relay, Some(limits))) {
            ClientEvent::Welcome { welcome, at_hello } => {
                assert_eq!(welcome.plan, plan);
                assert_eq!(at_hello, AT_HELLO, "what hello described comes back");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(session.phase(), phase, "{plan:?}");
        assert_eq!(
            session.capabilities(),
            SKETCHES.union(Capabilities::PRESENCE)
        );
        assert_eq!(session.epoch(), 11);
        assert_eq!(*session.limits(), limits);
        assert_eq!(session.is_steady(), plan == Plan::InSync);
    }
}

#[test]
fn welcome_is_refused_for_a_version_not_offered_or_a_plan_not_negotiated() {
    let mut session = started(Capabilities::SUPPORTED);
    let mut future = welcome(Plan::CatchUp, Capabilities::SUPPORTED, None);
    if let Message::Welcome(w) = &mut future {
        w.version = 2;
    }
    assert!(matches!(
        session.handle_frame(&encode(future)),
        Err(ClientError::Version(2))
    ));
    assert_eq!(session.phase(), ClientPhase::Failed);
    // Plans `sketch` and `refine` need `ibf` and `mst` on both sides: not offered (a client
    // reconciling by id list after a failed verification), or not granted.
    for plan in [Plan::Sketch, Plan::Refine] {
        for (offered, granted) in [
            (Capabilities::PRESENCE, Capabilities::SUPPORTED),
            (Capabilities::SUPPORTED, Capabilities::IBF),
        ] {
            let mut session = started(offered);
            assert_eq!(
                refuse(&mut session, welcome(plan, granted, None)),
                Misbehaved::PlanNotNegotiated(plan)
            );
        }
    }
}

#[test]
fn answers_out_of_turn_are_the_callers_mistake_and_final() {
    let misuse = |result: Result<Vec<Bytes>, ClientError>, call, phase| {
        assert!(
            matches!(result, Err(ClientError::Misuse { call: c, phase: p }) if c == call && p == phase),
            "{call}"
        );
    };
    let mut session = steady();
    misuse(
        session.send_ids(vec![id(1)]),
        "send_ids",
        ClientPhase::Steady,
    );
    assert_eq!(session.phase(), ClientPhase::Failed);
    misuse(
        session.want(&[], SetDigest::default()),
        "want",
        ClientPhase::Failed,
    );
    let mut session = await_missing();
    misuse(
        session.retry(Ibf::new(4).unwrap(), 0).map(|f| vec![f]),
        "retry",
        ClientPhase::AwaitMissing,
    );
    let mut session = await_sketch();
    misuse(
        session.bucket_ids(&[], &[], &[], HashSet::new()),
        "bucket_ids",
        ClientPhase::AwaitSketch,
    );
    let mut session = listing_buckets();
    misuse(session.relist(&[]), "relist", ClientPhase::ListingBuckets);
    // A failed session sends nothing more.
    assert!(session.poll_credit().unwrap().is_none());
    assert!(
        session
            .change_subscription(1, Vec::new(), true)
            .unwrap()
            .is_none()
    );
    assert!(!session.is_steady());
}

#[test]
fn a_frame_that_does_not_decode_ends_the_session() {
    let mut session = steady();
    assert!(matches!(
        session.handle_frame(&[0x92, 0x01]),
        Err(ClientError::Decode(_))
    ));
    assert_eq!(session.phase(), ClientPhase::Failed);
}
