//! Reports from the running balances: trial balance, balance sheet, income statement and the
//! account ledger with a running balance. Each costs O(accounts) or O(lines shown), never
//! O(all lines posted).

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use chrono::{Days, NaiveDate};
use serde::Serialize;
use utoipa::ToSchema;

use super::chart::{self, Account};
use super::model::{
    AccountType, BalancePeriod, EARLIEST_DATE, SourceRef, format_minor, parse_date,
};
use crate::company::Company;
use crate::currency;
use crate::db::{Hold, Param, Row, SqlDate, Tx};
use crate::error::{Error, Result};
use crate::on_conn;

/// Debit and credit totals of one account in one currency, and their base-currency value.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sums {
    pub debit: i64,
    pub credit: i64,
    pub base_debit: i64,
    pub base_credit: i64,
}

impl Sums {
    fn add(&mut self, other: &Self) {
        self.debit += other.debit;
        self.credit += other.credit;
        self.base_debit += other.base_debit;
        self.base_credit += other.base_credit;
    }

    fn subtract(&mut self, other: &Self) {
        self.debit -= other.debit;
        self.credit -= other.credit;
        self.base_debit -= other.base_debit;
        self.base_credit -= other.base_credit;
    }

    /// Signed balance in the line currency, debit positive.
    pub fn net(&self) -> i64 {
        self.debit - self.credit
    }

    /// Signed balance in the base currency, debit positive.
    pub fn base_net(&self) -> i64 {
        self.base_debit - self.base_credit
    }
}

/// Balances keyed by account id and currency.
pub type Balances = HashMap<(i64, String), Sums>;

/// Which postings a sum includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// Everything, closing entries included: what the books hold.
    Include,
    /// Leaves out year-end closing entries: income and expense as earned.
    Exclude,
}

/// Sums of postings dated `from..=to` (from the beginning when `from` is `None`), optionally for
/// one account only. The days are read as the coarsest whole periods that fit (quarters, then
/// months, ten-day and five-day periods at either end, then days; see [`BalancePeriod::runs`]),
/// each from its table. Everything up to a date is read the cheaper way: the running totals
/// alone when nothing is dated later; otherwise the periods up to the date, or the totals less
/// the periods after it, whichever reads fewer periods (as of a day late in the year, its last
/// days rather than all its months).
pub async fn activity(
    tx: &mut Tx,
    company: &Company,
    from: Option<NaiveDate>,
    to: NaiveDate,
    closing: Closing,
    account_id: Option<i64>,
) -> Result<Balances> {
    let query = SumQuery {
        company_id: company.id,
        account_id,
        closing,
    };
    if let Tx::Sqlite(sqlite) = tx {
        // One call on the connection: each statement through the driver is a round trip
        // between threads, about what reading a period's rows costs.
        return Ok(sqlite
            .on_direct_connection(Hold::Long, |conn| query.read_on(conn, from, to))
            .await?);
    }
    // The totals include closing entries, so they serve only sums that include them too.
    let from_totals = from.is_none() && closing == Closing::Include;
    let plan = if from_totals {
        let span = on_conn!(tx, conn => {
            let row = sqlx::query(POSTING_SPAN)
                .bind(company.id)
                .bind(account_id)
                .fetch_one(&mut *conn)
                .await?;
            row.opt_date("first_month")?.zip(row.opt_date("last_day")?)
        });
        Plan::everything_up_to(span, to)
    } else {
        Plan::Periods(BalancePeriod::runs(from.unwrap_or(EARLIEST_DATE), to))
    };
    match plan {
        Plan::Nothing => Ok(Balances::new()),
        Plan::Totals => running_totals(tx, &query).await,
        Plan::Periods(before) => period_sums(tx, &query, &before).await,
        Plan::TotalsLess(after) => {
            let totals = running_totals(tx, &query).await?;
            Ok(less(totals, period_sums(tx, &query, &after).await?, to)?)
        }
    }
}

