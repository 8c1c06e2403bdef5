//! Returns: a return merchandise authorization (RMA) for goods that were invoiced, and its
//! receipt, which counts the goods back on the order and asks the invoicing plugin for the
//! credit note (operation `invoicing/credit-note`) in the same transaction: if invoicing
//! refuses, nothing of the receipt is kept.

use keel_sdk::money;
use keel_sdk::router::Params;
use keel_sdk::storage::{self, Collection};
use keel_sdk::{Error, FieldErrors, Request, Response, calls};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::input::{self, LineQuantity, NOTE_CHARS_MAX};
use crate::order::{self, ORDERS};
use crate::{perm, publish, require};

/// Every RMA, keyed by its number.
pub const RETURNS: Collection<Rma> = Collection::new("returns");
pub const BY_ORDER: &str = "by-order";
/// The gapless sequence of RMA numbers.
const NUMBER_SEQUENCE: &str = "return";
/// RMAs of one order read per storage call.
const PAGE_ITEMS: u32 = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RmaStatus {
    /// The customer may send the goods back.
    Authorized,
    /// The goods arrived and were credited.
    Received,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RmaLine {
    /// The order line.
    pub line: u32,
    pub sku: String,
    pub name: String,
    pub unit: String,
    #[serde(with = "money::canonical")]
    pub quantity: Decimal,
    #[serde(with = "money::canonical")]
    pub unit_price: Decimal,
    #[serde(with = "money::canonical")]
    pub discount_percent: Decimal,
    #[serde(with = "money::canonical")]
    pub tax_rate: Decimal,
}

/// The credit note invoicing made for the returned goods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditNote {
    pub number: String,
    pub total: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rma {
    pub number: String,
    pub order: String,
    pub party: i64,
    pub currency: String,
    pub status: RmaStatus,
    /// The day the return was authorized.
    pub date: String,
    pub reason: String,
    pub lines: Vec<RmaLine>,
    pub authorized_by: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_on: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_by: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit_note: Option<CreditNote>,
}

fn not_found(number: &str) -> Error {
    Error::NotFound(format!("there is no return {number}"))
}

/// Quantities of the order's lines under RMAs authorized but not yet received.
fn pending_returns(order: &str) -> Result<Vec<(u32, Decimal)>, Error> {
    let mut pending: Vec<(u32, Decimal)> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = RETURNS.find(BY_ORDER, &[json!(order)], after.as_deref(), PAGE_ITEMS)?;
        for (_, rma) in page.items {
            if rma.status != RmaStatus::Authorized {
                continue;
            }
            for line in rma.lines {
                match pending.iter_mut().find(|(l, _)| *l == line.line) {
                    Some((_, sum)) => *sum += line.quantity,
                    None => pending.push((line.line, line.quantity)),
                }
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(pending),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewReturn {
    #[serde(default)]
    date: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    lines: Option<Vec<LineQuantity>>,
}

/// `POST /orders/{number}/returns {date?, reason, lines}`: authorizes the return of invoiced
/// goods; answers the RMA.
pub fn authorize(request: &Request, params: &Params) -> Result<Response, Error> {
    require(perm::RETURNS_WRITE, "authorizing returns")?;
    let body: NewReturn = request.json()?;
    // Reserved: a concurrent authorization of the same goods waits for this one.
    let order = order::load_for_update(params.get("number")?)?;
    let mut errors = FieldErrors::new();
    let date = input::date_or_today(&mut errors, "date", body.date.as_deref());
    let reason = input::required_text(
        &mut errors,
        "reason",
        body.reason.as_deref(),
        NOTE_CHARS_MAX,
    );
    let pending = pending_returns(&order.number)?;
    let mut lines = Vec::new();
    match &body.lines {
        None => errors.add("lines", "is required: which lines, and how much of each"),
        Some(requested) => {
            let picked = input::pick_lines(
                &mut errors,
                requested,
                &order.lines,
                &order.number,
                |line, quantity| {
                    let authorized = pending
                        .iter()
                        .find(|(l, _)| *l == line.line)
                        .map_or(Decimal::ZERO, |(_, q)| *q);
                    let returnable = line.returnable() - authorized;
                    input::at_most(quantity, returnable, || {
                        format!(
                            "is more than can be returned of line {}: {} invoiced, {} returned \
                             and {} already authorized for return leave {}",
                            line.line,
                            money::text(line.invoiced),
                            money::text(line.returned),
                            money::text(authorized),
                            money::text(returnable.max(Decimal::ZERO))
                        )
                    })
                },
            );
            lines.extend(picked.into_iter().map(|(index, quantity)| {
                let line = &order.lines[index];
                RmaLine {
                    line: line.line,
                    sku: line.sku.clone(),
                    name: line.name.clone(),
                    unit: line.unit.clone(),
                    quantity,
                    unit_price: line.unit_price,
                    discount_percent: line.discount_percent,
                    tax_rate: line.tax_rate,
                }
            }));
        }
    }
    errors.finish()?;
    let rma = Rma {
        number: format!("RMA-{:06}", storage::next_number(NUMBER_SEQUENCE)?),
        order: order.number.clone(),
        party: order.party,
        currency: order.currency.clone(),
        status: RmaStatus::Authorized,
        date,
        reason,
        lines,
        authorized_by: keel_sdk::user_id(),
        received_on: None,
        received_by: None,
        credit_note: None,
    };
    RETURNS.put(&rma.number, &rma)?;
    Ok(Response::json(201, &rma))
}

/// `GET /returns/{number}`.
pub fn show(_: &Request, params: &Params) -> Result<Response, Error> {
    if !keel_sdk::allowed(perm::RETURNS_WRITE) {
        crate::require_read("reading returns")?;
    }
    let number = params.get("number")?;
    let rma = RETURNS.get(number)?.ok_or_else(|| not_found(number))?;
    Ok(Response::json(200, &rma))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Receipt {
    #[serde(default)]
    date: Option<String>,
}

/// What `invoicing/credit-note` answers (it says more; this is what the RMA keeps).
#[derive(Debug, Deserialize)]
struct CreditNoteAnswer {
    number: String,
    total: String,
}

/// `POST /returns/{number}/receive {date?}`: the goods are back; credits them through the
/// invoicing plugin and answers the RMA with its credit note.
pub fn receive(request: &Request, params: &Params) -> Result<Response, Error> {
    require(perm::RETURNS_WRITE, "receiving returns")?;
    let body: Receipt = request.optional_json()?;
    let mut errors = FieldErrors::new();
    let date = input::date_or_today(&mut errors, "date", body.date.as_deref());
    errors.finish()?;
    let number = params.get("number")?;
    let mut rma = RETURNS
        .get_for_update(number)?
        .ok_or_else(|| not_found(number))?;
    if rma.status != RmaStatus::Authorized {
        return Err(Error::Conflict(format!(
            "return {number} was received already (credit note {}); an RMA is received once",
            rma.credit_note
                .as_ref()
                .map_or("none", |c| c.number.as_str())
        )));
    }
    let mut order = order::load_for_update(&rma.order)?;
    let mut errors = FieldErrors::new();
    for (position, returned) in rma.lines.iter().enumerate() {
        let Some(line) = order.lines.iter_mut().find(|l| l.line == returned.line) else {
            return Err(Error::Internal(format!(
                "return {number} names line {} that order {} does not have",
                returned.line, order.number
            )));
        };
        // An invoice cancelled since the authorization gave its quantities back.
        if returned.quantity > line.returnable() {
            errors.add(
                format!("lines[{position}].quantity"),
                format!(
                    "is more than the {} of line {} invoiced and not returned now; was an \
                     invoice cancelled since the return was authorized?",
                    money::text(line.returnable()),
                    line.line
                ),
            );
        } else {
            line.returned += returned.quantity;
        }
    }
    errors.finish()?;
    let input = json!({
        "party": rma.party,
        "currency": rma.currency,
        "order": rma.order,
        "rma": rma.number,
        "reason": rma.reason,
        "date": date,
        "lines": rma.lines.iter().map(|l| json!({
            "order_line": l.line,
            "sku": l.sku,
            "name": l.name,
            "unit": l.unit,
            "quantity": money::text(l.quantity),
            "unit_price": money::text(l.unit_price),
            "discount_percent": money::text(l.discount_percent),
            "tax_rate": money::text(l.tax_rate),
        })).collect::<Vec<_>>(),
    });
    let answer = calls::invoke("invoicing", "credit-note", &input.to_string())?;
    let credit_note: CreditNoteAnswer = serde_json::from_str(&answer).map_err(|e| {
        Error::Internal(format!("invoicing/credit-note answered unexpectedly: {e}"))
    })?;
    rma.status = RmaStatus::Received;
    rma.received_on = Some(date);
    rma.received_by = keel_sdk::user_id();
    rma.credit_note = Some(CreditNote {
        number: credit_note.number.clone(),
        total: credit_note.total,
    });
    order.record(
        "returned",
        Some(format!(
            "{} (credit note {})",
            rma.number, credit_note.number
        )),
    );
    ORDERS.put(&order.number, &order)?;
    RETURNS.put(&rma.number, &rma)?;
    // Under the order's subject: subscribers see it in order with the order's own events.
    publish("orders.return.received", &order.subject(), &rma)?;
    Ok(Response::json(200, &rma))
}
