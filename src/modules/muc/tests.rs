//! The room service through the real router and modules (`TestRouter`): what each client is
//! sent, as the XEP's examples show it.

use crate::config::Config;
use crate::jid::Jid;
use crate::modules::SessionEvent;
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
fn a_reserved_room_is_configured_by_form_and_shows_it() {
    let t = router();
    let a = t.online("alice", "phone");
    enter(&t, &a, "family", "Mum");
    let out = t.client(
        &a,
        &format!(
            "<iq type='get' id='f' to='{}'><query xmlns='{OWNER}'/></iq>",
            room("family")
        ),
    );
    out.assert_sent(&a, &format!("<iq type='result' id='f'><query xmlns='{OWNER}'><x xmlns='jabber:x:data' type='form'><field var='muc#roomconfig_membersonly'><value>0</value></field><field var='muc#roomconfig_whois'><value>moderators</value></field></x></query></iq>"));
    let out = configure(&t, &a, "family", PRIVATE);
    out.assert_sent(&a, "<iq type='result' id='cfg'/>");
    let out = t.client(&a, &format!("<iq type='get' id='i' to='{}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>", room("family")));
    let q = out
        .only_to(&a)
        .child("query", ns::DISCO_INFO)
        .unwrap()
        .clone();
    let features: Vec<&str> = q.elements().filter_map(|f| f.attr("var")).collect();
    for want in [
        MUC,
        "muc_membersonly",
        "muc_nonanonymous",
        "muc_persistent",
        "muc_hidden",
        "muc_unmoderated",
        "muc_unsecured",
        ns::MAM,
        ns::MUC_SELF_PING,
        ns::MUC_STABLE_ID,
    ] {
        assert!(features.contains(&want), "{want} missing: {features:?}");
    }
    for not in [
        "muc_open",
        "muc_temporary",
        "muc_public",
        "muc_semianonymous",
    ] {
        assert!(!features.contains(&not), "{not} listed");
    }
    out.assert_sent(&a, "<iq><query xmlns='http://jabber.org/protocol/disco#info'><identity category='conference' type='text' name='Family'/><x xmlns='jabber:x:data' type='result'><field var='muc#roominfo_occupants'><value>1</value></field></x></query></iq>");
    // A hidden room is not listed by the service.
    let out = t.client(&a, "<iq type='get' id='d' to='muc.localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>");
    assert!(
        out.only_to(&a)
            .child("query", ns::DISCO_ITEMS)
            .unwrap()
            .elements()
            .next()
            .is_none()
    );
    // Others may not read or change the configuration; bogus forms change nothing.
    let b = t.online("bob", "laptop");
    let out = t.client(
        &b,
        &format!(
            "<iq type='get' id='f' to='{}'><query xmlns='{OWNER}'/></iq>",
            room("family")
        ),
    );
    out.assert_error(&b, "f", Condition::Forbidden);
    for bad in [
        "<x xmlns='jabber:x:data' type='submit'><field var='muc#roomconfig_persistentroom'><value>maybe</value></field></x>",
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:other</value></field></x>",
        "<x xmlns='jabber:x:data' type='result'/>",
        "<nothing/>",
    ] {
        let out = t.client(
            &a,
            &format!(
                "<iq type='set' id='bad' to='{}'><query xmlns='{OWNER}'>{bad}</query></iq>",
                room("family")
            ),
        );
        assert_eq!(out.to(&a).len(), 1, "{bad}: {}", out.show());
        assert_eq!(out.to(&a)[0].attr("type"), Some("error"), "{bad}");
    }
    let out = t.client(&a, &format!("<iq type='get' id='i' to='{}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>", room("family")));
    out.assert_sent(&a, "<iq><query xmlns='http://jabber.org/protocol/disco#info'><feature var='muc_persistent'/></query></iq>");
}

