//! The one road to every model: a call takes a place among its provider's calls in flight
//! (`UPSTREAM_MAX_CONCURRENT`, or the provider's `max_concurrent` in the catalogue) before it
//! goes upstream, and gives it back when it ends. Calls beyond the budget wait in a queue:
//! interactive answers before agent sub-turns before background work; within a class, a
//! user's priority tier (`high`, `normal`, `low`) first, then fair
//! between users (the user served longest ago goes next, so one user's fifty calls put
//! another's one call at most one place back, and a user who keeps sending is served every
//! other time while another waits); each waiting call can watch its place.
//!
//! A caller that stops waiting (cancelled, or past `QUEUE_MAX_WAIT_MS`) leaves the queue by
//! dropping its ticket; a queue at `QUEUE_MAX_LENGTH` refuses at once.
//!
//! A lane is a provider's (or a catalogue model's with a budget of its own). Besides calls
//! in flight it may keep a token bucket (`UPSTREAM_TOKENS_PER_MINUTE`: a call takes its
//! estimate, [`Permit::settle`] corrects it by the reported usage), and it listens to the
//! provider ([`Feedback`]): a 429 or 503 halves the calls it lets through and successes
//! raise them back one at a time (AIMD), and `Retry-After` or a spent rate limit pauses it.
//! A lane without a configured budget lets everything through until the provider pushes
//! back.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::domain::types::Priority;

impl CallClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interactive => "interactive",
            Self::Agent => "agent",
            Self::Background => "background",
        }
    }
}

/// Who is waiting, and for what: the order of service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallClass {
    /// A user is watching: answers over the WebSocket and `POST /api/chat`.
    Interactive = 0,
    /// A step of an agent's turn on a user's behalf.
    Agent = 1,
    /// Work nobody waits on: titles, validation, embeddings.
    Background = 2,
}

/// A queue per class and priority tier, served in that order.
const QUEUES: usize = 9;

/// The queue is full: the call is refused at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("too many calls are waiting for the model")]
pub struct QueueFull;

/// A place among the provider's calls in flight; given back when dropped.
pub struct Permit {
    /// `None` once given back by other means (a permit its caller never took).
    lane: Option<Arc<Lane>>,
    /// When the place was taken, for a call sampled to measure how long calls hold a place
    /// (which predicts how long a queue waits): one in [`HOLD_SAMPLE`], and every call
    /// until the first was measured. Two clock reads are most of an uncontended call's cost.
    since: Option<std::time::Instant>,
    /// The tokens taken from the lane's per-minute budget for it (its estimate, until
    /// [`Permit::settle`] corrects it).
    tokens: u64,
}

impl Permit {
    fn new(lane: &Arc<Lane>, tokens: u64) -> Self {
        Self {
            lane: Some(lane.clone()),
            since: lane.sample_hold().then(std::time::Instant::now),
            tokens,
        }
    }

    /// Corrects the tokens the call took from its provider's per-minute budget to what the
    /// provider reported it used (prompt and completion).
    pub fn settle(&mut self, used: u64) {
        let Some(lane) = &self.lane else {
            return;
        };
        let mut state = lane.lock();
        if let Some(bucket) = &mut state.bucket {
            bucket.available -= used as f64 - self.tokens as f64;
        }
        self.tokens = used;
        lane.dispatch(&mut state);
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(lane) = self.lane.take() {
            if let Some(since) = self.since {
                lane.held(since.elapsed());
            }
            let mut state = lane.lock();
            state.in_flight -= 1;
            lane.dispatch(&mut state);
        }
    }
}

/// A waiting call. Resolves to its permit; [`Ticket::position`] watches its place (1 =
/// next). Dropped before the permit came, it leaves the queue.
pub struct Ticket {
    lane: Arc<Lane>,
    id: u64,
    permit: oneshot::Receiver<Permit>,
    position: watch::Receiver<usize>,
}

impl Ticket {
    /// Its place now (1 = next).
    pub fn position(&self) -> usize {
        *self.position.borrow()
    }

    /// Waits until the place changes; `None` once the call has its permit or left.
    pub async fn moved(&mut self) -> Option<usize> {
        self.position.changed().await.ok()?;
        Some(*self.position.borrow_and_update())
    }

    /// Waits for whichever comes first: the permit, or a new place.
    pub async fn next(&mut self) -> Waited {
        tokio::select! {
            biased;
            permit = &mut self.permit => match permit {
                Ok(permit) => Waited::Ready(permit),
                Err(_) => std::future::pending().await,
            },
            Ok(()) = self.position.changed() => Waited::Moved(*self.position.borrow_and_update()),
        }
    }

