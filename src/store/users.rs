//! Accounts.

use entity::{refresh_tokens, users};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction,
    DbBackend, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, TransactionTrait,
};
use uuid::Uuid;

use super::records::user_from_row;
use super::{Store, StoreError, StoreResult};
use crate::domain::types::{Priority, Role};
use crate::domain::users::UserRecord;

pub struct NewUser {
    pub email: String,
    pub password_hash: String,
    pub display_name: Option<String>,
}

/// Which role a new account gets.
pub enum NewRole {
    /// `admin` if it is the very first account, else `user` (development's default).
    AdminIfFirst,
    Admin,
    User,
}

#[derive(Default)]
pub struct UserPatch {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    pub priority: Option<Priority>,
}

impl Store {
    /// Creates an account with the role `role` decides. Deciding "first" and inserting
    /// happen under one lock so two simultaneous first sign-ups cannot both win.
    pub async fn create_user(&self, new: NewUser, role: NewRole) -> StoreResult<UserRecord> {
        let _turn = self.write_turn().await;
        let txn = self.db.begin().await.map_err(StoreError::from_db)?;
        // Finish the transaction either way while holding the write turn: a failed insert
        // (a taken e-mail) must not leave its lock for the next writer.
        match insert_user(&txn, new, role).await {
            Ok(user) => {
                txn.commit().await.map_err(StoreError::from_db)?;
                Ok(user)
            }
            Err(err) => {
                let _ = txn.rollback().await;
                Err(err)
            }
        }
    }
}

