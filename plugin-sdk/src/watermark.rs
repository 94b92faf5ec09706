//! Per-key contiguous id watermarks, for connectors whose upstream numbers records
//! consecutively per key (trade ids per symbol) and that resume and backfill from a cursor.
//!
//! A [`Track`] holds one key's bookkeeping:
//!
//! - the watermark: every id up to it was emitted (or given up). Without a cursor the first
//!   live id sets it, so nothing from before the source existed is fetched;
//! - the ids emitted past a gap, as ascending `(first, last)` runs with a gap before each;
//! - the one backfill request in flight, and the backoff after a passing failure.
//!
//! The cursor is a JSON object of watermarks by key (`{"BTC-USD":123}`): see [`parse_cursor`]
//! and [`render_cursor`].

use std::collections::HashMap;

use serde_json::Value;

use crate::host::{self, LogLevel};
use crate::types::PluginError;

/// Where a connector's backfill pages come from, or `None` when backfill is off.
///
/// `rest_url` must be `http(s)://`. Without it the REST base is derived from the stream URL:
/// `venue_rest` when `base_url` is one of the venue's own stream URLs (`venue_streams`), else
/// the same host and path over HTTP (`ws://h:1/binance` → `http://h:1/binance`).
pub fn rest_base(
    rest_url: Option<&str>,
    base_url: &str,
    backfill: bool,
    venue_streams: &[&str],
    venue_rest: &str,
) -> Result<Option<String>, PluginError> {
    let url = match rest_url {
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            url.trim_end_matches('/').to_owned()
        }
        Some(url) => {
            return Err(PluginError::fatal(format!(
                "invalid config: `rest_url` is `{url}`; it must start with http:// or https://"
            )));
        }
        None if !backfill => return Ok(None),
        None => {
            let base = base_url.trim_end_matches('/');
            let derived = if venue_streams.contains(&base) {
                Some(venue_rest.to_owned())
            } else if let Some(rest) = base.strip_prefix("wss://") {
                Some(format!("https://{rest}"))
            } else {
                base.strip_prefix("ws://")
                    .map(|rest| format!("http://{rest}"))
            };
            derived.ok_or_else(|| {
                PluginError::fatal(format!(
                    "invalid config: no `rest_url` can be derived from `base_url` `{base_url}`; set one"
                ))
            })?
        }
    };
    Ok(backfill.then_some(url))
}

/// The watermarks of a cursor read by `parse` (such as [`parse_cursor`]), by uppercase key. A
/// cursor that cannot be read (written by an older version, damaged) must not stop the
/// source: it is logged and read as none.
pub fn marks_or_none(read: Result<CursorMarks, String>, text: &str) -> HashMap<String, u64> {
    match read {
        Ok(read) => {
            for key in read.ignored {
                host::log(
                    LogLevel::Warn,
                    &format!("cursor entry `{key}` is not a trade id; ignored"),
                );
            }
            read.marks
                .into_iter()
                .map(|(key, id)| (key.to_ascii_uppercase(), id))
                .collect()
        }
        Err(why) => {
            let shown: String = text.chars().take(200).collect();
            host::log(
                LogLevel::Warn,
                &format!("cursor `{shown}` ignored ({why}); starting at the live trades"),
            );
            HashMap::new()
        }
    }
}

/// A request unanswered for this long (dropped by the host) is asked for again.
pub const ANSWER_TIMEOUT_US: i64 = 30_000_000;
/// After a passing failure the next request waits this long, doubled per failure up to
/// [`RETRY_MAX_US`].
pub const RETRY_MIN_US: i64 = 1_000_000;
pub const RETRY_MAX_US: i64 = 60_000_000;

/// Which end of a gap a page is taken from: the venue's page order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageOrder {
    /// Pages start at an id and go up (`fromId=`): take the bottom of the gap.
    OldestFirst,
    /// Pages end before an id and go down (`after=`/`before=`): take the top of the gap.
    NewestFirst,
}

/// The ids one backfill request asks for, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub from: u64,
    pub to: u64,
}

impl Page {
    /// How many ids the page covers.
    pub fn len(self) -> u64 {
        self.to - self.from + 1
    }

