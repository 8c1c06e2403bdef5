//! The database: embedded SQLite (WAL, fully synchronous) or PostgreSQL, behind one small enum.
//!
//! Queries are written once with `$1`-style placeholders, which both backends accept, and run
//! through [`on_conn!`], which type-checks the same body against each driver. Where the SQL
//! dialects differ the caller branches on [`Backend`].

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, NaiveDate, Utc};
use serde::de::DeserializeOwned;
use sqlx::ConnectOptions as _;
use sqlx::Row as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

/// File name of the SQLite database inside the data directory.
pub const SQLITE_FILE_NAME: &str = "keel.sqlite3";

/// Connections kept open to SQLite. Readers run concurrently in WAL mode; writes serialize on
/// SQLite's single writer lock, so more connections only cost memory.
const SQLITE_CONNECTIONS_MAX: u32 = 8;

/// Connections kept open to PostgreSQL per `keel` process.
const POSTGRES_CONNECTIONS_MAX: u32 = 16;

/// How long a writer waits for another process (the CLI next to a running server) to release
/// SQLite's write lock before giving up with "database is locked".
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Statements slower than this are logged at debug level.
const SLOW_STATEMENT: Duration = Duration::from_secs(1);

/// How long a request waits for a free connection before failing rather than queueing forever.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// Which SQL dialect a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where the data lives, as chosen on the command line.
#[derive(Debug, Clone)]
pub enum Location {
    /// A SQLite database file inside this directory (created if missing).
    DataDir(PathBuf),
    /// A `postgres://` URL.
    Postgres(String),
}

impl Location {
    /// `--database-url` wins over `--data-dir`; only PostgreSQL URLs are accepted as URLs.
    pub fn from_args(database_url: Option<&str>, data_dir: &Path) -> anyhow::Result<Self> {
        match database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Self::Postgres(url.to_owned()))
            }
            Some(url) => anyhow::bail!(
                "unsupported database URL {url:?}: give a postgres:// URL, or leave it out to use \
                 the embedded SQLite database under --data-dir"
            ),
            None => Ok(Self::DataDir(data_dir.to_owned())),
        }
    }
}

/// A pool of connections to one of the supported backends.
#[derive(Debug, Clone)]
pub enum Database {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A transaction on either backend. Dropping it without [`Tx::commit`] rolls back.
#[derive(Debug)]
pub enum Tx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// Runs `$body` with `$c` bound to the backend's connection (`&mut SqliteConnection` or
/// `&mut PgConnection`), so one query text serves both drivers.
#[macro_export]
macro_rules! on_conn {
    ($tx:expr, $c:ident => $body:expr) => {
        match $tx {
            $crate::db::Tx::Sqlite(tx) => {
                let $c: &mut sqlx::SqliteConnection = &mut *tx;
                $body
            }
            $crate::db::Tx::Postgres(tx) => {
                let $c: &mut sqlx::PgConnection = &mut *tx;
                $body
            }
        }
    };
}

/// Like [`on_conn!`] for a pool: `$c` is `&SqlitePool` or `&PgPool`.
#[macro_export]
macro_rules! on_pool {
    ($db:expr, $c:ident => $body:expr) => {
        match $db {
            $crate::db::Database::Sqlite(pool) => {
                let $c: &sqlx::SqlitePool = pool;
                $body
            }
            $crate::db::Database::Postgres(pool) => {
                let $c: &sqlx::PgPool = pool;
                $body
            }
        }
    };
}

impl Database {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub async fn open(location: &Location) -> anyhow::Result<Self> {
        let db = Self::connect(location).await?;
        db.migrate().await?;
        Ok(db)
    }

