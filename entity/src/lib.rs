//! SeaORM entities: the tables of the chat server.
//!
//! `users`, `refresh_tokens` and `instances` (running server processes) are plain state. `conversation_events` is the append-only
//! source of truth for conversations; `conversations` and `messages` are projections of it,
//! rebuilt by replaying the log (see the server's `domain::events` and `store::events`).

pub mod agent_versions;
pub mod agents;
pub mod chunks;
pub mod conversation_events;
pub mod conversations;
pub mod documents;
pub mod instances;
pub mod jobs;
pub mod knowledge_bases;
pub mod messages;
pub mod model_settings;
pub mod refresh_tokens;
pub mod users;
