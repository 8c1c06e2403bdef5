//! A person's rights over their data: everything Keel holds about them, and erasure that
//! leaves the books intact (ledger lines keep the party id; the party keeps no personal data).

use serde::{Deserialize, Serialize};
use serde_json::{Map, json};
use utoipa::ToSchema;

use super::model::{PartyKind, PartyStatus, PartyView};
use super::{Parties, Viewer, fields, store, visible};
use crate::audit::{self, Event, Origin, Record};
use crate::company::Company;
use crate::db::{Param, Tx};
use crate::error::{Error, Result};
use crate::idempotency::{RequestKey, StoredResponse};
use crate::ledger::model::format_minor;

/// Audit records read per query when exporting a person's data.
const AUDIT_PAGE: i64 = 500;

/// A ledger line tagged with the party.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PartyLine {
    pub entry_id: i64,
    pub date: chrono::NaiveDate,
    pub account: String,
    pub currency: String,
    /// Signed: debit positive.
    pub amount: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memo: Option<String>,
}

/// Everything Keel holds about a party.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PersonalData {
    pub party: PartyView,
    /// Parties that name this one in a relationship.
    pub related_parties: Vec<i64>,
    pub ledger_lines: Vec<PartyLine>,
    /// The audit records about the party, oldest first.
    pub audit: Vec<Record>,
}

impl Parties {
    pub async fn personal_data(
        &self,
        company: &Company,
        viewer: &Viewer,
        id: i64,
    ) -> Result<PersonalData> {
        let (party, related_parties, ledger_lines) = self
            .read(async |tx: &mut Tx| {
                let party = visible(tx, company, viewer, id).await?;
                let related = tx
                    .fetch_packed(
                        &tx.backend().numbered(
                            "SELECT DISTINCT party_id FROM party_relationships WHERE related_party_id = $1",
                        ),
                        &["party_id"],
                        &[Param::Int(Some(id))],
                    )
                    .await?
                    .iter()
                    .map(|row| row.int(0))
                    .collect::<anyhow::Result<Vec<i64>>>()?;
                let lines = party_lines(tx, company, id).await?;
                Ok((party.view(company), related, lines))
            })
            .await?;
        let mut audit_records = Vec::new();
        let mut filter = audit::Filter {
            object_type: Some("party".to_owned()),
            object_id: Some(id.to_string()),
            ..audit::Filter::default()
        };
        loop {
            let page = audit::list(self.db(), company.id, &filter, AUDIT_PAGE).await?;
            let full = page.len() as i64 == AUDIT_PAGE;
            filter.after = page.last().map(|r| r.seq);
            audit_records.extend(page);
            if !full {
                break;
            }
        }
        let mut related_parties = related_parties;
        related_parties.sort_unstable();
        Ok(PersonalData {
            party,
            related_parties,
            ledger_lines,
            audit: audit_records,
        })
    }

    /// Erases a person's personal data: names, contact data, identifiers, addresses, tags and
    /// custom field values. The party keeps its id, roles, owner and ledger lines, so the books
    /// stay intact and balanced; it is archived and cannot be given personal data again.
    pub async fn anonymize(
        &self,
        company: &Company,
        viewer: &Viewer,
        id: i64,
        key: Option<&RequestKey>,
        origin: &Origin,
    ) -> Result<StoredResponse> {
        crate::idempotency::once_committed(self.db(), company, key, async |tx: &mut Tx| {
            let party = store::get_for_update(tx, company, id).await?;
            if !viewer.reaches(party.data.owner) {
                return Err(Error::NotFound(format!("party {id} not found")));
            }
            if party.data.kind != PartyKind::Person {
                return Err(Error::invalid(
                    "kind",
                    format!("party {id} is an organization; only persons are anonymized"),
                ));
            }
            if party.stamps.anonymized_at.is_some() {
                return Err(Error::Conflict(format!("party {id} is anonymized already")));
            }
            let mut data = party.data.clone();
            data.name = format!("Anonymized person {id}");
            data.legal_name = None;
            data.emails.clear();
            data.phones.clear();
            data.addresses.clear();
            data.tax_ids.clear();
            data.external_ids.clear();
            data.tags.clear();
            data.custom_fields = Map::new();
            for relationship in &mut data.relationships {
                relationship.title = None;
            }
            if data.status == PartyStatus::Active || data.status == PartyStatus::Blocked {
                data.status = PartyStatus::Archived;
            }
            let now = crate::ledger::posting::now_micros();
            store::update(tx, company, id, &data, &fields::CheckedValues::default(), now).await?;
            crate::on_conn!(tx, conn => {
                sqlx::query("UPDATE parties SET anonymized_at = $1 WHERE company_id = $2 AND id = $3")
                    .bind(now)
                    .bind(company.id)
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
            });
            let view = store::get(tx, company, id).await?.view(company);
            // The record names what was erased, never the erased values.
            let event = Event::new(
                Some(company.id),
                "parties:anonymize",
                "party",
                id,
                json!({ "erased": ["name", "legal_name", "emails", "phones", "addresses", "tax_ids",
                    "external_ids", "tags", "custom_fields", "relationship titles"] }),
            );
            audit::append(tx, origin, &[event]).await?;
            crate::api::stored(200, &view)
        })
        .await
    }
}

async fn party_lines(tx: &mut Tx, company: &Company, id: i64) -> Result<Vec<PartyLine>> {
    let sql = tx.backend().numbered(
        "SELECT l.entry_id AS entry_id, l.entry_date AS entry_date, a.code AS code, l.currency AS currency, \
         l.amount_minor AS amount_minor, l.memo AS memo, l.line_no AS line_no \
         FROM ledger_lines l JOIN ledger_accounts a ON a.id = l.account_id \
         WHERE l.company_id = $1 AND l.party_id = $2",
    );
    let rows = tx
        .fetch_packed(
            &sql,
            &[
                "entry_id",
                "entry_date",
                "code",
                "currency",
                "amount_minor",
                "memo",
                "line_no",
            ],
            &[Param::Int(Some(company.id)), Param::Int(Some(id))],
        )
        .await?;
    let mut lines = rows
        .iter()
        .map(|row| {
            let code = row.text(3)?;
            let places = crate::currency::lookup(&code).map_or(2, |c| c.minor_units);
            Ok((
                row.int(6)?,
                PartyLine {
                    entry_id: row.int(0)?,
                    date: row
                        .opt_date(1)?
                        .ok_or_else(|| anyhow::anyhow!("a line without a date"))?,
                    account: row.text(2)?,
                    amount: format_minor(row.int(4)?, places),
                    currency: code,
                    memo: row.opt_text(5)?,
                },
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    lines.sort_by_key(|(line_no, line)| (line.date, line.entry_id, *line_no));
    Ok(lines.into_iter().map(|(_, line)| line).collect())
}
