//! Malformed input for every decoder (protocol/README.md §9, §10).
//!
//! Each message type starts from valid encodings, which are then cut at every byte, given every
//! other type number, extended by a byte, and have each field (and each field of each node)
//! replaced by a value of the wrong MessagePack type. Every case must come back as a typed
//! [`DecodeError`], never a panic, and [`protocol::peek_type`] must name the type whenever the
//! envelope is readable. The same frames are then fed to a relay session in steady state: it must
//! answer with one `error` frame and keep the room's accepted set unchanged, and a valid `pack`
//! right after must still be accepted.

mod common;

use std::ops::Range;
use std::time::Instant;

use bytes::Bytes;
use weft::node::{
    AuthorKey, BlobHash, BlobRef, Node, NodeId, NodeLimits, Rejection, RoomId, TreeHash,
};
use weft::protocol::{
    self, Ack, Batch, Broadcast, BucketIds, Buckets, Capabilities, CatchUpDone, CloseCode, Credit,
    DecodeError, ErrorCode, ErrorMessage, Hello, Ids, Message, MessageType, Missing, Need, Outcome,
    Pack, Plan, Presence, PresenceUpdate, RelayLimits, Resolved, Retry, Sketch, Subscribe,
    Subscribed, SyncHints, TreeRoot, Unsubscribe, Want, Watermark, Welcome,
};
use weft::recon::SetDigest;
use weft::room::{Audience, Hub, HubConfig, OrphanLimits, Outbox, Room, SessionId};
use weft::session::relay::MAX_ERRORS;

fn room_id() -> RoomId {
    RoomId::new("demo").expect("valid room id")
}

fn nodes() -> Vec<Node> {
    let room = room_id();
    let root = Node::new(&room, vec![], 0, None, "notes/a", vec![], b"hello".to_vec());
    let authored = Node::new(
        &room,
        vec![],
        0,
        Some(AuthorKey([0xaa; 32])),
        "notes/b",
        vec![],
        b"hi".to_vec(),
    );
    let blobbed = Node::new(
        &room,
        vec![],
        0,
        None,
        "files/report.pdf",
        vec![BlobRef {
            hash: BlobHash([0xbb; 32]),
            size: 1024,
        }],
        Vec::new(),
    );
    let child = Node::new(
        &room,
        vec![root.id, authored.id],
        1,
        Some(AuthorKey([0xcc; 32])),
        "ü/ß",
        vec![BlobRef {
            hash: BlobHash([1; 32]),
            size: 70_000,
        }],
        vec![7u8; 300],
    );
    vec![root, authored, blobbed, child]
}

