//! JWT access and refresh tokens: HS256 only, with `iss`, `aud`, `exp`, `iat` and `sub`
//! required and checked. A `typ` claim keeps the two kinds apart, so a refresh token is
//! never accepted as an access token or the reverse.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::JwtConfig;
use crate::domain::types::Role;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenType {
    Access,
    Refresh,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub role: Role,
    pub exp: i64,
    pub iat: i64,
    pub iss: String,
    pub aud: String,
    pub typ: TokenType,
    /// Token id: for refresh tokens, the row in `refresh_tokens`.
    pub jti: Uuid,
    /// The sign-in (refresh-token family) the token belongs to; logging it out closes the
    /// sockets opened with its access tokens. Absent in tokens from before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
    /// The user's session generation when the token was issued; a token from an older
    /// generation is refused (see `AuthService::end_sessions`).
    #[serde(default)]
    pub gen: i64,
}

/// The session a token is issued for.
#[derive(Clone, Copy, Debug)]
pub struct SessionIds {
    pub sid: Uuid,
    pub generation: i64,
}

pub struct IssuedToken {
    pub token: String,
    pub id: Uuid,
    pub expires_at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

impl TokenKeys {
    pub fn new(config: &JwtConfig) -> Self {
        let secret = config.secret.expose().as_bytes();
        // `Validation::new` pins the algorithm: `alg: none` or RS256 headers are refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            access_ttl: config.access_ttl,
            refresh_ttl: config.refresh_ttl,
        }
    }

    pub fn issue(
        &self,
        typ: TokenType,
        user_id: Uuid,
        role: Role,
        session: SessionIds,
    ) -> anyhow::Result<IssuedToken> {
        let now = Utc::now();
        let ttl = match typ {
            TokenType::Access => self.access_ttl,
            TokenType::Refresh => self.refresh_ttl,
        };
        let expires_at = now + chrono::Duration::from_std(ttl)?;
        let id = Uuid::now_v7();
        let claims = Claims {
            sub: user_id,
            role,
            exp: expires_at.timestamp(),
            iat: now.timestamp(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            typ,
            jti: id,
            sid: Some(session.sid),
            gen: session.generation,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok(IssuedToken {
            token,
            id,
            expires_at,
        })
    }

    /// The claims of a valid, unexpired token of the expected type; `None` for anything else.
    pub fn verify(&self, token: &str, expected: TokenType) -> Option<Claims> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        (data.claims.typ == expected).then_some(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::new(&JwtConfig {
            secret: Secret::new(secret),
            secret_file: None,
            issuer: "chat-server".into(),
            audience: "chat-server".into(),
            access_ttl: Duration::from_secs(60),
            refresh_ttl: Duration::from_secs(600),
        })
    }

    #[test]
    fn tokens_verify_only_with_their_key_and_type() {
        let keys = keys("a-test-secret-that-is-long-enough-000");
        let user = Uuid::now_v7();
        let session = SessionIds {
            sid: Uuid::now_v7(),
            generation: 3,
        };
        let access = keys
            .issue(TokenType::Access, user, Role::User, session)
            .unwrap();
        let claims = keys.verify(&access.token, TokenType::Access).unwrap();
        assert_eq!(
            (claims.sub, claims.sid, claims.gen),
            (user, Some(session.sid), 3)
        );
        assert!(keys.verify(&access.token, TokenType::Refresh).is_none());
        let other = self::keys("another-secret-that-is-long-enough-111");
        assert!(other.verify(&access.token, TokenType::Access).is_none());
    }
}
