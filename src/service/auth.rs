//! Accounts and sessions: register, login, refresh with rotation, logout (of one sign-in or
//! everywhere), password change and reset, and turning an access token into the current
//! user (checked against the database on every request, so a disabled account, a changed
//! role or an ended session takes effect at once). Ending sessions also closes the user's
//! open sockets through [`LiveSessions`].

use std::net::IpAddr;
use std::sync::Arc;

use uuid::Uuid;

use super::limits::RateLimits;
use super::passwords::PasswordHashing;
use super::sessions::{LiveSessions, SessionEnd, Sessions, SessionsEnded, SignIn};

use super::tokens::{Claims, SessionIds, TokenKeys, TokenType};
use super::{passwords, ServiceError, ServiceResult};
use crate::config::AdminBootstrap;
use crate::domain::inputs::{bounded_text, Email, Password, MAX_DISPLAY_NAME_CHARS};
use crate::domain::types::{Priority, Role};
use crate::domain::users::UserRecord;
use crate::store::{NewRole, NewUser, RotateOutcome, Store, StoreError, UserPatch, UserUpdate};

const BAD_CREDENTIALS: &str = "invalid email or password";
const BAD_TOKEN: &str = "invalid or expired token";
const BAD_REFRESH: &str = "invalid or expired refresh token";

/// The authenticated caller, as of this request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CurrentUser {
    pub id: Uuid,
    pub role: Role,
    /// Their tier in the model queue, as of this request (or socket frame).
    pub priority: Priority,
}

/// A valid access token: who it is for, the sign-in it belongs to, and when it expires.
#[derive(Clone, Copy, Debug)]
pub struct Authenticated {
    pub user: CurrentUser,
    pub sid: Option<Uuid>,
    /// The user's session generation the token was issued in.
    pub generation: i64,
    /// Unix seconds.
    pub expires_at: i64,
}

pub struct Session {
    pub user: UserRecord,
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
}

#[derive(Clone)]
pub struct AuthService {
    limits: Arc<RateLimits>,
    hashing: PasswordHashing,
    store: Store,
    keys: TokenKeys,
    allow_registration: bool,
    admin_bootstrap: AdminBootstrap,
    live: Arc<LiveSessions>,
}

impl AuthService {
    pub fn new(
        store: Store,
        keys: TokenKeys,
        allow_registration: bool,
        admin_bootstrap: AdminBootstrap,
        limits: Arc<RateLimits>,
        hashing: PasswordHashing,
        live: Arc<LiveSessions>,
    ) -> Self {
        Self {
            live,
            limits,
            hashing,
            admin_bootstrap,
            store,
            keys,
            allow_registration,
        }
    }

    #[tracing::instrument(skip_all)]
    pub async fn register(
        &self,
        email: &str,
        password: String,
        display_name: Option<String>,
        client_ip: Option<IpAddr>,
    ) -> ServiceResult<Session> {
        if !self.allow_registration {
            return Err(ServiceError::Forbidden("registration is closed"));
        }
        let email = Email::parse(email)?;
        let password = Password::parse(password)?;
        let display_name = display_name
            .map(|n| bounded_text("displayName", &n, MAX_DISPLAY_NAME_CHARS, true))
            .transpose()?
            .filter(|n| !n.is_empty());
        self.limits.check_registration(client_ip)?;
        let password_hash = self.hashing.hash(password.expose().to_string()).await?;
        let role = match &self.admin_bootstrap {
            AdminBootstrap::FirstUser => NewRole::AdminIfFirst,
            AdminBootstrap::Email(admin) if admin == email.as_str() => NewRole::Admin,
            AdminBootstrap::Email(_) | AdminBootstrap::CommandOnly => NewRole::User,
        };
        let user = self
            .store
            .create_user(
                NewUser {
                    email: email.as_str().to_string(),
                    password_hash,
                    display_name,
                },
                role,
            )
            .await
            .map_err(|e| match e {
                StoreError::UniqueViolation(_) => {
                    ServiceError::Conflict("email is already registered".into())
                }
                other => other.into(),
            })?;
        tracing::info!(user_id = %user.id, role = %user.role, "user registered");
        self.start_session(user, Uuid::now_v7()).await
    }

