//! Ledger types parsed at the edge: account codes, account types, exact amounts and entry
//! drafts that are known to balance. Nothing here touches the database.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{Datelike, Days, Months, NaiveDate};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::currency::{self, Currency};
use crate::error::{Error, FieldError, Result, join_path};

/// Lines in one entry. A payroll run or a consolidated sales posting stays far below this;
/// anything larger is almost certainly a client bug.
pub const LINES_PER_ENTRY_MAX: usize = 1_000;

/// Largest absolute amount on one line, in minor units (10 trillion in a two-decimal currency).
/// It keeps every sum of a batch far inside i64.
pub const AMOUNT_MINOR_MAX: i64 = 1_000_000_000_000_000;

/// Decimal places an exchange rate may carry; central banks publish at most 6–8.
pub const RATE_DECIMAL_PLACES_MAX: u32 = 10;

pub const ACCOUNT_CODE_CHARS_MAX: usize = 32;
pub const ACCOUNT_NAME_CHARS_MAX: usize = 200;
pub const MEMO_CHARS_MAX: usize = 1_000;
pub const SOURCE_FIELD_CHARS_MAX: usize = 100;
pub const DIMENSIONS_PER_LINE_MAX: usize = 16;
pub const DIMENSION_KEY_CHARS_MAX: usize = 64;
pub const DIMENSION_VALUE_CHARS_MAX: usize = 200;
pub const IDEMPOTENCY_KEY_CHARS_MAX: usize = 200;

/// An account code such as `1000` or `4000.10`: 1–32 letters, digits, `.`, `-` or `_`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct AccountCode(String);