/// Valid messages of every type, with the shapes that matter for decoding (options set and
/// unset, empty and non-empty arrays, every integer width).
fn valid_messages() -> Vec<Message> {
    let nodes = nodes();
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
    let digest = SetDigest::of(&ids);
    vec![
        Message::Hello(Hello {
            min_version: 1,
            max_version: 1,
            capabilities: Capabilities::PRESENCE,
            hints: SyncHints::default(),
            credit: 1 << 20,
            subscribe: None,
        }),
        Message::Hello(Hello {
            min_version: 0,
            max_version: 300,
            capabilities: Capabilities(u64::MAX),
            hints: SyncHints {
                digest,
                watermark: Some(Watermark {
                    epoch: 7,
                    seq: 70_000,
                }),
                heads: ids[2..].to_vec(),
                unsynced: 3,
                estimator: Some(Bytes::from(vec![0x5a; 128])),
            },
            credit: u64::MAX,
            subscribe: Some(vec!["docs/**".into(), r"lit\*/x".into()]),
        }),
        Message::Welcome(Welcome {
            version: 1,
            capabilities: Capabilities::PRESENCE,
            peer: 3,
            epoch: 1,
            seq: 500,
            plan: Plan::SendIds,
            limits: Some(RelayLimits {
                max_frame: 70_000,
                ..RelayLimits::default()
            }),
        }),
        Message::Ids(Ids {
            ids: ids.clone(),
            last: false,
        }),
        Message::Ids(Ids {
            ids: vec![],
            last: true,
        }),
        Message::Need(Need {
            ids: ids[..1].to_vec(),
            last: true,
        }),
        Message::Batch(Batch {
            through: 4,
            nodes: nodes.clone(),
        }),
        Message::CatchUpDone(CatchUpDone {
            seq: 4,
            digest,
            root: None,
        }),
        Message::CatchUpDone(CatchUpDone {
            seq: 4,
            digest,
            root: Some(TreeRoot {
                count: 4,
                hash: TreeHash([9; 32]),
            }),
        }),
        Message::Credit(Credit { bytes: 65_536 }),
        Message::Pack(Pack {
            number: 1,
            nodes: nodes.clone(),
        }),
        Message::Ack(Ack {
            number: 1,
            outcomes: vec![
                Outcome::Accepted(1),
                Outcome::Duplicate(2),
                Outcome::Pending,
                Outcome::Rejected(Rejection::BadPath),
            ],
        }),
        Message::Resolved(Resolved {
            outcomes: vec![
                (ids[0], Outcome::Accepted(9)),
                (ids[1], Outcome::Rejected(Rejection::OrphanExpired)),
            ],
        }),
        Message::Broadcast(Broadcast {
            first_seq: 1,
            nodes: nodes[..2].to_vec(),
        }),
        Message::Presence(Presence {
            state: Bytes::from_static(b"cursor:3"),
        }),
        Message::PresenceUpdate(PresenceUpdate {
            peer: 2,
            state: Bytes::new(),
        }),
        Message::ErrorMessage(ErrorMessage::new(
            ErrorCode::Malformed,
            Some(MessageType::Pack),
            "bad",
        )),
        Message::Sketch(Sketch {
            log2: 4,
            extension: false,
            key: Bytes::from(vec![9u8; 16]),
            cells: Bytes::from(vec![1u8; 13 * 48]),
        }),
        Message::Want(Want {
            shorts: protocol::pack_shorts([1, u64::MAX]),
            last: true,
            shared: Some(digest),
        }),
        Message::Want(Want {
            shorts: Bytes::new(),
            last: false,
            shared: None,
        }),
        Message::Retry(Retry { cells_left: 300 }),
        Message::Buckets(Buckets {
            depth: 1,
            expected: 1_000,
            key: Bytes::from(vec![9u8; 16]),
            summaries: Bytes::from(vec![0u8; 17 * 16]),
            last: true,
        }),
        Message::BucketIds(BucketIds {
            differing: Bytes::from(vec![0xff, 0x01]),
            shorts: protocol::pack_shorts([5]),
            sketches: protocol::pack_bucket_sketches(&[protocol::BucketSketch {
                bucket: 9,
                count: 40,
                log2: 1,
                cells: Bytes::from(vec![3u8; 6 * 13]),
            }]),
            last: true,
        }),
        Message::Missing(Missing {
            shorts: protocol::pack_shorts([6, 7]),
            last: false,
            relist: Bytes::new(),
        }),
        Message::Subscribe(Subscribe {
            number: 1,
            patterns: vec!["docs/**".into()],
        }),
        Message::Unsubscribe(Unsubscribe {
            number: 2,
            patterns: vec!["docs/**".into(), "notes/*".into()],
        }),
        Message::Subscribed(Subscribed {
            number: 1,
            patterns: vec!["docs/**".into()],
            seq: 40,
        }),
    ]
}

/// One mutated frame and what decoding it must give.
struct Case {
    what: String,
    frame: Vec<u8>,
    /// `None`: the mutation may still be a valid frame (a type flip between same-shaped bodies).
    expect: Option<Expect>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    BadEnvelope,
    UnknownType(u64),
    BadBody(MessageType),
    Trailing(MessageType, usize),
}

fn classify(e: &DecodeError) -> Expect {
    match e {
        DecodeError::BadEnvelope => Expect::BadEnvelope,
        DecodeError::UnknownType(code) => Expect::UnknownType(*code),
        // A map or extension anywhere in the body is a malformed body too, caught earlier.
        DecodeError::BadBody { ty, .. } | DecodeError::MapOrExt { ty } => Expect::BadBody(*ty),
        DecodeError::TrailingBytes { ty, count } => Expect::Trailing(*ty, *count),
    }
}

