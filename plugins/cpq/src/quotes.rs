//! Quotes: numbered, versioned offers to a party. Creating or revising one configures its
//! lines, prices them from the party's price book, lets `cpq.price-adjust` implementations
//! adjust them, applies manual discounts, totals them and works out the approvals the
//! discount needs. The latest version of each quote lives in `quotes`; the versions it
//! replaced are kept, superseded, in `quote-versions`.

use std::collections::HashMap;

use keel_sdk::dates::{self, NaiveDate};
use keel_sdk::router::Params;
use keel_sdk::storage::{self, Collection};
use keel_sdk::{Error, FieldErrors, Header, Reach, Request, Response, events, hooks, parties};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::adjust::{self, HookLine};
use crate::amount::{self, QUANTITY_MAX};
use crate::approvals::{self, Step};
use crate::catalog::{self, Chosen, Kind, PRODUCTS, Product};
use crate::input::{self, Object};
use crate::pricing::{self, BOOKS, LineAmounts, PRICES, Price, TaxLine, Totals};
use crate::{QUOTES_READ, QUOTES_WRITE, html};

pub const QUOTES_COLLECTION: &str = "quotes";
/// The latest version of every quote, keyed by number.
pub const QUOTES: Collection<Quote> = Collection::new(QUOTES_COLLECTION);
/// Superseded versions, keyed `<number>/<version>`.
pub const VERSIONS: Collection<Quote> = Collection::new("quote-versions");
pub const BY_OWNER_STATUS: &str = "by-owner-status";
pub const BY_PARTY: &str = "by-party";
pub const BY_STATUS_VALID_UNTIL: &str = "by-status-valid-until";
/// Published when a customer accepts a quote; the orders module turns it into an order.
pub const ACCEPTED_TOPIC: &str = "cpq.quote.accepted";

/// Most lines of one quote: large B2B quotes run to a few hundred lines, and each line costs
/// a few host calls (at most about eight for a bundle), well inside a call's host-call limit.
pub const LINES_MAX: usize = 500;
pub const NOTES_CHARS_MAX: usize = 4_000;
pub const REASON_CHARS_MAX: usize = 2_000;
const NUMBER_SEQUENCE: &str = "quotes";
const LIST_ITEMS_DEFAULT: usize = 100;
const LIST_ITEMS_MAX: usize = 500;
/// The custom field on parties (declared in the manifest as `segment`) naming their segment.
pub const SEGMENT_FIELD: &str = "cpq_segment";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Draft,
    PendingApproval,
    Approved,
    /// An approver refused the discount; the quote must be revised.
    ApprovalRejected,
    Sent,
    Accepted,
    Rejected,
    Superseded,
    /// Never stored: an open quote whose `valid_until` has passed shows as expired on read.
    Expired,
}

const STATUSES: &[(Status, &str)] = &[
    (Status::Draft, "draft"),
    (Status::PendingApproval, "pending_approval"),
    (Status::Approved, "approved"),
    (Status::ApprovalRejected, "approval_rejected"),
    (Status::Sent, "sent"),
    (Status::Accepted, "accepted"),
    (Status::Rejected, "rejected"),
    (Status::Superseded, "superseded"),
    (Status::Expired, "expired"),
];

impl Status {
    pub fn name(self) -> &'static str {
        STATUSES
            .iter()
            .find(|(status, _)| *status == self)
            .map_or("unknown", |(_, name)| name)
    }

    fn parse(text: &str) -> Option<Self> {
        STATUSES
            .iter()
            .find(|(_, name)| *name == text)
            .map(|(status, _)| *status)
    }

    /// Still before the customer; such a quote expires after its `valid_until`.
    fn is_open(self) -> bool {
        matches!(
            self,
            Self::Draft | Self::PendingApproval | Self::Approved | Self::Sent
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineComponent {
    pub sku: String,
    pub name: String,
    /// Per bundle.
    #[serde(with = "amount::canonical")]
    pub quantity: Decimal,
    /// Under its tiers at the line's total quantity of it.
    #[serde(with = "amount::canonical")]
    pub unit_price: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub line: u32,
    pub sku: String,
    pub name: String,
    pub kind: Kind,
    pub unit: String,
    #[serde(with = "amount::canonical")]
    pub quantity: Decimal,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<LineComponent>,
    #[serde(with = "amount::canonical")]
    pub tax_rate: Decimal,
    /// Without tiers.
    #[serde(with = "amount::canonical")]
    pub list_unit_price: Decimal,
    #[serde(with = "amount::cents")]
    pub list_amount: Decimal,
    /// After tiers.
    #[serde(with = "amount::canonical")]
    pub tier_unit_price: Decimal,
    /// After tiers and price adjustments: the price the discount applies to.
    #[serde(with = "amount::canonical")]
    pub unit_price: Decimal,
    #[serde(with = "amount::cents")]
    pub gross_amount: Decimal,
    /// What the quote's author asked for.
    #[serde(with = "amount::canonical")]
    pub requested_discount_percent: Decimal,
    /// What applies, after price adjustments.
    #[serde(with = "amount::canonical")]
    pub discount_percent: Decimal,
    #[serde(with = "amount::cents")]
    pub discount_amount: Decimal,
    #[serde(with = "amount::cents")]
    pub net_amount: Decimal,
}

/// A line a `cpq.price-adjust` implementation changed, and by how much.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjustment {
    pub line: u32,
    pub sku: String,
    #[serde(with = "amount::canonical")]
    pub unit_price_before: Decimal,
    #[serde(with = "amount::canonical")]
    pub unit_price_after: Decimal,
    #[serde(with = "amount::canonical")]
    pub unit_price_change: Decimal,
    #[serde(with = "amount::canonical")]
    pub discount_percent_before: Decimal,
    #[serde(with = "amount::canonical")]
    pub discount_percent_after: Decimal,
    /// Change of the line's gross amount (before manual discounts).
    #[serde(with = "amount::cents")]
    pub amount_change: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    pub number: String,
    pub version: u32,
    pub status: Status,
    /// The user who created the quote; reach (own, team, all) is decided on it.
    pub owner: Option<i64>,
    pub party: i64,
    /// The party's name when the version was priced: the document shows what was offered.
    pub party_name: String,
    pub currency: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    pub price_book: String,
    pub quote_date: String,
    pub valid_until: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    pub lines: Vec<Line>,
    pub taxes: Vec<TaxLine>,
    pub totals: Totals,
    pub price_adjustments: Vec<Adjustment>,
    /// The largest discount of a line: what approvals are decided on.
    #[serde(with = "amount::canonical")]
    pub discount_percent: Decimal,
    /// The approval chain the discount needs; empty when within every threshold.
    pub approvals: Vec<Step>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_on: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_on: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_on: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejection_reason: Option<String>,
    /// Who recorded the customer's acceptance or rejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<u32>,
}

/// What a quote line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRequest {
    pub sku: String,
    pub quantity: Decimal,
    pub discount_percent: Decimal,
    /// A bundle's chosen components; its default configuration when absent.
    pub components: Option<Vec<Chosen>>,
}

