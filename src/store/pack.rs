//! The stored formats (protocol/storage.md): pack objects holding accepted nodes, and the
//! manifest that says which packs make up a room. Pure: bytes in, bytes out.
//!
//! A pack ends with a BLAKE3 hash of everything before it, so a torn or altered object is
//! detected before any of its nodes reach a room; each node is also content-addressed, so a
//! record read alone (a range read) is checked by recomputing its id
//! ([`Node::decode_checked`]). A record must be its node's canonical encoding, so a load
//! keeps the stored bytes as the node's encoding instead of encoding it again.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::node::{Node, RoomId};
use crate::protocol;

/// The storage layout version this relay reads and writes.
pub const LAYOUT_VERSION: u32 = 1;

/// First bytes of every pack.
const MAGIC: &[u8; 8] = b"WEFTPAK1";

/// Magic, epoch, first arrival number, node count.
const HEADER_BYTES: usize = 8 + 8 + 8 + 4;

/// The BLAKE3 hash at the end.
const TRAILER_BYTES: usize = 32;

/// Why stored bytes cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The object is shorter than its structure says, or has bytes left over.
    #[error("truncated or padded object")]
    Truncated,
    /// The pack does not start with the pack magic.
    #[error("not a weft pack")]
    BadMagic,
    /// The trailing hash does not match the contents: a torn or altered object.
    #[error("checksum mismatch")]
    Checksum,
    /// A record does not decode as a node.
    #[error("record {0} is not a valid node")]
    BadRecord(u32),
    /// A record decodes as a node, but is not its canonical encoding (protocol/README.md
    /// §10.8): no relay writes that, so the record was altered.
    #[error("record {0} is a node, but not in its canonical encoding")]
    NotCanonical(u32),
    /// The pack's header disagrees with what the manifest says about it.
    #[error("pack header disagrees with the manifest: {0}")]
    Mismatch(&'static str),
    /// A manifest or the layout marker is not JSON of the expected shape.
    #[error("not JSON of the expected shape")]
    Json(#[source] serde_json::Error),
    /// The layout marker names no layout version.
    #[error("no layout version")]
    NoLayout,
    /// The layout marker or a manifest is of another layout version.
    #[error("layout version {0}; this relay reads {LAYOUT_VERSION}")]
    Layout(u64),
    /// The manifest is another room's.
    #[error("manifest of room {0:?}")]
    OtherRoom(String),
    /// The manifest's packs do not number the nodes 1, 2, … without gaps.
    #[error("pack {pack} does not continue at {next}")]
    Gap {
        /// The pack that does not continue the numbering.
        pack: String,
        /// The arrival number it should start at.
        next: u64,
    },
    /// A manifest object's name and contents disagree on its generation.
    #[error("named generation {named}, says generation {found}")]
    Generation {
        /// The generation its name says.
        named: u64,
        /// The generation its contents say.
        found: u64,
    },
    /// An object read back differently from what was just written.
    #[error("read back differently from what was written")]
    ReadBack,
}

/// A stored node with its record: the bytes it is stored as, which are its canonical wire
/// encoding (checked), so the room can keep them as the node's encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredNode {
    /// The node, decoded (its id is not checked yet: the room checks it on restore).
    pub node: Node,
    /// Its record, exactly [`protocol::encode_node`] of `node`.
    pub wire: Bytes,
}

/// A decoded pack header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackHeader {
    /// The room epoch the arrival numbers belong to.
    pub epoch: u64,
    /// Arrival number of the first node.
    pub first: u64,
    /// Nodes in the pack.
    pub count: u32,
}

/// Where each record of a pack lies, for range reads: record `i` is the node encoding at
/// bytes `bounds[i] .. bounds[i + 1] - 4` (the 4 bytes before each record hold its length,
/// and the last bound is the end of the body plus 4, as if another record followed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordIndex {
    bounds: Box<[u32]>,
}

impl RecordIndex {
    /// Byte range of record `index` within the pack object.
    pub fn range(&self, index: usize) -> Option<std::ops::Range<u64>> {
        let start = *self.bounds.get(index)?;
        let next = *self.bounds.get(index.checked_add(1)?)?;
        Some(u64::from(start)..u64::from(next.checked_sub(4)?))
    }