/// [`activity`] of every account, and the chart of accounts, read in the same snapshot: on
/// SQLite in one call on the connection.
pub async fn activity_and_chart(
    tx: &mut Tx,
    company: &Company,
    from: Option<NaiveDate>,
    to: NaiveDate,
    closing: Closing,
) -> Result<(Balances, Vec<Account>)> {
    if let Tx::Sqlite(sqlite) = tx {
        let query = SumQuery {
            company_id: company.id,
            account_id: None,
            closing,
        };
        return Ok(sqlite
            .on_direct_connection(Hold::Long, |conn| {
                Ok((
                    query.read_on(conn, from, to)?,
                    chart::list_on(conn, company)?,
                ))
            })
            .await?);
    }
    let balances = activity(tx, company, from, to, closing, None).await?;
    Ok((balances, chart::list(tx, company).await?))
}

/// The first day of the earliest month with postings and the last day with any (of one
/// account, when given): both NULL for an empty ledger.
const POSTING_SPAN: &str = "SELECT (SELECT MIN(month) FROM ledger_balances_monthly WHERE company_id = $1) AS first_month, \
     (SELECT MAX(last_day) FROM ledger_balances WHERE company_id = $1 \
      AND ($2 IS NULL OR account_id = $2)) AS last_day";

/// Everything posted, per account and currency: one row each, so no grouping.
const RUNNING_TOTALS: &str = "SELECT account_id, currency, debit_minor, credit_minor, base_debit_minor, base_credit_minor \
     FROM ledger_balances WHERE company_id = $1 AND ($2 IS NULL OR account_id = $2)";

/// How the sums of everything up to a date are read.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Nothing is posted.
    Nothing,
    /// Nothing is dated later: the running totals.
    Totals,
    /// The sums of these periods.
    Periods(Vec<(BalancePeriod, NaiveDate, NaiveDate)>),
    /// The running totals less the sums of these later periods.
    TotalsLess(Vec<(BalancePeriod, NaiveDate, NaiveDate)>),
}

impl Plan {
    /// Everything up to `to`, given the first month with postings and the last day with any.
    fn everything_up_to(span: Option<(NaiveDate, NaiveDate)>, to: NaiveDate) -> Self {
        let Some((first_month, last_day)) = span else {
            return Self::Nothing;
        };
        if last_day <= to {
            return Self::Totals;
        }
        // Inclusive bounds throughout. Nothing is dated before `first_month` or after
        // `last_day`, so the periods may start and end with the coarsest periods holding them,
        // which are then read whole rather than in parts.
        let coarsest = BalancePeriod::COARSEST;
        let before = BalancePeriod::runs(coarsest.start(first_month), to);
        let last_end = coarsest.next(coarsest.start(last_day)) - Days::new(1);
        let after = BalancePeriod::runs(to + Days::new(1), last_end);
        // The totals cost about as much as one period: a row per account and currency.
        if periods_in(&after) + 1 < periods_in(&before) {
            Self::TotalsLess(after)
        } else {
            Self::Periods(before)
        }
    }
}

/// How many periods `runs` cover, each read as about one row per account and currency.
fn periods_in(runs: &[(BalancePeriod, NaiveDate, NaiveDate)]) -> usize {
    runs.iter()
        .map(|(period, first, last)| {
            std::iter::successors(Some(*first), |start| Some(period.next(*start)))
                .take_while(|start| start <= last)
                .count()
        })
        .sum()
}

/// The running totals less what is dated after `to`.
fn less(mut totals: Balances, later: Balances, to: NaiveDate) -> anyhow::Result<Balances> {
    for (key, later) in later {
        let Some(total) = totals.get_mut(&key) else {
            let (account, currency) = key;
            anyhow::bail!(
                "account {account} has balances in {currency} after {to} but no running total"
            );
        };
        total.subtract(&later);
    }
    // Debits and credits are sums of positive amounts: all four are zero only for an account
    // with nothing posted up to `to`, which the periods would not have listed either.
    totals.retain(|_, sums| *sums != Sums::default());
    Ok(totals)
}

/// Whose balances a report adds up, and which postings.
struct SumQuery {
    company_id: i64,
    account_id: Option<i64>,
    closing: Closing,
}

