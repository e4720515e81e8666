//! argon2id password hashing with OWASP's recommended parameters (19 MiB, 2 passes, 1 lane).
//! Hashing is CPU-bound for tens of milliseconds, so it runs on the blocking pool, a bounded
//! number at a time.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ServiceError, ServiceResult};
use argon2::password_hash::{phc::PasswordHash, PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

fn hasher() -> Argon2<'static> {
    // https://cheatsheetseries.owasp.org/cheatsheets/Password_Storage_Cheat_Sheet.html#argon2id
    let params = Params::new(19 * 1024, 2, 1, None).expect("static argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Password hashing as a bounded resource. Each argon2 computation holds 19 MiB and a core
/// for tens of milliseconds, so a burst of sign-ups or guesses must queue for a permit rather
/// than run at once: at most `concurrency` computations run, the rest wait up to `wait`
/// and are then refused (503 with `Retry-After`), and memory stays bounded by the permits.
#[derive(Clone)]
pub struct PasswordHashing {
    permits: Arc<Semaphore>,
    wait: Duration,
    /// `chat_password_hashes_total`, by operation (`hash`, `verify`).
    computed: Option<prometheus::IntCounterVec>,
}

/// A refusal: every permit stayed busy for the whole wait.
const BUSY: &str = "the server is busy; try again shortly";

impl PasswordHashing {
    pub fn new(concurrency: usize, wait: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            wait,
            computed: None,
        }
    }

    /// Counts every computation in `metrics`.
    pub fn counted(mut self, metrics: &crate::metrics::Metrics) -> Self {
        self.computed = Some(metrics.password_hashes.clone());
        self
    }

    /// Twice the cores: enough to keep them busy while a request waits on the database.
    pub fn default_concurrency() -> usize {
        2 * std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    async fn permit(&self) -> ServiceResult<OwnedSemaphorePermit> {
        match tokio::time::timeout(self.wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ServiceError::Unavailable(BUSY)),
        }
    }

    /// Runs one argon2 computation on the blocking pool once a permit is free. The permit
    /// travels into the blocking task, so a request dropped mid-hash (the client went away)
    /// still holds it until the computation really ends.
    async fn compute<T: Send + 'static>(
        &self,
        op: &'static str,
        what: &'static str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> ServiceResult<T> {
        let permit = self.permit().await?;
        if let Some(computed) = &self.computed {
            computed.with_label_values(&[op]).inc();
        }
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let result = work();
            crate::allocator::return_freed_memory();
            result
        })
        .await
        .context(what)?;
        Ok(result)
    }

    pub async fn hash(&self, password: String) -> ServiceResult<String> {
        self.compute("hash", "password hashing task", move || {
            hasher()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| anyhow!("hashing password: {e}"))
        })
        .await?
        .map_err(ServiceError::from)
    }

    /// `false` for a wrong password or an unreadable hash; only a crashed task is an error.
    pub async fn verify(&self, password: String, hash: String) -> ServiceResult<bool> {
        self.compute("verify", "password verification task", move || {
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return false;
            };
            hasher()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .await
    }
}

/// A valid hash of a random password, verified against when an e-mail is unknown so that
/// a login's timing does not reveal which e-mails have accounts.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let random = uuid::Uuid::new_v4().to_string();
        hasher()
            .hash_password(random.as_bytes())
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let hashing = PasswordHashing::new(2, Duration::from_secs(10));
        let h = hashing.hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(hashing
            .verify("correct horse".into(), h.clone())
            .await
            .unwrap());
        assert!(!hashing.verify("wrong horse".into(), h).await.unwrap());
        assert!(!hashing
            .verify("x".into(), "not a hash".into())
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn with_every_permit_busy_past_the_wait_a_hash_is_refused_as_unavailable() {
        let hashing = PasswordHashing::new(1, Duration::from_millis(50));
        let held = hashing.permit().await.unwrap();
        let refused = hashing.hash("correct horse".into()).await;
        assert!(
            matches!(refused, Err(ServiceError::Unavailable(_))),
            "{refused:?}"
        );
        drop(held);
        hashing
            .hash("correct horse".into())
            .await
            .expect("a free permit");
    }

    #[tokio::test]
    async fn a_dropped_request_keeps_its_permit_until_the_hash_ends() {
        let hashing = PasswordHashing::new(1, Duration::from_secs(10));
        let task = tokio::spawn({
            let hashing = hashing.clone();
            async move { hashing.hash("correct horse".into()).await }
        });
        // Let it take the permit and start, then abandon it.
        while hashing.permits.available_permits() == 1 {
            tokio::task::yield_now().await;
        }
        task.abort();
        assert_eq!(
            hashing.permits.available_permits(),
            0,
            "the computation still runs and holds its permit"
        );
        hashing
            .hash("then mine".into())
            .await
            .expect("freed once it ends");
    }
}
