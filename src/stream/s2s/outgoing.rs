//! A connection this server makes to another (RFC 6120 §4 to §6, `jabber:server`), for one
//! link: one of our domains speaking to one other domain. It finds the server (`resolve`),
//! connects, secures the connection (TLS from the first byte, or STARTTLS: nothing goes in
//! the clear), then, once there is a stanza to send, authenticates the local domain with SASL
//! EXTERNAL if the other server offers it for our certificate, else with dialback (XEP-0220).
//! Dialback verification requests (`db:verify`) for the other server's connections to us go out
//! as soon as the stream is secure: they need no authentication.
//!
//! What the link's queue holds waits until the stream is ready. If the server cannot be
//! reached or does not accept us within `federation.connect_timeout_secs`, every stanza that
//! waited goes back to its sender as `remote-server-not-found` (or `remote-server-timeout`),
//! and the link is gone: the next stanza for that domain tries again. A link that carried
//! nothing for `federation.idle_timeout_secs` closes the same way, with nothing waiting.
//!
//! A stanza written to a TCP connection may still be lost: the other server may die, or
//! close, before it reads it. So when the other server offers XEP-0198 stream management,
//! the link enables it (without resumption, which servers do not offer each other), asks for
//! an acknowledgement after each write, and keeps what it wrote until acknowledged; the bytes
//! kept count against `queue_bytes`. When a link that had been ready dies (or its
//! acknowledgement does not come within the connect timeout), what it kept, and what still
//! waited, goes out once more over a new link, first; what was already such a second try goes
//! back to its sender as `remote-server-timeout`. The other server may so get a stanza twice
//! (it handled it but its acknowledgement was lost), never none without its sender knowing.
//!
//! A server that offers no stream management (or refuses it) still reads a stream in order,
//! and answers every iq (RFC 6120 §8.2.3): after writing, the link sends it a ping
//! (XEP-0199, from our domain to its domain), and the answer, a result or an error, which
//! comes back over that server's own connection to us, says it read every stanza written
//! before the ping. Until then the link keeps them as it keeps unacknowledged ones: if the
//! link dies first they go out once more over a new link. A ping still unanswered after the
//! connect timeout on a link that is up means that server cannot answer (it has no way back
//! to us): from then on, what the link writes counts as delivered once written.
//!
//! What the link holds (waiting for the stream, written and not acknowledged) is kept in its
//! `Held`, which the router's table sees too: when the server stops, it takes all of it
//! from there, whatever this task is doing at that moment (see `parked.rs`). What is
//! delivered (acknowledged, or read before an answered ping) loses its row of `s2s_waiting`,
//! one trailing write per acknowledgement or answer.

use super::incoming::Verdict;
use super::io::Stream;
use super::resolve::{self, Candidate};
use super::{Delivered, NewLink, Out, Pair, Queued, parked};
use crate::router;
use crate::server::Server;
use crate::stanza::Condition;
use crate::xml::reader::StreamEvent;
use crate::xml::{Element, ns};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use smol::channel::Sender;
use smol::future::FutureExt;
use smol::{Async, LocalExecutor, Timer};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Starts a task for every new link, for as long as the server runs.
pub async fn connector(server: Rc<Server>, ex: Rc<LocalExecutor<'static>>) {
    while let Some(link) = server.router.s2s.next_new().await {
        let s = server.clone();
        ex.spawn(async move { Box::pin(run(s, link)).await })
            .detach();
    }
}

/// Why a link ends with stanzas undelivered: the error their senders get, and the log's words.
struct Failure(Condition, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Secure, not authenticated (nor trying to be).
    Open,
    /// SASL EXTERNAL sent.
    Sasl,
    /// SASL succeeded; the new stream's header and features are next.
    Restart,
    /// `db:result` sent.
    Dialback,
    Ready,
}

