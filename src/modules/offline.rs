//! XEP-0160 Best Practices for Handling Offline Messages, v1.0.1: chat and normal messages for
//! an account with no available resource are stored durably and delivered, with a XEP-0203
//! delay stamp, when the account next sends initial presence. Headline, groupchat and error
//! messages are not stored, nor are messages with a XEP-0334 `no-store` hint or that carry only
//! chat states.
//!
//! A session that queried its XEP-0313 archive before initial presence is not sent the offline
//! messages that are in the archive (they carry the account's stanza-id): it catches up from
//! there, and would get them twice. They are then removed from offline storage all the same,
//! or an account whose clients all use the archive would fill its quota and refuse messages.
//! Messages the archive did not take (by the account's preferences) are delivered as usual.
//!
//! A message is stored with a write that is not waited for, so the delivery at initial presence
//! may read the store before the write of a message stored a moment earlier is committed. When
//! the account's count says more is stored than the store showed, the session looks again
//! shortly after, for what came after what it got.

use super::{Cx, DiscoInfo, Entry, Flow, Module, SessionEvent, Target, internal};
use crate::jid::Jid;
use crate::stanza::{Condition, Stanza, StanzaError, stanza_type};
use crate::storage::shapes::{Queue, Stamped};
use crate::xml::{Element, ns, reader};
use redb::TableDefinition;
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// (localpart, sequence) → (milliseconds since the epoch when stored, message XML).
pub static USER_SEQ_TO_OFFLINE: Queue<Stamped> = Queue(TableDefinition::new("offline"));

pub const ENTRY: Entry = Entry {
    tables: &[&USER_SEQ_TO_OFFLINE],
    new: |config| Some(Box::new(Offline::new(&config.modules.offline))),
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Messages kept per account, and their bytes; further ones are refused with
    /// `resource-constraint`.
    pub max_per_user: usize,
    pub max_bytes_per_user: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_per_user: 1000,
            max_bytes_per_user: 4 << 20,
        }
    }
}

pub struct Offline {
    pub max_per_user: usize,
    max_bytes: usize,
    /// Messages stored per account and their bytes, counting writes not yet committed: the
    /// quota must hold while pushes are on their way to the disk. Filled from the store on
    /// first use.
    counts: RefCell<HashMap<String, Stored>>,
    /// Sessions to look again for, by timer token.
    rechecks: RefCell<HashMap<u64, Recheck>>,
    next_token: std::cell::Cell<u64>,
}

/// A session that was delivered what the store showed, while more was on its way to the disk.
struct Recheck {
    session: Jid,
    /// The last sequence number it got: what is still there up to it waits to be deleted.
    after: Option<u64>,
    tries: u32,
}

/// How long after a delivery to look again, and how often at most: the store's group commit
/// takes milliseconds, a slow card's fsync a few hundred.
const RECHECK_AFTER: Duration = Duration::from_millis(100);
const RECHECKS: u32 = 50;

#[derive(Clone, Copy, Debug, Default)]
struct Stored {
    messages: usize,
    bytes: usize,
}

impl Offline {
    pub fn new(config: &Config) -> Offline {
        Offline {
            max_per_user: config.max_per_user,
            max_bytes: config.max_bytes_per_user,
            counts: RefCell::default(),
            rechecks: RefCell::default(),
            next_token: std::cell::Cell::new(0),
        }
    }

