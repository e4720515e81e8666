//! `/api/knowledge-bases`: a user's knowledge bases, their documents (uploaded as
//! multipart, ingested in the background) and search over them.

use chrono::{DateTime, Utc};
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::types::multipart::Upload;
use poem_openapi::{ApiResponse, Enum, Multipart, Object, OpenApi};
use serde::Deserialize;
use uuid::Uuid;

use super::error::ApiResult;
use super::json::JsonBody;
use super::security::BearerAuth;
use super::state::AppState;
use super::Tags;
use crate::domain::knowledge::{DocumentRecord, KnowledgeBaseRecord, Passage};
use crate::domain::types;
use crate::service::ServiceError;

pub struct KnowledgeApi {
    pub state: AppState,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct KnowledgeBase {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub document_count: i64,
    pub created_at: DateTime<Utc>,
}

impl From<KnowledgeBaseRecord> for KnowledgeBase {
    fn from(kb: KnowledgeBaseRecord) -> Self {
        Self {
            id: kb.id,
            name: kb.name,
            description: kb.description,
            document_count: kb.document_count,
            created_at: kb.created_at,
        }
    }
}

/// Where a document's ingestion is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum DocumentStatus {
    Pending,
    Processing,
    Ready,
    Failed,
}

impl From<types::DocumentStatus> for DocumentStatus {
    fn from(s: types::DocumentStatus) -> Self {
        match s {
            types::DocumentStatus::Pending => Self::Pending,
            types::DocumentStatus::Processing => Self::Processing,
            types::DocumentStatus::Ready => Self::Ready,
            types::DocumentStatus::Failed => Self::Failed,
        }
    }
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct Document {
    pub id: Uuid,
    pub knowledge_base_id: Uuid,
    pub name: String,
    /// What the content is (`application/pdf`, `text/html`, `text/markdown`,
    /// `text/plain`), decided from the bytes, not the name.
    pub mime_type: String,
    pub size: i64,
    pub status: DocumentStatus,
    /// 0 to 1 while `processing`; 1 once `ready`.
    pub progress: f64,
    /// Why it `failed`.
    #[oai(nullable)]
    pub error: Option<String>,
    pub chunk_count: i32,
    pub created_at: DateTime<Utc>,
}

impl From<DocumentRecord> for Document {
    fn from(d: DocumentRecord) -> Self {
        Self {
            id: d.id,
            knowledge_base_id: d.knowledge_base_id,
            name: d.name,
            mime_type: d.mime_type,
            size: d.size,
            status: d.status.into(),
            progress: d.progress,
            error: d.error,
            chunk_count: d.chunk_count,
            created_at: d.created_at,
        }
    }
}

#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateKnowledgeBaseRequest {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Multipart)]
pub struct DocumentUpload {
    /// The document: PDF, HTML, Markdown or plain UTF-8 text, at most `MAX_DOCUMENT_BYTES`.
    pub file: Upload,
}

#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SearchRequest {
    pub query: String,
    /// Results at most (1 to 50; 5 when absent).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// A passage found, or cited.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct PassageView {
    pub document_id: Uuid,
    pub document_name: String,
    pub chunk_id: Uuid,
    pub snippet: String,
    /// The fused reciprocal-rank score: higher is better.
    pub score: f64,
}

impl From<Passage> for PassageView {
    fn from(p: Passage) -> Self {
        Self {
            document_id: p.document_id,
            document_name: p.document_name,
            chunk_id: p.chunk_id,
            snippet: p.snippet,
            score: p.score,
        }
    }
}

/// How a search ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum SearchMode {
    /// Words and meaning (embeddings), fused by reciprocal rank.
    Hybrid,
    /// Words alone: no embedding model is configured, or embedding the query failed.
    Fulltext,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct SearchResponse {
    pub mode: SearchMode,
    pub results: Vec<PassageView>,
}

#[derive(ApiResponse)]
enum Created {
    #[oai(status = 201)]
    KnowledgeBase(Json<KnowledgeBase>),
}

#[derive(ApiResponse)]
enum Accepted {
    /// Stored; ingestion runs in the background (poll the document, or watch
    /// `document_status` frames).
    #[oai(status = 202)]
    Document(Json<Document>),
}

#[derive(ApiResponse)]
enum Deleted {
    #[oai(status = 204)]
    Done,
}

#[OpenApi(prefix_path = "/knowledge-bases", tag = "Tags::Knowledge")]
impl KnowledgeApi {
    /// Create a knowledge base
    #[oai(path = "/", method = "post", operation_id = "createKnowledgeBase")]
    async fn create(
        &self,
        auth: BearerAuth,
        body: JsonBody<CreateKnowledgeBaseRequest>,
    ) -> ApiResult<Created> {
        let b = body.0;
        let kb = self
            .state
            .knowledge
            .create(auth.user(), &b.name, b.description.as_deref())
            .await?;
        Ok(Created::KnowledgeBase(Json(kb.into())))
    }

