//! XEP-0363 HTTP File Upload against the real server: discovery, a 5 MB photo up and down
//! byte for byte over HTTPS, the refusals (too large, over quota, too many slots, a forged or
//! expired slot, a wrong length or type), path traversal through every field, the headers of
//! what is served, and attacks on the HTTPS listener (a huge body, slow headers, a download
//! nobody reads, a flood of slot requests).

use crate::harness::{Client, DOMAIN, TestServer, assert_matches, ns, tls_connect};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

const UPLOAD: &str = "urn:xmpp:http:upload:0";
const SERVICE: &str = "upload.localhost";

fn server_with(extra: &str) -> TestServer {
    let server = TestServer::start_with(extra);
    server.add_users(&["alice", "bob"]);
    server
}

/// An HTTP client trusting exactly the server's certificate; statuses are answers, not errors.
fn agent(server: &TestServer) -> ureq::Agent {
    let pem = std::fs::read(server.cert_path()).unwrap();
    let cert = ureq::tls::Certificate::from_pem(&pem).unwrap();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![cert])))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Asks for a slot; returns the reply (a slot or an error).
fn request(
    c: &mut Client,
    name: &str,
    size: u64,
    content_type: Option<&str>,
) -> crate::harness::Element {
    let ct = content_type
        .map(|t| format!(" content-type='{t}'"))
        .unwrap_or_default();
    c.iq(
        &format!("type='get' to='{SERVICE}'"),
        &format!(
            "<request xmlns='{UPLOAD}' filename='{}' size='{size}'{ct}/>",
            crate::harness::escape(name)
        ),
    )
}

/// A slot's PUT and GET URLs.
fn slot(c: &mut Client, name: &str, size: u64, content_type: Option<&str>) -> (String, String) {
    let reply = request(c, name, size, content_type);
    assert_matches(&reply, "<iq type='result'/>");
    let slot = reply.get("slot", UPLOAD);
    let put = slot.get("put", UPLOAD).attr("url").unwrap().to_owned();
    let get = slot.get("get", UPLOAD).attr("url").unwrap().to_owned();
    (put, get)
}

fn put(agent: &ureq::Agent, url: &str, content_type: &str, body: &[u8]) -> u16 {
    agent
        .put(url)
        .header("Content-Type", content_type)
        .send(body)
        .unwrap()
        .status()
        .as_u16()
}

