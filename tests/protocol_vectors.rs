//! Conformance vectors (protocol/README.md §11): walks every file under `protocol/vectors/` and
//! checks both directions. A message vector's value must encode to exactly its bytes and its bytes
//! must decode to the value; an error vector's bytes must fail with the stated error; a node-id
//! vector's fields must give exactly its canonical encoding and id.
//!
//! The JSON is read strictly: unknown or missing members, bad hex, a file without vectors or a
//! directory without files fail the test, so a vector can never be skipped silently.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::{Map, Value};
use weft::node::{
    AuthorKey, BlobHash, BlobRef, DigestSum, Node, NodeId, NodeLimits, RoomId, TreeHash,
};
use weft::pattern::PatternLimits;
use weft::protocol::{
    self, Ack, Batch, BodyProblem, Broadcast, BucketIds, Buckets, Capabilities, CatchUpDone,
    Credit, DecodeError, ErrorCode, ErrorMessage, Hello, Ids, Message, MessageType, Missing, Need,
    Outcome, Pack, Plan, Presence, PresenceUpdate, RelayLimits, Resolved, Retry, Sketch, Subscribe,
    Subscribed, SyncHints, TreeRoot, Unsubscribe, Want, Watermark, Welcome,
};
use weft::recon::SetDigest;

type Res<T> = Result<T, String>;

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol/vectors")
}

/// The wire name of each message type (protocol/README.md §10.3).
fn type_name(ty: MessageType) -> &'static str {
    match ty {
        MessageType::Hello => "hello",
        MessageType::Welcome => "welcome",
        MessageType::Ids => "ids",
        MessageType::Need => "need",
        MessageType::Batch => "batch",
        MessageType::CatchUpDone => "catch_up_done",
        MessageType::Credit => "credit",
        MessageType::Pack => "pack",
        MessageType::Ack => "ack",
        MessageType::Resolved => "resolved",
        MessageType::Broadcast => "broadcast",
        MessageType::Presence => "presence",
        MessageType::PresenceUpdate => "presence_update",
        MessageType::Sketch => "sketch",
        MessageType::Want => "want",
        MessageType::Retry => "retry",
        MessageType::Buckets => "buckets",
        MessageType::BucketIds => "bucket_ids",
        MessageType::Missing => "missing",
        MessageType::Subscribe => "subscribe",
        MessageType::Unsubscribe => "unsubscribe",
        MessageType::Subscribed => "subscribed",
        MessageType::ErrorMessage => "error",
    }
}

fn type_by_name(name: &str) -> Res<MessageType> {
    MessageType::ALL
        .iter()
        .copied()
        .find(|t| type_name(*t) == name)
        .ok_or_else(|| format!("unknown message type name {name:?}"))
}

/// A JSON object whose members must each be read exactly once.
struct Obj {
    what: String,
    members: Map<String, Value>,
}

impl Obj {
    fn new(value: Value, what: &str) -> Res<Self> {
        match value {
            Value::Object(members) => Ok(Self {
                what: what.to_owned(),
                members,
            }),
            other => Err(format!("{what}: expected an object, got {other}")),
        }
    }

    fn take(&mut self, key: &str) -> Res<Value> {
        self.members
            .remove(key)
            .ok_or_else(|| format!("{}: missing member {key:?}", self.what))
    }

    fn obj(&mut self, key: &str) -> Res<Obj> {
        let what = format!("{}.{key}", self.what);
        Obj::new(self.take(key)?, &what)
    }

    fn u64(&mut self, key: &str) -> Res<u64> {
        let v = self.take(key)?;
        v.as_u64()
            .ok_or_else(|| format!("{}.{key}: expected an unsigned integer, got {v}", self.what))
    }

    fn narrow<T: TryFrom<u64>>(&mut self, key: &str) -> Res<T> {
        let v = self.u64(key)?;
        T::try_from(v).map_err(|_| format!("{}.{key}: {v} is out of range", self.what))
    }

    fn bool(&mut self, key: &str) -> Res<bool> {
        let v = self.take(key)?;
        v.as_bool()
            .ok_or_else(|| format!("{}.{key}: expected a bool, got {v}", self.what))
    }

    fn str(&mut self, key: &str) -> Res<String> {
        match self.take(key)? {
            Value::String(s) => Ok(s),
            v => Err(format!("{}.{key}: expected a string, got {v}", self.what)),
        }
    }