impl AccountCode {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > ACCOUNT_CODE_CHARS_MAX {
            return Err(format!(
                "an account code has 1 to {ACCOUNT_CODE_CHARS_MAX} characters"
            ));
        }
        if !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(format!(
                "{text:?} is not an account code: use letters, digits, '.', '-' and '_'"
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccountType {
    Asset,
    Liability,
    Equity,
    Income,
    Expense,
}

impl AccountType {
    pub const ALL: [Self; 5] = [
        Self::Asset,
        Self::Liability,
        Self::Equity,
        Self::Income,
        Self::Expense,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Asset => "asset",
            Self::Liability => "liability",
            Self::Equity => "equity",
            Self::Income => "income",
            Self::Expense => "expense",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == text)
            .ok_or_else(|| {
                format!("{text:?} is not an account type: use asset, liability, equity, income or expense")
            })
    }

    /// Assets and expenses grow with debits; the others with credits.
    pub fn is_debit_normal(self) -> bool {
        matches!(self, Self::Asset | Self::Expense)
    }

    /// Income and expense accounts are closed into retained earnings at year end.
    pub fn is_profit_and_loss(self) -> bool {
        matches!(self, Self::Income | Self::Expense)
    }
}

/// Parses a positive decimal string such as `"1250.50"` into minor units of `currency`.
///
/// Amounts travel as strings so that no JSON parser turns them into binary floating point.
/// Trailing zeros beyond the currency's places are fine (`"10.500"` in EUR is 10.50); a
/// non-zero digit beyond them is refused rather than rounded.
pub fn parse_amount(text: &str, currency: &Currency) -> Result<i64, String> {
    let value = parse_plain_decimal(text)?;
    if value.is_zero() {
        return Err("the amount must be greater than zero".into());
    }
    let places = currency.minor_units;
    if value.normalize().scale() > places {
        return Err(format!(
            "{text} has more decimal places than {} allows ({places})",
            currency.code
        ));
    }
    let minor = value
        .checked_mul(Decimal::from(10_i64.pow(places)))
        .and_then(|m| i64::try_from(m.trunc()).ok())
        .filter(|m| *m <= AMOUNT_MINOR_MAX)
        .ok_or_else(|| {
            format!(
                "{text} is larger than the largest amount a line may carry ({})",
                format_minor(AMOUNT_MINOR_MAX, places)
            )
        })?;
    Ok(minor)
}

/// Parses an exchange rate: units of the base currency per unit of the line's currency.
pub fn parse_rate(text: &str) -> Result<Decimal, String> {
    let rate = parse_plain_decimal(text)?;
    if rate.is_zero() {
        return Err("the rate must be greater than zero".into());
    }
    if rate.normalize().scale() > RATE_DECIMAL_PLACES_MAX {
        return Err(format!(
            "a rate has at most {RATE_DECIMAL_PLACES_MAX} decimal places"
        ));
    }
    Ok(rate.normalize())
}

/// Digits with an optional fraction: no sign, exponent, spaces or thousands separators.
fn parse_plain_decimal(text: &str) -> Result<Decimal, String> {
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    let digits_only = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits_only(whole) || fraction.is_some_and(|f| !digits_only(f)) {
        return Err(format!(
            "{text:?} is not a positive decimal number such as \"1250.50\""
        ));
    }
    // 28 significant digits is what rust_decimal holds exactly.
    Decimal::from_str_exact(text).map_err(|_| format!("{text:?} has too many digits"))
}

/// Renders minor units with exactly `places` decimals: `format_minor(-12345, 2)` is `-123.45`.
pub fn format_minor(minor: i64, places: u32) -> String {
    Decimal::new(minor, places).to_string()
}

/// `amount × rate` in the base currency's minor units, rounded half away from zero as
/// accountants do.
pub fn convert_to_base(
    amount_minor: i64,
    from: &Currency,
    rate: Decimal,
    base: &Currency,
) -> Option<i64> {
    let amount = Decimal::new(amount_minor, from.minor_units);
    let base_amount = amount
        .checked_mul(rate)?
        .round_dp_with_strategy(base.minor_units, RoundingStrategy::MidpointAwayFromZero);
    let minor = base_amount.checked_mul(Decimal::from(10_i64.pow(base.minor_units)))?;
    i64::try_from(minor.trunc()).ok()
}

/// Where an entry came from, for drill-down: the module and its document id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceRef {
    /// The module that posted the entry, e.g. `invoicing`.
    pub module: String,
    /// The document in that module, e.g. `INV-2026-0042`.
    pub document: String,
}

/// A journal line as a client sends it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineInput {
    /// Account code.
    #[schema(example = "1000")]
    pub account: String,
    /// Positive decimal string; give exactly one of `debit` and `credit`.
    #[schema(example = "100.00")]
    pub debit: Option<String>,
    /// Positive decimal string; give exactly one of `debit` and `credit`.
    pub credit: Option<String>,
    /// ISO 4217 code; the company's base currency when absent.
    pub currency: Option<String>,
    /// Base-currency units per unit of `currency`; required for a foreign-currency line.
    pub rate: Option<String>,
    /// Id of the customer, vendor or employee this line concerns (receivables, payables).
    pub party: Option<i64>,
    pub memo: Option<String>,
    /// Free analytic dimensions, e.g. `{"department": "sales", "project": "P-7"}`.
    pub dimensions: Option<BTreeMap<String, String>>,
}

/// A journal entry as a client sends it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntryInput {
    /// Accounting date, `YYYY-MM-DD`; must fall in an open period.
    #[schema(example = "2026-03-31")]
    pub date: String,
    #[serde(default)]
    pub memo: String,
    pub source: Option<SourceRef>,
    pub lines: Vec<LineInput>,
    /// In a batch: a key that makes this entry's posting exactly-once on its own.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// Posted by a user or a module.
    Standard,
    /// Cancels another entry line by line.
    Reversal,
    /// Moves a fiscal year's income and expense into retained earnings, or (with `reverses`)
    /// undoes that when the year is reopened. Closing entries post into closed periods and
    /// income statements leave them out.
    Closing,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Reversal => "reversal",
            Self::Closing => "closing",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "standard" => Some(Self::Standard),
            "reversal" => Some(Self::Reversal),
            "closing" => Some(Self::Closing),
            _ => None,
        }
    }
}

/// One validated line: amounts are signed minor units, debit positive.
#[derive(Debug, Clone, PartialEq)]
pub struct LineDraft {
    pub account: AccountCode,
    pub currency: &'static Currency,
    pub amount_minor: i64,
    pub rate: Option<Decimal>,
    pub base_amount_minor: i64,
    pub party: Option<i64>,
    pub memo: Option<String>,
    pub dimensions: BTreeMap<String, String>,
}