    /// About how long until its turn: its place times how long a call holds a place (a
    /// moving average of the calls that ended), over the places. `None` until a call ended.
    pub fn expected_wait(&self) -> Option<Duration> {
        let hold = self.lane.hold_micros.load(Ordering::Relaxed);
        (hold > 0).then(|| {
            let turns = self.position() as u64;
            Duration::from_micros(hold.saturating_mul(turns) / self.lane.limit().max(1) as u64)
        })
    }

    /// Waits for the permit.
    pub async fn permit(&mut self) -> Permit {
        match (&mut self.permit).await {
            Ok(permit) => permit,
            // The lane keeps the sender until it sends: unreachable while the ticket lives.
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // A permit sent but not taken is given back by dropping it here (after the lock).
        let unclaimed = self.permit.try_recv().ok();
        let mut state = self.lane.lock();
        state.remove(self.id);
        self.lane.publish_positions(&state);
        drop(state);
        drop(unclaimed);
    }
}

/// What a waiting call learns next.
pub enum Waited {
    Ready(Permit),
    Moved(usize),
}

/// Admission to a call.
pub enum Admission {
    Now(Permit),
    Queued(Ticket),
}

struct Waiter {
    id: u64,
    /// Its estimate of the tokens it will use.
    tokens: u64,
    permit: oneshot::Sender<Permit>,
    position: watch::Sender<usize>,
}

#[derive(Default)]
struct ClassQueue {
    /// Each user's waiting calls, oldest first.
    calls: HashMap<Uuid, VecDeque<Waiter>>,
}

impl ClassQueue {
    /// The user served next: the one served longest ago (a user new to the lane first),
    /// ties to the oldest waiting call. A user who keeps the queue full is served every
    /// other time while another waits too, however many calls they queued.
    fn next_user(&self, served: &HashMap<Uuid, u64>) -> Option<Uuid> {
        self.calls
            .iter()
            .min_by_key(|(user, calls)| (served.get(*user).copied().unwrap_or(0), calls[0].id))
            .map(|(user, _)| *user)
    }

    fn peek(&self, served: &HashMap<Uuid, u64>) -> Option<&Waiter> {
        self.calls.get(&self.next_user(served)?)?.front()
    }

    fn pop(&mut self, served: &mut HashMap<Uuid, u64>, tick: &mut u64) -> Option<Waiter> {
        let user = self.next_user(served)?;
        let calls = self.calls.get_mut(&user)?;
        let waiter = calls.pop_front();
        if calls.is_empty() {
            self.calls.remove(&user);
        }
        *tick += 1;
        served.insert(user, *tick);
        waiter
    }

    /// The calls in the order they would be served if nothing else arrived.
    fn order<'a>(&'a self, served: &HashMap<Uuid, u64>, tick: &mut u64) -> Vec<&'a Waiter> {
        let mut next: BinaryHeap<Reverse<(u64, u64, Uuid, usize)>> = self
            .calls
            .iter()
            .map(|(user, calls)| {
                let last = served.get(user).copied().unwrap_or(0);
                Reverse((last, calls[0].id, *user, 0))
            })
            .collect();
        let mut order = Vec::new();
        while let Some(Reverse((_, _, user, at))) = next.pop() {
            let calls = &self.calls[&user];
            order.push(&calls[at]);
            *tick += 1;
            if let Some(after) = calls.get(at + 1) {
                next.push(Reverse((*tick, after.id, user, at + 1)));
            }
        }
        order
    }
}

#[derive(Default)]
struct LaneState {
    in_flight: usize,
    waiting: usize,
    next_id: u64,
    /// By class, then by the user's tier within it: `class * 3 + tier rank`.
    classes: [ClassQueue; QUEUES],
    /// When each user was last served (a count of calls served by the lane).
    served: HashMap<Uuid, u64>,
    tick: u64,
    /// The provider asked for a pause (`Retry-After`, or a rate limit spent until its
    /// reset): nothing starts before then.
    paused_until: Option<tokio::time::Instant>,
    /// When a timer will dispatch again (a pause or the token budget ends then).
    wake_at: Option<tokio::time::Instant>,
    /// Successes since the adaptive ceiling last moved.
    successes: usize,
    /// The tokens-per-minute budget, when the provider has one.
    bucket: Option<Bucket>,
}

/// A token bucket: `per_minute` tokens, refilled continuously. A call takes its estimate
/// when it starts; `available` may go below zero when a call used more than it said.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    per_minute: f64,
    available: f64,
    refilled: tokio::time::Instant,
}

impl Bucket {
    fn refill(&mut self, now: tokio::time::Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.available = (self.available + elapsed * self.per_minute / 60.0).min(self.per_minute);
        self.refilled = now;
    }