/// Values no v1 field accepts at the top level (the options `want.shared`,
/// `catch_up_done.root` and `welcome.limits` aside): nil, a
/// negative integer, a float, a map, an extension and the never-used marker 0xc1.
const WRONG_EVERYWHERE: &[&[u8]] = &[
    &[0xc0],
    &[0xff],
    &[0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0],
    &[0x80],
    &[0xd4, 0x00, 0x00],
    &[0xc1],
];

fn splice(frame: &[u8], range: Range<usize>, with: &[u8]) -> Vec<u8> {
    let mut out = frame[..range.start].to_vec();
    out.extend_from_slice(with);
    out.extend_from_slice(&frame[range.end..]);
    out
}

/// Every mutation of one valid frame.
fn mutations(message: &Message) -> Vec<Case> {
    let ty = message.message_type();
    let frame = message.encode().expect("valid messages encode").to_vec();
    let mut cases = Vec::new();
    let name = |what: String| format!("{ty:?} {what}");

    // Cut at every byte: a strict prefix is never a frame.
    for cut in 0..frame.len() {
        let expect = if cut < 2 {
            Expect::BadEnvelope
        } else {
            Expect::BadBody(ty)
        };
        cases.push(Case {
            what: name(format!("cut to {cut} bytes")),
            frame: frame[..cut].to_vec(),
            expect: Some(expect),
        });
    }

    // Every other type number, as the shortest unsigned integer.
    for code in 0u64..=255 {
        if code == u64::from(ty.code()) {
            continue;
        }
        let encoded: Vec<u8> = if code < 0x80 {
            vec![code as u8]
        } else {
            vec![0xcc, code as u8]
        };
        let expect = match MessageType::from_code(code) {
            None => Some(Expect::UnknownType(code)),
            // Same-shaped bodies (ids/need, batch/pack/broadcast) stay valid.
            Some(_) => None,
        };
        cases.push(Case {
            what: name(format!("retyped as {code}")),
            frame: splice(&frame, 1..2, &encoded),
            expect,
        });
    }

    // One byte too many.
    for extra in [0x00u8, 0xc0, 0x92, 0xff] {
        let mut longer = frame.clone();
        longer.push(extra);
        cases.push(Case {
            what: name(format!("followed by {extra:#04x}")),
            frame: longer,
            expect: Some(Expect::Trailing(ty, 1)),
        });
    }

    // Each body field replaced by a value of the wrong type.
    let fields = common::body_fields(&frame).expect("valid frames have a body array");
    for (i, field) in fields.iter().enumerate() {
        for wrong in WRONG_EVERYWHERE {
            let option_to_nil = matches!(
                (ty, i),
                (MessageType::Want, 2)
                    | (MessageType::CatchUpDone, 2)
                    | (MessageType::Welcome, 6)
                    | (MessageType::Hello, 5)
            ) && *wrong == [0xc0];
            cases.push(Case {
                what: name(format!("field {i} replaced by {}", hex::encode(wrong))),
                frame: splice(&frame, field.clone(), wrong),
                expect: (!option_to_nil).then_some(Expect::BadBody(ty)),
            });
        }
    }

    // Each field of each node replaced by a value of the wrong type (`author` may be nil).
    if matches!(
        ty,
        MessageType::Batch | MessageType::Pack | MessageType::Broadcast
    ) {
        let nodes_field = fields[1].clone();
        let nodes = common::array_elements(&frame, nodes_field.start).expect("nodes array");
        for (n, node) in nodes.iter().enumerate() {
            let node_fields = common::array_elements(&frame, node.start).expect("node array");
            assert_eq!(node_fields.len(), 7, "a node has seven fields");
            for (k, field) in node_fields.iter().enumerate() {
                for wrong in WRONG_EVERYWHERE {
                    if k == 3 && *wrong == [0xc0] {
                        continue;
                    }
                    cases.push(Case {
                        what: name(format!(
                            "node {n} field {k} replaced by {}",
                            hex::encode(wrong)
                        )),
                        frame: splice(&frame, field.clone(), wrong),
                        expect: Some(Expect::BadBody(ty)),
                    });
                }
            }
            // Node arrays one short and one long.
            let last = node_fields[6].clone();
            cases.push(Case {
                what: name(format!("node {n} without payload")),
                frame: splice(
                    &splice(&frame, last, &[]),
                    node.start..node.start + 1,
                    &[0x96],
                ),
                expect: Some(Expect::BadBody(ty)),
            });
            let mut longer = frame.clone();
            longer.insert(node.end, 0xc0);
            longer[node.start] = 0x98;
            cases.push(Case {
                what: name(format!("node {n} with an eighth field")),
                frame: longer,
                expect: Some(Expect::BadBody(ty)),
            });
        }
    }

    // Body arrays one short and one long.
    let header = frame[2];
    assert!((0x91..=0x9e).contains(&header), "small bodies use fixarray");
    if let Some(last) = fields.last() {
        cases.push(Case {
            what: name("without its last field".into()),
            frame: splice(&splice(&frame, last.clone(), &[]), 2..3, &[header - 1]),
            expect: Some(Expect::BadBody(ty)),
        });
    }
    let mut longer = splice(&frame, 2..3, &[header + 1]);
    longer.push(0x00);
    cases.push(Case {
        what: name("with an extra field".into()),
        frame: longer,
        expect: Some(Expect::BadBody(ty)),
    });
    cases
}

