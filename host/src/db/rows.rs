//! Many rows written at once: a commit group's ledger entries, lines and balances, and their
//! audit records.
//!
//! Writes on SQLite go straight through SQLite's C API on the writing connection, borrowed from
//! the driver for the duration: one single-row statement per table, kept prepared from one
//! transaction to the next, bound and stepped for each row. Through the driver a multi-row
//! statement is thousands of parameters boxed, copied, cleared and bound again (for a large
//! import that was a fifth of the writer's time), and each statement is a round trip to the
//! driver's thread (for a commit group of a few entries, most of the writer's time). On
//! PostgreSQL the rows go as multi-row statements, each bound while the one before it runs.
//!
//! A large write can also be produced while it is written ([`write_produced`]): the rows of the
//! next table are built on a second thread while SQLite inserts those of the one before, so
//! the writing thread, which holds the database's only write lock, does little but write.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

use super::{Backend, Hold, SqlDate, SqliteTx, Tx};
use crate::on_conn;

/// A value of a row, typed the way both backends store it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Int(Option<i64>),
    Text(Option<&'a str>),
    /// Text built for this write (a number formatted, a record hashed).
    OwnedText(Option<String>),
    /// DATE on PostgreSQL, `YYYY-MM-DD` on SQLite.
    Date(NaiveDate),
    /// TIMESTAMPTZ on PostgreSQL, RFC 3339 text on SQLite (as the driver writes it).
    Time(DateTime<Utc>),
    /// BOOLEAN on PostgreSQL, 0 or 1 on SQLite.
    Bool(bool),
    /// JSONB on PostgreSQL, JSON text on SQLite.
    Json(Option<serde_json::Value>),
}

/// A statement and the values of its rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Write<'a> {
    /// `insert` (`INSERT INTO table (columns…)`) `VALUES` the rows, then `tail` (an
    /// `ON CONFLICT` clause, or empty). `values` holds `columns` values per row, row after row.
    Rows {
        insert: String,
        columns: usize,
        tail: String,
        values: Vec<Value<'a>>,
    },
    /// One statement with `$1`-style parameters.
    Once {
        sql: &'a str,
        values: Vec<Value<'a>>,
    },
}

/// Rows in one call from which a write is large (an import). A large write is built on a
/// second thread while it is written, and the runtime moves its other tasks off the writing
/// thread first ([`Hold::Long`]). A smaller one, up to the commit groups of 64 concurrent single
/// entries (about a millisecond of SQLite's work), is built first, as starting the thread
/// would cost more, and runs as a short step of its task: with a limit of 256 rows the larger
/// groups of 32 clients went to `block_in_place` and measured no better than before.
const LARGE_WRITE_ROWS_MIN: usize = 1_000;

/// How long writing `rows` rows directly holds its thread.
fn hold_for(rows: usize) -> Hold {
    if rows >= LARGE_WRITE_ROWS_MIN {
        Hold::Long
    } else {
        Hold::Brief
    }
}

impl<'a> Write<'a> {
    /// Plain inserts: `insert` (`INSERT INTO table (columns…)`) with `columns` values per row.
    pub fn insert(insert: impl Into<String>, columns: usize, values: Vec<Value<'a>>) -> Self {
        Self::Rows {
            insert: insert.into(),
            columns,
            tail: String::new(),
            values,
        }
    }

    fn rows(&self) -> usize {
        match self {
            Self::Rows {
                columns, values, ..
            } => values.len().checked_div(*columns).unwrap_or(0),
            Self::Once { .. } => 1,
        }
    }
}

/// Whether writes in `tx` go straight through SQLite's C API: those on the writing connection
/// (see the module's documentation). The host writes in no other transaction on SQLite; were
/// it to, the driver would do.
fn is_direct(tx: &SqliteTx) -> bool {
    tx.is_writing()
}

/// Whether [`write_produced`] builds `rows` rows written in `tx` on a second thread while it
/// writes them.
pub fn is_produced_alongside(tx: &Tx, rows: usize) -> bool {
    matches!(tx, Tx::Sqlite(tx) if produced_alongside(tx, rows))
}

