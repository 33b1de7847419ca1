//! The `comeback` scenario: what it costs a phone to come back after its connection dropped,
//! from its TCP connect to the first message that was queued for it meanwhile, through a proxy
//! that delays every byte by `--delay-ms` each way (as a mobile network's latency would).
//!
//! The phone (account 1) logs in once, directly, enables resumable stream management (and,
//! for the FAST flows, gets a token over SASL2 with Bind 2), and keeps a TLS client setup whose
//! session cache a real phone's TLS stack would have too. Each run: the phone acknowledges what
//! it got and its connection drops without a word; account 2 sends it a message (and waits
//! until the server processed it); the phone reconnects through the proxy with the flow under
//! test and resumes its session, and the clock stops when the message arrives. The resumed
//! connection is the one that drops in the next run.
//!
//! Flows: `starttls-scram` and `tls-scram` (RFC 6120 SASL with SCRAM-SHA-1, a stream restart,
//! then XEP-0198 `<resume/>`), `tls-sasl2-scram` (SCRAM-SHA-1 over SASL2 with the resumption
//! inline), `tls-fast` (a FAST token, HT-SHA-256-EXPR, with the resumption inline, sent once the
//! stream features are in) and `tls-fast-pipelined` (the same sent right after the stream
//! header, without waiting for the features).
//!
//! The proxy models the network: what the client sends reaches the server `delay` later, what
//! the server sends reaches the client `delay` later, and the client's first bytes wait one
//! round trip more for the TCP handshake that the loopback connect does not cost. Round trips
//! are the measured time divided by the round trip time (2 × delay): the processing on both
//! ends is in it, and small next to 100 ms. Bytes are counted on the client's socket: the TCP
//! payload both ways, TLS records included.

use super::{Args, bad, connector, content, header, hmac, rand_bytes, read_until};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use rustls::pki_types::ServerName;
use sha1::{Digest, Sha1};
use smol::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use smol::net::TcpStream;
use std::cell::Cell;
use std::io::{Read, Write};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub const FLOWS: &[&str] = &[
    "starttls-scram",
    "tls-scram",
    "tls-sasl2-scram",
    "tls-fast",
    "tls-fast-pipelined",
];

const SASL2: &str = "urn:xmpp:sasl:2";
/// The phone's installation id (XEP-0388 `<user-agent/>`).
const PHONE_ID: &str = "6f1c0a3e-7d52-4b8e-9a41-2c5d8e0f7b13";

/// A TCP stream that counts the bytes that pass.
pub struct Counted {
    inner: TcpStream,
    up: Rc<Cell<u64>>,
    down: Rc<Cell<u64>>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.down.set(self.down.get() + n as u64);
        }
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.up.set(self.up.get() + n as u64);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

type Phone = TlsStream<Counted>;

/// The delaying proxy: listens on a loopback port and forwards each connection to `target`.
/// Returns its address and the count of connections whose both directions have ended.
fn proxy(target: String, delay: Duration) -> std::io::Result<(String, Arc<AtomicU64>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let closed = Arc::new(AtomicU64::new(0));
    let done = closed.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let accepted = Instant::now();
            let Ok(server) = std::net::TcpStream::connect(&target) else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            let done = done.clone();
            std::thread::spawn(move || {
                // The client's first bytes go once the TCP handshake would have taken its
                // round trip.
                let up =
                    std::thread::spawn(move || pipe(client, server, delay, accepted + 2 * delay));
                pipe(s2, c2, delay, accepted);
                let _ = up.join();
                done.fetch_add(1, SeqCst);
            });
        }
    });
    Ok((addr, closed))
}

