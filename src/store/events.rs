//! The one append path. [`Store::execute`] runs a command against a conversation inside one
//! transaction: it loads the current state, lets the pure command decide the events, appends
//! them at the next `seq`s, applies them with the same `apply` that replays use, and writes
//! the touched projection rows. Concurrent writers are serialised (a row lock on PostgreSQL,
//! the single-writer turn on SQLite, where commands waiting together share one commit: see
//! [`GroupWriter`]); the unique index on (conversation, seq) is the last line of defence,
//! and losing that race is retried, never surfaced as a 500.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};

use entity::{conversation_events, conversations, messages};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use uuid::Uuid;

use super::records::{
    conversation_from_row, conversation_to_row, message_from_row, message_to_row,
};
use super::{is_retryable, Store, StoreError, StoreResult, WriteCounts};
use crate::domain::events::{ConversationEvent, RecordedEvent};
use crate::domain::projection::{apply, ConversationState};

const MAX_ATTEMPTS: u32 = 30;

/// What a successful command wrote.
#[derive(Debug)]
pub struct Committed {
    /// The loaded part of the conversation after the events were applied.
    pub state: ConversationState,
    /// The appended events, in `seq` order (empty when the command changed nothing).
    pub events: Vec<RecordedEvent>,
}

/// Which messages a command needs to see, besides the conversation row.
#[derive(Debug, Default, Clone)]
pub struct Load {
    pub messages: Vec<Uuid>,
    /// Any message carrying this idempotency key.
    pub client_message_id: Option<String>,
}

impl Load {
    pub fn messages(ids: &[Uuid]) -> Self {
        Self {
            messages: ids.to_vec(),
            client_message_id: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError<E> {
    #[error("command refused: {0}")]
    Refused(E),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Runs `decide` against the conversation's current state and commits its events.
    ///
    /// `load` names the messages `decide` needs to see; messages named by the events are
    /// loaded too before applying. `decide` may run more than once if a concurrent writer
    /// wins a race, so it must be pure.
    pub async fn execute<E, D>(
        &self,
        conversation_id: Uuid,
        actor_id: Option<Uuid>,
        load: &Load,
        decide: D,
    ) -> Result<Committed, ExecuteError<E>>
    where
        D: Fn(&ConversationState) -> Result<Vec<ConversationEvent>, E> + Send + Sync + 'static,
        E: Send + 'static,
    {
        let decide = Arc::new(decide);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = match &self.group {
                Some(group) => {
                    let job = Command {
                        conversation_id,
                        actor_id,
                        load: load.clone(),
                        decide: decide.clone(),
                    };
                    group.run(job).await
                }
                None => {
                    self.execute_once(conversation_id, actor_id, load, &*decide)
                        .await
                }
            };
            match outcome {
                Err(ExecuteError::Store(err)) if is_retryable(&err) && attempt < MAX_ATTEMPTS => {
                    tracing::debug!(%conversation_id, attempt, error = %err, "append lost a race; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(ExecuteError::Store(err)) if is_retryable(&err) => {
                    return Err(StoreError::Contention(attempt).into())
                }
                other => return other,
            }
        }
    }

    /// One attempt, in one transaction: committed if events were appended, rolled back
    /// otherwise, and always finished before returning, so the next writer never meets a
    /// lock left behind by a failed attempt.
    async fn execute_once<E>(
        &self,
        conversation_id: Uuid,
        actor_id: Option<Uuid>,
        load: &Load,
        decide: &impl Fn(&ConversationState) -> Result<Vec<ConversationEvent>, E>,
    ) -> Result<Committed, ExecuteError<E>> {
        let _turn = self.write_turn().await;
        let txn = self.db.begin().await.map_err(StoreError::from_db)?;
        match execute_in(&txn, conversation_id, actor_id, load, decide).await {
            Ok(committed) if !committed.events.is_empty() => {
                txn.commit().await.map_err(StoreError::from_db)?;
                WriteCounts::count(&self.writes.appends, 1);
                WriteCounts::count(&self.writes.commits, 1);
                Ok(committed)
            }
            other => {
                let _ = txn.rollback().await;
                other
            }
        }
    }
}

/// What the group writer needs: the connection, the single-writer turn it shares with the
/// store's other writes, and the counters.
#[derive(Clone)]
pub(super) struct Writer {
    db: DatabaseConnection,
    turn: Option<Arc<tokio::sync::Mutex<()>>>,
    writes: Arc<WriteCounts>,
}

/// One command for the group writer.
struct Command<D> {
    conversation_id: Uuid,
    actor_id: Option<Uuid>,
    load: Load,
    decide: Arc<D>,
}

/// What the group writer tells a command once the batch's commit is done (or failed).
type Deliver = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A command, type-erased: runs in the batch's transaction (in a savepoint of its own) and
/// returns whether it appended anything and how to deliver its result after the commit.
type Job =
    Box<dyn for<'t> FnOnce(&'t DatabaseTransaction) -> BoxFuture<'t, (bool, Deliver)> + Send>;

/// The most commands one group commit takes.
const MAX_GROUP: usize = 128;

/// Group commit for SQLite, which has one writer at a time. Commands queue for a writer
/// task that runs whatever is waiting in one transaction, each in a savepoint of its own (a
/// refused or failed command rolls back only itself), and commits once: a thousand answers
/// that start together share a few commits instead of waiting for a thousand. Nothing
/// waits to fill a batch: a command that finds the writer idle is committed alone. A caller
/// that goes away leaves its command to finish; the writer owns the transaction, so nothing
/// is left half done.
pub(super) struct GroupWriter {
    jobs: std::sync::OnceLock<mpsc::UnboundedSender<Job>>,
    /// What the writer task gets when the first job starts it.
    writer: Writer,
}

impl GroupWriter {
    pub(super) fn new(
        db: DatabaseConnection,
        turn: Option<Arc<tokio::sync::Mutex<()>>>,
        writes: Arc<WriteCounts>,
    ) -> Self {
        Self {
            jobs: std::sync::OnceLock::new(),
            writer: Writer { db, turn, writes },
        }
    }

    async fn run<E, D>(&self, command: Command<D>) -> Result<Committed, ExecuteError<E>>
    where
        D: Fn(&ConversationState) -> Result<Vec<ConversationEvent>, E> + Send + Sync + 'static,
        E: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |txn| {
            Box::pin(async move {
                let result = in_savepoint(txn, &command).await;
                let appended = result.as_ref().is_ok_and(|c| !c.events.is_empty());
                let deliver = Box::new(move |committed: Result<(), String>| {
                    let result = match (committed, result) {
                        (Err(err), Ok(c)) if !c.events.is_empty() => {
                            Err(group_commit_failed(err).into())
                        }
                        (_, result) => result,
                    };
                    let _ = reply.send(result);
                }) as Deliver;
                (appended, deliver)
            })
        });
        self.submit(job)?;
        answer.await.unwrap_or_else(|_| Err(writer_gone().into()))
    }

