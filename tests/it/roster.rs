//! The roster (RFC 6121 §2): get, set, pushes to every interested resource and to no other,
//! remove, roster versioning (RFC 6121 §2.6), and refused sets (RFC 6121 §2.3.3).

use crate::harness::{Client, Element, TestServer, assert_matches, ns, stanza_error};

/// A roster get with `ver`; returns the result.
#[track_caller]
fn roster_get(c: &mut Client, ver: &str) -> Element {
    let reply = c.iq(
        "type='get'",
        &format!("<query xmlns='{}' ver='{ver}'/>", ns::ROSTER),
    );
    assert_matches(&reply, "<iq type='result'/>");
    reply
}

/// The items in a roster result.
fn items(reply: &Element) -> &[Element] {
    &reply.get("query", ns::ROSTER).children
}

/// A roster push pattern carrying `item`.
fn push(item: &str) -> String {
    format!(
        "<iq type='set'><query xmlns='{}' ver='{{any}}'>{item}</query></iq>",
        ns::ROSTER
    )
}

/// Sets `item` from `c`; expects the result and the push (with `pushed`) on `c` and the same
/// push on `other`. Returns the roster version the push carries.
#[track_caller]
fn roster_set(c: &mut Client, other: &mut Client, item: &str, pushed: &str) -> String {
    let id = c.send_iq(
        "type='set'",
        &format!("<query xmlns='{}'>{item}</query>", ns::ROSTER),
    );
    let result = format!("<iq type='result' id='{id}'/>");
    let got = c.expect_unordered(&[&result, &push(pushed)]);
    let ver = got[1]
        .get("query", ns::ROSTER)
        .attr("ver")
        .unwrap_or_default();
    let on_other = other.expect(&push(pushed));
    assert_eq!(
        on_other.get("query", ns::ROSTER).attr("ver"),
        Some(ver),
        "both resources get the same version"
    );
    ver.to_owned()
}

#[test]
fn get_set_push_version_and_remove() {
    let server = TestServer::start();
    server.add_users(&["alice", "bob"]);
    let mut one = Client::user(&server, "alice", "one");
    let mut two = Client::user(&server, "alice", "two");
    let mut uninterested = Client::user(&server, "alice", "three");

    let empty = roster_get(&mut one, "");
    assert!(items(&empty).is_empty(), "a new account's roster: {empty}");
    let ver0 = empty
        .get("query", ns::ROSTER)
        .attr("ver")
        .expect("a versioned roster result carries ver (RFC 6121 §2.6.3)")
        .to_owned();
    roster_get(&mut two, "");

    let item = "<item jid='bob@localhost' name='Bee'><group>Friends</group></item>";
    let stored = "<item jid='bob@localhost' name='Bee' subscription='none'>\
                  <group>Friends</group></item>";
    let ver1 = roster_set(&mut one, &mut two, item, stored);
    assert_ne!(ver1, ver0, "the version changes with the roster");
    uninterested.sync();

    let full = roster_get(&mut one, "");
    assert_matches(
        &full,
        &format!(
            "<iq><query xmlns='{}' ver='{ver1}'>{stored}</query></iq>",
            ns::ROSTER
        ),
    );
    assert_eq!(items(&full).len(), 1, "one item: {full}");
    let unchanged = roster_get(&mut two, &ver1);
    assert!(
        unchanged.children.is_empty(),
        "roster unchanged since {ver1}: expected an empty result, got {unchanged}"
    );

    let remove = "<item jid='bob@localhost' subscription='remove'/>";
    let ver2 = roster_set(&mut one, &mut two, remove, remove);
    assert_ne!(ver2, ver1, "the version changes with the roster");
    uninterested.sync();
    let after = roster_get(&mut one, "");
    assert!(
        items(&after).is_empty(),
        "removed item still there: {after}"
    );
}

#[test]
fn invalid_roster_sets_are_refused() {
    let server = TestServer::start();
    server.add_users(&["alice"]);
    let mut c = Client::user(&server, "alice", "home");
    // RFC 6121 §2.3.3: one item per set; an empty group name is not acceptable.
    let sets = [
        (
            "<item jid='bob@localhost'/><item jid='carol@localhost'/>",
            "bad-request",
        ),
        (
            "<item jid='bob@localhost'><group></group></item>",
            "not-acceptable",
        ),
    ];
    for (items, condition) in sets {
        let query = format!("<query xmlns='{}'>{items}</query>", ns::ROSTER);
        let id = c.send_iq("type='set'", &query);
        c.expect(&stanza_error("iq", &id, "modify", condition));
    }
    let roster = roster_get(&mut c, "");
    assert!(
        items(&roster).is_empty(),
        "a refused set changed the roster: {roster}"
    );
}
