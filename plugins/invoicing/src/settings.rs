//! What an admin configures: the ledger accounts documents post to, tax codes and which
//! products and parties they apply to, default payment terms, document series and the
//! dunning levels. Stored as one record; the defaults fit Keel's default chart of accounts.

use std::collections::BTreeMap;

use keel_sdk::ledger::{self, AccountType};
use keel_sdk::router::Params;
use keel_sdk::storage::Collection;
use keel_sdk::{Error, FieldErrors, Request, Response};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::perm;

const SETTINGS: Collection<Settings> = Collection::new("settings");
const SETTINGS_KEY: &str = "settings";

const TAX_CODES_MAX: usize = 100;
const PRODUCT_TAX_CODES_MAX: usize = 10_000;
const DUNNING_LEVELS_MAX: usize = 10;
const CODE_CHARS_MAX: usize = 32;
const NAME_CHARS_MAX: usize = 100;
/// Payment terms beyond ten years are a typo.
pub const PAYMENT_TERMS_DAYS_MAX: u32 = 3_650;

/// The accounts documents post to, by code.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accounts {
    pub receivable: String,
    pub revenue: String,
    pub tax_payable: String,
    pub bank: String,
    pub payable: String,
    /// Where bill lines post when they name no account.
    pub expense: String,
    /// Input tax on vendor bills.
    pub tax_receivable: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaxCode {
    pub code: String,
    pub name: String,
    /// Percent, 0 to 100.
    #[serde(with = "keel_sdk::money::canonical")]
    pub rate: Decimal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DunningLevel {
    /// 1 for the first reminder, then 2, 3 …
    pub level: u32,
    pub name: String,
    /// Reached when an invoice is this many days past its due date.
    pub days_overdue: u32,
}

/// Prefixes of the gapless numbers: "INV" gives INV-000001.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Series {
    pub invoice: String,
    pub credit_note: String,
    pub bill: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub accounts: Accounts,
    #[serde(default)]
    pub tax_codes: Vec<TaxCode>,
    /// The tax code of a product (by SKU) when its line names none.
    #[serde(default)]
    pub product_tax_codes: BTreeMap<String, String>,
    /// The tax code of a line nothing else decides; no tax when absent.
    #[serde(default)]
    pub default_tax_code: Option<String>,
    /// Days to the due date when the party has no payment terms.
    pub payment_terms_days: u32,
    pub series: Series,
    #[serde(default)]
    pub dunning_levels: Vec<DunningLevel>,
}

impl Default for Settings {
    fn default() -> Self {
        let level = |level, name: &str, days_overdue| DunningLevel {
            level,
            name: name.to_owned(),
            days_overdue,
        };
        Self {
            accounts: Accounts {
                receivable: "1100".to_owned(),
                revenue: "4000".to_owned(),
                tax_payable: "2200".to_owned(),
                bank: "1020".to_owned(),
                payable: "2000".to_owned(),
                expense: "6000".to_owned(),
                tax_receivable: "1400".to_owned(),
            },
            tax_codes: Vec::new(),
            product_tax_codes: BTreeMap::new(),
            default_tax_code: None,
            payment_terms_days: 30,
            series: Series {
                invoice: "INV".to_owned(),
                credit_note: "CN".to_owned(),
                bill: "BILL".to_owned(),
            },
            dunning_levels: vec![
                level(1, "reminder", 1),
                level(2, "second reminder", 15),
                level(3, "final notice", 30),
            ],
        }
    }
}

impl Settings {
    /// The stored settings, or the defaults.
    pub fn load() -> Result<Self, Error> {
        Ok(SETTINGS.get(SETTINGS_KEY)?.unwrap_or_default())
    }

    pub fn tax_code(&self, code: &str) -> Option<&TaxCode> {
        self.tax_codes.iter().find(|t| t.code == code)
    }