    fn array(&mut self, key: &str) -> Res<Vec<Value>> {
        match self.take(key)? {
            Value::Array(items) => Ok(items),
            v => Err(format!("{}.{key}: expected an array, got {v}", self.what)),
        }
    }

    fn hex(&mut self, key: &str) -> Res<Vec<u8>> {
        let s = self.str(key)?;
        parse_hex(&s).map_err(|e| format!("{}.{key}: {e}", self.what))
    }

    fn id32(&mut self, key: &str) -> Res<[u8; 32]> {
        let s = self.str(key)?;
        id32(&s).map_err(|e| format!("{}.{key}: {e}", self.what))
    }

    fn ids(&mut self, key: &str) -> Res<Vec<NodeId>> {
        let what = format!("{}.{key}", self.what);
        self.array(key)?
            .into_iter()
            .map(|v| match v {
                Value::String(s) => id32(&s).map(NodeId),
                other => Err(format!("{what}: expected an id string, got {other}")),
            })
            .collect()
    }

    /// Fails if any member was not read.
    fn finish(self) -> Res<()> {
        if self.members.is_empty() {
            Ok(())
        } else {
            let keys: Vec<&String> = self.members.keys().collect();
            Err(format!("{}: unknown members {keys:?}", self.what))
        }
    }
}

/// Lowercase hex; whitespace is ignored (it groups bytes for readers).
fn parse_hex(s: &str) -> Res<Vec<u8>> {
    let digits: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("hex must be lowercase: {s:?}"));
    }
    hex::decode(&digits).map_err(|e| format!("bad hex {s:?}: {e}"))
}

fn id32(s: &str) -> Res<[u8; 32]> {
    let bytes = parse_hex(s)?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("an id must be 32 bytes, got {} in {s:?}", bytes.len()))
}

fn digest(mut o: Obj) -> Res<SetDigest> {
    let d = SetDigest {
        count: o.u64("count")?,
        sum: DigestSum(o.id32("sum")?),
    };
    o.finish()?;
    Ok(d)
}

fn node_fields(o: &mut Obj, id: NodeId) -> Res<Node> {
    let parents = o.ids("parents")?;
    let depth = o.u64("depth")?;
    let author = match o.take("author")? {
        Value::Null => None,
        Value::String(s) => Some(AuthorKey(id32(&s)?)),
        other => Err(format!(
            "{}.author: expected null or id, got {other}",
            o.what
        ))?,
    };
    let path = o.str("path")?;
    let mut blobs = Vec::new();
    for (i, b) in o.array("blobs")?.into_iter().enumerate() {
        let mut b = Obj::new(b, &format!("{}.blobs[{i}]", o.what))?;
        blobs.push(BlobRef {
            hash: BlobHash(b.id32("hash")?),
            size: b.u64("size")?,
        });
        b.finish()?;
    }
    let payload = Bytes::from(o.hex("payload")?);
    Ok(Node {
        id,
        parents,
        depth,
        author,
        path,
        blobs,
        payload,
    })
}

fn nodes(o: &mut Obj, key: &str) -> Res<Vec<Node>> {
    let what = format!("{}.{key}", o.what);
    o.array(key)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let mut n = Obj::new(v, &format!("{what}[{i}]"))?;
            let id = NodeId(n.id32("id")?);
            let node = node_fields(&mut n, id)?;
            n.finish()?;
            Ok(node)
        })
        .collect()
}

fn outcome(v: Value, what: &str) -> Res<Outcome> {
    if v.as_str() == Some("pending") {
        return Ok(Outcome::Pending);
    }
    let mut o = Obj::new(v, what)?;
    let (key, value) = match o.members.iter().next() {
        Some((k, v)) if o.members.len() == 1 => (k.clone(), v.clone()),
        _ => return Err(format!("{what}: an outcome object has exactly one member")),
    };
    o.members.clear();
    match (key.as_str(), value) {
        ("accepted", Value::Number(n)) => n.as_u64().map(Outcome::Accepted),
        ("duplicate", Value::Number(n)) => n.as_u64().map(Outcome::Duplicate),
        ("rejected", Value::String(name)) => weft::node::Rejection::ALL
            .into_iter()
            .find(|r| format!("{r:?}") == name)
            .map(Outcome::Rejected),
        _ => None,
    }
    .ok_or_else(|| format!("{what}: not an outcome"))
}

