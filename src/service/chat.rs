//! Chat turns: a user message and the assistant's answer. Starting a turn appends the user
//! message and a `stream_started` event (the answer exists, `streaming`, from then on);
//! finishing it appends one `stream_completed`. `POST /api/chat` and the WebSocket streams
//! share this, so both leave the same history and both survive a crash the same way.

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use super::auth::CurrentUser;
use super::context_cache::ContextCache;
use super::conversations::ConversationView;
use super::knowledge::KnowledgeService;
use super::limits::RateLimits;
use super::models::ModelRegistry;
use super::peers::Peers;
use super::{ServiceError, ServiceResult};
use crate::config::{AgentsConfig, UpstreamConfig};
use crate::domain::agents::AgentRecord;
use crate::domain::codes::ErrorCode;
use crate::domain::commands::{self, AgentRef, NewTurn};
use crate::domain::events::{ConversationEvent, RecordedEvent};
use crate::domain::events::{StreamCompleted, StreamError, ToolCalled, ToolReturned};
use crate::domain::inputs::{bounded_text, MessageText};
use crate::domain::projection::MessageRecord;
use crate::domain::types::{FallbackReason, MessageRole, Priority};
use crate::domain::types::{MessageStatus, Usage};
use crate::domain::DomainError;
use crate::llm::catalogue::ProviderConfig;
use crate::llm::context::{build_context, ContextWindow};
use crate::llm::scheduler::{Admission, CallClass, Permit, QueueFull, Scheduler, Waited};
use crate::llm::{ChatProvider, ChatRequest, ChatStream, Completion, ProviderError, Sampling};
use crate::metrics::Metrics;
use crate::store::{ContextRow, ExecuteError, Load, Store, StoredTurn};

pub const MAX_CLIENT_MESSAGE_ID_CHARS: usize = 100;

/// A started answer.
#[derive(Clone, Debug)]
pub struct Turn {
    pub owner_id: Uuid,
    pub conversation_id: Uuid,
    pub user_message_id: Uuid,
    pub assistant_message_id: Uuid,
    /// The `seq` of its `stream_started` event.
    pub started_seq: i64,
    pub model: String,
    /// The owner's tier in the model queue when the turn was sent.
    pub priority: Priority,
    /// The conversation's system prompt as the turn's commit found it.
    pub system_prompt: Option<String>,
    /// The upstream request, when the turn already held everything it needs: the turn that
    /// created its conversation knows the whole history (its one message) without a read.
    pub prepared: Option<ChatRequest>,
    /// The agent that answers, at the version recorded in `stream_started`.
    pub agent: Option<Arc<AgentRecord>>,
}

/// A context read before the turn's commit: the request it makes, as of the conversation's
/// `last_seq` (and the system prompt and model the same snapshot had).
struct ReadAhead {
    last_seq: i64,
    request: ChatRequest,
    /// What was read, when it did not come from the cache.
    read: Option<ReadRows>,
    /// The turn is known to be appended (its `clientMessageId`, if any, is not a repeat):
    /// its answer may be asked for before the commit ends. A repeat asked for early would
    /// be a request upstream thrown away.
    surely_new: bool,
}

/// The rows a read ahead took, newest first, and whether they reach the first message.
struct ReadRows {
    rows: Vec<ContextRow>,
    whole: bool,
}

impl ReadAhead {
    /// Whether the turn's commit came right after the read: its events are the user
    /// message and the answer's start, at the two seqs after the one read at. Anything
    /// else (another writer in between) and the read may miss a message, or a new system
    /// prompt or model.
    fn still_current(&self, events: &[RecordedEvent]) -> bool {
        matches!(
            events,
            [added, started] if added.seq == self.last_seq + 1
                && started.seq == self.last_seq + 2
                && matches!(added.event, ConversationEvent::MessageAdded(_))
                && matches!(started.event, ConversationEvent::StreamStarted(_))
        )
    }
}

/// A model call asking for its place: which model, for whom, and how urgent.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    pub model: &'a str,
    pub user: Uuid,
    pub priority: Priority,
    pub class: CallClass,
    /// It has somewhere else to go: refuse it at once when its wait is expected to pass
    /// `QUEUE_MAX_WAIT_MS`, instead of letting it wait that long first.
    pub impatient: bool,
    /// The tokens it is expected to use ([`ChatRequest::estimated_tokens`]).
    pub tokens: u64,
}

/// Why a call got no place among its provider's calls.
pub enum NoPlace<S> {
    /// The queue was full.
    Full,
    /// The wait passed `QUEUE_MAX_WAIT_MS`, or (for a call with a fallback) was expected to.
    TooLong,
    /// The caller's `stop` came first, with its value.
    Stopped(S),
}

impl<S> NoPlace<S> {
    /// Why a fallback answers instead; `None` for a stop.
    fn fallback_reason(&self) -> Option<FallbackReason> {
        match self {
            Self::Full => Some(FallbackReason::QueueFull),
            Self::TooLong => Some(FallbackReason::QueueWait),
            Self::Stopped(_) => None,
        }
    }
}

/// Which model answered a turn, when it was not the turn's own: its fallback, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answered {
    pub model: Option<String>,
    pub fallback_reason: Option<FallbackReason>,
}

/// A place for a turn's answer, and the model it goes to.
pub struct Placed {
    pub permit: Option<Permit>,
    pub model: String,
    pub answered: Answered,
}

/// How a turn's answer is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answering {
    /// Streamed (the WebSocket): the upstream request may go out while the turn's commit
    /// is written (see [`EarlyStream`]).
    Streamed,
    /// Whole (`POST /api/chat`): asked for after the commit.
    Whole,
}

