//! One client connection (RFC 6120): stream negotiation (STARTTLS or direct TLS, SASL,
//! resource binding), then the read loop that hands stanzas to the router and the write path
//! that drains this session's queue. Only this module writes to the socket.
//!
//! With XEP-0198 resumption, a session outlives its TCP connection: when the socket drops,
//! this task keeps the session (its counters, unacknowledged stanzas and queue) for the
//! resume window; a new connection that resumes hands its socket over to this task.
//!
//! Over a WebSocket (RFC 7395, accepted and upgraded by the HTTP listener, see [`websocket`])
//! the stream is the same stream: the seam is the transport alone. `Io::WebSocket` reads text
//! messages as bytes for a framed `StreamReader`, which reports `<open/>` and `<close/>` as the
//! stream's header and end; every write goes through `put`, `put_header` and `put_close`, which
//! write `<open/>`, `<close/>` and self-contained elements when the transport frames, and
//! `Out` keeps where each element ends so that each goes out as a message of its own. The
//! stream starts at SASL (the WebSocket is already TLS, so no STARTTLS is offered); binding,
//! stream management (a WebSocket session can be resumed over TCP and back), client state,
//! limits and the archive do not know the difference.

mod io;
mod management;
mod negotiation;
mod sasl2;

pub use io::Ws;
use io::{Credit, Io, Out};

use crate::config::Config;
use crate::jid::{self, Jid};
use crate::listener::{Accepted, Listener};
use crate::modules::{Mechanism, Profile, SessionEvent};
use crate::router;
use crate::server::Server;
use crate::session::{Delivery, Outbound, OutboundRx, Session};
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
use smol::io::{AsyncRead, AsyncWriteExt};
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
    rx: OutboundRx,
    phase: Phase,
    header_sent: bool,
    sasl: Option<Box<dyn Mechanism>>,
    /// The TLS setup this connection's handshake used (its certificate's channel binding),
    /// until a resource is bound. Shared, so that a login allocates nothing for it.
    tls: Option<Rc<crate::tls::ServerTls>>,
    /// A SASL2 exchange in progress.
    sasl2: Option<Box<sasl2::Exchange>>,
    auth_failures: u32,
    out: Out,
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
    /// What is held is due (an urgent stanza came, or the client is active) and waits only for
    /// room among the unacknowledged stanzas.
    due: bool,
    /// The last read stopped early; more input may be ready.
    more_ready: bool,
    /// What the client may still send before the server stops reading from it for a while.
    credit: Credit,
    /// Stanzas received from the client and processed, durable or not (wraps like `h`).
    processed: u32,
    /// Commits the client's stanzas still wait for, with `processed` after each stanza.
    pending: VecDeque<(Ticket, u32)>,
}

/// Stanzas of one client whose archive writes may be waiting for the disk at once.
const MAX_PENDING_COMMITS: usize = 256;

/// How long a connection that ended with a stream error goes on reading (and dropping) what
/// its client still sends, so that the error is not lost to a reset (`Io::linger`).
const LINGER: Duration = Duration::from_secs(1);

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
    /// XEP-0198 §inline: the SASL2 `<success/>` that the `<resumed/>` goes into.
    success: Option<Box<Element>>,
    /// Ok when taken over; otherwise the socket comes back to the resuming connection.
    reply: Sender<Result<(), (Io, StreamReader)>>,
}

/// A session that can be resumed, by its resumption id.
pub struct Resumable {
    pub user: String,
    pub tx: Sender<Handoff>,
}

/// How an attempt to resume a session ended.
enum Resume {
    /// The session's task took the socket over.
    Handed,
    /// The socket failed meanwhile.
    Lost,
    /// Not resumed: the `<failed/>` for the client.
    Failed(Element),
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
    let reader = StreamReader::new(server.config.xml_limits());
    let mut conn = Conn::new(server, id, peer, Io::Plain(stream), reader, rx);
    log::debug!("connection {id} from {peer}, direct TLS: {direct_tls}");
    // The rare, large futures (handshakes, stanza processing) are boxed so that the task of
    // an idle session is only as large as its wait for input.
    let ok = !direct_tls || Box::pin(conn.start_tls()).await;
    if ok {
        conn.serve().await;
    }
    Box::pin(conn.finish()).await;
}

/// A client stream over a WebSocket (RFC 7395) that the HTTP listener accepted and upgraded,
/// as connection `id` with its queue `rx`. TLS is up, so SASL comes first; from there on it is
/// the same stream as over TCP: sessions, limits, stream management, everything.
pub async fn websocket(server: Rc<Server>, ws: Ws, peer: SocketAddr, id: u64, rx: OutboundRx) {
    let reader = StreamReader::framed(server.config.xml_limits());
    let io = Io::WebSocket(Box::new(ws));
    let mut conn = Conn::new(server, id, peer, io, reader, rx);
    log::debug!("connection {id} from {peer} over WebSocket");
    conn.phase = Phase::Secure;
    // The upgrade request may have come with the first messages.
    conn.more_ready = true;
    conn.serve().await;
    Box::pin(conn.finish()).await;
}

