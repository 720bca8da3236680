//! Client identity: HS256 JWTs, or the dev mode's `?userId=`.

use std::collections::HashMap;

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::ids::UserId;

/// Why a client was refused at the upgrade.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no token: offer the subprotocols switchboard.v1 and bearer.<token>, or send Authorization: Bearer or ?token="
    )]
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
    #[serde(default)]
    iat: Option<i64>,
}

/// The WebSocket subprotocol a client offers beside its token, and the one the
/// node answers with. Browsers cannot set headers on a WebSocket, but they can
/// offer subprotocols; proxies log URLs, not this header.
pub const SUBPROTOCOL: &str = "switchboard.v1";
/// Prefix of the subprotocol that carries a token: `bearer.<JWT>`.
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "bearer.";

/// Seconds of clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: u64 = 30;

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
            v.validate_nbf = true;
            v.leeway = LEEWAY_SECS;
            (DecodingKey::from_secret(s.as_bytes()), v)
        });
        Self { jwt, dev }
    }

    pub fn dev_mode(&self) -> bool {
        self.dev
    }

    /// The user of an upgrade request. A token, when present, always wins and
    /// must be valid; `?userId=`/`?user=` count only in dev mode. The token
    /// is taken from `?token=`, then a `bearer.<token>` subprotocol, then
    /// `Authorization: Bearer`.
    pub fn authenticate(
        &self,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> Result<UserId, AuthError> {
        let bearer = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let token = query
            .get("token")
            .map(String::as_str)
            .or_else(|| subprotocol_token(headers))
            .or(bearer);
        let user = match (token, &self.jwt) {
            (Some(t), Some((key, validation))) => {
                let data = jsonwebtoken::decode::<Claims>(t, key, validation)
                    .map_err(|e| AuthError::InvalidToken(e.to_string()))?;
                let now = crate::ids::now_millis() / 1000;
                if data
                    .claims
                    .iat
                    .is_some_and(|iat| iat > now + LEEWAY_SECS as i64)
                {
                    return Err(AuthError::InvalidToken("issued in the future".into()));
                }
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
        }?;
        if user.as_str() == crate::ids::SYSTEM_USER {
            return Err(AuthError::InvalidUser(format!(
                "{:?} is the service's own sender of notices",
                crate::ids::SYSTEM_USER
            )));
        }
        Ok(user)
    }
}

/// The token of a `bearer.<token>` entry of `Sec-WebSocket-Protocol`.
fn subprotocol_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(TOKEN_SUBPROTOCOL_PREFIX))
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
        let system = a.authenticate(&q(&[("token", &token("system", 60, SECRET))]), &h);
        assert!(
            matches!(system, Err(AuthError::InvalidUser(_))),
            "{system:?}"
        );
        let bad_sub = a.authenticate(&q(&[("token", &token("a:b", 60, SECRET))]), &h);
        assert!(matches!(bad_sub, Err(AuthError::InvalidUser(_))));
    }

    fn encode(claims: serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn token_in_a_subprotocol_is_accepted_and_checked() {
        let a = Authenticator::new(Some(SECRET), false);
        let mut h = HeaderMap::new();
        let value = format!("switchboard.v1, bearer.{}", token("carol", 60, SECRET));
        h.insert("sec-websocket-protocol", value.parse().unwrap());
        assert_eq!(a.authenticate(&q(&[]), &h).unwrap().as_str(), "carol");
        let mut h = HeaderMap::new();
        let value = format!("bearer.{}", token("carol", 60, "another-secret-value"));
        h.insert("sec-websocket-protocol", value.parse().unwrap());
        assert!(matches!(
            a.authenticate(&q(&[]), &h),
            Err(AuthError::InvalidToken(_))
        ));
    }

    #[test]
    fn future_dated_and_unsigned_tokens_are_refused() {
        let a = Authenticator::new(Some(SECRET), false);
        let h = HeaderMap::new();
        let now = crate::ids::now_millis() / 1000;
        let not_yet = encode(
            serde_json::json!({"sub": "alice", "exp": now + 600, "nbf": now + 300}),
            SECRET,
        );
        let from_future = encode(
            serde_json::json!({"sub": "alice", "exp": now + 600, "iat": now + 300}),
            SECRET,
        );
        // alg "none": a header and claims with an empty signature.
        let none = {
            use base64_like::encode_url;
            format!(
                "{}.{}.",
                encode_url(br#"{"alg":"none","typ":"JWT"}"#),
                encode_url(format!(r#"{{"sub":"alice","exp":{}}}"#, now + 600).as_bytes())
            )
        };
        for t in [not_yet, from_future, none] {
            let r = a.authenticate(&q(&[("token", &t)]), &h);
            assert!(matches!(r, Err(AuthError::InvalidToken(_))), "{t}: {r:?}");
        }
    }

    /// Base64url without padding, enough to forge a token by hand.
    mod base64_like {
        pub fn encode_url(bytes: &[u8]) -> String {
            const A: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let b = [
                    chunk[0],
                    *chunk.get(1).unwrap_or(&0),
                    *chunk.get(2).unwrap_or(&0),
                ];
                let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                for i in 0..=chunk.len() {
                    out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        }
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
