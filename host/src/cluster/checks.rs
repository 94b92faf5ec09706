//! What a catalog entry from a peer must look like before it is merged: a known key shape, a
//! value of that kind's schema, a bounded size, a writer id, and a clock not absurdly ahead of
//! ours. Entries arrive only over authenticated channels (signed gossip and requests); these
//! checks keep a buggy or compromised node from planting entries no one can overwrite or
//! parse.

use serde::Deserialize;
use serde_json::Value;

use crate::plugin::{Digest, PluginManifest};
use crate::source::SourceSpec;

/// Largest value, serialised.
pub const MAX_VALUE_BYTES: usize = 256 * 1024;
/// How far ahead of the local Lamport clock a peer's entry may be. A fresh node starts at 0
/// and catches up through merges, so the bound is wide; it refuses clocks that would pin a
/// key for ever (`u64::MAX`) or wrap.
pub const MAX_CLOCK_AHEAD: u64 = 1 << 40;

/// A shared cursor as the catalog carries it (`cursor/<source id>`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CursorValue {
    cursor: String,
    #[allow(dead_code)]
    at_us: i64,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Why an entry with `key`, written by `node` at `clock`, holding `value`, is refused; `None`
/// when it is acceptable at local clock `local_clock`.
pub fn refusal(
    key: &str,
    clock: u64,
    node: &str,
    value: Option<&Value>,
    local_clock: u64,
) -> Option<String> {
    if !valid_id(node) {
        return Some(format!("writer id `{node}` is not a node id"));
    }
    if clock > local_clock.saturating_add(MAX_CLOCK_AHEAD) {
        return Some(format!(
            "clock {clock} is more than {MAX_CLOCK_AHEAD} ahead of ours ({local_clock})"
        ));
    }
    let Some((kind, name)) = key.split_once('/') else {
        return Some(format!("key `{key}` has no kind"));
    };
    let name_ok = match kind {
        "source" | "cursor" => valid_id(name),
        "plugin" => name.parse::<Digest>().is_ok(),
        _ => return Some(format!("key `{key}` is of no known kind")),
    };
    if !name_ok {
        return Some(format!("key `{key}` is malformed"));
    }
    let value = value?;
    let size = value.to_string().len();
    if size > MAX_VALUE_BYTES {
        return Some(format!(
            "value of `{key}` is {size} bytes, more than {MAX_VALUE_BYTES}"
        ));
    }
    let shape = match kind {
        "source" => SourceSpec::deserialize(value)
            .map_err(|e| e.to_string())
            .and_then(|spec| {
                spec.validate()?;
                (spec.id == name)
                    .then_some(())
                    .ok_or_else(|| format!("it names source `{}`", spec.id))
            }),
        "plugin" => PluginManifest::deserialize(value)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                (m.digest.to_hex() == name)
                    .then_some(())
                    .ok_or_else(|| "its digest is not the key's".to_owned())
            }),
        _ => CursorValue::deserialize(value)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                (c.cursor.len() <= 64 * 1024)
                    .then_some(())
                    .ok_or_else(|| "the cursor is over 64 KiB".to_owned())
            }),
    };
    shape
        .err()
        .map(|why| format!("value of `{key}` is not a {kind} entry: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_are_checked_for_shape_size_and_clock() {
        let spec = json!({"id": "a", "plugin": "binance-trades", "config": {}});
        assert_eq!(refusal("source/a", 5, "n1", Some(&spec), 3), None);
        assert_eq!(refusal("source/a", 5, "n1", None, 3), None, "a tombstone");
        let refused = |key: &str, clock: u64, node: &str, value: Option<&Value>| {
            refusal(key, clock, node, value, 3).expect("refused")
        };
        assert!(refused("source/b", 5, "n1", Some(&spec)).contains("names source `a`"));
        assert!(refused("source/a", u64::MAX, "n1", Some(&spec)).contains("ahead"));
        assert!(refused("source/a", 5, "", Some(&spec)).contains("node id"));
        assert!(refused("source/a b", 5, "n1", None).contains("malformed"));
        assert!(refused("secrets/x", 5, "n1", None).contains("no known kind"));
        assert!(refused("nokind", 5, "n1", None).contains("no kind"));
        assert!(refused("plugin/xyz", 5, "n1", None).contains("malformed"));
        assert!(
            refused("source/a", 5, "n1", Some(&json!({"id": "a"}))).contains("not a source entry")
        );
        assert!(refused("cursor/a", 5, "n1", Some(&json!({"cursor": 1}))).contains("cursor"));
        assert_eq!(
            refusal(
                "cursor/a",
                5,
                "n1",
                Some(&json!({"cursor": "1", "at_us": 2})),
                3
            ),
            None
        );
        let huge = json!({"id": "a", "plugin": "p", "config": {"x": "y".repeat(MAX_VALUE_BYTES)}});
        assert!(refused("source/a", 5, "n1", Some(&huge)).contains("bytes"));
    }
}
