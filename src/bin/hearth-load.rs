//! Load generator for hearth (and any XMPP server): opens many client sessions over STARTTLS
//! or direct TLS with SCRAM-SHA-1, binds, sends presence, and runs a scenario. Each scenario
//! prints one machine-readable result line of `key=value` pairs. Loopback targets only.
//!
//! Scenarios:
//! - `idle`: opens `--sessions` sessions and reports the server's memory per session, the login
//!   rate and the server's CPU time per login; `--hold` keeps them open a while longer, for a
//!   look at the server (a heap profile) with the sessions in place.
//! - `throughput`: `--pairs` pairs (user2k-1 sends to user2k); each sender keeps at most
//!   `--window` messages in flight (sent but not yet received). Reports delivered messages per
//!   second and server CPU seconds per 1,000 delivered messages over `--duration` seconds after
//!   `--warmup` seconds.
//! - `latency`: a fixed total rate `--rate` spread evenly over the pairs; reports the
//!   send-to-receive latency (p50/p99/max) of the messages sent in the measurement window.
//! - `offline`: `--messages` messages from user1 to user2, who is not logged in; a ping after the
//!   last one times the storing (its result comes after every earlier stanza was processed).
//!   Then user2 logs in and sends initial presence, timed until all messages have arrived.
//! - `mam`: fills user1's archive (XEP-0313) with `--messages` messages to user2 (both online,
//!   `--window` in flight), waits until a first archive query has seen them all, then times
//!   `--repeats` queries each, on user1's session: the newest page of 50, a page of 50 that lies
//!   `--back` messages before the newest (reached once by paging back 250 at a time, which is
//!   timed too), and the newest page of 50 filtered `with` user2.
//! - `soak`: everything at once for `--duration` seconds (default 30 minutes): `--sessions`
//!   idle sessions, traffic between `--pairs` pairs with reconnect churn, and attacks; samples
//!   the server's memory and checks that nothing acknowledged was lost (see `soak.rs`).
//!   `--count-accounts` prints how many accounts it needs.
//!
//! - `comeback`: a phone's return after its connection dropped, through a proxy that delays
//!   each direction by `--delay-ms`: time, round trips and bytes from its TCP connect to the
//!   first message queued for it, for each of `--flows` (see `hearth-load/comeback.rs`).
//!
//! `--sm` (throughput only) enables XEP-0198 on every session after bind: each session answers
//! the server's `<r/>` with `<a h='N'/>` (N counts the message, presence and iq stanzas it has
//! received since), and senders also send their own `<r/>` after every 100 messages.
//!
//! It parses just enough XML to drive a login (waiting for known closing tags), and afterwards
//! only counts `</message>` end tags in the byte stream (across read boundaries) and reads the
//! `sequence timestamp` body of each message, which keeps the client cheap. Each message body
//! carries its send time in microseconds of a monotonic clock shared by the whole process, so
//! latency is measured on the client alone. `--threads T` runs T independent single-threaded
//! executors, each with its share of the sessions; results are merged.

use argh::FromArgs;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use hmac::{Hmac, Mac};
use rustls::pki_types::ServerName;
use sha1::Sha1;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::TcpStream;
use smol::{LocalExecutor, Timer};
use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

#[path = "hearth-load/soak.rs"]
mod soak;

#[derive(FromArgs)]
/// Opens client sessions against an XMPP server and measures it.
struct Args {
    /// server address (loopback only), e.g. 127.0.0.1:5222
    #[argh(option)]
    addr: String,
    /// use direct TLS (XEP-0368) instead of STARTTLS
    #[argh(switch)]
    direct_tls: bool,
    /// XMPP domain
    #[argh(option, default = "String::from(\"localhost\")")]
    domain: String,
    /// accounts are PREFIX1..PREFIXn
    #[argh(option, default = "String::from(\"user\")")]
    prefix: String,
    /// password of every account
    #[argh(option, default = "String::from(\"password\")")]
    password: String,
    /// scenario: idle, throughput, latency, offline, mam, soak or comeback
    #[argh(option, default = "String::from(\"idle\")")]
    scenario: String,
    /// idle and soak: number of idle sessions (and accounts; default 100, soak 10000)
    #[argh(option)]
    sessions: Option<usize>,
    /// logins in flight at once, per thread
    #[argh(option, default = "32")]
    concurrency: usize,
    /// pid of the server, to report its RSS and CPU time
    #[argh(option)]
    server_pid: Option<u32>,
    /// throughput, latency and soak: sender/receiver pairs (accounts 1..2*pairs; soak: after
    /// the idle accounts)
    #[argh(option, default = "50")]
    pairs: usize,
    /// throughput: messages in flight per sender
    #[argh(option, default = "16")]
    window: u64,
    /// latency and soak: total messages per second over all pairs (default 2000, soak 200)
    #[argh(option)]
    rate: Option<f64>,
    /// throughput and latency: seconds measured (default 10); soak: seconds run (default 1800)
    #[argh(option)]
    duration: Option<f64>,
    /// throughput and latency: seconds of traffic before the measurement window (default 2);
    /// soak: seconds of the run before memory must stay flat (default a sixth of the run)
    #[argh(option)]
    warmup: Option<f64>,
    /// offline: messages sent to the offline account (default 5000); mam: messages archived
    /// (default 1000000)
    #[argh(option)]
    messages: Option<u64>,
    /// mam: how many messages before the newest the deep page starts
    #[argh(option, default = "100000")]
    back: u64,
    /// mam: timed repetitions of each query
    #[argh(option, default = "50")]
    repeats: usize,
    /// throughput: enable XEP-0198 stream management and acknowledge
    #[argh(switch)]
    sm: bool,
    /// independent executor threads, each with its share of the sessions
    #[argh(option, default = "1")]
    threads: usize,
    /// idle: seconds to keep the sessions open after measuring (to inspect the server)
    #[argh(option, default = "0.0")]
    hold: f64,
    /// seconds after which a login, a drain or a delivery counts as failed
    #[argh(option, default = "60.0")]
    timeout: f64,
    /// soak: seconds between samples of the server's memory
    #[argh(option, default = "15.0")]
    sample_secs: f64,
    /// soak: mean seconds a churning session stays before it drops or leaves
    #[argh(option, default = "60.0")]
    churn_secs: f64,
    /// soak: accounts that only log in and out, besides the pairs' receivers
    #[argh(option, default = "20")]
    churners: usize,
    /// soak: seconds between two attacks (each kind in turn)
    #[argh(option, default = "3.0")]
    attack_secs: f64,
    /// soak: print how many accounts the scenario uses (PREFIX1..PREFIXn) and exit
    #[argh(switch)]
    count_accounts: bool,
    /// comeback: milliseconds the proxy delays each direction
    #[argh(option, default = "50")]
    delay_ms: u64,
    /// comeback: measured comebacks per flow
    #[argh(option, default = "5")]
    runs: usize,
    /// comeback: comma-separated flows (starttls-scram, tls-scram, tls-sasl2-scram, tls-fast,
    /// tls-fast-pipelined)
    #[argh(
        option,
        default = "String::from(\"starttls-scram,tls-scram,tls-sasl2-scram,tls-fast,tls-fast-pipelined\")"
    )]
    flows: String,
    /// comeback: a TLS client without the session from the last connection (a full handshake)
    #[argh(switch)]
    fresh_tls: bool,
}