    /// Checks everything, the accounts against the chart, naming each field that is wrong.
    fn validate(&self) -> Result<(), Error> {
        let mut errors = FieldErrors::new();
        let chart = ledger::accounts()?;
        let accounts = [
            ("receivable", &self.accounts.receivable, AccountType::Asset),
            ("revenue", &self.accounts.revenue, AccountType::Income),
            (
                "tax_payable",
                &self.accounts.tax_payable,
                AccountType::Liability,
            ),
            ("bank", &self.accounts.bank, AccountType::Asset),
            ("payable", &self.accounts.payable, AccountType::Liability),
            ("expense", &self.accounts.expense, AccountType::Expense),
            (
                "tax_receivable",
                &self.accounts.tax_receivable,
                AccountType::Asset,
            ),
        ];
        for (field, code, expected) in accounts {
            let field = format!("accounts.{field}");
            match chart.iter().find(|a| &a.code == code) {
                None => errors.add(field, format!("there is no account {code} in the chart")),
                Some(account) if !account.active => {
                    errors.add(field, format!("account {code} is inactive"));
                }
                Some(account) if account.account_type != expected => errors.add(
                    field,
                    format!("account {code} is not of the type this needs: {expected:?}"),
                ),
                Some(_) => {}
            }
        }
        if self.tax_codes.len() > TAX_CODES_MAX {
            errors.add("tax_codes", format!("has at most {TAX_CODES_MAX} codes"));
        }
        for (i, tax) in self.tax_codes.iter().enumerate() {
            check_code(&mut errors, &format!("tax_codes[{i}].code"), &tax.code);
            check_name(&mut errors, &format!("tax_codes[{i}].name"), &tax.name);
            if tax.rate < Decimal::ZERO || tax.rate > Decimal::ONE_HUNDRED {
                errors.add(
                    format!("tax_codes[{i}].rate"),
                    "is a percentage from 0 to 100",
                );
            }
            if self.tax_codes[..i].iter().any(|t| t.code == tax.code) {
                errors.add(format!("tax_codes[{i}].code"), "is given twice");
            }
        }
        if self.product_tax_codes.len() > PRODUCT_TAX_CODES_MAX {
            errors.add(
                "product_tax_codes",
                format!("has at most {PRODUCT_TAX_CODES_MAX} products"),
            );
        }
        for (sku, code) in &self.product_tax_codes {
            if self.tax_code(code).is_none() {
                errors.add(
                    format!("product_tax_codes.{sku}"),
                    format!("{code:?} is not one of the tax codes"),
                );
            }
        }
        if let Some(code) = &self.default_tax_code
            && self.tax_code(code).is_none()
        {
            errors.add(
                "default_tax_code",
                format!("{code:?} is not one of the tax codes"),
            );
        }
        if self.payment_terms_days > PAYMENT_TERMS_DAYS_MAX {
            errors.add(
                "payment_terms_days",
                format!("is at most {PAYMENT_TERMS_DAYS_MAX}"),
            );
        }
        let series = [
            ("invoice", &self.series.invoice),
            ("credit_note", &self.series.credit_note),
            ("bill", &self.series.bill),
        ];
        for (field, prefix) in series {
            check_code(&mut errors, &format!("series.{field}"), prefix);
        }
        if series[0].1 == series[1].1 || series[0].1 == series[2].1 || series[1].1 == series[2].1 {
            errors.add("series", "each kind of document needs its own series");
        }
        if self.dunning_levels.len() > DUNNING_LEVELS_MAX {
            errors.add(
                "dunning_levels",
                format!("has at most {DUNNING_LEVELS_MAX} levels"),
            );
        }
        for (i, level) in self.dunning_levels.iter().enumerate() {
            check_name(
                &mut errors,
                &format!("dunning_levels[{i}].name"),
                &level.name,
            );
            if level.level != i as u32 + 1 {
                errors.add(
                    format!("dunning_levels[{i}].level"),
                    format!("is {}: levels count 1, 2, 3 … in order", i + 1),
                );
            }
            if i > 0 && level.days_overdue <= self.dunning_levels[i - 1].days_overdue {
                errors.add(
                    format!("dunning_levels[{i}].days_overdue"),
                    "is more than the level before's",
                );
            }
        }
        errors.finish()
    }
}

fn check_code(errors: &mut FieldErrors, field: &str, code: &str) {
    let valid = !code.is_empty()
        && code.len() <= CODE_CHARS_MAX
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        errors.add(
            field,
            format!("is 1 to {CODE_CHARS_MAX} letters, digits, dashes or underscores"),
        );
    }
}

fn check_name(errors: &mut FieldErrors, field: &str, name: &str) {
    if name.trim().is_empty() || name.chars().count() > NAME_CHARS_MAX {
        errors.add(field, format!("is 1 to {NAME_CHARS_MAX} characters"));
    }
}

/// `GET /settings`.
pub fn get(_request: &Request, _params: &Params) -> Result<Response, Error> {
    Ok(Response::json(200, &Settings::load()?))
}

/// `PUT /settings`: the whole settings document.
pub fn put(request: &Request, _params: &Params) -> Result<Response, Error> {
    keel_sdk::require(perm::SETTINGS_WRITE)?;
    let settings: Settings = request.json()?;
    settings.validate()?;
    SETTINGS.put(SETTINGS_KEY, &settings)?;
    Ok(Response::json(200, &settings))
}
