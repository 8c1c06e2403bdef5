//! The database: embedded SQLite (WAL; a commit is on the disk before it is acknowledged) or
//! PostgreSQL, behind one small enum.
//!
//! Queries are written once with `$1`-style placeholders, which both backends accept, and run
//! through [`on_conn!`], which type-checks the same body against each driver. Where the SQL
//! dialects differ the caller branches on [`Backend`].

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, NaiveDate, Utc};
use serde::de::DeserializeOwned;
use sqlx::ConnectOptions as _;
use sqlx::Connection as _;
use sqlx::Row as _;
use sqlx::TransactionManager as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::audit::ChainHead;

pub mod rows;
mod wal_flush;

pub use wal_flush::OnDisk;
use wal_flush::WalFlusher;

/// File name of the SQLite database inside the data directory.
pub const SQLITE_FILE_NAME: &str = "keel.sqlite3";

/// Prepared statements the writing connection keeps: multi-row inserts of every row count a
/// commit group produces, for each ledger table.
pub const WRITE_STATEMENT_CACHE_CAPACITY: usize = 1024;

/// Reading connections kept open to SQLite; readers run concurrently in WAL mode. (There is
/// one writing connection besides: SQLite has a single writer lock.)
const SQLITE_READ_CONNECTIONS_MAX: u32 = 8;

/// Connections kept open to PostgreSQL per `keel` process.
const POSTGRES_CONNECTIONS_MAX: u32 = 16;

/// How long a writer waits for another process (the CLI next to a running server) to release
/// SQLite's write lock before giving up with "database is locked".
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// WAL pages (4 KiB) after which a committing writer copies the WAL back into the database file
/// itself. A server checkpoints in the background (see [`Database::checkpoint_in_background`]),
/// off the writer's path; this is the backstop, about 400 MB.
const SQLITE_WAL_PAGES_BEFORE_CHECKPOINT: &str = "100000";

/// How often the server copies committed WAL pages into the database file.
const SQLITE_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Page cache per reading connection, as SQLite's negative-KiB `cache_size` (SQLite's default
/// is 2 MiB). Memory is taken only as pages are used.
const SQLITE_CACHE_KIB: &str = "-32768";

/// The writing connection's page cache. A large batch or import touches index pages all over
/// the database file; with a smaller cache a 5,000-party import chunk at a million parties
/// spilled dirty pages into the WAL before its commit (writing them twice) and read evicted
/// ones back. Memory is taken only as pages are
/// used, so an idle server does not pay for it.
const SQLITE_WRITER_CACHE_KIB: &str = "-262144";

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
    Sqlite(SqlitePools),
    Postgres(PgPool),
}

/// SQLite takes one writer at a time. Writes go through one connection, taken in turn, so
/// writers in this process queue in order rather than retrying on SQLite's lock, and the writing
/// connection keeps the pages it just wrote in its cache. Reads use a pool, concurrently.
#[derive(Debug, Clone)]
pub struct SqlitePools {
    pub reads: SqlitePool,
    writes: WritingConnection,
    /// The audit chain's head as this process last committed it, so an append need not read
    /// it first (see [`crate::audit::append_many`]).
    chain_head: CommittedHead,
    /// Makes the writing connection's commits durable before they are acknowledged.
    wal_flusher: WalFlusher,
}

/// SQLite's one writing connection, lent to one transaction at a time in the order they ask.
/// (A pool of one would do the same, but checks the connection with a round trip to its thread
/// each time it is lent and again, on a task of its own, each time it comes back: the ledger
/// writer, committing hundreds of times a second, spent about 1 ms of each commit on that.)
#[derive(Debug, Clone)]
struct WritingConnection {
    connection: Arc<tokio::sync::Mutex<WritingSlot>>,
    /// To open a replacement.
    options: Arc<SqliteConnectOptions>,
}

/// The writing connection, lent to one transaction.
type LentConnection = tokio::sync::OwnedMutexGuard<WritingSlot>;

/// The connection a lent guard holds: [`WritingConnection::lend`] never lends a closed one.
fn open(lent: &mut LentConnection) -> &mut sqlx::SqliteConnection {
    lent.driver.as_mut().expect("lent connections are open")
}

/// Statements SQLite's C API keeps prepared on the writing connection: those of every table a
/// commit group writes, with room for the other writes of the host.
const DIRECT_STATEMENT_CACHE_CAPACITY: usize = 128;

/// The writing connection as the driver holds it (none once the database is closed) and, once
/// a write has gone through SQLite's C API, the same connection as seen from there, keeping
/// its statements prepared from one transaction to the next: a commit group of a few entries
/// would otherwise spend longer preparing its statements again than running them.
struct WritingSlot {
    /// Borrows the driver's connection (it does not close it). Its statements must be
    /// finalized, with the driver's thread idle, before the driver closes the connection:
    /// SQLite refuses to close a connection with statements still prepared.
    direct: Option<rusqlite::Connection>,
    driver: Option<sqlx::SqliteConnection>,
}

impl WritingSlot {
    /// Finalizes the direct connection's statements.
    async fn release_direct(&mut self) {
        let Some(direct) = self.direct.take() else {
            return;
        };
        match self.driver.as_mut() {
            // The lock waits for whatever the driver's thread still has queued (a rollback).
            Some(driver) => match driver.lock_handle().await {
                Ok(_handle) => drop(direct),
                Err(error) => {
                    // The driver's thread is gone with the connection: nothing to finalize on.
                    tracing::warn!(%error, "the SQLite writing connection's thread has stopped");
                    std::mem::forget(direct);
                }
            },
            None => std::mem::forget(direct),
        }
    }

