//! Durability: a message the server has acknowledged (XEP-0198 `<a/>`) survives `kill -9` of
//! the server at any moment, and nothing is delivered twice after the restart.

use crate::harness::{Client, TestServer, ns};

const SM: &str = "urn:xmpp:sm:3";

#[test]
fn acknowledged_messages_survive_kill_9_exactly_once() {
    let mut server = TestServer::start_with(
        "[modules.offline]\nmax_per_user = 5000\n[stream_management]\nack_every = 100000\n",
    );
    server.add_users(&["alice", "bob"]);
    let mut alice = Client::user(&server, "alice", "phone");
    alice.send(&format!("<enable xmlns='{SM}'/>"));
    alice.expect(&format!("<enabled xmlns='{SM}'/>"));
    let send = |alice: &mut Client, n: u32| {
        alice.send(&format!(
            "<message to='bob@localhost' type='chat' id='m{n}'><body>{n}</body></message>"
        ));
    };
    // Bursts with an ack request after each, until at least 100 are acknowledged.
    let (mut sent, mut acked) = (0u32, 0u32);
    while acked < 100 {
        for _ in 0..25 {
            send(&mut alice, sent);
            sent += 1;
        }
        alice.send(&format!("<r xmlns='{SM}'/>"));
        let a = alice.expect(&format!("<a xmlns='{SM}' h='{{any}}'/>"));
        acked = a
            .attr("h")
            .and_then(|h| h.parse().ok())
            .expect("a numeric h");
    }
    // More in flight, unacknowledged, when the server dies.
    for _ in 0..50 {
        send(&mut alice, sent);
        sent += 1;
    }
    server.kill_hard();
    drop(alice);
    server.restart();

    let mut bob = Client::user(&server, "bob", "pc");
    bob.send("<presence/>");
    let ping = bob.send_iq("type='get' to='localhost'", "<ping xmlns='urn:xmpp:ping'/>");
    let mut got = Vec::new();
    loop {
        let el = bob.recv();
        if el.is("iq", ns::CLIENT) && el.attr("id") == Some(ping.as_str()) {
            break;
        }
        if el.name == "message" {
            let body = el.get("body", ns::CLIENT).text.clone();
            got.push(body.parse::<u32>().expect("a numbered body"));
        }
    }
    let mut sorted = got.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), got.len(), "no message twice: {got:?}");
    assert_eq!(sorted, got, "in the order sent");
    assert!(
        (0..acked).all(|n| got.contains(&n)),
        "every acknowledged message (0..{acked}) delivered after the crash; got {} of {sent}: {got:?}",
        got.len()
    );
}
