//! Any OpenAI-compatible server (OpenAI, Ollama, vLLM, llama.cpp, LiteLLM) through
//! async-openai. The base URL is operator configuration only; nothing a user sends can
//! change where the server connects.

use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCallChunk,
    ChatCompletionMessageToolCalls, ChatCompletionRequestAssistantMessage,
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestToolMessage, ChatCompletionRequestUserMessage,
    ChatCompletionStreamOptions, ChatCompletionTool, ChatCompletionTools,
    CreateChatCompletionRequest, FinishReason, FunctionCall, FunctionObject, ResponseFormat,
};
use async_openai::types::embeddings::{CreateEmbeddingRequest, EmbeddingInput};
use async_openai::Client;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use super::{
    ChatMessage, ChatProvider, ChatRequest, ChatStream, Completion, Finish, ProviderError,
    StreamItem, ToolCall,
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
    if let Some(call_id) = &message.tool_call_id {
        return ChatCompletionRequestMessage::Tool(ChatCompletionRequestToolMessage {
            content: content.into(),
            tool_call_id: call_id.clone(),
        });
    }
    match message.role {
        MessageRole::System => ChatCompletionRequestSystemMessage::from(content).into(),
        MessageRole::User => ChatCompletionRequestUserMessage::from(content).into(),
        MessageRole::Assistant if !message.tool_calls.is_empty() => {
            ChatCompletionRequestAssistantMessage {
                // Text said before the calls, if any; none is `null`, as OpenAI expects.
                content: (!content.is_empty()).then(|| content.into()),
                tool_calls: Some(
                    message
                        .tool_calls
                        .iter()
                        .map(|call| {
                            ChatCompletionMessageToolCalls::Function(
                                ChatCompletionMessageToolCall {
                                    id: call.id.clone(),
                                    function: FunctionCall {
                                        name: call.name.clone(),
                                        arguments: call.arguments.clone(),
                                    },
                                },
                            )
                        })
                        .collect(),
                ),
                ..Default::default()
            }
            .into()
        }
        MessageRole::Assistant => ChatCompletionRequestAssistantMessage::from(content).into(),
    }
}

fn tools(request: &ChatRequest) -> Option<Vec<ChatCompletionTools>> {
    (!request.tools.is_empty()).then(|| {
        request
            .tools
            .iter()
            .map(|tool| {
                ChatCompletionTools::Function(ChatCompletionTool {
                    function: FunctionObject {
                        name: tool.name.clone(),
                        description: Some(tool.description.clone()),
                        parameters: Some(tool.parameters.clone()),
                        strict: None,
                    },
                })
            })
            .collect()
    })
}

