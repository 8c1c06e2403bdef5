//! Invoices, credit notes and vendor bills: one kind of record, a document with lines, taxes
//! per rate and totals, that is drafted, issued (numbered and posted), settled by payments and
//! credit notes, or cancelled (its posting reversed).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ops::RangeInclusive;

use keel_sdk::dates::{self, NaiveDate};
use keel_sdk::money::{self, Decimal, round_cents};
use keel_sdk::router::Params;
use keel_sdk::storage::{self, Collection};
use keel_sdk::{Error, FieldErrors, Request, Response, calls, events, parties};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::input::{self, LINES_MAX};
use crate::settings::Settings;
use crate::{PARTY_TAX_CODE_FIELD, perm, posting};

pub const DOCUMENTS: Collection<Document> = Collection::new("documents");

/// The sequence of document ids (drafts have ids, numbers come at issue).
const DOCUMENT_IDS: &str = "document";

/// The sequence of a kind's numbers in its series.
fn series_sequence(kind: Kind, settings: &Settings) -> String {
    format!("{}-{}", kind.name(), kind.series(settings))
}

/// Documents one batch request may create.
pub const BATCH_MAX: usize = 500;
/// Documents a list answers with when the caller names no `limit`, and at most.
const LIST_LIMIT_DEFAULT: u32 = 50;
const LIST_LIMIT_MAX: u32 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Invoice,
    CreditNote,
    Bill,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Invoice => "invoice",
            Self::CreditNote => "credit_note",
            Self::Bill => "bill",
        }
    }

    /// Words for messages: "invoice", "credit note", "bill".
    pub fn label(self) -> &'static str {
        match self {
            Self::Invoice => "invoice",
            Self::CreditNote => "credit note",
            Self::Bill => "bill",
        }
    }

    fn series(self, settings: &Settings) -> &str {
        match self {
            Self::Invoice => &settings.series.invoice,
            Self::CreditNote => &settings.series.credit_note,
            Self::Bill => &settings.series.bill,
        }
    }
}

/// Where a document is in its life. A credit note is `paid` once all of it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Draft,
    Issued,
    PartiallyPaid,
    Paid,
    Cancelled,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    pub line: u32,
    /// The sales order line it invoices or credits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_line: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    pub description: String,
    #[serde(with = "money::canonical")]
    pub quantity: Decimal,
    #[serde(with = "money::canonical")]
    pub unit_price: Decimal,
    #[serde(with = "money::canonical")]
    pub discount_percent: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_code: Option<String>,
    /// Percent.
    #[serde(with = "money::canonical")]
    pub tax_rate: Decimal,
    /// Revenue (invoices, credit notes) or expense (bills) account.
    pub account: String,
    #[serde(with = "money::cents")]
    pub net_amount: Decimal,
    /// Quantity already credited by credit notes (invoices only).
    #[serde(default, with = "money::canonical")]
    pub credited: Decimal,
}

/// Tax of one rate, rounded once per rate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaxLine {
    #[serde(with = "money::canonical")]
    pub rate: Decimal,
    #[serde(with = "money::cents")]
    pub base: Decimal,
    #[serde(with = "money::cents")]
    pub tax: Decimal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Totals {
    #[serde(with = "money::cents")]
    pub net: Decimal,
    #[serde(with = "money::cents")]
    pub tax: Decimal,
    #[serde(with = "money::cents")]
    pub total: Decimal,
}

/// A payment or credit note settling part of a document (or, on a credit note, an invoice
/// it was applied to).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Allocation {
    /// "payment", "credit_note" or "invoice".
    pub kind: String,
    /// The payment's id, or the document's id.
    pub id: String,
    pub number: String,
    pub date: String,
    #[serde(with = "money::cents")]
    pub amount: Decimal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    pub date: String,
    pub action: String,
    pub user: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Document {
    /// The key: a number from its own sequence, assigned at creation (drafts have no number).
    pub id: String,
    pub kind: Kind,
    /// The gapless number of the series, assigned at issue.
    pub number: Option<String>,
    pub status: Status,
    /// False while a draft: indexes keep drafts out of aging.
    pub issued: bool,
    pub party: i64,
    pub party_name: String,
    pub currency: String,
    pub date: String,
    pub due_date: String,
    /// The customer's or vendor's reference (a PO number, the vendor's invoice number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rma: Option<String>,
    /// For a credit note: the invoice it credits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_invoice: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub lines: Vec<Line>,
    pub taxes: Vec<TaxLine>,
    pub totals: Totals,
    /// Paid, credited or applied so far.
    #[serde(with = "money::cents")]
    pub settled: Decimal,
    /// Still owed (invoices, bills) or still to apply (credit notes).
    #[serde(with = "money::cents")]
    pub open: Decimal,
    /// When nothing was left open any more (paid or cancelled); absent while open.
    pub settled_on: Option<String>,
    pub allocations: Vec<Allocation>,
    /// The ledger entry of the issue, and of the cancellation.
    pub entry: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reversal: Option<i64>,
    pub dunning_level: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dunned_on: Option<String>,
    pub created_by: Option<i64>,
    pub history: Vec<Change>,
}

impl Document {
    /// The number once issued, else the draft's id.
    pub fn reference_text(&self) -> String {
        self.number
            .clone()
            .unwrap_or_else(|| format!("draft {}", self.id))
    }

    pub fn record(&mut self, action: &str, note: Option<String>) {
        self.history.push(Change {
            date: dates::format(dates::today()),
            action: action.to_owned(),
            user: keel_sdk::user_id(),
            note,
        });
    }

    /// Adds a settlement and moves the status along.
    pub fn settle(&mut self, allocation: Allocation) {
        self.settled += allocation.amount;
        self.open = self.totals.total - self.settled;
        if self.open.is_zero() {
            self.status = Status::Paid;
            self.settled_on = Some(allocation.date.clone());
        } else {
            self.status = Status::PartiallyPaid;
        }
        self.allocations.push(allocation);
    }

