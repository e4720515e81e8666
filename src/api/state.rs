//! The application state handed to every handler: services, built once at start-up.

use crate::service::agents::AgentService;
use crate::service::jobs::JobRunner;
use crate::service::knowledge::KnowledgeService;
use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::realtime::hub::StreamHub;
use crate::service::auth::AuthService;
use crate::service::chat::ChatService;
use crate::service::conversations::ConversationService;
use crate::service::limits::RateLimits;
use crate::service::models::ModelRegistry;
use crate::service::sessions::LiveSessions;
use crate::store::{Store, WriteCounts};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// Cancelled once running streams are done at shutdown: sockets close then.
    pub shutdown: tokio_util::sync::CancellationToken,
    pub store: Store,
    pub auth: AuthService,
    pub conversations: ConversationService,
    pub agents: AgentService,
    pub knowledge: Arc<KnowledgeService>,
    /// Answer checks, the judge, and users' ratings.
    pub validation: Arc<crate::service::validation::ValidationService>,
    pub models: Arc<ModelRegistry>,
    pub limits: Arc<RateLimits>,
    /// Every open WebSocket, so ended sessions close theirs (and for
    /// `WS_MAX_CONNECTIONS_PER_USER`).
    pub sessions: Arc<LiveSessions>,
    pub chat: ChatService,
    pub hub: StreamHub,
    /// The background job workers (started when the server serves).
    pub jobs: Arc<JobRunner>,
    pub started_at: Instant,
}

impl AppState {
    /// Database pool gauges are read when scraped rather than tracked on every query.
    pub fn refresh_pool_metrics(&self) {
        let (size, idle) = self.store.pool_usage();
        self.metrics.db_pool_connections.set(size as i64);
        self.metrics.db_pool_idle.set(idle as i64);
        self.limits.forget_idle_keys();
        let scheduler = self.chat.scheduler();
        for provider in scheduler.providers() {
            if let Some((in_flight, waiting)) = scheduler.load(provider) {
                let labels = [provider];
                let metrics = &self.metrics;
                metrics
                    .model_calls_in_flight
                    .with_label_values(&labels)
                    .set(in_flight as i64);
                metrics
                    .model_queue_waiting
                    .with_label_values(&labels)
                    .set(waiting as i64);
                // An unbounded lane (no budget, no pushback yet) has no figure to show.
                match scheduler.share(provider) {
                    Some(share) => metrics
                        .model_budget
                        .with_label_values(&labels)
                        .set(share as i64),
                    None => {
                        let _ = metrics.model_budget.remove_label_values(&labels);
                    }
                }
                if let Some(tokens) = scheduler.tokens_available(provider) {
                    metrics
                        .model_tokens_available
                        .with_label_values(&labels)
                        .set(tokens as i64);
                }
            }
        }
        // The store counts its writes itself; the counters catch up when scraped.
        let writes = self.store.writes();
        for (counter, value) in [
            (&self.metrics.event_appends, &writes.appends),
            (&self.metrics.event_commits, &writes.commits),
            (&self.metrics.event_append_retries, &writes.retries),
            (&self.metrics.stream_checkpoints, &writes.checkpoints),
        ] {
            let value = WriteCounts::get(value);
            counter.inc_by(value.saturating_sub(counter.get()));
        }
    }
}
