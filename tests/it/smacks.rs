//! XEP-0198 stream management against the real server: acknowledgements both ways, the
//! server's own ack requests, resumption after a dropped socket (every missed stanza once),
//! failed resumption, and what happens to unacknowledged stanzas when the window expires.

use crate::harness::{Client, TestServer};

const SM: &str = "urn:xmpp:sm:3";

fn server_with(extra: &str) -> TestServer {
    let server = TestServer::start_with(extra);
    server.add_users(&["alice", "bob"]);
    server
}

/// Enables resumable stream management; returns the resumption id.
fn enable(c: &mut Client) -> String {
    c.send(&format!("<enable xmlns='{SM}' resume='true'/>"));
    let enabled = c.expect(&format!(
        "<enabled xmlns='{SM}' id='{{any}}' resume='true' max='{{any}}'/>"
    ));
    enabled.attr("id").unwrap_or_default().to_owned()
}

fn chat(from: &mut Client, to: &str, body: &str) {
    from.send(&format!(
        "<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>"
    ));
}

fn expect_chat(c: &mut Client, body: &str) {
    c.expect(&format!(
        "<message type='chat' id='{body}'><body>{body}</body></message>"
    ));
}

#[test]
fn acks_are_counted_both_ways_and_the_server_asks_in_batches() {
    let server = server_with("[stream_management]\nack_every = 3\nack_delay_secs = 60\n");
    let mut alice = Client::user(&server, "alice", "phone");
    let mut bob = Client::user(&server, "bob", "pc");
    enable(&mut alice);
    alice.sync();
    alice.sync();
    // Two stanzas handled so far.
    alice.send(&format!("<r xmlns='{SM}'/>"));
    alice.expect(&format!("<a xmlns='{SM}' h='2'/>"));
    // Three stanzas (two ping results and a message) make the server ask, once.
    chat(&mut bob, &alice.jid, "m1");
    expect_chat(&mut alice, "m1");
    alice.expect(&format!("<r xmlns='{SM}'/>"));
    alice.send(&format!("<a xmlns='{SM}' h='3'/>"));
    alice.sync();
    // An h beyond what was sent ends the stream.
    alice.send(&format!("<a xmlns='{SM}' h='99'/>"));
    alice.expect_stream_error("undefined-condition");
}

/// XEP-0198 §4: `h` starts at zero when stream management is enabled. Stanzas a client sent
/// before (the roster, initial presence, as some clients do) are not counted: counting them
/// made the server acknowledge more than the client had sent since.
#[test]
fn h_counts_from_enable_not_from_bind() {
    let server = server_with("");
    let mut alice = Client::user(&server, "alice", "phone");
    alice.send("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>");
    alice.expect("<iq type='result' id='r1'/>");
    alice.sync();
    enable(&mut alice);
    alice.send(&format!("<r xmlns='{SM}'/>"));
    alice.expect(&format!("<a xmlns='{SM}' h='0'/>"));
    alice.sync();
    alice.send(&format!("<r xmlns='{SM}'/>"));
    alice.expect(&format!("<a xmlns='{SM}' h='1'/>"));
}

#[test]
fn resumption_delivers_every_missed_stanza_once() {
    let server = server_with("[stream_management]\nack_every = 100\nack_delay_secs = 60\n");
    let mut alice = Client::user(&server, "alice", "phone");
    let mut bob = Client::user(&server, "bob", "pc");
    let id = enable(&mut alice);
    chat(&mut bob, &alice.jid, "seen");
    expect_chat(&mut alice, "seen");
    let full = alice.jid.clone();
    // The socket drops without a stream close (a tunnel); bob goes on writing.
    drop(alice);
    chat(&mut bob, &full, "missed1");
    chat(&mut bob, &full, "missed2");
    bob.sync();
    // The phone comes back and resumes, saying it got one stanza.
    let mut alice = Client::connect_starttls(&server);
    alice.auth_scram("alice", crate::harness::PASSWORD, "SCRAM-SHA-256");
    alice.send(&format!("<resume xmlns='{SM}' previd='{id}' h='1'/>"));
    alice.expect(&format!("<resumed xmlns='{SM}' previd='{id}' h='0'/>"));
    alice.jid = full;
    expect_chat(&mut alice, "missed1");
    expect_chat(&mut alice, "missed2");
    alice.sync();
    // The resumed session is the same one: bob's next message arrives, and only once.
    chat(&mut bob, &alice.jid, "after");
    expect_chat(&mut alice, "after");
    alice.sync();
}

#[test]
fn failed_resumption_leaves_a_fresh_session_possible() {
    let server = server_with("");
    let mut alice = Client::user(&server, "alice", "phone");
    let id = enable(&mut alice);
    drop(alice);
    let mut c = Client::connect_starttls(&server);
    c.auth_scram("alice", crate::harness::PASSWORD, "SCRAM-SHA-256");
    c.send(&format!("<resume xmlns='{SM}' previd='no-such-id' h='0'/>"));
    c.expect(&format!(
        "<failed xmlns='{SM}'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    ));
    // A wrong h (more than was ever sent) is refused too.
    c.send(&format!("<resume xmlns='{SM}' previd='{id}' h='7'/>"));
    c.expect(&format!(
        "<failed xmlns='{SM}'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
    ));
    c.bind(Some("fresh"));
    c.sync();
}

#[test]
fn unacknowledged_stanzas_outlive_an_expired_window() {
    let server = server_with("[stream_management]\nresume_timeout_secs = 1\nack_every = 100\n");
    let mut alice = Client::online(&server, "alice", "phone");
    let mut bob = Client::user(&server, "bob", "pc");
    enable(&mut alice);
    let mut laptop = Client::online(&server, "alice", "laptop");
    alice.settle();
    chat(&mut bob, &alice.jid, "unacked");
    expect_chat(&mut alice, "unacked");
    // Never acknowledged, and the phone never comes back.
    drop(alice);
    // When the window closes, the message goes where a message to the bare JID would go.
    let got = laptop.recv_skipping_presence();
    crate::harness::assert_matches(
        &got,
        "<message type='chat' id='unacked'><body>unacked</body></message>",
    );
    laptop.settle();
}
