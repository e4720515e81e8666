//! The admin's run-time changes to the model catalogue (see `service::models`).

use chrono::Utc;
use entity::model_settings;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};

use super::{Store, StoreError, StoreResult};

/// One model's setting as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSetting {
    pub model_id: String,
    pub enabled: bool,
    pub is_default: bool,
}

impl Store {
    pub async fn model_settings(&self) -> StoreResult<Vec<ModelSetting>> {
        let rows = model_settings::Entity::find()
            .all(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(rows
            .into_iter()
            .map(|r| ModelSetting {
                model_id: r.model_id,
                enabled: r.enabled,
                is_default: r.is_default,
            })
            .collect())
    }

    /// Stores one model's setting; a new default takes the flag from every other row, in
    /// the same transaction.
    pub async fn save_model_setting(&self, setting: &ModelSetting) -> StoreResult<()> {
        let txn = self.db.begin().await.map_err(StoreError::from_db)?;
        if setting.is_default {
            model_settings::Entity::update_many()
                .col_expr(model_settings::Column::IsDefault, false.into())
                .filter(model_settings::Column::ModelId.ne(setting.model_id.as_str()))
                .exec(&txn)
                .await
                .map_err(StoreError::from_db)?;
        }
        model_settings::Entity::insert(model_settings::ActiveModel {
            model_id: Set(setting.model_id.clone()),
            enabled: Set(setting.enabled),
            is_default: Set(setting.is_default),
            updated_at: Set(Utc::now()),
        })
        .on_conflict(
            OnConflict::column(model_settings::Column::ModelId)
                .update_columns([
                    model_settings::Column::Enabled,
                    model_settings::Column::IsDefault,
                    model_settings::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec(&txn)
        .await
        .map_err(StoreError::from_db)?;
        txn.commit().await.map_err(StoreError::from_db)
    }
}