    #[tracing::instrument(skip_all)]
    pub async fn login(
        &self,
        email: &str,
        password: String,
        client_ip: Option<IpAddr>,
    ) -> ServiceResult<Session> {
        // An over-long e-mail is refused before it reaches a limiter's key or a hash.
        if email.len() > Email::MAX_BYTES {
            return Err(ServiceError::Validation {
                field: "email",
                message: format!("must be at most {} bytes", Email::MAX_BYTES),
            });
        }
        let key = email.trim().to_lowercase();
        let attempt = self.limits.begin_login(&key, client_ip).await?;
        // Unknown e-mails still pay for a verification, so timing does not tell them apart.
        let user = match Email::parse(email) {
            Ok(email) => self.store.find_user_by_email(email.as_str()).await?,
            Err(_) => None,
        };
        let hash = user.as_ref().map_or_else(
            || passwords::dummy_hash().to_string(),
            |u| u.password_hash.clone(),
        );
        let matches = self.hashing.verify(password, hash).await?;
        match user {
            Some(user) if matches && !user.disabled => {
                attempt.succeeded();
                self.start_session(user, Uuid::now_v7()).await
            }
            _ => {
                attempt.failed().await;
                Err(ServiceError::Unauthorized(BAD_CREDENTIALS))
            }
        }
    }

    /// Exchanges a refresh token for a new pair. The old token is spent; presenting a spent
    /// token again revokes its whole family (every token descended from that login).
    #[tracing::instrument(skip_all)]
    pub async fn refresh(&self, refresh_token: &str) -> ServiceResult<Session> {
        let claims = self
            .keys
            .verify(refresh_token, TokenType::Refresh)
            .ok_or(ServiceError::Unauthorized(BAD_REFRESH))?;
        let user = self
            .current_user_of(&claims)
            .await?
            .ok_or(ServiceError::Unauthorized(BAD_REFRESH))?;
        // The family is only known after the rotation; the refresh token carries it when it
        // was issued with one, and the new token keeps the same family either way.
        let sid = claims.sid.unwrap_or_else(Uuid::now_v7);
        let ids = SessionIds {
            sid,
            generation: user.session_generation,
        };
        let next = self
            .keys
            .issue(TokenType::Refresh, user.id, user.role, ids)?;
        match self
            .store
            .rotate_refresh_token(claims.jti, user.id, next.id, next.expires_at)
            .await?
        {
            RotateOutcome::Rotated { family } => {
                let ids = SessionIds { sid: family, ..ids };
                let access = self
                    .keys
                    .issue(TokenType::Access, user.id, user.role, ids)?;
                Ok(Session {
                    expires_in: self.keys.access_ttl.as_secs(),
                    user,
                    access_token: access.token,
                    refresh_token: next.token,
                })
            }
            RotateOutcome::Reused => {
                tracing::warn!(user_id = %user.id, "a rotated refresh token was presented again; revoked its family");
                Err(ServiceError::Unauthorized(BAD_REFRESH))
            }
            RotateOutcome::Invalid => Err(ServiceError::Unauthorized(BAD_REFRESH)),
        }
    }

    /// Ends one sign-in: its refresh token stops working and the sockets opened with its
    /// access tokens are closed. A token that is not the caller's (or not valid) is refused,
    /// so logout cannot be used to probe other users' tokens.
    pub async fn logout(&self, user: CurrentUser, refresh_token: &str) -> ServiceResult<()> {
        let claims = self
            .keys
            .verify(refresh_token, TokenType::Refresh)
            .filter(|c| c.sub == user.id)
            .ok_or(ServiceError::Unauthorized(BAD_REFRESH))?;
        if let Some(family) = self.store.revoke_refresh_token(claims.jti, user.id).await? {
            self.live.end(SessionsEnded {
                user_id: user.id,
                which: Sessions::SignIn(family),
                why: SessionEnd::SignedOut,
                generation: None,
            });
        }
        Ok(())
    }

    /// Ends every session of the caller: all refresh tokens revoked, every access token
    /// refused from now on, every socket closed.
    pub async fn logout_everywhere(&self, user: CurrentUser) -> ServiceResult<()> {
        self.end_sessions(user.id, None, Sessions::All, SessionEnd::SignedOut)
            .await?;
        Ok(())
    }

