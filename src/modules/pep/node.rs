//! A PEP node's configuration (XEP-0060 §16.4 `pubsub#node_config`), as stored and as a
//! XEP-0004 form: reading a submitted form, checking XEP-0223 publish options against a node
//! (§7.1.5 preconditions), and the form a node's owner gets.

use crate::stanza::{Condition, StanzaError};
use crate::xml::{Element, ns};
use serde::{Deserialize, Serialize};

/// Who may read a node (XEP-0060 §4.5). `authorize` is left out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Whoever is subscribed to the owner's presence (XEP-0163's default).
    #[default]
    Presence,
    Open,
    /// Whoever is in one of `roster_groups_allowed` of the owner's roster.
    Roster,
    /// The owner only (affiliations are not implemented).
    Whitelist,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Presence => "presence",
            Access::Open => "open",
            Access::Roster => "roster",
            Access::Whitelist => "whitelist",
        }
    }

    fn parse(s: &str) -> Option<Access> {
        Some(match s {
            "presence" => Access::Presence,
            "open" => Access::Open,
            "roster" => Access::Roster,
            "whitelist" => Access::Whitelist,
            _ => return None,
        })
    }
}

/// When the last item goes to a subscriber (XEP-0060 §16.4 `send_last_published_item`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendLast {
    Never,
    OnSub,
    #[default]
    OnSubAndPresence,
}

impl SendLast {
    fn as_str(self) -> &'static str {
        match self {
            SendLast::Never => "never",
            SendLast::OnSub => "on_sub",
            SendLast::OnSubAndPresence => "on_sub_and_presence",
        }
    }

    fn parse(s: &str) -> Option<SendLast> {
        Some(match s {
            "never" => SendLast::Never,
            "on_sub" => SendLast::OnSub,
            "on_sub_and_presence" => SendLast::OnSubAndPresence,
            _ => return None,
        })
    }
}

/// One node's configuration; stored as TOML.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    pub access_model: Access,
    pub roster_groups_allowed: Vec<String>,
    /// None: `max`, the most the server allows (stored as 0).
    #[serde(with = "max_as_zero")]
    pub max_items: Option<usize>,
    pub persist_items: bool,
    pub send_last_published_item: SendLast,
    pub deliver_notifications: bool,
    pub deliver_payloads: bool,
    pub notify_retract: bool,
    pub notify_delete: bool,
    pub title: String,
    /// The payload type, informational (`pubsub#type`).
    pub payload_type: String,
}

impl Default for NodeConfig {
    /// XEP-0163 §8 smart defaults: presence access, one item, kept.
    fn default() -> Self {
        NodeConfig {
            access_model: Access::Presence,
            roster_groups_allowed: Vec::new(),
            max_items: Some(1),
            persist_items: true,
            send_last_published_item: SendLast::OnSubAndPresence,
            deliver_notifications: true,
            deliver_payloads: true,
            notify_retract: true,
            notify_delete: true,
            title: String::new(),
            payload_type: String::new(),
        }
    }
}

/// `max_items` in TOML, which has no null: `max` is 0, which no node has otherwise.
mod max_as_zero {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<usize>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.map_or(0, |n| n as u64))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        let n = u64::deserialize(d)?;
        Ok((n != 0).then(|| usize::try_from(n).unwrap_or(usize::MAX)))
    }
}

/// Longest title, payload type and roster group a form may set, and most groups.
const MAX_TEXT: usize = 1023;
const MAX_GROUPS: usize = 64;

/// A submitted form's fields: (var, values), FORM_TYPE left out.
pub type Fields = Vec<(String, Vec<String>)>;

fn not_acceptable(text: String) -> StanzaError {
    StanzaError::with_text(Condition::NotAcceptable, text)
}

/// The fields of `x`, a submitted XEP-0004 form of type `form_type`. A form of type `cancel`
/// is None.
pub fn read_form(x: &Element, form_type: &str) -> Result<Option<Fields>, StanzaError> {
    if !x.is("x", ns::DATA_FORMS) {
        return Err(StanzaError::bad_request("expected a jabber:x:data form"));
    }
    // A form without a type is taken as submitted, as some clients send publish options.
    match x.attr("type") {
        Some("cancel") => return Ok(None),
        Some("submit") | None => {}
        _ => return Err(StanzaError::bad_request("the form's type must be submit")),
    }
    let mut fields = Fields::new();
    let mut typed = false;
    for f in x.elements().filter(|f| f.is("field", ns::DATA_FORMS)) {
        let Some(var) = f.attr("var") else {
            return Err(StanzaError::bad_request("a field without var"));
        };
        let values: Vec<String> = f
            .elements()
            .filter(|v| v.is("value", ns::DATA_FORMS))
            .map(Element::text)
            .collect();
        if var == "FORM_TYPE" {
            if values.first().map(String::as_str) != Some(form_type) {
                return Err(StanzaError::bad_request("wrong FORM_TYPE"));
            }
            typed = true;
        } else if fields.iter().any(|(v, _)| v == var) {
            return Err(StanzaError::bad_request("a field is given twice"));
        } else {
            fields.push((var.to_owned(), values));
        }
    }
    if !typed {
        return Err(StanzaError::bad_request("the form has no FORM_TYPE"));
    }
    Ok(Some(fields))
}

