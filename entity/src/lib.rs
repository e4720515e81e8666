//! SeaORM entities: the tables of the chat server.
//!
//! `users` and `refresh_tokens` are plain state. `conversation_events` is the append-only
//! source of truth for conversations; `conversations` and `messages` are projections of it,
//! rebuilt by replaying the log (see the server's `domain::events` and `store::events`).

pub mod conversation_events;
pub mod conversations;
pub mod messages;
pub mod refresh_tokens;
pub mod users;
