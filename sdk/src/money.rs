//! Amounts cross the host boundary as decimal strings; here they become `rust_decimal`.

pub use rust_decimal::Decimal;

use crate::Error;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_exactly() {
        let amount = parse("amount", " 12.50 ").expect("a decimal");
        assert_eq!(format(amount), "12.5");
        assert!(parse_positive("amount", "0").is_err());
        assert!(parse("amount", "twelve").is_err());
    }
}
