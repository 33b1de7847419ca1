//! The room service through the real router and modules (`TestRouter`): what each client is
//! sent, as the XEP's examples show it. The helpers here serve the tests at the bottom of each
//! file of the module; the tests here are of the service as a whole (creation, limits).

use crate::config::Config;
use crate::jid::Jid;
use crate::modules::testing::{Out, TestRouter};
use crate::stanza::Condition;
use crate::xml::{Element, ns};
use std::time::Duration;

pub const MUC: &str = "http://jabber.org/protocol/muc";
pub const USER: &str = "http://jabber.org/protocol/muc#user";
pub const ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const OWNER: &str = "http://jabber.org/protocol/muc#owner";

pub fn router() -> TestRouter {
    TestRouter::with_users(&["alice", "bob", "carol", "dave"])
}

pub fn router_with(f: impl FnOnce(&mut Config)) -> TestRouter {
    let mut c = Config::default();
    f(&mut c);
    TestRouter::with_config(c, &["alice", "bob", "carol", "dave"])
}

pub fn room(name: &str) -> String {
    format!("{name}@muc.localhost")
}

/// `who` enters `room` as `nick`, with `extra` inside the MUC `<x/>`.
pub fn enter_with(t: &TestRouter, who: &Jid, room_name: &str, nick: &str, extra: &str) -> Out {
    t.client(
        who,
        &format!(
            "<presence id='j1' to='{}/{nick}'><x xmlns='{MUC}'>{extra}</x></presence>",
            room(room_name)
        ),
    )
}

pub fn enter(t: &TestRouter, who: &Jid, room_name: &str, nick: &str) -> Out {
    enter_with(t, who, room_name, nick, "")
}

/// Sends a `muc#roomconfig` form with `fields` (an instant room when there are none).
pub fn configure(t: &TestRouter, owner: &Jid, room_name: &str, fields: &[(&str, &str)]) -> Out {
    let mut form = String::new();
    if !fields.is_empty() {
        form.push_str(&format!(
            "<field var='FORM_TYPE'><value>{}</value></field>",
            ns::MUC_ROOMCONFIG
        ));
    }
    for (var, v) in fields {
        form.push_str(&format!("<field var='{var}'><value>{v}</value></field>"));
    }
    t.client(
        owner,
        &format!(
            "<iq type='set' id='cfg' to='{}'><query xmlns='{OWNER}'>\
             <x xmlns='jabber:x:data' type='submit'>{form}</x></query></iq>",
            room(room_name)
        ),
    )
}

/// `owner` creates `room` as `nick` with the given configuration.
pub fn create(t: &TestRouter, owner: &Jid, room_name: &str, nick: &str, fields: &[(&str, &str)]) {
    let out = enter(t, owner, room_name, nick);
    out.assert_sent(
        owner,
        &format!(
            "<presence from='{}/{nick}'><x xmlns='{USER}'><status code='201'/></x></presence>",
            room(room_name)
        ),
    );
    let out = configure(t, owner, room_name, fields);
    out.assert_sent(owner, "<iq type='result' id='cfg'/>");
}

/// A family room: alice owns it, bob and carol are members, all three are in.
pub const PRIVATE: &[(&str, &str)] = &[
    ("muc#roomconfig_roomname", "Family"),
    ("muc#roomconfig_persistentroom", "1"),
    ("muc#roomconfig_membersonly", "1"),
    ("muc#roomconfig_whois", "anyone"),
    ("muc#roomconfig_publicroom", "0"),
];

pub fn admin_set(t: &TestRouter, who: &Jid, room_name: &str, item: &str) -> Out {
    t.client(
        who,
        &format!(
            "<iq type='set' id='adm' to='{}'><query xmlns='{ADMIN}'>{item}</query></iq>",
            room(room_name)
        ),
    )
}

