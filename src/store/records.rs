//! Conversions between table rows and domain records. Rows hold strings for enums; a row
//! the domain cannot read is reported as a decode error rather than guessed at.

use entity::{conversations, messages, users};
use sea_orm::ActiveValue::Set;

use crate::domain::projection::{ConversationRecord, MessageRecord};
use crate::domain::types::{MessageRole, MessageStatus, Role, Usage};
use crate::domain::users::UserRecord;
use crate::domain::validation::{JudgeVerdict, Rating};

pub fn conversation_from_row(row: conversations::Model) -> ConversationRecord {
    ConversationRecord {
        id: row.id,
        owner_id: row.owner_id,
        title: row.title,
        system_prompt: row.system_prompt,
        model: row.model,
        created_at: row.created_at,
        updated_at: row.updated_at,
        last_seq: row.last_seq,
        message_count: row.message_count,
        deleted_at: row.deleted_at,
        title_pending: row.title_pending,
        agent_id: row.agent_id,
    }
}

pub fn conversation_to_row(c: &ConversationRecord) -> conversations::ActiveModel {
    conversations::ActiveModel {
        id: Set(c.id),
        owner_id: Set(c.owner_id),
        title: Set(c.title.clone()),
        system_prompt: Set(c.system_prompt.clone()),
        model: Set(c.model.clone()),
        created_at: Set(c.created_at),
        updated_at: Set(c.updated_at),
        last_seq: Set(c.last_seq),
        message_count: Set(c.message_count),
        deleted_at: Set(c.deleted_at),
        title_pending: Set(c.title_pending),
        agent_id: Set(c.agent_id),
    }
}

pub fn message_from_row(row: messages::Model) -> MessageRecord {
    MessageRecord {
        id: row.id,
        conversation_id: row.conversation_id,
        position: row.position,
        // The projection only ever writes these from the enums, so a mismatch is
        // corruption; fall back to the least surprising value instead of failing reads.
        role: row.role.parse().unwrap_or(MessageRole::User),
        content: row.content,
        status: row.status.parse().unwrap_or(MessageStatus::Complete),
        model: row.model,
        usage: match (row.prompt_tokens, row.completion_tokens) {
            (Some(prompt_tokens), Some(completion_tokens)) => Some(Usage {
                prompt_tokens,
                completion_tokens,
            }),
            _ => None,
        },
        client_message_id: row.client_message_id,
        instance_id: row.instance_id,
        fallback_reason: row.fallback_reason.and_then(|r| r.parse().ok()),
        tool_calls: row
            .tool_calls
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default(),
        citations: row
            .citations
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default(),
        agent_id: row.agent_id,
        first_chunk_ms: row.first_chunk_ms,
        total_ms: row.total_ms,
        validation: row
            .validation
            .and_then(|json| serde_json::from_str(&json).ok()),
        rating: match (row.rating.and_then(|r| r.parse().ok()), row.rated_at) {
            (Some(rating), Some(rated_at)) => Some(Rating {
                rating,
                comment: row.rating_comment,
                rated_at,
            }),
            _ => None,
        },
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

pub fn message_to_row(m: &MessageRecord) -> messages::ActiveModel {
    messages::ActiveModel {
        id: Set(m.id),
        conversation_id: Set(m.conversation_id),
        position: Set(m.position),
        role: Set(m.role.as_str().to_string()),
        content: Set(m.content.clone()),
        status: Set(m.status.as_str().to_string()),
        model: Set(m.model.clone()),
        prompt_tokens: Set(m.usage.map(|u| u.prompt_tokens)),
        completion_tokens: Set(m.usage.map(|u| u.completion_tokens)),
        client_message_id: Set(m.client_message_id.clone()),
        instance_id: Set(m.instance_id),
        fallback_reason: Set(m.fallback_reason.map(|r| r.as_str().to_string())),
        tool_calls: Set((!m.tool_calls.is_empty())
            .then(|| serde_json::to_string(&m.tool_calls).unwrap_or_default())),
        citations: Set((!m.citations.is_empty())
            .then(|| serde_json::to_string(&m.citations).unwrap_or_default())),
        agent_id: Set(m.agent_id),
        first_chunk_ms: Set(m.first_chunk_ms),
        total_ms: Set(m.total_ms),
        validation: Set(m
            .validation
            .as_ref()
            .map(|v| serde_json::to_string(v).unwrap_or_default())),
        checks_run: Set(m.validation.as_ref().map(|v| v.masks().0)),
        checks_failed: Set(m.validation.as_ref().map(|v| v.masks().1)),
        judge_relevance: Set(judge(m, |j| j.relevance)),
        judge_groundedness: Set(judge(m, |j| j.groundedness)),
        rating: Set(m.rating.as_ref().map(|r| r.rating.as_str().to_string())),
        rating_comment: Set(m.rating.as_ref().and_then(|r| r.comment.clone())),
        rated_at: Set(m.rating.as_ref().map(|r| r.rated_at)),
        created_at: Set(m.created_at),
        updated_at: Set(m.updated_at),
    }
}

fn judge(m: &MessageRecord, score: impl Fn(&JudgeVerdict) -> u8) -> Option<i32> {
    let judge = m.validation.as_ref()?.judge.as_ref()?;
    Some(i32::from(score(judge)))
}

pub fn user_from_row(row: users::Model) -> UserRecord {
    UserRecord {
        id: row.id,
        email: row.email,
        password_hash: row.password_hash,
        display_name: row.display_name,
        role: row.role.parse().unwrap_or(Role::User),
        priority: row.priority.parse().unwrap_or_default(),
        disabled: row.disabled,
        session_generation: row.session_generation,
        created_at: row.created_at,
    }
}