    /// Your knowledge bases, newest first
    #[oai(path = "/", method = "get", operation_id = "listKnowledgeBases")]
    async fn list(&self, auth: BearerAuth) -> ApiResult<Json<Vec<KnowledgeBase>>> {
        let list = self.state.knowledge.list(auth.user()).await?;
        Ok(Json(list.into_iter().map(Into::into).collect()))
    }

    /// A knowledge base of yours (404 `NOT_FOUND` for anyone else's)
    #[oai(path = "/:id", method = "get", operation_id = "getKnowledgeBase")]
    async fn get(&self, auth: BearerAuth, id: Path<Uuid>) -> ApiResult<Json<KnowledgeBase>> {
        Ok(Json(
            self.state.knowledge.get(auth.user(), id.0).await?.into(),
        ))
    }

    /// Delete a knowledge base with its documents and passages
    #[oai(path = "/:id", method = "delete", operation_id = "deleteKnowledgeBase")]
    async fn delete(&self, auth: BearerAuth, id: Path<Uuid>) -> ApiResult<Deleted> {
        self.state.knowledge.delete(auth.user(), id.0).await?;
        Ok(Deleted::Done)
    }

    /// Upload a document (multipart, field `file`)
    ///
    /// 202 with the document `pending`; it becomes `processing`, then `ready` or `failed`
    /// with the reason (a broken PDF, no text). 413 `PAYLOAD_TOO_LARGE` over
    /// `MAX_DOCUMENT_BYTES`; 400 `VALIDATION_ERROR` naming `file` for a type not taken
    /// (decided from the content: PDF, HTML, Markdown, plain UTF-8 text).
    #[oai(
        path = "/:id/documents",
        method = "post",
        operation_id = "uploadDocument"
    )]
    async fn upload(
        &self,
        auth: BearerAuth,
        id: Path<Uuid>,
        upload: DocumentUpload,
    ) -> ApiResult<Accepted> {
        let knowledge = &self.state.knowledge;
        if upload.file.size() > knowledge.max_document_bytes() {
            return Err(ServiceError::TooLarge(format!(
                "the document is larger than MAX_DOCUMENT_BYTES ({} bytes)",
                knowledge.max_document_bytes()
            ))
            .into());
        }
        let name = upload.file.file_name().map(str::to_string);
        let bytes = upload
            .file
            .into_vec()
            .await
            .map_err(|e| ServiceError::Validation {
                field: "file",
                message: format!("the upload could not be read: {e}"),
            })?;
        let doc = knowledge
            .upload(auth.user(), id.0, name.as_deref(), bytes)
            .await?;
        Ok(Accepted::Document(Json(doc.into())))
    }

    /// The documents of a knowledge base of yours, newest first
    #[oai(
        path = "/:id/documents",
        method = "get",
        operation_id = "listDocuments"
    )]
    async fn documents(&self, auth: BearerAuth, id: Path<Uuid>) -> ApiResult<Json<Vec<Document>>> {
        let docs = self.state.knowledge.documents(auth.user(), id.0).await?;
        Ok(Json(docs.into_iter().map(Into::into).collect()))
    }

    /// A document, with its status and progress
    #[oai(
        path = "/:id/documents/:document_id",
        method = "get",
        operation_id = "getDocument"
    )]
    async fn document(
        &self,
        auth: BearerAuth,
        id: Path<Uuid>,
        document_id: Path<Uuid>,
    ) -> ApiResult<Json<Document>> {
        let doc = self
            .state
            .knowledge
            .document(auth.user(), id.0, document_id.0)
            .await?;
        Ok(Json(doc.into()))
    }

    /// Delete a document and its passages
    #[oai(
        path = "/:id/documents/:document_id",
        method = "delete",
        operation_id = "deleteDocument"
    )]
    async fn delete_document(
        &self,
        auth: BearerAuth,
        id: Path<Uuid>,
        document_id: Path<Uuid>,
    ) -> ApiResult<Deleted> {
        self.state
            .knowledge
            .delete_document(auth.user(), id.0, document_id.0)
            .await?;
        Ok(Deleted::Done)
    }

    /// Search a knowledge base of yours
    ///
    /// Full-text ranking and, with `EMBEDDING_MODEL`, vector similarity, fused by
    /// reciprocal rank; `mode` says which ran.
    #[oai(
        path = "/:id/search",
        method = "post",
        operation_id = "searchKnowledgeBase"
    )]
    async fn search(
        &self,
        auth: BearerAuth,
        id: Path<Uuid>,
        body: JsonBody<SearchRequest>,
    ) -> ApiResult<Json<SearchResponse>> {
        let b = body.0;
        let found = self
            .state
            .knowledge
            .search(auth.user(), id.0, &b.query, b.limit.unwrap_or(5) as usize)
            .await?;
        Ok(Json(SearchResponse {
            mode: match found.mode {
                types::SearchMode::Hybrid => SearchMode::Hybrid,
                types::SearchMode::Fulltext => SearchMode::Fulltext,
            },
            results: found.passages.into_iter().map(Into::into).collect(),
        }))
    }
}
