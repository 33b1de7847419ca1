//! XEP-0115 Entity Capabilities, v1.6: what each client session says it can do.
//!
//! A client puts `<c xmlns='http://jabber.org/protocol/caps' hash node ver/>` in its presence;
//! `ver` is a hash of its disco#info (§5.1). The module reads it from every available presence a
//! local client broadcasts and from every presence that reaches a local account, remembers each
//! full JID's `ver`, and for a `ver` it has not seen asks that JID's disco#info at
//! `node#ver`, once: other JIDs with the same `ver` wait for that answer. An answer whose hash
//! matches (§5.4, sha-1 and sha-256) is cached for everyone, in a bounded cache; one that does
//! not match, and one for a hash this module does not know (or a legacy `<c/>` without one), is
//! used for the JID that gave it only, and the next JID with that `ver` is asked again. A JID
//! is forgotten on its unavailable presence and when its session ends.
//!
//! Other modules read a JID's features with [`Caps::features`] (PEP filters its notifications
//! by `<node>+notify`, XEP-0163 §4). When a session's features become known, or change, every
//! module hears [`SessionEvent::Caps`] for it.
//!
//! Left out: the `ext` attribute of the legacy format, and the server's own caps in stream
//! features (§6.3).

use super::{Cx, Entry, Flow, IqOut, Module, SessionEvent};
use crate::jid::Jid;
use crate::stanza::{Origin, Stanza, StanzaError, Type};
use crate::xml::{Element, ns};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use sha1::Digest;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

/// XEP-0115's namespace, on `<c/>` in presence.
pub const NS: &str = "http://jabber.org/protocol/caps";

/// Longest `node` and `ver` read; a longer one is ignored (a real `ver` is a base64 hash).
const MAX_NODE: usize = 1023;
const MAX_VER: usize = 128;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    /// Verified `ver` strings whose features are kept; the least recently used goes first.
    pub max_cached: usize,
    /// Seconds a client has to answer the disco#info query.
    pub query_timeout_secs: u64,
    /// Most bytes of feature names one answer may carry; a larger answer is not used.
    pub max_info_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            max_cached: 1000,
            query_timeout_secs: 30,
            max_info_bytes: 16_384,
        }
    }
}

pub const ENTRY: Entry = Entry {
    tables: &[],
    new: |config| {
        let c = &config.modules.caps;
        c.enabled.then(|| Box::new(Caps::new(c)) as Box<dyn Module>)
    },
};

/// A JID's features: disco#info feature names, sorted.
pub type Features = Rc<BTreeSet<String>>;

/// A hash function of §5.1 this module verifies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Algo {
    Sha1,
    Sha256,
}

impl Algo {
    fn parse(name: &str) -> Option<Algo> {
        match name {
            "sha-1" => Some(Algo::Sha1),
            "sha-256" => Some(Algo::Sha256),
            _ => None,
        }
    }

    fn hash(self, s: &str) -> String {
        match self {
            Algo::Sha1 => B64.encode(sha1::Sha1::digest(s.as_bytes())),
            Algo::Sha256 => B64.encode(sha2::Sha256::digest(s.as_bytes())),
        }
    }
}

/// What a `<c/>` names: the `ver`, with the hash that made it when this module can check it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Ver {
    algo: Option<Algo>,
    ver: String,
}

/// One full JID's caps.
struct JidCaps {
    ver: Ver,
    /// The disco node to ask (`node#ver`).
    node: String,
    features: Option<Features>,
    /// This JID was asked for its `ver` and gave no usable answer: it is not asked again.
    failed: bool,
}

/// A disco#info query in flight.
struct Question {
    ver: Ver,
    asked: Jid,
}

