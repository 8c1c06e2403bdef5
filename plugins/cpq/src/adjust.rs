//! The extension point `cpq.price-adjust`: after list and tier pricing and before manual
//! discounts, other plugins (contract prices, promotions) may change each line's unit price
//! and discount. The host checks their output against the schema below; [`check`] then checks
//! what a schema cannot say: the same lines, SKUs and quantities, and sensible decimals.

use keel_sdk::{ExtensionPoint, OnFailure};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::amount::{self, PRICE_MAX};
use crate::input;

pub const POINT: &str = "cpq.price-adjust";
/// Wall time each implementation may take: pricing runs while a user waits for the quote,
/// and a lookup in the implementation's own storage takes a few milliseconds.
pub const BUDGET_MS: u32 = 200;
/// Longest note an implementation may attach to a line.
pub const NOTES_CHARS_MAX: usize = 500;

/// One quote line as implementations see it; decimals are strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookLine {
    pub line: u32,
    pub sku: String,
    pub quantity: Decimal,
    pub unit_price: Decimal,
    pub discount_percent: Decimal,
}

/// What an implementation made of a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjusted {
    pub unit_price: Decimal,
    pub discount_percent: Decimal,
    pub notes: Option<String>,
}

/// The schema of the input and of every output: the quote's party, currency and segment and
/// its lines. Strict (`additionalProperties: false`), so a typo in an implementation's output
/// fails loudly instead of being ignored.
pub fn schema(lines_max: usize) -> Value {
    let decimal = json!({ "type": "string", "minLength": 1, "maxLength": 40 });
    json!({
        "type": "object",
        "required": ["party", "currency", "lines"],
        "additionalProperties": false,
        "properties": {
            "party": { "type": "integer" },
            "currency": { "type": "string", "minLength": 3, "maxLength": 3 },
            "segment": { "type": "string" },
            "lines": {
                "type": "array",
                "maxItems": lines_max,
                "items": {
                    "type": "object",
                    "required": ["line", "sku", "quantity", "unit_price", "discount_percent"],
                    "additionalProperties": false,
                    "properties": {
                        "line": { "type": "integer", "minimum": 1 },
                        "sku": { "type": "string", "minLength": 1 },
                        "quantity": decimal,
                        "unit_price": decimal,
                        "discount_percent": decimal,
                        "notes": { "type": "string", "maxLength": NOTES_CHARS_MAX }
                    }
                }
            }
        }
    })
}

pub fn extension_point(lines_max: usize) -> ExtensionPoint {
    let schema = schema(lines_max).to_string();
    ExtensionPoint {
        name: POINT.to_owned(),
        description: "Adjusts the unit prices and discounts of a quote's lines after list and \
                      tier pricing, before manual discounts (contract prices, promotions)"
            .to_owned(),
        input_schema: schema.clone(),
        output_schema: schema,
        on_failure: OnFailure::Fail,
        budget_ms: BUDGET_MS,
    }
}

pub fn input(party: i64, currency: &str, segment: Option<&str>, lines: &[HookLine]) -> Value {
    let mut input = json!({
        "party": party,
        "currency": currency,
        "lines": lines.iter().map(|l| json!({
            "line": l.line,
            "sku": l.sku,
            "quantity": amount::text(l.quantity),
            "unit_price": amount::text(l.unit_price),
            "discount_percent": amount::text(l.discount_percent),
        })).collect::<Vec<_>>(),
    });
    if let Some(segment) = segment {
        input["segment"] = json!(segment);
    }
    input
}

