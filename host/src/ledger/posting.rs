//! Posting: validated drafts become immutable entries, their lines and the running balances,
//! all inside the caller's transaction; and the group-commit writer that lets many concurrent
//! requests share one durable commit.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::entries::{self, EntryView};
use super::model::{BalancePeriod, EntryDraft, EntryKind};
use crate::audit::{self, Event, Origin};
use crate::company::Company;
use crate::db::rows::{self, Value, Write};
use crate::db::{Database, OnDisk, Param, Row, Tx};
use crate::error::{Error, FieldError, Result, join_path};
use crate::idempotency::{self, RequestKey, StoredResponse};
use crate::on_conn;

/// Entries in one batch request. Large imports are split by the client; this bounds the memory
/// and the transaction a single request can hold.
pub const ENTRIES_PER_BATCH_MAX: usize = 10_000;

/// Entries the writer gathers from concurrent requests into one commit. Past this the commit
/// cost is amortized and a bigger group only adds latency.
const ENTRIES_PER_COMMIT_MAX: usize = 5_000;

/// Requests waiting for the writer before senders are made to wait too (back-pressure).
const WRITER_QUEUE_DEPTH: usize = 4_096;

/// Account codes or ids in one `IN (…)` list.
const KEYS_PER_QUERY_MAX: usize = 500;

/// An entry as posted, or as found already posted under the same idempotency key.
#[derive(Debug, Clone)]
pub struct Posted {
    pub id: i64,
    pub idempotency_key: Option<String>,
    /// True when the entry existed already and nothing was written.
    pub replayed: bool,
    /// The whole entry, for single-entry jobs only.
    pub view: Option<EntryView>,
}

/// Entries that post together or not at all. In a batch, errors name `entries[i]`.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    pub entries: &'a [EntryDraft],
    pub batch: bool,
    /// Who posts: recorded on each entry and in the audit trail.
    pub origin: &'a Origin,
}

impl Job<'_> {
    fn path(&self, index: usize, field: &str) -> String {
        if self.batch {
            join_path(&format!("entries[{index}]"), field)
        } else {
            field.to_owned()
        }
    }
}

#[derive(Debug)]
struct AccountRow {
    id: i64,
    currency: Option<String>,
    active: bool,
}

#[derive(Debug)]
struct PeriodRow {
    name: String,
    start: NaiveDate,
    end: NaiveDate,
    closed: bool,
}

/// What posting needs to know about the database, read once for a whole group of jobs.
#[derive(Debug, Default)]
struct Lookups {
    accounts: HashMap<String, AccountRow>,
    periods: Vec<PeriodRow>,
    /// Parties of the company, with the party each merged one was merged into.
    parties: HashMap<i64, Option<i64>>,
    /// Entries already posted under an idempotency key: key → (id, fingerprint).
    keyed: HashMap<String, (i64, Option<String>)>,
}

impl Lookups {
    fn period_of(&self, date: NaiveDate) -> Option<&PeriodRow> {
        let index = self.periods.partition_point(|p| p.end < date);
        self.periods.get(index).filter(|p| p.start <= date)
    }
}

async fn load_lookups(tx: &mut Tx, company: &Company, jobs: &[Job<'_>]) -> anyhow::Result<Lookups> {
    let drafts = || jobs.iter().flat_map(|job| job.entries.iter());
    let mut lookups = Lookups::default();

    let codes: Vec<&str> = drafts()
        .flat_map(|d| d.lines.iter().map(|l| l.account.as_str()))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let lock = tx.lock_for_share();
    for chunk in codes.chunks(KEYS_PER_QUERY_MAX) {
        // Packed into one value: a batch reads hundreds of accounts, and drivers hand rows
        // over one at a time.
        let select = format!(
            "SELECT id, code, currency, active FROM ledger_accounts WHERE company_id = $1 AND code IN {}{lock}",
            tx.backend().placeholders(2, chunk.len())
        );
        let params: Vec<Param> = std::iter::once(Param::Int(Some(company.id)))
            .chain(
                chunk
                    .iter()
                    .map(|code| Param::Text(Some((*code).to_owned()))),
            )
            .collect();
        for row in tx
            .fetch_packed(&select, &["id", "code", "currency", "active"], &params)
            .await?
        {
            lookups.accounts.insert(
                row.text(1)?,
                AccountRow {
                    id: row.int(0)?,
                    currency: row.opt_text(2)?,
                    active: row.flag(3)?,
                },
            );
        }
    }

    if let (Some(first), Some(last)) = (
        drafts().map(|d| d.date).min(),
        drafts().map(|d| d.date).max(),
    ) {
        let sql = format!(
            "SELECT name, start_date, end_date, status FROM ledger_periods \
             WHERE company_id = $1 AND end_date >= $2 AND start_date <= $3 ORDER BY start_date{lock}"
        );
        on_conn!(tx, conn => {
            for row in sqlx::query(&sql).bind(company.id).bind(first).bind(last).fetch_all(&mut *conn).await? {
                lookups.periods.push(PeriodRow {
                    name: row.text("name")?,
                    start: row.date("start_date")?,
                    end: row.date("end_date")?,
                    closed: row.text("status")? == "closed",
                });
            }
        });
    }

    let parties: Vec<i64> = drafts()
        .flat_map(|d| d.lines.iter().filter_map(|l| l.party))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    for chunk in parties.chunks(KEYS_PER_QUERY_MAX) {
        let sql = format!(
            "SELECT id, merged_into_id FROM parties WHERE company_id = $1 AND id IN {}{lock}",
            tx.backend().placeholders(2, chunk.len())
        );
        on_conn!(tx, conn => {
            let mut query = sqlx::query(&sql).bind(company.id);
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&mut *conn).await? {
                lookups.parties.insert(row.int("id")?, row.opt_int("merged_into_id")?);
            }
        });
    }

    let keys: Vec<&str> = drafts()
        .filter_map(|d| d.idempotency_key.as_deref())
        .collect();
    for chunk in keys.chunks(KEYS_PER_QUERY_MAX) {
        let sql = format!(
            "SELECT id, idempotency_key, request_fingerprint FROM ledger_entries \
             WHERE company_id = $1 AND idempotency_key IN {}",
            tx.backend().placeholders(2, chunk.len())
        );
        on_conn!(tx, conn => {
            let mut query = sqlx::query(&sql).bind(company.id);
            for key in chunk {
                query = query.bind(*key);
            }
            for row in query.fetch_all(&mut *conn).await? {
                lookups
                    .keyed
                    .insert(row.text("idempotency_key")?, (row.int("id")?, row.opt_text("request_fingerprint")?));
            }
        });
    }
    Ok(lookups)
}

