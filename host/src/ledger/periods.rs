//! Fiscal years and their periods: opening a year, closing and reopening periods, and the
//! year-end close that moves income and expense into retained earnings.

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::chart;
use super::entries;
use super::model::{AccountCode, EntryDraft, EntryKind, LineDraft};
use super::posting::{self, Job};
use super::reports::{self, Closing};
use crate::audit::{self, Event, Origin};
use crate::company::Company;
use crate::currency;
use crate::db::{Row, Tx};
use crate::error::{Error, Result};
use crate::on_conn;

/// Periods in a fiscal year: monthly.
const PERIODS_PER_YEAR: u32 = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Open,
    Closed,
}

impl Status {
    fn parse(text: &str) -> anyhow::Result<Self> {
        match text {
            "open" => Ok(Self::Open),
            "closed" => Ok(Self::Closed),
            other => anyhow::bail!("unknown status {other:?} in the database"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PeriodView {
    pub id: i64,
    pub fiscal_year: i64,
    /// `YYYY-MM` of the month the period covers.
    #[schema(example = "2026-03")]
    pub name: String,
    #[schema(value_type = String)]
    pub start: NaiveDate,
    #[schema(value_type = String)]
    pub end: NaiveDate,
    pub status: Status,
    pub closed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FiscalYearView {
    pub id: i64,
    #[schema(example = "2026")]
    pub name: String,
    #[schema(value_type = String)]
    pub start: NaiveDate,
    #[schema(value_type = String)]
    pub end: NaiveDate,
    pub status: Status,
    /// The entry that moved the year's income and expense into retained earnings.
    pub closing_entry: Option<i64>,
    pub closed_at: Option<DateTime<Utc>>,
    pub periods: Vec<PeriodView>,
}

/// Opens a fiscal year.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFiscalYear {
    /// First day of the year (YYYY-MM-DD), normally the first of the company's fiscal start month.
    #[schema(example = "2027-01-01")]
    pub start: String,
}

/// Closes a fiscal year.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseFiscalYear {
    /// Equity account that receives the year's profit or loss.
    #[schema(example = "3200")]
    pub retained_earnings_account: String,
}

/// The first day of the fiscal year that contains `date`.
pub fn fiscal_year_start_containing(company: &Company, date: NaiveDate) -> NaiveDate {
    let month = company.fiscal_year_start_month;
    let year = if date.month() >= month {
        date.year()
    } else {
        date.year() - 1
    };
    NaiveDate::from_ymd_opt(year, month, 1).expect("month is 1-12")
}

fn year_name(start: NaiveDate, end: NaiveDate) -> String {
    if start.year() == end.year() {
        start.year().to_string()
    } else {
        format!("{}/{:02}", start.year(), end.year() % 100)
    }
}

/// Opens the fiscal year starting on `start` with its monthly periods.
pub async fn create_fiscal_year(
    tx: &mut Tx,
    company: &Company,
    start: NaiveDate,
    origin: &Origin,
) -> Result<FiscalYearView> {
    if start.day() != 1 {
        return Err(Error::invalid(
            "start",
            format!("{start} is not the first day of a month"),
        ));
    }
    let end = (start + Months::new(PERIODS_PER_YEAR))
        .pred_opt()
        .expect("after 1900");
    if end > super::model::LATEST_DATE {
        return Err(Error::invalid(
            "start",
            "the fiscal year would end after 9999-12-31",
        ));
    }
    let overlapping = on_conn!(tx, conn => {
        sqlx::query("SELECT name FROM ledger_fiscal_years WHERE company_id = $1 AND start_date <= $2 AND end_date >= $3")
            .bind(company.id)
            .bind(end)
            .bind(start)
            .fetch_optional(&mut *conn)
            .await?
            .map(|row| row.text("name"))
            .transpose()?
    });
    if let Some(name) = overlapping {
        return Err(Error::Conflict(format!(
            "the fiscal year {start} to {end} overlaps fiscal year {name}"
        )));
    }
    let name = year_name(start, end);
    let year_id = on_conn!(tx, conn => {
        sqlx::query(
            "INSERT INTO ledger_fiscal_years (company_id, name, start_date, end_date, status) \
             VALUES ($1, $2, $3, $4, 'open') RETURNING id",
        )
        .bind(company.id)
        .bind(&name)
        .bind(start)
        .bind(end)
        .fetch_one(&mut *conn)
        .await?
        .int("id")?
    });
    let sql = format!(
        "INSERT INTO ledger_periods (company_id, fiscal_year_id, name, start_date, end_date, status) VALUES {}",
        (0..PERIODS_PER_YEAR as usize)
            .map(|i| {
                let first = i * 5 + 1;
                format!(
                    "(${}, ${}, ${}, ${}, ${}, 'open')",
                    first,
                    first + 1,
                    first + 2,
                    first + 3,
                    first + 4
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    on_conn!(tx, conn => {
        let mut query = sqlx::query(&sql);
        for month in 0..PERIODS_PER_YEAR {
            let period_start = start + Months::new(month);
            let period_end = (period_start + Months::new(1)).pred_opt().expect("after 1900");
            query = query
                .bind(company.id)
                .bind(year_id)
                .bind(period_start.format("%Y-%m").to_string())
                .bind(period_start)
                .bind(period_end);
        }
        query.execute(&mut *conn).await?;
    });
    let year = get_fiscal_year(tx, company, year_id).await?;
    let event = Event::new(
        Some(company.id),
        "ledger.periods:open-year",
        "ledger.fiscal-year",
        year_id,
        json!({ "after": { "name": year.name, "start": year.start, "end": year.end } }),
    );
    audit::append(tx, origin, &[event]).await?;
    Ok(year)
}

const SELECT_PERIOD: &str =
    "SELECT id, fiscal_year_id, name, start_date, end_date, status, closed_at FROM ledger_periods";

fn period_from_row(row: &impl Row) -> anyhow::Result<PeriodView> {
    Ok(PeriodView {
        id: row.int("id")?,
        fiscal_year: row.int("fiscal_year_id")?,
        name: row.text("name")?,
        start: row.date("start_date")?,
        end: row.date("end_date")?,
        status: Status::parse(&row.text("status")?)?,
        closed_at: row.opt_timestamp("closed_at")?,
    })
}

/// Periods of the company, oldest first, optionally of one fiscal year only.
pub async fn list_periods(
    tx: &mut Tx,
    company: &Company,
    fiscal_year: Option<i64>,
) -> Result<Vec<PeriodView>> {
    let sql = format!(
        "{SELECT_PERIOD} WHERE company_id = $1 AND ($2 IS NULL OR fiscal_year_id = $2) ORDER BY start_date"
    );
    Ok(on_conn!(tx, conn => {
        sqlx::query(&sql)
            .bind(company.id)
            .bind(fiscal_year)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(period_from_row)
            .collect::<anyhow::Result<Vec<_>>>()?
    }))
}

async fn get_period(tx: &mut Tx, company: &Company, id: i64, lock: bool) -> Result<PeriodView> {
    let sql = format!(
        "{SELECT_PERIOD} WHERE company_id = $1 AND id = $2{}",
        if lock { tx.lock_for_update() } else { "" }
    );
    on_conn!(tx, conn => {
        match sqlx::query(&sql).bind(company.id).bind(id).fetch_optional(&mut *conn).await? {
            Some(row) => Ok(period_from_row(&row)?),
            None => Err(Error::NotFound(format!("no fiscal period {id}"))),
        }
    })
}

const SELECT_YEAR: &str = "SELECT id, name, start_date, end_date, status, closing_entry_id, closed_at FROM ledger_fiscal_years";

async fn year_rows(
    tx: &mut Tx,
    company: &Company,
    id: Option<i64>,
    lock: bool,
) -> Result<Vec<FiscalYearView>> {
    let sql = format!(
        "{SELECT_YEAR} WHERE company_id = $1 AND ($2 IS NULL OR id = $2) ORDER BY start_date{}",
        if lock { tx.lock_for_update() } else { "" }
    );
    let mut years: Vec<FiscalYearView> = on_conn!(tx, conn => {
        sqlx::query(&sql)
            .bind(company.id)
            .bind(id)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| -> anyhow::Result<_> {
                Ok(FiscalYearView {
                    id: row.int("id")?,
                    name: row.text("name")?,
                    start: row.date("start_date")?,
                    end: row.date("end_date")?,
                    status: Status::parse(&row.text("status")?)?,
                    closing_entry: row.opt_int("closing_entry_id")?,
                    closed_at: row.opt_timestamp("closed_at")?,
                    periods: Vec::new(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    });
    let periods = list_periods(tx, company, id).await?;
    for year in &mut years {
        year.periods = periods
            .iter()
            .filter(|p| p.fiscal_year == year.id)
            .cloned()
            .collect();
    }
    Ok(years)
}

pub async fn list_fiscal_years(tx: &mut Tx, company: &Company) -> Result<Vec<FiscalYearView>> {
    year_rows(tx, company, None, false).await
}

pub async fn get_fiscal_year(tx: &mut Tx, company: &Company, id: i64) -> Result<FiscalYearView> {
    year_rows(tx, company, Some(id), false)
        .await?
        .pop()
        .ok_or_else(|| Error::NotFound(format!("no fiscal year {id}")))
}

async fn lock_fiscal_year(tx: &mut Tx, company: &Company, id: i64) -> Result<FiscalYearView> {
    year_rows(tx, company, Some(id), true)
        .await?
        .pop()
        .ok_or_else(|| Error::NotFound(format!("no fiscal year {id}")))
}

async fn set_period_status(tx: &mut Tx, id: i64, status: Status) -> Result<()> {
    let closed_at = (status == Status::Closed).then(posting::now_micros);
    on_conn!(tx, conn => {
        sqlx::query("UPDATE ledger_periods SET status = $1, closed_at = $2 WHERE id = $3")
            .bind(if status == Status::Closed { "closed" } else { "open" })
            .bind(closed_at)
            .bind(id)
            .execute(&mut *conn)
            .await?;
    });
    Ok(())
}

/// Closes a period: from now on postings dated inside it are refused.
pub async fn close_period(
    tx: &mut Tx,
    company: &Company,
    id: i64,
    origin: &Origin,
) -> Result<PeriodView> {
    let period = get_period(tx, company, id, true).await?;
    if period.status == Status::Closed {
        return Err(Error::Conflict(format!(
            "period {} is already closed",
            period.name
        )));
    }
    set_period_status(tx, id, Status::Closed).await?;
    let after = get_period(tx, company, id, false).await?;
    audit_period(tx, company, origin, "ledger.periods:close", &period, &after).await?;
    crate::events::publish(
        tx,
        company.id,
        crate::events::topics::PERIOD_CLOSED,
        &format!("period/{}", after.id),
        &after,
        None,
    )
    .await?;
    Ok(after)
}

async fn audit_period(
    tx: &mut Tx,
    company: &Company,
    origin: &Origin,
    action: &str,
    before: &PeriodView,
    after: &PeriodView,
) -> Result<()> {
    let event = Event::new(
        Some(company.id),
        action,
        "ledger.period",
        after.id,
        json!({ "before": before, "after": after }),
    );
    audit::append(tx, origin, &[event]).await?;
    Ok(())
}

/// Reopens a closed period of an open fiscal year.
pub async fn reopen_period(
    tx: &mut Tx,
    company: &Company,
    id: i64,
    origin: &Origin,
) -> Result<PeriodView> {
    let period = get_period(tx, company, id, true).await?;
    if period.status == Status::Open {
        return Err(Error::Conflict(format!(
            "period {} is already open",
            period.name
        )));
    }
    let year = lock_fiscal_year(tx, company, period.fiscal_year).await?;
    if year.status == Status::Closed {
        return Err(Error::Conflict(format!(
            "fiscal year {} is closed; reopen the year before reopening period {}",
            year.name, period.name
        )));
    }
    set_period_status(tx, id, Status::Open).await?;
    let after = get_period(tx, company, id, false).await?;
    audit_period(
        tx,
        company,
        origin,
        "ledger.periods:reopen",
        &period,
        &after,
    )
    .await?;
    Ok(after)
}

/// The period with this id, for checks made before changing it.
pub async fn period(tx: &mut Tx, company: &Company, id: i64) -> Result<PeriodView> {
    get_period(tx, company, id, false).await
}

/// Closes a fiscal year: posts the closing entry that moves every income and expense balance
/// into retained earnings (dated the last day of the year), and closes the year and all of its
/// periods. Years close in order.
pub async fn close_fiscal_year(
    tx: &mut Tx,
    company: &Company,
    id: i64,
    request: &CloseFiscalYear,
    origin: &Origin,
) -> Result<FiscalYearView> {
    let year = lock_fiscal_year(tx, company, id).await?;
    if year.status == Status::Closed {
        return Err(Error::Conflict(format!(
            "fiscal year {} is already closed",
            year.name
        )));
    }
    let earlier_open = list_fiscal_years(tx, company)
        .await?
        .into_iter()
        .find(|y| y.start < year.start && y.status == Status::Open);
    if let Some(earlier) = earlier_open {
        return Err(Error::Conflict(format!(
            "close fiscal year {} first; years close in order",
            earlier.name
        )));
    }
    let retained = chart::find(tx, company, &request.retained_earnings_account)
        .await?
        .ok_or_else(|| {
            Error::invalid(
                "retained_earnings_account",
                format!("there is no account {}", request.retained_earnings_account),
            )
        })?;
    if retained.account_type != super::model::AccountType::Equity || !retained.active {
        return Err(Error::invalid(
            "retained_earnings_account",
            format!("account {} is not an active equity account", retained.code),
        ));
    }
    let closing_entry = post_closing_entry(tx, company, &year, &retained, origin).await?;
    for period in &year.periods {
        if period.status == Status::Open {
            set_period_status(tx, period.id, Status::Closed).await?;
        }
    }
    on_conn!(tx, conn => {
        sqlx::query("UPDATE ledger_fiscal_years SET status = 'closed', closing_entry_id = $1, closed_at = $2 WHERE id = $3")
            .bind(closing_entry)
            .bind(posting::now_micros())
            .bind(year.id)
            .execute(&mut *conn)
            .await?;
    });
    let after = get_fiscal_year(tx, company, id).await?;
    let event = Event::new(
        Some(company.id),
        "ledger.periods:close-year",
        "ledger.fiscal-year",
        id,
        json!({ "after": { "name": after.name, "status": after.status, "closing_entry": after.closing_entry } }),
    );
    audit::append(tx, origin, &[event]).await?;
    Ok(after)
}

async fn post_closing_entry(
    tx: &mut Tx,
    company: &Company,
    year: &FiscalYearView,
    retained: &chart::Account,
    origin: &Origin,
) -> Result<Option<i64>> {
    let (balances, accounts) =
        reports::activity_and_chart(tx, company, None, year.end, Closing::Include).await?;
    let retained_code = AccountCode::parse(&retained.code).map_err(anyhow::Error::msg)?;
    let mut lines = Vec::new();
    let mut to_retained: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
    let mut keys: Vec<_> = balances.iter().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    for ((account_id, code), sums) in keys {
        let Some(account) = accounts.iter().find(|a| a.id == *account_id) else {
            continue;
        };
        if !account.account_type.is_profit_and_loss() || (sums.net() == 0 && sums.base_net() == 0) {
            continue;
        }
        let currency =
            currency::lookup(code).ok_or_else(|| anyhow::anyhow!("unknown currency {code}"))?;
        lines.push(LineDraft {
            account: AccountCode::parse(&account.code).map_err(anyhow::Error::msg)?,
            currency,
            amount_minor: -sums.net(),
            rate: None,
            base_amount_minor: -sums.base_net(),
            party: None,
            memo: None,
            dimensions: Default::default(),
        });
        let slot = to_retained.entry(code.clone()).or_default();
        slot.0 += sums.net();
        slot.1 += sums.base_net();
    }
    if lines.is_empty() {
        return Ok(None);
    }
    for (code, (net, base_net)) in to_retained {
        if net == 0 && base_net == 0 {
            continue;
        }
        lines.push(LineDraft {
            account: retained_code.clone(),
            currency: currency::lookup(&code)
                .ok_or_else(|| anyhow::anyhow!("unknown currency {code}"))?,
            amount_minor: net,
            rate: None,
            base_amount_minor: base_net,
            party: None,
            memo: None,
            dimensions: Default::default(),
        });
    }
    let draft = EntryDraft {
        date: year.end,
        memo: format!("Year-end close of fiscal year {}", year.name),
        kind: EntryKind::Closing,
        source: None,
        reverses: None,
        lines,
        idempotency_key: None,
        fingerprint: None,
    };
    post_system_entry(tx, company, draft, origin)
        .await
        .map(Some)
}

/// Posts an entry the host itself builds (closing entries and their reversals).
async fn post_system_entry(
    tx: &mut Tx,
    company: &Company,
    draft: EntryDraft,
    origin: &Origin,
) -> Result<i64> {
    let entries = [draft];
    let mut results = posting::post_jobs(
        tx,
        company,
        &[Job {
            entries: &entries,
            batch: false,
            origin,
        }],
        posting::now_micros(),
    )
    .await?;
    let posted = results.pop().expect("one result per job")?;
    Ok(posted[0].id)
}

/// Reopens the most recent closed fiscal year: reverses its closing entry and opens the year.
/// Its periods stay closed until reopened one by one.
pub async fn reopen_fiscal_year(
    tx: &mut Tx,
    company: &Company,
    id: i64,
    origin: &Origin,
) -> Result<FiscalYearView> {
    let year = lock_fiscal_year(tx, company, id).await?;
    if year.status == Status::Open {
        return Err(Error::Conflict(format!(
            "fiscal year {} is already open",
            year.name
        )));
    }
    let later_closed = list_fiscal_years(tx, company)
        .await?
        .into_iter()
        .find(|y| y.start > year.start && y.status == Status::Closed);
    if let Some(later) = later_closed {
        return Err(Error::Conflict(format!(
            "reopen fiscal year {} first; years reopen in reverse order",
            later.name
        )));
    }
    if let Some(closing_id) = year.closing_entry {
        let closing = entries::load_one(tx, company, closing_id).await?;
        let reversal = EntryDraft::reversal_of(
            closing_id,
            &closing.draft,
            year.end,
            format!("Reopening fiscal year {}", year.name),
        );
        post_system_entry(tx, company, reversal, origin).await?;
    }
    on_conn!(tx, conn => {
        sqlx::query("UPDATE ledger_fiscal_years SET status = 'open', closing_entry_id = NULL, closed_at = NULL WHERE id = $1")
            .bind(year.id)
            .execute(&mut *conn)
            .await?;
    });
    let after = get_fiscal_year(tx, company, id).await?;
    let event = Event::new(
        Some(company.id),
        "ledger.periods:reopen-year",
        "ledger.fiscal-year",
        id,
        json!({ "before": { "closing_entry": year.closing_entry }, "after": { "status": after.status } }),
    );
    audit::append(tx, origin, &[event]).await?;
    Ok(after)
}