/// A JSON array of strings.
fn strings(v: Value, what: &str) -> Res<Vec<String>> {
    let Value::Array(items) = v else {
        return Err(format!("{what}: not an array"));
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::String(s) => Ok(s),
            other => Err(format!("{what}: {other} is not a string")),
        })
        .collect()
}

fn limits(mut o: Obj) -> Res<RelayLimits> {
    let mut n = o.obj("node")?;
    let mut p = o.obj("patterns")?;
    let limits = RelayLimits {
        max_frame: o.narrow("max_frame")?,
        max_pack_nodes: o.narrow("max_pack_nodes")?,
        max_ids: o.narrow("max_ids")?,
        max_presence: o.narrow("max_presence")?,
        node: NodeLimits {
            max_payload: n.narrow("max_payload")?,
            max_parents: n.narrow("max_parents")?,
            max_path_len: n.narrow("max_path_len")?,
            max_path_segments: n.narrow("max_path_segments")?,
            max_blobs: n.narrow("max_blobs")?,
        },
        patterns: PatternLimits {
            max_pattern_len: p.narrow("max_pattern_len")?,
            max_pattern_segments: p.narrow("max_pattern_segments")?,
            max_patterns: p.narrow("max_patterns")?,
        },
    };
    n.finish()?;
    p.finish()?;
    o.finish()?;
    Ok(limits)
}

