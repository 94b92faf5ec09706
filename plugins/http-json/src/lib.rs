//! A generic REST poller: `GET` a URL every `interval_ms` and turn the items of its JSON body
//! into events.
//!
//! - `items_pointer` is a JSON pointer to the items in the body (`""`, the default, is the body
//!   itself). An array gives one event per element; an object is one item.
//! - `fields` maps output field names to JSON pointers into each item; without it the item is
//!   the payload as it came (it must then be an object). A pointer that finds nothing gives
//!   `null`, since APIs often omit empty fields.
//! - `key_field`, `id_field` and `time_field` name where each item keeps its key, upstream id
//!   and time: a top-level field name, or a JSON pointer when they start with `/`. They are read
//!   from the item as it came, before `fields` picks the output. Times are milliseconds since
//!   the epoch (a number or a string of digits) or RFC 3339 strings. An item that lacks a
//!   configured one is bad input; the other items of the response still count.
//!
//! Without `id_field` the host derives record ids from the payload, so a poll that returns the
//! same item again (an unchanged price) is stored once.
//!
//! Statuses: `429` and `5xx` are retryable, other non-`2xx` statuses and bodies that are not
//! JSON are bad input.

use std::collections::BTreeMap;

use anode_plugin_sdk::prelude::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: String,
    #[serde(default = "default_interval_ms")]
    interval_ms: u32,
    #[serde(default)]
    items_pointer: String,
    #[serde(default = "default_stream")]
    stream: String,
    key_field: Option<String>,
    id_field: Option<String>,
    time_field: Option<String>,
    fields: Option<BTreeMap<String, String>>,
    /// Headers sent with every request (an API key); secret: the host redacts them in reads.
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn default_interval_ms() -> u32 {
    1000
}

fn default_stream() -> String {
    "items".to_owned()
}

/// The tag of the one request this connector makes.
const POLL_TAG: &str = "poll";

/// Where an item keeps a value: a top-level field or a JSON pointer.
#[derive(Debug)]
enum FieldRef {
    Name(String),
    Pointer(String),
}

impl FieldRef {
    fn parse(option: &str, spec: &str) -> Result<Self, PluginError> {
        if spec.is_empty() {
            return Err(PluginError::fatal(format!(
                "invalid config: `{option}` is empty"
            )));
        }
        Ok(if spec.starts_with('/') {
            FieldRef::Pointer(spec.to_owned())
        } else {
            FieldRef::Name(spec.to_owned())
        })
    }

    fn find<'v>(&self, item: &'v Value) -> Option<&'v Value> {
        match self {
            FieldRef::Name(name) => item.get(name),
            FieldRef::Pointer(pointer) => item.pointer(pointer),
        }
        .filter(|v| !v.is_null())
    }

    fn text(&self) -> &str {
        match self {
            FieldRef::Name(s) | FieldRef::Pointer(s) => s,
        }
    }
}

/// Check a JSON pointer's syntax: empty, or starting with `/`.
fn check_pointer(option: &str, pointer: &str) -> Result<(), PluginError> {
    if pointer.is_empty() || pointer.starts_with('/') {
        Ok(())
    } else {
        Err(PluginError::fatal(format!(
            "invalid config: `{option}` is `{pointer}`, not a JSON pointer (use \"\" or start with `/`)"
        )))
    }
}

/// A key or upstream id as text: strings as they are, numbers and booleans printed.
fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A time in microseconds from milliseconds (number or digits) or an RFC 3339 string.
fn as_time_us(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map(time::ms_to_us),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok().map(time::ms_to_us)
        }
        Value::String(s) => time::parse_rfc3339_us(s).ok(),
        _ => None,
    }
}

/// The connector.
pub struct HttpJson {
    config: Config,
    key: Option<FieldRef>,
    id: Option<FieldRef>,
    time: Option<FieldRef>,
}

