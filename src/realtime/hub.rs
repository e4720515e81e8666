//! The stream hub: the registry of the answers this instance runs, and their scheduler.
//! Every streamed answer runs as a task of its own, owned by the conversation rather than by
//! the socket that asked for it: a sender that disconnects does not stop the answer, every
//! socket in the room keeps receiving it, and the final text is committed with one
//! `stream_completed` event. The loop itself is `realtime::relay`; the hub starts it, holds
//! each user's places among their concurrent answers, answers snapshots and cancels (through
//! the bus for answers other instances run), carries out the other instances' commands, and
//! ends the answers of dead instances.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use super::bus::{ClusterCommand, RoomBus, RoomReceiver};
use super::frames::{OutFrame, ServerFrame};
use super::relay::Relay;
pub use super::stream::AnswerSlot;
use super::stream::{RunningStream, SlotCounts, StreamSlot, StreamState};
use crate::domain::codes::ErrorCode;
use crate::domain::events::StreamError;
use crate::domain::projection::MessageRecord;
use crate::domain::types::MessageStatus;
use crate::metrics::Metrics;
use crate::service::auth::CurrentUser;
use crate::service::chat::{
    Answering, ChatService, EarlyStream, Turn, TurnOutcome, TurnRequest, TurnStart,
};
use crate::service::{ServiceError, ServiceResult};

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

    /// Takes this instance's share of every model budget, among `instances` live ones.
    pub fn share_model_budgets(&self, instances: u64) {
        self.inner.chat.scheduler().share_among(instances);
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
        match self
            .inner
            .chat
            .start_turn(user, request, Answering::Streamed)
            .await?
        {
            TurnStart::Started { turn, early } => {
                let conversation_id = turn.conversation_id;
                let stream = Arc::new(RunningStream {
                    turn: turn.clone(),
                    state: Mutex::new(StreamState {
                        content: String::new(),
                        next_index: 0,
                        tool_calls: Vec::new(),
                        tool_seq: 0,
                        citations: Vec::new(),
                        first_chunk_ms: None,
                        finish: Default::default(),
                        finished: false,
                    }),
                    cancel: CancellationToken::new(),
                    interrupt: CancellationToken::new(),
                    requested,
                    started: Instant::now(),
                    _slot: slot,
                    tool_result_max_chars: self.inner.chat.agents_config().tool_result_max_chars,
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
                tokio::spawn(self.clone().run(stream, early).instrument(span));
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
                            // A repeat's answer is its text; the calls are in its events.
                            tool_calls: Vec::new(),
                            citations: Vec::new(),
                        }));
                    } else if let Some(stream) =
                        self.streams().get(&previous.assistant_message_id).cloned()
                    {
                        direct.extend(stream.snapshot());
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
        let mut frames: Vec<OutFrame> = streams.iter().filter_map(|s| s.snapshot()).collect();
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
                    let frame = stream.snapshot_of(&state);
                    self.inner
                        .bus
                        .share_state(stream.turn.conversation_id, Arc::new(frame));
                }
            }
            // Sockets, not streams: the command loop hands these to `LiveSessions`.
            ClusterCommand::EndSessions(_)
            | ClusterCommand::ModelsChanged
            | ClusterCommand::KnowledgeChanged { .. } => {}
        }
    }

    pub fn running(&self) -> usize {
        self.streams().len()
    }

    fn relay(&self) -> Relay<'_> {
        Relay {
            chat: &self.inner.chat,
            bus: &self.inner.bus,
            metrics: &self.inner.metrics,
            checkpoint_every: self.inner.checkpoint_every,
        }
    }

    fn publish(&self, conversation_id: Uuid, frame: &ServerFrame) {
        self.inner
            .bus
            .publish(conversation_id, Arc::new(OutFrame::new(frame)));
    }

    async fn run(self, stream: Arc<RunningStream>, early: Option<EarlyStream>) {
        let turn = stream.turn.clone();
        let metrics = self.inner.metrics.clone();
        metrics.streams_running.inc();
        let outcome = self.relay().drive(&stream, early).await;
        let seq = self.relay().commit(&turn, &outcome).await;
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
                        code: ErrorCode::InternalError,
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
                    tool_calls: stream.cut(&state.tool_calls),
                    citations: state.citations.clone(),
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
                priority: Default::default(),
                system_prompt: None,
                prepared: None,
                agent: None,
            };
            let outcome = TurnOutcome {
                content: message.content.clone(),
                status: MessageStatus::Interrupted,
                usage: None,
                error: None,
                answered: Default::default(),
                finish: Default::default(),
                first_chunk_ms: None,
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
                    tool_calls: message.tool_calls.clone(),
                    citations: message.citations.clone(),
                },
            );
            tracing::warn!(conversation_id = %message.conversation_id, message_id = %message.id, "answer interrupted by the stop of its instance; kept its checkpointed text");
        }
        Ok(ended)
    }
}
