//! Leads: captured through the API or the public web form, checked against the customer
//! master for duplicates, assigned, worked, qualified or disqualified, and converted once
//! into a customer (with a contact) and, usually, an opportunity.

use keel_sdk::router::Params;
use keel_sdk::storage::{self, Collection};
use keel_sdk::{Error, FieldErrors, Request, Response, dates, parties};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::opportunities::{self, NewOpportunity};
use crate::owned::{self, OwnerIndexes, Paging};
use crate::{assignment, not_found, perm};

pub const LEADS: Collection<Lead> = Collection::new("leads");

const INDEXES: OwnerIndexes = OwnerIndexes {
    by_owner: "by-owner",
    by_rest: "by-status",
};

const TEXT_CHARS_MAX: usize = 200;
const NOTES_CHARS_MAX: usize = 4_000;
const EMAIL_CHARS_MAX: usize = 254;
/// Candidates a duplicate check keeps per field it searches by.
const DUPLICATES_PER_SEARCH: u32 = 5;
/// The web form's hidden field: people leave it empty, form-filling robots do not.
const HONEYPOT_FIELD: &str = "website";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeadStatus {
    New,
    Working,
    Qualified,
    Disqualified,
    Converted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lead {
    pub number: String,
    pub status: LeadStatus,
    pub first_name: Option<String>,
    pub last_name: String,
    pub company: Option<String>,
    pub title: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    /// ISO 3166-1 alpha-2.
    pub country: Option<String>,
    /// Where it came from: `web`, `api`, or what the capturing system says.
    pub source: String,
    pub notes: Option<String>,
    pub owner: Option<i64>,
    pub captured_on: String,
    pub captured_by: Option<i64>,
    /// Parties that look like this lead when it was captured (or converted).
    pub possible_duplicates: Vec<Duplicate>,
    pub disqualified_reason: Option<String>,
    pub converted: Option<Conversion>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Duplicate {
    pub party: i64,
    pub name: String,
    /// `email` or `company`.
    pub matched_on: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Conversion {
    pub party: i64,
    pub contact: Option<i64>,
    pub opportunity: Option<String>,
    pub on: String,
    pub by: Option<i64>,
}

/// A lead as the API and the web form take it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewLead {
    pub first_name: Option<String>,
    pub last_name: String,
    pub company: Option<String>,
    pub title: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub country: Option<String>,
    pub source: Option<String>,
    pub notes: Option<String>,
    pub owner: Option<i64>,
}

fn key(number: &str) -> String {
    number.to_owned()
}

/// Trims an optional text; empty becomes absent; longer than `max` is invalid.
fn text(
    errors: &mut FieldErrors,
    field: &str,
    value: Option<String>,
    max: usize,
) -> Option<String> {
    let value = value
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())?;
    if value.chars().count() > max {
        errors.add(field, format!("has at most {max} characters"));
    }
    Some(value)
}

fn check_email(errors: &mut FieldErrors, email: Option<&str>) {
    if let Some(email) = email {
        let valid = email.len() <= EMAIL_CHARS_MAX
            && email.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            })
            && !email.contains(char::is_whitespace);
        if !valid {
            errors.add("email", "is an email address such as ana@example.com");
        }
    }
}

