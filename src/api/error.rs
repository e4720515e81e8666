//! The API's one error type and the one place every error becomes the contract's body
//! `{"message", "code", "details"?}`: service errors, poem's own parse and routing errors,
//! and anything else that escapes a handler. Internal causes are logged, never returned.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object};

use crate::domain::codes::ErrorCode;
use crate::service::ServiceError;

/// The error body of every failed request.
#[derive(Debug, Clone, Object)]
pub struct ErrorBody {
    /// What went wrong, for a person; a 400 names the offending field.
    pub message: String,
    /// A stable machine-readable code such as `VALIDATION_ERROR` or `CONVERSATION_NOT_FOUND`.
    pub code: String,
    /// Extra structured context, e.g. `{"field": "title"}`.
    #[oai(skip_serializing_if_is_none)]
    pub details: Option<serde_json::Value>,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<serde_json::Value>,
    /// Sent as `Retry-After` (seconds) with a 429 or 503.
    pub retry_after_secs: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

/// `Retry-After` when the model's queue refused a call: about the time a few answers take.
const BUSY_RETRY_AFTER_SECS: u64 = 5;

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after_secs: None,
        }
    }

    pub fn validation(field: &str, message: impl std::fmt::Display) -> Self {
        let mut err = Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::ValidationError,
            format!("{field}: {message}"),
        );
        err.details = Some(serde_json::json!({ "field": field }));
        err
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::InternalError,
            "internal server error",
        )
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            message: self.message.clone(),
            code: self.code.as_str().to_string(),
            details: self.details.clone(),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        use ServiceError as E;
        match err {
            E::Validation { field, message } => Self::validation(field, message),
            E::Unauthorized(message) => Self::unauthorized(message),
            E::Forbidden(message) => Self::forbidden(message),
            E::ConversationNotFound => Self::new(
                StatusCode::NOT_FOUND,
                ErrorCode::ConversationNotFound,
                "conversation not found",
            ),
            E::MessageNotFound => Self::new(
                StatusCode::NOT_FOUND,
                ErrorCode::MessageNotFound,
                "message not found",
            ),
            E::UserNotFound => Self::new(
                StatusCode::NOT_FOUND,
                ErrorCode::UserNotFound,
                "user not found",
            ),
            E::ModelNotFound => Self::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such model in the catalogue",
            ),
            E::AgentNotFound => Self::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "agent not found",
            ),
            E::KnowledgeBaseNotFound => Self::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "knowledge base not found",
            ),
            E::DocumentNotFound => Self::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "document not found",
            ),
            E::JobNotFound => {
                Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "job not found")
            }
            E::Conflict(message) => Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, message),
            E::AlreadyFinished => Self::new(
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                "the answer has already finished",
            ),
            E::RateLimited {
                message,
                retry_after_secs,
            } => {
                let mut err = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::RateLimitExceeded,
                    message,
                );
                err.retry_after_secs = retry_after_secs;
                err
            }
            E::TooLarge(message) => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                message,
            ),
            E::Unavailable(message) => {
                let mut err = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::ServiceUnavailable,
                    message,
                );
                err.retry_after_secs = Some(5);
                err
            }
            E::Upstream(err) => {
                use crate::llm::ProviderError as P;
                let (status, code) = match err {
                    P::Timeout => (StatusCode::GATEWAY_TIMEOUT, ErrorCode::GatewayTimeout),
                    P::Upstream(_) => (StatusCode::BAD_GATEWAY, ErrorCode::BadGateway),
                    P::Unavailable(_) | P::CircuitOpen => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        ErrorCode::ServiceUnavailable,
                    ),
                    P::Rejected(_) => (StatusCode::BAD_GATEWAY, ErrorCode::BadGateway),
                    P::Busy => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        ErrorCode::ServiceUnavailable,
                    ),
                };
                let mut mapped = Self::new(status, code, err.to_string());
                if matches!(err, P::Busy) {
                    mapped.retry_after_secs = Some(BUSY_RETRY_AFTER_SECS);
                }
                mapped
            }
            E::Internal(cause) => {
                // The whole chain goes to the log (with the request's span); the client
                // learns nothing about SQL, files or stacks.
                tracing::error!(error = format!("{cause:#}"), "internal error");
                Self::internal()
            }
        }
    }
}

impl From<ApiError> for poem::Error {
    fn from(err: ApiError) -> Self {
        let status = err.status;
        poem::Error::new(err, status)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&poem_openapi::types::ToJSON::to_json(&self.body()))
            .unwrap_or_else(|_| {
                br#"{"message":"internal server error","code":"INTERNAL_ERROR"}"#.to_vec()
            });
        let mut response = Response::builder()
            .status(self.status)
            .content_type("application/json; charset=utf-8");
        if let Some(seconds) = self.retry_after_secs {
            response = response.header(poem::http::header::RETRY_AFTER, seconds.max(1).to_string());
        }
        response.body(body)
    }
}

fn error_response(status: u16, description: &'static str) -> MetaResponse {
    MetaResponse {
        description,
        status: Some(status),
        status_range: None,
        content: vec![MetaMediaType {
            content_type: "application/json; charset=utf-8",
            schema: ErrorBody::schema_ref(),
        }],
        headers: vec![],
    }
}

