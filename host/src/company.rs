//! Companies: every ledger, party and role belongs to one. A single-company install has one,
//! created on first start, and requests that name no company use it.

use std::collections::HashMap;
use std::sync::RwLock;

use chrono::Utc;

use crate::currency::{self, Currency};
use crate::db::{Database, Row, Tx};
use crate::error::{Error, Result};
use crate::{on_conn, on_pool};

/// Code of the company created on first start.
pub const DEFAULT_COMPANY_CODE: &str = "main";

/// Base currency of the first company when the operator names none.
pub const DEFAULT_BASE_CURRENCY: &str = "USD";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Company {
    pub id: i64,
    pub code: String,
    pub name: String,
    /// The currency the books are kept in; every line also carries its amount in it.
    pub base_currency: &'static Currency,
    /// Month (1–12) in which the fiscal year starts.
    pub fiscal_year_start_month: u32,
}

fn from_row(row: &impl Row) -> anyhow::Result<Company> {
    let code = row.text("base_currency")?;
    let base_currency = currency::lookup(&code)
        .ok_or_else(|| anyhow::anyhow!("company base currency {code} is not a known currency"))?;
    Ok(Company {
        id: row.int("id")?,
        code: row.text("code")?,
        name: row.text("name")?,
        base_currency,
        fiscal_year_start_month: u32::try_from(row.int("fiscal_year_start_month")?)?,
    })
}

const SELECT_COMPANY: &str =
    "SELECT id, code, name, base_currency, fiscal_year_start_month FROM companies";