/// The fields of a quote request; which are allowed and required depends on the route.
#[derive(Debug, Default)]
pub struct Fields {
    pub party: Option<i64>,
    pub currency: Option<String>,
    pub quote_date: Option<NaiveDate>,
    pub valid_until: Option<NaiveDate>,
    pub notes: Option<String>,
    pub has_notes: bool,
    pub lines: Option<Vec<LineRequest>>,
}

const CREATE_FIELDS: &[&str] = &[
    "party",
    "currency",
    "quote_date",
    "valid_until",
    "lines",
    "notes",
];
const REVISE_FIELDS: &[&str] = &["quote_date", "valid_until", "lines", "notes"];
const PRICE_FIELDS: &[&str] = &["party", "currency", "lines"];

/// Reads a quote request: the `known` fields, of which `required` must be present.
pub fn read_fields(body: &Value, known: &[&str], required: &[&str]) -> Result<Fields, Error> {
    let object = input::root(body)?;
    let mut errors = FieldErrors::new();
    object.only(known, &mut errors);
    for name in required {
        if !object.has(name) {
            errors.add(*name, "is required");
        }
    }
    let mut fields = Fields::default();
    if object.has("party") {
        fields.party = object.integer("party", &mut errors);
    }
    if let Some(currency) = object.optional_text("currency", 3, &mut errors) {
        if pricing::is_currency(&currency) {
            fields.currency = Some(currency);
        } else {
            errors.add("currency", "is three upper-case letters, e.g. EUR");
        }
    }
    for (name, slot) in [
        ("quote_date", &mut fields.quote_date),
        ("valid_until", &mut fields.valid_until),
    ] {
        if let Some(text) = object.optional_text(name, 10, &mut errors) {
            match dates::parse(name, &text) {
                Ok(date) => *slot = Some(date),
                Err(error) => errors.absorb(error)?,
            }
        }
    }
    fields.has_notes = object.has("notes");
    fields.notes = object.optional_text("notes", NOTES_CHARS_MAX, &mut errors);
    if let Some(items) = object.optional_array("lines", LINES_MAX, &mut errors) {
        if items.is_empty() {
            errors.add("lines", "a quote has at least one line");
        }
        fields.lines = Some(
            items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| read_line(item, &format!("lines[{i}]"), &mut errors))
                .collect(),
        );
    }
    errors.finish()?;
    Ok(fields)
}

fn read_line(value: &Value, path: &str, errors: &mut FieldErrors) -> Option<LineRequest> {
    let object = Object::at(value, path, errors)?;
    object.only(
        &["sku", "quantity", "discount_percent", "components"],
        errors,
    );
    let sku = object.text("sku", catalog::SKU_CHARS_MAX, errors);
    let quantity = object.decimal_within(
        "quantity",
        Decimal::ZERO,
        Decimal::from(QUANTITY_MAX),
        true,
        errors,
    );
    if quantity == Some(Decimal::ZERO) {
        errors.add(object.path("quantity"), "is greater than zero");
    }
    let discount_percent = object
        .decimal_within(
            "discount_percent",
            Decimal::ZERO,
            Decimal::ONE_HUNDRED,
            false,
            errors,
        )
        .unwrap_or_default();
    let components = object
        .optional_array("components", catalog::COMPONENTS_MAX, errors)
        .map(|items| {
            items
                .iter()
                .enumerate()
                .filter_map(|(j, item)| {
                    let at = format!("{path}.components[{j}]");
                    let component = Object::at(item, &at, errors)?;
                    component.only(&["sku", "quantity"], errors);
                    let sku = component.text("sku", catalog::SKU_CHARS_MAX, errors);
                    let quantity = component.decimal_within(
                        "quantity",
                        Decimal::ZERO,
                        Decimal::from(catalog::COMPONENT_QUANTITY_MAX),
                        true,
                        errors,
                    );
                    Some(Chosen {
                        sku: sku?,
                        quantity: quantity?,
                    })
                })
                .collect()
        });
    Some(LineRequest {
        sku: sku?,
        quantity: quantity.filter(|q| !q.is_zero())?,
        discount_percent,
        components,
    })
}

