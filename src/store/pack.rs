//! The stored formats (protocol/storage.md): pack objects holding accepted nodes, and the
//! manifest that says which packs make up a room. Pure: bytes in, bytes out.
//!
//! A pack ends with a BLAKE3 hash of everything before it, so a torn or altered object is
//! detected before any of its nodes reach a room; each node is also content-addressed, so a
//! record read alone (a range read) is checked by recomputing its id
//! ([`Node::decode_checked`]).

use serde::{Deserialize, Serialize};

use crate::node::{Node, RoomId};

/// The storage layout version this relay reads and writes.
pub const LAYOUT_VERSION: u32 = 1;

/// First bytes of every pack.
const MAGIC: &[u8; 8] = b"WEFTPAK1";

/// Magic, epoch, first arrival number, node count.
const HEADER_BYTES: usize = 8 + 8 + 8 + 4;

/// The BLAKE3 hash at the end.
const TRAILER_BYTES: usize = 32;

/// Why stored bytes cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// The pack's header disagrees with what the manifest says about it.
    #[error("pack header disagrees with the manifest: {0}")]
    Mismatch(&'static str),
    /// The manifest does not parse, or is of another layout version.
    #[error("bad manifest: {0}")]
    Manifest(String),
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
    let nodes = decode_records(bytes, &index, 0..index.len())?;
    Ok((header, nodes, index))
}

/// Decodes the records at positions `range` of an opened pack (see [`decode_pack`]).
pub fn decode_records(
    bytes: &[u8],
    index: &RecordIndex,
    range: std::ops::Range<usize>,
) -> Result<Vec<Node>, FormatError> {
    let mut nodes = Vec::with_capacity(range.len());
    for i in range {
        let record = index
            .range(i)
            .and_then(|r| bytes.get(r.start as usize..r.end as usize))
            .ok_or(FormatError::Truncated)?;
        let node: Node =
            rmp_serde::from_slice(record).map_err(|_| FormatError::BadRecord(len32(i)))?;
        nodes.push(node);
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
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| FormatError::Manifest(e.to_string()))?;
        if manifest.layout != LAYOUT_VERSION {
            return Err(FormatError::Manifest(format!(
                "layout version {} (this relay reads {LAYOUT_VERSION})",
                manifest.layout
            )));
        }
        if manifest.room != room.as_str() {
            return Err(FormatError::Manifest(format!(
                "manifest of room {:?}",
                manifest.room
            )));
        }
        let mut next = 1u64;
        for pack in &manifest.packs {
            if pack.first != next || pack.count == 0 {
                return Err(FormatError::Manifest(format!(
                    "pack {} does not continue at {next}",
                    pack.name
                )));
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
            assert!(decode_pack(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for at in [0, 9, HEADER_BYTES + 7, bytes.len() - 40, bytes.len() - 1] {
            let mut altered = bytes.clone();
            altered[at] ^= 0x01;
            assert_eq!(
                decode_pack(&altered).unwrap_err(),
                FormatError::Checksum,
                "flip at {at}"
            );
        }
        // A record that is not a node, under a valid checksum.
        let (mut forged, index) = encode_pack(1, 1, &records_of(&chain(2)));
        forged.truncate(forged.len() - TRAILER_BYTES);
        forged[index.range(1).unwrap().start as usize] = 0xc1; // never valid MessagePack
        let hash = blake3::hash(&forged);
        forged.extend_from_slice(hash.as_bytes());
        assert_eq!(decode_pack(&forged).unwrap_err(), FormatError::BadRecord(1));
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
        assert!(Manifest::decode(&bytes, &other).is_err());
        let mut gap = manifest.clone();
        gap.packs[1].first = 6;
        assert!(Manifest::decode(&gap.encode(), &room()).is_err());
        let mut future = manifest;
        future.layout = LAYOUT_VERSION + 1;
        assert!(Manifest::decode(&future.encode(), &room()).is_err());
        assert!(Manifest::decode(b"{not json", &room()).is_err());
    }
}