/// The company with this id, read in `tx` (for work that names companies by id, such as
/// event delivery).
pub async fn by_id(tx: &mut crate::db::Tx, id: i64) -> Result<Company> {
    let company = crate::on_conn!(tx, conn => {
        match sqlx::query(&format!("{SELECT_COMPANY} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
        {
            Some(row) => Some(from_row(&row)?),
            None => None,
        }
    });
    company.ok_or_else(|| Error::NotFound(format!("no company with id {id}")))
}

/// Companies by code, read once and kept: a company's identity and base currency never change.
#[derive(Debug)]
pub struct Companies {
    db: Database,
    by_code: RwLock<HashMap<String, Company>>,
    default_code: String,
}

impl Companies {
    /// Makes sure the default company exists (creating it with `base_currency` on a fresh
    /// database, with the fiscal year that contains today) and loads it.
    pub async fn bootstrap(db: &Database, base_currency: Option<&str>) -> anyhow::Result<Self> {
        let existing = load_all(db).await?;
        let default = match existing.first() {
            Some(company) => {
                if let Some(requested) = base_currency {
                    anyhow::ensure!(
                        company.base_currency.code == requested,
                        "company {:?} keeps its books in {}; the base currency cannot be changed to {requested}",
                        company.code,
                        company.base_currency.code
                    );
                }
                company.clone()
            }
            None => create_default(db, base_currency.unwrap_or(DEFAULT_BASE_CURRENCY)).await?,
        };
        let mut by_code: HashMap<String, Company> =
            existing.into_iter().map(|c| (c.code.clone(), c)).collect();
        by_code.insert(default.code.clone(), default.clone());
        Ok(Self {
            db: db.clone(),
            by_code: RwLock::new(by_code),
            default_code: default.code,
        })
    }

    /// The company requests use when they name none.
    pub fn default_company(&self) -> Company {
        self.cached(&self.default_code)
            .expect("the default company is loaded at bootstrap")
    }

    /// The company with this code, or the default company when none is named.
    pub async fn resolve(&self, code: Option<&str>) -> Result<Company> {
        match code {
            Some(code) => self.by_code(code).await,
            None => Ok(self.default_company()),
        }
    }

    /// The company with this code.
    pub async fn by_code(&self, code: &str) -> Result<Company> {
        if let Some(company) = self.cached(code) {
            return Ok(company);
        }
        let company = on_pool!(&self.db, pool => {
            match sqlx::query(&format!("{SELECT_COMPANY} WHERE code = $1"))
                .bind(code)
                .fetch_optional(pool)
                .await?
            {
                Some(row) => Some(from_row(&row)?),
                None => None,
            }
        })
        .ok_or_else(|| Error::NotFound(format!("no company with code {code:?}")))?;
        self.by_code
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(code.to_owned(), company.clone());
        Ok(company)
    }

    fn cached(&self, code: &str) -> Option<Company> {
        self.by_code
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(code)
            .cloned()
    }
}

async fn load_all(db: &Database) -> anyhow::Result<Vec<Company>> {
    on_pool!(db, pool => {
        sqlx::query(&format!("{SELECT_COMPANY} ORDER BY id"))
            .fetch_all(pool)
            .await?
            .iter()
            .map(from_row)
            .collect()
    })
}

async fn create_default(db: &Database, base_currency: &str) -> anyhow::Result<Company> {
    let company = insert(
        db,
        DEFAULT_COMPANY_CODE,
        "My company",
        base_currency,
        &crate::audit::Origin::system(),
    )
    .await?;
    tracing::info!(
        code = DEFAULT_COMPANY_CODE,
        base_currency,
        "created the default company"
    );
    Ok(company)
}

/// Creates a company with the fiscal year containing today open, and audits it.
async fn insert(
    db: &Database,
    code: &str,
    name: &str,
    base_currency: &str,
    origin: &crate::audit::Origin,
) -> anyhow::Result<Company> {
    let currency = currency::lookup(base_currency).ok_or_else(|| {
        anyhow::anyhow!("{base_currency:?} is not an ISO 4217 currency code Keel knows")
    })?;
    let mut tx = db.begin_write().await?;
    let id: i64 = on_conn!(&mut tx, conn => {
        sqlx::query(
            "INSERT INTO companies (code, name, base_currency, fiscal_year_start_month, created_at) \
             VALUES ($1, $2, $3, 1, $4) RETURNING id",
        )
        .bind(code)
        .bind(name)
        .bind(currency.code)
        .bind(Utc::now())
        .fetch_one(conn)
        .await?
        .int("id")?
    });
    let company = Company {
        id,
        code: code.to_owned(),
        name: name.to_owned(),
        base_currency: currency,
        fiscal_year_start_month: 1,
    };
    crate::audit::append(
        &mut tx,
        origin,
        &[crate::audit::Event::new(
            Some(id),
            "companies:create",
            "company",
            code,
            serde_json::json!({ "name": name, "base_currency": currency.code }),
        )],
    )
    .await?;
    open_current_year(&mut tx, &company).await?;
    crate::authz::add_default_duty_rules(&mut tx, id).await?;
    tx.commit().await?;
    Ok(company)
}

impl Companies {
    /// Creates another company (a subsidiary, a test company) next to the default one.
    pub async fn create(
        &self,
        code: &str,
        name: &str,
        base_currency: &str,
        origin: &crate::audit::Origin,
    ) -> Result<Company> {
        if crate::identity::check_username(code).is_err() {
            return Err(Error::invalid(
                "code",
                "a company code has lowercase letters, digits, '.', '-', '_'",
            ));
        }
        if self.by_code(code).await.is_ok() {
            return Err(Error::Conflict(format!(
                "a company with code {code:?} exists already"
            )));
        }
        let company = insert(&self.db, code, name, base_currency, origin).await?;
        self.by_code
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(code.to_owned(), company.clone());
        Ok(company)
    }
}

async fn open_current_year(tx: &mut Tx, company: &Company) -> anyhow::Result<()> {
    let today = Utc::now().date_naive();
    let start = crate::ledger::periods::fiscal_year_start_containing(company, today);
    crate::ledger::periods::create_fiscal_year(tx, company, start, &crate::audit::Origin::system())
        .await
        .map_err(|e| anyhow::anyhow!("opening the current fiscal year: {e}"))?;
    Ok(())
}
