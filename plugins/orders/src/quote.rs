//! Orders from accepted quotes: the cpq plugin publishes `cpq.quote.accepted` with the whole
//! quote; each quote line becomes one order line (a bundle stays one line, at the price the
//! customer accepted), the order keeps the quote's amounts, and it is confirmed at once with
//! the credit check. Delivery is at least once, so a map from quote to order makes a second
//! delivery do nothing.

use keel_sdk::money;
use keel_sdk::storage::Collection;
use keel_sdk::{Error, dates};
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::order::{self, HistoryEntry, Line, ORDERS, Order, Status, Totals};
use crate::{credit, publish};

/// Which order each accepted quote became, keyed by the quote's number.
pub const QUOTE_ORDERS: Collection<String> = Collection::new("quote-orders");

/// The parts of cpq's quote an order needs; the rest of the payload is ignored.
#[derive(Debug, Deserialize)]
struct AcceptedQuote {
    number: String,
    #[serde(default)]
    owner: Option<i64>,
    party: i64,
    #[serde(default)]
    party_name: String,
    currency: String,
    #[serde(default)]
    accepted_on: Option<String>,
    lines: Vec<QuoteLine>,
    totals: QuoteTotals,
}

#[derive(Debug, Deserialize)]
struct QuoteLine {
    line: u32,
    sku: String,
    name: String,
    #[serde(default)]
    unit: String,
    #[serde(with = "money::canonical")]
    quantity: Decimal,
    #[serde(with = "money::canonical")]
    unit_price: Decimal,
    #[serde(with = "money::canonical")]
    discount_percent: Decimal,
    #[serde(with = "money::canonical")]
    tax_rate: Decimal,
    #[serde(with = "money::cents")]
    net_amount: Decimal,
}

#[derive(Debug, Deserialize)]
struct QuoteTotals {
    #[serde(with = "money::cents")]
    net: Decimal,
    #[serde(with = "money::cents")]
    tax: Decimal,
    #[serde(with = "money::cents")]
    total: Decimal,
}

/// The order for an accepted quote, built from its payload (not stored, not numbered).
fn from_quote(quote: AcceptedQuote) -> Result<Order, Error> {
    if quote.lines.is_empty() || quote.lines.len() > order::LINES_MAX {
        return Err(Error::invalid(
            "payload.lines",
            format!(
                "quote {} has {} lines; an order has 1 to {}",
                quote.number,
                quote.lines.len(),
                order::LINES_MAX
            ),
        ));
    }
    let today = dates::format(dates::today());
    let lines = quote
        .lines
        .into_iter()
        .map(|q| Line {
            line: q.line,
            sku: q.sku,
            name: q.name,
            unit: q.unit,
            quantity: q.quantity,
            unit_price: q.unit_price,
            discount_percent: q.discount_percent,
            tax_rate: q.tax_rate,
            // What the customer accepted: the quote prices a bundle from the exact average
            // unit price, which the quote shows rounded, so recomputing could be a cent off.
            net_amount: q.net_amount,
            shipped: Decimal::ZERO,
            cancelled: Decimal::ZERO,
            invoiced: Decimal::ZERO,
            returned: Decimal::ZERO,
        })
        .collect();
    Ok(Order {
        number: String::new(),
        status: Status::Draft,
        party: quote.party,
        party_name: quote.party_name,
        currency: quote.currency,
        order_date: quote.accepted_on.unwrap_or_else(|| today.clone()),
        owner: quote.owner,
        history: vec![HistoryEntry {
            date: today,
            action: "created".to_owned(),
            status: Status::Draft,
            user: None,
            note: Some(format!("from accepted quote {}", quote.number)),
        }],
        quote: Some(quote.number),
        customer_reference: None,
        lines,
        // The quote's totals, taxed per rate as the customer saw them.
        totals: Totals {
            net: quote.totals.net,
            tax: quote.totals.tax,
            total: quote.totals.total,
        },
        credit: None,
        hold: None,
        shipments: Vec::new(),
    })
}

/// Handles `cpq.quote.accepted`: creates and confirms the quote's order, once.
pub fn order_from_accepted(payload: &str) -> Result<(), Error> {
    let quote: AcceptedQuote = serde_json::from_str(payload).map_err(|e| {
        Error::invalid(
            "payload",
            format!("is not the accepted quote expected: {e}"),
        )
    })?;
    // Reserved so that two deliveries of the same quote running at once make one order.
    if QUOTE_ORDERS.get_for_update(&quote.number)?.is_some() {
        return Ok(());
    }
    let quote_number = quote.number.clone();
    let mut order = from_quote(quote)?;
    order.number = order::next_number()?;
    QUOTE_ORDERS.put(&quote_number, &order.number)?;
    ORDERS.put(&order.number, &order)?;
    publish(
        "orders.order.created",
        &order.subject(),
        &order::view(&order),
    )?;
    credit::confirm(&mut order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_quote_becomes_an_order_with_its_lines_and_amounts() {
        let payload = json!({
            "number": "Q-000007", "version": 2, "status": "accepted", "owner": 4, "party": 9,
            "party_name": "Acme", "currency": "EUR", "accepted_on": "2026-03-02",
            "lines": [
                { "line": 1, "sku": "KIT", "name": "Kit", "kind": "bundle", "unit": "pc",
                  "quantity": "2", "unit_price": "1234.5678", "discount_percent": "15",
                  "tax_rate": "19", "net_amount": "2098.77",
                  "components": [{ "sku": "LAPTOP", "name": "Laptop", "quantity": "1", "unit_price": "1000" }] }
            ],
            "totals": { "list": "1", "subtotal": "1", "discount": "0", "net": "2098.77",
                        "tax": "398.77", "total": "2497.54" }
        });
        let quote: AcceptedQuote = serde_json::from_value(payload).expect("a quote");
        let order = from_quote(quote).expect("an order");
        assert_eq!(order.quote.as_deref(), Some("Q-000007"));
        assert_eq!(order.owner, Some(4));
        assert_eq!(order.order_date, "2026-03-02");
        assert_eq!(order.lines.len(), 1);
        assert_eq!(
            order.lines[0].net_amount,
            "2098.77".parse().expect("a decimal")
        );
        assert_eq!(order.totals.total, "2497.54".parse().expect("a decimal"));
    }
}
