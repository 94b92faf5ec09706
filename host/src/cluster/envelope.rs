//! The envelope of every gossip packet: magic, protocol version, cluster id, the time it was
//! sealed and a random nonce, the body, and an HMAC-SHA256 over all of it when a cluster key
//! is set. Packets of other clusters, other versions, with a wrong tag, stale or seen before
//! are refused before foca sees them (see [`super::auth`]).

use super::auth::{Keys, Refused};

const MAGIC: &[u8; 2] = b"AN";
/// Version of the envelope and of what is inside it (2: time and nonce, key lists).
pub const PROTOCOL: u8 = 2;
const TAG_LEN: usize = 32;
/// Time (ms, big-endian) and nonce after the cluster id.
const FRESHNESS_LEN: usize = 16;

/// Seals and opens gossip packets.
#[derive(Clone)]
pub struct Envelope {
    keys: Keys,
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    Garbage,
    Foreign,
    Auth,
    Stale,
    Replayed,
}

impl From<Refused> for Rejected {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Auth => Rejected::Auth,
            Refused::Stale => Rejected::Stale,
            Refused::Replayed => Rejected::Replayed,
        }
    }
}

impl Envelope {
    pub fn new(keys: Keys) -> Envelope {
        Envelope { keys }
    }

    /// The keys, for signing node-to-node requests.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn seal(&self, body: &[u8], now_ms: i64) -> Vec<u8> {
        let id = self.keys.cluster_id();
        let mut out = Vec::with_capacity(4 + id.len() + FRESHNESS_LEN + body.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.push(PROTOCOL);
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(&rand::random::<u64>().to_be_bytes());
        out.extend_from_slice(body);
        if let Some(tag) = self.keys.tag(&[&out]) {
            out.extend_from_slice(&tag);
        }
        out
    }

    /// The body of a packet made by a node of this cluster, once.
    pub fn open<'a>(&self, packet: &'a [u8], now_ms: i64) -> Result<&'a [u8], Rejected> {
        if packet.len() < 4 || &packet[..2] != MAGIC || packet[2] != PROTOCOL {
            return Err(Rejected::Garbage);
        }
        let id_len = packet[3] as usize;
        let fresh_start = 4 + id_len;
        let body_start = fresh_start + FRESHNESS_LEN;
        if packet.len() < body_start {
            return Err(Rejected::Garbage);
        }
        if packet[4..fresh_start] != *self.keys.cluster_id() {
            return Err(Rejected::Foreign);
        }
        if !self.keys.any() {
            return Ok(&packet[body_start..]);
        }
        if packet.len() < body_start + TAG_LEN {
            return Err(Rejected::Auth);
        }
        let (signed, tag) = packet.split_at(packet.len() - TAG_LEN);
        if !self.keys.verify(&[signed], tag) {
            return Err(Rejected::Auth);
        }
        let at_ms = i64::from_be_bytes(packet[fresh_start..fresh_start + 8].try_into().expect("8"));
        let nonce = u64::from_be_bytes(packet[fresh_start + 8..body_start].try_into().expect("8"));
        self.keys.fresh(at_ms, nonce, now_ms)?;
        Ok(&signed[body_start..])
    }
}
