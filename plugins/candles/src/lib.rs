//! OHLCV candles from `trades` events, one series per `(exchange, symbol)`.
//!
//! Windows are `interval_ms` long and aligned to the epoch (a 1-minute candle starts on the
//! minute); a trade belongs to the window of its `event_timestamp` (ms). A window closes, and
//! its candle is emitted, when a trade of a later window arrives for the same series, or on a
//! tick whose time is at or past the window's end, whichever comes first.
//!
//! A candle's payload is `exchange, symbol, start, end, interval, trades, closed, o, h, l, c,
//! v`: `start` (ms) inclusive, `end` exclusive, `o`/`h`/`l`/`c` the prices of the first,
//! highest, lowest and last trade exactly as those trades carried them, and `v` the summed
//! size as a decimal string. Sizes are added exactly as decimals (`0.1 + 0.2` is `0.3`); only
//! sizes in exponent notation or beyond 38 digits fall back to `f64`. Open and close follow
//! trade time, so trades out of order within a window still give the right `o` and `c`. The
//! event's key is the symbol, its upstream id `<exchange>:<symbol>:<start>`, its time `start`.
//!
//! Kept simple on purpose:
//!
//! - A late trade, one for a window that has already closed (or for a window before the one
//!   open), is dropped and counted in the node's log; candles are never re-opened or amended.
//!   Ticks use the host's clock, so a feed whose event times lag far behind the wall clock
//!   loses trades this way.
//! - Trade events are consumed; other events go on unchanged, in order with the candles.
//! - A trade event whose payload lacks a usable field is dropped and counted; only a batch in
//!   which every event is like that is an error (bad input).

use std::collections::BTreeMap;

use anode_plugin_sdk::prelude::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_interval_ms")]
    interval_ms: u64,
    #[serde(default = "default_stream")]
    stream: String,
}

fn default_interval_ms() -> u64 {
    60_000
}

fn default_stream() -> String {
    "candles".to_owned()
}

/// The stream candles are made from.
const TRADES: &str = "trades";

/// A decimal held exactly: `mantissa × 10^-scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Decimal {
    mantissa: i128,
    scale: u32,
}

impl Decimal {
    /// `-12.345`, `100`, `0.001`; `None` for exponents or more digits than fit.
    fn parse(text: &str) -> Option<Decimal> {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let mut mantissa: i128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            if !b.is_ascii_digit() {
                return None;
            }
            mantissa = mantissa
                .checked_mul(10)?
                .checked_add(i128::from(b - b'0'))?;
        }
        let scale = u32::try_from(frac.len()).ok()?;
        Some(Decimal {
            mantissa: if negative { -mantissa } else { mantissa },
            scale,
        })
    }

    fn checked_add(self, other: Decimal) -> Option<Decimal> {
        let scale = self.scale.max(other.scale);
        let widen = |d: Decimal| d.mantissa.checked_mul(10i128.checked_pow(scale - d.scale)?);
        Some(Decimal {
            mantissa: widen(self)?.checked_add(widen(other)?)?,
            scale,
        })
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.mantissa < 0 { "-" } else { "" };
        let digits = self.mantissa.unsigned_abs().to_string();
        let scale = self.scale as usize;
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let digits = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = digits.split_at(digits.len() - scale);
        write!(f, "{sign}{int}.{frac}")
    }
}

/// Summed size: exact while every size is a plain decimal, else `f64`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Volume {
    exact: Option<Decimal>,
    approx: f64,
}

impl Volume {
    fn of(size: &str, size_f64: f64) -> Self {
        Volume {
            exact: Decimal::parse(size),
            approx: size_f64,
        }
    }

    fn add(&mut self, size: &str, size_f64: f64) {
        self.exact = self
            .exact
            .zip(Decimal::parse(size))
            .and_then(|(a, b)| a.checked_add(b));
        self.approx += size_f64;
    }

    fn text(&self) -> String {
        match self.exact {
            Some(d) => d.to_string(),
            None => self.approx.to_string(),
        }
    }
}

/// A trade as the candles need it.
struct Trade {
    exchange: String,
    symbol: String,
    price: String,
    price_f64: f64,
    size: String,
    size_f64: f64,
    time_ms: i64,
}

