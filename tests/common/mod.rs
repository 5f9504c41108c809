//! Helpers shared by the protocol test suites.

#![allow(dead_code)]

/// Where the MessagePack value starting at `at` ends, or `None` if `bytes` is cut short or holds
/// the never-used marker `0xc1`. Knows every MessagePack format, so tests can find field
/// boundaries inside a frame without trusting the codec under test.
pub fn value_end(bytes: &[u8], at: usize) -> Option<usize> {
    let marker = *bytes.get(at)?;
    let be = |from: usize, len: usize| -> Option<usize> {
        let slice = bytes.get(from..from.checked_add(len)?)?;
        Some(
            slice
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
        )
    };
    let sized = |header: usize, len: usize| -> Option<usize> {
        let end = at.checked_add(header)?.checked_add(len)?;
        (end <= bytes.len()).then_some(end)
    };
    let end = match marker {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => sized(1, 0)?,
        0x80..=0x8f => elements_end(bytes, at + 1, 2 * usize::from(marker & 0x0f))?,
        0x90..=0x9f => elements_end(bytes, at + 1, usize::from(marker & 0x0f))?,
        0xa0..=0xbf => sized(1, usize::from(marker & 0x1f))?,
        0xc4 | 0xd9 => sized(2, be(at + 1, 1)?)?,
        0xc5 | 0xda => sized(3, be(at + 1, 2)?)?,
        0xc6 | 0xdb => sized(5, be(at + 1, 4)?)?,
        0xc7 => sized(3, be(at + 1, 1)?)?,
        0xc8 => sized(4, be(at + 1, 2)?)?,
        0xc9 => sized(6, be(at + 1, 4)?)?,
        0xcc | 0xd0 => sized(2, 0)?,
        0xcd | 0xd1 => sized(3, 0)?,
        0xca | 0xce | 0xd2 => sized(5, 0)?,
        0xcb | 0xcf | 0xd3 => sized(9, 0)?,
        0xd4 => sized(3, 0)?,
        0xd5 => sized(4, 0)?,
        0xd6 => sized(6, 0)?,
        0xd7 => sized(10, 0)?,
        0xd8 => sized(18, 0)?,
        0xdc => elements_end(bytes, at + 3, be(at + 1, 2)?)?,
        0xdd => elements_end(bytes, at + 5, be(at + 1, 4)?)?,
        0xde => elements_end(bytes, at + 3, 2 * be(at + 1, 2)?)?,
        0xdf => elements_end(bytes, at + 5, 2 * be(at + 1, 4)?)?,
        0xc1 => return None,
    };
    Some(end)
}

fn elements_end(bytes: &[u8], mut at: usize, count: usize) -> Option<usize> {
    for _ in 0..count {
        at = value_end(bytes, at)?;
    }
    (at <= bytes.len()).then_some(at)
}

/// The array starting at `at`: `(first element offset, element count)`.
pub fn array_header(bytes: &[u8], at: usize) -> Option<(usize, usize)> {
    let marker = *bytes.get(at)?;
    match marker {
        0x90..=0x9f => Some((at + 1, usize::from(marker & 0x0f))),
        0xdc => {
            let b = bytes.get(at + 1..at + 3)?;
            Some((at + 3, usize::from(u16::from_be_bytes([b[0], b[1]]))))
        }
        0xdd => {
            let b = bytes.get(at + 1..at + 5)?;
            let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            Some((at + 5, usize::try_from(n).ok()?))
        }
        _ => None,
    }
}

/// Byte ranges of the elements of the array starting at `at`.
pub fn array_elements(bytes: &[u8], at: usize) -> Option<Vec<std::ops::Range<usize>>> {
    let (mut pos, count) = array_header(bytes, at)?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let end = value_end(bytes, pos)?;
        out.push(pos..end);
        pos = end;
    }
    Some(out)
}

/// Byte ranges of the body fields of a frame `[type, body]` whose type is a positive fixint.
pub fn body_fields(frame: &[u8]) -> Option<Vec<std::ops::Range<usize>>> {
    (frame.first() == Some(&0x92) && frame.get(1).is_some_and(|t| *t < 0x80)).then_some(())?;
    array_elements(frame, 2)
}
