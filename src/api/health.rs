//! `GET /api/health`: liveness plus a real database round trip.

use chrono::Utc;
use poem_openapi::{payload::Json, ApiResponse, OpenApi};

use super::models::Health;
use super::state::AppState;
use super::Tags;

pub struct HealthApi {
    pub state: AppState,
}

#[derive(ApiResponse)]
pub enum HealthResponse {
    /// The server and its database answer.
    #[oai(status = 200)]
    Ok(Json<Health>),
    /// The server runs but the database does not answer.
    #[oai(status = 503)]
    Degraded(Json<Health>),
}

#[OpenApi(tag = "Tags::Health")]
impl HealthApi {
    /// Health check
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self) -> HealthResponse {
        let database_ok =
            tokio::time::timeout(std::time::Duration::from_secs(3), self.state.store.ping())
                .await
                .is_ok_and(|r| r.is_ok());
        let health = Health {
            status: if database_ok { "OK" } else { "DEGRADED" }.into(),
            timestamp: Utc::now(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime: self.state.started_at.elapsed().as_secs_f64(),
            database: if database_ok { "ok" } else { "unavailable" }.into(),
        };
        if database_ok {
            HealthResponse::Ok(Json(health))
        } else {
            HealthResponse::Degraded(Json(health))
        }
    }
}
