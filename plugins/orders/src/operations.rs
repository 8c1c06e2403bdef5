//! Operations other plugins call (`calls.invoke`), with JSON in and out. The host has checked
//! the caller's grant (`call:orders/<operation>`); the call acts for the caller's user.
//!
//! - `party-orders` `{party, limit?}` → `{"orders": [...]}`, newest first (sfa's customer view);
//! - `invoice-lines` `{order, lines?}` → the quantities now invoiced, with their prices
//!   (invoicing, when it invoices an order);
//! - `uninvoice-lines` `{order, lines}` → `{}` (invoicing, when it cancels an invoice).

use keel_sdk::Error;
use keel_sdk::FieldErrors;
use keel_sdk::money;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::input::{self, LineQuantity};
use crate::order::{self, BY_PARTY, ORDERS};
use crate::require_read;

/// Orders `party-orders` answers with when the caller names no `limit`, and at most.
const PARTY_ORDERS_DEFAULT: u32 = 10;
const PARTY_ORDERS_MAX: u32 = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartyOrders {
    party: i64,
    #[serde(default)]
    limit: Option<u32>,
}

/// `party-orders`: the party's most recent orders, in short.
pub fn party_orders(input: &str) -> Result<String, Error> {
    require_read("reading a party's orders")?;
    let request: PartyOrders = keel_sdk::operation_input(input)?;
    let limit = request.limit.unwrap_or(PARTY_ORDERS_DEFAULT);
    if !(1..=PARTY_ORDERS_MAX).contains(&limit) {
        return Err(Error::invalid(
            "limit",
            format!("is a whole number from 1 to {PARTY_ORDERS_MAX}"),
        ));
    }
    let page = ORDERS.find_range(
        BY_PARTY,
        &[json!(request.party)],
        None,
        None,
        true,
        None,
        limit,
    )?;
    let orders: Vec<Value> = page
        .items
        .iter()
        .map(|(_, o)| {
            let invoiced = o.invoiced_value();
            json!({
                "number": o.number,
                "status": o.status,
                "order_date": o.order_date,
                "currency": o.currency,
                "total": money::cents_text(o.totals.total),
                "quote": o.quote,
                "invoiced_amount": (!invoiced.is_zero()).then(|| money::cents_text(invoiced)),
            })
        })
        .collect();
    Ok(json!({ "orders": orders }).to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvoiceLines {
    order: String,
    /// Absent: every shipped quantity not invoiced yet.
    #[serde(default)]
    lines: Option<Vec<LineQuantity>>,
}

/// `invoice-lines`: marks shipped quantities invoiced and answers what to invoice. The order
/// is reserved, so concurrent invoicing of the same order cannot count a quantity twice.
pub fn invoice_lines(input: &str) -> Result<String, Error> {
    let request: InvoiceLines = keel_sdk::operation_input(input)?;
    let mut order = order::load_for_update(&request.order)?;
    let mut errors = FieldErrors::new();
    let mut invoiced: Vec<(usize, Decimal)> = Vec::new();
    match &request.lines {
        None => {
            invoiced.extend(
                order
                    .lines
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.invoiceable() > Decimal::ZERO)
                    .map(|(index, l)| (index, l.invoiceable())),
            );
            if invoiced.is_empty() {
                errors.add(
                    "lines",
                    format!(
                        "order {} has nothing shipped and not yet invoiced (it is {})",
                        order.number,
                        order.status.name()
                    ),
                );
            }
        }
        Some(requested) => {
            invoiced = input::pick_lines(
                &mut errors,
                requested,
                &order.lines,
                &order.number,
                |line, quantity| {
                    input::at_most(quantity, line.invoiceable(), || {
                        format!(
                            "is more than the {} shipped and not yet invoiced of line {}",
                            money::text(line.invoiceable()),
                            line.line
                        )
                    })
                },
            );
        }
    }
    errors.finish()?;
    let mut lines = Vec::new();
    let mut summary = Vec::new();
    for (index, quantity) in invoiced {
        let line = &mut order.lines[index];
        line.invoiced += quantity;
        summary.push(format!("{} × line {}", money::text(quantity), line.line));
        lines.push(json!({
            "line": line.line,
            "sku": line.sku,
            "name": line.name,
            "unit": line.unit,
            "quantity": money::text(quantity),
            "unit_price": money::text(line.unit_price),
            "discount_percent": money::text(line.discount_percent),
            "tax_rate": money::text(line.tax_rate),
        }));
    }
    order.record("invoiced", Some(summary.join(", ")));
    ORDERS.put(&order.number, &order)?;
    Ok(json!({
        "order": order.number,
        "party": order.party,
        "currency": order.currency,
        "owner": order.owner,
        "quote": order.quote,
        "lines": lines,
    })
    .to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UninvoiceLines {
    order: String,
    lines: Vec<LineQuantity>,
}

/// `uninvoice-lines`: gives invoiced quantities back (an invoice was cancelled), so they can
/// be invoiced again.
pub fn uninvoice_lines(input: &str) -> Result<String, Error> {
    let request: UninvoiceLines = keel_sdk::operation_input(input)?;
    let mut order = order::load_for_update(&request.order)?;
    let mut errors = FieldErrors::new();
    let uninvoiced = input::pick_lines(
        &mut errors,
        &request.lines,
        &order.lines,
        &order.number,
        |line, quantity| {
            input::at_most(quantity, line.invoiced, || {
                format!(
                    "is more than the {} invoiced of line {}",
                    money::text(line.invoiced),
                    line.line
                )
            })
        },
    );
    errors.finish()?;
    let mut summary = Vec::new();
    for (index, quantity) in uninvoiced {
        let line = &mut order.lines[index];
        line.invoiced -= quantity;
        summary.push(format!("{} × line {}", money::text(quantity), line.line));
    }
    order.record("uninvoiced", Some(summary.join(", ")));
    ORDERS.put(&order.number, &order)?;
    Ok(json!({ "order": order.number }).to_string())
}