/// How one draft of a job will be satisfied.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// Written now, as the n-th new entry of the group.
    New(usize),
    /// Already in the database under its idempotency key.
    Existing(i64),
}

/// Checks a job against the database state; on success says how each draft is satisfied.
fn plan_job<'a>(
    job: &Job<'a>,
    base: &crate::currency::Currency,
    lookups: &Lookups,
    claimed_keys: &mut HashMap<String, (Option<String>, usize)>,
    new_drafts: &mut Vec<&'a EntryDraft>,
    new_origins: &mut Vec<&'a Origin>,
) -> Result<Vec<Plan>> {
    let mut errors = Vec::new();
    let mut conflicts = Vec::new();
    let mut plans = Vec::with_capacity(job.entries.len());
    let mut keys_in_job = HashSet::new();
    let mut job_claims = Vec::new();
    for (index, draft) in job.entries.iter().enumerate() {
        if let Some(key) = &draft.idempotency_key {
            if !keys_in_job.insert(key.as_str()) {
                errors.push(FieldError::new(
                    job.path(index, "idempotency_key"),
                    "is used by another entry of this batch",
                ));
                continue;
            }
            let earlier = lookups
                .keyed
                .get(key)
                .map(|(id, fingerprint)| (fingerprint.clone(), Plan::Existing(*id)))
                .or_else(|| {
                    claimed_keys
                        .get(key)
                        .map(|(fingerprint, n)| (fingerprint.clone(), Plan::New(*n)))
                });
            if let Some((fingerprint, plan)) = earlier {
                if fingerprint == draft.fingerprint {
                    plans.push(plan);
                } else {
                    conflicts.push(format!(
                        "{}: the idempotency key {key:?} was already used for a different entry",
                        job.path(index, "idempotency_key")
                    ));
                }
                continue;
            }
        }
        check_draft(draft, base, lookups, &mut |field, message| {
            errors.push(FieldError::new(job.path(index, field), message))
        });
        plans.push(Plan::New(usize::MAX));
    }
    if !errors.is_empty() {
        return Err(Error::Invalid(errors));
    }
    if !conflicts.is_empty() {
        return Err(Error::Conflict(conflicts.join("; ")));
    }
    // Only now, with the whole job valid, do its new entries join the group.
    for (draft, plan) in job.entries.iter().zip(plans.iter_mut()) {
        if let Plan::New(slot) = plan
            && *slot == usize::MAX
        {
            *slot = new_drafts.len();
            new_drafts.push(draft);
            new_origins.push(job.origin);
            if let Some(key) = &draft.idempotency_key {
                job_claims.push((key.clone(), (draft.fingerprint.clone(), *slot)));
            }
        }
    }
    claimed_keys.extend(job_claims);
    Ok(plans)
}