    /// Queues a job for the writer, starting the writer on first use.
    fn submit(&self, job: Job) -> StoreResult<()> {
        let jobs = self.jobs.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(write_groups(self.writer.clone(), receiver));
            sender
        });
        jobs.send(job).map_err(|_| writer_gone())
    }

    /// A running answer's checkpoint, committed with whatever else is waiting: a thousand
    /// streams checkpointing every second share commits too.
    pub(super) async fn checkpoint(&self, message_id: Uuid, content: String) -> StoreResult<()> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |txn| {
            Box::pin(async move {
                let result = super::streams::checkpoint_in(txn, message_id, &content).await;
                let deliver = Box::new(move |committed: Result<(), String>| {
                    let result = result.and(committed.map_err(group_commit_failed));
                    let _ = reply.send(result);
                }) as Deliver;
                (false, deliver)
            })
        });
        self.submit(job)?;
        answer.await.unwrap_or_else(|_| Err(writer_gone()))
    }
}

fn group_commit_failed(err: String) -> StoreError {
    StoreError::Db(sea_orm::DbErr::Custom(format!(
        "group commit failed: {err}"
    )))
}

fn writer_gone() -> StoreError {
    StoreError::Db(sea_orm::DbErr::Custom(
        "the database writer stopped before committing".into(),
    ))
}

async fn in_savepoint<E, D>(
    txn: &DatabaseTransaction,
    command: &Command<D>,
) -> Result<Committed, ExecuteError<E>>
where
    D: Fn(&ConversationState) -> Result<Vec<ConversationEvent>, E>,
{
    let savepoint = txn.begin().await.map_err(StoreError::from_db)?;
    let result = execute_in(
        &savepoint,
        command.conversation_id,
        command.actor_id,
        &command.load,
        &*command.decide,
    )
    .await;
    match result {
        Ok(committed) if !committed.events.is_empty() => {
            savepoint.commit().await.map_err(StoreError::from_db)?;
            Ok(committed)
        }
        other => {
            let _ = savepoint.rollback().await;
            other
        }
    }
}