fn all_cases() -> Vec<Case> {
    valid_messages().iter().flat_map(mutations).collect()
}

#[test]
fn every_message_type_has_a_valid_sample() {
    let types: Vec<MessageType> = valid_messages().iter().map(Message::message_type).collect();
    for ty in MessageType::ALL {
        assert!(types.contains(ty), "no sample of {ty:?}");
    }
    for message in valid_messages() {
        let frame = message.encode().expect("encodes");
        assert_eq!(protocol::decode(&frame).expect("decodes"), message);
    }
}

#[test]
fn mutations_give_typed_errors_and_peek_names_the_type() {
    let cases = all_cases();
    assert!(cases.len() > 3000, "only {} cases", cases.len());
    let mut still_valid = 0;
    for case in &cases {
        let result = protocol::decode(&case.frame);
        let peeked = protocol::peek_type(&case.frame);
        match (&result, case.expect) {
            (Err(e), Some(expect)) => assert_eq!(classify(e), expect, "{}", case.what),
            (Err(e), None) => assert!(
                matches!(e, DecodeError::BadBody { .. }),
                "{}: {e:?}",
                case.what
            ),
            (Ok(m), None) => {
                // A retyped frame that is still valid decodes as the new type and survives a
                // round trip. (It need not be canonical: the reference decoder reads an empty
                // `bin` as an empty array, protocol/README.md §10.9.)
                assert_eq!(Some(m.message_type()), peeked, "{}", case.what);
                let again = m.encode().expect("re-encodes");
                assert_eq!(
                    &protocol::decode(&again).expect("decodes"),
                    m,
                    "{}",
                    case.what
                );
                still_valid += 1;
            }
            (Ok(m), Some(expect)) => panic!("{}: expected {expect:?}, decoded {m:?}", case.what),
        }
        // peek_type names the type exactly when the envelope is readable and the type known.
        let expected_peek = match &result {
            Ok(m) => Some(m.message_type()),
            Err(
                DecodeError::BadBody { ty, .. }
                | DecodeError::MapOrExt { ty }
                | DecodeError::TrailingBytes { ty, .. },
            ) => Some(*ty),
            Err(DecodeError::BadEnvelope | DecodeError::UnknownType(_)) => None,
        };
        assert_eq!(peeked, expected_peek, "{}", case.what);
        // The error frame that answers it names the same type.
        if let Err(e) = &result {
            let reply = e.to_message();
            assert_eq!(
                reply.message_type,
                expected_peek.map_or(0, MessageType::code),
                "{}",
                case.what
            );
            let code = match e {
                DecodeError::UnknownType(_) => ErrorCode::UnknownType,
                _ => ErrorCode::Malformed,
            };
            assert_eq!(reply.code, code.code(), "{}", case.what);
        }
    }
    // ids<->need and batch<->pack<->broadcast share a shape.
    assert!(still_valid > 0);
}

