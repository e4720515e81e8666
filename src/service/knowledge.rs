//! Knowledge bases: create, list, delete; documents uploaded, ingested as durable jobs
//! (`pending` → `processing` with progress → `ready`, or `failed` with the reason), and
//! searched.
//!
//! Retrieval is hybrid: the engine's full-text ranking and, with `EMBEDDING_MODEL`, exact
//! cosine similarity over the knowledge base's vectors, fused by reciprocal rank (each list
//! gives `1 / (60 + rank)`). The vectors are read from the database once per knowledge base
//! and kept in memory (normalised, in one flat array) until the knowledge base changes; a
//! change here drops this instance's copy and tells the others to drop theirs.
//!
//! A knowledge base is its owner's alone: another user's is "not found". A public agent
//! searches its owner's knowledge bases for whoever chats with it, through
//! [`KnowledgeService::search_for_agent`], which never lists or returns whole documents.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::FutureExt;
use uuid::Uuid;

use super::auth::CurrentUser;
use super::chat::ChatService;
use super::jobs::{JobFailure, JobHandler};
use super::{ServiceError, ServiceResult};
use crate::config::KnowledgeConfig;
use crate::domain::follow_ups::{JobRecord, NewJob};
use crate::domain::inputs::bounded_text;
use crate::domain::knowledge::{
    DocumentRecord, KnowledgeBaseRecord, NewChunk, Passage, MAX_DOCUMENT_NAME_CHARS,
    MAX_KNOWLEDGE_BASE_DESCRIPTION_CHARS, MAX_KNOWLEDGE_BASE_NAME_CHARS,
};
use crate::domain::types::{DocumentStatus, Priority, SearchMode};
use crate::knowledge::chunks::{split, DEFAULT_MAX_TOKENS, DEFAULT_OVERLAP_TOKENS};
use crate::knowledge::extract::{extract, sniff, ExtractError};
use crate::llm::scheduler::CallClass;
use crate::store::Store;

/// The job kind that ingests a document.
pub const INGEST_JOB: &str = "ingest_document";
/// Candidates each ranking gives the fusion.
const CANDIDATES: usize = 50;
/// Reciprocal-rank fusion's constant (the usual 60).
const RRF_K: f64 = 60.0;
/// Passages embedded per request.
const EMBED_BATCH: usize = 64;
/// The longest snippet of a passage in results and citations.
pub const SNIPPET_CHARS: usize = 400;
/// The longest a document's text extraction may take.
const EXTRACT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// Results a search gives at most.
pub const MAX_SEARCH_LIMIT: usize = 50;

/// What the rest of the server hears of knowledge: a document's progress (for its owner's
/// sockets) and a knowledge base whose passages changed (for other instances' caches).
pub trait KnowledgeEvents: Send + Sync {
    fn document_changed(&self, owner: Uuid, document: &DocumentRecord);
    fn knowledge_changed(&self, knowledge_base_id: Uuid);
}

/// Nobody listens (tests of the service alone).
pub struct Unheard;

impl KnowledgeEvents for Unheard {
    fn document_changed(&self, _: Uuid, _: &DocumentRecord) {}
    fn knowledge_changed(&self, _: Uuid) {}
}

/// A search's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchResult {
    pub mode: SearchMode,
    pub passages: Vec<Passage>,
}

/// One knowledge base's vectors, normalised, in one flat array (`dims` floats each),
/// searched by an exact scan.
pub struct VectorIndex {
    ids: Vec<Uuid>,
    dims: usize,
    data: Vec<f32>,
}

impl VectorIndex {
    /// From `(chunk, document, vector)` rows; vectors of another length than the first are
    /// left out.
    pub fn new(rows: Vec<(Uuid, Uuid, Vec<f32>)>) -> Self {
        let dims = rows.first().map_or(0, |r| r.2.len());
        let mut ids = Vec::with_capacity(rows.len());
        let mut data = Vec::with_capacity(rows.len() * dims);
        for (id, _, mut v) in rows.into_iter().filter(|r| r.2.len() == dims) {
            normalise(&mut v);
            ids.push(id);
            data.extend(v);
        }
        Self { ids, dims, data }
    }

