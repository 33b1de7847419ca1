//! The server: configuration, store, sessions and modules behind one `Rc`, the listeners, the
//! signal handling and an orderly shutdown.

use crate::config::Config;
use crate::error::Error;
use crate::listener::{self, Listener};
use crate::router::{self, Router};
use crate::session::{self, Outbound, OutboundRx, OutboundTx};
use crate::stanza::{StreamCondition, StreamError};
use crate::storage::Store;
use crate::stream::throttle::{Source, Throttle};
use crate::stream::{c2s, s2s, sasl};
use crate::{admin, modules, tls};
use async_signal::{Signal, Signals};
use smol::{LocalExecutor, Timer};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// An open connection, of any listener.
pub struct Conn {
    pub tx: OutboundTx,
    pub ip: IpAddr,
    pub listener: usize,
    /// The account this connection authenticated as: removing the account or changing its
    /// password ends the connection, bound or not.
    pub user: Option<String>,
}

/// The running server: the router (and through it the store, sessions and modules), and what
/// belongs to connections: TLS, listeners, open connections, login throttling, sessions
/// waiting to be resumed. Derefs to the router.
pub struct Server {
    pub router: Router,
    pub tls: RefCell<Rc<tls::ServerTls>>,
    pub listeners: Vec<Listener>,
    pub conns: RefCell<HashMap<u64, Conn>>,
    pub throttle: RefCell<Throttle>,
    /// XEP-0198 sessions that can be resumed, by resumption id.
    pub resumable: RefCell<HashMap<String, crate::stream::c2s::Resumable>>,
    /// Set once shutdown begins: listeners stop accepting.
    pub closing: Cell<bool>,
    /// Server-to-server TLS and dialback keys.
    pub federation: crate::stream::s2s::State,
    next_conn: Cell<u64>,
}

impl std::ops::Deref for Server {
    type Target = Router;
    fn deref(&self) -> &Router {
        &self.router
    }
}

impl Server {
    pub fn new(router: Router, tls: Rc<tls::ServerTls>, listeners: Vec<Listener>) -> Server {
        Server {
            router,
            tls: RefCell::new(tls),
            listeners,
            conns: RefCell::default(),
            throttle: RefCell::default(),
            resumable: RefCell::default(),
            closing: Cell::new(false),
            federation: Default::default(),
            next_conn: Cell::new(1),
        }
    }

    /// Registers a new connection of `listener`; returns its id and its queue.
    pub fn add_conn(&self, listener: usize, ip: IpAddr) -> (u64, OutboundRx) {
        // `router::deliver` enforces the bound.
        let (tx, rx) = session::outbound();
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        self.conns.borrow_mut().insert(
            id,
            Conn {
                tx,
                ip,
                listener,
                user: None,
            },
        );
        (id, rx)
    }

    /// Connections of `listener` in total and from the source of `ip` (the address, or its
    /// /64 for IPv6: one subscriber usually has a whole /64).
    pub fn conn_counts(&self, listener: usize, ip: IpAddr) -> (usize, usize) {
        let conns = self.conns.borrow();
        let mine = conns.values().filter(|c| c.listener == listener);
        let source = Source::from(ip);
        let (mut total, mut from_source) = (0, 0);
        for c in mine {
            total += 1;
            from_source += usize::from(Source::from(c.ip) == source);
        }
        (total, from_source)
    }

