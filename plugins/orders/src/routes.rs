//! The HTTP routes of orders: entering, listing, confirming, releasing, shipping and
//! cancelling.

use keel_sdk::router::Params;
use keel_sdk::{Error, FieldErrors, Request, Response, money, parties};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::input::{self, DecimalInput, LineQuantity, NOTE_CHARS_MAX, PRICE_MAX};
use crate::order::{
    self, BY_PARTY, BY_PARTY_STATUS, BY_STATUS, LINES_MAX, Line, ORDERS, Order, Priced, STATUSES,
    Shipment, ShipmentLine, Status, Totals,
};
use crate::{credit, perm, publish, require, require_read};

const SKU_CHARS_MAX: usize = 64;
const NAME_CHARS_MAX: usize = 200;
const UNIT_CHARS_MAX: usize = 20;
const REFERENCE_CHARS_MAX: usize = 100;
/// The unit of a line that names none.
const DEFAULT_UNIT: &str = "pc";
/// Orders a list answers with when the caller names no `limit`, and at most.
const LIST_LIMIT_DEFAULT: u32 = 50;
const LIST_LIMIT_MAX: u32 = 200;
/// The gapless sequence of shipment numbers.
const SHIPMENT_SEQUENCE: &str = "shipment";

/// `POST /orders`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    #[serde(default)]
    party: Option<i64>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    order_date: Option<String>,
    #[serde(default)]
    customer_reference: Option<String>,
    #[serde(default)]
    lines: Option<Vec<NewLine>>,
    /// Confirm (with the credit check) at once instead of leaving a draft.
    #[serde(default)]
    confirm: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewLine {
    #[serde(default)]
    sku: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    quantity: Option<DecimalInput>,
    #[serde(default)]
    unit_price: Option<DecimalInput>,
    #[serde(default)]
    discount_percent: Option<DecimalInput>,
    #[serde(default)]
    tax_rate: Option<DecimalInput>,
}

/// The party's name and default currency, if it may take orders; else why not, on `party`.
fn customer(id: i64) -> Result<(String, Option<String>), Error> {
    let json = match parties::get(id) {
        Ok(json) => json,
        Err(Error::NotFound(_)) => {
            return Err(Error::invalid("party", format!("there is no party {id}")));
        }
        Err(other) => return Err(other),
    };
    let party: Value = serde_json::from_str(&json)
        .map_err(|e| Error::Internal(format!("the host's party {id} is not JSON: {e}")))?;
    let status = party["status"].as_str().unwrap_or("active");
    if status != "active" {
        return Err(Error::invalid(
            "party",
            format!(
                "party {id} is {status}; orders are taken only for active parties \
                 (reactivate it first)"
            ),
        ));
    }
    Ok((
        party["name"].as_str().unwrap_or_default().to_owned(),
        party["default_currency"].as_str().map(str::to_owned),
    ))
}

fn is_currency(text: &str) -> bool {
    text.len() == 3 && text.bytes().all(|b| b.is_ascii_uppercase())
}

fn read_line(errors: &mut FieldErrors, position: usize, new: &NewLine) -> Option<Priced> {
    let at = |field: &str| format!("lines[{position}].{field}");
    let sku = input::required_text(errors, &at("sku"), new.sku.as_deref(), SKU_CHARS_MAX);
    let name = input::required_text(errors, &at("name"), new.name.as_deref(), NAME_CHARS_MAX);
    let unit = input::text(errors, &at("unit"), new.unit.as_deref(), UNIT_CHARS_MAX)
        .unwrap_or_else(|| DEFAULT_UNIT.to_owned());
    let quantity = match &new.quantity {
        Some(value) => input::quantity(errors, &at("quantity"), value),
        None => {
            errors.add(at("quantity"), "is required");
            None
        }
    };
    let unit_price = match &new.unit_price {
        Some(value) => input::decimal(
            errors,
            &at("unit_price"),
            value,
            Decimal::ZERO,
            Decimal::from(PRICE_MAX),
            false,
        ),
        None => {
            errors.add(at("unit_price"), "is required");
            None
        }
    };
    let percent = |errors: &mut FieldErrors, field: &str, value: &Option<DecimalInput>| match value
    {
        None => Some(Decimal::ZERO),
        Some(value) => input::decimal(
            errors,
            &at(field),
            value,
            Decimal::ZERO,
            Decimal::ONE_HUNDRED,
            false,
        ),
    };
    let discount_percent = percent(errors, "discount_percent", &new.discount_percent);
    let tax_rate = percent(errors, "tax_rate", &new.tax_rate);
    Some(Priced {
        sku,
        name,
        unit,
        quantity: quantity?,
        unit_price: unit_price?,
        discount_percent: discount_percent?,
        tax_rate: tax_rate?,
    })
}

