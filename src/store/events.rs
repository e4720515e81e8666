//! The one append path. [`Store::execute`] runs a command against a conversation inside one
//! transaction: it loads the current state, lets the pure command decide the events, appends
//! them at the next `seq`s, applies them with the same `apply` that replays use, and writes
//! the touched projection rows. Concurrent writers are serialised (a row lock on PostgreSQL,
//! the single-writer turn on SQLite); the unique index on (conversation, seq) is the last
//! line of defence, and losing that race is retried, never surfaced as a 500.

use std::time::Duration;

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
use super::{is_retryable, Store, StoreError, StoreResult};
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
    pub async fn execute<E>(
        &self,
        conversation_id: Uuid,
        actor_id: Option<Uuid>,
        load: &Load,
        decide: impl Fn(&ConversationState) -> Result<Vec<ConversationEvent>, E>,
    ) -> Result<Committed, ExecuteError<E>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let _turn = self.write_turn().await;
            match self
                .execute_once(conversation_id, actor_id, load, &decide)
                .await
            {
                Err(ExecuteError::Store(err)) if is_retryable(&err) && attempt < MAX_ATTEMPTS => {
                    drop(_turn);
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
        let txn = self.db.begin().await.map_err(StoreError::from_db)?;
        match self
            .execute_in(&txn, conversation_id, actor_id, load, decide)
            .await
        {
            Ok(committed) if !committed.events.is_empty() => {
                txn.commit().await.map_err(StoreError::from_db)?;
                Ok(committed)
            }
            other => {
                let _ = txn.rollback().await;
                other
            }
        }
    }

    async fn execute_in<E>(
        &self,
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
