//! Serialises elements and stream headers.
//!
//! A child whose namespace equals its parent's gets no `xmlns`; stream-namespace elements are
//! written with the `stream:` prefix that the stream header declares.

use super::{Element, Node, ns};
use quick_xml::escape::escape;

pub fn write_element(el: &Element, parent_ns: &str, out: &mut Vec<u8>) {
    let stream_prefixed = el.ns == ns::STREAM;
    out.push(b'<');
    if stream_prefixed {
        out.extend_from_slice(b"stream:");
    }
    out.extend_from_slice(el.name.as_bytes());
    if !stream_prefixed && el.ns != parent_ns {
        out.extend_from_slice(b" xmlns='");
        out.extend_from_slice(escape(el.ns.as_str()).as_bytes());
        out.push(b'\'');
    }
    for (k, v) in &el.attrs {
        out.push(b' ');
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"='");
        out.extend_from_slice(escape(v.as_str()).as_bytes());
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
            Node::Text(t) => out.extend_from_slice(escape(t.as_str()).as_bytes()),
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
    out.extend_from_slice(escape(from).as_bytes());
    if let Some(to) = to {
        out.extend_from_slice(b"' to='");
        out.extend_from_slice(escape(to).as_bytes());
    }
    out.extend_from_slice(b"' id='");
    out.extend_from_slice(escape(id).as_bytes());
    out.extend_from_slice(b"'>");
    out
}

pub const STREAM_CLOSE: &[u8] = b"</stream:stream>";

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
}
