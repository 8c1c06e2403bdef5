//! Price books (one per currency and optional customer segment), prices with quantity tiers,
//! and the arithmetic of a quote: list and tier amounts, discounts, taxes and totals. The
//! arithmetic is pure and exact; rounding to cents happens once per line amount and once per
//! tax rate, as documented in the README.

use std::collections::BTreeMap;

use keel_sdk::router::Params;
use keel_sdk::storage::Collection;
use keel_sdk::{Error, FieldErrors, Request, Response};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::amount::{self, PRICE_MAX, QUANTITY_MAX};
use crate::catalog;
use crate::input::{self, Object};

pub const BOOKS: Collection<PriceBook> = Collection::new("price-books");
/// Keyed `<book>/<sku>`, so a book's prices are one key range.
pub const PRICES: Collection<Price> = Collection::new("prices");

pub const BOOK_CODE_CHARS_MAX: usize = 32;
pub const SEGMENT_CHARS_MAX: usize = 64;
/// Most tiers of one price: volume breaks, not a rate table.
pub const TIERS_MAX: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceBook {
    pub code: String,
    pub name: String,
    pub currency: String,
    /// The customer segment the book prices for; none for the currency's general book.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierMode {
    /// The whole quantity at the price of the highest tier it reaches.
    Volume,
    /// Each slice of the quantity at its own tier's price.
    Graduated,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    /// The tier's price applies from this unit on (the 10th unit for 10).
    #[serde(with = "amount::canonical")]
    pub min_quantity: Decimal,
    #[serde(with = "amount::canonical")]
    pub unit_price: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    pub book: String,
    pub sku: String,
    /// The list price, from the first unit until the first tier.
    #[serde(with = "amount::canonical")]
    pub unit_price: Decimal,
    #[serde(default)]
    pub tiers: Vec<Tier>,
    pub tier_mode: TierMode,
}

impl Price {
    /// The exact amount of `quantity` units under the tiers.
    pub fn amount(&self, quantity: Decimal) -> Decimal {
        match self.tier_mode {
            TierMode::Volume => {
                let unit_price = self
                    .tiers
                    .iter()
                    .rev()
                    .find(|tier| tier.min_quantity <= quantity)
                    .map_or(self.unit_price, |tier| tier.unit_price);
                unit_price * quantity
            }
            TierMode::Graduated => {
                // Slice boundaries sit one unit below each tier's first unit: with a tier from
                // 10, units 1-9 are at the list price and units 10 and on at the tier's.
                let mut total = Decimal::ZERO;
                let mut lower = Decimal::ZERO;
                let mut price = self.unit_price;
                for tier in &self.tiers {
                    let upper = tier.min_quantity - Decimal::ONE;
                    total += price * (quantity.min(upper) - lower).max(Decimal::ZERO);
                    lower = upper;
                    price = tier.unit_price;
                }
                total + price * (quantity - lower).max(Decimal::ZERO)
            }
        }
    }
}

/// The book a quote uses: the currency's book for the party's segment, else the currency's
/// book without a segment. Segments compare without regard to case.
pub fn choose<'a>(
    books: &'a [PriceBook],
    currency: &str,
    segment: Option<&str>,
) -> Option<&'a PriceBook> {
    let in_currency = || books.iter().filter(move |b| b.currency == currency);
    segment
        .and_then(|segment| {
            in_currency().find(|b| {
                b.segment
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case(segment))
            })
        })
        .or_else(|| in_currency().find(|b| b.segment.is_none()))
}

/// A line's price before adjustments and discounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPrice {
    /// The list price of one unit (of a bundle: its own price plus its components'), no tiers.
    pub list_unit_price: Decimal,
    /// The exact amount of the line's quantity under the tiers.
    pub tier_amount: Decimal,
    /// `tier_amount` per unit, rounded for display and for the price-adjust hook.
    pub tier_unit_price: Decimal,
    /// Each component's unit price under its tiers (at the line's total quantity of it).
    pub component_unit_prices: Vec<Decimal>,
}

