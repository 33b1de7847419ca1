//! The `soak` scenario: a long run with everything at once, to see the server's memory stay
//! flat once it has warmed up, and nothing acknowledged get lost on the way.
//!
//! - `--sessions` idle sessions (a quarter with XEP-0198 and resumption) that answer the
//!   server's pings and acknowledgement requests, on a thread of their own.
//! - `--pairs` pairs sending `--rate` messages per second in all, to the receiver's bare JID.
//!   Even pairs use XEP-0198 on both ends (the sender asks for an acknowledgement every ten
//!   messages), odd ones do not.
//! - Reconnect churn: each receiver, after a random stay (mean `--churn-secs`), leaves in one
//!   of four ways: its TCP connection drops and it resumes (XEP-0198) at once, or after 20-60 s
//!   away while messages wait in the detached session; or it logs in afresh at once, or after
//!   20-60 s away while messages go to offline storage, fetched at the next login (without
//!   XEP-0198, only the last two, leaving with a closed stream). `--churners` more accounts
//!   only log in, stay a while and drop or leave.
//! - Attacks, one every `--attack-secs`, each kind in turn: invalid XML on a logged-in stream,
//!   a TLS ClientHello or an HTTP request to the STARTTLS port, SASL abort floods and wrong
//!   passwords (for the receivers' and churners' accounts) from ever new loopback addresses
//!   (127.1.x.y), directed presence to 2,000 made-up addresses, and a stanza larger than the
//!   server takes. Besides, in rounds, each fed by a sender with XEP-0198: a client that stops
//!   reading while 6 MiB of messages come for it (every 240 s), and one that reads but never
//!   acknowledges while 2,100 messages come (every 60 s).
//!
//! The main thread samples the server's RSS every `--sample-secs`. At the end the senders ask
//! for a last acknowledgement, every receiver comes back, and the scenario waits (at most twice
//! `--timeout`) until each message is accounted for, then checks: every message the server
//! acknowledged arrived exactly once (live, after a resumption or from offline storage) or came
//! back as an error, every message sent without XEP-0198 likewise, and each message sent to
//! the two attackers' accounts arrived once from offline storage (they acknowledge nothing) or
//! came back once. A receiver acknowledges, before it leaves by logging in afresh, what it has
//! counted, and counts nothing after that: what the server had not seen acknowledged it must
//! deliver again, and what it had must not come twice. Besides, every attack must get the
//! answer it should, and no legitimate client may be refused or disconnected.
//!
//! Prints one result line (`check=pass` or `check=fail failures=...`) and a `samples=` line of
//! `seconds:rss_kib:open_fds` triples. What went wrong is said on standard error as it
//! happens (the first five of each kind), and for a message that went missing, when it was sent
//! and what its receiver did around then.

use super::*;
use smol::channel::Receiver;
use smol::future::FutureExt as _;
use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

const SM: &str = "urn:xmpp:sm:3";
const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

/// Accounts beyond the idle ones and the pairs: invalid XML, directed presence, oversized
/// stanzas, the client that stops reading and its sender, the one that never acknowledges and
/// its sender.
const ATTACK_ACCOUNTS: usize = 7;
const BAD_XML: usize = 0;
const DIRECTED: usize = 1;
const OVERSIZED: usize = 2;
const STOPS_READING: usize = 3;
const STOPS_READING_FEEDER: usize = 4;
const NEVER_ACKS: usize = 5;
const NEVER_ACKS_FEEDER: usize = 6;

/// Which account number does what: idle 1..=sessions, then the pairs (sender, receiver), the
/// churners and the attack accounts.
#[derive(Clone, Copy)]
struct Layout {
    idle: usize,
    pairs: usize,
    churners: usize,
}

impl Layout {
    fn of(args: &Args) -> Layout {
        Layout {
            idle: args.sessions(),
            pairs: args.pairs,
            churners: args.churners,
        }
    }
    fn sender(&self, g: usize) -> usize {
        self.idle + 2 * g + 1
    }
    fn receiver(&self, g: usize) -> usize {
        self.idle + 2 * g + 2
    }
    fn churner(&self, c: usize) -> usize {
        self.idle + 2 * self.pairs + 1 + c
    }
    fn attack(&self, a: usize) -> usize {
        self.idle + 2 * self.pairs + self.churners + 1 + a
    }
    fn total(&self) -> usize {
        self.idle + 2 * self.pairs + self.churners + ATTACK_ACCOUNTS
    }
}

/// The number of accounts the soak logs in as.
pub fn accounts(args: &Args) -> usize {
    Layout::of(args).total()
}

// ---------------------------------------------------------------------------------------------
// Counters

/// Named counters shared by the threads.
#[derive(Default)]
struct Stats(Mutex<BTreeMap<String, u64>>);

