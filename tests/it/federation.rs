//! Federation between two real servers: `a.test` and `b.test`, each on its own loopback
//! address (all of 127/8 is loopback on Linux) with port 5269, each told where the other is
//! by `federation.hosts`. Messages, presence subscriptions and iqs cross (over STARTTLS, and
//! over direct TLS with `hosts_tls`); dialback with the
//! self-signed certificates each makes; SASL EXTERNAL with certificates of a shared test
//! authority; refusal when valid certificates are required; bounces when the other server is
//! not there or does not answer; the archive and carbons with a remote contact; a remote
//! subscription across restarts of either server; stream management on the links, and what a
//! link that dies had not had acknowledged going out again, once; what waits for another
//! server (queued, or written and not acknowledged) over a restart or a crash, and nothing
//! twice after one; and what a server that misbehaves gets.

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
fn federation(me: IpAddr, other: &str, there: SocketAddr, more: &str) -> String {
    let enabled = match more.contains("enabled") {
        true => "",
        false => "enabled = true\n",
    };
    let timeout = match more.contains("connect_timeout_secs") {
        true => "",
        false => "connect_timeout_secs = 10\n",
    };
    format!(
        "[federation]\n{enabled}listen = [\"{me}:5269\"]\n\
         hosts = {{ \"{other}\" = \"{there}\" }}\n{timeout}{more}\n"
    )
}

/// `a.test` and `b.test` federating, with users alice@a.test and bob@b.test; `fa` and `fb` go
/// into their `[federation]` sections, `extra_a` and `extra_b` after them.
pub fn servers(fa: &str, fb: &str, extra_a: &str, extra_b: &str) -> Pair {
    let (ia, ib) = addresses();
    let a = TestServer::start_domain(
        "a.test",
        &format!(
            "{}{extra_a}",
            federation(ia, "b.test", SocketAddr::new(ib, 5269), fa)
        ),
    );
    let b = TestServer::start_domain(
        "b.test",
        &format!(
            "{}{extra_b}",
            federation(ib, "a.test", SocketAddr::new(ia, 5269), fb)
        ),
    );
    a.add_users(&["alice"]);
    b.add_users(&["bob"]);
    Pair { a, b }
}

/// `a.test` at `me` with user alice, whose link to b.test goes to `there` (a server the test
/// plays); `more` goes into its `[federation]` section.
fn a_facing(me: IpAddr, there: SocketAddr, more: &str) -> TestServer {
    let a = TestServer::start_domain("a.test", &federation(me, "b.test", there, more));
    a.add_users(&["alice"]);
    a
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
    // Each acknowledges what the other sends (XEP-0198), once dialback accepted it.
    p.a.wait_for_log(
        "b.test acknowledges what a.test sends (stream management)",
        1,
        TIMEOUT,
    );
    p.b.wait_for_log(
        "a.test acknowledges what b.test sends (stream management)",
        1,
        TIMEOUT,
    );

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

/// XEP-0368: each server listens for TLS from the first byte only, and knows the other's
/// address for that (`hosts_tls`, as an `_xmpps-server` SRV record would say): messages
/// cross both ways over direct TLS.
#[test]
fn messages_cross_over_direct_tls_both_ways() {
    let (ia, ib) = addresses();
    let fed = |me: IpAddr, other: &str, there: IpAddr| {
        format!(
            "[federation]\nenabled = true\nlisten = []\nlisten_tls = [\"{me}:5270\"]\n\
             hosts_tls = {{ \"{other}\" = \"{there}:5270\" }}\nconnect_timeout_secs = 10\n"
        )
    };
    let a = TestServer::start_domain("a.test", &fed(ia, "b.test", ib));
    let b = TestServer::start_domain("b.test", &fed(ib, "a.test", ia));
    a.add_users(&["alice"]);
    b.add_users(&["bob"]);
    let mut alice = Client::online(&a, "alice", "phone");
    let mut bob = Client::online(&b, "bob", "laptop");
    alice.send_message("bob@b.test", "chat", "over direct tls");
    bob.expect(
        "<message from='alice@a.test/phone' to='bob@b.test' type='chat'><body>over direct tls</body></message>",
    );
    bob.send_message("alice@a.test/phone", "chat", "and back");
    alice.expect("<message from='bob@b.test/laptop' type='chat'><body>and back</body></message>");
    // Nothing listens for STARTTLS: both links are TLS from the first byte.
    b.wait_for_log("direct TLS: true", 1, TIMEOUT);
    a.wait_for_log("direct TLS: true", 1, TIMEOUT);
    a.wait_for_log("b.test accepted a.test (dialback)", 1, TIMEOUT);
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

/// A certificate authority for tests, with its certificate in `ca.pem`.
struct Authority {
    dir: tempfile::TempDir,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Authority {
    fn new() -> Authority {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "hearth test authority");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), issuer.pem()).unwrap();
        Authority { dir, issuer }
    }

    fn ca(&self) -> String {
        self.dir.path().join("ca.pem").display().to_string()
    }

    /// Test clients of `server` trust its certificate by the file it would have made: this
    /// authority's certificate serves as well.
    fn trusted_by_clients_of(&self, server: &TestServer) {
        std::fs::copy(self.ca(), server.data_dir().join("cert.pem")).unwrap();
    }

    /// A certificate for `domain`, as `[tls]` lines of a config, and its PEM parts.
    fn issue(&self, domain: &str) -> (String, String, String) {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose};
        let mut params = CertificateParams::new(vec![domain.to_owned()]).unwrap();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.path().join(format!("{domain}.pem")),
            self.dir.path().join(format!("{domain}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let tls = format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            c.display().to_string(),
            k.display().to_string()
        );
        (tls, cert.pem(), key.serialize_pem())
    }
}

