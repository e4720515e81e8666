//! Building and running the application: connect, migrate, wire services, bind. Tests use
//! exactly this, on port 0.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};
use poem::Server;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::llm::{self, demo::DEMO_MODEL};
use crate::realtime::bus::{LocalRoomBus, RoomBus};
use crate::realtime::hub::{recover_interrupted, StreamHub};
use crate::service::auth::AuthService;
use crate::service::chat::ChatService;
use crate::service::conversations::ConversationService;
use crate::service::tokens::TokenKeys;
use crate::store::Store;

pub struct Application {
    port: u16,
    acceptor: TcpAcceptor,
    state: AppState,
    config: Arc<Config>,
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
        let store = Store::connect(&config.database_url).await?;
        store.migrate().await?;
        let state = build_state(&config, store)?;
        let interrupted = recover_interrupted(&state.chat).await?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "marked answers cut off by the last stop as interrupted"
            );
        }
        let address = format!("{}:{}", config.host, config.port);
        let acceptor = TcpListener::bind(address.clone())
            .into_acceptor()
            .await
            .with_context(|| format!("binding {address}"))?;
        let port = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().map(|s| s.port()))
            .context("listener has no socket address")?;
        Ok(Self {
            port,
            acceptor,
            state,
            config: Arc::new(config),
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
        Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(api::routes(self.state), shutdown_signal(), None)
            .await
            .context("server failed")
    }
}

/// HTTPS clients (the LLM upstream) use rustls with the ring provider, which sqlx already
/// builds; it must be chosen once per process before any client exists. Idempotent.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn build_state(config: &Config, store: Store) -> anyhow::Result<AppState> {
    let keys = TokenKeys::new(&config.jwt);
    let provider = llm::from_config(config)?;
    let default_model = match config.openai.api_key {
        Some(_) => config.openai.model.clone(),
        None => DEMO_MODEL.to_string(),
    };
    tracing::info!(provider = provider.name(), model = %default_model, "LLM provider configured");
    let chat = ChatService::new(
        store.clone(),
        provider,
        default_model,
        config.context_budget_tokens,
        config.upstream.clone(),
    );
    let bus: Arc<dyn RoomBus> = Arc::new(LocalRoomBus::new(config.ws_send_queue_frames));
    Ok(AppState {
        config: Arc::new(config.clone()),
        auth: AuthService::new(store.clone(), keys, config.allow_registration),
        conversations: ConversationService::new(store.clone()),
        hub: StreamHub::new(chat.clone(), bus, config.stream_checkpoint),
        chat,
        store,
        started_at: Instant::now(),
    })
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
