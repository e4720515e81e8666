//! The few writes and reads that streaming needs outside the event path: checkpoints of a
//! running answer's text (deliberately not events: deltas never enter the log) and finding
//! answers left `streaming` by a crash.

use entity::{conversation_events, messages};
use sea_orm::{
    sea_query::Expr, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
};
use uuid::Uuid;

use super::events::event_from_row;
use super::{Store, StoreError, StoreResult};
use crate::domain::events::{ConversationEvent, StreamCompleted};
use crate::domain::types::MessageStatus;

/// Checkpoints per statement at most: three bound values each, and a `CASE` of this many
/// branches is still cheap to evaluate per row.
const CHECKPOINTS_PER_STATEMENT: usize = 200;

/// Saves the text so far of several running answers, in one statement per
/// [`CHECKPOINTS_PER_STATEMENT`]: 200 answers that checkpoint together (they started
/// together) cost one round trip, not 200. Only messages still `streaming` are touched.
pub(super) async fn checkpoint_in(
    db: &impl ConnectionTrait,
    checkpoints: &[(Uuid, String)],
) -> StoreResult<()> {
    for chunk in checkpoints.chunks(CHECKPOINTS_PER_STATEMENT) {
        let Some(((first_id, first_content), rest)) = chunk.split_first() else {
            continue;
        };
        let content = rest
            .iter()
            .fold(
                Expr::case(messages::Column::Id.eq(*first_id), first_content.as_str()),
                |case, (id, content)| case.case(messages::Column::Id.eq(*id), content.as_str()),
            )
            .finally(Expr::col(messages::Column::Content));
        messages::Entity::update_many()
            .col_expr(messages::Column::Content, content.into())
            .filter(messages::Column::Id.is_in(chunk.iter().map(|(id, _)| *id)))
            .filter(messages::Column::Status.eq(MessageStatus::Streaming.as_str()))
            .exec(db)
            .await
            .map_err(StoreError::from_db)?;
    }
    Ok(())
}

/// The stored trace of one answer: its start and, once finished, its completion.
#[derive(Debug, Clone)]
pub struct StoredTurn {
    pub user_message_id: Uuid,
    pub assistant_message_id: Uuid,
    pub started_seq: i64,
    pub completed: Option<(i64, StreamCompleted)>,
}

impl Store {
    /// Saves a running answer's text so far. Only touches a message that is still
    /// streaming, so a late checkpoint can never overwrite a committed answer.
    /// It is committed by the group writer, with whatever else is waiting.
    pub async fn checkpoint_message(&self, message_id: Uuid, content: &str) -> StoreResult<()> {
        self.group
            .checkpoint(message_id, content.to_string())
            .await?;
        super::WriteCounts::count(&self.writes.checkpoints, 1);
        Ok(())
    }

    /// The answer started for a user message, from the log (used for repeated sends).
    pub async fn find_turn(
        &self,
        conversation_id: Uuid,
        user_message_id: Uuid,
    ) -> StoreResult<Option<StoredTurn>> {
        let rows = conversation_events::Entity::find()
            .filter(conversation_events::Column::ConversationId.eq(conversation_id))
            .filter(
                conversation_events::Column::EventType
                    .is_in(["stream_started", "stream_completed"]),
            )
            .order_by_asc(conversation_events::Column::Seq)
            .all(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        let mut turn: Option<StoredTurn> = None;
        for row in rows {
            let recorded = event_from_row(row)?;
            match recorded.event {
                ConversationEvent::StreamStarted(s)
                    if s.user_message_id == Some(user_message_id) =>
                {
                    turn = Some(StoredTurn {
                        user_message_id,
                        assistant_message_id: s.message_id,
                        started_seq: recorded.seq,
                        completed: None,
                    });
                }
                ConversationEvent::StreamCompleted(c) => {
                    if let Some(t) = turn
                        .as_mut()
                        .filter(|t| t.assistant_message_id == c.message_id)
                    {
                        t.completed = Some((recorded.seq, c));
                    }
                }
                _ => {}
            }
        }
        Ok(turn)
    }

    /// The conversation of `message_id` when it is a streaming answer in a conversation of
    /// `owner_id` (on whichever instance it runs): what a cancel from another instance needs.
    pub async fn streaming_answer_of(
        &self,
        message_id: Uuid,
        owner_id: Uuid,
    ) -> StoreResult<Option<Uuid>> {
        let Some(message) = messages::Entity::find_by_id(message_id)
            .filter(messages::Column::Status.eq(MessageStatus::Streaming.as_str()))
            .one(&self.db)
            .await
            .map_err(StoreError::from_db)?
        else {
            return Ok(None);
        };
        Ok(self
            .find_conversation(message.conversation_id, owner_id)
            .await?
            .map(|c| c.id))
    }

    /// How an answer ended, from the log: its `stream_completed` event's seq and data.
    pub async fn find_completion(
        &self,
        conversation_id: Uuid,
        message_id: Uuid,
    ) -> StoreResult<Option<(i64, StreamCompleted)>> {
        let rows = conversation_events::Entity::find()
            .filter(conversation_events::Column::ConversationId.eq(conversation_id))
            .filter(conversation_events::Column::EventType.eq("stream_completed"))
            .order_by_asc(conversation_events::Column::Seq)
            .all(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        for row in rows {
            let recorded = event_from_row(row)?;
            if let ConversationEvent::StreamCompleted(c) = recorded.event {
                if c.message_id == message_id {
                    return Ok(Some((recorded.seq, c)));
                }
            }
        }
        Ok(None)
    }
}
