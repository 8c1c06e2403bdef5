//! "Charm pricing" as an implementation of cpq's extension point `cpq.price-adjust`: every
//! unit price of 1 or more is lowered to the nearest price ending in .99 (13.00 becomes 12.99,
//! 12.40 becomes 11.99). It runs after the contract prices (order 20) and is the second hook
//! of the sales benchmark (`host/benches/sales.rs`).

use keel_sdk::{Error, Manifest, Plugin};
use rust_decimal::Decimal;
use serde_json::Value;

struct CharmPrices;

const CENT: Decimal = Decimal::from_parts(1, 0, 0, false, 2);

/// The largest price ending in .99 that is not above `price`.
fn charm(price: Decimal) -> Decimal {
    ((price + CENT).floor() - CENT).max(Decimal::ZERO)
}

impl Plugin for CharmPrices {
    fn manifest() -> Manifest {
        Manifest::new("charm-prices", "1.0.0", "Unit prices end in .99")
            .operations(&["charm"])
            .hook("cpq.price-adjust", "charm", 20)
    }

    fn invoke(operation: String, input: String) -> Result<String, Error> {
        if operation != "charm" {
            return Err(Error::NotFound(format!("no operation {operation:?}")));
        }
        let mut quote: Value = serde_json::from_str(&input)?;
        let lines = quote["lines"]
            .as_array_mut()
            .ok_or_else(|| Error::invalid("lines", "is a list"))?;
        for line in lines {
            let Some(price) = line["unit_price"].as_str() else {
                continue;
            };
            let price: Decimal = price
                .parse()
                .map_err(|_| Error::invalid("unit_price", "is a decimal"))?;
            if price >= Decimal::ONE {
                line["unit_price"] = Value::String(charm(price).to_string());
            }
        }
        Ok(quote.to_string())
    }
}

keel_sdk::export!(CharmPrices);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_go_down_to_the_nearest_99() {
        let d = |s: &str| s.parse::<Decimal>().expect("a decimal");
        assert_eq!(charm(d("13.00")), d("12.99"));
        assert_eq!(charm(d("12.99")), d("12.99"));
        assert_eq!(charm(d("12.40")), d("11.99"));
        assert_eq!(charm(d("1.00")), d("0.99"));
    }
}
