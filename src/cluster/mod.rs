//! Several server instances on one database.
//!
//! Every process is an [`Instance`] with an id of its own, recorded in each answer it
//! starts (`stream_started.instanceId`). On PostgreSQL an instance holds a lease in the
//! `instances` table and renews it every fifth of `INSTANCE_LEASE_MS`; a lease that is not
//! renewed runs out after four fifths of it. It also holds a liveness lock (see
//! [`liveness`]) on a connection of its own, which PostgreSQL releases the moment the
//! process dies. Every instance sweeps: it claims the rows of instances whose liveness lock
//! is free or whose lease has expired (a conditional delete, so each dead instance is
//! claimed once) and ends the answers left `streaming` by instances that are gone, as
//! `interrupted` with their checkpointed text. A starting instance sweeps before it serves,
//! and a running one checks the locks every [`LIVENESS_CHECK_EVERY`]: a killed process's
//! answers end within that, a lost host's (whose connections stay open until PostgreSQL's
//! keepalive gives up) within `INSTANCE_LEASE_MS`.
//!
//! SQLite serves one process: the file is locked (see [`sqlite_lock`]) and every answer
//! still `streaming` at start-up was cut off by the last stop.

pub mod liveness;
pub mod pg_bus;
pub mod sqlite_lock;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
use crate::realtime::hub::StreamHub;
use crate::service::peers::Peers;
use crate::store::Store;
use liveness::{liveness_key, LivenessLock};
use sqlite_lock::SqliteLock;

/// How often a PostgreSQL instance checks the others' liveness locks: how soon after a
/// process is killed its answers end. One cheap statement per check.
pub const LIVENESS_CHECK_EVERY: Duration = Duration::from_millis(200);

/// This server process as one of the deployment's instances.
pub struct Instance {
    pub id: Uuid,
    /// Whether other instances share the database (see [`Peers`]).
    pub peers: Peers,
    membership: Membership,
    /// Stops the lease keeper, which [`Instance::leave`] waits for before deleting the row
    /// (a renewal racing the delete would take the row's absence for a lost lease).
    stop: CancellationToken,
    keeper: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// PostgreSQL: held from registration until [`Instance::leave`].
    liveness: std::sync::Mutex<Option<LivenessLock>>,
}

enum Membership {
    /// The only process on this SQLite file (`None`: an in-memory database).
    Sqlite(#[allow(dead_code)] Option<SqliteLock>),
    /// One of possibly several processes on this PostgreSQL database.
    Postgres(LeaseTimes),
}

/// How a lease of `bound` is kept: renewed every fifth of it, each renewal good for four
/// fifths, and swept as often as renewed. A process that dies right after renewing is
/// seen expired four fifths later and swept within one more fifth: `bound` in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimes {
    pub granted: Duration,
    pub every: Duration,
}

impl LeaseTimes {
    pub fn new(bound: Duration) -> Self {
        Self {
            granted: bound * 4 / 5,
            every: bound / 5,
        }
    }
}

impl Instance {
    /// Becomes an instance: on SQLite, locks the file (before migrations touch it). Then
    /// [`Instance::register`] once the schema is in place.
    pub fn join(config: &Config) -> anyhow::Result<Self> {
        let membership = if config.is_sqlite() {
            Membership::Sqlite(SqliteLock::acquire(&config.database_url)?)
        } else {
            Membership::Postgres(LeaseTimes::new(config.instance_lease))
        };
        Ok(Self {
            id: Uuid::now_v7(),
            peers: Peers::default(),
            membership,
            stop: CancellationToken::new(),
            keeper: std::sync::Mutex::new(None),
            liveness: std::sync::Mutex::new(None),
        })
    }

    /// PostgreSQL: takes this instance's liveness lock, then its first lease (in that
    /// order, so no sweep sees the row without the lock held). Call before anything starts
    /// answers.
    pub async fn register(&self, store: &Store) -> anyhow::Result<()> {
        if let Membership::Postgres(times) = self.membership {
            let options = store
                .connection()
                .get_postgres_connection_pool()
                .connect_options();
            let key = liveness_key(self.id);
            let lock = LivenessLock::hold(&options, key, times.every).await?;
            *self.liveness.lock().unwrap_or_else(|e| e.into_inner()) = Some(lock);
            store
                .register_instance(self.id, times.granted, Some(key))
                .await?;
            // The others learn of this one from the bus as it starts.
            if store.live_instances().await? > 1 {
                self.peers.mark();
            }
        }
        tracing::info!(instance_id = %self.id, "registered as a server instance");
        Ok(())
    }

    /// Ends the answers that no live instance runs: on SQLite every one still `streaming`
    /// (this process holds the file), on PostgreSQL those of expired instances.
    pub async fn recover(&self, store: &Store, hub: &StreamHub) -> anyhow::Result<usize> {
        match self.membership {
            Membership::Postgres(_) => sweep(store, hub, self.id).await,
            Membership::Sqlite(_) => hub.recover_orphans().await,
        }
    }

