//! SASL2 (XEP-0388), Bind 2 (XEP-0386), inline stream management (XEP-0198 §7) and FAST tokens
//! (XEP-0484) against the real server: the phone's comeback in one request, what the tokens
//! may and may not do, and the TLS session resumption underneath.

use crate::harness::{
    ANY, Client, Element, Hash, PASSWORD, TestServer, assert_matches, escape, ns, sasl_text,
    scram_attr, stream_header,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

const SASL2: &str = "urn:xmpp:sasl:2";
const BIND2: &str = "urn:xmpp:bind:0";
const FAST: &str = "urn:xmpp:fast:0";
const SM: &str = "urn:xmpp:sm:3";
const CSI: &str = "urn:xmpp:csi:0";
const CARBONS: &str = "urn:xmpp:carbons:2";
const MAM: &str = "urn:xmpp:mam:2";
const STATES: &str = "http://jabber.org/protocol/chatstates";
/// The server asks for acknowledgements only after this many stanzas: none in these tests.
const QUIET_SM: &str = "[stream_management]\nack_every = 1000\nack_delay_secs = 3600\n";

fn server_with(extra: &str) -> TestServer {
    let server = TestServer::start_with(&format!("{QUIET_SM}{extra}"));
    server.add_users(&["alice", "bob"]);
    server
}

/// A client installation's id: a fresh UUID v4.
fn uuid() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("random bytes");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn user_agent(id: &str) -> String {
    format!(
        "<user-agent id='{id}'><software>hearth tests</software><device>a test</device></user-agent>"
    )
}

/// The `<authenticate/>` for `mechanism` with `initial` (already base64) and `inline` children.
fn authenticate(mechanism: &str, initial: &str, inline: &str) -> String {
    format!(
        "<authenticate xmlns='{SASL2}' mechanism='{mechanism}'>\
         <initial-response>{initial}</initial-response>{inline}</authenticate>"
    )
}

/// The reply to an `<authenticate/>`: Ok(`<success/>`) or Err(`<failure/>`).
#[track_caller]
fn outcome(el: Element) -> Result<Element, Element> {
    if el.is("success", SASL2) {
        Ok(el)
    } else if el.is("failure", SASL2) {
        Err(el)
    } else {
        panic!("expected a SASL2 <success/> or <failure/>, got {el}")
    }
}

/// SCRAM-SHA-256 over SASL2 with `inline` requests; on success the client's JID is the
/// authorization identifier and the features that follow are read into `c.features`.
#[track_caller]
fn scram(c: &mut Client, user: &str, password: &str, inline: &str) -> Result<Element, Element> {
    let hash = Hash::Sha256;
    let nonce = B64.encode(uuid());
    let first_bare = format!("n={user},r={nonce}");
    let initial = B64.encode(format!("n,,{first_bare}"));
    c.send(&authenticate("SCRAM-SHA-256", &initial, inline));
    let challenge = c.recv();
    if challenge.is("failure", SASL2) {
        return Err(challenge);
    }
    assert!(
        challenge.is("challenge", SASL2),
        "expected a challenge, got {challenge}"
    );
    let server_first = sasl_text(&challenge);
    let fin = hash.scram_final(password, &first_bare, &server_first, b"n,,");
    c.send(&format!(
        "<response xmlns='{SASL2}'>{}</response>",
        B64.encode(fin.message)
    ));
    let success = outcome(c.recv())?;
    let data = sasl_text(success.get("additional-data", SASL2));
    assert_eq!(
        scram_attr(&data, 'v'),
        fin.server_signature,
        "server signature"
    );
    after_success(c, &success);
    Ok(success)
}

/// After a `<success/>`: the JID, and the features unless a session was resumed.
fn after_success(c: &mut Client, success: &Element) {
    c.jid = success
        .get("authorization-identifier", SASL2)
        .text
        .trim()
        .to_owned();
    if success.child("resumed", SM).is_none() {
        let features = c.recv();
        assert!(
            features.is("features", ns::STREAM),
            "features must follow a SASL2 success, got {features}"
        );
        c.features = features;
    }
}

/// A FAST token as the server issued it.
#[derive(Clone, Debug)]
struct Token {
    token: String,
    mechanism: String,
}

fn token_of(success: &Element, mechanism: &str) -> Token {
    let t = success.get("token", FAST);
    assert!(t.attr("expiry").is_some(), "a token without expiry: {t}");
    Token {
        token: t.attr("token").expect("a token").to_owned(),
        mechanism: mechanism.to_owned(),
    }
}

/// The channel binding data a mechanism takes on this connection.
fn cb_data(c: &Client, server: &TestServer, mechanism: &str) -> Vec<u8> {
    match mechanism {
        "HT-SHA-256-EXPR" => c
            .tls()
            .export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
            .expect("tls-exporter")
            .to_vec(),
        "HT-SHA-256-ENDP" => end_point(server),
        _ => Vec::new(),
    }
}

/// tls-server-end-point: the server's generated certificate is ECDSA P-256 with SHA-256.
fn end_point(server: &TestServer) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let cert = CertificateDer::from_pem_file(server.cert_path()).expect("the certificate");
    Hash::Sha256.digest(cert.as_ref())
}

