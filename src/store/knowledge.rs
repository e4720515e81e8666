//! Knowledge bases, documents and chunks. A document and the job that ingests it are
//! written in one transaction (so a crash cannot leave one without the other), and a
//! document's chunks replace any earlier ones in one transaction with its `ready` status
//! (so a search never sees half a document, and a failed ingestion leaves no chunks).
//! Full-text search is the engine's own: FTS5 with bm25 on SQLite, a `tsvector` with
//! `ts_rank_cd` on PostgreSQL; both get the query as bound words, never as SQL.

use entity::{chunks, documents, knowledge_bases};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait, Value,
};
use uuid::Uuid;

use super::{Store, StoreError, StoreResult};
use crate::domain::follow_ups::NewJob;
use crate::domain::knowledge::{
    vector_from_bytes, vector_to_bytes, DocumentRecord, KnowledgeBaseRecord, NewChunk,
};
use crate::domain::types::DocumentStatus;

/// A stored passage as a search shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct PassageRow {
    pub chunk_id: Uuid,
    pub document_id: Uuid,
    pub document_name: String,
    pub text: String,
}

/// A document's row without its bytes (only ingestion reads those).
#[derive(FromQueryResult)]
struct DocumentRow {
    id: Uuid,
    knowledge_base_id: Uuid,
    name: String,
    mime_type: String,
    size: i64,
    status: String,
    progress: f64,
    error: Option<String>,
    chunk_count: i32,
    created_at: chrono::DateTime<chrono::Utc>,
}

fn document(row: DocumentRow) -> DocumentRecord {
    DocumentRecord {
        id: row.id,
        knowledge_base_id: row.knowledge_base_id,
        name: row.name,
        mime_type: row.mime_type,
        size: row.size,
        status: row.status.parse().unwrap_or(DocumentStatus::Failed),
        progress: row.progress,
        error: row.error,
        chunk_count: row.chunk_count,
        created_at: row.created_at,
    }
}

/// The document columns without the bytes.
fn without_content(
    select: sea_orm::Select<documents::Entity>,
) -> sea_orm::Selector<sea_orm::SelectModel<DocumentRow>> {
    select
        .select_only()
        .columns([
            documents::Column::Id,
            documents::Column::KnowledgeBaseId,
            documents::Column::Name,
            documents::Column::MimeType,
            documents::Column::Size,
            documents::Column::Status,
            documents::Column::Progress,
            documents::Column::Error,
            documents::Column::ChunkCount,
            documents::Column::CreatedAt,
        ])
        .into_model::<DocumentRow>()
}

impl Store {
    pub async fn insert_knowledge_base(&self, kb: &KnowledgeBaseRecord) -> StoreResult<()> {
        let _turn = self.write_turn().await;
        knowledge_bases::Entity::insert(knowledge_bases::ActiveModel {
            id: Set(kb.id),
            owner_id: Set(kb.owner_id),
            name: Set(kb.name.clone()),
            description: Set(kb.description.clone()),
            created_at: Set(kb.created_at),
        })
        .exec_without_returning(&self.db)
        .await
        .map_err(StoreError::from_db)?;
        Ok(())
    }

