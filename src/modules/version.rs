//! XEP-0092 Software Version, v1.1: name and version of the server; the OS is not disclosed.

use super::{Cx, IqRequest, IqRoute, Module};
use crate::stanza::StanzaError;
use crate::xml::{Element, ns};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Answer version queries at all.
    pub enabled: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config { enabled: true }
    }
}

pub struct Version;

impl Module for Version {
    fn name(&self) -> &'static str {
        "version"
    }
    fn features(&self) -> &'static [&'static str] {
        &[ns::VERSION]
    }
    fn iq_routes(&self) -> &'static [IqRoute] {
        &[IqRoute {
            ns: ns::VERSION,
            server: true,
            account: false,
            others: false,
        }]
    }
    fn handle_iq(&self, _cx: &mut Cx, iq: &IqRequest) -> Result<Option<Element>, StanzaError> {
        if iq.set {
            return Err(StanzaError::bad_request("version is a get"));
        }
        Ok(Some(
            Element::new("query", ns::VERSION)
                .with_child(Element::new("name", ns::VERSION).with_text("hearth"))
                .with_child(
                    Element::new("version", ns::VERSION).with_text(env!("CARGO_PKG_VERSION")),
                ),
        ))
    }
}
