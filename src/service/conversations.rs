//! Conversations and their messages: reads straight from the projections (owner-filtered),
//! writes through the store's one append path with the pure commands of `domain::commands`.

use crate::service::chat::AgentBindings;
use std::sync::Arc;

use uuid::Uuid;

use super::auth::CurrentUser;
use super::models::ModelRegistry;
use super::{ServiceError, ServiceResult};
use crate::domain::commands;
use crate::domain::events::{ConversationCreated, ConversationUpdated, RecordedEvent};
use crate::domain::inputs::{
    bounded_prose, bounded_text, MessageText, MAX_SYSTEM_PROMPT_CHARS, MAX_TITLE_CHARS,
};
use crate::domain::projection::{apply, ConversationRecord, ConversationState, MessageRecord};
use crate::store::{ConversationPage, Load, Store};

/// Events read at a time when a long log is folded.
const EVENT_PAGE: u64 = 1_000;

pub const DEFAULT_TITLE: &str = "New conversation";
pub const MAX_PAGE: u64 = 200;

/// A conversation with its messages in order.
pub struct ConversationView {
    pub conversation: ConversationRecord,
    pub messages: Vec<MessageRecord>,
}

/// Optional fields of a create or update request, unvalidated.
#[derive(Default)]
pub struct ConversationFields {
    pub title: Option<String>,
    pub system_prompt: Option<String>,
    pub model: Option<String>,
    /// An agent the user may use; `""` unbinds on update.
    pub agent_id: Option<String>,
}

impl ConversationFields {
    /// `model`, when given and not empty (which means the default), must be a catalogue
    /// model.
    fn validate(self, models: &ModelRegistry) -> ServiceResult<ConversationUpdated> {
        Ok(ConversationUpdated {
            title: self
                .title
                .map(|t| bounded_text("title", &t, MAX_TITLE_CHARS, false))
                .transpose()?,
            system_prompt: self
                .system_prompt
                .map(|p| bounded_prose("systemPrompt", &p, MAX_SYSTEM_PROMPT_CHARS, true))
                .transpose()?,
            model: self
                .model
                .map(|m| match m.is_empty() {
                    true => Ok(m),
                    false => models.check(&m),
                })
                .transpose()?,
            title_generated: false,
            agent_id: self
                .agent_id
                .map(|a| match a.is_empty() {
                    true => Ok(a),
                    false => a.parse::<Uuid>().map(|id| id.to_string()).map_err(|_| {
                        ServiceError::Validation {
                            field: "agentId",
                            message: "must be a UUID".into(),
                        }
                    }),
                })
                .transpose()?,
        })
    }
}

#[derive(Clone)]
pub struct ConversationService {
    store: Store,
    max_message_chars: usize,
    models: Arc<ModelRegistry>,
    /// Told of every binding made here, so the next turn is prepared for its agent.
    bindings: AgentBindings,
}

impl ConversationService {
    pub fn new(store: Store, max_message_chars: usize, models: Arc<ModelRegistry>) -> Self {
        Self {
            store,
            max_message_chars,
            models,
            bindings: AgentBindings::default(),
        }
    }

    /// Tells `bindings` (the chat service's) of every agent bound or unbound here.
    pub fn with_bindings(mut self, bindings: AgentBindings) -> Self {
        self.bindings = bindings;
        self
    }

    pub async fn list(
        &self,
        user: CurrentUser,
        limit: u64,
        offset: u64,
    ) -> ServiceResult<Vec<ConversationRecord>> {
        let page = ConversationPage {
            limit: limit.min(MAX_PAGE),
            offset,
        };
        Ok(self.store.list_conversations(user.id, page).await?)
    }

    #[tracing::instrument(skip_all, fields(user_id = %user.id))]
    pub async fn create(
        &self,
        user: CurrentUser,
        fields: ConversationFields,
    ) -> ServiceResult<ConversationView> {
        let fields = fields.validate(&self.models)?;
        let agent_id = self.usable_agent(user, fields.agent_id.as_deref()).await?;
        let created = ConversationCreated {
            agent_id,
            title_pending: fields.title.is_none(),
            title: fields.title.unwrap_or_else(|| DEFAULT_TITLE.to_string()),
            system_prompt: fields.system_prompt.filter(|p| !p.is_empty()),
            model: fields.model.filter(|m| !m.is_empty()),
        };
        let id = Uuid::now_v7();
        let committed = self
            .store
            .execute(id, Some(user.id), &Load::default(), move |state| {
                commands::create_conversation(state, created.clone())
            })
            .await?;
        let conversation = committed
            .state
            .conversation
            .ok_or_else(|| anyhow::anyhow!("created conversation missing"))?;
        self.bindings
            .remember(conversation.id, conversation.agent_id);
        Ok(ConversationView {
            conversation,
            messages: vec![],
        })
    }

