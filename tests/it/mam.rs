//! Message Archive Management (XEP-0313) with XEP-0059 paging: 520 messages paged through in
//! both directions, every filter (with, start/end, after-id/before-id, ids), the stanza-id on a
//! delivered message equal to its archive id, preferences, and a session that queries the
//! archive not getting offline messages that a plain session does get.

use crate::harness::{Client, DOMAIN, Element, Event, TestServer, assert_matches, ns};
use std::time::Duration;

const MAM: &str = "urn:xmpp:mam:2";
const RSM: &str = "http://jabber.org/protocol/rsm";
const FORWARD: &str = "urn:xmpp:forward:0";
const SID: &str = "urn:xmpp:sid:0";
const FORMS: &str = "jabber:x:data";

/// One archived message as a query returned it.
#[derive(Debug)]
struct Item {
    id: String,
    stamp: String,
    body: String,
    msg: Element,
}

/// One page: its items in order, and the `<fin/>`.
struct Page {
    items: Vec<Item>,
    fin: Element,
}

impl Page {
    fn complete(&self) -> bool {
        self.fin.attr("complete") == Some("true")
    }
    fn ids(&self) -> Vec<&str> {
        self.items.iter().map(|i| i.id.as_str()).collect()
    }
    fn bodies(&self) -> Vec<&str> {
        self.items.iter().map(|i| i.body.as_str()).collect()
    }
}

/// A data form with these (var, values) fields.
fn form(fields: &[(&str, &[&str])]) -> String {
    let mut out = format!(
        "<x xmlns='{FORMS}' type='submit'><field var='FORM_TYPE' type='hidden'>\
         <value>{MAM}</value></field>"
    );
    for (var, values) in fields {
        out.push_str(&format!("<field var='{var}'>"));
        for v in *values {
            out.push_str(&format!("<value>{v}</value>"));
        }
        out.push_str("</field>");
    }
    out + "</x>"
}

fn rsm(inner: &str) -> String {
    format!("<set xmlns='{RSM}'>{inner}</set>")
}

/// Sends a query with `inner` (form and set) and reads its results and the iq reply, which
/// is returned as is when it is an error.
#[track_caller]
fn try_query(c: &mut Client, inner: &str) -> Result<Page, Element> {
    let qid = c.id();
    let id = c.send_iq(
        "type='set'",
        &format!("<query xmlns='{MAM}' queryid='{qid}'>{inner}</query>"),
    );
    let mut items = Vec::new();
    loop {
        let el = c.recv();
        if el.is("iq", ns::CLIENT) && el.attr("id") == Some(id.as_str()) {
            if el.attr("type") == Some("error") {
                return Err(el);
            }
            assert_matches(&el, "<iq type='result'/>");
            let fin = el.get("fin", MAM).clone();
            return Ok(Page { items, fin });
        }
        assert_matches(
            &el,
            &format!(
                "<message from='{}' to='{}'><result xmlns='{MAM}' queryid='{qid}' id='{{any}}'>\
                 <forwarded xmlns='{FORWARD}'><delay xmlns='{}' stamp='{{any}}'/>\
                 <message xmlns='{}'/></forwarded></result></message>",
                c.bare(),
                c.jid,
                ns::DELAY,
                ns::CLIENT
            ),
        );
        let result = el.get("result", MAM);
        let fwd = result.get("forwarded", FORWARD);
        let msg = fwd.get("message", ns::CLIENT).clone();
        items.push(Item {
            id: result.attr("id").unwrap_or_default().to_owned(),
            stamp: fwd
                .get("delay", ns::DELAY)
                .attr("stamp")
                .unwrap_or_default()
                .to_owned(),
            body: msg
                .child("body", ns::CLIENT)
                .map(|b| b.text.clone())
                .unwrap_or_default(),
            msg,
        });
    }
}