/// Why pricing failed: the request (a 4xx naming the field), or a `cpq.price-adjust`
/// implementation (a 502: the request is fine, a plugin extending the quote is not).
#[derive(Debug)]
pub enum Failure {
    Request(Error),
    Hook(String),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self::Request(error)
    }
}

/// Answers with the handler's response; a failed hook is a 502 problem.
fn answer(result: Result<Response, Failure>) -> Result<Response, Error> {
    match result {
        Ok(response) => Ok(response),
        Err(Failure::Request(error)) => Err(error),
        Err(Failure::Hook(detail)) => Ok(Response::problem(502, &detail)),
    }
}

/// A priced set of lines for a party, before it becomes (a version of) a quote.
#[derive(Debug, Clone)]
pub struct Priced {
    pub party_name: String,
    pub currency: String,
    pub segment: Option<String>,
    pub price_book: String,
    pub lines: Vec<Line>,
    pub taxes: Vec<TaxLine>,
    pub totals: Totals,
    pub adjustments: Vec<Adjustment>,
    pub discount_percent: Decimal,
}

struct PartyInfo {
    name: String,
    status: String,
    segment: Option<String>,
    default_currency: Option<String>,
}

fn party_info(id: i64) -> Result<PartyInfo, Error> {
    let json = match parties::get(id) {
        Ok(json) => json,
        Err(Error::NotFound(_)) => {
            return Err(Error::invalid("party", format!("there is no party {id}")));
        }
        Err(other) => return Err(other),
    };
    let party: Value = serde_json::from_str(&json)
        .map_err(|e| Error::Internal(format!("the host's party {id} is not JSON: {e}")))?;
    let text = |value: &Value| value.as_str().map(str::to_owned);
    Ok(PartyInfo {
        name: text(&party["name"]).unwrap_or_default(),
        status: text(&party["status"]).unwrap_or_default(),
        segment: text(&party["custom_fields"][SEGMENT_FIELD])
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty()),
        default_currency: text(&party["default_currency"]),
    })
}

/// A line resolved against the catalog and the price book.
struct Resolved<'a> {
    request: &'a LineRequest,
    product: Product,
    price: Price,
    components: Vec<(Product, Decimal, Price)>,
}

/// Catalog records and prices read once per call, however many lines name them.
#[derive(Default)]
struct Lookups {
    products: HashMap<String, Option<Product>>,
    prices: HashMap<String, Option<Price>>,
}

/// Keys one `get-many` host call takes at most.
const KEYS_PER_READ: usize = 1_000;

impl Lookups {
    /// Reads, a few host calls in all, every product the lines name, the components their
    /// bundles may hold, and the prices of all of them in `book`; later lookups are in memory.
    fn preload(&mut self, requests: &[LineRequest], book: &str) -> Result<(), Error> {
        let mut skus: Vec<String> = requests.iter().map(|r| r.sku.clone()).collect();
        for request in requests {
            if let Some(chosen) = &request.components {
                skus.extend(chosen.iter().map(|c| c.sku.clone()));
            }
        }
        self.read_products(skus)?;
        let components: Vec<String> = self
            .products
            .values()
            .flatten()
            .flat_map(|product| product.components.iter().map(|c| c.sku.clone()))
            .collect();
        self.read_products(components)?;
        let mut keys: Vec<String> = self
            .products
            .values()
            .flatten()
            .map(|product| pricing::price_key(book, &product.sku))
            .filter(|key| !self.prices.contains_key(key))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for chunk in keys.chunks(KEYS_PER_READ) {
            for (key, price) in chunk.iter().zip(PRICES.get_many(chunk)?) {
                self.prices.insert(key.clone(), price);
            }
        }
        Ok(())
    }

    fn read_products(&mut self, mut skus: Vec<String>) -> Result<(), Error> {
        skus.retain(|sku| !self.products.contains_key(sku));
        skus.sort_unstable();
        skus.dedup();
        for chunk in skus.chunks(KEYS_PER_READ) {
            for (sku, product) in chunk.iter().zip(PRODUCTS.get_many(chunk)?) {
                self.products.insert(sku.clone(), product);
            }
        }
        Ok(())
    }

    fn product(&mut self, sku: &str) -> Result<Option<Product>, Error> {
        if let Some(found) = self.products.get(sku) {
            return Ok(found.clone());
        }
        let found = PRODUCTS.get(sku)?;
        self.products.insert(sku.to_owned(), found.clone());
        Ok(found)
    }

    fn price(&mut self, book: &str, sku: &str) -> Result<Option<Price>, Error> {
        let key = pricing::price_key(book, sku);
        if let Some(found) = self.prices.get(&key) {
            return Ok(found.clone());
        }
        let found = PRICES.get(&key)?;
        self.prices.insert(key, found.clone());
        Ok(found)
    }
}

