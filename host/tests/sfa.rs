//! The sales force automation plugin (`plugins/sfa`) end to end through the HTTP API, on both
//! backends: leads from the API and the public web form, duplicate checks, assignment,
//! conversion; opportunities through their stages; activities and "my open tasks"; the
//! pipeline; the customer 360 view; and who sees what under the built-in sales roles.
//!
//! The component is built by `scripts/build-plugins` (the test command runs it first).

mod common;

use axum::http::Method;
use common::{TestApp, rust_plugin};
use serde_json::{Value, json};

const SFA: &str = "/api/v1/plugins/sfa";
const WEB_FORM: &str = "/api/v1/public/main/sfa/web-form";

/// A sales team: a manager with two reps, and a rep of another team.
struct Team {
    manager: (i64, String),
    rep1: (i64, String),
    rep2: (i64, String),
    outsider: (i64, String),
}

async fn setup(app: &TestApp) -> Team {
    app.install_enabled(rust_plugin("sfa")).await;
    let manager = app.user_with_role("mia", "sales-manager").await;
    let rep1 = app.user_with_role("ravi", "sales-rep").await;
    let rep2 = app.user_with_role("rosa", "sales-rep").await;
    let outsider = app.user_with_role("olaf", "sales-rep").await;
    for rep in [rep1.0, rep2.0] {
        let changed = app
            .patch(
                &format!("/api/v1/users/{rep}"),
                json!({ "manager": manager.0 }),
            )
            .await;
        assert_eq!(changed.status, 200, "{}", changed.text);
    }
    Team {
        manager,
        rep1,
        rep2,
        outsider,
    }
}

async fn as_user(
    app: &TestApp,
    user: &(i64, String),
    method: Method,
    path: &str,
    body: Option<Value>,
) -> common::Reply {
    app.as_user(&user.1, method, &format!("{SFA}{path}"), body)
        .await
}

async fn public_form(app: &TestApp, body: Value) -> common::Reply {
    app.request_raw(
        Method::POST,
        WEB_FORM,
        &[],
        Some(body.to_string().into_bytes()),
    )
    .await
}

/// A party created through the host API as `user`; returns its id.
async fn party(app: &TestApp, user: Option<&(i64, String)>, body: Value) -> i64 {
    let reply = match user {
        Some(user) => {
            app.as_user(&user.1, Method::POST, "/api/v1/parties", Some(body))
                .await
        }
        None => app.post("/api/v1/parties", body).await,
    };
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.body["id"].as_i64().expect("a party id")
}

fn numbers(reply: &common::Reply) -> Vec<String> {
    reply.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["number"].as_str().expect("a number").to_owned())
        .collect()
}