impl SumQuery {
    /// [`activity`] on SQLite, on a borrowed connection.
    fn read_on(
        &self,
        conn: &rusqlite::Connection,
        from: Option<NaiveDate>,
        to: NaiveDate,
    ) -> anyhow::Result<Balances> {
        // The totals include closing entries, so they serve only sums that include them too.
        let plan = if from.is_none() && self.closing == Closing::Include {
            let span = conn.query_row(
                POSTING_SPAN,
                rusqlite::params![self.company_id, self.account_id],
                |row| {
                    Ok((
                        row.get::<_, Option<String>>(0)?,
                        row.get::<_, Option<String>>(1)?,
                    ))
                },
            )?;
            let parse = |text: Option<String>| {
                text.map(|text| parse_date(&text).map_err(anyhow::Error::msg))
                    .transpose()
            };
            Plan::everything_up_to(parse(span.0)?.zip(parse(span.1)?), to)
        } else {
            Plan::Periods(BalancePeriod::runs(from.unwrap_or(EARLIEST_DATE), to))
        };
        let totals = || self.add_up(conn, RUNNING_TOTALS, None);
        let runs = |runs: &[_]| self.add_up_runs(conn, runs);
        match plan {
            Plan::Nothing => Ok(Balances::new()),
            Plan::Totals => totals(),
            Plan::Periods(before) => runs(&before),
            Plan::TotalsLess(after) => less(totals()?, runs(&after)?, to),
        }
    }

    /// `FROM` and `WHERE` of the rows of one run of periods: the company, the account if
    /// given, the periods starting `$3..=$4`, and closing entries when the sums include them.
    fn period_rows(&self, period: BalancePeriod) -> String {
        let (table, column) = period.table();
        let closing_filter = match self.closing {
            Closing::Include => "",
            Closing::Exclude => " AND closing = FALSE",
        };
        format!(
            "FROM {table} WHERE company_id = $1 AND ($2 IS NULL OR account_id = $2) \
             AND {column} >= $3 AND {column} <= $4{closing_filter}"
        )
    }

    /// On SQLite, reads the balance rows of every run and adds them up here. Grouping them in
    /// SQLite sorted every row first, which cost more than reading them: a report as of
    /// mid-month reads about eleven rows per account (five months, a ten-day period, five
    /// days).
    fn add_up_runs(
        &self,
        conn: &rusqlite::Connection,
        runs: &[(BalancePeriod, NaiveDate, NaiveDate)],
    ) -> anyhow::Result<Balances> {
        let mut adder = Adder::default();
        for (period, first, last) in runs {
            let sql = format!(
                "SELECT account_id, currency, debit_minor, credit_minor, base_debit_minor, base_credit_minor {}",
                self.period_rows(*period)
            );
            adder.add(conn, &sql, self, Some((*first, *last)))?;
        }
        Ok(adder.balances())
    }

    /// On SQLite, the rows of one statement added up.
    fn add_up(
        &self,
        conn: &rusqlite::Connection,
        sql: &str,
        dates: Option<(NaiveDate, NaiveDate)>,
    ) -> anyhow::Result<Balances> {
        let mut adder = Adder::default();
        adder.add(conn, sql, self, dates)?;
        Ok(adder.balances())
    }
}

/// Balance rows added up as SQLite returns them, keyed by account and the currency's place in
/// `currencies`: a ledger holds a handful of currencies, and looking one up by its text saves
/// a string allocation per row.
#[derive(Default)]
struct Adder {
    currencies: Vec<String>,
    sums: HashMap<(i64, usize), Sums>,
}

impl Adder {
    /// Adds the rows of `sql` (account, currency and the four sums; company and account as
    /// `$1` and `$2`, the dates, if any, as `$3` and `$4`).
    fn add(
        &mut self,
        conn: &rusqlite::Connection,
        sql: &str,
        query: &SumQuery,
        dates: Option<(NaiveDate, NaiveDate)>,
    ) -> anyhow::Result<()> {
        let mut statement = conn.prepare(sql)?;
        let mut rows = match dates {
            Some((first, last)) => statement.query(rusqlite::params![
                query.company_id,
                query.account_id,
                SqlDate(first).text(),
                SqlDate(last).text()
            ])?,
            None => statement.query(rusqlite::params![query.company_id, query.account_id])?,
        };
        while let Some(row) = rows.next()? {
            // Columns by place in the constant statement above: `get_ref_unwrap` skips the
            // bounds check `get` makes on every call, a fifth of the time spent on a row.
            let int = |column: usize| row.get_ref_unwrap(column).as_i64();
            let currency = row.get_ref_unwrap(1).as_str()?;
            let place = match self.currencies.iter().position(|known| known == currency) {
                Some(place) => place,
                None => {
                    self.currencies.push(currency.to_owned());
                    self.currencies.len() - 1
                }
            };
            let row_sums = Sums {
                debit: int(2)?,
                credit: int(3)?,
                base_debit: int(4)?,
                base_credit: int(5)?,
            };
            self.sums
                .entry((int(0)?, place))
                .or_default()
                .add(&row_sums);
        }
        Ok(())
    }

