//! A connection another server made to this one (RFC 6120 §4 to §6 with `jabber:server`):
//! STARTTLS (or TLS from the first byte), then the other server authenticates its domain with
//! SASL EXTERNAL, when its certificate is valid for that domain, or with dialback (XEP-0220),
//! which this server checks by asking that domain's authoritative server over a link of its
//! own. Once a pair of domains (theirs, ours) is authenticated, stanzas between them go to the
//! router, their `from` checked against it (RFC 6120 §4.9.3.9: a server speaks only for the
//! domains it authenticated). The same connection answers dialback verification requests
//! (`db:verify`) for the streams this server opened, which need no authentication.
//!
//! XEP-0198 stream management is offered on every secure stream, and enabled once a domain is
//! authenticated (without resumption): a stanza counts as handled once the router took it,
//! and `<a/>` answers an `<r/>` only when the writes of what it counts are durable, so the
//! other server may forget what was acknowledged.
//!
//! Bounds: the reader's limits, the rate of `federation.bytes_per_sec` and `stanzas_per_sec`
//! (beyond it the connection is read more slowly), `federation.max_pending_dialback` domains
//! being verified at once and `max_domains_per_connection` in all, authentication within the
//! connect timeout, and the idle timeout.

use super::io::{Stream, unexpected};
use super::{Pair, Throttle};
use crate::jid::Jid;
use crate::listener::Accepted;
use crate::router::{self, Dest};
use crate::server::Server;
use crate::stanza::{StreamCondition as C, StreamError};
use crate::xml::reader::{StreamEvent, StreamHeader};
use crate::xml::{Element, ns};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use smol::Timer;
use smol::channel::{Receiver, Sender};
use smol::future::FutureExt;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The answer to a dialback verification this connection asked for.
pub type Verdict = (Pair, bool);

struct Incoming {
    server: Rc<Server>,
    id: u64,
    peer: SocketAddr,
    s: Stream,
    /// The id of the current stream (new at each restart): dialback keys are bound to it.
    stream_id: String,
    /// The domains of the current stream header: ours, and the one the peer says it is.
    local: String,
    remote: Option<String>,
    /// (their domain, ours) pairs the peer authenticated.
    authenticated: HashSet<Pair>,
    /// Dialback verifications under way.
    pending: HashSet<Pair>,
    verdicts: (Sender<Verdict>, Receiver<Verdict>),
    sasl_failures: u32,
    /// XEP-0198, once enabled: stanzas handled (wrapping at 2^32).
    handled: Option<u32>,
    started: Instant,
    last_heard: Instant,
    throttle: Throttle,
}

enum Wake {
    Read(Result<Option<usize>, StreamError>),
    Verdict(Verdict),
    Timer,
}

enum Next {
    Continue,
    End,
    Fail(StreamError),
}

pub async fn run(server: Rc<Server>, accepted: Accepted, direct_tls: bool) {
    let Accepted {
        stream, peer, id, ..
    } = accepted;
    let config = &server.config;
    let write_timeout = Duration::from_secs(config.limits.write_timeout_secs);
    let mut c = Incoming {
        s: Stream::new(stream, config.xml_limits(), write_timeout),
        server: server.clone(),
        id,
        peer,
        stream_id: String::new(),
        local: String::new(),
        remote: None,
        authenticated: HashSet::new(),
        pending: HashSet::new(),
        verdicts: smol::channel::unbounded(),
        sasl_failures: 0,
        handled: None,
        started: Instant::now(),
        last_heard: Instant::now(),
        throttle: Throttle::new(&config.federation, config.limits.burst_secs),
    };
    log::debug!("s2s connection {id} from {peer}, direct TLS: {direct_tls}");
    if direct_tls {
        let deadline = c.auth_deadline();
        let tls = server.federation.tls();
        let Some(tls) = tls else { return };
        if let Err(e) = c.s.accept_tls(tls.server.clone(), deadline).await {
            log::debug!("s2s connection {id} from {peer}: {e}");
            return;
        }
    }
    match Box::pin(c.serve()).await {
        Next::Fail(e) => {
            log::info!("s2s connection {id} from {peer} ({}): {e}", c.who());
            c.s.fail(&e).await;
        }
        _ => {
            c.s.write_raw(crate::xml::writer::STREAM_CLOSE);
            c.s.close().await;
        }
    }
    log::debug!("s2s connection {id} from {peer} closed");
}

