//! The payload parsers of the modules, on every element of stanzas read from arbitrary bytes
//! (after a `jabber:client` stream header): XEP-0313 archive query forms and preferences,
//! XEP-0191 block and unblock item lists, and the stanza envelope. Roster sets, whose parsing
//! reads the roster as it goes, are fuzzed through the whole router (the `router` target).
//!
//! Besides not panicking: preferences that parse come back the same from the element the
//! server answers with and from the stored form.

#![no_main]

use hearth::jid::Jid;
use hearth::modules::blocking;
use hearth::modules::mam::prefs::Prefs;
use hearth::modules::mam::query;
use hearth::stanza::{Origin, Stanza};
use hearth::xml::reader::{Limits, StreamEvent};
use hearth::xml::{Element, ns};
use hearth_fuzz::{header, read_pieces};
use libfuzzer_sys::fuzz_target;

fn each_element(el: &Element, f: &mut impl FnMut(&Element)) {
    f(el);
    for c in el.elements() {
        each_element(c, f);
    }
}

fn payload(el: &Element) {
    if let Ok(q) = query::parse(el, 50, 100) {
        let (lo, hi) = q.id_range();
        let _ = (lo <= hi, q.named_ids().count());
    }
    let _ = query::parse_id(&el.text());
    if let Ok(p) = Prefs::parse(el) {
        assert_eq!(Prefs::parse(&p.to_element()).as_ref(), Ok(&p));
        assert_eq!(Prefs::decode(&p.encode()), p);
        let _ = p.verdict(&Jid::bare_from("bob", "localhost"));
    }
    if let Ok(items) = blocking::items_of(el) {
        for i in items {
            assert!(Jid::parse(&i).is_ok_and(|j| j.to_string() == i), "{i}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut doc = header(ns::CLIENT);
    doc.extend_from_slice(data);
    let (events, _) = read_pieces(&[&doc], Limits::default());
    let from = Jid::parse("alice@localhost/phone").expect("a JID");
    for e in events {
        if let StreamEvent::Stanza(el) = e {
            each_element(&el, &mut payload);
            let _ = Stanza::parse(el, from.clone(), Origin::Client);
        }
    }
});
