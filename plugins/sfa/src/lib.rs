//! Sales force automation: leads captured through the API or a public web form, checked for
//! duplicates against the customer master, assigned by round robin or territory, qualified
//! and converted into a customer (with a contact) and an opportunity; opportunities moving
//! through configurable stages to won or lost; calls, meetings, tasks and notes; the pipeline
//! and forecast; and the customer 360 view, which brings in order history and invoices from
//! the orders and invoicing plugins when they are installed.
//!
//! Who sees what comes from the authz model: every record has an owner, and a permission's
//! scope (own, team, all) decides whose records a user reaches (`keel_sdk::Reach`).

mod activities;
mod assignment;
mod customer;
mod leads;
mod opportunities;
mod owned;
mod pipeline;
mod settings;

use keel_sdk::{Error, Manifest, PartyField, Plugin, Request, Response, Router};

/// The permissions the plugin checks; roles grant them like the host's own.
pub mod perm {
    pub const LEADS_READ: &str = "plugins.sfa.leads:read";
    pub const LEADS_WRITE: &str = "plugins.sfa.leads:write";
    pub const OPPORTUNITIES_READ: &str = "plugins.sfa.opportunities:read";
    pub const OPPORTUNITIES_WRITE: &str = "plugins.sfa.opportunities:write";
    pub const ACTIVITIES_READ: &str = "plugins.sfa.activities:read";
    pub const ACTIVITIES_WRITE: &str = "plugins.sfa.activities:write";
    /// Giving a record to another owner, and naming the owner of a new one.
    pub const ASSIGN: &str = "plugins.sfa.records:assign";
    pub const PIPELINE_READ: &str = "plugins.sfa.pipeline:read";
    pub const SETTINGS_WRITE: &str = "plugins.sfa.settings:write";
}

struct Sfa;

impl Plugin for Sfa {
    fn manifest() -> Manifest {
        Manifest::new(
            "sfa",
            env!("CARGO_PKG_VERSION"),
            "Sales force automation: leads, opportunities, activities, pipeline and forecast, \
             customer 360",
        )
        .capabilities(&[
            "storage",
            "parties:read",
            "parties:write",
            "ledger:read",
            "http:public",
            "call:orders/party-orders",
            "call:invoicing/party-summary",
        ])
        .collection(
            leads::LEADS.name(),
            &[
                ("by-owner", &["owner", "status"]),
                ("by-status", &["status"]),
            ],
        )
        .collection(
            opportunities::OPPORTUNITIES.name(),
            &[
                ("by-owner", &["owner", "status"]),
                ("by-status", &["status"]),
                ("by-party", &["party", "status"]),
            ],
        )
        .collection(
            activities::ACTIVITIES.name(),
            &[
                ("by-owner", &["owner", "open", "due"]),
                ("by-party", &["regarding.party", "date"]),
                ("by-lead", &["regarding.lead", "date"]),
                ("by-opportunity", &["regarding.opportunity", "date"]),
            ],
        )
        .collection(pipeline::TOTALS.name(), &[("by-period", &["period"])])
        .party_field(PartyField {
            name: "lead".to_owned(),
            label: "Converted from lead".to_owned(),
            field_type: "text".to_owned(),
            applies_to: "any".to_owned(),
            required: false,
            options: Vec::new(),
        })
    }

    fn handle_http(request: Request) -> Response {
        Router::new()
            .post("/public/web-form", leads::web_form)
            .post("/leads", leads::create)
            .get("/leads", leads::list)
            .get("/leads/{number}", leads::get)
            .route("PATCH", "/leads/{number}", leads::update)
            .post("/leads/{number}/qualify", leads::qualify)
            .post("/leads/{number}/convert", leads::convert)
            .post("/opportunities", opportunities::create)
            .post("/opportunities/import", opportunities::import)
            .get("/opportunities", opportunities::list)
            .get("/opportunities/{number}", opportunities::get)
            .route("PATCH", "/opportunities/{number}", opportunities::update)
            .post("/opportunities/{number}/won", opportunities::won)
            .post("/opportunities/{number}/lost", opportunities::lost)
            .post("/activities", activities::create)
            .get("/activities", activities::list)
            .post("/activities/{number}/done", activities::done)
            .get("/my/tasks", activities::my_open_tasks)
            .get("/pipeline", pipeline::report)
            .get("/customers/{party}", customer::view)
            .get("/settings", settings::get)
            .put("/settings/stages", settings::put_stages)
            .put("/settings/lost-reasons", settings::put_lost_reasons)
            .put("/settings/assignment", settings::put_assignment)
            .handle(request)
    }
}

keel_sdk::export!(Sfa);

/// The problem answer for a record the user may not see: the same as for one that does not
/// exist, so that probing numbers reveals nothing.
fn not_found(what: &str, number: &str) -> Error {
    Error::NotFound(format!("there is no {what} {number} that you can see"))
}

/// The date as `YYYY-MM-DD`, or an error about `field` added to `errors` (and an empty
/// string, which the caller never stores: `errors` fails the request).
fn check_date(errors: &mut keel_sdk::FieldErrors, field: &str, text: &str) -> String {
    match keel_sdk::dates::parse(field, text) {
        Ok(date) => keel_sdk::dates::format(date),
        Err(error) => {
            // `dates::parse` fails only with `invalid` naming `field`.
            let _ = errors.absorb(error);
            String::new()
        }
    }
}

/// A date given for history brought over from another system, or today.
fn date_or_today(errors: &mut keel_sdk::FieldErrors, field: &str, text: Option<&str>) -> String {
    keel_sdk::dates::format(keel_sdk::dates::parse_or_today(errors, field, text))
}