async fn insert_user(
    txn: &DatabaseTransaction,
    new: NewUser,
    role: NewRole,
) -> StoreResult<UserRecord> {
    {
        if txn.get_database_backend() == DbBackend::Postgres {
            txn.execute_unprepared("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
                .await
                .map_err(StoreError::from_db)?;
        }
        let role = match role {
            NewRole::Admin => Role::Admin,
            NewRole::User => Role::User,
            NewRole::AdminIfFirst => {
                let existing = users::Entity::find()
                    .count(txn)
                    .await
                    .map_err(StoreError::from_db)?;
                if existing == 0 {
                    Role::Admin
                } else {
                    Role::User
                }
            }
        };
        let now = super::now();
        let row = users::ActiveModel {
            id: Set(Uuid::now_v7()),
            email: Set(new.email),
            password_hash: Set(new.password_hash),
            display_name: Set(new.display_name),
            role: Set(role.as_str().to_string()),
            priority: Set(Priority::default().as_str().to_string()),
            disabled: Set(false),
            session_generation: Set(0),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(txn)
        .await
        .map_err(StoreError::from_db)?;
        Ok(user_from_row(row))
    }
}

impl Store {
    pub async fn find_user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        let row = users::Entity::find()
            .filter(users::Column::Email.eq(email))
            .one(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(row.map(user_from_row))
    }

    pub async fn find_user(&self, id: Uuid) -> StoreResult<Option<UserRecord>> {
        let row = users::Entity::find_by_id(id)
            .one(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(row.map(user_from_row))
    }

    /// The user a long-lived socket acts for, if its session still holds: the account is
    /// active, its session generation is still `generation`, and the sign-in `sid` (when the
    /// token has one) still has a live refresh token. One query, run before each frame.
    pub async fn find_session_user(
        &self,
        id: Uuid,
        generation: i64,
        sid: Option<Uuid>,
    ) -> StoreResult<Option<UserRecord>> {
        let mut query = users::Entity::find_by_id(id)
            .filter(users::Column::Disabled.eq(false))
            .filter(users::Column::SessionGeneration.eq(generation));
        if let Some(sid) = sid {
            query = query.filter(Expr::exists(
                Query::select()
                    .expr(Expr::val(1))
                    .from(refresh_tokens::Entity)
                    .and_where(refresh_tokens::Column::FamilyId.eq(sid))
                    .and_where(refresh_tokens::Column::UserId.eq(id))
                    .and_where(refresh_tokens::Column::RevokedAt.is_null())
                    .to_owned(),
            ));
        }
        let row = query.one(&self.db).await.map_err(StoreError::from_db)?;
        Ok(row.map(user_from_row))
    }

    pub async fn set_password_hash(&self, id: Uuid, password_hash: &str) -> StoreResult<()> {
        let _turn = self.write_turn().await;
        users::Entity::update_many()
            .col_expr(
                users::Column::PasswordHash,
                sea_orm::sea_query::Expr::value(password_hash),
            )
            .col_expr(
                users::Column::UpdatedAt,
                sea_orm::sea_query::Expr::value(super::now()),
            )
            .filter(users::Column::Id.eq(id))
            .exec(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(())
    }

    /// Ends every session of a user in one transaction: bumps the session generation (every
    /// token issued before is refused from now on) and revokes all their live refresh tokens,
    /// setting a new password hash in the same step when given. Returns the new generation,
    /// or `None` for an unknown user.
    pub async fn end_sessions(
        &self,
        id: Uuid,
        new_password_hash: Option<String>,
    ) -> StoreResult<Option<i64>> {
        let _turn = self.write_turn().await;
        let txn = self.db.begin().await.map_err(StoreError::from_db)?;
        let now = super::now();
        let mut update = users::Entity::update_many()
            .col_expr(
                users::Column::SessionGeneration,
                Expr::col(users::Column::SessionGeneration).add(1),
            )
            .col_expr(users::Column::UpdatedAt, Expr::value(now))
            .filter(users::Column::Id.eq(id));
        if let Some(hash) = new_password_hash {
            update = update.col_expr(users::Column::PasswordHash, Expr::value(hash));
        }
        let updated = update.exec(&txn).await.map_err(StoreError::from_db)?;
        if updated.rows_affected == 0 {
            let _ = txn.rollback().await;
            return Ok(None);
        }
        entity::refresh_tokens::Entity::update_many()
            .col_expr(entity::refresh_tokens::Column::RevokedAt, Expr::value(now))
            .filter(entity::refresh_tokens::Column::UserId.eq(id))
            .filter(entity::refresh_tokens::Column::RevokedAt.is_null())
            .exec(&txn)
            .await
            .map_err(StoreError::from_db)?;
        let generation = users::Entity::find_by_id(id)
            .one(&txn)
            .await
            .map_err(StoreError::from_db)?
            .map(|u| u.session_generation);
        txn.commit().await.map_err(StoreError::from_db)?;
        Ok(generation)
    }

    pub async fn list_users(&self) -> StoreResult<Vec<UserRecord>> {
        let rows = users::Entity::find()
            .order_by_asc(users::Column::CreatedAt)
            .order_by_asc(users::Column::Id)
            .all(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(rows.into_iter().map(user_from_row).collect())
    }

    /// Changes a user's role or disabled flag, unless that would leave no active admin.
    /// Deciding and writing happen under one lock (the table lock on PostgreSQL, the write
    /// turn on SQLite), so two admins removing each other at once cannot both succeed.
    pub async fn update_user(&self, id: Uuid, patch: UserPatch) -> StoreResult<UserUpdate> {
        let _turn = self.write_turn().await;
        let txn = self.db.begin().await.map_err(StoreError::from_db)?;
        match update_user_in(&txn, id, patch).await {
            Ok(UserUpdate::Updated(user)) => {
                txn.commit().await.map_err(StoreError::from_db)?;
                Ok(UserUpdate::Updated(user))
            }
            other => {
                let _ = txn.rollback().await;
                other
            }
        }
    }
}

pub enum UserUpdate {
    Updated(UserRecord),
    NotFound,
    /// The change would leave the server without an active admin.
    LastAdmin,
}

async fn update_user_in(
    txn: &DatabaseTransaction,
    id: Uuid,
    patch: UserPatch,
) -> StoreResult<UserUpdate> {
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_unprepared("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
            .await
            .map_err(StoreError::from_db)?;
    }
    let Some(row) = users::Entity::find_by_id(id)
        .one(txn)
        .await
        .map_err(StoreError::from_db)?
    else {
        return Ok(UserUpdate::NotFound);
    };
    let is_active_admin = row.role == Role::Admin.as_str() && !row.disabled;
    let stays_active_admin = patch.role.map_or(is_active_admin, |r| r == Role::Admin)
        && !patch.disabled.unwrap_or(row.disabled);
    if is_active_admin && !stays_active_admin {
        let other_admins = users::Entity::find()
            .filter(users::Column::Role.eq(Role::Admin.as_str()))
            .filter(users::Column::Disabled.eq(false))
            .filter(users::Column::Id.ne(id))
            .count(txn)
            .await
            .map_err(StoreError::from_db)?;
        if other_admins == 0 {
            return Ok(UserUpdate::LastAdmin);
        }
    }
    let mut active: users::ActiveModel = row.into();
    if let Some(role) = patch.role {
        active.role = Set(role.as_str().to_string());
    }
    if let Some(disabled) = patch.disabled {
        active.disabled = Set(disabled);
    }
    if let Some(priority) = patch.priority {
        active.priority = Set(priority.as_str().to_string());
    }
    active.updated_at = Set(super::now());
    let row = active.update(txn).await.map_err(StoreError::from_db)?;
    Ok(UserUpdate::Updated(user_from_row(row)))
}