    /// Records indexed.
    pub fn len(&self) -> usize {
        self.bounds.len().saturating_sub(1)
    }

    /// True for an index of no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encodes a pack of `records` (node wire encodings) numbered from `first` in `epoch`, and
/// the index of where each record lies.
pub fn encode_pack(epoch: u64, first: u64, records: &[bytes::Bytes]) -> (Vec<u8>, RecordIndex) {
    let body: usize = records.iter().map(|e| e.len() + 4).sum();
    let mut out = Vec::with_capacity(HEADER_BYTES + body + TRAILER_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&len32(records.len()).to_le_bytes());
    let mut bounds = Vec::with_capacity(records.len() + 1);
    for record in records {
        out.extend_from_slice(&len32(record.len()).to_le_bytes());
        bounds.push(len32(out.len()));
        out.extend_from_slice(record);
    }
    bounds.push(len32(out.len() + 4));
    let hash = blake3::hash(&out);
    out.extend_from_slice(hash.as_bytes());
    let index = RecordIndex {
        bounds: bounds.into_boxed_slice(),
    };
    (out, index)
}

/// Packs are far below 4 GiB (a commit or a merge of bounded size); saturating keeps a
/// broken one detectable rather than wrapped.
fn len32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Opens a pack: checks the hash and the framing, and returns the header and the index of
/// its records (nothing is decoded).
pub fn open_pack(bytes: &[u8]) -> Result<(PackHeader, RecordIndex), FormatError> {
    let body_len = bytes
        .len()
        .checked_sub(TRAILER_BYTES)
        .filter(|len| *len >= HEADER_BYTES)
        .ok_or(FormatError::Truncated)?;
    let (body, trailer) = bytes
        .split_at_checked(body_len)
        .ok_or(FormatError::Truncated)?;
    if blake3::hash(body).as_bytes() != trailer {
        return Err(FormatError::Checksum);
    }
    let mut input = body;
    if &take::<8>(&mut input)? != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let header = PackHeader {
        epoch: u64::from_le_bytes(take(&mut input)?),
        first: u64::from_le_bytes(take(&mut input)?),
        count: u32::from_le_bytes(take(&mut input)?),
    };
    let mut bounds = Vec::with_capacity((header.count as usize).min(1 << 16) + 1);
    for _ in 0..header.count {
        let len = u32::from_le_bytes(take(&mut input)?) as usize;
        bounds.push(len32(body_len - input.len()));
        input = input.get(len..).ok_or(FormatError::Truncated)?;
    }
    if !input.is_empty() {
        return Err(FormatError::Truncated);
    }
    bounds.push(len32(body_len + 4));
    let index = RecordIndex {
        bounds: bounds.into_boxed_slice(),
    };
    Ok((header, index))
}

/// Bytes a pack's header takes at its start: what [`read_header`] needs.
pub const HEADER_LEN: u64 = HEADER_BYTES as u64;

/// Reads a pack's header from its first [`HEADER_LEN`] bytes (a range read), without the
/// checksum, which covers the whole pack: a reader checks that when it reads the pack.
pub fn read_header(bytes: &[u8]) -> Result<PackHeader, FormatError> {
    let mut input = bytes.get(..HEADER_BYTES).ok_or(FormatError::Truncated)?;
    if &take::<8>(&mut input)? != MAGIC {
        return Err(FormatError::BadMagic);
    }
    Ok(PackHeader {
        epoch: u64::from_le_bytes(take(&mut input)?),
        first: u64::from_le_bytes(take(&mut input)?),
        count: u32::from_le_bytes(take(&mut input)?),
    })
}

/// The records of an opened pack, as slices of `bytes` (no copy).
pub fn records(bytes: &bytes::Bytes, index: &RecordIndex) -> Vec<bytes::Bytes> {
    (0..index.len())
        .filter_map(|i| index.range(i))
        .filter_map(|r| {
            let start = usize::try_from(r.start).ok()?;
            let end = usize::try_from(r.end).ok()?;
            (end <= bytes.len()).then(|| bytes.slice(start..end))
        })
        .collect()
}

/// Reads a pack: checks the hash and the framing, and decodes every record. Returns the
/// header, the nodes in arrival order and the record index. Whether each node's id matches
/// its content is left to the room that restores it (`Room::restore` checks every node
/// fully), so a load hashes each node once.
pub fn decode_pack(bytes: &[u8]) -> Result<(PackHeader, Vec<Node>, RecordIndex), FormatError> {
    let (header, index) = open_pack(bytes)?;
    let bytes = Bytes::copy_from_slice(bytes);
    let records = decode_records(&bytes, &index, 0..index.len())?;
    let nodes = records.into_iter().map(|stored| stored.node).collect();
    Ok((header, nodes, index))
}

/// Decodes the records at positions `range` of an opened pack (see [`decode_pack`]), each
/// with its record as a slice of `bytes` (no copy). A record that decodes but is not its
/// node's canonical encoding is refused rather than encoded anew: every relay writes the
/// canonical one, so different bytes were altered.
pub fn decode_records(
    bytes: &Bytes,
    index: &RecordIndex,
    range: std::ops::Range<usize>,
) -> Result<Vec<StoredNode>, FormatError> {
    let mut nodes = Vec::with_capacity(range.len());
    for i in range {
        let wire = index
            .range(i)
            .and_then(|r| Some(usize::try_from(r.start).ok()?..usize::try_from(r.end).ok()?))
            .filter(|r| r.end <= bytes.len())
            .map(|r| bytes.slice(r))
            .ok_or(FormatError::Truncated)?;
        let Some(node) = protocol::decode_canonical_node(&wire) else {
            // Only on failure: tell a node in another encoding from bytes that are no node.
            return Err(match rmp_serde::from_slice::<Node>(&wire) {
                Ok(_) => FormatError::NotCanonical(len32(i)),
                Err(_) => FormatError::BadRecord(len32(i)),
            });
        };
        nodes.push(StoredNode { node, wire });
    }
    Ok(nodes)
}

/// The next `N` bytes of `input`.
fn take<const N: usize>(input: &mut &[u8]) -> Result<[u8; N], FormatError> {
    let (head, rest) = input
        .split_first_chunk::<N>()
        .ok_or(FormatError::Truncated)?;
    *input = rest;
    Ok(*head)
}

/// One pack as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackEntry {
    /// Object name, relative to the room's directory.
    pub name: String,
    /// Arrival number of its first node.
    pub first: u64,
    /// Nodes in it.
    pub count: u32,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Which packs make up a room, in arrival order. Manifests are never overwritten: generation
/// `g + 1` is created next to `g` only if it does not exist yet, so two relays writing the
/// same room cannot both succeed (protocol/storage.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Storage layout version ([`LAYOUT_VERSION`]).
    pub layout: u32,
    /// The room.
    pub room: String,
    /// The room's epoch.
    pub epoch: u64,
    /// This manifest's generation.
    pub generation: u64,
    /// Packs in arrival order; together they number the room's nodes 1, 2, … without gaps.
    pub packs: Vec<PackEntry>,
}

