//! Per-symbol trade-id bookkeeping: the contiguous watermark behind the cursor, the live
//! trades emitted past a gap, and the pages of Binance's old-trade lookup
//! (`GET /api/v3/historicalTrades`) that fill the gap.
//!
//! - `done`: every trade id up to it has been emitted (the cursor). Without a cursor, the
//!   first live trade sets it: nothing before the source existed is fetched.
//! - `runs`: live trades emitted past a gap, as `(first, last)` id ranges, ascending, with a
//!   gap before each. Normally empty (the watermark follows the live trades one by one) or
//!   one range (the live trades since a restart or a reconnect).
//! - `asked`: the page in flight, at most one per symbol; it always starts at `done + 1`
//!   and stops before the first run. When its answer fills the gap the watermark jumps to
//!   the end of that run, which is the highest live id seen.

use std::borrow::Cow;

use anode_plugin_sdk::prelude::*;

/// Most trades Binance returns per `historicalTrades` page.
pub(crate) const PAGE_LIMIT: u64 = 1000;
/// A page unanswered for this long (the host dropped the request, or ran out of follow-up
/// rounds) is asked for again by the next live trade of the symbol.
pub(crate) const ANSWER_TIMEOUT_US: i64 = 30_000_000;
/// After a page failed for a passing reason (`429`, `5xx`, an unreadable body) the next live
/// trade asks again after this long, doubled per failure up to [`RETRY_MAX_US`].
const RETRY_MIN_US: i64 = 1_000_000;
const RETRY_MAX_US: i64 = 60_000_000;
/// Request tags: `backfill:<SYMBOL>:<first id>-<last id>`.
const TAG_PREFIX: &str = "backfill:";

/// The trade ids one request asks for, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Page {
    pub(crate) from: u64,
    pub(crate) to: u64,
}

impl Page {
    fn limit(self) -> u64 {
        self.to - self.from + 1
    }

    /// The request for this page of `symbol` (uppercase raw) from the REST API at `rest_url`.
    pub(crate) fn request(self, rest_url: &str, symbol: &str) -> HttpRequest {
        HttpRequest::get(
            format!(
                "{rest_url}/api/v3/historicalTrades?symbol={symbol}&fromId={}&limit={}",
                self.from,
                self.limit()
            ),
            format!("{TAG_PREFIX}{symbol}:{}-{}", self.from, self.to),
        )
    }