/// Forwards `from` to `to`, each chunk `delay` after it came (and not before `not_before`),
/// in order; then passes the end on.
fn pipe(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    delay: Duration,
    not_before: Instant,
) {
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let at = Instant::now().max(not_before) + delay;
                if tx.send((at, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}

/// What the phone keeps between its connections.
struct State {
    /// Its full JID, to which the message is sent.
    jid: String,
    /// The XEP-0198 resumption id.
    previd: String,
    /// Stanzas it has received since it enabled stream management.
    handled: u64,
    /// Its FAST token, for HT-SHA-256-EXPR.
    token: Option<String>,
}

/// One measured comeback.
struct Sample {
    ms: f64,
    up: u64,
    down: u64,
    resumed_tls: bool,
}

fn name(args: &Args) -> std::io::Result<ServerName<'static>> {
    ServerName::try_from(args.domain.clone()).map_err(|_| bad("bad domain"))
}

async fn connect(addr: &str) -> std::io::Result<(Counted, Rc<Cell<u64>>, Rc<Cell<u64>>)> {
    let inner = TcpStream::connect(addr).await?;
    inner.set_nodelay(true)?;
    let (up, down) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    Ok((
        Counted {
            inner,
            up: up.clone(),
            down: down.clone(),
        },
        up,
        down,
    ))
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, data: &str) -> std::io::Result<()> {
    s.write_all(data.as_bytes()).await?;
    s.flush().await
}

/// SCRAM-SHA-1 (RFC 5802) without channel binding: the client-first message, and a closure
/// that turns the server-first into (client-final, expected server signature).
fn scram_first(user: &str) -> (String, String) {
    let nonce = B64.encode(rand_bytes());
    let bare = format!("n={user},r={nonce}");
    (format!("n,,{bare}"), bare)
}

pub fn scram_final(
    password: &str,
    first_bare: &str,
    server_first: &str,
) -> std::io::Result<String> {
    let (mut nonce, mut salt, mut iters) = ("", Vec::new(), 0u32);
    for part in server_first.split(',') {
        match part.split_at_checked(2) {
            Some(("r=", v)) => nonce = v,
            Some(("s=", v)) => salt = B64.decode(v).map_err(|_| bad("bad salt"))?,
            Some(("i=", v)) => iters = v.parse().map_err(|_| bad("bad iteration count"))?,
            _ => {}
        }
    }
    let salted = pbkdf2::pbkdf2_hmac_array::<Sha1, 20>(password.as_bytes(), &salt, iters);
    let client_key = hmac(&salted, b"Client Key");
    let stored = Sha1::digest(&client_key);
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{first_bare},{server_first},{without_proof}");
    let sig = hmac(&stored, auth_message.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
    Ok(format!("{without_proof},p={}", B64.encode(proof)))
}

fn decoded(b64: &str) -> std::io::Result<String> {
    let bytes = B64.decode(b64.trim()).map_err(|_| bad("not base64"))?;
    String::from_utf8(bytes).map_err(|_| bad("not UTF-8"))
}

/// RFC 6120 SASL with SCRAM-SHA-1, then the stream restart and its features.
async fn sasl_scram<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    args: &Args,
    user: &str,
) -> std::io::Result<()> {
    let (first, bare) = scram_first(user);
    send(
        s,
        &format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>{}</auth>",
            B64.encode(first)
        ),
    )
    .await?;
    let reply = read_until(s, "</challenge>").await?;
    let challenge = content(&reply, "challenge").ok_or_else(|| bad("no SCRAM challenge"))?;
    let fin = scram_final(&args.password, &bare, &decoded(challenge)?)?;
    send(
        s,
        &format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            B64.encode(fin)
        ),
    )
    .await?;
    let r = read_until(s, "success").await?;
    if !r.contains("<success") {
        return Err(bad("authentication failed"));
    }
    send(s, &header(&args.domain)).await?;
    read_until(s, "</stream:features>").await?;
    Ok(())
}

/// SASL2 with SCRAM-SHA-1 and `inline` requests; returns everything up to and with what
/// `until` names in the server's answer.
async fn sasl2_scram<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    args: &Args,
    user: &str,
    inline: &str,
    until: &str,
) -> std::io::Result<String> {
    let (first, bare) = scram_first(user);
    send(
        s,
        &format!(
            "<authenticate xmlns='{SASL2}' mechanism='SCRAM-SHA-1'><initial-response>{}\
             </initial-response>{inline}</authenticate>",
            B64.encode(first)
        ),
    )
    .await?;
    let reply = read_until(s, "</challenge>").await?;
    let challenge = content(&reply, "challenge").ok_or_else(|| bad("no SASL2 challenge"))?;
    let fin = scram_final(&args.password, &bare, &decoded(challenge)?)?;
    send(
        s,
        &format!("<response xmlns='{SASL2}'>{}</response>", B64.encode(fin)),
    )
    .await?;
    let r = read_until(s, until).await?;
    if !r.contains("<success") {
        return Err(bad("SASL2 authentication failed"));
    }
    Ok(r)
}

/// The value of attribute `name` of the first `<tag` in `s`.
fn attr<'a>(s: &'a str, tag: &str, name: &str) -> Option<&'a str> {
    let start = s.find(&format!("<{tag} "))?;
    let end = s[start..].find('>')? + start;
    let el = &s[start..end];
    for q in ['\'', '"'] {
        if let Some(i) = el.find(&format!(" {name}={q}")) {
            let v = &el[i + name.len() + 3..];
            return Some(&v[..v.find(q)?]);
        }
    }
    None
}

