//! The room's XEP-0004 forms: its configuration (`muc#roomconfig`, XEP-0045 §10.2 and
//! §15.5.3), its extended disco#info (`muc#roominfo`, §6.4), and voice requests and their
//! approval (`muc#request`, §7.13 and §8.6).
//!
//! A submitted configuration may leave fields out (they keep their values) and may carry
//! fields this service does not offer (clients send the registry's whole list): those are
//! ignored. A value that does not fit a field refuses the whole form with `not-acceptable`.

use super::Limits;
use super::room::{AllowPm, Room, RoomConfig};
use crate::stanza::{Condition, StanzaError};
use crate::xml::{Element, ns};

fn not_acceptable(text: String) -> StanzaError {
    StanzaError::with_text(Condition::NotAcceptable, text)
}

/// The fields of a submitted form, FORM_TYPE checked and left out: (var, values).
pub type Fields = Vec<(String, Vec<String>)>;

/// What a submitted `x` says: cancelled, or its fields. A form without a type is taken as
/// submitted; one without a FORM_TYPE as being of `form_type` (an instant room's empty form).
pub fn read(x: &Element, form_type: &str) -> Result<Option<Fields>, StanzaError> {
    if !x.is("x", ns::DATA_FORMS) {
        return Err(StanzaError::bad_request("expected a jabber:x:data form"));
    }
    match x.attr("type") {
        Some("cancel") => return Ok(None),
        Some("submit") | None => {}
        _ => return Err(StanzaError::bad_request("the form's type must be submit")),
    }
    let mut fields = Fields::new();
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
        } else if fields.iter().any(|(v, _)| v == var) {
            return Err(StanzaError::bad_request("a field is given twice"));
        } else {
            fields.push((var.to_owned(), values));
        }
    }
    Ok(Some(fields))
}

fn boolean(var: &str, values: &[String]) -> Result<bool, StanzaError> {
    match values {
        [v] if v.trim() == "1" || v.trim() == "true" => Ok(true),
        [v] if v.trim() == "0" || v.trim() == "false" => Ok(false),
        _ => Err(not_acceptable(format!("{var} is a boolean"))),
    }
}

/// The one value of a text field, at most `max` bytes; none is the empty text.
fn text<'a>(var: &str, values: &'a [String], max: usize) -> Result<&'a str, StanzaError> {
    match values {
        [] => Ok(""),
        [v] if v.len() <= max => Ok(v),
        [_] => Err(not_acceptable(format!("{var} is longer than {max} bytes"))),
        _ => Err(not_acceptable(format!("{var} takes one value"))),
    }
}

fn number(var: &str, values: &[String], least: usize, most: usize) -> Result<usize, StanzaError> {
    match text(var, values, 20)?.trim().parse::<usize>() {
        Ok(n) if (least..=most).contains(&n) => Ok(n),
        _ => Err(not_acceptable(format!(
            "{var} is a number from {least} to {most}"
        ))),
    }
}