on_both_backends! {
    async fn leads_are_captured_checked_assigned_and_converted_once(app: TestApp) {
        let team = setup(&app).await;
        let acme = party(&app, None, json!({
            "kind": "organization", "name": "Acme Industries", "roles": ["customer"],
            "emails": ["buyer@acme.example"],
        })).await;
        let assignment = app.request(
            Method::PUT,
            &format!("{SFA}/settings/assignment"),
            &[],
            Some(json!({ "mode": "round_robin", "reps": [team.rep1.0, team.rep2.0] }).to_string().into_bytes()),
        ).await;
        assert_eq!(assignment.status, 200, "{}", assignment.text);

        // The website's form, without credentials: as JSON, and as an HTML form post.
        let first = public_form(&app, json!({
            "first_name": "Ana", "last_name": "Silva", "company": "Acme Industries",
            "email": "Ana@Acme.example", "country": "de", "message": "Please call me",
        })).await;
        assert_eq!(first.status, 202, "{}", first.text);
        assert_eq!(first.body, json!({ "status": "received" }));
        let form = app.request_raw(
            Method::POST,
            WEB_FORM,
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(b"first_name=Bo&last_name=Berg&email=bo%40berg.example&company=Berg+%26+Sons".to_vec()),
        ).await;
        assert_eq!(form.status, 202, "{}", form.text);
        // A robot filling the hidden field is told the same and stores nothing.
        let robot = public_form(&app, json!({ "last_name": "Bot", "email": "bot@spam.example", "website": "http://spam.example" })).await;
        assert_eq!(robot.status, 202, "{}", robot.text);
        // Bad input is refused precisely.
        public_form(&app, json!({ "last_name": "Nomail" })).await.assert_problem(422, &["email"]);
        public_form(&app, json!({ "last_name": "X", "email": "not-an-address" })).await.assert_problem(422, &["email"]);
        public_form(&app, json!({ "last_name": "X", "email": "x@y.example", "owner": team.rep1.0 })).await.assert_problem(422, &["owner"]);

        let leads = app.get(&format!("{SFA}/leads")).await;
        assert_eq!(leads.status, 200, "{}", leads.text);
        assert_eq!(numbers(&leads), ["L-000001", "L-000002"], "{}", leads.text);
        let ana = &leads.body["items"][0];
        assert_eq!(ana["source"], "web");
        assert_eq!(ana["email"], "ana@acme.example");
        assert_eq!(ana["country"], "DE");
        assert_eq!(ana["notes"], "Please call me");
        assert_eq!(ana["owner"], team.rep1.0, "round robin: the first rep first");
        assert_eq!(leads.body["items"][1]["owner"], team.rep2.0, "then the second");
        assert_eq!(leads.body["items"][1]["company"], "Berg & Sons");
        assert_eq!(ana["possible_duplicates"][0]["party"], acme, "{ana}");
        assert_eq!(ana["possible_duplicates"][0]["matched_on"], "company");

        // Each rep sees their own lead only; their manager sees both.
        let mine = as_user(&app, &team.rep1, Method::GET, "/leads", None).await;
        assert_eq!(numbers(&mine), ["L-000001"], "{}", mine.text);
        let other = as_user(&app, &team.rep1, Method::GET, "/leads/L-000002", None).await;
        other.assert_problem(404, &[]);
        let managed = as_user(&app, &team.manager, Method::GET, "/leads", None).await;
        assert_eq!(numbers(&managed), ["L-000001", "L-000002"], "{}", managed.text);
        let outsider = as_user(&app, &team.outsider, Method::GET, "/leads", None).await;
        assert_eq!(numbers(&outsider), Vec::<String>::new(), "{}", outsider.text);

        // Converting a lead that looks like an existing customer asks which one is meant.
        let ambiguous = app.post(&format!("{SFA}/leads/L-000001/convert"), json!({})).await;
        assert_eq!(ambiguous.status, 409, "{}", ambiguous.text);
        assert!(ambiguous.text.contains(&acme.to_string()), "{}", ambiguous.text);

        let qualified = as_user(&app, &team.rep1, Method::POST, "/leads/L-000001/qualify", None).await;
        assert_eq!(qualified.body["status"], "qualified", "{}", qualified.text);
        let converted = as_user(&app, &team.rep1, Method::POST, "/leads/L-000001/convert", Some(json!({
            "allow_duplicate": true,
            "opportunity": { "amount": "12000.00", "currency": "EUR", "expected_close": "2026-06-30", "products": ["LAPTOP-KIT"] },
        }))).await;
        assert_eq!(converted.status, 201, "{}", converted.text);
        let customer = &converted.body["party"];
        assert_eq!(customer["kind"], "organization");
        assert_eq!(customer["name"], "Acme Industries");
        assert_eq!(customer["owner"], team.rep1.0);
        assert_eq!(customer["custom_fields"]["sfa_lead"], "L-000001", "{customer}");
        let contact = &converted.body["contact"];
        assert_eq!(contact["name"], "Ana Silva");
        assert_eq!(contact["emails"], json!(["ana@acme.example"]));
        assert_eq!(contact["relationships"][0]["party"], customer["id"]);
        let opportunity = &converted.body["opportunity"];
        assert_eq!(opportunity["number"], "O-000001");
        assert_eq!(opportunity["lead"], "L-000001");
        assert_eq!(opportunity["party"], customer["id"]);
        assert_eq!(opportunity["contact"], contact["id"]);
        assert_eq!(opportunity["owner"], team.rep1.0);
        assert_eq!(opportunity["stage"], "prospecting");
        assert_eq!(converted.body["lead"]["status"], "converted");

        // Converting twice is refused and changes nothing.
        let parties_before = app.get("/api/v1/parties?limit=100").await.body["parties"].as_array().map(Vec::len);
        let twice = as_user(&app, &team.rep1, Method::POST, "/leads/L-000001/convert", Some(json!({ "allow_duplicate": true }))).await;
        twice.assert_problem(409, &[]);
        assert!(twice.text.contains("was converted"), "{}", twice.text);
        let parties_after = app.get("/api/v1/parties?limit=100").await.body["parties"].as_array().map(Vec::len);
        assert_eq!(parties_before, parties_after);
        let edit = as_user(&app, &team.rep1, Method::PATCH, "/leads/L-000001", Some(json!({ "notes": "late" }))).await;
        edit.assert_problem(409, &[]);

        // Two conversions of one lead at the same moment: one converts, the other finds it
        // converted (the lead is reserved by the first until it commits).
        let racer = as_user(&app, &team.manager, Method::POST, "/leads", Some(json!({ "last_name": "Race", "company": "Racing Ltd" }))).await;
        let racer = racer.body["number"].as_str().expect("a number").to_owned();
        let convert = format!("/leads/{racer}/convert");
        let body = json!({ "allow_duplicate": true });
        let (one, two) = tokio::join!(
            as_user(&app, &team.manager, Method::POST, &convert, Some(body.clone())),
            as_user(&app, &team.manager, Method::POST, &convert, Some(body.clone())),
        );
        let mut statuses = [one.status.as_u16(), two.status.as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 409], "{} / {}", one.text, two.text);
        let racing = app.get("/api/v1/parties?q=Racing&role=customer&limit=10").await;
        assert_eq!(racing.body["parties"].as_array().map(Vec::len), Some(1), "{}", racing.text);
        let parties_after = app.get("/api/v1/parties?limit=100").await.body["parties"].as_array().map(Vec::len);

        // A conversion with a bad opportunity keeps nothing: no party, the lead still open.
        let bad = as_user(&app, &team.rep2, Method::POST, "/leads/L-000002/convert", Some(json!({
            "opportunity": { "amount": "lots", "currency": "EUR", "expected_close": "2026-13-01" },
        }))).await;
        bad.assert_problem(422, &["opportunity.amount", "opportunity.expected_close"]);
        let still = as_user(&app, &team.rep2, Method::GET, "/leads/L-000002", None).await;
        assert_eq!(still.body["status"], "new", "{}", still.text);
        let parties_now = app.get("/api/v1/parties?limit=100").await.body["parties"].as_array().map(Vec::len);
        assert_eq!(parties_now, parties_after);

        // Disqualifying needs a reason; a disqualified lead is closed.
        let no_reason = as_user(&app, &team.rep2, Method::PATCH, "/leads/L-000002", Some(json!({ "status": "disqualified" }))).await;
        no_reason.assert_problem(422, &["disqualified_reason"]);
        let out = as_user(&app, &team.rep2, Method::PATCH, "/leads/L-000002", Some(json!({ "status": "disqualified", "disqualified_reason": "student project" }))).await;
        assert_eq!(out.body["status"], "disqualified", "{}", out.text);
        as_user(&app, &team.rep2, Method::POST, "/leads/L-000002/convert", None).await.assert_problem(409, &[]);

        // A lead captured through the API belongs to whoever captured it unless the rules
        // say otherwise; naming another owner needs the assign permission.
        let unassigned = app.request(Method::PUT, &format!("{SFA}/settings/assignment"), &[], Some(br#"{"mode": "none"}"#.to_vec())).await;
        assert_eq!(unassigned.status, 200, "{}", unassigned.text);
        let own = as_user(&app, &team.rep1, Method::POST, "/leads", Some(json!({ "last_name": "Own", "email": "own@lead.example" }))).await;
        assert_eq!(own.status, 201, "{}", own.text);
        assert_eq!(own.body["owner"], team.rep1.0);
        assert_eq!(own.body["source"], "api");
        let given = as_user(&app, &team.rep1, Method::POST, "/leads", Some(json!({ "last_name": "Given", "owner": team.rep2.0 }))).await;
        given.assert_problem(403, &[]);
        let assigned = as_user(&app, &team.manager, Method::POST, "/leads", Some(json!({ "last_name": "Given", "owner": team.rep2.0 }))).await;
        assert_eq!(assigned.body["owner"], team.rep2.0, "{}", assigned.text);
        let malformed = app.post_raw(&format!("{SFA}/leads"), "{\"last_name\": ").await;
        malformed.assert_problem(422, &["body"]);
        let unknown = app.post(&format!("{SFA}/leads"), json!({ "last_name": "X", "shoe_size": 44 })).await;
        unknown.assert_problem(422, &["body"]);
    }

    async fn territories_assign_leads_by_country(app: TestApp) {
        let team = setup(&app).await;
        let rules = json!({
            "mode": "territory",
            "reps": [team.outsider.0],
            "territories": [
                { "name": "DACH", "countries": ["de", "AT", "CH"], "reps": [team.rep1.0, team.rep2.0] },
                { "name": "Nordics", "countries": ["SE", "NO"], "reps": [team.manager.0] },
            ],
        });
        let set = app.request(Method::PUT, &format!("{SFA}/settings/assignment"), &[], Some(rules.to_string().into_bytes())).await;
        assert_eq!(set.status, 200, "{}", set.text);
        assert_eq!(set.body["territories"][0]["countries"], json!(["DE", "AT", "CH"]));
        let mut owners = Vec::new();
        for (i, country) in ["AT", "DE", "SE", "BR", "CH"].iter().enumerate() {
            let lead = public_form(&app, json!({ "last_name": format!("Lead {i}"), "email": format!("l{i}@example.com"), "country": country })).await;
            assert_eq!(lead.status, 202, "{}", lead.text);
        }
        let leads = app.get(&format!("{SFA}/leads")).await;
        for lead in leads.body["items"].as_array().expect("leads") {
            owners.push(lead["owner"].as_i64().expect("an owner"));
        }
        assert_eq!(
            owners,
            [team.rep1.0, team.rep2.0, team.manager.0, team.outsider.0, team.rep1.0],
            "DACH in turns, the Nordics to their rep, the rest to the fallback"
        );
        let bad = app.request(Method::PUT, &format!("{SFA}/settings/assignment"), &[], Some(json!({
            "mode": "territory", "territories": [{ "name": "", "countries": ["Germany"], "reps": [] }],
        }).to_string().into_bytes())).await;
        bad.assert_problem(422, &["territories[0].name", "territories[0].reps", "territories[0].countries[0]"]);
        let rep = app.as_user(&team.rep1.1, Method::PUT, &format!("{SFA}/settings/assignment"), Some(json!({ "mode": "none" }))).await;
        rep.assert_problem(403, &[]);
    }

    async fn the_public_form_is_rate_limited_and_needs_its_grant(app: TestApp) {
        setup(&app).await;
        let mut statuses = Vec::new();
        for i in 0..12 {
            let reply = public_form(&app, json!({ "last_name": format!("Flood {i}"), "email": format!("f{i}@example.com") })).await;
            statuses.push(reply.status.as_u16());
            if reply.status == 429 {
                assert!(reply.text.contains("public requests a minute"), "{}", reply.text);
            }
        }
        assert_eq!(&statuses[..10], &[202; 10], "{statuses:?}");
        assert_eq!(&statuses[10..], &[429, 429], "{statuses:?}");
        let leads = app.get(&format!("{SFA}/leads?limit=500")).await;
        assert_eq!(leads.body["items"].as_array().map(Vec::len), Some(10));

        // Without the grant `http:public`, the plugin takes no public requests at all.
        let plugin = app.get("/api/v1/plugins/sfa").await;
        let granted: Vec<Value> = plugin.body["granted"]
            .as_array()
            .expect("grants")
            .iter()
            .filter(|g| *g != "http:public")
            .cloned()
            .collect();
        let revoked = app.patch("/api/v1/plugins/sfa", json!({ "granted": granted })).await;
        assert_eq!(revoked.status, 200, "{}", revoked.text);
        let refused = app.request_raw(Method::POST, "/api/v1/public/main/sfa/web-form", &[], Some(b"{}".to_vec())).await;
        refused.assert_problem(404, &[]);
        assert!(refused.text.contains("http:public"), "{}", refused.text);
        let no_company = app.request_raw(Method::POST, "/api/v1/public/nowhere/sfa/web-form", &[], Some(b"{}".to_vec())).await;
        no_company.assert_problem(404, &[]);
    }

    async fn opportunities_move_through_stages_and_reps_see_only_their_own(app: TestApp) {
        let team = setup(&app).await;
        let customer = party(&app, Some(&team.rep1), json!({ "kind": "organization", "name": "Globex", "roles": ["customer"] })).await;
        let created = as_user(&app, &team.rep1, Method::POST, "/opportunities", Some(json!({
            "name": "Globex fleet", "party": customer, "amount": "50000", "currency": "usd",
            "expected_close": "2026-09-30", "opened_on": "2026-03-01",
        }))).await;
        assert_eq!(created.status, 201, "{}", created.text);
        assert_eq!(created.body["currency"], "USD");
        assert_eq!(created.body["stage"], "prospecting");
        assert_eq!(created.body["probability"], "10");
        let number = created.body["number"].as_str().expect("a number").to_owned();

        let moved = as_user(&app, &team.rep1, Method::PATCH, &format!("/opportunities/{number}"), Some(json!({ "stage": "proposal", "on": "2026-04-01" }))).await;
        assert_eq!(moved.status, 200, "{}", moved.text);
        assert_eq!(moved.body["probability"], "50");
        let history: Vec<&str> = moved.body["history"].as_array().expect("history").iter().map(|h| h["stage"].as_str().expect("a stage")).collect();
        assert_eq!(history, ["prospecting", "proposal"]);

        // Another rep can neither read nor change it; their manager can; a rep of another
        // team cannot.
        as_user(&app, &team.rep2, Method::GET, &format!("/opportunities/{number}"), None).await.assert_problem(404, &[]);
        as_user(&app, &team.rep2, Method::PATCH, &format!("/opportunities/{number}"), Some(json!({ "amount": "1" }))).await.assert_problem(404, &[]);
        as_user(&app, &team.outsider, Method::GET, &format!("/opportunities/{number}"), None).await.assert_problem(404, &[]);
        let managed = as_user(&app, &team.manager, Method::GET, &format!("/opportunities/{number}"), None).await;
        assert_eq!(managed.status, 200, "{}", managed.text);
        // A rep cannot hand it to someone else; the manager can.
        as_user(&app, &team.rep1, Method::PATCH, &format!("/opportunities/{number}"), Some(json!({ "owner": team.rep2.0 }))).await.assert_problem(403, &[]);

        // Bad changes are refused precisely.
        let bad = as_user(&app, &team.rep1, Method::PATCH, &format!("/opportunities/{number}"), Some(json!({
            "stage": "nirvana", "probability": "120", "amount": "-5", "expected_close": "soon",
        }))).await;
        bad.assert_problem(422, &["amount", "expected_close", "stage", "probability"]);
        let won_by_patch = as_user(&app, &team.rep1, Method::PATCH, &format!("/opportunities/{number}"), Some(json!({ "stage": "won" }))).await;
        won_by_patch.assert_problem(422, &["stage"]);
        let missing_party = as_user(&app, &team.rep1, Method::POST, "/opportunities", Some(json!({
            "name": "Ghost", "party": 999_999, "amount": "1", "currency": "USD", "expected_close": "2026-09-30",
        }))).await;
        missing_party.assert_problem(422, &["party"]);

        // Lost needs one of the configured reasons.
        let lost_path = format!("/opportunities/{number}/lost");
        as_user(&app, &team.rep1, Method::POST, &lost_path, Some(json!({}))).await.assert_problem(422, &["reason"]);
        as_user(&app, &team.rep1, Method::POST, &lost_path, Some(json!({ "reason": "bad luck" }))).await.assert_problem(422, &["reason"]);
        let lost = as_user(&app, &team.rep1, Method::POST, &lost_path, Some(json!({ "reason": "price", "on": "2026-05-02", "note": "went cheaper" }))).await;
        assert_eq!(lost.status, 200, "{}", lost.text);
        assert_eq!(lost.body["status"], "lost");
        assert_eq!(lost.body["stage"], "lost");
        assert_eq!(lost.body["lost_reason"], "price");
        let closed = as_user(&app, &team.rep1, Method::PATCH, &format!("/opportunities/{number}"), Some(json!({ "amount": "1" }))).await;
        closed.assert_problem(409, &[]);
        as_user(&app, &team.rep1, Method::POST, &format!("/opportunities/{number}/won"), None).await.assert_problem(409, &[]);

        // Stages are configurable; a pipeline without a won stage is refused.
        let stages = json!([
            { "name": "discovery", "probability": "5" },
            { "name": "demo", "probability": "30" },
            { "name": "closed won", "probability": "100", "kind": "won" },
            { "name": "closed lost", "probability": "0", "kind": "lost" },
        ]);
        let set = app.request(Method::PUT, &format!("{SFA}/settings/stages"), &[], Some(stages.to_string().into_bytes())).await;
        assert_eq!(set.status, 200, "{}", set.text);
        let invalid = app.request(Method::PUT, &format!("{SFA}/settings/stages"), &[], Some(json!([{ "name": "only", "probability": "150" }]).to_string().into_bytes())).await;
        invalid.assert_problem(422, &["[0].probability", "", "", ]);
        let second = as_user(&app, &team.rep1, Method::POST, "/opportunities", Some(json!({
            "name": "Globex support", "party": customer, "amount": "8000", "currency": "USD", "expected_close": "2026-10-31",
        }))).await;
        assert_eq!(second.body["stage"], "discovery", "{}", second.text);
        let won = as_user(&app, &team.rep1, Method::POST, &format!("/opportunities/{}/won", second.body["number"].as_str().expect("a number")), None).await;
        assert_eq!(won.body["stage"], "closed won", "{}", won.text);
        assert_eq!(won.body["probability"], "100");

        let listed = as_user(&app, &team.rep1, Method::GET, "/opportunities?status=won", None).await;
        assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(1), "{}", listed.text);
        let by_party = as_user(&app, &team.manager, Method::GET, &format!("/opportunities?party={customer}"), None).await;
        assert_eq!(by_party.body["items"].as_array().map(Vec::len), Some(2), "{}", by_party.text);
        let none = as_user(&app, &team.rep2, Method::GET, &format!("/opportunities?party={customer}"), None).await;
        assert_eq!(none.body["items"].as_array().map(Vec::len), Some(0), "{}", none.text);
    }

    async fn activities_and_my_open_tasks(app: TestApp) {
        let team = setup(&app).await;
        let customer = party(&app, Some(&team.rep1), json!({ "kind": "organization", "name": "Initech", "roles": ["customer"] })).await;
        let call = as_user(&app, &team.rep1, Method::POST, "/activities", Some(json!({
            "kind": "call", "subject": "Intro call", "date": "2026-02-01", "regarding": { "party": customer },
        }))).await;
        assert_eq!(call.status, 201, "{}", call.text);
        assert_eq!(call.body["open"], false);
        for (subject, due) in [("Send proposal", "2000-01-31"), ("Follow up", "2999-12-31")] {
            let task = as_user(&app, &team.rep1, Method::POST, "/activities", Some(json!({
                "kind": "task", "subject": subject, "due": due, "regarding": { "party": customer },
            }))).await;
            assert_eq!(task.status, 201, "{}", task.text);
        }
        let tasks = as_user(&app, &team.rep1, Method::GET, "/my/tasks", None).await;
        assert_eq!(tasks.status, 200, "{}", tasks.text);
        let subjects: Vec<&str> = tasks.body["tasks"].as_array().expect("tasks").iter().map(|t| t["subject"].as_str().expect("a subject")).collect();
        assert_eq!(subjects, ["Send proposal", "Follow up"], "by due date");
        assert_eq!(tasks.body["overdue"], 1);
        assert_eq!(tasks.body["tasks"][0]["overdue"], true);
        let first = tasks.body["tasks"][0]["number"].as_str().expect("a number").to_owned();
        let done = as_user(&app, &team.rep1, Method::POST, &format!("/activities/{first}/done"), None).await;
        assert_eq!(done.body["open"], false, "{}", done.text);
        as_user(&app, &team.rep1, Method::POST, &format!("/activities/{first}/done"), None).await.assert_problem(409, &[]);
        let left = as_user(&app, &team.rep1, Method::GET, "/my/tasks", None).await;
        assert_eq!(left.body["tasks"].as_array().map(Vec::len), Some(1), "{}", left.text);
        let others = as_user(&app, &team.rep2, Method::GET, "/my/tasks", None).await;
        assert_eq!(others.body["tasks"].as_array().map(Vec::len), Some(0), "{}", others.text);

        let about = as_user(&app, &team.rep1, Method::GET, &format!("/activities?party={customer}"), None).await;
        assert_eq!(about.body["items"].as_array().map(Vec::len), Some(3), "{}", about.text);
        let hidden = as_user(&app, &team.rep2, Method::GET, &format!("/activities?party={customer}"), None).await;
        assert_eq!(hidden.body["items"].as_array().map(Vec::len), Some(0), "{}", hidden.text);
        as_user(&app, &team.rep2, Method::POST, &format!("/activities/{first}/done"), None).await.assert_problem(404, &[]);

        let bad = as_user(&app, &team.rep1, Method::POST, "/activities", Some(json!({
            "kind": "note", "subject": "", "due": "2026-01-01", "regarding": {},
        }))).await;
        bad.assert_problem(422, &["subject", "due", "regarding"]);
        let elsewhere = as_user(&app, &team.rep2, Method::POST, "/activities", Some(json!({
            "kind": "note", "subject": "Peek", "regarding": { "party": customer, "opportunity": "O-000404" },
        }))).await;
        elsewhere.assert_problem(422, &["regarding.party", "regarding.opportunity"]);
    }

    async fn the_pipeline_weighs_deals_by_probability_within_reach(app: TestApp) {
        let team = setup(&app).await;
        let customer = party(&app, None, json!({ "kind": "organization", "name": "Umbrella", "roles": ["customer"] })).await;
        let deal = |owner: i64, amount: &str, stage: Option<&str>, close: &str, outcome: Option<&str>| {
            let mut deal = json!({
                "name": format!("Deal {amount}"), "party": customer, "amount": amount, "currency": "USD",
                "expected_close": close, "owner": owner, "opened_on": "2026-01-01",
            });
            if let Some(stage) = stage {
                deal["stage"] = json!(stage);
            }
            if let Some(outcome) = outcome {
                deal["outcome"] = json!(outcome);
                deal["closed_on"] = json!(close);
                if outcome == "lost" {
                    deal["lost_reason"] = json!("competitor");
                }
            }
            deal
        };
        let imported = app.post(&format!("{SFA}/opportunities/import"), json!({ "opportunities": [
            deal(team.rep1.0, "1000", Some("proposal"), "2026-03-15", None),
            deal(team.rep1.0, "3000", Some("negotiation"), "2026-03-20", None),
            deal(team.rep2.0, "2000", None, "2026-04-10", None),
            deal(team.rep1.0, "5000", None, "2026-03-31", Some("won")),
            deal(team.rep2.0, "7000", None, "2026-02-28", Some("won")),
            deal(team.rep2.0, "4000", None, "2026-02-01", Some("lost")),
            deal(team.outsider.0, "9000", None, "2026-03-01", None),
        ]})).await;
        assert_eq!(imported.status, 201, "{}", imported.text);
        assert_eq!(imported.body["imported"], 7);

        let report = app.get(&format!("{SFA}/pipeline?from=2026-01&to=2026-12")).await;
        assert_eq!(report.status, 200, "{}", report.text);
        let usd = &report.body["currencies"][0];
        assert_eq!(usd["currency"], "USD");
        assert_eq!(usd["open"], json!({ "count": 4, "amount": "15000", "weighted": "3850" }), "{usd}");
        let stages: Vec<(&str, i64)> = usd["by_stage"].as_array().expect("stages").iter().map(|s| (s["stage"].as_str().expect("a stage"), s["sum"]["count"].as_i64().expect("a count"))).collect();
        assert_eq!(stages, [("prospecting", 2), ("proposal", 1), ("negotiation", 1)]);
        assert_eq!(usd["won"]["amount"], "12000");
        assert_eq!(usd["lost"]["count"], 1);
        assert_eq!(usd["win_rate"], "66.67");
        assert_eq!(usd["average_deal_size"], "6000.00");
        // 89 days (Jan 1 to Mar 31) and 58 days (to Feb 28).
        assert_eq!(usd["average_cycle_days"], "73.5");
        let march = usd["by_period"].as_array().expect("periods").iter().find(|p| p["period"] == "2026-03").expect("March");
        // Won 5000, plus 10% of 9000, 50% of 1000 and 75% of 3000.
        assert_eq!(march["forecast"], "8650.00", "{march}");

        // A rep's report covers their deals; the manager's their team's.
        let rep = as_user(&app, &team.rep1, Method::GET, "/pipeline?from=2026-01&to=2026-12", None).await;
        assert_eq!(rep.body["currencies"][0]["open"]["amount"], "4000", "{}", rep.text);
        let manager = as_user(&app, &team.manager, Method::GET, "/pipeline?from=2026-01&to=2026-12", None).await;
        assert_eq!(manager.body["currencies"][0]["open"]["amount"], "6000", "{}", manager.text);
        let narrowed = app.get(&format!("{SFA}/pipeline?from=2026-03&to=2026-03&owner={}", team.rep1.0)).await;
        assert_eq!(narrowed.body["currencies"][0]["open"]["count"], 2, "{}", narrowed.text);
        app.get(&format!("{SFA}/pipeline?from=2026-13&to=2026-12")).await.assert_problem(422, &["from"]);
        app.get(&format!("{SFA}/pipeline?from=2026-05&to=2026-01")).await.assert_problem(422, &["to"]);

        // Moving a deal moves its weight.
        let moved = app.patch(&format!("{SFA}/opportunities/O-000003"), json!({ "stage": "negotiation" })).await;
        assert_eq!(moved.status, 200, "{}", moved.text);
        let after = app.get(&format!("{SFA}/pipeline?from=2026-01&to=2026-12")).await;
        assert_eq!(after.body["currencies"][0]["open"]["weighted"], "5150", "{}", after.text);

        // An import with one bad deal keeps none.
        let bad = app.post(&format!("{SFA}/opportunities/import"), json!({ "opportunities": [
            deal(team.rep1.0, "10", None, "2026-03-15", None),
            deal(team.rep1.0, "ten", None, "2026-03-15", None),
        ]})).await;
        bad.assert_problem(422, &["opportunities[1].amount"]);
        let all = app.get(&format!("{SFA}/opportunities?limit=100")).await;
        assert_eq!(all.body["items"].as_array().map(Vec::len), Some(7), "{}", all.text);
    }

    async fn the_customer_360_brings_master_data_deals_activities_and_the_ledger(app: TestApp) {
        let team = setup(&app).await;
        let customer = party(&app, None, json!({
            "kind": "organization", "name": "Hooli", "roles": ["customer"], "credit_limit": "1000.00",
            "owner": team.rep1.0,
        })).await;
        let opened = as_user(&app, &team.rep1, Method::POST, "/opportunities", Some(json!({
            "name": "Hooli phones", "party": customer, "amount": "2500", "currency": "USD", "expected_close": "2026-12-15",
        }))).await;
        assert_eq!(opened.status, 201, "{}", opened.text);
        let note = as_user(&app, &team.rep1, Method::POST, "/activities", Some(json!({
            "kind": "note", "subject": "Prefers email", "regarding": { "party": customer },
        }))).await;
        assert_eq!(note.status, 201, "{}", note.text);
        let sale = app.post("/api/v1/ledger/entries", json!({
            "date": "2025-06-01", "memo": "Invoice 17",
            "lines": [
                { "account": "1100", "debit": "1500.00", "party": customer },
                { "account": "4000", "credit": "1500.00" },
            ],
        })).await;
        assert_eq!(sale.status, 201, "{}", sale.text);

        let view = app.get(&format!("{SFA}/customers/{customer}")).await;
        assert_eq!(view.status, 200, "{}", view.text);
        assert_eq!(view.body["party"]["name"], "Hooli");
        assert_eq!(view.body["open_opportunities"]["items"][0]["name"], "Hooli phones");
        assert_eq!(view.body["recent_activities"]["items"][0]["subject"], "Prefers email");
        assert_eq!(view.body["receivable"]["receivable"]["amount"], "1500.00", "{}", view.text);
        assert_eq!(view.body["credit_status"]["status"], "over_limit");
        assert_eq!(view.body["credit_status"]["source"], "ledger");
        // Orders and invoicing are not installed: the view says so.
        for part in ["orders", "invoices"] {
            assert_eq!(view.body[part]["available"], false, "{part}: {}", view.text);
            assert!(view.body[part]["reason"].as_str().is_some_and(|r| r.contains("not installed")), "{part}: {}", view.text);
        }

        // The rep who owns the customer sees the same: a party's balance goes with the party.
        let rep = as_user(&app, &team.rep1, Method::GET, &format!("/customers/{customer}"), None).await;
        assert_eq!(rep.status, 200, "{}", rep.text);
        assert_eq!(rep.body["open_opportunities"]["items"].as_array().map(Vec::len), Some(1));
        assert_eq!(rep.body["receivable"]["receivable"]["amount"], "1500.00", "{}", rep.text);
        // Without the permission to read activities, that part says why.
        let no_activities = app.post("/api/v1/roles", json!({ "name": "deal-reader", "permissions": [
            { "resource": "plugins.sfa", "action": "use" },
            { "resource": "plugins.sfa.opportunities", "action": "read" },
            { "resource": "parties", "action": "read" },
        ]})).await;
        assert_eq!(no_activities.status, 201, "{}", no_activities.text);
        let reader = app.user_with_role("dora", "deal-reader").await;
        let partial = as_user(&app, &reader, Method::GET, &format!("/customers/{customer}"), None).await;
        assert_eq!(partial.status, 200, "{}", partial.text);
        assert_eq!(partial.body["recent_activities"]["available"], false, "{}", partial.text);
        assert!(partial.body["recent_activities"]["reason"].as_str().is_some_and(|r| r.contains("plugins.sfa.activities:read")), "{}", partial.text);
        // Another rep does not see the customer at all.
        as_user(&app, &team.rep2, Method::GET, &format!("/customers/{customer}"), None).await.assert_problem(404, &[]);
        app.get(&format!("{SFA}/customers/abc")).await.assert_problem(422, &["party"]);
    }
}
