//! Durable background jobs: a table and a claim query, on both databases.
//!
//! A worker claims the next due job in one statement that marks it `running` under a new
//! lease token; on PostgreSQL the statement picks with `FOR UPDATE SKIP LOCKED`, so workers
//! of every instance claim at once without waiting on each other or taking one job twice.
//! SQLite has one writer: the same statement, run in the store's writer turn, is atomic. Only
//! the claim's token may finish the job; a worker whose lease ran out (and whose job went
//! back to the queue, or was cancelled) finds its token gone and changes nothing.

use chrono::{DateTime, Utc};
use entity::jobs;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement, Value,
};
use uuid::Uuid;

use super::{Store, StoreError, StoreResult};
use crate::domain::follow_ups::{JobRecord, NewJob};
use crate::domain::types::JobStatus;

/// Which jobs a listing shows, newest first.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub kind: Option<String>,
    pub limit: u64,
}

/// How a claimed attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobChange {
    Done,
    /// Failed, to be tried again from `at`.
    Retry {
        at: DateTime<Utc>,
        error: String,
    },
    /// Failed for good.
    Failed {
        error: String,
    },
    /// Stopped by its worker's shutdown: queued again at once, this attempt not counted.
    Released,
}

const COLUMNS: &str = "id, kind, payload, priority, status, attempts, run_at, lease_until, \
                       lease_token, last_error, dedupe_key, created_at, updated_at";

