//! The one append path. [`Store::execute`] runs a command against a conversation inside one
//! transaction: it loads the current state, lets the pure command decide the events, appends
//! them at the next `seq`s, applies them with the same `apply` that replays use, and writes
//! the touched projection rows ([`super::batch`] does the work, for one command or many).
//! Commands waiting together share one commit (see [`super::group_commit`]); writers in
//! other processes are serialised by a row lock on PostgreSQL, and SQLite serves one process;
//! the unique index on (conversation, seq) is the last line of defence, and losing that
//! race is retried (reading the seq from the log itself), never surfaced as a 500.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use entity::{conversation_events, conversations, messages};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
};
use uuid::Uuid;

use super::batch::{Outcome, Pending};
use super::group_commit::Job;
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
    /// `load` names the messages `decide` needs to see. `decide` may run more than once if
    /// a concurrent writer wins a race, so it must be pure.
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
            let (reply, answer) = oneshot::channel();
            let command = Box::new(Typed {
                conversation_id,
                actor_id,
                load: load.clone(),
                decide: decide.clone(),
                seq_from_log: attempt > 1,
                refusal: None,
                reply,
            });
            self.group.submit(Job::Command(command))?;
            let outcome = answer
                .await
                .unwrap_or_else(|_| Err(super::group_commit::writer_gone().into()));
            match outcome {
                Err(ExecuteError::Store(err)) if is_retryable(&err) && attempt < MAX_ATTEMPTS => {
                    tracing::debug!(%conversation_id, attempt, error = %err, "append lost a race; retrying");
                    WriteCounts::count(&self.writes.retries, 1);
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(ExecuteError::Store(err)) if is_retryable(&err) => {
                    return Err(StoreError::Contention(attempt).into())
                }
                Ok(committed) => {
                    if let Some(hook) = self.on_append.get() {
                        let owner = committed.state.conversation.as_ref().map(|c| c.owner_id);
                        hook(conversation_id, owner, &committed.events);
                    }
                    return Ok(committed);
                }
                other => return other,
            }
        }
    }
}

/// A command with its types: what [`Pending`] erases.
struct Typed<D, E> {
    conversation_id: Uuid,
    actor_id: Option<Uuid>,
    load: Load,
    decide: Arc<D>,
    seq_from_log: bool,
    /// Why `decide` refused, kept until the outcome is delivered.
    refusal: Option<E>,
    reply: oneshot::Sender<Result<Committed, ExecuteError<E>>>,
}

impl<D, E> Pending for Typed<D, E>
where
    D: Fn(&ConversationState) -> Result<Vec<ConversationEvent>, E> + Send + Sync + 'static,
    E: Send + 'static,
{
    fn conversation_id(&self) -> Uuid {
        self.conversation_id
    }

    fn actor_id(&self) -> Option<Uuid> {
        self.actor_id
    }

    fn load(&self) -> &Load {
        &self.load
    }

    fn seq_from_log(&self) -> bool {
        self.seq_from_log
    }

    fn decide(&mut self, state: &ConversationState) -> Result<Vec<ConversationEvent>, ()> {
        (self.decide)(state).map_err(|refusal| self.refusal = Some(refusal))
    }

    fn deliver(self: Box<Self>, outcome: Outcome) {
        let this = *self;
        let result = match (outcome, this.refusal) {
            (Outcome::Done(done), _) => Ok(done),
            (Outcome::Refused, Some(refusal)) => Err(ExecuteError::Refused(refusal)),
            (Outcome::Refused, None) => Err(StoreError::Db(sea_orm::DbErr::Custom(
                "a command was reported refused without a refusal".into(),
            ))
            .into()),
            (Outcome::Failed(err), _) => Err(err.into()),
        };
        let _ = this.reply.send(result);
    }
}

fn backoff(attempt: u32) -> Duration {
    // Exponential with full jitter, capped: writers that collided spread out.
    let cap_ms = (1u64 << attempt.min(6)).min(50);
    let jitter = Uuid::new_v4().as_u128() as u64 % (cap_ms + 1);
    Duration::from_millis(1 + jitter)
}

pub(super) fn event_to_row(event: &RecordedEvent) -> conversation_events::ActiveModel {
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
        super::batch::write_projections(&txn, &[&state]).await?;
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
