//! Reads of conversations, messages and the event log. Every read that serves a user is
//! filtered by owner in the query itself.

use entity::{conversation_events, conversations, messages};
use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, IsolationLevel, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
};
use uuid::Uuid;

use super::events::event_from_row;
use super::records::{conversation_from_row, message_from_row};
use super::{Store, StoreError, StoreResult};
use crate::domain::events::RecordedEvent;
use crate::domain::projection::{ConversationRecord, MessageRecord};
use crate::domain::types::{MessageRole, MessageStatus, ToolCallRecord};

/// A message as a model's context needs it.
#[derive(Clone, Debug)]
pub struct ContextRow {
    pub id: Uuid,
    /// Its place in the conversation (the `seq` of the event that added it).
    pub position: i64,
    pub role: MessageRole,
    pub content: String,
    /// The tools an answer called (for an agent's context; see `ContextWindow::offer_turn`).
    pub tool_calls: Vec<ToolCallRecord>,
}

pub struct ConversationPage {
    pub limit: u64,
    pub offset: u64,
}

impl Store {
    /// The owner's live conversations, most recently updated first.
    pub async fn list_conversations(
        &self,
        owner_id: Uuid,
        page: ConversationPage,
    ) -> StoreResult<Vec<ConversationRecord>> {
        let rows = conversations::Entity::find()
            .filter(conversations::Column::OwnerId.eq(owner_id))
            .filter(conversations::Column::DeletedAt.is_null())
            .order_by_desc(conversations::Column::UpdatedAt)
            .order_by_desc(conversations::Column::Id)
            .limit(page.limit)
            .offset(page.offset)
            .all(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(rows.into_iter().map(conversation_from_row).collect())
    }

    /// The conversation if it exists, is not deleted and belongs to `owner_id`.
    pub async fn find_conversation(
        &self,
        id: Uuid,
        owner_id: Uuid,
    ) -> StoreResult<Option<ConversationRecord>> {
        conversation_in(&self.db, id, owner_id).await
    }

    pub async fn list_messages(&self, conversation_id: Uuid) -> StoreResult<Vec<MessageRecord>> {
        messages_in(&self.db, conversation_id).await
    }

    /// The conversation's messages with `from <= position < to`, newest first. A range of
    /// positions (they are event `seq`s, so the range holds at most `to - from` messages)
    /// bounds what any plan reads: with `ORDER BY … LIMIT` alone, PostgreSQL may pick a
    /// bitmap scan and a sort over every message of a conversation its statistics think is
    /// short, which made the 5,000th turn of a fresh conversation read all 10,000 rows.
    pub async fn messages_between(
        &self,
        conversation_id: Uuid,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<MessageRecord>> {
        let rows = messages::Entity::find()
            .filter(messages::Column::ConversationId.eq(conversation_id))
            .filter(messages::Column::Position.gte(from))
            .filter(messages::Column::Position.lt(to))
            .order_by_desc(messages::Column::Position)
            .order_by_desc(messages::Column::Id)
            .all(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(rows.into_iter().map(message_from_row).collect())
    }

    /// What a model's context is built from: the `complete` messages with text before the
    /// position `to`, handed to `take` newest first until it returns `false` (the context
    /// is full). Read in ranges of positions (see [`Store::messages_between`] for why a
    /// range), 48 positions first and each further range twice the last, with
    /// only the columns a context needs: a turn reads what its budget holds, whatever the
    /// conversation's length.
    pub async fn context_messages(
        &self,
        conversation_id: Uuid,
        to: i64,
        take: impl FnMut(&ContextRow) -> bool,
    ) -> StoreResult<()> {
        context_rows_in(&self.db, conversation_id, to, take).await
    }

    /// The same, as of one snapshot, with the conversation as that snapshot has it (`None`
    /// if it is not `owner_id`'s): reads a context while another transaction appends, and
    /// says which state of the log (`last_seq`) and which system prompt and model it was
    /// read with.
    pub async fn context_snapshot(
        &self,
        conversation_id: Uuid,
        owner_id: Uuid,
        take: impl FnMut(&ContextRow) -> bool,
    ) -> StoreResult<Option<ConversationRecord>> {
        let txn = self.read_snapshot().await?;
        let Some(conversation) = conversation_in(&txn, conversation_id, owner_id).await? else {
            return Ok(None);
        };
        context_rows_in(&txn, conversation_id, conversation.last_seq + 1, take).await?;
        txn.commit().await.map_err(StoreError::from_db)?;
        Ok(Some(conversation))
    }

    /// One message of this conversation, if it is there.
    pub async fn find_message(
        &self,
        conversation_id: Uuid,
        message_id: Uuid,
    ) -> StoreResult<Option<MessageRecord>> {
        let row = messages::Entity::find_by_id(message_id)
            .filter(messages::Column::ConversationId.eq(conversation_id))
            .one(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(row.map(message_from_row))
    }

    /// The last user message before `position`: what an answer there answered.
    pub async fn user_message_before(
        &self,
        conversation_id: Uuid,
        position: i64,
    ) -> StoreResult<Option<MessageRecord>> {
        let row = messages::Entity::find()
            .filter(messages::Column::ConversationId.eq(conversation_id))
            .filter(messages::Column::Position.lt(position))
            .filter(messages::Column::Role.eq(MessageRole::User.as_str()))
            .order_by_desc(messages::Column::Position)
            .one(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(row.map(message_from_row))
    }

    /// The position of a message of this conversation, if it is there.
    pub async fn message_position(
        &self,
        conversation_id: Uuid,
        message_id: Uuid,
    ) -> StoreResult<Option<i64>> {
        messages::Entity::find_by_id(message_id)
            .filter(messages::Column::ConversationId.eq(conversation_id))
            .select_only()
            .column(messages::Column::Position)
            .into_tuple::<i64>()
            .one(&self.db)
            .await
            .map_err(StoreError::from_db)
    }

    /// The conversation and its messages as of one moment: both read in one snapshot, so
    /// the row's `lastSeq` and the messages agree even while an answer ends between the two
    /// reads (separate reads could show a message already `interrupted` beside the
    /// conversation's older `lastSeq`).
    pub async fn find_conversation_with_messages(
        &self,
        id: Uuid,
        owner_id: Uuid,
    ) -> StoreResult<Option<(ConversationRecord, Vec<MessageRecord>)>> {
        let txn = self.read_snapshot().await?;
        let Some(conversation) = conversation_in(&txn, id, owner_id).await? else {
            return Ok(None);
        };
        let messages = messages_in(&txn, id).await?;
        txn.commit().await.map_err(StoreError::from_db)?;
        Ok(Some((conversation, messages)))
    }

    /// Events with `after < seq <= up_to`, ascending, at most `limit` of them. Always a
    /// page: a long log is read page by page, never in one unbounded load.
    pub async fn list_events(
        &self,
        conversation_id: Uuid,
        after: i64,
        up_to: Option<i64>,
        limit: u64,
    ) -> StoreResult<Vec<RecordedEvent>> {
        let mut query = conversation_events::Entity::find()
            .filter(conversation_events::Column::ConversationId.eq(conversation_id))
            .filter(conversation_events::Column::Seq.gt(after))
            .order_by_asc(conversation_events::Column::Seq)
            .limit(limit);
        if let Some(up_to) = up_to {
            query = query.filter(conversation_events::Column::Seq.lte(up_to));
        }
        let rows = query.all(&self.db).await.map_err(StoreError::from_db)?;
        rows.into_iter().map(event_from_row).collect()
    }
}

impl Store {
    /// A read transaction whose reads all see one snapshot. PostgreSQL's default (read
    /// committed) takes a snapshot per statement; SQLite's read transaction keeps one from
    /// its first read (and takes no settings).
    async fn read_snapshot(&self) -> StoreResult<sea_orm::DatabaseTransaction> {
        let (isolation, access) = match self.db.get_database_backend() {
            DbBackend::Postgres => (
                Some(IsolationLevel::RepeatableRead),
                Some(AccessMode::ReadOnly),
            ),
            _ => (None, None),
        };
        self.db
            .begin_with_config(isolation, access)
            .await
            .map_err(StoreError::from_db)
    }
}

/// The positions read first for a context (a turn takes three seqs for two messages, so
/// about 32 messages), and the most read at once.
const CONTEXT_FIRST_RANGE: i64 = 48;
const CONTEXT_MAX_RANGE: i64 = 384;

async fn context_rows_in(
    db: &impl ConnectionTrait,
    conversation_id: Uuid,
    mut to: i64,
    mut take: impl FnMut(&ContextRow) -> bool,
) -> StoreResult<()> {
    let mut width = CONTEXT_FIRST_RANGE;
    while to > 0 {
        let from = (to - width).max(0);
        let rows: Vec<(Uuid, i64, String, String, Option<String>)> = messages::Entity::find()
            .filter(messages::Column::ConversationId.eq(conversation_id))
            .filter(messages::Column::Position.gte(from))
            .filter(messages::Column::Position.lt(to))
            .filter(messages::Column::Status.eq(MessageStatus::Complete.as_str()))
            .filter(messages::Column::Content.ne(""))
            .order_by_desc(messages::Column::Position)
            .select_only()
            .column(messages::Column::Id)
            .column(messages::Column::Position)
            .column(messages::Column::Role)
            .column(messages::Column::Content)
            .column(messages::Column::ToolCalls)
            .into_tuple()
            .all(db)
            .await
            .map_err(StoreError::from_db)?;
        for (id, position, role, content, tool_calls) in rows {
            let row = ContextRow {
                id,
                position,
                role: role.parse().unwrap_or(MessageRole::User),
                content,
                tool_calls: tool_calls
                    .and_then(|json| serde_json::from_str(&json).ok())
                    .unwrap_or_default(),
            };
            if !take(&row) {
                return Ok(());
            }
        }
        to = from;
        width = (width * 2).min(CONTEXT_MAX_RANGE);
    }
    Ok(())
}

async fn conversation_in(
    db: &impl ConnectionTrait,
    id: Uuid,
    owner_id: Uuid,
) -> StoreResult<Option<ConversationRecord>> {
    let row = conversations::Entity::find_by_id(id)
        .filter(conversations::Column::OwnerId.eq(owner_id))
        .filter(conversations::Column::DeletedAt.is_null())
        .one(db)
        .await
        .map_err(StoreError::from_db)?;
    Ok(row.map(conversation_from_row))
}

async fn messages_in(
    db: &impl ConnectionTrait,
    conversation_id: Uuid,
) -> StoreResult<Vec<MessageRecord>> {
    let rows = messages::Entity::find()
        .filter(messages::Column::ConversationId.eq(conversation_id))
        .order_by_asc(messages::Column::Position)
        .order_by_asc(messages::Column::Id)
        .all(db)
        .await
        .map_err(StoreError::from_db)?;
    Ok(rows.into_iter().map(message_from_row).collect())
}
