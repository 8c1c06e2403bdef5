//! Opportunities: a deal with a customer, moving through the configured stages until it is
//! won or lost. Every change of stage is kept in its history, and every change of what the
//! pipeline counts updates the pipeline totals in the same transaction.

use keel_sdk::money;
use keel_sdk::router::Params;
use keel_sdk::storage::{self, Collection};
use keel_sdk::{Error, FieldErrors, Request, Response, parties};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::owned::{self, OwnerIndexes, Paging};
use crate::settings::{self, StageKind};
use crate::{not_found, perm, pipeline};

pub const OPPORTUNITIES: Collection<Opportunity> = Collection::new("opportunities");

const INDEXES: OwnerIndexes = OwnerIndexes {
    by_owner: "by-owner",
    by_rest: "by-status",
};

const NAME_CHARS_MAX: usize = 200;
const PRODUCTS_MAX: usize = 100;
const SKU_CHARS_MAX: usize = 64;
const REASON_NOTE_CHARS_MAX: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Open,
    Won,
    Lost,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opportunity {
    pub number: String,
    pub name: String,
    pub party: i64,
    pub contact: Option<i64>,
    /// The lead it was converted from.
    pub lead: Option<String>,
    pub owner: Option<i64>,
    pub stage: String,
    /// Percent: the stage's when it entered it, unless set on the opportunity.
    pub probability: Decimal,
    pub amount: Decimal,
    pub currency: String,
    pub expected_close: String,
    /// SKUs the customer is interested in.
    pub products: Vec<String>,
    pub status: Status,
    pub lost_reason: Option<String>,
    pub lost_note: Option<String>,
    pub opened_on: String,
    pub closed_on: Option<String>,
    pub history: Vec<StageChange>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageChange {
    pub stage: String,
    pub probability: Decimal,
    pub on: String,
    pub by: Option<i64>,
}

/// An opportunity as `POST /opportunities` takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOpportunity {
    pub name: String,
    pub party: i64,
    pub contact: Option<i64>,
    pub amount: String,
    pub currency: String,
    pub expected_close: String,
    /// The first open stage when absent.
    pub stage: Option<String>,
    /// The acting user when absent.
    pub owner: Option<i64>,
    #[serde(default)]
    pub products: Vec<String>,
    /// For opportunities brought over from another system; today when absent.
    pub opened_on: Option<String>,
}

fn check_name(errors: &mut FieldErrors, name: &str) {
    if name.trim().is_empty() || name.chars().count() > NAME_CHARS_MAX {
        errors.add("name", format!("is 1 to {NAME_CHARS_MAX} characters"));
    }
}

fn check_amount(errors: &mut FieldErrors, amount: &str) -> Decimal {
    match money::parse("amount", amount) {
        Ok(value) if value >= Decimal::ZERO => value,
        Ok(_) => {
            errors.add("amount", "is zero or more");
            Decimal::ZERO
        }
        Err(error) => {
            let _ = errors.absorb(error);
            Decimal::ZERO
        }
    }
}

fn check_currency(errors: &mut FieldErrors, currency: &str) -> String {
    let currency = currency.trim().to_ascii_uppercase();
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        errors.add("currency", "is an ISO 4217 code such as EUR");
    }
    currency
}

fn check_products(errors: &mut FieldErrors, products: &[String]) {
    if products.len() > PRODUCTS_MAX {
        errors.add("products", format!("at most {PRODUCTS_MAX} products"));
    }
    for (i, sku) in products.iter().enumerate() {
        if sku.trim().is_empty() || sku.len() > SKU_CHARS_MAX {
            errors.add(
                format!("products[{i}]"),
                format!("is a SKU of 1 to {SKU_CHARS_MAX} characters"),
            );
        }
    }
}

/// The party must exist and be visible to the acting user.
fn check_party(errors: &mut FieldErrors, field: &str, id: i64) -> Result<(), Error> {
    match parties::get(id) {
        Ok(_) => Ok(()),
        Err(Error::NotFound(_)) => {
            errors.add(field, format!("there is no party {id} that you can see"));
            Ok(())
        }
        Err(other) => Err(other),
    }
}