#[track_caller]
fn query(c: &mut Client, inner: &str) -> Page {
    try_query(c, inner).unwrap_or_else(|e| panic!("query {inner} failed: {e}"))
}

#[track_caller]
fn query_fails(c: &mut Client, inner: &str, condition: &str) {
    match try_query(c, inner) {
        Ok(_) => panic!("query {inner} succeeded; expected {condition}"),
        Err(e) => assert!(
            e.get("error", ns::CLIENT)
                .child(condition, ns::STANZAS)
                .is_some(),
            "expected {condition}, got {e}"
        ),
    }
}

/// A ping whose reply may take `secs` (after a burst of messages, each committed to disk).
#[track_caller]
fn slow_sync(c: &mut Client, secs: u64) {
    let id = c.send_iq(
        &format!("type='get' to='{DOMAIN}'"),
        &format!("<ping xmlns='{}'/>", ns::PING),
    );
    match c.next_event_within(Duration::from_secs(secs)) {
        Some(Event::Stanza(el)) => {
            assert_matches(&el, &format!("<iq type='result' id='{id}'/>"));
        }
        other => panic!("no ping reply within {secs} s: {other:?}"),
    }
}

const TOTAL: usize = 520;

/// alice sends TOTAL messages: every tenth to carol, the rest to bob (both offline).
fn fill(server: &TestServer) -> Client {
    let mut alice = Client::user(server, "alice", "desk");
    for i in 0..TOTAL {
        let to = if i % 10 == 0 { "carol" } else { "bob" };
        alice.send_message(&format!("{to}@{DOMAIN}"), "chat", &format!("m{i}"));
    }
    slow_sync(&mut alice, 120);
    alice
}

