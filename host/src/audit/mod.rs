//! The audit trail: every change appends a record in the same transaction, each record's hash
//! covering its content and the previous record's hash, so that editing, deleting or reordering
//! stored records breaks the chain at a record `keel audit verify` names.

pub mod http;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::db::{Database, PackedRow, Param, Tx};
use crate::error::{Error, Result};
use crate::on_conn;

/// The hash before the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Records read per query while verifying or exporting; bounds memory for any chain length.
const RECORDS_PER_PAGE: i64 = 10_000;

/// Who makes a change: a user, a plugin acting for a user, or the host itself (neither).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    pub user_id: Option<i64>,
    pub plugin: Option<String>,
}

/// Where a change comes from, recorded with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub actor: Actor,
    pub request_id: Option<String>,
    pub idempotency_key: Option<String>,
}

impl Origin {
    /// A change made by the host itself, outside any request (bootstrap, migrations).
    pub fn system() -> Self {
        Self::default()
    }

    pub fn user(user_id: i64) -> Self {
        Self {
            actor: Actor {
                user_id: Some(user_id),
                plugin: None,
            },
            ..Self::default()
        }
    }
}

/// One change to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub company_id: Option<i64>,
    /// What happened, e.g. `ledger.entry.post`, `user.disable`, `security.login-failed`.
    pub action: String,
    pub object_type: String,
    pub object_id: String,
    /// Before/after values or the details of the event, as JSON text.
    pub change: String,
}

impl Event {
    pub fn new(
        company_id: Option<i64>,
        action: &str,
        object_type: &str,
        object_id: impl ToString,
        change: impl Serialize,
    ) -> Self {
        Self {
            company_id,
            action: action.to_owned(),
            object_type: object_type.to_owned(),
            object_id: object_id.to_string(),
            // Serializing plain data to a String cannot fail.
            change: serde_json::to_string(&change).unwrap_or_else(|_| "null".to_owned()),
        }
    }
}

/// A stored audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Record {
    pub seq: i64,
    /// RFC 3339 with microseconds, UTC.
    pub occurred_at: String,
    pub company_id: Option<i64>,
    pub actor_user_id: Option<i64>,
    pub actor_plugin: Option<String>,
    pub action: String,
    pub object_type: String,
    pub object_id: String,
    /// The change as JSON text, exactly as hashed.
    pub change: String,
    pub request_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

impl Record {
    /// SHA-256 over the canonical form of the record's content and the previous hash.
    pub fn compute_hash(&self) -> String {
        // A JSON array of the fields in this order, compact: serialized straight from a tuple.
        let canonical = (
            self.seq,
            &self.occurred_at,
            self.company_id,
            self.actor_user_id,
            &self.actor_plugin,
            &self.action,
            &self.object_type,
            &self.object_id,
            &self.change,
            &self.request_id,
            &self.idempotency_key,
            &self.prev_hash,
        );
        let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
        hex::encode(Sha256::digest(&bytes))
    }
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Appends the events, in order, to the chain, inside the caller's transaction: they commit or
/// roll back with the change they describe.
pub async fn append(tx: &mut Tx, origin: &Origin, events: &[Event]) -> anyhow::Result<()> {
    let items: Vec<(&Origin, Event)> = events.iter().map(|event| (origin, event.clone())).collect();
    append_many(tx, &items).await
}

/// The last record of the chain: its sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: String,
}

/// Like [`append`], for events of several origins (the requests of one commit group).
///
/// On SQLite the head this process committed last is used without reading it again. Should
/// another process have appended since, the first new sequence number is taken already and the
/// insert of the first record fails on the log's primary key, before any record is written and
/// without harm to the transaction (SQLite undoes only the failed statement): the head is then
/// read and the records chained again.
pub async fn append_many(tx: &mut Tx, events: &[(&Origin, Event)]) -> anyhow::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let occurred_at = timestamp(Utc::now());
    if let Some(head) = tx.known_chain_head() {
        let (writes, head) = record_writes(&head, chain(&head, &occurred_at, events));
        match crate::db::rows::write(tx, &writes).await {
            Ok(()) => {
                appended(tx, head, events.len());
                return Ok(());
            }
            Err(error) if SEQ_TAKEN.is_violated_by(&error) => tx.forget_chain_head(),
            Err(error) => return Err(error),
        }
    }
    let head = read_head(tx).await?;
    let (writes, head) = record_writes(&head, chain(&head, &occurred_at, events));
    crate::db::rows::write(tx, &writes).await?;
    appended(tx, head, events.len());
    Ok(())
}