#[test]
fn certificates_of_a_trusted_authority_authenticate_with_sasl_external() {
    let ca = Authority::new();
    let trust = format!("ca_files = [{:?}]", ca.ca());
    let p = servers(&trust, &trust, &ca.issue("a.test").0, &ca.issue("b.test").0);
    ca.trusted_by_clients_of(&p.a);
    ca.trusted_by_clients_of(&p.b);
    let mut alice = Client::online(&p.a, "alice", "phone");
    let mut bob = Client::online(&p.b, "bob", "laptop");
    alice.send_message("bob@b.test", "chat", "signed");
    bob.expect("<message from='alice@a.test/phone'><body>signed</body></message>");
    bob.send_message("alice@a.test", "chat", "sealed");
    alice.expect("<message from='bob@b.test/laptop'><body>sealed</body></message>");
    p.a.wait_for_log("b.test accepted a.test (certificate)", 1, TIMEOUT);
    p.b.wait_for_log("a.test accepted b.test (certificate)", 1, TIMEOUT);
    // Required valid certificates are there: still accepted.
    let p = servers(
        &format!("{trust}\nrequire_valid_certificates = true"),
        &format!("{trust}\nrequire_valid_certificates = true"),
        &ca.issue("a.test").0,
        &ca.issue("b.test").0,
    );
    ca.trusted_by_clients_of(&p.a);
    ca.trusted_by_clients_of(&p.b);
    let mut alice = Client::online(&p.a, "alice", "phone");
    let mut bob = Client::online(&p.b, "bob", "laptop");
    alice.send_message("bob@b.test", "chat", "signed");
    bob.expect("<message from='alice@a.test/phone'><body>signed</body></message>");
}

/// A server played by the test: TCP, the stream, STARTTLS, TLS trusting `trust`, with a
/// client certificate if given; what it reads is kept as text.
struct Peer {
    tcp: std::net::TcpStream,
    tls: Option<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>>,
    got: String,
}

impl Peer {
    fn connect(
        addr: SocketAddr,
        from: &str,
        to: &str,
        trust: &str,
        cert: Option<(String, String)>,
    ) -> Peer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut p = Peer {
            tcp,
            tls: None,
            got: String::new(),
        };
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
             xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
             from='{from}' to='{to}' version='1.0'>"
        );
        p.send(&header);
        p.until("</stream:features>");
        p.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        p.until("<proceed");
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(trust).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match cert {
            Some((c, k)) => {
                let chain = CertificateDer::pem_slice_iter(c.as_bytes())
                    .map(|c| c.unwrap())
                    .collect();
                builder
                    .with_client_auth_cert(
                        chain,
                        PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap(),
                    )
                    .unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        let conn = rustls::ClientConnection::new(
            std::sync::Arc::new(config),
            ServerName::try_from(to.to_owned()).unwrap(),
        )
        .unwrap();
        p.tls = Some(rustls::StreamOwned::new(conn, p.tcp.try_clone().unwrap()));
        p.got.clear();
        p.send(&header);
        p.until("</stream:features>");
        p
    }

    fn send(&mut self, s: &str) {
        use std::io::Write;
        match &mut self.tls {
            Some(t) => t.write_all(s.as_bytes()).unwrap(),
            None => self.tcp.write_all(s.as_bytes()).unwrap(),
        }
    }

    /// Reads until `needle` has come (or the connection ends, or five seconds pass: then
    /// it panics with what came).
    #[track_caller]
    fn until(&mut self, needle: &str) -> String {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        while !self.got.contains(needle) {
            let n = match &mut self.tls {
                Some(t) => t.read(&mut buf),
                None => self.tcp.read(&mut buf),
            };
            match n {
                Ok(n) if n > 0 => self.got.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => panic!("no {needle:?} in {:?}", self.got),
            }
        }
        std::mem::take(&mut self.got)
    }
}

#[test]
fn a_server_that_has_not_authenticated_cannot_send_stanzas() {
    let p = servers("", "", "", "");
    let mut alice = Client::online(&p.a, "alice", "phone");
    let trust = p.a.data_dir().join("cert.pem").display().to_string();
    let mut evil = Peer::connect(p.a.s2s.unwrap(), "evil.test", "a.test", &trust, None);
    evil.send("<message from='mallory@evil.test' to='alice@a.test'><body>spoof</body></message>");
    evil.until("<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'");
    alice.sync();
}

#[test]
fn a_server_cannot_speak_for_a_domain_it_did_not_prove() {
    let ca = Authority::new();
    let trust = format!("ca_files = [{:?}]", ca.ca());
    let (a_tls, _, _) = ca.issue("a.test");
    let p = servers(&trust, "", &a_tls, "");
    ca.trusted_by_clients_of(&p.a);
    let mut alice = Client::online(&p.a, "alice", "phone");
    let (_, cert, key) = ca.issue("evil.test");
    let a_ca = ca.ca();
    let mut evil = Peer::connect(
        p.a.s2s.unwrap(),
        "evil.test",
        "a.test",
        &a_ca,
        Some((cert, key)),
    );
    evil.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>");
    evil.until("<success");
    evil.send(
        "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
         from='evil.test' to='a.test' version='1.0'>",
    );
    evil.until("</stream:features>");
    // What it may say, arrives; what it says for b.test ends the stream.
    evil.send("<message from='mallory@evil.test' to='alice@a.test'><body>mine</body></message>");
    alice.expect("<message from='mallory@evil.test'><body>mine</body></message>");
    evil.send("<message from='bob@b.test' to='alice@a.test'><body>forged</body></message>");
    evil.until("<invalid-from xmlns='urn:ietf:params:xml:ns:xmpp-streams'");
    alice.sync();
}

#[test]
fn a_dialback_flood_ends_the_connection() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = silent.local_addr().unwrap();
    let hosts: Vec<String> = (0..10)
        .map(|i| format!("\"f{i}.test\" = \"{at}\""))
        .collect();
    let (ia, _) = addresses();
    let a = TestServer::start_domain(
        "a.test",
        &format!(
            "[federation]\nenabled = true\nlisten = [\"{ia}:5269\"]\nhosts = {{ {} }}\n",
            hosts.join(", ")
        ),
    );
    let trust = a.data_dir().join("cert.pem").display().to_string();
    let mut flood = Peer::connect(a.s2s.unwrap(), "f0.test", "a.test", &trust, None);
    // Eight verifications may wait at once (the default); the ninth is one too many.
    for i in 0..9 {
        flood.send(&format!(
            "<db:result from='f{i}.test' to='a.test'>key{i}</db:result>"
        ));
    }
    flood.until("<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'");
    a.add_users(&["alice"]);
    assert_server_ok(&a, "alice");
    drop(silent);
}

