//! Several server instances on one database.
//!
//! Every process is an [`Instance`] with an id of its own, recorded in each answer it
//! starts (`stream_started.instanceId`). On PostgreSQL an instance holds a lease in the
//! `instances` table and renews it every fifth of `INSTANCE_LEASE_MS`; a lease that is not
//! renewed runs out after four fifths of it. Every instance also sweeps: it claims the rows
//! of expired leases (a conditional delete, so each dead instance is claimed once) and ends
//! the answers left `streaming` by instances that are gone, as `interrupted` with their
//! checkpointed text. So an answer is ended by recovery only when the process running it has
//! stopped renewing, and at most `INSTANCE_LEASE_MS` after it died.
//!
//! SQLite serves one process: the file is locked (see [`sqlite_lock`]) and every answer
//! still `streaming` at start-up was cut off by the last stop.

pub mod pg_bus;
pub mod sqlite_lock;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
use crate::realtime::hub::StreamHub;
use crate::service::peers::Peers;
use crate::store::Store;
use sqlite_lock::SqliteLock;

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
        })
    }

    /// PostgreSQL: takes this instance's first lease. Call before anything starts answers.
    pub async fn register(&self, store: &Store) -> anyhow::Result<()> {
        if let Membership::Postgres(times) = self.membership {
            store.register_instance(self.id, times.granted).await?;
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
            Membership::Postgres(_) => sweep(store, hub).await,
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
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                renew(&store, &hub, id, times).await;
                // Another instance announces itself on the bus as it starts; should that
                // notification be lost (this listener was reconnecting), the lease table
                // still tells, within one tick.
                if !peers.seen() && matches!(store.live_instances().await, Ok(n) if n > 1) {
                    peers.mark();
                }
                if let Err(err) = sweep(&store, &hub).await.map(|_| ()) {
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
            if let Err(err) = store.register_instance(id, times.granted).await {
                tracing::error!(error = %err, "registering the instance again failed");
            }
        }
        Err(err) => tracing::warn!(error = %err, "renewing the instance lease failed"),
    }
}

/// Claims expired leases, then ends every orphaned answer: also those of an instance that
/// another survivor claimed but did not finish recovering (it died too). The read is cheap:
/// a partial index holds only the streaming answers.
/// Returns how many answers it ended.
async fn sweep(store: &Store, hub: &StreamHub) -> anyhow::Result<usize> {
    let dead = store.claim_expired_instances().await?;
    if !dead.is_empty() {
        tracing::warn!(instances = ?dead, "instances stopped renewing their leases; ending their streams");
    }
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