impl Trade {
    fn from_event(event: &Event) -> Result<Trade, PluginError> {
        let value = event.json()?;
        let price = json::decimal_field(&value, "price")?;
        let size = json::decimal_field(&value, "size")?;
        // `decimal_field` only returns finite decimals, so these parse.
        let price_f64 = price.parse().unwrap_or(f64::NAN);
        let size_f64 = size.parse().unwrap_or(f64::NAN);
        // Before 1970 is no trade time; refusing it also keeps window arithmetic in range.
        let time_ms = json::i64_field(&value, "event_timestamp")?;
        if time_ms < 0 {
            return Err(PluginError::bad_input(format!(
                "trade `event_timestamp` {time_ms} is before 1970"
            )));
        }
        Ok(Trade {
            exchange: json::str_field(&value, "exchange")?.to_owned(),
            symbol: json::str_field(&value, "symbol")?.to_owned(),
            price,
            price_f64,
            size,
            size_f64,
            time_ms,
        })
    }
}

/// A window being filled.
#[derive(Serialize, Deserialize)]
struct Candle {
    start: i64,
    trades: u64,
    /// `(time, price)` of the earliest trade.
    open: (i64, String),
    /// `(time, price)` of the latest trade.
    close: (i64, String),
    high: (f64, String),
    low: (f64, String),
    volume: Volume,
}

impl Candle {
    fn new(start: i64, trade: &Trade) -> Self {
        Candle {
            start,
            trades: 1,
            open: (trade.time_ms, trade.price.clone()),
            close: (trade.time_ms, trade.price.clone()),
            high: (trade.price_f64, trade.price.clone()),
            low: (trade.price_f64, trade.price.clone()),
            volume: Volume::of(&trade.size, trade.size_f64),
        }
    }

    fn add(&mut self, trade: &Trade) {
        self.trades += 1;
        // Ties keep arrival order: the first trade opens, the last closes.
        if trade.time_ms < self.open.0 {
            self.open = (trade.time_ms, trade.price.clone());
        }
        if trade.time_ms >= self.close.0 {
            self.close = (trade.time_ms, trade.price.clone());
        }
        if trade.price_f64 > self.high.0 {
            self.high = (trade.price_f64, trade.price.clone());
        }
        if trade.price_f64 < self.low.0 {
            self.low = (trade.price_f64, trade.price.clone());
        }
        self.volume.add(&trade.size, trade.size_f64);
    }
}

#[derive(Serialize)]
struct CandleRecord<'a> {
    exchange: &'a str,
    symbol: &'a str,
    start: i64,
    end: i64,
    interval: i64,
    trades: u64,
    closed: bool,
    o: &'a str,
    h: &'a str,
    l: &'a str,
    c: &'a str,
    v: String,
}

/// One `(exchange, symbol)`.
#[derive(Default, Serialize, Deserialize)]
struct Series {
    open: Option<Candle>,
    /// Trades before this time (ms) belong to windows already closed.
    closed_until: i64,
}

/// What [`Candles`] hands the host to keep (see `snapshot`): the window length, and each
/// series' exchange, symbol and state. `S` is `&Series` written, `Series` read back.
#[derive(Serialize, Deserialize)]
struct State<S> {
    interval_ms: i64,
    series: Vec<(String, String, S)>,
}

/// The transform.
pub struct Candles {
    interval_ms: i64,
    stream: String,
    series: BTreeMap<(String, String), Series>,
}

impl Candles {
    fn window_start(&self, time_ms: i64) -> i64 {
        time_ms.div_euclid(self.interval_ms) * self.interval_ms
    }

    /// The event of a closed candle.
    fn close(&self, exchange: &str, symbol: &str, candle: Candle) -> Event {
        let record = CandleRecord {
            exchange,
            symbol,
            start: candle.start,
            end: candle.start.saturating_add(self.interval_ms),
            interval: self.interval_ms,
            trades: candle.trades,
            closed: true,
            o: &candle.open.1,
            h: &candle.high.1,
            l: &candle.low.1,
            c: &candle.close.1,
            v: candle.volume.text(),
        };
        Event::new(&self.stream, &record)
            .key(symbol)
            .upstream_id(format!("{exchange}:{symbol}:{}", candle.start))
            .at(time::ms_to_us(candle.start))
    }

