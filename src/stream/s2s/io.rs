//! One server-to-server connection's bytes: TCP, then TLS as the accepting or the connecting
//! side, read through the same stream reader (and its limits) as client streams, written with
//! the same writer. Stanzas of the `jabber:server` namespace are read as `jabber:client` ones,
//! which is what the rest of the server handles, and written back out unchanged: the writer
//! leaves out the namespace the stream declares as its default (`jabber:server` here).

use crate::stanza::{StreamCondition as C, StreamError};
use crate::xml::reader::{Limits, StreamEvent, StreamReader};
use crate::xml::{Element, Node, ns, writer};
use rustls::pki_types::CertificateDer;
use smol::future::FutureExt;
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::{Async, Timer};
use std::net::TcpStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub enum Io {
    Plain(Async<TcpStream>),
    Accepted(Box<futures_rustls::server::TlsStream<Async<TcpStream>>>),
    Connected(Box<futures_rustls::client::TlsStream<Async<TcpStream>>>),
    Gone,
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Accepted(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Connected(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Gone => Poll::Ready(Ok(0)),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Accepted(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Connected(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Gone => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Accepted(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Connected(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Gone => Poll::Ready(Ok(())),
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_close(cx),
            Io::Accepted(s) => Pin::new(s.as_mut()).poll_close(cx),
            Io::Connected(s) => Pin::new(s.as_mut()).poll_close(cx),
            Io::Gone => Poll::Ready(Ok(())),
        }
    }
}

/// A connection's stream: its socket, its reader and what waits to be written.
pub struct Stream {
    pub io: Io,
    pub reader: StreamReader,
    out: Vec<u8>,
    write_timeout: Duration,
}

impl Stream {
    pub fn new(tcp: Async<TcpStream>, limits: Limits, write_timeout: Duration) -> Stream {
        Stream {
            io: Io::Plain(tcp),
            reader: StreamReader::new(limits),
            out: Vec::new(),
            write_timeout,
        }
    }

    pub fn secure(&self) -> bool {
        matches!(self.io, Io::Accepted(_) | Io::Connected(_))
    }

    /// The certificate chain the peer showed, end entity first.
    pub fn peer_certificates(&self) -> Vec<CertificateDer<'static>> {
        let certs = match &self.io {
            Io::Accepted(s) => s.get_ref().1.peer_certificates(),
            Io::Connected(s) => s.get_ref().1.peer_certificates(),
            _ => None,
        };
        certs.map(<[_]>::to_vec).unwrap_or_default()
    }

    /// TLS as the accepting side, within `deadline`.
    pub async fn accept_tls(
        &mut self,
        config: Arc<rustls::ServerConfig>,
        deadline: Instant,
    ) -> Result<(), String> {
        let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::Gone) else {
            return Err("TLS is on already".into());
        };
        let handshake = futures_rustls::TlsAcceptor::from(config).accept(tcp);
        let tls = within(handshake, deadline)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        self.io = Io::Accepted(Box::new(tls));
        Ok(())
    }

    /// TLS as the connecting side to `domain`, within `deadline`.
    pub async fn connect_tls(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        domain: &str,
        deadline: Instant,
    ) -> Result<(), String> {
        let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::Gone) else {
            return Err("TLS is on already".into());
        };
        let name = rustls::pki_types::ServerName::try_from(domain.to_owned())
            .map_err(|e| format!("{domain} is no TLS server name: {e}"))?;
        let handshake = futures_rustls::TlsConnector::from(config).connect(name, tcp);
        let tls = within(handshake, deadline)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        self.io = Io::Connected(Box::new(tls));
        Ok(())
    }

    /// Waits for input and reads what is there (one buffer's worth): the events, and the
    /// bytes read. `Ok(None)` once the peer closed the connection.
    pub async fn read(
        &mut self,
        events: &mut Vec<StreamEvent>,
    ) -> Result<Option<usize>, StreamError> {
        let mut buf = [0u8; 8192];
        let n = match self.io.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => n,
        };
        let start = events.len();
        self.reader.feed(&buf[..n], events)?;
        for ev in &mut events[start..] {
            if let StreamEvent::Stanza(el) = ev {
                to_client_namespace(el);
            }
        }
        Ok(Some(n))
    }

    pub fn write(&mut self, el: &Element) {
        writer::write_element(el, ns::CLIENT, &mut self.out);
    }

    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    pub fn header(&mut self, from: &str, to: Option<&str>, id: Option<&str>) {
        let h = writer::server_stream_header(from, to, id);
        self.out.extend_from_slice(&h);
    }

    /// Writes what waits; false if the peer does not take it within the write timeout.
    pub async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let out = std::mem::take(&mut self.out);
        let deadline = Instant::now() + self.write_timeout;
        let io = &mut self.io;
        let write = async { io.write_all(&out).await.and(io.flush().await) };
        match within(write, deadline).await {
            Ok(()) => true,
            Err(_) => {
                self.io = Io::Gone;
                false
            }
        }
    }

    /// Writes what waits and closes the connection, if the peer still takes what is written.
    pub async fn close(&mut self) {
        if self.flush().await {
            let deadline = Instant::now() + self.write_timeout;
            let io = &mut self.io;
            let _ = within(async { io.close().await }, deadline).await;
        }
        self.io = Io::Gone;
    }

    /// A stream error, then the end of the stream.
    pub async fn fail(&mut self, e: &StreamError) {
        self.write(&e.to_element());
        self.out.extend_from_slice(writer::STREAM_CLOSE);
        self.close().await;
    }
}