impl Incoming {
    fn who(&self) -> String {
        self.remote.clone().unwrap_or_else(|| "unnamed".into())
    }

    fn auth_deadline(&self) -> Instant {
        self.started + Duration::from_secs(self.server.config.federation.connect_timeout_secs)
    }

    fn deadline(&self) -> Instant {
        let f = &self.server.config.federation;
        let idle = self.last_heard + Duration::from_secs(f.idle_timeout_secs);
        match self.authenticated.is_empty() && self.pending.is_empty() {
            true => idle.min(self.auth_deadline()),
            false => idle,
        }
    }

    async fn serve(&mut self) -> Next {
        let mut events = Vec::new();
        loop {
            if let Some(wait) = self.throttle.wait() {
                Timer::after(wait).await;
            }
            let deadline = self.deadline();
            let wake = {
                let verdicts = self.verdicts.1.clone();
                let read = async { Wake::Read(self.s.read(&mut events).await) };
                let verdict = async {
                    match verdicts.recv().await {
                        Ok(v) => Wake::Verdict(v),
                        Err(_) => std::future::pending().await,
                    }
                };
                let timer = async {
                    Timer::at(deadline).await;
                    Wake::Timer
                };
                read.or(verdict).or(timer).await
            };
            let next = match wake {
                Wake::Read(Err(e)) => Next::Fail(e),
                Wake::Read(Ok(None)) => return Next::End,
                Wake::Read(Ok(Some(n))) => {
                    self.last_heard = Instant::now();
                    self.throttle.charge(n, events.len());
                    self.events(&mut events).await
                }
                Wake::Verdict(v) => self.verdict(v),
                Wake::Timer
                    if self.authenticated.is_empty() && Instant::now() >= self.auth_deadline() =>
                {
                    Next::Fail(StreamError::with_text(
                        C::ConnectionTimeout,
                        "not authenticated in time",
                    ))
                }
                Wake::Timer if Instant::now() >= deadline => {
                    log::debug!("s2s connection {} idle; closing it", self.id);
                    return Next::End;
                }
                Wake::Timer => Next::Continue,
            };
            match next {
                Next::Continue => {
                    if !self.s.flush().await {
                        return Next::End;
                    }
                }
                other => return other,
            }
        }
    }

    async fn events(&mut self, events: &mut Vec<StreamEvent>) -> Next {
        let was_plain = !self.s.secure();
        for ev in std::mem::take(events) {
            let next = match ev {
                StreamEvent::Open(h) => self.open(h),
                StreamEvent::Close => Next::End,
                StreamEvent::Stanza(el) => self.element(el).await,
            };
            if !matches!(next, Next::Continue) {
                return next;
            }
            if was_plain && self.s.secure() {
                // Nothing sent in the clear acts on the TLS stream.
                break;
            }
        }
        Next::Continue
    }

    fn is_ours(&self, domain: &str) -> bool {
        Jid::parse(domain).is_ok_and(|j| {
            j.local().is_none()
                && j.is_bare()
                && matches!(self.server.destination(&j), Dest::Server | Dest::Service(_))
        })
    }

    /// Whether `domain` is another server's that this one talks to.
    fn is_allowed_remote(&self, domain: &str) -> bool {
        Jid::parse(domain).is_ok_and(|j| {
            j.local().is_none()
                && j.is_bare()
                && j.to_string() == domain
                && self.server.destination(&j) == Dest::Remote
                && self.server.config.federation.allows(domain)
        })
    }

