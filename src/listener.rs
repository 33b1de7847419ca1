//! Listening sockets and accept loops: one task per connection on the local executor, with
//! limits on connections per listener in total and per IP address. Client streams register
//! their listeners (`stream::c2s::listeners`), and so can modules (`Module::listeners`).

use crate::error::Error;
use crate::server::Server;
use crate::session::Outbound;
use smol::channel::Receiver;
use smol::{Async, LocalExecutor};
use socket2::{Domain, Socket, Type};
use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

/// A connection a listener accepted, for its handler.
pub struct Accepted {
    pub stream: Async<TcpStream>,
    pub peer: SocketAddr,
    /// The connection's id in `Server::conns`.
    pub id: u64,
    /// The connection's queue: stanzas for it, or the order to close (at shutdown, say).
    pub rx: Receiver<Outbound>,
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
