//! The web endpoint: one HTTPS listener (hyper's HTTP/1.1 on the server's executor, through
//! smol-hyper's adapters) serving XEP-0363 uploads and downloads (`upload.rs`), XMPP over
//! WebSocket (RFC 7395, `websocket.rs`) at `/xmpp-websocket`, and XEP-0156 discovery of it at
//! `/.well-known/host-meta` and `/.well-known/host-meta.json`.
//!
//! TLS uses the certificate of the XMPP listeners: each connection takes the configuration the
//! server holds when it arrives (so a SIGHUP reload applies to the next one), with ALPN
//! `http/1.1` in place of `xmpp-client`; the variant is made once per reloaded certificate.
//!
//! Limits: connections in total and per address (the listener's), the TLS handshake and the
//! request headers within `header_timeout_secs`, the header block within `max_header_bytes`,
//! and a connection on which nothing moves for `idle_timeout_secs` is closed, whatever it is
//! doing (a slow-loris body, a download nobody reads, an idle keep-alive). Bodies are only
//! read by the upload handler, which takes no more than its slot's size. A connection upgraded
//! to a WebSocket leaves all of this behind and follows the client stream's own limits.

pub mod upload;
mod websocket;

use super::{Cx, Entry, Module};
use crate::listener::{Accepted, Listener};
use crate::server::Server;
use crate::xml::Element;
use bytes::Bytes;
use futures_rustls::server::TlsStream;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::{Method, Request, Response, StatusCode, header};
use serde::Deserialize;
use smol::future::FutureExt;
use smol::io::{AsyncRead, AsyncWrite};
use smol::{Async, Timer};
use smol_hyper::rt::{FuturesIo, SmolTimer};
use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub enabled: bool,
    /// Addresses of the HTTPS listener.
    pub listen: Vec<String>,
    /// The address browsers and clients reach the listener at, as the URLs of uploads and
    /// host-meta say it; empty means `https://DOMAIN:PORT` with the first listen port.
    pub public_url: String,
    /// XMPP over WebSocket at `/xmpp-websocket`.
    pub websocket: bool,
    pub max_connections: usize,
    /// Per IPv4 address or IPv6 /64.
    pub max_connections_per_ip: usize,
    /// The request line and headers of one request.
    pub max_header_bytes: usize,
    /// The TLS handshake and each request's headers must arrive within this.
    pub header_timeout_secs: u64,
    /// A connection on which nothing is read or written for this long is closed.
    pub idle_timeout_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            listen: vec!["0.0.0.0:5443".into(), "[::]:5443".into()],
            public_url: String::new(),
            websocket: true,
            max_connections: 1000,
            max_connections_per_ip: 64,
            max_header_bytes: 16384,
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        for a in &self.listen {
            a.parse::<SocketAddr>().map_err(|_| {
                format!(
                    "modules.http.listen address {a:?} is not an IP:port pair such as \
                     \"0.0.0.0:5443\""
                )
            })?;
        }
        if self.listen.is_empty() {
            return Err(
                "modules.http.listen is empty; list an address or set modules.http.enabled = \
                 false"
                    .into(),
            );
        }
        let url = &self.public_url;
        let bad = |c: char| c.is_whitespace() || c.is_control() || "\"'<>\\`{}|^".contains(c);
        if !url.is_empty() && (!url.starts_with("https://") || url.len() <= 8 || url.contains(bad))
        {
            return Err(format!(
                "modules.http.public_url {url:?} is not an https:// URL such as \
                 \"https://example.org:5443\""
            ));
        }
        Ok(())
    }

    /// The URL the endpoint is reached at, without a trailing slash; `bound` is the port
    /// the first listen address got, for one configured with port 0.
    pub fn public_url(&self, domain: &str, bound: Option<u16>) -> String {
        if !self.public_url.is_empty() {
            return self.public_url.trim_end_matches('/').to_owned();
        }
        let port = self
            .listen
            .first()
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .map_or(5443, |a| a.port());
        let port = match port {
            0 => bound.unwrap_or(0),
            p => p,
        };
        match port {
            443 => format!("https://{domain}"),
            p => format!("https://{domain}:{p}"),
        }
    }
}

/// The listener's name, in logs and in the `listening` lines.
const LISTENER: &str = "https";

pub const ENTRY: Entry = Entry {
    tables: &[],
    new: |config| {
        let c = &config.modules.http;
        c.enabled.then(|| {
            Box::new(Http {
                domain: config.server.domain.clone(),
                config: c.clone(),
                bound: Cell::new(None),
                tls: RefCell::default(),
            }) as Box<dyn Module>
        })
    },
};