    /// Sends `session` the stored messages of `user` after sequence number `after`, deletes
    /// them, and looks again later if the count says some are not committed yet.
    fn deliver(&self, cx: &mut Cx, session: &Jid, user: &str, after: Option<u64>, tries: u32) {
        let uses_mam = cx
            .sessions()
            .get(session)
            .is_some_and(|s| s.flags.mam_queried);
        // Up to `after`, entries may still wait for their deletion: read past them.
        let limit = self.max_per_user.saturating_mul(2);
        let msgs = match USER_SEQ_TO_OFFLINE.peek(cx.store(), user, limit) {
            Ok(m) => m,
            Err(e) => {
                log::error!("reading offline messages of {user}: {e}");
                return;
            }
        };
        let msgs: Vec<_> = msgs
            .into_iter()
            .filter(|m| after.is_none_or(|a| m.seq > a))
            .take(self.max_per_user)
            .collect();
        let last = msgs.last().map(|m| m.seq).or(after);
        let delivered = Stored {
            messages: msgs.len(),
            bytes: msgs.iter().map(|m| m.text.len()).sum(),
        };
        let domain = cx.domain().to_owned();
        let bare = session.bare().to_string();
        for m in msgs {
            let Some(mut el) = reader::parse_one(&m.text) else {
                log::warn!("dropping unreadable offline message {} of {user}", m.seq);
                continue;
            };
            let archived = el
                .elements()
                .any(|c| c.is("stanza-id", ns::SID) && c.attr("by") == Some(bare.as_str()));
            let sender = el.attr("from").and_then(|f| Jid::parse(f).ok());
            // What the user blocked since it was stored is not delivered (and goes with the
            // rest: it was refused, not kept).
            if (uses_mam && archived) || sender.is_some_and(|f| !cx.accepts(user, &f)) {
                continue;
            }
            let when = UNIX_EPOCH + Duration::from_millis(m.stamp_ms);
            el.push(
                Element::new("delay", ns::DELAY)
                    .with_attr("from", domain.as_str())
                    .with_attr("stamp", super::time::stamp(when)),
            );
            cx.send(session.clone(), el);
        }
        if delivered.messages > 0
            && let Some(last) = last
        {
            // After the messages are queued, not before: a crash in between delivers them
            // again rather than losing them.
            cx.write_trailing(USER_SEQ_TO_OFFLINE.delete_upto(user, last));
        }
        let left = match self.counts.borrow_mut().get_mut(user) {
            Some(n) => {
                n.messages = n.messages.saturating_sub(delivered.messages);
                n.bytes = n.bytes.saturating_sub(delivered.bytes);
                n.messages
            }
            None => 0,
        };
        if left > 0 && tries < RECHECKS {
            let token = self.next_token.get();
            self.next_token.set(token.wrapping_add(1));
            self.rechecks.borrow_mut().insert(
                token,
                Recheck {
                    session: session.clone(),
                    after: last,
                    tries: tries + 1,
                },
            );
            cx.set_timer("offline", RECHECK_AFTER, token);
        }
    }

    fn stored(&self, cx: &Cx, user: &str) -> Result<Stored, StanzaError> {
        if let Some(n) = self.counts.borrow().get(user) {
            return Ok(*n);
        }
        let (messages, bytes) = USER_SEQ_TO_OFFLINE
            .usage(cx.store(), user)
            .map_err(internal("counting offline messages"))?;
        let n = Stored { messages, bytes };
        self.counts.borrow_mut().insert(user.to_owned(), n);
        Ok(n)
    }
}

/// Whether a message with no resource to go to is worth keeping.
pub fn storable(msg: &Element) -> bool {
    matches!(stanza_type(msg), "chat" | "normal")
        && !msg.has_child("no-store", ns::HINTS)
        && msg.elements().any(|c| c.ns != ns::CHATSTATES)
}

impl Module for Offline {
    fn name(&self) -> &'static str {
        "offline"
    }

    fn account_removed(&self, user: &str) {
        self.counts.borrow_mut().remove(user);
    }
    fn disco(&self, _cx: &Cx, target: &Target, info: &mut DiscoInfo) {
        if *target == Target::Server {
            info.features.push(ns::OFFLINE);
        }
    }

    fn message_in(
        &self,
        cx: &mut Cx,
        user: &str,
        st: &mut Stanza,
        targets: &[Jid],
    ) -> Result<Flow, StanzaError> {
        let msg = &st.el;
        if !targets.is_empty() || !storable(msg) {
            return Ok(Flow::Continue);
        }
        let stored = self.stored(cx, user)?;
        let xml = msg.to_xml();
        if stored.messages >= self.max_per_user || stored.bytes + xml.len() > self.max_bytes {
            return Err(StanzaError::with_text(
                Condition::ResourceConstraint,
                "the recipient's offline storage is full",
            ));
        }
        let now = Stored {
            messages: stored.messages + 1,
            bytes: stored.bytes + xml.len(),
        };
        // The sender is told nothing on storing, so nothing waits for this write but its
        // XEP-0198 acknowledgement, which does (see `Cx::write_trailing`).
        let stamp = millis(cx.now());
        cx.write_trailing(USER_SEQ_TO_OFFLINE.push(user, stamp, xml));
        self.counts.borrow_mut().insert(user.to_owned(), now);
        Ok(Flow::Handled)
    }

    fn session_event(&self, cx: &mut Cx, session: &Jid, event: SessionEvent) {
        if event != SessionEvent::InitialPresence {
            return;
        }
        let Some(user) = session.local() else { return };
        self.deliver(cx, session, user, None, 0);
    }

    fn timer(&self, cx: &mut Cx, token: u64) {
        let Some(r) = self.rechecks.borrow_mut().remove(&token) else {
            return;
        };
        let Some(user) = r.session.local() else {
            return;
        };
        // Only while that session is still there and available: otherwise the messages wait
        // for the next initial presence, as any others.
        if cx.sessions().get(&r.session).is_some_and(|s| s.available) {
            self.deliver(cx, &r.session, user, r.after, r.tries);
        }
    }
}

