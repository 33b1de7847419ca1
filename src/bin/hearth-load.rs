//! Load generator for hearth (and any XMPP server): opens many client sessions over STARTTLS
//! or direct TLS with SCRAM-SHA-1, binds, sends presence, and runs a scenario. Each scenario
//! prints one machine-readable result line of `key=value` pairs. Loopback targets only.
//!
//! It parses just enough XML to drive a login (waiting for known closing tags), which keeps
//! the client cheap enough not to be the bottleneck.

use argh::FromArgs;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use hmac::{Hmac, Mac};
use rustls::pki_types::ServerName;
use sha1::{Digest, Sha1};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::TcpStream;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// number of sessions (and accounts)
    #[argh(option, default = "100")]
    sessions: usize,
    /// logins in flight at once
    #[argh(option, default = "32")]
    concurrency: usize,
    /// pid of the server, to report its RSS and CPU time
    #[argh(option)]
    server_pid: Option<u32>,
    /// scenario: idle
    #[argh(option, default = "String::from(\"idle\")")]
    scenario: String,
}

type Tls = TlsStream<TcpStream>;

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

/// Reads until `needle` has arrived; returns everything read.
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

/// Logs in with SCRAM-SHA-1, binds and sends initial presence.
async fn login(args: &Args, tls: &TlsConnector, user: &str) -> std::io::Result<Tls> {
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
    let server_first = String::from_utf8(
        B64.decode(challenge.trim())
            .map_err(|_| bad("challenge not base64"))?,
    )
    .map_err(|_| bad("challenge not UTF-8"))?;
    let (mut nonce, mut salt, mut iters) = ("", Vec::new(), 0u32);
    for part in server_first.split(',') {
        match part.split_at_checked(2) {
            Some(("r=", v)) => nonce = v,
            Some(("s=", v)) => salt = B64.decode(v).map_err(|_| bad("bad salt"))?,
            Some(("i=", v)) => iters = v.parse().map_err(|_| bad("bad iteration count"))?,
            _ => {}
        }
    }
    let salted = pbkdf2::pbkdf2_hmac_array::<Sha1, 20>(args.password.as_bytes(), &salt, iters);
    let client_key = hmac(&salted, b"Client Key");
    let stored = Sha1::digest(&client_key);
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{first_bare},{server_first},{without_proof}");
    let sig = hmac(&stored, auth_message.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
    let fin = format!("{without_proof},p={}", B64.encode(proof));
    let response = format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        B64.encode(fin)
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
    s.write_all(b"<presence/>").await?;
    s.flush().await?;
    Ok(s)
}

fn rand_bytes() -> [u8; 18] {
    let mut b = [0u8; 18];
    getrandom::fill(&mut b).expect("the OS random source works");
    b
}

/// (RSS in KiB, CPU seconds) of a process, from /proc.
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

/// Opens `args.sessions` sessions, `concurrency` logins at a time.
async fn open_all(args: &Rc<Args>, ex: &smol::LocalExecutor<'_>) -> (Vec<Tls>, Duration, usize) {
    let tls = connector();
    let start = Instant::now();
    let (tx, rx) = smol::channel::unbounded();
    let next = Rc::new(std::cell::Cell::new(1usize));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (args, tls, tx, next) = (args.clone(), tls.clone(), tx.clone(), next.clone());
        workers.push(ex.spawn(async move {
            loop {
                let i = next.get();
                if i > args.sessions {
                    break;
                }
                next.set(i + 1);
                let user = format!("{}{i}", args.prefix);
                let r = login(&args, &tls, &user).await;
                if let Err(e) = &r {
                    eprintln!("login {user}: {e}");
                }
                let _ = tx.send(r).await;
            }
        }));
    }
    drop(tx);
    let mut ok = Vec::new();
    let mut failed = 0;
    while let Ok(r) = rx.recv().await {
        match r {
            Ok(s) => ok.push(s),
            Err(_) => failed += 1,
        }
    }
    for w in workers {
        w.await;
    }
    (ok, start.elapsed(), failed)
}

fn main() {
    let args: Rc<Args> = Rc::new(argh::from_env());
    let host = args.addr.rsplit_once(':').map_or("", |(h, _)| h);
    if !(host.starts_with("127.") || host == "[::1]" || host == "localhost") {
        eprintln!("hearth-load only sends traffic to loopback addresses");
        std::process::exit(2);
    }
    let ex = smol::LocalExecutor::new();
    smol::block_on(ex.run(async {
        let before = args.server_pid.and_then(proc_stats);
        let (sessions, took, failed) = open_all(&args, &ex).await;
        // Let the server finish processing the last presences before reading its memory.
        smol::Timer::after(Duration::from_millis(500)).await;
        let after = args.server_pid.and_then(proc_stats);
        let n = sessions.len();
        let mut line = format!(
            "scenario={} sessions={n} failed={failed} login_secs={:.3} logins_per_sec={:.0}",
            args.scenario,
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
        if let (Some((rss0, cpu0)), Some((rss1, cpu1))) = (before, after) {
            line += &format!(
                " rss_before_kib={rss0} rss_after_kib={rss1} kib_per_session={:.2} \
                 cpu_ms_per_login={:.3}",
                rss1.saturating_sub(rss0) as f64 / n.max(1) as f64,
                (cpu1 - cpu0) * 1000.0 / n.max(1) as f64
            );
        }
        println!("{line}");
        drop(sessions);
    }));
}
