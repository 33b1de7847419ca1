//! The server: configuration, store, sessions and modules behind one `Rc`, the listeners, the
//! signal handling and an orderly shutdown.

use crate::config::Config;
use crate::error::Error;
use crate::modules::{self, Module};
use crate::session::{Outbound, Sessions};
use crate::stanza::{StreamCondition, StreamError};
use crate::storage::Store;
use crate::storage::roster::RosterItem;
use crate::{admin, listener, tls};
use async_signal::{Signal, Signals};
use smol::channel::Sender;
use smol::{LocalExecutor, Timer};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub struct Conn {
    pub tx: Sender<Outbound>,
    pub ip: IpAddr,
}

type StagedRoster = HashMap<(String, String), (Option<RosterItem>, u64)>;

pub struct Server {
    pub config: Config,
    pub store: Store,
    pub sessions: RefCell<Sessions>,
    pub modules: Vec<Box<dyn Module>>,
    pub tls: RefCell<Arc<rustls::ServerConfig>>,
    pub conns: RefCell<HashMap<u64, Conn>>,
    pub throttle: RefCell<Throttle>,
    /// The accounts (localparts), kept in memory: routing asks for every stanza.
    pub accounts: RefCell<std::collections::HashSet<String>>,
    /// XEP-0198 sessions that can be resumed, by resumption id.
    pub resumable: RefCell<HashMap<String, crate::stream::c2s::Resumable>>,
    /// Set once shutdown begins: listeners stop accepting.
    pub closing: Cell<bool>,
    next_conn: Cell<u64>,
    last_version: Cell<u64>,
    /// Roster changes handed to the writer but not yet committed, with their version, so that
    /// handlers running meanwhile see them.
    staged_roster: RefCell<StagedRoster>,
}

/// Failed logins per IP address and per account within a window (RFC 6120 §6.4.5 asks for
/// limits on retries; this also slows password guessing across connections).
#[derive(Default)]
pub struct Throttle {
    failures: HashMap<String, (u32, Instant)>,
}

impl Throttle {
    pub fn blocked(&mut self, key: &str, max: u32, window: Duration) -> bool {
        if max == 0 {
            return false;
        }
        match self.failures.get(key) {
            Some((_, since)) if since.elapsed() > window => {
                self.failures.remove(key);
                false
            }
            Some((n, _)) => *n >= max,
            None => false,
        }
    }

    pub fn fail(&mut self, key: String, window: Duration) {
        if self.failures.len() > 100_000 {
            self.failures
                .retain(|_, (_, since)| since.elapsed() <= window);
        }
        let e = self.failures.entry(key).or_insert((0, Instant::now()));
        if e.1.elapsed() > window {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }
}

impl Server {
    pub fn new(config: Config, store: Store, tls: Arc<rustls::ServerConfig>) -> Server {
        let modules = modules::all(&config);
        Server {
            config,
            store,
            sessions: RefCell::default(),
            modules,
            tls: RefCell::new(tls),
            conns: RefCell::default(),
            throttle: RefCell::default(),
            accounts: RefCell::default(),
            resumable: RefCell::default(),
            closing: Cell::new(false),
            next_conn: Cell::new(1),
            last_version: Cell::new(0),
            staged_roster: RefCell::default(),
        }
    }

    pub fn account_exists(&self, user: &str) -> bool {
        self.accounts.borrow().contains(user)
    }

    pub fn add_conn(&self, tx: Sender<Outbound>, ip: IpAddr) -> u64 {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        self.conns.borrow_mut().insert(id, Conn { tx, ip });
        id
    }

    pub fn close_conn(&self, id: u64, err: StreamError) {
        let tx = self.conns.borrow().get(&id).map(|c| c.tx.clone());
        if let Some(tx) = tx {
            // A full queue is closed instead: the connection ends either way.
            if tx.try_send(Outbound::Close(err)).is_err() {
                tx.close();
            }
        }
    }

    /// A roster version greater than any handed out before, here or in an earlier run.
    pub fn next_version(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let v = now.max(self.last_version.get() + 1);
        self.last_version.set(v);
        v
    }

    pub fn stage_roster(&self, user: &str, contact: &str, item: Option<RosterItem>, ver: u64) {
        self.staged_roster
            .borrow_mut()
            .insert((user.to_owned(), contact.to_owned()), (item, ver));
    }

    pub fn unstage_roster(&self, user: &str, contact: &str, ver: u64) {
        let mut staged = self.staged_roster.borrow_mut();
        let key = (user.to_owned(), contact.to_owned());
        if staged.get(&key).is_some_and(|(_, v)| *v == ver) {
            staged.remove(&key);
        }
    }

