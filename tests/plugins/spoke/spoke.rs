// The spokes of the fabric tests, included by spoke-1, spoke-2 and spoke-3 with their own
// NAME and ORDER: each implements the hub's extension points (taking 1% off every price and
// noting its name), answers the hub's calls and records the hub's events. Inputs may ask a
// spoke to misbehave: `"misbehave": { "<name>": "invalid" | "loop" | "trap" | "error" }`.

use keel_sdk::storage::Collection;
use keel_sdk::{Error, Event, Manifest, Plugin, Request, Response, Router, calls};
use serde_json::{Value, json};

const SEEN: Collection<Value> = Collection::new("seen");
const NOTES: Collection<Value> = Collection::new("notes");
/// One record per delivery (not per event), so a second delivery of an event would show.
const DELIVERIES: Collection<Value> = Collection::new("deliveries");

fn adjust(mut input: Value) -> Result<Value, Error> {
    match input["misbehave"][NAME].as_str() {
        Some("invalid") => return Ok(json!({ "oops": true })),
        Some("loop") => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Some("trap") => panic!("{NAME} was told to trap"),
        Some("error") => return Err(Error::Internal(format!("{NAME} was told to fail"))),
        _ => {}
    }
    if let Some(lines) = input["lines"].as_array_mut() {
        for line in lines {
            let price = line["price"].as_f64().unwrap_or(0.0);
            line["price"] = json!((price * 99.0).round() / 100.0);
        }
    }
    match input["applied"].as_array_mut() {
        Some(applied) => applied.push(json!(NAME)),
        None => input["applied"] = json!([NAME]),
    }
    Ok(input)
}

struct Spoke;

impl Plugin for Spoke {
    fn manifest() -> Manifest {
        Manifest::new(NAME, "1.0.0", "A spoke of the fabric tests")
            .capabilities(&["storage", "call:hub/bounce"])
            .subscriptions(&["hub.thing.happened"])
            .operations(&["adjust", "echo", "recurse", "write-then-fail"])
            .hook("hub.adjust", "adjust", ORDER)
            .hook("hub.strict", "adjust", ORDER)
    }

    fn handle_http(request: Request) -> Response {
        Router::new()
            .get("/seen", |_request, _params| {
                let seen: Vec<Value> = SEEN.all()?.into_iter().map(|(_, event)| event).collect();
                Ok(Response::json(200, &seen))
            })
            .get("/deliveries", |_request, _params| {
                let deliveries = DELIVERIES.all()?;
                let mut events: Vec<&str> = deliveries
                    .iter()
                    .filter_map(|(key, _)| key.split('/').next())
                    .collect();
                events.dedup();
                Ok(Response::json(
                    200,
                    &json!({ "deliveries": deliveries.len(), "events": events.len() }),
                ))
            })
            .get("/notes", |_request, _params| {
                let notes: Vec<Value> = NOTES.all()?.into_iter().map(|(_, note)| note).collect();
                Ok(Response::json(200, &notes))
            })
            .handle(request)
    }

    fn on_event(event: Event) -> Result<(), Error> {
        let payload: Value = serde_json::from_str(&event.payload)?;
        if payload["fail"] == NAME {
            return Err(Error::Internal(format!(
                "{NAME} was told to fail on event {} (attempt {})",
                event.id, event.attempt
            )));
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        DELIVERIES.put(&format!("{:012}/{nanos}", event.id), &json!(event.attempt))?;
        SEEN.put(
            &format!("{:012}", event.id),
            &json!({ "id": event.id, "subject": event.subject, "payload": payload,
                     "attempt": event.attempt }),
        )
    }

    fn invoke(operation: String, input: String) -> Result<String, Error> {
        let input: Value = serde_json::from_str(&input)?;
        match operation.as_str() {
            "adjust" => Ok(adjust(input)?.to_string()),
            "echo" => Ok(json!({ "from": NAME, "input": input }).to_string()),
            "recurse" => calls::invoke("hub", "bounce", &input.to_string()),
            "write-then-fail" => {
                NOTES.put("written", &json!({ "by": NAME }))?;
                Err(Error::Conflict(format!("{NAME} wrote a note and then failed")))
            }
            other => Err(Error::NotFound(format!("no operation {other:?}"))),
        }
    }
}

keel_sdk::export!(Spoke);
