//! The relay session machine on its own: which frames each phase takes, what it asks of the
//! room, and how each kind of error is answered (protocol/README.md §2, §6.2, §9).

use super::*;
use crate::node::NodeId;
use crate::protocol::{CloseCode, Credit, ErrorCode, Ids, Plan, Subscribe};

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

/// A session past `welcome` with `plan`.
fn joined(plan: Plan, capabilities: Capabilities) -> RelaySession {
    let mut session = RelaySession::new(config());
    let reaction = session.handle_frame(&frame(Message::Hello(hello(capabilities))));
    assert!(matches!(reaction, Reaction::Request(Request::Join { .. })));
    session.welcome(plan);
    session
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
    let mut garbled = RelaySession::new(config());
    assert_eq!(
        rejected(garbled.handle_frame(b"\x01\x02")),
        (Fault::Malformed, Some(CloseCode::ProtocolViolation))
    );
    assert!(
        matches!(garbled.handle_frame(b"\x01"), Reaction::None),
        "closed"
    );
    let mut early = RelaySession::new(config());
    assert_eq!(
        rejected(early.handle_frame(&frame(pack(1)))),
        (Fault::Unexpected, Some(CloseCode::ProtocolViolation))
    );
    let mut old = RelaySession::new(config());
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
    let mut session = RelaySession::new(config());
    let mut asked = hello(Capabilities::NONE);
    asked.subscribe = Some(vec!["doc/**".into()]);
    assert_eq!(
        rejected(session.handle_frame(&frame(Message::Hello(asked)))),
        (Fault::Unexpected, Some(CloseCode::ProtocolViolation))
    );
    let mut session = RelaySession::new(config());
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
    let mut session = joined(Plan::InSync, Capabilities::NONE);
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
    let mut session = joined(Plan::InSync, Capabilities::SUBSCRIPTIONS);
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
    let mut catching_up = joined(Plan::CatchUp, Capabilities::NONE);
    assert_eq!(
        rejected(catching_up.handle_frame(&frame(pack(1)))),
        (Fault::Unexpected, None)
    );
    catching_up.caught_up();
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
    let mut session = joined(Plan::SendIds, Capabilities::NONE);
    assert!(matches!(
        session.handle_frame(&ids(3, false)),
        Reaction::None
    ));
    assert!(matches!(
        session.handle_frame(&ids(2, true)),
        Reaction::Request(Request::Ids(all)) if all.len() == 5
    ));
    let mut over_frame = joined(Plan::SendIds, Capabilities::NONE);
    assert_eq!(
        rejected(over_frame.handle_frame(&ids(4, false))),
        (Fault::LimitExceeded, None),
        "more ids in one frame than announced: counted, not fatal"
    );
    let mut over_total = joined(Plan::SendIds, Capabilities::NONE);
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
    let mut session = joined(Plan::CatchUp, Capabilities::NONE);
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
