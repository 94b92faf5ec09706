//! `anode status` (the cluster's members and sources as terminal tables) and `anode tail`
//! (records from a node's `/ws`, one line each, until Ctrl-C).

use std::io::Write;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::{call, format_rows};

/// What `anode tail` reads.
#[derive(Debug, clap::Args)]
pub(crate) struct TailArgs {
    /// Only these sources (comma-separated ids).
    #[arg(long, value_delimiter = ',')]
    source: Vec<String>,
    /// Only these streams (comma-separated: trades, ticker, blocks, …).
    #[arg(long, value_delimiter = ',')]
    stream: Vec<String>,
    /// Only these keys (comma-separated, such as BTC.USDT).
    #[arg(long, value_delimiter = ',')]
    key: Vec<String>,
    /// Print each record's JSON as the node sends it.
    #[arg(long)]
    json: bool,
    /// Stop after this many records.
    #[arg(long)]
    limit: Option<u64>,
    /// Replay stored records first, then follow: `earliest`, `now`, a UTC time
    /// (2026-12-03T10:00:00Z), a time ago (-5m), or the position printed when a tail ended.
    #[arg(long)]
    since: Option<String>,
}

/// `anode status`: members from `/api/v1/cluster`, sources from `/api/v1/sources`.
pub(crate) async fn status(url: &str, token: Option<&str>) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let get = |path: &str| {
        let request = client.get(format!("{url}{path}"));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    };
    let cluster = call(get("/api/v1/cluster"), url).await?;
    let sources = call(get("/api/v1/sources"), url).await?;
    let mut out = String::new();
    write_status(&mut out, &cluster, &sources);
    print!("{out}");
    Ok(())
}

/// The text of `anode status` (separate from the I/O so it is tested on plain JSON).
fn write_status(out: &mut String, cluster: &Value, sources: &Value) {
    let text = |v: &Value, k: &str| match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    };
    let members = cluster["members"].as_array().cloned().unwrap_or_default();
    let alive = members.iter().filter(|m| m["state"] == "alive").count();
    out.push_str(&format!(
        "cluster {}: {alive} of {} members alive; this is {}\n\n",
        text(cluster, "cluster_id"),
        members.len(),
        text(cluster, "self"),
    ));
    let member_rows: Vec<[String; 7]> = members
        .iter()
        .map(|m| {
            let here = m["self"] == true || m["id"] == cluster["self"];
            [
                format!("{}{}", text(m, "id"), if here { " *" } else { "" }),
                text(m, "state"),
                text(m, "api"),
                text(m, "gossip"),
                text(m, "version"),
                if m["state"] == "down" {
                    "-".into()
                } else {
                    m["uptime_s"].as_u64().map(duration).unwrap_or("-".into())
                },
                text(m, "sources_owned"),
            ]
        })
        .collect();
    let header = [
        "NODE", "STATE", "API", "GOSSIP", "VERSION", "UPTIME", "SOURCES",
    ]
    .map(String::from);
    out.push_str(&format_rows(&header, &member_rows));

    let sources = sources.as_array().cloned().unwrap_or_default();
    let live = sources.iter().filter(|s| s["state"] == "live").count();
    let rate: f64 = sources
        .iter()
        .filter_map(|s| s["events_per_sec"].as_f64())
        .sum();
    out.push_str(&format!(
        "\n{} sources, {live} live, {rate:.1} events/s\n\n",
        sources.len()
    ));
    if sources.is_empty() {
        return;
    }
    let source_rows: Vec<[String; 9]> = sources
        .iter()
        .map(|s| {
            let state = if s["paused"] == true {
                "paused".into()
            } else {
                text(s, "state")
            };
            [
                text(s, "id"),
                text(s, "plugin"),
                text(s, "owner"),
                state,
                format!("{:.1}", s["events_per_sec"].as_f64().unwrap_or(0.0)),
                text(s, "errors"),
                text(s, "reconnects"),
                s["last_event_age_ms"]
                    .as_i64()
                    .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
                    .unwrap_or("-".into()),
                s["last_error"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| text(s, "target")),
            ]
        })
        .collect();
    let header = [
        "SOURCE",
        "PLUGIN",
        "OWNER",
        "STATE",
        "EV/S",
        "ERRORS",
        "RECONN",
        "LAST EVENT",
        "TARGET / LAST ERROR",
    ]
    .map(String::from);
    out.push_str(&format_rows(&header, &source_rows));
}