impl Args {
    fn soak(&self) -> bool {
        self.scenario == "soak"
    }
    fn sessions(&self) -> usize {
        self.sessions
            .unwrap_or(if self.soak() { 10_000 } else { 100 })
    }
    fn rate(&self) -> f64 {
        self.rate
            .unwrap_or(if self.soak() { 200.0 } else { 2000.0 })
    }
    fn duration(&self) -> f64 {
        self.duration
            .unwrap_or(if self.soak() { 1800.0 } else { 10.0 })
    }
    fn warmup(&self) -> f64 {
        self.warmup.unwrap_or(if self.soak() {
            self.duration() / 6.0
        } else {
            2.0
        })
    }
}

#[path = "hearth-load/comeback.rs"]
mod comeback;

type Tls = TlsStream<TcpStream>;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the process's epoch (monotonic, shared by all threads).
fn micros(t: Instant) -> u64 {
    t.saturating_duration_since(*EPOCH.get_or_init(Instant::now))
        .as_micros() as u64
}

fn now_us() -> u64 {
    micros(Instant::now())
}

/// Accepts any certificate: the benchmark talks to servers it started itself on loopback,
/// with self-signed certificates.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn connector() -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    TlsConnector::from(Arc::new(cfg))
}

/// Reads until `needle` has arrived; returns everything read. Only for the login, where the
/// server sends nothing unasked, so nothing after the needle is lost.
async fn read_until<S: smol::io::AsyncRead + Unpin>(
    s: &mut S,
    needle: &str,
) -> std::io::Result<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if text.contains(needle) || text.contains("</stream:stream>") {
            return Ok(text.into_owned());
        }
    }
}

fn header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams'>"
    )
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// The text content of the first `<tag ...>...</tag>` in `s`.
fn content<'a>(s: &'a str, tag: &str) -> Option<&'a str> {
    let start = s.find(&format!("<{tag}"))?;
    let open_end = s[start..].find('>')? + start + 1;
    let close = s[open_end..].find(&format!("</{tag}>"))? + open_end;
    Some(&s[open_end..close])
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::other(what.to_owned())
}

/// The SCRAM-SHA-1 client-final-message (RFC 5802) answering the base64 `challenge` (the
/// server-first-message) to `first_bare` (the client-first-message without its GS2 header).
fn scram_final(password: &str, first_bare: &str, challenge: &str) -> std::io::Result<String> {
    let server_first = String::from_utf8(
        B64.decode(challenge.trim())
            .map_err(|_| bad("challenge not base64"))?,
    )
    .map_err(|_| bad("challenge not UTF-8"))?;
    comeback::scram_final(password, first_bare, &server_first)
}

/// Logs in with SCRAM-SHA-1, binds and, if `presence`, sends initial presence.
async fn login(
    args: &Args,
    tls: &TlsConnector,
    user: &str,
    presence: bool,
) -> std::io::Result<Tls> {
    let mut tcp = TcpStream::connect(&args.addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(args.domain.clone()).map_err(|_| bad("bad domain"))?;
    if !args.direct_tls {
        tcp.write_all(header(&args.domain).as_bytes()).await?;
        read_until(&mut tcp, "</stream:features>").await?;
        tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await?;
        read_until(&mut tcp, "<proceed").await?;
    }
    let mut s = tls.connect(name, tcp).await?;
    s.write_all(header(&args.domain).as_bytes()).await?;
    read_until(&mut s, "</stream:features>").await?;
    let cnonce = B64.encode(rand_bytes());
    let first_bare = format!("n={user},r={cnonce}");
    let auth = format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>{}</auth>",
        B64.encode(format!("n,,{first_bare}"))
    );
    s.write_all(auth.as_bytes()).await?;
    let reply = read_until(&mut s, "</challenge>").await?;
    let challenge = content(&reply, "challenge").ok_or_else(|| bad("no SCRAM challenge"))?;
    let response = format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        B64.encode(scram_final(&args.password, &first_bare, challenge)?)
    );
    s.write_all(response.as_bytes()).await?;
    let r = read_until(&mut s, "success").await?;
    if !r.contains("<success") {
        return Err(bad("authentication failed"));
    }
    s.write_all(header(&args.domain).as_bytes()).await?;
    read_until(&mut s, "</stream:features>").await?;
    s.write_all(
        b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
          <resource>load</resource></bind></iq>",
    )
    .await?;
    read_until(&mut s, "</iq>").await?;
    if args.sm {
        s.write_all(b"<enable xmlns='urn:xmpp:sm:3'/>").await?;
        let r = read_until(&mut s, "urn:xmpp:sm:3").await?;
        if !r.contains("<enabled") {
            return Err(bad("stream management refused"));
        }
    }
    if presence {
        s.write_all(b"<presence/>").await?;
    }
    s.flush().await?;
    Ok(s)
}

fn rand_bytes() -> [u8; 18] {
    let mut b = [0u8; 18];
    getrandom::fill(&mut b).expect("the OS random source works");
    b
}

/// (RSS in KiB, CPU seconds: utime + stime of all threads) of a process, from /proc.
fn proc_stats(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((rss, ticks as f64 / hz))
}

/// CPU seconds used by the whole machine (all cores, not idle), from /proc/stat.
fn machine_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .enumerate()
        // user nice system idle iowait irq softirq steal: all but idle and iowait.
        .filter(|(i, _)| matches!(i, 0 | 1 | 2 | 5 | 6 | 7))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// A snapshot of the server's and this process's resource use.
