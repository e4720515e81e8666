//! Storage: SeaORM over SQLite or PostgreSQL. This layer knows tables and transactions,
//! nothing about HTTP.

mod agents;
mod batch;
mod conversations;
mod events;
mod group_commit;
mod instances;
mod jobs;
mod knowledge;
mod limit_hits;
mod model_settings;
mod records;
mod refresh_tokens;
pub mod report;
mod streams;
mod users;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend, DbErr, SqlErr};
use tokio::sync::Mutex;
use uuid::Uuid;

pub use conversations::{ContextRow, ConversationPage};
pub use events::{rebuild_projections, Committed, ExecuteError, Load, RebuildReport};
pub use jobs::{JobChange, JobFilter};
pub use knowledge::PassageRow;
pub use model_settings::ModelSetting;
pub use refresh_tokens::RotateOutcome;
pub use streams::StoredTurn;
pub use users::{NewRole, NewUser, UserPatch, UserUpdate};

use crate::domain::events::{DecodeError, RecordedEvent};
use crate::domain::follow_ups::FollowUpRules;
use crate::domain::projection::ApplyError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    #[error("a unique value is already taken: {0}")]
    UniqueViolation(String),
    /// A deadlock, a serialization failure or a busy file, seen by a group of commands: each
    /// command tries again on its own (the database error itself stays with the group).
    #[error("a write lost a race with another writer: {0}")]
    LostRace(String),
    #[error("the conversation kept changing under concurrent writers; gave up after {0} attempts")]
    Contention(u32),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("projection failed: {0}")]
    Apply(#[from] ApplyError),
}

impl StoreError {
    /// Unique violations become their own variant so callers can turn them into a 409.
    fn from_db(err: DbErr) -> Self {
        match err.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(detail)) => Self::UniqueViolation(detail),
            _ => Self::Db(err),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The database handle the services use. Cloning is cheap.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// SQLite has one writer at a time; taking turns in-process avoids `SQLITE_BUSY`
    /// failures when a read transaction tries to upgrade. PostgreSQL locks rows instead.
    sqlite_writer: Option<Arc<Mutex<()>>>,
    /// Event appends and checkpoints go through one group-committing writer per process.
    group: Arc<group_commit::GroupWriter>,
    writes: Arc<WriteCounts>,
    /// Told of every commit of [`Store::execute`], once it is durable.
    on_append: Arc<std::sync::OnceLock<AppendHook>>,
    /// The background jobs appends leave behind (none until set).
    follow_ups: Arc<std::sync::OnceLock<FollowUpRules>>,
    /// Moves on whenever this process records a job.
    jobs_recorded: Arc<tokio::sync::watch::Sender<u64>>,
}

/// What [`Store::on_append`] calls: the conversation, its owner, and the events just
/// committed to it, in `seq` order.
pub type AppendHook = Box<dyn Fn(Uuid, Option<Uuid>, &[RecordedEvent]) + Send + Sync>;

/// What the store has written since it started, for `/metrics`: commands that appended
/// events, the transactions that committed them (fewer, when commits are grouped), the
/// appends retried after a lost race, and stream checkpoints.
#[derive(Debug, Default)]
pub struct WriteCounts {
    pub appends: std::sync::atomic::AtomicU64,
    pub commits: std::sync::atomic::AtomicU64,
    /// Appends tried again after losing a race for the next `seq`.
    pub retries: std::sync::atomic::AtomicU64,
    pub checkpoints: std::sync::atomic::AtomicU64,
}