/// `90061` → `1d01h`, `3725` → `1h02m`, `75` → `1m15s`.
fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86400, s / 3600 % 24),
    }
}

/// The `/ws` URL of the node at `api` with the filter in the query.
fn ws_url(api: &str, args: &TailArgs) -> anyhow::Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(api)
        .and_then(|u| u.join("/ws"))
        .with_context(|| format!("`{api}` is not a node URL such as http://127.0.0.1:7400"))?;
    let scheme = match url.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => bail!("`{api}`: use an http:// or https:// URL, not {other}://"),
    };
    url.set_scheme(scheme)
        .map_err(|()| anyhow::anyhow!("cannot make a WebSocket URL of `{api}`"))?;
    for (name, values) in [
        ("source", &args.source),
        ("stream", &args.stream),
        ("key", &args.key),
    ] {
        if !values.is_empty() {
            url.query_pairs_mut().append_pair(name, &values.join(","));
        }
    }
    if let Some(since) = &args.since {
        url.query_pairs_mut().append_pair("since", since);
    }
    Ok(url)
}

/// `anode tail`: print records until Ctrl-C, the limit, or the node closing the stream.
pub(crate) async fn tail(api: &str, token: Option<&str>, args: TailArgs) -> anyhow::Result<()> {
    let url = ws_url(api, &args)?;
    let mut with_token = url.clone();
    if let Some(token) = token {
        with_token.query_pairs_mut().append_pair("token", token);
    }
    let (mut socket, _) = match tokio_tungstenite::connect_async(with_token.as_str()).await {
        Ok(connected) => connected,
        // The node refused the request (a bad filter or start): say what it said.
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| body.to_string());
            bail!(
                "the node refused the tail ({}): {message}",
                response.status()
            );
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot reach the node at {url} (is `anode up` running? set --url or ANODE_URL)"
            )));
        }
    };
    let mut stdout = std::io::stdout().lock();
    let mut printed = 0u64;
    // The position of the last record printed, when the node sends positions (`--since`).
    let mut position: Option<String> = None;
    let resume_hint = |position: &Option<String>| {
        if let Some(p) = position {
            eprintln!("to go on from here: anode tail --since {p}");
        }
    };
    loop {
        if args.limit.is_some_and(|limit| printed >= limit) {
            let _ = socket.close(None).await;
            resume_hint(&position);
            return Ok(());
        }
        let message = tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                let _ = socket.close(None).await;
                resume_hint(&position);
                return Ok(());
            }
            message = socket.next() => message,
        };
        if matches!(message, Some(Ok(Message::Close(_)) | Err(_)) | None) {
            resume_hint(&position);
        }
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                let reason = frame
                    .map(|f| format!("{} ({})", f.reason, u16::from(f.code)))
                    .unwrap_or_else(|| "no reason given".into());
                bail!("the node closed the stream: {reason}");
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("the record stream broke: {e}"),
            None => bail!("the node closed the stream"),
        };
        let Ok(record) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        match record["type"].as_str() {
            Some("subscribed") => {
                eprintln!(
                    "tailing records via {} (filter {}); Ctrl-C stops",
                    record["node"].as_str().unwrap_or("?"),
                    record["filter"]
                );
                continue;
            }
            Some("lag") => {
                eprintln!(
                    "warning: the node dropped {} records for this terminal (it reads too slowly)",
                    record["dropped"]
                );
                continue;
            }
            Some(_) => {
                eprintln!("{text}");
                continue;
            }
            None => {}
        }
        let line = if args.json {
            text.to_string()
        } else {
            record_line(&record)
        };
        // A closed pipe (`| head`) ends the command quietly.
        if writeln!(stdout, "{line}").is_err() {
            resume_hint(&position);
            return Ok(());
        }
        if let Some(p) = record["position"].as_str() {
            position = Some(p.to_owned());
        }
        printed += 1;
    }
}

