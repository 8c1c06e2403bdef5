//! What an admin configures: the opportunity stages and their probabilities, the reasons a
//! deal is lost, and how new leads are assigned.

use keel_sdk::router::Params;
use keel_sdk::storage::Collection;
use keel_sdk::{Error, FieldErrors, Request, Response};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::perm;

const SETTINGS: Collection<serde_json::Value> = Collection::new("settings");

const STAGES_KEY: &str = "stages";
const LOST_REASONS_KEY: &str = "lost-reasons";
const ASSIGNMENT_KEY: &str = "assignment";

const STAGES_MAX: usize = 30;
const LOST_REASONS_MAX: usize = 50;
const NAME_CHARS_MAX: usize = 60;
const REPS_MAX: usize = 500;
const TERRITORIES_MAX: usize = 200;

/// Whether a stage is still in play or ends the deal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Open,
    Won,
    Lost,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub name: String,
    /// Percent, 0 to 100: how likely a deal in this stage closes won.
    pub probability: Decimal,
    #[serde(default = "open_kind")]
    pub kind: StageKind,
}

fn open_kind() -> StageKind {
    StageKind::Open
}

/// The default pipeline: four open stages, then won and lost.
fn default_stages() -> Vec<Stage> {
    [
        ("prospecting", 10, StageKind::Open),
        ("qualification", 20, StageKind::Open),
        ("proposal", 50, StageKind::Open),
        ("negotiation", 75, StageKind::Open),
        ("won", 100, StageKind::Won),
        ("lost", 0, StageKind::Lost),
    ]
    .into_iter()
    .map(|(name, probability, kind)| Stage {
        name: name.to_owned(),
        probability: Decimal::from(probability),
        kind,
    })
    .collect()
}

