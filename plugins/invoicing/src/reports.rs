//! What is owed and how late: aging of receivables and payables in the usual buckets,
//! dunning levels for overdue invoices, and one party's summary (open and overdue invoices,
//! credit status) for the orders and sfa plugins.

use std::collections::BTreeMap;

use keel_sdk::dates::{self, NaiveDate};
use keel_sdk::money::{self, Decimal};
use keel_sdk::router::Params;
use keel_sdk::storage::Collection;
use keel_sdk::{Error, FieldErrors, Request, Response, events, ledger};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::documents::{self, DOCUMENTS, Document, Kind};
use crate::perm;
use crate::settings::Settings;

/// Every dunning notice sent, under "<document id>/<level>".
const NOTICES: Collection<Notice> = Collection::new("dunning-notices");

/// Upper bounds (days past due, inclusive) of the aging buckets after `current`.
const BUCKETS: [(&str, Option<i64>); 5] = [
    ("current", Some(0)),
    ("1-30", Some(30)),
    ("31-60", Some(60)),
    ("61-90", Some(90)),
    ("90+", None),
];

fn bucket(days_overdue: i64) -> usize {
    BUCKETS
        .iter()
        .position(|(_, upper)| upper.is_none_or(|upper| days_overdue <= upper))
        .unwrap_or(BUCKETS.len() - 1)
}

fn days_overdue(document: &Document, as_of: NaiveDate) -> i64 {
    dates::parse("due_date", &document.due_date)
        .map(|due| (as_of - due).num_days())
        .unwrap_or(0)
}

fn as_of(request: &Request) -> Result<NaiveDate, Error> {
    let mut errors = FieldErrors::new();
    let date = keel_sdk::dates::parse_or_today(
        &mut errors,
        "as_of",
        request.query_param("as_of").as_deref(),
    );
    errors.finish()?;
    Ok(date)
}

#[derive(Default, Serialize)]
struct PartyAging {
    party: i64,
    name: String,
    buckets: [String; 5],
    total: String,
    #[serde(skip)]
    sums: [Decimal; 5],
}

/// `GET /aging?side=receivable|payable&as_of=`: what was open at the end of `as_of` (default
/// today), by party and bucket of days past due.
pub fn aging(request: &Request, _params: &Params) -> Result<Response, Error> {
    let kind = match request.query_param("side").as_deref() {
        None | Some("receivable") => Kind::Invoice,
        Some("payable") => Kind::Bill,
        Some(_) => return Err(Error::invalid("side", "is receivable or payable")),
    };
    keel_sdk::require(match kind {
        Kind::Bill => perm::BILLS_READ,
        _ => perm::INVOICES_READ,
    })?;
    let as_of = as_of(request)?;
    let as_of_text = dates::format(as_of);
    let mut candidates = documents::open_documents(kind, None)?;
    candidates.extend(documents::settled_after(kind, as_of)?);
    let mut by_party: BTreeMap<i64, PartyAging> = BTreeMap::new();
    let mut totals = [Decimal::ZERO; 5];
    let mut items = Vec::new();
    for document in &candidates {
        let open = document.open_as_of(&as_of_text);
        if open <= Decimal::ZERO {
            continue;
        }
        let days = days_overdue(document, as_of);
        let slot = bucket(days);
        let party = by_party
            .entry(document.party)
            .or_insert_with(|| PartyAging {
                party: document.party,
                name: document.party_name.clone(),
                ..PartyAging::default()
            });
        party.sums[slot] += open;
        totals[slot] += open;
        items.push(json!({
            "id": document.id, "number": document.number, "party": document.party,
            "date": document.date, "due_date": document.due_date,
            "days_overdue": days.max(0), "bucket": BUCKETS[slot].0,
            "open": money::cents_text(open),
        }));
    }
    let parties: Vec<PartyAging> = by_party
        .into_values()
        .map(|mut p| {
            p.buckets = p.sums.map(money::cents_text);
            p.total = money::cents_text(p.sums.iter().sum());
            p
        })
        .collect();
    let names: Vec<&str> = BUCKETS.iter().map(|(name, _)| *name).collect();
    Ok(Response::json(
        200,
        &json!({
            "side": if kind == Kind::Bill { "payable" } else { "receivable" },
            "as_of": as_of_text,
            "buckets": names,
            "totals": totals.map(money::cents_text),
            "total": money::cents_text(totals.iter().sum()),
            "parties": parties,
            "documents": items,
        }),
    ))
}

/// The dunning level an invoice this many days overdue has reached.
fn due_level(settings: &Settings, days_overdue: i64) -> u32 {
    settings
        .dunning_levels
        .iter()
        .rev()
        .find(|l| days_overdue >= i64::from(l.days_overdue))
        .map_or(0, |l| l.level)
}

