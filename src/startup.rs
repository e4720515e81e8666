//! Building and running the application: connect, migrate, wire services, bind. Tests use
//! exactly this, on port 0.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use poem::listener::{Acceptor, TcpAcceptor};

use crate::net::NoDelayAcceptor;
use poem::Server;

use crate::api::{self, AppState};
use crate::cluster::pg_bus::PgRoomBus;
use crate::cluster::Instance;
use crate::config::Config;
use crate::domain::follow_ups::{FollowUpRules, JUDGE_JOB, TITLE_JOB, VALIDATE_JOB};
use crate::llm;
use crate::llm::scheduler::{LaneLimits, Scheduler};
use crate::metrics::Metrics;
use crate::realtime::bus::{ClusterCommand, LocalRoomBus, RoomBus};
use crate::realtime::hub::StreamHub;
use crate::realtime::notices::{BusKnowledgeEvents, BusValidationEvents};
use crate::service::agents::AgentService;
use crate::service::auth::AuthService;
use crate::service::chat::ChatService;
use crate::service::conversations::ConversationService;
use crate::service::jobs::JobRunner;
use crate::service::knowledge::{KnowledgeService, INGEST_JOB};
use crate::service::limits::RateLimits;
use crate::service::models::ModelRegistry;
use crate::service::sessions::LiveSessions;
use crate::service::titles::TitleGenerator;
use crate::service::tokens::TokenKeys;
use crate::service::validation::ValidationService;
use crate::store::Store;

pub struct Application {
    port: u16,
    acceptor: NoDelayAcceptor<TcpAcceptor>,
    state: AppState,
    config: Arc<Config>,
    instance: Instance,
}

impl Application {
    /// Connects to the database, runs migrations and binds the listener (port 0 picks a
    /// free one: see [`Application::port`]).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        install_tls_provider();
        if let Some(path) = &config.jwt.secret_file {
            tracing::warn!(
                path = %path.display(),
                "JWT_SECRET is not set: using a development secret generated into the data folder; set JWT_SECRET in production"
            );
        }
        let instance = Instance::join(&config)?;
        let store =
            Store::connect_with_pool(&config.database_url, config.database_max_connections).await?;
        store.migrate().await?;
        instance.register(&store).await?;
        let state = build_state(&config, store, Some(&instance)).await?;
        // The admin's changes to the catalogue (the tables exist once migrated).
        state
            .models
            .reload()
            .await
            .context("reading the model settings")?;
        let interrupted = instance.recover(&state.store, &state.hub).await?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "marked answers cut off by a stop as interrupted"
            );
        }
        let address = format!("{}:{}", config.host, config.port);
        let acceptor = bind(&address)
            .await
            .with_context(|| format!("binding {address}"))?;
        let port = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().map(|s| s.port()))
            .context("listener has no socket address")?;
        Ok(Self {
            port,
            acceptor: NoDelayAcceptor(acceptor),
            state,
            config: Arc::new(config),
            instance,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        tracing::info!(
            address = %format!("http://{}:{}", self.config.host, self.port),
            database = if self.config.is_sqlite() { "sqlite" } else { "postgres" },
            "chat server listening; API docs at /docs"
        );
        let state = self.state.clone();
        let grace = self.config.shutdown_grace;
        let stop = tokio_util::sync::CancellationToken::new();
        let instance = self.instance;
        instance.keep_alive(state.store.clone(), state.hub.clone());
        let stop_jobs = tokio_util::sync::CancellationToken::new();
        let jobs = state.jobs.clone().start(stop_jobs.clone());
        // On SIGTERM/SIGINT the listener stops at once; running streams get the grace period
        // to finish, the rest are committed as `interrupted`, and then every socket is closed.
        let drained = tokio::spawn({
            let stop = stop.clone();
            let state = state.clone();
            async move {
                stop.cancelled().await;
                // Workers stop claiming; a job running now goes back to the queue.
                stop_jobs.cancel();
                state.hub.shutdown(grace).await;
                let _ = jobs.await;
                instance.leave(&state.store).await;
                // The streams' last frames are on their way through the rooms' in-memory
                // queues; let them reach the sockets before the sockets close.
                tokio::time::sleep(Duration::from_millis(250)).await;
                state.shutdown.cancel();
            }
        });
        let signal = async move {
            shutdown_signal().await;
            stop.cancel();
        };
        let served = Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(
                api::routes(self.state),
                signal,
                Some(grace + Duration::from_secs(12)),
            )
            .await
            .context("server failed");
        // The server may be done before the streams are: wait for their commits.
        let _ = drained.await;
        // Let the sockets' writers send their close frames.
        tokio::time::sleep(Duration::from_millis(200)).await;
        tracing::info!("shut down");
        served
    }
}

