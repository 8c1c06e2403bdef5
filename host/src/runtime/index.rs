//! Indexes over plugin records. Each declared index keeps one row per record in
//! `plugin_index_entries` whose `index_key` encodes the record's values of the index's fields
//! so that byte order (SQLite's BINARY, PostgreSQL's "C" collation) is the order of the
//! values: null < false < true < numbers < strings < arrays and objects. Equality on leading
//! fields and a range on the next one become one range scan of the primary key.

use serde_json::Value;
use sqlx::Row as _;

use super::declarations::Index;
use super::storage::Owner;
use crate::db::Tx;
use crate::error::{Error, Result};
use crate::on_conn;

/// Ends every encoded value; below every byte a value's encoding contains.
const TERMINATOR: char = '\u{1}';
/// Above every type tag: bounds "anything after this prefix".
const AFTER_ALL_TAGS: char = '9';

/// The value at a dotted path of a record; null when absent.
fn field<'a>(record: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .try_fold(record, |value, part| value.get(part))
        .unwrap_or(&Value::Null)
}

/// Appends one value's order-preserving encoding.
fn encode_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push('0'),
        Value::Bool(false) => out.push('1'),
        Value::Bool(true) => out.push('2'),
        Value::Number(n) => {
            out.push('3');
            let x = n.as_f64().unwrap_or(0.0);
            // Flip the sign bit of positives and every bit of negatives: unsigned order of
            // the bits is then numeric order.
            let bits = x.to_bits();
            let ordered = if x.is_sign_negative() {
                !bits
            } else {
                bits | (1 << 63)
            };
            out.push_str(&format!("{ordered:016x}"));
        }
        Value::String(text) => {
            out.push('4');
            escape(text, out);
        }
        other => {
            out.push('5');
            escape(&other.to_string(), out);
        }
    }
    out.push(TERMINATOR);
}

/// Bytes 0, 1 and 2 become two-byte escapes starting with 2, keeping their order, so that
/// the terminator (1) sorts below everything inside a value and PostgreSQL never sees a NUL.
fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\u{0}' => out.push_str("\u{2}\u{2}"),
            '\u{1}' => out.push_str("\u{2}\u{3}"),
            '\u{2}' => out.push_str("\u{2}\u{4}"),
            c => out.push(c),
        }
    }
}

/// The key of a record in an index.
pub fn key_of(index: &Index, record: &Value) -> String {
    let mut key = String::new();
    for path in &index.fields {
        encode_value(field(record, path), &mut key);
    }
    key
}

/// A query of one index, with values already parsed.
#[derive(Debug, Clone)]
pub struct IndexQuery {
    pub equals: Vec<Value>,
    pub from: Option<Value>,
    pub to: Option<Value>,
    pub descending: bool,
    /// The last (index key, record key) of the previous page.
    pub after: Option<(String, String)>,
    pub limit: u32,
}

impl IndexQuery {
    /// The range of index keys it covers: [low, high).
    fn bounds(&self, index: &Index) -> Result<(String, String)> {
        let bounded = usize::from(self.from.is_some() || self.to.is_some());
        if self.equals.len() + bounded > index.fields.len() {
            return Err(Error::invalid(
                "equals",
                format!(
                    "index {} has {} field(s): give at most that many values, counting a range",
                    index.name,
                    index.fields.len()
                ),
            ));
        }
        let mut prefix = String::new();
        for value in &self.equals {
            encode_value(value, &mut prefix);
        }
        let low = match &self.from {
            Some(from) => {
                let mut low = prefix.clone();
                encode_value(from, &mut low);
                low
            }
            None => prefix.clone(),
        };
        let high = match &self.to {
            Some(to) => {
                let mut high = prefix.clone();
                encode_value(to, &mut high);
                high
            }
            None => format!("{prefix}{AFTER_ALL_TAGS}"),
        };
        Ok((low, high))
    }
}

