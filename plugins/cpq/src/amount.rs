//! Exact decimals: money rounded to cents, unit prices, percentages and quantities, and how
//! they are written in records and on the wire (canonical decimal strings, never floats).

pub use keel_sdk::money::{canonical, cents, cents_text, round_cents as money, text};
use rust_decimal::{Decimal, RoundingStrategy};

/// An average unit price (graduated tiers, bundles of several components) is shown to this
/// many places; the line amount is computed from the exact value, not from this rounding.
pub const UNIT_PRICE_DECIMALS: u32 = 4;
/// Most decimal places an input price, quantity or percentage may have: more is a typo, not a
/// price anyone quotes.
pub const INPUT_DECIMALS_MAX: u32 = 6;
/// The largest unit price an input may carry (a trillion). With [`QUANTITY_MAX`] and the
/// catalog's limits it keeps every product of price and quantity far inside the 28 digits of
/// `rust_decimal`, so the arithmetic never overflows.
pub const PRICE_MAX: i64 = 1_000_000_000_000;
/// The largest quantity of one quote line or tier threshold (a million units).
pub const QUANTITY_MAX: i64 = 1_000_000;

/// Rounds an average unit price for display.
pub fn unit_price(price: Decimal) -> Decimal {
    price.round_dp_with_strategy(UNIT_PRICE_DECIMALS, RoundingStrategy::MidpointAwayFromZero)
}

/// A percentage of an amount, unrounded.
pub fn percent_of(amount: Decimal, percent: Decimal) -> Decimal {
    amount * percent / Decimal::ONE_HUNDRED
}
