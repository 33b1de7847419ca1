//! The stream reader, fed a client's bytes in arbitrary pieces (the first bytes of the input
//! say where it is cut, see `pieces`), with small limits so that they are reached too.
//!
//! Besides not panicking: where the stream is cut must not change what is read (the same
//! events, and an error either way or neither; when there is an error, one run's events are a
//! prefix of the other's, since a check may fire at a different piece), and every stanza read
//! must come out of the writer as XML that reads back the same.

#![no_main]

use hearth::xml::reader::{Limits, StreamEvent};
use hearth_fuzz::{assert_readable, pieces, read_pieces};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_stanza_bytes: 2048,
    max_depth: 8,
    max_attrs: 8,
};

fuzz_target!(|data: &[u8]| {
    let cut = pieces(data);
    let (events, failed) = read_pieces(&cut, LIMITS);
    let whole = cut.concat();
    let (events_whole, failed_whole) = read_pieces(&[&whole], LIMITS);
    assert_eq!(
        failed,
        failed_whole,
        "an error in one piece but not in {} pieces: {events:?} vs {events_whole:?}",
        cut.len()
    );
    if failed {
        let n = events.len().min(events_whole.len());
        assert_eq!(events[..n], events_whole[..n]);
    } else {
        assert_eq!(events, events_whole);
    }
    let mut content_ns = None;
    for e in &events {
        match e {
            StreamEvent::Open(h) => content_ns = Some(h.content_ns.clone()),
            StreamEvent::Stanza(el) => {
                assert_readable(el, content_ns.as_deref().expect("a stanza after a header"))
            }
            StreamEvent::Close => {}
        }
    }
});