/// Builds the message a vector describes, field by field (protocol/README.md §11).
fn message(mut o: Obj) -> Res<Message> {
    let ty = type_by_name(&o.str("type")?)?;
    let message = match ty {
        MessageType::Hello => {
            let mut h = o.obj("hints")?;
            let watermark = match h.take("watermark")? {
                Value::Null => None,
                v => {
                    let mut w = Obj::new(v, "hints.watermark")?;
                    let wm = Watermark {
                        epoch: w.u64("epoch")?,
                        seq: w.u64("seq")?,
                    };
                    w.finish()?;
                    Some(wm)
                }
            };
            let hints = SyncHints {
                digest: match h.take("digest")? {
                    Value::Null => SetDigest::default(),
                    v => digest(Obj::new(v, "hints.digest")?)?,
                },
                watermark,
                heads: h.ids("heads")?,
                unsynced: h.u64("unsynced")?,
                estimator: match h.take("estimator")? {
                    Value::Null => None,
                    Value::String(s) => Some(Bytes::from(parse_hex(&s)?)),
                    other => return Err(format!("hints.estimator: {other}")),
                },
            };
            h.finish()?;
            Message::Hello(Hello {
                min_version: o.narrow("min_version")?,
                max_version: o.narrow("max_version")?,
                capabilities: Capabilities(o.u64("capabilities")?),
                hints,
                credit: o.u64("credit")?,
                subscribe: match o.take("subscribe")? {
                    Value::Null => None,
                    v => Some(strings(v, "hello.subscribe")?),
                },
            })
        }
        MessageType::Welcome => Message::Welcome(Welcome {
            version: o.narrow("version")?,
            capabilities: Capabilities(o.u64("capabilities")?),
            peer: o.u64("peer")?,
            epoch: o.u64("epoch")?,
            seq: o.u64("seq")?,
            plan: match o.str("plan")?.as_str() {
                "in_sync" => Plan::InSync,
                "catch_up" => Plan::CatchUp,
                "send_ids" => Plan::SendIds,
                "sketch" => Plan::Sketch,
                "refine" => Plan::Refine,
                other => return Err(format!("unknown plan {other:?}")),
            },
            limits: match o.take("limits")? {
                Value::Null => None,
                v => Some(limits(Obj::new(v, "welcome.limits")?)?),
            },
        }),
        MessageType::Ids => Message::Ids(Ids {
            ids: o.ids("ids")?,
            last: o.bool("last")?,
        }),
        MessageType::Need => Message::Need(Need {
            ids: o.ids("ids")?,
            last: o.bool("last")?,
        }),
        MessageType::Batch => Message::Batch(Batch {
            through: o.u64("through")?,
            nodes: nodes(&mut o, "nodes")?,
        }),
        MessageType::CatchUpDone => Message::CatchUpDone(CatchUpDone {
            seq: o.u64("seq")?,
            digest: digest(o.obj("digest")?)?,
            root: match o.take("root")? {
                Value::Null => None,
                v => {
                    let mut r = Obj::new(v, "catch_up_done.root")?;
                    let root = TreeRoot {
                        count: r.u64("count")?,
                        hash: TreeHash(r.id32("hash")?),
                    };
                    r.finish()?;
                    Some(root)
                }
            },
        }),
        MessageType::Credit => Message::Credit(Credit {
            bytes: o.u64("bytes")?,
        }),
        MessageType::Pack => Message::Pack(Pack {
            number: o.u64("number")?,
            nodes: nodes(&mut o, "nodes")?,
        }),
        MessageType::Ack => Message::Ack(Ack {
            number: o.u64("number")?,
            outcomes: o
                .array("outcomes")?
                .into_iter()
                .map(|v| outcome(v, "ack.outcomes[]"))
                .collect::<Res<_>>()?,
        }),
        MessageType::Resolved => {
            let mut outcomes = Vec::new();
            for v in o.array("outcomes")? {
                let mut e = Obj::new(v, "resolved.outcomes[]")?;
                let id = NodeId(e.id32("id")?);
                let out = outcome(e.take("outcome")?, "resolved.outcomes[].outcome")?;
                e.finish()?;
                outcomes.push((id, out));
            }
            Message::Resolved(Resolved { outcomes })
        }
        MessageType::Broadcast => Message::Broadcast(Broadcast {
            first_seq: o.u64("first_seq")?,
            nodes: nodes(&mut o, "nodes")?,
        }),
        MessageType::Presence => Message::Presence(Presence {
            state: Bytes::from(o.hex("state")?),
        }),
        MessageType::PresenceUpdate => Message::PresenceUpdate(PresenceUpdate {
            peer: o.u64("peer")?,
            state: Bytes::from(o.hex("state")?),
        }),
        MessageType::Sketch => Message::Sketch(Sketch {
            log2: o.narrow("log2")?,
            extension: o.bool("extension")?,
            key: Bytes::from(o.hex("key")?),
            cells: Bytes::from(o.hex("cells")?),
        }),
        MessageType::Want => Message::Want(Want {
            shorts: Bytes::from(o.hex("shorts")?),
            last: o.bool("last")?,
            shared: match o.take("shared")? {
                Value::Null => None,
                v => Some(digest(Obj::new(v, "want.shared")?)?),
            },
        }),
        MessageType::Retry => Message::Retry(Retry {
            cells_left: o.u64("cells_left")?,
        }),
        MessageType::Buckets => Message::Buckets(Buckets {
            depth: o.narrow("depth")?,
            expected: o.u64("expected")?,
            key: Bytes::from(o.hex("key")?),
            summaries: Bytes::from(o.hex("summaries")?),
            last: o.bool("last")?,
        }),
        MessageType::BucketIds => Message::BucketIds(BucketIds {
            differing: Bytes::from(o.hex("differing")?),
            shorts: Bytes::from(o.hex("shorts")?),
            sketches: Bytes::from(o.hex("sketches")?),
            last: o.bool("last")?,
        }),
        MessageType::Missing => Message::Missing(Missing {
            shorts: Bytes::from(o.hex("shorts")?),
            last: o.bool("last")?,
            relist: Bytes::from(o.hex("relist")?),
        }),
        MessageType::Subscribe => Message::Subscribe(Subscribe {
            number: o.u64("number")?,
            patterns: strings(o.take("patterns")?, "subscribe.patterns")?,
        }),
        MessageType::Unsubscribe => Message::Unsubscribe(Unsubscribe {
            number: o.u64("number")?,
            patterns: strings(o.take("patterns")?, "unsubscribe.patterns")?,
        }),
        MessageType::Subscribed => Message::Subscribed(Subscribed {
            number: o.u64("number")?,
            patterns: strings(o.take("patterns")?, "subscribed.patterns")?,
            seq: o.u64("seq")?,
        }),
        MessageType::ErrorMessage => Message::ErrorMessage(ErrorMessage {
            code: o.narrow("code")?,
            message_type: o.narrow("message_type")?,
            detail: o.str("detail")?,
        }),
    };
    o.finish()?;
    Ok(message)
}