/// Milliseconds since the epoch.
pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::testing::TestRouter;

    /// Found by the soak: a message stored a moment before initial presence, whose write the
    /// delivery did not see yet, stayed in storage until the next login.
    #[test]
    fn a_message_committed_after_initial_presence_follows_it() {
        let t = TestRouter::with_users(&["alice", "bob"]);
        let bob = t.online("bob", "pc");
        let (_, held) = t.client_trailing_later(
            &bob,
            "<message to='alice@localhost' type='chat' id='m1'><body>hi</body></message>",
        );
        let alice = t.bind("alice", "phone");
        let out = t.client(&alice, "<presence/>");
        out.assert_not_sent(&alice, "<message id='m1'/>");
        t.commit(held);
        let out = t.advance(RECHECK_AFTER);
        out.assert_sent(&alice, "<message id='m1'><body>hi</body></message>");
        // Once: it is gone from storage, and nobody looks again.
        t.advance(RECHECK_AFTER).assert_nothing_to(&alice);
        t.close(&alice);
        let alice = t.bind("alice", "phone");
        t.client(&alice, "<presence/>")
            .assert_not_sent(&alice, "<message id='m1'/>");
    }

    /// What was delivered and is still waiting for its deletion is not delivered again.
    #[test]
    fn a_second_look_skips_what_the_first_delivered() {
        let t = TestRouter::with_users(&["alice", "bob"]);
        let bob = t.online("bob", "pc");
        t.client(
            &bob,
            "<message to='alice@localhost' type='chat' id='m1'><body>1</body></message>",
        );
        let (_, held) = t.client_trailing_later(
            &bob,
            "<message to='alice@localhost' type='chat' id='m2'><body>2</body></message>",
        );
        let alice = t.bind("alice", "phone");
        let (out, deletes) = t.client_trailing_later(&alice, "<presence/>");
        out.assert_sent(&alice, "<message id='m1'/>");
        out.assert_not_sent(&alice, "<message id='m2'/>");
        t.commit(held);
        let out = t.advance(RECHECK_AFTER);
        out.assert_sent(&alice, "<message id='m2'/>");
        out.assert_not_sent(&alice, "<message id='m1'/>");
        t.commit(deletes);
        t.advance(RECHECK_AFTER).assert_nothing_to(&alice);
    }

    fn msg(t: Option<&str>, child: Element) -> Element {
        let mut m = Element::new("message", ns::CLIENT).with_child(child);
        if let Some(t) = t {
            m.set_attr("type", t);
        }
        m
    }

    #[test]
    fn what_is_stored() {
        let body = || Element::new("body", ns::CLIENT).with_text("hi");
        assert!(storable(&msg(Some("chat"), body())));
        assert!(storable(&msg(None, body())));
        assert!(!storable(&msg(Some("headline"), body())));
        assert!(!storable(&msg(Some("groupchat"), body())));
        assert!(!storable(&msg(Some("error"), body())));
        assert!(!storable(&msg(
            Some("chat"),
            Element::new("composing", ns::CHATSTATES)
        )));
        assert!(!storable(
            &msg(Some("chat"), body()).with_child(Element::new("no-store", ns::HINTS))
        ));
    }
}
