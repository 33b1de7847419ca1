//! Accounts: SCRAM credentials per localpart. Passwords are never stored (RFC 5802 §5).

use super::{Store, tables::*};
use crate::error::Error;
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

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
        let txn = self.read()?;
        let t = txn.open_table(USER_TO_CREDENTIALS)?;
        Ok(t.get(user)?.and_then(|v| Credentials::decode(v.value())))
    }

    pub fn user_exists(&self, user: &str) -> Result<bool, Error> {
        let txn = self.read()?;
        Ok(txn.open_table(USER_TO_CREDENTIALS)?.get(user)?.is_some())
    }

    pub fn users(&self) -> Result<Vec<String>, Error> {
        let txn = self.read()?;
        let t = txn.open_table(USER_TO_CREDENTIALS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            out.push(row?.0.value().to_owned());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Write, temp_store};
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
        store
            .commit_blocking(vec![Write::CredentialsPut {
                user: "alice".into(),
                record: c.encode(),
            }])
            .unwrap();
        assert_eq!(store.credentials("alice").unwrap(), Some(c));
        assert_eq!(store.users().unwrap(), vec!["alice".to_string()]);
        store
            .commit_blocking(vec![Write::AccountDelete {
                user: "alice".into(),
            }])
            .unwrap();
        assert!(!store.user_exists("alice").unwrap());
    }
}