const MAM: &str = "urn:xmpp:mam:2";
const SID: &str = "urn:xmpp:sid:0";
const CARBONS: &str = "urn:xmpp:carbons:2";
const FORWARD: &str = "urn:xmpp:forward:0";

/// `c`'s account archive of messages with `with`, oldest first: (archive id, the message).
#[track_caller]
fn archive_with(c: &mut Client, with: &str) -> Vec<(String, Element)> {
    let id = c.send_iq(
        "type='set'",
        &format!(
            "<query xmlns='{MAM}' queryid='q'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>\
             <field var='with'><value>{with}</value></field></x></query>"
        ),
    );
    let mut items = Vec::new();
    loop {
        let el = c.recv();
        if el.is("iq", ns::CLIENT) && el.attr("id") == Some(id.as_str()) {
            assert_matches(&el, "<iq type='result'/>");
            return items;
        }
        let r = el.get("result", MAM);
        let m = r.get("forwarded", FORWARD).get("message", ns::CLIENT);
        items.push((r.attr("id").unwrap_or_default().to_owned(), m.clone()));
    }
}

/// The stanza-ids of `m`, as (by, id).
fn stanza_ids(m: &Element) -> Vec<(String, String)> {
    m.children
        .iter()
        .filter(|c| c.is("stanza-id", SID))
        .map(|c| {
            let a = |n| c.attr(n).unwrap_or_default().to_owned();
            (a("by"), a("id"))
        })
        .collect()
}

#[track_caller]
fn enable_carbons(c: &mut Client) {
    let r = c.iq("type='set'", &format!("<enable xmlns='{CARBONS}'/>"));
    assert_matches(&r, "<iq type='result'/>");
}

/// A message between alice and bob, on different servers: each one's archive holds it once,
/// the recipient's live copy carries its archive's stanza-id and no other, the sender's other
/// resource gets the <sent/> carbon and the recipient's other resource the <received/> one.
/// A stanza-id the other server forged in the name of the recipient's archive is dropped.
#[test]
fn the_archive_and_carbons_hold_messages_with_a_remote_contact() {
    let p = servers("", "", "", "");
    let mut phone = Client::online(&p.a, "alice", "phone");
    let mut laptop = Client::online(&p.b, "bob", "laptop");
    let second = |server: &TestServer, user: &str, resource: &str| {
        let mut c = Client::user(server, user, resource);
        enable_carbons(&mut c);
        c.send("<presence/>");
        c.settle();
        c
    };
    let mut tablet = second(&p.a, "alice", "tablet");
    let mut desk = second(&p.b, "bob", "desk");
    phone.settle();
    laptop.settle();

    // alice's phone to bob's laptop, with a stanza-id in the name of bob's archive that a
    // (which leaves stanza-ids of other servers alone) passes on and b must not believe.
    phone.send(&format!(
        "<message to='bob@b.test/laptop' type='chat' id='m1'><body>one</body>\
         <stanza-id xmlns='{SID}' by='bob@b.test' id='forged'/></message>"
    ));
    let got = laptop.expect(
        "<message from='alice@a.test/phone' to='bob@b.test/laptop' type='chat' id='m1'><body>one</body></message>",
    );
    let sids = stanza_ids(&got);
    assert_eq!(sids.len(), 1, "{got}");
    assert_eq!(sids[0].0, "bob@b.test");
    assert_ne!(sids[0].1, "forged");
    let bob_one = sids[0].1.clone();
    tablet.expect(&format!(
        "<message from='alice@a.test' to='alice@a.test/tablet'><sent xmlns='{CARBONS}'>\
         <forwarded xmlns='{FORWARD}'><message xmlns='jabber:client' from='alice@a.test/phone' to='bob@b.test/laptop' \
         id='m1'><body>one</body></message></forwarded></sent></message>"
    ));
    desk.expect(&format!(
        "<message from='bob@b.test' to='bob@b.test/desk'><received xmlns='{CARBONS}'>\
         <forwarded xmlns='{FORWARD}'><message xmlns='jabber:client' from='alice@a.test/phone' to='bob@b.test/laptop' \
         id='m1'><body>one</body></message></forwarded></received></message>"
    ));

    // bob's laptop answers alice's bare JID: both of her resources have priority 0, so both
    // get the message itself, with her archive's stanza-id.
    laptop.send("<message to='alice@a.test' type='chat' id='m2'><body>two</body></message>");
    let on_phone = phone.expect(
        "<message from='bob@b.test/laptop' to='alice@a.test' type='chat' id='m2'><body>two</body></message>",
    );
    let on_tablet = tablet
        .expect("<message from='bob@b.test/laptop' type='chat' id='m2'><body>two</body></message>");
    let sids = stanza_ids(&on_phone);
    assert_eq!(sids.len(), 1, "{on_phone}");
    assert_eq!(sids[0].0, "alice@a.test");
    assert_eq!(stanza_ids(&on_tablet), sids, "one archive entry for both");
    let alice_two = sids[0].1.clone();
    desk.expect(&format!(
        "<message from='bob@b.test' to='bob@b.test/desk'><sent xmlns='{CARBONS}'>\
         <forwarded xmlns='{FORWARD}'><message xmlns='jabber:client' from='bob@b.test/laptop' to='alice@a.test' \
         id='m2'><body>two</body></message></forwarded></sent></message>"
    ));

    // Both archives hold both messages, once, in order; the received ones under the ids
    // their recipients saw.
    let a = archive_with(&mut phone, "bob@b.test");
    let bodies: Vec<&str> = a
        .iter()
        .map(|(_, m)| m.get("body", ns::CLIENT).text.as_str())
        .collect();
    assert_eq!(bodies, ["one", "two"], "{a:?}");
    assert_matches(
        &a[0].1,
        "<message from='alice@a.test/phone' to='bob@b.test/laptop'/>",
    );
    assert_eq!(a[1].0, alice_two);
    let b = archive_with(&mut laptop, "alice@a.test");
    let bodies: Vec<&str> = b
        .iter()
        .map(|(_, m)| m.get("body", ns::CLIENT).text.as_str())
        .collect();
    assert_eq!(bodies, ["one", "two"], "{b:?}");
    assert_eq!(b[0].0, bob_one);
    assert!(
        stanza_ids(&b[0].1).is_empty(),
        "the forged stanza-id is not archived: {}",
        b[0].1
    );
}

