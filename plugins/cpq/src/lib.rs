//! Configure, price, quote: a product catalog with configurable bundles, price books per
//! currency and customer segment with quantity tiers, the extension point `cpq.price-adjust`,
//! discount approvals in a chain of levels, and numbered, versioned quotes that publish
//! `cpq.quote.accepted` when the customer accepts. See README.md for routes and decisions.
//!
//! The pure parts (configuration rules, tier pricing, totals, hook output checks, approval
//! chains, the HTML page) make no host calls and are tested natively: `cargo test -p cpq`.

pub mod adjust;
pub mod amount;
pub mod approvals;
pub mod catalog;
pub mod html;
pub mod input;
pub mod pricing;
pub mod quotes;

use keel_sdk::{Error, FieldErrors, Manifest, PartyField, Plugin, Request, Response, Router};

/// Reading products, price books and the approval settings (writing implies it).
pub const CATALOG_READ: &str = "plugins.cpq.catalog:read";
/// Creating and changing products, price books and settings.
pub const CATALOG_WRITE: &str = "plugins.cpq.catalog:write";
/// Reading quotes; the scope (own, team, all) says whose.
pub const QUOTES_READ: &str = "plugins.cpq.quotes:read";
/// Creating, revising, sending and recording the customer's answer; scoped like reading.
pub const QUOTES_WRITE: &str = "plugins.cpq.quotes:write";

/// Items fetched per storage call when the plugin reads a whole collection or index.
pub const STORAGE_PAGE_ITEMS: u32 = 500;

/// Fails with `denied` unless the acting user holds `permission`.
pub fn require(permission: &str, doing: &str) -> Result<(), Error> {
    if keel_sdk::allowed(permission) {
        Ok(())
    } else {
        Err(Error::Denied(format!(
            "{doing} needs the permission {permission}"
        )))
    }
}

/// Fails with `denied` unless the acting user may read the catalog and settings.
pub fn require_catalog_read() -> Result<(), Error> {
    if keel_sdk::allowed(CATALOG_READ) || keel_sdk::allowed(CATALOG_WRITE) {
        Ok(())
    } else {
        Err(Error::Denied(format!(
            "reading the catalog needs the permission {CATALOG_READ}"
        )))
    }
}

/// The `limit` query parameter: 1 to `max`, `default` when absent.
pub fn page_limit(
    request: &Request,
    default: usize,
    max: usize,
    errors: &mut FieldErrors,
) -> usize {
    match request.query_param("limit").filter(|l| !l.is_empty()) {
        None => default,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if (1..=max).contains(&limit) => limit,
            _ => {
                errors.add("limit", format!("is a whole number from 1 to {max}"));
                default
            }
        },
    }
}

fn manifest() -> Manifest {
    Manifest::new(
        "cpq",
        env!("CARGO_PKG_VERSION"),
        "Configure, price, quote: products and bundles, price books, discounts and approvals, quotes",
    )
    .capabilities(&["storage", "parties:read", "events:publish"])
    .collection(
        quotes::QUOTES_COLLECTION,
        &[
            (quotes::BY_OWNER_STATUS, &["owner", "status"]),
            (quotes::BY_PARTY, &["party"]),
            (quotes::BY_STATUS_VALID_UNTIL, &["status", "valid_until"]),
        ],
    )
    .collection(approvals::DECISIONS_COLLECTION, &[(approvals::BY_QUOTE, &["quote"])])
    .extension_point(adjust::extension_point(quotes::LINES_MAX))
    .operations(&["price"])
    .party_field(PartyField {
        name: "segment".to_owned(),
        label: "Price segment".to_owned(),
        field_type: "text".to_owned(),
        applies_to: "any".to_owned(),
        required: false,
        options: Vec::new(),
    })
}

struct Cpq;

impl Plugin for Cpq {
    fn manifest() -> Manifest {
        manifest()
    }

    fn migrate(from: Option<String>) -> Result<(), Error> {
        if from.is_none() {
            approvals::install_defaults()?;
        }
        Ok(())
    }

    fn handle_http(request: Request) -> Response {
        Router::new()
            .post("/products", catalog::create)
            .get("/products", catalog::list)
            .get("/products/{sku}", catalog::show)
            .route("PATCH", "/products/{sku}", catalog::update)
            .post("/price-books", pricing::create_book)
            .get("/price-books", pricing::list_books)
            .get("/price-books/{code}", pricing::show_book)
            .put("/price-books/{code}/prices/{sku}", pricing::put_price)
            .get("/settings/approvals", approvals::show_settings)
            .put("/settings/approvals", approvals::put_settings)
            .post("/price", quotes::preview)
            .post("/quotes", quotes::create)
            .get("/quotes", quotes::list)
            .get("/quotes/{number}", quotes::show)
            .get("/quotes/{number}/html", quotes::show_html)
            .get("/quotes/{number}/approvals", approvals::list)
            .post("/quotes/{number}/revise", quotes::revise)
            .post("/quotes/{number}/send", quotes::send)
            .post("/quotes/{number}/accept", quotes::accept)
            .post("/quotes/{number}/reject", quotes::reject)
            .post("/quotes/{number}/approve", approvals::approve)
            .post("/quotes/{number}/reject-approval", approvals::reject)
            .handle(request)
    }

    fn invoke(operation: String, input: String) -> Result<String, Error> {
        match operation.as_str() {
            // Another plugin prices a draft quote; the host already checked its grant
            // `call:cpq/price`, and the party lookup still applies the acting user's reach.
            "price" => {
                let body: serde_json::Value = serde_json::from_str(&input)
                    .map_err(|e| Error::invalid("input", format!("is not valid JSON: {e}")))?;
                match quotes::price_draft(&body) {
                    Ok(priced) => Ok(priced.to_string()),
                    Err(quotes::Failure::Request(error)) => Err(error),
                    Err(quotes::Failure::Hook(detail)) => Err(Error::Internal(detail)),
                }
            }
            other => Err(Error::NotFound(format!("no operation {other:?}"))),
        }
    }
}

keel_sdk::export!(Cpq);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_declares_what_the_plugin_uses() {
        let manifest = manifest();
        assert_eq!(manifest.name, "cpq");
        assert_eq!(manifest.version, "1.0.0");
        assert_eq!(
            manifest.capabilities,
            ["storage", "parties:read", "events:publish"]
        );
        assert_eq!(manifest.extension_points[0].name, adjust::POINT);
        assert_eq!(manifest.extension_points[0].budget_ms, adjust::BUDGET_MS);
        assert_eq!(manifest.operations, ["price"]);
        assert_eq!(manifest.party_fields[0].name, "segment");
        let quotes = &manifest.collections[0];
        assert_eq!(quotes.name, "quotes");
        assert_eq!(quotes.indexes.len(), 3);
    }
}