/// Encodes a page's position for the plugin to pass back.
pub fn cursor(index_key: &str, record_key: &str) -> String {
    use base64::Engine as _;
    let text = serde_json::to_string(&(index_key, record_key)).expect("strings serialize");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

pub fn parse_cursor(cursor: &str) -> Result<(String, String)> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| Error::invalid("after", "is not the `next` of an earlier page"))
}

/// Replaces the index entries of one record (none when `record` is None: a delete).
pub async fn reindex_record(
    tx: &mut Tx,
    owner: Owner<'_>,
    collection: &str,
    indexes: &[Index],
    key: &str,
    record: Option<&Value>,
) -> Result<()> {
    if indexes.is_empty() {
        return Ok(());
    }
    delete_entries(tx, owner, collection, Entries::OfRecord(key)).await?;
    if let Some(record) = record {
        insert_entries(tx, owner, collection, indexes, record, key).await?;
    }
    Ok(())
}

/// Inserts the record's entry of each index in one statement: a write to a collection with
/// several indexes costs two statements (delete, insert), not one per index.
async fn insert_entries(
    tx: &mut Tx,
    owner: Owner<'_>,
    collection: &str,
    indexes: &[Index],
    record: &Value,
    key: &str,
) -> Result<()> {
    // $1..$4 are shared; each index adds its name and key.
    let rows: Vec<String> = (0..indexes.len())
        .map(|i| format!("($1, $2, $3, ${}, ${}, $4)", 5 + 2 * i, 6 + 2 * i))
        .collect();
    let sql = format!(
        "INSERT INTO plugin_index_entries \
         (company_id, plugin, collection, name, index_key, record_key) VALUES {}",
        rows.join(", ")
    );
    on_conn!(tx, conn => {
        let mut query = sqlx::query(&sql)
            .bind(owner.company_id)
            .bind(owner.plugin)
            .bind(collection)
            .bind(key);
        for index in indexes {
            query = query.bind(&index.name).bind(key_of(index, record));
        }
        query.execute(&mut *conn).await?;
    });
    Ok(())
}

