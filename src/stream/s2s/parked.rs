//! Stanzas for other servers, kept over a crash or a restart. The router queues a stanza for
//! another server once the writes it depends on are durable, and its sender is then told it
//! was handled (XEP-0198), so neither a crash nor a stop may drop what the links still hold:
//! what waits in their queues or for their streams (a server that is slow to answer), and
//! what they wrote and the other server has not acknowledged (XEP-0198 on the link).
//!
//! Messages and presence subscriptions ([`kept`]) have a row of
//! [`LOCAL_REMOTE_SEQ_TO_STANZA`] from the moment they are routed: the router's trailing
//! write ([`row`]) joins the group commit of the stanza's other writes, which the sender's
//! acknowledgement waits for. The row goes ([`forget`], a trailing write per acknowledgement)
//! once the stanza is delivered: acknowledged by the other server with XEP-0198, or, on a
//! link without it, read before a ping the other server answered; or once it goes back to
//! its sender as an error. What else the links hold goes
//! into the table when the server stops ([`keep`]), under the sequence number it was queued
//! with, so the order per pair is the order it was queued in. When the server starts,
//! [`resend`] routes everything the table holds once more, in that order, and replaces its
//! rows in one commit with those of the new queueing.
//!
//! Nothing new decides where it goes: the router's way for a stanza to another domain takes
//! it, so when federation is now off, the domain no longer accepted, its queue full or its
//! server unreachable, its sender gets the usual error. The table is bounded by the links:
//! a row is a stanza some link holds (at most `federation.queue_bytes` per link, and
//! `federation.max_outgoing` links), or held when the server stopped or crashed, and a start
//! routes those again within the same bounds.
//!
//! A stanza may so reach the other server twice (at least once, never none): one written and
//! not acknowledged may have been handled there all the same, one acknowledged just before a
//! crash may still have its row, and a crash between a start's resending and the commit that
//! replaces the rows sends them again at the next start.

use super::Pair;
use crate::error::Error;
use crate::jid::Jid;
use crate::router::{self, Router};
use crate::stanza::{Kind, Origin, Stanza};
use crate::storage::shapes::{Index, Unowned};
use crate::storage::{Op, Store, Txn, Write};
use crate::xml::{Element, reader};
use redb::{ReadableTable, TableDefinition};
use std::collections::BTreeMap;

/// (local domain, remote domain, sequence) → the stanza's XML (`jabber:client`), in the order
/// it was queued for that pair. Its keys are domains, not accounts: deleting an account leaves
/// it alone.
pub static LOCAL_REMOTE_SEQ_TO_STANZA: Unowned<Index<&str>> =
    Unowned(Index(TableDefinition::new("s2s_waiting")));

fn table() -> TableDefinition<'static, (&'static str, &'static str, u64), &'static str> {
    LOCAL_REMOTE_SEQ_TO_STANZA.0.0
}

/// Whether a stanza for another server has its row from the moment it is routed, so that a
/// crash does not lose it.
///
/// Messages, of every type: what their senders are told was handled. Presence subscriptions:
/// the roster takes the state they lead to at once (a request pending, an approval) and
/// nothing sends them again, so one lost would leave the two rosters disagreeing for good.
///
/// Not presence broadcasts and probes: a crash ends every session without the unavailable
/// presence that would follow, so an available presence sent again after it would show an
/// account online that is not; the next login's probes and broadcast say what is current.
/// Not iqs: who waits for the answer (a session, or the server's `pending` requests) does not
/// survive a crash, and the other server's own request timed out meanwhile. A clean stop
/// keeps these too ([`keep`]): it sends every session's unavailable presence first.
pub fn kept(st: &Stanza) -> bool {
    match st.kind {
        Kind::Message => true,
        Kind::Presence => st.typ.is_subscription(),
        Kind::Iq => false,
    }
}

/// Rows, each under its pair and sequence number.
#[derive(Debug)]
struct Keep(Vec<(Pair, u64, String)>);

