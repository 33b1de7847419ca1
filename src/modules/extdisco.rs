//! XEP-0215 External Service Discovery v1.0: the STUN and TURN server that clients use for
//! audio and video calls across NATs (Conversations, Monal and Dino ask for it), named in
//! `[modules.external_services]`; off unless a host is configured.
//!
//! - `<services/>` lists the server on each configured transport for each configured type,
//!   STUN and TURN, optionally only one `type`; `<credentials/>` gives the credentials for a
//!   listed TURN service by host, type and (optionally) port, and `item-not-found` otherwise.
//! - TURN credentials are time-limited, in the form of the TURN REST API
//!   (draft-uberti-behave-turn-rest-00 §2.2) that coturn checks with `use-auth-secret`: the
//!   username is `<expiry as Unix time>:<localpart>`, the password
//!   base64(HMAC-SHA1(shared secret, username)); `expires` says when (XEP-0082, UTC). Nothing
//!   is stored: the TURN server recomputes the password from the secret.
//!
//! Only the server's own users (a bound session) get an answer. Pushes of changed services
//! (§4.2) are not sent: the list changes only with the config, and credentials are asked for
//! per call.

use super::{Cx, DiscoInfo, Entry, IqRequest, IqRoute, Module, Target, To};
use crate::router::Dest;
use crate::stanza::{Condition, StanzaError};
use crate::xml::{Element, ns};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha1::Sha1;
use std::time::{Duration, UNIX_EPOCH};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The STUN/TURN server's DNS name or IP address; empty leaves the module off.
    pub host: String,
    pub port: u64,
    /// Among "udp" and "tcp".
    pub transports: Vec<String>,
    /// Among "stun" and "turn".
    pub types: Vec<String>,
    /// The TURN server's shared secret (coturn's `static-auth-secret`).
    pub turn_secret: String,
    /// Seconds TURN credentials are valid.
    pub credentials_ttl_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: String::new(),
            port: 3478,
            transports: vec!["udp".into(), "tcp".into()],
            types: vec!["stun".into(), "turn".into()],
            turn_secret: String::new(),
            credentials_ttl_secs: 86_400,
        }
    }
}

const SECTION: &str = "modules.external_services";

impl Config {
    /// Whether the settings make sense together; the error is one sentence for the operator.
    pub fn validate(&self) -> Result<(), String> {
        if self.host.is_empty() {
            return Ok(());
        }
        let is_ip = self.host.parse::<std::net::IpAddr>().is_ok();
        let is_name = crate::jid::Jid::parse(&self.host)
            .is_ok_and(|j| j.local().is_none() && j.is_bare() && j.to_string() == self.host);
        if !is_ip && !is_name {
            return Err(format!(
                "{SECTION}.host {:?} is not a host name or IP address; set it to the name \
                 clients reach the STUN/TURN server by",
                self.host
            ));
        }
        let check = |what: &str, values: &[String], allowed: &[&str]| {
            let bad = values.iter().find(|v| !allowed.contains(&v.as_str()));
            match (values.is_empty(), bad) {
                (true, _) => Err(format!(
                    "{SECTION}.{what} is empty; list some of {allowed:?}"
                )),
                (_, Some(b)) => Err(format!("{SECTION}.{what} has {b:?}; use only {allowed:?}")),
                _ => Ok(()),
            }
        };
        check("types", &self.types, &["stun", "turn"])?;
        check("transports", &self.transports, &["udp", "tcp"])?;
        if self.types.iter().any(|t| t == "turn") && self.turn_secret.is_empty() {
            return Err(format!(
                "{SECTION}.turn_secret is empty; set it to the TURN server's shared secret \
                 (coturn's static-auth-secret), or leave \"turn\" out of types"
            ));
        }
        Ok(())
    }
}

pub const ENTRY: Entry = Entry {
    tables: &[],
    new: |config| {
        let c = &config.modules.external_services;
        (!c.host.is_empty()).then(|| Box::new(ExtDisco { config: c.clone() }) as Box<dyn Module>)
    },
};

pub struct ExtDisco {
    config: Config,
}

/// Time-limited TURN credentials for `user` (TURN REST API §2.2): (username, password).
pub fn turn_credentials(secret: &str, user: &str, expiry: u64) -> (String, String) {
    let username = format!("{expiry}:{user}");
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(username.as_bytes());
    let password = B64.encode(mac.finalize().into_bytes());
    (username, password)
}

impl ExtDisco {
    /// Every configured service: (type, transport).
    fn services(&self) -> impl Iterator<Item = (&str, &str)> {
        self.config.types.iter().flat_map(|t| {
            self.config
                .transports
                .iter()
                .map(move |tr| (t.as_str(), tr.as_str()))
        })
    }

