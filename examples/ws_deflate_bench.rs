//! Measures what WebSocket `permessage-deflate` would cost and save per `stream_chunk` frame,
//! to decide whether to offer it. Run: `cargo run --release --example ws_deflate_bench`.
//!
//! Two modes, as RFC 7692 defines them: a fresh compressor per message
//! (`no_context_takeover`) and one compressor kept for the connection (context takeover).
//! Frames are real `stream_chunk` frames for a few hundred word-sized deltas.

use std::time::Instant;

use chat_server::realtime::frames::ServerFrame;
use flate2::{Compress, Compression, FlushCompress};
use uuid::Uuid;

fn frames() -> Vec<String> {
    let text = "The quick brown fox jumps over the lazy dog while the model explains, at some \
                length and with examples, how streaming answers reach every open socket. ";
    let (conversation_id, message_id) = (Uuid::now_v7(), Uuid::now_v7());
    text.repeat(20)
        .split_inclusive(' ')
        .enumerate()
        .map(|(index, delta)| {
            ServerFrame::StreamChunk {
                conversation_id,
                message_id,
                index: index as u64,
                delta: delta.to_string(),
            }
            .to_json()
        })
        .collect()
}

/// Compresses one message the way permessage-deflate does (raw deflate, sync flush).
fn deflate(compressor: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> usize {
    out.clear();
    out.reserve(input.len() + 64);
    let before = compressor.total_out();
    compressor
        .compress_vec(input, out, FlushCompress::Sync)
        .expect("deflate");
    (compressor.total_out() - before) as usize
}

fn main() {
    let frames = frames();
    let raw: usize = frames.iter().map(String::len).sum();
    let rounds = 200;
    println!(
        "{} stream_chunk frames, {:.0} bytes each on average",
        frames.len(),
        raw as f64 / frames.len() as f64
    );

    for (name, takeover) in [("no_context_takeover", false), ("context takeover", true)] {
        let mut out = Vec::new();
        let mut compressed = 0;
        let started = Instant::now();
        for _ in 0..rounds {
            compressed = 0;
            let mut shared = Compress::new(Compression::default(), false);
            for frame in &frames {
                if takeover {
                    compressed += deflate(&mut shared, frame.as_bytes(), &mut out);
                } else {
                    let mut fresh = Compress::new(Compression::default(), false);
                    compressed += deflate(&mut fresh, frame.as_bytes(), &mut out);
                }
            }
        }
        let per_frame = started.elapsed() / (rounds * frames.len()) as u32;
        println!(
            "{name:>20}: {:.2} µs per frame, {:.0}% of the bytes ({} → {} per answer)",
            per_frame.as_secs_f64() * 1e6,
            100.0 * compressed as f64 / raw as f64,
            raw,
            compressed
        );
    }
}
