//! The durable job queue itself (#24), on both databases: workers of two instances claim
//! 500 jobs and run each exactly once; a dead worker's job is claimed again after its lease;
//! a failing job backs off and ends `failed` with its last error; a cancelled job stops.
//! These drive `JobRunner` over real databases with a handler of their own; the HTTP side
//! (titles, the admin endpoints, kill -9) is in `titles.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_server::config::JobsConfig;
use chat_server::domain::follow_ups::{JobRecord, NewJob};
use chat_server::domain::types::JobStatus;
use chat_server::metrics::Metrics;
use chat_server::service::jobs::{JobFailure, JobHandler, JobRunner};
use chat_server::store::{JobChange, JobFilter, Store};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::*;

/// Runs `{"fail": N, "sleepMs": M}` jobs: sleeps M ms, then fails the first N attempts.
/// Records every attempt (job id, attempt, when it started).
#[derive(Default)]
struct Recorder {
    runs: Mutex<Vec<(Uuid, i32, Instant)>>,
    /// Set when an attempt's future is dropped before it ended.
    abandoned: Mutex<Vec<Uuid>>,
}

struct Abandon<'a>(&'a Recorder, Uuid, bool);

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if !self.2 {
            self.0.abandoned.lock().unwrap().push(self.1);
        }
    }
}

impl JobHandler for Recorder {
    fn run<'a>(&'a self, job: &'a JobRecord) -> BoxFuture<'a, Result<(), JobFailure>> {
        async move {
            self.runs
                .lock()
                .unwrap()
                .push((job.id, job.attempts, Instant::now()));
            let mut guard = Abandon(self, job.id, false);
            let sleep = job.payload["sleepMs"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(sleep)).await;
            guard.2 = true;
            let fail = job.payload["fail"].as_i64().unwrap_or(0);
            if i64::from(job.attempts) <= fail {
                return Err(JobFailure::Retry(format!(
                    "attempt {} failed",
                    job.attempts
                )));
            }
            Ok(())
        }
        .boxed()
    }
}

fn config(workers: usize, lease_ms: u64, max_attempts: i32, retry_base_ms: u64) -> JobsConfig {
    JobsConfig {
        workers,
        lease: Duration::from_millis(lease_ms),
        max_attempts,
        retry_base: Duration::from_millis(retry_base_ms),
        poll: Duration::from_millis(20),
    }
}

/// A store on the scratch database, migrated.
async fn store(app: &TestApp) -> Store {
    let store = Store::connect(&app.database_url).await.expect("connect");
    store.migrate().await.expect("migrate");
    store
}

fn job(payload: serde_json::Value) -> NewJob {
    NewJob {
        kind: "test",
        payload,
        priority: 0,
        dedupe_key: None,
    }
}

async fn wait_for(store: &Store, status: JobStatus, count: usize) -> Vec<JobRecord> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let filter = JobFilter {
            status: Some(status),
            kind: None,
            limit: 1000,
        };
        let jobs = store.list_jobs(&filter).await.unwrap();
        if jobs.len() >= count {
            return jobs;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} jobs {status} after 60 s",
            jobs.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

backend_test!(
    five_hundred_jobs_on_two_instances_each_run_exactly_once,
    backend | backend: Backend | async move {
        let Some(app) = scratch(backend).await else { return };
        let (a, b) = (store(&app).await, store(&app).await);
        let mut ids = Vec::new();
        for i in 0..500 {
            let recorded = a.enqueue_job(&job(json!({"n": i, "sleepMs": i % 3}))).await.unwrap();
            ids.push(recorded.expect("no dedupe key: always recorded").id);
        }
        let recorder = Arc::new(Recorder::default());
        let stop = CancellationToken::new();
        let mut counts = Vec::new();
        for store in [&a, &b] {
            let runner = Arc::new(
                JobRunner::new(store.clone(), config(4, 5_000, 3, 10), Arc::new(Metrics::new()))
                    .handle("test", recorder.clone()),
            );
            counts.push(runner.clone().start(stop.clone()));
        }
        wait_for(&a, JobStatus::Done, 500).await;
        stop.cancel();
        for task in counts {
            task.await.unwrap();
        }
        let runs = recorder.runs.lock().unwrap().clone();
        let mut per_job: HashMap<Uuid, usize> = HashMap::new();
        for (id, attempt, _) in &runs {
            assert_eq!(*attempt, 1, "a job ran a second time");
            *per_job.entry(*id).or_default() += 1;
        }
        assert_eq!(runs.len(), 500, "each job runs once");
        ids.sort();
        let mut ran: Vec<Uuid> = per_job.keys().copied().collect();
        ran.sort();
        assert_eq!(ran, ids, "no job lost, none invented");
        let done = a.list_jobs(&JobFilter { status: Some(JobStatus::Done), kind: None, limit: 1000 }).await.unwrap();
        assert_eq!(done.len(), 500);
        assert!(done.iter().all(|j| j.attempts == 1 && j.lease_token.is_none()));
    }
);