    /// The `k` most similar (cosine) to the normalised `query`, best first.
    pub fn nearest(&self, query: &[f32], k: usize) -> Vec<(Uuid, f32)> {
        if self.dims == 0 || query.len() != self.dims {
            return Vec::new();
        }
        let mut scored: Vec<(usize, f32)> = self
            .data
            .chunks_exact(self.dims)
            .map(|v| dot(v, query))
            .enumerate()
            .collect();
        let k = k.min(scored.len());
        if k == 0 {
            return Vec::new();
        }
        scored.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
        scored.truncate(k);
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored.into_iter().map(|(i, s)| (self.ids[i], s)).collect()
    }

    /// The memory it holds.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4 + self.ids.len() * 16
    }

    /// One read pass over the vectors (their sum, in the same eight lanes as [`dot`]):
    /// the floor under a scan, for benchmarks.
    pub fn read_pass(&self) -> f32 {
        let mut lanes = [0f32; 8];
        for block in self.data.chunks_exact(8) {
            for (lane, x) in lanes.iter_mut().zip(block) {
                *lane += x;
            }
        }
        lanes.iter().sum()
    }
}

/// The dot product, summed in eight independent lanes so the compiler can use SIMD (a
/// single running sum is a chain of dependent additions it may not reorder).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// The words of a query, lowercased, as full-text search takes them: letters and digits
/// only (nothing of the engines' query syntax), common words dropped, at most 32.
pub fn query_terms(query: &str) -> Vec<String> {
    const STOP: &[&str] = &[
        "a", "an", "and", "are", "as", "at", "be", "by", "do", "does", "for", "from", "how", "i",
        "in", "is", "it", "of", "on", "or", "that", "the", "this", "to", "was", "what", "when",
        "where", "which", "who", "why", "with", "you",
    ];
    let mut terms: Vec<String> = Vec::new();
    for word in query
        .split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
    {
        if word.is_empty() || STOP.contains(&word.as_str()) || terms.contains(&word) {
            continue;
        }
        terms.push(word);
        if terms.len() == 32 {
            break;
        }
    }
    terms
}

/// Fuses rankings (each best first) by reciprocal rank: best fused first.
pub fn fuse(rankings: &[Vec<Uuid>]) -> Vec<(Uuid, f64)> {
    let mut scores: HashMap<Uuid, f64> = HashMap::new();
    for ranking in rankings {
        for (rank, id) in ranking.iter().enumerate() {
            *scores.entry(*id).or_default() += 1.0 / (RRF_K + rank as f64 + 1.0);
        }
    }
    let mut fused: Vec<(Uuid, f64)> = scores.into_iter().collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    fused
}