/// Checks, numbers and stores a new opportunity; `lead` when it comes from a conversion.
pub fn open_new(new: NewOpportunity, lead: Option<String>) -> Result<Opportunity, Error> {
    let stages = settings::stages()?;
    let mut errors = FieldErrors::new();
    check_name(&mut errors, &new.name);
    let amount = check_amount(&mut errors, &new.amount);
    let currency = check_currency(&mut errors, &new.currency);
    let expected_close = crate::check_date(&mut errors, "expected_close", &new.expected_close);
    let opened_on = crate::date_or_today(&mut errors, "opened_on", new.opened_on.as_deref());
    check_products(&mut errors, &new.products);
    check_party(&mut errors, "party", new.party)?;
    if let Some(contact) = new.contact {
        check_party(&mut errors, "contact", contact)?;
    }
    let stage = match &new.stage {
        Some(name) => match settings::stage(&stages, "stage", name) {
            Ok(stage) if stage.kind == StageKind::Open => Some(stage),
            Ok(_) => {
                errors.add(
                    "stage",
                    "a new opportunity starts in an open stage; mark it won or lost afterwards",
                );
                None
            }
            Err(error) => {
                errors.absorb(error)?;
                None
            }
        },
        None => Some(settings::stage_of_kind(&stages, StageKind::Open)?),
    };
    errors.finish()?;
    let stage = stage.ok_or_else(|| Error::Internal("a checked stage is missing".to_owned()))?;
    let owner = new.owner.or_else(keel_sdk::user_id);
    if owner.is_some() && owner != keel_sdk::user_id() {
        keel_sdk::require(perm::ASSIGN)?;
    }
    let opportunity = Opportunity {
        number: format!("O-{:06}", storage::next_number("opportunities")?),
        name: new.name.trim().to_owned(),
        party: new.party,
        contact: new.contact,
        lead,
        owner,
        stage: stage.name.clone(),
        probability: stage.probability,
        amount,
        currency,
        expected_close,
        products: new.products.iter().map(|s| s.trim().to_owned()).collect(),
        status: Status::Open,
        lost_reason: None,
        lost_note: None,
        history: vec![StageChange {
            stage: stage.name,
            probability: stage.probability,
            on: opened_on.clone(),
            by: keel_sdk::user_id(),
        }],
        opened_on,
        closed_on: None,
    };
    save(None, &opportunity)?;
    Ok(opportunity)
}

/// Stores an opportunity and moves its weight in the pipeline totals from `before`. The totals
/// are reserved in key order, so two calls moving deals between the same totals never wait
/// for each other.
fn save(before: Option<&Opportunity>, after: &Opportunity) -> Result<(), Error> {
    let mut changes = vec![(after, 1)];
    changes.extend(before.map(|before| (before, -1)));
    changes.sort_by_key(|(opportunity, _)| pipeline::key_of(opportunity));
    for (opportunity, sign) in changes {
        pipeline::count(opportunity, sign)?;
    }
    OPPORTUNITIES.put(&after.number, after)
}

/// `POST /opportunities`.
pub fn create(request: &Request, _: &Params) -> Result<Response, Error> {
    keel_sdk::require(perm::OPPORTUNITIES_WRITE)?;
    let opportunity = open_new(request.json()?, None)?;
    Ok(Response::json(201, &opportunity))
}

/// The opportunity `number` if the user's reach under `permission` covers it; to change it
/// (under `opportunities:write`), reserved until the call ends.
pub fn load(number: &str, permission: &str) -> Result<Opportunity, Error> {
    let reach = owned::reach(permission)?;
    let found = if permission == perm::OPPORTUNITIES_WRITE {
        OPPORTUNITIES.get_for_update(number)?
    } else {
        OPPORTUNITIES.get(number)?
    };
    match found {
        Some(opportunity) if reach.covers(opportunity.owner) => Ok(opportunity),
        _ => Err(not_found("opportunity", number)),
    }
}

pub fn get(_request: &Request, params: &Params) -> Result<Response, Error> {
    let opportunity = load(params.get("number")?, perm::OPPORTUNITIES_READ)?;
    Ok(Response::json(200, &opportunity))
}

/// `GET /opportunities?status=&owner=&party=&limit=&after=`.
pub fn list(request: &Request, _: &Params) -> Result<Response, Error> {
    let reach = owned::reach(perm::OPPORTUNITIES_READ)?;
    let status = match request.query_param("status").filter(|s| !s.is_empty()) {
        Some(status) => Some(
            serde_json::from_value::<Status>(json!(status))
                .map_err(|_| Error::invalid("status", "is open, won or lost"))?,
        ),
        None => None,
    };
    let paging = Paging::of(request)?;
    if let Some(party) = request.query_param("party").filter(|p| !p.is_empty()) {
        let party: i64 = party
            .parse()
            .map_err(|_| Error::invalid("party", "is a party id"))?;
        let listed = of_party(party, status, &reach, &paging)?;
        return Ok(Response::json(200, &listed));
    }
    let equals: Vec<Value> = status.into_iter().map(|s| json!(s)).collect();
    let listed = owned::list(
        OPPORTUNITIES,
        &INDEXES,
        &reach,
        owned::owner_param(request)?,
        &equals,
        &paging,
    )?;
    Ok(Response::json(200, &listed))
}