/// `config` with the submitted `fields` applied; an unacceptable value changes nothing.
pub fn apply(config: &RoomConfig, fields: &Fields, l: &Limits) -> Result<RoomConfig, StanzaError> {
    let mut c = config.clone();
    let mut protected = c.password.is_some();
    let mut secret = c.password.clone();
    for (var, v) in fields {
        let var = var.as_str();
        match var {
            "muc#roomconfig_roomname" => c.name = text(var, v, l.max_name_bytes)?.to_owned(),
            "muc#roomconfig_roomdesc" => c.description = text(var, v, l.max_name_bytes)?.to_owned(),
            "muc#roomconfig_persistentroom" => c.persistent = boolean(var, v)?,
            "muc#roomconfig_publicroom" => c.public = boolean(var, v)?,
            "muc#roomconfig_membersonly" => c.members_only = boolean(var, v)?,
            "muc#roomconfig_moderatedroom" => c.moderated = boolean(var, v)?,
            "muc#roomconfig_changesubject" => c.change_subject = boolean(var, v)?,
            "muc#roomconfig_allowinvites" => c.allow_invites = boolean(var, v)?,
            "muc#roomconfig_enablearchiving" => c.archiving = boolean(var, v)?,
            "muc#roomconfig_passwordprotectedroom" => protected = boolean(var, v)?,
            "muc#roomconfig_roomsecret" => {
                let s = text(var, v, l.max_password_bytes)?;
                secret = (!s.is_empty()).then(|| s.to_owned());
            }
            "muc#roomconfig_whois" => {
                c.whois_anyone = match text(var, v, 20)? {
                    "anyone" => true,
                    "moderators" => false,
                    _ => return Err(not_acceptable(format!("{var} is moderators or anyone"))),
                }
            }
            "muc#roomconfig_allowpm" => {
                c.allow_pm = AllowPm::parse(text(var, v, 20)?).ok_or_else(|| {
                    not_acceptable(format!("{var} is anyone, participants, moderators or none"))
                })?
            }
            "muc#maxhistoryfetch" | "muc#roomconfig_historylength" => {
                c.history_length = number(var, v, 0, l.max_history)?
            }
            "muc#roomconfig_maxusers" => {
                c.max_users = match text(var, v, 20)? {
                    "none" | "" => l.max_occupants,
                    _ => number(var, v, 1, l.max_occupants)?,
                }
            }
            // Offered by others, not here: the room keeps its own behaviour.
            _ => {}
        }
    }
    c.password = match (protected, secret) {
        (false, _) => None,
        (true, Some(s)) => Some(s),
        (true, None) => {
            return Err(not_acceptable(
                "a password-protected room needs a password".into(),
            ));
        }
    };
    Ok(c)
}

fn field(var: &str, kind: &str, label: &str, values: &[&str]) -> Element {
    let mut f = Element::new("field", ns::DATA_FORMS)
        .with_attr("var", var)
        .with_attr("type", kind);
    if !label.is_empty() {
        f.set_attr("label", label);
    }
    for v in values {
        f.push(Element::new("value", ns::DATA_FORMS).with_text(*v));
    }
    f
}

fn options(mut f: Element, values: &[&str]) -> Element {
    for v in values {
        f.push(
            Element::new("option", ns::DATA_FORMS)
                .with_attr("label", *v)
                .with_child(Element::new("value", ns::DATA_FORMS).with_text(*v)),
        );
    }
    f
}

fn b(v: bool) -> &'static str {
    if v { "1" } else { "0" }
}

/// The configuration form with the room's current values (XEP-0045 §10.1.3).
pub fn config_form(room: &Room, l: &Limits) -> Element {
    let c = &room.config;
    let mut x = Element::new("x", ns::DATA_FORMS).with_attr("type", "form");
    x.push(
        Element::new("title", ns::DATA_FORMS).with_text(format!("Configuration of {}", room.jid)),
    );
    x.push(field("FORM_TYPE", "hidden", "", &[ns::MUC_ROOMCONFIG]));
    x.push(field(
        "muc#roomconfig_roomname",
        "text-single",
        "Name",
        &[&c.name],
    ));
    x.push(field(
        "muc#roomconfig_roomdesc",
        "text-single",
        "Description",
        &[&c.description],
    ));
    for (var, label, v) in [
        (
            "muc#roomconfig_persistentroom",
            "Keep the room when it is empty",
            c.persistent,
        ),
        (
            "muc#roomconfig_publicroom",
            "List the room publicly",
            c.public,
        ),
        (
            "muc#roomconfig_membersonly",
            "Only members may enter",
            c.members_only,
        ),
        (
            "muc#roomconfig_moderatedroom",
            "Only participants may speak",
            c.moderated,
        ),
        (
            "muc#roomconfig_changesubject",
            "Participants may change the subject",
            c.change_subject,
        ),
        (
            "muc#roomconfig_allowinvites",
            "Members may invite others",
            c.allow_invites,
        ),
        (
            "muc#roomconfig_enablearchiving",
            "Keep an archive of the discussion",
            c.archiving,
        ),
        (
            "muc#roomconfig_passwordprotectedroom",
            "A password is needed to enter",
            c.password.is_some(),
        ),
    ] {
        x.push(field(var, "boolean", label, &[b(v)]));
    }
    x.push(field(
        "muc#roomconfig_roomsecret",
        "text-private",
        "Password",
        &[c.password.as_deref().unwrap_or("")],
    ));
    let whois = if c.whois_anyone {
        "anyone"
    } else {
        "moderators"
    };
    x.push(options(
        field(
            "muc#roomconfig_whois",
            "list-single",
            "Who may see real addresses",
            &[whois],
        ),
        &["moderators", "anyone"],
    ));
    x.push(options(
        field(
            "muc#roomconfig_allowpm",
            "list-single",
            "Who may send private messages",
            &[c.allow_pm.as_str()],
        ),
        &["anyone", "participants", "moderators", "none"],
    ));
    let history = c.history_length.to_string();
    x.push(field(
        "muc#maxhistoryfetch",
        "text-single",
        &format!(
            "Messages of history sent on entering (at most {})",
            l.max_history
        ),
        &[&history],
    ));
    let max = c.max_users.to_string();
    x.push(field(
        "muc#roomconfig_maxusers",
        "text-single",
        &format!("Most occupants (at most {})", l.max_occupants),
        &[&max],
    ));
    x
}

