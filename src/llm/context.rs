//! What is sent upstream: the system prompt, then the conversation's complete messages in
//! order, within a budget. When the history is too long the oldest turns are dropped first;
//! the system prompt and the newest message always stay. [`ContextWindow`] fills it newest
//! first, so a turn reads only as much history as the budget can hold.

use super::{ChatMessage, ToolCall};
use crate::domain::projection::MessageRecord;
use crate::domain::types::{MessageRole, MessageStatus, ToolCallRecord};

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
            .map(|p| ChatMessage::text(MessageRole::System, p.to_string()));
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
        self.offer_turn(role, content, &[])
    }

    /// Offers the next older usable message with the tools it called (its own calls, not
    /// those of agents it asked): in the request, each step's calls and their results come
    /// before its final text, so the model sees what it looked up. All of it fits, or none.
    pub fn offer_turn(
        &mut self,
        role: MessageRole,
        content: &str,
        tool_calls: &[ToolCallRecord],
    ) -> bool {
        if self.full {
            return false;
        }
        let own: Vec<&ToolCallRecord> = tool_calls
            .iter()
            .filter(|c| c.parent_call_id.is_none() && c.ok.is_some())
            .collect();
        if own.is_empty() {
            // The common case (every message without tools): one message, no list built.
            let message = ChatMessage::text(role, content);
            if !self.fits(message.estimated_tokens()) {
                return false;
            }
            self.kept.push(message);
            return true;
        }
        // Newest first, like `kept`: the final text, then each step's results and calls
        // from the last step back.
        let mut turn = vec![ChatMessage::text(role, content)];
        let mut steps: Vec<u32> = own.iter().map(|c| c.step).collect();
        steps.dedup();
        for step in steps.into_iter().rev() {
            let calls: Vec<&&ToolCallRecord> = own.iter().filter(|c| c.step == step).collect();
            for call in calls.iter().rev() {
                let result = call.content.clone().unwrap_or_default();
                turn.push(ChatMessage::tool_result(call.call_id.clone(), result));
            }
            turn.push(ChatMessage::calling(
                "",
                calls
                    .iter()
                    .map(|c| ToolCall {
                        id: c.call_id.clone(),
                        name: c.name.clone(),
                        arguments: c.arguments.clone(),
                    })
                    .collect(),
            ));
        }
        self.keep(turn)
    }

    /// Keeps `turn` (newest first) if it fits; else the window is full.
    fn keep(&mut self, turn: Vec<ChatMessage>) -> bool {
        let cost = turn.iter().map(ChatMessage::estimated_tokens).sum();
        if !self.fits(cost) {
            return false;
        }
        self.kept.extend(turn);
        true
    }

    /// Takes `cost` from the budget if it fits (the newest message always does); else the
    /// window is full from now on.
    fn fits(&mut self, cost: usize) -> bool {
        if cost > self.remaining && !self.kept.is_empty() {
            self.full = true;
            return false;
        }
        self.remaining = self.remaining.saturating_sub(cost);
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
            tool_calls: Vec::new(),
            citations: Vec::new(),
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
            agent_id: None,
            first_chunk_ms: None,
            total_ms: None,
            validation: None,
            rating: None,
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

    fn call(id: &str, step: u32, parent: Option<&str>) -> ToolCallRecord {
        ToolCallRecord {
            call_id: id.into(),
            name: "current_time".into(),
            arguments: "{}".into(),
            step,
            ok: Some(true),
            content: Some(format!("result of {id}")),
            agent_id: None,
            parent_call_id: parent.map(Into::into),
            answered_by: None,
            answered_by_version: None,
        }
    }

    #[test]
    fn an_answer_with_tools_is_its_steps_calls_and_results_then_its_text() {
        let calls = [
            call("a", 1, None),
            call("b", 1, None),
            call("nested", 1, Some("b")),
            call("c", 2, None),
        ];
        let mut window = ContextWindow::new(None, 10_000);
        assert!(window.offer_turn(MessageRole::Assistant, "final", &calls));
        assert!(window.offer(MessageRole::User, "question"));
        let messages = window.into_messages();
        let shape: Vec<String> = messages
            .iter()
            .map(|m| match (&m.tool_call_id, m.tool_calls.is_empty()) {
                (Some(id), _) => format!("result:{id}"),
                (None, false) => format!(
                    "calls:{}",
                    m.tool_calls
                        .iter()
                        .map(|c| c.id.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                (None, true) => format!("{}:{}", m.role.as_str(), m.content),
            })
            .collect();
        assert_eq!(
            shape,
            [
                "user:question",
                "calls:a,b",
                "result:a",
                "result:b",
                "calls:c",
                "result:c",
                "assistant:final"
            ],
            "a hand-off's own calls stay out"
        );
    }

    #[test]
    fn an_answer_with_tools_fits_whole_or_not_at_all() {
        let big = ToolCallRecord {
            content: Some("x".repeat(4_000)),
            ..call("a", 1, None)
        };
        let mut window = ContextWindow::new(None, 300);
        assert!(window.offer(MessageRole::User, "newest"));
        assert!(!window.offer_turn(MessageRole::Assistant, "short", &[big]));
        assert_eq!(window.into_messages().len(), 1);
    }
}
