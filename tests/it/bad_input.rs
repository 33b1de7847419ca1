//! Broken and hostile input: malformed XML, truncated streams, oversized stanzas (and the
//! configurable limit), restricted XML (RFC 6120 §11.1), bad stream headers (§4.9.3), stanzas
//! before authentication and binding (§6, §7.1), bad iq envelopes (§8.1.3, §8.2.3), a forged
//! 'from' (§8.1.2.1) and malformed addresses (RFC 7622). Each case gets the stream error or
//! stanza error the RFC names, and the server keeps serving everyone else.
//!
//! Also XML that parses for a lenient reader but not for the recipient's (characters outside
//! XML 1.0's `Char`, broken names, undeclared prefixes), which must reach no one and no store,
//! and bytes that cannot start a stream at all (TLS or HTTP on the STARTTLS port), which must be
//! answered at once rather than at the login timeout.

use crate::harness::{
    Client, DOMAIN, TestServer, assert_server_ok, ns, stanza_error, stream_header,
};
use std::sync::Arc;

fn server() -> TestServer {
    let server = TestServer::start();
    server.add_users(&["alice", "bob"]);
    server
}

/// Sends each input on a fresh, logged-in stream and expects stream error `condition`.
#[track_caller]
fn each_ends_stream(server: &TestServer, inputs: &[&str], condition: &str) {
    for input in inputs {
        let mut c = Client::user(server, "alice", "home");
        c.send(input);
        c.expect_stream_error(condition);
    }
    assert_server_ok(server, "bob");
}

#[test]
fn garbage_is_not_well_formed() {
    let server = server();
    let mut c = Client::connect_plain(&server);
    c.send_raw(b"\xff\xfe\x00<<garbage>>&&");
    c.expect_stream_error("not-well-formed");
    each_ends_stream(
        &server,
        &[
            "<message to='bob@localhost'><body>crossed</message></body>",
            "<presence><show>away</show></presence></oops>",
        ],
        "not-well-formed",
    );
}

#[test]
fn truncated_stream_leaves_the_server_serving() {
    let server = server();
    let mut c = Client::user(&server, "alice", "home");
    c.send("<message to='bob@localhost' type='chat'><body>half a thou");
    drop(c);
    let mut again = Client::user(&server, "alice", "home");
    again.sync();
    assert_server_ok(&server, "bob");
}

#[test]
fn ten_megabyte_stanza_is_a_policy_violation() {
    let server = server();
    let mut c = Client::user(&server, "alice", "home");
    c.send("<message to='bob@localhost' type='chat'><body>");
    let chunk = vec![b'a'; 64 * 1024];
    // 160 chunks of 64 KiB: 10 MiB, sent until the server answers or stops listening.
    for _ in 0..160 {
        if c.try_send_raw(&chunk).is_err() || c.has_input() {
            break;
        }
    }
    c.expect_stream_error("policy-violation");
    assert_server_ok(&server, "bob");
}

/// A DOCTYPE declaring nine levels of nested entities: 10^9 "lol"s if expanded.
fn billion_laughs() -> String {
    let mut dtd = String::from("<!DOCTYPE lolz [<!ENTITY lol0 'lol'>");
    for level in 1..=9 {
        let refs = format!("&lol{};", level - 1).repeat(10);
        dtd.push_str(&format!("<!ENTITY lol{level} '{refs}'>"));
    }
    dtd + "]>"
}

#[test]
fn billion_laughs_is_restricted_xml() {
    let server = server();
    let mut c = Client::connect_raw(&server, server.c2s);
    let header = stream_header();
    let (decl, open) = header.split_at(header.find("<stream").unwrap_or(0));
    c.send(&format!("{decl}{}{open}", billion_laughs()));
    c.expect_stream_error("restricted-xml");
    let inside = format!(
        "{}<message to='bob@{DOMAIN}'><body>&lol9;</body></message>",
        billion_laughs()
    );
    each_ends_stream(&server, &[&inside], "restricted-xml");
}