    fn open(&mut self, h: StreamHeader) -> Next {
        self.stream_id = B64.encode(crate::stream::sasl::random_bytes::<12>());
        let to = h.to.clone().unwrap_or_default();
        let from_us = match self.is_ours(&to) {
            true => to.clone(),
            false => self.server.config.server.domain.clone(),
        };
        self.s
            .header(&from_us, h.from.as_deref(), Some(&self.stream_id));
        if h.stream_ns != ns::STREAM || h.content_ns != ns::SERVER {
            return Next::Fail(StreamError::new(C::InvalidNamespace));
        }
        if h.version.as_deref() != Some("1.0") {
            return Next::Fail(StreamError::new(C::UnsupportedVersion));
        }
        if !self.is_ours(&to) {
            return Next::Fail(StreamError::with_text(
                C::HostUnknown,
                format!("this server is not {to}"),
            ));
        }
        self.local = to;
        self.remote = h.from;
        let mut features = Element::new("features", ns::STREAM);
        if !self.s.secure() {
            features.push(
                Element::new("starttls", ns::TLS).with_child(Element::new("required", ns::TLS)),
            );
        } else {
            if self.certificate_valid().is_ok() {
                features.push(
                    Element::new("mechanisms", ns::SASL)
                        .with_child(Element::new("mechanism", ns::SASL).with_text("EXTERNAL")),
                );
            }
            features.push(
                Element::new("dialback", ns::DIALBACK_FEATURE)
                    .with_child(Element::new("errors", ns::DIALBACK_FEATURE)),
            );
            features.push(Element::new("sm", ns::SM));
        }
        self.s.write(&features);
        Next::Continue
    }

    /// Whether the peer's certificate is valid for the domain its stream header names.
    fn certificate_valid(&self) -> Result<(), String> {
        let remote = self.remote.as_deref().ok_or("the stream names no domain")?;
        self.valid_for(remote)
    }

    fn valid_for(&self, domain: &str) -> Result<(), String> {
        let tls = self.server.federation.tls().ok_or("no TLS")?;
        tls.valid_for(&self.s.peer_certificates(), domain)
    }

    async fn element(&mut self, el: Element) -> Next {
        if !self.s.secure() {
            if !el.is("starttls", ns::TLS) {
                return Next::Fail(StreamError::with_text(C::NotAuthorized, "STARTTLS first"));
            }
            self.s.write(&Element::new("proceed", ns::TLS));
            if !self.s.flush().await {
                return Next::End;
            }
            self.s.reader.reset();
            let Some(tls) = self.server.federation.tls() else {
                return Next::End;
            };
            return match self
                .s
                .accept_tls(tls.server.clone(), self.auth_deadline())
                .await
            {
                Ok(()) => Next::Continue,
                Err(e) => {
                    log::debug!("s2s connection {} from {}: {e}", self.id, self.peer);
                    Next::End
                }
            };
        }
        match el.ns.as_str() {
            ns::SASL => self.sasl(&el),
            ns::DIALBACK if el.name == "result" => self.dialback_result(&el),
            ns::DIALBACK if el.name == "verify" => self.dialback_verify(&el),
            ns::SM => self.sm(&el).await,
            ns::CLIENT if matches!(el.name.as_str(), "message" | "presence" | "iq") => {
                self.stanza(el).await
            }
            _ => Next::Fail(unexpected(&el)),
        }
    }

    /// XEP-0198 on this stream: enable (after authentication), and answers to `<r/>`.
    async fn sm(&mut self, el: &Element) -> Next {
        use crate::stream::smacks;
        match (el.name.as_str(), self.handled) {
            ("enable", None) if !self.authenticated.is_empty() => {
                log::info!(
                    "{} asks for acknowledgements of what it sends (stream management)",
                    self.who()
                );
                self.handled = Some(0);
                self.s.write(&Element::new("enabled", ns::SM));
                Next::Continue
            }
            ("enable", _) => {
                self.s.write(&smacks::failed("unexpected-request", None));
                Next::Continue
            }
            ("r", Some(h)) => {
                // What the count covers is durable before the other server may forget it.
                if let Err(e) = self.server.router.store.barrier().await {
                    log::error!("s2s connection {}: {e}", self.id);
                    return Next::Fail(StreamError::new(C::InternalServerError));
                }
                self.s.write(&smacks::a(h));
                Next::Continue
            }
            // Nothing is sent to the other server on this stream for it to acknowledge.
            ("a", Some(_)) => Next::Continue,
            _ => Next::Fail(StreamError::with_text(
                C::UnsupportedStanzaType,
                format!("{} without stream management enabled", el.name),
            )),
        }
    }

