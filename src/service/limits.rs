//! Abuse limits: chat sends per user per minute and sign-ups per client address per hour
//! (governor's GCRA limiters, keyed), and failed logins in a sliding window, counted from
//! before the password check. A client over a limit gets 429 `RATE_LIMIT_EXCEEDED` with
//! `Retry-After`.
//!
//! Failed logins are limited per client address (`LOGIN_MAX_FAILURES`: one address guessing,
//! at one account or many) and per account across all addresses
//! (`LOGIN_ACCOUNT_MAX_FAILURES`, higher: many addresses guessing at one account). The
//! account-wide limit does not apply to an address that signed in to that account within
//! the last 30 days, so an attacker guessing at the allowed rate cannot lock the owner out:
//! from an address the attacker does not share, the right password keeps working.
//!
//! Several instances on PostgreSQL share the limits that protect accounts (`SharedHits`):
//! each failed login and each chat send is also recorded in `limit_hits`, and an instance
//! counts the others' hits with its own. Failed logins: the others' failures within the
//! window lower this instance's allowance (its own, and its attempts in flight, it counts in
//! memory). Chat sends: all instances' sends within the last minute are counted in the
//! database. Two instances deciding at the same moment can each let one more through: the
//! limits hold across instances to within one hit per instance. All of this only once the
//! instance has a peer (see [`Peers`]): alone, it counts exactly in memory, with no round
//! trip (failed logins are still recorded, for an instance that joins). The known-address
//! exemption and the sign-up limit stay per instance. (Concurrent answers per user are
//! shared too, by the stream hub, from the streaming messages other instances run.)

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use super::{ServiceError, ServiceResult};
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::service::peers::Peers;
use crate::store::Store;

/// How long a successful sign-in from an address exempts it from the account-wide limit.
const KNOWN_ADDRESS_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// Addresses remembered per account; the oldest goes first.
const KNOWN_ADDRESSES_PER_ACCOUNT: usize = 8;

pub struct RateLimits {
    chat: DefaultKeyedRateLimiter<Uuid>,
    chat_per_minute: u32,
    shared: Option<SharedHits>,
    registrations: DefaultKeyedRateLimiter<IpAddr>,
    logins: LoginAttempts,
    login_max_per_address: u32,
    login_max_per_account: u32,
    known: KnownAddresses,
    clock: DefaultClock,
    metrics: Arc<Metrics>,
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).expect("at least 1")
}

