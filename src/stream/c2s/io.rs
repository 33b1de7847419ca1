//! The connection's byte stream: plain TCP until STARTTLS (or from the start on the direct TLS
//! port), then TLS, or a WebSocket (RFC 7395) over TLS; reading without a buffer of the
//! connection's own while it is idle; and the rate the client's input is read at.
//!
//! A WebSocket is a transport like the others: its text messages are read as one byte stream
//! (the framed reader makes stream events of it), and what is written goes out one message per
//! top-level element, which is why [`Out`] keeps where each element ends.

use super::*;
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;

pub(super) type Tls = TlsStream<Async<TcpStream>>;

pub(super) enum Io {
    Plain(Async<TcpStream>),
    Tls(Box<Tls>),
    WebSocket(Box<Ws>),
    Gone,
}

/// A WebSocket connection, with what is left of the last text message read.
pub struct Ws {
    stream: WebSocketStream<Tls>,
    unread: Vec<u8>,
    at: usize,
}

impl Ws {
    pub fn new(stream: WebSocketStream<Tls>) -> Ws {
        Ws {
            stream,
            unread: Vec::new(),
            at: 0,
        }
    }
}

/// A WebSocket message larger than the stanza limit.
#[derive(Debug)]
pub(super) struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebSocket message too large")
    }
}

impl std::error::Error for TooLarge {}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::WebSocket(ws) => ws.poll_read(cx, buf),
            Io::Gone => Poll::Ready(Ok(0)),
        }
    }
}

impl Ws {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        use async_tungstenite::tungstenite::Error as E;
        use smol::stream::Stream;
        while self.at == self.unread.len() {
            let message = match Pin::new(&mut self.stream).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(0)),
                Poll::Ready(Some(m)) => m,
            };
            match message {
                Ok(Message::Text(t)) => {
                    self.unread = Vec::from(t.as_str());
                    self.at = 0;
                }
                // RFC 7395 §3.2: XMPP goes in text messages only.
                Ok(Message::Binary(_)) => {
                    return Poll::Ready(Err(std::io::Error::other("a binary WebSocket message")));
                }
                Ok(Message::Close(_)) => return Poll::Ready(Ok(0)),
                // Pings are answered by the WebSocket layer itself.
                Ok(_) => {}
                Err(E::Capacity(_)) => return Poll::Ready(Err(std::io::Error::other(TooLarge))),
                Err(E::Io(e)) => return Poll::Ready(Err(e)),
                Err(e) => return Poll::Ready(Err(std::io::Error::other(e))),
            }
        }
        let n = buf.len().min(self.unread.len() - self.at);
        buf[..n].copy_from_slice(&self.unread[self.at..self.at + n]);
        self.at += n;
        if self.at == self.unread.len() {
            // An idle connection keeps no message buffer.
            self.unread = Vec::new();
            self.at = 0;
        }
        Poll::Ready(Ok(n))
    }
}

/// What waits to be written to the client: the bytes of the stream, and where each top-level
/// element ends, for a transport that sends each as a message of its own.
#[derive(Default)]
pub(super) struct Out {
    pub(super) bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Out {
    pub(super) fn len(&self) -> usize {
        self.bytes.len()
    }
    pub(super) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
    /// Forgets everything, buffers included: idle sessions keep no output buffer.
    pub(super) fn release(&mut self) {
        *self = Out::default();
    }
}

impl Io {
    /// Whether the transport frames the stream (RFC 7395) rather than carrying its bytes.
    pub(super) fn framed(&self) -> bool {
        matches!(self, Io::WebSocket(_))
    }

    /// The TLS connection under the stream, once there is one.
    pub(super) fn tls(&self) -> Option<&rustls::ServerConnection> {
        match self {
            Io::Tls(s) => Some(s.get_ref().1),
            Io::WebSocket(ws) => Some(ws.stream.get_ref().get_ref().1),
            Io::Plain(_) | Io::Gone => None,
        }
    }

