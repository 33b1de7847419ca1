//! Whatever a logged-in client sends: stanzas read from arbitrary bytes (after a
//! `jabber:client` stream header, with the server's default limits) go the way c2s sends a bound
//! session's stanzas, through `router::from_client`, into the real router with every module of
//! the default config over a real store. Every module's payload parsing and state (roster
//! sets, blocking lists, presence, archive queries and preferences, carbons, offline storage,
//! disco, ping, time, version) is reached from here.
//!
//! Accounts alice, bob and carol (never online); bound sessions alice/phone, alice/laptop and
//! bob/phone. The first byte of the input says who sends each of the first four stanzas (two
//! bits each, 3 meaning alice/phone again); alice/phone sends the rest. At the end every
//! session closes, as a dropped connection does.
//!
//! Besides not panicking: every stanza the server queues for a session is XML that the
//! session's client can read.

#![no_main]

use hearth::config::Config;
use hearth::jid::Jid;
use hearth::modules::{self, SessionEvent};
use hearth::router::{self, Router};
use hearth::session::{Outbound, OutboundRx, Session, outbound};
use hearth::storage::Store;
use hearth::storage::accounts::{self, Credentials};
use hearth::stream::sasl::derive_credentials;
use hearth::xml::reader::StreamEvent;
use hearth::xml::{Element, ns};
use hearth_fuzz::{assert_readable, header, read_pieces};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const SESSIONS: [&str; 3] = [
    "alice@localhost/phone",
    "alice@localhost/laptop",
    "bob@localhost/phone",
];

fn credentials() -> &'static Credentials {
    static CREDS: OnceLock<Credentials> = OnceLock::new();
    CREDS.get_or_init(|| derive_credentials("pw", 4096).expect("a valid password"))
}

/// A store in memory-backed temporary space where there is one: every step commits.
fn temp_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).expect("a temporary directory")
    } else {
        tempfile::tempdir().expect("a temporary directory")
    }
}

/// What the server queued for each session: only readable XML.
fn drain(queues: &[(Jid, OutboundRx)]) {
    for (_, rx) in queues {
        while let Some(out) = rx.try_recv() {
            if let Outbound::Stanza(el) = out {
                assert_readable(&el.el, ns::CLIENT);
            }
        }
    }
}

/// What c2s does with a bound session's stanza before it reaches the router (it refuses
/// other elements with a stream error and answers session and bind requests itself).
fn for_router(el: &Element) -> bool {
    el.ns == ns::CLIENT
        && matches!(el.name.as_str(), "message" | "presence" | "iq")
        && !router::is_iq_for(el, "session", ns::SESSION)
        && !router::is_iq_for(el, "bind", ns::BIND)
}

fuzz_target!(|data: &[u8]| {
    let Some((&senders, body)) = data.split_first() else {
        return;
    };
    let config = Config::default();
    let limits = config.xml_limits();
    let mut doc = header(ns::CLIENT);
    doc.extend_from_slice(body);
    let (events, _) = read_pieces(&[&doc], limits);
    let stanzas: Vec<Element> = events
        .into_iter()
        .filter_map(|e| match e {
            StreamEvent::Stanza(el) => Some(el),
            _ => None,
        })
        .collect();
    if stanzas.is_empty() {
        return;
    }

    let dir = temp_dir();
    let store = Store::open_with_cache(&dir.path().join("hearth.redb"), 1 << 20, modules::schema())
        .expect("the store opens");
    let users = ["alice", "bob", "carol"];
    store
        .commit_blocking(
            users
                .iter()
                .map(|u| accounts::put(u, credentials()))
                .collect(),
        )
        .expect("the accounts are stored");
    let all = modules::all(&config);
    let router = Router::with_modules(config, store, all).expect("the router starts");

    smol::block_on(async {
        router::start(&router).await;
        let mut queues = Vec::new();
        for (conn, s) in SESSIONS.iter().enumerate() {
            let jid = Jid::parse(s).expect("a JID");
            let (tx, rx) = outbound();
            router
                .sessions_mut()
                .insert(Session::new(conn as u64, jid.clone(), tx));
            router::session_event(&router, &jid, SessionEvent::Bound).await;
            queues.push((jid, rx));
        }
        drain(&queues);
        for (i, mut el) in stanzas.into_iter().enumerate() {
            let who = if i < 4 {
                usize::from((senders >> (2 * i)) & 3) % SESSIONS.len()
            } else {
                0
            };
            if !for_router(&el) {
                continue;
            }
            let from = queues[who].0.clone();
            el.set_attr("from", from.to_string());
            if let Some(ticket) = router::from_client(&router, &from, el).await {
                Store::wait(ticket).await.expect("the archive commits");
            }
            drain(&queues);
        }
        for (conn, (jid, _)) in queues.iter().enumerate() {
            router::session_event(&router, jid, SessionEvent::Closed).await;
            router.sessions_mut().remove(jid, conn as u64);
            drain(&queues);
        }
    });
    router.store.close();
});