/// The key an address is limited under: an IPv6 address by its /64 (what one subscriber
/// usually gets, so hopping addresses within it does not reset the limit), IPv4 as it is.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl RateLimits {
    pub fn new(limits: &Limits, metrics: Arc<Metrics>) -> Self {
        let registrations = Quota::per_hour(nonzero(limits.registrations_per_hour));
        Self {
            chat: RateLimiter::keyed(Quota::per_minute(nonzero(limits.chat_per_minute))),
            chat_per_minute: limits.chat_per_minute.max(1),
            shared: None,
            registrations: RateLimiter::keyed(registrations),
            logins: LoginAttempts::new(limits.login_window),
            login_max_per_address: limits.login_max_failures.max(1),
            login_max_per_account: limits.login_account_max_failures.max(1),
            known: KnownAddresses::default(),
            clock: DefaultClock::default(),
            metrics,
        }
    }

    /// Counts the other instances' hits too (PostgreSQL), once `peers` says there are any.
    pub fn shared_with(mut self, store: Store, instance: Uuid, peers: Peers) -> Self {
        self.shared = Some(SharedHits {
            store,
            instance,
            peers,
        });
        self
    }

    /// Drops shared hits older than every window; PostgreSQL only.
    pub async fn forget_shared_hits(&self) {
        if let Some(shared) = &self.shared {
            let longest = self.logins.window.max(CHAT_WINDOW);
            if let Err(err) = shared.store.forget_limit_hits(longest).await {
                tracing::warn!(error = %err, "forgetting old limit hits failed");
            }
        }
    }

    fn refuse(&self, limit: &'static str, message: &'static str, wait: Duration) -> ServiceError {
        self.metrics.rate_limited.with_label_values(&[limit]).inc();
        ServiceError::RateLimited {
            message,
            retry_after_secs: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
        }
    }

    /// One chat send (`POST /api/chat` or `stream_chat`), counted here and, with several
    /// instances, against every instance's sends of the last minute.
    pub async fn check_chat(&self, user: Uuid) -> ServiceResult<()> {
        self.check_chat_here(user)?;
        let Some(shared) = self.shared.as_ref().filter(|s| s.peers.seen()) else {
            return Ok(());
        };
        let taken = shared
            .store
            .take_limit_hit(
                SharedKey::chat(user),
                CHAT_WINDOW,
                self.chat_per_minute,
                shared.instance,
            )
            .await?;
        if !taken {
            let wait = CHAT_WINDOW / self.chat_per_minute;
            return Err(self.refuse("chat", "too many messages; slow down", wait));
        }
        Ok(())
    }

    /// One chat send, counted by this instance alone.
    fn check_chat_here(&self, user: Uuid) -> ServiceResult<()> {
        self.chat.check_key(&user).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            self.refuse("chat", "too many messages; slow down", wait)
        })
    }

    /// One sign-up from this address (before its password is hashed).
    pub fn check_registration(&self, ip: Option<IpAddr>) -> ServiceResult<()> {
        let Some(ip) = ip else { return Ok(()) };
        self.registrations
            .check_key(&address_key(ip))
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.clock.now());
                self.refuse(
                    "registration",
                    "too many sign-ups from this address; try again later",
                    wait,
                )
            })
    }

    /// Starts a login attempt for this (normalised) e-mail and address, before the password
    /// is checked: the attempt counts as a failure until [`LoginAttempt::succeeded`] says
    /// otherwise, so parallel guesses cannot outrun the limit. With several instances, the
    /// others' recent failures on the same keys count too.
    pub async fn begin_login(
        &self,
        email: &str,
        ip: Option<IpAddr>,
    ) -> ServiceResult<LoginAttempt<'_>> {
        let address = ip.map(address_key);
        let mut keys = self.login_keys(email, address);
        if let Some(shared) = self.shared.as_ref().filter(|s| s.peers.seen()) {
            let ids: Vec<Uuid> = keys.iter().map(|(k, _)| k.shared()).collect();
            let others = shared
                .store
                .count_limit_hits(&ids, self.logins.window, shared.instance)
                .await?;
            for (key, max) in &mut keys {
                *max = max.saturating_sub(others.get(&key.shared()).copied().unwrap_or(0));
            }
        }
        self.begin(email, address, keys)
    }

    /// [`RateLimits::begin_login`] as this instance alone counts it.
    #[cfg(test)]
    fn begin_login_here(&self, email: &str, ip: Option<IpAddr>) -> ServiceResult<LoginAttempt<'_>> {
        let address = ip.map(address_key);
        let keys = self.login_keys(email, address);
        self.begin(email, address, keys)
    }

    /// The keys a login counts against, each with its maximum.
    fn login_keys(&self, email: &str, address: Option<IpAddr>) -> Vec<(LoginKey, u32)> {
        let known = address.is_some_and(|a| self.known.contains(email, a));
        let mut keys = Vec::with_capacity(2);
        if let Some(address) = address {
            keys.push((LoginKey::Address(address), self.login_max_per_address));
        }
        if !known {
            keys.push((
                LoginKey::Account(email.to_string()),
                self.login_max_per_account,
            ));
        }
        keys
    }

    fn begin(
        &self,
        email: &str,
        address: Option<IpAddr>,
        keys: Vec<(LoginKey, u32)>,
    ) -> ServiceResult<LoginAttempt<'_>> {
        match self.logins.begin(&keys) {
            Ok(()) => Ok(LoginAttempt {
                limits: self,
                keys: keys.into_iter().map(|(key, _)| key).collect(),
                email: email.to_string(),
                address,
                settled: false,
            }),
            Err(wait) => {
                tracing::warn!(
                    limit = "login",
                    "failed-login limit reached; refusing the attempt"
                );
                Err(self.refuse("login", "too many failed logins; try again later", wait))
            }
        }
    }

    /// Drops the state of keys that are back to full allowance; returns how many keys
    /// remain. Run on a timer and when metrics are scraped, so a flood of distinct keys
    /// costs memory only for as long as it counts.
    pub fn forget_idle_keys(&self) -> usize {
        self.chat.retain_recent();
        self.registrations.retain_recent();
        self.chat.shrink_to_fit();
        self.registrations.shrink_to_fit();
        let login_keys = self.logins.forget_idle() + self.known.forget_expired();
        let keys = self.chat.len() + self.registrations.len() + login_keys;
        self.metrics.limiter_keys.set(keys as i64);
        keys
    }
}