    /// Never empty; here for clippy's `len_without_is_empty`.
    pub fn is_empty(self) -> bool {
        false
    }

    /// The request tag naming `key` and this page: `<prefix><key>:<from>-<to>`.
    pub fn tag(self, prefix: &str, key: &str) -> String {
        format!("{prefix}{key}:{}-{}", self.from, self.to)
    }

    /// The key and page a tag made by [`Page::tag`] with `prefix` names; `None` otherwise.
    pub fn from_tag<'t>(prefix: &str, tag: &'t str) -> Option<(&'t str, Page)> {
        let (key, ids) = tag.strip_prefix(prefix)?.rsplit_once(':')?;
        let (from, to) = ids.split_once('-')?;
        let page = Page {
            from: from.parse().ok()?,
            to: to.parse().ok()?,
        };
        (!key.is_empty() && page.from <= page.to).then_some((key, page))
    }
}

/// What is known of one key's ids.
#[derive(Debug, Default, Clone)]
pub struct Track {
    done: Option<u64>,
    runs: Vec<(u64, u64)>,
    asked: Option<(Page, i64)>,
    retry_at: i64,
    failures: u32,
}

impl Track {
    /// A key the cursor says is done up to `done`.
    pub fn resume(done: u64) -> Self {
        Track {
            done: Some(done),
            ..Track::default()
        }
    }

    /// The watermark: every id up to it was emitted.
    pub fn done(&self) -> Option<u64> {
        self.done
    }

    /// The ids emitted past a gap: ascending `(first, last)` runs with a gap before each.
    pub fn runs(&self) -> &[(u64, u64)] {
        &self.runs
    }

    /// The first gap, `(first, last)` missing ids, if there is one.
    pub fn gap(&self) -> Option<(u64, u64)> {
        let (first, _) = *self.runs.first()?;
        Some((self.done? + 1, first - 1))
    }

    /// The highest id emitted.
    pub fn highest(&self) -> Option<u64> {
        self.runs.last().map(|r| r.1).or(self.done)
    }

    /// Live id `id` was emitted. Returns whether the watermark moved.
    pub fn live(&mut self, id: u64) -> bool {
        match self.done {
            None => {
                self.done = Some(id);
                true
            }
            Some(done) if self.runs.is_empty() && id == done + 1 => {
                self.done = Some(id);
                true
            }
            Some(_) => self.emitted(id, id),
        }
    }

    /// Ids `first..=last` were emitted (backfilled) or given up. Returns whether the
    /// watermark moved.
    pub fn emitted(&mut self, first: u64, last: u64) -> bool {
        let Some(done) = self.done else {
            self.done = Some(last);
            return true;
        };
        if last <= done || first > last {
            return false;
        }
        let first = first.max(done + 1);
        // Merge with every run it touches or adjoins.
        let start = self
            .runs
            .partition_point(|&(_, l)| l.saturating_add(1) < first);
        let end = self
            .runs
            .partition_point(|&(f, _)| f <= last.saturating_add(1));
        let (mut lo, mut hi) = (first, last);
        for &(f, l) in &self.runs[start..end] {
            lo = lo.min(f);
            hi = hi.max(l);
        }
        self.runs.splice(start..end, [(lo, hi)]);
        if lo <= done + 1 {
            self.done = Some(hi);
            self.runs.remove(0);
            return true;
        }
        false
    }

    /// Forget the gaps (backfill is off): the watermark jumps to the highest id emitted.
    /// Returns the first and last id skipped, if any were.
    pub fn skip_gaps(&mut self) -> Option<(u64, u64)> {
        let (first, _) = self.gap()?;
        let (last_missing, highest) = {
            let last_run = self.runs.last()?;
            (last_run.0 - 1, last_run.1)
        };
        self.runs.clear();
        self.done = Some(highest);
        Some((first, last_missing))
    }

