//! Push notifications (XEP-0357) end to end: `a.test` serves amy and ben, and talks to no
//! other server but its push service `b.test` (`federation.push_services`); the app server is
//! a client of `b.test` (bob@b.test/push) that records the notifications it gets. ben's phone
//! enables push, then loses its connection.
//!
//! What comes over the link from a.test to b.test arrives in order: a message amy sends to the
//! app server after hers to ben arrives after every notification they caused, so it is the
//! barrier that proves how many there were.

use crate::federation::{Pair, servers};
use crate::harness::*;

const SM: &str = "urn:xmpp:sm:3";

fn enable_push(c: &mut Client, node: &str) {
    let r = c.iq(
        "type='set'",
        &format!(
            "<enable xmlns='urn:xmpp:push:0' jid='bob@b.test/push' node='{node}'>\
             <x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
             <field var='secret'><value>eruio234vzxc2kla-91</value></field></x></enable>"
        ),
    );
    assert_matches(&r, "<iq type='result'/>");
}

/// The servers: a.test with push to b.test only, b.test federating; the app server online.
fn setup(extra_a: &str) -> (Pair, Client) {
    let p = servers(
        "enabled = false\npush_services = [\"b.test\"]",
        "",
        &format!("[modules.push]\nmin_interval_secs = 3600\n{extra_a}"),
        "",
    );
    p.a.add_users(&["amy", "ben"]);
    let app = Client::online(&p.b, "bob", "push");
    (p, app)
}

/// ben online with resumable stream management and push enabled; returns its resumption id
/// and full JID once its socket is cut and the server noticed.
fn ben_goes_away(p: &Pair, node: Option<&str>) -> (String, String) {
    let mut ben = Client::online(&p.a, "ben", "phone");
    let id = ben.enable_sm(true).expect("a resumption id");
    if let Some(node) = node {
        enable_push(&mut ben, node);
    }
    let jid = ben.jid.clone();
    // No stream close: the phone went into a tunnel.
    drop(ben);
    p.a.wait_for_log("socket lost, waiting for resumption", 1, TIMEOUT);
    (id, jid)
}

/// What the app server got before amy's barrier message: the notifications, answered.
fn notifications(amy: &mut Client, app: &mut Client) -> Vec<Element> {
    amy.send_message("bob@b.test/push", "chat", "barrier");
    let mut got = Vec::new();
    loop {
        let el = app.recv_skipping_presence();
        if el.is("message", ns::CLIENT) {
            assert_matches(
                &el,
                "<message from='amy@a.test/pc'><body>barrier</body></message>",
            );
            return got;
        }
        assert!(el.is("iq", ns::CLIENT), "unexpected {el}");
        app.send(&format!(
            "<iq type='result' id='{}' to='{}'/>",
            el.attr("id").unwrap(),
            el.attr("from").unwrap()
        ));
        got.push(el);
    }
}

#[test]
fn a_phone_that_sleeps_is_woken_once_and_gets_every_message_once() {
    let (p, mut app) = setup("");
    let (id, jid) = ben_goes_away(&p, Some("node-1"));
    let mut amy = Client::online(&p.a, "amy", "pc");
    for body in ["m1", "m2", "m3"] {
        amy.send_message("ben@a.test", "chat", body);
    }
    let got = notifications(&mut amy, &mut app);
    assert_eq!(got.len(), 1, "one notification for the burst: {got:?}");
    let n = &got[0];
    assert_matches(
        n,
        "<iq type='set' from='ben@a.test' to='bob@b.test/push'>\
         <pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='node-1'><item>\
         <notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data'>\
         <field var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field>\
         <field var='message-count'><value>1</value></field></x></notification></item></publish>\
         <publish-options><x xmlns='jabber:x:data' type='submit'>\
         <field var='secret'><value>eruio234vzxc2kla-91</value></field></x></publish-options>\
         </pubsub></iq>",
    );
    let text = n.to_string();
    assert!(
        !text.contains("m1") && !text.contains("amy") && !text.contains("last-message"),
        "the notification tells nothing of the message: {text}"
    );
    // The phone wakes up and resumes: the three messages, in order, once.
    let mut ben = Client::connect_starttls(&p.a);
    ben.auth_scram("ben", PASSWORD, "SCRAM-SHA-256");
    ben.send(&format!("<resume xmlns='{SM}' previd='{id}' h='1'/>"));
    ben.expect(&format!("<resumed xmlns='{SM}' previd='{id}'/>"));
    ben.jid = jid;
    let bodies: Vec<String> = ben
        .messages_until_sync()
        .iter()
        .map(|m| m.get("body", ns::CLIENT).text.clone())
        .collect();
    assert_eq!(bodies, ["m1", "m2", "m3"]);
    // Back: the next absence starts a new burst.
    p.a.wait_for_log("taken by bob@b.test/push", 1, TIMEOUT);
}

#[test]
fn after_disable_nothing_is_pushed() {
    let (p, mut app) = setup("");
    let mut ben = Client::online(&p.a, "ben", "phone");
    ben.enable_sm(true);
    enable_push(&mut ben, "node-2");
    let r = ben.iq(
        "type='set'",
        "<disable xmlns='urn:xmpp:push:0' jid='bob@b.test/push' node='node-2'/>",
    );
    assert_matches(&r, "<iq type='result'/>");
    drop(ben);
    p.a.wait_for_log("socket lost, waiting for resumption", 1, TIMEOUT);
    let mut amy = Client::online(&p.a, "amy", "pc");
    amy.send_message("ben@a.test", "chat", "hello?");
    assert!(notifications(&mut amy, &mut app).is_empty());
}

#[test]
fn when_the_window_closes_the_messages_wait_offline() {
    // The push window is longer than stream management's, and short enough for a test.
    let (p, mut app) =
        setup("resume_timeout_secs = 2\n[stream_management]\nresume_timeout_secs = 1\n");
    ben_goes_away(&p, Some("node-3"));
    let mut amy = Client::online(&p.a, "amy", "pc");
    amy.send_message("ben@a.test", "chat", "first");
    amy.send_message("ben@a.test", "chat", "second");
    assert_eq!(notifications(&mut amy, &mut app).len(), 1);
    p.a.wait_for_log(
        "resume window expired",
        1,
        std::time::Duration::from_secs(10),
    );
    Client::online_expecting(
        &p.a,
        "ben",
        "phone",
        &[
            "<message from='amy@a.test/pc'><body>first</body></message>",
            "<message from='amy@a.test/pc'><body>second</body></message>",
        ],
    );
}

#[test]
fn an_app_server_that_is_not_allowed_is_refused() {
    let (p, _app) = setup("");
    let mut ben = Client::online(&p.a, "ben", "phone");
    let r = ben.iq(
        "type='set'",
        "<enable xmlns='urn:xmpp:push:0' jid='push.elsewhere.test' node='n'/>",
    );
    assert_matches(&r, &stanza_error("iq", ANY, "cancel", "not-allowed"));
    p.a.wait_for_log(
        "add push.elsewhere.test to federation.push_services",
        1,
        TIMEOUT,
    );
    // And the account's own disco says push is there.
    let r = ben.iq(
        "type='get' to='ben@a.test'",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    );
    assert_matches(
        &r,
        "<iq type='result'><query xmlns='http://jabber.org/protocol/disco#info'><feature var='urn:xmpp:push:0'/></query></iq>",
    );
}