    /// Changes the caller's password, given the current one. Every other session ends; the
    /// caller's own sign-in goes on with the new tokens returned (its sockets stay open). A
    /// wrong current password counts as a failed login for the account's e-mail.
    pub async fn change_password(
        &self,
        caller: Authenticated,
        current_password: String,
        new_password: String,
        client_ip: Option<IpAddr>,
    ) -> ServiceResult<Session> {
        let new_password = Password::parse_field("newPassword", new_password)?;
        if current_password.len() > Password::MAX_BYTES {
            return Err(ServiceError::Validation {
                field: "currentPassword",
                message: format!("must be at most {} bytes", Password::MAX_BYTES),
            });
        }
        let user = self
            .active_user(caller.user.id)
            .await?
            .ok_or(ServiceError::Unauthorized(BAD_TOKEN))?;
        let attempt = self.limits.begin_login(&user.email, client_ip).await?;
        if !self
            .hashing
            .verify(current_password, user.password_hash.clone())
            .await?
        {
            attempt.failed().await;
            return Err(ServiceError::Validation {
                field: "currentPassword",
                message: "is not the current password".into(),
            });
        }
        attempt.succeeded();
        let hash = self.hashing.hash(new_password.expose().to_string()).await?;
        let sid = caller.sid.unwrap_or_else(Uuid::now_v7);
        let generation = self
            .end_sessions(
                user.id,
                Some(hash),
                Sessions::AllBut(sid),
                SessionEnd::PasswordChanged,
            )
            .await?;
        tracing::info!(user_id = %user.id, "password changed; other sessions ended");
        let user = UserRecord {
            session_generation: generation,
            ..user
        };
        self.start_session(user, sid).await
    }

    /// An admin sets a user's password; every session of that user ends.
    pub async fn reset_password(
        &self,
        actor: CurrentUser,
        id: Uuid,
        new_password: String,
    ) -> ServiceResult<()> {
        let new_password = Password::parse(new_password)?;
        if self.store.find_user(id).await?.is_none() {
            return Err(ServiceError::UserNotFound);
        }
        let hash = self.hashing.hash(new_password.expose().to_string()).await?;
        self.end_sessions(id, Some(hash), Sessions::All, SessionEnd::PasswordReset)
            .await?;
        tracing::info!(actor = %actor.id, user_id = %id, "password reset by an admin; sessions ended");
        Ok(())
    }

    /// Bumps the generation (refusing every token issued before), revokes the refresh tokens
    /// and closes the matching sockets. Returns the new generation.
    async fn end_sessions(
        &self,
        id: Uuid,
        new_password_hash: Option<String>,
        sockets: Sessions,
        why: SessionEnd,
    ) -> ServiceResult<i64> {
        let generation = self
            .store
            .end_sessions(id, new_password_hash)
            .await?
            .ok_or(ServiceError::UserNotFound)?;
        self.live.end(SessionsEnded {
            user_id: id,
            which: sockets,
            why,
            generation: Some(generation),
        });
        Ok(generation)
    }

    /// The user behind an access token, if the token is valid and the account active.
    pub async fn authenticate(&self, access_token: &str) -> ServiceResult<CurrentUser> {
        Ok(self.authenticate_session(access_token).await?.user)
    }

    /// Like [`Self::authenticate`], with the token's sign-in and expiry (for sockets, which
    /// outlive a single request).
    pub async fn authenticate_session(&self, access_token: &str) -> ServiceResult<Authenticated> {
        let claims = self
            .keys
            .verify(access_token, TokenType::Access)
            .ok_or(ServiceError::Unauthorized(BAD_TOKEN))?;
        let user = self
            .current_user_of(&claims)
            .await?
            .ok_or(ServiceError::Unauthorized(BAD_TOKEN))?;
        Ok(Authenticated {
            user: CurrentUser {
                id: user.id,
                role: user.role,
                priority: user.priority,
            },
            sid: claims.sid,
            generation: claims.gen,
            expires_at: claims.exp,
        })
    }

    /// Like [`Self::authenticate_session`], for a socket: the token's sign-in must also
    /// still be live (not logged out), since a socket outlives the request that opens it.
    pub async fn authenticate_socket(&self, access_token: &str) -> ServiceResult<Authenticated> {
        let claims = self
            .keys
            .verify(access_token, TokenType::Access)
            .ok_or(ServiceError::Unauthorized(BAD_TOKEN))?;
        let sign_in = SignIn {
            sid: claims.sid,
            generation: claims.gen,
        };
        Ok(Authenticated {
            user: self.recheck(claims.sub, sign_in).await?,
            sid: claims.sid,
            generation: claims.gen,
            expires_at: claims.exp,
        })
    }