/// Records `jobs` (a job whose dedupe key exists already is skipped) on `db`, which may be
/// the transaction of the events they follow from.
pub(super) async fn insert_jobs(
    db: &impl ConnectionTrait,
    jobs: &[NewJob],
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let mut keys = std::collections::HashSet::new();
    let rows: Vec<jobs::ActiveModel> = jobs
        .iter()
        .filter(|job| {
            job.dedupe_key
                .as_ref()
                .is_none_or(|k| keys.insert(k.clone()))
        })
        .map(|job| jobs::ActiveModel {
            id: Set(Uuid::now_v7()),
            kind: Set(job.kind.to_string()),
            payload: Set(job.payload.to_string()),
            priority: Set(job.priority),
            status: Set(JobStatus::Queued.as_str().to_string()),
            attempts: Set(0),
            run_at: Set(now),
            lease_until: Set(None),
            lease_token: Set(None),
            last_error: Set(None),
            dedupe_key: Set(job.dedupe_key.clone()),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    jobs::Entity::insert_many(rows)
        .on_conflict(
            OnConflict::column(jobs::Column::DedupeKey)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await
        .map_err(StoreError::from_db)?;
    Ok(())
}

/// An update that moves jobs to `status` with no claim on them.
fn unclaimed(status: JobStatus, now: DateTime<Utc>) -> sea_orm::UpdateMany<jobs::Entity> {
    jobs::Entity::update_many()
        .col_expr(jobs::Column::Status, status.as_str().into())
        .col_expr(
            jobs::Column::LeaseUntil,
            Value::ChronoDateTimeUtc(None).into(),
        )
        .col_expr(jobs::Column::LeaseToken, Value::Uuid(None).into())
        .col_expr(jobs::Column::UpdatedAt, Value::from(now).into())
}

fn record(row: jobs::Model) -> JobRecord {
    JobRecord {
        id: row.id,
        kind: row.kind,
        // Written from `serde_json::Value` only; anything else is kept as a string.
        payload: serde_json::from_str(&row.payload)
            .unwrap_or(serde_json::Value::String(row.payload)),
        priority: row.priority,
        status: row.status.parse().unwrap_or(JobStatus::Failed),
        attempts: row.attempts,
        run_at: row.run_at,
        last_error: row.last_error,
        lease_token: row.lease_token,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

impl Store {
    /// Records one job now; `None` when its dedupe key exists already.
    pub async fn enqueue_job(&self, job: &NewJob) -> StoreResult<Option<JobRecord>> {
        let _turn = self.write_turn().await;
        insert_jobs(&self.db, std::slice::from_ref(job), super::now()).await?;
        drop(_turn);
        self.jobs_recorded.send_modify(|n| *n += 1);
        let Some(key) = &job.dedupe_key else {
            // Without a key the newest job of its kind is the one just written.
            let row = jobs::Entity::find()
                .filter(jobs::Column::Kind.eq(job.kind))
                .order_by_desc(jobs::Column::Id)
                .one(&self.db)
                .await
                .map_err(StoreError::from_db)?;
            return Ok(row.map(record));
        };
        let row = jobs::Entity::find()
            .filter(jobs::Column::DedupeKey.eq(key.as_str()))
            .one(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(row.map(record))
    }

    /// Claims the next due job (highest priority, then longest due) for `lease`: it is
    /// `running`, its attempts count this one, and only the returned token may finish it.
    pub async fn claim_job(&self, lease: std::time::Duration) -> StoreResult<Option<JobRecord>> {
        let now = super::now();
        let lease_until = now + chrono::Duration::from_std(lease).unwrap_or_default();
        let token = Uuid::now_v7();
        let lock = match self.backend() {
            DbBackend::Postgres => " FOR UPDATE SKIP LOCKED",
            _ => "",
        };
        let sql = format!(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_until = $1, \
             lease_token = $2, updated_at = $3 \
             WHERE id = (SELECT id FROM jobs WHERE status = 'queued' AND run_at <= $3 \
             ORDER BY priority DESC, run_at, id LIMIT 1{lock}) \
             RETURNING {COLUMNS}"
        );
        let statement = Statement::from_sql_and_values(
            self.backend(),
            sql,
            [
                Value::from(lease_until),
                Value::from(token),
                Value::from(now),
            ],
        );
        let _turn = self.write_turn().await;
        let row = jobs::Entity::find()
            .from_raw_sql(statement)
            .one(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(row.map(record))
    }

    /// Extends a running job's lease; `false` when the claim is no longer its own (the
    /// lease ran out and another took it, or an admin cancelled it).
    pub async fn renew_job(
        &self,
        id: Uuid,
        token: Uuid,
        lease: std::time::Duration,
    ) -> StoreResult<bool> {
        let now = super::now();
        let until = now + chrono::Duration::from_std(lease).unwrap_or_default();
        let _turn = self.write_turn().await;
        let result = jobs::Entity::update_many()
            .col_expr(jobs::Column::LeaseUntil, Value::from(until).into())
            .filter(jobs::Column::Id.eq(id))
            .filter(jobs::Column::LeaseToken.eq(token))
            .filter(jobs::Column::Status.eq(JobStatus::Running.as_str()))
            .exec(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(result.rows_affected == 1)
    }

    /// Ends the claimed attempt `token` of job `id`; `false` when the claim was no longer
    /// its own (nothing changes then).
    pub async fn finish_job(&self, id: Uuid, token: Uuid, change: JobChange) -> StoreResult<bool> {
        let now = super::now();
        let released = change == JobChange::Released;
        let (status, run_at, error) = match change {
            JobChange::Done => (JobStatus::Done, None, None),
            JobChange::Retry { at, error } => (JobStatus::Queued, Some(at), Some(error)),
            JobChange::Failed { error } => (JobStatus::Failed, None, Some(error)),
            JobChange::Released => (JobStatus::Queued, Some(now), None),
        };
        let mut update = unclaimed(status, now);
        if let Some(at) = run_at {
            update = update.col_expr(jobs::Column::RunAt, Value::from(at).into());
        }
        if let Some(error) = error {
            update = update.col_expr(jobs::Column::LastError, error.into());
        }
        if released {
            update = update.col_expr(
                jobs::Column::Attempts,
                sea_orm::sea_query::ExprTrait::sub(
                    sea_orm::sea_query::Expr::col(jobs::Column::Attempts),
                    1,
                ),
            );
        }
        let _turn = self.write_turn().await;
        let result = update
            .filter(jobs::Column::Id.eq(id))
            .filter(jobs::Column::LeaseToken.eq(token))
            .filter(jobs::Column::Status.eq(JobStatus::Running.as_str()))
            .exec(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(result.rows_affected == 1)
    }

    /// Gives back the jobs whose lease ran out (their worker died or stopped answering):
    /// queued again at once, or `failed` when they had their `max_attempts` already.
    /// Returns how many.
    pub async fn release_expired_jobs(&self, max_attempts: i32) -> StoreResult<u64> {
        let now = super::now();
        let statement = Statement::from_sql_and_values(
            self.backend(),
            "UPDATE jobs SET \
             status = CASE WHEN attempts >= $1 THEN 'failed' ELSE 'queued' END, \
             last_error = 'the worker running it stopped before it finished', \
             lease_until = NULL, lease_token = NULL, run_at = $2, updated_at = $2 \
             WHERE status = 'running' AND lease_until < $2",
            [Value::from(max_attempts), Value::from(now)],
        );
        let _turn = self.write_turn().await;
        let result = self
            .db
            .execute_raw(statement)
            .await
            .map_err(StoreError::from_db)?;
        Ok(result.rows_affected())
    }

    pub async fn list_jobs(&self, filter: &JobFilter) -> StoreResult<Vec<JobRecord>> {
        let mut query = jobs::Entity::find();
        if let Some(status) = filter.status {
            query = query.filter(jobs::Column::Status.eq(status.as_str()));
        }
        if let Some(kind) = &filter.kind {
            query = query.filter(jobs::Column::Kind.eq(kind.as_str()));
        }
        let rows = query
            .order_by_desc(jobs::Column::CreatedAt)
            .order_by_desc(jobs::Column::Id)
            .limit(filter.limit)
            .all(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(rows.into_iter().map(record).collect())
    }

    pub async fn find_job(&self, id: Uuid) -> StoreResult<Option<JobRecord>> {
        let row = jobs::Entity::find_by_id(id)
            .one(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(row.map(record))
    }

    /// Moves job `id` to `to` if its status is one of `from`: `Ok(Some(job))` after the
    /// change, `Ok(None)` for no such job, `Err(status)` when its status forbids it. A job
    /// queued again (retried) starts its attempts over, due at once.
    pub async fn move_job(
        &self,
        id: Uuid,
        from: &[JobStatus],
        to: JobStatus,
    ) -> StoreResult<Option<Result<JobRecord, JobStatus>>> {
        let now = super::now();
        let mut update = unclaimed(to, now);
        if to == JobStatus::Queued {
            update = update
                .col_expr(jobs::Column::Attempts, 0.into())
                .col_expr(jobs::Column::RunAt, Value::from(now).into());
        }
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let _turn = self.write_turn().await;
        // The row as this change left it (a worker may claim a queued job at once).
        let moved = update
            .filter(jobs::Column::Id.eq(id))
            .filter(jobs::Column::Status.is_in(from))
            .exec_with_returning(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        drop(_turn);
        if let Some(row) = moved.into_iter().next() {
            if to == JobStatus::Queued {
                self.jobs_recorded.send_modify(|n| *n += 1);
            }
            return Ok(Some(Ok(record(row))));
        }
        Ok(self.find_job(id).await?.map(|job| Err(job.status)))
    }
}
