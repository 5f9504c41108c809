//! Catch-up credit, subscription changes and live frames (protocol/README.md §6.2, §7.3, §7.5).

use super::*;

#[test]
fn credit_returns_exactly_the_bytes_of_the_batches_while_streaming() {
    let mut session = catching_up();
    assert!(session.poll_credit().unwrap().is_none(), "nothing consumed");
    let first = encode(batch(1, "one"));
    let second = encode(batch(2, "two, a little longer"));
    let _ = session.handle_frame(&first).unwrap();
    let _ = session.handle_frame(&second).unwrap();
    let credit = session.poll_credit().unwrap().unwrap();
    let expected = (first.len() + second.len()) as u64;
    assert_eq!(decode(&credit), Message::Credit(Credit { bytes: expected }));
    assert!(session.poll_credit().unwrap().is_none(), "granted once");
    let _ = take(&mut session, done(2));
    assert!(
        session.poll_credit().unwrap().is_none(),
        "no credit in steady state"
    );

    // The first batch of a sketch's stream and a backfill's batches count too.
    for mut session in [wanted(), backfilling()] {
        let frame = encode(batch(3, "three"));
        let _ = session.handle_frame(&frame).unwrap();
        let credit = session.poll_credit().unwrap().map(|f| decode(&f));
        let bytes = frame.len() as u64;
        assert_eq!(credit, Some(Message::Credit(Credit { bytes })));
    }
}

#[test]
fn a_subscription_change_backfills_then_subscribed_must_answer_it() {
    let patterns = vec!["a/**".to_owned()];
    // Only in steady state, with the capability negotiated.
    for mut session in [catching_up(), await_sketch()] {
        assert!(
            session
                .change_subscription(1, patterns.clone(), true)
                .unwrap()
                .is_none()
        );
    }
    let mut without = started(Capabilities::PRESENCE);
    let _ = take(
        &mut without,
        welcome(Plan::InSync, Capabilities::SUPPORTED, None),
    );
    assert!(
        without
            .change_subscription(1, patterns.clone(), true)
            .unwrap()
            .is_none()
    );
    assert_eq!(without.phase(), ClientPhase::Steady);

    for add in [true, false] {
        let mut session = steady();
        let frame = session
            .change_subscription(9, patterns.clone(), add)
            .unwrap()
            .unwrap();
        let expected = if add {
            Message::Subscribe(Subscribe {
                number: 9,
                patterns: patterns.clone(),
            })
        } else {
            Message::Unsubscribe(Unsubscribe {
                number: 9,
                patterns: patterns.clone(),
            })
        };
        assert_eq!(decode(&frame), expected);
        assert!(session.is_backfilling() && session.is_steady());
        // One change at a time.
        assert!(
            session
                .change_subscription(10, patterns.clone(), add)
                .unwrap()
                .is_none()
        );
        let _ = take(&mut session, batch(4, "backfill"));
        let answer = Message::Subscribed(Subscribed {
            number: 9,
            patterns: patterns.clone(),
            seq: 4,
        });
        assert!(matches!(
            take(&mut session, answer),
            ClientEvent::Subscribed(Subscribed { number: 9, .. })
        ));
        assert_eq!(session.phase(), ClientPhase::Steady);
        assert!(!session.is_backfilling());
    }

    let mut session = backfilling();
    let other = Message::Subscribed(Subscribed {
        number: 8,
        patterns,
        seq: 4,
    });
    assert_eq!(
        refuse(&mut session, other),
        Misbehaved::SubscribedNumber {
            expected: 9,
            got: 8
        }
    );
}

#[test]
fn broadcast_numbers_must_fit() {
    let broadcast = |first_seq, nodes: usize| {
        Message::Broadcast(Broadcast {
            first_seq,
            nodes: (0..nodes).map(|i| node(&format!("n{i}"))).collect(),
        })
    };
    let mut session = steady();
    let _ = take(&mut session, broadcast(u64::MAX, 1));
    let _ = take(&mut session, broadcast(u64::MAX - 1, 2));
    assert_eq!(
        refuse(&mut session, broadcast(u64::MAX, 2)),
        Misbehaved::SeqOverflow {
            first_seq: u64::MAX,
            nodes: 2
        }
    );
}
