//! Reading and writing party rows, their keys, relationships and search text.

use chrono::{DateTime, Utc};

use super::fields::{self, CheckedValues};
use super::model::{
    PartyData, PartyKind, PartyStatus, PartyView, Relationship, RelationshipKind, Stamps, name_key,
    sort_key,
};
use crate::company::Company;
use crate::currency;
use crate::db::rows::{self, Value, Write};
use crate::db::{Backend, PackedRow, Param, Tx};
use crate::error::{Error, Result};
use crate::on_conn;

/// The columns every read of a party returns, in [`from_packed`]'s order.
pub const COLUMNS: &[&str] = &[
    "id",
    "kind",
    "display_name",
    "legal_name",
    "status",
    "merged_into_id",
    "owner_user_id",
    "default_currency",
    "payment_terms_days",
    "credit_limit_minor",
    "roles",
    "tags",
    "addresses",
    "emails",
    "phones",
    "tax_ids",
    "external_ids",
    "custom_fields",
    "created_at",
    "updated_at",
    "anonymized_at",
    "sort_name",
    "relationships",
];

/// A party as stored: its data, stamps and where it was merged.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredParty {
    pub id: i64,
    pub data: PartyData,
    pub stamps: Stamps,
    pub merged_into: Option<i64>,
    pub sort_name: String,
}

impl StoredParty {
    pub fn view(&self, company: &Company) -> PartyView {
        self.data.view(
            self.id,
            company.base_currency,
            self.stamps,
            self.merged_into,
        )
    }
}

fn timestamp(row: &PackedRow, index: usize) -> anyhow::Result<Option<DateTime<Utc>>> {
    row.opt_text(index)?
        .map(|text| {
            DateTime::parse_from_rfc3339(&text)
                .or_else(|_| DateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f%:z"))
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| anyhow::anyhow!("timestamp {text:?}: {e}"))
        })
        .transpose()
}

fn json<T: serde::de::DeserializeOwned>(row: &PackedRow, index: usize) -> anyhow::Result<T> {
    Ok(serde_json::from_str(&row.text(index)?)?)
}

