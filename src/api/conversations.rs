//! `/api/conversations/*`: conversations, their event log, and message edits. Another
//! user's conversation is always 404.

use poem_openapi::{
    param::{Path, Query},
    payload::Json,
    ApiResponse, OpenApi,
};
use uuid::Uuid;

use super::error::ApiResult;
use super::json::JsonBody;
use super::models::{
    Conversation, ConversationInput, ConversationSummary, EditMessageRequest, Event, Message,
    MessageResponse,
};
use super::security::BearerAuth;
use super::state::AppState;
use super::Tags;
use crate::service::conversations::ConversationFields;

pub struct ConversationsApi {
    pub state: AppState,
}

#[derive(ApiResponse)]
pub enum Created {
    #[oai(status = 201)]
    Created(Json<Conversation>),
}

#[derive(ApiResponse)]
pub enum Deleted {
    #[oai(status = 204)]
    NoContent,
}

impl From<ConversationInput> for ConversationFields {
    fn from(i: ConversationInput) -> Self {
        Self {
            title: i.title,
            system_prompt: i.system_prompt,
            model: i.model,
            agent_id: i.agent_id,
        }
    }
}

#[OpenApi(prefix_path = "/conversations", tag = "Tags::Conversations")]
impl ConversationsApi {
    /// List your conversations, most recently updated first
    #[oai(path = "/", method = "get", operation_id = "listConversations")]
    async fn list(
        &self,
        auth: BearerAuth,
        /// At most this many (default 50, at most 200).
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "200"))
        )]
        limit: Query<u64>,
        /// Skip this many.
        #[oai(default, validator(maximum(value = "1000000")))]
        offset: Query<u64>,
    ) -> ApiResult<Json<Vec<ConversationSummary>>> {
        let list = self
            .state
            .conversations
            .list(auth.user(), limit.0, offset.0)
            .await?;
        Ok(Json(list.into_iter().map(Into::into).collect()))
    }

    /// Create a conversation
    #[oai(path = "/", method = "post", operation_id = "createConversation")]
    async fn create(
        &self,
        auth: BearerAuth,
        body: JsonBody<ConversationInput>,
    ) -> ApiResult<Created> {
        let view = self
            .state
            .conversations
            .create(auth.user(), body.0.into())
            .await?;
        Ok(Created::Created(Json(view.into())))
    }

    /// Get a conversation with its messages
    ///
    /// With `atSeq=N`, the conversation as it stood right after event N (time travel).
    #[oai(path = "/:id", method = "get", operation_id = "getConversation")]
    async fn get(
        &self,
        auth: BearerAuth,
        id: Path<Uuid>,
        /// Replay the log up to and including this `seq`.
        #[oai(name = "atSeq", validator(minimum(value = "1")))]
        at_seq: Query<Option<i64>>,
    ) -> ApiResult<Json<Conversation>> {
        let view = self
            .state
            .conversations
            .get(auth.user(), id.0, at_seq.0)
            .await?;
        Ok(Json(view.into()))
    }

    /// Change a conversation's title, system prompt or model
    #[oai(path = "/:id", method = "patch", operation_id = "updateConversation")]
    async fn update(
        &self,
        auth: BearerAuth,
        id: Path<Uuid>,
        body: JsonBody<ConversationInput>,
    ) -> ApiResult<Json<Conversation>> {
        let view = self
            .state
            .conversations
            .update(auth.user(), id.0, body.0.into())
            .await?;
        Ok(Json(view.into()))
    }

    /// Delete a conversation
    ///
    /// Afterwards it is 404 everywhere; its event log is kept (ending in `conversation_deleted`).
    #[oai(path = "/:id", method = "delete", operation_id = "deleteConversation")]
    async fn delete(&self, auth: BearerAuth, id: Path<Uuid>) -> ApiResult<Json<MessageResponse>> {
        self.state.conversations.delete(auth.user(), id.0).await?;
        Ok(Json(MessageResponse {
            message: "Conversation deleted successfully".into(),
        }))
    }

    /// Read a conversation's event log, ascending by `seq`
    #[oai(path = "/:id/events", method = "get", operation_id = "listEvents")]
    async fn events(
        &self,
        auth: BearerAuth,
        id: Path<Uuid>,
        /// Only events with a greater `seq`.
        #[oai(default, validator(minimum(value = "0")))]
        after: Query<i64>,
        /// At most this many (default 100, at most 1000).
        #[oai(
            default = "default_event_limit",
            validator(minimum(value = "1"), maximum(value = "1000"))
        )]
        limit: Query<u64>,
    ) -> ApiResult<Json<Vec<Event>>> {
        let events = self
            .state
            .conversations
            .events(auth.user(), id.0, after.0, limit.0)
            .await?;
        Ok(Json(events.into_iter().map(Into::into).collect()))
    }

    /// Read a conversation's messages a page at a time, newest first
    ///
    /// For long conversations: `GET /api/conversations/{id}` returns every message, this
    /// returns `limit` of them, before the message `before` (omit it for the newest). Pass
    /// the last (oldest) message's id of one page as `before` to get the next.
    #[oai(path = "/:id/messages", method = "get", operation_id = "listMessages")]
    async fn messages(
        &self,
        auth: BearerAuth,
        id: Path<Uuid>,
        /// Only messages older than this one (a message id of this conversation).
        before: Query<Option<Uuid>>,
        /// At most this many (default 50, at most 200).
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "200"))
        )]
        limit: Query<u64>,
    ) -> ApiResult<Json<Vec<Message>>> {
        let page = self
            .state
            .conversations
            .messages_page(auth.user(), id.0, before.0, limit.0)
            .await?;
        Ok(Json(page.into_iter().map(Into::into).collect()))
    }

    /// Edit one of your messages
    #[oai(
        path = "/:id/messages/:messageId",
        method = "patch",
        operation_id = "editMessage"
    )]
    async fn edit_message(
        &self,
        auth: BearerAuth,
        id: Path<Uuid>,
        #[oai(name = "messageId")] message_id: Path<Uuid>,
        body: JsonBody<EditMessageRequest>,
    ) -> ApiResult<Json<Message>> {
        let message = self
            .state
            .conversations
            .edit_message(auth.user(), id.0, message_id.0, &body.0.content)
            .await?;
        Ok(Json(message.into()))
    }

    /// Delete a message
    #[oai(
        path = "/:id/messages/:messageId",
        method = "delete",
        operation_id = "deleteMessage"
    )]
    async fn delete_message(
        &self,
        auth: BearerAuth,
        id: Path<Uuid>,
        #[oai(name = "messageId")] message_id: Path<Uuid>,
    ) -> ApiResult<Deleted> {
        self.state
            .conversations
            .delete_message(auth.user(), id.0, message_id.0)
            .await?;
        Ok(Deleted::NoContent)
    }
}

fn default_limit() -> u64 {
    50
}

fn default_event_limit() -> u64 {
    100
}
