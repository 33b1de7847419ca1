//! SASL for password accounts (RFC 6120 §6): SCRAM-SHA-256 and SCRAM-SHA-1 (RFC 5802, RFC
//! 7677), their -PLUS variants with tls-exporter (RFC 9266) or tls-server-end-point (RFC 5929)
//! channel binding, and PLAIN (RFC 4616). The mechanisms themselves are in `stream/sasl.rs`;
//! this module offers them to client streams and looks up the stored credentials. c2s only
//! offers SASL over TLS.

use super::{Cx, Entry, Mechanism, Module, Profile, SaslOffer, SaslStart};
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

    fn sasl_mechanisms(&self, offer: &SaslOffer) -> &'static [&'static str] {
        match offer.profile {
            Profile::Sasl | Profile::Sasl2 => sasl::mechanisms(offer.exporter || offer.endpoint),
            Profile::Fast => &[],
        }
    }

    fn sasl_start(&self, start: &SaslStart) -> Option<Box<dyn Mechanism>> {
        if start.profile == Profile::Fast {
            return None;
        }
        let cb = start.bindings.clone();
        Sasl::start(start.mechanism, cb, &self.domain).map(|s| Box::new(s) as Box<dyn Mechanism>)
    }
}
