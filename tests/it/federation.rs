//! Federation between two real servers: `a.test` and `b.test`, each on its own loopback
//! address (all of 127/8 is loopback on Linux) with port 5269, each told where the other is
//! by `federation.hosts`. Messages, presence subscriptions and iqs cross; dialback with the
//! self-signed certificates each makes; SASL EXTERNAL with certificates of a shared test
//! authority; refusal when valid certificates are required; bounces when the other server is
//! not there or does not answer; and what a server that misbehaves gets.

use crate::harness::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// Two loopback addresses no other test of this run uses (and, by the process id, probably
/// no other run either).
fn addresses() -> (IpAddr, IpAddr) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let (b1, b2) = (16 + (pid % 200) as u8, (pid / 200 % 250) as u8);
    let b3 = (n % 120) as u8 * 2;
    (
        IpAddr::V4(Ipv4Addr::new(127, b1, b2, b3 + 2)),
        IpAddr::V4(Ipv4Addr::new(127, b1, b2, b3 + 3)),
    )
}

pub struct Pair {
    pub a: TestServer,
    pub b: TestServer,
}

/// `[federation]` of a server at `me` that knows `other` at `there`, with `more` lines.
fn federation(me: IpAddr, other: &str, there: IpAddr, more: &str) -> String {
    let enabled = match more.contains("enabled") {
        true => "",
        false => "enabled = true\n",
    };
    format!(
        "[federation]\n{enabled}listen = [\"{me}:5269\"]\n\
         hosts = {{ \"{other}\" = \"{there}:5269\" }}\nconnect_timeout_secs = 10\n{more}\n"
    )
}

/// `a.test` and `b.test` federating, with users alice@a.test and bob@b.test; `fa` and `fb` go
/// into their `[federation]` sections, `extra_a` and `extra_b` after them.
pub fn servers(fa: &str, fb: &str, extra_a: &str, extra_b: &str) -> Pair {
    let (ia, ib) = addresses();
    let a = TestServer::start_domain(
        "a.test",
        &format!("{}{extra_a}", federation(ia, "b.test", ib, fa)),
    );
    let b = TestServer::start_domain(
        "b.test",
        &format!("{}{extra_b}", federation(ib, "a.test", ia, fb)),
    );
    a.add_users(&["alice"]);
    b.add_users(&["bob"]);
    Pair { a, b }
}

#[test]
fn messages_presence_and_iqs_cross_with_dialback() {
    let p = servers("", "", "", "");
    let mut alice = Client::online(&p.a, "alice", "phone");
    let mut bob = Client::online(&p.b, "bob", "laptop");
    alice.send_message("bob@b.test", "chat", "hello from a");
    let got = bob.expect(
        "<message from='alice@a.test/phone' to='bob@b.test' type='chat'><body>hello from a</body></message>",
    );
    assert!(got.attr("id").is_some());
    bob.send_message("alice@a.test/phone", "chat", "hello from b");
    alice.expect(
        "<message from='bob@b.test/laptop' type='chat'><body>hello from b</body></message>",
    );
    // Both servers accepted the other by dialback: their certificates are self-signed.
    p.a.wait_for_log("b.test accepted a.test (dialback)", 1, TIMEOUT);
    p.b.wait_for_log("a.test accepted b.test (dialback)", 1, TIMEOUT);

    // An iq to the other server, and one to a client there, with their answers.
    let r = alice.iq(
        "type='get' to='b.test'",
        "<query xmlns='jabber:iq:version'/>",
    );
    assert_matches(
        &r,
        "<iq type='result' from='b.test'><query xmlns='jabber:iq:version'><name>hearth</name></query></iq>",
    );
    let id = alice.send_iq(
        "type='get' to='bob@b.test/laptop'",
        "<ping xmlns='urn:xmpp:ping'/>",
    );
    let ping =
        bob.expect("<iq type='get' from='alice@a.test/phone'><ping xmlns='urn:xmpp:ping'/></iq>");
    bob.send(&format!(
        "<iq type='result' id='{}' to='alice@a.test/phone'/>",
        ping.attr("id").unwrap()
    ));
    alice.expect(&format!(
        "<iq type='result' id='{id}' from='bob@b.test/laptop'/>"
    ));
    // A request to a resource that is not there is answered by its server.
    let r = alice.iq(
        "type='get' to='bob@b.test/gone'",
        "<ping xmlns='urn:xmpp:ping'/>",
    );
    assert_matches(
        &r,
        &stanza_error("iq", ANY, "cancel", "service-unavailable"),
    );

    // A presence subscription, approved: alice then sees bob's presence.
    alice.send("<presence type='subscribe' to='bob@b.test'/>");
    alice.expect("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='bob@b.test' ask='subscribe'/></query></iq>");
    bob.expect("<presence type='subscribe' from='alice@a.test'/>");
    bob.send("<presence type='subscribed' to='alice@a.test'/>");
    bob.expect("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='alice@a.test' subscription='from'/></query></iq>");
    alice.expect_unordered(&[
        "<iq type='set'><query xmlns='jabber:iq:roster'><item jid='bob@b.test' subscription='to'/></query></iq>",
        "<presence type='subscribed' from='bob@b.test'/>",
        "<presence from='bob@b.test/laptop'/>",
    ]);
    // bob goes away: alice hears of it.
    bob.send("<presence type='unavailable'/>");
    alice.expect("<presence type='unavailable' from='bob@b.test/laptop'/>");
}

