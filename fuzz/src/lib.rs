//! What more than one fuzz target needs: cutting an input into the pieces a socket would
//! deliver, and the check that whatever the server writes, a recipient can read back.

use hearth::xml::reader::{Limits, StreamEvent, StreamReader};
use hearth::xml::{Element, ns, writer};

/// Cuts `data` into pieces as a network would: the first byte says how many cuts (0 to 15),
/// the bytes after it how long each piece before the last is (0 too: an empty read), and the
/// rest of the input is the stream. Pieces past the end are empty.
pub fn pieces(data: &[u8]) -> Vec<&[u8]> {
    let Some((&n, rest)) = data.split_first() else {
        return Vec::new();
    };
    let n = usize::from(n % 16).min(rest.len());
    let (lens, mut stream) = rest.split_at(n);
    let mut out = Vec::with_capacity(n + 1);
    for &len in lens {
        let (piece, tail) = stream.split_at(usize::from(len).min(stream.len()));
        out.push(piece);
        stream = tail;
    }
    out.push(stream);
    out
}

/// Feeds `pieces` to a fresh reader one at a time; the events it produced, and the error
/// that ended the stream if one did.
pub fn read_pieces(pieces: &[&[u8]], limits: Limits) -> (Vec<StreamEvent>, bool) {
    let mut reader = StreamReader::new(limits);
    let mut events = Vec::new();
    for p in pieces {
        if reader.feed(p, &mut events).is_err() {
            return (events, true);
        }
    }
    (events, false)
}

/// A stream header that declares `content_ns` as the default namespace.
pub fn header(content_ns: &str) -> Vec<u8> {
    let mut h = b"<stream:stream xmlns:stream='".to_vec();
    h.extend_from_slice(ns::STREAM.as_bytes());
    h.extend_from_slice(b"' xmlns='");
    h.extend_from_slice(escape_attr(content_ns).as_bytes());
    h.extend_from_slice(b"'>");
    h
}

/// Whitespace as references too: raw, a reader normalises it to spaces (XML 1.0 §3.3.3).
fn escape_attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('\'', "&apos;")
        .replace('\t', "&#9;")
        .replace('\n', "&#10;")
        .replace('\r', "&#13;")
}

/// What the writer makes of `el` in a stream whose content namespace is `content_ns`.
pub fn write(el: &Element, content_ns: &str) -> Vec<u8> {
    let mut out = Vec::new();
    writer::write_element(el, content_ns, &mut out);
    out
}

/// The writer's output for `el` must be one stanza that a reader with no limits accepts, and
/// writing what was read back must give the same bytes: nothing the server sends may break
/// the recipient's stream.
pub fn assert_readable(el: &Element, content_ns: &str) {
    let written = write(el, content_ns);
    let mut doc = header(content_ns);
    doc.extend_from_slice(&written);
    let unlimited = Limits {
        max_stanza_bytes: usize::MAX,
        max_depth: usize::MAX,
        max_attrs: usize::MAX,
    };
    let mut reader = StreamReader::new(unlimited);
    let mut events = Vec::new();
    if let Err(e) = reader.feed(&doc, &mut events) {
        panic!(
            "the writer's output is refused ({e:?}): {}\nfrom {el:?}",
            String::from_utf8_lossy(&written)
        );
    }
    let again: Vec<&Element> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Stanza(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(
        again.len(),
        1,
        "the writer's output is not one stanza: {}",
        String::from_utf8_lossy(&written)
    );
    assert_eq!(
        write(again[0], content_ns),
        written,
        "writing what was read back changes it: {}",
        String::from_utf8_lossy(&written)
    );
}
