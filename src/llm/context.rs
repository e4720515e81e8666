//! What is sent upstream: the system prompt, then the conversation's complete messages in
//! order, within a budget. When the history is too long the oldest turns are dropped first;
//! the system prompt and the newest message always stay. [`ContextWindow`] fills it newest
//! first, so a turn reads only as much history as the budget can hold.

use super::ChatMessage;
use crate::domain::projection::MessageRecord;
use crate::domain::types::{MessageRole, MessageStatus};

/// A rough token estimate (about four characters per token, plus a per-message overhead):
/// good enough to keep requests under a model's context window without a tokenizer.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4) + 4
}

/// Whether a message can be sent upstream at all: only `complete` ones with text (a failed
/// or cancelled answer is not something the model said).
pub fn usable(message: &MessageRecord) -> bool {
    message.status == MessageStatus::Complete && !message.content.is_empty()
}

/// The context being filled from the newest usable message back: each older one is kept
/// while it fits the budget, and the first that does not ends it. The system prompt and the
/// newest message are always kept. Lets a caller read a long history newest first, page by
/// page, and stop reading as soon as the window is full.
pub struct ContextWindow {
    system: Option<ChatMessage>,
    remaining: usize,
    /// Newest first.
    kept: Vec<ChatMessage>,
    full: bool,
}

impl ContextWindow {
    pub fn new(system_prompt: Option<&str>, budget_tokens: usize) -> Self {
        let system = system_prompt
            .filter(|p| !p.trim().is_empty())
            .map(|p| ChatMessage {
                role: MessageRole::System,
                content: p.to_string(),
            });
        let remaining = budget_tokens
            .saturating_sub(system.as_ref().map_or(0, |s| estimate_tokens(&s.content)));
        Self {
            system,
            remaining,
            kept: Vec::new(),
            full: false,
        }
    }

    /// Offers the next older usable message; `false` once the window is full (this message
    /// and every older one are left out).
    pub fn offer(&mut self, role: MessageRole, content: &str) -> bool {
        if self.full {
            return false;
        }
        let cost = estimate_tokens(content);
        if cost > self.remaining && !self.kept.is_empty() {
            self.full = true;
            return false;
        }
        self.remaining = self.remaining.saturating_sub(cost);
        self.kept.push(ChatMessage {
            role,
            content: content.to_string(),
        });
        true
    }

    /// The system prompt, then the kept messages in conversation order.
    pub fn into_messages(mut self) -> Vec<ChatMessage> {
        self.kept.reverse();
        self.system.into_iter().chain(self.kept).collect()
    }
}

/// Builds the context from a whole history. `messages` are in conversation order; only
/// [`usable`] ones are sent.
pub fn build_context(
    system_prompt: Option<&str>,
    messages: &[MessageRecord],
    budget_tokens: usize,
) -> Vec<ChatMessage> {
    let mut window = ContextWindow::new(system_prompt, budget_tokens);
    for message in messages.iter().rev().filter(|m| usable(m)) {
        if !window.offer(message.role, &message.content) {
            break;
        }
    }
    window.into_messages()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use uuid::Uuid;

    fn message(
        position: i64,
        role: MessageRole,
        content: &str,
        status: MessageStatus,
    ) -> MessageRecord {
        MessageRecord {
            fallback_reason: None,
            id: Uuid::now_v7(),
            conversation_id: Uuid::nil(),
            position,
            role,
            content: content.into(),
            status,
            model: None,
            usage: None,
            client_message_id: None,
            instance_id: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn system_prompt_first_then_complete_messages_in_order() {
        let messages = vec![
            message(1, MessageRole::User, "q1", MessageStatus::Complete),
            message(2, MessageRole::Assistant, "half", MessageStatus::Cancelled),
            message(3, MessageRole::User, "q2", MessageStatus::Complete),
        ];
        let context = build_context(Some("be brief"), &messages, 10_000);
        let texts: Vec<_> = context
            .iter()
            .map(|m| (m.role, m.content.as_str()))
            .collect();
        assert_eq!(
            texts,
            vec![
                (MessageRole::System, "be brief"),
                (MessageRole::User, "q1"),
                (MessageRole::User, "q2")
            ]
        );
    }

    #[test]
    fn the_oldest_turns_go_first_when_over_budget() {
        let long = "x".repeat(400); // ~104 tokens each
        let messages: Vec<_> = (1..=5)
            .map(|i| {
                message(
                    i,
                    MessageRole::User,
                    &format!("{i}{long}"),
                    MessageStatus::Complete,
                )
            })
            .collect();
        let context = build_context(Some("sys"), &messages, 350);
        assert_eq!(context[0].content, "sys");
        let kept: Vec<_> = context[1..]
            .iter()
            .map(|m| m.content.chars().next().unwrap())
            .collect();
        assert_eq!(kept, vec!['3', '4', '5']);
        // Even a budget smaller than the newest message keeps it.
        let tiny = build_context(None, &messages, 1);
        assert_eq!(tiny.len(), 1);
        assert!(tiny[0].content.starts_with('5'));
    }
}