/// HT's initiator message (base64) and the responder message the server must answer with.
fn ht(user: &str, t: &Token, cb: &[u8]) -> (String, Vec<u8>) {
    let key = t.token.as_bytes();
    let init = Hash::Sha256.hmac(key, &[b"Initiator".as_slice(), cb].concat());
    let resp = Hash::Sha256.hmac(key, &[b"Responder".as_slice(), cb].concat());
    let mut msg = user.as_bytes().to_vec();
    msg.push(0);
    msg.extend_from_slice(&init);
    (B64.encode(msg), resp)
}

/// Authenticates with a FAST token and `inline` requests; on success checks the server's
/// proof (mutual authentication) and reads what follows as `scram` does.
#[track_caller]
fn fast(
    c: &mut Client,
    server: &TestServer,
    user: &str,
    t: &Token,
    inline: &str,
) -> Result<Element, Element> {
    let cb = cb_data(c, server, &t.mechanism);
    let (initial, responder) = ht(user, t, &cb);
    c.send(&authenticate(&t.mechanism, &initial, inline));
    let success = outcome(c.recv())?;
    let data = B64
        .decode(success.get("additional-data", SASL2).text.trim())
        .expect("base64 additional data");
    assert_eq!(data, responder, "the server's HT proof");
    after_success(c, &success);
    Ok(success)
}

#[track_caller]
fn condition(failure: &Element) -> String {
    failure
        .children
        .iter()
        .find(|c| c.ns == ns::SASL)
        .map(|c| c.name.clone())
        .unwrap_or_else(|| panic!("no condition in {failure}"))
}

/// A full login as a phone: password, Bind 2 with stream management (resumable), carbons and
/// a FAST token for `mechanism`. Returns the client, its resumption id and its token.
fn phone(server: &TestServer, ua: &str, mechanism: &str) -> (Client, String, Token) {
    let mut c = Client::connect_tls(server);
    let inline = format!(
        "{}<bind xmlns='{BIND2}'><tag>Phone</tag><enable xmlns='{SM}' resume='true'/>\
         <enable xmlns='{CARBONS}'/></bind><request-token xmlns='{FAST}' mechanism='{mechanism}'/>",
        user_agent(ua)
    );
    let success = scram(&mut c, "alice", PASSWORD, &inline).expect("password login");
    let enabled = success.get("bound", BIND2).get("enabled", SM);
    let id = enabled.attr("id").expect("a resumption id").to_owned();
    (c, id, token_of(&success, mechanism))
}