pub struct Caps {
    max_cached: usize,
    timeout: Duration,
    max_info_bytes: usize,
    /// Verified `ver`s → features, with the tick of their last use.
    cache: RefCell<HashMap<Ver, (Features, u64)>>,
    /// The cache's entries by last use, for eviction.
    lru: RefCell<BTreeMap<u64, Ver>>,
    tick: Cell<u64>,
    jids: RefCell<HashMap<Jid, JidCaps>>,
    /// Queries in flight by token.
    asking: RefCell<HashMap<u64, Question>>,
    next_token: Cell<u64>,
}

impl Caps {
    pub fn new(config: &Config) -> Caps {
        Caps {
            max_cached: config.max_cached,
            timeout: Duration::from_secs(config.query_timeout_secs),
            max_info_bytes: config.max_info_bytes,
            cache: RefCell::default(),
            lru: RefCell::default(),
            tick: Cell::new(0),
            jids: RefCell::default(),
            asking: RefCell::default(),
            next_token: Cell::new(1),
        }
    }

    /// The features `jid` (a full JID) advertised, once they are known.
    pub fn features(&self, jid: &Jid) -> Option<Features> {
        self.jids.borrow().get(jid).and_then(|c| c.features.clone())
    }

    /// Whether a disco#info answer for `jid` is still awaited.
    #[cfg(test)]
    pub fn waiting(&self, jid: &Jid) -> bool {
        self.jids
            .borrow()
            .get(jid)
            .is_some_and(|c| c.features.is_none() && !c.failed)
    }

    fn touch(&self, ver: &Ver) -> Option<Features> {
        let mut cache = self.cache.borrow_mut();
        let (features, used) = cache.get_mut(ver)?;
        let t = self.tick.get() + 1;
        self.tick.set(t);
        let mut lru = self.lru.borrow_mut();
        lru.remove(used);
        lru.insert(t, ver.clone());
        *used = t;
        Some(features.clone())
    }

    fn remember(&self, ver: Ver, features: Features) {
        if self.max_cached == 0 {
            return;
        }
        let t = self.tick.get() + 1;
        self.tick.set(t);
        let mut cache = self.cache.borrow_mut();
        let mut lru = self.lru.borrow_mut();
        if let Some((_, used)) = cache.insert(ver.clone(), (features, t)) {
            lru.remove(&used);
        }
        lru.insert(t, ver);
        while cache.len() > self.max_cached {
            let Some((_, oldest)) = lru.pop_first() else {
                break;
            };
            cache.remove(&oldest);
        }
    }

    /// Reads the caps of a presence from `jid`.
    fn observe(&self, cx: &mut Cx, jid: &Jid, presence: &Element) {
        if jid.is_bare() {
            return;
        }
        let Some(c) = presence.child("c", NS) else {
            return;
        };
        let (Some(node), Some(ver)) = (c.attr("node"), c.attr("ver")) else {
            return;
        };
        if node.len() > MAX_NODE || ver.len() > MAX_VER || ver.is_empty() {
            return;
        }
        let ver = Ver {
            algo: c.attr("hash").and_then(Algo::parse),
            ver: ver.to_owned(),
        };
        if self.jids.borrow().get(jid).is_some_and(|j| j.ver == ver) {
            return;
        }
        let known = match ver.algo {
            Some(_) => self.touch(&ver),
            None => None,
        };
        let entry = JidCaps {
            ver: ver.clone(),
            node: format!("{node}#{}", ver.ver),
            features: known.clone(),
            failed: false,
        };
        let before = self.jids.borrow_mut().insert(jid.clone(), entry);
        match known {
            Some(f) => {
                let changed = before.and_then(|b| b.features).is_none_or(|b| b != f);
                if changed {
                    self.announce(cx, jid);
                }
            }
            None => self.ask_for(cx, &ver),
        }
    }