/// `12:00:01.234Z  binance-btc  trades  BTC.USDT  {"price":…}`
fn record_line(record: &Value) -> String {
    let us = record["ingest_time_us"].as_i64().unwrap_or(0);
    let ms_of_day = (us / 1000).rem_euclid(86_400_000);
    let time = format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    );
    let field = |k: &str| record[k].as_str().unwrap_or("-").to_owned();
    format!(
        "{time}  {}  {}  {}  {}",
        field("source"),
        field("stream"),
        field("key"),
        record["payload"]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_tables_mark_this_node_and_down_members() {
        let cluster = json!({"self": "node-a", "cluster_id": "anode", "members": [
            {"id": "node-a", "state": "alive", "api": "http://127.0.0.1:7400", "gossip": "127.0.0.1:7401",
             "version": "0.1.0", "uptime_s": 3725, "sources_owned": 2, "self": true},
            {"id": "node-b", "state": "down", "api": "http://127.0.0.1:7410", "gossip": "127.0.0.1:7411",
             "version": "0.1.0", "uptime_s": 12, "sources_owned": 0, "self": false}]});
        let sources = json!([
            {"id": "bn-1", "plugin": "binance-trades", "owner": "node-a", "state": "live", "events_per_sec": 5.0,
             "errors": 0, "reconnects": 1, "last_event_age_ms": 200, "last_error": null, "target": "ws://x", "paused": false},
            {"id": "kr-2", "plugin": "kraken-ticker", "owner": null, "state": "failed", "events_per_sec": 0.0,
             "errors": 3, "reconnects": 0, "last_event_age_ms": null, "last_error": "refused", "target": "ws://y", "paused": true}]);
        let mut out = String::new();
        write_status(&mut out, &cluster, &sources);
        assert!(
            out.contains("cluster anode: 1 of 2 members alive; this is node-a"),
            "{out}"
        );
        assert!(out.contains("node-a *"), "{out}");
        assert!(out.contains("1h02m"), "{out}");
        let down = out.lines().find(|l| l.starts_with("node-b")).unwrap();
        assert!(down.contains("down") && !down.contains("12s"), "{down}");
        assert!(out.contains("2 sources, 1 live, 5.0 events/s"), "{out}");
        let kr = out.lines().find(|l| l.starts_with("kr-2")).unwrap();
        assert!(kr.contains("paused") && kr.contains("refused"), "{kr}");
    }

    #[test]
    fn tail_builds_the_ws_url_and_one_line_records() {
        let args = TailArgs {
            source: vec!["a".into(), "b".into()],
            stream: vec!["trades".into()],
            key: vec!["K1/USD".into()],
            json: false,
            limit: None,
            since: Some("p12.3".into()),
        };
        let url = ws_url("http://127.0.0.1:7400", &args).unwrap();
        assert_eq!(
            url.as_str(),
            "ws://127.0.0.1:7400/ws?source=a%2Cb&stream=trades&key=K1%2FUSD&since=p12.3"
        );
        assert!(ws_url("ftp://x", &args).is_err());
        let line = record_line(
            &json!({"source": "a", "stream": "trades", "key": "BTC.USDT",
            "ingest_time_us": 1_700_000_001_234_000i64, "payload": {"price": "1"}}),
        );
        assert_eq!(line, r#"22:13:21.234Z  a  trades  BTC.USDT  {"price":"1"}"#);
    }
}