    /// Replaces the driver's connection with `fresh`, closing the old one.
    async fn replace(&mut self, fresh: sqlx::SqliteConnection) {
        self.release_direct().await;
        if let Some(old) = self.driver.replace(fresh)
            && let Err(error) = old.close().await
        {
            tracing::warn!(%error, "closing the old writing connection failed");
        }
    }
}

impl Drop for WritingSlot {
    fn drop(&mut self) {
        // Dropped without `Database::close` (a test's database, say): the driver closes the
        // connection when its own handle goes, after this.
        if self.direct.is_some() {
            futures::executor::block_on(self.release_direct());
        }
    }
}

impl std::fmt::Debug for WritingSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WritingSlot")
            .field("open", &self.driver.is_some())
            .field("direct", &self.direct.is_some())
            .finish()
    }
}

impl WritingConnection {
    async fn open(options: SqliteConnectOptions) -> sqlx::Result<Self> {
        let connection = options.connect().await?;
        Ok(Self {
            connection: Arc::new(tokio::sync::Mutex::new(WritingSlot {
                direct: None,
                driver: Some(connection),
            })),
            options: Arc::new(options),
        })
    }

    /// Waits for the connection, at most [`ACQUIRE_TIMEOUT`].
    async fn lend(&self) -> anyhow::Result<LentConnection> {
        let lent = tokio::time::timeout(ACQUIRE_TIMEOUT, self.connection.clone().lock_owned())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "waited {} s for SQLite's writing connection: another write is still running; \
                     retry later",
                    ACQUIRE_TIMEOUT.as_secs()
                )
            })?;
        if lent.driver.is_none() {
            anyhow::bail!("the database is closed");
        }
        Ok(lent)
    }

    /// Lends the connection inside a `BEGIN IMMEDIATE` transaction (taking SQLite's write lock
    /// up front).
    async fn begin(&self) -> anyhow::Result<LentConnection> {
        async fn begin_immediate(lent: &mut LentConnection) -> sqlx::Result<()> {
            TransactionManager::begin(open(lent), Some("BEGIN IMMEDIATE".into())).await
        }
        let mut lent = self.lend().await?;
        match begin_immediate(&mut lent).await {
            // The driver still counts a transaction that SQLite ended by itself (it rolls back
            // on a full disk or an I/O error, and the driver's own ROLLBACK then fails): the
            // connection would refuse every write from now on.
            Err(sqlx::Error::InvalidSavePointStatement) => {
                tracing::warn!(
                    "replacing the SQLite writing connection: it lost track of a transaction \
                     SQLite had rolled back"
                );
                let fresh = self.options.connect().await?;
                lent.replace(fresh).await;
                begin_immediate(&mut lent).await?;
            }
            begun => begun?,
        }
        Ok(lent)
    }

    async fn close(&self) {
        let mut slot = self.connection.lock().await;
        slot.release_direct().await;
        if let Some(connection) = slot.driver.take()
            && let Err(error) = connection.close().await
        {
            tracing::warn!(%error, "closing SQLite's writing connection failed");
        }
    }
}

/// The audit chain head a process last committed on SQLite, shared by its transactions.
#[derive(Debug, Clone, Default)]
struct CommittedHead(Arc<Mutex<Option<ChainHead>>>);

impl CommittedHead {
    fn get(&self) -> Option<ChainHead> {
        self.slot().clone()
    }

