//! The sales order: its record, its statuses, and the arithmetic on its lines (amounts,
//! totals, what is outstanding, backordered, invoiceable and open for the credit check).

use keel_sdk::money::{self, round_cents};
use keel_sdk::storage::Collection;
use keel_sdk::{Error, dates};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Every order, keyed by its number.
pub const ORDERS: Collection<Order> = Collection::new("orders");
pub const BY_PARTY: &str = "by-party";
pub const BY_STATUS: &str = "by-status";
pub const BY_PARTY_STATUS: &str = "by-party-status";
/// The gapless sequence of order numbers.
const NUMBER_SEQUENCE: &str = "order";
/// Most lines of one order: large B2B orders run to a few hundred lines, and every change
/// rewrites the whole record.
pub const LINES_MAX: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Draft,
    Confirmed,
    /// Held by the credit check until a user with `credit:release` releases it.
    OnHold,
    PartiallyShipped,
    Shipped,
    Cancelled,
}

pub const STATUSES: &[(Status, &str)] = &[
    (Status::Draft, "draft"),
    (Status::Confirmed, "confirmed"),
    (Status::OnHold, "on_hold"),
    (Status::PartiallyShipped, "partially_shipped"),
    (Status::Shipped, "shipped"),
    (Status::Cancelled, "cancelled"),
];

/// The statuses of orders the customer still owes for: they count towards credit exposure.
pub const OPEN_STATUSES: &[Status] = &[Status::Confirmed, Status::OnHold, Status::PartiallyShipped];

impl Status {
    pub fn name(self) -> &'static str {
        STATUSES
            .iter()
            .find(|(status, _)| *status == self)
            .map_or("unknown", |(_, name)| name)
    }

    pub fn parse(text: &str) -> Option<Self> {
        STATUSES
            .iter()
            .find(|(_, name)| *name == text)
            .map(|(status, _)| *status)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// 1-based, in the order the lines were entered.
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
    /// Percent, e.g. 19.
    #[serde(with = "money::canonical")]
    pub tax_rate: Decimal,
    #[serde(with = "money::cents")]
    pub net_amount: Decimal,
    #[serde(with = "money::canonical")]
    pub shipped: Decimal,
    #[serde(with = "money::canonical")]
    pub cancelled: Decimal,
    #[serde(with = "money::canonical")]
    pub invoiced: Decimal,
    #[serde(with = "money::canonical")]
    pub returned: Decimal,
}

impl Line {
    /// A new line with nothing shipped, cancelled, invoiced or returned yet.
    pub fn new(line: u32, priced: Priced) -> Self {
        Self {
            line,
            net_amount: net_amount(priced.quantity, priced.unit_price, priced.discount_percent),
            sku: priced.sku,
            name: priced.name,
            unit: priced.unit,
            quantity: priced.quantity,
            unit_price: priced.unit_price,
            discount_percent: priced.discount_percent,
            tax_rate: priced.tax_rate,
            shipped: Decimal::ZERO,
            cancelled: Decimal::ZERO,
            invoiced: Decimal::ZERO,
            returned: Decimal::ZERO,
        }
    }

    /// Still to ship: neither shipped nor cancelled.
    pub fn outstanding(&self) -> Decimal {
        self.quantity - self.shipped - self.cancelled
    }

    /// Shipped and not yet invoiced.
    pub fn invoiceable(&self) -> Decimal {
        self.shipped - self.invoiced
    }

    /// Invoiced and not yet returned.
    pub fn returnable(&self) -> Decimal {
        self.invoiced - self.returned
    }

    pub fn tax(&self) -> Decimal {
        round_cents(self.net_amount * self.tax_rate / Decimal::ONE_HUNDRED)
    }

    /// The value with tax of `quantity` of this line, unrounded: its share of the line's net
    /// amount (which the customer agreed to) plus tax.
    fn value_of(&self, quantity: Decimal) -> Decimal {
        if self.quantity.is_zero() {
            return Decimal::ZERO;
        }
        let net = self.net_amount * quantity / self.quantity;
        net + net * self.tax_rate / Decimal::ONE_HUNDRED
    }
}

/// What a line is made of before it is numbered.
#[derive(Debug, Clone)]
pub struct Priced {
    pub sku: String,
    pub name: String,
    pub unit: String,
    pub quantity: Decimal,
    pub unit_price: Decimal,
    pub discount_percent: Decimal,
    pub tax_rate: Decimal,
}

