//! The envelope of every gossip packet: magic, protocol version, cluster id, body, and an
//! HMAC-SHA256 when a cluster key is set. Packets of other clusters, other versions or with a
//! wrong tag are refused before foca sees them.

use hmac::{Hmac, Mac};
use sha2::Sha256;

const MAGIC: &[u8; 2] = b"AN";
/// Version of the envelope and of what is inside it.
pub const PROTOCOL: u8 = 1;
const TAG_LEN: usize = 32;

/// Seals and opens gossip packets.
#[derive(Clone)]
pub struct Envelope {
    cluster_id: Vec<u8>,
    key: Option<Vec<u8>>,
}

/// Why a packet was dropped.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    Garbage,
    Foreign,
    Auth,
}

impl Envelope {
    pub fn new(cluster_id: &str, key: Option<&str>) -> Envelope {
        Envelope {
            cluster_id: cluster_id.as_bytes().to_vec(),
            key: key.map(|k| k.as_bytes().to_vec()),
        }
    }

    fn mac(&self, key: &[u8]) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length")
    }

    pub fn seal(&self, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.cluster_id.len() + body.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.push(PROTOCOL);
        out.push(self.cluster_id.len() as u8);
        out.extend_from_slice(&self.cluster_id);
        out.extend_from_slice(body);
        if let Some(key) = &self.key {
            let mut mac = self.mac(key);
            mac.update(&out);
            out.extend_from_slice(&mac.finalize().into_bytes());
        }
        out
    }

    pub fn open<'a>(&self, packet: &'a [u8]) -> Result<&'a [u8], Rejected> {
        if packet.len() < 4 || &packet[..2] != MAGIC || packet[2] != PROTOCOL {
            return Err(Rejected::Garbage);
        }
        let id_len = packet[3] as usize;
        let body_start = 4 + id_len;
        if packet.len() < body_start {
            return Err(Rejected::Garbage);
        }
        if packet[4..body_start] != self.cluster_id[..] {
            return Err(Rejected::Foreign);
        }
        match &self.key {
            None => Ok(&packet[body_start..]),
            Some(key) => {
                if packet.len() < body_start + TAG_LEN {
                    return Err(Rejected::Auth);
                }
                let (signed, tag) = packet.split_at(packet.len() - TAG_LEN);
                let mut mac = self.mac(key);
                mac.update(signed);
                mac.verify_slice(tag).map_err(|_| Rejected::Auth)?;
                Ok(&signed[body_start..])
            }
        }
    }

    /// The token node-to-node HTTP requests carry (`x-anode-cluster`): derived from the key,
    /// so only nodes holding it pass. `None` without a key.
    pub fn http_token(&self) -> Option<String> {
        let key = self.key.as_ref()?;
        let mut mac = self.mac(key);
        mac.update(b"anode-http/");
        mac.update(&self.cluster_id);
        Some(hex::encode(mac.finalize().into_bytes()))
    }
}