    fn service(&self, cx: &Cx, user: &str, kind: &str, transport: Option<&str>) -> Element {
        let c = &self.config;
        let mut s = Element::new("service", ns::EXTDISCO)
            .with_attr("host", c.host.as_str())
            .with_attr("port", c.port.to_string())
            .with_attr("type", kind);
        if let Some(t) = transport {
            s.set_attr("transport", t);
        }
        if kind == "turn" {
            let now = cx.now().duration_since(UNIX_EPOCH).unwrap_or_default();
            let expiry = now.as_secs() + c.credentials_ttl_secs;
            let (username, password) = turn_credentials(&c.turn_secret, user, expiry);
            let expires =
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(expiry));
            s.set_attr("username", username);
            s.set_attr("password", password);
            s.set_attr("expires", expires.to_string());
        }
        s
    }

    fn list(&self, cx: &Cx, user: &str, request: &Element) -> Element {
        let wanted = request.attr("type");
        let mut out = Element::new("services", ns::EXTDISCO);
        if let Some(w) = wanted {
            out.set_attr("type", w);
        }
        for (kind, transport) in self.services() {
            if wanted.is_none_or(|w| w == kind) {
                out.push(self.service(cx, user, kind, Some(transport)));
            }
        }
        out
    }

    fn credentials(&self, cx: &Cx, user: &str, request: &Element) -> Result<Element, StanzaError> {
        let asked = request
            .child("service", ns::EXTDISCO)
            .ok_or_else(|| StanzaError::bad_request("name the service with <service/>"))?;
        let (Some(host), Some(kind)) = (asked.attr("host"), asked.attr("type")) else {
            return Err(StanzaError::bad_request("a service has a host and a type"));
        };
        let port_matches = asked
            .attr("port")
            .is_none_or(|p| p.parse::<u64>() == Ok(self.config.port));
        let known = host == self.config.host
            && port_matches
            && kind == "turn"
            && self.config.types.iter().any(|t| t == kind);
        if !known {
            return Err(StanzaError::new(Condition::ItemNotFound));
        }
        Ok(
            Element::new("credentials", ns::EXTDISCO)
                .with_child(self.service(cx, user, kind, None)),
        )
    }
}