struct Snap {
    at: Instant,
    server: Option<(u64, f64)>,
    client_cpu: f64,
    machine_cpu: f64,
    delivered: u64,
}

impl Snap {
    fn take(args: &Args, shared: &Shared) -> Snap {
        Snap {
            at: Instant::now(),
            server: args.server_pid.and_then(proc_stats),
            client_cpu: proc_stats(std::process::id()).map_or(0.0, |s| s.1),
            machine_cpu: machine_cpu(),
            delivered: shared.delivered.load(Relaxed),
        }
    }

    /// Server CPU seconds since `before`.
    fn server_cpu(&self, before: &Snap) -> Option<f64> {
        Some(self.server?.1 - before.server?.1)
    }

    /// ` client_cpu_pct=.. other_cpu_pct=..` since `before`, in percent of one core: this
    /// process, and everything on the machine but this process and the server (noise).
    fn noise(&self, before: &Snap) -> String {
        let secs = self.at.duration_since(before.at).as_secs_f64().max(1e-9);
        let client = self.client_cpu - before.client_cpu;
        let other =
            self.machine_cpu - before.machine_cpu - client - self.server_cpu(before).unwrap_or(0.0);
        format!(
            " client_cpu_pct={:.1} other_cpu_pct={:.1}",
            client * 100.0 / secs,
            other.max(0.0) * 100.0 / secs
        )
    }
}

/// Position of the first `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        i += hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)?;
        if &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Counts occurrences of a needle (one that cannot overlap itself) in a byte stream fed in
/// pieces, including occurrences split across pieces.
struct Needle {
    needle: &'static [u8],
    tail: Vec<u8>,
}

impl Needle {
    fn new(needle: &'static [u8]) -> Needle {
        Needle {
            needle,
            tail: Vec::new(),
        }
    }

    fn count(&mut self, data: &[u8]) -> u64 {
        let keep = self.needle.len() - 1;
        let mut n = 0;
        if !self.tail.is_empty() {
            // Matches that start in the tail end within the first `keep` bytes of `data`.
            let mut joint = self.tail.clone();
            joint.extend_from_slice(&data[..data.len().min(keep)]);
            n += count_all(&joint, self.needle);
        }
        n += count_all(data, self.needle);
        if data.len() >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - keep..]);
        } else {
            self.tail.extend_from_slice(data);
            let extra = self.tail.len().saturating_sub(keep);
            self.tail.drain(..extra);
        }
        n
    }
}

fn count_all(mut hay: &[u8], needle: &[u8]) -> u64 {
    let mut n = 0;
    while let Some(i) = find(hay, needle) {
        n += 1;
        hay = &hay[i + needle.len()..];
    }
    n
}

const MESSAGE_END: &[u8] = b"</message>";

/// XEP-0198 bookkeeping of a client session: counts the stanzas and the `<r/>`s and `<a/>`s
/// the server sent (top-level elements only appear as such here: the scenarios that use it
/// receive no nested stanzas).
struct SmCount {
    stanzas: [Needle; 3],
    requests: Needle,
    acks: Needle,
    /// Stanzas received since stream management was enabled (`h`).
    h: u64,
}

impl SmCount {
    fn new() -> SmCount {
        SmCount {
            stanzas: [
                Needle::new(b"<message"),
                Needle::new(b"<presence"),
                Needle::new(b"<iq "),
            ],
            requests: Needle::new(b"<r xmlns"),
            acks: Needle::new(b"<a xmlns"),
            h: 0,
        }
    }

    /// Feeds received bytes; returns (`<r/>`s, `<a/>`s) in them.
    fn feed(&mut self, data: &[u8]) -> (u64, u64) {
        for n in &mut self.stanzas {
            self.h += n.count(data);
        }
        (self.requests.count(data), self.acks.count(data))
    }

    /// The answer to a request: `<a/>` with `h` modulo 2^32.
    fn answer(&self) -> String {
        format!("<a xmlns='urn:xmpp:sm:3' h='{}'/>", self.h as u32)
    }
}

/// Splits a byte stream fed in pieces into complete `...</message>` segments.
#[derive(Default)]
struct Scanner {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched without finding an end tag that starts there.
    scanned: usize,
}

impl Scanner {
    /// Feeds `data`, calls `each` with every segment that ends a message, returns how many.
    fn feed(&mut self, data: &[u8], mut each: impl FnMut(&[u8])) -> u64 {
        self.buf.extend_from_slice(data);
        let (mut done, mut n) = (0, 0);
        while let Some(i) = find(&self.buf[self.scanned..], MESSAGE_END) {
            let end = self.scanned + i + MESSAGE_END.len();
            each(&self.buf[done..end]);
            n += 1;
            done = end;
            self.scanned = end;
        }
        self.buf.drain(..done);
        self.scanned = self.buf.len().saturating_sub(MESSAGE_END.len() - 1);
        n
    }
}

/// The `sequence timestamp` numbers of a message body written by [`message`].
fn body_numbers(segment: &[u8]) -> Option<(u64, u64)> {
    let start = find(segment, b"<body>")? + 6;
    let len = find(&segment[start..], b"</body>")?;
    let text = std::str::from_utf8(&segment[start..start + len]).ok()?;
    let (seq, ts) = text.split_once(' ')?;
    Some((seq.parse().ok()?, ts.parse().ok()?))
}

/// Appends one chat message to `to` whose body carries `seq` and the send time.
fn message(buf: &mut String, to: &str, seq: u64, ts: u64) {
    let _ = write!(
        buf,
        "<message to='{to}' type='chat' id='m{seq}'><body>{seq} {ts}</body></message>"
    );
}

/// Waits for `fut`, or fails after `secs`.
async fn bounded<T>(
    secs: f64,
    what: &str,
    fut: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    let what = what.to_owned();
    smol::future::or(fut, async move {
        Timer::after(Duration::from_secs_f64(secs)).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what}: timed out"),
        ))
    })
    .await
}

