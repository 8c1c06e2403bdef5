//! The printable quote: one self-contained HTML page (inline styles, no scripts, no external
//! resources) in which every text that came from a user or the catalog is escaped.

use std::fmt::Write as _;

use crate::amount;
use crate::approvals::StepStatus;
use crate::quotes::Quote;

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

const STYLE: &str = "body{font-family:Helvetica,Arial,sans-serif;margin:2em;color:#222}\
h1{font-size:1.5em;margin-bottom:0}table{border-collapse:collapse;width:100%;margin-top:1em}\
th,td{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}\
td.n,th.n{text-align:right}tr.component td{color:#555;font-size:.9em}\
.totals td{border:none}.totals tr.total td{font-weight:bold;border-top:2px solid #222}\
.meta td{border:none;padding:2px 8px}.notes{white-space:pre-wrap;margin-top:1.5em}\
@media print{body{margin:0}}";

/// The quote as a page. Writing to a `String` cannot fail, so `write!` results are ignored.
pub fn render(quote: &Quote) -> String {
    let e = escape;
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Quote {number}</title><style>{STYLE}</style></head><body>\
         <h1>Quote {number}</h1><p>Version {version} &middot; {status}</p>\
         <table class=\"meta\">\
         <tr><td>Customer</td><td>{party}</td></tr>\
         <tr><td>Quote date</td><td>{quote_date}</td></tr>\
         <tr><td>Valid until</td><td>{valid_until}</td></tr>\
         <tr><td>Currency</td><td>{currency}</td></tr></table>",
        number = e(&quote.number),
        version = quote.version,
        status = e(quote.status.name()),
        party = e(&quote.party_name),
        quote_date = e(&quote.quote_date),
        valid_until = e(&quote.valid_until),
        currency = e(&quote.currency),
    );
    page.push_str(
        "<table class=\"lines\"><thead><tr><th>#</th><th>SKU</th><th>Description</th>\
         <th class=\"n\">Quantity</th><th class=\"n\">Unit price</th>\
         <th class=\"n\">Discount</th><th class=\"n\">Tax</th><th class=\"n\">Net</th>\
         </tr></thead><tbody>",
    );
    for line in &quote.lines {
        let _ = write!(
            page,
            "<tr><td>{line}</td><td>{sku}</td><td>{name}</td><td class=\"n\">{quantity} {unit}</td>\
             <td class=\"n\">{unit_price}</td><td class=\"n\">{discount}%</td>\
             <td class=\"n\">{tax}%</td><td class=\"n\">{net}</td></tr>",
            line = line.line,
            sku = e(&line.sku),
            name = e(&line.name),
            quantity = e(&amount::text(line.quantity)),
            unit = e(&line.unit),
            unit_price = e(&amount::text(line.unit_price)),
            discount = e(&amount::text(line.discount_percent)),
            tax = e(&amount::text(line.tax_rate)),
            net = e(&amount::cents_text(line.net_amount)),
        );
        for component in &line.components {
            let _ = write!(
                page,
                "<tr class=\"component\"><td></td><td>{sku}</td><td>{name}</td>\
                 <td class=\"n\">{quantity} per unit</td><td colspan=\"4\"></td></tr>",
                sku = e(&component.sku),
                name = e(&component.name),
                quantity = e(&amount::text(component.quantity)),
            );
        }
    }
    page.push_str("</tbody></table><table class=\"totals\">");
    let mut row = |label: &str, value: String, class: &str| {
        let _ = write!(
            page,
            "<tr class=\"{class}\"><td class=\"n\">{label}</td><td class=\"n\">{value} {currency}</td></tr>",
            label = e(label),
            value = e(&value),
            currency = e(&quote.currency),
        );
    };
    row("Subtotal", amount::cents_text(quote.totals.subtotal), "");
    row("Discount", amount::cents_text(-quote.totals.discount), "");
    row("Net", amount::cents_text(quote.totals.net), "");
    for tax in &quote.taxes {
        row(
            &format!(
                "Tax {}% on {}",
                amount::text(tax.rate),
                amount::cents_text(tax.base)
            ),
            amount::cents_text(tax.tax),
            "",
        );
    }
    row("Total", amount::cents_text(quote.totals.total), "total");
    page.push_str("</table>");
    let approved: Vec<String> = quote
        .approvals
        .iter()
        .filter(|step| step.status == StepStatus::Approved)
        .map(|step| e(&step.level))
        .collect();
    if !approved.is_empty() {
        let _ = write!(page, "<p>Discount approved by: {}</p>", approved.join(", "));
    }
    if let Some(notes) = &quote.notes {
        let _ = write!(page, "<div class=\"notes\">{}</div>", e(notes));
    }
    page.push_str("</body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::Totals;
    use crate::quotes::Status;

    #[test]
    fn user_text_is_escaped() {
        assert_eq!(
            escape("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }

    #[test]
    fn a_page_shows_the_quote_without_raw_markup_from_users() {
        let quote = Quote {
            number: "Q-000001".to_owned(),
            version: 2,
            status: Status::Sent,
            owner: Some(1),
            party: 7,
            party_name: "Acme <Evil> & Co".to_owned(),
            currency: "EUR".to_owned(),
            segment: None,
            price_book: "EUR".to_owned(),
            quote_date: "2026-03-01".to_owned(),
            valid_until: "2026-03-31".to_owned(),
            notes: Some("<img src=x onerror=alert(1)>".to_owned()),
            lines: Vec::new(),
            taxes: Vec::new(),
            totals: Totals::default(),
            price_adjustments: Vec::new(),
            discount_percent: rust_decimal::Decimal::ZERO,
            approvals: Vec::new(),
            sent_on: None,
            accepted_on: None,
            rejected_on: None,
            rejection_reason: None,
            decided_by: None,
            superseded_by: None,
        };
        let page = render(&quote);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("Acme &lt;Evil&gt; &amp; Co"));
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(!page.contains("<img"));
        assert!(page.contains("Version 2"));
    }
}
