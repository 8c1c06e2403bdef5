//! Reading and writing party rows, their keys, relationships and search text.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::fields::{self, CheckedValues};
use super::model::{
    PartyData, PartyKind, PartyStatus, PartyView, Relationship, RelationshipKind, Stamps, name_key,
    sort_key,
};
use crate::company::Company;
use crate::currency;
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
            relationships: Vec::new(),
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

/// Reads parties by a `WHERE` clause over `parties p` (with `$1` the company id), relationships
/// included, in list order (sort name, then id).
pub async fn select(
    tx: &mut Tx,
    company: &Company,
    condition: &str,
    params: &[Param],
    limit: usize,
) -> Result<Vec<StoredParty>> {
    let columns: Vec<String> = COLUMNS.iter().map(|c| format!("p.{c}")).collect();
    let mut all = vec![Param::Int(Some(company.id))];
    all.extend_from_slice(params);
    let sql = tx.backend().numbered(&format!(
        "SELECT {} FROM parties p WHERE p.company_id = $1 AND {condition} ORDER BY p.sort_name, p.id LIMIT {limit}",
        columns.join(", ")
    ));
    let mut parties = tx
        .fetch_packed(&sql, COLUMNS, &all)
        .await?
        .iter()
        .map(from_packed)
        .collect::<anyhow::Result<Vec<_>>>()?;
    parties.sort_by(|a, b| (&a.sort_name, a.id).cmp(&(&b.sort_name, b.id)));
    attach_relationships(tx, &mut parties).await?;
    Ok(parties)
}

async fn attach_relationships(tx: &mut Tx, parties: &mut [StoredParty]) -> Result<()> {
    if parties.is_empty() {
        return Ok(());
    }
    let ids: Vec<Param> = parties.iter().map(|p| Param::Int(Some(p.id))).collect();
    let sql = format!(
        "SELECT party_id, kind, related_party_id, title FROM party_relationships WHERE party_id IN {}",
        tx.backend().placeholders(1, ids.len())
    );
    let rows = tx
        .fetch_packed(
            &sql,
            &["party_id", "kind", "related_party_id", "title"],
            &ids,
        )
        .await?;
    let mut by_party: HashMap<i64, Vec<Relationship>> = HashMap::new();
    for row in rows {
        let kind = row.text(1)?;
        by_party.entry(row.int(0)?).or_default().push(Relationship {
            kind: RelationshipKind::parse(&kind)
                .ok_or_else(|| anyhow::anyhow!("relationship kind {kind}"))?,
            party: row.int(2)?,
            title: row.opt_text(3)?,
        });
    }
    for party in parties {
        let mut relationships = by_party.remove(&party.id).unwrap_or_default();
        relationships.sort();
        party.data.relationships = relationships;
    }
    Ok(())
}

/// One party, merged or not.
pub async fn get(tx: &mut Tx, company: &Company, id: i64) -> Result<StoredParty> {
    select(tx, company, "p.id = $2", &[Param::Int(Some(id))], 1)
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
    for phone in &data.phones {
        search.push(phone.clone());
        search.push(phone.trim_start_matches('+').to_owned());
    }
    search.extend(data.tax_ids.iter().map(|t| t.value.clone()));
    search.extend(data.external_ids.iter().map(|e| e.id.clone()));
    search.extend(custom.texts.iter().cloned());
    Derived {
        sort_name: sort_key(&data.name),
        keys,
        search_text: fold(&search.join(" | ")),
    }
}