/// Prices lines for a party: the party's price book, list and tier prices, the price-adjust
/// hook, manual discounts, taxes and totals. Writes nothing.
pub fn price(
    party: i64,
    currency: Option<&str>,
    requests: &[LineRequest],
) -> Result<Priced, Failure> {
    let info = party_info(party)?;
    if info.status != "active" {
        return Err(Error::invalid(
            "party",
            format!("party {party} is {}: it takes no new quotes", info.status),
        )
        .into());
    }
    let currency = match currency.map(str::to_owned).or(info.default_currency) {
        Some(currency) => currency,
        None => return Err(Error::invalid("currency", "is required").into()),
    };
    let books: Vec<_> = BOOKS.all()?.into_iter().map(|(_, book)| book).collect();
    let Some(book) = pricing::choose(&books, &currency, info.segment.as_deref()).cloned() else {
        return Err(Error::invalid(
            "currency",
            format!(
                "no price book prices {currency}{}; create one with POST /price-books",
                info.segment
                    .as_deref()
                    .map_or_else(String::new, |s| format!(
                        " (neither for segment {s} nor without a segment)"
                    ))
            ),
        )
        .into());
    };

    let mut lookups = Lookups::default();
    lookups.preload(requests, &book.code)?;
    let mut errors = FieldErrors::new();
    let mut resolved = Vec::with_capacity(requests.len());
    for (i, request) in requests.iter().enumerate() {
        let path = format!("lines[{i}]");
        let sku_path = format!("{path}.sku");
        let components_path = format!("{path}.components");
        let Some(product) = lookups.product(&request.sku)? else {
            errors.add(sku_path, format!("there is no product {}", request.sku));
            continue;
        };
        if !product.active {
            errors.add(
                sku_path,
                format!(
                    "product {} is inactive: it is not sold any more",
                    product.sku
                ),
            );
            continue;
        }
        let chosen = match product.kind {
            Kind::Product if request.components.is_some() => {
                errors.add(
                    components_path,
                    format!(
                        "{} is a product, not a bundle: only bundles take components",
                        product.sku
                    ),
                );
                continue;
            }
            Kind::Product => Vec::new(),
            Kind::Bundle => {
                catalog::configure(&product, request.components.as_deref(), &path, &mut errors)
            }
        };
        let price = lookups.price(&book.code, &product.sku)?;
        if price.is_none() {
            errors.add(
                sku_path,
                format!("price book {} has no price for {}", book.code, product.sku),
            );
        }
        let mut components = Vec::with_capacity(chosen.len());
        for choice in chosen {
            let component = match lookups.product(&choice.sku)? {
                Some(component) if component.active => component,
                Some(_) => {
                    errors.add(
                        components_path.clone(),
                        format!(
                            "component {} is inactive: it is not sold any more",
                            choice.sku
                        ),
                    );
                    continue;
                }
                None => {
                    errors.add(
                        components_path.clone(),
                        format!("component {} is no longer in the catalog", choice.sku),
                    );
                    continue;
                }
            };
            match lookups.price(&book.code, &choice.sku)? {
                Some(component_price) => {
                    components.push((component, choice.quantity, component_price));
                }
                None => errors.add(
                    components_path.clone(),
                    format!(
                        "price book {} has no price for component {}",
                        book.code, choice.sku
                    ),
                ),
            }
        }
        if let Some(price) = price {
            resolved.push(Resolved {
                request,
                product,
                price,
                components,
            });
        }
    }
    errors.finish()?;

    let list_prices: Vec<pricing::ListPrice> = resolved
        .iter()
        .map(|r| {
            let components: Vec<(&Price, Decimal)> =
                r.components.iter().map(|(_, q, p)| (p, *q)).collect();
            pricing::list_price(&r.price, r.request.quantity, &components)
        })
        .collect();
    let hook_lines: Vec<HookLine> = resolved
        .iter()
        .zip(&list_prices)
        .zip(1..)
        .map(|((r, list), line)| HookLine {
            line,
            sku: r.product.sku.clone(),
            quantity: r.request.quantity,
            unit_price: list.tier_unit_price,
            discount_percent: r.request.discount_percent,
        })
        .collect();
    let adjusted = run_hook(party, &currency, info.segment.as_deref(), &hook_lines)?;

    let mut lines = Vec::with_capacity(resolved.len());
    let mut adjustments = Vec::new();
    let mut for_totals: Vec<(LineAmounts, Decimal)> = Vec::with_capacity(resolved.len());
    for (((r, list), before), after) in resolved
        .iter()
        .zip(&list_prices)
        .zip(&hook_lines)
        .zip(adjusted)
    {
        let amounts = pricing::line_amounts(
            r.request.quantity,
            list,
            after.unit_price,
            after.discount_percent,
        );
        if after.unit_price != before.unit_price
            || after.discount_percent != before.discount_percent
            || after.notes.is_some()
        {
            adjustments.push(Adjustment {
                line: before.line,
                sku: before.sku.clone(),
                unit_price_before: before.unit_price,
                unit_price_after: after.unit_price,
                unit_price_change: after.unit_price - before.unit_price,
                discount_percent_before: before.discount_percent,
                discount_percent_after: after.discount_percent,
                amount_change: amounts.gross_amount - amount::money(list.tier_amount),
                notes: after.notes.clone(),
            });
        }
        lines.push(Line {
            line: before.line,
            sku: r.product.sku.clone(),
            name: r.product.name.clone(),
            kind: r.product.kind,
            unit: r.product.unit.clone(),
            quantity: r.request.quantity,
            components: r
                .components
                .iter()
                .zip(&list.component_unit_prices)
                .map(|((product, quantity, _), unit_price)| LineComponent {
                    sku: product.sku.clone(),
                    name: product.name.clone(),
                    quantity: *quantity,
                    unit_price: *unit_price,
                })
                .collect(),
            tax_rate: r.product.tax_rate,
            list_unit_price: list.list_unit_price,
            list_amount: amounts.list_amount,
            tier_unit_price: list.tier_unit_price,
            unit_price: after.unit_price,
            gross_amount: amounts.gross_amount,
            requested_discount_percent: r.request.discount_percent,
            discount_percent: after.discount_percent,
            discount_amount: amounts.discount_amount,
            net_amount: amounts.net_amount,
        });
        for_totals.push((amounts, r.product.tax_rate));
    }
    let (taxes, totals) = pricing::totals(&for_totals);
    let discount_percent = lines
        .iter()
        .map(|l| l.discount_percent)
        .max()
        .unwrap_or_default();
    Ok(Priced {
        party_name: info.name,
        currency,
        segment: info.segment,
        price_book: book.code,
        lines,
        taxes,
        totals,
        adjustments,
        discount_percent,
    })
}

