//! Stream negotiation (RFC 6120 §4-7): the stream header and features, STARTTLS, SASL with
//! throttling, and resource binding.
//!
//! Every SASL attempt that does not succeed counts, aborted or malformed ones too: towards
//! `auth.attempts_per_stream`, past which the stream ends, and towards the throttle of the
//! source (`stream::throttle`). A source over its limit for an account is answered
//! `temporary-auth-failure` whether its password was right or not, so the refusal tells it
//! nothing, and the account's owner elsewhere is not affected.

use super::*;
use crate::modules::{Cx, Stage};
use crate::stream::throttle::{Limits, Source};

impl Conn {
    pub(super) async fn start_tls(&mut self) -> bool {
        let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::Gone) else {
            return false;
        };
        let acceptor = futures_rustls::TlsAcceptor::from(self.server.tls.borrow().clone());
        let handshake = acceptor.accept(tcp);
        let timeout = async {
            Timer::at(self.login_deadline()).await;
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
    pub(super) fn channel_binding(&self) -> Option<Vec<u8>> {
        let conn = self.io.tls()?;
        if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
            return None;
        }
        conn.export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
            .ok()
    }

    pub(super) fn open(&mut self, h: StreamHeader) -> Next {
        self.open_header(h.from.as_deref());
        if h.stream_ns != ns::STREAM || h.content_ns != ns::CLIENT {
            return Next::Fail(StreamError::new(C::InvalidNamespace));
        }
        if h.version.as_deref() != Some("1.0") {
            return Next::Fail(StreamError::new(C::UnsupportedVersion));
        }
        if h.to
            .as_deref()
            .is_some_and(|t| !self.server.serves_accounts(t))
        {
            return Next::Fail(StreamError::with_text(
                C::HostUnknown,
                format!("this server serves {}", self.server.config.server.domain),
            ));
        }
        let mut features = Element::new("features", ns::STREAM);
        let stage = match &self.phase {
            Phase::Plain => {
                features.push(
                    Element::new("starttls", ns::TLS).with_child(Element::new("required", ns::TLS)),
                );
                None
            }
            Phase::Secure => {
                let mut mechs = Element::new("mechanisms", ns::SASL);
                let cb = self.channel_binding().is_some();
                for m in self
                    .server
                    .modules()
                    .iter()
                    .flat_map(|m| m.sasl_mechanisms(cb))
                {
                    mechs.push(Element::new("mechanism", ns::SASL).with_text(*m));
                }
                features.push(mechs);
                Some(Stage::Authenticate)
            }
            Phase::Authenticated(..) | Phase::Bound(_) => {
                features.push(Element::new("bind", ns::BIND));
                features.push(
                    Element::new("session", ns::SESSION)
                        .with_child(Element::new("optional", ns::SESSION)),
                );
                features.push(Element::new("sm", ns::SM));
                features.push(Element::new("csi", ns::CSI));
                Some(Stage::Bind)
            }
        };
        if let Some(stage) = stage {
            let mut extra = Vec::new();
            let cx = Cx::new(&self.server);
            for m in self.server.modules() {
                m.stream_features(&cx, stage, &mut extra);
            }
            for f in extra {
                features.push(f);
            }
        }
        self.put(&features);
        Next::Continue
    }

    /// Starts `mechanism` with the module that offers it.
    fn start_mechanism(&self, mechanism: &str) -> Option<Box<dyn Mechanism>> {
        let cb = self.channel_binding();
        let module = self
            .server
            .modules()
            .iter()
            .find(|m| m.sasl_mechanisms(cb.is_some()).contains(&mechanism))?;
        module.sasl_start(mechanism, cb)
    }

    pub(super) fn sasl_failure(&mut self, condition: F) {
        let f = Element::new("failure", ns::SASL)
            .with_child(Element::new(condition.as_str(), ns::SASL));
        self.put(&f);
    }

