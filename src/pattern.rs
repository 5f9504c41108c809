//! Path patterns for subscriptions (protocol/README.md §3.5): globs over `/`-separated node
//! paths, where `*` matches any run of characters within one segment and a `**` segment
//! matches any number of segments, none included.
//!
//! A pattern is parsed once into segments; matching simulates the segments as a set of
//! states, one path segment at a time, so it costs O(path segments × pattern segments ×
//! segment length) whatever the pattern: no backtracking, and nothing exponential to provoke.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Bounds on what a session may subscribe to, announced in `welcome` as
/// `[max_pattern_len, max_pattern_segments, max_patterns]` (protocol/README.md §4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatternLimits {
    /// Longest pattern, in bytes.
    pub max_pattern_len: u16,
    /// Most `/`-separated segments in a pattern.
    pub max_pattern_segments: u16,
    /// Most patterns one session holds at once.
    pub max_patterns: u16,
}

impl Default for PatternLimits {
    fn default() -> Self {
        Self {
            max_pattern_len: 256,
            max_pattern_segments: 32,
            max_patterns: 64,
        }
    }
}

impl PatternLimits {
    /// The widest limits any relay can announce: for reading back patterns that were accepted
    /// under limits no longer at hand.
    pub fn widest() -> Self {
        Self {
            max_pattern_len: u16::MAX,
            max_pattern_segments: MAX_SEGMENTS as u16,
            max_patterns: u16::MAX,
        }
    }
}

/// Segments a pattern may have at most, whatever the limits say: matching keeps one bit per
/// segment (plus the accepting state) in a `u64`.
pub const MAX_SEGMENTS: usize = 63;

/// Why a pattern is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is the empty string.
    #[error("the pattern is empty")]
    Empty,
    /// The pattern is longer than the limit.
    #[error("the pattern is {len} bytes; at most {max} are allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: u16,
    },
    /// The pattern has more segments than the limit.
    #[error("the pattern has more than {max} segments")]
    TooManySegments {
        /// The limit.
        max: usize,
    },
    /// A segment is empty (a leading, trailing or doubled `/`).
    #[error("segment {0} is empty")]
    EmptySegment(usize),
    /// A segment is `.` or `..`, which no path has.
    #[error("segment {0} is `.` or `..`, which no path contains")]
    DotSegment(usize),
    /// `**` appears in a segment with other characters.
    #[error("segment {0}: `**` must be a whole segment")]
    DoubleStarInSegment(usize),
    /// A backslash is followed by something other than `*` or `\`.
    #[error("segment {0}: `\\` may only escape `*` or `\\`")]
    BadEscape(usize),
    /// The pattern contains a control character, which no path has.
    #[error("segment {0} contains a control character")]
    ControlCharacter(usize),
}

/// One parsed pattern segment.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// `**`: any number of segments.
    AnyDepth,
    /// A segment without `*`: equal to it.
    Exact(Box<str>),
    /// A segment with at least one `*`.
    Glob(Glob),
}

/// `head * middle[0] * … * middle[k] * tail`, each part literal.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Glob {
    head: Box<str>,
    middle: Box<[Box<str>]>,
    tail: Box<str>,
}

impl Glob {
    /// Whether `segment` matches. With `*` as the only wildcard, taking each middle part at
    /// its leftmost place is always right: it leaves the most room for the rest.
    fn matches(&self, segment: &str) -> bool {
        let Some(rest) = segment.strip_prefix(&*self.head) else {
            return false;
        };
        // Taken from what the head left, so head and tail never overlap.
        let Some(mut rest) = rest.strip_suffix(&*self.tail) else {
            return false;
        };
        for part in &self.middle {
            match rest.find(&**part) {
                Some(at) => rest = rest.get(at + part.len()..).unwrap_or_default(),
                None => return false,
            }
        }
        true
    }
}

/// A parsed path pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The canonical form: what [`Pattern::parse`] reads back to the same pattern.
    canonical: Box<str>,
    segments: Box<[Segment]>,
    /// Bit `i` is set when segment `i` is `**`.
    any_depth: u64,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.canonical)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

