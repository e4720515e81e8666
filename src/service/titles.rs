//! Generated titles: after a conversation's first complete answer, while its title is still
//! the placeholder (the first 50 characters of the first message, or the default), a
//! background call to the conversation's model asks for a short title, and a
//! `conversation_updated` event (by the server: no actor, `titleGenerated`) records it. The
//! store records the job in the answer's own transaction (see `domain::follow_ups`); this
//! is its handler. The placeholder stays when the call fails for good, in demo mode, and
//! when the user set a title first.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::domain::commands;
use crate::domain::follow_ups::{JobRecord, TitleJob};
use crate::domain::inputs::MAX_TITLE_CHARS;
use crate::domain::types::{MessageRole, MessageStatus, Priority};
use crate::llm::{ChatMessage, ChatRequest, ProviderError};
use crate::service::chat::ChatService;
use crate::service::jobs::{JobFailure, JobHandler};
use crate::store::Load;

/// What the model is asked (documented in the README).
pub const TITLE_PROMPT: &str = "Write a title of at most six words for the conversation \
below, in the language of the user's message. Reply with the title only: no quotes, no \
final punctuation.";

/// How much of the first message and of the answer the model sees.
const EXCERPT_CHARS: usize = 1_000;

/// The longest title kept from the model's reply.
const GENERATED_TITLE_CHARS: usize = 80;

pub struct TitleGenerator {
    chat: ChatService,
}

impl TitleGenerator {
    pub fn new(chat: ChatService) -> Arc<Self> {
        Arc::new(Self { chat })
    }

    async fn generate(&self, job: &TitleJob) -> Result<(), JobFailure> {
        let store = self.chat.store();
        let transient = |e: crate::store::StoreError| JobFailure::Retry(e.to_string());
        let Some(conversation) = store
            .find_conversation(job.conversation_id, job.owner_id)
            .await
            .map_err(transient)?
        else {
            return Ok(()); // deleted meanwhile: nothing to title
        };
        if !conversation.title_pending {
            return Ok(()); // the user chose a title meanwhile
        }
        let messages = store
            .list_messages(job.conversation_id)
            .await
            .map_err(transient)?;
        let question = messages.iter().find(|m| m.role == MessageRole::User);
        let answer = messages
            .iter()
            .find(|m| m.role == MessageRole::Assistant && m.status == MessageStatus::Complete);
        let (Some(question), Some(answer)) = (question, answer) else {
            return Ok(());
        };
        // The model that answered, while users may still pick it; else the default.
        let models = self.chat.models();
        let model = answer
            .model
            .clone()
            .filter(|m| models.usable().contains(m))
            .unwrap_or_else(|| models.default_id());
        if self.chat.is_demo(&model) {
            return Ok(());
        }
        let excerpt = |text: &str| text.chars().take(EXCERPT_CHARS).collect::<String>();
        let request = ChatRequest {
            sampling: Default::default(),
            tools: Vec::new(),
            model,
            messages: vec![
                ChatMessage::text(MessageRole::System, TITLE_PROMPT),
                ChatMessage::text(
                    MessageRole::User,
                    format!(
                        "User: {}\n\nAssistant: {}",
                        excerpt(&question.content),
                        excerpt(&answer.content)
                    ),
                ),
            ],
        };
        let completion = self
            .chat
            .complete_in_background(job.owner_id, Priority::Normal, request)
            .await
            .map_err(|e| match e {
                ProviderError::Rejected(_) => JobFailure::Permanent(e.to_string()),
                e => JobFailure::Retry(e.to_string()),
            })?;
        let title = clean_title(&completion.content)
            .ok_or_else(|| JobFailure::Permanent("the model's reply held no title".into()))?;
        store
            .execute(job.conversation_id, None, &Load::default(), move |state| {
                commands::set_generated_title(state, title.clone())
            })
            .await
            .map_err(|e| JobFailure::Retry(crate::service::ServiceError::from(e).to_string()))?;
        Ok(())
    }
}

impl JobHandler for TitleGenerator {
    fn run<'a>(&'a self, job: &'a JobRecord) -> BoxFuture<'a, Result<(), JobFailure>> {
        async move {
            let payload: TitleJob = serde_json::from_value(job.payload.clone())
                .map_err(|e| JobFailure::Permanent(format!("unreadable payload: {e}")))?;
            self.generate(&payload).await
        }
        .boxed()
    }
}

/// The title in a model's reply: its first non-empty line, without a `Title:` label,
/// quotes, emphasis or a final full stop, at most [`GENERATED_TITLE_CHARS`]. `None` when
/// nothing is left.
pub fn clean_title(reply: &str) -> Option<String> {
    let line = reply.lines().map(str::trim).find(|l| !l.is_empty())?;
    let line = ["Title:", "title:", "TITLE:"]
        .iter()
        .find_map(|label| line.strip_prefix(label))
        .unwrap_or(line);
    let trimmed = line
        .trim()
        .trim_matches(|c: char| matches!(c, '"' | '\'' | '*' | '#' | '`' | '“' | '”' | '«' | '»'))
        .trim()
        .trim_end_matches(['.', '。'])
        .trim();
    let title: String = trimmed
        .chars()
        .take(GENERATED_TITLE_CHARS.min(MAX_TITLE_CHARS))
        .collect();
    let title = title.trim().to_string();
    (!title.is_empty()).then_some(title)
}

#[cfg(test)]
mod tests {
    use super::clean_title;

    #[test]
    fn a_reply_is_cleaned_to_its_title() {
        let cases = [
            ("Rust lifetimes explained", Some("Rust lifetimes explained")),
            (
                "  \"Baking sourdough bread.\"  ",
                Some("Baking sourdough bread"),
            ),
            (
                "\n\nTitle: **Trip to Lisbon**\nmore text",
                Some("Trip to Lisbon"),
            ),
            ("「東京の天気」。", Some("「東京の天気」")),
            ("   \n \"\" ", None),
            ("", None),
        ];
        for (reply, expected) in cases {
            assert_eq!(clean_title(reply).as_deref(), expected, "{reply:?}");
        }
        let long = "word ".repeat(100);
        assert_eq!(clean_title(&long).unwrap().chars().count(), 79);
    }
}
