//! Symbols in the normalised `BASE.QUOTE` form (`BTC.USDT`).

/// Quote currencies recognised at the end of concatenated symbols (`BTCUSDT`), longest first.
const QUOTES: &[&str] = &[
    "FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USD", "EUR", "GBP", "TRY", "BRL", "JPY", "BTC",
    "ETH", "BNB", "DAI",
];

/// Venue-specific asset names mapped to the common ones.
fn canonical(asset: &str) -> String {
    let upper = asset.to_ascii_uppercase();
    match upper.as_str() {
        "XBT" => "BTC".to_owned(),
        "XDG" => "DOGE".to_owned(),
        _ => upper,
    }
}

/// `BASE.QUOTE` from two assets.
pub fn pair(base: &str, quote: &str) -> String {
    format!("{}.{}", canonical(base), canonical(quote))
}

/// Normalise a symbol with a separator (`ETH-USD`, `XBT/USD`).
pub fn from_delimited(symbol: &str, separator: char) -> Option<String> {
    let (base, quote) = symbol.split_once(separator)?;
    (!base.is_empty() && !quote.is_empty()).then(|| pair(base, quote))
}

/// Normalise a concatenated symbol (`BTCUSDT`, `bnbbtc`) by its known quote currency; `None`
/// when no known quote ends it.
pub fn from_concatenated(symbol: &str) -> Option<String> {
    let upper = symbol.to_ascii_uppercase();
    QUOTES.iter().find_map(|quote| {
        let base = upper.strip_suffix(quote)?;
        (!base.is_empty()).then(|| pair(base, quote))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        assert_eq!(from_concatenated("BTCUSDT").unwrap(), "BTC.USDT");
        assert_eq!(from_concatenated("bnbbtc").unwrap(), "BNB.BTC");
        assert_eq!(from_concatenated("XYZ"), None);
        assert_eq!(from_delimited("ETH-USD", '-').unwrap(), "ETH.USD");
        assert_eq!(from_delimited("XBT/USD", '/').unwrap(), "BTC.USD");
        assert_eq!(from_delimited("ETHUSD", '-'), None);
    }
}