#[test]
fn features_offer_sasl2_with_bind2_resumption_fast_and_channel_bindings() {
    let server = server_with("");
    for c in [
        Client::connect_tls(&server),
        Client::connect_starttls(&server),
    ] {
        let f = &c.features;
        assert_matches(
            f,
            &format!(
                "<stream:features><authentication xmlns='{SASL2}'>\
                 <mechanism>SCRAM-SHA-256-PLUS</mechanism><mechanism>SCRAM-SHA-256</mechanism>\
                 <inline><bind xmlns='{BIND2}'><inline>\
                 <feature var='{SM}'/><feature var='{CSI}'/><feature var='{CARBONS}'/>\
                 </inline></bind><sm xmlns='{SM}'/>\
                 <fast xmlns='{FAST}'><mechanism>HT-SHA-256-EXPR</mechanism>\
                 <mechanism>HT-SHA-256-ENDP</mechanism><mechanism>HT-SHA-256-NONE</mechanism>\
                 </fast></inline></authentication>\
                 <sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'>\
                 <channel-binding type='tls-exporter'/></sasl-channel-binding>\
                 </stream:features>"
            ),
        );
        // The token mechanisms are for FAST only, not for passwords.
        let auth = f.get("authentication", SASL2);
        assert!(
            auth.children
                .iter()
                .filter(|m| m.name == "mechanism")
                .all(|m| !m.text.starts_with("HT-")),
            "{auth}"
        );
        assert!(!c.mechanisms().iter().any(|m| m.starts_with("HT-")));
    }
}

#[test]
fn a_password_login_binds_and_enables_everything_in_one_request() {
    let server = server_with("");
    let mut bob = Client::online(&server, "bob", "pc");
    let mut other = Client::online(&server, "alice", "laptop");
    other.sync();
    let mut c = Client::connect_tls(&server);
    let inline = format!(
        "{}<bind xmlns='{BIND2}'><tag>Phone</tag><enable xmlns='{SM}' resume='true'/>\
         <enable xmlns='{CARBONS}'/><inactive xmlns='{CSI}'/></bind>",
        user_agent(&uuid())
    );
    let success = scram(&mut c, "alice", PASSWORD, &inline).expect("login");
    assert!(c.jid.starts_with("alice@localhost/Phone/"), "{}", c.jid);
    assert_matches(
        &success,
        &format!(
            "<success xmlns='{SASL2}'><bound xmlns='{BIND2}'>\
             <enabled xmlns='{SM}' id='{ANY}' resume='true'/><metadata xmlns='{MAM}'/>\
             </bound></success>"
        ),
    );
    assert!(
        success.child("token", FAST).is_none(),
        "no token was asked for"
    );
    // The features of a bound stream: no resource binding, no second <enable/>.
    assert!(
        c.features.child("bind", ns::BIND).is_none(),
        "{}",
        c.features
    );
    assert!(c.features.child("sm", SM).is_none(), "{}", c.features);
    // Carbons are on: what the other resource sends comes here as a <sent/> copy (a message
    // with a body wakes even an inactive client).
    other.send_message("bob@localhost", "chat", "hello");
    bob.expect("<message type='chat'><body>hello</body></message>");
    c.expect(&format!(
        "<message type='chat'><sent xmlns='{CARBONS}'/></message>"
    ));
    // The session started inactive: a chat state waits until it says it is active.
    let jid = c.jid.clone();
    bob.send(&format!(
        "<message to='{jid}' type='chat'><composing xmlns='{STATES}'/></message>"
    ));
    bob.sync();
    c.send(&format!("<r xmlns='{SM}'/>"));
    c.expect(&format!("<a xmlns='{SM}' h='0'/>"));
    c.send(&format!("<active xmlns='{CSI}'/>"));
    c.expect(&format!(
        "<message type='chat'><composing xmlns='{STATES}'/></message>"
    ));
    c.sync();
}

