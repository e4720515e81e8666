//! Answer validation over HTTP: the on-demand check, users' ratings of answers, and the
//! admin's quality report. The checks after every answer run as background jobs (see
//! `service::validation`); their results are the `validation` of a `Message`.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use poem_openapi::{
    param::{Path, Query},
    payload::Json,
    ApiResponse, Enum, Object, OpenApi,
};
use serde::Deserialize;
use uuid::Uuid;

use super::error::{ApiError, ApiResult};
use super::json::JsonBody;
use super::models::Message;
use super::security::BearerAuth;
use super::state::AppState;
use super::Tags;
use crate::domain::types::{self, Role};
use crate::domain::validation;
use crate::service::validation::{CheckRequest, GivenPassage};
use crate::service::ServiceError;
use crate::store::report::{ReportFilter, ReportGroup};

/// The longest text the on-demand check reads (the body limit bounds it too).
const MAX_CHECK_TEXT_CHARS: usize = 100_000;
const MAX_CHECK_PASSAGES: usize = 50;
/// The longest window a report covers.
const MAX_REPORT_DAYS: i64 = 366;

/// The checks run on an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum CheckName {
    /// The answer has no text.
    Empty,
    /// It stopped at the token limit (`finish_reason: length`), or was interrupted or failed.
    Truncated,
    /// The model declined (the provider's `refusal`, its content filter, or a known phrase).
    Refusal,
    /// A `[n]` marker or cited chunk id names no passage retrieved for the answer.
    Citations,
    /// Its agent asked for JSON and the text does not parse.
    Json,
}

impl From<types::CheckName> for CheckName {
    fn from(name: types::CheckName) -> Self {
        match name {
            types::CheckName::Empty => Self::Empty,
            types::CheckName::Truncated => Self::Truncated,
            types::CheckName::Refusal => Self::Refusal,
            types::CheckName::Citations => Self::Citations,
            types::CheckName::Json => Self::Json,
        }
    }
}

/// One check's verdict.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct CheckResultView {
    pub name: CheckName,
    pub passed: bool,
    /// Why it failed (or, for a pass worth explaining, why it passed).
    #[oai(skip_serializing_if_is_none)]
    pub detail: Option<String>,
}

/// The judge model's scores, 1 (worst) to 5 (best).
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct JudgeView {
    #[oai(validator(minimum(value = "1"), maximum(value = "5")))]
    pub relevance: u8,
    #[oai(validator(minimum(value = "1"), maximum(value = "5")))]
    pub groundedness: u8,
    /// One sentence.
    pub reason: String,
    /// The model that judged.
    pub model: String,
}

/// An answer's checks, and the judge's scores when a judge is configured.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct ValidationView {
    pub checks: Vec<CheckResultView>,
    #[oai(skip_serializing_if_is_none)]
    pub judge: Option<JudgeView>,
}

impl From<validation::Validation> for ValidationView {
    fn from(v: validation::Validation) -> Self {
        Self {
            checks: v
                .checks
                .into_iter()
                .map(|c| CheckResultView {
                    name: c.name.into(),
                    passed: c.passed,
                    detail: c.detail,
                })
                .collect(),
            judge: v.judge.map(|j| JudgeView {
                relevance: j.relevance,
                groundedness: j.groundedness,
                reason: j.reason,
                model: j.model,
            }),
        }
    }
}

/// Thumbs up or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum RatingValue {
    Up,
    Down,
}

impl From<RatingValue> for types::RatingValue {
    fn from(r: RatingValue) -> Self {
        match r {
            RatingValue::Up => Self::Up,
            RatingValue::Down => Self::Down,
        }
    }
}

impl From<types::RatingValue> for RatingValue {
    fn from(r: types::RatingValue) -> Self {
        match r {
            types::RatingValue::Up => Self::Up,
            types::RatingValue::Down => Self::Down,
        }
    }
}

/// The owner's rating of an answer.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct RatingView {
    pub rating: RatingValue,
    #[oai(nullable)]
    pub comment: Option<String>,
    pub rated_at: DateTime<Utc>,
}

impl From<validation::Rating> for RatingView {
    fn from(r: validation::Rating) -> Self {
        Self {
            rating: r.rating.into(),
            comment: r.comment,
            rated_at: r.rated_at,
        }
    }
}

#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateRequest {
    pub rating: RatingValue,
    /// At most 2,000 characters; blank is none.
    #[serde(default)]
    pub comment: Option<String>,
}

