//! The WebSocket protocol: every frame is a JSON text frame with a `type`. Field names are
//! camelCase, as in `../shared/CONTRACT.md`; `openapi/asyncapi.yaml` documents the same set.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::codes::ErrorCode;
use crate::domain::events::StreamError;
use crate::domain::types::{MessageStatus, ToolCallRecord, Usage};

/// Frames a client may send. Parse them with [`ClientFrame::parse`], which reports the
/// offending field by name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum ClientFrame {
    Auth {
        token: String,
    },
    JoinConversation {
        conversation_id: Uuid,
    },
    LeaveConversation {
        conversation_id: Uuid,
    },
    StreamChat {
        message: String,
        conversation_id: Option<Uuid>,
        client_message_id: Option<String>,
        /// A catalogue model for this answer (else the conversation's, else the default).
        model: Option<String>,
    },
    CancelStream {
        message_id: Uuid,
    },
    /// Rate an answer (`rating: null` removes the rating), as `PUT .../rating` does.
    RateMessage {
        conversation_id: Uuid,
        message_id: Uuid,
        /// Required, and `null` to remove: a frame that forgot it is an error, not a removal.
        #[serde(deserialize_with = "present_or_null")]
        rating: Option<crate::domain::types::RatingValue>,
        #[serde(default)]
        comment: Option<String>,
    },
    Resume {
        conversation_id: Uuid,
        after_seq: i64,
    },
    Ping,
}

/// An `Option` field that must be present (`null` allowed): `deserialize_with` takes serde's
/// missing-means-`None` for `Option`s away.
fn present_or_null<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer)
}

impl ClientFrame {
    /// Parses a text frame. An error names the field at fault (`conversationId: invalid
    /// type: …`), or `type` when the frame type itself is missing or unknown.
    ///
    /// serde loses field paths inside internally tagged enums, so the `type` is taken off
    /// first and the rest read as that variant's fields (`{"join_conversation": {...}}`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("frame is not valid JSON: {e}"))?;
        let serde_json::Value::Object(mut fields) = value else {
            return Err("frame must be a JSON object with a `type`".into());
        };
        let kind = match fields.remove("type") {
            Some(serde_json::Value::String(kind)) => kind,
            Some(_) => return Err("type: must be a string".into()),
            None => return Err("type: missing field `type`".into()),
        };
        if !Self::TYPES.contains(&kind.as_str()) {
            return Err(format!(
                "type: unknown frame type `{kind}`, expected one of {}",
                Self::TYPES.join(", ")
            ));
        }
        let tagged = if kind == "ping" {
            serde_json::Value::String(kind)
        } else {
            serde_json::json!({ kind: fields })
        };
        serde_path_to_error::deserialize(tagged).map_err(|err| {
            // The path starts with the variant (`join_conversation.conversationId`).
            let path = err.path().to_string();
            let field = path.split_once('.').map(|(_, rest)| rest.to_string());
            match field {
                Some(field) if !field.is_empty() => format!("{field}: {}", err.inner()),
                _ => err.inner().to_string(),
            }
        })
    }

    pub const TYPES: &'static [&'static str] = &[
        "auth",
        "join_conversation",
        "leave_conversation",
        "stream_chat",
        "cancel_stream",
        "rate_message",
        "resume",
        "ping",
    ];

    /// The `type` of this frame; exhaustive, so a new variant must be named here (and so in
    /// [`Self::TYPES`], which a test checks, and in `openapi/asyncapi.yaml`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Auth { .. } => "auth",
            Self::JoinConversation { .. } => "join_conversation",
            Self::LeaveConversation { .. } => "leave_conversation",
            Self::StreamChat { .. } => "stream_chat",
            Self::CancelStream { .. } => "cancel_stream",
            Self::RateMessage { .. } => "rate_message",
            Self::Resume { .. } => "resume",
            Self::Ping => "ping",
        }
    }
}

