//! The conversation event log's vocabulary. Every change to a conversation is one of these;
//! the database stores the variant name (`type`) and its fields (`data`) separately, and the
//! names come from this enum alone.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::types::{MessageRole, MessageStatus, Usage};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum ConversationEvent {
    ConversationCreated(ConversationCreated),
    ConversationUpdated(ConversationUpdated),
    ConversationDeleted(ConversationDeleted),
    MessageAdded(MessageAdded),
    MessageEdited(MessageEdited),
    MessageDeleted(MessageDeleted),
    StreamStarted(StreamStarted),
    StreamCompleted(StreamCompleted),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationCreated {
    pub title: String,
    pub system_prompt: Option<String>,
    pub model: Option<String>,
}

/// Only the fields that changed are present.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationUpdated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// `Some("")` clears the system prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// `Some("")` returns to the server's default model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConversationDeleted {}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageAdded {
    pub message_id: Uuid,
    pub role: MessageRole,
    pub content: String,
    /// Set for idempotent sends: a repeated id in one conversation adds nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageEdited {
    pub message_id: Uuid,
    pub content: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageDeleted {
    pub message_id: Uuid,
}

/// An assistant message begins; it exists from now on with status `streaming`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamStarted {
    pub message_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_message_id: Option<Uuid>,
    pub model: String,
    /// The server instance that runs the answer: only that instance relays it, and only
    /// its death (an expired lease) ends it as `interrupted`. Absent in events written
    /// before several instances were possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<Uuid>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamError {
    pub code: super::codes::ErrorCode,
    pub message: String,
}

/// An assistant message's final text and state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamCompleted {
    pub message_id: Uuid,
    pub content: String,
    pub status: MessageStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StreamError>,
}

/// One stored event: the payload plus where it sits in the log.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedEvent {
    pub conversation_id: Uuid,
    pub seq: i64,
    pub actor_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub event: ConversationEvent,
}

#[derive(Debug, thiserror::Error)]
#[error("stored event of type `{event_type}` cannot be read: {source}")]
pub struct DecodeError {
    pub event_type: String,
    #[source]
    pub source: serde_json::Error,
}

impl ConversationEvent {
    /// The `type` column's value.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::ConversationCreated(_) => "conversation_created",
            Self::ConversationUpdated(_) => "conversation_updated",
            Self::ConversationDeleted(_) => "conversation_deleted",
            Self::MessageAdded(_) => "message_added",
            Self::MessageEdited(_) => "message_edited",
            Self::MessageDeleted(_) => "message_deleted",
            Self::StreamStarted(_) => "stream_started",
            Self::StreamCompleted(_) => "stream_completed",
        }
    }

    /// The `data` column's value: the variant's fields alone.
    pub fn data(&self) -> serde_json::Value {
        let mut tagged = serde_json::to_value(self).unwrap_or_default();
        tagged
            .get_mut("data")
            .map(serde_json::Value::take)
            .unwrap_or_else(|| serde_json::json!({}))
    }

    pub fn decode(event_type: &str, data: serde_json::Value) -> Result<Self, DecodeError> {
        serde_json::from_value(serde_json::json!({ "type": event_type, "data": data })).map_err(
            |source| DecodeError {
                event_type: event_type.to_string(),
                source,
            },
        )
    }

    /// The message this event is about, if any: the store loads it before applying.
    /// Whether the event brings its message into being (its id is new), rather than
    /// changing one that exists.
    pub fn creates_message(&self) -> bool {
        matches!(self, Self::MessageAdded(_) | Self::StreamStarted(_))
    }

    pub fn message_id(&self) -> Option<Uuid> {
        match self {
            Self::MessageAdded(e) => Some(e.message_id),
            Self::MessageEdited(e) => Some(e.message_id),
            Self::MessageDeleted(e) => Some(e.message_id),
            Self::StreamStarted(e) => Some(e.message_id),
            Self::StreamCompleted(e) => Some(e.message_id),
            Self::ConversationCreated(_)
            | Self::ConversationUpdated(_)
            | Self::ConversationDeleted(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_and_data_round_trip() {
        let events = vec![
            ConversationEvent::ConversationCreated(ConversationCreated {
                title: "t".into(),
                system_prompt: Some("be brief".into()),
                model: None,
            }),
            ConversationEvent::ConversationUpdated(ConversationUpdated {
                title: Some("u".into()),
                ..Default::default()
            }),
            ConversationEvent::ConversationDeleted(ConversationDeleted {}),
            ConversationEvent::MessageAdded(MessageAdded {
                message_id: Uuid::now_v7(),
                role: MessageRole::User,
                content: "hi".into(),
                client_message_id: Some("c1".into()),
            }),
            ConversationEvent::StreamCompleted(StreamCompleted {
                message_id: Uuid::now_v7(),
                content: "hello".into(),
                status: MessageStatus::Failed,
                usage: Some(Usage {
                    prompt_tokens: 1,
                    completion_tokens: 2,
                }),
                error: Some(StreamError {
                    code: crate::domain::codes::ErrorCode::BadGateway,
                    message: "x".into(),
                }),
            }),
        ];
        for event in events {
            let decoded = ConversationEvent::decode(event.type_name(), event.data()).unwrap();
            assert_eq!(decoded, event);
        }
    }

    #[test]
    fn data_is_camel_case_without_the_tag() {
        let data = ConversationEvent::MessageEdited(MessageEdited {
            message_id: Uuid::nil(),
            content: "x".into(),
        })
        .data();
        assert_eq!(
            data,
            serde_json::json!({"messageId": Uuid::nil(), "content": "x"})
        );
    }

    #[test]
    fn unknown_types_do_not_decode() {
        assert!(ConversationEvent::decode("message_exploded", serde_json::json!({})).is_err());
    }
}
