//! XEP-0280 Message Carbons, v1.0: a session that enables carbons gets a `<sent/>` copy of
//! what its account's other sessions send and a `<received/>` copy of what reaches them.
//! Eligibility follows §6 with the XEP-0334 `no-copy` hint. Left out: copies of error bounces
//! (§6 wants them for eligible messages, which needs remembering what was sent) and the
//! `urn:xmpp:carbons:rules:0` disco feature. The `<private/>` element stays on the delivered
//! message, as §7 says it SHOULD.

use super::{Cx, DiscoInfo, Entry, Flow, IqRequest, IqRoute, Module, Target, To};
use crate::jid::Jid;
use crate::stanza::{Origin, Stanza, StanzaError, stanza_type};
use crate::xml::{Element, ns};

pub const ENTRY: Entry = Entry {
    tables: &[],
    new: |_| Some(Box::new(Carbons)),
};

pub struct Carbons;

/// Whether a message is copied to the other carbons-enabled sessions (XEP-0280 §6).
pub fn should_copy(msg: &Element) -> bool {
    let excluded = msg.has_child("private", ns::CARBONS)
        || msg.has_child("no-copy", ns::HINTS)
        // Already a carbon: copying it again would loop.
        || msg.has_child("sent", ns::CARBONS)
        || msg.has_child("received", ns::CARBONS)
        // §6.1: MUC private messages go only to the resource that joined the room.
        || msg.has_child("x", ns::MUC_USER);
    if excluded {
        return false;
    }
    let im_payload = msg
        .elements()
        .any(|c| [ns::CHATSTATES, ns::RECEIPTS, ns::CHAT_MARKERS].contains(&c.ns.as_str()));
    match stanza_type(msg) {
        "chat" => true,
        "normal" => msg.has_child("body", ns::CLIENT) || im_payload,
        // Error bounces are left out (see the header); groupchat and headline never qualify.
        _ => false,
    }
}

/// `<message from=bare to=session><kind xmlns=carbons><forwarded>msg</forwarded></kind>`.
fn wrap(kind: &str, bare: &Jid, to: &Jid, msg: &Element) -> Element {
    Element::new("message", ns::CLIENT)
        .with_attr("from", bare.to_string())
        .with_attr("to", to.to_string())
        .with_attr("type", "chat")
        .with_child(
            Element::new(kind, ns::CARBONS)
                .with_child(Element::new("forwarded", ns::FORWARD).with_child(msg.clone())),
        )
}

/// The sessions of `user` with carbons on, leaving out `skip`.
fn enabled(cx: &Cx, user: &str, skip: &[Jid]) -> Vec<Jid> {
    cx.sessions()
        .of(user)
        .iter()
        .filter(|s| s.flags.carbons && !skip.contains(&s.jid))
        .map(|s| s.jid.clone())
        .collect()
}