    /// Opens the database without migrating it.
    pub async fn connect(location: &Location) -> anyhow::Result<Self> {
        match location {
            Location::DataDir(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating the data directory {}", dir.display()))?;
                let path = dir.join(SQLITE_FILE_NAME);
                let options = SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // FULL: an acknowledged commit survives power loss, not only a crash.
                    .synchronous(SqliteSynchronous::Full)
                    .foreign_keys(true)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT)
                    // Multi-row statements are long; their text does not belong in warnings.
                    .log_slow_statements(log::LevelFilter::Debug, SLOW_STATEMENT);
                let pool = SqlitePoolOptions::new()
                    .max_connections(SQLITE_CONNECTIONS_MAX)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await
                    .with_context(|| format!("opening the SQLite database {}", path.display()))?;
                Ok(Self::Sqlite(pool))
            }
            Location::Postgres(url) => {
                let options = PgConnectOptions::from_str(url)
                    .context("parsing the PostgreSQL URL")?
                    .application_name("keel")
                    .log_slow_statements(log::LevelFilter::Debug, SLOW_STATEMENT);
                let pool = PgPoolOptions::new()
                    .max_connections(POSTGRES_CONNECTIONS_MAX)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await
                    .context("connecting to PostgreSQL")?;
                Ok(Self::Postgres(pool))
            }
        }
    }

    /// Applies the migrations for this backend that have not run yet.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(pool) => sqlx::migrate!("../migrations/sqlite")
                .run(pool)
                .await
                .context("migrating the SQLite database")?,
            Self::Postgres(pool) => sqlx::migrate!("../migrations/postgres")
                .run(pool)
                .await
                .context("migrating the PostgreSQL database")?,
        }
        crate::currency::seed(self).await
    }

    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
        }
    }

    /// Starts a transaction that will write. On SQLite it takes the write lock up front, so two
    /// writers queue instead of failing when the second tries to upgrade a read lock.
    pub async fn begin_write(&self) -> anyhow::Result<Tx> {
        Ok(match self {
            Self::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Self::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }

    /// Starts a read-only transaction: every query in it sees the same snapshot.
    pub async fn begin_read(&self) -> anyhow::Result<Tx> {
        Ok(match self {
            Self::Sqlite(pool) => Tx::Sqlite(pool.begin().await?),
            Self::Postgres(pool) => Tx::Postgres(
                pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?,
            ),
        })
    }

    /// True when the database answers a trivial query.
    pub async fn is_ready(&self) -> bool {
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.is_ok())
    }

    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}

impl Tx {
    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
        }
    }

    pub async fn commit(self) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(tx) => tx.commit().await?,
            Self::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }

    /// Row-lock suffix for a SELECT whose rows the transaction relies on staying unchanged until
    /// it commits (periods it posts into, accounts it posts to). SQLite's single writer lock
    /// already gives that guarantee.
    pub fn lock_for_share(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "",
            Self::Postgres(_) => " FOR SHARE",
        }
    }

    /// Row-lock suffix for a SELECT whose rows the transaction is about to change.
    pub fn lock_for_update(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "",
            Self::Postgres(_) => " FOR UPDATE",
        }
    }
}

/// Typed column access shared by both drivers' rows, so decoding is written once.
/// Integer columns are BIGINT on PostgreSQL and INTEGER on SQLite: both decode as `i64`.
pub trait Row {
    fn int(&self, column: &str) -> anyhow::Result<i64>;
    fn opt_int(&self, column: &str) -> anyhow::Result<Option<i64>>;
    fn text(&self, column: &str) -> anyhow::Result<String>;
    fn opt_text(&self, column: &str) -> anyhow::Result<Option<String>>;
    fn date(&self, column: &str) -> anyhow::Result<NaiveDate>;
    fn opt_date(&self, column: &str) -> anyhow::Result<Option<NaiveDate>>;
    fn timestamp(&self, column: &str) -> anyhow::Result<DateTime<Utc>>;
    fn opt_timestamp(&self, column: &str) -> anyhow::Result<Option<DateTime<Utc>>>;
    fn flag(&self, column: &str) -> anyhow::Result<bool>;
    fn opt_json<T: DeserializeOwned>(&self, column: &str) -> anyhow::Result<Option<T>>;
}