/// Reads until a stanza matching `want` comes, skipping the unavailable presence of `gone`
/// (a server that stops may or may not manage to say its users left).
#[track_caller]
fn expect_past_departures(c: &mut Client, want: &str, gone: &str) -> Element {
    let want = pattern(want);
    let left = pattern(&format!("<presence type='unavailable' from='{gone}'/>"));
    loop {
        let el = c.recv();
        if el.matches(&want) {
            return el;
        }
        assert!(el.matches(&left), "{}: expected {want}, got {el}", c.jid);
    }
}

/// A mutual subscription between alice on a and bob on b: after b restarts, bob's roster
/// still has alice, and each gets the other's presence when bob comes back (b broadcasts
/// bob's and probes alice's); the same after a restarts.
#[test]
fn a_subscription_with_a_remote_contact_survives_a_restart_of_either_server() {
    let mut p = servers("", "", "", "");
    let mut alice = Client::online(&p.a, "alice", "phone");
    let mut bob = Client::online(&p.b, "bob", "laptop");
    alice.send("<presence type='subscribe' to='bob@b.test'/>");
    bob.expect("<presence type='subscribe' from='alice@a.test'/>");
    bob.send("<presence type='subscribed' to='alice@a.test'/>");
    bob.send("<presence type='subscribe' to='alice@a.test'/>");
    alice.expect_unordered(&[
        "<iq type='set'><query xmlns='jabber:iq:roster'><item jid='bob@b.test' ask='subscribe'/></query></iq>",
        "<iq type='set'><query xmlns='jabber:iq:roster'><item jid='bob@b.test' subscription='to'/></query></iq>",
        "<presence type='subscribed' from='bob@b.test'/>",
        "<presence from='bob@b.test/laptop'/>",
        "<presence type='subscribe' from='bob@b.test'/>",
    ]);
    alice.send("<presence type='subscribed' to='bob@b.test'/>");
    alice.expect("<iq type='set'><query xmlns='jabber:iq:roster'><item jid='bob@b.test' subscription='both'/></query></iq>");
    bob.expect_unordered(&[
        "<iq type='set'><query xmlns='jabber:iq:roster'><item jid='alice@a.test' subscription='from'/></query></iq>",
        "<iq type='set'><query xmlns='jabber:iq:roster'><item jid='alice@a.test' subscription='from' ask='subscribe'/></query></iq>",
        "<iq type='set'><query xmlns='jabber:iq:roster'><item jid='alice@a.test' subscription='both'/></query></iq>",
        "<presence type='subscribed' from='alice@a.test'/>",
        "<presence from='alice@a.test/phone'/>",
    ]);

    let both = |c: &mut Client, contact: &str| {
        let r = c.iq("type='get'", "<query xmlns='jabber:iq:roster'/>");
        assert_matches(
            &r,
            &format!(
                "<iq type='result'><query xmlns='jabber:iq:roster'><item jid='{contact}' \
                 subscription='both' ask='{NONE}'/></query></iq>"
            ),
        );
    };

    drop(bob);
    p.b.restart();
    let mut bob = Client::user(&p.b, "bob", "laptop");
    both(&mut bob, "alice@a.test");
    bob.send("<presence/>");
    bob.expect_unordered(&[
        "<presence from='bob@b.test/laptop'/>",
        "<presence from='alice@a.test/phone'/>",
    ]);
    expect_past_departures(
        &mut alice,
        "<presence from='bob@b.test/laptop' type='{none}'/>",
        "bob@b.test/laptop",
    );

    drop(alice);
    p.a.restart();
    let mut alice = Client::user(&p.a, "alice", "phone");
    both(&mut alice, "bob@b.test");
    alice.send("<presence/>");
    alice.expect_unordered(&[
        "<presence from='alice@a.test/phone'/>",
        "<presence from='bob@b.test/laptop'/>",
    ]);
    expect_past_departures(
        &mut bob,
        "<presence from='alice@a.test/phone' type='{none}'/>",
        "alice@a.test/phone",
    );
    // And messages still cross both ways.
    alice.send_message("bob@b.test", "chat", "back");
    bob.expect("<message from='alice@a.test/phone'><body>back</body></message>");
    bob.send_message("alice@a.test", "chat", "welcome");
    alice.expect("<message from='bob@b.test/laptop'><body>welcome</body></message>");
}

/// b.test played by the test, for a's links to it: each connection is accepted, secured with
/// STARTTLS, offers dialback and stream management, and says any dialback key is valid.
struct FakeServer {
    listener: TcpListener,
    tls: std::sync::Arc<rustls::ServerConfig>,
}

/// One of a's connections to the fake server, authenticated and ready.
struct FakeLink {
    tls: rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>,
    got: String,
}