/// A party's opportunities within reach, a page at a time.
pub fn of_party(
    party: i64,
    status: Option<Status>,
    reach: &keel_sdk::Reach,
    paging: &Paging,
) -> Result<owned::Listed<Opportunity>, Error> {
    let mut equals = vec![json!(party)];
    equals.extend(status.map(|s| json!(s)));
    let page = OPPORTUNITIES.find("by-party", &equals, paging.after.as_deref(), paging.limit)?;
    Ok(owned::Listed {
        items: page
            .items
            .into_iter()
            .map(|(_, o)| o)
            .filter(|o| reach.covers(o.owner))
            .collect(),
        next: page.next,
    })
}

/// Changes to an open opportunity.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpportunityChanges {
    name: Option<String>,
    contact: Option<i64>,
    amount: Option<String>,
    currency: Option<String>,
    expected_close: Option<String>,
    /// An open stage; won and lost have their own routes.
    stage: Option<String>,
    /// Overrides the stage's probability until the next change of stage.
    probability: Option<Decimal>,
    owner: Option<i64>,
    products: Option<Vec<String>>,
    /// The date of the change, for changes brought over from another system; today when
    /// absent.
    on: Option<String>,
}

/// `PATCH /opportunities/{number}`.
pub fn update(request: &Request, params: &Params) -> Result<Response, Error> {
    let number = params.get("number")?;
    let before = load(number, perm::OPPORTUNITIES_WRITE)?;
    let changes: OpportunityChanges = request.json()?;
    check_open(&before)?;
    let stages = settings::stages()?;
    let mut after = before.clone();
    let mut errors = FieldErrors::new();
    let on = crate::date_or_today(&mut errors, "on", changes.on.as_deref());
    if let Some(name) = changes.name {
        check_name(&mut errors, &name);
        after.name = name.trim().to_owned();
    }
    if let Some(contact) = changes.contact {
        check_party(&mut errors, "contact", contact)?;
        after.contact = Some(contact);
    }
    if let Some(amount) = &changes.amount {
        after.amount = check_amount(&mut errors, amount);
    }
    if let Some(currency) = &changes.currency {
        after.currency = check_currency(&mut errors, currency);
    }
    if let Some(date) = &changes.expected_close {
        after.expected_close = crate::check_date(&mut errors, "expected_close", date);
    }
    if let Some(products) = changes.products {
        check_products(&mut errors, &products);
        after.products = products;
    }
    if let Some(name) = &changes.stage
        && *name != before.stage
    {
        match settings::stage(&stages, "stage", name) {
            Ok(stage) if stage.kind == StageKind::Open => {
                after.stage = stage.name.clone();
                after.probability = stage.probability;
                after.history.push(StageChange {
                    stage: stage.name,
                    probability: stage.probability,
                    on: on.clone(),
                    by: keel_sdk::user_id(),
                });
            }
            Ok(_) => errors.add(
                "stage",
                "use POST .../won or .../lost to close an opportunity",
            ),
            Err(error) => errors.absorb(error)?,
        }
    }
    if let Some(probability) = changes.probability {
        if probability < Decimal::ZERO || probability > Decimal::ONE_HUNDRED {
            errors.add("probability", "is a percentage from 0 to 100");
        }
        after.probability = probability;
    }
    if let Some(owner) = changes.owner
        && Some(owner) != before.owner
    {
        keel_sdk::require(perm::ASSIGN)?;
        after.owner = Some(owner);
    }
    errors.finish()?;
    save(Some(&before), &after)?;
    Ok(Response::json(200, &after))
}

