//! Multi-User Chat (XEP-0045) over TLS against the real server: a family room with history,
//! members, a kick and a ban, members-only refusal, the room surviving a restart, its archive
//! (XEP-0313) paged through, self-ping (XEP-0410) in and out of the room and across a dropped
//! phone connection, private messages, nickname conflicts and changes; and attacks on it.

use crate::harness::{Client, Element, Event, TestServer, assert_matches, ns, pattern};
use std::time::{Duration, Instant};

const MUC: &str = "http://jabber.org/protocol/muc";
const USER: &str = "http://jabber.org/protocol/muc#user";
const ADMIN: &str = "http://jabber.org/protocol/muc#admin";
const OWNER: &str = "http://jabber.org/protocol/muc#owner";
const SM: &str = "urn:xmpp:sm:3";
const SERVICE: &str = "muc.localhost";

fn room(name: &str) -> String {
    format!("{name}@{SERVICE}")
}

fn server_with(extra: &str) -> TestServer {
    let server = TestServer::start_with(extra);
    server.add_users(&["alice", "bob", "carol", "dave"]);
    server
}

/// Enters `room` as `nick` with `extra` in the MUC `<x/>`; returns what the room sent up to
/// and including the subject, which comes last (XEP-0045 §7.2.1).
fn enter_with(c: &mut Client, name: &str, nick: &str, extra: &str) -> Vec<Element> {
    c.send(&format!(
        "<presence to='{}/{nick}'><x xmlns='{MUC}'>{extra}</x></presence>",
        room(name)
    ));
    let mut got = Vec::new();
    loop {
        let el = c.recv();
        assert!(
            el.attr("type") != Some("error"),
            "{} could not enter {name}: {el}",
            c.jid
        );
        let done = el.name == "message" && el.child("subject", ns::CLIENT).is_some();
        got.push(el);
        if done {
            return got;
        }
    }
}

fn enter(c: &mut Client, name: &str, nick: &str) -> Vec<Element> {
    enter_with(c, name, nick, "")
}

/// A refused entry: the error presence with `condition`.
fn refused(c: &mut Client, name: &str, nick: &str, condition: &str) {
    c.send(&format!(
        "<presence to='{}/{nick}'><x xmlns='{MUC}'/></presence>",
        room(name)
    ));
    c.expect(&format!(
        "<presence type='error' from='{}/{nick}'><error by='{}'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>",
        room(name),
        room(name)
    ));
}

/// Reads until a stanza matches `want`, skipping others, for up to `within`.
#[track_caller]
fn wait_for(c: &mut Client, want: &str, within: Duration) -> Element {
    let p = pattern(want);
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_event_within(left) {
            Some(Event::Stanza(el)) if el.matches(&p) => return el,
            Some(Event::Stanza(_)) => {}
            other => panic!("{}: waiting for {want}, got {other:?}", c.jid),
        }
    }
}

/// Pings the server and skips whatever arrives before the answer.
fn drain(c: &mut Client) {
    let id = c.send_iq(
        "type='get' to='localhost'",
        &format!("<ping xmlns='{}'/>", ns::PING),
    );
    while c.recv().attr("id") != Some(id.as_str()) {}
}

