//! Activities: calls, meetings, tasks and notes about a party, a lead or an opportunity. A
//! task stays open until it is done; "my open tasks" lists the user's by due date.

use keel_sdk::router::Params;
use keel_sdk::storage::{self, Collection};
use keel_sdk::{Error, FieldErrors, Request, Response, dates, parties};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::owned::{self, Listed, Paging};
use crate::{leads, not_found, opportunities, perm};

pub const ACTIVITIES: Collection<Activity> = Collection::new("activities");

const SUBJECT_CHARS_MAX: usize = 200;
const NOTES_CHARS_MAX: usize = 10_000;
/// Open tasks "my open tasks" shows at most.
const MY_TASKS_MAX: u32 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Call,
    Meeting,
    Task,
    Note,
}

/// What an activity is about; at least one is given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Regarding {
    pub party: Option<i64>,
    pub lead: Option<String>,
    pub opportunity: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Activity {
    pub number: String,
    pub kind: Kind,
    pub subject: String,
    pub notes: Option<String>,
    /// When it happened or is planned.
    pub date: String,
    /// For tasks: when it is due.
    pub due: Option<String>,
    /// A task not yet done.
    pub open: bool,
    pub done_on: Option<String>,
    pub owner: Option<i64>,
    pub regarding: Regarding,
    pub created_by: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewActivity {
    kind: Kind,
    subject: String,
    notes: Option<String>,
    /// Today when absent.
    date: Option<String>,
    due: Option<String>,
    /// The acting user when absent.
    owner: Option<i64>,
    regarding: Regarding,
}

/// `POST /activities`.
pub fn create(request: &Request, _: &Params) -> Result<Response, Error> {
    keel_sdk::require(perm::ACTIVITIES_WRITE)?;
    let new: NewActivity = request.json()?;
    let mut errors = FieldErrors::new();
    let subject = new.subject.trim().to_owned();
    if subject.is_empty() || subject.chars().count() > SUBJECT_CHARS_MAX {
        errors.add("subject", format!("is 1 to {SUBJECT_CHARS_MAX} characters"));
    }
    if new
        .notes
        .as_ref()
        .is_some_and(|n| n.chars().count() > NOTES_CHARS_MAX)
    {
        errors.add("notes", format!("has at most {NOTES_CHARS_MAX} characters"));
    }
    let date = crate::date_or_today(&mut errors, "date", new.date.as_deref());
    let due = match &new.due {
        Some(_) if new.kind != Kind::Task => {
            errors.add("due", "only tasks have a due date");
            None
        }
        Some(text) => Some(crate::check_date(&mut errors, "due", text)),
        None => None,
    };
    check_regarding(&mut errors, &new.regarding)?;
    errors.finish()?;
    let owner = new.owner.or_else(keel_sdk::user_id);
    if owner != keel_sdk::user_id() {
        keel_sdk::require(perm::ASSIGN)?;
    }
    let activity = Activity {
        number: format!("A-{:06}", storage::next_number("activities")?),
        kind: new.kind,
        subject,
        notes: new.notes,
        date,
        due,
        open: new.kind == Kind::Task,
        done_on: None,
        owner,
        regarding: new.regarding,
        created_by: keel_sdk::user_id(),
    };
    ACTIVITIES.put(&activity.number, &activity)?;
    Ok(Response::json(201, &activity))
}

/// At least one record, each one the user can see.
fn check_regarding(errors: &mut FieldErrors, regarding: &Regarding) -> Result<(), Error> {
    if *regarding == Regarding::default() {
        errors.add("regarding", "names a party, a lead or an opportunity");
    }
    if let Some(party) = regarding.party {
        match parties::get(party) {
            Ok(_) => {}
            Err(Error::NotFound(_)) => {
                errors.add(
                    "regarding.party",
                    format!("there is no party {party} that you can see"),
                );
            }
            Err(other) => return Err(other),
        }
    }
    if let Some(lead) = &regarding.lead {
        match leads::load(lead, perm::LEADS_READ) {
            Ok(_) => {}
            Err(Error::NotFound(message) | Error::Denied(message)) => {
                errors.add("regarding.lead", message);
            }
            Err(other) => return Err(other),
        }
    }
    if let Some(opportunity) = &regarding.opportunity {
        match opportunities::load(opportunity, perm::OPPORTUNITIES_READ) {
            Ok(_) => {}
            Err(Error::NotFound(message) | Error::Denied(message)) => {
                errors.add("regarding.opportunity", message);
            }
            Err(other) => return Err(other),
        }
    }
    Ok(())
}

/// `GET /activities?party=|lead=|opportunity=`: newest first, those within reach.
pub fn list(request: &Request, _: &Params) -> Result<Response, Error> {
    let reach = owned::reach(perm::ACTIVITIES_READ)?;
    let paging = Paging::of(request)?;
    let (index, value) = if let Some(party) = request.query_param("party") {
        let party: i64 = party
            .parse()
            .map_err(|_| Error::invalid("party", "is a party id"))?;
        ("by-party", json!(party))
    } else if let Some(lead) = request.query_param("lead") {
        ("by-lead", json!(lead))
    } else if let Some(opportunity) = request.query_param("opportunity") {
        ("by-opportunity", json!(opportunity))
    } else {
        return Err(Error::invalid(
            "party",
            "name the party, lead or opportunity whose activities to list",
        ));
    };
    let listed = regarding(index, value, &reach, &paging)?;
    Ok(Response::json(200, &listed))
}

/// Activities about one record, newest first, within `reach`.
pub fn regarding(
    index: &str,
    value: Value,
    reach: &keel_sdk::Reach,
    paging: &Paging,
) -> Result<Listed<Activity>, Error> {
    let page = ACTIVITIES.find_range(
        index,
        &[value],
        None,
        None,
        true,
        paging.after.as_deref(),
        paging.limit,
    )?;
    Ok(Listed {
        items: page
            .items
            .into_iter()
            .map(|(_, a)| a)
            .filter(|a| reach.covers(a.owner))
            .collect(),
        next: page.next,
    })
}

/// `POST /activities/{number}/done`.
pub fn done(_request: &Request, params: &Params) -> Result<Response, Error> {
    let number = params.get("number")?;
    let reach = owned::reach(perm::ACTIVITIES_WRITE)?;
    let mut activity = match ACTIVITIES.get_for_update(number)? {
        Some(activity) if reach.covers(activity.owner) => activity,
        _ => return Err(not_found("activity", number)),
    };
    if !activity.open {
        return Err(Error::Conflict(match &activity.done_on {
            Some(on) => format!("activity {number} was done on {on}"),
            None => format!(
                "activity {number} is a {:?}, not a task to be done",
                activity.kind
            ),
        }));
    }
    activity.open = false;
    activity.done_on = Some(dates::format(dates::today()));
    ACTIVITIES.put(&activity.number, &activity)?;
    Ok(Response::json(200, &activity))
}

#[derive(Debug, Serialize)]
struct OpenTask {
    #[serde(flatten)]
    activity: Activity,
    overdue: bool,
}

#[derive(Debug, Serialize)]
struct MyTasks {
    overdue: usize,
    tasks: Vec<OpenTask>,
}

/// `GET /my/tasks`: the acting user's open tasks, those without a due date first, then by
/// due date, with the overdue ones marked.
pub fn my_open_tasks(_request: &Request, _: &Params) -> Result<Response, Error> {
    keel_sdk::require(perm::ACTIVITIES_READ)?;
    let me = keel_sdk::user_id()
        .ok_or_else(|| Error::Denied("\"my tasks\" needs a signed-in user".to_owned()))?;
    let today = dates::format(dates::today());
    let page = ACTIVITIES.find("by-owner", &[json!(me), json!(true)], None, MY_TASKS_MAX)?;
    let tasks: Vec<OpenTask> = page
        .items
        .into_iter()
        .map(|(_, activity)| OpenTask {
            overdue: activity.due.as_ref().is_some_and(|due| *due < today),
            activity,
        })
        .collect();
    Ok(Response::json(
        200,
        &MyTasks {
            overdue: tasks.iter().filter(|t| t.overdue).count(),
            tasks,
        },
    ))
}
