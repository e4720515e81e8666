//! The stream hub: runs every streamed answer as a task of its own, owned by the
//! conversation rather than by the socket that asked for it. A sender that disconnects does
//! not stop the answer; every socket in the room keeps receiving it; the final text is
//! committed with one `stream_completed` event.
//!
//! Per token the hub appends to a buffer and publishes one pre-serialised frame, under a
//! short synchronous lock (never across an `.await`). The database is touched at the start,
//! on the checkpoint timer, and at the end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use super::bus::{ClusterCommand, RoomBus, RoomReceiver};
use super::frames::{OutFrame, ServerFrame};
use crate::domain::events::StreamError;
use crate::domain::projection::MessageRecord;
use crate::domain::types::MessageStatus;
use crate::llm::{ProviderError, StreamItem};
use crate::metrics::Metrics;
use crate::service::auth::CurrentUser;
use crate::service::chat::{stream_error, ChatService, Turn, TurnOutcome, TurnRequest, TurnStart};
use crate::service::{ServiceError, ServiceResult};

/// The most text one chunk carries when deltas are joined.
const MAX_CHUNK_BYTES: usize = 16 * 1024;

struct StreamState {
    content: String,
    next_index: u64,
    /// Set, under the lock, just before `stream_complete` is published: snapshots taken
    /// afterwards skip the stream, so no socket sees a snapshot without its completion.
    finished: bool,
}

struct RunningStream {
    turn: Turn,
    state: Mutex<StreamState>,
    cancel: CancellationToken,
    /// Shutdown past its grace period: end now, as `interrupted`.
    interrupt: CancellationToken,
    /// When the request to start it came in: the server's share of the time to first token
    /// runs from here to the upstream request.
    requested: Instant,
    started: Instant,
    /// The owner's place among their concurrent streams, given back when the stream ends.
    _slot: StreamSlot,
}

/// Counts each user's running streams; a slot is held from before the turn is stored until
/// the stream's last reference goes, so concurrent starts cannot overshoot the limit.
#[derive(Clone, Default)]
struct SlotCounts(Arc<Mutex<HashMap<Uuid, usize>>>);

struct StreamSlot {
    counts: SlotCounts,
    user: Uuid,
}

impl SlotCounts {
    fn acquire(&self, user: Uuid, max: usize) -> Option<StreamSlot> {
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
pub struct AnswerSlot(#[allow(dead_code)] StreamSlot);

impl RunningStream {
    fn lock(&self) -> std::sync::MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Inner {
    chat: ChatService,
    bus: Arc<dyn RoomBus>,
    streams: Mutex<HashMap<Uuid, Arc<RunningStream>>>,
    checkpoint_every: Duration,
    max_streams_per_user: usize,
    slots: SlotCounts,
    metrics: Arc<Metrics>,
    /// Cleared at shutdown: no new streams start.
    accepting: AtomicBool,
    /// Woken whenever a stream ends, for shutdown to wait on.
    ended: Notify,
}

/// Cheap to clone; all clones share the running streams.
#[derive(Clone)]
pub struct StreamHub {
    inner: Arc<Inner>,
}

/// What `start` did.
pub struct Started {
    /// The room subscription made for the caller before anything was published.
    pub receiver: Option<RoomReceiver>,
    pub conversation_id: Uuid,
    /// Frames for the caller alone (a repeated send gets what the first one started).
    pub direct: Vec<OutFrame>,
}

impl StreamHub {
    pub fn new(
        chat: ChatService,
        bus: Arc<dyn RoomBus>,
        checkpoint_every: Duration,
        max_streams_per_user: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                chat,
                bus,
                streams: Mutex::new(HashMap::new()),
                checkpoint_every,
                max_streams_per_user,
                slots: SlotCounts::default(),
                metrics,
                accepting: AtomicBool::new(true),
                ended: Notify::new(),
            }),
        }
    }

    /// Graceful shutdown: start no new streams, give running ones `grace` to finish, then
    /// end the rest as `interrupted` with their text so far (committed like any other end).
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.accepting.store(false, Ordering::SeqCst);
        let running = self.running();
        if running == 0 {
            return;
        }
        tracing::info!(
            running,
            grace_ms = grace.as_millis() as u64,
            "waiting for running streams to finish"
        );
        let deadline = Instant::now() + grace;
        self.wait_until_idle(deadline).await;
        let stragglers: Vec<_> = self.streams().values().cloned().collect();
        if !stragglers.is_empty() {
            tracing::warn!(
                count = stragglers.len(),
                "grace period over; interrupting the remaining streams"
            );
            for stream in &stragglers {
                stream.interrupt.cancel();
            }
            // Their commits are quick; bounded all the same.
            self.wait_until_idle(Instant::now() + Duration::from_secs(10))
                .await;
        }
    }

