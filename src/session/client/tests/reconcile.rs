//! Plans `send_ids`, `sketch` and `refine` (protocol/README.md §5.4, §5.7.5, §5.9).

use super::*;

#[test]
fn send_ids_lists_in_chunks_and_need_answers_only_about_them() {
    let mut session = started(Capabilities::NONE);
    let limits = RelayLimits {
        max_ids: 2,
        ..RelayLimits::default()
    };
    let _ = take(
        &mut session,
        welcome(Plan::SendIds, Capabilities::NONE, Some(limits)),
    );
    let frames = session.send_ids(vec![id(1), id(2), id(3)]).unwrap();
    let sent: Vec<(Vec<NodeId>, bool)> = frames
        .iter()
        .map(|f| match decode(f) {
            Message::Ids(ids) => (ids.ids, ids.last),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sent, vec![(vec![id(1), id(2)], false), (vec![id(3)], true)]);
    assert_eq!(session.phase(), ClientPhase::AwaitNeed);
    let need = |ids: Vec<NodeId>, last| Message::Need(Need { ids, last });
    assert!(matches!(
        take(&mut session, need(vec![id(1)], false)),
        ClientEvent::Partial
    ));
    match take(&mut session, need(vec![id(3)], true)) {
        ClientEvent::Needed { sent, need } => {
            assert_eq!(sent, [id(1), id(2), id(3)].into_iter().collect());
            assert_eq!(need, [id(1), id(3)].into_iter().collect());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(session.phase(), ClientPhase::CatchingUp);
    // No sketch key: a root in `catch_up_done` cannot be checked.
    assert!(matches!(
        take(&mut session, done(3)),
        ClientEvent::CaughtUp { key: None, .. }
    ));
    assert!(session.is_steady());

    // A client with no node sends one empty frame, marked last.
    let mut empty = listing_ids();
    let frames = empty.send_ids(Vec::new()).unwrap();
    assert_eq!(frames.len(), 1);
    assert!(matches!(decode(&frames[0]), Message::Ids(Ids { ids, last: true }) if ids.is_empty()));

    // A `need` may only name ids we listed.
    let mut session = await_need();
    assert_eq!(
        refuse(&mut session, need(vec![id(9)], false)),
        Misbehaved::NeedNotListed(id(9))
    );
}

#[test]
fn a_sketch_arrives_over_frames_and_a_want_is_confirmed_by_the_stream() {
    let mut relay = Ibf::new(4).unwrap();
    for short in [3, 5, 8] {
        relay.insert(short);
    }
    let cells = relay.cells();
    let mut session = await_sketch();
    for part in cells[..40].chunks(20) {
        assert!(matches!(
            take(&mut session, sketch_frame(key(), 4, false, part)),
            ClientEvent::Partial
        ));
    }
    match take(&mut session, sketch_frame(key(), 4, false, &cells[40..])) {
        ClientEvent::Sketch { key: k, sketch } => {
            assert_eq!(k, key());
            assert_eq!(sketch, relay, "the cells, in order, at their size");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(session.phase(), ClientPhase::Decoding);
    let shared = SetDigest::of(&[id(1)]);
    let frames = session.want(&[3, 5], shared).unwrap();
    let last = frames.last().map(decode);
    assert!(
        matches!(&last, Some(Message::Want(Want { last: true, shared: Some(s), .. })) if *s == shared)
    );
    assert_eq!(session.phase(), ClientPhase::Wanted);
    assert!(matches!(
        take(&mut session, batch(2, "wanted")),
        ClientEvent::Batch(_)
    ));
    assert_eq!(session.phase(), ClientPhase::CatchingUp);
    // The root is checked under the sketch's key.
    assert!(matches!(
        take(&mut session, done(3)),
        ClientEvent::CaughtUp { key: Some(k), .. } if k == key()
    ));
    assert_eq!(session.phase(), ClientPhase::Steady);

    // With nothing to stream, `catch_up_done` confirms the want at once.
    let mut session = wanted();
    assert!(matches!(
        take(&mut session, done(3)),
        ClientEvent::CaughtUp { key: Some(_), .. }
    ));
}

#[test]
fn a_retry_gets_the_extension_once_then_only_buckets() {
    // The relay's sketch at 2^5 and its fold to 2^4, as it would send them.
    let mut big = Ibf::new(5).unwrap();
    for short in 1..=40 {
        big.insert(short * 7919);
    }
    let small = big.fold(4).unwrap();
    let mut session = await_sketch();
    let ClientEvent::Sketch { sketch, .. } =
        take(&mut session, sketch_frame(key(), 4, false, small.cells()))
    else {
        panic!("a whole sketch");
    };
    assert_eq!(sketch, small);
    let retry = session.retry(sketch, 6).unwrap();
    assert!(matches!(
        decode(&retry),
        Message::Retry(Retry { cells_left: 6 })
    ));
    assert_eq!(session.phase(), ClientPhase::Retried);
    let lower = big.lower_halves().unwrap();
    let (first, rest) = lower.split_at(10);
    assert!(matches!(
        take(&mut session, sketch_frame(key(), 5, true, first)),
        ClientEvent::Partial
    ));
    let ClientEvent::Sketch { sketch, .. } = take(&mut session, sketch_frame(key(), 5, true, rest))
    else {
        panic!("the extension completes the sketch");
    };
    assert_eq!(
        sketch, big,
        "the upper halves are rebuilt from the sketch held"
    );
    let _ = session.retry(sketch, 3).unwrap();
    assert_eq!(session.phase(), ClientPhase::RetriedExtension);
    assert_eq!(
        refuse(&mut session, sketch_frame(key(), 6, true, &empty_cells(96))),
        Misbehaved::Unexpected {
            ty: MessageType::Sketch,
            phase: ClientPhase::RetriedExtension
        }
    );
}

#[test]
fn bad_sketch_frames_are_refused_for_their_reason() {
    let short_key = Message::Sketch(Sketch {
        log2: 4,
        extension: false,
        key: Bytes::from_static(&[1; 3]),
        cells: Bytes::new(),
    });
    let partial_cell = Message::Sketch(Sketch {
        log2: 4,
        extension: false,
        key: Bytes::copy_from_slice(key().wire()),
        cells: Bytes::from(vec![0u8; 13 * 2 + 5]),
    });
    let cases: Vec<Refusal> = vec![
        (
            "short key",
            await_sketch,
            short_key,
            Misbehaved::BadKey(MessageType::Sketch),
        ),
        (
            "partial cell",
            await_sketch,
            partial_cell,
            Misbehaved::SketchCells(ibf::SketchError::BadSize),
        ),
        (
            "beyond the largest size",
            await_sketch,
            sketch_frame(key(), 25, false, &empty_cells(3)),
            Misbehaved::SketchSize(25),
        ),
        (
            "more cells than the size holds",
            await_sketch,
            sketch_frame(key(), 4, false, &empty_cells(49)),
            Misbehaved::SketchOverfull,
        ),
        (
            "more cells over two frames",
            sketching,
            sketch_frame(key(), 4, false, &empty_cells(46)),
            Misbehaved::SketchOverfull,
        ),
        (
            "an extension first",
            await_sketch,
            sketch_frame(key(), 5, true, &empty_cells(48)),
            Misbehaved::ExtensionWithoutSketch,
        ),
        (
            "another key mid-sketch",
            sketching,
            sketch_frame(other_key(), 4, false, &empty_cells(3)),
            Misbehaved::KeyChanged(MessageType::Sketch),
        ),
        (
            "another size mid-sketch",
            sketching,
            sketch_frame(key(), 5, false, &empty_cells(3)),
            Misbehaved::SketchShapeChanged,
        ),
        (
            "an extension mid-sketch",
            sketching,
            sketch_frame(key(), 4, true, &empty_cells(3)),
            Misbehaved::SketchShapeChanged,
        ),
        (
            "an extension under another key",
            retried,
            sketch_frame(other_key(), 5, true, &empty_cells(48)),
            Misbehaved::KeyChanged(MessageType::Sketch),
        ),
        (
            "a whole sketch after retry",
            retried,
            sketch_frame(key(), 5, false, &empty_cells(96)),
            Misbehaved::NotAnExtension,
        ),
        (
            "an extension of the wrong size",
            retried,
            sketch_frame(key(), 6, true, &empty_cells(48)),
            Misbehaved::ExtensionSize { base: 4, got: 6 },
        ),
        (
            "more extension cells than the sketch held",
            retried,
            sketch_frame(key(), 5, true, &empty_cells(49)),
            Misbehaved::SketchOverfull,
        ),
        (
            "a sketch after want",
            wanted,
            sketch_frame(key(), 4, false, &empty_cells(48)),
            Misbehaved::Unexpected {
                ty: MessageType::Sketch,
                phase: ClientPhase::Wanted,
            },
        ),
        (
            "buckets mid-sketch",
            sketching,
            buckets_frame(key(), 1, &summaries(16), true),
            Misbehaved::Unexpected {
                ty: MessageType::Buckets,
                phase: ClientPhase::Sketching,
            },
        ),
        (
            "a stream before want",
            await_sketch,
            batch(2, "early"),
            Misbehaved::Unexpected {
                ty: MessageType::Batch,
                phase: ClientPhase::AwaitSketch,
            },
        ),
        (
            "a stream after retry",
            retried,
            done(2),
            Misbehaved::Unexpected {
                ty: MessageType::CatchUpDone,
                phase: ClientPhase::Retried,
            },
        ),
    ];
    refuse_all(cases);
}

#[test]
fn the_sketch_path_falls_back_to_refinement_saying_why() {
    let cases: Vec<(fn() -> ClientSession, Fallback)> = vec![
        // The relay had no sketch of the size needed.
        (await_sketch, Fallback::Undecoded),
        (retried, Fallback::Undecoded),
        (retried_extension, Fallback::Undecoded),
        // The relay did not verify our want: the marks it implied must go.
        (wanted, Fallback::Unverified),
    ];
    for (make, expected) in cases {
        let mut session = make();
        match take(&mut session, buckets_frame(key(), 1, &summaries(10), false)) {
            ClientEvent::Buckets {
                fallback,
                summaries: None,
            } => assert_eq!(fallback, Some(expected)),
            other => panic!("{other:?}"),
        }
        // Said once: the next frame is plain refinement.
        match take(&mut session, buckets_frame(key(), 1, &summaries(6), true)) {
            ClientEvent::Buckets {
                fallback: None,
                summaries: Some(s),
            } => assert_eq!(s.buckets.len(), 16),
            other => panic!("{other:?}"),
        }
        assert_eq!(session.phase(), ClientPhase::ListingBuckets);
    }
    // The buckets come under the key the sketch came under.
    let mut session = wanted();
    assert_eq!(
        refuse(
            &mut session,
            buckets_frame(other_key(), 1, &summaries(16), true)
        ),
        Misbehaved::KeyChanged(MessageType::Buckets)
    );
}

#[test]
fn buckets_arrive_over_frames_that_agree() {
    let mut session = refining();
    assert!(matches!(
        take(&mut session, buckets_frame(key(), 1, &summaries(9), false)),
        ClientEvent::Buckets {
            fallback: None,
            summaries: None
        }
    ));
    let all = summaries(16);
    match take(&mut session, buckets_frame(key(), 1, &all[9..], true)) {
        ClientEvent::Buckets {
            fallback: None,
            summaries: Some(s),
        } => {
            assert_eq!((s.key, s.depth, s.expected), (key(), 1, 12));
            let mut expected = summaries(9);
            expected.extend_from_slice(&all[9..]);
            assert_eq!(s.buckets, expected);
        }
        other => panic!("{other:?}"),
    }
    let frames = session
        .bucket_ids(&[0b11, 0], &[4, 5], &[], HashSet::new())
        .unwrap();
    assert!(matches!(
        decode(&frames[0]),
        Message::BucketIds(BucketIds { last: true, .. })
    ));
    assert_eq!(session.phase(), ClientPhase::AwaitMissing);

    let mut expected_changed = buckets_frame(key(), 1, &summaries(3), false);
    if let Message::Buckets(b) = &mut expected_changed {
        b.expected = 13;
    }
    let cases: Vec<Refusal> = vec![
        (
            "short key",
            refining,
            Message::Buckets(Buckets {
                depth: 1,
                expected: 1,
                key: Bytes::from_static(&[0; 15]),
                summaries: Bytes::new(),
                last: false,
            }),
            Misbehaved::BadKey(MessageType::Buckets),
        ),
        (
            "depth 0",
            refining,
            buckets_frame(key(), 0, &summaries(1), true),
            Misbehaved::BucketDepth(0),
        ),
        (
            "depth 5",
            refining,
            buckets_frame(key(), 5, &[], false),
            Misbehaved::BucketDepth(5),
        ),
        (
            "another key",
            refining_midway,
            buckets_frame(other_key(), 1, &summaries(3), false),
            Misbehaved::KeyChanged(MessageType::Buckets),
        ),
        (
            "another depth",
            refining_midway,
            buckets_frame(key(), 2, &summaries(3), false),
            Misbehaved::BucketDepthChanged { was: 1, now: 2 },
        ),
        (
            "another expected difference",
            refining_midway,
            expected_changed,
            Misbehaved::ExpectedChanged { was: 12, now: 13 },
        ),
        (
            "a truncated summary",
            refining,
            Message::Buckets(Buckets {
                depth: 1,
                expected: 1,
                key: Bytes::copy_from_slice(key().wire()),
                summaries: Bytes::from_static(&[3, 1, 2]),
                last: false,
            }),
            Misbehaved::SummariesTruncated,
        ),
        (
            "more summaries than buckets",
            refining_midway,
            buckets_frame(key(), 1, &summaries(12), false),
            Misbehaved::SummariesOverfull { buckets: 16 },
        ),
        (
            "too few by the last frame",
            refining_midway,
            buckets_frame(key(), 1, &summaries(3), true),
            Misbehaved::SummariesMissing {
                got: 8,
                buckets: 16,
            },
        ),
        (
            "missing before bucket_ids",
            refining_midway,
            missing_frame(&[], true, &[]),
            Misbehaved::Unexpected {
                ty: MessageType::Missing,
                phase: ClientPhase::Refining,
            },
        ),
        (
            "buckets after bucket_ids",
            await_missing,
            buckets_frame(key(), 1, &summaries(16), true),
            Misbehaved::Unexpected {
                ty: MessageType::Buckets,
                phase: ClientPhase::AwaitMissing,
            },
        ),
    ];
    refuse_all(cases);
}

#[test]
fn missing_settles_the_round_or_asks_for_one_relist() {
    let mut session = await_missing();
    assert!(matches!(
        take(&mut session, missing_frame(&[10, 11], false, &[])),
        ClientEvent::Partial
    ));
    match take(&mut session, missing_frame(&[12], true, &[0b100, 0])) {
        ClientEvent::Relist {
            key: k,
            depth,
            relist,
        } => {
            assert_eq!((k, depth), (key(), 1));
            assert_eq!(&relist[..], &[0b100, 0]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(session.phase(), ClientPhase::Relisting);
    let frames = session.relist(&[20, 21]).unwrap();
    match decode(&frames[0]) {
        Message::BucketIds(ids) => {
            assert_eq!(
                &ids.differing[..],
                &[0b100, 0],
                "exactly the relisted buckets"
            );
            assert!(ids.sketches.is_empty(), "by lists only");
            assert_eq!(protocol::unpack_shorts(&ids.shorts).unwrap(), vec![20, 21]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(session.phase(), ClientPhase::AwaitMissing);
    match take(&mut session, missing_frame(&[13], true, &[])) {
        ClientEvent::Missing {
            key: k,
            covered,
            missing,
        } => {
            assert_eq!(k, key());
            assert_eq!(covered, [id(1), id(2)].into_iter().collect());
            assert_eq!(
                missing,
                [10, 11, 12, 13].into_iter().collect(),
                "both rounds"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(session.phase(), ClientPhase::CatchingUp);
    assert!(matches!(
        take(&mut session, done(5)),
        ClientEvent::CaughtUp { key: Some(k), .. } if k == key()
    ));

    let second_relist = || {
        let mut session = relisting();
        let _ = session.relist(&[]).unwrap();
        session
    };
    let cases: Vec<Refusal> = vec![
        (
            "a partial short id",
            await_missing,
            Message::Missing(Missing {
                shorts: Bytes::from_static(&[1, 2, 3]),
                last: true,
                relist: Bytes::new(),
            }),
            Misbehaved::MissingShorts(protocol::ShortsLengthError(3)),
        ),
        (
            "a relist before the last frame",
            await_missing,
            missing_frame(&[], false, &[1, 0]),
            Misbehaved::RelistNotLast,
        ),
        (
            "a relist of the wrong length",
            await_missing,
            missing_frame(&[], true, &[1]),
            Misbehaved::RelistLength {
                got: 1,
                expected: 2,
            },
        ),
        (
            "a third round",
            second_relist,
            missing_frame(&[], true, &[1, 0]),
            Misbehaved::SecondRelist,
        ),
    ];
    refuse_all(cases);
}