/// Bytes that are not all the same, so that a misplaced chunk shows.
fn data(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x9E37_79B9;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// One request written as given, on a new TLS connection to the HTTPS listener; the whole
/// response (until the server closes).
fn raw(server: &TestServer, request: &str) -> String {
    let mut tls = tls_connect(server, server.https.unwrap(), &[b"http/1.1"]);
    tls.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_5_mb_photo_goes_up_and_comes_back_byte_for_byte() {
    let server = server_with("");
    let mut alice = Client::user(&server, "alice", "phone");
    // Discovery: the server lists the service, which names its limit.
    let items = alice.server_iq("get", &format!("<query xmlns='{}'/>", ns::DISCO_ITEMS));
    assert_matches(
        &items,
        &format!(
            "<iq type='result'><query xmlns='{}'><item jid='{SERVICE}'/></query></iq>",
            ns::DISCO_ITEMS
        ),
    );
    let info = alice.iq(
        &format!("type='get' to='{SERVICE}'"),
        &format!("<query xmlns='{}'/>", ns::DISCO_INFO),
    );
    assert_matches(
        &info,
        &format!(
            "<iq type='result'><query xmlns='{}'><identity category='store' type='file'/>\
             <feature var='{UPLOAD}'/><x xmlns='jabber:x:data' type='result'>\
             <field var='FORM_TYPE'><value>{UPLOAD}</value></field>\
             <field var='max-file-size'><value>104857600</value></field></x></query></iq>",
            ns::DISCO_INFO
        ),
    );
    let photo = data(5 << 20);
    let (put_url, get_url) = slot(
        &mut alice,
        "très cool.jpg",
        photo.len() as u64,
        Some("image/jpeg"),
    );
    let port = server.https.unwrap().port();
    assert!(
        put_url.starts_with(&format!("https://{DOMAIN}:{port}/upload/")),
        "{put_url}"
    );
    assert!(put_url.ends_with("/tr%C3%A8s%20cool.jpg"), "{put_url}");
    let agent = agent(&server);
    assert_eq!(put(&agent, &put_url, "image/jpeg", &photo), 201);
    let mut got = agent.get(&get_url).call().unwrap();
    assert_eq!(got.status().as_u16(), 200);
    let h = got.headers().clone();
    let header = |n: &str| {
        h.get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("content-type"), "image/jpeg");
    assert_eq!(header("content-length"), (5 << 20).to_string());
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert!(header("content-security-policy").contains("default-src 'none'"));
    assert!(
        header("content-disposition").starts_with("inline; filename*=UTF-8''tr%C3%A8s%20cool.jpg")
    );
    let body = got
        .body_mut()
        .with_config()
        .limit(10 << 20)
        .read_to_vec()
        .unwrap();
    assert!(body == photo, "the download differs from the upload");
    // On disk under an unguessable name, readable by the server's user alone.
    use std::os::unix::fs::PermissionsExt;
    let dir = server.data_dir().join("uploads");
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(files.len(), 1);
    let meta = files[0].metadata().unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 5 << 20);
    // A slot is used once (refused before any body is read).
    assert_eq!(put(&agent, &put_url, "image/jpeg", b"x"), 403);
    // It survives a restart.
    let mut server = server;
    server.restart();
    let agent = crate::upload::agent(&server);
    let port2 = server.https.unwrap().port();
    let moved = get_url.replace(&format!(":{port}/"), &format!(":{port2}/"));
    let mut got = agent.get(&moved).call().unwrap();
    assert_eq!(got.status().as_u16(), 200);
    let body = got
        .body_mut()
        .with_config()
        .limit(10 << 20)
        .read_to_vec()
        .unwrap();
    assert!(body == photo);
}

#[test]
fn oversize_too_many_slots_and_quota_are_refused() {
    let server =
        server_with("[modules.upload]\nmax_file_bytes = 1000\nquota_bytes = 2500\nmax_slots = 2\n");
    let mut alice = Client::user(&server, "alice", "phone");
    let reply = request(&mut alice, "big.bin", 1001, None);
    assert_matches(
        &reply,
        &format!(
            "<iq type='error'><error type='modify'><not-acceptable xmlns='{}'/>\
             <file-too-large xmlns='{UPLOAD}'><max-file-size>1000</max-file-size></file-too-large>\
             </error></iq>",
            ns::STANZAS
        ),
    );
    let (a, _) = slot(&mut alice, "a.bin", 1000, None);
    let (b, _) = slot(&mut alice, "b.bin", 1000, None);
    let reply = request(&mut alice, "c.bin", 10, None);
    assert_matches(
        &reply,
        &format!(
            "<iq type='error'><error type='wait'><resource-constraint xmlns='{}'/>\
             <retry xmlns='{UPLOAD}' stamp='{{any}}'/></error></iq>",
            ns::STANZAS
        ),
    );
    let agent = agent(&server);
    assert_eq!(
        put(&agent, &a, "application/octet-stream", &data(1000)),
        201
    );
    assert_eq!(
        put(&agent, &b, "application/octet-stream", &data(1000)),
        201
    );
    // 2000 of 2500 bytes are used.
    let reply = request(&mut alice, "c.bin", 501, None);
    assert_matches(
        &reply,
        &format!(
            "<iq type='error'><error type='wait'><resource-constraint xmlns='{}'/></error></iq>",
            ns::STANZAS
        ),
    );
    slot(&mut alice, "c.bin", 500, None);
    // Bob has a quota of his own.
    let mut bob = Client::user(&server, "bob", "pc");
    slot(&mut bob, "d.bin", 1000, None);
}

#[test]
fn forged_expired_and_mismatched_uploads_are_refused() {
    let server = server_with("[modules.upload]\nslot_timeout_secs = 2\n");
    let mut alice = Client::user(&server, "alice", "phone");
    let agent = agent(&server);
    let (url, _) = slot(&mut alice, "note.txt", 10, Some("text/plain"));
    // Another ID of the right shape.
    let id = url.split('/').nth(4).unwrap();
    let forged = url.replace(id, &"0".repeat(32));
    assert_eq!(put(&agent, &forged, "text/plain", b"0123456789"), 403);
    // The wrong length, the wrong type.
    assert_eq!(put(&agent, &url, "text/plain", b"012345678"), 400);
    assert_eq!(put(&agent, &url, "text/plain", b"0123456789A"), 413);
    assert_eq!(put(&agent, &url, "text/html", b"0123456789"), 415);
    // The slot is still good after refusals, until it expires: the server's clock decides,
    // so ask until it says so (with the wrong length, which never uploads).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match put(&agent, &url, "text/plain", b"short") {
            400 => assert!(Instant::now() < deadline, "the slot never expired"),
            403 => break,
            other => panic!("unexpected status {other}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(put(&agent, &url, "text/plain", b"0123456789"), 403);
    // A GET of an ID that was never uploaded, and of one whose upload never happened.
    let got = agent.get(&forged).call().unwrap();
    assert_eq!(got.status().as_u16(), 404);
    let got = agent.get(&url).call().unwrap();
    assert_eq!(got.status().as_u16(), 404);
    // Nothing was left behind.
    let dir = server.data_dir().join("uploads");
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);
}

#[test]
fn path_traversal_is_refused_through_every_field() {
    let server = server_with("");
    let mut alice = Client::user(&server, "alice", "phone");
    for name in ["../x.jpg", "a/b.jpg", "/etc/passwd", "..", ".", "a\\b", ""] {
        let reply = request(&mut alice, name, 10, None);
        assert_matches(
            &reply,
            &format!(
                "<iq type='error'><error type='modify'><bad-request xmlns='{}'/></error></iq>",
                ns::STANZAS
            ),
        );
    }
    // A control character, which only a character reference can carry.
    let reply = alice.iq(
        &format!("type='get' to='{SERVICE}'"),
        &format!("<request xmlns='{UPLOAD}' filename='a&#10;b' size='1'/>"),
    );
    assert_matches(&reply, "<iq type='error'><error type='modify'/></iq>");
    for t in ["text/html\r\nX-Evil: 1", "../../etc", "a b/c"] {
        let reply = request(&mut alice, "x.txt", 10, Some(&crate::harness::escape(t)));
        assert!(reply.attr("type") == Some("error"), "{t:?}: {reply}");
    }
    // A name that only looks like a path when decoded is a name: it is never decoded.
    let (url, get_url) = slot(&mut alice, "%2e%2e%2fx.txt", 3, Some("text/plain"));
    assert!(url.ends_with("/%252e%252e%252fx.txt"), "{url}");
    let agent = agent(&server);
    assert_eq!(put(&agent, &url, "text/plain", b"abc"), 201);
    let mut got = agent.get(&get_url).call().unwrap();
    assert_eq!(got.body_mut().read_to_vec().unwrap(), b"abc");
    // A NUL cannot even travel in XML: the stream ends.
    let mut mallory = Client::user(&server, "bob", "pc");
    mallory.send(&format!(
        "<iq type='get' to='{SERVICE}' id='n'><request xmlns='{UPLOAD}' filename='a&#0;b' size='1'/></iq>"
    ));
    mallory.expect_stream_error("not-well-formed");
    // Paths that try to leave the upload directory, raw on the wire.
    let id = get_url.split('/').nth(4).unwrap().to_owned();
    for path in [
        "/upload/../hearth.redb/x".to_owned(),
        "/upload/..%2fhearth.redb/x".to_owned(),
        "/upload/%2e%2e/%2e%2e/hearth.toml".to_owned(),
        "/upload//etc/passwd".to_owned(),
        "/upload/..%2f..%2fcert.pem/x".to_owned(),
        format!("/upload/{id}%00/x"),
        format!("/upload/{id}/../../cert.pem"),
        "//etc/passwd".to_owned(),
    ] {
        let reply = raw(
            &server,
            &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        );
        assert!(
            !reply.contains("PRIVATE KEY") && !reply.contains("BEGIN CERT"),
            "{path}: {reply}"
        );
        let ok_file =
            path.contains(&id) && reply.starts_with("HTTP/1.1 200") && reply.ends_with("abc");
        assert!(
            reply.starts_with("HTTP/1.1 404") || reply.starts_with("HTTP/1.1 400") || ok_file,
            "{path}: {reply}"
        );
    }
}

#[test]
fn active_content_is_served_as_an_attachment_that_cannot_run() {
    let server = server_with("");
    let mut alice = Client::user(&server, "alice", "phone");
    let agent = agent(&server);
    let page = b"<html><script>alert(document.cookie)</script></html>";
    let svg = b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>";
    for (name, t, body) in [
        ("page.html", "text/html", &page[..]),
        ("image.svg", "image/svg+xml", &svg[..]),
        ("data.xml", "application/xml", &svg[..]),
        ("nothing", "application/javascript", &page[..]),
    ] {
        let (put_url, get_url) = slot(&mut alice, name, body.len() as u64, Some(t));
        assert_eq!(put(&agent, &put_url, t, body), 201);
        let got = agent.get(&get_url).call().unwrap();
        let h = got.headers();
        let header = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert_eq!(header("content-type"), t);
        assert_eq!(header("x-content-type-options"), "nosniff");
        assert_eq!(
            header("content-security-policy"),
            "default-src 'none'; frame-ancestors 'none'; sandbox"
        );
        assert!(
            header("content-disposition").starts_with("attachment;"),
            "{name}: {h:?}"
        );
    }
    // Without a type, it is a download of bytes.
    let (put_url, get_url) = slot(&mut alice, "x", 3, None);
    let status = agent
        .put(&put_url)
        .send(&b"abc"[..])
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 201);
    let got = agent.get(&get_url).call().unwrap();
    assert_eq!(
        got.headers().get("content-type").unwrap(),
        "application/octet-stream"
    );
}

