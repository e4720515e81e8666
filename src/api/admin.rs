//! `/api/admin/*`: user administration, for the `admin` role only.

use poem_openapi::{param::Path, payload::Json, OpenApi};
use uuid::Uuid;

use super::error::ApiResult;
use super::json::JsonBody;
use super::models::{ResetPasswordRequest, UpdateUserRequest, User};
use super::security::BearerAuth;
use super::state::AppState;
use super::Tags;
use crate::domain::types::Role;
use crate::store::UserPatch;

pub struct AdminApi {
    pub state: AppState,
}

#[OpenApi(prefix_path = "/admin", tag = "Tags::Admin")]
impl AdminApi {
    /// List all users
    #[oai(path = "/users", method = "get", operation_id = "listUsers")]
    async fn list_users(&self, auth: BearerAuth) -> ApiResult<Json<Vec<User>>> {
        auth.require(Role::Admin)?;
        let users = self.state.auth.list_users().await?;
        Ok(Json(users.into_iter().map(User::from).collect()))
    }

    /// Change a user's role or disable them
    ///
    /// A disabled user's tokens stop working on their next request, and their open
    /// WebSockets are closed at once (code 4401). Admins cannot disable
    /// or demote themselves (400), and the last active admin cannot be disabled or demoted
    /// by anyone (409 `CONFLICT`), even by two admins acting at once.
    #[oai(path = "/users/:id", method = "patch", operation_id = "updateUser")]
    async fn update_user(
        &self,
        auth: BearerAuth,
        id: Path<Uuid>,
        body: JsonBody<UpdateUserRequest>,
    ) -> ApiResult<Json<User>> {
        let admin = auth.require(Role::Admin)?;
        let patch = UserPatch {
            role: body.0.role.map(Into::into),
            disabled: body.0.disabled,
        };
        Ok(Json(
            self.state
                .auth
                .update_user(admin, id.0, patch)
                .await?
                .into(),
        ))
    }

    /// Set a user's password
    ///
    /// Every session of that user ends: refresh tokens revoked, access tokens refused,
    /// WebSockets closed with code 4401. 404 `USER_NOT_FOUND` for an unknown id.
    #[oai(
        path = "/users/:id/password",
        method = "post",
        operation_id = "resetUserPassword"
    )]
    async fn reset_password(
        &self,
        auth: BearerAuth,
        id: Path<Uuid>,
        body: JsonBody<ResetPasswordRequest>,
    ) -> ApiResult<PasswordReset> {
        let admin = auth.require(Role::Admin)?;
        self.state
            .auth
            .reset_password(admin, id.0, body.0.password)
            .await?;
        Ok(PasswordReset::NoContent)
    }
}

#[derive(poem_openapi::ApiResponse)]
pub enum PasswordReset {
    /// The new password is set and every session of the user has ended.
    #[oai(status = 204)]
    NoContent,
}
