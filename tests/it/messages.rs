//! Routing (RFC 6121 §8.5, RFC 6120 §8): a message to a bare JID (the highest-priority
//! resource), to a full JID, to an unknown local user, to another domain (no server-to-server
//! here); an iq between two clients; and no error in reply to an error.

use crate::harness::{Client, DOMAIN, TestServer, ns, stanza_error};

fn server() -> TestServer {
    let server = TestServer::start();
    server.add_users(&["alice", "bob"]);
    server
}

/// bob online twice, `high` with priority 5 and `low` with priority 1, with all presence
/// exchanged between them.
fn bob_twice(server: &TestServer) -> (Client, Client) {
    let mut high = Client::user(server, "bob", "high");
    high.send("<presence><priority>5</priority></presence>");
    high.settle();
    let mut low = Client::user(server, "bob", "low");
    low.send("<presence><priority>1</priority></presence>");
    low.settle();
    high.settle();
    (high, low)
}

/// A pattern for the chat message with `id` and `body` from `from` to `to`.
fn chat(from: &str, to: &str, id: &str, body: &str) -> String {
    format!("<message from='{from}' to='{to}' type='chat' id='{id}'><body>{body}</body></message>")
}

#[test]
fn chat_to_a_bare_jid_reaches_the_highest_priority() {
    let server = server();
    let (mut high, mut low) = bob_twice(&server);
    let mut alice = Client::user(&server, "alice", "home");
    let id = alice.send_message("bob@localhost", "chat", "hello");
    high.expect(&chat(&alice.jid, "bob@localhost", &id, "hello"));
    low.sync();
    alice.sync();
}

#[test]
fn chat_to_a_full_jid_reaches_that_resource() {
    let server = server();
    let (mut high, mut low) = bob_twice(&server);
    let mut alice = Client::user(&server, "alice", "home");
    let to = low.jid.clone();
    let id = alice.send_message(&to, "chat", "just you");
    low.expect(&chat(&alice.jid, &to, &id, "just you"));
    high.sync();
    alice.sync();
}

/// alice sends a chat message to `to` and gets it back as an error with `condition`.
#[track_caller]
fn bounces(alice: &mut Client, to: &str, condition: &str) {
    let id = alice.send_message(to, "chat", "anyone there?");
    alice.expect(&stanza_error("message", &id, "cancel", condition));
}

#[test]
fn unknown_local_user_is_service_unavailable() {
    let server = server();
    let mut alice = Client::user(&server, "alice", "home");
    bounces(&mut alice, "nobody@localhost", "service-unavailable");
    let ping = format!("<ping xmlns='{}'/>", ns::PING);
    let id = alice.send_iq(&format!("type='get' to='nobody@{DOMAIN}'"), &ping);
    alice.expect(&stanza_error("iq", &id, "cancel", "service-unavailable"));
}

#[test]
fn another_domain_is_remote_server_not_found() {
    let server = server();
    let mut alice = Client::user(&server, "alice", "home");
    bounces(&mut alice, "someone@example.org", "remote-server-not-found");
    alice.sync();
}

#[test]
fn iq_to_a_full_jid_is_routed_both_ways() {
    let server = server();
    let mut alice = Client::user(&server, "alice", "home");
    let mut bob = Client::user(&server, "bob", "home");
    let ping = format!("<ping xmlns='{}'/>", ns::PING);
    let id = alice.send_iq(&format!("type='get' to='{}'", bob.jid), &ping);
    let asked = bob.expect(&format!(
        "<iq type='get' id='{id}' from='{}'>{ping}</iq>",
        alice.jid
    ));
    assert_eq!(asked.attr("to"), Some(bob.jid.as_str()));
    bob.send(&format!("<iq type='result' id='{id}' to='{}'/>", alice.jid));
    alice.expect(&format!("<iq type='result' id='{id}' from='{}'/>", bob.jid));
}

#[test]
fn errors_are_never_answered_with_errors() {
    let server = server();
    let mut alice = Client::user(&server, "alice", "home");
    // RFC 6120 §8.3.1: no error in reply to an error, or two servers could bounce forever.
    alice.send("<message to='nobody@localhost' type='error' id='e1'><body>x</body></message>");
    alice.send(&format!("<iq to='nobody@{DOMAIN}' type='error' id='e2'/>"));
    alice.send(&format!("<iq to='{DOMAIN}' type='result' id='e3'/>"));
    alice.sync();
}