#[test]
fn a_huge_body_against_a_small_slot_is_refused_before_it_is_read() {
    let server = server_with("[modules.upload]\nmax_file_bytes = 10485760\n");
    let mut alice = Client::user(&server, "alice", "phone");
    let (url, _) = slot(&mut alice, "small.bin", 10 << 20, None);
    let path = &url[url.find("/upload/").unwrap()..];
    // 100 MB announced: the answer comes without the body being sent.
    let mut tls = tls_connect(&server, server.https.unwrap(), &[b"http/1.1"]);
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        100u64 << 20
    );
    tls.write_all(head.as_bytes()).unwrap();
    let mut status = [0u8; 12];
    tls.read_exact(&mut status).unwrap();
    assert_eq!(&status, b"HTTP/1.1 413");
    // Chunked, with no length at all.
    let reply = raw(
        &server,
        &format!(
            "PUT {path} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ),
    );
    assert!(reply.starts_with("HTTP/1.1 411"), "{reply}");
    // The slot still takes the upload it was made for.
    let agent = agent(&server);
    assert_eq!(
        put(&agent, &url, "application/octet-stream", &data(10 << 20)),
        201
    );
}

#[test]
fn slow_headers_and_unread_downloads_are_cut_off() {
    let server = server_with("[modules.http]\nheader_timeout_secs = 1\nidle_timeout_secs = 2\n");
    // Slow loris: a header line, then nothing.
    let mut tls = tls_connect(&server, server.https.unwrap(), &[b"http/1.1"]);
    tls.write_all(b"GET /.well-known/host-meta HTTP/1.1\r\nHost: local")
        .unwrap();
    let mut rest = Vec::new();
    // The client's own read timeout (5 s) is far beyond the server's 1 s.
    let ended = tls.read_to_end(&mut rest);
    let held = matches!(&ended, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
    assert!(!held, "the server kept a slow header open: {ended:?}");
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    // A download nobody reads: the connection goes, the server goes on.
    let mut alice = Client::user(&server, "alice", "phone");
    let (put_url, get_url) = slot(&mut alice, "big.bin", 20 << 20, None);
    let agent = agent(&server);
    assert_eq!(
        put(
            &agent,
            &put_url,
            "application/octet-stream",
            &data(20 << 20)
        ),
        201
    );
    let path = &get_url[get_url.find("/upload/").unwrap()..];
    let mut stalled = tls_connect(&server, server.https.unwrap(), &[b"http/1.1"]);
    stalled
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log().contains("idle, closing it") {
        assert!(
            Instant::now() < deadline,
            "the stalled download was never closed"
        );
        // Meanwhile, others are served.
        let got = agent.get(&get_url).call().unwrap();
        assert_eq!(got.status().as_u16(), 200);
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(stalled);
    alice.sync();
}

#[test]
fn thousands_of_slot_requests_get_answers_and_no_slots() {
    let server = server_with(
        "[modules.upload]\nmax_slots = 5\n[limits]\nstanzas_per_sec = 100000\nbytes_per_sec = 100000000\n",
    );
    let mut alice = Client::user(&server, "alice", "phone");
    // In batches that fit the client's queue (which has its own limit).
    let (n, per_batch) = (2000, 500);
    let (mut slots, mut refused) = (0, 0);
    for b in 0..n / per_batch {
        let mut batch = String::new();
        for i in 0..per_batch {
            batch.push_str(&format!(
                "<iq type='get' to='{SERVICE}' id='s{b}-{i}'><request xmlns='{UPLOAD}' \
                 filename='f{i}' size='1'/></iq>"
            ));
        }
        alice.send(&batch);
        for _ in 0..per_batch {
            let reply = alice.recv();
            match reply.attr("type") {
                Some("result") => slots += 1,
                Some("error") => refused += 1,
                other => panic!("{other:?}: {reply}"),
            }
        }
    }
    assert_eq!((slots, refused), (5, n - 5));
    // Others can still ask.
    let mut bob = Client::user(&server, "bob", "pc");
    slot(&mut bob, "ok.bin", 1, None);
}