fn check_draft(
    draft: &EntryDraft,
    base: &crate::currency::Currency,
    lookups: &Lookups,
    report: &mut impl FnMut(&str, String),
) {
    // Drafts from the API were balanced when parsed; checking again here covers every other
    // path (reversals, closing entries, plugins) at the one place all postings pass.
    if let Err(imbalance) = super::model::check_balance(&draft.lines, base) {
        report("lines", imbalance);
    }
    let closing = draft.kind == EntryKind::Closing;
    match lookups.period_of(draft.date) {
        None => report(
            "date",
            format!(
                "no fiscal period covers {}; open its fiscal year first (POST /api/v1/ledger/fiscal-years)",
                draft.date
            ),
        ),
        Some(period) if period.closed && !closing => report(
            "date",
            format!(
                "period {} is closed; post into an open period or reopen {}",
                period.name, period.name
            ),
        ),
        Some(_) => {}
    }
    for (index, line) in draft.lines.iter().enumerate() {
        let field = |name: &str| format!("lines[{index}].{name}");
        match lookups.accounts.get(line.account.as_str()) {
            None => report(
                &field("account"),
                format!(
                    "there is no account {} in the chart of accounts",
                    line.account
                ),
            ),
            // A closing entry empties income and expense accounts, inactive ones included.
            Some(account) if !account.active && !closing => report(
                &field("account"),
                format!("account {} is inactive", line.account),
            ),
            Some(AccountRow {
                currency: Some(only),
                ..
            }) if only != line.currency.code => report(
                &field("currency"),
                format!(
                    "account {} takes only {only}, not {}",
                    line.account, line.currency.code
                ),
            ),
            Some(_) => {}
        }
        if let Some(party) = line.party {
            match lookups.parties.get(&party) {
                None => report(&field("party"), format!("there is no party {party}")),
                Some(Some(survivor)) => report(
                    &field("party"),
                    format!(
                        "party {party} was merged into party {survivor}; post against {survivor}"
                    ),
                ),
                Some(None) => {}
            }
        }
    }
}

/// The running-balance change of one account, currency and day.
#[derive(Debug, Default, Clone, Copy)]
struct Sums {
    debit: i64,
    credit: i64,
    base_debit: i64,
    base_credit: i64,
}

impl Sums {
    /// The four balance columns, in the order the balance tables list them.
    fn values(&self) -> [Value<'static>; 4] {
        [self.debit, self.credit, self.base_debit, self.base_credit].map(|v| Value::Int(Some(v)))
    }

    fn add(&mut self, amount: i64, base: i64) -> Option<()> {
        if amount >= 0 {
            self.debit = self.debit.checked_add(amount)?;
        } else {
            self.credit = self.credit.checked_add(amount.checked_neg()?)?;
        }
        if base >= 0 {
            self.base_debit = self.base_debit.checked_add(base)?;
        } else {
            self.base_credit = self.base_credit.checked_add(base.checked_neg()?)?;
        }
        Some(())
    }
}