/// Prices `quantity` units of a product, or of a bundle whose own price is `price` and whose
/// chosen components come with their price and quantity per bundle. Tiers of a component
/// apply to the line's total quantity of it.
pub fn list_price(price: &Price, quantity: Decimal, components: &[(&Price, Decimal)]) -> ListPrice {
    let mut list_unit_price = price.unit_price;
    let mut tier_amount = price.amount(quantity);
    let mut component_unit_prices = Vec::with_capacity(components.len());
    for (component, per_bundle) in components {
        let total = *per_bundle * quantity;
        let amount = component.amount(total);
        list_unit_price += component.unit_price * *per_bundle;
        tier_amount += amount;
        component_unit_prices.push(amount::unit_price(amount / total));
    }
    ListPrice {
        list_unit_price,
        tier_amount,
        tier_unit_price: amount::unit_price(tier_amount / quantity),
        component_unit_prices,
    }
}

/// A line's money, each amount rounded to cents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineAmounts {
    /// List price times quantity: what the line would cost without tiers, adjustments or
    /// discounts.
    pub list_amount: Decimal,
    /// After tiers and price adjustments, before the manual discount.
    pub gross_amount: Decimal,
    pub discount_amount: Decimal,
    pub net_amount: Decimal,
}

/// The amounts of a line whose final unit price is `unit_price`. When no adjustment changed
/// the tier unit price, the gross amount is the exact tier amount rounded, so that graduated
/// tiers are not distorted by the rounded average.
pub fn line_amounts(
    quantity: Decimal,
    list: &ListPrice,
    unit_price: Decimal,
    discount_percent: Decimal,
) -> LineAmounts {
    let gross_amount = if unit_price == list.tier_unit_price {
        amount::money(list.tier_amount)
    } else {
        amount::money(unit_price * quantity)
    };
    let discount_amount = amount::money(amount::percent_of(gross_amount, discount_percent));
    LineAmounts {
        list_amount: amount::money(list.list_unit_price * quantity),
        gross_amount,
        discount_amount,
        net_amount: gross_amount - discount_amount,
    }
}

/// The tax estimate of one rate: on the sum of the net amounts at that rate, rounded once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaxLine {
    #[serde(with = "amount::canonical")]
    pub rate: Decimal,
    #[serde(with = "amount::cents")]
    pub base: Decimal,
    #[serde(with = "amount::cents")]
    pub tax: Decimal,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Sum of list amounts.
    #[serde(with = "amount::cents")]
    pub list: Decimal,
    /// Sum of gross amounts: after tiers and adjustments, before discounts.
    #[serde(with = "amount::cents")]
    pub subtotal: Decimal,
    #[serde(with = "amount::cents")]
    pub discount: Decimal,
    /// Subtotal minus discount.
    #[serde(with = "amount::cents")]
    pub net: Decimal,
    #[serde(with = "amount::cents")]
    pub tax: Decimal,
    /// Net plus tax.
    #[serde(with = "amount::cents")]
    pub total: Decimal,
}

/// Taxes per rate (ascending) and totals of lines given as (amounts, tax rate).
pub fn totals(lines: &[(LineAmounts, Decimal)]) -> (Vec<TaxLine>, Totals) {
    let mut by_rate: BTreeMap<Decimal, Decimal> = BTreeMap::new();
    let mut totals = Totals::default();
    for (amounts, rate) in lines {
        totals.list += amounts.list_amount;
        totals.subtotal += amounts.gross_amount;
        totals.discount += amounts.discount_amount;
        totals.net += amounts.net_amount;
        *by_rate.entry(rate.normalize()).or_default() += amounts.net_amount;
    }
    let taxes: Vec<TaxLine> = by_rate
        .into_iter()
        .map(|(rate, base)| TaxLine {
            rate,
            base,
            tax: amount::money(amount::percent_of(base, rate)),
        })
        .collect();
    totals.tax = taxes.iter().map(|t| t.tax).sum();
    totals.total = totals.net + totals.tax;
    (taxes, totals)
}

/// Whether `text` is an ISO 4217-style currency code: three upper-case letters.
pub fn is_currency(text: &str) -> bool {
    text.len() == 3 && text.bytes().all(|b| b.is_ascii_uppercase())
}