    /// The symbol and page a request tag names; `None` for any other tag.
    pub(crate) fn from_tag(tag: &str) -> Option<(&str, Page)> {
        let (symbol, ids) = tag.strip_prefix(TAG_PREFIX)?.rsplit_once(':')?;
        let (from, to) = ids.split_once('-')?;
        let page = Page {
            from: from.parse().ok()?,
            to: to.parse().ok()?,
        };
        (!symbol.is_empty() && page.from <= page.to).then_some((symbol, page))
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

/// What is known of one symbol's trade ids.
#[derive(Debug, Default)]
pub(crate) struct Track {
    done: Option<u64>,
    runs: Vec<(u64, u64)>,
    /// The page in flight and when it was asked for.
    asked: Option<(Page, i64)>,
    /// No page is asked for before this time (after a passing failure).
    retry_at: i64,
    failures: u32,
}

impl Track {
    /// A symbol the cursor says is done up to `done`.
    pub(crate) fn resume(done: u64) -> Self {
        Track {
            done: Some(done),
            ..Track::default()
        }
    }

    /// The watermark: every trade id up to it was emitted.
    pub(crate) fn done(&self) -> Option<u64> {
        self.done
    }

    /// The ids missing before the first live run, if there is a gap.
    pub(crate) fn gap(&self) -> Option<(u64, u64)> {
        let (first, _) = *self.runs.first()?;
        Some((self.done? + 1, first - 1))
    }

    /// Live trade `id` was emitted. Returns whether the watermark moved.
    pub(crate) fn live(&mut self, id: u64) -> bool {
        let Some(done) = self.done else {
            self.done = Some(id);
            return true;
        };
        if id <= done {
            return false;
        }
        // The usual cases first: the next trade, or the next one past a gap.
        match self.runs.last_mut() {
            None if id == done + 1 => {
                self.done = Some(id);
                true
            }
            Some(last) if id == last.1 + 1 => {
                last.1 = id;
                false
            }
            _ => self.insert(done, id),
        }
    }

    /// Add `id` (above `done`) to the runs, merging neighbours, then let the watermark catch
    /// up. Returns whether it moved.
    fn insert(&mut self, done: u64, id: u64) -> bool {
        let at = self.runs.partition_point(|&(_, last)| last < id);
        if self.runs.get(at).is_some_and(|&(first, _)| first <= id) {
            return false;
        }
        let joins_previous = at > 0 && self.runs[at - 1].1 + 1 == id;
        let joins_next = self.runs.get(at).is_some_and(|&(first, _)| first == id + 1);
        match (joins_previous, joins_next) {
            (true, true) => {
                self.runs[at - 1].1 = self.runs[at].1;
                self.runs.remove(at);
            }
            (true, false) => self.runs[at - 1].1 = id,
            (false, true) => self.runs[at].0 = id,
            (false, false) => self.runs.insert(at, (id, id)),
        }
        self.advance(done)
    }

    /// Trades up to `last` were emitted (or given up): move the watermark there and on
    /// through the live runs it now meets. Returns whether it moved.
    pub(crate) fn fill_to(&mut self, last: u64) -> bool {
        match self.done {
            Some(done) if last > done => {
                self.done = Some(last);
                self.advance(done)
            }
            _ => false,
        }
    }

    /// Merge the runs the watermark reaches; `before` is the watermark before the change.
    fn advance(&mut self, before: u64) -> bool {
        let mut done = self.done.unwrap_or(before);
        let merged = self
            .runs
            .iter()
            .take_while(|&&(first, _)| first <= done.saturating_add(1))
            .count();
        for &(_, last) in &self.runs[..merged] {
            done = done.max(last);
        }
        self.runs.drain(..merged);
        self.done = Some(done);
        done != before
    }

    /// Without backfill: forget the gaps, the watermark jumps to the newest live trade.
    /// Returns the ids skipped, `(first, last)`, if there were any.
    pub(crate) fn skip_gaps(&mut self) -> Option<(u64, u64)> {
        let gap = self.gap()?;
        let (_, last) = *self.runs.last()?;
        self.runs.clear();
        self.done = Some(last);
        Some(gap)
    }

    /// The page to ask for at `now`, if any: the start of the first gap, when no page is in
    /// flight (or the one in flight is overdue) and no retry wait is running.
    pub(crate) fn next_page(&mut self, now: i64) -> Option<Page> {
        let (from, gap_last) = self.gap()?;
        if let Some((_, asked_at)) = self.asked
            && now.saturating_sub(asked_at) < ANSWER_TIMEOUT_US
        {
            return None;
        }
        if now < self.retry_at {
            return None;
        }
        let page = Page {
            from,
            to: gap_last.min(from + (PAGE_LIMIT - 1)),
        };
        self.asked = Some((page, now));
        Some(page)
    }

    /// Whether `page` is the page in flight; if so it is no longer in flight. An answer to
    /// anything else (a request asked again after a timeout, answered twice) is stale.
    pub(crate) fn answered(&mut self, page: Page) -> bool {
        if self.asked.is_some_and(|(asked, _)| asked == page) {
            self.asked = None;
            true
        } else {
            false
        }
    }

    /// The page answered was usable: the failure count starts again.
    pub(crate) fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = 0;
    }

    /// The page answered failed for a passing reason: ask again later. Returns the wait, µs.
    pub(crate) fn failed(&mut self, now: i64) -> i64 {
        let wait = RETRY_MIN_US
            .saturating_mul(1 << self.failures.min(6))
            .min(RETRY_MAX_US);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = now.saturating_add(wait);
        wait
    }
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
        assert_eq!(t.runs, [(20, 22), (30, 30)]);
        // Filling part of the gap moves the watermark that far only.
        assert!(t.fill_to(15));
        assert_eq!((t.done(), t.gap()), (Some(15), Some((16, 19))));
        // Meeting the first run jumps over it, to the next gap.
        assert!(t.fill_to(19));
        assert_eq!((t.done(), t.gap()), (Some(22), Some((23, 29))));
        assert!(t.fill_to(29));
        assert_eq!((t.done(), t.gap()), (Some(30), None));
        assert!(!t.fill_to(12));
    }

    #[test]
    fn out_of_order_live_trades_merge_runs() {
        let mut t = track(10, &[13, 15]);
        assert_eq!(t.runs, [(13, 13), (15, 15)]);
        assert!(!t.live(14));
        assert_eq!(t.runs, [(13, 15)]);
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
        let first = t.next_page(0).unwrap();
        assert_eq!(first, Page { from: 1, to: 1000 });
        assert_eq!(t.next_page(1), None);
        // Lost: asked again after the timeout, with the same tag.
        assert_eq!(t.next_page(ANSWER_TIMEOUT_US), Some(first));
        assert!(t.answered(first));
        assert!(!t.answered(first));
        t.fill_to(1000);
        let second = t.next_page(ANSWER_TIMEOUT_US).unwrap();
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
        assert_eq!(t.next_page(100 + RETRY_MIN_US - 1), None);
        assert_eq!(t.next_page(100 + RETRY_MIN_US), Some(second));
        assert!(t.answered(second));
        assert_eq!(t.failed(0), 2 * RETRY_MIN_US);
        for _ in 0..20 {
            t.failed(0);
        }
        assert_eq!(t.failed(0), RETRY_MAX_US);
        t.succeeded();
        t.fill_to(2000);
        assert_eq!(
            t.next_page(0),
            Some(Page {
                from: 2001,
                to: 2500
            })
        );
    }

    #[test]
    fn tags_round_trip() {
        let page = Page { from: 101, to: 149 };
        let request = page.request("http://h:1/binance", "BTCUSDT");
        assert_eq!(
            request.url,
            "http://h:1/binance/api/v3/historicalTrades?symbol=BTCUSDT&fromId=101&limit=49"
        );
        assert_eq!(request.tag, "backfill:BTCUSDT:101-149");
        assert_eq!(Page::from_tag(&request.tag), Some(("BTCUSDT", page)));
        for bad in [
            "head",
            "backfill:BTCUSDT",
            "backfill::1-2",
            "backfill:X:2-1",
            "backfill:X:a-2",
        ] {
            assert_eq!(Page::from_tag(bad), None, "{bad}");
        }
    }
}