/// Posts the jobs in `tx`, all of one company. Each job succeeds or fails on its own; the outer
/// error means the transaction is unusable and must be rolled back.
pub async fn post_jobs(
    tx: &mut Tx,
    company: &Company,
    jobs: &[Job<'_>],
    posted_at: DateTime<Utc>,
) -> anyhow::Result<Vec<Result<Vec<Posted>>>> {
    let (results, unwritten) = post(tx, company, jobs, posted_at, Audit::Append).await?;
    audit::append_many(tx, &unwritten).await?;
    Ok(results)
}

/// Like [`post_jobs`], leaving the audit records of the posted entries to the caller, who
/// appends them in the same transaction (a plugin call appends all of its records at its end).
pub async fn post_jobs_audit_later<'a>(
    tx: &mut Tx,
    company: &Company,
    jobs: &[Job<'a>],
    posted_at: DateTime<Utc>,
) -> anyhow::Result<(Vec<Result<Vec<Posted>>>, Vec<(&'a Origin, Event)>)> {
    post(tx, company, jobs, posted_at, Audit::Return).await
}

/// What becomes of the audit records of the entries [`post`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audit {
    /// Appended by [`post`] when it writes them with the rows (a large write); else returned.
    Append,
    /// Returned to the caller.
    Return,
}

/// Posts the jobs; returns, with the results, the audit events it did not append.
async fn post<'a>(
    tx: &mut Tx,
    company: &Company,
    jobs: &[Job<'a>],
    posted_at: DateTime<Utc>,
    audit: Audit,
) -> anyhow::Result<(Vec<Result<Vec<Posted>>>, Vec<(&'a Origin, Event)>)> {
    let lookups = load_lookups(tx, company, jobs).await?;
    let mut claimed_keys = HashMap::new();
    let mut new_drafts: Vec<&EntryDraft> = Vec::new();
    let mut new_origins: Vec<&Origin> = Vec::new();
    let plans: Vec<Result<Vec<Plan>>> = jobs
        .iter()
        .map(|job| {
            plan_job(
                job,
                company.base_currency,
                &lookups,
                &mut claimed_keys,
                &mut new_drafts,
                &mut new_origins,
            )
        })
        .collect();

    let ids = allocate_entry_ids(tx, new_drafts.len()).await?;
    let posters: Vec<Option<i64>> = new_origins
        .iter()
        .map(|origin| origin.actor.user_id)
        .collect();
    let new = NewEntries {
        company,
        lookups: &lookups,
        drafts: &new_drafts,
        origins: &new_origins,
        ids: &ids,
        posters: &posters,
        posted_at,
    };
    let events = match write_entries(tx, &new, audit).await? {
        Ok(events) => events,
        Err(message) => {
            // Only sums beyond i64 get here: refuse every job rather than store a wrong balance.
            let refused = jobs
                .iter()
                .map(|_| Err(Error::invalid("lines", message.clone())))
                .collect();
            return Ok((refused, Vec::new()));
        }
    };
    publish_posted(tx, company, &new_drafts, &ids).await?;

    // Whole views only for single-entry jobs: a batch answers with ids, and building views for
    // thousands of entries costs as much as a fifth of posting them.
    let existing_ids: Vec<i64> = jobs
        .iter()
        .zip(&plans)
        .filter(|(job, _)| !job.batch)
        .filter_map(|(_, plans)| plans.as_ref().ok())
        .flatten()
        .filter_map(|plan| match plan {
            Plan::Existing(id) => Some(*id),
            Plan::New(_) => None,
        })
        .collect();
    let mut existing: HashMap<i64, EntryView> = if existing_ids.is_empty() {
        HashMap::new()
    } else {
        entries::load(tx, company, &existing_ids)
            .await
            .map_err(|e| anyhow::anyhow!("loading replayed entries: {e}"))?
            .into_iter()
            .map(|stored| (stored.id, stored.view(company)))
            .collect()
    };
    let results = jobs
        .iter()
        .zip(plans)
        .map(|(job, plans)| {
            plans.map(|plans| {
                job.entries
                    .iter()
                    .zip(plans)
                    .map(|(draft, plan)| {
                        let (id, replayed) = match plan {
                            Plan::New(n) => (ids[n], false),
                            Plan::Existing(id) => (id, true),
                        };
                        let view = (!job.batch).then(|| match plan {
                            Plan::New(n) => EntryView::from_draft(
                                id,
                                new_drafts[n],
                                posted_at,
                                posters[n],
                                company,
                            ),
                            Plan::Existing(id) => existing
                                .remove(&id)
                                .expect("replayed entries were loaded above"),
                        });
                        Posted {
                            id,
                            idempotency_key: draft.idempotency_key.clone(),
                            replayed,
                            view,
                        }
                    })
                    .collect()
            })
        })
        .collect();
    Ok((results, events))
}

/// Publishes `ledger.entry.posted` for each new entry, when a plugin listens (one check for
/// the whole group, so posting costs nothing extra when nobody does).
async fn publish_posted(
    tx: &mut Tx,
    company: &Company,
    drafts: &[&EntryDraft],
    ids: &[i64],
) -> anyhow::Result<()> {
    use crate::events::{self, topics};
    if drafts.is_empty() || !events::subscribed(tx, company.id, topics::ENTRY_POSTED).await? {
        return Ok(());
    }
    for (draft, id) in drafts.iter().zip(ids) {
        let payload = serde_json::json!({
            "id": id,
            "date": draft.date,
            "memo": draft.memo,
            "source": draft.source.as_ref().map(|s| serde_json::json!({ "module": s.module, "document": s.document })),
            "reverses": draft.reverses,
        });
        events::publish(
            tx,
            company.id,
            topics::ENTRY_POSTED,
            &format!("entry/{id}"),
            &payload,
            None,
        )
        .await
        .map_err(|e| anyhow::anyhow!("publishing an entry's event: {e}"))?;
    }
    Ok(())
}

async fn allocate_entry_ids(tx: &mut Tx, count: usize) -> anyhow::Result<Vec<i64>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let count_i64 = i64::try_from(count)?;
    Ok(match tx {
        // The write lock taken by BEGIN IMMEDIATE makes MAX(id)+1 safe on SQLite.
        Tx::Sqlite(conn) => {
            let max: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) AS max_id FROM ledger_entries")
                .fetch_one(&mut **conn)
                .await?
                .int("max_id")?;
            (max + 1..=max + count_i64).collect()
        }
        Tx::Postgres(conn) => {
            sqlx::query("SELECT nextval('ledger_entry_ids') AS id FROM generate_series(1, $1)")
                .bind(count_i64)
                .fetch_all(&mut **conn)
                .await?
                .iter()
                .map(|row| row.int("id"))
                .collect::<anyhow::Result<_>>()?
        }
    })
}

/// Keys of the running balances: sorted, so that concurrent writers on PostgreSQL lock balance
/// rows in the same order.
type PeriodBalances<'a> = BTreeMap<(NaiveDate, i64, &'a str, bool), Sums>;
type TotalBalances<'a> = BTreeMap<(i64, &'a str), (Sums, NaiveDate)>;

/// Whether the absolute amounts of `lines`, added together, fit a balance column (in the
/// line currency and in base currency): then no balance change of theirs can overflow.
fn amounts_fit_any_balance(lines: &[(i64, usize, &EntryDraft, &super::model::LineDraft)]) -> bool {
    let (mut amounts, mut base_amounts) = (0_u128, 0_u128);
    for (_, _, _, line) in lines {
        amounts += u128::from(line.amount_minor.unsigned_abs());
        base_amounts += u128::from(line.base_amount_minor.unsigned_abs());
    }
    let limit = u128::from(i64::MAX.unsigned_abs());
    amounts <= limit && base_amounts <= limit
}