/// Reads a `POST /price-books` body.
pub fn read_book(body: &Value) -> Result<PriceBook, Error> {
    let object = input::root(body)?;
    let mut errors = FieldErrors::new();
    object.only(&["code", "name", "currency", "segment"], &mut errors);
    let code = object.text("code", BOOK_CODE_CHARS_MAX, &mut errors);
    if let Some(code) = &code
        && !input::is_code(code, BOOK_CODE_CHARS_MAX)
    {
        errors.add(
            "code",
            "is letters, digits, '-', '_' and '.', without spaces",
        );
    }
    let name = object.text("name", catalog::NAME_CHARS_MAX, &mut errors);
    let currency = object.text("currency", 3, &mut errors);
    if let Some(currency) = &currency
        && !is_currency(currency)
    {
        errors.add("currency", "is three upper-case letters, e.g. EUR");
    }
    let segment = object.optional_text("segment", SEGMENT_CHARS_MAX, &mut errors);
    errors.finish()?;
    Ok(PriceBook {
        code: code.unwrap_or_default(),
        name: name.unwrap_or_default(),
        currency: currency.unwrap_or_default(),
        segment,
    })
}

/// Reads a `PUT /price-books/{book}/prices/{sku}` body.
pub fn read_price(book: &str, sku: &str, body: &Value) -> Result<Price, Error> {
    let object = input::root(body)?;
    let mut errors = FieldErrors::new();
    object.only(&["unit_price", "tiers", "tier_mode"], &mut errors);
    let price_max = Decimal::from(PRICE_MAX);
    let unit_price =
        object.decimal_within("unit_price", Decimal::ZERO, price_max, true, &mut errors);
    let tier_mode = match object
        .optional_text("tier_mode", 20, &mut errors)
        .as_deref()
    {
        None | Some("volume") => TierMode::Volume,
        Some("graduated") => TierMode::Graduated,
        Some(other) => {
            errors.add(
                "tier_mode",
                format!("is volume or graduated, not {other:?}"),
            );
            TierMode::Volume
        }
    };
    let mut tiers = Vec::new();
    for (j, item) in object
        .optional_array("tiers", TIERS_MAX, &mut errors)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let path = format!("tiers[{j}]");
        let Some(tier) = Object::at(item, &path, &mut errors) else {
            continue;
        };
        tier.only(&["min_quantity", "unit_price"], &mut errors);
        let min_quantity = tier.decimal_within(
            "min_quantity",
            Decimal::ZERO,
            Decimal::from(QUANTITY_MAX),
            true,
            &mut errors,
        );
        let price = tier.decimal_within("unit_price", Decimal::ZERO, price_max, true, &mut errors);
        let (Some(min_quantity), Some(unit_price)) = (min_quantity, price) else {
            continue;
        };
        if min_quantity <= Decimal::ONE {
            errors.add(
                format!("{path}.min_quantity"),
                "is more than 1: the list price covers the first unit",
            );
        } else if tiers
            .last()
            .is_some_and(|last: &Tier| last.min_quantity >= min_quantity)
        {
            errors.add(
                format!("{path}.min_quantity"),
                "is more than the previous tier's: tiers ascend",
            );
        }
        tiers.push(Tier {
            min_quantity,
            unit_price,
        });
    }
    errors.finish()?;
    Ok(Price {
        book: book.to_owned(),
        sku: sku.to_owned(),
        unit_price: unit_price.unwrap_or_default(),
        tiers,
        tier_mode,
    })
}

pub fn price_key(book: &str, sku: &str) -> String {
    format!("{book}/{sku}")
}

fn load_book(code: &str) -> Result<PriceBook, Error> {
    BOOKS
        .get(code)?
        .ok_or_else(|| Error::NotFound(format!("there is no price book {code}")))
}

