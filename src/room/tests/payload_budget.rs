//! Room: payload budget.

use super::*;

#[test]
fn stored_nodes_leave_memory_oldest_first_down_to_the_budget() {
    let mut rng = StdRng::seed_from_u64(31);
    let dag = random_dag(&mut rng, 200, 3);
    let full = populated(&dag.iter().collect::<Vec<_>>());
    let total = full.resident_payload_bytes();
    assert_eq!(
        total,
        full.nodes().map(|n| n.wire().unwrap().len()).sum::<usize>()
    );
    for budget in [0, 1, total / 3, total - 1, total, usize::MAX] {
        let room = budgeted(&dag, budget);
        assert!(room.resident_payload_bytes() <= budget, "budget {budget}");
        // What stays is a suffix of the log: the newest history.
        let resident: Vec<bool> = room.nodes().map(|n| n.wire().is_some()).collect();
        let first = resident.iter().position(|r| *r).unwrap_or(resident.len());
        assert!(resident[first..].iter().all(|r| *r), "budget {budget}");
        let kept: usize = room.nodes().filter_map(|n| n.wire()).map(Bytes::len).sum();
        assert_eq!(kept, room.resident_payload_bytes());
        // Everything else about the room is unchanged.
        assert_eq!(snapshot(&room), snapshot(&full));
    }
    // Nodes not yet stored stay, whatever the budget.
    let mut room = empty_room().with_payload_budget(0);
    accept_all(&mut room, &dag.iter().collect::<Vec<_>>(), t0());
    room.mark_stored(150);
    assert!((1..=150).all(|s| room.wire_at(s).is_none()));
    assert!((151..=200).all(|s| room.wire_at(s).is_some()));
    room.mark_stored(10_000);
    assert_eq!(room.resident_payload_bytes(), 0);
}

#[test]
fn a_payload_read_back_must_be_the_nodes_own_encoding() {
    let a = node(&[], "a", "alpha");
    let b = node(&[&a], "b", "beta");
    let full = populated(&[&a, &b]);
    let mut room = budgeted(&[a.clone(), b.clone()], 0);
    let wire_a = full.wire_at(1).unwrap().clone();
    let wire_b = full.wire_at(2).unwrap().clone();
    assert_eq!(
        room.restore_payload(1, wire_b.clone()),
        Err(PayloadError::Mismatch(1))
    );
    let mut flipped = wire_a.to_vec();
    *flipped.last_mut().unwrap() ^= 1;
    assert_eq!(
        room.restore_payload(1, Bytes::from(flipped)),
        Err(PayloadError::Mismatch(1))
    );
    assert_eq!(
        room.restore_payload(1, Bytes::from_static(b"\xc1")),
        Err(PayloadError::Mismatch(1))
    );
    assert_eq!(
        room.restore_payload(3, wire_a.clone()),
        Err(PayloadError::Unknown(3))
    );
    assert_eq!(room.resident_payload_bytes(), 0);
    assert!(room.wire_at(1).is_none());
    room.restore_payload(1, wire_a.clone()).unwrap();
    assert_eq!(room.wire_at(1), Some(&wire_a));
    assert_eq!(room.node_at(1).unwrap().node(), Some(a));
    // Taking it twice counts it once; trimming evicts what was read back.
    room.restore_payload(1, wire_a.clone()).unwrap();
    assert_eq!(room.resident_payload_bytes(), wire_a.len());
    room.trim_payloads();
    assert_eq!(room.resident_payload_bytes(), 0);
    assert!(room.wire_at(1).is_none());
}

#[test]
fn catch_up_over_a_budget_reads_cold_nodes_back_and_sends_the_same_nodes() {
    let mut seeds_that_read = 0;
    for seed in 0..30u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let dag = random_dag(&mut rng, 300, 3);
        let full = populated(&dag.iter().collect::<Vec<_>>());
        let total = full.resident_payload_bytes();
        let budget = rng.random_range(0..=total / 2);
        let mut room = budgeted(&dag, budget);
        let (heads, watermark, _) = client_state(&mut rng, &full);
        let frame_budget = rng.random_range(200..4000);
        let expected = seqs(
            &full,
            &drain(
                &full,
                &mut full.catch_up_cursor(watermark, &heads),
                frame_budget,
            ),
        );
        let cold_at_start: HashSet<u64> =
            (1..=300).filter(|s| room.wire_at(*s).is_none()).collect();
        let mut cursor = room.catch_up_cursor(watermark, &heads);
        let mut sent = Vec::new();
        let mut fetches = 0;
        for _ in 0..100_000 {
            match room.next_batch(&mut cursor, frame_budget, u64::MAX) {
                BatchStep::Batch { frame, .. } => {
                    let Message::Batch(batch) = protocol::decode(&frame).unwrap() else {
                        panic!("not a batch");
                    };
                    sent.extend(batch.nodes.iter().map(|n| room.seq_of(&n.id).unwrap()));
                    room.trim_payloads();
                }
                BatchStep::Fetch(cold) => {
                    fetches += 1;
                    assert!(!cold.is_empty());
                    assert!(cold.windows(2).all(|w| w[0] < w[1]), "ascending");
                    let bytes: usize = cold.iter().map(|s| full.wire_at(*s).unwrap().len()).sum();
                    assert!(
                        cold.len() == 1 || bytes <= frame_budget,
                        "one batch's worth"
                    );
                    for seq in cold {
                        assert!(room.wire_at(seq).is_none(), "asked for a resident node");
                        room.restore_payload(seq, full.wire_at(seq).unwrap().clone())
                            .unwrap();
                    }
                }
                BatchStep::Done => break,
            }
        }
        assert_eq!(sent, expected, "seed {seed}");
        if expected.iter().any(|s| cold_at_start.contains(s)) {
            assert!(
                fetches > 0,
                "seed {seed}: cold nodes were sent without a read"
            );
            seeds_that_read += 1;
        }
        room.trim_payloads();
        assert!(room.resident_payload_bytes() <= budget);
    }
    assert!(
        seeds_that_read >= 10,
        "only {seeds_that_read} seeds read anything back"
    );
}