#[test]
fn a_family_room_has_history_subject_and_a_member_list_for_everyone() {
    let t = router();
    let (a, b, c) = family(&t);
    let out = say(&t, &b, "family", "dinner at six");
    for who in [&a, &b, &c] {
        out.assert_sent(who, "<message type='groupchat' id='m-dinner at six' from='family@muc.localhost/Dad'><body>dinner at six</body><stanza-id xmlns='urn:xmpp:sid:0' by='family@muc.localhost'/></message>");
    }
    let out = t.client(
        &a,
        &format!(
            "<message type='groupchat' to='{}'><subject>Sunday</subject></message>",
            room("family")
        ),
    );
    out.assert_sent(&c, "<message type='groupchat' from='family@muc.localhost/Mum'><subject>Sunday</subject></message>");
    // Members other than moderators may not change it.
    let out = t.client(
        &c,
        &format!(
            "<message type='groupchat' id='s' to='{}'><subject>mine</subject></message>",
            room("family")
        ),
    );
    out.assert_error(&c, "s", Condition::Forbidden);
    t.skip(Duration::from_secs(60));
    say(&t, &a, "family", "bring bread");
    // Carol's second device: every member message so far, then the subject, with delays.
    let c2 = t.online("carol", "phone");
    let out = enter(&t, &c2, "family", "Kid");
    let msgs: Vec<&Element> = out
        .to(&c2)
        .into_iter()
        .filter(|e| e.name == "message")
        .collect();
    assert_eq!(msgs.len(), 3, "{}", out.show());
    assert_eq!(
        msgs[0].child("body", ns::CLIENT).unwrap().text(),
        "dinner at six"
    );
    assert_eq!(
        msgs[0].child("delay", ns::DELAY).unwrap().attr("from"),
        Some("family@muc.localhost")
    );
    assert_eq!(
        msgs[1].child("body", ns::CLIENT).unwrap().text(),
        "bring bread"
    );
    assert_eq!(
        msgs[2].child("subject", ns::CLIENT).unwrap().text(),
        "Sunday"
    );
    assert!(msgs[2].child("delay", ns::DELAY).is_some());
    // Carol's two sessions are one occupant: the others saw no new arrival.
    out.assert_nothing_to(&b.bare());
    // History limits: the last one; the last minute; none.
    let d = t.online("dave", "pc");
    admin_set(
        &t,
        &a,
        "family",
        "<item affiliation='member' jid='dave@localhost'/>",
    );
    let history = |extra: &str, nick: &str| {
        let out = enter_with(&t, &d, "family", nick, extra);
        let bodies: Vec<String> = out
            .to(&d)
            .into_iter()
            .filter_map(|e| e.child("body", ns::CLIENT))
            .map(Element::text)
            .collect();
        t.client(
            &d,
            &format!(
                "<presence type='unavailable' to='{}/{nick}'/>",
                room("family")
            ),
        );
        bodies
    };
    assert_eq!(
        history("<history maxstanzas='1'/>", "D1"),
        vec!["bring bread"]
    );
    assert_eq!(
        history("<history seconds='30'/>", "D2"),
        vec!["bring bread"]
    );
    assert_eq!(
        history("<history maxchars='0'/>", "D3"),
        Vec::<String>::new()
    );
    assert_eq!(
        history("<history since='1970-01-01T00:00:00Z'/>", "D4").len(),
        2
    );
    assert_eq!(history("", "D5").len(), 2);
    // Conversations reads the member, admin and owner lists to encrypt to everyone.
    for aff in ["member", "admin", "owner"] {
        let out = t.client(&c, &format!("<iq type='get' id='l' to='{}'><query xmlns='{ADMIN}'><item affiliation='{aff}'/></query></iq>", room("family")));
        assert_eq!(
            out.only_to(&c).attr("type"),
            Some("result"),
            "{aff}: {}",
            out.show()
        );
    }
    let out = t.client(&c, &format!("<iq type='get' id='l' to='{}'><query xmlns='{ADMIN}'><item affiliation='member'/></query></iq>", room("family")));
    out.assert_sent(&c, &format!("<iq type='result' id='l'><query xmlns='{ADMIN}'><item affiliation='member' jid='bob@localhost'/><item affiliation='member' jid='carol@localhost'/><item affiliation='member' jid='dave@localhost'/></query></iq>"));
    // The ban list is for admins.
    let out = t.client(&c, &format!("<iq type='get' id='o' to='{}'><query xmlns='{ADMIN}'><item affiliation='outcast'/></query></iq>", room("family")));
    out.assert_error(&c, "o", Condition::Forbidden);
}

