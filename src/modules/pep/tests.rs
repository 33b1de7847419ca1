//! Unit tests of PEP over the real router and modules: clients are sessions that answer the
//! server's caps questions as a client would.

use super::super::caps;
use super::super::testing::{Out, TestRouter};
use super::*;
use crate::config::Config as ServerConfig;

const TUNE: &str = "http://jabber.org/protocol/tune";
const OMEMO_DEVICES: &str = "urn:xmpp:omemo:2:devices";

/// Binds `user/resource` and sends initial presence with caps listing `notify` as `+notify`
/// features; answers the server's caps question when there is one. Returns the session and
/// what its presence produced (last items sent at once).
fn online(t: &TestRouter, user: &str, resource: &str, notify: &[&str]) -> (Jid, Out) {
    let (jid, out, id, q) = online_unanswered(t, user, resource, notify);
    match id {
        Some(id) => {
            let reply = format!(
                "<iq type='result' id='{id}' to='localhost'>{}</iq>",
                q.to_xml()
            );
            (jid.clone(), t.client(&jid, &reply))
        }
        None => (jid, out),
    }
}

/// Like `online`, but the caps question (its id, if one was asked) is left unanswered.
fn online_unanswered(
    t: &TestRouter,
    user: &str,
    resource: &str,
    notify: &[&str],
) -> (Jid, Out, Option<String>, Element) {
    let (presence, q) = caps_presence(notify);
    let jid = t.bind(user, resource);
    let out = t.client(&jid, &presence);
    let id = out
        .to(&jid)
        .iter()
        .find(|e| e.name == "iq" && e.attr("type") == Some("get"))
        .and_then(|e| e.attr("id").map(str::to_owned));
    (jid, out, id, q)
}

/// Available presence with caps whose features are `notify` and their `+notify`, and the
/// disco#info answer they hash.
fn caps_presence(notify: &[&str]) -> (String, Element) {
    let mut q = Element::new("query", ns::DISCO_INFO).with_child(
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", "client")
            .with_attr("type", "pc"),
    );
    for n in notify {
        q.push(Element::new("feature", ns::DISCO_INFO).with_attr("var", *n));
        q.push(Element::new("feature", ns::DISCO_INFO).with_attr("var", format!("{n}+notify")));
    }
    let ver = caps::sha1_ver(&q);
    let presence = format!(
        "<presence><c xmlns='{}' hash='sha-1' node='https://hearth.example/test' ver='{ver}'/></presence>",
        caps::NS
    );
    (presence, q)
}

/// A mutual presence subscription between two accounts.
fn befriend(t: &TestRouter, a: &str, b: &str) {
    let (ja, jb) = (t.bind(a, "setup"), t.bind(b, "setup"));
    t.client(
        &ja,
        &format!("<presence type='subscribe' to='{b}@localhost'/>"),
    );
    t.client(
        &jb,
        &format!("<presence type='subscribed' to='{a}@localhost'/>"),
    );
    t.client(
        &jb,
        &format!("<presence type='subscribe' to='{a}@localhost'/>"),
    );
    t.client(
        &ja,
        &format!("<presence type='subscribed' to='{b}@localhost'/>"),
    );
    t.close(&ja);
    t.close(&jb);
}

fn router() -> TestRouter {
    TestRouter::with_users(&["alice", "bob", "carol", "dave"])
}

fn publish(node: &str, id: &str, payload: &str) -> String {
    format!(
        "<iq type='set' id='p'><pubsub xmlns='{}'><publish node='{node}'><item id='{id}'>{payload}</item></publish></pubsub></iq>",
        ns::PUBSUB
    )
}

fn publish_with(node: &str, id: &str, payload: &str, options: &[(&str, &str)]) -> String {
    let fields: String = options
        .iter()
        .map(|(k, v)| format!("<field var='{k}'><value>{v}</value></field>"))
        .collect();
    format!(
        "<iq type='set' id='p'><pubsub xmlns='{}'><publish node='{node}'><item id='{id}'>{payload}</item></publish>\
         <publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
         <value>{}</value></field>{fields}</x></publish-options></pubsub></iq>",
        ns::PUBSUB,
        ns::PUBSUB_PUBLISH_OPTIONS
    )
}

fn tune(title: &str) -> String {
    format!("<tune xmlns='{TUNE}'><title>{title}</title></tune>")
}

fn items_of(t: &TestRouter, who: &Jid, owner: &str, node: &str, extra: &str) -> Out {
    t.client(
        who,
        &format!(
            "<iq type='get' id='i' to='{owner}@localhost'><pubsub xmlns='{}'><items node='{node}'{extra}/></pubsub></iq>",
            ns::PUBSUB
        ),
    )
}