    /// What was still open at the end of `as_of`: nothing before its date or after its
    /// cancellation, else the total less what settled it by then.
    pub fn open_as_of(&self, as_of: &str) -> Decimal {
        if !self.issued || self.date.as_str() > as_of {
            return Decimal::ZERO;
        }
        if self.status == Status::Cancelled
            && self.settled_on.as_deref().is_some_and(|on| on <= as_of)
        {
            return Decimal::ZERO;
        }
        let settled: Decimal = self
            .allocations
            .iter()
            .filter(|a| a.date.as_str() <= as_of)
            .map(|a| a.amount)
            .sum();
        self.totals.total - settled
    }
}

/// A line as a request gives it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineRequest {
    pub description: String,
    #[serde(default)]
    pub sku: Option<String>,
    pub quantity: Decimal,
    pub unit_price: Decimal,
    #[serde(default)]
    pub discount_percent: Option<Decimal>,
    #[serde(default)]
    pub tax_code: Option<String>,
    #[serde(default)]
    pub account: Option<String>,
}

/// `POST /invoices` and `POST /bills`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentRequest {
    pub party: i64,
    #[serde(default)]
    pub date: Option<String>,
    #[serde(default)]
    pub due_date: Option<String>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub reference: Option<String>,
    pub lines: Vec<LineRequest>,
    /// Keep it a draft instead of issuing it at once.
    #[serde(default)]
    pub draft: bool,
    /// A bill whose vendor reference the vendor already has on a bill is refused as a
    /// probable duplicate unless this says it is another one.
    #[serde(default)]
    pub allow_duplicate: bool,
}

/// A line before its tax is decided: what every way of making a document provides.
struct Draft {
    order_line: Option<u32>,
    sku: Option<String>,
    description: String,
    quantity: Decimal,
    unit_price: Decimal,
    discount_percent: Decimal,
    tax_code: Option<String>,
    /// A rate decided before (a sales order's line), used when no code applies.
    tax_rate: Option<Decimal>,
    account: Option<String>,
}

/// What a document's header needs besides its lines.
struct Header {
    kind: Kind,
    party: i64,
    date: Option<String>,
    due_date: Option<String>,
    currency: Option<String>,
    reference: Option<String>,
    order: Option<String>,
    rma: Option<String>,
    credits_invoice: Option<String>,
    reason: Option<String>,
}

/// The party fields a document needs.
#[derive(Clone)]
struct PartyFacts {
    name: String,
    status: String,
    payment_terms_days: Option<u32>,
    tax_code: Option<String>,
}

/// What one call needs again and again — the settings and the parties it read — and the
/// numbers a batch reserved: a billing run of a hundred invoices for one
/// customer reads each once.
pub struct Context {
    pub settings: Settings,
    parties: HashMap<i64, Option<PartyFacts>>,
    reserved: HashMap<String, RangeInclusive<u64>>,
}

impl Context {
    pub fn load() -> Result<Self, Error> {
        Ok(Self {
            settings: Settings::load()?,
            parties: HashMap::new(),
            reserved: HashMap::new(),
        })
    }

    /// Reserves the next `count` numbers of `sequence` for [`Context::number`].
    fn reserve(&mut self, sequence: &str, count: u64) -> Result<(), Error> {
        if count > 0 {
            let numbers = storage::next_numbers(sequence, count)?;
            self.reserved.insert(sequence.to_owned(), numbers);
        }
        Ok(())
    }

    /// The next number of `sequence`: a reserved one, else one taken now.
    fn number(&mut self, sequence: &str) -> Result<u64, Error> {
        match self.reserved.get_mut(sequence).and_then(Iterator::next) {
            Some(number) => Ok(number),
            None => storage::next_number(sequence),
        }
    }

    /// The party, or an error about `party` in `errors` when it is missing or not active.
    fn party(&mut self, errors: &mut FieldErrors, party: i64) -> Result<Option<PartyFacts>, Error> {
        let facts = match self.parties.entry(party) {
            Entry::Occupied(known) => known.get().clone(),
            Entry::Vacant(unknown) => unknown.insert(read_party(party)?).clone(),
        };
        match &facts {
            None => errors.add("party", format!("there is no party {party}")),
            Some(facts) if facts.status != "active" => errors.add(
                "party",
                format!(
                    "party {party} is {}: documents are for active parties only",
                    facts.status
                ),
            ),
            Some(_) => {}
        }
        Ok(facts)
    }
}

fn read_party(party: i64) -> Result<Option<PartyFacts>, Error> {
    let value: Value = match parties::get(party) {
        Ok(json) => serde_json::from_str(&json)
            .map_err(|e| Error::Internal(format!("a party from the host is unreadable: {e}")))?,
        Err(Error::NotFound(_)) => return Ok(None),
        Err(other) => return Err(other),
    };
    Ok(Some(PartyFacts {
        name: value["name"].as_str().unwrap_or_default().to_owned(),
        status: value["status"].as_str().unwrap_or("active").to_owned(),
        payment_terms_days: value["payment_terms_days"]
            .as_u64()
            .and_then(|d| u32::try_from(d).ok()),
        tax_code: value["custom_fields"][PARTY_TAX_CODE_FIELD]
            .as_str()
            .filter(|c| !c.is_empty())
            .map(str::to_owned),
    }))
}

