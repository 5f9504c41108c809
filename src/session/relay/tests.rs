//! The relay session machine on its own: which frames each phase takes, what it asks of the
//! room, and how each kind of error is answered (protocol/README.md §2, §6.2, §9).

use super::*;
use crate::node::NodeId;
use crate::protocol::{CloseCode, Credit, ErrorCode, Ids, Subscribe};
use crate::session::Cursor;

fn config() -> RelaySessionConfig {
    let mut config = RelaySessionConfig::default();
    config.limits.max_pack_nodes = 2;
    config.limits.max_ids = 3;
    config.max_total_ids = 5;
    config
}

fn hello(capabilities: Capabilities) -> Hello {
    Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        capabilities,
        hints: SyncHints::default(),
        credit: 1_000,
        subscribe: None,
    }
}

fn frame(message: Message) -> Vec<u8> {
    message.encode().unwrap().to_vec()
}

/// The session's answer as (fault, close code), panicking on anything but a rejection.
fn rejected(reaction: Reaction) -> (Fault, Option<CloseCode>) {
    match reaction {
        Reaction::Reject(error) => (error.fault, error.close_code()),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// A session past `welcome` with `start`.
fn joined(start: Start, capabilities: Capabilities) -> RelaySession {
    let mut session = RelaySession::new(config(), None);
    let reaction = session.handle_frame(&frame(Message::Hello(hello(capabilities))));
    assert!(matches!(reaction, Reaction::Request(Request::Join { .. })));
    session.welcome(start);
    session
}

fn in_sync() -> Start {
    Start::InSync { at: 0 }
}

fn catch_up() -> Start {
    Start::CatchUp {
        cursor: Cursor::new(vec![1, 2], 3),
        stored_only: false,
    }
}

fn pack(nodes: usize) -> Message {
    let room = crate::node::RoomId::new("session-tests").unwrap();
    let nodes = (0..nodes)
        .map(|i| crate::node::Node::child_of(&room, &[], "doc", vec![i as u8]).unwrap())
        .collect();
    Message::Pack(Pack { number: 1, nodes })
}

#[test]
fn before_hello_only_hello_is_taken_and_anything_else_closes() {
    let mut garbled = RelaySession::new(config(), None);
    assert_eq!(
        rejected(garbled.handle_frame(b"\x01\x02")),
        (Fault::Malformed, Some(CloseCode::ProtocolViolation))
    );
    assert!(
        matches!(garbled.handle_frame(b"\x01"), Reaction::None),
        "closed"
    );
    let mut early = RelaySession::new(config(), None);
    assert_eq!(
        rejected(early.handle_frame(&frame(pack(1)))),
        (Fault::Unexpected, Some(CloseCode::ProtocolViolation))
    );
    let mut old = RelaySession::new(config(), None);
    let mut too_new = hello(Capabilities::NONE);
    too_new.min_version = PROTOCOL_VERSION + 1;
    too_new.max_version = PROTOCOL_VERSION + 1;
    assert_eq!(
        rejected(old.handle_frame(&frame(Message::Hello(too_new)))),
        (
            Fault::UnsupportedVersion,
            Some(CloseCode::UnsupportedVersion)
        )
    );
}

#[test]
fn a_subscription_needs_its_capability_and_valid_patterns_in_hello() {
    let mut session = RelaySession::new(config(), None);
    let mut asked = hello(Capabilities::NONE);
    asked.subscribe = Some(vec!["doc/**".into()]);
    assert_eq!(
        rejected(session.handle_frame(&frame(Message::Hello(asked)))),
        (Fault::Unexpected, Some(CloseCode::ProtocolViolation))
    );
    let mut session = RelaySession::new(config(), None);
    let mut bad = hello(Capabilities::SUBSCRIPTIONS);
    bad.subscribe = Some(vec!["a/b**".into()]);
    assert_eq!(
        rejected(session.handle_frame(&frame(Message::Hello(bad)))),
        (Fault::BadPattern, Some(CloseCode::ProtocolViolation)),
        "a bad pattern in hello closes: the session cannot know what it subscribes to"
    );
}

#[test]
fn counted_errors_close_the_session_at_the_limit_and_not_before() {
    let mut session = joined(in_sync(), Capabilities::NONE);
    let stray = frame(Message::Ids(Ids {
        ids: Vec::new(),
        last: true,
    }));
    for _ in 1..MAX_ERRORS {
        assert_eq!(
            rejected(session.handle_frame(&stray)),
            (Fault::Unexpected, None)
        );
    }
    assert_eq!(
        rejected(session.handle_frame(&stray)),
        (Fault::Unexpected, Some(CloseCode::ProtocolViolation))
    );
    assert!(matches!(
        session.handle_frame(&frame(pack(1))),
        Reaction::None
    ));
}

#[test]
fn bad_patterns_in_a_live_subscription_change_do_not_count() {
    let mut session = joined(in_sync(), Capabilities::SUBSCRIPTIONS);
    let bad = frame(Message::Subscribe(Subscribe {
        number: 1,
        patterns: vec!["a/b**".into()],
    }));
    for _ in 0..MAX_ERRORS * 2 {
        let reaction = session.handle_frame(&bad);
        assert_eq!(rejected(reaction), (Fault::BadPattern, None));
    }
    let reaction = session.handle_frame(&frame(pack(1)));
    assert!(matches!(reaction, Reaction::Request(Request::Pack(_))));
    let good = frame(Message::Subscribe(Subscribe {
        number: 2,
        patterns: vec!["doc/**".into()],
    }));
    assert!(matches!(
        session.handle_frame(&good),
        Reaction::Request(Request::ChangeSubscription { add: true, .. })
    ));
}

#[test]
fn packs_are_taken_when_steady_within_the_node_limit() {
    let mut catching_up = joined(catch_up(), Capabilities::NONE);
    assert_eq!(
        rejected(catching_up.handle_frame(&frame(pack(1)))),
        (Fault::Unexpected, None)
    );
    assert_eq!(catching_up.caught_up(), Some(Ending::AtLatest));
    assert!(matches!(
        catching_up.handle_frame(&frame(pack(2))),
        Reaction::Request(Request::Pack(p)) if p.nodes.len() == 2
    ));
    let (fault, close) = rejected(catching_up.handle_frame(&frame(pack(3))));
    assert_eq!((fault, close), (Fault::LimitExceeded, None));
    assert_eq!(fault.error_code(), ErrorCode::LimitExceeded);
}

#[test]
fn an_id_list_is_collected_until_last_and_bounded_in_total() {
    let ids = |n: u8, last: bool| {
        frame(Message::Ids(Ids {
            ids: (0..n).map(|i| NodeId([i; 32])).collect(),
            last,
        }))
    };
    let mut session = joined(Start::SendIds, Capabilities::NONE);
    assert!(matches!(
        session.handle_frame(&ids(3, false)),
        Reaction::None
    ));
    assert!(matches!(
        session.handle_frame(&ids(2, true)),
        Reaction::Request(Request::Ids(all)) if all.len() == 5
    ));
    let mut over_frame = joined(Start::SendIds, Capabilities::NONE);
    assert_eq!(
        rejected(over_frame.handle_frame(&ids(4, false))),
        (Fault::LimitExceeded, None),
        "more ids in one frame than announced: counted, not fatal"
    );
    let mut over_total = joined(Start::SendIds, Capabilities::NONE);
    assert!(matches!(
        over_total.handle_frame(&ids(3, false)),
        Reaction::None
    ));
    assert_eq!(
        rejected(over_total.handle_frame(&ids(3, false))),
        (Fault::ListTooLong, Some(CloseCode::ProtocolViolation))
    );
}

#[test]
fn credit_is_an_exact_byte_balance_with_carried_overdraft() {
    let mut session = joined(catch_up(), Capabilities::NONE);
    assert!(session.has_credit(), "hello granted 1,000 bytes");
    session.spend_credit(1_600);
    assert!(!session.has_credit(), "600 bytes overdrawn");
    let grant = |bytes| frame(Message::Credit(Credit { bytes }));
    assert!(matches!(
        session.handle_frame(&grant(600)),
        Reaction::Request(Request::Pump)
    ));
    assert!(!session.has_credit(), "the grant repaid the overdraft only");
    let _ = session.handle_frame(&grant(1));
    assert!(session.has_credit());
    let _ = session.handle_frame(&grant(u64::MAX));
    session.spend_credit(config().max_credit);
    assert!(
        !session.has_credit(),
        "credit above the cap is discarded, not remembered"
    );
}

fn sketch_round(extended: bool) -> SketchRound {
    SketchRound {
        log2: 4,
        at_seq: 7,
        extended,
    }
}

fn want(shorts: &[u64], last: bool) -> Vec<u8> {
    frame(Message::Want(crate::protocol::Want {
        shorts: crate::protocol::pack_shorts(shorts.iter().copied()),
        last,
        shared: last.then(SetDigest::default),
    }))
}

fn bucket_ids(differing: &[u8], shorts: &[u64], last: bool) -> Vec<u8> {
    frame(Message::BucketIds(crate::protocol::BucketIds {
        differing: Bytes::copy_from_slice(differing),
        shorts: crate::protocol::pack_shorts(shorts.iter().copied()),
        sketches: Bytes::new(),
        last,
    }))
}

#[test]
fn the_handshake_deadline_lasts_until_welcome_and_frames_while_joining_are_refused() {
    let deadline = t0();
    let mut session = RelaySession::new(config(), Some(deadline));
    assert_eq!(session.handshake_deadline(), Some(deadline));
    assert!(!session.has_joined());
    let reaction = session.handle_frame(&frame(Message::Hello(hello(Capabilities::NONE))));
    assert!(matches!(reaction, Reaction::Request(Request::Join { .. })));
    assert_eq!(
        session.handshake_deadline(),
        Some(deadline),
        "still due while the room plans"
    );
    assert!(!session.has_joined(), "not welcomed yet");
    assert_eq!(
        rejected(session.handle_frame(&frame(Message::Hello(hello(Capabilities::NONE))))),
        (Fault::Unexpected, None),
        "a second hello while the room plans the first"
    );
    session.welcome(in_sync());
    assert_eq!(session.handshake_deadline(), None);
    assert!(session.has_joined() && session.is_steady());
}

#[allow(clippy::disallowed_methods)]
fn t0() -> std::time::Instant {
    std::time::Instant::now()
}

#[test]
fn a_want_answers_the_sketch_that_is_out_and_a_retry_hands_it_back() {
    let mut session = joined(Start::Sketch(sketch_round(false)), Capabilities::IBF);
    assert!(matches!(
        session.handle_frame(&want(&[1, 2], false)),
        Reaction::None
    ));
    match session.handle_frame(&want(&[3], true)) {
        Reaction::Request(Request::Want { shorts, sketch, .. }) => {
            assert_eq!(shorts, vec![1, 2, 3]);
            assert_eq!(sketch, sketch_round(false));
        }
        other => panic!("expected want, got {other:?}"),
    }
    assert_eq!(
        rejected(session.handle_frame(&want(&[4], true))),
        (Fault::Unexpected, None),
        "the room is settling the first answer: a second one is out of order"
    );

    let mut session = joined(Start::Sketch(sketch_round(false)), Capabilities::IBF);
    let retry = frame(Message::Retry(crate::protocol::Retry { cells_left: 3 }));
    assert!(matches!(
        session.handle_frame(&retry),
        Reaction::Request(Request::Retry(round)) if round == sketch_round(false)
    ));
    assert_eq!(
        rejected(session.handle_frame(&retry)),
        (Fault::Unexpected, None),
        "no sketch is out until the room sends the extension"
    );
    session.sketch_sent(sketch_round(true));
    assert!(matches!(
        session.handle_frame(&retry),
        Reaction::Request(Request::Retry(round)) if round.extended
    ));
}

#[test]
fn want_frames_carry_the_shared_digest_on_the_last_only() {
    let mut session = joined(Start::Sketch(sketch_round(false)), Capabilities::IBF);
    let early_digest = frame(Message::Want(crate::protocol::Want {
        shorts: Bytes::new(),
        last: false,
        shared: Some(SetDigest::default()),
    }));
    assert_eq!(
        rejected(session.handle_frame(&early_digest)),
        (Fault::Malformed, None)
    );
    let odd = frame(Message::Want(crate::protocol::Want {
        shorts: Bytes::from_static(&[1, 2, 3]),
        last: false,
        shared: None,
    }));
    assert_eq!(
        rejected(session.handle_frame(&odd)),
        (Fault::Malformed, None)
    );
}

#[test]
fn bucket_ids_answer_the_round_that_is_out_and_a_relisting_comes_back_with_the_second() {
    let round = RefineRound {
        depth: 1,
        at_seq: 9,
        expected: 4,
    };
    let mut session = joined(Start::Refine(round), Capabilities::MST);
    assert_eq!(
        rejected(session.handle_frame(&bucket_ids(&[], &[1], false))),
        (Fault::Malformed, None),
        "the first frame carries the bitmap"
    );
    assert!(matches!(
        session.handle_frame(&bucket_ids(&[0b1, 0], &[1], false)),
        Reaction::None
    ));
    assert_eq!(
        rejected(session.handle_frame(&bucket_ids(&[0b1, 0], &[], true))),
        (Fault::Malformed, None),
        "only the first frame carries the bitmap"
    );
    match session.handle_frame(&bucket_ids(&[], &[2], true)) {
        Reaction::Request(Request::BucketIds {
            differing,
            shorts,
            round: answered,
            relisting,
            ..
        }) => {
            assert_eq!(&differing[..], &[0b1, 0]);
            assert_eq!(shorts, vec![1, 2]);
            assert_eq!(answered, round);
            assert!(relisting.is_none(), "a first round");
        }
        other => panic!("expected bucket_ids, got {other:?}"),
    }
    let relisting = Relisting {
        buckets: Bytes::from_static(&[0b1, 0]),
        cursor: Cursor::new(vec![5], 10),
    };
    session.refine(round, Some(Box::new(relisting)));
    match session.handle_frame(&bucket_ids(&[0b1, 0], &[], true)) {
        Reaction::Request(Request::BucketIds {
            relisting: Some(relisting),
            ..
        }) => assert_eq!(relisting.cursor.next(), 5, "the first round's cursor"),
        other => panic!("expected a second round, got {other:?}"),
    }
}

#[test]
fn a_catch_up_stream_refuses_packs_and_a_backfill_takes_them() {
    let mut session = joined(catch_up(), Capabilities::SUBSCRIPTIONS);
    assert!(session.is_streaming() && !session.is_backfilling());
    assert_eq!(
        rejected(session.handle_frame(&frame(pack(1)))),
        (Fault::Unexpected, None)
    );
    let stream = session.stream_mut().expect("streaming");
    stream.wait_for(2);
    assert_eq!(stream.waiting_on(), Some(2));
    stream.resume();
    assert_eq!(stream.waiting_on(), None);
    assert_eq!(session.caught_up(), Some(Ending::AtLatest));
    assert_eq!(session.caught_up(), None, "a steady session has no stream");

    session.stream(Stream::new(Cursor::new(vec![1], 2), Ending::Subscribed(4)));
    assert!(session.is_backfilling() && !session.is_steady());
    assert!(matches!(
        session.handle_frame(&frame(pack(1))),
        Reaction::Request(Request::Pack(_))
    ));
    let change = frame(Message::Subscribe(Subscribe {
        number: 5,
        patterns: vec!["doc/**".into()],
    }));
    assert_eq!(
        rejected(session.handle_frame(&change)),
        (Fault::Unexpected, None),
        "one subscription change at a time"
    );
    assert_eq!(session.caught_up(), Some(Ending::Subscribed(4)));
}

#[test]
fn a_catch_up_of_stored_nodes_only_ends_at_the_last_stored() {
    let start = Start::CatchUp {
        cursor: Cursor::new(Vec::new(), 1),
        stored_only: true,
    };
    assert_eq!(start.plan(), crate::protocol::Plan::CatchUp);
    let mut session = joined(start, Capabilities::NONE);
    assert_eq!(
        session.stream_mut().map(|stream| stream.ending()),
        Some(Ending::AtStored)
    );
}
