//! A cursor over MessagePack that accepts each value only in its shortest form (§10.2), the form
//! [`super::encode_node`] writes. Stored records are read with it (a record in any other form is
//! refused), and so are the `batch` and `broadcast` bodies of the client's fast path (a body in
//! any other form goes to the serde decoder instead).

use std::ops::Range;

use bytes::Bytes;

use crate::node::{AuthorKey, BlobHash, BlobRef, Node, NodeId};

/// A cursor over a record that accepts each value only in its shortest form (§10.2).
pub(super) struct Canonical<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Canonical<'a> {
    /// A cursor at the start of `bytes`.
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    /// `[id, parents, depth, author, path, blobs, payload]` (§10.4) in its canonical form, and
    /// where the payload's bytes lie; the node's own payload is left empty, for the caller to
    /// fill without a copy (a slice of the record) or with one shared buffer (a frame's).
    pub(super) fn node(&mut self) -> Option<(Node, Range<usize>)> {
        self.expect(0x97)?;
        let id = NodeId(self.id()?);
        let count = self.array_len()?;
        // A parent takes 34 bytes: a claimed count cannot reserve more than the input holds.
        let mut parents = Vec::with_capacity(count.min(self.left() / 34));
        for _ in 0..count {
            parents.push(NodeId(self.id()?));
        }
        let depth = self.uint()?;
        let author = match self.peek()? {
            0xc0 => {
                self.at += 1;
                None
            }
            _ => Some(AuthorKey(self.id()?)),
        };
        let path = std::str::from_utf8(self.str()?).ok()?.to_owned();
        let count = self.array_len()?;
        let mut blobs = Vec::with_capacity(count.min(self.left() / 36));
        for _ in 0..count {
            self.expect(0x92)?;
            let hash = BlobHash(self.id()?);
            let size = self.uint()?;
            blobs.push(BlobRef { hash, size });
        }
        let payload = self.bin()?;
        let node = Node {
            id,
            parents,
            depth,
            author,
            path,
            blobs,
            payload: Bytes::new(),
        };
        Some((node, payload))
    }

    /// Bytes not read yet.
    pub(super) fn left(&self) -> usize {
        self.bytes.len().saturating_sub(self.at)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn take(&mut self, len: usize) -> Option<Range<usize>> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())?;
        let range = self.at..end;
        self.at = end;
        Some(range)
    }

    fn byte(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, marker: u8) -> Option<()> {
        (self.byte()? == marker).then_some(())
    }

    /// A big-endian integer of `N` bytes.
    fn be<const N: usize>(&mut self) -> Option<u64> {
        let range = self.take(N)?;
        let bytes = self.bytes.get(range)?;
        Some(bytes.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)))
    }

    /// The length after a `bin 8` / `str 8` / … family marker, refused unless shortest:
    /// `min8` is the smallest length the 1-byte form is for.
    fn len_after(&mut self, marker: u8, first: u8, min8: u64) -> Option<usize> {
        let (len, min) = match marker.checked_sub(first)? {
            0 => (self.be::<1>()?, min8),
            1 => (self.be::<2>()?, 1 << 8),
            2 => (self.be::<4>()?, 1 << 16),
            _ => return None,
        };
        usize::try_from(len).ok().filter(|_| len >= min)
    }

    /// An unsigned integer in its shortest form.
    pub(super) fn uint(&mut self) -> Option<u64> {
        let (value, min) = match self.byte()? {
            small @ 0x00..=0x7f => return Some(u64::from(small)),
            0xcc => (self.be::<1>()?, 1 << 7),
            0xcd => (self.be::<2>()?, 1 << 8),
            0xce => (self.be::<4>()?, 1 << 16),
            0xcf => (self.be::<8>()?, 1 << 32),
            _ => return None,
        };
        (value >= min).then_some(value)
    }

    /// An array header in its shortest form: the element count.
    pub(super) fn array_len(&mut self) -> Option<usize> {
        match self.byte()? {
            fix @ 0x90..=0x9f => Some(u64::from(fix - 0x90)),
            0xdc => self.be::<2>().filter(|n| *n >= 16),
            0xdd => self.be::<4>().filter(|n| *n >= 1 << 16),
            _ => None,
        }
        .and_then(|n| usize::try_from(n).ok())
    }

    /// A `bin` in its shortest form: where its bytes lie.
    fn bin(&mut self) -> Option<Range<usize>> {
        let marker = self.byte()?;
        let len = self.len_after(marker, 0xc4, 0)?;
        self.take(len)
    }

    /// A `str` in its shortest form: its bytes (not yet checked as UTF-8).
    fn str(&mut self) -> Option<&'a [u8]> {
        let len = match self.byte()? {
            fix @ 0xa0..=0xbf => usize::from(fix - 0xa0),
            marker => self.len_after(marker, 0xd9, 32)?,
        };
        let range = self.take(len)?;
        self.bytes.get(range)
    }

    /// A 32-byte id (`bin 8` of length 32).
    fn id(&mut self) -> Option<[u8; 32]> {
        self.expect(0xc4)?;
        self.expect(32)?;
        let range = self.take(32)?;
        self.bytes.get(range)?.try_into().ok()
    }
}