/// Checks a header and lines and computes the document: party, dates, currency, each line's
/// tax (the party's tax code, else the line's, else the order's rate, else the product's,
/// else the default), taxes per rate and totals.
fn build(
    ctx: &mut Context,
    header: Header,
    drafts: Vec<Draft>,
    errors: &mut FieldErrors,
) -> Result<Option<Document>, Error> {
    let party = ctx.party(errors, header.party)?;
    let base = keel_sdk::ledger::base_currency()?;
    let settings = &ctx.settings;
    let currency = header
        .currency
        .map(|c| c.trim().to_uppercase())
        .unwrap_or_else(|| base.clone());
    if currency != base {
        errors.add(
            "currency",
            format!(
                "documents are in the company's base currency {base}; other currencies are not \
                 supported yet"
            ),
        );
    }
    let date = keel_sdk::dates::parse_or_today(errors, "date", header.date.as_deref());
    let terms = party
        .as_ref()
        .and_then(|p| p.payment_terms_days)
        .unwrap_or(settings.payment_terms_days);
    let due_date = match header.due_date.as_deref() {
        Some(text) => {
            let due = keel_sdk::dates::parse_or_today(errors, "due_date", Some(text));
            if due < date {
                errors.add("due_date", "is not before the document's date");
            }
            due
        }
        None => date + chrono_days(terms),
    };
    let reference = header
        .reference
        .as_deref()
        .map(|r| input::text(errors, "reference", r));
    if drafts.is_empty() {
        errors.add("lines", "has at least one line");
    }
    if drafts.len() > LINES_MAX {
        errors.add("lines", format!("has at most {LINES_MAX} lines"));
    }
    let party_tax = party.as_ref().and_then(|p| p.tax_code.clone());
    if let Some(code) = &party_tax
        && settings.tax_code(code).is_none()
    {
        errors.add(
            "party",
            format!(
                "the party's {PARTY_TAX_CODE_FIELD} is {code:?}, which is not one of the tax \
                 codes in the settings"
            ),
        );
    }
    let default_account = match header.kind {
        Kind::Invoice | Kind::CreditNote => &settings.accounts.revenue,
        Kind::Bill => &settings.accounts.expense,
    };
    let mut lines = Vec::with_capacity(drafts.len());
    for (i, draft) in drafts.into_iter().enumerate() {
        let field = |name: &str| format!("lines[{i}].{name}");
        let description = input::text(errors, &field("description"), &draft.description);
        let quantity = input::quantity(errors, &field("quantity"), draft.quantity);
        let unit_price = input::price(errors, &field("unit_price"), draft.unit_price);
        let discount_percent =
            input::percent(errors, &field("discount_percent"), draft.discount_percent);
        let code = party_tax
            .clone()
            .or(draft.tax_code)
            .or_else(|| match draft.tax_rate {
                Some(_) => None,
                None => draft
                    .sku
                    .as_ref()
                    .and_then(|sku| settings.product_tax_codes.get(sku).cloned())
                    .or_else(|| settings.default_tax_code.clone()),
            });
        let tax_rate = match &code {
            Some(code) => match settings.tax_code(code) {
                Some(tax) => tax.rate,
                None => {
                    errors.add(
                        field("tax_code"),
                        format!("{code:?} is not one of the tax codes in the settings"),
                    );
                    Decimal::ZERO
                }
            },
            None => draft.tax_rate.unwrap_or(Decimal::ZERO),
        };
        let account = draft.account.unwrap_or_else(|| default_account.clone());
        let net_amount = round_cents(
            quantity * unit_price * (Decimal::ONE_HUNDRED - discount_percent)
                / Decimal::ONE_HUNDRED,
        );
        lines.push(Line {
            line: i as u32 + 1,
            order_line: draft.order_line,
            sku: draft.sku,
            description,
            quantity,
            unit_price,
            discount_percent,
            tax_code: code,
            tax_rate,
            account,
            net_amount,
            credited: Decimal::ZERO,
        });
    }
    let (Some(party), true) = (party, errors.is_empty()) else {
        return Ok(None);
    };
    let (taxes, totals) = totals(&lines);
    if totals.total <= Decimal::ZERO {
        errors.add("lines", "the document's total is more than zero");
        return Ok(None);
    }
    Ok(Some(Document {
        id: String::new(),
        kind: header.kind,
        number: None,
        status: Status::Draft,
        issued: false,
        party: header.party,
        party_name: party.name,
        currency,
        date: dates::format(date),
        due_date: dates::format(due_date),
        reference,
        order: header.order,
        rma: header.rma,
        credits_invoice: header.credits_invoice,
        reason: header.reason,
        lines,
        taxes,
        settled: Decimal::ZERO,
        open: totals.total,
        totals,
        settled_on: None,
        allocations: Vec::new(),
        entry: None,
        reversal: None,
        dunning_level: 0,
        dunned_on: None,
        created_by: keel_sdk::user_id(),
        history: Vec::new(),
    }))
}

fn chrono_days(days: u32) -> keel_sdk::dates::Days {
    keel_sdk::dates::Days::new(u64::from(days))
}

/// Taxes per rate (each rounded once) and the totals.
fn totals(lines: &[Line]) -> (Vec<TaxLine>, Totals) {
    let mut taxes: Vec<TaxLine> = Vec::new();
    for line in lines {
        match taxes.iter_mut().find(|t| t.rate == line.tax_rate) {
            Some(tax) => tax.base += line.net_amount,
            None => taxes.push(TaxLine {
                rate: line.tax_rate,
                base: line.net_amount,
                tax: Decimal::ZERO,
            }),
        }
    }
    taxes.sort_by_key(|t| t.rate);
    for tax in &mut taxes {
        tax.tax = round_cents(tax.base * tax.rate / Decimal::ONE_HUNDRED);
    }
    let net: Decimal = lines.iter().map(|l| l.net_amount).sum();
    let tax: Decimal = taxes.iter().map(|t| t.tax).sum();
    (
        taxes,
        Totals {
            net: round_cents(net),
            tax: round_cents(tax),
            total: round_cents(net + tax),
        },
    )
}

fn drafts_of(lines: Vec<LineRequest>) -> Vec<Draft> {
    lines
        .into_iter()
        .map(|l| Draft {
            order_line: None,
            sku: l.sku,
            description: l.description,
            quantity: l.quantity,
            unit_price: l.unit_price,
            discount_percent: l.discount_percent.unwrap_or(Decimal::ZERO),
            tax_code: l.tax_code,
            tax_rate: None,
            account: l.account,
        })
        .collect()
}

/// Numbers the document in its series, posts it and marks it issued.
fn issue(document: &mut Document, ctx: &mut Context) -> Result<(), Error> {
    number(document, ctx)?;
    document.entry = Some(posting::post_document(document, &ctx.settings)?);
    announce_issue(document)
}