/// The balance changes of `lines`: per period (as [`BalancePeriod::ALL`] lists them) and in
/// total, per account and currency. Fails when a sum does not fit the balance columns.
fn balance_changes<'a>(
    lookups: &Lookups,
    lines: &[(i64, usize, &EntryDraft, &'a super::model::LineDraft)],
) -> Result<
    (
        [PeriodBalances<'a>; BalancePeriod::ALL.len()],
        TotalBalances<'a>,
    ),
    String,
> {
    let mut periods: [PeriodBalances; BalancePeriod::ALL.len()] = Default::default();
    let mut totals = TotalBalances::new();
    for (_, _, draft, line) in lines {
        let account_id = lookups.accounts[line.account.as_str()].id;
        let closing = draft.kind == EntryKind::Closing;
        let code = line.currency.code;
        let added = BalancePeriod::ALL
            .iter()
            .zip(&mut periods)
            .try_for_each(|(period, balances)| {
                balances
                    .entry((period.start(draft.date), account_id, code, closing))
                    .or_default()
                    .add(line.amount_minor, line.base_amount_minor)
            })
            .and_then(|()| {
                let (sums, last_day) = totals
                    .entry((account_id, code))
                    .or_insert((Sums::default(), draft.date));
                *last_day = (*last_day).max(draft.date);
                sums.add(line.amount_minor, line.base_amount_minor)
            });
        if added.is_none() {
            return Err(
                "the amounts of this request add up to more than a balance can hold".into(),
            );
        }
    }
    Ok((periods, totals))
}

/// Adds the balance changes of `rows` to the table of `period`.
fn period_upserts<'a>(
    period: BalancePeriod,
    company: &Company,
    rows: &PeriodBalances<'a>,
) -> Write<'a> {
    let (table, period_column) = period.table();
    let mut values = Vec::with_capacity(rows.len() * 9);
    for ((date, account_id, currency, closing), sums) in rows {
        values.extend([
            Value::Int(Some(company.id)),
            Value::Date(*date),
            Value::Int(Some(*account_id)),
            Value::Text(Some(currency)),
            Value::Bool(*closing),
        ]);
        values.extend(sums.values());
    }
    Write::Rows {
        insert: format!(
            "INSERT INTO {table} AS b (company_id, {period_column}, account_id, currency, closing, debit_minor, \
             credit_minor, base_debit_minor, base_credit_minor)"
        ),
        columns: 9,
        tail: format!(
            "ON CONFLICT (company_id, {period_column}, account_id, currency, closing) DO UPDATE SET \
             debit_minor = b.debit_minor + excluded.debit_minor, \
             credit_minor = b.credit_minor + excluded.credit_minor, \
             base_debit_minor = b.base_debit_minor + excluded.base_debit_minor, \
             base_credit_minor = b.base_credit_minor + excluded.base_credit_minor"
        ),
        values,
    }
}

/// The entries a group writes, with what writing them needs.
struct NewEntries<'g, 'a> {
    company: &'g Company,
    lookups: &'g Lookups,
    drafts: &'g [&'a EntryDraft],
    origins: &'g [&'a Origin],
    ids: &'g [i64],
    posters: &'g [Option<i64>],
    posted_at: DateTime<Utc>,
}

/// Inserts the entries, their lines and the balance changes, and with a large write (a batch
/// import) the entries' audit records; returns the audit events left for the caller. The rows
/// of each table are built while those of the one before are written. The inner error reports
/// sums that do not fit the balance columns; then nothing is written.
async fn write_entries<'a>(
    tx: &mut Tx,
    new: &NewEntries<'_, 'a>,
    audit: Audit,
) -> anyhow::Result<Result<Vec<(&'a Origin, Event)>, String>> {
    if new.drafts.is_empty() {
        return Ok(Ok(Vec::new()));
    }
    let rows = new.drafts.len() + new.drafts.iter().map(|d| d.lines.len()).sum::<usize>();
    // A large write chains the audit records with the rows, on the producing thread, after the
    // head read here (exact: the transaction holds SQLite's write lock). A small one leaves
    // them to `audit::append_many`, which starts from the head the process already knows.
    let audit_head = if audit == Audit::Append && rows::is_produced_alongside(tx, rows) {
        Some(audit::read_head(tx).await?)
    } else {
        None
    };
    let produced = rows::write_produced(tx, rows, |write| {
        produce_entry_writes(new, audit_head.as_ref(), write)
    })
    .await?;
    Ok(produced.map(|(events, appended)| {
        if let Some(head) = appended {
            audit::appended(tx, head, new.drafts.len());
        }
        events
    }))
}