    fn set(&self, head: Option<ChainHead>) {
        *self.slot() = head;
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<ChainHead>> {
        // A poisoned lock only means a panic elsewhere; the value is still a valid head or None.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A SQLite transaction: the connection, and the audit chain head it will leave once committed.
pub struct SqliteTx {
    connection: TxConnection,
    committed_head: CommittedHead,
    appended_head: Option<ChainHead>,
}

/// The connection of a SQLite transaction.
enum TxConnection {
    /// A reading connection from the pool; the driver rolls back when it is dropped.
    Reading(sqlx::Transaction<'static, sqlx::Sqlite>),
    Writing(WritingTx),
}

/// The writing connection in a transaction, and what flushes its commit to the disk.
struct WritingTx {
    lent: LentConnection,
    open: bool,
    wal_flusher: WalFlusher,
}

type TransactionManager = <sqlx::Sqlite as sqlx::Database>::TransactionManager;

impl WritingTx {
    fn connection(&mut self) -> &mut sqlx::SqliteConnection {
        open(&mut self.lent)
    }

    async fn commit(mut self) -> anyhow::Result<OnDisk> {
        TransactionManager::commit(self.connection()).await?;
        self.open = false;
        Ok(self.wal_flusher.after_commit())
    }

    async fn rollback(mut self) -> anyhow::Result<()> {
        TransactionManager::rollback(self.connection()).await?;
        self.open = false;
        Ok(())
    }
}

impl Drop for WritingTx {
    fn drop(&mut self) {
        if self.open {
            // Queued on the connection's thread ahead of anything the next writer sends.
            TransactionManager::start_rollback(self.connection());
        }
    }
}

impl SqliteTx {
    fn new(connection: TxConnection, pools: &SqlitePools) -> Self {
        Self {
            connection,
            committed_head: pools.chain_head.clone(),
            appended_head: None,
        }
    }

    /// Runs `run` with the transaction's open connection straight through SQLite's C API, on
    /// this thread, for as long as `hold` says. For work of many rows (a large write, a report
    /// adding up thousands of balances), where the driver's cost per row (boxing each value,
    /// handing each row across threads) would outweigh SQLite's own.
    ///
    /// On the writing connection the statements stay prepared for the next transaction, so
    /// that a write of a few rows costs less this way than through the driver too.
    pub(crate) async fn on_direct_connection<T>(
        &mut self,
        hold: Hold,
        run: impl FnOnce(&rusqlite::Connection) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        match &mut self.connection {
            TxConnection::Reading(tx) => {
                let mut handle = tx.lock_handle().await?;
                let raw = handle.as_raw_handle();
                hold.run(|| {
                    // SAFETY: the locked handle gives this thread sole use of the open
                    // connection until it is dropped, which is after `conn` is: `conn` only
                    // borrows the handle (it does not close it) and finalizes its statements
                    // when dropped.
                    #[allow(unsafe_code, reason = "borrowing the driver's open SQLite connection")]
                    let conn = unsafe { rusqlite::Connection::from_handle(raw.as_ptr()) }?;
                    run(&conn)
                })
            }
            TxConnection::Writing(tx) => {
                let WritingSlot { direct, driver } = &mut *tx.lent;
                let driver = driver.as_mut().expect("lent connections are open");
                let mut handle = driver.lock_handle().await?;
                let conn = match direct {
                    Some(conn) => conn,
                    None => {
                        // SAFETY: `conn` only borrows the handle (it does not close it), is used
                        // only while the handle is locked as here, and is dropped, finalizing
                        // its statements, before the driver closes the connection (see
                        // `WritingSlot`).
                        #[allow(
                            unsafe_code,
                            reason = "borrowing the driver's open SQLite connection"
                        )]
                        let conn = unsafe {
                            rusqlite::Connection::from_handle(handle.as_raw_handle().as_ptr())
                        }?;
                        conn.set_prepared_statement_cache_capacity(DIRECT_STATEMENT_CACHE_CAPACITY);
                        direct.insert(conn)
                    }
                };
                let ran = hold.run(|| run(conn));
                drop(handle);
                ran
            }
        }
    }

    /// Whether this transaction is on the writing connection, whose statements through
    /// SQLite's C API stay prepared (see [`Self::on_direct_connection`]).
    pub(crate) fn is_writing(&self) -> bool {
        matches!(self.connection, TxConnection::Writing(_))
    }
}

/// How long a call through SQLite's C API holds the thread it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// A few statements of a few rows (a commit group of single entries): run like any other
    /// short step of a task. Handing the thread's other tasks to another thread first cost a
    /// commit group more than its statements (see docs/PERFORMANCE.md).
    Brief,
    /// Thousands of rows: the runtime's other tasks move to another thread meanwhile.
    Long,
}

impl Hold {
    fn run<T>(self, run: impl FnOnce() -> T) -> T {
        let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread;
        if self == Self::Long && multi_thread {
            tokio::task::block_in_place(run)
        } else {
            run()
        }
    }
}

impl std::fmt::Debug for SqliteTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteTx")
            .field("appended_head", &self.appended_head)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for SqliteTx {
    type Target = sqlx::SqliteConnection;

    fn deref(&self) -> &Self::Target {
        match &self.connection {
            TxConnection::Reading(tx) => tx,
            TxConnection::Writing(tx) => {
                tx.lent.driver.as_ref().expect("lent connections are open")
            }
        }
    }
}

impl std::ops::DerefMut for SqliteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match &mut self.connection {
            TxConnection::Reading(tx) => tx,
            TxConnection::Writing(tx) => tx.connection(),
        }
    }
}

