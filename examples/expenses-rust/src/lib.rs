//! Expense claims: employees submit claims through `POST /claims`; someone holding
//! `plugins.expenses:approve` (and not the claimant) approves them, which posts the expense
//! against the reimbursement liability in the ledger, or rejects them with a reason.
//!
//! The same module exists in Python (`examples/expenses-python`) and JavaScript
//! (`examples/expenses-js`); one end-to-end test drives all three.

use keel_sdk::ledger::{self, Entry, Line};
use keel_sdk::money;
use keel_sdk::router::Params;
use keel_sdk::storage::Collection;
use keel_sdk::{Error, Manifest, Plugin, Request, Response, Router};
use serde::{Deserialize, Serialize};

const APPROVE: &str = "plugins.expenses:approve";

const CLAIMS: Collection<Claim> = Collection::new("claims");
const SETTINGS: Collection<Settings> = Collection::new("settings");
const COUNTERS: Collection<u64> = Collection::new("counters");

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Settings {
    /// Debited with the claim's amount.
    expense_account: String,
    /// Credited: what the company owes the claimant until reimbursed.
    payable_account: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            expense_account: "6600".to_owned(),
            payable_account: "2100".to_owned(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewClaim {
    description: String,
    amount: String,
    date: String,
    employee: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rejection {
    reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claim {
    id: u64,
    description: String,
    amount: String,
    date: String,
    employee: Option<i64>,
    status: String,
    submitted_by: Option<i64>,
    decided_by: Option<i64>,
    entry: Option<i64>,
    reason: Option<String>,
}

fn key(id: u64) -> String {
    format!("{id:012}")
}

fn is_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        })
}

fn submit(request: &Request, _: &Params) -> Result<Response, Error> {
    let new: NewClaim = request.json()?;
    let mut errors = Vec::new();
    if new.description.trim().is_empty() {
        errors.push(("description", "must not be empty".to_owned()));
    }
    match money::parse_positive("amount", &new.amount) {
        Ok(_) => {}
        Err(Error::Invalid(list)) => errors.extend(list.into_iter().map(|e| ("amount", e.message))),
        Err(other) => return Err(other),
    }
    if !is_date(&new.date) {
        errors.push(("date", "is a date as YYYY-MM-DD".to_owned()));
    }
    if !errors.is_empty() {
        return Err(Error::Invalid(
            errors
                .into_iter()
                .map(|(field, message)| keel_sdk::FieldError {
                    field: field.to_owned(),
                    message,
                })
                .collect(),
        ));
    }
    let id = COUNTERS.get("claims")?.unwrap_or(0) + 1;
    COUNTERS.put("claims", &id)?;
    let claim = Claim {
        id,
        description: new.description.trim().to_owned(),
        amount: money::format(money::parse("amount", &new.amount)?),
        date: new.date,
        employee: new.employee,
        status: "submitted".to_owned(),
        submitted_by: keel_sdk::user_id(),
        decided_by: None,
        entry: None,
        reason: None,
    };
    CLAIMS.put(&key(id), &claim)?;
    Ok(Response::json(201, &claim))
}

fn load(params: &Params) -> Result<Claim, Error> {
    let id: u64 = params
        .get("id")?
        .parse()
        .map_err(|_| Error::NotFound("claim ids are numbers".to_owned()))?;
    CLAIMS
        .get(&key(id))?
        .ok_or_else(|| Error::NotFound(format!("no claim {id}")))
}

/// Loads a submitted claim for a decision by someone allowed to make it.
fn decidable(params: &Params) -> Result<Claim, Error> {
    if !keel_sdk::allowed(APPROVE) {
        return Err(Error::Denied(format!(
            "deciding on claims needs the permission {APPROVE}"
        )));
    }
    let claim = load(params)?;
    if claim.status != "submitted" {
        return Err(Error::Conflict(format!(
            "claim {} is {} already",
            claim.id, claim.status
        )));
    }
    if claim.submitted_by.is_some() && claim.submitted_by == keel_sdk::user_id() {
        return Err(Error::Denied(
            "nobody decides on their own claim".to_owned(),
        ));
    }
    Ok(claim)
}

fn approve(_: &Request, params: &Params) -> Result<Response, Error> {
    let mut claim = decidable(params)?;
    let settings = SETTINGS.get("accounts")?.unwrap_or_default();
    let line = |account: &str, debit: bool| Line {
        account: account.to_owned(),
        debit: debit.then(|| claim.amount.clone()),
        credit: (!debit).then(|| claim.amount.clone()),
        currency: None,
        rate: None,
        party: claim.employee,
        memo: None,
        dimensions: Vec::new(),
    };
    let entry = Entry {
        date: claim.date.clone(),
        memo: format!("Expense claim {}: {}", claim.id, claim.description),
        lines: vec![
            line(&settings.expense_account, true),
            line(&settings.payable_account, false),
        ],
        document: Some(format!("claim-{}", claim.id)),
    };
    let entry_id = ledger::post(&entry, Some(&format!("claim-{}-approval", claim.id)))?;
    claim.status = "approved".to_owned();
    claim.decided_by = keel_sdk::user_id();
    claim.entry = Some(entry_id);
    CLAIMS.put(&key(claim.id), &claim)?;
    Ok(Response::json(200, &claim))
}

fn reject(request: &Request, params: &Params) -> Result<Response, Error> {
    let mut claim = decidable(params)?;
    let rejection: Rejection = if request.body.is_empty() {
        Rejection::default()
    } else {
        request.json()?
    };
    claim.status = "rejected".to_owned();
    claim.decided_by = keel_sdk::user_id();
    claim.reason = rejection.reason;
    CLAIMS.put(&key(claim.id), &claim)?;
    Ok(Response::json(200, &claim))
}

struct Expenses;

impl Plugin for Expenses {
    fn manifest() -> Manifest {
        Manifest::new(
            "expenses",
            env!("CARGO_PKG_VERSION"),
            "Expense claims: submit, approve into the ledger, reject",
        )
        .capabilities(&["storage", "ledger:post"])
    }

    fn migrate(from: Option<String>) -> Result<(), Error> {
        if from.is_none() {
            SETTINGS.put("accounts", &Settings::default())?;
        }
        Ok(())
    }

    fn handle_http(request: Request) -> Response {
        Router::new()
            .post("/claims", submit)
            .get("/claims", |_, _| {
                let claims: Vec<Claim> = CLAIMS.all()?.into_iter().map(|(_, c)| c).collect();
                Ok(Response::json(
                    200,
                    &serde_json::json!({ "claims": claims }),
                ))
            })
            .get("/claims/{id}", |_, params| {
                Ok(Response::json(200, &load(params)?))
            })
            .post("/claims/{id}/approve", approve)
            .post("/claims/{id}/reject", reject)
            .handle(request)
    }

    fn invoke(operation: String, _input: String) -> Result<String, Error> {
        match operation.as_str() {
            // Count and total of the claims in each status.
            "summary" => {
                let mut summary = serde_json::Map::new();
                for (_, claim) in CLAIMS.all()? {
                    let entry = summary
                        .entry(claim.status.clone())
                        .or_insert_with(|| serde_json::json!({ "count": 0, "total": "0" }));
                    let count = entry["count"].as_u64().unwrap_or(0) + 1;
                    let total = money::parse("total", entry["total"].as_str().unwrap_or("0"))?
                        + money::parse("amount", &claim.amount)?;
                    *entry = serde_json::json!({ "count": count, "total": money::format(total) });
                }
                Ok(serde_json::Value::Object(summary).to_string())
            }
            other => Err(Error::NotFound(format!("no operation {other:?}"))),
        }
    }
}

keel_sdk::export!(Expenses);
