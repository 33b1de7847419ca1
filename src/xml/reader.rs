//! Incremental, namespace-aware XML stream reader with hard limits (RFC 6120 §4, §11).
//!
//! Bytes arrive in arbitrary pieces. Each `feed` hands quick-xml's slice reader the buffered
//! bytes up to the last `>` (everything after it is certainly incomplete, and `>` is ASCII, so
//! that cut never splits a UTF-8 sequence), builds the stanza tree one event at a time, and
//! keeps what it could not use yet. Parser state that must survive between feeds (open
//! elements, namespace scopes) lives here rather than in quick-xml, so each feed starts a fresh
//! quick-xml reader over the unread bytes and no byte is scanned twice except the tail of an
//! unfinished event.
//!
//! Only XML 1.0 that any recipient can parse gets through, because what is read here is relayed,
//! stored offline and archived, and one bad character would break the recipient's stream at
//! every reconnect. quick-xml checks the syntax and duplicate attributes, and its namespace
//! resolver the prefixes; this module adds what quick-xml leaves out: characters outside `Char`
//! (raw or as character references) and malformed names are `not-well-formed` (RFC 6120
//! §4.9.3.13), an undeclared prefix is `bad-namespace-prefix` (§4.9.3.2). Bytes that cannot
//! begin markup outside a stanza (a TLS ClientHello or an HTTP request sent to the STARTTLS
//! port) are `not-well-formed` as soon as they arrive, without waiting for a `>`.
//!
//! Restricted XML (RFC 6120 §11.1): comments, processing instructions, DOCTYPE and entity
//! references beyond the five predefined ones end the stream with `restricted-xml`.
//!
//! A framed reader (RFC 7395, XMPP over WebSocket) reads the same events from a different
//! shape: no enclosing stream element, but an empty `<open/>` in the framing namespace for the
//! header and an empty `<close/>` for its end, with every stanza a top-level element that
//! declares its own namespace. Everything else (limits, checks, restarts) is the same code.

use super::{Element, Node, chars, ns};
use crate::stanza::{StreamCondition as C, StreamError};
use quick_xml::Reader;
use quick_xml::errors::{Error as XmlError, SyntaxError};
use quick_xml::escape::EscapeError;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{Namespace, NamespaceError, NamespaceResolver, PrefixDeclaration};
use quick_xml::name::{QName, ResolveResult};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_stanza_bytes: usize,
    pub max_depth: usize,
    pub max_attrs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 262_144,
            max_depth: 32,
            max_attrs: 64,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamHeader {
    pub to: Option<String>,
    pub from: Option<String>,
    pub version: Option<String>,
    /// The stream id: only a receiving entity's header has one (RFC 6120 §4.7.3).
    pub id: Option<String>,
    pub lang: Option<String>,
    /// The namespace of the stream element itself (must be the streams namespace).
    pub stream_ns: String,
    /// The default namespace declared on the header (the stream's content namespace).
    pub content_ns: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    Open(StreamHeader),
    Stanza(Element),
    Close,
}

pub struct StreamReader {
    buf: Vec<u8>,
    limits: Limits,
    /// Namespace declarations in scope: the stream header's at level 1, then one level per
    /// open element of the stanza being read. Boxed because readers move with connections
    /// (a resumed session takes over another's) and this is most of a reader's size.
    resolver: Box<NamespaceResolver>,
    /// Open elements of the stanza being read, with their qualified names for the end-tag check.
    stack: Vec<(Element, String)>,
    stream_qname: Option<String>,
    stanza_bytes: usize,
    /// Set by a restart: the unread bytes must be parsed again even if no `>` arrives, because
    /// the state they were read against is gone.
    restarted: bool,
    /// Nothing of this stream has been read yet, so a byte order mark may still come.
    bom_allowed: bool,
    /// RFC 7395 framing: `<open/>` and `<close/>` instead of the stream element.
    framed: bool,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

fn err(c: C, text: &str) -> StreamError {
    StreamError::with_text(c, text)
}

fn not_a_char() -> StreamError {
    err(C::NotWellFormed, "character not allowed in XML")
}

fn namespace_error(e: NamespaceError) -> StreamError {
    match e {
        NamespaceError::UnknownPrefix(_) => {
            err(C::BadNamespacePrefix, "undeclared namespace prefix")
        }
        NamespaceError::TooManyBindings(_) | NamespaceError::TooDeeplyNested(_) => {
            err(C::PolicyViolation, "too many namespace declarations")
        }
        // Binding `xml` or `xmlns` wrongly, or a prefix to their namespaces, breaks Namespaces
        // in XML, which §4.9.3.13 counts as not well-formed.
        _ => err(C::NotWellFormed, &e.to_string()),
    }
}

impl StreamReader {
    pub fn new(limits: Limits) -> StreamReader {
        StreamReader {
            buf: Vec::new(),
            limits,
            resolver: Box::default(),
            stack: Vec::new(),
            stream_qname: None,
            stanza_bytes: 0,
            restarted: false,
            bom_allowed: true,
            framed: false,
        }
    }

    /// A reader of RFC 7395 framing (see the module header).
    pub fn framed(limits: Limits) -> StreamReader {
        StreamReader {
            framed: true,
            ..StreamReader::new(limits)
        }
    }

