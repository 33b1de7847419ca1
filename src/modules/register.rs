//! XEP-0077 In-Band Registration v2.4, for the logged-in user only: changing the password
//! (§3.3) and removing the account (§3.2). Making accounts in-band is not offered: there is
//! no stream feature, and a client that has not authenticated cannot send an iq at all (the
//! operator adds accounts with `hearth user add`).
//!
//! - A password change (`<username/>` naming the user, if present, and `<password/>`) stores
//!   new SCRAM keys as `hearth user passwd` does, at most once per `password_interval_secs`
//!   (each costs two key derivations). Once it is durable, every other login of the account
//!   ends with `not-authorized`, and a connection that authenticated before cannot bind: who
//!   knew the old password is out. The session that changed it stays.
//! - `<remove/>` deletes the account and everything every module stored for it. Contacts are
//!   told as RFC 6121 §2.5.2 tells them when a contact is removed from a roster: those
//!   subscribed to the user get `unsubscribed` and unavailable presence from each available
//!   session, those the user is subscribed to `unsubscribe` (a blocked contact hears
//!   nothing). The result goes to the requesting session, then every session of the account
//!   ends with `not-authorized`.
//!
//! Requests go to the server or to the user's own bare JID; a request about another account
//! is `forbidden`. Data forms (§3.3's `jabber:iq:register:changepassword`) are not offered.

use super::presence::cancel_all;
use super::roster::Roster;
use super::{Cx, DiscoInfo, Entry, IqRequest, IqRoute, Module, Target, To};
use crate::jid::{self, Jid};
use crate::router::Dest;
use crate::stanza::{Condition, StanzaError, StreamCondition, StreamError};
use crate::storage::accounts;
use crate::stream::sasl;
use crate::xml::{Element, ns};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Users may change their password and remove their account.
    pub enabled: bool,
    /// Seconds an account waits between two password changes.
    pub password_interval_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            password_interval_secs: 10,
        }
    }
}

pub const ENTRY: Entry = Entry {
    tables: &[],
    new: |config| {
        let c = &config.modules.register;
        c.enabled.then(|| {
            Box::new(Register {
                interval: Duration::from_secs(c.password_interval_secs),
                iterations: config.auth.scram_iterations,
                changed: RefCell::default(),
            }) as Box<dyn Module>
        })
    },
};

pub struct Register {
    interval: Duration,
    iterations: u32,
    /// When each account last changed its password.
    changed: RefCell<HashMap<String, SystemTime>>,
}

/// Longest password, in bytes.
const MAX_PASSWORD: usize = 1023;

impl Register {
    fn change_password(
        &self,
        cx: &mut Cx,
        user: &str,
        from: &Jid,
        query: &Element,
    ) -> Result<(), StanzaError> {
        if let Some(name) = query.child("username", ns::REGISTER) {
            let named = jid::localpart(name.text().trim()).ok();
            if named.as_deref() != Some(user) {
                return Err(StanzaError::with_text(
                    Condition::Forbidden,
                    "only your own password can be changed",
                ));
            }
        }
        let password = query
            .child("password", ns::REGISTER)
            .map(Element::text)
            .unwrap_or_default();
        // §3.3: an empty password leaves the old one in place.
        if password.is_empty() {
            return Err(StanzaError::bad_request("give the new password"));
        }
        if password.len() > MAX_PASSWORD {
            return Err(StanzaError::with_text(
                Condition::NotAcceptable,
                format!("a password is at most {MAX_PASSWORD} bytes"),
            ));
        }
        let now = cx.now();
        let last = self.changed.borrow().get(user).copied();
        if let Some(wait) = last
            .and_then(|t| (t + self.interval).duration_since(now).ok())
            .filter(|w| !w.is_zero())
        {
            return Err(StanzaError::with_text(
                Condition::PolicyViolation,
                format!(
                    "the password was changed a moment ago; try again in {} seconds",
                    wait.as_secs().max(1)
                ),
            ));
        }
        let creds = sasl::derive_credentials(&password, self.iterations)
            .map_err(|e| StanzaError::with_text(Condition::NotAcceptable, e))?;
        cx.write(accounts::put(user, &creds));
        self.changed.borrow_mut().insert(user.to_owned(), now);
        cx.end_logins(
            user,
            Some(from),
            StreamError::with_text(StreamCondition::NotAuthorized, "the password was changed"),
        );
        log::info!("{from} changed the password of {user}");
        Ok(())
    }
}