fn status_codes(el: &Element) -> Vec<String> {
    el.child("x", USER)
        .map(|x| {
            x.children
                .iter()
                .filter(|e| e.name == "status")
                .filter_map(|e| e.attr("code").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn own_presence(got: &[Element]) -> &Element {
    got.iter()
        .find(|e| e.name == "presence" && status_codes(e).contains(&"110".to_owned()))
        .expect("a self-presence")
}

fn configure(c: &mut Client, name: &str, fields: &[(&str, &str)]) -> Element {
    let mut form = format!(
        "<field var='FORM_TYPE'><value>{}</value></field>",
        "http://jabber.org/protocol/muc#roomconfig"
    );
    for (var, v) in fields {
        form.push_str(&format!("<field var='{var}'><value>{v}</value></field>"));
    }
    c.iq(
        &format!("type='set' to='{}'", room(name)),
        &format!(
            "<query xmlns='{OWNER}'><x xmlns='jabber:x:data' type='submit'>{form}</x></query>"
        ),
    )
}

fn admin(c: &mut Client, name: &str, items: &str) -> Element {
    c.iq(
        &format!("type='set' to='{}'", room(name)),
        &format!("<query xmlns='{ADMIN}'>{items}</query>"),
    )
}

fn say(c: &mut Client, name: &str, body: &str) {
    c.send(&format!(
        "<message type='groupchat' id='{body}' to='{}'><body>{body}</body></message>",
        room(name)
    ));
}

fn heard(c: &mut Client, name: &str, nick: &str, body: &str) -> Element {
    c.expect(&format!(
        "<message type='groupchat' from='{}/{nick}'><body>{body}</body></message>",
        room(name)
    ))
}

/// alice creates the private family room (persistent, members-only, non-anonymous) and makes
/// bob and carol members.
fn family_room(alice: &mut Client) {
    let got = enter(alice, "family", "Mum");
    assert_eq!(status_codes(own_presence(&got)), ["110", "170", "201"]);
    let r = configure(
        alice,
        "family",
        &[
            ("muc#roomconfig_roomname", "Family"),
            ("muc#roomconfig_persistentroom", "1"),
            ("muc#roomconfig_membersonly", "1"),
            ("muc#roomconfig_whois", "anyone"),
            ("muc#roomconfig_publicroom", "0"),
        ],
    );
    assert_matches(&r, "<iq type='result'/>");
    let r = admin(
        alice,
        "family",
        "<item affiliation='member' jid='bob@localhost' nick='Dad'/>\
         <item affiliation='member' jid='carol@localhost'/>",
    );
    assert_matches(&r, "<iq type='result'/>");
}

#[test]
fn a_family_room_with_history_members_a_kick_and_a_ban() {
    let server = server_with("");
    let mut alice = Client::online(&server, "alice", "phone");
    let mut bob = Client::online(&server, "bob", "laptop");
    let mut carol = Client::online(&server, "carol", "tablet");
    let mut dave = Client::online(&server, "dave", "pc");
    // The server lists the room service.
    let items = alice.server_iq(
        "get",
        "<query xmlns='http://jabber.org/protocol/disco#items'/>",
    );
    assert_matches(
        &items,
        &format!(
            "<iq><query xmlns='http://jabber.org/protocol/disco#items'><item jid='{SERVICE}'/></query></iq>"
        ),
    );
    family_room(&mut alice);
    // Not a member: refused.
    refused(&mut dave, "family", "Stranger", "registration-required");
    let got = enter(&mut bob, "family", "Dad");
    assert_eq!(status_codes(own_presence(&got)), ["100", "110", "170"]);
    alice.expect(&format!("<presence from='{}/Dad'><x xmlns='{USER}'><item affiliation='member' role='participant' jid='{}'/></x></presence>", room("family"), bob.jid));
    enter(&mut carol, "family", "Kid");
    alice.expect(&format!("<presence from='{}/Kid'/>", room("family")));
    bob.expect(&format!("<presence from='{}/Kid'/>", room("family")));
    // Three people talk; each hears everyone, their own messages too, with the room's ids.
    say(&mut alice, "family", "lunch on Sunday");
    for c in [&mut alice, &mut bob, &mut carol] {
        let m = heard(c, "family", "Mum", "lunch on Sunday");
        assert_eq!(
            m.get("stanza-id", "urn:xmpp:sid:0").attr("by"),
            Some("family@muc.localhost")
        );
    }
    say(&mut bob, "family", "I will bring bread");
    for c in [&mut alice, &mut bob, &mut carol] {
        heard(c, "family", "Dad", "I will bring bread");
    }
    alice.send(&format!(
        "<message type='groupchat' to='{}'><subject>Sunday lunch</subject></message>",
        room("family")
    ));
    for c in [&mut alice, &mut bob, &mut carol] {
        c.expect(&format!(
            "<message type='groupchat' from='{}/Mum'><subject>Sunday lunch</subject></message>",
            room("family")
        ));
    }
    // Carol's phone joins later: the history, then the subject.
    let mut phone = Client::online(&server, "carol", "phone");
    carol.settle();
    let got = enter(&mut phone, "family", "Kid");
    for c in [&mut alice, &mut bob, &mut carol] {
        c.settle();
    }
    let bodies: Vec<String> = got
        .iter()
        .filter_map(|e| e.child("body", ns::CLIENT).map(|b| b.text.clone()))
        .collect();
    assert_eq!(bodies, ["lunch on Sunday", "I will bring bread"]);
    assert_matches(
        got.last().unwrap(),
        "<message><subject>Sunday lunch</subject><delay xmlns='urn:xmpp:delay' from='family@muc.localhost'/></message>",
    );
    // The member list is readable by members (what Conversations needs for OMEMO).
    let list = carol.iq(
        &format!("type='get' to='{}'", room("family")),
        &format!("<query xmlns='{ADMIN}'><item affiliation='member'/></query>"),
    );
    assert_matches(
        &list,
        &format!(
            "<iq type='result'><query xmlns='{ADMIN}'><item affiliation='member' jid='bob@localhost' nick='Dad'/><item affiliation='member' jid='carol@localhost'/></query></iq>"
        ),
    );
    // A kick: bob is out with 307 and may come back.
    let r = admin(
        &mut alice,
        "family",
        "<item nick='Dad' role='none'><reason>too loud</reason></item>",
    );
    assert_matches(&r, "<iq type='result'/>");
    bob.expect(&format!("<presence type='unavailable' from='{}/Dad'><x xmlns='{USER}'><item role='none'><reason>too loud</reason></item><status code='110'/><status code='307'/></x></presence>", room("family")));
    carol.expect(&format!("<presence type='unavailable' from='{}/Dad'><x xmlns='{USER}'><status code='307'/></x></presence>", room("family")));
    alice.expect(&format!(
        "<presence type='unavailable' from='{}/Dad'/>",
        room("family")
    ));
    enter(&mut bob, "family", "Dad");
    alice.expect(&format!("<presence from='{}/Dad'/>", room("family")));
    // A ban: carol's sessions are out with 301 and stay out.
    let r = admin(
        &mut alice,
        "family",
        "<item affiliation='outcast' jid='carol@localhost'/>",
    );
    assert_matches(&r, "<iq type='result'/>");
    for c in [&mut carol, &mut phone] {
        let p = format!(
            "<presence type='unavailable' from='{}/Kid'><x xmlns='{USER}'><item affiliation='outcast' role='none'/><status code='110'/><status code='301'/></x></presence>",
            room("family")
        );
        wait_for(c, &p, Duration::from_secs(5));
    }
    refused(&mut carol, "family", "Kid", "forbidden");
    // The rest talk on.
    alice.settle();
    bob.settle();
    say(&mut bob, "family", "she will be back");
    heard(&mut alice, "family", "Dad", "she will be back");
    carol.sync();
}

#[test]
fn the_room_survives_a_restart() {
    let mut server = server_with("");
    let mut alice = Client::online(&server, "alice", "phone");
    family_room(&mut alice);
    alice.send(&format!(
        "<message type='groupchat' to='{}'><subject>Holidays</subject></message>",
        room("family")
    ));
    alice.expect("<message><subject>Holidays</subject></message>");
    for i in 0..3 {
        say(&mut alice, "family", &format!("plan {i}"));
        heard(&mut alice, "family", "Mum", &format!("plan {i}"));
    }
    // A temporary room does not outlive the server.
    let mut dave = Client::online(&server, "dave", "pc");
    enter(&mut dave, "scratch", "D");
    assert_matches(&configure(&mut dave, "scratch", &[]), "<iq type='result'/>");
    drop(alice);
    drop(dave);
    server.restart();
    let mut bob = Client::online(&server, "bob", "laptop");
    let info = bob.iq(
        &format!("type='get' to='{}'", room("family")),
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    );
    for f in [
        "muc_persistent",
        "muc_membersonly",
        "muc_nonanonymous",
        "muc_hidden",
        "urn:xmpp:mam:2",
    ] {
        assert_matches(
            &info,
            &format!(
                "<iq type='result'><query xmlns='http://jabber.org/protocol/disco#info'><feature var='{f}'/></query></iq>"
            ),
        );
    }
    assert_matches(
        &info,
        "<iq><query xmlns='http://jabber.org/protocol/disco#info'><identity category='conference' name='Family'/></query></iq>",
    );
    // bob is still a member with his reserved nickname; the history and subject are there.
    let nick = bob.iq(
        &format!("type='get' to='{}'", room("family")),
        "<query xmlns='http://jabber.org/protocol/disco#info' node='x-roomuser-item'/>",
    );
    assert_matches(
        &nick,
        "<iq type='result'><query xmlns='http://jabber.org/protocol/disco#info'><identity name='Dad'/></query></iq>",
    );
    let got = enter(&mut bob, "family", "Dad");
    let bodies: Vec<String> = got
        .iter()
        .filter_map(|e| e.child("body", ns::CLIENT).map(|b| b.text.clone()))
        .collect();
    assert_eq!(bodies, ["plan 0", "plan 1", "plan 2"]);
    assert_matches(
        got.last().unwrap(),
        "<message><subject>Holidays</subject></message>",
    );
    assert_eq!(status_codes(own_presence(&got)), ["100", "110", "170"]);
    // Members-only still: dave is refused; the temporary room is gone (entering creates it).
    let mut dave = Client::online(&server, "dave", "pc");
    refused(&mut dave, "family", "Stranger", "registration-required");
    let got = enter(&mut dave, "scratch", "D");
    assert!(status_codes(own_presence(&got)).contains(&"201".to_owned()));
    // The owner is still the owner.
    let mut alice = Client::online(&server, "alice", "phone");
    let form = alice.iq(
        &format!("type='get' to='{}'", room("family")),
        &format!("<query xmlns='{OWNER}'/>"),
    );
    assert_matches(
        &form,
        &format!(
            "<iq type='result'><query xmlns='{OWNER}'><x xmlns='jabber:x:data'><field var='muc#roomconfig_membersonly'><value>1</value></field></x></query></iq>"
        ),
    );
    // When the server stops, bob hears he is out of the room (332) before the stream ends.
    bob.sync();
    assert!(server.stop().success());
    bob.expect(&format!("<presence type='unavailable' from='{}/Dad'><x xmlns='{USER}'><status code='110'/><status code='332'/></x></presence>", room("family")));
    bob.expect_stream_error("system-shutdown");
}

/// One archive query of the room: (bodies, fin).
fn archive_page(c: &mut Client, name: &str, rsm: &str) -> (Vec<String>, Element) {
    let id = c.send_iq(
        &format!("type='set' to='{}'", room(name)),
        &format!("<query xmlns='urn:xmpp:mam:2' queryid='q'><set xmlns='http://jabber.org/protocol/rsm'>{rsm}</set></query>"),
    );
    let mut bodies = Vec::new();
    loop {
        let el = c.recv();
        if el.name == "iq" {
            assert_eq!(el.attr("id"), Some(id.as_str()));
            assert_matches(&el, "<iq type='result'><fin xmlns='urn:xmpp:mam:2'/></iq>");
            return (bodies, el.get("fin", "urn:xmpp:mam:2").clone());
        }
        assert_matches(
            &el,
            &format!(
                "<message from='{}'><result xmlns='urn:xmpp:mam:2' queryid='q'/></message>",
                room(name)
            ),
        );
        let fwd = el
            .get("result", "urn:xmpp:mam:2")
            .get("forwarded", "urn:xmpp:forward:0");
        bodies.push(
            fwd.get("message", ns::CLIENT)
                .get("body", ns::CLIENT)
                .text
                .clone(),
        );
    }
}

#[test]
fn a_phone_catches_up_from_the_room_archive_page_by_page() {
    let server = server_with("");
    let mut alice = Client::online(&server, "alice", "phone");
    family_room(&mut alice);
    let mut ids = Vec::new();
    for i in 0..25 {
        say(&mut alice, "family", &format!("m{i:02}"));
        let m = heard(&mut alice, "family", "Mum", &format!("m{i:02}"));
        ids.push(
            m.get("stanza-id", "urn:xmpp:sid:0")
                .attr("id")
                .unwrap()
                .to_owned(),
        );
    }
    // bob's phone, a member who was never in, reads back from the newest.
    let mut bob = Client::online(&server, "bob", "phone");
    let (last, fin) = archive_page(&mut bob, "family", "<max>10</max><before/>");
    assert_eq!(
        last,
        (15..25).map(|i| format!("m{i:02}")).collect::<Vec<_>>()
    );
    assert_eq!(fin.attr("complete"), None);
    let first = fin
        .get("set", "http://jabber.org/protocol/rsm")
        .get("first", "http://jabber.org/protocol/rsm")
        .text
        .clone();
    assert_eq!(
        first, ids[15],
        "the archive's ids are the stanza-ids members got"
    );
    let (mid, _) = archive_page(
        &mut bob,
        "family",
        &format!("<max>10</max><before>{first}</before>"),
    );
    assert_eq!(mid[0], "m05");
    let (old, fin) = archive_page(
        &mut bob,
        "family",
        &format!("<max>10</max><before>{}</before>", ids[5]),
    );
    assert_eq!(old.len(), 5);
    assert_eq!(fin.attr("complete"), Some("true"));
    // Forward from an id the phone had.
    let (after, _) = archive_page(
        &mut bob,
        "family",
        &format!("<max>3</max><after>{}</after>", ids[20]),
    );
    assert_eq!(after, ["m21", "m22", "m23"]);
    // Strangers do not read a members-only room's archive.
    let mut dave = Client::online(&server, "dave", "pc");
    let r = dave.iq(
        &format!("type='set' to='{}'", room("family")),
        "<query xmlns='urn:xmpp:mam:2'/>",
    );
    assert_matches(
        &r,
        "<iq type='error'><error><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
    );
}

fn self_ping(c: &mut Client, name: &str, nick: &str) -> Element {
    c.iq(
        &format!("type='get' to='{}/{nick}'", room(name)),
        &format!("<ping xmlns='{}'/>", ns::PING),
    )
}

#[test]
fn self_ping_in_and_out_of_the_room_and_across_a_dropped_connection() {
    let server = server_with(
        "[stream_management]\nresume_timeout_secs = 2\nack_every = 100\nack_delay_secs = 60\n",
    );
    let mut alice = Client::online(&server, "alice", "laptop");
    family_room(&mut alice);
    let mut bob = Client::online(&server, "bob", "phone");
    // Not in: not-acceptable, from the room.
    let r = self_ping(&mut bob, "family", "Dad");
    assert_matches(
        &r,
        "<iq type='error'><error by='family@muc.localhost'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
    );
    enter(&mut bob, "family", "Dad");
    alice.expect(&format!("<presence from='{}/Dad'/>", room("family")));
    assert_matches(
        &self_ping(&mut bob, "family", "Dad"),
        "<iq type='result' from='family@muc.localhost/Dad'/>",
    );
    // The phone goes into a tunnel: its session is detached, and it stays in the room.
    bob.send(&format!("<enable xmlns='{SM}' resume='true'/>"));
    let enabled = bob.expect(&format!("<enabled xmlns='{SM}' resume='true'/>"));
    let previd = enabled.attr("id").unwrap().to_owned();
    let full = bob.jid.clone();
    drop(bob);
    say(&mut alice, "family", "are you there?");
    heard(&mut alice, "family", "Mum", "are you there?");
    // Comes out of the tunnel, resumes: gets what was said, and is still in.
    let mut bob = Client::connect_starttls(&server);
    bob.auth_scram("bob", crate::harness::PASSWORD, "SCRAM-SHA-256");
    bob.send(&format!("<resume xmlns='{SM}' previd='{previd}' h='0'/>"));
    bob.expect(&format!("<resumed xmlns='{SM}' previd='{previd}'/>"));
    bob.jid = full;
    let m = bob.recv_skipping_presence();
    assert_matches(
        &m,
        &format!(
            "<message type='groupchat' from='{}/Mum'><body>are you there?</body></message>",
            room("family")
        ),
    );
    assert_matches(&self_ping(&mut bob, "family", "Dad"), "<iq type='result'/>");
    // Nobody saw him go.
    alice.sync();
    // Lost for good: when the resumption window closes, he leaves the room.
    drop(bob);
    let gone = wait_for(
        &mut alice,
        &format!(
            "<presence type='unavailable' from='{}/Dad'/>",
            room("family")
        ),
        Duration::from_secs(10),
    );
    assert_matches(
        &gone,
        &format!(
            "<presence type='unavailable'><x xmlns='{USER}'><item role='none'/></x></presence>"
        ),
    );
    let mut bob = Client::online(&server, "bob", "phone");
    let r = self_ping(&mut bob, "family", "Dad");
    assert_matches(
        &r,
        "<iq type='error'><error><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
    );
}

#[test]
fn private_messages_nickname_conflicts_and_changes() {
    let server = server_with("");
    let mut alice = Client::online(&server, "alice", "phone");
    let mut bob = Client::online(&server, "bob", "laptop");
    let mut carol = Client::online(&server, "carol", "tablet");
    enter(&mut alice, "kitchen", "Mum");
    assert_matches(
        &configure(&mut alice, "kitchen", &[]),
        "<iq type='result'/>",
    );
    enter(&mut bob, "kitchen", "Dad");
    alice.expect(&format!("<presence from='{}/Dad'/>", room("kitchen")));
    // Dad is taken, whatever the case.
    refused(&mut carol, "kitchen", "dad", "conflict");
    enter(&mut carol, "kitchen", "Kid");
    alice.expect(&format!("<presence from='{}/Kid'/>", room("kitchen")));
    bob.expect(&format!("<presence from='{}/Kid'/>", room("kitchen")));
    // A private message reaches only the occupant named, marked as from the room.
    carol.send(&format!(
        "<message type='chat' id='pm' to='{}/Mum'><body>secret</body></message>",
        room("kitchen")
    ));
    alice.expect(&format!("<message type='chat' id='pm' from='{}/Kid'><body>secret</body><x xmlns='{USER}'/></message>", room("kitchen")));
    bob.sync();
    alice.send(&format!(
        "<message type='chat' id='pm2' to='{}/Nobody'><body>x</body></message>",
        room("kitchen")
    ));
    alice.expect("<message type='error' id='pm2'><error><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>");
    // Carol becomes Sis: everyone sees 303 and the new name.
    carol.send(&format!("<presence to='{}/Sis'/>", room("kitchen")));
    for c in [&mut alice, &mut bob] {
        c.expect(&format!("<presence type='unavailable' from='{}/Kid'><x xmlns='{USER}'><item nick='Sis'/><status code='303'/></x></presence>", room("kitchen")));
        c.expect(&format!("<presence from='{}/Sis'/>", room("kitchen")));
    }
    carol.expect(&format!("<presence type='unavailable' from='{}/Kid'><x xmlns='{USER}'><status code='110'/><status code='303'/></x></presence>", room("kitchen")));
    carol.expect(&format!(
        "<presence from='{}/Sis'><x xmlns='{USER}'><status code='110'/></x></presence>",
        room("kitchen")
    ));
    // Changing to a taken one is a conflict, and nothing changes.
    carol.send(&format!("<presence id='n' to='{}/Mum'/>", room("kitchen")));
    carol.expect("<presence type='error' id='n'><error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>");
    say(&mut carol, "kitchen", "still Sis");
    heard(&mut alice, "kitchen", "Sis", "still Sis");
    // Leaving: everyone hears it; an empty temporary room is gone.
    for (c, nick) in [(&mut carol, "Sis"), (&mut bob, "Dad")] {
        c.send(&format!(
            "<presence type='unavailable' to='{}/{nick}'/>",
            room("kitchen")
        ));
        let p = format!(
            "<presence type='unavailable' from='{}/{nick}'><x xmlns='{USER}'><status code='110'/></x></presence>",
            room("kitchen")
        );
        wait_for(c, &p, Duration::from_secs(5));
    }
    alice.settle();
}

#[test]
fn floods_bogus_input_visitors_and_outcasts_leave_the_room_working() {
    let server = server_with("[modules.muc]\nmessages_per_minute = 10\nmax_joined_per_user = 5\n");
    let mut alice = Client::online(&server, "alice", "phone");
    let mut mallory = Client::online(&server, "dave", "pc");
    enter(&mut alice, "town", "Mum");
    assert_matches(
        &configure(&mut alice, "town", &[("muc#roomconfig_moderatedroom", "1")]),
        "<iq type='result'/>",
    );
    // A huge nickname is no JID at all; a long one is not a nickname here.
    let huge = "N".repeat(5000);
    mallory.send(&format!(
        "<presence id='h' to='{}/{huge}'><x xmlns='{MUC}'/></presence>",
        room("town")
    ));
    mallory.expect("<presence type='error' id='h'><error><jid-malformed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>");
    let long = "N".repeat(1000);
    mallory.send(&format!(
        "<presence id='l' to='{}/{long}'><x xmlns='{MUC}'/></presence>",
        room("town")
    ));
    mallory.expect("<presence type='error' id='l'><error by='town@muc.localhost'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>");
    // A visitor in a moderated room does not speak.
    enter(&mut mallory, "town", "Mallory");
    alice.expect(&format!(
        "<presence from='{}/Mallory'><x xmlns='{USER}'><item role='visitor'/></x></presence>",
        room("town")
    ));
    say(&mut mallory, "town", "spam");
    mallory.expect("<message type='error' id='spam'><error><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>");
    // Given voice, a flood is cut at the room's rate.
    assert_matches(
        &admin(
            &mut alice,
            "town",
            "<item nick='Mallory' role='participant'/>",
        ),
        "<iq type='result'/>",
    );
    mallory.settle();
    let mut delivered = 0;
    let mut refused_n = 0;
    for i in 0..30 {
        mallory.send(&format!(
            "<message type='groupchat' id='f{i}' to='{}'><body>flood {i}</body></message>",
            room("town")
        ));
    }
    for _ in 0..30 {
        let el = mallory.recv_skipping_presence();
        match el.attr("type") {
            Some("groupchat") => delivered += 1,
            _ => {
                assert_matches(
                    &el,
                    "<message type='error'><error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
                );
                refused_n += 1;
            }
        }
    }
    assert!(
        delivered <= 11 && refused_n >= 19,
        "{delivered} delivered, {refused_n} refused"
    );
    drain(&mut alice);
    // Bogus forms and admin requests.
    for bad in [
        format!(
            "<query xmlns='{OWNER}'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_maxusers'><value>-1</value></field></x></query>"
        ),
        format!(
            "<query xmlns='{OWNER}'><x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_passwordprotectedroom'><value>1</value></field></x></query>"
        ),
        format!("<query xmlns='{OWNER}'><x xmlns='jabber:x:data' type='bogus'/></query>"),
        format!(
            "<query xmlns='{ADMIN}'><item role='moderator' affiliation='owner' jid='dave@localhost' nick='Mallory'/></query>"
        ),
        format!("<query xmlns='{ADMIN}'><item affiliation='king' jid='dave@localhost'/></query>"),
        format!("<query xmlns='{ADMIN}'/>"),
    ] {
        let r = alice.iq(&format!("type='set' to='{}'", room("town")), &bad);
        assert_matches(&r, "<iq type='error'/>");
    }
    let r = mallory.iq(
        &format!("type='set' to='{}'", room("town")),
        &format!("<query xmlns='{ADMIN}'><item affiliation='owner' jid='dave@localhost'/></query>"),
    );
    assert_matches(
        &r,
        "<iq type='error'><error><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
    );
    // Banned, mallory stays out, whatever nickname.
    assert_matches(
        &admin(
            &mut alice,
            "town",
            "<item affiliation='outcast' jid='dave@localhost'/>",
        ),
        "<iq type='result'/>",
    );
    let p = format!(
        "<presence type='unavailable' from='{}/Mallory'><x xmlns='{USER}'><status code='301'/></x></presence>",
        room("town")
    );
    wait_for(&mut mallory, &p, Duration::from_secs(5));
    for nick in ["Mallory", "Innocent"] {
        refused(&mut mallory, "town", nick, "forbidden");
    }
    // Thousands of rooms: a few are joined, the rest refused, and the server is fine.
    let mut errors = 0;
    for i in 0..2000 {
        mallory.send(&format!(
            "<presence to='r{i}@{SERVICE}/M'><x xmlns='{MUC}'/></presence>"
        ));
        loop {
            let el = mallory.recv();
            if el.attr("type") == Some("error") {
                assert_matches(
                    &el,
                    "<presence><error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>",
                );
                errors += 1;
                break;
            }
            if el.child("subject", ns::CLIENT).is_some() {
                break;
            }
        }
    }
    assert_eq!(errors, 1995);
    mallory.sync();
    drain(&mut alice);
    say(&mut alice, "town", "calm again");
    heard(&mut alice, "town", "Mum", "calm again");
    crate::harness::assert_server_ok(&server, "bob");
}

/// A room's archive is bounded as an account's is: in bytes (a full one keeps its history and
/// takes nothing new, said once in the log, while the room relays on), and a query for one
/// sender, which has no index to read from, looks at a bounded number of rows.
#[test]
fn a_room_archive_is_bounded_in_bytes_and_in_rows_looked_at() {
    let server = server_with(
        "[modules.muc]\nmax_archive_bytes_per_room = 100000\nmessages_per_minute = 1000\n\
         [modules.mam]\nmax_page = 2\ndefault_page = 2\n",
    );
    let mut alice = Client::online(&server, "alice", "phone");
    family_room(&mut alice);
    let mut bob = Client::online(&server, "bob", "phone");
    enter(&mut bob, "family", "Dad");
    alice.expect(&format!("<presence from='{}/Dad'/>", room("family")));
    // 250 short ones from alice, then one from bob: 200 rows may be looked at per query.
    for i in 0..250 {
        say(&mut alice, "family", &format!("a{i}"));
        heard(&mut alice, "family", "Mum", &format!("a{i}"));
    }
    say(&mut bob, "family", "b0");
    heard(&mut alice, "family", "Dad", "b0");
    let with = |c: &mut Client, rsm: &str| {
        c.iq(
            &format!("type='set' to='{}'", room("family")),
            &format!(
                "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'>\
                 <field var='FORM_TYPE'><value>urn:xmpp:mam:2</value></field>\
                 <field var='with'><value>bob@localhost</value></field></x>\
                 <set xmlns='http://jabber.org/protocol/rsm'>{rsm}</set></query>"
            ),
        )
    };
    let r = with(&mut alice, "<max>2</max>");
    assert_matches(
        &r,
        "<iq type='error'><error><resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
    );
    let (last, _) = archive_page(&mut alice, "family", "<max>2</max><before/>");
    assert_eq!(last, ["a249", "b0"]);
    drain(&mut bob);
    // Large ones fill the archive: the small ones took about 50 KB of its 100 KB, and 2 of
    // about 20 KB fit in what is left.
    let filler = "x".repeat(20_000);
    let mut archived = Vec::new();
    for i in 0..5 {
        alice.send(&format!(
            "<message type='groupchat' id='big{i}' to='{}'><body>big{i} {filler}</body></message>",
            room("family")
        ));
        let got = bob.expect(&format!("<message type='groupchat' id='big{i}'/>"));
        archived.push(got.child("stanza-id", "urn:xmpp:sid:0").is_some());
        alice.expect(&format!("<message type='groupchat' id='big{i}'/>"));
    }
    assert_eq!(archived, [true, true, false, false, false]);
    let (last, fin) = archive_page(&mut bob, "family", "<max>2</max><before/>");
    let last: Vec<&str> = last.iter().map(|b| &b[..4]).collect();
    assert_eq!(last, ["big0", "big1"]);
    assert_eq!(fin.attr("complete"), None);
    alice.sync();
    let log = server.log();
    let full = "the archive of room family is full";
    assert_eq!(log.matches(full).count(), 1, "{log}");
}