    /// Add a trade, pushing the candle it closes; false when the trade is late and dropped.
    fn add(&mut self, trade: Trade, out: &mut Vec<Event>) -> bool {
        let start = self.window_start(trade.time_ms);
        let interval = self.interval_ms;
        let key = (trade.exchange.clone(), trade.symbol.clone());
        let series = self.series.entry(key).or_default();
        if start < series.closed_until {
            return false;
        }
        if let Some(candle) = series.open.as_mut() {
            if start == candle.start {
                candle.add(&trade);
                return true;
            }
            if start < candle.start {
                return false;
            }
        }
        // A later window (or the first one): the open candle, if any, is complete.
        if let Some(previous) = series.open.replace(Candle::new(start, &trade)) {
            series.closed_until = previous.start.saturating_add(interval);
            out.push(self.close(&trade.exchange, &trade.symbol, previous));
        }
        true
    }
}

impl Transform for Candles {
    fn manifest() -> Manifest {
        Manifest::new(
            "candles",
            env!("CARGO_PKG_VERSION"),
            "OHLCV candles per exchange and symbol over fixed time windows, from trades events",
        )
        .schema(json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "interval_ms": {
                    "type": "integer",
                    "minimum": 1,
                    "default": default_interval_ms(),
                    "description": "window length; windows are aligned to the epoch"
                },
                "stream": {"type": "string", "minLength": 1, "default": default_stream()}
            }
        }))
        .example(json!({"interval_ms": 60_000, "stream": "candles"}))
    }

    fn configure(config: &str) -> Result<Self, PluginError> {
        let config: Config = json::config(config)?;
        let interval_ms = i64::try_from(config.interval_ms)
            .ok()
            .filter(|&ms| ms >= 1)
            .ok_or_else(|| {
                PluginError::fatal("invalid config: `interval_ms` must be a positive number of ms")
            })?;
        if config.stream.is_empty() {
            return Err(PluginError::fatal("invalid config: `stream` is empty"));
        }
        Ok(Candles {
            interval_ms,
            stream: config.stream,
            series: BTreeMap::new(),
        })
    }

    fn process(&mut self, events: Vec<Event>, out: &mut Vec<Event>) -> Result<(), PluginError> {
        let total = events.len();
        let (mut broken, mut late) = (0usize, 0usize);
        let mut first_problem = None;
        for event in events {
            if event.stream != TRADES {
                out.push(event);
                continue;
            }
            match Trade::from_event(&event) {
                Ok(trade) => {
                    if !self.add(trade, out) {
                        late += 1;
                    }
                }
                Err(error) => {
                    broken += 1;
                    first_problem.get_or_insert(error);
                }
            }
        }
        let problem = first_problem
            .map(|e| e.message().to_owned())
            .unwrap_or_default();
        if broken > 0 && broken == total {
            return Err(PluginError::bad_input(format!(
                "none of the {total} trade event(s) could be read: {problem}"
            )));
        }
        if broken > 0 {
            host::log(
                LogLevel::Warn,
                &format!("candles: dropped {broken} unreadable trade event(s), first: {problem}"),
            );
        }
        if late > 0 {
            host::log(
                LogLevel::Info,
                &format!("candles: dropped {late} late trade(s) for windows already closed"),
            );
        }
        Ok(())
    }

    /// The open windows and where each series closed, as JSON: a restart, a hand-over or a
    /// crash then goes on with the same windows instead of emitting a candle of part of them.
    fn snapshot(&self) -> Option<Vec<u8>> {
        if self.series.is_empty() {
            return None;
        }
        let state: Vec<(String, String, &Series)> = self
            .series
            .iter()
            .map(|((exchange, symbol), series)| (exchange.clone(), symbol.clone(), series))
            .collect();
        serde_json::to_vec(&State {
            interval_ms: self.interval_ms,
            series: state,
        })
        .ok()
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), PluginError> {
        let state: State<Series> = serde_json::from_slice(state)
            .map_err(|e| PluginError::bad_input(format!("candles: unreadable state: {e}")))?;
        if state.interval_ms != self.interval_ms {
            // Another window length: the old windows do not fit; start afresh.
            return Err(PluginError::bad_input(format!(
                "candles: the state is of {} ms windows, this step makes {} ms ones",
                state.interval_ms, self.interval_ms
            )));
        }
        self.series = state
            .series
            .into_iter()
            .map(|(exchange, symbol, series)| ((exchange, symbol), series))
            .collect();
        Ok(())
    }

    fn tick(&mut self, now_us: i64, out: &mut Vec<Event>) -> Result<(), PluginError> {
        let now_ms = now_us.div_euclid(1000);
        let interval = self.interval_ms;
        let mut closed = Vec::new();
        for ((exchange, symbol), series) in &mut self.series {
            let over = series
                .open
                .as_ref()
                .is_some_and(|c| c.start.saturating_add(interval) <= now_ms);
            if over && let Some(candle) = series.open.take() {
                series.closed_until = candle.start.saturating_add(interval);
                closed.push((exchange.clone(), symbol.clone(), candle));
            }
        }
        for (exchange, symbol, candle) in closed {
            out.push(self.close(&exchange, &symbol, candle));
        }
        Ok(())
    }
}