    fn balances(self) -> Balances {
        let currencies = self.currencies;
        self.sums
            .into_iter()
            .map(|((account, place), sums)| ((account, currencies[place].clone()), sums))
            .collect()
    }
}

/// On PostgreSQL: everything posted, per account and currency.
async fn running_totals(tx: &mut Tx, query: &SumQuery) -> Result<Balances> {
    let mut balances = Balances::new();
    let rows = sum_query(tx, RUNNING_TOTALS, query.company_id, query.account_id, &[]).await?;
    add_sums(&mut balances, rows);
    Ok(balances)
}

/// On PostgreSQL: the sums of `runs`, grouped by the database.
async fn period_sums(
    tx: &mut Tx,
    query: &SumQuery,
    runs: &[(BalancePeriod, NaiveDate, NaiveDate)],
) -> Result<Balances> {
    let mut balances = Balances::new();
    for (period, first, last) in runs {
        add_sums(
            &mut balances,
            sums_between(tx, query, *period, *first, *last).await?,
        );
    }
    Ok(balances)
}

fn add_sums(balances: &mut Balances, rows: Vec<((i64, String), Sums)>) {
    for (key, sums) in rows {
        balances.entry(key).or_default().add(&sums);
    }
}

async fn sums_between(
    tx: &mut Tx,
    query: &SumQuery,
    period: BalancePeriod,
    lo: NaiveDate,
    hi: NaiveDate,
) -> Result<Vec<((i64, String), Sums)>> {
    let sql = format!(
        "SELECT account_id, currency, \
         CAST(SUM(debit_minor) AS BIGINT) AS debit_minor, CAST(SUM(credit_minor) AS BIGINT) AS credit_minor, \
         CAST(SUM(base_debit_minor) AS BIGINT) AS base_debit_minor, \
         CAST(SUM(base_credit_minor) AS BIGINT) AS base_credit_minor \
         {} GROUP BY account_id, currency",
        query.period_rows(period)
    );
    sum_query(tx, &sql, query.company_id, query.account_id, &[lo, hi]).await
}

async fn sum_query(
    tx: &mut Tx,
    sql: &str,
    company_id: i64,
    account_id: Option<i64>,
    dates: &[NaiveDate],
) -> Result<Vec<((i64, String), Sums)>> {
    let mut params = vec![Param::Int(Some(company_id)), Param::Int(account_id)];
    params.extend(dates.iter().map(|date| Param::Date(Some(*date))));
    let columns = [
        "account_id",
        "currency",
        "debit_minor",
        "credit_minor",
        "base_debit_minor",
        "base_credit_minor",
    ];
    Ok(tx
        .fetch_packed(sql, &columns, &params)
        .await?
        .iter()
        .map(|row| -> anyhow::Result<_> {
            let sums = Sums {
                debit: row.int(2)?,
                credit: row.int(3)?,
                base_debit: row.int(4)?,
                base_credit: row.int(5)?,
            };
            Ok(((row.int(0)?, row.text(1)?), sums))
        })
        .collect::<anyhow::Result<Vec<_>>>()?)
}

/// An amount in one currency, on its debit or credit side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ForeignBalance {
    pub currency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct TrialBalanceRow {
    pub account: String,
    pub name: String,
    #[serde(rename = "type")]
    pub account_type: AccountType,
    /// Net balance in the base currency when it is a debit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debit: Option<String>,
    /// Net balance in the base currency when it is a credit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit: Option<String>,
    /// Balances held in other currencies, in those currencies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub foreign: Vec<ForeignBalance>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct TrialBalance {
    #[schema(value_type = String)]
    pub as_of: NaiveDate,
    /// The base currency every debit and credit column is in.
    pub currency: String,
    pub rows: Vec<TrialBalanceRow>,
    pub total_debit: String,
    pub total_credit: String,
    pub balanced: bool,
}