pub fn create_book(request: &Request, _: &Params) -> Result<Response, Error> {
    crate::require(crate::CATALOG_WRITE, "changing price books")?;
    let book = read_book(&input::parse_body(&request.body)?)?;
    if BOOKS.get(&book.code)?.is_some() {
        return Err(Error::Conflict(format!(
            "price book {} exists already",
            book.code
        )));
    }
    // One book per currency and segment, so that the choice for a quote is never ambiguous.
    let same = |other: &PriceBook| {
        other.currency == book.currency
            && match (&other.segment, &book.segment) {
                (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                (None, None) => true,
                _ => false,
            }
    };
    if let Some((_, twin)) = BOOKS.all()?.into_iter().find(|(_, other)| same(other)) {
        return Err(Error::Conflict(format!(
            "price book {} already prices {}{}",
            twin.code,
            book.currency,
            book.segment.as_deref().map_or_else(
                || " without a segment".to_owned(),
                |s| format!(" for segment {s}")
            )
        )));
    }
    BOOKS.put(&book.code, &book)?;
    Ok(Response::json(201, &book))
}

pub fn list_books(_: &Request, _: &Params) -> Result<Response, Error> {
    crate::require_catalog_read()?;
    let books: Vec<PriceBook> = BOOKS.all()?.into_iter().map(|(_, book)| book).collect();
    Ok(Response::json(200, &json!({ "price_books": books })))
}

/// The book with its prices, in SKU order.
pub fn show_book(_: &Request, params: &Params) -> Result<Response, Error> {
    crate::require_catalog_read()?;
    let book = load_book(params.get("code")?)?;
    let prices = book_prices(&book.code)?;
    let mut view = serde_json::to_value(&book)
        .map_err(|e| Error::Internal(format!("serializing a price book: {e}")))?;
    view["prices"] = serde_json::to_value(prices)
        .map_err(|e| Error::Internal(format!("serializing prices: {e}")))?;
    Ok(Response::json(200, &view))
}

fn book_prices(code: &str) -> Result<Vec<Price>, Error> {
    // Keys are `<book>/<sku>`; '0' follows '/' in byte order, so the range is the book's.
    let start = format!("{code}/");
    let end = format!("{code}0");
    let mut prices = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = PRICES.range(
            Some(&start),
            Some(&end),
            after.as_deref(),
            crate::STORAGE_PAGE_ITEMS,
        )?;
        let done = page.len() < crate::STORAGE_PAGE_ITEMS as usize;
        after = page.last().map(|(key, _)| key.clone());
        prices.extend(page.into_iter().map(|(_, price)| price));
        if done {
            return Ok(prices);
        }
    }
}

