//! Avatars and vCards over real TLS connections: a XEP-0084 avatar published as Conversations,
//! Dino and Gajim publish it (data, then metadata, with publish options) reaches a contact,
//! who fetches the image by item id; vcard-temp (XEP-0054) set and read, kept across a
//! restart; the photo hash in presence (XEP-0153); the PEP avatar in the vCard and the
//! presence of those who may see it (XEP-0398); vCard4 as a PEP node; and a vCard that is too
//! big or not one's own.

use crate::harness::{Client, DOMAIN, TestServer, assert_matches, stanza_error};
use crate::pep::{PUBSUB, befriend, drain, events, item_ids, items, online, publish, publish_iq};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha1::Digest;

const DATA: &str = "urn:xmpp:avatar:data";
const METADATA: &str = "urn:xmpp:avatar:metadata";
const VCARD: &str = "vcard-temp";
const UPDATE: &str = "vcard-temp:x:update";

fn server_with(extra: &str) -> TestServer {
    let server = TestServer::start_with(extra);
    server.add_users(&["alice", "bob", "carol"]);
    server
}

fn sha1_hex(bytes: &[u8]) -> String {
    sha1::Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An image of `n` bytes that is not all the same byte.
fn image(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

/// Publishes `image` as XEP-0084 clients do: the data item, then the metadata item, both
/// with the publish options Conversations sends. Returns the id (the image's SHA-1).
fn publish_avatar(c: &mut Client, image: &[u8], access: &str) -> String {
    let id = sha1_hex(image);
    let options = [
        ("pubsub#access_model", access),
        ("pubsub#notify_delete", "true"),
    ];
    let data = format!("<data xmlns='{DATA}'>{}</data>", B64.encode(image));
    let reply = publish_iq(c, &publish(DATA, &id, &data, &options));
    assert_matches(&reply, "<iq type='result'/>");
    let meta = format!(
        "<metadata xmlns='{METADATA}'><info id='{id}' bytes='{}' type='image/png' width='64' height='64'/></metadata>",
        image.len()
    );
    let reply = publish_iq(c, &publish(METADATA, &id, &meta, &options));
    assert_matches(&reply, "<iq type='result'/>");
    id
}

fn vcard_get(c: &mut Client, owner: Option<&str>) -> crate::harness::Element {
    let to = owner
        .map(|o| format!(" to='{o}@{DOMAIN}'"))
        .unwrap_or_default();
    c.iq(
        &format!("type='get'{to}"),
        &format!("<vCard xmlns='{VCARD}'/>"),
    )
}

/// The (TYPE, BINVAL) of the vCard in a result.
fn photo(reply: &crate::harness::Element) -> Option<(String, String)> {
    let p = reply.get("vCard", VCARD).child("PHOTO", VCARD)?;
    Some((
        p.child("TYPE", VCARD)
            .map(|t| t.text.clone())
            .unwrap_or_default(),
        p.child("BINVAL", VCARD)
            .map(|b| b.text.trim().to_owned())
            .unwrap_or_default(),
    ))
}

/// Reads stanzas until a presence from `from`; returns the photo hash it carries.
fn presence_hash(c: &mut Client, from: &str) -> Option<String> {
    loop {
        let el = c.recv();
        if el.name == "presence" && el.attr("from") == Some(from) {
            return el
                .child("x", UPDATE)
                .and_then(|x| x.child("photo", UPDATE))
                .map(|p| p.text.trim().to_owned());
        }
    }
}

#[test]
fn an_avatar_published_as_clients_do_reaches_a_contact_who_fetches_it_by_id() {
    let server = server_with("");
    befriend(&server, "alice", "bob");
    let mut bob = online(&server, "bob", "pc", &[METADATA], true);
    let mut alice = Client::online(&server, "alice", "phone");
    alice.settle();
    drain(&mut bob.client);
    let png = image(5000);
    let id = publish_avatar(&mut alice, &png, "presence");
    // Bob's client asked for metadata notifications: it learns the new id...
    let got = drain(&mut bob.client);
    assert_eq!(events(&got, METADATA), vec![id.clone()]);
    assert!(events(&got, DATA).is_empty(), "data is fetched, not pushed");
    // ...and fetches the image by item id.
    let reply = bob.client.iq(
        &format!("type='get' to='alice@{DOMAIN}'"),
        &format!(
            "<pubsub xmlns='{PUBSUB}'><items node='{DATA}'><item id='{id}'/></items></pubsub>"
        ),
    );
    assert_eq!(item_ids(&reply), vec![id.clone()]);
    let data = reply
        .get("pubsub", PUBSUB)
        .get("items", PUBSUB)
        .get("item", PUBSUB)
        .get("data", DATA);
    assert_eq!(B64.decode(data.text.trim()).unwrap(), png);
    // A stranger may read neither node.
    let mut carol = Client::user(&server, "carol", "pc");
    for node in [DATA, METADATA] {
        let reply = items(&mut carol, "alice", node);
        assert_matches(&reply, "<iq type='error'><error type='auth'/></iq>");
    }
    // vCard-only clients see it too: in Alice's vCard, and as the hash in her presence.
    let reply = vcard_get(&mut bob.client, Some("alice"));
    assert_eq!(photo(&reply), Some(("image/png".into(), B64.encode(&png))));
    // Carol may not see the avatar, and Alice has no vCard of her own: nothing to show.
    let reply = vcard_get(&mut carol, Some("alice"));
    let rid = reply.attr("id").unwrap().to_owned();
    assert_matches(
        &reply,
        &stanza_error("iq", &rid, "cancel", "service-unavailable"),
    );
    alice.send("<presence><show>away</show></presence>");
    assert_eq!(presence_hash(&mut bob.client, &alice.jid), Some(id));
}

#[test]
fn a_vcard_is_read_by_anyone_kept_across_a_restart_and_its_photo_hash_is_in_presence() {
    let mut server = server_with("");
    befriend(&server, "alice", "bob");
    let mut alice = Client::user(&server, "alice", "phone");
    let png = image(300);
    let reply = alice.iq(
        "type='set'",
        &format!(
            "<vCard xmlns='{VCARD}'><FN>Alice</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>{}</BINVAL></PHOTO></vCard>",
            B64.encode(&png)
        ),
    );
    assert_matches(&reply, "<iq type='result'/>");
    let mut bob = Client::online(&server, "bob", "pc");
    // The client sends presence without a hash; the server puts the stored photo's in.
    alice.send("<presence/>");
    assert_eq!(presence_hash(&mut bob, &alice.jid), Some(sha1_hex(&png)));
    let mut carol = Client::user(&server, "carol", "pc");
    let reply = vcard_get(&mut carol, Some("alice"));
    assert_matches(
        &reply,
        &format!(
            "<iq type='result' from='alice@{DOMAIN}'><vCard xmlns='{VCARD}'><FN>Alice</FN></vCard></iq>"
        ),
    );
    assert_eq!(photo(&reply), Some(("image/png".into(), B64.encode(&png))));
    drop((alice, bob, carol));
    server.restart();
    let mut carol = Client::user(&server, "carol", "pc");
    assert_eq!(
        photo(&vcard_get(&mut carol, Some("alice"))).map(|p| p.1),
        Some(B64.encode(&png))
    );
    // Bob has none: an error, as for an account that does not exist.
    let reply = vcard_get(&mut carol, Some("bob"));
    let id = reply.attr("id").unwrap().to_owned();
    assert_matches(
        &reply,
        &stanza_error("iq", &id, "cancel", "service-unavailable"),
    );
    let reply = vcard_get(&mut carol, Some("nobody"));
    let id = reply.attr("id").unwrap().to_owned();
    assert_matches(
        &reply,
        &stanza_error("iq", &id, "cancel", "service-unavailable"),
    );
}

#[test]
fn vcard4_is_a_pep_node_a_contact_reads() {
    let server = server_with("");
    befriend(&server, "alice", "bob");
    let mut alice = Client::user(&server, "alice", "phone");
    let card =
        "<vcard xmlns='urn:ietf:params:xml:ns:vcard-4.0'><fn><text>Alice</text></fn></vcard>";
    let reply = publish_iq(
        &mut alice,
        &publish("urn:xmpp:vcard4", "current", card, &[]),
    );
    assert_matches(&reply, "<iq type='result'/>");
    let mut bob = Client::user(&server, "bob", "pc");
    let reply = items(&mut bob, "alice", "urn:xmpp:vcard4");
    assert_matches(
        &reply,
        &format!(
            "<iq type='result'><pubsub xmlns='{PUBSUB}'><items><item id='current'><vcard xmlns='urn:ietf:params:xml:ns:vcard-4.0'><fn><text>Alice</text></fn></vcard></item></items></pubsub></iq>"
        ),
    );
}

#[test]
fn a_vcard_too_big_or_not_ones_own_is_refused_and_changes_nothing() {
    let server = server_with("[modules.vcard]\nmax_bytes = 4096\n");
    let mut alice = Client::user(&server, "alice", "phone");
    let reply = alice.iq(
        "type='set'",
        &format!("<vCard xmlns='{VCARD}'><FN>Alice</FN></vCard>"),
    );
    assert_matches(&reply, "<iq type='result'/>");
    let big = format!(
        "<vCard xmlns='{VCARD}'><PHOTO><BINVAL>{}</BINVAL></PHOTO></vCard>",
        B64.encode(image(6000))
    );
    let reply = alice.iq("type='set'", &big);
    let id = reply.attr("id").unwrap().to_owned();
    assert_matches(&reply, &stanza_error("iq", &id, "modify", "not-acceptable"));
    let mut bob = Client::user(&server, "bob", "pc");
    let reply = bob.iq(
        &format!("type='set' to='alice@{DOMAIN}'"),
        &format!("<vCard xmlns='{VCARD}'><FN>Mallory</FN></vCard>"),
    );
    let id = reply.attr("id").unwrap().to_owned();
    assert_matches(&reply, &stanza_error("iq", &id, "auth", "forbidden"));
    let reply = vcard_get(&mut bob, Some("alice"));
    assert_matches(
        &reply,
        &format!("<iq type='result'><vCard xmlns='{VCARD}'><FN>Alice</FN></vCard></iq>"),
    );
    assert!(photo(&reply).is_none());
    // Many vCards in a row replace each other; the server keeps serving.
    for i in 0..50 {
        let reply = alice.iq(
            "type='set'",
            &format!("<vCard xmlns='{VCARD}'><FN>Alice {i}</FN></vCard>"),
        );
        assert_matches(&reply, "<iq type='result'/>");
    }
    let reply = vcard_get(&mut bob, Some("alice"));
    assert_matches(
        &reply,
        &format!("<iq type='result'><vCard xmlns='{VCARD}'><FN>Alice 49</FN></vCard></iq>"),
    );
}
