//! Commands: pure functions from the current state and a validated request to the events
//! that record it (or a refusal). The store runs them inside the append transaction, so the
//! state they see is the state the events are appended to.

use std::collections::HashSet;
use std::sync::Arc;

use uuid::Uuid;

use super::events::*;
use super::projection::ConversationState;
use super::types::{MessageRole, MessageStatus};
use super::DomainError;

pub type Decision = Result<Vec<ConversationEvent>, DomainError>;

/// The conversation must exist, not be deleted, and belong to `actor`; anything else is
/// "not found", so nobody learns whether another user's conversation exists.
fn owned(state: &ConversationState, actor: Uuid) -> Result<(), DomainError> {
    state
        .visible_to(actor)
        .map(|_| ())
        .ok_or(DomainError::ConversationNotFound)
}

pub fn create_conversation(state: &ConversationState, created: ConversationCreated) -> Decision {
    if state.conversation.is_some() {
        // Same id twice: a client reusing an id, never a new conversation over an old log.
        return Err(DomainError::Conflict("conversation already exists".into()));
    }
    Ok(vec![ConversationEvent::ConversationCreated(created)])
}

/// Records only what actually changes; an empty patch appends nothing.
pub fn update_conversation(
    state: &ConversationState,
    actor: Uuid,
    patch: ConversationUpdated,
) -> Decision {
    owned(state, actor)?;
    let current = state
        .conversation
        .as_ref()
        .expect("owned() checked presence");
    let changed = |new: &Option<String>, old: Option<&str>| {
        new.clone()
            .filter(|n| Some(n.as_str()) != old && !(n.is_empty() && old.is_none()))
    };
    let update = ConversationUpdated {
        title: changed(&patch.title, Some(current.title.as_str())),
        system_prompt: changed(&patch.system_prompt, current.system_prompt.as_deref()),
        model: changed(&patch.model, current.model.as_deref()),
    };
    if update == ConversationUpdated::default() {
        return Ok(vec![]);
    }
    Ok(vec![ConversationEvent::ConversationUpdated(update)])
}

pub fn delete_conversation(state: &ConversationState, actor: Uuid) -> Decision {
    owned(state, actor)?;
    Ok(vec![ConversationEvent::ConversationDeleted(
        ConversationDeleted {},
    )])
}

pub fn edit_message(
    state: &ConversationState,
    actor: Uuid,
    message_id: Uuid,
    content: String,
) -> Decision {
    owned(state, actor)?;
    let message = state
        .messages
        .get(&message_id)
        .ok_or(DomainError::MessageNotFound)?;
    if message.role != MessageRole::User {
        return Err(DomainError::Invalid {
            field: "messageId",
            message: "only user messages can be edited".into(),
        });
    }
    if message.content == content {
        return Ok(vec![]);
    }
    Ok(vec![ConversationEvent::MessageEdited(MessageEdited {
        message_id,
        content,
    })])
}

pub fn delete_message(state: &ConversationState, actor: Uuid, message_id: Uuid) -> Decision {
    owned(state, actor)?;
    let message = state
        .messages
        .get(&message_id)
        .ok_or(DomainError::MessageNotFound)?;
    if message.status == MessageStatus::Streaming {
        return Err(DomainError::Conflict(
            "the message is still streaming; cancel the stream first".into(),
        ));
    }
    Ok(vec![ConversationEvent::MessageDeleted(MessageDeleted {
        message_id,
    })])
}

/// What a new chat turn needs besides the state: ids chosen by the caller (so a retried
/// decision appends the same ids) and the text, already validated.
#[derive(Clone, Debug)]
pub struct NewTurn {
    pub user_message_id: Uuid,
    pub assistant_message_id: Uuid,
    pub text: String,
    pub client_message_id: Option<String>,
    /// Create the conversation (owned by the actor) if it does not exist yet.
    pub create_if_missing: bool,
    /// The model for this answer: the request's, else the conversation's, else this default.
    pub model_override: Option<String>,
    pub default_model: String,
    /// The models a conversation's own model may still be (the catalogue's); one that left
    /// it answers with the default. `None`: any.
    pub usable_models: Option<Arc<HashSet<String>>>,
    /// The server instance that will run the answer (recorded in `stream_started`).
    pub instance_id: Option<Uuid>,
}

