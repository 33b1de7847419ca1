//! Durability: a message the server has acknowledged (XEP-0198 `<a/>`) survives `kill -9` of
//! the server at any moment, and nothing is delivered twice after the restart.

use crate::harness::{Client, TestServer, ns};

const SM: &str = "urn:xmpp:sm:3";

/// alice enables stream management, sends numbered chat messages to bob in bursts with an
/// ack request after each until at least 100 are acknowledged, then 50 more that the server
/// has not acknowledged. Returns (sent, acknowledged).
fn send_until_acked(alice: &mut Client) -> (u32, u32) {
    alice.send(&format!("<enable xmlns='{SM}'/>"));
    alice.expect(&format!("<enabled xmlns='{SM}'/>"));
    let send = |alice: &mut Client, n: u32| {
        alice.send(&format!(
            "<message to='bob@localhost' type='chat' id='m{n}'><body>{n}</body></message>"
        ));
    };
    let (mut sent, mut acked) = (0u32, 0u32);
    while acked < 100 {
        for _ in 0..25 {
            send(alice, sent);
            sent += 1;
        }
        alice.send(&format!("<r xmlns='{SM}'/>"));
        let a = alice.expect(&format!("<a xmlns='{SM}' h='{{any}}'/>"));
        acked = a
            .attr("h")
            .and_then(|h| h.parse().ok())
            .expect("a numeric h");
    }
    for _ in 0..50 {
        send(alice, sent);
        sent += 1;
    }
    (sent, acked)
}

#[test]
fn acknowledged_messages_survive_kill_9_exactly_once() {
    let mut server = TestServer::start_with(
        "[modules.offline]\nmax_per_user = 5000\n[limits]\nqueue_len = 6000\n[stream_management]\nack_every = 100000\n",
    );
    server.add_users(&["alice", "bob"]);
    let mut alice = Client::user(&server, "alice", "phone");
    // The last 50 are in flight, unacknowledged, when the server dies.
    let (sent, acked) = send_until_acked(&mut alice);
    server.kill_hard();
    drop(alice);
    server.restart();

    let mut bob = Client::user(&server, "bob", "pc");
    bob.send("<presence/>");
    let got: Vec<u32> = bob
        .messages_until_sync()
        .iter()
        .map(|m| {
            m.get("body", ns::CLIENT)
                .text
                .parse()
                .expect("a numbered body")
        })
        .collect();
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

/// Bodies in `user`'s archive, oldest first, read in pages through XEP-0313 and XEP-0059.
fn archived_bodies(c: &mut Client) -> Vec<u32> {
    let mut bodies = Vec::new();
    let mut after = String::new();
    loop {
        let set = match after.is_empty() {
            true => "<set xmlns='http://jabber.org/protocol/rsm'><max>200</max></set>".to_owned(),
            false => format!(
                "<set xmlns='http://jabber.org/protocol/rsm'><max>200</max><after>{after}</after></set>"
            ),
        };
        let id = c.send_iq(
            "type='set'",
            &format!("<query xmlns='urn:xmpp:mam:2'>{set}</query>"),
        );
        loop {
            let el = c.recv();
            if el.is("iq", ns::CLIENT) && el.attr("id") == Some(id.as_str()) {
                let fin = el.get("fin", "urn:xmpp:mam:2");
                if fin.attr("complete") == Some("true") {
                    return bodies;
                }
                let last = fin
                    .get("set", "http://jabber.org/protocol/rsm")
                    .get("last", "http://jabber.org/protocol/rsm");
                after = last.text.clone();
                break;
            }
            let fwd = el
                .get("result", "urn:xmpp:mam:2")
                .get("forwarded", "urn:xmpp:forward:0");
            let body = &fwd.get("message", ns::CLIENT).get("body", ns::CLIENT).text;
            bodies.push(body.parse().expect("a numbered body"));
        }
    }
}

#[test]
fn acknowledged_messages_to_an_online_contact_are_archived_exactly_once() {
    let mut server = TestServer::start_with("[stream_management]\nack_every = 100000\n");
    server.add_users(&["alice", "bob"]);
    let mut alice = Client::user(&server, "alice", "phone");
    let bob = Client::online(&server, "bob", "pc");
    // Delivered to bob as they come, before the disk has them; then the server dies.
    let (sent, acked) = send_until_acked(&mut alice);
    server.kill_hard();
    drop((alice, bob));
    server.restart();
    for user in ["alice", "bob"] {
        let mut c = Client::user(&server, user, "tablet");
        let got = archived_bodies(&mut c);
        let mut unique = got.clone();
        unique.dedup();
        assert_eq!(unique, got, "{user}'s archive holds no message twice");
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "{user}'s archive is in order: {got:?}"
        );
        assert!(
            (0..acked).all(|n| got.contains(&n)),
            "{user}'s archive has every acknowledged message (0..{acked} of {sent}): {got:?}"
        );
    }
}

/// Whether the store at `path` opens without a full repair: it was closed cleanly, or its last
/// commit saved the allocator state. Otherwise redb walks the whole file, which on a large
/// archive is what a start or `hearth user list` would wait for.
fn opens_without_repair(path: &std::path::Path) -> bool {
    let opened = redb::Database::builder()
        .set_repair_callback(|session| session.abort())
        .open(path);
    match opened {
        Ok(_) => true,
        Err(redb::DatabaseError::RepairAborted) => false,
        Err(e) => panic!("cannot open {}: {e}", path.display()),
    }
}

#[test]
fn the_store_opens_without_a_full_repair_after_a_stop_or_a_crash() {
    let mut server = TestServer::start();
    server.add_users(&["alice", "bob"]);
    let mut alice = Client::user(&server, "alice", "phone");
    let _bob = Client::online(&server, "bob", "pc");
    alice.send_message("bob@localhost", "chat", "archived");
    // An archive query answers after every earlier archive write is durable.
    assert!(archived_bodies_raw(&mut alice) > 0);
    let store = server.data_dir().join("hearth.redb");
    let status = server.stop();
    assert!(status.success(), "hearth exited with {status} on SIGTERM");
    assert!(opens_without_repair(&store), "SIGTERM closes the store");
    // The attack: a crash leaves it unclosed. Every commit saved the allocator state (quick
    // repair), so the next open needs no walk of the file either, and goes on.
    server.restart();
    let _ = Client::user(&server, "alice", "phone");
    server.kill_hard();
    assert!(
        opens_without_repair(&store),
        "after kill -9 the store opens without a full repair"
    );
    server.restart();
    let mut alice = Client::user(&server, "alice", "phone");
    assert!(archived_bodies_raw(&mut alice) > 0, "the archive survived");
    assert!(server.stop().success());
    assert!(opens_without_repair(&store), "after a repair, too");
}

/// How many messages the archive holds (one page of at most 200).
fn archived_bodies_raw(c: &mut Client) -> usize {
    let id = c.send_iq(
        "type='set'",
        "<query xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><max>200</max></set></query>",
    );
    let mut n = 0;
    loop {
        let el = c.recv();
        if el.is("iq", ns::CLIENT) && el.attr("id") == Some(id.as_str()) {
            return n;
        }
        n += 1;
    }
}