/// Gives the document its number in the series and marks it issued (not yet posted).
fn number(document: &mut Document, ctx: &mut Context) -> Result<(), Error> {
    let series = document.kind.series(&ctx.settings).to_owned();
    let number = ctx.number(&series_sequence(document.kind, &ctx.settings))?;
    document.number = Some(format!("{series}-{number:06}"));
    document.status = Status::Issued;
    document.issued = true;
    document.record("issued", None);
    Ok(())
}

fn announce_issue(document: &Document) -> Result<(), Error> {
    publish(
        &format!("invoicing.{}.issued", document.kind.name()),
        document,
    )
}

pub fn publish(topic: &str, document: &Document) -> Result<(), Error> {
    let payload = serde_json::to_string(document)
        .map_err(|e| Error::Internal(format!("serializing an event: {e}")))?;
    events::publish(
        topic,
        &format!("{}/{}", document.kind.name(), document.id),
        &payload,
    )?;
    Ok(())
}

/// Gives a new document its id.
fn identify(document: &mut Document, ctx: &mut Context) -> Result<(), Error> {
    document.id = ctx.number(DOCUMENT_IDS)?.to_string();
    document.record("created", None);
    Ok(())
}

/// Stores a new document under the next id, issuing it unless it stays a draft.
fn save_new(mut document: Document, ctx: &mut Context, draft: bool) -> Result<Document, Error> {
    identify(&mut document, ctx)?;
    if !draft {
        issue(&mut document, ctx)?;
    }
    DOCUMENTS.put(&document.id, &document)?;
    Ok(document)
}

/// Checks and computes a new document; not yet identified, issued nor stored.
fn prepare(kind: Kind, request: DocumentRequest, ctx: &mut Context) -> Result<Document, Error> {
    let mut errors = FieldErrors::new();
    let header = Header {
        kind,
        party: request.party,
        date: request.date,
        due_date: request.due_date,
        currency: request.currency,
        reference: request.reference,
        order: None,
        rma: None,
        credits_invoice: None,
        reason: None,
    };
    let built = build(ctx, header, drafts_of(request.lines), &mut errors)?;
    errors.finish()?;
    built.ok_or_else(|| Error::Internal("a document was not built".to_owned()))
}

fn create(kind: Kind, request: DocumentRequest, ctx: &mut Context) -> Result<Document, Error> {
    if kind == Kind::Bill && !request.allow_duplicate {
        refuse_duplicate_bill(request.party, request.reference.as_deref())?;
    }
    let draft = request.draft;
    let document = prepare(kind, request, ctx)?;
    save_new(document, ctx, draft)
}

/// A conflict when the vendor already has a bill (not cancelled) with this reference: the
/// same vendor invoice entered twice would be paid twice.
fn refuse_duplicate_bill(party: i64, reference: Option<&str>) -> Result<(), Error> {
    let Some(reference) = reference.map(str::trim).filter(|r| !r.is_empty()) else {
        return Ok(());
    };
    let page = DOCUMENTS.find(
        "by-reference",
        &[json!(party), json!(Kind::Bill.name()), json!(reference)],
        None,
        LIST_LIMIT_DEFAULT,
    )?;
    match page
        .items
        .iter()
        .find(|(_, bill)| bill.status != Status::Cancelled)
    {
        Some((_, bill)) => Err(Error::Conflict(format!(
            "vendor {party} already has bill {} with the reference {reference:?}; send \
             \"allow_duplicate\": true if this is another bill",
            bill.reference_text()
        ))),
        None => Ok(()),
    }
}

/// `POST /invoices/{id}/refund` for a credit note: pays back what is left of it.
pub fn refund_credit_note(request: &Request, params: &Params) -> Result<Response, Error> {
    keel_sdk::require(perm::PAYMENTS_WRITE)?;
    let mut note = load(Kind::Invoice, params.get("id")?, true)?;
    if note.kind != Kind::CreditNote || !note.issued || note.status == Status::Cancelled {
        return Err(Error::Conflict(format!(
            "{} is not an issued credit note: only a credit note's credit is refunded",
            note.reference_text()
        )));
    }
    let settings = Settings::load()?;
    let source = note.reference_text();
    let refund = crate::payments::refund(
        request,
        note.party,
        &note.party_name.clone(),
        &source,
        note.open,
        &settings,
    )?;
    note.settle(Allocation {
        kind: "refund".to_owned(),
        id: refund.entry.to_string(),
        number: format!("entry {}", refund.entry),
        date: refund.date,
        amount: refund.amount,
    });
    DOCUMENTS.put(&note.id, &note)?;
    Ok(Response::json(200, &note))
}

/// `POST /invoices`.
pub fn create_invoice(request: &Request, _params: &Params) -> Result<Response, Error> {
    create_route(Kind::Invoice, request)
}

/// `POST /bills`.
pub fn create_bill(request: &Request, _params: &Params) -> Result<Response, Error> {
    create_route(Kind::Bill, request)
}

fn create_route(kind: Kind, request: &Request) -> Result<Response, Error> {
    keel_sdk::require(write_permission(kind))?;
    let body: DocumentRequest = request.json()?;
    let document = create(kind, body, &mut Context::load()?)?;
    Ok(Response::json(201, &document))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    invoices: Vec<DocumentRequest>,
}

