//! The test harness: one real `hearth` process per test, and a blocking XMPP client for it.
//!
//! `TestServer` writes a config with port 0 and a data dir into a temporary directory, spawns the
//! binary and waits for its two `listening` lines. `Client` speaks RFC 6120 over a std
//! `TcpStream` and rustls, trusting exactly the certificate the server generated. Every read has
//! a deadline (5 s unless told otherwise), so a silent server fails a test instead of hanging it:
//! there are no sleeps here except the polling inside `TestServer::stop`'s deadline loop.
//!
//! Stanzas come back as [`Element`]s (a small tree with resolved namespaces) and are checked
//! against XML patterns, see [`Element::matches`]. Left out on purpose: anything asynchronous,
//! stream management, and compression.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use quick_xml::NsReader;
use quick_xml::events::{BytesStart, Event as XmlEvent};
use quick_xml::name::ResolveResult;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::fmt;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Namespaces the tests use, one per line.
pub mod ns {
    pub const CLIENT: &str = "jabber:client";
    pub const STREAM: &str = "http://etherx.jabber.org/streams";
    pub const STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
    pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
    pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
    pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
    pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
    pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
    pub const ROSTER: &str = "jabber:iq:roster";
    pub const ROSTER_VER: &str = "urn:xmpp:features:rosterver";
    pub const PRE_APPROVAL: &str = "urn:xmpp:features:pre-approval";
    pub const PING: &str = "urn:xmpp:ping";
    pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
    pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
    pub const VERSION: &str = "jabber:iq:version";
    pub const TIME: &str = "urn:xmpp:time";
    pub const OFFLINE: &str = "msgoffline";
    pub const DELAY: &str = "urn:xmpp:delay";
}

/// The domain every test server serves.
pub const DOMAIN: &str = "localhost";
/// The password `add_users` gives every account.
pub const PASSWORD: &str = "correct horse";
/// How long any single read waits unless a test says otherwise.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server has to print its `listening` lines, and to exit after SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// A pattern attribute or text with this value matches any value.
pub const ANY: &str = "{any}";
/// A pattern attribute with this value matches only when the attribute is absent.
pub const NONE: &str = "{none}";

// ---------------------------------------------------------------------------------------------
// Elements and patterns

/// A parsed XML element: local name, resolved namespace, attributes by qualified name (namespace
/// declarations left out), child elements, and the concatenated text directly inside it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub ns: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.is(name, ns))
    }

    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    /// The child `name` in namespace `ns`; panics with the element if there is none.
    #[track_caller]
    pub fn get(&self, name: &str, ns: &str) -> &Element {
        self.child(name, ns)
            .unwrap_or_else(|| panic!("no <{name} xmlns='{ns}'/> in {self}"))
    }

    /// True when `self` satisfies `pattern`: same name and namespace; every pattern attribute
    /// present with an equal value (`{any}`: any value, `{none}`: must be absent); every pattern
    /// child matched by some child of `self`; and, when the pattern has text, equal trimmed text
    /// (`{any}`: any non-empty text).
    pub fn matches(&self, pattern: &Element) -> bool {
        let attrs_ok = pattern
            .attrs
            .iter()
            .all(|(k, want)| match (self.attr(k), want.as_str()) {
                (None, NONE) => true,
                (Some(_), NONE) | (None, _) => false,
                (Some(_), ANY) => true,
                (Some(got), want) => got == want,
            });
        let text = pattern.text.trim();
        let text_ok = text.is_empty()
            || (text == ANY && !self.text.trim().is_empty())
            || self.text.trim() == text;
        self.is(&pattern.name, &pattern.ns)
            && attrs_ok
            && text_ok
            && pattern
                .children
                .iter()
                .all(|p| self.children.iter().any(|c| c.matches(p)))
    }

    /// The element as a WebSocket message: with its namespace declared.
    pub fn framed(&self) -> String {
        struct Top<'a>(&'a Element);
        impl fmt::Display for Top<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.write(f, "")
            }
        }
        Top(self).to_string()
    }

    fn write(&self, f: &mut fmt::Formatter<'_>, parent_ns: &str) -> fmt::Result {
        write!(f, "<{}", self.name)?;
        if self.ns != parent_ns {
            write!(f, " xmlns='{}'", escape(&self.ns))?;
        }
        for (k, v) in &self.attrs {
            write!(f, " {k}='{}'", escape(v))?;
        }
        if self.children.is_empty() && self.text.is_empty() {
            return write!(f, "/>");
        }
        write!(f, ">{}", escape(&self.text))?;
        for c in &self.children {
            c.write(f, &self.ns)?;
        }
        write!(f, "</{}>", self.name)
    }
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, ns::CLIENT)
    }
}

/// Escapes text for an XML attribute value or character data.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// The opening tag clients use for every stream, with the namespaces a pattern is read in.
const STREAM_OPEN: &str =
    "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'";

/// The XML declaration and stream header a client opens each stream with.
pub fn stream_header() -> String {
    stream_header_to(DOMAIN)
}

/// The same for a server of another domain.
pub fn stream_header_to(domain: &str) -> String {
    format!("<?xml version='1.0'?>{STREAM_OPEN} to='{domain}' version='1.0' xml:lang='en'>")
}

/// Parses a pattern (or any stanza text) in the namespace context of a client stream, so
/// unprefixed elements are `jabber:client` and `stream:` is bound.
#[track_caller]
pub fn pattern(xml: &str) -> Element {
    parse_in(&format!("{STREAM_OPEN}>"), xml).unwrap_or_else(|e| panic!("bad pattern {xml:?}: {e}"))
}

/// Panics with both sides printed unless `got` matches the pattern `want`.
#[track_caller]
pub fn assert_matches(got: &Element, want: &str) {
    assert!(
        got.matches(&pattern(want)),
        "stanza does not match\n  want: {want}\n   got: {got}"
    );
}

/// A pattern for a stanza error reply: `kind` (iq, message, presence) with the given id, error
/// type and RFC 6120 §8.3.3 condition.
pub fn stanza_error(kind: &str, id: &str, error_type: &str, condition: &str) -> String {
    format!(
        "<{kind} type='error' id='{id}'><error type='{error_type}'>\
         <{condition} xmlns='{}'/></error></{kind}>",
        ns::STANZAS
    )
}

/// Parses `item` (one element) as a child of the stream opened by `header` (an opening tag).
fn parse_in(header: &str, item: &str) -> Result<Element, String> {
    let qname = tag_name(header.as_bytes());
    let mut root = parse_document(&format!("{header}{item}</{qname}>"))?;
    match root.children.len() {
        1 => Ok(root.children.remove(0)),
        n => Err(format!("expected one element, found {n}")),
    }
}

/// Parses one XML document into its root element, with namespaces resolved.
fn parse_document(text: &str) -> Result<Element, String> {
    let mut reader = NsReader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    loop {
        let (resolved, event) = reader.read_resolved_event().map_err(|e| e.to_string())?;
        let ns = match resolved {
            ResolveResult::Bound(n) => n.0.to_owned(),
            _ => String::new(),
        };
        let done = match event {
            XmlEvent::Start(s) => {
                stack.push(element(&s, ns)?);
                None
            }
            XmlEvent::Empty(s) => close(&mut stack, element(&s, ns)?),
            XmlEvent::End(_) => {
                let el = stack.pop().ok_or("unbalanced end tag")?;
                close(&mut stack, el)
            }
            XmlEvent::Text(t) => push_text(&mut stack, &t.xml10_content()),
            XmlEvent::CData(c) => push_text(&mut stack, &c.xml10_content()),
            XmlEvent::GeneralRef(r) => {
                let ch = match (r.resolve_char_ref(), &*r) {
                    (Ok(Some(c)), _) => c,
                    (_, "amp") => '&',
                    (_, "lt") => '<',
                    (_, "gt") => '>',
                    (_, "apos") => '\'',
                    (_, "quot") => '"',
                    (_, other) => return Err(format!("unknown entity &{other};")),
                };
                push_text(&mut stack, ch.encode_utf8(&mut [0; 4]))
            }
            XmlEvent::Eof => return Err("the document ended inside an element".into()),
            XmlEvent::Decl(_) | XmlEvent::PI(_) | XmlEvent::Comment(_) | XmlEvent::DocType(_) => {
                None
            }
        };
        if let Some(root) = done {
            return Ok(root);
        }
    }
}