pub struct Http {
    domain: String,
    config: Config,
    /// The port of the first listen address, once bound.
    bound: Cell<Option<u16>>,
    /// The XMPP listeners' TLS configuration last seen, and its HTTP variant.
    tls: RefCell<Option<(Rc<crate::tls::ServerTls>, Arc<rustls::ServerConfig>)>>,
}

impl Module for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn listening(&self, name: &str, addr: SocketAddr) {
        if name == LISTENER && self.bound.get().is_none() {
            self.bound.set(Some(addr.port()));
        }
    }

    fn listeners(&self) -> Vec<Listener> {
        vec![Listener {
            name: LISTENER,
            description: "HTTPS: file upload, WebSocket and host-meta",
            // Validated when the config was loaded.
            addrs: self
                .config
                .listen
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            max_connections: self.config.max_connections,
            max_connections_per_ip: self.config.max_connections_per_ip,
            handler: Rc::new(|server, accepted| Box::pin(serve(server, accepted))),
        }]
    }
}

impl Http {
    /// The TLS configuration for a new connection: the server's current one, for HTTP.
    fn tls_config(&self, server: &Server) -> Arc<rustls::ServerConfig> {
        let xmpp = server.tls.borrow().clone();
        if let Some((seen, http)) = &*self.tls.borrow()
            && Rc::ptr_eq(seen, &xmpp)
        {
            return http.clone();
        }
        let mut http = (*xmpp.config).clone();
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = Arc::new(http);
        *self.tls.borrow_mut() = Some((xmpp, http.clone()));
        http
    }

    /// The URL the endpoint is reached at, without a trailing slash.
    pub fn public_url(&self) -> String {
        self.config.public_url(&self.domain, self.bound.get())
    }

    /// The WebSocket URL, for host-meta.
    fn websocket_url(&self) -> String {
        let url = self.public_url();
        let rest = url.trim_start_matches("https://");
        format!("wss://{rest}/xmpp-websocket")
    }
}

/// The TLS stream of a connection, noting when anything was last read or written.
pub(crate) struct Watched {
    inner: TlsStream<Async<TcpStream>>,
    /// Milliseconds since `since` at the last progress. Atomic only because hyper's upgrades
    /// ask for a `Send` connection; it never leaves this thread.
    last: Arc<AtomicU64>,
    since: Instant,
}

