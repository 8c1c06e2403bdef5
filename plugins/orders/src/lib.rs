//! Sales orders: entered through the API or made from a quote the customer accepted (the cpq
//! plugin's `cpq.quote.accepted`), confirmed against the customer's credit limit or held until
//! someone with the right permission releases them, shipped in one or more shipments (what is
//! left is backordered), cancelled in whole or in part before shipping, invoiced by the
//! invoicing plugin through the operation `invoice-lines`, and returned under an RMA whose
//! receipt asks invoicing for the credit note. See README.md for routes and decisions.
//!
//! Orders are back-office documents: the permission decides who sees and changes them, not
//! who owns them. Each order still records its `owner` (the user who entered it, or the
//! quote's owner).

mod credit;
mod input;
mod operations;
mod order;
mod quote;
mod returns;
mod routes;

use keel_sdk::{Error, Event, Manifest, Plugin, Request, Response, Router, events};
use serde::Serialize;

/// The permissions the plugin checks; roles grant them like the host's own. The host also
/// requires `plugins.orders:use` to reach the routes at all.
pub mod perm {
    pub const ORDERS_READ: &str = "plugins.orders.orders:read";
    pub const ORDERS_WRITE: &str = "plugins.orders.orders:write";
    /// Releasing an order held for credit: a decision for finance, not for sales.
    pub const CREDIT_RELEASE: &str = "plugins.orders.credit:release";
    pub const SHIPMENTS_WRITE: &str = "plugins.orders.shipments:write";
    pub const RETURNS_WRITE: &str = "plugins.orders.returns:write";
}

/// Topic of the event the cpq plugin publishes when a customer accepts a quote.
pub const QUOTE_ACCEPTED_TOPIC: &str = "cpq.quote.accepted";

fn manifest() -> Manifest {
    Manifest::new(
        "orders",
        env!("CARGO_PKG_VERSION"),
        "Sales orders: credit check and hold, shipments and backorders, cancellation, returns",
    )
    .capabilities(&[
        "storage",
        "parties:read",
        "ledger:read",
        "events:publish",
        "call:invoicing/credit-note",
    ])
    .subscriptions(&[QUOTE_ACCEPTED_TOPIC])
    .collection(
        order::ORDERS.name(),
        &[
            (order::BY_PARTY, &["party", "order_date"]),
            (order::BY_STATUS, &["status", "order_date"]),
            (order::BY_PARTY_STATUS, &["party", "status", "order_date"]),
        ],
    )
    .collection(returns::RETURNS.name(), &[(returns::BY_ORDER, &["order"])])
    .operations(&["party-orders", "invoice-lines", "uninvoice-lines"])
}

struct Orders;

impl Plugin for Orders {
    fn manifest() -> Manifest {
        manifest()
    }

    fn handle_http(request: Request) -> Response {
        Router::new()
            .post("/orders", routes::create)
            .get("/orders", routes::list)
            .get("/orders/{number}", routes::show)
            .post("/orders/{number}/confirm", routes::confirm)
            .post("/orders/{number}/release", routes::release)
            .post("/orders/{number}/shipments", routes::ship)
            .post("/orders/{number}/cancel", routes::cancel)
            .post("/orders/{number}/returns", returns::authorize)
            .get("/returns/{number}", returns::show)
            .post("/returns/{number}/receive", returns::receive)
            .handle(request)
    }

    fn on_event(event: Event) -> Result<(), Error> {
        if event.topic == QUOTE_ACCEPTED_TOPIC {
            quote::order_from_accepted(&event.payload)
        } else {
            // Only subscribed topics arrive; anything else is not ours to act on.
            Ok(())
        }
    }

    fn invoke(operation: String, input: String) -> Result<String, Error> {
        match operation.as_str() {
            "party-orders" => operations::party_orders(&input),
            "invoice-lines" => operations::invoice_lines(&input),
            "uninvoice-lines" => operations::uninvoice_lines(&input),
            other => Err(Error::NotFound(format!("no operation {other:?}"))),
        }
    }
}

keel_sdk::export!(Orders);

/// `Denied` unless the acting user holds `permission`; `doing` says what it is needed for.
fn require(permission: &str, doing: &str) -> Result<(), Error> {
    if keel_sdk::allowed(permission) {
        Ok(())
    } else {
        Err(Error::Denied(format!(
            "{doing} needs the permission {permission}"
        )))
    }
}

/// `Denied` unless the acting user may read orders: `orders:read`, or `orders:write`, which
/// implies it.
fn require_read(doing: &str) -> Result<(), Error> {
    if keel_sdk::allowed(perm::ORDERS_READ) || keel_sdk::allowed(perm::ORDERS_WRITE) {
        Ok(())
    } else {
        Err(Error::Denied(format!(
            "{doing} needs the permission {}",
            perm::ORDERS_READ
        )))
    }
}

/// Publishes `topic` about `subject` with `payload`, in the call's transaction.
fn publish(topic: &str, subject: &str, payload: &impl Serialize) -> Result<(), Error> {
    let payload = serde_json::to_string(payload)
        .map_err(|e| Error::Internal(format!("serializing the event {topic}: {e}")))?;
    events::publish(topic, subject, &payload)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_declares_what_the_plugin_uses() {
        let manifest = manifest();
        assert_eq!(manifest.name, "orders");
        assert_eq!(manifest.subscriptions, [QUOTE_ACCEPTED_TOPIC]);
        assert!(
            manifest
                .capabilities
                .contains(&"call:invoicing/credit-note".to_owned())
        );
        assert_eq!(
            manifest.operations,
            ["party-orders", "invoice-lines", "uninvoice-lines"]
        );
        assert_eq!(manifest.collections[0].name, "orders");
        assert_eq!(manifest.collections[0].indexes.len(), 3);
    }
}