/// A transaction on either backend. Dropping it without [`Tx::commit`] rolls back.
#[derive(Debug)]
pub enum Tx {
    Sqlite(SqliteTx),
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

/// Like [`on_conn!`] for a pool, for reads: `$c` is `&SqlitePool` or `&PgPool`. Writes go
/// through [`Database::begin_write`].
#[macro_export]
macro_rules! on_pool {
    ($db:expr, $c:ident => $body:expr) => {
        match $db {
            $crate::db::Database::Sqlite(pools) => {
                let $c: &sqlx::SqlitePool = &pools.reads;
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
                    // FULL: a commit survives power loss, not only a crash. (The writing
                    // connection below flushes its commits itself.)
                    .synchronous(SqliteSynchronous::Full)
                    .foreign_keys(true)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT)
                    .pragma("wal_autocheckpoint", SQLITE_WAL_PAGES_BEFORE_CHECKPOINT)
                    .pragma("cache_size", SQLITE_CACHE_KIB)
                    // Statement journals (kept so that one failing row can undo its statement)
                    // in memory rather than in temporary files.
                    .pragma("temp_store", "memory")
                    // Multi-row statements are long; their text does not belong in warnings.
                    .log_slow_statements(log::LevelFilter::Debug, SLOW_STATEMENT);
                // Open for the life of the process: its cache is the point.
                let writes = WritingConnection::open(
                    options
                        .clone()
                        .pragma("cache_size", SQLITE_WRITER_CACHE_KIB)
                        .statement_cache_capacity(WRITE_STATEMENT_CACHE_CAPACITY)
                        // NORMAL: a commit releases the write lock without waiting for the
                        // disk; `Tx::commit` then waits for the WAL flusher before anyone is
                        // told (see `wal_flush`), so the next writer works meanwhile.
                        .synchronous(SqliteSynchronous::Normal),
                )
                .await
                .with_context(|| format!("opening the SQLite database {}", path.display()))?;
                let reads = SqlitePoolOptions::new()
                    .max_connections(SQLITE_READ_CONNECTIONS_MAX)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    // A connection to a local file does not drop: pinging it before lending
                    // it is a round trip to its thread for nothing (measured: 18 context
                    // switches per request reading one entry became 16, and 24 per trial
                    // balance 21).
                    .test_before_acquire(false)
                    .connect_with(options)
                    .await
                    .with_context(|| format!("opening the SQLite database {}", path.display()))?;
                Ok(Self::Sqlite(SqlitePools {
                    reads,
                    writes,
                    chain_head: CommittedHead::default(),
                    wal_flusher: WalFlusher::start(&path)
                        .context("starting the thread that flushes SQLite's WAL")?,
                }))
            }
            Location::Postgres(url) => {
                let options = PgConnectOptions::from_str(url)
                    .context("parsing the PostgreSQL URL")?
                    .application_name("keel")
                    .statement_cache_capacity(WRITE_STATEMENT_CACHE_CAPACITY)
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
            Self::Sqlite(pools) => {
                let mut lent = pools.writes.lend().await?;
                sqlx::migrate!("../migrations/sqlite")
                    .run(open(&mut lent))
                    .await
                    .context("migrating the SQLite database")?;
                drop(lent);
                // The migrations committed on the writing connection, which leaves flushing
                // to the WAL flusher.
                pools.wal_flusher.after_commit().wait().await?;
            }
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
            Self::Sqlite(pools) => {
                let writing = WritingTx {
                    lent: pools.writes.begin().await?,
                    open: true,
                    wal_flusher: pools.wal_flusher.clone(),
                };
                Tx::Sqlite(SqliteTx::new(TxConnection::Writing(writing), pools))
            }
            Self::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }

    /// Starts a read-only transaction: every query in it sees the same snapshot.
    pub async fn begin_read(&self) -> anyhow::Result<Tx> {
        Ok(match self {
            Self::Sqlite(pools) => Tx::Sqlite(SqliteTx::new(
                TxConnection::Reading(pools.reads.begin().await?),
                pools,
            )),
            Self::Postgres(pool) => Tx::Postgres(
                pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?,
            ),
        })
    }

    /// Runs reads against one consistent snapshot.
    pub async fn read<T>(
        &self,
        operation: impl AsyncFnOnce(&mut Tx) -> crate::error::Result<T>,
    ) -> crate::error::Result<T> {
        let mut tx = self.begin_read().await?;
        let value = operation(&mut tx).await?;
        tx.commit().await?;
        Ok(value)
    }

    /// On SQLite, starts a task that checkpoints the WAL every second from a reading connection,
    /// so the writer never stops to do it. (PASSIVE: it copies what no reader still needs and
    /// never blocks anyone.) The task ends when the database is closed.
    pub fn checkpoint_in_background(&self) {
        let Self::Sqlite(pools) = self else { return };
        let pool = pools.reads.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(SQLITE_CHECKPOINT_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !pool.is_closed() {
                interval.tick().await;
                let checkpoint = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&pool)
                    .await;
                if let Err(error) = checkpoint
                    && !pool.is_closed()
                {
                    tracing::warn!(%error, "checkpointing the SQLite WAL failed; will retry");
                }
            }
        });
    }

    /// Commits on SQLite's writing connection still waiting for their flush to the disk.
    #[cfg(test)]
    pub(crate) fn wal_flushes_pending(&self) -> u64 {
        match self {
            Self::Sqlite(pools) => pools.wal_flusher.pending(),
            Self::Postgres(_) => 0,
        }
    }

    /// Whether the database can serve requests: it answers a trivial query and, on SQLite, no
    /// flush of its WAL has failed (after one, no write is acknowledged until a restart). The
    /// error says why not, and what to do.
    pub async fn readiness(&self) -> Result<(), String> {
        if let Self::Sqlite(pools) = self
            && let Some(failure) = pools.wal_flusher.failure()
        {
            return Err(format!(
                "a write could not be confirmed on the disk ({failure}), so no write is \
                 acknowledged any more: check the disk, then restart Keel"
            ));
        }
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(drop))
            .map_err(|error| format!("the database does not answer: {error}"))
    }

    pub async fn close(&self) {
        match self {
            Self::Sqlite(pools) => {
                pools.reads.close().await;
                pools.writes.close().await;
            }
            Self::Postgres(pool) => pool.close().await,
        }
    }
}

impl Tx {
    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
        }
    }

    /// Commits, and returns once the commit is on the disk.
    pub async fn commit(self) -> anyhow::Result<()> {
        self.commit_before_flush().await?.wait().await
    }

    /// Commits, and returns the wait for the commit to reach the disk, which must end before
    /// anyone is told of the commit. Meanwhile the next writer can work: SQLite's write lock is
    /// free once this returns. (PostgreSQL commits are on the disk when they return.)
    pub async fn commit_before_flush(self) -> anyhow::Result<OnDisk> {
        match self {
            Self::Sqlite(tx) => {
                let on_disk = match tx.connection {
                    TxConnection::Reading(reading) => {
                        reading.commit().await?;
                        OnDisk::already()
                    }
                    TxConnection::Writing(writing) => writing.commit().await?,
                };
                if let Some(head) = tx.appended_head {
                    tx.committed_head.set(Some(head));
                }
                Ok(on_disk)
            }
            Self::Postgres(tx) => {
                tx.commit().await?;
                Ok(OnDisk::already())
            }
        }
    }

    /// Undoes everything the transaction did (dropping it does the same, less explicitly).
    pub async fn rollback(self) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(tx) => match tx.connection {
                TxConnection::Reading(reading) => reading.rollback().await?,
                TxConnection::Writing(writing) => writing.rollback().await?,
            },
            Self::Postgres(tx) => tx.rollback().await?,
        }
        Ok(())
    }

    /// The audit chain's head as this transaction would leave it, when known without asking
    /// the database: on SQLite, the head this transaction appended, or else the one this
    /// process last committed. The caller must detect a stale head (another process appended
    /// since): the audit log's sequence numbers do that, as the next one is then taken.
    /// PostgreSQL has many writers and always reads the head under a lock.
    pub fn known_chain_head(&self) -> Option<ChainHead> {
        match self {
            Self::Sqlite(tx) => tx.appended_head.clone().or_else(|| tx.committed_head.get()),
            Self::Postgres(_) => None,
        }
    }

    /// Records the head an append left, for [`Tx::known_chain_head`]; it becomes the process's
    /// committed head when the transaction commits.
    pub fn chain_head_advanced(&mut self, head: ChainHead) {
        if let Self::Sqlite(tx) = self {
            tx.appended_head = Some(head);
        }
    }

    /// Forgets the cached head once it proved stale.
    pub fn forget_chain_head(&mut self) {
        if let Self::Sqlite(tx) = self {
            tx.appended_head = None;
            tx.committed_head.set(None);
        }
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

/// A parameter of a query run through [`Tx::fetch_packed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Int(Option<i64>),
    Text(Option<String>),
    Date(Option<NaiveDate>),
}

