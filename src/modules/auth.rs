//! SASL for password accounts (RFC 6120 §6): SCRAM-SHA-256 and SCRAM-SHA-1 (RFC 5802, RFC
//! 7677), their -PLUS variants with tls-exporter channel binding (RFC 9266), and PLAIN (RFC
//! 4616). The mechanisms themselves are in `stream/sasl.rs`; this module offers them to client
//! streams and looks up the stored credentials. c2s only offers SASL over TLS.

use super::{Cx, Entry, Mechanism, Module};
use crate::stream::sasl::{self, Sasl, Step};

pub const ENTRY: Entry = Entry {
    tables: &[],
    new: |config| {
        Some(Box::new(Auth {
            domain: config.server.domain.clone(),
        }))
    },
};

pub struct Auth {
    domain: String,
}

impl Mechanism for Sasl {
    fn step(&mut self, cx: &Cx, input: &[u8]) -> Step {
        let store = cx.store();
        Sasl::step(self, input, &|u| store.credentials(u).ok().flatten())
    }
}

impl Module for Auth {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn sasl_mechanisms(&self, channel_binding: bool) -> &'static [&'static str] {
        sasl::mechanisms(channel_binding)
    }

    fn sasl_start(&self, mechanism: &str, cb: Option<Vec<u8>>) -> Option<Box<dyn Mechanism>> {
        Sasl::start(mechanism, cb, &self.domain).map(|s| Box::new(s) as Box<dyn Mechanism>)
    }
}
