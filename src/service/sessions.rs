//! Live sessions: every open WebSocket of every user, so that ending a session (logout,
//! logout everywhere, a password change or reset, a disabled account) closes its sockets at
//! once, idle or not, instead of when they next send a frame. The same table enforces
//! `WS_MAX_CONNECTIONS_PER_USER`. It is process-local; with several instances, every end is
//! also handed to the [`EndRelay`] (the bus), and each instance ends its own sockets when
//! the command arrives ([`LiveSessions::end_here`]). A lost command cannot keep a session
//! alive: each socket also re-checks its sign-in and session generation before every frame.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::Metrics;

/// Why a live session was ended by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEnd {
    SignedOut,
    PasswordChanged,
    PasswordReset,
    Disabled,
}

impl SessionEnd {
    /// The close reason a client reads (at most 123 bytes, as a close frame allows).
    pub fn reason(self) -> &'static str {
        match self {
            Self::SignedOut => "session ended: signed out",
            Self::PasswordChanged => "session ended: password changed",
            Self::PasswordReset => "session ended: password reset by an admin",
            Self::Disabled => "session ended: account disabled",
        }
    }
}

/// Which of a user's sessions to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "sid", rename_all = "snake_case")]
pub enum Sessions {
    All,
    /// The sockets opened under one sign-in (refresh-token family).
    SignIn(Uuid),
    /// All but the sockets of this sign-in (the caller's own, on a password change).
    AllBut(Uuid),
}

/// One ending of sessions, as it travels between instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionsEnded {
    pub user_id: Uuid,
    pub which: Sessions,
    pub why: SessionEnd,
    /// The user's session generation after the end, when it moved: the sockets that stay
    /// open (the caller's own sign-in on a password change) belong to it from now on.
    pub generation: Option<i64>,
}

/// Carries an ending of sessions to the other instances.
pub type EndRelay = Box<dyn Fn(SessionsEnded) + Send + Sync>;

/// What a socket authenticated as: its sign-in and the session generation of its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignIn {
    pub sid: Option<Uuid>,
    pub generation: i64,
}

struct Live {
    /// The sign-in whose access token the socket last authenticated with.
    sign_in: Mutex<SignIn>,
    ended: CancellationToken,
    why: OnceLock<SessionEnd>,
}

impl Live {
    fn sign_in(&self) -> SignIn {
        *self.sign_in.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct LiveSessions {
    max_per_user: usize,
    metrics: Arc<Metrics>,
    users: Mutex<HashMap<Uuid, Vec<Arc<Live>>>>,
    relay: OnceLock<EndRelay>,
}

impl LiveSessions {
    pub fn new(max_per_user: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            max_per_user,
            metrics,
            users: Mutex::new(HashMap::new()),
            relay: OnceLock::new(),
        })
    }

    /// From now on every [`Self::end`] also goes to the other instances through `relay`.
    pub fn relay_to(&self, relay: EndRelay) {
        let _ = self.relay.set(relay);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Vec<Arc<Live>>>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a socket of `user`, or `None` if they already have the most allowed.
    pub fn open(self: &Arc<Self>, user: Uuid, sign_in: SignIn) -> Option<LiveSession> {
        let mut users = self.lock();
        let open = users.entry(user).or_default();
        if open.len() >= self.max_per_user {
            return None;
        }
        let live = Arc::new(Live {
            sign_in: Mutex::new(sign_in),
            ended: CancellationToken::new(),
            why: OnceLock::new(),
        });
        open.push(live.clone());
        self.metrics.ws_connections.inc();
        Some(LiveSession {
            registry: self.clone(),
            user,
            live,
        })
    }

    /// Ends the matching sessions on every instance; returns how many sockets were open
    /// here.
    pub fn end(&self, ended: SessionsEnded) -> usize {
        if let Some(relay) = self.relay.get() {
            relay(ended);
        }
        self.end_here(ended)
    }

    /// Ends the matching sessions of this instance only (a command from another instance).
    pub fn end_here(&self, ended: SessionsEnded) -> usize {
        let SessionsEnded {
            user_id: user,
            which,
            why,
            generation,
        } = ended;
        let users = self.lock();
        let Some(open) = users.get(&user) else {
            return 0;
        };
        let mut count = 0;
        for live in open {
            let mut sign_in = live.sign_in.lock().unwrap_or_else(|e| e.into_inner());
            let matches = match which {
                Sessions::All => true,
                Sessions::SignIn(s) => sign_in.sid == Some(s),
                Sessions::AllBut(s) => sign_in.sid != Some(s),
            };
            if matches {
                let _ = live.why.set(why);
                live.ended.cancel();
                count += 1;
            } else if let Some(generation) = generation {
                // A socket that stays (the caller's own sign-in) goes on in the new
                // generation, so its next frame's re-check accepts it.
                sign_in.generation = sign_in.generation.max(generation);
            }
        }
        if count > 0 {
            tracing::info!(user_id = %user, sockets = count, reason = why.reason(), "ended live sessions");
        }
        count
    }
}

/// One open socket's registration; dropping it unregisters the socket.
pub struct LiveSession {
    registry: Arc<LiveSessions>,
    user: Uuid,
    live: Arc<Live>,
}

impl LiveSession {
    /// After re-authentication in place: the socket now belongs to this sign-in.
    pub fn set_sign_in(&self, sign_in: SignIn) {
        *self.live.sign_in.lock().unwrap_or_else(|e| e.into_inner()) = sign_in;
    }