    /// SASL EXTERNAL (RFC 6120 §6.4, XEP-0178): the certificate speaks for the domain.
    fn sasl(&mut self, el: &Element) -> Next {
        let failure = |c: &mut Incoming, condition: &str, why: String| {
            log::info!(
                "s2s connection {} from {}: SASL refused: {why}",
                c.id,
                c.peer
            );
            c.s.write(
                &Element::new("failure", ns::SASL).with_child(Element::new(condition, ns::SASL)),
            );
            c.sasl_failures += 1;
            match c.sasl_failures >= 3 {
                true => Next::Fail(StreamError::new(C::PolicyViolation)),
                false => Next::Continue,
            }
        };
        if el.name != "auth" {
            return failure(self, "aborted", "not an auth".into());
        }
        if el.attr("mechanism") != Some("EXTERNAL") {
            return failure(self, "invalid-mechanism", "not EXTERNAL".into());
        }
        let Some(remote) = self.remote.clone() else {
            return failure(self, "not-authorized", "the stream names no domain".into());
        };
        let authzid = match el.text().trim() {
            "" | "=" => Some(remote.clone()),
            t => B64.decode(t).ok().and_then(|b| String::from_utf8(b).ok()),
        };
        if authzid.as_deref() != Some(remote.as_str()) {
            return failure(
                self,
                "invalid-authzid",
                "another domain than the stream's".into(),
            );
        }
        if !self.is_allowed_remote(&remote) {
            return failure(self, "not-authorized", format!("{remote} is not talked to"));
        }
        if let Err(why) = self.certificate_valid() {
            return failure(self, "not-authorized", why);
        }
        let pair = Pair {
            remote,
            local: self.local.clone(),
        };
        log::info!(
            "{} authenticated from {} (certificate)",
            pair.remote,
            self.peer
        );
        self.authenticated.insert(pair);
        self.s.write(&Element::new("success", ns::SASL));
        self.s.reader.restart();
        Next::Continue
    }