    /// Forgets the stream but keeps unread bytes: a stream restart after SASL (RFC 6120 §6.4.6).
    pub fn restart(&mut self) {
        self.resolver.set_level(0);
        self.stack.clear();
        self.stream_qname = None;
        self.stanza_bytes = 0;
        self.restarted = true;
        self.bom_allowed = true;
    }

    /// The peer ended its stream: ready for another, but what follows in the same bytes is no
    /// longer the start of an entity, so a byte order mark there is refused however the bytes
    /// were cut (only a restart the server asks for allows one again).
    fn closed(&mut self) {
        self.restart();
        self.bom_allowed = false;
    }

    /// Drops unread bytes as well: after STARTTLS nothing sent in the clear may be used.
    pub fn reset(&mut self) {
        self.restart();
        self.buf = Vec::new();
    }

    pub fn feed(&mut self, data: &[u8], out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        self.buf.extend_from_slice(data);
        self.skip_between_stanzas()?;
        // Two bytes before the new ones too, for a U+FFFE split across pieces. Every byte is
        // checked once here, so the parser below needs to check only character references.
        let scan_from = self.buf.len().saturating_sub(data.len() + 2);
        if chars::find_non_char(&self.buf[scan_from..]).is_some() {
            return Err(not_a_char());
        }
        // Only a new `>` can complete an event: without one, parsing again would stop where the
        // last parse stopped, and the unread bytes of a large unfinished tag would be scanned
        // once per piece.
        let fresh = self.buf.len().saturating_sub(data.len());
        let gt = match self.buf[fresh..].iter().rposition(|&b| b == b'>') {
            Some(i) => Some(fresh + i),
            None if self.restarted => self.buf[..fresh].iter().rposition(|&b| b == b'>'),
            None => None,
        };
        if let Some(gt) = gt {
            self.restarted = false;
            let buf = std::mem::take(&mut self.buf);
            let result = self.parse(&buf[..=gt], out);
            self.buf = buf;
            let consumed = result?;
            self.buf.drain(..consumed);
            self.skip_between_stanzas()?;
        }
        if self.buf.is_empty() {
            // An idle session should not keep the buffer of its largest stanza.
            self.buf = Vec::new();
        }
        let held = if self.stack.is_empty() {
            self.buf.len()
        } else {
            self.stanza_bytes + self.buf.len()
        };
        if held > self.limits.max_stanza_bytes {
            return Err(err(C::PolicyViolation, "stanza too large"));
        }
        Ok(())
    }

    /// Outside a stanza only whitespace may come before the next tag (RFC 6120 §4.6.1), and a
    /// byte order mark before the stream header (XML 1.0 §4.3.3). Drops them, then checks that
    /// what follows can begin markup, so that anything else is refused the moment it arrives.
    fn skip_between_stanzas(&mut self) -> Result<(), StreamError> {
        if !self.stack.is_empty() {
            return Ok(());
        }
        let before_header = self.stream_qname.is_none();
        let mut skip = 0;
        if self.bom_allowed && self.buf.starts_with(BOM) {
            skip = BOM.len();
        }
        skip += self.buf[skip..]
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            .unwrap_or(self.buf.len() - skip);
        if skip > 0 {
            self.buf.drain(..skip);
        }
        // Only the stream's first bytes may be a byte order mark: not a second one, and not
        // one after whitespace, however the bytes were cut into pieces.
        let partial_bom = self.bom_allowed && skip == 0 && BOM.starts_with(&self.buf);
        if !partial_bom {
            self.bom_allowed = false;
        }
        match self.buf.as_slice() {
            [] | [b'<'] => Ok(()),
            [b'<', next, ..] if chars::can_follow_lt(*next) => Ok(()),
            _ if partial_bom => Ok(()),
            _ if before_header => Err(err(C::NotWellFormed, "not an XML stream")),
            _ => Err(err(C::NotWellFormed, "character data outside a stanza")),
        }
    }

    /// Parses complete events from `input`; returns how many bytes were used.
    fn parse(&mut self, input: &[u8], out: &mut Vec<StreamEvent>) -> Result<usize, StreamError> {
        // quick-xml drops a byte order mark at the start of its input, without counting it in
        // its positions. Here input starts wherever the last piece stopped, and a U+FEFF there
        // is a stanza's text (outside one, `skip_between_stanzas` has dealt with it).
        let mut lead = 0;
        if input.starts_with(BOM) {
            self.text("\u{FEFF}")?;
            self.stanza_bytes += BOM.len();
            lead = BOM.len();
        }
        let text = std::str::from_utf8(&input[lead..])
            .map_err(|_| err(C::NotWellFormed, "invalid UTF-8"))?;
        let mut reader = Reader::from_str(text);
        let cfg = reader.config_mut();
        // End tags are matched against our own stack, which outlives this reader.
        cfg.check_end_names = false;
        cfg.allow_unmatched_ends = true;
        cfg.expand_empty_elements = false;
        let mut consumed = lead;
        loop {
            let before = lead + reader.buffer_position() as usize;
            let event = match reader.read_event() {
                Ok(Event::Eof) => break,
                Ok(ev) => ev,
                Err(XmlError::Syntax(s)) => match s {
                    SyntaxError::UnclosedTag
                    | SyntaxError::UnclosedCData
                    | SyntaxError::UnclosedSingleQuotedAttributeValue
                    | SyntaxError::UnclosedDoubleQuotedAttributeValue => break,
                    SyntaxError::UnclosedXmlDecl if self.stream_qname.is_none() => break,
                    _ => return Err(err(C::RestrictedXml, "markup not allowed in XMPP")),
                },
                Err(e) => return Err(err(C::NotWellFormed, &e.to_string())),
            };
            let after = lead + reader.buffer_position() as usize;
            if matches!(event, Event::Text(_)) && after == input.len() {
                // Text runs to the end of what we have; more of it may follow.
                break;
            }
            if !self.stack.is_empty() {
                self.stanza_bytes += after - before;
                if self.stanza_bytes > self.limits.max_stanza_bytes {
                    return Err(err(C::PolicyViolation, "stanza too large"));
                }
            }
            self.event(event, out)?;
            consumed = after;
        }
        Ok(consumed)
    }