/// `GET /dunning?as_of=`: overdue invoices, with the level they are at and the level due.
pub fn dunning(request: &Request, _params: &Params) -> Result<Response, Error> {
    keel_sdk::require(perm::INVOICES_READ)?;
    let settings = Settings::load()?;
    let as_of = as_of(request)?;
    let items: Vec<Value> = documents::open_documents(Kind::Invoice, None)?
        .iter()
        .filter_map(|d| {
            let days = days_overdue(d, as_of);
            (days > 0).then(|| {
                json!({
                    "id": d.id, "number": d.number, "party": d.party, "party_name": d.party_name,
                    "due_date": d.due_date, "days_overdue": days,
                    "open": money::cents_text(d.open),
                    "level": d.dunning_level, "level_due": due_level(&settings, days),
                })
            })
        })
        .collect();
    Ok(Response::json(
        200,
        &json!({ "as_of": dates::format(as_of), "items": items }),
    ))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Notice {
    document: String,
    number: String,
    party: i64,
    level: u32,
    name: String,
    date: String,
    days_overdue: i64,
    #[serde(with = "money::cents")]
    open: Decimal,
    by: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    #[serde(default)]
    as_of: Option<String>,
}

/// `POST /dunning/run`: raises every overdue invoice to the level its days overdue reach,
/// records a notice per level reached and publishes `invoicing.dunning.notice`. Running it
/// again the same day raises nothing.
pub fn run_dunning(request: &Request, _params: &Params) -> Result<Response, Error> {
    keel_sdk::require(perm::DUNNING_RUN)?;
    let body: RunRequest = request.optional_json()?;
    let mut errors = FieldErrors::new();
    let as_of = keel_sdk::dates::parse_or_today(&mut errors, "as_of", body.as_of.as_deref());
    errors.finish()?;
    let settings = Settings::load()?;
    let mut notices = Vec::new();
    for open in documents::open_documents(Kind::Invoice, None)? {
        let days = days_overdue(&open, as_of);
        let level = due_level(&settings, days);
        if level <= open.dunning_level {
            continue;
        }
        let mut document = documents::load(Kind::Invoice, &open.id, true)?;
        document.dunning_level = level;
        document.dunned_on = Some(dates::format(as_of));
        let name = settings
            .dunning_levels
            .iter()
            .find(|l| l.level == level)
            .map(|l| l.name.clone())
            .unwrap_or_default();
        document.record("dunned", Some(format!("level {level}: {name}")));
        let notice = Notice {
            document: document.id.clone(),
            number: document.reference_text(),
            party: document.party,
            level,
            name,
            date: dates::format(as_of),
            days_overdue: days,
            open: document.open,
            by: keel_sdk::user_id(),
        };
        NOTICES.put(&format!("{}/{level}", document.id), &notice)?;
        DOCUMENTS.put(&document.id, &document)?;
        let payload = serde_json::to_string(&notice)
            .map_err(|e| Error::Internal(format!("serializing an event: {e}")))?;
        events::publish(
            "invoicing.dunning.notice",
            &format!("invoice/{}", document.id),
            &payload,
        )?;
        notices.push(notice);
    }
    Ok(Response::json(200, &json!({ "notices": notices })))
}

#[derive(Debug, Deserialize)]
struct SummaryInput {
    party: i64,
}

/// Operation `party-summary`: `{"party"}` → the party's open and overdue invoices, what is
/// open in all, unapplied credit, and a credit status: `over_limit` (the ledger's receivable
/// above the credit limit), else `overdue` (an invoice past due), else `within_limit` or
/// `no_limit`.
pub fn party_summary(input: &str) -> Result<Value, Error> {
    keel_sdk::require(perm::INVOICES_READ)?;
    let SummaryInput { party } = keel_sdk::operation_input(input)?;
    let today = dates::today();
    let summary = |d: &Document| {
        json!({
            "id": d.id, "number": d.number, "date": d.date, "due_date": d.due_date,
            "total": money::cents_text(d.totals.total), "open": money::cents_text(d.open),
            "currency": d.currency, "days_overdue": days_overdue(d, today).max(0),
            "dunning_level": d.dunning_level,
        })
    };
    let open = documents::open_documents(Kind::Invoice, Some(party))?;
    let overdue: Vec<&Document> = open.iter().filter(|d| days_overdue(d, today) > 0).collect();
    let credits = documents::open_documents(Kind::CreditNote, Some(party))?;
    let open_amount: Decimal = open.iter().map(|d| d.open).sum();
    let overdue_amount: Decimal = overdue.iter().map(|d| d.open).sum();
    let unapplied: Decimal = credits.iter().map(|d| d.open).sum();
    let balance = ledger::party_balance(party, None)?;
    let over_limit = match &balance.credit_limit {
        Some(limit) if limit.currency == balance.receivable.currency => {
            let receivable: Decimal = money::parse("receivable", &balance.receivable.amount)?;
            receivable > money::parse("credit_limit", &limit.amount)?
        }
        _ => false,
    };
    let status = if over_limit {
        "over_limit"
    } else if !overdue.is_empty() {
        "overdue"
    } else if balance.credit_limit.is_some() {
        "within_limit"
    } else {
        "no_limit"
    };
    Ok(json!({
        "party": party,
        "currency": balance.receivable.currency,
        "open_invoices": open.iter().map(summary).collect::<Vec<_>>(),
        "overdue_invoices": overdue.into_iter().map(summary).collect::<Vec<_>>(),
        "open_amount": money::cents_text(open_amount),
        "overdue_amount": money::cents_text(overdue_amount),
        "unapplied_credit": money::cents_text(unapplied),
        "receivable": balance.receivable.amount,
        "credit_limit": balance.credit_limit.map(|l| l.amount),
        "credit_status": status,
    }))
}