fn boolean(var: &str, values: &[String]) -> Result<bool, StanzaError> {
    match values {
        [v] if v == "1" || v == "true" => Ok(true),
        [v] if v == "0" || v == "false" => Ok(false),
        _ => Err(not_acceptable(format!("{var} is a boolean"))),
    }
}

fn single<'a>(var: &str, values: &'a [String]) -> Result<&'a str, StanzaError> {
    match values {
        [v] if v.len() <= MAX_TEXT => Ok(v),
        [] => Ok(""),
        _ => Err(not_acceptable(format!("{var} takes one short value"))),
    }
}

/// `max` or a number, within `limit`; None means `max`.
fn max_items(values: &[String], limit: usize) -> Result<Option<usize>, StanzaError> {
    let v = single("pubsub#max_items", values)?;
    if v == "max" {
        return Ok(None);
    }
    match v.parse::<usize>() {
        Ok(n) if (1..=limit).contains(&n) => Ok(Some(n)),
        _ => Err(not_acceptable(format!(
            "pubsub#max_items is max or a number from 1 to {limit}"
        ))),
    }
}

impl NodeConfig {
    /// The most items the node keeps, with `max` as the server's `limit`.
    pub fn max(&self, limit: usize) -> usize {
        self.max_items.unwrap_or(limit).min(limit)
    }

    pub fn encode(&self) -> String {
        toml::to_string(self).expect("a node config serialises")
    }

    pub fn decode(s: &str) -> NodeConfig {
        toml::from_str(s).unwrap_or_else(|e| {
            log::warn!("an unreadable PEP node configuration ({e}); using the defaults");
            NodeConfig::default()
        })
    }

    /// Sets the submitted fields (XEP-0060 §8.2.4); an unknown field or a bad value refuses
    /// the whole form.
    pub fn apply(&mut self, fields: &Fields, limit: usize) -> Result<(), StanzaError> {
        let mut next = self.clone();
        for (var, values) in fields {
            match var.as_str() {
                "pubsub#access_model" => {
                    next.access_model = Access::parse(single(var, values)?).ok_or_else(|| {
                        not_acceptable(
                            "pubsub#access_model is presence, open, roster or whitelist".into(),
                        )
                    })?
                }
                "pubsub#roster_groups_allowed" => {
                    if values.len() > MAX_GROUPS || values.iter().any(|g| g.len() > MAX_TEXT) {
                        return Err(not_acceptable(format!(
                            "at most {MAX_GROUPS} roster groups of at most {MAX_TEXT} bytes"
                        )));
                    }
                    let mut groups = values.clone();
                    groups.sort();
                    groups.dedup();
                    next.roster_groups_allowed = groups;
                }
                "pubsub#max_items" => next.max_items = max_items(values, limit)?,
                "pubsub#persist_items" => next.persist_items = boolean(var, values)?,
                "pubsub#send_last_published_item" => {
                    next.send_last_published_item = SendLast::parse(single(var, values)?)
                        .ok_or_else(|| {
                            not_acceptable(
                                "pubsub#send_last_published_item is never, on_sub or \
                                 on_sub_and_presence"
                                    .into(),
                            )
                        })?
                }
                "pubsub#deliver_notifications" => {
                    next.deliver_notifications = boolean(var, values)?
                }
                "pubsub#deliver_payloads" => next.deliver_payloads = boolean(var, values)?,
                "pubsub#notify_retract" => next.notify_retract = boolean(var, values)?,
                "pubsub#notify_delete" => next.notify_delete = boolean(var, values)?,
                "pubsub#title" => next.title = single(var, values)?.to_owned(),
                "pubsub#type" => next.payload_type = single(var, values)?.to_owned(),
                // Fixed in PEP: only the owner publishes, notifications are headlines.
                "pubsub#publish_model" if single(var, values)? == "publishers" => {}
                "pubsub#notification_type" if single(var, values)? == "headline" => {}
                _ => {
                    return Err(not_acceptable(format!(
                        "{var} cannot be set to {values:?} here"
                    )));
                }
            }
        }
        *self = next;
        Ok(())
    }

