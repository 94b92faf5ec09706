//! JSON-RPC 2.0 over HTTP, as EVM nodes speak it: the body of a call, the `result` of a
//! reply, and hex quantities.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::types::{HttpRequest, HttpResponse, PluginError};

/// The body of a call.
pub fn call(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// The `error` of a reply, if it has one: its code (0 when absent) and message.
pub fn error(body: &Value) -> Option<(i64, &str)> {
    let error = body.get("error").filter(|e| !e.is_null())?;
    let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("no message");
    Some((code, message))
}

/// The `result` of a reply: an `error` is retryable (a node that is busy, rate-limited or
/// behind), a reply with neither is bad input. `what` names the call in messages.
pub fn result<'v>(body: &'v Value, what: &str) -> Result<&'v Value, PluginError> {
    if let Some((code, message)) = error(body) {
        return Err(PluginError::retryable(format!(
            "{what}: JSON-RPC error {code}: {message}"
        )));
    }
    body.get("result").ok_or_else(|| {
        PluginError::bad_input(format!("{what}: reply has neither result nor error"))
    })
}

/// Where a connector that follows a chain by hash has got to, as its cursor keeps it:
/// `{"next":N,"generation":G,"final_next":F,"kept":[…]}`: the first block not emitted, the
/// undos made so far, the first block not yet irreversible, and what it keeps of the blocks
/// just below `next` (their hashes, and whatever else it needs to undo them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainCursor<K> {
    pub next: u64,
    pub generation: u64,
    pub final_next: u64,
    pub kept: Vec<K>,
}

impl<K: serde::Serialize + serde::de::DeserializeOwned> ChainCursor<K> {
    /// A stored cursor, checked: fatal when it is not one (a hand-edited store, another
    /// plugin's cursor), saying what was expected.
    pub fn parse(text: &str) -> Result<Self, PluginError> {
        let cursor: Self = serde_json::from_str(text).map_err(|e| {
            PluginError::fatal(format!(
                "invalid cursor `{text}`: {e}; expected \
                 {{\"next\":…,\"generation\":…,\"final_next\":…,\"kept\":[…]}}"
            ))
        })?;
        if cursor.final_next > cursor.next || cursor.kept.len() as u64 > cursor.next {
            return Err(PluginError::fatal(format!(
                "invalid cursor `{text}`: `final_next` or `kept` reach past `next`"
            )));
        }
        Ok(cursor)
    }

    pub fn render(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The tag of a [`finalized_request`].
pub const FINALIZED_TAG: &str = "finalized";

/// Ask `url` for the block it calls `finalized` (`eth_getBlockByNumber("finalized")`).
pub fn finalized_request(url: &str) -> HttpRequest {
    let body = call(1, "eth_getBlockByNumber", json!(["finalized", false]));
    HttpRequest::post_json(url, &body, FINALIZED_TAG)
}

/// The number of the node's `finalized` block from the answer to a [`finalized_request`]:
/// `None` when the node does not know the tag (an error, `null`), which leaves finality to
/// depth; an HTTP failure is an error as any.
pub fn finalized_number(response: &HttpResponse) -> Result<Option<u64>, PluginError> {
    let body = crate::json::response(response)?;
    Ok(result(&body, "eth_getBlockByNumber(finalized)")
        .ok()
        .and_then(|block| block.get("number"))
        .and_then(|n| quantity(n, "the finalized block number").ok()))
}

/// A hex quantity (`"0x1b4"`) as a number, or bad input naming `what`.
pub fn quantity(value: &Value, what: &str) -> Result<u64, PluginError> {
    let text = value
        .as_str()
        .ok_or_else(|| PluginError::bad_input(format!("{what} is not a hex string")))?;
    crate::json::hex_u64(text)
}

/// Several JSON-RPC endpoints for one source (nodes behind a load balancer, a second
/// provider): each is asked for the head at every poll, the one with the highest head serves
/// the other calls, and one that errs or lags is set aside for a few polls.
///
/// An endpoint is set aside when asking it for the head failed (an error, a refusal, a reply
/// that is no head), or when its head is more than `max_lag` blocks behind the highest; it is
/// asked again after `aside_polls` polls. When every endpoint is aside, the one with the
/// highest head known serves anyway (a source never stops for want of a perfect endpoint).
#[derive(Debug, Clone)]
pub struct Endpoints {
    urls: Vec<String>,
    /// Per endpoint: its last head, and the polls it still sits out (0: in use).
    heads: Vec<Option<u64>>,
    aside: Vec<u32>,
    max_lag: u64,
    aside_polls: u32,
}

/// The tag of a head request to endpoint `index`: `head` for a single endpoint, as before,
/// else `head:<index>`.
const HEAD: &str = "head";

/// `url` in a configuration: one endpoint, or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Urls {
    One(String),
    Many(Vec<String>),
}

/// The JSON Schema of [`Urls`], for a manifest.
pub fn urls_schema() -> Value {
    let url = json!({"type": "string", "pattern": "^https?://"});
    json!({"oneOf": [url, {"type": "array", "items": url, "minItems": 1}],
           "description": "the node's JSON-RPC endpoint, or a list: the one with the highest head serves"})
}

impl Endpoints {
    /// From a configuration's `url`: every endpoint `http://` or `https://`, at least one.
    pub fn from_config(urls: Urls, max_lag: u64, aside_polls: u32) -> Result<Self, PluginError> {
        let urls = match urls {
            Urls::One(url) => vec![url],
            Urls::Many(urls) => urls,
        };
        if urls.is_empty() {
            return Err(PluginError::fatal("invalid config: `url` is an empty list"));
        }
        if let Some(bad) = urls
            .iter()
            .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return Err(PluginError::fatal(format!(
                "invalid config: `url` is `{bad}`; it must start with http:// or https://"
            )));
        }
        Ok(Endpoints::new(urls, max_lag, aside_polls))
    }