backend_test!(
    a_dead_workers_job_is_claimed_again_once_its_lease_runs_out,
    backend | backend: Backend | async move {
        let Some(app) = scratch(backend).await else { return };
        let store = store(&app).await;
        let queued = store.enqueue_job(&job(json!({}))).await.unwrap().unwrap();
        // A worker claims it and dies: nothing renews or finishes the claim.
        let dead = store.claim_job(Duration::from_millis(300)).await.unwrap().unwrap();
        assert_eq!(dead.id, queued.id);
        assert_eq!(dead.status, JobStatus::Running);
        assert!(store.claim_job(Duration::from_secs(5)).await.unwrap().is_none(), "a claimed job is not claimed twice");

        let recorder = Arc::new(Recorder::default());
        let stop = CancellationToken::new();
        let runner = Arc::new(
            JobRunner::new(store.clone(), config(1, 300, 3, 10), Arc::new(Metrics::new()))
                .handle("test", recorder.clone()),
        );
        let started = Instant::now();
        let task = runner.start(stop.clone());
        let done = wait_for(&store, JobStatus::Done, 1).await;
        assert!(started.elapsed() >= Duration::from_millis(200), "claimed again before the lease ran out");
        assert_eq!(done[0].attempts, 2, "{:?}", done[0]);
        // The dead claim can no longer finish the job.
        let late = store.finish_job(dead.id, dead.lease_token.unwrap(), JobChange::Failed { error: "late".into() }).await.unwrap();
        assert!(!late);
        assert_eq!(store.find_job(dead.id).await.unwrap().unwrap().status, JobStatus::Done);
        stop.cancel();
        task.await.unwrap();
    }
);

backend_test!(
    a_failing_job_backs_off_and_ends_failed_with_its_last_error,
    backend | backend: Backend | async move {
        let Some(app) = scratch(backend).await else { return };
        let store = store(&app).await;
        let failing = store.enqueue_job(&job(json!({"fail": 99}))).await.unwrap().unwrap();
        let flaky = store.enqueue_job(&job(json!({"fail": 1}))).await.unwrap().unwrap();
        let recorder = Arc::new(Recorder::default());
        let stop = CancellationToken::new();
        let runner = Arc::new(
            JobRunner::new(store.clone(), config(2, 5_000, 3, 150), Arc::new(Metrics::new()))
                .handle("test", recorder.clone()),
        );
        let task = runner.start(stop.clone());
        wait_for(&store, JobStatus::Failed, 1).await;
        wait_for(&store, JobStatus::Done, 1).await;
        stop.cancel();
        task.await.unwrap();

        let failed = store.find_job(failing.id).await.unwrap().unwrap();
        assert_eq!(failed.status, JobStatus::Failed);
        assert_eq!(failed.attempts, 3);
        assert_eq!(failed.last_error.as_deref(), Some("attempt 3 failed"));
        let recovered = store.find_job(flaky.id).await.unwrap().unwrap();
        assert_eq!((recovered.status, recovered.attempts), (JobStatus::Done, 2));

        // Exponential backoff: 150 ms after the first failure, 300 ms after the second.
        let runs = recorder.runs.lock().unwrap().clone();
        let times: Vec<Instant> = runs.iter().filter(|r| r.0 == failing.id).map(|r| r.2).collect();
        assert_eq!(times.len(), 3);
        let gaps = [times[1] - times[0], times[2] - times[1]];
        assert!(gaps[0] >= Duration::from_millis(140), "{gaps:?}");
        assert!(gaps[1] >= Duration::from_millis(290), "{gaps:?}");
        assert!(gaps[1] > gaps[0], "{gaps:?}");
    }
);

backend_test!(
    a_job_cancelled_while_it_runs_stops_and_stays_cancelled,
    backend | backend: Backend | async move {
        let Some(app) = scratch(backend).await else { return };
        let store = store(&app).await;
        let long = store.enqueue_job(&job(json!({"sleepMs": 60_000}))).await.unwrap().unwrap();
        let recorder = Arc::new(Recorder::default());
        let stop = CancellationToken::new();
        let runner = Arc::new(
            JobRunner::new(store.clone(), config(1, 300, 3, 10), Arc::new(Metrics::new()))
                .handle("test", recorder.clone()),
        );
        let task = runner.clone().start(stop.clone());
        wait_for(&store, JobStatus::Running, 1).await;
        let cancelled = runner.cancel(long.id).await.unwrap();
        assert_eq!(cancelled.status, JobStatus::Cancelled);
        // The attempt stops at its next renewal (a third of the lease).
        let deadline = Instant::now() + Duration::from_secs(5);
        while recorder.abandoned.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the cancelled attempt kept running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        let job = store.find_job(long.id).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Cancelled, "{job:?}");
        assert_eq!(recorder.runs.lock().unwrap().len(), 1, "not claimed again");
        stop.cancel();
        task.await.unwrap();
    }
);
