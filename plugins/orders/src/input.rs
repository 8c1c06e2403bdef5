//! What requests and operations bring in: decimals written as strings or JSON numbers, texts,
//! dates and `{line, quantity}` pairs, each checked with the path of its field so that a
//! refusal names every bad field at once.

use keel_sdk::{FieldErrors, dates, money};
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::order::Line;

/// Most decimal places a quantity, price or percentage may have: more is a typo, not a price
/// anyone charges.
pub const INPUT_DECIMALS_MAX: u32 = 6;
/// The largest quantity of one order line (a million units). With [`PRICE_MAX`] it keeps every
/// product of quantity and price far inside the 28 digits of `rust_decimal`.
pub const QUANTITY_MAX: i64 = 1_000_000;
/// The largest unit price (a trillion).
pub const PRICE_MAX: i64 = 1_000_000_000_000;
/// Reasons and notes: a paragraph, not a document.
pub const NOTE_CHARS_MAX: usize = 2_000;

/// A decimal as JSON carries it: a string ("12.50", preferred: exact) or a number (12.5).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DecimalInput {
    Text(String),
    Number(serde_json::Number),
}

impl DecimalInput {
    fn text(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::Number(number) => number.to_string(),
        }
    }
}

/// A decimal in [`min`, `max`] (above `min` when `above_min`), with at most
/// [`INPUT_DECIMALS_MAX`] places; `None` after adding an error about `field`.
pub fn decimal(
    errors: &mut FieldErrors,
    field: &str,
    value: &DecimalInput,
    min: Decimal,
    max: Decimal,
    above_min: bool,
) -> Option<Decimal> {
    let parsed = match money::parse(field, &value.text()) {
        Ok(parsed) => parsed.normalize(),
        Err(error) => {
            // `money::parse` fails only with `invalid` naming `field`.
            let _ = errors.absorb(error);
            return None;
        }
    };
    if parsed.scale() > INPUT_DECIMALS_MAX {
        errors.add(
            field,
            format!("has at most {INPUT_DECIMALS_MAX} decimal places"),
        );
        return None;
    }
    let too_small = if above_min {
        parsed <= min
    } else {
        parsed < min
    };
    if too_small || parsed > max {
        let lower = if above_min { "above" } else { "from" };
        errors.add(
            field,
            format!("is {lower} {} up to {}", money::text(min), money::text(max)),
        );
        return None;
    }
    Some(parsed)
}

/// A quantity: above zero, at most [`QUANTITY_MAX`].
pub fn quantity(errors: &mut FieldErrors, field: &str, value: &DecimalInput) -> Option<Decimal> {
    decimal(
        errors,
        field,
        value,
        Decimal::ZERO,
        Decimal::from(QUANTITY_MAX),
        true,
    )
}

/// A trimmed text of at most `max` characters; empty is absent.
pub fn text(
    errors: &mut FieldErrors,
    field: &str,
    value: Option<&str>,
    max: usize,
) -> Option<String> {
    let value = value.map(str::trim).filter(|v| !v.is_empty())?;
    if value.chars().count() > max {
        errors.add(field, format!("has at most {max} characters"));
    }
    Some(value.to_owned())
}

/// A text that must be given.
pub fn required_text(
    errors: &mut FieldErrors,
    field: &str,
    value: Option<&str>,
    max: usize,
) -> String {
    text(errors, field, value, max).unwrap_or_else(|| {
        errors.add(field, "is required");
        String::new()
    })
}

/// The date as `YYYY-MM-DD`, today when absent.
pub fn date_or_today(errors: &mut FieldErrors, field: &str, value: Option<&str>) -> String {
    dates::format(dates::parse_or_today(errors, field, value))
}

/// `{line, quantity}`: which order line, and how much of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineQuantity {
    #[serde(default)]
    pub line: Option<u32>,
    #[serde(default)]
    pub quantity: Option<DecimalInput>,
}

