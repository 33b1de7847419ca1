//! Bookmarks and private storage over real TLS connections: XEP-0402 bookmarks published as
//! Conversations, Dino and Gajim publish them reach the owner's other resources and nobody
//! else; XEP-0049 private storage round trips, stays its owner's, and a XEP-0048 client's
//! bookmarks there are the XEP-0402 ones; oversized elements and floods of elements are
//! refused without storing anything.

use crate::harness::{Client, DOMAIN, Element, TestServer, assert_matches, stanza_error};
use crate::pep::{
    PUBSUB, PUBSUB_EVENT, drain, events, item_ids, items, online, publish, publish_iq,
};

const BOOKMARKS: &str = "urn:xmpp:bookmarks:1";
const PRIVATE: &str = "jabber:iq:private";
const LEGACY: &str = "storage:bookmarks";

fn server_with(extra: &str) -> TestServer {
    let server = TestServer::start_with(extra);
    server.add_users(&["alice", "bob"]);
    server
}

/// XEP-0402 §3.3: the options every client sends with a bookmark.
const OPTIONS: &[(&str, &str)] = &[
    ("pubsub#persist_items", "true"),
    ("pubsub#max_items", "max"),
    ("pubsub#send_last_published_item", "never"),
    ("pubsub#access_model", "whitelist"),
];

fn conference(name: &str, nick: &str) -> String {
    format!(
        "<conference xmlns='{BOOKMARKS}' name='{name}' autojoin='true'><nick>{nick}</nick></conference>"
    )
}

fn private(c: &mut Client, kind: &str, inner: &str) -> Element {
    c.iq(
        &format!("type='{kind}'"),
        &format!("<query xmlns='{PRIVATE}'>{inner}</query>"),
    )
}

#[track_caller]
fn error(reply: &Element, error_type: &str, condition: &str) {
    let id = reply.attr("id").unwrap_or_default().to_owned();
    assert_matches(reply, &stanza_error("iq", &id, error_type, condition));
}

#[test]
fn bookmarks_reach_the_owners_other_resources_and_nobody_else() {
    let server = server_with("");
    crate::pep::befriend(&server, "alice", "bob");
    let mut phone = online(&server, "alice", "phone", &[BOOKMARKS], true).client;
    let mut laptop = online(&server, "alice", "laptop", &[BOOKMARKS], true).client;
    let mut bob = online(&server, "bob", "pc", &[BOOKMARKS], true).client;
    drain(&mut phone);
    drain(&mut laptop);
    drain(&mut bob);
    let room = "family@muc.example.org";
    let reply = publish_iq(
        &mut phone,
        &publish(BOOKMARKS, room, &conference("Family", "Al"), OPTIONS),
    );
    assert_matches(&reply, "<iq type='result'/>");
    // The publishing resource asked for notifications too.
    assert_eq!(events(&drain(&mut phone), BOOKMARKS), vec![room]);
    // The other resource hears of it, with the payload; the contact does not.
    let got = drain(&mut laptop);
    assert_eq!(events(&got, BOOKMARKS), vec![room]);
    assert!(got.iter().any(|m| m.matches(&crate::harness::pattern(&format!(
        "<message type='headline' from='alice@{DOMAIN}'><event xmlns='{PUBSUB_EVENT}'><items node='{BOOKMARKS}'><item id='{room}'><conference xmlns='{BOOKMARKS}' name='Family'><nick>Al</nick></conference></item></items></event></message>"
    )))));
    assert!(events(&drain(&mut bob), BOOKMARKS).is_empty());
    // Publishing again with the same options is fine (the node is as they say)...
    let reply = publish_iq(
        &mut laptop,
        &publish(
            BOOKMARKS,
            "club@muc.example.org",
            &conference("Club", "Al"),
            OPTIONS,
        ),
    );
    assert_matches(&reply, "<iq type='result'/>");
    drain(&mut phone);
    assert_eq!(
        item_ids(&items(&mut phone, "alice", BOOKMARKS)),
        vec![room, "club@muc.example.org"]
    );
    // ...and a contact may read none of it.
    let reply = items(&mut bob, "alice", BOOKMARKS);
    error(&reply, "cancel", "not-allowed");
    // Retracting with notify tells the other resource.
    drain(&mut laptop);
    let reply = phone.iq(
        "type='set'",
        &format!("<pubsub xmlns='{PUBSUB}'><retract node='{BOOKMARKS}' notify='true'><item id='{room}'/></retract></pubsub>"),
    );
    assert_matches(&reply, "<iq type='result'/>");
    let got = drain(&mut laptop);
    assert!(got.iter().any(|m| m.matches(&crate::harness::pattern(&format!(
        "<message><event xmlns='{PUBSUB_EVENT}'><items node='{BOOKMARKS}'><retract id='{room}'/></items></event></message>"
    )))));
}

