//! The customer 360 view: one call for what a rep needs before talking to a customer — the
//! party's master data, open opportunities, recent activities, and from the back office the
//! receivable balance and credit status (host ledger), order history (orders plugin) and
//! open and overdue invoices (invoicing plugin). A part that cannot be had says why instead.
//!
//! The operations this calls, for the plugins that supply them:
//! - `orders/party-orders` with `{"party": <id>, "limit": <n>}` answers
//!   `{"orders": [...]}`, the party's most recent orders first;
//! - `invoicing/party-summary` with `{"party": <id>}` answers `{"open_invoices": [...],
//!   "overdue_invoices": [...], "credit_status": "..."}`.

use keel_sdk::router::Params;
use keel_sdk::{Error, Request, Response, calls, ledger, parties};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::owned::{self, Paging};
use crate::{activities, opportunities, perm};

/// Recent activities and orders the view shows.
const RECENT_ITEMS: u32 = 10;
/// Open opportunities the view shows at most.
const OPEN_OPPORTUNITIES_MAX: u32 = 100;

/// A part of the view that could not be had, and why.
fn unavailable(reason: impl Into<String>) -> Value {
    json!({ "available": false, "reason": reason.into() })
}

fn why(error: &Error) -> String {
    match error {
        Error::NotFound(_) => {
            "the plugin that supplies it is not installed or not enabled".to_owned()
        }
        Error::Denied(message) => format!("not permitted: {message}"),
        other => format!("failed: {}", other.detail()),
    }
}

/// `GET /customers/{party}`.
pub fn view(_request: &Request, params: &Params) -> Result<Response, Error> {
    let party_id: i64 = params
        .get("party")?
        .parse()
        .map_err(|_| Error::invalid("party", "is a party id"))?;
    let party: Value = match parties::get(party_id) {
        Ok(json) => serde_json::from_str(&json)
            .map_err(|e| Error::Internal(format!("a party from the host is unreadable: {e}")))?,
        Err(Error::NotFound(_)) => {
            return Err(Error::NotFound(format!(
                "there is no party {party_id} that you can see"
            )));
        }
        Err(other) => return Err(other),
    };
    let open_opportunities = match owned::reach(perm::OPPORTUNITIES_READ) {
        Ok(reach) => {
            let paging = Paging {
                limit: OPEN_OPPORTUNITIES_MAX,
                after: None,
            };
            let listed = opportunities::of_party(
                party_id,
                Some(opportunities::Status::Open),
                &reach,
                &paging,
            )?;
            json!({ "available": true, "items": listed.items })
        }
        Err(error) => unavailable(why(&error)),
    };
    let recent_activities = match owned::reach(perm::ACTIVITIES_READ) {
        Ok(reach) => {
            let paging = Paging {
                limit: RECENT_ITEMS,
                after: None,
            };
            let listed = activities::regarding("by-party", json!(party_id), &reach, &paging)?;
            json!({ "available": true, "items": listed.items })
        }
        Err(error) => unavailable(why(&error)),
    };
    let balance = ledger::party_balance(party_id, None);
    let receivable = match &balance {
        Ok(totals) => json!({
            "available": true,
            "receivable": money(&totals.receivable),
            "payable": money(&totals.payable),
            "credit_limit": totals.credit_limit.as_ref().map(money),
            "credit_available": totals.credit_available.as_ref().map(money),
        }),
        Err(error) => unavailable(why(error)),
    };
    let orders = match calls::invoke(
        "orders",
        "party-orders",
        &json!({ "party": party_id, "limit": RECENT_ITEMS }).to_string(),
    ) {
        Ok(output) => with_available(&output)?,
        Err(error) => unavailable(why(&error)),
    };
    let invoices = match calls::invoke(
        "invoicing",
        "party-summary",
        &json!({ "party": party_id }).to_string(),
    ) {
        Ok(output) => with_available(&output)?,
        Err(error) => unavailable(why(&error)),
    };
    let credit_status = credit_status(&invoices, balance.as_ref().ok());
    Ok(Response::json(
        200,
        &json!({
            "party": party,
            "open_opportunities": open_opportunities,
            "recent_activities": recent_activities,
            "receivable": receivable,
            "credit_status": credit_status,
            "orders": orders,
            "invoices": invoices,
        }),
    ))
}

fn money(money: &keel_sdk::ledger::Money) -> Value {
    json!({ "amount": money.amount, "currency": money.currency })
}

fn with_available(output: &str) -> Result<Value, Error> {
    let mut value: Value = serde_json::from_str(output)
        .map_err(|e| Error::Internal(format!("another plugin answered with invalid JSON: {e}")))?;
    if let Value::Object(map) = &mut value {
        map.insert("available".to_owned(), Value::Bool(true));
        Ok(value)
    } else {
        Ok(json!({ "available": true, "value": value }))
    }
}

/// The invoicing plugin's verdict when it gives one; else the ledger's: over the credit limit
/// when the receivable exceeds it, within it otherwise, unknown without a limit.
fn credit_status(invoices: &Value, balance: Option<&ledger::PartyTotals>) -> Value {
    if let Some(status) = invoices.get("credit_status").and_then(Value::as_str) {
        return json!({ "status": status, "source": "invoicing" });
    }
    let Some(totals) = balance else {
        return json!({ "status": "unknown", "source": "none", "reason": "neither invoicing nor the ledger answered" });
    };
    let Some(limit) = &totals.credit_limit else {
        return json!({ "status": "no_limit", "source": "ledger" });
    };
    let parse = |text: &str| text.parse::<Decimal>().ok();
    match (parse(&totals.receivable.amount), parse(&limit.amount)) {
        (Some(receivable), Some(limit_amount)) if limit.currency == totals.receivable.currency => {
            let status = if receivable > limit_amount {
                "over_limit"
            } else {
                "within_limit"
            };
            json!({ "status": status, "source": "ledger" })
        }
        _ => {
            json!({ "status": "unknown", "source": "ledger", "reason": "the credit limit is in another currency than the receivable" })
        }
    }
}
