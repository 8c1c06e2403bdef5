//! Reading posted entries back: the views the API returns and the queries behind them.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::model::{AccountCode, EntryDraft, EntryKind, LineDraft, SourceRef, format_minor};
use crate::company::Company;
use crate::currency;
use crate::db::{Row, Tx};
use crate::error::{Error, Result};
use crate::on_conn;

/// A posted journal entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EntryView {
    pub id: i64,
    #[schema(value_type = String, example = "2026-03-31")]
    pub date: NaiveDate,
    pub memo: String,
    pub kind: EntryKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceRef>,
    /// The entry this one reverses.
    pub reverses: Option<i64>,
    /// The entry that reverses this one, once there is one.
    pub reversed_by: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub posted_at: DateTime<Utc>,
    /// The user who posted the entry (absent for entries the host posted itself).
    pub posted_by: Option<i64>,
    pub lines: Vec<LineView>,
}

/// One line of a posted entry. `base_debit`/`base_credit` are in the company's base currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LineView {
    pub line: u32,
    pub account: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit: Option<String>,
    pub currency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_debit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_credit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub party: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memo: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub dimensions: BTreeMap<String, String>,
}

/// Splits a signed amount into its debit or credit side, formatted in `places` decimals.
pub fn sides(minor: i64, places: u32) -> (Option<String>, Option<String>) {
    match minor {
        m if m > 0 => (Some(format_minor(m, places)), None),
        m if m < 0 => (None, Some(format_minor(-m, places))),
        _ => (Some(format_minor(0, places)), None),
    }
}

impl LineView {
    pub fn from_draft(number: u32, line: &LineDraft, base: &currency::Currency) -> Self {
        let (debit, credit) = sides(line.amount_minor, line.currency.minor_units);
        let (base_debit, base_credit) = sides(line.base_amount_minor, base.minor_units);
        Self {
            line: number,
            account: line.account.to_string(),
            debit,
            credit,
            currency: line.currency.code.to_owned(),
            rate: line.rate.map(|r| r.to_string()),
            base_debit,
            base_credit,
            party: line.party,
            memo: line.memo.clone(),
            dimensions: line.dimensions.clone(),
        }
    }
}

impl EntryView {
    pub fn from_draft(
        id: i64,
        draft: &EntryDraft,
        posted_at: DateTime<Utc>,
        posted_by: Option<i64>,
        company: &Company,
    ) -> Self {
        Self {
            id,
            date: draft.date,
            memo: draft.memo.clone(),
            kind: draft.kind,
            source: draft.source.clone(),
            reverses: draft.reverses,
            reversed_by: None,
            idempotency_key: draft.idempotency_key.clone(),
            posted_at,
            posted_by,
            lines: draft
                .lines
                .iter()
                .enumerate()
                .map(|(i, line)| {
                    LineView::from_draft(
                        u32::try_from(i + 1).unwrap_or(u32::MAX),
                        line,
                        company.base_currency,
                    )
                })
                .collect(),
        }
    }
}

/// A stored entry: its draft (enough to reverse it) and its stored facts.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    pub id: i64,
    pub draft: EntryDraft,
    pub reversed_by: Option<i64>,
    pub posted_at: DateTime<Utc>,
    pub posted_by: Option<i64>,
}

impl StoredEntry {
    pub fn view(&self, company: &Company) -> EntryView {
        EntryView {
            reversed_by: self.reversed_by,
            ..EntryView::from_draft(
                self.id,
                &self.draft,
                self.posted_at,
                self.posted_by,
                company,
            )
        }
    }
}

/// Largest number of ids in one `IN (…)` list.
const IDS_PER_QUERY_MAX: usize = 500;

/// Loads entries by id, in the order given; ids that do not exist are left out.
pub async fn load(tx: &mut Tx, company: &Company, ids: &[i64]) -> Result<Vec<StoredEntry>> {
    let mut by_id: HashMap<i64, StoredEntry> = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_QUERY_MAX) {
        let list = tx.backend().placeholders(2, chunk.len());
        let entry_sql = format!(
            "SELECT e.id, e.entry_date, e.memo, e.kind, e.source_module, e.source_document, \
                    e.reverses_entry_id, e.idempotency_key, e.request_fingerprint, e.posted_at, e.posted_by, \
                    r.id AS reversed_by \
             FROM ledger_entries e LEFT JOIN ledger_entries r ON r.reverses_entry_id = e.id \
             WHERE e.company_id = $1 AND e.id IN {list}"
        );
        let line_sql = format!(
            "SELECT l.entry_id, l.line_no, a.code, l.currency, l.amount_minor, l.rate, \
                    l.base_amount_minor, l.party_id, l.memo, l.dimensions \
             FROM ledger_lines l JOIN ledger_accounts a ON a.id = l.account_id \
             WHERE l.company_id = $1 AND l.entry_id IN {list} ORDER BY l.entry_id, l.line_no"
        );
        on_conn!(tx, conn => {
            let mut query = sqlx::query(&entry_sql).bind(company.id);
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&mut *conn).await? {
                let entry = entry_from_row(&row)?;
                by_id.insert(entry.id, entry);
            }
            let mut query = sqlx::query(&line_sql).bind(company.id);
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&mut *conn).await? {
                let entry_id = row.int("entry_id")?;
                let line = line_from_row(&row)?;
                if let Some(entry) = by_id.get_mut(&entry_id) {
                    entry.draft.lines.push(line);
                }
            }
        });
    }
    Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
}