    /// `urls` must not be empty.
    pub fn new(urls: Vec<String>, max_lag: u64, aside_polls: u32) -> Self {
        let n = urls.len();
        Endpoints {
            urls,
            heads: vec![None; n],
            aside: vec![0; n],
            max_lag,
            aside_polls,
        }
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The head requests of one poll (`eth_blockNumber` to every endpoint, those aside
    /// included: that is how they come back).
    pub fn head_requests(&self) -> Vec<HttpRequest> {
        let body = call(1, "eth_blockNumber", serde_json::json!([]));
        self.urls
            .iter()
            .enumerate()
            .map(|(i, url)| HttpRequest::post_json(url, &body, self.head_tag(i)))
            .collect()
    }

    fn head_tag(&self, index: usize) -> String {
        if self.urls.len() == 1 {
            HEAD.to_owned()
        } else {
            format!("{HEAD}:{index}")
        }
    }

    /// Which endpoint a head tag names, if it is one.
    pub fn head_index(&self, tag: &str) -> Option<usize> {
        if tag == HEAD && self.urls.len() == 1 {
            return Some(0);
        }
        let index: usize = tag.strip_prefix(HEAD)?.strip_prefix(':')?.parse().ok()?;
        (index < self.urls.len()).then_some(index)
    }

    /// Endpoint `index` answered a head poll with `head`, or failed to. Returns the highest
    /// head of the endpoints in use, and what changed (an endpoint set aside or back), for the
    /// source's log and status.
    pub fn on_head(&mut self, index: usize, head: Result<u64, &PluginError>) -> Vec<String> {
        let mut said = Vec::new();
        let was_aside = self.aside[index] > 0;
        self.aside[index] = self.aside[index].saturating_sub(1);
        match head {
            Ok(head) => {
                self.heads[index] = Some(head);
                if was_aside && self.aside[index] == 0 {
                    said.push(format!(
                        "endpoint {} is back in use (head {head})",
                        self.urls[index]
                    ));
                }
            }
            Err(error) => {
                if self.urls.len() > 1 {
                    self.aside[index] = self.aside_polls;
                    said.push(format!(
                        "endpoint {} set aside for {} polls: {error}",
                        self.urls[index], self.aside_polls
                    ));
                }
            }
        }
        if let Some(best) = self.highest() {
            for i in 0..self.urls.len() {
                if let Some(h) = self.heads[i]
                    && self.aside[i] == 0
                    && h.saturating_add(self.max_lag) < best
                {
                    self.aside[i] = self.aside_polls;
                    said.push(format!(
                        "endpoint {} set aside for {} polls: its head {h} is {} blocks behind {best}",
                        self.urls[i],
                        self.aside_polls,
                        best - h
                    ));
                }
            }
        }
        said
    }

    /// A head poll's answer from endpoint `index`. `Some(head)` when the connector should act
    /// on it: it comes from the endpoint that serves, and `head` is the highest in use.
    /// `None` when it only told about its endpoint. A failure is an error with one endpoint;
    /// with several, the endpoint is set aside (and the node's log says so) and the source
    /// goes on with the others.
    pub fn answer_head(
        &mut self,
        index: usize,
        response: &HttpResponse,
    ) -> Result<Option<u64>, PluginError> {
        let head = crate::json::response(response)
            .and_then(|body| quantity(result(&body, "eth_blockNumber")?, "the head block number"));
        if self.urls.len() == 1 {
            return head.map(Some);
        }
        for message in self.on_head(index, head.as_ref().copied()) {
            crate::host::log(crate::host::LogLevel::Warn, &message);
        }
        Ok((head.is_ok() && index == self.best_index())
            .then(|| self.highest())
            .flatten())
    }

    /// The highest head of the endpoints in use (of any, if none is).
    pub fn highest(&self) -> Option<u64> {
        let in_use = (0..self.urls.len())
            .filter(|&i| self.aside[i] == 0)
            .filter_map(|i| self.heads[i])
            .max();
        in_use.or_else(|| self.heads.iter().flatten().copied().max())
    }

    /// The endpoint to send the other calls to: the one in use with the highest head.
    pub fn best(&self) -> &str {
        &self.urls[self.best_index()]
    }

    /// The index of [`Endpoints::best`] (the first of equals).
    pub fn best_index(&self) -> usize {
        let n = self.urls.len();
        let highest = |candidates: &mut dyn Iterator<Item = usize>| {
            candidates.fold(None, |best: Option<usize>, i| match best {
                Some(b) if self.heads[b] >= self.heads[i] => Some(b),
                _ => Some(i),
            })
        };
        highest(&mut (0..n).filter(|&i| self.aside[i] == 0))
            .or_else(|| highest(&mut (0..n)))
            .unwrap_or(0)
    }

    /// Every endpoint with its last head and whether it is in use, for a status line.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = (0..self.urls.len())
            .map(|i| {
                let head = self.heads[i].map_or("?".to_owned(), |h| h.to_string());
                let state = if self.aside[i] > 0 { "aside" } else { "in use" };
                format!("{} (head {head}, {state})", self.urls[i])
            })
            .collect();
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_errors_and_quantities() {
        let ok = json!({"jsonrpc": "2.0", "id": 1, "result": "0x10"});
        assert_eq!(quantity(result(&ok, "x").unwrap(), "head").unwrap(), 16);
        let refused = json!({"id": 1, "error": {"code": -32005, "message": "query returned more than 10000 results"}});
        assert_eq!(
            error(&refused),
            Some((-32005, "query returned more than 10000 results"))
        );
        assert!(
            matches!(result(&refused, "eth_getLogs"), Err(PluginError::Retryable(m)) if m.contains("-32005"))
        );
        assert!(matches!(
            result(&json!({"id": 1}), "x"),
            Err(PluginError::BadInput(_))
        ));
        assert!(quantity(&json!(16), "head").is_err());
        assert_eq!(error(&json!({"error": null, "result": 1})), None);
        assert_eq!(call(7, "eth_blockNumber", json!([]))["id"], 7);
    }

    #[test]
    fn the_highest_head_serves_and_a_lagging_or_failing_endpoint_sits_out() {
        let urls = ["http://a", "http://b", "http://c"]
            .map(str::to_owned)
            .to_vec();
        let mut e = Endpoints::new(urls, 5, 2);
        let tags: Vec<String> = e.head_requests().into_iter().map(|r| r.tag).collect();
        assert_eq!(tags, ["head:0", "head:1", "head:2"]);
        assert_eq!(e.head_index("head:2"), Some(2));
        assert_eq!((e.head_index("head:3"), e.head_index("head")), (None, None));
        assert!(e.on_head(0, Ok(100)).is_empty());
        assert!(e.on_head(1, Ok(103)).is_empty());
        assert_eq!(e.best(), "http://b");
        // c lags 10 blocks: set aside, and said so.
        let said = e.on_head(2, Ok(93));
        assert!(
            said[0].contains("http://c") && said[0].contains("10 blocks behind"),
            "{said:?}"
        );
        // b fails: a takes over, b sits out two polls.
        let error = PluginError::retryable("HTTP 503");
        let said = e.on_head(1, Err(&error));
        assert!(
            said[0].contains("set aside for 2 polls") && said[0].contains("HTTP 503"),
            "{said:?}"
        );
        assert_eq!((e.best(), e.highest()), ("http://a", Some(100)));
        assert!(
            e.describe().contains("http://b (head 103, aside)"),
            "{}",
            e.describe()
        );
        e.on_head(1, Ok(104));
        assert_eq!(e.best(), "http://a", "still sitting out");
        let said = e.on_head(1, Ok(105));
        assert!(said[0].contains("back in use"), "{said:?}");
        assert_eq!(e.best(), "http://b");
        // One endpoint is never set aside, and keeps the plain tag.
        let mut one = Endpoints::new(vec!["http://a".into()], 5, 2);
        assert_eq!(one.head_requests()[0].tag, "head");
        assert_eq!(one.head_index("head"), Some(0));
        assert!(one.on_head(0, Err(&error)).is_empty());
        assert_eq!(one.best(), "http://a");
    }
}
