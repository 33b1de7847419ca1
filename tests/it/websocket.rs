//! XMPP over WebSocket (RFC 7395) on the HTTPS listener, with XEP-0156 discovery: a browser
//! client's login, its messages with a TCP client, stream management across transports, and
//! what a hostile WebSocket client gets (a handshake without the subprotocol, a frame larger
//! than any stanza, a client that never reads).

use crate::harness::{Client, FRAMING, TestServer, assert_matches, ns, tls_connect};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const SM: &str = "urn:xmpp:sm:3";

fn server_with(extra: &str) -> TestServer {
    let server = TestServer::start_with(extra);
    server.add_users(&["alice", "bob"]);
    server
}

/// A GET of `path` on the HTTPS listener; the response as text, headers and body.
fn get(server: &TestServer, path: &str) -> String {
    let mut tls = tls_connect(server, server.https.unwrap(), &[b"http/1.1"]);
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn host_meta_names_the_websocket_endpoint() {
    let server = TestServer::start();
    let port = server.https.unwrap().port();
    let url = format!("wss://localhost:{port}/xmpp-websocket");
    let xrd = get(&server, "/.well-known/host-meta");
    assert!(xrd.starts_with("HTTP/1.1 200"), "{xrd}");
    let lower = xrd.to_ascii_lowercase();
    assert!(lower.contains("content-type: application/xrd+xml"), "{xrd}");
    assert!(lower.contains("access-control-allow-origin: *"), "{xrd}");
    assert!(
        xrd.contains(&format!(
            "<Link rel='urn:xmpp:alt-connections:websocket' href='{url}'/>"
        )),
        "{xrd}"
    );
    let json = get(&server, "/.well-known/host-meta.json");
    assert!(json.starts_with("HTTP/1.1 200"), "{json}");
    assert!(
        json.ends_with(&format!(
            "{{\"links\":[{{\"rel\":\"urn:xmpp:alt-connections:websocket\",\"href\":\"{url}\"}}]}}"
        )),
        "{json}"
    );
    // The public URL, when configured, is what host-meta says.
    let server = TestServer::start_with("[modules.http]\npublic_url = \"https://chat.example\"\n");
    let xrd = get(&server, "/.well-known/host-meta");
    assert!(
        xrd.contains("href='wss://chat.example/xmpp-websocket'"),
        "{xrd}"
    );
    let other = get(&server, "/.well-known/other");
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
}

#[test]
fn a_websocket_client_logs_in_and_chats_with_a_tcp_client() {
    let server = server_with("");
    let mut ws = Client::connect_websocket(&server);
    // Already TLS: SASL right away, no STARTTLS.
    assert!(
        ws.features.child("starttls", ns::TLS).is_none(),
        "{}",
        ws.features
    );
    assert!(ws.mechanisms().contains(&"SCRAM-SHA-256".to_owned()));
    ws.auth_scram("alice", crate::harness::PASSWORD, "SCRAM-SHA-256");
    ws.bind(Some("browser"));
    let mut tcp = Client::user(&server, "bob", "pc");
    ws.send(&format!(
        "<message to='{}' type='chat' id='w1'><body>from the browser</body></message>",
        tcp.jid
    ));
    tcp.expect(&format!(
        "<message from='{}' type='chat' id='w1'><body>from the browser</body></message>",
        ws.jid
    ));
    tcp.send(&format!(
        "<message to='{}' type='chat' id='t1'><body>from the desktop</body></message>",
        ws.jid
    ));
    ws.expect(&format!(
        "<message from='{}' type='chat' id='t1'><body>from the desktop</body></message>",
        tcp.jid
    ));
    // An iq answered by the server, then a clean close: <close/> answered with <close/>.
    let reply = ws.iq("type='get'", &format!("<ping xmlns='{}'/>", ns::PING));
    assert_matches(&reply, "<iq type='result'/>");
    ws.send("</stream:stream>");
    assert!(matches!(ws.next_event(), crate::harness::Event::Close));
    assert!(matches!(ws.next_event(), crate::harness::Event::Eof));
}

#[test]
fn stream_management_resumes_over_websocket_and_tcp() {
    let server = server_with("[stream_management]\nack_every = 100\nack_delay_secs = 60\n");
    let mut ws = Client::websocket_user(&server, "alice", "browser");
    let mut bob = Client::user(&server, "bob", "pc");
    ws.send(&format!("<enable xmlns='{SM}' resume='true'/>"));
    let enabled = ws.expect(&format!(
        "<enabled xmlns='{SM}' resume='true' id='{{any}}'/>"
    ));
    let id = enabled.attr("id").unwrap().to_owned();
    let full = ws.jid.clone();
    // The tab is closed without a word; bob writes meanwhile.
    drop(ws);
    bob.send(&format!(
        "<message to='{full}' type='chat' id='m1'><body>one</body></message>"
    ));
    bob.sync();
    // It comes back over WebSocket and resumes.
    let mut ws = Client::connect_websocket(&server);
    ws.auth_scram("alice", crate::harness::PASSWORD, "SCRAM-SHA-256");
    ws.send(&format!("<resume xmlns='{SM}' previd='{id}' h='0'/>"));
    ws.expect(&format!("<resumed xmlns='{SM}' previd='{id}' h='0'/>"));
    ws.expect("<message type='chat' id='m1'><body>one</body></message>");
    // Acknowledged the one message, it drops again, and resumes over TCP this time.
    ws.send(&format!("<a xmlns='{SM}' h='1'/>"));
    ws.send(&format!("<r xmlns='{SM}'/>"));
    ws.expect(&format!("<a xmlns='{SM}' h='0'/>"));
    drop(ws);
    bob.send(&format!(
        "<message to='{full}' type='chat' id='m2'><body>two</body></message>"
    ));
    bob.sync();
    let mut tcp = Client::connect_starttls(&server);
    tcp.auth_scram("alice", crate::harness::PASSWORD, "SCRAM-SHA-256");
    tcp.send(&format!("<resume xmlns='{SM}' previd='{id}' h='1'/>"));
    tcp.expect(&format!("<resumed xmlns='{SM}' previd='{id}' h='0'/>"));
    tcp.expect("<message type='chat' id='m2'><body>two</body></message>");
    tcp.jid = full;
    tcp.sync();
}

#[test]
fn a_handshake_without_the_xmpp_subprotocol_is_refused() {
    let server = TestServer::start();
    let mut tls = tls_connect(&server, server.https.unwrap(), &[b"http/1.1"]);
    let req = "GET /xmpp-websocket HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
               Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
               Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: chat\r\n\r\n";
    tls.write_all(req.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    tls.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 400");
    // Turned off, there is no endpoint at all.
    let server = TestServer::start_with("[modules.http]\nwebsocket = false\n");
    let page = get(&server, "/xmpp-websocket");
    assert!(page.starts_with("HTTP/1.1 404"), "{page}");
    let xrd = get(&server, "/.well-known/host-meta");
    assert!(!xrd.contains("websocket"), "{xrd}");
}

#[test]
fn a_frame_larger_than_any_stanza_ends_the_stream() {
    let server = server_with("[limits]\nmax_stanza_bytes = 10000\n");
    let mut ws = Client::websocket_user(&server, "alice", "browser");
    let huge = format!(
        "<message to='bob@localhost'><body>{}</body></message>",
        "x".repeat(20_000)
    );
    ws.send(&huge);
    ws.expect_stream_error("policy-violation");
    // Others are unaffected.
    let mut other = Client::websocket_user(&server, "bob", "browser");
    other.sync();
}

#[test]
fn unqualified_and_misframed_input_gets_stream_errors() {
    let server = server_with("");
    // A stream header of TCP XMPP is not an <open/>.
    let mut ws = Client::websocket_raw(&server);
    ws.send_ws_text("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>");
    let header = ws.next_event();
    assert!(
        matches!(header, crate::harness::Event::Header(_)),
        "{header:?}"
    );
    ws.expect_stream_error("invalid-namespace");
    // A second <open/> on an open stream.
    let mut ws = Client::connect_websocket(&server);
    ws.send_ws_text(&format!(
        "<open xmlns='{FRAMING}' to='localhost' version='1.0'/>"
    ));
    ws.expect_stream_error("invalid-xml");
    // A stanza that does not declare its namespace is in none (RFC 7395 §3.3.3).
    let mut ws = Client::websocket_user(&server, "alice", "browser");
    ws.send_ws_text("<presence/>");
    ws.expect_stream_error("unsupported-stanza-type");
}

#[test]
fn a_websocket_that_never_reads_is_closed_and_others_go_on() {
    let server = server_with("[limits]\nwrite_timeout_secs = 2\n");
    let ws = Client::websocket_user(&server, "alice", "browser");
    let mut bob = Client::user(&server, "bob", "pc");
    // Bob fills alice's socket; her client reads nothing.
    let body = "y".repeat(8000);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    loop {
        assert!(Instant::now() < deadline, "alice was never disconnected");
        bob.send(&format!(
            "<message to='{}' type='chat'><body>{body}</body></message>",
            ws.jid
        ));
        sent += 1;
        if sent % 50 == 0 {
            bob.sync();
            let gone = server.log().contains("nothing taken for 2s; closing it")
                || server.log().contains("too many stanzas waiting");
            if gone {
                break;
            }
        }
    }
    bob.sync();
    drop(ws);
}
