//! RFC 6120 §4.9 stream errors and §8.3 stanza errors, as closed enums, and error replies.

use crate::xml::{Element, ns};

macro_rules! conditions {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        $(#[$m])*
        // The whole closed set of the RFC's conditions, whether or not hearth sends each.
        #[allow(dead_code, clippy::enum_variant_names)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($variant),* }
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),* }
            }
            #[allow(dead_code)]
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some(Self::$variant),)* _ => None }
            }
        }
    };
}

conditions!(
    /// RFC 6120 §4.9.3 stream error conditions.
    StreamCondition {
        BadFormat = "bad-format",
        BadNamespacePrefix = "bad-namespace-prefix",
        Conflict = "conflict",
        ConnectionTimeout = "connection-timeout",
        HostUnknown = "host-unknown",
        ImproperAddressing = "improper-addressing",
        InternalServerError = "internal-server-error",
        InvalidFrom = "invalid-from",
        InvalidNamespace = "invalid-namespace",
        InvalidXml = "invalid-xml",
        NotAuthorized = "not-authorized",
        NotWellFormed = "not-well-formed",
        PolicyViolation = "policy-violation",
        ResourceConstraint = "resource-constraint",
        RestrictedXml = "restricted-xml",
        SystemShutdown = "system-shutdown",
        UndefinedCondition = "undefined-condition",
        UnsupportedEncoding = "unsupported-encoding",
        UnsupportedFeature = "unsupported-feature",
        UnsupportedStanzaType = "unsupported-stanza-type",
        UnsupportedVersion = "unsupported-version",
    }
);

/// An error that ends a stream; only the c2s connection sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamError {
    pub condition: StreamCondition,
    pub text: Option<String>,
}

impl StreamError {
    pub fn new(condition: StreamCondition) -> StreamError {
        StreamError {
            condition,
            text: None,
        }
    }

    pub fn with_text(condition: StreamCondition, text: impl Into<String>) -> StreamError {
        StreamError {
            condition,
            text: Some(text.into()),
        }
    }

    pub fn to_element(&self) -> Element {
        let mut el = Element::new("error", ns::STREAM)
            .with_child(Element::new(self.condition.as_str(), ns::STREAM_ERRORS));
        if let Some(t) = &self.text {
            el.push(
                Element::new("text", ns::STREAM_ERRORS)
                    .with_attr("xml:lang", "en")
                    .with_text(t.clone()),
            );
        }
        el
    }
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.condition.as_str())?;
        if let Some(t) = &self.text {
            write!(f, " ({t})")?;
        }
        Ok(())
    }
}

conditions!(
    /// RFC 6120 §8.3.3 stanza error conditions.
    Condition {
        BadRequest = "bad-request",
        Conflict = "conflict",
        FeatureNotImplemented = "feature-not-implemented",
        Forbidden = "forbidden",
        Gone = "gone",
        InternalServerError = "internal-server-error",
        ItemNotFound = "item-not-found",
        JidMalformed = "jid-malformed",
        NotAcceptable = "not-acceptable",
        NotAllowed = "not-allowed",
        NotAuthorized = "not-authorized",
        PolicyViolation = "policy-violation",
        RecipientUnavailable = "recipient-unavailable",
        Redirect = "redirect",
        RegistrationRequired = "registration-required",
        RemoteServerNotFound = "remote-server-not-found",
        RemoteServerTimeout = "remote-server-timeout",
        ResourceConstraint = "resource-constraint",
        ServiceUnavailable = "service-unavailable",
        SubscriptionRequired = "subscription-required",
        UndefinedCondition = "undefined-condition",
        UnexpectedRequest = "unexpected-request",
    }
);