fn snippet(text: &str) -> String {
    match text.char_indices().nth(SNIPPET_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[derive(Clone)]
pub struct KnowledgeService {
    store: Store,
    chat: ChatService,
    config: KnowledgeConfig,
    /// Tries a job gets (`JOB_MAX_ATTEMPTS`): the last failed one fails the document.
    max_attempts: i32,
    events: Arc<dyn KnowledgeEvents>,
    vectors: Arc<Mutex<HashMap<Uuid, Arc<VectorIndex>>>>,
}

impl KnowledgeService {
    pub fn new(
        store: Store,
        chat: ChatService,
        config: KnowledgeConfig,
        max_attempts: i32,
        events: Arc<dyn KnowledgeEvents>,
    ) -> Self {
        Self {
            store,
            chat,
            config,
            max_attempts,
            events,
            vectors: Default::default(),
        }
    }

    pub fn max_document_bytes(&self) -> usize {
        self.config.max_document_bytes
    }

    /// The model that embeds, unless there is none (or it is the demo provider's).
    fn embedding_model(&self) -> Option<String> {
        let model = self
            .chat
            .models()
            .catalogue()
            .embedding_model()?
            .to_string();
        (!self.chat.is_demo(&model)).then_some(model)
    }

    pub async fn create(
        &self,
        user: CurrentUser,
        name: &str,
        description: Option<&str>,
    ) -> ServiceResult<KnowledgeBaseRecord> {
        let kb = KnowledgeBaseRecord {
            id: Uuid::now_v7(),
            owner_id: user.id,
            name: bounded_text("name", name, MAX_KNOWLEDGE_BASE_NAME_CHARS, false)?,
            description: bounded_text(
                "description",
                description.unwrap_or_default(),
                MAX_KNOWLEDGE_BASE_DESCRIPTION_CHARS,
                true,
            )?,
            document_count: 0,
            created_at: crate::store::now(),
        };
        self.store.insert_knowledge_base(&kb).await?;
        Ok(kb)
    }

    pub async fn list(&self, user: CurrentUser) -> ServiceResult<Vec<KnowledgeBaseRecord>> {
        Ok(self.store.knowledge_bases_of(user.id).await?)
    }

    /// The user's knowledge base; anyone else's is "not found".
    pub async fn get(&self, user: CurrentUser, id: Uuid) -> ServiceResult<KnowledgeBaseRecord> {
        self.store
            .find_knowledge_base(id)
            .await?
            .filter(|kb| kb.owner_id == user.id)
            .ok_or(ServiceError::KnowledgeBaseNotFound)
    }

    pub async fn delete(&self, user: CurrentUser, id: Uuid) -> ServiceResult<()> {
        self.get(user, id).await?;
        self.store.delete_knowledge_base(id).await?;
        self.changed(id);
        Ok(())
    }

    /// Checks and stores an upload, and records the job that ingests it. The type is what
    /// the bytes are (a PDF, HTML, Markdown or plain UTF-8 text), whatever the name says.
    pub async fn upload(
        &self,
        user: CurrentUser,
        knowledge_base_id: Uuid,
        name: Option<&str>,
        bytes: Vec<u8>,
    ) -> ServiceResult<DocumentRecord> {
        self.get(user, knowledge_base_id).await?;
        if bytes.len() > self.config.max_document_bytes {
            return Err(ServiceError::TooLarge(format!(
                "the document is larger than MAX_DOCUMENT_BYTES ({} bytes)",
                self.config.max_document_bytes
            )));
        }
        // Only the file's own name, never a path the client sent.
        let name = name
            .unwrap_or_default()
            .rsplit(['/', '\\'])
            .next()
            .unwrap_or_default()
            .trim();
        let name = match name {
            "" => "document".to_string(),
            name => bounded_text("file", name, MAX_DOCUMENT_NAME_CHARS, false)?,
        };
        let kind = sniff(&name, &bytes).map_err(|e| ServiceError::Validation {
            field: "file",
            message: e.to_string(),
        })?;
        let doc = DocumentRecord {
            id: Uuid::now_v7(),
            knowledge_base_id,
            name,
            mime_type: kind.mime().to_string(),
            size: bytes.len() as i64,
            status: DocumentStatus::Pending,
            progress: 0.0,
            error: None,
            chunk_count: 0,
            created_at: crate::store::now(),
        };
        let job = NewJob {
            kind: INGEST_JOB,
            payload: serde_json::json!({ "documentId": doc.id }),
            priority: 0,
            dedupe_key: Some(format!("ingest:{}", doc.id)),
        };
        self.store.insert_document(&doc, bytes, &job).await?;
        Ok(doc)
    }

    pub async fn documents(
        &self,
        user: CurrentUser,
        knowledge_base_id: Uuid,
    ) -> ServiceResult<Vec<DocumentRecord>> {
        self.get(user, knowledge_base_id).await?;
        Ok(self.store.documents_of(knowledge_base_id).await?)
    }

    pub async fn document(
        &self,
        user: CurrentUser,
        knowledge_base_id: Uuid,
        document_id: Uuid,
    ) -> ServiceResult<DocumentRecord> {
        self.get(user, knowledge_base_id).await?;
        self.store
            .find_document(document_id)
            .await?
            .filter(|d| d.knowledge_base_id == knowledge_base_id)
            .ok_or(ServiceError::DocumentNotFound)
    }

    pub async fn delete_document(
        &self,
        user: CurrentUser,
        knowledge_base_id: Uuid,
        document_id: Uuid,
    ) -> ServiceResult<()> {
        self.document(user, knowledge_base_id, document_id).await?;
        self.store.delete_document(document_id).await?;
        self.changed(knowledge_base_id);
        Ok(())
    }

    /// `POST /api/knowledge-bases/{id}/search`: the owner's search of one knowledge base.
    pub async fn search(
        &self,
        user: CurrentUser,
        knowledge_base_id: Uuid,
        query: &str,
        limit: usize,
    ) -> ServiceResult<SearchResult> {
        self.get(user, knowledge_base_id).await?;
        let query = bounded_text("query", query, 2_000, false)?;
        self.ranked(
            &[knowledge_base_id],
            &query,
            limit.clamp(1, MAX_SEARCH_LIMIT),
            user.id,
            user.priority,
            CallClass::Interactive,
        )
        .await
    }

    /// An agent's `search_knowledge`: its knowledge bases that its owner still owns.
    pub async fn search_for_agent(
        &self,
        agent_owner: Uuid,
        knowledge_base_ids: &[Uuid],
        query: &str,
        caller: Uuid,
        priority: Priority,
    ) -> ServiceResult<SearchResult> {
        let owned = self
            .store
            .knowledge_bases_owned(agent_owner, knowledge_base_ids)
            .await?;
        self.ranked(&owned, query, 5, caller, priority, CallClass::Agent)
            .await
    }

    /// Full-text and (with an embedding model) vector rankings, fused.
    async fn ranked(
        &self,
        knowledge_base_ids: &[Uuid],
        query: &str,
        limit: usize,
        user: Uuid,
        priority: Priority,
        class: CallClass,
    ) -> ServiceResult<SearchResult> {
        let terms = query_terms(query);
        let fulltext: Vec<Uuid> = self
            .store
            .fulltext_search(knowledge_base_ids, &terms, CANDIDATES)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let mut rankings = vec![fulltext];
        let mut mode = SearchMode::Fulltext;
        if let Some(model) = self.embedding_model() {
            match self
                .chat
                .embed(user, priority, class, &model, vec![query.to_string()])
                .await
            {
                Ok(mut vectors) if !vectors.is_empty() => {
                    let mut query = vectors.swap_remove(0);
                    normalise(&mut query);
                    let mut nearest = Vec::new();
                    for kb in knowledge_base_ids {
                        nearest.extend(self.vectors_of(*kb).await?.nearest(&query, CANDIDATES));
                    }
                    nearest.sort_by(|a, b| b.1.total_cmp(&a.1));
                    nearest.truncate(CANDIDATES);
                    rankings.push(nearest.into_iter().map(|(id, _)| id).collect());
                    mode = SearchMode::Hybrid;
                }
                // Words alone still find something; the answer says which mode ran.
                Ok(_) | Err(_) => {
                    tracing::warn!("embedding a query failed; searching by words alone")
                }
            }
        }
        let fused: Vec<(Uuid, f64)> = fuse(&rankings).into_iter().take(limit).collect();
        let ids: Vec<Uuid> = fused.iter().map(|(id, _)| *id).collect();
        let rows: HashMap<Uuid, crate::store::PassageRow> = self
            .store
            .passages(&ids)
            .await?
            .into_iter()
            .map(|r| (r.chunk_id, r))
            .collect();
        let passages = fused
            .into_iter()
            .filter_map(|(id, score)| {
                let row = rows.get(&id)?;
                Some(Passage {
                    document_id: row.document_id,
                    document_name: row.document_name.clone(),
                    chunk_id: id,
                    snippet: snippet(&row.text),
                    score,
                })
            })
            .collect();
        Ok(SearchResult { mode, passages })
    }

    /// The knowledge base's vectors, from memory or read once.
    async fn vectors_of(&self, knowledge_base_id: Uuid) -> ServiceResult<Arc<VectorIndex>> {
        if let Some(v) = self.cache().get(&knowledge_base_id) {
            return Ok(v.clone());
        }
        let vectors = Arc::new(VectorIndex::new(
            self.store.chunk_vectors(knowledge_base_id).await?,
        ));
        self.cache().insert(knowledge_base_id, vectors.clone());
        Ok(vectors)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<VectorIndex>>> {
        self.vectors.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The memory the cached vectors take.
    pub fn cached_bytes(&self) -> usize {
        self.cache().values().map(|v| v.bytes()).sum()
    }

    /// Drops this instance's vectors of a knowledge base (another instance changed it).
    pub fn forget(&self, knowledge_base_id: Uuid) {
        self.cache().remove(&knowledge_base_id);
    }

    fn changed(&self, knowledge_base_id: Uuid) {
        self.forget(knowledge_base_id);
        self.events.knowledge_changed(knowledge_base_id);
    }

    /// Records and announces where a document is.
    async fn progress(
        &self,
        owner: Uuid,
        doc: &mut DocumentRecord,
        status: DocumentStatus,
        progress: f64,
        error: Option<String>,
    ) -> Result<bool, JobFailure> {
        let present = self
            .store
            .set_document_status(doc.id, status, progress, error.as_deref())
            .await
            .map_err(|e| JobFailure::Retry(e.to_string()))?;
        doc.status = status;
        doc.progress = progress;
        doc.error = error;
        if present {
            self.events.document_changed(owner, doc);
        }
        Ok(present)
    }

    /// Ingests one document: its text, its chunks, their vectors, then all of it at once.
    async fn ingest(&self, job: &JobRecord) -> Result<(), JobFailure> {
        let id: Uuid = job.payload["documentId"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| JobFailure::Permanent("the job names no document".into()))?;
        let retry = |e: crate::store::StoreError| JobFailure::Retry(e.to_string());
        let Some(mut doc) = self.store.find_document(id).await.map_err(retry)? else {
            return Ok(()); // deleted meanwhile
        };
        if doc.status == DocumentStatus::Ready {
            return Ok(());
        }
        let Some(kb) = self
            .store
            .find_knowledge_base(doc.knowledge_base_id)
            .await
            .map_err(retry)?
        else {
            return Ok(());
        };
        let owner = kb.owner_id;
        if !self
            .progress(owner, &mut doc, DocumentStatus::Processing, 0.0, None)
            .await?
        {
            return Ok(());
        }
        let Some(bytes) = self.store.document_content(id).await.map_err(retry)? else {
            return Ok(());
        };
        let name = doc.name.clone();
        // Extraction is CPU work (and a PDF crate may take its time): off the async threads.
        // A pathological file may take long: past EXTRACT_TIMEOUT the document fails (the
        // blocking thread finishes on its own).
        let extracting = tokio::task::spawn_blocking(move || {
            let kind = sniff(&name, &bytes)?;
            let text = extract(kind, &bytes)?;
            Ok::<_, ExtractError>((kind, text))
        });
        let extracted = match tokio::time::timeout(EXTRACT_TIMEOUT, extracting).await {
            Ok(done) => done.map_err(|e| JobFailure::Retry(format!("extraction stopped: {e}")))?,
            Err(_) => Err(ExtractError::Unreadable(format!(
                "reading the document took longer than {} s",
                EXTRACT_TIMEOUT.as_secs()
            ))),
        };
        let (kind, extracted) = match extracted {
            Ok(done) => done,
            Err(err) => {
                // Another try reads the same bytes: the document failed, the job is done.
                self.progress(
                    owner,
                    &mut doc,
                    DocumentStatus::Failed,
                    0.0,
                    Some(err.to_string()),
                )
                .await?;
                return Ok(());
            }
        };
        let pieces = split(
            kind,
            &extracted.text,
            DEFAULT_MAX_TOKENS,
            DEFAULT_OVERLAP_TOKENS,
        );
        if pieces.is_empty() {
            let why = "the document has no text".to_string();
            self.progress(owner, &mut doc, DocumentStatus::Failed, 0.0, Some(why))
                .await?;
            return Ok(());
        }
        self.progress(owner, &mut doc, DocumentStatus::Processing, 0.2, None)
            .await?;
        let mut chunks: Vec<NewChunk> = pieces
            .into_iter()
            .enumerate()
            .map(|(i, piece)| NewChunk {
                id: Uuid::now_v7(),
                position: i as i32,
                text: piece.text,
                embedding: None,
            })
            .collect();
        if let Some(model) = self.embedding_model() {
            let total = chunks.len();
            let mut done = 0;
            for batch in chunks.chunks_mut(EMBED_BATCH) {
                let inputs = batch.iter().map(|c| c.text.clone()).collect();
                let vectors = self
                    .chat
                    .embed(
                        owner,
                        Priority::default(),
                        CallClass::Background,
                        &model,
                        inputs,
                    )
                    .await;
                let vectors = match vectors {
                    Ok(vectors) => vectors,
                    Err(err) if job.attempts >= self.max_attempts => {
                        let why = format!("the passages could not be embedded: {err}");
                        self.progress(owner, &mut doc, DocumentStatus::Failed, 0.0, Some(why))
                            .await?;
                        return Ok(());
                    }
                    Err(err) => return Err(JobFailure::Retry(err.to_string())),
                };
                for (chunk, vector) in batch.iter_mut().zip(vectors) {
                    chunk.embedding = Some(vector);
                }
                done += batch.len();
                let progress = 0.2 + 0.75 * done as f64 / total as f64;
                self.progress(owner, &mut doc, DocumentStatus::Processing, progress, None)
                    .await?;
            }
        }
        if self
            .store
            .store_chunks(&doc, &chunks)
            .await
            .map_err(retry)?
        {
            doc.chunk_count = chunks.len() as i32;
            self.changed(doc.knowledge_base_id);
            doc.status = DocumentStatus::Ready;
            doc.progress = 1.0;
            self.events.document_changed(owner, &doc);
        }
        Ok(())
    }
}

impl JobHandler for KnowledgeService {
    fn run<'a>(&'a self, job: &'a JobRecord) -> BoxFuture<'a, Result<(), JobFailure>> {
        self.ingest(job).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_words_are_plain_lowercase_words_without_common_ones() {
        assert_eq!(
            query_terms("What is the Boiling-point of water? \"OR\" *; DROP"),
            ["boiling", "point", "water", "drop"]
        );
        assert!(query_terms("the of and").is_empty());
    }

    #[test]
    fn fusion_rewards_what_both_rankings_put_high() {
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let fused = fuse(&[vec![a, b, c], vec![b, c]]);
        let order: Vec<Uuid> = fused.iter().map(|f| f.0).collect();
        assert_eq!(order, [b, c, a]);
        assert!((fused[0].1 - (1.0 / 62.0 + 1.0 / 61.0)).abs() < 1e-12);
    }

    #[test]
    fn the_lane_dot_product_is_the_dot_product() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.25).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!(
            (dot(&a, &b) - plain).abs() < 1e-3,
            "{} {plain}",
            dot(&a, &b)
        );
    }

    #[test]
    fn nearest_vectors_are_by_cosine_best_first() {
        let ids: Vec<Uuid> = (1..=3).map(Uuid::from_u128).collect();
        let vectors = VectorIndex::new(vec![
            (ids[0], Uuid::nil(), vec![1.0, 0.0]),
            (ids[1], Uuid::nil(), vec![10.0, 10.0]),
            (ids[2], Uuid::nil(), vec![0.0, 3.0]),
        ]);
        let mut query = vec![0.1, 1.0];
        normalise(&mut query);
        let nearest = vectors.nearest(&query, 2);
        assert_eq!(
            nearest.iter().map(|n| n.0).collect::<Vec<_>>(),
            [ids[2], ids[1]]
        );
        assert!(
            vectors.nearest(&[1.0, 0.0, 0.0], 2).is_empty(),
            "wrong size"
        );
    }
}