/// A streamed answer asked for while its turn was being committed, so that the upstream's
/// wait for its first token overlaps the commit instead of following it. It is used only
/// if the commit shows the request was built from the state the turn was appended to (a
/// new conversation, or a read with nothing appended between it and the commit); otherwise
/// it is dropped, which aborts the request. Nothing of it reaches a client before the
/// commit: its first token waits in the task until the stream is registered.
pub struct EarlyStream {
    /// When the request went out (the server's share of the first token ends here).
    pub asked: tokio::time::Instant,
    model: String,
    opening: tokio::task::JoinHandle<Result<ChatStream, ProviderError>>,
    /// Its place among the provider's calls, held for the whole answer.
    permit: Option<Permit>,
}

impl EarlyStream {
    fn open(
        provider: &Arc<dyn ChatProvider>,
        request: ChatRequest,
        permit: Option<Permit>,
    ) -> Self {
        let provider = provider.clone();
        Self {
            asked: tokio::time::Instant::now(),
            model: request.model.clone(),
            opening: tokio::spawn(async move { provider.stream(request).await }),
            permit,
        }
    }

    /// Its place among the provider's calls, to hold while the answer runs.
    pub fn take_permit(&mut self) -> Option<Permit> {
        self.permit.take()
    }

    /// The opened stream, or why it did not open: what `ChatProvider::stream` answered.
    pub async fn opened(mut self) -> Result<ChatStream, ProviderError> {
        match (&mut self.opening).await {
            Ok(opened) => opened,
            Err(err) => {
                tracing::error!(error = %err, "the upstream request task failed");
                Err(ProviderError::Upstream(
                    "the request ended unexpectedly".into(),
                ))
            }
        }
    }
}

impl Drop for EarlyStream {
    fn drop(&mut self) {
        // Unused (or already finished): a request still in flight is abandoned, and its
        // connection closed.
        self.opening.abort();
    }
}

pub enum TurnStart {
    /// `early`: the answer's stream, already asked for (only for [`Answering::Streamed`]).
    Started {
        turn: Turn,
        early: Option<EarlyStream>,
    },
    /// The `clientMessageId` was used before in this conversation: nothing new started.
    Duplicate {
        conversation_id: Uuid,
        previous: Option<StoredTurn>,
    },
}

/// How an answer ended.
#[derive(Clone, Debug)]
pub struct TurnOutcome {
    pub content: String,
    pub status: MessageStatus,
    pub usage: Option<Usage>,
    pub error: Option<StreamError>,
    /// Set when a fallback answered.
    pub answered: Answered,
    /// How the last model call ended, and when the first token came: what the checks and
    /// the quality report read.
    pub finish: crate::llm::Finish,
    pub first_chunk_ms: Option<i64>,
}

/// A request to start a turn, before validation.
pub struct TurnRequest {
    pub conversation_id: Option<Uuid>,
    /// Whether an unknown `conversation_id` creates that conversation (WebSocket) or is 404.
    pub create_if_missing: bool,
    pub message: String,
    pub client_message_id: Option<String>,
    pub model: Option<String>,
}

#[derive(Clone)]
pub struct ChatService {
    limits: Arc<RateLimits>,
    max_message_chars: usize,
    store: Store,
    provider: Arc<dyn ChatProvider>,
    /// The models users may name; what a turn answers with when it names none.
    models: Arc<ModelRegistry>,
    context_budget_tokens: usize,
    upstream: UpstreamConfig,
    /// This server instance: recorded in every answer it starts, as the one that runs it.
    instance_id: Option<Uuid>,
    /// Whether other instances share the database (their answers then count too).
    peers: Peers,
    /// What the next turn of each recent conversation sends, kept by the append path.
    contexts: Arc<ContextCache>,
    /// Counts where contexts come from, once a cache is set up.
    metrics: Option<Arc<Metrics>>,
    /// Every model call takes its place here first.
    scheduler: Arc<Scheduler>,
    /// The conversations this instance last saw bound to an agent, and to which: a turn
    /// is prepared for that agent (a wrong guess costs one refused command).
    agent_bindings: AgentBindings,
    /// Steps, hand-off depth and tool limits of agents' answers.
    agents: Arc<AgentsConfig>,
    /// What `search_knowledge` searches (set once at start-up; weak, since the knowledge
    /// service embeds through this one).
    knowledge: Arc<std::sync::OnceLock<std::sync::Weak<KnowledgeService>>>,
}

/// Which agent each recently seen conversation is bound to (absent: none), as this
/// instance last saw it; shared with the conversation service, which binds them.
#[derive(Clone, Default)]
pub struct AgentBindings(Arc<std::sync::Mutex<HashMap<Uuid, Uuid>>>);

impl AgentBindings {
    fn get(&self, conversation_id: Uuid) -> Option<Uuid> {
        let bindings = self.0.lock().unwrap_or_else(|e| e.into_inner());
        bindings.get(&conversation_id).copied()
    }

    /// Remembers `conversation_id` bound to `agent` (or to none).
    pub fn remember(&self, conversation_id: Uuid, agent: Option<Uuid>) {
        let mut bindings = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match agent {
            Some(agent) => {
                if bindings.len() >= MAX_REMEMBERED_BINDINGS {
                    bindings.clear();
                }
                bindings.insert(conversation_id, agent);
            }
            None => {
                bindings.remove(&conversation_id);
            }
        }
    }
}

/// Bindings remembered before the map is cleared (it refills as turns are sent).
const MAX_REMEMBERED_BINDINGS: usize = 100_000;

impl ChatService {
    pub fn new(
        store: Store,
        provider: Arc<dyn ChatProvider>,
        models: Arc<ModelRegistry>,
        context_budget_tokens: usize,
        upstream: UpstreamConfig,
        limits: Arc<RateLimits>,
        max_message_chars: usize,
    ) -> Self {
        Self {
            limits,
            max_message_chars,
            store,
            provider,
            models,
            context_budget_tokens,
            upstream,
            instance_id: None,
            peers: Peers::default(),
            contexts: Arc::new(ContextCache::new(context_budget_tokens, 0)),
            metrics: None,
            scheduler: Arc::new(Scheduler::unlimited()),
            agent_bindings: AgentBindings::default(),
            agents: Arc::new(AgentsConfig::default()),
            knowledge: Default::default(),
        }
    }

