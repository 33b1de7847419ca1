//! Blocking Command (XEP-0191 v1.3) over real TLS connections: the block list with its block,
//! unblock and unblock-all commands and the pushes to the resources that asked for the list;
//! a blocked contact's messages, iqs, presence and subscription requests refused or dropped as
//! §3.3 says, and none of them delivered later, stored offline or archived; the user's own
//! stanzas to a blocked contact refused with `<blocked/>`; unavailable presence on block and
//! the current presence on unblock; the matching rules of §4; the list kept across a restart
//! and gone with the account; and the size limit against a user who floods the list.

use crate::harness::{
    Client, DOMAIN, Element, NONE, PASSWORD, TestServer, assert_matches, ns, stanza_error,
};

const BLOCKING: &str = "urn:xmpp:blocking";
const BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
const MAM: &str = "urn:xmpp:mam:2";
const CARBONS: &str = "urn:xmpp:carbons:2";
const FORWARD: &str = "urn:xmpp:forward:0";

fn server() -> TestServer {
    let server = TestServer::start();
    server.add_users(&["alice", "bob", "carol"]);
    server
}

/// `<{what} xmlns='urn:xmpp:blocking'>` with one item per JID.
fn command(what: &str, jids: &[&str]) -> String {
    let items: String = jids.iter().map(|j| format!("<item jid='{j}'/>")).collect();
    format!("<{what} xmlns='{BLOCKING}'>{items}</{what}>")
}

/// The item JIDs of the `<{what}/>` child of `el`, sorted.
#[track_caller]
fn items_of(el: &Element, what: &str) -> Vec<String> {
    let mut jids: Vec<String> = el
        .get(what, BLOCKING)
        .children
        .iter()
        .filter(|c| c.is("item", BLOCKING))
        .map(|c| c.attr("jid").unwrap_or_default().to_owned())
        .collect();
    jids.sort();
    jids
}