impl Module for Carbons {
    fn name(&self) -> &'static str {
        "carbons"
    }

    fn bind2_features(&self) -> &'static [&'static str] {
        &[ns::CARBONS]
    }

    /// XEP-0386 §3.2: carbons enabled as the session binds, so that nothing falls between the
    /// bind and an `<enable/>` iq.
    fn bind2(&self, cx: &mut Cx, session: &Jid, request: &Element, _bound: &mut Element) {
        if request.child("enable", ns::CARBONS).is_some() {
            cx.with_session(session, |s| s.flags.carbons = true);
        }
    }
    fn disco(&self, _cx: &Cx, target: &Target, info: &mut DiscoInfo) {
        if *target == Target::Server {
            info.features.push(ns::CARBONS);
        }
    }
    fn iq_routes(&self) -> &'static [IqRoute] {
        // Clients send these without 'to' (their own account); some address the server.
        const { &[IqRoute::new(ns::CARBONS, To::SERVER.and(To::OWN))] }
    }
    fn handle_iq(&self, cx: &mut Cx, iq: &IqRequest) -> Result<Option<Element>, StanzaError> {
        let on = match iq.payload.name.as_str() {
            "enable" => true,
            "disable" => false,
            _ => return Err(StanzaError::bad_request("expected <enable/> or <disable/>")),
        };
        if !iq.set {
            return Err(StanzaError::bad_request(
                "carbons are enabled with an iq set",
            ));
        }
        cx.with_session(iq.from, |s| s.flags.carbons = on);
        Ok(None)
    }

    fn message_out(&self, cx: &mut Cx, st: &mut Stanza) -> Result<Flow, StanzaError> {
        let (Some(user), Origin::Client) = (st.from.local(), st.origin) else {
            return Ok(Flow::Continue);
        };
        if !should_copy(&st.el) {
            return Ok(Flow::Continue);
        }
        let bare = st.from.bare();
        for to in enabled(cx, user, std::slice::from_ref(&st.from)) {
            let copy = wrap("sent", &bare, &to, &st.el);
            cx.send(to, copy);
        }
        Ok(Flow::Continue)
    }

    fn message_in(
        &self,
        cx: &mut Cx,
        user: &str,
        st: &mut Stanza,
        targets: &[Jid],
    ) -> Result<Flow, StanzaError> {
        let msg = &st.el;
        if !should_copy(msg) {
            return Ok(Flow::Continue);
        }
        let bare = Jid::bare_from(user, cx.domain());
        for to in enabled(cx, user, targets) {
            // A message between two sessions of one account: the sender has its <sent/> copy.
            if msg.attr("from") == Some(to.to_string().as_str()) {
                continue;
            }
            let copy = wrap("received", &bare, &to, msg);
            cx.send(to, copy);
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::stanza::test_message as msg;

    #[test]
    fn what_is_copied() {
        let body = ("body", ns::CLIENT);
        // (type, children, copied?, why)
        type Row<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], bool, &'a str);
        let rows: &[Row] = &[
            (Some("chat"), &[body], true, "chat with a body"),
            (Some("chat"), &[], true, "chat, even empty"),
            (
                Some("chat"),
                &[("composing", ns::CHATSTATES)],
                true,
                "chat state",
            ),
            (Some("normal"), &[body], true, "normal with a body"),
            (None, &[body], true, "no type is normal"),
            (None, &[], false, "normal without a body"),
            (None, &[("received", ns::RECEIPTS)], true, "normal receipt"),
            (
                None,
                &[("displayed", ns::CHAT_MARKERS)],
                true,
                "normal marker",
            ),
            (Some("headline"), &[body], false, "headline"),
            (Some("groupchat"), &[body], false, "groupchat"),
            (Some("error"), &[body], false, "error bounce"),
            (
                Some("chat"),
                &[body, ("private", ns::CARBONS)],
                false,
                "private",
            ),
            (
                Some("chat"),
                &[body, ("no-copy", ns::HINTS)],
                false,
                "no-copy hint",
            ),
            (
                Some("chat"),
                &[("sent", ns::CARBONS)],
                false,
                "already a sent carbon",
            ),
            (
                Some("chat"),
                &[("received", ns::CARBONS)],
                false,
                "already a carbon",
            ),
            (
                Some("chat"),
                &[body, ("x", ns::MUC_USER)],
                false,
                "MUC private message",
            ),
        ];
        for (kind, children, want, why) in rows {
            assert_eq!(should_copy(&msg(*kind, children)), *want, "{why}");
        }
    }

    #[test]
    fn wrapper_shape() {
        let bare = Jid::parse("a@x").unwrap();
        let to = Jid::parse("a@x/two").unwrap();
        let m = msg(Some("chat"), &[("body", ns::CLIENT)]);
        let w = wrap("sent", &bare, &to, &m);
        assert_eq!(w.attr("from"), Some("a@x"));
        assert_eq!(w.attr("to"), Some("a@x/two"));
        let fwd = w.child("sent", ns::CARBONS).unwrap();
        let inner = fwd.child("forwarded", ns::FORWARD).unwrap();
        assert_eq!(inner.child("message", ns::CLIENT), Some(&m));
    }
}