/// The `muc#roominfo` form of disco#info (XEP-0045 §6.4).
pub fn roominfo(room: &Room) -> Element {
    let c = &room.config;
    let mut x = Element::new("x", ns::DATA_FORMS).with_attr("type", "result");
    x.push(field("FORM_TYPE", "hidden", "", &[ns::MUC_ROOMINFO]));
    x.push(field(
        "muc#roomconfig_roomname",
        "text-single",
        "Name",
        &[&c.name],
    ));
    x.push(field(
        "muc#roominfo_description",
        "text-single",
        "Description",
        &[&c.description],
    ));
    x.push(field(
        "muc#roominfo_subject",
        "text-single",
        "Subject",
        &[&room.subject.text],
    ));
    let n = room.occupants.len().to_string();
    x.push(field(
        "muc#roominfo_occupants",
        "text-single",
        "Occupants",
        &[&n],
    ));
    x.push(field(
        "muc#roomconfig_changesubject",
        "boolean",
        "Participants may change the subject",
        &[b(c.change_subject)],
    ));
    let history = c.history_length.to_string();
    x.push(field(
        "muc#maxhistoryfetch",
        "text-single",
        "Messages of history sent on entering",
        &[&history],
    ));
    x
}

/// A voice request as a visitor sends it (XEP-0045 §7.13): the form asks for the role
/// participant.
pub fn is_voice_request(fields: &Fields) -> bool {
    fields
        .iter()
        .any(|(var, v)| var == "muc#role" && v.first().map(String::as_str) == Some("participant"))
}

/// The approval form the moderators get (XEP-0045 §8.6).
pub fn voice_approval(jid: &str, nick: &str) -> Element {
    Element::new("x", ns::DATA_FORMS)
        .with_attr("type", "form")
        .with_child(Element::new("title", ns::DATA_FORMS).with_text("Voice request"))
        .with_child(
            Element::new("instructions", ns::DATA_FORMS)
                .with_text("To give this person voice, check the box and submit the form."),
        )
        .with_child(field("FORM_TYPE", "hidden", "", &[ns::MUC_REQUEST]))
        .with_child(field(
            "muc#role",
            "list-single",
            "Requested role",
            &["participant"],
        ))
        .with_child(field("muc#jid", "jid-single", "User", &[jid]))
        .with_child(field("muc#roomnick", "text-single", "Nickname", &[nick]))
        .with_child(field(
            "muc#request_allow",
            "boolean",
            "Give voice to this person?",
            &["false"],
        ))
}