/// Relationships packed as `[[kind, party, title], …]`.
/// SQLite may hand the aggregate over as JSON or as its text.
fn relationships_from(packed: &serde_json::Value) -> anyhow::Result<Vec<Relationship>> {
    let rows: Vec<(String, i64, Option<String>)> = match packed {
        serde_json::Value::String(text) => serde_json::from_str(text)?,
        other => serde_json::from_value(other.clone())?,
    };
    let mut relationships = rows
        .into_iter()
        .map(|(kind, party, title)| {
            Ok(Relationship {
                kind: RelationshipKind::parse(&kind)
                    .ok_or_else(|| anyhow::anyhow!("relationship kind {kind}"))?,
                party,
                title,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    relationships.sort();
    Ok(relationships)
}

fn from_packed(row: &PackedRow) -> anyhow::Result<StoredParty> {
    let kind = row.text(1)?;
    let status = row.text(4)?;
    let default_currency = row
        .opt_text(7)?
        .map(|code| {
            currency::lookup(&code).ok_or_else(|| anyhow::anyhow!("unknown currency {code}"))
        })
        .transpose()?;
    Ok(StoredParty {
        id: row.int(0)?,
        data: PartyData {
            kind: PartyKind::parse(&kind).ok_or_else(|| anyhow::anyhow!("kind {kind}"))?,
            name: row.text(2)?,
            legal_name: row.opt_text(3)?,
            status: PartyStatus::parse(&status)
                .ok_or_else(|| anyhow::anyhow!("status {status}"))?,
            owner: row.opt_int(6)?,
            default_currency,
            payment_terms_days: row.opt_int(8)?.map(u32::try_from).transpose()?,
            credit_limit_minor: row.opt_int(9)?,
            roles: json(row, 10)?,
            tags: json(row, 11)?,
            addresses: json(row, 12)?,
            emails: json(row, 13)?,
            phones: json(row, 14)?,
            tax_ids: json(row, 15)?,
            external_ids: json(row, 16)?,
            custom_fields: json(row, 17)?,
            relationships: relationships_from(row.value(22)?)?,
        },
        merged_into: row.opt_int(5)?,
        stamps: Stamps {
            created_at: timestamp(row, 18)?.ok_or_else(|| anyhow::anyhow!("no created_at"))?,
            updated_at: timestamp(row, 19)?,
            anonymized_at: timestamp(row, 20)?,
        },
        sort_name: row.text(21)?,
    })
}

/// The order of a list of parties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// By sort name, then id: lists.
    Name,
    /// By id: searches, which the full-text index answers in id order without sorting.
    Id,
}

/// Where a read of parties finds them: the table, or full-text matches joined to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Parties,
    /// SQLite: matches of the FTS5 query bound as `$2`, in id order.
    SearchIndex,
}

/// Reads parties by a `WHERE` clause over `parties p` (with `$1` the company id), relationships
/// included, in `order`.
pub async fn select(
    tx: &mut Tx,
    company: &Company,
    source: Source,
    condition: &str,
    params: &[Param],
    order: Order,
    limit: usize,
) -> Result<Vec<StoredParty>> {
    let backend = tx.backend();
    let mut columns: Vec<String> = COLUMNS[..COLUMNS.len() - 1]
        .iter()
        .map(|c| format!("p.{c}"))
        .collect();
    // Relationships ride along as one JSON column: one query per page, not two.
    columns.push(match backend {
        Backend::Sqlite => "(SELECT json_group_array(json_array(r.kind, r.related_party_id, r.title)) \
             FROM party_relationships r WHERE r.party_id = p.id) AS relationships"
            .to_owned(),
        Backend::Postgres => "(SELECT COALESCE(json_agg(json_build_array(r.kind, r.related_party_id, r.title)), '[]')::text \
             FROM party_relationships r WHERE r.party_id = p.id) AS relationships"
            .to_owned(),
    });
    let mut all = vec![Param::Int(Some(company.id))];
    all.extend_from_slice(params);
    let (from, order_by) = match (source, order) {
        (Source::SearchIndex, _) => ("party_search s JOIN parties p ON p.id = s.rowid", "s.rowid"),
        (Source::Parties, Order::Id) => ("parties p", "p.id"),
        (Source::Parties, Order::Name) => ("parties p", "p.sort_name, p.id"),
    };
    let search = if source == Source::SearchIndex {
        "party_search MATCH $2 AND "
    } else {
        ""
    };
    let sql = backend.numbered(&format!(
        "SELECT {} FROM {from} WHERE {search}p.company_id = $1 AND {condition} ORDER BY {order_by} LIMIT {limit}",
        columns.join(", ")
    ));
    let mut parties = tx
        .fetch_packed(&sql, COLUMNS, &all)
        .await?
        .iter()
        .map(from_packed)
        .collect::<anyhow::Result<Vec<_>>>()?;
    match order {
        Order::Name => parties.sort_by(|a, b| (&a.sort_name, a.id).cmp(&(&b.sort_name, b.id))),
        Order::Id => parties.sort_by_key(|p| p.id),
    }
    Ok(parties)
}

/// One party, merged or not.
pub async fn get(tx: &mut Tx, company: &Company, id: i64) -> Result<StoredParty> {
    select(
        tx,
        company,
        Source::Parties,
        "p.id = $2",
        &[Param::Int(Some(id))],
        Order::Id,
        1,
    )
    .await?
    .pop()
    .ok_or_else(|| Error::NotFound(format!("party {id} not found")))
}

/// The party with this id, taking the row lock a change needs (PostgreSQL).
pub async fn get_for_update(tx: &mut Tx, company: &Company, id: i64) -> Result<StoredParty> {
    if tx.backend() == Backend::Postgres {
        on_conn!(tx, conn => {
            sqlx::query("SELECT id FROM parties WHERE company_id = $1 AND id = $2 FOR UPDATE")
                .bind(company.id)
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
        });
    }
    get(tx, company, id).await
}

/// What the database derives from a party's data: its keys and search text.
struct Derived {
    sort_name: String,
    keys: Vec<(String, String)>,
    search_text: String,
}

fn derive(data: &PartyData, custom: &CheckedValues) -> Derived {
    let mut keys: Vec<(String, String)> = Vec::new();
    let mut key = |kind: &str, value: String| {
        if !value.is_empty() {
            keys.push((kind.to_owned(), value));
        }
    };
    for role in &data.roles {
        key("role", role.as_str().to_owned());
    }
    for tag in &data.tags {
        key("tag", tag.to_lowercase());
    }
    for email in &data.emails {
        key("email", email.clone());
    }
    for phone in &data.phones {
        key("phone", phone.clone());
    }
    for tax_id in &data.tax_ids {
        key("tax_id", tax_id.value.clone());
    }
    for external in &data.external_ids {
        key("external_id", external_key(&external.system, &external.id));
    }
    key("name", name_key(&data.name));
    if let Some(legal) = &data.legal_name {
        key("name", name_key(legal));
    }
    for (name, value) in &custom.keys {
        key(&fields::key_kind(name), value.clone());
    }
    keys.sort();
    keys.dedup();

    let mut search: Vec<String> = vec![data.name.clone()];
    search.extend(data.legal_name.clone());
    search.extend(data.emails.iter().cloned());
    // "+49301234567": any run of its digits is a fragment of it.
    search.extend(data.phones.iter().cloned());
    search.extend(data.tax_ids.iter().map(|t| t.value.clone()));
    search.extend(data.external_ids.iter().map(|e| e.id.clone()));
    search.extend(custom.texts.iter().cloned());
    Derived {
        sort_name: sort_key(&data.name),
        keys,
        search_text: fold(&search.join(" ")),
    }
}

/// Lower case without accents, punctuation kept: how search text and search words compare.
pub fn fold(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization as _;
    // ASCII decomposes to itself and has no accents: the common case skips the normalizer.
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    text.nfkd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The key of an external id: system and id, separated by a character neither contains.
pub fn external_key(system: &str, id: &str) -> String {
    format!("{system}\u{1f}{id}")
}

/// Party ids for `count` new parties. SQLite: after the largest, under the write lock every
/// write transaction holds; PostgreSQL: from the identity sequence.
async fn allocate_ids(tx: &mut Tx, count: usize) -> Result<Vec<i64>> {
    let count = i64::try_from(count).map_err(anyhow::Error::from)?;
    let backend = tx.backend();
    let ids = on_conn!(tx, conn => {
        use crate::db::Row as _;
        match backend {
            Backend::Sqlite => {
                let max = sqlx::query("SELECT COALESCE(MAX(id), 0) AS max_id FROM parties")
                    .fetch_one(&mut *conn)
                    .await?
                    .int("max_id")?;
                (max + 1..=max + count).collect::<Vec<i64>>()
            }
            Backend::Postgres => sqlx::query(
                "SELECT nextval(pg_get_serial_sequence('parties', 'id')) AS id FROM generate_series(1, $1)",
            )
            .bind(count)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| row.int("id"))
            .collect::<anyhow::Result<Vec<i64>>>()?,
        }
    });
    Ok(ids)
}

/// Inserts new parties with their keys, relationships and search text; returns their ids, in
/// order.
pub async fn insert_many(
    tx: &mut Tx,
    company: &Company,
    parties: &[(&PartyData, &CheckedValues)],
    now: DateTime<Utc>,
) -> Result<Vec<i64>> {
    if parties.is_empty() {
        return Ok(Vec::new());
    }
    let ids = allocate_ids(tx, parties.len()).await?;
    let derived: Vec<Derived> = parties
        .iter()
        .map(|(data, custom)| derive(data, custom))
        .collect();
    // The JSON texts first, so that the rows can borrow them.
    let encoded = parties
        .iter()
        .map(|(data, custom)| {
            Ok([
                to_json(&data.roles)?,
                to_json(&data.tags)?,
                to_json(&data.addresses)?,
                to_json(&data.emails)?,
                to_json(&data.phones)?,
                to_json(&data.tax_ids)?,
                to_json(&data.external_ids)?,
                to_json(&custom.values)?,
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    // PostgreSQL keeps the search text on the row; SQLite in the FTS5 table.
    let text_on_row = tx.backend() == Backend::Postgres;
    let columns = if text_on_row { 21 } else { 20 };
    let items: Vec<(i64, &PartyData, &Derived)> = ids
        .iter()
        .zip(parties)
        .zip(&derived)
        .map(|((id, (data, _)), derived)| (*id, *data, derived))
        .collect();
    let mut values = Vec::with_capacity(parties.len() * columns);
    for ((id, data, derived), json) in items.iter().zip(&encoded) {
        values.extend([
            Value::Int(Some(*id)),
            Value::Int(Some(company.id)),
            Value::Text(Some(&data.name)),
            Value::Time(now),
            Value::Text(Some(data.kind.as_str())),
            Value::Text(data.legal_name.as_deref()),
            Value::Text(Some(data.status.as_str())),
            Value::Int(data.owner),
            Value::Text(data.default_currency.map(|c| c.code)),
            Value::Int(data.payment_terms_days.map(i64::from)),
            Value::Int(data.credit_limit_minor),
        ]);
        values.extend(json.iter().map(|text| Value::Text(Some(text))));
        values.push(Value::Text(Some(&derived.sort_name)));
        if text_on_row {
            values.push(Value::Text(Some(&derived.search_text)));
        }
    }
    let rows = Write::insert(
        format!(
            "INSERT INTO parties (id, company_id, display_name, created_at, kind, legal_name, status, owner_user_id, \
             default_currency, payment_terms_days, credit_limit_minor, roles, tags, addresses, emails, phones, \
             tax_ids, external_ids, custom_fields, sort_name{})",
            if text_on_row { ", search_text" } else { "" }
        ),
        columns,
        values,
    );
    rows::write(tx, &[rows]).await?;
    write_derived(tx, company, &items).await?;
    Ok(ids)
}

/// Replaces a party's data.
pub async fn update(
    tx: &mut Tx,
    company: &Company,
    id: i64,
    data: &PartyData,
    custom: &CheckedValues,
    now: DateTime<Utc>,
) -> Result<()> {
    let derived = derive(data, custom);
    on_conn!(tx, conn => {
        sqlx::query(
            "UPDATE parties SET display_name = $1, kind = $2, legal_name = $3, status = $4, owner_user_id = $5, \
             default_currency = $6, payment_terms_days = $7, credit_limit_minor = $8, roles = $9, tags = $10, \
             addresses = $11, emails = $12, phones = $13, tax_ids = $14, external_ids = $15, custom_fields = $16, \
             sort_name = $17, updated_at = $18 WHERE company_id = $19 AND id = $20",
        )
        .bind(&data.name)
        .bind(data.kind.as_str())
        .bind(data.legal_name.as_deref())
        .bind(data.status.as_str())
        .bind(data.owner)
        .bind(data.default_currency.map(|c| c.code))
        .bind(data.payment_terms_days.map(i64::from))
        .bind(data.credit_limit_minor)
        .bind(to_json(&data.roles)?)
        .bind(to_json(&data.tags)?)
        .bind(to_json(&data.addresses)?)
        .bind(to_json(&data.emails)?)
        .bind(to_json(&data.phones)?)
        .bind(to_json(&data.tax_ids)?)
        .bind(to_json(&data.external_ids)?)
        .bind(to_json(&custom.values)?)
        .bind(&derived.sort_name)
        .bind(now)
        .bind(company.id)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    });
    if tx.backend() == Backend::Postgres {
        on_conn!(tx, conn => {
            sqlx::query("UPDATE parties SET search_text = $1 WHERE id = $2")
                .bind(&derived.search_text)
                .bind(id)
                .execute(&mut *conn)
                .await?;
        });
    }
    clear_derived(tx, id).await?;
    write_derived(tx, company, &[(id, data, &derived)]).await
}

fn to_json(value: &impl serde::Serialize) -> Result<String> {
    Ok(serde_json::to_string(value).map_err(anyhow::Error::from)?)
}

/// Removes a party's keys, relationships and search text.
pub async fn clear_derived(tx: &mut Tx, id: i64) -> Result<()> {
    let backend = tx.backend();
    on_conn!(tx, conn => {
        sqlx::query("DELETE FROM party_keys WHERE party_id = $1").bind(id).execute(&mut *conn).await?;
        sqlx::query("DELETE FROM party_relationships WHERE party_id = $1").bind(id).execute(&mut *conn).await?;
        if backend == Backend::Sqlite {
            sqlx::query("DELETE FROM party_search WHERE rowid = $1").bind(id).execute(&mut *conn).await?;
        }
    });
    Ok(())
}

/// Writes parties' keys and relationships, and on SQLite their search text (PostgreSQL keeps
/// it on the party row).
async fn write_derived(
    tx: &mut Tx,
    company: &Company,
    items: &[(i64, &PartyData, &Derived)],
) -> Result<()> {
    let mut keys = Vec::new();
    let mut relationships = Vec::new();
    for (id, data, derived) in items {
        for (kind, value) in &derived.keys {
            keys.extend([
                Value::Int(Some(company.id)),
                Value::Text(Some(kind)),
                Value::Text(Some(value)),
                Value::Int(Some(*id)),
            ]);
        }
        for relationship in &data.relationships {
            relationships.extend([
                Value::Int(Some(company.id)),
                Value::Int(Some(*id)),
                Value::Text(Some(relationship.kind.as_str())),
                Value::Int(Some(relationship.party)),
                Value::Text(relationship.title.as_deref()),
            ]);
        }
    }
    let writes = [
        Write::insert(
            "INSERT INTO party_keys (company_id, kind, value, party_id)",
            4,
            keys,
        ),
        Write::insert(
            "INSERT INTO party_relationships (company_id, party_id, kind, related_party_id, title)",
            5,
            relationships,
        ),
    ];
    rows::write(tx, &writes).await?;
    if tx.backend() == Backend::Sqlite {
        // One statement for all of them: FTS5 writes its pending postings out as a new segment
        // at the start of every statement, and merges segments as they pile up; a statement
        // per few hundred parties made an import spend a seventh of its time merging.
        let texts: Vec<(i64, &str)> = items
            .iter()
            .map(|(id, _, derived)| (*id, derived.search_text.as_str()))
            .collect();
        let texts = serde_json::to_string(&texts).map_err(anyhow::Error::from)?;
        on_conn!(tx, conn => {
            sqlx::query(
                "INSERT INTO party_search (rowid, text) SELECT value ->> 0, value ->> 1 FROM json_each($1)",
            )
            .bind(texts)
            .execute(&mut *conn)
            .await?;
        });
    }
    Ok(())
}

/// Parties of the company holding any of these keys, as (party id, kind, value), excluding
/// `except`. Merged parties hold no keys: merging clears them.
pub async fn holders_of(
    tx: &mut Tx,
    company: &Company,
    keys: &[(String, String)],
    except: Option<i64>,
) -> Result<Vec<(i64, String, String)>> {
    let mut by_kind: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (kind, value) in keys {
        by_kind.entry(kind).or_default().push(value);
    }
    let mut found = Vec::new();
    for (kind, values) in by_kind {
        let mut values = values;
        values.sort_unstable();
        values.dedup();
        for chunk in values.chunks(KEYS_PER_QUERY_MAX) {
            // Parameters appear once each, in order: anonymous placeholders on SQLite, which
            // it binds without searching (see `Backend::values_list`).
            let list = match tx.backend() {
                Backend::Sqlite => vec!["?"; chunk.len()].join(", "),
                Backend::Postgres => (0..chunk.len())
                    .map(|i| format!("${}", i + 3))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            let (company_param, kind_param) = match tx.backend() {
                Backend::Sqlite => ("?", "?"),
                Backend::Postgres => ("$1", "$2"),
            };
            let sql = format!(
                "SELECT party_id, value FROM party_keys \
                 WHERE company_id = {company_param} AND kind = {kind_param} AND value IN ({list})"
            );
            let mut params = vec![
                Param::Int(Some(company.id)),
                Param::Text(Some(kind.to_owned())),
            ];
            params.extend(chunk.iter().map(|v| Param::Text(Some((*v).to_owned()))));
            for row in tx
                .fetch_packed(&sql, &["party_id", "value"], &params)
                .await?
            {
                let party = row.int(0)?;
                if Some(party) != except {
                    found.push((party, kind.to_owned(), row.text(1)?));
                }
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Values looked up in one query.
const KEYS_PER_QUERY_MAX: usize = 500;

/// Which of these user ids belong to active users.
pub async fn active_users(tx: &mut Tx, ids: &[i64]) -> Result<std::collections::HashSet<i64>> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut active = std::collections::HashSet::new();
    for chunk in ids.chunks(KEYS_PER_QUERY_MAX) {
        let sql = format!(
            "SELECT id FROM users WHERE status = 'active' AND id IN {}",
            tx.backend().placeholders(1, chunk.len())
        );
        let params: Vec<Param> = chunk.iter().map(|id| Param::Int(Some(*id))).collect();
        for row in tx.fetch_packed(&sql, &["id"], &params).await? {
            active.insert(row.int(0)?);
        }
    }
    Ok(active)
}

/// Which of these ids are parties of the company that were not merged away.
pub async fn existing(
    tx: &mut Tx,
    company: &Company,
    ids: &[i64],
) -> Result<Vec<(i64, Option<i64>)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut params = vec![Param::Int(Some(company.id))];
    params.extend(ids.iter().map(|id| Param::Int(Some(*id))));
    let sql = format!(
        "SELECT id, merged_into_id FROM parties WHERE company_id = $1 AND id IN {}",
        tx.backend().placeholders(2, ids.len())
    );
    let rows = tx
        .fetch_packed(&sql, &["id", "merged_into_id"], &params)
        .await?;
    rows.iter()
        .map(|row| Ok((row.int(0)?, row.opt_int(1)?)))
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::fold;

    #[test]
    fn folding_lowers_case_and_drops_accents_but_keeps_punctuation() {
        assert_eq!(
            fold("Müller-Söhne GmbH, +49 30"),
            "muller-sohne gmbh, +49 30"
        );
        assert_eq!(
            fold("Muller-Sohne GmbH, +49 30"),
            "muller-sohne gmbh, +49 30"
        );
        assert_eq!(fold("ＡＢＣ"), "abc");
    }
}
