//! One client connection (RFC 6120): stream negotiation (STARTTLS or direct TLS, SASL,
//! resource binding), then the read loop that hands stanzas to the router and the write path
//! that drains this session's queue. Only this module writes to the socket.
//!
//! With XEP-0198 resumption, a session outlives its TCP connection: when the socket drops,
//! this task keeps the session (its counters, unacknowledged stanzas and queue) for the
//! resume window; a new connection that resumes hands its socket over to this task.

mod io;
mod management;
mod negotiation;

use io::Io;

use crate::config::Config;
use crate::jid::{self, Jid};
use crate::listener::{Accepted, Listener};
use crate::modules::{Mechanism, SessionEvent};
use crate::router;
use crate::server::Server;
use crate::session::{Outbound, Session};
use crate::stanza::{StanzaError, StreamCondition as C, StreamError, error_reply, iq_result};
use crate::storage::{Store, Ticket};
use crate::stream::csi::{self, Held};
use crate::stream::sasl::{self, FailureCondition as F, Step};
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

/// How far the stream has come.
enum Phase {
    /// Before TLS on the STARTTLS port.
    Plain,
    /// TLS is up; SASL is next.
    Secure,
    /// SASL succeeded as this localpart, with the account's logins at this epoch (see
    /// `Sessions::login_epoch`); binding is next.
    Authenticated(String, u64),
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
    sasl: Option<Box<dyn Mechanism>>,
    auth_failures: u32,
    out: Vec<u8>,
    /// When the connection was accepted: login must be done within the login timeout of it.
    started: Instant,
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

/// The client listeners: STARTTLS (RFC 6120) and direct TLS (XEP-0368), each with the
/// connection limits of `[limits]`.
pub fn listeners(config: &Config) -> Vec<Listener> {
    let parse = |addrs: &[String]| {
        // Validated when the config was loaded.
        addrs.iter().filter_map(|a| a.parse().ok()).collect()
    };
    let limits = &config.limits;
    let listener = |name, description, addrs, direct_tls: bool| Listener {
        name,
        description,
        addrs,
        max_connections: limits.max_connections,
        max_connections_per_ip: limits.max_connections_per_ip,
        handler: Rc::new(move |server, accepted| Box::pin(run(server, accepted, direct_tls))),
    };
    vec![
        listener("c2s", "STARTTLS", parse(&config.listen.c2s), false),
        listener("c2s_tls", "direct TLS", parse(&config.listen.c2s_tls), true),
    ]
}

async fn run(server: Rc<Server>, accepted: Accepted, direct_tls: bool) {
    let Accepted {
        stream,
        peer,
        id,
        rx,
    } = accepted;
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
        started: Instant::now(),
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
    log::debug!("connection {id} from {peer}, direct TLS: {direct_tls}");
    // The rare, large futures (handshakes, stanza processing) are boxed so that the task of
    // an idle session is only as large as its wait for input.
    let ok = !direct_tls || Box::pin(conn.start_tls()).await;
    if ok {
        conn.serve().await;
    }
    Box::pin(conn.finish()).await;
}

impl Conn {
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
            _ => self.login_deadline(),
        };
        ack.map_or(keepalive, |a| a.min(keepalive))
    }

    /// Until a resource is bound, however busy the client keeps the connection (whitespace
    /// keepalives included).
    fn login_deadline(&self) -> Instant {
        self.started + Duration::from_secs(self.server.config.limits.login_timeout_secs)
    }

    /// Waits until the socket has bytes, without holding a buffer meanwhile.
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
                            self.event(SessionEvent::Detached).await;
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
        let domain = &self.server.config.server.domain;
        self.out
            .extend_from_slice(&writer::stream_header(domain, to, &id));
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
                    return self.sasl_failed(F::EncryptionRequired, None);
                }
                Next::Fail(StreamError::with_text(
                    C::NotAuthorized,
                    "STARTTLS and authentication first",
                ))
            }
            Phase::Secure => self.sasl(el),
            Phase::Authenticated(user, epoch) => {
                let (user, epoch) = (user.clone(), *epoch);
                if !self.server.account_exists(&user) {
                    // Removed after this connection authenticated: it may not bind or resume.
                    return Next::Fail(StreamError::with_text(
                        C::NotAuthorized,
                        "the account was removed",
                    ));
                }
                if self.server.sessions().login_epoch(&user) != epoch {
                    // The password changed after this connection authenticated.
                    return Next::Fail(StreamError::with_text(
                        C::NotAuthorized,
                        "the password was changed",
                    ));
                }
                if el.is("resume", ns::SM) {
                    return self.resume(&user, &el).await;
                }
                if el.ns == ns::SM {
                    self.write_nonza(&smacks::failed("unexpected-request", None));
                    return Next::Continue;
                }
                let next = self.pre_bind(&user, el);
                if matches!(self.phase, Phase::Bound(_)) {
                    self.event(SessionEvent::Bound).await;
                }
                next
            }
            Phase::Bound(jid) => {
                let jid = jid.clone();
                self.bound(&jid, el).await
            }
        }
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

    /// A life-cycle event of this connection's bound session, through every module.
    async fn event(&self, event: SessionEvent) {
        if let Phase::Bound(jid) = &self.phase {
            router::session_event(&self.server, jid, event).await;
        }
    }

    /// The session ends: leave the session table, tell the modules, keep unsent messages.
    async fn finish(&mut self) {
        if let Some(id) = self.sm.as_ref().and_then(|sm| sm.id.as_ref()) {
            self.server.resumable.borrow_mut().remove(id);
        }
        let Phase::Bound(jid) = &self.phase else {
            return;
        };
        let jid = jid.clone();
        let current = self.server.sessions().get(&jid).map(|s| s.conn) == Some(self.id);
        if current {
            self.event(SessionEvent::Closed).await;
            self.server.sessions_mut().remove(&jid, self.id);
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
