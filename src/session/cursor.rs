//! Where a session's stream of history stands, as arrival numbers.
//!
//! The session owns its cursor for as long as it streams (catch-up or backfill); the room
//! reads and advances it when it assembles a batch. It holds numbers only, never room data.

use std::sync::Arc;

use crate::pattern::PatternSet;

/// An explicit ascending list of arrival numbers to send, then every number from
/// `tail_next` on.
#[derive(Debug, Clone)]
pub struct Cursor {
    explicit: Vec<u64>,
    /// Index into `explicit` of the next number; past its end the tail follows.
    pos: usize,
    tail_next: u64,
    /// A subscribed session's patterns: nodes whose path does not match are skipped.
    filter: Option<Arc<PatternSet>>,
}

impl Cursor {
    /// A cursor over `explicit` (ascending), then every number from `tail_next` on.
    pub fn new(explicit: Vec<u64>, tail_next: u64) -> Self {
        Self {
            explicit,
            pos: 0,
            tail_next,
            filter: None,
        }
    }

    /// This cursor, skipping nodes that do not match `filter`.
    pub fn filtered(mut self, filter: Arc<PatternSet>) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Adds `more` (ascending) to the explicit list, which stays ascending.
    pub fn extend_explicit(&mut self, more: Vec<u64>) {
        self.explicit.extend(more);
        self.explicit.sort_unstable();
    }

    /// The number it points at (which may be past the room's latest).
    pub fn next(&self) -> u64 {
        self.explicit
            .get(self.pos)
            .copied()
            .unwrap_or(self.tail_next)
    }

    /// Every number up to this one was sent or skipped: the resume point of a batch.
    pub fn resume_point(&self) -> u64 {
        self.next().saturating_sub(1)
    }

    /// Moves past the number it points at.
    pub fn advance(&mut self) {
        if self.pos < self.explicit.len() {
            self.pos = self.pos.saturating_add(1);
        } else {
            self.tail_next = self.tail_next.saturating_add(1);
        }
    }

    /// The explicit numbers still ahead, then the first number of the tail.
    pub fn ahead(&self) -> (&[u64], u64) {
        let explicit = self.explicit.get(self.pos..).unwrap_or_default();
        (explicit, self.tail_next)
    }

    /// Whether a node on `path` is streamed (it matches the filter, if any).
    pub fn admits(&self, path: &str) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(path))
    }
}