    /// XEP-0220 §2.1.2: the peer asks to be accepted as `from` for our `to`, with a key that
    /// its domain's authoritative server will vouch for.
    fn dialback_result(&mut self, el: &Element) -> Next {
        let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
            return Next::Fail(StreamError::new(C::ImproperAddressing));
        };
        let pair = Pair {
            remote: from.to_owned(),
            local: to.to_owned(),
        };
        let key = el.text().trim().to_owned();
        if !self.is_ours(to) {
            return self.dialback_error(&pair, "item-not-found", "cancel");
        }
        if !self.is_allowed_remote(from) {
            log::info!(
                "s2s connection {} from {}: refusing {from}, which this server does not talk to",
                self.id,
                self.peer
            );
            return self.dialback_error(&pair, "forbidden", "cancel");
        }
        if self.authenticated.contains(&pair) {
            self.answer(&pair, true);
            return Next::Continue;
        }
        let f = &self.server.config.federation;
        if self.pending.len() >= f.max_pending_dialback
            || self.authenticated.len() + self.pending.len() >= f.max_domains_per_connection
        {
            return Next::Fail(StreamError::with_text(
                C::PolicyViolation,
                "too many domains asked for on one connection",
            ));
        }
        // XEP-0344 §4: a certificate valid for the domain says what the round trip would.
        match self.valid_for(from) {
            Ok(()) => {
                log::info!(
                    "{from} authenticated from {} (certificate, dialback)",
                    self.peer
                );
                self.authenticated.insert(pair.clone());
                self.answer(&pair, true);
                return Next::Continue;
            }
            Err(why) if f.require_valid_certificates => {
                log::info!(
                    "refusing {from} from {}: its certificate is not valid ({why}) and \
                     federation.require_valid_certificates is on",
                    self.peer
                );
                return self.dialback_error(&pair, "not-authorized", "auth");
            }
            Err(_) => {}
        }
        if key.is_empty() || self.pending.contains(&pair) {
            return self.dialback_error(&pair, "bad-request", "modify");
        }
        self.pending.insert(pair.clone());
        let max = f.max_outgoing;
        let ask = Pair {
            local: pair.local.clone(),
            remote: pair.remote.clone(),
        };
        self.server.router.s2s.verify(
            ask,
            self.stream_id.clone(),
            key,
            self.verdicts.0.clone(),
            max,
        );
        Next::Continue
    }

    fn dialback_error(&mut self, pair: &Pair, condition: &str, typ: &str) -> Next {
        let el = Element::new("result", ns::DIALBACK)
            .with_attr("from", pair.local.as_str())
            .with_attr("to", pair.remote.as_str())
            .with_attr("type", "error")
            .with_child(
                Element::new("error", ns::CLIENT)
                    .with_attr("type", typ)
                    .with_child(Element::new(condition, ns::STANZAS)),
            );
        self.s.write(&el);
        Next::Continue
    }

    fn answer(&mut self, pair: &Pair, valid: bool) {
        let el = Element::new("result", ns::DIALBACK)
            .with_attr("from", pair.local.as_str())
            .with_attr("to", pair.remote.as_str())
            .with_attr("type", if valid { "valid" } else { "invalid" });
        self.s.write(&el);
    }

    fn verdict(&mut self, (pair, valid): Verdict) -> Next {
        if !self.pending.remove(&pair) {
            return Next::Continue;
        }
        match valid {
            true => {
                log::info!(
                    "{} authenticated from {} (dialback)",
                    pair.remote,
                    self.peer
                );
                self.authenticated.insert(pair.clone());
            }
            false => log::info!(
                "{} from {}: dialback failed (its server said the key is not its own, or \
                 could not be reached)",
                pair.remote,
                self.peer
            ),
        }
        self.answer(&pair, valid);
        Next::Continue
    }

    /// XEP-0220 §2.2: as the authoritative server, whether the key is the one this server
    /// gave for its stream `id` to the asker. Keys are derived, not remembered (XEP-0185).
    fn dialback_verify(&mut self, el: &Element) -> Next {
        let (Some(from), Some(to), Some(id)) = (el.attr("from"), el.attr("to"), el.attr("id"))
        else {
            return Next::Fail(StreamError::new(C::ImproperAddressing));
        };
        let mut reply = Element::new("verify", ns::DIALBACK)
            .with_attr("from", to)
            .with_attr("to", from)
            .with_attr("id", id);
        if !self.is_ours(to) {
            reply.set_attr("type", "error");
            reply.push(
                Element::new("error", ns::CLIENT)
                    .with_attr("type", "cancel")
                    .with_child(Element::new("item-not-found", ns::STANZAS)),
            );
        } else {
            let expected = self.server.federation.key(from, to, id);
            let valid = crate::stream::sasl::constant_time_eq(
                expected.as_bytes(),
                el.text().trim().as_bytes(),
            );
            reply.set_attr("type", if valid { "valid" } else { "invalid" });
        }
        self.s.write(&reply);
        Next::Continue
    }

    async fn stanza(&mut self, mut el: Element) -> Next {
        let (Some(from), Some(to)) = (
            el.attr("from").and_then(|f| Jid::parse(f).ok()),
            el.attr("to").and_then(|t| Jid::parse(t).ok()),
        ) else {
            return Next::Fail(StreamError::with_text(
                C::ImproperAddressing,
                "a stanza between servers has a valid from and to",
            ));
        };
        if self.authenticated.is_empty() {
            return Next::Fail(StreamError::with_text(
                C::NotAuthorized,
                "authenticate first",
            ));
        }
        let pair = Pair {
            remote: from.domain().to_owned(),
            local: to.domain().to_owned(),
        };
        if !self.authenticated.contains(&pair) {
            let ours = self.authenticated.iter().any(|p| p.local == pair.local);
            return Next::Fail(match ours {
                true => StreamError::with_text(
                    C::InvalidFrom,
                    format!("{} is not authenticated here", pair.remote),
                ),
                false => StreamError::with_text(
                    C::HostUnknown,
                    format!("{} is not authenticated here", pair.local),
                ),
            });
        }
        if is_link_ping_answer(&el, &from, &to) {
            let id = el.attr("id").unwrap_or_default().to_owned();
            self.server.router.s2s.answered(&pair, id);
        } else {
            // Whatever the element says, it is the stanza of this envelope.
            el.set_attr("from", from.to_string());
            // An acknowledgement waits for every write (see `sm`), the trailing ones included.
            let _ = router::from_remote(&self.server, from, el).await;
        }
        if let Some(h) = &mut self.handled {
            *h = h.wrapping_add(1);
        }
        Next::Continue
    }
}

/// Whether `el` answers a ping one of our links wrote after stanzas (see `outgoing.rs`):
/// from the other domain itself to ours, with a result or an error.
fn is_link_ping_answer(el: &Element, from: &Jid, to: &Jid) -> bool {
    el.name == "iq"
        && matches!(el.attr("type"), Some("result" | "error"))
        && el
            .attr("id")
            .is_some_and(|id| id.starts_with(super::outgoing::PING_ID_PREFIX))
        && from.local().is_none()
        && from.is_bare()
        && to.local().is_none()
        && to.is_bare()
}
