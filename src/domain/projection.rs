//! The projection of a conversation's log: one pure function, [`apply`], folds events into
//! a [`ConversationState`]. The live write path (on the rows an event touches), the
//! `rebuild-projections` command (on the whole log) and `atSeq` time travel (on a prefix of
//! the log) all call it, so they cannot drift apart.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::events::{ConversationEvent, RecordedEvent};
use super::types::{FallbackReason, MessageRole, MessageStatus, ToolCallRecord, Usage};
use super::validation::{Rating, Validation};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationRecord {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub title: String,
    pub system_prompt: Option<String>,
    pub model: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_seq: i64,
    pub message_count: i64,
    pub deleted_at: Option<DateTime<Utc>>,
    /// The title is a placeholder (the first message's start, or the default) that a
    /// generated title may replace; `false` once the user or the server set one.
    pub title_pending: bool,
    /// The agent that answers in it, if any.
    pub agent_id: Option<Uuid>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MessageRecord {
    pub id: Uuid,
    pub conversation_id: Uuid,
    /// The `seq` of the event that created the message: the conversation's order.
    pub position: i64,
    pub role: MessageRole,
    pub content: String,
    pub status: MessageStatus,
    pub model: Option<String>,
    pub usage: Option<Usage>,
    pub client_message_id: Option<String>,
    /// The instance that runs (or ran) a streamed answer.
    pub instance_id: Option<Uuid>,
    /// Why another model than the conversation's answered (see `model`).
    pub fallback_reason: Option<FallbackReason>,
    /// The tools an answer called, in the order they were called.
    pub tool_calls: Vec<ToolCallRecord>,
    /// The passages its knowledge searches gave the model, each once.
    pub citations: Vec<super::knowledge::Passage>,
    /// The agent that answered.
    pub agent_id: Option<Uuid>,
    /// Milliseconds from the answer's start to its first token, and to its end.
    pub first_chunk_ms: Option<i64>,
    pub total_ms: Option<i64>,
    /// The latest `answer_validated` event's checks and judge.
    pub validation: Option<Validation>,
    /// The owner's rating, if they gave one (and did not remove it).
    pub rating: Option<Rating>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A conversation and those of its messages that are loaded (all of them for a replay; the
/// ones an event touches on the live path). `dirty_messages` records which message rows
/// the applied events changed, so the store writes exactly those.
#[derive(Clone, Debug, Default)]
pub struct ConversationState {
    pub conversation: Option<ConversationRecord>,
    pub messages: BTreeMap<Uuid, MessageRecord>,
    pub dirty_messages: BTreeSet<Uuid>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    #[error("event {seq} ({event_type}) applied to a conversation that does not exist")]
    NoConversation { seq: i64, event_type: &'static str },
    #[error("event {seq} creates a conversation that already exists")]
    AlreadyCreated { seq: i64 },
    #[error("event {seq} ({event_type}) names message {message_id}, which is not there")]
    NoMessage {
        seq: i64,
        event_type: &'static str,
        message_id: Uuid,
    },
    #[error("event {seq} has no actor to own the conversation")]
    NoOwner { seq: i64 },
}

impl ConversationState {
    pub fn last_seq(&self) -> i64 {
        self.conversation.as_ref().map_or(0, |c| c.last_seq)
    }

    /// The conversation as its owner may see it: present, not deleted, theirs.
    pub fn visible_to(&self, user_id: Uuid) -> Option<&ConversationRecord> {
        self.conversation
            .as_ref()
            .filter(|c| c.deleted_at.is_none() && c.owner_id == user_id)
    }

    /// Messages in conversation order.
    pub fn ordered_messages(&self) -> Vec<&MessageRecord> {
        let mut messages: Vec<_> = self.messages.values().collect();
        messages.sort_by_key(|m| (m.position, m.id));
        messages
    }
}

/// Folds one event into the state. Events were valid when appended, so an error here means
/// the log or the loaded state is inconsistent: a bug, never a client mistake.
pub fn apply(state: &mut ConversationState, recorded: &RecordedEvent) -> Result<(), ApplyError> {
    let seq = recorded.seq;
    let at = recorded.created_at;
    let event_type = recorded.event.type_name();

    if let ConversationEvent::ConversationCreated(e) = &recorded.event {
        if state.conversation.is_some() {
            return Err(ApplyError::AlreadyCreated { seq });
        }
        state.conversation = Some(ConversationRecord {
            id: recorded.conversation_id,
            owner_id: recorded.actor_id.ok_or(ApplyError::NoOwner { seq })?,
            title: e.title.clone(),
            system_prompt: e.system_prompt.clone(),
            model: e.model.clone(),
            created_at: at,
            updated_at: at,
            last_seq: seq,
            message_count: 0,
            deleted_at: None,
            title_pending: e.title_pending,
            agent_id: e.agent_id,
        });
        return Ok(());
    }

    let conversation = state
        .conversation
        .as_mut()
        .ok_or(ApplyError::NoConversation { seq, event_type })?;
    conversation.last_seq = seq;
    // A background check is not activity: it must not move the conversation up a list
    // ordered by its last change.
    if !matches!(recorded.event, ConversationEvent::AnswerValidated(_)) {
        conversation.updated_at = at;
    }

    let missing = |message_id| ApplyError::NoMessage {
        seq,
        event_type,
        message_id,
    };
    match &recorded.event {
        ConversationEvent::ConversationCreated(_) => unreachable!("handled above"),
        ConversationEvent::ConversationUpdated(e) => {
            if let Some(title) = &e.title {
                conversation.title = title.clone();
                conversation.title_pending = false;
            }
            if let Some(prompt) = &e.system_prompt {
                conversation.system_prompt = non_empty(prompt);
            }
            if let Some(model) = &e.model {
                conversation.model = non_empty(model);
            }
            if let Some(agent) = &e.agent_id {
                conversation.agent_id = agent.parse().ok();
            }
        }
        ConversationEvent::ConversationDeleted(_) => conversation.deleted_at = Some(at),
        ConversationEvent::MessageAdded(e) => {
            conversation.message_count += 1;
            state.messages.insert(
                e.message_id,
                MessageRecord {
                    fallback_reason: None,
                    tool_calls: Vec::new(),
                    citations: Vec::new(),
                    id: e.message_id,
                    conversation_id: recorded.conversation_id,
                    position: seq,
                    role: e.role,
                    content: e.content.clone(),
                    status: MessageStatus::Complete,
                    model: None,
                    usage: None,
                    client_message_id: e.client_message_id.clone(),
                    instance_id: None,
                    agent_id: None,
                    first_chunk_ms: None,
                    total_ms: None,
                    validation: None,
                    rating: None,
                    created_at: at,
                    updated_at: at,
                },
            );
            state.dirty_messages.insert(e.message_id);
        }
        ConversationEvent::StreamStarted(e) => {
            conversation.message_count += 1;
            state.messages.insert(
                e.message_id,
                MessageRecord {
                    fallback_reason: None,
                    tool_calls: Vec::new(),
                    citations: Vec::new(),
                    id: e.message_id,
                    conversation_id: recorded.conversation_id,
                    position: seq,
                    role: MessageRole::Assistant,
                    content: String::new(),
                    status: MessageStatus::Streaming,
                    model: Some(e.model.clone()),
                    usage: None,
                    client_message_id: None,
                    instance_id: e.instance_id,
                    agent_id: e.agent_id,
                    first_chunk_ms: None,
                    total_ms: None,
                    validation: None,
                    rating: None,
                    created_at: at,
                    updated_at: at,
                },
            );
            state.dirty_messages.insert(e.message_id);
        }
        ConversationEvent::MessageEdited(e) => {
            let message = state
                .messages
                .get_mut(&e.message_id)
                .ok_or_else(|| missing(e.message_id))?;
            message.content = e.content.clone();
            message.updated_at = at;
            state.dirty_messages.insert(e.message_id);
        }
        ConversationEvent::MessageDeleted(e) => {
            state
                .messages
                .remove(&e.message_id)
                .ok_or_else(|| missing(e.message_id))?;
            conversation.message_count -= 1;
            state.dirty_messages.insert(e.message_id);
        }
        ConversationEvent::StreamCompleted(e) => {
            let message = state
                .messages
                .get_mut(&e.message_id)
                .ok_or_else(|| missing(e.message_id))?;
            message.content = e.content.clone();
            message.status = e.status;
            message.usage = e.usage;
            if let Some(model) = &e.model {
                message.model = Some(model.clone());
            }
            message.fallback_reason = e.fallback_reason;
            message.first_chunk_ms = e.first_chunk_ms;
            message.total_ms = Some((at - message.created_at).num_milliseconds().max(0));
            message.updated_at = at;
            state.dirty_messages.insert(e.message_id);
        }
        ConversationEvent::AnswerValidated(e) => {
            let message = state
                .messages
                .get_mut(&e.message_id)
                .ok_or_else(|| missing(e.message_id))?;
            message.validation = Some(Validation {
                checks: e.checks.clone(),
                judge: e.judge.clone(),
            });
            // Not `updated_at`: a check is not a change to the message's content.
            state.dirty_messages.insert(e.message_id);
        }
        ConversationEvent::MessageRated(e) => {
            let message = state
                .messages
                .get_mut(&e.message_id)
                .ok_or_else(|| missing(e.message_id))?;
            message.rating = e.rating.map(|rating| Rating {
                rating,
                comment: e.comment.clone(),
                rated_at: at,
            });
            state.dirty_messages.insert(e.message_id);
        }
        ConversationEvent::ToolCalled(e) => {
            let message = state
                .messages
                .get_mut(&e.message_id)
                .ok_or_else(|| missing(e.message_id))?;
            message.tool_calls.push(ToolCallRecord::from(e));
            message.updated_at = at;
            state.dirty_messages.insert(e.message_id);
        }
        ConversationEvent::ToolReturned(e) => {
            let message = state
                .messages
                .get_mut(&e.message_id)
                .ok_or_else(|| missing(e.message_id))?;
            record_result(&mut message.tool_calls, &mut message.citations, e);
            message.updated_at = at;
            state.dirty_messages.insert(e.message_id);
        }
    }
    Ok(())
}

/// A tool's result into an answer's calls (the call of its id) and citations (each
/// passage once): for the projection and for a running answer's state alike.
pub fn record_result(
    calls: &mut [ToolCallRecord],
    citations: &mut Vec<super::knowledge::Passage>,
    returned: &super::events::ToolReturned,
) {
    if let Some(call) = calls.iter_mut().find(|c| c.call_id == returned.call_id) {
        call.ok = Some(returned.ok);
        call.content = Some(returned.content.clone());
        call.answered_by = returned.agent_id;
        call.answered_by_version = returned.agent_version;
    }
    for passage in &returned.citations {
        if !citations.iter().any(|c| c.chunk_id == passage.chunk_id) {
            citations.push(passage.clone());
        }
    }
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_string())
}

/// Replays a whole (prefix of a) log from nothing.
pub fn replay<'a>(
    events: impl IntoIterator<Item = &'a RecordedEvent>,
) -> Result<ConversationState, ApplyError> {
    let mut state = ConversationState::default();
    for event in events {
        apply(&mut state, event)?;
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::*;

    fn at(seq: i64, event: ConversationEvent) -> RecordedEvent {
        RecordedEvent {
            conversation_id: Uuid::nil(),
            seq,
            actor_id: Some(Uuid::from_u128(7)),
            created_at: DateTime::from_timestamp(1_700_000_000 + seq, 0).unwrap(),
            event,
        }
    }

    #[test]
    fn given_a_history_replay_projects_conversation_and_messages() {
        let (m1, m2) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let log = vec![
            at(
                1,
                ConversationEvent::ConversationCreated(ConversationCreated {
                    agent_id: None,
                    title_pending: false,
                    title: "a".into(),
                    system_prompt: None,
                    model: None,
                }),
            ),
            at(
                2,
                ConversationEvent::MessageAdded(MessageAdded {
                    message_id: m1,
                    role: MessageRole::User,
                    content: "hi".into(),
                    client_message_id: None,
                }),
            ),
            at(
                3,
                ConversationEvent::StreamStarted(StreamStarted {
                    agent_id: None,
                    agent_version: None,
                    message_id: m2,
                    user_message_id: Some(m1),
                    model: "m".into(),
                    instance_id: None,
                }),
            ),
            at(
                4,
                ConversationEvent::StreamCompleted(StreamCompleted {
                    model: None,
                    fallback_reason: None,
                    message_id: m2,
                    content: "hello".into(),
                    status: MessageStatus::Complete,
                    usage: Some(Usage {
                        prompt_tokens: 3,
                        completion_tokens: 1,
                    }),
                    error: None,
                    finish_reason: None,
                    refusal: None,
                    first_chunk_ms: None,
                }),
            ),
            at(
                5,
                ConversationEvent::MessageEdited(MessageEdited {
                    message_id: m1,
                    content: "hey".into(),
                }),
            ),
            at(
                6,
                ConversationEvent::ConversationUpdated(ConversationUpdated {
                    agent_id: None,
                    title_generated: false,
                    title: Some("b".into()),
                    system_prompt: Some("sys".into()),
                    model: None,
                }),
            ),
        ];
        let state = replay(&log).unwrap();
        let c = state.conversation.as_ref().unwrap();
        assert_eq!(
            (
                c.title.as_str(),
                c.system_prompt.as_deref(),
                c.last_seq,
                c.message_count
            ),
            ("b", Some("sys"), 6, 2)
        );
        let messages = state.ordered_messages();
        assert_eq!(
            messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>(),
            ["hey", "hello"]
        );
        assert_eq!(
            messages[1].usage,
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 1
            })
        );

        // Time travel: the prefix up to seq 3 has the assistant message still streaming.
        let earlier = replay(&log[..3]).unwrap();
        assert_eq!(
            earlier.ordered_messages()[1].status,
            MessageStatus::Streaming
        );
        assert_eq!(earlier.ordered_messages()[0].content, "hi");
    }

    #[test]
    fn deleting_a_message_removes_it_and_marks_it_dirty() {
        let m1 = Uuid::from_u128(1);
        let log = vec![
            at(
                1,
                ConversationEvent::ConversationCreated(ConversationCreated {
                    agent_id: None,
                    title_pending: false,
                    title: "a".into(),
                    system_prompt: None,
                    model: None,
                }),
            ),
            at(
                2,
                ConversationEvent::MessageAdded(MessageAdded {
                    message_id: m1,
                    role: MessageRole::User,
                    content: "hi".into(),
                    client_message_id: None,
                }),
            ),
            at(
                3,
                ConversationEvent::MessageDeleted(MessageDeleted { message_id: m1 }),
            ),
        ];
        let state = replay(&log).unwrap();
        assert!(state.messages.is_empty());
        assert!(state.dirty_messages.contains(&m1));
        assert_eq!(state.conversation.unwrap().message_count, 0);
    }

    #[test]
    fn events_before_creation_are_rejected() {
        let err = replay(&[at(
            1,
            ConversationEvent::ConversationDeleted(ConversationDeleted {}),
        )])
        .unwrap_err();
        assert!(matches!(err, ApplyError::NoConversation { seq: 1, .. }));
    }
}
