//! Decoding logs by an ABI event signature given in the configuration
//! (`"Swap(address indexed sender, uint256 amount0In, …)"`): the first topic is the Keccak-256
//! of the canonical signature, indexed parameters are the next topics, the others are read
//! from the data as the ABI lays them out. Static types (`address`, `bool`, `uint<N>`,
//! `int<N>`, `bytes<N>`) and the dynamic `bytes` and `string` are decoded; an indexed dynamic
//! value is its hash, as the chain keeps it. Arrays and tuples are refused when the
//! configuration is read.

use anode_plugin_sdk::prelude::*;
use sha3::{Digest, Keccak256};

/// One parameter's type.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Address,
    Bool,
    Uint,
    Int,
    /// `bytes<N>`.
    Fixed(usize),
    Bytes,
    String,
}

#[derive(Debug, Clone)]
struct Param {
    kind: Kind,
    indexed: bool,
    name: String,
}

/// An event the configuration names.
#[derive(Debug, Clone)]
pub(crate) struct EventAbi {
    name: String,
    signature: String,
    /// `0x` and the Keccak-256 of `signature`, lowercase.
    topic: String,
    params: Vec<Param>,
}

fn keccak_hex(text: &str) -> String {
    let digest = Keccak256::digest(text.as_bytes());
    let mut hex = String::with_capacity(66);
    hex.push_str("0x");
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// A type as written, and its canonical spelling.
fn kind(written: &str) -> Result<(Kind, String), String> {
    let sized = |prefix: &str| -> Option<u32> {
        let bits = written.strip_prefix(prefix)?;
        if bits.is_empty() {
            return Some(256);
        }
        bits.parse()
            .ok()
            .filter(|b| *b > 0 && *b <= 256 && b % 8 == 0)
    };
    if written.contains('[') || written.contains('(') {
        return Err(format!("`{written}`: arrays and tuples are not supported"));
    }
    Ok(match written {
        "address" => (Kind::Address, "address".into()),
        "bool" => (Kind::Bool, "bool".into()),
        "string" => (Kind::String, "string".into()),
        "bytes" => (Kind::Bytes, "bytes".into()),
        w if w.starts_with("uint") => {
            let bits = sized("uint").ok_or_else(|| format!("`{w}` is not a uint type"))?;
            (Kind::Uint, format!("uint{bits}"))
        }
        w if w.starts_with("int") => {
            let bits = sized("int").ok_or_else(|| format!("`{w}` is not an int type"))?;
            (Kind::Int, format!("int{bits}"))
        }
        w if w.starts_with("bytes") => {
            let n: usize = w[5..]
                .parse()
                .ok()
                .filter(|n| (1..=32).contains(n))
                .ok_or_else(|| format!("`{w}` is not a bytes type"))?;
            (Kind::Fixed(n), w.to_owned())
        }
        other => return Err(format!("`{other}` is not an ABI type")),
    })
}

impl EventAbi {
    /// From `Name(type [indexed] [name], …)`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: String| format!("event `{text}`: {why}");
        let text_trim = text.trim();
        let (name, rest) = text_trim
            .split_once('(')
            .ok_or_else(|| bad("expected Name(type name, …)".into()))?;
        let inner = rest
            .strip_suffix(')')
            .ok_or_else(|| bad("expected a closing parenthesis".into()))?;
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad(format!("`{name}` is not an event name")));
        }
        let mut params = Vec::new();
        let mut types = Vec::new();
        for (i, part) in inner.split(',').map(str::trim).enumerate() {
            if part.is_empty() {
                if inner.trim().is_empty() {
                    break;
                }
                return Err(bad("an empty parameter".into()));
            }
            let words: Vec<&str> = part.split_whitespace().collect();
            let (kind, canonical) = kind(words[0]).map_err(bad)?;
            let (indexed, rest) = match words.get(1) {
                Some(&"indexed") => (true, &words[2..]),
                _ => (false, &words[1..]),
            };
            let name = match rest {
                [] => format!("arg{i}"),
                [name] => (*name).to_owned(),
                _ => return Err(bad(format!("`{part}` is not `type [indexed] [name]`"))),
            };
            types.push(canonical);
            params.push(Param {
                kind,
                indexed,
                name,
            });
        }
        if params.iter().filter(|p| p.indexed).count() > 3 {
            return Err(bad("at most 3 parameters are indexed".into()));
        }
        let signature = format!("{name}({})", types.join(","));
        Ok(EventAbi {
            name: name.to_owned(),
            topic: keccak_hex(&signature),
            signature,
            params,
        })
    }

    /// The log decoded, if it is this event and its topics and data fit.
    pub(crate) fn decode(&self, topics: &[String], data: &str) -> Option<Value> {
        if !topics.first()?.eq_ignore_ascii_case(&self.topic) {
            return None;
        }
        let indexed = self.params.iter().filter(|p| p.indexed).count();
        if topics.len() != 1 + indexed {
            return None;
        }
        let data = hex_bytes(data)?;
        let mut topic = topics[1..].iter();
        let mut head = 0usize;
        let mut args = serde_json::Map::new();
        for p in &self.params {
            let value = if p.indexed {
                let word = hex_bytes(topic.next()?)?;
                match p.kind {
                    // An indexed dynamic value is kept as its hash.
                    Kind::Bytes | Kind::String => Value::String(hex(&word)),
                    _ => static_value(&p.kind, word.get(..32)?)?,
                }
            } else {
                let word = data.get(head..head + 32)?;
                head += 32;
                match p.kind {
                    Kind::Bytes | Kind::String => {
                        let offset = usize::try_from(word_u64(word)?).ok()?;
                        let len_word = data.get(offset..offset.checked_add(32)?)?;
                        let len = usize::try_from(word_u64(len_word)?).ok()?;
                        let bytes = data.get(offset + 32..(offset + 32).checked_add(len)?)?;
                        if p.kind == Kind::String {
                            Value::String(String::from_utf8_lossy(bytes).into_owned())
                        } else {
                            Value::String(hex(bytes))
                        }
                    }
                    _ => static_value(&p.kind, word)?,
                }
            };
            args.insert(p.name.clone(), value);
        }
        Some(json!({"name": self.name, "signature": self.signature, "args": args}))
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    let digits = text.strip_prefix("0x")?;
    if digits.len() % 2 != 0 {
        return None;
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).ok())
        .collect()
}

