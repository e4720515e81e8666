//! Documents into passages: what a knowledge-base upload is (decided from its bytes), its
//! text (per format, with a well-kept crate each), and its token-sized, Markdown-aware,
//! overlapping chunks. Pure functions; storage, embeddings and search are the service's.

pub mod chunks;
pub mod extract;
