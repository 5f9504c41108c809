//! Hub: handshake.

use super::*;

#[test]
fn in_sync_hello_is_answered_in_one_round_trip() {
    let a = node(&[], "a", "a");
    let b = node(&[&a], "b", "b");
    let mut relay = Relay::new(populated(&[&a, &b]));
    let sent = relay.join(1, hints_of(relay.hub.room()), 0, Capabilities::NONE);
    assert_eq!(sent.frames.len(), 1, "{:?}", sent.frames);
    let welcome = welcome_of(&sent.to(1));
    assert_eq!(
        (welcome.plan, welcome.epoch, welcome.seq, welcome.peer),
        (Plan::InSync, EPOCH, 2, 1)
    );
    assert_eq!(welcome.version, PROTOCOL_VERSION);
    assert!(sent.frames[0].1.len() < 300, "welcome is small");
    // Steady at once: it may push and receives broadcasts.
    assert_eq!(
        relay
            .hub
            .recipients(Audience::Live { except: None })
            .collect::<Vec<_>>(),
        vec![1]
    );
    let c = node(&[&b], "c", "c");
    let sent = relay.frame(1, pack(1, &[&c]));
    assert!(matches!(sent.to(1)[..], [Message::Ack(_)]));
    // An empty room and an empty client are in sync too.
    let mut relay = Relay::new(empty_room());
    let sent = relay.join(1, SyncHints::default(), 0, Capabilities::NONE);
    assert_eq!(welcome_of(&sent.to(1)).plan, Plan::InSync);
}

#[test]
fn capabilities_are_intersected() {
    let mut relay = Relay::new(empty_room());
    let offered = Capabilities(Capabilities::PRESENCE.0 | (1 << 40));
    let sent = relay.join(1, SyncHints::default(), 0, offered);
    assert_eq!(welcome_of(&sent.to(1)).capabilities, Capabilities::PRESENCE);
    let sent = relay.join(2, SyncHints::default(), 0, Capabilities(1 << 40));
    assert_eq!(welcome_of(&sent.to(2)).capabilities, Capabilities::NONE);
}

#[test]
fn handshake_timeout_closes_with_4001() {
    let mut relay = Relay::new(empty_room());
    let start = relay.now;
    relay.hub.connect(1, start);
    relay.hub.connect(2, start + Duration::from_secs(5));
    let deadline = start + HubConfig::default().handshake_timeout;
    assert_eq!(relay.hub.poll_timeout(), Some(deadline));
    let sent = relay.timeout(deadline - Duration::from_millis(1));
    assert!(sent.closes.is_empty());
    let sent = relay.timeout(deadline);
    assert_eq!(sent.closes, vec![(1, CloseCode::HandshakeTimeout)]);
    assert_eq!(sent.closes[0].1.code(), 4001);
    assert_eq!(relay.hub.session_count(), 1);
    // A session that said hello in time is not timed out.
    relay.now = deadline;
    let sent = relay.frame(2, hello(SyncHints::default(), 0, Capabilities::NONE));
    assert_eq!(welcome_of(&sent.to(2)).plan, Plan::InSync);
    assert_eq!(relay.hub.poll_timeout(), None);
    let sent = relay.timeout(deadline + Duration::from_secs(60));
    assert!(sent.closes.is_empty());
    assert_eq!(relay.hub.session_count(), 1);
}

#[test]
fn bad_hello_closes_with_4002() {
    let not_hello = Message::Credit(Credit { bytes: 5 });
    for first in [
        vec![0xc1],
        vec![0x92, 0x01, 0xc0],
        b"hello".to_vec(),
        not_hello.encode().unwrap().to_vec(),
    ] {
        let mut relay = Relay::new(empty_room());
        relay.hub.connect(1, relay.now);
        let sent = relay.raw(1, &first);
        assert_eq!(sent.closes, vec![(1, CloseCode::ProtocolViolation)]);
        assert_eq!(sent.closes[0].1.code(), 4002);
        assert!(matches!(sent.to(1)[..], [Message::ErrorMessage(_)]));
        assert_eq!(relay.hub.session_count(), 0);
        // Later frames from the closed session are ignored.
        let sent = relay.frame(1, hello(SyncHints::default(), 0, Capabilities::NONE));
        assert!(sent.frames.is_empty() && sent.closes.is_empty());
    }
}

#[test]
fn unsupported_version_closes_with_4003_and_an_error() {
    for (min, max) in [(2, 3), (0, 0)] {
        let mut relay = Relay::new(empty_room());
        relay.hub.connect(1, relay.now);
        let sent = relay.frame(
            1,
            Message::Hello(Hello {
                min_version: min,
                max_version: max,
                capabilities: Capabilities::NONE,
                hints: SyncHints::default(),
                credit: 0,
                subscribe: None,
            }),
        );
        assert_eq!(sent.closes, vec![(1, CloseCode::UnsupportedVersion)]);
        assert_eq!(sent.closes[0].1.code(), 4003);
        match sent.to(1)[..] {
            [Message::ErrorMessage(e)] => {
                assert_eq!(e.code, ErrorCode::UnsupportedVersion.code());
                assert_eq!(e.message_type, MessageType::Hello.code());
            }
            ref other => panic!("{other:?}"),
        }
    }
}

#[test]
fn errors_after_hello_keep_the_session_until_the_limit() {
    let mut relay = Relay::new(empty_room());
    let _ = join_steady(&mut relay, 1, Capabilities::NONE);
    let a = node(&[], "a", "a");
    for i in 1..crate::session::relay::MAX_ERRORS {
        let sent = relay.raw(1, &[0x92, 0x05]);
        assert!(sent.closes.is_empty(), "closed after {i} errors");
        assert!(matches!(sent.to(1)[..], [Message::ErrorMessage(_)]));
        // The session still works between errors.
        if i == 1 {
            let sent = relay.frame(1, pack(1, &[&a]));
            assert!(matches!(sent.to(1)[..], [Message::Ack(_)]));
        }
    }
    let sent = relay.raw(1, &[0x92, 0x05]);
    assert_eq!(sent.closes, vec![(1, CloseCode::ProtocolViolation)]);
    assert_eq!(relay.hub.room().seq(), 1, "accepted state survives");
}

#[test]
fn pack_over_the_node_limit_is_refused_whole() {
    let config = with_limits(RelayLimits {
        max_pack_nodes: 2,
        ..RelayLimits::default()
    });
    let mut relay = Relay::with_config(empty_room(), config);
    let _ = join_steady(&mut relay, 1, Capabilities::NONE);
    let a = node(&[], "a", "a");
    let b = node(&[&a], "b", "b");
    let c = node(&[&b], "c", "c");
    let sent = relay.frame(1, pack(1, &[&a, &b, &c]));
    match sent.to(1)[..] {
        [Message::ErrorMessage(e)] => assert_eq!(e.code, ErrorCode::LimitExceeded.code()),
        ref other => panic!("{other:?}"),
    }
    assert_eq!(relay.hub.room().seq(), 0);
}