#[test]
fn comments_and_processing_instructions_are_restricted_xml() {
    let server = server();
    each_ends_stream(
        &server,
        &[
            "<!-- a comment between stanzas -->",
            "<message to='bob@localhost'><!-- inside --><body>hi</body></message>",
            "<?hearth please?>",
        ],
        "restricted-xml",
    );
}

#[test]
fn stanzas_before_authentication_or_binding_are_not_authorized() {
    let server = server();
    let ping = format!(
        "<iq type='get' id='early' to='{DOMAIN}'><ping xmlns='{}'/></iq>",
        ns::PING
    );
    let mut c = Client::connect_starttls(&server);
    c.send(&ping);
    c.expect_stream_error("not-authorized");
    let mut c = Client::connect_starttls(&server);
    c.auth_scram("alice", crate::harness::PASSWORD, "SCRAM-SHA-256");
    c.send("<message to='bob@localhost' type='chat'><body>unbound</body></message>");
    c.expect_stream_error("not-authorized");
    assert_server_ok(&server, "bob");
}

#[test]
fn bad_iq_envelopes_are_bad_requests() {
    let server = server();
    let mut c = Client::user(&server, "alice", "home");
    let ping = format!("<ping xmlns='{}'/>", ns::PING);
    // RFC 6120 §8.1.3: an iq must have an id; the error cannot echo one.
    c.send(&format!("<iq type='get' to='{DOMAIN}'>{ping}</iq>"));
    c.expect(&format!(
        "<iq type='error'><error type='modify'><bad-request xmlns='{}'/></error></iq>",
        ns::STANZAS
    ));
    let envelopes = [
        ("type='bogus'", ping.clone()),
        ("type='get'", String::new()),
        ("type='get'", format!("{ping}{ping}")),
    ];
    for (attrs, payload) in envelopes {
        let id = c.send_iq(&format!("{attrs} to='{DOMAIN}'"), &payload);
        c.expect(&stanza_error("iq", &id, "modify", "bad-request"));
    }
    c.sync();
    assert_server_ok(&server, "bob");
}

#[test]
fn message_to_a_malformed_jid_is_jid_malformed() {
    let server = server();
    let mut c = Client::user(&server, "alice", "home");
    for to in ["a@b@c", "alice@localhost/", "@localhost", "alice@"] {
        let id = c.send_message(to, "chat", "x");
        c.expect(&stanza_error("message", &id, "modify", "jid-malformed"));
    }
    c.sync();
    assert_server_ok(&server, "bob");
}

/// Opens a raw connection with `header` (after the XML declaration) and expects `condition`.
#[track_caller]
fn header_refused(server: &TestServer, header: &str, condition: &str) {
    let mut c = Client::connect_raw(server, server.c2s);
    c.send(&format!("<?xml version='1.0'?>{header}"));
    c.expect_stream_error(condition);
}

#[test]
fn bad_stream_headers_are_refused() {
    let server = server();
    let stream_ns = format!("xmlns:stream='{}'", ns::STREAM);
    header_refused(
        &server,
        &format!(
            "<stream:stream xmlns='jabber:client' {stream_ns} to='example.org' version='1.0'>"
        ),
        "host-unknown",
    );
    header_refused(
        &server,
        "<stream:stream xmlns='jabber:client' xmlns:stream='urn:not-streams' to='localhost' version='1.0'>",
        "invalid-namespace",
    );
    assert_server_ok(&server, "bob");
}

#[test]
fn spoofed_from_is_overridden() {
    let server = server();
    let mut bob = Client::user(&server, "bob", "home");
    let mut alice = Client::user(&server, "alice", "home");
    // RFC 6120 §8.1.2.1: the server sets 'from' to the sender's full JID, whatever it said.
    alice.send("<message from='carol@localhost/x' to='bob@localhost/home' type='chat' id='s1'><body>me!</body></message>");
    bob.expect(&format!("<message from='{}' id='s1'/>", alice.jid));
}

