//! Answer validation and feedback: the background jobs that check every answer (and, with
//! `VALIDATION_JUDGE_MODEL`, have a model score it), the on-demand check, and users'
//! ratings. Results and ratings are events in the conversation's log (`answer_validated`,
//! `message_rated`), so reads, `atSeq` and `rebuild-projections` show them like any other
//! change; counters feed Prometheus; the quality report reads the projections
//! (`store::report`).
//!
//! The checks are pure (`domain::validation`); this module gathers their facts (the answer,
//! how the provider said it ended, the passages retrieved, whether its agent asked for
//! JSON) and records the verdicts. The judge is one more model call, and like every call
//! nobody waits on it takes its place in the model queue behind users' answers.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use uuid::Uuid;

use super::auth::CurrentUser;
use super::chat::ChatService;
use super::jobs::{JobFailure, JobHandler};
use super::{ServiceError, ServiceResult};
use crate::domain::commands;
use crate::domain::events::{AnswerValidated, ConversationEvent, MessageRated, RecordedEvent};
use crate::domain::follow_ups::{AnswerJob, JobRecord, JUDGE_JOB};
use crate::domain::projection::MessageRecord;
use crate::domain::types::{MessageRole, MessageStatus, Priority, RatingValue, ResponseFormat};
use crate::domain::validation::{
    parse_judge_reply, run_checks, AnswerFacts, CheckResult, JudgeVerdict, Validation,
    JUDGE_PROMPT, MAX_RATING_COMMENT_CHARS,
};
use crate::llm::{ChatMessage, ChatRequest, ProviderError};
use crate::metrics::Metrics;
use crate::store::Load;

/// How much of the question, of each passage and of the answer the judge reads.
const JUDGE_QUESTION_CHARS: usize = 2_000;
const JUDGE_PASSAGE_CHARS: usize = 1_000;
const JUDGE_ANSWER_CHARS: usize = 6_000;

/// The label of answers given without an agent.
const NO_AGENT: &str = "none";

/// Where validation results and ratings are told as they happen (the conversation's room).
pub trait ValidationEvents: Send + Sync {
    fn validated(&self, conversation_id: Uuid, message_id: Uuid, validation: &Validation);
    /// A rating was recorded as `event`.
    fn rated(&self, event: &RecordedEvent);
}

/// Tells nobody (tools and tests without sockets).
pub struct Unheard;

impl ValidationEvents for Unheard {
    fn validated(&self, _: Uuid, _: Uuid, _: &Validation) {}
    fn rated(&self, _: &RecordedEvent) {}
}

/// A passage an on-demand check is grounded in.
#[derive(Clone, Debug, Default)]
pub struct GivenPassage {
    pub text: String,
    pub chunk_id: Option<Uuid>,
}

/// An on-demand check.
#[derive(Clone, Debug, Default)]
pub struct CheckRequest {
    pub text: String,
    pub passages: Option<Vec<GivenPassage>>,
    pub expect_json: bool,
    pub judge: bool,
    pub question: Option<String>,
    pub finish_reason: Option<String>,
}

pub struct ValidationService {
    chat: ChatService,
    metrics: Arc<Metrics>,
    events: Arc<dyn ValidationEvents>,
}

impl ValidationService {
    pub fn new(
        chat: ChatService,
        metrics: Arc<Metrics>,
        events: Arc<dyn ValidationEvents>,
    ) -> Arc<Self> {
        Arc::new(Self {
            chat,
            metrics,
            events,
        })
    }

    /// The judge model, when one is configured and is not the demo provider (which
    /// cannot grade).
    pub fn judge_model(&self) -> Option<String> {
        let model = self.chat.models().catalogue().judge_model()?.to_string();
        (!self.chat.is_demo(&model)).then_some(model)
    }

    /// Checks an answer once it has ended and records the verdicts.
    async fn validate(&self, job: &AnswerJob) -> Result<(), JobFailure> {
        let store = self.chat.store();
        let Some(message) = store
            .find_message(job.conversation_id, job.message_id)
            .await
            .map_err(retry)?
        else {
            return Ok(()); // deleted meanwhile
        };
        if message.role != MessageRole::Assistant || message.status == MessageStatus::Streaming {
            return Ok(());
        }
        let expect_json = match message.agent_id {
            Some(agent) => store
                .find_agent(agent)
                .await
                .map_err(retry)?
                .is_some_and(|a| a.definition.response_format == ResponseFormat::Json),
            None => false,
        };
        let facts = AnswerFacts {
            text: &message.content,
            status: Some(message.status),
            finish_reason: job.finish_reason.as_deref(),
            refusal: job.refusal.as_deref(),
            passages: retrieved(&message),
            expect_json,
        };
        let checks = run_checks(&facts);
        let validated = AnswerValidated {
            message_id: message.id,
            checks: checks.clone(),
            judge: None,
        };
        let committed = store
            .execute(job.conversation_id, None, &Load::messages(&[message.id]), {
                move |state| commands::record_validation(state, validated.clone())
            })
            .await
            .map_err(|e| JobFailure::Retry(ServiceError::from(e).to_string()))?;
        if committed.events.is_empty() {
            return Ok(()); // recorded already (a retried job), or gone
        }
        self.count_checks(&message, &checks);
        self.events.validated(
            job.conversation_id,
            message.id,
            &Validation {
                checks,
                judge: None,
            },
        );
        Ok(())
    }

