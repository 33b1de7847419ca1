//! vCards: XEP-0054 vcard-temp v1.3, XEP-0153 vCard-Based Avatars v1.1 and XEP-0398 User Avatar
//! to vCard-Based Avatars Conversion v1.0.
//!
//! - A user sets and reads their own vCard (an iq without `to`, or to their bare JID); anyone
//!   reads a user's vCard at the bare JID, and gets `service-unavailable` when there is none,
//!   as when there is no such account (XEP-0054 §3.3). One vCard per account, replaced whole
//!   by each set, at most `max_bytes` of XML.
//! - XEP-0398 by injection (§5.2): where a user has published a XEP-0084 avatar and the asker
//!   may read both avatar nodes, the vCard's PHOTO is the PEP avatar (the metadata `info`
//!   without a URL, the image from the data node, whose SHA-1 must match the id), and an empty
//!   metadata item (the avatar was removed) means no PHOTO. Otherwise the stored PHOTO shows.
//! - The photo hash in presence (XEP-0153 §3.1, XEP-0398 §4): every available presence the
//!   user sends or the server sends for them (broadcast copies, answers to probes, directed
//!   presence) gets `<x xmlns='vcard-temp:x:update'><photo>hash</photo></x>` with the hash of
//!   the avatar its recipient would get from the vCard: the metadata `info` id for a PEP
//!   avatar, the SHA-1 of the stored PHOTO otherwise. A presence with an empty `<photo/>` (the
//!   client says it has no avatar yet) is left alone; without a known avatar nothing is added.
//!
//! Left out: copying a vCard PHOTO into PEP (XEP-0398 §3.2, optional), and mapping vcard-temp
//! to and from XEP-0292 vCard4, which clients publish to PEP themselves (node
//! `urn:xmpp:vcard4`, bounded like every PEP item). A presence is not sent again when the
//! avatar changes: clients do that (XEP-0153 §3.1, XEP-0398 §5.1).

use super::pep::Pep;
use super::{Cx, DiscoInfo, Entry, Flow, IqRequest, IqRoute, Module, Target, To};
use crate::jid::Jid;
use crate::stanza::{Condition, Origin, Stanza, StanzaError, Type};
use crate::storage::shapes::KeyVal;
use crate::xml::{Element, Node, ns, reader};
use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use redb::TableDefinition;
use serde::Deserialize;
use sha1::{Digest, Sha1};
use std::cell::RefCell;
use std::collections::HashMap;

/// localpart → the vCard's XML.
pub static USER_TO_VCARD: KeyVal<&str> = KeyVal(TableDefinition::new("vcard"));

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    /// Largest vCard, as XML, in bytes (its photo included).
    pub max_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            max_bytes: 131_072,
        }
    }
}

pub const ENTRY: Entry = Entry {
    tables: &[&USER_TO_VCARD],
    new: |config| {
        let c = &config.modules.vcard;
        c.enabled.then(|| {
            Box::new(VCard {
                max_bytes: c.max_bytes,
                hashes: RefCell::default(),
            }) as Box<dyn Module>
        })
    },
};

pub struct VCard {
    max_bytes: usize,
    /// The SHA-1 of each stored vCard's photo read so far (None: no photo), for presence.
    hashes: RefCell<HashMap<String, Option<String>>>,
}

/// Base64 as clients write it in vCards: padded or not, with line breaks (XEP-0153 §4.5).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn decode(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    LENIENT.decode(compact).ok()
}