    /// Writes everything in `out`.
    pub(super) async fn write_out(&mut self, out: &Out) -> std::io::Result<()> {
        match self {
            Io::Plain(s) => {
                s.write_all(&out.bytes).await?;
                s.flush().await
            }
            Io::Tls(s) => {
                s.write_all(&out.bytes).await?;
                s.flush().await
            }
            Io::WebSocket(ws) => {
                let mut start = 0;
                for &end in &out.ends {
                    let text = std::str::from_utf8(&out.bytes[start..end])
                        .map_err(std::io::Error::other)?;
                    ws.stream
                        .send(Message::text(text))
                        .await
                        .map_err(std::io::Error::other)?;
                    start = end;
                }
                Ok(())
            }
            Io::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    /// Ends the connection: TLS close_notify, or the WebSocket closing handshake.
    pub(super) async fn shutdown(&mut self) {
        match self {
            Io::Plain(s) => {
                let _ = s.close().await;
            }
            Io::Tls(s) => {
                let _ = s.close().await;
            }
            Io::WebSocket(ws) => {
                let _ = ws.stream.close(None).await;
            }
            Io::Gone => {}
        }
    }

    /// Once our side is closed: reads and drops what the peer still sends, until it closes
    /// too or `until`. A socket closed with unread input answers it with a reset, and a reset
    /// can destroy what was written last (a stream error) before the peer read it. The bytes
    /// are taken from the TCP socket as they are, not decrypted, and the task yields after
    /// each read, so a peer that keeps sending costs little and holds nobody up.
    pub(super) async fn linger(&mut self, until: Instant) {
        let tcp = match self {
            Io::Plain(s) => s,
            Io::Tls(s) => s.get_mut().0,
            Io::WebSocket(ws) => ws.stream.get_mut().get_mut().0,
            Io::Gone => return,
        };
        // On the heap, and only now: the session's task holds nothing for it the rest of
        // the time.
        let mut sink = vec![0u8; 16 * 1024];
        loop {
            let read = async {
                use smol::io::AsyncReadExt;
                matches!(tcp.read(&mut sink).await, Ok(n) if n > 0)
            };
            let timeout = async {
                Timer::at(until).await;
                false
            };
            if !read.or(timeout).await {
                return;
            }
            smol::future::yield_now().await;
        }
    }
}

impl Conn {
    /// Writes a top-level element into the output, as the transport frames it.
    pub(super) fn put(&mut self, el: &Element) {
        if self.io.framed() {
            writer::write_framed(el, &mut self.out.bytes);
            self.out.ends.push(self.out.bytes.len());
        } else {
            writer::write_element(el, ns::CLIENT, &mut self.out.bytes);
        }
    }

    /// Writes the end of our stream.
    pub(super) fn put_close(&mut self) {
        let close = match self.io.framed() {
            true => writer::FRAMED_CLOSE,
            false => writer::STREAM_CLOSE,
        };
        self.out.bytes.extend_from_slice(close);
        self.out.ends.push(self.out.bytes.len());
    }

    /// Writes our stream header (or `<open/>`).
    pub(super) fn put_header(&mut self, from: &str, to: Option<&str>, id: &str) {
        if self.io.framed() {
            self.out
                .bytes
                .extend_from_slice(&writer::framed_open(from, to, id));
            self.out.ends.push(self.out.bytes.len());
        } else {
            self.out
                .bytes
                .extend_from_slice(&writer::stream_header(from, to, id));
        }
    }
}

impl Conn {
    pub(super) async fn readable(&self) -> std::io::Result<()> {
        match &self.io {
            Io::Plain(s) => s.readable().await,
            Io::Tls(s) => s.get_ref().0.readable().await,
            Io::WebSocket(ws) => ws.stream.get_ref().get_ref().0.readable().await,
            Io::Gone => std::future::pending().await,
        }
    }

    /// Reads everything the socket (and TLS) has ready into the stream reader, through one
    /// buffer shared by all connections, so that an idle connection holds no read buffer.
    /// Returns false once the peer has closed the connection. Stops after a bounded amount so
    /// that a flooding client cannot pile up events; `more_ready` then says to come back
    /// without waiting for the socket (TLS may hold decrypted bytes the socket no longer shows).
    pub(super) fn read_ready(
        &mut self,
        events: &mut Vec<StreamEvent>,
    ) -> Result<(bool, usize), StreamError> {
        const MAX_PER_WAKE: usize = 65536;
        let mut total = 0;
        self.more_ready = false;
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 16384]);
        }
        // Polled without a real waker: `readable()` registers the task's waker before the
        // next wait, so nothing is missed.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            let step = SCRATCH.with_borrow_mut(|buf| {
                match Pin::new(&mut self.io).poll_read(&mut cx, buf) {
                    Poll::Ready(Err(e)) if e.get_ref().is_some_and(|e| e.is::<TooLarge>()) => {
                        Some(Err(StreamError::with_text(
                            C::PolicyViolation,
                            "stanza too large",
                        )))
                    }
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Some(Ok(false)),
                    Poll::Ready(Ok(n)) => {
                        total += n;
                        Some(self.reader.feed(&buf[..n], events).map(|()| true))
                    }
                    Poll::Pending => None,
                }
            });
            match step {
                Some(Ok(true)) if total < MAX_PER_WAKE => continue,
                Some(Ok(true)) => {
                    self.more_ready = true;
                    return Ok((true, total));
                }
                Some(result) => return result.map(|open| (open, total)),
                None => return Ok((true, total)),
            }
        }
    }
}