    /// `Ok` when a call of `tokens` may start now (one larger than the whole budget waits
    /// for a full bucket), else when it may.
    fn ready(
        &mut self,
        now: tokio::time::Instant,
        tokens: u64,
    ) -> Result<(), tokio::time::Instant> {
        self.refill(now);
        let need = (tokens as f64).min(self.per_minute);
        if self.available >= need {
            return Ok(());
        }
        let seconds = (need - self.available) * 60.0 / self.per_minute;
        Err(now + Duration::from_secs_f64(seconds.min(3600.0)))
    }
}

impl LaneState {
    /// Takes a waiting call out of its queue (ids are unique: the first found is it).
    fn remove(&mut self, id: u64) {
        for class in &mut self.classes {
            let found = class.calls.iter_mut().find_map(|(user, calls)| {
                let at = calls.iter().position(|w| w.id == id)?;
                calls.remove(at);
                Some((*user, calls.is_empty()))
            });
            if let Some((user, emptied)) = found {
                self.waiting -= 1;
                if emptied {
                    class.calls.remove(&user);
                }
                return;
            }
        }
    }

    /// Whether a call of `tokens` may start now; else when to look again. Reads the clock
    /// only when the lane is paused or has a token budget.
    fn may_start(&mut self, tokens: u64) -> Result<(), tokio::time::Instant> {
        if self.paused_until.is_none() && self.bucket.is_none() {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        if let Some(until) = self.paused_until {
            if until > now {
                return Err(until);
            }
            self.paused_until = None;
        }
        match &mut self.bucket {
            Some(bucket) => bucket.ready(now, tokens),
            None => Ok(()),
        }
    }

    fn take_tokens(&mut self, tokens: u64) {
        if let Some(bucket) = &mut self.bucket {
            bucket.available -= tokens as f64;
        }
    }

    /// The estimate of the call that would be served next.
    fn next_tokens(&self) -> Option<u64> {
        self.classes
            .iter()
            .find_map(|class| class.peek(&self.served))
            .map(|w| w.tokens)
    }

    fn pop(&mut self) -> Option<Waiter> {
        let waiter = self
            .classes
            .iter_mut()
            .find_map(|class| class.pop(&mut self.served, &mut self.tick))?;
        // Forget users long gone: only the order among users who wait matters.
        if self.served.len() > MAX_REMEMBERED_USERS {
            let classes = &self.classes;
            self.served
                .retain(|user, _| classes.iter().any(|c| c.calls.contains_key(user)));
        }
        Some(waiter)
    }
}

/// Users whose last service a lane remembers before it forgets those not waiting.
const MAX_REMEMBERED_USERS: usize = 10_000;

/// The budget of a provider without one configured: as good as none, until the provider
/// pushes back (a 429 lowers it to half the calls then in flight).
const UNLIMITED: usize = 1 << 40;

/// One provider's budget and queue.
struct Lane {
    /// The provider's whole budget ([`UNLIMITED`] when none is configured).
    budget: usize,
    /// This instance's share of it (the whole while it is alone).
    limit: AtomicUsize,
    /// What the provider tolerates now: halved by a 429 or 503, raised by one after as
    /// many successes as it allows calls (additive increase, multiplicative decrease).
    ceiling: AtomicUsize,
    max_waiting: usize,
    state: Mutex<LaneState>,
    /// How long a call holds a place, in µs: a moving average (0 until one ended).
    hold_micros: std::sync::atomic::AtomicU64,
    /// Places taken, to pick the calls whose hold is measured.
    taken: std::sync::atomic::AtomicU64,
}

/// One call in this many is timed for the hold-time average.
const HOLD_SAMPLE: u64 = 8;

impl Lane {
    /// Whether the next call is timed: every one until a first hold is known, then one in
    /// [`HOLD_SAMPLE`].
    fn sample_hold(&self) -> bool {
        self.hold_micros.load(Ordering::Relaxed) == 0
            || self
                .taken
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(HOLD_SAMPLE)
    }

