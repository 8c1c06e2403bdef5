//! Durable SQLite commits without holding the write lock through the disk flush.
//!
//! The writing connection commits with `synchronous=NORMAL`: a commit writes its WAL frames and
//! releases SQLite's write lock without waiting for the disk. Before anyone is told that the
//! commit happened, the committer waits ([`OnDisk::wait`]) until a thread of this module has
//! flushed the WAL file to the disk (`fdatasync`) in a flush that began after the commit. The
//! next writer works meanwhile, and one flush covers every commit made before it began, so
//! commits that finish together share one flush.
//!
//! What is acknowledged survives a power loss exactly as with `synchronous=FULL`, which flushes
//! inside the commit: frames reach the WAL in commit order, so a flush that covers one commit
//! covers every earlier one, and after a power loss SQLite replays the WAL up to the last
//! complete commit. The one difference: another connection can read a commit a millisecond
//! before it is on the disk, while its writer still waits to acknowledge it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

/// How often the idle flushing thread checks whether its database is still open.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Flushes a SQLite database's WAL file for the commits that ask, on a thread of its own.
#[derive(Debug, Clone)]
pub struct WalFlusher {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    wal: PathBuf,
    /// The number of the latest commit that asked for a flush.
    requested: Mutex<u64>,
    wake: Condvar,
    flushed: watch::Sender<Flushed>,
}

/// What the flushing thread has done so far.
#[derive(Debug, Clone, Default)]
struct Flushed {
    /// Commits numbered up to this one are on the disk.
    through: u64,
    /// Set when a flush failed. Once the kernel has reported a failed write-back, the pages it
    /// could not write may be marked clean; a later flush that succeeds proves nothing, so from
    /// then on no commit is acknowledged (as PostgreSQL stops on a failed fsync).
    failure: Option<Arc<str>>,
}

/// The wait for one commit to be on the disk.
#[derive(Debug)]
#[must_use = "a commit is acknowledged only once it is on the disk"]
pub struct OnDisk {
    wait: Option<(u64, Arc<Shared>)>,
}

impl OnDisk {
    /// A commit that is on the disk when it returns (PostgreSQL, or nothing was written).
    pub fn already() -> Self {
        Self { wait: None }
    }

    /// Returns once the commit is on the disk, or the error that keeps it from being known so.
    pub async fn wait(self) -> anyhow::Result<()> {
        let Some((commit, shared)) = self.wait else {
            return Ok(());
        };
        let mut flushed = shared.flushed.subscribe();
        let state = flushed
            .wait_for(|state| state.through >= commit || state.failure.is_some())
            .await
            .map_err(|_| anyhow::anyhow!("the SQLite WAL flushing thread stopped"))?;
        match &state.failure {
            Some(failure) if state.through < commit => Err(anyhow::anyhow!(
                "the database could not confirm that this write reached the disk ({failure}); \
                 it may not survive a power loss. Keel acknowledges no more writes until it is \
                 restarted: check the disk, then restart Keel"
            )),
            _ => Ok(()),
        }
    }
}

impl WalFlusher {
    /// Starts the flushing thread for the SQLite database file `database`. The thread ends on
    /// its own once every handle to it is dropped.
    pub fn start(database: &Path) -> anyhow::Result<Self> {
        let mut wal = database.as_os_str().to_owned();
        wal.push("-wal");
        let shared = Arc::new(Shared {
            wal: PathBuf::from(wal),
            requested: Mutex::new(0),
            wake: Condvar::new(),
            flushed: watch::Sender::new(Flushed::default()),
        });
        let flushing = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("keel-wal-flush".to_owned())
            .spawn(move || flush_as_asked(&flushing))?;
        Ok(Self { shared })
    }

    /// Asks for a flush covering every commit made so far; call right after committing.
    pub fn after_commit(&self) -> OnDisk {
        let commit = {
            let mut requested = self.shared.requested();
            *requested += 1;
            *requested
        };
        self.shared.wake.notify_one();
        OnDisk {
            wait: Some((commit, Arc::clone(&self.shared))),
        }
    }

    /// Why commits are no longer acknowledged, once a flush has failed.
    pub fn failure(&self) -> Option<Arc<str>> {
        self.shared.flushed.borrow().failure.clone()
    }

