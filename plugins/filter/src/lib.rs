//! Keep or drop events by predicates on their fields.
//!
//! An event goes on when every `keep` predicate matches and no `drop` predicate does; events
//! that go on are unchanged. With neither list every event goes on.
//!
//! A predicate is `{"field": ..., "op": ..., "value": ...}`:
//!
//! - `field`: a JSON pointer into the payload (`/price`, `/book/0/size`, `""` for the whole
//!   payload), or `$stream` / `$key` for the event's stream and key.
//! - `op`: `eq`, `ne`, `gt`, `gte`, `lt`, `lte`, `in` or `exists`.
//!   - `eq` / `ne`: JSON equality. When `value` is a number, the field matches numerically and
//!     may be a number or a decimal string (`"100.50"` equals `100.5`), since prices travel as
//!     strings.
//!   - `gt`, `gte`, `lt`, `lte`: numeric, compared as `f64`; `value` and the field may each be a
//!     number or a decimal string. A field that is not numeric does not match.
//!   - `in`: `value` is an array; matches when the field `eq`s one of its elements.
//!   - `exists`: the field is present and not `null`; `"value": false` inverts it.
//! - A field that is absent (or `null`) matches no predicate except `exists` with `false`: so
//!   `ne` does not match it either, the way SQL treats `NULL`.
//!
//! Events whose payload is not JSON, when a predicate needs the payload, are dropped and
//! counted in the node's log, and the rest of the batch goes on: one bad event should not hold
//! back the others. Only a batch in which every event is like that is an error (bad input), so
//! a source whose payloads are all broken shows up as failing rather than silently empty.

use std::cmp::Ordering;

use anode_plugin_sdk::prelude::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    keep: Vec<PredicateConfig>,
    #[serde(default)]
    drop: Vec<PredicateConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PredicateConfig {
    field: String,
    op: Op,
    value: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    Exists,
}

/// What a predicate looks at.
#[derive(Debug)]
enum Field {
    Stream,
    Key,
    /// A JSON pointer into the payload.
    Payload(String),
}

/// What a predicate asks of the field's value.
#[derive(Debug)]
enum Test {
    Eq(Value),
    Ne(Value),
    /// Matches when `field.partial_cmp(threshold)` is one of the orderings.
    Compare(&'static [Ordering], f64),
    In(Vec<Value>),
    Exists(bool),
}

#[derive(Debug)]
struct Predicate {
    field: Field,
    test: Test,
}

/// A number or a decimal string as `f64`.
fn numeric(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if json::is_decimal(s) => s.parse().ok(),
        _ => None,
    }
}

/// `eq` as documented: numeric when `expected` is a number, JSON equality otherwise.
fn equals(actual: &Value, expected: &Value) -> bool {
    match expected {
        Value::Number(n) => numeric(actual) == n.as_f64(),
        _ => actual == expected,
    }
}

impl Predicate {
    fn compile(index: usize, list: &str, config: PredicateConfig) -> Result<Self, PluginError> {
        let invalid =
            |what: String| PluginError::fatal(format!("invalid config: {list}[{index}]: {what}"));
        let field = match config.field.as_str() {
            "$stream" => Field::Stream,
            "$key" => Field::Key,
            p if p.is_empty() || p.starts_with('/') => Field::Payload(p.to_owned()),
            other => {
                return Err(invalid(format!(
                    "field `{other}` is neither a JSON pointer (`/{other}`) nor $stream or $key"
                )));
            }
        };
        let op = config.op;
        let value = config.value;
        let needed = || invalid(format!("op `{op:?}` needs a `value`").to_lowercase());
        let test = match op {
            Op::Eq => Test::Eq(value.ok_or_else(needed)?),
            Op::Ne => Test::Ne(value.ok_or_else(needed)?),
            Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
                let value = value.ok_or_else(needed)?;
                let threshold = numeric(&value).ok_or_else(|| {
                    invalid(format!(
                        "`value` {value} is neither a number nor a decimal string"
                    ))
                })?;
                let orderings: &'static [Ordering] = match op {
                    Op::Gt => &[Ordering::Greater],
                    Op::Gte => &[Ordering::Greater, Ordering::Equal],
                    Op::Lt => &[Ordering::Less],
                    _ => &[Ordering::Less, Ordering::Equal],
                };
                Test::Compare(orderings, threshold)
            }
            Op::In => match value.ok_or_else(needed)? {
                Value::Array(values) => Test::In(values),
                other => return Err(invalid(format!("op `in` needs an array, not {other}"))),
            },
            Op::Exists => match value {
                None => Test::Exists(true),
                Some(Value::Bool(b)) => Test::Exists(b),
                Some(other) => {
                    return Err(invalid(format!(
                        "op `exists` takes true or false, not {other}"
                    )));
                }
            },
        };
        Ok(Predicate { field, test })
    }

    /// Whether the predicate holds for a field value (`None` when absent).
    fn holds(&self, actual: Option<&Value>) -> bool {
        let Some(actual) = actual.filter(|v| !v.is_null()) else {
            return matches!(self.test, Test::Exists(false));
        };
        match &self.test {
            Test::Eq(expected) => equals(actual, expected),
            Test::Ne(expected) => !equals(actual, expected),
            Test::Compare(orderings, threshold) => numeric(actual)
                .and_then(|x| x.partial_cmp(threshold))
                .is_some_and(|o| orderings.contains(&o)),
            Test::In(values) => values.iter().any(|v| equals(actual, v)),
            Test::Exists(wanted) => *wanted,
        }
    }
}