/// The writes of [`write_entries`], handed to `write` one table at a time: entries, lines,
/// daily, monthly and total balances, then (after `audit_head`, when given) the audit records.
/// Returns the audit events not written, and the chain's new head when they were.
#[allow(
    clippy::type_complexity,
    reason = "the outcome of a producer, destructured right away"
)]
fn produce_entry_writes<'a>(
    new: &NewEntries<'_, 'a>,
    audit_head: Option<&audit::ChainHead>,
    write: &mut dyn FnMut(Write<'a>),
) -> Result<(Vec<(&'a Origin, Event)>, Option<audit::ChainHead>), String> {
    let NewEntries {
        company,
        lookups,
        drafts,
        origins,
        ids,
        posters,
        posted_at,
    } = *new;
    let lines: Vec<(i64, usize, &'a EntryDraft, &'a super::model::LineDraft)> = drafts
        .iter()
        .zip(ids)
        .flat_map(|(draft, id)| {
            draft
                .lines
                .iter()
                .enumerate()
                .map(move |(n, line)| (*id, n + 1, *draft, line))
        })
        .collect();
    // A balance overflow must be found before anything is handed over, so that nothing is
    // written when it is. When all the amounts together fit a balance column no sum can
    // overflow, and the rows go out while the balances are added up; otherwise the sums are
    // checked first.
    let changes = if amounts_fit_any_balance(&lines) {
        None
    } else {
        Some(balance_changes(lookups, &lines)?)
    };

    let mut entry_values = Vec::with_capacity(drafts.len() * 12);
    for ((draft, id), poster) in drafts.iter().zip(ids).zip(posters) {
        entry_values.extend([
            Value::Int(Some(*id)),
            Value::Int(Some(company.id)),
            Value::Date(draft.date),
            Value::Text(Some(&draft.memo)),
            Value::Text(Some(draft.kind.as_str())),
            Value::Text(draft.source.as_ref().map(|s| s.module.as_str())),
            Value::Text(draft.source.as_ref().map(|s| s.document.as_str())),
            Value::Int(draft.reverses),
            Value::Text(draft.idempotency_key.as_deref()),
            Value::Text(draft.fingerprint.as_deref()),
            Value::Time(posted_at),
            Value::Int(*poster),
        ]);
    }
    write(Write::insert(
        "INSERT INTO ledger_entries (id, company_id, entry_date, memo, kind, source_module, \
         source_document, reverses_entry_id, idempotency_key, request_fingerprint, posted_at, posted_by)",
        12,
        entry_values,
    ));

    let mut line_values = Vec::with_capacity(lines.len() * 12);
    for (entry_id, line_no, draft, line) in &lines {
        line_values.extend([
            Value::Int(Some(*entry_id)),
            Value::Int(Some(i64::try_from(*line_no).unwrap_or(i64::MAX))),
            Value::Int(Some(company.id)),
            Value::Int(Some(lookups.accounts[line.account.as_str()].id)),
            Value::Date(draft.date),
            Value::Text(Some(line.currency.code)),
            Value::Int(Some(line.amount_minor)),
            Value::OwnedText(line.rate.map(|r| r.to_string())),
            Value::Int(Some(line.base_amount_minor)),
            Value::Int(line.party),
            Value::Text(line.memo.as_deref()),
            // Dimensions are plain strings: they always serialize.
            Value::Json(
                (!line.dimensions.is_empty())
                    .then(|| serde_json::to_value(&line.dimensions).unwrap_or_default()),
            ),
        ]);
    }
    write(Write::insert(
        "INSERT INTO ledger_lines (entry_id, line_no, company_id, account_id, entry_date, currency, \
         amount_minor, rate, base_amount_minor, party_id, memo, dimensions)",
        12,
        line_values,
    ));

    let (periods, totals) = match changes {
        Some(changes) => changes,
        None => balance_changes(lookups, &lines)
            .expect("no sum exceeds the total of the amounts, which fits a balance column"),
    };
    for (period, rows) in BalancePeriod::ALL.into_iter().zip(&periods) {
        write(period_upserts(period, company, rows));
    }
    let mut total_values = Vec::with_capacity(totals.len() * 8);
    for ((account_id, currency), (sums, last_day)) in &totals {
        total_values.extend([
            Value::Int(Some(company.id)),
            Value::Int(Some(*account_id)),
            Value::Text(Some(currency)),
            Value::Date(*last_day),
        ]);
        total_values.extend(sums.values());
    }
    write(Write::Rows {
        insert: "INSERT INTO ledger_balances AS b (company_id, account_id, currency, last_day, debit_minor, \
                 credit_minor, base_debit_minor, base_credit_minor)"
            .to_owned(),
        columns: 8,
        tail: "ON CONFLICT (company_id, account_id, currency) DO UPDATE SET \
               last_day = CASE WHEN excluded.last_day > b.last_day THEN excluded.last_day ELSE b.last_day END, \
               debit_minor = b.debit_minor + excluded.debit_minor, \
               credit_minor = b.credit_minor + excluded.credit_minor, \
               base_debit_minor = b.base_debit_minor + excluded.base_debit_minor, \
               base_credit_minor = b.base_credit_minor + excluded.base_credit_minor"
            .to_owned(),
        values: total_values,
    });

    let events: Vec<(&'a Origin, Event)> = drafts
        .iter()
        .zip(ids)
        .zip(origins)
        .map(|((draft, id), origin)| (*origin, audit_event(company, *id, draft)))
        .collect();
    Ok(match audit_head {
        Some(head) => {
            let (writes, head) = audit::append_writes(head, &events);
            writes.into_iter().for_each(&mut *write);
            (Vec::new(), Some(head))
        }
        None => (events, None),
    })
}

/// The audit record of a posted entry: what was posted, in compact form (lines as
/// `[account, currency, amount, base amount]` in minor units, debit positive).
pub fn audit_event(company: &Company, id: i64, draft: &EntryDraft) -> Event {
    #[derive(serde::Serialize)]
    struct Change<'a> {
        after: Summary<'a>,
    }
    #[derive(serde::Serialize)]
    struct Summary<'a> {
        date: chrono::NaiveDate,
        memo: &'a str,
        kind: EntryKind,
        source: Option<&'a super::model::SourceRef>,
        reverses: Option<i64>,
        lines: Vec<(&'a str, &'a str, i64, i64)>,
    }
    let change = Change {
        after: Summary {
            date: draft.date,
            memo: &draft.memo,
            kind: draft.kind,
            source: draft.source.as_ref(),
            reverses: draft.reverses,
            lines: draft
                .lines
                .iter()
                .map(|line| {
                    (
                        line.account.as_str(),
                        line.currency.code,
                        line.amount_minor,
                        line.base_amount_minor,
                    )
                })
                .collect(),
        },
    };
    Event::new(
        Some(company.id),
        "ledger.entries:post",
        "ledger.entry",
        id,
        change,
    )
}

