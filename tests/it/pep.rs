//! Personal eventing (XEP-0163 on XEP-0060) and entity caps (XEP-0115) over real TLS
//! connections: who may read a node by its access model, publish options as preconditions,
//! notifications only to sessions whose caps ask for the node and only once the server knows
//! their caps, the last item when a contact comes online, nodes kept across a restart and gone
//! with the account, and an account that floods the service with huge items, nodes and items
//! or malformed requests.

use crate::harness::{Client, DOMAIN, Element, PASSWORD, TestServer, assert_matches, ns};
use base64::Engine;
use sha1::Digest;

pub(crate) const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub(crate) const PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const PUBSUB_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
const CAPS: &str = "http://jabber.org/protocol/caps";
const TUNE: &str = "http://jabber.org/protocol/tune";

fn server_with(extra: &str) -> TestServer {
    let server = TestServer::start_with(extra);
    server.add_users(&["alice", "bob", "carol"]);
    server
}

/// A mutual presence subscription, made by sessions that are not available (so that nothing
/// is left for later clients to read).
pub(crate) fn befriend(server: &TestServer, a: &str, b: &str) {
    let mut ca = Client::user(server, a, "setup");
    let mut cb = Client::user(server, b, "setup");
    ca.send(&format!("<presence type='subscribe' to='{b}@{DOMAIN}'/>"));
    ca.sync();
    cb.send(&format!("<presence type='subscribed' to='{a}@{DOMAIN}'/>"));
    cb.send(&format!("<presence type='subscribe' to='{a}@{DOMAIN}'/>"));
    cb.sync();
    ca.send(&format!("<presence type='subscribed' to='{b}@{DOMAIN}'/>"));
    ca.sync();
    ca.close();
    cb.close();
}

/// A client's disco#info: an identity and, for each of `notify`, the feature and its
/// `+notify`; and its XEP-0115 sha-1 `ver`.
pub(crate) fn disco_info(notify: &[&str]) -> (String, String) {
    let mut features: Vec<String> = vec![ns::DISCO_INFO.to_owned(), CAPS.to_owned()];
    for n in notify {
        features.push((*n).to_owned());
        features.push(format!("{n}+notify"));
    }
    features.sort();
    let mut s = String::from("client/phone//<");
    for f in &features {
        s.push_str(f);
        s.push('<');
    }
    let ver = base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(s.as_bytes()));
    let vars: String = features
        .iter()
        .map(|f| format!("<feature var='{f}'/>"))
        .collect();
    let query = format!(
        "<query xmlns='{}'><identity category='client' type='phone'/>{vars}</query>",
        ns::DISCO_INFO
    );
    (query, ver)
}

/// Everything that arrives for `c` before the answer to a ping: what the server queued for it.
pub(crate) fn drain(c: &mut Client) -> Vec<Element> {
    let id = c.send_iq(
        &format!("type='get' to='{DOMAIN}'"),
        &format!("<ping xmlns='{}'/>", ns::PING),
    );
    let mut got = Vec::new();
    loop {
        let el = c.recv();
        if el.is("iq", ns::CLIENT) && el.attr("id") == Some(id.as_str()) {
            return got;
        }
        got.push(el);
    }
}

/// The server's caps question among `got`: (its id, the node it asks about).
pub(crate) fn question(got: &[Element]) -> Option<(String, String)> {
    got.iter()
        .find(|e| e.is("iq", ns::CLIENT) && e.attr("type") == Some("get"))
        .map(|e| {
            let q = e.get("query", ns::DISCO_INFO);
            (
                e.attr("id").unwrap_or_default().to_owned(),
                q.attr("node").unwrap_or_default().to_owned(),
            )
        })
}

/// The ids of the items events about `node` among `got`.
pub(crate) fn events(got: &[Element], node: &str) -> Vec<String> {
    got.iter()
        .filter(|m| m.is("message", ns::CLIENT) && m.attr("type") == Some("headline"))
        .filter_map(|m| m.child("event", PUBSUB_EVENT))
        .filter_map(|e| e.child("items", PUBSUB_EVENT))
        .filter(|i| i.attr("node") == Some(node))
        .flat_map(|i| {
            i.children
                .iter()
                .filter_map(|c| c.attr("id").map(str::to_owned))
        })
        .collect()
}

/// A session online with caps asking for `notify`; the server's question about them (if it
/// asks) is answered when `answer`. Returns the client, what arrived before and after the
/// answer, and the question when it was left unanswered.
pub(crate) struct Online {
    pub(crate) client: Client,
    pub(crate) got: Vec<Element>,
    open_question: Option<String>,
    query: String,
}