fn check_open(opportunity: &Opportunity) -> Result<(), Error> {
    if opportunity.status == Status::Open {
        return Ok(());
    }
    Err(Error::Conflict(format!(
        "opportunity {} was {} on {}; it changes no more",
        opportunity.number,
        if opportunity.status == Status::Won {
            "won"
        } else {
            "lost"
        },
        opportunity.closed_on.as_deref().unwrap_or("an earlier day")
    )))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Closing {
    /// The day it closed; today when absent.
    on: Option<String>,
    /// The final amount, when it differs.
    amount: Option<String>,
    /// For a lost deal: one of the configured lost reasons.
    reason: Option<String>,
    note: Option<String>,
}

fn close(request: &Request, params: &Params, kind: StageKind) -> Result<Response, Error> {
    let number = params.get("number")?;
    let before = load(number, perm::OPPORTUNITIES_WRITE)?;
    let closing: Closing = if request.body.is_empty() {
        Closing::default()
    } else {
        request.json()?
    };
    let after = closed(&before, closing, kind)?;
    Ok(Response::json(200, &after))
}

/// Closes an open opportunity as won or lost and stores it.
fn closed(before: &Opportunity, closing: Closing, kind: StageKind) -> Result<Opportunity, Error> {
    check_open(before)?;
    let stage = settings::stage_of_kind(&settings::stages()?, kind)?;
    let mut after = before.clone();
    let mut errors = FieldErrors::new();
    let on = crate::date_or_today(&mut errors, "on", closing.on.as_deref());
    if !on.is_empty() && on < before.opened_on {
        errors.add(
            "on",
            format!("is on or after the day it opened, {}", before.opened_on),
        );
    }
    if let Some(amount) = &closing.amount {
        after.amount = check_amount(&mut errors, amount);
    }
    if kind == StageKind::Lost {
        let reasons = settings::lost_reasons()?;
        match closing.reason.as_deref().map(str::trim) {
            Some(reason) if reasons.iter().any(|r| r == reason) => {
                after.lost_reason = Some(reason.to_owned());
            }
            Some(reason) => errors.add(
                "reason",
                format!(
                    "{reason:?} is not a lost reason; the reasons are {}",
                    reasons.join(", ")
                ),
            ),
            None => errors.add(
                "reason",
                format!("is required; the reasons are {}", reasons.join(", ")),
            ),
        }
    } else if closing.reason.is_some() {
        errors.add("reason", "is for lost opportunities");
    }
    if let Some(note) = closing.note {
        if note.chars().count() > REASON_NOTE_CHARS_MAX {
            errors.add(
                "note",
                format!("has at most {REASON_NOTE_CHARS_MAX} characters"),
            );
        }
        after.lost_note = Some(note);
    }
    errors.finish()?;
    after.status = if kind == StageKind::Won {
        Status::Won
    } else {
        Status::Lost
    };
    after.stage = stage.name.clone();
    after.probability = stage.probability;
    after.closed_on = Some(on.clone());
    after.history.push(StageChange {
        stage: stage.name,
        probability: stage.probability,
        on,
        by: keel_sdk::user_id(),
    });
    save(Some(before), &after)?;
    Ok(after)
}

/// `POST /opportunities/{number}/won`.
pub fn won(request: &Request, params: &Params) -> Result<Response, Error> {
    close(request, params, StageKind::Won)
}

/// `POST /opportunities/{number}/lost` with a `reason`.
pub fn lost(request: &Request, params: &Params) -> Result<Response, Error> {
    close(request, params, StageKind::Lost)
}

/// Opportunities one import request brings at most.
const IMPORT_BATCH_MAX: usize = 500;

/// An opportunity from another system: open, or already won or lost.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Imported {
    name: String,
    party: i64,
    contact: Option<i64>,
    amount: String,
    currency: String,
    expected_close: String,
    stage: Option<String>,
    owner: Option<i64>,
    #[serde(default)]
    products: Vec<String>,
    opened_on: Option<String>,
    /// `won` or `lost` for a closed deal, with `closed_on` (and `lost_reason`).
    outcome: Option<Status>,
    closed_on: Option<String>,
    lost_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Import {
    opportunities: Vec<Imported>,
}

/// `POST /opportunities/import`: up to 500 opportunities at once, all or none.
pub fn import(request: &Request, _: &Params) -> Result<Response, Error> {
    keel_sdk::require(perm::OPPORTUNITIES_WRITE)?;
    let import: Import = request.json()?;
    if import.opportunities.is_empty() || import.opportunities.len() > IMPORT_BATCH_MAX {
        return Err(Error::invalid(
            "opportunities",
            format!("1 to {IMPORT_BATCH_MAX} opportunities per request"),
        ));
    }
    let mut numbers = Vec::with_capacity(import.opportunities.len());
    for (i, item) in import.opportunities.into_iter().enumerate() {
        let prefix = format!("opportunities[{i}]");
        let opened = open_new(
            NewOpportunity {
                name: item.name,
                party: item.party,
                contact: item.contact,
                amount: item.amount,
                currency: item.currency,
                expected_close: item.expected_close,
                stage: item.stage,
                owner: item.owner,
                products: item.products,
                opened_on: item.opened_on,
            },
            None,
        )
        .map_err(|error| error.within(&prefix))?;
        let kind = match item.outcome {
            None | Some(Status::Open) => None,
            Some(Status::Won) => Some(StageKind::Won),
            Some(Status::Lost) => Some(StageKind::Lost),
        };
        let number = match kind {
            None => opened.number,
            Some(kind) => {
                let closing = Closing {
                    on: item.closed_on,
                    amount: None,
                    reason: item.lost_reason,
                    note: None,
                };
                closed(&opened, closing, kind)
                    .map_err(|error| error.within(&prefix))?
                    .number
            }
        };
        numbers.push(number);
    }
    Ok(Response::json(
        201,
        &json!({ "imported": numbers.len(), "numbers": numbers }),
    ))
}
