//! weft: a WebSocket room relay for collaborative and local-first apps.
//!
//! Peers keep a replica of a room's append-only, content-addressed history DAG and converge
//! through the relay with as few bytes and round trips as possible. The crate is layered; each
//! layer only uses the ones above it in this list:
//!
//! - [`node`]: the history node, its canonical encoding, id and self-validation.
//! - [`pattern`]: path patterns that subscriptions are made of.
//! - [`recon`]: set digests and the reconciliation planner.
//! - [`protocol`]: wire messages and the frame codec (spec: `protocol/README.md`).
//! - [`session`]: sans-IO session state machines for both ends of a connection.
//! - [`room`]: one room's state and the hub that serves its sessions (relay side).
//! - [`replica`]: a client's local copy of a room, the link that syncs it, and replay.
//! - `store`, `server`, `client`: storage seam, the tokio relay, and the client library
//!   (feature `runtime`).
//!
//! `node`, `recon`, `protocol`, `session`, `room` and `replica` never touch a socket, a clock or ambient
//! randomness: time and randomness are parameters, so they can be fuzzed, property-tested
//! under simulated networks, and reused from other runtimes.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod node;
pub mod pattern;
pub mod protocol;
pub mod recon;
pub mod replica;
pub mod room;
pub mod session;

#[cfg(feature = "runtime")]
pub mod client;
#[cfg(feature = "runtime")]
pub mod server;
#[cfg(feature = "runtime")]
pub mod store;