    /// The owner's knowledge bases, newest first, with their document counts.
    pub async fn knowledge_bases_of(&self, owner: Uuid) -> StoreResult<Vec<KnowledgeBaseRecord>> {
        let rows = knowledge_bases::Entity::find()
            .filter(knowledge_bases::Column::OwnerId.eq(owner))
            .order_by_desc(knowledge_bases::Column::CreatedAt)
            .order_by_desc(knowledge_bases::Column::Id)
            .all(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.with_count(row).await?);
        }
        Ok(out)
    }

    pub async fn find_knowledge_base(&self, id: Uuid) -> StoreResult<Option<KnowledgeBaseRecord>> {
        match knowledge_bases::Entity::find_by_id(id)
            .one(&self.db)
            .await
            .map_err(StoreError::from_db)?
        {
            Some(row) => Ok(Some(self.with_count(row).await?)),
            None => Ok(None),
        }
    }

    /// Those of `ids` that are knowledge bases of `owner` (no counts read).
    pub async fn knowledge_bases_owned(&self, owner: Uuid, ids: &[Uuid]) -> StoreResult<Vec<Uuid>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        knowledge_bases::Entity::find()
            .filter(knowledge_bases::Column::OwnerId.eq(owner))
            .filter(knowledge_bases::Column::Id.is_in(ids.iter().copied()))
            .select_only()
            .column(knowledge_bases::Column::Id)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(StoreError::from_db)
    }

    async fn with_count(&self, row: knowledge_bases::Model) -> StoreResult<KnowledgeBaseRecord> {
        let count = documents::Entity::find()
            .filter(documents::Column::KnowledgeBaseId.eq(row.id))
            .count(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(KnowledgeBaseRecord {
            id: row.id,
            owner_id: row.owner_id,
            name: row.name,
            description: row.description,
            document_count: count as i64,
            created_at: row.created_at,
        })
    }

    /// Deletes a knowledge base with its documents and chunks; `false` if it was not there.
    pub async fn delete_knowledge_base(&self, id: Uuid) -> StoreResult<bool> {
        let _turn = self.write_turn().await;
        let txn = self.db.begin().await.map_err(StoreError::from_db)?;
        delete_fts(&txn, FtsOf::KnowledgeBase(id)).await?;
        chunks::Entity::delete_many()
            .filter(chunks::Column::KnowledgeBaseId.eq(id))
            .exec(&txn)
            .await
            .map_err(StoreError::from_db)?;
        documents::Entity::delete_many()
            .filter(documents::Column::KnowledgeBaseId.eq(id))
            .exec(&txn)
            .await
            .map_err(StoreError::from_db)?;
        let deleted = knowledge_bases::Entity::delete_by_id(id)
            .exec(&txn)
            .await
            .map_err(StoreError::from_db)?
            .rows_affected;
        txn.commit().await.map_err(StoreError::from_db)?;
        Ok(deleted > 0)
    }

    /// Stores an upload and the job that ingests it, in one transaction.
    pub async fn insert_document(
        &self,
        doc: &DocumentRecord,
        content: Vec<u8>,
        job: &NewJob,
    ) -> StoreResult<()> {
        let _turn = self.write_turn().await;
        let txn = self.db.begin().await.map_err(StoreError::from_db)?;
        documents::Entity::insert(documents::ActiveModel {
            id: Set(doc.id),
            knowledge_base_id: Set(doc.knowledge_base_id),
            name: Set(doc.name.clone()),
            mime_type: Set(doc.mime_type.clone()),
            size: Set(doc.size),
            status: Set(doc.status.as_str().to_string()),
            progress: Set(doc.progress),
            error: Set(doc.error.clone()),
            chunk_count: Set(doc.chunk_count),
            content: Set(content),
            created_at: Set(doc.created_at),
            updated_at: Set(doc.created_at),
        })
        .exec_without_returning(&txn)
        .await
        .map_err(StoreError::from_db)?;
        super::jobs::insert_jobs(&txn, std::slice::from_ref(job), super::now()).await?;
        txn.commit().await.map_err(StoreError::from_db)?;
        drop(_turn);
        self.jobs_recorded.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The knowledge base's documents, newest first.
    pub async fn documents_of(&self, knowledge_base_id: Uuid) -> StoreResult<Vec<DocumentRecord>> {
        let rows = without_content(
            documents::Entity::find()
                .filter(documents::Column::KnowledgeBaseId.eq(knowledge_base_id))
                .order_by_desc(documents::Column::CreatedAt)
                .order_by_desc(documents::Column::Id),
        )
        .all(&self.db)
        .await
        .map_err(StoreError::from_db)?;
        Ok(rows.into_iter().map(document).collect())
    }

    pub async fn find_document(&self, id: Uuid) -> StoreResult<Option<DocumentRecord>> {
        let row = without_content(documents::Entity::find_by_id(id))
            .one(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(row.map(document))
    }

    /// The upload as it came.
    pub async fn document_content(&self, id: Uuid) -> StoreResult<Option<Vec<u8>>> {
        documents::Entity::find_by_id(id)
            .select_only()
            .column(documents::Column::Content)
            .into_tuple::<Vec<u8>>()
            .one(&self.db)
            .await
            .map_err(StoreError::from_db)
    }

    /// Deletes a document and its chunks; `false` if it was not there.
    pub async fn delete_document(&self, id: Uuid) -> StoreResult<bool> {
        let _turn = self.write_turn().await;
        let txn = self.db.begin().await.map_err(StoreError::from_db)?;
        delete_fts(&txn, FtsOf::Document(id)).await?;
        chunks::Entity::delete_many()
            .filter(chunks::Column::DocumentId.eq(id))
            .exec(&txn)
            .await
            .map_err(StoreError::from_db)?;
        let deleted = documents::Entity::delete_by_id(id)
            .exec(&txn)
            .await
            .map_err(StoreError::from_db)?
            .rows_affected;
        txn.commit().await.map_err(StoreError::from_db)?;
        Ok(deleted > 0)
    }

    /// Records where a document's ingestion is; `false` if the document is gone.
    pub async fn set_document_status(
        &self,
        id: Uuid,
        status: DocumentStatus,
        progress: f64,
        error: Option<&str>,
    ) -> StoreResult<bool> {
        let _turn = self.write_turn().await;
        let updated = documents::Entity::update_many()
            .col_expr(documents::Column::Status, status.as_str().into())
            .col_expr(documents::Column::Progress, progress.into())
            .col_expr(documents::Column::Error, error.map(str::to_string).into())
            .col_expr(documents::Column::UpdatedAt, super::now().into())
            .filter(documents::Column::Id.eq(id))
            .exec(&self.db)
            .await
            .map_err(StoreError::from_db)?
            .rows_affected;
        Ok(updated > 0)
    }

    /// Replaces a document's chunks with `new` and marks it `ready`, in one transaction;
    /// `false` if the document is gone (deleted while it was ingested).
    pub async fn store_chunks(&self, doc: &DocumentRecord, new: &[NewChunk]) -> StoreResult<bool> {
        let _turn = self.write_turn().await;
        let txn = self.db.begin().await.map_err(StoreError::from_db)?;
        let present = documents::Entity::find_by_id(doc.id)
            .select_only()
            .column(documents::Column::Id)
            .into_tuple::<Uuid>()
            .one(&txn)
            .await
            .map_err(StoreError::from_db)?
            .is_some();
        if !present {
            return Ok(false);
        }
        delete_fts(&txn, FtsOf::Document(doc.id)).await?;
        chunks::Entity::delete_many()
            .filter(chunks::Column::DocumentId.eq(doc.id))
            .exec(&txn)
            .await
            .map_err(StoreError::from_db)?;
        for batch in new.chunks(200) {
            chunks::Entity::insert_many(batch.iter().map(|c| chunks::ActiveModel {
                id: Set(c.id),
                knowledge_base_id: Set(doc.knowledge_base_id),
                document_id: Set(doc.id),
                position: Set(c.position),
                text: Set(c.text.clone()),
                embedding: Set(c.embedding.as_deref().map(vector_to_bytes)),
            }))
            .exec_without_returning(&txn)
            .await
            .map_err(StoreError::from_db)?;
        }
        if txn.get_database_backend() == DbBackend::Sqlite {
            for c in new {
                txn.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Sqlite,
                    "INSERT INTO chunks_fts (text, chunk_id, knowledge_base_id) VALUES (?, ?, ?)",
                    [
                        c.text.clone().into(),
                        c.id.to_string().into(),
                        doc.knowledge_base_id.to_string().into(),
                    ],
                ))
                .await
                .map_err(StoreError::from_db)?;
            }
        }
        documents::Entity::update_many()
            .col_expr(
                documents::Column::Status,
                DocumentStatus::Ready.as_str().into(),
            )
            .col_expr(documents::Column::Progress, 1.0f64.into())
            .col_expr(documents::Column::Error, Option::<String>::None.into())
            .col_expr(documents::Column::ChunkCount, (new.len() as i32).into())
            .col_expr(documents::Column::UpdatedAt, super::now().into())
            .filter(documents::Column::Id.eq(doc.id))
            .exec(&txn)
            .await
            .map_err(StoreError::from_db)?;
        txn.commit().await.map_err(StoreError::from_db)?;
        Ok(true)
    }

    /// The best full-text matches for any of `terms` (plain words) in the knowledge bases,
    /// best first, with the engine's score (higher is better).
    pub async fn fulltext_search(
        &self,
        knowledge_base_ids: &[Uuid],
        terms: &[String],
        limit: usize,
    ) -> StoreResult<Vec<(Uuid, f64)>> {
        if knowledge_base_ids.is_empty() || terms.is_empty() {
            return Ok(Vec::new());
        }
        let backend = self.backend();
        let (sql, values): (String, Vec<Value>) = match backend {
            DbBackend::Sqlite => {
                // Each word a quoted FTS5 string: nothing in it is query syntax.
                let query = terms
                    .iter()
                    .map(|t| format!("\"{}\"", t.replace('"', "")))
                    .collect::<Vec<_>>()
                    .join(" OR ");
                let marks = vec!["?"; knowledge_base_ids.len()].join(", ");
                let mut values: Vec<Value> = vec![query.into()];
                values.extend(knowledge_base_ids.iter().map(|id| id.to_string().into()));
                values.push((limit as i64).into());
                (
                    format!(
                        "SELECT chunk_id, bm25(chunks_fts) AS rank FROM chunks_fts \
                         WHERE chunks_fts MATCH ? AND knowledge_base_id IN ({marks}) \
                         ORDER BY rank LIMIT ?"
                    ),
                    values,
                )
            }
            _ => {
                let query = terms.join(" | ");
                let marks = (0..knowledge_base_ids.len())
                    .map(|i| format!("${}", i + 2))
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut values: Vec<Value> = vec![query.into()];
                values.extend(knowledge_base_ids.iter().map(|id| (*id).into()));
                values.push((limit as i64).into());
                (
                    format!(
                        "SELECT id AS chunk_id, ts_rank_cd(tsv, q) AS rank \
                         FROM chunks, to_tsquery('english', $1) q \
                         WHERE tsv @@ q AND knowledge_base_id IN ({marks}) \
                         ORDER BY rank DESC, id LIMIT ${}",
                        knowledge_base_ids.len() + 2
                    ),
                    values,
                )
            }
        };
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(backend, sql, values))
            .await
            .map_err(StoreError::from_db)?;
        let mut hits = Vec::with_capacity(rows.len());
        for row in rows {
            let (id, rank) = match backend {
                DbBackend::Sqlite => {
                    let id: String = row.try_get("", "chunk_id").map_err(StoreError::from_db)?;
                    let rank: f64 = row.try_get("", "rank").map_err(StoreError::from_db)?;
                    (id.parse().ok(), -rank)
                }
                _ => {
                    let id: Uuid = row.try_get("", "chunk_id").map_err(StoreError::from_db)?;
                    let rank: f32 = row.try_get("", "rank").map_err(StoreError::from_db)?;
                    (Some(id), f64::from(rank))
                }
            };
            if let Some(id) = id {
                hits.push((id, rank));
            }
        }
        Ok(hits)
    }

    /// Every embedded chunk of a knowledge base: its id, its document, its vector.
    pub async fn chunk_vectors(
        &self,
        knowledge_base_id: Uuid,
    ) -> StoreResult<Vec<(Uuid, Uuid, Vec<f32>)>> {
        let rows: Vec<(Uuid, Uuid, Option<Vec<u8>>)> = chunks::Entity::find()
            .filter(chunks::Column::KnowledgeBaseId.eq(knowledge_base_id))
            .filter(chunks::Column::Embedding.is_not_null())
            .select_only()
            .column(chunks::Column::Id)
            .column(chunks::Column::DocumentId)
            .column(chunks::Column::Embedding)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, doc, bytes)| Some((id, doc, vector_from_bytes(&bytes?))))
            .collect())
    }

    /// The passages `ids` with their documents' names, in no particular order.
    pub async fn passages(&self, ids: &[Uuid]) -> StoreResult<Vec<PassageRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(Uuid, Uuid, String)> = chunks::Entity::find()
            .filter(chunks::Column::Id.is_in(ids.iter().copied()))
            .select_only()
            .column(chunks::Column::Id)
            .column(chunks::Column::DocumentId)
            .column(chunks::Column::Text)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        let doc_ids: Vec<Uuid> = rows.iter().map(|r| r.1).collect();
        let names: std::collections::HashMap<Uuid, String> = documents::Entity::find()
            .filter(documents::Column::Id.is_in(doc_ids))
            .select_only()
            .column(documents::Column::Id)
            .column(documents::Column::Name)
            .into_tuple::<(Uuid, String)>()
            .all(&self.db)
            .await
            .map_err(StoreError::from_db)?
            .into_iter()
            .collect();
        Ok(rows
            .into_iter()
            .map(|(chunk_id, document_id, text)| PassageRow {
                chunk_id,
                document_id,
                document_name: names.get(&document_id).cloned().unwrap_or_default(),
                text,
            })
            .collect())
    }
}