/// One row returned by [`Tx::fetch_packed`], its columns by position.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedRow(Vec<serde_json::Value>);

impl PackedRow {
    fn column(&self, index: usize) -> anyhow::Result<&serde_json::Value> {
        self.0
            .get(index)
            .with_context(|| format!("packed row has no column {index}"))
    }

    /// A column as the database packed it.
    pub fn value(&self, index: usize) -> anyhow::Result<&serde_json::Value> {
        self.column(index)
    }

    pub fn int(&self, index: usize) -> anyhow::Result<i64> {
        self.opt_int(index)?
            .with_context(|| format!("column {index} is null"))
    }

    pub fn opt_int(&self, index: usize) -> anyhow::Result<Option<i64>> {
        match self.column(index)? {
            serde_json::Value::Null => Ok(None),
            value => value
                .as_i64()
                .map(Some)
                .with_context(|| format!("column {index} is not an integer: {value}")),
        }
    }

    pub fn text(&self, index: usize) -> anyhow::Result<String> {
        self.opt_text(index)?
            .with_context(|| format!("column {index} is null"))
    }

    pub fn opt_text(&self, index: usize) -> anyhow::Result<Option<String>> {
        match self.column(index)? {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::String(text) => Ok(Some(text.clone())),
            value => anyhow::bail!("column {index} is not text: {value}"),
        }
    }

    pub fn opt_date(&self, index: usize) -> anyhow::Result<Option<NaiveDate>> {
        self.opt_text(index)?
            .map(|text| {
                NaiveDate::parse_from_str(&text, "%Y-%m-%d")
                    .with_context(|| format!("column {index}: {text:?}"))
            })
            .transpose()
    }

    /// A boolean: SQLite stores 0 or 1, PostgreSQL true or false.
    pub fn flag(&self, index: usize) -> anyhow::Result<bool> {
        match self.column(index)? {
            serde_json::Value::Bool(flag) => Ok(*flag),
            serde_json::Value::Number(number) => Ok(number.as_i64() != Some(0)),
            value => anyhow::bail!("column {index} is not a boolean: {value}"),
        }
    }
}

/// Column access by place, shared by packed rows, the drivers' rows and rows read straight
/// through SQLite's C API, so that the rows of a query are decoded once for every way of
/// reading them.
pub trait ByPlace {
    fn int(&self, place: usize) -> anyhow::Result<i64>;
    fn opt_int(&self, place: usize) -> anyhow::Result<Option<i64>>;
    fn text(&self, place: usize) -> anyhow::Result<String>;
    fn opt_text(&self, place: usize) -> anyhow::Result<Option<String>>;
    fn flag(&self, place: usize) -> anyhow::Result<bool>;
}

impl ByPlace for PackedRow {
    fn int(&self, place: usize) -> anyhow::Result<i64> {
        PackedRow::int(self, place)
    }
    fn opt_int(&self, place: usize) -> anyhow::Result<Option<i64>> {
        PackedRow::opt_int(self, place)
    }
    fn text(&self, place: usize) -> anyhow::Result<String> {
        PackedRow::text(self, place)
    }
    fn opt_text(&self, place: usize) -> anyhow::Result<Option<String>> {
        PackedRow::opt_text(self, place)
    }
    fn flag(&self, place: usize) -> anyhow::Result<bool> {
        PackedRow::flag(self, place)
    }
}

impl ByPlace for rusqlite::Row<'_> {
    fn int(&self, place: usize) -> anyhow::Result<i64> {
        Ok(self.get(place)?)
    }
    fn opt_int(&self, place: usize) -> anyhow::Result<Option<i64>> {
        Ok(self.get(place)?)
    }
    fn text(&self, place: usize) -> anyhow::Result<String> {
        Ok(self.get(place)?)
    }
    fn opt_text(&self, place: usize) -> anyhow::Result<Option<String>> {
        Ok(self.get(place)?)
    }
    /// SQLite stores booleans as 0 or 1.
    fn flag(&self, place: usize) -> anyhow::Result<bool> {
        Ok(self.get(place)?)
    }
}

