//! XEP-0198 stream management and XEP-0352 client state on a bound stream: enable, acks
//! (which wait for the stanzas' commits), resumption by handing a new socket to the task that
//! kept the session, and the active/inactive switch.

use super::*;

impl Conn {
    pub(super) async fn take_over(&mut self, h: Handoff) -> Next {
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
        self.event(SessionEvent::Resumed).await;
        if let Err(e) = self.settle_all().await {
            return Next::Fail(e);
        }
        let Some(sm) = self.sm.as_mut() else {
            return Next::Continue;
        };
        let resumed = Element::new("resumed", ns::SM)
            .with_attr("previd", sm.id.clone().unwrap_or_default())
            .with_attr("h", sm.handled.to_string());
        let again = sm.take_unacked();
        log::debug!(
            "connection {} resumed from {}, resending {}",
            self.id,
            self.peer,
            again.len()
        );
        match (h.success, &self.phase) {
            // Resumed within a SASL2 authentication: no stream features follow (XEP-0198 §7.2).
            (Some(mut success), Phase::Bound(jid)) => {
                success.push(
                    Element::new("authorization-identifier", ns::SASL2).with_text(jid.to_string()),
                );
                success.push(resumed);
                self.write_nonza(&success);
            }
            _ => self.write_nonza(&resumed),
        }
        for d in again {
            self.write_stanza(d);
        }
        // What came while it was away goes out as the client's window allows.
        self.due = true;
        self.release();
        self.flush_or_lose().await
    }

    pub(super) fn settle_ready(&mut self) -> Result<(), StreamError> {
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
            // A stanza from before `<enable/>` still settling: none since has been handled.
            let since = handled.wrapping_sub(sm.base);
            sm.handled = match since > self.processed.wrapping_sub(sm.base) {
                true => 0,
                false => since,
            };
        }
        Ok(())
    }

    /// Waits for the oldest pending commit.
    pub(super) async fn settle_one(&mut self) -> Result<(), StreamError> {
        if let Some((t, _)) = self.pending.pop_front() {
            Store::wait(t).await.map_err(|e| commit_failed(&e))?;
        }
        self.settle_ready()
    }

    /// Waits until everything received so far is durable: before telling the client its `h`.
    pub(super) async fn settle_all(&mut self) -> Result<(), StreamError> {
        while !self.pending.is_empty() {
            self.settle_one().await?;
        }
        self.settle_ready()
    }

    /// XEP-0198 `<enable/>` on a bound stream: the `<enabled/>` or `<failed/>` for the client.
    pub(super) fn enable_sm(&mut self, el: &Element) -> Element {
        let Phase::Bound(jid) = &self.phase else {
            return smacks::failed("unexpected-request", None);
        };
        if self.sm.is_some() {
            return smacks::failed("unexpected-request", None);
        }
        let resume = matches!(el.attr("resume"), Some("true" | "1"));
        let id = B64.encode(sasl::random_bytes::<18>());
        let mut enabled = Element::new("enabled", ns::SM);
        if resume {
            let (tx, rx) = smol::channel::bounded(1);
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
        let mut sm = Sm::new(resume, id);
        sm.base = self.processed;
        self.sm = Some(sm);
        enabled
    }

    /// XEP-0198 and XEP-0352 elements of a bound stream.
    pub(super) async fn nonza(&mut self, el: &Element) -> Next {
        match (el.name.as_str(), el.ns.as_str()) {
            ("enable", ns::SM) => {
                let answer = self.enable_sm(el);
                self.write_nonza(&answer);
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
                    Ok(()) => {
                        // Room in the window for what waits.
                        self.release();
                        Next::Continue
                    }
                    Err(t) => Next::Fail(StreamError::with_text(C::UndefinedCondition, t)),
                }
            }
            ("active", ns::CSI) => {
                self.inactive = false;
                self.due = true;
                self.release();
                self.event(SessionEvent::Active).await;
                Next::Continue
            }
            ("inactive", ns::CSI) => {
                self.inactive = true;
                self.event(SessionEvent::Inactive).await;
                Next::Continue
            }
            _ => Next::Fail(StreamError::new(C::UnsupportedStanzaType)),
        }
    }

    /// XEP-0198 §5: a new connection asks to continue a session that lost its socket; with
    /// `success`, inside a SASL2 authentication (§7.2), whose `<success/>` it completes.
    pub(super) async fn resume(
        &mut self,
        user: &str,
        el: &Element,
        success: Option<Box<Element>>,
    ) -> Resume {
        let previd = el.attr("previd").unwrap_or_default();
        let target = self
            .server
            .resumable
            .borrow()
            .get(previd)
            .filter(|r| r.user == user)
            .map(|r| r.tx.clone());
        let (Some(tx), Some(h)) = (target, smacks::h_of(el)) else {
            return Resume::Failed(smacks::failed("item-not-found", None));
        };
        // Our output so far (the stream features, when the client did not wait for them)
        // must not be lost with the socket.
        if !self.flush().await {
            return Resume::Lost;
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
            success,
            reply: reply_tx,
        };
        if let Err(e) = tx.send(handoff).await {
            let h = e.into_inner();
            (self.io, self.reader) = (h.io, h.reader);
            self.more_ready = true;
            return Resume::Failed(smacks::failed("item-not-found", None));
        }
        match reply_rx.recv().await {
            Ok(Ok(())) => Resume::Handed,
            Ok(Err((io, reader))) => {
                (self.io, self.reader) = (io, reader);
                self.more_ready = true;
                Resume::Failed(smacks::failed("item-not-found", None))
            }
            Err(_) => Resume::Lost,
        }
    }
}
