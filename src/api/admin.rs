//! `/api/admin/*`: user administration, for the `admin` role only.

use poem_openapi::{param::Path, payload::Json, OpenApi};
use uuid::Uuid;

use super::catalogue::{AdminModelView, UpdateModelRequest};
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
            priority: body.0.priority.map(Into::into),
        };
        Ok(Json(
            self.state
                .auth
                .update_user(admin, id.0, patch)
                .await?
                .into(),
        ))
    }

    /// The model catalogue, with what is turned off
    ///
    /// Every model of `MODELS_FILE` (or the one configured model), on or off, with its
    /// provider's base URL and the budgets the file declares; never a key.
    #[oai(path = "/models", method = "get", operation_id = "adminListModels")]
    async fn list_models(&self, auth: BearerAuth) -> ApiResult<Json<Vec<AdminModelView>>> {
        auth.require(Role::Admin)?;
        let models = self.state.models.admin_list();
        Ok(Json(models.into_iter().map(Into::into).collect()))
    }

    /// Turn a model on or off, or make it the default
    ///
    /// Kept in the database: it survives a restart and reaches every instance. 400 when it
    /// would leave no model on, turn off the default (make another the default first), or
    /// make a model that is off the default; 404 `NOT_FOUND` for a model the catalogue does
    /// not have. Conversations whose model is turned off answer with the default.
    #[oai(
        path = "/models/:id",
        method = "patch",
        operation_id = "adminUpdateModel"
    )]
    async fn update_model(
        &self,
        auth: BearerAuth,
        id: Path<String>,
        body: JsonBody<UpdateModelRequest>,
    ) -> ApiResult<Json<AdminModelView>> {
        auth.require(Role::Admin)?;
        let model = self
            .state
            .models
            .update(&id.0, body.0.enabled, body.0.is_default)
            .await?;
        Ok(Json(model.into()))
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