    /// Lets agents' `search_knowledge` search through `knowledge` (once, at start-up).
    pub fn search_with(&self, knowledge: &Arc<KnowledgeService>) {
        let _ = self.knowledge.set(Arc::downgrade(knowledge));
    }

    /// The knowledge service, while the server runs.
    pub fn knowledge(&self) -> Option<Arc<KnowledgeService>> {
        self.knowledge.get().and_then(std::sync::Weak::upgrade)
    }

    /// Bounds agents' answers by `agents` (steps, hand-off depth, tool time and size).
    pub fn with_agents(mut self, agents: AgentsConfig) -> Self {
        self.agents = Arc::new(agents);
        self
    }

    pub fn agents_config(&self) -> &AgentsConfig {
        &self.agents
    }

    /// Records a tool call of the turn's answer; returns its event's `seq`.
    pub async fn record_tool_call(&self, turn: &Turn, called: ToolCalled) -> ServiceResult<i64> {
        self.append_to_answer(turn, move |state| {
            commands::call_tool(state, called.clone())
        })
        .await
    }

    /// Records a tool call's result; returns its event's `seq`.
    pub async fn record_tool_result(
        &self,
        turn: &Turn,
        returned: ToolReturned,
    ) -> ServiceResult<i64> {
        self.append_to_answer(turn, move |state| {
            commands::return_tool(state, returned.clone())
        })
        .await
    }

    /// Appends what `decide` makes of the answer's state; returns the last event's `seq`.
    async fn append_to_answer(
        &self,
        turn: &Turn,
        decide: impl Fn(&crate::domain::projection::ConversationState) -> commands::Decision
            + Send
            + Sync
            + 'static,
    ) -> ServiceResult<i64> {
        let committed = self
            .store
            .execute(
                turn.conversation_id,
                None,
                &Load::messages(&[turn.assistant_message_id]),
                decide,
            )
            .await?;
        committed.events.last().map(|e| e.seq).ok_or_else(|| {
            ServiceError::Internal(anyhow::anyhow!("recording a tool call appended nothing"))
        })
    }

    /// Puts every model call of this service through `scheduler`, counted in `metrics`.
    pub fn with_scheduler(mut self, scheduler: Arc<Scheduler>, metrics: Arc<Metrics>) -> Self {
        self.scheduler = scheduler;
        self.metrics = Some(metrics);
        self
    }

    /// Counts a call that got its place after `waited` (0 for one that had it at once).
    pub fn count_admitted(&self, class: CallClass, waited: std::time::Duration) {
        if let Some(metrics) = &self.metrics {
            metrics
                .model_queue_wait
                .with_label_values(&[class.as_str()])
                .observe(waited.as_secs_f64());
        }
    }