/// A plain stream up to the server's `<proceed/>` to STARTTLS.
async fn starttls_on<S: AsyncRead + AsyncWrite + Unpin>(
    tcp: &mut S,
    domain: &str,
) -> std::io::Result<()> {
    send(tcp, &header(domain)).await?;
    read_until(tcp, "</stream:features>").await?;
    send(tcp, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>").await?;
    read_until(tcp, "<proceed").await?;
    Ok(())
}

/// The first login of the phone, directly to the server: resumable stream management, and a
/// FAST token for the FAST flows.
async fn setup(args: &Args, tls: &TlsConnector, flow: &str) -> std::io::Result<(Phone, State)> {
    let user = format!("{}1", args.prefix);
    let (mut tcp, _, _) = connect(&args.addr).await?;
    let starttls = flow.starts_with("starttls");
    if starttls {
        starttls_on(&mut tcp, &args.domain).await?;
    }
    let mut s = tls.connect(name(args)?, tcp).await?;
    send(&mut s, &header(&args.domain)).await?;
    read_until(&mut s, "</stream:features>").await?;
    if flow.contains("sasl2") || flow.contains("fast") {
        let inline = format!(
            "<user-agent id='{PHONE_ID}'><software>hearth-load</software></user-agent>\
             <bind xmlns='urn:xmpp:bind:0'><tag>phone</tag>\
             <enable xmlns='urn:xmpp:sm:3' resume='true'/></bind>\
             <request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-EXPR'/>"
        );
        let r = sasl2_scram(&mut s, args, &user, &inline, "</stream:features>").await?;
        let jid = content(&r, "authorization-identifier").ok_or_else(|| bad("no JID"))?;
        let previd = attr(&r, "enabled", "id").ok_or_else(|| bad("no resumable session"))?;
        let token = attr(&r, "token", "token").map(str::to_owned);
        if flow.contains("fast") && token.is_none() {
            return Err(bad("no FAST token"));
        }
        let state = State {
            jid: jid.to_owned(),
            previd: previd.to_owned(),
            handled: 0,
            token,
        };
        return Ok((s, state));
    }
    sasl_scram(&mut s, args, &user).await?;
    send(
        &mut s,
        "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
         <resource>phone</resource></bind></iq>",
    )
    .await?;
    let r = read_until(&mut s, "</iq>").await?;
    let jid = content(&r, "jid")
        .ok_or_else(|| bad("no JID bound"))?
        .to_owned();
    send(&mut s, "<enable xmlns='urn:xmpp:sm:3' resume='true'/>").await?;
    let r = read_until(&mut s, "urn:xmpp:sm:3").await?;
    let previd = attr(&r, "enabled", "id").ok_or_else(|| bad("no resumable session"))?;
    let state = State {
        jid,
        previd: previd.to_owned(),
        handled: 0,
        token: None,
    };
    Ok((s, state))
}

/// The HT-SHA-256-EXPR `<authenticate/>` of the phone with the inline resumption.
fn fast_request(s: &Phone, user: &str, state: &State) -> std::io::Result<String> {
    let token = state.token.as_deref().ok_or_else(|| bad("no token"))?;
    let cb = s
        .get_ref()
        .1
        .export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
        .map_err(|_| bad("no tls-exporter"))?;
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes()).map_err(|_| bad("key"))?;
    m.update(b"Initiator");
    m.update(&cb);
    let mut msg = user.as_bytes().to_vec();
    msg.push(0);
    msg.extend_from_slice(&m.finalize().into_bytes());
    Ok(format!(
        "<authenticate xmlns='{SASL2}' mechanism='HT-SHA-256-EXPR'>\
         <initial-response>{}</initial-response><user-agent id='{PHONE_ID}'/>\
         <fast xmlns='urn:xmpp:fast:0'/>\
         <resume xmlns='urn:xmpp:sm:3' previd='{}' h='{}'/></authenticate>",
        B64.encode(msg),
        state.previd,
        state.handled
    ))
}

