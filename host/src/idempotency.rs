//! Exactly-once writes: the first response to a request carrying an `Idempotency-Key` is stored
//! in the same transaction as the change it made, and a replay of that key gets it back.

use std::collections::HashMap;

use chrono::Utc;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::company::Company;
use crate::db::{Row, Tx};
use crate::error::{Error, Result};
use crate::on_conn;

/// Who a key belongs to, what it is, and the fingerprint of the request it was first used for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    /// Keys are scoped per principal so two clients cannot collide (empty until identities exist).
    pub principal: String,
    pub key: String,
    pub fingerprint: String,
}

/// A response as first sent, replayed verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: serde_json::Value,
    /// True when this is the stored response to an earlier request with the same key.
    pub replayed: bool,
}

impl StoredResponse {
    pub fn new(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            body,
            replayed: false,
        }
    }
}

/// SHA-256 over the operation and the request as parsed. Serializing the typed request gives a
/// canonical form whatever the client's formatting: fields in declaration order, maps sorted.
pub fn fingerprint(operation: &str, body: &impl Serialize) -> String {
    let canonical = serde_json::to_vec(body).unwrap_or_default();
    let mut hasher = Sha256::new();
    hasher.update(operation.as_bytes());
    hasher.update([0]);
    hasher.update(&canonical);
    hex::encode(hasher.finalize())
}

/// Keys looked up in one query.
const KEYS_PER_QUERY_MAX: usize = 500;

/// What was stored for each of these keys that was used before: the stored response, or a
/// conflict when the key was first used for a different request.
pub async fn find_many(
    tx: &mut Tx,
    company: &Company,
    keys: &[&RequestKey],
) -> Result<HashMap<(String, String), Result<StoredResponse>>> {
    let mut found = HashMap::new();
    let mut by_principal: HashMap<&str, Vec<&RequestKey>> = HashMap::new();
    for key in keys {
        by_principal
            .entry(key.principal.as_str())
            .or_default()
            .push(key);
    }
    // The primary key leads with (company, principal): both are constrained so that the lookup
    // is an index seek, not a scan of every key the company ever used.
    for (principal, keys) in by_principal {
        for chunk in keys.chunks(KEYS_PER_QUERY_MAX) {
            let sql = format!(
                "SELECT principal, idempotency_key, request_fingerprint, response_status, response_body \
             FROM idempotency_keys WHERE company_id = $1 AND principal = $2 AND idempotency_key IN {}",
                tx.backend().placeholders(3, chunk.len())
            );
            let rows: Vec<(String, String, String, i64, String)> = on_conn!(tx, conn => {
                let mut query = sqlx::query(&sql).bind(company.id).bind(principal);
                for key in chunk {
                    query = query.bind(&key.key);
                }
                query
                    .fetch_all(&mut *conn)
                    .await?
                    .iter()
                    .map(|row| -> anyhow::Result<_> {
                        Ok((
                            row.text("principal")?,
                            row.text("idempotency_key")?,
                            row.text("request_fingerprint")?,
                            row.int("response_status")?,
                            row.text("response_body")?,
                        ))
                    })
                    .collect::<anyhow::Result<_>>()?
            });
            for (principal, key, fingerprint, status, body) in rows {
                let Some(asked) = chunk
                    .iter()
                    .find(|k| k.principal == principal && k.key == key)
                else {
                    continue;
                };
                let outcome = if fingerprint == asked.fingerprint {
                    Ok(StoredResponse {
                        status: u16::try_from(status).map_err(anyhow::Error::from)?,
                        body: serde_json::from_str(&body).map_err(anyhow::Error::from)?,
                        replayed: true,
                    })
                } else {
                    Err(Error::Conflict(format!(
                        "the Idempotency-Key {key:?} was already used for a different request; use a new key for a new request"
                    )))
                };
                found.insert((principal, key), outcome);
            }
        }
    }
    Ok(found)
}

/// The stored response for this key, if it was used before.
pub async fn find(
    tx: &mut Tx,
    company: &Company,
    key: &RequestKey,
) -> Result<Option<StoredResponse>> {
    find_many(tx, company, &[key])
        .await?
        .remove(&(key.principal.clone(), key.key.clone()))
        .transpose()
}

/// Records the responses to the first use of these keys, in the transaction that made the change.
pub async fn store_many(
    tx: &mut Tx,
    company: &Company,
    responses: &[(&RequestKey, &StoredResponse)],
) -> Result<()> {
    const COLUMNS: usize = 7;
    let created_at = Utc::now();
    for chunk in crate::db::statement_chunks(responses) {
        let bodies: Vec<String> = chunk
            .iter()
            .map(|(_, response)| serde_json::to_string(&response.body))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::from)?;
        let sql = format!(
            "INSERT INTO idempotency_keys (company_id, principal, idempotency_key, request_fingerprint, \
             response_status, response_body, created_at) VALUES {}",
            tx.backend().values_list(chunk.len(), COLUMNS)
        );
        on_conn!(tx, conn => {
            let mut query = sqlx::query(&sql);
            for ((key, response), body) in chunk.iter().zip(&bodies) {
                query = query
                    .bind(company.id)
                    .bind(&key.principal)
                    .bind(&key.key)
                    .bind(&key.fingerprint)
                    .bind(i64::from(response.status))
                    .bind(body)
                    .bind(created_at);
            }
            query.execute(&mut *conn).await?;
        });
    }
    Ok(())
}

/// Records the response to the first use of a key, in the transaction that made the change.
pub async fn store(
    tx: &mut Tx,
    company: &Company,
    key: &RequestKey,
    response: &StoredResponse,
) -> Result<()> {
    store_many(tx, company, &[(key, response)]).await
}

/// [`once`] in a write transaction of its own, committed when the write succeeds.
pub async fn once_committed<F>(
    db: &crate::db::Database,
    company: &Company,
    key: Option<&RequestKey>,
    write: F,
) -> Result<StoredResponse>
where
    F: AsyncFnOnce(&mut Tx) -> Result<StoredResponse>,
{
    let mut tx = db.begin_write().await?;
    let response = once(&mut tx, company, key, write).await?;
    tx.commit().await?;
    Ok(response)
}

/// Runs a write exactly once per key: a replay returns the stored response without running it.
/// Without a key the write simply runs. `write` must leave its change in `tx` uncommitted.
pub async fn once<F>(
    tx: &mut Tx,
    company: &Company,
    key: Option<&RequestKey>,
    write: F,
) -> Result<StoredResponse>
where
    F: AsyncFnOnce(&mut Tx) -> Result<StoredResponse>,
{
    if let Some(key) = key
        && let Some(stored) = find(tx, company, key).await?
    {
        return Ok(stored);
    }
    let response = write(tx).await?;
    if let Some(key) = key {
        store(tx, company, key, &response).await?;
    }
    Ok(response)
}
