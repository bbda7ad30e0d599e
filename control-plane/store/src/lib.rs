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

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use streamspace_core::store::{Store, StoreError, WriteObserver};

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
}

/// PostgreSQL: a pool; transitions lock the session row.
pub struct PgStore {
    pool: PgPool,
    observer: observe::Observer,
}

impl PgStore {
    /// Times one write transaction (each is one operation).
    fn write_started(&self) -> observe::Timer<'_> {
        self.observer.start()
    }

    fn observe(&self, o: Arc<dyn WriteObserver>) {
        self.observer.set(o)
    }
}

mod sqlite_impl {
    use super::SqliteReads;
    crate::sql::sql_store!(SqliteReads, sqlx::Sqlite, "", None, None);
}

mod pg_impl {
    use super::PgStore;
    crate::sql::sql_store!(
        PgStore,
        sqlx::Postgres,
        " FOR UPDATE",
        Some(crate::sql::LOCK_AGENT_SLOTS),
        Some(crate::sql::LOCK_USER_QUOTA)
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
