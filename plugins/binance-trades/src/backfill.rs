//! Binance's side of the trade-id bookkeeping: the pages of the old-trade lookup
//! (`GET /api/v3/historicalTrades`) that fill a gap, and what they return. The per-symbol
//! watermark, gaps, request in flight and backoff are [`anode_plugin_sdk::watermark`]'s
//! [`Track`]; pages are taken oldest first (`fromId=`), one at a time per symbol, always
//! starting at the watermark `+ 1` and stopping before the first live run.

use std::borrow::Cow;

use anode_plugin_sdk::prelude::*;
use anode_plugin_sdk::watermark::{Page, PageOrder, Track};

/// Most trades Binance returns per `historicalTrades` page.
pub(crate) const PAGE_LIMIT: u64 = 1000;
/// Request tags: `backfill:<SYMBOL>:<first id>-<last id>`.
const TAG_PREFIX: &str = "backfill:";

/// The request for `page` of `symbol` (uppercase raw) from the REST API at `rest_url`.
pub(crate) fn request(page: Page, rest_url: &str, symbol: &str) -> HttpRequest {
    HttpRequest::get(
        format!(
            "{rest_url}/api/v3/historicalTrades?symbol={symbol}&fromId={}&limit={}",
            page.from,
            page.len()
        ),
        page.tag(TAG_PREFIX, symbol),
    )
}

/// The symbol and page a request tag names; `None` for any other tag.
pub(crate) fn from_tag(tag: &str) -> Option<(&str, Page)> {
    Page::from_tag(TAG_PREFIX, tag)
}

/// The page of `track`'s first gap to ask for at `now`, if any (see [`Track::next_page`]).
pub(crate) fn next_page(track: &mut Track, now: i64) -> Option<Page> {
    track.next_page(now, PAGE_LIMIT, PageOrder::OldestFirst)
}

/// Trades up to `last` were emitted (or given up): move the watermark there and on through
/// the live runs it now meets. Returns whether it moved; never sets a missing watermark.
pub(crate) fn fill_to(track: &mut Track, last: u64) -> bool {
    match track.done() {
        Some(done) if last > done => track.emitted(done + 1, last),
        _ => false,
    }
}

/// A trade as `GET /api/v3/historicalTrades` returns it (`quoteQty` and `isBestMatch` are
/// not needed: the live stream does not carry them either).
#[derive(Deserialize)]
pub(crate) struct HistoricalTrade<'a> {
    pub(crate) id: u64,
    #[serde(borrow)]
    pub(crate) price: Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) qty: Cow<'a, str>,
    /// Milliseconds since the epoch.
    pub(crate) time: i64,
    #[serde(rename = "isBuyerMaker")]
    pub(crate) is_buyer_maker: bool,
}

