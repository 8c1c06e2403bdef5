//! The customer master through the HTTP API, on both backends: parties, custom fields, search,
//! duplicates and merging, balances, ownership rules, import and export, and every rejection.

mod common;

use axum::http::Method;
use common::{TestApp, simple_entry};
use serde_json::{Value, json};

async fn create(app: &TestApp, body: Value) -> Value {
    let reply = app.post("/api/v1/parties", body).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.body
}

fn names(reply: &common::Reply) -> Vec<String> {
    reply.body["parties"]
        .as_array()
        .expect("parties")
        .iter()
        .map(|p| p["name"].as_str().expect("present").to_owned())
        .collect()
}

on_both_backends! {
    async fn a_party_is_created_normalized_read_changed_and_audited(app: TestApp) {
        let party = create(&app, json!({
            "kind": "organization",
            "name": "Zephyr Widgets GmbH",
            "legal_name": "Zephyr Widgets Gesellschaft mbH",
            "roles": ["customer", "vendor", "customer"],
            "tags": ["key-account", " EMEA "],
            "emails": [" Billing@Zephyr.Example "],
            "phones": ["+49 (30) 123-4567"],
            "tax_ids": [{"scheme": "VAT", "value": "de 123.456.789", "country": "de"}],
            "external_ids": [{"system": "legacy-crm", "id": "C-10442"}],
            "addresses": [{"purpose": "Billing", "lines": ["Hauptstr. 1"], "city": "Berlin", "postal_code": "10115", "country": "de"}],
            "default_currency": "EUR",
            "payment_terms_days": 30,
            "credit_limit": "25000.00"
        })).await;
        let id = party["id"].as_i64().expect("present");
        assert_eq!(party["roles"], json!(["customer", "vendor"]));
        assert_eq!(party["emails"], json!(["billing@zephyr.example"]));
        assert_eq!(party["phones"], json!(["+49301234567"]));
        assert_eq!(party["tax_ids"][0], json!({"scheme": "vat", "value": "DE123456789", "country": "DE"}));
        assert_eq!(party["addresses"][0]["country"], "DE");
        assert_eq!(party["addresses"][0]["purpose"], "billing");
        assert_eq!(party["credit_limit"], "25000.00");
        assert_eq!(party["owner"], app.admin_id);
        assert_eq!(party["status"], "active");

        let read = app.get(&format!("/api/v1/parties/{id}")).await;
        assert_eq!(read.status, 200);
        assert_eq!(read.body, party);

        let changed = app.patch(&format!("/api/v1/parties/{id}"), json!({
            "status": "blocked", "legal_name": null, "tags": ["vip"]
        })).await;
        assert_eq!(changed.status, 200, "{}", changed.text);
        assert_eq!(changed.body["status"], "blocked");
        assert!(changed.body.get("legal_name").is_none());
        assert_eq!(changed.body["tags"], json!(["vip"]));
        assert_eq!(changed.body["emails"], party["emails"], "fields not sent stay");

        let audit = app.get(&format!("/api/v1/audit?object_type=party&object_id={id}")).await;
        let actions: Vec<&str> = audit.body["records"].as_array().expect("present").iter()
            .map(|r| r["action"].as_str().expect("present")).collect();
        assert_eq!(actions.len(), 2, "{}", audit.text);
        assert!(actions.contains(&"parties:create") && actions.contains(&"parties:update"));
    }

    async fn bad_party_input_is_refused_naming_each_field_and_writes_nothing(app: TestApp) {
        let reply = app.post("/api/v1/parties", json!({
            "kind": "organization",
            "name": " ",
            "emails": ["not-an-email"],
            "phones": ["030 1234567"],
            "addresses": [{"purpose": "billing", "country": "XX"}],
            "tax_ids": [{"scheme": "vat", "value": "*"}],
            "default_currency": "EURO",
            "credit_limit": "12.345",
            "status": "merged",
            "relationships": [{"kind": "contact_of", "party": 1}]
        })).await;
        reply.assert_problem(422, &[
            "name", "addresses[0].country", "emails[0]", "phones[0]", "tax_ids[0].value",
            "default_currency", "credit_limit", "status", "relationships[0].kind",
        ]);
        let malformed = app.post_raw("/api/v1/parties", "{\"kind\": \"organization\",").await;
        assert_eq!(malformed.status, 400, "{}", malformed.text);
        let unknown_kind = app.post("/api/v1/parties", json!({"kind": "robot", "name": "R2"})).await;
        assert_eq!(unknown_kind.status, 422, "{}", unknown_kind.text);
        let missing_party = app.post("/api/v1/parties", json!({
            "kind": "person", "name": "Ada Contact",
            "relationships": [{"kind": "contact_of", "party": 999}]
        })).await;
        missing_party.assert_problem(422, &["relationships[0].party"]);
        let missing_owner = app.post("/api/v1/parties", json!({"kind": "person", "name": "Bo", "owner": 999})).await;
        missing_owner.assert_problem(422, &["owner"]);
        let list = app.get("/api/v1/parties").await;
        assert_eq!(list.body["parties"], json!([]), "nothing was written");
        assert_eq!(app.get("/api/v1/parties/12345").await.status, 404);
    }

    async fn custom_fields_are_declared_validated_stored_and_filtered(app: TestApp) {
        for field in [
            json!({"name": "tier", "label": "Tier", "field_type": "enum", "options": ["gold", "silver"]}),
            json!({"name": "employees", "label": "Employees", "field_type": "number", "applies_to": "organization"}),
            json!({"name": "founded", "label": "Founded", "field_type": "date"}),
            json!({"name": "revenue", "label": "Revenue", "field_type": "decimal"}),
            json!({"name": "partner", "label": "Partner", "field_type": "bool"}),
            json!({"name": "motto", "label": "Motto", "field_type": "text"}),
            json!({"name": "referrer", "label": "Referred by", "field_type": "party"}),
        ] {
            let reply = app.post("/api/v1/parties/fields", field).await;
            assert_eq!(reply.status, 201, "{}", reply.text);
        }
        let duplicate = app.post("/api/v1/parties/fields", json!({"name": "tier", "label": "T", "field_type": "text"})).await;
        assert_eq!(duplicate.status, 409);
        app.post("/api/v1/parties/fields", json!({"name": "Bad Name", "label": "x", "field_type": "text"}))
            .await
            .assert_problem(422, &["name"]);
        app.post("/api/v1/parties/fields", json!({"name": "size", "label": "Size", "field_type": "enum"}))
            .await
            .assert_problem(422, &["options"]);

        let acme = create(&app, json!({"kind": "organization", "name": "Acme Tools", "custom_fields": {
            "tier": "gold", "employees": 120, "founded": "1999-04-01", "revenue": "1250000.50",
            "partner": true, "motto": "Tools that last"
        }})).await;
        assert_eq!(acme["custom_fields"]["tier"], "gold");
        let referred = create(&app, json!({"kind": "person", "name": "Rita Referred",
            "custom_fields": {"referrer": acme["id"]}})).await;
        assert_eq!(referred["custom_fields"]["referrer"], acme["id"]);

        let bad = app.post("/api/v1/parties", json!({"kind": "person", "name": "Wrong Types", "custom_fields": {
            "tier": "platinum", "employees": 5, "founded": "yesterday", "revenue": 12.5,
            "partner": "yes", "motto": 7, "referrer": 999, "shoe_size": 42
        }})).await;
        bad.assert_problem(422, &[
            "custom_fields.tier", "custom_fields.employees", "custom_fields.founded",
            "custom_fields.revenue", "custom_fields.partner", "custom_fields.motto",
            "custom_fields.shoe_size", "custom_fields.referrer",
        ]);

        let gold = app.get("/api/v1/parties?field=tier:gold").await;
        assert_eq!(names(&gold), ["Acme Tools"]);
        let by_text = app.get("/api/v1/parties?q=last").await;
        assert_eq!(names(&by_text), ["Acme Tools"], "text fields are searchable");
        app.get("/api/v1/parties?field=colour:red").await.assert_problem(422, &["field"]);
        app.get("/api/v1/parties?field=employees:many").await.assert_problem(422, &["field"]);

        let in_use = app.request(Method::DELETE, "/api/v1/parties/fields/tier", &[], None).await;
        assert_eq!(in_use.status, 409, "{}", in_use.text);
        let removed_option = app.patch("/api/v1/parties/fields/tier", json!({"options": ["silver"]})).await;
        assert_eq!(removed_option.status, 409, "{}", removed_option.text);
        let relabelled = app.patch("/api/v1/parties/fields/tier", json!({"label": "Customer tier", "options": ["gold", "silver", "bronze"]})).await;
        assert_eq!(relabelled.status, 200, "{}", relabelled.text);
        let required = app.patch("/api/v1/parties/fields/partner", json!({"required": true})).await;
        assert_eq!(required.status, 200);
        app.post("/api/v1/parties", json!({"kind": "organization", "name": "No Partner Flag"}))
            .await
            .assert_problem(422, &["custom_fields.partner"]);
        let unused = app.request(Method::DELETE, "/api/v1/parties/fields/founded", &[], None).await;
        assert_eq!(unused.status, 409, "acme holds a value");
        let cleared = app.patch(&format!("/api/v1/parties/{}", acme["id"]), json!({"custom_fields": {"founded": null}})).await;
        assert_eq!(cleared.status, 200, "{}", cleared.text);
        assert!(cleared.body["custom_fields"].get("founded").is_none());
        let deleted = app.request(Method::DELETE, "/api/v1/parties/fields/founded", &[], None).await;
        assert_eq!(deleted.status, 200, "{}", deleted.text);
    }

    async fn search_finds_fragments_of_names_emails_phones_and_tax_ids_in_pages(app: TestApp) {
        for (name, email, phone, tax) in [
            ("Zephyr Widgets GmbH", "billing@zephyr.example", "+49 30 1234567", "DE111111111"),
            ("Müller & Söhne", "info@mueller.example", "+49 89 7654321", "DE222222222"),
            ("Acme Tools Ltd", "ap@acme.example", "+44 20 79460958", "GB333333333"),
        ] {
            create(&app, json!({"kind": "organization", "name": name, "emails": [email], "phones": [phone],
                "tax_ids": [{"scheme": "vat", "value": tax}], "roles": ["customer"]})).await;
        }
        create(&app, json!({"kind": "person", "name": "Ada Lovelace", "roles": ["contact"], "tags": ["Engineer"]})).await;

        assert_eq!(names(&app.get("/api/v1/parties?q=widg").await), ["Zephyr Widgets GmbH"]);
        assert_eq!(names(&app.get("/api/v1/parties?q=muller").await), ["Müller & Söhne"], "accents fold");
        assert_eq!(names(&app.get("/api/v1/parties?q=ZEPHYR.example").await), ["Zephyr Widgets GmbH"]);
        assert_eq!(names(&app.get("/api/v1/parties?q=7946").await), ["Acme Tools Ltd"]);
        assert_eq!(names(&app.get("/api/v1/parties?q=GB3333").await), ["Acme Tools Ltd"]);
        assert_eq!(names(&app.get("/api/v1/parties?q=acme%20tool").await), ["Acme Tools Ltd"]);
        assert_eq!(names(&app.get("/api/v1/parties?q=ze").await), ["Zephyr Widgets GmbH"], "short words match name starts");
        assert!(names(&app.get("/api/v1/parties?q=nothing-like-this").await).is_empty());
        assert_eq!(names(&app.get("/api/v1/parties?role=contact").await), ["Ada Lovelace"]);
        assert_eq!(names(&app.get("/api/v1/parties?tag=engineer").await), ["Ada Lovelace"]);
        assert_eq!(names(&app.get("/api/v1/parties?kind=person").await), ["Ada Lovelace"]);

        let first = app.get("/api/v1/parties?limit=2").await;
        assert_eq!(names(&first), ["Acme Tools Ltd", "Ada Lovelace"]);
        let next = first.body["next"].as_str().expect("a next page");
        let second = app.get(&format!("/api/v1/parties?limit=2&cursor={next}")).await;
        assert_eq!(names(&second), ["Müller & Söhne", "Zephyr Widgets GmbH"]);
        assert!(second.body.get("next").is_none());

        // Searches page in creation order.
        for name in ["Widget Works", "Alpha Widgets", "Widgetry Ltd"] {
            create(&app, json!({"kind": "organization", "name": name})).await;
        }
        let first = app.get("/api/v1/parties?q=widget&limit=2").await;
        assert_eq!(names(&first), ["Zephyr Widgets GmbH", "Widget Works"]);
        let next = first.body["next"].as_str().expect("a next page");
        let second = app.get(&format!("/api/v1/parties?q=widget&limit=2&cursor={next}")).await;
        assert_eq!(names(&second), ["Alpha Widgets", "Widgetry Ltd"]);
        assert!(second.body.get("next").is_none());
        let by_name = app.get("/api/v1/parties?q=widget&sort=name&limit=3").await;
        assert_eq!(names(&by_name), ["Alpha Widgets", "Widget Works", "Widgetry Ltd"]);
        let next = by_name.body["next"].as_str().expect("a next page");
        let rest = app.get(&format!("/api/v1/parties?q=widget&sort=name&limit=3&cursor={next}")).await;
        assert_eq!(names(&rest), ["Zephyr Widgets GmbH"]);
        let created = app.get("/api/v1/parties?sort=created&limit=1").await;
        assert_eq!(names(&created), ["Zephyr Widgets GmbH"]);
        assert_eq!(app.get("/api/v1/parties?sort=size").await.status, 400);

        app.get("/api/v1/parties?limit=0").await.assert_problem(422, &["limit"]);
        app.get("/api/v1/parties?cursor=garbage").await.assert_problem(422, &["cursor"]);
        assert_eq!(app.get("/api/v1/parties?status=sleeping").await.status, 400);
        assert_eq!(app.get("/api/v1/parties?colour=red").await.status, 400);
    }

    async fn duplicates_are_reported_confirmed_and_merged(app: TestApp) {
        let original = create(&app, json!({"kind": "organization", "name": "Zephyr Widgets GmbH",
            "emails": ["billing@zephyr.example"], "tax_ids": [{"scheme": "vat", "value": "DE123456789"}],
            "tags": ["a"], "roles": ["customer"]})).await;
        let original_id = original["id"].as_i64().expect("present");

        let by_tax = app.post("/api/v1/parties", json!({"kind": "organization", "name": "Something Else",
            "tax_ids": [{"scheme": "vat", "value": "DE 123 456 789"}]})).await;
        assert_eq!(by_tax.status, 409, "{}", by_tax.text);
        assert_eq!(by_tax.body["type"], "urn:keel:problem:possible-duplicates");
        assert_eq!(by_tax.body["candidates"][0]["id"], original_id);
        assert_eq!(by_tax.body["candidates"][0]["reasons"], json!(["tax_id"]));

        let by_email = app.post("/api/v1/parties", json!({"kind": "organization", "name": "Other Name",
            "emails": ["BILLING@zephyr.example"]})).await;
        assert_eq!(by_email.status, 409);
        let by_name = app.post("/api/v1/parties", json!({"kind": "organization", "name": "Zephir Widgets Ltd"})).await;
        assert_eq!(by_name.status, 409, "{}", by_name.text);
        assert_eq!(by_name.body["candidates"][0]["reasons"], json!(["name"]));
        let unrelated = app.post("/api/v1/parties", json!({"kind": "organization", "name": "Acme Tools"})).await;
        assert_eq!(unrelated.status, 201, "{}", unrelated.text);

        let confirmed = create(&app, json!({"kind": "organization", "name": "Zephir Widgets Ltd",
            "emails": ["orders@zephyr.example"], "tags": ["b"], "roles": ["vendor"], "allow_duplicate": true})).await;
        let duplicate_id = confirmed["id"].as_i64().expect("present");
        let contact = create(&app, json!({"kind": "person", "name": "Carla Contact",
            "relationships": [{"kind": "contact_of", "party": duplicate_id, "title": "Buyer"}]})).await;
        let found = app.get(&format!("/api/v1/parties/{original_id}/duplicates")).await;
        assert_eq!(found.status, 200);
        assert_eq!(found.body[0]["id"], duplicate_id);

        // Ledger lines tagged with the duplicate stay as posted and count for the survivor.
        let mut entry = simple_entry("2025-03-01", "1100", "4000", "100.00");
        entry["lines"][0]["party"] = json!(duplicate_id);
        assert_eq!(app.post("/api/v1/ledger/entries", entry).await.status, 201);

        app.post(&format!("/api/v1/parties/{original_id}/merge"), json!({"into": original_id}))
            .await
            .assert_problem(422, &["into"]);
        app.post(&format!("/api/v1/parties/{duplicate_id}/merge"), json!({"into": 999}))
            .await
            .assert_problem(422, &["into"]);
        let merged = app.post(&format!("/api/v1/parties/{duplicate_id}/merge"), json!({"into": original_id})).await;
        assert_eq!(merged.status, 200, "{}", merged.text);
        let survivor = &merged.body["survivor"];
        assert_eq!(survivor["emails"], json!(["billing@zephyr.example", "orders@zephyr.example"]));
        assert_eq!(survivor["roles"], json!(["customer", "vendor"]));
        assert_eq!(survivor["tags"], json!(["a", "b"]));
        assert_eq!(merged.body["references_moved"], 1);

        let loser = app.get(&format!("/api/v1/parties/{duplicate_id}")).await;
        assert_eq!(loser.body["status"], "merged");
        assert_eq!(loser.body["merged_into"], original_id);
        let contact = app.get(&format!("/api/v1/parties/{}", contact["id"])).await;
        assert_eq!(contact.body["relationships"][0]["party"], original_id);
        let contacts = app.get(&format!("/api/v1/parties?related_to={original_id}")).await;
        assert_eq!(names(&contacts), ["Carla Contact"]);
        assert!(!names(&app.get("/api/v1/parties?q=zephir").await).contains(&"Zephir Widgets Ltd".to_owned()));

        let balance = app.get(&format!("/api/v1/parties/{original_id}/balance")).await;
        assert_eq!(balance.body["receivable"], "100.00", "{}", balance.text);

        let again = app.post(&format!("/api/v1/parties/{duplicate_id}/merge"), json!({"into": original_id})).await;
        assert_eq!(again.status, 409);
        let mut stale = simple_entry("2025-03-02", "1100", "4000", "5.00");
        stale["lines"][0]["party"] = json!(duplicate_id);
        app.post("/api/v1/ledger/entries", stale).await.assert_problem(422, &["lines[0].party"]);
        let edit_merged = app.patch(&format!("/api/v1/parties/{duplicate_id}"), json!({"name": "X"})).await;
        assert_eq!(edit_merged.status, 409);

        let audit = app.get(&format!("/api/v1/audit?action=parties:merge&object_id={duplicate_id}")).await;
        assert_eq!(audit.body["records"].as_array().expect("present").len(), 1, "{}", audit.text);
    }

    async fn balances_split_receivable_and_payable_with_credit(app: TestApp) {
        let customer = create(&app, json!({"kind": "organization", "name": "Customer Co",
            "roles": ["customer", "vendor"], "credit_limit": "1000"})).await;
        let id = customer["id"].as_i64().expect("present");
        let mut sale = simple_entry("2025-02-01", "1100", "4000", "400.00");
        sale["lines"][0]["party"] = json!(id);
        assert_eq!(app.post("/api/v1/ledger/entries", sale).await.status, 201);
        let mut bill = simple_entry("2025-02-10", "6000", "2000", "150.00");
        bill["lines"][1]["party"] = json!(id);
        assert_eq!(app.post("/api/v1/ledger/entries", bill).await.status, 201);
        let mut payment = simple_entry("2025-03-01", "1020", "1100", "100.00");
        payment["lines"][1]["party"] = json!(id);
        assert_eq!(app.post("/api/v1/ledger/entries", payment).await.status, 201);

        let balance = app.get(&format!("/api/v1/parties/{id}/balance")).await;
        assert_eq!(balance.status, 200, "{}", balance.text);
        assert_eq!(balance.body["receivable"], "300.00");
        assert_eq!(balance.body["payable"], "150.00");
        assert_eq!(balance.body["net"], "150.00");
        assert_eq!(balance.body["credit_limit"], "1000.00");
        assert_eq!(balance.body["credit_available"], "700.00");
        let earlier = app.get(&format!("/api/v1/parties/{id}/balance?as_of=2025-02-05")).await;
        assert_eq!(earlier.body["receivable"], "400.00");
        assert_eq!(earlier.body["payable"], "0.00");
        app.get(&format!("/api/v1/parties/{id}/balance?as_of=soon")).await.assert_problem(422, &["as_of"]);
    }

    async fn sales_reps_reach_their_own_parties_and_managers_their_team(app: TestApp) {
        let (rep_id, rep) = app.user_with_role("rita", "sales-rep").await;
        let (other_id, other) = app.user_with_role("otto", "sales-rep").await;
        let (manager_id, manager) = app.user_with_role("mia", "sales-manager").await;
        for user in [rep_id, other_id] {
            let reply = app.patch(&format!("/api/v1/users/{user}"), json!({"manager": manager_id})).await;
            assert_eq!(reply.status, 200, "{}", reply.text);
        }
        let (_, outsider) = app.user_with_role("olga", "sales-rep").await;

        let mine = app.as_user(&rep, Method::POST, "/api/v1/parties",
            Some(json!({"kind": "organization", "name": "Rita's Customer"}))).await;
        assert_eq!(mine.status, 201, "{}", mine.text);
        assert_eq!(mine.body["owner"], rep_id, "a rep owns what they create");
        let theirs = app.as_user(&other, Method::POST, "/api/v1/parties",
            Some(json!({"kind": "organization", "name": "Otto's Customer"}))).await;
        assert_eq!(theirs.status, 201);
        let admin_owned = create(&app, json!({"kind": "organization", "name": "House Account"})).await;

        let list = app.as_user(&rep, Method::GET, "/api/v1/parties", None).await;
        assert_eq!(names(&list), ["Rita's Customer"]);
        let peek = app.as_user(&rep, Method::GET, &format!("/api/v1/parties/{}", theirs.body["id"]), None).await;
        assert_eq!(peek.status, 404, "another rep's party is not revealed");
        let edit = app.as_user(&rep, Method::PATCH, &format!("/api/v1/parties/{}", admin_owned["id"]),
            Some(json!({"name": "Mine now"}))).await;
        assert_eq!(edit.status, 404);
        let give_away = app.as_user(&rep, Method::PATCH, &format!("/api/v1/parties/{}", mine.body["id"]),
            Some(json!({"owner": other_id}))).await;
        assert_eq!(give_away.status, 403, "{}", give_away.text);
        let merge = app.as_user(&rep, Method::POST, &format!("/api/v1/parties/{}/merge", mine.body["id"]),
            Some(json!({"into": theirs.body["id"]}))).await;
        assert_eq!(merge.status, 403, "merging needs parties:merge");
        let field = app.as_user(&rep, Method::POST, "/api/v1/parties/fields",
            Some(json!({"name": "x", "label": "X", "field_type": "text"}))).await;
        assert_eq!(field.status, 403);

        let team = app.as_user(&manager, Method::GET, "/api/v1/parties", None).await;
        assert_eq!(names(&team), ["Otto's Customer", "Rita's Customer"]);
        let reassign = app.as_user(&manager, Method::PATCH, &format!("/api/v1/parties/{}", mine.body["id"]),
            Some(json!({"owner": other_id}))).await;
        assert_eq!(reassign.status, 200, "{}", reassign.text);
        let outside = app.as_user(&manager, Method::GET, &format!("/api/v1/parties/{}", admin_owned["id"]), None).await;
        assert_eq!(outside.status, 404);
        let nothing = app.as_user(&outsider, Method::GET, "/api/v1/parties", None).await;
        assert_eq!(names(&nothing), Vec::<String>::new());
    }

    async fn a_large_import_is_written_whole_and_found_by_every_key(app: TestApp) {
        // More rows than one import chunk holds (the next chunk is checked while the first
        // commits), written in bulk; a bad row in the first chunk, and a row of the second
        // that repeats an email of the first.
        const ROWS: usize = 10_300;
        let mut file = String::from("external_id,name,kind,roles,tags,emails,phones,tax_ids,address_city,address_country\n");
        for i in 0..ROWS {
            let email = match i {
                700 => "not-an-email".to_owned(),
                10_200 => "buyer5@bulk.example".to_owned(),
                _ => format!("buyer{i}@bulk.example"),
            };
            file.push_str(&format!(
                "B-{i},Bülk Händler {i} GmbH,organization,customer,wholesale,{email},+1 415 555 {i:04},vat:US7{i:08},Springfield,US\n"
            ));
        }
        let import = |file: String| {
            let app = &app;
            async move {
                app.request(Method::POST, "/api/v1/parties/import",
                    &[("content-type", "text/csv")], Some(file.into_bytes())).await
            }
        };
        let report = import(file.clone()).await;
        assert_eq!(report.status, 200, "{}", report.text);
        assert_eq!(report.body["created"], ROWS - 2, "{}", report.text);
        assert_eq!(report.body["errors"][0]["row"], 702);
        assert_eq!(report.body["errors"][1]["row"], 10_202);
        let clash = &report.body["errors"][1]["errors"][0];
        assert_eq!(clash["field"], "emails");
        assert!(clash["message"].as_str().expect("a message").contains("has the same email"), "{clash}");

        // The search text, every kind of key and the row itself, for the first and last rows.
        assert_eq!(names(&app.get("/api/v1/parties?q=handler%2010299").await), ["Bülk Händler 10299 GmbH"]);
        assert_eq!(names(&app.get("/api/v1/parties?q=buyer0@bulk").await), ["Bülk Händler 0 GmbH"]);
        assert_eq!(names(&app.get("/api/v1/parties?q=US700001234").await), ["Bülk Händler 1234 GmbH"]);
        let tagged = app.get("/api/v1/parties?tag=wholesale&role=customer&limit=1").await;
        assert_eq!(tagged.status, 200, "{}", tagged.text);
        assert_eq!(tagged.body["parties"].as_array().expect("parties").len(), 1);
        for (body, field) in [
            (json!({"kind": "organization", "name": "Someone Else", "emails": ["buyer10299@bulk.example"]}), "email"),
            (json!({"kind": "organization", "name": "Someone Else", "phones": ["+1 415 555 0003"]}), "phone"),
            (json!({"kind": "organization", "name": "Bulk Handler 42"}), "name"),
        ] {
            let duplicate = app.post("/api/v1/parties", body).await;
            assert_eq!(duplicate.status, 409, "the imported {field} is a key: {}", duplicate.text);
        }

        // A second run finds every row by its external id: nothing new, every row updated.
        let again = import(file).await;
        assert_eq!(again.body["created"], 0, "{}", again.text);
        assert_eq!(again.body["updated"], ROWS - 2);
        let verification = keel_host::audit::verify(&app.state.db).await.expect("verified");
        assert_eq!(verification.first_broken, None);
        assert!(verification.records >= 2 * (ROWS as u64 - 2), "{}", verification.records);
    }

    async fn csv_import_dry_runs_reports_bad_rows_and_is_idempotent_by_external_id(app: TestApp) {
        let field = app.post("/api/v1/parties/fields", json!({"name": "tier", "label": "Tier", "field_type": "enum", "options": ["gold", "silver"]})).await;
        assert_eq!(field.status, 201);
        let file = "external_id,name,kind,roles,emails,phones,address_city,address_country,field.tier\n\
                    C-1,Zephyr Widgets GmbH,organization,customer,billing@zephyr.example,+49 30 1234567,Berlin,DE,gold\n\
                    C-2,Acme Tools,organization,vendor,not-an-email,,,,\n\
                    C-3,Ada Lovelace,person,contact,ada@example.org,,London,GB,platinum\n\
                    C-4,Globex,organization,customer,,,,XX,\n\
                    C-5,Initech,organization,customer;vendor,,,,,silver\n";
        let import = |query: &'static str| {
            let app = &app;
            async move {
                app.request(Method::POST, &format!("/api/v1/parties/import{query}"),
                    &[("content-type", "text/csv")], Some(file.as_bytes().to_vec())).await
            }
        };
        let dry = import("?dry_run=true").await;
        assert_eq!(dry.status, 200, "{}", dry.text);
        assert_eq!(dry.body["created"], 2);
        assert_eq!(dry.body["failed"], 3);
        let rows: Vec<i64> = dry.body["errors"].as_array().expect("present").iter().map(|e| e["row"].as_i64().expect("present")).collect();
        assert_eq!(rows, [3, 4, 5]);
        assert_eq!(dry.body["errors"][0]["errors"][0]["field"], "emails[0]");
        assert!(names(&app.get("/api/v1/parties").await).is_empty(), "a dry run writes nothing");

        let strict = import("?all_or_nothing=true").await;
        assert_eq!(strict.body["rolled_back"], true, "{}", strict.text);
        assert!(names(&app.get("/api/v1/parties").await).is_empty());

        let real = import("").await;
        assert_eq!(real.body["created"], 2, "{}", real.text);
        assert_eq!(names(&app.get("/api/v1/parties").await), ["Initech", "Zephyr Widgets GmbH"]);
        let again = import("").await;
        assert_eq!(again.body["created"], 0, "{}", again.text);
        assert_eq!(again.body["updated"], 2);
        assert_eq!(names(&app.get("/api/v1/parties").await).len(), 2, "re-importing changes nothing twice");

        let twice = "external_id,name,emails\n\
                     D-1,Delta Corp,ops@delta.example\n\
                     D-2,Delta Two,OPS@delta.example\n\
                     D-1,Delta Again,other@delta.example\n";
        let report = app.request(Method::POST, "/api/v1/parties/import",
            &[("content-type", "text/csv")], Some(twice.as_bytes().to_vec())).await;
        assert_eq!(report.body["created"], 1, "{}", report.text);
        assert_eq!(report.body["errors"][0]["row"], 3);
        assert_eq!(report.body["errors"][0]["errors"][0]["field"], "emails");
        assert_eq!(report.body["errors"][1]["row"], 4);
        assert_eq!(report.body["errors"][1]["errors"][0]["field"], "external_id");

        let unknown = app.request(Method::POST, "/api/v1/parties/import",
            &[("content-type", "text/csv")], Some(b"name,colour\nA,red\n".to_vec())).await;
        unknown.assert_problem(422, &["file"]);

        let export = app.get("/api/v1/parties?format=csv").await;
        assert_eq!(export.status, 200);
        let text = export.text;
        assert!(text.starts_with("id,external_system,external_id,kind,name"), "{text}");
        assert!(text.contains("import,C-1,organization,Zephyr Widgets GmbH"), "{text}");
        assert!(text.lines().next().expect("present").ends_with("field.tier"));
        assert_eq!(text.lines().count(), 4);
    }
}