#[test]
fn members_only_refuses_strangers_and_kick_and_ban_remove() {
    let t = router();
    let (a, b, c) = family(&t);
    let d = t.online("dave", "pc");
    let out = enter(&t, &d, "family", "Stranger");
    out.assert_error(&d, "j1", Condition::RegistrationRequired);
    out.assert_nothing_to(&a);
    // Only moderators kick; a member kicking is refused.
    let out = admin_set(&t, &c, "family", "<item nick='Dad' role='none'/>");
    out.assert_error(&c, "adm", Condition::Forbidden);
    let out = admin_set(
        &t,
        &a,
        "family",
        "<item nick='Kid' role='none'><reason>bedtime</reason></item>",
    );
    out.assert_sent(&a, "<iq type='result' id='adm'/>");
    out.assert_sent(&c, &format!("<presence type='unavailable' from='{}/Kid'><x xmlns='{USER}'><item role='none' affiliation='member'><actor nick='Mum'/><reason>bedtime</reason></item><status code='110'/><status code='307'/></x></presence>", room("family")));
    out.assert_sent(&b, &format!("<presence type='unavailable' from='{}/Kid'><x xmlns='{USER}'><status code='307'/></x></presence>", room("family")));
    // A kicked member comes back; a banned one does not.
    enter(&t, &c, "family", "Kid").assert_sent(&c, "<presence><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>");
    let out = admin_set(
        &t,
        &a,
        "family",
        "<item affiliation='outcast' jid='carol@localhost'><reason>enough</reason></item>",
    );
    out.assert_sent(&c, &format!("<presence type='unavailable' from='{}/Kid'><x xmlns='{USER}'><item affiliation='outcast' role='none'/><status code='110'/><status code='301'/></x></presence>", room("family")));
    out.assert_sent(&b, "<presence type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'><status code='301'/></x></presence>");
    let out = enter(&t, &c, "family", "Kid");
    out.assert_error(&c, "j1", Condition::Forbidden);
    out.assert_nothing_to(&b);
    // Losing membership of a members-only room puts one out (321).
    let out = admin_set(
        &t,
        &a,
        "family",
        "<item affiliation='none' jid='bob@localhost'/>",
    );
    out.assert_sent(&b, "<presence type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/><status code='321'/></x></presence>");
    // Nobody bans themselves, nor leaves the room without an owner.
    let out = admin_set(
        &t,
        &a,
        "family",
        "<item affiliation='outcast' jid='alice@localhost'/>",
    );
    out.assert_error(&a, "adm", Condition::Conflict);
    let out = admin_set(
        &t,
        &a,
        "family",
        "<item affiliation='member' jid='alice@localhost'/>",
    );
    out.assert_error(&a, "adm", Condition::Conflict);
    // A moderator does not kick themselves either.
    let out = admin_set(&t, &a, "family", "<item nick='Mum' role='none'/>");
    out.assert_error(&a, "adm", Condition::Conflict);
}

#[test]
fn admins_act_within_their_rank() {
    let t = router();
    let (a, b, c) = family(&t);
    admin_set(&t, &a, "family", "<item affiliation='admin' jid='bob@localhost'/>")
        .assert_sent(&c, "<presence from='family@muc.localhost/Dad'><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='admin' role='moderator'/></x></presence>");
    // An admin may not ban the owner, make admins, or kick the owner.
    admin_set(
        &t,
        &b,
        "family",
        "<item affiliation='outcast' jid='alice@localhost'/>",
    )
    .assert_error(&b, "adm", Condition::NotAllowed);
    admin_set(
        &t,
        &b,
        "family",
        "<item affiliation='admin' jid='carol@localhost'/>",
    )
    .assert_error(&b, "adm", Condition::NotAllowed);
    admin_set(&t, &b, "family", "<item nick='Mum' role='none'/>").assert_error(
        &b,
        "adm",
        Condition::NotAllowed,
    );
    // Both in one item, an unknown nickname, a refused item among good ones: nothing changes.
    admin_set(
        &t,
        &a,
        "family",
        "<item nick='Kid' role='visitor' affiliation='none' jid='carol@localhost'/>",
    )
    .assert_error(&a, "adm", Condition::BadRequest);
    admin_set(&t, &b, "family", "<item nick='Nobody' role='none'/>").assert_error(
        &b,
        "adm",
        Condition::ItemNotFound,
    );
    let out = admin_set(
        &t,
        &b,
        "family",
        "<item affiliation='outcast' jid='dave@localhost'/><item affiliation='outcast' jid='alice@localhost'/>",
    );
    out.assert_error(&b, "adm", Condition::NotAllowed);
    let out = t.client(&a, &format!("<iq type='get' id='o' to='{}'><query xmlns='{ADMIN}'><item affiliation='outcast'/></query></iq>", room("family")));
    assert!(
        out.only_to(&a)
            .child("query", ADMIN)
            .unwrap()
            .elements()
            .next()
            .is_none()
    );
    // The voice list is for moderators, with real JIDs.
    let out = t.client(&b, &format!("<iq type='get' id='v' to='{}'><query xmlns='{ADMIN}'><item role='participant'/></query></iq>", room("family")));
    out.assert_sent(&b, &format!("<iq type='result'><query xmlns='{ADMIN}'><item nick='Kid' role='participant' affiliation='member' jid='carol@localhost/tablet'/></query></iq>"));
    let out = t.client(&c, &format!("<iq type='get' id='v' to='{}'><query xmlns='{ADMIN}'><item role='participant'/></query></iq>", room("family")));
    out.assert_error(&c, "v", Condition::Forbidden);
    // A member's affiliation goes; the owner keeps the room with another owner.
    admin_set(
        &t,
        &a,
        "family",
        "<item affiliation='owner' jid='bob@localhost'/>",
    )
    .assert_sent(&a, "<iq type='result'/>");
    admin_set(
        &t,
        &a,
        "family",
        "<item affiliation='member' jid='alice@localhost'/>",
    )
    .assert_sent(&a, "<iq type='result'/>");
}