    /// Asks some JID that advertised `ver` for its features, unless someone is asked already.
    /// A hash this module cannot check is asked of each JID: its answer is that JID's alone.
    /// A JID is asked one question at a time, so that a client changing its `ver` in a loop
    /// cannot fill the server's table of iq requests.
    fn ask_for(&self, cx: &mut Cx, ver: &Ver) {
        let (in_flight, busy): (bool, HashSet<Jid>) = {
            let asking = self.asking.borrow();
            (
                asking.values().any(|q| q.ver == *ver),
                asking.values().map(|q| q.asked.clone()).collect(),
            )
        };
        if ver.algo.is_some() && in_flight {
            return;
        }
        let candidates: Vec<(Jid, String)> = self
            .jids
            .borrow()
            .iter()
            .filter(|(j, c)| {
                c.ver == *ver && c.features.is_none() && !c.failed && !busy.contains(*j)
            })
            .map(|(j, c)| (j.clone(), c.node.clone()))
            .collect();
        let count = match ver.algo {
            Some(_) => 1,
            None => candidates.len(),
        };
        for (jid, node) in candidates.into_iter().take(count) {
            let token = self.next_token.get();
            self.next_token.set(token + 1);
            self.asking.borrow_mut().insert(
                token,
                Question {
                    ver: ver.clone(),
                    asked: jid.clone(),
                },
            );
            let server = Jid::parse(cx.domain()).expect("the configured domain is a JID");
            cx.send_iq(
                "caps",
                IqOut {
                    from: server,
                    to: jid,
                    set: false,
                    payload: Element::new("query", ns::DISCO_INFO).with_attr("node", node),
                    token,
                    timeout: self.timeout,
                },
            );
        }
    }

    /// Tells every module that `jid`'s features are known now (when it is a session).
    fn announce(&self, cx: &mut Cx, jid: &Jid) {
        if cx.sessions().get(jid).is_some() {
            cx.raise(jid, SessionEvent::Caps);
        }
    }

    fn forget(&self, jid: &Jid) {
        self.jids.borrow_mut().remove(jid);
    }

    /// The features of a disco#info answer if it is usable for `ver`: well-formed (§5.4), no
    /// larger than allowed, and, when `ver`'s hash is known, hashing to it. The second value
    /// says whether the answer was verified (and may be cached for everyone).
    fn check(&self, ver: &Ver, info: &Element) -> Option<(Features, bool)> {
        let s = verification_string(info)?;
        let features: BTreeSet<String> = info
            .elements()
            .filter(|e| e.is("feature", ns::DISCO_INFO))
            .filter_map(|e| e.attr("var").map(str::to_owned))
            .collect();
        if features.iter().map(String::len).sum::<usize>() > self.max_info_bytes {
            return None;
        }
        let verified = ver.algo.is_some_and(|a| a.hash(&s) == ver.ver);
        Some((Rc::new(features), verified))
    }
}

/// The sha-1 `ver` of a disco#info `<query/>`, for tests that play a client.
#[cfg(test)]
pub fn sha1_ver(info: &Element) -> String {
    Algo::Sha1.hash(&verification_string(info).expect("a well-formed answer"))
}

/// A form field of an extended disco#info answer: its var and its values, sorted.
type Field<'a> = (&'a str, Vec<String>);

