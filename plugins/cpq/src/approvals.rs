//! Discount approvals. Settings name levels with a threshold and a permission; a quote whose
//! discount exceeds a level's threshold needs that level's approval, and every such level
//! approves in ascending order (a chain). Each decision is its own record in `approvals`, so
//! the host's audit trail shows who decided what, when, for which quote.

use keel_sdk::router::Params;
use keel_sdk::storage::Collection;
use keel_sdk::{Error, FieldErrors, Reach, Request, Response, dates};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::amount;
use crate::input::{self, Object};
use crate::quotes::{self, Quote, Status};

pub const SETTINGS: Collection<Settings> = Collection::new("settings");
const SETTINGS_KEY: &str = "approvals";
/// One record per decision, keyed `<quote>/<version>/<step>`.
pub const DECISIONS_COLLECTION: &str = "approvals";
pub const DECISIONS: Collection<Decision> = Collection::new(DECISIONS_COLLECTION);
pub const BY_QUOTE: &str = "by-quote";

/// Most levels of a chain: a handful of management layers.
pub const LEVELS_MAX: usize = 10;
pub const LEVEL_NAME_CHARS_MAX: usize = 64;
pub const PERMISSION_CHARS_MAX: usize = 128;
/// Longest comment or reason of a decision.
pub const REASON_CHARS_MAX: usize = 2_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Level {
    pub name: String,
    /// A quote whose discount is above this percentage needs the level.
    #[serde(with = "amount::canonical")]
    pub above_percent: Decimal,
    /// What an approver at this level holds; its scope (own, team, all) says whose quotes.
    pub permission: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub levels: Vec<Level>,
}