impl Watched {
    fn moved(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.moved();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.moved();
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

pub(crate) type HttpIo = FuturesIo<Watched>;

enum Ended {
    Served,
    Failed(hyper::Error),
    Closing,
    Idle,
}

/// One HTTPS connection: TLS, then requests until the client is done, the connection idles
/// or the server closes; a WebSocket upgrade then becomes a client stream.
async fn serve(server: Rc<Server>, accepted: Accepted) {
    let Accepted {
        stream,
        peer,
        id,
        rx,
    } = accepted;
    let Some(http) = Cx::new(&server).module::<Http>() else {
        return;
    };
    let config = &http.config;
    let header_timeout = Duration::from_secs(config.header_timeout_secs);
    let idle_timeout = Duration::from_secs(config.idle_timeout_secs);
    let acceptor = futures_rustls::TlsAcceptor::from(http.tls_config(&server));
    let timeout = async {
        Timer::after(header_timeout).await;
        Err(std::io::ErrorKind::TimedOut.into())
    };
    let tls = match acceptor.accept(stream).or(timeout).await {
        Ok(tls) => tls,
        Err(e) => {
            log::debug!("HTTPS: TLS handshake with {peer} failed: {e}");
            return;
        }
    };
    let last = Arc::new(AtomicU64::new(0));
    let since = Instant::now();
    let io = FuturesIo::new(Watched {
        inner: tls,
        last: last.clone(),
        since,
    });
    let upgrade: Rc<RefCell<Option<hyper::upgrade::OnUpgrade>>> = Rc::default();
    let service = {
        let server = server.clone();
        let upgrade = upgrade.clone();
        hyper::service::service_fn(move |req| {
            let server = server.clone();
            let upgrade = upgrade.clone();
            async move { Ok::<_, std::convert::Infallible>(route(&server, req, &upgrade).await) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(SmolTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(config.max_header_bytes)
        .serve_connection(io, service)
        .with_upgrades();
    let served = async {
        match conn.await {
            Ok(()) => Ended::Served,
            Err(e) => Ended::Failed(e),
        }
    };
    let closing = async {
        let _ = rx.recv().await;
        Ended::Closing
    };
    let idle = async {
        loop {
            let at = since + Duration::from_millis(last.load(Ordering::Relaxed)) + idle_timeout;
            if Instant::now() >= at {
                return Ended::Idle;
            }
            Timer::at(at).await;
        }
    };
    match served.or(closing).or(idle).await {
        Ended::Served => {}
        Ended::Failed(e) => log::debug!("HTTPS connection from {peer}: {e}"),
        Ended::Closing => return,
        Ended::Idle => {
            log::debug!("HTTPS connection from {peer}: idle, closing it");
            return;
        }
    }
    let pending = upgrade.borrow_mut().take();
    if let Some(on) = pending {
        match on.await {
            Ok(upgraded) => websocket::run(server, upgraded, peer, id, rx).await,
            Err(e) => log::debug!("WebSocket upgrade from {peer} failed: {e}"),
        }
    }
}

async fn route(
    server: &Rc<Server>,
    req: Request<Incoming>,
    upgrade: &RefCell<Option<hyper::upgrade::OnUpgrade>>,
) -> Response<Body> {
    let Some(http) = Cx::new(server).module::<Http>() else {
        return status(StatusCode::SERVICE_UNAVAILABLE);
    };
    let path = req.uri().path();
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    match path {
        "/.well-known/host-meta" | "/.well-known/host-meta.json" if read => {
            host_meta(http, path.ends_with(".json"))
        }
        "/.well-known/host-meta" | "/.well-known/host-meta.json" => not_allowed("GET, HEAD"),
        "/xmpp-websocket" if http.config.websocket => websocket::accept(server, req, upgrade),
        p if p.starts_with(upload::PREFIX) => upload::handle(server, req).await,
        _ => status(StatusCode::NOT_FOUND),
    }
}

/// XEP-0156 §3: the WebSocket endpoint, as XRD or JSON, readable by scripts of any origin.
fn host_meta(http: &Http, json: bool) -> Response<Body> {
    const WEBSOCKET: &str = "urn:xmpp:alt-connections:websocket";
    let url = http.websocket_url();
    let (kind, text) = if json {
        // The URL was checked to hold no character JSON would have to escape.
        let links = match http.config.websocket {
            true => format!("{{\"rel\":\"{WEBSOCKET}\",\"href\":\"{url}\"}}"),
            false => String::new(),
        };
        ("application/json", format!("{{\"links\":[{links}]}}"))
    } else {
        const XRD: &str = "http://docs.oasis-open.org/ns/xri/xrd-1.0";
        let mut xrd = Element::new("XRD", XRD);
        if http.config.websocket {
            xrd.push(
                Element::new("Link", XRD)
                    .with_attr("rel", WEBSOCKET)
                    .with_attr("href", url),
            );
        }
        let xml = format!("<?xml version='1.0' encoding='utf-8'?>\n{}", xrd.to_xml());
        ("application/xrd+xml", xml)
    };
    let mut r = Response::new(Body::bytes(text.into_bytes()));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    r
}

/// A response with no body but its status.
pub(crate) fn status(code: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::Empty);
    *r.status_mut() = code;
    r
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = status(StatusCode::METHOD_NOT_ALLOWED);
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    r
}

/// A response body: nothing, bytes in memory, or a file read from disk in chunks on the
/// blocking thread pool, so that a slow disk holds up only its own download.
pub enum Body {
    Empty,
    Bytes(Option<Bytes>),
    File(Box<FileBody>),
}

pub struct FileBody {
    file: smol::Unblock<std::fs::File>,
    left: u64,
    buf: Vec<u8>,
}

/// What a download reads from disk at a time.
const CHUNK: usize = 64 * 1024;

impl Body {
    pub fn bytes(b: impl Into<Bytes>) -> Body {
        Body::Bytes(Some(b.into()))
    }

    /// The first `len` bytes of `file`.
    pub fn file(file: std::fs::File, len: u64) -> Body {
        Body::File(Box::new(FileBody {
            file: smol::Unblock::with_capacity(CHUNK, file),
            left: len,
            buf: Vec::new(),
        }))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::File(f) => {
                if f.left == 0 {
                    return Poll::Ready(None);
                }
                let want = usize::try_from(f.left).map_or(CHUNK, |l| l.min(CHUNK));
                f.buf.resize(want, 0);
                match Pin::new(&mut f.file).poll_read(cx, &mut f.buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                    Poll::Ready(Ok(0)) => Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file is shorter than recorded",
                    )))),
                    Poll::Ready(Ok(n)) => {
                        f.left -= n as u64;
                        Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(&f.buf[..n])))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Bytes(b) => b.is_none(),
            Body::File(f) => f.left == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::File(f) => SizeHint::with_exact(f.left),
        }
    }
}
