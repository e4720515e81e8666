//! The application state handed to every handler: services, built once at start-up.

use std::time::Instant;

use crate::service::auth::AuthService;
use crate::service::conversations::ConversationService;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub auth: AuthService,
    pub conversations: ConversationService,
    pub started_at: Instant,
}