struct Outgoing {
    server: Rc<Server>,
    link: NewLink,
    s: Stream,
    events: VecDeque<StreamEvent>,
    stream_id: String,
    features: Element,
    state: State,
    /// XEP-0198, once enabled: what is written is kept (in `link.held.unacked`) until
    /// acknowledged.
    sm: Option<Acks>,
    /// Whether `<enable/>` was sent (or stream management is not offered): once per stream.
    sm_tried: bool,
    /// Without stream management: the outstanding ping, whose answer delivers what was
    /// written before it.
    ping: Option<Ping>,
    /// Pings sent on this link, for their ids.
    pings: u64,
    /// The other server let a ping go unanswered while the link stayed up: it cannot answer
    /// (no way back to us, a server that answers no iq), so what is written counts as
    /// delivered once written, and no more pings are sent.
    unanswered: bool,
    /// Verification requests that wait for a moment they may be sent.
    verifies: Vec<(String, String, Sender<Verdict>)>,
    /// Verification requests sent, by stream id, with when.
    asked: HashMap<String, (Instant, Vec<Sender<Verdict>>)>,
    /// The moment the stream must be ready by, once something waits for it.
    deadline: Instant,
    last_active: Instant,
}

/// XEP-0198's outbound side on a link: the other server says how many of our stanzas it
/// handled (`h`, wrapping at 2^32); ours stay in `link.held.unacked` until it does.
#[derive(Default)]
struct Acks {
    /// Its last `h`.
    acked: u32,
    /// When the outstanding `<r/>` was sent.
    asked: Option<Instant>,
}

/// A ping written after stanzas on a stream without stream management.
struct Ping {
    id: String,
    /// How many of the oldest stanzas in `link.held.unacked` its answer delivers.
    covers: usize,
    sent: Instant,
}

/// The ids of a link's pings, which the other server's answers carry back.
pub const PING_ID_PREFIX: &str = "hearth-link-";

async fn run(server: Rc<Server>, link: NewLink) {
    let f = &server.config.federation;
    let deadline = Instant::now() + Duration::from_secs(f.connect_timeout_secs);
    let pair = link.pair.clone();
    log::debug!("connecting to {} for {}", pair.remote, pair.local);
    let (s, header_id, features) = match connect(&server, &pair, deadline).await {
        Ok(c) => c,
        Err(Failure(condition, why)) => {
            log::info!("cannot reach {} for {}: {why}", pair.remote, pair.local);
            return end(&server, link, HashMap::new(), condition, false).await;
        }
    };
    let mut c = Outgoing {
        server: server.clone(),
        link,
        s,
        events: VecDeque::new(),
        stream_id: header_id,
        features,
        state: State::Open,
        sm: None,
        sm_tried: false,
        ping: None,
        pings: 0,
        unanswered: false,
        verifies: Vec::new(),
        asked: HashMap::new(),
        deadline,
        last_active: Instant::now(),
    };
    let failure = c.serve().await;
    let retry = failure.is_some() && c.state == State::Ready;
    let condition = match failure {
        Some(Failure(condition, why)) => {
            log::info!(
                "the link from {} to {} failed: {why}",
                pair.local,
                pair.remote
            );
            c.s.write_raw(crate::xml::writer::STREAM_CLOSE);
            condition
        }
        None => {
            c.s.write_raw(crate::xml::writer::STREAM_CLOSE);
            Condition::RemoteServerTimeout
        }
    };
    c.s.close().await;
    let Outgoing {
        link,
        asked,
        mut verifies,
        ..
    } = c;
    for (_, _, reply) in verifies.drain(..) {
        let _ = reply.try_send((pair.clone(), false));
    }
    end(&server, link, asked, condition, retry).await;
}

