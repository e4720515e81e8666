//! LLM providers: one trait for chat completion, streamed or whole, with an
//! OpenAI-compatible implementation (async-openai) and a built-in demo provider.

pub mod catalogue;
pub mod context;
pub mod demo;
pub mod openai;
pub mod rate_headers;
pub mod resilience;
pub mod scheduler;

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::config::Config;
use crate::domain::types::{MessageRole, Usage};
use crate::metrics::Metrics;

/// One message of the context sent upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: MessageRole,
    pub content: String,
    /// The tools an assistant message called (OpenAI function calling).
    pub tool_calls: Vec<ToolCall>,
    /// Set on a tool's result: the call it answers (sent with the `tool` role).
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn text(role: MessageRole, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// An assistant message that called tools (with the text it said first, if any).
    pub fn calling(content: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        Self {
            tool_calls: calls,
            ..Self::text(MessageRole::Assistant, content)
        }
    }

    /// A tool's result for the call `call_id`.
    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            tool_call_id: Some(call_id.into()),
            ..Self::text(MessageRole::Assistant, content)
        }
    }

    /// Its size for the token budget: its text, and its calls' names and arguments.
    pub fn estimated_tokens(&self) -> usize {
        context::estimate_tokens(&self.content)
            + self
                .tool_calls
                .iter()
                .map(|c| context::estimate_tokens(&c.arguments) + c.name.len() / 4)
                .sum::<usize>()
    }
}

/// A tool the model may call: its name, what it does, and its parameters (JSON Schema).
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// A tool call the model made, assembled: its id, the tool's name and the arguments as the
/// model wrote them (JSON, unchecked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// An agent's sampling; the provider's defaults where `None`.
    pub sampling: Sampling,
    /// The tools the model may call; none is sent when empty.
    pub tools: Vec<ToolSpec>,
}

/// Sampling parameters sent with a request.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    /// Ask for a JSON object as the answer (OpenAI's `response_format: json_object`).
    pub json: bool,
}

/// What a call is expected to generate, for the tokens-per-minute budget before the
/// provider reports what it used.
pub const EXPECTED_COMPLETION_TOKENS: u64 = 256;

impl ChatRequest {
    /// The tokens the call is expected to use: its messages (estimated) and
    /// [`EXPECTED_COMPLETION_TOKENS`].
    pub fn estimated_tokens(&self) -> u64 {
        let prompt: usize = self
            .messages
            .iter()
            .map(ChatMessage::estimated_tokens)
            .sum();
        prompt as u64 + EXPECTED_COMPLETION_TOKENS
    }
}

/// What a streamed completion yields, in order: text deltas, then the tool calls it made
/// (each once whole, when the answer finishes), how it finished, then at most one usage
/// report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamItem {
    Delta(String),
    ToolCall(ToolCall),
    /// How the model call ended, when the provider said (before the usage report).
    Finish(Finish),
    Usage(Usage),
}

/// How a model call ended, as the provider said: its `finish_reason` (`stop`, `length`,
/// `tool_calls`, `content_filter`) and its `refusal` text, if it refused. What the answer
/// checks read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Finish {
    pub reason: Option<String>,
    pub refusal: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Completion {
    pub content: String,
    pub usage: Option<Usage>,
    /// The tools the answer called instead of (or after) its text.
    pub tool_calls: Vec<ToolCall>,
    pub finish: Finish,
}

/// Why the upstream did not give an answer. Messages are safe to show to users: they name
/// the failure (status, timeout), never credentials or internal addresses.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProviderError {
    #[error("the model provider failed: {0}")]
    Upstream(String),
    #[error("the model provider did not answer in time")]
    Timeout,
    #[error("the model provider is unavailable: {0}")]
    Unavailable(String),
    /// The upstream refused this request (a 4xx other than 429): not worth retrying.
    #[error("the model provider refused the request: {0}")]
    Rejected(String),
    /// The circuit breaker is open: the upstream failed repeatedly, so we fail fast.
    #[error("the model provider is failing; not trying again for a while")]
    CircuitOpen,
    /// The model's budget is spent and the queue is full, or the wait passed
    /// `QUEUE_MAX_WAIT_MS`: try again shortly.
    #[error("the model is busy; try again shortly")]
    Busy,
}

impl ProviderError {
    /// Whether another attempt could succeed (and so whether it counts against the upstream).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Upstream(_) | Self::Timeout | Self::Unavailable(_)
        )
    }
}

pub type ChatStream = BoxStream<'static, Result<StreamItem, ProviderError>>;

pub trait ChatProvider: Send + Sync + 'static {
    /// A short name for logs and metrics (`openai`, `demo`).
    fn name(&self) -> &'static str;

    /// The whole answer at once.
    fn complete(&self, request: ChatRequest) -> BoxFuture<'_, Result<Completion, ProviderError>>;

    /// The answer as a stream of deltas. Resolves once the upstream has accepted the request
    /// (so an HTTP error status fails here, before any text).
    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatStream, ProviderError>>;

    /// Embeds `inputs` with `model` (OpenAI's `/v1/embeddings`): one vector per input, in
    /// order. Providers without embeddings refuse.
    fn embed(
        &self,
        model: String,
        inputs: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Vec<f32>>, ProviderError>> {
        let _ = (model, inputs);
        Box::pin(async {
            Err(ProviderError::Rejected(
                "this provider has no embeddings".into(),
            ))
        })
    }

    /// Whether a call to `model` would go upstream now: `false` while its circuit breaker
    /// is open (the call would fail fast), so a caller with a fallback can use it instead.
    fn accepting(&self, _model: &str) -> bool {
        true
    }
}

/// The provider every model call goes through: each catalogue model routed to its own
/// provider (OpenAI-compatible behind retries and a circuit breaker, one breaker per
/// provider; the default provider without a key is the demo provider).
pub fn from_config(
    config: &Config,
    metrics: Arc<Metrics>,
    scheduler: &scheduler::Scheduler,
) -> anyhow::Result<Arc<dyn ChatProvider>> {
    let mut clients: HashMap<String, Arc<dyn ChatProvider>> = HashMap::new();
    for provider in config.catalogue.providers() {
        let client: Arc<dyn ChatProvider> = match &provider.api_key {
            _ if provider.is_demo() => Arc::new(demo::DemoProvider::new(config.demo_delay)),
            key => {
                // A local server (Ollama, vLLM) may need no key: an empty one is sent.
                let key = key.as_ref().map_or("", |k| k.expose());
                // What the provider says of its capacity reaches its lane in the queue.
                let lanes: Vec<String> = std::iter::once(provider.id.clone())
                    .chain(
                        config
                            .catalogue
                            .models()
                            .iter()
                            .filter(|m| m.provider == provider.id && m.has_own_budget())
                            .map(|m| config.catalogue.lane_of(&m.id)),
                    )
                    .collect();
                let feedback = scheduler.feedback(&lanes);
                let observe = feedback.clone().map(|feedback| {
                    let metrics = metrics.clone();
                    let id = provider.id.clone();
                    move |service| rate_headers::Observed::new(service, feedback, &id, metrics)
                });
                let openai = openai::OpenAiProvider::new(
                    key,
                    provider.base_url.as_deref(),
                    config.upstream.connect_timeout,
                    observe,
                )?;
                Arc::new(
                    resilience::ResilientProvider::new(
                        Arc::new(openai),
                        &config.upstream,
                        metrics.clone(),
                    )
                    .honouring(feedback),
                )
            }
        };
        clients.insert(provider.id.clone(), client);
    }
    Ok(Arc::new(catalogue::RoutedProvider::new(
        &config.catalogue,
        &clients,
    )?))
}
