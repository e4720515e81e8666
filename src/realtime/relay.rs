//! The relay of one answer: upstream deltas to chunks, the timeouts, the checkpoints, and
//! the commit of its end. The hub schedules it and keeps the registry; this knows nothing of
//! sockets, instances or other answers, so a provider, a branch or a tool call changes the
//! loop here and nothing else.
//!
//! Per delta it appends to the stream's text and publishes one pre-serialised frame, under
//! the stream's short synchronous lock (never across an `.await`). The database is touched
//! at the start, on the checkpoint timer, and at the end.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::time::{Instant, MissedTickBehavior};

use super::bus::RoomBus;
use super::frames::{OutFrame, ServerFrame};
use super::stream::RunningStream;
use crate::domain::codes::ErrorCode;
use crate::domain::events::StreamError;
use crate::domain::types::{MessageStatus, Usage};
use crate::llm::scheduler::CallClass;
use crate::llm::scheduler::Permit;
use crate::llm::{ChatRequest, ChatStream, ProviderError, StreamItem};
use crate::metrics::Metrics;
use crate::service::chat::{Answered, ChatService, EarlyStream, NoPlace, Turn, TurnOutcome};
use crate::service::ServiceError;

/// The most text one chunk carries when deltas are joined.
const MAX_CHUNK_BYTES: usize = 16 * 1024;

/// What a relay needs: the chat service (provider, store, limits of the upstream), where its
/// frames go, the metrics, and how often to checkpoint.
pub(super) struct Relay<'a> {
    pub chat: &'a ChatService,
    pub bus: &'a Arc<dyn RoomBus>,
    pub metrics: &'a Metrics,
    pub checkpoint_every: Duration,
}