    /// The page to ask for at `now`, at most `limit` ids from the end of the first gap that
    /// `order` says: `None` without a gap, while a request is in flight (and not overdue),
    /// or during a retry wait.
    pub fn next_page(&mut self, now: i64, limit: u64, order: PageOrder) -> Option<Page> {
        let (first, last) = self.gap()?;
        if self
            .asked
            .is_some_and(|(_, at)| now.saturating_sub(at) < ANSWER_TIMEOUT_US)
            || now < self.retry_at
        {
            return None;
        }
        let span = limit.max(1) - 1;
        let page = match order {
            PageOrder::OldestFirst => Page {
                from: first,
                to: last.min(first.saturating_add(span)),
            },
            PageOrder::NewestFirst => Page {
                from: first.max(last.saturating_sub(span)),
                to: last,
            },
        };
        self.asked = Some((page, now));
        Some(page)
    }

    /// The page after the watermark, `done + 1` on, when nothing later is known yet: what a
    /// connector opened with a cursor asks for as it starts (see `Connector::backfill`), and
    /// again while such pages come back full. `None` without a watermark, once a live id
    /// opened a gap (then [`Track::next_page`] takes over), or while a request is in flight.
    pub fn probe(&mut self, now: i64, limit: u64) -> Option<Page> {
        let done = self.done?;
        if !self.runs.is_empty()
            || self
                .asked
                .is_some_and(|(_, at)| now.saturating_sub(at) < ANSWER_TIMEOUT_US)
        {
            return None;
        }
        let page = Page {
            from: done.saturating_add(1),
            to: done.saturating_add(limit.max(1)),
        };
        self.asked = Some((page, now));
        Some(page)
    }

    /// Whether `page` is the request in flight; if so it no longer is. An answer to anything
    /// else (asked again after a timeout and answered twice) is stale.
    pub fn answered(&mut self, page: Page) -> bool {
        if self.asked.is_some_and(|(asked, _)| asked == page) {
            self.asked = None;
            true
        } else {
            false
        }
    }

    /// The answer was usable: failures start counting again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = 0;
    }

    /// The answer failed for a passing reason (429, 5xx): wait before asking again. Returns
    /// the wait, µs.
    pub fn failed(&mut self, now: i64) -> i64 {
        let wait = RETRY_MIN_US
            .saturating_mul(1 << self.failures.min(6))
            .min(RETRY_MAX_US);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = now.saturating_add(wait);
        wait
    }
}

/// A cursor as read back by [`parse_cursor`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CursorMarks {
    /// `(key, watermark)`.
    pub marks: Vec<(String, u64)>,
    /// Keys left out because their value is not a whole number.
    pub ignored: Vec<String>,
}