/// A login in progress. Dropped without [`LoginAttempt::succeeded`] (a wrong password, an
/// error, a client gone mid-check) it counts as a failure.
pub struct LoginAttempt<'a> {
    limits: &'a RateLimits,
    keys: Vec<LoginKey>,
    email: String,
    address: Option<IpAddr>,
    settled: bool,
}

impl LoginAttempt<'_> {
    /// The password was right: the attempt is refunded, and the address becomes known for
    /// the account (exempt from the account-wide limit).
    pub fn succeeded(mut self) {
        self.limits.logins.end(&self.keys, false);
        if let Some(address) = self.address {
            self.limits.known.remember(&self.email, address);
        }
        self.settled = true;
    }

    /// The password was wrong: a failure, recorded for the other instances before this
    /// returns (so the client's next attempt, wherever it lands, counts it).
    pub async fn failed(mut self) {
        self.limits.logins.end(&self.keys, true);
        self.settled = true;
        if let Some(shared) = &self.limits.shared {
            let ids: Vec<Uuid> = self.keys.iter().map(LoginKey::shared).collect();
            if let Err(err) = shared.store.record_limit_hits(&ids, shared.instance).await {
                tracing::warn!(error = %err, "recording a failed login for the other instances failed");
            }
        }
    }
}

impl Drop for LoginAttempt<'_> {
    /// Dropped unsettled (an error, a client gone mid-check): a failure, recorded for the
    /// other instances in the background.
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.limits.logins.end(&self.keys, true);
        if let Some(shared) = &self.limits.shared {
            let ids: Vec<Uuid> = self.keys.iter().map(LoginKey::shared).collect();
            let (store, instance) = (shared.store.clone(), shared.instance);
            tokio::spawn(async move {
                if let Err(err) = store.record_limit_hits(&ids, instance).await {
                    tracing::warn!(error = %err, "recording a failed login for the other instances failed");
                }
            });
        }
    }
}

/// How long chat sends count against `CHAT_RATE_PER_MINUTE`.
const CHAT_WINDOW: Duration = Duration::from_secs(60);

/// The instances' shared counts (see the module docs). Failed logins are recorded even
/// while this instance is alone, so an instance that joins finds them; the others' hits are
/// read, and sends recorded, only once there are peers.
struct SharedHits {
    store: Store,
    instance: Uuid,
    peers: Peers,
}

/// The key a limit's subject is counted under in `limit_hits`: a name-based UUID, so no
/// e-mail or address is stored as typed, and every instance derives the same one.
struct SharedKey;

impl SharedKey {
    const NAMESPACE: Uuid = Uuid::from_u128(0x8f1c_2b7e_4d0a_4c55_9e3b_61a7_0c2d_5f10);

    fn of(name: &str) -> Uuid {
        Uuid::new_v5(&Self::NAMESPACE, name.as_bytes())
    }

