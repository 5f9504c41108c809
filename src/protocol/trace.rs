//! Names the field a body failed at, and what was wrong with it (protocol/README.md §10.1 step
//! 4, §11).
//!
//! The body decoder is rmp-serde driving the message types' `Deserialize` impls. This module
//! wraps that deserializer in a transparent layer that remembers, for the value being read, its
//! path from the message (`hello.hints.digest`, `pack.nodes[0].parents[1]`). Every call is
//! forwarded unchanged, so exactly the same bytes are accepted and rejected as without it; the
//! layer only watches errors go by. The innermost place that sees an error records the path, so
//! the outer layers it passes through on its way out do not overwrite it.
//!
//! What was wrong is read from the error itself where rmp-serde raised it (wrong marker, extra
//! array elements, input ending early, bad UTF-8), and from the serde constructor a visitor
//! used where a visitor refused a value (wrong type, integer out of range, missing element,
//! byte string of the wrong length). To see that constructor, scalar visits are replayed into
//! the visitor with this module's own error type, which keeps the constructor's kind.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, SeqAccess, Visitor};

/// What was wrong with the field a body failed at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BodyProblem {
    /// A body, record or pair has fewer or more elements than its field list.
    FieldCount,
    /// A value of the wrong MessagePack type (a string for an integer, nil outside an option).
    Type,
    /// An integer that does not fit the field (65,536 in a u16, a negative number anywhere).
    Range,
    /// A byte string of the wrong length (an id that is not 32 bytes).
    Length,
    /// A well-typed value the field's rule forbids: an unknown plan, outcome or rejection code,
    /// or the empty set's digest written out.
    Value,
    /// A string that is not valid UTF-8.
    Utf8,
    /// The frame ends inside the body.
    Truncated,
    /// Arrays nested deeper than the decoder follows.
    Depth,
}

impl BodyProblem {
    /// Every problem, in declaration order.
    pub const ALL: &'static [BodyProblem] = &[
        Self::FieldCount,
        Self::Type,
        Self::Range,
        Self::Length,
        Self::Value,
        Self::Utf8,
        Self::Truncated,
        Self::Depth,
    ];

    /// The name used in error vectors (protocol/README.md §11).
    pub fn name(self) -> &'static str {
        match self {
            Self::FieldCount => "field_count",
            Self::Type => "type",
            Self::Range => "range",
            Self::Length => "length",
            Self::Value => "value",
            Self::Utf8 => "utf8",
            Self::Truncated => "truncated",
            Self::Depth => "depth",
        }
    }
}

impl fmt::Display for BodyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Decodes one body of type `T`, named `message` at the root of paths. On failure, returns the
/// decoder's error with the path of the field it failed at and the problem there.
pub(super) fn decode_traced<T: DeserializeOwned>(
    message: &'static str,
    body: &mut &[u8],
) -> Result<T, (rmp_serde::decode::Error, String, BodyProblem)> {
    let track = Track::default();
    let root = Chain::Root(message);
    let mut de = rmp_serde::Deserializer::new(body);
    let seed = TrackedSeed {
        seed: PhantomData::<T>,
        chain: &root,
        track: &track,
    };
    seed.deserialize(&mut de).map_err(|error| {
        let recorded = track.failure.take();
        let (field, seen) = match recorded {
            Some(Recorded { field, problem }) => (field, problem),
            None => (message.to_owned(), None),
        };
        let problem = problem_of(&error, seen);
        (error, field, problem)
    })
}