/// An entry whose fields are well-formed and whose lines balance in every currency. Whether its
/// accounts exist and its period is open is checked against the database when it posts.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryDraft {
    pub date: NaiveDate,
    pub memo: String,
    pub kind: EntryKind,
    pub source: Option<SourceRef>,
    pub reverses: Option<i64>,
    pub lines: Vec<LineDraft>,
    pub idempotency_key: Option<String>,
    /// Hash of the entry as submitted, to tell a replay from a different entry reusing a key.
    pub fingerprint: Option<String>,
}

/// The earliest accounting date the ledger accepts; reports start from it.
pub const EARLIEST_DATE: NaiveDate = NaiveDate::from_ymd_opt(1900, 1, 1).expect("a valid date");

/// The latest accounting date the ledger accepts.
pub const LATEST_DATE: NaiveDate = NaiveDate::from_ymd_opt(9999, 12, 31).expect("a valid date");

/// The periods balances are kept per, besides the running totals, coarsest first. Each is made
/// of whole periods of the next: a quarter of three months; a month of three ten-day periods
/// (the 1st–10th, the 11th–20th and the 21st to its end); a ten-day period of two five-day
/// ones (the 1st–5th and 6th–10th, and so on, the last running from the 26th to the month's
/// end); a five-day period of days. A report as of a day reads a handful of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalancePeriod {
    Quarter,
    Month,
    TenDays,
    FiveDays,
    Day,
}

impl BalancePeriod {
    pub const ALL: [Self; 5] = [
        Self::Quarter,
        Self::Month,
        Self::TenDays,
        Self::FiveDays,
        Self::Day,
    ];

    /// The coarsest period: every other one fits whole inside it.
    pub const COARSEST: Self = Self::ALL[0];

    /// The table of these balances and its column holding each period's first day.
    pub fn table(self) -> (&'static str, &'static str) {
        match self {
            Self::Quarter => ("ledger_balances_quarterly", "quarter"),
            Self::Month => ("ledger_balances_monthly", "month"),
            Self::TenDays => ("ledger_balances_ten_day", "start_day"),
            Self::FiveDays => ("ledger_balances_five_day", "start_day"),
            Self::Day => ("ledger_balances_daily", "day"),
        }
    }

    /// The first day of the period holding `date`.
    pub fn start(self, date: NaiveDate) -> NaiveDate {
        let day = match self {
            Self::Quarter => {
                let month = date.month0() / 3 * 3 + 1;
                return NaiveDate::from_ymd_opt(date.year(), month, 1)
                    .expect("the first day of January, April, July and October exists");
            }
            Self::Month => 1,
            Self::TenDays => (date.day0() / 10).min(2) * 10 + 1,
            Self::FiveDays => (date.day0() / 5).min(5) * 5 + 1,
            Self::Day => return date,
        };
        date.with_day(day)
            .expect("days 1, 6, 11, 16, 21 and 26 exist in every month")
    }

    /// The first day of the period after the one that starts on `start`.
    pub fn next(self, start: NaiveDate) -> NaiveDate {
        match self {
            Self::Quarter => start + Months::new(3),
            Self::Month => start + Months::new(1),
            Self::TenDays if start.day() < 21 => start + Days::new(10),
            Self::FiveDays if start.day() < 26 => start + Days::new(5),
            Self::TenDays | Self::FiveDays => Self::Month.next(Self::Month.start(start)),
            Self::Day => start + Days::new(1),
        }
    }

    /// The next finer period, if any.
    pub fn finer(self) -> Option<Self> {
        let place = Self::ALL.iter().position(|period| *period == self)?;
        Self::ALL.get(place + 1).copied()
    }