impl Condition {
    /// The error type RFC 6120 §8.3.3 recommends for each condition.
    pub fn default_type(self) -> &'static str {
        use Condition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable | PolicyViolation | Redirect => "modify",
            Forbidden | NotAuthorized | RegistrationRequired | SubscriptionRequired => "auth",
            RecipientUnavailable | RemoteServerTimeout | ResourceConstraint | UnexpectedRequest => {
                "wait"
            }
            _ => "cancel",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StanzaError {
    pub condition: Condition,
    pub text: Option<String>,
}

impl StanzaError {
    pub fn new(condition: Condition) -> StanzaError {
        StanzaError {
            condition,
            text: None,
        }
    }

    pub fn with_text(condition: Condition, text: impl Into<String>) -> StanzaError {
        StanzaError {
            condition,
            text: Some(text.into()),
        }
    }

    pub fn bad_request(text: &str) -> StanzaError {
        StanzaError::with_text(Condition::BadRequest, text)
    }

    pub fn service_unavailable() -> StanzaError {
        StanzaError::new(Condition::ServiceUnavailable)
    }

    pub fn to_element(&self) -> Element {
        let mut el = Element::new("error", ns::CLIENT)
            .with_attr("type", self.condition.default_type())
            .with_child(Element::new(self.condition.as_str(), ns::STANZAS));
        if let Some(t) = &self.text {
            el.push(
                Element::new("text", ns::STANZAS)
                    .with_attr("xml:lang", "en")
                    .with_text(t.clone()),
            );
        }
        el
    }
}

/// The error reply to `stanza` (RFC 6120 §8.3.1): addresses swapped, same id, type `error`.
/// The original payload is not echoed back; the id is what clients match on.
pub fn error_reply(stanza: &Element, err: &StanzaError) -> Element {
    let mut reply = Element::new(&stanza.name, ns::CLIENT).with_attr("type", "error");
    if let Some(id) = stanza.attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(to) = stanza.attr("to") {
        reply.set_attr("from", to);
    }
    if let Some(from) = stanza.attr("from") {
        reply.set_attr("to", from);
    }
    reply.push(err.to_element());
    reply
}

/// The `type` attribute with RFC 6120's defaults: `normal` for messages, `available` (empty)
/// for presence.
pub fn stanza_type(stanza: &Element) -> &str {
    match stanza.attr("type") {
        Some(t) => t,
        None if stanza.name == "message" => "normal",
        None => "",
    }
}

/// A result iq answering `iq`, addressed back to its sender.
pub fn iq_result(iq: &Element, payload: Option<Element>) -> Element {
    let mut reply = Element::new("iq", ns::CLIENT).with_attr("type", "result");
    if let Some(id) = iq.attr("id") {
        reply.set_attr("id", id);
    }
    if let Some(to) = iq.attr("to") {
        reply.set_attr("from", to);
    }
    if let Some(from) = iq.attr("from") {
        reply.set_attr("to", from);
    }
    if let Some(p) = payload {
        reply.push(p);
    }
    reply
}

/// A message of `kind` with empty children `(name, ns)`, for modules' tables of cases.
#[cfg(test)]
pub fn test_message(kind: Option<&str>, children: &[(&str, &str)]) -> Element {
    let mut m = Element::new("message", ns::CLIENT);
    if let Some(k) = kind {
        m.set_attr("type", k);
    }
    for (name, ns) in children {
        m.push(Element::new(name, ns));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_swaps_addresses() {
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("id", "1")
            .with_attr("type", "get")
            .with_attr("from", "a@localhost/x")
            .with_attr("to", "localhost");
        let r = error_reply(&iq, &StanzaError::service_unavailable());
        assert_eq!(
            r.to_xml(),
            "<iq type='error' id='1' from='localhost' to='a@localhost/x'><error type='cancel'>\
             <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        );
    }

    #[test]
    fn conditions_round_trip() {
        for c in [Condition::BadRequest, Condition::ResourceConstraint] {
            assert_eq!(Condition::parse(c.as_str()), Some(c));
        }
        assert_eq!(Condition::ResourceConstraint.default_type(), "wait");
        assert_eq!(
            StreamCondition::parse("restricted-xml"),
            Some(StreamCondition::RestrictedXml)
        );
    }
}
