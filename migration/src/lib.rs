//! Database migrations, run at start-up and by `chat-server migrate`.
//!
//! A landed migration is history: never edit one, add a new one.

pub use sea_orm_migration::prelude::*;

mod m20261125_000001_initial;
mod m20261126_000001_session_generation;
mod m20261126_000002_instances;
mod m20261126_000003_limit_hits;
mod m20261204_000001_instance_liveness;
mod m20261204_000002_model_settings;
mod m20261204_000003_user_priority;
mod m20261204_000004_jobs;
mod m20261204_000005_fallback_reason;
mod m20261204_000006_agents;
mod m20261204_000007_conversation_agent;
mod m20261204_000008_tool_calls;
mod m20261204_000009_knowledge;
mod m20261204_000010_validation;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_initial::Migration),
            Box::new(m20261126_000001_session_generation::Migration),
            Box::new(m20261126_000002_instances::Migration),
            Box::new(m20261126_000003_limit_hits::Migration),
            Box::new(m20261204_000001_instance_liveness::Migration),
            Box::new(m20261204_000002_model_settings::Migration),
            Box::new(m20261204_000003_user_priority::Migration),
            Box::new(m20261204_000004_jobs::Migration),
            Box::new(m20261204_000005_fallback_reason::Migration),
            Box::new(m20261204_000006_agents::Migration),
            Box::new(m20261204_000007_conversation_agent::Migration),
            Box::new(m20261204_000008_tool_calls::Migration),
            Box::new(m20261204_000009_knowledge::Migration),
            Box::new(m20261204_000010_validation::Migration),
        ]
    }
}