pub(crate) fn online(
    server: &TestServer,
    user: &str,
    resource: &str,
    notify: &[&str],
    answer: bool,
) -> Online {
    let (query, ver) = disco_info(notify);
    let mut c = Client::user(server, user, resource);
    let roster = c.iq("type='get'", &format!("<query xmlns='{}'/>", ns::ROSTER));
    assert_matches(&roster, "<iq type='result'/>");
    c.send(&format!(
        "<presence><c xmlns='{CAPS}' hash='sha-1' node='https://hearth.example/it' ver='{ver}'/></presence>"
    ));
    let mut got = drain(&mut c);
    let mut open_question = None;
    if let Some((id, node)) = question(&got) {
        assert_eq!(node, format!("https://hearth.example/it#{ver}"));
        match answer {
            true => {
                c.send(&format!(
                    "<iq type='result' id='{id}' to='{DOMAIN}'>{query}</iq>"
                ));
                got.extend(drain(&mut c));
            }
            false => open_question = Some(id),
        }
    }
    Online {
        client: c,
        got,
        open_question,
        query,
    }
}

pub(crate) fn publish(node: &str, id: &str, payload: &str, options: &[(&str, &str)]) -> String {
    let mut xml = format!(
        "<pubsub xmlns='{PUBSUB}'><publish node='{node}'><item id='{id}'>{payload}</item></publish>"
    );
    if !options.is_empty() {
        let fields: String = options
            .iter()
            .map(|(k, v)| format!("<field var='{k}'><value>{v}</value></field>"))
            .collect();
        xml.push_str(&format!(
            "<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
             <value>http://jabber.org/protocol/pubsub#publish-options</value></field>{fields}</x></publish-options>"
        ));
    }
    xml.push_str("</pubsub>");
    xml
}

fn tune(title: &str) -> String {
    format!("<tune xmlns='{TUNE}'><title>{title}</title></tune>")
}

/// Publishes and returns the reply (notifications to the publisher's own session are read
/// and dropped first, when its caps asked for them).
pub(crate) fn publish_iq(c: &mut Client, xml: &str) -> Element {
    let id = c.send_iq("type='set'", xml);
    loop {
        let el = c.recv();
        if el.is("iq", ns::CLIENT) && el.attr("id") == Some(id.as_str()) {
            return el;
        }
    }
}

pub(crate) fn items(c: &mut Client, owner: &str, node: &str) -> Element {
    c.iq(
        &format!("type='get' to='{owner}@{DOMAIN}'"),
        &format!("<pubsub xmlns='{PUBSUB}'><items node='{node}'/></pubsub>"),
    )
}

pub(crate) fn item_ids(reply: &Element) -> Vec<String> {
    reply
        .get("pubsub", PUBSUB)
        .get("items", PUBSUB)
        .children
        .iter()
        .filter_map(|i| i.attr("id").map(str::to_owned))
        .collect()
}

pub(crate) fn error_with(reply: &Element, condition: &str, app: Option<&str>) {
    let error = reply.get("error", ns::CLIENT);
    assert!(
        error.child(condition, ns::STANZAS).is_some(),
        "expected <{condition}/>: {reply}"
    );
    if let Some(a) = app {
        assert!(
            error.child(a, PUBSUB_ERRORS).is_some(),
            "expected <{a}/>: {reply}"
        );
    }
}