/// Documents the error statuses every operation may answer, with the error body schema.
impl ApiResponse for ApiError {
    fn meta() -> MetaResponses {
        let response = error_response;
        MetaResponses {
            responses: vec![
                response(
                    400,
                    "Invalid input (`VALIDATION_ERROR`); the message names the field",
                ),
                response(
                    401,
                    "Missing, invalid or expired credentials (`UNAUTHORIZED`)",
                ),
                response(403, "Authenticated but not allowed (`FORBIDDEN`)"),
                response(404, "Not found, or owned by someone else (`*_NOT_FOUND`)"),
                response(409, "Conflicts with the current state (`CONFLICT`)"),
                response(
                    413,
                    "The body is larger than `MAX_BODY_BYTES` (`PAYLOAD_TOO_LARGE`)",
                ),
                response(
                    429,
                    "A rate limit was hit (`RATE_LIMIT_EXCEEDED`); see `Retry-After`",
                ),
                response(
                    500,
                    "Unexpected failure (`INTERNAL_ERROR`); details are only logged",
                ),
            ],
        }
    }

    fn register(registry: &mut Registry) {
        ErrorBody::register(registry);
    }
}

/// The errors of operations that call the LLM upstream: [`ApiError`]'s, plus the gateway
/// statuses. A separate type only so the spec lists 502/503/504 where they can happen.
#[derive(Debug, Clone)]
pub struct UpstreamApiError(pub ApiError);

impl<E: Into<ApiError>> From<E> for UpstreamApiError {
    fn from(err: E) -> Self {
        Self(err.into())
    }
}

impl From<UpstreamApiError> for poem::Error {
    fn from(err: UpstreamApiError) -> Self {
        err.0.into()
    }
}

impl ApiResponse for UpstreamApiError {
    fn meta() -> MetaResponses {
        let mut meta = ApiError::meta();
        meta.responses.extend([
            error_response(
                502,
                "The model provider failed (`BAD_GATEWAY`); the user message is kept",
            ),
            error_response(
                503,
                "The model provider is unavailable (`SERVICE_UNAVAILABLE`)",
            ),
            error_response(
                504,
                "The model provider did not answer in time (`GATEWAY_TIMEOUT`)",
            ),
        ]);
        meta
    }

    fn register(registry: &mut Registry) {
        ApiError::register(registry);
    }
}

/// The catch-all: whatever error reaches the top of the router becomes the contract's body.
pub async fn render_error(err: poem::Error) -> Response {
    if let Some(api) = err.downcast_ref::<ApiError>() {
        return api.clone().into_response();
    }
    let status = err.status();
    let api = match status {
        StatusCode::BAD_REQUEST => {
            let message = err.to_string();
            match parameter_name(&message) {
                Some((internal, field)) => {
                    let message =
                        message.replacen(&format!("`{internal}`"), &format!("`{field}`"), 1);
                    let mut e = ApiError::new(status, ErrorCode::ValidationError, message);
                    e.details = Some(serde_json::json!({ "field": field }));
                    e
                }
                None => ApiError::new(status, ErrorCode::ValidationError, message),
            }
        }
        StatusCode::UNAUTHORIZED => ApiError::unauthorized("missing or invalid bearer token"),
        StatusCode::FORBIDDEN => ApiError::forbidden("forbidden"),
        StatusCode::NOT_FOUND => ApiError::new(status, ErrorCode::NotFound, "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            status,
            ErrorCode::MethodNotAllowed,
            "method not allowed on this route",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            status,
            ErrorCode::PayloadTooLarge,
            "request body is too large",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::new(status, ErrorCode::ValidationError, err.to_string())
        }
        s if s.is_server_error() => {
            tracing::error!(error = %err, "unhandled server error");
            ApiError::internal()
        }
        // Any other client error poem raises (406, 408, 411...): the request was not
        // acceptable as sent.
        s => ApiError::new(s, ErrorCode::ValidationError, err.to_string()),
    };
    api.into_response()
}

/// poem-openapi says "failed to parse parameter `limit`: …" for query parameters, but names
/// path parameters by position ("failed to parse path `param0`: …"). Every route of this API
/// has the same path parameters in the same order, `{id}` then `{messageId}`, so the position
/// gives the public name back. Returns (name in the message, public name).
fn parameter_name(message: &str) -> Option<(&str, &str)> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    let name = &message[start..start + len];
    let public = match (message.starts_with("failed to parse path"), name) {
        (true, "param0") => "id",
        (true, "param1") => "messageId",
        _ => name,
    };
    Some((name, public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_names_are_found_in_poem_messages() {
        assert_eq!(
            parameter_name("failed to parse parameter `limit`: bad"),
            Some(("limit", "limit"))
        );
        assert_eq!(
            parameter_name("failed to parse path `param1`: bad"),
            Some(("param1", "messageId"))
        );
        assert_eq!(parameter_name("no backticks"), None);
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let err: ApiError =
            ServiceError::Internal(anyhow::anyhow!("SELECT * FROM secret_table")).into();
        assert_eq!(err.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!err.message.contains("secret_table"));
    }
}
