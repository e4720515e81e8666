//! The background job workers: every instance runs `JOB_WORKERS` of them over the one jobs
//! table (see `store::jobs`). A worker claims the next due job for `JOB_LEASE_MS`, renews
//! the lease while the job runs, and records how the attempt ended: done; failed and tried
//! again after a backoff that doubles (`JOB_RETRY_BASE_MS`, at most ten minutes); or failed
//! for good after `JOB_MAX_ATTEMPTS`. A job whose worker died is given back once its lease
//! runs out. A job cancelled while it runs is stopped at its next lease renewal.
//!
//! Each kind of job has one handler; callers record jobs (or the store records them as
//! follow-ups of an append), never run them themselves.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use uuid::Uuid;

use super::{ServiceError, ServiceResult};
use crate::config::JobsConfig;
use crate::domain::follow_ups::JobRecord;
use crate::domain::types::JobStatus;
use crate::metrics::Metrics;
use crate::store::{JobChange, JobFilter, Store};

/// Why an attempt failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobFailure {
    /// Worth another attempt (the model was busy or failed).
    #[error("{0}")]
    Retry(String),
    /// Another attempt would fail the same way (the payload is not readable).
    #[error("{0}")]
    Permanent(String),
}

/// Runs the jobs of one kind.
pub trait JobHandler: Send + Sync + 'static {
    fn run<'a>(&'a self, job: &'a JobRecord) -> BoxFuture<'a, Result<(), JobFailure>>;
}

/// The longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

pub struct JobRunner {
    store: Store,
    config: JobsConfig,
    handlers: HashMap<&'static str, Arc<dyn JobHandler>>,
    metrics: Arc<Metrics>,
}

