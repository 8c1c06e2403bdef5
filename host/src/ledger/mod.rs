//! The general ledger: chart of accounts, journal entries, fiscal periods and reports.
//!
//! Data flows one way: a request is parsed into drafts ([`model`]), posted in one transaction
//! with its idempotency record ([`posting`]), and read back through the running balances
//! ([`reports`]).

pub mod chart;
pub mod entries;
pub mod http;
pub mod model;
pub mod periods;
pub mod posting;
pub mod reports;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::audit::{self, Event, Origin};
use crate::authz::{Authz, DutySubject, perm};
use crate::company::Company;
use crate::db::{Database, Tx, UniqueConstraint};
use crate::error::{Error, Result};
use crate::idempotency::{self, RequestKey, StoredResponse};
use std::sync::Arc;

use model::{EntryDraft, EntryInput, EntryKind};
use posting::{ENTRIES_PER_BATCH_MAX, Job, PostRequest, Writer};

const REVERSED_ONCE: UniqueConstraint = UniqueConstraint {
    postgres_name: "ledger_entries_reversed_once",
    sqlite_columns: "ledger_entries.reverses_entry_id",
};

/// Reverses a posted entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReverseInput {
    /// Date of the reversing entry; the original's date when absent.
    pub date: Option<String>,
    /// Memo of the reversing entry; "Reversal of entry N" when absent.
    pub memo: Option<String>,
}

/// The ledger's operations, shared by the HTTP API and the CLI.
#[derive(Debug, Clone)]
pub struct Ledger {
    db: Database,
    /// Present in a server: concurrent postings share commits. The CLI posts directly.
    writer: Option<Writer>,
    /// Present in a server: checks segregation-of-duties rules for the acting user. The CLI acts
    /// for the operator, who has the database itself.
    duties: Option<Arc<Authz>>,
}

fn json_response<T: Serialize>(status: u16, value: &T) -> Result<StoredResponse> {
    Ok(StoredResponse::new(
        status,
        serde_json::to_value(value).map_err(anyhow::Error::from)?,
    ))
}

impl Ledger {
    /// A ledger that posts each request in its own transaction.
    pub fn new(db: Database) -> Self {
        Self {
            db,
            writer: None,
            duties: None,
        }
    }

