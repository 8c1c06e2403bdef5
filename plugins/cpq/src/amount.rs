//! Exact decimals: money rounded to cents, unit prices, percentages and quantities, and how
//! they are written in records and on the wire (canonical decimal strings, never floats).

use rust_decimal::{Decimal, RoundingStrategy};

/// Money amounts (line amounts, discounts, taxes, totals) have cents.
pub const MONEY_DECIMALS: u32 = 2;
/// An average unit price (graduated tiers, bundles of several components) is shown to this
/// many places; the line amount is computed from the exact value, not from this rounding.
pub const UNIT_PRICE_DECIMALS: u32 = 4;
/// Most decimal places an input price, quantity or percentage may have: more is a typo, not a
/// price anyone quotes.
pub const INPUT_DECIMALS_MAX: u32 = 6;
/// The largest unit price an input may carry (a trillion). With [`QUANTITY_MAX`] and the
/// catalog's limits it keeps every product of price and quantity far inside the 28 digits of
/// `rust_decimal`, so the arithmetic never overflows.
pub const PRICE_MAX: i64 = 1_000_000_000_000;
/// The largest quantity of one quote line or tier threshold (a million units).
pub const QUANTITY_MAX: i64 = 1_000_000;

/// Rounds to cents, half away from zero (commercial rounding).
pub fn money(amount: Decimal) -> Decimal {
    let mut rounded =
        amount.round_dp_with_strategy(MONEY_DECIMALS, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(MONEY_DECIMALS);
    rounded
}

/// Rounds an average unit price for display.
pub fn unit_price(price: Decimal) -> Decimal {
    price.round_dp_with_strategy(UNIT_PRICE_DECIMALS, RoundingStrategy::MidpointAwayFromZero)
}

/// The canonical text of a decimal: no trailing zeros, "0" for zero.
pub fn text(value: Decimal) -> String {
    if value.is_zero() {
        "0".to_owned()
    } else {
        value.normalize().to_string()
    }
}

/// The text of a money amount: always two places ("1450.00").
pub fn cents_text(value: Decimal) -> String {
    money(value).to_string()
}

/// A percentage of an amount, unrounded.
pub fn percent_of(amount: Decimal, percent: Decimal) -> Decimal {
    amount * percent / Decimal::ONE_HUNDRED
}

/// Serde for decimals stored as canonical strings.
pub mod canonical {
    use rust_decimal::Decimal;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::text(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Serde for money stored with two places.
pub mod cents {
    use rust_decimal::Decimal;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::cents_text(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        text.parse().expect("a decimal")
    }

    #[test]
    fn money_rounds_half_away_from_zero_to_two_places() {
        assert_eq!(cents_text(d("2.345")), "2.35");
        assert_eq!(cents_text(d("2.344")), "2.34");
        assert_eq!(cents_text(d("-2.345")), "-2.35");
        assert_eq!(cents_text(d("7")), "7.00");
    }

    #[test]
    fn canonical_text_has_no_trailing_zeros() {
        assert_eq!(text(d("19.00")), "19");
        assert_eq!(text(d("0.000")), "0");
        assert_eq!(text(d("12.50")), "12.5");
    }
}
