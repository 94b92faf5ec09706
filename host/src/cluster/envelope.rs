//! The envelope of every gossip packet: magic, protocol version, cluster id, the time it was
//! sealed and a random nonce, then the body. With a cluster key the body is sealed with
//! ChaCha20-Poly1305 under a key derived from it, the header (time and nonce included) bound as
//! associated data: an onlooker reads neither the membership nor the catalog entries gossip
//! carries, and a packet changed in any byte does not open. Packets of other clusters, other
//! versions, that do not open under any key, stale or seen before are refused before foca sees
//! them (see [`super::auth`]).

use std::borrow::Cow;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};

use super::auth::{Keys, Refused};

const MAGIC: &[u8; 2] = b"AN";
/// Version of the envelope and of what is inside it (3: the body sealed, not only signed).
pub const PROTOCOL: u8 = 3;
/// The AEAD's tag after the sealed body.
const TAG_LEN: usize = 16;
/// Time (ms, big-endian) and nonce after the cluster id.
const FRESHNESS_LEN: usize = 16;

/// The AEAD nonce of a packet: the low half of its time and its random nonce, so two packets
/// share one only if sealed in the same 49 days with the same 64 random bits.
fn aead_nonce(freshness: &[u8]) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&freshness[4..16]);
    nonce.into()
}

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
        match self.keys.sealing_keys().first() {
            None => out.extend_from_slice(body),
            Some(key) => {
                let nonce = aead_nonce(&out[out.len() - FRESHNESS_LEN..]);
                let sealed = ChaCha20Poly1305::new(key.into())
                    .encrypt(
                        &nonce,
                        Payload {
                            msg: body,
                            aad: &out,
                        },
                    )
                    .expect("sealing a gossip packet cannot fail");
                out.extend_from_slice(&sealed);
            }
        }
        out
    }

    /// The body of a packet made by a node of this cluster, once.
    pub fn open<'a>(&self, packet: &'a [u8], now_ms: i64) -> Result<Cow<'a, [u8]>, Rejected> {
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
        let keys = self.keys.sealing_keys();
        if keys.is_empty() {
            return Ok(Cow::Borrowed(&packet[body_start..]));
        }
        if packet.len() < body_start + TAG_LEN {
            return Err(Rejected::Auth);
        }
        let (header, sealed) = packet.split_at(body_start);
        let nonce = aead_nonce(&header[fresh_start..]);
        let body = keys
            .iter()
            .find_map(|key| {
                ChaCha20Poly1305::new(key.into())
                    .decrypt(
                        &nonce,
                        Payload {
                            msg: sealed,
                            aad: header,
                        },
                    )
                    .ok()
            })
            .ok_or(Rejected::Auth)?;
        let at_ms = i64::from_be_bytes(packet[fresh_start..fresh_start + 8].try_into().expect("8"));
        let nonce = u64::from_be_bytes(packet[fresh_start + 8..body_start].try_into().expect("8"));
        self.keys.fresh(at_ms, nonce, now_ms)?;
        Ok(Cow::Owned(body))
    }
}