impl Tx {
    /// Runs `select`, whose result columns are `columns`, and returns all its rows packed by
    /// the database into one JSON value. Drivers hand rows over one at a time across threads;
    /// for reports that read hundreds of rows, one packed row is several times faster. The
    /// order of rows is not guaranteed: sort them if it matters.
    pub async fn fetch_packed(
        &mut self,
        select: &str,
        columns: &[&str],
        params: &[Param],
    ) -> anyhow::Result<Vec<PackedRow>> {
        let list = columns.join(", ");
        let sql = match self.backend() {
            Backend::Sqlite => {
                format!("SELECT json_group_array(json_array({list})) AS packed FROM ({select})")
            }
            Backend::Postgres => format!(
                "SELECT COALESCE(json_agg(json_build_array({list})), '[]')::text AS packed FROM ({select}) AS packed_rows"
            ),
        };
        let packed: String = on_conn!(self, conn => {
            let mut query = sqlx::query(&sql);
            for param in params {
                query = match param {
                    Param::Int(value) => query.bind(*value),
                    Param::Text(value) => query.bind(value.clone()),
                    Param::Date(value) => query.bind(value.map(SqlDate)),
                };
            }
            Row::text(&query.fetch_one(&mut *conn).await?, "packed")?
        });
        let rows: Vec<Vec<serde_json::Value>> =
            serde_json::from_str(&packed).context("decoding packed rows")?;
        Ok(rows.into_iter().map(PackedRow).collect())
    }
}

/// A calendar date as a query parameter: DATE on PostgreSQL, `YYYY-MM-DD` TEXT on SQLite.
/// Posting binds several dates per line; formatting them by hand instead of through chrono's
/// format strings is a measurable share of a 100,000-entry import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlDate(pub NaiveDate);

impl SqlDate {
    pub(crate) fn text(self) -> String {
        use chrono::Datelike as _;
        let (year, month, day) = (self.0.year(), self.0.month(), self.0.day());
        if !(0..=9999).contains(&year) {
            return self.0.format("%F").to_string();
        }
        let mut text = String::with_capacity(10);
        for digit in [year / 1000, year / 100 % 10, year / 10 % 10, year % 10] {
            text.push(char::from(b'0' + digit as u8));
        }
        for part in [month, day] {
            text.push('-');
            text.push(char::from(b'0' + (part / 10) as u8));
            text.push(char::from(b'0' + (part % 10) as u8));
        }
        text
    }
}

impl sqlx::Type<sqlx::Sqlite> for SqlDate {
    fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
        <NaiveDate as sqlx::Type<sqlx::Sqlite>>::type_info()
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Sqlite> for SqlDate {
    fn encode_by_ref(
        &self,
        buf: &mut Vec<sqlx::sqlite::SqliteArgumentValue<'q>>,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <String as sqlx::Encode<'q, sqlx::Sqlite>>::encode(self.text(), buf)
    }
}

impl sqlx::Type<sqlx::Postgres> for SqlDate {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <NaiveDate as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for SqlDate {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <NaiveDate as sqlx::Encode<'_, sqlx::Postgres>>::encode_by_ref(&self.0, buf)
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

/// Column `place` of a driver's row, decoded.
fn at_place<'r, R, T>(row: &'r R, place: usize) -> anyhow::Result<T>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    row.try_get(place)
        .with_context(|| format!("column {place}"))
}

macro_rules! impl_by_place {
    ($row:ty) => {
        impl ByPlace for $row {
            fn int(&self, place: usize) -> anyhow::Result<i64> {
                at_place(self, place)
            }
            fn opt_int(&self, place: usize) -> anyhow::Result<Option<i64>> {
                at_place(self, place)
            }
            fn text(&self, place: usize) -> anyhow::Result<String> {
                at_place(self, place)
            }
            fn opt_text(&self, place: usize) -> anyhow::Result<Option<String>> {
                at_place(self, place)
            }
            fn flag(&self, place: usize) -> anyhow::Result<bool> {
                at_place(self, place)
            }
        }
    };
}

impl_by_place!(sqlx::sqlite::SqliteRow);
impl_by_place!(sqlx::postgres::PgRow);

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