impl Module for Register {
    fn name(&self) -> &'static str {
        "register"
    }

    fn disco(&self, cx: &Cx, target: &Target, info: &mut DiscoInfo) {
        // Only where a request works: the server, to its own users, and the user's account.
        let local = info
            .asker
            .as_ref()
            .is_some_and(|a| matches!(cx.destination(a), Dest::Session(_)));
        match target {
            Target::Server if local => info.features.push(ns::REGISTER),
            Target::Account { own: true, .. } => info.features.push(ns::REGISTER),
            _ => {}
        }
    }

    fn iq_routes(&self) -> &'static [IqRoute] {
        const { &[IqRoute::new(ns::REGISTER, To::SERVER.and(To::ACCOUNTS))] }
    }

    fn handle_iq(&self, cx: &mut Cx, iq: &IqRequest) -> Result<Option<Element>, StanzaError> {
        let user = match (cx.destination(iq.from), iq.target) {
            (Dest::Session(u), Target::Server | Target::Account { own: true, .. }) => u.to_owned(),
            _ => return Err(StanzaError::new(Condition::Forbidden)),
        };
        if !iq.payload.is("query", ns::REGISTER) {
            return Err(StanzaError::bad_request(
                "the payload is a jabber:iq:register query",
            ));
        }
        if !iq.set {
            // §3.1: a registered user sees that it is, and what it may change.
            return Ok(Some(
                Element::new("query", ns::REGISTER)
                    .with_child(Element::new("registered", ns::REGISTER))
                    .with_child(Element::new("username", ns::REGISTER).with_text(user))
                    .with_child(Element::new("password", ns::REGISTER)),
            ));
        }
        if iq.payload.has_child("remove", ns::REGISTER) {
            if iq.payload.elements().count() != 1 {
                return Err(StanzaError::bad_request("<remove/> comes alone"));
            }
            self.remove(cx, &user, iq.from);
            return Ok(None);
        }
        self.change_password(cx, &user, iq.from, iq.payload)
            .map(|()| None)
    }

    fn account_removed(&self, user: &str) {
        self.changed.borrow_mut().remove(user);
    }
}