#[test]
fn a_stranger_cannot_read_a_presence_node_and_a_contact_can() {
    let server = server_with("");
    befriend(&server, "alice", "bob");
    let mut alice = Client::online(&server, "alice", "phone");
    let reply = publish_iq(&mut alice, &publish(TUNE, "t1", &tune("Finzi"), &[]));
    assert_matches(&reply, "<iq type='result'/>");
    let mut bob = Client::user(&server, "bob", "pc");
    let reply = items(&mut bob, "alice", TUNE);
    assert_eq!(item_ids(&reply), vec!["t1"]);
    assert_matches(
        &reply,
        &format!(
            "<iq type='result' from='alice@{DOMAIN}'><pubsub xmlns='{PUBSUB}'><items node='{TUNE}'><item id='t1'><tune xmlns='{TUNE}'><title>Finzi</title></tune></item></items></pubsub></iq>"
        ),
    );
    let mut carol = Client::user(&server, "carol", "pc");
    let reply = items(&mut carol, "alice", TUNE);
    error_with(
        &reply,
        "not-authorized",
        Some("presence-subscription-required"),
    );
    // The account's disco shows the PEP service, and its nodes to those who may read them.
    let info = carol.iq(
        &format!("type='get' to='alice@{DOMAIN}'"),
        &format!("<query xmlns='{}'/>", ns::DISCO_INFO),
    );
    assert_matches(
        &info,
        &format!(
            "<iq type='result'><query xmlns='{}'><identity category='pubsub' type='pep'/><feature var='http://jabber.org/protocol/pubsub#publish-options'/></query></iq>",
            ns::DISCO_INFO
        ),
    );
    let nodes = |c: &mut Client| {
        let r = c.iq(
            &format!("type='get' to='alice@{DOMAIN}'"),
            &format!("<query xmlns='{}'/>", ns::DISCO_ITEMS),
        );
        r.get("query", ns::DISCO_ITEMS)
            .children
            .iter()
            .filter_map(|i| i.attr("node").map(str::to_owned))
            .collect::<Vec<_>>()
    };
    assert_eq!(nodes(&mut bob), vec![TUNE]);
    assert!(nodes(&mut carol).is_empty());
}

#[test]
fn publish_options_that_differ_from_the_node_are_a_precondition_not_met() {
    let server = server_with("");
    let mut alice = Client::online(&server, "alice", "phone");
    let node = "urn:xmpp:omemo:2:bundles";
    let open_max = [("pubsub#access_model", "open"), ("pubsub#max_items", "max")];
    for dev in ["1001", "1002"] {
        let reply = publish_iq(
            &mut alice,
            &publish(node, dev, "<bundle xmlns='urn:xmpp:omemo:2'/>", &open_max),
        );
        assert_matches(&reply, "<iq type='result'/>");
    }
    let reply = publish_iq(
        &mut alice,
        &publish(
            node,
            "1003",
            "<bundle xmlns='urn:xmpp:omemo:2'/>",
            &[("pubsub#access_model", "presence")],
        ),
    );
    assert_matches(&reply, "<iq type='error'><error type='cancel'/></iq>");
    error_with(&reply, "conflict", Some("precondition-not-met"));
    // The owner reconfigures the node, as clients do on that error, and publishes again.
    let reply = alice.iq(
        "type='set'",
        &format!(
            "<pubsub xmlns='{PUBSUB_OWNER}'><configure node='{node}'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field>\
             <field var='pubsub#access_model'><value>presence</value></field></x></configure></pubsub>"
        ),
    );
    assert_matches(&reply, "<iq type='result'/>");
    let reply = publish_iq(
        &mut alice,
        &publish(
            node,
            "1003",
            "<bundle xmlns='urn:xmpp:omemo:2'/>",
            &[("pubsub#access_model", "presence")],
        ),
    );
    assert_matches(&reply, "<iq type='result'/>");
    assert_eq!(
        item_ids(&items(&mut alice, "alice", node)),
        vec!["1001", "1002", "1003"]
    );
}

#[test]
fn notifications_go_to_notify_sessions_once_their_caps_are_known() {
    let server = server_with("");
    befriend(&server, "alice", "bob");
    befriend(&server, "alice", "carol");
    let mut alice = Client::online_expecting(&server, "alice", "phone", &[]);
    // Bob's client wants tunes, but the server has not heard back about his caps yet.
    let mut bob = online(&server, "bob", "pc", &[TUNE, "urn:example:bob-only"], false);
    let asked = bob
        .open_question
        .clone()
        .expect("bob's client is asked about its caps");
    // Carol's client does not want tunes.
    let mut carol = online(&server, "carol", "pc", &["urn:example:other"], true);
    alice.settle();
    let reply = publish_iq(&mut alice, &publish(TUNE, "t1", &tune("one"), &[]));
    assert_matches(&reply, "<iq type='result'/>");
    let reply = publish_iq(&mut alice, &publish(TUNE, "t2", &tune("two"), &[]));
    assert_matches(&reply, "<iq type='result'/>");
    assert!(
        events(&drain(&mut bob.client), TUNE).is_empty(),
        "bob got a tune before his caps were known"
    );
    assert!(events(&drain(&mut carol.client), TUNE).is_empty());
    // Bob's answer brings the last item; later ones come as they are published.
    let query = bob.query.clone();
    bob.client.send(&format!(
        "<iq type='result' id='{asked}' to='{DOMAIN}'>{query}</iq>"
    ));
    let got = drain(&mut bob.client);
    assert_eq!(events(&got, TUNE), vec!["t2"]);
    let notification = got.iter().find(|m| m.name == "message").unwrap();
    assert_matches(
        notification,
        &format!(
            "<message type='headline' from='alice@{DOMAIN}'><event xmlns='{PUBSUB_EVENT}'><items node='{TUNE}'><item id='t2'><tune xmlns='{TUNE}'><title>two</title></tune></item></items></event></message>"
        ),
    );
    publish_iq(&mut alice, &publish(TUNE, "t3", &tune("three"), &[]));
    assert_eq!(events(&drain(&mut bob.client), TUNE), vec!["t3"]);
    assert!(events(&drain(&mut carol.client), TUNE).is_empty());
    assert!(bob.got.iter().all(|e| e.name != "message"));
}

