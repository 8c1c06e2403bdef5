//! The chart of accounts: codes, names, types, the tree that reports roll up, and the default
//! chart a small business starts from.

use chrono::Utc;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::model::{ACCOUNT_NAME_CHARS_MAX, AccountCode, AccountType};
use crate::company::Company;
use crate::currency;
use crate::db::{ByPlace, Hold, Param, Tx, UniqueConstraint};
use crate::error::{Error, FieldError, Result};
use crate::on_conn;

const CODE_UNIQUE: UniqueConstraint = UniqueConstraint {
    postgres_name: "ledger_accounts_code_unique",
    sqlite_columns: "ledger_accounts.company_id, ledger_accounts.code",
};

/// An account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: i64,
    pub code: String,
    pub name: String,
    pub account_type: AccountType,
    pub parent_id: Option<i64>,
    pub parent_code: Option<String>,
    /// When set, the account takes postings in this currency only.
    pub currency: Option<String>,
    pub active: bool,
}

/// An account as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AccountView {
    #[schema(example = "1020")]
    pub code: String,
    #[schema(example = "Bank - operating account")]
    pub name: String,
    #[serde(rename = "type")]
    pub account_type: AccountType,
    /// Code of the parent account; reports roll this account up into it.
    pub parent: Option<String>,
    /// The only currency the account takes; any currency when absent.
    pub currency: Option<String>,
    pub active: bool,
}

impl From<Account> for AccountView {
    fn from(account: Account) -> Self {
        Self {
            code: account.code,
            name: account.name,
            account_type: account.account_type,
            parent: account.parent_code,
            currency: account.currency,
            active: account.active,
        }
    }
}

/// A new account.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    #[schema(example = "1020")]
    pub code: String,
    #[schema(example = "Bank - operating account")]
    pub name: String,
    #[serde(rename = "type")]
    pub account_type: AccountType,
    /// Code of an existing account of the same type.
    pub parent: Option<String>,
    /// Restrict the account to one currency (ISO 4217).
    pub currency: Option<String>,
    /// Defaults to true.
    pub active: Option<bool>,
}

/// Changes to an account; absent fields stay as they are. `"parent": null` makes it top-level.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountChanges {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub parent: Option<Option<String>>,
    pub active: Option<bool>,
}

/// Tells `"field": null` (Some(None)) apart from a missing field (None).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

const SELECT_ACCOUNT: &str = "SELECT a.id, a.code, a.name, a.account_type, a.parent_id, p.code AS parent_code, \
     a.currency, a.active FROM ledger_accounts a LEFT JOIN ledger_accounts p ON p.id = a.parent_id";

/// The columns [`by_place`] decodes, as `SELECT_ACCOUNT` lists them.
const ACCOUNT_COLUMNS: [&str; 8] = [
    "id",
    "code",
    "name",
    "account_type",
    "parent_id",
    "parent_code",
    "currency",
    "active",
];

fn by_place(row: &impl ByPlace) -> anyhow::Result<Account> {
    Ok(Account {
        id: row.int(0)?,
        code: row.text(1)?,
        name: row.text(2)?,
        account_type: AccountType::parse(&row.text(3)?).map_err(anyhow::Error::msg)?,
        parent_id: row.opt_int(4)?,
        parent_code: row.opt_text(5)?,
        currency: row.opt_text(6)?,
        active: row.flag(7)?,
    })
}

/// Every account of the company, in code order.
pub async fn list(tx: &mut Tx, company: &Company) -> Result<Vec<Account>> {
    if let Tx::Sqlite(sqlite) = tx {
        return Ok(sqlite
            .on_direct_connection(Hold::Long, |conn| list_on(conn, company))
            .await?);
    }
    let sql = format!("{SELECT_ACCOUNT} WHERE a.company_id = $1");
    let mut accounts = tx
        .fetch_packed(&sql, &ACCOUNT_COLUMNS, &[Param::Int(Some(company.id))])
        .await?
        .iter()
        .map(by_place)
        .collect::<anyhow::Result<Vec<_>>>()?;
    accounts.sort_by(|a, b| a.code.cmp(&b.code));
    Ok(accounts)
}

/// [`list`] on SQLite, on a connection already borrowed for other reads of the same report.
pub(super) fn list_on(
    conn: &rusqlite::Connection,
    company: &Company,
) -> anyhow::Result<Vec<Account>> {
    let sql = format!("{SELECT_ACCOUNT} WHERE a.company_id = ?1 ORDER BY a.code");
    let mut statement = conn.prepare(&sql)?;
    let mut rows = statement.query([company.id])?;
    let mut accounts = Vec::new();
    while let Some(row) = rows.next()? {
        accounts.push(by_place(row)?);
    }
    Ok(accounts)
}