/// The problem an error stands for. rmp-serde's own errors say it themselves; a `Syntax` error
/// is one a visitor or a `Deserialize` impl raised, whose kind was recorded on the way.
fn problem_of(error: &rmp_serde::decode::Error, seen: Option<BodyProblem>) -> BodyProblem {
    use rmp_serde::decode::Error;
    match error {
        Error::TypeMismatch(_) => BodyProblem::Type,
        Error::LengthMismatch(_) => BodyProblem::FieldCount,
        // Reading from a slice fails only at its end.
        Error::InvalidMarkerRead(_) | Error::InvalidDataRead(_) => BodyProblem::Truncated,
        Error::OutOfRange => BodyProblem::Range,
        Error::Utf8Error(_) => BodyProblem::Utf8,
        Error::DepthLimitExceeded => BodyProblem::Depth,
        Error::Syntax(_) | Error::Uncategorized(_) => seen.unwrap_or(BodyProblem::Value),
    }
}

/// The first failure seen, which is the innermost one.
#[derive(Default)]
struct Track {
    failure: Cell<Option<Recorded>>,
}

struct Recorded {
    field: String,
    /// `None` when the error came out of rmp-serde, which names the problem itself.
    problem: Option<BodyProblem>,
}

impl Track {
    fn record(&self, chain: &Chain<'_>, problem: Option<BodyProblem>) {
        let recorded = match self.failure.take() {
            Some(earlier) => earlier,
            None => Recorded {
                field: chain.render(),
                problem,
            },
        };
        self.failure.set(Some(recorded));
    }
}

/// The path to the value being read, as a list linked through the stack.
enum Chain<'a> {
    Root(&'static str),
    Field(&'a Chain<'a>, &'static str),
    Index(&'a Chain<'a>, usize),
}

impl Chain<'_> {
    /// `hello.hints.digest`, `pack.nodes[0].parents[1]`: fields by name, elements by index.
    fn render(&self) -> String {
        let mut links = Vec::new();
        let mut at = self;
        let root = loop {
            match at {
                Chain::Root(name) => break *name,
                Chain::Field(parent, _) | Chain::Index(parent, _) => {
                    links.push(at);
                    at = parent;
                }
            }
        };
        let mut out = root.to_owned();
        for link in links.iter().rev() {
            match link {
                Chain::Field(_, name) => {
                    out.push('.');
                    out.push_str(name);
                }
                Chain::Index(_, index) => out.push_str(&format!("[{index}]")),
                Chain::Root(_) => {}
            }
        }
        out
    }
}

/// A refusal from a visitor, with the kind of serde constructor that made it; or a marker
/// that the error came from below and waits, unchanged, in the caller's stash.
#[derive(Debug)]
enum VisitorError {
    Own {
        problem: BodyProblem,
        message: String,
    },
    Inner,
}

impl VisitorError {
    fn own(problem: BodyProblem, message: impl fmt::Display) -> Self {
        Self::Own {
            problem,
            message: message.to_string(),
        }
    }
}

impl fmt::Display for VisitorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Own { message, .. } => f.write_str(message),
            Self::Inner => f.write_str("an element failed to decode"),
        }
    }
}

impl std::error::Error for VisitorError {}

// The messages are serde's own (`de::value::Error` formats them), so error texts read as
// they did without the tracing layer.
impl de::Error for VisitorError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::own(BodyProblem::Value, msg)
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Self::own(
            BodyProblem::Type,
            de::value::Error::invalid_type(unexp, exp),
        )
    }

    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        let problem = match unexp {
            de::Unexpected::Unsigned(_) | de::Unexpected::Signed(_) => BodyProblem::Range,
            _ => BodyProblem::Value,
        };
        Self::own(problem, de::value::Error::invalid_value(unexp, exp))
    }

    fn invalid_length(len: usize, exp: &dyn de::Expected) -> Self {
        Self::own(
            BodyProblem::Length,
            de::value::Error::invalid_length(len, exp),
        )
    }
}

/// Hands a visitor's verdict back to rmp-serde in its own error type, recording a refusal.
fn settle<T, E: de::Error>(
    result: Result<T, VisitorError>,
    chain: &Chain<'_>,
    track: &Track,
) -> Result<T, E> {
    result.map_err(|error| {
        if let VisitorError::Own { problem, .. } = &error {
            track.record(chain, Some(*problem));
        }
        E::custom(error)
    })
}