    fn event(&mut self, event: Event<'_>, out: &mut Vec<StreamEvent>) -> Result<(), StreamError> {
        match event {
            Event::Decl(_) if self.stream_qname.is_none() => Ok(()),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {
                Err(err(C::RestrictedXml, "markup not allowed in XMPP"))
            }
            Event::Start(start) => self.start(&start, false, out),
            Event::Empty(start) => self.start(&start, true, out),
            Event::End(end) => {
                let name = end.name().0;
                match self.stack.pop() {
                    Some((el, qname)) => {
                        if qname != name {
                            return Err(err(C::NotWellFormed, "mismatched end tag"));
                        }
                        self.resolver.pop();
                        self.finish(el, out);
                        Ok(())
                    }
                    None if self.stream_qname.as_deref() == Some(name) => {
                        out.push(StreamEvent::Close);
                        self.closed();
                        Ok(())
                    }
                    None => Err(err(C::NotWellFormed, "unexpected end tag")),
                }
            }
            Event::Text(t) => {
                let content = t.xml10_content();
                self.text(&content)
            }
            Event::CData(c) => {
                let content = c.xml10_content();
                match self.stack.last() {
                    Some(_) => self.text(&content),
                    None => Err(err(C::NotWellFormed, "character data outside a stanza")),
                }
            }
            Event::GeneralRef(r) => {
                let ch = match r.resolve_char_ref() {
                    // WFC Legal Character (XML 1.0 §4.1): quick-xml refuses only `&#0;`.
                    Ok(Some(c)) if chars::is_char(c) => c,
                    Ok(Some(_)) => return Err(not_a_char()),
                    Ok(None) => match &*r {
                        "amp" => '&',
                        "lt" => '<',
                        "gt" => '>',
                        "quot" => '"',
                        "apos" => '\'',
                        _ => return Err(err(C::RestrictedXml, "undeclared entity")),
                    },
                    Err(_) => return Err(err(C::NotWellFormed, "invalid character reference")),
                };
                let mut tmp = [0u8; 4];
                let s: &str = ch.encode_utf8(&mut tmp);
                if self.stack.is_empty() {
                    return Err(err(C::NotWellFormed, "character data outside a stanza"));
                }
                self.text(s)
            }
            Event::Eof => Ok(()),
        }
    }

    fn text(&mut self, content: &str) -> Result<(), StreamError> {
        match self.stack.last_mut() {
            // An empty CDATA section adds no character data: kept as an empty text node, it
            // would be written as `<x></x>` and read back as `<x/>`, a different element.
            Some(_) if content.is_empty() => Ok(()),
            Some((el, _)) => {
                match el.children.last_mut() {
                    Some(Node::Text(t)) => t.push_str(content),
                    _ => el.children.push(Node::Text(content.to_owned())),
                }
                Ok(())
            }
            // Whitespace between stanzas is a keepalive (RFC 6120 §4.6.1).
            None if content.bytes().all(|b| b.is_ascii_whitespace()) => Ok(()),
            None => Err(err(C::NotWellFormed, "character data outside a stanza")),
        }
    }

    fn finish(&mut self, el: Element, out: &mut Vec<StreamEvent>) {
        match self.stack.last_mut() {
            Some((parent, _)) => parent.children.push(Node::Element(el)),
            None => {
                self.stanza_bytes = 0;
                out.push(StreamEvent::Stanza(el));
            }
        }
    }

