//! `POST /api/chat`: send a message and get the whole answer in one response.

use poem_openapi::{payload::Json, Object, OpenApi};
use serde::Deserialize;
use uuid::Uuid;

use super::error::UpstreamApiError;
use super::json::JsonBody;
use super::models::{Conversation, Message};
use super::security::BearerAuth;
use super::state::AppState;
use super::Tags;
use crate::service::chat::TurnRequest;

pub struct ChatApi {
    pub state: AppState,
}

#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct ChatRequest {
    /// The user's message (not blank, at most `MAX_MESSAGE_CHARS`, 100 000 by default).
    pub message: String,
    /// An existing conversation of yours; without it a conversation is created, titled
    /// from the message's first 50 characters.
    pub conversation_id: Option<Uuid>,
    /// The model for this answer; defaults to the conversation's, then the server's.
    pub model: Option<String>,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ChatResponse {
    /// The assistant's answer, as stored.
    pub message: Message,
    /// The conversation with every message, the new ones included.
    pub conversation: Conversation,
}

#[OpenApi(tag = "Tags::Chat")]
impl ChatApi {
    /// Send a message and receive the complete answer
    ///
    /// The user message is stored first; if the model provider fails (502/504) it stays
    /// stored, and the answer is recorded with status `failed`. The request counts as one
    /// of the user's concurrent answers (`MAX_CONCURRENT_STREAMS_PER_USER`, shared with the
    /// WebSocket): past it, 429 `RATE_LIMIT_EXCEEDED`. For token-by-token streaming use the
    /// WebSocket at `/api/ws`.
    #[oai(path = "/chat", method = "post", operation_id = "chat")]
    async fn chat(
        &self,
        auth: BearerAuth,
        body: JsonBody<ChatRequest>,
    ) -> Result<Json<ChatResponse>, UpstreamApiError> {
        // One of the user's concurrent answers, like a streamed one, for the whole request.
        let _slot = self.state.hub.reserve_answer(auth.user().id).await?;
        let body = body.0;
        let request = TurnRequest {
            conversation_id: body.conversation_id,
            create_if_missing: false,
            message: body.message,
            client_message_id: None,
            model: body.model,
        };
        let (message, view) = self.state.chat.chat(auth.user(), request).await?;
        Ok(Json(ChatResponse {
            message: message.into(),
            conversation: view.into(),
        }))
    }
}
