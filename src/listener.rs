//! Listening sockets and accept loops: one task per connection on the local executor, with
//! limits on connections per listener in total and per source (an IPv4 address or an IPv6
//! /64, see `Server::conn_counts`). Client streams register their listeners
//! (`stream::c2s::listeners`), and so can modules (`Module::listeners`).

use crate::error::Error;
use crate::server::Server;
use crate::session::OutboundRx;
use smol::{Async, LocalExecutor};
use socket2::{Domain, Socket, Type};
use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

/// TCP keepalive on accepted connections: the first probe after this much silence (as long as
/// a client's own pings may be apart, so a sleeping phone is not woken for nothing), then one
/// every interval until the kernel's count of unanswered probes closes the connection.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(300);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// A connection a listener accepted, for its handler.
pub struct Accepted {
    pub stream: Async<TcpStream>,
    pub peer: SocketAddr,
    /// The connection's id in `Server::conns`.
    pub id: u64,
    /// The connection's queue: stanzas for it, or the order to close (at shutdown, say).
    pub rx: OutboundRx,
}

pub type Handler = Rc<dyn Fn(Rc<Server>, Accepted) -> Pin<Box<dyn Future<Output = ()>>>>;

/// A kind of connection the server accepts, on some addresses, with its own limits.
pub struct Listener {
    /// Named in logs and in the `listening NAME ADDRESS` lines the server prints.
    pub name: &'static str,
    /// What `hearth check` says of it.
    pub description: &'static str,
    pub addrs: Vec<SocketAddr>,
    pub max_connections: usize,
    /// Per IPv4 address or IPv6 /64.
    pub max_connections_per_ip: usize,
    pub handler: Handler,
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        // So that "0.0.0.0:5222" and "[::]:5222" can both be listed.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Binds every address of every listener; returns each socket with its listener's index.
pub fn bind_all(listeners: &[Listener]) -> Result<Vec<(usize, Async<TcpListener>)>, Error> {
    let mut out = Vec::new();
    for (i, l) in listeners.iter().enumerate() {
        for &addr in &l.addrs {
            match bind(addr) {
                Ok(s) => {
                    let s = Async::new(s)
                        .map_err(|e| Error::Io(format!("cannot use the socket {addr}: {e}")))?;
                    out.push((i, s));
                }
                // A machine without IPv6 still serves IPv4.
                Err(e) if addr.is_ipv6() && addr.ip().is_unspecified() => {
                    log::warn!("not listening on {addr}: {e}");
                }
                Err(e) => {
                    let advice = match e.kind() {
                        std::io::ErrorKind::AddrInUse => {
                            "; another program (or another hearth) uses that port"
                        }
                        std::io::ErrorKind::PermissionDenied => {
                            "; ports below 1024 need CAP_NET_BIND_SERVICE"
                        }
                        _ => "",
                    };
                    return Err(Error::Io(format!(
                        "cannot listen on {addr} for {}: {e}{advice}",
                        l.name
                    )));
                }
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Config("no listen address could be bound".into()));
    }
    Ok(out)
}

pub async fn accept_loop(
    server: Rc<Server>,
    ex: Rc<LocalExecutor<'static>>,
    socket: Async<TcpListener>,
    listener: usize,
) {
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                log::error!("accept failed: {e}; raise the open files limit if this repeats");
                smol::Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        if server.closing.get() {
            return;
        }
        let spec = &server.listeners[listener];
        let (total, from_ip) = server.conn_counts(listener, peer.ip());
        if total >= spec.max_connections || from_ip >= spec.max_connections_per_ip {
            log::warn!(
                "refusing a {} connection from {peer}: connection limit reached",
                spec.name
            );
            continue;
        }
        let _ = stream.get_ref().set_nodelay(true);
        // A peer that vanished (a phone out of coverage, a crashed router) is noticed by the
        // kernel even when nothing is being written to it.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL);
        let _ = socket2::SockRef::from(stream.get_ref()).set_tcp_keepalive(&keepalive);
        let (id, rx) = server.add_conn(listener, peer.ip());
        let handler = spec.handler.clone();
        let s = server.clone();
        ex.spawn(async move {
            let accepted = Accepted {
                stream,
                peer,
                id,
                rx,
            };
            handler(s.clone(), accepted).await;
            s.conns.borrow_mut().remove(&id);
        })
        .detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::modules::Module;
    use crate::router::Router;
    use std::io::{Read, Write};

    /// A module with a listener of its own, at most one connection per address: it greets
    /// and then holds the connection until the server closes it.
    struct Greeter(SocketAddr);

    impl Module for Greeter {
        fn name(&self) -> &'static str {
            "greeter"
        }
        fn listeners(&self) -> Vec<Listener> {
            vec![Listener {
                name: "greeter",
                description: "test",
                addrs: vec![self.0],
                max_connections: 10,
                max_connections_per_ip: 1,
                handler: Rc::new(|_server, a: Accepted| {
                    Box::pin(async move {
                        let mut s = a.stream;
                        let _ = smol::io::AsyncWriteExt::write_all(&mut s, b"hello\n").await;
                        let _ = a.rx.recv().await;
                    })
                }),
            }]
        }
    }

    #[test]
    fn a_module_listens_with_its_own_limits() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.data_dir = dir.path().to_owned();
        let tls = crate::tls::load(&config).unwrap();
        let (_sdir, store) = crate::storage::temp_store();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let router = Router::with_modules(config, store, vec![Box::new(Greeter(any))]).unwrap();
        let mine: Vec<Listener> = router
            .modules()
            .iter()
            .flat_map(|m| m.listeners())
            .collect();
        let bound = bind_all(&mine).unwrap();
        let addr = bound[0].1.get_ref().local_addr().unwrap();
        let server = Rc::new(Server::new(router, tls, mine));
        let ex = Rc::new(LocalExecutor::new());
        for (i, s) in bound {
            ex.spawn(accept_loop(server.clone(), ex.clone(), s, i))
                .detach();
        }
        let read_all = |mut c: std::net::TcpStream| {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 16];
            while !got.ends_with(b"\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            (c, got)
        };
        smol::block_on(ex.run(async {
            let connect = move || std::net::TcpStream::connect(addr).unwrap();
            let first = smol::unblock(connect).await;
            let (mut first, greeting) = smol::unblock(move || read_all(first)).await;
            assert_eq!(greeting, b"hello\n");
            // The second connection from the same address is over the listener's limit.
            let second = smol::unblock(connect).await;
            let (_, got) = smol::unblock(move || read_all(second)).await;
            assert!(got.is_empty(), "{got:?}");
            // Once the first is closed by the server, a new one is greeted again.
            let ids: Vec<u64> = server.conns.borrow().keys().copied().collect();
            for id in ids {
                server.close_conn(
                    id,
                    crate::stanza::StreamError::new(crate::stanza::StreamCondition::SystemShutdown),
                );
            }
            let _ = first.write_all(b"x");
            let (_, got) = smol::unblock(move || read_all(first)).await;
            assert!(got.is_empty());
            let third = smol::unblock(connect).await;
            let (_, greeting) = smol::unblock(move || read_all(third)).await;
            assert_eq!(greeting, b"hello\n");
        }));
    }
}