/// The HTTP response a posting request gets, which is also what its idempotency key replays.
/// A single entry comes back whole; a batch, which may hold thousands, as the id of each entry
/// (and its key), in order.
pub fn render(posted: &[Posted], batch: bool) -> StoredResponse {
    let all_replayed = posted.iter().all(|p| p.replayed);
    let status = if all_replayed { 200 } else { 201 };
    let body = if batch {
        let entries: Vec<serde_json::Value> = posted
            .iter()
            .map(|p| match &p.idempotency_key {
                Some(key) => json!({ "id": p.id, "idempotency_key": key, "replayed": p.replayed }),
                None => json!({ "id": p.id, "replayed": p.replayed }),
            })
            .collect();
        json!({ "entries": entries })
    } else {
        let view = posted[0]
            .view
            .as_ref()
            .expect("a single-entry job carries its view");
        serde_json::to_value(view).unwrap_or_default()
    };
    StoredResponse::new(status, body)
}

/// A request to post: the entries, whether it is a batch, and its Idempotency-Key if any.
#[derive(Debug)]
pub struct PostRequest {
    pub company: Company,
    pub origin: Origin,
    pub entries: Vec<EntryDraft>,
    pub batch: bool,
    pub key: Option<RequestKey>,
}

struct Queued {
    request: PostRequest,
    respond: oneshot::Sender<Result<StoredResponse>>,
}

/// Posts requests through one task that gathers whatever is queued into a single transaction:
/// with 32 clients waiting, one fsync acknowledges all of them (group commit). Each request still
/// succeeds or fails on its own.
#[derive(Debug, Clone)]
pub struct Writer {
    queue: mpsc::Sender<Queued>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the writer task; it stops when the last handle is dropped, after draining the queue.
    pub fn start(db: Database) -> Self {
        let (queue, receiver) = mpsc::channel(WRITER_QUEUE_DEPTH);
        tokio::spawn(run_writer(db, receiver));
        Self { queue }
    }

    pub async fn post(&self, request: PostRequest) -> Result<StoredResponse> {
        let (respond, response) = oneshot::channel();
        self.queue
            .send(Queued { request, respond })
            .await
            .map_err(|_| anyhow::anyhow!("the ledger writer has stopped"))?;
        response
            .await
            .map_err(|_| anyhow::anyhow!("the ledger writer dropped a request"))?
    }
}

async fn run_writer(db: Database, mut receiver: mpsc::Receiver<Queued>) {
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(queued) => queued,
            None => match receiver.recv().await {
                Some(queued) => queued,
                None => return,
            },
        };
        let mut entries = first.request.entries.len();
        let mut group = vec![first];
        let mut request_keys: HashSet<(i64, String)> = HashSet::new();
        let key_of = |q: &Queued| {
            q.request
                .key
                .as_ref()
                .map(|k| (q.request.company.id, format!("{}\0{}", k.principal, k.key)))
        };
        if let Some(key) = key_of(&group[0]) {
            request_keys.insert(key);
        }
        while entries < ENTRIES_PER_COMMIT_MAX {
            let Ok(next) = receiver.try_recv() else { break };
            // The same Idempotency-Key twice in one group: the second waits for the next group,
            // where it finds the first one's stored response.
            if let Some(key) = key_of(&next)
                && !request_keys.insert(key)
            {
                carried = Some(next);
                break;
            }
            entries += next.request.entries.len();
            group.push(next);
        }
        metrics::histogram!("keel_ledger_commit_group_requests").record(group.len() as f64);
        // The writer's time on the group up to its commit; the flush to the disk is waited for
        // on another task while the writer takes the next group.
        let started = std::time::Instant::now();
        commit_group(&db, group).await;
        metrics::histogram!("keel_ledger_commit_group_seconds")
            .record(started.elapsed().as_secs_f64());
    }
}

