//! The application state handed to every handler: services, built once at start-up.

use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::realtime::hub::StreamHub;
use crate::service::auth::AuthService;
use crate::service::chat::ChatService;
use crate::service::conversations::ConversationService;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub auth: AuthService,
    pub conversations: ConversationService,
    pub chat: ChatService,
    pub hub: StreamHub,
    pub started_at: Instant,
}