impl JobRunner {
    pub fn new(store: Store, config: JobsConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            config,
            handlers: HashMap::new(),
            metrics,
        }
    }

    /// Runs jobs of `kind` with `handler`.
    pub fn handle(mut self, kind: &'static str, handler: Arc<dyn JobHandler>) -> Self {
        self.handlers.insert(kind, handler);
        self
    }

    /// The wait before attempt `attempts + 1`, after `attempts` failed.
    pub fn backoff(&self, attempts: i32) -> Duration {
        let doublings = attempts.clamp(1, 20) as u32 - 1;
        self.config
            .retry_base
            .saturating_mul(1 << doublings)
            .min(MAX_BACKOFF)
    }

    /// Starts the workers and the sweep that gives back jobs of dead workers; they stop
    /// claiming when `stop` is cancelled, and a job running then is given back to the
    /// queue (not counted as an attempt) for the next start or another instance.
    pub fn start(self: Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut workers = tokio::task::JoinSet::new();
            for _ in 0..self.config.workers {
                workers.spawn(self.clone().work(stop.clone()));
            }
            workers.spawn(self.clone().sweep(stop.clone()));
            while workers.join_next().await.is_some() {}
        })
    }

    async fn sweep(self: Arc<Self>, stop: CancellationToken) {
        let every =
            (self.config.lease / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            match self
                .store
                .release_expired_jobs(self.config.max_attempts)
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::warn!(jobs = n, "gave back jobs whose worker stopped"),
                Err(err) => tracing::warn!(error = %err, "giving back expired jobs failed"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    async fn work(self: Arc<Self>, stop: CancellationToken) {
        let mut recorded = self.store.jobs_recorded();
        while !stop.is_cancelled() {
            recorded.borrow_and_update();
            match self.store.claim_job(self.config.lease).await {
                Ok(Some(job)) => self.run(job, &stop).await,
                Ok(None) => {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = recorded.changed() => {}
                        _ = tokio::time::sleep(self.config.poll) => {}
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "claiming a job failed");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(self.config.poll) => {}
                    }
                }
            }
        }
    }

    /// Runs one claimed job to its end, renewing its lease meanwhile.
    #[tracing::instrument(skip_all, fields(job_id = %job.id, kind = %job.kind, attempt = job.attempts))]
    async fn run(&self, job: JobRecord, stop: &CancellationToken) {
        let Some(token) = job.lease_token else {
            return;
        };
        let started = tokio::time::Instant::now();
        let outcome = match self.handlers.get(job.kind.as_str()) {
            None => Some(Err(JobFailure::Permanent(format!(
                "no handler for jobs of kind `{}`",
                job.kind
            )))),
            Some(handler) => {
                let running = handler.run(&job);
                tokio::pin!(running);
                let renew_every = self.config.lease / 3;
                loop {
                    tokio::select! {
                        result = &mut running => break Some(result),
                        _ = stop.cancelled() => break None,
                        _ = tokio::time::sleep(renew_every) => {
                            match self.store.renew_job(job.id, token, self.config.lease).await {
                                Ok(true) => {}
                                // Cancelled, or the lease ran out and the job went back:
                                // this attempt stops here.
                                Ok(false) => {
                                    self.count(&job.kind, "lost");
                                    return;
                                }
                                Err(err) => tracing::warn!(error = %err, "renewing a job's lease failed"),
                            }
                        }
                    }
                }
            }
        };
        self.metrics
            .job_duration
            .with_label_values(&[job.kind.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let (change, outcome) = match outcome {
            None => (JobChange::Released, "released"),
            Some(Ok(())) => (JobChange::Done, "done"),
            Some(Err(JobFailure::Retry(error))) if job.attempts < self.config.max_attempts => {
                let at = crate::store::now_plus(self.backoff(job.attempts));
                tracing::info!(error = %error, "a job failed; it will be tried again");
                (JobChange::Retry { at, error }, "retry")
            }
            Some(Err(failure)) => {
                tracing::warn!(error = %failure, "a job failed for good");
                (
                    JobChange::Failed {
                        error: failure.to_string(),
                    },
                    "failed",
                )
            }
        };
        match self.store.finish_job(job.id, token, change).await {
            Ok(true) => self.count(&job.kind, outcome),
            Ok(false) => self.count(&job.kind, "lost"),
            Err(err) => tracing::warn!(error = %err, "recording a job's end failed"),
        }
    }

    /// Jobs for an admin, newest first.
    pub async fn list(&self, filter: &JobFilter) -> ServiceResult<Vec<JobRecord>> {
        Ok(self.store.list_jobs(filter).await?)
    }

    /// A job that failed or was cancelled, queued again with its attempts starting over.
    pub async fn retry(&self, id: Uuid) -> ServiceResult<JobRecord> {
        self.transition(
            id,
            &[JobStatus::Failed, JobStatus::Cancelled],
            JobStatus::Queued,
        )
        .await
    }

    /// A job that waits or runs, cancelled: it is not claimed again, and a running attempt
    /// stops at its next lease renewal (a third of `JOB_LEASE_MS`) without recording an end.
    pub async fn cancel(&self, id: Uuid) -> ServiceResult<JobRecord> {
        self.transition(
            id,
            &[JobStatus::Queued, JobStatus::Running],
            JobStatus::Cancelled,
        )
        .await
    }

    async fn transition(
        &self,
        id: Uuid,
        from: &[JobStatus],
        to: JobStatus,
    ) -> ServiceResult<JobRecord> {
        match self.store.move_job(id, from, to).await? {
            None => Err(ServiceError::JobNotFound),
            Some(Ok(job)) => Ok(job),
            Some(Err(status)) => Err(ServiceError::Conflict(format!(
                "the job is {status}; only a job that is {} can be {}",
                from.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" or "),
                match to {
                    JobStatus::Queued => "retried",
                    _ => "cancelled",
                }
            ))),
        }
    }

    fn count(&self, kind: &str, outcome: &str) {
        self.metrics
            .jobs_finished
            .with_label_values(&[kind, outcome])
            .inc();
    }
}