    /// The conversation now, or as it stood right after event `at_seq`.
    pub async fn get(
        &self,
        user: CurrentUser,
        id: Uuid,
        at_seq: Option<i64>,
    ) -> ServiceResult<ConversationView> {
        let Some(at_seq) = at_seq else {
            let (conversation, messages) = self
                .store
                .find_conversation_with_messages(id, user.id)
                .await?
                .ok_or(ServiceError::ConversationNotFound)?;
            return Ok(ConversationView {
                conversation,
                messages,
            });
        };
        let conversation = self.owned(user, id).await?;
        if at_seq < 1 || at_seq > conversation.last_seq {
            return Err(ServiceError::Validation {
                field: "atSeq",
                message: format!(
                    "must be between 1 and the conversation's lastSeq ({})",
                    conversation.last_seq
                ),
            });
        }
        // Folded page by page: memory holds the state, not the whole log.
        let mut state = ConversationState::default();
        let mut after = 0;
        while after < at_seq {
            let page = self
                .store
                .list_events(id, after, Some(at_seq), EVENT_PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for event in &page {
                apply(&mut state, event).map_err(|e| anyhow::anyhow!(e))?;
            }
        }
        let messages = state.ordered_messages().into_iter().cloned().collect();
        let conversation = state
            .conversation
            .ok_or_else(|| anyhow::anyhow!("replayed conversation missing"))?;
        Ok(ConversationView {
            conversation,
            messages,
        })
    }

    #[tracing::instrument(skip_all, fields(user_id = %user.id, conversation_id = %id))]
    pub async fn update(
        &self,
        user: CurrentUser,
        id: Uuid,
        fields: ConversationFields,
    ) -> ServiceResult<ConversationView> {
        let patch = fields.validate(&self.models)?;
        self.usable_agent(user, patch.agent_id.as_deref()).await?;
        let committed = self
            .store
            .execute(id, Some(user.id), &Load::default(), move |state| {
                commands::update_conversation(state, user.id, patch.clone())
            })
            .await?;
        if let Some(conversation) = &committed.state.conversation {
            self.bindings.remember(id, conversation.agent_id);
        }
        self.get(user, id, None).await
    }

    /// The agent named (`None` for none or `""`), if `user` may use it; 400 naming
    /// `agentId` otherwise (another user's private agent is as unknown as a made-up id).
    async fn usable_agent(
        &self,
        user: CurrentUser,
        agent_id: Option<&str>,
    ) -> ServiceResult<Option<Uuid>> {
        let Some(id) = agent_id.filter(|a| !a.is_empty()) else {
            return Ok(None);
        };
        let id: Uuid = id.parse().map_err(|_| ServiceError::Validation {
            field: "agentId",
            message: "must be a UUID".into(),
        })?;
        match self.store.find_agent(id).await? {
            Some(agent) if agent.usable_by(user.id) => Ok(Some(id)),
            _ => Err(ServiceError::Validation {
                field: "agentId",
                message: format!("no agent {id} that you may use"),
            }),
        }
    }

    #[tracing::instrument(skip_all, fields(user_id = %user.id, conversation_id = %id))]
    pub async fn delete(&self, user: CurrentUser, id: Uuid) -> ServiceResult<()> {
        self.store
            .execute(id, Some(user.id), &Load::default(), move |state| {
                commands::delete_conversation(state, user.id)
            })
            .await?;
        Ok(())
    }

    pub async fn events(
        &self,
        user: CurrentUser,
        id: Uuid,
        after: i64,
        limit: u64,
    ) -> ServiceResult<Vec<RecordedEvent>> {
        self.owned(user, id).await?;
        Ok(self.store.list_events(id, after, None, limit).await?)
    }

    /// A page of the conversation's messages, newest first: the `limit` before the message
    /// `before` (404 `MESSAGE_NOT_FOUND` if the conversation has no such message), or the
    /// newest. Read in ranges of positions from the newest back, each twice the last, so
    /// the cost follows the page, not the conversation's length.
    pub async fn messages_page(
        &self,
        user: CurrentUser,
        id: Uuid,
        before: Option<Uuid>,
        limit: u64,
    ) -> ServiceResult<Vec<MessageRecord>> {
        let conversation = self.owned(user, id).await?;
        let mut to = match before {
            Some(message) => self
                .store
                .message_position(id, message)
                .await?
                .ok_or(ServiceError::MessageNotFound)?,
            None => conversation.last_seq + 1,
        };
        let limit = limit as usize;
        let mut width = (limit as i64 * 2).max(16);
        let mut page = Vec::with_capacity(limit);
        while to > 0 && page.len() < limit {
            let from = (to - width).max(0);
            let mut older = self.store.messages_between(id, from, to).await?;
            older.truncate(limit - page.len());
            page.extend(older);
            to = from;
            width = width.saturating_mul(2);
        }
        Ok(page)
    }

    #[tracing::instrument(skip_all, fields(user_id = %user.id, conversation_id = %id))]
    pub async fn edit_message(
        &self,
        user: CurrentUser,
        id: Uuid,
        message_id: Uuid,
        content: &str,
    ) -> ServiceResult<MessageRecord> {
        let content = MessageText::parse("content", content, self.max_message_chars)?.into_inner();
        let committed = self
            .store
            .execute(
                id,
                Some(user.id),
                &Load::messages(&[message_id]),
                move |state| commands::edit_message(state, user.id, message_id, content.clone()),
            )
            .await?;
        committed
            .state
            .messages
            .get(&message_id)
            .cloned()
            .ok_or(ServiceError::MessageNotFound)
    }

    #[tracing::instrument(skip_all, fields(user_id = %user.id, conversation_id = %id))]
    pub async fn delete_message(
        &self,
        user: CurrentUser,
        id: Uuid,
        message_id: Uuid,
    ) -> ServiceResult<()> {
        self.store
            .execute(
                id,
                Some(user.id),
                &Load::messages(&[message_id]),
                move |state| commands::delete_message(state, user.id, message_id),
            )
            .await?;
        Ok(())
    }

    async fn owned(&self, user: CurrentUser, id: Uuid) -> ServiceResult<ConversationRecord> {
        self.store
            .find_conversation(id, user.id)
            .await?
            .ok_or(ServiceError::ConversationNotFound)
    }
}
