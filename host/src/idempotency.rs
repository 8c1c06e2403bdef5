//! Exactly-once writes: the first response to a request carrying an `Idempotency-Key` is stored
//! in the same transaction as the change it made, and a replay of that key gets it back.

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

/// SHA-256 over the operation and its canonical JSON body: object keys sorted, no whitespace.
pub fn fingerprint(operation: &str, body: &impl Serialize) -> String {
    // serde_json's Value keeps object keys sorted, which makes the rendering canonical.
    let canonical = serde_json::to_value(body)
        .and_then(|value| serde_json::to_vec(&value))
        .unwrap_or_default();
    let mut hasher = Sha256::new();
    hasher.update(operation.as_bytes());
    hasher.update([0]);
    hasher.update(&canonical);
    hex::encode(hasher.finalize())
}

/// The stored response for this key, if it was used before. A key reused for a different
/// request is a conflict.
pub async fn find(
    tx: &mut Tx,
    company: &Company,
    key: &RequestKey,
) -> Result<Option<StoredResponse>> {
    let row = on_conn!(tx, conn => {
        match sqlx::query(
            "SELECT request_fingerprint, response_status, response_body FROM idempotency_keys \
             WHERE company_id = $1 AND principal = $2 AND idempotency_key = $3",
        )
        .bind(company.id)
        .bind(&key.principal)
        .bind(&key.key)
        .fetch_optional(&mut *conn)
        .await?
        {
            Some(row) => Some((row.text("request_fingerprint")?, row.int("response_status")?, row.text("response_body")?)),
            None => None,
        }
    });
    let Some((fingerprint, status, body)) = row else {
        return Ok(None);
    };
    if fingerprint != key.fingerprint {
        return Err(Error::Conflict(format!(
            "the Idempotency-Key {:?} was already used for a different request; use a new key for a new request",
            key.key
        )));
    }
    Ok(Some(StoredResponse {
        status: u16::try_from(status).map_err(anyhow::Error::from)?,
        body: serde_json::from_str(&body).map_err(anyhow::Error::from)?,
        replayed: true,
    }))
}

/// Records the response to the first use of a key, in the transaction that made the change.
pub async fn store(
    tx: &mut Tx,
    company: &Company,
    key: &RequestKey,
    response: &StoredResponse,
) -> Result<()> {
    let body = serde_json::to_string(&response.body).map_err(anyhow::Error::from)?;
    on_conn!(tx, conn => {
        sqlx::query(
            "INSERT INTO idempotency_keys (company_id, principal, idempotency_key, request_fingerprint, \
             response_status, response_body, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(company.id)
        .bind(&key.principal)
        .bind(&key.key)
        .bind(&key.fingerprint)
        .bind(i64::from(response.status))
        .bind(body)
        .bind(Utc::now())
        .execute(&mut *conn)
        .await?;
    });
    Ok(())
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
