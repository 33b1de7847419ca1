//! The connection's byte stream: plain TCP until STARTTLS (or from the start on the direct TLS
//! port), then TLS; and reading without a buffer of the connection's own while it is idle.

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
    ) -> Result<bool, StreamError> {
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
                    return Ok(true);
                }
                Some(result) => return result,
                None => return Ok(true),
            }
        }
    }
}