impl Pattern {
    /// Parses a pattern (grammar: protocol/README.md §3.5).
    pub fn parse(source: &str, limits: &PatternLimits) -> Result<Self, PatternError> {
        if source.is_empty() {
            return Err(PatternError::Empty);
        }
        if source.len() > usize::from(limits.max_pattern_len) {
            return Err(PatternError::TooLong {
                len: source.len(),
                max: limits.max_pattern_len,
            });
        }
        let max_segments = usize::from(limits.max_pattern_segments).min(MAX_SEGMENTS);
        let mut segments: Vec<Segment> = Vec::new();
        for (index, raw) in source.split('/').enumerate() {
            if index >= max_segments {
                return Err(PatternError::TooManySegments { max: max_segments });
            }
            let segment = parse_segment(raw, index)?;
            // `**/**` matches what `**` does: keep one, so equal patterns compare equal.
            if segment == Segment::AnyDepth && segments.last() == Some(&Segment::AnyDepth) {
                continue;
            }
            segments.push(segment);
        }
        let any_depth = segments
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == Segment::AnyDepth)
            .fold(0u64, |mask, (i, _)| mask | 1 << i);
        let canonical = segments
            .iter()
            .map(render_segment)
            .collect::<Vec<_>>()
            .join("/");
        Ok(Self {
            canonical: canonical.into_boxed_str(),
            segments: segments.into_boxed_slice(),
            any_depth,
        })
    }

    /// `**`: every path. What a session without a subscription holds.
    pub fn everything() -> Self {
        Self {
            canonical: "**".into(),
            segments: Box::new([Segment::AnyDepth]),
            any_depth: 1,
        }
    }

    /// The canonical form (redundant `**` segments dropped, escapes only where needed).
    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    /// Whether this is `**`, which every path matches.
    pub fn matches_everything(&self) -> bool {
        matches!(*self.segments, [Segment::AnyDepth])
    }

    /// The leading segments without wildcards: every matching path starts with them.
    pub fn literal_prefix(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().map_while(|s| match s {
            Segment::Exact(literal) => Some(&**literal),
            _ => None,
        })
    }

    /// Whether `path` matches. Costs O(path segments × pattern segments × segment length).
    pub fn matches(&self, path: &str) -> bool {
        let mut states = self.start();
        for segment in path.split('/') {
            states = self.step(states, segment);
            if states == 0 {
                return false;
            }
        }
        self.accepts(states)
    }

    /// The matcher's states before any path segment: a bit per pattern position the path so
    /// far can have reached (see [`step`](Self::step)).
    pub fn start(&self) -> u64 {
        self.closure(1)
    }

    /// The states after one more path segment; 0 when no continuation of the path can match.
    /// Lets a caller match a tree of paths sharing prefixes, one segment at a time.
    pub fn step(&self, states: u64, segment: &str) -> u64 {
        let mut next = 0u64;
        let mut remaining = states;
        while remaining != 0 {
            let i = remaining.trailing_zeros() as usize;
            remaining &= remaining - 1;
            match self.segments.get(i) {
                Some(Segment::AnyDepth) => next |= 1 << i,
                Some(Segment::Exact(literal)) if **literal == *segment => next |= 1 << (i + 1),
                Some(Segment::Glob(glob)) if glob.matches(segment) => next |= 1 << (i + 1),
                _ => {}
            }
        }
        self.closure(next)
    }

    /// Whether a path that led to `states` matches.
    pub fn accepts(&self, states: u64) -> bool {
        states & (1 << self.segments.len()) != 0
    }

    /// `states` plus every state reachable from them by skipping `**` segments (consecutive
    /// ones were merged at parse time, so one ascending pass reaches them all).
    fn closure(&self, mut states: u64) -> u64 {
        let mut skippable = self.any_depth & states;
        while skippable != 0 {
            let i = skippable.trailing_zeros();
            skippable &= skippable - 1;
            states |= 1 << (i + 1);
        }
        states
    }
}