/// The writes that append `events` after `head`, which the transaction has read
/// ([`read_head`]): the records, hashed in order, and the head's move. They are built apart
/// from the transaction (on another thread while other rows are written, say); once they are
/// written, pass the new head they return to [`appended`].
pub fn append_writes(
    head: &ChainHead,
    events: &[(&Origin, Event)],
) -> (Vec<crate::db::rows::Write<'static>>, ChainHead) {
    record_writes(head, chain(head, &timestamp(Utc::now()), events))
}

/// Notes that `count` records were written up to `head` by [`append_writes`]'s writes.
pub fn appended(tx: &mut Tx, head: ChainHead, count: usize) {
    tx.chain_head_advanced(head);
    metrics::counter!("keel_audit_records_total").increment(count as u64);
}

/// The audit log's primary key: a sequence number someone else appended first.
const SEQ_TAKEN: crate::db::UniqueConstraint = crate::db::UniqueConstraint {
    postgres_name: "audit_log_pkey",
    sqlite_columns: "audit_log.seq",
};

/// Reads the head, locking it: this serializes appends from concurrent transactions (and
/// processes). On SQLite the transaction's write lock does that.
pub async fn read_head(tx: &mut Tx) -> anyhow::Result<ChainHead> {
    let lock = tx.lock_for_update();
    Ok(on_conn!(tx, conn => {
        let row = sqlx::query(&format!("SELECT last_seq, last_hash FROM audit_chain_head WHERE id = 1{lock}"))
            .fetch_one(&mut *conn)
            .await?;
        use crate::db::Row as _;
        ChainHead { seq: row.int("last_seq")?, hash: row.text("last_hash")? }
    }))
}

/// The records of `events`, hashed in order after `head`.
fn chain(head: &ChainHead, occurred_at: &str, events: &[(&Origin, Event)]) -> Vec<Record> {
    let mut prev_hash = head.hash.clone();
    let mut records = Vec::with_capacity(events.len());
    for (seq, (origin, event)) in (head.seq + 1..).zip(events) {
        let mut record = Record {
            seq,
            occurred_at: occurred_at.to_owned(),
            company_id: event.company_id,
            actor_user_id: origin.actor.user_id,
            actor_plugin: origin.actor.plugin.clone(),
            action: event.action.clone(),
            object_type: event.object_type.clone(),
            object_id: event.object_id.clone(),
            change: event.change.clone(),
            request_id: origin.request_id.clone(),
            idempotency_key: origin.idempotency_key.clone(),
            prev_hash,
            hash: String::new(),
        };
        record.hash = record.compute_hash();
        prev_hash = record.hash.clone();
        records.push(record);
    }
    records
}

/// The writes that insert `records`, chained in order after `head`, and move the head to the
/// last of them; with that new head. No records, no writes.
fn record_writes(
    head: &ChainHead,
    records: Vec<Record>,
) -> (Vec<crate::db::rows::Write<'static>>, ChainHead) {
    use crate::db::rows::{Value, Write};
    let Some(last) = records.last() else {
        return (Vec::new(), head.clone());
    };
    let head = ChainHead {
        seq: last.seq,
        hash: last.hash.clone(),
    };
    let mut values = Vec::with_capacity(records.len() * 13);
    for r in records {
        values.extend([
            Value::Int(Some(r.seq)),
            Value::OwnedText(Some(r.occurred_at)),
            Value::Int(r.company_id),
            Value::Int(r.actor_user_id),
            Value::OwnedText(r.actor_plugin),
            Value::OwnedText(Some(r.action)),
            Value::OwnedText(Some(r.object_type)),
            Value::OwnedText(Some(r.object_id)),
            Value::OwnedText(Some(r.change)),
            Value::OwnedText(r.request_id),
            Value::OwnedText(r.idempotency_key),
            Value::OwnedText(Some(r.prev_hash)),
            Value::OwnedText(Some(r.hash)),
        ]);
    }
    let writes = vec![
        Write::insert(
            "INSERT INTO audit_log (seq, occurred_at, company_id, actor_user_id, actor_plugin, action, \
             object_type, object_id, change, request_id, idempotency_key, prev_hash, hash)",
            13,
            values,
        ),
        Write::Once {
            sql: "UPDATE audit_chain_head SET last_seq = $1, last_hash = $2 WHERE id = 1",
            values: vec![
                Value::Int(Some(head.seq)),
                Value::OwnedText(Some(head.hash.clone())),
            ],
        },
    ];
    (writes, head)
}