/// Checks `{line, quantity}` pairs against the order's lines: each line exists and is named
/// once, each quantity is a positive quantity (when absent, `allow` gets `None`), and `allow`
/// accepts it for that line: it answers the quantity to take, or why not (the message about
/// `lines[i].quantity`). Answers (index into `lines`, quantity) for the accepted pairs; every
/// refusal is in `errors`, in the order of the request.
pub fn pick_lines(
    errors: &mut FieldErrors,
    requested: &[LineQuantity],
    lines: &[Line],
    order_number: &str,
    allow: impl Fn(&Line, Option<Decimal>) -> Result<Decimal, String>,
) -> Vec<(usize, Decimal)> {
    let mut picked: Vec<(usize, Decimal)> = Vec::new();
    if requested.is_empty() {
        errors.add("lines", "names at least one line");
    }
    for (position, item) in requested.iter().enumerate() {
        let at = |field: &str| format!("lines[{position}].{field}");
        let index = match item.line {
            None => {
                errors.add(at("line"), "is required");
                None
            }
            Some(line) => match lines.iter().position(|l| l.line == line) {
                None => {
                    errors.add(
                        at("line"),
                        format!("order {order_number} has no line {line}"),
                    );
                    None
                }
                Some(index) if picked.iter().any(|(i, _)| *i == index) => {
                    errors.add(
                        at("line"),
                        format!("names line {line} a second time; give each line once"),
                    );
                    None
                }
                Some(index) => Some(index),
            },
        };
        let quantity = match &item.quantity {
            None => Some(None),
            Some(value) => quantity(errors, &at("quantity"), value).map(Some),
        };
        if let (Some(index), Some(quantity)) = (index, quantity) {
            match allow(&lines[index], quantity) {
                Ok(quantity) => picked.push((index, quantity)),
                Err(message) => errors.add(at("quantity"), message),
            }
        }
    }
    picked
}

/// For [`pick_lines`]: the quantity must be given, and at most `available` of the line.
pub fn at_most(
    quantity: Option<Decimal>,
    available: Decimal,
    message: impl FnOnce() -> String,
) -> Result<Decimal, String> {
    match quantity {
        None => Err("is required".to_owned()),
        Some(quantity) if quantity > available => Err(message()),
        Some(quantity) => Ok(quantity),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::Priced;

    fn number(text: &str) -> DecimalInput {
        DecimalInput::Text(text.to_owned())
    }

    #[test]
    fn quantities_are_positive_exact_and_bounded() {
        let mut errors = FieldErrors::new();
        assert_eq!(
            quantity(&mut errors, "q", &number("2.50")),
            Some(Decimal::new(25, 1))
        );
        assert!(errors.is_empty());
        for bad in ["0", "-1", "1.0000001", "2000000", "two"] {
            let mut errors = FieldErrors::new();
            assert_eq!(quantity(&mut errors, "q", &number(bad)), None, "{bad}");
            assert!(!errors.is_empty(), "{bad}");
        }
        let json: DecimalInput = serde_json::from_str("3").expect("a number");
        let mut errors = FieldErrors::new();
        assert_eq!(quantity(&mut errors, "q", &json), Some(Decimal::from(3)));
    }

    #[test]
    fn line_picks_name_each_bad_field_in_request_order() {
        let line = |number: u32| {
            Line::new(
                number,
                Priced {
                    sku: "A".to_owned(),
                    name: "A".to_owned(),
                    unit: "pc".to_owned(),
                    quantity: Decimal::from(2),
                    unit_price: Decimal::ONE,
                    discount_percent: Decimal::ZERO,
                    tax_rate: Decimal::ZERO,
                },
            )
        };
        let lines = [line(1), line(2)];
        let mut errors = FieldErrors::new();
        let requested: Vec<LineQuantity> = serde_json::from_str(
            r#"[{"line": 1, "quantity": "2"}, {"line": 2, "quantity": "3"},
                {"line": 9, "quantity": "1"}, {"line": 1, "quantity": "1"}, {"line": 2}]"#,
        )
        .expect("pairs");
        let picked = pick_lines(&mut errors, &requested, &lines, "SO-000001", |l, q| {
            at_most(q, l.quantity, || "too many".to_owned())
        });
        assert_eq!(picked, [(0, Decimal::from(2))]);
        let fields: Vec<String> = match errors.finish() {
            Err(keel_sdk::Error::Invalid(list)) => list.into_iter().map(|e| e.field).collect(),
            other => panic!("expected a refusal: {other:?}"),
        };
        assert_eq!(
            fields,
            [
                "lines[1].quantity",
                "lines[2].line",
                "lines[3].line",
                "lines[4].quantity"
            ]
        );
    }
}