    fn start(
        &mut self,
        start: &BytesStart<'_>,
        empty: bool,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), StreamError> {
        let depth = self.stack.len() + usize::from(self.stream_qname.is_some());
        if depth >= self.limits.max_depth {
            return Err(err(C::PolicyViolation, "elements nested too deeply"));
        }
        let qname = start.name().0;
        // quick-xml takes everything up to the first space as the name, `"` and `<` included.
        if !chars::is_qname(qname) {
            return Err(err(C::NotWellFormed, "invalid element name"));
        }
        let level = self.resolver.level().checked_add(1).ok_or_else(|| {
            namespace_error(NamespaceError::TooDeeplyNested(usize::from(u16::MAX)))
        })?;
        self.resolver.set_level(level);
        let attrs = self.attributes(start)?;
        let (resolved, local) = self.resolver.resolve_element(QName(qname));
        let ns = match resolved {
            ResolveResult::Bound(Namespace(n)) if n == ns::XML || n == ns::XMLNS => {
                // Legal for `xml:` in theory, but nothing could declare it when written out.
                return Err(err(
                    C::BadNamespacePrefix,
                    "reserved namespace on an element",
                ));
            }
            ResolveResult::Bound(Namespace(n)) => n.to_owned(),
            ResolveResult::Unbound => String::new(),
            ResolveResult::Unknown(_) => {
                return Err(err(C::BadNamespacePrefix, "undeclared namespace prefix"));
            }
        };
        let local = local.into_inner();
        if self.framed && self.stack.is_empty() {
            return self.framing(qname, local, ns, attrs, empty, out);
        }
        if self.stream_qname.is_none() {
            let content_ns = match self.resolver.resolve_prefix(None, true) {
                ResolveResult::Bound(Namespace(n)) => n.to_owned(),
                _ => String::new(),
            };
            let header = StreamHeader {
                to: take(&attrs, "to"),
                from: take(&attrs, "from"),
                version: take(&attrs, "version"),
                id: take(&attrs, "id"),
                lang: take(&attrs, "xml:lang"),
                content_ns,
                stream_ns: ns,
            };
            if local != "stream" {
                return Err(err(C::InvalidNamespace, "expected a stream header"));
            }
            self.stream_qname = Some(qname.to_owned());
            out.push(StreamEvent::Open(header));
            if empty {
                out.push(StreamEvent::Close);
                self.closed();
            }
            return Ok(());
        }
        let el = Element {
            name: local.to_owned(),
            ns,
            attrs,
            children: Vec::new(),
        };
        if empty {
            self.resolver.pop();
            self.finish(el, out);
        } else {
            self.stack.push((el, qname.to_owned()));
        }
        Ok(())
    }

    /// A top-level element of a framed stream that may be `<open/>` or `<close/>`: the header
    /// and the end of the stream; anything else opens a stanza. The framing elements are empty,
    /// so nothing they declare outlives them.
    fn framing(
        &mut self,
        qname: &str,
        local: &str,
        ns: String,
        attrs: Vec<(String, String)>,
        empty: bool,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), StreamError> {
        let framing = ns == ns::FRAMING && matches!(local, "open" | "close");
        if framing && !empty {
            return Err(err(
                C::InvalidXml,
                "<open/> and <close/> are empty elements",
            ));
        }
        match (self.stream_qname.is_some(), framing, local) {
            (false, true, "open") => {
                self.resolver.pop();
                self.stream_qname = Some(String::new());
                out.push(StreamEvent::Open(StreamHeader {
                    to: take(&attrs, "to"),
                    from: take(&attrs, "from"),
                    id: take(&attrs, "id"),
                    version: take(&attrs, "version"),
                    lang: take(&attrs, "xml:lang"),
                    stream_ns: ns::STREAM.into(),
                    content_ns: ns::CLIENT.into(),
                }));
                Ok(())
            }
            (false, _, _) => Err(err(C::InvalidNamespace, "expected <open/>")),
            (true, true, "close") => {
                out.push(StreamEvent::Close);
                self.closed();
                Ok(())
            }
            (true, true, _) => Err(err(C::InvalidXml, "the stream is already open")),
            (true, false, _) => {
                let el = Element {
                    name: local.to_owned(),
                    ns,
                    attrs,
                    children: Vec::new(),
                };
                if empty {
                    self.resolver.pop();
                    self.finish(el, out);
                } else {
                    self.stack.push((el, qname.to_owned()));
                }
                Ok(())
            }
        }
    }

    /// The attributes of `start`, after its namespace declarations went into the resolver.
    fn attributes(&mut self, start: &BytesStart<'_>) -> Result<Vec<(String, String)>, StreamError> {
        let in_stanza = self.stream_qname.is_some();
        let mut attrs = Vec::new();
        let mut declared = 0;
        // Declarations apply to the whole tag, so prefixed names are resolved after all of them.
        let mut prefixed = false;
        for attr in start.attributes() {
            let attr = attr.map_err(|e| err(C::NotWellFormed, &e.to_string()))?;
            if attrs.len() + declared >= self.limits.max_attrs {
                return Err(err(C::PolicyViolation, "too many attributes"));
            }
            let key = attr.key.0;
            if !chars::is_qname(key) {
                return Err(err(C::NotWellFormed, "invalid attribute name"));
            }
            let value = attr
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| match e {
                    XmlError::Escape(EscapeError::UnrecognizedEntity(..)) => {
                        err(C::RestrictedXml, "undeclared entity in attribute")
                    }
                    _ => err(C::NotWellFormed, "invalid character reference"),
                })?;
            if attr.value.contains('&') && chars::find_non_char(value.as_bytes()).is_some() {
                return Err(not_a_char());
            }
            match attr.key.as_namespace_binding() {
                Some(PrefixDeclaration::Named(_)) if value.is_empty() => {
                    // Namespaces in XML 1.0 §5 has no way to undeclare a prefix.
                    return Err(err(C::NotWellFormed, "empty namespace name for a prefix"));
                }
                Some(PrefixDeclaration::Default) if value == ns::XML || value == ns::XMLNS => {
                    return Err(err(C::NotWellFormed, "reserved namespace as the default"));
                }
                Some(decl) => {
                    self.resolver
                        .add(decl, Namespace(&value))
                        .map_err(namespace_error)?;
                    declared += 1;
                    // Kept as an attribute too, so prefixed attributes stay well-formed when
                    // the element is written out again.
                    if in_stanza && decl != PrefixDeclaration::Default {
                        attrs.push((key.to_owned(), value.into_owned()));
                    }
                }
                None => {
                    // `xml:` is bound by definition, and no other prefix can be bound to its
                    // namespace, so `xml:lang` needs no resolving.
                    prefixed |= key.contains(':') && !key.starts_with("xml:");
                    attrs.push((key.to_owned(), value.into_owned()));
                }
            }
        }
        if prefixed {
            self.resolve_attributes(&mut attrs)?;
        }
        Ok(attrs)
    }