    fn chat(user: Uuid) -> Uuid {
        Self::of(&format!("chat:{user}"))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum LoginKey {
    Account(String),
    Address(IpAddr),
}

impl LoginKey {
    fn shared(&self) -> Uuid {
        match self {
            Self::Account(email) => SharedKey::of(&format!("login-account:{email}")),
            Self::Address(address) => SharedKey::of(&format!("login-address:{address}")),
        }
    }
}

/// Addresses that recently signed in to each account.
#[derive(Default)]
struct KnownAddresses(Mutex<HashMap<String, Vec<(IpAddr, Instant)>>>);

impl KnownAddresses {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<(IpAddr, Instant)>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn contains(&self, email: &str, address: IpAddr) -> bool {
        self.lock().get(email).is_some_and(|known| {
            known
                .iter()
                .any(|(a, at)| *a == address && at.elapsed() < KNOWN_ADDRESS_FOR)
        })
    }

    fn remember(&self, email: &str, address: IpAddr) {
        let mut all = self.lock();
        let known = all.entry(email.to_string()).or_default();
        known.retain(|(a, _)| *a != address);
        if known.len() >= KNOWN_ADDRESSES_PER_ACCOUNT {
            known.remove(0);
        }
        known.push((address, Instant::now()));
    }

    /// Drops what is too old to count; returns how many accounts still have known addresses.
    fn forget_expired(&self) -> usize {
        let mut all = self.lock();
        all.retain(|_, known| {
            known.retain(|(_, at)| at.elapsed() < KNOWN_ADDRESS_FOR);
            !known.is_empty()
        });
        all.shrink_to_fit();
        all.len()
    }
}

#[derive(Default)]
struct LoginCount {
    /// When each failure inside the window happened, oldest first.
    failures: VecDeque<Instant>,
    /// Attempts whose password check has not finished; they count as failures meanwhile.
    in_flight: u32,
}

/// At most so many failed logins per key (each key its own maximum) within a sliding
/// `window`. An entry lives only while it has failures inside the window or attempts in
/// flight.
struct LoginAttempts {
    window: Duration,
    counts: Mutex<HashMap<LoginKey, LoginCount>>,
}

impl LoginAttempts {
    fn new(window: Duration) -> Self {
        Self {
            window,
            counts: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LoginKey, LoginCount>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves an attempt on every key, or says how long until one is free.
    fn begin(&self, keys: &[(LoginKey, u32)]) -> Result<(), Duration> {
        let now = Instant::now();
        let mut counts = self.lock();
        let mut wait = None::<Duration>;
        for (key, max) in keys {
            let Some(count) = counts.get_mut(key) else {
                continue;
            };
            while count
                .failures
                .front()
                .is_some_and(|t| now.duration_since(*t) >= self.window)
            {
                count.failures.pop_front();
            }
            if count.failures.len() as u32 + count.in_flight >= *max {
                // Free when the oldest failure leaves the window (or, if only attempts in
                // flight fill it, as soon as they finish).
                let free_in = count.failures.front().map_or(Duration::from_secs(1), |t| {
                    self.window.saturating_sub(now.duration_since(*t))
                });
                wait = Some(wait.map_or(free_in, |w| w.max(free_in)));
            }
        }
        if let Some(wait) = wait {
            return Err(wait);
        }
        for (key, _) in keys {
            counts.entry(key.clone()).or_default().in_flight += 1;
        }
        Ok(())
    }

    fn end(&self, keys: &[LoginKey], failed: bool) {
        let now = Instant::now();
        let mut counts = self.lock();
        for key in keys {
            let Some(count) = counts.get_mut(key) else {
                continue;
            };
            count.in_flight = count.in_flight.saturating_sub(1);
            if failed {
                count.failures.push_back(now);
            }
            if count.failures.is_empty() && count.in_flight == 0 {
                counts.remove(key);
            }
        }
    }

    fn forget_idle(&self) -> usize {
        let now = Instant::now();
        let mut counts = self.lock();
        counts.retain(|_, count| {
            count
                .failures
                .retain(|t| now.duration_since(*t) < self.window);
            count.in_flight > 0 || !count.failures.is_empty()
        });
        counts.shrink_to_fit();
        counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(chat: u32, failures: u32) -> RateLimits {
        limits_with(chat, failures, failures)
    }

    fn limits_with(chat: u32, failures: u32, account_failures: u32) -> RateLimits {
        let config = Limits {
            max_body_bytes: 1,
            max_message_chars: 1,
            ws_max_connections_per_user: 1,
            ws_frames_per_second: 1,
            max_concurrent_streams_per_user: 1,
            chat_per_minute: chat,
            login_max_failures: failures,
            login_account_max_failures: account_failures,
            login_window: Duration::from_secs(900),
            ws_ping_interval: Duration::from_secs(1),
            ws_pong_timeout: Duration::from_secs(1),
            password_hash_concurrency: 1,
            password_hash_wait: Duration::from_secs(1),
            registrations_per_hour: 3,
        };
        RateLimits::new(&config, Arc::new(Metrics::new()))
    }

    #[test]
    fn chat_sends_are_limited_per_user() {
        let l = limits(3, 10);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        for _ in 0..3 {
            l.check_chat_here(a).unwrap();
        }
        match l.check_chat_here(a) {
            Err(ServiceError::RateLimited {
                retry_after_secs: Some(secs),
                ..
            }) => assert!((1..=20).contains(&secs)),
            other => panic!("{other:?}"),
        }
        l.check_chat_here(b)
            .expect("another user has their own allowance");
    }

    #[test]
    fn failed_logins_block_the_address_and_past_a_higher_limit_the_account() {
        let l = limits_with(10, 3, 5);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            drop(l.begin_login_here("a@b.co", Some(ip)).unwrap()); // a failure
        }
        assert!(
            l.begin_login_here("other@b.co", Some(ip)).is_err(),
            "the address ran out, for every e-mail"
        );
        let elsewhere: IpAddr = "10.0.0.2".parse().unwrap();
        l.begin_login_here("a@b.co", Some(elsewhere))
            .expect("one address's guesses do not block the account elsewhere")
            .succeeded();
        // Guesses from many addresses run out the account-wide allowance (the first three
        // count there too)...
        for i in 0..2 {
            let ip: IpAddr = format!("10.1.0.{i}").parse().unwrap();
            drop(l.begin_login_here("a@b.co", Some(ip)).unwrap());
        }
        let fresh: IpAddr = "10.9.9.9".parse().unwrap();
        assert!(l.begin_login_here("a@b.co", Some(fresh)).is_err());
        assert!(l.begin_login_here("a@b.co", None).is_err());
        // ...except from an address the owner signed in from.
        l.begin_login_here("a@b.co", Some(elsewhere))
            .expect("a known address is exempt from the account-wide limit")
            .succeeded();
        assert!(
            l.begin_login_here("b@b.co", Some(fresh)).is_ok(),
            "another account is unaffected"
        );
    }

    #[test]
    fn known_addresses_are_bounded_per_account() {
        let known = KnownAddresses::default();
        for i in 0..20u8 {
            known.remember("a@b.co", IpAddr::from([10, 0, 0, i]));
        }
        assert!(known.contains("a@b.co", IpAddr::from([10, 0, 0, 19])));
        assert!(!known.contains("a@b.co", IpAddr::from([10, 0, 0, 0])));
        assert_eq!(known.lock()["a@b.co"].len(), KNOWN_ADDRESSES_PER_ACCOUNT);
        assert_eq!(known.forget_expired(), 1);
    }

    #[test]
    fn attempts_in_flight_count_before_their_outcome_and_successes_are_refunded() {
        let l = limits(10, 3);
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        // Three guesses start together, none finished: a fourth may not start.
        let running: Vec<_> = (0..3)
            .map(|_| l.begin_login_here("x@y.co", Some(ip)).unwrap())
            .collect();
        assert!(l.begin_login_here("x@y.co", Some(ip)).is_err());
        // They all turn out right: nothing is left counted against the keys.
        for attempt in running {
            attempt.succeeded();
        }
        for _ in 0..3 {
            l.begin_login_here("x@y.co", Some(ip)).unwrap().succeeded();
        }
        assert_eq!(
            l.forget_idle_keys(),
            1,
            "no failures, nothing in flight: only the address now known for the account"
        );
    }

    #[test]
    fn an_ipv6_64_is_one_address_for_sign_ups() {
        let l = limits(10, 3);
        for i in 1..=3 {
            let ip: IpAddr = format!("2001:db8:1:2::{i}").parse().unwrap();
            l.check_registration(Some(ip)).unwrap();
        }
        let same_64: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert!(l.check_registration(Some(same_64)).is_err());
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        l.check_registration(Some(other_64)).unwrap();
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(address_key(v4), v4);
    }

    #[test]
    fn idle_login_keys_are_forgotten_after_the_window() {
        let attempts = LoginAttempts::new(Duration::from_millis(30));
        for i in 0..1_000 {
            let key = [(LoginKey::Account(format!("flood-{i}@example.com")), 3)];
            attempts.begin(&key).unwrap();
            attempts.end(&[key[0].0.clone()], true);
        }
        assert_eq!(
            attempts.forget_idle(),
            1_000,
            "failures inside the window count"
        );
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(
            attempts.forget_idle(),
            0,
            "all of them idle after the window"
        );
    }
}
