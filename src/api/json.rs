//! `JsonBody<T>`: a JSON request body parsed with serde, strictly typed, whose errors name
//! the offending field (`title: invalid type: integer 5, expected a string`). poem-openapi's
//! own `Json` coerces numbers into strings and reports type names instead of fields, which
//! the contract does not allow. The schema in the spec is still `T`'s.

use crate::domain::codes::ErrorCode;
use poem::http::StatusCode;
use poem::{Request, RequestBody};
use poem_openapi::registry::{MetaMediaType, MetaRequest, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use serde::de::DeserializeOwned;
use tokio::io::AsyncReadExt;

use super::error::ApiError;

pub struct JsonBody<T>(pub T);

/// The largest JSON body accepted when no configuration is at hand (`MAX_BODY_BYTES`):
/// generous for chat and small enough that a flood of huge bodies cannot exhaust memory.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

impl<'a, T: DeserializeOwned + Type + Send> ApiExtractor<'a> for JsonBody<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: "application/json; charset=utf-8",
                schema: T::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let declared = request
            .headers()
            .get(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        let max = request
            .data::<super::state::AppState>()
            .map_or(DEFAULT_MAX_BODY_BYTES, |state| {
                state.config.limits.max_body_bytes
            });
        if declared.is_some_and(|len| len > max) {
            return Err(too_large(max).into());
        }
        // Chunked bodies carry no length: read at most one byte past the limit to tell.
        let mut bytes = Vec::new();
        body.take()?
            .into_async_read()
            .take(max as u64 + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| ApiError::validation("body", format!("could not be read: {e}")))?;
        if bytes.len() > max {
            return Err(too_large(max).into());
        }
        parse(&bytes).map(JsonBody).map_err(Into::into)
    }
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
        format!("request body is larger than {max} bytes"),
    )
}

pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::validation("body", "a JSON object is required"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let field = if inner.is_syntax() || inner.is_eof() {
            "body".to_string()
        } else if path == "." {
            missing_field(&inner.to_string())
                .unwrap_or("body")
                .to_string()
        } else {
            path
        };
        ApiError::validation(&field, inner)
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::validation("body", e))?;
    Ok(value)
}

/// serde reports a missing field at the parent's path: "missing field `password` at …".
fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Sample {
        title: String,
        count: Option<u32>,
    }

    #[test]
    fn errors_name_the_field() {
        let err = parse::<Sample>(br#"{"title": 5}"#).unwrap_err();
        assert!(
            err.message.starts_with("title: invalid type"),
            "{}",
            err.message
        );
        let err = parse::<Sample>(br#"{"count": 1}"#).unwrap_err();
        assert!(
            err.message.starts_with("title: missing field"),
            "{}",
            err.message
        );
        let err = parse::<Sample>(br#"{"title": "x", "count": -1}"#).unwrap_err();
        assert!(err.message.starts_with("count:"), "{}", err.message);
        let err = parse::<Sample>(b"{not json").unwrap_err();
        assert_eq!(err.code, ErrorCode::ValidationError);
        assert!(parse::<Sample>(b"").is_err());
        assert!(parse::<Sample>(br#"{"title": "x"} trailing"#).is_err());
    }
}