    /// How many flushes asked for are not done yet (for tests).
    #[cfg(test)]
    pub fn pending(&self) -> u64 {
        *self.shared.requested() - self.shared.flushed.borrow().through
    }
}

impl Shared {
    fn requested(&self) -> MutexGuard<'_, u64> {
        // A poisoned lock only means a panic elsewhere; the counter is still valid.
        self.requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The flushing thread: waits for commits to ask, flushes once for all that asked meanwhile.
fn flush_as_asked(shared: &Arc<Shared>) {
    let mut directory_flushed_for = None;
    let mut through = 0;
    loop {
        let target = {
            let mut requested = shared.requested();
            while *requested == through {
                // Only this thread still holds the database's flusher: it was closed.
                if Arc::strong_count(shared) == 1 {
                    return;
                }
                requested = shared
                    .wake
                    .wait_timeout(requested, IDLE_CHECK_INTERVAL)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            *requested
        };
        let flushed = flush(&shared.wal, &mut directory_flushed_for);
        shared.flushed.send_modify(|state| match flushed {
            Ok(()) if state.failure.is_none() => state.through = target,
            Ok(()) => {}
            Err(error) => {
                tracing::error!(
                    wal = %shared.wal.display(),
                    %error,
                    "flushing the SQLite WAL to disk failed; no more writes are acknowledged"
                );
                state.failure = Some(format!("flushing {}: {error}", shared.wal.display()).into());
            }
        });
        through = target;
    }
}

/// Flushes the WAL file's data to the disk, and its directory entry the first time this file
/// is seen (a new WAL file must also be found after a power loss). The file is opened afresh
/// each time: SQLite deletes the WAL when its last connection closes and makes a new one later.
fn flush(wal: &Path, directory_flushed_for: &mut Option<u64>) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let file = match File::open(wal) {
        Ok(file) => file,
        // No WAL: the last connection closed, after copying every commit into the database
        // file and flushing it.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    file.sync_data()?;
    let inode = file.metadata()?.ino();
    if *directory_flushed_for != Some(inode) {
        if let Some(directory) = wal.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(directory)?.sync_all()?;
        }
        *directory_flushed_for = Some(inode);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_commit_waits_for_a_flush_that_began_after_it() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let database = dir.path().join("db.sqlite3");
        std::fs::write(dir.path().join("db.sqlite3-wal"), b"frames").expect("a WAL");
        let flusher = WalFlusher::start(&database).expect("a flusher");
        let waits: Vec<OnDisk> = (0..50).map(|_| flusher.after_commit()).collect();
        for wait in waits {
            wait.wait().await.expect("flushed");
        }
        assert_eq!(flusher.pending(), 0);
        flusher.after_commit().wait().await.expect("flushed");
        assert_eq!(flusher.pending(), 0);
    }

    #[tokio::test]
    async fn a_missing_wal_has_nothing_to_flush() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let flusher = WalFlusher::start(&dir.path().join("db.sqlite3")).expect("a flusher");
        flusher.after_commit().wait().await.expect("flushed");
    }

    #[tokio::test]
    async fn after_a_failed_flush_no_commit_is_acknowledged() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let database = dir.path().join("db.sqlite3");
        // A device where the WAL should be: opening it works, flushing it does not.
        std::os::unix::fs::symlink("/dev/null", dir.path().join("db.sqlite3-wal")).expect("a link");
        let flusher = WalFlusher::start(&database).expect("a flusher");
        assert!(flusher.failure().is_none(), "nothing failed yet");
        let first = flusher.after_commit().wait().await;
        let second = flusher.after_commit().wait().await;
        for outcome in [first, second] {
            let error = outcome.expect_err("a flush that failed acknowledges nothing");
            assert!(error.to_string().contains("restarted"), "{error:#}");
        }
        let failure = flusher.failure().expect("the failure is kept");
        assert!(failure.contains("db.sqlite3-wal"), "{failure}");
    }

    #[test]
    fn the_thread_ends_when_the_flusher_is_dropped() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let flusher = WalFlusher::start(&dir.path().join("db.sqlite3")).expect("a flusher");
        let shared = Arc::downgrade(&flusher.shared);
        drop(flusher);
        let deadline = std::time::Instant::now() + 5 * IDLE_CHECK_INTERVAL;
        while shared.upgrade().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the flushing thread kept running"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