#[test]
fn a_returning_device_gets_its_resource_back_and_its_old_session_ends() {
    let server = server_with("");
    let ua = uuid();
    let bind = |tag: &str| {
        format!(
            "{}<bind xmlns='{BIND2}'><tag>{tag}</tag></bind>",
            user_agent(&ua)
        )
    };
    let mut first = Client::connect_tls(&server);
    scram(&mut first, "alice", PASSWORD, &bind("App")).expect("login");
    let mut second = Client::connect_tls(&server);
    scram(&mut second, "alice", PASSWORD, &bind("App")).expect("login");
    assert_eq!(
        first.jid, second.jid,
        "the same installation, the same resource"
    );
    first.expect_stream_error("conflict");
    // A new version of the app with another tag: the stable part stays, the old session ends.
    let mut third = Client::connect_tls(&server);
    scram(&mut third, "alice", PASSWORD, &bind("App2")).expect("login");
    let stable = |jid: &str| jid.rsplit('/').next().unwrap_or_default().to_owned();
    assert_eq!(stable(&third.jid), stable(&second.jid));
    assert_ne!(third.jid, second.jid);
    second.expect_stream_error("conflict");
    // The id itself is nowhere in the JID, and another installation gets another resource.
    assert!(!third.jid.contains(&ua));
    let mut other = Client::connect_tls(&server);
    let inline = format!(
        "{}<bind xmlns='{BIND2}'><tag>App2</tag></bind>",
        user_agent(&uuid())
    );
    scram(&mut other, "alice", PASSWORD, &inline).expect("login");
    assert_ne!(other.jid, third.jid);
    third.sync();
    other.sync();
}

#[test]
fn a_fast_token_logs_in_resumes_and_delivers_what_was_queued() {
    let server = server_with("");
    let mut bob = Client::online(&server, "bob", "pc");
    let ua = uuid();
    let (c, id, token) = phone(&server, &ua, "HT-SHA-256-EXPR");
    let full = c.jid.clone();
    // The phone's connection drops without a word; bob writes meanwhile.
    drop(c);
    bob.send_message(&full, "chat", "while you were away");
    bob.sync();
    let mut c = Client::connect_tls(&server);
    let inline = format!(
        "{}<fast xmlns='{FAST}'/><resume xmlns='{SM}' previd='{id}' h='0'/>\
         <bind xmlns='{BIND2}'><tag>Phone</tag></bind>",
        user_agent(&ua)
    );
    let success = fast(&mut c, &server, "alice", &token, &inline).expect("FAST login");
    assert_matches(
        &success,
        &format!("<success xmlns='{SASL2}'><resumed xmlns='{SM}' previd='{id}' h='0'/></success>"),
    );
    assert!(
        success.child("bound", BIND2).is_none(),
        "a resumed session is not bound again"
    );
    assert_eq!(c.jid, full);
    // No features after a resumption: the queued message comes next.
    c.expect("<message type='chat'><body>while you were away</body></message>");
    c.sync();
}

#[test]
fn a_failed_inline_resumption_still_binds_a_session() {
    let server = server_with("");
    let mut c = Client::connect_tls(&server);
    let inline = format!(
        "{}<resume xmlns='{SM}' previd='gone' h='0'/><bind xmlns='{BIND2}'>\
         <enable xmlns='{SM}' resume='true'/></bind>",
        user_agent(&uuid())
    );
    let success = scram(&mut c, "alice", PASSWORD, &inline).expect("login");
    assert_matches(
        &success,
        &format!(
            "<success xmlns='{SASL2}'><failed xmlns='{SM}'><item-not-found xmlns='{}'/></failed>\
             <bound xmlns='{BIND2}'><enabled xmlns='{SM}'/></bound></success>",
            ns::STANZAS
        ),
    );
    c.sync();
}

#[test]
fn without_bind_the_client_binds_the_classic_way() {
    let server = server_with("");
    let mut c = Client::connect_tls(&server);
    let success = scram(&mut c, "alice", PASSWORD, "").expect("login");
    assert_eq!(c.jid, "alice@localhost");
    assert!(success.child("bound", BIND2).is_none());
    assert!(
        c.features.child("bind", ns::BIND).is_some(),
        "{}",
        c.features
    );
    c.bind(Some("classic"));
    c.sync();
}