#[test]
fn a_message_for_someone_offline_there_is_kept_there() {
    let p = servers("", "", "", "");
    let mut alice = Client::online(&p.a, "alice", "phone");
    alice.send_message("bob@b.test", "chat", "while you were out");
    // Once a's link carried it, b stored it: bob gets it on login.
    alice.send_message("nobody@b.test", "chat", "x");
    alice.expect(&stanza_error(
        "message",
        ANY,
        "cancel",
        "service-unavailable",
    ));
    Client::online_expecting(
        &p.b,
        "bob",
        "laptop",
        &[
            "<message from='alice@a.test/phone'><body>while you were out</body><delay xmlns='urn:xmpp:delay'/></message>",
        ],
    );
}

#[test]
fn valid_certificates_required_refuse_self_signed_ones() {
    // b requires them: a's dialback is refused.
    let p = servers("", "require_valid_certificates = true", "", "");
    let mut alice = Client::online(&p.a, "alice", "phone");
    let id = alice.send_message("bob@b.test", "chat", "hi");
    alice.expect(&format!(
        "<message type='error' id='{id}' from='bob@b.test'><error><remote-server-not-found xmlns='{}'/></error></message>",
        ns::STANZAS
    ));
    p.b.wait_for_log("federation.require_valid_certificates is on", 1, TIMEOUT);
    // a requires them: it does not even go on after seeing b's certificate.
    let p = servers("require_valid_certificates = true", "", "", "");
    let mut alice = Client::online(&p.a, "alice", "phone");
    let id = alice.send_message("bob@b.test", "chat", "hi");
    alice.expect(&format!(
        "<message type='error' id='{id}'><error><remote-server-not-found xmlns='{}'/></error></message>",
        ns::STANZAS
    ));
    p.a.wait_for_log("federation.require_valid_certificates is on", 1, TIMEOUT);
}

#[test]
fn without_federation_nothing_leaves() {
    let a = TestServer::start_domain("a.test", "");
    a.add_users(&["alice"]);
    let mut alice = Client::online(&a, "alice", "phone");
    let id = alice.send_message("bob@b.test", "chat", "hi");
    alice.expect(&format!(
        "<message type='error' id='{id}'><error><remote-server-not-found xmlns='{}'/></error></message>",
        ns::STANZAS
    ));
    alice.send("<presence type='subscribe' to='bob@b.test'/>");
    alice.expect(&stanza_error(
        "presence",
        NONE,
        "cancel",
        "remote-server-not-found",
    ));
    assert!(a.s2s.is_none(), "no listener for other servers");
}

/// A server that is not there: the connection is refused at once. One that accepts the
/// connection and says nothing: the stanzas wait, within their bound, until the connect
/// timeout, then go back to their senders.
#[test]
fn stanzas_for_a_server_that_is_down_go_back() {
    let (ia, ib) = addresses();
    let silent = TcpListener::bind(SocketAddr::new(ib, 0)).unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let a = TestServer::start_domain(
        "a.test",
        &format!(
            "[federation]\nenabled = true\nlisten = [\"{ia}:5269\"]\n\
             hosts = {{ \"down.test\" = \"{ib}:5269\", \"silent.test\" = \"{silent_addr}\" }}\n\
             connect_timeout_secs = 2\nqueue_bytes = 20000\n\
             [limits]\nmax_stanza_bytes = 10000\n"
        ),
    );
    a.add_users(&["alice"]);
    let mut alice = Client::online(&a, "alice", "phone");
    let id = alice.send_message("bob@down.test", "chat", "hi");
    alice.expect(&format!(
        "<message type='error' id='{id}' from='bob@down.test'><error type='cancel'><remote-server-not-found xmlns='{}'/></error></message>",
        ns::STANZAS
    ));
    // Ten messages of 3000 bytes to the silent one: what does not fit its queue is refused at
    // once; the rest waits, then times out.
    let body = "x".repeat(3000);
    let ids: Vec<String> = (0..10)
        .map(|_| alice.send_message("bob@silent.test", "chat", &body))
        .collect();
    let mut refused = Vec::new();
    let mut timed_out = Vec::new();
    for _ in 0..10 {
        let el = alice.recv_skipping_presence();
        let id = el.attr("id").unwrap().to_owned();
        if el
            .get("error", ns::CLIENT)
            .child("resource-constraint", ns::STANZAS)
            .is_some()
        {
            refused.push(id);
        } else {
            assert_matches(
                &el,
                &stanza_error("message", ANY, "wait", "remote-server-timeout"),
            );
            timed_out.push(id);
        }
    }
    assert!(
        !refused.is_empty() && !timed_out.is_empty(),
        "{refused:?} {timed_out:?}"
    );
    assert!(
        timed_out.len() <= 6,
        "the queue held more than its bytes: {timed_out:?}"
    );
    let mut all: Vec<String> = refused.into_iter().chain(timed_out).collect();
    all.sort();
    let mut want = ids;
    want.sort();
    assert_eq!(all, want, "every message came back once");
    drop(silent);
    assert_server_ok(&a, "alice");
}

#[test]
fn check_says_what_federation_does() {
    let p = servers("enabled = false\npush_services = [\"b.test\"]", "", "", "");
    let out = p.a.cli(&["check"], "");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("federation off: talks only to the push services"),
        "{text}"
    );
    assert!(text.contains("push services: b.test"), "{text}");
    let addr = p.a.s2s.expect("a listens for the push service");
    assert!(
        text.contains(&format!(
            "s2s {addr}: reachable: an XMPP server answers, and offers STARTTLS"
        )),
        "{text}"
    );
    let out = p.b.cli(&["check"], "");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("federation on: talks to every other server"),
        "{text}"
    );
    assert!(text.contains("push services: none"), "{text}");
}
