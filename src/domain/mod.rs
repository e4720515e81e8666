//! Domain model: validated inputs, the conversation event enum, the pure projection
//! (`apply`) and the pure command functions that turn a request into events.

pub mod agents;
pub mod codes;
pub mod commands;
pub mod events;
pub mod follow_ups;
pub mod inputs;
pub mod knowledge;
pub mod projection;
pub mod types;
pub mod users;
pub mod validation;

/// Why a command was refused. The API layer maps each variant to a status and code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DomainError {
    #[error("conversation not found")]
    ConversationNotFound,
    #[error("message not found")]
    MessageNotFound,
    /// The request is well-formed but the conversation's current state forbids it.
    #[error("{0}")]
    Conflict(String),
    /// A stream ends once: another end (a survivor's recovery, say) was committed first.
    #[error("the answer has already finished")]
    AlreadyFinished,
    /// The turn was prepared for another agent binding than the conversation has now
    /// (`None`: unbound): prepare it again for this one.
    #[error("the conversation's agent is not the one the turn was prepared for")]
    AgentBinding(Option<uuid::Uuid>),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}