/// A draft order from a request, checked field by field; numbered by the caller.
fn draft(new: &NewOrder) -> Result<Order, Error> {
    let mut errors = FieldErrors::new();
    let (party_name, default_currency, party_found) = match new.party.map(customer) {
        None => {
            errors.add("party", "is required");
            (String::new(), None, false)
        }
        Some(Ok((name, currency))) => (name, currency, true),
        Some(Err(error)) => {
            errors.absorb(error)?;
            (String::new(), None, false)
        }
    };
    let currency = match (new.currency.as_deref().map(str::trim), default_currency) {
        (Some(given), _) if is_currency(given) => given.to_owned(),
        (Some(_), _) => {
            errors.add("currency", "is three upper-case letters, e.g. EUR");
            String::new()
        }
        (None, Some(default)) => default,
        (None, None) => {
            // Without the party there is no default to miss: its error says enough.
            if party_found {
                errors.add(
                    "currency",
                    "is required: the party has no default currency to take",
                );
            }
            String::new()
        }
    };
    let order_date = input::date_or_today(&mut errors, "order_date", new.order_date.as_deref());
    let customer_reference = input::text(
        &mut errors,
        "customer_reference",
        new.customer_reference.as_deref(),
        REFERENCE_CHARS_MAX,
    );
    let mut lines = Vec::new();
    match &new.lines {
        None => errors.add("lines", "is required"),
        Some(items) if items.is_empty() => errors.add("lines", "an order has at least one line"),
        Some(items) if items.len() > LINES_MAX => {
            errors.add("lines", format!("has at most {LINES_MAX} lines"));
        }
        Some(items) => {
            for (position, item) in items.iter().enumerate() {
                if let Some(priced) = read_line(&mut errors, position, item) {
                    let number = u32::try_from(position + 1).unwrap_or(u32::MAX);
                    lines.push(Line::new(number, priced));
                }
            }
        }
    }
    errors.finish()?;
    Ok(Order {
        number: String::new(),
        status: Status::Draft,
        party: new.party.unwrap_or_default(),
        party_name,
        currency,
        order_date,
        owner: keel_sdk::user_id(),
        quote: None,
        customer_reference,
        totals: Totals::of(&lines),
        lines,
        credit: None,
        hold: None,
        shipments: Vec::new(),
        history: Vec::new(),
    })
}

/// `POST /orders`: a draft, or with `confirm: true` a confirmed or held order.
pub fn create(request: &Request, _: &Params) -> Result<Response, Error> {
    require(perm::ORDERS_WRITE, "entering orders")?;
    let new: NewOrder = request.json()?;
    let mut order = draft(&new)?;
    order.number = order::next_number()?;
    order.record("created", None);
    ORDERS.put(&order.number, &order)?;
    publish(
        "orders.order.created",
        &order.subject(),
        &order::view(&order),
    )?;
    if new.confirm {
        credit::confirm(&mut order)?;
    }
    Ok(Response::json(201, &order::view(&order)))
}

/// `GET /orders/{number}`.
pub fn show(_: &Request, params: &Params) -> Result<Response, Error> {
    require_read("reading orders")?;
    let order = order::load(params.get("number")?)?;
    Ok(Response::json(200, &order::view(&order)))
}

