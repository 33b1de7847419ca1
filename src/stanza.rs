//! The typed stanza envelope (RFC 6120 §8: kind, type, from, to), RFC 6120 §4.9 stream errors
//! and §8.3 stanza errors as closed enums, and error replies.

use crate::jid::Jid;
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

    /// The legacy error code XEP-0086 maps the condition to, which clients of the pre-RFC
    /// protocol still read (profanity, for one, takes an own OMEMO device list that does
    /// not exist yet for a 404, and publishes it); none for conditions it does not map.
    pub fn legacy_code(self) -> Option<&'static str> {
        use Condition::*;
        Some(match self {
            BadRequest | JidMalformed | UnexpectedRequest => "400",
            NotAuthorized => "401",
            Forbidden => "403",
            ItemNotFound | RecipientUnavailable | RemoteServerNotFound => "404",
            NotAllowed => "405",
            NotAcceptable => "406",
            RegistrationRequired | SubscriptionRequired => "407",
            Conflict => "409",
            InternalServerError | ResourceConstraint | UndefinedCondition => "500",
            FeatureNotImplemented => "501",
            ServiceUnavailable => "503",
            RemoteServerTimeout => "504",
            Gone | Redirect => "302",
            PolicyViolation => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StanzaError {
    pub condition: Condition,
    pub text: Option<String>,
    /// An application-specific condition beside the defined one (RFC 6120 §8.3.2), such as
    /// XEP-0191's `<blocked/>`.
    pub app: Option<Box<Element>>,
}

impl StanzaError {
    pub fn new(condition: Condition) -> StanzaError {
        StanzaError {
            condition,
            text: None,
            app: None,
        }
    }

    pub fn with_text(condition: Condition, text: impl Into<String>) -> StanzaError {
        StanzaError {
            condition,
            text: Some(text.into()),
            app: None,
        }
    }

    /// The error an error reply carries (RFC 6120 §8.3.2); `undefined-condition` when it
    /// names none this server knows.
    pub fn from_reply(reply: &Element) -> StanzaError {
        let error = reply.child("error", ns::CLIENT);
        let condition = error
            .and_then(|e| {
                e.elements()
                    .find(|c| c.ns == ns::STANZAS && c.name != "text")
            })
            .and_then(|c| Condition::parse(&c.name))
            .unwrap_or(Condition::UndefinedCondition);
        let mut err = StanzaError::new(condition);
        err.text = error
            .and_then(|e| e.child("text", ns::STANZAS))
            .map(|t| t.text());
        err
    }

    pub fn with_app(mut self, app: Element) -> StanzaError {
        self.app = Some(Box::new(app));
        self
    }

    pub fn bad_request(text: &str) -> StanzaError {
        StanzaError::with_text(Condition::BadRequest, text)
    }

    pub fn service_unavailable() -> StanzaError {
        StanzaError::new(Condition::ServiceUnavailable)
    }

    pub fn to_element(&self) -> Element {
        let mut el =
            Element::new("error", ns::CLIENT).with_attr("type", self.condition.default_type());
        if let Some(code) = self.condition.legacy_code() {
            el.set_attr("code", code);
        }
        el.push(Element::new(self.condition.as_str(), ns::STANZAS));
        if let Some(t) = &self.text {
            el.push(
                Element::new("text", ns::STANZAS)
                    .with_attr("xml:lang", "en")
                    .with_text(t.clone()),
            );
        }
        if let Some(app) = &self.app {
            el.push((**app).clone());
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

/// What a stanza is (RFC 6120 §8): the three kinds of the `jabber:client` namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Message,
    Presence,
    Iq,
}

/// The `type` attribute, read once (RFC 6120 §8.2.3, RFC 6121 §4.7.1, §5.2.2). A message of a
/// type nobody knows is `normal`, as RFC 6121 §5.2.2 says; presence and iq types are closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Chat,
    Normal,
    Groupchat,
    Headline,
    Available,
    Unavailable,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Probe,
    Get,
    Set,
    Result,
    Error,
}

impl Type {
    fn parse(kind: Kind, t: Option<&str>) -> Option<Type> {
        use Type::*;
        Some(match (kind, t) {
            (_, Some("error")) => Error,
            (Kind::Message, Some("chat")) => Chat,
            (Kind::Message, Some("groupchat")) => Groupchat,
            (Kind::Message, Some("headline")) => Headline,
            (Kind::Message, _) => Normal,
            (Kind::Presence, None) => Available,
            (Kind::Presence, Some("unavailable")) => Unavailable,
            (Kind::Presence, Some("subscribe")) => Subscribe,
            (Kind::Presence, Some("subscribed")) => Subscribed,
            (Kind::Presence, Some("unsubscribe")) => Unsubscribe,
            (Kind::Presence, Some("unsubscribed")) => Unsubscribed,
            (Kind::Presence, Some("probe")) => Probe,
            (Kind::Iq, Some("get")) => Get,
            (Kind::Iq, Some("set")) => Set,
            (Kind::Iq, Some("result")) => Result,
            _ => return None,
        })
    }

    /// Presence that changes a subscription (RFC 6121 §3).
    pub fn is_subscription(self) -> bool {
        matches!(
            self,
            Type::Subscribe | Type::Subscribed | Type::Unsubscribe | Type::Unsubscribed
        )
    }
}

/// Who made a stanza, which decides the hooks it passes (see `router.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Sent by the client session named in `from`.
    Client,
    /// Made by the server on behalf of the account in `from` (a presence broadcast, a probe,
    /// the answer to a probe): it passes the account's outbound hooks, as if the client sent it.
    Account,
    /// The server's own answer (an error bounce, an iq the server or a module sends).
    Server,
    /// Sent by another server on behalf of `from`, whose domain that server authenticated as:
    /// it passes the inbound hooks of a local addressee, never outbound ones.
    Remote,
}

/// An element whose envelope RFC 6120 forbids, with the error to answer it with, if any.
pub struct Rejected {
    pub el: Element,
    pub error: Option<StanzaError>,
}

/// A stanza with its envelope read: what routing and hooks decide on, beside the element that
/// is delivered. `from` is where the stanza comes from even when the element leaves the
/// attribute out (a reply to a request that had no `to`).
#[derive(Clone, Debug)]
pub struct Stanza {
    pub kind: Kind,
    pub typ: Type,
    pub from: Jid,
    /// None: addressed to the sender's own account (RFC 6120 §10.3), or a presence broadcast.
    pub to: Option<Jid>,
    pub origin: Origin,
    pub el: Element,
}

impl Stanza {
    /// Reads the envelope of `el`, with `from` (already stamped on it) as its sender. An
    /// envelope RFC 6120 forbids gets the error to answer with (RFC 6120 §8.3.1); an iq result
    /// or error without an id gets none, since nothing can match it (the caller drops it).
    pub fn parse(el: Element, from: Jid, origin: Origin) -> Result<Stanza, Box<Rejected>> {
        match Stanza::envelope(&el) {
            Ok((kind, typ, to)) => Ok(Stanza {
                kind,
                typ,
                from,
                to,
                origin,
                el,
            }),
            Err(error) => Err(Box::new(Rejected { el, error })),
        }
    }

    fn envelope(el: &Element) -> Result<(Kind, Type, Option<Jid>), Option<StanzaError>> {
        let kind = match (el.name.as_str(), el.ns.as_str()) {
            ("message", ns::CLIENT) => Kind::Message,
            ("presence", ns::CLIENT) => Kind::Presence,
            ("iq", ns::CLIENT) => Kind::Iq,
            _ => return Err(Some(StanzaError::bad_request("not a stanza"))),
        };
        let typ = Type::parse(kind, el.attr("type")).ok_or_else(|| {
            Some(StanzaError::bad_request(match kind {
                Kind::Iq => "iq type must be get, set, result or error",
                _ => "unknown presence type",
            }))
        })?;
        let to = match el.attr("to") {
            Some(t) => {
                Some(Jid::parse(t).map_err(|_| Some(StanzaError::new(Condition::JidMalformed)))?)
            }
            None => None,
        };
        if kind == Kind::Iq {
            let request = matches!(typ, Type::Get | Type::Set);
            if el.attr("id").is_none() {
                return Err(request.then(|| StanzaError::bad_request("iq without id")));
            }
            if request && el.elements().count() != 1 {
                return Err(Some(StanzaError::bad_request(
                    "an iq get or set has exactly one child",
                )));
            }
        }
        Ok((kind, typ, to))
    }

    /// A stanza the server makes: `el` carries the same `from` and `to` as the fields.
    pub fn new(
        kind: Kind,
        typ: Type,
        from: Jid,
        to: Jid,
        origin: Origin,
        mut el: Element,
    ) -> Stanza {
        el.set_attr("from", from.to_string());
        el.set_attr("to", to.to_string());
        Stanza {
            kind,
            typ,
            from,
            to: Some(to),
            origin,
            el,
        }
    }

    pub fn id(&self) -> Option<&str> {
        self.el.attr("id")
    }

    /// The addressee, with an absent `to` meaning the sender's own bare JID.
    pub fn target(&self) -> Jid {
        self.to.clone().unwrap_or_else(|| self.from.bare())
    }

    pub fn set_to(&mut self, to: Jid) {
        self.el.set_attr("to", to.to_string());
        self.to = Some(to);
    }

    /// The only child of an iq get or set (checked by `parse`).
    pub fn payload(&self) -> Option<&Element> {
        self.el.elements().next()
    }

    pub fn is_request(&self) -> bool {
        matches!(self.typ, Type::Get | Type::Set)
    }

    /// The error reply, from the addressee back to the sender, made by the server.
    pub fn error(&self, err: &StanzaError) -> Stanza {
        Stanza {
            kind: self.kind,
            typ: Type::Error,
            from: self.target(),
            to: Some(self.from.clone()),
            origin: Origin::Server,
            el: error_reply(&self.el, err),
        }
    }
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
            "<iq type='error' id='1' from='localhost' to='a@localhost/x'>\
             <error type='cancel' code='503'>\
             <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        );
    }

    #[test]
    fn errors_carry_the_legacy_code_of_their_condition() {
        let code = |c| {
            StanzaError::new(c)
                .to_element()
                .attr("code")
                .map(str::to_owned)
        };
        assert_eq!(code(Condition::ItemNotFound).as_deref(), Some("404"));
        assert_eq!(code(Condition::NotAllowed).as_deref(), Some("405"));
        assert_eq!(code(Condition::RemoteServerTimeout).as_deref(), Some("504"));
        // RFC 6120 added it; XEP-0086 has no code for it.
        assert_eq!(code(Condition::PolicyViolation), None);
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
