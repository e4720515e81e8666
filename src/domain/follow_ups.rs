//! Work an append leaves for later: background jobs that follow from the events just
//! appended. The store records them in the same transaction as the events, so a crash
//! between the answer's commit and its job cannot lose the job, and a job is never recorded
//! for events that did not commit.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::events::{ConversationEvent, RecordedEvent, StreamCompleted};
use super::projection::ConversationState;
use super::types::{JobStatus, MessageStatus};

/// The kind of a generated-title job.
pub const TITLE_JOB: &str = "title";
/// The kind of an answer's checks job, and of its judge job.
pub const VALIDATE_JOB: &str = "validate";
pub const JUDGE_JOB: &str = "judge";

/// A job to record.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    pub kind: &'static str,
    pub payload: serde_json::Value,
    /// Higher first among jobs that are due.
    pub priority: i32,
    /// At most one job per key, ever: a second insert with it records nothing.
    pub dedupe_key: Option<String>,
}

/// A job as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRecord {
    pub id: Uuid,
    pub kind: String,
    pub payload: serde_json::Value,
    pub priority: i32,
    pub status: JobStatus,
    pub attempts: i32,
    pub run_at: DateTime<Utc>,
    pub last_error: Option<String>,
    /// The claim that may finish it, while `running`.
    pub lease_token: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A generated-title job's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TitleJob {
    pub conversation_id: Uuid,
    pub owner_id: Uuid,
}

/// An answer's checks or judge job's payload. The checks read what the provider said of
/// how the answer ended from here (it is in the log's `stream_completed`, not on the
/// message).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnswerJob {
    pub conversation_id: Uuid,
    pub owner_id: Uuid,
    pub message_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

/// Which follow-up jobs this server records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FollowUpRules {
    /// A generated title after a conversation's first complete answer, while its title is
    /// still a placeholder.
    pub titles: bool,
    /// Checks after every answer, whatever its end.
    pub validation: bool,
    /// The judge's scores after a complete answer's checks.
    pub judge: bool,
}

/// Background answer jobs run after the title (the user sees the title in the sidebar;
/// checks only feed the report and a badge).
const ANSWER_JOB_PRIORITY: i32 = -1;

impl FollowUpRules {
    /// The jobs that follow from `events`, appended to the conversation now in `state`.
    pub fn jobs_after(&self, state: &ConversationState, events: &[RecordedEvent]) -> Vec<NewJob> {
        let mut jobs = Vec::new();
        let Some(conversation) = &state.conversation else {
            return jobs;
        };
        let answered = events.iter().any(|e| {
            matches!(&e.event, ConversationEvent::StreamCompleted(c) if c.status == MessageStatus::Complete)
        });
        if self.titles
            && answered
            && conversation.title_pending
            && conversation.deleted_at.is_none()
        {
            jobs.push(NewJob {
                kind: TITLE_JOB,
                payload: serde_json::to_value(TitleJob {
                    conversation_id: conversation.id,
                    owner_id: conversation.owner_id,
                })
                .expect("a title job serializes"),
                priority: 0,
                // One per conversation: a later answer while the first job waits, or after
                // it failed, adds none.
                dedupe_key: Some(format!("{TITLE_JOB}:{}", conversation.id)),
            });
        }
        if conversation.deleted_at.is_some() {
            return jobs;
        }
        let job = |kind: &'static str, message_id: Uuid, finish: Option<&StreamCompleted>| {
            NewJob {
                kind,
                payload: serde_json::to_value(AnswerJob {
                    conversation_id: conversation.id,
                    owner_id: conversation.owner_id,
                    message_id,
                    finish_reason: finish.and_then(|f| f.finish_reason.clone()),
                    refusal: finish.and_then(|f| f.refusal.clone()),
                })
                .expect("an answer job serializes"),
                priority: ANSWER_JOB_PRIORITY,
                // One per answer: an answer ends once, and is judged once.
                dedupe_key: Some(format!("{kind}:{message_id}")),
            }
        };
        for event in events {
            match &event.event {
                ConversationEvent::StreamCompleted(c) if self.validation => {
                    jobs.push(job(VALIDATE_JOB, c.message_id, Some(c)));
                }
                // The checks' event without scores: the judge adds them, for an answer
                // with text that ended whole.
                ConversationEvent::AnswerValidated(v) if self.judge && v.judge.is_none() => {
                    let judged = state.messages.get(&v.message_id).is_some_and(|m| {
                        m.status == MessageStatus::Complete && !m.content.trim().is_empty()
                    });
                    if judged {
                        jobs.push(job(JUDGE_JOB, v.message_id, None));
                    }
                }
                _ => {}
            }
        }
        jobs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::commands::set_generated_title;
    use crate::domain::events::{ConversationCreated, ConversationUpdated};
    use crate::domain::projection::apply;

    const OWNER: Uuid = Uuid::from_u128(1);
    const ID: Uuid = Uuid::from_u128(9);