/// Runs the implementations of `cpq.price-adjust` once over the whole quote.
fn run_hook(
    party: i64,
    currency: &str,
    segment: Option<&str>,
    lines: &[HookLine],
) -> Result<Vec<adjust::Adjusted>, Failure> {
    let input = adjust::input(party, currency, segment, lines);
    let output = match hooks::run(adjust::POINT, &input.to_string()) {
        Ok(output) => output,
        // The host reports an implementation that failed, trapped, overran its budget or
        // broke the output schema as `internal`, naming the plugin.
        Err(Error::Internal(detail)) => {
            return Err(Failure::Hook(format!("pricing failed: {detail}")));
        }
        Err(other) => return Err(other.into()),
    };
    let output: Value = serde_json::from_str(&output).map_err(|e| {
        Failure::Hook(format!(
            "pricing failed: {} returned output that is not JSON: {e}",
            adjust::POINT
        ))
    })?;
    adjust::check(party, currency, lines, &output).map_err(|problem| {
        Failure::Hook(format!(
            "pricing failed: an implementation of {} returned {problem}",
            adjust::POINT
        ))
    })
}

/// The status a reader sees: an open quote past its validity shows as expired.
pub fn effective_status(quote: &Quote, today: NaiveDate) -> Status {
    if quote.status.is_open() && quote.valid_until < dates::format(today) {
        Status::Expired
    } else {
        quote.status
    }
}

/// The quote as a reader sees it today.
pub fn view(quote: &Quote) -> Quote {
    let mut view = quote.clone();
    view.status = effective_status(quote, dates::today());
    view
}

/// The refusal for a quote past its validity.
pub fn expired(quote: &Quote) -> Error {
    let expired_on = dates::parse("valid_until", &quote.valid_until)
        .ok()
        .and_then(|date| date.succ_opt())
        .map_or_else(|| quote.valid_until.clone(), dates::format);
    Error::Conflict(format!(
        "quote {} expired on {expired_on} (valid until {}); revise it with a new validity date",
        quote.number, quote.valid_until
    ))
}

fn not_found(number: &str) -> Error {
    Error::NotFound(format!("there is no quote {number}"))
}

fn reach(permission: &str, doing: &str) -> Result<Reach, Error> {
    Reach::of(permission)
        .ok_or_else(|| Error::Denied(format!("{doing} needs the permission {permission}")))
}

/// The latest version, whoever asks.
pub fn load_latest(number: &str) -> Result<Quote, Error> {
    QUOTES.get(number)?.ok_or_else(|| not_found(number))
}

/// The latest version, reserved until the call ends: two changes of one quote (an
/// acceptance and a revision, two approvals) run one after the other, the second seeing the
/// first's result.
pub fn load_latest_for_update(number: &str) -> Result<Quote, Error> {
    QUOTES
        .get_for_update(number)?
        .ok_or_else(|| not_found(number))
}

pub fn save_latest(quote: &Quote) -> Result<(), Error> {
    QUOTES.put(&quote.number, quote)
}

/// The latest version, if the acting user's `quotes:read` reaches its owner; a quote out of
/// reach is not revealed.
pub fn load_readable(number: &str) -> Result<Quote, Error> {
    let reach = reach(QUOTES_READ, "reading quotes")?;
    let quote = load_latest(number)?;
    if reach.covers(quote.owner) {
        Ok(quote)
    } else {
        Err(not_found(number))
    }
}

/// The latest version, if the acting user's `quotes:write` reaches its owner.
fn load_writable(number: &str) -> Result<Quote, Error> {
    let write = reach(QUOTES_WRITE, "changing quotes")?;
    let quote = load_latest_for_update(number)?;
    if write.covers(quote.owner) {
        return Ok(quote);
    }
    if Reach::of(QUOTES_READ).is_some_and(|read| read.covers(quote.owner)) {
        Err(Error::Denied(format!(
            "your permission {QUOTES_WRITE} does not reach quote {number}, which another user owns"
        )))
    } else {
        Err(not_found(number))
    }
}

fn version_key(number: &str, version: u32) -> String {
    format!("{number}/{version:04}")
}

/// The version a `?version=` asks for, the latest by default.
fn requested_version(request: &Request, latest: Quote) -> Result<Quote, Error> {
    let Some(text) = request.query_param("version").filter(|t| !t.is_empty()) else {
        return Ok(latest);
    };
    let version: u32 = text
        .parse()
        .map_err(|_| Error::invalid("version", format!("{text:?} is not a version number")))?;
    if version == latest.version {
        return Ok(latest);
    }
    let missing = || {
        Error::NotFound(format!(
            "quote {} has no version {version}; its latest is {}",
            latest.number, latest.version
        ))
    };
    if version == 0 || version > latest.version {
        return Err(missing());
    }
    VERSIONS
        .get(&version_key(&latest.number, version))?
        .ok_or_else(missing)
}