fn element(start: &BytesStart<'_>, ns: String) -> Result<Element, String> {
    let mut el = Element {
        name: start.local_name().into_inner().to_owned(),
        ns,
        ..Element::default()
    };
    for attr in start.attributes() {
        let attr = attr.map_err(|e| e.to_string())?;
        let key = attr.key.0;
        if key == "xmlns" || key.starts_with("xmlns:") {
            continue;
        }
        let value = attr
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| e.to_string())?;
        el.attrs.push((key.to_owned(), value.into_owned()));
    }
    Ok(el)
}

/// Attaches a finished element to its parent; returns it when it is the root.
fn close(stack: &mut [Element], el: Element) -> Option<Element> {
    match stack.last_mut() {
        Some(parent) => {
            parent.children.push(el);
            None
        }
        None => Some(el),
    }
}

fn push_text(stack: &mut [Element], text: &str) -> Option<Element> {
    if let Some(el) = stack.last_mut() {
        el.text.push_str(text);
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Framing: cutting the byte stream into header, stanzas and close, before parsing

#[derive(Debug)]
enum Frame {
    Header(String),
    Stanza(String),
    Close,
}

/// The qualified name of the tag starting at `tag[0] == b'<'` (after `</` for an end tag).
fn tag_name(tag: &[u8]) -> String {
    let start = if tag.get(1) == Some(&b'/') { 2 } else { 1 };
    let end = tag[start..]
        .iter()
        .position(|b| b.is_ascii_whitespace() || *b == b'>' || *b == b'/')
        .map_or(tag.len(), |p| p + start);
    lossy(&tag[start..end])
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The length of the tag at `rest[0] == b'<'`, up to and including its `>` (quotes respected).
fn tag_len(rest: &[u8]) -> Option<usize> {
    let mut quote = None;
    for (i, &b) in rest.iter().enumerate().skip(1) {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), _) if q == b => quote = None,
            (None, b'>') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// Markup skipped wherever it appears: (opening, closing).
const SKIPPED: [(&str, &str); 4] = [
    ("<?", "?>"),
    ("<!--", "-->"),
    ("<![CDATA[", "]]>"),
    ("<!", ">"),
];

/// Finds the first complete item in `buf`; returns it with the number of bytes it used.
fn scan(buf: &[u8]) -> Option<(Frame, usize)> {
    let mut depth = 0usize;
    let mut start = 0;
    let mut i = 0;
    while i < buf.len() {
        if buf[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &buf[i..];
        if let Some((_, end)) = SKIPPED.iter().find(|(o, _)| rest.starts_with(o.as_bytes())) {
            i += find(rest, end.as_bytes())? + end.len();
            continue;
        }
        let end = i + tag_len(rest)?;
        let name = tag_name(rest);
        let is_end = rest[1] == b'/';
        let is_empty = buf[end - 2] == b'/';
        if depth == 0 {
            start = i;
            if is_end {
                return Some((Frame::Close, end));
            }
            if !is_empty && (name == "stream" || name.ends_with(":stream")) {
                return Some((Frame::Header(lossy(&buf[start..end])), end));
            }
        }
        match (is_end, is_empty) {
            (true, _) => depth -= 1,
            (false, false) => depth += 1,
            (false, true) => {}
        }
        if depth == 0 {
            return Some((Frame::Stanza(lossy(&buf[start..end])), end));
        }
        i = end;
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The server process

pub struct TestServer {
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
    /// The umask the server and the CLI run with; the test process's own when `None`.
    umask: Option<libc::mode_t>,
    /// Everything the server wrote to stdout and stderr, for failure messages.
    log: Arc<Mutex<String>>,
    pub c2s: SocketAddr,
    pub c2s_tls: SocketAddr,
    /// The server-to-server listener, when federation listens.
    pub s2s: Option<SocketAddr>,
    /// The domain it serves.
    pub domain: String,
    /// The HTTPS listener (uploads, WebSocket, host-meta), unless the config turns it off.
    pub https: Option<SocketAddr>,
    expect_https: bool,
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::start_with("")
    }

    /// Starts a server whose config has `extra` (whole TOML sections) appended.
    pub fn start_with(extra: &str) -> TestServer {
        TestServer::start_with_umask(extra, None)
    }

    /// Starts a server, and later runs its CLI, with the umask `umask` in effect.
    pub fn start_with_umask(extra: &str, umask: Option<libc::mode_t>) -> TestServer {
        TestServer::start_as(DOMAIN, extra, umask)
    }

    /// Starts a server for `domain`, with `extra` appended to its config.
    pub fn start_domain(domain: &str, extra: &str) -> TestServer {
        TestServer::start_as(domain, extra, None)
    }

    fn start_as(domain: &str, extra: &str, umask: Option<libc::mode_t>) -> TestServer {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let config = dir.path().join("hearth.toml");
        let data_dir = dir.path().join("data");
        // The web endpoint listens on loopback too, in the test's own [modules.http] if any.
        const HTTP: &str = "[modules.http]\n";
        let listen = format!("{HTTP}listen = [\"127.0.0.1:0\"]\n");
        let extra = match extra.contains(HTTP) {
            true => extra.replacen(HTTP, &listen, 1),
            false => format!("{extra}\n{listen}"),
        };
        let expect_https = !extra.contains(&format!("{listen}enabled = false"));
        let text = format!(
            "[server]\ndomain = \"{domain}\"\ndata_dir = {:?}\nlog_level = \"debug\"\n\n\
             [listen]\nc2s = [\"127.0.0.1:0\"]\nc2s_tls = [\"127.0.0.1:0\"]\n\n{extra}\n",
            data_dir.to_str().expect("a UTF-8 temporary path")
        );
        std::fs::write(&config, text).expect("write the config");
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut server = TestServer {
            dir,
            config,
            child: None,
            umask,
            log: Arc::default(),
            c2s: unbound,
            c2s_tls: unbound,
            s2s: None,
            domain: domain.to_owned(),
            https: None,
            expect_https,
        };
        server.spawn();
        server
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn cert_path(&self) -> PathBuf {
        self.data_dir().join("cert.pem")
    }

    /// What the server printed so far (stdout and stderr, interleaved by line).
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// `hearth --config FILE`, with the umask if one was asked for.
    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth"));
        cmd.arg("--config").arg(&self.config);
        if let Some(mask) = self.umask {
            use std::os::unix::process::CommandExt;
            // SAFETY: umask is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(mask);
                    Ok(())
                });
            }
        }
        cmd
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hearth");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        drain_lines(stdout, self.log.clone(), Some(tx));
        drain_lines(stderr, self.log.clone(), None);
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut c2s, mut c2s_tls, mut https) = (None, None, None);
        // A server that talks to other servers listens for them too (all tests that give it a
        // [federation] section have it listen).
        let federates =
            std::fs::read_to_string(&self.config).is_ok_and(|c| c.contains("[federation]"));
        loop {
            if let (Some(plain), Some(tls)) = (c2s, c2s_tls)
                && (!federates || self.s2s.is_some())
                && (https.is_some() || !self.expect_https)
            {
                (self.c2s, self.c2s_tls, self.https) = (plain, tls, https);
                return;
            }
            let line = match rx.recv_timeout(remaining(deadline)) {
                Ok(line) => line,
                Err(e) => self.fail(&format!("no `listening` lines from hearth ({e})")),
            };
            let mut words = line.split_whitespace().skip(1);
            let (Some(kind), Some(addr)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(addr) = addr.parse::<SocketAddr>() else {
                self.fail(&format!("unreadable listening line {line:?}"))
            };
            match kind {
                "c2s" => c2s = Some(addr),
                "c2s_tls" => c2s_tls = Some(addr),
                "s2s" => self.s2s = Some(addr),
                // A server that only takes direct TLS from others has that listener alone.
                "s2s_tls" if self.s2s.is_none() => self.s2s = Some(addr),
                "https" => https = Some(addr),
                _ => {}
            }
        }
    }

    /// Kills the server and panics with `why` and the server's output.
    fn fail(&mut self, why: &str) -> ! {
        self.kill();
        panic!("{why}\n--- hearth output ---\n{}", self.log());
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Replaces the generated certificate with a new self-signed one for the domain, sends
    /// SIGHUP, and waits until the server says it reloaded it.
    pub fn rotate_certificate(&self) {
        let ck = rcgen::generate_simple_self_signed(vec![DOMAIN.to_owned()])
            .expect("make a certificate");
        std::fs::write(
            self.data_dir().join("key.pem"),
            ck.signing_key.serialize_pem(),
        )
        .expect("write the key");
        std::fs::write(self.cert_path(), ck.cert.pem()).expect("write the certificate");
        let pid = self.child.as_ref().expect("the server runs").id();
        let before = self.log().matches("reloaded the TLS certificate").count();
        signal(pid, libc::SIGHUP);
        let deadline = Instant::now() + TIMEOUT;
        while self.log().matches("reloaded the TLS certificate").count() == before {
            assert!(Instant::now() < deadline, "no reload within 5 s of SIGHUP");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL: the server gets no chance to flush or say goodbye (a crash, a power cut).
    pub fn kill_hard(&mut self) {
        self.kill();
    }

    /// Sends SIGTERM and waits (with a deadline) for the process to exit.
    pub fn stop(&mut self) -> ExitStatus {
        let Some(child) = self.child.as_mut() else {
            panic!("stop: the server is not running");
        };
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let status = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = status {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                self.fail("hearth did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the server (SIGTERM) if it runs, then starts it again on the same data dir.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let status = self.stop();
            assert!(status.success(), "hearth exited with {status} on SIGTERM");
        }
        self.spawn();
    }

    /// Replaces `from` with `to` in the config file, for the next start.
    #[track_caller]
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).expect("read the config");
        assert!(text.contains(from), "no {from:?} in the config:\n{text}");
        std::fs::write(&self.config, text.replacen(from, to, 1)).expect("write the config");
    }

    /// Runs `hearth --config FILE args...` with `stdin` as its input; panics after a deadline.
    pub fn cli(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hearth for the CLI");
        // The CLI may exit before reading its input; a broken pipe is its answer, not ours.
        let _ = child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(stdin.as_bytes());
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait_with_output()));
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(output) => output.expect("wait for the CLI"),
            Err(_) => {
                signal(pid, libc::SIGKILL);
                panic!("`hearth {}` did not finish within 10 s", args.join(" "));
            }
        }
    }

    /// Runs `user CMD JID --password-stdin` and asserts that it succeeded.
    #[track_caller]
    pub fn user_cmd(&self, cmd: &str, jid: &str, password: &str) {
        let out = self.cli(
            &["user", cmd, jid, "--password-stdin"],
            &format!("{password}\n"),
        );
        assert!(
            out.status.success(),
            "`hearth user {cmd} {jid}` failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[track_caller]
    pub fn add_user(&self, jid: &str, password: &str) {
        self.user_cmd("add", jid, password);
    }

    /// Adds `NAME@localhost` with the shared test password for each name.
    #[track_caller]
    pub fn add_users(&self, users: &[&str]) {
        for u in users {
            self.add_user(&format!("{u}@{}", self.domain), PASSWORD);
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(200)..];
            eprintln!(
                "--- hearth output (last 200 lines) ---\n{}",
                tail.join("\n")
            );
        }
    }
}

/// Sends `sig` to a child process we spawned and have not reaped.
fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own unreaped child.
    unsafe { libc::kill(pid, sig) };
}

/// Copies lines from a child's pipe into `log`, and `listening` lines to `tx`.
fn drain_lines(
    pipe: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
    tx: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut log) = log.lock() {
                log.push_str(&line);
                log.push('\n');
            }
            if let Some(tx) = tx.as_ref().filter(|_| line.starts_with("listening ")) {
                let _ = tx.send(line);
            }
        }
    });
}

