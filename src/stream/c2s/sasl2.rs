//! XEP-0388 Extensible SASL Profile (SASL2), v1.0, with what it carries inline: XEP-0386 Bind 2,
//! XEP-0198 resumption (§7.2) and enabling (§7.1), XEP-0352 client state, and whatever modules
//! answer (XEP-0484 FAST tokens, XEP-0280 carbons, XEP-0313 archive metadata).
//!
//! A phone that comes back sends one `<authenticate/>` that authenticates, resumes its session
//! and gets what was queued meanwhile: with a FAST token, a single round trip after the stream
//! header, and none at all when it sends the request without waiting for the features (the
//! server reads it after the header in the same flight). Without a resumable session the same
//! request binds a new one, with carbons, stream management and client state set as asked.
//!
//! The `<user-agent id=''/>` names a client installation: Bind 2 derives the resource from it
//! (keyed by the server's secret, so the id itself is not shown), which gives a returning device
//! its resource back and ends its previous session, and FAST keeps one token per installation.
//! Offline messages are not dropped for Bind 2 as §3.2 asks: the session counts as one that
//! reads the archive, so what the archive holds is not sent twice and what it does not hold
//! (by the account's preferences) is still delivered (see `modules::offline`).

use super::*;
use crate::modules::{Profile, Sasl2Login, Stage};

/// A SASL2 `<authenticate/>` whose mechanism still runs.
pub(super) struct Exchange {
    /// The request, whose inline parts are acted on once authentication succeeds.
    request: Element,
    mechanism: String,
    /// The client installation, from `<user-agent id=''/>`.
    user_agent: Option<String>,
}

impl Conn {
    /// The `<authentication/>` feature: the mechanisms, and what may go inline.
    pub(super) fn sasl2_feature(
        &self,
        bindings: &crate::modules::ChannelBindings,
    ) -> Option<Element> {
        let mechanisms = self.mechanisms(&self.offer(Profile::Sasl2, bindings));
        if mechanisms.is_empty() {
            // XEP-0388 §2.1: not offered without a mechanism.
            return None;
        }
        let mut auth = Element::new("authentication", ns::SASL2);
        for m in mechanisms {
            auth.push(Element::new("mechanism", ns::SASL2).with_text(m));
        }
        let mut bind = Element::new("inline", ns::BIND2);
        let vars = [ns::SM, ns::CSI].into_iter().chain(
            self.server
                .modules()
                .iter()
                .flat_map(|m| m.bind2_features().iter().copied()),
        );
        for var in vars {
            bind.push(Element::new("feature", ns::BIND2).with_attr("var", var));
        }
        let mut inline = Element::new("inline", ns::SASL2)
            .with_child(Element::new("bind", ns::BIND2).with_child(bind))
            .with_child(Element::new("sm", ns::SM));
        let fast = self.mechanisms(&self.offer(Profile::Fast, bindings));
        if !fast.is_empty() {
            let mut f = Element::new("fast", ns::FAST);
            for m in fast {
                f.push(Element::new("mechanism", ns::FAST).with_text(m));
            }
            inline.push(f);
        }
        auth.push(inline);
        Some(auth)
    }

    /// Checks an `<authenticate/>` and starts its mechanism: one of SASL2's, or a FAST one.
    /// Errs with the failure condition and a text saying why.
    pub(super) fn sasl2_start(
        &mut self,
        el: &Element,
        mechanism: &str,
    ) -> Result<Option<Box<dyn Mechanism>>, (F, String)> {
        let max = self.server.config.auth.max_user_agent_id_bytes;
        let user_agent = match el.child("user-agent", ns::SASL2).and_then(|u| u.attr("id")) {
            Some(id) if id.len() > max => {
                return Err((
                    F::MalformedRequest,
                    format!("a user-agent id is at most {max} bytes"),
                ));
            }
            Some(id) if id.is_empty() || id.chars().any(char::is_control) => {
                return Err((
                    F::MalformedRequest,
                    "the user-agent id is not usable".into(),
                ));
            }
            id => id.map(str::to_owned),
        };
        if let Some(tag) = el
            .child("bind", ns::BIND2)
            .and_then(|b| b.child("tag", ns::BIND2))
        {
            let max = self.server.config.auth.max_bind_tag_bytes;
            let tag = tag.text();
            if tag.len() > max || jid::resourcepart(&tag).is_err() {
                return Err((
                    F::MalformedRequest,
                    format!("a Bind 2 tag is a resource of at most {max} bytes"),
                ));
            }
        }
        // The request without its initial response, kept until the mechanism is done.
        let mut request = el.shallow();
        for c in el
            .elements()
            .filter(|c| !c.is("initial-response", ns::SASL2))
        {
            request.push(c.clone());
        }
        let started = [Profile::Sasl2, Profile::Fast]
            .into_iter()
            .find_map(|p| self.start_mechanism(p, mechanism, Some(&request)));
        if started.is_some() {
            self.sasl2 = Some(Box::new(Exchange {
                request,
                mechanism: mechanism.to_owned(),
                user_agent,
            }));
        }
        Ok(started)
    }