/// An event's payload, parsed at most once and only if a predicate needs it.
enum Payload {
    Unparsed,
    Parsed(Value),
    Broken,
}

/// Why an event cannot be judged.
struct BrokenPayload;

/// The transform.
pub struct Filter {
    keep: Vec<Predicate>,
    drop: Vec<Predicate>,
}

impl Filter {
    fn matches(
        predicate: &Predicate,
        event: &Event,
        payload: &mut Payload,
    ) -> Result<bool, BrokenPayload> {
        let owned;
        let actual = match &predicate.field {
            Field::Stream => {
                owned = Value::String(event.stream.clone());
                Some(&owned)
            }
            Field::Key => {
                owned = event.key.clone().map(Value::String).unwrap_or(Value::Null);
                Some(&owned)
            }
            Field::Payload(pointer) => {
                if let Payload::Unparsed = payload {
                    *payload = match serde_json::from_slice(&event.payload) {
                        Ok(value) => Payload::Parsed(value),
                        Err(_) => Payload::Broken,
                    };
                }
                match payload {
                    Payload::Parsed(value) => value.pointer(pointer),
                    _ => return Err(BrokenPayload),
                }
            }
        };
        Ok(predicate.holds(actual))
    }

    /// Whether the event goes on.
    fn passes(&self, event: &Event) -> Result<bool, BrokenPayload> {
        let mut payload = Payload::Unparsed;
        for predicate in &self.keep {
            if !Self::matches(predicate, event, &mut payload)? {
                return Ok(false);
            }
        }
        for predicate in &self.drop {
            if Self::matches(predicate, event, &mut payload)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl Transform for Filter {
    fn manifest() -> Manifest {
        Manifest::new(
            "filter",
            env!("CARGO_PKG_VERSION"),
            "Keep or drop events by predicates on their payload fields, stream or key",
        )
        .schema(json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "keep": {
                    "description": "every one must match for the event to go on",
                    "type": "array",
                    "items": {"$ref": "#/$defs/predicate"},
                    "default": []
                },
                "drop": {
                    "description": "the event is dropped if any one matches",
                    "type": "array",
                    "items": {"$ref": "#/$defs/predicate"},
                    "default": []
                }
            },
            "$defs": {
                "predicate": {
                    "type": "object",
                    "required": ["field", "op"],
                    "additionalProperties": false,
                    "properties": {
                        "field": {
                            "type": "string",
                            "description": "a JSON pointer into the payload, or $stream or $key"
                        },
                        "op": {"enum": ["eq", "ne", "gt", "gte", "lt", "lte", "in", "exists"]},
                        "value": {
                            "description": "what to compare with: a number or decimal string for \
                                            gt/gte/lt/lte, an array for in, a boolean for exists"
                        }
                    }
                }
            }
        }))
        .example(json!({
            "keep": [
                {"field": "$stream", "op": "eq", "value": "trades"},
                {"field": "/symbol", "op": "in", "value": ["BTC.USDT", "ETH.USDT"]}
            ],
            "drop": [{"field": "/size", "op": "lt", "value": "0.001"}]
        }))
    }

    fn configure(config: &str) -> Result<Self, PluginError> {
        let config: Config = json::config(config)?;
        let compile = |list: &str, predicates: Vec<PredicateConfig>| {
            predicates
                .into_iter()
                .enumerate()
                .map(|(i, p)| Predicate::compile(i, list, p))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Filter {
            keep: compile("keep", config.keep)?,
            drop: compile("drop", config.drop)?,
        })
    }