    /// A ledger for a server: postings go through the group-commit writer and duty rules are
    /// enforced. Needs a Tokio runtime.
    pub fn for_server(db: Database, authz: Arc<Authz>) -> Self {
        let writer = Writer::start(db.clone());
        Self {
            db,
            writer: Some(writer),
            duties: Some(authz),
        }
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    /// Runs one write in its own transaction, exactly once per idempotency key.
    async fn write(
        &self,
        company: &Company,
        key: Option<&RequestKey>,
        operation: impl AsyncFnOnce(&mut Tx) -> Result<StoredResponse>,
    ) -> Result<StoredResponse> {
        idempotency::once_committed(&self.db, company, key, operation).await
    }

    /// Runs reads against one consistent snapshot.
    async fn read<T>(&self, operation: impl AsyncFnOnce(&mut Tx) -> Result<T>) -> Result<T> {
        self.db.read(operation).await
    }

    /// Refuses when a segregation-of-duties rule forbids the acting user this action.
    async fn check_duties(
        &self,
        tx: &mut Tx,
        company: &Company,
        origin: &Origin,
        action: crate::authz::Permission,
        subject: DutySubject,
    ) -> Result<()> {
        match (&self.duties, origin.actor.user_id) {
            (Some(authz), Some(user)) => {
                authz
                    .check_duties(tx, company.id, user, action, subject)
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Posts one entry (`batch == false`) or a batch, all or nothing.
    pub async fn post(
        &self,
        company: &Company,
        inputs: &[EntryInput],
        batch: bool,
        key: Option<RequestKey>,
        origin: &Origin,
    ) -> Result<StoredResponse> {
        if batch && inputs.is_empty() {
            return Err(Error::invalid(
                "entries",
                "a batch needs at least one entry",
            ));
        }
        if inputs.len() > ENTRIES_PER_BATCH_MAX {
            return Err(Error::invalid(
                "entries",
                format!(
                    "a batch holds at most {ENTRIES_PER_BATCH_MAX} entries; split it into several requests"
                ),
            ));
        }
        let mut drafts = Vec::with_capacity(inputs.len());
        let mut errors = Vec::new();
        for (index, input) in inputs.iter().enumerate() {
            match EntryDraft::parse(input, company.base_currency) {
                Ok(draft) => drafts.push(draft),
                Err(error) if batch => match error.within(&format!("entries[{index}]")) {
                    Error::Invalid(list) => errors.extend(list),
                    other => return Err(other),
                },
                Err(error) => return Err(error),
            }
        }
        if !errors.is_empty() {
            return Err(Error::Invalid(errors));
        }
        let request = PostRequest {
            company: company.clone(),
            origin: origin.clone(),
            entries: drafts,
            batch,
            key,
        };
        match &self.writer {
            Some(writer) => writer.post(request).await,
            None => posting::post_requests(&self.db, &[&request])
                .await?
                .pop()
                .expect("one result per request"),
        }
    }

    /// Posts the entry that reverses entry `id`, dated `input.date` or the original's date.
    pub async fn reverse(
        &self,
        company: &Company,
        id: i64,
        input: &ReverseInput,
        key: Option<&RequestKey>,
        origin: &Origin,
    ) -> Result<StoredResponse> {
        let date = input
            .date
            .as_deref()
            .map(model::parse_date)
            .transpose()
            .map_err(|message| Error::invalid("date", message))?;
        if let Some(memo) = &input.memo
            && memo.chars().count() > model::MEMO_CHARS_MAX
        {
            return Err(Error::invalid(
                "memo",
                format!("is longer than {} characters", model::MEMO_CHARS_MAX),
            ));
        }
        let duties = self.duties.as_deref();
        self.write(company, key, async |tx: &mut Tx| {
            let posted =
                reverse_in(tx, company, id, date, input.memo.clone(), origin, duties).await?;
            Ok(posting::render(&posted, false))
        })
        .await
    }

    pub async fn entry(&self, company: &Company, id: i64) -> Result<entries::EntryView> {
        self.read(async |tx: &mut Tx| Ok(entries::load_one(tx, company, id).await?.view(company)))
            .await
    }

    pub async fn entries(
        &self,
        company: &Company,
        query: &entries::EntryQuery,
    ) -> Result<Vec<entries::EntryView>> {
        self.read(async |tx: &mut Tx| {
            Ok(entries::list(tx, company, query)
                .await?
                .iter()
                .map(|stored| stored.view(company))
                .collect())
        })
        .await
    }

    pub async fn accounts(&self, company: &Company) -> Result<Vec<chart::AccountView>> {
        self.read(async |tx: &mut Tx| {
            Ok(chart::list(tx, company)
                .await?
                .into_iter()
                .map(Into::into)
                .collect())
        })
        .await
    }

    pub async fn account(&self, company: &Company, code: &str) -> Result<chart::AccountView> {
        self.read(async |tx: &mut Tx| Ok(chart::get(tx, company, code).await?.into()))
            .await
    }

    pub async fn create_account(
        &self,
        company: &Company,
        new: &chart::NewAccount,
        key: Option<&RequestKey>,
        origin: &Origin,
    ) -> Result<StoredResponse> {
        self.write(company, key, async |tx: &mut Tx| {
            let account: chart::AccountView = chart::create(tx, company, new).await?.into();
            let event = Event::new(
                Some(company.id),
                "ledger.accounts:create",
                "ledger.account",
                &account.code,
                json!({ "after": account }),
            );
            audit::append(tx, origin, &[event]).await?;
            json_response(201, &account)
        })
        .await
    }

    pub async fn update_account(
        &self,
        company: &Company,
        code: &str,
        changes: &chart::AccountChanges,
        key: Option<&RequestKey>,
        origin: &Origin,
    ) -> Result<StoredResponse> {
        self.write(company, key, async |tx: &mut Tx| {
            let before: chart::AccountView = chart::get(tx, company, code).await?.into();
            let account: chart::AccountView =
                chart::update(tx, company, code, changes).await?.into();
            let event = Event::new(
                Some(company.id),
                "ledger.accounts:update",
                "ledger.account",
                code,
                json!({ "before": before, "after": account }),
            );
            audit::append(tx, origin, &[event]).await?;
            json_response(200, &account)
        })
        .await
    }

    /// Adds the default chart's missing accounts; returns how many were added.
    pub async fn init_default_chart(&self, company: &Company, origin: &Origin) -> Result<usize> {
        let mut tx = self.db.begin_write().await?;
        let added = chart::init_default_chart(&mut tx, company).await?;
        if added > 0 {
            let event = Event::new(
                Some(company.id),
                "ledger.accounts:init-chart",
                "ledger.chart",
                company.id,
                json!({ "added": added }),
            );
            audit::append(&mut tx, origin, &[event]).await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    pub async fn fiscal_years(&self, company: &Company) -> Result<Vec<periods::FiscalYearView>> {
        self.read(async |tx: &mut Tx| periods::list_fiscal_years(tx, company).await)
            .await
    }

    pub async fn fiscal_year(&self, company: &Company, id: i64) -> Result<periods::FiscalYearView> {
        self.read(async |tx: &mut Tx| periods::get_fiscal_year(tx, company, id).await)
            .await
    }

    pub async fn open_fiscal_year(
        &self,
        company: &Company,
        input: &periods::NewFiscalYear,
        key: Option<&RequestKey>,
        origin: &Origin,
    ) -> Result<StoredResponse> {
        let start =
            model::parse_date(&input.start).map_err(|message| Error::invalid("start", message))?;
        self.write(company, key, async |tx: &mut Tx| {
            json_response(
                201,
                &periods::create_fiscal_year(tx, company, start, origin).await?,
            )
        })
        .await
    }

    pub async fn close_fiscal_year(
        &self,
        company: &Company,
        id: i64,
        input: &periods::CloseFiscalYear,
        key: Option<&RequestKey>,
        origin: &Origin,
    ) -> Result<StoredResponse> {
        self.write(company, key, async |tx: &mut Tx| {
            json_response(
                200,
                &periods::close_fiscal_year(tx, company, id, input, origin).await?,
            )
        })
        .await
    }

    pub async fn reopen_fiscal_year(
        &self,
        company: &Company,
        id: i64,
        key: Option<&RequestKey>,
        origin: &Origin,
    ) -> Result<StoredResponse> {
        self.write(company, key, async |tx: &mut Tx| {
            json_response(
                200,
                &periods::reopen_fiscal_year(tx, company, id, origin).await?,
            )
        })
        .await
    }

    pub async fn periods(
        &self,
        company: &Company,
        fiscal_year: Option<i64>,
    ) -> Result<Vec<periods::PeriodView>> {
        self.read(async |tx: &mut Tx| periods::list_periods(tx, company, fiscal_year).await)
            .await
    }

    pub async fn close_period(
        &self,
        company: &Company,
        id: i64,
        key: Option<&RequestKey>,
        origin: &Origin,
    ) -> Result<StoredResponse> {
        self.write(company, key, async |tx: &mut Tx| {
            json_response(200, &periods::close_period(tx, company, id, origin).await?)
        })
        .await
    }

    pub async fn reopen_period(
        &self,
        company: &Company,
        id: i64,
        key: Option<&RequestKey>,
        origin: &Origin,
    ) -> Result<StoredResponse> {
        self.write(company, key, async |tx: &mut Tx| {
            let period = periods::period(tx, company, id).await?;
            let subject = DutySubject::Period {
                start: period.start,
                end: period.end,
            };
            self.check_duties(tx, company, origin, perm::LEDGER_PERIODS_REOPEN, subject)
                .await?;
            json_response(200, &periods::reopen_period(tx, company, id, origin).await?)
        })
        .await
    }

    /// The period named `YYYY-MM`, for the CLI.
    pub async fn period_by_name(
        &self,
        company: &Company,
        name: &str,
    ) -> Result<periods::PeriodView> {
        self.periods(company, None)
            .await?
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no fiscal period {name:?}; periods are named YYYY-MM"
                ))
            })
    }

    pub async fn trial_balance(
        &self,
        company: &Company,
        as_of: NaiveDate,
    ) -> Result<reports::TrialBalance> {
        self.read(async |tx: &mut Tx| reports::trial_balance(tx, company, as_of).await)
            .await
    }

    pub async fn balance_sheet(
        &self,
        company: &Company,
        as_of: NaiveDate,
    ) -> Result<reports::BalanceSheet> {
        self.read(async |tx: &mut Tx| reports::balance_sheet(tx, company, as_of).await)
            .await
    }

    pub async fn income_statement(
        &self,
        company: &Company,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<reports::IncomeStatement> {
        self.read(async |tx: &mut Tx| reports::income_statement(tx, company, from, to).await)
            .await
    }

    pub async fn account_ledger(
        &self,
        company: &Company,
        code: &str,
        from: Option<NaiveDate>,
        to: NaiveDate,
        after: Option<&str>,
        limit: usize,
    ) -> Result<reports::AccountLedger> {
        self.read(async |tx: &mut Tx| {
            reports::account_ledger(tx, company, code, from, to, after, limit).await
        })
        .await
    }
}

/// Posts the entry that reverses entry `id` inside `tx`, dated `date` or the original's date,
/// and records it in the audit trail. `duties`, when given, enforces segregation of duties.
pub async fn reverse_in(
    tx: &mut Tx,
    company: &Company,
    id: i64,
    date: Option<NaiveDate>,
    memo: Option<String>,
    origin: &Origin,
    duties: Option<&Authz>,
) -> Result<Vec<posting::Posted>> {
    let original = entries::load_one(tx, company, id).await?;
    match original.draft.kind {
        EntryKind::Standard => {}
        EntryKind::Reversal => {
            return Err(Error::Conflict(format!(
                "entry {id} is itself a reversal (of entry {}); post a new entry instead",
                original.draft.reverses.unwrap_or_default()
            )));
        }
        EntryKind::Closing => {
            return Err(Error::Conflict(format!(
                "entry {id} is a year-end closing entry; reopen its fiscal year instead"
            )));
        }
    }
    if let Some(by) = original.reversed_by {
        return Err(Error::Conflict(format!(
            "entry {id} was already reversed by entry {by}"
        )));
    }
    if let (Some(authz), Some(user)) = (duties, origin.actor.user_id) {
        authz
            .check_duties(
                tx,
                company.id,
                user,
                perm::LEDGER_ENTRIES_REVERSE,
                DutySubject::Entry(id),
            )
            .await?;
    }
    let memo = memo.unwrap_or_else(|| format!("Reversal of entry {id}"));
    let reversal = EntryDraft::reversal_of(
        id,
        &original.draft,
        date.unwrap_or(original.draft.date),
        memo,
    );
    let entries = [reversal];
    let job = Job {
        entries: &entries,
        batch: false,
        origin,
    };
    let outcome = posting::post_jobs(tx, company, &[job], posting::now_micros()).await;
    let mut results = match outcome {
        Ok(results) => results,
        Err(error) if REVERSED_ONCE.is_violated_by(&error) => {
            return Err(Error::Conflict(format!("entry {id} was already reversed")));
        }
        Err(error) => return Err(error.into()),
    };
    let posted = results.pop().expect("one result per job")?;
    let event = Event::new(
        Some(company.id),
        "ledger.entries:reverse",
        "ledger.entry",
        id,
        json!({ "reversed_by": posted[0].id }),
    );
    audit::append(tx, origin, &[event]).await?;
    Ok(posted)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The group-commit writer goes on with the next group while a commit reaches the disk; the
    /// commit's own requests are answered only once it has.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_answers_a_posting_once_its_commit_is_on_the_disk() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let location = crate::db::Location::DataDir(dir.path().to_owned());
        let db = Database::open(&location).await.expect("a database");
        let companies = crate::company::Companies::bootstrap(&db, None)
            .await
            .expect("a company");
        let company = companies.default_company();
        let authz = Arc::new(Authz::load(&db).await.expect("the permissions"));
        let ledger = Ledger::for_server(db.clone(), authz);
        let origin = Origin::system();
        ledger
            .init_default_chart(&company, &origin)
            .await
            .expect("a chart");
        let year = serde_json::from_value(json!({ "start": "2025-01-01" })).expect("a year");
        ledger
            .open_fiscal_year(&company, &year, None, &origin)
            .await
            .expect("an open year");
        let entry: EntryInput = serde_json::from_value(json!({
            "date": "2025-01-05",
            "lines": [
                { "account": "1000", "debit": "10.00" },
                { "account": "4000", "credit": "10.00" },
            ],
        }))
        .expect("an entry");
        for _ in 0..5 {
            let posted = ledger
                .post(&company, std::slice::from_ref(&entry), false, None, &origin)
                .await
                .expect("posted");
            assert_eq!(posted.status, 201);
            assert_eq!(
                db.wal_flushes_pending(),
                0,
                "answered before its commit was on the disk"
            );
        }
    }
}