fn side(minor: i64, places: u32) -> (Option<String>, Option<String>) {
    match minor {
        0 => (None, None),
        m if m > 0 => (Some(format_minor(m, places)), None),
        m => (None, Some(format_minor(-m, places))),
    }
}

/// Every account with a balance as of `as_of`, in code order, with the base-currency totals.
pub async fn trial_balance(
    tx: &mut Tx,
    company: &Company,
    as_of: NaiveDate,
) -> Result<TrialBalance> {
    let (balances, accounts) =
        activity_and_chart(tx, company, None, as_of, Closing::Include).await?;
    let base = company.base_currency;
    // Account id → its balances by currency, in currency order.
    let mut by_account: HashMap<i64, BTreeMap<&str, &Sums>> =
        HashMap::with_capacity(accounts.len());
    for ((account_id, currency), sums) in &balances {
        by_account
            .entry(*account_id)
            .or_default()
            .insert(currency, sums);
    }
    let (mut total_debit, mut total_credit) = (0_i64, 0_i64);
    let mut rows = Vec::new();
    for account in &accounts {
        let mut base_net = 0_i64;
        let mut foreign = Vec::new();
        let mut has_lines = false;
        for (code, sums) in by_account.remove(&account.id).unwrap_or_default() {
            has_lines = true;
            base_net += sums.base_net();
            if code != base.code {
                let places = currency::lookup(code).map_or(2, |c| c.minor_units);
                let (debit, credit) = side(sums.net(), places);
                if debit.is_some() || credit.is_some() {
                    foreign.push(ForeignBalance {
                        currency: code.to_owned(),
                        debit,
                        credit,
                    });
                }
            }
        }
        if !has_lines || (base_net == 0 && foreign.is_empty()) {
            continue;
        }
        if base_net > 0 {
            total_debit += base_net;
        } else {
            total_credit -= base_net;
        }
        let (debit, credit) = side(base_net, base.minor_units);
        rows.push(TrialBalanceRow {
            account: account.code.clone(),
            name: account.name.clone(),
            account_type: account.account_type,
            debit,
            credit,
            foreign,
        });
    }
    Ok(TrialBalance {
        as_of,
        currency: base.code.to_owned(),
        rows,
        total_debit: format_minor(total_debit, base.minor_units),
        total_credit: format_minor(total_credit, base.minor_units),
        balanced: total_debit == total_credit,
    })
}