    fn process(&mut self, events: Vec<Event>, out: &mut Vec<Event>) -> Result<(), PluginError> {
        let total = events.len();
        let mut broken = 0usize;
        for event in events {
            match self.passes(&event) {
                Ok(true) => out.push(event),
                Ok(false) => {}
                Err(BrokenPayload) => broken += 1,
            }
        }
        if broken > 0 && broken == total {
            return Err(PluginError::bad_input(format!(
                "none of the {total} event(s) has a JSON payload"
            )));
        }
        if broken > 0 {
            host::log(
                LogLevel::Warn,
                &format!("filter: dropped {broken} of {total} event(s) whose payload is not JSON"),
            );
        }
        Ok(())
    }
}

export_transform!(Filter);

#[cfg(test)]
mod tests {
    use super::*;
    use anode_plugin_sdk::testing;

    fn trade(symbol: &str, price: &str, size: Value) -> Event {
        Event::new(
            "trades",
            &json!({
                "exchange": "binance",
                "symbol": symbol,
                "price": price,
                "size": size,
                "taker_side": "buy",
                "trade_id": 1,
                "event_timestamp": 1_672_515_782_136i64,
                "atom_timestamp": 1_672_515_782_140_000i64
            }),
        )
        .key(symbol)
    }

    fn ticker(symbol: &str) -> Event {
        Event::new("ticker", &json!({"symbol": symbol, "bid_price": "1.0"})).key(symbol)
    }

    fn configure(config: Value) -> Filter {
        match Filter::configure(&config.to_string()) {
            Ok(f) => f,
            Err(e) => panic!("{config}: {e}"),
        }
    }

    /// The symbols of the events that went on.
    fn symbols(filter: &mut Filter, events: Vec<Event>) -> Vec<String> {
        testing::process(filter, events)
            .unwrap()
            .iter()
            .map(|e| format!("{}:{}", e.stream, e.key.as_deref().unwrap_or("-")))
            .collect()
    }

    fn batch() -> Vec<Event> {
        vec![
            trade("BTC.USDT", "16500.50", json!("0.5")),
            trade("ETH.USDT", "1200.10", json!(2)),
            ticker("BTC.USDT"),
            trade("BNB.BTC", "0.001", json!("100")),
        ]
    }

    #[test]
    fn no_predicates_pass_everything_unchanged() {
        let mut f = configure(json!({}));
        let events = batch();
        assert_eq!(testing::process(&mut f, events.clone()).unwrap(), events);
    }

    #[test]
    fn keep_needs_all_drop_needs_any() {
        let mut f = configure(json!({
            "keep": [
                {"field": "$stream", "op": "eq", "value": "trades"},
                {"field": "/price", "op": "gt", "value": "1"}
            ],
            "drop": [
                {"field": "$key", "op": "eq", "value": "ETH.USDT"},
                {"field": "/taker_side", "op": "eq", "value": "sell"}
            ]
        }));
        assert_eq!(symbols(&mut f, batch()), ["trades:BTC.USDT"]);
    }

    #[test]
    fn numeric_ops_take_numbers_and_decimal_strings() {
        let cases = [
            (
                json!({"field": "/size", "op": "gte", "value": 2}),
                vec!["ETH.USDT", "BNB.BTC"],
            ),
            (
                json!({"field": "/size", "op": "gt", "value": "2"}),
                vec!["BNB.BTC"],
            ),
            (
                json!({"field": "/size", "op": "lt", "value": 2.0}),
                vec!["BTC.USDT"],
            ),
            (
                json!({"field": "/size", "op": "lte", "value": "2.0"}),
                vec!["BTC.USDT", "ETH.USDT"],
            ),
            // A ticker has no size: it matches no comparison.
            (
                json!({"field": "/size", "op": "lt", "value": 1e9}),
                vec!["BTC.USDT", "ETH.USDT", "BNB.BTC"],
            ),
            // A non-numeric field matches no comparison.
            (json!({"field": "/symbol", "op": "gt", "value": 0}), vec![]),
        ];
        for (predicate, expected) in cases {
            let mut f = configure(json!({"keep": [predicate]}));
            let kept: Vec<_> = testing::process(&mut f, batch())
                .unwrap()
                .into_iter()
                .map(|e| e.key.unwrap())
                .collect();
            assert_eq!(kept, expected, "{predicate}");
        }
    }

    #[test]
    fn eq_is_numeric_when_the_value_is_a_number() {
        let mut f = configure(json!({"keep": [{"field": "/price", "op": "eq", "value": 16500.5}]}));
        assert_eq!(symbols(&mut f, batch()), ["trades:BTC.USDT"]);
        // A string value is compared as a string: "16500.5" is not "16500.50".
        let mut f =
            configure(json!({"keep": [{"field": "/price", "op": "eq", "value": "16500.5"}]}));
        assert!(symbols(&mut f, batch()).is_empty());
        let mut f = configure(json!({"keep": [{"field": "/trade_id", "op": "eq", "value": 1.0}]}));
        assert_eq!(symbols(&mut f, batch()).len(), 3);
    }

