//! Hub: catch-up, id list and credit.

use super::*;

#[test]
fn catch_up_over_the_hub_sends_the_missing_nodes_then_done() {
    let mut rng = StdRng::seed_from_u64(4);
    let dag = random_dag(&mut rng, 30, 2);
    let room = populated(&dag.iter().collect::<Vec<_>>());
    let mut relay = Relay::new(room);
    let held = [dag[0].id, dag[1].id];
    let heads: Vec<NodeId> = held
        .iter()
        .copied()
        .filter(|h| {
            !held
                .iter()
                .any(|o| relay.hub.room().get(o).unwrap().parents().contains(h))
        })
        .collect();
    let hints = SyncHints {
        digest: SetDigest::of(&held),
        watermark: Some(Watermark {
            epoch: EPOCH,
            seq: 2,
        }),
        heads,
        ..SyncHints::default()
    };
    let sent = relay.join(1, hints, 1 << 20, Capabilities::NONE);
    let welcome = welcome_of(&sent.to(1));
    assert_eq!((welcome.plan, welcome.seq), (Plan::CatchUp, 30));
    let (batches, done) = finish_catch_up(&mut relay, 1, sent, 1 << 20);
    assert_eq!(
        seqs(relay.hub.room(), &batches),
        (3..=30).collect::<Vec<_>>()
    );
    assert_eq!(batches.last().unwrap().through, 30);
    assert_eq!((done.seq, done.digest), (30, relay.hub.room().digest()));
    assert_eq!(
        relay
            .hub
            .recipients(Audience::Live { except: None })
            .collect::<Vec<_>>(),
        vec![1]
    );
}