impl NewTurn {
    /// The model that answers: the turn's own (checked when it was sent), else the
    /// conversation's while it is still usable, else the default.
    pub fn model(&self, conversation_model: Option<&str>) -> String {
        let usable = |m: &&str| {
            self.usable_models
                .as_ref()
                .is_none_or(|ids| ids.contains(*m))
        };
        self.model_override
            .clone()
            .or_else(|| conversation_model.filter(usable).map(str::to_string))
            .unwrap_or_else(|| self.default_model.clone())
    }
}

/// Titles of conversations started by a message are its first 50 characters.
pub const TITLE_FROM_MESSAGE_CHARS: usize = 50;

/// A user message and the start of its answer. A `client_message_id` already used in this
/// conversation decides nothing (idempotent send): the caller finds the earlier turn.
pub fn start_turn(state: &ConversationState, actor: Uuid, turn: &NewTurn) -> Decision {
    let mut events = Vec::new();
    let conversation_model = match &state.conversation {
        None if turn.create_if_missing => {
            let title: String = turn
                .text
                .trim()
                .chars()
                .take(TITLE_FROM_MESSAGE_CHARS)
                .collect();
            events.push(ConversationEvent::ConversationCreated(
                ConversationCreated {
                    title: if title.is_empty() {
                        "New conversation".into()
                    } else {
                        title
                    },
                    system_prompt: None,
                    model: None,
                },
            ));
            None
        }
        None => return Err(DomainError::ConversationNotFound),
        Some(_) => {
            owned(state, actor)?;
            if let Some(client_id) = &turn.client_message_id {
                if state
                    .messages
                    .values()
                    .any(|m| m.client_message_id.as_ref() == Some(client_id))
                {
                    return Ok(vec![]);
                }
            }
            state.conversation.as_ref().and_then(|c| c.model.clone())
        }
    };
    let model = turn.model(conversation_model.as_deref());
    events.push(ConversationEvent::MessageAdded(MessageAdded {
        message_id: turn.user_message_id,
        role: MessageRole::User,
        content: turn.text.clone(),
        client_message_id: turn.client_message_id.clone(),
    }));
    events.push(ConversationEvent::StreamStarted(StreamStarted {
        message_id: turn.assistant_message_id,
        user_message_id: Some(turn.user_message_id),
        model,
        instance_id: turn.instance_id,
    }));
    Ok(events)
}