fn check_message(mut v: Obj, seen: &mut BTreeSet<&'static str>) -> Res<()> {
    let bytes = v.hex("hex")?;
    let expected = message(v.obj("message")?)?;
    v.finish()?;
    let encoded = expected
        .encode()
        .map_err(|e| format!("encoding failed: {e}"))?;
    if encoded.as_ref() != bytes.as_slice() {
        return Err(format!(
            "encoding differs\n  vector: {}\n  code:   {}",
            hex::encode(&bytes),
            hex::encode(&encoded)
        ));
    }
    let decoded = protocol::decode(&bytes).map_err(|e| format!("decoding failed: {e}"))?;
    if decoded != expected {
        return Err(format!(
            "decoding differs\n  vector: {expected:?}\n  code:   {decoded:?}"
        ));
    }
    let ty = expected.message_type();
    if protocol::peek_type(&bytes) != Some(ty) {
        return Err(format!("peek_type does not name {ty:?}"));
    }
    seen.insert(type_name(ty));
    Ok(())
}

fn check_error(mut v: Obj, seen: &mut BTreeSet<String>) -> Res<()> {
    let bytes = v.hex("hex")?;
    let mut e = v.obj("error")?;
    v.finish()?;
    let stated = Value::Object(e.members.clone());
    let kind = e.str("kind")?;
    let result = protocol::decode(&bytes);
    let err = match result {
        Ok(m) => return Err(format!("expected {kind}, but it decoded to {m:?}")),
        Err(err) => err,
    };
    if let DecodeError::BadBody { problem, .. } = &err {
        seen.insert(format!("bad_body/{problem}"));
    }
    let (matches, peek, code) = match (kind.as_str(), &err) {
        ("bad_envelope", DecodeError::BadEnvelope) => (true, None, ErrorCode::Malformed),
        ("unknown_type", DecodeError::UnknownType(got)) => {
            (e.u64("code")? == *got, None, ErrorCode::UnknownType)
        }
        // A body error must be the stated problem at the stated field, so that a vector with
        // a second, earlier defect (an outdated field list, say) cannot pass for the first.
        (
            "bad_body",
            DecodeError::BadBody {
                ty, field, problem, ..
            },
        ) => (
            type_by_name(&e.str("type")?)? == *ty
                && e.str("field")? == *field
                && e.str("problem")? == problem.name(),
            Some(*ty),
            ErrorCode::Malformed,
        ),
        ("map_or_ext", DecodeError::MapOrExt { ty }) => (
            type_by_name(&e.str("type")?)? == *ty,
            Some(*ty),
            ErrorCode::Malformed,
        ),
        ("trailing_bytes", DecodeError::TrailingBytes { ty, count }) => (
            type_by_name(&e.str("type")?)? == *ty && e.u64("count")? == *count as u64,
            Some(*ty),
            ErrorCode::Malformed,
        ),
        ("bad_envelope" | "unknown_type" | "bad_body" | "map_or_ext" | "trailing_bytes", _) => {
            (false, None, ErrorCode::Malformed)
        }
        (other, _) => return Err(format!("unknown error kind {other:?}")),
    };
    if !matches {
        return Err(format!("expected {stated}, got {}", shown(&err)));
    }
    e.finish()?;
    if protocol::peek_type(&bytes) != peek {
        return Err(format!("peek_type gave {:?}", protocol::peek_type(&bytes)));
    }
    let reply = err.to_message();
    if reply.code != code.code() || reply.message_type != peek.map_or(0, MessageType::code) {
        return Err(format!("the error frame for it is {reply:?}"));
    }
    seen.insert(kind);
    Ok(())
}

/// An error as an error vector would state it.
fn shown(err: &DecodeError) -> String {
    match err {
        DecodeError::BadBody {
            ty, field, problem, ..
        } => format!(
            r#"{{"kind": "bad_body", "type": "{}", "field": "{field}", "problem": "{problem}"}} ({err})"#,
            type_name(*ty)
        ),
        other => format!("{other:?}"),
    }
}