#[test]
fn a_moderated_room_silences_visitors_until_a_moderator_gives_voice() {
    let t = router();
    let a = t.online("alice", "phone");
    let b = t.online("bob", "laptop");
    create(
        &t,
        &a,
        "town",
        "Mum",
        &[("muc#roomconfig_moderatedroom", "1")],
    );
    let out = enter(&t, &b, "town", "Dad");
    out.assert_sent(&b, "<presence><x xmlns='http://jabber.org/protocol/muc#user'><item role='visitor'/><status code='110'/></x></presence>");
    let out = say(&t, &b, "town", "hello?");
    out.assert_error(&b, "m-hello?", Condition::Forbidden);
    out.assert_nothing_to(&a);
    let request = format!(
        "<message to='{}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>{}</value></field><field var='muc#role'><value>participant</value></field></x></message>",
        room("town"),
        ns::MUC_REQUEST
    );
    let out = t.client(&b, &request);
    let form = out.only_to(&a).child("x", ns::DATA_FORMS).unwrap().clone();
    assert_eq!(form.attr("type"), Some("form"));
    // Asking again before an answer bothers nobody.
    t.client(&b, &request).assert_nothing_to(&a);
    let approve = format!(
        "<message to='{}'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>{}</value></field><field var='muc#role'><value>participant</value></field><field var='muc#jid'><value>bob@localhost/laptop</value></field><field var='muc#roomnick'><value>Dad</value></field><field var='muc#request_allow'><value>true</value></field></x></message>",
        room("town"),
        ns::MUC_REQUEST
    );
    // A visitor cannot approve his own request.
    let forged = t.client(&b, &approve);
    forged.assert_not_sent(&b, "<presence><x xmlns='http://jabber.org/protocol/muc#user'><item role='participant'/></x></presence>");
    let out = t.client(&a, &approve);
    out.assert_sent(&b, "<presence from='town@muc.localhost/Dad'><x xmlns='http://jabber.org/protocol/muc#user'><item role='participant'/><status code='110'/></x></presence>");
    say(&t, &b, "town", "thanks").assert_sent(
        &a,
        "<message type='groupchat'><body>thanks</body></message>",
    );
    // Voice taken again, by nickname.
    admin_set(&t, &a, "town", "<item nick='Dad' role='visitor'/>").assert_sent(&b, "<presence><x xmlns='http://jabber.org/protocol/muc#user'><item role='visitor'/></x></presence>");
    say(&t, &b, "town", "again").assert_error(&b, "m-again", Condition::Forbidden);
}

#[test]
fn nicknames_conflict_change_and_share() {
    let t = router();
    let (a, b, _c) = family(&t);
    let b2 = t.online("bob", "phone");
    // Another user's nickname is taken, whatever its case.
    let d = t.online("dave", "pc");
    admin_set(
        &t,
        &a,
        "family",
        "<item affiliation='member' jid='dave@localhost' nick='Grandpa'/>",
    );
    enter(&t, &d, "family", "dad").assert_error(&d, "j1", Condition::Conflict);
    // Bob's second device shares his nickname; nobody sees a second Dad.
    let out = enter(&t, &b2, "family", "Dad");
    out.assert_sent(&b2, "<presence from='family@muc.localhost/Dad'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>");
    out.assert_sent(&b, "<presence from='family@muc.localhost/Dad'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>");
    // A nickname reserved by another member is refused too.
    let out = t.client(
        &b,
        &format!("<presence id='g' to='{}/Grandpa'/>", room("family")),
    );
    out.assert_error(&b, "g", Condition::Conflict);
    // Dave reads his reserved nickname.
    let out = t.client(&d, &format!("<iq type='get' id='n' to='{}'><query xmlns='http://jabber.org/protocol/disco#info' node='x-roomuser-item'/></iq>", room("family")));
    out.assert_sent(&d, "<iq type='result' id='n'><query xmlns='http://jabber.org/protocol/disco#info' node='x-roomuser-item'><identity name='Grandpa'/></query></iq>");
    // Bob changes his nickname: everyone sees 303 and the new one; both his sessions follow.
    let out = t.client(&b, &format!("<presence to='{}/Father'/>", room("family")));
    out.assert_sent(&a, &format!("<presence type='unavailable' from='{}/Dad'><x xmlns='{USER}'><item nick='Father'/><status code='303'/></x></presence>", room("family")));
    out.assert_sent(&a, &format!("<presence from='{}/Father'/>", room("family")));
    for s in [&b, &b2] {
        out.assert_sent(s, "<presence type='unavailable' from='family@muc.localhost/Dad'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/><status code='303'/></x></presence>");
        out.assert_sent(s, "<presence from='family@muc.localhost/Father'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>");
    }
    say(&t, &b2, "family", "hi").assert_sent(&a, "<message from='family@muc.localhost/Father'/>");
    // A status change is shown to everyone; a join from a session already in is a resync.
    let out = t.client(
        &b,
        &format!(
            "<presence to='{}/Father'><show>away</show></presence>",
            room("family")
        ),
    );
    out.assert_sent(&a, &format!("<presence from='{}/Father'><show>away</show><x xmlns='{USER}'><item role='participant'/></x></presence>", room("family")));
    out.assert_sent(&b, "<presence><show>away</show><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>");
    let out = enter(&t, &b, "family", "Father");
    let presences = out.to(&b).iter().filter(|e| e.name == "presence").count();
    assert_eq!(presences, 3, "Mum, Kid and itself: {}", out.show());
    out.assert_sent(&b, "<message type='groupchat'><subject/></message>");
    // One session leaves: the other stays, and nobody sees Father go.
    let out = t.client(
        &b2,
        &format!(
            "<presence type='unavailable' to='{}/Father'/>",
            room("family")
        ),
    );
    out.assert_sent(&b2, "<presence type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>");
    out.assert_not_sent(&a, "<presence type='unavailable'/>");
    // Nicknames that are empty to the eye or too long are refused.
    let e = t.online("dave", "pc2");
    enter(&t, &e, "family", "\u{200B}").assert_error(&e, "j1", Condition::JidMalformed);
    enter(&t, &e, "family", &"x".repeat(65)).assert_error(&e, "j1", Condition::NotAcceptable);
}

