//! Group commit: the one way commands and checkpoints reach the database.
//!
//! SQLite has one writer at a time anyway. On PostgreSQL, commands on different
//! conversations could commit side by side, but a burst (200 answers ending in the same
//! 100 ms) then costs 200 transactions and as many WAL flushes, and the backends running
//! them take the cores that the live path needs: with two instances the crossing chunks'
//! p99 went from 5.8-6.3 ms to 3.3-5.1 ms when bursts were grouped (`docs/SCALING.md`).
//!
//! Commands queue for a writer task that takes whatever is waiting (at most [`MAX_GROUP`]),
//! runs it as one batch (see [`super::batch`]: a few statements for the whole batch, not a
//! dozen per command) in one transaction, and commits once. Nothing waits to fill a batch:
//! a command that finds the writer idle is committed alone. A caller that goes away leaves
//! its command to finish; the writer owns the transaction, so nothing is left half done.

use std::sync::Arc;

use sea_orm::{DatabaseConnection, TransactionTrait};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::batch::{self, Outcome, Pending};
use super::{StoreError, StoreResult, WriteCounts};
use crate::domain::follow_ups::FollowUpRules;

/// The most commands one group commit takes.
const MAX_GROUP: usize = 128;

/// What the writer task runs.
pub(super) enum Job {
    Command(Box<dyn Pending>),
    /// A running answer's text so far, committed with whatever else is waiting: a
    /// thousand streams checkpointing every second share commits too.
    Checkpoint {
        message_id: Uuid,
        content: String,
        reply: oneshot::Sender<StoreResult<()>>,
    },
}

/// The handle the store keeps; the writer task starts with the first job.
pub(super) struct GroupWriter {
    jobs: std::sync::OnceLock<mpsc::UnboundedSender<Job>>,
    writer: Writer,
}

/// What the writer task needs: the connection, the single-writer turn it shares with the
/// store's other writes, and the counters.
#[derive(Clone)]
struct Writer {
    db: DatabaseConnection,
    turn: Option<Arc<tokio::sync::Mutex<()>>>,
    writes: Arc<WriteCounts>,
    /// The jobs that follow from appends, recorded in the same transaction.
    follow_ups: Arc<std::sync::OnceLock<FollowUpRules>>,
    /// Counts commits that recorded jobs, for the workers waiting for one.
    jobs_recorded: Arc<tokio::sync::watch::Sender<u64>>,
}

impl GroupWriter {
    pub(super) fn new(
        db: DatabaseConnection,
        turn: Option<Arc<tokio::sync::Mutex<()>>>,
        writes: Arc<WriteCounts>,
        follow_ups: Arc<std::sync::OnceLock<FollowUpRules>>,
        jobs_recorded: Arc<tokio::sync::watch::Sender<u64>>,
    ) -> Self {
        Self {
            jobs: std::sync::OnceLock::new(),
            writer: Writer {
                db,
                turn,
                writes,
                follow_ups,
                jobs_recorded,
            },
        }
    }

    /// Queues a job for the writer, starting the writer on first use.
    pub(super) fn submit(&self, job: Job) -> StoreResult<()> {
        let jobs = self.jobs.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(write_groups(self.writer.clone(), receiver));
            sender
        });
        jobs.send(job).map_err(|_| writer_gone())
    }

    pub(super) async fn checkpoint(&self, message_id: Uuid, content: String) -> StoreResult<()> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Checkpoint {
            message_id,
            content,
            reply,
        })?;
        answer.await.unwrap_or_else(|_| Err(writer_gone()))
    }
}

pub(super) fn writer_gone() -> StoreError {
    StoreError::Db(sea_orm::DbErr::Custom(
        "the database writer stopped before committing".into(),
    ))
}

