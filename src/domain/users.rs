//! An account as the services see it.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::types::{Priority, Role};

#[derive(Clone, Debug)]
pub struct UserRecord {
    pub id: Uuid,
    pub email: String,
    /// argon2id PHC string; never leaves the service layer.
    pub password_hash: String,
    pub display_name: Option<String>,
    pub role: Role,
    /// Its tier in the model queue.
    pub priority: Priority,
    pub disabled: bool,
    /// Tokens issued under an older generation are refused (see `service::auth`).
    pub session_generation: i64,
    pub created_at: DateTime<Utc>,
}