impl HttpJson {
    /// One item as an event.
    fn item(&self, item: &Value) -> Result<Event, PluginError> {
        let mut event = match &self.config.fields {
            Some(fields) => {
                let picked: serde_json::Map<String, Value> = fields
                    .iter()
                    .map(|(name, pointer)| {
                        let value = item.pointer(pointer).cloned().unwrap_or(Value::Null);
                        (name.clone(), value)
                    })
                    .collect();
                Event::new(&self.config.stream, &picked)
            }
            None if item.is_object() => Event::new(&self.config.stream, item),
            None => {
                return Err(PluginError::bad_input(
                    "item is not a JSON object; set `fields` to pick values from it",
                ));
            }
        };
        let missing = |option: &str, field: &FieldRef, wanted: &str| {
            PluginError::bad_input(format!(
                "item has no {wanted} at `{}` ({option})",
                field.text()
            ))
        };
        if let Some(field) = &self.key {
            let key = field.find(item).and_then(as_text);
            event = event.key(key.ok_or_else(|| missing("key_field", field, "string or number"))?);
        }
        if let Some(field) = &self.id {
            let id = field.find(item).and_then(as_text);
            event = event
                .upstream_id(id.ok_or_else(|| missing("id_field", field, "string or number"))?);
        }
        if let Some(field) = &self.time {
            let us = field.find(item).and_then(as_time_us);
            event =
                event.at(us.ok_or_else(|| {
                    missing("time_field", field, "time (milliseconds or RFC 3339)")
                })?);
        }
        Ok(event)
    }
}

impl Connector for HttpJson {
    fn manifest() -> Manifest {
        Manifest::new(
            "http-json",
            env!("CARGO_PKG_VERSION"),
            "Poll a JSON REST endpoint on an interval; each item of the response becomes an event",
        )
        .schema(json!({
            "type": "object",
            "required": ["url"],
            "additionalProperties": false,
            "properties": {
                "url": {"type": "string", "pattern": "^https?://"},
                "interval_ms": {"type": "integer", "minimum": 1, "default": default_interval_ms()},
                "items_pointer": {
                    "type": "string",
                    "default": "",
                    "description": "JSON pointer to the array of items; \"\" is the body itself"
                },
                "stream": {"type": "string", "minLength": 1, "default": default_stream()},
                "key_field": {"type": "string", "description": "field name or JSON pointer"},
                "id_field": {"type": "string", "description": "field name or JSON pointer"},
                "time_field": {
                    "type": "string",
                    "description": "field name or JSON pointer; ms since the epoch or RFC 3339"
                },
                "fields": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "output field name → JSON pointer into the item"
                },
                "headers": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "writeOnly": true,
                    "description": "headers sent with every request (an API key); never shown in reads"
                }
            }
        }))
        .example(json!({
            "url": "http://127.0.0.1:9100/binance/api/v3/ticker/price",
            "interval_ms": 1000,
            "stream": "prices",
            "key_field": "symbol",
            "fields": {"symbol": "/symbol", "price": "/price"}
        }))
    }

    fn open(config: &str, _cursor: Option<&str>) -> Result<Self, PluginError> {
        let config: Config = json::config(config)?;
        if !(config.url.starts_with("http://") || config.url.starts_with("https://")) {
            return Err(PluginError::fatal(format!(
                "invalid config: `url` is `{}`; it must start with http:// or https://",
                config.url
            )));
        }
        if config.interval_ms == 0 {
            return Err(PluginError::fatal(
                "invalid config: `interval_ms` must be at least 1",
            ));
        }
        if config.stream.is_empty() {
            return Err(PluginError::fatal("invalid config: `stream` is empty"));
        }
        check_pointer("items_pointer", &config.items_pointer)?;
        for (name, pointer) in config.fields.iter().flatten() {
            check_pointer(&format!("fields.{name}"), pointer)?;
        }
        let field = |option: &str, spec: &Option<String>| {
            spec.as_deref()
                .map(|s| FieldRef::parse(option, s))
                .transpose()
        };
        Ok(HttpJson {
            key: field("key_field", &config.key_field)?,
            id: field("id_field", &config.id_field)?,
            time: field("time_field", &config.time_field)?,
            config,
        })
    }

    fn plan(&self) -> Plan {
        let request = (self.config.headers.iter()).fold(
            HttpRequest::get(&self.config.url, POLL_TAG),
            |request, (k, v)| request.header(k, v),
        );
        Plan::http(self.config.interval_ms).request(request).into()
    }

    fn on_response(
        &mut self,
        response: &HttpResponse,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        let body = json::response(response)?;
        let pointer = &self.config.items_pointer;
        let items = match json::at(&body, pointer)? {
            Value::Array(items) => items.as_slice(),
            object @ Value::Object(_) => std::slice::from_ref(object),
            _ => {
                return Err(PluginError::bad_input(format!(
                    "the value at items_pointer `{pointer}` is neither an array nor an object"
                )));
            }
        };
        for (index, item) in items.iter().enumerate() {
            match self.item(item) {
                Ok(event) => out.emit(event),
                Err(error) => out.errors.push(PluginError::bad_input(format!(
                    "item {index}: {}",
                    error.message()
                ))),
            }
        }
        Ok(())
    }
}

