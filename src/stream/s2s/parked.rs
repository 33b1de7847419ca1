//! Stanzas for other servers over a restart. The router queues a stanza for another server
//! once the writes it depends on are durable, and its sender is then told it was handled
//! (XEP-0198), so a clean stop must not drop what the links still hold: what waits in their
//! queues or for their streams (a server that is slow to answer), and what they wrote and the
//! other server has not acknowledged (XEP-0198 on the link). When the server stops, all of it
//! goes into [`LOCAL_REMOTE_SEQ_TO_STANZA`] before the store closes ([`keep`]); when it starts
//! again, [`resend`] routes it once more, in its order per pair, and then removes it.
//!
//! Nothing new decides where it goes: the router's way for a stanza to another domain takes
//! it, so when federation is now off, the domain no longer accepted, its queue full or its
//! server unreachable, its sender gets the usual error. The table is bounded by the links: it
//! holds what they held at the stop, which `federation.queue_bytes` per link and
//! `federation.max_outgoing` links bounded, and it is emptied at each start.
//!
//! A stanza may so reach the other server twice (at least once, never none): one written and
//! not acknowledged may have been handled there all the same, and a crash between a start's
//! resending and the commit of the removal sends it again at the next start.

use super::Pair;
use crate::error::Error;
use crate::jid::Jid;
use crate::router::{self, Router};
use crate::stanza::{Origin, Stanza};
use crate::storage::shapes::{Index, Unowned};
use crate::storage::{Op, Store, Txn};
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

fn range(pair: &Pair) -> std::ops::RangeInclusive<(&str, &str, u64)> {
    (pair.local.as_str(), pair.remote.as_str(), 0)
        ..=(pair.local.as_str(), pair.remote.as_str(), u64::MAX)
}

/// Appends stanzas after the newest of their pair.
#[derive(Debug)]
struct Park(Vec<(Pair, String)>);

impl Op for Park {
    fn apply(&self, txn: &Txn) -> Result<(), Error> {
        let mut t = txn.txn.open_table(table())?;
        for (pair, xml) in &self.0 {
            let next = match t.range(range(pair))?.next_back() {
                Some(r) => r?.0.value().2 + 1,
                None => 1,
            };
            t.insert(
                (pair.local.as_str(), pair.remote.as_str(), next),
                xml.as_str(),
            )?;
        }
        Ok(())
    }
}

/// Removes the stanzas of each pair up to a sequence number, inclusive.
#[derive(Debug)]
struct Unpark(Vec<(Pair, u64)>);