/// `POST /invoices/batch`: many invoices in one transaction, all or none (a billing run).
/// Their entries go to the ledger in one `post-many`.
pub fn create_invoices(request: &Request, _params: &Params) -> Result<Response, Error> {
    keel_sdk::require(perm::INVOICES_WRITE)?;
    let body: BatchRequest = request.json()?;
    if body.invoices.is_empty() || body.invoices.len() > BATCH_MAX {
        return Err(Error::invalid(
            "invoices",
            format!("has 1 to {BATCH_MAX} invoices"),
        ));
    }
    let mut ctx = Context::load()?;
    // One read and write of each sequence for the whole run.
    let issued = body.invoices.iter().filter(|i| !i.draft).count() as u64;
    ctx.reserve(DOCUMENT_IDS, body.invoices.len() as u64)?;
    let invoice_sequence = series_sequence(Kind::Invoice, &ctx.settings);
    ctx.reserve(&invoice_sequence, issued)?;
    let mut documents = Vec::with_capacity(body.invoices.len());
    for (i, invoice) in body.invoices.into_iter().enumerate() {
        let draft = invoice.draft;
        let mut document = prepare(Kind::Invoice, invoice, &mut ctx)
            .map_err(|e| e.within(&format!("invoices[{i}]")))?;
        identify(&mut document, &mut ctx)?;
        if !draft {
            number(&mut document, &mut ctx)?;
        }
        documents.push(document);
    }
    let issued: Vec<usize> = (0..documents.len())
        .filter(|&i| documents[i].issued)
        .collect();
    if !issued.is_empty() {
        let entries: Vec<_> = issued
            .iter()
            .map(|&i| posting::document_entry(&documents[i], &ctx.settings))
            .collect();
        let ids =
            keel_sdk::ledger::post_many(&entries).map_err(|e| renumber_entries(e, &issued))?;
        for (&i, id) in issued.iter().zip(ids) {
            documents[i].entry = Some(id);
            announce_issue(&documents[i])?;
        }
    }
    let mut created = Vec::with_capacity(documents.len());
    for document in &documents {
        DOCUMENTS.put(&document.id, document)?;
        created.push(json!({
            "id": document.id,
            "number": document.number,
            "total": money::cents_text(document.totals.total),
            "entry": document.entry,
        }));
    }
    Ok(Response::json(201, &json!({ "invoices": created })))
}

/// The ledger's errors about `entries[k]` as errors about the invoice it came from.
fn renumber_entries(error: Error, invoices: &[usize]) -> Error {
    let Error::Invalid(fields) = error else {
        return error;
    };
    Error::Invalid(
        fields
            .into_iter()
            .map(|mut f| {
                if let Some(rest) = f.field.strip_prefix("entries[")
                    && let Some((k, tail)) = rest.split_once(']')
                    && let Some(&i) = k.parse::<usize>().ok().and_then(|k| invoices.get(k))
                {
                    let tail = tail.strip_prefix('.').unwrap_or(tail);
                    f.field = if tail.is_empty() {
                        format!("invoices[{i}]")
                    } else {
                        format!("invoices[{i}].{tail}")
                    };
                }
                f
            })
            .collect(),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderLineRequest {
    line: u32,
    quantity: Decimal,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvoiceOrderRequest {
    order: String,
    #[serde(default)]
    lines: Option<Vec<OrderLineRequest>>,
    #[serde(default)]
    date: Option<String>,
    #[serde(default)]
    due_date: Option<String>,
    #[serde(default)]
    draft: bool,
}

/// What `orders/invoice-lines` answers.
#[derive(Debug, Deserialize)]
struct OrderLines {
    order: String,
    party: i64,
    currency: String,
    lines: Vec<OrderLine>,
}

#[derive(Debug, Deserialize)]
struct OrderLine {
    line: u32,
    sku: String,
    name: String,
    quantity: Decimal,
    unit_price: Decimal,
    #[serde(default)]
    discount_percent: Decimal,
    #[serde(default)]
    tax_rate: Decimal,
}

/// `POST /invoices/from-order`: invoices shipped, not yet invoiced quantities of a sales
/// order (all of them, or the lines named). The orders plugin refuses more than was shipped.
pub fn invoice_order(request: &Request, _params: &Params) -> Result<Response, Error> {
    keel_sdk::require(perm::INVOICES_WRITE)?;
    let body: InvoiceOrderRequest = request.json()?;
    let mut ctx = Context::load()?;
    let mut call_input = json!({ "order": body.order });
    if let Some(lines) = &body.lines {
        call_input["lines"] = lines
            .iter()
            .map(|l| json!({ "line": l.line, "quantity": money::text(l.quantity) }))
            .collect();
    }
    let answer = calls::invoke("orders", "invoice-lines", &call_input.to_string())?;
    let shipped: OrderLines = serde_json::from_str(&answer)
        .map_err(|e| Error::Internal(format!("orders/invoice-lines answered unexpectedly: {e}")))?;
    let drafts = shipped
        .lines
        .into_iter()
        .map(|l| Draft {
            order_line: Some(l.line),
            sku: Some(l.sku),
            description: l.name,
            quantity: l.quantity,
            unit_price: l.unit_price,
            discount_percent: l.discount_percent,
            tax_code: None,
            tax_rate: Some(l.tax_rate),
            account: None,
        })
        .collect();
    let header = Header {
        kind: Kind::Invoice,
        party: shipped.party,
        date: body.date,
        due_date: body.due_date,
        currency: Some(shipped.currency),
        reference: None,
        order: Some(shipped.order),
        rma: None,
        credits_invoice: None,
        reason: None,
    };
    let mut errors = FieldErrors::new();
    let built = build(&mut ctx, header, drafts, &mut errors)?;
    errors.finish()?;
    let document = built.ok_or_else(|| Error::Internal("a document was not built".to_owned()))?;
    let document = save_new(document, &mut ctx, body.draft)?;
    Ok(Response::json(201, &document))
}

/// The document `id` of `kind`, reserved for this call when `for_update`.
pub fn load(kind: Kind, id: &str, for_update: bool) -> Result<Document, Error> {
    let document = if for_update {
        DOCUMENTS.get_for_update(id)?
    } else {
        DOCUMENTS.get(id)?
    };
    document
        .filter(|d| d.kind == kind || (kind == Kind::Invoice && d.kind == Kind::CreditNote))
        .ok_or_else(|| Error::NotFound(format!("there is no {} {id}", kind.label())))
}

fn read_permission(kind: Kind) -> &'static str {
    match kind {
        Kind::Invoice | Kind::CreditNote => perm::INVOICES_READ,
        Kind::Bill => perm::BILLS_READ,
    }
}

fn write_permission(kind: Kind) -> &'static str {
    match kind {
        Kind::Invoice | Kind::CreditNote => perm::INVOICES_WRITE,
        Kind::Bill => perm::BILLS_WRITE,
    }
}

fn get(kind: Kind, params: &Params) -> Result<Response, Error> {
    keel_sdk::require(read_permission(kind))?;
    Ok(Response::json(200, &load(kind, params.get("id")?, false)?))
}

/// `GET /invoices/{id}` (credit notes too).
pub fn get_invoice(_request: &Request, params: &Params) -> Result<Response, Error> {
    get(Kind::Invoice, params)
}

/// `GET /bills/{id}`.
pub fn get_bill(_request: &Request, params: &Params) -> Result<Response, Error> {
    get(Kind::Bill, params)
}

/// Newest first, of one party or of all; `open=true` for what is still open.
fn list(request: &Request, kinds: &[Kind]) -> Result<Response, Error> {
    let kind = match request.query_param("kind").as_deref() {
        None => kinds[0],
        Some(name) => *kinds.iter().find(|k| k.name() == name).ok_or_else(|| {
            let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
            Error::invalid("kind", format!("is one of {}", names.join(", ")))
        })?,
    };
    keel_sdk::require(read_permission(kind))?;
    let limit = match request.query_param("limit") {
        None => LIST_LIMIT_DEFAULT,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=LIST_LIMIT_MAX).contains(l))
            .ok_or_else(|| {
                Error::invalid(
                    "limit",
                    format!("is a whole number from 1 to {LIST_LIMIT_MAX}"),
                )
            })?,
    };
    let after = request.query_param("after").filter(|a| !a.is_empty());
    let open_only = match request.query_param("open").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(Error::invalid("open", "is true or false")),
    };
    let party = match request.query_param("party") {
        None => None,
        Some(text) => Some(
            text.parse::<i64>()
                .map_err(|_| Error::invalid("party", "is a party id"))?,
        ),
    };
    let page = match (party, open_only) {
        (Some(party), true) => DOCUMENTS.find(
            "by-party",
            &[json!(party), json!(kind.name()), json!(true), Value::Null],
            after.as_deref(),
            limit,
        )?,
        (Some(party), false) => DOCUMENTS.find_range(
            "by-party-date",
            &[json!(party), json!(kind.name())],
            None,
            None,
            true,
            after.as_deref(),
            limit,
        )?,
        (None, true) => DOCUMENTS.find(
            "open",
            &[json!(kind.name()), json!(true), Value::Null],
            after.as_deref(),
            limit,
        )?,
        (None, false) => DOCUMENTS.find_range(
            "by-kind-date",
            &[json!(kind.name())],
            None,
            None,
            true,
            after.as_deref(),
            limit,
        )?,
    };
    let items: Vec<Document> = page.items.into_iter().map(|(_, d)| d).collect();
    Ok(Response::json(
        200,
        &json!({ "items": items, "next": page.next }),
    ))
}