export_connector!(HttpJson);

#[cfg(test)]
mod tests {
    use super::*;
    use anode_plugin_sdk::testing;

    const TICKERS: &str = r#"[{"symbol":"LTCBTC","price":"4.00000200"},{"symbol":"ETHBTC","price":"0.07946600"},{"symbol":"BNBBTC","price":"0.00150800"}]"#;
    const ONE_TICKER: &str = r#"{"symbol":"LTCBTC","price":"4.00000200"}"#;

    fn open(config: &str) -> HttpJson {
        testing::open(config)
    }

    fn respond(c: &mut HttpJson, status: u16, body: &str) -> Output {
        let response = HttpResponse {
            status,
            ..HttpResponse::ok(POLL_TAG, body)
        };
        testing::responses(c, &[response])
    }

    #[test]
    fn every_element_of_an_array_is_an_event() {
        let mut c = open(r#"{"url":"http://h/api/v3/ticker/price","key_field":"symbol"}"#);
        let out = respond(&mut c, 200, TICKERS);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(out.events.len(), 3);
        assert!(out.events.iter().all(|e| e.stream == "items"));
        assert_eq!(out.events[1].key.as_deref(), Some("ETHBTC"));
        assert_eq!(out.events[1].upstream_id, None);
        assert_eq!(out.events[1].event_time, None);
        assert_eq!(
            testing::payloads(&out.events)[0],
            json!({"symbol":"LTCBTC","price":"4.00000200"})
        );
        assert!(out.requests.is_empty() && out.cursor.is_none());
    }

    #[test]
    fn a_single_object_is_one_item() {
        let mut c = open(
            r#"{"url":"https://h/api/v3/ticker/price?symbol=LTCBTC","stream":"prices","key_field":"symbol","id_field":"price"}"#,
        );
        let out = respond(&mut c, 200, ONE_TICKER);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(out.events.len(), 1);
        assert_eq!(out.events[0].stream, "prices");
        assert_eq!(out.events[0].key.as_deref(), Some("LTCBTC"));
        assert_eq!(out.events[0].upstream_id.as_deref(), Some("4.00000200"));
    }

    #[test]
    fn pointers_pick_items_fields_ids_and_times() {
        let mut c = open(
            r#"{"url":"http://h/trades","items_pointer":"/result/trades","key_field":"/market/name",
                "id_field":"id","time_field":"ts",
                "fields":{"market":"/market/name","price":"/px","size":"/qty","note":"/absent"}}"#,
        );
        let body = json!({"result": {"trades": [
            {"id": 7, "ts": 1_672_515_782_136i64, "market": {"name": "BTC-USD"}, "px": "16500.5", "qty": 0.25},
            {"id": "8", "ts": "2022-12-31T19:43:02.200Z", "market": {"name": "BTC-USD"}, "px": "16500.6", "qty": 1},
            {"id": 9, "ts": "1672515782300", "market": {"name": "ETH-USD"}, "px": "1200", "qty": 2}
        ]}});
        let out = respond(&mut c, 200, &body.to_string());
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let ids: Vec<_> = out
            .events
            .iter()
            .map(|e| e.upstream_id.as_deref())
            .collect();
        assert_eq!(ids, [Some("7"), Some("8"), Some("9")]);
        let times: Vec<_> = out.events.iter().map(|e| e.event_time).collect();
        assert_eq!(
            times,
            [
                Some(1_672_515_782_136_000),
                Some(1_672_515_782_200_000),
                Some(1_672_515_782_300_000)
            ]
        );
        assert_eq!(out.events[2].key.as_deref(), Some("ETH-USD"));
        assert_eq!(
            testing::payloads(&out.events)[0],
            json!({"market": "BTC-USD", "price": "16500.5", "size": 0.25, "note": null})
        );
    }