/// A word that must fit 64 bits (an offset, a length).
fn word_u64(word: &[u8]) -> Option<u64> {
    if word[..24].iter().any(|b| *b != 0) {
        return None;
    }
    Some(u64::from_be_bytes(word[24..32].try_into().ok()?))
}

fn static_value(kind: &Kind, word: &[u8]) -> Option<Value> {
    Some(match kind {
        Kind::Address => Value::String(hex(&word[12..32])),
        Kind::Bool => Value::Bool(word[31] != 0),
        Kind::Uint => Value::String(json::hex_decimal(&hex(word)).ok()?),
        Kind::Int if word[0] & 0x80 != 0 => {
            // Two's complement: the magnitude is the inverse plus one.
            let mut magnitude: Vec<u8> = word.iter().map(|b| !b).collect();
            for b in magnitude.iter_mut().rev() {
                let (sum, carry) = b.overflowing_add(1);
                *b = sum;
                if !carry {
                    break;
                }
            }
            Value::String(format!("-{}", json::hex_decimal(&hex(&magnitude)).ok()?))
        }
        Kind::Int => Value::String(json::hex_decimal(&hex(word)).ok()?),
        Kind::Fixed(n) => Value::String(hex(&word[..*n])),
        Kind::Bytes | Kind::String => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(n: u64) -> String {
        format!("{n:064x}")
    }

    #[test]
    fn the_topic_is_the_hash_of_the_canonical_signature() {
        let transfer =
            EventAbi::parse("Transfer(address indexed from, address indexed to, uint value)")
                .unwrap();
        assert_eq!(transfer.signature, "Transfer(address,address,uint256)");
        assert_eq!(transfer.topic, crate::TRANSFER);
        let approval =
            EventAbi::parse(" Approval(address indexed, address indexed, uint256) ").unwrap();
        assert_eq!(approval.topic, crate::APPROVAL);
        assert_eq!(EventAbi::parse("Ping()").unwrap().signature, "Ping()");
    }

    #[test]
    fn static_and_dynamic_parameters_are_decoded() {
        // Swap(address indexed sender, int256 delta, bool up, bytes4 tag, string note, uint8 n)
        let abi = EventAbi::parse(
            "Swap(address indexed sender, int256 delta, bool up, bytes4 tag, string note, uint8 n)",
        )
        .unwrap();
        let sender = format!("0x{:0>64}", "90f8bf6a479f320ead074411a4b0e7944ea8c9c1");
        let minus_five = "f".repeat(63) + "b";
        let tag = format!("{:0<64}", "deadbeef");
        // Head: delta, up, tag, offset of note (5 words in: 0xa0), n; then note's length and text.
        let note = format!("{:0<64}", hex(b"hi there")[2..].to_owned());
        let data = format!(
            "0x{minus_five}{}{tag}{}{}{}{note}",
            word(1),
            word(0xa0),
            word(7),
            word(8)
        );
        let decoded = abi.decode(&[abi.topic.clone(), sender], &data).unwrap();
        assert_eq!(
            decoded,
            json!({"name": "Swap", "signature": "Swap(address,int256,bool,bytes4,string,uint8)",
                   "args": {"sender": "0x90f8bf6a479f320ead074411a4b0e7944ea8c9c1", "delta": "-5",
                            "up": true, "tag": "0xdeadbeef", "note": "hi there", "n": "7"}})
        );
        // Another event, a wrong topic count, or data too short: not this event.
        assert!(abi.decode(&[crate::TRANSFER.to_owned()], &data).is_none());
        assert!(
            abi.decode(std::slice::from_ref(&abi.topic), &data)
                .is_none()
        );
        let short = format!("0x{minus_five}");
        let sender = format!("0x{:0>64}", "1");
        assert!(abi.decode(&[abi.topic.clone(), sender], &short).is_none());
    }

    #[test]
    fn what_cannot_be_decoded_is_refused_when_read() {
        for bad in [
            "Transfer",
            "Transfer(address",
            "(address)",
            "Transfer(address[] to)",
            "Transfer((address,uint256) pair)",
            "Transfer(uint7 x)",
            "Transfer(bytes33 x)",
            "Transfer(money x)",
            "Transfer(address indexed a, address indexed b, address indexed c, address indexed d)",
            "Transfer(address, , uint256)",
            "Transfer(address to extra)",
        ] {
            assert!(EventAbi::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