    /// Splits the days `from..=to` into runs of whole periods, each as coarse as fits: whole
    /// quarters, then whole months at either end, and so on down to single days. Each run is the
    /// period and the first days of its first and last periods (for days, the days).
    pub fn runs(from: NaiveDate, to: NaiveDate) -> Vec<(Self, NaiveDate, NaiveDate)> {
        fn split(
            period: BalancePeriod,
            from: NaiveDate,
            to: NaiveDate,
            runs: &mut Vec<(BalancePeriod, NaiveDate, NaiveDate)>,
        ) {
            if from > to {
                return;
            }
            let Some(finer) = period.finer() else {
                runs.push((period, from, to));
                return;
            };
            let first = match period.start(from) {
                start if start == from => start,
                start => period.next(start),
            };
            let last = match period.start(to) {
                start if period.next(start) == to + Days::new(1) => start,
                start => period.start(start - Days::new(1)),
            };
            if first <= last {
                runs.push((period, first, last));
                split(finer, from, first - Days::new(1), runs);
                split(finer, period.next(last), to, runs);
            } else {
                split(finer, from, to, runs);
            }
        }
        let mut runs = Vec::new();
        split(Self::COARSEST, from, to, &mut runs);
        runs
    }
}

/// Parses `YYYY-MM-DD` between 1900-01-01 and 9999-12-31.
pub fn parse_date(text: &str) -> Result<NaiveDate, String> {
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .filter(|_| text.len() == 10)
        .ok_or_else(|| format!("{text:?} is not a date in the form YYYY-MM-DD"))?;
    if !(EARLIEST_DATE..=LATEST_DATE).contains(&date) {
        return Err(format!("{text} is outside the years 1900 to 9999"));
    }
    Ok(date)
}

fn check_length(errors: &mut Vec<FieldError>, field: &str, text: &str, max: usize) {
    if text.chars().count() > max {
        errors.push(FieldError::new(
            field,
            format!("is longer than {max} characters"),
        ));
    }
}

impl EntryDraft {
    /// Validates everything that needs no database: shapes, amounts, currencies, rates and the
    /// balance in each currency and in the base currency. All problems are reported at once.
    pub fn parse(input: &EntryInput, base: &'static Currency) -> Result<Self> {
        let mut errors = Vec::new();
        let date = parse_date(&input.date)
            .map_err(|message| errors.push(FieldError::new("date", message)))
            .ok();
        check_length(&mut errors, "memo", &input.memo, MEMO_CHARS_MAX);
        if let Some(source) = &input.source {
            for (field, value) in [
                ("source.module", &source.module),
                ("source.document", &source.document),
            ] {
                if value.trim().is_empty() {
                    errors.push(FieldError::new(field, "must not be empty"));
                }
                check_length(&mut errors, field, value, SOURCE_FIELD_CHARS_MAX);
            }
        }
        if let Some(key) = &input.idempotency_key {
            check_idempotency_key(key)
                .unwrap_or_else(|message| errors.push(FieldError::new("idempotency_key", message)));
        }
        if input.lines.len() < 2 {
            errors.push(FieldError::new(
                "lines",
                "an entry needs at least two lines, a debit and a credit",
            ));
        }
        if input.lines.len() > LINES_PER_ENTRY_MAX {
            errors.push(FieldError::new(
                "lines",
                format!("an entry has at most {LINES_PER_ENTRY_MAX} lines"),
            ));
        }
        let mut lines = Vec::with_capacity(input.lines.len());
        for (index, line) in input.lines.iter().enumerate() {
            match parse_line(line, base) {
                Ok(line) => lines.push(line),
                Err(line_errors) => errors.extend(line_errors.into_iter().map(|e| {
                    FieldError::new(join_path(&format!("lines[{index}]"), &e.field), e.message)
                })),
            }
        }
        if errors.is_empty()
            && let Err(imbalance) = check_balance(&lines, base)
        {
            errors.push(FieldError::new("lines", imbalance));
        }
        match date {
            Some(date) if errors.is_empty() => Ok(Self {
                date,
                memo: input.memo.clone(),
                kind: EntryKind::Standard,
                source: input.source.clone(),
                reverses: None,
                lines,
                idempotency_key: input.idempotency_key.clone(),
                fingerprint: input.idempotency_key.as_ref().map(|_| {
                    let unkeyed = EntryInput {
                        idempotency_key: None,
                        ..input.clone()
                    };
                    crate::idempotency::fingerprint("ledger.entry", &unkeyed)
                }),
            }),
            _ => Err(Error::Invalid(errors)),
        }
    }

