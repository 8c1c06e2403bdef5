//! The hub of the fabric tests: owns an indexed collection, publishes events, declares the
//! extension points `hub.adjust` (failing implementations are skipped) and `hub.strict`
//! (they fail the run), calls other plugins, and records the events it receives (the
//! host's, and cpq's accepted quotes for the cpq tests).

use keel_sdk::storage::Collection;
use keel_sdk::{
    Error, Event, ExtensionPoint, Manifest, OnFailure, PartyField, Plugin, Request, Response,
    Router, calls, events, hooks,
};
use serde_json::{Value, json};

const ORDERS: Collection<Value> = Collection::new("orders");
/// Built a second time with `HUB_VERSION=2.0.0`, which indexes orders differently: the
/// customer index gains the total, `by-total` is new and `by-status-total` is gone.
const VERSION: &str = match option_env!("HUB_VERSION") {
    Some(version) => version,
    None => "1.0.0",
};
const SEEN: Collection<Value> = Collection::new("seen");

const LINES_SCHEMA: &str = r#"{
    "type": "object",
    "required": ["lines"],
    "properties": {
        "lines": { "type": "array", "items": {
            "type": "object", "required": ["sku", "price"],
            "properties": { "sku": { "type": "string" }, "price": { "type": "number", "minimum": 0 } }
        }},
        "applied": { "type": "array", "items": { "type": "string" } },
        "misbehave": { "type": "object" }
    }
}"#;

fn point(name: &str, on_failure: OnFailure) -> ExtensionPoint {
    ExtensionPoint {
        name: name.to_owned(),
        description: "adjusts the prices of order lines".to_owned(),
        input_schema: LINES_SCHEMA.to_owned(),
        output_schema: LINES_SCHEMA.to_owned(),
        on_failure,
        budget_ms: 500,
    }
}

fn party_field(name: &str, label: &str, field_type: &str, options: &[&str]) -> PartyField {
    PartyField {
        name: name.to_owned(),
        label: label.to_owned(),
        field_type: field_type.to_owned(),
        applies_to: "any".to_owned(),
        required: false,
        options: options.iter().map(|o| (*o).to_owned()).collect(),
    }
}

fn body(request: &Request) -> Result<Value, Error> {
    request.json()
}

fn text(value: &Value, field: &str) -> Result<String, Error> {
    value[field]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::invalid(field, "is required"))
}

fn reply(result: Result<Value, Error>, status: u16) -> Result<Response, Error> {
    Ok(match result {
        Ok(value) => Response::json(status, &value),
        Err(error) => Response::error(&error),
    })
}

struct Hub;

impl Plugin for Hub {
    fn manifest() -> Manifest {
        let indexes: &[(&str, &[&str])] = if VERSION == "1.0.0" {
            &[
                ("by-status-total", &["status", "total"]),
                ("by-customer", &["customer.id"]),
            ]
        } else {
            &[
                ("by-customer", &["customer.id", "total"]),
                ("by-total", &["total"]),
            ]
        };
        Manifest::new("hub", VERSION, "The hub of the fabric tests")
            .capabilities(&[
                "storage",
                "events:publish",
                "call:spoke-1/echo",
                "call:spoke-1/recurse",
                "call:spoke-1/write-then-fail",
                "call:spoke-2/echo",
            ])
            .subscriptions(&[
                "ledger.entry.posted",
                "ledger.period.closed",
                "parties.party.created",
                "parties.party.updated",
                "parties.party.merged",
                // So that the cpq tests see an accepted quote's event delivered.
                "cpq.quote.accepted",
            ])
            .collection("orders", indexes)
            .operations(&["bounce"])
            .extension_point(point("hub.adjust", OnFailure::Skip))
            .extension_point(point("hub.strict", OnFailure::Fail))
            .party_field(party_field("rating", "Hub rating", "enum", &["a", "b"]))
            .party_field(party_field("note", "Hub note", "text", &[]))
    }

    fn handle_http(request: Request) -> Response {
        Router::new()
            .put("/orders/{key}", |request, params| {
                ORDERS.put(params.get("key")?, &body(request)?)?;
                Ok(Response::json(200, &json!({ "stored": true })))
            })
            .delete("/orders/{key}", |_request, params| {
                let deleted = ORDERS.delete(params.get("key")?)?;
                Ok(Response::json(200, &json!({ "deleted": deleted })))
            })
            // `{"keys": [...]}`: the orders under them, null where there is none.
            .post("/get-many", |request, _params| {
                let keys: Vec<String> = serde_json::from_value(body(request)?["keys"].clone())?;
                reply(ORDERS.get_many(&keys).map(|found| json!(found)), 200)
            })
            // Reads an order for update, with GET (refused: read-only) or POST.
            .route("GET", "/reserved/{key}", |_request, params| {
                reply(
                    ORDERS
                        .get_for_update(params.get("key")?)
                        .map(|found| json!(found)),
                    200,
                )
            })
            .post("/reserved/{key}", |_request, params| {
                reply(
                    ORDERS
                        .get_for_update(params.get("key")?)
                        .map(|found| json!(found)),
                    200,
                )
            })
            .post("/find", |request, _params| {
                let query = body(request)?;
                let equals: Vec<Value> = query["equals"].as_array().cloned().unwrap_or_default();
                let page = ORDERS.find_range(
                    &text(&query, "index")?,
                    &equals,
                    query.get("from"),
                    query.get("to"),
                    query["descending"].as_bool().unwrap_or(false),
                    query["after"].as_str(),
                    query["limit"].as_u64().map_or(100, |l| l as u32),
                )?;
                let keys: Vec<&String> = page.items.iter().map(|(key, _)| key).collect();
                Ok(Response::json(
                    200,
                    &json!({ "keys": keys, "next": page.next }),
                ))
            })
            .post("/publish", |request, _params| {
                let event = body(request)?;
                let id = events::publish(
                    &text(&event, "topic")?,
                    &text(&event, "subject")?,
                    &event["payload"].to_string(),
                );
                reply(id.map(|id| json!({ "id": id })), 201)
            })
            .post("/call", |request, _params| {
                let call = body(request)?;
                let output = calls::invoke(
                    &text(&call, "plugin")?,
                    &text(&call, "operation")?,
                    &call["input"].to_string(),
                );
                reply(
                    output.and_then(|o| serde_json::from_str(&o).map_err(Error::from)),
                    200,
                )
            })
            .post("/hooks/{point}", |request, params| {
                let output = hooks::run(
                    &format!("hub.{}", params.get("point")?),
                    &String::from_utf8_lossy(&request.body),
                );
                reply(
                    output.and_then(|o| serde_json::from_str(&o).map_err(Error::from)),
                    200,
                )
            })
            .get("/seen", |_request, _params| {
                let seen: Vec<Value> = SEEN.all()?.into_iter().map(|(_, event)| event).collect();
                Ok(Response::json(200, &seen))
            })
            .handle(request)
    }

    fn on_event(event: Event) -> Result<(), Error> {
        SEEN.put(
            &format!("{:012}", event.id),
            &json!({ "id": event.id, "topic": event.topic, "subject": event.subject,
                     "payload": serde_json::from_str::<Value>(&event.payload)? }),
        )
    }

    fn invoke(operation: String, input: String) -> Result<String, Error> {
        match operation.as_str() {
            // Calls back into spoke-1, which calls here again: a cycle the host must stop.
            "bounce" => calls::invoke("spoke-1", "recurse", &input),
            other => Err(Error::NotFound(format!("no operation {other:?}"))),
        }
    }
}

keel_sdk::export!(Hub);