    /// Whether every publish option matches this configuration (XEP-0060 §7.1.5): applying
    /// them would change nothing. `max` equals the server's limit.
    pub fn satisfies(&self, fields: &Fields, limit: usize) -> bool {
        let mut changed = self.clone();
        if changed.apply(fields, limit).is_err() {
            return false;
        }
        changed.max_items = Some(changed.max(limit));
        let mut same = self.clone();
        same.max_items = Some(same.max(limit));
        changed == same
    }

    /// The configuration form (XEP-0060 §8.2.1).
    pub fn form(&self, limit: usize) -> Element {
        let mut x = Element::new("x", ns::DATA_FORMS).with_attr("type", "form");
        x.push(field("FORM_TYPE", "hidden", &[ns::PUBSUB_NODE_CONFIG]));
        let mut access = field(
            "pubsub#access_model",
            "list-single",
            &[self.access_model.as_str()],
        );
        for a in ["presence", "open", "roster", "whitelist"] {
            access.push(option(a));
        }
        x.push(access);
        let groups: Vec<&str> = self
            .roster_groups_allowed
            .iter()
            .map(String::as_str)
            .collect();
        x.push(field("pubsub#roster_groups_allowed", "list-multi", &groups));
        let max = match self.max_items {
            None => "max".to_owned(),
            Some(n) => n.min(limit).to_string(),
        };
        x.push(field("pubsub#max_items", "text-single", &[&max]));
        let b = |v: bool| if v { "true" } else { "false" };
        x.push(field(
            "pubsub#persist_items",
            "boolean",
            &[b(self.persist_items)],
        ));
        let mut last = field(
            "pubsub#send_last_published_item",
            "list-single",
            &[self.send_last_published_item.as_str()],
        );
        for s in ["never", "on_sub", "on_sub_and_presence"] {
            last.push(option(s));
        }
        x.push(last);
        for (var, v) in [
            ("pubsub#deliver_notifications", self.deliver_notifications),
            ("pubsub#deliver_payloads", self.deliver_payloads),
            ("pubsub#notify_retract", self.notify_retract),
            ("pubsub#notify_delete", self.notify_delete),
        ] {
            x.push(field(var, "boolean", &[b(v)]));
        }
        x.push(field(
            "pubsub#publish_model",
            "list-single",
            &["publishers"],
        ));
        x.push(field("pubsub#title", "text-single", &[&self.title]));
        x.push(field("pubsub#type", "text-single", &[&self.payload_type]));
        x
    }
}

fn field(var: &str, kind: &str, values: &[&str]) -> Element {
    let mut f = Element::new("field", ns::DATA_FORMS)
        .with_attr("var", var)
        .with_attr("type", kind);
    for v in values {
        f.push(Element::new("value", ns::DATA_FORMS).with_text(*v));
    }
    f
}

fn option(value: &str) -> Element {
    Element::new("option", ns::DATA_FORMS)
        .with_child(Element::new("value", ns::DATA_FORMS).with_text(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &[&str])]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn options_apply_and_preconditions_compare() {
        let mut c = NodeConfig::default();
        let open_max = fields(&[
            ("pubsub#access_model", &["open"]),
            ("pubsub#max_items", &["max"]),
        ]);
        assert!(!c.satisfies(&open_max, 100));
        c.apply(&open_max, 100).unwrap();
        assert_eq!(c.access_model, Access::Open);
        assert_eq!(c.max(100), 100);
        assert!(c.satisfies(&open_max, 100));
        // `max` and the limit are the same number of items.
        assert!(c.satisfies(&fields(&[("pubsub#max_items", &["100"])]), 100));
        assert!(c.satisfies(&fields(&[("pubsub#persist_items", &["1"])]), 100));
        assert!(!c.satisfies(&fields(&[("pubsub#persist_items", &["false"])]), 100));
        assert!(!c.satisfies(&fields(&[("pubsub#unknown", &["x"])]), 100));
        // A bad value refuses the whole form and changes nothing.
        let before = c.clone();
        let bad = fields(&[
            ("pubsub#access_model", &["whitelist"]),
            ("pubsub#max_items", &["101"]),
        ]);
        assert_eq!(
            c.apply(&bad, 100).unwrap_err().condition,
            Condition::NotAcceptable
        );
        assert_eq!(c, before);
        assert_eq!(NodeConfig::decode(&c.encode()), c);
    }
}
