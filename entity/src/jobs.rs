//! Durable background work: one row per job, claimed by one worker at a time for a lease.
//! `status` is `queued`, `running`, `done`, `failed` or `cancelled`; `attempts` counts
//! claims; `lease_token` names the claim that may finish the job.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub kind: String,
    /// JSON: what the job's kind needs.
    #[sea_orm(column_type = "Text")]
    pub payload: String,
    /// Higher first among due jobs.
    pub priority: i32,
    pub status: String,
    pub attempts: i32,
    /// Not claimed before this time (backoff after a failed attempt).
    pub run_at: DateTimeUtc,
    pub lease_until: Option<DateTimeUtc>,
    pub lease_token: Option<Uuid>,
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
    #[sea_orm(unique)]
    pub dedupe_key: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