export_transform!(Candles);

#[cfg(test)]
mod tests {
    use super::*;
    use anode_plugin_sdk::testing;

    /// 2023-01-01T00:00:00Z in ms: a minute boundary.
    const T0: i64 = 1_672_531_200_000;

    fn trade_on(exchange: &str, symbol: &str, price: &str, size: Value, at_ms: i64) -> Event {
        Event::new(
            "trades",
            &json!({
                "exchange": exchange,
                "symbol": symbol,
                "price": price,
                "size": size,
                "taker_side": "buy",
                "trade_id": at_ms,
                "event_timestamp": at_ms,
                "atom_timestamp": at_ms.saturating_mul(1000)
            }),
        )
        .key(symbol)
        .at(at_ms.saturating_mul(1000))
    }

    fn trade(price: &str, size: &str, at_ms: i64) -> Event {
        trade_on("binance", "BTC.USDT", price, json!(size), at_ms)
    }

    fn configure(config: &str) -> Candles {
        match Candles::configure(config) {
            Ok(c) => c,
            Err(e) => panic!("{config}: {e}"),
        }
    }

    #[test]
    fn a_later_window_closes_the_candle() {
        let mut c = configure("{}");
        let out = testing::process(
            &mut c,
            vec![
                trade("16500.10", "0.5", T0 + 1_000),
                trade("16510.00", "0.25", T0 + 20_000),
                trade("16490.5", "1", T0 + 40_000),
                trade("16505", "0.125", T0 + 59_999),
            ],
        )
        .unwrap();
        assert!(out.is_empty(), "the window is still open");
        let out = testing::process(&mut c, vec![trade("16600", "2", T0 + 60_000)]).unwrap();
        assert_eq!(out.len(), 1);
        let candle = &out[0];
        assert_eq!(candle.stream, "candles");
        assert_eq!(candle.key.as_deref(), Some("BTC.USDT"));
        assert_eq!(
            candle.upstream_id.as_deref(),
            Some("binance:BTC.USDT:1672531200000")
        );
        assert_eq!(candle.event_time, Some(T0 * 1000));
        assert_eq!(
            testing::payloads(&out)[0],
            json!({
                "exchange": "binance",
                "symbol": "BTC.USDT",
                "start": T0,
                "end": T0 + 60_000,
                "interval": 60_000,
                "trades": 4,
                "closed": true,
                "o": "16500.10",
                "h": "16510.00",
                "l": "16490.5",
                "c": "16505",
                "v": "1.875"
            })
        );
    }

