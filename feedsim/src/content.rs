//! Deterministic event content: every value is a pure function of (seed, stream key, n).
//!
//! A random walk would need every earlier event, so prices are a slow deterministic wave around
//! a reference price plus per-event noise; any event can be generated on its own, in any order.

use sha2::{Digest, Sha256};

/// Events in one full period of the price wave.
const PRICE_WAVE_PERIOD: f64 = 6_000.0;
/// Relative amplitude of the price wave.
const PRICE_WAVE_AMPLITUDE: f64 = 0.02;
/// Relative amplitude of the per-event price noise.
const PRICE_NOISE: f64 = 0.001;
/// Smallest and largest trade notional, in quote units.
const MIN_NOTIONAL: f64 = 10.0;
const NOTIONAL_SPREAD: f64 = 2_000.0;
/// Half the bid-ask spread, relative to the reference price.
const HALF_SPREAD: f64 = 0.000_05;
/// Traded notional per day, in quote units (sets the 24 h volume).
const DAILY_NOTIONAL: f64 = 50_000_000.0;
/// Separates the quote's random draws from the trade's.
const QUOTE_SALT: u64 = 0x5155_4f54_4553_414c;
/// Decimals of every price and size string.
pub(crate) const DECIMALS: usize = 8;

/// SHA-256 of (seed, key, n): the root of everything derived for event n.
pub(crate) fn event_digest(seed: u64, key: &str, n: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update((key.len() as u64).to_le_bytes());
    h.update(key.as_bytes());
    h.update(n.to_le_bytes());
    h.finalize().into()
}

/// `0x`-prefixed 32-byte hash of (seed, key, n), e.g. a block or transaction hash.
pub(crate) fn hash_hex(seed: u64, key: &str, n: u64) -> String {
    format!("0x{}", hex::encode(event_digest(seed, key, n)))
}