/// The §5.1 verification string of a disco#info `<query/>`, or None if the answer is
/// ill-formed (§5.4: a repeated identity, feature or form type).
fn verification_string(info: &Element) -> Option<String> {
    let mut identities: Vec<[&str; 4]> = info
        .elements()
        .filter(|e| e.is("identity", ns::DISCO_INFO))
        .map(|e| {
            let a = |k| e.attr(k).unwrap_or_default();
            [a("category"), a("type"), a("xml:lang"), a("name")]
        })
        .collect();
    identities.sort_unstable();
    if identities.windows(2).any(|w| w[0] == w[1]) {
        return None;
    }
    let mut features: Vec<&str> = info
        .elements()
        .filter(|e| e.is("feature", ns::DISCO_INFO))
        .filter_map(|e| e.attr("var"))
        .collect();
    features.sort_unstable();
    if features.windows(2).any(|w| w[0] == w[1]) {
        return None;
    }
    let mut forms: Vec<(String, Vec<Field>)> = Vec::new();
    for x in info.elements().filter(|e| e.is("x", ns::DATA_FORMS)) {
        let fields: Vec<&Element> = x
            .elements()
            .filter(|f| f.is("field", ns::DATA_FORMS))
            .collect();
        let values = |f: &Element| -> Vec<String> {
            f.elements()
                .filter(|v| v.is("value", ns::DATA_FORMS))
                .map(Element::text)
                .collect()
        };
        let Some(form_type) = fields.iter().find(|f| f.attr("var") == Some("FORM_TYPE")) else {
            continue;
        };
        let mut types = values(form_type);
        types.dedup();
        if types.len() > 1 {
            return None;
        }
        if form_type.attr("type") != Some("hidden") || types.is_empty() {
            continue;
        }
        let mut rest: Vec<(&str, Vec<String>)> = fields
            .iter()
            .filter_map(|f| {
                let var = f.attr("var").filter(|v| *v != "FORM_TYPE")?;
                let mut v = values(f);
                v.sort_unstable();
                Some((var, v))
            })
            .collect();
        rest.sort_unstable();
        forms.push((types.remove(0), rest));
    }
    forms.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if forms.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    let mut s = String::new();
    for [category, kind, lang, name] in identities {
        s.push_str(&format!("{category}/{kind}/{lang}/{name}<"));
    }
    for f in features {
        s.push_str(f);
        s.push('<');
    }
    for (form_type, fields) in forms {
        s.push_str(&form_type);
        s.push('<');
        for (var, values) in fields {
            s.push_str(var);
            s.push('<');
            for v in values {
                s.push_str(&v);
                s.push('<');
            }
        }
    }
    Some(s)
}

impl Module for Caps {
    fn name(&self) -> &'static str {
        "caps"
    }

    fn session_event(&self, _cx: &mut Cx, session: &Jid, event: SessionEvent) {
        if matches!(event, SessionEvent::Closed | SessionEvent::Bound) {
            self.forget(session);
        }
    }

    fn presence_out(&self, cx: &mut Cx, st: &mut Stanza) -> Result<Flow, StanzaError> {
        if st.origin == Origin::Client && st.to.is_none() {
            match st.typ {
                Type::Available => self.observe(cx, &st.from, &st.el),
                Type::Unavailable => self.forget(&st.from),
                _ => {}
            }
        }
        Ok(Flow::Continue)
    }

    fn presence_in(&self, cx: &mut Cx, _user: &str, st: &mut Stanza) -> Result<Flow, StanzaError> {
        match st.typ {
            Type::Available => self.observe(cx, &st.from, &st.el),
            // Directed unavailable presence from a session that stays available to others
            // does not take its caps away.
            Type::Unavailable if cx.sessions().get(&st.from).is_none_or(|s| !s.available) => {
                self.forget(&st.from)
            }
            _ => {}
        }
        Ok(Flow::Continue)
    }

    fn iq_response(
        &self,
        cx: &mut Cx,
        token: u64,
        response: Result<Option<&Element>, StanzaError>,
    ) {
        let Some(q) = self.asking.borrow_mut().remove(&token) else {
            return;
        };
        self.answered(cx, &q, response);
        // The JID asked may have moved on to another `ver` meanwhile, which it was not asked
        // about while this question was open.
        let now = self.jids.borrow().get(&q.asked).map(|c| c.ver.clone());
        if let Some(v) = now.filter(|v| *v != q.ver) {
            self.ask_for(cx, &v);
        }
    }
}

