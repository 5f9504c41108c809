//! Hub: subscriptions.

use super::*;
use crate::pattern::PatternSet;

#[test]
fn a_subscribed_cold_client_gets_only_the_matching_nodes_and_their_digest() {
    let dag = mixed_room(40);
    let mut relay = Relay::new(populated(&dag.iter().collect::<Vec<_>>()));
    let sent = join_subscribed(&mut relay, 1, SyncHints::default(), &["docs/**"], SUBS);
    let welcome = welcome_of(&sent.to(1));
    assert_eq!(welcome.plan, Plan::CatchUp);
    assert!(welcome.capabilities.contains(SUBS));
    let expected = matching(&dag, &["docs/"]);
    assert_eq!(nodes_sent(&sent.to(1)), expected);
    let Some(Message::CatchUpDone(done)) = sent.to(1).last().copied() else {
        panic!("no catch_up_done");
    };
    assert_eq!(done.digest, SetDigest::of(&expected));
    assert_eq!(done.seq, 40);
    // Reconnecting with that watermark: nothing matching is new, so in sync at once; after
    // more nodes, only the matching new ones come.
    let hints = SyncHints {
        digest: SetDigest::of(&expected),
        watermark: Some(Watermark {
            epoch: EPOCH,
            seq: 40,
        }),
        ..SyncHints::default()
    };
    let sent = join_subscribed(&mut relay, 2, hints.clone(), &["docs/**"], SUBS);
    assert_eq!(welcome_of(&sent.to(2)).plan, Plan::InSync);
    // The same, but holding a matching node the relay has not seen (the digest covers the
    // client's matching nodes): not in sync (in sync would mark it as held); the catch-up is
    // empty and the client pushes its node afterwards.
    let mut with_offline = expected.clone();
    with_offline.push(NodeId([7; 32]));
    let offline = SyncHints {
        digest: SetDigest::of(&with_offline),
        unsynced: 1,
        ..hints.clone()
    };
    let sent = join_subscribed(&mut relay, 4, offline, &["docs/**"], SUBS);
    assert_eq!(welcome_of(&sent.to(4)).plan, Plan::CatchUp);
    assert!(nodes_sent(&sent.to(4)).is_empty());
    assert!(matches!(sent.to(4).last(), Some(Message::CatchUpDone(_))));
    // An unsynced node outside the subscription is not in the digest: the subset is in sync
    // (the client still pushes that node).
    let outside = SyncHints {
        unsynced: 1,
        ..hints.clone()
    };
    let sent = join_subscribed(&mut relay, 5, outside, &["docs/**"], SUBS);
    assert_eq!(welcome_of(&sent.to(5)).plan, Plan::InSync);
    let more: Vec<Node> = ["notes/x", "docs/y", "misc/z"]
        .iter()
        .map(|p| node(&[dag.last().unwrap()], p, "more"))
        .collect();
    let _ = join_steady(&mut relay, 9, Capabilities::NONE);
    let _ = relay.frame(9, pack(1, &more.iter().collect::<Vec<_>>()));
    let sent = join_subscribed(&mut relay, 3, hints, &["docs/**"], SUBS);
    assert_eq!(welcome_of(&sent.to(3)).plan, Plan::CatchUp);
    assert_eq!(nodes_sent(&sent.to(3)), vec![more[1].id]);
}

#[test]
fn broadcasts_reach_only_the_sessions_whose_subscription_matches() {
    let root = node(&[], "misc/root", "root");
    let mut relay = Relay::new(populated(&[&root]));
    let hints = hints_of(relay.hub.room());
    let _ = join_subscribed(&mut relay, 1, hints.clone(), &["docs/**"], SUBS);
    let _ = join_subscribed(&mut relay, 2, hints.clone(), &["notes/*", "**/deep"], SUBS);
    let _ = join_steady(&mut relay, 3, Capabilities::NONE);
    let _ = join_steady(&mut relay, 4, Capabilities::NONE);
    let docs = node(&[&root], "docs/a/b", "1");
    let notes = node(&[&docs], "notes/n", "2");
    let misc = node(&[&notes], "misc/x", "3");
    let deep = node(&[&misc], "docs/deep", "4");
    let sent = relay.frame(4, pack(1, &[&docs, &notes, &misc, &deep]));
    assert_eq!(nodes_sent(&sent.to(1)), vec![docs.id, deep.id]);
    assert_eq!(nodes_sent(&sent.to(2)), vec![notes.id, deep.id]);
    assert_eq!(
        nodes_sent(&sent.to(3)),
        vec![docs.id, notes.id, misc.id, deep.id]
    );
    assert!(nodes_sent(&sent.to(4)).is_empty(), "no echo to the sender");
    // Runs of consecutive numbers: session 1 gets two broadcasts (2, then 5), each with the
    // numbers of its nodes.
    let firsts: Vec<u64> = sent
        .to(1)
        .iter()
        .filter_map(|m| match m {
            Message::Broadcast(b) => Some(b.first_seq),
            _ => None,
        })
        .collect();
    assert_eq!(firsts, vec![2, 5]);
    // Session 2's leaving drops its patterns: routing then tests nothing for it.
    let _ = relay.hub.disconnect(2);
    let more = node(&[&deep], "notes/m", "5");
    let sent = relay.frame(4, pack(2, &[&more]));
    assert!(nodes_sent(&sent.to(1)).is_empty());
    assert_eq!(nodes_sent(&sent.to(3)), vec![more.id]);
}

