//! Knowledge bases: a user's documents, split into passages an agent can search. The
//! records here are what the store keeps and the API shows; ranking lives in the service.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::types::DocumentStatus;

pub const MAX_KNOWLEDGE_BASE_NAME_CHARS: usize = 100;
pub const MAX_KNOWLEDGE_BASE_DESCRIPTION_CHARS: usize = 2_000;
pub const MAX_DOCUMENT_NAME_CHARS: usize = 255;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnowledgeBaseRecord {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    pub description: String,
    pub document_count: i64,
    pub created_at: DateTime<Utc>,
}

/// A document without its bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct DocumentRecord {
    pub id: Uuid,
    pub knowledge_base_id: Uuid,
    pub name: String,
    pub mime_type: String,
    pub size: i64,
    pub status: DocumentStatus,
    pub progress: f64,
    pub error: Option<String>,
    pub chunk_count: i32,
    pub created_at: DateTime<Utc>,
}

/// A passage to store: its text and, with an embedding model, its vector.
#[derive(Clone, Debug, PartialEq)]
pub struct NewChunk {
    pub id: Uuid,
    pub position: i32,
    pub text: String,
    pub embedding: Option<Vec<f32>>,
}

/// A passage found by a search, and how well it ranked. Also what an answer cites.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Passage {
    pub document_id: Uuid,
    pub document_name: String,
    pub chunk_id: Uuid,
    pub snippet: String,
    pub score: f64,
}

/// A vector as the portable column keeps it: little-endian `f32`s.
pub fn vector_to_bytes(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn vector_from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_through_bytes() {
        let v = vec![0.5, -1.25, f32::MIN_POSITIVE, 3.0e7];
        assert_eq!(vector_from_bytes(&vector_to_bytes(&v)), v);
        assert_eq!(vector_to_bytes(&v).len(), 16);
    }
}