/// Frames the server sends.
/// `Deserialize` is for frames that cross instances (see `cluster::pg_bus`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum ServerFrame {
    /// Authentication succeeded (by `?token=` or an `auth` frame, also on re-authentication
    /// in place). The socket is closed with 4401 at `expires_at` unless a fresh `auth`
    /// frame arrives before then.
    Ready {
        user_id: Uuid,
        expires_at: chrono::DateTime<chrono::Utc>,
    },
    Joined {
        conversation_id: Uuid,
        last_seq: i64,
    },
    Left {
        conversation_id: Uuid,
    },
    StreamStart {
        conversation_id: Uuid,
        message_id: Uuid,
        user_message_id: Uuid,
        seq: i64,
    },
    StreamChunk {
        conversation_id: Uuid,
        message_id: Uuid,
        index: u64,
        delta: String,
    },
    StreamSnapshot {
        conversation_id: Uuid,
        message_id: Uuid,
        content: String,
        next_index: u64,
        /// The answer's tool calls so far (results cut to `TOOL_RESULT_MAX_CHARS`).
        #[serde(default)]
        tool_calls: Vec<ToolCallRecord>,
        /// The `seq` of the last tool event it covers (0: none): later `tool_call` and
        /// `tool_result` frames have greater ones.
        #[serde(default)]
        tool_seq: i64,
    },
    /// The answer waits for the model's budget: `position` 1 is next. Sent after
    /// `stream_start` and again whenever the place changes, until the first chunk.
    StreamQueued {
        conversation_id: Uuid,
        message_id: Uuid,
        position: u64,
    },
    StreamComplete {
        conversation_id: Uuid,
        message_id: Uuid,
        status: MessageStatus,
        content: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<StreamError>,
        seq: i64,
        /// The tools the answer called (results cut to `TOOL_RESULT_MAX_CHARS`).
        #[serde(default)]
        tool_calls: Vec<ToolCallRecord>,
        /// The passages its knowledge searches gave the model.
        #[serde(default)]
        citations: Vec<crate::domain::knowledge::Passage>,
    },
    /// A tool the answer's model called, once its arguments are whole (and recorded as the
    /// `tool_called` event `seq`).
    ToolCall {
        conversation_id: Uuid,
        message_id: Uuid,
        call_id: String,
        name: String,
        arguments: String,
        seq: i64,
        /// The agent whose model called it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_id: Option<Uuid>,
        /// Set for a call inside an `ask_agent` hand-off: that call's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent_call_id: Option<String>,
    },
    /// A tool call's result (cut to `TOOL_RESULT_MAX_CHARS`; the log keeps it whole).
    ToolResult {
        conversation_id: Uuid,
        message_id: Uuid,
        call_id: String,
        name: String,
        ok: bool,
        content: String,
        seq: i64,
    },
    /// A knowledge-base document's ingestion moved on: to its owner's sockets.
    DocumentStatus {
        knowledge_base_id: Uuid,
        document_id: Uuid,
        status: crate::domain::types::DocumentStatus,
        progress: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// An answer's checks (and the judge's scores) finished, or changed: to its
    /// conversation's room.
    MessageValidated {
        conversation_id: Uuid,
        message_id: Uuid,
        validation: crate::domain::validation::Validation,
    },
    Event {
        event: serde_json::Value,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    Pong,
}

impl ServerFrame {
    pub const TYPES: &'static [&'static str] = &[
        "ready",
        "joined",
        "left",
        "stream_start",
        "stream_chunk",
        "stream_snapshot",
        "stream_queued",
        "stream_complete",
        "tool_call",
        "tool_result",
        "document_status",
        "message_validated",
        "event",
        "error",
        "pong",
    ];

    /// The `type` of this frame; exhaustive, like [`ClientFrame::type_name`].
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Ready { .. } => "ready",
            Self::Joined { .. } => "joined",
            Self::Left { .. } => "left",
            Self::StreamStart { .. } => "stream_start",
            Self::StreamChunk { .. } => "stream_chunk",
            Self::StreamSnapshot { .. } => "stream_snapshot",
            Self::StreamQueued { .. } => "stream_queued",
            Self::StreamComplete { .. } => "stream_complete",
            Self::ToolCall { .. } => "tool_call",
            Self::ToolResult { .. } => "tool_result",
            Self::DocumentStatus { .. } => "document_status",
            Self::MessageValidated { .. } => "message_validated",
            Self::Event { .. } => "event",
            Self::Error { .. } => "error",
            Self::Pong => "pong",
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            code,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"INTERNAL_ERROR","message":"unserialisable frame"}"#.into()
        })
    }
}

/// What a frame is about, for the per-socket filter that keeps resumes free of duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKey {
    Start {
        message_id: Uuid,
        seq: i64,
    },
    Chunk {
        message_id: Uuid,
        index: u64,
    },
    Snapshot {
        message_id: Uuid,
        next_index: u64,
        tool_seq: i64,
    },
    /// A tool call or result, recorded as event `seq`.
    Tool {
        message_id: Uuid,
        seq: i64,
    },
    Complete {
        message_id: Uuid,
        seq: i64,
    },
    /// A replayed event: `finished` names the message a `stream_completed` event ends.
    Event {
        seq: i64,
        finished: Option<Uuid>,
    },
    Other,
}

/// A frame serialised once, shared by every socket in the room.
#[derive(Debug)]
pub struct OutFrame {
    pub conversation_id: Option<Uuid>,
    pub key: FrameKey,
    pub json: String,
    /// An answer to this socket's own request: always delivered, even if it repeats what the
    /// socket has seen (a repeated send asks for exactly that).
    pub direct: bool,
    /// For a chunk: when its upstream delta arrived, so each socket's writer can measure the
    /// relay's own cost (`chat_relay_overhead_seconds`).
    pub arrived: Option<std::time::Instant>,
}