/// A passage the text should be grounded in. With `chunkId`, a bracketed chunk id in the
/// text may name it; `[n]` markers name passages by their place in the list (from 1).
#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckPassage {
    pub text: String,
    #[serde(default)]
    pub chunk_id: Option<Uuid>,
}

#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckRequestBody {
    pub text: String,
    /// The passages it should be grounded in: the `citations` check runs when given.
    #[serde(default)]
    pub passages: Option<Vec<CheckPassage>>,
    /// Run the `json` check.
    #[serde(default)]
    pub expect_json: Option<bool>,
    /// Also ask the judge model (400 when none is configured).
    #[serde(default)]
    pub judge: Option<bool>,
    /// The question the text answers, for the judge.
    #[serde(default)]
    pub question: Option<String>,
    /// The provider's `finish_reason`, if known (`length` fails `truncated`).
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// One check's failures in a report group.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct CheckStats {
    /// Answers it ran on.
    pub run: i64,
    pub failed: i64,
    /// `failed / run`.
    pub rate: f64,
}

/// The judge's scores in a report group. The score of an answer is the lower of its
/// relevance and groundedness.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct JudgeStats {
    pub count: i64,
    #[oai(nullable)]
    pub mean: Option<f64>,
    /// How many answers scored 1, 2, 3, 4 and 5.
    pub histogram: Vec<i64>,
    #[oai(nullable)]
    pub relevance_mean: Option<f64>,
    #[oai(nullable)]
    pub groundedness_mean: Option<f64>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct RatingStats {
    pub up: i64,
    pub down: i64,
}

/// Nearest-rank percentiles in milliseconds; `null` without measured answers.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct LatencyStats {
    #[oai(nullable)]
    pub p50: Option<i64>,
    #[oai(nullable)]
    pub p95: Option<i64>,
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct TokenStats {
    pub prompt: i64,
    pub completion: i64,
}

/// One model and agent's answers in the window.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct ReportGroupView {
    pub model: String,
    /// `null`: answers without an agent.
    #[oai(nullable)]
    pub agent_id: Option<Uuid>,
    /// Finished answers (any status) created in the window.
    pub answers: i64,
    /// By check name; only the checks that ran on some answer.
    pub checks: BTreeMap<String, CheckStats>,
    pub judge: JudgeStats,
    pub ratings: RatingStats,
    pub first_chunk_ms: LatencyStats,
    pub total_ms: LatencyStats,
    pub tokens: TokenStats,
}

impl From<ReportGroup> for ReportGroupView {
    fn from(g: ReportGroup) -> Self {
        Self {
            model: g.model,
            agent_id: g.agent_id,
            answers: g.answers,
            checks: g
                .checks
                .into_iter()
                .map(|c| {
                    let stats = CheckStats {
                        run: c.run,
                        failed: c.failed,
                        rate: c.failed as f64 / c.run as f64,
                    };
                    (c.name.as_str().to_string(), stats)
                })
                .collect(),
            judge: JudgeStats {
                count: g.judged,
                mean: g.judge_mean,
                histogram: g.judge_histogram.to_vec(),
                relevance_mean: g.relevance_mean,
                groundedness_mean: g.groundedness_mean,
            },
            ratings: RatingStats {
                up: g.ratings_up,
                down: g.ratings_down,
            },
            first_chunk_ms: LatencyStats {
                p50: g.first_chunk_ms.p50,
                p95: g.first_chunk_ms.p95,
            },
            total_ms: LatencyStats {
                p50: g.total_ms.p50,
                p95: g.total_ms.p95,
            },
            tokens: TokenStats {
                prompt: g.prompt_tokens,
                completion: g.completion_tokens,
            },
        }
    }
}

#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct QualityReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub groups: Vec<ReportGroupView>,
}

#[derive(ApiResponse)]
enum Removed {
    #[oai(status = 204)]
    NoContent,
}

pub struct ValidationApi {
    pub state: AppState,
}