/// Records a security event (a failed login, a denied permission) in its own transaction: the
/// request it belongs to fails, but the attempt stays on record.
pub async fn record_security_event(db: &Database, origin: &Origin, event: Event) {
    let outcome = async {
        let mut tx = db.begin_write().await?;
        append(&mut tx, origin, &[event]).await?;
        tx.commit().await
    }
    .await;
    if let Err(error) = outcome {
        tracing::error!(
            error = format!("{error:#}"),
            "recording a security event failed"
        );
    }
}

const RECORD_COLUMNS: [&str; 13] = [
    "seq",
    "occurred_at",
    "company_id",
    "actor_user_id",
    "actor_plugin",
    "action",
    "object_type",
    "object_id",
    "change",
    "request_id",
    "idempotency_key",
    "prev_hash",
    "hash",
];

fn record_from(row: &PackedRow) -> anyhow::Result<Record> {
    Ok(Record {
        seq: row.int(0)?,
        occurred_at: row.text(1)?,
        company_id: row.opt_int(2)?,
        actor_user_id: row.opt_int(3)?,
        actor_plugin: row.opt_text(4)?,
        action: row.text(5)?,
        object_type: row.text(6)?,
        object_id: row.text(7)?,
        change: row.text(8)?,
        request_id: row.opt_text(9)?,
        idempotency_key: row.opt_text(10)?,
        prev_hash: row.text(11)?,
        hash: row.text(12)?,
    })
}

/// Records with `seq` greater than `after`, in order, at most `limit`.
async fn page(tx: &mut Tx, after: i64, limit: i64) -> anyhow::Result<Vec<Record>> {
    let mut records = tx
        .fetch_packed(
            &format!(
                "SELECT {} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                RECORD_COLUMNS.join(", ")
            ),
            &RECORD_COLUMNS,
            &[Param::Int(Some(after)), Param::Int(Some(limit))],
        )
        .await?
        .iter()
        .map(record_from)
        .collect::<anyhow::Result<Vec<_>>>()?;
    records.sort_by_key(|r| r.seq);
    Ok(records)
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub records: u64,
    /// The first record that does not verify, and why; `None` when the chain is intact.
    pub first_broken: Option<Broken>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    pub seq: i64,
    pub reason: String,
}

/// Recomputes the chain from the first record, a page at a time, and checks it against the
/// head: an edited record fails its own hash, a deleted one leaves a gap in the sequence, a
/// reordered one breaks the link to its predecessor, and a cut-off tail disagrees with the head.
pub async fn verify(db: &Database) -> anyhow::Result<Verification> {
    let mut tx = db.begin_read().await?;
    let mut expected_seq = 1;
    let mut prev_hash = GENESIS_HASH.to_owned();
    let mut count = 0_u64;
    let broken = |records: u64, seq: i64, reason: String| {
        Ok(Verification {
            records,
            first_broken: Some(Broken { seq, reason }),
        })
    };
    loop {
        let records = page(&mut tx, expected_seq - 1, RECORDS_PER_PAGE).await?;
        if records.is_empty() {
            break;
        }
        for record in &records {
            if record.seq != expected_seq {
                return broken(
                    count,
                    expected_seq,
                    format!(
                        "record {expected_seq} is missing; the next stored record is {}",
                        record.seq
                    ),
                );
            }
            if record.prev_hash != prev_hash {
                return broken(
                    count,
                    record.seq,
                    "it does not link to the record before it (records were deleted, inserted or reordered)".into(),
                );
            }
            if record.compute_hash() != record.hash {
                return broken(
                    count,
                    record.seq,
                    "its content does not match its hash (the record was edited)".into(),
                );
            }
            prev_hash = record.hash.clone();
            expected_seq += 1;
            count += 1;
        }
    }
    let (head_seq, head_hash): (i64, String) = on_conn!(&mut tx, conn => {
        use crate::db::Row as _;
        let row = sqlx::query("SELECT last_seq, last_hash FROM audit_chain_head WHERE id = 1").fetch_one(&mut *conn).await?;
        (row.int("last_seq")?, row.text("last_hash")?)
    });
    tx.commit().await?;
    let last_seq = expected_seq - 1;
    if head_seq != last_seq || head_hash != prev_hash {
        return broken(
            count,
            last_seq + 1,
            format!(
                "the chain ends at record {last_seq} but its head says {head_seq}: records at the end were removed"
            ),
        );
    }
    Ok(Verification {
        records: count,
        first_broken: None,
    })
}