#[test]
fn the_last_item_comes_when_a_contact_comes_online() {
    let server = server_with("");
    befriend(&server, "alice", "bob");
    let mut alice = Client::online(&server, "alice", "phone");
    publish_iq(&mut alice, &publish(TUNE, "t1", &tune("one"), &[]));
    publish_iq(
        &mut alice,
        &publish(
            "urn:xmpp:omemo:2:devices",
            "current",
            "<devices xmlns='urn:xmpp:omemo:2'><device id='1'/></devices>",
            &[("pubsub#access_model", "open")],
        ),
    );
    alice.close();
    let bob = online(
        &server,
        "bob",
        "pc",
        &[TUNE, "urn:xmpp:omemo:2:devices"],
        true,
    );
    assert_eq!(events(&bob.got, TUNE), vec!["t1"]);
    assert_eq!(
        events(&bob.got, "urn:xmpp:omemo:2:devices"),
        vec!["current"]
    );
    // Carol is no contact: an open node she may read, but nothing is pushed to her.
    let carol = online(
        &server,
        "carol",
        "pc",
        &[TUNE, "urn:xmpp:omemo:2:devices"],
        true,
    );
    assert!(
        carol.got.iter().all(|e| e.name != "message"),
        "{:?}",
        carol.got
    );
}