/// The group writer's loop: take what is waiting (at most [`MAX_GROUP`]), run it in one
/// transaction under the single-writer turn, commit, tell everyone.
async fn write_groups(writer: Writer, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let Writer { db, turn, writes } = writer;
    let mut batch = Vec::with_capacity(MAX_GROUP);
    while jobs.recv_many(&mut batch, MAX_GROUP).await > 0 {
        let _turn = match &turn {
            Some(turn) => Some(turn.lock().await),
            None => None,
        };
        let txn = match db.begin().await {
            Ok(txn) => txn,
            Err(err) => {
                tracing::error!(error = %err, "could not begin a group commit");
                batch.clear(); // each command's caller hears that the writer dropped it
                continue;
            }
        };
        let mut delivers = Vec::with_capacity(batch.len());
        let mut appended = 0;
        let mut panicked = false;
        for job in batch.drain(..) {
            // A command that panics (a bug) must not take the writer down with it, and
            // whatever it half wrote must not be committed: the batch is rolled back and
            // every command in it told so; the commands not yet run are dropped, and their
            // callers hear that too.
            if panicked {
                continue;
            }
            match AssertUnwindSafe(job(&txn)).catch_unwind().await {
                Ok((appends, deliver)) => {
                    appended += u64::from(appends);
                    delivers.push(deliver);
                }
                Err(_) => {
                    tracing::error!(
                        "a command panicked in the group writer; rolling its batch back"
                    );
                    panicked = true;
                }
            }
        }
        let committed = if panicked {
            let _ = txn.rollback().await;
            Err("a command in the same batch failed; nothing was committed".to_string())
        } else {
            txn.commit().await.map_err(|e| e.to_string())
        };
        match &committed {
            Ok(()) if appended > 0 => {
                WriteCounts::count(&writes.appends, appended);
                WriteCounts::count(&writes.commits, 1);
            }
            Ok(()) => {}
            Err(err) => {
                tracing::error!(error = %err, commands = delivers.len(), "a group commit failed")
            }
        }
        for deliver in delivers {
            deliver(committed.clone());
        }
    }
}

async fn execute_in<E>(
    txn: &DatabaseTransaction,
    conversation_id: Uuid,
    actor_id: Option<Uuid>,
    load: &Load,
    decide: &impl Fn(&ConversationState) -> Result<Vec<ConversationEvent>, E>,
) -> Result<Committed, ExecuteError<E>> {
    let mut select = conversations::Entity::find_by_id(conversation_id);
    if txn.get_database_backend() == DbBackend::Postgres {
        // Writers to one conversation queue here instead of racing for the same seq.
        select = select.lock_exclusive();
    }
    let conversation = select.one(txn).await.map_err(StoreError::from_db)?;
    let mut state = ConversationState {
        conversation: conversation.map(conversation_from_row),
        ..Default::default()
    };
    load_messages(txn, conversation_id, &load.messages, &mut state).await?;
    if let Some(client_id) = &load.client_message_id {
        let rows = messages::Entity::find()
            .filter(messages::Column::ConversationId.eq(conversation_id))
            .filter(messages::Column::ClientMessageId.eq(client_id.as_str()))
            .all(txn)
            .await
            .map_err(StoreError::from_db)?;
        for row in rows {
            state.messages.insert(row.id, message_from_row(row));
        }
    }

    let events = decide(&state).map_err(ExecuteError::Refused)?;
    if events.is_empty() {
        return Ok(Committed {
            state,
            events: vec![],
        });
    }

    // The expected seq: whatever the log says, not the projection, in case they differ.
    let expected_seq = current_seq(txn, conversation_id).await?;
    let referenced: Vec<Uuid> = events
        .iter()
        .filter_map(ConversationEvent::message_id)
        .filter(|id| !state.messages.contains_key(id))
        .collect();
    load_messages(txn, conversation_id, &referenced, &mut state).await?;

    let now = super::now();
    let mut recorded = Vec::with_capacity(events.len());
    for (i, event) in events.into_iter().enumerate() {
        let event = RecordedEvent {
            conversation_id,
            seq: expected_seq + 1 + i as i64,
            actor_id,
            created_at: now,
            event,
        };
        apply(&mut state, &event).map_err(StoreError::from)?;
        recorded.push(event);
    }

    conversation_events::Entity::insert_many(recorded.iter().map(event_to_row))
        .exec(txn)
        .await
        .map_err(StoreError::from_db)?;
    write_projection(txn, &state).await?;
    Ok(Committed {
        state,
        events: recorded,
    })
}

fn backoff(attempt: u32) -> Duration {
    // Exponential with full jitter, capped: writers that collided spread out.
    let cap_ms = (1u64 << attempt.min(6)).min(50);
    let jitter = Uuid::new_v4().as_u128() as u64 % (cap_ms + 1);
    Duration::from_millis(1 + jitter)
}

async fn current_seq(db: &impl ConnectionTrait, conversation_id: Uuid) -> StoreResult<i64> {
    let last = conversation_events::Entity::find()
        .filter(conversation_events::Column::ConversationId.eq(conversation_id))
        .order_by_desc(conversation_events::Column::Seq)
        .one(db)
        .await
        .map_err(StoreError::from_db)?;
    Ok(last.map_or(0, |e| e.seq))
}

