//! The demo provider: no network, no key. It streams a fixed reply word by word with a
//! short delay, so a newcomer sees streaming work the moment the server runs.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use super::{ChatProvider, ChatRequest, ChatStream, Completion, Finish, ProviderError, StreamItem};
use crate::domain::types::{MessageRole, Usage};

pub const DEMO_MODEL: &str = "demo";

pub struct DemoProvider {
    delay: Duration,
}

impl DemoProvider {
    pub fn new(delay: Duration) -> Self {
        Self { delay }
    }

    /// The reply: fixed, but echoing the question so a conversation visibly answers.
    pub fn reply_to(request: &ChatRequest) -> String {
        let question = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == MessageRole::User)
            .map(|m| m.content.chars().take(80).collect::<String>())
            .unwrap_or_default();
        format!(
            "This is the demo provider: no OPENAI_API_KEY is set, so this fixed reply streams \
             word by word instead of a model's answer. You asked: \"{question}\". Set \
             OPENAI_API_KEY (and OPENAI_BASE_URL for any OpenAI-compatible server) to talk to a \
             real model."
        )
    }

    fn usage(request: &ChatRequest, reply: &str) -> Usage {
        let words = |s: &str| s.split_whitespace().count() as i64;
        Usage {
            prompt_tokens: request.messages.iter().map(|m| words(&m.content)).sum(),
            completion_tokens: words(reply),
        }
    }
}

/// Splits text into word-sized deltas that concatenate back to exactly the text.
pub fn word_deltas(text: &str) -> Vec<String> {
    let mut deltas = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        if ch == ' ' && !current.trim().is_empty() {
            deltas.push(std::mem::take(&mut current));
        }
        current.push(ch);
    }
    if !current.is_empty() {
        deltas.push(current);
    }
    deltas
}

/// The demo reply always ends whole.
fn stopped() -> Finish {
    Finish {
        reason: Some("stop".into()),
        refusal: None,
    }
}

impl ChatProvider for DemoProvider {
    fn name(&self) -> &'static str {
        "demo"
    }

    fn complete(&self, request: ChatRequest) -> BoxFuture<'_, Result<Completion, ProviderError>> {
        async move {
            let content = Self::reply_to(&request);
            let usage = Some(Self::usage(&request, &content));
            Ok(Completion {
                content,
                usage,
                tool_calls: Vec::new(),
                finish: stopped(),
            })
        }
        .boxed()
    }

    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatStream, ProviderError>> {
        let delay = self.delay;
        async move {
            let reply = Self::reply_to(&request);
            let usage = Self::usage(&request, &reply);
            let deltas = word_deltas(&reply).into_iter().map(StreamItem::Delta);
            let items = deltas.chain([StreamItem::Finish(stopped()), StreamItem::Usage(usage)]);
            let stream = futures::stream::iter(items).then(move |item| async move {
                if matches!(item, StreamItem::Delta(_)) {
                    tokio::time::sleep(delay).await;
                }
                Ok(item)
            });
            Ok(stream.boxed())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ChatMessage;

    #[test]
    fn deltas_concatenate_to_the_text() {
        for text in ["", "one", "one two  three ", " lead", "a  b"] {
            assert_eq!(word_deltas(text).concat(), text);
        }
        assert_eq!(word_deltas("one two three"), vec!["one", " two", " three"]);
    }

    #[tokio::test]
    async fn streams_the_same_reply_it_completes() {
        let provider = DemoProvider::new(Duration::ZERO);
        let request = ChatRequest {
            sampling: Default::default(),
            tools: Vec::new(),
            model: DEMO_MODEL.into(),
            messages: vec![ChatMessage::text(MessageRole::User, "hello there")],
        };
        let whole = provider.complete(request.clone()).await.unwrap();
        let items: Vec<_> = provider.stream(request).await.unwrap().collect().await;
        let mut text = String::new();
        let mut usage = None;
        for item in items {
            match item.unwrap() {
                StreamItem::Delta(d) => text.push_str(&d),
                StreamItem::Usage(u) => usage = Some(u),
                StreamItem::Finish(finish) => assert_eq!(finish, whole.finish),
                StreamItem::ToolCall(call) => panic!("the demo calls no tools: {call:?}"),
            }
        }
        assert_eq!(text, whole.content);
        assert!(text.contains("hello there"));
        assert_eq!(usage, whole.usage);
    }
}