    fn state(title_pending: bool, then: Vec<ConversationEvent>) -> ConversationState {
        let mut state = ConversationState::default();
        let created = ConversationEvent::ConversationCreated(ConversationCreated {
            agent_id: None,
            title: "placeholder".into(),
            system_prompt: None,
            model: None,
            title_pending,
        });
        for (i, event) in std::iter::once(created).chain(then).enumerate() {
            let recorded = recorded(i as i64 + 1, event);
            apply(&mut state, &recorded).unwrap();
        }
        state
    }

    fn recorded(seq: i64, event: ConversationEvent) -> RecordedEvent {
        RecordedEvent {
            conversation_id: ID,
            seq,
            actor_id: Some(OWNER),
            created_at: Utc::now(),
            event,
        }
    }

    fn completed(status: MessageStatus) -> Vec<RecordedEvent> {
        vec![recorded(
            5,
            ConversationEvent::StreamCompleted(StreamCompleted {
                model: None,
                fallback_reason: None,
                finish_reason: Some("length".into()),
                refusal: None,
                first_chunk_ms: None,
                message_id: Uuid::from_u128(3),
                content: "answer".into(),
                status,
                usage: None,
                error: None,
            }),
        )]
    }

    const TITLES: FollowUpRules = FollowUpRules {
        titles: true,
        validation: false,
        judge: false,
    };

    #[test]
    fn a_complete_answer_under_a_placeholder_title_asks_for_one_title() {
        let jobs = TITLES.jobs_after(&state(true, vec![]), &completed(MessageStatus::Complete));
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].kind, TITLE_JOB);
        assert_eq!(
            jobs[0].dedupe_key.as_deref(),
            Some(format!("title:{ID}").as_str())
        );
        let payload: TitleJob = serde_json::from_value(jobs[0].payload.clone()).unwrap();
        assert_eq!((payload.conversation_id, payload.owner_id), (ID, OWNER));
    }

    #[test]
    fn no_title_job_without_a_complete_answer_a_placeholder_or_the_rule() {
        for status in [
            MessageStatus::Failed,
            MessageStatus::Cancelled,
            MessageStatus::Interrupted,
        ] {
            assert!(TITLES
                .jobs_after(&state(true, vec![]), &completed(status))
                .is_empty());
        }
        assert!(TITLES
            .jobs_after(&state(false, vec![]), &completed(MessageStatus::Complete))
            .is_empty());
        let renamed = state(
            true,
            vec![ConversationEvent::ConversationUpdated(
                ConversationUpdated {
                    title: Some("mine".into()),
                    ..Default::default()
                },
            )],
        );
        assert!(TITLES
            .jobs_after(&renamed, &completed(MessageStatus::Complete))
            .is_empty());
        let off = FollowUpRules::default();
        assert!(off
            .jobs_after(&state(true, vec![]), &completed(MessageStatus::Complete))
            .is_empty());
    }

    #[test]
    fn a_generated_title_replaces_only_a_placeholder_and_only_once() {
        let pending = state(true, vec![]);
        let events = set_generated_title(&pending, "Generated".into()).unwrap();
        let [ConversationEvent::ConversationUpdated(update)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(update.title.as_deref(), Some("Generated"));
        assert!(update.title_generated);
        let titled = state(true, events);
        assert!(!titled.conversation.as_ref().unwrap().title_pending);
        assert!(set_generated_title(&titled, "Again".into())
            .unwrap()
            .is_empty());
        assert!(set_generated_title(&state(false, vec![]), "X".into())
            .unwrap()
            .is_empty());
        assert!(set_generated_title(&pending, String::new())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn every_answer_end_asks_for_its_checks_once() {
        let rules = FollowUpRules {
            validation: true,
            ..Default::default()
        };
        for status in [MessageStatus::Complete, MessageStatus::Failed] {
            let jobs = rules.jobs_after(&state(false, vec![]), &completed(status));
            assert_eq!(jobs.len(), 1, "{status:?}");
            assert_eq!(jobs[0].kind, VALIDATE_JOB);
            assert_eq!(
                jobs[0].dedupe_key.as_deref(),
                Some("validate:00000000-0000-0000-0000-000000000003")
            );
            let payload: AnswerJob = serde_json::from_value(jobs[0].payload.clone()).unwrap();
            assert_eq!(payload.message_id, Uuid::from_u128(3));
            assert_eq!(payload.finish_reason.as_deref(), Some("length"));
        }
        assert!(FollowUpRules::default()
            .jobs_after(&state(false, vec![]), &completed(MessageStatus::Complete))
            .is_empty());
        let deleted = state(
            false,
            vec![ConversationEvent::ConversationDeleted(Default::default())],
        );
        assert!(rules
            .jobs_after(&deleted, &completed(MessageStatus::Complete))
            .is_empty());
    }
}