#[test]
fn tokens_rotate_and_a_used_new_token_retires_the_old_one() {
    let server = server_with("");
    let ua = uuid();
    let (c, _, first) = phone(&server, &ua, "HT-SHA-256-NONE");
    drop(c);
    let login = |t: &Token, ask: bool| {
        let mut c = Client::connect_tls(&server);
        let ask = match ask {
            true => format!(
                "<request-token xmlns='{FAST}' mechanism='{}'/>",
                t.mechanism
            ),
            false => String::new(),
        };
        let inline = format!("{}<fast xmlns='{FAST}'/>{ask}", user_agent(&ua));
        fast(&mut c, &server, "alice", t, &inline)
    };
    // Used again and again while young: no new token unasked.
    let s = login(&first, false).expect("first token");
    assert!(s.child("token", FAST).is_none(), "{s}");
    login(&first, false).expect("first token again");
    // A new token: the old one works until the new one is used (it may have been lost)...
    let s = login(&first, true).expect("first token, asking for another");
    let second = token_of(&s, "HT-SHA-256-NONE");
    assert_ne!(second.token, first.token);
    login(&first, false).expect("the old token until the new one is used");
    login(&second, false).expect("second token");
    // ...and not after.
    let f = login(&first, false).expect_err("the retired token");
    assert_eq!(condition(&f), "not-authorized");
    login(&second, false).expect("second token again");
}

#[test]
fn wrong_downgraded_and_replayed_tokens_are_refused() {
    let server = server_with("");
    let ua = uuid();
    let (c, _, token) = phone(&server, &ua, "HT-SHA-256-EXPR");
    drop(c);
    let inline = format!("{}<fast xmlns='{FAST}'/>", user_agent(&ua));
    // A wrong token.
    let mut c = Client::connect_tls(&server);
    let wrong = Token {
        token: "not the token".into(),
        ..token.clone()
    };
    let f = fast(&mut c, &server, "alice", &wrong, &inline).expect_err("wrong token");
    assert_eq!(condition(&f), "not-authorized");
    // The right token with a mechanism without channel binding: a downgrade.
    let downgraded = Token {
        mechanism: "HT-SHA-256-NONE".into(),
        ..token.clone()
    };
    let f = fast(&mut c, &server, "alice", &downgraded, &inline).expect_err("downgrade");
    assert_eq!(condition(&f), "not-authorized");
    // Another installation cannot use it.
    let mut c = Client::connect_tls(&server);
    let theirs = format!("{}<fast xmlns='{FAST}'/>", user_agent(&uuid()));
    let f = fast(&mut c, &server, "alice", &token, &theirs).expect_err("other client");
    assert_eq!(condition(&f), "not-authorized");
    // A login seen on one TLS session, replayed on another, proves nothing there.
    let mut seen = Client::connect_tls(&server);
    let cb = cb_data(&seen, &server, &token.mechanism);
    let (captured, _) = ht("alice", &token, &cb);
    let mut c = Client::connect_tls(&server);
    c.send(&authenticate(&token.mechanism, &captured, &inline));
    let f = outcome(c.recv()).expect_err("replayed proof");
    assert_eq!(condition(&f), "not-authorized");
    // The original connection still logs in with it.
    fast(&mut seen, &server, "alice", &token, &inline).expect("the real login");
    // XEP-0484's count: each use must count higher.
    let counted = |n: u64| {
        let mut c = Client::connect_tls(&server);
        let inline = format!("{}<fast xmlns='{FAST}' count='{n}'/>", user_agent(&ua));
        fast(&mut c, &server, "alice", &token, &inline)
    };
    counted(5).expect("count 5");
    let f = counted(5).expect_err("count 5 again");
    assert_eq!(condition(&f), "not-authorized");
    counted(6).expect("count 6");
}

