//! API tokens, stored hashed.

use munifab_protocol::{AgentId, SigningKey};
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, corrupt};
use crate::auth::{self, Grant, Role};

/// A token to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewToken {
    /// Role and scope.
    pub grant: Grant,
    /// Free text (who or what holds it).
    pub label: String,
}

/// A stored token (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TokenRecord {
    /// Token id (UUID), used to revoke it.
    pub id: String,
    /// Role and scope.
    pub grant: Grant,
    /// Free text.
    pub label: String,
    /// Unix ms.
    pub created_ms: i64,
    /// Unix ms, if revoked.
    pub revoked_ms: Option<i64>,
}

fn token_from_row(row: &AnyRow) -> Result<TokenRecord, StoreError> {
    let role: String = row.try_get("role")?;
    let scope: Option<String> = row.try_get("scope")?;
    let role: Role = role.parse().map_err(|e| corrupt("tokens.role", e))?;
    Ok(TokenRecord {
        id: row.try_get("id")?,
        grant: Grant::new(role, scope.as_deref()).map_err(|e| corrupt("tokens.scope", e))?,
        label: row.try_get("label")?,
        created_ms: row.try_get("created_ms")?,
        revoked_ms: row.try_get("revoked_ms")?,
    })
}

impl Store {
    /// Creates a token; returns its record and the secret, which is not stored.
    pub async fn create_token(
        &self,
        new: &NewToken,
        now: i64,
    ) -> Result<(TokenRecord, String), StoreError> {
        let secret = auth::new_secret();
        let id = uuid::Uuid::new_v4().to_string();
        let signing_key = match &new.grant {
            Grant::Agent(_) => Some(hex::encode(SigningKey::derive(&secret).to_bytes())),
            _ => None,
        };
        sqlx::query(
            "INSERT INTO tokens (id, hash, role, scope, label, signing_key, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id.clone())
        .bind(auth::hash_secret(&secret))
        .bind(new.grant.role().as_str())
        .bind(new.grant.scope().map(str::to_string))
        .bind(new.label.clone())
        .bind(signing_key)
        .bind(now)
        .execute(self.pool())
        .await?;
        self.bump_revision();
        let record = TokenRecord {
            id,
            grant: new.grant.clone(),
            label: new.label.clone(),
            created_ms: now,
            revoked_ms: None,
        };
        Ok((record, secret))
    }

    /// The live (not revoked) token with this secret.
    pub async fn token_by_secret(&self, secret: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, role, scope, label, created_ms, revoked_ms FROM tokens \
             WHERE hash = $1 AND revoked_ms IS NULL",
        )
        .bind(auth::hash_secret(secret))
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// All tokens, newest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, role, scope, label, created_ms, revoked_ms FROM tokens \
             ORDER BY created_ms DESC, id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revokes a token (idempotent); returns it.
    pub async fn revoke_token(&self, id: &str, now: i64) -> Result<TokenRecord, StoreError> {
        let revoked =
            sqlx::query("UPDATE tokens SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL")
                .bind(now)
                .bind(id.to_string())
                .execute(self.pool())
                .await?
                .rows_affected();
        if revoked > 0 {
            self.bump_revision();
        }
        let row = sqlx::query(
            "SELECT id, role, scope, label, created_ms, revoked_ms FROM tokens WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "token",
            id: id.to_string(),
        })?;
        token_from_row(&row)
    }

    /// Whether `password` is a live token of `agent` (the MQTT login check).
    pub async fn agent_password_ok(&self, agent: &str, password: &str) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT id FROM tokens WHERE hash = $1 AND role = 'agent' AND scope = $2 \
             AND revoked_ms IS NULL",
        )
        .bind(auth::hash_secret(password))
        .bind(agent.to_string())
        .fetch_optional(self.pool())
        .await?;
        Ok(row.is_some())
    }

    /// Signing keys of the agent's live tokens (several during a rotation).
    pub async fn agent_signing_keys(&self, agent: &AgentId) -> Result<Vec<SigningKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT signing_key FROM tokens WHERE role = 'agent' AND scope = $1 \
             AND revoked_ms IS NULL AND signing_key IS NOT NULL ORDER BY created_ms DESC",
        )
        .bind(agent.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let hexkey: String = r.try_get("signing_key")?;
                let bytes: [u8; 32] = hex::decode(&hexkey)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| corrupt("tokens.signing_key", "not 32 hex bytes"))?;
                Ok(SigningKey::from_bytes(bytes))
            })
            .collect()
    }
}