/// Logs in the accounts numbered `users`, `concurrency` at a time; returns the sessions in the
/// same order, `None` where the login failed.
async fn open_all(
    args: &Arc<Args>,
    ex: &LocalExecutor<'_>,
    users: &[usize],
    presence: bool,
) -> Vec<Option<Tls>> {
    let tls = connector();
    let users: Rc<[usize]> = users.into();
    let out: Rc<RefCell<Vec<Option<Tls>>>> =
        Rc::new(RefCell::new((0..users.len()).map(|_| None).collect()));
    let next = Rc::new(Cell::new(0usize));
    let workers: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let (args, tls, users, out, next) = (
                args.clone(),
                tls.clone(),
                users.clone(),
                out.clone(),
                next.clone(),
            );
            ex.spawn(async move {
                loop {
                    let k = next.get();
                    if k >= users.len() {
                        break;
                    }
                    next.set(k + 1);
                    let user = format!("{}{}", args.prefix, users[k]);
                    let r = bounded(args.timeout, "login", login(&args, &tls, &user, presence));
                    match r.await {
                        Ok(s) => out.borrow_mut()[k] = Some(s),
                        Err(e) => eprintln!("login {user}: {e}"),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await;
    }
    out.take()
}

/// Sends a ping to the server and waits for its result, which comes after the server has
/// processed everything this session sent before. Only for sessions nobody else reads.
async fn ping(s: &mut Tls, domain: &str, id: &str) -> std::io::Result<()> {
    let iq = format!("<iq type='get' id='{id}' to='{domain}'><ping xmlns='urn:xmpp:ping'/></iq>");
    s.write_all(iq.as_bytes()).await?;
    s.flush().await?;
    let got = read_until(s, id).await?;
    if !got.contains(id) {
        return Err(bad("stream closed before the ping result"));
    }
    Ok(())
}

/// Counters shared by all threads.
#[derive(Default)]
struct Shared {
    /// Messages received by receivers.
    delivered: AtomicU64,
    /// Messages that came back to senders (errors).
    bounced: AtomicU64,
    /// Sessions the server closed.
    closed: AtomicU64,
    /// Stream management: `<a/>`s sent, `<a/>`s received, `<r/>`s sent by the clients.
    acks_sent: AtomicU64,
    acks_received: AtomicU64,
    requests_sent: AtomicU64,
    /// When traffic starts, set by the main thread.
    start: OnceLock<Instant>,
}

/// What one thread did.
#[derive(Default)]
struct Out {
    logins_ok: usize,
    logins_failed: usize,
    sent: u64,
    received: u64,
    /// Latencies in microseconds of the messages sent in the measurement window.
    latencies: Vec<u32>,
}

impl Out {
    fn merge(mut outs: Vec<Out>) -> Out {
        let mut all = Out::default();
        for o in &mut outs {
            all.logins_ok += o.logins_ok;
            all.logins_failed += o.logins_failed;
            all.sent += o.sent;
            all.received += o.received;
            all.latencies.append(&mut o.latencies);
        }
        all
    }
}

/// Runs `f(thread index)` on `args.threads` threads, each with its own executor.
fn spawn_threads(
    args: &Arc<Args>,
    f: impl Fn(usize) -> Out + Send + Sync + 'static,
) -> Vec<std::thread::JoinHandle<Out>> {
    let f = Arc::new(f);
    (0..args.threads.max(1))
        .map(|t| {
            let f = f.clone();
            std::thread::spawn(move || f(t))
        })
        .collect()
}

fn join(handles: Vec<std::thread::JoinHandle<Out>>) -> Out {
    Out::merge(
        handles
            .into_iter()
            .map(|h| h.join().expect("load thread panicked"))
            .collect(),
    )
}

fn sleep_until(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

fn idle(args: &Arc<Args>) -> String {
    let threads = args.threads.max(1);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let shared = Shared::default();
    let before = Snap::take(args, &shared);
    let handles = {
        let (args, barrier) = (args.clone(), barrier.clone());
        spawn_threads(&args.clone(), move |t| {
            let users: Vec<usize> = (1..=args.sessions())
                .filter(|i| (i - 1) % threads == t)
                .collect();
            let ex = LocalExecutor::new();
            let mut sessions = smol::block_on(ex.run(open_all(&args, &ex, &users, true)));
            // Every session's presence has been processed once its ping is answered.
            smol::block_on(async {
                for (k, s) in sessions.iter_mut().enumerate() {
                    if let Some(st) = s
                        && let Err(e) = ping(st, &args.domain, "hl-idle-ping").await
                    {
                        eprintln!("ping of session {}: {e}", users[k]);
                        *s = None;
                    }
                }
            });
            let ok = sessions.iter().flatten().count();
            barrier.wait(); // all logged in
            barrier.wait(); // measured
            drop(sessions);
            Out {
                logins_ok: ok,
                logins_failed: users.len() - ok,
                ..Out::default()
            }
        })
    };
    barrier.wait();
    let after = Snap::take(args, &shared);
    if args.hold > 0.0 {
        eprintln!("holding {} sessions for {} s", args.sessions(), args.hold);
        std::thread::sleep(Duration::from_secs_f64(args.hold));
    }
    barrier.wait();
    let out = join(handles);
    let n = out.logins_ok;
    let secs = after.at.duration_since(before.at).as_secs_f64();
    let mut line = format!(
        "scenario=idle threads={threads} sessions={n} failed={} login_secs={secs:.3} \
         logins_per_sec={:.0}",
        out.logins_failed,
        n as f64 / secs
    );
    if let (Some((rss0, cpu0)), Some((rss1, cpu1))) = (before.server, after.server) {
        let _ = write!(
            line,
            " rss_before_kib={rss0} rss_after_kib={rss1} kib_per_session={:.2} \
             cpu_ms_per_login={:.3}",
            rss1.saturating_sub(rss0) as f64 / n.max(1) as f64,
            (cpu1 - cpu0) * 1000.0 / n.max(1) as f64
        );
    }
    let _ = write!(
        line,
        " client_cpu_ms_per_login={:.3}{}",
        (after.client_cpu - before.client_cpu) * 1000.0 / n.max(1) as f64,
        after.noise(&before)
    );
    line
}

/// One sender/receiver pair, seen from its thread.
struct Pair {
    sent: Cell<u64>,
    received: Cell<u64>,
    /// Wakes the sender when messages arrived (capacity 1: a pending wake-up is enough).
    wake: (smol::channel::Sender<()>, smol::channel::Receiver<()>),
    /// An `<a/>` the sender's session owes the server (stream management).
    ack_due: RefCell<Option<String>>,
}

impl Default for Pair {
    fn default() -> Pair {
        Pair {
            sent: Cell::new(0),
            received: Cell::new(0),
            wake: smol::channel::bounded(1),
            ack_due: RefCell::new(None),
        }
    }
}

/// Reads a receiver's stream: counts messages, records latencies of messages sent within
/// `window` (microseconds), wakes the sender and the drain loop.
async fn receive(
    mut s: Tls,
    pair: Rc<Pair>,
    shared: Arc<Shared>,
    latencies: Rc<RefCell<Vec<u32>>>,
    window: (u64, u64),
    progress: smol::channel::Sender<()>,
    sm: bool,
) {
    let mut scanner = Scanner::default();
    let mut sm = sm.then(SmCount::new);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => {
                shared.closed.fetch_add(1, Relaxed);
                let _ = progress.try_send(());
                return;
            }
            Ok(n) => n,
        };
        let now = now_us();
        if let Some(sm) = &mut sm
            && sm.feed(&buf[..n]).0 > 0
        {
            shared.acks_sent.fetch_add(1, Relaxed);
            let a = sm.answer();
            if s.write_all(a.as_bytes()).await.is_err() || s.flush().await.is_err() {
                shared.closed.fetch_add(1, Relaxed);
                return;
            }
        }
        let mut lat = latencies.borrow_mut();
        let got = scanner.feed(&buf[..n], |m| {
            if let Some((_, ts)) = body_numbers(m)
                && ts >= window.0
                && ts < window.1
            {
                lat.push(now.saturating_sub(ts).min(u32::MAX as u64) as u32);
            }
        });
        if got > 0 {
            pair.received.set(pair.received.get() + got);
            shared.delivered.fetch_add(got, Relaxed);
            let _ = pair.wake.0.try_send(());
            let _ = progress.try_send(());
        }
    }
}

/// Reads a sender's stream: messages coming back are errors. With stream management, counts
/// the server's `<a/>`s and hands the answer to its `<r/>`s to the sender, which writes it.
async fn drain_sender(
    mut r: smol::io::ReadHalf<Tls>,
    shared: Arc<Shared>,
    pair: Rc<Pair>,
    sm: bool,
) {
    let mut ends = Needle::new(MESSAGE_END);
    let mut sm = sm.then(SmCount::new);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => {
                shared.closed.fetch_add(1, Relaxed);
                return;
            }
            Ok(n) => {
                shared.bounced.fetch_add(ends.count(&buf[..n]), Relaxed);
                if let Some(sm) = &mut sm {
                    let (requests, acks) = sm.feed(&buf[..n]);
                    shared.acks_received.fetch_add(acks, Relaxed);
                    if requests > 0 {
                        *pair.ack_due.borrow_mut() = Some(sm.answer());
                        let _ = pair.wake.0.try_send(());
                    }
                }
            }
        }
    }
}