#[test]
fn catch_up_from_a_budgeted_hub_reads_back_from_the_store_once_per_node() {
    let mut rng = StdRng::seed_from_u64(41);
    let dag = random_dag(&mut rng, 400, 2);
    let full = populated(&dag.iter().collect::<Vec<_>>());
    let config = with_limits(RelayLimits {
        max_frame: 2000,
        ..RelayLimits::default()
    });
    let mut relay = Relay::with_config(budgeted(&dag, 0), config);
    // Two cold clients join together: they need the same nodes, which are read once.
    let first = relay.join(1, SyncHints::default(), 1 << 30, Capabilities::NONE);
    let second = relay.join(2, SyncHints::default(), 1 << 30, Capabilities::NONE);
    assert!(!first.fetches.is_empty());
    assert!(
        second.fetches.is_empty(),
        "second client read the same nodes again"
    );
    let mut joined = first;
    joined.frames.extend(second.frames);
    let sent = serve_reads(&mut relay, joined, &full, |_| false);
    let read: Vec<u64> = sent.fetches.iter().flatten().copied().collect();
    let unique: HashSet<u64> = read.iter().copied().collect();
    assert_eq!(unique.len(), read.len(), "a node was read twice");
    assert_eq!(unique, (1..=400).collect::<HashSet<_>>());
    for id in [1, 2] {
        let batches: Vec<Batch> = sent
            .to(id)
            .into_iter()
            .filter_map(|m| match m {
                Message::Batch(b) => Some(b.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(seqs(&full, &batches), (1..=400).collect::<Vec<_>>());
        assert!(matches!(sent.to(id).last(), Some(Message::CatchUpDone(_))));
    }
    assert_eq!(
        relay.hub.room().resident_payload_bytes(),
        0,
        "trimmed after use"
    );
}

#[test]
fn a_failed_read_back_closes_only_the_sessions_waiting_for_it() {
    let mut rng = StdRng::seed_from_u64(42);
    let dag = random_dag(&mut rng, 100, 2);
    let full = populated(&dag.iter().collect::<Vec<_>>());
    let mut relay = Relay::new(budgeted(&dag, 0));
    // A steady session that holds everything.
    let hints = SyncHints {
        digest: full.digest(),
        watermark: Some(Watermark {
            epoch: EPOCH,
            seq: 100,
        }),
        heads: full.heads().copied().collect(),
        ..SyncHints::default()
    };
    let steady = relay.join(7, hints, 1 << 20, Capabilities::NONE);
    assert!(steady.fetches.is_empty());
    let cold = relay.join(1, SyncHints::default(), 1 << 20, Capabilities::NONE);
    let sent = serve_reads(&mut relay, cold, &full, |seqs| seqs.contains(&50));
    assert!(sent.to(1).iter().any(|m| matches!(m,
        Message::ErrorMessage(e) if e.code == ErrorCode::StoreUnavailable.code())));
    assert_eq!(sent.closes, vec![(1, CloseCode::StoreUnavailable)]);
    assert!(
        !sent
            .to(1)
            .iter()
            .any(|m| matches!(m, Message::CatchUpDone(_)))
    );
    // The room and the other session are untouched; a new client gets everything.
    assert_eq!(snapshot(relay.hub.room()), snapshot(&full));
    let c = node(&[&dag[99]], "c", "after the failure");
    let acked = relay.frame(7, pack(1, &[&c]));
    assert!(matches!(acked.to(7)[..], [Message::Ack(_)]));
    // Once stored, the new node leaves memory too (budget 0): the store now holds it.
    let mut full = full;
    accept_all(&mut full, &[&c], t0());
    let again = relay.join(2, SyncHints::default(), 1 << 20, Capabilities::NONE);
    let sent = serve_reads(&mut relay, again, &full, |_| false);
    assert!(matches!(sent.to(2).last(), Some(Message::CatchUpDone(d)) if d.seq == 101));
}

#[test]
fn no_batch_without_credit_and_catch_up_resumes_on_credit() {
    let mut rng = StdRng::seed_from_u64(5);
    let dag = random_dag(&mut rng, 40, 2);
    // Small frames, so catch-up takes many batches.
    let config = with_limits(RelayLimits {
        max_frame: 400,
        ..RelayLimits::default()
    });
    let mut relay = Relay::with_config(populated(&dag.iter().collect::<Vec<_>>()), config);
    // No credit: welcome only, and nothing on later calls that do not grant credit.
    let sent = relay.join(1, SyncHints::default(), 0, Capabilities::NONE);
    assert_eq!(sent.frames.len(), 1);
    assert_eq!(welcome_of(&sent.to(1)).plan, Plan::CatchUp);
    let sent = relay.timeout(relay.now + Duration::from_secs(1));
    assert!(sent.frames.is_empty());
    // A one-byte grant buys exactly one batch (never zero, never more). The batch overdraws the
    // balance, and the overdraft is repaid, not written off: a second byte buys nothing, and the
    // next batch comes only once the grants since add up to the last batch's size.
    let mut received = Vec::new();
    let mut sent = relay.frame(1, Message::Credit(Credit { bytes: 1 }));
    for batch in 1.. {
        match sent.to(1)[..] {
            [Message::Batch(b)] => {
                let len = sent.frames[0].1.len() as u64;
                assert!(len <= 400 || b.nodes.len() == 1);
                received.extend(
                    b.nodes
                        .iter()
                        .map(|n| relay.hub.room().seq_of(&n.id).unwrap()),
                );
                let sent_on_one_byte = relay.frame(1, Message::Credit(Credit { bytes: 1 }));
                assert!(
                    sent_on_one_byte.frames.is_empty(),
                    "batch {batch}: the overdraft of {len} bytes was written off"
                );
                // The rest of the batch's size brings the balance back to one byte.
                sent = relay.frame(1, Message::Credit(Credit { bytes: len - 1 }));
            }
            [Message::CatchUpDone(done)] => {
                assert_eq!(done.seq, 40);
                break;
            }
            ref other => panic!("batch {batch}: {other:?}"),
        }
        assert!(batch <= 40, "at least one node per batch");
    }
    assert_eq!(received, (1..=40).collect::<Vec<_>>());
    assert!(
        relay
            .hub
            .recipients(Audience::Live { except: None })
            .eq([1])
    );
}

/// A client that grants a window and then returns each batch's size as it consumes it (§6.2)
/// never has more than the window plus one frame outstanding, however the node sizes mix, so a
/// catch-up stays within any queue of at least the credit cap plus a frame.
#[test]
fn crediting_what_was_consumed_keeps_outstanding_bytes_within_the_window() {
    let mut rng = StdRng::seed_from_u64(12);
    let max_payload = NodeLimits::default().max_payload as usize;
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..160 {
        // Sizes from 10 B to the payload limit, spread over orders of magnitude.
        let size = match i % 4 {
            0 => 10,
            1 => rng.random_range(10..2_000),
            2 => rng.random_range(2_000..100_000),
            _ => rng.random_range(100_000..=max_payload - 8),
        };
        let parents: Vec<&Node> = nodes.last().into_iter().collect();
        let n = node(&parents, &format!("mix/{i}"), &"z".repeat(size));
        nodes.push(n);
    }
    let mut relay = Relay::new(populated(&nodes.iter().collect::<Vec<_>>()));
    let max_frame = u64::from(RelayLimits::default().max_frame);
    let cap = RelaySessionConfig::default().max_credit;
    for window in [1, 300_000, cap, 4 * cap] {
        let id = window;
        let mut sent = relay.join(id, SyncHints::default(), window, Capabilities::NONE);
        // Frames the relay queued and the client has not consumed yet.
        let mut unread: VecDeque<u64> = VecDeque::new();
        let mut received = 0;
        let mut done = false;
        for _ in 0..100_000 {
            for (to, frame, message) in &sent.frames {
                if *to != id {
                    continue;
                }
                match message {
                    Message::Batch(b) => {
                        unread.push_back(frame.len() as u64);
                        received += b.nodes.len();
                    }
                    Message::CatchUpDone(_) => done = true,
                    _ => {}
                }
            }
            let outstanding: u64 = unread.iter().sum();
            assert!(
                outstanding <= window.min(cap) + max_frame,
                "window {window}: {outstanding} bytes outstanding"
            );
            // The client is slow: it consumes one frame per step and credits exactly its size.
            let Some(consumed) = unread.pop_front() else {
                break;
            };
            sent = relay.frame(id, Message::Credit(Credit { bytes: consumed }));
        }
        assert!(done, "window {window}: catch-up did not finish");
        assert_eq!(received, nodes.len(), "window {window}");
    }
}

/// Peer numbers count the room's own connections, whatever session ids the relay gave them,
/// so a client cannot learn how many connections other rooms had; presence names the same
/// numbers, and a number is not reused after its session left.
#[test]
fn peers_are_numbered_per_room() {
    let mut first = Relay::new(empty_room());
    let mut second = Relay::new(empty_room());
    let caps = Capabilities::PRESENCE;
    assert_eq!(
        welcome_of(&first.join(100, SyncHints::default(), 1, caps).to(100)).peer,
        1
    );
    assert_eq!(
        welcome_of(&second.join(150, SyncHints::default(), 1, caps).to(150)).peer,
        1
    );
    assert_eq!(
        welcome_of(&first.join(200, SyncHints::default(), 1, caps).to(200)).peer,
        2
    );
    let sent = first.frame(
        100,
        Message::Presence(Presence {
            state: Bytes::from_static(b"here"),
        }),
    );
    match &sent.to(200)[..] {
        [Message::PresenceUpdate(update)] => assert_eq!(update.peer, 1),
        other => panic!("{other:?}"),
    }
    let _ = first.hub.disconnect(200);
    let sent = first.join(300, SyncHints::default(), 1, caps);
    assert_eq!(welcome_of(&sent.to(300)).peer, 3);
    // The late joiner hears peer 1's state under its peer number.
    match &sent.to(300)[1..] {
        [Message::PresenceUpdate(update)] => {
            assert_eq!((update.peer, &update.state[..]), (1, &b"here"[..]))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn credit_bounds_each_pump_by_spent_bytes() {
    let big: Vec<Node> = {
        let mut v: Vec<Node> = Vec::new();
        for i in 0..20 {
            let parents: Vec<&Node> = v.last().into_iter().collect();
            let n = node(&parents, "big", &format!("{i}{}", "x".repeat(10_000)));
            v.push(n);
        }
        v
    };
    let config = with_limits(RelayLimits {
        max_frame: 25_000,
        ..RelayLimits::default()
    });
    let mut relay = Relay::with_config(populated(&big.iter().collect::<Vec<_>>()), config);
    let sent = relay.join(1, SyncHints::default(), 30_000, Capabilities::NONE);
    let batch_bytes: Vec<usize> = sent
        .frames
        .iter()
        .filter(|(_, _, m)| matches!(m, Message::Batch(_)))
        .map(|(_, b, _)| b.len())
        .collect();
    // Every batch is within the frame limit; the relay stops once 30 kB are spent, so it
    // queued at most one frame beyond the credit.
    assert!(batch_bytes.iter().all(|&b| b <= 25_000), "{batch_bytes:?}");
    let total: usize = batch_bytes.iter().sum();
    assert!((30_000..30_000 + 25_000).contains(&total), "{total}");
    assert!(
        !sent
            .frames
            .iter()
            .any(|(_, _, m)| matches!(m, Message::CatchUpDone(_)))
    );
    let first: usize = sent
        .frames
        .iter()
        .filter_map(|(_, _, m)| match m {
            Message::Batch(b) => Some(b.nodes.len()),
            _ => None,
        })
        .sum();
    let (rest, done) = finish_catch_up(&mut relay, 1, Sent::default(), 30_000);
    let received = first + rest.iter().map(|b| b.nodes.len()).sum::<usize>();
    assert_eq!(received, 20);
    assert_eq!(done.seq, 20);
}

#[test]
fn id_list_over_the_hub_gives_need_and_nodes() {
    let mut rng = StdRng::seed_from_u64(6);
    let dag = random_dag(&mut rng, 20, 2);
    let mut relay = Relay::new(populated(&dag.iter().collect::<Vec<_>>()));
    // The client holds a few room nodes and three of its own the room lacks, with a head the
    // room does not know.
    let own_root = node(&[], "own", "1");
    let own_a = node(&[&own_root], "own", "2");
    let own_b = node(&[&own_a], "own", "3");
    let mut client_ids: Vec<NodeId> = dag.iter().take(5).map(|n| n.id).collect();
    client_ids.extend([own_root.id, own_a.id, own_b.id]);
    let hints = SyncHints {
        digest: SetDigest::of(&client_ids),
        watermark: None,
        heads: vec![own_b.id],
        ..SyncHints::default()
    };
    let sent = relay.join(1, hints, 1 << 20, Capabilities::NONE);
    assert_eq!(welcome_of(&sent.to(1)).plan, Plan::SendIds);
    assert_eq!(sent.frames.len(), 1);
    // Ids in two chunks; nothing happens until the last.
    let sent = relay.frame(
        1,
        Message::Ids(Ids {
            ids: client_ids[..4].to_vec(),
            last: false,
        }),
    );
    assert!(sent.frames.is_empty());
    let sent = relay.frame(
        1,
        Message::Ids(Ids {
            ids: client_ids[4..].to_vec(),
            last: true,
        }),
    );
    let messages = sent.to(1);
    let need = match messages.first() {
        Some(Message::Need(need)) => need.clone(),
        other => panic!("{other:?}"),
    };
    assert!(need.last);
    let need: BTreeSet<NodeId> = need.ids.into_iter().collect();
    assert_eq!(
        need,
        [own_root.id, own_a.id, own_b.id].into_iter().collect()
    );
    let (batches, done) = finish_catch_up(&mut relay, 1, sent, 1 << 20);
    let held: HashSet<NodeId> = client_ids.iter().copied().collect();
    let expected: Vec<u64> = (1..=20)
        .filter(|s| !held.contains(relay.hub.room().node_at(*s).unwrap().id()))
        .collect();
    assert_eq!(seqs(relay.hub.room(), &batches), expected);
    assert_eq!(done.digest, relay.hub.room().digest());
    // Now steady, the client pushes what the relay needed.
    let sent = relay.frame(1, pack(1, &[&own_root, &own_a, &own_b]));
    match sent.to(1)[..] {
        [Message::Ack(ack)] => assert_eq!(
            ack.outcomes,
            vec![
                Outcome::Accepted(21),
                Outcome::Accepted(22),
                Outcome::Accepted(23)
            ]
        ),
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn need_is_chunked_by_max_ids() {
    let config = with_limits(RelayLimits {
        max_ids: 2,
        ..RelayLimits::default()
    });
    let a = node(&[], "a", "a");
    let mut relay = Relay::with_config(populated(&[&a]), config);
    let unknown: Vec<NodeId> = (1..=5u8).map(|i| NodeId([i; 32])).collect();
    let hints = SyncHints {
        digest: SetDigest::of(&unknown),
        watermark: None,
        heads: vec![unknown[4]],
        ..SyncHints::default()
    };
    let sent = relay.join(1, hints, 1 << 20, Capabilities::NONE);
    assert_eq!(welcome_of(&sent.to(1)).plan, Plan::SendIds);
    let mut sent = Sent::default();
    for chunk in unknown.chunks(2) {
        sent = relay.frame(
            1,
            Message::Ids(Ids {
                ids: chunk.to_vec(),
                last: chunk.contains(&unknown[4]),
            }),
        );
    }
    let needs: Vec<_> = sent
        .to(1)
        .into_iter()
        .filter_map(|m| match m {
            Message::Need(n) => Some(n.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(needs.len(), 3);
    assert!(needs.iter().all(|n| n.ids.len() <= 2));
    assert_eq!(
        needs.iter().map(|n| n.last).collect::<Vec<_>>(),
        vec![false, false, true]
    );
    let all: BTreeSet<NodeId> = needs.into_iter().flat_map(|n| n.ids).collect();
    assert_eq!(all, unknown.into_iter().collect());
}
