//! Accounts: SCRAM credentials per localpart. Passwords are never stored (RFC 5802 §5). The
//! credentials table is the store's own: an account exists exactly when it has a row here.

use super::shapes::KeyVal;
use super::{DeleteAccount, Store, Write};
use crate::error::Error;
use redb::TableDefinition;
use serde::{Deserialize, Serialize};

/// Normalised localpart → SCRAM credentials (TOML of [`Credentials`]).
pub static USER_TO_CREDENTIALS: KeyVal<&str> = KeyVal(TableDefinition::new("credentials"));

/// What SCRAM needs to verify a client, for both SHA-1 and SHA-256, base64 encoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub iterations: u32,
    pub salt: String,
    pub sha1_stored_key: String,
    pub sha1_server_key: String,
    pub sha256_stored_key: String,
    pub sha256_server_key: String,
}

impl Credentials {
    pub fn encode(&self) -> String {
        // Serialising a struct of strings and integers cannot fail.
        toml::to_string(self).expect("credentials serialise")
    }

    pub fn decode(s: &str) -> Option<Credentials> {
        toml::from_str(s).ok()
    }
}

impl Store {
    pub fn credentials(&self, user: &str) -> Result<Option<Credentials>, Error> {
        Ok(USER_TO_CREDENTIALS
            .get(self, user)?
            .and_then(|v| Credentials::decode(&v)))
    }

    pub fn user_exists(&self, user: &str) -> Result<bool, Error> {
        Ok(USER_TO_CREDENTIALS.get(self, user)?.is_some())
    }

    pub fn users(&self) -> Result<Vec<String>, Error> {
        USER_TO_CREDENTIALS.users(self)
    }
}

/// Sets the credentials of `user`, creating the account if it is new.
pub fn put(user: &str, c: &Credentials) -> Write {
    USER_TO_CREDENTIALS.put(user, c.encode())
}

/// Deletes the account and everything stored for it, in every module's tables.
pub fn delete(user: &str) -> Write {
    Box::new(DeleteAccount(user.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::super::temp_store;
    use super::*;

    #[test]
    fn put_list_delete() {
        let (_dir, store) = temp_store();
        let c = Credentials {
            iterations: 4096,
            salt: "c2FsdA==".into(),
            sha1_stored_key: "a".into(),
            sha1_server_key: "b".into(),
            sha256_stored_key: "c".into(),
            sha256_server_key: "d".into(),
        };
        store.commit_blocking(vec![put("alice", &c)]).unwrap();
        assert_eq!(store.credentials("alice").unwrap(), Some(c));
        assert_eq!(store.users().unwrap(), vec!["alice".to_string()]);
        store.commit_blocking(vec![delete("alice")]).unwrap();
        assert!(!store.user_exists("alice").unwrap());
    }
}