fn produced_alongside(tx: &SqliteTx, rows: usize) -> bool {
    rows >= LARGE_WRITE_ROWS_MIN && is_direct(tx)
}

/// Runs `writes` in order in the transaction. A failing write leaves the transaction usable on
/// SQLite: SQLite undoes the failing statement, but the rows written before it stay (written
/// directly, each row is a statement of its own), so the caller rolls back unless it knows
/// that the failure comes first (as with a taken audit sequence number). On PostgreSQL the
/// transaction is aborted.
pub async fn write(tx: &mut Tx, writes: &[Write<'_>]) -> anyhow::Result<()> {
    let rows: usize = writes.iter().map(Write::rows).sum();
    match tx {
        Tx::Sqlite(tx) if is_direct(tx) => {
            tx.on_direct_connection(hold_for(rows), |conn| sqlite_write(conn, writes))
                .await
        }
        _ => driver_write(tx, writes).await,
    }
}

/// Runs, in order, the writes `produce` hands to its argument, and returns what `produce`
/// returns. `rows` is about how many rows they hold: when they are produced alongside
/// ([`is_produced_alongside`]), `produce` runs on a thread of its own and each write runs as
/// soon as it is handed over, while the next is being built. Otherwise `produce` runs first and
/// its writes then go as [`write`] sends them. A failing write fails the whole call; the
/// transaction is then as [`write`] leaves it.
pub async fn write_produced<'a, T, P>(tx: &mut Tx, rows: usize, produce: P) -> anyhow::Result<T>
where
    T: Send,
    P: FnOnce(&mut dyn FnMut(Write<'a>)) -> T + Send,
{
    match tx {
        Tx::Sqlite(sqlite) if produced_alongside(sqlite, rows) => {
            sqlite
                .on_direct_connection(Hold::Long, |conn| {
                    std::thread::scope(|scope| {
                        let (sender, receiver) = std::sync::mpsc::channel();
                        let producer = scope.spawn(move || {
                            // A write the consumer no longer takes (it failed) is dropped.
                            produce(&mut |write| drop(sender.send(write)))
                        });
                        let written = receiver
                            .iter()
                            .try_for_each(|write| sqlite_write(conn, std::slice::from_ref(&write)));
                        drop(receiver);
                        let produced = producer
                            .join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                        written.map(|()| produced)
                    })
                })
                .await
        }
        _ => {
            let mut writes = Vec::new();
            let produced = produce(&mut |write| writes.push(write));
            write(tx, &writes).await?;
            Ok(produced)
        }
    }
}

fn sqlite_write(conn: &rusqlite::Connection, writes: &[Write<'_>]) -> anyhow::Result<()> {
    for write in writes {
        let (sql, columns, values) = match write {
            Write::Rows {
                insert,
                columns,
                tail,
                values,
            } => (
                format!(
                    "{insert} VALUES {} {tail}",
                    Backend::Sqlite.values_list(1, *columns)
                ),
                *columns,
                values,
            ),
            Write::Once { sql, values } => ((*sql).to_owned(), values.len(), values),
        };
        if columns == 0 || values.is_empty() {
            continue;
        }
        let mut statement = conn.prepare_cached(&sql)?;
        for row in values.chunks(columns) {
            for (index, value) in row.iter().enumerate() {
                statement.raw_bind_parameter(index + 1, value)?;
            }
            statement.raw_execute()?;
        }
    }
    Ok(())
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value as Owned, ValueRef};
        Ok(match self {
            Self::Int(Some(value)) => ToSqlOutput::Owned(Owned::Integer(*value)),
            Self::Text(Some(text)) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
            Self::OwnedText(Some(text)) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
            Self::Date(date) => ToSqlOutput::Owned(Owned::Text(SqlDate(*date).text())),
            Self::Time(at) => ToSqlOutput::Owned(Owned::Text(
                at.to_rfc3339_opts(SecondsFormat::AutoSi, false),
            )),
            Self::Bool(flag) => ToSqlOutput::Owned(Owned::Integer(i64::from(*flag))),
            Self::Json(Some(json)) => ToSqlOutput::Owned(Owned::Text(json.to_string())),
            Self::Int(None) | Self::Text(None) | Self::OwnedText(None) | Self::Json(None) => {
                ToSqlOutput::Owned(Owned::Null)
            }
        })
    }
}

/// Writes through the driver: each `Rows` as multi-row statements, a `Once` on its own (on
/// SQLite, which runs several statements of one query in one call, in the same round trip as
/// the statement before it).
async fn driver_write(tx: &mut Tx, writes: &[Write<'_>]) -> anyhow::Result<()> {
    let backend = tx.backend();
    // The statements' texts first, so that the queries built from them can borrow them.
    let mut statements: Vec<(Vec<&[Value<'_>]>, String)> = Vec::new();
    for write in writes {
        match write {
            Write::Rows {
                insert,
                columns,
                tail,
                values,
            } => {
                if *columns == 0 {
                    continue;
                }
                for chunk in values.chunks(super::ROWS_PER_STATEMENT_MAX * columns) {
                    let sql = format!(
                        "{insert} VALUES {} {tail}",
                        backend.values_list(chunk.len() / columns, *columns)
                    );
                    statements.push((vec![chunk], sql));
                }
            }
            Write::Once { sql, values } => match statements.last_mut() {
                Some((bound, text)) if backend == Backend::Sqlite => {
                    text.push_str("; ");
                    text.push_str(&anonymous_parameters(sql));
                    bound.push(values);
                }
                _ => statements.push((vec![values], (*sql).to_owned())),
            },
        }
    }
    on_conn!(tx, conn => {
        let driver = driver_of(&*conn);
        let queries = statements.iter().map(|(bound, sql)| {
            let mut query = query_for(driver, sql);
            for value in bound.iter().copied().flatten() {
                query = match value {
                    Value::Int(value) => query.bind(*value),
                    Value::Text(value) => query.bind(*value),
                    Value::OwnedText(value) => query.bind(value.as_deref()),
                    Value::Date(date) => query.bind(SqlDate(*date)),
                    Value::Time(at) => query.bind(*at),
                    Value::Bool(flag) => query.bind(*flag),
                    Value::Json(json) => query.bind(json.as_ref().map(sqlx::types::Json)),
                };
            }
            query
        });
        execute_overlapped(conn, queries).await?;
    });
    Ok(())
}

/// `$1`, `$2` … as `?`: in a query of several statements SQLite numbers `$n` from the first.
fn anonymous_parameters(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// Executes statements one after another on `conn`, binding each while the one before it
/// runs. The driver executes on its own thread (SQLite) or on the server (PostgreSQL), so
/// a long run of large inserts keeps the database busy instead of waiting on the binding.
async fn execute_overlapped<'q, DB, I>(
    conn: &mut DB::Connection,
    mut statements: I,
) -> anyhow::Result<()>
where
    DB: sqlx::Database,
    I: Iterator<Item = sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>>,
    <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let mut next = statements.next();
    while let Some(statement) = next {
        // `join` polls the execution first: its first poll hands the statement to the driver,
        // and the next one is bound while it runs.
        let (executed, following) =
            futures::future::join(statement.execute(&mut *conn), async { statements.next() }).await;
        executed?;
        next = following;
    }
    Ok(())
}

/// The driver of `conn`, to build queries for it before it is borrowed to run them.
fn driver_of<C: sqlx::Connection>(_conn: &C) -> std::marker::PhantomData<C::Database> {
    std::marker::PhantomData
}

fn query_for<DB: sqlx::Database>(
    _driver: std::marker::PhantomData<DB>,
    sql: &str,
) -> sqlx::query::Query<'_, DB, <DB as sqlx::Database>::Arguments<'_>> {
    sqlx::query(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_parameters_become_anonymous() {
        assert_eq!(
            anonymous_parameters("UPDATE t SET a = $1, b = $12 WHERE id = 1 AND c = '$'"),
            "UPDATE t SET a = ?, b = ? WHERE id = 1 AND c = '$'"
        );
    }
}