    /// Checks the prefixes of `attrs` (Namespaces in XML §5: each must be declared, and no two
    /// attributes may share a namespace and local name). A prefix the stream header declared
    /// gets declared on the element too: the stanza is written out into other streams.
    fn resolve_attributes(&self, attrs: &mut Vec<(String, String)>) -> Result<(), StreamError> {
        let in_stanza = self.stream_qname.is_some();
        let mut seen: Vec<(&str, &str)> = Vec::new();
        let mut inherited: Vec<(String, String)> = Vec::new();
        for (key, _) in attrs.iter() {
            let Some((prefix, local)) = key.split_once(':') else {
                continue;
            };
            if prefix == "xmlns" || prefix == "xml" {
                continue;
            }
            let ResolveResult::Bound(Namespace(ns)) = self.resolver.resolve_attribute(QName(key)).0
            else {
                return Err(err(C::BadNamespacePrefix, "undeclared namespace prefix"));
            };
            if seen.contains(&(ns, local)) {
                return Err(err(C::NotWellFormed, "duplicate attribute"));
            }
            seen.push((ns, local));
            if !in_stanza {
                continue;
            }
            let decl = format!("xmlns:{prefix}");
            let declared = |a: &[(String, String)]| a.iter().any(|(k, _)| *k == decl);
            let in_scope = declared(attrs) || declared(&inherited);
            if !in_scope && !self.stack.iter().any(|(el, _)| declared(&el.attrs)) {
                inherited.push((decl, ns.to_owned()));
            }
        }
        attrs.extend(inherited);
        Ok(())
    }
}

