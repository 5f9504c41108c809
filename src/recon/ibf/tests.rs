use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn key() -> SketchKey {
    SketchKey([7; KEY_BYTES])
}

fn random_ids(rng: &mut StdRng, n: usize) -> Vec<NodeId> {
    (0..n).map(|_| NodeId(rng.random())).collect()
}

fn sketch(log2: u8, ids: &[NodeId]) -> Ibf {
    let mut ibf = Ibf::new(log2).unwrap();
    for id in ids {
        ibf.insert(key().short_id(id));
    }
    ibf
}

fn shorts(ids: &[NodeId]) -> BTreeSet<u64> {
    ids.iter().map(|id| key().short_id(id)).collect()
}

/// The decoded difference names exactly these ids on each side.
fn assert_decoded(diff: &Difference, ours: &[NodeId], theirs: &[NodeId]) {
    assert_eq!(
        diff.ours.iter().copied().collect::<BTreeSet<_>>(),
        shorts(ours)
    );
    assert_eq!(
        diff.theirs.iter().copied().collect::<BTreeSet<_>>(),
        shorts(theirs)
    );
}

#[test]
fn decodes_exactly_the_symmetric_difference() {
    let mut rng = StdRng::seed_from_u64(1);
    let common = random_ids(&mut rng, 5_000);
    let only_a = random_ids(&mut rng, 300);
    let only_b = random_ids(&mut rng, 200);
    let a: Vec<NodeId> = common.iter().chain(&only_a).copied().collect();
    let b: Vec<NodeId> = common.iter().chain(&only_b).copied().collect();
    // 3 × 512 cells for 500 differences: α ≈ 3.
    let diff = sketch(9, &a)
        .subtract(&sketch(9, &b))
        .unwrap()
        .decode()
        .unwrap();
    assert_decoded(&diff, &only_a, &only_b);
    assert_eq!(diff.ours.len() + diff.theirs.len(), 500);
}

#[test]
fn folding_equals_building_small() {
    let mut rng = StdRng::seed_from_u64(2);
    let ids = random_ids(&mut rng, 2_000);
    let big = sketch(14, &ids);
    for to in [0, 3, 8, 14] {
        assert_eq!(big.fold(to).unwrap(), sketch(to, &ids), "fold to 2^{to}");
    }
    assert_eq!(
        big.fold(15),
        Err(SketchError::CannotGrow { from: 14, to: 15 })
    );
}

