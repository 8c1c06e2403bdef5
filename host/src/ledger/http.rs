//! HTTP routes of the ledger, mounted at `/api/v1/ledger`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ReverseInput;
use super::chart::{AccountChanges, AccountView, NewAccount};
use super::entries::{EntryFilter, EntryView};
use super::model::{EntryInput, parse_date};
use super::periods::{CloseFiscalYear, FiscalYearView, NewFiscalYear, PeriodView};
use super::reports::{AccountLedger, BalanceSheet, IncomeStatement, TrialBalance};
use crate::api::auth::{Authorized, need};
use crate::api::extract::{Body, IdempotencyKey, Params, request_key};
use crate::api::problem::Problem;
use crate::api::{AppState, csv_response, page_size};
use crate::error::{Error, Result};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_accounts, create_account))
        .routes(routes!(get_account, update_account))
        .routes(routes!(account_lines))
        .routes(routes!(list_entries, post_entry))
        .routes(routes!(post_batch))
        .routes(routes!(get_entry))
        .routes(routes!(reverse_entry))
        .routes(routes!(list_fiscal_years, open_fiscal_year))
        .routes(routes!(get_fiscal_year))
        .routes(routes!(close_fiscal_year))
        .routes(routes!(reopen_fiscal_year))
        .routes(routes!(list_periods))
        .routes(routes!(close_period))
        .routes(routes!(reopen_period))
        .routes(routes!(trial_balance))
        .routes(routes!(balance_sheet))
        .routes(routes!(income_statement))
}

fn date_param(field: &str, value: Option<&str>) -> Result<Option<NaiveDate>> {
    value
        .map(|text| parse_date(text).map_err(|message| Error::invalid(field, message)))
        .transpose()
}

/// Whether the client asked for CSV, by `?format=csv` or `Accept: text/csv`.
fn wants_csv(format: Option<&str>, headers: &HeaderMap) -> Result<bool> {
    match format {
        Some("csv") => Ok(true),
        Some("json") => Ok(false),
        Some(other) => Err(Error::invalid(
            "format",
            format!("{other:?} is not a format: use json or csv"),
        )),
        None => Ok(headers
            .get(axum::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/csv"))),
    }
}

fn csv_text(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> Result<String> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(header).map_err(anyhow::Error::from)?;
    for row in rows {
        writer.write_record(&row).map_err(anyhow::Error::from)?;
    }
    let bytes = writer.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(String::from_utf8(bytes).map_err(anyhow::Error::from)?)
}

/// List the chart of accounts, in code order.
#[utoipa::path(get, path = "/accounts", tag = "ledger",
    params(("Keel-Company" = Option<String>, Header, description = "Company code; the default company when absent")),
    responses((status = 200, body = [AccountView])))]
async fn list_accounts(
    State(state): State<AppState>,
    auth: Authorized<need::LedgerAccountsRead>,
) -> Result<Json<Vec<AccountView>>> {
    Ok(Json(state.ledger.accounts(&auth.company).await?))
}

/// Add an account to the chart.
#[utoipa::path(post, path = "/accounts", tag = "ledger", request_body = NewAccount,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the write exactly-once")),
    responses((status = 201, body = AccountView), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_account(
    State(state): State<AppState>,
    auth: Authorized<need::LedgerAccountsWrite>,
    key: IdempotencyKey,
    Body(new): Body<NewAccount>,
) -> Result<Response> {
    let key = request_key(&auth, key, "POST /ledger/accounts", &new);
    Ok(state
        .ledger
        .create_account(&auth.company, &new, key.as_ref(), &auth.origin)
        .await?
        .into_response())
}

/// One account.
#[utoipa::path(get, path = "/accounts/{code}", tag = "ledger", params(("code" = String, Path)),
    responses((status = 200, body = AccountView), (status = 404, body = Problem)))]
async fn get_account(
    State(state): State<AppState>,
    auth: Authorized<need::LedgerAccountsRead>,
    Path(code): Path<String>,
) -> Result<Json<AccountView>> {
    Ok(Json(state.ledger.account(&auth.company, &code).await?))
}

