//! XEP-0313 §6 archiving preferences: a default (always, never, roster) and two JID lists,
//! stored per user. `never` wins over `always`, which wins over the default.

use crate::jid::Jid;
use crate::stanza::StanzaError;
use crate::xml::{Element, ns};
use serde::{Deserialize, Serialize};

/// Most JIDs one list may hold: the whole set is read for every archived message.
const MAX_JIDS: usize = 1000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Always,
    Never,
    Roster,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Always => "always",
            Mode::Never => "never",
            Mode::Roster => "roster",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Prefs {
    pub default: Mode,
    pub always: Vec<String>,
    pub never: Vec<String>,
}

/// What the preferences say about a contact, before the roster is consulted.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Archive,
    Skip,
    IfInRoster,
}

impl Prefs {
    pub fn encode(&self) -> String {
        // A struct of plain fields always serialises.
        toml::to_string(self).expect("prefs serialise")
    }

    pub fn decode(s: &str) -> Prefs {
        toml::from_str(s).unwrap_or_default()
    }

    /// `with` is the other party as addressed; lists may name it bare or full.
    pub fn verdict(&self, with: &Jid) -> Verdict {
        let full = with.to_string();
        let bare = with.bare().to_string();
        let listed = |l: &[String]| l.iter().any(|j| *j == bare || *j == full);
        if listed(&self.never) {
            Verdict::Skip
        } else if listed(&self.always) {
            Verdict::Archive
        } else {
            match self.default {
                Mode::Always => Verdict::Archive,
                Mode::Never => Verdict::Skip,
                Mode::Roster => Verdict::IfInRoster,
            }
        }
    }

    pub fn to_element(&self) -> Element {
        let list = |name: &str, jids: &[String]| {
            let mut el = Element::new(name, ns::MAM);
            for j in jids {
                el.push(Element::new("jid", ns::MAM).with_text(j.as_str()));
            }
            el
        };
        Element::new("prefs", ns::MAM)
            .with_attr("default", self.default.as_str())
            .with_child(list("always", &self.always))
            .with_child(list("never", &self.never))
    }

    pub fn parse(el: &Element) -> Result<Prefs, StanzaError> {
        let default = match el.attr("default") {
            Some("always") => Mode::Always,
            Some("never") => Mode::Never,
            Some("roster") => Mode::Roster,
            _ => {
                return Err(StanzaError::bad_request(
                    "default must be always, never or roster",
                ));
            }
        };
        let list = |name: &str| -> Result<Vec<String>, StanzaError> {
            let mut out = Vec::new();
            for j in el
                .child(name, ns::MAM)
                .into_iter()
                .flat_map(|l| l.elements().filter(|e| e.is("jid", ns::MAM)))
            {
                let jid = Jid::parse(j.text().trim())
                    .map_err(|_| StanzaError::bad_request("a preference lists a malformed JID"))?
                    .to_string();
                if !out.contains(&jid) {
                    out.push(jid);
                }
                if out.len() > MAX_JIDS {
                    return Err(StanzaError::bad_request(
                        "too many JIDs in a preference list",
                    ));
                }
            }
            Ok(out)
        };
        Ok(Prefs {
            default,
            always: list("always")?,
            never: list("never")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::reader::parse_one;

    #[test]
    fn parse_encode_and_decide() {
        let el = parse_one(
            "<prefs xmlns='urn:xmpp:mam:2' default='roster'>\
             <always><jid>Alice@X</jid></always><never><jid>bob@x/phone</jid></never></prefs>",
        )
        .unwrap();
        let p = Prefs::parse(&el).unwrap();
        assert_eq!(p.always, vec!["alice@x"]);
        assert_eq!(Prefs::decode(&p.encode()), p);
        assert_eq!(Prefs::parse(&p.to_element()).unwrap(), p);
        let j = |s: &str| Jid::parse(s).unwrap();
        assert_eq!(p.verdict(&j("alice@x/any")), Verdict::Archive);
        assert_eq!(p.verdict(&j("bob@x/phone")), Verdict::Skip);
        assert_eq!(p.verdict(&j("bob@x/desk")), Verdict::IfInRoster);
        assert_eq!(Prefs::default().verdict(&j("c@x")), Verdict::Archive);
        assert_eq!(Prefs::decode("garbage ="), Prefs::default());
    }

    #[test]
    fn rejects_bad_prefs() {
        for bad in [
            "<prefs xmlns='urn:xmpp:mam:2'/>",
            "<prefs xmlns='urn:xmpp:mam:2' default='sometimes'/>",
            "<prefs xmlns='urn:xmpp:mam:2' default='always'><never><jid>a@b@c</jid></never></prefs>",
        ] {
            assert!(Prefs::parse(&parse_one(bad).unwrap()).is_err(), "{bad}");
        }
        let many: String = (0..=MAX_JIDS)
            .map(|i| format!("<jid>u{i}@x</jid>"))
            .collect();
        let el = parse_one(&format!(
            "<prefs xmlns='urn:xmpp:mam:2' default='always'><always>{many}</always></prefs>"
        ))
        .unwrap();
        assert!(Prefs::parse(&el).is_err());
    }
}