/// The link is done: it leaves the router's table (what comes next makes a new one), and
/// what it still holds (unacknowledged, waiting, queued: in that order) either goes to a new
/// link, when `retry` (the link had been ready) and for the first time, or back to its
/// senders.
async fn end(
    server: &Server,
    link: NewLink,
    asked: HashMap<String, (Instant, Vec<Sender<Verdict>>)>,
    condition: Condition,
    retry: bool,
) {
    // Nothing awaits between here and their being queued on a new link or bounced: a stop,
    // which takes what the links hold, cannot come while they are only in this function.
    server.router.s2s.remove(&link.pair, link.id);
    server.router.s2s.ended(link.id);
    link.rx.close();
    let mut left = link.held.take();
    let answer = |reply: Sender<Verdict>| {
        let _ = reply.try_send((link.pair.clone(), false));
    };
    while let Ok(o) = link.rx.try_recv() {
        match o {
            Out::Stanza(el) => left.push_back((el, false)),
            Out::Again(el) => left.push_back((el, true)),
            Out::Verify { reply, .. } => answer(reply),
            Out::Answered(_) => {}
        }
    }
    for (_, (_, replies)) in asked {
        replies.into_iter().for_each(answer);
    }
    link.queued.set(0);
    let (again, mut undelivered): (Vec<_>, Vec<_>) =
        left.into_iter().partition(|(_, tried)| retry && !tried);
    let again: Vec<Queued> = again.into_iter().map(|(q, _)| q).collect();
    let mut undelivered: Vec<(Queued, Condition)> =
        undelivered.drain(..).map(|(q, _)| (q, condition)).collect();
    if !again.is_empty() {
        log::info!(
            "{} stanzas for {} go out again over a new link",
            again.len(),
            link.pair.remote
        );
        let max = server.config.federation.max_outgoing;
        undelivered.extend(server.router.s2s.send_again(link.pair.clone(), again, max));
    }
    if !undelivered.is_empty() {
        log::info!(
            "{} stanzas for {} go back to their senders ({})",
            undelivered.len(),
            link.pair.remote,
            condition.as_str()
        );
        let pair = &link.pair;
        let undelivered = undelivered
            .into_iter()
            .map(|(q, c)| (pair.clone(), q, c))
            .collect();
        router::bounce_remote(server, undelivered).await;
    }
}

/// Finds the other server and opens a secure stream to it: the stream, its id, and its
/// features.
async fn connect(
    server: &Rc<Server>,
    pair: &Pair,
    deadline: Instant,
) -> Result<(Stream, String, Element), Failure> {
    let f = &server.config.federation;
    let candidates = match resolve::configured(f, &pair.remote) {
        Some(c) => c,
        None => {
            let domain = pair.remote.clone();
            let lookup = smol::unblock(move || resolve::lookup(&domain));
            let timeout = async {
                Timer::at(deadline).await;
                Vec::new()
            };
            lookup.or(timeout).await
        }
    };
    if candidates.is_empty() {
        return Err(Failure(
            Condition::RemoteServerNotFound,
            format!("no address found for {} (DNS SRV, A, AAAA)", pair.remote),
        ));
    }
    let mut last = Failure(Condition::RemoteServerNotFound, "no address".into());
    for c in candidates {
        if Instant::now() >= deadline {
            return Err(Failure(
                Condition::RemoteServerTimeout,
                format!("no connection within {}s", f.connect_timeout_secs),
            ));
        }
        match open(server, pair, c, deadline).await {
            Ok(done) => return Ok(done),
            Err(why) => {
                log::debug!("{} at {}: {why}", pair.remote, c.addr);
                let condition = match Instant::now() >= deadline {
                    true => Condition::RemoteServerTimeout,
                    false => Condition::RemoteServerNotFound,
                };
                last = Failure(condition, format!("{} at {}: {why}", pair.remote, c.addr));
            }
        }
    }
    Err(last)
}