/// A subscription: patterns in canonical order, each once. A path matches the set when it
/// matches any of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PatternSet {
    patterns: Vec<Pattern>,
}

impl PatternSet {
    /// The set of `patterns` (duplicates by canonical form dropped). A set holding `**` holds
    /// nothing else: `**` already matches every path, and keeping the others would let a later
    /// removal of `**` leave patterns active that adding them never changed (§7.5).
    pub fn new(patterns: impl IntoIterator<Item = Pattern>) -> Self {
        let mut patterns: Vec<Pattern> = patterns.into_iter().collect();
        if patterns.iter().any(|p| p.as_str() == "**") {
            return Self {
                patterns: vec![Pattern::everything()],
            };
        }
        patterns.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        patterns.dedup_by(|a, b| a.as_str() == b.as_str());
        Self { patterns }
    }

    /// Whether `path` matches any pattern.
    pub fn matches(&self, path: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(path))
    }

    /// The patterns, in canonical order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// The canonical forms, in order.
    pub fn canonical(&self) -> Vec<String> {
        self.patterns
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect()
    }

    /// Number of patterns.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether the set holds no pattern (nothing matches).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// This set with `more` added.
    pub fn with(&self, more: &[Pattern]) -> Self {
        Self::new(self.patterns.iter().chain(more).cloned())
    }

    /// This set without the patterns whose canonical form is in `less`.
    pub fn without(&self, less: &[Pattern]) -> Self {
        let patterns = self
            .patterns
            .iter()
            .filter(|p| !less.iter().any(|l| l.as_str() == p.as_str()));
        Self::new(patterns.cloned())
    }
}

fn parse_segment(raw: &str, index: usize) -> Result<Segment, PatternError> {
    if raw.is_empty() {
        return Err(PatternError::EmptySegment(index));
    }
    if raw == "." || raw == ".." {
        return Err(PatternError::DotSegment(index));
    }
    if raw == "**" {
        return Ok(Segment::AnyDepth);
    }
    // Literal runs between unescaped stars.
    let mut parts: Vec<String> = vec![String::new()];
    let mut chars = raw.chars().peekable();
    let mut previous_star = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped @ ('*' | '\\')) => {
                    push_char(&mut parts, escaped);
                    previous_star = false;
                }
                _ => return Err(PatternError::BadEscape(index)),
            },
            '*' => {
                if previous_star {
                    return Err(PatternError::DoubleStarInSegment(index));
                }
                parts.push(String::new());
                previous_star = true;
            }
            c if c.is_control() => return Err(PatternError::ControlCharacter(index)),
            c => {
                push_char(&mut parts, c);
                previous_star = false;
            }
        }
    }
    let mut parts = parts.into_iter();
    let head = parts.next().unwrap_or_default();
    let mut rest: Vec<String> = parts.collect();
    let Some(tail) = rest.pop() else {
        return Ok(Segment::Exact(head.into_boxed_str()));
    };
    Ok(Segment::Glob(Glob {
        head: head.into_boxed_str(),
        middle: rest.into_iter().map(String::into_boxed_str).collect(),
        tail: tail.into_boxed_str(),
    }))
}

fn push_char(parts: &mut [String], c: char) {
    if let Some(last) = parts.last_mut() {
        last.push(c);
    }
}

fn render_segment(segment: &Segment) -> String {
    fn escape(literal: &str) -> String {
        literal.replace('\\', "\\\\").replace('*', "\\*")
    }
    match segment {
        Segment::AnyDepth => "**".to_owned(),
        Segment::Exact(literal) => escape(literal),
        Segment::Glob(glob) => {
            let mut out = escape(&glob.head);
            for part in &glob.middle {
                out.push('*');
                out.push_str(&escape(part));
            }
            out.push('*');
            out.push_str(&escape(&glob.tail));
            out
        }
    }
}

#[cfg(test)]
mod tests;