/// The end of an answer. Only a message that is still streaming can finish, and only once.
pub fn finish_stream(state: &ConversationState, completed: StreamCompleted) -> Decision {
    let message = state
        .messages
        .get(&completed.message_id)
        .ok_or(DomainError::MessageNotFound)?;
    if message.status != MessageStatus::Streaming {
        return Err(DomainError::AlreadyFinished);
    }
    Ok(vec![ConversationEvent::StreamCompleted(completed)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::RecordedEvent;
    use crate::domain::projection::{apply, ConversationState};
    use chrono::Utc;

    const OWNER: Uuid = Uuid::from_u128(1);
    const STRANGER: Uuid = Uuid::from_u128(2);
    const INSTANCE: Uuid = Uuid::from_u128(3);

    fn given(events: Vec<ConversationEvent>) -> ConversationState {
        let mut state = ConversationState::default();
        for (i, event) in events.into_iter().enumerate() {
            let recorded = RecordedEvent {
                conversation_id: Uuid::from_u128(9),
                seq: i as i64 + 1,
                actor_id: Some(OWNER),
                created_at: Utc::now(),
                event,
            };
            apply(&mut state, &recorded).unwrap();
        }
        state
    }

    fn created() -> ConversationEvent {
        ConversationEvent::ConversationCreated(ConversationCreated {
            title: "t".into(),
            system_prompt: None,
            model: None,
        })
    }

    #[test]
    fn strangers_and_deleted_conversations_are_not_found() {
        let state = given(vec![created()]);
        assert_eq!(
            delete_conversation(&state, STRANGER),
            Err(DomainError::ConversationNotFound)
        );
        let deleted = given(vec![
            created(),
            ConversationEvent::ConversationDeleted(ConversationDeleted {}),
        ]);
        assert_eq!(
            delete_conversation(&deleted, OWNER),
            Err(DomainError::ConversationNotFound)
        );
    }

    #[test]
    fn updates_record_only_changed_fields() {
        let state = given(vec![created()]);
        let same = ConversationUpdated {
            title: Some("t".into()),
            system_prompt: Some("".into()),
            model: None,
        };
        assert_eq!(update_conversation(&state, OWNER, same), Ok(vec![]));
        let new = ConversationUpdated {
            title: Some("n".into()),
            system_prompt: Some("p".into()),
            model: None,
        };
        assert_eq!(
            update_conversation(&state, OWNER, new.clone()),
            Ok(vec![ConversationEvent::ConversationUpdated(new)])
        );
    }

    fn turn(client_message_id: Option<&str>, create_if_missing: bool) -> NewTurn {
        NewTurn {
            user_message_id: Uuid::now_v7(),
            assistant_message_id: Uuid::now_v7(),
            text: "What is the capital of Portugal, and why is it Lisbon?".into(),
            client_message_id: client_message_id.map(Into::into),
            create_if_missing,
            model_override: None,
            usable_models: None,
            default_model: "default-model".into(),
            instance_id: Some(INSTANCE),
        }
    }

    #[test]
    fn a_turn_on_a_new_conversation_creates_it_titled_from_the_message() {
        let events = start_turn(&ConversationState::default(), OWNER, &turn(None, true)).unwrap();
        let ConversationEvent::ConversationCreated(created) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(created.title.chars().count(), TITLE_FROM_MESSAGE_CHARS);
        assert!(matches!(events[1], ConversationEvent::MessageAdded(_)));
        let ConversationEvent::StreamStarted(started) = &events[2] else {
            panic!("{events:?}")
        };
        assert_eq!(started.model, "default-model");
        assert_eq!(
            started.instance_id,
            Some(INSTANCE),
            "the answer records its runner"
        );
        assert_eq!(
            start_turn(&ConversationState::default(), OWNER, &turn(None, false)),
            Err(DomainError::ConversationNotFound)
        );
    }

    #[test]
    fn a_repeated_client_message_id_decides_nothing() {
        let first = turn(Some("c-1"), true);
        let state = given(start_turn(&ConversationState::default(), OWNER, &first).unwrap());
        assert_eq!(
            start_turn(&state, OWNER, &turn(Some("c-1"), true)),
            Ok(vec![])
        );
        assert_eq!(
            start_turn(&state, OWNER, &turn(Some("c-2"), true))
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            start_turn(&state, STRANGER, &turn(Some("c-3"), true)),
            Err(DomainError::ConversationNotFound)
        );
    }

    #[test]
    fn a_stream_finishes_once() {
        let t = turn(None, true);
        let state = given(start_turn(&ConversationState::default(), OWNER, &t).unwrap());
        let completed = StreamCompleted {
            message_id: t.assistant_message_id,
            content: "Lisbon".into(),
            status: MessageStatus::Complete,
            usage: None,
            error: None,
        };
        let events = finish_stream(&state, completed.clone()).unwrap();
        let mut finished = state.clone();
        for e in &events {
            let recorded = RecordedEvent {
                conversation_id: Uuid::from_u128(9),
                seq: 4,
                actor_id: Some(OWNER),
                created_at: Utc::now(),
                event: e.clone(),
            };
            apply(&mut finished, &recorded).unwrap();
        }
        assert_eq!(
            finish_stream(&finished, completed),
            Err(DomainError::AlreadyFinished)
        );
    }

    #[test]
    fn only_user_messages_can_be_edited() {
        let m = Uuid::from_u128(5);
        let state = given(vec![
            created(),
            ConversationEvent::StreamStarted(StreamStarted {
                message_id: m,
                user_message_id: None,
                model: "x".into(),
                instance_id: None,
            }),
        ]);
        assert!(matches!(
            edit_message(&state, OWNER, m, "x".into()),
            Err(DomainError::Invalid { .. })
        ));
        assert!(matches!(
            delete_message(&state, OWNER, m),
            Err(DomainError::Conflict(_))
        ));
        assert_eq!(
            delete_message(&state, OWNER, Uuid::from_u128(6)),
            Err(DomainError::MessageNotFound)
        );
    }
}
