//! Node-to-node authentication. Every gossip packet and every `/cluster/v1` request carries
//! the time it was made and a random nonce, under an HMAC-SHA256 keyed by `cluster.key`:
//!
//! - **Keys roll without downtime**: `cluster.key` is a list; the first key signs and every
//!   key verifies, so a new key is added everywhere (second), then moved first node by node,
//!   then the old one dropped.
//! - **Replays are refused**: a message older or newer than the window
//!   (`cluster.auth_window_ms`) is stale; one whose time and nonce were seen within the
//!   window is a replay. Both are dropped and counted.
//! - A request's signature covers its method, path and query, body digest, time and nonce.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

/// The header a signed node-to-node request carries: `<time ms>.<nonce hex>.<tag hex>`.
pub const AUTH_HEADER: &str = "x-anode-auth";
/// Most (time, nonce) pairs remembered; beyond it the oldest are forgotten first.
const SEEN_MAX: usize = 262_144;

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No signature, or one no key verifies.
    Auth,
    /// Made outside the time window (a replay of an old capture, or a clock far off).
    Stale,
    /// Made within the window, but its time and nonce were seen already.
    Replayed,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Auth => "auth",
            Refused::Stale => "stale",
            Refused::Replayed => "replay",
        }
    }
}

/// The cluster keys (first signs, all verify), the cluster id, and the replay guard. Cheap
/// to clone; clones share the guard.
#[derive(Clone)]
pub struct Keys {
    /// Swapped whole when the keys are reloaded (`SIGHUP`).
    keys: Arc<RwLock<Arc<[Vec<u8>]>>>,
    cluster_id: Arc<[u8]>,
    window_ms: i64,
    seen: Arc<Mutex<Seen>>,
}

#[derive(Default)]
struct Seen {
    set: HashSet<(i64, u64)>,
    /// In the order seen, with the time seen: what to forget first.
    order: VecDeque<(i64, (i64, u64))>,
}

impl Keys {
    pub fn new(cluster_id: &str, keys: &[String], window_ms: u64) -> Keys {
        Keys {
            keys: Arc::new(RwLock::new(to_bytes(keys))),
            cluster_id: cluster_id.as_bytes().into(),
            window_ms: window_ms.min(i64::MAX as u64) as i64,
            seen: Arc::default(),
        }
    }

    /// Replace the keys (a key roll): the first of `keys` signs from now on. Refused when it
    /// would remove every key or add one where there was none (that needs a restart).
    pub fn replace(&self, keys: &[String]) -> Result<(), String> {
        if keys.is_empty() == self.any() {
            return Err(
                "a node cannot start or stop using a cluster key while it runs: restart it"
                    .to_owned(),
            );
        }
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = to_bytes(keys);
        Ok(())
    }

    fn current(&self) -> Arc<[Vec<u8>]> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a key is set: without one nothing is signed or checked.
    pub fn any(&self) -> bool {
        !self.current().is_empty()
    }

    pub fn cluster_id(&self) -> &[u8] {
        &self.cluster_id
    }

    fn mac(key: &[u8]) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length")
    }

    /// The tag of `parts` under the signing key; `None` without keys.
    pub fn tag(&self, parts: &[&[u8]]) -> Option<[u8; 32]> {
        let keys = self.current();
        let mut mac = Self::mac(keys.first()?);
        for part in parts {
            mac.update(part);
        }
        Some(mac.finalize().into_bytes().into())
    }

    /// The keys gossip packets are sealed with (ChaCha20-Poly1305), derived from the cluster
    /// keys in their order: the first seals, every one opens. Empty without keys.
    pub fn sealing_keys(&self) -> Vec<[u8; 32]> {
        self.current()
            .iter()
            .map(|key| {
                let mut mac = Self::mac(key);
                mac.update(b"anode gossip seal v1");
                mac.finalize().into_bytes().into()
            })
            .collect()
    }

    /// Whether any key gives `tag` for `parts` (compared in constant time).
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        self.current().iter().any(|key| {
            let mut mac = Self::mac(key);
            for part in parts {
                mac.update(part);
            }
            mac.verify_slice(tag).is_ok()
        })
    }

    /// Accept a message made at `at_ms` with `nonce` once, within the window around `now_ms`.
    pub fn fresh(&self, at_ms: i64, nonce: u64, now_ms: i64) -> Result<(), Refused> {
        if at_ms.abs_diff(now_ms) > self.window_ms as u64 {
            return Err(Refused::Stale);
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(&(seen_at, pair)) = seen.order.front() {
            if now_ms.saturating_sub(seen_at) <= self.window_ms.saturating_mul(2)
                && seen.order.len() < SEEN_MAX
            {
                break;
            }
            seen.order.pop_front();
            seen.set.remove(&pair);
        }
        if !seen.set.insert((at_ms, nonce)) {
            return Err(Refused::Replayed);
        }
        seen.order.push_back((now_ms, (at_ms, nonce)));
        Ok(())
    }

    /// The `x-anode-auth` value for a request; `None` without keys.
    pub fn sign_request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        now_ms: i64,
    ) -> Option<String> {
        let nonce: u64 = rand::random();
        let parts = request_parts(
            &self.cluster_id,
            method,
            path,
            &body_digest(body),
            now_ms,
            nonce,
        );
        let tag = self.tag(&[&parts])?;
        Some(format!("{now_ms}.{nonce:016x}.{}", hex::encode(tag)))
    }

    /// Check a request's `x-anode-auth` value: signed by a cluster key, fresh, not seen.
    pub fn verify_request(
        &self,
        header: Option<&str>,
        method: &str,
        path: &str,
        body: &[u8],
        now_ms: i64,
    ) -> Result<(), Refused> {
        let (at_ms, nonce, tag) = header.and_then(parse_header).ok_or(Refused::Auth)?;
        let parts = request_parts(
            &self.cluster_id,
            method,
            path,
            &body_digest(body),
            at_ms,
            nonce,
        );
        if !self.verify(&[&parts], &tag) {
            return Err(Refused::Auth);
        }
        self.fresh(at_ms, nonce, now_ms)
    }
}

fn to_bytes(keys: &[String]) -> Arc<[Vec<u8>]> {
    keys.iter().map(|k| k.as_bytes().to_vec()).collect()
}

fn body_digest(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// What a request signature covers; variable-length parts are length-prefixed.
fn request_parts(
    cluster_id: &[u8],
    method: &str,
    path: &str,
    digest: &[u8; 32],
    at_ms: i64,
    nonce: u64,
) -> Vec<u8> {
    let mut text = Vec::with_capacity(128 + path.len());
    text.extend_from_slice(b"anode-http/2\n");
    for part in [cluster_id, method.as_bytes(), path.as_bytes()] {
        text.extend_from_slice(&(part.len() as u32).to_be_bytes());
        text.extend_from_slice(part);
    }
    text.extend_from_slice(digest);
    text.extend_from_slice(&at_ms.to_be_bytes());
    text.extend_from_slice(&nonce.to_be_bytes());
    text
}

fn parse_header(value: &str) -> Option<(i64, u64, Vec<u8>)> {
    let mut parts = value.split('.');
    let at_ms = parts.next()?.parse().ok()?;
    let nonce = u64::from_str_radix(parts.next()?, 16).ok()?;
    let tag = hex::decode(parts.next()?).ok()?;
    (parts.next().is_none() && tag.len() == 32).then_some((at_ms, nonce, tag))
}