#[test]
fn success_rate_at_alpha_one_and_a_half() {
    // d = 1,000 in 3 × 512 cells (α ≈ 1.54): nearly always decodes; a failure is reported,
    // never a wrong answer.
    let mut rng = StdRng::seed_from_u64(3);
    let mut ok = 0;
    for _ in 0..50 {
        let only_a = random_ids(&mut rng, 500);
        let only_b = random_ids(&mut rng, 500);
        match sketch(9, &only_a)
            .subtract(&sketch(9, &only_b))
            .unwrap()
            .decode()
        {
            Ok(diff) => {
                assert_decoded(&diff, &only_a, &only_b);
                ok += 1;
            }
            Err(SketchError::Undecodable { remaining }) => assert!(remaining > 0),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(ok >= 45, "only {ok} of 50 decoded");
}

#[test]
fn too_small_a_sketch_fails_instead_of_lying() {
    let mut rng = StdRng::seed_from_u64(4);
    let only_a = random_ids(&mut rng, 400);
    let result = sketch(6, &only_a)
        .subtract(&Ibf::new(6).unwrap())
        .unwrap()
        .decode();
    assert!(matches!(result, Err(SketchError::Undecodable { .. })));
}

#[test]
fn garbage_cells_cost_bounded_work_and_never_panic() {
    let mut rng = StdRng::seed_from_u64(5);
    for log2 in [0u8, 1, 4, 8] {
        for _ in 0..200 {
            let cells = (0..K << log2)
                .map(|_| Cell {
                    count: rng.random_range(-2..=2),
                    short: rng.random(),
                    check: rng.random(),
                })
                .collect();
            let ibf = Ibf::from_cells(log2, cells).unwrap();
            assert_decode_is_consistent(&ibf);
        }
    }
    // Pure-looking cells crafted to re-appear after peeling still stop.
    let short = 42u64;
    let crafted = vec![
        Cell {
            count: 1,
            short,
            check: checksum(short)
        };
        K
    ];
    assert!(
        Ibf::from_cells(0, crafted)
            .unwrap()
            .decode()
            .is_ok_and(|d| d.ours == vec![42])
    );
    assert_eq!(
        Ibf::from_cells(3, vec![Cell::default(); 5]),
        Err(SketchError::BadSize)
    );
    assert_eq!(Ibf::new(MAX_LOG2_CELLS + 1), Err(SketchError::BadSize));
}

/// Decoding either fails or returns elements that rebuild exactly these cells (counts
/// modulo 256, as peeling sees them).
fn assert_decode_is_consistent(ibf: &Ibf) {
    if let Ok(diff) = ibf.clone().decode() {
        let mut rebuilt = Ibf::new(ibf.log2()).unwrap();
        diff.ours.iter().for_each(|s| rebuilt.insert(*s));
        diff.theirs.iter().for_each(|s| rebuilt.remove(*s));
        assert_eq!(encode_cells(rebuilt.cells()), encode_cells(ibf.cells()));
    }
}

/// What the peer receives: the sketch through the wire, counts truncated.
fn through_wire(ibf: &Ibf) -> Ibf {
    Ibf::from_cells(
        ibf.log2(),
        decode_cells(&encode_cells(ibf.cells())).unwrap(),
    )
    .unwrap()
}

#[test]
fn wire_packing_round_trips() {
    let mut rng = StdRng::seed_from_u64(10);
    let cells: Vec<Cell> = (0..100)
        .map(|_| Cell {
            count: rng.random_range(-128..=127),
            short: rng.random(),
            check: rng.random(),
        })
        .collect();
    let bytes = encode_cells(&cells);
    assert_eq!(bytes.len(), cells.len() * CELL_BYTES);
    assert_eq!(decode_cells(&bytes).unwrap(), cells);
    // Layout: short LE, check LE, count byte.
    let one = Cell {
        count: -2,
        short: 0x0102_0304_0506_0708,
        check: 0x0a0b_0c0d,
    };
    assert_eq!(
        encode_cells(&[one]),
        vec![8, 7, 6, 5, 4, 3, 2, 1, 0x0d, 0x0c, 0x0b, 0x0a, 0xfe]
    );
    // Larger counts travel modulo 256, sign-extended on arrival.
    let big = Cell { count: 300, ..one };
    assert_eq!(decode_cells(&encode_cells(&[big])).unwrap()[0].count, 44);
    let big = Cell { count: 200, ..one };
    assert_eq!(decode_cells(&encode_cells(&[big])).unwrap()[0].count, -56);
    assert_eq!(decode_cells(&[0; 12]), Err(SketchError::BadSize));
    assert_eq!(decode_cells(&[]), Ok(vec![]));
}

#[test]
fn peels_with_wire_truncated_counts() {
    // 3 × 16 cells for 20,000 common ids: ~400 per cell, far beyond one signed byte.
    let mut rng = StdRng::seed_from_u64(11);
    let common = random_ids(&mut rng, 20_000);
    let only_relay = random_ids(&mut rng, 7);
    let only_client = random_ids(&mut rng, 5);
    let relay: Vec<NodeId> = common.iter().chain(&only_relay).copied().collect();
    let client: Vec<NodeId> = common.iter().chain(&only_client).copied().collect();
    let relay_sketch = sketch(4, &relay);
    assert!(relay_sketch.cells().iter().all(|c| c.count > 127));
    let received = through_wire(&relay_sketch);
    assert_ne!(received, relay_sketch);
    // Either order of subtraction, and both sides truncated, peel the same.
    let diff = received
        .subtract(&sketch(4, &client))
        .unwrap()
        .decode()
        .unwrap();
    assert_decoded(&diff, &only_relay, &only_client);
    let diff = sketch(4, &client)
        .subtract(&received)
        .unwrap()
        .decode()
        .unwrap();
    assert_decoded(&diff, &only_client, &only_relay);
    let diff = received
        .subtract(&through_wire(&sketch(4, &client)))
        .unwrap()
        .decode()
        .unwrap();
    assert_decoded(&diff, &only_relay, &only_client);
}

#[test]
fn extension_rebuilds_the_next_level() {
    let mut rng = StdRng::seed_from_u64(12);
    let ids = random_ids(&mut rng, 3_000);
    for log2 in 1..=10u8 {
        let next = sketch(log2, &ids);
        let level = next.fold(log2 - 1).unwrap();
        assert_eq!(level, sketch(log2 - 1, &ids));
        let lower = next.lower_halves().unwrap();
        assert_eq!(lower.len(), K << (log2 - 1));
        assert_eq!(level.extend(lower.clone()).unwrap(), next);
        // Through the wire (counts modulo 256), the rebuilt level matches modulo 256.
        let lower_wire = decode_cells(&encode_cells(&lower)).unwrap();
        let rebuilt = through_wire(&level).extend(lower_wire).unwrap();
        assert_eq!(encode_cells(rebuilt.cells()), encode_cells(next.cells()));
    }
    assert_eq!(
        Ibf::new(0).unwrap().lower_halves(),
        Err(SketchError::BadSize)
    );
    let level = sketch(3, &ids);
    assert_eq!(
        level.extend(vec![Cell::default(); 5]),
        Err(SketchError::BadSize)
    );
    let top = Ibf::new(MAX_LOG2_CELLS).unwrap();
    let lower = vec![Cell::default(); top.cells().len()];
    assert_eq!(top.extend(lower), Err(SketchError::BadSize));
}

#[test]
fn a_failed_decode_succeeds_after_extension() {
    // 3 × 64 cells cannot hold 240 differences; 3 × 128 can (α = 1.6).
    let mut rng = StdRng::seed_from_u64(13);
    let mut extended_ok = 0;
    for _ in 0..20 {
        let common = random_ids(&mut rng, 2_000);
        let only_relay = random_ids(&mut rng, 140);
        let only_client = random_ids(&mut rng, 100);
        let relay: Vec<NodeId> = common.iter().chain(&only_relay).copied().collect();
        let client: Vec<NodeId> = common.iter().chain(&only_client).copied().collect();
        // The relay sends level 6; the client's own sketch at 6 does not peel.
        let sent = through_wire(&sketch(7, &relay).fold(6).unwrap());
        let first = sent.subtract(&sketch(6, &client)).unwrap().decode();
        assert!(matches!(first, Err(SketchError::Undecodable { .. })));
        // The extension: lower halves of level 7 only, as many cells as level 6.
        let lower = encode_cells(&sketch(7, &relay).lower_halves().unwrap());
        assert_eq!(lower.len(), sent.cells().len() * CELL_BYTES);
        let full = sent.extend(decode_cells(&lower).unwrap()).unwrap();
        match full.subtract(&sketch(7, &client)).unwrap().decode() {
            Ok(diff) => {
                assert_decoded(&diff, &only_relay, &only_client);
                extended_ok += 1;
            }
            Err(SketchError::Undecodable { .. }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(extended_ok >= 18, "only {extended_ok} of 20 decoded");
}

#[test]
fn insert_then_remove_is_empty() {
    let mut rng = StdRng::seed_from_u64(6);
    let ids = random_ids(&mut rng, 100);
    let mut ibf = sketch(5, &ids);
    for id in &ids {
        ibf.remove(key().short_id(id));
    }
    assert_eq!(ibf, Ibf::new(5).unwrap());
}

#[test]
fn room_keys_differ_by_room_and_epoch() {
    let a = RoomId::new("a").unwrap();
    let b = RoomId::new("b").unwrap();
    assert_eq!(SketchKey::for_room(&a, 1), SketchKey::for_room(&a, 1));
    assert_ne!(SketchKey::for_room(&a, 1), SketchKey::for_room(&a, 2));
    assert_ne!(SketchKey::for_room(&a, 1), SketchKey::for_room(&b, 1));
    let key = SketchKey::for_room(&a, 1);
    assert_eq!(SketchKey(*key.wire()), key);
}

#[test]
fn keys_change_the_mapping() {
    let id = NodeId([3; 32]);
    assert_ne!(
        SketchKey([1; KEY_BYTES]).short_id(&id),
        SketchKey([2; KEY_BYTES]).short_id(&id)
    );
}

proptest::proptest! {
    #[test]
    fn arbitrary_wire_bytes_never_panic_and_terminate(
        log2 in 0u8..=7,
        seed in proptest::prelude::any::<u64>(),
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..(K << 7) * CELL_BYTES),
        counts in proptest::collection::vec(-3i8..=3, 0..(K << 7)),
    ) {
        // Arbitrary lengths only decode at multiples of CELL_BYTES.
        proptest::prop_assert_eq!(decode_cells(&bytes).is_ok(), bytes.len() % CELL_BYTES == 0);
        // Exactly sized garbage, with pure-looking cells mixed in, against a real sketch.
        let n = K << log2;
        let mut wire: Vec<u8> = bytes.iter().copied().cycle().take(n * CELL_BYTES).collect();
        if wire.len() < n * CELL_BYTES {
            wire.resize(n * CELL_BYTES, 0);
        }
        let mut cells = decode_cells(&wire).unwrap();
        for (cell, count) in cells.iter_mut().zip(&counts) {
            cell.count = i64::from(*count);
            if *count == 1 || *count == -1 {
                cell.check = checksum(cell.short);
            }
        }
        let garbage = Ibf::from_cells(log2, cells).unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let real = sketch(log2, &random_ids(&mut rng, 50));
        assert_decode_is_consistent(&garbage);
        let diff = garbage.subtract(&real).unwrap();
        assert_decode_is_consistent(&diff);
        // Extending garbage by garbage is as safe.
        if let Ok(lower) = decode_cells(&wire) {
            if let Ok(extended) = garbage.extend(lower) {
                assert_decode_is_consistent(&extended);
            }
        }
    }
}
