//! One running answer as this instance holds it: its text so far under a short lock, its
//! cancel and interrupt signals, and the owner's place among their concurrent answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::frames::{OutFrame, ServerFrame};
use crate::domain::types::ToolCallRecord;
use crate::service::chat::Turn;

pub(super) struct StreamState {
    pub content: String,
    pub next_index: u64,
    /// Its tool calls so far, results whole, and the `seq` of the last tool event.
    pub tool_calls: Vec<ToolCallRecord>,
    pub tool_seq: i64,
    /// The passages its knowledge searches gave the model, each once.
    pub citations: Vec<crate::domain::knowledge::Passage>,
    /// Milliseconds from the start to the first delta, once one came.
    pub first_chunk_ms: Option<i64>,
    /// How its last model call ended, as the provider said.
    pub finish: crate::llm::Finish,
    /// Set, under the lock, just before `stream_complete` is published: snapshots taken
    /// afterwards skip the stream, so no socket sees a snapshot without its completion.
    pub finished: bool,
}

pub(super) struct RunningStream {
    pub turn: Turn,
    pub state: Mutex<StreamState>,
    pub cancel: CancellationToken,
    /// Shutdown past its grace period: end now, as `interrupted`.
    pub interrupt: CancellationToken,
    /// When the request to start it came in: the server's share of the time to first token
    /// runs from here to the upstream request.
    pub requested: Instant,
    pub started: Instant,
    /// The owner's place among their concurrent streams, given back when the stream ends.
    pub _slot: StreamSlot,
    /// How much of a tool result frames carry.
    pub tool_result_max_chars: usize,
}

/// Counts each user's running streams; a slot is held from before the turn is stored until
/// the stream's last reference goes, so concurrent starts cannot overshoot the limit.
#[derive(Clone, Default)]
pub(super) struct SlotCounts(Arc<Mutex<HashMap<Uuid, usize>>>);

pub(super) struct StreamSlot {
    counts: SlotCounts,
    user: Uuid,
}

impl SlotCounts {
    pub fn acquire(&self, user: Uuid, max: usize) -> Option<StreamSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(user).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(StreamSlot {
            counts: self.clone(),
            user,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

/// A place among a user's concurrent answers (`MAX_CONCURRENT_STREAMS_PER_USER`), for an
/// answer that does not stream: `POST /api/chat` holds one for its whole request, so
/// answers over REST and over the WebSocket share one limit. Given back on drop.
pub struct AnswerSlot(#[allow(dead_code)] pub(super) StreamSlot);

impl RunningStream {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Its `stream_snapshot`, unless it has finished.
    pub fn snapshot(&self) -> Option<OutFrame> {
        let state = self.lock();
        (!state.finished).then(|| self.snapshot_of(&state))
    }

    /// The `stream_snapshot` of `state` (taken under the stream's lock, so it goes out in
    /// order with the chunks and tool frames that follow it).
    pub fn snapshot_of(&self, state: &StreamState) -> OutFrame {
        OutFrame::new(&ServerFrame::StreamSnapshot {
            conversation_id: self.turn.conversation_id,
            message_id: self.turn.assistant_message_id,
            content: state.content.clone(),
            next_index: state.next_index,
            tool_calls: self.cut(&state.tool_calls),
            tool_seq: state.tool_seq,
        })
    }

    /// Tool calls as frames carry them: results cut to `TOOL_RESULT_MAX_CHARS`.
    pub fn cut(&self, calls: &[ToolCallRecord]) -> Vec<ToolCallRecord> {
        calls
            .iter()
            .map(|call| ToolCallRecord {
                content: call
                    .content
                    .as_deref()
                    .map(|c| cut_chars(c, self.tool_result_max_chars)),
                ..call.clone()
            })
            .collect()
    }
}

/// `text`, at most `max` characters of it.
pub(super) fn cut_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_string(),
        None => text.to_string(),
    }
}