/// A UUID-looking id (8-4-4-4-12 hex) derived from (seed, key, n).
pub(crate) fn uuid_like(seed: u64, key: &str, n: u64) -> String {
    let h = hex::encode(&event_digest(seed, key, n)[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// splitmix64: a tiny deterministic generator seeded from an event digest.
pub(crate) struct EventRng(u64);

impl EventRng {
    pub(crate) fn new(seed: u64, key: &str, n: u64) -> Self {
        let d = event_digest(seed, key, n);
        Self(u64::from_le_bytes(d[..8].try_into().expect("8 bytes")))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One trade of an instrument.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Trade {
    pub(crate) id: u64,
    pub(crate) price: f64,
    pub(crate) qty: f64,
    /// Binance `m`: the buyer is the maker, i.e. the taker sold.
    pub(crate) buyer_maker: bool,
}

/// Best bid/ask and 24 h figures after a trade.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Quote {
    pub(crate) trade: Trade,
    pub(crate) bid: f64,
    pub(crate) bid_qty: f64,
    pub(crate) ask: f64,
    pub(crate) ask_qty: f64,
    pub(crate) volume_24h: f64,
    pub(crate) vwap: f64,
    pub(crate) low: f64,
    pub(crate) high: f64,
}

/// An instrument's reference price and the key its content is derived from.
#[derive(Clone, Debug)]
pub(crate) struct Instrument {
    key: String,
    reference: f64,
    phase: f64,
}

impl Instrument {
    /// `key` names the stream (venue and symbol); `base`/`quote` pick a plausible price level.
    pub(crate) fn new(seed: u64, key: String, base: &str, quote: &str) -> Self {
        let reference = usd_price(seed, base) / usd_price(seed, quote);
        let phase = EventRng::new(seed, &key, u64::MAX).unit() * std::f64::consts::TAU;
        Self {
            key,
            reference,
            phase,
        }
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// The reference (opening) price.
    pub(crate) fn reference(&self) -> f64 {
        self.reference
    }

    /// Trade `n` of this instrument.
    pub(crate) fn trade(&self, seed: u64, n: u64) -> Trade {
        let mut rng = EventRng::new(seed, &self.key, n);
        let wave = (n as f64 / PRICE_WAVE_PERIOD * std::f64::consts::TAU + self.phase).sin();
        let noise = rng.unit() - 0.5;
        let price = round_to(
            self.reference * (1.0 + PRICE_WAVE_AMPLITUDE * wave + PRICE_NOISE * noise),
            DECIMALS,
        );
        let notional = MIN_NOTIONAL * NOTIONAL_SPREAD.powf(rng.unit());
        let qty = round_to(notional / price, DECIMALS).max(1e-8);
        let buyer_maker = rng.next_u64() & 1 == 1;
        Trade {
            id: n,
            price,
            qty,
            buyer_maker,
        }
    }

    /// Ticker state right after trade `n`: one function serves every venue's ticker.
    pub(crate) fn quote(&self, seed: u64, n: u64) -> Quote {
        let trade = self.trade(seed, n);
        let mut rng = EventRng::new(seed, &self.key, n ^ QUOTE_SALT);
        let half_spread = self.reference * HALF_SPREAD;
        let volume_24h = round_to(
            DAILY_NOTIONAL / self.reference * (1.0 + (n % 1_000) as f64 / 1_000.0),
            DECIMALS,
        );
        let (low, high) = self.price_bounds();
        Quote {
            bid: round_to(trade.price - half_spread, DECIMALS),
            bid_qty: round_to(trade.qty * (0.5 + rng.unit() * 4.0), DECIMALS),
            ask: round_to(trade.price + half_spread, DECIMALS),
            ask_qty: round_to(trade.qty * (0.5 + rng.unit() * 4.0), DECIMALS),
            volume_24h,
            vwap: round_to((low + high) / 2.0, 5),
            low,
            high,
            trade,
        }
    }

    /// Lowest and highest price any trade can have (the 24 h low and high).
    pub(crate) fn price_bounds(&self) -> (f64, f64) {
        let span = PRICE_WAVE_AMPLITUDE + PRICE_NOISE;
        (
            round_to(self.reference * (1.0 - span), 5),
            round_to(self.reference * (1.0 + span), 5),
        )
    }
}

/// A plausible USD price of an asset: well-known assets from a table, others from the seed.
fn usd_price(seed: u64, asset: &str) -> f64 {
    match asset.to_ascii_uppercase().as_str() {
        "USD" | "USDT" | "USDC" | "BUSD" | "FDUSD" | "TUSD" | "DAI" => 1.0,
        "EUR" => 1.08,
        "GBP" => 1.27,
        "BTC" | "XBT" => 60_000.0,
        "ETH" => 3_000.0,
        "BNB" => 600.0,
        "SOL" => 150.0,
        "XRP" => 0.6,
        "ADA" => 0.45,
        "DOGE" => 0.15,
        "LTC" => 80.0,
        "DOT" => 7.0,
        "AVAX" => 35.0,
        "LINK" => 15.0,
        "MATIC" | "POL" => 0.7,
        other => {
            // 0.01 .. 1000, log-uniform, stable per (seed, asset).
            let u = EventRng::new(seed, &format!("asset:{other}"), 0).unit();
            round_to(10f64.powf(u * 5.0 - 2.0), 4)
        }
    }
}

/// Rounds to `places` decimals so that JSON numbers print cleanly.
pub(crate) fn round_to(x: f64, places: usize) -> f64 {
    let m = 10f64.powi(places as i32);
    (x * m).round() / m
}

/// A decimal string with [`DECIMALS`] places, as venues send prices and sizes.
pub(crate) fn decimal(x: f64) -> String {
    format!("{x:.DECIMALS$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn btc(seed: u64) -> Instrument {
        Instrument::new(seed, "binance:BTCUSDT".into(), "BTC", "USDT")
    }

    #[test]
    fn same_seed_key_and_n_give_the_same_trade() {
        for n in [1, 2, 1_000, 123_456] {
            assert_eq!(btc(7).trade(7, n), btc(7).trade(7, n));
        }
        assert_eq!(hash_hex(1, "evm:eth", 5), hash_hex(1, "evm:eth", 5));
    }

    #[test]
    fn different_seed_or_key_changes_the_content() {
        assert_ne!(btc(1).trade(1, 10), btc(2).trade(2, 10));
        let eth = Instrument::new(1, "binance:ETHUSDT".into(), "ETH", "USDT");
        assert_ne!(btc(1).trade(1, 10).price, eth.trade(1, 10).price);
        assert_ne!(hash_hex(1, "evm:eth", 5), hash_hex(1, "evm:eth", 6));
    }

    #[test]
    fn prices_and_sizes_are_plausible() {
        let i = btc(3);
        let (low, high) = i.price_bounds();
        let mut sides = [0, 0];
        for n in 1..2_000 {
            let t = i.trade(3, n);
            assert!(
                t.price >= low && t.price <= high,
                "{} outside {low}..{high}",
                t.price
            );
            assert!(t.qty > 0.0 && t.qty * t.price < 25_000.0);
            sides[t.buyer_maker as usize] += 1;
        }
        assert!(sides[0] > 800 && sides[1] > 800, "{sides:?}");
        assert_eq!(decimal(1.5), "1.50000000");
    }

    #[test]
    fn uuid_like_has_the_uuid_shape() {
        let u = uuid_like(1, "k", 1);
        let parts: Vec<_> = u.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
    }
}