/// The canonical encoding of protocol/README.md §3.1, written out independently of `Node`.
fn canonical(room: &str, n: &Node) -> Vec<u8> {
    fn prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    let mut out = b"weft/node/v1\0".to_vec();
    prefixed(&mut out, room.as_bytes());
    out.extend_from_slice(&(n.parents.len() as u64).to_le_bytes());
    for p in &n.parents {
        out.extend_from_slice(p.as_bytes());
    }
    out.extend_from_slice(&n.depth.to_le_bytes());
    match &n.author {
        None => out.push(0),
        Some(key) => {
            out.push(1);
            out.extend_from_slice(&key.0);
        }
    }
    prefixed(&mut out, n.path.as_bytes());
    out.extend_from_slice(&(n.blobs.len() as u64).to_le_bytes());
    for b in &n.blobs {
        out.extend_from_slice(&b.hash.0);
        out.extend_from_slice(&b.size.to_le_bytes());
    }
    prefixed(&mut out, &n.payload);
    out
}

fn check_node_id(mut v: Obj) -> Res<()> {
    let room_text = v.str("room")?;
    let room = RoomId::new(&room_text).map_err(|e| format!("room: {e}"))?;
    let mut n = v.obj("node")?;
    let node = node_fields(&mut n, NodeId::default())?;
    n.finish()?;
    let expected_canonical = v.hex("canonical")?;
    let id = NodeId(v.id32("id")?);
    v.finish()?;
    let ours = canonical(&room_text, &node);
    if ours != expected_canonical {
        return Err(format!(
            "canonical encoding differs\n  vector: {}\n  spec:   {}",
            hex::encode(&expected_canonical),
            hex::encode(&ours)
        ));
    }
    let hashed = NodeId(*blake3::hash(&expected_canonical).as_bytes());
    if hashed != id {
        return Err(format!("blake3(canonical) is {hashed}, vector says {id}"));
    }
    if node.content_id(&room) != id {
        return Err(format!("Node::content_id gives {}", node.content_id(&room)));
    }
    let built = Node::new(
        &room,
        node.parents.clone(),
        node.depth,
        node.author,
        node.path.clone(),
        node.blobs.clone(),
        node.payload.clone(),
    );
    if built.id != id {
        return Err(format!("Node::new gives {}", built.id));
    }
    Ok(())
}

/// Every file below `dir`; fails on a directory without entries.
fn files(dir: &Path, out: &mut Vec<PathBuf>) -> Res<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .map(|e| e.map(|e| e.path()).map_err(|e| e.to_string()))
        .collect::<Res<_>>()?;
    if entries.is_empty() {
        return Err(format!("{} is empty", dir.display()));
    }
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    messages: BTreeSet<&'static str>,
    errors: BTreeSet<String>,
    node_ids: usize,
    vectors: usize,
}

fn check_file(path: &Path, names: &mut BTreeMap<String, String>, tally: &mut Tally) -> Vec<String> {
    let mut failures = Vec::new();
    let shown = path
        .strip_prefix(vectors_dir())
        .unwrap_or(path)
        .display()
        .to_string();
    if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
        return vec![format!(
            "{shown}: only .jsonl files belong in protocol/vectors"
        )];
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return vec![format!("{shown}: {e}")],
    };
    let mut count = 0;
    for (i, line) in text.lines().enumerate() {
        let at = format!("{shown}:{}", i + 1);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        count += 1;
        let result = (|| -> Res<String> {
            let value: Value = serde_json::from_str(line).map_err(|e| format!("bad JSON: {e}"))?;
            let mut v = Obj::new(value, "vector")?;
            let name = v.str("name")?;
            if let Some(first) = names.insert(name.clone(), at.clone()) {
                return Err(format!("name {name:?} already used at {first}"));
            }
            let checked = match v.str("kind")?.as_str() {
                "message" => check_message(v, &mut tally.messages),
                "error" => check_error(v, &mut tally.errors),
                "node_id" => {
                    tally.node_ids += 1;
                    check_node_id(v)
                }
                other => Err(format!("unknown kind {other:?}")),
            };
            checked.map_err(|e| format!("{name}: {e}"))?;
            Ok(name)
        })();
        match result {
            Ok(_) => tally.vectors += 1,
            Err(e) => failures.push(format!("{at}: {e}")),
        }
    }
    if count == 0 {
        failures.push(format!("{shown}: no vectors"));
    }
    failures
}