on_both_backends! {
    async fn xlsx_imports_like_csv(app: TestApp) {
        let workbook = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/parties.xlsx"))
            .expect("the fixture");
        let reply = app.request(Method::POST, "/api/v1/parties/import",
            &[("content-type", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")],
            Some(workbook)).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.body["created"], 1);
        assert_eq!(reply.body["errors"][0]["row"], 3);
        let list = app.get("/api/v1/parties?q=umbrella").await;
        let party = &list.body["parties"][0];
        assert_eq!(party["payment_terms_days"], 30);
        assert_eq!(party["credit_limit"], "5000.50");
        let garbage = app.request(Method::POST, "/api/v1/parties/import",
            &[("content-type", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")],
            Some(b"not a workbook".to_vec())).await;
        garbage.assert_problem(422, &["file"]);
    }

    async fn a_person_is_exported_and_anonymized_while_the_books_stay_balanced(app: TestApp) {
        let org = create(&app, json!({"kind": "organization", "name": "Employer Co"})).await;
        let person = create(&app, json!({"kind": "person", "name": "Erin Example",
            "emails": ["erin@example.org"], "phones": ["+1 415 555 0100"], "roles": ["customer"],
            "addresses": [{"purpose": "home", "lines": ["1 Main St"], "city": "Springfield", "country": "US"}],
            "relationships": [{"kind": "contact_of", "party": org["id"], "title": "Buyer"}]})).await;
        let id = person["id"].as_i64().expect("present");
        let mut sale = simple_entry("2025-04-01", "1100", "4000", "80.00");
        sale["lines"][0]["party"] = json!(id);
        assert_eq!(app.post("/api/v1/ledger/entries", sale).await.status, 201);

        let data = app.get(&format!("/api/v1/parties/{id}/personal-data")).await;
        assert_eq!(data.status, 200, "{}", data.text);
        assert_eq!(data.body["party"]["emails"], json!(["erin@example.org"]));
        assert_eq!(data.body["ledger_lines"][0]["amount"], "80.00");
        assert_eq!(data.body["ledger_lines"][0]["account"], "1100");
        assert_eq!(data.body["audit"][0]["action"], "parties:create");

        let (_, rep) = app.user_with_role("rep", "sales-rep").await;
        let denied = app.as_user(&rep, Method::GET, &format!("/api/v1/parties/{id}/personal-data"), None).await;
        assert_eq!(denied.status, 403);
        let org_refused = app.post(&format!("/api/v1/parties/{}/anonymize", org["id"]), json!({})).await;
        org_refused.assert_problem(422, &["kind"]);

        let erased = app.post(&format!("/api/v1/parties/{id}/anonymize"), json!({})).await;
        assert_eq!(erased.status, 200, "{}", erased.text);
        assert_eq!(erased.body["name"], format!("Anonymized person {id}"));
        assert_eq!(erased.body["emails"], json!([]));
        assert_eq!(erased.body["addresses"], json!([]));
        assert_eq!(erased.body["status"], "archived");
        assert!(erased.body["anonymized_at"].is_string());
        assert!(erased.body["relationships"][0].get("title").is_none());
        assert!(names(&app.get("/api/v1/parties?q=erin").await).is_empty(), "no longer found");
        assert!(names(&app.get("/api/v1/parties?q=555").await).is_empty());

        let balance = app.get(&format!("/api/v1/parties/{id}/balance")).await;
        assert_eq!(balance.body["receivable"], "80.00", "ledger history stays");
        let trial = app.get("/api/v1/ledger/trial-balance?as_of=2025-12-31").await;
        assert_eq!(trial.body["total_debit"], "80.00", "{}", trial.text);
        assert_eq!(trial.body["balanced"], true);

        let again = app.post(&format!("/api/v1/parties/{id}/anonymize"), json!({})).await;
        assert_eq!(again.status, 409);
        let refill = app.patch(&format!("/api/v1/parties/{id}"), json!({"emails": ["erin@example.org"]})).await;
        assert_eq!(refill.status, 409);
        let owner_change = app.patch(&format!("/api/v1/parties/{id}"), json!({"status": "active"})).await;
        assert_eq!(owner_change.status, 200, "{}", owner_change.text);
        let audit = app.get(&format!("/api/v1/audit?action=parties:anonymize&object_id={id}")).await;
        let record = &audit.body["records"][0];
        assert!(!record["change"].as_str().expect("present").contains("erin"), "the record holds no erased value");
    }
}
