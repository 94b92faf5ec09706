//! JSON helpers that turn missing or mistyped fields into [`PluginError::BadInput`].

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::types::{HttpResponse, PluginError};

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
        Some(Value::String(s)) if is_decimal(s) => Ok(plain_owned(s)),
        Some(Value::Number(n)) => Ok(plain_owned(&n.to_string())),
        _ => Err(PluginError::bad_input(format!(
            "missing decimal field `{name}`"
        ))),
    }
}

fn plain_owned(s: &str) -> String {
    plain_decimal(s).map_or_else(|| s.to_owned(), Cow::into_owned)
}

/// `s` as a plain decimal (`0.000051` for `5.1e-05`, `1500` for `1.5E+3`), digit for digit,
/// with no detour through a float; `None` when it is not a finite number. A number already
/// plain comes back as it is, borrowed. Venues send exponents now and then (Kraken's
/// quantities, a JSON library's output); records carry plain decimals only.
pub fn plain_decimal(s: &str) -> Option<Cow<'_, str>> {
    if !is_decimal(s) {
        return None;
    }
    let plain = s
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
    if plain && !s.starts_with('.') && !s.starts_with("-.") && !s.ends_with('.') {
        return Some(Cow::Borrowed(s));
    }
    let (negative, unsigned) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], unsigned[at + 1..].parse::<i64>().ok()?),
        None => (unsigned, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if !(int.bytes().chain(frac.bytes())).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = format!("{int}{frac}");
    // Where the point goes among `digits`.
    let point = int.len() as i64 + exponent;
    let mut out = if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}", "0".repeat(point as usize - digits.len()))
    } else {
        let (whole, part) = digits.split_at(point as usize);
        format!("{whole}.{part}")
    };
    // No leading zeros before the point, but one.
    let whole_len = out.find('.').unwrap_or(out.len());
    let zeros = out[..whole_len].bytes().take_while(|&b| b == b'0').count();
    out.drain(..zeros.min(whole_len.saturating_sub(1)));
    let zero = out.bytes().all(|b| b == b'0' || b == b'.');
    if negative && !zero {
        out.insert(0, '-');
    }
    Some(Cow::Owned(out))
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

/// A hex quantity of any size (`0x2540be400`, a 256-bit balance) as a decimal string, so
/// quantities beyond `u64` reach the record exactly.
pub fn hex_decimal(s: &str) -> Result<String, PluginError> {
    let bad = || PluginError::bad_input(format!("`{s}` is not a hex quantity"));
    let digits = s.strip_prefix("0x").ok_or_else(bad)?;
    if digits.is_empty() {
        return Err(bad());
    }
    // Little-endian base-10^9 limbs: each hex digit multiplies by 16 and adds.
    let mut limbs: Vec<u32> = vec![0];
    for c in digits.chars() {
        let mut carry = u64::from(c.to_digit(16).ok_or_else(bad)?);
        for limb in &mut limbs {
            let v = u64::from(*limb) * 16 + carry;
            *limb = (v % 1_000_000_000) as u32;
            carry = v / 1_000_000_000;
        }
        if carry > 0 {
            limbs.push(carry as u32);
        }
    }
    let mut text = limbs.last().map(u32::to_string).unwrap_or_default();
    for limb in limbs.iter().rev().skip(1) {
        text.push_str(&format!("{limb:09}"));
    }
    Ok(text)
}

/// The maximum number of body bytes quoted in an HTTP error message.
const QUOTED_BODY_BYTES: usize = 200;

/// The JSON body of an HTTP response. A `429` or `5xx` status is retryable, any other status
/// outside `2xx` is bad input (both name the status and quote the start of the body), and a
/// body that is not JSON is bad input.
pub fn response(response: &HttpResponse) -> Result<Value, PluginError> {
    let status = response.status;
    if !(200..300).contains(&status) {
        let quoted = &response.body[..response.body.len().min(QUOTED_BODY_BYTES)];
        let message = format!(
            "HTTP {status} from upstream: {}",
            String::from_utf8_lossy(quoted).trim()
        );
        return Err(if status == 429 || status >= 500 {
            PluginError::retryable(message)
        } else {
            PluginError::bad_input(message)
        });
    }
    parse(&response.body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exponents_become_plain_decimals_digit_for_digit() {
        let plain = |s: &str| plain_decimal(s).map(Cow::into_owned);
        for (given, want) in [
            ("5.1e-05", "0.000051"),
            ("1.5E+3", "1500"),
            ("1e3", "1000"),
            ("-2.5e-1", "-0.25"),
            ("12.3456e2", "1234.56"),
            ("0.5e1", "5"),
            ("+7", "7"),
            (".5", "0.5"),
            ("5.", "5"),
            ("-0e5", "0"),
            (
                "123456789012345678901234567890e-30",
                "0.123456789012345678901234567890",
            ),
        ] {
            assert_eq!(plain(given).as_deref(), Some(want), "{given}");
        }
        // Plain ones are not copied.
        assert!(matches!(
            plain_decimal("71770.4"),
            Some(Cow::Borrowed("71770.4"))
        ));
        assert!(matches!(plain_decimal("-0.001"), Some(Cow::Borrowed(_))));
        for bad in ["", "abc", "1e", "inf", "NaN", "1e400", "0x10"] {
            assert_eq!(plain(bad), None, "{bad}");
        }
        assert_eq!(
            decimal_field(&json!({"q": 5.1e-05}), "q").unwrap(),
            "0.000051"
        );
    }

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

    #[test]
    fn hex_quantities_of_any_size_become_decimal_text() {
        assert_eq!(hex_decimal("0x0").unwrap(), "0");
        assert_eq!(hex_decimal("0x3b9aca00").unwrap(), "1000000000");
        assert_eq!(hex_decimal("0x12a05f2").unwrap(), "19531250");
        assert_eq!(
            hex_decimal("0xffffffffffffffffffffffffffffffff").unwrap(),
            u128::MAX.to_string()
        );
        assert_eq!(
            hex_decimal("0x1000000000000000000000000000000000000000000000000000000000000000")
                .unwrap(),
            "7237005577332262213973186563042994240829374041602535252466099000494570602496"
        );
        for bad in ["12", "0x", "0xzz", ""] {
            assert!(
                matches!(hex_decimal(bad), Err(PluginError::BadInput(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn http_statuses_map_to_what_the_host_should_do() {
        let with = |status: u16, body: &str| HttpResponse {
            status,
            ..HttpResponse::ok("t", body)
        };
        assert_eq!(response(&with(200, "[1]")).unwrap(), json!([1]));
        assert_eq!(response(&with(204, "{}")).unwrap(), json!({}));
        for status in [429, 500, 503] {
            match response(&with(status, "slow down")) {
                Err(PluginError::Retryable(m)) => {
                    assert!(
                        m.contains(&status.to_string()) && m.contains("slow down"),
                        "{m}"
                    );
                }
                other => panic!("{status}: {other:?}"),
            }
        }
        for status in [301, 400, 404] {
            match response(&with(status, "")) {
                Err(PluginError::BadInput(m)) => assert!(m.contains(&status.to_string()), "{m}"),
                other => panic!("{status}: {other:?}"),
            }
        }
        assert!(matches!(
            response(&with(200, "<html>")),
            Err(PluginError::BadInput(_))
        ));
        let long = "x".repeat(10_000);
        assert!(response(&with(500, &long)).unwrap_err().message().len() < 300);
    }
}