/// Read a cursor of watermarks by key. Anything but a JSON object is an error; entries whose
/// value is not a whole number (or a string of digits) are listed in `ignored`.
pub fn parse_cursor(text: &str) -> Result<CursorMarks, String> {
    let Ok(Value::Object(entries)) = serde_json::from_str::<Value>(text) else {
        return Err("not a JSON object of ids per key".to_owned());
    };
    let mut read = CursorMarks::default();
    for (key, value) in entries {
        let id = match &value {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        match id {
            Some(id) => read.marks.push((key, id)),
            None => read.ignored.push(key),
        }
    }
    Ok(read)
}

/// Write a cursor: a JSON object of the watermarks, in the order given.
pub fn render_cursor<'a>(marks: impl IntoIterator<Item = (&'a str, u64)>) -> String {
    let mut text = String::from("{");
    for (key, mark) in marks {
        if text.len() > 1 {
            text.push(',');
        }
        text.push_str(&Value::from(key).to_string());
        text.push(':');
        text.push_str(&mark.to_string());
    }
    text.push('}');
    text
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
    fn follows_contiguous_ids_and_waits_for_gaps() {
        let mut t = Track::default();
        assert!(t.live(7));
        assert!(t.live(8));
        assert!(!t.live(8));
        assert!(!t.live(3));
        assert_eq!((t.done(), t.gap()), (Some(8), None));
        let mut t = track(10, &[20, 21, 22, 30]);
        assert_eq!(t.runs, [(20, 22), (30, 30)]);
        assert_eq!(t.gap(), Some((11, 19)));
        assert!(!t.emitted(15, 19));
        assert_eq!(t.gap(), Some((11, 14)));
        assert!(t.emitted(11, 14));
        assert_eq!((t.done(), t.gap()), (Some(22), Some((23, 29))));
        assert!(t.emitted(23, 29));
        assert_eq!((t.done(), t.gap(), t.highest()), (Some(30), None, Some(30)));
        let mut t = track(10, &[13, 15, 14]);
        assert_eq!(t.runs, [(13, 15)]);
        assert!(t.live(11));
        assert_eq!((t.done(), t.gap()), (Some(11), Some((12, 12))));
        assert!(t.live(12));
        assert_eq!((t.done(), t.gap()), (Some(15), None));
    }

    #[test]
    fn a_probe_asks_past_the_watermark_until_a_gap_is_known() {
        assert_eq!(
            Track::default().probe(0, 100),
            None,
            "no cursor, nothing to resume"
        );
        let mut t = Track::resume(41);
        let page = t.probe(0, 100).unwrap();
        assert_eq!(page, Page { from: 42, to: 141 });
        assert_eq!(t.probe(1, 100), None, "one request in flight");
        assert_eq!(t.next_page(1, 100, PageOrder::OldestFirst), None);
        assert!(t.answered(page));
        assert!(t.emitted(42, 141));
        assert_eq!(t.probe(2, 100), Some(Page { from: 142, to: 241 }));
        assert!(t.answered(Page { from: 142, to: 241 }));
        // A live id past the watermark: the gap is known, pages come from next_page.
        t.live(500);
        assert_eq!(t.probe(3, 100), None);
        assert_eq!(
            t.next_page(3, 100, PageOrder::OldestFirst),
            Some(Page { from: 142, to: 241 })
        );
    }

    #[test]
    fn skipping_gaps_jumps_to_the_highest() {
        let mut t = track(10, &[20, 21, 25]);
        assert_eq!(t.skip_gaps(), Some((11, 24)));
        assert_eq!((t.done(), t.gap()), (Some(25), None));
        assert_eq!(t.skip_gaps(), None);
    }

    #[test]
    fn pages_one_at_a_time_from_either_end() {
        let mut t = track(0, &[2501]);
        let top = t.next_page(0, 1000, PageOrder::NewestFirst).unwrap();
        assert_eq!(
            top,
            Page {
                from: 1501,
                to: 2500
            }
        );
        assert_eq!(t.next_page(1, 1000, PageOrder::NewestFirst), None);
        assert_eq!(
            t.next_page(ANSWER_TIMEOUT_US, 1000, PageOrder::NewestFirst),
            Some(top)
        );
        assert!(t.answered(top));
        assert!(!t.answered(top));
        assert_eq!(t.failed(100), RETRY_MIN_US);
        assert_eq!(t.next_page(100, 1000, PageOrder::OldestFirst), None);
        assert_eq!(
            t.next_page(100 + RETRY_MIN_US, 1000, PageOrder::OldestFirst),
            Some(Page { from: 1, to: 1000 })
        );
    }

    #[test]
    fn tags_and_cursors_round_trip() {
        let page = Page { from: 5, to: 9 };
        let tag = page.tag("backfill:", "BTC-USD");
        assert_eq!(tag, "backfill:BTC-USD:5-9");
        assert_eq!(Page::from_tag("backfill:", &tag), Some(("BTC-USD", page)));
        for bad in [
            "x",
            "backfill:A",
            "backfill::1-2",
            "backfill:A:2-1",
            "backfill:A:a-2",
        ] {
            assert_eq!(Page::from_tag("backfill:", bad), None, "{bad}");
        }
        let text = render_cursor([("BTC-USD", 12), ("ETH-USD", 3)]);
        assert_eq!(text, r#"{"BTC-USD":12,"ETH-USD":3}"#);
        let mut read = parse_cursor(r#"{"A":1,"B":"2","C":-1}"#).unwrap();
        read.marks.sort();
        assert_eq!(read.marks, [("A".to_owned(), 1), ("B".to_owned(), 2)]);
        assert_eq!(read.ignored, ["C"]);
        for bad in ["", "1", "[]", "{"] {
            assert!(parse_cursor(bad).is_err());
        }
    }
}
