//! Commands: pure functions from the current state and a validated request to the events
//! that record it (or a refusal). The store runs them inside the append transaction, so the
//! state they see is the state the events are appended to.

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::RecordedEvent;
    use crate::domain::projection::{apply, ConversationState};
    use chrono::Utc;

    const OWNER: Uuid = Uuid::from_u128(1);
    const STRANGER: Uuid = Uuid::from_u128(2);

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

    #[test]
    fn only_user_messages_can_be_edited() {
        let m = Uuid::from_u128(5);
        let state = given(vec![
            created(),
            ConversationEvent::StreamStarted(StreamStarted {
                message_id: m,
                user_message_id: None,
                model: "x".into(),
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