#[test]
fn subscribing_backfills_what_newly_matches_then_says_subscribed() {
    let dag = mixed_room(20);
    let mut relay = Relay::new(populated(&dag.iter().collect::<Vec<_>>()));
    let sent = join_subscribed(&mut relay, 1, SyncHints::default(), &["docs/**"], SUBS);
    assert!(matches!(sent.to(1).last(), Some(Message::CatchUpDone(_))));
    let _ = join_steady(&mut relay, 9, Capabilities::NONE);
    // Backfill of notes: the 5 notes nodes, then `subscribed`.
    let sent = relay.frame(
        1,
        Message::Subscribe(protocol::Subscribe {
            number: 7,
            patterns: vec!["notes/**".into(), "docs/**".into()],
        }),
    );
    assert_eq!(nodes_sent(&sent.to(1)), matching(&dag, &["notes/"]));
    match sent.to(1).last() {
        Some(Message::Subscribed(s)) => {
            assert_eq!(s.number, 7);
            assert_eq!(s.patterns, vec!["docs/**", "notes/**"]);
            assert_eq!(s.seq, 20);
        }
        other => panic!("expected subscribed, got {other:?}"),
    }
    // Now notes are broadcast to it, misc still not.
    let n = node(&[dag.last().unwrap()], "notes/new", "n");
    let m = node(&[&n], "misc/new", "m");
    let sent = relay.frame(9, pack(1, &[&n, &m]));
    assert_eq!(nodes_sent(&sent.to(1)), vec![n.id]);
    // Unsubscribing is answered at once and stops the notes.
    let sent = relay.frame(
        1,
        Message::Unsubscribe(protocol::Unsubscribe {
            number: 8,
            patterns: vec!["notes/**".into(), "never/subscribed".into()],
        }),
    );
    match &sent.to(1)[..] {
        [Message::Subscribed(s)] => assert_eq!(s.patterns, vec!["docs/**"]),
        other => panic!("{other:?}"),
    }
    let n2 = node(&[&m], "notes/again", "n2");
    let sent = relay.frame(9, pack(2, &[&n2]));
    assert!(nodes_sent(&sent.to(1)).is_empty());
}

#[test]
fn nodes_admitted_during_a_backfill_are_in_the_stream_not_broadcast() {
    let dag = mixed_room(40);
    let config = with_limits(RelayLimits {
        max_frame: 300,
        ..RelayLimits::default()
    });
    let mut relay = Relay::with_config(populated(&dag.iter().collect::<Vec<_>>()), config);
    // Little credit: the backfill stops after a batch.
    relay.hub.connect(1, relay.now);
    let hello = Message::Hello(Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        capabilities: SUBS,
        hints: hints_of(relay.hub.room()),
        credit: 300,
        subscribe: Some(vec!["docs/**".into()]),
    });
    let _ = relay.frame(1, hello);
    let _ = join_steady(&mut relay, 9, Capabilities::NONE);
    let member_credit_spent = relay.frame(
        1,
        Message::Subscribe(protocol::Subscribe {
            number: 1,
            patterns: vec!["notes/**".into()],
        }),
    );
    let mut received = nodes_sent(&member_credit_spent.to(1));
    assert!(
        !matches!(
            member_credit_spent.to(1).last(),
            Some(Message::Subscribed(_))
        ),
        "the backfill should wait for credit"
    );
    // A notes node admitted meanwhile, and a pack from the backfilling session itself.
    let late = node(&[dag.last().unwrap()], "notes/late", "late");
    let sent = relay.frame(9, pack(1, &[&late]));
    assert!(
        !nodes_sent(&sent.to(1)).contains(&late.id),
        "broadcast to a backfilling session"
    );
    let own = node(&[&late], "docs/own", "own");
    let sent = relay.frame(1, pack(1, &[&own]));
    assert!(matches!(sent.to(1).first(), Some(Message::Ack(_))));
    let mut subscribed = None;
    for _ in 0..100 {
        let sent = relay.frame(1, Message::Credit(Credit { bytes: 1 << 20 }));
        received.extend(nodes_sent(&sent.to(1)));
        if let Some(Message::Subscribed(s)) = sent.to(1).last() {
            subscribed = Some(s.clone());
            break;
        }
    }
    let subscribed = subscribed.expect("the backfill ends");
    assert_eq!(subscribed.seq, 42);
    let mut expected = matching(&dag, &["notes/"]);
    expected.push(late.id);
    // Its own node matches too and arrives in the stream (a client drops the duplicate).
    expected.push(own.id);
    assert_eq!(received, expected);
}