/// A seed that reads its value through [`Tracked`] at `chain`.
struct TrackedSeed<'a, 'b, S> {
    seed: S,
    chain: &'a Chain<'a>,
    track: &'b Track,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for TrackedSeed<'_, '_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        let (chain, track) = (self.chain, self.track);
        let tracked = Tracked {
            inner: deserializer,
            chain,
            track,
        };
        // An error nothing below recorded was raised by the `Deserialize` impl itself after
        // reading its parts (unknown plan, empty digest written out): a forbidden value here.
        self.seed.deserialize(tracked).inspect_err(|_| {
            track.record(chain, Some(BodyProblem::Value));
        })
    }
}

/// The deserializer for one value at `chain`: forwards every call, wrapping the visitor.
struct Tracked<'a, 'b, D> {
    inner: D,
    chain: &'a Chain<'a>,
    track: &'b Track,
}

impl<'a, 'b, D> Tracked<'a, 'b, D> {
    fn wrap<V>(&self, visitor: V, fields: Option<&'static [&'static str]>) -> Wrap<'a, 'b, V> {
        Wrap {
            visitor,
            chain: self.chain,
            track: self.track,
            fields,
        }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
                let wrapped = self.wrap(visitor, None);
                let (chain, track) = (self.chain, self.track);
                self.inner.$method($($arg,)* wrapped).inspect_err(|_| {
                    track.record(chain, None);
                })
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Tracked<'_, '_, D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }

    // Structs are the one place where elements have names: the field list.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let wrapped = self.wrap(visitor, Some(fields));
        let (chain, track) = (self.chain, self.track);
        self.inner
            .deserialize_struct(name, fields, wrapped)
            .inspect_err(|_| {
                track.record(chain, None);
            })
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A visitor for the value at `chain`; `fields` names the elements of a struct.
struct Wrap<'a, 'b, V> {
    visitor: V,
    chain: &'a Chain<'a>,
    track: &'b Track,
    fields: Option<&'static [&'static str]>,
}

