//! Bearer authentication as a poem-openapi security scheme (so the spec and Swagger UI show
//! it), and the one reusable role check.

use poem::Request;
use poem_openapi::{auth::Bearer, SecurityScheme};

use super::error::ApiError;
use super::state::AppState;
use crate::domain::types::Role;
use crate::service::auth::{Authenticated, CurrentUser};

/// A JWT access token from `POST /api/auth/login`, sent as `Authorization: Bearer <token>`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "check_bearer")]
pub struct BearerAuth(pub Authenticated);

async fn check_bearer(req: &Request, bearer: Bearer) -> poem::Result<Authenticated> {
    let state = req.data::<AppState>().ok_or_else(ApiError::internal)?;
    Ok(state
        .auth
        .authenticate_session(&bearer.token)
        .await
        .map_err(ApiError::from)?)
}

impl BearerAuth {
    pub fn user(&self) -> CurrentUser {
        self.0.user
    }

    /// The caller with the sign-in their token belongs to.
    pub fn session(&self) -> Authenticated {
        self.0
    }

    /// The caller, if their current role is `role` (or admin, which may do everything).
    pub fn require(&self, role: Role) -> Result<CurrentUser, ApiError> {
        match (self.0.user.role, role) {
            (Role::Admin, _) | (Role::User, Role::User) => Ok(self.0.user),
            _ => Err(ApiError::forbidden("this action requires the admin role")),
        }
    }
}
