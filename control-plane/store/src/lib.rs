//! Store adapters: the core's [`Store`] trait on SQLite (the embedded
//! default) and PostgreSQL (production), chosen by the database URL in
//! [`open`]. This crate is the only one that speaks SQL; the domain rules
//! live in `streamspace-core`, which this crate depends on and which knows
//! nothing of it.
//!
//! # Layout
//! - `lib.rs`: [`open`] (URL -> store, migrations applied), the sqlx-backed
//!   PostgreSQL store and the read-only SQLite pool, and the mapping of
//!   database errors to [`StoreError`].
//! - `sql.rs`: the SQL, written once for both dialects, and the `sql_store!`
//!   macro that implements [`Store`] over an sqlx pool.
//! - `sqlite.rs`: [`SqliteStore`], the SQLite writer thread (rusqlite, group
//!   commit) that runs writes and the command path's reads.
//! - `rows.rs`: database rows <-> domain types (`streamspace_core::model`).
//! - `observe.rs`: the slot through which committed write transactions are
//!   timed for an observer (metrics), free while none is set.
//! - `../migrations/{sqlite,postgres}`: the schema of each dialect, applied
//!   by [`open`] through `sqlx::migrate!`.
#![forbid(unsafe_code)]

mod observe;
mod rows;
pub(crate) mod sql;
mod sqlite;

pub use sqlite::SqliteStore;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::mpsc;

use streamspace_core::store::{RemoteChange, Store, StoreError, WriteObserver};

/// The SQL store on a read-only SQLite pool: `SqliteStore` serves its cold
/// reads from here and everything else from its writer thread.
pub(crate) struct SqliteReads {
    pool: SqlitePool,
}

impl SqliteReads {
    /// Writes never come here: the writer thread times its own.
    fn write_started(&self) -> observe::Timer<'_> {
        observe::Timer::off()
    }

    fn observe(&self, _: Arc<dyn WriteObserver>) {}

    /// Only this process writes a SQLite database.
    fn origin(&self) -> &str {
        ""
    }

    fn listen(&self) -> Option<mpsc::UnboundedReceiver<RemoteChange>> {
        None
    }
}

/// PostgreSQL: a pool; transitions lock the session row.
pub struct PgStore {
    pool: PgPool,
    observer: observe::Observer,
    /// Names this process in its notifications, so it skips its own.
    origin: String,
}

impl PgStore {
    /// Times one write transaction (each is one operation).
    fn write_started(&self) -> observe::Timer<'_> {
        self.observer.start()
    }

    fn observe(&self, o: Arc<dyn WriteObserver>) {
        self.observer.set(o)
    }

    fn origin(&self) -> &str {
        &self.origin
    }

    /// Follows the other replicas' notifications on a connection of its
    /// own. sqlx's listener reconnects by itself after a lost connection;
    /// notifications sent meanwhile are gone, so a reconnect is reported as
    /// [`RemoteChange::Lost`].
    fn listen(&self) -> Option<mpsc::UnboundedReceiver<RemoteChange>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let pool = self.pool.clone();
        let origin = self.origin.clone();
        tokio::spawn(async move {
            loop {
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "listening for other replicas' changes; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if let Err(e) = listener.listen(sql::CHANGES_CHANNEL).await {
                    tracing::warn!(error = %e, "listening for other replicas' changes; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                // Whatever was sent before this point may be missed.
                if tx.send(RemoteChange::Lost).is_err() {
                    return;
                }
                loop {
                    match listener.try_recv().await {
                        Ok(Some(n)) => {
                            if let Some(c) = sql::remote_change(n.payload(), &origin)
                                && tx.send(c).is_err()
                            {
                                return;
                            }
                        }
                        // The connection was lost; the listener reconnects.
                        Ok(None) => {
                            if tx.send(RemoteChange::Lost).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "other replicas' changes: listener failed; reconnecting");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            break;
                        }
                    }
                    if tx.is_closed() {
                        return;
                    }
                }
            }
        });
        Some(rx)
    }
}

mod sqlite_impl {
    use super::SqliteReads;
    crate::sql::sql_store!(SqliteReads, sqlx::Sqlite, "", None, None, "");
}

mod pg_impl {
    use super::PgStore;
    crate::sql::sql_store!(
        PgStore,
        sqlx::Postgres,
        " FOR UPDATE",
        Some(crate::sql::LOCK_AGENT_SLOTS),
        Some(crate::sql::LOCK_USER_QUOTA),
        "SELECT pg_notify('streamspace_changes', $1)"
    );
}

pub(crate) fn db_err(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(d) = &e
        && d.is_unique_violation()
    {
        return StoreError::AlreadyExists(d.message().to_string());
    }
    StoreError::Backend(e.to_string())
}

/// Held while a control plane serves a SQLite database: an exclusive lock on
/// `<database>.lock`, released when dropped (or when the process dies).
#[derive(Debug)]
pub struct SingleReplica {
    _file: std::fs::File,
}

/// For a SQLite `url`, takes the lock that keeps a second control-plane
/// replica off the same database; `None` for PostgreSQL, which any number
/// of replicas share. SQLite is written by one process (its writer thread
/// batches every write), so a second process would race it: it is refused
/// with a message that says so and what to use instead.
pub fn single_replica(url: &str) -> Result<Option<SingleReplica>, StoreError> {
    if !url.starts_with("sqlite:") {
        return Ok(None);
    }
    let opts = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::Backend(format!("database url {url:?}: {e}")))?;
    let db = opts.get_filename();
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = std::path::PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(SingleReplica { _file: file })),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Backend(format!(
            "SQLite database {} is in use by another control-plane replica (it holds {}): SQLite runs exactly one replica; to run several, give every replica the same PostgreSQL database (--database-url postgres://...)",
            db.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Backend(format!(
            "locking {}: {e}",
            path.display()
        ))),
    }
}

/// Opens the store named by `url` (`sqlite://path`, `postgres://...`) and
/// applies its migrations.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| StoreError::Backend(format!("connecting to PostgreSQL: {e}")))?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend(format!("PostgreSQL migrations: {e}")))?;
        Ok(Arc::new(PgStore {
            pool,
            observer: observe::Observer::new("postgres"),
            origin: uuid::Uuid::new_v4().simple().to_string(),
        }))
    } else if url.starts_with("sqlite:") {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Backend(format!("database url {url:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let path = opts.get_filename().to_path_buf();
        if path.as_os_str().is_empty() || path.to_str() == Some(":memory:") {
            return Err(StoreError::Backend(format!(
                "database url {url:?}: SQLite needs a file (sqlite://PATH); an in-memory database cannot be shared by the writer and the readers"
            )));
        }
        // Migrations on a read-write connection, closed before the writer opens.
        let migrate = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .map_err(|e| StoreError::Backend(format!("opening SQLite {url:?}: {e}")))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&migrate)
            .await
            .map_err(|e| StoreError::Backend(format!("SQLite migrations: {e}")))?;
        migrate.close().await;
        let reads = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true))
            .await
            .map_err(|e| StoreError::Backend(format!("opening SQLite {url:?}: {e}")))?;
        Ok(Arc::new(SqliteStore::new(path, reads)?))
    } else {
        Err(StoreError::Backend(format!(
            "database url {url:?}: expected sqlite://PATH or postgres://..."
        )))
    }
}
