//! PostgreSQL: an instance is alive while it holds its liveness lock.
//!
//! Each instance takes a session-level advisory lock (`pg_try_advisory_lock`) on a
//! connection of its own and keeps that connection for as long as the process lives.
//! PostgreSQL releases a session's advisory locks the moment the session ends, and a killed
//! process's connections end at once (the kernel closes its sockets), so another session can
//! then take the lock: a survivor's sweep, or a restarted process, sees the dead instance
//! within one check instead of when its lease runs out. A host that vanishes without closing
//! its sockets (power loss, a cut network) keeps the lock until PostgreSQL's TCP keepalive
//! notices; the lease stays the bound for that case.
//!
//! Should the connection drop while the process lives (PostgreSQL restarted, a network
//! blip), the keeper reconnects and takes the lock again. In between, the others may take
//! the instance for dead and end its answers; its next renewal then finds its lease claimed
//! and it registers again, as after any lost lease.

use std::time::Duration;

use sea_orm::sqlx::postgres::PgConnectOptions;
use sea_orm::sqlx::{ConnectOptions, Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// `application_name` of the connection that holds the lock (operators and tests can find
/// it in `pg_stat_activity`).
pub const LIVENESS_CONNECTION_NAME: &str = "chat-liveness";

/// The advisory lock key of an instance: the low 64 bits of its id (random in a v7 UUID).
pub fn liveness_key(instance: Uuid) -> i64 {
    let bytes = instance.as_bytes();
    i64::from_be_bytes(bytes[8..].try_into().expect("a UUID has 16 bytes"))
}

/// The held lock; dropping it (or [`LivenessLock::release`]) lets the connection go.
pub struct LivenessLock {
    stop: CancellationToken,
    /// Stops the keeper when the lock is dropped without [`LivenessLock::release`].
    _stop_on_drop: tokio_util::sync::DropGuard,
    keeper: tokio::task::JoinHandle<()>,
}

impl LivenessLock {
    /// Connects and takes the lock `key`, then keeps the connection, checking it every
    /// `every` and taking the lock again on a new connection if it dropped.
    pub async fn hold(
        options: &PgConnectOptions,
        key: i64,
        every: Duration,
    ) -> anyhow::Result<Self> {
        let options = options.clone().application_name(LIVENESS_CONNECTION_NAME);
        let connection = lock(&options, key).await?;
        let stop = CancellationToken::new();
        let keeper = tokio::spawn(keep(connection, options, key, every, stop.clone()));
        Ok(Self {
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
            keeper,
        })
    }

    /// Closes the connection, which releases the lock. Call after the instance's row is
    /// gone, at a clean stop.
    pub async fn release(self) {
        self.stop.cancel();
        let _ = self.keeper.await;
    }
}

async fn lock(options: &PgConnectOptions, key: i64) -> anyhow::Result<PgConnection> {
    let mut connection = options.connect().await?;
    let (taken,): (bool,) = sea_orm::sqlx::query_as("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut connection)
        .await?;
    if !taken {
        // Only a session of this very instance could hold it: an earlier connection that
        // PostgreSQL has not yet seen close.
        anyhow::bail!("the liveness lock {key} is held by another session");
    }
    Ok(connection)
}

async fn keep(
    connection: PgConnection,
    options: PgConnectOptions,
    key: i64,
    every: Duration,
    stop: CancellationToken,
) {
    let mut connection = Some(connection);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let alive = match connection.as_mut() {
            Some(c) => c.ping().await.is_ok(),
            None => false,
        };
        if alive {
            continue;
        }
        connection = None;
        match lock(&options, key).await {
            Ok(c) => {
                tracing::warn!("the liveness lock's connection dropped; took the lock again");
                connection = Some(c);
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot take the liveness lock again; retrying")
            }
        }
    }
    if let Some(connection) = connection {
        let _ = connection.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_ids_random_half_and_tells_instances_apart() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_ne!(liveness_key(a), liveness_key(b));
        assert_eq!(liveness_key(a), liveness_key(a));
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0000_0000_0000_002a);
        assert_eq!(liveness_key(id), 42);
    }
}