fn sorted(jids: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = jids.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Asks for the block list (which also subscribes this resource to pushes, §3.2) and returns
/// its JIDs, sorted.
#[track_caller]
fn blocklist(c: &mut Client) -> Vec<String> {
    let reply = c.iq("type='get'", &format!("<blocklist xmlns='{BLOCKING}'/>"));
    assert_matches(&reply, &format!("<iq type='result' from='{NONE}'/>"));
    items_of(&reply, "blocklist")
}

/// A block or unblock push to `c` with exactly `jids`: from the account itself (no 'from'
/// or its bare JID, as clients require of a push), answered with a result as a client must.
#[track_caller]
fn expect_push(c: &mut Client, push: &Element, what: &str, jids: &[&str]) {
    assert_matches(push, &format!("<iq type='set' to='{}'/>", c.jid));
    assert!(
        push.attr("from").is_none_or(|f| f == c.bare()),
        "{}: a push from {:?}, not from the account: {push}",
        c.jid,
        push.attr("from")
    );
    assert_eq!(items_of(push, what), sorted(jids), "{}: push {push}", c.jid);
    let id = push.attr("id").unwrap_or_default();
    c.send(&format!("<iq type='result' id='{id}'/>"));
}

/// Sends a block or unblock set and takes its result; when `pushed`, `c` asked for the list,
/// so its push comes too (in either order).
#[track_caller]
fn set(c: &mut Client, what: &str, jids: &[&str], pushed: bool) {
    let id = c.send_iq("type='set'", &command(what, jids));
    let result = format!("<iq type='result' id='{id}'/>");
    if !pushed {
        c.expect(&result);
        return;
    }
    let push = format!("<iq type='set'><{what} xmlns='{BLOCKING}'/></iq>");
    let got = c.expect_unordered(&[&result, &push]);
    expect_push(c, &got[1], what, jids);
}

/// Logs `user` in on `resource`, asks for the block list and expects it to be `want`.
#[track_caller]
fn listing(server: &TestServer, user: &str, resource: &str, want: &[&str]) -> Client {
    let mut c = Client::user(server, user, resource);
    assert_eq!(blocklist(&mut c), sorted(want));
    c
}

/// A stanza error carrying XEP-0191's `<blocked/>`: the user wrote to someone she blocked.
/// The error type is left open: RFC 6120 gives not-acceptable `modify`, XEP-0191's example
/// `cancel`.
fn blocked(kind: &str, id: &str) -> String {
    format!(
        "<{kind} type='error' id='{id}'><error><not-acceptable xmlns='{}'/>\
         <blocked xmlns='{BLOCKING_ERRORS}'/></error></{kind}>",
        ns::STANZAS
    )
}

/// service-unavailable from `from`: what a blocked contact gets instead of the user.
fn unavailable_from(kind: &str, id: &str, from: &str) -> String {
    format!(
        "<{kind} type='error' id='{id}' from='{from}'><error type='cancel'>\
         <service-unavailable xmlns='{}'/></error></{kind}>",
        ns::STANZAS
    )
}

/// The (sender's bare JID, body) of every message in `c`'s archive.
#[track_caller]
fn archive(c: &mut Client) -> Vec<(String, String)> {
    let id = c.send_iq(
        "type='set'",
        &format!("<query xmlns='{MAM}' queryid='all'/>"),
    );
    let mut got = Vec::new();
    loop {
        let el = c.recv();
        if el.is("iq", ns::CLIENT) && el.attr("id") == Some(id.as_str()) {
            assert_matches(&el, "<iq type='result'/>");
            return got;
        }
        let m = el
            .get("result", MAM)
            .get("forwarded", FORWARD)
            .get("message", ns::CLIENT);
        let from = m.attr("from").unwrap_or_default();
        got.push((
            from.split('/').next().unwrap_or_default().to_owned(),
            m.child("body", ns::CLIENT)
                .map(|b| b.text.clone())
                .unwrap_or_default(),
        ));
    }
}

/// A chat message from `from` with `body`.
fn chat(from: &str, body: &str) -> String {
    format!("<message from='{from}' type='chat'><body>{body}</body></message>")
}

fn presence(from: &str, typ: &str) -> String {
    format!("<presence from='{from}' type='{typ}'/>")
}

#[test]
fn block_unblock_and_unblock_all_with_pushes_to_the_resources_that_asked() {
    let server = server();
    // The phone asks for the (empty) list; the laptop does not, yet.
    let mut phone = listing(&server, "alice", "phone", &[]);
    let mut laptop = Client::user(&server, "alice", "laptop");

    set(
        &mut phone,
        "block",
        &["bob@localhost", "spam.example"],
        true,
    );
    // No push for a resource that never asked for the list.
    laptop.sync();
    assert_eq!(
        blocklist(&mut laptop),
        sorted(&["bob@localhost", "spam.example"])
    );
    // Blocking what is blocked already changes nothing.
    set(&mut phone, "block", &["bob@localhost"], true);
    laptop.expect(&format!("<iq type='set'><block xmlns='{BLOCKING}'/></iq>"));

    // Now both asked: an unblock goes to both, whoever sent it.
    set(&mut laptop, "unblock", &["spam.example"], true);
    let push = phone.expect(&format!(
        "<iq type='set'><unblock xmlns='{BLOCKING}'/></iq>"
    ));
    expect_push(&mut phone, &push, "unblock", &["spam.example"]);
    assert_eq!(blocklist(&mut phone), ["bob@localhost"]);

    // Unblock-all: an empty <unblock/>, pushed empty.
    set(
        &mut phone,
        "block",
        &["carol@localhost/evil", "localhost/spam"],
        true,
    );
    let push = laptop.expect(&format!("<iq type='set'><block xmlns='{BLOCKING}'/></iq>"));
    expect_push(
        &mut laptop,
        &push,
        "block",
        &["carol@localhost/evil", "localhost/spam"],
    );
    set(&mut laptop, "unblock", &[], true);
    let push = phone.expect(&format!(
        "<iq type='set'><unblock xmlns='{BLOCKING}'/></iq>"
    ));
    expect_push(&mut phone, &push, "unblock", &[]);
    assert!(blocklist(&mut phone).is_empty());
    assert!(blocklist(&mut laptop).is_empty());
    phone.sync();
    laptop.sync();
}

#[test]
fn bad_commands_are_refused_and_change_nothing() {
    let server = server();
    let mut alice = listing(&server, "alice", "phone", &[]);
    let refused = |alice: &mut Client, payload: &str, condition: &str| {
        let id = alice.send_iq("type='set'", payload);
        alice.expect(&stanza_error("iq", &id, "modify", condition));
    };
    // §3.3: a <block/> without an item is a bad request.
    refused(&mut alice, &command("block", &[]), "bad-request");
    // One malformed JID spoils the whole command (RFC 6122 / XEP-0086: jid-malformed).
    refused(
        &mut alice,
        &command("block", &["bob@localhost", "a@b@c"]),
        "jid-malformed",
    );
    refused(
        &mut alice,
        &command("unblock", &["@localhost"]),
        "jid-malformed",
    );
    // The list is read with a get, never written with a set.
    refused(&mut alice, &command("blocklist", &[]), "bad-request");
    // Another account's list is none of alice's business.
    let id = alice.send_iq(
        "type='get' to='bob@localhost'",
        &format!("<blocklist xmlns='{BLOCKING}'/>"),
    );
    alice.expect(&stanza_error("iq", &id, "cancel", "service-unavailable"));
    assert!(blocklist(&mut alice).is_empty());
}

#[test]
fn a_blocked_contacts_messages_bounce_and_are_neither_delivered_stored_nor_archived() {
    let server = server();
    let mut alice = Client::online(&server, "alice", "phone");
    let mut bob = Client::online(&server, "bob", "home");
    let mut carol = Client::online(&server, "carol", "home");
    set(&mut alice, "block", &["bob@localhost"], false);

    // To her bare JID and to her resource: service-unavailable, as if nobody were there.
    let id = bob.send_message("alice@localhost", "chat", "hello?");
    bob.expect(&unavailable_from("message", &id, "alice@localhost"));
    let id = bob.send_message(&alice.jid, "chat", "hello, phone?");
    bob.expect(&unavailable_from("message", &id, &alice.jid));
    let id = bob.send_message("alice@localhost", "normal", "a normal one");
    bob.expect(&unavailable_from("message", &id, "alice@localhost"));
    // A message from carol goes through: the ping proves nothing of bob's came before it.
    carol.send_message("alice@localhost", "chat", "from carol, live");
    carol.sync();
    assert_eq!(alice.messages_until_sync().len(), 1);

    // alice goes offline: bob's message is still refused, not kept for her; carol's is.
    alice.close();
    let id = bob.send_message("alice@localhost", "chat", "are you there?");
    bob.expect(&unavailable_from("message", &id, "alice@localhost"));
    carol.send_message("alice@localhost", "chat", "from carol, offline");
    carol.sync();
    bob.sync();

    // At login she gets carol's message only.
    let mut alice = Client::online_expecting(
        &server,
        "alice",
        "laptop",
        &[&chat("carol@localhost/home", "from carol, offline")],
    );
    assert!(alice.messages_until_sync().is_empty());
    // Her archive holds carol's two messages and nothing of bob's.
    assert_eq!(
        archive(&mut alice),
        [
            ("carol@localhost".to_owned(), "from carol, live".to_owned()),
            (
                "carol@localhost".to_owned(),
                "from carol, offline".to_owned()
            ),
        ]
    );
}

#[test]
fn a_blocked_contacts_iqs_get_service_unavailable_and_his_answers_are_dropped() {
    let server = server();
    let mut alice = Client::online(&server, "alice", "phone");
    let mut bob = Client::online(&server, "bob", "home");
    let ping = format!("<ping xmlns='{}'/>", ns::PING);
    let disco = format!("<query xmlns='{}'/>", ns::DISCO_INFO);

    // Before the block: bob's ping reaches alice's resource, and her account answers disco.
    let id = bob.send_iq(&format!("type='get' to='{}'", alice.jid), &ping);
    let got = alice.expect(&format!("<iq type='get' id='{id}' from='{}'/>", bob.jid));
    alice.send(&format!(
        "<iq type='result' id='{id}' to='{}'/>",
        got.attr("from").unwrap_or_default()
    ));
    bob.expect(&format!(
        "<iq type='result' id='{id}' from='{}'/>",
        alice.jid
    ));
    let reply = bob.iq("type='get' to='alice@localhost'", &disco);
    assert_matches(&reply, "<iq type='result'/>");

    set(&mut alice, "block", &["bob@localhost"], false);
    // An iq get or set to her resource or her account: service-unavailable.
    let id = bob.send_iq(&format!("type='get' to='{}'", alice.jid), &ping);
    bob.expect(&unavailable_from("iq", &id, &alice.jid));
    let id = bob.send_iq(
        &format!("type='set' to='{}'", alice.jid),
        &format!("<query xmlns='{}'/>", ns::ROSTER),
    );
    bob.expect(&unavailable_from("iq", &id, &alice.jid));
    let id = bob.send_iq("type='get' to='alice@localhost'", &disco);
    bob.expect(&unavailable_from("iq", &id, "alice@localhost"));
    // Results and errors are dropped without a word to either side.
    bob.send(&format!("<iq type='result' id='r1' to='{}'/>", alice.jid));
    bob.send(&format!(
        "<iq type='error' id='r2' to='{}'><error type='cancel'>\
         <item-not-found xmlns='{}'/></error></iq>",
        alice.jid,
        ns::STANZAS
    ));
    bob.sync();
    alice.sync();
}

#[test]
fn a_blocked_contacts_presence_and_subscription_requests_never_arrive() {
    let server = server();
    let mut alice = Client::online(&server, "alice", "phone");
    let mut bob = Client::online(&server, "bob", "home");
    set(&mut alice, "block", &["bob@localhost"], false);

    // Directed presence, to her account and to her resource.
    bob.send("<presence to='alice@localhost'><show>chat</show></presence>");
    bob.send(&format!("<presence to='{}'/>", alice.jid));
    // A subscription request: bob's side goes on as usual (his roster says he asked)...
    bob.send("<presence to='alice@localhost' type='subscribe'/>");
    bob.expect(&format!(
        "<iq type='set'><query xmlns='{}'><item jid='alice@localhost' ask='subscribe'/>\
         </query></iq>",
        ns::ROSTER
    ));
    // ...and a probe goes unanswered: not even an error or an 'unsubscribed'.
    bob.send("<presence to='alice@localhost' type='probe'/>");
    bob.sync();
    // ...but alice hears of none of it.
    alice.sync();

    // Nor later: the request was dropped, not kept for her next login.
    alice.close();
    let mut alice = Client::online(&server, "alice", "laptop");
    alice.sync();
    set(&mut alice, "unblock", &["bob@localhost"], false);
    alice.sync();
    bob.sync();
}

#[test]
fn alice_cannot_write_to_someone_she_blocked() {
    let server = server();
    let mut alice = Client::online(&server, "alice", "phone");
    // Her other resource takes carbons: a refused message is no sent message.
    let mut laptop = Client::user(&server, "alice", "laptop");
    let reply = laptop.iq("type='set'", &format!("<enable xmlns='{CARBONS}'/>"));
    assert_matches(&reply, "<iq type='result'/>");
    let mut bob = Client::online(&server, "bob", "home");
    set(&mut alice, "block", &["bob@localhost"], false);

    let id = alice.send_message("bob@localhost", "chat", "I blocked you");
    alice.expect(&blocked("message", &id));
    let id = alice.send_message(&bob.jid, "chat", "and your resource");
    alice.expect(&blocked("message", &id));
    let id = alice.send_iq(
        &format!("type='get' to='{}'", bob.jid),
        &format!("<ping xmlns='{}'/>", ns::PING),
    );
    alice.expect(&blocked("iq", &id));
    alice.send("<presence to='bob@localhost' id='p1'/>");
    alice.expect(&blocked("presence", "p1"));
    alice.send("<presence to='bob@localhost' type='subscribe' id='p2'/>");
    alice.expect(&blocked("presence", "p2"));
    bob.sync();
    laptop.sync();
    alice.sync();
    // Nothing of it is in her archive.
    assert!(archive(&mut alice).is_empty());

    // Once unblocked, her messages go through (and are copied and archived).
    set(&mut alice, "unblock", &["bob@localhost"], false);
    alice.send_message("bob@localhost", "chat", "sorry");
    bob.expect(&chat(&alice.jid, "sorry"));
    laptop.expect(&format!(
        "<message from='alice@localhost'><sent xmlns='{CARBONS}'/></message>"
    ));
    alice.sync();
    assert_eq!(
        archive(&mut alice),
        [("alice@localhost".to_owned(), "sorry".to_owned())]
    );
}

/// alice online on her phone and her laptop, each seeing the other.
fn alice_twice(server: &TestServer) -> (Client, Client) {
    let mut phone = Client::online(server, "alice", "phone");
    let laptop =
        Client::online_expecting(server, "alice", "laptop", &[&presence(&phone.jid, NONE)]);
    phone.expect(&presence(&laptop.jid, NONE));
    (phone, laptop)
}

/// `who` changes its presence to `<show>{show}</show>`; it and `other` (the same account) see it.
#[track_caller]
fn show(who: &mut Client, other: &mut Client, show: &str) -> String {
    who.send(&format!("<presence><show>{show}</show></presence>"));
    let p = format!(
        "<presence from='{}'><show>{show}</show></presence>",
        who.jid
    );
    who.expect(&p);
    other.expect(&p);
    p
}

#[test]
fn blocking_a_subscriber_withdraws_presence_and_unblocking_restores_it() {
    let server = server();
    let (mut phone, mut laptop) = alice_twice(&server);
    let mut bob = Client::online(&server, "bob", "home");

    // bob subscribes to alice's presence and she approves: he sees both her resources.
    bob.send("<presence to='alice@localhost' type='subscribe'/>");
    bob.expect("<iq type='set'/>");
    for c in [&mut phone, &mut laptop] {
        c.expect("<presence from='bob@localhost' type='subscribe'/>");
    }
    phone.send("<presence to='bob@localhost' type='subscribed'/>");
    for c in [&mut phone, &mut laptop] {
        c.expect("<iq type='set'/>");
    }
    bob.expect_unordered(&[
        "<presence from='alice@localhost' type='subscribed'/>",
        "<iq type='set'/>",
        &presence(&phone.jid, NONE),
        &presence(&laptop.jid, NONE),
    ]);

    // The block: he is told that each of her resources went away.
    let reply = phone.iq("type='set'", &command("block", &["bob@localhost"]));
    assert_matches(&reply, "<iq type='result'/>");
    bob.expect_unordered(&[
        &presence(&phone.jid, "unavailable"),
        &presence(&laptop.jid, "unavailable"),
    ]);
    bob.sync();

    // While blocked, her presence changes do not reach him, nor a new resource's initial
    // presence, nor her presence when he probes at login.
    show(&mut laptop, &mut phone, "dnd");
    let mut tablet = Client::online_expecting(
        &server,
        "alice",
        "tablet",
        &[
            &presence(&phone.jid, NONE),
            &format!(
                "<presence from='{}'><show>dnd</show></presence>",
                laptop.jid
            ),
        ],
    );
    for c in [&mut phone, &mut laptop] {
        c.expect(&presence(&tablet.jid, NONE));
    }
    bob.sync();
    bob.close();
    let mut bob = Client::online(&server, "bob", "again");
    bob.sync();

    // The unblock: he gets the current presence of each of her resources again.
    let reply = phone.iq("type='set'", &command("unblock", &["bob@localhost"]));
    assert_matches(&reply, "<iq type='result'/>");
    bob.expect_unordered(&[
        &presence(&phone.jid, NONE),
        &format!(
            "<presence from='{}'><show>dnd</show></presence>",
            laptop.jid
        ),
        &presence(&tablet.jid, NONE),
    ]);
    bob.sync();
    // ...and her changes from now on.
    show(&mut phone, &mut laptop, "away");
    tablet.expect(&format!(
        "<presence from='{}'><show>away</show></presence>",
        phone.jid
    ));
    bob.expect(&format!(
        "<presence from='{}'><show>away</show></presence>",
        phone.jid
    ));
    bob.sync();
}

#[test]
fn blocking_withdraws_directed_presence_only_from_the_resource_that_sent_it() {
    let server = server();
    let (mut phone, mut laptop) = alice_twice(&server);
    let mut carol = Client::online(&server, "carol", "home");
    // carol is no contact of alice's: she sees the phone only, by directed presence
    // (RFC 6121 §4.6), and nothing of the laptop.
    phone.send("<presence to='carol@localhost'><show>chat</show></presence>");
    carol.expect(&format!(
        "<presence from='{}'><show>chat</show></presence>",
        phone.jid
    ));

    // The block: carol is told that the phone went away. Of the laptop she never knew.
    let reply = phone.iq("type='set'", &command("block", &["carol@localhost"]));
    assert_matches(&reply, "<iq type='result'/>");
    carol.expect(&presence(&phone.jid, "unavailable"));
    carol.sync();

    // The unblock: the phone's presence again, and still nothing of the laptop, whose 'dnd'
    // was never hers to see.
    show(&mut laptop, &mut phone, "dnd");
    let reply = phone.iq("type='set'", &command("unblock", &["carol@localhost"]));
    assert_matches(&reply, "<iq type='result'/>");
    carol.expect(&presence(&phone.jid, NONE));
    carol.sync();
}

#[test]
fn the_block_list_survives_a_restart() {
    let mut server = server();
    let mut alice = listing(&server, "alice", "phone", &[]);
    set(
        &mut alice,
        "block",
        &["bob@localhost", "spam.example"],
        true,
    );
    alice.sync();
    drop(alice);
    server.restart();

    let mut alice = Client::online(&server, "alice", "phone");
    assert_eq!(
        blocklist(&mut alice),
        sorted(&["bob@localhost", "spam.example"])
    );
    let mut bob = Client::online(&server, "bob", "home");
    let id = bob.send_message("alice@localhost", "chat", "after the restart");
    bob.expect(&unavailable_from("message", &id, "alice@localhost"));
    alice.sync();
}

#[test]
fn items_match_full_jids_bare_jids_domain_resources_and_domains() {
    let server = server();
    let mut alice = Client::online(&server, "alice", "phone");
    set(
        &mut alice,
        "block",
        &["Carol@LOCALHOST/evil", "localhost/spam", "spam.example"],
        false,
    );
    // Stored as JIDs are compared: localpart and domain in lower case, the resource as is.
    assert_eq!(
        blocklist(&mut alice),
        sorted(&["carol@localhost/evil", "localhost/spam", "spam.example"])
    );

    // A full JID: that resource only.
    let mut evil = Client::user(&server, "carol", "evil");
    let mut good = Client::user(&server, "carol", "good");
    let id = evil.send_message("alice@localhost", "chat", "from evil");
    evil.expect(&unavailable_from("message", &id, "alice@localhost"));
    good.send_message("alice@localhost", "chat", "from good");
    alice.expect(&chat(&good.jid, "from good"));

    // A domain with a resource: that resource of every account at the domain.
    let mut spam = Client::user(&server, "bob", "spam");
    let mut home = Client::user(&server, "bob", "home");
    let id = spam.send_message("alice@localhost", "chat", "from spam");
    spam.expect(&unavailable_from("message", &id, "alice@localhost"));
    home.send_message("alice@localhost", "chat", "from home");
    alice.expect(&chat(&home.jid, "from home"));
    // ...but never her own account: her resource called 'spam' still writes to her phone.
    let mut own = Client::user(&server, "alice", "spam");
    own.send_message(&alice.jid, "chat", "note to self");
    alice.expect(&chat(&own.jid, "note to self"));

    // A domain: the domain itself, every address at it and at its subdomains, nothing else.
    for to in [
        "spam.example",
        "someone@spam.example",
        "someone@spam.example/res",
        "someone@chat.spam.example",
    ] {
        let id = alice.send_message(to, "chat", "blocked?");
        alice.expect(&blocked("message", &id));
    }
    for to in ["someone@notspam.example", "someone@spam.example.org"] {
        let id = alice.send_message(to, "chat", "not blocked");
        alice.expect(&stanza_error(
            "message",
            &id,
            "cancel",
            "remote-server-not-found",
        ));
    }
    alice.sync();
    for c in [&mut evil, &mut good, &mut spam, &mut home, &mut own] {
        c.sync();
    }
}

#[test]
fn a_flood_of_items_is_refused_whole_and_does_not_stall_the_server() {
    // The default limits: 1000 items per list, 256 KiB per stanza.
    let server = server();
    let mut alice = Client::online(&server, "alice", "phone");
    let mut bob = Client::online(&server, "bob", "home");
    let many =
        |n: usize, tag: &str| -> Vec<String> { (0..n).map(|i| format!("{tag}{i}@x")).collect() };

    // 2,000 in one command: policy-violation, and none of them blocked, bob included.
    let mut flood = many(1999, "n");
    flood.push("bob@localhost".into());
    let jids: Vec<&str> = flood.iter().map(String::as_str).collect();
    let id = alice.send_iq("type='set'", &command("block", &jids));
    alice.expect(&stanza_error("iq", &id, "modify", "policy-violation"));
    bob.send_message("alice@localhost", "chat", "still here");
    alice.expect(&chat(&bob.jid, "still here"));

    // Exactly the limit is accepted; one more is not.
    let full = many(1000, "m");
    let jids: Vec<&str> = full.iter().map(String::as_str).collect();
    set(&mut alice, "block", &jids, false);
    let id = alice.send_iq("type='set'", &command("block", &["bob@localhost"]));
    alice.expect(&stanza_error("iq", &id, "modify", "policy-violation"));
    set(&mut alice, "unblock", &[], false);

    // 10,000 unknown JIDs to unblock: answered, while bob's ping is answered too.
    let unknown = many(10_000, "u");
    let jids: Vec<&str> = unknown.iter().map(String::as_str).collect();
    let id = alice.send_iq("type='set'", &command("unblock", &jids));
    bob.sync();
    alice.expect(&format!("<iq type='result' id='{id}'/>"));
    assert!(blocklist(&mut alice).is_empty());
    bob.send_message("alice@localhost", "chat", "after the flood");
    alice.expect(&chat(&bob.jid, "after the flood"));
    crate::harness::assert_server_ok(&server, "carol");
}

#[test]
fn removing_the_account_removes_its_block_list() {
    let server = server();
    let mut alice = listing(&server, "alice", "phone", &[]);
    set(&mut alice, "block", &["bob@localhost"], true);
    alice.close();
    let out = server.cli(&["user", "remove", "alice@localhost"], "");
    assert!(
        out.status.success(),
        "`user remove` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.add_user(&format!("alice@{DOMAIN}"), PASSWORD);

    // A new account of the same name starts with an empty list: bob reaches her.
    let mut alice = listing(&server, "alice", "phone", &[]);
    alice.send("<presence/>");
    alice.expect(&presence(&alice.jid.clone(), NONE));
    let mut bob = Client::online(&server, "bob", "home");
    bob.send_message("alice@localhost", "chat", "hello, new alice");
    alice.expect(&chat(&bob.jid, "hello, new alice"));
    bob.sync();
}

#[test]
fn a_subscription_request_waiting_from_before_the_block_is_not_delivered_after_it() {
    let server = server();
    // alice is connected but not available yet: bob's subscription request waits for her
    // initial presence (RFC 6121 §3.1.3).
    let mut alice = Client::user(&server, "alice", "phone");
    let mut bob = Client::online(&server, "bob", "home");
    bob.send("<presence to='alice@localhost' type='subscribe'/>");
    bob.expect(&format!(
        "<iq type='set'><query xmlns='{}'><item jid='alice@localhost' ask='subscribe'/>\
         </query></iq>",
        ns::ROSTER
    ));
    bob.sync();

    // Once she blocked him, nothing of his is delivered to her (§3.3), presence "including
    // subscriptions": her initial presence brings back her own presence only.
    set(&mut alice, "block", &["bob@localhost"], false);
    alice.send("<presence/>");
    alice.expect(&presence(&alice.jid.clone(), NONE));
    alice.sync();
}

#[test]
fn a_message_kept_offline_from_before_the_block_is_not_delivered_after_it() {
    let server = server();
    let mut bob = Client::online(&server, "bob", "home");
    bob.send_message("alice@localhost", "chat", "kept before the block");
    bob.sync();

    // alice blocks bob before she is available: his message, kept for her, is not delivered
    // at her initial presence (§3.3: nothing from him once he is blocked).
    let mut alice = Client::user(&server, "alice", "phone");
    set(&mut alice, "block", &["bob@localhost"], false);
    alice.send("<presence/>");
    alice.expect(&presence(&alice.jid.clone(), NONE));
    alice.sync();
}

#[test]
fn a_resource_that_replaced_one_that_asked_for_the_list_gets_no_push_until_it_asks() {
    let server = server();
    let mut laptop = Client::user(&server, "alice", "laptop");
    let mut old = listing(&server, "alice", "phone", &[]);
    // The phone logs in again with the same resource and replaces its old session, which
    // had asked for the list (RFC 6120 §7.7.2.2).
    let mut phone = Client::user(&server, "alice", "phone");
    old.expect_stream_error("conflict");

    // The new session never asked: a block from the laptop pushes nothing to it (§3.3:
    // pushes go to the resources that have requested the block list).
    set(&mut laptop, "block", &["bob@localhost"], false);
    phone.sync();
    laptop.sync();
}