#[test]
fn paging_and_filters_over_520_messages() {
    let server = TestServer::start_with(
        "[modules.offline]\nmax_per_user = 2000\n[limits]\nqueue_len = 3000\n",
    );
    server.add_users(&["alice", "bob", "carol"]);
    let mut alice = fill(&server);
    let all_bodies: Vec<String> = (0..TOTAL).map(|i| format!("m{i}")).collect();

    // Forward with RSM after, 100 at a time, until complete.
    let mut forward: Vec<Item> = Vec::new();
    let mut after = String::new();
    loop {
        let page = query(&mut alice, &rsm(&format!("<max>100</max>{after}")));
        assert!(page.items.len() <= 100);
        if let (Some(first), Some(last)) = (page.items.first(), page.items.last()) {
            let set = page.fin.get("set", RSM);
            assert_eq!(set.get("first", RSM).text, first.id);
            assert_eq!(set.get("last", RSM).text, last.id);
            after = format!("<after>{}</after>", last.id);
        }
        let done = page.complete();
        forward.extend(page.items);
        if done {
            break;
        }
    }
    let bodies: Vec<&str> = forward.iter().map(|i| i.body.as_str()).collect();
    assert_eq!(bodies, all_bodies, "every message once, oldest first");
    let ids: Vec<u64> = forward.iter().map(|i| i.id.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase");
    assert_matches(
        &forward[1].msg,
        &format!(
            "<message from='{}' to='bob@{DOMAIN}' type='chat'><body>m1</body></message>",
            alice.jid
        ),
    );

    // Backward from the last page (empty <before/>), 150 at a time.
    let mut backward: Vec<String> = Vec::new();
    let mut before = "<before/>".to_owned();
    loop {
        let page = query(&mut alice, &rsm(&format!("<max>150</max>{before}")));
        if let Some(first) = page.items.first() {
            before = format!("<before>{}</before>", first.id);
        }
        let done = page.complete();
        let mut b: Vec<String> = page.bodies().iter().map(|s| s.to_string()).collect();
        b.extend(backward);
        backward = b;
        if done {
            break;
        }
    }
    assert_eq!(
        backward, all_bodies,
        "backward paging sees the same archive"
    );

    // Without RSM: the default page (50), oldest first, not complete; max is capped at 250.
    let page = query(&mut alice, "");
    assert_eq!(page.items.len(), 50);
    assert!(!page.complete());
    let page = query(&mut alice, &rsm("<max>100000</max>"));
    assert_eq!(page.items.len(), 250);

    // with: the 52 messages to carol.
    let page = query(
        &mut alice,
        &(form(&[("with", &[&format!("carol@{DOMAIN}")])]) + &rsm("<max>100</max>")),
    );
    assert!(page.complete());
    let want: Vec<String> = (0..TOTAL).step_by(10).map(|i| format!("m{i}")).collect();
    assert_eq!(page.bodies(), want);

    // start/end: exactly the messages whose stamps fall within, as listed above.
    let (start, end) = (forward[100].stamp.clone(), forward[300].stamp.clone());
    let page = query(
        &mut alice,
        &(form(&[("start", &[&start]), ("end", &[&end])]) + &rsm("<max>250</max>")),
    );
    let want: Vec<&str> = forward
        .iter()
        .filter(|i| i.stamp >= start && i.stamp <= end)
        .map(|i| i.body.as_str())
        .collect();
    assert!(want.len() >= 201);
    assert_eq!(page.bodies(), want[..want.len().min(250)]);

    // after-id/before-id are exclusive.
    let page = query(
        &mut alice,
        &form(&[
            ("after-id", &[&forward[10].id]),
            ("before-id", &[&forward[20].id]),
        ]),
    );
    assert_eq!(page.bodies(), all_bodies[11..20]);
    assert!(page.complete());

    // ids: just those, in archive order.
    let page = query(
        &mut alice,
        &form(&[("ids", &[&forward[500].id, &forward[3].id, &forward[7].id])]),
    );
    let want = [&forward[3].id, &forward[7].id, &forward[500].id];
    assert_eq!(page.ids(), want.map(String::as_str));

    // bob's archive holds his copies only.
    let mut bob = Client::user(&server, "bob", "phone");
    let page = query(&mut bob, &rsm("<max>250</max><before/>"));
    assert_eq!(page.items.len(), 250);
    assert_eq!(page.items.last().map(|i| i.body.as_str()), Some("m519"));

    // Bad input.
    query_fails(&mut alice, &rsm("<after>12345</after>"), "item-not-found");
    query_fails(&mut alice, &rsm("<before>nope</before>"), "item-not-found");
    query_fails(
        &mut alice,
        &form(&[("start", &["last tuesday"])]),
        "bad-request",
    );
    query_fails(&mut alice, &form(&[("colour", &["red"])]), "bad-request");
    query_fails(&mut alice, &rsm("<max>many</max>"), "bad-request");
}

#[test]
fn stanza_id_prefs_form_and_metadata() {
    let server = TestServer::start();
    server.add_users(&["alice", "bob"]);
    let mut alice = Client::user(&server, "alice", "desk");
    let mut bob = Client::online(&server, "bob", "phone");

    // The delivered copy carries bob's archive id, and a forged one from alice is dropped.
    alice.send(&format!(
        "<message to='bob@{DOMAIN}' type='chat' id='s1'><body>hello</body>\
         <stanza-id xmlns='{SID}' by='bob@{DOMAIN}' id='forged'/>\
         <origin-id xmlns='{SID}' id='o1'/></message>"
    ));
    let got = bob.expect(&format!(
        "<message id='s1'><body>hello</body><origin-id xmlns='{SID}' id='o1'/>\
         <stanza-id xmlns='{SID}' by='bob@{DOMAIN}' id='{{any}}'/></message>"
    ));
    let sids: Vec<&Element> = got
        .children
        .iter()
        .filter(|c| c.is("stanza-id", SID))
        .collect();
    assert_eq!(sids.len(), 1, "only the server's stanza-id: {got}");
    let sid = sids[0].attr("id").unwrap_or_default().to_owned();
    // Paging from an id just delivered works even before its archive write has committed.
    let page = query(&mut bob, &rsm(&format!("<after>{sid}</after>")));
    assert!(page.items.is_empty() && page.complete());
    // alice's ping returns once her message's writes are durable.
    alice.sync();
    let page = query(&mut bob, &rsm("<max>1</max><before/>"));
    assert_eq!(page.ids(), vec![sid.as_str()]);
    assert_eq!(page.bodies(), vec!["hello"]);

    // Metadata names the first and last id.
    let meta = bob.iq("type='get'", &format!("<metadata xmlns='{MAM}'/>"));
    assert_matches(
        &meta,
        &format!(
            "<iq type='result'><metadata xmlns='{MAM}'><start id='{sid}' timestamp='{{any}}'/>\
             <end id='{sid}' timestamp='{{any}}'/></metadata></iq>"
        ),
    );

    // The form lists the fields, and disco the features.
    let f = bob.iq("type='get'", &format!("<query xmlns='{MAM}'/>"));
    assert_matches(
        &f,
        &format!(
            "<iq type='result'><query xmlns='{MAM}'><x xmlns='{FORMS}' type='form'>\
             <field var='with'/><field var='start'/><field var='end'/><field var='ids'/>\
             <field var='after-id'/><field var='before-id'/></x></query></iq>"
        ),
    );
    let info = bob.server_iq("get", &format!("<query xmlns='{}'/>", ns::DISCO_INFO));
    for feature in [MAM, "urn:xmpp:mam:2#extended", SID] {
        assert_matches(
            &info,
            &format!(
                "<iq><query xmlns='{}'><feature var='{feature}'/></query></iq>",
                ns::DISCO_INFO
            ),
        );
    }

    // Preferences: bob never archives alice; alice still archives what she sends.
    let prefs = format!(
        "<prefs xmlns='{MAM}' default='always'><always/><never><jid>alice@{DOMAIN}</jid>\
         </never></prefs>"
    );
    let reply = bob.iq("type='set'", &prefs);
    assert_matches(&reply, &format!("<iq type='result'>{prefs}</iq>"));
    let reply = bob.iq("type='get'", &format!("<prefs xmlns='{MAM}'/>"));
    assert_matches(&reply, &format!("<iq type='result'>{prefs}</iq>"));
    alice.send_message(&format!("bob@{DOMAIN}"), "chat", "not kept");
    let got = bob.expect("<message><body>not kept</body></message>");
    alice.sync();
    assert!(got.child("stanza-id", SID).is_none(), "not archived: {got}");
    let page = query(&mut bob, &rsm("<before/>"));
    assert_eq!(page.bodies(), vec!["hello"]);
    let page = query(&mut alice, &rsm("<before/>"));
    assert_eq!(page.bodies(), vec!["hello", "not kept"]);
    let bad = bob.iq(
        "type='set'",
        &format!("<prefs xmlns='{MAM}' default='maybe'/>"),
    );
    assert_matches(&bad, "<iq type='error'><error type='modify'/></iq>");
    bob.sync();
    alice.sync();
}

#[test]
fn archive_sessions_skip_archived_offline_messages_and_empty_the_store() {
    let server = TestServer::start();
    server.add_users(&["alice", "bob"]);
    let mut alice = Client::user(&server, "alice", "desk");
    alice.send_message(&format!("bob@{DOMAIN}"), "chat", "first");
    alice.sync();

    // A plain session gets it from offline storage, with the archive's stanza-id.
    let delayed = format!(
        "<message from='{}' type='chat'><body>first</body>\
         <delay xmlns='{}' stamp='{{any}}'/><stanza-id xmlns='{SID}' by='bob@{DOMAIN}'/>\
         </message>",
        alice.jid,
        ns::DELAY
    );
    let mut plain = Client::user(&server, "bob", "plain");
    plain.send("<presence/>");
    let own = format!("<presence from='{}'/>", plain.jid);
    plain.expect_unordered(&[own.as_str(), delayed.as_str()]);
    plain.sync();
    plain.close();

    alice.send_message(&format!("bob@{DOMAIN}"), "chat", "while you were out");
    alice.sync();
    // A session that queried the archive finds the message there, and not again offline.
    let mut mam = Client::user(&server, "bob", "mam");
    let page = query(&mut mam, &rsm("<before/>"));
    assert_eq!(page.bodies(), vec!["first", "while you were out"]);
    mam.send("<presence/>");
    mam.expect(&format!("<presence from='{}'/>", mam.jid));
    mam.sync();
    mam.close();

    // ...and offline storage was emptied, so it cannot fill up for archive users.
    let mut later = Client::user(&server, "bob", "later");
    later.send("<presence/>");
    later.expect(&format!("<presence from='{}'/>", later.jid));
    later.sync();
}

/// Issue 8, finding 9: archives had no byte quota, so one user could fill the disk. A full
/// archive keeps its history and takes nothing new (said once in the log); the messages are
/// still delivered, without an archive id.
#[test]
fn a_full_archive_keeps_its_history_and_takes_nothing_new() {
    let server = TestServer::start_with("[modules.mam]\nmax_bytes_per_user = 100000\n");
    server.add_users(&["alice", "bob"]);
    let mut bob = Client::user(&server, "bob", "pc");
    let mut alice = Client::user(&server, "alice", "desk");
    let filler = "x".repeat(30_000);
    for i in 0..5 {
        alice.send(&format!(
            "<message to='bob@{DOMAIN}/pc' type='chat' id='m{i}'><body>m{i} {filler}</body></message>"
        ));
        let got = bob.expect(&format!("<message id='m{i}'/>"));
        let archived = got.child("stanza-id", SID).is_some();
        assert_eq!(
            archived,
            i < 3,
            "m{i}: {}",
            got.attr("id").unwrap_or_default()
        );
    }
    let page = query(&mut bob, &rsm("<max>10</max>"));
    let kept: Vec<&str> = page.bodies().iter().map(|b| &b[..2]).collect();
    assert_eq!(kept, ["m0", "m1", "m2"]);
    assert!(page.complete());
    alice.sync();
    let log = server.log();
    for user in ["alice", "bob"] {
        let full = format!("the archive of {user} is full");
        assert_eq!(log.matches(&full).count(), 1, "{log}");
    }
}

/// A page of large messages stops at half of `limits.queue_bytes`, so that its results never
/// overflow the client's queue: the client pages on as usual.
#[test]
fn a_page_of_large_messages_is_cut_by_bytes() {
    let server = TestServer::start_with(
        "[limits]\nqueue_bytes = 1000000\nbytes_per_sec = 104857600\n\
         [modules.offline]\nmax_bytes_per_user = 500000\n",
    );
    server.add_users(&["alice", "bob"]);
    let mut bob = Client::user(&server, "bob", "pc");
    let mut alice = Client::user(&server, "alice", "desk");
    let filler = "x".repeat(100_000);
    for i in 0..10 {
        alice.send(&format!(
            "<message to='bob@{DOMAIN}/pc' type='chat' id='m{i}'><body>m{i} {filler}</body></message>"
        ));
        bob.expect(&format!("<message id='m{i}'/>"));
    }
    let mut page = query(&mut alice, &rsm("<max>10</max>"));
    assert!(page.items.len() < 10, "{} items", page.items.len());
    let mut bodies: Vec<String> = Vec::new();
    loop {
        bodies.extend(page.bodies().iter().map(|b| b[..2].to_owned()));
        if page.complete() {
            break;
        }
        let last = page
            .items
            .last()
            .expect("a page that is not complete has items");
        let after = format!("<max>10</max><after>{}</after>", last.id);
        page = query(&mut alice, &rsm(&after));
    }
    let want: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, want);
}
