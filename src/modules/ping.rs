//! XEP-0199 XMPP Ping, v2.0.1: answers pings to the server and to accounts. Pinging silent
//! clients is c2s's idle timer.

use super::{Cx, IqRequest, IqRoute, Module};
use crate::stanza::StanzaError;
use crate::xml::{Element, ns};

pub struct Ping;

impl Module for Ping {
    fn name(&self) -> &'static str {
        "ping"
    }
    fn features(&self) -> &'static [&'static str] {
        &[ns::PING]
    }
    fn iq_routes(&self) -> &'static [IqRoute] {
        &[IqRoute {
            ns: ns::PING,
            server: true,
            account: true,
            others: true,
        }]
    }
    fn handle_iq(&self, _cx: &mut Cx, iq: &IqRequest) -> Result<Option<Element>, StanzaError> {
        if iq.set {
            return Err(StanzaError::bad_request("ping is a get"));
        }
        Ok(None)
    }
}