impl Register {
    fn remove(&self, cx: &mut Cx, user: &str, from: &Jid) {
        let contacts = match cx.module::<Roster>() {
            Some(r) => r.with(cx, user, |r| {
                r.items
                    .iter()
                    .filter_map(|(c, it)| Some((Jid::parse(c).ok()?, it.clone())))
                    .collect()
            }),
            None => Vec::new(),
        };
        for (contact, item) in contacts {
            if cx.accepts(user, &contact) {
                cancel_all(cx, user, &contact, &item);
            }
        }
        cx.remove_account(
            user,
            StreamError::with_text(StreamCondition::NotAuthorized, "the account was removed"),
        );
        log::info!("{from} removed the account {user}");
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::TestRouter;
    use super::*;
    use crate::stanza::StreamCondition;

    fn change(password: &str) -> String {
        format!(
            "<iq type='set' id='c' to='localhost'><query xmlns='jabber:iq:register'><username>alice</username><password>{password}</password></query></iq>"
        )
    }

    const REMOVE: &str =
        "<iq type='set' id='r'><query xmlns='jabber:iq:register'><remove/></query></iq>";

    fn stored_key(t: &TestRouter, user: &str) -> Option<String> {
        t.router
            .store
            .credentials(user)
            .unwrap()
            .map(|c| c.sha256_stored_key)
    }

    #[test]
    fn a_password_change_stores_new_keys_and_ends_the_other_logins() {
        let t = TestRouter::with_users(&["alice", "bob"]);
        let a = t.online("alice", "phone");
        let a2 = t.online("alice", "laptop");
        let b = t.online("bob", "pc");
        let before = stored_key(&t, "alice");
        let epoch = t.router.sessions().login_epoch("alice");
        let out = t.client(&a, &change("new secret"));
        out.assert_sent(&a, "<iq type='result' id='c'/>");
        // The new keys are what SCRAM checks; the old password no longer logs in.
        let creds = t.router.store.credentials("alice").unwrap().unwrap();
        assert_ne!(Some(creds.sha256_stored_key.clone()), before);
        assert_eq!(creds.iterations, 4096);
        let login = |password: &str| {
            let mut m = sasl::Sasl::start("PLAIN", sasl::Bindings::default(), "localhost").unwrap();
            let input = format!("\0alice\0{password}");
            let store = &t.router.store;
            m.step(input.as_bytes(), &|u| store.credentials(u).ok().flatten())
        };
        assert!(matches!(login("new secret"), sasl::Step::Success { .. }));
        assert!(matches!(login("pw"), sasl::Step::Failure(..)));
        // The other session is ended, the one that changed it stays; bob is untouched.
        let e = t.ended(&a2).expect("the laptop's login ends");
        assert_eq!(e.condition, StreamCondition::NotAuthorized);
        assert_eq!(t.ended(&a), None);
        assert_eq!(t.ended(&b), None);
        // Logins made before may not bind any more.
        assert_ne!(t.router.sessions().login_epoch("alice"), epoch);
        assert_eq!(t.router.sessions().login_epoch("bob"), 0);
    }

    #[test]
    fn password_changes_are_checked_and_spaced() {
        let t = TestRouter::with_users(&["alice", "bob"]);
        let a = t.online("alice", "phone");
        let b = t.online("bob", "pc");
        let before = stored_key(&t, "alice");
        // Someone else's password, an empty one, a disallowed one, one too long.
        let out = t.client(&b, &change("taken over"));
        out.assert_error(&b, "c", Condition::Forbidden);
        t.client(&a, &change(""))
            .assert_error(&a, "c", Condition::BadRequest);
        t.client(&a, &change("bell\u{85}"))
            .assert_error(&a, "c", Condition::NotAcceptable);
        let long = "x".repeat(2000);
        t.client(&a, &change(&long))
            .assert_error(&a, "c", Condition::NotAcceptable);
        assert_eq!(stored_key(&t, "alice"), before);
        assert_eq!(t.ended(&a), None);
        // Without <username/>, to the own bare JID, is fine too.
        let out = t.client(&a, "<iq type='set' id='n' to='alice@localhost'><query xmlns='jabber:iq:register'><password>one</password></query></iq>");
        out.assert_sent(&a, "<iq type='result' id='n'/>");
        // A second change right away waits.
        let out = t.client(&a, "<iq type='set' id='m'><query xmlns='jabber:iq:register'><password>two</password></query></iq>");
        out.assert_error(&a, "m", Condition::PolicyViolation);
        t.skip(Duration::from_secs(10));
        let out = t.client(&a, "<iq type='set' id='m'><query xmlns='jabber:iq:register'><password>two</password></query></iq>");
        out.assert_sent(&a, "<iq type='result' id='m'/>");
        // Bob cannot reach Alice's registration through her account either.
        let out = t.client(&b, "<iq type='set' id='x' to='alice@localhost'><query xmlns='jabber:iq:register'><password>three</password></query></iq>");
        out.assert_error(&b, "x", Condition::Forbidden);
    }

    #[test]
    fn a_registered_user_sees_its_registration_and_disco_says_where_it_works() {
        let t = TestRouter::with_users(&["alice", "bob"]);
        let a = t.online("alice", "phone");
        let b = t.online("bob", "pc");
        let out = t.client(
            &a,
            "<iq type='get' id='g' to='localhost'><query xmlns='jabber:iq:register'/></iq>",
        );
        out.assert_sent(&a, "<iq type='result' id='g'><query xmlns='jabber:iq:register'><registered/><username>alice</username><password/></query></iq>");
        let has = |who: &Jid, to: &str| {
            let out = t.client(
                who,
                &format!("<iq type='get' id='d' to='{to}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"),
            );
            out.to(who)[0]
                .child("query", ns::DISCO_INFO)
                .unwrap()
                .elements()
                .any(|f| f.attr("var") == Some(ns::REGISTER))
        };
        assert!(has(&a, "localhost"));
        assert!(has(&a, "alice@localhost"));
        assert!(!has(&b, "alice@localhost"));
    }

    #[test]
    fn removing_the_account_leaves_nothing_and_tells_the_contacts() {
        let t = TestRouter::with_users(&["alice", "bob", "carol"]);
        // Bob and Alice share presence both ways; Carol asked to see Alice's, unanswered.
        let (ja, jb) = (t.bind("alice", "setup"), t.bind("bob", "setup"));
        for (from, to, typ) in [
            (&ja, "bob", "subscribe"),
            (&jb, "alice", "subscribed"),
            (&jb, "alice", "subscribe"),
            (&ja, "bob", "subscribed"),
        ] {
            t.client(
                from,
                &format!("<presence type='{typ}' to='{to}@localhost'/>"),
            );
        }
        t.close(&ja);
        t.close(&jb);
        let c = t.bind("carol", "pc");
        t.client(&c, "<presence type='subscribe' to='alice@localhost'/>");
        let a = t.online("alice", "phone");
        let a2 = t.online("alice", "laptop");
        let b = t.online("bob", "pc");
        // Alice stores something in every module there is.
        t.client(&a, "<iq type='set' id='1'><block xmlns='urn:xmpp:blocking'><item jid='spam.example'/></block></iq>");
        t.client(
            &a,
            "<iq type='set' id='2'><prefs xmlns='urn:xmpp:mam:2' default='always'/></iq>",
        );
        t.client(&a, "<iq type='set' id='3'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:example'><item id='1'><x xmlns='urn:example'/></item></publish></pubsub></iq>");
        t.client(
            &a,
            "<iq type='set' id='4'><vCard xmlns='vcard-temp'><FN>Alice</FN></vCard></iq>",
        );
        t.client(&a, "<iq type='set' id='5'><query xmlns='jabber:iq:private'><n xmlns='urn:example:notes'>x</n></query></iq>");
        t.client(
            &b,
            "<message to='alice@localhost' type='chat'><body>archived</body></message>",
        );
        let dozing = t.bind("alice", "dozing");
        t.close(&a2);
        t.close(&dozing);
        let tables: Vec<String> = t
            .router
            .store
            .rows_of("alice")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        for table in [
            "credentials",
            "roster",
            "blocklist",
            "archive",
            "archive_prefs",
            "pep_nodes",
            "pep_items",
            "vcard",
            "private",
        ] {
            assert!(
                tables.iter().any(|n| n == table),
                "nothing of alice in {table}: {tables:?}"
            );
        }
        // Someone else cannot remove her account.
        let out = t.client(&b, "<iq type='set' id='x' to='alice@localhost'><query xmlns='jabber:iq:register'><remove/></query></iq>");
        out.assert_error(&b, "x", Condition::Forbidden);
        assert!(t.router.account_exists("alice"));
        // <remove/> comes alone.
        let out = t.client(&a, "<iq type='set' id='y'><query xmlns='jabber:iq:register'><remove/><password>x</password></query></iq>");
        out.assert_error(&a, "y", Condition::BadRequest);
        let out = t.client(&a, REMOVE);
        out.assert_sent(&a, "<iq type='result' id='r'/>");
        // Nothing of her is left, in any table.
        assert_eq!(t.router.store.rows_of("alice"), vec![]);
        assert!(!t.router.account_exists("alice"));
        // Bob sees her go and loses the subscription both ways; Carol's request is refused.
        out.assert_sent(
            &b,
            "<presence type='unavailable' from='alice@localhost/phone'/>",
        );
        out.assert_sent(&b, "<presence type='unsubscribed' from='alice@localhost'/>");
        out.assert_sent(&b, "<presence type='unsubscribe' from='alice@localhost'/>");
        let item = crate::modules::roster::USER_CONTACT_TO_ROSTER_ITEM
            .get(&t.router.store, "bob", "alice@localhost")
            .unwrap()
            .map(|s| crate::modules::roster::RosterItem::decode(&s))
            .unwrap();
        assert_eq!(
            item.subscription,
            crate::modules::roster::Subscription::None
        );
        let carol_item = crate::modules::roster::USER_CONTACT_TO_ROSTER_ITEM
            .get(&t.router.store, "carol", "alice@localhost")
            .unwrap()
            .map(|s| crate::modules::roster::RosterItem::decode(&s))
            .unwrap();
        assert!(!carol_item.ask);
        // Her session ends; bob's do not.
        let e = t.ended(&a).expect("alice's session ends");
        assert_eq!(e.condition, StreamCondition::NotAuthorized);
        assert_eq!(t.ended(&b), None);
        assert!(!t.router.store.rows_of("bob").is_empty());
        // Messages to her now bounce, and nothing is stored for her.
        let out = t.client(
            &b,
            "<message id='m' to='alice@localhost' type='chat'><body>hello?</body></message>",
        );
        out.assert_error(&b, "m", Condition::ServiceUnavailable);
        t.close(&a);
        assert_eq!(t.router.store.rows_of("alice"), vec![]);
    }

    #[test]
    fn a_blocked_contact_is_not_told_of_the_removal() {
        let t = TestRouter::with_users(&["alice", "bob"]);
        let (ja, jb) = (t.bind("alice", "setup"), t.bind("bob", "setup"));
        t.client(&jb, "<presence type='subscribe' to='alice@localhost'/>");
        t.client(&ja, "<presence type='subscribed' to='bob@localhost'/>");
        t.close(&ja);
        t.close(&jb);
        let a = t.online("alice", "phone");
        let b = t.online("bob", "pc");
        t.client(&a, "<iq type='set' id='1'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block></iq>");
        let out = t.client(&a, REMOVE);
        out.assert_sent(&a, "<iq type='result' id='r'/>");
        out.assert_nothing_to(&b);
        assert_eq!(t.router.store.rows_of("alice"), vec![]);
    }
}