impl Caps {
    fn answered(&self, cx: &mut Cx, q: &Question, response: Result<Option<&Element>, StanzaError>) {
        let answer = response
            .ok()
            .flatten()
            .filter(|p| p.is("query", ns::DISCO_INFO))
            .and_then(|p| self.check(&q.ver, p));
        match answer {
            Some((features, true)) => {
                self.remember(q.ver.clone(), features.clone());
                let waiting: Vec<Jid> = {
                    let mut jids = self.jids.borrow_mut();
                    jids.iter_mut()
                        .filter(|(_, c)| c.ver == q.ver && c.features.as_ref() != Some(&features))
                        .map(|(j, c)| {
                            c.features = Some(features.clone());
                            j.clone()
                        })
                        .collect()
                };
                for j in waiting {
                    self.announce(cx, &j);
                }
            }
            Some((features, false)) => {
                let changed = self
                    .jids
                    .borrow_mut()
                    .get_mut(&q.asked)
                    .filter(|c| c.ver == q.ver)
                    .map(|c| c.features.replace(features.clone()) != Some(features))
                    .unwrap_or(false);
                if changed {
                    self.announce(cx, &q.asked);
                }
                self.ask_for(cx, &q.ver);
            }
            None => {
                if let Some(c) = self.jids.borrow_mut().get_mut(&q.asked)
                    && c.ver == q.ver
                {
                    c.failed = true;
                }
                self.ask_for(cx, &q.ver);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{TestRouter, parse};
    use super::*;
    use crate::config::Config as ServerConfig;

    /// Records the sessions whose caps were announced.
    #[derive(Default)]
    struct Listener(RefCell<Vec<Jid>>);

    impl Module for Listener {
        fn name(&self) -> &'static str {
            "listener"
        }
        fn session_event(&self, _cx: &mut Cx, session: &Jid, event: SessionEvent) {
            if event == SessionEvent::Caps {
                self.0.borrow_mut().push(session.clone());
            }
        }
    }

    fn router() -> TestRouter {
        TestRouter::with_extra(
            ServerConfig::default(),
            &["alice", "bob", "carol"],
            vec![Box::new(Listener::default())],
        )
    }

    const NODE: &str = "https://example.org/client";

    /// A disco#info answer listing `features`, and its sha-1 `ver`.
    fn info(features: &[&str]) -> (Element, String) {
        let mut q = Element::new("query", ns::DISCO_INFO).with_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "client")
                .with_attr("type", "phone"),
        );
        for f in features {
            q.push(Element::new("feature", ns::DISCO_INFO).with_attr("var", *f));
        }
        let ver = Algo::Sha1.hash(&verification_string(&q).unwrap());
        (q, ver)
    }

    fn presence(ver: &str) -> String {
        format!("<presence><c xmlns='{NS}' hash='sha-1' node='{NODE}' ver='{ver}'/></presence>")
    }

    /// The disco#info query the server sent to `jid`, if any: its id.
    fn question(out: &super::super::testing::Out, jid: &Jid) -> Option<String> {
        out.to(jid)
            .into_iter()
            .find(|el| el.name == "iq" && el.attr("type") == Some("get"))
            .map(|el| {
                let q = el
                    .child("query", ns::DISCO_INFO)
                    .expect("a disco#info query");
                assert!(q.attr("node").unwrap().starts_with(&format!("{NODE}#")));
                assert_eq!(el.attr("from"), Some("localhost"));
                el.attr("id").unwrap().to_owned()
            })
    }

    fn answer(t: &TestRouter, from: &Jid, id: &str, q: &Element) {
        t.client(
            from,
            &format!(
                "<iq type='result' id='{id}' to='localhost'>{}</iq>",
                q.to_xml()
            ),
        );
    }

    fn announced(t: &TestRouter) -> Vec<Jid> {
        std::mem::take(&mut *t.module::<Listener>().0.borrow_mut())
    }

    fn has(t: &TestRouter, j: &Jid, f: &str) -> bool {
        t.module::<Caps>()
            .features(j)
            .is_some_and(|s| s.contains(f))
    }

