//! What every server answers: service discovery (XEP-0030), ping (XEP-0199), software version
//! (XEP-0092), entity time (XEP-0202), service-unavailable for unknown payloads (RFC 6120
//! §8.4), whitespace keepalives (RFC 6120 §4.6.1), the server's own keepalive pings, and a
//! graceful shutdown (RFC 6120 §4.9.3.17 system-shutdown).

use crate::harness::{Client, DOMAIN, Element, TestServer, assert_matches, ns, stanza_error};

fn server_with(extra: &str) -> TestServer {
    let server = TestServer::start_with(extra);
    server.add_users(&["alice", "bob"]);
    server
}

fn alice(server: &TestServer) -> Client {
    Client::user(server, "alice", "home")
}

/// An iq get to the server with an empty `<{name} xmlns='{ns}'/>`; asserts a result.
#[track_caller]
fn server_get(c: &mut Client, name: &str, ns: &str) -> Element {
    let reply = c.server_iq("get", &format!("<{name} xmlns='{ns}'/>"));
    assert_matches(&reply, &format!("<iq type='result' from='{DOMAIN}'/>"));
    reply
}

/// A fresh server's answer to alice's get of `<{name} xmlns='{ns}'/>`.
#[track_caller]
fn answer(name: &str, ns: &str) -> Element {
    let server = server_with("");
    server_get(&mut alice(&server), name, ns)
}

/// The `var`s of the features in a disco#info result.
fn disco_features(c: &mut Client) -> Vec<String> {
    let reply = server_get(c, "query", ns::DISCO_INFO);
    assert_matches(
        &reply,
        &format!(
            "<iq><query xmlns='{}'><identity category='server' type='im'/></query></iq>",
            ns::DISCO_INFO
        ),
    );
    reply
        .get("query", ns::DISCO_INFO)
        .children
        .iter()
        .filter(|c| c.name == "feature")
        .filter_map(|c| c.attr("var").map(str::to_owned))
        .collect()
}

#[test]
fn disco_info_lists_the_identity_and_features() {
    let server = server_with("");
    let mut c = alice(&server);
    let mut features = disco_features(&mut c);
    features.sort();
    // Exactly what hearth implements: nothing missing, nothing claimed that is not there.
    let mut want = vec![
        ns::DISCO_INFO,
        ns::DISCO_ITEMS,
        ns::PING,
        ns::VERSION,
        ns::TIME,
        ns::OFFLINE,
        "urn:xmpp:carbons:2",
        "urn:xmpp:mam:2",
        "urn:xmpp:mam:2#extended",
        "urn:xmpp:sid:0",
        "urn:xmpp:blocking",
        "vcard-temp",
        "jabber:iq:private",
        "jabber:iq:register",
    ];
    // PEP, as XEP-0163 first had servers say it (the account's own disco says it too).
    let pep = [
        "access-open",
        "access-presence",
        "access-roster",
        "access-whitelist",
        "auto-create",
        "auto-subscribe",
        "config-node",
        "create-and-configure",
        "create-nodes",
        "delete-items",
        "delete-nodes",
        "filtered-notifications",
        "item-ids",
        "last-published",
        "persistent-items",
        "presence-notifications",
        "publish",
        "publish-options",
        "purge-nodes",
        "retract-items",
        "retrieve-default",
        "retrieve-items",
    ]
    .map(|f| format!("http://jabber.org/protocol/pubsub#{f}"));
    want.extend(pep.iter().map(String::as_str));
    want.sort_unstable();
    assert_eq!(features, want);
    assert!(
        !features.iter().any(|x| x == ns::ROSTER_VER),
        "roster versioning is a stream feature, not a disco feature: {features:?}"
    );
    c.features.get("ver", ns::ROSTER_VER);
    let (identities, _) = disco_of(&mut c, DOMAIN);
    assert!(
        identities.contains(&("pubsub".to_owned(), "pep".to_owned())),
        "{identities:?}"
    );
}

/// The identities and feature `var`s of a disco#info result from `to`.
#[track_caller]
fn disco_of(c: &mut Client, to: &str) -> (Vec<(String, String)>, Vec<String>) {
    let id = c.send_iq(
        &format!("type='get' to='{to}'"),
        &format!("<query xmlns='{}'/>", ns::DISCO_INFO),
    );
    let reply = c.expect(&format!("<iq type='result' id='{id}' from='{to}'/>"));
    let q = reply.get("query", ns::DISCO_INFO);
    let of = |name: &str, attr: &str| -> Vec<String> {
        q.children
            .iter()
            .filter(|c| c.name == name)
            .filter_map(|c| c.attr(attr).map(str::to_owned))
            .collect()
    };
    let identities = of("identity", "category")
        .into_iter()
        .zip(of("identity", "type"))
        .collect();
    (identities, of("feature", "var"))
}