/// A failure of the whole batch, told to each command in it. A lost race (a unique
/// violation, a deadlock, a serialization failure) stays one, so the commands retry: their
/// next load sees what the log really holds.
fn shared(err: &StoreError) -> StoreError {
    match err {
        StoreError::UniqueViolation(detail) => StoreError::UniqueViolation(detail.clone()),
        other if super::is_retryable(other) => StoreError::LostRace(other.to_string()),
        other => StoreError::Db(sea_orm::DbErr::Custom(format!(
            "group commit failed: {other}"
        ))),
    }
}

/// The writer's loop: take what is waiting, run it in one transaction under the
/// single-writer turn, commit, tell everyone.
async fn write_groups(writer: Writer, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_GROUP);
    while jobs.recv_many(&mut batch, MAX_GROUP).await > 0 {
        let mut commands = Vec::with_capacity(batch.len());
        let mut checkpoints = Vec::new();
        for job in batch.drain(..) {
            match job {
                Job::Command(command) => commands.push(command),
                Job::Checkpoint {
                    message_id,
                    content,
                    reply,
                } => checkpoints.push((message_id, content, reply)),
            }
        }
        write_group(&writer, commands, checkpoints).await;
    }
}

type Checkpoint = (Uuid, String, oneshot::Sender<StoreResult<()>>);

async fn write_group(
    writer: &Writer,
    mut commands: Vec<Box<dyn Pending>>,
    checkpoints: Vec<Checkpoint>,
) {
    let _turn = match &writer.turn {
        Some(turn) => Some(turn.lock().await),
        None => None,
    };
    let failed =
        |err: &StoreError, commands: Vec<Box<dyn Pending>>, checkpoints: Vec<Checkpoint>| {
            tracing::error!(error = %err, commands = commands.len(), "a group commit failed");
            for command in commands {
                command.deliver(Outcome::Failed(shared(err)));
            }
            for (_, _, reply) in checkpoints {
                let _ = reply.send(Err(shared(err)));
            }
        };
    let txn = match writer.db.begin().await {
        Ok(txn) => txn,
        Err(err) => return failed(&StoreError::from_db(err), commands, checkpoints),
    };
    let rules = writer.follow_ups.get().copied().unwrap_or_default();
    let (outcomes, jobs) = match batch::run(&txn, &mut commands, rules).await {
        Ok(done) => done,
        Err(err) => {
            let _ = txn.rollback().await;
            return failed(&err, commands, checkpoints);
        }
    };
    // Checkpoints after the commands: one for an answer completed in this batch finds it
    // no longer streaming and leaves its final text alone.
    let (texts, replies): (Vec<_>, Vec<_>) = checkpoints
        .into_iter()
        .map(|(message_id, content, reply)| ((message_id, content), reply))
        .unzip();
    let saved = super::streams::checkpoint_in(&txn, &texts).await;
    let written: Vec<_> = replies
        .into_iter()
        .map(|reply| (saved.as_ref().map(|_| ()).map_err(shared), reply))
        .collect();
    let appended = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Done(done) if !done.events.is_empty()))
        .count() as u64;
    match txn.commit().await {
        Ok(()) => {
            if appended > 0 {
                WriteCounts::count(&writer.writes.appends, appended);
                WriteCounts::count(&writer.writes.commits, 1);
            }
            if jobs > 0 {
                writer.jobs_recorded.send_modify(|n| *n += 1);
            }
            for (command, outcome) in commands.into_iter().zip(outcomes) {
                command.deliver(outcome);
            }
            for (result, reply) in written {
                let _ = reply.send(result);
            }
        }
        Err(err) => {
            let err = StoreError::from_db(err);
            tracing::error!(error = %err, "a group commit failed");
            for (command, outcome) in commands.into_iter().zip(outcomes) {
                // What appended nothing did not need the commit.
                let outcome = match outcome {
                    Outcome::Done(done) if !done.events.is_empty() => Outcome::Failed(shared(&err)),
                    other => other,
                };
                command.deliver(outcome);
            }
            for (_, reply) in written {
                let _ = reply.send(Err(shared(&err)));
            }
        }
    }
}