impl Default for Settings {
    fn default() -> Self {
        let level = |name: &str, above: i64, permission: &str| Level {
            name: name.to_owned(),
            above_percent: Decimal::from(above),
            permission: permission.to_owned(),
        };
        Self {
            levels: vec![
                level("sales-manager", 10, "plugins.cpq.discounts:approve-manager"),
                level(
                    "sales-director",
                    25,
                    "plugins.cpq.discounts:approve-director",
                ),
            ],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Approved,
    Rejected,
}

/// One level of a quote version's chain, with its decision once made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub level: String,
    #[serde(with = "amount::canonical")]
    pub above_percent: Decimal,
    pub permission: String,
    pub status: StepStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_on: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// A decision as its own record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub quote: String,
    pub version: u32,
    pub level: String,
    pub permission: String,
    pub decision: StepStatus,
    #[serde(with = "amount::canonical")]
    pub discount_percent: Decimal,
    pub decided_by: Option<i64>,
    pub decided_on: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// The chain a discount needs: every level whose threshold it exceeds, in ascending order.
pub fn chain(levels: &[Level], discount_percent: Decimal) -> Vec<Step> {
    levels
        .iter()
        .filter(|level| discount_percent > level.above_percent)
        .map(|level| Step {
            level: level.name.clone(),
            above_percent: level.above_percent,
            permission: level.permission.clone(),
            status: StepStatus::Pending,
            decided_by: None,
            decided_on: None,
            comment: None,
        })
        .collect()
}

/// The first step still waiting for a decision.
pub fn next_pending(steps: &[Step]) -> Option<usize> {
    steps.iter().position(|s| s.status == StepStatus::Pending)
}

fn is_level_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= LEVEL_NAME_CHARS_MAX
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A permission as roles hold it: `resource:action`, without spaces.
fn is_permission(text: &str) -> bool {
    text.len() <= PERMISSION_CHARS_MAX
        && text.split_once(':').is_some_and(|(resource, action)| {
            !resource.is_empty()
                && !action.is_empty()
                && !action.contains(':')
                && !text.contains(char::is_whitespace)
        })
}

/// Reads a `PUT /settings/approvals` body: levels with distinct names, ascending thresholds
/// from 0 to below 100, and permissions as `resource:action`.
pub fn read_settings(body: &Value) -> Result<Settings, Error> {
    let object = input::root(body)?;
    let mut errors = FieldErrors::new();
    object.only(&["levels"], &mut errors);
    if !object.has("levels") {
        errors.add("levels", "is required (an empty list turns approvals off)");
    }
    let mut levels: Vec<Level> = Vec::new();
    for (j, item) in object
        .optional_array("levels", LEVELS_MAX, &mut errors)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let path = format!("levels[{j}]");
        let Some(level) = Object::at(item, &path, &mut errors) else {
            continue;
        };
        level.only(&["name", "above_percent", "permission"], &mut errors);
        let name = level.text("name", LEVEL_NAME_CHARS_MAX, &mut errors);
        if let Some(name) = &name {
            if !is_level_name(name) {
                errors.add(level.path("name"), "is lower-case letters, digits and '-'");
            } else if levels.iter().any(|l| &l.name == name) {
                errors.add(level.path("name"), format!("{name} is named twice"));
            }
        }
        let above = level.decimal_within(
            "above_percent",
            Decimal::ZERO,
            Decimal::ONE_HUNDRED,
            true,
            &mut errors,
        );
        if above == Some(Decimal::ONE_HUNDRED) {
            errors.add(
                level.path("above_percent"),
                "is below 100: no discount exceeds 100%",
            );
        } else if let (Some(above), Some(last)) = (above, levels.last())
            && above <= last.above_percent
        {
            errors.add(
                level.path("above_percent"),
                format!(
                    "is more than the previous level's ({}): levels ascend",
                    amount::text(last.above_percent)
                ),
            );
        }
        let permission = level.text("permission", PERMISSION_CHARS_MAX, &mut errors);
        if let Some(permission) = &permission
            && !is_permission(permission)
        {
            errors.add(
                level.path("permission"),
                "is resource:action, e.g. plugins.cpq.discounts:approve-manager",
            );
        }
        if let (Some(name), Some(above_percent), Some(permission)) = (name, above, permission) {
            levels.push(Level {
                name,
                above_percent,
                permission,
            });
        }
    }
    errors.finish()?;
    Ok(Settings { levels })
}

pub fn settings() -> Result<Settings, Error> {
    Ok(SETTINGS.get(SETTINGS_KEY)?.unwrap_or_default())
}

/// Writes the default levels on first enable, so that admins see them and can change them.
pub fn install_defaults() -> Result<(), Error> {
    SETTINGS.put(SETTINGS_KEY, &Settings::default())
}

pub fn show_settings(_: &Request, _: &Params) -> Result<Response, Error> {
    crate::require_catalog_read()?;
    Ok(Response::json(200, &settings()?))
}

pub fn put_settings(request: &Request, _: &Params) -> Result<Response, Error> {
    crate::require(crate::CATALOG_WRITE, "changing the approval settings")?;
    let settings = read_settings(&input::parse_body(&request.body)?)?;
    SETTINGS.put(SETTINGS_KEY, &settings)?;
    Ok(Response::json(200, &settings))
}

/// Loads the latest version of a quote waiting for approval and checks that the acting user
/// may decide its next step: they hold the step's permission with a reach covering the
/// quote's owner, they are not the owner, and they decided no earlier step of this version
/// (each level is a different pair of eyes).
fn decidable(params: &Params) -> Result<(Quote, usize), Error> {
    let quote = quotes::load_latest_for_update(params.get("number")?)?;
    let today = dates::today();
    match quotes::effective_status(&quote, today) {
        Status::PendingApproval => {}
        Status::Expired => return Err(quotes::expired(&quote)),
        other => {
            return Err(Error::Conflict(format!(
                "quote {} is {}; only a quote pending approval takes a decision",
                quote.number,
                other.name()
            )));
        }
    }
    let Some(index) = next_pending(&quote.approvals) else {
        return Err(Error::Conflict(format!(
            "quote {} has no approval step waiting",
            quote.number
        )));
    };
    let step = &quote.approvals[index];
    let reach = Reach::of(&step.permission).ok_or_else(|| {
        Error::Denied(format!(
            "the {} approval of quote {} needs the permission {}",
            step.level, quote.number, step.permission
        ))
    })?;
    if !reach.covers(quote.owner) {
        return Err(Error::Denied(format!(
            "your permission {} does not reach the quotes of the owner of {}",
            step.permission, quote.number
        )));
    }
    let user = keel_sdk::user_id();
    if user.is_some() && user == quote.owner {
        return Err(Error::Denied(format!(
            "nobody approves their own quote; {} needs another approver",
            quote.number
        )));
    }
    if quote.approvals[..index]
        .iter()
        .any(|earlier| user.is_some() && earlier.decided_by == user)
    {
        return Err(Error::Denied(format!(
            "you approved an earlier level of {}; the {} level needs another approver",
            quote.number, step.level
        )));
    }
    Ok((quote, index))
}

fn decide(
    mut quote: Quote,
    index: usize,
    decision: StepStatus,
    comment: Option<String>,
) -> Result<Quote, Error> {
    let today = dates::format(dates::today());
    let user = keel_sdk::user_id();
    let step = &mut quote.approvals[index];
    step.status = decision;
    step.decided_by = user;
    step.decided_on = Some(today.clone());
    step.comment = comment.clone();
    let record = Decision {
        quote: quote.number.clone(),
        version: quote.version,
        level: step.level.clone(),
        permission: step.permission.clone(),
        decision,
        discount_percent: quote.discount_percent,
        decided_by: user,
        decided_on: today,
        comment,
    };
    DECISIONS.put(
        &format!("{}/{:04}/{:02}", quote.number, quote.version, index + 1),
        &record,
    )?;
    quote.status = match decision {
        StepStatus::Rejected => Status::ApprovalRejected,
        _ if next_pending(&quote.approvals).is_none() => Status::Approved,
        _ => Status::PendingApproval,
    };
    quotes::save_latest(&quote)?;
    Ok(quote)
}

pub fn approve(request: &Request, params: &Params) -> Result<Response, Error> {
    let body = input::parse_optional_body(&request.body)?;
    let object = input::root(&body)?;
    let mut errors = FieldErrors::new();
    object.only(&["comment"], &mut errors);
    let comment = object.optional_text("comment", REASON_CHARS_MAX, &mut errors);
    errors.finish()?;
    let (quote, index) = decidable(params)?;
    let quote = decide(quote, index, StepStatus::Approved, comment)?;
    Ok(Response::json(200, &quotes::view(&quote)))
}

pub fn reject(request: &Request, params: &Params) -> Result<Response, Error> {
    let body = input::parse_body(&request.body)?;
    let object = input::root(&body)?;
    let mut errors = FieldErrors::new();
    object.only(&["reason"], &mut errors);
    let reason = object.text("reason", REASON_CHARS_MAX, &mut errors);
    errors.finish()?;
    let (quote, index) = decidable(params)?;
    let quote = decide(quote, index, StepStatus::Rejected, reason)?;
    Ok(Response::json(200, &quotes::view(&quote)))
}

/// `GET /quotes/{number}/approvals`: every decision on every version, oldest first.
pub fn list(_: &Request, params: &Params) -> Result<Response, Error> {
    let quote = quotes::load_readable(params.get("number")?)?;
    let mut decisions = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = DECISIONS.find(
            BY_QUOTE,
            &[json!(quote.number)],
            after.as_deref(),
            crate::STORAGE_PAGE_ITEMS,
        )?;
        decisions.extend(page.items.into_iter().map(|(_, decision)| decision));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(Response::json(200, &json!({ "approvals": decisions })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        text.parse().expect("a decimal")
    }

    #[test]
    fn a_discount_needs_every_level_it_exceeds_in_order() {
        let levels = Settings::default().levels;
        assert!(
            chain(&levels, d("10")).is_empty(),
            "10% is within a rep's limit"
        );
        let manager: Vec<String> = chain(&levels, d("10.5"))
            .into_iter()
            .map(|s| s.level)
            .collect();
        assert_eq!(manager, ["sales-manager"]);
        let both: Vec<String> = chain(&levels, d("30"))
            .into_iter()
            .map(|s| s.level)
            .collect();
        assert_eq!(both, ["sales-manager", "sales-director"]);
    }

    #[test]
    fn the_next_step_is_the_first_pending_one() {
        let mut steps = chain(&Settings::default().levels, d("30"));
        assert_eq!(next_pending(&steps), Some(0));
        steps[0].status = StepStatus::Approved;
        assert_eq!(next_pending(&steps), Some(1));
        steps[1].status = StepStatus::Approved;
        assert_eq!(next_pending(&steps), None);
    }

    #[test]
    fn settings_must_ascend_and_name_real_permissions() {
        let ok = read_settings(&json!({ "levels": [
            { "name": "lead", "above_percent": "5", "permission": "plugins.cpq.discounts:approve-lead" }
        ] }))
        .expect("valid");
        assert_eq!(ok.levels[0].above_percent, d("5"));
        assert_eq!(
            read_settings(&json!({ "levels": [] }))
                .expect("valid")
                .levels,
            []
        );
        let refused = read_settings(&json!({ "levels": [
            { "name": "a", "above_percent": "20", "permission": "x:y" },
            { "name": "a", "above_percent": "10", "permission": "no permission" },
            { "name": "Big Boss", "above_percent": "100", "permission": "x:y" }
        ] }));
        let fields: Vec<String> = match refused {
            Err(Error::Invalid(list)) => list.into_iter().map(|e| e.field).collect(),
            _ => Vec::new(),
        };
        assert_eq!(
            fields,
            [
                "levels[1].name",
                "levels[1].above_percent",
                "levels[1].permission",
                "levels[2].name",
                "levels[2].above_percent"
            ]
        );
    }
}