/// The family room with three members in it; returns (alice, bob, carol).
pub fn family(t: &TestRouter) -> (Jid, Jid, Jid) {
    let a = t.online("alice", "phone");
    let b = t.online("bob", "laptop");
    let c = t.online("carol", "tablet");
    create(t, &a, "family", "Mum", PRIVATE);
    for m in ["bob@localhost", "carol@localhost"] {
        let out = admin_set(
            t,
            &a,
            "family",
            &format!("<item affiliation='member' jid='{m}'/>"),
        );
        out.assert_sent(&a, "<iq type='result' id='adm'/>");
    }
    enter(t, &b, "family", "Dad")
        .assert_sent(&b, &format!("<presence from='{}/Dad'/>", room("family")));
    enter(t, &c, "family", "Kid")
        .assert_sent(&c, &format!("<presence from='{}/Kid'/>", room("family")));
    (a, b, c)
}

pub fn say(t: &TestRouter, who: &Jid, room_name: &str, body: &str) -> Out {
    t.client(
        who,
        &format!(
            "<message type='groupchat' id='m-{body}' to='{}'><body>{body}</body></message>",
            room(room_name)
        ),
    )
}

/// The status codes in the MUC `<x/>` of `el`.
pub fn codes(el: &Element) -> Vec<String> {
    el.child("x", USER)
        .map(|x| {
            x.elements()
                .filter(|e| e.name == "status")
                .filter_map(|e| e.attr("code").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_instant_room_is_created_locked_then_opened() {
    let t = router();
    let a = t.online("alice", "phone");
    let b = t.online("bob", "laptop");
    let out = enter(&t, &a, "kitchen", "Mum");
    let own = out.to(&a)[0];
    assert_eq!(codes(own), vec!["110", "170", "201"]);
    out.assert_sent(&a, &format!("<presence id='j1' from='{}/Mum'><x xmlns='{USER}'><item affiliation='owner' role='moderator' jid='alice@localhost/phone'/></x></presence>", room("kitchen")));
    // Locked until configured: nobody else gets in, nor sees it.
    let out = enter(&t, &b, "kitchen", "Dad");
    out.assert_error(&b, "j1", Condition::ItemNotFound);
    out.assert_sent(
        &b,
        &format!(
            "<presence type='error'><x xmlns='{MUC}'/><error by='{}'/></presence>",
            room("kitchen")
        ),
    );
    let out = configure(&t, &a, "kitchen", &[]);
    out.assert_sent(&a, "<iq type='result' id='cfg'/>");
    // Now bob enters: he gets Mum's presence, then his own; she gets his.
    let out = enter(&t, &b, "kitchen", "Dad");
    let to_bob = out.to(&b);
    assert_eq!(to_bob.len(), 3, "{}", out.show());
    assert_eq!(to_bob[0].attr("from"), Some("kitchen@muc.localhost/Mum"));
    assert_eq!(codes(to_bob[0]), Vec::<String>::new());
    assert_eq!(to_bob[1].attr("from"), Some("kitchen@muc.localhost/Dad"));
    assert_eq!(codes(to_bob[1]), vec!["110", "170"]);
    // Then the (empty) subject.
    out.assert_sent(
        &b,
        "<message type='groupchat' from='kitchen@muc.localhost'><subject/></message>",
    );
    // Semi-anonymous: bob, a participant, does not see Mum's JID; Mum, a moderator, sees his.
    assert!(
        to_bob[0]
            .child("x", USER)
            .unwrap()
            .elements()
            .next()
            .unwrap()
            .attr("jid")
            .is_none()
    );
    out.assert_sent(&a, &format!("<presence from='{}/Dad'><x xmlns='{USER}'><item affiliation='none' role='participant' jid='bob@localhost/laptop'/></x></presence>", room("kitchen")));
    // The service lists the public room by name; the server lists the service.
    let out = t.client(&b, "<iq type='get' id='d' to='muc.localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>");
    out.assert_sent(&b, "<iq type='result' id='d'><query xmlns='http://jabber.org/protocol/disco#items'><item jid='kitchen@muc.localhost'/></query></iq>");
    let out = t.client(&b, "<iq type='get' id='s' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>");
    out.assert_sent(&b, "<iq type='result' id='s'><query xmlns='http://jabber.org/protocol/disco#items'><item jid='muc.localhost' name='Chatrooms'/></query></iq>");
    let out = t.client(&b, "<iq type='get' id='i' to='muc.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    out.assert_sent(&b, &format!("<iq type='result' id='i'><query xmlns='http://jabber.org/protocol/disco#info'><identity category='conference' type='text'/><feature var='{MUC}'/></query></iq>"));
}

#[test]
fn limits_hold_against_floods_and_hoarders() {
    let t = router_with(|c| {
        c.modules.muc.messages_per_minute = 5;
        c.modules.muc.max_joined_per_user = 3;
        c.modules.muc.max_rooms = 4;
        c.modules.muc.max_occupants = 3;
        c.modules.muc.max_owned_per_user = 3;
    });
    let a = t.online("alice", "phone");
    let b = t.online("bob", "laptop");
    create(&t, &a, "r1", "A", &[]);
    for i in 0..5 {
        say(&t, &a, "r1", &format!("{i}")).assert_sent(&a, "<message type='groupchat'/>");
    }
    let out = say(&t, &a, "r1", "flood");
    out.assert_error(&a, "m-flood", Condition::PolicyViolation);
    // Tokens come back with time.
    t.skip(Duration::from_secs(13));
    say(&t, &a, "r1", "later")
        .assert_sent(&a, "<message type='groupchat'><body>later</body></message>");
    // Rooms one may be in, own, and rooms in total.
    create(&t, &a, "r2", "A", &[]);
    create(&t, &a, "r3", "A", &[]);
    enter(&t, &a, "r4", "A").assert_error(&a, "j1", Condition::PolicyViolation);
    t.client(
        &a,
        &format!("<presence type='unavailable' to='{}/A'/>", room("r3")),
    );
    configure(&t, &a, "r2", &[("muc#roomconfig_persistentroom", "1")]);
    configure(&t, &a, "r1", &[("muc#roomconfig_persistentroom", "1")]);
    create(&t, &a, "r3", "A", &[("muc#roomconfig_persistentroom", "1")]);
    t.client(
        &a,
        &format!("<presence type='unavailable' to='{}/A'/>", room("r3")),
    );
    enter(&t, &a, "r5", "A").assert_error(&a, "j1", Condition::NotAllowed);
    enter(&t, &b, "r4", "B").assert_sent(&b, "<presence><x xmlns='http://jabber.org/protocol/muc#user'><status code='201'/></x></presence>");
    let c = t.online("carol", "pc");
    enter(&t, &c, "r6", "C").assert_error(&c, "j1", Condition::NotAllowed);
    // Occupants of one room.
    configure(&t, &b, "r4", &[]);
    enter(&t, &c, "r4", "C");
    let d = t.online("dave", "pc");
    enter(&t, &d, "r4", "D");
    let e = t.online("dave", "other");
    enter(&t, &e, "r4", "E").assert_error(&e, "j1", Condition::ServiceUnavailable);
    // A presence too large to keep, a subject too long.
    let big = "x".repeat(9000);
    let out = t.client(
        &e,
        &format!(
            "<presence id='j1' to='{}/E'><x xmlns='{MUC}'/><status>{big}</status></presence>",
            room("r1")
        ),
    );
    out.assert_error(&e, "j1", Condition::NotAcceptable);
    let long = "s".repeat(1025);
    t.client(
        &a,
        &format!(
            "<message type='groupchat' id='s' to='{}'><subject>{long}</subject></message>",
            room("r1")
        ),
    )
    .assert_error(&a, "s", Condition::NotAcceptable);
}

#[test]
fn stray_stanzas_get_the_errors_the_xep_names() {
    let t = router();
    let a = t.online("alice", "phone");
    // To a room that does not exist.
    t.client(
        &a,
        &format!(
            "<message type='groupchat' id='x' to='{}'><body>x</body></message>",
            room("none")
        ),
    )
    .assert_error(&a, "x", Condition::ItemNotFound);
    t.client(&a, &format!("<iq type='get' id='x' to='{}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>", room("none")))
        .assert_error(&a, "x", Condition::ItemNotFound);
    // A join without a nickname.
    t.client(
        &a,
        &format!(
            "<presence id='x' to='{}'><x xmlns='{MUC}'/></presence>",
            room("none")
        ),
    )
    .assert_error(&a, "x", Condition::JidMalformed);
    // Presence without the MUC <x/> from someone not in: told it is not in (110, 307, 333).
    let out = t.client(&a, &format!("<presence to='{}/Mum'/>", room("none")));
    let el = out.only_to(&a);
    assert_eq!(el.attr("type"), Some("unavailable"));
    assert_eq!(codes(el), vec!["110", "307", "333"]);
    // A message to someone in a room one is not in, unavailable presence from nobody.
    create(&t, &a, "r", "Mum", &[]);
    let b = t.online("bob", "laptop");
    t.client(
        &b,
        &format!(
            "<message type='groupchat' id='x' to='{}'><body>x</body></message>",
            room("r")
        ),
    )
    .assert_error(&b, "x", Condition::NotAcceptable);
    t.client(
        &b,
        &format!("<presence type='unavailable' to='{}/Mum'/>", room("r")),
    )
    .assert_nothing_to(&a);
    // Chat messages to the room itself; unknown iqs; the service's domain.
    t.client(
        &a,
        &format!(
            "<message type='chat' id='x' to='{}'><body>x</body></message>",
            room("r")
        ),
    )
    .assert_error(&a, "x", Condition::BadRequest);
    t.client(
        &a,
        &format!(
            "<iq type='get' id='x' to='{}'><vCard xmlns='vcard-temp'/></iq>",
            room("r")
        ),
    )
    .assert_error(&a, "x", Condition::ServiceUnavailable);
    t.client(
        &a,
        "<message id='x' to='muc.localhost'><body>x</body></message>",
    )
    .assert_error(&a, "x", Condition::ServiceUnavailable);
    t.client(
        &a,
        "<iq type='get' id='p' to='muc.localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
    )
    .assert_sent(&a, "<iq type='result' id='p'/>");
}

#[test]
fn only_listed_admins_create_rooms_when_the_service_says_so() {
    let t = router_with(|c| {
        c.modules.muc.create = super::Creators::Admins;
        c.modules.muc.admins = vec!["alice@localhost".into()];
    });
    let a = t.online("alice", "phone");
    let b = t.online("bob", "laptop");
    enter(&t, &b, "r", "B").assert_error(&b, "j1", Condition::NotAllowed);
    create(&t, &a, "r", "A", &[]);
    enter(&t, &b, "r", "B").assert_sent(&b, "<presence><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>");
}

#[test]
fn thousands_of_rooms_and_occupants_stay_bounded() {
    let t = router_with(|c| {
        c.modules.muc.max_joined_per_user = 50;
        c.modules.muc.max_rooms = 60;
    });
    let a = t.online("alice", "phone");
    let mut refused = 0;
    for i in 0..2000 {
        let out = enter(&t, &a, &format!("r{i}"), "A");
        if out.to(&a).iter().any(|e| e.attr("type") == Some("error")) {
            refused += 1;
        }
    }
    assert_eq!(refused, 1950);
    assert_eq!(t.module::<super::Muc>().rooms.borrow().len(), 50);
    // Closing the session empties them all, and unconfigured rooms go.
    t.close(&a);
    assert_eq!(t.module::<super::Muc>().rooms.borrow().len(), 0);
    assert!(t.module::<super::Muc>().joined.borrow().is_empty());
}