/// Checks the last implementation's output against the input it started from and returns
/// each line's outcome, in order; the error says what was wrong.
pub fn check(
    party: i64,
    currency: &str,
    lines: &[HookLine],
    output: &Value,
) -> Result<Vec<Adjusted>, String> {
    if output["party"] != json!(party) {
        return Err(format!("party {} instead of {party}", output["party"]));
    }
    if output["currency"] != json!(currency) {
        return Err(format!(
            "currency {} instead of {currency}",
            output["currency"]
        ));
    }
    let Some(out_lines) = output["lines"].as_array() else {
        return Err("no lines".to_owned());
    };
    if out_lines.len() != lines.len() {
        return Err(format!(
            "{} lines for a quote of {}; lines are adjusted, never added or removed",
            out_lines.len(),
            lines.len()
        ));
    }
    let price_max = Decimal::from(PRICE_MAX);
    lines
        .iter()
        .zip(out_lines)
        .map(|(before, after)| {
            let at = format!("line {}", before.line);
            if after["line"] != json!(before.line) || after["sku"] != json!(before.sku) {
                return Err(format!(
                    "line {} {} where line {} {} was; lines keep their order and SKU",
                    after["line"], after["sku"], before.line, before.sku
                ));
            }
            let number = |field: &str| {
                input::decimal(&after[field]).map_err(|message| format!("{at}: {field} {message}"))
            };
            if number("quantity")? != before.quantity {
                return Err(format!(
                    "{at}: the quantity changed from {}; quantities are the customer's",
                    amount::text(before.quantity)
                ));
            }
            let unit_price = number("unit_price")?;
            if unit_price < Decimal::ZERO || unit_price > price_max {
                return Err(format!(
                    "{at}: unit_price {} is not between 0 and {PRICE_MAX}",
                    amount::text(unit_price)
                ));
            }
            let discount_percent = number("discount_percent")?;
            if discount_percent < Decimal::ZERO || discount_percent > Decimal::ONE_HUNDRED {
                return Err(format!(
                    "{at}: discount_percent {} is not between 0 and 100",
                    amount::text(discount_percent)
                ));
            }
            Ok(Adjusted {
                unit_price,
                discount_percent,
                notes: after["notes"].as_str().map(str::to_owned),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        text.parse().expect("a decimal")
    }

    fn lines() -> Vec<HookLine> {
        vec![
            HookLine {
                line: 1,
                sku: "A".to_owned(),
                quantity: d("3"),
                unit_price: d("100"),
                discount_percent: d("5"),
            },
            HookLine {
                line: 2,
                sku: "B".to_owned(),
                quantity: d("1.5"),
                unit_price: d("20"),
                discount_percent: Decimal::ZERO,
            },
        ]
    }

    #[test]
    fn unchanged_output_comes_back_as_it_went_in() {
        let input = input(7, "EUR", Some("gold"), &lines());
        assert_eq!(input["lines"][1]["quantity"], "1.5");
        assert_eq!(input["segment"], "gold");
        let outcome = check(7, "EUR", &lines(), &input).expect("valid");
        assert_eq!(outcome[0].unit_price, d("100"));
        assert_eq!(outcome[0].discount_percent, d("5"));
        assert_eq!(outcome[1].notes, None);
    }

    #[test]
    fn changed_prices_discounts_and_notes_are_taken() {
        let mut output = input(7, "EUR", None, &lines());
        output["lines"][0]["unit_price"] = json!("92.50");
        output["lines"][1]["discount_percent"] = json!("10");
        output["lines"][1]["notes"] = json!("promotion");
        let outcome = check(7, "EUR", &lines(), &output).expect("valid");
        assert_eq!(outcome[0].unit_price, d("92.50"));
        assert_eq!(outcome[1].discount_percent, d("10"));
        assert_eq!(outcome[1].notes.as_deref(), Some("promotion"));
    }

    #[test]
    fn what_a_schema_cannot_catch_is_refused() {
        let broken = |change: &dyn Fn(&mut Value)| {
            let mut output = input(7, "EUR", None, &lines());
            change(&mut output);
            check(7, "EUR", &lines(), &output).expect_err("refused")
        };
        assert!(broken(&|o| o["lines"][0]["quantity"] = json!("4")).contains("quantity changed"));
        assert!(broken(&|o| o["lines"][0]["sku"] = json!("Z")).contains("keep their order"));
        assert!(broken(&|o| o["lines"][1]["unit_price"] = json!("-1")).contains("not between"));
        assert!(
            broken(&|o| o["lines"][1]["unit_price"] = json!("cheap")).contains("not a decimal")
        );
        assert!(broken(&|o| o["lines"][0]["discount_percent"] = json!("101")).contains("discount"));
        assert!(
            broken(&|o| {
                o["lines"].as_array_mut().expect("lines").pop();
            })
            .contains("never added or removed")
        );
        assert!(broken(&|o| o["currency"] = json!("USD")).contains("currency"));
        assert!(broken(&|o| o["party"] = json!(8)).contains("party"));
    }

    #[test]
    fn the_schema_uses_only_what_the_host_checks() {
        fn keywords(schema: &Value, found: &mut Vec<String>) {
            if let Value::Object(map) = schema {
                for (key, value) in map {
                    found.push(key.clone());
                    match key.as_str() {
                        "properties" => value
                            .as_object()
                            .into_iter()
                            .flat_map(|p| p.values())
                            .for_each(|v| keywords(v, found)),
                        "items" => keywords(value, found),
                        _ => {}
                    }
                }
            }
        }
        let supported = [
            "type",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "enum",
            "minimum",
            "maximum",
            "minLength",
            "maxLength",
            "minItems",
            "maxItems",
        ];
        let mut found = Vec::new();
        keywords(&schema(100), &mut found);
        assert!(
            found.iter().all(|k| supported.contains(&k.as_str())),
            "{found:?}"
        );
    }
}
