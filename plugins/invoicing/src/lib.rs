//! Invoicing: customer invoices (directly or from shipped order lines) and credit notes,
//! payments received and their allocation, vendor bills and payments made, aging and dunning,
//! and each party's credit status for the orders and sfa plugins.
//!
//! Every document is posted through the host ledger when it is issued, in the same
//! transaction as the document itself: receivable (tagged with the party) against revenue and
//! tax payable for an invoice, the reverse for a credit note, expense and input tax against
//! payable for a bill, cash against receivable or payable for a payment. Numbers are taken
//! without gaps per series at issue, so a posting the ledger refuses (a closed period) gives
//! its number back.

mod documents;
mod input;
mod payments;
mod posting;
mod reports;
mod settings;

use keel_sdk::{Error, Manifest, PartyField, Plugin, Request, Response, Router};

/// The permissions the plugin checks; roles grant them like the host's own.
pub mod perm {
    /// Customer invoices and credit notes, and receivable reports.
    pub const INVOICES_READ: &str = "plugins.invoicing.invoices:read";
    pub const INVOICES_WRITE: &str = "plugins.invoicing.invoices:write";
    /// Recording and allocating payments, received and made.
    pub const PAYMENTS_WRITE: &str = "plugins.invoicing.payments:write";
    /// Vendor bills and payable reports.
    pub const BILLS_READ: &str = "plugins.invoicing.bills:read";
    pub const BILLS_WRITE: &str = "plugins.invoicing.bills:write";
    /// Raising the dunning level of overdue invoices.
    pub const DUNNING_RUN: &str = "plugins.invoicing.dunning:run";
    pub const SETTINGS_WRITE: &str = "plugins.invoicing.settings:write";
}

/// The party field that overrides every line's tax (e.g. `exempt` for a customer abroad),
/// declared as `tax_code`; the host names a plugin's fields `<plugin>_<name>`.
const PARTY_TAX_CODE_DECLARED: &str = "tax_code";
pub const PARTY_TAX_CODE_FIELD: &str = "invoicing_tax_code";

struct Invoicing;

impl Plugin for Invoicing {
    fn manifest() -> Manifest {
        Manifest::new(
            "invoicing",
            env!("CARGO_PKG_VERSION"),
            "Invoicing: customer invoices and credit notes, payments, vendor bills, aging and \
             dunning, posted to the ledger",
        )
        .capabilities(&[
            "storage",
            "parties:read",
            "ledger:read",
            "ledger:post",
            "events:publish",
            "call:orders/invoice-lines",
            "call:orders/uninvoice-lines",
        ])
        .collection(
            documents::DOCUMENTS.name(),
            &[
                // Open documents have no `settled_on` (null sorts first): aging and the
                // party summary read the open ones without scanning the settled.
                ("open", &["kind", "issued", "settled_on"]),
                ("by-party", &["party", "kind", "issued", "settled_on"]),
                ("by-party-date", &["party", "kind", "date"]),
                ("by-kind-date", &["kind", "date"]),
                ("by-order", &["order", "kind"]),
                ("by-reference", &["party", "kind", "reference"]),
            ],
        )
        .collection(
            payments::PAYMENTS.name(),
            &[("by-party", &["party", "side", "date"])],
        )
        .operations(&["party-summary", "credit-note"])
        .party_field(PartyField {
            name: PARTY_TAX_CODE_DECLARED.to_owned(),
            label: "Tax code for every invoice line (overrides products)".to_owned(),
            field_type: "text".to_owned(),
            applies_to: "any".to_owned(),
            required: false,
            options: Vec::new(),
        })
    }

    fn handle_http(request: Request) -> Response {
        Router::new()
            .get("/settings", settings::get)
            .put("/settings", settings::put)
            .post("/invoices", documents::create_invoice)
            .post("/invoices/batch", documents::create_invoices)
            .post("/invoices/from-order", documents::invoice_order)
            .get("/invoices", documents::list_invoices)
            .get("/invoices/{id}", documents::get_invoice)
            .post("/invoices/{id}/issue", documents::issue_invoice)
            .post("/invoices/{id}/cancel", documents::cancel_invoice)
            .post("/invoices/{id}/credit-note", documents::credit_invoice)
            .post("/invoices/{id}/apply", payments::apply_credit_note)
            .post("/invoices/{id}/refund", documents::refund_credit_note)
            .post("/bills", documents::create_bill)
            .get("/bills", documents::list_bills)
            .get("/bills/{id}", documents::get_bill)
            .post("/bills/{id}/issue", documents::issue_bill)
            .post("/bills/{id}/cancel", documents::cancel_bill)
            .post("/payments", payments::receive)
            .get("/payments", payments::list_received)
            .get("/payments/{id}", payments::get_received)
            .post("/payments/{id}/allocate", payments::allocate_received)
            .post("/payments/{id}/refund", payments::refund_payment)
            .post("/vendor-payments", payments::pay)
            .get("/vendor-payments", payments::list_made)
            .get("/vendor-payments/{id}", payments::get_made)
            .post("/vendor-payments/{id}/allocate", payments::allocate_made)
            .get("/aging", reports::aging)
            .get("/dunning", reports::dunning)
            .post("/dunning/run", reports::run_dunning)
            .handle(request)
    }

    fn invoke(operation: String, input: String) -> Result<String, Error> {
        let output = match operation.as_str() {
            "party-summary" => reports::party_summary(&input)?,
            "credit-note" => documents::credit_note_for_return(&input)?,
            other => return Err(Error::NotFound(format!("no operation {other:?}"))),
        };
        serde_json::to_string(&output)
            .map_err(|e| Error::Internal(format!("serializing the output: {e}")))
    }
}

keel_sdk::export!(Invoicing);
