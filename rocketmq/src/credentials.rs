//! ACL credentials: the access key and secret key a client signs every request with
//! (RocketMQ's ACL 2.0 user name and password; the signature is the one ACL 1.0 used).

use std::sync::Arc;

use rocketmq_client_rust::{AclClientRPCHook, SessionCredentials};

use crate::Error;

/// An access key and its secret key. `Debug` shows the access key (an identity, like a
/// user name) and never the secret key; nothing in this crate prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    access_key: String,
    secret_key: String,
}

impl Credentials {
    /// Both keys must be non-empty and free of whitespace and control characters (a
    /// key read from a file with its trailing newline is the usual mistake).
    pub fn new(access_key: &str, secret_key: &str) -> Result<Self, Error> {
        for (what, key) in [("access key", access_key), ("secret key", secret_key)] {
            if key.is_empty() {
                return Err(Error::Credentials(format!("the {what} is empty")));
            }
            if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Error::Credentials(format!(
                    "the {what} contains whitespace or a control character"
                )));
            }
        }
        Ok(Self {
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
        })
    }

    /// Credentials from configuration, where either key may be missing: both or neither.
    pub fn from_parts(
        access_key: Option<&str>,
        secret_key: Option<&str>,
    ) -> Result<Option<Self>, Error> {
        match (access_key, secret_key) {
            (None, None) => Ok(None),
            (Some(access), Some(secret)) => Self::new(access, secret).map(Some),
            (Some(_), None) => Err(Error::Credentials(
                "an access key without its secret key: set both or neither".into(),
            )),
            (None, Some(_)) => Err(Error::Credentials(
                "a secret key without its access key: set both or neither".into(),
            )),
        }
    }

    /// The access key (the ACL user name).
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// The secret key, to sign requests with (never printed).
    pub(crate) fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The client hook that signs every request with these keys.
    pub(crate) fn hook(&self) -> Arc<AclClientRPCHook> {
        Arc::new(AclClientRPCHook::new(SessionCredentials::with_keys(
            self.access_key.as_str(),
            self.secret_key.as_str(),
        )))
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn debug_never_shows_the_secret_key() {
        let c = Credentials::new("chat-node", "s3cret-value-91").unwrap();
        let shown = format!("{c:?}");
        assert!(shown.contains("chat-node"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn from_parts_takes_both_keys_or_neither() {
        assert_eq!(Credentials::from_parts(None, None).unwrap(), None);
        let c = Credentials::from_parts(Some("a"), Some("b"))
            .unwrap()
            .unwrap();
        assert_eq!(c.access_key(), "a");
        for (a, s) in [(Some("a"), None), (None, Some("secret-b"))] {
            let e = Credentials::from_parts(a, s).unwrap_err().to_string();
            assert!(
                e.contains("both or neither") && !e.contains("secret-b"),
                "{e}"
            );
        }
    }

    #[test]
    fn empty_or_padded_keys_are_refused() {
        assert!(Credentials::new("", "x").is_err());
        assert!(Credentials::new("a", "").is_err());
        let e = Credentials::new("a", "secret\n").unwrap_err().to_string();
        assert!(e.contains("whitespace") && !e.contains("secret\n"), "{e}");
    }
}