fn sha1_hex(bytes: &[u8]) -> String {
    Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SHA-1 of the image in a vCard's PHOTO, if it has one.
fn photo_hash(vcard: &Element) -> Option<String> {
    let binval = vcard
        .child("PHOTO", ns::VCARD)?
        .child("BINVAL", ns::VCARD)?;
    decode(&binval.text())
        .filter(|b| !b.is_empty())
        .map(|b| sha1_hex(&b))
}

fn text_child(name: &str, text: &str) -> Element {
    Element::new(name, ns::VCARD).with_text(text)
}

/// A user's XEP-0084 avatar, as one asker may see it.
enum PepAvatar {
    /// The metadata says there is none.
    Removed,
    /// The image itself (its id, its type and the base64 data).
    Image {
        id: String,
        kind: Option<String>,
        data: String,
    },
    /// Only a URL is published (its id, type and URL).
    External {
        id: String,
        kind: Option<String>,
        url: String,
    },
}

impl PepAvatar {
    fn hash(&self) -> Option<&str> {
        match self {
            PepAvatar::Removed => None,
            PepAvatar::Image { id, .. } | PepAvatar::External { id, .. } => Some(id),
        }
    }

    fn photo(&self) -> Option<Element> {
        let (kind, value) = match self {
            PepAvatar::Removed => return None,
            PepAvatar::Image { kind, data, .. } => (kind, text_child("BINVAL", data)),
            PepAvatar::External { kind, url, .. } => (kind, text_child("EXTVAL", url)),
        };
        let mut photo = Element::new("PHOTO", ns::VCARD);
        if let Some(k) = kind {
            photo.push(text_child("TYPE", k));
        }
        photo.push(value);
        Some(photo)
    }
}

/// The avatar of `owner`'s metadata node that `asker` may see, if there is one: the `info`
/// without a URL (XEP-0398 §3.1) when any, else the first. `with_data` also reads the image
/// and checks its hash; without it (for presence) the id is enough.
fn pep_avatar(cx: &Cx, owner: &str, asker: &Jid, with_data: bool) -> Option<PepAvatar> {
    let pep = cx.module::<Pep>()?;
    if !pep.readable(cx, owner, ns::AVATAR_METADATA, asker) {
        return None;
    }
    let (_, metadata) = pep.last_item(cx, owner, ns::AVATAR_METADATA)?;
    if !metadata.is("metadata", ns::AVATAR_METADATA) {
        return None;
    }
    let infos: Vec<&Element> = metadata
        .elements()
        .filter(|e| e.is("info", ns::AVATAR_METADATA) && e.attr("id").is_some())
        .collect();
    let info = infos
        .iter()
        .find(|i| i.attr("url").is_none())
        .or(infos.first());
    let Some(info) = info else {
        return Some(PepAvatar::Removed);
    };
    let id = info.attr("id").unwrap_or_default().to_owned();
    let kind = info.attr("type").map(str::to_owned);
    if let Some(url) = info.attr("url") {
        return Some(PepAvatar::External {
            id,
            kind,
            url: url.to_owned(),
        });
    }
    if !with_data {
        return Some(PepAvatar::Image {
            id,
            kind,
            data: String::new(),
        });
    }
    if !pep.readable(cx, owner, ns::AVATAR_DATA, asker) {
        return None;
    }
    let data = pep.item(cx, owner, ns::AVATAR_DATA, &id)?;
    let text = data.text();
    let matches = decode(&text).is_some_and(|b| sha1_hex(&b).eq_ignore_ascii_case(&id));
    matches.then_some(PepAvatar::Image {
        id,
        kind,
        data: text.trim().to_owned(),
    })
}

impl VCard {
    fn stored(&self, cx: &Cx, user: &str) -> Result<Option<Element>, StanzaError> {
        let xml = USER_TO_VCARD
            .get(cx.store(), user)
            .map_err(super::internal("reading a vCard"))?;
        Ok(xml.and_then(|x| reader::parse_one(&x)))
    }

    /// The hash of the stored vCard's photo.
    fn stored_hash(&self, cx: &Cx, user: &str) -> Option<String> {
        if let Some(h) = self.hashes.borrow().get(user) {
            return h.clone();
        }
        let hash = self
            .stored(cx, user)
            .ok()
            .flatten()
            .and_then(|v| photo_hash(&v));
        self.hashes
            .borrow_mut()
            .insert(user.to_owned(), hash.clone());
        hash
    }

    /// The photo hash `recipient` should see in `owner`'s presence.
    fn hash_for(&self, cx: &Cx, owner: &str, recipient: &Jid) -> Option<String> {
        match pep_avatar(cx, owner, recipient, false) {
            Some(a) => a.hash().map(str::to_owned),
            None => self.stored_hash(cx, owner),
        }
    }

    fn get(&self, cx: &Cx, owner: &str, own: bool, asker: &Jid) -> Result<Element, StanzaError> {
        let stored = self.stored(cx, owner)?;
        let avatar = pep_avatar(cx, owner, asker, true);
        if stored.is_none() && avatar.is_none() && !own {
            return Err(StanzaError::service_unavailable());
        }
        let mut vcard = stored.unwrap_or_else(|| Element::new("vCard", ns::VCARD));
        if let Some(a) = avatar {
            vcard
                .children
                .retain(|n| !matches!(n, Node::Element(e) if e.is("PHOTO", ns::VCARD)));
            if let Some(photo) = a.photo() {
                vcard.push(photo);
            }
        }
        Ok(vcard)
    }

    fn set(&self, cx: &mut Cx, owner: &str, vcard: &Element) -> Result<(), StanzaError> {
        let xml = vcard.to_xml();
        if xml.len() > self.max_bytes {
            return Err(StanzaError::with_text(
                Condition::NotAcceptable,
                format!("a vCard is at most {} bytes", self.max_bytes),
            ));
        }
        cx.write(USER_TO_VCARD.put(owner, xml));
        self.hashes
            .borrow_mut()
            .insert(owner.to_owned(), photo_hash(vcard));
        Ok(())
    }
}

impl Module for VCard {
    fn name(&self) -> &'static str {
        "vcard"
    }

    fn disco(&self, cx: &Cx, target: &Target, info: &mut DiscoInfo) {
        match target {
            Target::Server | Target::Account { .. } => info.features.push(ns::VCARD),
            Target::Service(_) => {}
        }
        if let Target::Account { own: true, .. } = target
            && cx.module::<Pep>().is_some()
        {
            info.features.push(ns::PEP_VCARD_CONVERSION);
        }
    }

    fn iq_routes(&self) -> &'static [IqRoute] {
        const { &[IqRoute::new(ns::VCARD, To::ACCOUNTS)] }
    }

    fn handle_iq(&self, cx: &mut Cx, iq: &IqRequest) -> Result<Option<Element>, StanzaError> {
        let Target::Account { user, own } = iq.target else {
            return Err(StanzaError::service_unavailable());
        };
        if !iq.payload.is("vCard", ns::VCARD) {
            return Err(StanzaError::bad_request(
                "the payload is <vCard xmlns='vcard-temp'/>",
            ));
        }
        match (iq.set, own) {
            (false, _) => self.get(cx, user, own, iq.from).map(Some),
            (true, true) => self.set(cx, user, iq.payload).map(|()| None),
            (true, false) => Err(StanzaError::new(Condition::Forbidden)),
        }
    }

    fn presence_out(&self, cx: &mut Cx, st: &mut Stanza) -> Result<Flow, StanzaError> {
        if st.typ != Type::Available || st.origin == Origin::Server {
            return Ok(Flow::Continue);
        }
        let Some(owner) = st.from.local().map(str::to_owned) else {
            return Ok(Flow::Continue);
        };
        // XEP-0398 §4: the client says it has no image to show; leave it be.
        let keeps_empty = st.el.child("x", ns::VCARD_UPDATE).is_some_and(|x| {
            x.child("photo", ns::VCARD_UPDATE)
                .is_some_and(|p| p.text().trim().is_empty())
        });
        if keeps_empty {
            return Ok(Flow::Continue);
        }
        let recipient = st.to.clone().unwrap_or_else(|| st.from.bare());
        if let Some(hash) = self.hash_for(cx, &owner, &recipient) {
            st.el
                .children
                .retain(|n| !matches!(n, Node::Element(e) if e.is("x", ns::VCARD_UPDATE)));
            st.el.push(
                Element::new("x", ns::VCARD_UPDATE)
                    .with_child(Element::new("photo", ns::VCARD_UPDATE).with_text(hash)),
            );
        }
        Ok(Flow::Continue)
    }

    fn account_removed(&self, user: &str) {
        self.hashes.borrow_mut().remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Out, TestRouter};
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n not really an image";

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn router() -> TestRouter {
        TestRouter::with_users(&["alice", "bob", "carol"])
    }

    fn befriend(t: &TestRouter, a: &str, b: &str) {
        let (ja, jb) = (t.bind(a, "setup"), t.bind(b, "setup"));
        for (from, to, typ) in [
            (&ja, b, "subscribe"),
            (&jb, a, "subscribed"),
            (&jb, a, "subscribe"),
            (&ja, b, "subscribed"),
        ] {
            t.client(
                from,
                &format!("<presence type='{typ}' to='{to}@localhost'/>"),
            );
        }
        t.close(&ja);
        t.close(&jb);
    }

    fn vcard_set(t: &TestRouter, who: &Jid, inner: &str) -> Out {
        t.client(
            who,
            &format!("<iq type='set' id='s'><vCard xmlns='vcard-temp'>{inner}</vCard></iq>"),
        )
    }

    fn vcard_get(t: &TestRouter, who: &Jid, to: Option<&str>) -> Out {
        let to = to
            .map(|u| format!(" to='{u}@localhost'"))
            .unwrap_or_default();
        t.client(
            who,
            &format!("<iq type='get' id='g'{to}><vCard xmlns='vcard-temp'/></iq>"),
        )
    }

    /// The vCard in the result `who` got.
    fn result_vcard<'a>(out: &'a Out, who: &Jid) -> &'a Element {
        out.to(who)
            .into_iter()
            .find(|e| e.name == "iq" && e.attr("type") == Some("result"))
            .and_then(|e| e.child("vCard", ns::VCARD))
            .unwrap_or_else(|| panic!("no vCard for {who}: {}", out.show()))
    }

    fn photo_of(v: &Element) -> Option<(String, String)> {
        let p = v.child("PHOTO", ns::VCARD)?;
        Some((
            p.child("TYPE", ns::VCARD)
                .map(Element::text)
                .unwrap_or_default(),
            p.child("BINVAL", ns::VCARD)
                .map(Element::text)
                .unwrap_or_default(),
        ))
    }

    /// The photo hash in the presence `to` got from `from`.
    fn presence_hash(out: &Out, to: &Jid, from: &str) -> Option<String> {
        let p = out
            .to(to)
            .into_iter()
            .find(|e| e.name == "presence" && e.attr("from") == Some(from))
            .unwrap_or_else(|| panic!("no presence from {from} for {to}: {}", out.show()));
        p.child("x", ns::VCARD_UPDATE)
            .and_then(|x| x.child("photo", ns::VCARD_UPDATE))
            .map(Element::text)
    }

    fn publish(node: &str, id: &str, payload: &str, access: &str) -> String {
        format!(
            "<iq type='set' id='p'><pubsub xmlns='{}'><publish node='{node}'><item id='{id}'>{payload}</item></publish>\
             <publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
             <value>{}</value></field><field var='pubsub#access_model'><value>{access}</value></field></x>\
             </publish-options></pubsub></iq>",
            ns::PUBSUB,
            ns::PUBSUB_PUBLISH_OPTIONS
        )
    }

    /// Publishes an avatar as Conversations does: the data, then the metadata.
    fn publish_avatar(t: &TestRouter, who: &Jid, image: &[u8], access: &str) -> String {
        let id = sha1_hex(image);
        let data = format!("<data xmlns='urn:xmpp:avatar:data'>{}</data>", b64(image));
        t.client(who, &publish(ns::AVATAR_DATA, &id, &data, access))
            .assert_sent(who, "<iq type='result' id='p'/>");
        let meta = format!(
            "<metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='{}' id='{id}' type='image/png' height='64' width='64'/></metadata>",
            image.len()
        );
        t.client(who, &publish(ns::AVATAR_METADATA, &id, &meta, access))
            .assert_sent(who, "<iq type='result' id='p'/>");
        id
    }

    #[test]
    fn own_vcard_round_trip_and_others_read_it() {
        let t = router();
        let a = t.online("alice", "phone");
        let b = t.online("bob", "pc");
        // Nothing stored: an empty vCard for the owner, service-unavailable for others.
        let out = vcard_get(&t, &a, None);
        assert!(result_vcard(&out, &a).children.is_empty());
        vcard_get(&t, &b, Some("alice")).assert_error(&b, "g", Condition::ServiceUnavailable);
        vcard_set(&t, &a, "<FN>Alice</FN><NICKNAME>al</NICKNAME>")
            .assert_sent(&a, "<iq type='result' id='s'/>");
        let out = vcard_get(&t, &a, Some("alice"));
        out.assert_sent(&a, "<iq type='result' id='g'><vCard xmlns='vcard-temp'><FN>Alice</FN><NICKNAME>al</NICKNAME></vCard></iq>");
        // Anyone reads it at the bare JID, without a subscription.
        let out = vcard_get(&t, &b, Some("alice"));
        out.assert_sent(&b, "<iq type='result' id='g' from='alice@localhost'><vCard xmlns='vcard-temp'><FN>Alice</FN></vCard></iq>");
        // A set replaces the whole vCard.
        vcard_set(&t, &a, "<NICKNAME>ally</NICKNAME>");
        let out = vcard_get(&t, &b, Some("alice"));
        assert!(result_vcard(&out, &b).child("FN", ns::VCARD).is_none());
        // Stored once, in the vcard table.
        let rows: HashMap<String, usize> = t.router.store.rows_of("alice").into_iter().collect();
        assert_eq!(rows.get("vcard"), Some(&1));
    }

    #[test]
    fn nobody_sets_another_users_vcard_and_size_is_bounded() {
        let mut cfg = crate::config::Config::default();
        cfg.modules.vcard.max_bytes = 2048;
        let t = TestRouter::with_config(cfg, &["alice", "bob"]);
        let a = t.online("alice", "phone");
        let b = t.online("bob", "pc");
        vcard_set(&t, &a, "<FN>Alice</FN>");
        let out = t.client(
            &b,
            "<iq type='set' id='x' to='alice@localhost'><vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard></iq>",
        );
        out.assert_error(&b, "x", Condition::Forbidden);
        let out = vcard_set(&t, &a, &format!("<DESC>{}</DESC>", "x".repeat(3000)));
        out.assert_error(&a, "s", Condition::NotAcceptable);
        let out = vcard_get(&t, &b, Some("alice"));
        out.assert_sent(
            &b,
            "<iq type='result'><vCard xmlns='vcard-temp'><FN>Alice</FN></vCard></iq>",
        );
        // A vCard request to an account that does not exist looks like one without a vCard.
        vcard_get(&t, &b, Some("nobody")).assert_error(&b, "g", Condition::ServiceUnavailable);
        // A wrong payload name is refused.
        let out = t.client(&a, "<iq type='get' id='w'><vcard xmlns='vcard-temp'/></iq>");
        out.assert_error(&a, "w", Condition::BadRequest);
    }

    #[test]
    fn the_stored_photo_hash_goes_into_presence() {
        let t = router();
        befriend(&t, "alice", "bob");
        let b = t.online("bob", "pc");
        let a = t.bind("alice", "phone");
        vcard_set(
            &t,
            &a,
            &format!(
                "<PHOTO><TYPE>image/png</TYPE><BINVAL>{}\n{}</BINVAL></PHOTO>",
                &b64(PNG)[..8],
                &b64(PNG)[8..]
            ),
        );
        let hash = sha1_hex(PNG);
        // A client that does not know the hash: the server adds it.
        let out = t.client(&a, "<presence/>");
        assert_eq!(
            presence_hash(&out, &b, "alice@localhost/phone"),
            Some(hash.clone())
        );
        assert_eq!(
            presence_hash(&out, &a, "alice@localhost/phone"),
            Some(hash.clone())
        );
        // An empty <x/> (not ready) is overwritten; a stale hash too.
        let out = t.client(&a, "<presence><x xmlns='vcard-temp:x:update'/></presence>");
        assert_eq!(
            presence_hash(&out, &b, "alice@localhost/phone"),
            Some(hash.clone())
        );
        let out = t.client(
            &a,
            "<presence><x xmlns='vcard-temp:x:update'><photo>0000</photo></x></presence>",
        );
        assert_eq!(
            presence_hash(&out, &b, "alice@localhost/phone"),
            Some(hash.clone())
        );
        // An empty photo (no image advertised) is the client's choice.
        let out = t.client(
            &a,
            "<presence><x xmlns='vcard-temp:x:update'><photo/></x></presence>",
        );
        assert_eq!(
            presence_hash(&out, &b, "alice@localhost/phone"),
            Some(String::new())
        );
        // Directed presence and the answer to a probe carry it too.
        t.client(&a, "<presence/>");
        let c = t.online("carol", "pc");
        let out = t.client(&a, "<presence to='carol@localhost'/>");
        assert_eq!(
            presence_hash(&out, &c, "alice@localhost/phone"),
            Some(hash.clone())
        );
        let b2 = t.bind("bob", "tablet");
        let out = t.client(&b2, "<presence/>");
        assert_eq!(
            presence_hash(&out, &b2, "alice@localhost/phone"),
            Some(hash.clone())
        );
        // Without a photo in the vCard, nothing is added.
        vcard_set(&t, &a, "<FN>Alice</FN>");
        let out = t.client(&a, "<presence/>");
        assert_eq!(presence_hash(&out, &b, "alice@localhost/phone"), None);
        // The photo itself comes back with the vCard.
        vcard_set(
            &t,
            &a,
            &format!(
                "<PHOTO><TYPE>image/png</TYPE><BINVAL>{}</BINVAL></PHOTO>",
                b64(PNG)
            ),
        );
        let out = vcard_get(&t, &b, Some("alice"));
        assert_eq!(
            photo_of(result_vcard(&out, &b)),
            Some(("image/png".into(), b64(PNG)))
        );
    }

    #[test]
    fn a_pep_avatar_shows_in_the_vcard_and_presence_of_those_who_may_see_it() {
        let t = router();
        befriend(&t, "alice", "bob");
        let a = t.online("alice", "phone");
        let b = t.online("bob", "pc");
        let c = t.online("carol", "pc");
        vcard_set(&t, &a, "<FN>Alice</FN>");
        let id = publish_avatar(&t, &a, PNG, "presence");
        // Bob (subscribed) sees the PEP avatar in the vCard; Carol (a stranger) does not.
        let out = vcard_get(&t, &b, Some("alice"));
        let v = result_vcard(&out, &b);
        assert_eq!(
            v.child("FN", ns::VCARD).map(Element::text),
            Some("Alice".into())
        );
        assert_eq!(photo_of(v), Some(("image/png".into(), b64(PNG))));
        let out = vcard_get(&t, &c, Some("alice"));
        assert_eq!(photo_of(result_vcard(&out, &c)), None);
        // The presence hash is the metadata id, for those who may read it.
        let out = t.client(&a, "<presence/>");
        assert_eq!(
            presence_hash(&out, &b, "alice@localhost/phone"),
            Some(id.clone())
        );
        let out = t.client(&a, "<presence to='carol@localhost'/>");
        assert_eq!(presence_hash(&out, &c, "alice@localhost/phone"), None);
        // An open avatar is everyone's. The nodes exist with another access model, so the
        // client reconfigures them first, as Conversations does after precondition-not-met.
        for node in [ns::AVATAR_DATA, ns::AVATAR_METADATA] {
            let out = t.client(&a, &format!(
                "<iq type='set' id='c'><pubsub xmlns='{}'><configure node='{node}'><x xmlns='jabber:x:data' type='submit'>\
                 <field var='FORM_TYPE' type='hidden'><value>{}</value></field>\
                 <field var='pubsub#access_model'><value>open</value></field></x></configure></pubsub></iq>",
                ns::PUBSUB_OWNER,
                ns::PUBSUB_NODE_CONFIG
            ));
            out.assert_sent(&a, "<iq type='result' id='c'/>");
        }
        let id2 = publish_avatar(&t, &a, b"another image", "open");
        let out = t.client(&a, "<presence to='carol@localhost'/>");
        assert_eq!(
            presence_hash(&out, &c, "alice@localhost/phone"),
            Some(id2.clone())
        );
        let out = vcard_get(&t, &c, Some("alice"));
        assert_eq!(
            photo_of(result_vcard(&out, &c)).map(|p| p.1),
            Some(b64(b"another image"))
        );
        // The PEP avatar wins over a stored photo.
        vcard_set(
            &t,
            &a,
            &format!(
                "<PHOTO><TYPE>image/png</TYPE><BINVAL>{}</BINVAL></PHOTO>",
                b64(PNG)
            ),
        );
        let out = vcard_get(&t, &b, Some("alice"));
        let v = result_vcard(&out, &b);
        assert_eq!(v.elements().filter(|e| e.name == "PHOTO").count(), 1);
        assert_eq!(photo_of(v).map(|p| p.1), Some(b64(b"another image")));
        // Empty metadata: the avatar is gone, from the vCard and from presence.
        t.client(
            &a,
            &publish(
                ns::AVATAR_METADATA,
                "none",
                "<metadata xmlns='urn:xmpp:avatar:metadata'/>",
                "open",
            ),
        );
        let out = vcard_get(&t, &b, Some("alice"));
        assert_eq!(photo_of(result_vcard(&out, &b)), None);
        let out = t.client(&a, "<presence/>");
        assert_eq!(presence_hash(&out, &b, "alice@localhost/phone"), None);
    }

    #[test]
    fn a_data_item_that_does_not_match_its_id_is_not_shown() {
        let t = router();
        let a = t.online("alice", "phone");
        let b = t.online("bob", "pc");
        vcard_set(
            &t,
            &a,
            &format!("<PHOTO><BINVAL>{}</BINVAL></PHOTO>", b64(PNG)),
        );
        let id = sha1_hex(b"claimed");
        let data = format!(
            "<data xmlns='urn:xmpp:avatar:data'>{}</data>",
            b64(b"other bytes")
        );
        t.client(&a, &publish(ns::AVATAR_DATA, &id, &data, "open"));
        let meta = format!(
            "<metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='7' id='{id}' type='image/png'/></metadata>"
        );
        t.client(&a, &publish(ns::AVATAR_METADATA, &id, &meta, "open"));
        // The stored photo shows instead of the mismatched one.
        let out = vcard_get(&t, &b, Some("alice"));
        assert_eq!(
            photo_of(result_vcard(&out, &b)).map(|p| p.1),
            Some(b64(PNG))
        );
    }

    #[test]
    fn disco_advertises_vcard_and_the_conversion_to_the_owner() {
        let t = router();
        let a = t.online("alice", "phone");
        let b = t.online("bob", "pc");
        let out = t.client(&a, "<iq type='get' id='d' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
        out.assert_sent(&a, "<iq type='result'><query xmlns='http://jabber.org/protocol/disco#info'><feature var='vcard-temp'/></query></iq>");
        let out = t.client(&a, "<iq type='get' id='d' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
        out.assert_sent(&a, "<iq type='result'><query xmlns='http://jabber.org/protocol/disco#info'><feature var='urn:xmpp:pep-vcard-conversion:0'/></query></iq>");
        let out = t.client(&b, "<iq type='get' id='d' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
        out.assert_not_sent(&b, "<iq><query xmlns='http://jabber.org/protocol/disco#info'><feature var='urn:xmpp:pep-vcard-conversion:0'/></query></iq>");
    }

    #[test]
    fn vcard4_is_a_pep_node_contacts_read() {
        let t = router();
        befriend(&t, "alice", "bob");
        let a = t.online("alice", "phone");
        let b = t.online("bob", "pc");
        let card =
            "<vcard xmlns='urn:ietf:params:xml:ns:vcard-4.0'><fn><text>Alice</text></fn></vcard>";
        t.client(&a, &publish("urn:xmpp:vcard4", "current", card, "presence"))
            .assert_sent(&a, "<iq type='result' id='p'/>");
        let out = t.client(&b, "<iq type='get' id='v4' to='alice@localhost'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:vcard4'/></pubsub></iq>");
        out.assert_sent(&b, "<iq type='result' id='v4'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:vcard4'><item id='current'><vcard xmlns='urn:ietf:params:xml:ns:vcard-4.0'><fn><text>Alice</text></fn></vcard></item></items></pubsub></iq>");
    }

    #[test]
    fn removing_the_account_forgets_the_vcard() {
        use crate::storage::accounts;
        let t = router();
        let a = t.online("alice", "phone");
        vcard_set(
            &t,
            &a,
            &format!("<PHOTO><BINVAL>{}</BINVAL></PHOTO>", b64(PNG)),
        );
        t.close(&a);
        t.router
            .store
            .commit_blocking(vec![accounts::delete("alice")])
            .unwrap();
        t.router.account_removed("alice");
        assert_eq!(t.router.store.rows_of("alice"), vec![]);
        assert!(t.module::<VCard>().hashes.borrow().get("alice").is_none());
    }
}