impl Module for ExtDisco {
    fn name(&self) -> &'static str {
        "external_services"
    }

    fn disco(&self, _cx: &Cx, target: &Target, info: &mut DiscoInfo) {
        if *target == Target::Server {
            info.features.push(ns::EXTDISCO);
        }
    }

    fn iq_routes(&self) -> &'static [IqRoute] {
        const { &[IqRoute::new(ns::EXTDISCO, To::SERVER)] }
    }

    fn handle_iq(&self, cx: &mut Cx, iq: &IqRequest) -> Result<Option<Element>, StanzaError> {
        let Dest::Session(user) = cx.destination(iq.from) else {
            return Err(StanzaError::new(Condition::Forbidden));
        };
        if iq.set {
            return Err(StanzaError::new(Condition::NotAllowed));
        }
        match iq.payload.name.as_str() {
            "services" => Ok(Some(self.list(cx, user, iq.payload))),
            "credentials" => self.credentials(cx, user, iq.payload).map(Some),
            _ => Err(StanzaError::bad_request(
                "ask for <services/> or <credentials/>",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Out, TestRouter};
    use super::*;
    use crate::config::Config as ServerConfig;
    use crate::jid::Jid;

    fn router() -> TestRouter {
        let mut cfg = ServerConfig::default();
        cfg.modules.external_services = Config {
            host: "turn.example.org".into(),
            turn_secret: "s3cret".into(),
            ..Config::default()
        };
        TestRouter::with_config(cfg, &["alice"])
    }

    fn services<'a>(out: &'a Out, who: &Jid) -> Vec<&'a Element> {
        out.to(who)
            .into_iter()
            .find(|e| e.attr("type") == Some("result"))
            .and_then(|e| e.elements().next())
            .map(|s| s.elements().collect())
            .unwrap_or_default()
    }

    #[test]
    fn turn_credentials_are_what_coturn_computes() {
        // Computed independently: base64(HMAC-SHA1("s3cret", "1800086400:alice")).
        assert_eq!(
            turn_credentials("s3cret", "alice", 1_800_086_400),
            (
                "1800086400:alice".to_owned(),
                "RT8ZRhHaynaETPE2ZNsQuSQWTIw=".to_owned()
            )
        );
    }

    #[test]
    fn services_list_stun_and_turn_with_time_limited_credentials() {
        let t = router();
        let a = t.online("alice", "phone");
        let out = t.client(
            &a,
            "<iq type='get' id='s' to='localhost'><services xmlns='urn:xmpp:extdisco:2'/></iq>",
        );
        let list = services(&out, &a);
        assert_eq!(list.len(), 4);
        out.assert_sent(&a, "<iq type='result' id='s'><services xmlns='urn:xmpp:extdisco:2'>\
            <service host='turn.example.org' port='3478' transport='udp' type='stun'/>\
            <service host='turn.example.org' port='3478' transport='tcp' type='stun'/>\
            <service host='turn.example.org' port='3478' transport='udp' type='turn' username='1800086400:alice' password='RT8ZRhHaynaETPE2ZNsQuSQWTIw=' expires='2027-01-16T08:00:00Z'/>\
            <service host='turn.example.org' port='3478' transport='tcp' type='turn' username='1800086400:alice'/>\
            </services></iq>");
        // STUN needs no credentials.
        assert!(
            list.iter()
                .filter(|s| s.attr("type") == Some("stun"))
                .all(|s| s.attr("password").is_none())
        );
        // One type only.
        let out = t.client(&a, "<iq type='get' id='s' to='localhost'><services xmlns='urn:xmpp:extdisco:2' type='turn'/></iq>");
        assert!(
            services(&out, &a)
                .iter()
                .all(|s| s.attr("type") == Some("turn"))
        );
        assert_eq!(services(&out, &a).len(), 2);
        let out = t.client(&a, "<iq type='get' id='s' to='localhost'><services xmlns='urn:xmpp:extdisco:2' type='ftp'/></iq>");
        assert!(services(&out, &a).is_empty());
        // Credentials expire: later requests get later expiries.
        t.skip(Duration::from_secs(3600));
        let out = t.client(&a, "<iq type='get' id='s' to='localhost'><services xmlns='urn:xmpp:extdisco:2' type='turn'/></iq>");
        assert_eq!(
            services(&out, &a)[0].attr("username"),
            Some("1800090000:alice")
        );
    }

    #[test]
    fn credentials_for_a_known_turn_service_only() {
        let t = router();
        let a = t.online("alice", "phone");
        let ask = |attrs: &str| {
            t.client(&a, &format!("<iq type='get' id='c' to='localhost'><credentials xmlns='urn:xmpp:extdisco:2'><service {attrs}/></credentials></iq>"))
        };
        let out = ask("host='turn.example.org' type='turn'");
        out.assert_sent(&a, "<iq type='result' id='c'><credentials xmlns='urn:xmpp:extdisco:2'>\
            <service host='turn.example.org' type='turn' username='1800086400:alice' password='RT8ZRhHaynaETPE2ZNsQuSQWTIw='/></credentials></iq>");
        ask("host='turn.example.org' type='turn' port='3478'")
            .assert_sent(&a, "<iq type='result' id='c'/>");
        for wrong in [
            "host='turn.example.org' type='turn' port='5349'",
            "host='other.example.org' type='turn'",
            "host='turn.example.org' type='stun'",
        ] {
            ask(wrong).assert_error(&a, "c", Condition::ItemNotFound);
        }
        ask("type='turn'").assert_error(&a, "c", Condition::BadRequest);
        let out = t.client(
            &a,
            "<iq type='set' id='x' to='localhost'><services xmlns='urn:xmpp:extdisco:2'/></iq>",
        );
        out.assert_error(&a, "x", Condition::NotAllowed);
        let out = t.client(&a, "<iq type='get' id='d' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
        out.assert_sent(&a, "<iq type='result'><query xmlns='http://jabber.org/protocol/disco#info'><feature var='urn:xmpp:extdisco:2'/></query></iq>");
    }

    #[test]
    fn off_unless_configured() {
        let t = TestRouter::with_users(&["alice"]);
        let a = t.online("alice", "phone");
        let out = t.client(
            &a,
            "<iq type='get' id='s' to='localhost'><services xmlns='urn:xmpp:extdisco:2'/></iq>",
        );
        out.assert_error(&a, "s", Condition::ServiceUnavailable);
        let out = t.client(&a, "<iq type='get' id='d' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
        out.assert_not_sent(&a, "<iq><query xmlns='http://jabber.org/protocol/disco#info'><feature var='urn:xmpp:extdisco:2'/></query></iq>");
        out.assert_sent(&a, "<iq type='result' id='d'/>");
    }

    #[test]
    fn settings_are_checked() {
        let parse =
            |toml: &str| ServerConfig::parse(&format!("[modules.external_services]\n{toml}"));
        parse("host = 'turn.example.org'\nturn_secret = 'x'").unwrap();
        parse("host = '192.0.2.7'\ntypes = ['stun']").unwrap();
        for (bad, says) in [
            ("host = 'turn.example.org'", "turn_secret is empty"),
            ("host = 'a b'\nturn_secret = 'x'", "not a host name"),
            (
                "host = 't.example'\ntypes = ['turns']\nturn_secret = 'x'",
                "types has \"turns\"",
            ),
            (
                "host = 't.example'\ntransports = []\nturn_secret = 'x'",
                "transports is empty",
            ),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }
}
