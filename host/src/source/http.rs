//! The HTTP polling driver: the plugin's requests every interval, then its follow-up requests
//! (pages, blocks) until it asks for none; `429`/`5xx` honour `Retry-After` or back off.

use std::time::Duration;

use futures_util::future::join_all;

use crate::backoff::Backoff;
use crate::clock::now_us;
use crate::plugin::{HttpPlan, HttpRequest, HttpResponse};
use crate::source::SourceState;
use crate::source::{Feed, Input, Problem};

/// Poll until a request fails for good (returns the problem) or the source is cancelled.
pub(crate) async fn run(
    ctx: &impl Feed,
    plan: &HttpPlan,
    backoff: &mut Backoff,
) -> Option<Problem> {
    let settings = &ctx.settings();
    if let Some(first) = plan.requests.first() {
        ctx.status().set_target(&first.url);
    }
    let period =
        Duration::from_millis(u64::from(plan.interval_ms).max(settings.http_min_interval_ms));
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ctx.status().set_state(SourceState::Live);
    loop {
        tokio::select! {
            () = ctx.cancel().cancelled() => return None,
            _ = interval.tick() => {}
        }
        // A poll of several requests (one per endpoint, say): one that fails is answered at
        // once, so the connector goes on with the others.
        let failed = if plan.requests.len() > 1 {
            Failed::AnswerAtOnce
        } else {
            Failed::Stop
        };
        if let Err(problem) = follow(ctx, plan.requests.clone(), failed).await {
            return problem;
        }
        backoff.reset();
    }
}

/// What to do with a request that failed after its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failed {
    /// Stop the round with the problem (a poll: the next poll asks again).
    Stop,
    /// Hand the connector a `503` response whose body is the error, so it decides (the
    /// follow-ups of a WebSocket source: the live stream goes on).
    Answer,
    /// The same without retrying first, for the first round only (a poll of several
    /// endpoints: one that cannot be reached must not hold up the others); later rounds stop.
    AnswerAtOnce,
}

/// Make `requests`, hand the responses to the connector, and make the follow-up requests it
/// asks for, until it asks for none or `sources.http_max_rounds` is reached. `Err(None)`
/// means cancelled.
pub(crate) async fn follow(
    ctx: &impl Feed,
    requests: Vec<HttpRequest>,
    failed: Failed,
) -> Result<(), Option<Problem>> {
    let settings = &ctx.settings();
    let mut pending = requests;
    let mut failed = failed;
    let mut rounds = 0usize;
    while !pending.is_empty() {
        rounds += 1;
        if rounds > settings.http_max_rounds {
            ctx.status().error(format!(
                "the plugin kept asking for follow-up requests; stopped after {} rounds \
                 (sources.http_max_rounds)",
                settings.http_max_rounds
            ));
            break;
        }
        if pending.len() > settings.http_max_requests_per_round {
            ctx.status().error(format!(
                "the plugin asked for {} requests at once; {} were dropped \
                 (sources.http_max_requests_per_round)",
                pending.len(),
                pending.len() - settings.http_max_requests_per_round
            ));
            pending.truncate(settings.http_max_requests_per_round);
        }
        let responses = fetch_all(ctx, pending, failed).await?;
        if failed == Failed::AnswerAtOnce {
            failed = Failed::Stop;
        }
        let outcome = ctx.ingest(Input::Responses(responses)).await;
        if let Some(problem) = outcome.problem {
            return Err(Some(problem));
        }
        pending = outcome.requests;
    }
    Ok(())
}

/// Make requests concurrently (a few at a time); `Err(None)` means cancelled.
async fn fetch_all(
    ctx: &impl Feed,
    requests: Vec<HttpRequest>,
    failed: Failed,
) -> Result<Vec<HttpResponse>, Option<Problem>> {
    let mut responses = Vec::with_capacity(requests.len());
    for chunk in requests.chunks(ctx.settings().http_concurrency.max(1)) {
        let results = tokio::select! {
            () = ctx.cancel().cancelled() => return Err(None),
            r = join_all(chunk.iter().map(|r| fetch(ctx, r, failed != Failed::AnswerAtOnce))) => r,
        };
        for (request, result) in chunk.iter().zip(results) {
            match (result, failed) {
                (Ok(response), _) => responses.push(response),
                (Err(problem @ Problem::Fatal(_)), _) | (Err(problem), Failed::Stop) => {
                    return Err(Some(problem));
                }
                (Err(Problem::Retry(message)), Failed::Answer | Failed::AnswerAtOnce) => responses
                    .push(HttpResponse {
                        tag: request.tag.clone(),
                        status: 503,
                        body: message.into_bytes(),
                        received_at: now_us(),
                    }),
            }
        }
    }
    Ok(responses)
}

