//! The credit check when an order is confirmed. The limit and the receivable come from the
//! host (`ledger.party-balance`); the exposure is the receivable plus every open order of the
//! party (confirmed, held or partially shipped, at what is neither cancelled nor invoiced yet,
//! with tax) plus the order being confirmed. Above the limit, or in amounts that cannot be
//! compared with it, the order is held for a user with `plugins.orders.credit:release`.

use keel_sdk::money::{self, cents_text};
use keel_sdk::{Error, dates, ledger};
use rust_decimal::Decimal;
use serde_json::json;

use crate::order::{BY_PARTY_STATUS, Credit, Hold, OPEN_STATUSES, ORDERS, Order, Status};
use crate::perm;

/// Orders read per storage call while adding up a party's open orders.
const PAGE_ITEMS: u32 = 200;

/// What the check decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub credit: Credit,
    /// Why the order is held; `None` when it passes.
    pub hold_reason: Option<String>,
}

/// The sum of the open value of the party's other open orders, by currency.
fn other_open_orders(order: &Order) -> Result<Vec<(String, Decimal)>, Error> {
    let mut sums: Vec<(String, Decimal)> = Vec::new();
    for status in OPEN_STATUSES {
        let mut after: Option<String> = None;
        loop {
            let page = ORDERS.find(
                BY_PARTY_STATUS,
                &[json!(order.party), json!(status.name())],
                after.as_deref(),
                PAGE_ITEMS,
            )?;
            for (_, other) in page.items {
                if other.number == order.number {
                    continue;
                }
                let value = other.open_value();
                match sums.iter_mut().find(|(c, _)| *c == other.currency) {
                    Some((_, sum)) => *sum += value,
                    None => sums.push((other.currency.clone(), value)),
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    Ok(sums)
}

fn amount(field: &str, money: &ledger::Money) -> Result<Decimal, Error> {
    money::parse(field, &money.amount).map_err(|_| {
        Error::Internal(format!(
            "the host answered a {field} that is not a decimal: {:?}",
            money.amount
        ))
    })
}

/// Checks `order` against its party's credit limit.
pub fn check(order: &Order) -> Result<Verdict, Error> {
    let checked_on = dates::format(dates::today());
    let balance = ledger::party_balance(order.party, None)?;
    let Some(limit) = balance.credit_limit else {
        return Ok(Verdict {
            credit: Credit {
                exposure: None,
                limit: None,
                currency: None,
                result: "no_limit".to_owned(),
                checked_on,
            },
            hold_reason: None,
        });
    };
    let limit_amount = amount("credit limit", &limit)?;
    let receivable = amount("receivable", &balance.receivable)?;
    let others = other_open_orders(order)?;
    let mut foreign: Vec<&str> = Vec::new();
    if order.currency != limit.currency {
        foreign.push(&order.currency);
    }
    if !receivable.is_zero() && balance.receivable.currency != limit.currency {
        foreign.push(&balance.receivable.currency);
    }
    for (currency, sum) in &others {
        if currency != &limit.currency && !sum.is_zero() && !foreign.contains(&currency.as_str()) {
            foreign.push(currency);
        }
    }
    let not_comparable = !foreign.is_empty();
    let open_orders: Decimal = others
        .iter()
        .filter(|(currency, _)| *currency == limit.currency)
        .map(|(_, sum)| *sum)
        .sum();
    let this_order = order.open_value();
    let exposure = receivable + open_orders + this_order;
    let credit = |result: &str, exposure: Option<String>| Credit {
        exposure,
        limit: Some(cents_text(limit_amount)),
        currency: Some(limit.currency.clone()),
        result: result.to_owned(),
        checked_on: checked_on.clone(),
    };
    if not_comparable {
        foreign.sort_unstable();
        foreign.dedup();
        return Ok(Verdict {
            credit: credit("not_comparable", None),
            hold_reason: Some(format!(
                "the credit limit of party {} is in {} but the order or what the party owes \
                 is in {}: the amounts cannot be compared, so a user with the permission {} \
                 must decide whether to release the order",
                order.party,
                limit.currency,
                foreign.join(", "),
                perm::CREDIT_RELEASE
            )),
        });
    }
    if exposure > limit_amount {
        return Ok(Verdict {
            credit: credit("over_limit", Some(cents_text(exposure))),
            hold_reason: Some(format!(
                "the exposure of {} {cur} (receivable {}, other open orders {}, this order {}) \
                 is above the credit limit of {} {cur}; a user with the permission {} may \
                 release the order",
                cents_text(exposure),
                cents_text(receivable),
                cents_text(open_orders),
                cents_text(this_order),
                cents_text(limit_amount),
                perm::CREDIT_RELEASE,
                cur = limit.currency,
            )),
        });
    }
    Ok(Verdict {
        credit: credit("within_limit", Some(cents_text(exposure))),
        hold_reason: None,
    })
}

/// Confirms a draft order: runs the credit check, then makes it confirmed or holds it,
/// records the step, stores it and publishes `orders.order.confirmed` or `.held`.
pub fn confirm(order: &mut Order) -> Result<(), Error> {
    assert_eq!(order.status, Status::Draft, "only a draft is confirmed");
    let verdict = check(order)?;
    order.credit = Some(verdict.credit);
    let topic = match verdict.hold_reason {
        Some(reason) => {
            order.status = Status::OnHold;
            order.hold = Some(Hold {
                reason: reason.clone(),
                since: dates::format(dates::today()),
            });
            order.record("held", Some(reason));
            "orders.order.held"
        }
        None => {
            order.status = Status::Confirmed;
            order.record("confirmed", None);
            "orders.order.confirmed"
        }
    };
    ORDERS.put(&order.number, order)?;
    crate::publish(topic, &order.subject(), &crate::order::view(order))
}
