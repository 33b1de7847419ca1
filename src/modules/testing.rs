//! Unit tests of modules without a socket: a [`TestRouter`] is the real router and the real
//! modules over a store in a temporary directory, with sessions that are only queues. A test
//! feeds it what a client sends and session events, and asserts on what comes out (the
//! stanzas for each session) and on the store, which every step commits to before returning.

use super::{Cx, Effects, Module, SessionEvent};
use crate::config::Config;
use crate::jid::Jid;
use crate::router::{self, Router};
use crate::session::{Outbound, Session};
use crate::stanza::{Condition, Origin, Stanza};
use crate::storage::{Store, Write, accounts};
use crate::xml::{Element, Node, reader};
use std::time::SystemTime;

pub struct TestRouter {
    pub router: Router,
    _dir: tempfile::TempDir,
    next_conn: std::cell::Cell<u64>,
    /// Each session's queue, where only what ends a session arrives (stanzas are in `Out`).
    /// Kept open: a session whose queue is closed is closing. By connection number, from 1.
    queues: std::cell::RefCell<Vec<(Jid, crate::session::OutboundRx)>>,
}

/// What one step produced.
pub struct Out {
    pub sends: Vec<(Jid, Element)>,
    /// Stanzas for other servers: (remote domain, stanza).
    pub remote: Vec<(String, Element)>,
}

impl Default for TestRouter {
    fn default() -> TestRouter {
        TestRouter::new()
    }
}

impl TestRouter {
    /// Accounts alice and bob, every module with its default config.
    pub fn new() -> TestRouter {
        TestRouter::with_users(&["alice", "bob"])
    }

    pub fn with_users(users: &[&str]) -> TestRouter {
        TestRouter::with_config(Config::default(), users)
    }

    pub fn with_config(config: Config, users: &[&str]) -> TestRouter {
        TestRouter::with_extra(config, users, Vec::new())
    }

    /// The default modules and `extra` after them.
    pub fn with_extra(config: Config, users: &[&str], extra: Vec<Box<dyn Module>>) -> TestRouter {
        let (dir, store) = crate::storage::temp_store();
        add_users(&store, users);
        let mut modules = super::all(&config);
        modules.extend(extra);
        let router = Router::with_modules(config, store, modules).unwrap();
        router.clock.set(Some(
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
        ));
        let t = TestRouter {
            router,
            _dir: dir,
            next_conn: std::cell::Cell::new(1),
            queues: Default::default(),
        };
        t.step(router::start_modules);
        t
    }

    /// A bound session `user@localhost/resource`, not yet available.
    pub fn bind(&self, user: &str, resource: &str) -> Jid {
        let jid = Jid::parse(&format!("{user}@localhost/{resource}")).unwrap();
        let (tx, rx) = crate::session::outbound();
        self.queues.borrow_mut().push((jid.clone(), rx));
        let conn = self.next_conn.get();
        self.next_conn.set(conn + 1);
        self.router
            .sessions_mut()
            .insert(Session::new(conn, jid.clone(), tx));
        self.event(&jid, SessionEvent::Bound);
        jid
    }

    /// Binds a session and sends initial presence from it.
    pub fn online(&self, user: &str, resource: &str) -> Jid {
        let jid = self.bind(user, resource);
        self.client(&jid, "<presence/>");
        jid
    }

    /// Binds a session and sends initial presence with XEP-0115 caps whose features are
    /// `features`, answering the server's question about them as a client would. Returns the
    /// session and what it got once its caps were known.
    pub fn online_with_caps(&self, user: &str, resource: &str, features: &[&str]) -> (Jid, Out) {
        use crate::xml::ns;
        let mut q = Element::new("query", ns::DISCO_INFO).with_child(
            Element::new("identity", ns::DISCO_INFO)
                .with_attr("category", "client")
                .with_attr("type", "pc"),
        );
        for f in features {
            q.push(Element::new("feature", ns::DISCO_INFO).with_attr("var", *f));
        }
        let ver = super::caps::sha1_ver(&q);
        let jid = self.bind(user, resource);
        let out = self.client(
            &jid,
            &format!(
                "<presence><c xmlns='{}' hash='sha-1' node='https://hearth.example/test' ver='{ver}'/></presence>",
                super::caps::NS
            ),
        );
        let question = out
            .to(&jid)
            .iter()
            .find(|e| e.name == "iq" && e.attr("type") == Some("get"))
            .and_then(|e| e.attr("id").map(str::to_owned));
        match question {
            Some(id) => {
                let reply = format!(
                    "<iq type='result' id='{id}' to='localhost'>{}</iq>",
                    q.to_xml()
                );
                let out = self.client(&jid, &reply);
                (jid, out)
            }
            None => (jid, out),
        }
    }