    /// The sign-in the socket belongs to now (re-checked before each of its frames).
    pub fn sign_in(&self) -> SignIn {
        self.live.sign_in()
    }

    /// Resolves when the server ends this session, with the reason.
    pub async fn ended(&self) -> SessionEnd {
        self.live.ended.cancelled().await;
        self.live
            .why
            .get()
            .copied()
            .unwrap_or(SessionEnd::SignedOut)
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        let mut users = self.registry.lock();
        if let Some(open) = users.get_mut(&self.user) {
            open.retain(|l| !Arc::ptr_eq(l, &self.live));
            if open.is_empty() {
                users.remove(&self.user);
            }
        }
        self.registry.metrics.ws_connections.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn signed(sid: Uuid) -> SignIn {
        SignIn {
            sid: Some(sid),
            generation: 0,
        }
    }

    fn ended(user: Uuid, which: Sessions, why: SessionEnd) -> SessionsEnded {
        SessionsEnded {
            user_id: user,
            which,
            why,
            generation: None,
        }
    }

    #[test]
    fn ending_a_sign_in_closes_only_its_sockets_and_slots_are_given_back() {
        let registry = LiveSessions::new(3, Arc::new(Metrics::new()));
        let (user, other) = (Uuid::now_v7(), Uuid::now_v7());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let on_a = registry.open(user, signed(a)).unwrap();
        let on_b = registry.open(user, signed(b)).unwrap();
        let others = registry.open(other, signed(a)).unwrap();
        assert_eq!(
            registry.end(ended(user, Sessions::SignIn(a), SessionEnd::SignedOut)),
            1
        );
        assert_eq!(on_a.ended().now_or_never(), Some(SessionEnd::SignedOut));
        assert_eq!(on_b.ended().now_or_never(), None);
        assert_eq!(others.ended().now_or_never(), None, "another user's socket");

        let change = SessionsEnded {
            generation: Some(7),
            ..ended(user, Sessions::AllBut(b), SessionEnd::PasswordChanged)
        };
        assert_eq!(registry.end(change), 1);
        assert_eq!(
            on_b.ended().now_or_never(),
            None,
            "the caller's own sign-in stays"
        );
        assert_eq!(
            on_b.sign_in().generation,
            7,
            "and goes on in the new generation"
        );
        on_b.set_sign_in(signed(a));
        registry.end(ended(user, Sessions::All, SessionEnd::Disabled));
        assert_eq!(on_b.ended().now_or_never(), Some(SessionEnd::Disabled));

        let none = SignIn {
            sid: None,
            generation: 0,
        };
        let c = registry.open(user, none).unwrap();
        assert!(registry.open(user, none).is_none(), "three open: the limit");
        drop(on_a);
        let d = registry
            .open(user, none)
            .expect("a closed socket frees its slot");
        // The sockets still open are still known: ending the user's sessions ends them.
        assert_eq!(
            registry.end(ended(user, Sessions::All, SessionEnd::SignedOut)),
            3
        );
        assert_eq!(c.ended().now_or_never(), Some(SessionEnd::SignedOut));
        assert_eq!(d.ended().now_or_never(), Some(SessionEnd::SignedOut));
    }

    #[test]
    fn every_end_goes_to_the_relay_and_a_relayed_one_is_not_sent_again() {
        let registry = LiveSessions::new(3, Arc::new(Metrics::new()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let seen = sent.clone();
        registry.relay_to(Box::new(move |e| seen.lock().unwrap().push(e)));
        let user = Uuid::now_v7();
        let socket = registry.open(user, signed(Uuid::now_v7())).unwrap();
        let all = ended(user, Sessions::All, SessionEnd::PasswordReset);
        registry.end(all);
        assert_eq!(*sent.lock().unwrap(), vec![all]);
        assert_eq!(
            socket.ended().now_or_never(),
            Some(SessionEnd::PasswordReset)
        );

        let other = registry.open(user, signed(Uuid::now_v7())).unwrap();
        assert_eq!(
            registry.end_here(all),
            2,
            "both sockets were still registered"
        );
        assert_eq!(
            sent.lock().unwrap().len(),
            1,
            "a command from elsewhere is not relayed"
        );
        assert_eq!(
            other.ended().now_or_never(),
            Some(SessionEnd::PasswordReset)
        );
    }

    #[test]
    fn the_command_round_trips_through_json() {
        let e = SessionsEnded {
            user_id: Uuid::now_v7(),
            which: Sessions::AllBut(Uuid::now_v7()),
            why: SessionEnd::PasswordChanged,
            generation: Some(3),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<SessionsEnded>(&json).unwrap(), e);
    }
}