    #[test]
    fn the_xep_examples_hash_as_published() {
        let simple = parse(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='client' name='Exodus 0.9.1' type='pc'/>\
             <feature var='http://jabber.org/protocol/caps'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='http://jabber.org/protocol/muc'/></query>",
        );
        let s = verification_string(&simple).unwrap();
        assert_eq!(Algo::Sha1.hash(&s), "QgayPKawpkPSDYmwT/WM94uAlu0=");
        let complex = parse(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
             <identity xml:lang='el' category='client' name='\u{3a8} 0.11' type='pc'/>\
             <feature var='http://jabber.org/protocol/caps'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/>\
             <feature var='http://jabber.org/protocol/muc'/>\
             <x xmlns='jabber:x:data' type='result'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
             <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>\
             <field var='os'><value>Mac</value></field>\
             <field var='os_version'><value>10.5.1</value></field>\
             <field var='software'><value>Psi</value></field>\
             <field var='software_version'><value>0.11</value></field></x></query>",
        );
        let s = verification_string(&complex).unwrap();
        assert_eq!(Algo::Sha1.hash(&s), "q07IKJEyjvHSyhy//CH0CxmKi8w=");
        // §5.4: a repeated feature makes the answer ill-formed.
        let twice = parse(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <feature var='a'/><feature var='a'/></query>",
        );
        assert_eq!(verification_string(&twice), None);
    }

    #[test]
    fn an_unknown_ver_is_asked_once_verified_and_cached() {
        let t = router();
        let (q, ver) = info(&["urn:xmpp:omemo:2:devices+notify", "urn:xmpp:ping"]);
        let a = t.bind("alice", "phone");
        let out = t.client(&a, &presence(&ver));
        let id = question(&out, &a).expect("alice's client is asked");
        assert!(t.module::<Caps>().waiting(&a));
        // Bob's client advertises the same ver meanwhile: it is not asked too.
        let b = t.bind("bob", "laptop");
        let out = t.client(&b, &presence(&ver));
        assert_eq!(question(&out, &b), None);
        assert!(announced(&t).is_empty());
        answer(&t, &a, &id, &q);
        assert!(has(&t, &a, "urn:xmpp:omemo:2:devices+notify"));
        assert!(has(&t, &b, "urn:xmpp:ping"));
        let mut got = announced(&t);
        got.sort();
        assert_eq!(got, vec![a.clone(), b.clone()]);
        // A later session with that ver is known at once, without a question.
        let c = t.bind("carol", "tablet");
        let out = t.client(&c, &presence(&ver));
        assert_eq!(question(&out, &c), None);
        assert!(has(&t, &c, "urn:xmpp:ping"));
        assert_eq!(announced(&t), vec![c.clone()]);
        // The same presence again changes nothing.
        t.client(&c, &presence(&ver));
        assert!(announced(&t).is_empty());
        // Directed unavailable presence does not forget them; going unavailable does.
        t.client(&c, "<presence type='unavailable' to='alice@localhost'/>");
        assert!(has(&t, &c, "urn:xmpp:ping"));
        t.client(&c, "<presence type='unavailable'/>");
        assert_eq!(t.module::<Caps>().features(&c), None);
        t.close(&b);
        assert_eq!(t.module::<Caps>().features(&b), None);
        assert!(has(&t, &a, "urn:xmpp:ping"));
    }

    #[test]
    fn a_wrong_hash_is_not_cached_and_the_next_client_is_asked() {
        let t = router();
        let (_, ver) = info(&["urn:xmpp:ping"]);
        let (liar, _) = info(&["urn:xmpp:ping", "evil+notify"]);
        let a = t.bind("alice", "phone");
        let id = question(&t.client(&a, &presence(&ver)), &a).unwrap();
        let b = t.bind("bob", "laptop");
        assert_eq!(question(&t.client(&b, &presence(&ver)), &b), None);
        // Alice's answer does not hash to the ver: it is hers alone, and Bob is asked.
        let a_answer = format!(
            "<iq type='result' id='{id}' to='localhost'>{}</iq>",
            liar.to_xml()
        );
        let out = t.client(&a, &a_answer);
        let id_b = question(&out, &b).expect("bob is asked next");
        assert!(has(&t, &a, "evil+notify"));
        assert_eq!(t.module::<Caps>().features(&b), None);
        assert_eq!(announced(&t), vec![a.clone()]);
        let (good, _) = info(&["urn:xmpp:ping"]);
        answer(&t, &b, &id_b, &good);
        assert!(has(&t, &b, "urn:xmpp:ping") && !has(&t, &b, "evil+notify"));
        // Only the verified answer is cached: a newcomer gets it without a question.
        let c = t.bind("carol", "tablet");
        assert_eq!(question(&t.client(&c, &presence(&ver)), &c), None);
        assert!(!has(&t, &c, "evil+notify") && has(&t, &c, "urn:xmpp:ping"));
    }

