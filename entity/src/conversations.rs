//! Projection: a conversation as its event log leaves it. `deleted_at` is a tombstone so that
//! a deleted conversation stays 404 (its log is never deleted).
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "conversations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub owner_id: Uuid,
    pub title: String,
    pub system_prompt: Option<String>,
    pub model: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub last_seq: i64,
    pub message_count: i64,
    pub deleted_at: Option<DateTimeUtc>,
    /// The title is a placeholder (from the first message, or the default) that a generated
    /// title may replace; `false` once the user or the server set one.
    pub title_pending: bool,
    /// The agent that answers in it, if any.
    pub agent_id: Option<Uuid>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
