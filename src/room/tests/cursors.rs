//! Room: catch-up cursors.

use super::*;

#[test]
fn catch_up_cursor_sends_exactly_the_missing_nodes_parents_first() {
    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut room = empty_room();
        let dag = random_dag(&mut rng, 60, 3);
        accept_all(&mut room, &dag.iter().collect::<Vec<_>>(), t0());
        for _ in 0..10 {
            let (heads, after, held) = client_state(&mut rng, &room);
            let mut cursor = room.catch_up_cursor(after, &heads);
            let sent = seqs(&room, &drain(&room, &mut cursor, 1 << 20));
            let expected: Vec<u64> = (1..=room.seq())
                .filter(|s| !held.contains(room.node_at(*s).unwrap().id()))
                .collect();
            assert_eq!(sent, expected, "seed {seed} heads {heads:?} after {after}");
            // Parents first: every parent is held or sent earlier.
            let mut have = held.clone();
            for s in sent {
                let n = room.node_at(s).unwrap();
                assert!(n.parents.iter().all(|p| have.contains(p)), "seed {seed}");
                have.insert(n.id);
            }
        }
    }
}

#[test]
fn catch_up_cursor_without_heads_streams_after_the_watermark() {
    let mut room = empty_room();
    let mut rng = StdRng::seed_from_u64(1);
    let dag = random_dag(&mut rng, 10, 2);
    accept_all(&mut room, &dag.iter().collect::<Vec<_>>(), t0());
    let mut cursor = room.catch_up_cursor(0, &[]);
    assert_eq!(
        seqs(&room, &drain(&room, &mut cursor, 1 << 20)),
        (1..=10).collect::<Vec<_>>()
    );
    let mut cursor = room.catch_up_cursor(4, &[]);
    assert_eq!(
        seqs(&room, &drain(&room, &mut cursor, 1 << 20)),
        (5..=10).collect::<Vec<_>>()
    );
}

#[test]
fn cursor_follows_nodes_admitted_during_catch_up() {
    let now = t0();
    let mut room = empty_room();
    let a = node(&[], "a", "a");
    let b = node(&[&a], "b", "b");
    accept_all(&mut room, &[&a, &b], now);
    let mut cursor = room.catch_up_cursor(0, &[]);
    let first = unpack(room.next_batch(&mut cursor, 1, u64::MAX)).expect("something sent");
    assert_eq!((first.nodes.len(), first.through), (1, 1));
    let c = node(&[&b], "c", "c");
    accept_all(&mut room, &[&c], now);
    assert_eq!(seqs(&room, &drain(&room, &mut cursor, 1 << 20)), vec![2, 3]);
}

#[test]
fn batches_respect_the_frame_budget() {
    let mut room = empty_room();
    let mut rng = StdRng::seed_from_u64(2);
    let mut prev: Vec<Node> = Vec::new();
    for i in 0..80 {
        let size = rng.random_range(0..600);
        let parents: Vec<&Node> = prev.last().into_iter().collect();
        let n = node(&parents, "p", &format!("{i}{}", "x".repeat(size)));
        prev.push(n);
    }
    accept_all(&mut room, &prev.iter().collect::<Vec<_>>(), t0());
    for budget in [1, 200, 700, 1500, 4096, 1 << 20] {
        let mut cursor = room.catch_up_cursor(0, &[]);
        let batches = drain(&room, &mut cursor, budget);
        assert_eq!(
            seqs(&room, &batches),
            (1..=80).collect::<Vec<_>>(),
            "{budget}"
        );
        for batch in &batches {
            let len = Message::Batch(batch.clone()).encode().unwrap().len();
            if batch.nodes.len() > 1 {
                assert!(len <= budget, "batch of {len} bytes over budget {budget}");
            }
        }
        if budget == 1 {
            assert!(batches.iter().all(|b| b.nodes.len() == 1));
        }
        if budget >= 4096 {
            // Not one node per frame when more fit.
            assert!(batches.len() < 80);
        }
    }
}

#[test]
fn through_is_a_resume_point() {
    for seed in 0..30u64 {
        let mut rng = StdRng::seed_from_u64(100 + seed);
        let mut room = empty_room();
        let dag = random_dag(&mut rng, 50, 3);
        accept_all(&mut room, &dag.iter().collect::<Vec<_>>(), t0());
        let (heads, after, held) = client_state(&mut rng, &room);
        let budget = rng.random_range(100..2000);
        let mut cursor = room.catch_up_cursor(after, &heads);
        let all = drain(&room, &mut cursor, budget);
        let total = seqs(&room, &all);
        let mut have = held.clone();
        for k in 0..all.len() {
            // A client that received batches 0..=k and reconnects with watermark = through and
            // the same heads gets exactly the rest.
            have.extend(all[k].nodes.iter().map(|n| n.id));
            let through = all[k].through;
            for s in 1..=through {
                assert!(
                    have.contains(room.node_at(s).unwrap().id()),
                    "seed {seed}: through {through} claims #{s}, not held"
                );
            }
            let mut resumed = room.catch_up_cursor(through, &heads);
            let rest = seqs(&room, &drain(&room, &mut resumed, budget));
            let sent_so_far: usize = all[..=k].iter().map(|b| b.nodes.len()).sum();
            assert_eq!(rest, total[sent_so_far..].to_vec(), "seed {seed} batch {k}");
        }
    }
}

#[test]
fn id_list_cursor_gives_need_and_missing_nodes() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut room = empty_room();
    let dag = random_dag(&mut rng, 40, 3);
    accept_all(&mut room, &dag.iter().collect::<Vec<_>>(), t0());
    // The client holds an arbitrary (not ancestor-closed) subset, plus ids the room lacks,
    // some repeated.
    let unknown: Vec<NodeId> = (0..5u8).map(|i| NodeId([i + 1; 32])).collect();
    let mut client: Vec<NodeId> = dag
        .iter()
        .filter(|_| rng.random_bool(0.5))
        .map(|n| n.id)
        .collect();
    client.extend(&unknown);
    client.extend(&unknown[..2]);
    client.push(dag[0].id);
    let (need, mut cursor) = room.id_list_cursor(client.clone());
    let need: BTreeSet<NodeId> = need.into_iter().collect();
    assert_eq!(need, unknown.iter().copied().collect());
    let held: HashSet<NodeId> = client.into_iter().collect();
    let sent = seqs(&room, &drain(&room, &mut cursor, 500));
    let expected: Vec<u64> = (1..=room.seq())
        .filter(|s| !held.contains(room.node_at(*s).unwrap().id()))
        .collect();
    assert_eq!(sent, expected);
    // An empty list needs nothing and gets everything.
    let (need, mut cursor) = room.id_list_cursor(vec![]);
    assert!(need.is_empty());
    assert_eq!(
        seqs(&room, &drain(&room, &mut cursor, 500)),
        (1..=40).collect::<Vec<_>>()
    );
}
