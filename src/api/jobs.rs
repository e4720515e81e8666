//! `/api/admin/jobs`: the durable background jobs, for the `admin` role only.

use chrono::{DateTime, Utc};
use poem_openapi::param::{Path, Query};
use poem_openapi::{payload::Json, Enum, Object, OpenApi};
use uuid::Uuid;

use super::error::ApiResult;
use super::security::BearerAuth;
use super::state::AppState;
use super::Tags;
use crate::domain::follow_ups::JobRecord;
use crate::domain::types::{self, Role};
use crate::store::JobFilter;

pub struct JobsApi {
    pub state: AppState,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting to be claimed (from `runAt` on).
    Queued,
    /// Claimed by a worker.
    Running,
    Done,
    /// Failed `JOB_MAX_ATTEMPTS` times, or in a way another try would not change.
    Failed,
    Cancelled,
}

impl From<types::JobStatus> for JobStatus {
    fn from(status: types::JobStatus) -> Self {
        match status {
            types::JobStatus::Queued => Self::Queued,
            types::JobStatus::Running => Self::Running,
            types::JobStatus::Done => Self::Done,
            types::JobStatus::Failed => Self::Failed,
            types::JobStatus::Cancelled => Self::Cancelled,
        }
    }
}

impl From<JobStatus> for types::JobStatus {
    fn from(status: JobStatus) -> Self {
        match status {
            JobStatus::Queued => Self::Queued,
            JobStatus::Running => Self::Running,
            JobStatus::Done => Self::Done,
            JobStatus::Failed => Self::Failed,
            JobStatus::Cancelled => Self::Cancelled,
        }
    }
}

/// A durable background job (a generated title, say).
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct Job {
    pub id: Uuid,
    /// What it does: `title`.
    pub kind: String,
    pub status: JobStatus,
    /// Attempts so far, the running one included.
    pub attempts: i32,
    /// Not run before this time (the backoff after a failed attempt).
    pub run_at: DateTime<Utc>,
    /// Why the last attempt failed.
    #[oai(nullable)]
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<JobRecord> for Job {
    fn from(job: JobRecord) -> Self {
        Self {
            id: job.id,
            kind: job.kind,
            status: job.status.into(),
            attempts: job.attempts,
            run_at: job.run_at,
            last_error: job.last_error,
            created_at: job.created_at,
            updated_at: job.updated_at,
        }
    }
}

fn default_limit() -> u64 {
    50
}

#[OpenApi(prefix_path = "/admin/jobs", tag = "Tags::Admin")]
impl JobsApi {
    /// List background jobs, newest first
    #[oai(path = "/", method = "get", operation_id = "adminListJobs")]
    async fn list(
        &self,
        auth: BearerAuth,
        /// Only jobs in this status.
        status: Query<Option<JobStatus>>,
        /// Only jobs of this kind.
        #[oai(validator(max_length = 100))]
        kind: Query<Option<String>>,
        /// At most this many (default 50, at most 200).
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "200"))
        )]
        limit: Query<u64>,
    ) -> ApiResult<Json<Vec<Job>>> {
        auth.require(Role::Admin)?;
        let filter = JobFilter {
            status: status.0.map(Into::into),
            kind: kind.0,
            limit: limit.0,
        };
        let jobs = self.state.jobs.list(&filter).await?;
        Ok(Json(jobs.into_iter().map(Job::from).collect()))
    }

    /// Run a failed or cancelled job again
    ///
    /// It is queued at once with its attempts starting over. 409 `CONFLICT` for a job
    /// that is queued, running or done; 404 `NOT_FOUND` for no such job.
    #[oai(path = "/:id/retry", method = "post", operation_id = "adminRetryJob")]
    async fn retry(&self, auth: BearerAuth, id: Path<Uuid>) -> ApiResult<Json<Job>> {
        auth.require(Role::Admin)?;
        Ok(Json(self.state.jobs.retry(id.0).await?.into()))
    }

    /// Cancel a queued or running job
    ///
    /// A queued job is never claimed; a running one stops at its worker's next lease
    /// renewal. 409 `CONFLICT` for a job that has ended; 404 `NOT_FOUND` for no such job.
    #[oai(path = "/:id/cancel", method = "post", operation_id = "adminCancelJob")]
    async fn cancel(&self, auth: BearerAuth, id: Path<Uuid>) -> ApiResult<Json<Job>> {
        auth.require(Role::Admin)?;
        Ok(Json(self.state.jobs.cancel(id.0).await?.into()))
    }
}