impl FakeServer {
    fn new(ip: IpAddr, ca: &Authority) -> FakeServer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let (_, cert, key) = ca.issue("b.test");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(|c| c.unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap();
        FakeServer {
            listener: TcpListener::bind(SocketAddr::new(ip, 0)).unwrap(),
            tls: std::sync::Arc::new(config),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }

    /// Accepts a's next connection and takes it as far as a's first stanzas.
    #[track_caller]
    fn accept(&self) -> FakeLink {
        self.accept_offering(&format!("<sm xmlns='{SM}'/>"))
    }

    /// The same, offering `more` features besides dialback.
    #[track_caller]
    fn accept_offering(&self, more: &str) -> FakeLink {
        use std::io::{Read, Write};
        self.listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + TIMEOUT;
        let mut tcp = loop {
            match self.listener.accept() {
                Ok((tcp, _)) => break tcp,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "a did not connect again within {TIMEOUT:?}"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        tcp.set_nonblocking(false).unwrap();
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
             xmlns:stream='http://etherx.jabber.org/streams' \
             xmlns:db='jabber:server:dialback' from='b.test' to='a.test' id='s1' version='1.0'>";
        let mut got = String::new();
        let mut buf = [0u8; 4096];
        while !got.contains("<stream:stream") {
            let n = tcp.read(&mut buf).unwrap();
            assert!(n > 0, "a closed the connection: {got}");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        tcp.write_all(
            format!(
                "{header}<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>\
                 <required/></starttls></stream:features>"
            )
            .as_bytes(),
        )
        .unwrap();
        while !got.contains("<starttls") {
            let n = tcp.read(&mut buf).unwrap();
            assert!(n > 0, "a closed the connection: {got}");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        tcp.write_all(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .unwrap();
        let conn = rustls::ServerConnection::new(self.tls.clone()).unwrap();
        let mut link = FakeLink {
            tls: rustls::StreamOwned::new(conn, tcp),
            got: String::new(),
        };
        link.until("<stream:stream");
        link.send(&format!(
            "{header}<stream:features><dialback xmlns='urn:xmpp:features:dialback'/>\
             {more}</stream:features>"
        ));
        link.until("</result>");
        link.send("<db:result from='b.test' to='a.test' type='valid'/>");
        link
    }
}

impl FakeLink {
    fn send(&mut self, s: &str) {
        use std::io::Write;
        self.tls.write_all(s.as_bytes()).unwrap();
        self.tls.flush().unwrap();
    }

    /// Reads until `needle` has come; returns what came up to and including it.
    #[track_caller]
    fn until(&mut self, needle: &str) -> String {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        while !self.got.contains(needle) {
            match self.tls.read(&mut buf) {
                Ok(n) if n > 0 => self.got.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => panic!("no {needle:?} in {:?}", self.got),
            }
        }
        let end = self.got.find(needle).unwrap() + needle.len();
        let rest = self.got.split_off(end);
        std::mem::replace(&mut self.got, rest)
    }

    /// Ends the connection without a word: the other server crashed, or lost its network.
    fn die(self) {
        let _ = self.tls.sock.shutdown(std::net::Shutdown::Both);
    }
}

/// A message written to a link that then dies is not lost: the other server offered stream
/// management and never acknowledged it, so it goes out again over a new link; acknowledged
/// there, it is done. One whose second link dies unacknowledged too goes back to its sender.
#[test]
fn what_a_dead_link_did_not_get_acknowledged_goes_out_again_once() {
    let ca = Authority::new();
    let (ia, ib) = addresses();
    let b = FakeServer::new(ib, &ca);
    let a = a_facing(ia, b.addr(), "");
    let mut alice = Client::online(&a, "alice", "phone");

    alice.send_message("bob@b.test", "chat", "one");
    let mut link = b.accept();
    link.until("<enable xmlns='urn:xmpp:sm:3'/>");
    link.send("<enabled xmlns='urn:xmpp:sm:3'/>");
    assert!(link.until("</message>").contains("<body>one</body>"));
    link.until("<r xmlns='urn:xmpp:sm:3'/>");
    link.die();

    // The second link: "one" again, first; acknowledged.
    let mut link = b.accept();
    link.until("<enable xmlns='urn:xmpp:sm:3'/>");
    link.send("<enabled xmlns='urn:xmpp:sm:3'/>");
    assert!(link.until("</message>").contains("<body>one</body>"));
    link.until("<r xmlns='urn:xmpp:sm:3'/>");
    link.send("<a xmlns='urn:xmpp:sm:3' h='1'/>");
    a.wait_for_log(
        "1 stanzas for b.test go out again over a new link",
        1,
        TIMEOUT,
    );

    // "two" on the same link, never acknowledged: the third link carries it once more, and
    // when that one dies too, alice hears of it.
    let id = alice.send_message("bob@b.test", "chat", "two");
    assert!(link.until("</message>").contains("<body>two</body>"));
    link.until("<r xmlns='urn:xmpp:sm:3'/>");
    link.die();
    let mut link = b.accept();
    link.until("<enable xmlns='urn:xmpp:sm:3'/>");
    link.send("<enabled xmlns='urn:xmpp:sm:3'/>");
    let again = link.until("</message>");
    assert!(
        again.contains("<body>two</body>") && !again.contains("<body>one"),
        "{again}"
    );
    link.until("<r xmlns='urn:xmpp:sm:3'/>");
    link.die();
    alice.expect(&format!(
        "<message type='error' id='{id}' from='bob@b.test'><error type='wait'>\
         <remote-server-timeout xmlns='{}'/></error></message>",
        ns::STANZAS
    ));
    // Nothing else came back: "one" was delivered.
    alice.sync();
    assert_server_ok(&a, "alice");
}

/// The same with a server that answers stream management with a wrong count: the link ends,
/// and what it had not acknowledged goes out again.
#[test]
fn an_acknowledgement_of_more_than_was_sent_ends_the_link() {
    let ca = Authority::new();
    let (ia, ib) = addresses();
    let b = FakeServer::new(ib, &ca);
    let a = a_facing(ia, b.addr(), "");
    let mut alice = Client::online(&a, "alice", "phone");
    alice.send_message("bob@b.test", "chat", "one");
    let mut link = b.accept();
    link.until("<enable xmlns='urn:xmpp:sm:3'/>");
    link.send("<enabled xmlns='urn:xmpp:sm:3'/>");
    link.until("<r xmlns='urn:xmpp:sm:3'/>");
    link.send("<a xmlns='urn:xmpp:sm:3' h='5'/>");
    let mut link = b.accept();
    link.until("<enable xmlns='urn:xmpp:sm:3'/>");
    link.send("<enabled xmlns='urn:xmpp:sm:3'/>");
    assert!(link.until("</message>").contains("<body>one</body>"));
    link.until("<r xmlns='urn:xmpp:sm:3'/>");
    link.send("<a xmlns='urn:xmpp:sm:3' h='1'/>");
    a.wait_for_log(
        "it acknowledged 5 stanzas, 1 were unacknowledged",
        1,
        TIMEOUT,
    );
    alice.sync();
}

const SM: &str = "urn:xmpp:sm:3";

/// A listener that accepts a's connection and never says a word: a's stanzas wait in the
/// link while it connects.
struct Silent {
    listener: TcpListener,
    held: Vec<std::net::TcpStream>,
}

impl Silent {
    fn new(addr: SocketAddr) -> Silent {
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        Silent {
            listener,
            held: Vec::new(),
        }
    }

    /// Waits for a connection and holds it open.
    #[track_caller]
    fn accept(&mut self) {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            match self.listener.accept() {
                Ok((tcp, _)) => return self.held.push(tcp),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no connection within {TIMEOUT:?}"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    }
}

/// alice, just bound, enables stream management, sends `bodies` to bob@b.test and gets each
/// acknowledged: a has handled them.
fn send_acknowledged(alice: &mut Client, bodies: &[&str]) {
    alice.send(&format!("<enable xmlns='{SM}'/>"));
    alice.expect(&format!("<enabled xmlns='{SM}'/>"));
    for body in bodies {
        alice.send_message("bob@b.test", "chat", body);
    }
    alice.send(&format!("<r xmlns='{SM}'/>"));
    alice.expect(&format!("<a xmlns='{SM}' h='{}'/>", bodies.len()));
}

/// Messages a accepted for b.test, and acknowledged to alice's client, while b.test's address
/// accepts connections and says nothing: a stops cleanly with them still waiting in the link,
/// b.test's real server takes the address, a starts again, and bob gets each message once, in
/// order, before what alice sends next.
#[test]
fn messages_waiting_for_another_server_survive_a_restart() {
    waiting_messages_reach_b_after(|a, alice| {
        drop(alice);
        let status = a.stop();
        assert!(status.success(), "hearth exited with {status} on SIGTERM");
        a.wait_for_log(
            "3 stanzas from a.test wait for b.test; they go out after the next start",
            1,
            TIMEOUT,
        );
    });
}

/// The same with a crash: a is killed (SIGKILL) with alice's acknowledged messages still
/// waiting in the link, and bob gets each once, in order, when a is back.
#[test]
fn messages_waiting_for_another_server_survive_a_crash() {
    waiting_messages_reach_b_after(|a, alice| {
        a.kill_hard();
        drop(alice);
    });
}

/// alice's three acknowledged messages wait in a's link to a b.test that accepts and says
/// nothing; `stop` ends a (and alice's client); b.test's real server then takes the address
/// and a starts again: bob gets each message once, in order, before what alice sends next.
fn waiting_messages_reach_b_after(stop: impl FnOnce(&mut TestServer, Client)) {
    let (ia, ib) = addresses();
    let mut silent = Silent::new(SocketAddr::new(ib, 5269));
    let mut a = TestServer::start_domain(
        "a.test",
        &federation(
            ia,
            "b.test",
            SocketAddr::new(ib, 5269),
            "connect_timeout_secs = 60",
        ),
    );
    a.add_users(&["alice"]);
    let mut alice = Client::user(&a, "alice", "phone");
    send_acknowledged(&mut alice, &["m1", "m2", "m3"]);
    silent.accept();
    stop(&mut a, alice);
    drop(silent);

    let b = TestServer::start_domain(
        "b.test",
        &federation(ib, "a.test", SocketAddr::new(ia, 5269), ""),
    );
    b.add_users(&["bob"]);
    let mut bob = Client::online(&b, "bob", "laptop");
    a.restart();
    a.wait_for_log(
        "3 stanzas that waited for other servers go out again",
        1,
        TIMEOUT,
    );
    for body in ["m1", "m2", "m3"] {
        bob.expect(&format!(
            "<message from='alice@a.test/phone' to='bob@b.test' type='chat'><body>{body}</body></message>"
        ));
    }
    // Nothing came twice: the next message bob gets is the one alice sends now.
    let mut alice = Client::online(&a, "alice", "phone");
    alice.send_message("bob@b.test", "chat", "after");
    bob.expect("<message from='alice@a.test/phone'><body>after</body></message>");
    assert_server_ok(&a, "alice");
}

/// Sends alice a message to herself, stored offline, and waits for its acknowledgement (the
/// `h`-th stanza of her stream), which comes once it is durable: the store's writer commits
/// in order, so everything submitted before it is durable too.
fn after_earlier_writes(alice: &mut Client, h: u32) {
    alice.send_message("alice@a.test", "chat", "sync");
    alice.send(&format!("<r xmlns='{SM}'/>"));
    alice.expect(&format!("<a xmlns='{SM}' h='{h}'/>"));
}

/// What b.test acknowledged on the link (XEP-0198) leaves a's store: a killed (SIGKILL) after
/// it and started again sends none of it again.
#[test]
fn what_the_other_server_acknowledged_is_not_sent_again_after_a_crash() {
    let mut p = servers("", "", "", "");
    let mut bob = Client::online(&p.b, "bob", "laptop");
    let mut alice = Client::user(&p.a, "alice", "phone");
    send_acknowledged(&mut alice, &["m1", "m2", "m3"]);
    for body in ["m1", "m2", "m3"] {
        bob.expect(&format!(
            "<message from='alice@a.test/phone' type='chat'><body>{body}</body></message>"
        ));
    }
    p.a.wait_for_log("b.test has handled 3 stanzas from a.test", 1, TIMEOUT);
    // The rows b.test's acknowledgement removed are gone once this is acknowledged.
    after_earlier_writes(&mut alice, 4);
    p.a.kill_hard();
    drop(alice);

    p.a.restart();
    let mut alice = Client::online_expecting(
        &p.a,
        "alice",
        "phone",
        &["<message type='chat'><body>sync</body></message>"],
    );
    alice.send_message("bob@b.test", "chat", "after");
    bob.expect("<message from='alice@a.test/phone'><body>after</body></message>");
    let log = p.a.log();
    assert!(!log.contains("go out again"), "{log}");
}

/// b.test's own connection to a, authenticated with a certificate of `ca` (SASL EXTERNAL):
/// how the server the test plays answers what a asks it.
fn inbound_from_b(a: &TestServer, ca: &Authority) -> Peer {
    let (_, cert, key) = ca.issue("b.test");
    let trust = a.cert_path().display().to_string();
    let mut b = Peer::connect(
        a.s2s.unwrap(),
        "b.test",
        "a.test",
        &trust,
        Some((cert, key)),
    );
    b.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>=</auth>");
    b.until("<success");
    b.send(
        "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
         from='b.test' to='a.test' version='1.0'>",
    );
    b.until("</stream:features>");
    b
}

/// Reads a's next ping on `link` (after what came before it) and returns its id.
#[track_caller]
fn ping_on(link: &mut FakeLink) -> String {
    let iq = link.until("</iq>");
    let iq = &iq[iq.rfind("<iq").unwrap_or_else(|| panic!("no iq in {iq}"))..];
    assert!(
        iq.contains("type='get'") && iq.contains("<ping xmlns='urn:xmpp:ping'/>"),
        "{iq}"
    );
    let id = iq.split("id='").nth(1).and_then(|r| r.split('\'').next());
    id.unwrap_or_else(|| panic!("no id in {iq}")).to_owned()
}

/// On a link without stream management, a ping after what was written (XEP-0199) stands in
/// for the acknowledgement: until b.test answers it, over its own connection to a, the
/// message is kept, so a link that dies, or a crash, sends it again; once answered (an error
/// answers too), it leaves the store, and a crash after that sends it to nobody again.
#[test]
fn on_a_link_without_stream_management_a_ping_answer_delivers_what_was_written() {
    let ca = Authority::new();
    let (ia, ib) = addresses();
    let fake = FakeServer::new(ib, &ca);
    let mut a = a_facing(ia, fake.addr(), &format!("ca_files = [{:?}]", ca.ca()));
    let mut alice = Client::user(&a, "alice", "phone");
    send_acknowledged(&mut alice, &["m1"]);

    // The link dies before b.test answers: m1 goes out again over a new one.
    let mut link = fake.accept_offering("");
    assert!(link.until("</message>").contains("<body>m1</body>"));
    ping_on(&mut link);
    link.die();
    let mut link = fake.accept_offering("");
    assert!(link.until("</message>").contains("<body>m1</body>"));
    ping_on(&mut link);
    a.wait_for_log(
        "1 stanzas for b.test go out again over a new link",
        1,
        TIMEOUT,
    );

    // A crash before the answer: m1 is still in the store, and goes out after the start.
    a.kill_hard();
    drop(alice);
    drop(link);
    a.restart();
    a.wait_for_log(
        "1 stanzas that waited for other servers go out again",
        1,
        TIMEOUT,
    );
    let mut link = fake.accept_offering("");
    assert!(link.until("</message>").contains("<body>m1</body>"));
    let id = ping_on(&mut link);
    let mut b = inbound_from_b(&a, &ca);
    b.send(&format!(
        "<iq type='error' from='b.test' to='a.test' id='{id}'><error type='cancel'>\
         <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    ));
    a.wait_for_log(
        "b.test has read 1 stanzas from a.test (ping answered)",
        1,
        TIMEOUT,
    );
    let mut alice = Client::user(&a, "alice", "phone");
    alice.send(&format!("<enable xmlns='{SM}'/>"));
    alice.expect(&format!("<enabled xmlns='{SM}'/>"));
    after_earlier_writes(&mut alice, 1);

    // Answered, so gone: a crash now sends nothing again.
    a.kill_hard();
    drop(alice);
    drop(link);
    a.restart();
    Client::online_expecting(
        &a,
        "alice",
        "phone",
        &["<message type='chat'><body>sync</body></message>"],
    );
    let log = a.log();
    assert_eq!(
        log.matches("stanzas that waited for other servers go out again")
            .count(),
        1,
        "{log}"
    );
}

/// A server that cannot answer (no way back to us, as a push service behind a firewall may
/// be) leaves the ping unanswered while the link stays up: after the connect timeout what was
/// written counts as delivered, as before pings, and is neither sent again nor bounced; the
/// link pings no more, and later messages go out on it.
#[test]
fn a_ping_never_answered_on_a_live_link_lets_what_was_written_count_as_delivered() {
    let ca = Authority::new();
    let (ia, ib) = addresses();
    let fake = FakeServer::new(ib, &ca);
    let a = a_facing(ia, fake.addr(), "connect_timeout_secs = 1");
    let mut alice = Client::online(&a, "alice", "phone");
    alice.send_message("bob@b.test", "chat", "m1");
    let mut link = fake.accept_offering("");
    assert!(link.until("</message>").contains("<body>m1</body>"));
    ping_on(&mut link);
    a.wait_for_log(
        "b.test did not answer the ping from a.test within 1s",
        1,
        TIMEOUT,
    );
    alice.send_message("bob@b.test", "chat", "m2");
    let next = link.until("</message>");
    assert!(
        next.contains("<body>m2</body>") && !next.contains("ping"),
        "{next}"
    );
    // No error came back for either, and nothing went out again.
    alice.sync();
    let log = a.log();
    assert!(!log.contains("go out again"), "{log}");
    assert_server_ok(&a, "alice");
}

/// An answer to a ping is not itself confirmed with a ping: two servers without stream
/// management would otherwise ping each other forever. a answers b.test's ping once, and
/// then writes nothing more on its link.
#[test]
fn a_link_without_stream_management_does_not_ping_for_its_answers() {
    let ca = Authority::new();
    let (ia, ib) = addresses();
    let fake = FakeServer::new(ib, &ca);
    let a = a_facing(ia, fake.addr(), &format!("ca_files = [{:?}]", ca.ca()));
    let mut alice = Client::online(&a, "alice", "phone");
    alice.send_message("bob@b.test", "chat", "m1");
    let mut link = fake.accept_offering("");
    link.until("</message>");
    let id = ping_on(&mut link);
    let mut b = inbound_from_b(&a, &ca);
    b.send(&format!(
        "<iq type='get' from='b.test' to='a.test' id='theirs'><ping xmlns='urn:xmpp:ping'/></iq>\
         <iq type='result' from='b.test' to='a.test' id='{id}'/>"
    ));
    let pong = link.until("/>");
    assert!(
        pong.contains("type='result'") && pong.contains("id='theirs'"),
        "{pong}"
    );
    a.wait_for_log("b.test has read 1 stanzas from a.test", 1, TIMEOUT);
    // What a writes next on the link is alice's next message, not a ping for the answer.
    alice.send_message("bob@b.test", "chat", "m2");
    let next = link.until("</message>");
    assert!(
        next.contains("<body>m2</body>") && !next.contains("ping"),
        "{next}"
    );
    assert_server_ok(&a, "alice");
}

/// The same for what a link wrote and the other server never acknowledged (XEP-0198): the
/// server that played b.test took the messages and vanished; after a's restart the real one
/// gets them.
#[test]
fn what_a_link_wrote_without_acknowledgement_survives_a_restart() {
    let ca = Authority::new();
    let (ia, ib) = addresses();
    let fake = FakeServer::new(ib, &ca);
    let there = fake.addr();
    let mut a = a_facing(ia, there, "connect_timeout_secs = 60");
    let mut alice = Client::user(&a, "alice", "phone");
    alice.send(&format!("<enable xmlns='{SM}'/>"));
    alice.expect(&format!("<enabled xmlns='{SM}'/>"));
    alice.send_message("bob@b.test", "chat", "m1");
    let mut link = fake.accept();
    link.until(&format!("<enable xmlns='{SM}'/>"));
    link.send(&format!("<enabled xmlns='{SM}'/>"));
    assert!(link.until("</message>").contains("<body>m1</body>"));
    alice.send_message("bob@b.test", "chat", "m2");
    alice.send_message("bob@b.test", "chat", "m3");
    alice.send(&format!("<r xmlns='{SM}'/>"));
    alice.expect(&format!("<a xmlns='{SM}' h='3'/>"));
    assert!(link.until("</message>").contains("<body>m2</body>"));
    assert!(link.until("</message>").contains("<body>m3</body>"));
    drop(alice);
    let status = a.stop();
    assert!(status.success(), "hearth exited with {status} on SIGTERM");
    a.wait_for_log("3 stanzas from a.test wait for b.test", 1, TIMEOUT);
    drop(link);
    drop(fake);

    let b = TestServer::start_domain(
        "b.test",
        &format!(
            "[federation]\nenabled = true\nlisten = [\"{there}\"]\n\
             hosts = {{ \"a.test\" = \"{ia}:5269\" }}\n"
        ),
    );
    b.add_users(&["bob"]);
    let mut bob = Client::online(&b, "bob", "laptop");
    a.restart();
    for body in ["m1", "m2", "m3"] {
        bob.expect(&format!(
            "<message from='alice@a.test/phone' type='chat'><body>{body}</body></message>"
        ));
    }
    let mut alice = Client::online(&a, "alice", "phone");
    alice.send_message("bob@b.test", "chat", "after");
    bob.expect("<message from='alice@a.test/phone'><body>after</body></message>");
}

/// What a kept for b.test when it stopped, started again with federation off: the usual way
/// (an error for the sender, who is not there to get it, so nothing), no panic, and nothing
/// stays behind: a later start with federation on sends none of it, and a stop with nothing
/// waiting keeps nothing.
#[test]
fn what_waited_goes_nowhere_when_federation_is_off_after_the_restart() {
    let (ia, ib) = addresses();
    let mut silent = Silent::new(SocketAddr::new(ib, 5269));
    let mut a = TestServer::start_domain(
        "a.test",
        &federation(
            ia,
            "b.test",
            SocketAddr::new(ib, 5269),
            "connect_timeout_secs = 60",
        ),
    );
    a.add_users(&["alice"]);
    let mut alice = Client::user(&a, "alice", "phone");
    send_acknowledged(&mut alice, &["m1", "m2"]);
    silent.accept();
    drop(alice);
    assert!(a.stop().success());
    a.wait_for_log("2 stanzas from a.test wait for b.test", 1, TIMEOUT);
    drop(silent);

    a.edit_config("enabled = true", "enabled = false");
    a.restart();
    a.wait_for_log(
        "2 stanzas that waited for other servers go out again",
        1,
        TIMEOUT,
    );
    let mut alice = Client::online(&a, "alice", "phone");
    let id = alice.send_message("bob@b.test", "chat", "refused");
    alice.expect(&format!(
        "<message type='error' id='{id}'><error><remote-server-not-found xmlns='{}'/></error></message>",
        ns::STANZAS
    ));
    drop(alice);
    assert!(a.stop().success());

    a.edit_config("enabled = false", "enabled = true");
    let b = TestServer::start_domain(
        "b.test",
        &federation(ib, "a.test", SocketAddr::new(ia, 5269), ""),
    );
    b.add_users(&["bob"]);
    let mut bob = Client::online(&b, "bob", "laptop");
    a.restart();
    let mut alice = Client::online(&a, "alice", "phone");
    alice.send_message("bob@b.test", "chat", "fresh");
    bob.expect("<message from='alice@a.test/phone'><body>fresh</body></message>");
    let log = a.log();
    assert_eq!(
        log.matches("go out after the next start").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("that waited for other servers go out again")
            .count(),
        1,
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}
