//! The replica file: what [`Replica::to_bytes`] writes and [`Replica::from_bytes`] reads back,
//! with the formats earlier builds wrote.

use serde::{Deserialize, Serialize};

use super::*;

impl Replica {
    /// Serializes the replica for a file: room, watermark, and nodes in order with sync flags.
    pub fn to_bytes(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        let file = ReplicaFile {
            format: REPLICA_FORMAT,
            room: self.room.as_str().to_owned(),
            watermark: self.watermark,
            epoch: self.epoch,
            ahead: self.ahead.iter().copied().collect(),
            sketch_key: self.sets.as_ref().map(|sets| sets.key().wire().to_vec()),
            subscription: self.subscription.as_ref().map(PatternSet::canonical),
            nodes: self
                .entries
                .iter()
                .map(|e| (e.node.clone(), e.synced))
                .collect(),
        };
        rmp_serde::to_vec(&file)
    }

    /// Reads a replica written by [`to_bytes`](Self::to_bytes), checking every node.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReplicaFileError> {
        let file: ReplicaFile = rmp_serde::from_slice(bytes)?;
        if !READABLE_FORMATS.contains(&file.format) {
            return Err(ReplicaFileError::Format(file.format));
        }
        let room = RoomId::new(&file.room).map_err(|_| ReplicaFileError::Room)?;
        let mut replica = Self::new(room);
        replica.subscription = file
            .subscription
            .as_deref()
            .map(read_subscription)
            .transpose()?;
        if let Some(key) = file.sketch_key {
            let key = SketchKey::from_wire(&key).ok_or(ReplicaFileError::SketchKey)?;
            replica.sets = Some(SetIndex::new(key));
        }
        for (node, synced) in file.nodes {
            replica.insert(node, synced)?;
        }
        replica.watermark = file.watermark;
        replica.epoch = file.epoch;
        if replica.watermark.is_some() {
            replica.ahead = file.ahead.into_iter().collect();
        }
        Ok(replica)
    }
}

pub(super) const REPLICA_FORMAT: u32 = 4;

/// Format 2 files (before subscriptions) read as whole-room replicas; formats 2 and 3 (before
/// the sync marks' epoch) as marks of an unknown epoch.
const READABLE_FORMATS: [u32; 3] = [2, 3, REPLICA_FORMAT];

#[derive(Serialize, Deserialize)]
pub(super) struct ReplicaFile {
    pub(super) format: u32,
    pub(super) room: String,
    pub(super) watermark: Option<Watermark>,
    /// The room's sketch key, once a relay named it.
    pub(super) sketch_key: Option<Vec<u8>>,
    pub(super) nodes: Vec<(Node, bool)>,
    /// The replica's subscription (absent in format 2).
    #[serde(default)]
    pub(super) subscription: Option<Vec<String>>,
    /// The relay epoch of the sync marks (absent before format 4).
    #[serde(default)]
    pub(super) epoch: Option<u64>,
    /// Arrival numbers above the watermark already received (absent before format 4): they
    /// make `hello` name the synced heads, so the relay skips those nodes.
    #[serde(default)]
    pub(super) ahead: Vec<u64>,
}

/// A replica file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaFileError {
    /// Not a replica file.
    #[error("not a replica file: {0}")]
    Decode(rmp_serde::decode::Error),
    /// A format version this build does not read.
    #[error("replica file format {0} is not supported")]
    Format(u32),
    /// The stored room id is invalid.
    #[error("replica file names an invalid room")]
    Room,
    /// The stored sketch key is not 16 bytes.
    #[error("replica file holds a bad sketch key")]
    SketchKey,
    /// A stored node is invalid or out of order.
    #[error("replica file holds a bad node: {0}")]
    Node(InsertError),
    /// A stored subscription pattern is invalid.
    #[error("replica file holds a bad subscription pattern: {0}")]
    Subscription(PatternError),
}

// The conversions are written out rather than `#[from]`: each message already says its cause,
// so the cause is not also a `source` that error reports would print a second time.
impl From<rmp_serde::decode::Error> for ReplicaFileError {
    fn from(e: rmp_serde::decode::Error) -> Self {
        Self::Decode(e)
    }
}

impl From<InsertError> for ReplicaFileError {
    fn from(e: InsertError) -> Self {
        Self::Node(e)
    }
}

impl From<PatternError> for ReplicaFileError {
    fn from(e: PatternError) -> Self {
        Self::Subscription(e)
    }
}