    /// Folds one call's time in its place into the average (each new one weighs a fifth).
    fn held(&self, held: Duration) {
        let sample = held.as_micros().min(u64::MAX as u128) as u64;
        let _ = self
            .hold_micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(match old {
                    0 => sample.max(1),
                    old => (old.saturating_mul(4).saturating_add(sample) / 5).max(1),
                })
            });
    }

    /// The calls this instance may have in flight now: its share, under the adaptive
    /// ceiling.
    fn limit(&self) -> usize {
        self.limit
            .load(Ordering::Relaxed)
            .min(self.ceiling.load(Ordering::Relaxed))
            .max(1)
    }

    /// Has a timer dispatch again at `until` (unless one already will, sooner).
    fn wake_at(self: &Arc<Self>, state: &mut LaneState, until: tokio::time::Instant) {
        if state.wake_at.is_some_and(|at| at <= until) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        state.wake_at = Some(until);
        let lane = Arc::downgrade(self);
        runtime.spawn(async move {
            tokio::time::sleep_until(until).await;
            if let Some(lane) = lane.upgrade() {
                let mut state = lane.lock();
                if state
                    .wake_at
                    .is_some_and(|at| at <= tokio::time::Instant::now())
                {
                    state.wake_at = None;
                }
                lane.dispatch(&mut state);
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands free places to the next waiting calls, then tells the rest their places.
    fn dispatch(self: &Arc<Self>, state: &mut LaneState) {
        let mut moved = false;
        while state.in_flight < self.limit() {
            let Some(tokens) = state.next_tokens() else {
                break;
            };
            if let Err(until) = state.may_start(tokens) {
                self.wake_at(state, until);
                break;
            }
            let Some(waiter) = state.pop() else {
                break;
            };
            state.waiting -= 1;
            state.in_flight += 1;
            state.take_tokens(tokens);
            moved = true;
            if let Err(mut unsent) = waiter.permit.send(Permit::new(self, tokens)) {
                // Its caller left between giving up and removing itself: the place and
                // its tokens are free again (undone here: the permit's own drop would
                // lock the lane).
                unsent.lane = None;
                state.in_flight -= 1;
                if let Some(bucket) = &mut state.bucket {
                    bucket.available += tokens as f64;
                }
            }
        }
        if moved {
            self.publish_positions(state);
        }
    }

    fn publish_positions(&self, state: &LaneState) {
        let mut place = 0;
        let mut tick = state.tick;
        for class in &state.classes {
            for waiter in class.order(&state.served, &mut tick) {
                place += 1;
                waiter.position.send_if_modified(|p| {
                    let changed = *p != place;
                    *p = place;
                    changed
                });
            }
        }
    }
}

/// What a provider's answers say about its capacity, told to its lane. A 429 or 503
/// halves the calls this instance lets through (to half of those in flight, at least one)
/// and, with `Retry-After`, pauses the lane until then; every success counts toward the
/// next raise by one (after as many successes as calls allowed: additive increase,
/// multiplicative decrease). `x-ratelimit-remaining-*` at zero pause the lane until the
/// matching `x-ratelimit-reset-*`, and `x-ratelimit-remaining-tokens` caps the lane's own
/// token count.
#[derive(Clone)]
pub struct Feedback(Vec<Arc<Lane>>);

/// The rate-limit headers of one answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub remaining_requests: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub reset_requests: Option<Duration>,
    pub reset_tokens: Option<Duration>,
}

impl Feedback {
    /// The provider refused for load (429, 503); `retry_after` when it said how long.
    /// Every lane that calls the provider (its own, and its models' with budgets of their
    /// own) takes it.
    pub fn throttled(&self, retry_after: Option<Duration>) {
        for lane in &self.0 {
            let mut state = lane.lock();
            let before = lane.limit();
            let lowered = (before.min(state.in_flight.max(1)) / 2).max(1);
            lane.ceiling.fetch_min(lowered, Ordering::Relaxed);
            state.successes = 0;
            if let Some(wait) = retry_after {
                Self::pause(lane, &mut state, wait);
            }
        }
        tracing::warn!(
            retry_after_ms = retry_after.map(|d| d.as_millis() as u64),
            "the model provider pushed back; fewer calls go to it for now"
        );
    }

    /// The provider answered; `headers` are its rate-limit headers.
    pub fn succeeded(&self, headers: RateHeaders) {
        for lane in &self.0 {
            let mut state = lane.lock();
            state.successes += 1;
            let ceiling = lane.ceiling.load(Ordering::Relaxed);
            if ceiling < lane.budget && state.successes >= ceiling {
                lane.ceiling.store(ceiling + 1, Ordering::Relaxed);
                state.successes = 0;
            }
            if headers.remaining_requests == Some(0) {
                if let Some(reset) = headers.reset_requests {
                    Self::pause(lane, &mut state, reset);
                }
            }
            if headers.remaining_tokens == Some(0) {
                if let Some(reset) = headers.reset_tokens {
                    Self::pause(lane, &mut state, reset);
                }
            }
            if let (Some(bucket), Some(remaining)) = (&mut state.bucket, headers.remaining_tokens) {
                bucket.refill(tokio::time::Instant::now());
                bucket.available = bucket.available.min(remaining as f64);
            }
            lane.dispatch(&mut state);
        }
    }

    /// How long the provider's lanes are paused from now (a retry should wait at least
    /// this long).
    pub fn paused_for(&self) -> Option<Duration> {
        let now = tokio::time::Instant::now();
        self.0
            .iter()
            .filter_map(|lane| lane.lock().paused_until)
            .map(|until| until.saturating_duration_since(now))
            .max()
            .filter(|left| !left.is_zero())
    }

    fn pause(lane: &Arc<Lane>, state: &mut LaneState, wait: Duration) {
        let until = tokio::time::Instant::now() + wait.min(Duration::from_secs(600));
        if state.paused_until.is_none_or(|at| at < until) {
            state.paused_until = Some(until);
        }
        lane.wake_at(state, until);
    }
}

/// The budgets of every provider, one lane each.
pub struct Scheduler {
    lanes: HashMap<String, Arc<Lane>>,
    max_wait: Duration,
}

/// Limits of one provider's lane.
#[derive(Clone, Copy, Debug)]
pub struct LaneLimits {
    /// Calls in flight; `None`: no budget until the provider pushes back.
    pub max_concurrent: Option<usize>,
    pub max_waiting: usize,
    /// Tokens per minute (estimated before a call, corrected by its reported usage).
    pub tokens_per_minute: Option<u64>,
}

impl Scheduler {
    /// `lanes`: each provider's limits. `max_wait`: how long a caller should wait (the
    /// caller enforces it; see [`Scheduler::max_wait`]).
    pub fn new(lanes: impl IntoIterator<Item = (String, LaneLimits)>, max_wait: Duration) -> Self {
        let lanes = lanes
            .into_iter()
            .map(|(provider, limits)| {
                let budget = limits.max_concurrent.map_or(UNLIMITED, |n| n.max(1));
                let state = LaneState {
                    bucket: limits.tokens_per_minute.map(|per_minute| Bucket {
                        per_minute: per_minute.max(1) as f64,
                        available: per_minute.max(1) as f64,
                        refilled: tokio::time::Instant::now(),
                    }),
                    ..LaneState::default()
                };
                let lane = Lane {
                    budget,
                    limit: AtomicUsize::new(budget),
                    ceiling: AtomicUsize::new(budget),
                    max_waiting: limits.max_waiting,
                    state: Mutex::new(state),
                    hold_micros: Default::default(),
                    taken: Default::default(),
                };
                (provider, Arc::new(lane))
            })
            .collect();
        Self { lanes, max_wait }
    }

    /// No budgets: every call goes at once.
    pub fn unlimited() -> Self {
        Self::new([], Duration::from_secs(30))
    }

    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// A place for a call to `provider` by `user`, expected to use `tokens`: at once if
    /// the budget has room and no one waits, else a ticket in the queue, else
    /// [`QueueFull`]. `None`: the provider has no lane (nothing to hold).
    pub fn admit(
        &self,
        provider: &str,
        user: Uuid,
        class: CallClass,
        priority: Priority,
        tokens: u64,
    ) -> Result<Option<Admission>, QueueFull> {
        let Some(lane) = self.lanes.get(provider) else {
            return Ok(None);
        };
        let mut state = lane.lock();
        if state.in_flight < lane.limit() && state.waiting == 0 {
            match state.may_start(tokens) {
                Ok(()) => {
                    state.in_flight += 1;
                    state.take_tokens(tokens);
                    return Ok(Some(Admission::Now(Permit::new(lane, tokens))));
                }
                Err(until) => lane.wake_at(&mut state, until),
            }
        }
        if state.waiting >= lane.max_waiting {
            return Err(QueueFull);
        }
        state.next_id += 1;
        let id = state.next_id;
        let (permit_tx, permit_rx) = oneshot::channel();
        let (position_tx, position_rx) = watch::channel(0);
        let queue = &mut state.classes[class as usize * 3 + priority.rank()];
        queue.calls.entry(user).or_default().push_back(Waiter {
            id,
            tokens,
            permit: permit_tx,
            position: position_tx,
        });
        state.waiting += 1;
        lane.publish_positions(&state);
        // The place it starts at is known to the caller ([`Ticket::position`]): only later
        // moves are news.
        let mut position = position_rx;
        position.borrow_and_update();
        Ok(Some(Admission::Queued(Ticket {
            lane: lane.clone(),
            id,
            permit: permit_rx,
            position,
        })))
    }

    /// A place only if one is free now and nobody waits: for a call that may go early
    /// or not at all.
    pub fn try_admit(&self, provider: &str, tokens: u64) -> Option<Option<Permit>> {
        let Some(lane) = self.lanes.get(provider) else {
            return Some(None);
        };
        let mut state = lane.lock();
        if state.in_flight < lane.limit() && state.waiting == 0 && state.may_start(tokens).is_ok() {
            state.in_flight += 1;
            state.take_tokens(tokens);
            return Some(Some(Permit::new(lane, tokens)));
        }
        None
    }

    /// Shares each provider's budget among `instances` live instances on one database:
    /// this one takes `budget / instances` places (at least one, so with more instances
    /// than places the total may pass the budget by up to one call per instance). Calls
    /// waiting here go as soon as a larger share lets them.
    pub fn share_among(&self, instances: u64) {
        let instances = instances.max(1) as usize;
        for lane in self.lanes.values() {
            let share = (lane.budget / instances).max(1);
            if lane.limit.swap(share, Ordering::Relaxed) != share {
                if lane.budget < UNLIMITED {
                    tracing::info!(
                        budget = lane.budget,
                        share,
                        instances,
                        "this instance's share of a model budget changed"
                    );
                }
                let mut state = lane.lock();
                lane.dispatch(&mut state);
            }
        }
    }

    /// The calls this instance may have in flight to `provider` now (its share, under
    /// what the provider tolerates); `None` while that is unbounded.
    pub fn share(&self, provider: &str) -> Option<usize> {
        let limit = self.lanes.get(provider)?.limit();
        (limit < UNLIMITED).then_some(limit)
    }

    /// The tokens `provider`'s per-minute budget has left now, when it has one.
    pub fn tokens_available(&self, provider: &str) -> Option<f64> {
        let lane = self.lanes.get(provider)?;
        let mut state = lane.lock();
        let bucket = state.bucket.as_mut()?;
        bucket.refill(tokio::time::Instant::now());
        Some(bucket.available)
    }

    /// What a provider's answers tell `lanes` (its own, and those of its models with
    /// budgets of their own): 429s, rate-limit headers.
    pub fn feedback(&self, lanes: &[String]) -> Option<Feedback> {
        let lanes: Vec<Arc<Lane>> = lanes
            .iter()
            .filter_map(|l| self.lanes.get(l).cloned())
            .collect();
        (!lanes.is_empty()).then_some(Feedback(lanes))
    }

    /// The providers with a lane.
    pub fn providers(&self) -> impl Iterator<Item = &str> {
        self.lanes.keys().map(String::as_str)
    }

    /// Calls in flight and waiting for `provider`.
    pub fn load(&self, provider: &str) -> Option<(usize, usize)> {
        let lane = self.lanes.get(provider)?;
        let state = lane.lock();
        Some((state.in_flight, state.waiting))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduler(limit: usize, max_waiting: usize) -> Scheduler {
        Scheduler::new(
            [(
                "p".to_string(),
                LaneLimits {
                    max_concurrent: Some(limit),
                    max_waiting,
                    tokens_per_minute: None,
                },
            )],
            Duration::from_secs(1),
        )
    }

    fn admit(s: &Scheduler, user: u128, class: CallClass) -> Admission {
        s.admit("p", Uuid::from_u128(user), class, Priority::Normal, 0)
            .unwrap()
            .unwrap()
    }

    fn ticket(a: Admission) -> Ticket {
        match a {
            Admission::Queued(t) => t,
            Admission::Now(_) => panic!("expected to wait"),
        }
    }

    fn permit(a: Admission) -> Permit {
        match a {
            Admission::Now(p) => p,
            Admission::Queued(_) => panic!("expected a place at once"),
        }
    }

    /// Drains the lane one call at a time and says whose call went in which order.
    async fn served(mut waiting: Vec<(u128, Ticket)>, first: Permit) -> Vec<u128> {
        let mut order = Vec::new();
        let mut running = first;
        while !waiting.is_empty() {
            drop(running);
            // The one whose permit arrived.
            let mut found = None;
            for (i, (_, t)) in waiting.iter_mut().enumerate() {
                if let Ok(p) = t.permit.try_recv() {
                    found = Some((i, p));
                    break;
                }
            }
            let (i, p) = found.expect("a permit was handed on");
            order.push(waiting.remove(i).0);
            running = p;
        }
        order
    }

    #[tokio::test]
    async fn within_the_budget_calls_go_at_once_and_a_free_place_goes_to_the_next() {
        let s = scheduler(2, 10);
        let a = permit(admit(&s, 1, CallClass::Interactive));
        let _b = permit(admit(&s, 1, CallClass::Interactive));
        let mut c = ticket(admit(&s, 2, CallClass::Interactive));
        assert_eq!(c.position(), 1);
        assert_eq!(s.load("p"), Some((2, 1)));
        drop(a);
        let _c = c.permit().await;
        assert_eq!(s.load("p"), Some((2, 0)));
        // A provider without a budget holds nothing.
        assert!(s
            .admit(
                "other",
                Uuid::nil(),
                CallClass::Interactive,
                Priority::Normal,
                0
            )
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn one_users_burst_does_not_put_anothers_call_behind_it() {
        let s = scheduler(1, 100);
        let first = permit(admit(&s, 1, CallClass::Interactive));
        let mut waiting: Vec<(u128, Ticket)> = (0..50)
            .map(|_| (1, ticket(admit(&s, 1, CallClass::Interactive))))
            .collect();
        let late = ticket(admit(&s, 2, CallClass::Interactive));
        assert_eq!(late.position(), 2, "one place behind the burst's next call");
        waiting.push((2, late));
        let order = served(waiting, first).await;
        assert_eq!(order[..2], [1, 2]);
        assert_eq!(order.len(), 51);
    }

    #[tokio::test]
    async fn interactive_calls_go_before_agent_steps_before_background_work() {
        let s = scheduler(1, 100);
        let first = permit(admit(&s, 1, CallClass::Interactive));
        let waiting = vec![
            (30, ticket(admit(&s, 3, CallClass::Background))),
            (20, ticket(admit(&s, 2, CallClass::Agent))),
            (10, ticket(admit(&s, 1, CallClass::Interactive))),
            (31, ticket(admit(&s, 3, CallClass::Background))),
            (11, ticket(admit(&s, 4, CallClass::Interactive))),
        ];
        let positions: Vec<usize> = waiting.iter().map(|(_, t)| t.position()).collect();
        assert_eq!(positions, [4, 3, 1, 5, 2]);
        assert_eq!(served(waiting, first).await, [10, 11, 20, 30, 31]);
    }

    #[tokio::test]
    async fn a_call_that_leaves_the_queue_moves_the_others_up_and_a_full_queue_refuses() {
        let s = scheduler(1, 2);
        let _running = permit(admit(&s, 1, CallClass::Interactive));
        let leaving = ticket(admit(&s, 1, CallClass::Interactive));
        let mut staying = ticket(admit(&s, 2, CallClass::Interactive));
        assert_eq!(staying.position(), 2);
        assert!(matches!(
            s.admit(
                "p",
                Uuid::from_u128(3),
                CallClass::Interactive,
                Priority::Normal,
                0
            ),
            Err(QueueFull)
        ));
        // Its first place is not news; a move is.
        assert!(futures::FutureExt::now_or_never(staying.moved()).is_none());
        drop(leaving);
        assert_eq!(staying.moved().await, Some(1));
        assert_eq!(s.load("p"), Some((1, 1)));
        assert!(s
            .admit(
                "p",
                Uuid::from_u128(3),
                CallClass::Interactive,
                Priority::Normal,
                0
            )
            .is_ok());
    }

    #[tokio::test]
    async fn a_permit_handed_to_a_caller_that_left_goes_to_the_next() {
        let s = scheduler(1, 10);
        let running = permit(admit(&s, 1, CallClass::Interactive));
        let gone = ticket(admit(&s, 2, CallClass::Interactive));
        let mut next = ticket(admit(&s, 3, CallClass::Interactive));
        // The permit reaches `gone`, which then drops without taking it.
        drop(running);
        drop(gone);
        let _p = next.permit().await;
        assert_eq!(s.load("p"), Some((1, 0)));
        assert!(s.try_admit("p", 0).is_none(), "the one place is taken");
    }

    #[tokio::test]
    async fn an_instance_takes_its_share_of_the_budget_and_a_larger_share_lets_waiting_calls_go() {
        let s = scheduler(4, 10);
        s.share_among(2);
        assert_eq!(s.share("p"), Some(2));
        let _a = permit(admit(&s, 1, CallClass::Interactive));
        let _b = permit(admit(&s, 2, CallClass::Interactive));
        let mut c = ticket(admit(&s, 3, CallClass::Interactive));
        // The other instance went: the whole budget is this one's, and C goes.
        s.share_among(1);
        let _c = c.permit().await;
        assert_eq!(s.load("p"), Some((3, 0)));
        // More instances than places: one each.
        s.share_among(9);
        assert_eq!(s.share("p"), Some(1));
    }

    #[tokio::test]
    async fn within_a_class_a_higher_tier_goes_first() {
        let s = scheduler(1, 100);
        let first = permit(admit(&s, 1, CallClass::Interactive));
        let tiered = |user: u128, class, priority| {
            ticket(
                s.admit("p", Uuid::from_u128(user), class, priority, 0)
                    .unwrap()
                    .unwrap(),
            )
        };
        let waiting = vec![
            (1, tiered(1, CallClass::Interactive, Priority::Low)),
            (2, tiered(2, CallClass::Interactive, Priority::Normal)),
            (3, tiered(3, CallClass::Background, Priority::High)),
            (4, tiered(4, CallClass::Interactive, Priority::High)),
        ];
        let positions: Vec<usize> = waiting.iter().map(|(_, t)| t.position()).collect();
        assert_eq!(positions, [3, 2, 4, 1]);
        assert_eq!(
            served(waiting, first).await,
            [4, 2, 1, 3],
            "a class still goes before a tier"
        );
    }

    fn lane_with_tokens(per_minute: u64) -> Scheduler {
        Scheduler::new(
            [(
                "p".to_string(),
                LaneLimits {
                    max_concurrent: None,
                    max_waiting: 100,
                    tokens_per_minute: Some(per_minute),
                },
            )],
            Duration::from_secs(1),
        )
    }

    #[tokio::test]
    async fn a_429_halves_the_calls_let_through_and_successes_raise_them_back_one_at_a_time() {
        let s = scheduler(8, 100);
        let feedback = s.feedback(&["p".to_string()]).unwrap();
        let running: Vec<Permit> = (0..4)
            .map(|u| permit(admit(&s, u, CallClass::Interactive)))
            .collect();
        feedback.throttled(None);
        assert_eq!(s.share("p"), Some(2), "half of the four in flight");
        drop(running);
        let _a = permit(admit(&s, 1, CallClass::Interactive));
        let _b = permit(admit(&s, 2, CallClass::Interactive));
        let mut third = ticket(admit(&s, 3, CallClass::Interactive));
        // One more place after as many successes as places: two.
        feedback.succeeded(RateHeaders::default());
        assert!(futures::FutureExt::now_or_never(third.permit()).is_none());
        feedback.succeeded(RateHeaders::default());
        assert_eq!(s.share("p"), Some(3));
        let _c = third.permit().await;
        for _ in 0..(3 + 4 + 5 + 6 + 7 + 8) {
            feedback.succeeded(RateHeaders::default());
        }
        assert_eq!(s.share("p"), Some(8), "back to the budget, never above it");
    }

    #[tokio::test]
    async fn a_lane_without_a_budget_is_unbounded_until_the_provider_pushes_back() {
        let s = lane_with_tokens(u64::MAX / 2);
        let feedback = s.feedback(&["p".to_string()]).unwrap();
        assert_eq!(s.share("p"), None);
        let running: Vec<Permit> = (0..10)
            .map(|u| permit(admit(&s, u, CallClass::Interactive)))
            .collect();
        feedback.throttled(None);
        assert_eq!(s.share("p"), Some(5));
        drop(running);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_and_spent_rate_limits_pause_the_lane_until_then() {
        let s = scheduler(4, 100);
        let feedback = s.feedback(&["p".to_string()]).unwrap();
        feedback.throttled(Some(Duration::from_secs(5)));
        let mut waiting = ticket(admit(&s, 1, CallClass::Interactive));
        assert!(feedback
            .paused_for()
            .is_some_and(|d| d > Duration::from_secs(4)));
        tokio::time::advance(Duration::from_millis(4_900)).await;
        assert!(futures::FutureExt::now_or_never(waiting.permit()).is_none());
        tokio::time::advance(Duration::from_millis(200)).await;
        let first = waiting.permit().await;

        // A success that says the requests are spent until a reset pauses it too.
        feedback.succeeded(RateHeaders {
            remaining_requests: Some(0),
            reset_requests: Some(Duration::from_secs(2)),
            ..RateHeaders::default()
        });
        let mut next = ticket(admit(&s, 2, CallClass::Interactive));
        tokio::time::advance(Duration::from_millis(1_900)).await;
        assert!(futures::FutureExt::now_or_never(next.permit()).is_none());
        tokio::time::advance(Duration::from_millis(200)).await;
        let _second = next.permit().await;
        drop(first);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_waits_until_its_tokens_fit_and_reported_usage_corrects_the_estimate() {
        // 600 tokens a minute: 10 a second.
        let s = lane_with_tokens(600);
        let admit_tokens = |user: u128, tokens: u64| {
            s.admit(
                "p",
                Uuid::from_u128(user),
                CallClass::Interactive,
                Priority::Normal,
                tokens,
            )
            .unwrap()
            .unwrap()
        };
        let mut big = permit(admit_tokens(1, 500));
        let mut second = ticket(admit_tokens(2, 300));
        // 100 left, 300 needed: 20 s of refill.
        tokio::time::advance(Duration::from_secs(19)).await;
        assert!(futures::FutureExt::now_or_never(second.permit()).is_none());
        tokio::time::advance(Duration::from_millis(1_100)).await;
        let _second = second.permit().await;
        assert!(s.tokens_available("p").unwrap() < 10.0);

        // The first call used 100 tokens, not 500: the 400 come back at once.
        big.settle(100);
        let left = s.tokens_available("p").unwrap();
        assert!((400.0..420.0).contains(&left), "{left}");
        let _third = permit(admit_tokens(3, 350));

        // A call larger than the whole budget goes once the bucket is full.
        let mut huge = ticket(admit_tokens(4, 10_000));
        tokio::time::advance(Duration::from_secs(50)).await;
        assert!(futures::FutureExt::now_or_never(huge.permit()).is_none());
        tokio::time::advance(Duration::from_secs(10)).await;
        let _huge = huge.permit().await;
    }
}
