//! Plugin signatures: a publisher signs a plugin's sha256 digest with an ed25519 key
//! (`anode plugin keygen`, `anode plugin sign`); a node with `plugins.trusted_keys` installs
//! (from a file, an upload or a peer) only plugins signed by one of those keys. The plugins
//! built into the binary are trusted as such.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::digest::Digest;

/// What is signed: this prefix, then the 32 bytes of the digest.
const CONTEXT: &[u8] = b"anode-plugin-v1:";

/// A publisher's signature of one plugin's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginSignature {
    /// The publisher's public key, hex (32 bytes).
    pub key: String,
    /// The ed25519 signature, hex (64 bytes).
    pub signature: String,
}

/// A new publisher key: (secret, public), both hex. Keep the secret one secret.
pub fn keygen() -> (String, String) {
    let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    (
        hex::encode(key.to_bytes()),
        hex::encode(key.verifying_key().to_bytes()),
    )
}

fn message(digest: &Digest) -> Vec<u8> {
    let mut message = CONTEXT.to_vec();
    message.extend_from_slice(&hex::decode(digest.to_hex()).expect("a digest is hex"));
    message
}

/// Sign `digest` with the secret key (hex, as `keygen` writes it).
pub fn sign(secret_hex: &str, digest: &Digest) -> Result<PluginSignature, String> {
    let bytes: [u8; 32] = hex::decode(secret_hex.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(
            "the key file does not hold a secret key (64 hex digits from `anode plugin keygen`)",
        )?;
    let key = SigningKey::from_bytes(&bytes);
    Ok(PluginSignature {
        key: hex::encode(key.verifying_key().to_bytes()),
        signature: hex::encode(key.sign(&message(digest)).to_bytes()),
    })
}

impl PluginSignature {
    /// Whether this is a valid signature of `digest` by its key.
    pub fn verify(&self, digest: &Digest) -> Result<(), String> {
        let key: [u8; 32] = hex::decode(&self.key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("its key is not 32 bytes of hex")?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| "its key is not an ed25519 key")?;
        let signature: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("its signature is not 64 bytes of hex")?;
        key.verify(&message(digest), &Signature::from_bytes(&signature))
            .map_err(|_| "the signature does not match the plugin's digest".to_owned())
    }

    /// The `key:signature` form of a header or a `.sig` file.
    pub fn to_text(&self) -> String {
        format!("{}:{}", self.key, self.signature)
    }

    /// Read the `key:signature` form.
    pub fn from_text(text: &str) -> Result<PluginSignature, String> {
        let (key, signature) = text
            .trim()
            .split_once(':')
            .ok_or("a plugin signature is `<public key hex>:<signature hex>`")?;
        Ok(PluginSignature {
            key: key.to_ascii_lowercase(),
            signature: signature.to_ascii_lowercase(),
        })
    }
}

/// The publisher keys a node trusts; none means every plugin is accepted.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    keys: Vec<String>,
}

impl Trust {
    pub fn new(keys: &[String]) -> Trust {
        Trust {
            keys: keys.iter().map(|k| k.trim().to_ascii_lowercase()).collect(),
        }
    }

    /// Whether any key is trusted (then plugins must be signed).
    pub fn enforced(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether a plugin of `digest` with `signature` may be installed.
    pub fn check(
        &self,
        digest: &Digest,
        signature: Option<&PluginSignature>,
    ) -> Result<(), String> {
        if !self.enforced() {
            return Ok(());
        }
        let signature = signature.ok_or(
            "it is not signed, and this node only takes plugins signed by a key in \
             plugins.trusted_keys (sign it with `anode plugin sign`)",
        )?;
        if !self.keys.contains(&signature.key.to_ascii_lowercase()) {
            return Err(format!(
                "it is signed by key {}, which is not in plugins.trusted_keys",
                signature.key
            ));
        }
        signature.verify(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_a_key_to_a_digest() {
        let (secret, public) = keygen();
        let digest = Digest::of(b"a plugin");
        let signature = sign(&secret, &digest).unwrap();
        assert_eq!(signature.key, public);
        assert!(signature.verify(&digest).is_ok());
        assert!(signature.verify(&Digest::of(b"another plugin")).is_err());
        let text = signature.to_text();
        assert_eq!(PluginSignature::from_text(&text).unwrap(), signature);
        let trust = Trust::new(std::slice::from_ref(&public));
        assert!(trust.check(&digest, Some(&signature)).is_ok());
        assert!(
            trust
                .check(&digest, None)
                .unwrap_err()
                .contains("not signed")
        );
        let (other_secret, _) = keygen();
        let stranger = sign(&other_secret, &digest).unwrap();
        assert!(
            trust
                .check(&digest, Some(&stranger))
                .unwrap_err()
                .contains("not in plugins.trusted_keys")
        );
        let tampered = PluginSignature {
            key: public.clone(),
            ..stranger
        };
        assert!(
            trust
                .check(&digest, Some(&tampered))
                .unwrap_err()
                .contains("does not match")
        );
        assert!(Trust::default().check(&digest, None).is_ok());
        assert!(sign("not a key", &digest).is_err());
    }
}