/// The measured part: from the TCP connect to the message with `marker`.
async fn come_back(
    args: &Args,
    tls: &TlsConnector,
    via: &str,
    flow: &str,
    state: &mut State,
    marker: &str,
) -> std::io::Result<(Phone, Sample)> {
    let user = format!("{}1", args.prefix);
    let start = Instant::now();
    let (mut tcp, up, down) = connect(via).await?;
    if flow.starts_with("starttls") {
        starttls_on(&mut tcp, &args.domain).await?;
    }
    let mut s = tls.connect(name(args)?, tcp).await?;
    let resumed_tls = s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let resume = format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{}' h='{}'/>",
        state.previd, state.handled
    );
    let got = match flow {
        "starttls-scram" | "tls-scram" => {
            send(&mut s, &header(&args.domain)).await?;
            read_until(&mut s, "</stream:features>").await?;
            sasl_scram(&mut s, args, &user).await?;
            send(&mut s, &resume).await?;
            read_until(&mut s, marker).await?
        }
        "tls-sasl2-scram" => {
            send(&mut s, &header(&args.domain)).await?;
            read_until(&mut s, "</stream:features>").await?;
            let inline = format!("<user-agent id='{PHONE_ID}'/>{resume}");
            sasl2_scram(&mut s, args, &user, &inline, marker).await?
        }
        "tls-fast" => {
            send(&mut s, &header(&args.domain)).await?;
            read_until(&mut s, "</stream:features>").await?;
            let req = fast_request(&s, &user, state)?;
            send(&mut s, &req).await?;
            read_until(&mut s, marker).await?
        }
        "tls-fast-pipelined" => {
            let req = fast_request(&s, &user, state)?;
            send(&mut s, &format!("{}{req}", header(&args.domain))).await?;
            read_until(&mut s, marker).await?
        }
        other => return Err(bad(&format!("unknown flow {other}"))),
    };
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if !got.contains("resumed") {
        return Err(bad("the session was not resumed"));
    }
    if let Some(t) = attr(&got, "token", "token") {
        state.token = Some(t.to_owned());
    }
    state.handled += 1;
    let sample = Sample {
        ms,
        up: up.get(),
        down: down.get(),
        resumed_tls,
    };
    Ok((s, sample))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs `--runs` comebacks of `flow`; returns the result line.
async fn one_flow(args: &Args, flow: &str, tls: &TlsConnector) -> std::io::Result<String> {
    let delay = Duration::from_millis(args.delay_ms);
    let (via, closed) = proxy(args.addr.clone(), delay)?;
    let sender = super::login(args, &connector(), &format!("{}2", args.prefix), false).await?;
    let mut sender = sender;
    let (mut phone, mut state) = setup(args, tls, flow).await?;
    let mut samples = Vec::new();
    for run in 0..args.runs {
        // Everything so far is acknowledged; then the network goes.
        send(
            &mut phone,
            &format!("<a xmlns='urn:xmpp:sm:3' h='{}'/>", state.handled),
        )
        .await?;
        drop(phone);
        if run > 0 {
            // A proxied connection: wait until the server's side of it is closed too.
            let deadline = Instant::now() + Duration::from_secs(10);
            while closed.load(SeqCst) < run as u64 && Instant::now() < deadline {
                smol::Timer::after(Duration::from_millis(1)).await;
            }
        }
        let marker = format!("comeback-{}-{run}", std::process::id());
        send(
            &mut sender,
            &format!(
                "<message to='{}' type='chat'><body>{marker}</body></message>",
                state.jid
            ),
        )
        .await?;
        super::ping(&mut sender, &args.domain, &format!("cb{run}")).await?;
        let tls = match args.fresh_tls {
            true => connector(),
            false => tls.clone(),
        };
        let (p, sample) = come_back(args, &tls, &via, flow, &mut state, &marker).await?;
        phone = p;
        samples.push(sample);
    }
    let rtt = 2.0 * args.delay_ms as f64;
    let ms = median(samples.iter().map(|s| s.ms).collect());
    let up = median(samples.iter().map(|s| s.up as f64).collect());
    let down = median(samples.iter().map(|s| s.down as f64).collect());
    let resumed = samples.iter().filter(|s| s.resumed_tls).count();
    Ok(format!(
        "scenario=comeback flow={flow} delay_ms={} runs={} tls_resumed={resumed}/{} \
         ms_median={ms:.1} round_trips={:.2} bytes_up={up:.0} bytes_down={down:.0}",
        args.delay_ms,
        samples.len(),
        samples.len(),
        ms / rtt,
    ))
}

/// Every flow in `--flows`, one result line each.
pub async fn run(args: &Args) -> std::io::Result<String> {
    let tls = connector();
    let mut lines = Vec::new();
    for flow in args.flows.split(',').filter(|f| !f.is_empty()) {
        if !FLOWS.contains(&flow) {
            return Err(bad(&format!(
                "unknown flow {flow}; flows: {}",
                FLOWS.join(",")
            )));
        }
        lines.push(one_flow(args, flow, &tls).await?);
    }
    Ok(lines.join("\n"))
}