macro_rules! replay_visit {
    ($($method:ident($ty:ty);)*) => {
        $(
            fn $method<E: de::Error>(self, value: $ty) -> Result<V::Value, E> {
                settle(self.visitor.$method::<VisitorError>(value), self.chain, self.track)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, '_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    replay_visit! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        settle(
            self.visitor.visit_unit::<VisitorError>(),
            self.chain,
            self.track,
        )
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        settle(
            self.visitor.visit_none::<VisitorError>(),
            self.chain,
            self.track,
        )
    }

    // An option's or newtype's content is the same field: same path.
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        self.visitor.visit_some(Tracked {
            inner: deserializer,
            chain: self.chain,
            track: self.track,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<V::Value, D::Error> {
        self.visitor.visit_newtype_struct(Tracked {
            inner: deserializer,
            chain: self.chain,
            track: self.track,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        let mut elements = Elements {
            inner: seq,
            chain: self.chain,
            track: self.track,
            fields: self.fields,
            index: 0,
            stash: None,
        };
        match self.visitor.visit_seq(&mut elements) {
            Ok(value) => Ok(value),
            // An element failed: pass its error on exactly as it came.
            Err(VisitorError::Inner) => Err(elements
                .stash
                .take()
                .unwrap_or_else(|| de::Error::custom(VisitorError::Inner))),
            // The visitor refused the sequence itself. A length complaint here is about the
            // element count; a 32-byte id given as an array is a type complaint.
            Err(VisitorError::Own { problem, message }) => {
                let problem = match problem {
                    BodyProblem::Length => BodyProblem::FieldCount,
                    other => other,
                };
                self.track.record(self.chain, Some(problem));
                Err(de::Error::custom(message))
            }
        }
    }

    // v1 bodies hold no maps (refused before decoding) and no serde enums; these only forward.
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_map(map)
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_enum(data)
    }
}

/// The elements of a sequence, each read at its own path. The error type is
/// [`VisitorError`], so that the visitor's own complaints keep their kind; an element's error
/// waits in `stash` and is handed on unchanged.
struct Elements<'a, 'b, A, E> {
    inner: A,
    chain: &'a Chain<'a>,
    track: &'b Track,
    fields: Option<&'static [&'static str]>,
    index: usize,
    stash: Option<E>,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Elements<'_, '_, A, A::Error> {
    type Error = VisitorError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, VisitorError> {
        let name = self.fields.and_then(|fields| fields.get(self.index));
        let chain = match name {
            Some(name) => Chain::Field(self.chain, name),
            None => Chain::Index(self.chain, self.index),
        };
        self.index = self.index.saturating_add(1);
        let seed = TrackedSeed {
            seed,
            chain: &chain,
            track: self.track,
        };
        self.inner.next_element_seed(seed).map_err(|error| {
            self.stash = Some(error);
            VisitorError::Inner
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{DecodeError, Message};

    /// Every frame in protocol/vectors, as bytes.
    fn vector_frames() -> Vec<Vec<u8>> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("protocol/vectors");
        let mut frames = Vec::new();
        for dir in ["messages", "errors"] {
            let mut paths: Vec<_> = std::fs::read_dir(root.join(dir))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            paths.sort();
            for path in paths {
                for line in std::fs::read_to_string(path).unwrap().lines() {
                    if !line.starts_with('{') {
                        continue;
                    }
                    let value: serde_json::Value = serde_json::from_str(line).unwrap();
                    let text: String = value["hex"]
                        .as_str()
                        .unwrap()
                        .chars()
                        .filter(|c| !c.is_whitespace())
                        .collect();
                    frames.push(hex::decode(text).unwrap());
                }
            }
        }
        frames
    }

    /// The tracing layer only watches: on the vectors, every truncation of them and every
    /// single-byte change to a few telling markers, it accepts exactly what rmp-serde alone
    /// accepts, with the same value, the same error text and the same bytes consumed.
    #[test]
    fn tracing_changes_nothing_that_is_accepted_or_rejected() {
        let mut cases = Vec::new();
        for frame in vector_frames() {
            for cut in 0..frame.len() {
                cases.push(frame[..cut].to_vec());
            }
            for at in 0..frame.len() {
                for byte in [
                    0x00, 0x01, 0x7f, 0x90, 0x92, 0xc0, 0xc2, 0xc4, 0xcc, 0xd0, 0xff,
                ] {
                    let mut changed = frame.clone();
                    changed[at] = byte;
                    cases.push(changed);
                }
            }
            cases.push(frame);
        }
        let mut compared = 0;
        for frame in &cases {
            // The envelope is read as `decode` reads it; only bodies go through serde.
            let Some(ty) = super::super::peek_type(frame) else {
                continue;
            };
            let mut body = frame.as_slice();
            let _ = rmp::decode::read_array_len(&mut body);
            let _: Result<u64, _> = rmp::decode::read_int(&mut body);
            let (mut traced_rest, mut plain_rest) = (body, body);
            let traced = Message::decode_body(ty, &mut traced_rest);
            let plain = Message::decode_body_plain(ty, &mut plain_rest);
            match (&traced, &plain) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{}", hex::encode(frame)),
                (Err(DecodeError::BadBody { source, .. }), Err(b)) => {
                    assert_eq!(source.to_string(), b.to_string(), "{}", hex::encode(frame));
                }
                _ => panic!("{}: traced {traced:?}, plain {plain:?}", hex::encode(frame)),
            }
            if traced.is_ok() {
                assert_eq!(
                    traced_rest.len(),
                    plain_rest.len(),
                    "{}",
                    hex::encode(frame)
                );
            }
            compared += 1;
        }
        assert!(compared > 10_000, "only {compared} frames compared");
    }
}