impl Op for Keep {
    fn apply(&self, txn: &Txn) -> Result<(), Error> {
        let mut t = txn.txn.open_table(table())?;
        for (pair, seq, xml) in &self.0 {
            t.insert(
                (pair.local.as_str(), pair.remote.as_str(), *seq),
                xml.as_str(),
            )?;
        }
        Ok(())
    }
}

/// Removes rows of one pair by sequence number.
#[derive(Debug)]
struct Forget(Pair, Vec<u64>);

impl Op for Forget {
    fn apply(&self, txn: &Txn) -> Result<(), Error> {
        let mut t = txn.txn.open_table(table())?;
        let (l, r) = (self.0.local.as_str(), self.0.remote.as_str());
        for seq in &self.1 {
            t.remove((l, r, *seq))?;
        }
        Ok(())
    }
}

/// The row of a stanza the router queues for `pair` as `seq`.
pub fn row(pair: &Pair, seq: u64, el: &Element) -> Write {
    Box::new(Keep(vec![(pair.clone(), seq, el.to_xml())]))
}

/// Removes the rows `seqs` of `pair`: their stanzas were delivered or bounced. None when
/// there are none.
pub fn forget(pair: &Pair, seqs: Vec<u64>) -> Option<Write> {
    (!seqs.is_empty()).then(|| Box::new(Forget(pair.clone(), seqs)) as Write)
}

/// Submits [`forget`] without waiting: nothing waits for a row to go, and the writer commits
/// it after the row's own write, which was submitted before the stanza was queued.
pub fn forget_later(store: &Store, pair: &Pair, seqs: Vec<u64>) {
    if let Some(w) = forget(pair, seqs)
        && let Err(e) = store.submit(vec![w])
    {
        log::error!(
            "stanzas delivered to {} stay in the store, and go out again at the next start: {e}",
            pair.remote
        );
    }
}

/// Every stanza of the table: its pair, its sequence number and its XML, in key order.
fn read(store: &Store) -> Result<Vec<(Pair, u64, String)>, Error> {
    let txn = store.read()?;
    let t = txn.open_table(table())?;
    let mut out = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        let (local, remote, seq) = k.value();
        let pair = Pair {
            local: local.to_owned(),
            remote: remote.to_owned(),
        };
        out.push((pair, seq, v.value().to_owned()));
    }
    Ok(out)
}

/// The highest sequence number the table holds (0 when empty), which the links' numbers
/// follow: a new row never takes the key of an old one.
pub fn last_seq(store: &Store) -> Result<u64, Error> {
    let txn = store.read()?;
    let t = txn.open_table(table())?;
    let mut last = 0;
    for row in t.iter()? {
        last = last.max(row?.0.value().2);
    }
    Ok(last)
}

/// For the server that stops, once nothing runs any more but the store: makes what every
/// link holds durable. What has its row already ([`kept`]) is not written again; nothing is
/// written when the links hold nothing else.
pub fn keep(router: &Router) {
    let held = router.s2s.take_all();
    if held.is_empty() {
        return;
    }
    let mut counts: BTreeMap<&Pair, usize> = BTreeMap::new();
    for (pair, _) in &held {
        *counts.entry(pair).or_default() += 1;
    }
    for (pair, n) in counts {
        log::info!(
            "{n} stanzas from {} wait for {}; they go out after the next start",
            pair.local,
            pair.remote
        );
    }
    let rows: Vec<(Pair, u64, String)> = held
        .iter()
        .filter(|(_, q)| !q.kept)
        .map(|(pair, q)| (pair.clone(), q.seq, q.el.to_xml()))
        .collect();
    if rows.is_empty() {
        return;
    }
    let n = rows.len();
    if let Err(e) = router.store.commit_blocking(vec![Box::new(Keep(rows))]) {
        log::error!("{n} stanzas for other servers could not be kept: {e}");
    }
}