/// `GET /invoices?kind=invoice|credit_note&party=&open=&limit=&after=`.
pub fn list_invoices(request: &Request, _params: &Params) -> Result<Response, Error> {
    list(request, &[Kind::Invoice, Kind::CreditNote])
}

/// `GET /bills?party=&open=&limit=&after=`.
pub fn list_bills(request: &Request, _params: &Params) -> Result<Response, Error> {
    list(request, &[Kind::Bill])
}

fn issue_draft(kind: Kind, params: &Params) -> Result<Response, Error> {
    keel_sdk::require(write_permission(kind))?;
    let mut ctx = Context::load()?;
    let mut document = load(kind, params.get("id")?, true)?;
    if document.status != Status::Draft {
        return Err(Error::Conflict(format!(
            "{} {} is already issued",
            document.kind.label(),
            document.reference_text()
        )));
    }
    issue(&mut document, &mut ctx)?;
    DOCUMENTS.put(&document.id, &document)?;
    Ok(Response::json(200, &document))
}

/// `POST /invoices/{id}/issue`.
pub fn issue_invoice(_request: &Request, params: &Params) -> Result<Response, Error> {
    issue_draft(Kind::Invoice, params)
}

/// `POST /bills/{id}/issue`.
pub fn issue_bill(_request: &Request, params: &Params) -> Result<Response, Error> {
    issue_draft(Kind::Bill, params)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    #[serde(default)]
    date: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// A draft is dropped; an issued document nothing has settled yet has its posting
/// reversed. Either way invoiced order quantities go back to the order.
fn cancel(kind: Kind, request: &Request, params: &Params) -> Result<Response, Error> {
    keel_sdk::require(write_permission(kind))?;
    let body: CancelRequest = request.optional_json()?;
    let mut document = load(kind, params.get("id")?, true)?;
    let mut errors = FieldErrors::new();
    let date = keel_sdk::dates::parse_or_today(&mut errors, "date", body.date.as_deref());
    let reason = body
        .reason
        .as_deref()
        .map(|r| input::text(&mut errors, "reason", r));
    errors.finish()?;
    match document.status {
        Status::Cancelled => {
            return Err(Error::Conflict(format!(
                "{} {} is already cancelled",
                document.kind.label(),
                document.reference_text()
            )));
        }
        Status::PartiallyPaid | Status::Paid => {
            return Err(Error::Conflict(format!(
                "{} {} has payments or credits allocated to it: issue a credit note instead",
                document.kind.label(),
                document.reference_text()
            )));
        }
        Status::Draft => {}
        Status::Issued => {
            if document.kind == Kind::CreditNote && document.settled > Decimal::ZERO {
                return Err(Error::Conflict(format!(
                    "credit note {} is applied to invoices and cannot be cancelled",
                    document.reference_text()
                )));
            }
            let date_text = dates::format(date);
            if date_text < document.date {
                return Err(Error::invalid(
                    "date",
                    format!("is not before the document's date {}", document.date),
                ));
            }
            let entry = document
                .entry
                .ok_or_else(|| Error::Internal("an issued document without entry".to_owned()))?;
            let memo = format!("Cancellation of {}", document.reference_text());
            document.reversal = Some(keel_sdk::ledger::reverse(
                entry,
                Some(&date_text),
                Some(&memo),
            )?);
            document.settled_on = Some(date_text);
        }
    }
    if document.settled_on.is_none() {
        document.settled_on = Some(dates::format(date));
    }
    document.status = Status::Cancelled;
    document.open = Decimal::ZERO;
    document.record("cancelled", reason);
    give_back_order_lines(&document)?;
    DOCUMENTS.put(&document.id, &document)?;
    publish(
        &format!("invoicing.{}.cancelled", document.kind.name()),
        &document,
    )?;
    Ok(Response::json(200, &document))
}

/// Quantities a cancelled invoice took from its order become invoiceable again.
fn give_back_order_lines(document: &Document) -> Result<(), Error> {
    let Some(order) = &document.order else {
        return Ok(());
    };
    if document.kind != Kind::Invoice {
        return Ok(());
    }
    let lines: Vec<Value> = document
        .lines
        .iter()
        .filter_map(|l| {
            l.order_line
                .map(|line| json!({ "line": line, "quantity": money::text(l.quantity) }))
        })
        .collect();
    if lines.is_empty() {
        return Ok(());
    }
    calls::invoke(
        "orders",
        "uninvoice-lines",
        &json!({ "order": order, "lines": lines }).to_string(),
    )?;
    Ok(())
}

/// `POST /invoices/{id}/cancel`.
pub fn cancel_invoice(request: &Request, params: &Params) -> Result<Response, Error> {
    cancel(Kind::Invoice, request, params)
}

/// `POST /bills/{id}/cancel`.
pub fn cancel_bill(request: &Request, params: &Params) -> Result<Response, Error> {
    cancel(Kind::Bill, request, params)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditLineRequest {
    line: u32,
    #[serde(default)]
    quantity: Option<Decimal>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditRequest {
    reason: String,
    #[serde(default)]
    date: Option<String>,
    /// The invoice's lines and quantities to credit; every quantity not yet credited when
    /// absent.
    #[serde(default)]
    lines: Option<Vec<CreditLineRequest>>,
}

/// `POST /invoices/{id}/credit-note`: credits lines of an issued invoice (never more than
/// was invoiced) and applies the credit to what the invoice still owes.
pub fn credit_invoice(request: &Request, params: &Params) -> Result<Response, Error> {
    keel_sdk::require(perm::INVOICES_WRITE)?;
    let body: CreditRequest = request.json()?;
    let mut ctx = Context::load()?;
    let mut invoice = load(Kind::Invoice, params.get("id")?, true)?;
    if invoice.kind != Kind::Invoice {
        return Err(Error::Conflict(
            "a credit note is credited by cancelling it".to_owned(),
        ));
    }
    if !invoice.issued || invoice.status == Status::Cancelled {
        return Err(Error::Conflict(format!(
            "invoice {} is {}: only an issued invoice can be credited",
            invoice.reference_text(),
            status_name(invoice.status)
        )));
    }
    let mut errors = FieldErrors::new();
    let reason = input::text(&mut errors, "reason", &body.reason);
    let wanted: Vec<(usize, Decimal)> = match body.lines {
        None => invoice
            .lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.quantity > l.credited)
            .map(|(i, l)| (i, l.quantity - l.credited))
            .collect(),
        Some(lines) => lines
            .iter()
            .enumerate()
            .filter_map(|(i, requested)| {
                let field = format!("lines[{i}]");
                let Some(index) = invoice.lines.iter().position(|l| l.line == requested.line)
                else {
                    errors.add(
                        format!("{field}.line"),
                        format!("the invoice has no line {}", requested.line),
                    );
                    return None;
                };
                let line = &invoice.lines[index];
                let left = line.quantity - line.credited;
                let quantity = requested.quantity.unwrap_or(left);
                let quantity = input::quantity(&mut errors, &format!("{field}.quantity"), quantity);
                if quantity > left {
                    errors.add(
                        format!("{field}.quantity"),
                        format!(
                            "is more than the {} invoiced and not yet credited",
                            money::text(left)
                        ),
                    );
                }
                Some((index, quantity))
            })
            .collect(),
    };
    if wanted.is_empty() {
        errors.add("lines", "every line of the invoice is credited already");
    }
    let drafts = wanted
        .iter()
        .map(|&(index, quantity)| {
            let line = &invoice.lines[index];
            Draft {
                order_line: line.order_line,
                sku: line.sku.clone(),
                description: line.description.clone(),
                quantity,
                unit_price: line.unit_price,
                discount_percent: line.discount_percent,
                tax_code: None,
                tax_rate: Some(line.tax_rate),
                account: Some(line.account.clone()),
            }
        })
        .collect();
    let header = Header {
        kind: Kind::CreditNote,
        party: invoice.party,
        date: body.date,
        due_date: None,
        currency: Some(invoice.currency.clone()),
        reference: invoice.number.clone(),
        order: invoice.order.clone(),
        rma: None,
        credits_invoice: Some(invoice.id.clone()),
        reason: Some(reason),
    };
    let built = build_credit(&mut ctx, header, drafts, &mut errors)?;
    errors.finish()?;
    let mut note =
        built.ok_or_else(|| Error::Internal("a credit note was not built".to_owned()))?;
    for &(index, quantity) in &wanted {
        invoice.lines[index].credited += quantity;
    }
    identify(&mut note, &mut ctx)?;
    issue(&mut note, &mut ctx)?;
    let applied = note.open.min(invoice.open);
    if applied > Decimal::ZERO {
        crate::payments::apply(&mut note, &mut invoice, applied)?;
    }
    DOCUMENTS.put(&invoice.id, &invoice)?;
    DOCUMENTS.put(&note.id, &note)?;
    Ok(Response::json(201, &note))
}

/// A credit note's lines keep the rates of what they credit: the party's tax code must not
/// re-tax a credit differently from the invoice.
fn build_credit(
    ctx: &mut Context,
    header: Header,
    drafts: Vec<Draft>,
    errors: &mut FieldErrors,
) -> Result<Option<Document>, Error> {
    let rates: Vec<Option<Decimal>> = drafts.iter().map(|d| d.tax_rate).collect();
    let Some(mut note) = build(ctx, header, drafts, errors)? else {
        return Ok(None);
    };
    for (line, rate) in note.lines.iter_mut().zip(rates) {
        if let Some(rate) = rate {
            line.tax_rate = rate;
            line.tax_code = None;
        }
    }
    let (taxes, totals) = totals(&note.lines);
    note.open = totals.total;
    note.taxes = taxes;
    note.totals = totals;
    Ok(Some(note))
}

pub fn status_name(status: Status) -> &'static str {
    match status {
        Status::Draft => "a draft",
        Status::Issued => "issued",
        Status::PartiallyPaid => "partially paid",
        Status::Paid => "paid",
        Status::Cancelled => "cancelled",
    }
}

/// The input of the operation `credit-note` (the orders plugin, when a return arrives).
#[derive(Debug, Deserialize)]
struct ReturnCredit {
    party: i64,
    currency: String,
    order: String,
    rma: String,
    reason: String,
    #[serde(default)]
    date: Option<String>,
    lines: Vec<ReturnLine>,
}

#[derive(Debug, Deserialize)]
struct ReturnLine {
    order_line: u32,
    sku: String,
    name: String,
    quantity: Decimal,
    unit_price: Decimal,
    #[serde(default)]
    discount_percent: Decimal,
    #[serde(default)]
    tax_rate: Decimal,
}

/// Operation `credit-note`: credits returned goods of a sales order at the rates and prices
/// they were invoiced at, and applies the credit to the order's open invoices, oldest first;
/// what is left stays as the customer's credit. Answers `{"number", "id", "total",
/// "applied": [...]}`.
pub fn credit_note_for_return(input: &str) -> Result<Value, Error> {
    keel_sdk::require(perm::INVOICES_WRITE)?;
    let credit: ReturnCredit = keel_sdk::operation_input(input)?;
    let mut ctx = Context::load()?;
    let mut errors = FieldErrors::new();
    let reason = input::text(&mut errors, "reason", &credit.reason);
    let invoices = order_invoices(&credit.order)?;
    let drafts = credit
        .lines
        .into_iter()
        .map(|l| {
            // The invoiced line's rate and account, so the credit mirrors the invoice.
            let invoiced = invoices
                .iter()
                .flat_map(|d| d.lines.iter())
                .find(|line| line.order_line == Some(l.order_line));
            Draft {
                order_line: Some(l.order_line),
                sku: Some(l.sku),
                description: l.name,
                quantity: l.quantity,
                unit_price: l.unit_price,
                discount_percent: l.discount_percent,
                tax_code: None,
                tax_rate: Some(invoiced.map_or(l.tax_rate, |line| line.tax_rate)),
                account: invoiced.map(|line| line.account.clone()),
            }
        })
        .collect();
    let header = Header {
        kind: Kind::CreditNote,
        party: credit.party,
        date: credit.date,
        due_date: None,
        currency: Some(credit.currency),
        reference: Some(credit.rma.clone()),
        order: Some(credit.order),
        rma: Some(credit.rma),
        credits_invoice: None,
        reason: Some(reason),
    };
    let built = build_credit(&mut ctx, header, drafts, &mut errors)?;
    errors.finish()?;
    let mut note =
        built.ok_or_else(|| Error::Internal("a credit note was not built".to_owned()))?;
    identify(&mut note, &mut ctx)?;
    issue(&mut note, &mut ctx)?;
    let mut applied = Vec::new();
    let mut open_invoices: Vec<Document> = invoices
        .into_iter()
        .filter(|d| matches!(d.status, Status::Issued | Status::PartiallyPaid))
        .collect();
    open_invoices.sort_by(|a, b| (&a.due_date, &a.id).cmp(&(&b.due_date, &b.id)));
    for invoice in open_invoices {
        if note.open.is_zero() {
            break;
        }
        let mut invoice = load(Kind::Invoice, &invoice.id, true)?;
        let amount = note.open.min(invoice.open);
        crate::payments::apply(&mut note, &mut invoice, amount)?;
        DOCUMENTS.put(&invoice.id, &invoice)?;
        applied.push(json!({ "invoice": invoice.number, "amount": money::cents_text(amount) }));
    }
    DOCUMENTS.put(&note.id, &note)?;
    Ok(json!({
        "id": note.id,
        "number": note.number,
        "total": money::cents_text(note.totals.total),
        "applied": applied,
    }))
}

/// The issued invoices of a sales order.
fn order_invoices(order: &str) -> Result<Vec<Document>, Error> {
    let mut invoices = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = DOCUMENTS.find(
            "by-order",
            &[json!(order), json!(Kind::Invoice.name())],
            after.as_deref(),
            LIST_LIMIT_MAX,
        )?;
        invoices.extend(page.items.into_iter().map(|(_, d)| d).filter(|d| d.issued));
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(invoices),
        }
    }
}