#[test]
fn private_messages_go_between_occupants() {
    let t = router();
    let (a, b, c) = family(&t);
    let out = t.client(
        &b,
        &format!(
            "<message type='chat' id='p' to='{}/kid'><body>psst</body></message>",
            room("family")
        ),
    );
    out.assert_sent(&c, &format!("<message type='chat' id='p' from='{}/Dad'><body>psst</body><x xmlns='{USER}'/></message>", room("family")));
    out.assert_nothing_to(&a);
    t.client(
        &b,
        &format!(
            "<message type='chat' id='p' to='{}/Nobody'><body>x</body></message>",
            room("family")
        ),
    )
    .assert_error(&b, "p", Condition::ItemNotFound);
    t.client(
        &b,
        &format!(
            "<message type='groupchat' id='p' to='{}/Kid'><body>x</body></message>",
            room("family")
        ),
    )
    .assert_error(&b, "p", Condition::BadRequest);
    let d = t.online("dave", "pc");
    t.client(
        &d,
        &format!(
            "<message type='chat' id='p' to='{}/Kid'><body>x</body></message>",
            room("family")
        ),
    )
    .assert_error(&d, "p", Condition::NotAcceptable);
    configure(
        &t,
        &a,
        "family",
        &[("muc#roomconfig_allowpm", "moderators")],
    );
    t.client(
        &b,
        &format!(
            "<message type='chat' id='p' to='{}/Kid'><body>x</body></message>",
            room("family")
        ),
    )
    .assert_error(&b, "p", Condition::Forbidden);
    t.client(
        &a,
        &format!(
            "<message type='chat' id='p' to='{}/Kid'><body>x</body></message>",
            room("family")
        ),
    )
    .assert_sent(&c, "<message type='chat' from='family@muc.localhost/Mum'/>");
}

#[test]
fn invitations_are_mediated_and_declined_to_the_inviter_only() {
    let t = router();
    let (a, b, _c) = family(&t);
    let d = t.online("dave", "pc");
    // A member may not invite into this members-only room.
    let invite = |who: &Jid| {
        t.client(who, &format!("<message id='inv' to='{}'><x xmlns='{USER}'><invite to='dave@localhost'><reason>join us</reason></invite></x></message>", room("family")))
    };
    invite(&b).assert_error(&b, "inv", Condition::Forbidden);
    let out = invite(&a);
    out.assert_sent(&d, &format!("<message from='{}'><x xmlns='{USER}'><invite from='alice@localhost'><reason>join us</reason></invite></x></message>", room("family")));
    // The invitee became a member and gets in.
    enter(&t, &d, "family", "Grandpa").assert_sent(&d, "<presence><x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='member'/><status code='110'/></x></presence>");
    t.client(
        &d,
        &format!(
            "<presence type='unavailable' to='{}/Grandpa'/>",
            room("family")
        ),
    );
    // A decline goes to whoever invited, not to anyone named.
    let out = t.client(&d, &format!("<message to='{}'><x xmlns='{USER}'><decline to='bob@localhost'><reason>busy</reason></decline></x></message>", room("family")));
    out.assert_nothing_to(&b);
    out.assert_nothing_to(&a);
    invite(&a);
    let out = t.client(&d, &format!("<message to='{}'><x xmlns='{USER}'><decline><reason>busy</reason></decline></x></message>", room("family")));
    out.assert_sent(&a, &format!("<message from='{}'><x xmlns='{USER}'><decline from='dave@localhost'><reason>busy</reason></decline></x></message>", room("family")));
    // Invitations to nobody or elsewhere are refused; a direct invitation passes between users.
    t.client(&a, &format!("<message id='inv' to='{}'><x xmlns='{USER}'><invite to='nobody@localhost'/></x></message>", room("family")))
        .assert_error(&a, "inv", Condition::ItemNotFound);
    t.client(&a, &format!("<message id='inv' to='{}'><x xmlns='{USER}'><invite to='x@elsewhere.example'/></x></message>", room("family")))
        .assert_error(&a, "inv", Condition::RemoteServerNotFound);
    let out = t.client(
        &a,
        &format!(
            "<message to='dave@localhost'><x xmlns='jabber:x:conference' jid='{}'/></message>",
            room("family")
        ),
    );
    out.assert_sent(&d, &format!("<message from='alice@localhost/phone'><x xmlns='jabber:x:conference' jid='{}'/></message>", room("family")));
}