/// Loads one entry or fails with 404.
pub async fn load_one(tx: &mut Tx, company: &Company, id: i64) -> Result<StoredEntry> {
    load(tx, company, &[id])
        .await?
        .pop()
        .ok_or_else(|| Error::NotFound(format!("no journal entry {id}")))
}

fn entry_from_row(row: &impl Row) -> anyhow::Result<StoredEntry> {
    let kind_text = row.text("kind")?;
    let kind = EntryKind::parse(&kind_text)
        .ok_or_else(|| anyhow::anyhow!("unknown entry kind {kind_text:?} in the database"))?;
    let source = match (
        row.opt_text("source_module")?,
        row.opt_text("source_document")?,
    ) {
        (Some(module), Some(document)) => Some(SourceRef { module, document }),
        _ => None,
    };
    Ok(StoredEntry {
        id: row.int("id")?,
        draft: EntryDraft {
            date: row.date("entry_date")?,
            memo: row.text("memo")?,
            kind,
            source,
            reverses: row.opt_int("reverses_entry_id")?,
            lines: Vec::new(),
            idempotency_key: row.opt_text("idempotency_key")?,
            fingerprint: row.opt_text("request_fingerprint")?,
        },
        reversed_by: row.opt_int("reversed_by")?,
        posted_at: row.timestamp("posted_at")?,
        posted_by: row.opt_int("posted_by")?,
    })
}

fn line_from_row(row: &impl Row) -> anyhow::Result<LineDraft> {
    let code = row.text("currency")?;
    let currency = currency::lookup(&code)
        .ok_or_else(|| anyhow::anyhow!("unknown currency {code} in the database"))?;
    let rate = row
        .opt_text("rate")?
        .map(|text| text.parse::<Decimal>())
        .transpose()?;
    Ok(LineDraft {
        account: AccountCode::parse(&row.text("code")?).map_err(anyhow::Error::msg)?,
        currency,
        amount_minor: row.int("amount_minor")?,
        rate,
        base_amount_minor: row.int("base_amount_minor")?,
        party: row.opt_int("party_id")?,
        memo: row.opt_text("memo")?,
        dimensions: row.opt_json("dimensions")?.unwrap_or_default(),
    })
}

/// Filters for listing entries.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EntryFilter {
    /// First accounting date to include (YYYY-MM-DD).
    pub from: Option<String>,
    /// Last accounting date to include (YYYY-MM-DD).
    pub to: Option<String>,
    /// Only entries posted by this module (`source.module`).
    pub source_module: Option<String>,
    /// Only entries for this document of the module (`source.document`).
    pub source_document: Option<String>,
    /// Cursor: the `next` value of the previous page.
    pub after: Option<String>,
    /// Page size, 1–500 (default 100).
    pub limit: Option<u32>,
}

/// Which entries to list, parsed.
#[derive(Debug, Clone, Default)]
pub struct EntryQuery {
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    pub source_module: Option<String>,
    pub source_document: Option<String>,
    /// Only entries with a greater id.
    pub after_id: i64,
    pub limit: usize,
}

/// Lists entries in id order, a page at a time.
pub async fn list(tx: &mut Tx, company: &Company, query: &EntryQuery) -> Result<Vec<StoredEntry>> {
    let sql = "SELECT id FROM ledger_entries WHERE company_id = $1 AND id > $2 \
               AND ($3 IS NULL OR entry_date >= $3) AND ($4 IS NULL OR entry_date <= $4) \
               AND ($5 IS NULL OR source_module = $5) AND ($6 IS NULL OR source_document = $6) \
               ORDER BY id LIMIT $7";
    let ids: Vec<i64> = on_conn!(tx, conn => {
        sqlx::query(sql)
            .bind(company.id)
            .bind(query.after_id)
            .bind(query.from)
            .bind(query.to)
            .bind(query.source_module.as_deref())
            .bind(query.source_document.as_deref())
            .bind(i64::try_from(query.limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| row.int("id"))
            .collect::<anyhow::Result<_>>()?
    });
    load(tx, company, &ids).await
}