/// Open documents of `kind` (of one party when given), issued, oldest due first.
pub fn open_documents(kind: Kind, party: Option<i64>) -> Result<Vec<Document>, Error> {
    let mut found = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = match party {
            Some(party) => DOCUMENTS.find(
                "by-party",
                &[json!(party), json!(kind.name()), json!(true), Value::Null],
                after.as_deref(),
                LIST_LIMIT_MAX,
            )?,
            None => DOCUMENTS.find(
                "open",
                &[json!(kind.name()), json!(true), Value::Null],
                after.as_deref(),
                LIST_LIMIT_MAX,
            )?,
        };
        found.extend(page.items.into_iter().map(|(_, d)| d));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    found.sort_by(|a, b| (&a.due_date, &a.date).cmp(&(&b.due_date, &b.date)));
    Ok(found)
}

/// Documents of `kind` settled (paid or cancelled) after `date`: open on that date perhaps.
pub fn settled_after(kind: Kind, date: NaiveDate) -> Result<Vec<Document>, Error> {
    let from = json!(dates::format(date + chrono_days(1)));
    let mut found = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = DOCUMENTS.find_range(
            "open",
            &[json!(kind.name()), json!(true)],
            Some(&from),
            None,
            false,
            after.as_deref(),
            LIST_LIMIT_MAX,
        )?;
        found.extend(page.items.into_iter().map(|(_, d)| d));
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(found),
        }
    }
}
