//! XEP-0030 Service Discovery, v2.5rc3: disco#info and disco#items for the server, for each
//! account's bare JID and for each hosted service, each gathered from every module's
//! [`Module::disco`](super::Module::disco) for that target. The server is `server/im`; an
//! account is `account/registered` and lists to its owner the features it hosts (the archive,
//! say), to others only its identity. Nodes are not published.

use super::{Cx, DiscoInfo, Entry, IqRequest, IqRoute, Module, Target, To};
use crate::jid::Jid;
use crate::stanza::{Condition, StanzaError};
use crate::xml::{Element, ns};

pub const ENTRY: Entry = Entry {
    tables: &[],
    new: |_| Some(Box::new(Disco)),
};

pub struct Disco;

/// Everything the modules say about `target` (or its `node`) to `asker`, features sorted and
/// without duplicates.
pub fn gather(cx: &Cx, target: &Target, asker: &Jid, node: Option<&str>) -> DiscoInfo {
    let mut info = DiscoInfo {
        asker: Some(asker.clone()),
        ..DiscoInfo::default()
    };
    for m in cx.modules() {
        match node {
            None => m.disco(cx, target, &mut info),
            Some(n) => m.disco_node(cx, target, n, &mut info),
        }
    }
    info.features.sort_unstable();
    info.features.dedup();
    info
}

impl Module for Disco {
    fn name(&self) -> &'static str {
        "disco"
    }
    fn disco(&self, _cx: &Cx, target: &Target, info: &mut DiscoInfo) {
        let identity = match target {
            Target::Server => ("server", "im", Some("hearth")),
            Target::Account { .. } => ("account", "registered", None),
            // A service names its own identity.
            Target::Service(_) => {
                info.features.extend([ns::DISCO_INFO, ns::DISCO_ITEMS]);
                return;
            }
        };
        info.identities.push(identity);
        info.features.push(ns::DISCO_INFO);
        if *target == Target::Server {
            info.features.push(ns::DISCO_ITEMS);
        }
    }
    fn iq_routes(&self) -> &'static [IqRoute] {
        const {
            &[
                IqRoute::new(ns::DISCO_INFO, To::ANYONE),
                IqRoute::new(ns::DISCO_ITEMS, To::ANYONE),
            ]
        }
    }
    fn handle_iq(&self, cx: &mut Cx, iq: &IqRequest) -> Result<Option<Element>, StanzaError> {
        if iq.set {
            return Err(StanzaError::new(Condition::NotAllowed));
        }
        let node = iq.payload.attr("node");
        let info = gather(cx, &iq.target, iq.from, node);
        if node.is_some() && info.identities.is_empty() {
            return Err(StanzaError::new(Condition::ItemNotFound));
        }
        if iq.payload.ns == ns::DISCO_ITEMS {
            let mut q = Element::new("query", ns::DISCO_ITEMS);
            if let Some(n) = node {
                q.set_attr("node", n);
            }
            for (jid, name) in info.items {
                let mut item = Element::new("item", ns::DISCO_ITEMS).with_attr("jid", jid);
                if let Some(n) = name {
                    item.set_attr("name", n);
                }
                q.push(item);
            }
            for (jid, n) in info.nodes {
                q.push(
                    Element::new("item", ns::DISCO_ITEMS)
                        .with_attr("jid", jid)
                        .with_attr("node", n),
                );
            }
            return Ok(Some(q));
        }
        let mut q = Element::new("query", ns::DISCO_INFO);
        if let Some(n) = node {
            q.set_attr("node", n);
        }
        for (category, kind, name) in info.identities {
            let mut id = Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", category)
                .with_attr("type", kind);
            if let Some(n) = name {
                id.set_attr("name", n);
            }
            q.push(id);
        }
        for f in info.features {
            q.push(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
        }
        for form in info.forms {
            q.push(form);
        }
        Ok(Some(q))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::TestRouter;
    use crate::stanza::Condition;
    use crate::xml::ns;

    fn features(t: &TestRouter, from: &crate::jid::Jid, to: &str) -> Vec<String> {
        let out = t.client(
            from,
            &format!(
                "<iq type='get' id='d' to='{to}'><query xmlns='{}'/></iq>",
                ns::DISCO_INFO
            ),
        );
        let reply = out.only_to(from);
        let q = reply
            .child("query", ns::DISCO_INFO)
            .expect("a disco#info result");
        q.elements()
            .filter(|e| e.name == "feature")
            .filter_map(|e| e.attr("var").map(str::to_owned))
            .collect()
    }

    #[test]
    fn the_server_lists_what_its_modules_implement() {
        let t = TestRouter::new();
        let a = t.bind("alice", "phone");
        let f = features(&t, &a, "localhost");
        for want in [
            ns::DISCO_INFO,
            ns::DISCO_ITEMS,
            ns::PING,
            ns::VERSION,
            ns::TIME,
            ns::CARBONS,
            ns::OFFLINE,
            ns::MAM,
            ns::BLOCKING,
        ] {
            assert!(f.iter().any(|x| x == want), "{want} missing from {f:?}");
        }
        let mut sorted = f.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, f, "features are sorted and listed once");
    }

    #[test]
    fn an_account_lists_its_archive_to_its_owner_only() {
        let t = TestRouter::with_users(&["alice", "bob"]);
        let a = t.bind("alice", "phone");
        let own = features(&t, &a, "alice@localhost");
        assert!(own.iter().any(|x| x == ns::MAM), "{own:?}");
        assert!(own.iter().any(|x| x == ns::MAM_EXTENDED), "{own:?}");
        assert!(
            !own.iter().any(|x| x == ns::PING),
            "server features stay on the server"
        );
        // Others see what the account is and its public services (PEP), not its archive.
        let other = features(&t, &a, "bob@localhost");
        assert!(other.iter().any(|x| x == ns::DISCO_INFO), "{other:?}");
        assert!(!other.iter().any(|x| x.starts_with(ns::MAM)), "{other:?}");
        let out = t.client(&a, "<iq type='get' id='d' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
        out.assert_sent(&a, "<iq type='result' id='d'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='account' type='registered'/></query></iq>");
    }

    #[test]
    fn unknown_accounts_nodes_and_sets_are_refused() {
        let t = TestRouter::new();
        let a = t.bind("alice", "phone");
        let out = t.client(&a, "<iq type='get' id='1' to='nobody@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
        out.assert_error(&a, "1", Condition::ServiceUnavailable);
        let out = t.client(&a, "<iq type='get' id='2' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info' node='x'/></iq>");
        out.assert_error(&a, "2", Condition::ItemNotFound);
        let out = t.client(&a, "<iq type='set' id='3' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
        out.assert_error(&a, "3", Condition::NotAllowed);
    }
}