/// Keeps at most `window` messages in flight until `end`. With stream management, writes the
/// `<a/>`s its reader asks for and a `<r/>` after every 100 messages.
async fn send_window(
    mut w: smol::io::WriteHalf<Tls>,
    pair: Rc<Pair>,
    to: String,
    window: u64,
    end: Instant,
    sm: Option<Arc<Shared>>,
) -> std::io::Result<()> {
    let mut buf = String::new();
    let mut seq = 0;
    loop {
        if Instant::now() >= end {
            return Ok(());
        }
        let in_flight = pair.sent.get() - pair.received.get();
        buf.clear();
        if let Some(a) = pair.ack_due.take() {
            buf.push_str(&a);
            if let Some(shared) = &sm {
                shared.acks_sent.fetch_add(1, Relaxed);
            }
        }
        if in_flight >= window {
            if !buf.is_empty() {
                w.write_all(buf.as_bytes()).await?;
                w.flush().await?;
            }
            smol::future::or(
                async {
                    let _ = pair.wake.1.recv().await;
                },
                async {
                    Timer::at(end).await;
                },
            )
            .await;
            continue;
        }
        let k = window - in_flight;
        let ts = now_us();
        for _ in 0..k {
            seq += 1;
            message(&mut buf, &to, seq, ts);
            if let Some(shared) = &sm
                && seq % 100 == 0
            {
                buf.push_str("<r xmlns='urn:xmpp:sm:3'/>");
                shared.requests_sent.fetch_add(1, Relaxed);
            }
        }
        // Counted before writing: the receiver may see them before the write returns.
        pair.sent.set(pair.sent.get() + k);
        w.write_all(buf.as_bytes()).await?;
        w.flush().await?;
    }
}

/// Sends one message at `first`, `first + interval`, ... until `end`.
async fn send_rate(
    mut w: smol::io::WriteHalf<Tls>,
    pair: Rc<Pair>,
    to: String,
    first: Instant,
    interval: Duration,
    end: Instant,
) -> std::io::Result<()> {
    let mut buf = String::new();
    for k in 0u32.. {
        let at = first + interval * k;
        if at >= end {
            break;
        }
        Timer::at(at).await;
        buf.clear();
        let seq = u64::from(k) + 1;
        message(&mut buf, &to, seq, now_us());
        pair.sent.set(seq);
        w.write_all(buf.as_bytes()).await?;
        w.flush().await?;
    }
    Ok(())
}