impl Manifest {
    /// A room's first manifest (generation 0 is "nothing stored").
    pub fn new(room: &RoomId, epoch: u64) -> Self {
        Self {
            layout: LAYOUT_VERSION,
            room: room.as_str().to_owned(),
            epoch,
            generation: 0,
            packs: Vec::new(),
        }
    }

    /// Arrival number the next pack starts at.
    pub fn next_seq(&self) -> u64 {
        self.packs
            .last()
            .map_or(1, |p| p.first.saturating_add(u64::from(p.count)))
    }

    /// Nodes in the room.
    pub fn node_count(&self) -> u64 {
        self.next_seq() - 1
    }

    /// Encodes the manifest (JSON: small, and readable by an operator).
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings and integers always serializes.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Decodes and checks a manifest: its layout version, its room, and that its packs number
    /// the nodes without gaps.
    pub fn decode(bytes: &[u8], room: &RoomId) -> Result<Self, FormatError> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(FormatError::Json)?;
        if manifest.layout != LAYOUT_VERSION {
            return Err(FormatError::Layout(manifest.layout.into()));
        }
        if manifest.room != room.as_str() {
            return Err(FormatError::OtherRoom(manifest.room));
        }
        let mut next = 1u64;
        for pack in &manifest.packs {
            if pack.first != next || pack.count == 0 {
                return Err(FormatError::Gap {
                    pack: pack.name.clone(),
                    next,
                });
            }
            next = next.saturating_add(u64::from(pack.count));
        }
        Ok(manifest)
    }
}