/// Checks and normalizes a new lead; the owner is decided by the caller.
fn build(new: NewLead, default_source: &str) -> Result<Lead, Error> {
    let mut errors = FieldErrors::new();
    let last_name = text(
        &mut errors,
        "last_name",
        Some(new.last_name),
        TEXT_CHARS_MAX,
    );
    if last_name.is_none() {
        errors.add("last_name", "is required");
    }
    let email = text(&mut errors, "email", new.email, EMAIL_CHARS_MAX).map(|e| e.to_lowercase());
    check_email(&mut errors, email.as_deref());
    let country = text(&mut errors, "country", new.country, 2).map(|c| c.to_ascii_uppercase());
    if let Some(country) = &country
        && (country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()))
    {
        errors.add(
            "country",
            "is an ISO 3166-1 alpha-2 country code such as DE",
        );
    }
    let lead = Lead {
        number: String::new(),
        status: LeadStatus::New,
        first_name: text(&mut errors, "first_name", new.first_name, TEXT_CHARS_MAX),
        last_name: last_name.unwrap_or_default(),
        company: text(&mut errors, "company", new.company, TEXT_CHARS_MAX),
        title: text(&mut errors, "title", new.title, TEXT_CHARS_MAX),
        email,
        phone: text(&mut errors, "phone", new.phone, TEXT_CHARS_MAX),
        country,
        source: text(&mut errors, "source", new.source, TEXT_CHARS_MAX)
            .unwrap_or_else(|| default_source.to_owned()),
        notes: text(&mut errors, "notes", new.notes, NOTES_CHARS_MAX),
        owner: None,
        captured_on: dates::format(dates::today()),
        captured_by: keel_sdk::user_id(),
        possible_duplicates: Vec::new(),
        disqualified_reason: None,
        converted: None,
    };
    errors.finish()?;
    Ok(lead)
}

/// Parties that look like the lead: the same email, or a name like its company's. Only the
/// parties the acting user may see are searched.
fn duplicates_of(lead: &Lead) -> Result<Vec<Duplicate>, Error> {
    let mut found: Vec<Duplicate> = Vec::new();
    let searches = [
        ("email", lead.email.as_deref()),
        ("company", lead.company.as_deref()),
    ];
    for (matched_on, q) in searches {
        let Some(q) = q else { continue };
        let page = match parties::search(&parties::PartyQuery {
            q: Some(q.to_owned()),
            role: None,
            tag: None,
            status: Some("active".to_owned()),
            after: None,
            limit: Some(DUPLICATES_PER_SEARCH),
        }) {
            Ok(page) => page,
            Err(Error::Denied(_)) => return Ok(Vec::new()),
            Err(other) => return Err(other),
        };
        for party in page.parties {
            let party: Value = serde_json::from_str(&party).map_err(|e| {
                Error::Internal(format!("a party from the host is unreadable: {e}"))
            })?;
            let Some(id) = party["id"].as_i64() else {
                continue;
            };
            if found.iter().any(|d| d.party == id) {
                continue;
            }
            found.push(Duplicate {
                party: id,
                name: party["name"].as_str().unwrap_or_default().to_owned(),
                matched_on: matched_on.to_owned(),
            });
        }
    }
    Ok(found)
}

/// Numbers, checks for duplicates, assigns and stores a new lead.
fn capture(mut lead: Lead, owner: Option<i64>) -> Result<Lead, Error> {
    lead.owner = match owner {
        Some(owner) => Some(owner),
        None => assignment::owner_for(lead.country.as_deref())?.or(lead.captured_by),
    };
    lead.possible_duplicates = duplicates_of(&lead)?;
    lead.number = format!("L-{:06}", storage::next_number("leads")?);
    LEADS.put(&key(&lead.number), &lead)?;
    Ok(lead)
}

/// `POST /leads`: a lead captured by a user or another system.
pub fn create(request: &Request, _: &Params) -> Result<Response, Error> {
    keel_sdk::require(perm::LEADS_WRITE)?;
    let new: NewLead = request.json()?;
    let owner = new.owner;
    if let Some(owner) = owner
        && Some(owner) != keel_sdk::user_id()
    {
        keel_sdk::require(perm::ASSIGN)?;
    }
    let lead = capture(build(new, "api")?, owner)?;
    Ok(Response::json(201, &lead))
}