    pub fn roster_item(&self, user: &str, contact: &str) -> Result<Option<RosterItem>, Error> {
        let key = (user.to_owned(), contact.to_owned());
        if let Some((item, _)) = self.staged_roster.borrow().get(&key) {
            return Ok(item.clone());
        }
        self.store.roster_item(user, contact)
    }

    pub fn roster(&self, user: &str) -> Result<Vec<(String, RosterItem)>, Error> {
        let mut items: HashMap<String, RosterItem> = self.store.roster(user)?.into_iter().collect();
        for ((u, contact), (item, _)) in self.staged_roster.borrow().iter() {
            if u == user {
                match item {
                    Some(i) => items.insert(contact.clone(), i.clone()),
                    None => items.remove(contact),
                };
            }
        }
        let mut out: Vec<_> = items.into_iter().collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    pub fn roster_version(&self, user: &str) -> Result<u64, Error> {
        let staged = self
            .staged_roster
            .borrow()
            .iter()
            .filter(|((u, _), _)| u == user)
            .map(|(_, (_, v))| *v)
            .max()
            .unwrap_or(0);
        Ok(self.store.roster_version(user)?.max(staged))
    }
}

/// Runs the server until SIGTERM or SIGINT.
pub fn serve(config: Config) -> Result<(), Error> {
    let data_dir = config.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| Error::io("create the data directory", &data_dir, &e))?;
    let store = Store::open_with_cache(&config.store_path(), config.store_cache_bytes())?;
    let tls = tls::load(&config)?;
    let bound = listener::bind_all(&config)?;
    let admin = admin::bind(&config)?;
    let accounts = store.users()?.into_iter().collect();
    let server = Rc::new(Server::new(config, store, tls));
    *server.accounts.borrow_mut() = accounts;
    let ex = Rc::new(LocalExecutor::new());
    // Installed before the listening lines are printed: a SIGTERM from then on must shut the
    // server down gracefully.
    let signals = Signals::new([Signal::Term, Signal::Int, Signal::Hup])
        .map_err(|e| Error::Io(format!("cannot install signal handlers: {e}")))?;
    let names: Vec<&str> = server.modules.iter().map(|m| m.name()).collect();
    log::info!(
        "serving {} with modules {}",
        server.config.server.domain,
        names.join(", ")
    );
    let mut stdout = std::io::stdout();
    for (kind, l) in &bound {
        if let Ok(addr) = l.get_ref().local_addr() {
            let _ = writeln!(stdout, "listening {} {addr}", kind.name());
            log::info!("listening for {} on {addr}", kind.name());
        }
    }
    let _ = stdout.flush();
    let result = smol::block_on(ex.run(async {
        for (kind, l) in bound {
            ex.spawn(listener::accept_loop(server.clone(), ex.clone(), l, kind))
                .detach();
        }
        if let Some(a) = admin {
            ex.spawn(admin::serve(server.clone(), ex.clone(), a))
                .detach();
        }
        ex.spawn(tick(server.clone())).detach();
        wait_for_shutdown(&server, signals).await
    }));
    shutdown(&server, &ex);
    admin::remove(&server.config);
    server.store.close();
    log::info!("stopped");
    result
}

/// Once a second, each module's `tick` (housekeeping such as archive expiry).
async fn tick(server: Rc<Server>) {
    loop {
        Timer::after(Duration::from_secs(1)).await;
        let effects = {
            let mut cx = modules::Cx::new(&server);
            for m in server.modules.iter() {
                m.tick(&mut cx, SystemTime::now());
            }
            cx.effects
        };
        if let Err(e) = crate::router::apply(&server, effects).await {
            log::error!("housekeeping failed: {e}");
        }
    }
}

async fn wait_for_shutdown(server: &Rc<Server>, mut signals: Signals) -> Result<(), Error> {
    use smol::stream::StreamExt;
    while let Some(sig) = signals.next().await {
        match sig {
            Ok(Signal::Hup) => match tls::load(&server.config) {
                Ok(cfg) => {
                    *server.tls.borrow_mut() = cfg;
                    log::info!("reloaded the TLS certificate");
                }
                Err(e) => log::error!("keeping the old certificate: {e}"),
            },
            Ok(_) => break,
            Err(e) => log::error!("signal handling: {e}"),
        }
    }
    log::info!("shutting down");
    Ok(())
}

/// Tells every connection `system-shutdown` and gives them a few seconds to say goodbye.
fn shutdown(server: &Rc<Server>, ex: &LocalExecutor<'_>) {
    server.closing.set(true);
    let ids: Vec<u64> = server.conns.borrow().keys().copied().collect();
    for id in ids {
        server.close_conn(id, StreamError::new(StreamCondition::SystemShutdown));
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    smol::block_on(ex.run(async {
        while !server.conns.borrow().is_empty() && Instant::now() < deadline {
            Timer::after(Duration::from_millis(10)).await;
        }
    }));
}
