//! The relay of one answer: upstream deltas to chunks, the timeouts, the checkpoints, and
//! the commit of its end. The hub schedules it and keeps the registry; this knows nothing of
//! sockets, instances or other answers, so a provider, a branch or a tool call changes the
//! loop here and nothing else.
//!
//! Per delta it appends to the stream's text and publishes one pre-serialised frame, under
//! the stream's short synchronous lock (never across an `.await`). The database is touched
//! at the start, on the checkpoint timer, and at the end.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::bus::RoomBus;
use super::frames::{OutFrame, ServerFrame};
use super::stream::RunningStream;
use crate::domain::codes::ErrorCode;
use crate::domain::events::{StreamError, ToolCalled, ToolReturned};
use crate::domain::projection::record_result;
use crate::domain::types::{MessageStatus, ToolCallRecord, Usage};
use crate::llm::scheduler::CallClass;
use crate::llm::scheduler::Permit;
use crate::llm::ToolSpec;
use crate::llm::{ChatMessage, ChatRequest, ChatStream, ProviderError, StreamItem, ToolCall};
use crate::metrics::Metrics;
use crate::service::chat::{
    add_usage, Answered, ChatService, EarlyStream, NoPlace, Turn, TurnOutcome,
};
use crate::service::tools::{unique_call_id, Scope, ToolSink, Toolbox};
use crate::service::{ServiceError, ServiceResult};

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

    /// Runs the answer: one step (a model call, relayed) for a turn without tools; for an
    /// agent with tools, up to `AGENT_MAX_STEPS` of them, each step's tool calls run and
    /// their results sent back to the model in the next, the last asked without tools so
    /// that the answer ends in text. Chunk indexes run on across steps.
    /// `early`: the first step's stream, if the turn's start already asked for it.
    pub async fn drive(&self, stream: &RunningStream, early: Option<EarlyStream>) -> TurnOutcome {
        let chat = self.chat;
        let turn = &stream.turn;
        let settings = chat.agents_config();
        let sink = StreamTools {
            relay: self,
            stream,
            ids: Mutex::new(HashSet::new()),
        };
        let toolbox = Toolbox {
            chat,
            turn,
            sink: &sink,
            settings,
        };
        let scope = turn.agent.clone().map(Scope::top);
        let tools = match &scope {
            Some(scope) => toolbox.specs(scope).await,
            None => Vec::new(),
        };
        let steps = if tools.is_empty() {
            1
        } else {
            settings.max_steps
        };
        let mut early = early;
        let mut request = None;
        let mut answered = Answered::default();
        let mut usage = None;
        let mut checkpoints = Checkpoints::new(self.checkpoint_every);
        let end = |status, error: Option<StreamError>, usage, answered: &Answered| {
            let state = stream.lock();
            TurnOutcome {
                content: state.content.clone(),
                status,
                usage,
                error,
                answered: answered.clone(),
                finish: state.finish.clone(),
                first_chunk_ms: state.first_chunk_ms,
            }
        };
        for step in 1..=steps {
            let last = step == steps;
            let offered = if last { Vec::new() } else { tools.clone() };
            let opened = self
                .open(
                    stream,
                    early.take(),
                    &mut request,
                    answered.clone(),
                    offered,
                )
                .await;
            let (asked, upstream, permit, now_answered) = match opened {
                Ok(opened) => opened,
                Err(outcome) => {
                    return TurnOutcome {
                        usage: add_usage(usage, outcome.usage),
                        ..outcome
                    }
                }
            };
            answered = now_answered;
            let said_from = stream.lock().content.len();
            let calls = match self
                .relay_step(
                    stream,
                    upstream,
                    permit,
                    asked,
                    &mut usage,
                    &mut checkpoints,
                )
                .await
            {
                Err((status, error)) => {
                    let error = error.map(|e| chat.failure(turn, &answered, &e));
                    return end(status, error, usage, &answered);
                }
                // Calls asked for without tools offered (the last step) are not run.
                Ok(calls) if calls.is_empty() || last => {
                    return end(MessageStatus::Complete, None, usage, &answered)
                }
                Ok(calls) => calls,
            };
            let (Some(scope), Some(request)) = (&scope, request.as_mut()) else {
                return end(MessageStatus::Complete, None, usage, &answered);
            };
            let said = stream.lock().content[said_from..].to_string();
            request
                .messages
                .push(ChatMessage::calling(said, calls.clone()));
            let results = tokio::select! {
                biased;
                _ = stream.cancel.cancelled() => {
                    sink.close_open("the answer was cancelled").await;
                    return end(MessageStatus::Cancelled, None, usage, &answered);
                }
                _ = stream.interrupt.cancelled() => {
                    sink.close_open("the server stopped").await;
                    return end(MessageStatus::Interrupted, None, usage, &answered);
                }
                results = toolbox.run_calls(scope, step, calls) => results,
            };
            // Calls of a hand-off that timed out never returned: they end here.
            sink.close_open("the tool that made this call did not finish")
                .await;
            request.messages.extend(results);
        }
        end(MessageStatus::Complete, None, usage, &answered)
    }

    /// Relays one model call's deltas until it ends (`Ok`: the tool calls it made, if
    /// any), fails, times out or is cancelled (`Err`: how the answer ends).
    async fn relay_step(
        &self,
        stream: &RunningStream,
        mut upstream: ChatStream,
        mut permit: Option<Permit>,
        asked: Instant,
        usage: &mut Option<Usage>,
        checkpoints: &mut Checkpoints,
    ) -> Result<Vec<ToolCall>, (MessageStatus, Option<ProviderError>)> {
        let limits = self.chat.upstream().clone();
        let mut deadline = Instant::now() + limits.first_token_timeout;
        let mut calls = Vec::new();
        let mut take_usage = |permit: &mut Option<Permit>, u: Usage| {
            *usage = add_usage(*usage, Some(u));
            settle(permit, u);
        };
        loop {
            tokio::select! {
                biased;
                _ = stream.cancel.cancelled() => return Err((MessageStatus::Cancelled, None)),
                _ = stream.interrupt.cancelled() => return Err((MessageStatus::Interrupted, None)),
                _ = tokio::time::sleep_until(deadline) => {
                    return Err((MessageStatus::Failed, Some(ProviderError::Timeout)));
                }
                _ = checkpoints.tick() => checkpoints.save(self.chat, stream),
                item = upstream.next() => match item {
                    None => return Ok(calls),
                    Some(Err(err)) => return Err((MessageStatus::Failed, Some(err))),
                    Some(Ok(StreamItem::Usage(u))) => take_usage(&mut permit, u),
                    Some(Ok(StreamItem::ToolCall(call))) => calls.push(call),
                    Some(Ok(StreamItem::Finish(finish))) => stream.lock().finish = finish,
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
                                Some(Some(Ok(StreamItem::Usage(u)))) => take_usage(&mut permit, u),
                                Some(Some(Ok(StreamItem::ToolCall(call)))) => calls.push(call),
                                Some(Some(Ok(StreamItem::Finish(finish)))) => {
                                    stream.lock().finish = finish
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
                            Some(None) => return Ok(calls),
                            Some(Some(err)) => return Err((MessageStatus::Failed, Some(err))),
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
    /// `request`: the step's request, built here from the history on the first step;
    /// `answered`: the model the answer has gone to so far; `tools`: those offered.
    async fn open(
        &self,
        stream: &RunningStream,
        early: Option<EarlyStream>,
        request: &mut Option<ChatRequest>,
        mut answered: Answered,
        tools: Vec<ToolSpec>,
    ) -> Result<(Instant, ChatStream, Option<Permit>, Answered), TurnOutcome> {
        let chat = self.chat;
        let turn = &stream.turn;
        let limits = chat.upstream();
        let ended = |status, error: Option<StreamError>, answered: &Answered| {
            let state = stream.lock();
            TurnOutcome {
                content: state.content.clone(),
                status,
                usage: None,
                error,
                answered: answered.clone(),
                finish: state.finish.clone(),
                first_chunk_ms: state.first_chunk_ms,
            }
        };
        let mut early = early;
        loop {
            let (asked, opening, permit) = match early.take() {
                Some(mut early) => {
                    let permit = early.take_permit();
                    chat.count_admitted(CallClass::Interactive, Duration::ZERO);
                    (early.asked, early.opened().boxed(), permit)
                }
                None => {
                    let context = match request {
                        Some(context) => &*context,
                        None => match chat.context_for(turn).await {
                            Ok(context) => &*request.insert(context),
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
                        tools: tools.clone(),
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
            let first = stream.started.elapsed();
            state.first_chunk_ms = Some(first.as_millis() as i64);
            metrics.time_to_first_token.observe(first.as_secs_f64());
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

/// The answer's text saved on a timer while it streams. The relay never waits for the
/// database mid-stream: the write runs on its own, and a tick while the last one is still
/// running is skipped. A checkpoint that lands after the end changes nothing (it only
/// touches a message still `streaming`).
struct Checkpoints {
    timer: Interval,
    saved_len: usize,
    saving: Option<tokio::task::JoinHandle<Option<usize>>>,
}

impl Checkpoints {
    fn new(every: Duration) -> Self {
        let mut timer = tokio::time::interval_at(Instant::now() + every, every);
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            timer,
            saved_len: 0,
            saving: None,
        }
    }

    async fn tick(&mut self) {
        self.timer.tick().await;
    }

    fn save(&mut self, chat: &ChatService, stream: &RunningStream) {
        if self.saving.as_ref().is_some_and(|s| !s.is_finished()) {
            return;
        }
        if let Some(Ok(Some(len))) = self.saving.take().and_then(FutureExt::now_or_never) {
            self.saved_len = len;
        }
        let pending = {
            let state = stream.lock();
            (state.content.len() != self.saved_len).then(|| state.content.clone())
        };
        if let Some(content) = pending {
            let store = chat.store().clone();
            let message_id = stream.turn.assistant_message_id;
            self.saving = Some(tokio::spawn(async move {
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
}

/// A running answer's tool calls: each recorded as an event, then kept in the stream's
/// state (for snapshots) and published to its room, under the stream's lock so frames and
/// snapshots stay in order.
struct StreamTools<'a> {
    relay: &'a Relay<'a>,
    stream: &'a RunningStream,
    /// Every call id taken in this answer (a model may repeat one across steps or agents).
    ids: Mutex<HashSet<String>>,
}

impl StreamTools<'_> {
    /// Gives every call still without a result an error result saying why.
    async fn close_open(&self, why: &str) {
        let open: Vec<(String, String)> = self
            .stream
            .lock()
            .tool_calls
            .iter()
            .filter(|c| c.ok.is_none())
            .map(|c| (c.call_id.clone(), c.name.clone()))
            .collect();
        for (call_id, name) in open {
            let returned = ToolReturned {
                message_id: self.stream.turn.assistant_message_id,
                call_id,
                ok: false,
                content: why.to_string(),
                agent_id: None,
                agent_version: None,
                citations: Vec::new(),
            };
            if let Err(err) = self.returned(returned, &name).await {
                tracing::warn!(error = %err, "closing an open tool call failed");
            }
        }
    }

    fn publish(&self, frame: &ServerFrame) {
        let conversation_id = self.stream.turn.conversation_id;
        self.relay
            .bus
            .publish(conversation_id, Arc::new(OutFrame::new(frame)));
    }
}

impl ToolSink for StreamTools<'_> {
    fn called(&self, mut called: ToolCalled) -> BoxFuture<'_, ServiceResult<String>> {
        async move {
            called.call_id = unique_call_id(&self.ids, &called.call_id);
            let turn = &self.stream.turn;
            let seq = self
                .relay
                .chat
                .record_tool_call(turn, called.clone())
                .await?;
            let mut state = self.stream.lock();
            state.tool_seq = state.tool_seq.max(seq);
            state.tool_calls.push(ToolCallRecord::from(&called));
            self.publish(&ServerFrame::ToolCall {
                conversation_id: turn.conversation_id,
                message_id: turn.assistant_message_id,
                call_id: called.call_id.clone(),
                name: called.name,
                arguments: called.arguments,
                seq,
                agent_id: called.agent_id,
                parent_call_id: called.parent_call_id,
            });
            Ok(called.call_id)
        }
        .boxed()
    }

    fn returned<'a>(
        &'a self,
        returned: ToolReturned,
        name: &'a str,
    ) -> BoxFuture<'a, ServiceResult<()>> {
        async move {
            let turn = &self.stream.turn;
            let seq = self
                .relay
                .chat
                .record_tool_result(turn, returned.clone())
                .await?;
            let mut state = self.stream.lock();
            state.tool_seq = state.tool_seq.max(seq);
            let state = &mut *state;
            record_result(&mut state.tool_calls, &mut state.citations, &returned);
            let max = self.stream.tool_result_max_chars;
            self.publish(&ServerFrame::ToolResult {
                conversation_id: turn.conversation_id,
                message_id: turn.assistant_message_id,
                call_id: returned.call_id,
                name: name.to_string(),
                ok: returned.ok,
                content: super::stream::cut_chars(&returned.content, max),
                seq,
            });
            Ok(())
        }
        .boxed()
    }
}

/// Corrects the answer's share of its provider's tokens per minute by the usage reported.
fn settle(permit: &mut Option<Permit>, usage: Usage) {
    if let Some(permit) = permit {
        permit.settle((usage.prompt_tokens + usage.completion_tokens).max(0) as u64);
    }
}
