//! XEP-0030 Service Discovery, v2.5rc3: the server's identity and the features of the running
//! modules; accounts answer with their registered-account identity. No items are published.

use super::{Cx, IqRequest, IqRoute, Module};
use crate::stanza::{Condition, StanzaError};
use crate::xml::{Element, ns};

pub struct Disco;

impl Module for Disco {
    fn name(&self) -> &'static str {
        "disco"
    }
    fn features(&self) -> &'static [&'static str] {
        &[ns::DISCO_INFO, ns::DISCO_ITEMS]
    }
    fn iq_routes(&self) -> &'static [IqRoute] {
        &[
            IqRoute {
                ns: ns::DISCO_INFO,
                server: true,
                account: true,
                others: true,
            },
            IqRoute {
                ns: ns::DISCO_ITEMS,
                server: true,
                account: true,
                others: true,
            },
        ]
    }
    fn handle_iq(&self, cx: &mut Cx, iq: &IqRequest) -> Result<Option<Element>, StanzaError> {
        if iq.set {
            return Err(StanzaError::new(Condition::NotAllowed));
        }
        if iq.payload.attr("node").is_some() {
            return Err(StanzaError::new(Condition::ItemNotFound));
        }
        if iq.payload.ns == ns::DISCO_ITEMS {
            return Ok(Some(Element::new("query", ns::DISCO_ITEMS)));
        }
        let mut q = Element::new("query", ns::DISCO_INFO);
        if iq.to.local().is_none() {
            q.push(
                Element::new("identity", ns::DISCO_INFO)
                    .with_attr("category", "server")
                    .with_attr("type", "im")
                    .with_attr("name", "hearth"),
            );
            let mut features: Vec<&str> = cx
                .server
                .modules
                .iter()
                .flat_map(|m| m.features().iter().copied())
                .collect();
            features.sort_unstable();
            features.dedup();
            for f in features {
                q.push(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
            }
        } else {
            q.push(
                Element::new("identity", ns::DISCO_INFO)
                    .with_attr("category", "account")
                    .with_attr("type", "registered"),
            );
            q.push(Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_INFO));
        }
        Ok(Some(q))
    }
}