/// For the server that starts, before it accepts connections: routes what the table holds
/// (kept at the last stop, or left by a crash), as the router routes a stanza for another
/// domain. Its rows are replaced in the same commit by those of the new queueing (for what
/// is [`kept`]), whose numbers follow theirs: a crash at any moment leaves each stanza in the
/// table once.
pub async fn resend(router: &Router) {
    let rows = match read(&router.store) {
        Ok(rows) => rows,
        Err(e) => {
            log::error!("cannot read the stanzas kept for other servers: {e}");
            return;
        }
    };
    if rows.is_empty() {
        return;
    }
    log::info!(
        "{} stanzas that waited for other servers go out again",
        rows.len()
    );
    let mut read: BTreeMap<Pair, Vec<u64>> = BTreeMap::new();
    let mut stanzas = Vec::new();
    for (pair, seq, xml) in rows {
        read.entry(pair.clone()).or_default().push(seq);
        match parse(&xml) {
            Some(st) => stanzas.push(st),
            None => log::warn!(
                "dropping an unreadable stanza {seq} from {} for {}",
                pair.local,
                pair.remote
            ),
        }
    }
    // As the server's own: the sender's outbound hooks (archive, carbons) saw it already.
    router::run(router, "sending what waited for other servers", |cx| {
        for st in stanzas {
            cx.route(st);
        }
        for (pair, seqs) in read {
            if let Some(w) = forget(&pair, seqs) {
                cx.write(w);
            }
        }
    })
    .await;
}