    /// PostgreSQL: renews the lease and sweeps for dead instances until [`Instance::leave`].
    pub fn keep_alive(&self, store: Store, hub: StreamHub) {
        let Membership::Postgres(times) = self.membership else {
            return;
        };
        let id = self.id;
        let stop = self.stop.clone();
        let peers = self.peers.clone();
        let keeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(times.every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            share_budgets(&store, &hub).await;
            let mut check = tokio::time::interval(LIVENESS_CHECK_EVERY);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                    _ = check.tick() => {
                        // Between renewals: only the locks, and recovery when one is free.
                        if let Err(err) = sweep_dead(&store, &hub, id).await {
                            tracing::warn!(error = %err, "checking the other instances' liveness failed");
                        }
                        continue;
                    }
                }
                renew(&store, &hub, id, times).await;
                share_budgets(&store, &hub).await;
                // Another instance announces itself on the bus as it starts; should that
                // notification be lost (this listener was reconnecting), the lease table
                // still tells, within one tick.
                if !peers.seen() && matches!(store.live_instances().await, Ok(n) if n > 1) {
                    peers.mark();
                }
                if let Err(err) = sweep(&store, &hub, id).await.map(|_| ()) {
                    tracing::warn!(error = %err, "sweeping for dead instances failed");
                }
            }
        });
        *self.keeper.lock().unwrap_or_else(|e| e.into_inner()) = Some(keeper);
    }

    /// A clean stop, after every running answer has been committed: the row goes, so the
    /// others have nothing to wait for.
    pub async fn leave(&self, store: &Store) {
        self.stop.cancel();
        let keeper = self.keeper.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(keeper) = keeper {
            let _ = keeper.await;
        }
        if let Membership::Postgres(_) = self.membership {
            if let Err(err) = store.release_instance(self.id).await {
                tracing::warn!(error = %err, "releasing the instance lease failed; it will expire");
            }
        }
        let lock = self
            .liveness
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(lock) = lock {
            lock.release().await;
        }
    }
}

/// Each live instance takes its share of every model budget (see
/// `Scheduler::share_among`); a dead one's share comes back within a lease tick.
async fn share_budgets(store: &Store, hub: &StreamHub) {
    match store.live_instances().await {
        Ok(live) => hub.share_model_budgets(live),
        Err(err) => tracing::warn!(error = %err, "counting the live instances failed"),
    }
}

async fn renew(store: &Store, hub: &StreamHub, id: Uuid, times: LeaseTimes) {
    match store.renew_instance(id, times.granted).await {
        Ok(true) => {}
        Ok(false) => {
            // The lease ran out (the database was out of reach, or the process stalled) and
            // a survivor has claimed it: this instance's answers are being ended elsewhere.
            // End ours too, so no socket keeps receiving an answer already completed; each
            // answer's end is committed once, by whoever comes first.
            tracing::error!(instance_id = %id, "this instance's lease was claimed by another instance; interrupting its streams and registering again");
            hub.interrupt_all();
            if let Err(err) = store
                .register_instance(id, times.granted, Some(liveness_key(id)))
                .await
            {
                tracing::error!(error = %err, "registering the instance again failed");
            }
        }
        Err(err) => tracing::warn!(error = %err, "renewing the instance lease failed"),
    }
}

/// Claims dead instances, then ends every orphaned answer: also those of an instance that
/// another survivor claimed but did not finish recovering (it died too). The read is cheap:
/// a partial index holds only the streaming answers.
/// Returns how many answers it ended.
async fn sweep(store: &Store, hub: &StreamHub, me: Uuid) -> anyhow::Result<usize> {
    claim_dead(store, me).await?;
    recover(hub).await
}

/// Claims dead instances and, only when it found some, ends their answers.
async fn sweep_dead(store: &Store, hub: &StreamHub, me: Uuid) -> anyhow::Result<usize> {
    if claim_dead(store, me).await?.is_empty() {
        return Ok(0);
    }
    recover(hub).await
}

async fn claim_dead(store: &Store, me: Uuid) -> anyhow::Result<Vec<Uuid>> {
    let dead = store.claim_dead_instances(me).await?;
    if !dead.is_empty() {
        tracing::warn!(instances = ?dead, "instances died (liveness lock free or lease expired); ending their streams");
    }
    Ok(dead)
}

async fn recover(hub: &StreamHub) -> anyhow::Result<usize> {
    let ended = hub.recover_orphans().await?;
    if ended > 0 {
        tracing::warn!(ended, "ended the streams of dead instances as interrupted");
    }
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_instance_is_seen_and_swept_within_the_configured_bound() {
        let bound = Duration::from_secs(15);
        let t = LeaseTimes::new(bound);
        assert_eq!(t.granted, Duration::from_secs(12));
        assert_eq!(t.every, Duration::from_secs(3));
        // Renewed at least twice within a lease, so one slow renewal does not kill it.
        assert!(t.granted >= t.every * 2);
        assert!(t.granted + t.every <= bound);
    }
}
