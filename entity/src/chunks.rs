//! A passage of a document: its text and (with an embedding model) its vector, as
//! little-endian `f32` bytes. Full-text search uses `chunks_fts` (SQLite) or the generated
//! `tsv` column (PostgreSQL), which this entity leaves out.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "chunks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub knowledge_base_id: Uuid,
    pub document_id: Uuid,
    pub position: i32,
    pub text: String,
    pub embedding: Option<Vec<u8>>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