    /// The user of a long-lived socket as of now: still there, not disabled, with their
    /// current role, in the session generation and sign-in the socket belongs to. Sockets
    /// call this before acting on a frame, so a session ended elsewhere stops here even if
    /// the command that closes its sockets was lost.
    pub async fn recheck(&self, user_id: Uuid, sign_in: SignIn) -> ServiceResult<CurrentUser> {
        let user = self
            .store
            .find_session_user(user_id, sign_in.generation, sign_in.sid)
            .await?
            .ok_or(ServiceError::Unauthorized(BAD_TOKEN))?;
        Ok(CurrentUser {
            id: user.id,
            role: user.role,
            priority: user.priority,
        })
    }

    pub async fn me(&self, user: CurrentUser) -> ServiceResult<UserRecord> {
        self.store
            .find_user(user.id)
            .await?
            .ok_or(ServiceError::Unauthorized(BAD_TOKEN))
    }

    /// `chat-server create-admin`: makes `email` an active admin with this password,
    /// creating the account if there is none. For the operator, not the API.
    pub async fn create_admin(&self, email: &str, password: String) -> ServiceResult<UserRecord> {
        let email = Email::parse(email)?;
        let password = Password::parse(password)?;
        let password_hash = self.hashing.hash(password.expose().to_string()).await?;
        let user = match self.store.find_user_by_email(email.as_str()).await? {
            Some(existing) => {
                self.store
                    .set_password_hash(existing.id, &password_hash)
                    .await?;
                let patch = UserPatch {
                    role: Some(Role::Admin),
                    disabled: Some(false),
                    priority: None,
                };
                match self.store.update_user(existing.id, patch).await? {
                    UserUpdate::Updated(user) => user,
                    UserUpdate::NotFound | UserUpdate::LastAdmin => {
                        return Err(ServiceError::UserNotFound)
                    }
                }
            }
            None => {
                let new = NewUser {
                    email: email.as_str().to_string(),
                    password_hash,
                    display_name: None,
                };
                self.store.create_user(new, NewRole::Admin).await?
            }
        };
        tracing::info!(user_id = %user.id, "admin created by the operator");
        Ok(user)
    }

    pub async fn list_users(&self) -> ServiceResult<Vec<UserRecord>> {
        Ok(self.store.list_users().await?)
    }

    pub async fn update_user(
        &self,
        actor: CurrentUser,
        id: Uuid,
        patch: UserPatch,
    ) -> ServiceResult<UserRecord> {
        if id == actor.id && (patch.disabled == Some(true) || patch.role == Some(Role::User)) {
            // An admin locking themselves out can leave the server with no admin at all.
            return Err(ServiceError::Validation {
                field: "id",
                message: "admins cannot disable or demote themselves".into(),
            });
        }
        let user = self.store.update_user(id, patch).await?;
        let user = match user {
            UserUpdate::Updated(user) => user,
            UserUpdate::NotFound => return Err(ServiceError::UserNotFound),
            UserUpdate::LastAdmin => {
                return Err(ServiceError::Conflict(
                    "this is the last active admin: promote another user first".into(),
                ))
            }
        };
        tracing::info!(actor = %actor.id, user_id = %user.id, role = %user.role, disabled = user.disabled, "user updated");
        if user.disabled {
            self.live.end(SessionsEnded {
                user_id: user.id,
                which: Sessions::All,
                why: SessionEnd::Disabled,
                generation: None,
            });
        }
        Ok(user)
    }

    async fn active_user(&self, id: Uuid) -> ServiceResult<Option<UserRecord>> {
        Ok(self.store.find_user(id).await?.filter(|u| !u.disabled))
    }

    /// The active user a token names, unless their sessions were ended after it was issued.
    async fn current_user_of(&self, claims: &Claims) -> ServiceResult<Option<UserRecord>> {
        Ok(self
            .active_user(claims.sub)
            .await?
            .filter(|u| u.session_generation == claims.gen))
    }

    async fn start_session(&self, user: UserRecord, family: Uuid) -> ServiceResult<Session> {
        let ids = SessionIds {
            sid: family,
            generation: user.session_generation,
        };
        let access = self
            .keys
            .issue(TokenType::Access, user.id, user.role, ids)?;
        let refresh = self
            .keys
            .issue(TokenType::Refresh, user.id, user.role, ids)?;
        self.store
            .insert_refresh_token(refresh.id, user.id, family, refresh.expires_at)
            .await?;
        Ok(Session {
            expires_in: self.keys.access_ttl.as_secs(),
            user,
            access_token: access.token,
            refresh_token: refresh.token,
        })
    }
}