#[test]
fn private_storage_round_trips_and_stays_its_owners() {
    let mut server = server_with("");
    let mut alice = Client::user(&server, "alice", "phone");
    let notes = "<notes xmlns='storage:rosternotes'><note jid='bob@localhost'>plays the cello</note></notes>";
    assert_matches(&private(&mut alice, "set", notes), "<iq type='result'/>");
    let reply = private(&mut alice, "get", "<notes xmlns='storage:rosternotes'/>");
    assert_matches(
        &reply,
        &format!("<iq type='result'><query xmlns='{PRIVATE}'>{notes}</query></iq>"),
    );
    let mut bob = Client::user(&server, "bob", "pc");
    let reply = private(&mut bob, "get", "<notes xmlns='storage:rosternotes'/>");
    let stored = reply
        .get("query", PRIVATE)
        .get("notes", "storage:rosternotes");
    assert!(stored.children.is_empty(), "bob sees {reply}");
    for kind in ["get", "set"] {
        let reply = bob.iq(
            &format!("type='{kind}' to='alice@{DOMAIN}'"),
            &format!("<query xmlns='{PRIVATE}'><notes xmlns='storage:rosternotes'/></query>"),
        );
        error(&reply, "auth", "forbidden");
    }
    drop((alice, bob));
    server.restart();
    let mut alice = Client::user(&server, "alice", "phone");
    let reply = private(&mut alice, "get", "<notes xmlns='storage:rosternotes'/>");
    assert_matches(
        &reply,
        &format!("<iq type='result'><query xmlns='{PRIVATE}'>{notes}</query></iq>"),
    );
}

#[test]
fn a_xep_0048_client_shares_bookmarks_with_xep_0402_clients() {
    let server = server_with("");
    let mut modern = online(&server, "alice", "modern", &[BOOKMARKS], true).client;
    let mut old = Client::user(&server, "alice", "old");
    drain(&mut modern);
    let reply = private(
        &mut old,
        "set",
        &format!(
            "<storage xmlns='{LEGACY}'><conference jid='family@muc.example.org' name='Family' autojoin='true'><nick>Al</nick></conference></storage>"
        ),
    );
    assert_matches(&reply, "<iq type='result'/>");
    assert_eq!(
        events(&drain(&mut modern), BOOKMARKS),
        vec!["family@muc.example.org"]
    );
    let reply = publish_iq(
        &mut modern,
        &publish(
            BOOKMARKS,
            "club@muc.example.org",
            &conference("Club", "Ally"),
            OPTIONS,
        ),
    );
    assert_matches(&reply, "<iq type='result'/>");
    drain(&mut modern);
    let reply = private(&mut old, "get", &format!("<storage xmlns='{LEGACY}'/>"));
    assert_matches(
        &reply,
        &format!(
            "<iq type='result'><query xmlns='{PRIVATE}'><storage xmlns='{LEGACY}'>\
            <conference jid='family@muc.example.org' name='Family' autojoin='true'><nick>Al</nick></conference>\
            <conference jid='club@muc.example.org' name='Club' autojoin='true'><nick>Ally</nick></conference>\
            </storage></query></iq>"
        ),
    );
    // The account says so, for clients that look before they choose.
    let info = modern.iq(
        &format!("type='get' to='alice@{DOMAIN}'"),
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    );
    assert_matches(
        &info,
        "<iq type='result'><query xmlns='http://jabber.org/protocol/disco#info'><feature var='urn:xmpp:bookmarks:1#compat'/></query></iq>",
    );
}

#[test]
fn oversized_and_countless_private_elements_are_refused_and_store_nothing() {
    let server = server_with("[modules.private]\nmax_item_bytes = 2048\nmax_items = 20\n");
    let mut alice = Client::user(&server, "alice", "phone");
    let big = format!("<big xmlns='urn:example:big'>{}</big>", "x".repeat(4000));
    error(
        &private(&mut alice, "set", &big),
        "modify",
        "not-acceptable",
    );
    // A thousand elements in one request: refused whole.
    let many: String = (0..1000)
        .map(|i| format!("<e{i} xmlns='urn:example:flood'>x</e{i}>"))
        .collect();
    error(
        &private(&mut alice, "set", &many),
        "modify",
        "policy-violation",
    );
    // One at a time: the twenty-first is refused.
    for i in 0..20 {
        let reply = private(
            &mut alice,
            "set",
            &format!("<e{i} xmlns='urn:example:flood'>x</e{i}>"),
        );
        assert_matches(&reply, "<iq type='result'/>");
    }
    let reply = private(&mut alice, "set", "<e20 xmlns='urn:example:flood'>x</e20>");
    error(&reply, "modify", "policy-violation");
    let reply = private(&mut alice, "get", "<e0 xmlns='urn:example:flood'/>");
    assert_matches(
        &reply,
        &format!(
            "<iq type='result'><query xmlns='{PRIVATE}'><e0 xmlns='urn:example:flood'>x</e0></query></iq>"
        ),
    );
    let reply = private(&mut alice, "get", "<big xmlns='urn:example:big'/>");
    let stored = reply.get("query", PRIVATE).get("big", "urn:example:big");
    assert!(
        stored.text.is_empty(),
        "the refused element was stored: {reply}"
    );
    // Bob is not affected.
    let mut bob = Client::user(&server, "bob", "pc");
    assert_matches(
        &private(&mut bob, "set", "<e0 xmlns='urn:example:flood'>y</e0>"),
        "<iq type='result'/>",
    );
}