pub async fn find(tx: &mut Tx, company: &Company, code: &str) -> Result<Option<Account>> {
    let sql = format!("{SELECT_ACCOUNT} WHERE a.company_id = $1 AND a.code = $2");
    Ok(on_conn!(tx, conn => {
        match sqlx::query(&sql).bind(company.id).bind(code).fetch_optional(&mut *conn).await? {
            Some(row) => Some(by_place(&row)?),
            None => None,
        }
    }))
}

pub async fn get(tx: &mut Tx, company: &Company, code: &str) -> Result<Account> {
    find(tx, company, code).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "there is no account {code} in the chart of accounts"
        ))
    })
}

fn check_name(name: &str, errors: &mut Vec<FieldError>) {
    if name.trim().is_empty() {
        errors.push(FieldError::new("name", "must not be empty"));
    } else if name.chars().count() > ACCOUNT_NAME_CHARS_MAX {
        errors.push(FieldError::new(
            "name",
            format!("is longer than {ACCOUNT_NAME_CHARS_MAX} characters"),
        ));
    }
}

/// The parent must exist and have the same type, so every statement section is one tree.
async fn resolve_parent(
    tx: &mut Tx,
    company: &Company,
    parent: &str,
    account_type: AccountType,
) -> Result<Account> {
    let parent_account = find(tx, company, parent)
        .await?
        .ok_or_else(|| Error::invalid("parent", format!("there is no account {parent}")))?;
    if parent_account.account_type != account_type {
        return Err(Error::invalid(
            "parent",
            format!(
                "account {parent} is of type {}; a parent has the same type as its children ({})",
                parent_account.account_type.as_str(),
                account_type.as_str()
            ),
        ));
    }
    Ok(parent_account)
}