fn default_lost_reasons() -> Vec<String> {
    ["price", "competitor", "no decision", "timing", "other"]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// How new leads without an owner get one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    pub mode: AssignmentMode,
    /// Reps taking turns (round robin), or those taking leads no territory matches.
    #[serde(default)]
    pub reps: Vec<i64>,
    /// For `territory`: the first territory listing a lead's country takes it, its reps in
    /// turn.
    #[serde(default)]
    pub territories: Vec<Territory>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignmentMode {
    /// A lead belongs to whoever captured it; web-form leads stay unassigned.
    #[default]
    None,
    RoundRobin,
    Territory,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Territory {
    pub name: String,
    /// ISO 3166-1 alpha-2 country codes.
    pub countries: Vec<String>,
    pub reps: Vec<i64>,
}

/// Everything configured, as `GET /settings` shows it.
#[derive(Debug, Serialize)]
pub struct Settings {
    pub stages: Vec<Stage>,
    pub lost_reasons: Vec<String>,
    pub assignment: Assignment,
}

fn load<T: serde::de::DeserializeOwned>(
    key: &str,
    default: impl FnOnce() -> T,
) -> Result<T, Error> {
    match SETTINGS.get(key)? {
        Some(value) => serde_json::from_value(value)
            .map_err(|e| Error::Internal(format!("the stored setting {key} is unreadable: {e}"))),
        None => Ok(default()),
    }
}

fn store<T: Serialize>(key: &str, value: &T) -> Result<(), Error> {
    let value = serde_json::to_value(value)
        .map_err(|e| Error::Internal(format!("serializing the setting {key}: {e}")))?;
    SETTINGS.put(key, &value)
}

pub fn stages() -> Result<Vec<Stage>, Error> {
    load(STAGES_KEY, default_stages)
}

pub fn lost_reasons() -> Result<Vec<String>, Error> {
    load(LOST_REASONS_KEY, default_lost_reasons)
}

pub fn assignment() -> Result<Assignment, Error> {
    load(ASSIGNMENT_KEY, Assignment::default)
}

/// The stage called `name`, or an invalid `field` listing the ones there are.
pub fn stage(stages: &[Stage], field: &str, name: &str) -> Result<Stage, Error> {
    stages
        .iter()
        .find(|s| s.name == name)
        .cloned()
        .ok_or_else(|| {
            let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
            Error::invalid(
                field,
                format!(
                    "{name:?} is not a stage; the stages are {}",
                    names.join(", ")
                ),
            )
        })
}

/// The first stage of the given kind.
pub fn stage_of_kind(stages: &[Stage], kind: StageKind) -> Result<Stage, Error> {
    stages
        .iter()
        .find(|s| s.kind == kind)
        .cloned()
        .ok_or_else(|| Error::Internal(format!("the stages have no {kind:?} stage")))
}

pub fn get(_request: &Request, _: &Params) -> Result<Response, Error> {
    keel_sdk::require(crate::perm::OPPORTUNITIES_READ)
        .or_else(|_| keel_sdk::require(perm::LEADS_READ))?;
    let settings = Settings {
        stages: stages()?,
        lost_reasons: lost_reasons()?,
        assignment: assignment()?,
    };
    Ok(Response::json(200, &settings))
}

pub fn put_stages(request: &Request, _: &Params) -> Result<Response, Error> {
    keel_sdk::require(perm::SETTINGS_WRITE)?;
    let stages: Vec<Stage> = request.json()?;
    check_stages(&stages)?;
    store(STAGES_KEY, &stages)?;
    Ok(Response::json(200, &stages))
}

/// A pipeline needs at least one open stage, exactly one won and one lost stage, unique names
/// and probabilities from 0 to 100.
fn check_stages(stages: &[Stage]) -> Result<(), Error> {
    let mut errors = FieldErrors::new();
    if stages.len() > STAGES_MAX {
        errors.add("", format!("at most {STAGES_MAX} stages"));
    }
    for (i, stage) in stages.iter().enumerate() {
        check_name(&mut errors, &format!("[{i}].name"), &stage.name);
        if stages[..i].iter().any(|s| s.name == stage.name) {
            errors.add(
                format!("[{i}].name"),
                format!("{:?} appears twice", stage.name),
            );
        }
        if stage.probability < Decimal::ZERO || stage.probability > Decimal::ONE_HUNDRED {
            errors.add(
                format!("[{i}].probability"),
                "is a percentage from 0 to 100",
            );
        }
    }
    for (kind, what) in [(StageKind::Won, "won"), (StageKind::Lost, "lost")] {
        let count = stages.iter().filter(|s| s.kind == kind).count();
        if count != 1 {
            errors.add(
                "",
                format!("exactly one stage is of kind {what}; {count} are"),
            );
        }
    }
    if !stages.iter().any(|s| s.kind == StageKind::Open) {
        errors.add("", "at least one stage is of kind open");
    }
    errors.finish()
}

fn check_name(errors: &mut FieldErrors, field: &str, name: &str) {
    if name.trim().is_empty() || name.chars().count() > NAME_CHARS_MAX || name.trim() != name {
        errors.add(
            field,
            format!("is 1 to {NAME_CHARS_MAX} characters without leading or trailing spaces"),
        );
    }
}

pub fn put_lost_reasons(request: &Request, _: &Params) -> Result<Response, Error> {
    keel_sdk::require(perm::SETTINGS_WRITE)?;
    let reasons: Vec<String> = request.json()?;
    let mut errors = FieldErrors::new();
    if reasons.is_empty() || reasons.len() > LOST_REASONS_MAX {
        errors.add("", format!("1 to {LOST_REASONS_MAX} reasons"));
    }
    for (i, reason) in reasons.iter().enumerate() {
        check_name(&mut errors, &format!("[{i}]"), reason);
        if reasons[..i].contains(reason) {
            errors.add(format!("[{i}]"), format!("{reason:?} appears twice"));
        }
    }
    errors.finish()?;
    store(LOST_REASONS_KEY, &reasons)?;
    Ok(Response::json(200, &reasons))
}

pub fn put_assignment(request: &Request, _: &Params) -> Result<Response, Error> {
    keel_sdk::require(perm::SETTINGS_WRITE)?;
    let mut assignment: Assignment = request.json()?;
    let mut errors = FieldErrors::new();
    if assignment.reps.len() > REPS_MAX {
        errors.add("reps", format!("at most {REPS_MAX} reps"));
    }
    if assignment.territories.len() > TERRITORIES_MAX {
        errors.add(
            "territories",
            format!("at most {TERRITORIES_MAX} territories"),
        );
    }
    match assignment.mode {
        AssignmentMode::RoundRobin if assignment.reps.is_empty() => {
            errors.add("reps", "round robin needs at least one rep");
        }
        AssignmentMode::Territory if assignment.territories.is_empty() => {
            errors.add(
                "territories",
                "territory assignment needs at least one territory",
            );
        }
        _ => {}
    }
    for (i, territory) in assignment.territories.iter_mut().enumerate() {
        check_name(
            &mut errors,
            &format!("territories[{i}].name"),
            &territory.name,
        );
        if territory.reps.is_empty() || territory.reps.len() > REPS_MAX {
            errors.add(
                format!("territories[{i}].reps"),
                format!("1 to {REPS_MAX} reps"),
            );
        }
        for (j, country) in territory.countries.iter_mut().enumerate() {
            *country = country.trim().to_ascii_uppercase();
            if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
                errors.add(
                    format!("territories[{i}].countries[{j}]"),
                    "is an ISO 3166-1 alpha-2 country code such as DE",
                );
            }
        }
    }
    errors.finish()?;
    store(ASSIGNMENT_KEY, &assignment)?;
    Ok(Response::json(200, &assignment))
}
