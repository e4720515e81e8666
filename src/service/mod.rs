//! Use cases: what the API can ask for, in domain terms. Services own the rules that need
//! storage (ownership, credentials, token rotation); handlers stay thin.

pub mod agents;
pub mod auth;
pub mod chat;
pub mod context_cache;
pub mod conversations;
pub mod jobs;
pub mod knowledge;
pub mod limits;
pub mod models;
pub mod passwords;
pub mod peers;
pub mod sessions;
pub mod titles;
pub mod tokens;
pub mod tools;
pub mod validation;

use crate::domain::DomainError;
use crate::store::{ExecuteError, StoreError};

/// Every way a use case can fail. The API layer maps each to a status and code, in one place.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{field}: {message}")]
    Validation {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("conversation not found")]
    ConversationNotFound,
    #[error("message not found")]
    MessageNotFound,
    #[error("user not found")]
    UserNotFound,
    #[error("model not found")]
    ModelNotFound,
    #[error("job not found")]
    JobNotFound,
    #[error("agent not found")]
    AgentNotFound,
    #[error("knowledge base not found")]
    KnowledgeBaseNotFound,
    #[error("document not found")]
    DocumentNotFound,
    #[error("{0}")]
    Conflict(String),
    /// The answer already has its end (see [`DomainError::AlreadyFinished`]).
    #[error("the answer has already finished")]
    AlreadyFinished,
    #[error(transparent)]
    Upstream(#[from] crate::llm::ProviderError),
    /// A per-user or per-client limit was hit; `retry_after_secs` when the wait is known.
    #[error("{message}")]
    RateLimited {
        message: &'static str,
        retry_after_secs: Option<u64>,
    },
    /// The server cannot take this now (shutting down).
    #[error("{0}")]
    Unavailable(&'static str),
    /// An upload over its limit.
    #[error("{0}")]
    TooLarge(String),
    #[error("internal error: {0}")]
    Internal(#[from] anyhow::Error),
}

pub type ServiceResult<T> = Result<T, ServiceError>;

impl From<DomainError> for ServiceError {
    fn from(err: DomainError) -> Self {
        match err {
            DomainError::ConversationNotFound => Self::ConversationNotFound,
            DomainError::MessageNotFound => Self::MessageNotFound,
            DomainError::Conflict(message) => Self::Conflict(message),
            DomainError::AlreadyFinished => Self::AlreadyFinished,
            DomainError::AgentBinding(_) => Self::Conflict(
                "the conversation's agent changed while the message was sent; send it again".into(),
            ),
            DomainError::Invalid { field, message } => Self::Validation { field, message },
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Contention(_) => {
                Self::Conflict("the conversation is changing too fast; try again".into())
            }
            other => Self::Internal(anyhow::Error::new(other)),
        }
    }
}

impl From<ExecuteError<DomainError>> for ServiceError {
    fn from(err: ExecuteError<DomainError>) -> Self {
        match err {
            ExecuteError::Refused(domain) => domain.into(),
            ExecuteError::Store(store) => store.into(),
        }
    }
}