impl WriteCounts {
    fn count(counter: &std::sync::atomic::AtomicU64, n: u64) {
        counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(counter: &std::sync::atomic::AtomicU64) -> u64 {
        counter.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Store {
    /// Connects with the default pool size ([`DEFAULT_MAX_CONNECTIONS`]).
    pub async fn connect(database_url: &str) -> anyhow::Result<Self> {
        Self::connect_with_pool(database_url, DEFAULT_MAX_CONNECTIONS).await
    }

    pub async fn connect_with_pool(
        database_url: &str,
        max_connections: u32,
    ) -> anyhow::Result<Self> {
        let db = connect(database_url, max_connections).await?;
        Ok(Self::from_connection(db))
    }

    pub fn from_connection(db: DatabaseConnection) -> Self {
        let sqlite = db.get_database_backend() == DbBackend::Sqlite;
        let sqlite_writer = sqlite.then(|| Arc::new(Mutex::new(())));
        let writes = Arc::<WriteCounts>::default();
        let follow_ups = Arc::<std::sync::OnceLock<FollowUpRules>>::default();
        let jobs_recorded = Arc::new(tokio::sync::watch::Sender::new(0));
        let group = Arc::new(group_commit::GroupWriter::new(
            db.clone(),
            sqlite_writer.clone(),
            writes.clone(),
            follow_ups.clone(),
            jobs_recorded.clone(),
        ));
        Self {
            db,
            sqlite_writer,
            group,
            writes,
            on_append: Arc::default(),
            follow_ups,
            jobs_recorded,
        }
    }

    /// Changes whenever this process records a job (other instances' jobs are found by
    /// looking).
    pub fn jobs_recorded(&self) -> tokio::sync::watch::Receiver<u64> {
        self.jobs_recorded.subscribe()
    }

    /// Records the jobs `rules` derive from every append from now on, in the append's own
    /// transaction. Set once; a later call is refused.
    pub fn record_follow_ups(&self, rules: FollowUpRules) -> Result<(), FollowUpRules> {
        self.follow_ups.set(rules)
    }

    /// Has `hook` told of every commit through this store (and its clones) from now on,
    /// after it is durable and before its caller hears of it. Set once; a later call is
    /// refused.
    pub fn on_append(&self, hook: AppendHook) -> Result<(), AppendHook> {
        self.on_append.set(hook)
    }

    pub fn writes(&self) -> &WriteCounts {
        &self.writes
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Open and idle connections of the pool.
    pub fn pool_usage(&self) -> (u32, usize) {
        match self.db.get_database_backend() {
            DbBackend::Sqlite => {
                let pool = self.db.get_sqlite_connection_pool();
                (pool.size(), pool.num_idle())
            }
            _ => {
                let pool = self.db.get_postgres_connection_pool();
                (pool.size(), pool.num_idle())
            }
        }
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        Migrator::up(&self.db, None)
            .await
            .context("running migrations")
    }

    /// A real round trip to the database, for the health check.
    pub async fn ping(&self) -> StoreResult<()> {
        self.db.ping().await.map_err(StoreError::Db)
    }

    async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.sqlite_writer {
            Some(lock) => Some(lock.lock().await),
            None => None,
        }
    }
}

/// Connections in a store's pool unless `DATABASE_MAX_CONNECTIONS` says otherwise. Appends
/// and checkpoints take one (the group writer); the rest serve reads and the other writes.
/// More than about twice the database's cores only moves the queue into the database: on
/// this project's 2-core machine with PostgreSQL beside the server, 200 answers starting at
/// once reached their first chunk sooner with 4 or 10 connections than with 20
/// (`BENCHMARKS.md`).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 8;

/// Opens the pool. SQLite gets WAL (readers never block the writer), foreign keys and a busy
/// timeout; its folder is created first so the default URL works on a fresh checkout.
pub async fn connect(
    database_url: &str,
    max_connections: u32,
) -> anyhow::Result<DatabaseConnection> {
    if let Some(dir) = sqlite_file_dir(database_url) {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating database folder {}", dir.display()))?;
    }
    let mut options = ConnectOptions::new(database_url.to_string());
    options
        .max_connections(max_connections)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|opts| {
            use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
            opts.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10))
        });
    Database::connect(options)
        .await
        .context("connecting to the database")
}

fn sqlite_file_dir(url: &str) -> Option<std::path::PathBuf> {
    sqlite_file(url)?
        .parent()
        .map(|p| p.to_path_buf())
        .filter(|p| !p.as_os_str().is_empty())
}

/// The database file of a `sqlite:` URL; `None` for other URLs and in-memory databases.
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let path = url
        .strip_prefix("sqlite:")?
        .trim_start_matches("//")
        .split('?')
        .next()?;
    if path.is_empty() || path.contains(":memory:") {
        return None;
    }
    Some(std::path::PathBuf::from(path))
}

/// Whether a failed write is worth trying again: a lost race for a `seq` (unique violation),
/// a busy SQLite file, or a PostgreSQL serialization failure or deadlock.
fn is_retryable(err: &StoreError) -> bool {
    match err {
        StoreError::UniqueViolation(_) | StoreError::LostRace(_) => true,
        StoreError::Db(db) => {
            let code = db_error_code(db);
            matches!(code.as_deref(), Some("5" | "6" | "517" | "40001" | "40P01"))
        }
        _ => false,
    }
}

fn db_error_code(err: &DbErr) -> Option<String> {
    use sea_orm::RuntimeErr;
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => e
            .as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned()),
        _ => None,
    }
}

/// [`now`] plus `later`.
pub fn now_plus(later: Duration) -> chrono::DateTime<chrono::Utc> {
    now() + chrono::Duration::from_std(later).unwrap_or(chrono::Duration::MAX)
}

/// The current time at the precision both databases keep (PostgreSQL stores microseconds),
/// so what a write returns equals what a later read returns.
pub(crate) fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}