    #[test]
    fn in_and_ne() {
        let mut f = configure(json!({
            "keep": [{"field": "/symbol", "op": "in", "value": ["BTC.USDT", "BNB.BTC"]}],
            "drop": [{"field": "$stream", "op": "ne", "value": "trades"}]
        }));
        assert_eq!(
            symbols(&mut f, batch()),
            ["trades:BTC.USDT", "trades:BNB.BTC"]
        );
    }

    #[test]
    fn exists_and_absent_fields() {
        let mut f = configure(json!({"keep": [{"field": "/taker_side", "op": "exists"}]}));
        assert_eq!(symbols(&mut f, batch()).len(), 3);
        let mut f =
            configure(json!({"keep": [{"field": "/taker_side", "op": "exists", "value": false}]}));
        assert_eq!(symbols(&mut f, batch()), ["ticker:BTC.USDT"]);
        // `ne` does not match an absent field, like SQL's NULL.
        let mut f =
            configure(json!({"keep": [{"field": "/taker_side", "op": "ne", "value": "sell"}]}));
        assert_eq!(symbols(&mut f, batch()).len(), 3);
        // An event without a key: `$key` is absent.
        let mut f = configure(json!({"keep": [{"field": "$key", "op": "exists"}]}));
        let keyless = Event::new("trades", &json!({"price": "1"}));
        assert!(testing::process(&mut f, vec![keyless]).unwrap().is_empty());
        // Nested pointers and the whole payload.
        let mut f = configure(
            json!({"keep": [{"field": "", "op": "eq", "value": {"symbol": "BTC.USDT", "bid_price": "1.0"}}]}),
        );
        assert_eq!(symbols(&mut f, batch()), ["ticker:BTC.USDT"]);
    }

    #[test]
    fn a_broken_payload_is_dropped_and_the_rest_goes_on() {
        let broken = || Event {
            payload: b"{not json".to_vec(),
            ..trade("BAD.USDT", "1", json!(1))
        };
        let mut f = configure(json!({"keep": [{"field": "/price", "op": "gt", "value": 1}]}));
        let mut events = batch();
        events.insert(1, broken());
        assert_eq!(
            symbols(&mut f, events),
            ["trades:BTC.USDT", "trades:ETH.USDT"]
        );
        // A batch of nothing but broken payloads is an error.
        match testing::process(&mut f, vec![broken(), broken()]) {
            Err(PluginError::BadInput(m)) => assert!(m.contains("2 event"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(testing::process(&mut f, vec![]).unwrap().is_empty());
        // Predicates that never look at the payload do not need it to be JSON.
        let mut f =
            configure(json!({"keep": [{"field": "$stream", "op": "eq", "value": "trades"}]}));
        assert_eq!(testing::process(&mut f, vec![broken()]).unwrap().len(), 1);
    }

    #[test]
    fn bad_config_is_fatal_and_says_why() {
        for config in [
            r#"{"keep": {}}"#,
            r#"{"keep": [{"field": "price", "op": "eq", "value": 1}]}"#,
            r#"{"keep": [{"field": "$topic", "op": "eq", "value": 1}]}"#,
            r#"{"keep": [{"field": "/p", "op": "like", "value": 1}]}"#,
            r#"{"keep": [{"field": "/p", "op": "eq"}]}"#,
            r#"{"drop": [{"field": "/p", "op": "gt", "value": "high"}]}"#,
            r#"{"drop": [{"field": "/p", "op": "lte", "value": null}]}"#,
            r#"{"drop": [{"field": "/p", "op": "in", "value": "a"}]}"#,
            r#"{"drop": [{"field": "/p", "op": "exists", "value": "yes"}]}"#,
            r#"{"drop": [{"field": "/p", "op": "eq", "value": 1, "extra": 2}]}"#,
            r#"{"keep": [], "bogus": 1}"#,
            "[",
        ] {
            match Filter::configure(config) {
                Err(PluginError::Fatal(m)) => assert!(m.starts_with("invalid config"), "{m}"),
                Err(other) => panic!("{config}: {other}"),
                Ok(_) => panic!("{config} was accepted"),
            }
        }
    }

    #[test]
    fn the_manifest_example_configures_and_filters() {
        let manifest = Filter::manifest();
        assert_eq!(manifest.name, "filter");
        let mut f = Filter::configure(&manifest.config_example).unwrap();
        assert_eq!(
            symbols(&mut f, batch()),
            ["trades:BTC.USDT", "trades:ETH.USDT"]
        );
    }
}