async fn load_messages(
    db: &impl ConnectionTrait,
    conversation_id: Uuid,
    ids: &[Uuid],
    state: &mut ConversationState,
) -> StoreResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let rows = messages::Entity::find()
        .filter(messages::Column::ConversationId.eq(conversation_id))
        .filter(messages::Column::Id.is_in(ids.iter().copied()))
        .all(db)
        .await
        .map_err(StoreError::from_db)?;
    for row in rows {
        state.messages.insert(row.id, message_from_row(row));
    }
    Ok(())
}

fn event_to_row(event: &RecordedEvent) -> conversation_events::ActiveModel {
    conversation_events::ActiveModel {
        id: Set(Uuid::now_v7()),
        conversation_id: Set(event.conversation_id),
        seq: Set(event.seq),
        event_type: Set(event.event.type_name().to_string()),
        data: Set(event.event.data()),
        actor_id: Set(event.actor_id),
        created_at: Set(event.created_at),
    }
}

pub(super) fn event_from_row(row: conversation_events::Model) -> StoreResult<RecordedEvent> {
    Ok(RecordedEvent {
        conversation_id: row.conversation_id,
        seq: row.seq,
        actor_id: row.actor_id,
        created_at: row.created_at,
        event: ConversationEvent::decode(&row.event_type, row.data)?,
    })
}

/// Writes the conversation row and every message row the applied events touched.
async fn write_projection(db: &impl ConnectionTrait, state: &ConversationState) -> StoreResult<()> {
    let Some(conversation) = &state.conversation else {
        return Ok(());
    };
    conversations::Entity::insert(conversation_to_row(conversation))
        .on_conflict(
            OnConflict::column(conversations::Column::Id)
                .update_columns([
                    conversations::Column::Title,
                    conversations::Column::SystemPrompt,
                    conversations::Column::Model,
                    conversations::Column::UpdatedAt,
                    conversations::Column::LastSeq,
                    conversations::Column::MessageCount,
                    conversations::Column::DeletedAt,
                ])
                .to_owned(),
        )
        .exec(db)
        .await
        .map_err(StoreError::from_db)?;

    let (present, removed): (Vec<Uuid>, Vec<Uuid>) = state
        .dirty_messages
        .iter()
        .partition(|id| state.messages.contains_key(id));
    if !removed.is_empty() {
        messages::Entity::delete_many()
            .filter(messages::Column::Id.is_in(removed))
            .exec(db)
            .await
            .map_err(StoreError::from_db)?;
    }
    for id in present {
        messages::Entity::insert(message_to_row(&state.messages[&id]))
            .on_conflict(
                OnConflict::column(messages::Column::Id)
                    .update_columns([
                        messages::Column::Content,
                        messages::Column::Status,
                        messages::Column::Model,
                        messages::Column::PromptTokens,
                        messages::Column::CompletionTokens,
                        messages::Column::UpdatedAt,
                    ])
                    .to_owned(),
            )
            .exec(db)
            .await
            .map_err(StoreError::from_db)?;
    }
    Ok(())
}

/// Empties the projections and replays every conversation's log into them, in one
/// transaction: readers see the old projections or the new, never half of each.
pub async fn rebuild_projections(db: &DatabaseConnection) -> StoreResult<RebuildReport> {
    let txn = db.begin().await.map_err(StoreError::from_db)?;
    messages::Entity::delete_many()
        .exec(&txn)
        .await
        .map_err(StoreError::from_db)?;
    conversations::Entity::delete_many()
        .exec(&txn)
        .await
        .map_err(StoreError::from_db)?;

    let ids: Vec<Uuid> = conversation_events::Entity::find()
        .select_only()
        .column(conversation_events::Column::ConversationId)
        .distinct()
        .into_tuple()
        .all(&txn)
        .await
        .map_err(StoreError::from_db)?;

    let mut report = RebuildReport::default();
    for conversation_id in ids {
        let rows = conversation_events::Entity::find()
            .filter(conversation_events::Column::ConversationId.eq(conversation_id))
            .order_by_asc(conversation_events::Column::Seq)
            .all(&txn)
            .await
            .map_err(StoreError::from_db)?;
        let mut state = ConversationState::default();
        for row in rows {
            apply(&mut state, &event_from_row(row)?)?;
            report.events += 1;
        }
        // Every surviving message is written, not only the ones marked dirty.
        state.dirty_messages.extend(state.messages.keys().copied());
        write_projection(&txn, &state).await?;
        report.conversations += 1;
    }
    txn.commit().await.map_err(StoreError::from_db)?;
    Ok(report)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RebuildReport {
    pub conversations: u64,
    pub events: u64,
}