/// quantity × unit price × (1 − discount), rounded to cents.
pub fn net_amount(quantity: Decimal, unit_price: Decimal, discount_percent: Decimal) -> Decimal {
    round_cents(
        quantity * unit_price * (Decimal::ONE_HUNDRED - discount_percent) / Decimal::ONE_HUNDRED,
    )
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    #[serde(with = "money::cents")]
    pub net: Decimal,
    /// The sum of each line's tax, rounded per line.
    #[serde(with = "money::cents")]
    pub tax: Decimal,
    #[serde(with = "money::cents")]
    pub total: Decimal,
}

impl Totals {
    pub fn of(lines: &[Line]) -> Self {
        let net: Decimal = lines.iter().map(|l| l.net_amount).sum();
        let tax: Decimal = lines.iter().map(Line::tax).sum();
        Self {
            net,
            tax,
            total: net + tax,
        }
    }
}

/// The outcome of the credit check when the order was confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    /// Receivable plus open orders (this one included), with tax; absent without a limit or
    /// when the amounts are in different currencies.
    pub exposure: Option<String>,
    pub limit: Option<String>,
    pub currency: Option<String>,
    /// `no_limit`, `within_limit`, `over_limit` or `not_comparable`.
    pub result: String,
    pub checked_on: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub reason: String,
    pub since: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentLine {
    pub line: u32,
    #[serde(with = "money::canonical")]
    pub quantity: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipment {
    pub number: String,
    pub date: String,
    pub lines: Vec<ShipmentLine>,
    pub shipped_by: Option<i64>,
}

/// One step in the order's life: who did what, when, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub date: String,
    /// What happened: created, confirmed, held, released, shipped, cancelled, invoiced,
    /// uninvoiced, returned.
    pub action: String,
    /// The order's status afterwards.
    pub status: Status,
    /// None when the plugin acted on an event.
    pub user: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub number: String,
    pub status: Status,
    pub party: i64,
    /// The party's name when the order was entered: the document shows whom it was for.
    pub party_name: String,
    pub currency: String,
    pub order_date: String,
    /// The user who entered it, or the owner of the quote it came from.
    pub owner: Option<i64>,
    /// The cpq quote it came from.
    pub quote: Option<String>,
    pub customer_reference: Option<String>,
    pub lines: Vec<Line>,
    pub totals: Totals,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit: Option<Credit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    pub shipments: Vec<Shipment>,
    pub history: Vec<HistoryEntry>,
}

impl Order {
    /// Records a step in the history, by the acting user.
    pub fn record(&mut self, action: &str, note: Option<String>) {
        self.history.push(HistoryEntry {
            date: dates::format(dates::today()),
            action: action.to_owned(),
            status: self.status,
            user: keel_sdk::user_id(),
            note,
        });
    }

    /// The value with tax the customer will still be invoiced for: neither cancelled nor
    /// invoiced yet. Exactly the total while nothing is.
    pub fn open_value(&self) -> Decimal {
        let untouched = self
            .lines
            .iter()
            .all(|l| l.cancelled.is_zero() && l.invoiced.is_zero());
        if untouched {
            return self.totals.total;
        }
        round_cents(
            self.lines
                .iter()
                .map(|l| l.value_of(l.quantity - l.cancelled - l.invoiced))
                .sum(),
        )
    }

    /// The value with tax of what was invoiced.
    pub fn invoiced_value(&self) -> Decimal {
        round_cents(self.lines.iter().map(|l| l.value_of(l.invoiced)).sum())
    }

    /// The status after shipping or cancelling: cancelled when every unit is, shipped when
    /// every other unit is, partially shipped when some are.
    pub fn settle_status(&mut self) {
        let all_cancelled = self.lines.iter().all(|l| l.cancelled == l.quantity);
        let any_shipped = self.lines.iter().any(|l| !l.shipped.is_zero());
        let none_outstanding = self.lines.iter().all(|l| l.outstanding().is_zero());
        if all_cancelled {
            self.status = Status::Cancelled;
        } else if none_outstanding {
            self.status = Status::Shipped;
        } else if any_shipped {
            self.status = Status::PartiallyShipped;
        }
    }

    pub fn subject(&self) -> String {
        format!("order/{}", self.number)
    }
}