impl Stats {
    fn add(&self, key: &str, n: u64) {
        let mut m = self
            .0
            .lock()
            .expect("no thread panics holding the counters");
        *m.entry(key.to_owned()).or_default() += n;
    }
    fn inc(&self, key: &str) {
        self.add(key, 1);
    }
    fn max(&self, key: &str, n: u64) {
        let mut m = self
            .0
            .lock()
            .expect("no thread panics holding the counters");
        let v = m.entry(key.to_owned()).or_default();
        *v = (*v).max(n);
    }
    fn get(&self, key: &str) -> u64 {
        let m = self
            .0
            .lock()
            .expect("no thread panics holding the counters");
        m.get(key).copied().unwrap_or(0)
    }
    /// Counts an unexpected event, and says what it was the first few times.
    fn odd(&self, key: &str, what: impl std::fmt::Display) {
        let n = {
            let mut m = self
                .0
                .lock()
                .expect("no thread panics holding the counters");
            let n = m.entry(key.to_owned()).or_default();
            *n += 1;
            *n
        };
        if n <= 5 {
            eprintln!("soak: {key}: {what}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Randomness (a splitmix64 per thread; nothing here needs more)

thread_local! {
    static RNG: Cell<u64> = Cell::new(u64::from_le_bytes(
        rand_bytes()[..8].try_into().expect("eight bytes"),
    ));
}

fn rand_u64() -> u64 {
    RNG.with(|r| {
        let mut z = r.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        r.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// Uniform in [0, 1).
fn rand_unit() -> f64 {
    (rand_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn uniform_secs(lo: f64, hi: f64) -> Duration {
    Duration::from_secs_f64(lo + (hi - lo) * rand_unit())
}

/// Exponentially distributed with mean `mean` seconds.
fn exponential_secs(mean: f64) -> Duration {
    Duration::from_secs_f64(-mean * (1.0 - rand_unit()).ln())
}

// ---------------------------------------------------------------------------------------------
// XML framing: the server's byte stream cut into top-level elements

enum Ev {
    /// A stream header (at the start, and again after STARTTLS and SASL).
    Header,
    /// One complete top-level element: a stanza, a stream-level element or a stream error.
    El(Vec<u8>),
    /// `</stream:stream>`.
    Close,
}

/// Cuts a stream into top-level elements by counting start and end tags (quotes respected).
/// Enough for what an XMPP server sends: no comments, CDATA or DOCTYPEs.
#[derive(Default)]
struct Splitter {
    buf: Vec<u8>,
    /// Next byte to scan.
    pos: usize,
    /// 0 outside the stream, 1 inside it, 2 and more inside a top-level element.
    depth: u32,
    /// Start of the tag being scanned, if one is open.
    tag: Option<usize>,
    /// The quote an attribute value being scanned started with.
    quote: u8,
    /// Start of the top-level element being scanned (depth 2 and more).
    element: usize,
}

impl Splitter {
    fn feed(&mut self, data: &[u8], out: &mut VecDeque<Ev>) {
        self.buf.extend_from_slice(data);
        let mut i = self.pos;
        while i < self.buf.len() {
            let b = self.buf[i];
            match self.tag {
                None if b == b'<' => self.tag = Some(i),
                None => {}
                Some(_) if self.quote != 0 && b == self.quote => self.quote = 0,
                Some(_) if self.quote != 0 => {}
                Some(_) if b == b'\'' || b == b'"' => self.quote = b,
                Some(start) if b == b'>' => {
                    self.tag = None;
                    self.end_of_tag(start, i + 1, out);
                }
                Some(_) => {}
            }
            i += 1;
        }
        let keep = match (self.depth >= 2, self.tag) {
            (true, _) => self.element,
            (false, Some(t)) => t,
            (false, None) => self.buf.len(),
        };
        self.buf.drain(..keep);
        self.pos = self.buf.len();
        self.element = self.element.saturating_sub(keep);
        self.tag = self.tag.map(|t| t - keep);
    }

    fn end_of_tag(&mut self, start: usize, end: usize, out: &mut VecDeque<Ev>) {
        let tag = &self.buf[start..end];
        match tag.get(1) {
            Some(b'?' | b'!') => {}
            Some(b'/') if self.depth <= 1 => {
                self.depth = 0;
                out.push_back(Ev::Close);
            }
            Some(b'/') => {
                self.depth -= 1;
                if self.depth == 1 {
                    out.push_back(Ev::El(self.buf[self.element..end].to_vec()));
                }
            }
            _ => {
                let empty = tag.len() >= 2 && tag[tag.len() - 2] == b'/';
                if name(tag) == b"stream:stream" {
                    self.depth = 1;
                    out.push_back(Ev::Header);
                } else if self.depth <= 1 {
                    if empty {
                        out.push_back(Ev::El(tag.to_vec()));
                    } else {
                        self.element = start;
                        self.depth = 2;
                    }
                } else if !empty {
                    self.depth += 1;
                }
            }
        }
    }
}

/// The qualified name of an element (or start tag).
fn name(el: &[u8]) -> &[u8] {
    let rest = el.get(1..).unwrap_or_default();
    let end = rest
        .iter()
        .position(|b| matches!(b, b' ' | b'/' | b'>' | b'\t' | b'\n' | b'\r'))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// An attribute of the element's start tag.
fn attr<'a>(el: &'a [u8], key: &str) -> Option<&'a str> {
    let tag = &el[..find(el, b">").map_or(el.len(), |i| i + 1)];
    for q in [b'\'', b'"'] {
        let mut pat = Vec::with_capacity(key.len() + 3);
        pat.push(b' ');
        pat.extend_from_slice(key.as_bytes());
        pat.extend_from_slice(&[b'=', q]);
        if let Some(i) = find(tag, &pat) {
            let from = i + pat.len();
            let len = tag[from..].iter().position(|&b| b == q)?;
            return std::str::from_utf8(&tag[from..from + len]).ok();
        }
    }
    None
}

/// The name of the first child element (the condition of a stream error or SASL failure).
fn first_child(el: &[u8]) -> String {
    let Some(open_end) = find(el, b">") else {
        return String::new();
    };
    let rest = &el[open_end + 1..];
    match find(rest, b"<") {
        Some(i) if rest.get(i + 1) != Some(&b'/') => {
            String::from_utf8_lossy(name(&rest[i..])).into_owned()
        }
        _ => String::new(),
    }
}

fn is_stanza(el: &[u8]) -> bool {
    matches!(name(el), b"message" | b"presence" | b"iq")
}

/// The sequence number a message body starts with.
fn body_seq(el: &[u8]) -> Option<u64> {
    let start = find(el, b"<body>")? + 6;
    let digits = el[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&el[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

/// The sequence number in an id `{prefix}{seq}`.
fn id_seq(el: &[u8], prefix: &str) -> Option<u64> {
    attr(el, "id")?.strip_prefix(prefix)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Sessions

/// XEP-0198 state of a session.
struct Sm {
    /// The id to resume with, if resumption was enabled.
    id: Option<String>,
    /// Stanzas received and handled: the client's `h`.
    h: u64,
    /// Stanzas sent and not yet acknowledged, oldest first: the sequence number of each of our
    /// messages, `None` for other stanzas.
    unacked: VecDeque<Option<u64>>,
    /// The server's last `h`.
    acked: u32,
}

impl Sm {
    fn new(id: Option<String>, h: u64, acked: u32) -> Sm {
        Sm {
            id,
            h,
            unacked: VecDeque::new(),
            acked,
        }
    }
}

/// A logged-in stream.
struct Sess {
    s: Tls,
    split: Splitter,
    evs: VecDeque<Ev>,
    buf: Vec<u8>,
    sm: Option<Sm>,
}

/// Reads the next event from `s`. Cancel-safe: only the read is awaited.
async fn read_ev<S: smol::io::AsyncRead + Unpin>(
    s: &mut S,
    split: &mut Splitter,
    evs: &mut VecDeque<Ev>,
    buf: &mut [u8],
) -> std::io::Result<Ev> {
    loop {
        if let Some(e) = evs.pop_front() {
            return Ok(e);
        }
        let n = s.read(buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        split.feed(&buf[..n], evs);
    }
}

/// Reads until an element named one of `names`; a stream error or the end of the stream is
/// an error.
async fn expect_el<S: smol::io::AsyncRead + Unpin>(
    s: &mut S,
    split: &mut Splitter,
    evs: &mut VecDeque<Ev>,
    buf: &mut [u8],
    names: &[&[u8]],
) -> std::io::Result<Vec<u8>> {
    loop {
        match read_ev(s, split, evs, buf).await? {
            Ev::El(e) if names.contains(&name(&e)) => return Ok(e),
            Ev::El(e) if name(&e) == b"stream:error" => {
                return Err(bad(&format!("stream error {}", first_child(&e))));
            }
            Ev::Close => return Err(bad("stream closed")),
            _ => {}
        }
    }
}

impl Sess {
    /// The next event. Cancel-safe.
    async fn next(&mut self) -> std::io::Result<Ev> {
        read_ev(&mut self.s, &mut self.split, &mut self.evs, &mut self.buf).await
    }

    async fn expect(&mut self, names: &[&[u8]]) -> std::io::Result<Vec<u8>> {
        expect_el(
            &mut self.s,
            &mut self.split,
            &mut self.evs,
            &mut self.buf,
            names,
        )
        .await
    }

    async fn send(&mut self, text: &str) -> std::io::Result<()> {
        self.s.write_all(text.as_bytes()).await?;
        self.s.flush().await
    }

    /// Sends a stanza; with XEP-0198, remembers it until acknowledged (`seq`: one of our
    /// numbered messages).
    async fn send_stanza(&mut self, text: &str, seq: Option<u64>) -> std::io::Result<()> {
        if let Some(sm) = &mut self.sm {
            sm.unacked.push_back(seq);
        }
        self.send(text).await
    }

    /// What every client does with an element: counts stanzas for XEP-0198, answers the
    /// server's pings and acknowledgement requests, and takes its acknowledgements. Returns
    /// the sequence numbers of our messages that the server has now acknowledged.
    async fn duty(&mut self, el: &[u8]) -> std::io::Result<Vec<u64>> {
        if is_stanza(el)
            && let Some(sm) = &mut self.sm
        {
            sm.h += 1;
        }
        match name(el) {
            b"iq" if attr(el, "type") == Some("get") && find(el, b"urn:xmpp:ping").is_some() => {
                let id = attr(el, "id").unwrap_or_default();
                let from = attr(el, "from").unwrap_or_default();
                let reply = format!("<iq type='result' id='{id}' to='{from}'/>");
                self.send_stanza(&reply, None).await?;
            }
            b"r" => {
                let h = self.sm.as_ref().map_or(0, |sm| sm.h);
                self.send(&format!("<a xmlns='{SM}' h='{}'/>", h as u32))
                    .await?;
            }
            b"a" => {
                let h: u32 = attr(el, "h").and_then(|h| h.parse().ok()).unwrap_or(0);
                if let Some(sm) = &mut self.sm {
                    let n = h.wrapping_sub(sm.acked) as usize;
                    sm.acked = h;
                    let n = n.min(sm.unacked.len());
                    return Ok(sm.unacked.drain(..n).flatten().collect());
                }
            }
            _ => {}
        }
        Ok(Vec::new())
    }

    /// Acknowledges everything counted, and waits until the server has taken that in (its
    /// answer to a request sent after it). Stanzas meanwhile are not counted: the server
    /// considers them unacknowledged, and must deliver them again.
    async fn settle(&mut self, timeout: f64) -> std::io::Result<()> {
        let Some(sm) = &self.sm else {
            return Ok(());
        };
        let a = format!("<a xmlns='{SM}' h='{}'/><r xmlns='{SM}'/>", sm.h as u32);
        self.send(&a).await?;
        bounded(timeout, "acknowledgement", async {
            self.expect(&[b"a"]).await.map(drop)
        })
        .await
    }

    /// Closes the stream and reads until the server has closed its side, handing each element
    /// to `each` (the server may deliver until it has read our end of the stream).
    async fn close(&mut self, timeout: f64, mut each: impl FnMut(&[u8])) -> std::io::Result<()> {
        self.send("</stream:stream>").await?;
        bounded(timeout, "close", async {
            loop {
                match self.next().await {
                    Ok(Ev::El(e)) => each(&e),
                    Ok(Ev::Header) => {}
                    Ok(Ev::Close) => return Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        })
        .await
    }
}

/// How to log in.
#[derive(Clone, Default)]
struct Opts {
    user: String,
    resource: String,
    /// Enable XEP-0198, with resumption if `Some(true)`.
    sm: Option<bool>,
    presence: bool,
    /// Resume this session (id, our `h`) instead of binding.
    resume: Option<(String, u64)>,
    /// Source address (default: the system's choice, 127.0.0.1).
    source: Option<Ipv4Addr>,
    /// A receive buffer this small.
    rcvbuf: Option<usize>,
}

/// Connects, from `source` if given, with a small receive buffer if asked.
async fn connect(
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    rcvbuf: Option<usize>,
) -> std::io::Result<TcpStream> {
    if source.is_none() && rcvbuf.is_none() {
        return TcpStream::connect(addr).await;
    }
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    if let Some(ip) = source {
        socket.bind(&SocketAddr::new(ip.into(), 0).into())?;
    }
    if let Some(n) = rcvbuf {
        socket.set_recv_buffer_size(n)?;
    }
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = smol::Async::new(std::net::TcpStream::from(socket))?;
    stream.writable().await?;
    if let Some(e) = stream.get_ref().take_error()? {
        return Err(e);
    }
    Ok(TcpStream::from(stream))
}

/// A connection with STARTTLS done and the TLS stream's features read.
async fn open_tls(
    cx: &Cx,
    source: Option<Ipv4Addr>,
    rcvbuf: Option<usize>,
) -> std::io::Result<Sess> {
    let mut tcp = connect(cx.addr, source, rcvbuf).await?;
    tcp.set_nodelay(true)?;
    let (mut split, mut evs, mut buf) = (Splitter::default(), VecDeque::new(), vec![0u8; 4096]);
    tcp.write_all(header(&cx.args.domain).as_bytes()).await?;
    expect_el(
        &mut tcp,
        &mut split,
        &mut evs,
        &mut buf,
        &[b"stream:features"],
    )
    .await?;
    tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await?;
    expect_el(&mut tcp, &mut split, &mut evs, &mut buf, &[b"proceed"]).await?;
    let name = ServerName::try_from(cx.args.domain.clone()).map_err(|_| bad("bad domain"))?;
    let s = cx.tls.connect(name, tcp).await?;
    let mut sess = Sess {
        s,
        split: Splitter::default(),
        evs: VecDeque::new(),
        buf,
        sm: None,
    };
    sess.send(&header(&cx.args.domain)).await?;
    sess.expect(&[b"stream:features"]).await?;
    Ok(sess)
}

/// Logs in with SCRAM-SHA-1; then resumes or binds, enables XEP-0198 and sends presence as
/// `o` says. Returns the session and whether it was resumed.
async fn login(cx: &Cx, o: &Opts) -> std::io::Result<(Sess, bool)> {
    let mut s = open_tls(cx, o.source, o.rcvbuf).await?;
    let cnonce = B64.encode(rand_bytes());
    let first_bare = format!("n={},r={cnonce}", o.user);
    s.send(&format!(
        "<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'>{}</auth>",
        B64.encode(format!("n,,{first_bare}"))
    ))
    .await?;
    let e = s.expect(&[b"challenge", b"failure"]).await?;
    if name(&e) == b"failure" {
        return Err(bad(&format!("authentication failed: {}", first_child(&e))));
    }
    let text = String::from_utf8_lossy(&e);
    let challenge = content(&text, "challenge").ok_or_else(|| bad("no SCRAM challenge"))?;
    let fin = scram_final(&cx.args.password, &first_bare, challenge)?;
    s.send(&format!(
        "<response xmlns='{SASL}'>{}</response>",
        B64.encode(fin)
    ))
    .await?;
    let e = s.expect(&[b"success", b"failure"]).await?;
    if name(&e) == b"failure" {
        return Err(bad(&format!("authentication failed: {}", first_child(&e))));
    }
    s.send(&header(&cx.args.domain)).await?;
    s.expect(&[b"stream:features"]).await?;
    if let Some((id, h)) = &o.resume {
        s.send(&format!(
            "<resume xmlns='{SM}' previd='{id}' h='{}'/>",
            *h as u32
        ))
        .await?;
        let e = s.expect(&[b"resumed", b"failed"]).await?;
        if name(&e) == b"resumed" {
            let acked = attr(&e, "h").and_then(|h| h.parse().ok()).unwrap_or(0);
            s.sm = Some(Sm::new(Some(id.clone()), *h, acked));
            return Ok((s, true));
        }
    }
    s.send(&format!(
        "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
         <resource>{}</resource></bind></iq>",
        o.resource
    ))
    .await?;
    loop {
        let e = s.expect(&[b"iq"]).await?;
        if attr(&e, "id") != Some("bind") {
            continue;
        }
        if attr(&e, "type") != Some("result") {
            return Err(bad(&format!(
                "bind refused: {}",
                String::from_utf8_lossy(&e)
            )));
        }
        break;
    }
    if let Some(resume) = o.sm {
        let enable = if resume {
            format!("<enable xmlns='{SM}' resume='true'/>")
        } else {
            format!("<enable xmlns='{SM}'/>")
        };
        s.send(&enable).await?;
        let e = s.expect(&[b"enabled", b"failed"]).await?;
        if name(&e) != b"enabled" {
            return Err(bad("stream management refused"));
        }
        s.sm = Some(Sm::new(attr(&e, "id").map(str::to_owned), 0, 0));
    }
    if o.presence {
        s.send_stanza("<presence/>", None).await?;
    }
    Ok((s, false))
}

// ---------------------------------------------------------------------------------------------
// Context of one thread

struct Cx {
    ex: &'static LocalExecutor<'static>,
    args: Arc<Args>,
    addr: SocketAddr,
    tls: TlsConnector,
    stats: Arc<Stats>,
    layout: Layout,
    /// Closed when the run ends: no more traffic, churn or attacks.
    stop: Receiver<()>,
    /// Closed when the final checks are over.
    done: Receiver<()>,
    /// When traffic starts and the run ends (set once every session is logged in).
    start: Cell<Instant>,
    end: Cell<Instant>,
    /// Connections made from attack addresses so far.
    sources: Cell<u32>,
}

enum Wake {
    Ev(std::io::Result<Ev>),
    Timer,
    Signal,
}

impl Cx {
    fn user(&self, k: usize) -> String {
        format!("{}{k}", self.args.prefix)
    }
    fn jid(&self, k: usize) -> String {
        format!("{}{k}@{}", self.args.prefix, self.args.domain)
    }
    fn opts(&self, k: usize) -> Opts {
        Opts {
            user: self.user(k),
            resource: "soak".into(),
            presence: true,
            ..Opts::default()
        }
    }
    fn stopped(&self) -> bool {
        self.stop.is_closed()
    }

    /// A new loopback address for attacks (127.1.x.y, never the legitimate clients' 127.0.0.1),
    /// each used for twelve connections: enough to reach the per-source limits sometimes.
    fn next_source(&self) -> Ipv4Addr {
        let k = self.sources.get();
        self.sources.set(k + 1);
        let a = k / 12;
        Ipv4Addr::new(127, 1, (a / 250 % 250) as u8, (a % 250 + 1) as u8)
    }

    /// Logs in, again and again (a second apart) while it fails, until `until` is closed.
    async fn login_until(&self, o: &Opts, until: &Receiver<()>) -> Option<(Sess, bool)> {
        loop {
            match bounded(self.args.timeout, "login", login(self, o)).await {
                Ok(r) => return Some(r),
                Err(e) => self
                    .stats
                    .odd("legit_login_failures", format!("{}: {e}", o.user)),
            }
            if sleep_or(Duration::from_secs(1), until).await {
                return None;
            }
        }
    }
}

/// Sleeps for `d`; true if `signal` was closed first (or already).
async fn sleep_or(d: Duration, signal: &Receiver<()>) -> bool {
    async {
        Timer::after(d).await;
        false
    }
    .or(async {
        let _ = signal.recv().await;
        true
    })
    .await
}

/// The next event of `s`, the timer at `at`, or the closing of `signal`, whichever first.
async fn next_or(s: &mut Sess, at: Option<Instant>, signal: &Receiver<()>) -> Wake {
    let ev = async { Wake::Ev(s.next().await) };
    let timer = async {
        match at {
            Some(t) => {
                Timer::at(t).await;
                Wake::Timer
            }
            None => std::future::pending().await,
        }
    };
    let sig = async {
        let _ = signal.recv().await;
        Wake::Signal
    };
    ev.or(timer).or(sig).await
}

// ---------------------------------------------------------------------------------------------
// Message accounting

/// What became of the numbered messages sent to one account.
#[derive(Default)]
struct Track {
    /// Messages 1..=sent were sent.
    sent: Cell<u64>,
    /// Index seq-1: acknowledged by the server.
    acked: RefCell<Vec<bool>>,
    /// Index seq-1: times it arrived.
    got: RefCell<Vec<u8>>,
    /// Index seq-1: times it came back as an error.
    bounced: RefCell<Vec<u8>>,
    /// The sender has stopped, and has all it sent acknowledged if it could.
    finished: Cell<bool>,
    /// Index seq-1: when it was sent (microseconds, `now_us`).
    sent_at: RefCell<Vec<u64>>,
    /// What the receiver did when (microseconds), to explain a message that went missing.
    history: RefCell<Vec<(u64, String)>>,
}

fn bump(v: &RefCell<Vec<u8>>, seq: u64) {
    let Some(i) = (seq as usize).checked_sub(1) else {
        return;
    };
    let mut v = v.borrow_mut();
    if v.len() <= i {
        v.resize(i + 1, 0);
    }
    v[i] = v[i].saturating_add(1);
}

#[derive(Default, Clone, Copy)]
struct Tally {
    sent: u64,
    acked: u64,
    /// Acknowledged (or, without acknowledgements, sent) and neither arrived nor came back.
    lost: u64,
    /// Arrived or came back more than once, in all.
    dup: u64,
    got: u64,
    bounced: u64,
}

impl Track {
    fn next_seq(&self) -> u64 {
        let seq = self.sent.get() + 1;
        self.sent.set(seq);
        self.sent_at.borrow_mut().push(now_us());
        seq
    }
    fn note(&self, what: String) {
        self.history.borrow_mut().push((now_us(), what));
    }
    /// Messages that must have arrived and have not (nor come back).
    fn missing(&self, acked_only: bool) -> Vec<u64> {
        let (acked, got, bounced) = (
            self.acked.borrow(),
            self.got.borrow(),
            self.bounced.borrow(),
        );
        (0..self.sent.get() as usize)
            .filter(|&i| {
                let a = acked.get(i).copied().unwrap_or(false);
                let n = got.get(i).copied().unwrap_or(0) + bounced.get(i).copied().unwrap_or(0);
                n == 0 && (a || !acked_only)
            })
            .map(|i| i as u64 + 1)
            .collect()
    }
    /// Says which messages are missing, when they were sent, and what the receiver did
    /// around then.
    fn explain(&self, who: &str, acked_only: bool, start: u64) {
        let missing = self.missing(acked_only);
        let Some(&first) = missing.first() else {
            return;
        };
        let at = |seq: u64| {
            self.sent_at
                .borrow()
                .get(seq as usize - 1)
                .copied()
                .unwrap_or(0)
        };
        let secs = |us: u64| us.saturating_sub(start) as f64 / 1e6;
        let listed: Vec<String> = missing
            .iter()
            .take(10)
            .map(|&q| format!("{q}@{:.3}s", secs(at(q))))
            .collect();
        eprintln!(
            "soak: {who}: {} missing: {}",
            missing.len(),
            listed.join(" ")
        );
        let t = at(first);
        for (when, what) in self.history.borrow().iter() {
            if when.abs_diff(t) < 30_000_000 {
                eprintln!("soak: {who}:   {:.3}s {what}", secs(*when));
            }
        }
    }
    fn got(&self, seq: u64) {
        bump(&self.got, seq);
    }
    fn bounced(&self, seq: u64) {
        bump(&self.bounced, seq);
    }
    fn ack(&self, seq: u64) {
        let Some(i) = (seq as usize).checked_sub(1) else {
            return;
        };
        let mut v = self.acked.borrow_mut();
        if v.len() <= i {
            v.resize(i + 1, false);
        }
        v[i] = true;
    }
    /// `acked_only`: only acknowledged messages must have arrived.
    fn tally(&self, acked_only: bool) -> Tally {
        let (acked, got, bounced) = (
            self.acked.borrow(),
            self.got.borrow(),
            self.bounced.borrow(),
        );
        let mut t = Tally {
            sent: self.sent.get(),
            ..Tally::default()
        };
        for i in 0..self.sent.get() as usize {
            let a = acked.get(i).copied().unwrap_or(false);
            let g = u64::from(got.get(i).copied().unwrap_or(0));
            let b = u64::from(bounced.get(i).copied().unwrap_or(0));
            t.acked += u64::from(a);
            t.got += g;
            t.bounced += b;
            if g + b == 0 && (a || !acked_only) {
                t.lost += 1;
            }
            t.dup += (g + b).saturating_sub(1);
        }
        t
    }
    fn complete(&self, acked_only: bool) -> bool {
        self.finished.get() && self.tally(acked_only).lost == 0
    }
}

/// A numbered chat message.
fn numbered(to: &str, prefix: &str, seq: u64, filler: &str) -> String {
    format!(
        "<message to='{to}' type='chat' id='{prefix}{seq}'><body>{seq} {} {filler}</body></message>",
        now_us()
    )
}

/// Counts a message that arrived for a tracked account (under `key`).
fn arrived(cx: &Cx, track: &Track, el: &[u8], key: &str) {
    if attr(el, "type") == Some("error") {
        cx.stats.odd(
            "receiver_errors",
            String::from_utf8_lossy(&el[..el.len().min(300)]),
        );
        return;
    }
    match body_seq(el) {
        Some(seq) => {
            track.got(seq);
            cx.stats.inc(key);
            if find(el, b"<delay").is_some() {
                cx.stats.inc("msgs_from_offline");
            }
        }
        None => cx.stats.odd(
            "receiver_unexpected",
            String::from_utf8_lossy(&el[..el.len().min(300)]),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Idle sessions

async fn idle_session(cx: Rc<Cx>, k: usize, mut s: Sess) -> bool {
    let o = Opts {
        sm: k.is_multiple_of(4).then_some(true),
        ..cx.opts(k)
    };
    loop {
        let why = loop {
            match next_or(&mut s, None, &cx.stop).await {
                Wake::Ev(Ok(Ev::El(e))) if name(&e) == b"stream:error" => break first_child(&e),
                Wake::Ev(Ok(Ev::El(e))) => {
                    if let Err(e) = s.duty(&e).await {
                        break e.to_string();
                    }
                }
                Wake::Ev(Ok(Ev::Header)) => {}
                Wake::Ev(Ok(Ev::Close)) => break "stream closed".into(),
                Wake::Ev(Err(e)) => break e.to_string(),
                Wake::Timer => {}
                Wake::Signal => return true,
            }
        };
        cx.stats.odd("idle_dropped", format!("{}: {why}", o.user));
        match cx.login_until(&o, &cx.stop).await {
            Some((again, _)) => s = again,
            None => return false,
        }
    }
}

/// Logs in the idle sessions, `concurrency` at a time, and starts their tasks.
async fn open_idle(cx: &Rc<Cx>) -> Vec<smol::Task<bool>> {
    let n = cx.layout.idle;
    let next = Rc::new(Cell::new(1usize));
    let tasks = Rc::new(RefCell::new(Vec::with_capacity(n)));
    let workers: Vec<_> = (0..cx.args.concurrency.max(1))
        .map(|_| {
            let (cx, next, tasks) = (cx.clone(), next.clone(), tasks.clone());
            cx.ex.spawn(async move {
                loop {
                    let k = next.get();
                    if k > n {
                        break;
                    }
                    next.set(k + 1);
                    let o = Opts {
                        sm: k.is_multiple_of(4).then_some(true),
                        ..cx.opts(k)
                    };
                    match bounded(cx.args.timeout, "login", login(&cx, &o)).await {
                        Ok((s, _)) => {
                            let t = cx.ex.spawn(idle_session(cx.clone(), k, s));
                            tasks.borrow_mut().push(t);
                        }
                        Err(e) => cx
                            .stats
                            .odd("idle_login_failures", format!("{}: {e}", o.user)),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await;
    }
    tasks.take()
}

// ---------------------------------------------------------------------------------------------
// Pairs

/// Sends numbered messages to the pair's receiver at the pair's share of `--rate`. With
/// XEP-0198, asks for an acknowledgement every ten, and at the end once more, for all.
async fn sender(cx: Rc<Cx>, g: usize, track: Rc<Track>, sm: bool, mut s: Sess) {
    let to = cx.jid(cx.layout.receiver(g));
    let o = Opts {
        sm: sm.then_some(false),
        ..cx.opts(cx.layout.sender(g))
    };
    let interval = Duration::from_secs_f64(cx.args.pairs as f64 / cx.args.rate());
    let mut next_at = cx.start.get() + interval.mul_f64(g as f64 / cx.args.pairs as f64);
    // Once stopping: until when the last acknowledgement may take.
    let mut stopping: Option<Instant> = None;
    let all_acked = |s: &Sess| {
        s.sm.as_ref()
            .is_none_or(|sm| sm.unacked.iter().all(Option::is_none))
    };
    loop {
        let w = match stopping {
            None => next_or(&mut s, Some(next_at), &cx.stop).await,
            Some(until) if !track.finished.get() => next_or(&mut s, Some(until), &cx.done).await,
            Some(_) => next_or(&mut s, None, &cx.done).await,
        };
        let lost: String = match w {
            Wake::Timer if stopping.is_none() => {
                let seq = track.next_seq();
                let mut text = numbered(&to, "m", seq, "");
                if let Some(st) = &mut s.sm {
                    st.unacked.push_back(Some(seq));
                    if seq.is_multiple_of(10) {
                        let _ = write!(text, "<r xmlns='{SM}'/>");
                    }
                }
                cx.stats.inc("msgs_sent");
                next_at += interval;
                // Behind by more than a second (a stall of this client): no catching up in a burst.
                let now = Instant::now();
                if next_at + Duration::from_secs(1) < now {
                    next_at = now;
                }
                match s.send(&text).await {
                    Ok(()) => continue,
                    Err(e) => e.to_string(),
                }
            }
            Wake::Timer => {
                cx.stats
                    .odd("sender_final_ack_timeout", cx.user(cx.layout.sender(g)));
                track.finished.set(true);
                continue;
            }
            Wake::Signal if stopping.is_none() => {
                stopping = Some(Instant::now() + Duration::from_secs_f64(cx.args.timeout));
                if sm {
                    match s.send(&format!("<r xmlns='{SM}'/>")).await {
                        Ok(()) => continue,
                        Err(e) => e.to_string(),
                    }
                } else {
                    track.finished.set(true);
                    continue;
                }
            }
            Wake::Signal => return,
            Wake::Ev(Ok(Ev::El(e))) => {
                if name(&e) == b"stream:error" {
                    first_child(&e)
                } else {
                    if name(&e) == b"message" {
                        match (attr(&e, "type"), id_seq(&e, "m")) {
                            (Some("error"), Some(seq)) => {
                                track.bounced(seq);
                                cx.stats.inc("msgs_bounced");
                            }
                            _ => cx.stats.odd(
                                "sender_unexpected",
                                String::from_utf8_lossy(&e[..e.len().min(300)]),
                            ),
                        }
                    }
                    match s.duty(&e).await {
                        Ok(acked) => {
                            for seq in acked {
                                track.ack(seq);
                            }
                            if stopping.is_some() && all_acked(&s) {
                                track.finished.set(true);
                            }
                            continue;
                        }
                        Err(e) => e.to_string(),
                    }
                }
            }
            Wake::Ev(Ok(Ev::Header)) => continue,
            Wake::Ev(Ok(Ev::Close)) => "stream closed".into(),
            Wake::Ev(Err(e)) => e.to_string(),
        };
        // What was not acknowledged stays so: it may or may not have arrived.
        cx.stats
            .odd("sender_dropped", format!("{}: {lost}", o.user));
        let until = if stopping.is_some() {
            &cx.done
        } else {
            &cx.stop
        };
        match cx.login_until(&o, until).await {
            Some((again, _)) => s = again,
            None if stopping.is_none() => {
                stopping = Some(Instant::now());
                track.finished.set(true);
                match cx.login_until(&o, &cx.done).await {
                    Some((again, _)) => s = again,
                    None => return,
                }
            }
            None => return,
        }
        if stopping.is_some() {
            track.finished.set(true);
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Leave {
    /// The connection drops; the client resumes within seconds.
    Resume,
    /// The connection drops; the client resumes after 20-60 s, with messages held meanwhile.
    AwayResume,
    /// The client leaves and logs in again at once.
    Fresh,
    /// The client leaves for 20-60 s (messages go to offline storage) and logs in again.
    AwayOffline,
}

/// Receives the pair's messages, and leaves and comes back as described in the module header.
async fn receiver(cx: Rc<Cx>, g: usize, track: Rc<Track>, sm: bool, mut s: Sess) {
    let o = Opts {
        sm: sm.then_some(true),
        ..cx.opts(cx.layout.receiver(g))
    };
    let timeout = cx.args.timeout;
    let mut stopping = cx.stopped();
    loop {
        let churn_at = Instant::now() + exponential_secs(cx.args.churn_secs);
        let leave = loop {
            let w = if stopping {
                next_or(&mut s, None, &cx.done).await
            } else {
                next_or(&mut s, Some(churn_at), &cx.stop).await
            };
            match w {
                Wake::Ev(Ok(Ev::El(e))) => {
                    match name(&e) {
                        b"stream:error" => {
                            cx.stats.odd("receiver_dropped", first_child(&e));
                            break None;
                        }
                        b"message" => arrived(&cx, &track, &e, "msgs_received"),
                        _ => {}
                    }
                    if let Err(e) = s.duty(&e).await {
                        cx.stats.odd("receiver_dropped", e);
                        break None;
                    }
                }
                Wake::Ev(Ok(Ev::Header)) => {}
                Wake::Ev(Ok(Ev::Close)) => {
                    cx.stats.odd("receiver_dropped", "stream closed");
                    break None;
                }
                Wake::Ev(Err(e)) => {
                    cx.stats.odd("receiver_dropped", e);
                    break None;
                }
                Wake::Timer => {
                    let r = rand_u64();
                    break Some(match (sm, r % 4) {
                        (true, 0) => Leave::Resume,
                        (true, 1) => Leave::AwayResume,
                        (_, 2) | (false, 0) => Leave::Fresh,
                        _ => Leave::AwayOffline,
                    });
                }
                Wake::Signal if stopping => return,
                Wake::Signal => stopping = true,
            }
        };
        let resumable = s.sm.as_ref().and_then(|sm| Some((sm.id.clone()?, sm.h)));
        track.note(format!(
            "leaves: {leave:?} h={:?} (sent so far {})",
            s.sm.as_ref().map(|sm| sm.h),
            track.sent.get()
        ));
        let mut resume = None;
        let away = match leave {
            None => {
                resume = resumable;
                Duration::ZERO
            }
            Some(how @ (Leave::Resume | Leave::AwayResume)) => {
                cx.stats.inc(&format!("churn_{how:?}"));
                resume = resumable;
                drop(s);
                match how {
                    Leave::Resume => uniform_secs(0.0, 3.0),
                    _ => uniform_secs(20.0, 60.0),
                }
            }
            Some(how @ (Leave::Fresh | Leave::AwayOffline)) => {
                cx.stats.inc(&format!("churn_{how:?}"));
                if sm {
                    if let Err(e) = s.settle(timeout).await {
                        cx.stats.odd("receiver_settle_failed", e);
                    }
                    if matches!(how, Leave::AwayOffline)
                        && let Err(e) = s.close(timeout, |_| {}).await
                    {
                        cx.stats.odd("receiver_close_failed", e);
                    }
                } else if let Err(e) = s
                    .close(timeout, |e| {
                        if name(e) == b"message" {
                            arrived(&cx, &track, e, "msgs_received");
                        }
                    })
                    .await
                {
                    cx.stats.odd("receiver_close_failed", e);
                }
                drop(s);
                match how {
                    Leave::Fresh => Duration::ZERO,
                    _ => uniform_secs(20.0, 60.0),
                }
            }
        };
        if !stopping && sleep_or(away, &cx.stop).await {
            stopping = true;
        }
        let asked = resume.is_some();
        let o = Opts {
            resume,
            ..o.clone()
        };
        let Some((again, resumed)) = cx.login_until(&o, &cx.done).await else {
            return;
        };
        match (asked, resumed) {
            (true, true) => cx.stats.inc("resumed"),
            (true, false) => cx.stats.odd("resume_failed", &o.user),
            _ => cx.stats.inc("fresh_logins"),
        }
        track.note(format!(
            "back: resumed={resumed} (asked {asked}) (sent so far {})",
            track.sent.get()
        ));
        s = again;
    }
}

/// Logs in, stays a while, and drops or leaves, over and over.
async fn churner(cx: Rc<Cx>, c: usize) {
    let sm = c.is_multiple_of(2);
    let o = Opts {
        sm: sm.then_some(true),
        ..cx.opts(cx.layout.churner(c))
    };
    let mut resume = None;
    loop {
        let asked = resume.is_some();
        let o = Opts {
            resume: resume.take(),
            ..o.clone()
        };
        let Some((mut s, resumed)) = cx.login_until(&o, &cx.stop).await else {
            return;
        };
        match (asked, resumed) {
            (true, true) => cx.stats.inc("churner_resumed"),
            (true, false) => cx.stats.odd("resume_failed", &o.user),
            _ => cx.stats.inc("churner_logins"),
        }
        let stay = uniform_secs(0.5, 1.5).mul_f64(cx.args.churn_secs / 4.0);
        let leave_at = Instant::now() + stay;
        let mut dropped = false;
        loop {
            match next_or(&mut s, Some(leave_at), &cx.stop).await {
                Wake::Ev(Ok(Ev::El(e))) if name(&e) == b"stream:error" => {
                    cx.stats.odd("churner_dropped", first_child(&e));
                    dropped = true;
                    break;
                }
                Wake::Ev(Ok(Ev::El(e))) => {
                    if let Err(e) = s.duty(&e).await {
                        cx.stats.odd("churner_dropped", e);
                        dropped = true;
                        break;
                    }
                }
                Wake::Ev(Ok(Ev::Header)) => {}
                Wake::Ev(Ok(Ev::Close)) | Wake::Ev(Err(_)) => {
                    cx.stats.odd("churner_dropped", "stream closed");
                    dropped = true;
                    break;
                }
                Wake::Timer => break,
                Wake::Signal => {
                    let _ = s.close(cx.args.timeout, |_| {}).await;
                    return;
                }
            }
        }
        if dropped {
            continue;
        }
        match rand_u64() % 3 {
            0 => {
                cx.stats.inc("churner_closed");
                let _ = s.close(cx.args.timeout, |_| {}).await;
            }
            1 if sm => {
                cx.stats.inc("churner_dropped_to_resume");
                resume = s.sm.as_ref().and_then(|sm| Some((sm.id.clone()?, sm.h)));
                drop(s);
            }
            _ => {
                cx.stats.inc("churner_dropped_connection");
                drop(s);
            }
        }
        if sleep_or(uniform_secs(0.0, 5.0), &cx.stop).await {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Attacks

/// Reads until a stream error (its condition), the end of the stream ("closed") or an error.
async fn stream_error<S: smol::io::AsyncRead + Unpin>(
    s: &mut S,
    split: &mut Splitter,
    evs: &mut VecDeque<Ev>,
    buf: &mut [u8],
) -> String {
    loop {
        match read_ev(s, split, evs, buf).await {
            Ok(Ev::El(e)) if name(&e) == b"stream:error" => return first_child(&e),
            Ok(Ev::Close) => return "closed".into(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return "closed".into(),
            Err(e) => return format!("read error {}", e.kind()),
        }
    }
}

/// Messages a lenient reader once relayed and a recipient's XML parser refuses, with the
/// stream error each must get.
fn invalid_message(to: &str, k: u64) -> (Vec<u8>, &'static str) {
    let message = |inner: &[u8]| {
        let open = format!("<message to='{to}' type='chat' id='bad'>");
        [open.as_bytes(), inner, b"</message>"].concat()
    };
    match k % 7 {
        0 => (message(b"<body>a&#1;b</body>"), "not-well-formed"),
        1 => (message(b"<body>a\x01b</body>"), "not-well-formed"),
        2 => (
            message("<body>a\u{FFFE}b</body>".as_bytes()),
            "not-well-formed",
        ),
        3 => (message(b"<body>hi</body><x\"y\"/>"), "not-well-formed"),
        4 => (message(b"<body>hi</body><a<b/>"), "not-well-formed"),
        5 => (message(b"<foo:body>hi</foo:body>"), "bad-namespace-prefix"),
        _ => (
            format!("<message to='{to}' type='chat' foo:x='1'><body>hi</body></message>")
                .into_bytes(),
            "bad-namespace-prefix",
        ),
    }
}

/// Invalid XML on a logged-in stream (addressed to a receiver, who would count it if it got
/// through): the stream must end with the right error.
async fn bad_xml(cx: &Cx, k: u64) -> std::io::Result<(bool, String)> {
    let (stanza, want) = invalid_message(&cx.jid(cx.layout.receiver(0)), k);
    let o = Opts {
        presence: false,
        ..cx.opts(cx.layout.attack(BAD_XML))
    };
    let (mut s, _) = login(cx, &o).await?;
    s.s.write_all(&stanza).await?;
    s.s.flush().await?;
    let got = stream_error(&mut s.s, &mut s.split, &mut s.evs, &mut s.buf).await;
    Ok((got == want, got))
}

/// The first flight of a TLS client: a ClientHello record.
fn client_hello(domain: &str) -> std::io::Result<Vec<u8>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = ServerName::try_from(domain.to_owned()).map_err(|_| bad("bad domain"))?;
    let mut tls =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let mut hello = Vec::new();
    tls.write_tls(&mut hello)?;
    Ok(hello)
}

/// A TLS ClientHello (or, every other time, an HTTP request) to the STARTTLS port, from a
/// stranger's address: `not-well-formed` at once, not at the login timeout.
async fn junk(cx: &Cx, k: u64) -> std::io::Result<(bool, String)> {
    let bytes = match k % 2 {
        0 => client_hello(&cx.args.domain)?,
        _ => b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
    };
    let mut tcp = connect(cx.addr, Some(cx.next_source()), None).await?;
    tcp.write_all(&bytes).await?;
    tcp.flush().await?;
    let (mut split, mut evs, mut buf) = (Splitter::default(), VecDeque::new(), vec![0u8; 4096]);
    let got = bounded(10.0, "answer to junk", async {
        Ok(stream_error(&mut tcp, &mut split, &mut evs, &mut buf).await)
    })
    .await?;
    Ok((got == "not-well-formed", got))
}

/// 200 SASL aborts in one go from a stranger's address: the stream must end (aborts count as
/// failed attempts).
async fn abort_flood(cx: &Cx) -> std::io::Result<(bool, String)> {
    let mut s = open_tls(cx, Some(cx.next_source()), None).await?;
    let flood = format!("<abort xmlns='{SASL}'/>").repeat(200);
    // The server may close before it has read it all.
    let _ = s.send(&flood).await;
    let got = bounded(cx.args.timeout, "end of the abort flood", async {
        Ok(stream_error(&mut s.s, &mut s.split, &mut s.evs, &mut s.buf).await)
    })
    .await?;
    Ok((got == "policy-violation", got))
}

/// Three wrong PLAIN passwords for a receiver's or churner's account from a stranger's
/// address: each refused (`temporary-auth-failure` once the address has failed too often),
/// then the stream ends. The accounts' owners must never notice.
async fn wrong_password(cx: &Cx, k: u64) -> std::io::Result<(bool, String)> {
    let targets = cx.layout.pairs + cx.layout.churners;
    let i = (k % targets as u64) as usize;
    let user = match i < cx.layout.pairs {
        true => cx.user(cx.layout.receiver(i)),
        false => cx.user(cx.layout.churner(i - cx.layout.pairs)),
    };
    let mut s = open_tls(cx, Some(cx.next_source()), None).await?;
    let mut refusals = Vec::new();
    for _ in 0..3 {
        let creds = B64.encode(format!("\0{user}\0not-the-password"));
        s.send(&format!(
            "<auth xmlns='{SASL}' mechanism='PLAIN'>{creds}</auth>"
        ))
        .await?;
        let e = s.expect(&[b"failure", b"success"]).await?;
        if name(&e) == b"success" {
            return Ok((false, "success".into()));
        }
        let why = first_child(&e);
        if why == "temporary-auth-failure" {
            cx.stats.inc("attack_wrong_password_throttled");
        }
        refusals.push(why);
    }
    let end = bounded(cx.args.timeout, "end of the stream", async {
        Ok(stream_error(&mut s.s, &mut s.split, &mut s.evs, &mut s.buf).await)
    })
    .await?;
    let ok = end == "policy-violation"
        && refusals
            .iter()
            .all(|r| r == "not-authorized" || r == "temporary-auth-failure");
    Ok((ok, end))
}

/// Directed presence to 2,000 made-up addresses (half on this server, half elsewhere), a
/// ping to wait for it all to be processed, then the end of the stream, which withdraws it.
/// Past `max_directed_presence` (1,000) each must be refused.
async fn directed_presence(cx: &Cx, k: u64) -> std::io::Result<(bool, String)> {
    let o = Opts {
        presence: false,
        ..cx.opts(cx.layout.attack(DIRECTED))
    };
    let (mut s, _) = login(cx, &o).await?;
    for chunk in 0..20 {
        let batch: String = (0..100)
            .map(|i| match i % 2 {
                0 => format!(
                    "<presence to='made-up-{k}-{chunk}-{i}@{}'/>",
                    cx.args.domain
                ),
                _ => format!("<presence to='someone@made-up-{k}-{chunk}-{i}.example'/>"),
            })
            .collect();
        s.send(&batch).await?;
    }
    s.send(&format!(
        "<iq type='get' id='dp-sync' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
        cx.args.domain
    ))
    .await?;
    let mut refused = 0u64;
    bounded(cx.args.timeout, "directed presence", async {
        loop {
            let e = s.expect(&[b"presence", b"iq"]).await?;
            if name(&e) == b"iq" && attr(&e, "id") == Some("dp-sync") {
                return Ok(());
            }
            if find(&e, b"resource-constraint").is_some() {
                refused += 1;
            }
        }
    })
    .await?;
    s.close(cx.args.timeout, |_| {}).await?;
    cx.stats.add("attack_directed_presence_refused", refused);
    Ok((refused > 0, format!("refused_{}", refused > 0)))
}

/// A message larger than `max_stanza_bytes` (256 KiB), sent until the server stops taking it:
/// `policy-violation`.
async fn oversized(cx: &Cx) -> std::io::Result<(bool, String)> {
    let o = Opts {
        presence: false,
        ..cx.opts(cx.layout.attack(OVERSIZED))
    };
    let (s, _) = login(cx, &o).await?;
    let Sess {
        s,
        mut split,
        mut evs,
        mut buf,
        ..
    } = s;
    let (mut r, mut w) = smol::io::split(s);
    let reader = cx
        .ex
        .spawn(async move { stream_error(&mut r, &mut split, &mut evs, &mut buf).await });
    let start = format!(
        "<message to='{}' type='chat'><body>",
        cx.jid(cx.layout.receiver(0))
    );
    let chunk = vec![b'a'; 16 * 1024];
    let writing = async {
        w.write_all(start.as_bytes()).await?;
        for _ in 0..32 {
            w.write_all(&chunk).await?;
            w.flush().await?;
        }
        std::future::pending::<std::io::Result<String>>().await
    };
    // The writes end when the server closes (or has read 512 KiB); the reader's answer counts.
    let got = bounded(
        cx.args.timeout,
        "answer to an oversized stanza",
        async { Ok(reader.await) }.or(async {
            let _ = writing.await;
            std::future::pending().await
        }),
    )
    .await?;
    Ok((got == "policy-violation", got))
}

async fn attack(cx: Rc<Cx>, kind: u64, k: u64) {
    let (label, r) = match kind {
        0 => ("bad_xml", bad_xml(&cx, k).await),
        1 => ("junk_on_starttls", junk(&cx, k).await),
        2 => ("abort_flood", abort_flood(&cx).await),
        3 => ("wrong_password", wrong_password(&cx, k).await),
        4 => ("directed_presence", directed_presence(&cx, k).await),
        _ => ("oversized", oversized(&cx).await),
    };
    cx.stats.inc(&format!("attack_{label}"));
    match r {
        Ok((true, _)) => {}
        Ok((false, got)) => cx
            .stats
            .odd("attacks_unexpected", format!("{label}: {got}")),
        Err(e) => cx.stats.odd("attacks_unexpected", format!("{label}: {e}")),
    }
}

/// Launches an attack every `--attack-secs`, the kinds in turn.
async fn attacks(cx: Rc<Cx>) {
    let mut running: Vec<smol::Task<()>> = Vec::new();
    let mut next = cx.start.get();
    for round in 0u64.. {
        if sleep_or(next.saturating_duration_since(Instant::now()), &cx.stop).await {
            break;
        }
        next += Duration::from_secs_f64(cx.args.attack_secs);
        running.retain(|t| !t.is_finished());
        if running.len() >= 8 {
            cx.stats
                .odd("attacks_skipped", "eight attacks still running");
            continue;
        }
        running.push(cx.ex.spawn(attack(cx.clone(), round % 6, round / 6)));
    }
    for t in running {
        t.await;
    }
}

/// A logged-in session with XEP-0198 that sends numbered messages to an attacker's account,
/// records which the server acknowledges and which come back as errors, and answers the
/// server's pings and acknowledgement requests meanwhile.
struct Feeder {
    w: Rc<smol::lock::Mutex<smol::io::WriteHalf<Tls>>>,
    sm: Rc<RefCell<Sm>>,
    synced: Receiver<()>,
    reader: smol::Task<()>,
}

impl Feeder {
    async fn start(
        cx: &Rc<Cx>,
        k: usize,
        track: Rc<Track>,
        prefix: &'static str,
    ) -> std::io::Result<Feeder> {
        let o = Opts {
            presence: false,
            sm: Some(false),
            ..cx.opts(k)
        };
        let (s, _) = login(cx, &o).await?;
        let Sess {
            s,
            mut split,
            mut evs,
            mut buf,
            sm,
        } = s;
        let sm = Rc::new(RefCell::new(sm.ok_or_else(|| bad("no stream management"))?));
        let (mut r, w) = smol::io::split(s);
        let w = Rc::new(smol::lock::Mutex::new(w));
        let (synced_tx, synced) = smol::channel::bounded(1);
        let (cx, w2, sm2) = (cx.clone(), w.clone(), sm.clone());
        let reader = cx.clone().ex.spawn(async move {
            loop {
                let e = match read_ev(&mut r, &mut split, &mut evs, &mut buf).await {
                    Ok(Ev::El(e)) => e,
                    Ok(Ev::Header) => continue,
                    Ok(Ev::Close) => {
                        cx.stats.odd("feeder_dropped", "stream closed");
                        return;
                    }
                    Err(e) => {
                        cx.stats.odd("feeder_dropped", e);
                        return;
                    }
                };
                if is_stanza(&e) {
                    sm2.borrow_mut().h += 1;
                }
                let reply = match name(&e) {
                    b"message" if attr(&e, "type") == Some("error") => {
                        if let Some(seq) = id_seq(&e, prefix) {
                            track.bounced(seq);
                        }
                        continue;
                    }
                    b"iq" if attr(&e, "type") == Some("get") => {
                        sm2.borrow_mut().unacked.push_back(None);
                        format!(
                            "<iq type='result' id='{}' to='{}'/>",
                            attr(&e, "id").unwrap_or_default(),
                            attr(&e, "from").unwrap_or_default()
                        )
                    }
                    b"iq" if attr(&e, "id") == Some("sync") => {
                        let _ = synced_tx.try_send(());
                        continue;
                    }
                    b"r" => format!("<a xmlns='{SM}' h='{}'/>", sm2.borrow().h as u32),
                    b"a" => {
                        let h: u32 = attr(&e, "h").and_then(|h| h.parse().ok()).unwrap_or(0);
                        let mut sm = sm2.borrow_mut();
                        let n = (h.wrapping_sub(sm.acked) as usize).min(sm.unacked.len());
                        sm.acked = h;
                        for seq in sm.unacked.drain(..n).flatten() {
                            track.ack(seq);
                        }
                        continue;
                    }
                    b"stream:error" => {
                        cx.stats.odd("feeder_dropped", first_child(&e));
                        return;
                    }
                    _ => continue,
                };
                let mut w = w2.lock().await;
                let _ = w.write_all(reply.as_bytes()).await;
                let _ = w.flush().await;
            }
        });
        Ok(Feeder {
            w,
            sm,
            synced,
            reader,
        })
    }

    /// Sends the numbered messages `(seq, stanza)`, and asks for an acknowledgement.
    async fn send(&self, batch: &[(u64, String)]) -> std::io::Result<()> {
        let mut w = self.w.lock().await;
        let mut text = String::new();
        for (seq, m) in batch {
            self.sm.borrow_mut().unacked.push_back(Some(*seq));
            text += m;
        }
        let _ = write!(text, "<r xmlns='{SM}'/>");
        w.write_all(text.as_bytes()).await?;
        w.flush().await
    }

    /// Waits until the server has processed everything sent so far (a ping's answer).
    async fn sync(&self, cx: &Cx) -> std::io::Result<()> {
        {
            let mut w = self.w.lock().await;
            self.sm.borrow_mut().unacked.push_back(None);
            let ping = format!(
                "<iq type='get' id='sync' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
                cx.args.domain
            );
            w.write_all(ping.as_bytes()).await?;
            w.flush().await?;
        }
        bounded(cx.args.timeout, "feeder sync", async {
            self.synced.recv().await.map_err(|_| bad("feeder gone"))
        })
        .await
    }
}

/// Logs in as `k` (without XEP-0198), sends presence, which brings what offline storage holds,
/// and pings to know when it has all come; then leaves.
async fn fetch(cx: &Cx, k: usize, track: &Track) -> std::io::Result<()> {
    let (mut s, _) = login(cx, &cx.opts(k)).await?;
    s.send(&format!(
        "<iq type='get' id='fetch' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
        cx.args.domain
    ))
    .await?;
    bounded(cx.args.timeout, "offline messages", async {
        loop {
            let e = s.expect(&[b"message", b"iq"]).await?;
            if name(&e) == b"message" {
                arrived(cx, track, &e, "attack_msgs_received");
            } else if attr(&e, "id") == Some("fetch") {
                return Ok(());
            }
        }
    })
    .await?;
    s.close(cx.args.timeout, |e| {
        if name(e) == b"message" {
            arrived(cx, track, e, "attack_msgs_received");
        }
    })
    .await
}

/// A client that reads but never acknowledges (XEP-0198) while 2,100 messages come for it:
/// past `max_unacked` (1,000) it gets no more, past its queue it is disconnected with
/// `policy-violation`, and what it did not acknowledge goes to offline storage or back to the
/// sender, fetched at the start of the next round.
async fn never_acks(
    cx: &Rc<Cx>,
    feeder: &Feeder,
    track: &Track,
) -> std::io::Result<(bool, String)> {
    let k = cx.layout.attack(NEVER_ACKS);
    fetch(cx, k, track).await?;
    let o = Opts {
        sm: Some(false),
        ..cx.opts(k)
    };
    let (mut s, _) = login(cx, &o).await?;
    let reader = cx
        .ex
        .spawn(async move { stream_error(&mut s.s, &mut s.split, &mut s.evs, &mut s.buf).await });
    let to = format!("{}/soak", cx.jid(k));
    for _ in 0..21 {
        let batch: Vec<_> = (0..100)
            .map(|_| {
                let seq = track.next_seq();
                (seq, numbered(&to, "z", seq, ""))
            })
            .collect();
        feeder.send(&batch).await?;
    }
    let got = bounded(cx.args.timeout, "never-acknowledging client's end", async {
        Ok(reader.await)
    })
    .await?;
    Ok((got == "policy-violation", got))
}

/// `a` as /proc/net/tcp writes it.
fn proc_addr(a: SocketAddr) -> Option<String> {
    match a {
        SocketAddr::V4(v) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v.ip().octets()),
            v.port()
        )),
        SocketAddr::V6(_) => None,
    }
}

/// The state (as /proc/net/tcp numbers them: 1 established, 4 FIN-WAIT-1, ...) of the TCP
/// connection from `local` to `remote` on this machine, if it is still there.
fn tcp_state(local: SocketAddr, remote: SocketAddr) -> Option<u8> {
    let (l, r) = (proc_addr(local)?, proc_addr(remote)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let mut f = line.split_whitespace().skip(1);
        let (a, b, st) = (f.next()?, f.next()?, f.next()?);
        if a == l && b == r {
            u8::from_str_radix(st, 16).ok()
        } else {
            None
        }
    })
}

/// A client (with XEP-0198, and so with an exact account of what it got) that stops reading
/// while 6 MiB of messages come for it, more than the kernel's buffers on the way hold (at
/// most 4 MiB of send buffer, by default): the server's writes stall and the rest waits in its
/// memory until, taking nothing for `write_timeout_secs`, it gives up and closes the
/// connection; everything unacknowledged goes to offline storage (fetched at the next round)
/// or back to the sender. The client, whose own socket shows nothing of that until it reads,
/// watches the server's side of the connection in /proc/net/tcp, and then reads to the end,
/// counting nothing: it acknowledged none of it.
async fn stops_reading(
    cx: &Rc<Cx>,
    feeder: &Feeder,
    track: &Track,
) -> std::io::Result<(bool, String)> {
    let k = cx.layout.attack(STOPS_READING);
    fetch(cx, k, track).await?;
    let o = Opts {
        rcvbuf: Some(4096),
        sm: Some(false),
        ..cx.opts(k)
    };
    let (mut s, _) = login(cx, &o).await?;
    let to = format!("{}/soak", cx.jid(k));
    let filler = "x".repeat(64 * 1024);
    for _ in 0..96 {
        let seq = track.next_seq();
        feeder
            .send(&[(seq, numbered(&to, "x", seq, &filler))])
            .await?;
    }
    // The server reads the sender at its rate: the stall starts once it has taken it all.
    feeder.sync(cx).await?;
    let t0 = Instant::now();
    let tcp = s.s.get_ref().0;
    let (local, server) = (tcp.local_addr()?, tcp.peer_addr()?);
    // The kernel's zero-window probes move a few bytes now and then, each restarting the
    // server's clock, until their backoff outgrows it: this can take minutes.
    let closed = loop {
        if tcp_state(server, local) != Some(1) {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            break false;
        }
        Timer::after(Duration::from_secs(1)).await;
    };
    let secs = t0.elapsed().as_secs_f64();
    cx.stats
        .max("attack_stops_reading_close_secs_max", secs as u64);
    socket2::SockRef::from(tcp).set_recv_buffer_size(4 << 20)?;
    let mut read = 0;
    let drained = bounded(cx.args.timeout, "drain", async {
        loop {
            match s.next().await {
                Ok(Ev::El(e)) if name(&e) == b"message" => read += 1,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    let what = match (closed, drained) {
        (true, Ok(())) => format!("closed after {secs:.0} s"),
        (true, Err(e)) => format!("closed after {secs:.0} s, then {e}"),
        (false, _) => format!("still open after {secs:.0} s"),
    };
    cx.stats.add("attack_stops_reading_msgs_read", read);
    Ok((closed, what))
}

#[derive(Clone, Copy, PartialEq)]
enum Heavy {
    NeverAcks,
    StopsReading,
}

/// Runs rounds of a heavy attack every `period` seconds, the last starting at least `length`
/// seconds before the end of the run; then fetches what is left in offline storage until every
/// message is accounted for.
async fn heavy(cx: Rc<Cx>, kind: Heavy) -> Rc<Track> {
    let (target, feeder_k, prefix, period, length, label) = match kind {
        Heavy::NeverAcks => (NEVER_ACKS, NEVER_ACKS_FEEDER, "z", 60.0, 30.0, "never_acks"),
        Heavy::StopsReading => (
            STOPS_READING,
            STOPS_READING_FEEDER,
            "x",
            240.0,
            60.0,
            "stops_reading",
        ),
    };
    let track = Rc::new(Track::default());
    let mut feeder: Option<Feeder> = None;
    let mut next = cx.start.get();
    loop {
        if sleep_or(next.saturating_duration_since(Instant::now()), &cx.stop).await {
            break;
        }
        if Instant::now() + Duration::from_secs_f64(length) > cx.end.get() {
            break;
        }
        next = (next + Duration::from_secs_f64(period)).max(Instant::now());
        // The sender is a client like any other: if the server dropped it, it logs in again.
        if feeder.as_ref().is_none_or(|f| f.reader.is_finished()) {
            let k = cx.layout.attack(feeder_k);
            match Feeder::start(&cx, k, track.clone(), prefix).await {
                Ok(f) => feeder = Some(f),
                Err(e) => {
                    cx.stats
                        .odd("attacks_unexpected", format!("{label} feeder: {e}"));
                    continue;
                }
            }
        }
        let Some(feeder) = &feeder else {
            continue;
        };
        let r = match kind {
            Heavy::NeverAcks => never_acks(&cx, feeder, &track).await,
            Heavy::StopsReading => stops_reading(&cx, feeder, &track).await,
        };
        cx.stats.inc(&format!("attack_{label}"));
        match r {
            Ok((true, _)) => {}
            Ok((false, got)) => cx
                .stats
                .odd("attacks_unexpected", format!("{label}: {got}")),
            Err(e) => cx.stats.odd("attacks_unexpected", format!("{label}: {e}")),
        }
    }
    track.finished.set(true);
    // Errors to the feeder and reroutes to offline storage may still be on their way.
    let deadline = Instant::now() + Duration::from_secs_f64(cx.args.timeout);
    loop {
        if let Err(e) = fetch(&cx, cx.layout.attack(target), &track).await {
            cx.stats
                .odd("attacks_unexpected", format!("{label} final fetch: {e}"));
        }
        if track.tally(false).lost == 0 || Instant::now() > deadline {
            break;
        }
        Timer::after(Duration::from_secs(1)).await;
    }
    drop(feeder);
    track
}

// ---------------------------------------------------------------------------------------------
// Threads

/// What a thread needs from the main one.
struct Control {
    args: Arc<Args>,
    stats: Arc<Stats>,
    /// Everyone logged in; then, start and end are set.
    barrier: Barrier,
    times: OnceLock<(Instant, Instant)>,
    stop_active: AtomicBool,
    stop_idle: AtomicBool,
}

/// A context on this thread, with `stop` and `done` closed when `flag` is set (and, for
/// `done`, when `done_too` says so).
fn context(ctl: &Arc<Control>) -> (Rc<Cx>, smol::channel::Sender<()>, smol::channel::Sender<()>) {
    let ex: &'static LocalExecutor<'static> = Box::leak(Box::new(LocalExecutor::new()));
    let addr = ctl
        .args
        .addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .expect("the address resolves");
    let (stop_tx, stop) = smol::channel::unbounded();
    let (done_tx, done) = smol::channel::unbounded();
    let cx = Rc::new(Cx {
        ex,
        args: ctl.args.clone(),
        addr,
        tls: connector(),
        stats: ctl.stats.clone(),
        layout: Layout::of(&ctl.args),
        stop,
        done,
        start: Cell::new(Instant::now()),
        end: Cell::new(Instant::now()),
        sources: Cell::new(0),
    });
    (cx, stop_tx, done_tx)
}

/// Waits (without blocking the executor) until `flag` is set.
async fn until_set(flag: impl Fn() -> bool) {
    while !flag() {
        Timer::after(Duration::from_millis(100)).await;
    }
}

/// Blocks on the barrier without holding up this thread's executor.
async fn meet(ctl: &Arc<Control>) {
    let c = ctl.clone();
    smol::unblock(move || {
        c.barrier.wait();
    })
    .await;
}

/// The idle sessions' thread: logs them in, keeps them until told to stop, and returns how
/// many were connected then.
fn idle_thread(ctl: Arc<Control>) -> usize {
    let (cx, stop_tx, done_tx) = context(&ctl);
    let ex = cx.ex;
    smol::block_on(ex.run(async {
        let tasks = open_idle(&cx).await;
        meet(&ctl).await;
        meet(&ctl).await;
        until_set(|| ctl.stop_idle.load(Relaxed)).await;
        drop((stop_tx, done_tx));
        let mut alive = 0;
        for t in tasks {
            alive += usize::from(t.await);
        }
        alive
    }))
}

/// What the traffic thread found.
#[derive(Default)]
struct ActiveOut {
    sm_pairs: Tally,
    plain_pairs: Tally,
    never_acks: Tally,
    stops_reading: Tally,
    /// Of those, acknowledged by the server to the sender and lost.
    never_acks_acked_lost: u64,
    stops_reading_acked_lost: u64,
    wind_down_secs: f64,
}

/// The thread of the pairs, churners and attacks.
fn active_thread(ctl: Arc<Control>) -> ActiveOut {
    let (cx, stop_tx, done_tx) = context(&ctl);
    let ex = cx.ex;
    smol::block_on(ex.run(async {
        let l = cx.layout;
        let mut sessions = Vec::new();
        // Receivers first: nothing goes to offline storage at the start.
        for g in 0..l.pairs {
            let sm = g.is_multiple_of(2);
            let rx = Opts {
                sm: sm.then_some(true),
                ..cx.opts(l.receiver(g))
            };
            let tx = Opts {
                sm: sm.then_some(false),
                ..cx.opts(l.sender(g))
            };
            let r = cx.login_until(&rx, &cx.stop).await;
            let s = cx.login_until(&tx, &cx.stop).await;
            sessions.push((r, s));
        }
        meet(&ctl).await;
        meet(&ctl).await;
        let (start, end) = *ctl.times.get().expect("the main thread set the times");
        cx.start.set(start);
        cx.end.set(end);
        let mut tracks = Vec::new();
        let mut pair_tasks = Vec::new();
        for (g, (r, s)) in sessions.into_iter().enumerate() {
            let (Some((r, _)), Some((s, _))) = (r, s) else {
                continue;
            };
            let sm = g.is_multiple_of(2);
            let track = Rc::new(Track::default());
            pair_tasks.push(ex.spawn(receiver(cx.clone(), g, track.clone(), sm, r)));
            pair_tasks.push(ex.spawn(sender(cx.clone(), g, track.clone(), sm, s)));
            tracks.push((sm, track));
        }
        let churners: Vec<_> = (0..l.churners)
            .map(|c| ex.spawn(churner(cx.clone(), c)))
            .collect();
        let attacks = ex.spawn(attacks(cx.clone()));
        let never = ex.spawn(heavy(cx.clone(), Heavy::NeverAcks));
        let stops = ex.spawn(heavy(cx.clone(), Heavy::StopsReading));

        until_set(|| ctl.stop_active.load(Relaxed)).await;
        let t_stop = Instant::now();
        drop(stop_tx);
        // Every acknowledged message must arrive; the senders ask for their last
        // acknowledgements and the receivers come back.
        let deadline = Instant::now() + Duration::from_secs_f64(ctl.args.timeout * 2.0);
        while Instant::now() < deadline && !tracks.iter().all(|(sm, t)| t.complete(*sm)) {
            Timer::after(Duration::from_millis(100)).await;
        }
        // Whatever is still missing: say when it was sent and what its receiver did, and look
        // for it in offline storage (from a second resource), where it would be stuck.
        let epoch = micros(start);
        for (g, (sm, t)) in tracks.iter().enumerate() {
            if t.complete(*sm) {
                continue;
            }
            t.explain(&format!("pair {g} (sm {sm})"), *sm, epoch);
            let o = Opts {
                resource: "check".into(),
                ..cx.opts(l.receiver(g))
            };
            let before = t.missing(*sm).len();
            match login(&cx, &o).await {
                Ok((mut s, _)) => {
                    let _ = s
                        .send(&format!(
                            "<iq type='get' id='check' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
                            cx.args.domain
                        ))
                        .await;
                    let _ = bounded(cx.args.timeout, "check", async {
                        loop {
                            let e = s.expect(&[b"message", b"iq"]).await?;
                            if name(&e) == b"message" {
                                arrived(&cx, t, &e, "msgs_received_late");
                            } else if attr(&e, "id") == Some("check") {
                                return Ok(());
                            }
                        }
                    })
                    .await;
                }
                Err(e) => eprintln!("soak: pair {g}: check login: {e}"),
            }
            let found = before - t.missing(*sm).len();
            if found > 0 {
                cx.stats.odd(
                    "found_late",
                    format!("pair {g}: {found} missing messages came to a second resource"),
                );
            }
        }
        drop(done_tx);
        for t in pair_tasks {
            t.await;
        }
        for t in churners {
            t.await;
        }
        attacks.await;
        let never = never.await;
        let stops = stops.await;
        let sum = |sm: bool| {
            tracks
                .iter()
                .filter(|(s, _)| *s == sm)
                .map(|(_, t)| t.tally(sm))
                .fold(Tally::default(), |a, b| Tally {
                    sent: a.sent + b.sent,
                    acked: a.acked + b.acked,
                    lost: a.lost + b.lost,
                    dup: a.dup + b.dup,
                    got: a.got + b.got,
                    bounced: a.bounced + b.bounced,
                })
        };
        ActiveOut {
            sm_pairs: sum(true),
            plain_pairs: sum(false),
            never_acks: never.tally(false),
            stops_reading: stops.tally(false),
            never_acks_acked_lost: never.tally(true).lost,
            stops_reading_acked_lost: stops.tally(true).lost,
            wind_down_secs: t_stop.elapsed().as_secs_f64(),
        }
    }))
}

// ---------------------------------------------------------------------------------------------
// Sampling and the report

struct Sample {
    secs: f64,
    rss_kib: u64,
    fds: usize,
    server_cpu: f64,
    client_cpu: f64,
    machine_cpu: f64,
}

fn sample(pid: u32, start: Instant) -> Sample {
    let (rss_kib, server_cpu) = proc_stats(pid).unwrap_or((0, 0.0));
    Sample {
        secs: start.elapsed().as_secs_f64(),
        rss_kib,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
        server_cpu,
        client_cpu: proc_stats(std::process::id()).map_or(0.0, |s| s.1),
        machine_cpu: machine_cpu(),
    }
}

/// CPU of everything but the server and this process between two samples, in percent of one
/// core.
fn other_pct(a: &Sample, b: &Sample) -> f64 {
    let secs = (b.secs - a.secs).max(1e-9);
    let other = (b.machine_cpu - a.machine_cpu)
        - (b.server_cpu - a.server_cpu)
        - (b.client_cpu - a.client_cpu);
    other.max(0.0) * 100.0 / secs
}

/// Least-squares slope of RSS (KiB) over time (minutes).
fn slope_kib_per_min(samples: &[&Sample]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return f64::NAN;
    }
    let mx = samples.iter().map(|s| s.secs / 60.0).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.rss_kib as f64).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for s in samples {
        let (x, y) = (s.secs / 60.0 - mx, s.rss_kib as f64 - my);
        sxy += x * y;
        sxx += x * x;
    }
    sxy / sxx
}

pub fn run(args: &Arc<Args>) -> String {
    let Some(pid) = args.server_pid else {
        eprintln!("the soak needs --server-pid, to sample the server's memory");
        std::process::exit(2);
    };
    let ctl = Arc::new(Control {
        args: args.clone(),
        stats: Arc::new(Stats::default()),
        barrier: Barrier::new(3),
        times: OnceLock::new(),
        stop_active: AtomicBool::new(false),
        stop_idle: AtomicBool::new(false),
    });
    let t0 = Instant::now();
    let before = sample(pid, t0);
    let idle = {
        let c = ctl.clone();
        std::thread::spawn(move || idle_thread(c))
    };
    let active = {
        let c = ctl.clone();
        std::thread::spawn(move || active_thread(c))
    };
    ctl.barrier.wait();
    let login_secs = t0.elapsed().as_secs_f64();
    let logged_in = sample(pid, t0);
    let duration = Duration::from_secs_f64(args.duration());
    let start = Instant::now();
    let end = start + duration;
    let _ = ctl.times.set((start, end));
    ctl.barrier.wait();
    eprintln!(
        "soak: {} sessions logged in after {login_secs:.1} s; running for {:.0} s",
        args.sessions(),
        duration.as_secs_f64()
    );
    let step = Duration::from_secs_f64(args.sample_secs);
    let mut samples = Vec::new();
    for k in 0u32.. {
        let at = (start + step * k).min(end);
        sleep_until(at);
        let s = sample(pid, start);
        eprintln!(
            "soak: t={:.0}s rss={} KiB fds={} other_cpu={:.0}%",
            s.secs,
            s.rss_kib,
            s.fds,
            samples.last().map_or(0.0, |p| other_pct(p, &s))
        );
        samples.push(s);
        if at >= end {
            break;
        }
    }
    ctl.stop_active.store(true, Relaxed);
    let out = active.join().expect("the traffic thread panicked");
    ctl.stop_idle.store(true, Relaxed);
    let alive = idle.join().expect("the idle thread panicked");
    report(
        args, &ctl.stats, &before, &logged_in, login_secs, &samples, &out, alive,
    )
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &Args,
    stats: &Stats,
    before: &Sample,
    logged_in: &Sample,
    login_secs: f64,
    samples: &[Sample],
    out: &ActiveOut,
    alive: usize,
) -> String {
    let n = args.sessions();
    let warm = args.warmup();
    let post: Vec<&Sample> = samples.iter().filter(|s| s.secs >= warm - 0.5).collect();
    let (first, last) = (&samples[0], &samples[samples.len() - 1]);
    let min = post.iter().map(|s| s.rss_kib).min().unwrap_or(0);
    let max = post.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let secs = (last.secs - first.secs).max(1e-9);
    let other_max = samples
        .windows(2)
        .map(|w| other_pct(&w[0], &w[1]))
        .fold(0.0, f64::max);
    let mut line = format!(
        "scenario=soak sessions={n} minutes={:.1} warmup_minutes={:.1} pairs={} rate={} \
         churners={} churn_secs={} attack_secs={} sample_secs={}",
        args.duration() / 60.0,
        warm / 60.0,
        args.pairs,
        args.rate(),
        args.churners,
        args.churn_secs,
        args.attack_secs,
        args.sample_secs,
    );
    let _ = write!(
        line,
        " login_secs={login_secs:.1} rss_before_kib={} rss_logged_in_kib={} \
         kib_per_session={:.2} rss_start_kib={} rss_warm_kib={} rss_end_kib={} \
         rss_post_warmup_min_kib={min} rss_post_warmup_max_kib={max} \
         rss_post_warmup_range_kib={} slope_kib_per_min={:.1} fds_end={}",
        before.rss_kib,
        logged_in.rss_kib,
        logged_in.rss_kib.saturating_sub(before.rss_kib) as f64 / n.max(1) as f64,
        first.rss_kib,
        post.first().map_or(0, |s| s.rss_kib),
        last.rss_kib,
        max - min,
        slope_kib_per_min(&post),
        last.fds,
    );
    let _ = write!(
        line,
        " server_cpu_pct={:.1} client_cpu_pct={:.1} other_cpu_pct={:.1} other_cpu_pct_max={:.1}",
        (last.server_cpu - first.server_cpu) * 100.0 / secs,
        (last.client_cpu - first.client_cpu) * 100.0 / secs,
        other_pct(first, last),
        other_max
    );
    let (sm, plain) = (out.sm_pairs, out.plain_pairs);
    let _ = write!(
        line,
        " idle_alive={alive} sm_sent={} sm_acked={} sm_lost={} sm_dup={} sm_bounced={} \
         plain_sent={} plain_lost={} plain_dup={} plain_bounced={} \
         never_acks_sent={} never_acks_acked={} never_acks_lost={} never_acks_acked_lost={} \
         never_acks_dup={} never_acks_bounced={} stops_reading_sent={} stops_reading_acked={} \
         stops_reading_lost={} stops_reading_acked_lost={} stops_reading_dup={} \
         stops_reading_bounced={} wind_down_secs={:.1}",
        sm.sent,
        sm.acked,
        sm.lost,
        sm.dup,
        sm.bounced,
        plain.sent,
        plain.lost,
        plain.dup,
        plain.bounced,
        out.never_acks.sent,
        out.never_acks.acked,
        out.never_acks.lost,
        out.never_acks_acked_lost,
        out.never_acks.dup,
        out.never_acks.bounced,
        out.stops_reading.sent,
        out.stops_reading.acked,
        out.stops_reading.lost,
        out.stops_reading_acked_lost,
        out.stops_reading.dup,
        out.stops_reading.bounced,
        out.wind_down_secs,
    );
    let counters = stats
        .0
        .lock()
        .expect("no thread panics holding the counters");
    for (k, v) in counters.iter() {
        let _ = write!(line, " {k}={v}");
    }
    drop(counters);
    let mut failures = Vec::new();
    let mut must = |ok: bool, what: &str| {
        if !ok {
            failures.push(what.to_owned());
        }
    };
    must(sm.lost == 0, "acknowledged_messages_lost");
    must(sm.sent == sm.acked, "messages_never_acknowledged");
    must(sm.dup + plain.dup == 0, "messages_duplicated");
    must(plain.lost == 0, "messages_lost");
    must(
        out.never_acks.lost + out.never_acks.dup + out.stops_reading.lost + out.stops_reading.dup
            == 0,
        "attack_messages_lost_or_duplicated",
    );
    must(alive == n, "idle_sessions_lost");
    for k in [
        "idle_login_failures",
        "idle_dropped",
        "legit_login_failures",
        "attacks_unexpected",
        "receiver_dropped",
        "receiver_errors",
        "receiver_unexpected",
        "sender_dropped",
        "sender_unexpected",
        "churner_dropped",
        "feeder_dropped",
        "resume_failed",
        "found_late",
    ] {
        must(stats.get(k) == 0, k);
    }
    if failures.is_empty() {
        line += " check=pass";
    } else {
        let _ = write!(line, " check=fail failures={}", failures.join(","));
    }
    line += "\nsamples=";
    let triples: Vec<String> = samples
        .iter()
        .map(|s| format!("{:.0}:{}:{}", s.secs, s.rss_kib, s.fds))
        .collect();
    line += &triples.join(",");
    line
}
