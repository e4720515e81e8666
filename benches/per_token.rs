//! The per-token path, piece by piece: what one upstream delta costs before it is a frame on
//! a socket. `cargo bench --bench per_token`; figures in BENCHMARKS.md.

use std::hint::black_box;

use async_openai::types::chat::CreateChatCompletionStreamResponse;
use chat_server::realtime::frames::{OutFrame, ServerFrame};
use criterion::{criterion_group, criterion_main, Criterion};
use uuid::Uuid;

/// One SSE `data:` payload as an OpenAI-compatible server sends it, one short token.
const CHUNK: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"mock-model","system_fingerprint":null,"choices":[{"index":0,"delta":{"role":"assistant","content":" token"},"logprobs":null,"finish_reason":null}]}"#;

fn per_token(c: &mut Criterion) {
    c.bench_function("parse an upstream chunk", |b| {
        b.iter(|| {
            let chunk: CreateChatCompletionStreamResponse =
                serde_json::from_str(black_box(CHUNK)).unwrap();
            black_box(chunk)
        })
    });

    let (conversation_id, message_id) = (Uuid::now_v7(), Uuid::now_v7());
    c.bench_function("build and encode a stream_chunk frame", |b| {
        let mut index = 0;
        b.iter(|| {
            index += 1;
            black_box(OutFrame::new(&ServerFrame::StreamChunk {
                conversation_id,
                message_id,
                index,
                delta: black_box(" token").to_string(),
            }))
        })
    });

    // The whole of what the relay does per delta before the socket: the parsed delta
    // appended to the answer so far and published as one encoded frame.
    c.bench_function("parse, append and encode one delta", |b| {
        let mut content = String::new();
        let mut index = 0;
        b.iter(|| {
            let chunk: CreateChatCompletionStreamResponse =
                serde_json::from_str(black_box(CHUNK)).unwrap();
            for choice in chunk.choices {
                if let Some(text) = choice.delta.content {
                    content.push_str(&text);
                    index += 1;
                    black_box(OutFrame::new(&ServerFrame::StreamChunk {
                        conversation_id,
                        message_id,
                        index,
                        delta: text,
                    }));
                }
            }
            if content.len() > 1 << 20 {
                content.clear();
            }
        })
    });
}

criterion_group!(benches, per_token);
criterion_main!(benches);
