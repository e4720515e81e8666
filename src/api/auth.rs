//! `/api/auth/*`: register, login, refresh, logout (one sign-in or all), password change, me.

use poem_openapi::{payload::Json, ApiResponse, OpenApi};

use super::error::{ApiError, ApiResult};
use super::json::JsonBody;
use super::middleware::ClientIp;
use super::models::{
    AuthTokens, ChangePasswordRequest, LoginRequest, LogoutRequest, RefreshRequest,
    RegisterRequest, User,
};
use super::security::BearerAuth;
use super::state::AppState;
use super::Tags;
use poem::Request;

pub struct AuthApi {
    pub state: AppState,
}

#[derive(ApiResponse)]
pub enum Registered {
    /// The account exists and is signed in. The first account on a server is `admin`.
    #[oai(status = 201)]
    Created(Json<AuthTokens>),
}

#[derive(ApiResponse)]
pub enum LoggedOut {
    /// The sign-in (or, with `all`, every session) has ended.
    #[oai(status = 204)]
    NoContent,
}

#[OpenApi(prefix_path = "/auth", tag = "Tags::Auth")]
impl AuthApi {
    /// Create an account
    ///
    /// 409 `CONFLICT` if the e-mail is taken (after the same password hash a new account
    /// costs, and counted against the sign-up limit); 400 for a bad e-mail or a password under 8
    /// characters; 403 when registration is closed (`ALLOW_REGISTRATION=false`); 429 past
    /// `REGISTRATIONS_PER_HOUR` from one address; 503 with `Retry-After` when no password
    /// hashing slot frees up within `PASSWORD_HASH_WAIT_MS`. In development the first account
    /// becomes `admin`; in production only the address named by `ADMIN_EMAIL` does.
    #[oai(path = "/register", method = "post", operation_id = "register")]
    async fn register(
        &self,
        req: &Request,
        body: JsonBody<RegisterRequest>,
    ) -> ApiResult<Registered> {
        let r = body.0;
        let ip = req.extensions().get::<ClientIp>().and_then(|c| c.0);
        let session = self
            .state
            .auth
            .register(&r.email, r.password, r.display_name, ip)
            .await?;
        Ok(Registered::Created(Json(session.into())))
    }

    /// Sign in
    ///
    /// An unknown e-mail and a wrong password get the same 401. Too many failures from one
    /// address (`LOGIN_MAX_FAILURES` per `LOGIN_WINDOW_SECS`, counted from before the
    /// password check), or for one account from addresses it was not recently signed in
    /// from (`LOGIN_ACCOUNT_MAX_FAILURES`), get 429 with `Retry-After`; an e-mail over 254
    /// bytes is 400; 503 with `Retry-After` when no password hashing slot frees up in time.
    #[oai(path = "/login", method = "post", operation_id = "login")]
    async fn login(
        &self,
        req: &Request,
        body: JsonBody<LoginRequest>,
    ) -> ApiResult<Json<AuthTokens>> {
        let ip = req.extensions().get::<ClientIp>().and_then(|c| c.0);
        let session = self
            .state
            .auth
            .login(&body.0.email, body.0.password, ip)
            .await?;
        Ok(Json(session.into()))
    }

    /// Exchange a refresh token for new tokens
    ///
    /// The presented token is spent. Presenting a spent token again is 401 and revokes every
    /// token issued from the same sign-in.
    #[oai(path = "/refresh", method = "post", operation_id = "refreshTokens")]
    async fn refresh(&self, body: JsonBody<RefreshRequest>) -> ApiResult<Json<AuthTokens>> {
        let session = self.state.auth.refresh(&body.0.refresh_token).await?;
        Ok(Json(session.into()))
    }

    /// Sign out
    ///
    /// With `refreshToken`: that sign-in ends; its refresh token stops working and the
    /// WebSockets opened with its access tokens are closed with code 4401. With `all: true`:
    /// every session of the caller ends: all refresh tokens are revoked, every access token
    /// issued so far is refused and every open WebSocket of theirs is closed with 4401.
    #[oai(path = "/logout", method = "post", operation_id = "logout")]
    async fn logout(
        &self,
        auth: BearerAuth,
        body: JsonBody<LogoutRequest>,
    ) -> ApiResult<LoggedOut> {
        match body.0 {
            LogoutRequest {
                all: Some(true), ..
            } => self.state.auth.logout_everywhere(auth.user()).await?,
            LogoutRequest {
                refresh_token: Some(token),
                ..
            } => self.state.auth.logout(auth.user(), &token).await?,
            _ => {
                return Err(ApiError::validation(
                    "refreshToken",
                    "give the refresh token to sign out, or `all: true`",
                ))
            }
        }
        Ok(LoggedOut::NoContent)
    }

    /// Change the password
    ///
    /// Needs the current password (400 `VALIDATION_ERROR` naming `currentPassword` when it
    /// is wrong; wrong guesses count as failed logins, 429 past the limit). Every other
    /// session of the caller ends (refresh tokens revoked, access tokens refused, WebSockets
    /// closed with 4401); the caller's own sign-in goes on with the tokens returned, and its
    /// open WebSockets stay open.
    #[oai(path = "/password", method = "post", operation_id = "changePassword")]
    async fn change_password(
        &self,
        req: &Request,
        auth: BearerAuth,
        body: JsonBody<ChangePasswordRequest>,
    ) -> ApiResult<Json<AuthTokens>> {
        let ip = req.extensions().get::<ClientIp>().and_then(|c| c.0);
        let r = body.0;
        let session = self
            .state
            .auth
            .change_password(auth.session(), r.current_password, r.new_password, ip)
            .await?;
        Ok(Json(session.into()))
    }

    /// The signed-in user
    #[oai(path = "/me", method = "get", operation_id = "getMe")]
    async fn me(&self, auth: BearerAuth) -> ApiResult<Json<User>> {
        Ok(Json(self.state.auth.me(auth.user()).await?.into()))
    }
}
