//! One client connection (RFC 6120): stream negotiation (STARTTLS or direct TLS, SASL,
//! resource binding), then the read loop that hands stanzas to the router and the write path
//! that drains this session's queue. Only this file writes to the socket.
//!
//! With XEP-0198 resumption, a session outlives its TCP connection: when the socket drops,
//! this task keeps the session (its counters, unacknowledged stanzas and queue) for the
//! resume window; a new connection that resumes hands its socket over to this task.

use crate::jid::{self, Jid};
use crate::listener::Kind;
use crate::router;
use crate::server::Server;
use crate::session::{Outbound, Session};
use crate::stanza::{StanzaError, StreamCondition as C, StreamError, error_reply, iq_result};
use crate::storage::{Store, Ticket};
use crate::stream::csi::{self, Held};
use crate::stream::sasl::{self, FailureCondition as F, Sasl, Step};
use crate::stream::smacks::{self, Sm};
use crate::xml::reader::{StreamEvent, StreamHeader, StreamReader};
use crate::xml::{Element, ns, writer};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures_rustls::server::TlsStream;
use smol::channel::{Receiver, Sender};
use smol::future::FutureExt;
use smol::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use smol::{Async, Timer};
use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

enum Io {
    Plain(Async<TcpStream>),
    Tls(Box<TlsStream<Async<TcpStream>>>),
    Gone,
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Gone => Poll::Ready(Ok(0)),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Gone => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Gone => Poll::Ready(Ok(())),
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_close(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
            Io::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// How far the stream has come.
enum Phase {
    /// Before TLS on the STARTTLS port.
    Plain,
    /// TLS is up; SASL is next.
    Secure,
    /// SASL succeeded as this localpart; binding is next.
    Authenticated(String),
    Bound(Jid),
}

struct Conn {
    server: Rc<Server>,
    id: u64,
    peer: SocketAddr,
    io: Io,
    reader: StreamReader,
    rx: Receiver<Outbound>,
    phase: Phase,
    header_sent: bool,
    sasl: Option<Sasl>,
    auth_failures: u32,
    out: Vec<u8>,
    last_heard: Instant,
    ping_sent: Option<Instant>,
    pings: u64,
    sm: Option<Sm>,
    handoffs: Option<Receiver<Handoff>>,
    /// Since when the socket is gone while the session waits to be resumed.
    detached_at: Option<Instant>,
    /// XEP-0352: the client said it is inactive.
    inactive: bool,
    held: Held,
    /// The last read stopped early; more input may be ready.
    more_ready: bool,
    /// Stanzas received from the client and processed, durable or not (wraps like `h`).
    processed: u32,
    /// Commits the client's stanzas still wait for, with `processed` after each stanza.
    pending: VecDeque<(Ticket, u32)>,
}

/// Stanzas of one client whose archive writes may be waiting for the disk at once.
const MAX_PENDING_COMMITS: usize = 256;

fn commit_failed(e: &crate::error::Error) -> StreamError {
    log::error!("a commit failed: {e}");
    StreamError::with_text(
        C::InternalServerError,
        "the server could not store a stanza",
    )
}

/// A resuming connection's socket, offered to the task that holds the session.
pub struct Handoff {
    io: Io,
    reader: StreamReader,
    peer: SocketAddr,
    h: u32,
    /// Ok when taken over; otherwise the socket comes back to the resuming connection.
    reply: Sender<Result<(), (Io, StreamReader)>>,
}

/// A session that can be resumed, by its resumption id.
pub struct Resumable {
    pub user: String,
    pub tx: Sender<Handoff>,
}

/// What the read loop does after an event.
enum Next {
    Continue,
    /// The client closed its stream; close ours.
    End,
    Fail(StreamError),
    /// The socket failed; a resumable session waits for its client to come back.
    Lost,
    /// The session moved to another task (resumption); this connection is done.
    Handed,
}

enum Wake {
    Read(std::io::Result<()>),
    Queue(Option<Outbound>),
    Handoff(Option<Handoff>),
    Timer,
}

pub async fn run(server: Rc<Server>, stream: Async<TcpStream>, peer: SocketAddr, kind: Kind) {
    // Unbounded because a bounded channel allocates all its slots up front, which would cost
    // every idle session the memory of a full queue; `router::deliver` enforces the bound.
    let (tx, rx) = smol::channel::unbounded();
    let id = server.add_conn(tx, peer.ip());
    let mut conn = Conn {
        reader: StreamReader::new(server.config.xml_limits()),
        server: server.clone(),
        id,
        peer,
        io: Io::Plain(stream),
        rx,
        phase: Phase::Plain,
        header_sent: false,
        sasl: None,
        auth_failures: 0,
        out: Vec::new(),
        last_heard: Instant::now(),
        ping_sent: None,
        pings: 0,
        sm: None,
        handoffs: None,
        detached_at: None,
        inactive: false,
        held: Held::default(),
        more_ready: false,
        processed: 0,
        pending: VecDeque::new(),
    };
    log::debug!("connection {id} from {peer} on {}", kind.name());
    // The rare, large futures (handshakes, stanza processing) are boxed so that the task of
    // an idle session is only as large as its wait for input.
    let ok = kind == Kind::C2s || Box::pin(conn.start_tls()).await;
    if ok {
        conn.serve().await;
    }
    Box::pin(conn.finish()).await;
    server.conns.borrow_mut().remove(&id);
}

impl Conn {
    async fn start_tls(&mut self) -> bool {
        let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::Gone) else {
            return false;
        };
        let acceptor = futures_rustls::TlsAcceptor::from(self.server.tls.borrow().clone());
        let handshake = acceptor.accept(tcp);
        let timeout = async {
            Timer::after(Duration::from_secs(
                self.server.config.limits.login_timeout_secs,
            ))
            .await;
            Err(std::io::ErrorKind::TimedOut.into())
        };
        match handshake.or(timeout).await {
            Ok(tls) => {
                self.io = Io::Tls(Box::new(tls));
                self.phase = Phase::Secure;
                // The handshake may have read the client's first bytes along with its last
                // handshake message: look before waiting for the socket.
                self.more_ready = true;
                true
            }
            Err(e) => {
                log::debug!("TLS handshake with {} failed: {e}", self.peer);
                false
            }
        }
    }

    /// tls-exporter channel binding data (RFC 9266); only defined for TLS 1.3 here.
    fn channel_binding(&self) -> Option<Vec<u8>> {
        let Io::Tls(s) = &self.io else { return None };
        let conn = s.get_ref().1;
        if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
            return None;
        }
        conn.export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
            .ok()
    }