#[test]
fn an_account_shows_its_owner_the_archive() {
    // XEP-0313 §6.4: clients (Dino, Conversations) look for the archive on the account; the
    // account is also a PEP service (XEP-0163 §6), to everyone.
    let server = server_with("");
    let mut c = alice(&server);
    let pep = |features: &mut Vec<String>| {
        let before = features.len();
        features.retain(|f| {
            !f.starts_with("http://jabber.org/protocol/pubsub#") && f != ns::DISCO_ITEMS
        });
        before - features.len()
    };
    let account = ("account".to_owned(), "registered".to_owned());
    let pubsub = ("pubsub".to_owned(), "pep".to_owned());
    let (mut ids, mut features) = disco_of(&mut c, "alice@localhost");
    ids.sort();
    features.sort();
    assert_eq!(ids, vec![account.clone(), pubsub.clone()]);
    assert!(pep(&mut features) > 10, "PEP features missing");
    assert_eq!(
        features,
        vec![
            ns::DISCO_INFO,
            "jabber:iq:register",
            "urn:xmpp:bookmarks-conversion:0",
            "urn:xmpp:bookmarks:1#compat",
            "urn:xmpp:bookmarks:1#compat-pep",
            "urn:xmpp:mam:2",
            "urn:xmpp:mam:2#extended",
            "urn:xmpp:pep-vcard-conversion:0",
            "urn:xmpp:push:0",
            "urn:xmpp:sid:0",
            "vcard-temp",
        ]
    );
    // Another account shows what it is and its PEP service, nothing of what it holds.
    let (mut ids, mut features) = disco_of(&mut c, "bob@localhost");
    ids.sort();
    assert_eq!(ids, vec![account.clone(), pubsub]);
    assert!(pep(&mut features) > 10, "PEP features missing");
    features.sort();
    assert_eq!(features, vec![ns::DISCO_INFO, "vcard-temp"]);
    // With the archive and PEP off, the account lists neither, nor PEP avatars in vCards.
    let server = server_with("[modules.mam]\nenabled = false\n[modules.pep]\nenabled = false\n");
    let mut c = alice(&server);
    let (ids, mut features) = disco_of(&mut c, "alice@localhost");
    features.sort();
    assert_eq!(ids, vec![account]);
    assert_eq!(
        features,
        vec![
            ns::DISCO_INFO,
            "jabber:iq:register",
            "urn:xmpp:push:0",
            "vcard-temp"
        ]
    );
}

#[test]
fn disabled_module_is_neither_advertised_nor_answered() {
    let server = server_with("[modules.version]\nenabled = false\n");
    let mut c = alice(&server);
    let features = disco_features(&mut c);
    assert!(
        !features.iter().any(|x| x == ns::VERSION),
        "version is disabled but advertised: {features:?}"
    );
    let id = c.send_iq(
        &format!("type='get' to='{DOMAIN}'"),
        &format!("<query xmlns='{}'/>", ns::VERSION),
    );
    c.expect(&stanza_error("iq", &id, "cancel", "service-unavailable"));
}

#[test]
fn disco_items() {
    answer("query", ns::DISCO_ITEMS).get("query", ns::DISCO_ITEMS);
}

#[test]
fn ping_gets_an_empty_result() {
    let reply = answer("ping", ns::PING);
    assert!(reply.children.is_empty(), "ping result not empty: {reply}");
}

#[test]
fn version_names_hearth() {
    let reply = answer("query", ns::VERSION);
    let query = reply.get("query", ns::VERSION);
    assert_eq!(query.get("name", ns::VERSION).text.trim(), "hearth");
    let version = query.get("version", ns::VERSION).text.trim();
    assert!(
        version.starts_with(env!("CARGO_PKG_VERSION")),
        "version {version:?}"
    );
}

#[test]
fn time_gives_utc_and_offset() {
    let reply = answer("time", ns::TIME);
    let time = reply.get("time", ns::TIME);
    let utc = time.get("utc", ns::TIME).text.trim();
    assert!(
        utc.len() >= 20 && utc.as_bytes()[10] == b'T' && utc.ends_with('Z'),
        "XEP-0082 UTC time: {utc:?}"
    );
    let tzo = time.get("tzo", ns::TIME).text.trim();
    let offset_ok = tzo == "Z"
        || (tzo.len() == 6
            && (tzo.starts_with('+') || tzo.starts_with('-'))
            && tzo.as_bytes()[3] == b':');
    assert!(offset_ok, "XEP-0082 offset: {tzo:?}");
}

#[test]
fn unknown_payload_is_service_unavailable() {
    let server = server_with("");
    let mut c = alice(&server);
    let payload = "<query xmlns='urn:example:nothing-here'/>";
    let targets = [
        ("get", DOMAIN),
        ("set", DOMAIN),
        ("get", "alice@localhost"),
        ("get", "bob@localhost"),
    ];
    for (kind, to) in targets {
        let id = c.send_iq(&format!("type='{kind}' to='{to}'"), payload);
        c.expect(&stanza_error("iq", &id, "cancel", "service-unavailable"));
    }
    c.sync();
}

#[test]
fn whitespace_keepalive_is_accepted() {
    let server = server_with("");
    let mut c = alice(&server);
    c.send_raw(b" ");
    c.sync();
    c.send_raw(b"\n \t\r\n");
    c.sync();
}

#[test]
fn idle_client_is_pinged_then_dropped() {
    let server = server_with("[keepalive]\nping_after_secs = 1\nping_timeout_secs = 1\n");
    let mut c = alice(&server);
    let ping = format!(
        "<iq type='get' from='{DOMAIN}' id='{{any}}'><ping xmlns='{}'/></iq>",
        ns::PING
    );
    let first = c.expect(&ping);
    let id = first.attr("id").unwrap_or_default().to_owned();
    c.send(&format!("<iq type='result' id='{id}' to='{DOMAIN}'/>"));
    // Answered, so the connection lives on until the next unanswered ping.
    c.expect(&ping);
    c.expect_stream_error("connection-timeout");
}

#[test]
fn graceful_stop_sends_system_shutdown() {
    let mut server = server_with("");
    let mut clients = [alice(&server), Client::user(&server, "bob", "home")];
    let status = server.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    for c in &mut clients {
        c.expect_stream_error("system-shutdown");
    }
}

#[test]
fn sigterm_right_after_start_is_graceful() {
    let mut server = server_with("");
    let status = server.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
}
