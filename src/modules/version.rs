//! XEP-0092 Software Version, v1.1: name and version of the server; the OS is not disclosed.

use super::{Cx, DiscoInfo, Entry, IqRequest, IqRoute, Module, Target, To};
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

pub const ENTRY: Entry = Entry {
    tables: &[],
    new: |config| {
        config
            .modules
            .version
            .enabled
            .then(|| Box::new(Version) as Box<dyn Module>)
    },
};

pub struct Version;

impl Module for Version {
    fn name(&self) -> &'static str {
        "version"
    }
    fn disco(&self, _cx: &Cx, target: &Target, info: &mut DiscoInfo) {
        if *target == Target::Server {
            info.features.push(ns::VERSION);
        }
    }
    fn iq_routes(&self) -> &'static [IqRoute] {
        const { &[IqRoute::new(ns::VERSION, To::SERVER)] }
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