/// Lower case without accents, punctuation kept: how search text and search words compare.
pub fn fold(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization as _;
    text.nfkd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The key of an external id: system and id, separated by a character neither contains.
pub fn external_key(system: &str, id: &str) -> String {
    format!("{system}\u{1f}{id}")
}

/// Inserts a new party; returns its id.
pub async fn insert(
    tx: &mut Tx,
    company: &Company,
    data: &PartyData,
    custom: &CheckedValues,
    now: DateTime<Utc>,
) -> Result<i64> {
    let derived = derive(data, custom);
    let id: i64 = on_conn!(tx, conn => {
        use crate::db::Row as _;
        sqlx::query(
            "INSERT INTO parties (company_id, display_name, created_at, kind, legal_name, status, owner_user_id, \
             default_currency, payment_terms_days, credit_limit_minor, roles, tags, addresses, emails, phones, \
             tax_ids, external_ids, custom_fields, sort_name) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) RETURNING id",
        )
        .bind(company.id)
        .bind(&data.name)
        .bind(now)
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
        .fetch_one(&mut *conn)
        .await?
        .int("id")?
    });
    write_derived(tx, company, id, data, &derived).await?;
    Ok(id)
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
    clear_derived(tx, id).await?;
    write_derived(tx, company, id, data, &derived).await
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

async fn write_derived(
    tx: &mut Tx,
    company: &Company,
    id: i64,
    data: &PartyData,
    derived: &Derived,
) -> Result<()> {
    let backend = tx.backend();
    if !derived.keys.is_empty() {
        let sql = format!(
            "INSERT INTO party_keys (company_id, kind, value, party_id) VALUES {}",
            backend.values_list(derived.keys.len(), 4)
        );
        on_conn!(tx, conn => {
            let mut query = sqlx::query(&sql);
            for (kind, value) in &derived.keys {
                query = query.bind(company.id).bind(kind).bind(value).bind(id);
            }
            query.execute(&mut *conn).await?;
        });
    }
    if !data.relationships.is_empty() {
        let sql = format!(
            "INSERT INTO party_relationships (company_id, party_id, kind, related_party_id, title) VALUES {}",
            backend.values_list(data.relationships.len(), 5)
        );
        on_conn!(tx, conn => {
            let mut query = sqlx::query(&sql);
            for r in &data.relationships {
                query = query.bind(company.id).bind(id).bind(r.kind.as_str()).bind(r.party).bind(r.title.as_deref());
            }
            query.execute(&mut *conn).await?;
        });
    }
    on_conn!(tx, conn => {
        match backend {
            Backend::Sqlite => {
                sqlx::query("INSERT INTO party_search (rowid, text) VALUES ($1, $2)")
                    .bind(id)
                    .bind(&derived.search_text)
                    .execute(&mut *conn)
                    .await?;
            }
            Backend::Postgres => {
                sqlx::query("UPDATE parties SET search_text = $1 WHERE id = $2")
                    .bind(&derived.search_text)
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
            }
        }
    });
    Ok(())
}

/// Ids of the company's parties holding any of these keys, excluding `except`, merged ones
/// left out.
pub async fn holders_of(
    tx: &mut Tx,
    company: &Company,
    keys: &[(String, String)],
    except: Option<i64>,
) -> Result<Vec<(i64, String, String)>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut params = vec![Param::Int(Some(company.id)), Param::Int(except)];
    let mut conditions = Vec::new();
    for (kind, value) in keys {
        let n = params.len();
        conditions.push(format!("(k.kind = ${} AND k.value = ${})", n + 1, n + 2));
        params.push(Param::Text(Some(kind.clone())));
        params.push(Param::Text(Some(value.clone())));
    }
    let sql = format!(
        "SELECT k.party_id, k.kind, k.value FROM party_keys k JOIN parties p ON p.id = k.party_id \
         WHERE k.company_id = $1 AND ({}) AND ($2 IS NULL OR k.party_id <> $2) AND p.merged_into_id IS NULL",
        conditions.join(" OR ")
    );
    let sql = match tx.backend() {
        Backend::Sqlite => tx.backend().numbered(&sql),
        Backend::Postgres => sql.replace("$2 IS NULL", "$2::BIGINT IS NULL"),
    };
    let rows = tx
        .fetch_packed(&sql, &["party_id", "kind", "value"], &params)
        .await?;
    rows.iter()
        .map(|row| Ok((row.int(0)?, row.text(1)?, row.text(2)?)))
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(Error::from)
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