fn parse(xml: &str) -> Option<Stanza> {
    let el: Element = reader::parse_one(xml)?;
    let from = Jid::parse(el.attr("from")?).ok()?;
    Stanza::parse(el, from, Origin::Server).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::modules::testing::{TestRouter, parse};
    use crate::session::Outbound;
    use crate::stanza::Condition;
    use crate::stream::s2s::{NewLink, Out, Queued};

    fn pair(remote: &str) -> Pair {
        Pair {
            local: "localhost".into(),
            remote: remote.into(),
        }
    }

    fn federating(config: impl FnOnce(&mut Config)) -> TestRouter {
        let mut c = Config::default();
        c.federation.enabled = true;
        config(&mut c);
        let t = TestRouter::with_config(c, &["alice", "bob"]);
        t.online("alice", "phone");
        t
    }

    /// What alice's client sends, the way c2s hands it to the router: once this returns, it
    /// could be acknowledged to her.
    fn send(t: &TestRouter, xml: &str) {
        let alice = Jid::parse("alice@localhost/phone").unwrap();
        let mut el = parse(xml);
        el.set_attr("from", alice.to_string());
        if let Some(ticket) = smol::block_on(router::from_client(&t.router, &alice, el)) {
            smol::block_on(Store::wait(ticket)).unwrap();
        }
    }

    fn message(t: &TestRouter, to: &str, body: &str) {
        send(
            t,
            &format!("<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>"),
        );
    }

    /// What a stanza is in these tests' lists: a message's body, or the name and type of the
    /// rest.
    fn name(el: &Element) -> String {
        match (el.child("body", crate::xml::ns::CLIENT), el.attr("type")) {
            (Some(b), _) => b.text(),
            (None, Some(t)) => format!("{} {t}", el.name),
            (None, None) => el.name.clone(),
        }
    }

    /// What the table holds for `remote`, in its order.
    fn rows(t: &TestRouter, remote: &str) -> Vec<String> {
        read(&t.router.store)
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p.remote == remote)
            .map(|(_, _, xml)| name(&parse(xml)))
            .collect()
    }

    fn seqs(t: &TestRouter) -> Vec<u64> {
        read(&t.router.store)
            .unwrap()
            .iter()
            .map(|(_, s, _)| *s)
            .collect()
    }

    fn link(t: &TestRouter, remote: &str) -> NewLink {
        let links = t.router.s2s.take_new();
        assert_eq!(links.len(), 1, "one new link");
        let l = links.into_iter().next().unwrap();
        assert_eq!(l.pair, pair(remote));
        l
    }

    fn next(l: &NewLink) -> Queued {
        match l.rx.try_recv() {
            Ok(Out::Stanza(q)) => q,
            _ => panic!("a stanza for {}", l.pair.remote),
        }
    }

    /// What every new link got, by remote domain.
    fn sent(t: &TestRouter) -> BTreeMap<String, Vec<String>> {
        let mut sent = BTreeMap::new();
        for l in t.router.s2s.take_new() {
            let mut got = Vec::new();
            while let Ok(Out::Stanza(q)) = l.rx.try_recv() {
                let from = q.el.attr("from").unwrap_or_default();
                assert!(from.starts_with("alice@localhost"), "{from}");
                got.push(name(&q.el));
            }
            sent.insert(l.pair.remote.clone(), got);
        }
        sent
    }

    /// A message has its row once its sender could be told it was handled, and loses it when
    /// the other server acknowledges it; a stop with nothing else held writes nothing, and the
    /// next start sends nothing.
    #[test]
    fn a_row_from_routing_to_acknowledgement() {
        let t = federating(|_| {});
        keep(&t.router);
        assert!(read(&t.router.store).unwrap().is_empty());
        message(&t, "bob@b.example", "one");
        message(&t, "bob@b.example", "two");
        assert_eq!(rows(&t, "b.example"), ["one", "two"]);
        let l = link(&t, "b.example");
        for _ in 0..2 {
            let q = next(&l);
            assert!(q.kept);
            l.held.unacked.borrow_mut().push_back((q, false));
        }
        // What the link does with the other server's <a h='1'/>.
        let done = l.held.acknowledged(1);
        forget_later(&t.router.store, &l.pair, done.seqs);
        smol::block_on(t.router.store.barrier()).unwrap();
        assert_eq!(rows(&t, "b.example"), ["two"]);
        let done = l.held.acknowledged(1);
        forget_later(&t.router.store, &l.pair, done.seqs);
        smol::block_on(t.router.store.barrier()).unwrap();
        assert!(read(&t.router.store).unwrap().is_empty());
        keep(&t.router);
        assert!(read(&t.router.store).unwrap().is_empty());
        smol::block_on(resend(&t.router));
        assert!(t.router.s2s.take_new().is_empty(), "nothing goes out");
    }

    /// A link that wrote "1" (unacknowledged), took "2" (waiting for its stream) and has a
    /// presence, "3" and "4" in its queue, and another that is still connecting: the messages
    /// have rows already, the presence gets its own at the stop, between them; all of it goes
    /// out again in that order, and the rows of the messages are replaced by newer ones.
    #[test]
    fn what_links_hold_is_kept_and_goes_out_again_in_order() {
        let t = federating(|_| {});
        message(&t, "bob@b.example", "1");
        message(&t, "bob@b.example", "2");
        send(&t, "<presence to='bob@b.example'/>");
        message(&t, "bob@b.example", "3");
        message(&t, "bob@b.example", "4");
        message(&t, "carol@c.example", "c1");
        assert_eq!(rows(&t, "b.example"), ["1", "2", "3", "4"], "no presence");
        assert_eq!(rows(&t, "c.example"), ["c1"]);
        let links = t.router.s2s.take_new();
        let b = links.iter().find(|l| l.pair == pair("b.example")).unwrap();
        b.held.unacked.borrow_mut().push_back((next(b), false));
        b.held.waiting.borrow_mut().push_back((next(b), false));
        keep(&t.router);
        assert_eq!(rows(&t, "b.example"), ["1", "2", "presence", "3", "4"]);
        assert_eq!(rows(&t, "c.example"), ["c1"]);
        assert!(t.router.s2s.remotes().is_empty(), "the links are gone");
        let before = *seqs(&t).iter().max().unwrap();

        smol::block_on(resend(&t.router));
        let sent = sent(&t);
        assert_eq!(sent["b.example"], ["1", "2", "presence", "3", "4"]);
        assert_eq!(sent["c.example"], ["c1"]);
        assert_eq!(rows(&t, "b.example"), ["1", "2", "3", "4"]);
        assert_eq!(rows(&t, "c.example"), ["c1"]);
        assert!(seqs(&t).iter().all(|s| *s > before), "{:?}", seqs(&t));
    }

    /// A crash: the links' memory is gone without a stop. The messages and the subscription
    /// request go out again, in order, after what the table held; the broadcast presence does
    /// not. The numbers of a new start follow the table's.
    #[test]
    fn after_a_crash_what_has_rows_goes_out_again() {
        let t = federating(|_| {});
        message(&t, "bob@b.example", "1");
        send(&t, "<presence to='bob@b.example'/>");
        send(&t, "<presence to='bob@b.example' type='subscribe'/>");
        message(&t, "bob@b.example", "2");
        assert_eq!(rows(&t, "b.example"), ["1", "presence subscribe", "2"]);
        let last = *seqs(&t).iter().max().unwrap();
        assert_eq!(last_seq(&t.router.store).unwrap(), last);
        drop(t.router.s2s.take_all());
        drop(t.router.s2s.take_new());

        smol::block_on(resend(&t.router));
        assert_eq!(sent(&t)["b.example"], ["1", "presence subscribe", "2"]);
        assert_eq!(rows(&t, "b.example"), ["1", "presence subscribe", "2"]);
        assert!(seqs(&t).iter().all(|s| *s > last), "{:?}", seqs(&t));
    }

    /// Bounced, whether the links refuse it (too many) or a link gives it up: its row goes.
    #[test]
    fn what_goes_back_to_its_sender_loses_its_row() {
        let t = federating(|c| c.federation.max_outgoing = 1);
        message(&t, "bob@b.example", "b1");
        message(&t, "carol@c.example", "c1");
        assert!(
            rows(&t, "c.example").is_empty(),
            "refused: no room for a link"
        );
        let rx = t.receiver(1);
        let bounced = |condition: &str| {
            let mut found = false;
            while let Some(o) = rx.try_recv() {
                if let Outbound::Stanza(d) = o {
                    found |=
                        d.el.attr("type") == Some("error") && d.el.to_xml().contains(condition);
                }
            }
            found
        };
        assert!(bounced("resource-constraint"));
        assert_eq!(rows(&t, "b.example"), ["b1"]);
        let l = link(&t, "b.example");
        let q = next(&l);
        smol::block_on(router::bounce_remote(
            &t.router,
            vec![(l.pair.clone(), q, Condition::RemoteServerTimeout)],
        ));
        assert!(read(&t.router.store).unwrap().is_empty());
        assert!(bounced("remote-server-timeout"));
    }

    /// Kept while federation was on, started with it off: the sender gets the usual error,
    /// nothing goes out, and nothing stays.
    #[test]
    fn with_federation_off_what_was_kept_goes_back_to_its_sender() {
        let t = TestRouter::new();
        let alice = t.bind("alice", "phone");
        let el = parse(
            "<message from='alice@localhost/phone' to='bob@b.example' type='chat' id='m1'>\
             <body>hi</body></message>",
        );
        let presence = parse("<presence from='alice@localhost/phone' to='bob@b.example'/>");
        let unreadable = (pair("b.example"), 2, "<message".to_owned());
        let rows = vec![
            (pair("b.example"), 1, el.to_xml()),
            unreadable,
            (pair("b.example"), 3, presence.to_xml()),
        ];
        t.commit(vec![Box::new(Keep(rows))]);
        assert_eq!(read(&t.router.store).unwrap().len(), 3);
        smol::block_on(resend(&t.router));
        assert!(t.router.s2s.take_new().is_empty(), "nothing goes out");
        assert!(read(&t.router.store).unwrap().is_empty());
        let rx = t.receiver(1);
        let Some(Outbound::Stanza(d)) = rx.try_recv() else {
            panic!("an error for {alice}");
        };
        assert_eq!(d.el.attr("type"), Some("error"));
        assert_eq!(d.el.attr("id"), Some("m1"));
        let xml = d.el.to_xml();
        assert!(xml.contains("remote-server-not-found"), "{xml}");
        // The directed presence was available presence: answered with an error too.
        let Some(Outbound::Stanza(d)) = rx.try_recv() else {
            panic!("an error for the presence");
        };
        assert_eq!(
            (d.el.name.as_str(), d.el.attr("type")),
            ("presence", Some("error"))
        );
        assert!(rx.try_recv().is_none());
    }
}
