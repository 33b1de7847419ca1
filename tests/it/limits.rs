//! Bounds on what a client can make the server hold, each attacked in the shape it was found
//! in: many resources that never read, clients that stop reading or never acknowledge,
//! sessions that are away, long rosters, directed presence to thousands, floods. Each test
//! asserts the bounded outcome (a closed connection, a refused stanza, the server's memory
//! within a generous bound, another user still served) and that nothing acknowledged is lost
//! or multiplied.

use crate::harness::{Client, Element, RssWatch, TestServer, ns};
use std::collections::BTreeMap;
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// Counts the chat messages among `got` by id.
fn count_by_id(got: &[Element]) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for el in got.iter().filter(|e| e.is("message", ns::CLIENT)) {
        if let Some(id) = el.attr("id") {
            *n.entry(id.to_owned()).or_default() += 1;
        }
    }
    n
}

/// Asserts that `got` holds the messages `m0`..`m{n-1}`, each exactly once.
#[track_caller]
fn each_once(got: &[Element], n: usize) {
    let counts = count_by_id(got);
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let missing: Vec<String> = (0..n)
        .map(|i| format!("m{i}"))
        .filter(|id| !counts.contains_key(id))
        .collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
}

/// Issue 8, finding 1: an account binds 30 resources that never read; another of its
/// resources sends 100 chat messages of 100 KB to the bare JID; the 30 sockets close. Each
/// message was queued for all 30: it must end up stored once, and the copies must not
/// multiply on the way (they once doubled with every closed session, to 2.5 GB).
#[test]
fn thirty_resources_that_never_read_keep_each_message_once() {
    let server = TestServer::start_with("[limits]\nqueue_bytes = 33554432\n");
    server.add_users(&["bob"]);
    let mut sinks = Vec::new();
    for i in 0..30 {
        let mut c = Client::user(&server, "bob", &format!("r{i}"));
        // Unacknowledged stanzas are not delivered: the server knows these got nothing.
        c.enable_sm(false);
        c.send("<presence/>");
        sinks.push(c);
    }
    let watch = RssWatch::start(&server);
    let mut sender = Client::user(&server, "bob", "sender");
    let filler = "x".repeat(100_000);
    for i in 0..100 {
        sender.send(&format!(
            "<message to='bob@localhost' type='chat' id='m{i}'><body>{filler}</body></message>"
        ));
    }
    sender.sync();
    drop(sinks);
    server.wait_for_log(" disconnected", 30, Duration::from_secs(30));
    let mut bob = Client::user(&server, "bob", "back");
    bob.send("<presence/>");
    let got = bob.messages_until_sync();
    each_once(&got, 100);
    bob.sync();
    let peak = watch.peak();
    assert!(peak < 200 * MIB, "the server grew to {} MiB", peak / MIB);
}

/// Issue 8, finding 2: a client that stops reading. The server's writes to it stall; after
/// `write_timeout_secs` it is disconnected, while its sender is served all along, and what it
/// never acknowledged is stored offline, once.
#[test]
fn a_client_that_stops_reading_is_closed_and_its_messages_kept_once() {
    let server =
        TestServer::start_with("[limits]\nwrite_timeout_secs = 1\nqueue_bytes = 33554432\n");
    server.add_users(&["alice", "bob"]);
    let mut bob = Client::user(&server, "bob", "phone");
    bob.enable_sm(false);
    bob.send("<presence/>");
    bob.expect("<presence/>");
    // Bob reads nothing from here on. Ten megabytes fill every buffer on the way to him.
    let mut alice = Client::user(&server, "alice", "pc");
    let filler = "x".repeat(64_000);
    for i in 0..160 {
        alice.send(&format!(
            "<message to='bob@localhost' type='chat' id='m{i}'><body>{filler}</body></message>"
        ));
    }
    alice.sync();
    server.wait_for_log("nothing taken for 1s", 1, Duration::from_secs(10));
    server.wait_for_log(
        "bob@localhost/phone disconnected",
        1,
        Duration::from_secs(10),
    );
    alice.sync();
    drop(bob);
    let mut bob = Client::user(&server, "bob", "phone");
    bob.send("<presence/>");
    let got = bob.messages_until_sync();
    each_once(&got, 160);
}