    #[test]
    fn series_are_per_exchange_and_symbol() {
        let mut c = configure(r#"{"interval_ms":1000,"stream":"ohlcv"}"#);
        let out = testing::process(
            &mut c,
            vec![
                trade_on("binance", "BTC.USDT", "100", json!("1"), T0),
                trade_on("coinbase", "BTC.USDT", "101", json!("2"), T0 + 10),
                trade_on("binance", "ETH.USDT", "10", json!("3"), T0 + 20),
                // Closes binance BTC.USDT only.
                trade_on("binance", "BTC.USDT", "102", json!("4"), T0 + 1_500),
            ],
        )
        .unwrap();
        let p = testing::payloads(&out);
        assert_eq!(p.len(), 1);
        assert_eq!(
            (&p[0]["exchange"], &p[0]["symbol"]),
            (&json!("binance"), &json!("BTC.USDT"))
        );
        assert_eq!(
            (&p[0]["o"], &p[0]["v"], &p[0]["interval"]),
            (&json!("100"), &json!("1"), &json!(1000))
        );
        assert_eq!(out[0].stream, "ohlcv");
        // The tick at the end of the second window closes the rest, in a stable order.
        let out = testing::tick(&mut c, (T0 + 2_000) * 1000).unwrap();
        let ids: Vec<_> = out.iter().map(|e| e.upstream_id.clone().unwrap()).collect();
        assert_eq!(
            ids,
            [
                format!("binance:BTC.USDT:{}", T0 + 1_000),
                format!("binance:ETH.USDT:{T0}"),
                format!("coinbase:BTC.USDT:{T0}"),
            ]
        );
    }

    /// A window split over two steps by a snapshot and a restore (a restart, a hand-over)
    /// closes as the candle one step would have made.
    #[test]
    fn a_window_survives_a_snapshot_and_a_restore() {
        let trades = [
            trade("100", "1", T0 + 1_000),
            trade("105", "2", T0 + 2_000),
            trade("99", "0.5", T0 + 3_000),
            trade("101", "0.25", T0 + 4_000),
        ];
        let mut whole = configure("{}");
        testing::process(&mut whole, trades.to_vec()).unwrap();
        let want = testing::tick(&mut whole, (T0 + 60_000) * 1000).unwrap();

        let mut before = configure("{}");
        assert!(before.snapshot().is_none(), "nothing to keep yet");
        testing::process(&mut before, trades[..2].to_vec()).unwrap();
        let state = before.snapshot().expect("an open window");
        let mut after = configure("{}");
        after.restore(&state).unwrap();
        testing::process(&mut after, trades[2..].to_vec()).unwrap();
        let got = testing::tick(&mut after, (T0 + 60_000) * 1000).unwrap();
        assert_eq!(testing::payloads(&got), testing::payloads(&want));
        assert_eq!(testing::payloads(&got)[0]["v"], "3.75");
        // Another window length refuses the state.
        let mut other = configure(r#"{"interval_ms": 1000}"#);
        assert!(other.restore(&state).is_err());
        assert!(other.restore(b"not json").is_err());
    }

    #[test]
    fn a_tick_closes_only_windows_that_are_over() {
        let mut c = configure("{}");
        testing::process(&mut c, vec![trade("1", "1", T0 + 5_000)]).unwrap();
        assert!(
            testing::tick(&mut c, (T0 + 59_999) * 1000)
                .unwrap()
                .is_empty()
        );
        let out = testing::tick(&mut c, (T0 + 60_000) * 1000).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(testing::payloads(&out)[0]["trades"], 1);
        // Closed once: later ticks emit nothing more.
        assert!(
            testing::tick(&mut c, (T0 + 600_000) * 1000)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn late_trades_are_dropped() {
        let mut c = configure("{}");
        testing::process(&mut c, vec![trade("1", "1", T0 + 5_000)]).unwrap();
        testing::tick(&mut c, (T0 + 60_000) * 1000).unwrap();
        // For the window the tick closed, and for a window before the open one.
        let out = testing::process(
            &mut c,
            vec![
                trade("2", "1", T0 + 59_000),
                trade("3", "1", T0 + 70_000),
                trade("4", "1", T0 + 50_000),
                trade("5", "1", T0 + 130_000),
            ],
        )
        .unwrap();
        let p = testing::payloads(&out);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0]["start"], T0 + 60_000);
        assert_eq!((&p[0]["trades"], &p[0]["o"]), (&json!(1), &json!("3")));
    }

    #[test]
    fn open_and_close_follow_trade_time_within_a_window() {
        let mut c = configure("{}");
        testing::process(
            &mut c,
            vec![
                trade("20", "1", T0 + 30_000),
                trade("10", "1", T0 + 10_000),
                trade("40", "1", T0 + 50_000),
                trade("30", "1", T0 + 40_000),
            ],
        )
        .unwrap();
        let p = testing::payloads(&testing::tick(&mut c, (T0 + 60_000) * 1000).unwrap());
        assert_eq!((&p[0]["o"], &p[0]["c"]), (&json!("10"), &json!("40")));
        assert_eq!((&p[0]["h"], &p[0]["l"]), (&json!("40"), &json!("10")));
    }

    #[test]
    fn volume_is_summed_exactly() {
        let mut c = configure("{}");
        let sizes = [json!("0.1"), json!("0.2"), json!(3), json!("0.00000001")];
        let trades = sizes
            .iter()
            .map(|s| trade_on("kraken", "BTC.USD", "1", s.clone(), T0))
            .collect();
        testing::process(&mut c, trades).unwrap();
        let p = testing::payloads(&testing::tick(&mut c, (T0 + 60_000) * 1000).unwrap());
        assert_eq!(p[0]["v"], "3.30000001");
        // Exponent notation falls back to f64.
        testing::process(
            &mut c,
            vec![
                trade("1", "1e-3", T0 + 60_000),
                trade("1", "2", T0 + 60_001),
            ],
        )
        .unwrap();
        let p = testing::payloads(&testing::tick(&mut c, (T0 + 120_000) * 1000).unwrap());
        assert_eq!(p[0]["v"], "2.001");
    }

    #[test]
    fn decimals_parse_add_and_print() {
        let d = |s: &str| Decimal::parse(s).unwrap();
        assert_eq!(d("1.10").checked_add(d("2.2")).unwrap().to_string(), "3.30");
        assert_eq!(
            d("100").checked_add(d("0.001")).unwrap().to_string(),
            "100.001"
        );
        assert_eq!(
            d("-0.5").checked_add(d("0.25")).unwrap().to_string(),
            "-0.25"
        );
        assert_eq!(d(".5").to_string(), "0.5");
        assert_eq!(d("0.000").to_string(), "0.000");
        for bad in [
            "",
            ".",
            "1e5",
            "1.2.3",
            "abc",
            "--1",
            "1234567890123456789012345678901234567890",
        ] {
            assert_eq!(Decimal::parse(bad), None, "{bad}");
        }
        let big = d("170141183460469231731687303715884105727");
        assert_eq!(big.checked_add(d("1")), None);
    }

    #[test]
    fn other_events_go_on_in_order_with_the_candles() {
        let mut c = configure("{}");
        let ticker =
            Event::new("ticker", &json!({"symbol": "BTC.USDT", "bid_price": "1"})).key("BTC.USDT");
        let out = testing::process(
            &mut c,
            vec![
                trade("1", "1", T0),
                ticker.clone(),
                trade("2", "1", T0 + 60_000),
                ticker.clone(),
            ],
        )
        .unwrap();
        let streams: Vec<_> = out.iter().map(|e| e.stream.as_str()).collect();
        assert_eq!(streams, ["ticker", "candles", "ticker"]);
        assert_eq!(out[0], ticker);
    }

    #[test]
    fn unreadable_trades_are_dropped_and_an_all_bad_batch_is_an_error() {
        let mut c = configure("{}");
        let not_json = Event {
            payload: b"{oops".to_vec(),
            ..trade("1", "1", T0)
        };
        let no_price = Event::new(
            "trades",
            &json!({"exchange": "x", "symbol": "A.B", "size": "1", "event_timestamp": T0}),
        );
        let bad_size = trade("1", "many", T0);
        let out = testing::process(
            &mut c,
            vec![
                not_json.clone(),
                trade("7", "1", T0),
                no_price.clone(),
                bad_size,
                trade("1", "1", i64::MIN),
                trade("1", "1", -1),
            ],
        )
        .unwrap();
        assert!(out.is_empty());
        let p = testing::payloads(&testing::tick(&mut c, (T0 + 60_000) * 1000).unwrap());
        assert_eq!((&p[0]["trades"], &p[0]["o"]), (&json!(1), &json!("7")));
        match testing::process(&mut c, vec![not_json, no_price]) {
            Err(PluginError::BadInput(m)) => assert!(m.contains("2 trade event"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(testing::process(&mut c, vec![]).unwrap().is_empty());
    }

    #[test]
    fn bad_config_is_fatal_and_says_why() {
        for config in [
            r#"{"interval_ms":0}"#,
            r#"{"interval_ms":-1}"#,
            r#"{"interval_ms":"1m"}"#,
            r#"{"interval_ms":18446744073709551615}"#,
            r#"{"stream":""}"#,
            r#"{"window":60000}"#,
            "[",
        ] {
            match Candles::configure(config) {
                Err(PluginError::Fatal(m)) => assert!(m.starts_with("invalid config"), "{m}"),
                Err(other) => panic!("{config}: {other}"),
                Ok(_) => panic!("{config} was accepted"),
            }
        }
    }

    #[test]
    fn the_manifest_example_configures() {
        let manifest = Candles::manifest();
        assert_eq!(manifest.name, "candles");
        assert!(Candles::configure(&manifest.config_example).is_ok());
    }
}
