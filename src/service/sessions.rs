//! Live sessions: every open WebSocket of every user, so that ending a session (logout,
//! logout everywhere, a password change or reset, a disabled account) closes its sockets at
//! once, idle or not, instead of when they next send a frame. The same table enforces
//! `WS_MAX_CONNECTIONS_PER_USER`. It is process-local: with several instances the end
//! signals must also travel between them (the stream registry's bus, issue #10).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::Metrics;

/// Why a live session was ended by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
#[derive(Clone, Copy, Debug)]
pub enum Sessions {
    All,
    /// The sockets opened under one sign-in (refresh-token family).
    SignIn(Uuid),
    /// All but the sockets of this sign-in (the caller's own, on a password change).
    AllBut(Uuid),
}

struct Live {
    /// The sign-in whose access token the socket last authenticated with.
    sid: Mutex<Option<Uuid>>,
    ended: CancellationToken,
    why: OnceLock<SessionEnd>,
}

pub struct LiveSessions {
    max_per_user: usize,
    metrics: Arc<Metrics>,
    users: Mutex<HashMap<Uuid, Vec<Arc<Live>>>>,
}

impl LiveSessions {
    pub fn new(max_per_user: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            max_per_user,
            metrics,
            users: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Vec<Arc<Live>>>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a socket of `user`, or `None` if they already have the most allowed.
    pub fn open(self: &Arc<Self>, user: Uuid, sid: Option<Uuid>) -> Option<LiveSession> {
        let mut users = self.lock();
        let open = users.entry(user).or_default();
        if open.len() >= self.max_per_user {
            return None;
        }
        let live = Arc::new(Live {
            sid: Mutex::new(sid),
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

    /// Ends the matching sessions of `user`; returns how many were open.
    pub fn end(&self, user: Uuid, which: Sessions, why: SessionEnd) -> usize {
        let users = self.lock();
        let Some(open) = users.get(&user) else {
            return 0;
        };
        let mut ended = 0;
        for live in open {
            let sid = *live.sid.lock().unwrap_or_else(|e| e.into_inner());
            let matches = match which {
                Sessions::All => true,
                Sessions::SignIn(s) => sid == Some(s),
                Sessions::AllBut(s) => sid != Some(s),
            };
            if matches {
                let _ = live.why.set(why);
                live.ended.cancel();
                ended += 1;
            }
        }
        if ended > 0 {
            tracing::info!(user_id = %user, sockets = ended, reason = why.reason(), "ended live sessions");
        }
        ended
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
    pub fn set_sign_in(&self, sid: Option<Uuid>) {
        *self.live.sid.lock().unwrap_or_else(|e| e.into_inner()) = sid;
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

    #[test]
    fn ending_a_sign_in_closes_only_its_sockets_and_slots_are_given_back() {
        let registry = LiveSessions::new(3, Arc::new(Metrics::new()));
        let (user, other) = (Uuid::now_v7(), Uuid::now_v7());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let on_a = registry.open(user, Some(a)).unwrap();
        let on_b = registry.open(user, Some(b)).unwrap();
        let others = registry.open(other, Some(a)).unwrap();
        assert_eq!(
            registry.end(user, Sessions::SignIn(a), SessionEnd::SignedOut),
            1
        );
        assert_eq!(on_a.ended().now_or_never(), Some(SessionEnd::SignedOut));
        assert_eq!(on_b.ended().now_or_never(), None);
        assert_eq!(others.ended().now_or_never(), None, "another user's socket");

        assert_eq!(
            registry.end(user, Sessions::AllBut(b), SessionEnd::PasswordChanged),
            1
        );
        assert_eq!(
            on_b.ended().now_or_never(),
            None,
            "the caller's own sign-in stays"
        );
        on_b.set_sign_in(Some(a));
        registry.end(user, Sessions::All, SessionEnd::Disabled);
        assert_eq!(on_b.ended().now_or_never(), Some(SessionEnd::Disabled));

        let _c = registry.open(user, None).unwrap();
        assert!(registry.open(user, None).is_none(), "three open: the limit");
        drop(on_a);
        assert!(
            registry.open(user, None).is_some(),
            "a closed socket frees its slot"
        );
    }
}