pub async fn create(tx: &mut Tx, company: &Company, new: &NewAccount) -> Result<Account> {
    let mut errors = Vec::new();
    if let Err(message) = AccountCode::parse(&new.code) {
        errors.push(FieldError::new("code", message));
    }
    check_name(&new.name, &mut errors);
    if let Some(code) = &new.currency
        && currency::lookup(code).is_none()
    {
        errors.push(FieldError::new(
            "currency",
            format!("{code:?} is not an ISO 4217 currency code Keel knows"),
        ));
    }
    if !errors.is_empty() {
        return Err(Error::Invalid(errors));
    }
    let parent_id = match &new.parent {
        Some(parent) => Some(
            resolve_parent(tx, company, parent, new.account_type)
                .await?
                .id,
        ),
        None => None,
    };
    let inserted = on_conn!(tx, conn => {
        sqlx::query(
            "INSERT INTO ledger_accounts (company_id, code, name, account_type, parent_id, currency, active, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(company.id)
        .bind(&new.code)
        .bind(new.name.trim())
        .bind(new.account_type.as_str())
        .bind(parent_id)
        .bind(new.currency.as_deref())
        .bind(new.active.unwrap_or(true))
        .bind(Utc::now())
        .execute(&mut *conn)
        .await
        .map(|_| ())
    });
    match inserted.map_err(anyhow::Error::from) {
        Ok(_) => get(tx, company, &new.code).await,
        Err(error) if CODE_UNIQUE.is_violated_by(&error) => Err(Error::Conflict(format!(
            "account {} already exists",
            new.code
        ))),
        Err(error) => Err(error.into()),
    }
}

pub async fn update(
    tx: &mut Tx,
    company: &Company,
    code: &str,
    changes: &AccountChanges,
) -> Result<Account> {
    let account = get(tx, company, code).await?;
    let mut errors = Vec::new();
    if let Some(name) = &changes.name {
        check_name(name, &mut errors);
    }
    if !errors.is_empty() {
        return Err(Error::Invalid(errors));
    }
    let parent_id = match &changes.parent {
        None => account.parent_id,
        Some(None) => None,
        Some(Some(parent)) => {
            let parent = resolve_parent(tx, company, parent, account.account_type).await?;
            // Walk up from the new parent: reaching the account itself would make a cycle.
            let accounts = list(tx, company).await?;
            let mut cursor = Some(parent.id);
            while let Some(id) = cursor {
                if id == account.id {
                    return Err(Error::invalid(
                        "parent",
                        format!(
                            "account {} is below {code} already; an account cannot be its own ancestor",
                            parent.code
                        ),
                    ));
                }
                cursor = accounts
                    .iter()
                    .find(|a| a.id == id)
                    .and_then(|a| a.parent_id);
            }
            Some(parent.id)
        }
    };
    on_conn!(tx, conn => {
        sqlx::query("UPDATE ledger_accounts SET name = $1, parent_id = $2, active = $3 WHERE id = $4")
            .bind(changes.name.as_deref().map(str::trim).unwrap_or(&account.name))
            .bind(parent_id)
            .bind(changes.active.unwrap_or(account.active))
            .bind(account.id)
            .execute(&mut *conn)
            .await?;
    });
    get(tx, company, code).await
}

/// (code, name, type, parent code) of the default small-business chart.
const DEFAULT_CHART: &[(&str, &str, AccountType, Option<&str>)] = {
    use AccountType::{Asset, Equity, Expense, Income, Liability};
    &[
        ("1000", "Cash and cash equivalents", Asset, None),
        ("1010", "Cash on hand", Asset, Some("1000")),
        ("1020", "Bank - operating account", Asset, Some("1000")),
        ("1030", "Bank - savings account", Asset, Some("1000")),
        ("1100", "Accounts receivable", Asset, None),
        ("1150", "Allowance for doubtful accounts", Asset, None),
        ("1200", "Inventory", Asset, None),
        ("1300", "Prepaid expenses", Asset, None),
        ("1400", "Sales tax / VAT receivable", Asset, None),
        ("1500", "Fixed assets", Asset, None),
        ("1510", "Equipment", Asset, Some("1500")),
        ("1520", "Furniture and fixtures", Asset, Some("1500")),
        ("1530", "Vehicles", Asset, Some("1500")),
        ("1590", "Accumulated depreciation", Asset, Some("1500")),
        ("2000", "Accounts payable", Liability, None),
        ("2100", "Accrued liabilities", Liability, None),
        ("2200", "Sales tax / VAT payable", Liability, None),
        ("2300", "Payroll liabilities", Liability, None),
        ("2310", "Wages payable", Liability, Some("2300")),
        ("2320", "Payroll taxes payable", Liability, Some("2300")),
        (
            "2400",
            "Customer deposits and deferred revenue",
            Liability,
            None,
        ),
        ("2500", "Short-term loans", Liability, None),
        ("2700", "Long-term debt", Liability, None),
        ("3000", "Owner's equity / share capital", Equity, None),
        ("3100", "Owner's drawings / dividends", Equity, None),
        ("3200", "Retained earnings", Equity, None),
        ("3900", "Currency trading", Equity, None),
        ("4000", "Sales revenue", Income, None),
        ("4100", "Service revenue", Income, None),
        ("4200", "Other income", Income, None),
        ("4800", "Foreign exchange gains and losses", Income, None),
        ("4900", "Sales discounts and returns", Income, None),
        ("5000", "Cost of goods sold", Expense, None),
        ("6000", "Operating expenses", Expense, None),
        ("6010", "Salaries and wages", Expense, Some("6000")),
        ("6020", "Payroll taxes and benefits", Expense, Some("6000")),
        ("6100", "Rent", Expense, Some("6000")),
        ("6110", "Utilities", Expense, Some("6000")),
        ("6200", "Office supplies", Expense, Some("6000")),
        ("6300", "Insurance", Expense, Some("6000")),
        ("6400", "Professional fees", Expense, Some("6000")),
        ("6500", "Marketing and advertising", Expense, Some("6000")),
        ("6600", "Travel", Expense, Some("6000")),
        ("6700", "Software and subscriptions", Expense, Some("6000")),
        ("6800", "Depreciation", Expense, Some("6000")),
        ("6900", "Bank charges", Expense, Some("6000")),
        ("7000", "Interest expense", Expense, None),
        ("7100", "Income tax expense", Expense, None),
        ("7200", "Bad debt expense", Expense, None),
    ]
};

/// The code of the default chart's retained earnings account.
pub const DEFAULT_RETAINED_EARNINGS: &str = "3200";

/// Adds the accounts of the default chart that the company does not have yet; returns how many
/// were added. Existing accounts are left exactly as they are.
pub async fn init_default_chart(tx: &mut Tx, company: &Company) -> Result<usize> {
    let mut added = 0;
    for (code, name, account_type, parent) in DEFAULT_CHART {
        if find(tx, company, code).await?.is_some() {
            continue;
        }
        let parent = match parent {
            Some(parent)
                if find(tx, company, parent)
                    .await?
                    .is_some_and(|p| p.account_type == *account_type) =>
            {
                Some((*parent).to_owned())
            }
            _ => None,
        };
        create(
            tx,
            company,
            &NewAccount {
                code: (*code).to_owned(),
                name: (*name).to_owned(),
                account_type: *account_type,
                parent,
                currency: None,
                active: None,
            },
        )
        .await?;
        added += 1;
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_chart_lists_parents_before_their_children_with_the_same_type() {
        for (index, (code, _, account_type, parent)) in DEFAULT_CHART.iter().enumerate() {
            assert!(AccountCode::parse(code).is_ok());
            if let Some(parent) = parent {
                let position = DEFAULT_CHART
                    .iter()
                    .position(|(c, ..)| c == parent)
                    .expect("parent in chart");
                assert!(position < index, "{parent} comes after {code}");
                assert_eq!(DEFAULT_CHART[position].2, *account_type);
            }
        }
        assert!(
            DEFAULT_CHART
                .iter()
                .any(|(c, _, t, _)| *c == DEFAULT_RETAINED_EARNINGS && *t == AccountType::Equity)
        );
    }
}