    async fn wait_until_idle(&self, deadline: Instant) {
        loop {
            let ended = self.inner.ended.notified();
            if self.running() == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return;
            }
        }
    }

    /// Reserves a place for an answer that does not stream (see [`AnswerSlot`]).
    pub async fn reserve_answer(&self, user: Uuid) -> ServiceResult<AnswerSlot> {
        self.slot(user).await.map(AnswerSlot)
    }

    /// A place among the user's concurrent answers: those running here, and (with several
    /// instances) those the other instances run, counted from the database. Two instances
    /// starting at the same moment can each take the last place: the limit holds to within
    /// one answer per instance.
    async fn slot(&self, user: Uuid) -> ServiceResult<StreamSlot> {
        let elsewhere = self.inner.chat.answers_elsewhere(user).await?;
        self.inner
            .slots
            .acquire(
                user,
                self.inner.max_streams_per_user.saturating_sub(elsewhere),
            )
            .ok_or_else(|| {
                self.inner
                    .metrics
                    .rate_limited
                    .with_label_values(&["concurrent_streams"])
                    .inc();
                ServiceError::RateLimited {
                    message: "too many answers at once; wait for one to finish",
                    retry_after_secs: None,
                }
            })
    }

    pub fn bus(&self) -> &Arc<dyn RoomBus> {
        &self.inner.bus
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<RunningStream>>> {
        self.inner.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores the user message, starts the answer and launches its stream.
    ///
    /// `subscribe` is called with the conversation id after the turn is committed and before
    /// `stream_start` is published, so the caller's socket misses nothing. Everything after
    /// the commit is synchronous: a caller that goes away cannot leave a started answer
    /// without its stream.
    pub async fn start(
        &self,
        user: CurrentUser,
        request: TurnRequest,
        subscribe: impl FnOnce(Uuid) -> Option<RoomReceiver>,
    ) -> ServiceResult<Started> {
        let requested = Instant::now();
        if !self.inner.accepting.load(Ordering::SeqCst) {
            return Err(ServiceError::Unavailable(
                "the server is shutting down; try again shortly",
            ));
        }
        let slot = self.slot(user.id).await?;
        match self.inner.chat.start_turn(user, request).await? {
            TurnStart::Started(turn) => {
                let conversation_id = turn.conversation_id;
                let stream = Arc::new(RunningStream {
                    turn: turn.clone(),
                    state: Mutex::new(StreamState {
                        content: String::new(),
                        next_index: 0,
                        finished: false,
                    }),
                    cancel: CancellationToken::new(),
                    interrupt: CancellationToken::new(),
                    requested,
                    started: Instant::now(),
                    _slot: slot,
                });
                self.streams()
                    .insert(turn.assistant_message_id, stream.clone());
                let receiver = subscribe(conversation_id);
                self.publish(
                    conversation_id,
                    &ServerFrame::StreamStart {
                        conversation_id,
                        message_id: turn.assistant_message_id,
                        user_message_id: turn.user_message_id,
                        seq: turn.started_seq,
                    },
                );
                tracing::info!(%conversation_id, message_id = %turn.assistant_message_id, model = %turn.model, "stream started");
                // The stream's own span: its logs carry the conversation and message ids.
                let span = tracing::info_span!(
                    "stream",
                    conversation_id = %conversation_id,
                    message_id = %turn.assistant_message_id,
                );
                tokio::spawn(self.clone().run(stream).instrument(span));
                Ok(Started {
                    receiver,
                    conversation_id,
                    direct: vec![],
                })
            }
            TurnStart::Duplicate {
                conversation_id,
                previous,
            } => {
                let receiver = subscribe(conversation_id);
                let mut direct = Vec::new();
                if let Some(previous) = previous {
                    direct.push(OutFrame::new(&ServerFrame::StreamStart {
                        conversation_id,
                        message_id: previous.assistant_message_id,
                        user_message_id: previous.user_message_id,
                        seq: previous.started_seq,
                    }));
                    if let Some((seq, done)) = previous.completed {
                        direct.push(OutFrame::new(&ServerFrame::StreamComplete {
                            conversation_id,
                            message_id: done.message_id,
                            status: done.status,
                            content: done.content,
                            usage: done.usage,
                            error: done.error,
                            seq,
                        }));
                    } else if let Some(stream) =
                        self.streams().get(&previous.assistant_message_id).cloned()
                    {
                        direct.extend(snapshot(&stream));
                    } else {
                        // Started through another instance: its snapshot from the bus.
                        direct.extend(
                            self.inner
                                .bus
                                .remote_snapshot(previous.assistant_message_id),
                        );
                    }
                }
                let direct = direct.into_iter().map(OutFrame::into_direct).collect();
                Ok(Started {
                    receiver,
                    conversation_id,
                    direct,
                })
            }
        }
    }

    /// `stream_snapshot` frames for the conversation's running streams, on this instance
    /// and (through the bus) on the others. Call after subscribing to the room: chunks that
    /// arrive twice are dropped by index.
    pub fn snapshots(&self, conversation_id: Uuid) -> Vec<OutFrame> {
        let streams: Vec<_> = self
            .streams()
            .values()
            .filter(|s| s.turn.conversation_id == conversation_id)
            .cloned()
            .collect();
        let mut frames: Vec<OutFrame> = streams.iter().filter_map(|s| snapshot(s)).collect();
        frames.extend(self.inner.bus.remote_snapshots(conversation_id));
        frames
    }

    /// Stops a stream; it completes as `cancelled` with the text so far. Only its owner may.
    /// A stream another instance runs is found in the database and stopped by its instance.
    pub async fn cancel(&self, user: CurrentUser, message_id: Uuid) -> ServiceResult<()> {
        let stream = self.streams().get(&message_id).cloned();
        match stream {
            Some(stream) if stream.turn.owner_id == user.id => {
                stream.cancel.cancel();
                Ok(())
            }
            // Someone else's stream is indistinguishable from no stream.
            Some(_) => Err(ServiceError::MessageNotFound),
            None => {
                let store = self.inner.chat.store();
                match store.streaming_answer_of(message_id, user.id).await? {
                    Some(_) => {
                        self.inner
                            .bus
                            .command(ClusterCommand::Cancel { message_id });
                        Ok(())
                    }
                    None => Err(ServiceError::MessageNotFound),
                }
            }
        }
    }

    /// Carries out what another instance asks of this one.
    pub fn apply(&self, command: ClusterCommand) {
        match command {
            // The asking instance checked that its user owns the stream.
            ClusterCommand::Cancel { message_id } => {
                if let Some(stream) = self.streams().get(&message_id) {
                    stream.cancel.cancel();
                }
            }
            ClusterCommand::Sync => {
                let streams: Vec<_> = self.streams().values().cloned().collect();
                for stream in streams {
                    // Under the stream's lock, so the state goes out in order with its
                    // chunks: what follows it starts at its `nextIndex`.
                    let state = stream.lock();
                    if state.finished {
                        continue;
                    }
                    let frame = OutFrame::new(&ServerFrame::StreamSnapshot {
                        conversation_id: stream.turn.conversation_id,
                        message_id: stream.turn.assistant_message_id,
                        content: state.content.clone(),
                        next_index: state.next_index,
                    });
                    self.inner
                        .bus
                        .share_state(stream.turn.conversation_id, Arc::new(frame));
                }
            }
        }
    }

    pub fn running(&self) -> usize {
        self.streams().len()
    }

    fn publish(&self, conversation_id: Uuid, frame: &ServerFrame) {
        self.inner
            .bus
            .publish(conversation_id, Arc::new(OutFrame::new(frame)));
    }

    async fn run(self, stream: Arc<RunningStream>) {
        let turn = stream.turn.clone();
        let metrics = self.inner.metrics.clone();
        metrics.streams_running.inc();
        let outcome = self.drive(&stream).await;
        let seq = self.commit(&turn, &outcome).await;
        {
            let mut state = stream.lock();
            state.finished = true;
            let (status, error) = match seq {
                Ok(_) => (outcome.status, outcome.error.clone()),
                // Another instance ended it first (it took this instance for dead): that
                // end is the one committed, and its `stream_complete` the one published.
                Err(ServiceError::AlreadyFinished) => {
                    tracing::warn!(message_id = %turn.assistant_message_id, "the answer was already ended by another instance");
                    drop(state);
                    return self.forget(&stream, &outcome);
                }
                Err(_) => (
                    MessageStatus::Failed,
                    Some(StreamError {
                        code: "INTERNAL_ERROR".into(),
                        message: "the answer could not be saved".into(),
                    }),
                ),
            };
            self.publish(
                turn.conversation_id,
                &ServerFrame::StreamComplete {
                    conversation_id: turn.conversation_id,
                    message_id: turn.assistant_message_id,
                    status,
                    content: outcome.content.clone(),
                    usage: outcome.usage,
                    error,
                    seq: seq.unwrap_or(turn.started_seq),
                },
            );
        }
        self.forget(&stream, &outcome);
    }

    /// The stream is over: off the registry, counted, and shutdown told.
    fn forget(&self, stream: &RunningStream, outcome: &TurnOutcome) {
        let turn = &stream.turn;
        let metrics = &self.inner.metrics;
        self.streams().remove(&turn.assistant_message_id);
        metrics.streams_running.dec();
        metrics
            .streams
            .with_label_values(&[outcome.status.as_str()])
            .inc();
        self.inner.ended.notify_waiters();
        tracing::info!(
            conversation_id = %turn.conversation_id,
            message_id = %turn.assistant_message_id,
            status = %outcome.status,
            chars = outcome.content.len(),
            "stream finished"
        );
    }

    /// Ends every running stream now, as `interrupted` (this instance lost its lease).
    pub fn interrupt_all(&self) {
        for stream in self.streams().values() {
            stream.interrupt.cancel();
        }
    }

    /// Ends the answers left `streaming` by instances that are gone (see
    /// [`crate::cluster`]) as `interrupted`, with the text their last checkpoint saved,
    /// through a `stream_completed` event, and tells their rooms with `stream_complete`.
    /// An answer another sweeper ended first is skipped: each ends once. Returns how many
    /// this call ended.
    pub async fn recover_orphans(&self) -> anyhow::Result<usize> {
        let chat = &self.inner.chat;
        let stranded: Vec<MessageRecord> = chat.store().orphaned_streams().await?;
        let mut ended = 0;
        for message in stranded {
            let turn = Turn {
                owner_id: Uuid::nil(),
                conversation_id: message.conversation_id,
                user_message_id: Uuid::nil(),
                assistant_message_id: message.id,
                started_seq: 0,
                model: message.model.clone().unwrap_or_default(),
                prepared: None,
            };
            let outcome = TurnOutcome {
                content: message.content.clone(),
                status: MessageStatus::Interrupted,
                usage: None,
                error: None,
            };
            let seq = match chat.finish_turn(&turn, None, outcome.clone()).await {
                Ok(seq) => seq,
                Err(ServiceError::AlreadyFinished) => continue,
                Err(err) => {
                    return Err(anyhow::anyhow!(
                        "marking message {} interrupted: {err}",
                        message.id
                    ))
                }
            };
            ended += 1;
            self.publish(
                message.conversation_id,
                &ServerFrame::StreamComplete {
                    conversation_id: message.conversation_id,
                    message_id: message.id,
                    status: MessageStatus::Interrupted,
                    content: outcome.content,
                    usage: None,
                    error: None,
                    seq,
                },
            );
            tracing::warn!(conversation_id = %message.conversation_id, message_id = %message.id, "answer interrupted by the stop of its instance; kept its checkpointed text");
        }
        Ok(ended)
    }

    /// Commits the end of a stream, retrying a few times: the answer is the user's, and a
    /// passing database hiccup should not lose it. If it still fails, the message stays
    /// `streaming` with its last checkpoint and becomes `interrupted` at the next start.
    async fn commit(&self, turn: &Turn, outcome: &TurnOutcome) -> Result<i64, ServiceError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .inner
                .chat
                .finish_turn(turn, Some(turn.owner_id), outcome.clone())
                .await
            {
                Ok(seq) => return Ok(seq),
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
    async fn drive(&self, stream: &RunningStream) -> TurnOutcome {
        let chat = &self.inner.chat;
        let turn = &stream.turn;
        let limits = chat.upstream().clone();
        let mut usage = None;
        let end = |status, error: Option<&ProviderError>, usage| TurnOutcome {
            content: stream.lock().content.clone(),
            status,
            usage,
            error: error.map(stream_error),
        };

        let request = match chat.context_for(turn).await {
            Ok(request) => request,
            Err(err) => {
                tracing::error!(error = %err, "building the context failed");
                let mut outcome = end(MessageStatus::Failed, None, None);
                outcome.error = Some(StreamError {
                    code: "INTERNAL_ERROR".into(),
                    message: "the request could not be prepared".into(),
                });
                return outcome;
            }
        };

        // Each attempt has the first-token limit (the resilient provider enforces it, so a
        // timeout counts toward the breaker and may be retried); this outer bound also
        // covers providers without one. After that, the gap between tokens.
        let asked = Instant::now();
        let opening = asked + limits.with_retries(limits.first_token_timeout);
        let opened = tokio::select! {
            _ = stream.cancel.cancelled() => return end(MessageStatus::Cancelled, None, None),
            _ = stream.interrupt.cancelled() => return end(MessageStatus::Interrupted, None, None),
            opened = tokio::time::timeout_at(opening, chat.provider().stream(request)) => opened,
        };
        let mut deadline = Instant::now() + limits.first_token_timeout;
        let mut upstream = match opened {
            Err(_) => return end(MessageStatus::Failed, Some(&ProviderError::Timeout), None),
            Ok(Err(err)) => return end(MessageStatus::Failed, Some(&err), None),
            Ok(Ok(upstream)) => upstream,
        };

        let mut checkpoint = tokio::time::interval_at(
            Instant::now() + self.inner.checkpoint_every,
            self.inner.checkpoint_every,
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
                    Some(Ok(StreamItem::Usage(u))) => usage = Some(u),
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
                                Some(Some(Ok(StreamItem::Usage(u)))) => usage = Some(u),
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
        let metrics = &self.inner.metrics;
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
        self.inner
            .bus
            .publish(turn.conversation_id, Arc::new(frame));
    }
}

fn snapshot(stream: &RunningStream) -> Option<OutFrame> {
    let state = stream.lock();
    (!state.finished).then(|| {
        OutFrame::new(&ServerFrame::StreamSnapshot {
            conversation_id: stream.turn.conversation_id,
            message_id: stream.turn.assistant_message_id,
            content: state.content.clone(),
            next_index: state.next_index,
        })
    })
}