#[test]
fn every_vector_holds_in_both_directions() {
    let mut paths = Vec::new();
    files(&vectors_dir(), &mut paths).unwrap_or_else(|e| panic!("{e}"));
    let mut names = BTreeMap::new();
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    for path in &paths {
        failures.extend(check_file(path, &mut names, &mut tally));
    }
    // Coverage: every message type, every decode error kind, and node ids.
    for ty in MessageType::ALL {
        if !tally.messages.contains(type_name(*ty)) {
            failures.push(format!("no vector for message type {}", type_name(*ty)));
        }
    }
    for kind in ["bad_envelope", "unknown_type", "bad_body", "trailing_bytes"] {
        if !tally.errors.contains(kind) {
            failures.push(format!("no error vector of kind {kind}"));
        }
    }
    // Every problem a body can have, but `depth`: no v1 field nests arrays without bound, so
    // the decoder's depth limit cannot be reached through a body.
    for problem in BodyProblem::ALL {
        if *problem != BodyProblem::Depth && !tally.errors.contains(&format!("bad_body/{problem}"))
        {
            failures.push(format!("no error vector with problem {problem}"));
        }
    }
    if tally.node_ids == 0 {
        failures.push("no node_id vector".to_owned());
    }
    assert!(
        failures.is_empty(),
        "{} of {} vector checks failed:\n{}",
        failures.len(),
        tally.vectors + failures.len(),
        failures.join("\n\n")
    );
    println!("{} vectors in {} files", tally.vectors, paths.len());
}

/// The strict reader must reject what a careless vector file could contain; otherwise a typo
/// would silently weaken the suite.
#[test]
fn the_vector_reader_is_strict() {
    let run = |line: &str| {
        let value: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let mut v = Obj::new(value, "vector")?;
        v.str("name")?;
        match v.str("kind")?.as_str() {
            "message" => check_message(v, &mut BTreeSet::new()),
            "error" => check_error(v, &mut BTreeSet::new()),
            "node_id" => check_node_id(v),
            other => Err(format!("unknown kind {other:?}")),
        }
    };
    let good = r#"{"kind":"message","name":"x","hex":"92 07 91 05","message":{"type":"credit","bytes":5}}"#;
    assert_eq!(run(good), Ok(()));
    let good = r#"{"kind":"error","name":"x","hex":"9207 91 a135","error":{"kind":"bad_body","type":"credit","field":"credit.bytes","problem":"type"}}"#;
    assert_eq!(run(good), Ok(()));
    for bad in [
        // Unknown member in the vector, and in the message.
        r#"{"kind":"message","name":"x","hex":"92079105","message":{"type":"credit","bytes":5},"extra":1}"#,
        r#"{"kind":"message","name":"x","hex":"92079105","message":{"type":"credit","bytes":5,"extra":1}}"#,
        // Missing member.
        r#"{"kind":"message","name":"x","hex":"92079105","message":{"type":"credit"}}"#,
        // Bytes and value disagree.
        r#"{"kind":"message","name":"x","hex":"92079106","message":{"type":"credit","bytes":5}}"#,
        // Uppercase or broken hex.
        r#"{"kind":"message","name":"x","hex":"9207910A","message":{"type":"credit","bytes":10}}"#,
        r#"{"kind":"message","name":"x","hex":"920791 0","message":{"type":"credit","bytes":5}}"#,
        // Valid bytes presented as an error, and the wrong error kind.
        r#"{"kind":"error","name":"x","hex":"92079105","error":{"kind":"bad_body","type":"credit"}}"#,
        r#"{"kind":"error","name":"x","hex":"920790","error":{"kind":"bad_envelope"}}"#,
        r#"{"kind":"error","name":"x","hex":"920790","error":{"kind":"bad_body","type":"ids"}}"#,
        // A body error without its field and problem, or with either wrong.
        r#"{"kind":"error","name":"x","hex":"9207 91 a135","error":{"kind":"bad_body","type":"credit"}}"#,
        r#"{"kind":"error","name":"x","hex":"9207 91 a135","error":{"kind":"bad_body","type":"credit","field":"credit","problem":"type"}}"#,
        r#"{"kind":"error","name":"x","hex":"9207 91 a135","error":{"kind":"bad_body","type":"credit","field":"credit.bytes","problem":"range"}}"#,
        r#"{"kind":"mystery","name":"x"}"#,
    ] {
        assert!(run(bad).is_err(), "accepted {bad}");
    }
}
