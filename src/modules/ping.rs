//! XEP-0199 XMPP Ping, v2.0.1: answers pings to the server and to accounts. Pinging silent
//! clients is c2s's idle timer.

use super::{Cx, DiscoInfo, Entry, IqRequest, IqRoute, Module, Target, To};
use crate::stanza::StanzaError;
use crate::xml::{Element, ns};

pub const ENTRY: Entry = Entry {
    tables: &[],
    new: |_| Some(Box::new(Ping)),
};

pub struct Ping;

impl Module for Ping {
    fn name(&self) -> &'static str {
        "ping"
    }
    fn disco(&self, _cx: &Cx, target: &Target, info: &mut DiscoInfo) {
        if *target == Target::Server {
            info.features.push(ns::PING);
        }
    }
    fn iq_routes(&self) -> &'static [IqRoute] {
        const { &[IqRoute::new(ns::PING, To::SERVER.and(To::ACCOUNTS))] }
    }
    fn handle_iq(&self, _cx: &mut Cx, iq: &IqRequest) -> Result<Option<Element>, StanzaError> {
        if iq.set {
            return Err(StanzaError::bad_request("ping is a get"));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::TestRouter;
    use crate::stanza::Condition;

    #[test]
    fn a_get_is_answered_and_a_set_refused() {
        let t = TestRouter::new();
        let a = t.bind("alice", "phone");
        let out = t.client(
            &a,
            "<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
        out.assert_sent(&a, "<iq type='result' id='p1' from='localhost'/>");
        let out = t.client(
            &a,
            "<iq type='set' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
        out.assert_error(&a, "p2", Condition::BadRequest);
    }
}