macro_rules! impl_row {
    ($row:ty) => {
        impl Row for $row {
            fn int(&self, column: &str) -> anyhow::Result<i64> {
                self.try_get(column)
                    .with_context(|| format!("column {column}"))
            }
            fn opt_int(&self, column: &str) -> anyhow::Result<Option<i64>> {
                self.try_get(column)
                    .with_context(|| format!("column {column}"))
            }
            fn text(&self, column: &str) -> anyhow::Result<String> {
                self.try_get(column)
                    .with_context(|| format!("column {column}"))
            }
            fn opt_text(&self, column: &str) -> anyhow::Result<Option<String>> {
                self.try_get(column)
                    .with_context(|| format!("column {column}"))
            }
            fn date(&self, column: &str) -> anyhow::Result<NaiveDate> {
                self.try_get(column)
                    .with_context(|| format!("column {column}"))
            }
            fn opt_date(&self, column: &str) -> anyhow::Result<Option<NaiveDate>> {
                self.try_get(column)
                    .with_context(|| format!("column {column}"))
            }
            fn timestamp(&self, column: &str) -> anyhow::Result<DateTime<Utc>> {
                self.try_get(column)
                    .with_context(|| format!("column {column}"))
            }
            fn opt_timestamp(&self, column: &str) -> anyhow::Result<Option<DateTime<Utc>>> {
                self.try_get(column)
                    .with_context(|| format!("column {column}"))
            }
            fn flag(&self, column: &str) -> anyhow::Result<bool> {
                self.try_get(column)
                    .with_context(|| format!("column {column}"))
            }
            fn opt_json<T: DeserializeOwned>(&self, column: &str) -> anyhow::Result<Option<T>> {
                let value: Option<sqlx::types::Json<T>> = self
                    .try_get(column)
                    .with_context(|| format!("column {column}"))?;
                Ok(value.map(|json| json.0))
            }
        }
    };
}

impl_row!(sqlx::sqlite::SqliteRow);
impl_row!(sqlx::postgres::PgRow);

impl Backend {
    /// Numbered placeholders `first, first+1, …` such as an `IN (…)` list: `($2, $3)` on
    /// PostgreSQL, `(?2, ?3)` on SQLite, which mix with `$1` elsewhere in the statement.
    pub fn placeholders(self, first: usize, count: usize) -> String {
        let sigil = match self {
            Self::Sqlite => '?',
            Self::Postgres => '$',
        };
        let mut out = String::with_capacity(count * 7 + 2);
        out.push('(');
        for i in 0..count {
            if i > 0 {
                out.push_str(", ");
            }
            out.push(sigil);
            out.push_str(&(first + i).to_string());
        }
        out.push(')');
        out
    }

    /// The VALUES list for `rows` rows of `columns` columns, for a statement with no other
    /// parameters: `($1, $2), ($3, $4), …` on PostgreSQL and `(?, ?), (?, ?), …` on SQLite.
    /// SQLite resolves every numbered or named parameter with a linear search over those seen
    /// before, which makes a 30,000-parameter statement take seconds; anonymous `?` is free.
    pub fn values_list(self, rows: usize, columns: usize) -> String {
        match self {
            Self::Postgres => (0..rows)
                .map(|row| self.placeholders(row * columns + 1, columns))
                .collect::<Vec<_>>()
                .join(", "),
            Self::Sqlite => {
                let row = format!("({})", vec!["?"; columns].join(", "));
                vec![row; rows].join(", ")
            }
        }
    }
}

/// Largest number of bind parameters in one statement: SQLite allows 32,766, PostgreSQL 65,535.
pub const BIND_PARAMETERS_MAX: usize = 32_000;

/// A unique constraint, named the way each backend reports it: PostgreSQL by constraint name,
/// SQLite (which keeps no names) by its `table.column, …` list.
#[derive(Debug, Clone, Copy)]
pub struct UniqueConstraint {
    pub postgres_name: &'static str,
    pub sqlite_columns: &'static str,
}

impl UniqueConstraint {
    /// Whether `error` (anywhere in its chain) is a violation of this constraint.
    pub fn is_violated_by(&self, error: &anyhow::Error) -> bool {
        error
            .chain()
            .filter_map(|cause| cause.downcast_ref::<sqlx::Error>())
            .filter_map(|e| e.as_database_error())
            .any(|db| {
                db.is_unique_violation()
                    && match db.constraint() {
                        Some(name) => name == self.postgres_name,
                        None => db
                            .message()
                            .strip_prefix("UNIQUE constraint failed: ")
                            .is_some_and(|columns| columns == self.sqlite_columns),
                    }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_list_numbers_placeholders_across_rows() {
        assert_eq!(
            Backend::Postgres.values_list(2, 3),
            "($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(Backend::Sqlite.values_list(2, 2), "(?, ?), (?, ?)");
        assert_eq!(Backend::Sqlite.placeholders(2, 2), "(?2, ?3)");
    }
}