/// HTTPS clients (the LLM upstream) use rustls with the ring provider, which sqlx already
/// builds; it must be chosen once per process before any client exists. Idempotent.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The services of one server instance. A serving instance (its id is recorded in the
/// answers it runs) on PostgreSQL shares its rooms with the other instances through the
/// bus, and its limits once it has peers; commands that serve nothing (`openapi`,
/// `create-admin`) pass `None`.
pub async fn build_state(
    config: &Config,
    store: Store,
    instance: Option<&Instance>,
) -> anyhow::Result<AppState> {
    let instance_id = instance.map(|i| i.id);
    let peers = instance.map(|i| i.peers.clone()).unwrap_or_default();
    let keys = TokenKeys::new(&config.jwt);
    let metrics = Arc::new(Metrics::new());
    let scheduler = Arc::new(scheduler(config));
    let provider = llm::from_config(config, metrics.clone(), &scheduler)?;
    let catalogue = Arc::new(config.catalogue.clone());
    let models = Arc::new(ModelRegistry::new(catalogue.clone(), store.clone()));
    tracing::info!(provider = provider.name(), default_model = %catalogue.default_model().id, models = catalogue.models().len(), "LLM providers configured");
    let limits = RateLimits::new(&config.limits, metrics.clone());
    // With several instances on PostgreSQL, the limits that protect accounts are shared.
    let limits = Arc::new(match instance_id {
        Some(id) if !config.is_sqlite() => limits.shared_with(store.clone(), id, peers.clone()),
        _ => limits,
    });
    forget_idle_limiter_keys(Arc::downgrade(&limits));
    let chat = ChatService::new(
        store.clone(),
        provider,
        models.clone(),
        config.context_budget_tokens,
        config.upstream.clone(),
        limits.clone(),
        config.limits.max_message_chars,
    )
    .with_context_cache(config.context_cache_bytes, metrics.clone())
    .with_scheduler(scheduler, metrics.clone())
    .with_agents(config.agents.clone());
    let chat = match instance_id {
        Some(id) => chat.run_by(id, peers.clone()),
        None => chat,
    };
    let sessions = LiveSessions::new(config.limits.ws_max_connections_per_user, metrics.clone());
    let bus: Arc<dyn RoomBus> = match instance_id {
        Some(id) if !config.is_sqlite() => {
            PgRoomBus::start(
                id,
                store.clone(),
                config.ws_send_queue_frames,
                metrics.clone(),
                peers.clone(),
            )
            .await?
        }
        _ => Arc::new(LocalRoomBus::new(config.ws_send_queue_frames)),
    };
    let commands = bus.take_commands();
    // Every ending of sessions also reaches the sockets on the other instances.
    let relay = bus.clone();
    sessions.relay_to(Box::new(move |ended| {
        relay.command(ClusterCommand::EndSessions(ended))
    }));
    let announce = bus.clone();
    models.announce_with(Box::new(move || {
        announce.command(ClusterCommand::ModelsChanged)
    }));
    // A lost notification is made good within MODEL_SETTINGS_RELOAD.
    if instance_id.is_some() && !config.is_sqlite() {
        let models = Arc::downgrade(&models);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(MODEL_SETTINGS_RELOAD);
            every.tick().await;
            loop {
                every.tick().await;
                let Some(models) = models.upgrade() else {
                    return;
                };
                if let Err(err) = models.reload().await {
                    tracing::debug!(error = %err, "reading the model settings failed");
                }
            }
        });
    }
    // Titles follow a first answer only where a model can write them.
    let titles =
        config.generate_titles && config.catalogue.providers().iter().any(|p| !p.is_demo());
    let validation = ValidationService::new(
        chat.clone(),
        metrics.clone(),
        Arc::new(BusValidationEvents(bus.clone())),
    );
    let rules = FollowUpRules {
        titles,
        validation: config.validation_enabled,
        judge: config.validation_enabled && validation.judge_model().is_some(),
    };
    if rules != FollowUpRules::default() {
        let _ = store.record_follow_ups(rules);
    }
    let knowledge = Arc::new(KnowledgeService::new(
        store.clone(),
        chat.clone(),
        config.knowledge.clone(),
        config.jobs.max_attempts,
        Arc::new(BusKnowledgeEvents(bus.clone())),
    ));
    chat.search_with(&knowledge);
    let jobs = Arc::new(
        JobRunner::new(store.clone(), config.jobs.clone(), metrics.clone())
            .handle(TITLE_JOB, TitleGenerator::new(chat.clone()))
            .handle(INGEST_JOB, knowledge.clone())
            .handle(VALIDATE_JOB, validation.clone())
            .handle(JUDGE_JOB, validation.clone()),
    );
    let state = AppState {
        config: Arc::new(config.clone()),
        metrics: metrics.clone(),
        shutdown: tokio_util::sync::CancellationToken::new(),
        auth: AuthService::new(
            store.clone(),
            keys,
            config.allow_registration,
            config.admin_bootstrap.clone(),
            limits.clone(),
            crate::service::passwords::PasswordHashing::new(
                config.limits.password_hash_concurrency,
                config.limits.password_hash_wait,
            )
            .counted(&metrics),
            sessions.clone(),
        ),
        models: models.clone(),
        agents: AgentService::new(store.clone(), models.clone()),
        knowledge,
        validation,
        conversations: ConversationService::new(
            store.clone(),
            config.limits.max_message_chars,
            models.clone(),
        )
        .with_bindings(chat.agent_bindings()),
        limits,
        sessions,
        hub: StreamHub::new(
            chat.clone(),
            bus,
            config.stream_checkpoint,
            config.limits.max_concurrent_streams_per_user,
            metrics,
        ),
        chat,
        store,
        jobs,
        started_at: Instant::now(),
    };
    if let Some(mut commands) = commands {
        let hub = state.hub.clone();
        let sessions = state.sessions.clone();
        let models = state.models.clone();
        let knowledge = state.knowledge.clone();
        tokio::spawn(async move {
            while let Some(command) = commands.recv().await {
                match command {
                    ClusterCommand::EndSessions(ended) => {
                        sessions.end_here(ended);
                    }
                    ClusterCommand::ModelsChanged => {
                        let models = models.clone();
                        tokio::spawn(async move {
                            if let Err(err) = models.reload().await {
                                tracing::warn!(error = %err, "reading the model settings failed");
                            }
                        });
                    }
                    ClusterCommand::KnowledgeChanged { knowledge_base_id } => {
                        knowledge.forget(knowledge_base_id);
                    }
                    command => hub.apply(command),
                }
            }
        });
    }
    Ok(state)
}

