//! XMPP over WebSocket (RFC 7395): the opening handshake (RFC 6455 §4.2) on `/xmpp-websocket`
//! with the `xmpp` subprotocol, then the upgraded connection handed to the client stream code
//! (`stream::c2s::websocket`), which serves it like any other client connection.
//!
//! Any origin may connect: nothing here rides on cookies or other ambient credentials, and a
//! web client served from elsewhere (Converse.js on another host) is the point. Messages are
//! bounded by the stanza limit, so a frame larger than any stanza is refused as it starts.

use super::{Body, HttpIo, status};
use crate::server::Server;
use crate::stream::c2s;
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

const PROTOCOL: &str = "xmpp";

/// Whether the comma-separated header `name` lists `token` (case-insensitively).
fn lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Answers an opening handshake: 101 and the upgrade noted for after the response, or the
/// reason there is none.
pub(super) fn accept(
    server: &Rc<Server>,
    mut req: Request<Incoming>,
    upgrade: &RefCell<Option<hyper::upgrade::OnUpgrade>>,
) -> Response<Body> {
    let h = req.headers();
    if req.method() != Method::GET
        || !lists(h, header::UPGRADE, "websocket")
        || !lists(h, header::CONNECTION, "upgrade")
    {
        let mut r = status(StatusCode::UPGRADE_REQUIRED);
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        let mut r = status(StatusCode::UPGRADE_REQUIRED);
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY) else {
        return status(StatusCode::BAD_REQUEST);
    };
    // RFC 7395 §3.1: without the subprotocol there is no XMPP over this WebSocket.
    if !lists(h, header::SEC_WEBSOCKET_PROTOCOL, PROTOCOL) {
        return status(StatusCode::BAD_REQUEST);
    }
    if server.closing.get() {
        return status(StatusCode::SERVICE_UNAVAILABLE);
    }
    let accept = derive_accept_key(key.as_bytes());
    *upgrade.borrow_mut() = Some(hyper::upgrade::on(&mut req));
    let mut r = status(StatusCode::SWITCHING_PROTOCOLS);
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(PROTOCOL),
    );
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// Serves an upgraded connection as a client stream.
pub(super) async fn run(
    server: Rc<Server>,
    upgraded: hyper::upgrade::Upgraded,
    peer: SocketAddr,
    id: u64,
    rx: crate::session::OutboundRx,
) {
    let Ok(parts) = upgraded.downcast::<HttpIo>() else {
        log::error!("a WebSocket upgrade on an unknown kind of connection");
        return;
    };
    let tls = parts.io.into_inner().inner;
    let max = server.config.limits.max_stanza_bytes;
    let config = WebSocketConfig::default()
        // An idle session keeps only small buffers; a stanza grows them as it needs.
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let ws = WebSocketStream::from_partially_read(
        tls,
        parts.read_buf.to_vec(),
        Role::Server,
        Some(config),
    )
    .await;
    c2s::websocket(server, c2s::Ws::new(ws), peer, id, rx).await;
}
