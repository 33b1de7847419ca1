//! Listening sockets and accept loops: one task per connection on the local executor, with
//! limits on connections in total and per IP address.

use crate::config::Config;
use crate::error::Error;
use crate::server::Server;
use crate::stream::c2s;
use smol::{Async, LocalExecutor};
use socket2::{Domain, Socket, Type};
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// RFC 6120 STARTTLS.
    C2s,
    /// XEP-0368 direct TLS.
    C2sTls,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::C2s => "c2s",
            Kind::C2sTls => "c2s_tls",
        }
    }
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

pub fn bind_all(config: &Config) -> Result<Vec<(Kind, Async<TcpListener>)>, Error> {
    let mut out = Vec::new();
    let all = config
        .listen
        .c2s
        .iter()
        .map(|a| (Kind::C2s, a))
        .chain(config.listen.c2s_tls.iter().map(|a| (Kind::C2sTls, a)));
    for (kind, a) in all {
        // Validated when the config was loaded.
        let addr: SocketAddr = a
            .parse()
            .map_err(|_| Error::Config(format!("bad address {a}")))?;
        match bind(addr) {
            Ok(l) => {
                let l = Async::new(l)
                    .map_err(|e| Error::Io(format!("cannot use the socket {addr}: {e}")))?;
                out.push((kind, l));
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
                    kind.name()
                )));
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
    listener: Async<TcpListener>,
    kind: Kind,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
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
        let (total, from_ip) = {
            let conns = server.conns.borrow();
            let ip = peer.ip();
            (conns.len(), conns.values().filter(|c| c.ip == ip).count())
        };
        let limits = &server.config.limits;
        if total >= limits.max_connections || from_ip >= limits.max_connections_per_ip {
            log::warn!("refusing a connection from {peer}: connection limit reached");
            continue;
        }
        let _ = stream.get_ref().set_nodelay(true);
        ex.spawn(c2s::run(server.clone(), stream, peer, kind))
            .detach();
    }
}