    /// Has the judge model score a checked answer, and records the scores beside the checks.
    async fn judge(&self, job: &AnswerJob) -> Result<(), JobFailure> {
        let Some(model) = self.judge_model() else {
            return Ok(()); // configured away since the job was recorded
        };
        let store = self.chat.store();
        let Some(message) = store
            .find_message(job.conversation_id, job.message_id)
            .await
            .map_err(retry)?
        else {
            return Ok(());
        };
        if message
            .validation
            .as_ref()
            .is_some_and(|v| v.judge.is_some())
        {
            return Ok(());
        }
        let question = store
            .user_message_before(job.conversation_id, message.position)
            .await
            .map_err(retry)?
            .map(|m| m.content)
            .unwrap_or_default();
        let passages: Vec<String> = message
            .citations
            .iter()
            .map(|p| p.snippet.clone())
            .collect();
        let verdict = self
            .ask_judge(
                job.owner_id,
                Priority::Normal,
                model,
                &question,
                &passages,
                &message.content,
                true,
            )
            .await?;
        let recorded = verdict.clone();
        let committed = store
            .execute(job.conversation_id, None, &Load::messages(&[message.id]), {
                let message_id = message.id;
                move |state| commands::record_judgement(state, message_id, recorded.clone())
            })
            .await
            .map_err(|e| JobFailure::Retry(ServiceError::from(e).to_string()))?;
        let Some(validation) = committed
            .state
            .messages
            .get(&message.id)
            .and_then(|m| m.validation.clone())
            .filter(|_| !committed.events.is_empty())
        else {
            return Ok(());
        };
        let (model_label, agent_label) = labels(&message);
        for (dimension, score) in [
            ("relevance", verdict.relevance),
            ("groundedness", verdict.groundedness),
        ] {
            self.metrics
                .judge_scores
                .with_label_values(&[&model_label, &agent_label, dimension])
                .observe(f64::from(score));
        }
        self.events
            .validated(job.conversation_id, message.id, &validation);
        Ok(())
    }

    /// One judge call. `background`: a job's (behind users' answers); otherwise a user
    /// waits for it (an on-demand check).
    #[allow(clippy::too_many_arguments)]
    async fn ask_judge(
        &self,
        user: Uuid,
        priority: Priority,
        model: String,
        question: &str,
        passages: &[String],
        answer: &str,
        background: bool,
    ) -> Result<JudgeVerdict, JobFailure> {
        let request = ChatRequest {
            sampling: crate::llm::Sampling {
                temperature: Some(0.0),
                ..Default::default()
            },
            tools: Vec::new(),
            model: model.clone(),
            messages: vec![
                ChatMessage::text(MessageRole::System, JUDGE_PROMPT),
                ChatMessage::text(MessageRole::User, judge_input(question, passages, answer)),
            ],
        };
        let completion = if background {
            self.chat
                .complete_in_background(user, priority, request)
                .await
        } else {
            self.chat.complete_agent_step(user, priority, request).await
        };
        let completion = completion.map_err(|e| match e {
            ProviderError::Rejected(_) => JobFailure::Permanent(e.to_string()),
            e => JobFailure::Retry(e.to_string()),
        })?;
        parse_judge_reply(&completion.content, &model).map_err(JobFailure::Permanent)
    }

    /// `POST /api/validation/check`: the checks (and the judge, when asked and there is
    /// one) on a given text; nothing is stored or counted.
    pub async fn check(
        &self,
        user: CurrentUser,
        request: CheckRequest,
    ) -> ServiceResult<Validation> {
        let passages = request
            .passages
            .as_ref()
            .map(|p| p.iter().map(|p| p.chunk_id).collect::<Vec<Option<Uuid>>>());
        let facts = AnswerFacts {
            text: &request.text,
            status: None,
            finish_reason: request.finish_reason.as_deref(),
            refusal: None,
            passages,
            expect_json: request.expect_json,
        };
        let checks: Vec<CheckResult> = run_checks(&facts);
        let judge = match (request.judge, self.judge_model()) {
            (false, _) => None,
            (true, None) => {
                return Err(ServiceError::Validation {
                    field: "judge",
                    message: "no judge model is configured (VALIDATION_JUDGE_MODEL)".into(),
                })
            }
            (true, Some(model)) => {
                let passages: Vec<String> = request
                    .passages
                    .unwrap_or_default()
                    .into_iter()
                    .map(|p| p.text)
                    .collect();
                let verdict = self
                    .ask_judge(
                        user.id,
                        user.priority,
                        model,
                        request.question.as_deref().unwrap_or_default(),
                        &passages,
                        &request.text,
                        false,
                    )
                    .await
                    // The judge failed or said something unreadable: the upstream's fault.
                    .map_err(|e| ServiceError::Upstream(ProviderError::Upstream(e.to_string())))?;
                Some(verdict)
            }
        };
        Ok(Validation { checks, judge })
    }