/// Rename an account, move it in the tree, or (de)activate it.
#[utoipa::path(patch, path = "/accounts/{code}", tag = "ledger", params(("code" = String, Path)), request_body = AccountChanges,
    responses((status = 200, body = AccountView), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn update_account(
    State(state): State<AppState>,
    auth: Authorized<need::LedgerAccountsWrite>,
    Path(code): Path<String>,
    key: IdempotencyKey,
    Body(changes): Body<AccountChanges>,
) -> Result<Response> {
    let key = request_key(
        &auth,
        key,
        &format!("PATCH /ledger/accounts/{code}"),
        &changes,
    );
    Ok(state
        .ledger
        .update_account(&auth.company, &code, &changes, key.as_ref(), &auth.origin)
        .await?
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LinesQuery {
    /// First date (YYYY-MM-DD); from the first posting when absent.
    from: Option<String>,
    /// Last date (YYYY-MM-DD); today when absent.
    to: Option<String>,
    /// Cursor: the `next` value of the previous page.
    after: Option<String>,
    /// Page size, 1–500 (default 100).
    limit: Option<u32>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// The account's lines with a running balance, each linked to its entry and source document.
#[utoipa::path(get, path = "/accounts/{code}/lines", tag = "ledger", params(("code" = String, Path), LinesQuery),
    responses((status = 200, body = AccountLedger, content_type = "application/json"), (status = 200, description = "CSV", content_type = "text/csv"),
        (status = 404, body = Problem)))]
async fn account_lines(
    State(state): State<AppState>,
    auth: Authorized<need::LedgerReportsRead>,
    headers: HeaderMap,
    Path(code): Path<String>,
    Params(query): Params<LinesQuery>,
) -> Result<Response> {
    let from = date_param("from", query.from.as_deref())?;
    let to = date_param("to", query.to.as_deref())?.unwrap_or_else(|| Utc::now().date_naive());
    let limit = page_size(query.limit)?;
    let csv = wants_csv(query.format.as_deref(), &headers)?;
    let report = state
        .ledger
        .account_ledger(
            &auth.company,
            &code,
            from,
            to,
            query.after.as_deref(),
            limit,
        )
        .await?;
    if !csv {
        return Ok(Json(report).into_response());
    }
    let rows = report.lines.iter().map(|line| {
        vec![
            line.date.to_string(),
            line.entry.to_string(),
            line.line.to_string(),
            line.memo.clone(),
            line.source
                .as_ref()
                .map(|s| format!("{}/{}", s.module, s.document))
                .unwrap_or_default(),
            line.debit.clone().unwrap_or_default(),
            line.credit.clone().unwrap_or_default(),
            line.balance.clone(),
        ]
    });
    let body = csv_text(
        &[
            "date", "entry", "line", "memo", "source", "debit", "credit", "balance",
        ],
        rows,
    )?;
    Ok(csv_response(
        &format!("account-{}-lines.csv", report.account),
        body,
    ))
}

/// A page of entries.
#[derive(Debug, Serialize, ToSchema)]
struct EntryPage {
    entries: Vec<EntryView>,
    /// Cursor for the next page (`?after=`), absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// List journal entries in the order they were posted.
#[utoipa::path(get, path = "/entries", tag = "ledger", params(EntryFilter),
    responses((status = 200, body = EntryPage)))]
async fn list_entries(
    State(state): State<AppState>,
    auth: Authorized<need::LedgerEntriesRead>,
    Params(filter): Params<EntryFilter>,
) -> Result<Json<EntryPage>> {
    let from = date_param("from", filter.from.as_deref())?;
    let to = date_param("to", filter.to.as_deref())?;
    let after = match filter.after.as_deref() {
        None => 0,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|id| *id >= 0)
            .ok_or_else(|| Error::invalid("after", "is not a cursor this endpoint returned"))?,
    };
    let limit = page_size(filter.limit)?;
    let query = super::entries::EntryQuery {
        from,
        to,
        source_module: filter.source_module,
        source_document: filter.source_document,
        after_id: after,
        limit,
    };
    let entries = state.ledger.entries(&auth.company, &query).await?;
    let next = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(Json(EntryPage { entries, next }))
}

/// Post a journal entry. It must balance in every currency and fall in an open period.
#[utoipa::path(post, path = "/entries", tag = "ledger", request_body = EntryInput,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the posting exactly-once")),
    responses((status = 201, body = EntryView), (status = 200, description = "Already posted under the entry's idempotency key", body = EntryView),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn post_entry(
    State(state): State<AppState>,
    auth: Authorized<need::LedgerEntriesPost>,
    key: IdempotencyKey,
    Body(entry): Body<EntryInput>,
) -> Result<Response> {
    let key = request_key(&auth, key, "POST /ledger/entries", &entry);
    Ok(state
        .ledger
        .post(
            &auth.company,
            std::slice::from_ref(&entry),
            false,
            key,
            &auth.origin,
        )
        .await?
        .into_response())
}

/// Several entries posted all or nothing.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchInput {
    /// 1 to 10,000 entries; each may carry its own `idempotency_key`.
    entries: Vec<EntryInput>,
}