/// `POST /public/web-form`: a lead from the company's website, without credentials, as JSON
/// or as an HTML form post. The answer says only that it arrived.
pub fn web_form(request: &Request, _: &Params) -> Result<Response, Error> {
    let form_encoded = request
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    let mut fields: serde_json::Map<String, Value> = if form_encoded {
        keel_sdk::form_pairs(&String::from_utf8_lossy(&request.body))
            .into_iter()
            .map(|(name, value)| (name, Value::String(value)))
            .collect()
    } else {
        request.json()?
    };
    let honeypot = fields.remove(HONEYPOT_FIELD);
    let message = fields.remove("message");
    let new: NewLead = serde_json::from_value(Value::Object(fields))?;
    let mut errors = FieldErrors::new();
    if new.email.as_deref().is_none_or(|e| e.trim().is_empty()) {
        errors.add("email", "is required so that someone can answer");
    }
    if new.owner.is_some() {
        errors.add("owner", "cannot be chosen on the web form");
    }
    errors.finish()?;
    let received = json!({ "status": "received" });
    if honeypot
        .as_ref()
        .and_then(Value::as_str)
        .is_some_and(|v| !v.is_empty())
    {
        return Ok(Response::json(202, &received));
    }
    let mut lead = build(new, "web")?;
    if let Some(message) = message.as_ref().and_then(Value::as_str) {
        let mut errors = FieldErrors::new();
        lead.notes = text(
            &mut errors,
            "message",
            Some(message.to_owned()),
            NOTES_CHARS_MAX,
        );
        errors.finish()?;
    }
    capture(lead, None)?;
    Ok(Response::json(202, &received))
}

/// The lead `number` if the user's reach under `permission` covers it; to change it (under
/// `leads:write`), reserved until the call ends, so that two conversions of one lead run one
/// after the other and the second finds it converted.
pub fn load(number: &str, permission: &str) -> Result<Lead, Error> {
    let reach = owned::reach(permission)?;
    let found = if permission == perm::LEADS_WRITE {
        LEADS.get_for_update(&key(number))?
    } else {
        LEADS.get(&key(number))?
    };
    match found {
        Some(lead) if reach.covers(lead.owner) => Ok(lead),
        _ => Err(not_found("lead", number)),
    }
}

pub fn get(_request: &Request, params: &Params) -> Result<Response, Error> {
    let lead = load(params.get("number")?, perm::LEADS_READ)?;
    Ok(Response::json(200, &lead))
}

/// `GET /leads?status=&owner=&limit=&after=`.
pub fn list(request: &Request, _: &Params) -> Result<Response, Error> {
    let reach = owned::reach(perm::LEADS_READ)?;
    let status = request.query_param("status").filter(|s| !s.is_empty());
    if let Some(status) = &status {
        serde_json::from_value::<LeadStatus>(json!(status)).map_err(|_| {
            Error::invalid(
                "status",
                "is new, working, qualified, disqualified or converted",
            )
        })?;
    }
    let equals: Vec<Value> = status.into_iter().map(Value::from).collect();
    let listed = owned::list(
        LEADS,
        &INDEXES,
        &reach,
        owned::owner_param(request)?,
        &equals,
        &Paging::of(request)?,
    )?;
    Ok(Response::json(200, &listed))
}

/// Changes to a lead still being worked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeadChanges {
    first_name: Option<String>,
    last_name: Option<String>,
    company: Option<String>,
    title: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    country: Option<String>,
    notes: Option<String>,
    owner: Option<i64>,
    /// `working`, or `disqualified` with a `disqualified_reason`.
    status: Option<LeadStatus>,
    disqualified_reason: Option<String>,
}