    /// `sql` with its `$N` parameters as this backend numbers them: unchanged on PostgreSQL,
    /// `?N` on SQLite, where `$N` is a *named* parameter bound in order of first appearance.
    /// Statements assembled from optional conditions need this to bind by number.
    pub fn numbered(self, sql: &str) -> String {
        match self {
            Self::Postgres => sql.to_owned(),
            Self::Sqlite => {
                let mut out = String::with_capacity(sql.len());
                let mut chars = sql.chars().peekable();
                while let Some(c) = chars.next() {
                    if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
                        out.push('?');
                    } else {
                        out.push(c);
                    }
                }
                out
            }
        }
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

/// Rows in one multi-row statement. Large enough to amortize a round trip to the database,
/// small enough that a prepared statement stays small in the statement cache.
const ROWS_PER_STATEMENT_MAX: usize = 256;

/// Splits `items` into chunks for multi-row statements: 256 rows each and the rest in one.
/// Each distinct row count is its own prepared statement, kept in the writing connection's
/// statement cache ([`WRITE_STATEMENT_CACHE_CAPACITY`]); every statement saved is a round trip
/// to the database thread and back.
pub fn statement_chunks<T>(items: &[T]) -> Vec<&[T]> {
    items.chunks(ROWS_PER_STATEMENT_MAX).collect()
}

/// A unique constraint, named the way each backend reports it: PostgreSQL by constraint name,
/// SQLite (which keeps no names) by its `table.column, …` list.
#[derive(Debug, Clone, Copy)]
pub struct UniqueConstraint {
    pub postgres_name: &'static str,
    pub sqlite_columns: &'static str,
}

impl UniqueConstraint {
    /// Whether `error` (anywhere in its chain) is a violation of this constraint, as reported
    /// by either driver or by SQLite itself ([`rows`]).
    pub fn is_violated_by(&self, error: &anyhow::Error) -> bool {
        let sqlite_columns = |message: &str| {
            message
                .strip_prefix("UNIQUE constraint failed: ")
                .is_some_and(|columns| columns == self.sqlite_columns)
        };
        error.chain().any(|cause| {
            if let Some(db) = cause
                .downcast_ref::<sqlx::Error>()
                .and_then(|e| e.as_database_error())
            {
                return db.is_unique_violation()
                    && match db.constraint() {
                        Some(name) => name == self.postgres_name,
                        None => sqlite_columns(db.message()),
                    };
            }
            match cause.downcast_ref::<rusqlite::Error>() {
                Some(rusqlite::Error::SqliteFailure(failure, Some(message))) => {
                    matches!(
                        failure.extended_code,
                        rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                            | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                    ) && sqlite_columns(message)
                }
                _ => false,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A migrated SQLite database in a temporary folder, removed when the folder is dropped.
    async fn fresh_sqlite() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let db = Database::open(&Location::DataDir(dir.path().to_owned()))
            .await
            .expect("a database");
        (dir, db)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_is_on_the_disk_when_its_commit_returns() {
        let (_dir, db) = fresh_sqlite().await;
        let Database::Sqlite(pools) = &db else {
            unreachable!()
        };
        let synchronous = "PRAGMA synchronous";
        // The writing connection leaves flushing to the WAL flusher; the others flush in SQLite.
        let mut lent = pools.writes.lend().await.expect("the writing connection");
        let writing = open(&mut lent);
        let setting = sqlx::query_scalar::<_, i64>(synchronous)
            .fetch_one(writing)
            .await;
        assert_eq!(setting.expect("the setting"), 1, "NORMAL");
        drop(lent);
        let setting = sqlx::query_scalar::<_, i64>(synchronous)
            .fetch_one(&pools.reads)
            .await;
        assert_eq!(setting.expect("the setting"), 2, "FULL");
        for _ in 0..3 {
            let mut tx = db.begin_write().await.expect("a transaction");
            on_conn!(&mut tx, conn => {
                sqlx::query("INSERT INTO currencies (code, name, minor_units) VALUES ('XTS', 'Test', 2) \
                             ON CONFLICT (code) DO UPDATE SET minor_units = 3 - minor_units")
                    .execute(&mut *conn)
                    .await
                    .expect("a write");
            });
            tx.commit().await.expect("committed");
            assert_eq!(
                pools.wal_flusher.pending(),
                0,
                "a commit returned before its flush"
            );
        }
        let tx = db.begin_write().await.expect("a transaction");
        let on_disk = tx.commit_before_flush().await.expect("committed");
        on_disk.wait().await.expect("flushed");
        assert_eq!(pools.wal_flusher.pending(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writing_connection_that_lost_its_transaction_is_replaced() {
        use rows::{Value, Write};
        let currency = |code| {
            Write::insert(
                "INSERT INTO currencies (code, name, minor_units)",
                3,
                vec![
                    Value::Text(Some(code)),
                    Value::Text(Some("Test")),
                    Value::Int(Some(2)),
                ],
            )
        };
        let (_dir, db) = fresh_sqlite().await;
        // Written through SQLite's C API, whose statement then stays prepared on the connection.
        let mut tx = db.begin_write().await.expect("a transaction");
        rows::write(&mut tx, &[currency("XTS")])
            .await
            .expect("written");
        tx.commit().await.expect("committed");
        let mut tx = db.begin_write().await.expect("a transaction");
        // SQLite ends the transaction behind the driver's back, as it does on a full disk;
        // the driver's ROLLBACK when `tx` is dropped then fails.
        on_conn!(&mut tx, conn => {
            sqlx::query("ROLLBACK").execute(&mut *conn).await.expect("rolled back");
        });
        drop(tx);
        // The new connection prepares its own statements: the old ones were finalized before
        // the old connection closed (SQLite refuses to close it otherwise).
        let mut tx = db.begin_write().await.expect("a new writing connection");
        rows::write(&mut tx, &[currency("XTT")])
            .await
            .expect("written");
        tx.commit().await.expect("committed");
        let mut tx = db.begin_read().await.expect("a read");
        let found = on_conn!(&mut tx, conn => {
            sqlx::query_scalar::<_, String>("SELECT code FROM currencies WHERE name = 'Test' ORDER BY code")
                .fetch_all(&mut *conn)
                .await
                .expect("found")
        });
        assert_eq!(found, ["XTS", "XTT"]);
        drop(tx);
        db.close().await;
    }

    /// CHECK constraints of the form `x IN (a, b, c …)` in the SQLite schema: SQLite fills a
    /// temporary index with the list for every row an insert writes (migration 0008).
    fn checks_with_long_in_lists(schema: &[String]) -> Vec<String> {
        let mut found = Vec::new();
        for sql in schema {
            let mut rest = sql.as_str();
            while let Some(at) = rest.find(" IN (") {
                let list = &rest[at + 5..];
                let list = &list[..list.find(')').unwrap_or(list.len())];
                if list.matches(',').count() >= 2 {
                    found.push(format!("IN ({list})"));
                }
                rest = &rest[at + 5..];
            }
        }
        found
    }

    async fn table_definitions(db: &Database) -> Vec<String> {
        let mut tx = db.begin_read().await.expect("a read");
        on_conn!(&mut tx, conn => {
            sqlx::query("SELECT sql FROM sqlite_schema WHERE type = 'table' AND sql IS NOT NULL")
                .fetch_all(&mut *conn)
                .await
                .expect("the schema")
                .iter()
                .map(|row| Row::text(row, "sql").expect("a definition"))
                .collect()
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_sqlite_check_compares_with_a_list_of_three_or_more() {
        let (_dir, db) = fresh_sqlite().await;
        let schema = table_definitions(&db).await;
        assert!(
            schema
                .iter()
                .any(|sql| sql.contains("CHECK (kind = 'standard' OR")),
            "the ledger entries' check was rewritten: {schema:?}"
        );
        let long_lists = checks_with_long_in_lists(&schema);
        assert!(
            long_lists.is_empty(),
            "write these checks as `x = a OR x = b OR …` (see migration 0008): {long_lists:?}"
        );
        assert_eq!(
            checks_with_long_in_lists(&["CHECK (k IN ('a', 'b', 'c'))".to_owned()]),
            ["IN ('a', 'b', 'c')"],
            "the scan finds a long list"
        );
    }

    /// After a failed flush of the WAL no write is acknowledged: the database says it is not
    /// ready, and why.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_flush_makes_the_database_not_ready() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let mut db = Database::open(&Location::DataDir(dir.path().to_owned()))
            .await
            .expect("a database");
        assert_eq!(db.readiness().await, Ok(()));
        let Database::Sqlite(pools) = &mut db else {
            unreachable!("a data folder is SQLite")
        };
        // The flusher of a WAL that is a device, which opens but cannot be flushed.
        let device = tempfile::tempdir().expect("a temporary folder");
        std::os::unix::fs::symlink("/dev/null", device.path().join("db.sqlite3-wal"))
            .expect("a link");
        pools.wal_flusher =
            WalFlusher::start(&device.path().join("db.sqlite3")).expect("a flusher");
        pools
            .wal_flusher
            .after_commit()
            .wait()
            .await
            .expect_err("the flush fails");
        let reason = db.readiness().await.expect_err("not ready");
        assert!(reason.contains("restart Keel"), "{reason}");
    }

    /// A database made before migration 0008 keeps its rows, and its rewritten checks refuse
    /// what the old ones refused, on connections opened before the migration too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rewritten_checks_keep_the_rows_and_still_refuse_bad_values() {
        let earlier = tempfile::tempdir().expect("a temporary folder");
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/sqlite");
        for file in std::fs::read_dir(&source).expect("the migrations") {
            let path = file.expect("a migration").path();
            let name = path
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            if name.as_str() < "0008" {
                std::fs::copy(&path, earlier.path().join(&name)).expect("copied");
            }
        }
        let dir = tempfile::tempdir().expect("a temporary folder");
        let db = Database::connect(&Location::DataDir(dir.path().to_owned()))
            .await
            .expect("a database");
        let Database::Sqlite(pools) = &db else {
            unreachable!("a data folder is SQLite")
        };
        let mut lent = pools.writes.lend().await.expect("the writing connection");
        let writing = open(&mut lent);
        sqlx::migrate::Migrator::new(earlier.path())
            .await
            .expect("the migrations before 0008")
            .run(&mut *writing)
            .await
            .expect("migrated to 0007");
        for statement in [
            "INSERT INTO currencies (code, name, minor_units) VALUES ('USD', 'US dollar', 2)",
            "INSERT INTO companies (id, code, name, base_currency, created_at) \
             VALUES (1, 'main', 'Main', 'USD', '2026-01-01T00:00:00Z')",
            "INSERT INTO ledger_entries (id, company_id, entry_date, kind, posted_at) \
             VALUES (1, 1, '2026-01-02', 'closing', '2026-01-02T00:00:00Z')",
        ] {
            sqlx::query(statement)
                .execute(&mut *writing)
                .await
                .expect("a row before the migration");
        }
        drop(lent);
        let mut opened_before = pools.reads.acquire().await.expect("a reading connection");
        db.migrate().await.expect("migrated to the end");
        let mut lent = pools.writes.lend().await.expect("the writing connection");
        let writing = open(&mut lent);

        let insert = |id: i64, kind: &str| {
            format!(
                "INSERT INTO ledger_entries (id, company_id, entry_date, kind, posted_at) \
                 VALUES ({id}, 1, '2026-01-03', '{kind}', '2026-01-03T00:00:00Z')"
            )
        };
        sqlx::query(&insert(2, "reversal"))
            .execute(&mut *writing)
            .await
            .expect("an allowed kind");
        for refused in [
            sqlx::query(&insert(3, "draft"))
                .execute(&mut *writing)
                .await,
            sqlx::query(&insert(4, "draft"))
                .execute(&mut *opened_before)
                .await,
        ] {
            let message = refused.expect_err("an unknown kind is refused").to_string();
            assert!(
                message.contains("CHECK constraint failed: kind = 'standard' OR"),
                "refused by the rewritten check: {message}"
            );
        }
        let kinds: Vec<String> = sqlx::query("SELECT kind FROM ledger_entries ORDER BY id")
            .fetch_all(&mut *writing)
            .await
            .expect("the entries")
            .iter()
            .map(|row| Row::text(row, "kind").expect("a kind"))
            .collect();
        assert_eq!(kinds, ["closing", "reversal"]);
    }

    #[test]
    fn statement_chunks_hold_256_rows_at_most() {
        let items: Vec<u32> = (0..(256 * 2 + 100)).collect();
        let sizes: Vec<usize> = statement_chunks(&items).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [256, 256, 100]);
        assert_eq!(statement_chunks::<u32>(&[]).len(), 0);
        let flattened: Vec<u32> = statement_chunks(&items).concat();
        assert_eq!(flattened, items);
    }

    #[test]
    fn dates_bind_as_iso_text_on_sqlite() {
        let date = |y, m, d| SqlDate(NaiveDate::from_ymd_opt(y, m, d).expect("a date"));
        assert_eq!(date(2026, 3, 9).text(), "2026-03-09");
        assert_eq!(date(1900, 12, 31).text(), "1900-12-31");
        assert_eq!(date(9999, 1, 1).text(), "9999-01-01");
    }

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