async fn open(
    server: &Rc<Server>,
    pair: &Pair,
    c: Candidate,
    deadline: Instant,
) -> Result<(Stream, String, Element), String> {
    let tcp = super::io::within(Async::<std::net::TcpStream>::connect(c.addr), deadline)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.get_ref().set_nodelay(true);
    let config = &server.config;
    let write_timeout = Duration::from_secs(config.limits.write_timeout_secs);
    let mut s = Stream::new(tcp, config.xml_limits(), write_timeout);
    let tls = server.federation.tls().ok_or("no TLS configuration")?;
    if c.direct_tls {
        s.connect_tls(tls.client_direct.clone(), &pair.remote, deadline)
            .await?;
    }
    let mut events = VecDeque::new();
    loop {
        s.header(&pair.local, Some(&pair.remote), None);
        if !s.flush().await {
            return Err("the connection closed".into());
        }
        let id = match next(&mut s, &mut events, deadline).await? {
            StreamEvent::Open(h) => {
                if h.content_ns != ns::SERVER || h.stream_ns != ns::STREAM {
                    return Err("not a server-to-server stream".into());
                }
                if h.version.as_deref() != Some("1.0") {
                    return Err("the server does not speak XMPP 1.0 streams".into());
                }
                h.id.unwrap_or_default()
            }
            other => return Err(format!("expected a stream header, got {other:?}")),
        };
        let features = match next(&mut s, &mut events, deadline).await? {
            StreamEvent::Stanza(el) if el.is("features", ns::STREAM) => el,
            StreamEvent::Stanza(el) if el.is("error", ns::STREAM) => {
                return Err(format!("stream error {}", stream_error_text(&el)));
            }
            other => return Err(format!("expected stream features, got {other:?}")),
        };
        if s.secure() {
            match tls.valid_for(&s.peer_certificates(), &pair.remote) {
                Ok(()) => log::debug!("{}: certificate valid", pair.remote),
                Err(why) if config.federation.require_valid_certificates => {
                    return Err(format!(
                        "its certificate is not valid ({why}) and \
                         federation.require_valid_certificates is on"
                    ));
                }
                Err(why) => log::debug!(
                    "{}: certificate not valid ({why}); dialback must do",
                    pair.remote
                ),
            }
            if !events.is_empty() {
                return Err("unexpected data after the stream features".into());
            }
            return Ok((s, id, features));
        }
        if !features.has_child("starttls", ns::TLS) {
            return Err("the server does not offer TLS".into());
        }
        s.write(&Element::new("starttls", ns::TLS));
        if !s.flush().await {
            return Err("the connection closed".into());
        }
        match next(&mut s, &mut events, deadline).await? {
            StreamEvent::Stanza(el) if el.is("proceed", ns::TLS) => {}
            other => return Err(format!("STARTTLS refused: {other:?}")),
        }
        if !events.is_empty() {
            return Err("data after <proceed/> in the clear".into());
        }
        s.reader.reset();
        s.connect_tls(tls.client.clone(), &pair.remote, deadline)
            .await?;
    }
}

/// The next event of the stream, reading as needed, by `deadline`.
async fn next(
    s: &mut Stream,
    events: &mut VecDeque<StreamEvent>,
    deadline: Instant,
) -> Result<StreamEvent, String> {
    loop {
        if let Some(ev) = events.pop_front() {
            return Ok(ev);
        }
        let mut read = Vec::new();
        let timeout = async {
            Timer::at(deadline).await;
            Err(crate::stanza::StreamError::new(
                crate::stanza::StreamCondition::ConnectionTimeout,
            ))
        };
        match s.read(&mut read).or(timeout).await {
            Ok(Some(_)) => events.extend(read),
            Ok(None) => return Err("the connection closed".into()),
            Err(e) => return Err(format!("{e}")),
        }
    }
}