    /// The error the server ended session `jid` with, if it did.
    pub fn ended(&self, jid: &Jid) -> Option<crate::stanza::StreamError> {
        let queues = self.queues.borrow();
        // The latest session bound under `jid`.
        let (_, rx) = queues.iter().rev().find(|(j, _)| j == jid)?;
        while let Some(o) = rx.try_recv() {
            if let Outbound::Close(e) = o {
                return Some(e);
            }
        }
        None
    }

    /// The session ends as c2s ends it: the event, then it leaves the session table.
    pub fn close(&self, jid: &Jid) -> Out {
        let out = self.event(jid, SessionEvent::Closed);
        let conn = self.router.sessions().get(jid).map(|s| s.conn);
        if let Some(c) = conn {
            self.router.sessions_mut().remove(jid, c);
        }
        out
    }

    /// Runs `f` in a context, routes what it produced and commits its writes.
    pub fn step(&self, f: impl FnOnce(&mut Cx)) -> Out {
        let (out, trailing) = self.step_trailing_later(f);
        self.commit(trailing);
        out
    }

    /// Like [`TestRouter::step`], but the writes that trail the stanzas (which nothing waits
    /// for) are given back uncommitted, as when the store's writer has not got to them yet:
    /// [`TestRouter::commit`] commits them.
    pub fn step_trailing_later(&self, f: impl FnOnce(&mut Cx)) -> (Out, Vec<Write>) {
        let mut cx = Cx::new(&self.router);
        f(&mut cx);
        let Effects {
            writes,
            trailing,
            sends,
            ends,
            remote,
        } = router::finish(cx);
        self.commit(writes);
        let sends = sends.into_iter().map(|(j, d)| (j, d.el.clone())).collect();
        for e in ends {
            super::end_logins(&self.router, e);
        }
        let remote = remote.into_iter().map(|(p, q)| (p.remote, q.el)).collect();
        (Out { sends, remote }, trailing)
    }

    pub fn commit(&self, writes: Vec<Write>) {
        self.router.store.commit_blocking(writes).unwrap();
    }

    /// `xml` sent by another server, which authenticated as the domain of its `from`.
    pub fn remote(&self, xml: &str) -> Out {
        let el = parse(xml);
        let from = Jid::parse(el.attr("from").expect("a from")).unwrap();
        self.step(|cx| router::remote_stanza(cx, el, from))
    }

    /// `xml` sent by the client of session `from`, which stamps it as c2s does.
    pub fn client(&self, from: &Jid, xml: &str) -> Out {
        let (out, trailing) = self.client_trailing_later(from, xml);
        self.commit(trailing);
        out
    }

    /// [`TestRouter::client`] with the trailing writes given back uncommitted (see
    /// [`TestRouter::step_trailing_later`]).
    pub fn client_trailing_later(&self, from: &Jid, xml: &str) -> (Out, Vec<Write>) {
        let mut el = parse(xml);
        el.set_attr("from", from.to_string());
        self.step_trailing_later(|cx| match Stanza::parse(el, from.clone(), Origin::Client) {
            Ok(st) => cx.route(st),
            Err(r) => {
                if let Some(e) = &r.error {
                    cx.send(from.clone(), crate::stanza::error_reply(&r.el, e));
                }
            }
        })
    }

    pub fn event(&self, jid: &Jid, event: SessionEvent) -> Out {
        self.step(|cx| cx.raise(jid, event))
    }

    /// Moves the router's clock forward by `by`.
    pub fn skip(&self, by: std::time::Duration) {
        let now = self.router.now();
        self.router.clock.set(Some(now + by));
    }