#[test]
fn self_ping_answers_for_the_room_and_other_iqs_are_forwarded() {
    let t = router();
    let (a, b, c) = family(&t);
    let ping = |who: &Jid, nick: &str| {
        t.client(
            who,
            &format!(
                "<iq type='get' id='sp' to='{}/{nick}'><ping xmlns='urn:xmpp:ping'/></iq>",
                room("family")
            ),
        )
    };
    ping(&b, "Dad").assert_sent(
        &b,
        "<iq type='result' id='sp' from='family@muc.localhost/Dad'/>",
    );
    let d = t.online("dave", "pc");
    let out = ping(&d, "Dad");
    out.assert_sent(&d, "<iq type='error' id='sp'><error type='modify' by='family@muc.localhost'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>");
    // Out of the room: not joined any more.
    t.client(
        &b,
        &format!("<presence type='unavailable' to='{}/Dad'/>", room("family")),
    );
    ping(&b, "Dad").assert_error(&b, "sp", Condition::NotAcceptable);
    // A version query to another occupant reaches it from the asker's occupant JID, and the
    // answer comes back from the occupant asked; nobody sees a real JID.
    let out = t.client(
        &c,
        &format!(
            "<iq type='get' id='v1' to='{}/Mum'><query xmlns='jabber:iq:version'/></iq>",
            room("family")
        ),
    );
    let fwd = out.only_to(&a).clone();
    assert_eq!(fwd.attr("from"), Some("family@muc.localhost/Kid"));
    let id = fwd.attr("id").unwrap().to_owned();
    assert_ne!(id, "v1");
    let out = t.client(&a, &format!("<iq type='result' id='{id}' to='{}/Kid'><query xmlns='jabber:iq:version'><name>x</name></query></iq>", room("family")));
    out.assert_sent(&c, "<iq type='result' id='v1' from='family@muc.localhost/Mum'><query xmlns='jabber:iq:version'/></iq>");
    // An answer nobody asked for goes nowhere.
    t.client(
        &a,
        &format!("<iq type='result' id='{id}' to='{}/Kid'/>", room("family")),
    )
    .assert_nothing_to(&c);
    // Outsiders may not ask occupants.
    t.client(&d, &format!("<iq type='get' id='v2' to='{}/Mum'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>", room("family")))
        .assert_error(&d, "v2", Condition::BadRequest);
}

#[test]
fn detached_sessions_stay_and_ended_ones_leave() {
    let t = router();
    let (a, b, c) = family(&t);
    // The phone's connection drops: it stays in, and what is said is queued for it.
    t.event(&c, SessionEvent::Detached).assert_nothing_to(&a);
    say(&t, &a, "family", "still there?").assert_sent(
        &c,
        "<message type='groupchat'><body>still there?</body></message>",
    );
    t.event(&c, SessionEvent::Resumed);
    t.client(
        &c,
        &format!(
            "<iq type='get' id='sp' to='{}/Kid'><ping xmlns='urn:xmpp:ping'/></iq>",
            room("family")
        ),
    )
    .assert_sent(&c, "<iq type='result' id='sp'/>");
    // The session ends: the others hear Kid left, once.
    let out = t.close(&c);
    out.assert_sent(&a, &format!("<presence type='unavailable' from='{}/Kid'><x xmlns='{USER}'><item role='none'/></x></presence>", room("family")));
    assert_eq!(out.to(&b).len(), 1, "{}", out.show());
    // A new session binding the same resource is not in the room.
    let c = t.online("carol", "tablet");
    t.client(
        &c,
        &format!(
            "<iq type='get' id='sp' to='{}/Kid'><ping xmlns='urn:xmpp:ping'/></iq>",
            room("family")
        ),
    )
    .assert_error(&c, "sp", Condition::NotAcceptable);
    enter(&t, &c, "family", "Kid");
    let stale = t.bind("carol", "tablet");
    assert_eq!(stale, c);
    t.client(&a, &format!("<iq type='get' id='v' to='{}'><query xmlns='{ADMIN}'><item role='participant'/></query></iq>", room("family")))
        .assert_sent(&a, &format!("<iq type='result'><query xmlns='{ADMIN}'><item nick='Dad'/></query></iq>"));
}