/// The refusal to send or accept a quote in `status`.
fn not_offerable(quote: &Quote, status: Status, doing: &str) -> Error {
    match status {
        Status::Expired => expired(quote),
        Status::PendingApproval => {
            let waiting = approvals::next_pending(&quote.approvals)
                .map(|i| &quote.approvals[i])
                .map_or_else(String::new, |step| {
                    format!(
                        " at the {} level (its discount of {}% is above {}%)",
                        step.level,
                        amount::text(quote.discount_percent),
                        amount::text(step.above_percent)
                    )
                });
            Error::Conflict(format!(
                "quote {} waits for approval{waiting}; it cannot be {doing} before",
                quote.number
            ))
        }
        Status::ApprovalRejected => Error::Conflict(format!(
            "the discount of quote {} was rejected; revise it",
            quote.number
        )),
        other => Error::Conflict(format!(
            "quote {} is {} already; it cannot be {doing}",
            quote.number,
            other.name()
        )),
    }
}

fn today_text() -> String {
    dates::format(dates::today())
}

pub fn create(request: &Request, _: &Params) -> Result<Response, Error> {
    answer((|| {
        reach(QUOTES_WRITE, "creating quotes")?;
        let fields = read_fields(
            &input::parse_body(&request.body)?,
            CREATE_FIELDS,
            &["party", "valid_until", "lines"],
        )?;
        let quote_date = fields.quote_date.unwrap_or_else(dates::today);
        let valid_until = check_validity(quote_date, fields.valid_until)?;
        let party = fields.party.unwrap_or_default();
        let lines = fields.lines.unwrap_or_default();
        let priced = price(party, fields.currency.as_deref(), &lines)?;
        let number = format!("Q-{:06}", storage::next_number(NUMBER_SEQUENCE)?);
        let quote = new_version(
            number,
            1,
            keel_sdk::user_id(),
            party,
            quote_date,
            valid_until,
            fields.notes,
            priced,
        )?;
        QUOTES.put(&quote.number, &quote)?;
        Ok(Response::json(201, &view(&quote)))
    })())
}

fn check_validity(
    quote_date: NaiveDate,
    valid_until: Option<NaiveDate>,
) -> Result<NaiveDate, Error> {
    match valid_until {
        Some(valid_until) if valid_until >= quote_date => Ok(valid_until),
        Some(_) => Err(Error::invalid(
            "valid_until",
            format!("is on or after quote_date ({})", dates::format(quote_date)),
        )),
        None => Err(Error::invalid("valid_until", "is required")),
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "the parts of a new version, each named"
)]
fn new_version(
    number: String,
    version: u32,
    owner: Option<i64>,
    party: i64,
    quote_date: NaiveDate,
    valid_until: NaiveDate,
    notes: Option<String>,
    priced: Priced,
) -> Result<Quote, Error> {
    let steps = approvals::chain(&approvals::settings()?.levels, priced.discount_percent);
    Ok(Quote {
        number,
        version,
        status: if steps.is_empty() {
            Status::Draft
        } else {
            Status::PendingApproval
        },
        owner,
        party,
        party_name: priced.party_name,
        currency: priced.currency,
        segment: priced.segment,
        price_book: priced.price_book,
        quote_date: dates::format(quote_date),
        valid_until: dates::format(valid_until),
        notes,
        lines: priced.lines,
        taxes: priced.taxes,
        totals: priced.totals,
        price_adjustments: priced.adjustments,
        discount_percent: priced.discount_percent,
        approvals: steps,
        sent_on: None,
        accepted_on: None,
        rejected_on: None,
        rejection_reason: None,
        decided_by: None,
        superseded_by: None,
    })
}

/// The requests a version's lines came from, to price them again in a revision.
fn requests_of(quote: &Quote) -> Vec<LineRequest> {
    quote
        .lines
        .iter()
        .map(|line| LineRequest {
            sku: line.sku.clone(),
            quantity: line.quantity,
            discount_percent: line.requested_discount_percent,
            components: (line.kind == Kind::Bundle).then(|| {
                line.components
                    .iter()
                    .map(|c| Chosen {
                        sku: c.sku.clone(),
                        quantity: c.quantity,
                    })
                    .collect()
            }),
        })
        .collect()
}

/// `POST /quotes/{number}/revise`: a new version priced anew (with new lines and validity
/// when given, else the previous ones); the previous version is kept, superseded.
pub fn revise(request: &Request, params: &Params) -> Result<Response, Error> {
    answer((|| {
        let mut previous = load_writable(params.get("number")?)?;
        if previous.status == Status::Accepted {
            return Err(Error::Conflict(format!(
                "quote {} was accepted; an accepted quote is final",
                previous.number
            ))
            .into());
        }
        let fields = read_fields(&input::parse_body(&request.body)?, REVISE_FIELDS, &[])?;
        let quote_date = fields.quote_date.unwrap_or_else(dates::today);
        let previous_validity = dates::parse("valid_until", &previous.valid_until).ok();
        let valid_until = check_validity(quote_date, fields.valid_until.or(previous_validity))?;
        let lines = fields.lines.unwrap_or_else(|| requests_of(&previous));
        let notes = if fields.has_notes {
            fields.notes
        } else {
            previous.notes.clone()
        };
        let priced = price(previous.party, Some(&previous.currency), &lines)?;
        let quote = new_version(
            previous.number.clone(),
            previous.version + 1,
            previous.owner,
            previous.party,
            quote_date,
            valid_until,
            notes,
            priced,
        )?;
        previous.status = Status::Superseded;
        previous.superseded_by = Some(quote.version);
        VERSIONS.put(&version_key(&previous.number, previous.version), &previous)?;
        QUOTES.put(&quote.number, &quote)?;
        Ok(Response::json(201, &view(&quote)))
    })())
}