/// One account in a hierarchical statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct StatementLine {
    pub account: String,
    pub name: String,
    /// Depth in the account tree, 0 for top-level accounts.
    pub level: u32,
    /// Postings to this account itself, in the section's natural sign (assets and expenses
    /// debit positive; liabilities, equity and income credit positive).
    pub amount: String,
    /// The amount including every sub-account.
    pub total: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct StatementSection {
    pub lines: Vec<StatementLine>,
    pub total: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct BalanceSheet {
    #[schema(value_type = String)]
    pub as_of: NaiveDate,
    pub currency: String,
    pub assets: StatementSection,
    pub liabilities: StatementSection,
    pub equity: StatementSection,
    /// Income less expense not yet closed into retained earnings.
    pub current_earnings: String,
    pub total_liabilities_and_equity: String,
    pub balanced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct IncomeStatement {
    #[schema(value_type = String)]
    pub from: NaiveDate,
    #[schema(value_type = String)]
    pub to: NaiveDate,
    pub currency: String,
    pub income: StatementSection,
    pub expenses: StatementSection,
    pub net_income: String,
}

/// Base-currency net per account id, debit positive.
fn base_net_by_account(balances: &Balances) -> HashMap<i64, i64> {
    let mut out = HashMap::new();
    for ((account_id, _), sums) in balances {
        *out.entry(*account_id).or_insert(0) += sums.base_net();
    }
    out
}

/// The accounts of one type as a tree, each with its own and its rolled-up amount.
fn section(
    accounts: &[Account],
    account_type: AccountType,
    nets: &HashMap<i64, i64>,
    places: u32,
) -> (StatementSection, i64) {
    let sign = if account_type.is_debit_normal() {
        1
    } else {
        -1
    };
    let of_type: Vec<&Account> = accounts
        .iter()
        .filter(|a| a.account_type == account_type)
        .collect();
    let mut children: BTreeMap<Option<i64>, Vec<&Account>> = BTreeMap::new();
    let ids: std::collections::HashSet<i64> = of_type.iter().map(|a| a.id).collect();
    for account in &of_type {
        // A parent of another type does not exist in this section; show the account at the top.
        let parent = account.parent_id.filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(account);
    }
    fn total_of(
        id: i64,
        children: &BTreeMap<Option<i64>, Vec<&Account>>,
        nets: &HashMap<i64, i64>,
    ) -> i64 {
        nets.get(&id).copied().unwrap_or(0)
            + children.get(&Some(id)).map_or(0, |kids| {
                kids.iter().map(|k| total_of(k.id, children, nets)).sum()
            })
    }
    fn walk(
        parent: Option<i64>,
        level: u32,
        children: &BTreeMap<Option<i64>, Vec<&Account>>,
        nets: &HashMap<i64, i64>,
        sign: i64,
        places: u32,
        out: &mut Vec<StatementLine>,
    ) {
        for account in children.get(&parent).into_iter().flatten() {
            let total = total_of(account.id, children, nets);
            let own = nets.get(&account.id).copied().unwrap_or(0);
            if total == 0 && own == 0 {
                continue;
            }
            out.push(StatementLine {
                account: account.code.clone(),
                name: account.name.clone(),
                level,
                amount: format_minor(sign * own, places),
                total: format_minor(sign * total, places),
            });
            walk(
                Some(account.id),
                level + 1,
                children,
                nets,
                sign,
                places,
                out,
            );
        }
    }
    let mut lines = Vec::new();
    walk(None, 0, &children, nets, sign, places, &mut lines);
    let total: i64 = of_type
        .iter()
        .map(|a| nets.get(&a.id).copied().unwrap_or(0))
        .sum::<i64>()
        * sign;
    (
        StatementSection {
            lines,
            total: format_minor(total, places),
        },
        total,
    )
}

pub async fn balance_sheet(
    tx: &mut Tx,
    company: &Company,
    as_of: NaiveDate,
) -> Result<BalanceSheet> {
    let (balances, accounts) =
        activity_and_chart(tx, company, None, as_of, Closing::Include).await?;
    let nets = base_net_by_account(&balances);
    let places = company.base_currency.minor_units;
    let (assets, total_assets) = section(&accounts, AccountType::Asset, &nets, places);
    let (liabilities, total_liabilities) =
        section(&accounts, AccountType::Liability, &nets, places);
    let (equity, total_equity) = section(&accounts, AccountType::Equity, &nets, places);
    let (_, income) = section(&accounts, AccountType::Income, &nets, places);
    let (_, expense) = section(&accounts, AccountType::Expense, &nets, places);
    let current_earnings = income - expense;
    let right = total_liabilities + total_equity + current_earnings;
    Ok(BalanceSheet {
        as_of,
        currency: company.base_currency.code.to_owned(),
        assets,
        liabilities,
        equity,
        current_earnings: format_minor(current_earnings, places),
        total_liabilities_and_equity: format_minor(right, places),
        balanced: total_assets == right,
    })
}

pub async fn income_statement(
    tx: &mut Tx,
    company: &Company,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<IncomeStatement> {
    if from > to {
        return Err(Error::invalid("from", format!("{from} is after to ({to})")));
    }
    let (balances, accounts) =
        activity_and_chart(tx, company, Some(from), to, Closing::Exclude).await?;
    let nets = base_net_by_account(&balances);
    let places = company.base_currency.minor_units;
    let (income, total_income) = section(&accounts, AccountType::Income, &nets, places);
    let (expenses, total_expense) = section(&accounts, AccountType::Expense, &nets, places);
    Ok(IncomeStatement {
        from,
        to,
        currency: company.base_currency.code.to_owned(),
        income,
        expenses,
        net_income: format_minor(total_income - total_expense, places),
    })
}

/// One line in an account's ledger, with the balance after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AccountLine {
    #[schema(value_type = String)]
    pub date: NaiveDate,
    /// The entry, at `/api/v1/ledger/entries/{entry}`.
    pub entry: i64,
    pub line: u32,
    pub memo: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub party: Option<i64>,
    /// Base-currency debit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debit: Option<String>,
    /// Base-currency credit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credit: Option<String>,
    /// The line's own currency and signed amount (debit positive) when it is not the base currency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub foreign: Option<ForeignBalance>,
    /// Base-currency balance after this line, debit positive.
    pub balance: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AccountLedger {
    pub account: String,
    pub name: String,
    pub currency: String,
    #[schema(value_type = Option<String>)]
    pub from: Option<NaiveDate>,
    #[schema(value_type = String)]
    pub to: NaiveDate,
    /// Base-currency balance before the first line of this page, debit positive.
    pub opening_balance: String,
    pub lines: Vec<AccountLine>,
    /// Cursor for the next page (`?after=`), absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Position of a line in an account's ledger: (date, entry id, line number).
type LinePosition = (NaiveDate, i64, i64);

fn encode_cursor(position: LinePosition) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}|{}|{}", position.0, position.1, position.2))
}

fn decode_cursor(text: &str) -> Result<LinePosition> {
    let invalid = || Error::invalid("after", "is not a cursor this endpoint returned");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = text.split('|');
    let (Some(date), Some(entry), Some(line), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    Ok((
        super::model::parse_date(date).map_err(|_| invalid())?,
        entry.parse().map_err(|_| invalid())?,
        line.parse().map_err(|_| invalid())?,
    ))
}

/// Lines posted to one account between two dates, a page at a time, each with the running
/// balance, the entry it belongs to and that entry's source document.
pub async fn account_ledger(
    tx: &mut Tx,
    company: &Company,
    code: &str,
    from: Option<NaiveDate>,
    to: NaiveDate,
    after: Option<&str>,
    limit: usize,
) -> Result<AccountLedger> {
    let account = chart::get(tx, company, code).await?;
    let cursor = after.map(decode_cursor).transpose()?;
    // The balance before the page: everything up to the day before its first line, plus the
    // lines of that day that earlier pages already showed.
    let start_day = match (cursor, from) {
        (Some((date, _, _)), _) => Some(date),
        (None, from) => from,
    };
    let mut opening = match start_day.and_then(|day| day.pred_opt()) {
        Some(day_before) => activity(
            tx,
            company,
            None,
            day_before,
            Closing::Include,
            Some(account.id),
        )
        .await?
        .values()
        .map(Sums::base_net)
        .sum(),
        None => 0,
    };
    if let Some((date, entry, line)) = cursor {
        let sum: Option<i64> = on_conn!(tx, conn => {
            sqlx::query(
                "SELECT CAST(SUM(base_amount_minor) AS BIGINT) AS total FROM ledger_lines \
                 WHERE account_id = $1 AND entry_date = $2 AND (entry_id < $3 OR (entry_id = $3 AND line_no <= $4))",
            )
            .bind(account.id)
            .bind(date)
            .bind(entry)
            .bind(line)
            .fetch_one(&mut *conn)
            .await?
            .opt_int("total")?
        });
        opening += sum.unwrap_or(0);
    }
    let (after_date, after_entry, after_line) =
        cursor.unwrap_or((super::model::EARLIEST_DATE, 0, 0));
    let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
    let rows = on_conn!(tx, conn => {
        sqlx::query(
            "SELECT l.entry_date, l.entry_id, l.line_no, l.currency, l.amount_minor, l.base_amount_minor, \
                    l.party_id, l.memo, e.memo AS entry_memo, e.source_module, e.source_document \
             FROM ledger_lines l JOIN ledger_entries e ON e.id = l.entry_id \
             WHERE l.account_id = $1 AND ($2 IS NULL OR l.entry_date >= $2) AND l.entry_date <= $3 \
               AND (l.entry_date > $4 OR (l.entry_date = $4 AND (l.entry_id > $5 OR (l.entry_id = $5 AND l.line_no > $6)))) \
             ORDER BY l.entry_date, l.entry_id, l.line_no LIMIT $7",
        )
        .bind(account.id)
        .bind(from)
        .bind(to)
        .bind(after_date)
        .bind(after_entry)
        .bind(after_line)
        .bind(fetch)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| -> anyhow::Result<_> {
            Ok((
                (row.date("entry_date")?, row.int("entry_id")?, row.int("line_no")?),
                row.text("currency")?,
                row.int("amount_minor")?,
                row.int("base_amount_minor")?,
                row.opt_int("party_id")?,
                row.opt_text("memo")?.or(Some(row.text("entry_memo")?)).unwrap_or_default(),
                match (row.opt_text("source_module")?, row.opt_text("source_document")?) {
                    (Some(module), Some(document)) => Some(SourceRef { module, document }),
                    _ => None,
                },
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?
    });
    let places = company.base_currency.minor_units;
    let has_more = rows.len() > limit;
    let opening_balance = format_minor(opening, places);
    let mut balance = opening;
    let mut lines = Vec::with_capacity(limit.min(rows.len()));
    let mut last_position = None;
    for (position, code, amount, base_amount, party, memo, source) in rows.into_iter().take(limit) {
        balance += base_amount;
        let (debit, credit) = super::entries::sides(base_amount, places);
        let foreign = (code != company.base_currency.code).then(|| {
            let currency_places = currency::lookup(&code).map_or(2, |c| c.minor_units);
            let (debit, credit) = super::entries::sides(amount, currency_places);
            ForeignBalance {
                currency: code.clone(),
                debit,
                credit,
            }
        });
        lines.push(AccountLine {
            date: position.0,
            entry: position.1,
            line: u32::try_from(position.2).unwrap_or(u32::MAX),
            memo,
            source,
            party,
            debit,
            credit,
            foreign,
            balance: format_minor(balance, places),
        });
        last_position = Some(position);
    }
    Ok(AccountLedger {
        account: account.code,
        name: account.name,
        currency: company.base_currency.code.to_owned(),
        from,
        to,
        opening_balance,
        lines,
        next: last_position.filter(|_| has_more).map(encode_cursor),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> NaiveDate {
        text.parse().expect("a date")
    }

    fn span(first_month: &str, last_day: &str) -> Option<(NaiveDate, NaiveDate)> {
        Some((date(first_month), date(last_day)))
    }

    #[test]
    fn an_empty_ledger_reads_nothing_and_a_date_after_the_last_posting_the_totals() {
        assert_eq!(
            Plan::everything_up_to(None, date("2025-06-15")),
            Plan::Nothing
        );
        let year = span("2025-01-01", "2025-12-28");
        assert_eq!(
            Plan::everything_up_to(year, date("2025-12-28")),
            Plan::Totals
        );
        assert_eq!(
            Plan::everything_up_to(year, date("2026-03-01")),
            Plan::Totals
        );
    }

    #[test]
    fn early_dates_add_up_the_periods_before_and_late_ones_take_the_later_from_the_totals() {
        use BalancePeriod::{Day, FiveDays, Month, Quarter, TenDays};
        let year = span("2025-01-01", "2025-12-28");
        assert_eq!(
            Plan::everything_up_to(year, date("2025-03-12")),
            Plan::Periods(vec![
                (Month, date("2025-01-01"), date("2025-02-01")),
                (TenDays, date("2025-03-01"), date("2025-03-01")),
                (Day, date("2025-03-11"), date("2025-03-12")),
            ])
        );
        assert_eq!(
            Plan::everything_up_to(year, date("2025-06-15")),
            Plan::Periods(vec![
                (Quarter, date("2025-01-01"), date("2025-01-01")),
                (Month, date("2025-04-01"), date("2025-05-01")),
                (TenDays, date("2025-06-01"), date("2025-06-01")),
                (FiveDays, date("2025-06-11"), date("2025-06-11")),
            ])
        );
        // The later periods run to the end of the last posting's quarter: December is whole.
        assert_eq!(
            Plan::everything_up_to(year, date("2025-10-20")),
            Plan::TotalsLess(vec![
                (Month, date("2025-11-01"), date("2025-12-01")),
                (TenDays, date("2025-10-21"), date("2025-10-21")),
            ])
        );
        // Nothing is posted before February: the first quarter is read whole.
        assert_eq!(
            Plan::everything_up_to(span("2025-02-01", "2025-12-28"), date("2025-06-30")),
            Plan::Periods(vec![(Quarter, date("2025-01-01"), date("2025-04-01"))])
        );
        // Before the first posting the periods hold nothing, so none are read.
        assert_eq!(
            Plan::everything_up_to(year, date("2024-12-31")),
            Plan::Periods(Vec::new())
        );
    }
}