    pub(super) fn sasl(&mut self, el: Element) -> Next {
        if el.ns != ns::SASL {
            return Next::Fail(StreamError::with_text(
                C::NotAuthorized,
                "authenticate first",
            ));
        }
        let source = Source::from(self.peer.ip());
        let limits = Limits::of(&self.server.config.auth);
        let data = match el.text().trim() {
            "" | "=" => Some(Vec::new()),
            t => B64.decode(t).ok(),
        };
        let step = match el.name.as_str() {
            "auth" => {
                if self.sasl.take().is_some() {
                    // A new exchange abandons the one in progress: that is an attempt too,
                    // or a client could start exchanges forever.
                    if let Some(next) = self.count_failure(None) {
                        return next;
                    }
                }
                let blocked = self.server.throttle.borrow_mut().source_blocked(
                    source,
                    &limits,
                    Instant::now(),
                );
                if blocked {
                    return self.sasl_failed(F::TemporaryAuthFailure, None);
                }
                let Some(data) = data else {
                    return self.sasl_failed(F::IncorrectEncoding, None);
                };
                let mech = el.attr("mechanism").unwrap_or_default();
                let Some(s) = self.start_mechanism(mech) else {
                    return self.sasl_failed(F::InvalidMechanism, None);
                };
                let sasl = self.sasl.insert(s);
                if el.text().trim().is_empty() && mech != "PLAIN" {
                    // No initial response: ask for it with an empty challenge.
                    Step::Challenge(Vec::new())
                } else {
                    sasl.step(&Cx::new(&self.server), &data)
                }
            }
            "response" => match (self.sasl.as_mut(), data) {
                (Some(s), Some(data)) => s.step(&Cx::new(&self.server), &data),
                (Some(_), None) => return self.sasl_failed(F::IncorrectEncoding, None),
                (None, _) => return self.sasl_failed(F::MalformedRequest, None),
            },
            "abort" => return self.sasl_failed(F::Aborted, None),
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
                self.put(&ch);
                Next::Continue
            }
            Step::Success { user, data } => {
                self.sasl = None;
                let blocked = self.server.throttle.borrow_mut().blocked(
                    source,
                    &user,
                    &limits,
                    Instant::now(),
                );
                if blocked {
                    return self.sasl_failed(F::TemporaryAuthFailure, Some(&user));
                }
                if !self.server.account_exists(&user) {
                    // Removed while the exchange ran.
                    return self.sasl_failed(F::NotAuthorized, Some(&user));
                }
                if let Some(c) = self.server.conns.borrow_mut().get_mut(&self.id) {
                    c.user = Some(user.clone());
                }
                let mut ok = Element::new("success", ns::SASL);
                if !data.is_empty() {
                    ok = ok.with_text(B64.encode(data));
                }
                self.put(&ok);
                log::info!(
                    "{user}@{} authenticated from {}",
                    self.server.config.server.domain,
                    self.peer
                );
                let epoch = self.server.sessions().login_epoch(&user);
                self.phase = Phase::Authenticated(user, epoch);
                self.reader.restart();
                self.header_sent = false;
                Next::Continue
            }
            Step::Failure(f, user) => {
                let blocked = user.as_deref().is_some_and(|u| {
                    self.server
                        .throttle
                        .borrow_mut()
                        .blocked(source, u, &limits, Instant::now())
                });
                let f = if blocked { F::TemporaryAuthFailure } else { f };
                self.sasl_failed(f, user.as_deref())
            }
        }
    }

    /// Answers a failed or aborted attempt and counts it; ends a stream with too many.
    pub(super) fn sasl_failed(&mut self, condition: F, user: Option<&str>) -> Next {
        self.sasl = None;
        self.sasl_failure(condition);
        log::info!("failed login from {} ({})", self.peer, condition.as_str());
        self.count_failure(user).unwrap_or(Next::Continue)
    }

    /// Counts a failed attempt for the stream and the throttle; `Some` ends the stream.
    fn count_failure(&mut self, user: Option<&str>) -> Option<Next> {
        let auth = &self.server.config.auth;
        self.server.throttle.borrow_mut().fail(
            Source::from(self.peer.ip()),
            user,
            &Limits::of(auth),
            Instant::now(),
        );
        self.auth_failures += 1;
        (self.auth_failures >= auth.attempts_per_stream).then(|| {
            Next::Fail(StreamError::with_text(
                C::PolicyViolation,
                "too many failed authentication attempts",
            ))
        })
    }

    pub(super) fn pre_bind(&mut self, user: &str, el: Element) -> Next {
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
                        self.put(&error_reply(&el, &e));
                        return Next::Continue;
                    }
                },
                None => format!("hearth-{}", hex(&sasl::random_bytes::<6>())),
            };
            let domain = &self.server.config.server.domain;
            let Ok(full) = Jid::bare_from(user, domain).with_resource(&resource) else {
                return Next::Fail(StreamError::new(C::InternalServerError));
            };
            let max = self.server.config.limits.max_resources;
            if !self.server.sessions().may_bind(&full, max) {
                let e = StanzaError::with_text(
                    crate::stanza::Condition::ResourceConstraint,
                    "this account has as many resources bound as it may have",
                );
                self.put(&error_reply(&el, &e));
                return Next::Continue;
            }
            let tx = match self.server.conns.borrow().get(&self.id) {
                Some(c) => c.tx.clone(),
                None => return Next::Fail(StreamError::new(C::InternalServerError)),
            };
            let old = self
                .server
                .sessions_mut()
                .insert(Session::new(self.id, full.clone(), tx));
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
            self.put(&reply);
            log::debug!("bound {full}");
            self.phase = Phase::Bound(full);
            return Next::Continue;
        }
        if el.is("iq", ns::CLIENT) && el.child("session", ns::SESSION).is_some() {
            self.put(&iq_result(&el, None));
            return Next::Continue;
        }
        Next::Fail(StreamError::with_text(
            C::NotAuthorized,
            "bind a resource first",
        ))
    }
}