pub fn show(request: &Request, params: &Params) -> Result<Response, Error> {
    let latest = load_readable(params.get("number")?)?;
    Ok(Response::json(
        200,
        &view(&requested_version(request, latest)?),
    ))
}

/// A printable, self-contained HTML page of the quote.
pub fn show_html(request: &Request, params: &Params) -> Result<Response, Error> {
    let latest = load_readable(params.get("number")?)?;
    let quote = view(&requested_version(request, latest)?);
    Ok(Response {
        status: 200,
        headers: vec![Header {
            name: "content-type".to_owned(),
            value: "text/html; charset=utf-8".to_owned(),
        }],
        body: html::render(&quote).into_bytes(),
    })
}

pub fn send(_: &Request, params: &Params) -> Result<Response, Error> {
    let mut quote = load_writable(params.get("number")?)?;
    match effective_status(&quote, dates::today()) {
        Status::Draft | Status::Approved => {}
        other => return Err(not_offerable(&quote, other, "sent")),
    }
    quote.status = Status::Sent;
    quote.sent_on = Some(today_text());
    save_latest(&quote)?;
    Ok(Response::json(200, &view(&quote)))
}

/// `POST /quotes/{number}/accept` (optionally `{"version": n}` to say which version the
/// customer signed): records the acceptance and publishes `cpq.quote.accepted` with the
/// accepted quote as payload.
pub fn accept(request: &Request, params: &Params) -> Result<Response, Error> {
    let body = input::parse_optional_body(&request.body)?;
    let object = input::root(&body)?;
    let mut errors = FieldErrors::new();
    object.only(&["version"], &mut errors);
    let version = object
        .has("version")
        .then(|| object.integer("version", &mut errors))
        .flatten();
    errors.finish()?;
    let mut quote = load_writable(params.get("number")?)?;
    if let Some(version) = version
        && version != i64::from(quote.version)
    {
        return Err(if (1..i64::from(quote.version)).contains(&version) {
            Error::Conflict(format!(
                "version {version} of quote {} is superseded by version {}; accept the latest version",
                quote.number, quote.version
            ))
        } else {
            Error::NotFound(format!("quote {} has no version {version}", quote.number))
        });
    }
    match effective_status(&quote, dates::today()) {
        Status::Draft | Status::Approved | Status::Sent => {}
        other => return Err(not_offerable(&quote, other, "accepted")),
    }
    quote.status = Status::Accepted;
    quote.accepted_on = Some(today_text());
    quote.decided_by = keel_sdk::user_id();
    save_latest(&quote)?;
    let payload = serde_json::to_string(&quote)
        .map_err(|e| Error::Internal(format!("serializing quote {}: {e}", quote.number)))?;
    events::publish(ACCEPTED_TOPIC, &format!("quote/{}", quote.number), &payload)?;
    Ok(Response::json(200, &view(&quote)))
}

/// `POST /quotes/{number}/reject {reason}`: the customer declined.
pub fn reject(request: &Request, params: &Params) -> Result<Response, Error> {
    let body = input::parse_body(&request.body)?;
    let object = input::root(&body)?;
    let mut errors = FieldErrors::new();
    object.only(&["reason"], &mut errors);
    let reason = object.text("reason", REASON_CHARS_MAX, &mut errors);
    errors.finish()?;
    let mut quote = load_writable(params.get("number")?)?;
    match effective_status(&quote, dates::today()) {
        Status::Draft | Status::Approved | Status::Sent | Status::Expired => {}
        other => {
            return Err(Error::Conflict(format!(
                "quote {} is {}; only a quote before the customer can be rejected",
                quote.number,
                other.name()
            )));
        }
    }
    quote.status = Status::Rejected;
    quote.rejected_on = Some(today_text());
    quote.rejection_reason = reason;
    quote.decided_by = keel_sdk::user_id();
    save_latest(&quote)?;
    Ok(Response::json(200, &view(&quote)))
}

/// Every record of an index query, page by page.
fn find_all(index: &str, equals: &[Value]) -> Result<Vec<Quote>, Error> {
    let mut quotes = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = QUOTES.find(index, equals, after.as_deref(), crate::STORAGE_PAGE_ITEMS)?;
        quotes.extend(page.items.into_iter().map(|(_, quote)| quote));
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(quotes),
        }
    }
}