/// The WebSocket opening handshake over `tls`, offering `protocol`; panics if it fails.
pub fn websocket_handshake(
    tls: TlsStream,
    protocol: &str,
) -> (
    tungstenite::WebSocket<TlsStream>,
    tungstenite::handshake::client::Response,
) {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("wss://{DOMAIN}/xmpp-websocket")
        .into_client_request()
        .expect("a WebSocket request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        protocol.parse().expect("a header value"),
    );
    tungstenite::client::client(req, tls)
        .unwrap_or_else(|e| panic!("WebSocket handshake with hearth: {e}"))
}

/// A TLS client configuration trusting exactly the server's certificate, with `alpn`.
pub fn tls_client(server: &TestServer, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let config = Client::tls_config(&server.cert_path(), false);
    let mut config = (*config).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr` (the HTTPS listener, say), handshake done.
pub fn tls_connect(server: &TestServer, addr: SocketAddr, alpn: &[&[u8]]) -> TlsStream {
    let tcp = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect to hearth");
    tcp.set_read_timeout(Some(TIMEOUT))
        .expect("set a read timeout");
    tcp.set_write_timeout(Some(TIMEOUT))
        .expect("set a write timeout");
    let name = ServerName::try_from(DOMAIN).expect("a valid server name");
    let conn = ClientConnection::new(tls_client(server, alpn), name).expect("start TLS");
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .unwrap_or_else(|e| panic!("TLS handshake with hearth: {e}"));
    }
    tls
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

// ---------------------------------------------------------------------------------------------
// SCRAM (RFC 5802) arithmetic

#[derive(Clone, Copy, Debug)]
pub enum Hash {
    Sha1,
    Sha256,
}

/// What a SCRAM client sends last, and what it expects the server to prove.
pub struct ScramFinal {
    pub message: String,
    /// The base64 `v=` of the server-final-message.
    pub server_signature: String,
}

impl Hash {
    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        use hmac::{Hmac, Mac};
        // HMAC takes keys of any length, so new_from_slice cannot fail.
        match self {
            Hash::Sha1 => Hmac::<sha1::Sha1>::new_from_slice(key)
                .expect("any key length")
                .chain_update(data)
                .finalize()
                .into_bytes()
                .to_vec(),
            Hash::Sha256 => Hmac::<sha2::Sha256>::new_from_slice(key)
                .expect("any key length")
                .chain_update(data)
                .finalize()
                .into_bytes()
                .to_vec(),
        }
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            Hash::Sha1 => sha1::Sha1::digest(data).to_vec(),
            Hash::Sha256 => sha2::Sha256::digest(data).to_vec(),
        }
    }

    /// The client-final-message of SCRAM (RFC 5802 §3) for `server_first`, with `cbind` the
    /// channel binding input (the GS2 header, and for -PLUS the binding data), and the server
    /// signature the server's final message must carry.
    pub fn scram_final(
        self,
        password: &str,
        first_bare: &str,
        server_first: &str,
        cbind: &[u8],
    ) -> ScramFinal {
        let r = scram_attr(server_first, 'r');
        let salt = B64
            .decode(scram_attr(server_first, 's'))
            .expect("base64 salt");
        let iterations: u32 = scram_attr(server_first, 'i').parse().expect("numeric i=");
        let without_proof = format!("c={},r={r}", B64.encode(cbind));
        let auth_message = format!("{first_bare},{server_first},{without_proof}");
        let salted = self.salted_password(password, &salt, iterations);
        let client_key = self.hmac(&salted, b"Client Key");
        let signature = self.hmac(&self.digest(&client_key), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = self.hmac(&salted, b"Server Key");
        ScramFinal {
            message: format!("{without_proof},p={}", B64.encode(proof)),
            server_signature: B64.encode(self.hmac(&server_key, auth_message.as_bytes())),
        }
    }

    /// PBKDF2 of the password, computed once per password, salt and count: an account's salt
    /// stays the same, and tests log the same accounts in again and again (in a debug build
    /// this is most of what a login costs the client).
    pub fn salted_password(self, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
        type Key = (bool, String, Vec<u8>, u32);
        static CACHE: std::sync::OnceLock<Mutex<std::collections::HashMap<Key, Vec<u8>>>> =
            std::sync::OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        let key = (
            matches!(self, Hash::Sha1),
            password.to_owned(),
            salt.to_vec(),
            iterations,
        );
        if let Some(v) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return v;
        }
        let v = self.pbkdf2(password, salt, iterations);
        if let Ok(mut c) = cache.lock() {
            c.insert(key, v.clone());
        }
        v
    }

    fn pbkdf2(self, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
        let pw = password.as_bytes();
        match self {
            Hash::Sha1 => {
                pbkdf2::pbkdf2_hmac_array::<sha1::Sha1, 20>(pw, salt, iterations).to_vec()
            }
            Hash::Sha256 => {
                pbkdf2::pbkdf2_hmac_array::<sha2::Sha256, 32>(pw, salt, iterations).to_vec()
            }
        }
    }
}

/// The value of `key=` in a SCRAM message (RFC 5802 §5); panics if it is missing.
#[track_caller]
pub fn scram_attr(msg: &str, key: char) -> &str {
    msg.split(',')
        .find_map(|part| part.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in SCRAM message {msg:?}"))
}

/// The base64 text of a SASL element, decoded as UTF-8.
#[track_caller]
pub fn sasl_text(el: &Element) -> String {
    let bytes = B64
        .decode(el.text.trim())
        .unwrap_or_else(|e| panic!("bad base64 in {el}: {e}"));
    String::from_utf8(bytes).unwrap_or_else(|_| panic!("SASL data in {el} is not UTF-8"))
}

/// The SASL reply `el`: Ok if it is `expected`, Err if it is `<failure/>`; anything else panics.
#[track_caller]
fn sasl_step(el: Element, expected: &str) -> Result<Element, Element> {
    if el.is(expected, ns::SASL) {
        Ok(el)
    } else if el.is("failure", ns::SASL) {
        Err(el)
    } else {
        panic!("expected SASL <{expected}/> or <failure/>, got {el}")
    }
}

// ---------------------------------------------------------------------------------------------
// The client

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

enum Io {
    Tcp(TcpStream),
    Tls(Box<TlsStream>),
    /// RFC 7395: the client reads and writes the stream as if it were a byte stream; `send`
    /// and `fill` translate between that and the framing (see `framed_out`, `framed_in`).
    Ws(Box<tungstenite::WebSocket<TlsStream>>),
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Io::Tcp(s) => s,
            Io::Tls(s) => &s.sock,
            Io::Ws(ws) => &ws.get_ref().sock,
        }
    }

    fn stream(&mut self) -> &mut dyn ReadWrite {
        match self {
            Io::Tcp(s) => s,
            Io::Tls(s) => s.as_mut(),
            Io::Ws(_) => panic!("a WebSocket carries messages, not a byte stream"),
        }
    }
}

pub const FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";

/// What a test sends, as a WebSocket message: a stream header becomes `<open/>`, its end
/// `<close/>`, and a stanza (written in a client stream's namespace context) declares its
/// namespace itself.
fn framed_out(text: &str) -> String {
    let text = text.trim();
    if text.contains("<stream:stream") {
        return format!("<open xmlns='{FRAMING}' to='{DOMAIN}' version='1.0'/>");
    }
    if text == "</stream:stream>" {
        return format!("<close xmlns='{FRAMING}'/>");
    }
    let el = parse_in(&format!("{STREAM_OPEN}>"), text)
        .unwrap_or_else(|e| panic!("cannot frame {text:?} for a WebSocket: {e}"));
    el.framed()
}

/// A WebSocket message from the server, as the bytes of a client stream: `<open/>` becomes a
/// stream header with its attributes, `<close/>` the end of the stream.
fn framed_in(text: &str) -> String {
    let el = parse_document(text).unwrap_or_else(|e| panic!("unparsable message {text:?}: {e}"));
    if el.is("open", FRAMING) {
        assert!(el.children.is_empty(), "<open/> must be empty: {text}");
        let attrs: String = el
            .attrs
            .iter()
            .map(|(k, v)| format!(" {k}='{}'", escape(v)))
            .collect();
        return format!("{STREAM_OPEN}{attrs}>");
    }
    if el.is("close", FRAMING) {
        return "</stream:stream>".into();
    }
    // RFC 7395 §3.3.3: a message is one element that declares its own namespace.
    assert!(
        text.contains("xmlns='") || text.contains("xmlns=\""),
        "a message without its namespace: {text}"
    );
    text.to_owned()
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// What the server sent next.
#[derive(Debug)]
pub enum Event {
    /// A stream header (the `<stream:stream>` element, without children).
    Header(Element),
    Stanza(Element),
    /// `</stream:stream>`.
    Close,
    /// The connection ended (EOF, reset, or TLS closed).
    Eof,
}

pub struct Client {
    io: Io,
    buf: Vec<u8>,
    eof: bool,
    /// The server's current stream header: the namespace context for parsing stanzas.
    header: String,
    /// The latest `<stream:features/>`.
    pub features: Element,
    /// The full JID once bound.
    pub jid: String,
    next_id: u32,
    cert: PathBuf,
    /// The server's domain.
    pub domain: String,
}

impl Client {
    /// A TLS client setup that trusts `server`, with ALPN `xmpp-client`; connections made with
    /// the same one share its TLS session cache, so the later ones resume (RFC 8446 §2.2).
    pub fn tls_config_for(server: &TestServer) -> Arc<ClientConfig> {
        Client::tls_config(&server.cert_path(), true)
    }

    /// Direct TLS with `config`, where `early` (a stream header, and what a client sends
    /// without waiting for the features) travels with the client's last handshake message.
    /// Nothing is read.
    pub fn connect_tls_with(
        server: &TestServer,
        config: Arc<ClientConfig>,
        early: &[u8],
    ) -> Client {
        let mut c = Client::connect_raw(server, server.c2s_tls);
        c.handshake(config, early);
        c
    }

    fn tls_config(cert: &Path, alpn: bool) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(cert)
            .unwrap_or_else(|e| panic!("read the server certificate {}: {e}", cert.display()));
        for c in certs {
            roots
                .add(c.expect("a PEM certificate"))
                .expect("the server certificate is a usable trust anchor");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        if alpn {
            config.alpn_protocols = vec![b"xmpp-client".to_vec()];
        }
        Arc::new(config)
    }

    /// A TCP connection to `addr` and nothing else: no stream header sent yet.
    pub fn connect_raw(server: &TestServer, addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect to hearth");
        Client::over(server, tcp)
    }

    fn over(server: &TestServer, tcp: TcpStream) -> Client {
        tcp.set_write_timeout(Some(TIMEOUT))
            .expect("set a write timeout");
        Client {
            io: Io::Tcp(tcp),
            buf: Vec::new(),
            eof: false,
            header: format!("{STREAM_OPEN}>"),
            features: Element::default(),
            jid: String::new(),
            next_id: 0,
            cert: server.cert_path(),
            domain: server.domain.clone(),
        }
    }

    /// `connect_raw` from the loopback address `source` (any of 127.0.0.0/8 on Linux): a
    /// client at another address, as far as the server can tell.
    fn connect_raw_from(server: &TestServer, addr: SocketAddr, source: IpAddr) -> Client {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("make a socket");
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .unwrap_or_else(|e| panic!("bind to {source}: {e}"));
        socket
            .connect_timeout(&addr.into(), TIMEOUT)
            .expect("connect to hearth");
        Client::over(server, socket.into())
    }

    /// `connect_starttls` from the loopback address `source`.
    pub fn connect_starttls_from(server: &TestServer, source: IpAddr) -> Client {
        let mut c = Client::connect_raw_from(server, server.c2s, source);
        c.open_stream();
        c.starttls();
        c
    }

    /// A plain connection to the STARTTLS port with the stream opened and features read.
    pub fn connect_plain(server: &TestServer) -> Client {
        let mut c = Client::connect_raw(server, server.c2s);
        c.open_stream();
        c
    }

    /// STARTTLS (RFC 6120 §5) done and the new stream opened: `features` lists SASL mechanisms.
    pub fn connect_starttls(server: &TestServer) -> Client {
        let mut c = Client::connect_plain(server);
        c.starttls();
        c
    }

    /// TLS from the first byte (XEP-0368) with ALPN `xmpp-client`, and the stream opened.
    pub fn connect_tls(server: &TestServer) -> Client {
        let mut c = Client::connect_raw(server, server.c2s_tls);
        c.upgrade(true);
        c.open_stream();
        c
    }

    /// Authenticates with SCRAM-SHA-256 over STARTTLS and binds `resource`.
    pub fn login(server: &TestServer, user: &str, password: &str, resource: &str) -> Client {
        let mut c = Client::connect_starttls(server);
        c.auth_scram(user, password, "SCRAM-SHA-256");
        c.bind(Some(resource));
        c
    }

    /// `login` with the shared test password.
    pub fn user(server: &TestServer, user: &str, resource: &str) -> Client {
        Client::login(server, user, PASSWORD, resource)
    }

    /// `user`, then fetches the roster (which makes this resource "interested", RFC 6121
    /// §2.1.6) and sends initial presence, expecting its own presence back.
    pub fn online(server: &TestServer, user: &str, resource: &str) -> Client {
        Client::online_expecting(server, user, resource, &[])
    }

    /// `online`, where `also` (patterns) must arrive with the own presence, in any order: the
    /// contacts' presence, or offline messages.
    pub fn online_expecting(
        server: &TestServer,
        user: &str,
        resource: &str,
        also: &[&str],
    ) -> Client {
        let mut c = Client::user(server, user, resource);
        let roster = c.iq("type='get'", &format!("<query xmlns='{}'/>", ns::ROSTER));
        assert_matches(&roster, "<iq type='result'/>");
        c.send("<presence/>");
        let own = format!("<presence from='{}' type='{NONE}'/>", c.jid);
        let mut wants = vec![own.as_str()];
        wants.extend_from_slice(also);
        c.expect_unordered(&wants);
        c
    }

    /// The bare JID (`user@localhost`) of the bound full JID.
    pub fn bare(&self) -> &str {
        self.jid.split('/').next().unwrap_or_default()
    }

    pub fn tls(&self) -> &ClientConnection {
        match &self.io {
            Io::Tls(s) => &s.conn,
            Io::Ws(ws) => &ws.get_ref().conn,
            Io::Tcp(_) => panic!("the connection is not TLS"),
        }
    }

    /// Wraps the TCP connection in TLS and completes the handshake.
    fn upgrade(&mut self, alpn: bool) {
        self.upgrade_with(alpn, b"");
    }

    /// TLS, with `early` queued before the handshake ends: rustls then sends it in the same
    /// flight as its Finished message, so the server reads both at once.
    fn upgrade_with(&mut self, alpn: bool, early: &[u8]) {
        self.handshake(Client::tls_config(&self.cert, alpn), early);
    }

    fn handshake(&mut self, config: Arc<ClientConfig>, early: &[u8]) {
        let tcp = self.io.tcp().try_clone().expect("clone the TCP socket");
        tcp.set_read_timeout(Some(TIMEOUT))
            .expect("set a read timeout");
        let name = ServerName::try_from(self.domain.clone()).expect("a valid server name");
        let conn = ClientConnection::new(config, name).expect("start TLS");
        let mut tls = StreamOwned::new(conn, tcp);
        if !early.is_empty() {
            tls.conn
                .writer()
                .write_all(early)
                .expect("queue bytes for after the handshake");
        }
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .unwrap_or_else(|e| panic!("TLS handshake with hearth: {e}"));
        }
        self.io = Io::Tls(Box::new(tls));
        self.buf.clear();
    }

    /// A WebSocket (RFC 7395) to the HTTPS listener's `/xmpp-websocket`, with the stream
    /// opened: `features` lists SASL mechanisms.
    pub fn connect_websocket(server: &TestServer) -> Client {
        let mut c = Client::websocket_raw(server);
        c.open_stream();
        c
    }

    /// A WebSocket with the `xmpp` subprotocol and nothing sent on it yet.
    pub fn websocket_raw(server: &TestServer) -> Client {
        let addr = server.https.expect("the HTTPS listener runs");
        let mut c = Client::connect_raw(server, addr);
        c.upgrade(false);
        let placeholder = Io::Tcp(c.io.tcp().try_clone().expect("clone the TCP socket"));
        let Io::Tls(tls) = std::mem::replace(&mut c.io, placeholder) else {
            unreachable!("upgrade makes a TLS connection")
        };
        let (ws, response) = websocket_handshake(*tls, "xmpp");
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.as_bytes()),
            Some(&b"xmpp"[..]),
            "{response:?}"
        );
        c.io = Io::Ws(Box::new(ws));
        c
    }

    /// `connect_websocket`, SCRAM-SHA-256 and `resource` bound.
    pub fn websocket_user(server: &TestServer, user: &str, resource: &str) -> Client {
        let mut c = Client::connect_websocket(server);
        c.auth_scram(user, PASSWORD, "SCRAM-SHA-256");
        c.bind(Some(resource));
        c
    }

    /// Direct TLS where the stream header travels with the client's last handshake message.
    pub fn connect_tls_pipelined(server: &TestServer) -> Client {
        let mut c = Client::connect_raw(server, server.c2s_tls);
        c.upgrade_with(true, stream_header_to(&server.domain).as_bytes());
        c.read_stream_open();
        c
    }

    /// Sends a stream header, then reads the server's header and features.
    pub fn open_stream(&mut self) {
        self.send(&stream_header_to(&self.domain.clone()));
        self.read_stream_open();
    }

    pub fn read_stream_open(&mut self) {
        match self.next_event() {
            Event::Header(h) => {
                assert!(h.is("stream", ns::STREAM), "bad stream header {h}");
                assert_eq!(
                    h.attr("from"),
                    Some(self.domain.as_str()),
                    "stream header: {h}"
                );
                assert_eq!(h.attr("version"), Some("1.0"), "stream header: {h}");
                assert!(
                    h.attr("id").is_some_and(|id| !id.is_empty()),
                    "no stream id: {h}"
                );
            }
            other => panic!("expected a stream header, got {other:?}"),
        }
        let features = self.recv();
        assert!(
            features.is("features", ns::STREAM),
            "expected stream features, got {features}"
        );
        self.features = features;
    }

    /// STARTTLS on an opened plain stream, then a new stream over TLS.
    pub fn starttls(&mut self) {
        self.send(&format!("<starttls xmlns='{}'/>", ns::TLS));
        self.expect(&format!("<proceed xmlns='{}'/>", ns::TLS));
        self.resume_tls();
    }

    /// After `<proceed/>`: the TLS handshake and a new stream.
    pub fn resume_tls(&mut self) {
        assert!(self.buf.is_empty(), "data after <proceed/> in the clear");
        self.upgrade(false);
        self.open_stream();
    }

    /// The mechanism names in the current features.
    pub fn mechanisms(&self) -> Vec<String> {
        self.features
            .child("mechanisms", ns::SASL)
            .map(|m| {
                m.children
                    .iter()
                    .map(|c| c.text.trim().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sends a SASL element with base64 `payload` and returns the reply.
    fn sasl(&mut self, element: &str, attrs: &str, payload: &str) -> Element {
        let data = B64.encode(payload);
        self.send(&format!(
            "<{element} xmlns='{}'{attrs}>{data}</{element}>",
            ns::SASL
        ));
        self.recv()
    }

    /// SCRAM (RFC 5802, RFC 7677) with `mechanism` one of SCRAM-SHA-1, SCRAM-SHA-256 or their
    /// -PLUS forms (tls-exporter, RFC 9266). Returns the `<failure/>` on failure; on success
    /// checks the server's signature and restarts the stream.
    pub fn try_auth_scram(
        &mut self,
        user: &str,
        password: &str,
        mechanism: &str,
    ) -> Result<(), Element> {
        self.try_auth_scram_bound(user, password, mechanism, "tls-exporter")
    }

    /// The same, a -PLUS mechanism binding to `binding`: `tls-exporter` (RFC 9266) or
    /// `tls-server-end-point` (RFC 5929: the SHA-256 of the server's certificate, which the
    /// test servers sign with ECDSA and SHA-256).
    pub fn try_auth_scram_bound(
        &mut self,
        user: &str,
        password: &str,
        mechanism: &str,
        binding: &str,
    ) -> Result<(), Element> {
        let (hash, plus) = match mechanism {
            "SCRAM-SHA-1" => (Hash::Sha1, false),
            "SCRAM-SHA-256" => (Hash::Sha256, false),
            "SCRAM-SHA-1-PLUS" => (Hash::Sha1, true),
            "SCRAM-SHA-256-PLUS" => (Hash::Sha256, true),
            other => panic!("no SCRAM mechanism {other}"),
        };
        let gs2 = if plus {
            format!("p={binding},,")
        } else {
            "n,,".to_owned()
        };
        let mut cbind = gs2.as_bytes().to_vec();
        if plus {
            let data = match binding {
                "tls-exporter" => self
                    .tls()
                    .export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
                    .expect("export the tls-exporter channel binding")
                    .to_vec(),
                "tls-server-end-point" => {
                    use sha2::Digest;
                    let certs = self
                        .tls()
                        .peer_certificates()
                        .expect("the server's certificate");
                    sha2::Sha256::digest(certs[0].as_ref()).to_vec()
                }
                other => other.as_bytes().to_vec(),
            };
            cbind.extend_from_slice(&data);
        }
        let mut nonce = [0u8; 18];
        getrandom::fill(&mut nonce).expect("a random nonce");
        let nonce = B64.encode(nonce);
        let first_bare = format!(
            "n={},r={nonce}",
            user.replace('=', "=3D").replace(',', "=2C")
        );
        let mech = format!(" mechanism='{mechanism}'");
        let reply = self.sasl("auth", &mech, &format!("{gs2}{first_bare}"));
        let server_first = sasl_text(&sasl_step(reply, "challenge")?);
        let r = scram_attr(&server_first, 'r');
        assert!(
            r.starts_with(&nonce),
            "server nonce {r} does not extend ours"
        );
        let fin = hash.scram_final(password, &first_bare, &server_first, &cbind);
        let reply = self.sasl("response", "", &fin.message);
        let server_final = sasl_text(&sasl_step(reply, "success")?);
        assert_eq!(
            scram_attr(&server_final, 'v'),
            fin.server_signature,
            "server signature"
        );
        self.open_stream();
        Ok(())
    }

    /// Starts SCRAM as `user` and returns the server-first message (RFC 5802 §5.1), leaving
    /// the exchange unfinished.
    #[track_caller]
    pub fn scram_server_first(&mut self, user: &str, mechanism: &str) -> String {
        let mech = format!(" mechanism='{mechanism}'");
        let reply = self.sasl("auth", &mech, &format!("n,,n={user},r=abcdefgh"));
        match sasl_step(reply, "challenge") {
            Ok(challenge) => sasl_text(&challenge),
            Err(f) => panic!("{mechanism} as {user}: no challenge but {f}"),
        }
    }

    /// PLAIN (RFC 4616); returns the `<failure/>` on failure, restarts the stream on success.
    pub fn try_auth_plain(&mut self, user: &str, password: &str) -> Result<(), Element> {
        let reply = self.sasl(
            "auth",
            " mechanism='PLAIN'",
            &format!("\0{user}\0{password}"),
        );
        sasl_step(reply, "success")?;
        self.open_stream();
        Ok(())
    }

    #[track_caller]
    pub fn auth_scram(&mut self, user: &str, password: &str, mechanism: &str) {
        if let Err(f) = self.try_auth_scram(user, password, mechanism) {
            panic!("{mechanism} as {user} failed: {f}");
        }
    }

    #[track_caller]
    pub fn auth_plain(&mut self, user: &str, password: &str) {
        if let Err(f) = self.try_auth_plain(user, password) {
            panic!("PLAIN as {user} failed: {f}");
        }
    }

    /// Resource binding (RFC 6120 §7); returns the full JID the server assigned.
    #[track_caller]
    pub fn bind(&mut self, resource: Option<&str>) -> String {
        let resource = resource
            .map(|r| format!("<resource>{}</resource>", escape(r)))
            .unwrap_or_default();
        let bind = format!("<bind xmlns='{}'>{resource}</bind>", ns::BIND);
        let reply = self.iq("type='set'", &bind);
        assert_matches(&reply, "<iq type='result'/>");
        let jid = &reply.get("bind", ns::BIND).get("jid", ns::BIND).text;
        self.jid = jid.trim().to_owned();
        self.jid.clone()
    }

    /// A fresh stanza id.
    pub fn id(&mut self) -> String {
        self.next_id += 1;
        format!("id{}", self.next_id)
    }

    /// Sends `<iq id=.. {attrs}>{payload}</iq>` and returns the next stanza, which must be its
    /// reply (same id, type result or error).
    #[track_caller]
    pub fn iq(&mut self, attrs: &str, payload: &str) -> Element {
        let id = self.send_iq(attrs, payload);
        let reply = self.recv();
        assert!(
            reply.is("iq", ns::CLIENT)
                && reply.attr("id") == Some(id.as_str())
                && matches!(reply.attr("type"), Some("result" | "error")),
            "{}: expected the reply to iq {id}, got {reply}",
            self.who()
        );
        reply
    }

    /// Sends `<iq id=.. {attrs}>{payload}</iq>` and returns the id it used.
    #[track_caller]
    pub fn send_iq(&mut self, attrs: &str, payload: &str) -> String {
        let id = self.id();
        self.send(&format!("<iq id='{id}' {attrs}>{payload}</iq>"));
        id
    }

    /// Sends `<message to= type= id=><body>{body}</body></message>`; returns the id.
    #[track_caller]
    pub fn send_message(&mut self, to: &str, kind: &str, body: &str) -> String {
        let id = self.id();
        let body = escape(body);
        self.send(&format!(
            "<message to='{to}' type='{kind}' id='{id}'><body>{body}</body></message>"
        ));
        id
    }

    /// An iq get or set to the server.
    #[track_caller]
    pub fn server_iq(&mut self, kind: &str, payload: &str) -> Element {
        let to = self.domain.clone();
        self.iq(&format!("type='{kind}' to='{to}'"), payload)
    }

    /// A ping to the server whose reply must be the very next stanza: a barrier proving that
    /// nothing else was queued for this client before it.
    #[track_caller]
    pub fn sync(&mut self) {
        let reply = self.server_iq("get", &format!("<ping xmlns='{}'/>", ns::PING));
        assert_matches(&reply, "<iq type='result'/>");
    }

    /// Like `sync`, but presence stanzas that arrive before the reply are dropped: for when the
    /// order of presence broadcasts among one's own resources is not what a test is about.
    #[track_caller]
    pub fn settle(&mut self) {
        let ping = format!("<ping xmlns='{}'/>", ns::PING);
        let to = self.domain.clone();
        let id = self.send_iq(&format!("type='get' to='{to}'"), &ping);
        loop {
            let el = self.recv();
            if el.is("iq", ns::CLIENT) && el.attr("id") == Some(id.as_str()) {
                return assert_matches(&el, "<iq type='result'/>");
            }
            assert!(
                el.is("presence", ns::CLIENT),
                "{}: unexpected stanza while settling: {el}",
                self.who()
            );
        }
    }

    #[track_caller]
    pub fn send(&mut self, xml: &str) {
        self.send_raw(xml.as_bytes());
    }

    #[track_caller]
    pub fn send_raw(&mut self, bytes: &[u8]) {
        if let Err(e) = self.try_send_raw(bytes) {
            panic!("{}: send to hearth: {e}", self.who());
        }
    }

    /// Sends `text` as one WebSocket message, as it is.
    #[track_caller]
    pub fn send_ws_text(&mut self, text: &str) {
        let Io::Ws(ws) = &mut self.io else {
            panic!("not a WebSocket");
        };
        ws.send(tungstenite::Message::text(text))
            .unwrap_or_else(|e| panic!("send to hearth: {e}"));
    }

    pub fn try_send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Io::Ws(ws) = &mut self.io {
            let text = framed_out(&String::from_utf8_lossy(bytes));
            return ws
                .send(tungstenite::Message::text(text))
                .map_err(io::Error::other);
        }
        let stream = self.io.stream();
        stream.write_all(bytes)?;
        stream.flush()
    }

    /// Reads more bytes into the buffer, waiting at most until `deadline`. Ok(false) means the
    /// connection ended; Err means the deadline passed first.
    fn fill(&mut self, deadline: Instant) -> Result<bool, ()> {
        if self.eof {
            return Ok(false);
        }
        let wait = remaining(deadline).max(Duration::from_millis(1));
        self.io
            .tcp()
            .set_read_timeout(Some(wait))
            .expect("set a read timeout");
        if let Io::Ws(ws) = &mut self.io {
            use tungstenite::{Error as E, Message};
            return match ws.read() {
                Ok(Message::Text(t)) => {
                    self.buf.extend_from_slice(framed_in(t.as_str()).as_bytes());
                    Ok(true)
                }
                Ok(Message::Binary(b)) => panic!("a binary message from hearth: {b:?}"),
                Ok(Message::Close(_)) => {
                    self.eof = true;
                    Ok(false)
                }
                Ok(_) => Ok(true),
                Err(E::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    Err(())
                }
                Err(_) => {
                    self.eof = true;
                    Ok(false)
                }
            };
        }
        let mut chunk = [0u8; 16384];
        match self.io.stream().read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                Ok(false)
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(true),
            Err(_) => {
                // Reset, aborted, or TLS ended without close_notify: the stream is gone.
                self.eof = true;
                Ok(false)
            }
        }
    }

    /// The next event, or None if none arrives within `timeout`.
    pub fn next_event_within(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((frame, used)) = scan(&self.buf) {
                self.buf.drain(..used);
                return Some(self.parse(frame));
            }
            match self.fill(deadline) {
                Ok(true) => {}
                Ok(false) => return Some(Event::Eof),
                Err(()) => return None,
            }
        }
    }

    fn parse(&mut self, frame: Frame) -> Event {
        match frame {
            Frame::Close => Event::Close,
            Frame::Header(h) => {
                let qname = tag_name(h.as_bytes());
                let el = parse_document(&format!("{h}</{qname}>"))
                    .unwrap_or_else(|e| panic!("unparsable stream header {h:?}: {e}"));
                self.header = h;
                Event::Header(el)
            }
            Frame::Stanza(s) => Event::Stanza(
                parse_in(&self.header, &s)
                    .unwrap_or_else(|e| panic!("unparsable stanza {s:?}: {e}")),
            ),
        }
    }

    /// The next event within `TIMEOUT`; panics if none arrives.
    #[track_caller]
    pub fn next_event(&mut self) -> Event {
        match self.next_event_within(TIMEOUT) {
            Some(ev) => ev,
            None => panic!("{}: nothing from hearth within {TIMEOUT:?}", self.who()),
        }
    }

    fn who(&self) -> String {
        if self.jid.is_empty() {
            "client".into()
        } else {
            self.jid.clone()
        }
    }

    /// The next stanza (including `<stream:features/>`, `<stream:error/>` and SASL elements).
    #[track_caller]
    pub fn recv(&mut self) -> Element {
        match self.next_event() {
            Event::Stanza(el) => el,
            other => panic!("{}: expected a stanza, got {other:?}", self.who()),
        }
    }

    /// Reads the next stanza and asserts that it matches `want` (see `Element::matches`).
    #[track_caller]
    pub fn expect(&mut self, want: &str) -> Element {
        let got = self.recv();
        assert!(
            got.matches(&pattern(want)),
            "{}: stanza does not match\n  want: {want}\n   got: {got}",
            self.who()
        );
        got
    }

    /// Reads `wants.len()` stanzas, which must match the patterns in any order; returns them in
    /// the order of the patterns.
    #[track_caller]
    pub fn expect_unordered(&mut self, wants: &[&str]) -> Vec<Element> {
        let patterns: Vec<Element> = wants.iter().map(|p| pattern(p)).collect();
        let mut got: Vec<Option<Element>> = vec![None; wants.len()];
        for _ in 0..wants.len() {
            let el = self.recv();
            let open: Vec<usize> = (0..wants.len()).filter(|&i| got[i].is_none()).collect();
            match open.iter().find(|&&i| el.matches(&patterns[i])) {
                Some(&i) => got[i] = Some(el),
                None => panic!(
                    "{}: stanza matches none of the patterns still expected\n   got: {el}\n  want one of: {:?}",
                    self.who(),
                    open.iter().map(|&i| wants[i]).collect::<Vec<_>>()
                ),
            }
        }
        got.into_iter().flatten().collect()
    }

    /// Asserts that nothing arrives within `wait`. Only for where absence is the point and no
    /// barrier (`sync`) can prove it.
    #[track_caller]
    pub fn expect_nothing(&mut self, wait: Duration) {
        if let Some(ev) = self.next_event_within(wait) {
            panic!("{}: expected nothing, got {ev:?}", self.who());
        }
    }

    /// Expects `<stream:error>` with `condition` (a stream header may come first, when the error
    /// comes before the server sent one), then the end of the stream.
    #[track_caller]
    pub fn expect_stream_error(&mut self, condition: &str) {
        let error = loop {
            match self.next_event() {
                Event::Header(_) => {}
                Event::Stanza(el) if el.is("error", ns::STREAM) => break el,
                other => panic!(
                    "{}: expected stream error <{condition}/>, got {other:?}",
                    self.who()
                ),
            }
        };
        assert!(
            error.child(condition, ns::STREAM_ERRORS).is_some(),
            "{}: expected stream error <{condition}/>, got {error}",
            self.who()
        );
        self.expect_closed();
    }

    /// Expects the stream to end: `</stream:stream>` or the connection closing.
    #[track_caller]
    pub fn expect_closed(&mut self) {
        match self.next_event() {
            Event::Close | Event::Eof => {}
            other => panic!(
                "{}: expected the stream to close, got {other:?}",
                self.who()
            ),
        }
    }

    /// Closes the stream politely and waits for the server to close its side.
    pub fn close(mut self) {
        self.send("</stream:stream>");
        loop {
            match self.next_event() {
                Event::Close | Event::Eof => return,
                // Stanzas still in flight to this client are no longer of interest.
                Event::Stanza(_) | Event::Header(_) => {}
            }
        }
    }

    /// True if something (bytes, or the end of the connection) is waiting to be read; waits at
    /// most a millisecond.
    pub fn has_input(&mut self) -> bool {
        !self.buf.is_empty() || self.fill(Instant::now() + Duration::from_millis(1)).is_ok()
    }
}

/// Logs in as `probe` (who must exist) and pings the server: proof that hearth still serves.
#[track_caller]
pub fn assert_server_ok(server: &TestServer, probe: &str) {
    let mut c = Client::user(server, probe, "probe");
    c.sync();
}

/// Asserts that a login attempt failed with the SASL `<failure/>` condition `condition`.
#[track_caller]
pub fn assert_sasl_failure(result: Result<(), Element>, condition: &str) {
    match result {
        Ok(()) => panic!("the login succeeded; expected <failure><{condition}/></failure>"),
        Err(f) => assert!(
            f.child(condition, ns::SASL).is_some(),
            "expected <failure><{condition}/></failure>, got {f}"
        ),
    }
}

// The harness checks itself: a matcher that matched everything would pass every test.

#[test]
fn patterns_match_as_documented() {
    let got = pattern(
        "<message from='a@localhost/r' type='chat'><body> hi </body>\
         <delay xmlns='urn:xmpp:delay' stamp='2026-01-01T00:00:00Z'/></message>",
    );
    let yes = [
        "<message/>",
        "<message type='chat' from='{any}' to='{none}'/>",
        "<message><body>hi</body></message>",
        "<message><delay xmlns='urn:xmpp:delay' stamp='{any}'/></message>",
    ];
    let no = [
        "<presence/>",
        "<message type='normal'/>",
        "<message to='{any}'/>",
        "<message type='{none}'/>",
        "<message><body>bye</body></message>",
        "<message><delay stamp='{any}'/></message>",
        "<message><subject/></message>",
    ];
    for p in yes {
        assert!(got.matches(&pattern(p)), "{p} should match {got}");
    }
    for p in no {
        assert!(!got.matches(&pattern(p)), "{p} should not match {got}");
    }
}

#[test]
fn framing_waits_for_whole_stanzas() {
    let input = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' id='x'> <iq a='>'><q/></iq><p/></stream:stream>";
    let mut frames = Vec::new();
    let mut at = 0;
    for end in 1..=input.len() {
        if let Some((frame, used)) = scan(&input[at..end]) {
            frames.push(format!("{frame:?}"));
            at += used;
        }
    }
    assert_eq!(frames.len(), 4, "{frames:?}");
    assert!(
        frames[0].starts_with("Header(\"<stream:stream"),
        "{frames:?}"
    );
    assert_eq!(frames[1], "Stanza(\"<iq a='>'><q/></iq>\")");
    assert_eq!(frames[2], "Stanza(\"<p/>\")");
    assert_eq!(frames[3], "Close");
}

impl Client {
    /// Pings the server and returns the messages that arrive before the reply (presence is
    /// skipped): everything the server queued for this client before the ping.
    #[track_caller]
    pub fn messages_until_sync(&mut self) -> Vec<Element> {
        let to = self.domain.clone();
        let ping = self.send_iq(
            &format!("type='get' to='{to}'"),
            &format!("<ping xmlns='{}'/>", ns::PING),
        );
        let mut got = Vec::new();
        loop {
            let el = self.recv();
            if el.is("iq", ns::CLIENT) && el.attr("id") == Some(ping.as_str()) {
                return got;
            }
            if el.name == "message" {
                got.push(el);
            }
        }
    }

    /// The next stanza that is not presence, waiting up to ten seconds: for events that
    /// follow a server-side timer.
    #[track_caller]
    pub fn recv_skipping_presence(&mut self) -> Element {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.next_event_within(deadline - Instant::now()) {
                Some(Event::Stanza(el)) if el.name != "presence" => return el,
                Some(Event::Stanza(_)) => {}
                other => panic!("{}: expected a stanza, got {other:?}", self.who()),
            }
        }
        panic!(
            "{}: nothing but presence arrived in ten seconds",
            self.who()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// What the server process holds, for tests of its bounds

impl TestServer {
    /// The server's resident set size in bytes, from /proc/PID/status (VmRSS).
    pub fn rss_bytes(&self) -> u64 {
        let pid = self.child.as_ref().expect("the server runs").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
        kib * 1024
    }

    /// Waits (up to `wait`) until the server's log has `n` lines containing `needle`.
    #[track_caller]
    pub fn wait_for_log(&self, needle: &str, n: usize, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let found = self.log().lines().filter(|l| l.contains(needle)).count();
            if found >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{found} of {n} log lines with {needle:?} within {wait:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Samples the server's RSS every few milliseconds in a thread until dropped; `peak` is the
/// largest figure seen.
pub struct RssWatch {
    peak: Arc<Mutex<u64>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    pub fn start(server: &TestServer) -> RssWatch {
        let pid = server.child.as_ref().expect("the server runs").id();
        let peak = Arc::new(Mutex::new(server.rss_bytes()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status"));
                let kib = status.ok().and_then(|st| {
                    st.lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next())
                        .and_then(|n| n.parse::<u64>().ok())
                });
                if let (Some(kib), Ok(mut peak)) = (kib, p.lock()) {
                    *peak = (*peak).max(kib * 1024);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssWatch {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    pub fn peak(&self) -> u64 {
        self.peak.lock().map(|p| *p).unwrap_or_default()
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Client {
    /// Shrinks this end's socket receive buffer, so that a client that stops reading stalls
    /// the server's writes after little data (the kernel's default takes megabytes).
    pub fn shrink_receive_buffer(&self) {
        socket2::SockRef::from(self.io.tcp())
            .set_recv_buffer_size(4096)
            .expect("set the receive buffer size");
    }

    /// Reads and throws away what the server has sent so far, waiting at most a millisecond
    /// for more; false once the connection has ended.
    pub fn discard_input(&mut self) -> bool {
        loop {
            match self.fill(Instant::now() + Duration::from_millis(1)) {
                Ok(true) => self.buf.clear(),
                Ok(false) => return false,
                Err(()) => return true,
            }
        }
    }

    /// Enables XEP-0198 stream management (resumable or not); returns the resumption id.
    pub fn enable_sm(&mut self, resume: bool) -> Option<String> {
        self.send(&format!(
            "<enable xmlns='urn:xmpp:sm:3' resume='{resume}'/>"
        ));
        let enabled = self.expect("<enabled xmlns='urn:xmpp:sm:3'/>");
        enabled.attr("id").map(str::to_owned)
    }
}