/// One entry of a batch, as posted.
#[derive(Debug, Serialize, ToSchema)]
struct PostedRef {
    /// The entry, at `/api/v1/ledger/entries/{id}`.
    id: i64,
    idempotency_key: Option<String>,
    /// True when the entry was posted earlier under its idempotency key.
    replayed: bool,
}

/// The entries of a batch, in the order they were sent.
#[derive(Debug, Serialize, ToSchema)]
struct BatchOutput {
    entries: Vec<PostedRef>,
}

/// Post many entries in one request, all or nothing.
#[utoipa::path(post, path = "/entries:batch", tag = "ledger", request_body = BatchInput,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the batch exactly-once")),
    responses((status = 201, body = BatchOutput), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn post_batch(
    State(state): State<AppState>,
    auth: Authorized<need::LedgerEntriesPost>,
    key: IdempotencyKey,
    Body(batch): Body<BatchInput>,
) -> Result<Response> {
    let key = request_key(&auth, key, "POST /ledger/entries:batch", &batch);
    Ok(state
        .ledger
        .post(&auth.company, &batch.entries, true, key, &auth.origin)
        .await?
        .into_response())
}

/// One journal entry with its lines.
#[utoipa::path(get, path = "/entries/{id}", tag = "ledger", params(("id" = i64, Path)),
    responses((status = 200, body = EntryView), (status = 404, body = Problem)))]
async fn get_entry(
    State(state): State<AppState>,
    auth: Authorized<need::LedgerEntriesRead>,
    Path(id): Path<i64>,
) -> Result<Json<EntryView>> {
    Ok(Json(state.ledger.entry(&auth.company, id).await?))
}

/// Reverse a posted entry: a new entry with every line on the opposite side, linked to the
/// original. An entry is reversed at most once.
#[utoipa::path(post, path = "/entries/{id}/reverse", tag = "ledger", params(("id" = i64, Path)), request_body = Option<ReverseInput>,
    responses((status = 201, body = EntryView), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn reverse_entry(
    State(state): State<AppState>,
    auth: Authorized<need::LedgerEntriesReverse>,
    Path(id): Path<i64>,
    key: IdempotencyKey,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let input: ReverseInput = if body.iter().all(u8::is_ascii_whitespace) {
        ReverseInput::default()
    } else {
        crate::api::extract::parse_json(&body).map_err(IntoResponse::into_response)?
    };
    let key = request_key(
        &auth,
        key,
        &format!("POST /ledger/entries/{id}/reverse"),
        &input,
    );
    state
        .ledger
        .reverse(&auth.company, id, &input, key.as_ref(), &auth.origin)
        .await
        .map(IntoResponse::into_response)
        .map_err(IntoResponse::into_response)
}

/// Fiscal years with their periods.
#[utoipa::path(get, path = "/fiscal-years", tag = "ledger", responses((status = 200, body = [FiscalYearView])))]
async fn list_fiscal_years(
    State(state): State<AppState>,
    auth: Authorized<need::LedgerPeriodsRead>,
) -> Result<Json<Vec<FiscalYearView>>> {
    Ok(Json(state.ledger.fiscal_years(&auth.company).await?))
}

/// Open a fiscal year with twelve monthly periods.
#[utoipa::path(post, path = "/fiscal-years", tag = "ledger", request_body = NewFiscalYear,
    responses((status = 201, body = FiscalYearView), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn open_fiscal_year(
    State(state): State<AppState>,
    auth: Authorized<need::LedgerPeriodsOpen>,
    key: IdempotencyKey,
    Body(input): Body<NewFiscalYear>,
) -> Result<Response> {
    let key = request_key(&auth, key, "POST /ledger/fiscal-years", &input);
    Ok(state
        .ledger
        .open_fiscal_year(&auth.company, &input, key.as_ref(), &auth.origin)
        .await?
        .into_response())
}

/// One fiscal year with its periods.
#[utoipa::path(get, path = "/fiscal-years/{id}", tag = "ledger", params(("id" = i64, Path)),
    responses((status = 200, body = FiscalYearView), (status = 404, body = Problem)))]
async fn get_fiscal_year(
    State(state): State<AppState>,
    auth: Authorized<need::LedgerPeriodsRead>,
    Path(id): Path<i64>,
) -> Result<Json<FiscalYearView>> {
    Ok(Json(state.ledger.fiscal_year(&auth.company, id).await?))
}