/// The model queue: a lane for each provider, with its budget (its own `max_concurrent`
/// and `tokens_per_minute` in the catalogue, else `UPSTREAM_MAX_CONCURRENT` and
/// `UPSTREAM_TOKENS_PER_MINUTE`; without one, only what the provider's pushback sets).
fn scheduler(config: &Config) -> Scheduler {
    let upstream = &config.upstream;
    let catalogue = &config.catalogue;
    let limits = |max_concurrent: Option<u32>, tokens_per_minute: Option<u64>| LaneLimits {
        max_concurrent: max_concurrent
            .map(|n| n as usize)
            .or(upstream.max_concurrent),
        max_waiting: upstream.queue_max_length,
        tokens_per_minute: tokens_per_minute.or(upstream.tokens_per_minute),
    };
    let providers = catalogue.providers().iter().map(|provider| {
        let lane = limits(provider.max_concurrent, provider.tokens_per_minute);
        (provider.id.clone(), lane)
    });
    // A model with a budget of its own waits in a lane of its own; what it does not set
    // comes from its provider.
    let models = catalogue
        .models()
        .iter()
        .filter(|m| m.has_own_budget())
        .map(|model| {
            let provider = catalogue.provider(&model.provider);
            let lane = limits(
                model
                    .max_concurrent
                    .or(provider.and_then(|p| p.max_concurrent)),
                model
                    .tokens_per_minute
                    .or(provider.and_then(|p| p.tokens_per_minute)),
            );
            (catalogue.lane_of(&model.id), lane)
        });
    Scheduler::new(providers.chain(models), upstream.queue_max_wait)
}

/// How often an instance that shares its database reads the model settings again, should
/// an admin's change have missed it on the bus.
const MODEL_SETTINGS_RELOAD: std::time::Duration = std::time::Duration::from_secs(10);

/// Every minute, the limiters drop keys that no longer count against anything, so a flood
/// of distinct e-mails or addresses holds memory only for the length of its window (and,
/// with several instances, the shared hits older than every window). Ends with the
/// application.
fn forget_idle_limiter_keys(limits: std::sync::Weak<RateLimits>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.tick().await;
        loop {
            tick.tick().await;
            match limits.upgrade() {
                Some(limits) => {
                    limits.forget_idle_keys();
                    limits.forget_shared_hits().await;
                }
                None => break,
            }
        }
    });
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

/// Connections a listening socket holds before the server accepts them. The standard
/// library's (and tokio's) 128 is overflowed by a burst of clients connecting at once (a
/// reconnect storm after a restart): each connection dropped there waits a whole second for
/// its SYN to be sent again. The kernel caps it at `net.core.somaxconn` (4,096 by default).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the listening socket with [`LISTEN_BACKLOG`], on the first of the address's
/// resolutions that binds.
pub async fn bind(address: &str) -> anyhow::Result<TcpAcceptor> {
    let mut last_error = None;
    for socket_address in tokio::net::lookup_host(address).await? {
        let socket = if socket_address.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket
            .bind(socket_address)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(TcpAcceptor::from_tokio(listener)?),
            Err(err) => last_error = Some(err),
        }
    }
    Err(match last_error {
        Some(err) => err.into(),
        None => anyhow::anyhow!("the address resolves to nothing"),
    })
}
