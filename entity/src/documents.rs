//! A document of a knowledge base: the upload as it came (`content`), and where its
//! ingestion is (`pending`, `processing` with `progress` 0 to 1, `ready`, or `failed` with
//! `error`).
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "documents")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub knowledge_base_id: Uuid,
    pub name: String,
    pub mime_type: String,
    pub size: i64,
    pub status: String,
    pub progress: f64,
    pub error: Option<String>,
    pub chunk_count: i32,
    pub content: Vec<u8>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
