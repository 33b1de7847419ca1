//! Logging in: STARTTLS and direct TLS (RFC 6120 §5, XEP-0368), SASL SCRAM with and without
//! channel binding and PLAIN (RFC 6120 §6, RFC 5802, RFC 9266, RFC 4616), resource binding and
//! its conflicts (RFC 6120 §7), the legacy session iq (RFC 3921 §3), throttling of failed logins
//! by source (which strangers cannot turn against an account's owner), the retry limit per
//! stream (RFC 6120 §6.4.5) with aborts counting, SCRAM answers that do not tell accounts
//! apart, the absolute login deadline, and plaintext smuggled in with STARTTLS.

use crate::harness::{
    Client, DOMAIN, Event, PASSWORD, TestServer, assert_matches, assert_sasl_failure, ns,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// A loopback address other than 127.0.0.1: another source, as far as the server can tell.
fn stranger(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// Fails `times` PLAIN logins as `user` from `source`, on as few streams as the per-stream
/// limit of `per_stream` allows. Each must be answered `condition`.
#[track_caller]
fn fail_plain(server: &TestServer, source: IpAddr, user: &str, times: u32, per_stream: u32) {
    let mut left = times;
    while left > 0 {
        let mut c = Client::connect_starttls_from(server, source);
        let n = left.min(per_stream);
        for _ in 0..n {
            assert_sasl_failure(c.try_auth_plain(user, "wrong"), "not-authorized");
        }
        if n == per_stream {
            c.expect_stream_error("policy-violation");
        }
        left -= n;
    }
}

const MECHANISMS: [&str; 5] = [
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-1",
    "PLAIN",
];

fn server_with_alice() -> TestServer {
    let server = TestServer::start();
    server.add_users(&["alice"]);
    server
}

/// Asserts the features of a TLS stream before SASL: every mechanism, and no STARTTLS again.
#[track_caller]
fn assert_sasl_features(c: &Client) {
    let offered = c.mechanisms();
    for m in MECHANISMS {
        assert!(
            offered.iter().any(|o| o == m),
            "{m} not offered: {}",
            c.features
        );
    }
    assert!(
        c.features.child("starttls", ns::TLS).is_none(),
        "STARTTLS offered on a TLS stream: {}",
        c.features
    );
}

/// Binds `resource`, checks the JID, and pings.
#[track_caller]
fn bind_and_ping(c: &mut Client, resource: &str) {
    assert_eq!(c.bind(Some(resource)), format!("alice@{DOMAIN}/{resource}"));
    c.sync();
}

#[test]
fn starttls_then_scram_sha_256() {
    let server = server_with_alice();
    let mut c = Client::connect_plain(&server);
    let starttls = c.features.get("starttls", ns::TLS);
    assert!(
        starttls.child("required", ns::TLS).is_some(),
        "STARTTLS must be required: {}",
        c.features
    );
    c.starttls();
    assert_sasl_features(&c);
    c.auth_scram("alice", PASSWORD, "SCRAM-SHA-256");
    assert!(
        c.features.child("mechanisms", ns::SASL).is_none(),
        "SASL offered again after authentication: {}",
        c.features
    );
    c.features.get("bind", ns::BIND);
    bind_and_ping(&mut c, "home");
}

#[test]
fn direct_tls_then_scram_sha_1() {
    let server = server_with_alice();
    let mut c = Client::connect_tls(&server);
    assert_eq!(
        c.tls().alpn_protocol(),
        Some(&b"xmpp-client"[..]),
        "ALPN on the direct TLS port (XEP-0368)"
    );
    assert_sasl_features(&c);
    c.auth_scram("alice", PASSWORD, "SCRAM-SHA-1");
    bind_and_ping(&mut c, "laptop");
}

#[test]
fn scram_plus_with_tls_exporter() {
    let server = server_with_alice();
    let mut c = Client::connect_starttls(&server);
    c.auth_scram("alice", PASSWORD, "SCRAM-SHA-256-PLUS");
    bind_and_ping(&mut c, "one");
    let mut c = Client::connect_tls(&server);
    c.auth_scram("alice", PASSWORD, "SCRAM-SHA-1-PLUS");
    bind_and_ping(&mut c, "two");
}

/// tls-server-end-point (RFC 5929), which XEP-0440 has every server offer: for clients whose
/// TLS library exports no keying material. Both types are announced.
#[test]
fn scram_plus_with_tls_server_end_point() {
    let server = server_with_alice();
    let mut c = Client::connect_starttls(&server);
    let types: Vec<&str> = c
        .features
        .get("sasl-channel-binding", "urn:xmpp:sasl-cb:0")
        .children
        .iter()
        .filter_map(|t| t.attr("type"))
        .collect();
    assert_eq!(types, ["tls-exporter", "tls-server-end-point"]);
    c.try_auth_scram_bound(
        "alice",
        PASSWORD,
        "SCRAM-SHA-256-PLUS",
        "tls-server-end-point",
    )
    .unwrap();
    bind_and_ping(&mut c, "one");
    // A type the server does not offer fails.
    let mut c = Client::connect_tls(&server);
    let failure = c
        .try_auth_scram_bound("alice", PASSWORD, "SCRAM-SHA-1-PLUS", "tls-unique")
        .unwrap_err();
    assert!(failure.is("failure", ns::SASL), "{failure}");
}

#[test]
fn plain() {
    let server = server_with_alice();
    let mut c = Client::connect_starttls(&server);
    c.auth_plain("alice", PASSWORD);
    bind_and_ping(&mut c, "home");
}

#[test]
fn wrong_password_then_retry_on_the_same_stream() {
    let server = server_with_alice();
    let mut c = Client::connect_starttls(&server);
    assert_sasl_failure(
        c.try_auth_scram("alice", "wrong", "SCRAM-SHA-256"),
        "not-authorized",
    );
    c.auth_scram("alice", PASSWORD, "SCRAM-SHA-256");
    bind_and_ping(&mut c, "home");

    let mut c = Client::connect_starttls(&server);
    assert_sasl_failure(c.try_auth_plain("alice", "wrong"), "not-authorized");
    assert_sasl_failure(
        c.try_auth_scram("nobody", PASSWORD, "SCRAM-SHA-256"),
        "not-authorized",
    );
}

#[test]
fn auth_before_starttls_is_refused() {
    let server = server_with_alice();
    let mut c = Client::connect_plain(&server);
    let credentials = B64.encode(format!("\0alice\0{PASSWORD}"));
    c.send(&format!(
        "<auth xmlns='{}' mechanism='PLAIN'>{credentials}</auth>",
        ns::SASL
    ));
    // Any refusal will do: <failure><encryption-required/>, or a stream error, or hanging up.
    match c.next_event() {
        Event::Stanza(el) if el.is("failure", ns::SASL) => {}
        Event::Stanza(el) if el.is("error", ns::STREAM) => c.expect_closed(),
        Event::Close | Event::Eof => {}
        other => panic!("authentication before STARTTLS must not succeed; got {other:?}"),
    }
}

#[test]
fn bind_without_resource_gets_a_generated_one() {
    let server = server_with_alice();
    let mut jids = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect_starttls(&server);
        c.auth_scram("alice", PASSWORD, "SCRAM-SHA-256");
        let jid = c.bind(None);
        let resource = jid
            .strip_prefix(&format!("alice@{DOMAIN}/"))
            .unwrap_or_else(|| panic!("bound {jid:?}, not a full JID of alice"));
        assert!(!resource.is_empty(), "empty generated resource");
        jids.push(jid);
        c.sync();
    }
    assert_ne!(
        jids[0], jids[1],
        "two sessions got the same generated resource"
    );
}

#[test]
fn bind_conflict_replaces_the_first_session() {
    let server = server_with_alice();
    let mut first = Client::login(&server, "alice", PASSWORD, "phone");
    let mut second = Client::login(&server, "alice", PASSWORD, "phone");
    assert_eq!(second.jid, format!("alice@{DOMAIN}/phone"));
    first.expect_stream_error("conflict");
    second.sync();
}

#[test]
fn legacy_session_iq_gets_an_empty_result() {
    let server = server_with_alice();
    let mut c = Client::login(&server, "alice", PASSWORD, "home");
    let reply = c.iq("type='set'", &format!("<session xmlns='{}'/>", ns::SESSION));
    assert_matches(&reply, "<iq type='result'/>");
    assert!(
        reply.children.is_empty(),
        "session result not empty: {reply}"
    );
}

#[test]
fn failed_logins_are_throttled() {
    let server = TestServer::start_with("[auth]\nmax_failures = 3\n");
    server.add_users(&["alice"]);
    for _ in 0..3 {
        let mut c = Client::connect_starttls(&server);
        assert_sasl_failure(
            c.try_auth_scram("alice", "wrong", "SCRAM-SHA-256"),
            "not-authorized",
        );
    }
    let mut c = Client::connect_starttls(&server);
    assert_sasl_failure(
        c.try_auth_scram("alice", PASSWORD, "SCRAM-SHA-256"),
        "temporary-auth-failure",
    );
}

#[test]
fn strangers_cannot_lock_the_owner_out() {
    // The defaults: the finding was made with them.
    let server = TestServer::start();
    server.add_users(&["alice", "bob"]);
    // Ten failed PLAIN logins from ten addresses used to refuse the right password.
    for n in 2..12 {
        fail_plain(&server, stranger(n), "alice", 1, 3);
    }
    Client::connect_starttls(&server).auth_plain("alice", PASSWORD);
    // One address that fails ten times is refused for alice, right password or not...
    let attacker = stranger(20);
    fail_plain(&server, attacker, "alice", 10, 3);
    let mut c = Client::connect_starttls_from(&server, attacker);
    assert_sasl_failure(c.try_auth_plain("alice", "wrong"), "temporary-auth-failure");
    assert_sasl_failure(
        c.try_auth_plain("alice", PASSWORD),
        "temporary-auth-failure",
    );
    // ...while alice logs in from her own address, with either mechanism,
    Client::connect_starttls(&server).auth_plain("alice", PASSWORD);
    let mut owner = Client::connect_starttls(&server);
    owner.auth_scram("alice", PASSWORD, "SCRAM-SHA-256");
    bind_and_ping(&mut owner, "home");
    // and bob, who shares the attacker's address, is not refused either.
    Client::connect_starttls_from(&server, attacker).auth_plain("bob", PASSWORD);
}

#[test]
fn a_refusal_tells_nothing_about_the_account_or_password() {
    let server = TestServer::start_with("[auth]\nmax_failures = 2\n");
    server.add_users(&["alice"]);
    let attacker = stranger(2);
    for user in ["alice", "nobody"] {
        fail_plain(&server, attacker, user, 2, 3);
        let mut c = Client::connect_starttls_from(&server, attacker);
        for password in ["wrong", PASSWORD] {
            assert_sasl_failure(
                c.try_auth_scram(user, password, "SCRAM-SHA-256"),
                "temporary-auth-failure",
            );
        }
    }
    Client::connect_starttls(&server).auth_plain("alice", PASSWORD);
}

#[test]
fn a_source_that_tries_many_accounts_is_refused_for_all() {
    let server =
        TestServer::start_with("[auth]\nmax_failures = 100\nmax_failures_per_source = 4\n");
    server.add_users(&["alice"]);
    let attacker = stranger(2);
    for user in ["ann", "ben", "cat", "dan"] {
        fail_plain(&server, attacker, user, 1, 3);
    }
    let mut c = Client::connect_starttls_from(&server, attacker);
    assert_sasl_failure(
        c.try_auth_plain("alice", PASSWORD),
        "temporary-auth-failure",
    );
    Client::connect_starttls(&server).auth_plain("alice", PASSWORD);
}

#[test]
fn aborts_unknown_mechanisms_and_bad_base64_are_failed_attempts() {
    let server = TestServer::start_with("[auth]\nattempts_per_stream = 3\nmax_failures = 0\n");
    server.add_users(&["alice"]);
    let mut c = Client::connect_starttls(&server);
    let sasl = ns::SASL;
    c.send(&format!("<abort xmlns='{sasl}'/>"));
    c.expect(&format!("<failure xmlns='{sasl}'><aborted/></failure>"));
    c.send(&format!(
        "<auth xmlns='{sasl}' mechanism='X-NOPE'>AA==</auth>"
    ));
    c.expect(&format!(
        "<failure xmlns='{sasl}'><invalid-mechanism/></failure>"
    ));
    c.send(&format!(
        "<auth xmlns='{sasl}' mechanism='PLAIN'>!!!</auth>"
    ));
    c.expect(&format!(
        "<failure xmlns='{sasl}'><incorrect-encoding/></failure>"
    ));
    c.expect_stream_error("policy-violation");

    // Starting exchange after exchange without finishing them counts too: the fourth start
    // abandons the third exchange.
    let mut c = Client::connect_starttls(&server);
    for _ in 0..4 {
        let _ = c.try_send_raw(
            format!(
                "<auth xmlns='{sasl}' mechanism='SCRAM-SHA-256'>{}</auth>",
                B64.encode("n,,n=alice,r=abcdefgh")
            )
            .as_bytes(),
        );
    }
    loop {
        match c.next_event() {
            Event::Stanza(el) if el.is("challenge", ns::SASL) => {}
            Event::Stanza(el) if el.is("error", ns::STREAM) => {
                assert!(
                    el.child("policy-violation", ns::STREAM_ERRORS).is_some(),
                    "{el}"
                );
                break;
            }
            other => panic!("expected challenges, then policy-violation; got {other:?}"),
        }
    }
}

#[test]
fn a_flood_of_aborts_throttles_its_source() {
    let server =
        TestServer::start_with("[auth]\nattempts_per_stream = 1000\nmax_failures_per_source = 5\n");
    server.add_users(&["alice"]);
    let attacker = stranger(2);
    let mut c = Client::connect_starttls_from(&server, attacker);
    for _ in 0..5 {
        c.send(&format!("<abort xmlns='{}'/>", ns::SASL));
        c.expect(&format!(
            "<failure xmlns='{}'><aborted/></failure>",
            ns::SASL
        ));
    }
    let mut c = Client::connect_starttls_from(&server, attacker);
    assert_sasl_failure(
        c.try_auth_plain("alice", PASSWORD),
        "temporary-auth-failure",
    );
    Client::connect_starttls(&server).auth_plain("alice", PASSWORD);
}

/// The salt and iteration count of the server-first message for `user`, on a new stream.
fn salt_and_iterations(server: &TestServer, user: &str) -> (String, String) {
    let mut c = Client::connect_starttls(server);
    let first = c.scram_server_first(user, "SCRAM-SHA-256");
    let attr = |k: &str| {
        first
            .split(',')
            .find_map(|a| a.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {first:?}"))
            .to_owned()
    };
    (attr("s="), attr("i="))
}

#[test]
fn scram_does_not_tell_accounts_apart() {
    let mut server = TestServer::start();
    server.add_users(&["alice"]);
    let alice = salt_and_iterations(&server, "alice");
    let nobody = salt_and_iterations(&server, "nobody");
    assert_eq!(salt_and_iterations(&server, "alice"), alice);
    assert_eq!(
        salt_and_iterations(&server, "nobody"),
        nobody,
        "an unknown user's salt must be as stable as an account's"
    );
    assert_eq!(nobody.1, alice.1, "iterations");
    assert_eq!(nobody.0.len(), alice.0.len(), "salt length");
    assert_ne!(nobody.0, salt_and_iterations(&server, "somebody").0);
    // It survives a restart, as an account's salt does.
    server.restart();
    assert_eq!(salt_and_iterations(&server, "nobody"), nobody);
    assert_eq!(salt_and_iterations(&server, "alice"), alice);
}

#[test]
fn whitespace_does_not_keep_a_login_open() {
    let server = TestServer::start_with("[limits]\nlogin_timeout_secs = 2\n");
    server.add_users(&["alice"]);
    let mut bound = Client::user(&server, "alice", "bound");
    let plain = Client::connect_plain(&server);
    let secure = Client::connect_starttls(&server);
    let mut authenticated = Client::connect_starttls(&server);
    authenticated.auth_scram("alice", PASSWORD, "SCRAM-SHA-256");
    let mut waiting = vec![
        ("before STARTTLS", plain),
        ("before SASL", secure),
        ("before binding", authenticated),
    ];
    // Whitespace keepalives (RFC 6120 §4.6.1) from each, more often than the timeout, until
    // each gets its stream error; on an idle timeout this would go on for ever.
    let give_up = Instant::now() + Duration::from_secs(60);
    while !waiting.is_empty() {
        assert!(
            Instant::now() < give_up,
            "still open: {:?}",
            waiting.iter().map(|(w, _)| *w).collect::<Vec<_>>()
        );
        let mut still = Vec::new();
        for (what, mut c) in waiting {
            // Read before writing: a write into a stream the server has just closed could
            // reset the connection before its error is read.
            match c.next_event_within(Duration::from_millis(200)) {
                None => {
                    let _ = c.try_send_raw(b" ");
                    still.push((what, c));
                }
                Some(Event::Header(_)) => {
                    c.expect_stream_error("connection-timeout");
                }
                Some(Event::Stanza(el)) => {
                    assert!(
                        el.child("connection-timeout", ns::STREAM_ERRORS).is_some(),
                        "{what}: expected connection-timeout, got {el}"
                    );
                    c.expect_closed();
                }
                Some(other) => panic!("{what}: expected connection-timeout, got {other:?}"),
            }
        }
        waiting = still;
    }
    // A bound session is not subject to the login deadline.
    bound.sync();
}

#[test]
fn too_many_failures_on_one_stream_end_it() {
    let server = TestServer::start_with("[auth]\nattempts_per_stream = 3\nmax_failures = 0\n");
    server.add_users(&["alice"]);
    let mut c = Client::connect_starttls(&server);
    for _ in 0..3 {
        assert_sasl_failure(c.try_auth_plain("alice", "wrong"), "not-authorized");
    }
    // RFC 6120 §6.4.5: past the retries the stream ends, with policy-violation. Whether that
    // comes right after the third failure or at the next attempt is the server's choice; a
    // write into a stream already closed is fine.
    let attempt = format!("<auth xmlns='{}' mechanism='PLAIN'>AA==</auth>", ns::SASL);
    let _ = c.try_send_raw(attempt.as_bytes());
    c.expect_stream_error("policy-violation");
}

#[test]
fn plaintext_sent_with_starttls_is_discarded() {
    let server = server_with_alice();
    let mut c = Client::connect_plain(&server);
    // A stanza smuggled into the same packet as <starttls/> (as in CVE-2011-0411) must not be
    // processed on the TLS stream; if it were, it would end the stream as not-authorized.
    c.send(&format!(
        "<starttls xmlns='{}'/><iq type='get' id='smuggled'><ping xmlns='{}'/></iq>",
        ns::TLS,
        ns::PING
    ));
    c.expect(&format!("<proceed xmlns='{}'/>", ns::TLS));
    c.resume_tls();
    c.auth_scram("alice", PASSWORD, "SCRAM-SHA-256");
    bind_and_ping(&mut c, "home");
}

#[test]
fn stream_header_in_the_same_flight_as_the_tls_handshake() {
    // Clients that pipeline (and busy networks) deliver the first stanza bytes together with
    // the end of the handshake; the server must not wait for more bytes to read them.
    let server = TestServer::start();
    server.add_users(&["alice"]);
    let mut c = Client::connect_tls_pipelined(&server);
    assert!(c.features.child("mechanisms", ns::SASL).is_some());
    c.auth_scram("alice", crate::harness::PASSWORD, "SCRAM-SHA-256");
    c.bind(Some("x"));
    c.sync();
}

#[test]
fn sighup_reloads_the_certificate() {
    let server = TestServer::start();
    server.add_users(&["alice"]);
    let mut before = Client::user(&server, "alice", "old");
    // New connections must present the new certificate (the client trusts only it); the
    // connection made before keeps working.
    server.rotate_certificate();
    let mut after = Client::connect_tls(&server);
    after.auth_scram("alice", crate::harness::PASSWORD, "SCRAM-SHA-256");
    after.bind(Some("new"));
    after.sync();
    before.sync();
}

#[test]
fn configured_pem_certificate_is_served() {
    let pems = tempfile::tempdir().expect("a temporary directory");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("make a certificate");
    let (cert, key) = (
        pems.path().join("fullchain.pem"),
        pems.path().join("privkey.pem"),
    );
    std::fs::write(&cert, ck.cert.pem()).expect("write the certificate");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write the key");
    let server = TestServer::start_with(&format!("[tls]\ncert = {cert:?}\nkey = {key:?}\n"));
    let generated = server.data_dir().join("cert.pem");
    assert!(
        !generated.exists(),
        "no certificate is generated when one is configured"
    );
    server.add_users(&["alice"]);
    // The test client trusts the file in the data directory: make it the configured one.
    std::fs::copy(&cert, &generated).expect("copy the certificate");
    let mut c = Client::user(&server, "alice", "pem");
    c.sync();
}
