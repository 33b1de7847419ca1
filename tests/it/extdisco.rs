//! External service discovery (XEP-0215) over real TLS connections: the configured STUN/TURN
//! server is listed with TURN credentials that verify with the shared secret as coturn
//! verifies them, and expire when they say; nothing is offered without a configured server.

use crate::harness::{Client, DOMAIN, Element, TestServer, assert_matches, stanza_error};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use std::time::{SystemTime, UNIX_EPOCH};

const EXTDISCO: &str = "urn:xmpp:extdisco:2";
const SECRET: &str = "a shared secret";

fn server() -> TestServer {
    let server = TestServer::start_with(&format!(
        "[modules.external_services]\nhost = \"turn.example.org\"\nport = 3478\n\
         turn_secret = \"{SECRET}\"\ncredentials_ttl_secs = 3600\n"
    ));
    server.add_users(&["alice"]);
    server
}

/// What coturn does with `use-auth-secret`: the password is the HMAC of the username, and the
/// username starts with the expiry.
fn coturn_accepts(username: &str, password: &str) -> bool {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    let expected = B64.encode(mac.finalize().into_bytes());
    let expiry: u64 = username.split(':').next().unwrap().parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    expected == password && expiry > now
}

fn services(reply: &Element) -> Vec<&Element> {
    reply.get("services", EXTDISCO).children.iter().collect()
}

#[test]
fn turn_credentials_verify_with_the_shared_secret() {
    let server = server();
    let mut alice = Client::user(&server, "alice", "phone");
    let info = alice.server_iq(
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    );
    assert_matches(
        &info,
        &format!(
            "<iq type='result'><query xmlns='http://jabber.org/protocol/disco#info'><feature var='{EXTDISCO}'/></query></iq>"
        ),
    );
    let reply = alice.server_iq("get", &format!("<services xmlns='{EXTDISCO}'/>"));
    let list = services(&reply);
    assert_eq!(list.len(), 4, "{reply}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for s in &list {
        assert_eq!(s.attr("host"), Some("turn.example.org"));
        assert_eq!(s.attr("port"), Some("3478"));
        match s.attr("type") {
            Some("stun") => assert!(s.attr("password").is_none(), "{s}"),
            Some("turn") => {
                let (user, pass) = (s.attr("username").unwrap(), s.attr("password").unwrap());
                assert!(coturn_accepts(user, pass), "{s}");
                assert!(user.ends_with(":alice"), "{s}");
                let expiry: u64 = user.split(':').next().unwrap().parse().unwrap();
                assert!(
                    expiry <= now + 3600 + 60 && expiry >= now + 3600 - 60,
                    "{s}"
                );
                let expires = humantime::parse_rfc3339(s.attr("expires").unwrap()).unwrap();
                assert_eq!(
                    expires.duration_since(UNIX_EPOCH).unwrap().as_secs(),
                    expiry
                );
            }
            other => panic!("unexpected service type {other:?}"),
        }
    }
    // Credentials on their own, for the TURN service only.
    let reply = alice.server_iq(
        "get",
        &format!("<credentials xmlns='{EXTDISCO}'><service host='turn.example.org' type='turn'/></credentials>"),
    );
    let s = reply.get("credentials", EXTDISCO).get("service", EXTDISCO);
    assert!(
        coturn_accepts(s.attr("username").unwrap(), s.attr("password").unwrap()),
        "{reply}"
    );
    let reply = alice.server_iq(
        "get",
        &format!("<credentials xmlns='{EXTDISCO}'><service host='elsewhere.example.org' type='turn'/></credentials>"),
    );
    let id = reply.attr("id").unwrap().to_owned();
    assert_matches(&reply, &stanza_error("iq", &id, "cancel", "item-not-found"));
}

#[test]
fn nothing_is_offered_without_a_configured_server() {
    let server = TestServer::start();
    server.add_users(&["alice"]);
    let mut alice = Client::user(&server, "alice", "phone");
    let reply = alice.server_iq("get", &format!("<services xmlns='{EXTDISCO}'/>"));
    let id = reply.attr("id").unwrap().to_owned();
    assert_matches(
        &reply,
        &stanza_error("iq", &id, "cancel", "service-unavailable"),
    );
    let info = alice.iq(
        &format!("type='get' to='{DOMAIN}'"),
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    );
    assert!(
        !info.to_string().contains(EXTDISCO),
        "advertised without a server: {info}"
    );
}