#[test]
fn tokens_stop_working_when_the_password_changes_either_way() {
    let server = server_with("");
    let ua = uuid();
    let (mut c, _, token) = phone(&server, &ua, "HT-SHA-256-ENDP");
    let inline = format!("{}<fast xmlns='{FAST}'/>", user_agent(&ua));
    // XEP-0077 from the session itself.
    let reply = c.iq(
        "type='set'",
        "<query xmlns='jabber:iq:register'><username>alice</username>\
         <password>new secret</password></query>",
    );
    assert_matches(&reply, "<iq type='result'/>");
    let mut again = Client::connect_tls(&server);
    let f = fast(&mut again, &server, "alice", &token, &inline).expect_err("after a change");
    assert_eq!(condition(&f), "credentials-expired");
    // A new token under the new password, then the operator sets another one.
    let mut c = Client::connect_tls(&server);
    let ask = format!(
        "{}<request-token xmlns='{FAST}' mechanism='HT-SHA-256-ENDP'/>",
        user_agent(&ua)
    );
    let s = scram(&mut c, "alice", "new secret", &ask).expect("new password");
    let token = token_of(&s, "HT-SHA-256-ENDP");
    let mut c = Client::connect_tls(&server);
    fast(&mut c, &server, "alice", &token, &inline).expect("the new token");
    server.user_cmd("passwd", "alice@localhost", "operator's choice");
    let mut c = Client::connect_tls(&server);
    let f = fast(&mut c, &server, "alice", &token, &inline).expect_err("after passwd");
    assert_eq!(condition(&f), "credentials-expired");
}

#[test]
fn removing_the_account_removes_its_tokens() {
    let server = server_with("");
    let ua = uuid();
    let (c, _, token) = phone(&server, &ua, "HT-SHA-256-NONE");
    drop(c);
    let out = server.cli(&["user", "remove", "alice@localhost"], "");
    assert!(out.status.success(), "{out:?}");
    // Made again with the very same password: the old token is gone with the old account.
    server.add_user("alice@localhost", PASSWORD);
    let mut c = Client::connect_tls(&server);
    let inline = format!("{}<fast xmlns='{FAST}'/>", user_agent(&ua));
    let f = fast(&mut c, &server, "alice", &token, &inline).expect_err("removed");
    assert_eq!(condition(&f), "not-authorized");
}

#[test]
fn invalidating_a_token_logs_the_installation_out() {
    let server = server_with("");
    let ua = uuid();
    let (c, _, token) = phone(&server, &ua, "HT-SHA-256-NONE");
    drop(c);
    let mut c = Client::connect_tls(&server);
    let inline = format!(
        "{}<fast xmlns='{FAST}' invalidate='true'/>",
        user_agent(&ua)
    );
    let s = fast(&mut c, &server, "alice", &token, &inline).expect("last login");
    assert!(s.child("token", FAST).is_none());
    let mut c = Client::connect_tls(&server);
    let inline = format!("{}<fast xmlns='{FAST}'/>", user_agent(&ua));
    let f = fast(&mut c, &server, "alice", &token, &inline).expect_err("invalidated");
    assert_eq!(condition(&f), "not-authorized");
}

#[test]
fn the_store_does_not_hold_the_tokens() {
    let server = server_with("");
    let (c, _, token) = phone(&server, &uuid(), "HT-SHA-256-NONE");
    drop(c);
    let store = std::fs::read(server.data_dir().join("hearth.redb")).expect("read the store");
    let found = store
        .windows(token.token.len())
        .any(|w| w == token.token.as_bytes());
    assert!(!found, "the token is in the store");
}

#[test]
fn authentication_can_follow_the_stream_header_without_waiting() {
    let server = server_with("");
    let mut bob = Client::online(&server, "bob", "pc");
    let ua = uuid();
    let (c, id, token) = phone(&server, &ua, "HT-SHA-256-ENDP");
    let full = c.jid.clone();
    drop(c);
    bob.send_message(&full, "chat", "queued");
    bob.sync();
    // The whole comeback in the flight that finishes the TLS handshake: ENDP's binding is
    // known before the handshake ends.
    let (initial, responder) = ht("alice", &token, &end_point(&server));
    let inline = format!(
        "{}<fast xmlns='{FAST}'/><resume xmlns='{SM}' previd='{id}' h='0'/>",
        user_agent(&ua)
    );
    let early = format!(
        "{}{}",
        stream_header(),
        authenticate(&token.mechanism, &initial, &inline)
    );
    let config = Client::tls_config_for(&server);
    let mut c = Client::connect_tls_with(&server, config, early.as_bytes());
    c.read_stream_open();
    let success = outcome(c.recv()).expect("pipelined FAST login");
    let data = B64
        .decode(success.get("additional-data", SASL2).text.trim())
        .expect("base64");
    assert_eq!(data, responder);
    assert_matches(
        &success,
        &format!("<success xmlns='{SASL2}'><resumed xmlns='{SM}' previd='{id}'/></success>"),
    );
    c.jid = full;
    c.expect("<message type='chat'><body>queued</body></message>");
    c.sync();
}

