//! The ledger entries of documents and payments. Receivable and payable lines carry the
//! party, so the host's party balance and credit checks see them.

use keel_sdk::Error;
use keel_sdk::ledger::{self, Entry, Line};
use keel_sdk::money::{self, Decimal};

use crate::documents::{Document, Kind};
use crate::payments::{Payment, Side};
use crate::settings::Settings;

fn line(account: &str, debit: bool, amount: Decimal, party: Option<i64>, memo: &str) -> Line {
    let amount = Some(money::cents_text(amount));
    Line {
        account: account.to_owned(),
        debit: if debit { amount.clone() } else { None },
        credit: if debit { None } else { amount },
        currency: None,
        rate: None,
        party,
        memo: Some(memo.to_owned()),
        dimensions: Vec::new(),
    }
}

/// Adds `amount` to the line of `account` on the same side, or a new line.
fn add(lines: &mut Vec<(String, Decimal)>, account: &str, amount: Decimal) {
    match lines.iter_mut().find(|(a, _)| a == account) {
        Some((_, total)) => *total += amount,
        None => lines.push((account.to_owned(), amount)),
    }
}

/// Posts an issued document.
pub fn post_document(document: &Document, settings: &Settings) -> Result<i64, Error> {
    ledger::post(&document_entry(document, settings), None)
}

/// The entry of an issued document: an invoice debits receivable and credits revenue per
/// account and tax payable; a credit note the opposite; a bill debits expense per account and
/// input tax and credits payable.
pub fn document_entry(document: &Document, settings: &Settings) -> Entry {
    let number = document.reference_text();
    let memo = format!(
        "{} {number}, {}",
        document.kind.label(),
        document.party_name
    );
    let mut by_account: Vec<(String, Decimal)> = Vec::new();
    for l in &document.lines {
        add(&mut by_account, &l.account, l.net_amount);
    }
    let accounts = &settings.accounts;
    let (party_account, tax_account, party_side_debit) = match document.kind {
        Kind::Invoice => (&accounts.receivable, &accounts.tax_payable, true),
        Kind::CreditNote => (&accounts.receivable, &accounts.tax_payable, false),
        Kind::Bill => (&accounts.payable, &accounts.tax_receivable, false),
    };
    let mut lines = vec![line(
        party_account,
        party_side_debit,
        document.totals.total,
        Some(document.party),
        &memo,
    )];
    lines.extend(
        by_account
            .iter()
            .filter(|(_, amount)| !amount.is_zero())
            .map(|(account, amount)| line(account, !party_side_debit, *amount, None, &memo)),
    );
    if !document.totals.tax.is_zero() {
        lines.push(line(
            tax_account,
            !party_side_debit,
            document.totals.tax,
            None,
            &memo,
        ));
    }
    Entry {
        date: document.date.clone(),
        memo,
        lines,
        document: Some(format!("{}/{number}", document.kind.name())),
    }
}

/// Posts money paid back to a customer out of their credit: receivable against cash.
pub fn post_refund(
    party: i64,
    party_name: &str,
    source: &str,
    amount: Decimal,
    date: &str,
    bank_account: &str,
    settings: &Settings,
) -> Result<i64, Error> {
    let memo = format!("refund of {source}, {party_name}");
    let entry = Entry {
        date: date.to_owned(),
        memo: memo.clone(),
        lines: vec![
            line(
                &settings.accounts.receivable,
                true,
                amount,
                Some(party),
                &memo,
            ),
            line(bank_account, false, amount, None, &memo),
        ],
        document: Some(format!("refund/{source}")),
    };
    ledger::post(&entry, None)
}

/// Posts a payment: received, cash against receivable; made, payable against cash.
pub fn post_payment(payment: &Payment, settings: &Settings) -> Result<i64, Error> {
    let memo = format!(
        "{} {}, {}",
        payment.side.label(),
        payment.id,
        payment.party_name
    );
    let (party_account, received) = match payment.side {
        Side::Receivable => (&settings.accounts.receivable, true),
        Side::Payable => (&settings.accounts.payable, false),
    };
    let lines = vec![
        line(&payment.bank_account, received, payment.amount, None, &memo),
        line(
            party_account,
            !received,
            payment.amount,
            Some(payment.party),
            &memo,
        ),
    ];
    let entry = Entry {
        date: payment.date.clone(),
        memo,
        lines,
        document: Some(format!("payment/{}", payment.id)),
    };
    ledger::post(&entry, None)
}