    /// The entry that cancels this one: same accounts and amounts on the opposite side. The
    /// reversal of a closing entry is itself a closing entry.
    pub fn reversal_of(original_id: i64, original: &Self, date: NaiveDate, memo: String) -> Self {
        Self {
            date,
            memo,
            kind: match original.kind {
                EntryKind::Closing => EntryKind::Closing,
                _ => EntryKind::Reversal,
            },
            source: original.source.clone(),
            reverses: Some(original_id),
            lines: original
                .lines
                .iter()
                .map(|line| LineDraft {
                    amount_minor: -line.amount_minor,
                    base_amount_minor: -line.base_amount_minor,
                    ..line.clone()
                })
                .collect(),
            idempotency_key: None,
            fingerprint: None,
        }
    }
}

pub fn check_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_CHARS_MAX {
        return Err(format!(
            "an idempotency key has 1 to {IDEMPOTENCY_KEY_CHARS_MAX} characters"
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("an idempotency key is printable ASCII without spaces".into());
    }
    Ok(())
}

fn parse_line(input: &LineInput, base: &'static Currency) -> Result<LineDraft, Vec<FieldError>> {
    let mut errors = Vec::new();
    let account = AccountCode::parse(&input.account)
        .map_err(|message| errors.push(FieldError::new("account", message)))
        .ok();
    let currency = match input.currency.as_deref() {
        None => Some(base),
        Some(code) => currency::lookup(code).or_else(|| {
            errors.push(FieldError::new(
                "currency",
                format!("{code:?} is not an ISO 4217 currency code Keel knows"),
            ));
            None
        }),
    };
    let amount = match (&input.debit, &input.credit, currency) {
        (Some(_), Some(_), _) => {
            errors.push(FieldError::new(
                "credit",
                "a line has either a debit or a credit, not both",
            ));
            None
        }
        (None, None, _) => {
            errors.push(FieldError::new("debit", "a line needs a debit or a credit"));
            None
        }
        (_, _, None) => None,
        (Some(debit), None, Some(currency)) => parse_amount(debit, currency)
            .map_err(|message| errors.push(FieldError::new("debit", message)))
            .ok(),
        (None, Some(credit), Some(currency)) => parse_amount(credit, currency)
            .map(|minor| -minor)
            .map_err(|message| errors.push(FieldError::new("credit", message)))
            .ok(),
    };
    let rate = match (input.rate.as_deref(), currency) {
        (Some(text), Some(currency)) if currency.code == base.code => match parse_rate(text) {
            Ok(rate) if rate == Decimal::ONE => None,
            _ => {
                errors.push(FieldError::new(
                    "rate",
                    format!("a line in the base currency {} takes no rate", base.code),
                ));
                None
            }
        },
        (Some(text), Some(_)) => parse_rate(text)
            .map_err(|message| errors.push(FieldError::new("rate", message)))
            .ok(),
        (None, Some(currency)) if currency.code != base.code => {
            errors.push(FieldError::new(
                "rate",
                format!(
                    "a line in {} needs the rate to the base currency {}",
                    currency.code, base.code
                ),
            ));
            None
        }
        _ => None,
    };
    if let Some(memo) = &input.memo {
        check_length(&mut errors, "memo", memo, MEMO_CHARS_MAX);
    }
    if input.party.is_some_and(|party| party <= 0) {
        errors.push(FieldError::new("party", "a party id is a positive integer"));
    }
    let dimensions = input.dimensions.clone().unwrap_or_default();
    if dimensions.len() > DIMENSIONS_PER_LINE_MAX {
        errors.push(FieldError::new(
            "dimensions",
            format!("a line has at most {DIMENSIONS_PER_LINE_MAX} dimensions"),
        ));
    }
    for (key, value) in &dimensions {
        let field = format!("dimensions.{key}");
        if key.is_empty() || key.chars().count() > DIMENSION_KEY_CHARS_MAX {
            errors.push(FieldError::new(
                &field,
                format!("a dimension name has 1 to {DIMENSION_KEY_CHARS_MAX} characters"),
            ));
        }
        check_length(&mut errors, &field, value, DIMENSION_VALUE_CHARS_MAX);
    }
    let (Some(account), Some(currency), Some(amount_minor), true) =
        (account, currency, amount, errors.is_empty())
    else {
        return Err(errors);
    };
    let base_amount_minor = match rate {
        None => amount_minor,
        Some(rate) => match convert_to_base(amount_minor, currency, rate, base) {
            Some(minor) if minor.abs() <= AMOUNT_MINOR_MAX && minor != 0 => minor,
            Some(0) => {
                return Err(vec![FieldError::new(
                    "rate",
                    format!("the amount converts to zero {}", base.code),
                )]);
            }
            _ => {
                return Err(vec![FieldError::new(
                    "rate",
                    "the amount converted at this rate is too large",
                )]);
            }
        },
    };
    Ok(LineDraft {
        account,
        currency,
        amount_minor,
        rate,
        base_amount_minor,
        party: input.party,
        memo: input.memo.clone().filter(|memo| !memo.is_empty()),
        dimensions,
    })
}

/// Checks that the lines of each foreign currency balance in that currency and that the whole
/// entry balances in the base currency (base-currency lines at face value, foreign lines at their
/// converted amount). A currency exchange therefore goes through a trading account in each
/// currency, and a realized exchange difference is a base-currency line.
pub fn check_balance(lines: &[LineDraft], base: &Currency) -> Result<(), String> {
    let mut per_currency: BTreeMap<&str, (&Currency, i128, i128)> = BTreeMap::new();
    let (mut base_debits, mut base_credits) = (0_i128, 0_i128);
    for line in lines {
        let slot = per_currency
            .entry(line.currency.code)
            .or_insert((line.currency, 0, 0));
        if line.amount_minor > 0 {
            slot.1 += i128::from(line.amount_minor);
        } else {
            slot.2 += i128::from(-line.amount_minor);
        }
        if line.base_amount_minor > 0 {
            base_debits += i128::from(line.base_amount_minor);
        } else {
            base_credits += i128::from(-line.base_amount_minor);
        }
    }
    let describe = |currency: &Currency, debits: i128, credits: i128, label: &str| {
        let places = currency.minor_units;
        let show = |v: i128| Decimal::from_i128_with_scale(v, places).to_string();
        format!(
            "the entry does not balance in {}{label}: debits {}, credits {}, difference {}",
            currency.code,
            show(debits),
            show(credits),
            show(debits - credits)
        )
    };
    for (code, (currency, debits, credits)) in &per_currency {
        if *code != base.code && debits != credits {
            return Err(describe(currency, *debits, *credits, ""));
        }
    }
    if base_debits != base_credits {
        return Err(describe(
            base,
            base_debits,
            base_credits,
            " (base currency)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usd() -> &'static Currency {
        currency::lookup("USD").expect("USD is in the list")
    }

    fn line(account: &str, debit: Option<&str>, credit: Option<&str>) -> LineInput {
        LineInput {
            account: account.into(),
            debit: debit.map(Into::into),
            credit: credit.map(Into::into),
            ..LineInput::default()
        }
    }

    fn entry(lines: Vec<LineInput>) -> EntryInput {
        EntryInput {
            date: "2026-03-01".into(),
            lines,
            ..EntryInput::default()
        }
    }

    fn fields(error: Error) -> Vec<String> {
        match error {
            Error::Invalid(errors) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn amounts_parse_into_minor_units_of_their_currency() {
        assert_eq!(parse_amount("1250.50", usd()), Ok(125_050));
        assert_eq!(parse_amount("7", usd()), Ok(700));
        assert_eq!(parse_amount("10.500", usd()), Ok(1_050));
        let yen = currency::lookup("JPY").expect("JPY");
        assert_eq!(parse_amount("500", yen), Ok(500));
        assert!(parse_amount("500.5", yen).is_err());
    }

    #[test]
    fn malformed_or_non_positive_amounts_are_refused() {
        for text in [
            "", "-5", "+5", "1e3", "1,000.00", " 5", "5.", ".5", "0", "0.00", "abc", "NaN",
        ] {
            assert!(parse_amount(text, usd()).is_err(), "{text:?} was accepted");
        }
        assert!(parse_amount("0.001", usd()).is_err());
        assert!(parse_amount("99999999999999999999", usd()).is_err());
    }

    #[test]
    fn a_balanced_entry_parses() {
        let draft = EntryDraft::parse(
            &entry(vec![
                line("1000", Some("100.00"), None),
                line("4000", None, Some("100")),
            ]),
            usd(),
        )
        .expect("balanced");
        assert_eq!(draft.lines[0].amount_minor, 10_000);
        assert_eq!(draft.lines[1].amount_minor, -10_000);
    }

    #[test]
    fn an_unbalanced_entry_states_the_difference() {
        let error = EntryDraft::parse(
            &entry(vec![
                line("1000", Some("100.00"), None),
                line("4000", None, Some("90")),
            ]),
            usd(),
        )
        .expect_err("unbalanced");
        assert_eq!(
            error.to_string(),
            "lines: the entry does not balance in USD (base currency): debits 100.00, credits 90.00, difference 10.00"
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut both = line("1000", Some("1"), Some("1"));
        both.currency = Some("usd".into());
        let error = EntryDraft::parse(
            &EntryInput {
                date: "2026-02-30".into(),
                lines: vec![both, line("bad code!", None, Some("-1"))],
                ..EntryInput::default()
            },
            usd(),
        )
        .expect_err("invalid");
        assert_eq!(
            fields(error),
            [
                "date",
                "lines[0].currency",
                "lines[0].credit",
                "lines[1].account",
                "lines[1].credit"
            ]
        );
    }

    #[test]
    fn foreign_lines_need_a_rate_and_balance_in_their_currency_and_in_base() {
        let eur = |mut l: LineInput, rate: Option<&str>| {
            l.currency = Some("EUR".into());
            l.rate = rate.map(Into::into);
            l
        };
        let missing_rate = EntryDraft::parse(
            &entry(vec![
                eur(line("1100", Some("10"), None), None),
                eur(line("4000", None, Some("10")), Some("1.1")),
            ]),
            usd(),
        );
        assert_eq!(
            fields(missing_rate.expect_err("no rate")),
            ["lines[0].rate"]
        );

        // Received at 1.2 against a receivable booked at 1.1: EUR balances, the exchange gain
        // is a base-currency line.
        let draft = EntryDraft::parse(
            &entry(vec![
                eur(line("1100", Some("100"), None), Some("1.2")),
                eur(line("1200", None, Some("100")), Some("1.1")),
                line("7900", None, Some("10")),
            ]),
            usd(),
        )
        .expect("balanced with the exchange gain");
        assert_eq!(draft.lines[0].base_amount_minor, 12_000);

        let unbalanced_in_eur = EntryDraft::parse(
            &entry(vec![
                eur(line("1100", Some("100"), None), Some("1.1")),
                line("1000", None, Some("110")),
            ]),
            usd(),
        );
        assert!(
            unbalanced_in_eur
                .expect_err("EUR side alone")
                .to_string()
                .contains("does not balance in EUR")
        );
    }

    #[test]
    fn reversal_negates_every_line() {
        let draft = EntryDraft::parse(
            &entry(vec![
                line("1000", Some("5"), None),
                line("4000", None, Some("5")),
            ]),
            usd(),
        )
        .expect("balanced");
        let date = draft.date;
        let reversal = EntryDraft::reversal_of(7, &draft, date, "undo".into());
        assert_eq!(reversal.lines[0].amount_minor, -500);
        assert_eq!(reversal.reverses, Some(7));
        assert!(check_balance(&reversal.lines, usd()).is_ok());
    }

    fn date(text: &str) -> NaiveDate {
        parse_date(text).expect("a date")
    }

    #[test]
    fn a_range_splits_into_whole_quarters_then_months_and_so_on_down_to_days() {
        use BalancePeriod::{Day, FiveDays, Month, Quarter, TenDays};
        assert_eq!(
            BalancePeriod::runs(date("2025-01-01"), date("2025-06-15")),
            vec![
                (Quarter, date("2025-01-01"), date("2025-01-01")),
                (Month, date("2025-04-01"), date("2025-05-01")),
                (TenDays, date("2025-06-01"), date("2025-06-01")),
                (FiveDays, date("2025-06-11"), date("2025-06-11")),
            ]
        );
        assert_eq!(
            BalancePeriod::runs(date("2025-02-09"), date("2025-02-28")),
            vec![
                (TenDays, date("2025-02-11"), date("2025-02-21")),
                (Day, date("2025-02-09"), date("2025-02-10")),
            ]
        );
        assert_eq!(
            BalancePeriod::runs(date("2025-03-03"), date("2025-03-19")),
            vec![
                (FiveDays, date("2025-03-06"), date("2025-03-11")),
                (Day, date("2025-03-03"), date("2025-03-05")),
                (Day, date("2025-03-16"), date("2025-03-19")),
            ]
        );
        // The last five-day and ten-day periods run to the end of the month, however long.
        assert_eq!(
            BalancePeriod::runs(date("2024-02-21"), date("2024-02-29")),
            vec![(TenDays, date("2024-02-21"), date("2024-02-21"))]
        );
        assert_eq!(
            BalancePeriod::runs(date("2025-01-26"), date("2025-01-31")),
            vec![(FiveDays, date("2025-01-26"), date("2025-01-26"))]
        );
        assert_eq!(
            BalancePeriod::runs(date("2025-03-05"), date("2025-03-05")),
            vec![(Day, date("2025-03-05"), date("2025-03-05"))]
        );
        assert!(BalancePeriod::runs(date("2025-03-06"), date("2025-03-05")).is_empty());
        assert_eq!(
            BalancePeriod::runs(EARLIEST_DATE, LATEST_DATE),
            vec![(Quarter, EARLIEST_DATE, date("9999-10-01"))]
        );
    }

    proptest! {
        #[test]
        fn formatting_and_parsing_minor_units_round_trips(minor in 1_i64..AMOUNT_MINOR_MAX, places in 0_u32..=3) {
            let currency = Currency { code: "TST", name: "test", minor_units: places };
            prop_assert_eq!(parse_amount(&format_minor(minor, places), &currency), Ok(minor));
        }

        #[test]
        fn entries_built_from_matching_debits_and_credits_always_balance(
            amounts in proptest::collection::vec(1_i64..1_000_000_000, 1..20),
        ) {
            let mut lines: Vec<LineInput> = amounts
                .iter()
                .map(|a| line("1000", Some(&format_minor(*a, 2)), None))
                .collect();
            let total: i64 = amounts.iter().sum();
            lines.push(line("4000", None, Some(&format_minor(total, 2))));
            prop_assert!(EntryDraft::parse(&entry(lines), usd()).is_ok());
        }

        #[test]
        fn an_entry_off_by_any_amount_is_rejected(
            amounts in proptest::collection::vec(1_i64..1_000_000_000, 1..20),
            off_by in 1_i64..1_000_000,
        ) {
            let mut lines: Vec<LineInput> = amounts
                .iter()
                .map(|a| line("1000", Some(&format_minor(*a, 2)), None))
                .collect();
            let total: i64 = amounts.iter().sum::<i64>() + off_by;
            lines.push(line("4000", None, Some(&format_minor(total, 2))));
            prop_assert!(EntryDraft::parse(&entry(lines), usd()).is_err());
        }

        #[test]
        fn conversion_to_base_is_exact_for_whole_rates(minor in 1_i64..1_000_000_000, rate in 1_i64..1000) {
            let eur = currency::lookup("EUR").expect("EUR");
            prop_assert_eq!(convert_to_base(minor, eur, Decimal::from(rate), usd()), Some(minor * rate));
        }

        #[test]
        fn runs_cover_every_day_of_a_range_once_with_whole_periods(
            start in 0_u64..3_000,
            length in 0_u64..800,
        ) {
            let from = date("2020-01-01") + Days::new(start);
            let to = from + Days::new(length);
            let mut covered = Vec::new();
            for (period, first, last) in BalancePeriod::runs(from, to) {
                let mut start = first;
                while start <= last {
                    prop_assert_eq!(period.start(start), start, "{:?} starts on a period's first day", period);
                    let end = period.next(start);
                    let mut day = start;
                    while day < end {
                        covered.push(day);
                        day = day + Days::new(1);
                    }
                    start = end;
                }
            }
            covered.sort_unstable();
            let expected: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= to).collect();
            prop_assert_eq!(covered, expected);
        }
    }
}
