//! XEP-0202 Entity Time, v2.0: the server's clock, in UTC.

use super::{Cx, DiscoInfo, Entry, IqRequest, IqRoute, Module, Target, To};
use crate::stanza::StanzaError;
use crate::xml::{Element, ns};

pub const ENTRY: Entry = Entry {
    tables: &[],
    new: |_| Some(Box::new(Time)),
};

pub struct Time;

/// An XEP-0082 DateTime in UTC with millisecond precision.
pub fn stamp(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl Module for Time {
    fn name(&self) -> &'static str {
        "time"
    }
    fn disco(&self, _cx: &Cx, target: &Target, info: &mut DiscoInfo) {
        if *target == Target::Server {
            info.features.push(ns::TIME);
        }
    }
    fn iq_routes(&self) -> &'static [IqRoute] {
        const { &[IqRoute::new(ns::TIME, To::SERVER)] }
    }
    fn handle_iq(&self, cx: &mut Cx, iq: &IqRequest) -> Result<Option<Element>, StanzaError> {
        if iq.set {
            return Err(StanzaError::bad_request("time is a get"));
        }
        Ok(Some(
            Element::new("time", ns::TIME)
                .with_child(Element::new("tzo", ns::TIME).with_text("+00:00"))
                .with_child(Element::new("utc", ns::TIME).with_text(stamp(cx.now()))),
        ))
    }
}