/// Ids `first..=last` of `symbol` that the venue could not serve, as the error the host
/// counts.
pub(crate) fn unavailable(symbol: &str, first: u64, last: u64, why: &str) -> PluginError {
    PluginError::bad_input(format!(
        "{symbol}: trades {first} to {last} could not be backfilled ({why}); skipped"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use anode_plugin_sdk::watermark::{ANSWER_TIMEOUT_US, RETRY_MAX_US, RETRY_MIN_US};

    fn track(done: u64, live: &[u64]) -> Track {
        let mut t = Track::resume(done);
        for &id in live {
            t.live(id);
        }
        t
    }

    #[test]
    fn the_watermark_follows_contiguous_live_trades() {
        let mut t = Track::default();
        assert!(t.live(7));
        assert!(t.live(8));
        assert!(!t.live(8));
        assert!(!t.live(3));
        assert_eq!((t.done(), t.gap()), (Some(8), None));
    }

    #[test]
    fn live_trades_past_a_gap_wait_for_it() {
        let mut t = track(10, &[20, 21, 22]);
        assert_eq!(t.done(), Some(10));
        assert_eq!(t.gap(), Some((11, 19)));
        // A second gap (another reconnect) keeps its own run.
        assert!(!t.live(30));
        assert_eq!(t.runs(), [(20, 22), (30, 30)]);
        // Filling part of the gap moves the watermark that far only.
        assert!(fill_to(&mut t, 15));
        assert_eq!((t.done(), t.gap()), (Some(15), Some((16, 19))));
        // Meeting the first run jumps over it, to the next gap.
        assert!(fill_to(&mut t, 19));
        assert_eq!((t.done(), t.gap()), (Some(22), Some((23, 29))));
        assert!(fill_to(&mut t, 29));
        assert_eq!((t.done(), t.gap()), (Some(30), None));
        assert!(!fill_to(&mut t, 12));
    }

    #[test]
    fn out_of_order_live_trades_merge_runs() {
        let mut t = track(10, &[13, 15]);
        assert_eq!(t.runs(), [(13, 13), (15, 15)]);
        assert!(!t.live(14));
        assert_eq!(t.runs(), [(13, 15)]);
        assert!(!t.live(14));
        assert!(!t.live(12));
        assert_eq!(t.gap(), Some((11, 11)));
        assert!(t.live(11));
        assert_eq!((t.done(), t.gap()), (Some(15), None));
    }

    #[test]
    fn skipping_gaps_jumps_to_the_newest_trade() {
        let mut t = track(10, &[20, 21]);
        assert_eq!(t.skip_gaps(), Some((11, 19)));
        assert_eq!((t.done(), t.gap()), (Some(21), None));
        assert_eq!(t.skip_gaps(), None);
    }

    #[test]
    fn one_page_at_a_time_asked_again_when_overdue() {
        let mut t = track(0, &[2501]);
        let first = next_page(&mut t, 0).unwrap();
        assert_eq!(first, Page { from: 1, to: 1000 });
        assert_eq!(next_page(&mut t, 1), None);
        // Lost: asked again after the timeout, with the same tag.
        assert_eq!(next_page(&mut t, ANSWER_TIMEOUT_US), Some(first));
        assert!(t.answered(first));
        assert!(!t.answered(first));
        fill_to(&mut t, 1000);
        let second = next_page(&mut t, ANSWER_TIMEOUT_US).unwrap();
        assert_eq!(
            second,
            Page {
                from: 1001,
                to: 2000
            }
        );
        assert!(t.answered(second));
        // A passing failure waits before asking again, longer each time.
        assert_eq!(t.failed(100), RETRY_MIN_US);
        assert_eq!(next_page(&mut t, 100 + RETRY_MIN_US - 1), None);
        assert_eq!(next_page(&mut t, 100 + RETRY_MIN_US), Some(second));
        assert!(t.answered(second));
        assert_eq!(t.failed(0), 2 * RETRY_MIN_US);
        for _ in 0..20 {
            t.failed(0);
        }
        assert_eq!(t.failed(0), RETRY_MAX_US);
        t.succeeded();
        fill_to(&mut t, 2000);
        assert_eq!(
            next_page(&mut t, 0),
            Some(Page {
                from: 2001,
                to: 2500
            })
        );
    }

    #[test]
    fn tags_round_trip() {
        let page = Page { from: 101, to: 149 };
        let request = request(page, "http://h:1/binance", "BTCUSDT");
        assert_eq!(
            request.url,
            "http://h:1/binance/api/v3/historicalTrades?symbol=BTCUSDT&fromId=101&limit=49"
        );
        assert_eq!(request.tag, "backfill:BTCUSDT:101-149");
        assert_eq!(from_tag(&request.tag), Some(("BTCUSDT", page)));
        for bad in [
            "head",
            "backfill:BTCUSDT",
            "backfill::1-2",
            "backfill:X:2-1",
            "backfill:X:a-2",
        ] {
            assert_eq!(from_tag(bad), None, "{bad}");
        }
    }
}
