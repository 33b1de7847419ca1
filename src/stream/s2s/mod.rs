//! Server-to-server streams (RFC 6120 with the `jabber:server` namespace): the router's links
//! to other servers (`links`), the connections that carry them (`outgoing`), connections other
//! servers make (`incoming`), where servers are (`resolve`), certificates (`tls`),
//! dialback keys (XEP-0220 with XEP-0185's keys), and what waits for other servers over a
//! crash or a restart (`parked`).
//!
//! Which domains are talked to at all is `federation.enabled`, or `federation.push_services`
//! alone when it is off (`FederationConfig::allows`): the router sends nowhere else, and
//! connections from elsewhere cannot authenticate.

pub mod incoming;
mod io;
mod links;
pub mod outgoing;
pub mod parked;
pub mod resolve;
pub mod tls;

pub use links::{Delivered, Links, NewLink, Out, Pair, Queued};

use crate::config::{Config, FederationConfig};
use crate::listener::Listener;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What the server keeps for server-to-server streams besides the router's links.
pub struct State {
    tls: RefCell<Option<Rc<tls::Tls>>>,
    /// XEP-0185: dialback keys are derived from this, so none needs remembering; a new one at
    /// each start only fails the verifications of streams opened before.
    secret: [u8; 32],
}

impl Default for State {
    fn default() -> State {
        State {
            tls: RefCell::default(),
            secret: crate::stream::sasl::random_bytes::<32>(),
        }
    }
}

impl State {
    pub fn tls(&self) -> Option<Rc<tls::Tls>> {
        self.tls.borrow().clone()
    }

    pub fn set_tls(&self, tls: tls::Tls) {
        *self.tls.borrow_mut() = Some(Rc::new(tls));
    }

    /// XEP-0185 §3: the dialback key for the stream `id` that the receiving server opened to
    /// the originating one.
    pub fn key(&self, receiving: &str, originating: &str, id: &str) -> String {
        let secret = hex(&Sha256::digest(self.secret));
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(format!("{receiving} {originating} {id}").as_bytes());
        hex(&mac.finalize().into_bytes())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The listeners for other servers' connections, when the server talks to any.
pub fn listeners(config: &Config) -> Vec<Listener> {
    let f = &config.federation;
    if !f.listens() {
        return Vec::new();
    }
    let parse = |addrs: &[String]| addrs.iter().filter_map(|a| a.parse().ok()).collect();
    let listener = |name, description, addrs, direct_tls: bool| Listener {
        name,
        description,
        addrs,
        max_connections: f.max_connections,
        max_connections_per_ip: f.max_connections_per_ip,
        handler: Rc::new(move |server, accepted| {
            Box::pin(incoming::run(server, accepted, direct_tls))
        }),
    };
    vec![
        listener("s2s", "servers, STARTTLS", parse(&f.listen), false),
        listener("s2s_tls", "servers, direct TLS", parse(&f.listen_tls), true),
    ]
}

/// What an incoming connection may still send: token buckets of bytes and stanzas refilled
/// at `federation.bytes_per_sec` and `stanzas_per_sec`, up to `limits.burst_secs` of them.
/// Over its rate, the connection is not read until it is back within it.
pub struct Throttle {
    rates: (f32, f32),
    burst: f32,
    bytes: f32,
    stanzas: f32,
    at: Instant,
}

impl Throttle {
    pub fn new(f: &FederationConfig, burst_secs: u32) -> Throttle {
        let rates = (f.bytes_per_sec as f32, f.stanzas_per_sec as f32);
        let burst = burst_secs as f32;
        Throttle {
            rates,
            burst,
            bytes: rates.0 * burst,
            stanzas: rates.1 * burst,
            at: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let dt = now.saturating_duration_since(self.at).as_secs_f32();
        self.at = now;
        self.bytes = (self.bytes + dt * self.rates.0).min(self.rates.0 * self.burst);
        self.stanzas = (self.stanzas + dt * self.rates.1).min(self.rates.1 * self.burst);
    }

    pub fn charge(&mut self, bytes: usize, stanzas: usize) {
        self.refill();
        self.bytes -= bytes as f32;
        self.stanzas -= stanzas as f32;
    }

    /// How long to wait before reading again, if over the rate.
    pub fn wait(&mut self) -> Option<Duration> {
        self.refill();
        let wait = (-self.bytes / self.rates.0).max(-self.stanzas / self.rates.1);
        (wait > 0.0).then(|| Duration::from_secs_f32(wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialback_keys_are_bound_to_both_domains_and_the_stream() {
        let s = State::default();
        let k = s.key("b.example", "a.example", "id1");
        assert_eq!(k.len(), 64);
        assert_eq!(k, s.key("b.example", "a.example", "id1"));
        assert_ne!(k, s.key("a.example", "b.example", "id1"));
        assert_ne!(k, s.key("b.example", "a.example", "id2"));
        assert_ne!(k, State::default().key("b.example", "a.example", "id1"));
    }

    #[test]
    fn a_connection_over_its_rate_waits() {
        let f = FederationConfig {
            stanzas_per_sec: 10,
            ..Default::default()
        };
        let mut t = Throttle::new(&f, 1);
        assert_eq!(t.wait(), None);
        t.charge(100, 10);
        assert_eq!(t.wait(), None, "the burst");
        t.charge(100, 10);
        let w = t.wait().unwrap();
        assert!(
            w > Duration::from_millis(500) && w <= Duration::from_secs(1),
            "{w:?}"
        );
    }
}
