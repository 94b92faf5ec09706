//! JSON helpers that turn missing or mistyped fields into [`PluginError::BadInput`].

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::types::PluginError;

/// Parse bytes as JSON; a parse failure is bad input.
pub fn parse(bytes: &[u8]) -> Result<Value, PluginError> {
    serde_json::from_slice(bytes).map_err(|e| PluginError::bad_input(format!("not JSON: {e}")))
}

/// Deserialize bytes into `T` (which may borrow from them); a failure is bad input.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, PluginError> {
    serde_json::from_slice(bytes)
        .map_err(|e| PluginError::bad_input(format!("unexpected message: {e}")))
}

/// Parse a plugin configuration; a failure is fatal and names the problem.
pub fn config<T: DeserializeOwned>(config: &str) -> Result<T, PluginError> {
    let config = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    serde_json::from_str(config).map_err(|e| PluginError::fatal(format!("invalid config: {e}")))
}

/// `value[name]` as a string.
pub fn str_field<'a>(value: &'a Value, name: &str) -> Result<&'a str, PluginError> {
    value
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| PluginError::bad_input(format!("missing string field `{name}`")))
}

/// `value[name]` as an unsigned integer (a JSON number, or a string of digits).
pub fn u64_field(value: &Value, name: &str) -> Result<u64, PluginError> {
    match value.get(name) {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| PluginError::bad_input(format!("missing integer field `{name}`")))
}

/// `value[name]` as a signed integer (a JSON number, or a string of digits).
pub fn i64_field(value: &Value, name: &str) -> Result<i64, PluginError> {
    match value.get(name) {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| PluginError::bad_input(format!("missing integer field `{name}`")))
}

/// `value[name]` as a decimal kept as text: strings pass through, numbers are printed, so no
/// precision is lost on the way to the record.
pub fn decimal_field(value: &Value, name: &str) -> Result<String, PluginError> {
    match value.get(name) {
        Some(Value::String(s)) if is_decimal(s) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(PluginError::bad_input(format!(
            "missing decimal field `{name}`"
        ))),
    }
}

/// Whether `s` looks like a decimal number (`-12.5`, `0.001`, `3e-5`).
pub fn is_decimal(s: &str) -> bool {
    !s.is_empty() && s.parse::<f64>().is_ok_and(f64::is_finite)
}

/// Follow a JSON pointer (`/data/items`); the empty pointer is the value itself.
pub fn at<'a>(value: &'a Value, pointer: &str) -> Result<&'a Value, PluginError> {
    value
        .pointer(pointer)
        .ok_or_else(|| PluginError::bad_input(format!("nothing at `{pointer}`")))
}

/// A hex quantity (`0x1b4`) as a number, as EVM JSON-RPC sends them.
pub fn hex_u64(s: &str) -> Result<u64, PluginError> {
    let digits = s
        .strip_prefix("0x")
        .ok_or_else(|| PluginError::bad_input(format!("`{s}` is not a 0x quantity")))?;
    u64::from_str_radix(digits, 16)
        .map_err(|_| PluginError::bad_input(format!("`{s}` is not a hex quantity")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_and_errors() {
        let v = json!({"p": "0.001", "n": 12, "s": "34", "f": 1.5});
        assert_eq!(str_field(&v, "p").unwrap(), "0.001");
        assert_eq!(u64_field(&v, "n").unwrap(), 12);
        assert_eq!(u64_field(&v, "s").unwrap(), 34);
        assert_eq!(decimal_field(&v, "f").unwrap(), "1.5");
        assert!(matches!(str_field(&v, "x"), Err(PluginError::BadInput(_))));
        assert!(matches!(
            decimal_field(&json!({"p": "abc"}), "p"),
            Err(PluginError::BadInput(_))
        ));
        assert!(matches!(parse(b"{nope"), Err(PluginError::BadInput(_))));
        assert!(matches!(config::<Value>("{"), Err(PluginError::Fatal(_))));
        assert_eq!(hex_u64("0x12a05f2").unwrap(), 0x12a05f2);
        assert!(hex_u64("12").is_err());
    }
}
