//! Amounts cross the host boundary as decimal strings; here they become `rust_decimal`.

pub use rust_decimal::Decimal;
use rust_decimal::RoundingStrategy;

use crate::Error;

/// Money amounts (line amounts, taxes, totals, payments) have cents.
pub const MONEY_DECIMALS: u32 = 2;

/// Parses a decimal string such as "12.50", naming `field` when it is not one.
pub fn parse(field: &str, text: &str) -> Result<Decimal, Error> {
    text.trim()
        .parse::<Decimal>()
        .map_err(|_| Error::invalid(field, format!("{text:?} is not a decimal number")))
}

/// Parses a strictly positive amount.
pub fn parse_positive(field: &str, text: &str) -> Result<Decimal, Error> {
    let amount = parse(field, text)?;
    if amount <= Decimal::ZERO {
        return Err(Error::invalid(field, "must be greater than zero"));
    }
    Ok(amount)
}

/// The canonical string the host accepts.
pub fn format(amount: Decimal) -> String {
    amount.normalize().to_string()
}

/// Rounds to cents, half away from zero (commercial rounding), always with two places.
pub fn round_cents(amount: Decimal) -> Decimal {
    let mut rounded =
        amount.round_dp_with_strategy(MONEY_DECIMALS, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(MONEY_DECIMALS);
    rounded
}

/// The text of a money amount: always two places ("1450.00").
pub fn cents_text(value: Decimal) -> String {
    round_cents(value).to_string()
}

/// The canonical text of a decimal: no trailing zeros, "0" for zero.
pub fn text(value: Decimal) -> String {
    if value.is_zero() {
        "0".to_owned()
    } else {
        value.normalize().to_string()
    }
}

/// Serde for decimals stored as canonical strings (`#[serde(with = "money::canonical")]`):
/// quantities, unit prices, percentages.
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

/// Serde for money stored with two places (`#[serde(with = "money::cents")]`).
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

    #[test]
    fn parses_and_formats_exactly() {
        let amount = parse("amount", " 12.50 ").expect("a decimal");
        assert_eq!(format(amount), "12.5");
        assert!(parse_positive("amount", "0").is_err());
        assert!(parse("amount", "twelve").is_err());
    }
}
