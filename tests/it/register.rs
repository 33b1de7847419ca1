//! Account self-service (XEP-0077) over real TLS connections: a password change logs in with
//! the new password only and ends every other login, bound or not; removing the account ends
//! its sessions, tells its contacts and leaves it gone for good; nobody changes or removes
//! another's account, and no account is made in-band, before or after logging in.

use crate::harness::{
    Client, DOMAIN, Element, PASSWORD, TestServer, assert_matches, assert_sasl_failure, ns,
    stanza_error,
};

const REGISTER: &str = "jabber:iq:register";

fn server() -> TestServer {
    let server = TestServer::start();
    server.add_users(&["alice", "bob"]);
    server
}

#[track_caller]
fn refused(server: &TestServer, user: &str, password: &str) {
    let mut c = Client::connect_starttls(server);
    assert_sasl_failure(
        c.try_auth_scram(user, password, "SCRAM-SHA-256"),
        "not-authorized",
    );
}

#[track_caller]
fn error(reply: &Element, error_type: &str, condition: &str) {
    let id = reply.attr("id").unwrap_or_default().to_owned();
    assert_matches(reply, &stanza_error("iq", &id, error_type, condition));
}

/// The JIDs `hearth user list` prints.
fn accounts(server: &TestServer) -> Vec<String> {
    let out = server.cli(&["user", "list"], "");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

fn bind_iq() -> String {
    format!(
        "<iq type='set' id='late'><bind xmlns='{}'><resource>late</resource></bind></iq>",
        ns::BIND
    )
}

#[test]
fn a_new_password_logs_in_alone_and_every_other_login_ends() {
    let server = server();
    let mut phone = Client::user(&server, "alice", "phone");
    let mut laptop = Client::user(&server, "alice", "laptop");
    // Logged in with the old password, not bound yet.
    let mut pending = Client::connect_starttls(&server);
    pending.auth_scram("alice", PASSWORD, "SCRAM-SHA-256");
    let mut bob = Client::user(&server, "bob", "pc");
    let reply = phone.server_iq(
        "set",
        &format!("<query xmlns='{REGISTER}'><username>alice</username><password>a new one</password></query>"),
    );
    assert_matches(&reply, "<iq type='result'/>");
    laptop.expect_stream_error("not-authorized");
    pending.send(&bind_iq());
    pending.expect_stream_error("not-authorized");
    // The session that changed it goes on; others' are untouched.
    phone.sync();
    bob.sync();
    refused(&server, "alice", PASSWORD);
    Client::login(&server, "alice", "a new one", "tablet").sync();
    let mut c = Client::connect_tls(&server);
    c.auth_scram("alice", "a new one", "SCRAM-SHA-1");
    let mut c = Client::connect_tls(&server);
    c.auth_plain("alice", "a new one");
    // Across a restart too.
    drop((phone, bob));
    let mut server = server;
    server.restart();
    refused(&server, "alice", PASSWORD);
    Client::login(&server, "alice", "a new one", "phone").sync();
}

#[test]
fn nobody_changes_or_removes_anothers_account() {
    let server = server();
    let mut bob = Client::user(&server, "bob", "pc");
    let mut alice = Client::user(&server, "alice", "phone");
    let reply = bob.server_iq(
        "set",
        &format!("<query xmlns='{REGISTER}'><username>alice</username><password>mine now</password></query>"),
    );
    error(&reply, "auth", "forbidden");
    for payload in [
        format!("<query xmlns='{REGISTER}'><remove/></query>"),
        format!("<query xmlns='{REGISTER}'><password>mine now</password></query>"),
    ] {
        let reply = bob.iq(&format!("type='set' to='alice@{DOMAIN}'"), &payload);
        error(&reply, "auth", "forbidden");
    }
    alice.sync();
    Client::user(&server, "alice", "tablet").sync();
    assert_eq!(accounts(&server), ["alice@localhost", "bob@localhost"]);
    // A second change right after the first is refused until the interval has passed.
    let reply = alice.server_iq(
        "set",
        &format!("<query xmlns='{REGISTER}'><password>one</password></query>"),
    );
    assert_matches(&reply, "<iq type='result'/>");
    let reply = alice.server_iq(
        "set",
        &format!("<query xmlns='{REGISTER}'><password>two</password></query>"),
    );
    error(&reply, "modify", "policy-violation");
    Client::login(&server, "alice", "one", "x").sync();
}

#[test]
fn removing_the_account_ends_its_sessions_and_contacts_see_it_go() {
    let server = server();
    crate::pep::befriend(&server, "alice", "bob");
    let mut bob = Client::online(&server, "bob", "pc");
    let mut alice = Client::online_expecting(
        &server,
        "alice",
        "phone",
        &["<presence from='bob@localhost/pc'/>"],
    );
    let mut laptop = Client::user(&server, "alice", "laptop");
    bob.expect(&format!("<presence from='{}'/>", alice.jid));
    alice.iq(
        "type='set'",
        "<vCard xmlns='vcard-temp'><FN>Alice</FN></vCard>",
    );
    let reply = alice.server_iq(
        "set",
        &format!("<query xmlns='{REGISTER}'><remove/></query>"),
    );
    assert_matches(&reply, "<iq type='result'/>");
    alice.expect_stream_error("not-authorized");
    laptop.expect_stream_error("not-authorized");
    // Bob sees her go offline and the subscriptions end, both ways.
    let got = bob.expect_unordered(&[
        "<presence type='unavailable' from='alice@localhost/phone'/>",
        "<presence type='unsubscribed' from='alice@localhost'/>",
        "<presence type='unsubscribe' from='alice@localhost'/>",
        "<iq type='set'><query xmlns='jabber:iq:roster'><item jid='alice@localhost' subscription='to'/></query></iq>",
        "<iq type='set'><query xmlns='jabber:iq:roster'><item jid='alice@localhost' subscription='none'/></query></iq>",
    ]);
    for push in &got[3..] {
        let id = push.attr("id").unwrap_or_default();
        bob.send(&format!("<iq type='result' id='{id}'/>"));
    }
    bob.sync();
    // She is gone: no login, no vCard, messages bounce; the account list says so.
    refused(&server, "alice", PASSWORD);
    assert_eq!(accounts(&server), ["bob@localhost"]);
    let reply = bob.iq(
        &format!("type='get' to='alice@{DOMAIN}'"),
        "<vCard xmlns='vcard-temp'/>",
    );
    error(&reply, "cancel", "service-unavailable");
    let id = bob.send_message("alice@localhost", "chat", "are you there?");
    bob.expect(&stanza_error(
        "message",
        &id,
        "cancel",
        "service-unavailable",
    ));
    // Made again, the account starts empty.
    server.add_user("alice@localhost", "fresh");
    let mut alice = Client::login(&server, "alice", "fresh", "phone");
    let roster = alice.iq("type='get'", "<query xmlns='jabber:iq:roster'/>");
    assert!(
        roster.get("query", ns::ROSTER).children.is_empty(),
        "{roster}"
    );
    let reply = alice.iq("type='get'", "<vCard xmlns='vcard-temp'/>");
    assert_matches(&reply, "<iq type='result'><vCard xmlns='vcard-temp'/></iq>");
    assert!(
        reply.get("vCard", "vcard-temp").children.is_empty(),
        "{reply}"
    );
}

#[test]
fn no_account_is_made_in_band() {
    let server = server();
    // Not offered before authentication, and not possible.
    let mut c = Client::connect_starttls(&server);
    assert!(
        c.features
            .child("register", "http://jabber.org/features/iq-register")
            .is_none(),
        "in-band registration is advertised: {}",
        c.features
    );
    c.send(&format!(
        "<iq type='get' id='r1'><query xmlns='{REGISTER}'/></iq>"
    ));
    c.expect_stream_error("not-authorized");
    let mut c = Client::connect_starttls(&server);
    c.send(&format!(
        "<iq type='set' id='r2'><query xmlns='{REGISTER}'><username>mallory</username><password>x</password></query></iq>"
    ));
    c.expect_stream_error("not-authorized");
    // Nor after logging in: the username must be one's own.
    let mut alice = Client::user(&server, "alice", "phone");
    let reply = alice.server_iq(
        "set",
        &format!(
            "<query xmlns='{REGISTER}'><username>mallory</username><password>x</password></query>"
        ),
    );
    error(&reply, "auth", "forbidden");
    assert_eq!(accounts(&server), ["alice@localhost", "bob@localhost"]);
    // What a logged-in user is told.
    let reply = alice.server_iq("get", &format!("<query xmlns='{REGISTER}'/>"));
    assert_matches(
        &reply,
        &format!(
            "<iq type='result'><query xmlns='{REGISTER}'><registered/><username>alice</username></query></iq>"
        ),
    );
}
