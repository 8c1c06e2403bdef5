//! The pipeline and forecast. Every opportunity counts in one running total per (period,
//! owner, status, stage, currency) — open deals in the month they are expected to close,
//! closed ones in the month they closed — kept up to date in the transaction that changes
//! the opportunity. A report therefore reads totals, not opportunities: its cost grows with
//! months × owners × stages, not with the number of deals.

use std::collections::BTreeMap;

use keel_sdk::dates::Datelike as _;
use keel_sdk::router::Params;
use keel_sdk::storage::Collection;
use keel_sdk::{Error, Request, Response, dates};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::opportunities::{Opportunity, Status};
use crate::owned;
use crate::perm;
use crate::settings;

pub const TOTALS: Collection<Totals> = Collection::new("pipeline-totals");

/// Totals read per host call while reporting.
const PAGE_ITEMS: u32 = 1_000;
/// Longest range a report covers, in months.
const REPORT_MONTHS_MAX: u32 = 120;

/// The opportunities of one owner in one stage and currency, closing (or closed) in one month.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Totals {
    /// `YYYY-MM`.
    pub period: String,
    /// 0 for unowned opportunities.
    pub owner: i64,
    pub status: Status,
    pub stage: String,
    pub currency: String,
    pub count: i64,
    pub amount: Decimal,
    /// Amount × probability: what the forecast expects.
    pub weighted: Decimal,
    /// Days from opening to closing, summed over closed opportunities.
    pub cycle_days: i64,
}

fn period_of(opportunity: &Opportunity) -> String {
    let date = match opportunity.status {
        Status::Open => &opportunity.expected_close,
        Status::Won | Status::Lost => opportunity
            .closed_on
            .as_ref()
            .unwrap_or(&opportunity.expected_close),
    };
    date.chars().take(7).collect()
}

fn cycle_days(opportunity: &Opportunity) -> i64 {
    let (Some(closed), Ok(opened)) = (
        opportunity.closed_on.as_deref(),
        dates::parse("opened_on", &opportunity.opened_on),
    ) else {
        return 0;
    };
    dates::parse("closed_on", closed)
        .map(|closed| (closed - opened).num_days())
        .unwrap_or(0)
}

/// The key of the totals an opportunity counts in.
pub fn key_of(opportunity: &Opportunity) -> String {
    let status = json!(opportunity.status);
    format!(
        "{}|{}|{}|{}|{}",
        period_of(opportunity),
        opportunity.owner.unwrap_or(0),
        status.as_str().unwrap_or_default(),
        opportunity.stage,
        opportunity.currency
    )
}

/// Adds (`sign` 1) or removes (`sign` -1) an opportunity's weight in the totals.
pub fn count(opportunity: &Opportunity, sign: i64) -> Result<(), Error> {
    let owner = opportunity.owner.unwrap_or(0);
    let key = key_of(opportunity);
    let mut totals = TOTALS.get_for_update(&key)?.unwrap_or_else(|| Totals {
        period: period_of(opportunity),
        owner,
        status: opportunity.status,
        stage: opportunity.stage.clone(),
        currency: opportunity.currency.clone(),
        count: 0,
        amount: Decimal::ZERO,
        weighted: Decimal::ZERO,
        cycle_days: 0,
    });
    let factor = Decimal::from(sign);
    let weighted = match opportunity.status {
        Status::Open => opportunity.amount * opportunity.probability / Decimal::ONE_HUNDRED,
        Status::Won => opportunity.amount,
        Status::Lost => Decimal::ZERO,
    };
    totals.count += sign;
    totals.amount += factor * opportunity.amount;
    totals.weighted += factor * weighted;
    totals.cycle_days += sign * cycle_days(opportunity);
    if totals.count == 0 {
        TOTALS.delete(&key)?;
    } else {
        TOTALS.put(&key, &totals)?;
    }
    Ok(())
}

/// Count, amount and weighted amount of a group of opportunities.
#[derive(Debug, Clone, Default, Serialize)]
struct Sum {
    count: i64,
    amount: Decimal,
    weighted: Decimal,
}