/// `GET /quotes?status=&party=&after=&limit=`: the latest versions the acting user's
/// `quotes:read` reaches, in number order.
pub fn list(request: &Request, _: &Params) -> Result<Response, Error> {
    let reach = reach(QUOTES_READ, "reading quotes")?;
    let mut errors = FieldErrors::new();
    let status = match request.query_param("status").filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => match Status::parse(&text) {
            Some(status) => Some(status),
            None => {
                errors.add(
                    "status",
                    format!(
                        "is one of {}",
                        STATUSES
                            .iter()
                            .map(|(_, n)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                None
            }
        },
    };
    let party = match request.query_param("party").filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => match text.parse::<i64>() {
            Ok(party) => Some(party),
            Err(_) => {
                errors.add("party", "is a party id");
                None
            }
        },
    };
    let limit = crate::page_limit(request, LIST_ITEMS_DEFAULT, LIST_ITEMS_MAX, &mut errors);
    errors.finish()?;
    // Expired is never stored: it is an open status past its validity.
    let stored: Vec<Status> = match status {
        Some(Status::Expired) => STATUSES
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| s.is_open())
            .collect(),
        Some(status) => vec![status],
        None => Vec::new(),
    };
    let candidates = if let Some(party) = party {
        find_all(BY_PARTY, &[json!(party)])?
    } else if let Some(owners) = reach.owners() {
        let mut found = Vec::new();
        for owner in owners {
            if stored.is_empty() {
                found.extend(find_all(BY_OWNER_STATUS, &[json!(owner)])?);
            }
            for status in &stored {
                found.extend(find_all(
                    BY_OWNER_STATUS,
                    &[json!(owner), json!(status.name())],
                )?);
            }
        }
        found
    } else if !stored.is_empty() {
        let mut found = Vec::new();
        for status in &stored {
            found.extend(find_all(BY_STATUS_VALID_UNTIL, &[json!(status.name())])?);
        }
        found
    } else {
        QUOTES.all()?.into_iter().map(|(_, quote)| quote).collect()
    };
    let today = dates::today();
    let after = request.query_param("after").filter(|a| !a.is_empty());
    let mut quotes: Vec<Quote> = candidates
        .iter()
        .filter(|q| reach.covers(q.owner))
        .filter(|q| {
            after
                .as_deref()
                .is_none_or(|after| q.number.as_str() > after)
        })
        .filter(|q| status.is_none_or(|status| effective_status(q, today) == status))
        .map(view)
        .collect();
    quotes.sort_by(|a, b| a.number.cmp(&b.number));
    let next = (quotes.len() > limit).then(|| quotes[limit - 1].number.clone());
    quotes.truncate(limit);
    Ok(Response::json(
        200,
        &json!({ "quotes": quotes, "next": next }),
    ))
}

/// What `POST /price` and the `price` operation answer: the priced lines and the approvals
/// their discount would need.
fn priced_view(party: i64, priced: &Priced) -> Result<Value, Error> {
    let approvals = approvals::chain(&approvals::settings()?.levels, priced.discount_percent);
    let value = json!({
        "party": party,
        "party_name": priced.party_name,
        "currency": priced.currency,
        "segment": priced.segment,
        "price_book": priced.price_book,
        "lines": priced.lines,
        "taxes": priced.taxes,
        "totals": priced.totals,
        "price_adjustments": priced.adjustments,
        "discount_percent": amount::text(priced.discount_percent),
        "approvals": approvals,
    });
    Ok(value)
}

/// Prices a draft quote (`{party, currency?, lines}`) without storing anything.
pub fn price_draft(body: &Value) -> Result<Value, Failure> {
    let fields = read_fields(body, PRICE_FIELDS, &["party", "lines"])?;
    let party = fields.party.unwrap_or_default();
    let priced = price(
        party,
        fields.currency.as_deref(),
        &fields.lines.unwrap_or_default(),
    )?;
    Ok(priced_view(party, &priced)?)
}

pub fn preview(request: &Request, _: &Params) -> Result<Response, Error> {
    answer((|| {
        reach(QUOTES_READ, "pricing quotes")?;
        let priced = price_draft(&input::parse_body(&request.body)?)?;
        Ok(Response::json(200, &priced))
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quote_request_names_every_bad_field() {
        let refused = read_fields(
            &json!({
                "party": "seven", "currency": "euro", "valid_until": "31.12.2026", "colour": "red",
                "lines": [
                    { "sku": "A", "quantity": 0 },
                    { "quantity": "2", "discount_percent": "150" },
                    { "sku": "K", "quantity": 1, "components": [{ "sku": "X", "quantity": 2.5 }] }
                ]
            }),
            CREATE_FIELDS,
            &["party", "valid_until", "lines"],
        );
        let fields: Vec<String> = match refused {
            Err(Error::Invalid(list)) => list.into_iter().map(|e| e.field).collect(),
            other => panic!("expected a refusal: {other:?}"),
        };
        assert_eq!(
            fields,
            [
                "colour",
                "party",
                "currency",
                "valid_until",
                "lines[0].quantity",
                "lines[1].sku",
                "lines[1].discount_percent",
                "lines[2].components[0].quantity"
            ]
        );
    }

    #[test]
    fn a_revision_takes_only_what_may_change() {
        let refused = read_fields(&json!({ "party": 3, "lines": [] }), REVISE_FIELDS, &[]);
        let fields: Vec<String> = match refused {
            Err(Error::Invalid(list)) => list.into_iter().map(|e| e.field).collect(),
            other => panic!("expected a refusal: {other:?}"),
        };
        assert_eq!(fields, ["party", "lines"]);
        // An empty note clears the previous version's.
        let fields = read_fields(&json!({ "notes": "" }), REVISE_FIELDS, &[]).expect("valid");
        assert!(fields.has_notes && fields.notes.is_none());
    }

    #[test]
    fn the_validity_ends_on_or_after_the_quote_date() {
        let day = |text: &str| dates::parse("d", text).expect("a date");
        assert_eq!(
            check_validity(day("2026-03-01"), Some(day("2026-03-01"))).ok(),
            Some(day("2026-03-01"))
        );
        assert!(check_validity(day("2026-03-02"), Some(day("2026-03-01"))).is_err());
        assert!(check_validity(day("2026-03-02"), None).is_err());
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for (status, name) in STATUSES {
            assert_eq!(status.name(), *name);
            assert_eq!(Status::parse(name), Some(*status));
            assert_eq!(serde_json::to_value(status).expect("json"), json!(name));
        }
        assert!(!Status::Superseded.is_open());
        assert!(Status::Sent.is_open());
    }
}