/// One thread of the throughput and latency scenarios: logs in its pairs, waits for the
/// common start, runs traffic until the end of the window, then waits (bounded) until every
/// message sent has arrived.
fn pairs_thread(args: &Arc<Args>, shared: &Arc<Shared>, barrier: &Barrier, t: usize) -> Out {
    let threads = args.threads.max(1);
    let mine: Vec<usize> = (0..args.pairs).filter(|g| g % threads == t).collect();
    let users: Vec<usize> = mine.iter().flat_map(|g| [2 * g + 1, 2 * g + 2]).collect();
    let ex = LocalExecutor::new();
    let sessions = smol::block_on(ex.run(open_all(args, &ex, &users, true)));
    let ok = sessions.iter().flatten().count();
    barrier.wait(); // all logged in
    barrier.wait(); // start is set
    let start = *shared.start.get().expect("the main thread set the start");
    let warm_end = start + Duration::from_secs_f64(args.warmup());
    let end = warm_end + Duration::from_secs_f64(args.duration());
    let window = (micros(warm_end), micros(end));
    let latencies = Rc::new(RefCell::new(Vec::new()));
    let (progress_tx, progress_rx) = smol::channel::bounded::<()>(1);
    let mut out = smol::block_on(ex.run(async {
        let mut pairs = Vec::new();
        let mut readers = Vec::new();
        let mut senders = Vec::new();
        let mut it = sessions.into_iter();
        for &g in &mine {
            let (Some(a), Some(b)) = (it.next().flatten(), it.next().flatten()) else {
                continue;
            };
            let pair = Rc::new(Pair::default());
            let (ar, aw) = smol::io::split(a);
            readers.push(ex.spawn(drain_sender(ar, shared.clone(), pair.clone(), args.sm)));
            readers.push(ex.spawn(receive(
                b,
                pair.clone(),
                shared.clone(),
                latencies.clone(),
                window,
                progress_tx.clone(),
                args.sm,
            )));
            let to = format!("{}{}@{}", args.prefix, 2 * g + 2, args.domain);
            senders.push(if args.scenario == "latency" {
                let interval = Duration::from_secs_f64(args.pairs as f64 / args.rate());
                let first = start + Duration::from_secs_f64(g as f64 / args.rate());
                ex.spawn(send_rate(aw, pair.clone(), to, first, interval, end))
            } else {
                let sm = args.sm.then(|| shared.clone());
                ex.spawn(send_window(aw, pair.clone(), to, args.window, end, sm))
            });
            pairs.push(pair);
        }
        for s in senders {
            if let Err(e) = s.await {
                eprintln!("sender: {e}");
            }
        }
        let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
        while pairs.iter().any(|p| p.received.get() < p.sent.get()) && Instant::now() < deadline {
            smol::future::or(
                async {
                    let _ = progress_rx.recv().await;
                },
                async {
                    Timer::at(deadline).await;
                },
            )
            .await;
        }
        drop(readers);
        Out {
            sent: pairs.iter().map(|p| p.sent.get()).sum(),
            received: pairs.iter().map(|p| p.received.get()).sum(),
            ..Out::default()
        }
    }));
    out.logins_ok = ok;
    out.logins_failed = users.len() - ok;
    out.latencies = latencies.take();
    out
}

/// p-th percentile (nearest rank) of sorted microseconds, in milliseconds.
fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1000.0
}

fn pairs(args: &Arc<Args>) -> String {
    let threads = args.threads.max(1);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let shared = Arc::new(Shared::default());
    let handles = {
        let (a, s, b) = (args.clone(), shared.clone(), barrier.clone());
        spawn_threads(args, move |t| pairs_thread(&a, &s, &b, t))
    };
    barrier.wait();
    let start = Instant::now() + Duration::from_millis(50);
    let _ = shared.start.set(start);
    barrier.wait();
    let warm_end = start + Duration::from_secs_f64(args.warmup());
    sleep_until(warm_end);
    let s0 = Snap::take(args, &shared);
    sleep_until(warm_end + Duration::from_secs_f64(args.duration()));
    let s1 = Snap::take(args, &shared);
    let mut out = join(handles);
    let secs = s1.at.duration_since(s0.at).as_secs_f64();
    let delivered = s1.delivered - s0.delivered;
    out.latencies.sort_unstable();
    let lat = &out.latencies;
    let mut line = format!(
        "scenario={} threads={threads} pairs={} failed_logins={}",
        args.scenario,
        out.logins_ok / 2,
        out.logins_failed
    );
    if args.scenario == "latency" {
        let _ = write!(line, " rate={}", args.rate());
    } else {
        let _ = write!(line, " window={}", args.window);
    }
    let _ = write!(
        line,
        " secs={secs:.3} delivered={delivered} msgs_per_sec={:.0} latency_count={} \
         p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
        delivered as f64 / secs,
        lat.len(),
        percentile_ms(lat, 50.0),
        percentile_ms(lat, 99.0),
        percentile_ms(lat, 100.0),
    );
    if let Some(cpu) = s1.server_cpu(&s0) {
        let _ = write!(
            line,
            " server_cpu_s_per_1k={:.4} server_cpu_pct={:.1}",
            cpu * 1000.0 / delivered.max(1) as f64,
            cpu * 100.0 / secs
        );
    }
    if args.sm {
        let _ = write!(
            line,
            " sm=true acks_sent={} acks_received={} requests_sent={}",
            shared.acks_sent.load(Relaxed),
            shared.acks_received.load(Relaxed),
            shared.requests_sent.load(Relaxed)
        );
    }
    let _ = write!(
        line,
        "{} sent={} received={} undelivered={} bounced={} closed={}",
        s1.noise(&s0),
        out.sent,
        out.received,
        out.sent.saturating_sub(out.received),
        shared.bounced.load(Relaxed),
        shared.closed.load(Relaxed)
    );
    line
}

