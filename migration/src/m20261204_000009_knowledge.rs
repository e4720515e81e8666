//! Knowledge bases (#25): `knowledge_bases`, their `documents` (the upload itself kept, so an
//! ingestion job can run again after a crash) and the documents' `chunks` (text, and the
//! embedding as little-endian `f32` bytes: a portable column, searched in process).
//! Full-text search is each engine's own: an FTS5 table on SQLite, a generated `tsvector`
//! column with a GIN index on PostgreSQL. `messages.citations` holds what an answer cites.

use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(KnowledgeBases::Table)
                    .if_not_exists()
                    .col(pk_uuid(KnowledgeBases::Id))
                    .col(uuid(KnowledgeBases::OwnerId))
                    .col(string(KnowledgeBases::Name))
                    .col(text(KnowledgeBases::Description))
                    .col(timestamp_with_time_zone(KnowledgeBases::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(KnowledgeBases::Table, KnowledgeBases::OwnerId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_knowledge_bases_owner")
                    .table(KnowledgeBases::Table)
                    .col(KnowledgeBases::OwnerId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Documents::Table)
                    .if_not_exists()
                    .col(pk_uuid(Documents::Id))
                    .col(uuid(Documents::KnowledgeBaseId))
                    .col(string(Documents::Name))
                    .col(string(Documents::MimeType))
                    .col(big_integer(Documents::Size))
                    .col(string(Documents::Status))
                    .col(double(Documents::Progress))
                    .col(text_null(Documents::Error))
                    .col(integer(Documents::ChunkCount))
                    .col(blob(Documents::Content))
                    .col(timestamp_with_time_zone(Documents::CreatedAt))
                    .col(timestamp_with_time_zone(Documents::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Documents::Table, Documents::KnowledgeBaseId)
                            .to(KnowledgeBases::Table, KnowledgeBases::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_documents_knowledge_base")
                    .table(Documents::Table)
                    .col(Documents::KnowledgeBaseId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Chunks::Table)
                    .if_not_exists()
                    .col(pk_uuid(Chunks::Id))
                    .col(uuid(Chunks::KnowledgeBaseId))
                    .col(uuid(Chunks::DocumentId))
                    .col(integer(Chunks::Position))
                    .col(text(Chunks::Text))
                    .col(blob_null(Chunks::Embedding))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Chunks::Table, Chunks::DocumentId)
                            .to(Documents::Table, Documents::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, col) in [
            ("idx_chunks_knowledge_base", Chunks::KnowledgeBaseId),
            ("idx_chunks_document", Chunks::DocumentId),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(Chunks::Table)
                        .col(col)
                        .to_owned(),
                )
                .await?;
        }
        // What an answer cites: the passages its knowledge searches gave the model (JSON).
        manager
            .alter_table(
                Table::alter()
                    .table(Messages::Table)
                    .add_column(text_null(Messages::Citations))
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        match manager.get_database_backend() {
            DatabaseBackend::Sqlite => {
                db.execute_unprepared(
                    "CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(\
                     text, chunk_id UNINDEXED, knowledge_base_id UNINDEXED, \
                     tokenize = 'porter unicode61')",
                )
                .await?;
            }
            _ => {
                db.execute_unprepared(
                    "ALTER TABLE chunks ADD COLUMN tsv tsvector \
                     GENERATED ALWAYS AS (to_tsvector('english', text)) STORED",
                )
                .await?;
                db.execute_unprepared("CREATE INDEX idx_chunks_tsv ON chunks USING GIN (tsv)")
                    .await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Messages::Table)
                    .drop_column(Messages::Citations)
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() == DatabaseBackend::Sqlite {
            manager
                .get_connection()
                .execute_unprepared("DROP TABLE IF EXISTS chunks_fts")
                .await?;
        }
        for table in [
            Chunks::Table.into_iden(),
            Documents::Table.into_iden(),
            KnowledgeBases::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum KnowledgeBases {
    Table,
    Id,
    OwnerId,
    Name,
    Description,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Documents {
    Table,
    Id,
    KnowledgeBaseId,
    Name,
    MimeType,
    Size,
    Status,
    Progress,
    Error,
    ChunkCount,
    Content,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Chunks {
    Table,
    Id,
    KnowledgeBaseId,
    DocumentId,
    Position,
    Text,
    Embedding,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Citations,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}