impl Conn {
    fn new(
        server: Rc<Server>,
        id: u64,
        peer: SocketAddr,
        io: Io,
        reader: StreamReader,
        rx: OutboundRx,
    ) -> Conn {
        Conn {
            reader,
            credit: Credit::new(&server.config.limits),
            server,
            id,
            peer,
            io,
            rx,
            phase: Phase::Plain,
            header_sent: false,
            sasl: None,
            tls: None,
            sasl2: None,
            auth_failures: 0,
            out: Out::default(),
            started: Instant::now(),
            last_heard: Instant::now(),
            ping_sent: None,
            pings: 0,
            sm: None,
            handoffs: None,
            detached_at: None,
            inactive: false,
            held: Held::default(),
            due: false,
            more_ready: false,
            processed: 0,
            pending: VecDeque::new(),
        }
    }

    fn deadline(&self) -> Instant {
        let limits = &self.server.config;
        if let Some(at) = self.detached_at {
            return at + self.resume_window();
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

    /// How long the session waits to be resumed: the configured window, or the longer one a
    /// module asked for (push notifications, which wake the phone).
    fn resume_window(&self) -> Duration {
        let default = self.server.config.stream_management.resume_timeout_secs;
        let asked = match &self.phase {
            Phase::Bound(jid) => self
                .server
                .sessions()
                .get(jid)
                .filter(|s| s.conn == self.id)
                .and_then(|s| s.flags.resume_window),
            _ => None,
        };
        Duration::from_secs(asked.map_or(default, |w| u64::from(w).max(default)))
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
            // A client over its rate is not read until it is back within it: the timer wakes
            // the loop then (one timer, so that an idle connection waits on no more).
            let throttled = self
                .throttled_until()
                .filter(|at| self.detached_at.is_none() && *at > Instant::now());
            let deadline = match throttled {
                Some(at) => at.min(self.deadline()),
                None => self.deadline(),
            };
            let wake = {
                let handoffs = self.handoffs.clone();
                let handoff = async {
                    match &handoffs {
                        Some(rx) => Wake::Handoff(rx.recv().await.ok()),
                        None => std::future::pending().await,
                    }
                };
                let queue = async { Wake::Queue(self.rx.recv().await) };
                let timer = async {
                    Timer::at(deadline).await;
                    Wake::Timer
                };
                if self.detached_at.is_some() {
                    handoff.or(queue).or(timer).await
                } else {
                    let more = self.more_ready;
                    let read = async {
                        match (throttled, more) {
                            (Some(_), _) => std::future::pending().await,
                            (None, true) => Wake::Read(Ok(())),
                            (None, false) => Wake::Read(self.readable().await),
                        }
                    };
                    read.or(handoff).or(queue).or(timer).await
                }
            };
            let next = match wake {
                Wake::Read(Err(_)) => Next::Lost,
                Wake::Read(Ok(())) => {
                    let now = Instant::now();
                    self.refill(now);
                    match self.read_ready(&mut events) {
                        Ok((open, bytes)) => {
                            self.charge(bytes, events.len());
                            self.last_heard = now;
                            self.ping_sent = None;
                            let next = Box::pin(self.handle_events(&mut events)).await;
                            // One batch of input at a time: the other connections get their
                            // turn before this one reads again, however much it has sent.
                            smol::future::yield_now().await;
                            match (next, open) {
                                (Next::Continue, false) => Next::Lost,
                                (next, _) => next,
                            }
                        }
                        Err(e) => Next::Fail(e),
                    }
                }
                Wake::Queue(Some(Outbound::Stanza(d))) if self.rx.is_closed() => {
                    // The router gave up on this session: what is left is undelivered.
                    Box::pin(self.give_up(vec![d])).await;
                    Next::Fail(StreamError::with_text(
                        C::PolicyViolation,
                        "too many stanzas waiting for this client",
                    ))
                }
                Wake::Queue(Some(Outbound::Stanza(d))) => {
                    let mut taken = (d.size, usize::from(d.is_error()));
                    self.emit(d);
                    // Drain what else is waiting into the same write.
                    let mut next = Next::Continue;
                    while self.out.len() < 65536 && !self.over_limits() {
                        match self.rx.try_recv() {
                            Some(Outbound::Stanza(d)) => {
                                taken.0 += d.size;
                                taken.1 += usize::from(d.is_error());
                                self.emit(d);
                            }
                            Some(Outbound::Close(e)) => {
                                next = Next::Fail(e);
                                break;
                            }
                            None => break,
                        }
                    }
                    self.dequeued(taken);
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
                // The client may be read again; the loop's next turn does.
                Wake::Timer if throttled.is_some_and(|at| at < self.deadline()) => Next::Continue,
                Wake::Timer => Box::pin(self.timer()).await,
            };
            let next = match next {
                Next::Continue => self.within_bounds(),
                other => other,
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
                    self.put_close();
                    Box::pin(self.close()).await;
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
    fn emit(&mut self, d: Rc<Delivery>) {
        if self.detached_at.is_some() || (self.inactive && !csi::urgent(&d.el)) {
            self.held.hold(d);
            // An inactive client gets everything once too much is held.
            let config = &self.server.config;
            let full = self.held.queue.len() >= config.csi.max_held
                || self.held.bytes >= config.limits.queue_bytes;
            if full && self.detached_at.is_none() {
                self.due = true;
                self.release();
            }
            return;
        }
        if self.held.queue.is_empty() && !self.window_full() {
            self.write_stanza(d);
            return;
        }
        self.held.push(d);
        self.due = true;
        self.release();
    }

    /// Writes what is held and due, oldest first, as far as the client's window allows.
    fn release(&mut self) {
        if !self.due || self.detached_at.is_some() {
            return;
        }
        while !self.window_full() {
            let Some(d) = self.held.pop() else {
                self.due = false;
                return;
            };
            self.write_stanza(d);
        }
    }

    /// XEP-0198: the client has as many stanzas unacknowledged as it may
    /// (`stream_management.max_unacked`, `limits.queue_bytes`): more waits, held, until it
    /// acknowledges some. Flow control, not a reason to disconnect it: a burst (offline
    /// messages and contacts' presence at login) may well be larger than the window.
    fn window_full(&self) -> bool {
        let config = &self.server.config;
        self.sm.as_ref().is_some_and(|sm| {
            sm.unacked.len() >= config.stream_management.max_unacked
                || sm.unacked_bytes as usize >= config.limits.queue_bytes
        })
    }

    /// What the session holds for its client stays bounded: what waits (held while inactive,
    /// away or at a full window) within `limits.queue_len` and `queue_bytes`, as the queue to
    /// it is; what is unacknowledged within twice the window (it grows past the window only by
    /// replies to the client's own requests). Beyond, the stream ends (the session, if it is
    /// away) and all of it takes the way of undelivered stanzas (`finish`), as ejabberd does
    /// at `max_ack_queue`.
    fn within_bounds(&self) -> Next {
        if !self.over_limits() {
            return Next::Continue;
        }
        let (held, held_bytes) = (self.held.queue.len(), self.held.bytes);
        let (unacked, unacked_bytes) = self
            .sm
            .as_ref()
            .map_or((0, 0), |sm| (sm.unacked.len(), sm.unacked_bytes));
        if self.detached_at.is_some() {
            log::info!(
                "connection {}: {held} stanzas ({held_bytes} bytes) held while it was away; \
                 ending the session",
                self.id,
            );
            return Next::Fail(StreamError::new(C::ResourceConstraint));
        }
        log::info!(
            "connection {} from {}: {held} stanzas ({held_bytes} bytes) waiting and {unacked} \
             ({unacked_bytes} bytes) unacknowledged; closing it",
            self.id,
            self.peer,
        );
        let text = match self.held_over_limits() {
            true => "too many stanzas waiting for this client",
            false => "too many unacknowledged stanzas",
        };
        Next::Fail(StreamError::with_text(C::PolicyViolation, text))
    }

    fn held_over_limits(&self) -> bool {
        let limits = &self.server.config.limits;
        self.held.queue.len() > limits.queue_len || self.held.bytes > limits.queue_bytes
    }

    fn over_limits(&self) -> bool {
        let config = &self.server.config;
        let unacked = self.sm.as_ref().is_some_and(|sm| {
            sm.unacked.len() > 2 * config.stream_management.max_unacked
                || sm.unacked_bytes as usize > 2 * config.limits.queue_bytes
        });
        unacked || self.held_over_limits()
    }

    /// Writes a stanza and, with stream management, keeps it until the client acknowledges it;
    /// without, the client has it once the socket does.
    fn write_stanza(&mut self, d: Rc<Delivery>) {
        self.put(&d.el);
        match &mut self.sm {
            Some(sm) => sm.sent(d),
            None => d.delivered(),
        }
    }

    fn write_nonza(&mut self, el: &Element) {
        self.put(el);
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
        // A full window waits for the client's <a/>: ask for it now.
        let full = self.window_full();
        if let Some(sm) = &mut self.sm
            && (sm.should_request(every) || (full && !sm.request_outstanding))
        {
            sm.requested();
            self.put(&smacks::r());
        }
        if self.out.is_empty() {
            return true;
        }
        let limit = Duration::from_secs(self.server.config.limits.write_timeout_secs);
        let write = async { Some(self.io.write_out(&self.out).await.is_ok()) };
        let timeout = async {
            Timer::after(limit).await;
            None
        };
        let ok = match write.or(timeout).await {
            Some(ok) => ok,
            None => {
                log::info!(
                    "connection {} from {}: nothing taken for {}s; closing it",
                    self.id,
                    self.peer,
                    limit.as_secs()
                );
                // Half a TLS record may be out: nothing more can be written.
                self.io = Io::Gone;
                false
            }
        };
        // Idle sessions keep no output buffer.
        self.out.release();
        ok
    }

    /// Ends the stream and the connection, if the client still takes what is written to it.
    async fn close(&mut self) {
        if self.flush().await {
            let limit = Duration::from_secs(self.server.config.limits.write_timeout_secs);
            let close = self.io.shutdown();
            let timeout = async {
                Timer::after(limit).await;
            };
            close.or(timeout).await;
        }
    }

    /// Sends a stanza of the connection's own (a reply, a ping).
    async fn send(&mut self, el: Element) -> Next {
        self.write_stanza(Delivery::new(el));
        self.flush_or_lose().await
    }

    async fn stream_error(&mut self, e: StreamError) {
        log::debug!(
            "connection {} from {}: stream error {e}",
            self.id,
            self.peer
        );
        self.open_header(None);
        self.put(&e.to_element());
        self.put_close();
        self.close().await;
        // The client may still be sending (what led to the error, often): it gets a second
        // to read the error and close before the socket goes.
        self.io.linger(Instant::now() + LINGER).await;
    }

    /// Our stream header, once per stream.
    fn open_header(&mut self, to: Option<&str>) {
        if self.header_sent {
            return;
        }
        self.header_sent = true;
        let id = B64.encode(sasl::random_bytes::<12>());
        let server = self.server.clone();
        self.put_header(&server.config.server.domain, to, &id);
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
                    return self.sasl_failed(Profile::Sasl, F::EncryptionRequired, None, None);
                }
                if el.ns == ns::SASL2 {
                    return self.sasl_failed(Profile::Sasl2, F::EncryptionRequired, None, None);
                }
                Next::Fail(StreamError::with_text(
                    C::NotAuthorized,
                    "STARTTLS and authentication first",
                ))
            }
            Phase::Secure => self.sasl(el).await,
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
                    return match self.resume(&user, &el, None).await {
                        Resume::Handed => Next::Handed,
                        Resume::Lost => Next::Lost,
                        Resume::Failed(failed) => {
                            self.write_nonza(&failed);
                            Next::Continue
                        }
                    };
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

    /// Takes stanzas read from the queue, `(bytes, errors among them)`, off the session's count.
    fn dequeued(&self, (n, errors): (usize, usize)) {
        if let Phase::Bound(jid) = &self.phase
            && let Some(s) = self
                .server
                .sessions()
                .get(jid)
                .filter(|s| s.conn == self.id)
        {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            s.queued.set(s.queued.get().saturating_sub(n));
            let errors = u32::try_from(errors).unwrap_or(u32::MAX);
            s.errors.set(s.errors.get().saturating_sub(errors));
        }
    }

    /// Stanzas this session will not deliver: each takes the way of an undelivered stanza if
    /// it was the last copy (see `router.rs`).
    async fn give_up(&self, stanzas: impl IntoIterator<Item = Rc<Delivery>>) {
        let Phase::Bound(jid) = &self.phase else {
            return;
        };
        let unsent: Vec<(Jid, Element)> = stanzas
            .into_iter()
            .filter_map(Delivery::undelivered)
            .map(|el| (jid.clone(), el))
            .collect();
        if !unsent.is_empty() {
            router::reroute_unsent(&self.server, unsent).await;
        }
    }

    /// The session ends: leave the session table, tell the modules, keep unsent messages.
    async fn finish(&mut self) {
        // Nothing more is queued for this session from here on.
        self.rx.close();
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
        // Sent but never acknowledged, held back, or still queued.
        let mut unsent: Vec<Rc<Delivery>> = match self.sm.take() {
            Some(mut sm) => sm.take_unacked().into(),
            None => Vec::new(),
        };
        unsent.extend(self.held.take());
        while let Some(o) = self.rx.try_recv() {
            if let Outbound::Stanza(d) = o {
                unsent.push(d);
            }
        }
        self.give_up(unsent).await;
        log::debug!("{jid} disconnected");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