fn take(attrs: &[(String, String)], name: &str) -> Option<String> {
    attrs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// Parses one stored stanza (written by this server, in the `jabber:client` namespace).
pub fn parse_one(xml: &str) -> Option<super::Element> {
    let mut r = StreamReader::new(Limits {
        max_stanza_bytes: usize::MAX,
        max_depth: usize::MAX,
        max_attrs: usize::MAX,
    });
    let mut out = Vec::new();
    let doc = format!(
        "<stream:stream xmlns='{}' xmlns:stream='{}'>{xml}",
        ns::CLIENT,
        ns::STREAM
    );
    r.feed(doc.as_bytes(), &mut out).ok()?;
    out.into_iter().find_map(|e| match e {
        StreamEvent::Stanza(s) => Some(s),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream to='localhost' \
        xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

    fn run(chunks: &[&[u8]]) -> Result<Vec<StreamEvent>, StreamError> {
        let mut r = StreamReader::new(Limits::default());
        let mut out = Vec::new();
        for c in chunks {
            r.feed(c, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn framed_streams_open_and_close_with_framing_elements() {
        let mut r = StreamReader::framed(Limits::default());
        let mut out = Vec::new();
        let open =
            b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>";
        r.feed(open, &mut out).unwrap();
        r.feed(
            b"<message xmlns='jabber:client' to='a@localhost'><body>hi</body></message>",
            &mut out,
        )
        .unwrap();
        r.feed(b"<presence/>", &mut out).unwrap();
        match &out[0] {
            StreamEvent::Open(h) => {
                assert_eq!(h.to.as_deref(), Some("localhost"));
                assert_eq!(h.version.as_deref(), Some("1.0"));
                assert_eq!(
                    (h.stream_ns.as_str(), h.content_ns.as_str()),
                    (ns::STREAM, ns::CLIENT)
                );
            }
            other => panic!("{other:?}"),
        }
        match (&out[1], &out[2]) {
            (StreamEvent::Stanza(m), StreamEvent::Stanza(p)) => {
                assert!(m.is("message", ns::CLIENT), "{m:?}");
                assert_eq!(
                    m.child("body", ns::CLIENT).map(|b| b.text()).as_deref(),
                    Some("hi")
                );
                // Nothing declares a namespace for it: a framed stanza declares its own.
                assert!(p.is("presence", ""), "{p:?}");
            }
            other => panic!("{other:?}"),
        }
        out.clear();
        r.feed(
            b"<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
            &mut out,
        )
        .unwrap();
        assert_eq!(out, vec![StreamEvent::Close]);
        // A stream can be opened again (after SASL, say), and a restart expects <open/> again.
        out.clear();
        r.feed(open, &mut out).unwrap();
        r.restart();
        r.feed(open, &mut out).unwrap();
        assert!(matches!(
            out.as_slice(),
            [StreamEvent::Open(_), StreamEvent::Open(_)]
        ));
        let mut r = StreamReader::framed(Limits::default());
        let e = r
            .feed(b"<message xmlns='jabber:client'/>", &mut out)
            .unwrap_err();
        assert_eq!(e.condition, C::InvalidNamespace);
        let mut r = StreamReader::framed(Limits::default());
        let e = r.feed(HEADER.as_bytes(), &mut out).unwrap_err();
        assert_eq!(e.condition, C::InvalidNamespace);
        let mut r = StreamReader::framed(Limits::default());
        r.feed(open, &mut out).unwrap();
        let e = r.feed(open, &mut out).unwrap_err();
        assert_eq!(e.condition, C::InvalidXml);
        let mut r = StreamReader::framed(Limits::default());
        let e = r
            .feed(
                b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'><x/></open>",
                &mut out,
            )
            .unwrap_err();
        assert_eq!(e.condition, C::InvalidXml);
    }

    fn stanzas(events: &[StreamEvent]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Stanza(s) => Some(s.to_xml()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let doc = format!(
            "{HEADER}<message to='b@localhost' type='chat'><body>a &amp; b &#x263A; \u{e9} &gt; x</body>\
             <x xmlns='urn:test'><y a=\"1&lt;2\"/></x></message> \n<iq id='1' type='get'>\
             <ping xmlns='urn:xmpp:ping'/></iq><p:q xmlns:p='urn:p' p:attr='v'><![CDATA[<raw>]]></p:q></stream:stream>"
        );
        let bytes = doc.as_bytes();
        let whole = run(&[bytes]).unwrap();
        assert_eq!(whole.len(), 5, "{whole:?}");
        assert!(matches!(whole[0], StreamEvent::Open(_)));
        assert_eq!(whole[4], StreamEvent::Close);
        let s = stanzas(&whole);
        assert_eq!(
            s[0],
            "<message to='b@localhost' type='chat'><body>a &amp; b \u{263A} \u{e9} &gt; x</body>\
             <x xmlns='urn:test'><y a='1&lt;2'/></x></message>"
        );
        assert_eq!(
            s[2],
            "<q xmlns='urn:p' xmlns:p='urn:p' p:attr='v'>&lt;raw&gt;</q>"
        );
        for i in 0..bytes.len() {
            assert_eq!(
                run(&[&bytes[..i], &bytes[i..]]).unwrap(),
                whole,
                "split at {i}"
            );
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(&singles).unwrap(), whole);
    }

    #[test]
    fn header_namespaces() {
        let ev = run(&[HEADER.as_bytes()]).unwrap();
        let StreamEvent::Open(h) = &ev[0] else {
            panic!()
        };
        assert_eq!(h.to.as_deref(), Some("localhost"));
        assert_eq!(h.stream_ns, ns::STREAM);
        assert_eq!(h.content_ns, ns::CLIENT);
        assert_eq!(h.version.as_deref(), Some("1.0"));
    }

    fn fails(input: &str) -> StreamCondition {
        let doc = format!("{HEADER}{input}");
        run(&[doc.as_bytes()]).unwrap_err().condition
    }

    use crate::stanza::StreamCondition;

    #[test]
    fn rejects() {
        assert_eq!(fails("<!-- hi -->"), StreamCondition::RestrictedXml);
        assert_eq!(fails("<?foo bar?>"), StreamCondition::RestrictedXml);
        assert_eq!(fails("<a>&foo;</a>"), StreamCondition::RestrictedXml);
        assert_eq!(fails("<a></b>"), StreamCondition::NotWellFormed);
        assert_eq!(fails("<a x='1' x='2'/>"), StreamCondition::NotWellFormed);
        assert_eq!(fails("<x:a/>"), StreamCondition::BadNamespacePrefix);
        assert_eq!(fails("hello<a/>"), StreamCondition::NotWellFormed);
        let doctype = "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>]><stream:stream>";
        assert_eq!(
            run(&[doctype.as_bytes()]).unwrap_err().condition,
            StreamCondition::RestrictedXml
        );
        let invalid = [HEADER.as_bytes(), b"<a>\xff\xfe</a>"].concat();
        assert_eq!(
            run(&[&invalid]).unwrap_err().condition,
            StreamCondition::NotWellFormed
        );
    }

    #[test]
    fn limits() {
        let deep = "<a>".repeat(40);
        assert_eq!(fails(&deep), StreamCondition::PolicyViolation);
        let attrs: String = (0..70).map(|i| format!(" a{i}='x'")).collect();
        assert_eq!(
            fails(&format!("<a{attrs}/>")),
            StreamCondition::PolicyViolation
        );
        let mut r = StreamReader::new(Limits::default());
        let mut out = Vec::new();
        r.feed(HEADER.as_bytes(), &mut out).unwrap();
        r.feed(b"<message><body>", &mut out).unwrap();
        let chunk = vec![b'x'; 65536];
        let mut result = Ok(());
        for _ in 0..5 {
            result = r.feed(&chunk, &mut out);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(
            result.unwrap_err().condition,
            StreamCondition::PolicyViolation
        );
        // Without any '>' at all the buffer is still bounded.
        let mut r = StreamReader::new(Limits::default());
        let mut tag = b"<message to='".to_vec();
        tag.resize(300_000, b'x');
        assert_eq!(
            r.feed(&tag, &mut out).unwrap_err().condition,
            StreamCondition::PolicyViolation
        );
    }

    #[test]
    fn restart_keeps_pipelined_bytes() {
        let mut r = StreamReader::new(Limits::default());
        let mut out = Vec::new();
        r.feed(format!("{HEADER}<a/>").as_bytes(), &mut out)
            .unwrap();
        assert_eq!(out.len(), 2);
        r.restart();
        out.clear();
        r.feed(HEADER.as_bytes(), &mut out).unwrap();
        assert!(matches!(out[0], StreamEvent::Open(_)));
    }

    /// The condition `doc` is refused with, which must not depend on how it is split: whole,
    /// in two pieces at every byte boundary, and one byte at a time.
    #[track_caller]
    fn refused(doc: &[u8]) -> StreamCondition {
        let whole = run(&[doc]).unwrap_err().condition;
        for i in 0..doc.len() {
            let split = run(&[&doc[..i], &doc[i..]]);
            assert_eq!(split.unwrap_err().condition, whole, "split at {i}");
        }
        let singles: Vec<&[u8]> = doc.chunks(1).collect();
        assert_eq!(run(&singles).unwrap_err().condition, whole, "byte by byte");
        whole
    }

    #[test]
    fn refuses_characters_outside_xml() {
        let inputs: &[&[u8]] = &[
            b"<message><body>a&#1;b</body></message>",
            b"<message><body>&#x1F;</body></message>",
            b"<message><body>&#xFFFE;</body></message>",
            b"<message><body>&#65535;</body></message>",
            b"<message><body>&#xD800;</body></message>",
            b"<message><body>a\x01b</body></message>",
            b"<message><body>\x00</body></message>",
            b"<message><body>a\xEF\xBF\xBEb</body></message>",
            b"<message><body>\xEF\xBF\xBF</body></message>",
            b"<message><![CDATA[\x1B]]></message>",
            b"<message id='&#1;'/>",
            b"<message id='&#0;'/>",
            b"<message id='&#xFFFF;'/>",
            b"<message id='a\x08'/>",
            b"<message xmlns:p='urn:&#2;'/>",
        ];
        for input in inputs {
            let doc = [HEADER.as_bytes(), input].concat();
            let c = refused(&doc);
            assert_eq!(c, StreamCondition::NotWellFormed, "{}", doc.escape_ascii());
        }
        let header = HEADER.replace("to='localhost'", "to='local\u{1}host'");
        assert_eq!(refused(header.as_bytes()), StreamCondition::NotWellFormed);
    }

    #[test]
    fn refuses_invalid_names() {
        let inputs = [
            "<message><x\"y\"/></message>",
            "<message><a<b/></message>",
            "<message a<b='1'/>",
            "<message a\"b\"='1'/>",
            "<message 'a'='1'/>",
            "<message a='1' =''/>",
            "<1a/>",
            "<-a/>",
            "<a:b:c xmlns:a='urn:a'/>",
            "<message><a/ ></message>",
            "<\u{B7}a/>",
            "<message x:='1'/>",
        ];
        for input in inputs {
            assert_eq!(
                refused(format!("{HEADER}{input}").as_bytes()),
                StreamCondition::NotWellFormed,
                "{input}"
            );
        }
    }

    #[test]
    fn refuses_undeclared_and_reserved_prefixes() {
        let prefix = [
            "<message foo:bar='1'/>",
            "<message><foo:body/></message>",
            "<message xmlns:p='urn:p'/><message p:a='1'/>",
            "<message><x xmlns:p='urn:p'/><y p:a='1'/></message>",
            "<xml:message/>",
            "<xmlns:message/>",
        ];
        for input in prefix {
            let doc = format!("{HEADER}{input}");
            assert_eq!(
                refused(doc.as_bytes()),
                StreamCondition::BadNamespacePrefix,
                "{input}"
            );
        }
        let malformed = [
            "<message xmlns:p=''/>",
            "<message xmlns='http://www.w3.org/XML/1998/namespace'/>",
            "<message xmlns:xml='urn:x'/>",
            "<message xmlns:xmlns='urn:x'/>",
            "<message xmlns:p='http://www.w3.org/2000/xmlns/'/>",
            "<message xmlns:p='urn:u' xmlns:q='urn:u' p:a='1' q:a='2'/>",
        ];
        for input in malformed {
            let doc = format!("{HEADER}{input}");
            assert_eq!(
                refused(doc.as_bytes()),
                StreamCondition::NotWellFormed,
                "{input}"
            );
        }
        let header = HEADER.replace("version=", "p:version=");
        assert_eq!(
            refused(header.as_bytes()),
            StreamCondition::BadNamespacePrefix
        );
    }

    #[test]
    fn prefixes_declared_on_the_header_go_out_with_the_stanza() {
        let header = HEADER.replace("version=", "xmlns:h='urn:h' version=");
        let doc = format!(
            "{header}<message h:a='1'><x h:b='2'/></message><iq xmlns:h='urn:h' h:c='3'/>\
             <presence xml:lang='en' h:a='1' stream:b='2' h:c='3'/>"
        );
        let bytes = doc.as_bytes();
        let events = run(&[bytes]).unwrap();
        let s = stanzas(&events);
        assert_eq!(
            s,
            [
                "<message h:a='1' xmlns:h='urn:h'><x h:b='2'/></message>",
                "<iq xmlns:h='urn:h' h:c='3'/>",
                "<presence xml:lang='en' h:a='1' stream:b='2' h:c='3' xmlns:h='urn:h' \
                 xmlns:stream='http://etherx.jabber.org/streams'/>",
            ]
        );
        for xml in &s {
            assert!(parse_one(xml).is_some(), "{xml}");
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(&singles).unwrap(), events);
    }

    /// Feeds `junk` one byte at a time after `prefix` and expects not-well-formed by its last byte.
    #[track_caller]
    fn refused_at_once(prefix: &[u8], junk: &[u8]) {
        assert!(!junk.contains(&b'>'), "the point is that no '>' arrives");
        let mut r = StreamReader::new(Limits::default());
        let mut out = Vec::new();
        r.feed(prefix, &mut out).unwrap();
        let result = junk.chunks(1).try_for_each(|b| r.feed(b, &mut out));
        assert_eq!(
            result.unwrap_err().condition,
            StreamCondition::NotWellFormed,
            "{}",
            junk.escape_ascii()
        );
        let mut r = StreamReader::new(Limits::default());
        r.feed(prefix, &mut out).unwrap();
        assert!(r.feed(junk, &mut out).is_err());
    }

    #[test]
    fn junk_is_refused_before_any_gt() {
        // The start of a TLS 1.2/1.3 ClientHello record, as clients trying direct TLS send it.
        let client_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x9a\x51";
        let http = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let starts: &[&[u8]] = &[
            client_hello,
            http,
            b"  hello",
            b"<<",
            b"< stream",
            b"<1",
            b"\x00",
        ];
        for junk in starts {
            refused_at_once(b"", junk);
        }
        let open = format!("{HEADER}<message/>");
        for junk in [&b"hello"[..], b"\n\t<<", b"<\x80", b"\xEF\xBB\xBF<a/"] {
            refused_at_once(open.as_bytes(), junk);
        }
    }

    #[test]
    fn byte_order_mark_and_declaration_may_start_a_stream() {
        let plain = format!("{HEADER}<a/>");
        let want = run(&[plain.as_bytes()]).unwrap();
        let with_bom = format!("\u{FEFF}{plain}");
        let bytes = with_bom.as_bytes();
        for i in 0..bytes.len() {
            assert_eq!(
                run(&[&bytes[..i], &bytes[i..]]).unwrap(),
                want,
                "split at {i}"
            );
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(&singles).unwrap(), want);
        let header = HEADER.trim_start_matches("<?xml version='1.0'?>");
        let bare = format!("\n{header}<a/>");
        assert_eq!(run(&[bare.as_bytes()]).unwrap(), want);
    }

    /// Found by the `xml_reader` fuzz target: a byte order mark was skipped in every piece
    /// that started with one, so two of them, or one after whitespace, were refused when they
    /// arrived together and accepted when cut apart.
    #[test]
    fn only_the_first_bytes_may_be_a_byte_order_mark() {
        let input = b"\xEF\xBB\xBF\xEF\xBB\xBF<?sion='1.0'?hxml:lx";
        assert!(run(&[input]).is_err());
        assert!(run(&[&input[..2], &input[2..4], &input[4..]]).is_err());
        let input = b"\n\xEF\xBB";
        assert!(run(&[input]).is_err());
        assert!(run(&[&input[..2], &input[2..]]).is_err());
        let plain = format!("{HEADER}<a/>");
        for junk in [&b"\xEF\xBB\xBF\xEF\xBB\xBF"[..], b" \xEF\xBB\xBF"] {
            let bytes = [junk, plain.as_bytes()].concat();
            for i in 0..=junk.len() {
                assert!(run(&[&bytes[..i], &bytes[i..]]).is_err(), "split at {i}");
            }
        }
    }

    /// Found by the `xml_reader` fuzz target: quick-xml drops a U+FEFF at the start of its
    /// input without counting it, so text that began with one right where a piece began lost
    /// it, and the stream then read three bytes of markup again as text.
    #[test]
    fn text_starting_with_u_feff_at_a_cut() {
        let stanza = "<message><body>\u{FEFF}b</body><x>\u{FEFF}</x></message><presence/>";
        let input = format!("{HEADER}{stanza}");
        let want = run(&[input.as_bytes()]).unwrap();
        assert_eq!(
            stanzas(&want),
            [
                "<message><body>\u{FEFF}b</body><x>\u{FEFF}</x></message>",
                "<presence/>"
            ]
        );
        let bytes = input.as_bytes();
        for i in 0..bytes.len() {
            assert_eq!(
                run(&[&bytes[..i], &bytes[i..]]).unwrap(),
                want,
                "split at {i}"
            );
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(&singles).unwrap(), want);
    }

    /// Found by the `xml_reader` fuzz target: an empty CDATA section became an empty text
    /// node, written out as `<x></x>`, which reads back as `<x/>`.
    #[test]
    fn empty_cdata_adds_no_text() {
        let input = format!("{HEADER}<message><x><![CDATA[]]></x><y><![CDATA[]]>a</y></message>");
        let got = run(&[input.as_bytes()]).unwrap();
        assert_eq!(stanzas(&got), ["<message><x/><y>a</y></message>"]);
    }

    /// Found by the `xml_reader` fuzz target: a byte order mark right after a stream that
    /// closed itself was an error when it came in the same piece and skipped when it began
    /// the next one.
    #[test]
    fn a_byte_order_mark_after_a_closed_stream_is_refused_at_any_cut() {
        let input = b"<stream s='urn:x'/>\xEF\xBB\xBF<a/>";
        assert!(run(&[input]).is_err());
        for i in 0..=input.len() {
            assert!(run(&[&input[..i], &input[i..]]).is_err(), "split at {i}");
        }
    }
}
