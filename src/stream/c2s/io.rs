//! The connection's byte stream: plain TCP until STARTTLS (or from the start on the direct TLS
//! port), then TLS; reading without a buffer of the connection's own while it is idle; and the
//! rate the client's input is read at.

use super::*;

pub(super) enum Io {
    Plain(Async<TcpStream>),
    Tls(Box<TlsStream<Async<TcpStream>>>),
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
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
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
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Gone => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Gone => Poll::Ready(Ok(())),
        }
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_close(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
            Io::Gone => Poll::Ready(Ok(())),
        }
    }
}

impl Conn {
    pub(super) async fn readable(&self) -> std::io::Result<()> {
        match &self.io {
            Io::Plain(s) => s.readable().await,
            Io::Tls(s) => s.get_ref().0.readable().await,
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