    /// Counts a call the queue refused: `full`, or `timeout` (waited past its limit).
    fn count_refused(&self, reason: &str) {
        if let Some(metrics) = &self.metrics {
            metrics
                .model_queue_refused
                .with_label_values(&[reason])
                .inc();
        }
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// The provider that serves `model`.
    fn lane_of(&self, model: &str) -> String {
        self.models.catalogue().lane_of(model)
    }

    /// The model that answers for `model` when it cannot: its catalogue `fallback`, else
    /// `FALLBACK_MODEL`. A catalogue fallback an admin turned off is not used.
    pub fn fallback_for(&self, model: &str) -> Option<String> {
        let catalogue = self.models.catalogue();
        let fallback = catalogue.fallback_for(model)?;
        (catalogue.get(fallback).is_none() || self.models.usable().contains(fallback))
            .then(|| fallback.to_string())
    }

    /// The fallback that answers after the turn's model failed fast (its breaker open),
    /// unless the turn fell back already.
    pub fn fall_back(&self, turn: &Turn, answered: &Answered) -> Option<Answered> {
        if answered.model.is_some() {
            return None;
        }
        let fallback = self.fallback_for(&turn.model)?;
        Some(self.fallen_back(FallbackReason::CircuitOpen, fallback))
    }

    /// An answer going to `fallback` for `reason`, counted.
    fn fallen_back(&self, reason: FallbackReason, fallback: String) -> Answered {
        if let Some(metrics) = &self.metrics {
            metrics
                .model_fallbacks
                .with_label_values(&[reason.as_str()])
                .inc();
        }
        Answered {
            model: Some(fallback),
            fallback_reason: Some(reason),
        }
    }

    /// A place for the turn's answer (see [`ChatService::place_for`]) with its model, or
    /// (at most once) with its fallback when the model's breaker is open, its queue is
    /// full, or its wait passed (or is expected to pass) the limit. `answered` says which
    /// model to start from (a turn that fell back already stays with its fallback).
    pub async fn place_answer<S>(
        &self,
        turn: &Turn,
        tokens: u64,
        mut answered: Answered,
        mut moved: impl FnMut(usize),
        stop: impl std::future::Future<Output = S>,
    ) -> Result<Placed, (NoPlace<S>, Answered)> {
        tokio::pin!(stop);
        loop {
            let model = answered.model.clone().unwrap_or_else(|| turn.model.clone());
            let fallback = match answered.model {
                None => self.fallback_for(&model),
                Some(_) => None,
            };
            if let Some(fallback) = &fallback {
                if !self.provider.accepting(&model) {
                    answered = self.fallen_back(FallbackReason::CircuitOpen, fallback.clone());
                    continue;
                }
            }
            let call = Call {
                model: &model,
                user: turn.owner_id,
                priority: turn.priority,
                class: CallClass::Interactive,
                impatient: fallback.is_some(),
                tokens,
            };
            match self.place_for(call, &mut moved, stop.as_mut()).await {
                Ok(permit) => {
                    return Ok(Placed {
                        permit,
                        model,
                        answered,
                    })
                }
                Err(busy) => match (busy.fallback_reason(), fallback) {
                    (Some(reason), Some(fallback)) => answered = self.fallen_back(reason, fallback),
                    _ => return Err((busy, answered)),
                },
            }
        }
    }

    /// How a turn failed, saying so when its fallback failed too.
    pub fn failure(&self, turn: &Turn, answered: &Answered, err: &ProviderError) -> StreamError {
        let mut error = stream_error(err);
        if let (Some(fallback), Some(reason)) = (&answered.model, answered.fallback_reason) {
            error.message = format!(
                "`{}` could not answer ({}), nor could its fallback `{fallback}`: {}",
                turn.model,
                reason.as_str().replace('_', " "),
                error.message
            );
        }
        error
    }

    /// A place for any call to a model (see [`ChatService::take_place`]).
    pub async fn place_for<S>(
        &self,
        call: Call<'_>,
        mut moved: impl FnMut(usize),
        stop: impl std::future::Future<Output = S>,
    ) -> Result<Option<Permit>, NoPlace<S>> {
        let since = tokio::time::Instant::now();
        let lane = self.lane_of(call.model);
        let permit =
            match self
                .scheduler
                .admit(&lane, call.user, call.class, call.priority, call.tokens)
            {
                Err(QueueFull) => {
                    self.count_refused("full");
                    return Err(NoPlace::Full);
                }
                Ok(None) => None,
                Ok(Some(Admission::Now(permit))) => Some(permit),
                Ok(Some(Admission::Queued(mut ticket))) => {
                    if call.impatient
                        && ticket
                            .expected_wait()
                            .is_some_and(|wait| wait > self.scheduler.max_wait())
                    {
                        self.count_refused("expected_timeout");
                        return Err(NoPlace::TooLong);
                    }
                    moved(ticket.position());
                    let until = since + self.scheduler.max_wait();
                    tokio::pin!(stop);
                    loop {
                        tokio::select! {
                            stopped = &mut stop => return Err(NoPlace::Stopped(stopped)),
                            _ = tokio::time::sleep_until(until) => {
                                self.count_refused("timeout");
                                return Err(NoPlace::TooLong);
                            }
                            waited = ticket.next() => match waited {
                                Waited::Ready(permit) => break Some(permit),
                                Waited::Moved(position) => moved(position),
                            },
                        }
                    }
                }
            };
        self.count_admitted(call.class, since.elapsed());
        Ok(permit)
    }

    /// A whole answer for a call nobody watches (a title; later validation and
    /// embeddings): it waits for its place behind interactive answers, like every call.
    pub async fn complete_in_background(
        &self,
        user: Uuid,
        priority: Priority,
        request: ChatRequest,
    ) -> Result<Completion, ProviderError> {
        self.complete_as(user, priority, CallClass::Background, request)
            .await
    }

    /// A whole answer for a step of an agent's work inside a turn (an `ask_agent`
    /// hand-off): it waits behind interactive answers and before background work.
    pub async fn complete_agent_step(
        &self,
        user: Uuid,
        priority: Priority,
        request: ChatRequest,
    ) -> Result<Completion, ProviderError> {
        self.complete_as(user, priority, CallClass::Agent, request)
            .await
    }

    async fn complete_as(
        &self,
        user: Uuid,
        priority: Priority,
        class: CallClass,
        request: ChatRequest,
    ) -> Result<Completion, ProviderError> {
        let call = Call {
            model: &request.model,
            user,
            priority,
            class,
            impatient: false,
            tokens: request.estimated_tokens(),
        };
        let mut permit = self
            .place_for(call, |_| {}, std::future::pending::<()>())
            .await
            .map_err(|_| ProviderError::Busy)?;
        let completion = tokio::time::timeout(
            self.upstream.with_retries(self.upstream.request_timeout),
            self.provider.complete(request),
        )
        .await
        .unwrap_or(Err(ProviderError::Timeout));
        settle(&mut permit, &completion);
        completion
    }

    /// Embeds `inputs` with `model`, after waiting for the call's place like every call.
    pub async fn embed(
        &self,
        user: Uuid,
        priority: Priority,
        class: CallClass,
        model: &str,
        inputs: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, ProviderError> {
        let tokens: usize = inputs
            .iter()
            .map(|t| crate::llm::context::estimate_tokens(t))
            .sum();
        let call = Call {
            model,
            user,
            priority,
            class,
            impatient: false,
            tokens: tokens as u64,
        };
        let permit = self
            .place_for(call, |_| {}, std::future::pending::<()>())
            .await
            .map_err(|_| ProviderError::Busy)?;
        let vectors = tokio::time::timeout(
            self.upstream.with_retries(self.upstream.request_timeout),
            self.provider.embed(model.to_string(), inputs),
        )
        .await
        .unwrap_or(Err(ProviderError::Timeout));
        drop(permit);
        vectors
    }

    /// Whether `model` is answered by the built-in demo provider (no key for it).
    pub fn is_demo(&self, model: &str) -> bool {
        let catalogue = self.models.catalogue();
        catalogue
            .provider(catalogue.provider_of(model))
            .is_some_and(ProviderConfig::is_demo)
    }

    /// The model registry: what users may name, and the default.
    pub fn models(&self) -> &ModelRegistry {
        &self.models
    }

    /// Asks for a streamed answer now, if its provider has a place free at once.
    fn open_early(&self, request: ChatRequest) -> Option<EarlyStream> {
        let permit = self
            .scheduler
            .try_admit(&self.lane_of(&request.model), request.estimated_tokens())?;
        Some(EarlyStream::open(&self.provider, request, permit))
    }

    /// Keeps up to `max_bytes` of recent conversations' contexts in memory, current with
    /// every commit through the store (see [`ContextCache`]), and counts in `metrics` where
    /// each turn's context came from. Call once per store.
    pub fn with_context_cache(mut self, max_bytes: usize, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        let contexts = Arc::new(ContextCache::new(self.context_budget_tokens, max_bytes));
        let kept = contexts.clone();
        let hook =
            Box::new(move |id, owner, events: &[RecordedEvent]| kept.appended(id, owner, events));
        if self.store.on_append(hook).is_err() {
            tracing::warn!("the store already reports its commits elsewhere; no context cache");
            return self;
        }
        self.contexts = contexts;
        self
    }

    /// The user's answers that other instances are running (0 while this instance is alone,
    /// and on SQLite, which serves one instance).
    pub async fn answers_elsewhere(&self, user: Uuid) -> ServiceResult<usize> {
        match self.instance_id {
            Some(instance) if self.peers.seen() => Ok(self
                .store
                .streaming_answers_elsewhere(user, instance)
                .await? as usize),
            _ => Ok(0),
        }
    }

    /// Records `instance_id` as the runner of every answer this service starts; `peers`
    /// tells whether other instances run answers on the same database.
    pub fn run_by(mut self, instance_id: Uuid, peers: Peers) -> Self {
        self.instance_id = Some(instance_id);
        self.peers = peers;
        self
    }

    pub fn provider(&self) -> &Arc<dyn ChatProvider> {
        &self.provider
    }

    pub fn upstream(&self) -> &UpstreamConfig {
        &self.upstream
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    #[tracing::instrument(skip_all, fields(user_id = %user.id))]
    pub async fn start_turn(
        &self,
        user: CurrentUser,
        request: TurnRequest,
        answering: Answering,
    ) -> ServiceResult<TurnStart> {
        let text =
            MessageText::parse("message", &request.message, self.max_message_chars)?.into_inner();
        self.limits.check_chat(user.id).await?;
        let client_message_id = request
            .client_message_id
            .map(|c| bounded_text("clientMessageId", &c, MAX_CLIENT_MESSAGE_ID_CHARS, false))
            .transpose()?;
        let model_override = request.model.map(|m| self.models.check(&m)).transpose()?;
        let conversation_id = request.conversation_id.unwrap_or_else(Uuid::now_v7);
        let believed = match request.conversation_id {
            Some(id) => self.believed_agent(id),
            None => None,
        };
        let mut agent = match believed {
            Some(id) => self.store.find_agent(id).await?.map(Arc::new),
            None => None,
        };
        let mut turn = NewTurn {
            user_message_id: Uuid::now_v7(),
            assistant_message_id: Uuid::now_v7(),
            text,
            client_message_id: client_message_id.clone(),
            create_if_missing: request.create_if_missing || request.conversation_id.is_none(),
            model_override,
            default_model: self.models.default_id(),
            usable_models: Some(self.models.usable()),
            instance_id: self.instance_id,
            agent: agent.as_deref().map(agent_ref),
        };
        let load = Load {
            messages: vec![],
            client_message_id: client_message_id.clone(),
        };
        let streamed = answering == Answering::Streamed;
        // A new conversation's request is known before anything is stored: its one message.
        let early_new = if streamed && request.conversation_id.is_none() {
            let mut window = ContextWindow::new(None, self.context_budget_tokens);
            window.offer(MessageRole::User, &turn.text);
            self.open_early(ChatRequest {
                sampling: Default::default(),
                tools: Vec::new(),
                model: turn.model(None),
                messages: window.into_messages(),
            })
        } else {
            None
        };
        let commit = self.store.execute(conversation_id, Some(user.id), &load, {
            let turn = turn.clone();
            move |state| commands::start_turn(state, user.id, &turn)
        });
        // A turn in an existing conversation reads its context while its commit is written,
        // instead of after it, and a streamed one asks upstream as soon as it has read; the
        // read is used only if nothing else was appended between.
        let bound = turn.agent.is_some();
        let read_ahead = async {
            // An agent's turn builds its request after the commit, with the agent's own.
            if bound {
                return None;
            }
            let ahead = self
                .context_ahead(request.conversation_id?, user.id, &turn)
                .await?;
            let early = if streamed && ahead.surely_new {
                self.open_early(ahead.request.clone())
            } else {
                None
            };
            Some((ahead, early))
        };
        let (committed, mut read_ahead) = tokio::join!(commit, read_ahead);
        let committed = match committed {
            // The conversation is bound otherwise than believed: prepare the turn for its
            // agent (or none) and send it again; what was read ahead is not for it.
            Err(ExecuteError::Refused(DomainError::AgentBinding(actual))) => {
                self.remember_binding(conversation_id, actual);
                read_ahead = None;
                agent = match actual {
                    Some(id) => self.store.find_agent(id).await?.map(Arc::new),
                    None => None,
                };
                turn.agent = agent.as_deref().map(agent_ref);
                self.store
                    .execute(conversation_id, Some(user.id), &load, {
                        let turn = turn.clone();
                        move |state| commands::start_turn(state, user.id, &turn)
                    })
                    .await?
            }
            committed => committed?,
        };
        if let Some(conversation) = &committed.state.conversation {
            self.remember_binding(conversation_id, conversation.agent_id);
        }

        let Some(started) = committed.events.iter().find_map(|e| match &e.event {
            ConversationEvent::StreamStarted(s) => Some((e.seq, s.model.clone())),
            _ => None,
        }) else {
            // Nothing appended: a repeated clientMessageId. Find what it started before.
            let previous_user_message = committed
                .state
                .messages
                .values()
                .find(|m| m.client_message_id == client_message_id)
                .map(|m| m.id);
            let previous = match previous_user_message {
                Some(id) => self.store.find_turn(conversation_id, id).await?,
                None => None,
            };
            return Ok(TurnStart::Duplicate {
                conversation_id,
                previous,
            });
        };
        let created = committed
            .events
            .iter()
            .any(|e| matches!(e.event, ConversationEvent::ConversationCreated(_)));
        if let Some((ahead, _)) = read_ahead.as_mut() {
            if !created && !ahead.still_current(&committed.events) {
                self.only_checks_between(conversation_id, ahead, &committed.events)
                    .await;
            }
        }
        let (prepared, early) = match (created, &committed.state.conversation) {
            (true, Some(conversation)) => {
                let mut history: Vec<MessageRecord> =
                    committed.state.messages.values().cloned().collect();
                history.sort_by_key(|m| m.position);
                let prepared = self.request(
                    started.1.clone(),
                    conversation.system_prompt.as_deref(),
                    history,
                    turn.assistant_message_id,
                );
                (Some(prepared), early_new)
            }
            (false, Some(conversation)) => match read_ahead {
                Some((ahead, early)) if ahead.still_current(&committed.events) => {
                    if let Some(read) = ahead.read {
                        // A read, now known current: what the conversation's next turn
                        // starts from, with this turn's events applied on top.
                        self.contexts.offer(
                            conversation_id,
                            user.id,
                            ahead.last_seq,
                            conversation.system_prompt.clone(),
                            conversation.model.clone(),
                            read.rows,
                            read.whole,
                        );
                        self.contexts
                            .appended(conversation_id, None, &committed.events);
                    }
                    (Some(ahead.request), early)
                }
                _ => (None, None),
            },
            _ => (None, None),
        };
        // The request asked for early must be the one the commit decided on.
        let early = early.filter(|e| e.model == started.1);
        Ok(TurnStart::Started {
            turn: Turn {
                owner_id: user.id,
                conversation_id,
                user_message_id: turn.user_message_id,
                assistant_message_id: turn.assistant_message_id,
                started_seq: started.0,
                model: started.1,
                priority: user.priority,
                system_prompt: committed
                    .state
                    .conversation
                    .as_ref()
                    .and_then(|c| c.system_prompt.clone()),
                prepared,
                agent,
            },
            early,
        })
    }

    /// When the only events between a read ahead and the turn's commit are answer checks
    /// and ratings, which change nothing a context holds, the read stands: it is moved to
    /// the seq just before the turn (the checks of the previous answer, a background job,
    /// land there whenever a user replies fast). One small read of the log, only then.
    async fn only_checks_between(
        &self,
        conversation_id: Uuid,
        ahead: &mut ReadAhead,
        events: &[RecordedEvent],
    ) {
        /// More than this many events in between is not a check or two: read again.
        const MAX_GAP: i64 = 8;
        let [added, started] = events else {
            return;
        };
        let gap = added.seq - ahead.last_seq - 1;
        let shaped = started.seq == added.seq + 1
            && matches!(added.event, ConversationEvent::MessageAdded(_))
            && matches!(started.event, ConversationEvent::StreamStarted(_));
        if !shaped || !(1..=MAX_GAP).contains(&gap) {
            return;
        }
        let between = self
            .store
            .list_events(
                conversation_id,
                ahead.last_seq,
                Some(added.seq - 1),
                gap as u64,
            )
            .await;
        let neutral = matches!(&between, Ok(between) if between.len() as i64 == gap
        && between.iter().all(|e| matches!(
            e.event,
            ConversationEvent::AnswerValidated(_) | ConversationEvent::MessageRated(_)
        )));
        if neutral {
            ahead.last_seq = added.seq - 1;
        }
    }

    /// The agent `conversation_id` was last seen bound to, if any.
    fn believed_agent(&self, conversation_id: Uuid) -> Option<Uuid> {
        self.agent_bindings.get(conversation_id)
    }

    fn remember_binding(&self, conversation_id: Uuid, agent: Option<Uuid>) {
        self.agent_bindings.remember(conversation_id, agent);
    }

    /// The bindings this service prepares turns by, for the service that binds.
    pub fn agent_bindings(&self) -> AgentBindings {
        self.agent_bindings.clone()
    }

    /// The request for a turn before it is committed, from the context cache or a read.
    /// The cache is not used while other instances share the database: their turns do not
    /// reach it, and an entry they made stale would cost an early request thrown away.
    async fn context_ahead(
        &self,
        conversation_id: Uuid,
        owner_id: Uuid,
        turn: &NewTurn,
    ) -> Option<ReadAhead> {
        let model = |own: Option<String>| turn.model(own.as_deref());
        if !self.peers.seen() {
            let client_message_id = turn.client_message_id.as_deref();
            if let Some(cached) =
                self.contexts
                    .context(conversation_id, owner_id, &turn.text, client_message_id)
            {
                self.count_context("cache");
                return Some(ReadAhead {
                    last_seq: cached.last_seq,
                    request: ChatRequest {
                        sampling: Default::default(),
                        tools: Vec::new(),
                        model: model(cached.model),
                        messages: cached.messages,
                    },
                    read: None,
                    surely_new: cached.surely_new,
                });
            }
        }
        self.read_context_ahead(conversation_id, owner_id, turn, model)
            .await
    }

    /// The request for a turn before it is committed: the conversation's system prompt and
    /// model, and the newest usable messages that fit beside the turn's own, all from one
    /// snapshot whose `last_seq` it records. `None` if it cannot be read (not there, not
    /// the user's, or an error: the turn's own path then reads after the commit).
    async fn read_context_ahead(
        &self,
        conversation_id: Uuid,
        owner_id: Uuid,
        turn: &NewTurn,
        model: impl FnOnce(Option<String>) -> String,
    ) -> Option<ReadAhead> {
        // The snapshot's system prompt is known only once read: fill the window without
        // it, keeping every row it takes, then refill with the prompt (a prompt only leaves
        // less room, so the rows it takes are a prefix of these).
        let mut probe = ContextWindow::new(None, self.context_budget_tokens);
        probe.offer(MessageRole::User, &turn.text);
        let mut rows = Vec::new();
        let mut whole = true;
        // The read runs beside the turn's commit and may see it: then the turn's own
        // message is among the rows. Left out, the rows are the state just before the
        // commit (if nothing came after it, which the seq check then confirms).
        let mut saw_own = false;
        let read = self
            .store
            .context_snapshot(conversation_id, owner_id, |row| {
                if row.id == turn.user_message_id {
                    saw_own = true;
                    return true;
                }
                rows.push(row.clone());
                whole = probe.offer(row.role, &row.content);
                whole
            })
            .await;
        let conversation = match read {
            Ok(Some(conversation)) => {
                self.count_context("read");
                conversation
            }
            Ok(None) => return None,
            Err(err) => {
                tracing::debug!(error = %err, "reading the context ahead failed; reading it after the commit");
                return None;
            }
        };
        let mut window = ContextWindow::new(
            conversation.system_prompt.as_deref(),
            self.context_budget_tokens,
        );
        window.offer(MessageRole::User, &turn.text);
        for row in &rows {
            if !window.offer(row.role, &row.content) {
                break;
            }
        }
        Some(ReadAhead {
            // Seen with the turn's own two events last, the rows are as of two seqs back.
            last_seq: conversation.last_seq - if saw_own { 2 } else { 0 },
            request: ChatRequest {
                sampling: Default::default(),
                tools: Vec::new(),
                model: model(conversation.model),
                messages: window.into_messages(),
            },
            read: Some(ReadRows { rows, whole }),
            surely_new: turn.client_message_id.is_none(),
        })
    }

    fn count_context(&self, source: &str) {
        if let Some(metrics) = &self.metrics {
            metrics.context_reads.with_label_values(&[source]).inc();
        }
    }

    /// The upstream request for a turn: system prompt, then the newest complete messages
    /// that fit the budget, in order. The history is read newest first, a range at a time,
    /// and only until the budget is spent: a turn costs the same at the 10th message and
    /// at the 100,000th. The request is exactly what [`build_context`] makes of the whole
    /// history.
    pub async fn context_for(&self, turn: &Turn) -> ServiceResult<ChatRequest> {
        if let Some(prepared) = &turn.prepared {
            return Ok(prepared.clone());
        }
        self.count_context("after_commit");
        // An agent's instructions come first, then the conversation's own system prompt.
        let system_prompt = match (&turn.agent, &turn.system_prompt) {
            (Some(agent), Some(own)) if !agent.definition.instructions.is_empty() => {
                Some(format!("{}\n\n{own}", agent.definition.instructions))
            }
            (Some(agent), None) if !agent.definition.instructions.is_empty() => {
                Some(agent.definition.instructions.clone())
            }
            (_, own) => own.clone(),
        };
        let mut window = ContextWindow::new(system_prompt.as_deref(), self.context_budget_tokens);
        // Positions are event seqs: the newest message of the turn is at most its
        // `stream_started`.
        // An agent sees the tools earlier answers called; without one, the text alone.
        let with_tools = turn.agent.is_some();
        self.store
            .context_messages(turn.conversation_id, turn.started_seq + 1, |message| {
                let tool_calls: &[_] = match with_tools {
                    true => &message.tool_calls,
                    false => &[],
                };
                message.id == turn.assistant_message_id
                    || window.offer_turn(message.role, &message.content, tool_calls)
            })
            .await?;
        Ok(ChatRequest {
            sampling: turn
                .agent
                .as_deref()
                .map_or_else(Sampling::default, super::tools::sampling_of),
            // The agent's tools are added by the answer's loop, which knows its step.
            tools: Vec::new(),
            model: turn.model.clone(),
            messages: window.into_messages(),
        })
    }

    /// The upstream request from the history in order, without the answer being asked for.
    fn request(
        &self,
        model: String,
        system_prompt: Option<&str>,
        history: Vec<MessageRecord>,
        answer_id: Uuid,
    ) -> ChatRequest {
        let history: Vec<_> = history.into_iter().filter(|m| m.id != answer_id).collect();
        ChatRequest {
            sampling: Default::default(),
            tools: Vec::new(),
            model,
            messages: build_context(system_prompt, &history, self.context_budget_tokens),
        }
    }

    /// Commits how an answer ended; returns the `seq` of its `stream_completed` event.
    #[tracing::instrument(skip_all, fields(conversation_id = %turn.conversation_id, message_id = %turn.assistant_message_id, status = %outcome.status))]
    pub async fn finish_turn(
        &self,
        turn: &Turn,
        actor: Option<Uuid>,
        outcome: TurnOutcome,
    ) -> ServiceResult<i64> {
        let completed = StreamCompleted {
            message_id: turn.assistant_message_id,
            content: outcome.content,
            status: outcome.status,
            usage: outcome.usage,
            error: outcome.error,
            model: outcome.answered.model,
            fallback_reason: outcome.answered.fallback_reason,
            finish_reason: outcome.finish.reason,
            refusal: outcome.finish.refusal,
            first_chunk_ms: outcome.first_chunk_ms,
        };
        let committed = self
            .store
            .execute(
                turn.conversation_id,
                actor,
                &Load::messages(&[turn.assistant_message_id]),
                move |state| commands::finish_stream(state, completed.clone()),
            )
            .await?;
        committed.events.last().map(|e| e.seq).ok_or_else(|| {
            ServiceError::Internal(anyhow::anyhow!("finishing a stream appended nothing"))
        })
    }

    /// `POST /api/chat`: the whole answer at once. An upstream failure still leaves the user
    /// message stored, and the answer recorded as `failed`.
    pub async fn chat(
        &self,
        user: CurrentUser,
        request: TurnRequest,
    ) -> ServiceResult<(MessageRecord, ConversationView)> {
        let turn = match self.start_turn(user, request, Answering::Whole).await? {
            TurnStart::Started { turn, .. } => turn,
            TurnStart::Duplicate { .. } => {
                return Err(ServiceError::Conflict(
                    "this clientMessageId was already sent".into(),
                ))
            }
        };
        // The answer is the user's whether or not they wait for it: if the client goes away
        // mid-request, the spawned task still asks, and commits what it gets.
        let service = self.clone();
        let answering = turn.clone();
        let answer = tokio::spawn(async move { service.answer(&answering).await })
            .await
            .map_err(|e| ServiceError::Internal(anyhow::anyhow!("answer task failed: {e}")))??;
        if let Err(err) = answer {
            tracing::warn!(provider = self.provider.name(), error = %err, "upstream failed a chat request");
            return Err(err.into());
        }
        let conversation = self
            .store
            .find_conversation(turn.conversation_id, user.id)
            .await?
            .ok_or(ServiceError::ConversationNotFound)?;
        let messages = self.store.list_messages(turn.conversation_id).await?;
        let message = messages
            .iter()
            .find(|m| m.id == turn.assistant_message_id)
            .cloned()
            .ok_or(ServiceError::MessageNotFound)?;
        Ok((
            message,
            ConversationView {
                conversation,
                messages,
            },
        ))
    }
}

impl ChatService {
    /// Asks the provider for a whole answer and commits it, `failed` if the provider fails.
    /// Like a streamed answer it waits for its place, and falls back when its model cannot
    /// take it; an agent with tools runs the same bounded tool loop, its calls recorded in
    /// the log as they run.
    async fn answer(&self, turn: &Turn) -> ServiceResult<Result<(), ProviderError>> {
        let mut context = self.context_for(turn).await?;
        let sink = super::tools::LogSink::new(self, turn);
        let toolbox = super::tools::Toolbox {
            chat: self,
            turn,
            sink: &sink,
            settings: &self.agents,
        };
        let scope = turn.agent.clone().map(super::tools::Scope::top);
        let tools = match &scope {
            Some(scope) => toolbox.specs(scope).await,
            None => Vec::new(),
        };
        let steps = if tools.is_empty() {
            1
        } else {
            self.agents.max_steps
        };
        let mut answered = Answered::default();
        let mut usage = None;
        let mut said = String::new();
        let failed = |answered: &Answered, err: &ProviderError, said: &str, usage| TurnOutcome {
            content: said.to_string(),
            status: MessageStatus::Failed,
            usage,
            error: Some(self.failure(turn, answered, err)),
            answered: answered.clone(),
            finish: Default::default(),
            first_chunk_ms: None,
        };
        let started = std::time::Instant::now();
        let mut finish = crate::llm::Finish::default();
        let mut step = 0;
        let answer = loop {
            step += 1;
            let last = step >= steps;
            let (answer, now_answered) = loop {
                let place = self
                    .place_answer(
                        turn,
                        context.estimated_tokens(),
                        answered.clone(),
                        |_| {},
                        std::future::pending::<()>(),
                    )
                    .await;
                let placed = match place {
                    Ok(placed) => placed,
                    Err((_, answered)) => {
                        let busy = ProviderError::Busy;
                        let outcome = failed(&answered, &busy, &said, usage);
                        self.finish_turn(turn, Some(turn.owner_id), outcome).await?;
                        return Ok(Err(busy));
                    }
                };
                let request = ChatRequest {
                    sampling: context.sampling,
                    tools: if last { Vec::new() } else { tools.clone() },
                    model: placed.model.clone(),
                    messages: context.messages.clone(),
                };
                let answer = tokio::time::timeout(
                    self.upstream.with_retries(self.upstream.request_timeout),
                    self.provider.complete(request),
                )
                .await
                .unwrap_or(Err(ProviderError::Timeout));
                let mut permit = placed.permit;
                settle(&mut permit, &answer);
                drop(permit);
                match answer {
                    Err(ProviderError::CircuitOpen) => {
                        match self.fall_back(turn, &placed.answered) {
                            Some(fallback) => answered = fallback,
                            None => break (Err(ProviderError::CircuitOpen), placed.answered),
                        }
                    }
                    answer => break (answer, placed.answered),
                }
            };
            answered = now_answered;
            let completion = match answer {
                Ok(completion) => completion,
                Err(err) => break Err(err),
            };
            usage = add_usage(usage, completion.usage);
            said.push_str(&completion.content);
            finish = completion.finish.clone();
            let Some(scope) = scope.as_ref().filter(|_| !last) else {
                break Ok(());
            };
            if completion.tool_calls.is_empty() {
                break Ok(());
            }
            let calls = completion.tool_calls;
            context.messages.push(crate::llm::ChatMessage::calling(
                completion.content,
                calls.clone(),
            ));
            let results = toolbox.run_calls(scope, step, calls).await;
            context.messages.extend(results);
        };
        let outcome = match &answer {
            Ok(()) => TurnOutcome {
                content: said,
                status: MessageStatus::Complete,
                usage,
                error: None,
                answered,
                finish,
                // Not streamed: the whole answer is its first chunk.
                first_chunk_ms: Some(started.elapsed().as_millis() as i64),
            },
            Err(err) => failed(&answered, err, &said, usage),
        };
        self.finish_turn(turn, Some(turn.owner_id), outcome).await?;
        Ok(answer)
    }
}

/// Usage over several model calls: their sum.
pub fn add_usage(total: Option<Usage>, more: Option<Usage>) -> Option<Usage> {
    match (total, more) {
        (Some(a), Some(b)) => Some(Usage {
            prompt_tokens: a.prompt_tokens + b.prompt_tokens,
            completion_tokens: a.completion_tokens + b.completion_tokens,
        }),
        (a, b) => a.or(b),
    }
}

/// Corrects a call's share of its provider's tokens per minute by the usage it reported.
fn settle(permit: &mut Option<Permit>, completion: &Result<Completion, ProviderError>) {
    if let (
        Some(permit),
        Ok(Completion {
            usage: Some(usage), ..
        }),
    ) = (permit, completion)
    {
        permit.settle((usage.prompt_tokens + usage.completion_tokens).max(0) as u64);
    }
}

/// The `error` of a failed answer, with the contract's codes.
pub fn stream_error(err: &ProviderError) -> StreamError {
    let code = match err {
        ProviderError::Timeout => ErrorCode::GatewayTimeout,
        ProviderError::Upstream(_) | ProviderError::Rejected(_) => ErrorCode::BadGateway,
        ProviderError::Unavailable(_) | ProviderError::CircuitOpen | ProviderError::Busy => {
            ErrorCode::ServiceUnavailable
        }
    };
    StreamError {
        code,
        message: err.to_string(),
    }
}

/// What a turn's command needs of its agent.
fn agent_ref(agent: &AgentRecord) -> AgentRef {
    AgentRef {
        id: agent.id,
        version: agent.version,
        model: agent.definition.model.clone(),
    }
}