/// `PATCH /leads/{number}`.
pub fn update(request: &Request, params: &Params) -> Result<Response, Error> {
    let number = params.get("number")?;
    let mut lead = load(number, perm::LEADS_WRITE)?;
    let changes: LeadChanges = request.json()?;
    check_open(&lead)?;
    if let Some(owner) = changes.owner
        && Some(owner) != lead.owner
    {
        keel_sdk::require(perm::ASSIGN)?;
        lead.owner = Some(owner);
    }
    let merged = NewLead {
        first_name: changes.first_name.or(lead.first_name.take()),
        last_name: changes.last_name.unwrap_or_else(|| lead.last_name.clone()),
        company: changes.company.or(lead.company.take()),
        title: changes.title.or(lead.title.take()),
        email: changes.email.or(lead.email.take()),
        phone: changes.phone.or(lead.phone.take()),
        country: changes.country.or(lead.country.take()),
        source: Some(lead.source.clone()),
        notes: changes.notes.or(lead.notes.take()),
        owner: None,
    };
    let checked = build(merged, &lead.source)?;
    let mut errors = FieldErrors::new();
    match changes.status {
        None => {}
        Some(LeadStatus::Working) => lead.status = LeadStatus::Working,
        Some(LeadStatus::Disqualified) => {
            match text(
                &mut errors,
                "disqualified_reason",
                changes.disqualified_reason,
                TEXT_CHARS_MAX,
            ) {
                Some(reason) => {
                    lead.status = LeadStatus::Disqualified;
                    lead.disqualified_reason = Some(reason);
                }
                None => errors.add("disqualified_reason", "is required to disqualify a lead"),
            }
        }
        Some(_) => errors.add(
            "status",
            "changes to working or disqualified here; qualify and convert have their own routes",
        ),
    }
    errors.finish()?;
    let lead = Lead {
        first_name: checked.first_name,
        last_name: checked.last_name,
        company: checked.company,
        title: checked.title,
        email: checked.email,
        phone: checked.phone,
        country: checked.country,
        notes: checked.notes,
        ..lead
    };
    LEADS.put(&key(&lead.number), &lead)?;
    Ok(Response::json(200, &lead))
}

/// A converted or disqualified lead is closed: it changes no more.
fn check_open(lead: &Lead) -> Result<(), Error> {
    match (&lead.status, &lead.converted) {
        (LeadStatus::Converted, Some(conversion)) => Err(Error::Conflict(format!(
            "lead {} was converted on {} into party {}; work with the party and its \
             opportunities instead",
            lead.number, conversion.on, conversion.party
        ))),
        (LeadStatus::Disqualified, _) => Err(Error::Conflict(format!(
            "lead {} is disqualified ({}); capture it again if it came back",
            lead.number,
            lead.disqualified_reason
                .as_deref()
                .unwrap_or("no reason given")
        ))),
        _ => Ok(()),
    }
}