/// Year-end close: income and expense move to retained earnings and every period closes.
#[utoipa::path(post, path = "/fiscal-years/{id}/close", tag = "ledger", params(("id" = i64, Path)), request_body = CloseFiscalYear,
    responses((status = 200, body = FiscalYearView), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn close_fiscal_year(
    State(state): State<AppState>,
    auth: Authorized<need::LedgerPeriodsClose>,
    Path(id): Path<i64>,
    key: IdempotencyKey,
    Body(input): Body<CloseFiscalYear>,
) -> Result<Response> {
    let key = request_key(
        &auth,
        key,
        &format!("POST /ledger/fiscal-years/{id}/close"),
        &input,
    );
    Ok(state
        .ledger
        .close_fiscal_year(&auth.company, id, &input, key.as_ref(), &auth.origin)
        .await?
        .into_response())
}

/// Reopen the latest closed fiscal year; its closing entry is reversed.
#[utoipa::path(post, path = "/fiscal-years/{id}/reopen", tag = "ledger", params(("id" = i64, Path)),
    responses((status = 200, body = FiscalYearView), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn reopen_fiscal_year(
    State(state): State<AppState>,
    auth: Authorized<need::LedgerPeriodsReopen>,
    Path(id): Path<i64>,
    key: IdempotencyKey,
) -> Result<Response> {
    let key = request_key(
        &auth,
        key,
        &format!("POST /ledger/fiscal-years/{id}/reopen"),
        &(),
    );
    Ok(state
        .ledger
        .reopen_fiscal_year(&auth.company, id, key.as_ref(), &auth.origin)
        .await?
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PeriodsQuery {
    /// Only the periods of this fiscal year.
    fiscal_year: Option<i64>,
}

/// Fiscal periods, oldest first.
#[utoipa::path(get, path = "/periods", tag = "ledger", params(PeriodsQuery), responses((status = 200, body = [PeriodView])))]
async fn list_periods(
    State(state): State<AppState>,
    auth: Authorized<need::LedgerPeriodsRead>,
    Params(query): Params<PeriodsQuery>,
) -> Result<Json<Vec<PeriodView>>> {
    Ok(Json(
        state
            .ledger
            .periods(&auth.company, query.fiscal_year)
            .await?,
    ))
}

/// Close a period: postings dated in it are refused from now on.
#[utoipa::path(post, path = "/periods/{id}/close", tag = "ledger", params(("id" = i64, Path)),
    responses((status = 200, body = PeriodView), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn close_period(
    State(state): State<AppState>,
    auth: Authorized<need::LedgerPeriodsClose>,
    Path(id): Path<i64>,
    key: IdempotencyKey,
) -> Result<Response> {
    let key = request_key(&auth, key, &format!("POST /ledger/periods/{id}/close"), &());
    Ok(state
        .ledger
        .close_period(&auth.company, id, key.as_ref(), &auth.origin)
        .await?
        .into_response())
}

/// Reopen a closed period of an open fiscal year.
#[utoipa::path(post, path = "/periods/{id}/reopen", tag = "ledger", params(("id" = i64, Path)),
    responses((status = 200, body = PeriodView), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn reopen_period(
    State(state): State<AppState>,
    auth: Authorized<need::LedgerPeriodsReopen>,
    Path(id): Path<i64>,
    key: IdempotencyKey,
) -> Result<Response> {
    let key = request_key(
        &auth,
        key,
        &format!("POST /ledger/periods/{id}/reopen"),
        &(),
    );
    Ok(state
        .ledger
        .reopen_period(&auth.company, id, key.as_ref(), &auth.origin)
        .await?
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AsOfQuery {
    /// Balances at the end of this day (YYYY-MM-DD); today when absent.
    as_of: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct RangeQuery {
    /// First day (YYYY-MM-DD).
    from: String,
    /// Last day (YYYY-MM-DD).
    to: String,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// Trial balance: every account's base-currency balance as of a date; debits equal credits.
#[utoipa::path(get, path = "/trial-balance", tag = "ledger", params(AsOfQuery),
    responses((status = 200, body = TrialBalance, content_type = "application/json"), (status = 200, description = "CSV", content_type = "text/csv")))]
async fn trial_balance(
    State(state): State<AppState>,
    auth: Authorized<need::LedgerReportsRead>,
    headers: HeaderMap,
    Params(query): Params<AsOfQuery>,
) -> Result<Response> {
    let as_of =
        date_param("as_of", query.as_of.as_deref())?.unwrap_or_else(|| Utc::now().date_naive());
    let csv = wants_csv(query.format.as_deref(), &headers)?;
    let report = state.ledger.trial_balance(&auth.company, as_of).await?;
    if !csv {
        return Ok(Json(report).into_response());
    }
    let body = csv_text(
        &["account", "name", "type", "debit", "credit"],
        report
            .rows
            .iter()
            .map(|row| {
                vec![
                    row.account.clone(),
                    row.name.clone(),
                    row.account_type.as_str().to_owned(),
                    row.debit.clone().unwrap_or_default(),
                    row.credit.clone().unwrap_or_default(),
                ]
            })
            .chain([vec![
                "".into(),
                "Total".into(),
                "".into(),
                report.total_debit.clone(),
                report.total_credit.clone(),
            ]]),
    )?;
    Ok(csv_response(&format!("trial-balance-{as_of}.csv"), body))
}

fn statement_rows(section: &str, lines: &[super::reports::StatementLine]) -> Vec<Vec<String>> {
    lines
        .iter()
        .map(|line| {
            vec![
                section.to_owned(),
                line.account.clone(),
                line.name.clone(),
                line.level.to_string(),
                line.amount.clone(),
                line.total.clone(),
            ]
        })
        .collect()
}

const STATEMENT_CSV_HEADER: [&str; 6] = ["section", "account", "name", "level", "amount", "total"];

/// Balance sheet as of a date, in the base currency; accounts roll up into their parents.
#[utoipa::path(get, path = "/balance-sheet", tag = "ledger", params(AsOfQuery),
    responses((status = 200, body = BalanceSheet, content_type = "application/json"), (status = 200, description = "CSV", content_type = "text/csv")))]
async fn balance_sheet(
    State(state): State<AppState>,
    auth: Authorized<need::LedgerReportsRead>,
    headers: HeaderMap,
    Params(query): Params<AsOfQuery>,
) -> Result<Response> {
    let as_of =
        date_param("as_of", query.as_of.as_deref())?.unwrap_or_else(|| Utc::now().date_naive());
    let csv = wants_csv(query.format.as_deref(), &headers)?;
    let report = state.ledger.balance_sheet(&auth.company, as_of).await?;
    if !csv {
        return Ok(Json(report).into_response());
    }
    let mut rows = statement_rows("assets", &report.assets.lines);
    rows.push(vec![
        "assets".into(),
        "".into(),
        "Total assets".into(),
        "".into(),
        "".into(),
        report.assets.total.clone(),
    ]);
    rows.extend(statement_rows("liabilities", &report.liabilities.lines));
    rows.extend(statement_rows("equity", &report.equity.lines));
    rows.push(vec![
        "equity".into(),
        "".into(),
        "Current earnings".into(),
        "".into(),
        "".into(),
        report.current_earnings.clone(),
    ]);
    rows.push(vec![
        "".into(),
        "".into(),
        "Total liabilities and equity".into(),
        "".into(),
        "".into(),
        report.total_liabilities_and_equity.clone(),
    ]);
    Ok(csv_response(
        &format!("balance-sheet-{as_of}.csv"),
        csv_text(&STATEMENT_CSV_HEADER, rows)?,
    ))
}

/// Income statement for a date range, in the base currency; year-end closing entries are left out.
#[utoipa::path(get, path = "/income-statement", tag = "ledger", params(RangeQuery),
    responses((status = 200, body = IncomeStatement, content_type = "application/json"), (status = 200, description = "CSV", content_type = "text/csv")))]
async fn income_statement(
    State(state): State<AppState>,
    auth: Authorized<need::LedgerReportsRead>,
    headers: HeaderMap,
    Params(query): Params<RangeQuery>,
) -> Result<Response> {
    let from = date_param("from", Some(&query.from))?.expect("given");
    let to = date_param("to", Some(&query.to))?.expect("given");
    let csv = wants_csv(query.format.as_deref(), &headers)?;
    let report = state
        .ledger
        .income_statement(&auth.company, from, to)
        .await?;
    if !csv {
        return Ok(Json(report).into_response());
    }
    let mut rows = statement_rows("income", &report.income.lines);
    rows.extend(statement_rows("expenses", &report.expenses.lines));
    rows.push(vec![
        "".into(),
        "".into(),
        "Net income".into(),
        "".into(),
        "".into(),
        report.net_income.clone(),
    ]);
    Ok(csv_response(
        &format!("income-statement-{from}-{to}.csv"),
        csv_text(&STATEMENT_CSV_HEADER, rows)?,
    ))
}