#[OpenApi(tag = "Tags::Validation")]
impl ValidationApi {
    /// Check a text now
    ///
    /// Runs the answer checks (`empty`, `truncated`, `refusal`; `citations` when passages
    /// are given or the text cites; `json` when `expectJson`) and, when `judge` is true, the
    /// judge model (400 when `VALIDATION_JUDGE_MODEL` is not set; 502 when it fails).
    /// Nothing is stored.
    #[oai(
        path = "/validation/check",
        method = "post",
        operation_id = "checkText"
    )]
    async fn check(
        &self,
        auth: BearerAuth,
        body: JsonBody<CheckRequestBody>,
    ) -> ApiResult<Json<ValidationView>> {
        let b = body.0;
        if b.text.chars().count() > MAX_CHECK_TEXT_CHARS {
            return Err(ApiError::validation(
                "text",
                format!("must be at most {MAX_CHECK_TEXT_CHARS} characters"),
            ));
        }
        if b.passages
            .as_ref()
            .is_some_and(|p| p.len() > MAX_CHECK_PASSAGES)
        {
            return Err(ApiError::validation(
                "passages",
                format!("at most {MAX_CHECK_PASSAGES} passages"),
            ));
        }
        let request = CheckRequest {
            text: b.text,
            passages: b.passages.map(|p| {
                p.into_iter()
                    .map(|p| GivenPassage {
                        text: p.text,
                        chunk_id: p.chunk_id,
                    })
                    .collect()
            }),
            expect_json: b.expect_json.unwrap_or(false),
            judge: b.judge.unwrap_or(false),
            question: b.question,
            finish_reason: b.finish_reason,
        };
        let validation = self.state.validation.check(auth.user(), request).await?;
        Ok(Json(validation.into()))
    }

    /// Rate an answer
    ///
    /// Thumbs up or down, with an optional comment, on an assistant message of your
    /// conversation (404 for anyone else's; 400 for a user message; 409 while it streams).
    /// A `message_rated` event records it; the same rating again records nothing.
    #[oai(
        path = "/conversations/:id/messages/:messageId/rating",
        method = "put",
        operation_id = "rateMessage"
    )]
    async fn rate(
        &self,
        auth: BearerAuth,
        id: Path<Uuid>,
        #[oai(name = "messageId")] message_id: Path<Uuid>,
        body: JsonBody<RateRequest>,
    ) -> ApiResult<Json<Message>> {
        let b = body.0;
        let (message, _) = self
            .state
            .validation
            .rate(
                auth.user(),
                id.0,
                message_id.0,
                Some(b.rating.into()),
                b.comment,
            )
            .await?;
        Ok(Json(message.into()))
    }

    /// Remove your rating of an answer
    ///
    /// A `message_rated` event with `rating: null`; nothing when there was none.
    #[oai(
        path = "/conversations/:id/messages/:messageId/rating",
        method = "delete",
        operation_id = "unrateMessage"
    )]
    async fn unrate(
        &self,
        auth: BearerAuth,
        id: Path<Uuid>,
        #[oai(name = "messageId")] message_id: Path<Uuid>,
    ) -> ApiResult<Removed> {
        self.state
            .validation
            .rate(auth.user(), id.0, message_id.0, None, None)
            .await?;
        Ok(Removed::NoContent)
    }

    /// The quality report (admin)
    ///
    /// Per model and agent, the answers created in `[from, to)` (default: the 30 days up to
    /// now; at most 366 days): how many, each check's failure rate, the judge's score
    /// distribution, ratings, first-chunk and total latency percentiles, and tokens.
    #[oai(
        path = "/validation/report",
        method = "get",
        operation_id = "qualityReport"
    )]
    async fn report(
        &self,
        auth: BearerAuth,
        from: Query<Option<DateTime<Utc>>>,
        to: Query<Option<DateTime<Utc>>>,
        model: Query<Option<String>>,
        #[oai(name = "agentId")] agent_id: Query<Option<Uuid>>,
    ) -> ApiResult<Json<QualityReport>> {
        auth.require(Role::Admin)?;
        let to = to.0.unwrap_or_else(Utc::now);
        let from = from.0.unwrap_or(to - Duration::days(30));
        if from >= to {
            return Err(ApiError::validation("from", "must be before `to`"));
        }
        if to - from > Duration::days(MAX_REPORT_DAYS) {
            return Err(ApiError::validation(
                "from",
                format!("the window is at most {MAX_REPORT_DAYS} days"),
            ));
        }
        let filter = ReportFilter {
            from,
            to,
            model: model.0.filter(|m| !m.is_empty()),
            agent_id: agent_id.0,
        };
        let groups = self
            .state
            .store
            .quality_report(&filter)
            .await
            .map_err(ServiceError::from)?;
        Ok(Json(QualityReport {
            from,
            to,
            groups: groups.into_iter().map(Into::into).collect(),
        }))
    }
}
