//! Payments received from customers and made to vendors: posted cash against receivable or
//! payable, then allocated to open invoices or bills — named ones, or the oldest due first.
//! What no document takes (an overpayment) stays on the payment as the party's credit, to
//! allocate later. Credit notes are applied to invoices the same way.

use keel_sdk::money::{self, Decimal};
use keel_sdk::router::Params;
use keel_sdk::storage::{self, Collection};
use keel_sdk::{Error, FieldErrors, Request, Response, dates, parties};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::documents::{self, Allocation, DOCUMENTS, Document, Kind, Status};
use crate::input;
use crate::settings::Settings;
use crate::{perm, posting};

pub const PAYMENTS: Collection<Payment> = Collection::new("payments");

/// Allocations one request may name.
const ALLOCATIONS_MAX: usize = 500;
const LIST_LIMIT: u32 = 100;

/// Which side of the books: customers pay in, the company pays vendors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Receivable,
    Payable,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Self::Receivable => "payment received",
            Self::Payable => "payment made",
        }
    }

    fn documents(self) -> Kind {
        match self {
            Self::Receivable => Kind::Invoice,
            Self::Payable => Kind::Bill,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Self::Receivable => "PAY",
            Self::Payable => "VPAY",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaymentAllocation {
    /// The invoice's or bill's id.
    pub document: String,
    pub number: String,
    #[serde(with = "money::cents")]
    pub amount: Decimal,
    pub date: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payment {
    pub id: String,
    pub side: Side,
    pub party: i64,
    pub party_name: String,
    pub currency: String,
    #[serde(with = "money::cents")]
    pub amount: Decimal,
    pub date: String,
    pub bank_account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub allocations: Vec<PaymentAllocation>,
    /// Not allocated to any document: the party's credit.
    #[serde(with = "money::cents")]
    pub unallocated: Decimal,
    pub entry: i64,
    pub created_by: Option<i64>,
    /// Credit paid back to the customer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refunds: Vec<Refund>,
}

/// Money paid back out of a customer's credit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refund {
    #[serde(with = "money::cents")]
    pub amount: Decimal,
    pub date: String,
    pub bank_account: String,
    pub entry: i64,
    pub by: Option<i64>,
}

/// `POST …/refund`: how much of the credit to pay back (all of it when absent), when, from
/// which bank account.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    #[serde(default)]
    amount: Option<Decimal>,
    #[serde(default)]
    date: Option<String>,
    #[serde(default)]
    bank_account: Option<String>,
}

/// Pays back up to `available` of a customer's credit from `source` (a payment's or credit
/// note's number) and posts it.
pub fn refund(
    request: &Request,
    party: i64,
    party_name: &str,
    source: &str,
    available: Decimal,
    settings: &Settings,
) -> Result<Refund, Error> {
    let body: RefundRequest = request.optional_json()?;
    if available.is_zero() {
        return Err(Error::Conflict(format!(
            "{source} has no credit left to refund"
        )));
    }
    let mut errors = FieldErrors::new();
    let amount = input::amount(&mut errors, "amount", body.amount.unwrap_or(available));
    if amount > available {
        errors.add(
            "amount",
            format!(
                "is more than the {} of credit left on {source}",
                money::cents_text(available)
            ),
        );
    }
    let date = dates::format(keel_sdk::dates::parse_or_today(
        &mut errors,
        "date",
        body.date.as_deref(),
    ));
    errors.finish()?;
    let bank_account = body
        .bank_account
        .unwrap_or_else(|| settings.accounts.bank.clone());
    let entry = posting::post_refund(
        party,
        party_name,
        source,
        amount,
        &date,
        &bank_account,
        settings,
    )?;
    Ok(Refund {
        amount,
        date,
        bank_account,
        entry,
        by: keel_sdk::user_id(),
    })
}

/// `POST /payments/{id}/refund`: pays back what a customer's payment left as credit.
pub fn refund_payment(request: &Request, params: &Params) -> Result<Response, Error> {
    keel_sdk::require(perm::PAYMENTS_WRITE)?;
    let mut payment = load(Side::Receivable, params.get("id")?, true)?;
    let settings = Settings::load()?;
    let refund = refund(
        request,
        payment.party,
        &payment.party_name.clone(),
        &payment.id.clone(),
        payment.unallocated,
        &settings,
    )?;
    payment.unallocated -= refund.amount;
    payment.refunds.push(refund);
    PAYMENTS.put(&payment.id, &payment)?;
    Ok(Response::json(200, &payment))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllocationRequest {
    /// The invoice's or bill's id.
    document: String,
    amount: Decimal,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentRequest {
    party: i64,
    amount: Decimal,
    #[serde(default)]
    date: Option<String>,
    #[serde(default)]
    currency: Option<String>,
    /// The bank account's code; the settings' bank account when absent.
    #[serde(default)]
    bank_account: Option<String>,
    #[serde(default)]
    reference: Option<String>,
    /// Where the money goes; the oldest due documents first when absent. An empty list keeps
    /// it all as credit.
    #[serde(default)]
    allocations: Option<Vec<AllocationRequest>>,
}

/// Settles `target` by `amount` from the credit note `source` (both reserved by the caller).
pub fn apply(source: &mut Document, target: &mut Document, amount: Decimal) -> Result<(), Error> {
    let date = source.date.clone().max(target.date.clone());
    target.settle(Allocation {
        kind: "credit_note".to_owned(),
        id: source.id.clone(),
        number: source.reference_text(),
        date: date.clone(),
        amount,
    });
    source.settle(Allocation {
        kind: "invoice".to_owned(),
        id: target.id.clone(),
        number: target.reference_text(),
        date,
        amount,
    });
    Ok(())
}

/// Checks that `document` can take `amount` more from `party`.
fn check_target(
    errors: &mut FieldErrors,
    field: &str,
    document: &Document,
    party: i64,
    amount: Decimal,
) -> Result<(), Error> {
    let label = document.kind.label();
    let number = document.reference_text();
    match document.status {
        Status::Cancelled => {
            return Err(Error::Conflict(format!(
                "{label} {number} is cancelled: it cannot be paid"
            )));
        }
        Status::Draft => {
            return Err(Error::Conflict(format!(
                "{label} {number} is a draft: issue it before allocating to it"
            )));
        }
        Status::Paid => {
            return Err(Error::Conflict(format!("{label} {number} is paid already")));
        }
        Status::Issued | Status::PartiallyPaid => {}
    }
    if document.party != party {
        errors.add(
            field,
            format!("{label} {number} is of another party ({})", document.party),
        );
    } else if amount > document.open {
        errors.add(
            format!("{field}.amount"),
            format!(
                "is more than the {} still open on {label} {number}",
                money::cents_text(document.open)
            ),
        );
    }
    Ok(())
}

/// Picks and reserves the documents `available` goes to: those named, or the party's oldest
/// due. Returns each with the amount it takes.
fn targets(
    side: Side,
    party: i64,
    available: Decimal,
    requested: Option<Vec<AllocationRequest>>,
    errors: &mut FieldErrors,
) -> Result<Vec<(Document, Decimal)>, Error> {
    let kind = side.documents();
    let Some(requested) = requested else {
        let mut left = available;
        let mut chosen = Vec::new();
        for document in documents::open_documents(kind, Some(party))? {
            if left.is_zero() {
                break;
            }
            let document = documents::load(kind, &document.id, true)?;
            let amount = left.min(document.open);
            if amount > Decimal::ZERO {
                left -= amount;
                chosen.push((document, amount));
            }
        }
        return Ok(chosen);
    };
    if requested.len() > ALLOCATIONS_MAX {
        errors.add(
            "allocations",
            format!("has at most {ALLOCATIONS_MAX} allocations"),
        );
        return Ok(Vec::new());
    }
    // Reserve in id order, so that two payments never wait for each other.
    let mut order: Vec<usize> = (0..requested.len()).collect();
    order.sort_by(|&a, &b| requested[a].document.cmp(&requested[b].document));
    let mut chosen: Vec<Option<(Document, Decimal)>> = (0..requested.len()).map(|_| None).collect();
    for i in order {
        let request = &requested[i];
        let field = format!("allocations[{i}]");
        let amount = input::amount(errors, &format!("{field}.amount"), request.amount);
        if requested[..i]
            .iter()
            .any(|r| r.document == request.document)
        {
            errors.add(format!("{field}.document"), "is named twice");
            continue;
        }
        let document = match documents::load(kind, &request.document, true) {
            Ok(document) if document.kind == kind => document,
            Ok(_) | Err(Error::NotFound(_)) => {
                errors.add(
                    format!("{field}.document"),
                    format!("there is no {} {}", kind.label(), request.document),
                );
                continue;
            }
            Err(other) => return Err(other),
        };
        check_target(errors, &field, &document, party, amount)?;
        chosen[i] = Some((document, amount));
    }
    let total: Decimal = chosen.iter().flatten().map(|(_, amount)| *amount).sum();
    if total > available {
        errors.add(
            "allocations",
            format!(
                "allocate {} in all, more than the {} available",
                money::cents_text(total),
                money::cents_text(available)
            ),
        );
    }
    Ok(chosen.into_iter().flatten().collect())
}

/// Allocates from `payment` to the chosen documents and stores them.
fn allocate(payment: &mut Payment, chosen: Vec<(Document, Decimal)>) -> Result<Vec<Value>, Error> {
    let mut settled = Vec::with_capacity(chosen.len());
    for (mut document, amount) in chosen {
        let date = payment.date.clone().max(document.date.clone());
        document.settle(Allocation {
            kind: "payment".to_owned(),
            id: payment.id.clone(),
            number: payment.id.clone(),
            date: date.clone(),
            amount,
        });
        if document.status == Status::Paid {
            documents::publish(
                &format!("invoicing.{}.paid", document.kind.name()),
                &document,
            )?;
        }
        payment.allocations.push(PaymentAllocation {
            document: document.id.clone(),
            number: document.reference_text(),
            amount,
            date,
        });
        payment.unallocated -= amount;
        DOCUMENTS.put(&document.id, &document)?;
        settled.push(json!({
            "id": document.id,
            "number": document.number,
            "amount": money::cents_text(amount),
            "open": money::cents_text(document.open),
            "status": document.status,
        }));
    }
    Ok(settled)
}

fn record(side: Side, request: &Request) -> Result<Response, Error> {
    keel_sdk::require(perm::PAYMENTS_WRITE)?;
    let body: PaymentRequest = request.json()?;
    let settings = Settings::load()?;
    let mut errors = FieldErrors::new();
    let amount = input::amount(&mut errors, "amount", body.amount);
    let date = keel_sdk::dates::parse_or_today(&mut errors, "date", body.date.as_deref());
    let base = keel_sdk::ledger::base_currency()?;
    let currency = body
        .currency
        .map(|c| c.trim().to_uppercase())
        .unwrap_or_else(|| base.clone());
    if currency != base {
        errors.add(
            "currency",
            format!("payments are in the company's base currency {base} for now"),
        );
    }
    let reference = body
        .reference
        .as_deref()
        .map(|r| input::text(&mut errors, "reference", r));
    let party_name =
        match parties::get(body.party) {
            Ok(json) => serde_json::from_str::<Value>(&json).map_err(|e| {
                Error::Internal(format!("a party from the host is unreadable: {e}"))
            })?["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            Err(Error::NotFound(_)) => {
                errors.add("party", format!("there is no party {}", body.party));
                String::new()
            }
            Err(other) => return Err(other),
        };
    let chosen = targets(side, body.party, amount, body.allocations, &mut errors)?;
    errors.finish()?;
    let id = format!(
        "{}-{:06}",
        side.prefix(),
        storage::next_number(&format!("payment-{}", side.prefix()))?
    );
    let mut payment = Payment {
        id,
        side,
        party: body.party,
        party_name,
        currency,
        amount,
        date: dates::format(date),
        bank_account: body
            .bank_account
            .unwrap_or_else(|| settings.accounts.bank.clone()),
        reference,
        allocations: Vec::new(),
        unallocated: amount,
        entry: 0,
        created_by: keel_sdk::user_id(),
        refunds: Vec::new(),
    };
    payment.entry = posting::post_payment(&payment, &settings)?;
    let settled = allocate(&mut payment, chosen)?;
    PAYMENTS.put(&payment.id, &payment)?;
    Ok(Response::json(
        201,
        &json!({ "payment": payment, "settled": settled }),
    ))
}

/// `POST /payments`: money received from a customer.
pub fn receive(request: &Request, _params: &Params) -> Result<Response, Error> {
    record(Side::Receivable, request)
}

/// `POST /vendor-payments`: money paid to a vendor.
pub fn pay(request: &Request, _params: &Params) -> Result<Response, Error> {
    record(Side::Payable, request)
}

fn read_permission(side: Side) -> &'static str {
    match side {
        Side::Receivable => perm::INVOICES_READ,
        Side::Payable => perm::BILLS_READ,
    }
}

fn load(side: Side, id: &str, for_update: bool) -> Result<Payment, Error> {
    let payment = if for_update {
        PAYMENTS.get_for_update(id)?
    } else {
        PAYMENTS.get(id)?
    };
    payment
        .filter(|p| p.side == side)
        .ok_or_else(|| Error::NotFound(format!("there is no {} {id}", side.label())))
}

fn get(side: Side, params: &Params) -> Result<Response, Error> {
    keel_sdk::require(read_permission(side))?;
    Ok(Response::json(200, &load(side, params.get("id")?, false)?))
}

/// `GET /payments/{id}`.
pub fn get_received(_request: &Request, params: &Params) -> Result<Response, Error> {
    get(Side::Receivable, params)
}

/// `GET /vendor-payments/{id}`.
pub fn get_made(_request: &Request, params: &Params) -> Result<Response, Error> {
    get(Side::Payable, params)
}

/// A party's payments, newest first.
fn list(side: Side, request: &Request) -> Result<Response, Error> {
    keel_sdk::require(read_permission(side))?;
    let party: i64 = request
        .query_param("party")
        .ok_or_else(|| Error::invalid("party", "is required: the party whose payments to list"))?
        .parse()
        .map_err(|_| Error::invalid("party", "is a party id"))?;
    let after = request.query_param("after").filter(|a| !a.is_empty());
    let page = PAYMENTS.find_range(
        "by-party",
        &[json!(party), json!(side)],
        None,
        None,
        true,
        after.as_deref(),
        LIST_LIMIT,
    )?;
    let items: Vec<Payment> = page.items.into_iter().map(|(_, p)| p).collect();
    Ok(Response::json(
        200,
        &json!({ "items": items, "next": page.next }),
    ))
}

/// `GET /payments?party=`.
pub fn list_received(request: &Request, _params: &Params) -> Result<Response, Error> {
    list(Side::Receivable, request)
}

/// `GET /vendor-payments?party=`.
pub fn list_made(request: &Request, _params: &Params) -> Result<Response, Error> {
    list(Side::Payable, request)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllocateRequest {
    allocations: Vec<AllocationRequest>,
}

/// Allocates what a payment has left to documents.
fn allocate_later(side: Side, request: &Request, params: &Params) -> Result<Response, Error> {
    keel_sdk::require(perm::PAYMENTS_WRITE)?;
    let body: AllocateRequest = request.json()?;
    let mut payment = load(side, params.get("id")?, true)?;
    if payment.unallocated.is_zero() {
        return Err(Error::Conflict(format!(
            "{} {} is allocated in full",
            side.label(),
            payment.id
        )));
    }
    let mut errors = FieldErrors::new();
    let chosen = targets(
        side,
        payment.party,
        payment.unallocated,
        Some(body.allocations),
        &mut errors,
    )?;
    errors.finish()?;
    let settled = allocate(&mut payment, chosen)?;
    PAYMENTS.put(&payment.id, &payment)?;
    Ok(Response::json(
        200,
        &json!({ "payment": payment, "settled": settled }),
    ))
}

/// `POST /payments/{id}/allocate`.
pub fn allocate_received(request: &Request, params: &Params) -> Result<Response, Error> {
    allocate_later(Side::Receivable, request, params)
}

/// `POST /vendor-payments/{id}/allocate`.
pub fn allocate_made(request: &Request, params: &Params) -> Result<Response, Error> {
    allocate_later(Side::Payable, request, params)
}

/// `POST /invoices/{id}/apply` for a credit note: applies what is left of it to invoices of
/// the same customer.
pub fn apply_credit_note(request: &Request, params: &Params) -> Result<Response, Error> {
    keel_sdk::require(perm::INVOICES_WRITE)?;
    let body: AllocateRequest = request.json()?;
    let mut note = documents::load(Kind::Invoice, params.get("id")?, true)?;
    if note.kind != Kind::CreditNote {
        return Err(Error::Conflict(format!(
            "{} is an invoice: only a credit note is applied to invoices",
            note.reference_text()
        )));
    }
    if !note.issued || note.open.is_zero() || note.status == Status::Cancelled {
        return Err(Error::Conflict(format!(
            "credit note {} has nothing left to apply",
            note.reference_text()
        )));
    }
    let mut errors = FieldErrors::new();
    let chosen = targets(
        Side::Receivable,
        note.party,
        note.open,
        Some(body.allocations),
        &mut errors,
    )?;
    errors.finish()?;
    let mut settled = Vec::new();
    for (mut invoice, amount) in chosen {
        apply(&mut note, &mut invoice, amount)?;
        DOCUMENTS.put(&invoice.id, &invoice)?;
        settled.push(json!({ "id": invoice.id, "number": invoice.number,
                             "amount": money::cents_text(amount),
                             "open": money::cents_text(invoice.open) }));
    }
    DOCUMENTS.put(&note.id, &note)?;
    Ok(Response::json(
        200,
        &json!({ "credit_note": note, "settled": settled }),
    ))
}