#[test]
fn bad_patterns_get_typed_errors_naming_the_pattern() {
    let mut relay = Relay::new(populated(&[&node(&[], "a", "a")]));
    // In hello: refused, and the session closes.
    let sent = join_subscribed(&mut relay, 1, SyncHints::default(), &["ok/**", "a**"], SUBS);
    match &sent.to(1)[..] {
        [Message::ErrorMessage(e)] => {
            assert_eq!(e.code, ErrorCode::BadPattern.code());
            assert!(e.detail.contains("\"a**\""), "{}", e.detail);
            assert!(e.detail.contains("whole segment"), "{}", e.detail);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sent.closes, vec![(1, CloseCode::ProtocolViolation)]);
    // Without the capability, a subscription in hello is a protocol violation.
    let sent = join_subscribed(
        &mut relay,
        2,
        SyncHints::default(),
        &["docs/**"],
        Capabilities::NONE,
    );
    assert_eq!(sent.closes, vec![(2, CloseCode::ProtocolViolation)]);
    // Mid-session: an error, and the session and its subscription stay.
    let hints = hints_of(relay.hub.room());
    let _ = join_subscribed(&mut relay, 3, hints, &["a"], SUBS);
    for (patterns, needle) in [
        (vec!["x//y".to_owned()], "\"x//y\""),
        (vec![r"x\y".to_owned()], "may only escape"),
        (vec!["z".repeat(300)], "at most 256"),
        ((0..65).map(|i| format!("p{i}")).collect(), "more than 64"),
    ] {
        let sent = relay.frame(
            3,
            Message::Subscribe(protocol::Subscribe {
                number: 1,
                patterns,
            }),
        );
        match &sent.to(3)[..] {
            [Message::ErrorMessage(e)] => {
                assert_eq!(e.code, ErrorCode::BadPattern.code());
                assert!(e.detail.contains(needle), "{}", e.detail);
            }
            other => panic!("{other:?}"),
        }
        assert!(sent.closes.is_empty());
    }
    // The whole subscription is bounded too, not only one frame of it.
    for i in 0..63 {
        let sent = relay.frame(
            3,
            Message::Subscribe(protocol::Subscribe {
                number: i,
                patterns: vec![format!("q{i}")],
            }),
        );
        assert!(matches!(sent.to(3)[..], [Message::Subscribed(_)]), "{i}");
    }
    let sent = relay.frame(
        3,
        Message::Subscribe(protocol::Subscribe {
            number: 99,
            patterns: vec!["one/more".into()],
        }),
    );
    match &sent.to(3)[..] {
        [Message::ErrorMessage(e)] => assert_eq!(e.code, ErrorCode::BadPattern.code()),
        other => panic!("{other:?}"),
    }
    // A session without the capability cannot subscribe later either.
    let _ = join_steady(&mut relay, 4, Capabilities::NONE);
    let sent = relay.frame(
        4,
        Message::Subscribe(protocol::Subscribe {
            number: 1,
            patterns: vec!["a".into()],
        }),
    );
    match &sent.to(4)[..] {
        [Message::ErrorMessage(e)] => assert_eq!(e.code, ErrorCode::Unexpected.code()),
        other => panic!("{other:?}"),
    }
}

/// A bad pattern is the application's input: it gets `BadPattern` however often it comes, and
/// never counts toward the error limit (§9.1), while malformed frames still do.
#[test]
fn bad_patterns_do_not_count_toward_the_error_limit() {
    let mut relay = Relay::new(populated(&[&node(&[], "a", "a")]));
    let hints = hints_of(relay.hub.room());
    let _ = join_subscribed(&mut relay, 1, hints, &["a"], SUBS);
    for number in 0..20 {
        let sent = relay.frame(
            1,
            Message::Subscribe(protocol::Subscribe {
                number,
                patterns: vec!["a**".into()],
            }),
        );
        match &sent.to(1)[..] {
            [Message::ErrorMessage(e)] => assert_eq!(e.code, ErrorCode::BadPattern.code()),
            other => panic!("bad subscribe {number}: {other:?}"),
        }
        assert!(sent.closes.is_empty(), "closed after {number} bad patterns");
    }
    let sent = relay.frame(
        1,
        Message::Subscribe(protocol::Subscribe {
            number: 21,
            patterns: vec!["b/**".into()],
        }),
    );
    assert!(matches!(sent.to(1)[..], [Message::Subscribed(_)]));
    // Malformed frames still count: the 8th closes the session.
    for i in 1..=8 {
        let sent = relay.raw(1, &[0xc1]);
        assert_eq!(sent.closes.is_empty(), i < 8, "error {i}");
    }
}

/// A session without a subscription holds `**`: subscribing adds nothing to it, and
/// unsubscribing `**` then leaves no pattern at all, not the ones "added" before (§7.5).
#[test]
fn subscribing_without_a_subscription_changes_nothing() {
    let docs = node(&[], "docs/a", "d");
    let notes = node(&[&docs], "notes/a", "n");
    let mut relay = Relay::new(populated(&[&docs, &notes]));
    let _ = join_steady(&mut relay, 1, SUBS);
    let sent = relay.frame(
        1,
        Message::Subscribe(protocol::Subscribe {
            number: 1,
            patterns: vec!["docs/**".into()],
        }),
    );
    match &sent.to(1)[..] {
        [Message::Subscribed(s)] => assert_eq!(s.patterns, vec!["**".to_owned()]),
        other => panic!("{other:?}"),
    }
    let sent = relay.frame(
        1,
        Message::Unsubscribe(protocol::Unsubscribe {
            number: 2,
            patterns: vec!["**".into()],
        }),
    );
    match &sent.to(1)[..] {
        [Message::Subscribed(s)] => assert!(s.patterns.is_empty(), "{:?}", s.patterns),
        other => panic!("{other:?}"),
    }
    // It now receives nothing, docs included.
    let _ = join_steady(&mut relay, 2, Capabilities::NONE);
    let later = node(&[&notes], "docs/b", "b");
    let sent = relay.frame(2, pack(1, &[&later]));
    assert!(nodes_sent(&sent.to(1)).is_empty());
}

/// `hello.subscribe = []` is a subscription to nothing, not to everything (§4.1): the empty
/// client is in sync with the empty set of matching nodes, and no broadcast reaches it.
#[test]
fn an_empty_subscription_in_hello_matches_nothing() {
    let first = node(&[], "docs/a", "d");
    let mut relay = Relay::new(populated(&[&first]));
    let sent = join_subscribed(&mut relay, 1, SyncHints::default(), &[], SUBS);
    assert_eq!(welcome_of(&sent.to(1)).plan, Plan::InSync);
    assert!(nodes_sent(&sent.to(1)).is_empty());
    let _ = join_steady(&mut relay, 2, Capabilities::NONE);
    let later = node(&[&first], "docs/b", "b");
    let sent = relay.frame(2, pack(1, &[&later]));
    assert!(nodes_sent(&sent.to(1)).is_empty());
    assert!(matches!(sent.to(2).first(), Some(Message::Ack(_))));
}

#[test]
fn the_path_tree_finds_exactly_the_paths_a_subscription_matches() {
    use crate::pattern::{Pattern, PatternLimits, PatternSet};
    let mut rng = StdRng::seed_from_u64(77);
    let segments = ["a", "b", "ab", "x.md", "y.md", "*"];
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..400 {
        let depth = rng.random_range(1..5);
        let path: Vec<&str> = (0..depth)
            .map(|_| segments[rng.random_range(0..segments.len())])
            .collect();
        let parents: Vec<&Node> = nodes.last().into_iter().collect();
        nodes.push(node(&parents, &path.join("/"), &i.to_string()));
    }
    let room = populated(&nodes.iter().collect::<Vec<_>>());
    let pieces = ["a", "b", "*", "**", "*.md", "a*", r"\*", "x.md"];
    for _ in 0..300 {
        let patterns: Vec<Pattern> = (0..rng.random_range(1..4))
            .filter_map(|_| {
                let len = rng.random_range(1..5);
                let source: Vec<&str> = (0..len)
                    .map(|_| pieces[rng.random_range(0..pieces.len())])
                    .collect();
                Pattern::parse(&source.join("/"), &PatternLimits::default()).ok()
            })
            .collect();
        let set = PatternSet::new(patterns);
        let mut expected: Vec<&str> = room
            .paths()
            .map(|(path, _)| path.as_ref())
            .filter(|path| set.matches(path))
            .collect();
        expected.sort_unstable();
        let found = room.paths_matching(set.patterns());
        let found: Vec<&str> = found.iter().map(|p| p.as_ref()).collect();
        assert_eq!(found, expected, "{:?}", set.canonical());
    }
}

#[test]
fn a_new_subscription_sees_paths_that_arrived_after_its_patterns_were_first_used() {
    let root = node(&[], "a/x", "root");
    let mut relay = Relay::new(populated(&[&root]));
    let hints = hints_of(relay.hub.room());
    let _ = join_subscribed(&mut relay, 1, hints, &["**/x"], SUBS);
    let _ = join_steady(&mut relay, 9, Capabilities::NONE);
    let bx = node(&[&root], "b/x", "bx");
    let cy = node(&[&bx], "c/y", "cy");
    let dz = node(&[&cy], "d/z", "dz");
    let _ = relay.frame(9, pack(1, &[&bx, &cy, &dz]));
    // `**/x` was matched against the room when session 1 joined; the paths that came later
    // are filed under it too, so a new subscription built from it is complete.
    let sent = join_subscribed(&mut relay, 2, SyncHints::default(), &["**/x", "c/*"], SUBS);
    assert_eq!(nodes_sent(&sent.to(2)), vec![root.id, bx.id, cy.id]);
    let Some(Message::CatchUpDone(done)) = sent.to(2).last().copied() else {
        panic!("no catch_up_done");
    };
    assert_eq!(done.digest, SetDigest::of([&root.id, &bx.id, &cy.id]));
}

#[test]
fn classes_outlive_their_last_session_until_newer_idle_ones_push_them_out() {
    use crate::room::subscriptions::{MAX_IDLE_CLASSES, Subscriptions};
    let root = node(&[], "docs/x", "root");
    let room = populated(&[&root]);
    let mut subs = Subscriptions::default();
    let set = |p: &str| {
        Arc::new(PatternSet::new([Pattern::parse(
            p,
            &PatternLimits::default(),
        )
        .unwrap()]))
    };
    let first = subs.join(1, set("docs/**"), &room);
    assert!(!subs.is_empty());
    subs.leave(1, first);
    // Idle: kept, but nobody is subscribed.
    assert!(subs.class(first).is_some());
    assert!(subs.is_empty() && subs.has_classes());
    // Joining it again reuses it; leaving makes it the most recently used idle class.
    assert_eq!(subs.join(2, set("docs/**"), &room), first);
    subs.leave(2, first);
    let mut later = Vec::new();
    for i in 0..MAX_IDLE_CLASSES {
        let key = subs.join(10 + i as u64, set(&format!("n{i}/**")), &room);
        subs.leave(10 + i as u64, key);
        later.push(key);
    }
    // One more idle class than allowed: the least recently used went, with its pattern.
    assert!(subs.class(first).is_none());
    assert!(later.iter().all(|key| subs.class(*key).is_some()));
    assert!(subs.sessions_matching("docs/x").is_empty());
}

#[test]
fn class_sketch_structures_are_bounded_and_idle_ones_give_way() {
    use crate::room::subscriptions::Subscriptions;
    let mut nodes = vec![node(&[], "docs/a", "0")];
    for i in 1..10 {
        let parent = nodes.last().unwrap().clone();
        nodes.push(node(&[&parent], "docs/a", &i.to_string()));
    }
    let room = populated(&nodes.iter().collect::<Vec<_>>());
    // No floor: the classes' structures may hold twice the room's 10 nodes.
    let mut subs = Subscriptions::with_recon_floor(0);
    let set = |p: &str| {
        Arc::new(PatternSet::new([Pattern::parse(
            p,
            &PatternLimits::default(),
        )
        .unwrap()]))
    };
    let docs = subs.join(1, set("docs/**"), &room);
    assert!(subs.allow_recon(docs, &room));
    let scope = subs.scope(docs, &room);
    assert!(scope.is_some());
    let everything = subs.join(2, set("**"), &room);
    assert!(subs.allow_recon(everything, &room));
    let _ = subs.scope(everything, &room);
    // A third class of 10 nodes would make 30.
    let star = subs.join(3, set("docs/*"), &room);
    assert!(!subs.allow_recon(star, &room));
    // Built structures are always allowed to their own class.
    assert!(subs.allow_recon(docs, &room));
    // Once a class is idle, its structures give way.
    subs.leave(2, everything);
    assert!(subs.allow_recon(star, &room));
}
