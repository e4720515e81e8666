//! The JSON shapes of the API (camelCase, as the contract fixes them), and their
//! conversions from domain records. Request types also derive `Deserialize` for
//! [`super::json::JsonBody`].

use chrono::{DateTime, Utc};
use poem_openapi::{Enum, Object};
use serde::Deserialize;
use uuid::Uuid;

use crate::domain::events::RecordedEvent;
use crate::domain::projection::{ConversationRecord, MessageRecord};
use crate::domain::types;
use crate::domain::users::UserRecord;
use crate::service::auth::Session;
use crate::service::conversations::ConversationView;

/// A user's tier in the model queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    Normal,
    High,
}

impl From<types::Priority> for Priority {
    fn from(priority: types::Priority) -> Self {
        match priority {
            types::Priority::Low => Self::Low,
            types::Priority::Normal => Self::Normal,
            types::Priority::High => Self::High,
        }
    }
}

impl From<Priority> for types::Priority {
    fn from(priority: Priority) -> Self {
        match priority {
            Priority::Low => Self::Low,
            Priority::Normal => Self::Normal,
            Priority::High => Self::High,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl From<types::Role> for Role {
    fn from(role: types::Role) -> Self {
        match role {
            types::Role::User => Self::User,
            types::Role::Admin => Self::Admin,
        }
    }
}

impl From<Role> for types::Role {
    fn from(role: Role) -> Self {
        match role {
            Role::User => Self::User,
            Role::Admin => Self::Admin,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum MessageRole {
    User,
    Assistant,
    System,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum MessageStatus {
    Complete,
    Streaming,
    Cancelled,
    Failed,
    Interrupted,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct User {
    pub id: Uuid,
    pub email: String,
    /// `null` when the user gave none.
    #[oai(nullable)]
    pub display_name: Option<String>,
    pub role: Role,
    /// A disabled account cannot log in, and its tokens stop working at once.
    pub disabled: bool,
    /// Their tier in the model queue: within a class of calls, `high` before `normal`
    /// before `low`.
    pub priority: Priority,
    pub created_at: DateTime<Utc>,
}

impl From<UserRecord> for User {
    fn from(u: UserRecord) -> Self {
        Self {
            id: u.id,
            email: u.email,
            display_name: u.display_name,
            role: u.role.into(),
            disabled: u.disabled,
            priority: u.priority.into(),
            created_at: u.created_at,
        }
    }
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct AuthTokens {
    pub user: User,
    /// Short-lived JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Long-lived JWT for `POST /api/auth/refresh`; single use (rotated on refresh).
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

impl From<Session> for AuthTokens {
    fn from(s: Session) -> Self {
        Self {
            user: s.user.into(),
            access_token: s.access_token,
            refresh_token: s.refresh_token,
            token_type: "Bearer".into(),
            expires_in: s.expires_in,
        }
    }
}

#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    pub email: String,
    /// At least 8 characters.
    pub password: String,
    pub display_name: Option<String>,
}

#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Either the refresh token of the sign-in to end, or `all: true` to end every session of
/// the caller.
#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct LogoutRequest {
    pub refresh_token: Option<String>,
    /// Revoke every refresh token of the caller, refuse every access token issued so far
    /// and close every open WebSocket of theirs (code 4401).
    pub all: Option<bool>,
}

#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct ChangePasswordRequest {
    pub current_password: String,
    /// At least 8 characters, at most 1,024 bytes.
    pub new_password: String,
}

#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct ResetPasswordRequest {
    /// At least 8 characters, at most 1,024 bytes.
    pub password: String,
}

#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct UpdateUserRequest {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    /// Their tier in the model queue; takes effect at their next request or frame.
    pub priority: Option<Priority>,
}

/// Fields of a new conversation; all optional.
#[derive(Debug, Default, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct ConversationInput {
    /// Defaults to "New conversation"; at most 200 characters.
    pub title: Option<String>,
    /// Sent to the model before the messages. On update, `""` clears it.
    pub system_prompt: Option<String>,
    /// The model to use; `null` means the server's default. On update, `""` resets it.
    pub model: Option<String>,
    /// The agent that answers in it (yours, or a public one). On update, `""` unbinds it.
    pub agent_id: Option<String>,
}

#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct EditMessageRequest {
    pub content: String,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct ConversationSummary {
    pub id: Uuid,
    pub title: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub message_count: i64,
    pub last_seq: i64,
}

impl From<ConversationRecord> for ConversationSummary {
    fn from(c: ConversationRecord) -> Self {
        Self {
            id: c.id,
            title: c.title,
            created_at: c.created_at,
            updated_at: c.updated_at,
            message_count: c.message_count,
            last_seq: c.last_seq,
        }
    }
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct Conversation {
    pub id: Uuid,
    pub title: String,
    /// `null` when the conversation has none.
    #[oai(nullable)]
    pub system_prompt: Option<String>,
    /// `null` means the server's default model.
    #[oai(nullable)]
    pub model: Option<String>,
    /// The agent bound to it, if any.
    #[oai(nullable)]
    pub agent_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The `seq` of the conversation's latest event.
    pub last_seq: i64,
    pub messages: Vec<Message>,
}

impl From<ConversationView> for Conversation {
    fn from(v: ConversationView) -> Self {
        let c = v.conversation;
        Self {
            id: c.id,
            title: c.title,
            system_prompt: c.system_prompt,
            model: c.model,
            agent_id: c.agent_id,
            created_at: c.created_at,
            updated_at: c.updated_at,
            last_seq: c.last_seq,
            messages: v.messages.into_iter().map(Message::from).collect(),
        }
    }
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct Usage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct Message {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub role: MessageRole,
    pub content: String,
    pub status: MessageStatus,
    /// When the message was created.
    pub timestamp: DateTime<Utc>,
    /// The model that wrote an assistant message.
    #[oai(skip_serializing_if_is_none)]
    pub model: Option<String>,
    /// Token counts, when the provider reported them.
    #[oai(skip_serializing_if_is_none)]
    pub usage: Option<Usage>,
    /// Why another model than the conversation's answered (`model` names it):
    /// `circuit_open` (its breaker was open), `queue_full`, or `queue_wait` (its wait
    /// would have passed `QUEUE_MAX_WAIT_MS`).
    #[oai(nullable)]
    pub fallback_reason: Option<FallbackReason>,
    /// The tools an agent's answer called, in order, with their results (`ok` and
    /// `content` are `null` while a call runs); `null` when it called none.
    #[oai(nullable)]
    pub tool_calls: Option<Vec<ToolCallView>>,
    /// The passages an agent's knowledge searches gave the model for this answer (what it
    /// cites), each once; `null` when there are none.
    #[oai(nullable)]
    pub citations: Option<Vec<super::knowledge::PassageView>>,
    /// An answer's checks (and judge's scores), once its background check has run; `null`
    /// before, and for other messages.
    #[oai(nullable)]
    pub validation: Option<super::validation::ValidationView>,
    /// The owner's rating of an answer; `null` when none.
    #[oai(nullable)]
    pub rating: Option<super::validation::RatingView>,
}

/// One tool call of an answer.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct ToolCallView {
    pub call_id: String,
    /// `search_knowledge`, `ask_agent`, `current_time`, or whatever else the model named
    /// (then `ok` is false: only the agent's own tools run).
    pub name: String,
    /// The arguments as the model wrote them (JSON text).
    pub arguments: String,
    /// The model call (1 is the first) that asked for it.
    pub step: u32,
    #[oai(nullable)]
    pub ok: Option<bool>,
    #[oai(nullable)]
    pub content: Option<String>,
    /// The agent whose model called it.
    #[oai(nullable)]
    pub agent_id: Option<Uuid>,
    /// For a call made inside an `ask_agent` hand-off: that call's id.
    #[oai(nullable)]
    pub parent_call_id: Option<String>,
    /// For `ask_agent`: the agent that answered, and its version.
    #[oai(nullable)]
    pub answered_by: Option<Uuid>,
    #[oai(nullable)]
    pub answered_by_version: Option<i32>,
}

impl From<types::ToolCallRecord> for ToolCallView {
    fn from(c: types::ToolCallRecord) -> Self {
        Self {
            call_id: c.call_id,
            name: c.name,
            arguments: c.arguments,
            step: c.step,
            ok: c.ok,
            content: c.content,
            agent_id: c.agent_id,
            parent_call_id: c.parent_call_id,
            answered_by: c.answered_by,
            answered_by_version: c.answered_by_version,
        }
    }
}

/// Why a fallback answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum FallbackReason {
    CircuitOpen,
    QueueFull,
    QueueWait,
}

impl From<types::FallbackReason> for FallbackReason {
    fn from(reason: types::FallbackReason) -> Self {
        match reason {
            types::FallbackReason::CircuitOpen => Self::CircuitOpen,
            types::FallbackReason::QueueFull => Self::QueueFull,
            types::FallbackReason::QueueWait => Self::QueueWait,
        }
    }
}

impl From<MessageRecord> for Message {
    fn from(m: MessageRecord) -> Self {
        Self {
            id: m.id,
            conversation_id: m.conversation_id,
            role: match m.role {
                types::MessageRole::User => MessageRole::User,
                types::MessageRole::Assistant => MessageRole::Assistant,
                types::MessageRole::System => MessageRole::System,
            },
            content: m.content,
            status: match m.status {
                types::MessageStatus::Complete => MessageStatus::Complete,
                types::MessageStatus::Streaming => MessageStatus::Streaming,
                types::MessageStatus::Cancelled => MessageStatus::Cancelled,
                types::MessageStatus::Failed => MessageStatus::Failed,
                types::MessageStatus::Interrupted => MessageStatus::Interrupted,
            },
            timestamp: m.created_at,
            model: m.model,
            usage: m.usage.map(|u| Usage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
            }),
            fallback_reason: m.fallback_reason.map(Into::into),
            tool_calls: (!m.tool_calls.is_empty())
                .then(|| m.tool_calls.into_iter().map(Into::into).collect()),
            citations: (!m.citations.is_empty())
                .then(|| m.citations.into_iter().map(Into::into).collect()),
            validation: m.validation.map(Into::into),
            rating: m.rating.map(Into::into),
        }
    }
}

/// One entry of a conversation's append-only log.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct Event {
    /// Position in the conversation's log: from 1, without gaps.
    pub seq: i64,
    /// `conversation_created`, `conversation_updated`, `conversation_deleted`, `message_added`,
    /// `message_edited`, `message_deleted`, `stream_started`, `stream_completed`, `tool_called`,
    /// `tool_returned`, `answer_validated` or `message_rated`.
    #[oai(rename = "type")]
    pub event_type: String,
    /// The event's fields (camelCase), by type.
    pub data: serde_json::Value,
    /// The user who caused it; `null` for the server itself (e.g. marking an interrupted stream).
    #[oai(nullable)]
    pub actor_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

impl From<RecordedEvent> for Event {
    fn from(e: RecordedEvent) -> Self {
        Self {
            seq: e.seq,
            event_type: e.event.type_name().to_string(),
            data: e.event.data(),
            actor_id: e.actor_id,
            created_at: e.created_at,
        }
    }
}

#[derive(Debug, Clone, Object)]
pub struct MessageResponse {
    pub message: String,
}

#[derive(Debug, Clone, Object)]
pub struct Health {
    /// `OK`, or `DEGRADED` when the database does not answer.
    pub status: String,
    pub timestamp: DateTime<Utc>,
    pub version: String,
    /// Seconds since the server started.
    pub uptime: f64,
    /// `ok` or `unavailable`.
    pub database: String,
}

/// An event in the JSON shape of [`Event`], for WebSocket `event` frames.
pub fn event_json(event: &RecordedEvent) -> serde_json::Value {
    poem_openapi::types::ToJSON::to_json(&Event::from(event.clone())).unwrap_or_default()
}