/// `GET /orders?party=&status=&limit=&after=`: a party's orders newest first, or all of a
/// status, or every order in number order.
pub fn list(request: &Request, _: &Params) -> Result<Response, Error> {
    require_read("reading orders")?;
    let mut errors = FieldErrors::new();
    let party = match request.query_param("party").filter(|p| !p.is_empty()) {
        None => None,
        Some(text) => text.parse::<i64>().map_or_else(
            |_| {
                errors.add("party", "is a party id");
                None
            },
            Some,
        ),
    };
    let status = match request.query_param("status").filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Status::parse(&text).or_else(|| {
            let names: Vec<&str> = STATUSES.iter().map(|(_, n)| *n).collect();
            errors.add("status", format!("is one of {}", names.join(", ")));
            None
        }),
    };
    let limit = match request.query_param("limit").filter(|l| !l.is_empty()) {
        None => LIST_LIMIT_DEFAULT,
        Some(text) => match text.parse::<u32>() {
            Ok(limit) if (1..=LIST_LIMIT_MAX).contains(&limit) => limit,
            _ => {
                errors.add(
                    "limit",
                    format!("is a whole number from 1 to {LIST_LIMIT_MAX}"),
                );
                LIST_LIMIT_DEFAULT
            }
        },
    };
    errors.finish()?;
    let after = request.query_param("after").filter(|a| !a.is_empty());
    let found = |index: &str, equals: &[Value]| {
        ORDERS.find_range(index, equals, None, None, true, after.as_deref(), limit)
    };
    let (orders, next) = match (party, status) {
        (Some(party), Some(status)) => {
            let page = found(BY_PARTY_STATUS, &[json!(party), json!(status.name())])?;
            (page.items, page.next)
        }
        (Some(party), None) => {
            let page = found(BY_PARTY, &[json!(party)])?;
            (page.items, page.next)
        }
        (None, Some(status)) => {
            let page = found(BY_STATUS, &[json!(status.name())])?;
            (page.items, page.next)
        }
        (None, None) => {
            // One more than asked for says whether there is a next page.
            let mut items = ORDERS.range(None, None, after.as_deref(), limit + 1)?;
            let more = items.len() > limit as usize;
            items.truncate(limit as usize);
            let next = more
                .then(|| items.last().map(|(key, _)| key.clone()))
                .flatten();
            (items, next)
        }
    };
    let items: Vec<Value> = orders.iter().map(|(_, o)| order::view(o)).collect();
    Ok(Response::json(
        200,
        &json!({ "items": items, "next": next }),
    ))
}