/// What the client may still send: token buckets of bytes and of stanzas (top-level elements),
/// refilled at the rates of `[limits]` up to `burst_secs` of them. As with Prosody's
/// mod_limits, a client over its rate is not refused or disconnected: the server stops
/// reading from it until the buckets have refilled, and TCP slows the client down.
#[derive(Clone, Copy, Debug)]
pub(super) struct Credit {
    bytes: f32,
    stanzas: f32,
}

impl Credit {
    /// Full buckets at the rates before login.
    pub(super) fn new(limits: &crate::config::LimitsConfig) -> Credit {
        let burst = limits.burst_secs as f32;
        Credit {
            bytes: limits.login_bytes_per_sec as f32 * burst,
            stanzas: limits.login_stanzas_per_sec as f32 * burst,
        }
    }
}

impl Conn {
    /// (bytes, stanzas) per second this client may send now.
    fn rates(&self) -> (f32, f32) {
        let l = &self.server.config.limits;
        match self.phase {
            Phase::Bound(_) => (l.bytes_per_sec as f32, l.stanzas_per_sec as f32),
            _ => (l.login_bytes_per_sec as f32, l.login_stanzas_per_sec as f32),
        }
    }

    /// Refills the buckets for the time since the last read (`last_heard`).
    pub(super) fn refill(&mut self, now: Instant) {
        let (bytes, stanzas) = self.rates();
        let burst = self.server.config.limits.burst_secs as f32;
        let dt = now.saturating_duration_since(self.last_heard).as_secs_f32();
        self.credit.bytes = (self.credit.bytes + dt * bytes).min(bytes * burst);
        self.credit.stanzas = (self.credit.stanzas + dt * stanzas).min(stanzas * burst);
    }

    /// Takes what was just read out of the buckets.
    pub(super) fn charge(&mut self, bytes: usize, stanzas: usize) {
        self.credit.bytes -= bytes as f32;
        self.credit.stanzas -= stanzas as f32;
        if let Some(at) = self.throttled_until() {
            log::debug!(
                "connection {} from {}: over its rate; not read for {} ms",
                self.id,
                self.peer,
                at.saturating_duration_since(Instant::now()).as_millis()
            );
        }
    }

    /// When the client may be read from again, if it is over its rate.
    pub(super) fn throttled_until(&self) -> Option<Instant> {
        let (bytes, stanzas) = self.rates();
        let wait = (-self.credit.bytes / bytes).max(-self.credit.stanzas / stanzas);
        (wait > 0.0).then(|| self.last_heard + Duration::from_secs_f32(wait))
    }
}
