//! Rosters (RFC 6121 §2) with each item's subscription state (RFC 6121 §3), and roster versions.

use super::{Store, tables::*};
use crate::error::Error;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subscription {
    #[default]
    None,
    To,
    From,
    Both,
}

impl Subscription {
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }
    /// The user receives the contact's presence.
    pub fn to(self) -> bool {
        matches!(self, Subscription::To | Subscription::Both)
    }
    /// The contact receives the user's presence.
    pub fn from(self) -> bool {
        matches!(self, Subscription::From | Subscription::Both)
    }
    pub fn with(to: bool, from: bool) -> Subscription {
        match (to, from) {
            (false, false) => Subscription::None,
            (true, false) => Subscription::To,
            (false, true) => Subscription::From,
            (true, true) => Subscription::Both,
        }
    }
}

/// One contact as the user sees it. `visible` is false for a contact known only through a
/// pending inbound subscription request, which RFC 6121 §3.1.3 keeps out of the roster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RosterItem {
    pub visible: bool,
    pub name: Option<String>,
    pub groups: Vec<String>,
    pub subscription: Subscription,
    /// Pending out: the user asked to see the contact's presence.
    pub ask: bool,
    /// Pending in: the contact asked to see the user's presence.
    pub pending_in: bool,
    /// RFC 6121 §3.4: the user pre-approved the contact's future request.
    pub approved: bool,
}

impl RosterItem {
    pub fn encode(&self) -> String {
        // A struct of plain fields always serialises.
        toml::to_string(self).expect("roster item serialises")
    }

    pub fn decode(s: &str) -> RosterItem {
        toml::from_str(s).unwrap_or_default()
    }
}

impl Store {
    /// Every stored item of `user`'s roster, contact bare JID first.
    pub fn roster(&self, user: &str) -> Result<Vec<(String, RosterItem)>, Error> {
        let txn = self.read()?;
        let t = txn.open_table(USER_CONTACT_TO_ROSTER_ITEM)?;
        let mut out = Vec::new();
        for row in t.range((user, "")..(user, "\u{10ffff}"))? {
            let (k, v) = row?;
            out.push((k.value().1.to_owned(), RosterItem::decode(v.value())));
        }
        Ok(out)
    }

    pub fn roster_item(&self, user: &str, contact: &str) -> Result<Option<RosterItem>, Error> {
        let txn = self.read()?;
        let t = txn.open_table(USER_CONTACT_TO_ROSTER_ITEM)?;
        Ok(t.get((user, contact))?
            .map(|v| RosterItem::decode(v.value())))
    }

    pub fn roster_version(&self, user: &str) -> Result<u64, Error> {
        let txn = self.read()?;
        let t = txn.open_table(USER_TO_ROSTER_VERSION)?;
        Ok(t.get(user)?.map_or(0, |v| v.value()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Write, temp_store};
    use super::*;

    #[test]
    fn items_round_trip_per_user() {
        let (_dir, store) = temp_store();
        let item = RosterItem {
            visible: true,
            name: Some("Bob".into()),
            groups: vec!["Family".into()],
            subscription: Subscription::Both,
            ..Default::default()
        };
        store
            .commit_blocking(vec![
                Write::RosterPut {
                    user: "a".into(),
                    contact: "b@localhost".into(),
                    item: item.encode(),
                    ver: 7,
                },
                Write::RosterPut {
                    user: "ab".into(),
                    contact: "c@localhost".into(),
                    item: item.encode(),
                    ver: 8,
                },
            ])
            .unwrap();
        assert_eq!(
            store.roster("a").unwrap(),
            vec![("b@localhost".to_string(), item.clone())]
        );
        assert_eq!(store.roster_version("a").unwrap(), 7);
        store
            .commit_blocking(vec![Write::RosterDelete {
                user: "a".into(),
                contact: "b@localhost".into(),
                ver: 9,
            }])
            .unwrap();
        assert!(store.roster_item("a", "b@localhost").unwrap().is_none());
        assert_eq!(store.roster_version("a").unwrap(), 9);
        assert_eq!(store.roster("ab").unwrap().len(), 1);
    }
}