/// Writes every record, in order, as JSON Lines.
pub async fn export(db: &Database, out: &mut impl std::io::Write) -> anyhow::Result<u64> {
    let mut tx = db.begin_read().await?;
    let mut after = 0;
    let mut count = 0;
    loop {
        let records = page(&mut tx, after, RECORDS_PER_PAGE).await?;
        let Some(last) = records.last() else { break };
        after = last.seq;
        for record in &records {
            serde_json::to_writer(&mut *out, record)?;
            out.write_all(b"\n")?;
            count += 1;
        }
    }
    tx.commit().await?;
    Ok(count)
}

/// Filters for listing the audit trail.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Filter {
    pub object_type: Option<String>,
    pub object_id: Option<String>,
    /// User id of the actor.
    pub actor: Option<i64>,
    pub action: Option<String>,
    /// Records at or after this time (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Records before this time (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// Cursor: the `next` value of the previous page.
    pub after: Option<i64>,
    /// Page size, 1–500 (default 100).
    pub limit: Option<u32>,
}

/// Records matching the filter, oldest first, a page at a time. Company-scoped records of
/// other companies are left out; records without a company (logins) are shown to everyone who
/// may read the audit trail.
pub async fn list(
    db: &Database,
    company_id: i64,
    filter: &Filter,
    limit: i64,
) -> Result<Vec<Record>> {
    // Only the filters given become conditions: `$n IS NULL OR column = $n` would keep the
    // planner from the indexes by object, actor and action, and scan the whole trail.
    let mut params = vec![
        Param::Int(Some(filter.after.unwrap_or(0))),
        Param::Int(Some(company_id)),
    ];
    let mut conditions = String::new();
    let mut filter_by = |condition: &str, value: Option<Param>| {
        if let Some(value) = value {
            params.push(value);
            conditions.push_str(&format!(" AND {condition} ${}", params.len()));
        }
    };
    let text = |value: &Option<String>| value.clone().map(|v| Param::Text(Some(v)));
    let moment = |value: Option<_>| value.map(|v| Param::Text(Some(timestamp(v))));
    filter_by("object_type =", text(&filter.object_type));
    filter_by("object_id =", text(&filter.object_id));
    filter_by("actor_user_id =", filter.actor.map(|v| Param::Int(Some(v))));
    filter_by("action =", text(&filter.action));
    filter_by("occurred_at >=", moment(filter.from));
    filter_by("occurred_at <", moment(filter.to));
    params.push(Param::Int(Some(limit)));
    let sql = format!(
        "SELECT {} FROM audit_log WHERE seq > $1 AND (company_id IS NULL OR company_id = $2){conditions} \
         ORDER BY seq LIMIT ${}",
        RECORD_COLUMNS.join(", "),
        params.len()
    );
    let mut tx = db.begin_read().await?;
    let mut records = tx
        .fetch_packed(&sql, &RECORD_COLUMNS, &params)
        .await?
        .iter()
        .map(record_from)
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(Error::Unexpected)?;
    tx.commit().await?;
    records.sort_by_key(|r| r.seq);
    Ok(records)
}
