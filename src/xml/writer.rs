//! Serialises elements and stream headers.
//!
//! A child whose namespace equals its parent's gets no `xmlns`; stream-namespace elements are
//! written with the `stream:` prefix that the stream header declares.
//!
//! Whatever element it is given, the output is XML 1.0 that a recipient can parse. Elements do
//! not all come from the reader, which refuses what XML cannot carry: module code builds them
//! from configuration and from strings stored by older versions, which read them before those
//! checks existed (a roster item's name, say). So text and attribute values have characters
//! outside XML's `Char` replaced with U+FFFD rather than passed on to break the recipient's
//! stream, at the cost of one pass over the bytes that also tells whether anything needs
//! escaping, and of an allocation only when something must change. Names come only from the
//! reader, which validates them, and from constants in the code, so only debug builds check them.

use super::{Element, Node, chars, ns};

/// Escaped character data, without characters outside `Char`. A carriage return is written
/// as a reference: raw, it would reach the recipient as a line feed (XML 1.0 §2.11).
fn push_text(out: &mut Vec<u8>, value: &str) {
    push_escaped(out, value, false);
}

/// An escaped attribute value, without characters outside `Char`. Tab, line feed and carriage
/// return are written as references: raw, they would reach the recipient as spaces (XML 1.0
/// §3.3.3), and the value read here would not be the value read there.
fn push_attr(out: &mut Vec<u8>, value: &str) {
    push_escaped(out, value, true);
}

fn push_escaped(out: &mut Vec<u8>, value: &str, attr: bool) {
    if is_plain(value.as_bytes(), attr) {
        out.extend_from_slice(value.as_bytes());
        return;
    }
    let clean = chars::replace_non_chars(value);
    let mut tmp = [0u8; 4];
    for c in clean.chars() {
        let escaped = match c {
            '<' => "&lt;",
            '>' => "&gt;",
            '&' => "&amp;",
            '\'' => "&apos;",
            '"' => "&quot;",
            '\r' => "&#13;",
            '\n' if attr => "&#10;",
            '\t' if attr => "&#9;",
            c => c.encode_utf8(&mut tmp),
        };
        out.extend_from_slice(escaped.as_bytes());
    }
}

/// True if `bytes` need neither escaping nor replacing, as most values and most text do: one
/// pass without branches (vector compares) instead of the two scans it stands for. Text may
/// hold tabs and line feeds as they are, attribute values no control character.
fn is_plain(bytes: &[u8], attr: bool) -> bool {
    let special = |b: u8| {
        (b < 0x20) & (attr | (b != b'\t') & (b != b'\n'))
            | (b == b'<')
            | (b == b'>')
            | (b == b'&')
            | (b == b'\'')
            | (b == b'"')
            | (b == 0xEF)
    };
    !bytes.iter().fold(false, |any, &b| any | special(b))
}

fn push_name(out: &mut Vec<u8>, name: &str) {
    debug_assert!(chars::is_qname(name), "not an XML name: {name:?}");
    out.extend_from_slice(name.as_bytes());
}

pub fn write_element(el: &Element, parent_ns: &str, out: &mut Vec<u8>) {
    let stream_prefixed = el.ns == ns::STREAM;
    out.push(b'<');
    if stream_prefixed {
        out.extend_from_slice(b"stream:");
    }
    push_name(out, &el.name);
    if !stream_prefixed && el.ns != parent_ns {
        out.extend_from_slice(b" xmlns='");
        push_attr(out, &el.ns);
        out.push(b'\'');
    }
    for (k, v) in &el.attrs {
        out.push(b' ');
        push_name(out, k);
        out.extend_from_slice(b"='");
        push_attr(out, v);
        out.push(b'\'');
    }
    if el.children.is_empty() {
        out.extend_from_slice(b"/>");
        return;
    }
    out.push(b'>');
    // Children of a stream-level element inherit the stream's content namespace only if they
    // declare nothing, so pass on the namespace actually in scope.
    let scope = if stream_prefixed { parent_ns } else { &el.ns };
    for child in &el.children {
        match child {
            Node::Element(c) => write_element(c, scope, out),
            Node::Text(t) => push_text(out, t),
        }
    }
    out.extend_from_slice(b"</");
    if stream_prefixed {
        out.extend_from_slice(b"stream:");
    }
    out.extend_from_slice(el.name.as_bytes());
    out.push(b'>');
}

/// The response stream header (RFC 6120 §4.7). `id` is fresh per stream.
pub fn stream_header(from: &str, to: Option<&str>, id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='");
    out.extend_from_slice(ns::CLIENT.as_bytes());
    out.extend_from_slice(b"' xmlns:stream='");
    out.extend_from_slice(ns::STREAM.as_bytes());
    out.extend_from_slice(b"' version='1.0' xml:lang='en' from='");
    push_attr(&mut out, from);
    if let Some(to) = to {
        out.extend_from_slice(b"' to='");
        push_attr(&mut out, to);
    }
    out.extend_from_slice(b"' id='");
    push_attr(&mut out, id);
    out.extend_from_slice(b"'>");
    out
}