    /// Fires the timers that are due `after` from now.
    pub fn advance(&self, after: std::time::Duration) -> Out {
        self.step(|cx| router::fire_due(cx, std::time::Instant::now() + after))
    }

    /// The queue of the session of connection `conn`.
    pub fn receiver(&self, conn: u64) -> crate::session::OutboundRx {
        // Connections are numbered from 1 in the order sessions were bound.
        self.queues.borrow()[conn as usize - 1].1.clone()
    }

    /// The running module of type `T`.
    pub fn module<T: Module>(&self) -> &T {
        Cx::new(&self.router)
            .module::<T>()
            .expect("the module runs")
    }
}

fn add_users(store: &Store, users: &[&str]) {
    let creds = crate::stream::sasl::derive_credentials("pw", 4096).unwrap();
    let writes = users.iter().map(|u| accounts::put(u, &creds)).collect();
    store.commit_blocking(writes).unwrap();
}

/// Parses a stanza written in a test, in the `jabber:client` namespace.
#[track_caller]
pub fn parse(xml: &str) -> Element {
    reader::parse_one(xml).unwrap_or_else(|| panic!("not a stanza: {xml}"))
}

/// `got` has the name, namespace and every attribute of `pattern` (`{any}` takes any value),
/// each of its child elements matched by some child of `got`, and its text if it has some.
pub fn matches(got: &Element, pattern: &Element) -> bool {
    let attrs = pattern.attrs.iter().all(|(k, v)| match got.attr(k) {
        Some(g) => v == "{any}" || g == v,
        None => false,
    });
    let text = pattern.text();
    let text_ok = text.trim().is_empty() || got.text().trim() == text.trim();
    got.is(&pattern.name, &pattern.ns)
        && attrs
        && text_ok
        && pattern.children.iter().all(|c| match c {
            Node::Element(p) => got.elements().any(|g| matches(g, p)),
            Node::Text(_) => true,
        })
}

impl Out {
    /// What went to `jid`, in order.
    pub fn to(&self, jid: &Jid) -> Vec<&Element> {
        self.sends
            .iter()
            .filter(|(to, _)| to == jid)
            .map(|(_, el)| el)
            .collect()
    }

    /// The one stanza that went to `jid`.
    #[track_caller]
    pub fn only_to(&self, jid: &Jid) -> &Element {
        let got = self.to(jid);
        assert_eq!(
            got.len(),
            1,
            "expected one stanza for {jid}, got {}",
            self.show()
        );
        got[0]
    }

    /// Some stanza to `jid` matches `pattern`.
    #[track_caller]
    pub fn assert_sent(&self, jid: &Jid, pattern: &str) {
        let p = parse(pattern);
        assert!(
            self.to(jid).iter().any(|el| matches(el, &p)),
            "nothing for {jid} matches {pattern}; sent: {}",
            self.show()
        );
    }

    /// No stanza to `jid` matches `pattern`.
    #[track_caller]
    pub fn assert_not_sent(&self, jid: &Jid, pattern: &str) {
        let p = parse(pattern);
        assert!(
            !self.to(jid).iter().any(|el| matches(el, &p)),
            "{jid} got {pattern}; sent: {}",
            self.show()
        );
    }

    #[track_caller]
    pub fn assert_nothing_to(&self, jid: &Jid) {
        assert!(self.to(jid).is_empty(), "{jid} got {}", self.show());
    }

    /// `jid` got an error reply with `id` and `condition`.
    #[track_caller]
    pub fn assert_error(&self, jid: &Jid, id: &str, condition: Condition) {
        let found = self.to(jid).iter().any(|el| {
            el.attr("type") == Some("error")
                && el.attr("id") == Some(id)
                && el.elements().any(|e| {
                    e.name == "error" && e.elements().any(|c| c.name == condition.as_str())
                })
        });
        assert!(
            found,
            "no {} error {id} for {jid}; sent: {}",
            condition.as_str(),
            self.show()
        );
    }

    pub fn show(&self) -> String {
        self.sends
            .iter()
            .map(|(to, el)| format!("\n  {to}: {}", el.to_xml()))
            .collect()
    }
}