    /// Ends every connection authenticated as `user`, bound or not, with `err`.
    pub fn close_account(&self, user: &str, err: &StreamError) {
        let ids: Vec<u64> = {
            let conns = self.conns.borrow();
            let sessions = self.sessions();
            let bound = sessions.of(user).iter().map(|s| s.conn);
            let authenticated = conns
                .iter()
                .filter(|(_, c)| c.user.as_deref() == Some(user))
                .map(|(id, _)| *id);
            let mut ids: Vec<u64> = bound.chain(authenticated).collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        for id in ids {
            self.close_conn(id, err.clone());
        }
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
}

/// Every listener: client streams', other servers' and the modules'.
pub fn listeners(config: &Config, modules: &[Box<dyn modules::Module>]) -> Vec<Listener> {
    let mut all = c2s::listeners(config);
    all.extend(s2s::listeners(config));
    all.extend(modules.iter().flat_map(|m| m.listeners()));
    all
}

/// Runs the server until SIGTERM or SIGINT.
pub fn serve(config: Config) -> Result<(), Error> {
    config.private_data_dir()?;
    let store = Store::open_with_cache(
        &config.store_path(),
        config.store_cache_bytes(),
        modules::schema(),
    )?;
    // After the store: its lock makes sure that no other server makes the secret meanwhile.
    let secret = sasl::load_secret(&config.server.data_dir)?;
    sasl::install_decoy(sasl::Decoy::new(secret, config.auth.scram_iterations));
    let tls = tls::load(&config)?;
    // Only a server that talks to others needs their authorities in memory.
    let s2s_tls = match config.federation.listens() {
        true => Some(s2s::tls::Tls::load(&config)?),
        false => None,
    };
    let router = Router::new(config, store)?;
    let specs = listeners(&router.config, router.modules());
    let bound = listener::bind_all(&specs)?;
    let admin = admin::bind(&router.config)?;
    let server = Rc::new(Server::new(router, tls, specs));
    if let Some(t) = s2s_tls {
        server.federation.set_tls(t);
    }
    let ex = Rc::new(LocalExecutor::new());
    // Installed before the listening lines are printed: a SIGTERM from then on must shut the
    // server down gracefully.
    let signals = Signals::new([Signal::Term, Signal::Int, Signal::Hup])
        .map_err(|e| Error::Io(format!("cannot install signal handlers: {e}")))?;
    let names: Vec<&str> = server.modules().iter().map(|m| m.name()).collect();
    log::info!(
        "serving {} with modules {}",
        server.config.server.domain,
        names.join(", ")
    );
    let mut stdout = std::io::stdout();
    for (i, l) in &bound {
        if let Ok(addr) = l.get_ref().local_addr() {
            let name = server.listeners[*i].name;
            for m in server.modules() {
                m.listening(name, addr);
            }
            let _ = writeln!(stdout, "listening {name} {addr}");
            log::info!("listening for {name} on {addr}");
        }
    }
    let _ = stdout.flush();
    let result = smol::block_on(ex.run(async {
        ex.spawn(s2s::outgoing::connector(server.clone(), ex.clone()))
            .detach();
        let timers = server.clone();
        ex.spawn(async move { router::run_timers(&timers).await })
            .detach();
        router::start(&server).await;
        // Before any connection is accepted: what waited since before the restart goes ahead
        // of what anyone sends now.
        s2s::parked::resend(&server).await;
        for (i, l) in bound {
            ex.spawn(listener::accept_loop(server.clone(), ex.clone(), l, i))
                .detach();
        }
        if let Some(a) = admin {
            ex.spawn(admin::serve(server.clone(), ex.clone(), a))
                .detach();
        }
        wait_for_shutdown(&server, signals).await
    }));
    shutdown(&server, &ex);
    // After the last run of the tasks: what the links hold now is all they will ever hold.
    s2s::parked::keep(&server);
    admin::remove(&server.config);
    server.store.close();
    log::info!("stopped");
    result
}

async fn wait_for_shutdown(server: &Rc<Server>, mut signals: Signals) -> Result<(), Error> {
    use smol::stream::StreamExt;
    while let Some(sig) = signals.next().await {
        match sig {
            Ok(Signal::Hup) => {
                match tls::load(&server.config) {
                    Ok(cfg) => {
                        *server.tls.borrow_mut() = cfg;
                        log::info!("reloaded the TLS certificate");
                    }
                    Err(e) => log::error!("keeping the old certificate: {e}"),
                }
                if server.config.federation.listens() {
                    match s2s::tls::Tls::load(&server.config) {
                        Ok(t) => server.federation.set_tls(t),
                        Err(e) => {
                            log::error!("keeping the old certificates for other servers: {e}")
                        }
                    }
                }
            }
            Ok(_) => break,
            Err(e) => log::error!("signal handling: {e}"),
        }
    }
    log::info!("shutting down");
    Ok(())
}

/// Lets the modules say their last words, then tells every connection `system-shutdown` and
/// gives them a few seconds to say goodbye.
fn shutdown(server: &Rc<Server>, ex: &LocalExecutor<'_>) {
    server.closing.set(true);
    smol::block_on(ex.run(router::run(server, "stopping the modules", |cx| {
        for m in cx.modules() {
            m.stop(cx);
        }
    })));
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