/// user1 sends `messages` messages to user2, who is offline; then user2 logs in.
async fn offline(args: &Arc<Args>, ex: &LocalExecutor<'_>) -> std::io::Result<String> {
    let shared = Shared::default();
    let m = args.messages.unwrap_or(5000);
    let to = format!("{}2@{}", args.prefix, args.domain);
    let tls = connector();
    let sender = bounded(
        args.timeout,
        "login",
        login(args, &tls, &format!("{}1", args.prefix), true),
    )
    .await?;
    let (mut r, mut w) = smol::io::split(sender);
    // The sender's reader: messages coming back are errors; the ping result ends the burst.
    let bounced = Rc::new(Cell::new(0u64));
    let (pong_tx, pong_rx) = smol::channel::bounded::<()>(1);
    let reader = ex.spawn({
        let bounced = bounced.clone();
        async move {
            let mut ends = Needle::new(MESSAGE_END);
            let mut pongs = Needle::new(b"hl-offline-done");
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                bounced.set(bounced.get() + ends.count(&buf[..n]));
                if pongs.count(&buf[..n]) > 0 {
                    let _ = pong_tx.try_send(());
                }
            }
        }
    });
    let s0 = Snap::take(args, &shared);
    let mut buf = String::new();
    let mut seq = 0;
    while seq < m {
        buf.clear();
        for _ in 0..(m - seq).min(100) {
            seq += 1;
            message(&mut buf, &to, seq, now_us());
        }
        w.write_all(buf.as_bytes()).await?;
    }
    buf.clear();
    let _ = write!(
        buf,
        "<iq type='get' id='hl-offline-done' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
        args.domain
    );
    w.write_all(buf.as_bytes()).await?;
    w.flush().await?;
    bounded(args.timeout, "storing", async {
        pong_rx
            .recv()
            .await
            .map_err(|_| bad("sender stream closed"))
    })
    .await?;
    let s1 = Snap::take(args, &shared);
    let store_secs = s1.at.duration_since(s0.at).as_secs_f64();
    let bounced = bounced.get();
    drop(reader);

    let mut rx = bounded(
        args.timeout,
        "login",
        login(args, &tls, &format!("{}2", args.prefix), false),
    )
    .await?;
    let s2 = Snap::take(args, &shared);
    rx.write_all(b"<presence/>").await?;
    rx.flush().await?;
    let mut scanner = Scanner::default();
    let mut got = 0;
    let mut rbuf = vec![0u8; 64 * 1024];
    let want = m - bounced;
    let delivery = bounded(args.timeout, "delivery", async {
        while got < want {
            let n = rx.read(&mut rbuf).await?;
            if n == 0 {
                return Err(bad("receiver stream closed"));
            }
            got += scanner.feed(&rbuf[..n], |_| {});
        }
        Ok(())
    })
    .await;
    let s3 = Snap::take(args, &shared);
    if let Err(e) = &delivery {
        eprintln!("offline delivery: {e}");
    }
    let deliver_secs = s3.at.duration_since(s2.at).as_secs_f64();
    let mut line = format!(
        "scenario=offline messages={m} bounced={bounced} store_secs={store_secs:.3} \
         stored_per_sec={:.0} delivered={got} deliver_secs={deliver_secs:.3} \
         delivered_per_sec={:.0}",
        (m - bounced) as f64 / store_secs,
        got as f64 / deliver_secs
    );
    if let (Some(store_cpu), Some(deliver_cpu)) = (s1.server_cpu(&s0), s3.server_cpu(&s2)) {
        let _ = write!(
            line,
            " server_cpu_s_store_per_1k={:.4} server_cpu_s_deliver_per_1k={:.4}",
            store_cpu * 1000.0 / (m - bounced).max(1) as f64,
            deliver_cpu * 1000.0 / got.max(1) as f64
        );
    }
    line += &s3.noise(&s0);
    let _ = write!(line, " complete={}", delivery.is_ok());
    Ok(line)
}

const RSM: &str = "http://jabber.org/protocol/rsm";

/// One archive query's answer, as seen by the client.
struct Answer {
    secs: f64,
    /// `<result/>`s (archived messages) before the iq result.
    results: u64,
    /// RSM `first` of the page.
    first: Option<String>,
    complete: bool,
}

/// Sends an archive query with `inner` as its content on a session nobody else reads, and reads
/// until its iq result (after the result messages): the time from writing to the `</iq>`.
async fn mam_query(
    s: &mut Tls,
    acc: &mut Vec<u8>,
    id: &str,
    inner: &str,
) -> std::io::Result<Answer> {
    let iq = format!("<iq type='set' id='{id}'><query xmlns='urn:xmpp:mam:2'>{inner}</query></iq>");
    acc.clear();
    let t0 = Instant::now();
    s.write_all(iq.as_bytes()).await?;
    s.flush().await?;
    let needle = format!("id='{id}'");
    let mut buf = vec![0u8; 64 * 1024];
    let mut scanned = 0usize;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(bad("stream closed before the archive result"));
        }
        acc.extend_from_slice(&buf[..n]);
        let from = scanned.saturating_sub(needle.len() + 8);
        scanned = acc.len();
        let Some(at) = find(&acc[from..], needle.as_bytes()).map(|i| i + from) else {
            continue;
        };
        // The iq with our id is the last thing the server sends for the query.
        let Some(start) = acc[..at].iter().rposition(|&b| b == b'<') else {
            continue;
        };
        let tail = &acc[start..];
        if find(tail, b"</iq>").is_none() {
            continue;
        }
        let secs = t0.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(tail);
        if text.contains("type='error'") || text.contains("type=\"error\"") {
            return Err(bad(&format!("archive query failed: {text}")));
        }
        return Ok(Answer {
            secs,
            results: count_all(&acc[..start], b"<result "),
            first: content(&text, "first").map(str::to_owned),
            complete: text.contains("complete='true'") || text.contains("complete=\"true\""),
        });
    }
}

/// RSM `<set/>` with `max` and `before` (empty: the last page).
fn rsm(max: usize, before: &str) -> String {
    format!("<set xmlns='{RSM}'><max>{max}</max><before>{before}</before></set>")
}

/// p50, p99 and max in milliseconds of `secs`, as `name_p50_ms=.. name_p99_ms=.. name_max_ms=..`.
fn summary(name: &str, secs: &[f64]) -> String {
    let mut us: Vec<u32> = secs.iter().map(|s| (s * 1e6) as u32).collect();
    us.sort_unstable();
    format!(
        " {name}_p50_ms={:.3} {name}_p99_ms={:.3} {name}_max_ms={:.3}",
        percentile_ms(&us, 50.0),
        percentile_ms(&us, 99.0),
        percentile_ms(&us, 100.0)
    )
}