/// The next order number: `SO-000001`, without gaps.
pub fn next_number() -> Result<String, Error> {
    Ok(format!(
        "SO-{:06}",
        keel_sdk::storage::next_number(NUMBER_SEQUENCE)?
    ))
}

/// The order as the API shows it: the record, with each line's `backordered` quantity while
/// the order is partially shipped.
pub fn view(order: &Order) -> Value {
    let mut value = json!(order);
    if order.status == Status::PartiallyShipped
        && let Some(lines) = value["lines"].as_array_mut()
    {
        for (shown, line) in lines.iter_mut().zip(&order.lines) {
            shown["backordered"] = json!(money::text(line.outstanding()));
        }
    }
    value
}

/// The problem answer for an order that does not exist.
pub fn not_found(number: &str) -> Error {
    Error::NotFound(format!("there is no order {number}"))
}

/// The order `number`, to read.
pub fn load(number: &str) -> Result<Order, Error> {
    ORDERS.get(number)?.ok_or_else(|| not_found(number))
}

/// The order `number`, reserved until the call ends, to change.
pub fn load_for_update(number: &str) -> Result<Order, Error> {
    ORDERS
        .get_for_update(number)?
        .ok_or_else(|| not_found(number))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        text.parse().expect("a decimal")
    }

    fn line(number: u32, quantity: &str, price: &str, discount: &str, tax: &str) -> Line {
        Line::new(
            number,
            Priced {
                sku: format!("SKU-{number}"),
                name: "Thing".to_owned(),
                unit: "pc".to_owned(),
                quantity: d(quantity),
                unit_price: d(price),
                discount_percent: d(discount),
                tax_rate: d(tax),
            },
        )
    }

    fn order(lines: Vec<Line>) -> Order {
        Order {
            number: "SO-000001".to_owned(),
            status: Status::Confirmed,
            party: 1,
            party_name: "Acme".to_owned(),
            currency: "USD".to_owned(),
            order_date: "2026-01-01".to_owned(),
            owner: None,
            quote: None,
            customer_reference: None,
            totals: Totals::of(&lines),
            lines,
            credit: None,
            hold: None,
            shipments: Vec::new(),
            history: Vec::new(),
        }
    }

    #[test]
    fn line_amounts_round_to_cents_and_tax_rounds_per_line() {
        let a = line(1, "3", "3.335", "10", "19");
        // 3 × 3.335 × 0.9 = 9.0045
        assert_eq!(a.net_amount, d("9.00"));
        assert_eq!(a.tax(), d("1.71"));
        let b = line(2, "1", "0.05", "0", "7");
        assert_eq!(b.tax(), d("0.00"));
        let totals = Totals::of(&[a, b]);
        assert_eq!(
            (totals.net, totals.tax, totals.total),
            (d("9.05"), d("1.71"), d("10.76"))
        );
    }

    #[test]
    fn the_status_follows_shipments_and_cancellations() {
        let mut o = order(vec![
            line(1, "2", "10", "0", "19"),
            line(2, "1", "5", "0", "19"),
        ]);
        o.lines[0].shipped = d("1");
        o.settle_status();
        assert_eq!(o.status, Status::PartiallyShipped);
        assert_eq!(view(&o)["lines"][0]["backordered"], "1");
        o.lines[0].shipped = d("2");
        o.lines[1].cancelled = d("1");
        o.settle_status();
        assert_eq!(o.status, Status::Shipped);
        let mut c = order(vec![line(1, "2", "10", "0", "19")]);
        c.lines[0].cancelled = d("2");
        c.settle_status();
        assert_eq!(c.status, Status::Cancelled);
        assert!(view(&c)["lines"][0].get("backordered").is_none());
    }

    #[test]
    fn the_open_value_leaves_out_what_is_cancelled_or_invoiced() {
        let mut o = order(vec![line(1, "4", "25", "0", "10")]);
        assert_eq!(o.open_value(), d("110.00"));
        o.lines[0].cancelled = d("1");
        o.lines[0].invoiced = d("1");
        assert_eq!(o.open_value(), d("55.00"));
        assert_eq!(o.invoiced_value(), d("27.50"));
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for (status, name) in STATUSES {
            assert_eq!(status.name(), *name);
            assert_eq!(Status::parse(name), Some(*status));
            assert_eq!(serde_json::to_value(status).expect("json"), json!(name));
        }
    }
}