/// `POST /leads/{number}/qualify`.
pub fn qualify(_request: &Request, params: &Params) -> Result<Response, Error> {
    let mut lead = load(params.get("number")?, perm::LEADS_WRITE)?;
    check_open(&lead)?;
    lead.status = LeadStatus::Qualified;
    LEADS.put(&key(&lead.number), &lead)?;
    Ok(Response::json(200, &lead))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConvertLead {
    /// An existing party to convert into (one of the possible duplicates, usually).
    party: Option<i64>,
    /// Create a new party although some look like the lead.
    #[serde(default)]
    allow_duplicate: bool,
    /// The opportunity to open; none is opened when absent.
    opportunity: Option<ConvertedOpportunity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConvertedOpportunity {
    name: Option<String>,
    amount: String,
    currency: String,
    expected_close: String,
    stage: Option<String>,
    #[serde(default)]
    products: Vec<String>,
}

/// What a conversion made.
#[derive(Debug, Serialize)]
struct Converted {
    lead: Lead,
    party: Value,
    contact: Option<Value>,
    opportunity: Option<opportunities::Opportunity>,
}

/// `POST /leads/{number}/convert`: the customer (an organization when the lead names a
/// company, else the person), a contact person for an organization, and optionally an
/// opportunity; all in one transaction.
pub fn convert(request: &Request, params: &Params) -> Result<Response, Error> {
    let number = params.get("number")?;
    let mut lead = load(number, perm::LEADS_WRITE)?;
    let body: ConvertLead = if request.body.is_empty() {
        ConvertLead::default()
    } else {
        request.json()?
    };
    check_open(&lead)?;
    let customer = match body.party {
        Some(id) => parse_party(parties::get(id).map_err(|error| match error {
            Error::NotFound(_) => {
                Error::invalid("party", format!("there is no party {id} that you can see"))
            }
            other => other,
        })?)?,
        None => {
            let duplicates = duplicates_of(&lead)?;
            if !duplicates.is_empty() && !body.allow_duplicate {
                let names: Vec<String> = duplicates
                    .iter()
                    .map(|d| format!("{} ({}, same {})", d.party, d.name, d.matched_on))
                    .collect();
                return Err(Error::Conflict(format!(
                    "lead {number} looks like existing parties {}; convert it into one of them \
                     with \"party\": <id>, or send \"allow_duplicate\": true",
                    names.join(", ")
                )));
            }
            create_customer(&lead)?
        }
    };
    let customer_id = customer["id"]
        .as_i64()
        .ok_or_else(|| Error::Internal("the host returned a party without an id".to_owned()))?;
    let organization = customer["kind"] == "organization";
    let contact = if organization {
        Some(create_contact(&lead, customer_id)?)
    } else {
        None
    };
    let contact_id = contact.as_ref().and_then(|c| c["id"].as_i64());
    let opportunity = match body.opportunity {
        None => None,
        Some(wanted) => Some(
            opportunities::open_new(
                NewOpportunity {
                    name: wanted.name.unwrap_or_else(|| {
                        format!(
                            "{} — {}",
                            customer["name"].as_str().unwrap_or(&lead.last_name),
                            lead.number
                        )
                    }),
                    party: customer_id,
                    contact: contact_id,
                    amount: wanted.amount,
                    currency: wanted.currency,
                    expected_close: wanted.expected_close,
                    stage: wanted.stage,
                    owner: lead.owner,
                    products: wanted.products,
                    opened_on: None,
                },
                Some(lead.number.clone()),
            )
            .map_err(|error| error.within("opportunity"))?,
        ),
    };
    lead.status = LeadStatus::Converted;
    lead.converted = Some(Conversion {
        party: customer_id,
        contact: contact_id,
        opportunity: opportunity.as_ref().map(|o| o.number.clone()),
        on: dates::format(dates::today()),
        by: keel_sdk::user_id(),
    });
    LEADS.put(&key(&lead.number), &lead)?;
    Ok(Response::json(
        201,
        &Converted {
            lead,
            party: customer,
            contact,
            opportunity,
        },
    ))
}

fn parse_party(json: String) -> Result<Value, Error> {
    serde_json::from_str(&json)
        .map_err(|e| Error::Internal(format!("a party from the host is unreadable: {e}")))
}

fn person_name(lead: &Lead) -> String {
    match &lead.first_name {
        Some(first) => format!("{first} {}", lead.last_name),
        None => lead.last_name.clone(),
    }
}

/// The customer party: the lead's company, or the person when it names none.
fn create_customer(lead: &Lead) -> Result<Value, Error> {
    let (kind, name) = match &lead.company {
        Some(company) => ("organization", company.clone()),
        None => ("person", person_name(lead)),
    };
    let mut party = json!({
        "kind": kind,
        "name": name,
        "roles": ["customer"],
        "custom_fields": { "sfa_lead": lead.number },
        "allow_duplicate": true,
    });
    if let Some(owner) = lead.owner {
        party["owner"] = json!(owner);
    }
    if let Some(country) = &lead.country {
        party["addresses"] = json!([{ "purpose": "office", "country": country }]);
    }
    if lead.company.is_none() {
        add_reachability(&mut party, lead);
    }
    parse_party(parties::create(&party.to_string())?)
}

/// The person at the customer the lead came from, as its contact.
fn create_contact(lead: &Lead, organization: i64) -> Result<Value, Error> {
    let mut party = json!({
        "kind": "person",
        "name": person_name(lead),
        "roles": ["contact"],
        "relationships": [{ "kind": "contact_of", "party": organization, "title": lead.title }],
        "allow_duplicate": true,
    });
    if let Some(owner) = lead.owner {
        party["owner"] = json!(owner);
    }
    add_reachability(&mut party, lead);
    parse_party(parties::create(&party.to_string())?)
}

fn add_reachability(party: &mut Value, lead: &Lead) {
    if let Some(email) = &lead.email {
        party["emails"] = json!([email]);
    }
    if let Some(phone) = &lead.phone {
        party["phones"] = json!([phone]);
    }
}