impl Sum {
    fn add(&mut self, totals: &Totals) {
        self.count += totals.count;
        self.amount += totals.amount;
        self.weighted += totals.weighted;
    }
}

#[derive(Debug, Default, Serialize)]
struct OwnerLine {
    owner: Option<i64>,
    open: Sum,
    won: Sum,
    lost: Sum,
}

#[derive(Debug, Default, Serialize)]
struct PeriodLine {
    period: String,
    /// Open deals expected to close in the month.
    open: Sum,
    /// Deals won in the month.
    won: Sum,
    /// Won plus the open deals weighted by probability.
    forecast: Decimal,
}

#[derive(Debug, Default, Serialize)]
struct StageLine {
    stage: String,
    sum: Sum,
}

/// The report of one currency.
#[derive(Debug, Default, Serialize)]
struct CurrencyReport {
    currency: String,
    open: Sum,
    won: Sum,
    lost: Sum,
    /// Open deals by stage, in the configured order of stages.
    by_stage: Vec<StageLine>,
    by_owner: Vec<OwnerLine>,
    by_period: Vec<PeriodLine>,
    /// Won ÷ (won + lost), as a percentage with two decimals; absent with nothing closed.
    win_rate: Option<Decimal>,
    /// Won amount ÷ deals won.
    average_deal_size: Option<Decimal>,
    /// Days from opening to winning, on average.
    average_cycle_days: Option<Decimal>,
    #[serde(skip)]
    won_cycle_days: i64,
}

#[derive(Debug, Serialize)]
struct Report {
    from: String,
    to: String,
    currencies: Vec<CurrencyReport>,
}

/// Rounded half away from zero to exactly `places` decimals, as reports show them.
fn to_places(value: Decimal, places: u32) -> Decimal {
    let mut rounded =
        value.round_dp_with_strategy(places, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(places);
    rounded
}

/// A month as `YYYY-MM`, checked.
fn month(field: &str, text: &str) -> Result<(i32, u32), Error> {
    dates::parse(field, &format!("{text}-01"))
        .map(|date| (date.year(), date.month()))
        .map_err(|_| Error::invalid(field, format!("{text:?} is not a month as YYYY-MM")))
}

fn next_month((year, month): (i32, u32)) -> (i32, u32) {
    if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    }
}

fn months_between(from: (i32, u32), to: (i32, u32)) -> i64 {
    i64::from(to.0 - from.0) * 12 + i64::from(to.1) - i64::from(from.1)
}