#[test]
fn arbitrary_byte_changes_never_panic() {
    for message in valid_messages() {
        let frame = message.encode().expect("encodes").to_vec();
        for at in 0..frame.len() {
            for value in [0x00u8, 0x7f, 0x80, 0xc1, 0xcf, 0xdd, 0xff, frame[at] ^ 0x01] {
                let mut changed = frame.clone();
                changed[at] = value;
                if let Ok(m) = protocol::decode(&changed) {
                    // Whatever decodes must survive its own round trip.
                    let again = m.encode().expect("re-encodes");
                    assert_eq!(protocol::decode(&again).expect("decodes again"), m);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The same frames against a relay session in steady state.

#[allow(clippy::disallowed_methods)] // the virtual clock needs one real starting point
fn start_time() -> Instant {
    Instant::now()
}

struct Relay {
    hub: Hub,
    now: Instant,
    next_session: SessionId,
    next_node: u64,
}

impl Relay {
    fn new() -> Self {
        let room = Room::new(room_id(), 1, NodeLimits::default(), OrphanLimits::default());
        Self {
            hub: Hub::new(room, HubConfig::immediate()),
            now: start_time(),
            next_session: 1,
            next_node: 0,
        }
    }

    fn accepted(&self) -> (u64, SetDigest) {
        (self.hub.room().seq(), self.hub.room().digest())
    }

    /// Connects a session and brings it to steady state with an in-sync hello.
    fn steady_session(&mut self) -> SessionId {
        let id = self.next_session;
        self.next_session += 1;
        self.hub.connect(id, self.now);
        let hello = Message::Hello(Hello {
            min_version: 1,
            max_version: 1,
            capabilities: Capabilities::PRESENCE,
            hints: SyncHints {
                digest: self.hub.room().digest(),
                watermark: None,
                heads: vec![],
                ..SyncHints::default()
            },
            credit: 1 << 20,
            subscribe: None,
        });
        let out = self.frame(id, &hello.encode().expect("encodes"));
        assert!(out.closes.is_empty());
        let welcome = out
            .frames
            .iter()
            .filter_map(|f| protocol::decode(&f.frame).ok())
            .find_map(|m| match m {
                Message::Welcome(w) => Some(w),
                _ => None,
            })
            .expect("a welcome");
        assert_eq!(welcome.plan, Plan::InSync);
        assert!(self.live().contains(&id), "session {id} is steady");
        id
    }

    fn live(&self) -> Vec<SessionId> {
        self.hub
            .recipients(Audience::Live { except: None })
            .collect()
    }

    fn frame(&mut self, id: SessionId, frame: &[u8]) -> Outbox {
        self.now += std::time::Duration::from_millis(1);
        self.hub.handle_frame(id, frame, self.now)
    }

    /// Sends a pack with one fresh root node and checks it is accepted and broadcast to
    /// `watcher` (not back to the sender).
    fn push_valid(&mut self, id: SessionId, watcher: Option<SessionId>) {
        self.next_node += 1;
        let node = Node::new(
            &room_id(),
            vec![],
            0,
            None,
            format!("fresh/{}", self.next_node),
            vec![],
            self.next_node.to_le_bytes().to_vec(),
        );
        let (seq, _) = self.accepted();
        let pack = Message::Pack(Pack {
            number: self.next_node,
            nodes: vec![node],
        });
        let out = self.frame(id, &pack.encode().expect("encodes"));
        assert!(out.closes.is_empty());
        let mut acked = false;
        let mut broadcast = false;
        for f in &out.frames {
            match protocol::decode(&f.frame).expect("relay frames decode") {
                Message::Ack(ack) => {
                    assert_eq!(f.to, Audience::One(id));
                    assert_eq!(ack.outcomes, vec![Outcome::Accepted(seq + 1)]);
                    acked = true;
                }
                Message::Broadcast(b) => {
                    let to: Vec<SessionId> = self.hub.recipients(f.to.clone()).collect();
                    assert!(!to.contains(&id), "echoed to the sender");
                    assert!(watcher.is_none_or(|w| to.contains(&w)), "not broadcast");
                    assert_eq!(b.first_seq, seq + 1);
                    broadcast = true;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(acked && (broadcast || watcher.is_none()));
        assert_eq!(self.accepted().0, seq + 1);
    }
}

/// Exactly one frame, to `id`, and it is an `error`.
fn single_error(out: &Outbox, id: SessionId) -> ErrorMessage {
    assert!(out.closes.is_empty(), "closed: {:?}", out.closes);
    assert_eq!(out.frames.len(), 1, "{:?}", out.frames);
    assert_eq!(out.frames[0].to, Audience::One(id));
    match protocol::decode(&out.frames[0].frame).expect("error frames decode") {
        Message::ErrorMessage(e) => e,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[test]
fn steady_session_answers_malformed_frames_and_keeps_the_room() {
    let mut relay = Relay::new();
    let watcher = relay.steady_session();
    // Something in the room to protect.
    relay.push_valid(watcher, None);
    let mut victim = relay.steady_session();
    relay.push_valid(victim, Some(watcher));
    let mut errors_on_victim = 0;
    let mut fed = 0;
    for case in all_cases() {
        let Err(decode_error) = protocol::decode(&case.frame) else {
            continue;
        };
        if errors_on_victim == MAX_ERRORS - 1 {
            // The next error would close it (tested below); carry on with a fresh session.
            let out = relay.hub.disconnect(victim);
            assert!(out.frames.is_empty() && out.closes.is_empty());
            victim = relay.steady_session();
            errors_on_victim = 0;
        }
        let before = relay.accepted();
        let out = relay.frame(victim, &case.frame);
        let error = single_error(&out, victim);
        errors_on_victim += 1;
        fed += 1;
        let expected = decode_error.to_message();
        let code = match decode_error {
            DecodeError::UnknownType(_) => ErrorCode::UnknownType,
            _ => ErrorCode::Malformed,
        };
        assert_eq!(error.code, code.code(), "{}", case.what);
        assert_eq!(error.message_type, expected.message_type, "{}", case.what);
        assert_eq!(relay.accepted(), before, "{} changed the room", case.what);
        assert!(relay.live().contains(&victim), "{}", case.what);
        relay.push_valid(victim, Some(watcher));
    }
    assert!(fed > 3000, "only {fed} frames fed");
}

#[test]
fn the_eighth_error_closes_with_protocol_violation() {
    let mut relay = Relay::new();
    let watcher = relay.steady_session();
    let victim = relay.steady_session();
    relay.push_valid(victim, Some(watcher));
    let before = relay.accepted();
    let bad = [0x92, 0x07, 0x91, 0xc0]; // credit with a nil
    for n in 1..MAX_ERRORS {
        let error = single_error(&relay.frame(victim, &bad), victim);
        assert_eq!(error.code, ErrorCode::Malformed.code(), "error {n}");
    }
    let out = relay.frame(victim, &bad);
    assert_eq!(out.closes, vec![(victim, CloseCode::ProtocolViolation)]);
    assert_eq!(out.frames.len(), 1, "the error frame precedes the close");
    assert_eq!(relay.accepted(), before);
    assert!(!relay.live().contains(&victim));
    // The room and its other sessions carry on.
    let other = relay.steady_session();
    relay.push_valid(other, Some(watcher));
}

#[test]
fn malformed_first_frame_closes_before_joining() {
    let mut relay = Relay::new();
    let watcher = relay.steady_session();
    relay.push_valid(watcher, None);
    let hello = Message::Hello(Hello {
        min_version: 1,
        max_version: 1,
        capabilities: Capabilities::NONE,
        hints: SyncHints::default(),
        credit: 1 << 20,
        subscribe: None,
    });
    let hello_cases = mutations(&hello);
    for case in hello_cases.iter().filter(|c| c.expect.is_some()) {
        let before = relay.accepted();
        let id = relay.next_session;
        relay.next_session += 1;
        relay.hub.connect(id, relay.now);
        let out = relay.frame(id, &case.frame);
        assert_eq!(
            out.closes,
            vec![(id, CloseCode::ProtocolViolation)],
            "{}",
            case.what
        );
        assert_eq!(out.frames.len(), 1, "{}", case.what);
        let error = match protocol::decode(&out.frames[0].frame) {
            Ok(Message::ErrorMessage(e)) => e,
            other => panic!("{}: {other:?}", case.what),
        };
        let expected = match protocol::decode(&case.frame) {
            Err(DecodeError::UnknownType(_)) => ErrorCode::UnknownType,
            Err(_) => ErrorCode::Malformed,
            Ok(_) => ErrorCode::Unexpected,
        };
        assert_eq!(error.code, expected.code(), "{}", case.what);
        assert_eq!(relay.accepted(), before);
        assert_eq!(relay.hub.session_count(), 1, "{}", case.what);
    }
    let writer = relay.steady_session();
    relay.push_valid(writer, Some(watcher));
}
