//! The plugins' own records: JSON values under string keys in named collections, per company
//! and plugin, read and written inside the call's transaction.

use chrono::Utc;
use sqlx::Row as _;

use crate::db::Tx;
use crate::error::{Error, Result};
use crate::on_conn;

/// Longest collection name; names are lower-case letters, digits, `-`, `_` and `.`.
pub const COLLECTION_NAME_CHARS_MAX: usize = 64;
/// Longest key, in bytes.
pub const KEY_BYTES_MAX: usize = 512;
/// Largest value, in bytes of JSON text.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Items one query returns at most, and when the plugin asks for no particular number.
pub const QUERY_ITEMS_MAX: u32 = 1_000;
pub const QUERY_ITEMS_DEFAULT: u32 = 100;

/// Whose records: one plugin in one company.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub company_id: i64,
    pub plugin: &'a str,
}

pub fn check_collection(collection: &str) -> Result<()> {
    let valid = !collection.is_empty()
        && collection.len() <= COLLECTION_NAME_CHARS_MAX
        && collection
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(
            "collection",
            format!(
                "a collection name has 1 to {COLLECTION_NAME_CHARS_MAX} lower-case letters, digits, '-', '_' or '.'"
            ),
        ))
    }
}

pub fn check_key(field: &str, key: &str) -> Result<()> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(Error::invalid(
            field,
            format!("a key has 1 to {KEY_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

/// Checks that `value` is one JSON document within the size limit and returns it parsed.
pub fn check_value(value: &str) -> Result<serde_json::Value> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(Error::invalid(
            "value",
            format!("a stored value has at most {VALUE_BYTES_MAX} bytes of JSON"),
        ));
    }
    serde_json::from_str(value)
        .map_err(|error| Error::invalid("value", format!("is not valid JSON: {error}")))
}

pub async fn put(
    tx: &mut Tx,
    owner: Owner<'_>,
    collection: &str,
    key: &str,
    value: &str,
) -> Result<()> {
    on_conn!(tx, conn => {
        sqlx::query(
            "INSERT INTO plugin_records (company_id, plugin, collection, key, value, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (company_id, plugin, collection, key) \
             DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(owner.company_id)
        .bind(owner.plugin)
        .bind(collection)
        .bind(key)
        .bind(value)
        .bind(Utc::now())
        .execute(&mut *conn)
        .await?;
    });
    Ok(())
}

pub async fn get(
    tx: &mut Tx,
    owner: Owner<'_>,
    collection: &str,
    key: &str,
) -> Result<Option<String>> {
    let value = on_conn!(tx, conn => {
        sqlx::query(
            "SELECT value FROM plugin_records \
             WHERE company_id = $1 AND plugin = $2 AND collection = $3 AND key = $4",
        )
        .bind(owner.company_id)
        .bind(owner.plugin)
        .bind(collection)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?
        .map(|row| row.try_get::<String, _>(0))
        .transpose()?
    });
    Ok(value)
}

/// Keys one `get-many` reads at most.
pub const GET_MANY_KEYS_MAX: usize = 1_000;
/// Keys per statement of `get_many`, well inside both backends' parameter limits.
const KEYS_PER_STATEMENT: usize = 200;

/// The values under `keys`, in their order (`None` where there is no record).
pub async fn get_many(
    tx: &mut Tx,
    owner: Owner<'_>,
    collection: &str,
    keys: &[String],
) -> Result<Vec<Option<String>>> {
    let mut found: std::collections::HashMap<String, String> =
        std::collections::HashMap::with_capacity(keys.len());
    for chunk in keys.chunks(KEYS_PER_STATEMENT) {
        let placeholders: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 4)).collect();
        let sql = format!(
            "SELECT key, value FROM plugin_records \
             WHERE company_id = $1 AND plugin = $2 AND collection = $3 AND key IN ({})",
            placeholders.join(", ")
        );
        let rows: Vec<(String, String)> = on_conn!(tx, conn => {
            let mut query = sqlx::query_as(&sql)
                .bind(owner.company_id)
                .bind(owner.plugin)
                .bind(collection);
            for key in chunk {
                query = query.bind(key);
            }
            query.fetch_all(&mut *conn).await?
        });
        found.extend(rows);
    }
    Ok(keys.iter().map(|key| found.get(key).cloned()).collect())
}

/// Reserves a key until the transaction ends, whether or not a record exists under it, so that
/// two writing calls reading the same key run their read-modify-write one after the other.
/// SQLite has one writer at a time already; PostgreSQL takes a transaction-level advisory lock
/// on a hash of the key (a rare collision only makes an unrelated call wait).
pub async fn reserve(tx: &mut Tx, owner: Owner<'_>, collection: &str, key: &str) -> Result<()> {
    if let Tx::Postgres(tx) = tx {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!(
                "plugin_records/{}/{}/{collection}/{key}",
                owner.company_id, owner.plugin
            ))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

pub async fn delete(tx: &mut Tx, owner: Owner<'_>, collection: &str, key: &str) -> Result<bool> {
    let deleted = on_conn!(tx, conn => {
        sqlx::query(
            "DELETE FROM plugin_records \
             WHERE company_id = $1 AND plugin = $2 AND collection = $3 AND key = $4",
        )
        .bind(owner.company_id)
        .bind(owner.plugin)
        .bind(collection)
        .bind(key)
        .execute(&mut *conn)
        .await?
        .rows_affected()
    });
    Ok(deleted > 0)
}

/// A range of keys: from `start` (inclusive) to `end` (exclusive), after `after`.
#[derive(Debug, Clone, Default)]
pub struct KeyRange {
    pub start: Option<String>,
    pub end: Option<String>,
    pub after: Option<String>,
    pub limit: u32,
}

pub async fn query(
    tx: &mut Tx,
    owner: Owner<'_>,
    collection: &str,
    range: &KeyRange,
) -> Result<Vec<(String, String)>> {
    // Absent bounds are bound as NULL and drop out of the condition, so one statement (and
    // one prepared plan) serves every shape of range.
    let sql = "SELECT key, value FROM plugin_records \
               WHERE company_id = $1 AND plugin = $2 AND collection = $3 \
               AND ($4 IS NULL OR key >= $4) AND ($5 IS NULL OR key < $5) AND ($6 IS NULL OR key > $6) \
               ORDER BY key LIMIT $7";
    let rows = on_conn!(tx, conn => {
        sqlx::query(sql)
            .bind(owner.company_id)
            .bind(owner.plugin)
            .bind(collection)
            .bind(range.start.as_deref())
            .bind(range.end.as_deref())
            .bind(range.after.as_deref())
            .bind(i64::from(range.limit))
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| Ok((row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?
    });
    Ok(rows)
}

/// Removes every record of a plugin in a company: the explicit purge after an uninstall.
pub async fn purge(tx: &mut Tx, owner: Owner<'_>) -> Result<u64> {
    let deleted = on_conn!(tx, conn => {
        sqlx::query("DELETE FROM plugin_records WHERE company_id = $1 AND plugin = $2")
            .bind(owner.company_id)
            .bind(owner.plugin)
            .execute(&mut *conn)
            .await?
            .rows_affected()
    });
    Ok(deleted)
}
