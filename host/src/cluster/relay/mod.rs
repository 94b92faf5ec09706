//! The data plane: a WebSocket subscriber on any node receives matching records of every
//! source in the cluster. A node with clients opens one authenticated stream to each live
//! peer (`/cluster/v1/stream`), sends the union of its clients' filters (and every change of
//! it), and republishes what arrives to its clients. A node without clients opens none, so
//! records only flow toward nodes with interested subscribers. Peers send only records they
//! ingested themselves, never relayed ones, so nothing loops.
//!
//! Each change of interest carries a version, which the peer confirms once its filters are in
//! place; a client is told it is subscribed once every live peer has confirmed its filter
//! (bounded by [`HEARD_WITHIN`]), so from then on it misses nothing of their sources.
//!
//! A link resumes by position: the peer numbers every record it sends (its outbox, see
//! [`crate::fanout::LinkPosition`]); after a drop the link reopens with the epoch and number
//! it reached, and the peer sends what followed before going on live. When the peer sends
//! nothing a link missed while it was behind, it sends that from its outbox too. Only what the
//! outbox no longer holds (the peer restarted, died, or the link stayed down longer than
//! `fanout.relay_buffer_ms`) becomes a `gap` notice to this node's clients, naming the sources
//! and the position the link had reached.
//!
//! `send.rs` is the sending side (`/cluster/v1/stream`), `links.rs` the receiving side (one
//! link to each live peer), `wire.rs` the messages between them.

mod links;
mod send;
mod wire;

pub use links::run_links;
pub use send::serve;

/// How long a new or changed subscriber waits for the peers to confirm its filter (a peer of
/// an older version never does).
pub const HEARD_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);