/// `POST /orders/{number}/confirm`: the credit check, then confirmed or on hold.
pub fn confirm(_: &Request, params: &Params) -> Result<Response, Error> {
    require(perm::ORDERS_WRITE, "confirming orders")?;
    let mut order = order::load_for_update(params.get("number")?)?;
    if order.status != Status::Draft {
        return Err(Error::Conflict(format!(
            "order {} is {}; only a draft is confirmed",
            order.number,
            order.status.name()
        )));
    }
    credit::confirm(&mut order)?;
    Ok(Response::json(200, &order::view(&order)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Release {
    #[serde(default)]
    note: Option<String>,
}

/// `POST /orders/{number}/release {note?}`: lets a held order go ahead.
pub fn release(request: &Request, params: &Params) -> Result<Response, Error> {
    require(perm::CREDIT_RELEASE, "releasing an order held for credit")?;
    let body: Release = request.optional_json()?;
    let mut errors = FieldErrors::new();
    let note = input::text(&mut errors, "note", body.note.as_deref(), NOTE_CHARS_MAX);
    errors.finish()?;
    let mut order = order::load_for_update(params.get("number")?)?;
    if order.status != Status::OnHold {
        return Err(Error::Conflict(format!(
            "order {} is {}; only an order on hold is released",
            order.number,
            order.status.name()
        )));
    }
    order.status = Status::Confirmed;
    order.hold = None;
    order.record("released", note);
    ORDERS.put(&order.number, &order)?;
    publish(
        "orders.order.released",
        &order.subject(),
        &order::view(&order),
    )?;
    Ok(Response::json(200, &order::view(&order)))
}

/// A 409 for an order whose status does not allow `doing`, saying what to do instead.
fn not_now(order: &Order, doing: &str) -> Error {
    let number = &order.number;
    let what_to_do = match order.status {
        Status::Draft => format!("confirm it first (POST /orders/{number}/confirm)"),
        Status::OnHold => format!(
            "it is held for credit ({}); a user with the permission {} releases it \
             (POST /orders/{number}/release)",
            order.hold.as_ref().map_or("", |h| h.reason.as_str()),
            perm::CREDIT_RELEASE
        ),
        Status::Cancelled => "a cancelled order stays cancelled".to_owned(),
        Status::Shipped => "everything on it has shipped".to_owned(),
        Status::Confirmed | Status::PartiallyShipped => String::new(),
    };
    Error::Conflict(format!(
        "order {number} is {} and cannot be {doing}: {what_to_do}",
        order.status.name()
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewShipment {
    #[serde(default)]
    date: Option<String>,
    /// Absent: everything outstanding.
    #[serde(default)]
    lines: Option<Vec<LineQuantity>>,
}

/// `POST /orders/{number}/shipments {date?, lines?}`: ships the quantities named, or all that
/// is outstanding.
pub fn ship(request: &Request, params: &Params) -> Result<Response, Error> {
    require(perm::SHIPMENTS_WRITE, "shipping orders")?;
    let body: NewShipment = request.optional_json()?;
    let mut order = order::load_for_update(params.get("number")?)?;
    if !matches!(order.status, Status::Confirmed | Status::PartiallyShipped) {
        return Err(not_now(&order, "shipped"));
    }
    let mut errors = FieldErrors::new();
    let date = input::date_or_today(&mut errors, "date", body.date.as_deref());
    let shipped: Vec<(usize, Decimal)> = match &body.lines {
        None => order
            .lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.outstanding() > Decimal::ZERO)
            .map(|(index, l)| (index, l.outstanding()))
            .collect(),
        Some(requested) => input::pick_lines(
            &mut errors,
            requested,
            &order.lines,
            &order.number,
            |line, quantity| {
                input::at_most(quantity, line.outstanding(), || {
                    format!(
                        "is more than the {} of line {} still to ship",
                        money::text(line.outstanding()),
                        line.line
                    )
                })
            },
        ),
    };
    errors.finish()?;
    let number = format!(
        "SH-{:06}",
        keel_sdk::storage::next_number(SHIPMENT_SEQUENCE)?
    );
    let mut shipment_lines = Vec::new();
    for (index, quantity) in shipped {
        let line = &mut order.lines[index];
        line.shipped += quantity;
        shipment_lines.push(ShipmentLine {
            line: line.line,
            quantity,
        });
    }
    let shipment = Shipment {
        number,
        date,
        lines: shipment_lines,
        shipped_by: keel_sdk::user_id(),
    };
    order.shipments.push(shipment.clone());
    order.settle_status();
    order.record("shipped", Some(shipment.number.clone()));
    ORDERS.put(&order.number, &order)?;
    let mut payload = order::view(&order);
    payload["shipment"] = json!(shipment);
    publish("orders.order.shipped", &order.subject(), &payload)?;
    let mut answer = json!(shipment);
    answer["order"] = json!(order.number);
    answer["order_status"] = json!(order.status);
    Ok(Response::json(201, &answer))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cancellation {
    /// Absent: everything not shipped yet.
    #[serde(default)]
    lines: Option<Vec<LineQuantity>>,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /orders/{number}/cancel {lines?, reason}`: cancels quantities not shipped yet.
pub fn cancel(request: &Request, params: &Params) -> Result<Response, Error> {
    require(perm::ORDERS_WRITE, "cancelling orders")?;
    let body: Cancellation = request.json()?;
    let mut order = order::load_for_update(params.get("number")?)?;
    if matches!(order.status, Status::Shipped | Status::Cancelled) {
        return Err(not_now(&order, "cancelled"));
    }
    let mut errors = FieldErrors::new();
    let reason = input::required_text(
        &mut errors,
        "reason",
        body.reason.as_deref(),
        NOTE_CHARS_MAX,
    );
    let cancelled: Vec<(usize, Decimal)> = match &body.lines {
        None => order
            .lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.outstanding() > Decimal::ZERO)
            .map(|(index, l)| (index, l.outstanding()))
            .collect(),
        Some(requested) => input::pick_lines(
            &mut errors,
            requested,
            &order.lines,
            &order.number,
            |line, quantity| match quantity {
                // Absent: all of the line not shipped yet.
                None if line.outstanding() > Decimal::ZERO => Ok(line.outstanding()),
                None => Err(format!(
                    "line {} has nothing left to cancel: all of it is shipped or cancelled",
                    line.line
                )),
                quantity => input::at_most(quantity, line.outstanding(), || {
                    format!(
                        "is more than the {} of line {} not shipped yet; shipped goods are \
                             returned, not cancelled",
                        money::text(line.outstanding()),
                        line.line
                    )
                }),
            },
        ),
    };
    errors.finish()?;
    let mut summary = Vec::new();
    for (index, quantity) in &cancelled {
        let line = &mut order.lines[*index];
        line.cancelled += *quantity;
        summary.push(json!({ "line": line.line, "quantity": money::text(*quantity) }));
    }
    order.settle_status();
    if order.status == Status::Cancelled {
        // Nothing is left to release.
        order.hold = None;
    }
    order.record("cancelled", Some(reason.clone()));
    ORDERS.put(&order.number, &order)?;
    let mut payload = order::view(&order);
    payload["cancellation"] = json!({ "reason": reason, "lines": summary });
    publish("orders.order.cancelled", &order.subject(), &payload)?;
    Ok(Response::json(200, &order::view(&order)))
}