#[test]
fn stanza_size_limit_is_configurable() {
    // RFC 6120 §13.12 asks for at least 10000 bytes, so the server accepts no less.
    let server = TestServer::start_with("[limits]\nmax_stanza_bytes = 20000\n");
    server.add_users(&["alice", "bob"]);
    let mut c = Client::user(&server, "alice", "home");
    c.send_message("bob@localhost", "chat", &"a".repeat(15_000));
    c.sync();
    c.send_message("bob@localhost", "chat", &"a".repeat(25_000));
    c.expect_stream_error("policy-violation");
    assert_server_ok(&server, "bob");
}

/// Messages from alice to bob that a lenient reader once relayed and a recipient's XML parser
/// refuses, each with the stream error it must get.
fn invalid_messages() -> Vec<(Vec<u8>, &'static str)> {
    let message = |inner: &[u8]| {
        let open = b"<message to='bob@localhost' type='chat' id='bad'>";
        [&open[..], inner, b"</message>"].concat()
    };
    vec![
        (message(b"<body>a&#1;b</body>"), "not-well-formed"),
        (message(b"<body>a\x01b</body>"), "not-well-formed"),
        (
            message("<body>a\u{FFFE}b</body>".as_bytes()),
            "not-well-formed",
        ),
        (message(b"<body>hi</body><x\"y\"/>"), "not-well-formed"),
        (message(b"<body>hi</body><a<b/>"), "not-well-formed"),
        (message(b"<foo:body>hi</foo:body>"), "bad-namespace-prefix"),
        (
            b"<message to='bob@localhost' type='chat' foo:x='1'><body>hi</body></message>".to_vec(),
            "bad-namespace-prefix",
        ),
    ]
}

/// Sends each invalid message on its own logged-in stream (over TLS) and expects its error.
#[track_caller]
fn each_invalid_message_ends_its_stream(server: &TestServer) {
    for (stanza, condition) in invalid_messages() {
        let mut alice = Client::user(server, "alice", "home");
        alice.send_raw(&stanza);
        alice.expect_stream_error(condition);
    }
}

#[test]
fn invalid_xml_reaches_no_one() {
    let server = server();
    let mut bob = Client::online(&server, "bob", "home");
    each_invalid_message_ends_its_stream(&server);
    let mut alice = Client::user(&server, "alice", "home");
    alice.send_message(&bob.jid, "chat", "fine");
    alice.sync();
    let got = bob.messages_until_sync();
    let bodies: Vec<&str> = got
        .iter()
        .map(|m| m.get("body", ns::CLIENT).text.as_str())
        .collect();
    assert_eq!(bodies, ["fine"], "only the valid message arrives: {got:?}");
    assert_server_ok(&server, "bob");
}

#[test]
fn invalid_xml_is_not_stored_offline() {
    let server = server();
    each_invalid_message_ends_its_stream(&server);
    let mut alice = Client::user(&server, "alice", "home");
    alice.send_message("bob@localhost", "chat", "fine");
    alice.sync();
    // bob logs in later: the valid message is all that was kept for him.
    let mut bob = Client::user(&server, "bob", "home");
    bob.send("<presence/>");
    let got = bob.messages_until_sync();
    let bodies: Vec<&str> = got
        .iter()
        .map(|m| m.get("body", ns::CLIENT).text.as_str())
        .collect();
    assert_eq!(bodies, ["fine"], "offline messages: {got:?}");
    assert_server_ok(&server, "alice");
}

/// The first flight of a TLS client, as rustls sends it: a ClientHello record.
fn client_hello() -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = DOMAIN.try_into().expect("a valid server name");
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name).expect("start TLS");
    let mut hello = Vec::new();
    tls.write_tls(&mut hello).expect("write the ClientHello");
    assert_eq!(hello.first(), Some(&0x16), "a TLS handshake record");
    hello
}

#[test]
fn tls_or_http_on_the_starttls_port_is_refused_at_once() {
    let server = server();
    let http = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for junk in [client_hello().as_slice(), http] {
        let mut c = Client::connect_raw(&server, server.c2s);
        c.send_raw(junk);
        // Within the harness's read deadline, far below the login timeout: a client that tried
        // direct TLS first falls back to STARTTLS without waiting.
        c.expect_stream_error("not-well-formed");
    }
    assert_server_ok(&server, "bob");
}