/// A moderator's answer to a voice request: the nickname, if approved.
pub fn approved_nick(fields: &Fields) -> Option<String> {
    let get = |name: &str| {
        fields
            .iter()
            .find(|(var, _)| var == name)
            .and_then(|(_, v)| v.first())
            .map(|v| v.trim().to_owned())
    };
    let allow = get("muc#request_allow")?;
    (allow == "1" || allow == "true")
        .then(|| get("muc#roomnick"))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::reader::parse_one;

    fn limits() -> Limits {
        Limits::default()
    }

    fn submit(fields: &str) -> Fields {
        let x = parse_one(&format!(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>{}</value>\
             </field>{fields}</x>",
            ns::MUC_ROOMCONFIG
        ))
        .unwrap();
        read(&x, ns::MUC_ROOMCONFIG).unwrap().unwrap()
    }

    fn f(var: &str, v: &str) -> String {
        format!("<field var='{var}'><value>{v}</value></field>")
    }

    #[test]
    fn a_private_group_is_configured() {
        let c = RoomConfig::default();
        let fields = submit(
            &[
                f("muc#roomconfig_roomname", "Family"),
                f("muc#roomconfig_persistentroom", "1"),
                f("muc#roomconfig_membersonly", "true"),
                f("muc#roomconfig_whois", "anyone"),
                f("muc#roomconfig_publicroom", "0"),
                f("muc#roomconfig_allowpm", "none"),
                f("muc#maxhistoryfetch", "30"),
                // Not offered here: ignored.
                f("muc#roomconfig_getmemberlist", "moderator"),
            ]
            .concat(),
        );
        let c = apply(&c, &fields, &limits()).unwrap();
        assert_eq!(c.name, "Family");
        assert!(c.persistent && c.members_only && c.whois_anyone && !c.public);
        assert_eq!((c.allow_pm, c.history_length), (AllowPm::None, 30));
    }

    #[test]
    fn bad_values_refuse_the_whole_form() {
        let c = RoomConfig::default();
        let l = limits();
        for bad in [
            f("muc#roomconfig_persistentroom", "yes"),
            f("muc#roomconfig_whois", "everybody"),
            f("muc#maxhistoryfetch", "100000"),
            f("muc#roomconfig_maxusers", "0"),
            f("muc#roomconfig_roomname", &"n".repeat(l.max_name_bytes + 1)),
            f("muc#roomconfig_passwordprotectedroom", "1"),
            f(
                "muc#roomconfig_roomsecret",
                &"p".repeat(l.max_password_bytes + 1),
            ),
            "<field var='muc#roomconfig_roomname'><value>a</value><value>b</value></field>".into(),
        ] {
            let e = apply(&c, &submit(&bad), &l).unwrap_err();
            assert_eq!(e.condition, Condition::NotAcceptable, "{bad}");
        }
        let pw = submit(
            &[
                f("muc#roomconfig_passwordprotectedroom", "1"),
                f("muc#roomconfig_roomsecret", "cauldron"),
            ]
            .concat(),
        );
        let c = apply(&c, &pw, &l).unwrap();
        assert_eq!(c.password.as_deref(), Some("cauldron"));
        // Unprotecting forgets the password.
        let c = apply(
            &c,
            &submit(&f("muc#roomconfig_passwordprotectedroom", "0")),
            &l,
        )
        .unwrap();
        assert_eq!(c.password, None);
    }

    #[test]
    fn forms_are_checked() {
        let read_str = |s: &str| read(&parse_one(s).unwrap(), ns::MUC_ROOMCONFIG);
        assert_eq!(
            read_str("<x xmlns='jabber:x:data' type='submit'/>").unwrap(),
            Some(vec![])
        );
        assert_eq!(
            read_str("<x xmlns='jabber:x:data' type='cancel'/>").unwrap(),
            None
        );
        for bad in [
            "<x xmlns='jabber:x:data' type='result'/>",
            "<x xmlns='jabber:x:data'><field var='FORM_TYPE'><value>x</value></field></x>",
            "<x xmlns='jabber:x:data'><field><value>x</value></field></x>",
            "<x xmlns='jabber:x:data'><field var='a'/><field var='a'/></x>",
            "<y xmlns='jabber:x:data'/>",
        ] {
            assert_eq!(
                read_str(bad).unwrap_err().condition,
                Condition::BadRequest,
                "{bad}"
            );
        }
    }

    #[test]
    fn voice_forms() {
        let x = parse_one(&format!(
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>{}</value>\
             </field><field var='muc#role'><value>participant</value></field></x>",
            ns::MUC_REQUEST
        ))
        .unwrap();
        assert!(is_voice_request(
            &read(&x, ns::MUC_REQUEST).unwrap().unwrap()
        ));
        let mut approval = voice_approval("a@localhost/phone", "Ann");
        approval.set_attr("type", "submit");
        let fields = read(&approval, ns::MUC_REQUEST).unwrap().unwrap();
        assert_eq!(approved_nick(&fields), None, "the box is not checked");
        let checked: Fields = fields
            .into_iter()
            .map(|(k, v)| match k.as_str() {
                "muc#request_allow" => (k, vec!["true".into()]),
                _ => (k, v),
            })
            .collect();
        assert_eq!(approved_nick(&checked).as_deref(), Some("Ann"));
    }
}