async fn commit_group(db: &Database, group: Vec<Queued>) {
    let requests: Vec<&PostRequest> = group.iter().map(|q| &q.request).collect();
    match post_requests_before_flush(db, &requests).await {
        Ok((results, on_disk)) => {
            // The answers wait for the disk; the writer goes on to the next group meanwhile.
            tokio::spawn(async move {
                let flushed = on_disk.wait().await.map_err(|error| format!("{error:#}"));
                for (queued, result) in group.into_iter().zip(results) {
                    let result = match &flushed {
                        Ok(()) => result,
                        Err(error) => Err(Error::Unexpected(anyhow::anyhow!("{error}"))),
                    };
                    let _ = queued.respond.send(result);
                }
            });
        }
        Err(error) if group.len() > 1 => {
            // Something failed at the database level (another process took a key first, say):
            // retry each request alone so one cannot fail the others.
            tracing::warn!(error = %error, requests = group.len(), "group commit failed; posting one by one");
            for queued in group {
                let result = post_requests(db, &[&queued.request])
                    .await
                    .map_err(Error::Unexpected)
                    .and_then(|mut results| results.pop().expect("one result per request"));
                let _ = queued.respond.send(result);
            }
        }
        Err(error) => {
            for queued in group {
                let _ = queued
                    .respond
                    .send(Err(Error::Unexpected(anyhow::anyhow!("{error:#}"))));
            }
        }
    }
}

/// Posts several requests in one transaction and commits it; one result per request.
pub async fn post_requests(
    db: &Database,
    requests: &[&PostRequest],
) -> anyhow::Result<Vec<Result<StoredResponse>>> {
    let (results, on_disk) = post_requests_before_flush(db, requests).await?;
    on_disk.wait().await?;
    Ok(results)
}

/// [`post_requests`], returning before the commit is on the disk: the results must wait for
/// the returned [`OnDisk`] before anyone sees them.
async fn post_requests_before_flush(
    db: &Database,
    requests: &[&PostRequest],
) -> anyhow::Result<(Vec<Result<StoredResponse>>, OnDisk)> {
    let mut tx = db.begin_write().await?;
    let posted_at = now_micros();
    let mut results: Vec<Option<Result<StoredResponse>>> =
        (0..requests.len()).map(|_| None).collect();
    let mut by_company: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (index, request) in requests.iter().enumerate() {
        by_company
            .entry(request.company.id)
            .or_default()
            .push(index);
    }
    for indexes in by_company.values() {
        let company = &requests[indexes[0]].company;
        // Replays of stored responses are settled first, in one query; the rest post together.
        let keys: Vec<&RequestKey> = indexes
            .iter()
            .filter_map(|&i| requests[i].key.as_ref())
            .collect();
        let mut stored = match idempotency::find_many(&mut tx, company, &keys).await {
            Ok(stored) => stored,
            Err(Error::Unexpected(error)) => return Err(error),
            Err(error) => return Err(anyhow::anyhow!("{error}")),
        };
        let mut to_post = Vec::with_capacity(indexes.len());
        for &index in indexes {
            let earlier = requests[index]
                .key
                .as_ref()
                .and_then(|key| stored.remove(&(key.principal.clone(), key.key.clone())));
            match earlier {
                Some(outcome) => results[index] = Some(outcome),
                None => to_post.push(index),
            }
        }
        let jobs: Vec<Job> = to_post
            .iter()
            .map(|&i| Job {
                entries: &requests[i].entries,
                batch: requests[i].batch,
                origin: &requests[i].origin,
            })
            .collect();
        let outcomes = post_jobs(&mut tx, company, &jobs, posted_at).await?;
        let mut responses = Vec::new();
        for (&index, outcome) in to_post.iter().zip(outcomes) {
            let outcome = outcome.map(|posted| render(&posted, requests[index].batch));
            if let (Some(key), Ok(response)) = (&requests[index].key, &outcome) {
                responses.push((key, response.clone()));
            }
            results[index] = Some(outcome);
        }
        let responses: Vec<(&RequestKey, &StoredResponse)> =
            responses.iter().map(|(k, r)| (*k, r)).collect();
        match idempotency::store_many(&mut tx, company, &responses).await {
            Ok(()) => {}
            Err(Error::Unexpected(error)) => return Err(error),
            Err(error) => return Err(anyhow::anyhow!("{error}")),
        }
    }
    let on_disk = tx.commit_before_flush().await?;
    let posted: usize = requests.iter().map(|r| r.entries.len()).sum();
    metrics::counter!("keel_ledger_entries_submitted_total").increment(posted as u64);
    let results = results
        .into_iter()
        .map(|r| r.expect("every request got a result"))
        .collect();
    Ok((results, on_disk))
}

/// Now, to the microsecond: what both backends store, so a re-read entry equals the first response.
pub fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}