/// `GET /pipeline?from=YYYY-MM&to=YYYY-MM&owner=&currency=`: open deals by stage, owner and
/// month, the forecast, win rate, average deal size and cycle time, per currency; over the
/// owners the user's `plugins.sfa.pipeline:read` reaches. The months default to this year.
pub fn report(request: &Request, _: &Params) -> Result<Response, Error> {
    let reach = owned::reach(perm::PIPELINE_READ)?;
    let this_year = dates::format(dates::today())[..4].to_owned();
    let from_text = request
        .query_param("from")
        .unwrap_or_else(|| format!("{this_year}-01"));
    let to_text = request
        .query_param("to")
        .unwrap_or_else(|| format!("{this_year}-12"));
    let from = month("from", &from_text)?;
    let to = month("to", &to_text)?;
    let span = months_between(from, to);
    if span < 0 || span >= i64::from(REPORT_MONTHS_MAX) {
        return Err(Error::invalid(
            "to",
            format!("is from `from` up to {REPORT_MONTHS_MAX} months after it"),
        ));
    }
    let owner = owned::owner_param(request)?;
    let currency = request
        .query_param("currency")
        .map(|c| c.to_ascii_uppercase());
    let (end_year, end_month) = next_month(to);
    let from_key = json!(format!("{}-{:02}", from.0, from.1));
    let to_key = json!(format!("{end_year}-{end_month:02}"));
    let stages = settings::stages()?;
    let mut by_currency: BTreeMap<String, CurrencyReport> = BTreeMap::new();
    let mut stage_sums: BTreeMap<(String, String), Sum> = BTreeMap::new();
    let mut owner_lines: BTreeMap<(String, i64), OwnerLine> = BTreeMap::new();
    let mut period_lines: BTreeMap<(String, String), PeriodLine> = BTreeMap::new();
    let mut after = None;
    loop {
        let page = TOTALS.find_range(
            "by-period",
            &[],
            Some(&from_key),
            Some(&to_key),
            false,
            after.as_deref(),
            PAGE_ITEMS,
        )?;
        for (_, totals) in &page.items {
            let totals_owner = (totals.owner != 0).then_some(totals.owner);
            if !reach.covers(totals_owner)
                || owner.is_some_and(|o| Some(o) != totals_owner)
                || currency.as_ref().is_some_and(|c| *c != totals.currency)
            {
                continue;
            }
            let report = by_currency
                .entry(totals.currency.clone())
                .or_insert_with(|| CurrencyReport {
                    currency: totals.currency.clone(),
                    ..CurrencyReport::default()
                });
            let owner_line = owner_lines
                .entry((totals.currency.clone(), totals.owner))
                .or_insert_with(|| OwnerLine {
                    owner: totals_owner,
                    ..OwnerLine::default()
                });
            let period_line = period_lines
                .entry((totals.currency.clone(), totals.period.clone()))
                .or_insert_with(|| PeriodLine {
                    period: totals.period.clone(),
                    ..PeriodLine::default()
                });
            match totals.status {
                Status::Open => {
                    report.open.add(totals);
                    owner_line.open.add(totals);
                    period_line.open.add(totals);
                    stage_sums
                        .entry((totals.currency.clone(), totals.stage.clone()))
                        .or_default()
                        .add(totals);
                }
                Status::Won => {
                    report.won.add(totals);
                    report.won_cycle_days += totals.cycle_days;
                    owner_line.won.add(totals);
                    period_line.won.add(totals);
                }
                Status::Lost => {
                    report.lost.add(totals);
                    owner_line.lost.add(totals);
                }
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    for ((currency, _), line) in owner_lines {
        if let Some(report) = by_currency.get_mut(&currency) {
            report.by_owner.push(line);
        }
    }
    for ((currency, _), mut line) in period_lines {
        line.forecast = to_places(line.won.amount + line.open.weighted, 2);
        if let Some(report) = by_currency.get_mut(&currency) {
            report.by_period.push(line);
        }
    }
    for report in by_currency.values_mut() {
        // Stages in their configured order, then any a change of settings left behind.
        let mut known: Vec<StageLine> = Vec::new();
        for stage in &stages {
            if let Some(sum) = stage_sums.remove(&(report.currency.clone(), stage.name.clone())) {
                known.push(StageLine {
                    stage: stage.name.clone(),
                    sum,
                });
            }
        }
        let leftover: Vec<(String, String)> = stage_sums
            .keys()
            .filter(|(currency, _)| *currency == report.currency)
            .cloned()
            .collect();
        for key in leftover {
            if let Some(sum) = stage_sums.remove(&key) {
                known.push(StageLine { stage: key.1, sum });
            }
        }
        report.by_stage = known;
        let closed = report.won.count + report.lost.count;
        if closed > 0 {
            report.win_rate = Some(to_places(
                Decimal::from(report.won.count) * Decimal::ONE_HUNDRED / Decimal::from(closed),
                2,
            ));
        }
        if report.won.count > 0 {
            let won = Decimal::from(report.won.count);
            report.average_deal_size = Some(to_places(report.won.amount / won, 2));
            report.average_cycle_days =
                Some(to_places(Decimal::from(report.won_cycle_days) / won, 1));
        }
    }
    let report = Report {
        from: format!("{}-{:02}", from.0, from.1),
        to: format!("{}-{:02}", to.0, to.1),
        currencies: by_currency.into_values().collect(),
    };
    Ok(Response::json(200, &report))
}