    #[test]
    fn an_item_without_its_key_id_or_time_is_bad_input_alone() {
        let mut c =
            open(r#"{"url":"http://h/x","key_field":"symbol","id_field":"id","time_field":"t"}"#);
        let body = json!([
            {"symbol": "A", "id": 1, "t": 1},
            {"id": 2, "t": 2},
            {"symbol": "C", "t": 3},
            {"symbol": "D", "id": 4, "t": "soon"},
            {"symbol": {"nested": true}, "id": 5, "t": 5},
            {"symbol": "F", "id": 6, "t": 6},
            "not an object"
        ]);
        let out = respond(&mut c, 200, &body.to_string());
        let keys: Vec<_> = out.events.iter().map(|e| e.key.as_deref()).collect();
        assert_eq!(keys, [Some("A"), Some("F")]);
        assert_eq!(out.errors.len(), 5, "{:?}", out.errors);
        assert!(
            out.errors
                .iter()
                .all(|e| matches!(e, PluginError::BadInput(m) if m.starts_with("item "))),
            "{:?}",
            out.errors
        );
        assert!(out.errors[0].message().contains("key_field"));
    }

    #[test]
    fn statuses_and_bodies_that_cannot_be_used() {
        let mut c = open(r#"{"url":"http://h/x","items_pointer":"/data"}"#);
        for (status, body) in [(429, "Too Many Requests"), (500, ""), (503, "down")] {
            match &respond(&mut c, status, body).errors[..] {
                [PluginError::Retryable(m)] => assert!(m.contains(&status.to_string()), "{m}"),
                other => panic!("{status}: {other:?}"),
            }
        }
        for (status, body) in [
            (404, r#"{"code":-1121,"msg":"Invalid symbol."}"#),
            (200, "<html>"),
            (200, r#"{"other":[]}"#),
            (200, r#"{"data":42}"#),
        ] {
            let out = respond(&mut c, status, body);
            assert!(
                matches!(out.errors[..], [PluginError::BadInput(_)]),
                "{status} {body}: {:?}",
                out.errors
            );
            assert!(out.events.is_empty());
        }
        let out = respond(&mut c, 200, r#"{"data":[]}"#);
        assert!(out.errors.is_empty() && out.events.is_empty());
    }

    #[test]
    fn plans_a_get_on_the_interval() {
        let Plan::Http(plan) = open(r#"{"url":"http://h/x","interval_ms":250}"#).plan() else {
            panic!("expected an HTTP plan");
        };
        assert_eq!(plan.interval_ms, 250);
        assert_eq!(
            plan.requests,
            vec![HttpRequest::get("http://h/x", POLL_TAG)]
        );
        let Plan::Http(plan) = open(r#"{"url":"http://h/x"}"#).plan() else {
            panic!("expected an HTTP plan");
        };
        assert_eq!(plan.interval_ms, 1000);
        let Plan::Http(plan) = open(r#"{"url":"http://h/x","headers":{"X-Key":"k1"}}"#).plan()
        else {
            panic!("expected an HTTP plan");
        };
        assert_eq!(
            plan.requests[0].headers,
            [("X-Key".to_owned(), "k1".to_owned())]
        );
    }

    #[test]
    fn bad_config_is_fatal_and_says_why() {
        for config in [
            r#"{}"#,
            r#"{"url":"ftp://h/x"}"#,
            r#"{"url":"http://h/x","interval_ms":0}"#,
            r#"{"url":"http://h/x","interval_ms":-5}"#,
            r#"{"url":"http://h/x","items_pointer":"data"}"#,
            r#"{"url":"http://h/x","fields":{"p":"price"}}"#,
            r#"{"url":"http://h/x","key_field":""}"#,
            r#"{"url":"http://h/x","stream":""}"#,
            r#"{"url":"http://h/x","method":"POST"}"#,
        ] {
            match HttpJson::open(config, None) {
                Err(PluginError::Fatal(m)) => assert!(m.starts_with("invalid config"), "{m}"),
                Err(other) => panic!("{config}: {other}"),
                Ok(_) => panic!("{config} was accepted"),
            }
        }
    }

    #[test]
    fn the_manifest_example_opens_and_decodes_binance_prices() {
        let manifest = HttpJson::manifest();
        assert_eq!(manifest.name, "http-json");
        let mut c = HttpJson::open(&manifest.config_example, None).unwrap();
        let out = respond(&mut c, 200, TICKERS);
        assert_eq!(out.events.len(), 3);
        assert_eq!(out.events[0].stream, "prices");
        assert_eq!(
            testing::payloads(&out.events)[2],
            json!({"symbol": "BNBBTC", "price": "0.00150800"})
        );
    }
}
