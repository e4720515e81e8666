//! Any OpenAI-compatible server (OpenAI, Ollama, vLLM, llama.cpp, LiteLLM) through
//! async-openai. The base URL is operator configuration only; nothing a user sends can
//! change where the server connects.

use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    ChatCompletionStreamOptions, CreateChatCompletionRequest,
};
use async_openai::Client;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use super::{
    ChatMessage, ChatProvider, ChatRequest, ChatStream, Completion, ProviderError, StreamItem,
};
use crate::domain::types::{MessageRole, Usage};

pub struct OpenAiProvider {
    client: Client<OpenAIConfig>,
}

impl OpenAiProvider {
    /// `observe`: a layer around the HTTP service that reads each answer's status and
    /// rate-limit headers (see `rate_headers`).
    pub fn new(
        api_key: &str,
        base_url: Option<&str>,
        connect_timeout: Duration,
        observe: Option<impl FnOnce(ReqwestService) -> super::rate_headers::Observed>,
    ) -> anyhow::Result<Self> {
        let mut config = OpenAIConfig::new().with_api_key(api_key);
        if let Some(base) = base_url {
            config = config.with_api_base(base.trim_end_matches('/'));
        }
        // Only the connection has a fixed timeout here: how long an answer may take is the
        // stream's business (first-token and between-token timeouts).
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .build()?;
        // Without async-openai's own retry layer: retries are ours (`llm::resilience`), so
        // they happen only before the first token and count toward the circuit breaker.
        let service = ReqwestService::new(http);
        let client = Client::with_config(config);
        let client = match observe {
            Some(observe) => client.with_http_service(observe(service)),
            None => client.with_http_service(service),
        };
        Ok(Self { client })
    }
}

fn to_openai(message: &ChatMessage) -> ChatCompletionRequestMessage {
    let content = message.content.clone();
    match message.role {
        MessageRole::System => ChatCompletionRequestSystemMessage::from(content).into(),
        MessageRole::User => ChatCompletionRequestUserMessage::from(content).into(),
        MessageRole::Assistant => ChatCompletionRequestAssistantMessage::from(content).into(),
    }
}

fn build_request(request: &ChatRequest, stream: bool) -> CreateChatCompletionRequest {
    CreateChatCompletionRequest {
        model: request.model.clone(),
        messages: request.messages.iter().map(to_openai).collect(),
        temperature: request.sampling.temperature.map(|t| t as f32),
        top_p: request.sampling.top_p.map(|p| p as f32),
        max_completion_tokens: request.sampling.max_tokens,
        stream: stream.then_some(true),
        // Ask for token usage in the stream's last chunk.
        stream_options: stream.then_some(ChatCompletionStreamOptions {
            include_usage: Some(true),
            include_obfuscation: None,
        }),
        ..Default::default()
    }
}

/// Maps the client's errors to ours without echoing response bodies or URLs, which can
/// carry provider internals.
fn map_error(err: OpenAIError) -> ProviderError {
    match err {
        OpenAIError::Reqwest(e) if e.is_timeout() => ProviderError::Timeout,
        OpenAIError::Reqwest(e) if e.is_connect() => {
            ProviderError::Unavailable("cannot connect".into())
        }
        OpenAIError::Reqwest(e) => match e.status() {
            Some(status) => by_status(status.as_u16(), None),
            None => ProviderError::Upstream("connection failed".into()),
        },
        OpenAIError::ApiError(api) => {
            by_status(api.status_code.as_u16(), api.api_error.code.as_deref())
        }
        OpenAIError::StreamError(_) => ProviderError::Upstream("the stream broke off".into()),
        OpenAIError::JSONDeserialize(..) => ProviderError::Upstream("unreadable response".into()),
        other => ProviderError::Upstream(short(&other.to_string())),
    }
}

/// 429 and 5xx are the upstream's trouble (worth a retry, counted by the breaker); other
/// 4xx mean this request is wrong (a bad model name, a bad key) and retrying cannot help.
fn by_status(status: u16, code: Option<&str>) -> ProviderError {
    let detail = match code {
        Some(code) => format!("HTTP {status} ({})", short(code)),
        None => format!("HTTP {status}"),
    };
    if status == 429 || status >= 500 {
        ProviderError::Upstream(detail)
    } else {
        ProviderError::Rejected(detail)
    }
}

fn short(text: &str) -> String {
    text.chars().take(120).collect()
}

fn usage(u: &async_openai::types::chat::CompletionUsage) -> Usage {
    Usage {
        prompt_tokens: u.prompt_tokens.into(),
        completion_tokens: u.completion_tokens.into(),
    }
}

impl ChatProvider for OpenAiProvider {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn complete(&self, request: ChatRequest) -> BoxFuture<'_, Result<Completion, ProviderError>> {
        async move {
            let response = self
                .client
                .chat()
                .create(build_request(&request, false))
                .await
                .map_err(map_error)?;
            let content = response
                .choices
                .into_iter()
                .next()
                .and_then(|c| c.message.content)
                .ok_or_else(|| ProviderError::Upstream("the answer had no content".into()))?;
            Ok(Completion {
                content,
                usage: response.usage.as_ref().map(usage),
            })
        }
        .boxed()
    }

    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatStream, ProviderError>> {
        async move {
            let upstream = self
                .client
                .chat()
                .create_stream(build_request(&request, true))
                .await
                .map_err(map_error)?;
            // async-openai ends the stream quietly on `[DONE]` and also when the connection
            // simply closes; only a `finish_reason` tells a finished answer from a cut one.
            let stream = futures::stream::unfold(
                (upstream, false, false),
                |(mut upstream, finished, done)| async move {
                    if done {
                        return None;
                    }
                    loop {
                        match upstream.next().await {
                            None if finished => return None,
                            None => {
                                let err = ProviderError::Upstream(
                                    "the stream ended before the answer was finished".into(),
                                );
                                return Some((vec![Err(err)], (upstream, finished, true)));
                            }
                            Some(Err(e)) => {
                                return Some((vec![Err(map_error(e))], (upstream, finished, true)))
                            }
                            Some(Ok(chunk)) => {
                                let mut items = Vec::new();
                                let mut now_finished = finished;
                                for choice in chunk.choices {
                                    if let Some(text) =
                                        choice.delta.content.filter(|t| !t.is_empty())
                                    {
                                        items.push(Ok(StreamItem::Delta(text)));
                                    }
                                    now_finished |= choice.finish_reason.is_some();
                                }
                                if let Some(u) = chunk.usage.as_ref() {
                                    items.push(Ok(StreamItem::Usage(usage(u))));
                                }
                                if !items.is_empty() || now_finished != finished {
                                    return Some((items, (upstream, now_finished, false)));
                                }
                            }
                        }
                    }
                },
            )
            .flat_map(futures::stream::iter);
            Ok(stream.boxed())
        }
        .boxed()
    }
}
