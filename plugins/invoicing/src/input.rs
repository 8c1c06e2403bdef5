//! Checks of what requests carry: amounts, quantities and texts within named limits.

use keel_sdk::FieldErrors;
use rust_decimal::Decimal;

/// Most decimal places an input price, quantity or percentage may have.
pub const INPUT_DECIMALS_MAX: u32 = 6;
/// The largest unit price or payment (a trillion): products with [`QUANTITY_MAX`] stay far
/// inside the 28 digits of `rust_decimal`.
pub const AMOUNT_MAX: i64 = 1_000_000_000_000;
/// The largest quantity of one line.
pub const QUANTITY_MAX: i64 = 1_000_000;
/// Lines of one document.
pub const LINES_MAX: usize = 500;
pub const TEXT_CHARS_MAX: usize = 500;

/// A quantity: more than zero, at most [`QUANTITY_MAX`].
pub fn quantity(errors: &mut FieldErrors, field: &str, value: Decimal) -> Decimal {
    if value <= Decimal::ZERO || value > Decimal::from(QUANTITY_MAX) {
        errors.add(field, format!("is more than 0 and at most {QUANTITY_MAX}"));
    } else {
        places(errors, field, value);
    }
    value
}

/// A unit price: zero or more, at most [`AMOUNT_MAX`].
pub fn price(errors: &mut FieldErrors, field: &str, value: Decimal) -> Decimal {
    if value < Decimal::ZERO || value > Decimal::from(AMOUNT_MAX) {
        errors.add(field, format!("is from 0 to {AMOUNT_MAX}"));
    } else {
        places(errors, field, value);
    }
    value
}

/// A payment or allocation: more than zero, in cents.
pub fn amount(errors: &mut FieldErrors, field: &str, value: Decimal) -> Decimal {
    if value <= Decimal::ZERO || value > Decimal::from(AMOUNT_MAX) {
        errors.add(field, format!("is more than 0 and at most {AMOUNT_MAX}"));
    } else if value.normalize().scale() > keel_sdk::money::MONEY_DECIMALS {
        errors.add(field, "has at most 2 decimal places");
    }
    value
}

/// A percentage from 0 to 100.
pub fn percent(errors: &mut FieldErrors, field: &str, value: Decimal) -> Decimal {
    if value < Decimal::ZERO || value > Decimal::ONE_HUNDRED {
        errors.add(field, "is a percentage from 0 to 100");
    } else {
        places(errors, field, value);
    }
    value
}

fn places(errors: &mut FieldErrors, field: &str, value: Decimal) {
    if value.normalize().scale() > INPUT_DECIMALS_MAX {
        errors.add(
            field,
            format!("has at most {INPUT_DECIMALS_MAX} decimal places"),
        );
    }
}

/// Free text of at most [`TEXT_CHARS_MAX`] characters, not blank.
pub fn text(errors: &mut FieldErrors, field: &str, value: &str) -> String {
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed.chars().count() > TEXT_CHARS_MAX {
        errors.add(field, format!("is 1 to {TEXT_CHARS_MAX} characters"));
    }
    trimmed.to_owned()
}