    /// The owner rates an answer (`None` removes their rating). Returns the message as it
    /// is now and the event, if one was recorded (the same rating again records none).
    #[tracing::instrument(skip_all, fields(user_id = %user.id, conversation_id = %conversation_id))]
    pub async fn rate(
        &self,
        user: CurrentUser,
        conversation_id: Uuid,
        message_id: Uuid,
        rating: Option<RatingValue>,
        comment: Option<String>,
    ) -> ServiceResult<(MessageRecord, Option<RecordedEvent>)> {
        let comment = comment
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty());
        if comment
            .as_ref()
            .is_some_and(|c| c.chars().count() > MAX_RATING_COMMENT_CHARS)
        {
            return Err(ServiceError::Validation {
                field: "comment",
                message: format!("must be at most {MAX_RATING_COMMENT_CHARS} characters"),
            });
        }
        let rated = MessageRated {
            message_id,
            rating,
            comment,
        };
        let committed = self
            .chat
            .store()
            .execute(
                conversation_id,
                Some(user.id),
                &Load::messages(&[message_id]),
                move |state| commands::rate_message(state, user.id, rated.clone()),
            )
            .await?;
        let message = committed
            .state
            .messages
            .get(&message_id)
            .cloned()
            .ok_or(ServiceError::MessageNotFound)?;
        let event = committed.events.into_iter().next();
        if let Some(event) = &event {
            if let ConversationEvent::MessageRated(MessageRated {
                rating: Some(rating),
                ..
            }) = &event.event
            {
                let (model, agent) = labels(&message);
                self.metrics
                    .message_ratings
                    .with_label_values(&[rating.as_str(), &model, &agent])
                    .inc();
            }
            self.events.rated(event);
        }
        Ok((message, event))
    }

    fn count_checks(&self, message: &MessageRecord, checks: &[CheckResult]) {
        let (model, agent) = labels(message);
        for check in checks {
            let verdict = if check.passed { "pass" } else { "fail" };
            self.metrics
                .validation_checks
                .with_label_values(&[check.name.as_str(), verdict, &model, &agent])
                .inc();
        }
    }
}

/// The `model` and `agent` labels of an answer's counters.
fn labels(message: &MessageRecord) -> (String, String) {
    (
        message.model.clone().unwrap_or_default(),
        message
            .agent_id
            .map_or_else(|| NO_AGENT.to_string(), |a| a.to_string()),
    )
}

/// The chunk ids an answer's citation markers may name, numbered as its searches gave
/// them; `None` when it searched nothing.
fn retrieved(message: &MessageRecord) -> Option<Vec<Option<Uuid>>> {
    (!message.citations.is_empty())
        .then(|| message.citations.iter().map(|p| Some(p.chunk_id)).collect())
}

/// What the judge reads: the question, the numbered passages, the answer, each clipped.
fn judge_input(question: &str, passages: &[String], answer: &str) -> String {
    let clip = |text: &str, max: usize| text.chars().take(max).collect::<String>();
    let mut input = format!("Question:\n{}\n\n", clip(question, JUDGE_QUESTION_CHARS));
    if passages.is_empty() {
        input.push_str("Passages: none\n\n");
    } else {
        input.push_str("Passages:\n");
        for (i, passage) in passages.iter().enumerate() {
            input.push_str(&format!(
                "[{}] {}\n",
                i + 1,
                clip(passage, JUDGE_PASSAGE_CHARS)
            ));
        }
        input.push('\n');
    }
    input.push_str(&format!("Answer:\n{}", clip(answer, JUDGE_ANSWER_CHARS)));
    input
}

fn retry(e: crate::store::StoreError) -> JobFailure {
    JobFailure::Retry(e.to_string())
}

impl JobHandler for ValidationService {
    fn run<'a>(&'a self, job: &'a JobRecord) -> BoxFuture<'a, Result<(), JobFailure>> {
        async move {
            let payload: AnswerJob = serde_json::from_value(job.payload.clone())
                .map_err(|e| JobFailure::Permanent(format!("unreadable payload: {e}")))?;
            if job.kind == JUDGE_JOB {
                self.judge(&payload).await
            } else {
                self.validate(&payload).await
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::judge_input;

    #[test]
    fn the_judge_reads_numbered_passages_or_none() {
        let with = judge_input("Why?", &["Because.".into(), "Also.".into()], "Since.");
        assert!(with.contains("Question:\nWhy?"));
        assert!(with.contains("[1] Because.\n[2] Also."));
        assert!(with.ends_with("Answer:\nSince."));
        assert!(judge_input("q", &[], "a").contains("Passages: none"));
    }
}
