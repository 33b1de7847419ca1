//! Stream negotiation (RFC 6120 §4-7): the stream header and features, STARTTLS, SASL (RFC 6120
//! and XEP-0388 SASL2, which `sasl2.rs` completes) with throttling, and resource binding.
//!
//! Every SASL attempt that does not succeed counts, aborted or malformed ones too: towards
//! `auth.attempts_per_stream`, past which the stream ends, and towards the throttle of the
//! source (`stream::throttle`). A source over its limit for an account is answered
//! `temporary-auth-failure` whether its password was right or not, so the refusal tells it
//! nothing, and the account's owner elsewhere is not affected.

use super::*;
use crate::modules::{ChannelBindings, Cx, Profile, SaslOffer, SaslStart, Stage};
use crate::stream::throttle::{Limits, Source};

impl Conn {
    pub(super) async fn start_tls(&mut self) -> bool {
        let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::Gone) else {
            return false;
        };
        let tls = self.server.tls.borrow().clone();
        let acceptor = futures_rustls::TlsAcceptor::from(tls.config.clone());
        let handshake = acceptor.accept(tcp);
        let timeout = async {
            Timer::at(self.login_deadline()).await;
            Err(std::io::ErrorKind::TimedOut.into())
        };
        match handshake.or(timeout).await {
            Ok(stream) => {
                self.io = Io::Tls(Box::new(stream));
                self.phase = Phase::Secure;
                // The certificate this handshake presented, whatever a reload does meanwhile.
                self.tls = Some(tls);
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

    /// Channel binding data (RFC 9266 tls-exporter, RFC 5929 tls-server-end-point), only for
    /// TLS 1.3: before it, a resumed session may be spliced with another (the triple handshake
    /// attack, RFC 7627) and the bindings prove less.
    pub(super) fn bindings(&self) -> ChannelBindings {
        let Some(conn) = self.io.tls() else {
            return ChannelBindings::default();
        };
        // RFC 9266 defines tls-exporter for TLS 1.3; the certificate's hash is the same under
        // any version.
        let tls13 = conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        ChannelBindings {
            exporter: tls13
                .then(|| {
                    conn.export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None)
                        .ok()
                })
                .flatten(),
            endpoint: self.tls.as_ref().and_then(|t| t.endpoint.clone()),
        }
    }

    /// What the stream can offer in `profile`.
    pub(super) fn offer(&self, profile: Profile, bindings: &ChannelBindings) -> SaslOffer {
        SaslOffer {
            profile,
            exporter: bindings.exporter.is_some(),
            endpoint: bindings.endpoint.is_some(),
        }
    }

    /// Every module's mechanisms in `offer`'s profile, in the modules' order.
    pub(super) fn mechanisms(&self, offer: &SaslOffer) -> Vec<&'static str> {
        self.server
            .modules()
            .iter()
            .flat_map(|m| m.sasl_mechanisms(offer))
            .copied()
            .collect()
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
                let bindings = self.bindings();
                let mut mechs = Element::new("mechanisms", ns::SASL);
                for m in self.mechanisms(&self.offer(Profile::Sasl, &bindings)) {
                    mechs.push(Element::new("mechanism", ns::SASL).with_text(m));
                }
                features.push(mechs);
                if let Some(auth) = self.sasl2_feature(&bindings) {
                    features.push(auth);
                }
                // XEP-0440: the bindings SCRAM's -PLUS mechanisms take.
                let mut cb = Element::new("sasl-channel-binding", ns::SASL_CB);
                for (kind, data) in [
                    ("tls-exporter", &bindings.exporter),
                    ("tls-server-end-point", &bindings.endpoint),
                ] {
                    if data.is_some() {
                        cb.push(
                            Element::new("channel-binding", ns::SASL_CB).with_attr("type", kind),
                        );
                    }
                }
                if bindings.any() {
                    features.push(cb);
                }
                Some(Stage::Authenticate)
            }
            Phase::Authenticated(..) | Phase::Bound(_) => {
                bind_features(&mut features);
                Some(Stage::Bind)
            }
        };
        if let Some(stage) = stage {
            self.module_features(stage, &mut features);
        }
        self.put(&features);
        Next::Continue
    }

    /// What the modules add to the stream features at `stage`.
    pub(super) fn module_features(&self, stage: Stage, features: &mut Element) {
        let mut extra = Vec::new();
        let cx = Cx::new(&self.server);
        for m in self.server.modules() {
            m.stream_features(&cx, stage, &mut extra);
        }
        for f in extra {
            features.push(f);
        }
    }

    /// Starts `mechanism` with the module that offers it in `profile`; `request` is SASL2's
    /// `<authenticate/>`.
    pub(super) fn start_mechanism(
        &self,
        profile: Profile,
        mechanism: &str,
        request: Option<&Element>,
    ) -> Option<Box<dyn Mechanism>> {
        let bindings = self.bindings();
        let offer = self.offer(profile, &bindings);
        let module = self
            .server
            .modules()
            .iter()
            .find(|m| m.sasl_mechanisms(&offer).contains(&mechanism))?;
        module.sasl_start(&SaslStart {
            mechanism,
            profile,
            bindings: &bindings,
            request,
        })
    }

    /// Writes a `<failure/>` in the profile of the exchange: RFC 6120's, or XEP-0388's, which
    /// wraps the same conditions and may say more in a `<text/>`.
    pub(super) fn sasl_failure(&mut self, profile: Profile, condition: F, text: Option<&str>) {
        let cond = Element::new(condition.as_str(), ns::SASL);
        let f = match profile {
            Profile::Sasl => Element::new("failure", ns::SASL).with_child(cond),
            Profile::Sasl2 | Profile::Fast => {
                let mut f = Element::new("failure", ns::SASL2).with_child(cond);
                if let Some(t) = text {
                    f.push(Element::new("text", ns::SASL2).with_text(t));
                }
                f
            }
        };
        self.put(&f);
    }

    /// SASL in either profile: RFC 6120's `<auth/>`, or XEP-0388's `<authenticate/>` whose
    /// success `sasl2_succeeded` completes.
    pub(super) async fn sasl(&mut self, el: Element) -> Next {
        let profile = match el.ns.as_str() {
            ns::SASL => Profile::Sasl,
            ns::SASL2 => Profile::Sasl2,
            _ => {
                return Next::Fail(StreamError::with_text(
                    C::NotAuthorized,
                    "authenticate first",
                ));
            }
        };
        let source = Source::from(self.peer.ip());
        let limits = Limits::of(&self.server.config.auth);
        let decode = |t: &str| match t.trim() {
            "" | "=" => Some(Vec::new()),
            t => B64.decode(t).ok(),
        };
        let start = match profile {
            Profile::Sasl => "auth",
            _ => "authenticate",
        };
        let step = match el.name.as_str() {
            name if name == start => {
                if self.sasl.take().is_some() {
                    // A new exchange abandons the one in progress: that is an attempt too,
                    // or a client could start exchanges forever.
                    if let Some(next) = self.count_failure(None) {
                        return next;
                    }
                }
                self.sasl2 = None;
                let blocked = self.server.throttle.borrow_mut().source_blocked(
                    source,
                    &limits,
                    Instant::now(),
                );
                if blocked {
                    return self.sasl_failed(profile, F::TemporaryAuthFailure, None, None);
                }
                // RFC 6120 puts the initial response in the element's text ("=" for an empty
                // one, nothing for none); XEP-0388 in an <initial-response/>, absent for none.
                let initial = match profile {
                    Profile::Sasl => (!el.text().trim().is_empty()).then(|| el.text()),
                    _ => el.child("initial-response", ns::SASL2).map(|r| r.text()),
                };
                let data = match initial.as_deref().map(decode) {
                    Some(None) => {
                        return self.sasl_failed(profile, F::IncorrectEncoding, None, None);
                    }
                    Some(Some(d)) => Some(d),
                    None => None,
                };
                let mech = el.attr("mechanism").unwrap_or_default().to_owned();
                let started = match profile {
                    Profile::Sasl => self.start_mechanism(Profile::Sasl, &mech, None),
                    _ => match self.sasl2_start(&el, &mech) {
                        Ok(s) => s,
                        Err((condition, text)) => {
                            return self.sasl_failed(profile, condition, None, Some(&text));
                        }
                    },
                };
                let Some(s) = started else {
                    return self.sasl_failed(profile, F::InvalidMechanism, None, None);
                };
                let sasl = self.sasl.insert(s);
                match data {
                    Some(data) => sasl.step(&Cx::new(&self.server), &data),
                    // RFC 4616 §2: PLAIN's response goes in the first message either way.
                    None if profile == Profile::Sasl && mech == "PLAIN" => {
                        sasl.step(&Cx::new(&self.server), &[])
                    }
                    // No initial response: ask for it with an empty challenge.
                    None => Step::Challenge(Vec::new()),
                }
            }
            "response" => match (self.sasl.as_mut(), decode(&el.text())) {
                (Some(s), Some(data)) => s.step(&Cx::new(&self.server), &data),
                (Some(_), None) => {
                    return self.sasl_failed(profile, F::IncorrectEncoding, None, None);
                }
                (None, _) => return self.sasl_failed(profile, F::MalformedRequest, None, None),
            },
            "abort" => return self.sasl_failed(profile, F::Aborted, None, None),
            _ => {
                return Next::Fail(StreamError::with_text(
                    C::NotAuthorized,
                    "authenticate first",
                ));
            }
        };
        match step {
            Step::Challenge(c) => {
                let ns = match profile {
                    Profile::Sasl => ns::SASL,
                    _ => ns::SASL2,
                };
                let mut ch = Element::new("challenge", ns);
                if !c.is_empty() {
                    ch = ch.with_text(B64.encode(c));
                }
                self.put(&ch);
                Next::Continue
            }
            Step::Success { user, data } => {
                let mech = self.sasl.take();
                let blocked = self.server.throttle.borrow_mut().blocked(
                    source,
                    &user,
                    &limits,
                    Instant::now(),
                );
                if blocked {
                    return self.sasl_failed(profile, F::TemporaryAuthFailure, Some(&user), None);
                }
                if !self.server.account_exists(&user) {
                    // Removed while the exchange ran.
                    return self.sasl_failed(profile, F::NotAuthorized, Some(&user), None);
                }
                if let Some(c) = self.server.conns.borrow_mut().get_mut(&self.id) {
                    c.user = Some(user.clone());
                }
                if profile != Profile::Sasl {
                    return match mech {
                        Some(mech) => Box::pin(self.sasl2_succeeded(user, data, mech)).await,
                        None => Next::Fail(StreamError::new(C::InternalServerError)),
                    };
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
                self.sasl_failed(profile, f, user.as_deref(), None)
            }
        }
    }

    /// Answers a failed or aborted attempt and counts it; ends a stream with too many.
    pub(super) fn sasl_failed(
        &mut self,
        profile: Profile,
        condition: F,
        user: Option<&str>,
        text: Option<&str>,
    ) -> Next {
        self.sasl = None;
        self.sasl2 = None;
        self.sasl_failure(profile, condition, text);
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
            let full = match self.bind_resource(user, &resource) {
                Ok(full) => full,
                Err(Ok(e)) => {
                    self.put(&error_reply(&el, &e));
                    return Next::Continue;
                }
                Err(Err(e)) => return Next::Fail(e),
            };
            let reply = iq_result(&el, None).with_child(
                Element::new("bind", ns::BIND)
                    .with_child(Element::new("jid", ns::BIND).with_text(full.to_string())),
            );
            self.put(&reply);
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

impl Conn {
    /// Binds `resource` of `user` to this connection: the session table has it from here on,
    /// and a session of the same full JID is replaced. Errs with the stanza error for the
    /// client, or the stream error when the connection is gone.
    pub(super) fn bind_resource(
        &mut self,
        user: &str,
        resource: &str,
    ) -> Result<Jid, Result<StanzaError, StreamError>> {
        let domain = &self.server.config.server.domain;
        let Ok(full) = Jid::bare_from(user, domain).with_resource(resource) else {
            return Err(Err(StreamError::new(C::InternalServerError)));
        };
        let max = self.server.config.limits.max_resources;
        if !self.server.sessions().may_bind(&full, max) {
            return Err(Ok(StanzaError::with_text(
                crate::stanza::Condition::ResourceConstraint,
                "this account has as many resources bound as it may have",
            )));
        }
        let tx = match self.server.conns.borrow().get(&self.id) {
            Some(c) => c.tx.clone(),
            None => return Err(Err(StreamError::new(C::InternalServerError))),
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
        log::debug!("bound {full}");
        self.phase = Phase::Bound(full.clone());
        // What was kept for negotiating is no longer needed.
        self.tls = None;
        Ok(full)
    }
}

/// The features of an authenticated stream that a client binds on: resource binding, the
/// RFC 3921 session (optional, for old clients), stream management and client state.
pub(super) fn bind_features(features: &mut Element) {
    features.push(Element::new("bind", ns::BIND));
    features.push(
        Element::new("session", ns::SESSION).with_child(Element::new("optional", ns::SESSION)),
    );
    features.push(Element::new("sm", ns::SM));
    features.push(Element::new("csi", ns::CSI));
}