/// Checks a decoded pack against its manifest entry and the room's epoch.
pub fn check_pack(header: PackHeader, entry: &PackEntry, epoch: u64) -> Result<(), FormatError> {
    if header.epoch != epoch {
        return Err(FormatError::Mismatch("epoch"));
    }
    if header.first != entry.first {
        return Err(FormatError::Mismatch("first arrival number"));
    }
    if header.count != entry.count {
        return Err(FormatError::Mismatch("node count"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> RoomId {
        RoomId::new("packs").unwrap()
    }

    fn chain(n: usize) -> Vec<Node> {
        let mut nodes: Vec<Node> = Vec::new();
        for i in 0..n {
            let parents: Vec<&Node> = nodes.last().into_iter().collect();
            nodes.push(Node::child_of(&room(), &parents, "doc/a", format!("payload {i}")).unwrap());
        }
        nodes
    }

    fn records_of(nodes: &[Node]) -> Vec<bytes::Bytes> {
        nodes.iter().map(crate::protocol::encode_node).collect()
    }

    #[test]
    fn packs_round_trip_and_the_index_points_at_records() {
        let nodes = chain(5);
        let (bytes, index) = encode_pack(7, 11, &records_of(&nodes));
        let (header, decoded, read_index) = decode_pack(&bytes).unwrap();
        assert_eq!(
            header,
            PackHeader {
                epoch: 7,
                first: 11,
                count: 5
            }
        );
        assert_eq!(decoded, nodes);
        assert_eq!(read_index, index);
        assert_eq!(index.len(), 5);
        assert_eq!(index.range(5), None);
        for (i, node) in nodes.iter().enumerate() {
            let range = index.range(i).unwrap();
            let record = &bytes[range.start as usize..range.end as usize];
            assert_eq!(Node::decode_checked(record, &room()).as_ref(), Some(node));
        }
        let shared = bytes::Bytes::from(bytes);
        assert_eq!(records(&shared, &index), records_of(&nodes));
    }

    /// A load keeps each record's own bytes as the node's encoding: they are the canonical
    /// encoding, and a record in another encoding of the same node (one a lenient decoder
    /// reads, with the same id) is refused, not encoded anew.
    #[test]
    fn records_pass_through_and_must_be_canonical() {
        let nodes = chain(3);
        let records = records_of(&nodes);
        let (bytes, index) = encode_pack(1, 1, &records);
        let bytes = bytes::Bytes::from(bytes);
        let stored = decode_records(&bytes, &index, 0..3).unwrap();
        for ((stored, node), record) in stored.iter().zip(&nodes).zip(&records) {
            assert_eq!(&stored.node, node);
            assert_eq!(&stored.wire, record);
            // A slice of the pack, not a copy.
            let within = bytes.as_ptr_range();
            assert!(within.contains(&stored.wire.as_ptr()));
        }
        // Node 1's depth (1) written as a `uint 64`: the same node, the same id, 8 bytes more.
        let mut lenient = records.clone();
        let canonical = records[1].as_ref();
        let depth_at = 1 + 34 + 1 + 34;
        assert_eq!(canonical[depth_at], 0x01);
        let mut altered = canonical[..depth_at].to_vec();
        altered.extend_from_slice(&[0xcf, 0, 0, 0, 0, 0, 0, 0, 1]);
        altered.extend_from_slice(&canonical[depth_at + 1..]);
        let reread: Node = rmp_serde::from_slice(&altered).unwrap();
        assert_eq!(reread, nodes[1]);
        lenient[1] = bytes::Bytes::from(altered);
        let (bytes, index) = encode_pack(1, 1, &lenient);
        assert!(matches!(
            decode_records(&bytes::Bytes::from(bytes), &index, 0..3),
            Err(FormatError::NotCanonical(1))
        ));
    }

    #[test]
    fn a_header_reads_alone_from_the_start_of_a_pack() {
        let (bytes, _) = encode_pack(9, 42, &records_of(&chain(2)));
        let header = read_header(&bytes[..HEADER_LEN as usize]).unwrap();
        assert_eq!(
            header,
            PackHeader {
                epoch: 9,
                first: 42,
                count: 2
            }
        );
        assert!(matches!(
            read_header(&bytes[..10]),
            Err(FormatError::Truncated)
        ));
        assert!(matches!(read_header(&[0; 28]), Err(FormatError::BadMagic)));
    }

    #[test]
    fn an_empty_pack_has_an_empty_index() {
        let (bytes, index) = encode_pack(1, 1, &[]);
        assert!(index.is_empty());
        assert_eq!(open_pack(&bytes).unwrap().1, index);
    }

    #[test]
    fn torn_and_altered_packs_are_detected() {
        let (bytes, _) = encode_pack(1, 1, &records_of(&chain(3)));
        for cut in [0, 10, HEADER_BYTES, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                matches!(
                    decode_pack(&bytes[..cut]),
                    Err(FormatError::Truncated | FormatError::Checksum)
                ),
                "cut at {cut}"
            );
        }
        for at in [0, 9, HEADER_BYTES + 7, bytes.len() - 40, bytes.len() - 1] {
            let mut altered = bytes.clone();
            altered[at] ^= 0x01;
            assert!(
                matches!(decode_pack(&altered), Err(FormatError::Checksum)),
                "flip at {at}"
            );
        }
        // A record that is not a node, under a valid checksum.
        let (mut forged, index) = encode_pack(1, 1, &records_of(&chain(2)));
        forged.truncate(forged.len() - TRAILER_BYTES);
        forged[index.range(1).unwrap().start as usize] = 0xc1; // never valid MessagePack
        let hash = blake3::hash(&forged);
        forged.extend_from_slice(hash.as_bytes());
        assert!(matches!(
            decode_pack(&forged),
            Err(FormatError::BadRecord(1))
        ));
        // A node whose id does not match its content decodes (the room refuses it on
        // restore), and its record read alone is refused.
        let mut nodes = chain(2);
        nodes[1].payload = bytes::Bytes::from_static(b"swapped");
        let (swapped, index) = encode_pack(1, 1, &records_of(&nodes));
        assert!(decode_pack(&swapped).is_ok());
        let range = index.range(1).unwrap();
        let record = &swapped[range.start as usize..range.end as usize];
        assert_eq!(Node::decode_checked(record, &room()), None);
    }

    #[test]
    fn manifests_check_version_room_and_numbering() {
        let mut manifest = Manifest::new(&room(), 3);
        assert_eq!(manifest.next_seq(), 1);
        manifest.packs.push(PackEntry {
            name: "a".into(),
            first: 1,
            count: 4,
            bytes: 100,
        });
        manifest.packs.push(PackEntry {
            name: "b".into(),
            first: 5,
            count: 2,
            bytes: 50,
        });
        assert_eq!(manifest.node_count(), 6);
        let bytes = manifest.encode();
        assert_eq!(Manifest::decode(&bytes, &room()).unwrap(), manifest);
        let other = RoomId::new("other").unwrap();
        assert!(matches!(
            Manifest::decode(&bytes, &other),
            Err(FormatError::OtherRoom(room)) if room == "packs"
        ));
        let mut gap = manifest.clone();
        gap.packs[1].first = 6;
        assert!(matches!(
            Manifest::decode(&gap.encode(), &room()),
            Err(FormatError::Gap { pack, next: 5 }) if pack == "b"
        ));
        let mut future = manifest;
        future.layout = LAYOUT_VERSION + 1;
        assert!(matches!(
            Manifest::decode(&future.encode(), &room()),
            Err(FormatError::Layout(2))
        ));
        assert!(matches!(
            Manifest::decode(b"{not json", &room()),
            Err(FormatError::Json(_))
        ));
    }
}
