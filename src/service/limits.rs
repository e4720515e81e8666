//! Abuse limits, on governor's GCRA rate limiters (keyed, lock-free): chat sends per user per
//! minute, and failed logins per e-mail and per client IP. A client over a limit gets 429
//! `RATE_LIMIT_EXCEEDED` with `Retry-After`.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use super::{ServiceError, ServiceResult};
use crate::config::Limits;
use crate::metrics::Metrics;

pub struct RateLimits {
    chat: DefaultKeyedRateLimiter<Uuid>,
    failed_logins_by_email: DefaultKeyedRateLimiter<String>,
    failed_logins_by_ip: DefaultKeyedRateLimiter<IpAddr>,
    /// Keys whose failures ran out, until when. governor meters events but cannot be asked
    /// "would this be allowed" without spending; a blocked key must also stop a *correct*
    /// password, so the block is remembered here.
    blocked: Mutex<HashMap<BlockKey, Instant>>,
    clock: DefaultClock,
    metrics: Arc<Metrics>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum BlockKey {
    Email(String),
    Ip(IpAddr),
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).expect("at least 1")
}

impl RateLimits {
    pub fn new(limits: &Limits, metrics: Arc<Metrics>) -> Self {
        let failures = nonzero(limits.login_max_failures);
        // `failures` at once, then one more each window/failures: on average the configured
        // number per window.
        let refill = (limits.login_window / failures.get()).max(Duration::from_millis(1));
        let login_quota = Quota::with_period(refill)
            .expect("non-zero period")
            .allow_burst(failures);
        Self {
            chat: RateLimiter::keyed(Quota::per_minute(nonzero(limits.chat_per_minute))),
            failed_logins_by_email: RateLimiter::keyed(login_quota),
            failed_logins_by_ip: RateLimiter::keyed(login_quota),
            blocked: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
            metrics,
        }
    }

    fn refuse(&self, limit: &'static str, message: &'static str, wait: Duration) -> ServiceError {
        self.metrics.rate_limited.with_label_values(&[limit]).inc();
        ServiceError::RateLimited {
            message,
            retry_after_secs: Some(wait.as_secs_f64().ceil() as u64),
        }
    }

    /// One chat send (`POST /api/chat` or `stream_chat`).
    pub fn check_chat(&self, user: Uuid) -> ServiceResult<()> {
        self.chat.check_key(&user).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            self.refuse("chat", "too many messages; slow down", wait)
        })
    }

    /// Whether a login from this e-mail and address may be tried at all.
    pub fn check_login(&self, email: &str, ip: Option<IpAddr>) -> ServiceResult<()> {
        let now = Instant::now();
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        blocked.retain(|_, until| *until > now);
        let keys =
            std::iter::once(BlockKey::Email(email.to_lowercase())).chain(ip.map(BlockKey::Ip));
        let wait = keys
            .filter_map(|key| blocked.get(&key).map(|until| *until - now))
            .max();
        match wait {
            Some(wait) => {
                Err(self.refuse("login", "too many failed logins; try again later", wait))
            }
            None => Ok(()),
        }
    }

    /// Counts a failed login; past the limit the e-mail (or address) is blocked for a while.
    pub fn record_login_failure(&self, email: &str, ip: Option<IpAddr>) -> ServiceResult<()> {
        let email = email.to_lowercase();
        let now = self.clock.now();
        let mut exhausted = Vec::new();
        if let Err(not_until) = self.failed_logins_by_email.check_key(&email) {
            exhausted.push((BlockKey::Email(email), not_until.wait_time_from(now)));
        }
        if let Some(ip) = ip {
            if let Err(not_until) = self.failed_logins_by_ip.check_key(&ip) {
                exhausted.push((BlockKey::Ip(ip), not_until.wait_time_from(now)));
            }
        }
        let Some(longest) = exhausted.iter().map(|(_, wait)| *wait).max() else {
            return Ok(());
        };
        tracing::warn!(
            limit = "login",
            "failed-login limit reached; blocking further attempts for a while"
        );
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        for (key, wait) in exhausted {
            blocked.insert(key, Instant::now() + wait);
        }
        Err(self.refuse("login", "too many failed logins; try again later", longest))
    }

    /// Drops the state of keys that are back to full allowance (call now and then).
    pub fn forget_idle_keys(&self) {
        fn retain<K: Clone + Hash + Eq>(limiter: &DefaultKeyedRateLimiter<K>) {
            limiter.retain_recent();
        }
        retain(&self.chat);
        retain(&self.failed_logins_by_email);
        retain(&self.failed_logins_by_ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(chat: u32, failures: u32) -> RateLimits {
        let config = Limits {
            max_body_bytes: 1,
            max_message_chars: 1,
            ws_max_connections_per_user: 1,
            max_concurrent_streams_per_user: 1,
            chat_per_minute: chat,
            login_max_failures: failures,
            login_window: Duration::from_secs(900),
            ws_ping_interval: Duration::from_secs(1),
            ws_pong_timeout: Duration::from_secs(1),
        };
        RateLimits::new(&config, Arc::new(Metrics::new()))
    }

    #[test]
    fn chat_sends_are_limited_per_user() {
        let l = limits(3, 10);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        for _ in 0..3 {
            l.check_chat(a).unwrap();
        }
        match l.check_chat(a) {
            Err(ServiceError::RateLimited {
                retry_after_secs: Some(secs),
                ..
            }) => assert!((1..=20).contains(&secs)),
            other => panic!("{other:?}"),
        }
        l.check_chat(b)
            .expect("another user has their own allowance");
    }

    #[test]
    fn failed_logins_block_the_email_and_the_address() {
        let l = limits(10, 3);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            l.check_login("a@b.co", Some(ip)).unwrap();
            l.record_login_failure("a@b.co", Some(ip)).unwrap();
        }
        assert!(
            l.record_login_failure("A@B.co", Some(ip)).is_err(),
            "the fourth failure is over the limit"
        );
        assert!(
            l.check_login("a@b.co", None).is_err(),
            "the e-mail is blocked from anywhere"
        );
        assert!(
            l.check_login("other@b.co", Some(ip)).is_err(),
            "the address ran out too"
        );
        let elsewhere: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(
            l.check_login("other@b.co", Some(elsewhere)).is_ok(),
            "another e-mail from another address is fine"
        );
    }
}
