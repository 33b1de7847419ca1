//! Message Carbons (XEP-0280): with two resources of one account that enabled carbons, each
//! sees what the other sends (`<sent/>`) and receives (`<received/>`); `<private/>` messages
//! and a resource that disabled carbons get no copy.

use crate::harness::{Client, DOMAIN, TestServer, assert_matches, ns};

const CARBONS: &str = "urn:xmpp:carbons:2";
const FORWARD: &str = "urn:xmpp:forward:0";

#[track_caller]
fn carbons(c: &mut Client, what: &str) {
    let reply = c.iq("type='set'", &format!("<{what} xmlns='{CARBONS}'/>"));
    assert_matches(&reply, "<iq type='result'/>");
}

/// A carbon of `kind` (sent, received) for `to`, wrapping a chat `from` → `orig_to` with `body`.
fn carbon(kind: &str, to: &str, from: &str, orig_to: &str, body: &str) -> String {
    format!(
        "<message from='alice@{DOMAIN}' to='{to}' type='chat'><{kind} xmlns='{CARBONS}'>\
         <forwarded xmlns='{FORWARD}'><message xmlns='{}' from='{from}' to='{orig_to}' \
         type='chat'><body>{body}</body></message></forwarded></{kind}></message>",
        ns::CLIENT
    )
}

#[test]
fn two_resources_see_each_others_traffic() {
    let server = TestServer::start();
    server.add_users(&["alice", "bob"]);
    let mut one = Client::user(&server, "alice", "one");
    let mut two = Client::user(&server, "alice", "two");
    let mut bob = Client::online(&server, "bob", "home");
    carbons(&mut one, "enable");
    carbons(&mut two, "enable");
    // The server's own domain is an accepted address too, as some clients use it.
    let reply = one.server_iq("set", &format!("<enable xmlns='{CARBONS}'/>"));
    assert_matches(&reply, "<iq type='result'/>");

    // Sent: one writes to bob; two gets a <sent/> copy.
    one.send_message(&format!("bob@{DOMAIN}"), "chat", "hi bob");
    bob.expect(&format!(
        "<message from='{}' type='chat'><body>hi bob</body></message>",
        one.jid
    ));
    two.expect(&carbon(
        "sent",
        &two.jid,
        &one.jid,
        &format!("bob@{DOMAIN}"),
        "hi bob",
    ));

    // Received: bob writes to one's full JID; two gets a <received/> copy.
    bob.send_message(&one.jid, "chat", "hi one");
    one.expect("<message type='chat'><body>hi one</body></message>");
    two.expect(&carbon("received", &two.jid, &bob.jid, &one.jid, "hi one"));

    // Private messages are not copied, and the <private/> stays on what bob gets.
    one.send(&format!(
        "<message to='bob@{DOMAIN}' type='chat' id='p1'><body>secret</body>\
         <private xmlns='{CARBONS}'/><no-copy xmlns='urn:xmpp:hints'/></message>"
    ));
    bob.expect(&format!(
        "<message id='p1'><body>secret</body><private xmlns='{CARBONS}'/></message>"
    ));
    bob.send(&format!(
        "<message to='{}' type='chat' id='p2'><body>shh</body><private xmlns='{CARBONS}'/>\
         </message>",
        one.jid
    ));
    one.expect("<message id='p2'><body>shh</body></message>");

    // Disabled: two gets nothing more.
    carbons(&mut two, "disable");
    bob.send_message(&one.jid, "chat", "after disable");
    one.expect("<message><body>after disable</body></message>");
    one.send_message(&format!("bob@{DOMAIN}"), "chat", "also after");
    bob.expect("<message><body>also after</body></message>");
    bob.sync();
    one.sync();
    two.sync();
}

#[test]
fn enable_must_be_a_set_and_is_advertised() {
    let server = TestServer::start();
    server.add_users(&["alice"]);
    let mut c = Client::user(&server, "alice", "one");
    let reply = c.iq("type='get'", &format!("<enable xmlns='{CARBONS}'/>"));
    assert_matches(&reply, "<iq type='error'><error type='modify'/></iq>");
    let info = c.server_iq("get", &format!("<query xmlns='{}'/>", ns::DISCO_INFO));
    assert_matches(
        &info,
        &format!(
            "<iq type='result'><query xmlns='{}'><feature var='{CARBONS}'/></query></iq>",
            ns::DISCO_INFO
        ),
    );
}