fn build_request(request: &ChatRequest, stream: bool) -> CreateChatCompletionRequest {
    CreateChatCompletionRequest {
        model: request.model.clone(),
        messages: request.messages.iter().map(to_openai).collect(),
        temperature: request.sampling.temperature.map(|t| t as f32),
        top_p: request.sampling.top_p.map(|p| p as f32),
        max_completion_tokens: request.sampling.max_tokens,
        response_format: request.sampling.json.then_some(ResponseFormat::JsonObject),
        tools: tools(request),
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

/// The wire name of a finish reason (`length`, `content_filter`, ...).
fn finish_reason(reason: &FinishReason) -> Option<String> {
    serde_json::to_value(reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
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

/// Streamed tool calls as their pieces arrive: the first piece of each has its `index`, `id`
/// and name, later ones add fragments of its arguments; several calls interleave by
/// `index`. The arguments are JSON only once whole.
#[derive(Default)]
struct ToolCallPieces {
    /// By `index`, in the order the calls began.
    calls: Vec<(u32, ToolCall)>,
}

impl ToolCallPieces {
    fn add(&mut self, piece: ChatCompletionMessageToolCallChunk) {
        let at = match self.calls.iter().position(|(i, _)| *i == piece.index) {
            Some(at) => at,
            None => {
                let empty = ToolCall {
                    id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                };
                self.calls.push((piece.index, empty));
                self.calls.len() - 1
            }
        };
        let call = &mut self.calls[at].1;
        if let Some(id) = piece.id.filter(|id| !id.is_empty()) {
            call.id = id;
        }
        if let Some(function) = piece.function {
            if let Some(name) = function.name.filter(|n| !n.is_empty()) {
                call.name = name;
            }
            if let Some(fragment) = function.arguments {
                call.arguments.push_str(&fragment);
            }
        }
    }

    /// The whole calls, in order; a call that never got an id gets one from its index.
    fn take(&mut self) -> impl Iterator<Item = ToolCall> {
        std::mem::take(&mut self.calls)
            .into_iter()
            .map(|(index, mut call)| {
                if call.id.is_empty() {
                    call.id = format!("call_{index}");
                }
                call
            })
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
            let choice = response
                .choices
                .into_iter()
                .next()
                .ok_or_else(|| ProviderError::Upstream("the answer had no content".into()))?;
            let finish = Finish {
                reason: choice.finish_reason.as_ref().and_then(finish_reason),
                refusal: choice.message.refusal.clone().filter(|r| !r.is_empty()),
            };
            let message = choice.message;
            let tool_calls: Vec<ToolCall> = message
                .tool_calls
                .unwrap_or_default()
                .into_iter()
                .filter_map(|call| match call {
                    ChatCompletionMessageToolCalls::Function(call) => Some(ToolCall {
                        id: call.id,
                        name: call.function.name,
                        arguments: call.function.arguments,
                    }),
                    ChatCompletionMessageToolCalls::Custom(_) => None,
                })
                .collect();
            // An answer that only calls tools, or refuses, has no text; any other needs some.
            let content = match message.content {
                Some(content) => content,
                None if !tool_calls.is_empty() || finish.refusal.is_some() => String::new(),
                None => return Err(ProviderError::Upstream("the answer had no content".into())),
            };
            Ok(Completion {
                content,
                usage: response.usage.as_ref().map(usage),
                tool_calls,
                finish,
            })
        }
        .boxed()
    }

    fn embed(
        &self,
        model: String,
        inputs: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Vec<f32>>, ProviderError>> {
        async move {
            let count = inputs.len();
            let response = self
                .client
                .embeddings()
                .create(CreateEmbeddingRequest {
                    model,
                    input: EmbeddingInput::StringArray(inputs),
                    ..Default::default()
                })
                .await
                .map_err(map_error)?;
            let mut vectors = vec![Vec::new(); count];
            for item in response.data {
                if let Some(slot) = vectors.get_mut(item.index as usize) {
                    *slot = item.embedding;
                }
            }
            if vectors.iter().any(Vec::is_empty) {
                return Err(ProviderError::Upstream(
                    "the embeddings answer missed an input".into(),
                ));
            }
            Ok(vectors)
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
            // Tool calls arrive in pieces (see `ToolCallPieces`) and leave whole, once the
            // answer says it has finished.
            let stream = futures::stream::unfold(
                (
                    upstream,
                    false,
                    false,
                    ToolCallPieces::default(),
                    String::new(),
                ),
                |(mut upstream, finished, done, mut calls, mut refusal)| async move {
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
                                return Some((
                                    vec![Err(err)],
                                    (upstream, finished, true, calls, refusal),
                                ));
                            }
                            Some(Err(e)) => {
                                let items = vec![Err(map_error(e))];
                                return Some((items, (upstream, finished, true, calls, refusal)));
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
                                    for piece in choice.delta.tool_calls.unwrap_or_default() {
                                        calls.add(piece);
                                    }
                                    if let Some(piece) = choice.delta.refusal {
                                        refusal.push_str(&piece);
                                    }
                                    if let Some(reason) = &choice.finish_reason {
                                        now_finished = true;
                                        items.extend(
                                            calls.take().map(|c| Ok(StreamItem::ToolCall(c))),
                                        );
                                        items.push(Ok(StreamItem::Finish(Finish {
                                            reason: finish_reason(reason),
                                            refusal: (!refusal.is_empty())
                                                .then(|| std::mem::take(&mut refusal)),
                                        })));
                                    }
                                }
                                if let Some(u) = chunk.usage.as_ref() {
                                    items.push(Ok(StreamItem::Usage(usage(u))));
                                }
                                if !items.is_empty() || now_finished != finished {
                                    return Some((
                                        items,
                                        (upstream, now_finished, false, calls, refusal),
                                    ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use async_openai::types::chat::FunctionCallStream;

    fn piece(
        index: u32,
        id: Option<&str>,
        name: Option<&str>,
        args: &str,
    ) -> ChatCompletionMessageToolCallChunk {
        ChatCompletionMessageToolCallChunk {
            index,
            id: id.map(Into::into),
            r#type: None,
            function: Some(FunctionCallStream {
                name: name.map(Into::into),
                arguments: Some(args.into()),
            }),
        }
    }

    #[test]
    fn interleaved_pieces_assemble_into_whole_calls_in_order() {
        let mut calls = ToolCallPieces::default();
        calls.add(piece(0, Some("call_a"), Some("ask_agent"), ""));
        calls.add(piece(1, Some("call_b"), Some("current_time"), ""));
        calls.add(piece(0, None, None, "{\"age"));
        calls.add(piece(1, None, None, "{}"));
        calls.add(piece(0, None, None, "ntId\":1}"));
        // A provider that sends no id gets one from the index.
        calls.add(piece(2, None, Some("current_time"), "{}"));
        let whole: Vec<ToolCall> = calls.take().collect();
        assert_eq!(
            whole,
            [
                ToolCall {
                    id: "call_a".into(),
                    name: "ask_agent".into(),
                    arguments: "{\"agentId\":1}".into()
                },
                ToolCall {
                    id: "call_b".into(),
                    name: "current_time".into(),
                    arguments: "{}".into()
                },
                ToolCall {
                    id: "call_2".into(),
                    name: "current_time".into(),
                    arguments: "{}".into()
                },
            ]
        );
        assert_eq!(calls.take().count(), 0, "taken once");
    }

    #[test]
    fn requests_carry_tools_and_tool_turns_in_openai_form() {
        let request = ChatRequest {
            model: "m".into(),
            messages: vec![
                ChatMessage::text(MessageRole::User, "what time is it?"),
                ChatMessage::calling(
                    "",
                    vec![ToolCall {
                        id: "c1".into(),
                        name: "current_time".into(),
                        arguments: "{}".into(),
                    }],
                ),
                ChatMessage::tool_result("c1", "noon"),
            ],
            sampling: Default::default(),
            tools: vec![super::super::ToolSpec {
                name: "current_time".into(),
                description: "now".into(),
                parameters: serde_json::json!({"type": "object", "properties": {}}),
            }],
        };
        let json = serde_json::to_value(build_request(&request, true)).unwrap();
        assert_eq!(json["tools"][0]["type"], "function");
        assert_eq!(json["tools"][0]["function"]["name"], "current_time");
        let messages = &json["messages"];
        assert_eq!(messages[1]["role"], "assistant");
        assert!(messages[1].get("content").is_none_or(|c| c.is_null()));
        assert_eq!(messages[1]["tool_calls"][0]["id"], "c1");
        assert_eq!(messages[1]["tool_calls"][0]["type"], "function");
        assert_eq!(messages[1]["tool_calls"][0]["function"]["arguments"], "{}");
        assert_eq!(messages[2]["role"], "tool");
        assert_eq!(messages[2]["tool_call_id"], "c1");
        assert_eq!(messages[2]["content"], "noon");
        let plain = ChatRequest {
            tools: vec![],
            ..request
        };
        let json = serde_json::to_value(build_request(&plain, true)).unwrap();
        assert!(
            json.get("tools").is_none_or(|t| t.is_null()),
            "no tools, no field"
        );
    }
}