pub fn put_price(request: &Request, params: &Params) -> Result<Response, Error> {
    crate::require(crate::CATALOG_WRITE, "changing price books")?;
    let book = load_book(params.get("code")?)?;
    let product = catalog::load(params.get("sku")?)?;
    let price = read_price(&book.code, &product.sku, &input::parse_body(&request.body)?)?;
    PRICES.put(&price_key(&book.code, &product.sku), &price)?;
    Ok(Response::json(200, &price))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        text.parse().expect("a decimal")
    }

    fn price(unit: &str, tiers: &[(&str, &str)], mode: TierMode) -> Price {
        Price {
            book: "EUR".to_owned(),
            sku: "X".to_owned(),
            unit_price: d(unit),
            tiers: tiers
                .iter()
                .map(|(min, unit)| Tier {
                    min_quantity: d(min),
                    unit_price: d(unit),
                })
                .collect(),
            tier_mode: mode,
        }
    }

    #[test]
    fn volume_tiers_price_the_whole_quantity_at_the_tier_reached() {
        let p = price("100", &[("10", "90"), ("50", "80")], TierMode::Volume);
        assert_eq!(p.amount(d("9")), d("900"));
        assert_eq!(p.amount(d("10")), d("900"));
        assert_eq!(p.amount(d("49")), d("4410"));
        assert_eq!(p.amount(d("50")), d("4000"));
    }

    #[test]
    fn graduated_tiers_price_each_slice_at_its_tier() {
        let p = price("100", &[("10", "90"), ("50", "80")], TierMode::Graduated);
        assert_eq!(p.amount(d("9")), d("900"));
        assert_eq!(p.amount(d("10")), d("990"));
        assert_eq!(p.amount(d("15")), d("1440"));
        // 9 × 100 + 40 × 90 + 11 × 80
        assert_eq!(p.amount(d("60")), d("5380"));
        assert_eq!(p.amount(d("2.5")), d("250"));
    }

    #[test]
    fn a_bundle_is_its_own_price_plus_its_components() {
        let kit = price("50", &[], TierMode::Volume);
        let laptop = price("1000", &[("10", "900")], TierMode::Volume);
        let ram = price("40", &[], TierMode::Volume);
        let list = list_price(&kit, d("5"), &[(&laptop, d("1")), (&ram, d("2"))]);
        assert_eq!(list.list_unit_price, d("1130"));
        assert_eq!(list.tier_amount, d("5650"));
        assert_eq!(list.tier_unit_price, d("1130"));
        let volume = list_price(&kit, d("10"), &[(&laptop, d("1")), (&ram, d("2"))]);
        assert_eq!(volume.tier_amount, d("10300"));
        assert_eq!(volume.component_unit_prices, [d("900"), d("40")]);
    }

    #[test]
    fn graduated_lines_keep_the_exact_slice_sum() {
        let p = price("10", &[("4", "9.99")], TierMode::Graduated);
        let list = list_price(&p, d("7"), &[]);
        // 3 × 10 + 4 × 9.99 = 69.96; the average 9.994285… shows as 9.9943.
        assert_eq!(list.tier_unit_price, d("9.9943"));
        let amounts = line_amounts(d("7"), &list, list.tier_unit_price, Decimal::ZERO);
        assert_eq!(amounts.gross_amount, d("69.96"));
        assert_eq!(amounts.list_amount, d("70.00"));
    }

    #[test]
    fn discounts_and_taxes_round_per_line_and_per_rate() {
        let p = price("33.33", &[], TierMode::Volume);
        let list = list_price(&p, d("3"), &[]);
        let first = line_amounts(d("3"), &list, list.tier_unit_price, d("12.5"));
        assert_eq!(first.gross_amount, d("99.99"));
        assert_eq!(first.discount_amount, d("12.50"));
        assert_eq!(first.net_amount, d("87.49"));
        let second = line_amounts(d("1"), &list_price(&p, d("1"), &[]), d("20"), Decimal::ZERO);
        assert_eq!(second.gross_amount, d("20.00"));
        let third = line_amounts(
            d("1"),
            &list_price(&p, d("1"), &[]),
            d("10.01"),
            Decimal::ZERO,
        );
        let (taxes, totals) = totals(&[(first, d("19")), (second, d("19")), (third, d("7"))]);
        assert_eq!(taxes.len(), 2);
        assert_eq!(
            (taxes[0].rate, taxes[0].base, taxes[0].tax),
            (d("7"), d("10.01"), d("0.70"))
        );
        // 107.49 × 19% = 20.4231
        assert_eq!((taxes[1].base, taxes[1].tax), (d("107.49"), d("20.42")));
        assert_eq!(totals.subtotal, d("130.00"));
        assert_eq!(totals.discount, d("12.50"));
        assert_eq!(totals.net, d("117.50"));
        assert_eq!(totals.tax, d("21.12"));
        assert_eq!(totals.total, d("138.62"));
        assert_eq!(totals.list, d("99.99") + d("33.33") + d("33.33"));
    }

    #[test]
    fn the_segment_book_wins_over_the_general_one() {
        let book = |code: &str, currency: &str, segment: Option<&str>| PriceBook {
            code: code.to_owned(),
            name: code.to_owned(),
            currency: currency.to_owned(),
            segment: segment.map(str::to_owned),
        };
        let books = [
            book("EUR-STD", "EUR", None),
            book("EUR-GOLD", "EUR", Some("gold")),
            book("USD-GOLD", "USD", Some("gold")),
        ];
        let code = |currency: &str, segment: Option<&str>| {
            choose(&books, currency, segment).map(|b| b.code.as_str())
        };
        assert_eq!(code("EUR", Some("Gold")), Some("EUR-GOLD"));
        assert_eq!(code("EUR", Some("silver")), Some("EUR-STD"));
        assert_eq!(code("EUR", None), Some("EUR-STD"));
        assert_eq!(code("USD", Some("gold")), Some("USD-GOLD"));
        assert_eq!(code("USD", None), None);
        assert_eq!(code("GBP", None), None);
    }

    #[test]
    fn tiers_must_ascend_above_the_first_unit() {
        let refused = read_price(
            "EUR",
            "X",
            &json!({ "unit_price": "10", "tier_mode": "stepped",
                     "tiers": [{ "min_quantity": 1, "unit_price": "9" },
                               { "min_quantity": 10, "unit_price": "8" },
                               { "min_quantity": 5, "unit_price": "7" }] }),
        );
        let fields: Vec<String> = match refused {
            Err(Error::Invalid(list)) => list.into_iter().map(|e| e.field).collect(),
            _ => Vec::new(),
        };
        assert_eq!(
            fields,
            [
                "tier_mode",
                "tiers[0].min_quantity",
                "tiers[2].min_quantity"
            ]
        );
        let ok = read_price("EUR", "X", &json!({ "unit_price": "10.50" })).expect("a price");
        assert_eq!(
            (ok.unit_price, ok.tier_mode),
            (d("10.50"), TierMode::Volume)
        );
    }
}