impl Op for Unpark {
    fn apply(&self, txn: &Txn) -> Result<(), Error> {
        let mut t = txn.txn.open_table(table())?;
        for (pair, upto) in &self.0 {
            let (l, r) = (pair.local.as_str(), pair.remote.as_str());
            t.retain_in((l, r, 0)..=(l, r, *upto), |_, _| false)?;
        }
        Ok(())
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

/// For the server that stops, once nothing runs any more but the store: makes what every
/// link holds durable. Nothing is written when the links hold nothing.
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
    let rows = held
        .iter()
        .map(|(pair, el)| (pair.clone(), el.to_xml()))
        .collect();
    if let Err(e) = router.store.commit_blocking(vec![Box::new(Park(rows))]) {
        log::error!(
            "{} stanzas for other servers could not be kept: {e}",
            held.len()
        );
    }
}

/// For the server that starts, once stanzas can go to other servers: routes what the last
/// stop kept, as the router routes a stanza for another domain, then removes it from the
/// table. The removal is committed only once they are queued again: a crash in between sends
/// them again at the next start rather than losing them.
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
        "{} stanzas kept for other servers at the last stop go out again",
        rows.len()
    );
    let mut last: BTreeMap<Pair, u64> = BTreeMap::new();
    let mut stanzas = Vec::new();
    for (pair, seq, xml) in rows {
        last.insert(pair.clone(), seq);
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
    })
    .await;
    let unpark = Unpark(last.into_iter().collect());
    if let Err(e) = router.store.commit(vec![Box::new(unpark)]).await {
        log::error!(
            "the stanzas kept for other servers went out but stay in the store, and go out \
             again at the next start: {e}"
        );
    }
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
    use crate::stream::s2s::Out;

    fn pair(remote: &str) -> Pair {
        Pair {
            local: "localhost".into(),
            remote: remote.into(),
        }
    }

    fn federating() -> TestRouter {
        let mut config = Config::default();
        config.federation.enabled = true;
        TestRouter::with_config(config, &["alice", "bob"])
    }

    /// What alice's client sends to `to`, as the router hands it to the links.
    fn message(t: &TestRouter, to: &str, body: &str) -> Element {
        let alice = Jid::parse("alice@localhost/phone").unwrap();
        let out = t.client(
            &alice,
            &format!("<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>"),
        );
        assert_eq!(out.remote.len(), 1, "{body} goes to another server");
        out.remote.into_iter().next().unwrap().1
    }

    fn queue(t: &TestRouter, remote: &str, el: Element) {
        let f = &t.router.config.federation;
        let queued = t
            .router
            .s2s
            .send(pair(remote), el, f.queue_bytes, f.max_outgoing);
        assert!(queued.is_ok());
    }

    fn bodies(rows: &[(Pair, u64, String)], remote: &str) -> Vec<String> {
        rows.iter()
            .filter(|(p, _, _)| p.remote == remote)
            .map(|(_, _, xml)| {
                parse(xml)
                    .child("body", crate::xml::ns::CLIENT)
                    .unwrap()
                    .text()
            })
            .collect()
    }

    #[test]
    fn links_that_hold_nothing_leave_nothing() {
        let t = federating();
        keep(&t.router);
        assert!(read(&t.router.store).unwrap().is_empty());
        // A link whose stanzas were all delivered holds nothing either.
        let el = message(&t, "bob@b.example", "one");
        queue(&t, "b.example", el);
        let link = t.router.s2s.take_new().remove(0);
        assert!(matches!(link.rx.try_recv(), Ok(Out::Stanza(_))));
        keep(&t.router);
        assert!(read(&t.router.store).unwrap().is_empty());
        smol::block_on(resend(&t.router));
        assert!(t.router.s2s.take_new().is_empty(), "nothing goes out");
    }

    /// A link that wrote "1" (unacknowledged), took "2" (waiting for its stream) and has "3"
    /// and "4" in its queue, and another that is still connecting: all of it is kept, in
    /// order per pair, and goes out again in that order.
    #[test]
    fn what_links_hold_is_kept_and_goes_out_again_in_order() {
        let t = federating();
        for body in ["1", "2", "3", "4"] {
            let el = message(&t, "bob@b.example", body);
            queue(&t, "b.example", el);
        }
        let el = message(&t, "carol@c.example", "c1");
        queue(&t, "c.example", el);
        let links = t.router.s2s.take_new();
        let b = links.iter().find(|l| l.pair == pair("b.example")).unwrap();
        let take = |l: &crate::stream::s2s::NewLink| match l.rx.try_recv() {
            Ok(Out::Stanza(el)) => el,
            _ => panic!("a stanza"),
        };
        b.held.unacked.borrow_mut().push_back((take(b), false));
        b.held.waiting.borrow_mut().push_back((take(b), false));
        keep(&t.router);
        let rows = read(&t.router.store).unwrap();
        assert_eq!(bodies(&rows, "b.example"), ["1", "2", "3", "4"]);
        assert_eq!(bodies(&rows, "c.example"), ["c1"]);
        assert!(t.router.s2s.remotes().is_empty(), "the links are gone");

        smol::block_on(resend(&t.router));
        assert!(read(&t.router.store).unwrap().is_empty(), "handed over");
        let mut sent = BTreeMap::new();
        for l in t.router.s2s.take_new() {
            let mut bodies = Vec::new();
            while let Ok(Out::Stanza(el)) = l.rx.try_recv() {
                assert_eq!(el.attr("from"), Some("alice@localhost/phone"));
                bodies.push(el.child("body", crate::xml::ns::CLIENT).unwrap().text());
            }
            sent.insert(l.pair.remote.clone(), bodies);
        }
        assert_eq!(sent["b.example"], ["1", "2", "3", "4"]);
        assert_eq!(sent["c.example"], ["c1"]);
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
        let unreadable = (pair("b.example"), "<message".to_owned());
        let rows = vec![
            (pair("b.example"), el.to_xml()),
            unreadable,
            (pair("b.example"), presence.to_xml()),
        ];
        t.commit(vec![Box::new(Park(rows))]);
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