/// `f`, unless `deadline` comes first.
pub async fn within<T>(
    f: impl std::future::Future<Output = std::io::Result<T>>,
    deadline: Instant,
) -> std::io::Result<T> {
    let timeout = async {
        Timer::at(deadline).await;
        Err(std::io::ErrorKind::TimedOut.into())
    };
    f.or(timeout).await
}

/// `jabber:server` elements as the `jabber:client` ones the server handles everywhere.
fn to_client_namespace(el: &mut Element) {
    if el.ns == ns::SERVER {
        el.ns = ns::CLIENT.to_owned();
    }
    for c in &mut el.children {
        if let Node::Element(e) = c {
            to_client_namespace(e);
        }
    }
}

/// The element's namespace and name, for stream errors about what a peer sent.
pub fn unexpected(el: &Element) -> StreamError {
    StreamError::with_text(
        C::UnsupportedStanzaType,
        format!("unexpected {} in {}", el.name, el.ns),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::reader::parse_one;

    #[test]
    fn server_stanzas_read_and_write_as_client_ones() {
        let mut events = Vec::new();
        let mut r = StreamReader::new(Limits::default());
        r.feed(
            b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
              xmlns:db='jabber:server:dialback' to='a.example' version='1.0'>\
              <message to='x@a.example' from='y@b.example'><body>hi</body>\
              <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'><body>in</body></message></forwarded>\
              </message><db:result to='a.example' from='b.example'>k</db:result>",
            &mut events,
        )
        .unwrap();
        let StreamEvent::Stanza(mut msg) = events.remove(1) else {
            panic!("{events:?}")
        };
        to_client_namespace(&mut msg);
        let expected = parse_one(
            "<message to='x@a.example' from='y@b.example'><body>hi</body>\
             <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'><body>in</body></message></forwarded></message>",
        )
        .unwrap();
        assert_eq!(msg, expected);
        let StreamEvent::Stanza(db) = &events[1] else {
            panic!()
        };
        assert!(db.is("result", ns::DIALBACK));
        // Written into a jabber:server stream, the message carries no namespace of its own; the
        // forwarded one keeps jabber:client.
        let mut out = Vec::new();
        writer::write_element(&msg, ns::CLIENT, &mut out);
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("<message to="), "{out}");
        assert!(
            out.contains("<message xmlns='jabber:client'><body>in"),
            "{out}"
        );
    }
}
