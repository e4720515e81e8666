//! Refresh-token bookkeeping: issue, rotate, revoke. The token itself is a signed JWT; this
//! table remembers which token ids are still good and how they descend from one another.

use chrono::{DateTime, Utc};
use entity::refresh_tokens;
use sea_orm::{
    sea_query::Expr, ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter,
    TransactionTrait,
};
use uuid::Uuid;

use super::{Store, StoreError, StoreResult};

pub enum RotateOutcome {
    /// The presented token was current; it is now replaced. `family` is its sign-in.
    Rotated { family: Uuid },
    /// The token was already rotated or revoked: possible theft, so its family was revoked.
    Reused,
    /// Unknown or expired.
    Invalid,
}

impl Store {
    pub async fn insert_refresh_token(
        &self,
        id: Uuid,
        user_id: Uuid,
        family_id: Uuid,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let _turn = self.write_turn().await;
        new_token(id, user_id, family_id, expires_at)
            .insert(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(())
    }

    /// Marks `old_id` replaced by `new_id` and stores `new_id`, atomically. The conditional
    /// update (`revoked_at IS NULL`) decides races: of two refreshes with one token, one
    /// rotates and the other is treated as reuse.
    pub async fn rotate_refresh_token(
        &self,
        old_id: Uuid,
        user_id: Uuid,
        new_id: Uuid,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<RotateOutcome> {
        let _turn = self.write_turn().await;
        let txn = self.db.begin().await.map_err(StoreError::from_db)?;
        let Some(old) = refresh_tokens::Entity::find_by_id(old_id)
            .filter(refresh_tokens::Column::UserId.eq(user_id))
            .one(&txn)
            .await
            .map_err(StoreError::from_db)?
        else {
            return Ok(RotateOutcome::Invalid);
        };
        let now = super::now();
        if old.expires_at <= now {
            return Ok(RotateOutcome::Invalid);
        }
        let updated = refresh_tokens::Entity::update_many()
            .col_expr(refresh_tokens::Column::RevokedAt, Expr::value(now))
            .col_expr(refresh_tokens::Column::ReplacedBy, Expr::value(new_id))
            .filter(refresh_tokens::Column::Id.eq(old_id))
            .filter(refresh_tokens::Column::RevokedAt.is_null())
            .exec(&txn)
            .await
            .map_err(StoreError::from_db)?;
        if updated.rows_affected == 0 {
            revoke_family(&txn, old.family_id, now).await?;
            txn.commit().await.map_err(StoreError::from_db)?;
            return Ok(RotateOutcome::Reused);
        }
        new_token(new_id, user_id, old.family_id, expires_at)
            .insert(&txn)
            .await
            .map_err(StoreError::from_db)?;
        txn.commit().await.map_err(StoreError::from_db)?;
        Ok(RotateOutcome::Rotated {
            family: old.family_id,
        })
    }

    /// Revokes one token (logout). Returns the sign-in (family) it belonged to, if it was
    /// the user's and still live.
    pub async fn revoke_refresh_token(&self, id: Uuid, user_id: Uuid) -> StoreResult<Option<Uuid>> {
        let _turn = self.write_turn().await;
        let Some(row) = refresh_tokens::Entity::find_by_id(id)
            .filter(refresh_tokens::Column::UserId.eq(user_id))
            .filter(refresh_tokens::Column::RevokedAt.is_null())
            .one(&self.db)
            .await
            .map_err(StoreError::from_db)?
        else {
            return Ok(None);
        };
        let result = refresh_tokens::Entity::update_many()
            .col_expr(refresh_tokens::Column::RevokedAt, Expr::value(super::now()))
            .filter(refresh_tokens::Column::Id.eq(id))
            .filter(refresh_tokens::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok((result.rows_affected > 0).then_some(row.family_id))
    }
}

fn new_token(
    id: Uuid,
    user_id: Uuid,
    family_id: Uuid,
    expires_at: DateTime<Utc>,
) -> refresh_tokens::ActiveModel {
    refresh_tokens::ActiveModel {
        id: Set(id),
        user_id: Set(user_id),
        family_id: Set(family_id),
        expires_at: Set(expires_at),
        created_at: Set(super::now()),
        revoked_at: Set(None),
        replaced_by: Set(None),
    }
}

async fn revoke_family(
    db: &impl sea_orm::ConnectionTrait,
    family_id: Uuid,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    refresh_tokens::Entity::update_many()
        .col_expr(refresh_tokens::Column::RevokedAt, Expr::value(now))
        .filter(refresh_tokens::Column::FamilyId.eq(family_id))
        .filter(refresh_tokens::Column::RevokedAt.is_null())
        .exec(db)
        .await
        .map_err(StoreError::from_db)?;
    Ok(())
}