#[test]
fn nodes_survive_a_restart_and_go_with_the_account() {
    let mut server = server_with("");
    let mut alice = Client::online(&server, "alice", "phone");
    let node = "urn:xmpp:omemo:2:bundles";
    let open_max = [("pubsub#access_model", "open"), ("pubsub#max_items", "max")];
    for dev in ["1", "2"] {
        publish_iq(
            &mut alice,
            &publish(node, dev, "<bundle xmlns='urn:xmpp:omemo:2'/>", &open_max),
        );
    }
    alice.close();
    server.restart();
    let mut alice = Client::online(&server, "alice", "phone");
    assert_eq!(item_ids(&items(&mut alice, "alice", node)), vec!["1", "2"]);
    // The node is still `max` and open: the same options publish again.
    let reply = publish_iq(
        &mut alice,
        &publish(node, "3", "<bundle xmlns='urn:xmpp:omemo:2'/>", &open_max),
    );
    assert_matches(&reply, "<iq type='result'/>");
    alice.close();
    let out = server.cli(&["user", "remove", &format!("alice@{DOMAIN}")], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.add_user(&format!("alice@{DOMAIN}"), PASSWORD);
    let mut bob = Client::user(&server, "bob", "pc");
    error_with(&items(&mut bob, "alice", node), "item-not-found", None);
    server.restart();
    let mut bob = Client::user(&server, "bob", "pc");
    error_with(&items(&mut bob, "alice", node), "item-not-found", None);
}

#[test]
fn floods_and_malformed_requests_are_refused() {
    let server = server_with(
        "[modules.pep]\nmax_item_bytes = 4096\nmax_nodes = 20\nmax_items = 50\nmax_account_bytes = 40000\n",
    );
    let mut alice = Client::online(&server, "alice", "phone");
    // A huge item.
    let huge = format!("<x xmlns='urn:example'>{}</x>", "a".repeat(10_000));
    let reply = publish_iq(&mut alice, &publish("urn:example:big", "1", &huge, &[]));
    error_with(&reply, "not-acceptable", Some("payload-too-big"));
    // Thousands of nodes: the first twenty are made, the rest refused.
    let mut made = 0;
    for i in 0..1000 {
        let reply = publish_iq(
            &mut alice,
            &publish(
                &format!("urn:example:{i}"),
                "1",
                "<x xmlns='urn:example'/>",
                &[],
            ),
        );
        match reply.attr("type") {
            Some("result") => made += 1,
            _ => error_with(&reply, "policy-violation", None),
        }
    }
    assert_eq!(made, 20);
    // max_items=max on an existing node, then item floods: the account's bytes stop them.
    let item = format!("<x xmlns='urn:example'>{}</x>", "b".repeat(3000));
    let reply = alice.iq(
        "type='set'",
        &format!(
            "<pubsub xmlns='{PUBSUB_OWNER}'><configure node='urn:example:0'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#node_config</value></field>\
             <field var='pubsub#max_items'><value>max</value></field></x></configure></pubsub>"
        ),
    );
    assert_matches(&reply, "<iq type='result'/>");
    let mut kept = 0;
    for i in 0..100 {
        let reply = publish_iq(
            &mut alice,
            &publish(
                "urn:example:0",
                &format!("f{i}"),
                &item,
                &[("pubsub#max_items", "max")],
            ),
        );
        match reply.attr("type") {
            Some("result") => kept += 1,
            _ => error_with(&reply, "policy-violation", None),
        }
    }
    assert!(
        (10..=13).contains(&kept),
        "{kept} items of 3 KB kept under a 40 KB quota"
    );
    // Publishing to someone else's node.
    let mut bob = Client::online(&server, "bob", "pc");
    let reply = bob.iq(
        &format!("type='set' to='alice@{DOMAIN}'"),
        &publish("urn:example:0", "evil", "<x xmlns='urn:example'/>", &[]),
    );
    error_with(&reply, "forbidden", None);
    let reply = bob.iq(
        &format!("type='set' to='alice@{DOMAIN}'"),
        &format!("<pubsub xmlns='{PUBSUB_OWNER}'><delete node='urn:example:0'/></pubsub>"),
    );
    error_with(&reply, "forbidden", None);
    // Malformed forms and requests.
    for (xml, condition) in [
        (
            format!(
                "<pubsub xmlns='{PUBSUB}'><publish node='urn:example:1'><item id='1'><x xmlns='urn:example'/></item></publish><publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:wrong</value></field></x></publish-options></pubsub>"
            ),
            "conflict",
        ),
        (
            format!(
                "<pubsub xmlns='{PUBSUB_OWNER}'><configure node='urn:example:1'><x xmlns='jabber:x:data' type='submit'><field var='pubsub#max_items'><value>9</value></field></x></configure></pubsub>"
            ),
            "bad-request",
        ),
        (
            format!(
                "<pubsub xmlns='{PUBSUB_OWNER}'><configure node='urn:example:1'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#node_config</value></field><field var='pubsub#max_items'><value>-1</value></field></x></configure></pubsub>"
            ),
            "not-acceptable",
        ),
        (
            format!(
                "<pubsub xmlns='{PUBSUB}'><publish node='urn:example:1'><item id='2'/></publish></pubsub>"
            ),
            "bad-request",
        ),
        (
            format!("<pubsub xmlns='{PUBSUB}'><retract node='urn:example:1'/></pubsub>"),
            "bad-request",
        ),
    ] {
        let reply = alice.iq("type='set'", &xml);
        error_with(&reply, condition, None);
    }
    // Others are unaffected.
    let mut carol = Client::online(&server, "carol", "pc");
    let reply = publish_iq(&mut carol, &publish(TUNE, "t", &tune("fine"), &[]));
    assert_matches(&reply, "<iq type='result'/>");
    crate::harness::assert_server_ok(&server, "bob");
}

/// What profanity does with OMEMO: it asks for its own device list, and only an
/// `item-not-found` with the legacy code 404 (XEP-0086) tells it the node is missing, so that
/// it publishes the list with its device; without the code its device stays unpublished and
/// nobody can encrypt to it. Then the list is there, with its device.
#[test]
fn a_missing_own_device_list_is_a_404_and_publishing_it_makes_it() {
    let server = server_with("");
    let mut alice = Client::online(&server, "alice", "laptop");
    let node = "eu.siacs.conversations.axolotl.devicelist";
    let reply = items(&mut alice, "alice", node);
    error_with(&reply, "item-not-found", None);
    assert_matches(
        &reply,
        "<iq type='error'><error type='cancel' code='404'/></iq>",
    );
    let list = "<list xmlns='eu.siacs.conversations.axolotl'><device id='1514291889'/></list>";
    let reply = publish_iq(&mut alice, &publish(node, "current", list, &[]));
    assert_matches(&reply, "<iq type='result'/>");
    let reply = items(&mut alice, "alice", node);
    assert_eq!(item_ids(&reply), vec!["current"]);
}