/// Which entries of a collection to remove.
enum Entries<'a> {
    /// Every index's entry of one record.
    OfRecord(&'a str),
    /// Every entry of one index.
    OfIndex(&'a str),
}

async fn delete_entries(
    tx: &mut Tx,
    owner: Owner<'_>,
    collection: &str,
    entries: Entries<'_>,
) -> Result<()> {
    let (column, value) = match entries {
        Entries::OfRecord(key) => ("record_key", key),
        Entries::OfIndex(name) => ("name", name),
    };
    let sql = format!(
        "DELETE FROM plugin_index_entries \
         WHERE company_id = $1 AND plugin = $2 AND collection = $3 AND {column} = $4"
    );
    on_conn!(tx, conn => {
        sqlx::query(&sql)
            .bind(owner.company_id)
            .bind(owner.plugin)
            .bind(collection)
            .bind(value)
            .execute(&mut *conn)
            .await?;
    });
    Ok(())
}

/// One page of records in index order: (index key, record key, value).
pub async fn find(
    tx: &mut Tx,
    owner: Owner<'_>,
    collection: &str,
    index: &Index,
    query: &IndexQuery,
) -> Result<Vec<(String, String, String)>> {
    let (low, high) = query.bounds(index)?;
    let (after_index, after_record) = match &query.after {
        Some((i, r)) => (Some(i.as_str()), Some(r.as_str())),
        None => (None, None),
    };
    // One statement per direction; absent cursors bind NULL and drop out of the condition.
    let sql = if query.descending {
        "SELECT e.index_key, e.record_key, r.value FROM plugin_index_entries e \
         JOIN plugin_records r ON r.company_id = e.company_id AND r.plugin = e.plugin \
              AND r.collection = e.collection AND r.key = e.record_key \
         WHERE e.company_id = $1 AND e.plugin = $2 AND e.collection = $3 AND e.name = $4 \
           AND e.index_key >= $5 AND e.index_key < $6 \
           AND ($7 IS NULL OR e.index_key < $7 OR (e.index_key = $7 AND e.record_key < $8)) \
         ORDER BY e.index_key DESC, e.record_key DESC LIMIT $9"
    } else {
        "SELECT e.index_key, e.record_key, r.value FROM plugin_index_entries e \
         JOIN plugin_records r ON r.company_id = e.company_id AND r.plugin = e.plugin \
              AND r.collection = e.collection AND r.key = e.record_key \
         WHERE e.company_id = $1 AND e.plugin = $2 AND e.collection = $3 AND e.name = $4 \
           AND e.index_key >= $5 AND e.index_key < $6 \
           AND ($7 IS NULL OR e.index_key > $7 OR (e.index_key = $7 AND e.record_key > $8)) \
         ORDER BY e.index_key, e.record_key LIMIT $9"
    };
    let rows = on_conn!(tx, conn => {
        sqlx::query(sql)
            .bind(owner.company_id)
            .bind(owner.plugin)
            .bind(collection)
            .bind(&index.name)
            .bind(&low)
            .bind(&high)
            .bind(after_index)
            .bind(after_record)
            .bind(i64::from(query.limit))
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?
    });
    Ok(rows)
}

/// Brings a plugin's indexes in line with its declarations: drops the entries of indexes no
/// longer declared or declared differently, and builds the new and changed ones from the
/// records. Runs in the transaction that installs or upgrades the plugin.
pub async fn sync(
    tx: &mut Tx,
    owner: Owner<'_>,
    collections: &[super::declarations::Collection],
) -> Result<()> {
    let in_force: Vec<(String, String, String)> = on_conn!(tx, conn => {
        sqlx::query(
            "SELECT collection, name, fields FROM plugin_indexes \
             WHERE company_id = $1 AND plugin = $2",
        )
        .bind(owner.company_id)
        .bind(owner.plugin)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?
    });
    let declared: Vec<(&str, &Index, String)> = collections
        .iter()
        .flat_map(|c| {
            c.indexes.iter().map(move |index| {
                let fields = serde_json::to_string(&index.fields).expect("strings serialize");
                (c.name.as_str(), index, fields)
            })
        })
        .collect();
    for (collection, name, fields) in &in_force {
        let kept = declared
            .iter()
            .any(|(c, index, f)| c == collection && &index.name == name && f == fields);
        if !kept {
            delete_entries(tx, owner, collection, Entries::OfIndex(name)).await?;
            on_conn!(tx, conn => {
                sqlx::query(
                    "DELETE FROM plugin_indexes \
                     WHERE company_id = $1 AND plugin = $2 AND collection = $3 AND name = $4",
                )
                .bind(owner.company_id)
                .bind(owner.plugin)
                .bind(collection)
                .bind(name)
                .execute(&mut *conn)
                .await?;
            });
        }
    }
    for (collection, index, fields) in &declared {
        let current = in_force
            .iter()
            .any(|(c, n, f)| c == collection && n == &index.name && f == fields);
        if !current {
            build(tx, owner, collection, index, fields).await?;
        }
    }
    Ok(())
}

/// Records read per step while building an index.
const BUILD_BATCH: i64 = 1_000;

async fn build(
    tx: &mut Tx,
    owner: Owner<'_>,
    collection: &str,
    index: &Index,
    fields: &str,
) -> Result<()> {
    // A migration that ran before this may have written entries of the index already.
    delete_entries(tx, owner, collection, Entries::OfIndex(&index.name)).await?;
    let mut after = String::new();
    loop {
        let rows: Vec<(String, String)> = on_conn!(tx, conn => {
            sqlx::query(
                "SELECT key, value FROM plugin_records \
                 WHERE company_id = $1 AND plugin = $2 AND collection = $3 AND key > $4 \
                 ORDER BY key LIMIT $5",
            )
            .bind(owner.company_id)
            .bind(owner.plugin)
            .bind(collection)
            .bind(&after)
            .bind(BUILD_BATCH)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        let Some((last, _)) = rows.last() else { break };
        after = last.clone();
        for (key, value) in &rows {
            let record: Value = serde_json::from_str(value).unwrap_or(Value::Null);
            insert_entries(
                tx,
                owner,
                collection,
                std::slice::from_ref(index),
                &record,
                key,
            )
            .await?;
        }
    }
    on_conn!(tx, conn => {
        sqlx::query(
            "INSERT INTO plugin_indexes (company_id, plugin, collection, name, fields) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(owner.company_id)
        .bind(owner.plugin)
        .bind(collection)
        .bind(&index.name)
        .bind(fields)
        .execute(&mut *conn)
        .await?;
    });
    Ok(())
}

/// Removes every index of a plugin: part of the purge.
pub async fn purge(tx: &mut Tx, owner: Owner<'_>) -> Result<()> {
    on_conn!(tx, conn => {
        for table in ["plugin_index_entries", "plugin_indexes"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE company_id = $1 AND plugin = $2"))
                .bind(owner.company_id)
                .bind(owner.plugin)
                .execute(&mut *conn)
                .await?;
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(values: &[Value]) -> String {
        let mut out = String::new();
        for v in values {
            encode_value(v, &mut out);
        }
        out
    }

    #[test]
    fn byte_order_is_value_order() {
        let ordered = [
            json!(null),
            json!(false),
            json!(true),
            json!(-1e9),
            json!(-2.5),
            json!(-0.0),
            json!(0),
            json!(1),
            json!(1.5),
            json!(10),
            json!(1e12),
            json!(""),
            json!("\u{0}"),
            json!("a"),
            json!("a\u{1}"),
            json!("a\u{2}"),
            json!("ab"),
            json!("b"),
            json!("é"),
            json!([1]),
        ];
        for pair in ordered.windows(2) {
            let (a, b) = (key(&pair[..1]), key(&pair[1..]));
            assert!(a.as_bytes() <= b.as_bytes(), "{} !<= {}", pair[0], pair[1]);
        }
        // A shorter value sorts before its extensions even with fields after it.
        assert!(key(&[json!("a"), json!("z")]) < key(&[json!("ab"), json!("a")]));
        assert!(!key(&[json!("a\u{0}")]).contains('\u{0}'));
    }

    #[test]
    fn bounds_cover_equality_and_ranges() {
        let index = Index {
            name: "by-status-date".to_owned(),
            fields: vec!["status".to_owned(), "date".to_owned()],
        };
        let record = json!({ "status": "open", "date": "2026-03-01" });
        let entry = key_of(&index, &record);
        let query = |equals: Vec<Value>, from: Option<Value>, to: Option<Value>| IndexQuery {
            equals,
            from,
            to,
            descending: false,
            after: None,
            limit: 10,
        };
        let within = |q: IndexQuery| {
            let (low, high) = q.bounds(&index).expect("valid");
            low <= entry && entry < high
        };
        assert!(within(query(vec![json!("open")], None, None)));
        assert!(!within(query(vec![json!("closed")], None, None)));
        assert!(within(query(
            vec![json!("open")],
            Some(json!("2026-03-01")),
            Some(json!("2026-04-01"))
        )));
        assert!(!within(query(
            vec![json!("open")],
            Some(json!("2026-01-01")),
            Some(json!("2026-03-01"))
        )));
        assert!(within(query(
            vec![json!("open"), json!("2026-03-01")],
            None,
            None
        )));
        assert!(within(query(vec![], Some(json!("o")), Some(json!("p")))));
        assert!(
            query(vec![json!(1), json!(2), json!(3)], None, None)
                .bounds(&index)
                .is_err()
        );
        assert_eq!(field(&json!({"a": {"b": 3}}), "a.b"), &json!(3));
        assert_eq!(field(&json!({"a": 1}), "a.b"), &Value::Null);
    }
}
