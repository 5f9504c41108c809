//! Sans-IO session state machines, one per end of a connection (protocol/README.md §2).
//!
//! A session walks `hello → welcome → [ids → need] → catch-up → steady`. Both machines take
//! whole received frames in (`handle_frame`) and return what to do: the relay side returns a
//! [`Reaction`] (a request for the room, an `error` frame, or a close code); the client side
//! returns a checked [`ClientEvent`] for the replica. Neither reads a clock, owns a socket or
//! touches room data, so they can be driven by the tokio server, by the client driver, by the
//! property-test network simulator and by the fuzzer alike.
//!
//! Bad input never changes accepted state: a frame that fails to decode, breaks a limit or
//! arrives in the wrong phase yields an `error` frame and the session continues, until
//! [`relay::MAX_ERRORS`] such frames close it with `protocol violation`.

mod client;
mod cursor;
pub mod error;
pub mod relay;

pub use client::{
    ClientError, ClientEvent, ClientPhase, ClientSession, Fallback, HelloSnapshot, Misbehaved,
    Summaries,
};
pub use cursor::Cursor;
pub use error::{Fault, SessionError};
pub use relay::{
    Ending, Reaction, RefineRound, RelaySession, RelaySessionConfig, Relisting, Request,
    SketchRound, Start, Stream,
};