/// Whose FTS5 rows to remove.
enum FtsOf {
    Document(Uuid),
    KnowledgeBase(Uuid),
}

/// Removes the FTS5 rows of a document's or a knowledge base's chunks (SQLite; on
/// PostgreSQL the `tsv` column goes with its rows).
async fn delete_fts(db: &impl ConnectionTrait, of: FtsOf) -> StoreResult<()> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return Ok(());
    }
    match of {
        FtsOf::KnowledgeBase(id) => {
            db.execute_raw(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                "DELETE FROM chunks_fts WHERE knowledge_base_id = ?",
                [id.to_string().into()],
            ))
            .await
            .map_err(StoreError::from_db)?;
        }
        FtsOf::Document(id) => {
            // The FTS rows name their chunks by id text; the chunks table knows which.
            let ids: Vec<Uuid> = chunks::Entity::find()
                .filter(chunks::Column::DocumentId.eq(id))
                .select_only()
                .column(chunks::Column::Id)
                .into_tuple()
                .all(db)
                .await
                .map_err(StoreError::from_db)?;
            for batch in ids.chunks(500) {
                let marks = vec!["?"; batch.len()].join(", ");
                db.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Sqlite,
                    format!("DELETE FROM chunks_fts WHERE chunk_id IN ({marks})"),
                    batch.iter().map(|id| Value::from(id.to_string())),
                ))
                .await
                .map_err(StoreError::from_db)?;
            }
        }
    }
    Ok(())
}