    fn deadline(&self) -> Instant {
        let limits = &self.server.config;
        if let Some(at) = self.detached_at {
            return at + Duration::from_secs(limits.stream_management.resume_timeout_secs);
        }
        let ack = self.sm.as_ref().and_then(|sm| {
            let since = sm.unrequested_since.filter(|_| !sm.request_outstanding)?;
            Some(since + Duration::from_secs(limits.stream_management.ack_delay_secs))
        });
        let keepalive = match (&self.phase, self.ping_sent) {
            (Phase::Bound(_), None) => {
                self.last_heard + Duration::from_secs(limits.keepalive.ping_after_secs)
            }
            (Phase::Bound(_), Some(at)) => {
                at + Duration::from_secs(limits.keepalive.ping_timeout_secs)
            }
            _ => self.last_heard + Duration::from_secs(limits.limits.login_timeout_secs),
        };
        ack.map_or(keepalive, |a| a.min(keepalive))
    }

    /// Waits until the socket has bytes, without holding a buffer meanwhile.
    async fn readable(&self) -> std::io::Result<()> {
        match &self.io {
            Io::Plain(s) => s.readable().await,
            Io::Tls(s) => s.get_ref().0.readable().await,
            Io::Gone => std::future::pending().await,
        }
    }

    /// Reads everything the socket (and TLS) has ready into the stream reader, through one
    /// buffer shared by all connections, so that an idle connection holds no read buffer.
    /// Returns false once the peer has closed the connection. Stops after a bounded amount so
    /// that a flooding client cannot pile up events; `more_ready` then says to come back
    /// without waiting for the socket (TLS may hold decrypted bytes the socket no longer shows).
    fn read_ready(&mut self, events: &mut Vec<StreamEvent>) -> Result<bool, StreamError> {
        const MAX_PER_WAKE: usize = 65536;
        let mut total = 0;
        self.more_ready = false;
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 16384]);
        }
        // Polled without a real waker: `readable()` registers the task's waker before the
        // next wait, so nothing is missed.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            let step = SCRATCH.with_borrow_mut(|buf| {
                match Pin::new(&mut self.io).poll_read(&mut cx, buf) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Some(Ok(false)),
                    Poll::Ready(Ok(n)) => {
                        total += n;
                        Some(self.reader.feed(&buf[..n], events).map(|()| true))
                    }
                    Poll::Pending => None,
                }
            });
            match step {
                Some(Ok(true)) if total < MAX_PER_WAKE => continue,
                Some(Ok(true)) => {
                    self.more_ready = true;
                    return Ok(true);
                }
                Some(result) => return result,
                None => return Ok(true),
            }
        }
    }

    async fn serve(&mut self) {
        let mut events = Vec::new();
        loop {
            let deadline = self.deadline();
            let wake = {
                let handoffs = self.handoffs.clone();
                let handoff = async {
                    match &handoffs {
                        Some(rx) => Wake::Handoff(rx.recv().await.ok()),
                        None => std::future::pending().await,
                    }
                };
                let queue = async { Wake::Queue(self.rx.recv().await.ok()) };
                let timer = async {
                    Timer::at(deadline).await;
                    Wake::Timer
                };
                if self.detached_at.is_some() {
                    handoff.or(queue).or(timer).await
                } else {
                    let more = self.more_ready;
                    let read = async {
                        match more {
                            true => Wake::Read(Ok(())),
                            false => Wake::Read(self.readable().await),
                        }
                    };
                    read.or(handoff).or(queue).or(timer).await
                }
            };
            let next = match wake {
                Wake::Read(Err(_)) => Next::Lost,
                Wake::Read(Ok(())) => match self.read_ready(&mut events) {
                    Ok(open) => {
                        self.last_heard = Instant::now();
                        self.ping_sent = None;
                        let next = Box::pin(self.handle_events(&mut events)).await;
                        match (next, open) {
                            (Next::Continue, false) => Next::Lost,
                            (next, _) => next,
                        }
                    }
                    Err(e) => Next::Fail(e),
                },
                Wake::Queue(Some(Outbound::Stanza(el))) => {
                    self.emit(*el);
                    // Drain what else is waiting into the same write.
                    let mut next = Next::Continue;
                    while self.out.len() < 65536 {
                        match self.rx.try_recv() {
                            Ok(Outbound::Stanza(el)) => self.emit(*el),
                            Ok(Outbound::Close(e)) => {
                                next = Next::Fail(e);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    match next {
                        Next::Continue => Box::pin(self.flush_or_lose()).await,
                        other => other,
                    }
                }
                Wake::Queue(Some(Outbound::Close(e))) => Next::Fail(e),
                Wake::Queue(None) => Next::Fail(StreamError::with_text(
                    C::PolicyViolation,
                    "too many stanzas waiting for this client",
                )),
                Wake::Handoff(Some(h)) => Box::pin(self.take_over(h)).await,
                Wake::Handoff(None) => {
                    // Nobody can resume this session any more; stop listening for it.
                    self.handoffs = None;
                    Next::Continue
                }
                Wake::Timer if self.detached_at.is_some() => {
                    log::debug!("connection {}: resume window expired", self.id);
                    return;
                }
                Wake::Timer => Box::pin(self.timer()).await,
            };
            match next {
                Next::Continue => {}
                Next::Handed => return,
                Next::Lost => {
                    if self.sm.as_ref().is_some_and(|sm| sm.id.is_some()) {
                        if self.detached_at.is_none() {
                            log::debug!(
                                "connection {}: socket lost, waiting for resumption",
                                self.id
                            );
                            self.detached_at = Some(Instant::now());
                            self.io = Io::Gone;
                            self.out.clear();
                        }
                    } else {
                        return;
                    }
                }
                Next::End => {
                    self.out.extend_from_slice(writer::STREAM_CLOSE);
                    Box::pin(async {
                        self.flush().await;
                        let _ = self.io.close().await;
                    })
                    .await;
                    return;
                }
                Next::Fail(e) => {
                    Box::pin(self.stream_error(e)).await;
                    return;
                }
            }
        }
    }

    /// A stanza from this session's queue, through client state indication to the socket.
    fn emit(&mut self, el: Element) {
        if self.detached_at.is_some() || (self.inactive && !csi::urgent(&el)) {
            self.held.hold(el);
            let max = match self.detached_at {
                Some(_) => self.server.config.limits.queue_len,
                None => self.server.config.csi.max_held,
            };
            if self.held.queue.len() < max || self.detached_at.is_some() {
                return;
            }
        } else {
            self.held.queue.push(el);
        }
        for el in self.held.take() {
            self.write_stanza(el);
        }
    }

    /// Writes a stanza and, with stream management, keeps it until the client acknowledges it.
    fn write_stanza(&mut self, el: Element) {
        writer::write_element(&el, ns::CLIENT, &mut self.out);
        if let Some(sm) = &mut self.sm {
            sm.sent(el);
        }
    }

    fn write_nonza(&mut self, el: &Element) {
        writer::write_element(el, ns::CLIENT, &mut self.out);
    }

    async fn flush_or_lose(&mut self) -> Next {
        match self.flush().await {
            true => Next::Continue,
            false => Next::Lost,
        }
    }

    /// Takes over the socket of a connection that resumes this session (XEP-0198 §5).
    async fn take_over(&mut self, h: Handoff) -> Next {
        let ok = self.sm.as_mut().is_some_and(|sm| sm.ack(h.h).is_ok());
        if !ok {
            let _ = h.reply.try_send(Err((h.io, h.reader)));
            return Next::Continue;
        }
        // A connection that lingers is simply dropped: its client has moved on.
        self.io = h.io;
        self.reader = h.reader;
        self.more_ready = true;
        self.peer = h.peer;
        self.detached_at = None;
        self.header_sent = true;
        self.inactive = false;
        self.last_heard = Instant::now();
        self.ping_sent = None;
        self.out.clear();
        let _ = h.reply.try_send(Ok(()));
        if let Err(e) = self.settle_all().await {
            return Next::Fail(e);
        }
        let Some(sm) = self.sm.as_mut() else {
            return Next::Continue;
        };
        let resumed = Element::new("resumed", ns::SM)
            .with_attr("previd", sm.id.clone().unwrap_or_default())
            .with_attr("h", sm.handled.to_string());
        let again: Vec<Element> = sm.unacked.drain(..).collect();
        log::debug!(
            "connection {} resumed from {}, resending {}",
            self.id,
            self.peer,
            again.len()
        );
        self.write_nonza(&resumed);
        for el in again {
            self.write_stanza(el);
        }
        for el in self.held.take() {
            self.write_stanza(el);
        }
        self.flush_or_lose().await
    }

    async fn timer(&mut self) -> Next {
        if let Some(sm) = &mut self.sm
            && sm.unrequested_since.is_some()
            && !sm.request_outstanding
        {
            sm.requested();
            self.write_nonza(&smacks::r());
            return self.flush_or_lose().await;
        }
        match (&self.phase, self.ping_sent) {
            (Phase::Bound(jid), None) => {
                self.pings += 1;
                let ping = Element::new("iq", ns::CLIENT)
                    .with_attr("type", "get")
                    .with_attr("id", format!("ping{}", self.pings))
                    .with_attr("from", self.server.config.server.domain.as_str())
                    .with_attr("to", jid.to_string())
                    .with_child(Element::new("ping", ns::PING));
                self.ping_sent = Some(Instant::now());
                self.send(ping).await
            }
            _ => Next::Fail(StreamError::new(C::ConnectionTimeout)),
        }
    }

    async fn flush(&mut self) -> bool {
        let every = self.server.config.stream_management.ack_every;
        if let Some(sm) = &mut self.sm
            && sm.should_request(every)
        {
            sm.requested();
            writer::write_element(&smacks::r(), ns::CLIENT, &mut self.out);
        }
        if self.out.is_empty() {
            return true;
        }
        let ok = self.io.write_all(&self.out).await.is_ok() && self.io.flush().await.is_ok();
        // Idle sessions keep no output buffer.
        self.out = Vec::new();
        ok
    }

    /// Sends a stanza of the connection's own (a reply, a ping).
    async fn send(&mut self, el: Element) -> Next {
        self.write_stanza(el);
        self.flush_or_lose().await
    }

    async fn stream_error(&mut self, e: StreamError) {
        log::debug!(
            "connection {} from {}: stream error {e}",
            self.id,
            self.peer
        );
        self.open_header(None);
        writer::write_element(&e.to_element(), ns::CLIENT, &mut self.out);
        self.out.extend_from_slice(writer::STREAM_CLOSE);
        self.flush().await;
        let _ = self.io.close().await;
    }

    /// Our stream header, once per stream.
    fn open_header(&mut self, to: Option<&str>) {
        if self.header_sent {
            return;
        }
        self.header_sent = true;
        let id = B64.encode(sasl::random_bytes::<12>());
        let domain = self.server.config.server.domain.clone();
        self.out
            .extend_from_slice(&writer::stream_header(&domain, to, &id));
    }

    async fn handle_events(&mut self, events: &mut Vec<StreamEvent>) -> Next {
        let was_plain = matches!(self.phase, Phase::Plain);
        for ev in std::mem::take(events) {
            let next = match ev {
                StreamEvent::Open(h) => self.open(h),
                StreamEvent::Close => Next::End,
                StreamEvent::Stanza(el) => self.stanza(el).await,
            };
            if !matches!(next, Next::Continue) {
                return next;
            }
            if was_plain && !matches!(self.phase, Phase::Plain) {
                // Whatever followed <starttls/> in the clear must not act on the TLS stream
                // (the STARTTLS command injection of CVE-2011-0411).
                break;
            }
        }
        self.flush_or_lose().await
    }

    fn open(&mut self, h: StreamHeader) -> Next {
        let domain = self.server.config.server.domain.clone();
        self.open_header(h.from.as_deref());
        if h.stream_ns != ns::STREAM || h.content_ns != ns::CLIENT {
            return Next::Fail(StreamError::new(C::InvalidNamespace));
        }
        if h.version.as_deref() != Some("1.0") {
            return Next::Fail(StreamError::new(C::UnsupportedVersion));
        }
        if h.to.as_deref().is_some_and(|t| t != domain) {
            return Next::Fail(StreamError::with_text(
                C::HostUnknown,
                format!("this server serves {domain}"),
            ));
        }
        let mut features = Element::new("features", ns::STREAM);
        match &self.phase {
            Phase::Plain => features.push(
                Element::new("starttls", ns::TLS).with_child(Element::new("required", ns::TLS)),
            ),
            Phase::Secure => {
                let mut mechs = Element::new("mechanisms", ns::SASL);
                for m in sasl::mechanisms(self.channel_binding().is_some()) {
                    mechs.push(Element::new("mechanism", ns::SASL).with_text(*m));
                }
                features.push(mechs);
            }
            Phase::Authenticated(_) | Phase::Bound(_) => {
                features.push(Element::new("bind", ns::BIND));
                features.push(
                    Element::new("session", ns::SESSION)
                        .with_child(Element::new("optional", ns::SESSION)),
                );
                features.push(Element::new("ver", ns::ROSTER_VER));
                features.push(Element::new("sub", ns::PRE_APPROVAL));
                features.push(Element::new("sm", ns::SM));
                features.push(Element::new("csi", ns::CSI));
            }
        }
        writer::write_element(&features, ns::CLIENT, &mut self.out);
        Next::Continue
    }

    async fn stanza(&mut self, el: Element) -> Next {
        match &self.phase {
            Phase::Plain => {
                if el.is("starttls", ns::TLS) {
                    self.write_nonza(&Element::new("proceed", ns::TLS));
                    if !self.flush().await {
                        return Next::Lost;
                    }
                    // Nothing sent in the clear may be used after the handshake.
                    self.reader.reset();
                    self.header_sent = false;
                    return match self.start_tls().await {
                        true => Next::Continue,
                        false => Next::Fail(StreamError::new(C::UndefinedCondition)),
                    };
                }
                if el.ns == ns::SASL {
                    self.sasl_failure(F::EncryptionRequired);
                    return Next::Continue;
                }
                Next::Fail(StreamError::with_text(
                    C::NotAuthorized,
                    "STARTTLS and authentication first",
                ))
            }
            Phase::Secure => self.sasl(el),
            Phase::Authenticated(user) => {
                let user = user.clone();
                if el.is("resume", ns::SM) {
                    return self.resume(&user, &el).await;
                }
                if el.ns == ns::SM {
                    self.write_nonza(&smacks::failed("unexpected-request", None));
                    return Next::Continue;
                }
                self.pre_bind(&user, el)
            }
            Phase::Bound(jid) => {
                let jid = jid.clone();
                self.bound(&jid, el).await
            }
        }
    }

    fn sasl_failure(&mut self, condition: F) {
        let f = Element::new("failure", ns::SASL)
            .with_child(Element::new(condition.as_str(), ns::SASL));
        writer::write_element(&f, ns::CLIENT, &mut self.out);
    }

    fn sasl(&mut self, el: Element) -> Next {
        if el.ns != ns::SASL {
            return Next::Fail(StreamError::with_text(
                C::NotAuthorized,
                "authenticate first",
            ));
        }
        let data = match el.text().trim() {
            "" | "=" => Some(Vec::new()),
            t => B64.decode(t).ok(),
        };
        let Some(data) = data else {
            self.sasl = None;
            self.sasl_failure(F::IncorrectEncoding);
            return Next::Continue;
        };
        let step = match el.name.as_str() {
            "auth" => {
                let mech = el.attr("mechanism").unwrap_or_default();
                let domain = self.server.config.server.domain.clone();
                let Some(s) = Sasl::start(mech, self.channel_binding(), &domain) else {
                    self.sasl_failure(F::InvalidMechanism);
                    return Next::Continue;
                };
                let auth = &self.server.config.auth;
                let window = Duration::from_secs(auth.throttle_window_secs);
                let ip_key = format!("ip {}", self.peer.ip());
                if self
                    .server
                    .throttle
                    .borrow_mut()
                    .blocked(&ip_key, auth.max_failures, window)
                {
                    self.sasl_failure(F::TemporaryAuthFailure);
                    return Next::Continue;
                }
                let sasl = self.sasl.insert(s);
                if el.text().trim().is_empty() && mech != "PLAIN" {
                    // No initial response: ask for it with an empty challenge.
                    Step::Challenge(Vec::new())
                } else {
                    let store = &self.server.store;
                    sasl.step(&data, &|u| store.credentials(u).ok().flatten())
                }
            }
            "response" => match self.sasl.as_mut() {
                Some(s) => {
                    let store = &self.server.store;
                    s.step(&data, &|u| store.credentials(u).ok().flatten())
                }
                None => {
                    self.sasl_failure(F::MalformedRequest);
                    return Next::Continue;
                }
            },
            "abort" => {
                self.sasl = None;
                self.sasl_failure(F::Aborted);
                return Next::Continue;
            }
            _ => {
                return Next::Fail(StreamError::with_text(
                    C::NotAuthorized,
                    "authenticate first",
                ));
            }
        };
        match step {
            Step::Challenge(c) => {
                let mut ch = Element::new("challenge", ns::SASL);
                if !c.is_empty() {
                    ch = ch.with_text(B64.encode(c));
                }
                writer::write_element(&ch, ns::CLIENT, &mut self.out);
                Next::Continue
            }
            Step::Success { user, data } => {
                self.sasl = None;
                let auth = &self.server.config.auth;
                let window = Duration::from_secs(auth.throttle_window_secs);
                let user_key = format!("user {user}");
                if self
                    .server
                    .throttle
                    .borrow_mut()
                    .blocked(&user_key, auth.max_failures, window)
                {
                    self.sasl_failure(F::TemporaryAuthFailure);
                    return Next::Continue;
                }
                let mut ok = Element::new("success", ns::SASL);
                if !data.is_empty() {
                    ok = ok.with_text(B64.encode(data));
                }
                writer::write_element(&ok, ns::CLIENT, &mut self.out);
                log::info!(
                    "{user}@{} authenticated from {}",
                    self.server.config.server.domain,
                    self.peer
                );
                self.phase = Phase::Authenticated(user);
                self.reader.restart();
                self.header_sent = false;
                Next::Continue
            }
            Step::Failure(f, user) => {
                self.sasl = None;
                self.sasl_failure(f);
                let window = Duration::from_secs(self.server.config.auth.throttle_window_secs);
                {
                    let mut t = self.server.throttle.borrow_mut();
                    t.fail(format!("ip {}", self.peer.ip()), window);
                    if let Some(u) = &user {
                        t.fail(format!("user {u}"), window);
                    }
                }
                log::info!("failed login from {} ({})", self.peer, f.as_str());
                self.auth_failures += 1;
                if self.auth_failures >= self.server.config.auth.attempts_per_stream {
                    return Next::Fail(StreamError::with_text(
                        C::PolicyViolation,
                        "too many failed authentication attempts",
                    ));
                }
                Next::Continue
            }
        }
    }

    fn pre_bind(&mut self, user: &str, el: Element) -> Next {
        if el.is("iq", ns::CLIENT)
            && el.attr("type") == Some("set")
            && let Some(bind) = el.child("bind", ns::BIND)
        {
            let requested = bind
                .child("resource", ns::BIND)
                .map(|r| r.text())
                .filter(|r| !r.trim().is_empty());
            let resource = match requested {
                Some(r) => match jid::resourcepart(&r) {
                    Ok(r) => r,
                    Err(_) => {
                        let e = StanzaError::bad_request("the resource is not valid");
                        writer::write_element(&error_reply(&el, &e), ns::CLIENT, &mut self.out);
                        return Next::Continue;
                    }
                },
                None => format!("hearth-{}", hex(&sasl::random_bytes::<6>())),
            };
            let domain = self.server.config.server.domain.clone();
            let Ok(full) = Jid::bare_from(user, &domain).with_resource(&resource) else {
                return Next::Fail(StreamError::new(C::InternalServerError));
            };
            let tx = match self.server.conns.borrow().get(&self.id) {
                Some(c) => c.tx.clone(),
                None => return Next::Fail(StreamError::new(C::InternalServerError)),
            };
            let old = self.server.sessions.borrow_mut().insert(Session {
                conn: self.id,
                jid: full.clone(),
                tx,
                available: false,
                priority: 0,
                presence: None,
                interested: false,
                directed: Vec::new(),
                flags: Default::default(),
            });
            if let Some(old) = old {
                // RFC 6120 §7.7.2.2: the new session wins; the old one gets `conflict`.
                self.server.close_conn(
                    old.conn,
                    StreamError::with_text(C::Conflict, "replaced by a new connection"),
                );
            }
            let reply = iq_result(&el, None).with_child(
                Element::new("bind", ns::BIND)
                    .with_child(Element::new("jid", ns::BIND).with_text(full.to_string())),
            );
            writer::write_element(&reply, ns::CLIENT, &mut self.out);
            log::debug!("bound {full}");
            self.phase = Phase::Bound(full);
            return Next::Continue;
        }
        if el.is("iq", ns::CLIENT) && el.child("session", ns::SESSION).is_some() {
            writer::write_element(&iq_result(&el, None), ns::CLIENT, &mut self.out);
            return Next::Continue;
        }
        Next::Fail(StreamError::with_text(
            C::NotAuthorized,
            "bind a resource first",
        ))
    }

    async fn bound(&mut self, jid: &Jid, el: Element) -> Next {
        if el.ns == ns::SM || el.ns == ns::CSI {
            return self.nonza(&el).await;
        }
        let (next, ticket) = self.bound_stanza(jid, el).await;
        self.processed = self.processed.wrapping_add(1);
        if let Some(t) = ticket {
            self.pending.push_back((t, self.processed));
        }
        // Bounded: a client far ahead of the disk waits for it.
        while self.pending.len() > MAX_PENDING_COMMITS {
            if let Err(e) = self.settle_one().await {
                return Next::Fail(e);
            }
        }
        match self.settle_ready() {
            Ok(()) => next,
            Err(e) => Next::Fail(e),
        }
    }

    /// Drops the tickets that have resolved and updates the stream management `h`: every
    /// stanza before the oldest unresolved ticket is handled (processed and durable).
    fn settle_ready(&mut self) -> Result<(), StreamError> {
        while let Some((t, _)) = self.pending.front() {
            match t.try_result() {
                None => break,
                Some(Ok(())) => {
                    self.pending.pop_front();
                }
                Some(Err(e)) => return Err(commit_failed(&e)),
            }
        }
        let handled = match self.pending.front() {
            Some((_, h)) => h.wrapping_sub(1),
            None => self.processed,
        };
        if let Some(sm) = &mut self.sm {
            sm.handled = handled;
        }
        Ok(())
    }

    /// Waits for the oldest pending commit.
    async fn settle_one(&mut self) -> Result<(), StreamError> {
        if let Some((t, _)) = self.pending.pop_front() {
            Store::wait(t).await.map_err(|e| commit_failed(&e))?;
        }
        self.settle_ready()
    }

    /// Waits until everything received so far is durable: before telling the client its `h`.
    async fn settle_all(&mut self) -> Result<(), StreamError> {
        while !self.pending.is_empty() {
            self.settle_one().await?;
        }
        self.settle_ready()
    }

    /// XEP-0198 and XEP-0352 elements of a bound stream.
    async fn nonza(&mut self, el: &Element) -> Next {
        match (el.name.as_str(), el.ns.as_str()) {
            ("enable", ns::SM) => {
                if self.sm.is_some() {
                    self.write_nonza(&smacks::failed("unexpected-request", None));
                    return Next::Continue;
                }
                let resume = matches!(el.attr("resume"), Some("true" | "1"));
                let id = B64.encode(sasl::random_bytes::<18>());
                let mut enabled = Element::new("enabled", ns::SM);
                if resume {
                    let (tx, rx) = smol::channel::bounded(1);
                    let Phase::Bound(jid) = &self.phase else {
                        return Next::Continue;
                    };
                    let user = jid.local().unwrap_or_default().to_owned();
                    self.server
                        .resumable
                        .borrow_mut()
                        .insert(id.clone(), Resumable { user, tx });
                    self.handoffs = Some(rx);
                    let max = self.server.config.stream_management.resume_timeout_secs;
                    enabled = enabled
                        .with_attr("id", id.as_str())
                        .with_attr("resume", "true")
                        .with_attr("max", max.to_string());
                }
                self.sm = Some(Sm::new(resume, id));
                self.write_nonza(&enabled);
                Next::Continue
            }
            ("r", ns::SM) => {
                if let Err(e) = self.settle_all().await {
                    return Next::Fail(e);
                }
                match &self.sm {
                    Some(sm) => {
                        let a = smacks::a(sm.handled);
                        self.write_nonza(&a);
                        Next::Continue
                    }
                    None => Next::Fail(StreamError::with_text(
                        C::UnsupportedStanzaType,
                        "stream management is not enabled",
                    )),
                }
            }
            ("a", ns::SM) => {
                let result = match (&mut self.sm, smacks::h_of(el)) {
                    (Some(sm), Some(h)) => sm.ack(h),
                    _ => Err("an <a/> needs stream management enabled and an h".into()),
                };
                match result {
                    Ok(()) => Next::Continue,
                    Err(t) => Next::Fail(StreamError::with_text(C::UndefinedCondition, t)),
                }
            }
            ("active", ns::CSI) => {
                self.inactive = false;
                for el in self.held.take() {
                    self.write_stanza(el);
                }
                Next::Continue
            }
            ("inactive", ns::CSI) => {
                self.inactive = true;
                Next::Continue
            }
            _ => Next::Fail(StreamError::new(C::UnsupportedStanzaType)),
        }
    }

    /// XEP-0198 §5: a new connection asks to continue a session that lost its socket.
    async fn resume(&mut self, user: &str, el: &Element) -> Next {
        let previd = el.attr("previd").unwrap_or_default();
        let target = self
            .server
            .resumable
            .borrow()
            .get(previd)
            .filter(|r| r.user == user)
            .map(|r| r.tx.clone());
        let (Some(tx), Some(h)) = (target, smacks::h_of(el)) else {
            self.write_nonza(&smacks::failed("item-not-found", None));
            return Next::Continue;
        };
        // Our output so far (nothing, normally) must not be lost with the socket.
        if !self.flush().await {
            return Next::Lost;
        }
        let (reply_tx, reply_rx) = smol::channel::bounded(1);
        let io = std::mem::replace(&mut self.io, Io::Gone);
        let reader = std::mem::replace(
            &mut self.reader,
            StreamReader::new(self.server.config.xml_limits()),
        );
        let handoff = Handoff {
            io,
            reader,
            peer: self.peer,
            h,
            reply: reply_tx,
        };
        if let Err(e) = tx.send(handoff).await {
            let h = e.into_inner();
            (self.io, self.reader) = (h.io, h.reader);
            self.more_ready = true;
            self.write_nonza(&smacks::failed("item-not-found", None));
            return Next::Continue;
        }
        match reply_rx.recv().await {
            Ok(Ok(())) => Next::Handed,
            Ok(Err((io, reader))) => {
                (self.io, self.reader) = (io, reader);
                self.more_ready = true;
                self.write_nonza(&smacks::failed("item-not-found", None));
                Next::Continue
            }
            Err(_) => Next::Lost,
        }
    }

    async fn bound_stanza(&mut self, jid: &Jid, mut el: Element) -> (Next, Option<Ticket>) {
        if el.ns != ns::CLIENT || !matches!(el.name.as_str(), "message" | "presence" | "iq") {
            return (Next::Fail(StreamError::new(C::UnsupportedStanzaType)), None);
        }
        if router::is_iq_for(&el, "session", ns::SESSION) {
            return (self.send(iq_result(&el, None)).await, None);
        }
        if router::is_iq_for(&el, "bind", ns::BIND) {
            let e = StanzaError::new(crate::stanza::Condition::NotAllowed);
            return (self.send(error_reply(&el, &e)).await, None);
        }
        // RFC 6120 §8.1.2.1: the server stamps the sender's full JID, whatever the client said.
        el.set_attr("from", jid.to_string());
        // Our own output so far goes first, so replies keep their order.
        if !self.flush().await {
            return (Next::Lost, None);
        }
        let ticket = router::from_client(&self.server, jid, el).await;
        (Next::Continue, ticket)
    }

    /// The session ends: leave the session table, tell contacts, keep unsent messages.
    async fn finish(&mut self) {
        if let Some(id) = self.sm.as_ref().and_then(|sm| sm.id.as_ref()) {
            self.server.resumable.borrow_mut().remove(id);
        }
        let Phase::Bound(jid) = &self.phase else {
            return;
        };
        let jid = jid.clone();
        let removed = self.server.sessions.borrow().get(&jid).map(|s| s.conn) == Some(self.id);
        if removed {
            let effects = {
                let mut cx = crate::modules::Cx::new(&self.server);
                crate::modules::presence::session_closed(&mut cx, &jid);
                cx.effects
            };
            if let Err(e) = router::apply(&self.server, effects).await {
                log::error!("presence for {jid} leaving: {e}");
            }
            self.server.sessions.borrow_mut().remove(&jid, self.id);
        }
        // Sent but never acknowledged, held back, or still queued: routed again, once.
        let mut unsent: Vec<Element> = match self.sm.take() {
            Some(sm) => sm.unacked.into(),
            None => Vec::new(),
        };
        unsent.extend(self.held.take());
        while let Ok(o) = self.rx.try_recv() {
            if let Outbound::Stanza(el) = o {
                unsent.push(*el);
            }
        }
        if !unsent.is_empty() {
            router::reroute_unsent(&self.server, &jid, unsent).await;
        }
        log::debug!("{jid} disconnected");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