    #[test]
    fn a_client_that_does_not_answer_times_out_and_another_is_asked() {
        let t = router();
        let (q, ver) = info(&["urn:xmpp:ping"]);
        let a = t.bind("alice", "phone");
        question(&t.client(&a, &presence(&ver)), &a).unwrap();
        let b = t.bind("bob", "laptop");
        assert_eq!(question(&t.client(&b, &presence(&ver)), &b), None);
        let out = t.advance(Duration::from_secs(31));
        let id = question(&out, &b).expect("bob is asked once alice timed out");
        assert!(!t.module::<Caps>().waiting(&a));
        answer(&t, &b, &id, &q);
        assert!(has(&t, &b, "urn:xmpp:ping"));
        // The verified answer serves alice too, who never answered.
        assert!(has(&t, &a, "urn:xmpp:ping"));
    }

    #[test]
    fn a_client_changing_its_ver_in_a_loop_has_one_question_open() {
        let t = router();
        let a = t.bind("alice", "phone");
        let mut ids = Vec::new();
        for i in 0..50 {
            let (_, ver) = info(&[&format!("urn:example:{i}")]);
            ids.extend(question(&t.client(&a, &presence(&ver)), &a));
        }
        assert_eq!(ids.len(), 1);
        // The answer to the first ver is cached; the ver the client has now is asked next.
        let (first, _) = info(&["urn:example:0"]);
        let out = t.client(
            &a,
            &format!(
                "<iq type='result' id='{}' to='localhost'>{}</iq>",
                ids[0],
                first.to_xml()
            ),
        );
        let id = question(&out, &a).expect("the current ver is asked");
        let (last, _) = info(&["urn:example:49"]);
        answer(&t, &a, &id, &last);
        assert!(has(&t, &a, "urn:example:49"));
        let b = t.bind("bob", "laptop");
        let (_, ver0) = info(&["urn:example:0"]);
        assert_eq!(question(&t.client(&b, &presence(&ver0)), &b), None);
        assert!(has(&t, &b, "urn:example:0"));
    }

    #[test]
    fn bad_answers_are_not_used() {
        let t = router();
        let (_, ver) = info(&["urn:xmpp:ping"]);
        let a = t.bind("alice", "phone");
        let id = question(&t.client(&a, &presence(&ver)), &a).unwrap();
        t.client(&a, &format!("<iq type='error' id='{id}' to='localhost'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"));
        assert_eq!(t.module::<Caps>().features(&a), None);
        assert!(!t.module::<Caps>().waiting(&a));
        // Too many feature bytes.
        let mut config = ServerConfig::default();
        config.modules.caps.max_info_bytes = 1024;
        let t = TestRouter::with_config(config, &["alice"]);
        let long: Vec<String> = (0..100)
            .map(|i| format!("urn:example:feature:{i}"))
            .collect();
        let refs: Vec<&str> = long.iter().map(String::as_str).collect();
        let (q, ver) = info(&refs);
        let a = t.bind("alice", "phone");
        let id = question(&t.client(&a, &presence(&ver)), &a).unwrap();
        answer(&t, &a, &id, &q);
        assert_eq!(t.module::<Caps>().features(&a), None);
    }
}