/// Fills user1's archive with messages to user2, then times archive queries on user1's session.
async fn mam(args: &Arc<Args>, ex: &LocalExecutor<'_>) -> std::io::Result<String> {
    let shared = Arc::new(Shared::default());
    let m = args.messages.unwrap_or(1_000_000);
    let tls = connector();
    let user = |k: u32| format!("{}{k}@{}", args.prefix, args.domain);
    let mut a = bounded(
        args.timeout,
        "login",
        login(args, &tls, &format!("{}1", args.prefix), true),
    )
    .await?;
    let b = bounded(
        args.timeout,
        "login",
        login(args, &tls, &format!("{}2", args.prefix), true),
    )
    .await?;
    let pair = Rc::new(Pair::default());
    let (progress_tx, _progress_rx) = smol::channel::bounded::<()>(1);
    let reader = ex.spawn(receive(
        b,
        pair.clone(),
        shared.clone(),
        Rc::new(RefCell::new(Vec::new())),
        (0, 0),
        progress_tx,
        false,
    ));
    // Fill: at most `window` messages in flight. user1's stream gets nothing but its own
    // presence meanwhile, so it is not read until the queries.
    let to = user(2);
    let s0 = Snap::take(args, &shared);
    let mut buf = String::new();
    let mut seq = 0;
    while pair.received.get() < m {
        let in_flight = pair.sent.get() - pair.received.get();
        if in_flight < args.window && seq < m {
            buf.clear();
            let ts = now_us();
            for _ in 0..(args.window - in_flight).min(m - seq) {
                seq += 1;
                message(&mut buf, &to, seq, ts);
            }
            pair.sent.set(seq);
            a.write_all(buf.as_bytes()).await?;
            a.flush().await?;
            continue;
        }
        bounded(args.timeout, "delivery", async {
            pair.wake.1.recv().await.map_err(|_| bad("wake-up"))
        })
        .await?;
        if shared.closed.load(Relaxed) > 0 {
            return Err(bad("the receiver's stream closed"));
        }
    }
    let s1 = Snap::take(args, &shared);
    drop(reader);
    // The server answers an archive query only after every earlier archive write is durable:
    // the first query is the barrier.
    let mut acc = Vec::new();
    let barrier = bounded(
        args.timeout,
        "barrier",
        mam_query(&mut a, &mut acc, "hl-mam-barrier", &rsm(1, "")),
    )
    .await?;
    let s2 = Snap::take(args, &shared);
    let fill_secs = s1.at.duration_since(s0.at).as_secs_f64();
    let mut line = format!(
        "scenario=mam messages={m} window={} fill_secs={fill_secs:.3} fill_msgs_per_sec={:.0} \
         barrier_ms={:.3}",
        args.window,
        m as f64 / fill_secs,
        barrier.secs * 1000.0
    );
    if let Some(cpu) = s2.server_cpu(&s0) {
        let _ = write!(
            line,
            " fill_server_cpu_s_per_1k={:.4}",
            cpu * 1000.0 / m.max(1) as f64
        );
    }
    line += &s2.noise(&s0);

    let q0 = Snap::take(args, &shared);
    let mut k = 0u64;
    let mut next_id = || {
        k += 1;
        format!("hl-mam-{k}")
    };
    // (a) the newest page.
    let mut newest = Vec::new();
    let mut newest_results = 0;
    for _ in 0..args.repeats {
        let (id, inner) = (next_id(), rsm(50, ""));
        let r = bounded(
            args.timeout,
            "query",
            mam_query(&mut a, &mut acc, &id, &inner),
        )
        .await?;
        newest_results = r.results;
        newest.push(r.secs);
    }
    // (b) a page `back` messages before the newest: walk back 250 at a time once.
    let walk_t0 = Instant::now();
    let (mut covered, mut pages, mut before) = (0u64, 0u64, String::new());
    while covered < args.back.min(m) {
        let (id, inner) = (next_id(), rsm(250, &before));
        let r = bounded(
            args.timeout,
            "query",
            mam_query(&mut a, &mut acc, &id, &inner),
        )
        .await?;
        pages += 1;
        covered += r.results;
        match r.first {
            Some(f) if !r.complete => before = f,
            _ => break,
        }
    }
    let walk_secs = walk_t0.elapsed().as_secs_f64();
    let mut deep = Vec::new();
    let mut deep_results = 0;
    for _ in 0..args.repeats {
        let (id, inner) = (next_id(), rsm(50, &before));
        let r = bounded(
            args.timeout,
            "query",
            mam_query(&mut a, &mut acc, &id, &inner),
        )
        .await?;
        deep_results = r.results;
        deep.push(r.secs);
    }
    // (c) the newest page with user2.
    let form = format!(
        "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'>\
         <value>urn:xmpp:mam:2</value></field><field var='with'><value>{to}</value></field></x>"
    );
    let mut with = Vec::new();
    let mut with_results = 0;
    for _ in 0..args.repeats {
        let (id, inner) = (next_id(), format!("{form}{}", rsm(50, "")));
        let r = bounded(
            args.timeout,
            "query",
            mam_query(&mut a, &mut acc, &id, &inner),
        )
        .await?;
        with_results = r.results;
        with.push(r.secs);
    }
    let q1 = Snap::take(args, &shared);
    let _ = write!(
        line,
        " repeats={} newest_results={newest_results}{} newest_first_ms={:.3} walk_pages={pages} \
         walk_covered={covered} walk_secs={walk_secs:.3} back_results={deep_results}{} \
         back_first_ms={:.3} with_results={with_results}{} with_first_ms={:.3}",
        args.repeats,
        summary("newest", &newest),
        newest.first().copied().unwrap_or(f64::NAN) * 1000.0,
        summary("back", &deep),
        deep.first().copied().unwrap_or(f64::NAN) * 1000.0,
        summary("with", &with),
        with.first().copied().unwrap_or(f64::NAN) * 1000.0,
    );
    line += &q1.noise(&q0).replace(' ', " query_");
    if let Some((rss, _)) = q1.server {
        let _ = write!(line, " server_rss_kib={rss}");
    }
    Ok(line)
}

fn main() {
    EPOCH.get_or_init(Instant::now);
    let args: Arc<Args> = Arc::new(argh::from_env());
    if args.count_accounts {
        println!("{}", soak::accounts(&args));
        return;
    }
    let host = args.addr.rsplit_once(':').map_or("", |(h, _)| h);
    if !(host.starts_with("127.") || host == "[::1]" || host == "localhost") {
        eprintln!("hearth-load only sends traffic to loopback addresses");
        std::process::exit(2);
    }
    if args.sm && args.scenario != "throughput" {
        eprintln!("--sm is only for the throughput scenario");
        std::process::exit(2);
    }
    let line = match args.scenario.as_str() {
        "idle" => idle(&args),
        "soak" => soak::run(&args),
        "throughput" | "latency" => pairs(&args),
        "offline" => {
            let ex = LocalExecutor::new();
            match smol::block_on(ex.run(offline(&args, &ex))) {
                Ok(line) => line,
                Err(e) => {
                    eprintln!("offline: {e}");
                    std::process::exit(1);
                }
            }
        }
        "mam" => {
            let ex = LocalExecutor::new();
            match smol::block_on(ex.run(mam(&args, &ex))) {
                Ok(line) => line,
                Err(e) => {
                    eprintln!("mam: {e}");
                    std::process::exit(1);
                }
            }
        }
        "comeback" => match smol::block_on(comeback::run(&args)) {
            Ok(lines) => lines,
            Err(e) => {
                eprintln!("comeback: {e}");
                std::process::exit(1);
            }
        },
        other => {
            eprintln!(
                "unknown scenario {other}: use idle, throughput, latency, offline, mam, soak or comeback"
            );
            std::process::exit(2);
        }
    };
    println!("{line}");
}