/// The item ids of the items result `id` that `who` got.
fn ids(out: &Out, who: &Jid) -> Vec<String> {
    let reply = out
        .to(who)
        .into_iter()
        .find(|e| e.name == "iq" && e.attr("type") == Some("result"))
        .unwrap_or_else(|| panic!("no result for {who}: {}", out.show()));
    reply
        .child("pubsub", ns::PUBSUB)
        .and_then(|p| p.child("items", ns::PUBSUB))
        .map(|i| {
            i.elements()
                .filter_map(|e| e.attr("id").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The ids of PEP items events `who` got about `node`.
fn events(out: &Out, who: &Jid, node: &str) -> Vec<String> {
    out.to(who)
        .into_iter()
        .filter(|e| e.name == "message" && e.attr("type") == Some("headline"))
        .filter_map(|m| m.child("event", ns::PUBSUB_EVENT))
        .filter_map(|e| e.child("items", ns::PUBSUB_EVENT))
        .filter(|i| i.attr("node") == Some(node))
        .flat_map(|i| i.elements().filter_map(|e| e.attr("id").map(str::to_owned)))
        .collect()
}

#[test]
fn publishing_creates_the_node_and_notifies_the_interested() {
    let t = router();
    befriend(&t, "alice", "bob");
    befriend(&t, "alice", "carol");
    let (a, _) = online(&t, "alice", "phone", &[TUNE]);
    let (a2, _) = online(&t, "alice", "laptop", &[]);
    let (b, _) = online(&t, "bob", "pc", &[TUNE]);
    let (c, _) = online(&t, "carol", "pc", &[]);
    let (d, _) = online(&t, "dave", "pc", &[TUNE]);
    let out = t.client(&a, &publish(TUNE, "t1", &tune("Finzi")));
    out.assert_sent(&a, "<iq type='result' id='p'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='http://jabber.org/protocol/tune'><item id='t1'/></publish></pubsub></iq>");
    // The owner's interested session and the interested contact, from the owner's bare JID.
    out.assert_sent(&a, "<message type='headline' from='alice@localhost'><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='http://jabber.org/protocol/tune'><item id='t1'><tune xmlns='http://jabber.org/protocol/tune'><title>Finzi</title></tune></item></items></event></message>");
    assert_eq!(events(&out, &b, TUNE), vec!["t1"]);
    // Not to sessions that did not ask, nor to a stranger who asked.
    out.assert_nothing_to(&a2);
    out.assert_nothing_to(&c);
    out.assert_nothing_to(&d);
    // The contact reads it; the stranger may not (presence access).
    assert_eq!(ids(&items_of(&t, &b, "alice", TUNE, ""), &b), vec!["t1"]);
    let out = items_of(&t, &d, "alice", TUNE, "");
    out.assert_error(&d, "i", Condition::NotAuthorized);
    out.assert_sent(&d, "<iq type='error'><error><presence-subscription-required xmlns='http://jabber.org/protocol/pubsub#errors'/></error></iq>");
    // Stored: a node config and one item.
    let rows: HashMap<String, usize> = t.router.store.rows_of("alice").into_iter().collect();
    assert_eq!(rows.get("pep_nodes"), Some(&1));
    assert_eq!(rows.get("pep_items"), Some(&1));
}

#[test]
fn disco_shows_the_pep_identity_features_and_visible_nodes() {
    let t = router();
    befriend(&t, "alice", "bob");
    let (a, _) = online(&t, "alice", "phone", &[]);
    let (b, _) = online(&t, "bob", "pc", &[]);
    let (d, _) = online(&t, "dave", "pc", &[]);
    t.client(&a, &publish(TUNE, "t1", &tune("x")));
    t.client(
        &a,
        &publish_with(
            OMEMO_DEVICES,
            "current",
            "<devices xmlns='urn:xmpp:omemo:2'/>",
            &[("pubsub#access_model", "open")],
        ),
    );
    t.client(
        &a,
        &publish_with(
            "urn:xmpp:bookmarks:1",
            "room@muc",
            "<conference xmlns='urn:xmpp:bookmarks:1'/>",
            &[("pubsub#access_model", "whitelist")],
        ),
    );
    let out = t.client(&b, "<iq type='get' id='d' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    out.assert_sent(&b, "<iq type='result' id='d'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='pubsub' type='pep'/><identity category='account' type='registered'/><feature var='http://jabber.org/protocol/pubsub#publish-options'/><feature var='http://jabber.org/protocol/pubsub#auto-create'/></query></iq>");
    let nodes = |who: &Jid| -> Vec<String> {
        let out = t.client(who, "<iq type='get' id='n' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>");
        let mut n: Vec<String> = out.to(who)[0]
            .child("query", ns::DISCO_ITEMS)
            .unwrap()
            .elements()
            .filter_map(|i| i.attr("node").map(str::to_owned))
            .collect();
        n.sort();
        n
    };
    assert_eq!(nodes(&a), vec![TUNE, "urn:xmpp:bookmarks:1", OMEMO_DEVICES]);
    assert_eq!(nodes(&b), vec![TUNE, OMEMO_DEVICES]);
    assert_eq!(nodes(&d), vec![OMEMO_DEVICES]);
    let out = t.client(&d, &format!("<iq type='get' id='n' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info' node='{TUNE}'/></iq>"));
    out.assert_error(&d, "n", Condition::ItemNotFound);
    let out = t.client(&b, &format!("<iq type='get' id='n' to='alice@localhost'><query xmlns='http://jabber.org/protocol/disco#info' node='{TUNE}'/></iq>"));
    out.assert_sent(&b, "<iq type='result' id='n'><query node='http://jabber.org/protocol/tune' xmlns='http://jabber.org/protocol/disco#info'><identity category='pubsub' type='leaf'/></query></iq>");
}

#[test]
fn notifications_wait_until_the_caps_question_is_answered() {
    let t = router();
    befriend(&t, "alice", "bob");
    let (a, _) = online(&t, "alice", "phone", &[]);
    let (b, _, id, q) = online_unanswered(&t, "bob", "pc", &[TUNE]);
    let id = id.expect("bob's client is asked");
    let out = t.client(&a, &publish(TUNE, "t1", &tune("one")));
    out.assert_nothing_to(&b);
    let out = t.client(&a, &publish(TUNE, "t2", &tune("two")));
    out.assert_nothing_to(&b);
    // The answer brings the last item, once.
    let out = t.client(
        &b,
        &format!(
            "<iq type='result' id='{id}' to='localhost'>{}</iq>",
            q.to_xml()
        ),
    );
    assert_eq!(events(&out, &b, TUNE), vec!["t2"]);
    let out = t.client(&a, &publish(TUNE, "t3", &tune("three")));
    assert_eq!(events(&out, &b, TUNE), vec!["t3"]);
}

#[test]
fn the_last_item_comes_with_initial_presence() {
    let t = router();
    befriend(&t, "alice", "bob");
    let (a, _) = online(&t, "alice", "phone", &[]);
    t.client(&a, &publish(TUNE, "t1", &tune("one")));
    t.client(
        &a,
        &publish_with(
            OMEMO_DEVICES,
            "current",
            "<devices xmlns='urn:xmpp:omemo:2'/>",
            &[("pubsub#access_model", "open")],
        ),
    );
    t.close(&a);
    // Alice is offline: Bob's probe reaches her account, which sends her last items.
    let (b, out) = online(&t, "bob", "pc", &[TUNE, OMEMO_DEVICES]);
    assert_eq!(events(&out, &b, TUNE), vec!["t1"]);
    assert_eq!(events(&out, &b, OMEMO_DEVICES), vec!["current"]);
    // Alice's own new session gets her own last items (it asks for tune only).
    let (a, out) = online(&t, "alice", "tablet", &[TUNE]);
    assert_eq!(events(&out, &a, TUNE), vec!["t1"]);
    assert!(events(&out, &a, OMEMO_DEVICES).is_empty());
    // Her presence reaching Bob does not repeat what he has.
    assert!(events(&out, &b, TUNE).is_empty());
    // A stranger's session gets nothing, even for an open node.
    let (d, out) = online(&t, "dave", "pc", &[TUNE, OMEMO_DEVICES]);
    out.assert_nothing_to(&d.bare());
    assert!(events(&out, &d, OMEMO_DEVICES).is_empty());
    // send_last_published_item = never is honoured.
    t.client(
        &a,
        &publish_with(
            "urn:example:quiet",
            "q",
            "<q xmlns='urn:example:quiet'/>",
            &[("pubsub#send_last_published_item", "never")],
        ),
    );
    let (b2, out) = online(&t, "bob", "tablet", &["urn:example:quiet", TUNE]);
    assert!(events(&out, &b2, "urn:example:quiet").is_empty());
    assert_eq!(events(&out, &b2, TUNE), vec!["t1"]);
}

#[test]
fn a_newly_approved_subscriber_gets_the_last_items() {
    let t = router();
    let (a, _) = online(&t, "alice", "phone", &[]);
    t.client(&a, &publish(TUNE, "t1", &tune("one")));
    let (b, _) = online(&t, "bob", "pc", &[TUNE]);
    t.client(&b, "<presence type='subscribe' to='alice@localhost'/>");
    let out = t.client(&a, "<presence type='subscribed' to='bob@localhost'/>");
    assert_eq!(events(&out, &b, TUNE), vec!["t1"]);
}

#[test]
fn access_models() {
    let t = router();
    befriend(&t, "alice", "bob");
    befriend(&t, "alice", "carol");
    let (a, _) = online(&t, "alice", "phone", &[]);
    let (b, _) = online(&t, "bob", "pc", &[]);
    let (c, _) = online(&t, "carol", "pc", &[]);
    let (d, _) = online(&t, "dave", "pc", &[]);
    t.client(&a, "<iq type='set' id='g'><query xmlns='jabber:iq:roster'><item jid='bob@localhost'><group>Family</group></item></query></iq>");
    t.client(
        &a,
        &publish_with(
            "urn:example:open",
            "1",
            "<x xmlns='urn:example'/>",
            &[("pubsub#access_model", "open")],
        ),
    );
    t.client(
        &a,
        &publish_with(
            "urn:example:white",
            "1",
            "<x xmlns='urn:example'/>",
            &[("pubsub#access_model", "whitelist")],
        ),
    );
    let roster_only = format!(
        "<iq type='set' id='p'><pubsub xmlns='{}'><publish node='urn:example:family'><item id='1'><x xmlns='urn:example'/></item></publish>\
         <publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{}</value></field>\
         <field var='pubsub#access_model'><value>roster</value></field>\
         <field var='pubsub#roster_groups_allowed'><value>Family</value></field></x></publish-options></pubsub></iq>",
        ns::PUBSUB,
        ns::PUBSUB_PUBLISH_OPTIONS
    );
    t.client(&a, &roster_only)
        .assert_sent(&a, "<iq type='result' id='p'/>");
    assert_eq!(
        ids(&items_of(&t, &d, "alice", "urn:example:open", ""), &d),
        vec!["1"]
    );
    let out = items_of(&t, &b, "alice", "urn:example:white", "");
    out.assert_error(&b, "i", Condition::NotAllowed);
    out.assert_sent(&b, "<iq type='error'><error><closed-node xmlns='http://jabber.org/protocol/pubsub#errors'/></error></iq>");
    assert_eq!(
        ids(&items_of(&t, &a, "alice", "urn:example:white", ""), &a),
        vec!["1"]
    );
    assert_eq!(
        ids(&items_of(&t, &b, "alice", "urn:example:family", ""), &b),
        vec!["1"]
    );
    let out = items_of(&t, &c, "alice", "urn:example:family", "");
    out.assert_error(&c, "i", Condition::NotAuthorized);
    out.assert_sent(&c, "<iq type='error'><error><not-in-roster-group xmlns='http://jabber.org/protocol/pubsub#errors'/></error></iq>");
    // A node that does not exist.
    items_of(&t, &b, "alice", "urn:example:none", "").assert_error(
        &b,
        "i",
        Condition::ItemNotFound,
    );
}

#[test]
fn publish_options_are_preconditions_on_an_existing_node() {
    let t = router();
    let (a, _) = online(&t, "alice", "phone", &[]);
    t.client(&a, &publish(TUNE, "t1", &tune("one")));
    let out = t.client(
        &a,
        &publish_with(TUNE, "t2", &tune("two"), &[("pubsub#access_model", "open")]),
    );
    out.assert_error(&a, "p", Condition::Conflict);
    out.assert_sent(&a, "<iq type='error'><error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><precondition-not-met xmlns='http://jabber.org/protocol/pubsub#errors'/></error></iq>");
    // Matching options publish.
    let out = t.client(
        &a,
        &publish_with(
            TUNE,
            "t2",
            &tune("two"),
            &[
                ("pubsub#access_model", "presence"),
                ("pubsub#max_items", "1"),
            ],
        ),
    );
    out.assert_sent(&a, "<iq type='result' id='p'/>");
    // OMEMO 2 bundles: max items `max` and open access, one item per device.
    let bundles = "urn:xmpp:omemo:2:bundles";
    let opts = [("pubsub#max_items", "max"), ("pubsub#access_model", "open")];
    for dev in ["101", "202", "303"] {
        let out = t.client(
            &a,
            &publish_with(bundles, dev, "<bundle xmlns='urn:xmpp:omemo:2'/>", &opts),
        );
        out.assert_sent(&a, "<iq type='result' id='p'/>");
    }
    assert_eq!(
        ids(&items_of(&t, &a, "alice", bundles, ""), &a),
        vec!["101", "202", "303"]
    );
    // Unknown options and bad values are preconditions not met too.
    let out = t.client(
        &a,
        &publish_with(
            bundles,
            "404",
            "<bundle xmlns='urn:xmpp:omemo:2'/>",
            &[("pubsub#frobnicate", "1")],
        ),
    );
    out.assert_error(&a, "p", Condition::Conflict);
    let out = t.client(
        &a,
        &publish_with(
            "urn:example:new",
            "1",
            "<x xmlns='urn:example'/>",
            &[("pubsub#max_items", "1000000")],
        ),
    );
    out.assert_error(&a, "p", Condition::Conflict);
    items_of(&t, &a, "alice", "urn:example:new", "").assert_error(&a, "i", Condition::ItemNotFound);
}

#[test]
fn items_by_id_latest_n_replacement_and_trimming() {
    let t = router();
    let (a, _) = online(&t, "alice", "phone", &[]);
    let node = "urn:example:log";
    let opts = [("pubsub#max_items", "3")];
    for id in ["1", "2", "3", "4"] {
        t.client(
            &a,
            &publish_with(node, id, "<x xmlns='urn:example'/>", &opts),
        );
    }
    assert_eq!(
        ids(&items_of(&t, &a, "alice", node, ""), &a),
        vec!["2", "3", "4"]
    );
    // Publishing id 2 again replaces it and makes it the newest.
    t.client(
        &a,
        &publish_with(node, "2", "<x xmlns='urn:example'>again</x>", &opts),
    );
    assert_eq!(
        ids(&items_of(&t, &a, "alice", node, ""), &a),
        vec!["3", "4", "2"]
    );
    assert_eq!(
        ids(&items_of(&t, &a, "alice", node, " max_items='2'"), &a),
        vec!["4", "2"]
    );
    let by_id = t.client(&a, &format!("<iq type='get' id='i'><pubsub xmlns='{}'><items node='{node}'><item id='3'/><item id='nope'/></items></pubsub></iq>", ns::PUBSUB));
    assert_eq!(ids(&by_id, &a), vec!["3"]);
    by_id.assert_sent(&a, "<iq type='result'><pubsub xmlns='http://jabber.org/protocol/pubsub'><items><item id='3'><x xmlns='urn:example'/></item></items></pubsub></iq>");
    assert_eq!(
        t.router
            .store
            .rows_of("alice")
            .into_iter()
            .find(|r| r.0 == "pep_items")
            .map(|r| r.1),
        Some(3)
    );
    // An id-less item gets one.
    let out = t.client(&a, &format!("<iq type='set' id='p'><pubsub xmlns='{}'><publish node='{node}'><item><x xmlns='urn:example'/></item></publish></pubsub></iq>", ns::PUBSUB));
    out.assert_sent(&a, "<iq type='result'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish><item id='{any}'/></publish></pubsub></iq>");
}

#[test]
fn retract_purge_and_delete_notify_and_belong_to_the_owner() {
    let t = router();
    befriend(&t, "alice", "bob");
    let (a, _) = online(&t, "alice", "phone", &[TUNE]);
    let (b, _) = online(&t, "bob", "pc", &[TUNE]);
    t.client(
        &a,
        &publish_with(
            TUNE,
            "t1",
            &tune("one"),
            &[
                ("pubsub#max_items", "10"),
                ("pubsub#notify_retract", "false"),
            ],
        ),
    );
    t.client(&a, &publish(TUNE, "t2", &tune("two")));
    // Bob may not touch Alice's node.
    let out = t.client(&b, &format!("<iq type='set' id='x' to='alice@localhost'><pubsub xmlns='{}'><publish node='{TUNE}'><item id='evil'>{}</item></publish></pubsub></iq>", ns::PUBSUB, tune("evil")));
    out.assert_error(&b, "x", Condition::Forbidden);
    let out = t.client(&b, &format!("<iq type='set' id='x' to='alice@localhost'><pubsub xmlns='{}'><purge node='{TUNE}'/></pubsub></iq>", ns::PUBSUB_OWNER));
    out.assert_error(&b, "x", Condition::Forbidden);
    let out = t.client(&b, &format!("<iq type='set' id='x' to='alice@localhost'><pubsub xmlns='{}'><retract node='{TUNE}'><item id='t1'/></retract></pubsub></iq>", ns::PUBSUB));
    out.assert_error(&b, "x", Condition::Forbidden);
    // notify_retract is off; notify='true' asks anyway.
    let out = t.client(&a, &format!("<iq type='set' id='r'><pubsub xmlns='{}'><retract node='{TUNE}'><item id='t1'/></retract></pubsub></iq>", ns::PUBSUB));
    out.assert_sent(&a, "<iq type='result' id='r'/>");
    out.assert_nothing_to(&b);
    let out = t.client(&a, &format!("<iq type='set' id='r'><pubsub xmlns='{}'><retract node='{TUNE}' notify='true'><item id='t2'/></retract></pubsub></iq>", ns::PUBSUB));
    out.assert_sent(&b, "<message type='headline' from='alice@localhost'><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='http://jabber.org/protocol/tune'><retract id='t2'/></items></event></message>");
    let out = t.client(&a, &format!("<iq type='set' id='r'><pubsub xmlns='{}'><retract node='{TUNE}'><item id='t2'/></retract></pubsub></iq>", ns::PUBSUB));
    out.assert_error(&a, "r", Condition::ItemNotFound);
    assert!(ids(&items_of(&t, &a, "alice", TUNE, ""), &a).is_empty());
    t.client(&a, &publish(TUNE, "t3", &tune("three")));
    let out = t.client(
        &a,
        &format!(
            "<iq type='set' id='u'><pubsub xmlns='{}'><purge node='{TUNE}'/></pubsub></iq>",
            ns::PUBSUB_OWNER
        ),
    );
    out.assert_sent(&a, "<iq type='result' id='u'/>");
    assert!(ids(&items_of(&t, &b, "alice", TUNE, ""), &b).is_empty());
    let out = t.client(
        &a,
        &format!(
            "<iq type='set' id='del'><pubsub xmlns='{}'><delete node='{TUNE}'/></pubsub></iq>",
            ns::PUBSUB_OWNER
        ),
    );
    out.assert_sent(&a, "<iq type='result' id='del'/>");
    out.assert_sent(&b, "<message type='headline' from='alice@localhost'><event xmlns='http://jabber.org/protocol/pubsub#event'><delete node='http://jabber.org/protocol/tune'/></event></message>");
    items_of(&t, &a, "alice", TUNE, "").assert_error(&a, "i", Condition::ItemNotFound);
    assert_eq!(
        t.router
            .store
            .rows_of("alice")
            .into_iter()
            .filter(|r| r.0.starts_with("pep"))
            .count(),
        0
    );
}

#[test]
fn node_configuration_for_the_owner() {
    let t = router();
    let (a, _) = online(&t, "alice", "phone", &[]);
    let node = "urn:example:cfg";
    for id in ["1", "2", "3"] {
        t.client(
            &a,
            &publish_with(
                node,
                id,
                "<x xmlns='urn:example'/>",
                &[("pubsub#max_items", "5")],
            ),
        );
    }
    let out = t.client(
        &a,
        &format!(
            "<iq type='get' id='c'><pubsub xmlns='{}'><configure node='{node}'/></pubsub></iq>",
            ns::PUBSUB_OWNER
        ),
    );
    out.assert_sent(&a, "<iq type='result' id='c'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><configure node='urn:example:cfg'><x xmlns='jabber:x:data' type='form'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#node_config</value></field><field var='pubsub#max_items'><value>5</value></field><field var='pubsub#access_model'><value>presence</value></field></x></configure></pubsub></iq>");
    let set = |fields: &str| {
        format!(
            "<iq type='set' id='s'><pubsub xmlns='{}'><configure node='{node}'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>{}</value></field>{fields}</x></configure></pubsub></iq>",
            ns::PUBSUB_OWNER,
            ns::PUBSUB_NODE_CONFIG
        )
    };
    let out = t.client(&a, &set("<field var='pubsub#max_items'><value>2</value></field><field var='pubsub#access_model'><value>open</value></field>"));
    out.assert_sent(&a, "<iq type='result' id='s'/>");
    assert_eq!(
        ids(&items_of(&t, &a, "alice", node, ""), &a),
        vec!["2", "3"]
    );
    let (d, _) = online(&t, "dave", "pc", &[]);
    assert_eq!(
        ids(&items_of(&t, &d, "alice", node, ""), &d),
        vec!["2", "3"]
    );
    // Malformed forms are refused and change nothing.
    for bad in [
        "<field var='pubsub#max_items'><value>lots</value></field>",
        "<field var='pubsub#access_model'><value>authorize</value></field>",
        "<field var='pubsub#deliver_payloads'><value>maybe</value></field>",
        "<field var='pubsub#max_items'><value>1</value><value>2</value></field>",
        "<field><value>no var</value></field>",
    ] {
        let out = t.client(&a, &set(bad));
        assert!(
            out.to(&a)[0].attr("type") == Some("error"),
            "{bad}: {}",
            out.show()
        );
    }
    let wrong_type = format!(
        "<iq type='set' id='w'><pubsub xmlns='{}'><configure node='{node}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:other</value></field></x></configure></pubsub></iq>",
        ns::PUBSUB_OWNER
    );
    t.client(&a, &wrong_type)
        .assert_error(&a, "w", Condition::BadRequest);
    assert_eq!(
        ids(&items_of(&t, &d, "alice", node, ""), &d),
        vec!["2", "3"]
    );
    // Default configuration and explicit creation.
    let out = t.client(
        &a,
        &format!(
            "<iq type='get' id='df'><pubsub xmlns='{}'><default/></pubsub></iq>",
            ns::PUBSUB_OWNER
        ),
    );
    out.assert_sent(&a, "<iq type='result' id='df'><pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><default><x xmlns='jabber:x:data'/></default></pubsub></iq>");
    let create = format!(
        "<iq type='set' id='cr'><pubsub xmlns='{}'><create node='urn:example:made'/></pubsub></iq>",
        ns::PUBSUB
    );
    t.client(&a, &create)
        .assert_sent(&a, "<iq type='result' id='cr'/>");
    t.client(&a, &create)
        .assert_error(&a, "cr", Condition::Conflict);
    assert!(ids(&items_of(&t, &a, "alice", "urn:example:made", ""), &a).is_empty());
}

#[test]
fn limits_refuse_floods() {
    let mut config = ServerConfig::default();
    config.modules.pep.max_nodes = 5;
    config.modules.pep.max_items = 10;
    config.modules.pep.max_item_bytes = 2000;
    config.modules.pep.max_account_bytes = 10_000;
    let t = TestRouter::with_config(config, &["alice", "bob"]);
    let (a, _) = online(&t, "alice", "phone", &[]);
    // One huge item.
    let huge = format!("<x xmlns='urn:example'>{}</x>", "a".repeat(3000));
    let out = t.client(&a, &publish("urn:example:big", "1", &huge));
    out.assert_error(&a, "p", Condition::NotAcceptable);
    out.assert_sent(&a, "<iq type='error'><error><payload-too-big xmlns='http://jabber.org/protocol/pubsub#errors'/></error></iq>");
    // Many nodes.
    for i in 0..5 {
        t.client(
            &a,
            &publish(&format!("urn:example:{i}"), "1", "<x xmlns='urn:example'/>"),
        )
        .assert_sent(&a, "<iq type='result' id='p'/>");
    }
    t.client(
        &a,
        &publish("urn:example:5", "1", "<x xmlns='urn:example'/>"),
    )
    .assert_error(&a, "p", Condition::PolicyViolation);
    // max_items=max floods stop at the limit, then at the account's bytes.
    let item = format!("<x xmlns='urn:example'>{}</x>", "b".repeat(1500));
    let mut refused = 0;
    for i in 0..20 {
        let out = t.client(
            &a,
            &publish_with(
                "urn:example:0",
                &i.to_string(),
                &item,
                &[("pubsub#max_items", "max")],
            ),
        );
        if out.to(&a)[0].attr("type") == Some("error") {
            out.assert_error(&a, "p", Condition::Conflict);
            refused += 1;
        }
    }
    assert_eq!(
        refused, 20,
        "urn:example:0 keeps 1 item: max is a precondition not met"
    );
    let mut stored = 0;
    for i in 0..20 {
        let out = t.client(
            &a,
            &publish_with(
                "urn:example:flood",
                &i.to_string(),
                &item,
                &[("pubsub#max_items", "max")],
            ),
        );
        match out.to(&a)[0].attr("type") {
            Some("result") => stored += 1,
            _ => out.assert_error(&a, "p", Condition::PolicyViolation),
        }
    }
    assert!(stored < 7, "{stored} items of 1.5 KB under a 10 KB quota");
    let pep_bytes: usize = t.module::<Pep>().accounts.borrow()["alice"].bytes();
    assert!(pep_bytes <= 10_000, "{pep_bytes}");
    // Malformed requests.
    for (bad, condition) in [
        (
            format!(
                "<pubsub xmlns='{}'><publish node=''><item><x xmlns='urn:x'/></item></publish></pubsub>",
                ns::PUBSUB
            ),
            Condition::BadRequest,
        ),
        (
            format!(
                "<pubsub xmlns='{}'><publish node='n'/></pubsub>",
                ns::PUBSUB
            ),
            Condition::BadRequest,
        ),
        (
            format!(
                "<pubsub xmlns='{}'><publish node='n'><item/></publish></pubsub>",
                ns::PUBSUB
            ),
            Condition::BadRequest,
        ),
        (
            format!(
                "<pubsub xmlns='{}'><publish node='n'><item><a xmlns='urn:x'/><b xmlns='urn:x'/></item></publish></pubsub>",
                ns::PUBSUB
            ),
            Condition::BadRequest,
        ),
        (
            format!(
                "<pubsub xmlns='{}'><publish node='{}'><item><a xmlns='urn:x'/></item></publish></pubsub>",
                ns::PUBSUB,
                "n".repeat(2000)
            ),
            Condition::NotAcceptable,
        ),
        (
            format!(
                "<pubsub xmlns='{}'><subscribe node='n' jid='alice@localhost'/></pubsub>",
                ns::PUBSUB
            ),
            Condition::FeatureNotImplemented,
        ),
        (
            format!("<pubsub xmlns='{}'/>", ns::PUBSUB),
            Condition::BadRequest,
        ),
    ] {
        let out = t.client(&a, &format!("<iq type='set' id='m'>{bad}</iq>"));
        out.assert_error(&a, "m", condition);
    }
}

#[test]
fn transient_nodes_keep_the_last_item_in_memory() {
    let t = router();
    befriend(&t, "alice", "bob");
    let (a, _) = online(&t, "alice", "phone", &[]);
    let node = "urn:example:now";
    for id in ["1", "2"] {
        t.client(
            &a,
            &publish_with(
                node,
                id,
                "<x xmlns='urn:example'/>",
                &[("pubsub#persist_items", "false")],
            ),
        );
    }
    assert_eq!(ids(&items_of(&t, &a, "alice", node, ""), &a), vec!["2"]);
    let rows: HashMap<String, usize> = t.router.store.rows_of("alice").into_iter().collect();
    assert_eq!(rows.get("pep_items"), None);
    let (b, out) = online(&t, "bob", "pc", &[node]);
    assert_eq!(events(&out, &b, node), vec!["2"]);
}

#[test]
fn a_blocked_contact_gets_no_notifications() {
    let t = router();
    befriend(&t, "alice", "bob");
    let (a, _) = online(&t, "alice", "phone", &[]);
    let (b, _) = online(&t, "bob", "pc", &[TUNE]);
    t.client(&a, "<iq type='set' id='b'><block xmlns='urn:xmpp:blocking'><item jid='bob@localhost'/></block></iq>");
    let out = t.client(&a, &publish(TUNE, "t1", &tune("one")));
    assert!(events(&out, &b, TUNE).is_empty());
}

#[test]
fn a_session_back_from_unavailable_gets_the_last_items_again() {
    let t = router();
    befriend(&t, "alice", "bob");
    let (a, _) = online(&t, "alice", "phone", &[]);
    t.client(&a, &publish(TUNE, "t1", &tune("one")));
    let (b, out) = online(&t, "bob", "pc", &[TUNE]);
    assert_eq!(events(&out, &b, TUNE), vec!["t1"]);
    t.client(&b, "<presence type='unavailable'/>");
    let out = t.client(&a, &publish(TUNE, "t2", &tune("two")));
    assert!(events(&out, &b, TUNE).is_empty());
    let out = t.client(&b, &caps_presence(&[TUNE]).0);
    assert_eq!(events(&out, &b, TUNE), vec!["t2"]);
}

/// Records every `pep_changed` call.
#[derive(Default)]
struct Watcher {
    seen: std::cell::RefCell<Vec<(String, String)>>,
}

impl Module for Watcher {
    fn name(&self) -> &'static str {
        "watcher"
    }
    fn pep_changed(&self, _cx: &mut Cx, owner: &str, node: &str) {
        self.seen
            .borrow_mut()
            .push((owner.to_owned(), node.to_owned()));
    }
}

#[test]
fn modules_hear_of_every_change_to_a_node() {
    let t = TestRouter::with_extra(
        ServerConfig::default(),
        &["alice", "bob"],
        vec![Box::new(Watcher::default())],
    );
    let seen = || std::mem::take(&mut *t.module::<Watcher>().seen.borrow_mut());
    let (a, _) = online(&t, "alice", "phone", &[]);
    let (b, _) = online(&t, "bob", "pc", &[]);
    let change = vec![("alice".to_owned(), TUNE.to_owned())];
    t.client(&a, &publish(TUNE, "t1", &tune("one")));
    assert_eq!(seen(), change);
    t.client(&a, &format!("<iq type='set' id='r'><pubsub xmlns='{}'><retract node='{TUNE}'><item id='t1'/></retract></pubsub></iq>", ns::PUBSUB));
    assert_eq!(seen(), change);
    t.client(&a, &publish(TUNE, "t2", &tune("two")));
    seen();
    t.client(
        &a,
        &format!(
            "<iq type='set' id='u'><pubsub xmlns='{}'><purge node='{TUNE}'/></pubsub></iq>",
            ns::PUBSUB_OWNER
        ),
    );
    assert_eq!(seen(), change);
    t.client(
        &a,
        &format!(
            "<iq type='set' id='d'><pubsub xmlns='{}'><delete node='{TUNE}'/></pubsub></iq>",
            ns::PUBSUB_OWNER
        ),
    );
    assert_eq!(seen(), change);
    // What fails changes nothing, and reading is no change.
    t.client(&b, &format!("<iq type='set' id='p' to='alice@localhost'><pubsub xmlns='{}'><publish node='{TUNE}'><item id='x'>{}</item></publish></pubsub></iq>", ns::PUBSUB, tune("no")));
    t.client(&a, &format!("<iq type='set' id='r'><pubsub xmlns='{}'><retract node='{TUNE}'><item id='gone'/></retract></pubsub></iq>", ns::PUBSUB));
    items_of(&t, &a, "alice", TUNE, "");
    assert_eq!(seen(), vec![]);
}
