//! XEP-0352 client state indication: an inactive client is not woken for presence changes or
//! typing notifications; presence is coalesced to the latest per sender; everything held
//! arrives, in order, with the next message that has a body, or on `<active/>`.

use crate::harness::{Client, TestServer};
use std::time::Duration;

const CSI: &str = "urn:xmpp:csi:0";

fn pair() -> (TestServer, Client, Client) {
    let server = TestServer::start_with("");
    server.add_users(&["alice", "bob"]);
    let mut alice = Client::user(&server, "alice", "phone");
    let bob = Client::user(&server, "bob", "pc");
    assert!(
        alice.features.child("csi", CSI).is_some(),
        "csi is advertised after authentication"
    );
    alice.send(&format!("<inactive xmlns='{CSI}'/>"));
    (server, alice, bob)
}

fn directed(bob: &mut Client, to: &str, show: &str) {
    bob.send(&format!(
        "<presence to='{to}'><show>{show}</show></presence>"
    ));
}

#[test]
fn presence_is_held_and_coalesced_until_active() {
    let (_server, mut alice, mut bob) = pair();
    let to = alice.jid.clone();
    directed(&mut bob, &to, "away");
    directed(&mut bob, &to, "xa");
    directed(&mut bob, &to, "dnd");
    bob.sync();
    alice.expect_nothing(Duration::from_millis(300));
    alice.send(&format!("<active xmlns='{CSI}'/>"));
    alice.expect("<presence from='bob@localhost/pc'><show>dnd</show></presence>");
    alice.sync();
}

#[test]
fn a_message_with_a_body_flushes_what_was_held_in_order() {
    let (_server, mut alice, mut bob) = pair();
    let to = alice.jid.clone();
    let state = |s: &str| {
        format!(
            "<message to='{to}' type='chat'><{s} xmlns='http://jabber.org/protocol/chatstates'/></message>"
        )
    };
    bob.send(&state("composing"));
    directed(&mut bob, &to, "away");
    bob.send(&state("paused"));
    bob.sync();
    alice.expect_nothing(Duration::from_millis(300));
    bob.send(&format!(
        "<message to='{to}' type='chat'><body>hello</body></message>"
    ));
    alice.expect("<message><composing xmlns='http://jabber.org/protocol/chatstates'/></message>");
    alice.expect("<presence from='bob@localhost/pc'/>");
    alice.expect("<message><paused xmlns='http://jabber.org/protocol/chatstates'/></message>");
    alice.expect("<message><body>hello</body></message>");
    alice.sync();
}