/// Make one request, retrying a failure (`sources.http_attempts` in all) unless `retry` is
/// false.
async fn fetch(
    ctx: &impl Feed,
    request: &HttpRequest,
    retry: bool,
) -> Result<HttpResponse, Problem> {
    let settings = &ctx.settings();
    // A URL the egress policy refuses stops the source: an operator must allow it, or fix
    // the source (or the plugin that asked for it).
    ctx.egress()
        .check(&request.url)
        .await
        .map_err(|refused| Problem::Fatal(refused.to_string()))?;
    let method = reqwest::Method::from_bytes(request.method.as_bytes()).map_err(|_| {
        Problem::Fatal(format!(
            "the plugin asked for HTTP method `{}`",
            request.method
        ))
    })?;
    let mut backoff = Backoff::new(
        Duration::from_millis(settings.reconnect_min_ms),
        Duration::from_millis(settings.reconnect_max_ms),
    );
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let mut builder = ctx
            .source_http()
            .request(method.clone(), &request.url)
            .timeout(Duration::from_millis(settings.http_timeout_ms));
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        if let Some(body) = &request.body {
            builder = builder.body(body.clone());
        }
        let failure = match builder.send().await {
            Ok(response) => {
                let status = response.status();
                if status.as_u16() == 429 || status.is_server_error() {
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    (format!("{}: HTTP {status}", request.url), retry_after)
                } else {
                    match read_capped(response, settings.http_max_body_bytes).await {
                        Ok(body) => {
                            return Ok(HttpResponse {
                                tag: request.tag.clone(),
                                status: status.as_u16(),
                                body,
                                received_at: now_us(),
                            });
                        }
                        Err(BodyError::TooLarge) => {
                            return Err(Problem::Retry(format!(
                                "{}: the response is over sources.http_max_body_bytes ({} bytes); \
                                 it was not read further",
                                request.url, settings.http_max_body_bytes
                            )));
                        }
                        Err(BodyError::Failed(e)) => (
                            format!("{}: reading the body failed: {e}", request.url),
                            None,
                        ),
                    }
                }
            }
            Err(e) => (format!("{}: {e}", request.url), None),
        };
        let (message, retry_after) = failure;
        if !retry {
            return Err(Problem::Retry(message));
        }
        let wait = retry_after
            .map(|d| d.min(Duration::from_millis(settings.reconnect_max_ms)))
            .unwrap_or_else(|| backoff.fail());
        ctx.status()
            .error(format!("{message}; retrying in {} ms", wait.as_millis()));
        if attempt >= settings.http_attempts {
            return Err(Problem::Retry(message));
        }
        ctx.status().set_state(SourceState::BackingOff);
        tokio::select! {
            () = ctx.cancel().cancelled() => return Err(Problem::Retry("cancelled".into())),
            () = tokio::time::sleep(wait) => {}
        }
        ctx.status().set_state(SourceState::Live);
    }
}

/// Why a body was not read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// It is longer than allowed; reading stopped there.
    TooLarge,
    Failed(reqwest::Error),
}

/// Read a response body of at most `max` bytes, chunk by chunk, stopping as soon as it is
/// known to be longer (a declared length over `max` is refused before reading).
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Failed)? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serve one response of `total` bytes, chunked (no length given); returns how many bytes
    /// of it were written before the client went away.
    async fn endless(total: usize) -> (String, tokio::task::JoinHandle<usize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/big", listener.local_addr().unwrap());
        let served = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            socket.write_all(head.as_bytes()).await.unwrap();
            let chunk = vec![b'x'; 64 * 1024];
            let mut written = 0;
            while written < total {
                let frame = format!("{:x}\r\n", chunk.len());
                let sent = async {
                    socket.write_all(frame.as_bytes()).await?;
                    socket.write_all(&chunk).await?;
                    socket.write_all(b"\r\n").await
                };
                if sent.await.is_err() {
                    break;
                }
                written += chunk.len();
            }
            let _ = socket.write_all(b"0\r\n\r\n").await;
            written
        });
        (url, served)
    }

    #[tokio::test]
    async fn a_body_over_the_cap_stops_being_read_at_the_cap() {
        let (url, served) = endless(256 * 1024 * 1024).await;
        let response = reqwest::get(&url).await.unwrap();
        let read = read_capped(response, 1024 * 1024).await;
        assert!(matches!(read, Err(BodyError::TooLarge)), "{read:?}");
        let written = served.await.unwrap();
        assert!(
            written < 64 * 1024 * 1024,
            "the server wrote {written} bytes: the body was read far past the cap"
        );
        let (url, served) = endless(512 * 1024).await;
        let body = read_capped(reqwest::get(&url).await.unwrap(), 1024 * 1024)
            .await
            .unwrap();
        assert_eq!(body.len(), 512 * 1024);
        assert_eq!(served.await.unwrap(), 512 * 1024);
    }
}