#[test]
fn temporary_rooms_end_with_their_last_occupant_and_owners_destroy_rooms() {
    let t = router();
    let a = t.online("alice", "phone");
    let b = t.online("bob", "laptop");
    create(&t, &a, "tmp", "Mum", &[]);
    enter(&t, &b, "tmp", "Dad");
    say(&t, &a, "tmp", "bye");
    t.client(
        &a,
        &format!("<presence type='unavailable' to='{}/Mum'/>", room("tmp")),
    );
    t.client(
        &b,
        &format!("<presence type='unavailable' to='{}/Dad'/>", room("tmp")),
    );
    // Gone: entering creates it anew.
    let out = enter(&t, &b, "tmp", "Dad");
    assert!(codes(out.to(&b)[0]).contains(&"201".to_owned()));
    // A room whose creator leaves before configuring it is gone too.
    t.client(
        &b,
        &format!("<presence type='unavailable' to='{}/Dad'/>", room("tmp")),
    );
    let out = enter(&t, &a, "tmp", "Mum");
    assert!(codes(out.to(&a)[0]).contains(&"201".to_owned()));
    // Destroying: each occupant hears it once, with the reason.
    configure(&t, &a, "tmp", &[("muc#roomconfig_persistentroom", "1")]);
    enter(&t, &b, "tmp", "Dad");
    t.client(
        &b,
        &format!(
            "<iq type='set' id='x' to='{}'><query xmlns='{OWNER}'><destroy/></query></iq>",
            room("tmp")
        ),
    )
    .assert_error(&b, "x", Condition::Forbidden);
    let out = t.client(&a, &format!("<iq type='set' id='x' to='{}'><query xmlns='{OWNER}'><destroy jid='{}'><reason>moved</reason></destroy></query></iq>", room("tmp"), room("new")));
    out.assert_sent(&a, "<iq type='result' id='x'/>");
    out.assert_sent(&b, &format!("<presence type='unavailable' from='{}/Dad'><x xmlns='{USER}'><destroy jid='{}'><reason>moved</reason></destroy></x></presence>", room("tmp"), room("new")));
    assert_eq!(out.to(&b).len(), 1, "{}", out.show());
    assert!(
        t.router
            .store
            .rows_of("alice")
            .iter()
            .all(|(n, _)| n != "muc_affiliations")
    );
}

#[test]
fn configuration_changes_are_announced_and_applied() {
    let t = router();
    let a = t.online("alice", "phone");
    let b = t.online("bob", "laptop");
    create(&t, &a, "club", "Mum", &[]);
    enter(&t, &b, "club", "Dad");
    let out = configure(&t, &a, "club", &[("muc#roomconfig_whois", "anyone")]);
    out.assert_sent(&b, &format!("<message type='groupchat' from='{}'><x xmlns='{USER}'><status code='172'/></x></message>", room("club")));
    let out = configure(&t, &a, "club", &[("muc#roomconfig_roomname", "Club")]);
    out.assert_sent(&b, "<message><x xmlns='http://jabber.org/protocol/muc#user'><status code='104'/></x></message>");
    // Becoming members-only puts non-members out with 322.
    let out = configure(&t, &a, "club", &[("muc#roomconfig_membersonly", "1")]);
    out.assert_sent(&b, "<presence type='unavailable'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/><status code='322'/></x></presence>");
    // A password keeps out whoever does not give it.
    configure(
        &t,
        &a,
        "club",
        &[
            ("muc#roomconfig_membersonly", "0"),
            ("muc#roomconfig_passwordprotectedroom", "1"),
            ("muc#roomconfig_roomsecret", "cauldron"),
        ],
    );
    enter(&t, &b, "club", "Dad").assert_error(&b, "j1", Condition::NotAuthorized);
    enter_with(&t, &b, "club", "Dad", "<password>wrong</password>").assert_error(
        &b,
        "j1",
        Condition::NotAuthorized,
    );
    enter_with(&t, &b, "club", "Dad", "<password>cauldron</password>").assert_sent(&b, "<presence><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>");
}