impl OutFrame {
    pub fn new(frame: &ServerFrame) -> Self {
        let (conversation_id, key) = key_of(frame);
        Self {
            conversation_id,
            key,
            json: frame.to_json(),
            direct: false,
            arrived: None,
        }
    }

    /// A frame another instance serialised: its JSON is kept as it came.
    pub fn received(json: String) -> Result<(Self, ServerFrame), serde_json::Error> {
        let frame: ServerFrame = serde_json::from_str(&json)?;
        let (conversation_id, key) = key_of(&frame);
        Ok((
            Self {
                conversation_id,
                key,
                json,
                direct: false,
                arrived: None,
            },
            frame,
        ))
    }

    /// This frame carries text that arrived from the upstream at `at`.
    pub fn arrived_at(self, at: std::time::Instant) -> Self {
        Self {
            arrived: Some(at),
            ..self
        }
    }

    /// This frame as a reply to the socket's own request (see [`OutFrame::direct`]).
    pub fn into_direct(self) -> Self {
        Self {
            direct: true,
            ..self
        }
    }

    /// A replayed event of `conversation_id`.
    pub fn event(
        conversation_id: Uuid,
        seq: i64,
        finished: Option<Uuid>,
        event: serde_json::Value,
    ) -> Self {
        Self {
            conversation_id: Some(conversation_id),
            key: FrameKey::Event { seq, finished },
            json: ServerFrame::Event { event }.to_json(),
            direct: false,
            arrived: None,
        }
    }
}