impl Relay<'_> {
    /// Commits the end of a stream, retrying a few times: the answer is the user's, and a
    /// passing database hiccup should not lose it. If it still fails, the message stays
    /// `streaming` with its last checkpoint and becomes `interrupted` at the next start.
    pub async fn commit(&self, turn: &Turn, outcome: &TurnOutcome) -> Result<i64, ServiceError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .chat
                .finish_turn(turn, Some(turn.owner_id), outcome.clone())
                .await
            {
                Ok(seq) => return Ok(seq),
                // Ended elsewhere (a survivor took this instance for dead): nothing to retry.
                Err(ServiceError::AlreadyFinished) => return Err(ServiceError::AlreadyFinished),
                Err(err) if attempt < 3 => {
                    tracing::warn!(error = %err, attempt, "committing a finished stream failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(err) => {
                    tracing::error!(error = %err, "committing a finished stream failed");
                    return Err(err);
                }
            }
        }
    }

    /// Relays the upstream's deltas until it ends, fails, times out or is cancelled.
    /// `early`: the stream, if the turn's start already asked for it.
    pub async fn drive(&self, stream: &RunningStream, early: Option<EarlyStream>) -> TurnOutcome {
        let chat = self.chat;
        let limits = chat.upstream().clone();
        let (asked, mut upstream, mut permit, answered) = match self.open(stream, early).await {
            Ok(opened) => opened,
            Err(outcome) => return outcome,
        };
        let mut usage = None;
        let end = |status, error: Option<&ProviderError>, usage| TurnOutcome {
            content: stream.lock().content.clone(),
            status,
            usage,
            error: error.map(|e| chat.failure(&stream.turn, &answered, e)),
            answered: answered.clone(),
        };
        let turn = &stream.turn;
        let mut deadline = Instant::now() + limits.first_token_timeout;

        let mut checkpoint = tokio::time::interval_at(
            Instant::now() + self.checkpoint_every,
            self.checkpoint_every,
        );
        checkpoint.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut saved_len = 0;
        let mut saving: Option<tokio::task::JoinHandle<Option<usize>>> = None;
        loop {
            tokio::select! {
                biased;
                _ = stream.cancel.cancelled() => return end(MessageStatus::Cancelled, None, usage),
                _ = stream.interrupt.cancelled() => return end(MessageStatus::Interrupted, None, usage),
                _ = tokio::time::sleep_until(deadline) => {
                    return end(MessageStatus::Failed, Some(&ProviderError::Timeout), usage);
                }
                _ = checkpoint.tick() => {
                    // The relay never waits for the database mid-stream: the write runs on
                    // its own, and a tick while the last one is still running is skipped.
                    // A checkpoint that lands after the end changes nothing (it only
                    // touches a message still `streaming`).
                    if saving.as_ref().is_some_and(|s| !s.is_finished()) {
                        continue;
                    }
                    if let Some(Ok(Some(len))) = saving.take().and_then(FutureExt::now_or_never) {
                        saved_len = len;
                    }
                    let pending = {
                        let state = stream.lock();
                        (state.content.len() != saved_len).then(|| state.content.clone())
                    };
                    if let Some(content) = pending {
                        let store = chat.store().clone();
                        let message_id = turn.assistant_message_id;
                        saving = Some(tokio::spawn(async move {
                            match store.checkpoint_message(message_id, &content).await {
                                Ok(()) => Some(content.len()),
                                Err(err) => {
                                    tracing::warn!(error = %err, "checkpoint failed");
                                    None
                                }
                            }
                        }));
                    }
                }
                item = upstream.next() => match item {
                    None => return end(MessageStatus::Complete, None, usage),
                    Some(Err(err)) => return end(MessageStatus::Failed, Some(&err), usage),
                    Some(Ok(StreamItem::Usage(u))) => {
                        usage = Some(u);
                        settle(&mut permit, u);
                    }
                    Some(Ok(StreamItem::Delta(delta))) => {
                        let arrived = std::time::Instant::now();
                        deadline = Instant::now() + limits.idle_timeout;
                        // Deltas that are already waiting join this one: what arrived
                        // together leaves in one frame, and nothing waits for more.
                        let mut text = delta;
                        let mut deltas = 1;
                        let mut ended = None;
                        while text.len() < MAX_CHUNK_BYTES {
                            match upstream.next().now_or_never() {
                                Some(Some(Ok(StreamItem::Delta(more)))) => {
                                    text.push_str(&more);
                                    deltas += 1;
                                }
                                Some(Some(Ok(StreamItem::Usage(u)))) => {
                                    usage = Some(u);
                                    settle(&mut permit, u);
                                }
                                Some(None) => {
                                    ended = Some(None);
                                    break;
                                }
                                Some(Some(Err(err))) => {
                                    ended = Some(Some(err));
                                    break;
                                }
                                None => break,
                            }
                        }
                        self.relay(stream, text, deltas, asked, arrived);
                        match ended {
                            Some(None) => return end(MessageStatus::Complete, None, usage),
                            Some(Some(err)) => return end(MessageStatus::Failed, Some(&err), usage),
                            None => {}
                        }
                    }
                },
            }
        }
    }

    /// Opens the answer's upstream stream: the one asked for early, or one asked for now
    /// after waiting for a place among its provider's calls. The turn's fallback answers
    /// instead when its model's breaker is open (before asking, or when asking fails fast),
    /// its queue is full, or its wait would pass the limit. `Err`: how the answer ended
    /// before any text (cancelled while it waited, no place, the upstream refused).
    async fn open(
        &self,
        stream: &RunningStream,
        early: Option<EarlyStream>,
    ) -> Result<(Instant, ChatStream, Option<Permit>, Answered), TurnOutcome> {
        let chat = self.chat;
        let turn = &stream.turn;
        let limits = chat.upstream();
        let ended = |status, error: Option<StreamError>, answered: &Answered| TurnOutcome {
            content: stream.lock().content.clone(),
            status,
            usage: None,
            error,
            answered: answered.clone(),
        };
        let mut answered = Answered::default();
        let mut early = early;
        let mut request = None;
        loop {
            let (asked, opening, permit) = match early.take() {
                Some(mut early) => {
                    let permit = early.take_permit();
                    chat.count_admitted(CallClass::Interactive, Duration::ZERO);
                    (early.asked, early.opened().boxed(), permit)
                }
                None => {
                    let context = match &request {
                        Some(context) => context,
                        None => match chat.context_for(turn).await {
                            Ok(context) => request.insert(context),
                            Err(err) => {
                                tracing::error!(error = %err, "building the context failed");
                                let error = StreamError {
                                    code: ErrorCode::InternalError,
                                    message: "the request could not be prepared".into(),
                                };
                                return Err(ended(MessageStatus::Failed, Some(error), &answered));
                            }
                        },
                    };
                    let stop = async {
                        tokio::select! {
                            _ = stream.cancel.cancelled() => MessageStatus::Cancelled,
                            _ = stream.interrupt.cancelled() => MessageStatus::Interrupted,
                        }
                    };
                    let placed = match chat
                        .place_answer(
                            turn,
                            context.estimated_tokens(),
                            answered,
                            |at| self.queued(stream, at),
                            stop,
                        )
                        .await
                    {
                        Ok(placed) => placed,
                        Err((NoPlace::Stopped(status), answered)) => {
                            return Err(ended(status, None, &answered))
                        }
                        Err((_, answered)) => {
                            let error = chat.failure(turn, &answered, &ProviderError::Busy);
                            return Err(ended(MessageStatus::Failed, Some(error), &answered));
                        }
                    };
                    answered = placed.answered;
                    let request = ChatRequest {
                        sampling: context.sampling,
                        model: placed.model,
                        messages: context.messages.clone(),
                    };
                    (
                        Instant::now(),
                        chat.provider().stream(request),
                        placed.permit,
                    )
                }
            };
            // Each attempt has the first-token limit (the resilient provider enforces it, so
            // a timeout counts toward the breaker and may be retried); this outer bound also
            // covers providers without one.
            let opening_by = asked + limits.with_retries(limits.first_token_timeout);
            let opened = tokio::select! {
                _ = stream.cancel.cancelled() => return Err(ended(MessageStatus::Cancelled, None, &answered)),
                _ = stream.interrupt.cancelled() => return Err(ended(MessageStatus::Interrupted, None, &answered)),
                opened = tokio::time::timeout_at(opening_by, opening) => opened,
            };
            let failed = |err: &ProviderError, answered: &Answered| {
                let error = chat.failure(turn, answered, err);
                ended(MessageStatus::Failed, Some(error), answered)
            };
            match opened {
                Err(_) => return Err(failed(&ProviderError::Timeout, &answered)),
                Ok(Err(ProviderError::CircuitOpen)) => match chat.fall_back(turn, &answered) {
                    Some(fallback) => answered = fallback,
                    None => return Err(failed(&ProviderError::CircuitOpen, &answered)),
                },
                Ok(Err(err)) => return Err(failed(&err, &answered)),
                Ok(Ok(upstream)) => return Ok((asked, upstream, permit, answered)),
            }
        }
    }

    /// Tells the conversation's room where the answer waits.
    fn queued(&self, stream: &RunningStream, position: usize) {
        let turn = &stream.turn;
        let frame = OutFrame::new(&ServerFrame::StreamQueued {
            conversation_id: turn.conversation_id,
            message_id: turn.assistant_message_id,
            position: position as u64,
        });
        self.bus.publish(turn.conversation_id, Arc::new(frame));
    }

    /// Appends `text` (`deltas` upstream deltas) to the stream and publishes it as the next
    /// chunk.
    fn relay(
        &self,
        stream: &RunningStream,
        text: String,
        deltas: u64,
        asked: Instant,
        arrived: std::time::Instant,
    ) {
        let metrics = self.metrics;
        metrics.tokens_relayed.inc_by(deltas);
        let turn = &stream.turn;
        let mut state = stream.lock();
        let index = state.next_index;
        if index == 0 {
            metrics
                .time_to_first_token
                .observe(stream.started.elapsed().as_secs_f64());
            metrics
                .first_token_server
                .observe(asked.duration_since(stream.requested).as_secs_f64());
            metrics
                .first_token_upstream
                .observe(asked.elapsed().as_secs_f64());
        }
        state.next_index += 1;
        state.content.push_str(&text);
        let frame = OutFrame::new(&ServerFrame::StreamChunk {
            conversation_id: turn.conversation_id,
            message_id: turn.assistant_message_id,
            index,
            delta: text,
        })
        .arrived_at(arrived);
        self.bus.publish(turn.conversation_id, Arc::new(frame));
    }
}

/// Corrects the answer's share of its provider's tokens per minute by the usage reported.
fn settle(permit: &mut Option<Permit>, usage: Usage) {
    if let Some(permit) = permit {
        permit.settle((usage.prompt_tokens + usage.completion_tokens).max(0) as u64);
    }
}
