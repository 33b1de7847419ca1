//! Presence (RFC 6121 §3, §4): the subscription handshake with its roster pushes, mutual
//! subscription, cancellation, presence broadcast, contacts' presence at login, the unavailable
//! broadcast when a session ends, directed presence, and pre-approval (RFC 6121 §3.4).

use crate::harness::{Client, NONE, TestServer, ns};

fn server() -> TestServer {
    let server = TestServer::start();
    server.add_users(&["alice", "bob", "carol"]);
    server
}

/// A roster push pattern for `contact` with the item attributes `attrs`.
fn push(contact: &str, attrs: &str) -> String {
    format!(
        "<iq type='set'><query xmlns='{}'><item jid='{contact}' {attrs}/></query></iq>",
        ns::ROSTER
    )
}

/// Available presence (no type) from `jid`.
fn available(jid: &str) -> String {
    format!("<presence from='{jid}' type='{NONE}'/>")
}

/// Unavailable presence from `jid`.
fn unavailable(jid: &str) -> String {
    format!("<presence from='{jid}' type='unavailable'/>")
}

/// `user` asks for `contact`'s presence (RFC 6121 §3.1.1-2), its subscription being `was`.
#[track_caller]
fn request(user: &mut Client, contact: &Client, was: &str) {
    let to = contact.bare().to_owned();
    user.send(&format!("<presence to='{to}' type='subscribe'/>"));
    user.expect(&push(&to, &format!("subscription='{was}' ask='subscribe'")));
}

/// `user`'s side of an approval (RFC 6121 §3.1.6): the subscribed presence, the roster push with
/// `now` and no pending ask, and the contact's current presence, in any order.
#[track_caller]
fn approved(user: &mut Client, contact: &Client, now: &str) {
    let from = contact.bare();
    user.expect_unordered(&[
        &format!("<presence from='{from}' type='subscribed'/>"),
        &push(from, &format!("subscription='{now}' ask='{NONE}'")),
        &available(&contact.jid),
    ]);
}

/// The whole handshake: `user` subscribes to `contact`, who approves. `was` is the user's
/// subscription before; `user_now` and `contact_now` are the two roster states after.
#[track_caller]
fn subscribe(
    user: &mut Client,
    contact: &mut Client,
    was: &str,
    user_now: &str,
    contact_now: &str,
) {
    request(user, contact, was);
    let from = user.bare().to_owned();
    contact.expect(&format!("<presence from='{from}' type='subscribe'/>"));
    contact.send(&format!("<presence to='{from}' type='subscribed'/>"));
    contact.expect(&push(&from, &format!("subscription='{contact_now}'")));
    approved(user, contact, user_now);
}

/// alice and bob online, alice subscribed to bob's presence.
fn alice_follows_bob(server: &TestServer) -> (Client, Client) {
    let mut alice = Client::online(server, "alice", "home");
    let mut bob = Client::online(server, "bob", "home");
    subscribe(&mut alice, &mut bob, "none", "to", "from");
    (alice, bob)
}

#[test]
fn subscribe_and_approve() {
    let server = server();
    let (mut alice, mut bob) = alice_follows_bob(&server);
    bob.sync();

    // alice sees bob's presence changes; bob, with only a 'from' subscription, not alice's.
    bob.send("<presence><show>away</show></presence>");
    bob.expect(&available(&bob.jid.clone()));
    alice.expect(&format!(
        "<presence from='{}'><show>away</show></presence>",
        bob.jid
    ));
    alice.send("<presence><show>dnd</show></presence>");
    alice.expect(&available(&alice.jid.clone()));
    bob.sync();
}

#[test]
fn mutual_subscription() {
    let server = server();
    let (mut alice, mut bob) = alice_follows_bob(&server);
    subscribe(&mut bob, &mut alice, "from", "both", "both");
    alice.send("<presence><show>chat</show></presence>");
    alice.expect(&available(&alice.jid.clone()));
    bob.expect(&format!(
        "<presence from='{}'><show>chat</show></presence>",
        alice.jid
    ));
    for c in [&mut alice, &mut bob] {
        let roster = c.iq("type='get'", &format!("<query xmlns='{}'/>", ns::ROSTER));
        let item = roster.get("query", ns::ROSTER).children.first().cloned();
        assert_eq!(
            item.as_ref().and_then(|i| i.attr("subscription")),
            Some("both"),
            "{roster}"
        );
    }
}

#[test]
fn unavailable_is_broadcast_when_a_session_ends() {
    let server = server();
    let (mut alice, bob) = alice_follows_bob(&server);
    // A polite close.
    let gone = bob.jid.clone();
    bob.close();
    alice.expect(&unavailable(&gone));

    // An abrupt one: the TCP connection just drops.
    let bob = Client::online(&server, "bob", "phone");
    alice.expect(&available(&bob.jid));
    let gone = bob.jid.clone();
    drop(bob);
    alice.expect(&unavailable(&gone));
    alice.sync();
}

#[test]
fn directed_presence_and_its_unavailable() {
    let server = server();
    let mut alice = Client::online(&server, "alice", "home");
    let mut carol = Client::online(&server, "carol", "home");
    alice.send(&format!("<presence to='{}'/>", carol.jid));
    carol.expect(&available(&alice.jid));
    let gone = alice.jid.clone();
    alice.close();
    carol.expect(&unavailable(&gone));
    carol.sync();
}

#[test]
fn pre_approved_subscription_is_approved_at_once() {
    let server = server();
    let mut alice = Client::online(&server, "alice", "home");
    let mut bob = Client::online(&server, "bob", "home");
    alice.features.get("sub", ns::PRE_APPROVAL);

    alice.send("<presence to='bob@localhost' type='subscribed'/>");
    alice.expect(&push(
        "bob@localhost",
        "subscription='none' approved='true'",
    ));
    // A pre-approval is not delivered to the contact (RFC 6121 §3.4.2).
    bob.sync();

    request(&mut bob, &alice, "none");
    approved(&mut bob, &alice, "to");
    alice.expect(&push("bob@localhost", "subscription='from'"));
    // alice approved in advance, so she is not asked.
    alice.sync();
}

#[test]
fn contacts_presence_arrives_at_login() {
    let server = server();
    let (alice, mut bob) = alice_follows_bob(&server);
    alice.close();
    // The server probes bob for alice's new session (RFC 6121 §4.3) and hands her his presence.
    let mut alice = Client::online_expecting(&server, "alice", "phone", &[&available(&bob.jid)]);
    alice.sync();
    bob.sync();
}

#[test]
fn contact_cancels_the_subscription() {
    let server = server();
    let (mut alice, mut bob) = alice_follows_bob(&server);
    // RFC 6121 §3.2: bob revokes alice's subscription to his presence.
    bob.send("<presence to='alice@localhost' type='unsubscribed'/>");
    bob.expect(&push("alice@localhost", "subscription='none'"));
    alice.expect_unordered(&[
        "<presence from='bob@localhost' type='unsubscribed'/>",
        &push("bob@localhost", "subscription='none'"),
        &unavailable(&bob.jid),
    ]);
    // alice no longer sees bob's presence.
    bob.send("<presence><show>away</show></presence>");
    bob.expect(&available(&bob.jid.clone()));
    alice.sync();
}