#[test]
fn tls_sessions_resume_without_the_certificate_even_after_a_reload() {
    use rustls::HandshakeKind;
    let server = server_with("");
    let config = Client::tls_config_for(&server);
    let open = || {
        let mut c = Client::connect_tls_with(&server, config.clone(), stream_header().as_bytes());
        c.read_stream_open();
        c
    };
    let first = open();
    assert_eq!(first.tls().handshake_kind(), Some(HandshakeKind::Full));
    // The ticket comes after the handshake; the features prove it has been read.
    let second = open();
    assert_eq!(second.tls().handshake_kind(), Some(HandshakeKind::Resumed));
    server.rotate_certificate();
    let third = open();
    assert_eq!(third.tls().handshake_kind(), Some(HandshakeKind::Resumed));
    drop((first, second, third));
    // Turned off, every handshake is a full one.
    let server = server_with("[tls]\nsession_tickets = 0\n");
    let config = Client::tls_config_for(&server);
    for _ in 0..2 {
        let mut c = Client::connect_tls_with(&server, config.clone(), stream_header().as_bytes());
        c.read_stream_open();
        assert_eq!(c.tls().handshake_kind(), Some(HandshakeKind::Full));
    }
}

#[test]
fn bad_sasl2_requests_fail_and_count_as_attempts() {
    let server = server_with("[auth]\nattempts_per_stream = 4\n");
    let mut c = Client::connect_tls(&server);
    // An unknown mechanism, a token mechanism without a token's proof, a too long client id.
    c.send(&authenticate("DIGEST-MD5", "", ""));
    assert_eq!(
        condition(&outcome(c.recv()).expect_err("unknown")),
        "invalid-mechanism"
    );
    c.send(&authenticate(
        "HT-SHA-256-NONE",
        "YWxpY2U=",
        &user_agent(&uuid()),
    ));
    assert_eq!(
        condition(&outcome(c.recv()).expect_err("no NUL")),
        "malformed-request"
    );
    let long = "x".repeat(65);
    c.send(&authenticate("SCRAM-SHA-256", "", &user_agent(&long)));
    let f = outcome(c.recv()).expect_err("long id");
    assert_eq!(condition(&f), "malformed-request");
    assert!(f.get("text", SASL2).text.contains("64 bytes"), "{f}");
    // The fourth failure ends the stream.
    let err = scram(&mut c, "alice", "wrong", "").expect_err("wrong password");
    assert_eq!(condition(&err), "not-authorized");
    c.expect_stream_error("policy-violation");
    // Anything but SASL2's own elements during an exchange ends the stream too.
    let mut c = Client::connect_tls(&server);
    // No initial response: the server asks for it.
    c.send(&format!(
        "<authenticate xmlns='{SASL2}' mechanism='SCRAM-SHA-256'/>"
    ));
    let ch = c.recv();
    assert!(ch.is("challenge", SASL2), "{ch}");
    c.send("<iq type='get' id='x'><ping xmlns='urn:xmpp:ping'/></iq>");
    c.expect_stream_error("not-authorized");
    // A Bind 2 tag longer than a tag may be.
    let mut c = Client::connect_tls(&server);
    let inline = format!("<bind xmlns='{BIND2}'><tag>{}</tag></bind>", escape(&long));
    c.send(&authenticate("SCRAM-SHA-256", "", &inline));
    assert_eq!(
        condition(&outcome(c.recv()).expect_err("bad tag")),
        "malformed-request"
    );
}