#[test]
fn the_room_archive_pages_and_minds_who_asks() {
    let t = router();
    let (a, b, c) = family(&t);
    for i in 0..7 {
        say(&t, &b, "family", &format!("n{i}"));
        t.skip(Duration::from_millis(5));
    }
    // A chat state is relayed, not archived.
    t.client(&a, &format!("<message type='groupchat' to='{}'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>", room("family")))
        .assert_sent(&c, "<message><composing xmlns='http://jabber.org/protocol/chatstates'/></message>");
    let query = |who: &Jid, rsm: &str| {
        t.client(who, &format!("<iq type='set' id='q' to='{}'><query xmlns='urn:xmpp:mam:2' queryid='f'><set xmlns='http://jabber.org/protocol/rsm'>{rsm}</set></query></iq>", room("family")))
    };
    let out = query(&c, "<max>3</max><before/>");
    let results: Vec<&Element> = out
        .to(&c)
        .into_iter()
        .filter(|e| e.name == "message")
        .collect();
    let bodies: Vec<String> = results
        .iter()
        .map(|m| {
            m.child("result", ns::MAM)
                .unwrap()
                .child("forwarded", ns::FORWARD)
                .unwrap()
                .child("message", ns::CLIENT)
                .unwrap()
                .child("body", ns::CLIENT)
                .unwrap()
                .text()
        })
        .collect();
    assert_eq!(bodies, vec!["n4", "n5", "n6"]);
    assert_eq!(results[0].attr("from"), Some("family@muc.localhost"));
    out.assert_sent(&c, &format!("<message><result xmlns='urn:xmpp:mam:2' queryid='f'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='{}/Dad' type='groupchat'><x xmlns='{USER}'><item jid='bob@localhost' affiliation='member'/></x></message></forwarded></result></message>", room("family")));
    let fin = out
        .to(&c)
        .into_iter()
        .find(|e| e.name == "iq")
        .unwrap()
        .child("fin", ns::MAM)
        .unwrap()
        .clone();
    assert_eq!(fin.attr("complete"), None);
    let first = fin
        .child("set", ns::RSM)
        .unwrap()
        .child("first", ns::RSM)
        .unwrap()
        .text();
    let out = query(&c, &format!("<max>10</max><before>{first}</before>"));
    assert_eq!(
        out.to(&c).len(),
        5,
        "four older and the fin: {}",
        out.show()
    );
    out.assert_sent(
        &c,
        "<iq type='result' id='q'><fin xmlns='urn:xmpp:mam:2' complete='true'/></iq>",
    );
    // The stanza-id a member got is the archive's id.
    let live = say(&t, &a, "family", "latest");
    let sid = live.to(&c)[0]
        .child("stanza-id", ns::SID)
        .unwrap()
        .attr("id")
        .unwrap()
        .to_owned();
    let out = query(&c, "<max>1</max><before/>");
    out.assert_sent(
        &c,
        &format!("<message><result xmlns='urn:xmpp:mam:2' id='{sid}'/></message>"),
    );
    // A stranger may not read a members-only room's archive.
    let d = t.online("dave", "pc");
    query(&d, "<max>1</max>").assert_error(&d, "q", Condition::Forbidden);
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

#[test]
fn affiliations_are_stored_where_they_belong() {
    let t = router();
    let (a, _b, _c) = family(&t);
    let out = admin_set(
        &t,
        &a,
        "family",
        "<item affiliation='member' jid='dave@localhost' nick='Grandpa'/>\
         <item affiliation='member' jid='cousin@elsewhere.example'/>\
         <item affiliation='outcast' jid='spam.example'/>\
         <item affiliation='none' jid='carol@localhost'/>",
    );
    out.assert_sent(&a, "<iq type='result' id='adm'/>");
    let (rooms, affs) = super::store::load(&t.router.store).unwrap();
    let record = &rooms.iter().find(|(n, _)| n == "family").unwrap().1;
    let others: Vec<&str> = record.others.iter().map(|o| o.jid.as_str()).collect();
    assert_eq!(others, vec!["spam.example", "cousin@elsewhere.example"]);
    let mut users: Vec<(&str, &str)> = affs
        .iter()
        .map(|(u, _, a)| (u.as_str(), a.affiliation.as_str()))
        .collect();
    users.sort();
    assert_eq!(
        users,
        vec![("alice", "owner"), ("bob", "member"), ("dave", "member")]
    );
    // Someone at the banned domain is kept out.
    assert_eq!(
        t.module::<super::Muc>().rooms.borrow()["family"]
            .affiliation(&Jid::parse("x@spam.example").unwrap()),
        super::room::Affiliation::Outcast
    );
    // Made temporary, the room forgets what it stored; it lives on while people are in.
    configure(&t, &a, "family", &[("muc#roomconfig_persistentroom", "0")]);
    let (rooms, affs) = super::store::load(&t.router.store).unwrap();
    assert!(rooms.is_empty() && affs.is_empty());
    say(&t, &a, "family", "still here").assert_sent(&a, "<message type='groupchat'/>");
}

#[test]
fn stopping_the_service_tells_every_occupant_once() {
    let t = router();
    let (a, b, c) = family(&t);
    let out = t.step(|cx| {
        for m in cx.modules() {
            m.stop(cx);
        }
    });
    for who in [&a, &b, &c] {
        assert_eq!(out.to(who).len(), 1, "{}", out.show());
        out.assert_sent(who, &format!("<presence type='unavailable'><x xmlns='{USER}'><item role='none'/><status code='110'/><status code='332'/></x></presence>"));
    }
    // The sessions ending afterwards tell nobody anything more.
    t.close(&a).assert_nothing_to(&b);
}