    /// The mechanism of a SASL2 exchange succeeded as `user`: the modules answer the inline
    /// requests (their writes durable first), then the session is resumed, or bound, or the
    /// client is told what it may do next.
    pub(super) async fn sasl2_succeeded(
        &mut self,
        user: String,
        data: Vec<u8>,
        mut mech: Box<dyn Mechanism>,
    ) -> Next {
        let Some(exchange) = self.sasl2.take() else {
            return Next::Fail(StreamError::new(C::InternalServerError));
        };
        let Exchange {
            request,
            mechanism,
            user_agent,
        } = *exchange;
        let mut success = Element::new("success", ns::SASL2);
        if !data.is_empty() {
            success.push(Element::new("additional-data", ns::SASL2).with_text(B64.encode(data)));
        }
        let server = self.server.clone();
        let mut extra = Element::new("success", ns::SASL2);
        let fast = self.offer(Profile::Fast, &self.bindings());
        let effects = {
            let mut cx = crate::modules::Cx::new(&server);
            let login = Sasl2Login {
                user: &user,
                mechanism: &mechanism,
                user_agent: user_agent.as_deref(),
                request: &request,
                fast,
            };
            mech.succeeded(&mut cx, &login, &mut extra);
            for m in server.modules() {
                m.sasl2_success(&mut cx, &login, &mut extra);
            }
            router::finish(cx)
        };
        if let Err(e) = router::apply(&server, effects).await {
            log::error!("completing the login of {user}: {e}");
            return self.sasl_failed(Profile::Sasl2, F::TemporaryAuthFailure, None, None);
        }
        let software = request
            .child("user-agent", ns::SASL2)
            .and_then(|u| u.child("software", ns::SASL2))
            .map(|s| s.text().chars().take(64).collect::<String>());
        log::info!(
            "{user}@{} authenticated from {} with {mechanism} (SASL2{})",
            self.server.config.server.domain,
            self.peer,
            software.map(|s| format!(", {s}")).unwrap_or_default()
        );
        let epoch = self.server.sessions().login_epoch(&user);
        self.phase = Phase::Authenticated(user.clone(), epoch);
        if let Some(resume) = request.child("resume", ns::SM) {
            let mut envelope = success.clone();
            for c in extra.elements() {
                envelope.push(c.clone());
            }
            match self.resume(&user, resume, Some(Box::new(envelope))).await {
                Resume::Handed => return Next::Handed,
                Resume::Lost => return Next::Lost,
                // §7.2.1: the failure goes into the success, and binding goes on.
                Resume::Failed(failed) => success.push(failed),
            }
        }
        let bound = match request.child("bind", ns::BIND2) {
            Some(bind) => match self.bind2(&user, bind, user_agent.as_deref()).await {
                Ok(b) => b,
                Err(next) => return next,
            },
            None => None,
        };
        let authzid = match &self.phase {
            Phase::Bound(jid) => jid.to_string(),
            _ => format!("{user}@{}", self.server.config.server.domain),
        };
        success.push(Element::new("authorization-identifier", ns::SASL2).with_text(authzid));
        if let Some(b) = bound {
            success.push(b);
        }
        for c in extra.elements() {
            success.push(c.clone());
        }
        self.write_nonza(&success);
        // §2.6.1: the features of the authenticated stream follow at once, without a restart.
        let mut features = Element::new("features", ns::STREAM);
        match &self.phase {
            Phase::Bound(_) => {
                if self.sm.is_none() {
                    features.push(Element::new("sm", ns::SM));
                }
                features.push(Element::new("csi", ns::CSI));
                self.module_features(Stage::Bind, &mut features);
            }
            _ => {
                super::negotiation::bind_features(&mut features);
                self.module_features(Stage::Bind, &mut features);
            }
        }
        self.write_nonza(&features);
        Next::Continue
    }

    /// XEP-0386: binds a resource for `user` as `request` asks and enables what it asks for.
    /// Returns the `<bound/>`, or none when the account has all the resources it may have
    /// (the client then learns why from a resource binding of its own).
    async fn bind2(
        &mut self,
        user: &str,
        request: &Element,
        user_agent: Option<&str>,
    ) -> Result<Option<Element>, Next> {
        // Checked when the request came.
        let tag = request
            .child("tag", ns::BIND2)
            .and_then(|t| jid::resourcepart(&t.text()).ok());
        // §3.2.1: a stable identifier for a stable client, which does not show its id.
        let id = match user_agent {
            Some(ua) => {
                hex(&sasl::server_hmac("bind2 resource", &[user.as_bytes(), ua.as_bytes()])[..6])
            }
            None => hex(&sasl::random_bytes::<6>()),
        };
        let resource = match &tag {
            Some(t) => format!("{t}/{id}"),
            None => id.clone(),
        };
        let full = match self.bind_resource(user, &resource) {
            Ok(full) => full,
            Err(Ok(e)) => {
                log::info!("{user}: no Bind 2 ({})", e.to_element().to_xml());
                return Ok(None);
            }
            Err(Err(e)) => return Err(Next::Fail(e)),
        };
        if user_agent.is_some() {
            // §3.2: the same installation's earlier sessions (under another tag) end.
            let suffix = format!("/{id}");
            let earlier: Vec<u64> = self
                .server
                .sessions()
                .of(user)
                .iter()
                .filter(|s| s.jid != full)
                .filter(|s| {
                    s.jid
                        .resource()
                        .is_some_and(|r| r == id || r.ends_with(&suffix))
                })
                .map(|s| s.conn)
                .collect();
            for conn in earlier {
                self.server.close_conn(
                    conn,
                    StreamError::with_text(C::Conflict, "replaced by a new connection"),
                );
            }
        }
        self.event(SessionEvent::Bound).await;
        let mut bound = Element::new("bound", ns::BIND2);
        if let Some(enable) = request.child("enable", ns::SM) {
            let answer = self.enable_sm(enable);
            bound.push(answer);
        }
        let server = self.server.clone();
        router::run(&server, "binding a session", |cx| {
            for m in cx.modules() {
                m.bind2(cx, &full, request, &mut bound);
            }
        })
        .await;
        if request.child("inactive", ns::CSI).is_some() {
            self.inactive = true;
            self.event(SessionEvent::Inactive).await;
        }
        Ok(Some(bound))
    }
}
