//! Client identity: HS256 JWTs, or the dev mode's `?userId=`.

use std::collections::HashMap;

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::ids::UserId;

/// Why a client was refused at the upgrade.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send ?token= or Authorization: Bearer")]
    MissingToken,
    #[error("no user: send ?userId= (dev auth) or a token")]
    MissingUser,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("invalid user id: {0}")]
    InvalidUser(String),
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// Verifies who a connecting client is.
#[derive(Clone)]
pub struct Authenticator {
    jwt: Option<(DecodingKey, Validation)>,
    dev: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("jwt", &self.jwt.is_some())
            .field("dev", &self.dev)
            .finish()
    }
}

impl Authenticator {
    pub fn new(jwt_secret: Option<&str>, dev: bool) -> Self {
        let jwt = jwt_secret.map(|s| {
            let mut v = Validation::new(Algorithm::HS256);
            v.set_required_spec_claims(&["exp", "sub"]);
            v.leeway = 30;
            (DecodingKey::from_secret(s.as_bytes()), v)
        });
        Self { jwt, dev }
    }

    pub fn dev_mode(&self) -> bool {
        self.dev
    }

    /// The user of an upgrade request. A token, when present, always wins and
    /// must be valid; `?userId=`/`?user=` count only in dev mode.
    pub fn authenticate(
        &self,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> Result<UserId, AuthError> {
        let bearer = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let token = query.get("token").map(String::as_str).or(bearer);
        match (token, &self.jwt) {
            (Some(t), Some((key, validation))) => {
                let data = jsonwebtoken::decode::<Claims>(t, key, validation)
                    .map_err(|e| AuthError::InvalidToken(e.to_string()))?;
                UserId::parse(&data.claims.sub).map_err(|e| AuthError::InvalidUser(e.to_string()))
            }
            _ if self.dev => {
                let user = query
                    .get("userId")
                    .or_else(|| query.get("user"))
                    .ok_or(AuthError::MissingUser)?;
                UserId::parse(user).map_err(|e| AuthError::InvalidUser(e.to_string()))
            }
            _ => Err(AuthError::MissingToken),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &str = "0123456789abcdef0123";

    fn token(sub: &str, exp_offset: i64, secret: &str) -> String {
        #[derive(serde::Serialize)]
        struct C<'a> {
            sub: &'a str,
            exp: i64,
        }
        let exp = crate::ids::now_millis() / 1000 + exp_offset;
        jsonwebtoken::encode(
            &Header::default(),
            &C { sub, exp },
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn jwt_mode_accepts_valid_and_refuses_the_rest() {
        let a = Authenticator::new(Some(SECRET), false);
        let h = HeaderMap::new();
        let ok = a.authenticate(&q(&[("token", &token("alice", 60, SECRET))]), &h);
        assert_eq!(ok.unwrap().as_str(), "alice");
        let mut bearer = HeaderMap::new();
        bearer.insert(
            "authorization",
            format!("Bearer {}", token("bob", 60, SECRET))
                .parse()
                .unwrap(),
        );
        assert_eq!(a.authenticate(&q(&[]), &bearer).unwrap().as_str(), "bob");
        assert_eq!(
            a.authenticate(&q(&[("userId", "alice")]), &h),
            Err(AuthError::MissingToken)
        );
        let expired = a.authenticate(&q(&[("token", &token("alice", -120, SECRET))]), &h);
        assert!(matches!(expired, Err(AuthError::InvalidToken(_))));
        let forged = a.authenticate(
            &q(&[("token", &token("alice", 60, "another-secret-value"))]),
            &h,
        );
        assert!(matches!(forged, Err(AuthError::InvalidToken(_))));
        let bad_sub = a.authenticate(&q(&[("token", &token("a:b", 60, SECRET))]), &h);
        assert!(matches!(bad_sub, Err(AuthError::InvalidUser(_))));
    }

    #[test]
    fn dev_mode_takes_user_from_query() {
        let a = Authenticator::new(None, true);
        let h = HeaderMap::new();
        assert_eq!(
            a.authenticate(&q(&[("userId", "alice")]), &h)
                .unwrap()
                .as_str(),
            "alice"
        );
        assert_eq!(
            a.authenticate(&q(&[("user", "bob")]), &h).unwrap().as_str(),
            "bob"
        );
        assert_eq!(a.authenticate(&q(&[]), &h), Err(AuthError::MissingUser));
        assert!(matches!(
            a.authenticate(&q(&[("user", "")]), &h),
            Err(AuthError::InvalidUser(_))
        ));
    }
}