fn stream_error_text(el: &Element) -> String {
    el.elements()
        .map(|c| match c.name.as_str() {
            "text" => format!("({})", c.text()),
            n => n.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

enum Wake {
    Read(Result<Option<usize>, crate::stanza::StreamError>),
    Queue(Option<Out>),
    Timer,
}

impl Outgoing {
    fn pair(&self) -> &Pair {
        &self.link.pair
    }

    /// Runs the link until it fails (`Some`) or is idle (`None`).
    async fn serve(&mut self) -> Option<Failure> {
        let server = self.server.clone();
        let f = &server.config.federation;
        let idle = Duration::from_secs(f.idle_timeout_secs);
        let connect = Duration::from_secs(f.connect_timeout_secs);
        let mut read = Vec::new();
        loop {
            if let Some(failure) = self.handle_events() {
                return Some(failure);
            }
            self.start_auth();
            self.send_verifies();
            if self.state == State::Ready {
                self.enable_sm();
                while let Some((q, again)) = self.next_waiting() {
                    self.write_stanza(q, again);
                }
                self.request_ack();
            }
            if !self.s.flush().await {
                return Some(Failure(
                    Condition::RemoteServerTimeout,
                    "the connection was lost".into(),
                ));
            }
            let now = Instant::now();
            let ack_asked = match &self.sm {
                Some(acks) => acks.asked,
                None => self.ping.as_ref().map(|p| p.sent),
            };
            let waits = !self.link.held.waiting.borrow().is_empty();
            let busy = waits || !self.asked.is_empty() || ack_asked.is_some();
            let unready = self.state != State::Ready && waits;
            let at = match (unready, busy) {
                (true, _) => self.deadline,
                (false, true) => self
                    .oldest_question()
                    .into_iter()
                    .chain(ack_asked)
                    .min()
                    .map_or(now + connect, |t| t + connect),
                (false, false) => self.last_active + idle,
            };
            let wake = {
                let rx = self.link.rx.clone();
                let s = &mut self.s;
                let reading = async { Wake::Read(s.read(&mut read).await) };
                let queue = async { Wake::Queue(rx.recv().await.ok()) };
                let timer = async {
                    Timer::at(at).await;
                    Wake::Timer
                };
                reading.or(queue).or(timer).await
            };
            match wake {
                Wake::Read(Ok(Some(_))) => {
                    self.last_active = Instant::now();
                    self.events.extend(read.drain(..));
                }
                Wake::Read(Ok(None)) => {
                    return Some(Failure(
                        Condition::RemoteServerTimeout,
                        "the other server closed the connection".into(),
                    ));
                }
                Wake::Read(Err(e)) => {
                    return Some(Failure(Condition::RemoteServerTimeout, format!("{e}")));
                }
                Wake::Queue(Some(out)) => {
                    self.last_active = Instant::now();
                    self.take(out);
                    // What else waits goes out in the same write.
                    while let Ok(out) = self.link.rx.try_recv() {
                        self.take(out);
                    }
                }
                Wake::Queue(None) => return None,
                Wake::Timer => {
                    let now = Instant::now();
                    if unready && now >= self.deadline {
                        return Some(Failure(
                            Condition::RemoteServerTimeout,
                            format!("not accepted within {}s", f.connect_timeout_secs),
                        ));
                    }
                    if self.sm.is_none() {
                        if self.ping.as_ref().is_some_and(|p| now >= p.sent + connect) {
                            self.ping_unanswered(connect);
                        }
                    } else if ack_asked.is_some_and(|t| now >= t + connect) {
                        return Some(Failure(
                            Condition::RemoteServerTimeout,
                            format!("no acknowledgement within {}s", f.connect_timeout_secs),
                        ));
                    }
                    self.expire_questions(now, connect);
                    if !busy && now >= self.last_active + idle && self.link.rx.is_empty() {
                        log::debug!(
                            "the link from {} to {} is idle",
                            self.pair().local,
                            self.pair().remote
                        );
                        // Out of the table first: nothing more is queued for this task.
                        self.server.router.s2s.remove(&self.link.pair, self.link.id);
                        if self.link.rx.is_empty() {
                            return None;
                        }
                    }
                }
            }
        }
    }

    fn oldest_question(&self) -> Option<Instant> {
        self.asked.values().map(|(t, _)| *t).min()
    }

    /// Questions the other server did not answer in time are answered "no".
    fn expire_questions(&mut self, now: Instant, wait: Duration) {
        let pair = self.link.pair.clone();
        self.asked.retain(|_, (t, replies)| {
            let keep = now < *t + wait;
            if !keep {
                for r in replies.drain(..) {
                    let _ = r.try_send((pair.clone(), false));
                }
            }
            keep
        });
    }

    fn take(&mut self, out: Out) {
        let (el, again) = match out {
            Out::Stanza(el) => (el, false),
            Out::Again(el) => (el, true),
            Out::Verify { id, key, reply } => return self.verifies.push((id, key, reply)),
            Out::Answered(id) => return self.ping_answered(&id),
        };
        let mut waiting = self.link.held.waiting.borrow_mut();
        if waiting.is_empty() && self.state != State::Ready {
            // Something waits now: the stream has until then to be ready.
            let f = &self.server.config.federation;
            self.deadline = self
                .deadline
                .max(Instant::now() + Duration::from_secs(f.connect_timeout_secs));
        }
        waiting.push_back((el, again));
    }

    fn next_waiting(&self) -> Option<(Queued, bool)> {
        self.link.held.waiting.borrow_mut().pop_front()
    }

    /// Writes a stanza, kept until acknowledged (or read before an answered ping), its bytes
    /// still counted in the link's queue.
    ///
    /// Without stream management, an iq result or error is delivered once written: nobody
    /// waits for it but the one who asked, whose own timeout covers its loss, and a ping for
    /// the answer to the other server's ping would make it answer and ping again, forever.
    fn write_stanza(&mut self, q: Queued, again: bool) {
        self.s.write(&q.el);
        let answer = q.el.name == "iq" && matches!(q.el.attr("type"), Some("result" | "error"));
        if self.sm.is_none() && (answer || self.unanswered) {
            return self.delivered(Delivered::of([q]));
        }
        self.link.held.unacked.borrow_mut().push_back((q, again));
    }

    /// Stanzas left the link delivered: their bytes leave its queue, their rows the store.
    fn delivered(&self, d: Delivered) {
        let q = &self.link.queued;
        q.set(q.get().saturating_sub(d.bytes));
        parked::forget_later(&self.server.router.store, &self.link.pair, d.seqs);
    }

    /// XEP-0198 §3, once the stream is ready: enabled if the other server offers it. Stanzas
    /// written from now on count, whether it then agrees or not.
    fn enable_sm(&mut self) {
        if std::mem::replace(&mut self.sm_tried, true) {
            return;
        }
        if self.features.has_child("sm", ns::SM) {
            self.s.write(&Element::new("enable", ns::SM));
            self.sm = Some(Acks::default());
        }
    }

    /// Asks for an acknowledgement of what was written, unless one is outstanding (its
    /// answer covers what it can; the next request the rest): `<r/>` under stream
    /// management, a ping without it.
    fn request_ack(&mut self) {
        let unacked = self.link.held.unacked.borrow().len();
        if unacked == 0 {
            return;
        }
        match &mut self.sm {
            Some(acks) if acks.asked.is_none() => {
                self.s.write(&crate::stream::smacks::r());
                acks.asked = Some(Instant::now());
            }
            Some(_) => {}
            None if self.ping.is_none() && !self.unanswered => {
                self.pings += 1;
                let id = format!("{PING_ID_PREFIX}{}-{}", self.link.id, self.pings);
                let pair = &self.link.pair;
                let iq = Element::new("iq", ns::CLIENT)
                    .with_attr("type", "get")
                    .with_attr("from", pair.local.as_str())
                    .with_attr("to", pair.remote.as_str())
                    .with_attr("id", id.as_str())
                    .with_child(Element::new("ping", ns::PING));
                self.s.write(&iq);
                self.ping = Some(Ping {
                    id,
                    covers: unacked,
                    sent: Instant::now(),
                });
            }
            None => {}
        }
    }

    /// No answer to the ping while the link stays up. A link that dies fails before this; one
    /// that lives has most likely carried what was written, and the other server has no way
    /// to say so (a server behind a firewall that only connects out, which push services
    /// may be, cannot answer over a link of its own): what was written, before the ping and
    /// since, counts as delivered, as on such links before pings.
    fn ping_unanswered(&mut self, waited: Duration) {
        if self.ping.take().is_none() {
            return;
        }
        log::info!(
            "{} did not answer the ping from {} within {}s; what is written to it counts as \
             delivered once written",
            self.pair().remote,
            self.pair().local,
            waited.as_secs()
        );
        self.unanswered = true;
        let written = std::mem::take(&mut *self.link.held.unacked.borrow_mut());
        self.delivered(Delivered::of(written.into_iter().map(|(q, _)| q)));
    }

    /// The other server answered a ping: it read what was written before it.
    fn ping_answered(&mut self, id: &str) {
        let Some(ping) = self.ping.take_if(|p| p.id == id) else {
            return;
        };
        let done = self.link.held.acknowledged(ping.covers);
        log::debug!(
            "{} has read {} stanzas from {} (ping answered)",
            self.pair().remote,
            ping.covers,
            self.pair().local
        );
        self.delivered(done);
    }

    /// The other server's `<a/>`: what it handled leaves the link.
    fn acknowledged(&mut self, el: &Element) -> Option<Failure> {
        let Some(acks) = &mut self.sm else {
            return None;
        };
        let unacked = self.link.held.unacked.borrow().len();
        let h = crate::stream::smacks::h_of(el);
        let n = h.map(|h| h.wrapping_sub(acks.acked) as usize);
        let (Some(h), Some(n)) = (h, n.filter(|n| *n <= unacked)) else {
            return Some(Failure(
                Condition::RemoteServerTimeout,
                format!(
                    "it acknowledged {} stanzas, {} were unacknowledged",
                    el.attr("h").unwrap_or("no number of"),
                    unacked
                ),
            ));
        };
        acks.acked = h;
        acks.asked = None;
        let done = self.link.held.acknowledged(n);
        self.delivered(done);
        log::debug!(
            "{} has handled {h} stanzas from {}",
            self.pair().remote,
            self.pair().local
        );
        None
    }

    /// Sends the verification requests that wait, when the stream is between negotiations.
    fn send_verifies(&mut self) {
        if matches!(self.state, State::Sasl | State::Restart) {
            return;
        }
        let now = Instant::now();
        for (id, key, reply) in std::mem::take(&mut self.verifies) {
            let el = Element::new("verify", ns::DIALBACK)
                .with_attr("from", self.link.pair.local.as_str())
                .with_attr("to", self.link.pair.remote.as_str())
                .with_attr("id", id.as_str())
                .with_text(key);
            self.s.write(&el);
            self.asked
                .entry(id)
                .or_insert((now, Vec::new()))
                .1
                .push(reply);
        }
    }

    /// Authenticates the local domain once stanzas wait: SASL EXTERNAL when offered, dialback
    /// otherwise.
    fn start_auth(&mut self) {
        if self.state != State::Open || self.link.held.waiting.borrow().is_empty() {
            return;
        }
        let external = self
            .features
            .child("mechanisms", ns::SASL)
            .is_some_and(|m| m.elements().any(|c| c.text().trim() == "EXTERNAL"));
        if external {
            let auth = Element::new("auth", ns::SASL)
                .with_attr("mechanism", "EXTERNAL")
                .with_text(B64.encode(&self.link.pair.local));
            self.s.write(&auth);
            self.state = State::Sasl;
        } else {
            self.dialback();
        }
    }

    fn dialback(&mut self) {
        let pair = &self.link.pair;
        let key = self
            .server
            .federation
            .key(&pair.remote, &pair.local, &self.stream_id);
        let el = Element::new("result", ns::DIALBACK)
            .with_attr("from", pair.local.as_str())
            .with_attr("to", pair.remote.as_str())
            .with_text(key);
        self.s.write(&el);
        self.state = State::Dialback;
    }

    fn handle_events(&mut self) -> Option<Failure> {
        while let Some(ev) = self.events.pop_front() {
            let el = match ev {
                StreamEvent::Close => {
                    return Some(Failure(
                        Condition::RemoteServerTimeout,
                        "the other server closed the stream".into(),
                    ));
                }
                StreamEvent::Open(h) if self.state == State::Restart => {
                    self.stream_id = h.id.unwrap_or_default();
                    continue;
                }
                StreamEvent::Open(_) => {
                    return Some(Failure(
                        Condition::RemoteServerNotFound,
                        "an unexpected stream header".into(),
                    ));
                }
                StreamEvent::Stanza(el) => el,
            };
            if let Some(f) = self.element(el) {
                return Some(f);
            }
        }
        None
    }

    fn element(&mut self, el: Element) -> Option<Failure> {
        let refused = |why: String| Some(Failure(Condition::RemoteServerNotFound, why));
        match (self.state, el.ns.as_str(), el.name.as_str()) {
            (_, ns::STREAM, "error") => refused(format!("stream error {}", stream_error_text(&el))),
            (State::Ready, ns::SM, "enabled") => {
                log::info!(
                    "{} acknowledges what {} sends (stream management)",
                    self.pair().remote,
                    self.pair().local
                );
                None
            }
            (State::Ready, ns::SM, "failed") => {
                log::info!(
                    "{} refused stream management; a ping confirms what {} writes",
                    self.pair().remote,
                    self.pair().local
                );
                // What was written since `<enable/>` waits for the ping too.
                self.sm = None;
                None
            }
            (State::Ready, ns::SM, "a") => self.acknowledged(&el),
            (State::Ready, ns::SM, "r") => {
                // Nothing comes to us on this stream, so nothing was handled.
                self.s.write(&crate::stream::smacks::a(0));
                None
            }
            (_, ns::DIALBACK, "verify") => {
                let valid = el.attr("type") == Some("valid");
                let id = el.attr("id").unwrap_or_default();
                if let Some((_, replies)) = self.asked.remove(id) {
                    for r in replies {
                        let _ = r.try_send((self.link.pair.clone(), valid));
                    }
                }
                None
            }
            (State::Sasl, ns::SASL, "success") => {
                self.s.reader.restart();
                let pair = self.link.pair.clone();
                self.s.header(&pair.local, Some(&pair.remote), None);
                self.state = State::Restart;
                None
            }
            (State::Sasl, ns::SASL, "failure") => {
                let dialback = self.features.has_child("dialback", ns::DIALBACK_FEATURE);
                if !dialback {
                    return refused("it refused our certificate and offers no dialback".into());
                }
                log::debug!(
                    "{} refused our certificate; trying dialback",
                    self.pair().remote
                );
                self.dialback();
                None
            }
            (State::Restart, ns::STREAM, "features") => {
                // The features of the authenticated stream say what it offers now.
                self.features = el;
                log::info!(
                    "{} accepted {} (certificate)",
                    self.pair().remote,
                    self.pair().local
                );
                self.state = State::Ready;
                None
            }
            (State::Dialback, ns::DIALBACK, "result") => match el.attr("type") {
                Some("valid") => {
                    log::info!(
                        "{} accepted {} (dialback)",
                        self.pair().remote,
                        self.pair().local
                    );
                    self.state = State::Ready;
                    None
                }
                t => refused(format!(
                    "dialback refused ({})",
                    match t {
                        Some("error") =>
                            stream_error_text(el.child("error", ns::CLIENT).unwrap_or(&el)),
                        _ => "invalid".into(),
                    }
                )),
            },
            _ => {
                log::debug!(
                    "ignoring <{} xmlns='{}'/> from {} on our connection",
                    el.name,
                    el.ns,
                    self.pair().remote
                );
                None
            }
        }
    }
}