/// What a socket's writer needs to know of a frame to keep its view free of repeats.
fn key_of(frame: &ServerFrame) -> (Option<Uuid>, FrameKey) {
    match frame {
        ServerFrame::StreamStart {
            conversation_id,
            message_id,
            seq,
            ..
        } => (
            Some(*conversation_id),
            FrameKey::Start {
                message_id: *message_id,
                seq: *seq,
            },
        ),
        ServerFrame::StreamChunk {
            conversation_id,
            message_id,
            index,
            ..
        } => (
            Some(*conversation_id),
            FrameKey::Chunk {
                message_id: *message_id,
                index: *index,
            },
        ),
        ServerFrame::StreamSnapshot {
            conversation_id,
            message_id,
            next_index,
            tool_seq,
            ..
        } => (
            Some(*conversation_id),
            FrameKey::Snapshot {
                message_id: *message_id,
                next_index: *next_index,
                tool_seq: *tool_seq,
            },
        ),
        ServerFrame::ToolCall {
            conversation_id,
            message_id,
            seq,
            ..
        }
        | ServerFrame::ToolResult {
            conversation_id,
            message_id,
            seq,
            ..
        } => (
            Some(*conversation_id),
            FrameKey::Tool {
                message_id: *message_id,
                seq: *seq,
            },
        ),
        ServerFrame::StreamComplete {
            conversation_id,
            message_id,
            seq,
            ..
        } => (
            Some(*conversation_id),
            FrameKey::Complete {
                message_id: *message_id,
                seq: *seq,
            },
        ),
        ServerFrame::MessageValidated {
            conversation_id, ..
        } => (Some(*conversation_id), FrameKey::Other),
        _ => (None, FrameKey::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_parse_camel_case_fields() {
        let id = Uuid::now_v7();
        let frame = ClientFrame::parse(&format!(
            r#"{{"type":"resume","conversationId":"{id}","afterSeq":3}}"#
        ))
        .unwrap();
        assert_eq!(
            frame,
            ClientFrame::Resume {
                conversation_id: id,
                after_seq: 3
            }
        );
        let frame = ClientFrame::parse(r#"{"type":"stream_chat","message":"hi"}"#).unwrap();
        assert_eq!(
            frame,
            ClientFrame::StreamChat {
                message: "hi".into(),
                conversation_id: None,
                client_message_id: None,
                model: None,
            }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping)
        );
    }

    #[test]
    fn parse_errors_name_the_field() {
        let cases = [
            (
                r#"{"type":"join_conversation","conversationId":123}"#,
                "conversationId: ",
            ),
            (
                r#"{"type":"join_conversation","conversationId":"nope"}"#,
                "conversationId: ",
            ),
            (
                r#"{"type":"join_conversation"}"#,
                "missing field `conversationId`",
            ),
            (r#"{"type":"stream_chat","message":5}"#, "message: "),
            (
                r#"{"type":"resume","conversationId":"00000000-0000-0000-0000-000000000000","afterSeq":"x"}"#,
                "afterSeq: ",
            ),
            (
                r#"{"type":"explode"}"#,
                "type: unknown frame type `explode`",
            ),
            (
                r#"{"type":"rate_message","conversationId":"00000000-0000-0000-0000-000000000000","messageId":"00000000-0000-0000-0000-000000000000"}"#,
                "missing field `rating`",
            ),
            (
                r#"{"type":"rate_message","conversationId":"00000000-0000-0000-0000-000000000000","messageId":"00000000-0000-0000-0000-000000000000","rating":"sideways"}"#,
                "rating: ",
            ),
            (r#"{"conversationId":1}"#, "type: missing"),
            (r#"[1,2]"#, "JSON object"),
            (r#"{not json"#, "not valid JSON"),
        ];
        for (frame, expected) in cases {
            let err = ClientFrame::parse(frame).unwrap_err();
            assert!(err.contains(expected), "{frame}: {err}");
        }
    }

    /// One of every server frame: adding a variant without listing it here fails to compile
    /// in `type_name`, and listing it here checks `TYPES` and the serialised `type`.
    fn every_server_frame() -> Vec<ServerFrame> {
        let id = Uuid::nil();
        vec![
            ServerFrame::Ready {
                user_id: id,
                expires_at: chrono::DateTime::UNIX_EPOCH,
            },
            ServerFrame::Joined {
                conversation_id: id,
                last_seq: 1,
            },
            ServerFrame::Left {
                conversation_id: id,
            },
            ServerFrame::StreamStart {
                conversation_id: id,
                message_id: id,
                user_message_id: id,
                seq: 1,
            },
            ServerFrame::StreamChunk {
                conversation_id: id,
                message_id: id,
                index: 0,
                delta: "a".into(),
            },
            ServerFrame::StreamSnapshot {
                conversation_id: id,
                message_id: id,
                content: "a".into(),
                next_index: 1,
                tool_calls: vec![],
                tool_seq: 0,
            },
            ServerFrame::StreamQueued {
                conversation_id: id,
                message_id: id,
                position: 1,
            },
            ServerFrame::StreamComplete {
                conversation_id: id,
                message_id: id,
                status: MessageStatus::Complete,
                content: "a".into(),
                usage: None,
                error: None,
                seq: 2,
                tool_calls: vec![],
                citations: vec![],
            },
            ServerFrame::ToolCall {
                conversation_id: id,
                message_id: id,
                call_id: "c".into(),
                name: "current_time".into(),
                arguments: "{}".into(),
                seq: 3,
                agent_id: None,
                parent_call_id: None,
            },
            ServerFrame::ToolResult {
                conversation_id: id,
                message_id: id,
                call_id: "c".into(),
                name: "current_time".into(),
                ok: true,
                content: "now".into(),
                seq: 4,
            },
            ServerFrame::DocumentStatus {
                knowledge_base_id: id,
                document_id: id,
                status: crate::domain::types::DocumentStatus::Processing,
                progress: 0.5,
                error: None,
            },
            ServerFrame::MessageValidated {
                conversation_id: id,
                message_id: id,
                validation: Default::default(),
            },
            ServerFrame::Event {
                event: serde_json::json!({}),
            },
            ServerFrame::error(ErrorCode::Conflict, "y"),
            ServerFrame::Pong,
        ]
    }

    #[test]
    fn the_type_lists_name_every_frame() {
        let frames = every_server_frame();
        assert_eq!(frames.len(), ServerFrame::TYPES.len());
        for frame in frames {
            let json: serde_json::Value = serde_json::from_str(&frame.to_json()).unwrap();
            assert_eq!(json["type"], frame.type_name());
            assert!(ServerFrame::TYPES.contains(&frame.type_name()));
        }
        for name in ClientFrame::TYPES {
            // Every listed client type is accepted by the parser (with its fields).
            let id = Uuid::nil();
            let frame = serde_json::json!({
                "type": name, "token": "t", "conversationId": id, "messageId": id,
                "message": "m", "afterSeq": 0, "rating": null,
            });
            let parsed = ClientFrame::parse(&frame.to_string()).unwrap();
            assert_eq!(parsed.type_name(), *name);
        }
    }

    #[test]
    fn server_frames_serialise_with_type_and_camel_case() {
        let id = Uuid::nil();
        let json = ServerFrame::StreamChunk {
            conversation_id: id,
            message_id: id,
            index: 2,
            delta: "x".into(),
        }
        .to_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["type"], "stream_chunk");
        assert_eq!(value["messageId"], id.to_string());
        assert_eq!(value["index"], 2);
        assert_eq!(
            serde_json::to_value(ServerFrame::Pong).unwrap(),
            serde_json::json!({"type": "pong"})
        );
    }
}
