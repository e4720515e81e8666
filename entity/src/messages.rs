//! Projection: one message of a conversation. `position` is the `seq` of the event that
//! created it, which orders the conversation.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub position: i64,
    pub role: String,
    pub content: String,
    pub status: String,
    pub model: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    /// The sender's idempotency key for user messages (`clientMessageId`).
    pub client_message_id: Option<String>,
    /// The server instance that runs (or ran) this answer; `None` for other messages.
    pub instance_id: Option<Uuid>,
    /// Why another model than the conversation's answered (`circuit_open`, `queue_full`,
    /// `queue_wait`); `model` names the one that did.
    pub fallback_reason: Option<String>,
    /// The tools the answer called, with their results: a JSON array of
    /// `{callId, name, arguments, step, ok, content, ...}`; `None` when it called none.
    pub tool_calls: Option<String>,
    /// The passages the answer's knowledge searches gave the model: a JSON array of
    /// `{documentId, documentName, chunkId, snippet, score}`; `None` when it cites none.
    pub citations: Option<String>,
    /// The agent that answered.
    pub agent_id: Option<Uuid>,
    /// Milliseconds from the answer's start to its first token, and to its end.
    pub first_chunk_ms: Option<i64>,
    pub total_ms: Option<i64>,
    /// The latest checks and judge scores: JSON `{checks: [{name, passed, detail?}], judge?}`.
    pub validation: Option<String>,
    /// Bit masks of the checks that ran and of those that failed (`CheckName::bit`), and
    /// the judge's scores: what the quality report aggregates.
    pub checks_run: Option<i32>,
    pub checks_failed: Option<i32>,
    pub judge_relevance: Option<i32>,
    pub judge_groundedness: Option<i32>,
    /// The owner's rating (`up`/`down`), its comment and when it was given.
    pub rating: Option<String>,
    pub rating_comment: Option<String>,
    pub rated_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