/// A server-to-server stream header (RFC 6120 §4.7, XEP-0220 §2.1: the `db` prefix declared):
/// the initiating side's has no id, the receiving side's a fresh one per stream.
pub fn server_stream_header(from: &str, to: Option<&str>, id: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='");
    out.extend_from_slice(ns::SERVER.as_bytes());
    out.extend_from_slice(b"' xmlns:stream='");
    out.extend_from_slice(ns::STREAM.as_bytes());
    out.extend_from_slice(b"' xmlns:db='");
    out.extend_from_slice(ns::DIALBACK.as_bytes());
    out.extend_from_slice(b"' version='1.0' xml:lang='en' from='");
    push_attr(&mut out, from);
    if let Some(to) = to {
        out.extend_from_slice(b"' to='");
        push_attr(&mut out, to);
    }
    if let Some(id) = id {
        out.extend_from_slice(b"' id='");
        push_attr(&mut out, id);
    }
    out.extend_from_slice(b"'>");
    out
}

pub const STREAM_CLOSE: &[u8] = b"</stream:stream>";

/// A top-level element of a framed stream (RFC 7395 §3.3.3): a WebSocket message of its own,
/// so it declares every namespace it uses, the `stream:` prefix included.
pub fn write_framed(el: &Element, out: &mut Vec<u8>) {
    if el.ns == ns::STREAM {
        let mut declared = el.clone();
        declared
            .attrs
            .insert(0, ("xmlns:stream".into(), ns::STREAM.into()));
        write_element(&declared, "", out);
    } else {
        write_element(el, "", out);
    }
}

/// The response `<open/>` of a framed stream (RFC 7395 §3.4), in place of the stream header.
pub fn framed_open(from: &str, to: Option<&str>, id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(192);
    out.extend_from_slice(b"<open xmlns='");
    out.extend_from_slice(ns::FRAMING.as_bytes());
    out.extend_from_slice(b"' version='1.0' xml:lang='en' from='");
    push_attr(&mut out, from);
    if let Some(to) = to {
        out.extend_from_slice(b"' to='");
        push_attr(&mut out, to);
    }
    out.extend_from_slice(b"' id='");
    push_attr(&mut out, id);
    out.extend_from_slice(b"'/>");
    out
}

/// The end of a framed stream (RFC 7395 §3.6).
pub const FRAMED_CLOSE: &[u8] = b"<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_namespaces_and_escaping() {
        let el = Element::new("iq", ns::CLIENT)
            .with_attr("id", "a'b<")
            .with_child(
                Element::new("query", ns::ROSTER)
                    .with_child(Element::new("item", ns::ROSTER).with_text("x&y")),
            );
        assert_eq!(
            el.to_xml(),
            "<iq id='a&apos;b&lt;'><query xmlns='jabber:iq:roster'><item>x&amp;y</item></query></iq>"
        );
    }

    #[test]
    fn stream_prefix() {
        let el = Element::new("error", ns::STREAM)
            .with_child(Element::new("conflict", ns::STREAM_ERRORS));
        assert_eq!(
            el.to_xml(),
            "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
        );
    }

    #[test]
    fn framed_elements_declare_their_namespaces() {
        let features =
            Element::new("features", ns::STREAM).with_child(Element::new("bind", ns::BIND));
        let mut out = Vec::new();
        write_framed(&features, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<stream:features xmlns:stream='http://etherx.jabber.org/streams'>\
             <bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
        );
        let mut out = Vec::new();
        write_framed(&Element::new("message", ns::CLIENT), &mut out);
        assert_eq!(out, b"<message xmlns='jabber:client'/>");
        let open = String::from_utf8(framed_open("localhost", None, "a'b")).unwrap();
        assert_eq!(
            open,
            "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' version='1.0' xml:lang='en' \
             from='localhost' id='a&apos;b'/>"
        );
        assert!(FRAMED_CLOSE.ends_with(format!("{}'/>", ns::FRAMING).as_bytes()));
    }

    #[test]
    fn characters_outside_xml_are_replaced() {
        let el = Element::new("message", ns::CLIENT)
            .with_attr("id", "a\u{1}b")
            .with_child(
                Element::new("body", ns::CLIENT).with_text("x\u{0}y\u{FFFE}z\u{FFFF}\u{1B}<\t\n"),
            );
        let xml = el.to_xml();
        assert_eq!(
            xml,
            "<message id='a\u{FFFD}b'><body>x\u{FFFD}y\u{FFFD}z\u{FFFD}\u{FFFD}&lt;\t\n</body></message>"
        );
        // And what was written reads back.
        assert!(super::super::reader::parse_one(&xml).is_some());
        let header = stream_header("localhost", Some("a\u{7}@localhost"), "id");
        let header = String::from_utf8(header).unwrap();
        assert!(header.contains("to='a\u{FFFD}@localhost'"), "{header}");
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "not an XML name")]
    fn invalid_names_are_caught_in_debug_builds() {
        Element::new("a\"b", ns::CLIENT).to_xml();
    }

    /// Found by the `xml_reader` fuzz target: a line feed read from `&#10;` in an attribute
    /// was written raw, and came back as a space; a carriage return in text came back as a line
    /// feed.
    #[test]
    fn whitespace_that_xml_would_normalise_is_written_as_references() {
        let el = Element::new("message", ns::CLIENT)
            .with_attr("id", "a\tb\nc\rd")
            .with_child(Element::new("body", ns::CLIENT).with_text("x\r\ny\tz\r"));
        let xml = el.to_xml();
        assert_eq!(
            xml,
            "<message id='a&#9;b&#10;c&#13;d'><body>x&#13;\ny\tz&#13;</body></message>"
        );
        assert_eq!(super::super::reader::parse_one(&xml), Some(el));
        let header = stream_header("localhost", None, "a\nb");
        assert!(String::from_utf8(header).unwrap().contains("id='a&#10;b'"));
    }
}
