//! Offline messages (XEP-0160, RFC 6121 §8.5.2.1.1): stored for an account with no available
//! resource, delivered with a XEP-0203 delay after initial presence, once; kept across a
//! restart; bounded by a quota; headlines are not stored.

use crate::harness::{Client, Element, NONE, TestServer, ns, stanza_error};

fn server_with(extra: &str) -> TestServer {
    let server = TestServer::start_with(extra);
    server.add_users(&["alice", "bob"]);
    server
}

/// bob logs in, checks that nothing arrives before initial presence, sends it, and expects his
/// own presence plus exactly these offline message bodies, in order, each with a delay stamp.
#[track_caller]
fn bob_comes_online(server: &TestServer, resource: &str, bodies: &[&str]) -> Client {
    let mut bob = Client::user(server, "bob", resource);
    bob.sync();
    bob.send("<presence/>");
    let got: Vec<Element> = (0..=bodies.len()).map(|_| bob.recv()).collect();
    let own = format!("<presence from='{}' type='{NONE}'/>", bob.jid);
    let presences = got
        .iter()
        .filter(|el| el.matches(&crate::harness::pattern(&own)));
    assert_eq!(presences.count(), 1, "own presence once among {got:?}");
    let messages: Vec<&Element> = got.iter().filter(|el| el.name == "message").collect();
    let delayed = format!(
        "<message from='alice@localhost/home' to='bob@localhost' type='chat'>\
         <delay xmlns='{}' from='localhost' stamp='{{any}}'/></message>",
        ns::DELAY
    );
    for m in &messages {
        crate::harness::assert_matches(m, &delayed);
        let stamp = m.get("delay", ns::DELAY).attr("stamp").unwrap_or_default();
        assert!(
            stamp.len() >= 20 && stamp.as_bytes()[10] == b'T' && stamp.ends_with('Z'),
            "XEP-0082 UTC stamp: {stamp}"
        );
    }
    let got_bodies: Vec<&str> = messages
        .iter()
        .map(|m| m.get("body", ns::CLIENT).text.as_str())
        .collect();
    assert_eq!(got_bodies, bodies, "offline messages, in the order sent");
    bob.sync();
    bob
}

/// alice sends chat messages to offline bob and gets no error back.
fn alice_leaves(alice: &mut Client, bodies: &[&str]) {
    for body in bodies {
        alice.send_message("bob@localhost", "chat", body);
    }
    alice.sync();
}

#[test]
fn stored_then_delivered_once_with_a_delay() {
    let server = server_with("");
    let mut alice = Client::user(&server, "alice", "home");
    alice_leaves(&mut alice, &["while you were out", "and another"]);
    bob_comes_online(&server, "home", &["while you were out", "and another"]).close();
    bob_comes_online(&server, "again", &[]);
}

#[test]
fn stored_messages_survive_a_restart() {
    let mut server = server_with("");
    let mut alice = Client::user(&server, "alice", "home");
    alice_leaves(&mut alice, &["kept on disk"]);
    drop(alice);
    server.restart();
    bob_comes_online(&server, "home", &["kept on disk"]);
}

#[test]
fn quota_refuses_with_resource_constraint() {
    let server = server_with("[modules.offline]\nmax_per_user = 2\n");
    let mut alice = Client::user(&server, "alice", "home");
    alice_leaves(&mut alice, &["one", "two"]);
    let id = alice.send_message("bob@localhost", "chat", "three");
    alice.expect(&stanza_error("message", &id, "wait", "resource-constraint"));
    bob_comes_online(&server, "home", &["one", "two"]);
}

#[test]
fn headlines_are_not_stored() {
    let server = server_with("");
    let mut alice = Client::user(&server, "alice", "home");
    alice.send_message("bob@localhost", "headline", "news flash");
    alice.sync();
    bob_comes_online(&server, "home", &[]);
}

#[test]
fn messages_stored_a_moment_before_initial_presence_are_all_delivered() {
    // Storing does not wait for the disk; initial presence must still see every message
    // stored before it, not leave the newest ones for the next login.
    let server = server_with("");
    let mut alice = Client::user(&server, "alice", "home");
    let mut bob = Client::user(&server, "bob", "phone");
    bob.sync();
    let bodies: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    for b in &bodies {
        alice.send_message("bob@localhost", "chat", b);
    }
    alice.sync();
    bob.send("<presence/>");
    let got: Vec<String> = bob
        .messages_until_sync()
        .iter()
        .map(|m| m.get("body", ns::CLIENT).text.clone())
        .collect();
    assert_eq!(
        got, bodies,
        "every stored message, in order, at this initial presence"
    );
}

/// Issue 8, finding 9: one user could fill another's offline storage with 256 KB stanzas that
/// all load at once at login. Offline storage is bounded in bytes too; delivering frees it.
#[test]
fn quota_in_bytes_refuses_with_resource_constraint() {
    let server = server_with(
        "[modules.offline]\nmax_bytes_per_user = 1000000\n[limits]\nbytes_per_sec = 104857600\n",
    );
    let mut alice = Client::user(&server, "alice", "home");
    let big: Vec<String> = (0..4)
        .map(|i| format!("{i} {}", "x".repeat(240_000)))
        .collect();
    let big: Vec<&str> = big.iter().map(String::as_str).collect();
    alice_leaves(&mut alice, &big);
    let id = alice.send_message("bob@localhost", "chat", &"y".repeat(240_000));
    alice.expect(&stanza_error("message", &id, "wait", "resource-constraint"));
    bob_comes_online(&server, "home", &big).close();
    server.wait_for_log(
        "bob@localhost/home disconnected",
        1,
        crate::harness::TIMEOUT,
    );
    // Delivered, so gone: there is room again.
    alice_leaves(&mut alice, &["small"]);
    bob_comes_online(&server, "again", &["small"]);
}
